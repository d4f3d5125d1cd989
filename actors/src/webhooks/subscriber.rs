//! One actor per subscription: delivers its queue in order, one message at
//! a time, retrying on the configured schedule. A slow or dead endpoint
//! only ever holds up its own queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::RngExt;
use time::OffsetDateTime;

use super::guard::check_target;
use super::signature::Secret;
use super::DeliveryPolicy;
use crate::clock::Clock;
use crate::domain::{unix_ms, DeliveryAttempt, Disabled, Principal, Webhook, WebhookMessage};
use crate::storage::{blocking, AttemptWrite, Store};
use crate::{Error, Result};

/// Owns one subscription's deliveries.
pub struct Subscriber {
    subscription: Webhook,
    secret: Option<Secret>,
    store: Store,
    client: reqwest::Client,
    settings: Arc<DeliveryPolicy>,
    /// Shared with the dispatcher, which queues nothing while it is false.
    enabled: Arc<AtomicBool>,
    /// Set (under its lock) once the subscription is deleted.
    deleted: Arc<Mutex<bool>>,
    /// When messages are due, and the time stamped on attempts.
    clock: Arc<dyn Clock>,
    /// A delivery (or the read before it) is in progress.
    busy: bool,
    /// A `Wake` came while busy: the queue may have grown after the turn
    /// read it, so look again when the turn ends.
    woken: bool,
    /// A retry is scheduled.
    timer: Option<SpawnHandle>,
    /// Queue positions before this are done.
    cursor: u64,
    /// The queue was refilled from the start while a turn ran (cluster
    /// mode): the turn's cursor is stale.
    rewound: bool,
}

impl Subscriber {
    /// An actor for `subscription`.
    pub fn new(
        subscription: Webhook,
        store: Store,
        client: reqwest::Client,
        settings: Arc<DeliveryPolicy>,
        enabled: Arc<AtomicBool>,
        deleted: Arc<Mutex<bool>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        enabled.store(subscription.disabled.is_none(), Ordering::Release);
        Self {
            secret: Secret::parse(&subscription.secret),
            subscription,
            store,
            client,
            settings,
            enabled,
            deleted,
            clock,
            busy: false,
            woken: false,
            timer: None,
            cursor: 0,
            rewound: false,
        }
    }
}

impl Actor for Subscriber {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.notify(Wake);
    }
}

/// Look at the queue: deliver its head if due, or schedule it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

impl Handler<Wake> for Subscriber {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        if self.subscription.disabled.is_some() {
            return;
        }
        if self.busy {
            self.woken = true;
            return;
        }
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        self.busy = true;
        let job = Delivery {
            subscription: self.subscription.clone(),
            secret: self.secret.clone(),
            store: self.store.clone(),
            client: self.client.clone(),
            settings: Arc::clone(&self.settings),
            from: self.cursor,
            deleted: Arc::clone(&self.deleted),
            clock: Arc::clone(&self.clock),
        };
        ctx.spawn(
            job.run()
                .into_actor(self)
                .map(|outcome, actor, ctx| actor.finish(outcome, ctx)),
        );
    }
}

impl Subscriber {
    fn finish(&mut self, outcome: Result<Step>, ctx: &mut Context<Self>) {
        self.busy = false;
        let woken = std::mem::take(&mut self.woken);
        match outcome {
            // The turn found nothing, but a message queued after it looked
            // would otherwise wait for the subscription's next event.
            Ok(Step::Idle) if woken => ctx.notify(Wake),
            Ok(Step::Idle) => {}
            Ok(Step::Wait(delay)) => {
                self.timer = Some(ctx.run_later(delay, |_, ctx| ctx.notify(Wake)));
            }
            Ok(Step::Attempted(subscription, cursor)) => {
                self.enabled
                    .store(subscription.disabled.is_none(), Ordering::Release);
                self.subscription = *subscription;
                self.cursor = if std::mem::take(&mut self.rewound) {
                    0
                } else {
                    cursor
                };
                ctx.notify(Wake);
            }
            Err(e) => {
                tracing::error!(subscription = %self.subscription.id, error = %e, "webhook queue unavailable; retrying in 1 s");
                self.timer = Some(ctx.run_later(Duration::from_secs(1), |_, ctx| ctx.notify(Wake)));
            }
        }
    }
}

/// Turn deliveries back on after a disable, on behalf of a caller (whose
/// audit entry goes into the same write).
#[derive(Message)]
#[rtype(result = "Result<Webhook>")]
pub struct Enable(pub Principal);

impl Handler<Enable> for Subscriber {
    type Result = AtomicResponse<Self, Result<Webhook>>;

    fn handle(&mut self, msg: Enable, _: &mut Context<Self>) -> Self::Result {
        let mut next = self.subscription.clone();
        next.disabled = None;
        next.stats.consecutive_failed_messages = 0;
        let audit = super::audit(
            &msg.0,
            self.clock.now(),
            "webhook.enabled",
            Some(&self.subscription),
            Some(&next),
        );
        let store = self.store.clone();
        let write = blocking(move || store.put_subscription(&next, Some(&audit)).map(|()| next));
        AtomicResponse::new(Box::pin(fut::wrap_future(write).map(
            |written, actor: &mut Self, ctx: &mut Context<Self>| {
                let next = written?;
                actor.subscription = next.clone();
                actor.enabled.store(true, Ordering::Release);
                tracing::info!(subscription = %next.id, "webhook subscription enabled");
                ctx.notify(Wake);
                Ok(next)
            },
        )))
    }
}

/// The subscription as the actor holds it (counters included).
#[derive(Message)]
#[rtype(result = "Webhook")]
pub struct CurrentSubscription;

impl Handler<CurrentSubscription> for Subscriber {
    type Result = MessageResult<CurrentSubscription>;

    fn handle(&mut self, _: CurrentSubscription, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.subscription.clone())
    }
}

/// What a delivery job ended with.
enum Step {
    /// Nothing queued.
    Idle,
    /// The head is not due yet.
    Wait(Duration),
    /// One attempt was made and recorded; the queue position to read from next.
    Attempted(Box<Webhook>, u64),
}

/// One turn of the queue, run off the actor: read the head, maybe send it,
/// record the attempt.
struct Delivery {
    subscription: Webhook,
    secret: Option<Secret>,
    store: Store,
    client: reqwest::Client,
    settings: Arc<DeliveryPolicy>,
    /// Read the queue from this position.
    from: u64,
    deleted: Arc<Mutex<bool>>,
    clock: Arc<dyn Clock>,
}

/// What the endpoint did with one attempt.
struct Response {
    status: Option<u16>,
    retry_after: Option<Duration>,
    error: Option<String>,
    latency: Duration,
}

impl Delivery {
    async fn run(self) -> Result<Step> {
        let store = self.store.clone();
        let id = self.subscription.id.clone();
        let from = self.from;
        let head = blocking(move || store.queue_head(id.as_str(), from)).await?;
        let Some((seq, message)) = head else {
            return Ok(Step::Idle);
        };
        let now_ms = unix_ms(self.clock.now());
        if message.next_attempt_ms > now_ms {
            let wait = u64::try_from(message.next_attempt_ms - now_ms).unwrap_or(0);
            return Ok(Step::Wait(Duration::from_millis(wait)));
        }
        let sent_at = self.clock.now();
        let response = self.send(&message, sent_at).await;
        let (subscription, retry, attempt) = self.account(message, response, sent_at);
        let next = if retry.is_some() { seq } else { seq + 1 };
        let store = self.store.clone();
        let recorded = subscription.clone();
        let deleted = Arc::clone(&self.deleted);
        blocking(move || {
            let deleted = deleted.lock().map_err(|_| Error::Unavailable)?;
            if *deleted {
                return Ok(());
            }
            store.record_attempt(&AttemptWrite {
                subscription: &recorded,
                seq,
                retry: retry.as_ref(),
                attempt: &attempt,
            })
        })
        .await?;
        Ok(Step::Attempted(Box::new(subscription), next))
    }

    /// One HTTP attempt. Never follows redirects; bounded by the timeout.
    async fn send(&self, message: &WebhookMessage, at: OffsetDateTime) -> Response {
        // Latency is an interval on the monotonic clock, not a time of
        // day, so it does not come from `self.clock`.
        let started = Instant::now();
        let fail = |error: String| Response {
            status: None,
            retry_after: None,
            error: Some(error),
            latency: started.elapsed(),
        };
        let Some(secret) = &self.secret else {
            return fail("the subscription's secret is unreadable".into());
        };
        // Checked again at every attempt: DNS may have changed since.
        let url = match check_target(&self.subscription.url, self.settings.allow_private).await {
            Ok(url) => url,
            Err(e) => return fail(e),
        };
        let timestamp = at.unix_timestamp();
        let request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("abacus-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", &message.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                secret.sign(&message.id, timestamp, message.body.as_bytes()),
            )
            .body(message.body.clone());
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Response {
                    status: Some(status.as_u16()),
                    retry_after,
                    error: (!status.is_success()).then(|| format!("HTTP {}", status.as_u16())),
                    latency: started.elapsed(),
                }
            }
            Err(e) if e.is_timeout() => fail(format!(
                "timed out after {} ms",
                self.settings.timeout.as_millis()
            )),
            Err(e) => fail(error_chain(&e)),
        }
    }

    /// The subscription, the message to keep (if it is to be retried) and
    /// the attempt log entry after `response`.
    fn account(
        &self,
        mut message: WebhookMessage,
        response: Response,
        at: OffsetDateTime,
    ) -> (Webhook, Option<WebhookMessage>, DeliveryAttempt) {
        let mut subscription = self.subscription.clone();
        let stats = &mut subscription.stats;
        message.attempts += 1;
        stats.attempts += 1;
        let success = response.status.is_some_and(|s| (200..300).contains(&s));
        let gone = response.status == Some(410);
        let (retry, outcome) = if success {
            stats.successes += 1;
            stats.delivered += 1;
            stats.consecutive_failed_messages = 0;
            (None, "delivered")
        } else {
            stats.failures += 1;
            stats.last_error = response.error.clone();
            let schedule = &self.settings.retry_schedule;
            if gone {
                subscription.disabled = Some(Disabled {
                    at,
                    reason: "gone".into(),
                });
                // Kept for if it is enabled again.
                message.next_attempt_ms = unix_ms(at);
                (Some(message.clone()), "disabled")
            } else if let Some(base) = schedule.get(message.attempts as usize - 1) {
                let jitter = self.settings.jitter;
                let factor = 1.0 + rand::rng().random_range(-jitter..=jitter);
                let mut delay = base.mul_f64(factor.max(0.0));
                if let Some(asked) = response.retry_after {
                    delay = delay.max(asked.min(self.settings.max_retry_after));
                }
                message.next_attempt_ms =
                    unix_ms(at) + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                (Some(message.clone()), "retrying")
            } else {
                stats.failed_messages += 1;
                stats.consecutive_failed_messages += 1;
                if stats.consecutive_failed_messages >= self.settings.disable_after {
                    subscription.disabled = Some(Disabled {
                        at,
                        reason: "failing".into(),
                    });
                }
                (None, "failed")
            }
        };
        let result = if success { "success" } else { "failure" };
        metrics::counter!(crate::metrics::WEBHOOK_ATTEMPTS, "result" => result).increment(1);
        if outcome == "delivered" || outcome == "failed" {
            metrics::counter!(crate::metrics::WEBHOOK_MESSAGES, "outcome" => outcome).increment(1);
        }
        let attempt = DeliveryAttempt {
            message_id: message.id.clone(),
            kind: message.kind,
            attempt: message.attempts,
            at,
            status_code: response.status,
            latency_ms: response.latency.as_secs_f64() * 1000.0,
            error: response.error,
            outcome: outcome.into(),
        };
        if let Some(d) = &subscription.disabled {
            tracing::warn!(subscription = %subscription.id, reason = %d.reason, "webhook subscription disabled");
        }
        (subscription, retry, attempt)
    }
}

/// The error and its causes, on one line ("connection refused" is usually
/// a few levels down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Read the queue from its start again: cluster mode emptied and refilled
/// it (positions before the cursor may be queued again).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Rewind;

impl Handler<Rewind> for Subscriber {
    type Result = ();

    fn handle(&mut self, _: Rewind, ctx: &mut Context<Self>) {
        self.cursor = 0;
        self.rewound = self.busy;
        ctx.notify(Wake);
    }
}

/// Stop delivering (the subscription was deleted).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Subscriber {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::WebhookId;
    use time::macros::datetime;

    use super::super::guard;
    use super::super::testing::{Endpoint, Received};
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::{DeliveryStats, DomainEventKind};

    const T0: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);
    const ID: &str = "wh_0123456789abcdef0123456789abcdef";
    const OK: (u16, &str) = (204, "");
    const FAIL: (u16, &str) = (500, "");

    /// Private targets allowed (the endpoint is on 127.0.0.1), no jitter
    /// so delays are exact.
    fn settings(retry_schedule: &[u64], disable_after: u32) -> Arc<DeliveryPolicy> {
        Arc::new(DeliveryPolicy {
            allow_private: true,
            timeout: Duration::from_secs(5),
            retry_schedule: retry_schedule
                .iter()
                .map(|&s| Duration::from_secs(s))
                .collect(),
            jitter: 0.0,
            disable_after,
            max_retry_after: Duration::from_secs(300),
        })
    }

    fn subscription(url: &str) -> Webhook {
        Webhook {
            id: WebhookId::try_from(ID.to_owned()).expect("a webhook id"),
            url: url.into(),
            events: vec![DomainEventKind::WebhookTest],
            description: None,
            secret: Secret::generate().1,
            created_at: T0,
            disabled: None,
            stats: DeliveryStats::default(),
        }
    }

    #[test]
    fn the_oldest_queued_message_bounds_what_a_cluster_acknowledges_and_clearing_empties_every_queue(
    ) {
        let (_dir, store) = Store::temporary();
        store
            .put_subscription(&subscription("http://127.0.0.1:1/"), None)
            .unwrap();
        assert_eq!(store.oldest_queued().unwrap(), None);
        enqueue(&store, &[5, 7, 9]);
        assert_eq!(store.oldest_queued().unwrap(), Some(5));
        store.clear_webhook_queues().unwrap();
        assert_eq!(store.oldest_queued().unwrap(), None);
        assert_eq!(store.queue_len(ID).unwrap(), 0);
        assert_eq!(
            store.subscriptions().unwrap().len(),
            1,
            "subscriptions stay"
        );
    }

    /// Queues messages `msg_{seq}` at positions `seqs`, due at once.
    fn enqueue(store: &Store, seqs: &[u64]) {
        let messages: Vec<_> = seqs
            .iter()
            .map(|&seq| {
                let message = WebhookMessage {
                    id: format!("msg_{seq}"),
                    kind: DomainEventKind::WebhookTest,
                    body: format!(r#"{{"n":{seq}}}"#),
                    attempts: 0,
                    next_attempt_ms: 0,
                };
                (ID, seq, message)
            })
            .collect();
        store.enqueue(&messages, seqs[seqs.len() - 1]).unwrap();
    }

    /// One subscription's queue, driven a turn at a time.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        clock: Arc<ManualClock>,
        settings: Arc<DeliveryPolicy>,
        client: reqwest::Client,
        endpoint: Endpoint,
        subscription: Webhook,
        cursor: u64,
    }

    impl Fixture {
        fn new(script: &[(u16, &'static str)], settings: Arc<DeliveryPolicy>) -> Self {
            let (dir, store) = Store::temporary();
            let endpoint = Endpoint::new(script);
            let subscription = subscription(&endpoint.url);
            store.put_subscription(&subscription, None).unwrap();
            Self {
                _dir: dir,
                store,
                clock: Arc::new(ManualClock::new(T0)),
                client: guard::client(settings.timeout, true).unwrap(),
                settings,
                endpoint,
                subscription,
                cursor: 0,
            }
        }

        /// One turn of the queue, as the actor runs it; keeps what it
        /// would keep.
        async fn turn(&mut self) -> Step {
            let delivery = Delivery {
                subscription: self.subscription.clone(),
                secret: Secret::parse(&self.subscription.secret),
                store: self.store.clone(),
                client: self.client.clone(),
                settings: Arc::clone(&self.settings),
                from: self.cursor,
                deleted: Arc::default(),
                clock: self.clock.clone(),
            };
            let step = delivery.run().await.unwrap();
            if let Step::Attempted(subscription, cursor) = &step {
                self.subscription = (**subscription).clone();
                self.cursor = *cursor;
            }
            step
        }

        /// A turn that must make an attempt; returns it as logged.
        async fn attempt(&mut self) -> DeliveryAttempt {
            let step = self.turn().await;
            assert!(matches!(step, Step::Attempted(..)), "{}", describe(&step));
            let (mut log, _) = self.store.attempts(ID, None, 1).unwrap();
            log.pop().expect("the attempt is logged")
        }

        fn head(&self) -> Option<(u64, WebhookMessage)> {
            self.store.queue_head(ID, 0).unwrap()
        }

        fn now_ms(&self) -> i64 {
            unix_ms(self.clock.now())
        }
    }

    fn describe(step: &Step) -> String {
        match step {
            Step::Idle => "idle".into(),
            Step::Wait(d) => format!("wait {d:?}"),
            Step::Attempted(_, cursor) => format!("attempted, next from {cursor}"),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test]
    async fn a_delivered_message_leaves_the_queue_signed_and_stamped_with_the_clocks_time() {
        let mut f = Fixture::new(&[OK], settings(&[60], 5));
        enqueue(&f.store, &[7]);
        f.clock.advance(secs(5));
        let sent_at = f.clock.now();

        let attempt = f.attempt().await;
        assert_eq!(
            (attempt.attempt, attempt.at, attempt.status_code),
            (1, sent_at, Some(204))
        );
        assert_eq!(
            (attempt.outcome.as_str(), attempt.error),
            ("delivered", None)
        );
        assert_eq!(f.cursor, 8, "the queue moves past the message");
        assert_eq!(f.store.queue_len(ID).unwrap(), 0);
        let stats = &f.subscription.stats;
        assert_eq!(
            (
                stats.attempts,
                stats.successes,
                stats.delivered,
                stats.failures
            ),
            (1, 1, 1, 0)
        );
        assert_eq!(f.store.subscriptions().unwrap(), [f.subscription.clone()]);

        let request: Received = f.endpoint.next();
        let timestamp = sent_at.unix_timestamp();
        assert_eq!(request.header("webhook-id"), "msg_7");
        assert_eq!(request.header("webhook-timestamp"), timestamp.to_string());
        let secret = Secret::parse(&f.subscription.secret).unwrap();
        assert_eq!(
            request.header("webhook-signature"),
            secret.sign("msg_7", timestamp, request.body.as_bytes())
        );
        assert_eq!(request.body, r#"{"n":7}"#);

        assert!(matches!(f.turn().await, Step::Idle));
    }

    #[tokio::test]
    async fn a_failed_attempt_is_retried_on_the_schedule_as_the_clock_reaches_it() {
        let mut f = Fixture::new(&[FAIL, (503, ""), OK], settings(&[60, 600], 5));
        enqueue(&f.store, &[1]);
        let t0 = f.now_ms();

        let first = f.attempt().await;
        assert_eq!(
            (first.outcome.as_str(), first.status_code),
            ("retrying", Some(500))
        );
        assert_eq!(first.error.as_deref(), Some("HTTP 500"));
        assert_eq!(f.cursor, 1, "the message stays at the head");
        let (_, kept) = f.head().unwrap();
        assert_eq!((kept.attempts, kept.next_attempt_ms), (1, t0 + 60_000));
        f.endpoint.next();

        // Not due yet: the turn says how long to wait, and sends nothing.
        f.clock.advance(secs(59));
        let step = f.turn().await;
        assert!(
            matches!(step, Step::Wait(d) if d == secs(1)),
            "{}",
            describe(&step)
        );
        assert!(f.endpoint.is_quiet());

        f.clock.advance(secs(1));
        let second = f.attempt().await;
        assert_eq!((second.attempt, second.outcome.as_str()), (2, "retrying"));
        let (_, kept) = f.head().unwrap();
        assert_eq!(
            kept.next_attempt_ms,
            t0 + 60_000 + 600_000,
            "the next delay"
        );
        f.endpoint.next();

        f.clock.advance(secs(600));
        let third = f.attempt().await;
        assert_eq!((third.attempt, third.outcome.as_str()), (3, "delivered"));
        assert!(f.head().is_none());
        let stats = &f.subscription.stats;
        assert_eq!(
            (
                stats.attempts,
                stats.failures,
                stats.delivered,
                stats.failed_messages
            ),
            (3, 2, 1, 0)
        );
        assert_eq!(stats.last_error.as_deref(), Some("HTTP 503"));
    }

    /// `Retry-After` may lengthen a delay, never beyond `max_retry_after`.
    #[tokio::test]
    async fn retry_after_lengthens_the_delay_up_to_its_bound() {
        let script = [
            (429, "retry-after: 120\r\n"),
            (429, "retry-after: 86400\r\n"),
            (429, "retry-after: 1\r\n"),
        ];
        let mut f = Fixture::new(&script, settings(&[60, 60, 60], 5));
        enqueue(&f.store, &[1]);
        let mut delays = Vec::new();
        for _ in 0..3 {
            let before = f.now_ms();
            f.attempt().await;
            let (_, kept) = f.head().unwrap();
            delays.push((kept.next_attempt_ms - before) / 1000);
            f.clock.set(
                OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(kept.next_attempt_ms) * 1_000_000,
                )
                .unwrap(),
            );
        }
        assert_eq!(delays, [120, 300, 60]);
    }

    #[tokio::test]
    async fn enough_messages_failing_every_retry_in_a_row_disable_the_subscription() {
        // Message 1 fails twice (for good), 2 is delivered, 3 and 4 fail
        // twice each: the second failure in a row disables.
        let script = [FAIL, FAIL, OK, FAIL, FAIL, FAIL, FAIL];
        let mut f = Fixture::new(&script, settings(&[60], 2));
        enqueue(&f.store, &[1, 2, 3, 4, 5]);
        let mut outcomes = Vec::new();
        let mut in_a_row = Vec::new();
        while f.subscription.disabled.is_none() {
            let attempt = f.attempt().await;
            outcomes.push(format!("{} {}", attempt.message_id, attempt.outcome));
            in_a_row.push(f.subscription.stats.consecutive_failed_messages);
            f.clock.advance(secs(60));
            assert!(outcomes.len() < 10, "{outcomes:?}");
        }
        assert_eq!(
            outcomes,
            [
                "msg_1 retrying",
                "msg_1 failed",
                "msg_2 delivered",
                "msg_3 retrying",
                "msg_3 failed",
                "msg_4 retrying",
                "msg_4 failed"
            ]
        );
        assert_eq!(in_a_row, [0, 1, 0, 0, 1, 1, 2]);
        let disabled = f.subscription.disabled.clone().unwrap();
        assert_eq!(disabled.reason, "failing");
        assert_eq!(
            disabled.at,
            f.clock.now() - secs(60),
            "the last attempt's time"
        );
        let stats = &f.subscription.stats;
        assert_eq!((stats.failed_messages, stats.delivered), (3, 1));
        assert_eq!(f.store.queue_len(ID).unwrap(), 1, "message 5 waits");
        assert_eq!(f.store.subscriptions().unwrap()[0].disabled, Some(disabled));
    }

    #[tokio::test]
    async fn a_gone_endpoint_disables_at_once_and_the_message_is_kept() {
        let mut f = Fixture::new(&[(410, "")], settings(&[60], 5));
        enqueue(&f.store, &[1]);
        f.clock.advance(secs(30));
        let attempt = f.attempt().await;
        assert_eq!(attempt.outcome, "disabled");
        let disabled = f.subscription.disabled.clone().unwrap();
        assert_eq!(
            (disabled.reason.as_str(), disabled.at),
            ("gone", f.clock.now())
        );
        let (_, kept) = f.head().expect("kept for when it is enabled again");
        assert_eq!(kept.next_attempt_ms, f.now_ms(), "due at once then");
    }

    /// Polls the actor until `done` holds (for up to 5 s).
    async fn until(addr: &Addr<Subscriber>, done: impl Fn(&Webhook) -> bool) -> Webhook {
        for _ in 0..500 {
            let subscription = addr.send(CurrentSubscription).await.unwrap();
            if done(&subscription) {
                return subscription;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "not reached within 5 s: {:?}",
            addr.send(CurrentSubscription).await
        );
    }

    #[actix::test]
    async fn the_actor_stops_delivering_when_disabled_and_resumes_when_enabled() {
        let f = Fixture::new(&[FAIL, FAIL, OK], settings(&[], 2));
        enqueue(&f.store, &[1, 2, 3]);
        f.clock.advance(secs(10));
        let enabled = Arc::new(AtomicBool::new(true));
        let addr = Subscriber::new(
            f.subscription.clone(),
            f.store.clone(),
            f.client.clone(),
            Arc::clone(&f.settings),
            Arc::clone(&enabled),
            Arc::default(),
            f.clock.clone(),
        )
        .start();

        // With no retries each failure is final: two in a row disable.
        let disabled = until(&addr, |s| s.disabled.is_some()).await;
        let stop = disabled.disabled.as_ref().unwrap();
        assert_eq!((stop.reason.as_str(), stop.at), ("failing", f.clock.now()));
        assert!(!enabled.load(Ordering::Acquire), "the dispatcher is told");
        let ids: Vec<_> = (0..2)
            .map(|_| f.endpoint.next().header("webhook-id").to_owned())
            .collect();
        assert_eq!(ids, ["msg_1", "msg_2"], "in queue order");

        // A wake-up while disabled is handled at once and sends nothing.
        addr.send(Wake).await.unwrap();
        addr.send(CurrentSubscription).await.unwrap();
        assert!(f.endpoint.is_quiet());
        assert_eq!(f.store.queue_len(ID).unwrap(), 1);

        let on = addr.send(Enable(Principal::open())).await.unwrap().unwrap();
        assert_eq!(on.disabled, None);
        assert_eq!(on.stats.consecutive_failed_messages, 0);
        assert!(enabled.load(Ordering::Acquire));
        assert_eq!(
            f.store.subscriptions().unwrap()[0].disabled,
            None,
            "persisted"
        );

        let delivered = until(&addr, |s| s.stats.delivered == 1).await;
        assert_eq!(f.endpoint.next().header("webhook-id"), "msg_3");
        assert_eq!(delivered.stats.failed_messages, 2);
        assert_eq!(f.store.queue_len(ID).unwrap(), 0);
    }
}
