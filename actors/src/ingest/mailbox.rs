//! The bounded mailbox between the handlers and the writer thread, and the
//! counters both sides keep. [`Mailbox::submit`] either queues an envelope
//! or refuses at once: handlers never wait on disk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::sink::SinkWorker;
use super::writer::{self, Committer};

use super::aggregator::LiveAggregates;
use crate::domain::Event;
use crate::domain::StickyAssignment;
use crate::experiments::sticky::Claim;
use crate::storage::Store;
use crate::{Error, Result};

/// Events to store together, from one request.
pub struct Envelope {
    /// Validated, stamped events.
    pub events: Vec<Event>,
    /// First exposures these events may establish.
    pub sticky: Vec<StickyAssignment>,
    /// Holds them pending until the commit; dropped after it (or with a
    /// refused envelope), which releases them.
    pub claims: Vec<Claim>,
    /// Told `true` once the events are committed (for `ack=persisted`).
    pub ack: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// A committed batch, as sinks and aggregates see it.
#[derive(Debug, Default)]
pub struct Batch {
    /// Events in commit order, numbered, duplicates removed.
    pub events: Vec<Event>,
    /// First exposures committed with them.
    pub sticky: Vec<StickyAssignment>,
}

/// Batching and capacity of the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Envelopes the mailbox holds before `submit` answers `Overloaded`.
    pub mailbox_capacity: usize,
    /// Longest an event waits before its batch is committed.
    pub flush_interval: Duration,
    /// Most events in one committed batch.
    pub flush_max_events: usize,
    /// How long a client event id is remembered for de-duplication.
    pub dedup_window: Duration,
    /// Retries of a failing commit before the store is marked failed.
    pub commit_retries: u32,
    /// Linear back-off of those retries: the n-th waits n × this.
    pub commit_retry: Duration,
    /// Distinct measures counted per experiment (see [`super::aggregator`]).
    pub max_measures: usize,
}

/// Counters the pipeline keeps for operators and tests.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Events accepted into the mailbox.
    pub accepted: AtomicU64,
    /// Envelopes refused because the mailbox was full.
    pub rejected_full: AtomicU64,
    /// Events in those envelopes.
    pub rejected_full_events: AtomicU64,
    /// Events refused by validation (the whole request is refused).
    pub rejected_invalid: AtomicU64,
    /// Events committed to the store.
    pub persisted: AtomicU64,
    /// Events dropped as duplicates of an earlier event id.
    pub duplicates: AtomicU64,
    /// Events refused because the store has failed.
    pub rejected_failed: AtomicU64,
    /// Events answered 202 without `ack=persisted` whose batch could not
    /// be committed: acknowledged, then lost.
    pub lost: AtomicU64,
    /// Failed attempts of the writer's store operations (each retry counts).
    pub commit_failures: AtomicU64,
    /// Set once a commit failed after every retry; stays set until restart.
    failed: AtomicBool,
    /// Why, for readiness and the alert.
    failure: Mutex<Option<String>>,
}

impl IngestStats {
    /// Why the store was marked failed, or `None` while it works.
    pub fn store_failure(&self) -> Option<String> {
        if !self.is_failed() {
            return None;
        }
        let reason = self.failure.lock().ok().and_then(|r| r.clone());
        Some(reason.unwrap_or_else(|| "the event store failed".to_owned()))
    }

    /// Whether the store was marked failed (one atomic load).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the store failed because of `reason`; the first reason stays.
    pub(crate) fn mark_failed(&self, reason: String) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(reason);
        }
        self.failed.store(true, Ordering::Release);
    }
}

pub(super) enum Command {
    Store(Envelope),
    /// Commit everything queued before this, stop the sinks, then stop.
    Stop,
}

/// The handlers' end of the pipeline.
pub struct Mailbox {
    tx: flume::Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<IngestStats>,
}

impl Mailbox {
    /// Starts the writer thread, feeding committed batches to `sinks`.
    /// Restores the aggregates from `store` and publishes them to `live`.
    pub fn start(
        store: Store,
        limits: IngestLimits,
        sinks: Vec<SinkWorker>,
        live: Arc<LiveAggregates>,
    ) -> Result<Self> {
        let committer = Box::new(store.clone());
        Self::start_with(store, limits, sinks, live, committer)
    }

    /// [`Mailbox::start`], committing through `committer` (a test double
    /// that fails on demand) instead of the store itself.
    fn start_with(
        store: Store,
        limits: IngestLimits,
        sinks: Vec<SinkWorker>,
        live: Arc<LiveAggregates>,
        committer: Box<dyn Committer>,
    ) -> Result<Self> {
        let (tx, rx) = flume::bounded(limits.mailbox_capacity);
        let stats = Arc::new(IngestStats::default());
        let writer = writer::Writer::new(store, limits, sinks, Arc::clone(&stats), live)?
            .committing_to(committer);
        let thread = std::thread::Builder::new()
            .name("ingest-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(|_| Error::Unavailable)?;
        Ok(Self {
            tx,
            thread: Mutex::new(Some(thread)),
            stats,
        })
    }

    /// Queues an envelope without waiting; `Overloaded` when the mailbox is
    /// full, `Unavailable` once the store has failed (the caller answers
    /// 503 and nothing is stored).
    pub fn submit(&self, envelope: Envelope) -> Result<()> {
        let n = envelope.events.len() as u64;
        if self.stats.is_failed() {
            self.stats.rejected_failed.fetch_add(n, Ordering::Relaxed);
            return Err(Error::Unavailable);
        }
        match self.tx.try_send(Command::Store(envelope)) {
            Ok(()) => {
                self.stats.accepted.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }
            Err(flume::TrySendError::Full(_)) => {
                self.stats.rejected_full.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .rejected_full_events
                    .fetch_add(n, Ordering::Relaxed);
                Err(Error::Overloaded("ingest"))
            }
            Err(flume::TrySendError::Disconnected(_)) => Err(Error::Unavailable),
        }
    }

    /// Envelopes waiting in the mailbox.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    /// The mailbox's capacity.
    pub fn capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(usize::MAX)
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }

    /// Whether the writer thread is running.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_disconnected()
    }

    /// Commits everything queued, flushes and stops every sink. Blocks, but
    /// not for ever: a failing store is given up on after its retries, and
    /// what is queued then is refused at once. Idempotent.
    pub fn close(&self) {
        let taken = self.thread.lock().map(|mut t| t.take());
        let Ok(Some(thread)) = taken else {
            return;
        };
        if self.tx.send(Command::Stop).is_err() {
            tracing::error!("ingest writer had already stopped");
        }
        if thread.join().is_err() {
            tracing::error!("ingest writer panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            events: Vec::new(),
            sticky: Vec::new(),
            claims: Vec::new(),
            ack: None,
        }
    }

    #[test]
    fn a_full_mailbox_is_refused_at_once_and_counted() {
        // No writer thread: nothing drains the mailbox.
        let (tx, _rx) = flume::bounded(2);
        let ingest = Mailbox {
            tx,
            thread: Mutex::new(None),
            stats: Arc::default(),
        };
        assert!(ingest.submit(envelope()).is_ok());
        assert!(ingest.submit(envelope()).is_ok());
        assert!(matches!(
            ingest.submit(envelope()),
            Err(Error::Overloaded("ingest"))
        ));
        assert_eq!(ingest.stats().rejected_full.load(Ordering::Relaxed), 1);
        assert_eq!((ingest.depth(), ingest.capacity()), (2, 2));
    }

    #[test]
    fn close_commits_everything_queued_and_acknowledges_it() {
        let (_dir, store) = Store::temporary();
        let limits = IngestLimits {
            mailbox_capacity: 10_000,
            flush_interval: Duration::from_secs(60),
            flush_max_events: 1_000_000,
            dedup_window: Duration::from_secs(60),
            commit_retries: 5,
            commit_retry: Duration::from_millis(1),
            max_measures: 100,
        };
        let live = Arc::new(LiveAggregates::default());
        let ingest = Mailbox::start(store.clone(), limits, Vec::new(), live).expect("start");
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let event = |i: usize| Event {
            event_id: format!("id-{}", i % 900).into(),
            timestamp_ms: 1,
            received_ms: 1,
            client_id: true,
            ..Event::sample("conversion", "u")
        };
        ingest
            .submit(Envelope {
                events: (0..1000).map(event).collect(),
                sticky: Vec::new(),
                claims: Vec::new(),
                ack: Some(tx),
            })
            .expect("queued");
        ingest.close();
        assert_eq!(rx.try_recv(), Ok(true));
        let (stored, _) = store
            .events(None, 0, i64::MAX, None, 10_000, usize::MAX)
            .expect("read");
        assert_eq!(stored.len(), 900, "100 duplicate ids dropped");
        assert_eq!(ingest.stats().duplicates.load(Ordering::Relaxed), 100);
        assert_eq!(store.next_seq().expect("seq"), 901);
    }

    /// The de-duplication window is measured on the store's clock: moving
    /// the clock past it lets a repeated client id through again.
    #[test]
    fn the_dedup_window_follows_the_stores_clock() {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(crate::clock::ManualClock::new(
            time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
        ));
        let options = crate::storage::StoreOptions {
            dedup_window_ms: 60_000,
            retention_ms: None,
            cache_bytes: 8 << 20,
        };
        let store =
            Store::open_with_clock(dir.path(), options, Arc::clone(&clock) as _).expect("store");
        let limits = IngestLimits {
            mailbox_capacity: 16,
            flush_interval: Duration::from_millis(1),
            flush_max_events: 100,
            dedup_window: Duration::from_secs(60),
            commit_retries: 0,
            commit_retry: Duration::from_millis(1),
            max_measures: 10,
        };
        let live = Arc::new(LiveAggregates::default());
        let ingest = Mailbox::start(store.clone(), limits, Vec::new(), live).expect("start");
        let send = || {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let event = Event {
                event_id: "same".into(),
                client_id: true,
                ..Event::sample("conversion", "u")
            };
            ingest
                .submit(Envelope {
                    events: vec![event],
                    sticky: Vec::new(),
                    claims: Vec::new(),
                    ack: Some(tx),
                })
                .expect("queued");
            rx.blocking_recv().expect("answered")
        };
        assert!(send());
        assert!(send());
        assert_eq!(ingest.stats().duplicates.load(Ordering::Relaxed), 1);
        clock.advance(Duration::from_secs(61));
        assert!(send());
        ingest.close();
        assert_eq!(
            ingest.stats().duplicates.load(Ordering::Relaxed),
            1,
            "past the window, the id is new again"
        );
        assert_eq!(store.next_seq().expect("seq"), 3, "two events stored");
    }

    /// Commits through the store after failing the first `failures` calls.
    struct Flaky {
        store: Store,
        failures: u64,
        calls: Arc<AtomicU64>,
    }

    impl Committer for Flaky {
        fn commit(&mut self, commit: &crate::storage::Commit<'_>) -> Result<()> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.failures > 0 {
                self.failures -= 1;
                return Err(Error::Corrupt {
                    cf: "events",
                    reason: "injected failure".into(),
                });
            }
            self.store.commit(commit)
        }

        fn seen_ids(&mut self, ids: &[&str], since_ms: u64) -> Result<Vec<bool>> {
            self.store.seen_ids(ids, since_ms)
        }

        fn unit_states(
            &mut self,
            units: &[&str],
        ) -> Result<Vec<Option<Vec<crate::domain::Exposure>>>> {
            self.store.unit_states(units)
        }
    }

    /// An ingest pipeline whose commits fail `failures` times, with five
    /// retries 1 ms apart (linear), and a counter of commit calls.
    fn flaky(failures: u64) -> (tempfile::TempDir, Store, Mailbox, Arc<AtomicU64>) {
        let (dir, store) = Store::temporary();
        let limits = IngestLimits {
            mailbox_capacity: 100,
            flush_interval: Duration::from_millis(20),
            flush_max_events: 1_000_000,
            dedup_window: Duration::from_secs(60),
            commit_retries: 5,
            commit_retry: Duration::from_millis(1),
            max_measures: 100,
        };
        let calls = Arc::new(AtomicU64::new(0));
        let committer = Flaky {
            store: store.clone(),
            failures,
            calls: Arc::clone(&calls),
        };
        let live = Arc::new(LiveAggregates::default());
        let ingest =
            Mailbox::start_with(store.clone(), limits, Vec::new(), live, Box::new(committer))
                .expect("start");
        (dir, store, ingest, calls)
    }

    fn events(n: usize) -> Vec<Event> {
        (0..n)
            .map(|_| Event {
                timestamp_ms: 1,
                received_ms: 1,
                ..Event::sample("conversion", "u")
            })
            .collect()
    }

    fn stored(store: &Store) -> usize {
        store
            .events(None, 0, i64::MAX, None, 10_000, usize::MAX)
            .expect("read")
            .0
            .len()
    }

    #[test]
    fn a_commit_that_fails_a_few_times_is_retried_and_acknowledged() {
        let (_dir, store, ingest, calls) = flaky(3);
        let (tx, rx) = tokio::sync::oneshot::channel();
        ingest
            .submit(Envelope {
                events: events(10),
                sticky: Vec::new(),
                claims: Vec::new(),
                ack: Some(tx),
            })
            .expect("queued");
        assert_eq!(rx.blocking_recv(), Ok(true));
        assert_eq!(
            calls.load(Ordering::Relaxed),
            4,
            "three failures, then success"
        );
        let stats = ingest.stats();
        assert_eq!(stats.commit_failures.load(Ordering::Relaxed), 3);
        assert_eq!(stats.store_failure(), None);
        ingest.close();
        assert_eq!(stored(&store), 10);
    }

    #[test]
    fn a_commit_that_keeps_failing_is_given_up_refused_and_does_not_hold_up_close() {
        let (_dir, store, ingest, calls) = flaky(u64::MAX);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        for ack in [Some(tx), None] {
            ingest
                .submit(Envelope {
                    events: events(if ack.is_some() { 10 } else { 7 }),
                    sticky: Vec::new(),
                    claims: Vec::new(),
                    ack,
                })
                .expect("queued");
        }
        assert_eq!(rx.blocking_recv(), Ok(false), "the waiter hears false");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(calls.load(Ordering::Relaxed), 6, "one try and five retries");
        let stats = ingest.stats();
        assert_eq!(stats.commit_failures.load(Ordering::Relaxed), 6);
        let failure = stats.store_failure().expect("marked failed");
        assert!(failure.contains("after 5 retries"), "{failure}");
        // Counted once its batch is refused, which may be just after the waiter's.
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.lost.load(Ordering::Relaxed) < 7 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            stats.lost.load(Ordering::Relaxed),
            7,
            "fire-and-forget events lost"
        );

        assert!(matches!(
            ingest.submit(Envelope {
                events: events(3),
                sticky: Vec::new(),
                claims: Vec::new(),
                ack: None,
            }),
            Err(Error::Unavailable)
        ));
        assert_eq!(stats.rejected_failed.load(Ordering::Relaxed), 3);
        let closing = Instant::now();
        ingest.close();
        assert!(
            closing.elapsed() < Duration::from_secs(1),
            "close is prompt"
        );
        assert_eq!(
            calls.load(Ordering::Relaxed),
            6,
            "no commit after giving up"
        );
        assert_eq!(stored(&store), 0);
    }
}
