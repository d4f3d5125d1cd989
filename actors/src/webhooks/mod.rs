//! Webhooks: signed deliveries of domain events to subscribers.
//!
//! ```text
//! experiment actor ── one WriteBatch: experiment + domain event ──▶ outbox
//! dispatcher ── one WriteBatch per pass: queue entries + cursor ──▶ per-subscription queues
//! Subscriber actor (one per subscription) ── head of its queue ──▶ HTTP POST, signed
//!                 └── one WriteBatch per attempt: log entry + message fate + counters
//! ```
//!
//! Every step is persisted before the next one acts on it, so a crash or
//! restart loses no message and duplicates at most one attempt (delivery
//! is at least once; `webhook-id` lets receivers de-duplicate). Each
//! subscription delivers its own queue in order, one message at a time, so
//! a slow or failing endpoint only delays itself.

mod dispatcher;
mod guard;
mod replicated;
mod signature;
mod subscriber;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use actix::prelude::*;

pub use guard::is_public;
pub use replicated::Replication;
pub use signature::Secret;

use self::subscriber::{CurrentSubscription, Enable, Subscriber};
use crate::clock::Clock;
use crate::cluster::RecordBucket;
use crate::domain::{
    AuditEntry, DeliveryAttempt, DeliveryStats, DomainEvent, DomainEventKind, Principal,
    ResourceKind, Webhook, WebhookId, WebhookIn, WebhookOut,
};
use crate::quotas::Quotas;
use crate::storage::{blocking, Store};
use crate::{Error, Result};

/// Delivery policy, from `[webhooks]`.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Allow targets on loopback and private networks.
    pub allow_private: bool,
    /// Bound on one attempt.
    pub timeout: Duration,
    /// Delays before the 2nd, 3rd, ... attempt; a message fails for good
    /// once they are used up.
    pub retry_schedule: Vec<Duration>,
    /// Each delay is scaled by a random factor in `1 ± jitter`.
    pub jitter: f64,
    /// Consecutive failed messages that disable a subscription.
    pub disable_after: u32,
    /// Longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

/// A running subscription: its actor and what the dispatcher needs.
#[derive(Clone)]
struct SubscriberHandle {
    addr: Addr<Subscriber>,
    events: Vec<DomainEventKind>,
    enabled: Arc<AtomicBool>,
    /// Held while the actor records an attempt and while the subscription
    /// is deleted; `true` once deleted, so an attempt that finishes after
    /// a delete cannot write the subscription back.
    deleted: Arc<Mutex<bool>>,
}

type Entries = Arc<RwLock<BTreeMap<WebhookId, SubscriberHandle>>>;

/// The webhook subsystem; clones share it.
#[derive(Clone)]
pub struct Webhooks {
    store: Store,
    settings: Arc<DeliveryPolicy>,
    client: reqwest::Client,
    entries: Entries,
    /// Every "now" of the subsystem: creation times, delivery timestamps
    /// and signatures, retry schedules, disables.
    clock: Arc<dyn Clock>,
    /// Cluster mode: the shared subscriptions (created and deleted there
    /// first).
    shared: Option<RecordBucket<Webhook>>,
    /// The project's quota of subscriptions.
    quotas: Arc<Quotas>,
    /// Taken while a subscription is created, so concurrent creations
    /// cannot pass the quota together, and (on a single node) while the
    /// dispatcher reads and fans out a chunk of the outbox: a new
    /// subscription then gets exactly the events written after its record,
    /// starting with its own creation's audit entry, never a chunk read
    /// before it was listed.
    creating: Arc<tokio::sync::Mutex<()>>,
}

impl Webhooks {
    /// Starts an actor per stored subscription and the dispatcher. Must run
    /// inside an actix system.
    pub async fn start(
        store: Store,
        settings: DeliveryPolicy,
        clock: Arc<dyn Clock>,
        quotas: Arc<Quotas>,
    ) -> Result<Self> {
        let this = Self::open(store, settings, clock, quotas, None).await?;
        dispatcher::spawn(
            this.store.clone(),
            Arc::clone(&this.entries),
            Arc::clone(&this.creating),
        );
        Ok(this)
    }

    /// [`Webhooks::start`] in cluster mode (see [`replicated`]): the
    /// subscriptions are shared through `replication`, this node relays
    /// its outbox to the shared one, and delivers only while it holds the
    /// delivery lease.
    pub async fn start_replicated(
        store: Store,
        settings: DeliveryPolicy,
        clock: Arc<dyn Clock>,
        quotas: Arc<Quotas>,
        replication: Replication,
    ) -> Result<Self> {
        let this = Self::open(
            store,
            settings,
            clock,
            quotas,
            Some(replication.subscriptions.clone()),
        )
        .await?;
        replicated::spawn(this.clone(), replication);
        Ok(this)
    }

    async fn open(
        store: Store,
        settings: DeliveryPolicy,
        clock: Arc<dyn Clock>,
        quotas: Arc<Quotas>,
        shared: Option<RecordBucket<Webhook>>,
    ) -> Result<Self> {
        // Resolves names through the SSRF guard: it connects only to
        // addresses the guard allows.
        let client = guard::client(settings.timeout, settings.allow_private)
            .map_err(|e| Error::invalid("webhooks", e.to_string()))?;
        let this = Self {
            store: store.clone(),
            settings: Arc::new(settings),
            client,
            entries: Arc::default(),
            clock,
            shared,
            quotas,
            creating: Arc::default(),
        };
        let stored = blocking(move || store.subscriptions()).await?;
        for subscription in stored {
            this.spawn(subscription);
        }
        Ok(this)
    }

    /// Starts the subscription's actor, unless it runs already (in cluster
    /// mode the bucket's watch and the create may both bring it).
    fn spawn(&self, subscription: Webhook) -> SubscriberHandle {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(running) = entries.get(&subscription.id) {
            return running.clone();
        }
        let enabled = Arc::new(AtomicBool::new(subscription.disabled.is_none()));
        let deleted = Arc::new(Mutex::new(false));
        let entry = SubscriberHandle {
            events: subscription.events.clone(),
            enabled: Arc::clone(&enabled),
            deleted: Arc::clone(&deleted),
            addr: Subscriber::new(
                subscription.clone(),
                self.store.clone(),
                self.client.clone(),
                Arc::clone(&self.settings),
                enabled,
                deleted,
                Arc::clone(&self.clock),
            )
            .start(),
        };
        entries.insert(subscription.id, entry.clone());
        entry
    }

    fn entry(&self, id: &str) -> Result<SubscriberHandle> {
        self.entries
            .read()
            .map_err(|_| Error::Unavailable)?
            .get(id)
            .cloned()
            .ok_or_else(|| Error::WebhookNotFound(id.to_owned()))
    }

    /// Creates a subscription on behalf of `by`; returns it and its
    /// secret (shown once).
    pub async fn create(&self, input: WebhookIn, by: &Principal) -> Result<(WebhookOut, String)> {
        if input.events.is_empty() {
            return Err(Error::invalid(
                "events",
                "subscribe to at least one event type",
            ));
        }
        if input
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 1000)
        {
            return Err(Error::invalid("description", "at most 1000 characters"));
        }
        guard::check_written(&input.url).map_err(|e| Error::invalid("url", e))?;
        guard::check_target(&input.url, self.settings.allow_private)
            .await
            .map_err(|e| Error::invalid("url", e))?;
        let _creating = self.creating.lock().await;
        let held = self.entries.read().map_err(|_| Error::Unavailable)?.len();
        self.quotas
            .check_count("webhooks", held, self.quotas.limits().max_webhooks)?;
        let (_, secret) = Secret::generate();
        let mut events = input.events;
        events.sort_by_key(|k| format!("{k:?}"));
        events.dedup();
        let subscription = Webhook {
            id: WebhookId::mint(),
            url: input.url,
            events,
            description: input.description,
            secret: secret.clone(),
            created_at: self.clock.now(),
            disabled: None,
            stats: DeliveryStats::default(),
        };
        if let Some(shared) = &self.shared {
            shared
                .create(subscription.id.as_str(), &subscription)
                .await?;
        }
        let store = self.store.clone();
        let stored = subscription.clone();
        let audit = audit(
            by,
            self.clock.now(),
            "webhook.created",
            None,
            Some(&subscription),
        );
        blocking(move || store.put_subscription(&stored, Some(&audit))).await?;
        tracing::info!(subscription = %subscription.id, url = %subscription.url, "webhook subscription created");
        self.spawn(subscription.clone());
        Ok((subscription.view(0), secret))
    }

    /// One subscription, with its counters and queue length.
    pub async fn get(&self, id: &str) -> Result<WebhookOut> {
        let entry = self.entry(id)?;
        let subscription = entry.addr.send(CurrentSubscription).await?;
        let store = self.store.clone();
        let owned = id.to_owned();
        let pending = blocking(move || store.queue_len(&owned)).await?;
        Ok(subscription.view(pending))
    }

    /// Every subscription, by id.
    pub async fn list(&self) -> Result<Vec<WebhookOut>> {
        let ids: Vec<WebhookId> = self
            .entries
            .read()
            .map_err(|_| Error::Unavailable)?
            .keys()
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.get(id.as_str()).await {
                Ok(s) => out.push(s),
                Err(Error::WebhookNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Deletes a subscription, its queue and its log, on behalf of `by`.
    pub async fn delete(&self, id: &str, by: &Principal) -> Result<()> {
        let entry = self.entry(id)?;
        let before = entry.addr.send(CurrentSubscription).await?;
        if let Some(shared) = &self.shared {
            shared.delete(id).await?;
        }
        let audit = audit(by, self.clock.now(), "webhook.deleted", Some(&before), None);
        self.forget(id, Some(audit)).await?;
        tracing::info!(subscription = %id, "webhook subscription deleted");
        Ok(())
    }

    /// Stops a subscription's actor and deletes it from this node's store
    /// (with the audit entry of the deletion, if made here).
    async fn forget(&self, id: &str, audit: Option<AuditEntry>) -> Result<()> {
        let entry = self
            .entries
            .write()
            .map_err(|_| Error::Unavailable)?
            .remove(id)
            .ok_or_else(|| Error::WebhookNotFound(id.to_owned()))?;
        entry.enabled.store(false, Ordering::Release);
        entry.addr.do_send(subscriber::Stop);
        let store = self.store.clone();
        let owned = id.to_owned();
        blocking(move || {
            let mut deleted = entry.deleted.lock().map_err(|_| Error::Unavailable)?;
            *deleted = true;
            store.delete_subscription(&owned, audit.as_ref())
        })
        .await
    }

    /// Publishes how many subscriptions are disabled.
    pub fn export_metrics(&self) {
        metrics::gauge!(crate::metrics::WEBHOOK_DISABLED).set(self.disabled().len() as f64);
    }

    /// Ids of the subscriptions currently disabled.
    pub fn disabled(&self) -> Vec<WebhookId> {
        self.entries.read().map_or_else(
            |_| Vec::new(),
            |entries| {
                entries
                    .iter()
                    .filter(|(_, e)| !e.enabled.load(Ordering::Acquire))
                    .map(|(id, _)| id.clone())
                    .collect()
            },
        )
    }

    /// Queues a `webhook.test` for one subscription; returns its message id.
    pub async fn test(&self, id: &str) -> Result<String> {
        let id = WebhookId::try_from(id.to_owned())
            .map_err(|_| Error::WebhookNotFound(id.to_owned()))?;
        self.entry(id.as_str())?;
        let event = DomainEvent::test(&id, self.clock.now());
        let message_id = event.id.clone();
        let store = self.store.clone();
        blocking(move || store.append_outbox(&event)).await?;
        Ok(message_id)
    }

    /// Turns a disabled subscription back on, on behalf of `by`.
    pub async fn enable(&self, id: &str, by: &Principal) -> Result<WebhookOut> {
        let entry = self.entry(id)?;
        entry.addr.send(Enable(by.clone())).await??;
        self.get(id).await
    }

    /// A page of delivery attempts, newest first.
    pub async fn deliveries(
        &self,
        id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<DeliveryAttempt>, Option<u64>)> {
        self.entry(id)?;
        let store = self.store.clone();
        let owned = id.to_owned();
        blocking(move || store.attempts(&owned, before, limit)).await
    }
}

/// The audit entry of `action` by `by` on a subscription, before and
/// after: what the API shows of it, without its secret or counters.
pub(crate) fn audit(
    by: &Principal,
    at: time::OffsetDateTime,
    action: &str,
    before: Option<&Webhook>,
    after: Option<&Webhook>,
) -> AuditEntry {
    let view = |w: &Webhook| {
        serde_json::json!({
            "id": w.id,
            "url": w.url,
            "events": w.events,
            "description": w.description,
            "enabled": w.disabled.is_none(),
        })
    };
    let id = before
        .or(after)
        .map(|w| w.id.to_string())
        .unwrap_or_default();
    AuditEntry::new(
        by,
        at,
        action,
        ResourceKind::Webhook,
        id,
        before.map(view),
        after.map(view),
    )
}

/// A scripted HTTP endpoint on 127.0.0.1 for the delivery tests.
#[cfg(test)]
mod testing {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A request the endpoint received.
    #[derive(Debug)]
    pub(super) struct Received {
        /// Header names in lower case, with their values.
        pub headers: Vec<(String, String)>,
        pub body: String,
    }

    impl Received {
        /// The value of header `name` (lower case).
        pub fn header(&self, name: &str) -> &str {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map_or("", |(_, v)| v.as_str())
        }
    }

    /// Listens on an ephemeral port of 127.0.0.1 (no traffic leaves the
    /// machine) and answers the n-th request with `script[n]`, a status
    /// and extra header lines; the last entry repeats.
    pub(super) struct Endpoint {
        pub url: String,
        received: mpsc::Receiver<Received>,
    }

    impl Endpoint {
        pub fn new(script: &[(u16, &'static str)]) -> Self {
            let script = script.to_vec();
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = listener.local_addr().expect("address").port();
            let (tx, received) = mpsc::channel();
            std::thread::spawn(move || {
                for (n, stream) in listener.incoming().enumerate() {
                    let Ok(stream) = stream else { return };
                    let (status, extra) = script[n.min(script.len() - 1)];
                    let mut reader = BufReader::new(stream);
                    let Some(request) = read(&mut reader) else {
                        continue;
                    };
                    // Reported before the answer, so a recorded attempt's
                    // request is always already here.
                    if tx.send(request).is_err() {
                        return;
                    }
                    let _ = write!(
                        reader.get_mut(),
                        "HTTP/1.1 {status} Scripted\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n"
                    );
                }
            });
            Self {
                url: format!("http://127.0.0.1:{port}/hook"),
                received,
            }
        }

        /// The next request, waiting for it up to 5 s. Blocks the thread:
        /// for requests already made, or made by another thread.
        pub fn next(&self) -> Received {
            self.received
                .recv_timeout(Duration::from_secs(5))
                .expect("a request within 5 s")
        }

        /// The next request, polled for up to 5 s without blocking the
        /// thread (the actors delivering it may share it).
        pub async fn arrival(&self) -> Received {
            for _ in 0..500 {
                if let Ok(request) = self.received.try_recv() {
                    return request;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no request within 5 s");
        }

        /// Whether no request is waiting to be taken (does not wait).
        pub fn is_quiet(&self) -> bool {
            self.received.try_recv().is_err()
        }
    }

    fn read(reader: &mut impl BufRead) -> Option<Received> {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).ok()?;
            let Some((name, value)) = line.trim_end().split_once(':') else {
                break;
            };
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        Some(Received {
            headers,
            body: String::from_utf8(body).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::testing::Endpoint;
    use super::*;
    use crate::clock::ManualClock;

    /// The subsystem's times come from its clock, end to end: creation,
    /// the test message's event, and the delivery's signed timestamp.
    #[actix::test]
    async fn a_test_message_reaches_the_endpoint_stamped_by_the_clock() {
        let (_dir, store) = Store::temporary();
        let t0 = datetime!(2030-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock::new(t0));
        let settings = DeliveryPolicy {
            allow_private: true,
            timeout: Duration::from_secs(5),
            retry_schedule: Vec::new(),
            jitter: 0.0,
            disable_after: 1,
            max_retry_after: Duration::from_secs(1),
        };
        let webhooks = Webhooks::start(store.clone(), settings, clock.clone(), Quotas::unmetered())
            .await
            .unwrap();
        let endpoint = Endpoint::new(&[(200, "")]);
        let input = WebhookIn {
            url: endpoint.url.clone(),
            events: vec![DomainEventKind::WebhookTest],
            description: None,
        };
        let (created, _secret) = webhooks.create(input, &Principal::open()).await.unwrap();
        assert_eq!(created.created_at, t0);

        clock.advance(Duration::from_secs(30));
        let sent = webhooks.test(created.id.as_str()).await.unwrap();
        let outbox = store.outbox(0, 10).unwrap();
        assert_eq!(outbox.last().map(|(_, e)| e.at), Some(clock.now()));

        // The dispatcher and the subscriber deliver it on their own.
        let request = endpoint.arrival().await;
        assert_eq!(request.header("webhook-id"), sent);
        assert_eq!(
            request.header("webhook-timestamp"),
            clock.now().unix_timestamp().to_string()
        );
        for _ in 0..500 {
            if webhooks
                .get(created.id.as_str())
                .await
                .unwrap()
                .stats
                .delivered
                == 1
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the delivery was not recorded within 5 s");
    }
}
