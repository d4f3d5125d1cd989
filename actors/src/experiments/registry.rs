//! The catalog: which experiments exist.
//!
//! [`Registry`] is the immutable map from key to experiment that readers
//! load without a lock; the [`Catalog`] actor is its single writer, so two
//! concurrent creates of one key cannot both succeed.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwap;

use super::actor::{ExperimentActor, Slot};
use super::assignment::Compiled;
use crate::clock::Clock;
use crate::domain::{DomainEvent, DomainEventKind, Experiment, ExperimentIn, ExperimentKey};
use crate::storage::Store;
use crate::{Error, Result};

/// A live experiment: what readers load and where writers send.
#[derive(Clone)]
pub struct Entry {
    /// Snapshot and sticky table.
    pub slot: Arc<Slot>,
    /// The owning actor.
    pub addr: Addr<ExperimentActor>,
}

/// Every experiment, by key. Replaced wholesale on create (rare), read on
/// every request.
#[derive(Default)]
pub struct Registry {
    entries: ArcSwap<BTreeMap<ExperimentKey, Entry>>,
}

impl Registry {
    /// The current map.
    pub fn load(&self) -> Arc<BTreeMap<ExperimentKey, Entry>> {
        self.entries.load_full()
    }

    /// The experiment with this key.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.entries.load().get(key).cloned()
    }

    /// The unit's first exposures: (experiment, variant) pairs.
    pub fn first_exposures(&self, unit: &str) -> Vec<(String, String)> {
        self.load()
            .values()
            .filter_map(|entry| {
                let first = entry.slot.sticky.get(unit)?;
                let compiled = entry.slot.snapshot();
                let experiment = compiled.experiment();
                let variant = experiment.variants.get(first.variant)?;
                Some((experiment.key.to_string(), variant.key.to_string()))
            })
            .collect()
    }

    /// Adds an experiment. Only the catalog (and start-up) call this.
    fn insert(&self, key: ExperimentKey, entry: Entry) {
        let mut next = BTreeMap::clone(&self.entries.load());
        next.insert(key, entry);
        self.entries.store(Arc::new(next));
    }

    /// Starts the actor for a stored experiment and registers it.
    pub(crate) fn start(
        &self,
        experiment: Experiment,
        store: Store,
        clock: Arc<dyn Clock>,
    ) -> Entry {
        let key = experiment.key.clone();
        let slot = Arc::new(Slot::new(experiment));
        let addr = ExperimentActor::new(Arc::clone(&slot), store, clock).start();
        let entry = Entry { slot, addr };
        self.insert(key, entry.clone());
        entry
    }
}

/// Creates experiments, one at a time.
pub struct Catalog {
    registry: Arc<Registry>,
    store: Store,
    clock: Arc<dyn Clock>,
}

impl Catalog {
    /// A catalog writing into `registry`.
    pub fn new(registry: Arc<Registry>, store: Store, clock: Arc<dyn Clock>) -> Self {
        Self {
            registry,
            store,
            clock,
        }
    }
}

impl Actor for Catalog {
    type Context = Context<Self>;
}

/// Create an experiment as a draft.
#[derive(Message)]
#[rtype(result = "Result<Arc<Compiled>>")]
pub struct CreateExperiment(pub ExperimentIn);

impl Handler<CreateExperiment> for Catalog {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: CreateExperiment, _: &mut Context<Self>) -> Self::Result {
        let created = if self.registry.get(msg.0.key.as_str()).is_some() {
            Err(Error::ExperimentExists(msg.0.key))
        } else {
            Experiment::create(msg.0, self.clock.now())
        };
        let experiment = match created {
            Ok(e) => e,
            Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Err(e)))),
        };
        let store = self.store.clone();
        let event = DomainEvent::new(
            DomainEventKind::ExperimentCreated,
            &experiment,
            experiment.created_at,
        );
        let write = tokio::task::spawn_blocking(move || {
            store
                .put_experiment(&experiment, Some(&event))
                .map(|()| experiment)
        });
        AtomicResponse::new(Box::pin(fut::wrap_future(write).map(
            |joined, catalog: &mut Self, _| {
                let experiment = joined.map_err(|_| Error::Unavailable)??;
                tracing::info!(experiment = %experiment.key, "experiment created");
                let entry = catalog.registry.start(
                    experiment,
                    catalog.store.clone(),
                    Arc::clone(&catalog.clock),
                );
                Ok(entry.slot.snapshot())
            },
        )))
    }
}
