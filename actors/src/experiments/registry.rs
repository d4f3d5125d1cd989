//! The catalog: which experiments exist.
//!
//! [`Registry`] is the immutable map from key to experiment that readers
//! load without a lock; the [`Catalog`] actor is its single writer, so two
//! concurrent creates of one key cannot both succeed (in cluster mode the
//! replicated bucket refuses the second of two nodes, and the catalog
//! adopts experiments other nodes create).

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwap;

use super::actor::{Adopt, ExperimentActor, PatchExperiment, Slot};
use super::assignment::Compiled;
use super::records::Records;
use crate::clock::Clock;
use crate::cluster::Revision;
use crate::domain::{
    AuditEntry, DomainEvent, DomainEventKind, Experiment, ExperimentIn, ExperimentKey,
    ExperimentPatch, Principal, ResourceKind, Status,
};
use crate::quotas::Quotas;
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

    /// The experiment with this key, or `ExperimentNotFound`.
    pub fn entry(&self, key: &str) -> Result<Entry> {
        self.get(key)
            .ok_or_else(|| Error::ExperimentNotFound(key.to_owned()))
    }

    /// The unit's committed first exposures: (experiment, variant) pairs,
    /// by experiment key. One batched read of `store`: call it off the
    /// async workers.
    pub fn first_exposures(&self, store: &Store, unit: &str) -> Result<Vec<(String, String)>> {
        let entries = self.load();
        let keys: Vec<&str> = entries.keys().map(ExperimentKey::as_str).collect();
        let found = store.first_exposures(&keys, unit)?;
        Ok(entries
            .values()
            .zip(found)
            .filter_map(|(entry, first)| {
                let first = first?;
                let compiled = entry.slot.snapshot();
                let experiment = compiled.experiment();
                // A variant the experiment no longer has is skipped.
                experiment.variant_index(&first.variant)?;
                Some((experiment.key.to_string(), first.variant.into()))
            })
            .collect())
    }

    /// Adds an experiment. Only the catalog (and start-up) call this.
    fn insert(&self, key: ExperimentKey, entry: Entry) {
        let mut next = BTreeMap::clone(&self.entries.load());
        next.insert(key, entry);
        self.entries.store(Arc::new(next));
    }

    /// Starts the actor for a stored experiment (at `revision` in the
    /// replicated bucket, cluster mode) and registers it.
    pub(crate) fn start(
        &self,
        experiment: Experiment,
        revision: Revision,
        records: Records,
        clock: Arc<dyn Clock>,
    ) -> Entry {
        let key = experiment.key.clone();
        let slot = Arc::new(Slot::new(experiment, revision, records.store().clone()));
        let addr = ExperimentActor::new(Arc::clone(&slot), records, clock).start();
        let entry = Entry { slot, addr };
        self.insert(key, entry.clone());
        entry
    }

    /// [`Registry::start`] on a single node (tests).
    #[cfg(test)]
    pub(crate) fn start_local(
        &self,
        experiment: Experiment,
        store: Store,
        clock: Arc<dyn Clock>,
    ) -> Entry {
        self.start(experiment, 0, Records::local(store), clock)
    }
}

/// Creates experiments, one at a time.
pub struct Catalog {
    registry: Arc<Registry>,
    records: Records,
    clock: Arc<dyn Clock>,
    /// The project's quota of experiments that are not archived.
    quotas: Arc<Quotas>,
}

impl Catalog {
    /// A catalog writing into `registry` and through `records`, within
    /// `quotas`.
    pub fn new(
        registry: Arc<Registry>,
        records: Records,
        clock: Arc<dyn Clock>,
        quotas: Arc<Quotas>,
    ) -> Self {
        Self {
            registry,
            records,
            clock,
            quotas,
        }
    }

    /// Refuses another experiment when the project holds its quota of
    /// experiments that are not archived. Counted here, where creations
    /// are taken one at a time, so concurrent ones cannot pass it together.
    /// Refuses `experiment`'s layer slice when another experiment that is
    /// not archived holds an overlapping slice of the same layer. The
    /// catalog makes every change of a slice (creates, and patches of
    /// `layer`), one at a time, so two changes cannot both pass.
    fn check_layer(&self, experiment: &Experiment) -> Result<()> {
        let Some(layer) = &experiment.layer else {
            return Ok(());
        };
        for (key, entry) in self.registry.load().iter() {
            let snapshot = entry.slot.snapshot();
            let other = snapshot.experiment();
            if *key == experiment.key || other.status == Status::Archived {
                continue;
            }
            if let Some(theirs) = other.layer.as_ref().filter(|l| l.overlaps(layer)) {
                return Err(Error::LayerOverlap {
                    layer: layer.key.clone(),
                    start: layer.start,
                    end: layer.end,
                    other: key.to_string(),
                    other_start: theirs.start,
                    other_end: theirs.end,
                });
            }
        }
        Ok(())
    }

    fn check_quota(&self) -> Result<()> {
        let max = self.quotas.limits().max_experiments;
        let held = self
            .registry
            .load()
            .values()
            .filter(|e| e.slot.snapshot().experiment().status != Status::Archived)
            .count();
        self.quotas.check_count("experiments", held, max)
    }
}

impl Actor for Catalog {
    type Context = Context<Self>;
}

/// Create an experiment as a draft.
#[derive(Message)]
#[rtype(result = "Result<Arc<Compiled>>")]
pub struct CreateExperiment(pub ExperimentIn, pub Principal);

/// A patch that gives an experiment a layer slice: checked against the
/// other experiments' slices here, then applied by the experiment's actor
/// while the catalog makes no other change.
#[derive(Message)]
#[rtype(result = "Result<Arc<Compiled>>")]
pub struct PatchLayer(pub String, pub ExperimentPatch, pub Principal);

impl Handler<PatchLayer> for Catalog {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: PatchLayer, _: &mut Context<Self>) -> Self::Result {
        let PatchLayer(key, patch, by) = msg;
        let checked = self.registry.entry(&key).and_then(|entry| {
            let preview = entry
                .slot
                .snapshot()
                .experiment()
                .patched(patch.clone(), self.clock.now())?;
            self.check_layer(&preview).map(|()| entry)
        });
        let entry = match checked {
            Ok(entry) => entry,
            Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Err(e)))),
        };
        let applied = async move { entry.addr.send(PatchExperiment(patch, by)).await? };
        AtomicResponse::new(Box::pin(fut::wrap_future(applied)))
    }
}

impl Handler<CreateExperiment> for Catalog {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: CreateExperiment, _: &mut Context<Self>) -> Self::Result {
        // The body first: one no experiment could take is refused as such
        // (422) even when its key is taken.
        let created = Experiment::create(msg.0, self.clock.now()).and_then(|e| {
            match self.registry.get(e.key.as_str()) {
                Some(_) => Err(Error::ExperimentExists(e.key.to_string())),
                None => self
                    .check_layer(&e)
                    .and_then(|()| self.check_quota())
                    .map(|()| e),
            }
        });
        let experiment = match created {
            Ok(e) => e,
            Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Err(e)))),
        };
        let records = self.records.clone();
        let event = DomainEvent::new(
            DomainEventKind::ExperimentCreated,
            &experiment,
            experiment.created_at,
        );
        let audit = AuditEntry::new(
            &msg.1,
            experiment.created_at,
            "experiment.created",
            ResourceKind::Experiment,
            experiment.key.as_str(),
            None,
            serde_json::to_value(&experiment).ok(),
        );
        let write = async move { records.create(experiment, event, audit).await };
        AtomicResponse::new(Box::pin(fut::wrap_future(write).map(
            |written, catalog: &mut Self, _| {
                let (experiment, revision) = written?;
                tracing::info!(experiment = %experiment.key, revision, "experiment created");
                let entry = catalog.registry.start(
                    experiment,
                    revision,
                    catalog.records.clone(),
                    Arc::clone(&catalog.clock),
                );
                Ok(entry.slot.snapshot())
            },
        )))
    }
}

/// Cluster mode: an experiment as the replicated bucket holds it. A new
/// one (created on another node) gets its actor here; a known one is
/// passed to its actor, which publishes it if it is newer.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct AdoptExperiment {
    /// The record.
    pub experiment: Experiment,
    /// Its revision in the bucket.
    pub revision: Revision,
}

impl Handler<AdoptExperiment> for Catalog {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, msg: AdoptExperiment, _: &mut Context<Self>) -> Self::Result {
        let AdoptExperiment {
            experiment,
            revision,
        } = msg;
        if let Some(entry) = self.registry.get(experiment.key.as_str()) {
            // In order: the actor's mailbox keeps the bucket's order.
            entry.addr.do_send(Adopt {
                experiment,
                revision,
            });
            return AtomicResponse::new(Box::pin(fut::ready(Ok(()))));
        }
        let records = self.records.clone();
        let adopt = async move { records.adopt(experiment).await };
        AtomicResponse::new(Box::pin(fut::wrap_future(adopt).map(
            move |adopted, catalog: &mut Self, _| {
                let experiment = adopted?;
                tracing::info!(experiment = %experiment.key, revision, "experiment created on another node");
                catalog.registry.start(
                    experiment,
                    revision,
                    catalog.records.clone(),
                    Arc::clone(&catalog.clock),
                );
                Ok(())
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{input, running, T0};
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::{DomainEventKind, Status, StickyAssignment};
    use crate::storage::Commit;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        clock: Arc<ManualClock>,
        registry: Arc<Registry>,
        catalog: Addr<Catalog>,
    }

    /// A catalog over an empty registry and store. Must run inside an
    /// actix system.
    fn fixture() -> Fixture {
        let (dir, store) = Store::temporary();
        let clock = Arc::new(ManualClock::new(T0));
        let registry = Arc::new(Registry::default());
        let catalog = Catalog::new(
            Arc::clone(&registry),
            Records::local(store.clone()),
            clock.clone(),
            Quotas::unmetered(),
        )
        .start();
        Fixture {
            _dir: dir,
            store,
            clock,
            registry,
            catalog,
        }
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|&(e, v)| (e.to_owned(), v.to_owned()))
            .collect()
    }

    #[actix::test]
    async fn a_created_experiment_is_a_stored_draft_found_by_its_key() {
        let f = fixture();
        f.clock.advance(Duration::from_secs(90));
        let now = T0 + Duration::from_secs(90);
        let before = f.registry.load();

        let created = f
            .catalog
            .send(CreateExperiment(input("checkout"), Principal::open()))
            .await
            .unwrap()
            .unwrap();
        let experiment = created.experiment();
        assert_eq!(experiment.status, Status::Draft);
        assert_eq!(experiment.version, 1);
        assert_eq!((experiment.created_at, experiment.updated_at), (now, now));

        let entry = f.registry.get("checkout").expect("registered");
        assert!(Arc::ptr_eq(&entry.slot.snapshot(), &created));
        assert!(entry.addr.connected(), "its actor runs");
        assert!(f.registry.get("other").is_none());
        assert!(
            before.is_empty(),
            "a map already loaded is a snapshot and does not change"
        );

        assert_eq!(
            f.store.experiments().unwrap(),
            std::slice::from_ref(experiment)
        );
        let outbox = f.store.outbox(0, 10).unwrap();
        let [(_, event), (_, recorded)] = &outbox[..] else {
            panic!("a domain event and its audit entry's: {outbox:?}")
        };
        assert_eq!(event.kind, DomainEventKind::ExperimentCreated);
        assert_eq!(event.experiment.as_deref(), Some("checkout"));
        assert_eq!(event.at, now);
        assert_eq!(recorded.kind, DomainEventKind::AuditRecorded);
        assert_eq!(recorded.data["entry"]["action"], "experiment.created");
        assert_eq!(recorded.data["entry"]["actor"], "open");
        assert_eq!(recorded.data["entry"]["after"]["key"], "checkout");
    }

    #[actix::test]
    async fn a_second_create_of_a_key_is_refused_and_changes_nothing() {
        let f = fixture();
        f.catalog
            .send(CreateExperiment(input("checkout"), Principal::open()))
            .await
            .unwrap()
            .unwrap();
        let mut again = input("checkout");
        again.name = "another".into();
        let refused = f
            .catalog
            .send(CreateExperiment(again, Principal::open()))
            .await
            .unwrap();
        assert!(
            matches!(&refused, Err(Error::ExperimentExists(k)) if k.as_str() == "checkout"),
            "{:?}",
            refused.map(|c| c.experiment().clone())
        );
        let standing = f.registry.get("checkout").unwrap().slot.snapshot();
        assert_eq!(standing.experiment().name, "checkout");
        assert_eq!(f.store.experiments().unwrap().len(), 1);
        assert_eq!(
            f.store.outbox(0, 10).unwrap().len(),
            2,
            "one created event and its audit entry's"
        );
    }

    /// Creates queued together are handled one at a time, the store write
    /// included, so exactly one of them wins.
    #[actix::test]
    async fn concurrent_creates_of_one_key_have_one_winner() {
        let f = fixture();
        // `send` enqueues at once: all four wait in the mailbox before the
        // first is handled.
        let requests: Vec<_> = (0..4)
            .map(|i| {
                let mut body = input("race");
                body.name = format!("attempt {i}");
                f.catalog.send(CreateExperiment(body, Principal::open()))
            })
            .collect();
        let mut won = Vec::new();
        let mut refused = 0;
        for request in requests {
            match request.await.unwrap() {
                Ok(created) => won.push(created.experiment().name.clone()),
                Err(Error::ExperimentExists(_)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(
            (won.as_slice(), refused),
            (["attempt 0".to_owned()].as_slice(), 3)
        );
        assert_eq!(f.store.experiments().unwrap().len(), 1);
    }

    #[actix::test]
    async fn an_invalid_body_registers_and_stores_nothing() {
        let f = fixture();
        let mut body = input("bad");
        body.name = " ".into();
        let refused = f
            .catalog
            .send(CreateExperiment(body, Principal::open()))
            .await
            .unwrap();
        assert!(matches!(refused, Err(Error::Invalid { ref field, .. }) if field == "name"));
        assert!(f.registry.load().is_empty());
        assert!(f.store.experiments().unwrap().is_empty());
        assert!(f.store.outbox(0, 10).unwrap().is_empty());
    }

    #[actix::test]
    async fn first_exposures_name_each_experiment_and_variant_a_unit_saw() {
        let f = fixture();
        for key in ["a", "b", "c"] {
            f.registry
                .start_local(running(key), f.store.clone(), f.clock.clone());
        }
        let first = |exp: &str, unit: &str, variant: &str| StickyAssignment {
            experiment: exp.try_into().unwrap(),
            unit: unit.into(),
            variant: variant.into(),
            first_exposed_ms: 1,
            diverges: false,
        };
        f.store
            .commit(&Commit {
                sticky: &[
                    first("a", "alice", "treatment"),
                    first("b", "alice", "control"),
                    first("b", "bob", "treatment"),
                    // A variant the experiment does not have is skipped.
                    first("c", "alice", "gone"),
                ],
                next_seq: 1,
                ..Commit::default()
            })
            .unwrap();

        let read = |unit| f.registry.first_exposures(&f.store, unit).unwrap();
        assert_eq!(
            read("alice"),
            pairs(&[("a", "treatment"), ("b", "control")])
        );
        assert_eq!(read("bob"), pairs(&[("b", "treatment")]));
        assert!(read("carol").is_empty());
    }
}
