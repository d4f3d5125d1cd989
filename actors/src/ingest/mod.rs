//! The event pipeline: fire-and-forget ingestion with nothing lost.
//!
//! ```text
//! handlers ──by unit──▶ [bounded mailbox per partition] ──▶ writer thread per partition
//!                                                     │ batch (size/time bounded)
//!                                                     │ de-duplicate client ids
//!                                                     │ number, fold into the aggregates
//!                                                     │ commit one WriteBatch (events, first exposures, aggregates),
//!                                                     │   fsynced when an `ack=persisted` caller waits on it
//!                                                     │ acknowledge `ack=persisted` callers
//!                                                     └──▶ other sinks, each its own thread and bounded mailbox
//! ```
//!
//! Handlers never wait on disk: [`Mailbox::submit`] queues the envelope,
//! or, when a mailbox is full, waits up to `ingest.enqueue_wait_ms` for
//! its writer to take parts ([`Room`](crate::room::Room)) before answering `Overloaded`.
//! The writer threads are the store-of-record sink; [`Sink`]
//! implementations (a JSON-lines file today) receive every committed batch
//! after it, in order, at least once: each keeps a cursor in the store and
//! replays from it after a crash or an error.
//!
//! Faults surface rather than wedge: a commit that still fails after
//! `commit_retries` retries marks the store failed ([`IngestStats::store_failure`]).
//! From then on the batch's `ack=persisted` callers are told `false`, its
//! fire-and-forget events are counted as lost, [`Mailbox::submit`] refuses
//! with `Unavailable`, readiness fails and an alert is raised. The writer
//! does not try again until a restart: the in-memory aggregates already
//! count the failed batch, so committing later batches would store
//! aggregates that disagree with the stored events (and RocksDB itself
//! refuses writes after a failed WAL write until it is reopened).
//!
//! - [`accept`]: checking and attributing client events;
//! - [`mailbox`]: the bounded mailbox and the counters;
//! - [`writer`]: the writer thread (batch, de-duplicate, number, fold,
//!   commit, acknowledge, fan out);
//! - [`aggregator`]: per-experiment and per-unit sums, owned by the writer;
//! - [`derived`]: tells the writers each experiment's capped and ratio
//!   metrics, whose sums depend on their definitions;
//! - [`sink`]: the extra sinks, each on its own thread with a cursor;
//! - [`retention`]: the sweep that expires raw events;
//! - [`publish`] and [`owner`]: cluster mode, where handlers publish to
//!   the replicated event log and each partition's owner folds it into
//!   its writer.

mod accept;
pub mod aggregator;
mod aliases;
pub(crate) mod derived;
mod mailbox;
mod owner;
mod publish;
pub mod retention;
mod sequencer;
mod sink;
mod totals;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use aggregator::LiveAggregates;
pub use aliases::{Identity, LinkedId};
pub use mailbox::{Envelope, IngestLimits, IngestStats, Mailbox};
pub use owner::Owner;
pub use publish::Publisher;
pub use sink::{JsonlSink, Sink, SinkWorker};

use crate::clock::Clock;
use crate::domain::{Event, EventIn, EventLimits, ExperimentKey};
use crate::experiments::exposure::{ExposureQueue, FirstExposures};
use crate::experiments::registry::Registry;
use crate::storage::{blocking, Store};
use crate::Result;

/// What [`Intake::accept`] queued.
pub struct Accepted {
    /// Number of events queued.
    pub count: usize,
    /// Resolves `true` once they are committed, when asked for.
    pub persisted: Option<tokio::sync::oneshot::Receiver<bool>>,
}

/// A page of exported events.
pub struct EventPage {
    /// The events, by time then commit order.
    pub events: Vec<Event>,
    /// Opaque cursor of the next page.
    pub next: Option<Vec<u8>>,
}

/// What the ingest service bounds besides events.
#[derive(Debug, Clone, Copy)]
pub struct IntakeBounds {
    /// An export page stops once it holds this many bytes of events.
    pub max_export_page_bytes: usize,
    /// Most ids linked to one unit.
    pub max_links_per_unit: usize,
}

/// The ingest service: accepts client events into the mailbox and reads
/// stored ones back.
pub struct Intake {
    mailbox: Arc<Mailbox>,
    /// Cluster mode: events go to the event log, not to the mailbox.
    publisher: Option<Arc<Publisher>>,
    registry: Arc<Registry>,
    store: Store,
    clock: Arc<dyn Clock>,
    limits: EventLimits,
    max_export_page_bytes: usize,
    /// Most ids linked to one unit.
    max_links_per_unit: usize,
    /// Ids and units with a link being made.
    busy: aliases::Busy,
}

impl Intake {
    /// The service over a started mailbox.
    pub(crate) fn new(
        mailbox: Arc<Mailbox>,
        publisher: Option<Arc<Publisher>>,
        registry: Arc<Registry>,
        store: Store,
        clock: Arc<dyn Clock>,
        limits: EventLimits,
        bounds: IntakeBounds,
    ) -> Self {
        Self {
            mailbox,
            publisher,
            registry,
            store,
            clock,
            limits,
            max_export_page_bytes: bounds.max_export_page_bytes,
            max_links_per_unit: bounds.max_links_per_unit,
            busy: aliases::Busy::default(),
        }
    }

    /// Checks, attributes and queues client events, all or none (see
    /// [`accept`]); waits for room in a full mailbox up to
    /// `ingest.enqueue_wait_ms`. With `wait`, the answer carries a receiver
    /// that resolves once they are committed with a synced WAL (in cluster
    /// mode: once the replicated log stored them on a quorum).
    pub async fn accept(&self, inputs: Vec<EventIn>, wait: bool) -> Result<Accepted> {
        let mut firsts = FirstExposures::default();
        let events = accept::attribute(
            inputs,
            &self.registry.load(),
            &mut firsts,
            &mut aliases::Resolver::new(&self.store),
            &self.limits,
            self.clock.now(),
        )?;
        let count = events.len();
        if let Some(publisher) = &self.publisher {
            let persisted = publisher.send(events, firsts, wait).await?;
            return Ok(Accepted { count, persisted });
        }
        let (ack, persisted) = if wait {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.mailbox
            .submit(Envelope::new(events, firsts, ack))
            .await?;
        Ok(Accepted { count, persisted })
    }

    /// Counts events refused before they were accepted (a body of the
    /// wrong shape, an invalid event), so rejection figures include them.
    pub fn count_invalid(&self, events: u64) {
        self.mailbox
            .stats()
            .rejected_invalid
            .fetch_add(events, Ordering::Relaxed);
    }

    /// A page of stored events of `experiment` (or of events without one)
    /// with `from_ms <= timestamp < to_ms`: at most `limit` events, and it
    /// ends early once it holds `limits.max_export_page_bytes`.
    pub async fn events(
        &self,
        experiment: Option<ExperimentKey>,
        from_ms: i64,
        to_ms: i64,
        cursor: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<EventPage> {
        let store = self.store.clone();
        let max_bytes = self.max_export_page_bytes;
        blocking(move || {
            let (events, next) = store.events(
                experiment.as_ref(),
                from_ms,
                to_ms,
                cursor.as_deref(),
                limit,
                max_bytes,
            )?;
            Ok(EventPage { events, next })
        })
        .await
    }

    /// The mailbox's depth and capacity.
    pub fn mailbox(&self) -> (usize, usize) {
        (self.mailbox.depth(), self.mailbox.capacity())
    }

    /// Drains the mailbox into the store and stops the writer (shutdown).
    pub fn close(&self) {
        self.mailbox.close();
    }

    /// Whether the writer thread is running.
    pub fn is_alive(&self) -> bool {
        self.mailbox.is_alive()
    }

    /// Why the event store was marked failed (a commit refused after every
    /// retry; events are refused until restart), or `None` while it works.
    pub fn store_failure(&self) -> Option<String> {
        self.mailbox.stats().store_failure()
    }

    /// Publishes the pipeline's counters and the mailbox's depth.
    pub fn export_metrics(&self) {
        use crate::metrics as m;
        use metrics::{counter, gauge};
        let stats = self.mailbox.stats();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter!(m::EVENTS_ACCEPTED).absolute(load(&stats.accepted));
        counter!(m::EVENTS_REJECTED, "reason" => "mailbox_full")
            .absolute(load(&stats.rejected_full_events));
        counter!(m::EVENTS_REJECTED, "reason" => "invalid").absolute(load(&stats.rejected_invalid));
        counter!(m::EVENTS_PERSISTED).absolute(load(&stats.persisted));
        counter!(m::EVENTS_DUPLICATE).absolute(load(&stats.duplicates));
        counter!(m::EVENTS_REJECTED, "reason" => "store_failed")
            .absolute(load(&stats.rejected_failed));
        counter!(m::EVENTS_LOST).absolute(load(&stats.lost));
        counter!(m::INGEST_COMMIT_FAILURES).absolute(load(&stats.commit_failures));
        gauge!(m::INGEST_STORE_FAILED).set(f64::from(u8::from(stats.is_failed())));
        gauge!(m::MAILBOX_DEPTH, "mailbox" => "ingest").set(self.mailbox.depth() as f64);
        gauge!(m::MAILBOX_CAPACITY, "mailbox" => "ingest").set(self.mailbox.capacity() as f64);
    }
}

/// Exposures from assignments go through the same mailbox as client events.
impl ExposureQueue for Mailbox {
    fn queue(&self, events: Vec<Event>, firsts: FirstExposures) -> Result<()> {
        self.try_submit(Envelope::new(events, firsts, None))
    }

    fn respec(&self, experiment: &str, derivations: crate::domain::Derivations) {
        Mailbox::respec(self, experiment, derivations);
    }

    fn room(&self) -> &crate::room::Room {
        Mailbox::room(self)
    }
}
