//! The experiment actor: the single writer of one experiment.
//!
//! Every change (patch, lifecycle action) is a message, handled atomically:
//! validate against the current record, persist it off the async threads,
//! then publish a fresh [`Compiled`] snapshot into the experiment's
//! [`Slot`]. Readers only ever load the snapshot, so assignment never waits
//! on the actor, and the actor never has to coordinate with readers.

use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwap;

use crate::assignment::Compiled;
use crate::clock::Clock;
use crate::domain::{Action, Experiment, ExperimentPatch, VariantKey};
use crate::sticky::StickyTable;
use crate::storage::Store;
use crate::{Error, Result};

/// What the hot path reads for one experiment: the published snapshot and
/// the units' first exposures.
#[derive(Debug)]
pub struct Slot {
    live: ArcSwap<Compiled>,
    /// First exposures, consulted for `sticky` assignments.
    pub sticky: StickyTable,
}

impl Slot {
    /// A slot publishing `experiment`.
    pub fn new(experiment: Experiment) -> Self {
        Self {
            live: ArcSwap::from_pointee(Compiled::new(experiment)),
            sticky: StickyTable::default(),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Compiled> {
        self.live.load_full()
    }
}

/// Owns one experiment.
pub struct ExperimentActor {
    slot: Arc<Slot>,
    store: Store,
    clock: Arc<dyn Clock>,
}

impl ExperimentActor {
    /// An actor for the experiment published in `slot`.
    pub fn new(slot: Arc<Slot>, store: Store, clock: Arc<dyn Clock>) -> Self {
        Self { slot, store, clock }
    }

    /// Persists `next` on the blocking pool, then publishes it. Wrapped in an
    /// [`AtomicResponse`] so the next message waits until this one is done.
    fn commit(&self, next: Result<Experiment>) -> AtomicResponse<Self, Result<Arc<Compiled>>> {
        let next = match next {
            Ok(next) => next,
            Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Err(e)))),
        };
        let store = self.store.clone();
        let write = tokio::task::spawn_blocking(move || store.put_experiment(&next).map(|()| next));
        AtomicResponse::new(Box::pin(fut::wrap_future(write).map(
            |joined, actor: &mut Self, _| {
                let next = joined.map_err(|_| Error::Unavailable)??;
                tracing::info!(
                    experiment = %next.key,
                    status = %next.status,
                    version = next.version,
                    "experiment changed"
                );
                let compiled = Arc::new(Compiled::new(next));
                actor.slot.live.store(Arc::clone(&compiled));
                Ok(compiled)
            },
        )))
    }
}

impl Actor for ExperimentActor {
    type Context = Context<Self>;
}

/// Apply a patch to the experiment.
#[derive(Message)]
#[rtype(result = "Result<Arc<Compiled>>")]
pub struct PatchExperiment(pub ExperimentPatch);

impl Handler<PatchExperiment> for ExperimentActor {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: PatchExperiment, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        self.commit(self.slot.snapshot().experiment().patched(msg.0, now))
    }
}

/// Move the experiment through its lifecycle.
#[derive(Message)]
#[rtype(result = "Result<Arc<Compiled>>")]
pub struct TransitionExperiment {
    /// What to do.
    pub action: Action,
    /// The variant to serve everyone after `complete`.
    pub winner: Option<VariantKey>,
}

impl Handler<TransitionExperiment> for ExperimentActor {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: TransitionExperiment, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let current = self.slot.snapshot();
        self.commit(
            current
                .experiment()
                .transitioned(msg.action, msg.winner, now),
        )
    }
}
