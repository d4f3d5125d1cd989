//! Sticky assignments: the variant each unit was first exposed to.
//!
//! Reads are on the assignment hot path, so every experiment keeps its
//! first exposures in memory ([`StickyTable`], a sharded concurrent map:
//! no lock is held across an await and a lookup never touches disk).
//! New entries are persisted fire-and-forget through a bounded flume
//! mailbox to [`StickyWriter`], a dedicated thread that group-commits them
//! to RocksDB; at start the tables are rebuilt from the store.

use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::storage::{StickyRecord, Store};
use crate::{Error, Result};

/// One experiment's first exposures: unit id → variant index.
#[derive(Debug, Default)]
pub struct StickyTable {
    units: DashMap<Box<str>, u8>,
}

impl StickyTable {
    /// The variant `unit` was first exposed to.
    pub fn get(&self, unit: &str) -> Option<usize> {
        self.units.get(unit).map(|v| usize::from(*v))
    }

    /// Number of units remembered.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// Whether no unit has been exposed yet.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Remembers `unit`'s first exposure to `variant`, calling `persist`
    /// exactly once for a unit not seen before. If another request recorded
    /// the unit first, that variant stands and is returned with `false`.
    pub fn record_first(
        &self,
        unit: &str,
        variant: usize,
        persist: impl FnOnce() -> Result<()>,
    ) -> Result<(usize, bool)> {
        match self.units.entry(unit.into()) {
            Entry::Occupied(e) => Ok((usize::from(*e.get()), false)),
            Entry::Vacant(e) => {
                persist()?;
                // Experiments have at most MAX_VARIANTS (20) variants.
                e.insert(variant as u8);
                Ok((variant, true))
            }
        }
    }

    /// Loads a persisted record at start.
    pub fn restore(&self, unit: Box<str>, variant: usize) {
        self.units.insert(unit, variant as u8);
    }
}

enum Command {
    Persist(StickyRecord),
    /// Commit everything queued before this, then stop.
    Stop,
}

/// Batching, limits and the store for [`StickyWriter::spawn`].
#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    /// Mailbox capacity; a full mailbox is reported, never waited on.
    pub capacity: usize,
    /// Longest a record waits before its batch is committed.
    pub flush_interval: Duration,
    /// Most records in one batch.
    pub max_batch: usize,
}

/// The thread that persists first exposures in batches.
pub struct StickyWriter {
    tx: flume::Sender<Command>,
    /// Taken by [`StickyWriter::close`]; the lock is only ever held there.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl StickyWriter {
    /// Starts the writer thread.
    pub fn spawn(store: Store, limits: WriterLimits) -> std::io::Result<Self> {
        let (tx, rx) = flume::bounded(limits.capacity);
        let thread = std::thread::Builder::new()
            .name("sticky-writer".into())
            .spawn(move || write_loop(&store, &rx, limits))?;
        Ok(Self {
            tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `record` without waiting; `Overloaded` when the mailbox is full.
    pub fn persist(&self, record: StickyRecord) -> Result<()> {
        self.tx
            .try_send(Command::Persist(record))
            .map_err(|e| match e {
                flume::TrySendError::Full(_) => Error::Overloaded("sticky assignment"),
                flume::TrySendError::Disconnected(_) => Error::Unavailable,
            })
    }

    /// Records waiting in the mailbox.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    /// Whether the writer thread is still running.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_disconnected()
    }

    /// Commits everything queued and stops the thread. Blocks; idempotent.
    pub fn close(&self) {
        let taken = self.thread.lock().map(|mut t| t.take());
        let Ok(Some(thread)) = taken else {
            return;
        };
        if self.tx.send(Command::Stop).is_err() {
            tracing::error!("sticky writer had already stopped");
        }
        if thread.join().is_err() {
            tracing::error!("sticky writer panicked");
        }
    }
}

fn write_loop(store: &Store, rx: &flume::Receiver<Command>, limits: WriterLimits) {
    let mut batch = Vec::with_capacity(limits.max_batch);
    let mut stopping = false;
    while !stopping {
        match rx.recv() {
            Ok(Command::Persist(r)) => batch.push(r),
            Ok(Command::Stop) | Err(_) => stopping = true,
        }
        let deadline = Instant::now() + limits.flush_interval;
        while !stopping && batch.len() < limits.max_batch {
            match rx.recv_deadline(deadline) {
                Ok(Command::Persist(r)) => batch.push(r),
                Ok(Command::Stop) | Err(flume::RecvTimeoutError::Disconnected) => stopping = true,
                Err(flume::RecvTimeoutError::Timeout) => break,
            }
        }
        if !batch.is_empty() {
            commit(store, &batch);
            batch.clear();
        }
    }
    tracing::info!("sticky writer drained and stopped");
}

/// Commits with a few retries: a transient RocksDB error (a full disk being
/// cleared, a stall) should not cost first exposures.
fn commit(store: &Store, batch: &[StickyRecord]) {
    let mut delay = Duration::from_millis(10);
    for attempt in 1..=5 {
        match store.put_sticky(batch) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(attempt, error = %e, records = batch.len(), "sticky commit failed");
                std::thread::sleep(delay);
                delay *= 4;
            }
        }
    }
    tracing::error!(
        records = batch.len(),
        "sticky assignments could not be persisted; they hold until restart"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ExperimentKey;

    #[test]
    fn the_first_exposure_wins_and_is_persisted_once() {
        let table = StickyTable::default();
        let mut persisted = 0;
        let first = table.record_first("alice", 1, || {
            persisted += 1;
            Ok(())
        });
        assert_eq!(first.unwrap(), (1, true));
        let second = table.record_first("alice", 0, || {
            persisted += 1;
            Ok(())
        });
        assert_eq!(second.unwrap(), (1, false));
        assert_eq!(persisted, 1);
        assert_eq!(table.get("alice"), Some(1));
    }

    #[test]
    fn a_failed_persist_remembers_nothing() {
        let table = StickyTable::default();
        let result = table.record_first("bob", 1, || Err(Error::Overloaded("test")));
        assert!(result.is_err());
        assert_eq!(table.get("bob"), None);
    }

    #[test]
    fn close_commits_everything_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let limits = WriterLimits {
            capacity: 10_000,
            flush_interval: Duration::from_secs(60),
            max_batch: 1_000_000,
        };
        let writer = StickyWriter::spawn(store.clone(), limits).unwrap();
        let exp = ExperimentKey::try_from("e").unwrap();
        for i in 0..5_000u64 {
            writer
                .persist(StickyRecord {
                    experiment: exp.clone(),
                    unit: format!("u{i}").into(),
                    variant: "a".into(),
                    first_exposed_ms: i,
                })
                .unwrap();
        }
        writer.close();
        assert_eq!(store.sticky().count(), 5_000);
    }

    #[test]
    fn a_full_mailbox_is_reported_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // The thread is not started, so nothing drains the mailbox.
        let (tx, _rx) = flume::bounded(1);
        let writer = StickyWriter {
            tx,
            thread: Mutex::new(None),
        };
        drop(store);
        let record = || StickyRecord {
            experiment: ExperimentKey::try_from("e").unwrap(),
            unit: "u".into(),
            variant: "a".into(),
            first_exposed_ms: 0,
        };
        assert!(writer.persist(record()).is_ok());
        assert!(matches!(
            writer.persist(record()),
            Err(Error::Overloaded(_))
        ));
    }
}
