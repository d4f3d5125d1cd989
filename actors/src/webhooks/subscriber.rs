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
use super::Settings;
use crate::clock::Clock;
use crate::domain::{unix_ms, DeliveryAttempt, Disabled, Webhook, WebhookMessage};
use crate::storage::{blocking, AttemptRecord, Store};
use crate::{Error, Result};

/// Owns one subscription's deliveries.
pub struct Subscriber {
    subscription: Webhook,
    secret: Option<Secret>,
    store: Store,
    client: reqwest::Client,
    settings: Arc<Settings>,
    /// Shared with the dispatcher, which queues nothing while it is false.
    enabled: Arc<AtomicBool>,
    /// Set (under its lock) once the subscription is deleted.
    deleted: Arc<Mutex<bool>>,
    /// When messages are due, and the time stamped on attempts.
    clock: Arc<dyn Clock>,
    /// A delivery (or the read before it) is in progress.
    busy: bool,
    /// A retry is scheduled.
    timer: Option<SpawnHandle>,
    /// Queue positions before this are done.
    cursor: u64,
}

impl Subscriber {
    /// An actor for `subscription`.
    pub fn new(
        subscription: Webhook,
        store: Store,
        client: reqwest::Client,
        settings: Arc<Settings>,
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
            timer: None,
            cursor: 0,
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
        if self.busy || self.subscription.disabled.is_some() {
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
        match outcome {
            Ok(Step::Idle) => {}
            Ok(Step::Wait(delay)) => {
                self.timer = Some(ctx.run_later(delay, |_, ctx| ctx.notify(Wake)));
            }
            Ok(Step::Attempted(subscription, cursor)) => {
                self.enabled
                    .store(subscription.disabled.is_none(), Ordering::Release);
                self.subscription = *subscription;
                self.cursor = cursor;
                ctx.notify(Wake);
            }
            Err(e) => {
                tracing::error!(subscription = %self.subscription.id, error = %e, "webhook queue unavailable; retrying in 1 s");
                self.timer = Some(ctx.run_later(Duration::from_secs(1), |_, ctx| ctx.notify(Wake)));
            }
        }
    }
}

/// Turn deliveries back on after a disable.
#[derive(Message)]
#[rtype(result = "Result<Webhook>")]
pub struct Enable;

impl Handler<Enable> for Subscriber {
    type Result = AtomicResponse<Self, Result<Webhook>>;

    fn handle(&mut self, _: Enable, _: &mut Context<Self>) -> Self::Result {
        let mut next = self.subscription.clone();
        next.disabled = None;
        next.stats.consecutive_failed_messages = 0;
        let store = self.store.clone();
        let write = blocking(move || store.put_subscription(&next).map(|()| next));
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
pub struct Snapshot;

impl Handler<Snapshot> for Subscriber {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Self::Result {
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
    settings: Arc<Settings>,
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
        let head = blocking(move || store.queue_head(&id, from)).await?;
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
            store.record_attempt(&AttemptRecord {
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

