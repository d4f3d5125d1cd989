//! The event pipeline: fire-and-forget ingestion with nothing lost.
//!
//! ```text
//! handlers ──try_send──▶ [bounded flume mailbox] ──▶ writer thread
//!                                                     │ batch (size/time bounded)
//!                                                     │ de-duplicate client ids
//!                                                     │ number, fold into the aggregates
//!                                                     │ commit one WriteBatch (events, first exposures, aggregates)
//!                                                     │ acknowledge `ack=persisted` callers
//!                                                     └──▶ other sinks, each its own thread and bounded mailbox
//! ```
//!
//! Handlers never wait on disk: [`Ingest::submit`] either queues the
//! envelope or answers `Overloaded` at once. The writer thread is the
//! store-of-record sink; [`Sink`] implementations (a JSON-lines file today)
//! receive every committed batch after it, in order.

mod pipeline;
mod sink;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use sink::{JsonlSink, Sink, SinkActor};

use crate::aggregator::LiveAggregates;
use crate::domain::Event;
use crate::storage::{StickyRecord, Store};
use crate::{Error, Result};

/// Events to store together, from one request.
pub struct Envelope {
    /// Validated, stamped events.
    pub events: Vec<Event>,
    /// First exposures these events establish.
    pub sticky: Vec<StickyRecord>,
    /// Told `true` once the events are committed (for `ack=persisted`).
    pub ack: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// A committed batch, as sinks and aggregates see it.
#[derive(Debug, Default)]
pub struct Batch {
    /// Events in commit order, numbered, duplicates removed.
    pub events: Vec<Event>,
    /// First exposures committed with them.
    pub sticky: Vec<StickyRecord>,
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
}

enum Command {
    Store(Envelope),
    /// Commit everything queued before this, stop the sinks, then stop.
    Stop,
}

/// The handlers' end of the pipeline.
pub struct Ingest {
    tx: flume::Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<IngestStats>,
}

impl Ingest {
    /// Starts the writer thread, feeding committed batches to `sinks`.
    /// Restores the aggregates from `store` and publishes them to `live`.
    pub fn start(
        store: Store,
        limits: IngestLimits,
        sinks: Vec<SinkActor>,
        live: Arc<LiveAggregates>,
    ) -> Result<Self> {
        let (tx, rx) = flume::bounded(limits.mailbox_capacity);
        let stats = Arc::new(IngestStats::default());
        let writer = pipeline::Writer::new(store, limits, sinks, Arc::clone(&stats), live)?;
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
    /// full (the caller answers 503 and nothing is stored).
    pub fn submit(&self, envelope: Envelope) -> Result<()> {
        let n = envelope.events.len() as u64;
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

    /// Commits everything queued, flushes and stops every sink. Blocks;
    /// idempotent.
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
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            events: Vec::new(),
            sticky: Vec::new(),
            ack: None,
        }
    }

    #[test]
    fn a_full_mailbox_is_refused_at_once_and_counted() {
        // No writer thread: nothing drains the mailbox.
        let (tx, _rx) = flume::bounded(2);
        let ingest = Ingest {
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
        let dir = tempfile::tempdir().expect("temp dir");
        let options = crate::storage::StoreOptions {
            dedup_window_ms: 1000,
            retention_ms: None,
        };
        let store = Store::open(dir.path(), options).expect("store");
        let limits = IngestLimits {
            mailbox_capacity: 10_000,
            flush_interval: Duration::from_secs(60),
            flush_max_events: 1_000_000,
            dedup_window: Duration::from_secs(60),
        };
        let live = Arc::new(LiveAggregates::default());
        let ingest = Ingest::start(store.clone(), limits, Vec::new(), live).expect("start");
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
                ack: Some(tx),
            })
            .expect("queued");
        ingest.close();
        assert_eq!(rx.try_recv(), Ok(true));
        let (stored, _) = store.events(None, 0, i64::MAX, None, 10_000).expect("read");
        assert_eq!(stored.len(), 900, "100 duplicate ids dropped");
        assert_eq!(ingest.stats().duplicates.load(Ordering::Relaxed), 100);
        assert_eq!(store.next_seq().expect("seq"), 901);
    }
}
