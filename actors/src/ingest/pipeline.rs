//! The writer thread: the store-of-record sink, and owner of the
//! aggregates (see [`crate::aggregator`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Batch, Command, Envelope, IngestLimits, IngestStats, SinkActor};
use crate::aggregator::{Aggregator, LiveAggregates};
use crate::analytics;
use crate::storage::{now_ms, Commit, Store};
use crate::Result;

/// State of the writer thread.
pub(super) struct Writer {
    store: Store,
    limits: IngestLimits,
    sinks: Vec<SinkActor>,
    stats: Arc<IngestStats>,
    next_seq: u64,
    aggregator: Aggregator,
    live: Arc<LiveAggregates>,
}

impl Writer {
    pub(super) fn new(
        store: Store,
        limits: IngestLimits,
        sinks: Vec<SinkActor>,
        stats: Arc<IngestStats>,
        live: Arc<LiveAggregates>,
    ) -> Result<Self> {
        let next_seq = store.next_seq()?;
        let aggregator = Aggregator::restore(store.aggregates()?, store.unit_exposures()?);
        aggregator.publish_all(&live);
        Ok(Self {
            store,
            limits,
            sinks,
            stats,
            next_seq,
            aggregator,
            live,
        })
    }

    /// Batches, commits and fans out until told to stop; then drains.
    pub(super) fn run(mut self, rx: &flume::Receiver<Command>) {
        let mut pending: Vec<Envelope> = Vec::new();
        let mut stopping = false;
        while !stopping {
            let mut events = 0;
            match rx.recv() {
                Ok(Command::Store(e)) => {
                    events += e.events.len();
                    pending.push(e);
                }
                Ok(Command::Stop) | Err(_) => stopping = true,
            }
            let deadline = Instant::now() + self.limits.flush_interval;
            while !stopping && events < self.limits.flush_max_events {
                match rx.recv_deadline(deadline) {
                    Ok(Command::Store(e)) => {
                        events += e.events.len();
                        pending.push(e);
                    }
                    Ok(Command::Stop) | Err(flume::RecvTimeoutError::Disconnected) => {
                        stopping = true
                    }
                    Err(flume::RecvTimeoutError::Timeout) => break,
                }
            }
            if !pending.is_empty() {
                self.commit(&mut pending);
            }
        }
        for sink in self.sinks.drain(..) {
            sink.close();
        }
        tracing::info!(
            persisted = self.stats.persisted.load(Ordering::Relaxed),
            "ingest writer drained and stopped"
        );
    }

    /// Commits everything pending as one WriteBatch with the aggregates it
    /// changes, retrying until the store takes it: acknowledged events are
    /// never dropped. While it retries the mailbox fills and handlers
    /// answer 503.
    fn commit(&mut self, pending: &mut Vec<Envelope>) {
        let mut batch = Batch::default();
        let mut acks = Vec::new();
        for envelope in pending.drain(..) {
            batch.events.extend(envelope.events);
            batch.sticky.extend(envelope.sticky);
            acks.extend(envelope.ack);
        }
        self.drop_duplicates(&mut batch);
        let mut seq = self.next_seq;
        for e in &mut batch.events {
            e.seq = seq;
            seq += 1;
        }
        self.aggregator.fold(&batch.events);
        let buckets = analytics::deltas(&batch.events);
        let started = Instant::now();
        let ids: Vec<&str> = batch
            .events
            .iter()
            .filter(|e| e.client_id)
            .map(|e| &*e.event_id)
            .collect();
        retry("commit", || {
            self.store.commit(&Commit {
                events: &batch.events,
                sticky: &batch.sticky,
                client_ids: &ids,
                next_seq: seq,
                aggregates: Some(self.aggregator.changes()),
                buckets: Some(&buckets),
            })
        });
        drop(ids);
        metrics::histogram!(crate::metrics::SINK_COMMIT).record(started.elapsed().as_secs_f64());
        metrics::histogram!(crate::metrics::SINK_BATCH).record(batch.events.len() as f64);
        self.next_seq = seq;
        self.aggregator.published(&self.live);
        self.stats
            .persisted
            .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        for ack in acks {
            // The caller may have given up waiting; nothing to do then.
            let _ = ack.send(true);
        }
        if !self.sinks.is_empty() {
            let batch = Arc::new(batch);
            for sink in &self.sinks {
                sink.send(Arc::clone(&batch));
            }
        }
    }

    /// Removes events whose client id was committed within the window or
    /// repeats one earlier in the batch.
    fn drop_duplicates(&self, batch: &mut Batch) {
        let window_start = now_ms().saturating_sub(
            u64::try_from(self.limits.dedup_window.as_millis()).unwrap_or(u64::MAX),
        );
        let client_ids: Vec<&str> = batch
            .events
            .iter()
            .filter(|e| e.client_id)
            .map(|e| &*e.event_id)
            .collect();
        if client_ids.is_empty() {
            return;
        }
        let seen = retry("reading event ids", || {
            self.store.seen_ids(&client_ids, window_start)
        });
        let mut duplicate = seen.into_iter();
        let mut in_batch = HashSet::with_capacity(client_ids.len());
        let keep: Vec<bool> = batch
            .events
            .iter()
            .map(|e| {
                !e.client_id
                    || (!duplicate.next().unwrap_or(false) && in_batch.insert(&*e.event_id))
            })
            .collect();
        drop(in_batch);
        let before = batch.events.len();
        let mut keep = keep.into_iter();
        batch.events.retain(|_| keep.next().unwrap_or(true));
        let dropped = before - batch.events.len();
        if dropped > 0 {
            self.stats
                .duplicates
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }
}

/// Runs a store operation until it succeeds, backing off up to 5 s.
fn retry<T>(what: &str, mut op: impl FnMut() -> Result<T>) -> T {
    let mut delay = Duration::from_millis(10);
    loop {
        match op() {
            Ok(t) => return t,
            Err(e) => {
                tracing::error!(error = %e, "{what} failed; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
