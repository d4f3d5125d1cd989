//! The facade the HTTP layer calls: one method per thing a client can ask.

use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;

use crate::assignment::{Compiled, Decision, Reason};
use crate::catalog::{Catalog, CreateExperiment, Entry, Registry};
use crate::clock::Clock;
use crate::domain::{
    Action, ExperimentIn, ExperimentKey, ExperimentPatch, Status, Variant, VariantKey,
};
use crate::experiment::{PatchExperiment, TransitionExperiment};
use crate::sticky::{StickyWriter, WriterLimits};
use crate::storage::{StickyRecord, Store};
use crate::{Error, Result};

/// What the engine needs to start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// RocksDB directory.
    pub storage_path: PathBuf,
    /// Batching of persisted first exposures.
    pub writer: WriterLimits,
}

/// One unit's assignment to one experiment. Holds the snapshot it was
/// decided on, so the response borrows keys and payloads instead of
/// cloning them.
pub struct Assignment {
    compiled: Arc<Compiled>,
    decision: Decision,
}

impl Assignment {
    /// The experiment's key.
    pub fn experiment(&self) -> &ExperimentKey {
        &self.compiled.experiment().key
    }

    /// The variant served.
    pub fn variant(&self) -> &Variant {
        &self.compiled.experiment().variants[self.decision.variant]
    }

    /// Whether the unit takes part.
    pub fn in_experiment(&self) -> bool {
        self.decision.in_experiment
    }

    /// Why it got this variant.
    pub fn reason(&self) -> Reason {
        self.decision.reason
    }
}

/// A page of experiments.
pub struct Page {
    /// The experiments, in key order.
    pub items: Vec<Arc<Compiled>>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<ExperimentKey>,
}

/// The running engine.
pub struct Engine {
    registry: Arc<Registry>,
    catalog: Addr<Catalog>,
    store: Store,
    sticky_writer: StickyWriter,
    clock: Arc<dyn Clock>,
}

impl Engine {
    /// Opens the store, restores every experiment and its sticky
    /// assignments, and starts the actors. Must run inside an actix system.
    pub async fn open(config: EngineConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let path = config.storage_path.clone();
        let (store, experiments) = blocking(move || {
            let store = Store::open(&path)?;
            let experiments = store.experiments()?;
            Ok((store, experiments))
        })
        .await?;
        let registry = Arc::new(Registry::default());
        for experiment in experiments {
            registry.start(experiment, store.clone(), Arc::clone(&clock));
        }
        let restored = {
            let (store, registry) = (store.clone(), Arc::clone(&registry));
            blocking(move || restore_sticky(&store, &registry)).await?
        };
        tracing::info!(
            experiments = registry.load().len(),
            sticky_assignments = restored,
            path = %config.storage_path.display(),
            "store opened"
        );
        let sticky_writer =
            StickyWriter::spawn(store.clone(), config.writer).map_err(|_| Error::Unavailable)?;
        let catalog =
            Catalog::new(Arc::clone(&registry), store.clone(), Arc::clone(&clock)).start();
        Ok(Self {
            registry,
            catalog,
            store,
            sticky_writer,
            clock,
        })
    }

    /// Creates a draft experiment.
    pub async fn create(&self, input: ExperimentIn) -> Result<Arc<Compiled>> {
        self.catalog.send(CreateExperiment(input)).await?
    }

    /// The current snapshot of one experiment.
    pub fn get(&self, key: &str) -> Result<Arc<Compiled>> {
        Ok(self.entry(key)?.slot.snapshot())
    }

    /// Experiments in key order after `after`, at most `limit`. Archived
    /// experiments only appear when asked for by status.
    pub fn list(&self, status: Option<Status>, after: Option<&str>, limit: usize) -> Page {
        let entries = self.registry.load();
        let range = match after {
            Some(after) => entries
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => entries.range::<str, _>(..),
        };
        let mut items: Vec<Arc<Compiled>> = Vec::with_capacity(limit.min(entries.len()));
        let mut next = None;
        for entry in range.map(|(_, entry)| entry) {
            let compiled = entry.slot.snapshot();
            let s = compiled.experiment().status;
            let wanted = match status {
                Some(wanted) => s == wanted,
                None => s != Status::Archived,
            };
            if !wanted {
                continue;
            }
            if items.len() == limit {
                next = items.last().map(|last| last.experiment().key.clone());
                break;
            }
            items.push(compiled);
        }
        Page { items, next }
    }

    /// Applies a patch through the experiment's actor.
    pub async fn patch(&self, key: &str, patch: ExperimentPatch) -> Result<Arc<Compiled>> {
        self.entry(key)?.addr.send(PatchExperiment(patch)).await?
    }

    /// Runs a lifecycle action through the experiment's actor.
    pub async fn transition(
        &self,
        key: &str,
        action: Action,
        winner: Option<VariantKey>,
    ) -> Result<Arc<Compiled>> {
        let msg = TransitionExperiment { action, winner };
        self.entry(key)?.addr.send(msg).await?
    }

    /// Assigns `unit` to one experiment. Lock-free on the experiment; a
    /// first exposure is queued for persistence without waiting.
    pub fn assign(&self, key: &str, unit: &str, log_exposure: bool) -> Result<Assignment> {
        self.assign_entry(&self.entry(key)?, unit, log_exposure)
    }

    /// Assigns `unit` to every running experiment, or to the named ones
    /// whatever their status.
    pub fn assign_all(
        &self,
        unit: &str,
        keys: Option<&[ExperimentKey]>,
        log_exposure: bool,
    ) -> Result<Vec<Assignment>> {
        match keys {
            Some(keys) => keys
                .iter()
                .map(|k| self.assign_entry(&self.entry(k.as_str())?, unit, log_exposure))
                .collect(),
            None => self
                .registry
                .load()
                .values()
                .filter(|e| e.slot.snapshot().experiment().status == Status::Running)
                .map(|e| self.assign_entry(e, unit, log_exposure))
                .collect(),
        }
    }

    fn assign_entry(&self, entry: &Entry, unit: &str, log_exposure: bool) -> Result<Assignment> {
        let slot = &entry.slot;
        let compiled = slot.snapshot();
        let mut decision = compiled.decide(unit, || slot.sticky.get(unit));
        if decision.reason == Reason::Hashed && log_exposure {
            let (variant, first) = slot.sticky.record_first(unit, decision.variant, || {
                self.sticky_writer.persist(StickyRecord {
                    experiment: compiled.experiment().key.clone(),
                    unit: unit.into(),
                    variant: compiled.experiment().variants[decision.variant]
                        .key
                        .as_str()
                        .into(),
                    first_exposed_ms: unix_ms(self.clock.as_ref()),
                })
            })?;
            if !first {
                decision.variant = variant;
                decision.reason = Reason::Sticky;
            }
        }
        Ok(Assignment { compiled, decision })
    }

    fn entry(&self, key: &str) -> Result<Entry> {
        self.registry
            .get(key)
            .ok_or_else(|| Error::ExperimentNotFound(key.to_owned()))
    }

    /// Whether the engine can serve: the writer is running.
    pub fn is_ready(&self) -> bool {
        self.sticky_writer.is_alive() && self.catalog.connected()
    }

    /// Number of experiments in each status.
    pub fn status_counts(&self) -> Vec<(Status, usize)> {
        let entries = self.registry.load();
        Status::ALL
            .iter()
            .map(|&s| {
                let n = entries
                    .values()
                    .filter(|e| e.slot.snapshot().experiment().status == s)
                    .count();
                (s, n)
            })
            .collect()
    }

    /// Drains the writers and flushes the WAL. Call after the HTTP server
    /// has stopped taking requests.
    pub async fn shutdown(self: Arc<Self>) -> Result<()> {
        blocking(move || {
            self.sticky_writer.close();
            self.store.flush_wal()
        })
        .await
    }
}

/// Runs RocksDB work on the blocking pool, never on an async worker.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::Unavailable)?
}

fn restore_sticky(store: &Store, registry: &Registry) -> Result<usize> {
    let entries = registry.load();
    let mut restored = 0;
    for record in store.sticky() {
        let record = record?;
        let Some(entry) = entries.get(&record.experiment) else {
            continue;
        };
        let snapshot = entry.slot.snapshot();
        if let Some(index) = snapshot.experiment().variant_index(&record.variant) {
            entry.slot.sticky.restore(record.unit, index);
            restored += 1;
        }
    }
    Ok(restored)
}

fn unix_ms(clock: &dyn Clock) -> u64 {
    u64::try_from(clock.now().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}
