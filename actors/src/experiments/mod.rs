//! Experiments: which exist, what each one is now, and which variant a
//! unit sees.
//!
//! - [`registry`]: the map from key to experiment that readers load
//!   without a lock, and the `Catalog` actor that creates experiments.
//! - [`actor`]: `ExperimentActor`, the single writer of one experiment,
//!   and the `Slot` it publishes snapshots into.
//! - [`assignment`]: the algorithm (md5 buckets, ranges, decision order)
//!   over an experiment prepared for the hot path; [`growthbook`]: the
//!   hash of experiments bucketed as GrowthBook does.
//! - [`sticky`]: each experiment's first exposures: on disk, pending ones
//!   in memory until committed; in cluster mode, asked of the node that
//!   folds the unit's partition when that is another.
//! - [`exposure`]: the one place a decision becomes sticky and becomes an
//!   exposure event.
//! - [`records`]: where changes are written (the local store; in cluster
//!   mode the replicated bucket first), and in cluster mode [`follow`]
//!   brings other nodes' changes in.

pub mod actor;
pub mod assignment;
pub mod exposure;
pub mod growthbook;
pub mod holdouts;
pub mod records;
pub mod registry;
pub mod sticky;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use self::actor::{PatchExperiment, Slot, TransitionExperiment};
use self::assignment::{Compiled, Decision, Reason};
use self::exposure::ExposureQueue;
use self::holdouts::Holdouts;
use self::records::Records;
use self::registry::{AdoptExperiment, Catalog, CreateExperiment, Entry, PatchLayer, Registry};
use self::sticky::Elsewhere;
use crate::clock::Clock;
use crate::cluster::{ExperimentBucket, FoundExposure, RecordBucket, RecordChange, Revision};
use crate::domain::{
    unix_ms, Action, ExperimentIn, ExperimentKey, ExperimentPatch, Principal, Status, Variant,
    VariantKey,
};
use crate::quotas::Quotas;
use crate::storage::{blocking, Store};
use crate::{Error, Result};

/// One unit's assignment to one experiment. Holds the snapshot it was
/// decided on, so the response borrows keys and payloads instead of
/// cloning them.
pub struct Assignment {
    compiled: Arc<Compiled>,
    decision: Decision,
}

impl Assignment {
    /// Assigns without side effects: the snapshot, and the unit's first
    /// exposure when the decision depends on it (this node's, else what
    /// another node `answered`).
    fn decide(slot: &Slot, unit: &str, answered: &Answered) -> Result<Self> {
        let compiled = slot.snapshot();
        let decision = compiled.decide(unit, slot.sticky.diverged(), || {
            let experiment = compiled.experiment();
            let first = match slot.sticky.get(unit, experiment)? {
                Some(first) => Some(first.variant),
                None => answered.variant(experiment),
            };
            Ok(first)
        })?;
        Ok(Self { compiled, decision })
    }

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

/// Cluster mode: first exposures of one unit that the node folding its
/// partition answered, by experiment key.
#[derive(Default)]
struct Answered(Vec<(String, FoundExposure)>);

impl Answered {
    /// The index of the variant the unit was first exposed to in
    /// `experiment`, if answered and the variant still exists.
    fn variant(&self, experiment: &crate::domain::Experiment) -> Option<usize> {
        let (_, found) = self
            .0
            .iter()
            .find(|(key, _)| key == experiment.key.as_str())?;
        experiment.variant_index(&found.variant)
    }
}

/// A page of experiments.
pub struct Page {
    /// The experiments, in key order.
    pub items: Vec<Arc<Compiled>>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<ExperimentKey>,
}

/// Loads every experiment and starts its actor: from the local store, or
/// in cluster mode from the replicated bucket (refreshing the local
/// copies). Reads nothing per unit: first exposures stay on disk, looked
/// up when needed. Returns the bucket revision the registry reflects
/// (what [`follow`] continues from; 0 on a single node). Must run inside
/// an actix system.
pub(crate) async fn restore(
    records: &Records,
    clock: Arc<dyn Clock>,
) -> Result<(Arc<Registry>, Revision)> {
    let registry = Arc::new(Registry::default());
    let store = records.store().clone();
    let replicated = records.bucket().is_some();
    let (stored, diverged) = blocking(move || {
        // In cluster mode the bucket, not the local copy, says what exists.
        let stored = if replicated {
            Vec::new()
        } else {
            store.experiments()?
        };
        Ok((stored, store.divergent_experiments()?))
    })
    .await?;
    let (experiments, last) = match records.bucket() {
        Some(bucket) => {
            let (replicated, last) = bucket.load().await?;
            let mut experiments = Vec::with_capacity(replicated.len());
            for (experiment, revision) in replicated {
                experiments.push((records.adopt(experiment).await?, revision));
            }
            (experiments, last)
        }
        None => (stored.into_iter().map(|e| (e, 0)).collect(), 0),
    };
    for (experiment, revision) in experiments {
        let entry = registry.start(experiment, revision, records.clone(), Arc::clone(&clock));
        if diverged
            .iter()
            .any(|k| k == entry.slot.snapshot().experiment().key.as_str())
        {
            entry.slot.sticky.diverge();
        }
    }
    tracing::info!(
        experiments = registry.load().len(),
        diverged = diverged.len(),
        replicated,
        "experiments restored"
    );
    Ok((registry, last))
}

/// Cluster mode: brings every change in the replicated bucket after
/// `after` into this node's registry, for as long as the system runs. A
/// lost watch is opened again from the last revision seen.
async fn follow(bucket: ExperimentBucket, catalog: Addr<Catalog>, mut after: Revision) {
    use futures_util::StreamExt;
    loop {
        match bucket.watch(after).await {
            Ok(changes) => {
                let mut changes = std::pin::pin!(changes);
                while let Some(change) = changes.next().await {
                    let (experiment, revision) = match change {
                        Ok(change) => change,
                        Err(e) => {
                            tracing::warn!(error = %e, "experiment watch failed; watching again");
                            break;
                        }
                    };
                    after = after.max(revision);
                    let adopted = catalog
                        .send(AdoptExperiment {
                            experiment,
                            revision,
                        })
                        .await;
                    match adopted {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "adopting an experiment failed"),
                        // The catalog is gone: the system is stopping.
                        Err(_) => return,
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the experiments bucket; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Marks the experiment `key` diverged. One this node does not know yet
/// (created on another node a moment ago, its change not seen here yet)
/// is tried again every second for half a minute, then every half minute
/// until it is known.
fn diverge(registry: Arc<Registry>, key: String) {
    use std::time::Duration;
    const SOON: u32 = 30;
    actix::spawn(async move {
        for attempt in 0u32.. {
            if let Ok(entry) = registry.entry(&key) {
                entry.slot.sticky.diverge();
                return;
            }
            if attempt == SOON {
                tracing::warn!(experiment = %key, "a diverged experiment this node does not know yet");
            }
            let wait = if attempt < SOON { 1 } else { 30 };
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
    });
}

/// The experiments service: reads from snapshots, changes through the
/// owning actors, assignments on the caller's thread.
pub struct Experiments {
    registry: Arc<Registry>,
    catalog: Addr<Catalog>,
    exposures: Arc<dyn ExposureQueue>,
    /// Cluster mode: where first exposures this node does not fold are.
    elsewhere: Option<Arc<dyn Elsewhere>>,
    clock: Arc<dyn Clock>,
    /// Assignments served, by [`Reason`] (index = `reason as usize`).
    served: [AtomicU64; Reason::ALL.len()],
    max_assignment_experiments: usize,
    holdouts: Arc<Holdouts>,
    /// Where linked ids are resolved to their units.
    store: Store,
}

impl Experiments {
    /// The service over `registry`, queueing exposures into `exposures`;
    /// in cluster mode asking `elsewhere` for first exposures.
    pub(crate) fn new(
        registry: Arc<Registry>,
        records: Records,
        exposures: Arc<dyn ExposureQueue>,
        elsewhere: Option<Arc<dyn Elsewhere>>,
        clock: Arc<dyn Clock>,
        max_assignment_experiments: usize,
        quotas: Arc<Quotas>,
    ) -> Result<Self> {
        let replicated = records.bucket().is_some();
        let store = records.store().clone();
        let holdouts = Arc::new(Holdouts::load(
            store.clone(),
            Arc::clone(&clock),
            replicated,
        )?);
        let catalog =
            Catalog::new(Arc::clone(&registry), records, Arc::clone(&clock), quotas).start();
        Ok(Self {
            registry,
            catalog,
            exposures,
            elsewhere,
            clock,
            served: Default::default(),
            max_assignment_experiments,
            holdouts,
            store,
        })
    }

    /// The project's holdouts.
    pub fn holdouts(&self) -> &Holdouts {
        &self.holdouts
    }

    /// Whether an experiment holds `key`.
    pub fn exists(&self, key: &str) -> bool {
        self.registry.entry(key).is_ok()
    }

    /// Cluster mode: follows the replicated bucket from after `after`
    /// (what [`restore`] read), so other nodes' changes are served here,
    /// and the shared record of diverged experiments, so every node looks
    /// up the units of an experiment a client diverged through any node.
    pub(crate) fn follow(
        &self,
        bucket: ExperimentBucket,
        after: Revision,
        divergence: RecordBucket<i64>,
    ) {
        actix::spawn(follow(bucket, self.catalog.clone(), after));
        let registry = Arc::clone(&self.registry);
        actix::spawn(divergence.follow(move |change| {
            if let RecordChange::Put(key, _, _) = change {
                diverge(Arc::clone(&registry), key);
            }
            std::future::ready(true)
        }));
    }

    /// The most experiment keys one `assign_all` takes.
    pub fn max_assignment_experiments(&self) -> usize {
        self.max_assignment_experiments
    }

    /// Creates a draft experiment on behalf of `by`.
    pub async fn create(&self, input: ExperimentIn, by: &Principal) -> Result<Arc<Compiled>> {
        // Holdouts are measured as experiments of their own: one key space.
        // A body no experiment could take is refused as such first (422).
        if self.holdouts.get(input.key.as_str()).is_ok() {
            crate::domain::Experiment::create(input.clone(), self.clock.now())?;
            return Err(Error::ExperimentExists(input.key.to_string()));
        }
        let created = self
            .catalog
            .send(CreateExperiment(input, by.clone()))
            .await??;
        self.respec(&created.experiment().key);
        Ok(created)
    }

    /// Tells the ingest pipeline the experiment's current derived metrics,
    /// before any event that follows this change is queued.
    fn respec(&self, key: &ExperimentKey) {
        if let Ok(current) = self.get(key.as_str()) {
            let experiment = current.experiment();
            self.exposures
                .respec(experiment.key.as_str(), experiment.derivations());
        }
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

    /// Applies a patch through the experiment's actor, on behalf of `by`.
    pub async fn patch(
        &self,
        key: &str,
        patch: ExperimentPatch,
        by: &Principal,
    ) -> Result<Arc<Compiled>> {
        // A new layer slice is checked against every other experiment's by
        // the catalog, which makes one such change at a time.
        let patched = if matches!(patch.layer, Some(Some(_))) {
            let msg = PatchLayer(key.to_owned(), patch, by.clone());
            self.catalog.send(msg).await??
        } else {
            let msg = PatchExperiment(patch, by.clone());
            self.entry(key)?.addr.send(msg).await??
        };
        self.respec(&patched.experiment().key);
        Ok(patched)
    }

    /// Runs a lifecycle action through the experiment's actor.
    pub async fn transition(
        &self,
        key: &str,
        action: Action,
        winner: Option<VariantKey>,
        by: &Principal,
    ) -> Result<Arc<Compiled>> {
        let msg = TransitionExperiment {
            action,
            winner,
            by: by.clone(),
        };
        let changed = self.entry(key)?.addr.send(msg).await??;
        // A start fixes a model experiment's baseline.
        self.respec(&changed.experiment().key);
        Ok(changed)
    }

    /// Assigns `unit` to one experiment. Lock-free on the experiment; the
    /// exposure (and a first exposure's stickiness) is queued without
    /// waiting on disk. When the queue is full, the assignment waits for
    /// room (up to `ingest.enqueue_wait_ms`) and is decided again.
    pub async fn assign(&self, key: &str, unit: &str, log_exposure: bool) -> Result<Assignment> {
        let entry = self.entry(key)?;
        // A linked id is assigned as its unit (`ingest/aliases.rs`).
        let linked = self.store.canonical_unit(unit)?;
        let unit = linked.as_deref().unwrap_or(unit);
        let answered = self.ask_elsewhere(&[&entry.slot], unit).await;
        self.exposures
            .room()
            .retry(|| self.assign_now(&entry, unit, log_exposure, &answered))
            .await
    }

    /// Assigns `unit` to every running experiment, or to the named ones
    /// whatever their status (each once, at most
    /// `max_assignment_experiments`). Exposures are queued together; a
    /// full queue is waited on as in [`Experiments::assign`].
    pub async fn assign_all(
        &self,
        unit: &str,
        keys: Option<&[ExperimentKey]>,
        log_exposure: bool,
    ) -> Result<Vec<Assignment>> {
        let entries = self.entries(keys)?;
        let linked = self.store.canonical_unit(unit)?;
        let unit = linked.as_deref().unwrap_or(unit);
        let slots: Vec<&Slot> = entries.iter().map(|e| &*e.slot).collect();
        let answered = self.ask_elsewhere(&slots, unit).await;
        self.exposures
            .room()
            .retry(|| self.assign_all_now(&slots, unit, log_exposure, &answered))
            .await
    }

    /// Cluster mode: asks the node folding `unit`'s partition, when that is
    /// another, for its first exposures to those of `slots` whose decision
    /// depends on one this node does not hold. One request for them all;
    /// if it fails (no owner during a takeover, or no answer within
    /// `cluster.lookup_timeout_ms`) the unit is answered from the hash.
    async fn ask_elsewhere(&self, slots: &[&Slot], unit: &str) -> Answered {
        let Some(elsewhere) = &self.elsewhere else {
            return Answered::default();
        };
        let wanted: Vec<String> = slots
            .iter()
            .filter_map(|slot| {
                let compiled = slot.snapshot();
                let experiment = compiled.experiment();
                let needed = compiled.looks_up(unit, slot.sticky.diverged())
                    && matches!(slot.sticky.get(unit, experiment), Ok(None));
                needed.then(|| experiment.key.as_str().to_owned())
            })
            .collect();
        if wanted.is_empty() {
            return Answered::default();
        }
        let Some(asked) = elsewhere.first_exposures(unit, wanted.clone()) else {
            return Answered::default();
        };
        let metric = crate::metrics::CLUSTER_LOOKUPS;
        match asked.await {
            Ok(found) => {
                metrics::counter!(metric, "outcome" => "answered").increment(1);
                let found = wanted.into_iter().zip(found);
                Answered(found.filter_map(|(key, f)| Some((key, f?))).collect())
            }
            Err(e) => {
                metrics::counter!(metric, "outcome" => "failed").increment(1);
                tracing::debug!(unit, error = %e, "first exposures not answered; answering from the hash");
                Answered::default()
            }
        }
    }

    /// One try of [`Experiments::assign`]: refused `Overloaded` at once
    /// when the queue is full.
    fn assign_now(
        &self,
        entry: &Entry,
        unit: &str,
        log_exposure: bool,
        answered: &Answered,
    ) -> Result<Assignment> {
        let mut assignments = [Assignment::decide(&entry.slot, unit, answered)?];
        let held = self.hold_out(&[&entry.slot], &mut assignments, unit)?;
        if log_exposure {
            self.expose(&[&entry.slot], &mut assignments, unit, held)?;
        }
        let [assignment] = assignments;
        self.count(std::slice::from_ref(&assignment));
        Ok(assignment)
    }

    /// One try of [`Experiments::assign_all`].
    fn assign_all_now(
        &self,
        slots: &[&Slot],
        unit: &str,
        log_exposure: bool,
        answered: &Answered,
    ) -> Result<Vec<Assignment>> {
        let mut assignments: Vec<Assignment> = slots
            .iter()
            .map(|s| Assignment::decide(s, unit, answered))
            .collect::<Result<_>>()?;
        let held = self.hold_out(slots, &mut assignments, unit)?;
        if log_exposure {
            self.expose(slots, &mut assignments, unit, held)?;
        }
        self.count(&assignments);
        Ok(assignments)
    }

    /// The named experiments (at most `max_assignment_experiments` keys,
    /// as the API document's `maxItems` states; each assigned once), or
    /// every running one.
    fn entries(&self, keys: Option<&[ExperimentKey]>) -> Result<Vec<Entry>> {
        Ok(match keys {
            Some(keys) => {
                if keys.len() > self.max_assignment_experiments {
                    return Err(Error::invalid(
                        "experiments",
                        format!(
                            "at most {} experiments per request",
                            self.max_assignment_experiments
                        ),
                    ));
                }
                let mut unique: Vec<&ExperimentKey> = Vec::with_capacity(keys.len());
                for key in keys {
                    if !unique.contains(&key) {
                        unique.push(key);
                    }
                }
                unique
                    .into_iter()
                    .map(|k| self.entry(k.as_str()))
                    .collect::<Result<_>>()?
            }
            None => self
                .registry
                .load()
                .values()
                .filter(|e| e.slot.snapshot().experiment().status == Status::Running)
                .cloned()
                .collect(),
        })
    }

    fn expose(
        &self,
        slots: &[&Slot],
        assignments: &mut [Assignment],
        unit: &str,
        held: Vec<(ExperimentKey, bool)>,
    ) -> Result<()> {
        let now = unix_ms(self.clock.now());
        exposure::expose(slots, assignments, unit, now, held, &*self.exposures)
    }

    /// Applies the holdouts: a unit a holdout covering an experiment holds
    /// out is served that experiment's control (reason `holdout`) and not
    /// exposed to it, unless it was exposed before (then it keeps its
    /// variant). Only assignments that would serve the unit something
    /// under test or shipped count: running and enrolled, or completed.
    /// Returns each holdout met, once, and whether it holds the unit, for
    /// the holdout's own exposure.
    fn hold_out(
        &self,
        slots: &[&Slot],
        assignments: &mut [Assignment],
        unit: &str,
    ) -> Result<Vec<(ExperimentKey, bool)>> {
        let mut met: Vec<(ExperimentKey, bool)> = Vec::new();
        let holdouts = self.holdouts.all();
        if holdouts.is_empty() {
            return Ok(met);
        }
        for (slot, a) in slots.iter().zip(assignments.iter_mut()) {
            let experiment = a.compiled.experiment();
            let shipped = experiment.status == Status::Completed;
            let eligible = (a.decision.in_experiment && a.decision.reason != Reason::Forced)
                || (shipped && a.decision.reason == Reason::NotRunning);
            if !eligible {
                continue;
            }
            let key = experiment.key.as_str();
            for holdout in holdouts
                .iter()
                .filter(|h| h.ended_at.is_none() && h.covers(key))
            {
                let held = Holdouts::holds(holdout, unit);
                if !met.iter().any(|(k, _)| *k == holdout.key) {
                    met.push((holdout.key.clone(), held));
                }
                if !held {
                    continue;
                }
                let exposed = a.decision.reason == Reason::Sticky
                    || (!shipped && slot.sticky.get(unit, experiment)?.is_some());
                if !exposed {
                    a.decision = Decision {
                        variant: 0,
                        in_experiment: false,
                        reason: Reason::Holdout,
                    };
                }
            }
        }
        Ok(met)
    }

    /// Counts served assignments by reason (one relaxed add each).
    fn count(&self, assignments: &[Assignment]) {
        for a in assignments {
            self.served[a.decision.reason as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes assignments served by reason and experiments by status.
    pub fn export_metrics(&self) {
        use crate::metrics as m;
        use metrics::{counter, gauge};
        for reason in Reason::ALL {
            counter!(m::ASSIGNMENTS, "reason" => reason.as_str())
                .absolute(self.served[reason as usize].load(Ordering::Relaxed));
        }
        let mut by_status = [0u64; Status::ALL.len()];
        for entry in self.registry.load().values() {
            let status = entry.slot.snapshot().experiment().status;
            if let Some(i) = Status::ALL.iter().position(|s| *s == status) {
                by_status[i] += 1;
            }
        }
        for (status, n) in Status::ALL.iter().zip(by_status) {
            gauge!(m::EXPERIMENTS, "status" => status.as_str()).set(n as f64);
        }
    }

    /// Whether the catalog actor is running.
    pub fn is_alive(&self) -> bool {
        self.catalog.connected()
    }

    fn entry(&self, key: &str) -> Result<Entry> {
        self.registry.entry(key)
    }
}

/// Fixtures the experiments tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use serde_json::json;
    use time::macros::datetime;
    use time::OffsetDateTime;

    use super::exposure::{ExposureQueue, FirstExposures};
    use super::sticky::Claim;
    use crate::domain::{Action, Event, Experiment, ExperimentIn, StickyAssignment};
    use crate::room::Room;
    use crate::{Error, Result};

    /// Where the tests' clocks start.
    pub const T0: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

    /// A draft body: variants `control` and `treatment`, an `errors`
    /// metric whose guardrail stops the experiment.
    pub fn input(key: &str) -> ExperimentIn {
        serde_json::from_value(json!({
            "key": key, "name": key,
            "variants": [{"key": "control", "weight": 1}, {"key": "treatment", "weight": 1}],
            "metrics": [{"key": "errors", "kind": "binomial"}],
            "guardrails": [{
                "metric": "errors", "max_relative_drop": 0.05,
                "higher_is_better": false, "auto_stop": true
            }]
        }))
        .expect("a valid body")
    }

    /// [`input`] created and started at [`T0`].
    pub fn running(key: &str) -> Experiment {
        Experiment::create(input(key), T0)
            .and_then(|e| e.transitioned(Action::Start, None, T0))
            .expect("a valid experiment")
    }

    /// One accepted call of [`ExposureQueue::queue`].
    pub type Queued = (Vec<Event>, Vec<StickyAssignment>);

    /// An exposure queue that records what it accepts, keeping the claims
    /// as if in flight, or refuses every call (as a full mailbox does)
    /// while `refuse` is set.
    #[derive(Default)]
    pub struct RecordingQueue {
        refuse: AtomicBool,
        queued: Mutex<Vec<Queued>>,
        in_flight: Mutex<Vec<Claim>>,
        /// Where refused assignments wait: not at all unless made by
        /// [`RecordingQueue::waiting`].
        room: Room,
    }

    impl RecordingQueue {
        /// A queue whose refused callers wait up to `wait` for
        /// [`RecordingQueue::make_room`].
        pub fn waiting(wait: std::time::Duration) -> Self {
            Self {
                room: Room::new(wait),
                ..Self::default()
            }
        }

        /// Stops refusing and wakes the callers waiting for room.
        pub fn make_room(&self) {
            self.refuse(false);
            self.room.freed();
        }

        /// Every accepted call, in order.
        pub fn queued(&self) -> Vec<Queued> {
            self.queued.lock().expect("lock").clone()
        }

        /// Starts or stops refusing.
        pub fn refuse(&self, refuse: bool) {
            self.refuse.store(refuse, Ordering::SeqCst);
        }

        /// Releases every claim accepted so far, as a commit does.
        pub fn release(&self) {
            self.in_flight.lock().expect("lock").clear();
        }
    }

    impl ExposureQueue for RecordingQueue {
        fn queue(&self, events: Vec<Event>, firsts: FirstExposures) -> Result<()> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(Error::Overloaded("ingest"));
            }
            let (records, claims) = firsts.into_parts();
            self.queued.lock().expect("lock").push((events, records));
            self.in_flight.lock().expect("lock").extend(claims);
            Ok(())
        }

        fn room(&self) -> &Room {
            &self.room
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::testing::{input, RecordingQueue, T0};
    use super::*;
    use crate::clock::ManualClock;
    use crate::storage::Store;

    struct Fixture {
        _dir: tempfile::TempDir,
        service: Experiments,
        queue: Arc<RecordingQueue>,
        clock: Arc<ManualClock>,
    }

    /// The service over an empty store, at most `max` experiments per
    /// `assign_all`. Must run inside an actix system.
    fn fixture(max: usize) -> Fixture {
        fixture_over(max, RecordingQueue::default())
    }

    /// [`fixture`], queueing exposures into `queue`.
    fn fixture_over(max: usize, queue: RecordingQueue) -> Fixture {
        fixture_with(max, queue, None)
    }

    /// [`fixture_over`], asking `elsewhere` for first exposures.
    fn fixture_with(
        max: usize,
        queue: RecordingQueue,
        elsewhere: Option<Arc<dyn Elsewhere>>,
    ) -> Fixture {
        let (dir, store) = Store::temporary();
        let clock = Arc::new(ManualClock::new(T0));
        let queue = Arc::new(queue);
        let service = Experiments::new(
            Arc::default(),
            Records::local(store),
            queue.clone(),
            elsewhere,
            clock.clone(),
            max,
            crate::quotas::Quotas::unmetered(),
        )
        .unwrap();
        Fixture {
            _dir: dir,
            service,
            queue,
            clock,
        }
    }

    impl Fixture {
        async fn draft(&self, key: &str) {
            self.service
                .create(input(key), &Principal::open())
                .await
                .unwrap();
        }

        async fn with_status(&self, key: &str, actions: &[Action]) {
            self.draft(key).await;
            for &action in actions {
                self.service
                    .transition(key, action, None, &Principal::open())
                    .await
                    .unwrap();
            }
        }

        async fn running(&self, key: &str) {
            self.with_status(key, &[Action::Start]).await;
        }

        /// Assignments served so far, by reason.
        fn served(&self) -> Vec<(Reason, u64)> {
            Reason::ALL
                .into_iter()
                .map(|r| (r, self.service.served[r as usize].load(Ordering::Relaxed)))
                .filter(|&(_, n)| n > 0)
                .collect()
        }
    }

    fn keys(names: &[&str]) -> Vec<ExperimentKey> {
        names.iter().map(|&k| k.try_into().unwrap()).collect()
    }

    fn experiments(assignments: &[Assignment]) -> Vec<&str> {
        assignments
            .iter()
            .map(|a| a.experiment().as_str())
            .collect()
    }

    /// Another node folding every unit's partition: answers `variant` for
    /// every experiment asked, or fails.
    struct Owner {
        variant: Option<&'static str>,
        asked: std::sync::Mutex<Vec<(String, Vec<String>)>>,
    }

    impl Elsewhere for Owner {
        fn first_exposures(
            &self,
            unit: &str,
            experiments: Vec<String>,
        ) -> Option<futures_util::future::BoxFuture<'static, Result<Vec<Option<FoundExposure>>>>>
        {
            self.asked
                .lock()
                .unwrap()
                .push((unit.to_owned(), experiments.clone()));
            let answer = match self.variant {
                Some(variant) => Ok(experiments
                    .iter()
                    .map(|_| {
                        Some(FoundExposure {
                            variant: variant.to_owned(),
                            at_ms: 1,
                        })
                    })
                    .collect()),
                None => Err(Error::Cluster("no responders".to_owned())),
            };
            Some(Box::pin(std::future::ready(answer)))
        }
    }

    #[actix::test]
    async fn a_first_exposure_folded_elsewhere_is_asked_for_only_when_the_answer_depends_on_it() {
        let owner = Arc::new(Owner {
            variant: Some("treatment"),
            asked: Default::default(),
        });
        let f = fixture_with(10, RecordingQueue::default(), Some(owner.clone()));
        f.running("e").await;
        // Some unit the hash gives the control.
        let unit = (0..)
            .map(|i| format!("u{i}"))
            .find(|u| {
                let entry = f.service.entry("e").unwrap();
                let a = Assignment::decide(&entry.slot, u, &Answered::default()).unwrap();
                a.variant().key.as_str() == "control"
            })
            .unwrap();

        let hashed = f.service.assign("e", &unit, false).await.unwrap();
        assert_eq!(hashed.reason(), Reason::Hashed);
        assert!(owner.asked.lock().unwrap().is_empty(), "nothing to ask");

        // Clients reported variants the hash would not give: look up.
        f.service.entry("e").unwrap().slot.sticky.diverge();
        let all = f.service.assign_all(&unit, None, false).await.unwrap();
        assert_eq!(
            (all[0].reason(), all[0].variant().key.as_str()),
            (Reason::Sticky, "treatment")
        );
        assert_eq!(
            owner.asked.lock().unwrap().as_slice(),
            [(unit.clone(), vec!["e".to_owned()])],
            "one request for the unit"
        );

        // No answer: the hash.
        let silent: Arc<dyn Elsewhere> = Arc::new(Owner {
            variant: None,
            asked: Default::default(),
        });
        let g = fixture_with(10, RecordingQueue::default(), Some(silent));
        g.running("e").await;
        g.service.entry("e").unwrap().slot.sticky.diverge();
        let fallback = g.service.assign("e", &unit, false).await.unwrap();
        assert_eq!(
            (fallback.reason(), fallback.variant().key.as_str()),
            (Reason::Hashed, "control")
        );
    }

    #[actix::test]
    async fn assign_counts_each_answer_by_reason_and_exposes_at_the_clocks_time() {
        let f = fixture(10);
        f.running("e").await;
        f.draft("d").await;
        f.clock.advance(Duration::from_secs(1));

        let first = f.service.assign("e", "alice", true).await.unwrap();
        assert_eq!(
            (first.reason(), first.in_experiment()),
            (Reason::Hashed, true)
        );
        let again = f.service.assign("e", "alice", true).await.unwrap();
        assert_eq!(again.reason(), Reason::Hashed, "the hash still agrees");
        assert_eq!(again.variant().key, first.variant().key);
        let draft = f.service.assign("d", "alice", true).await.unwrap();
        assert_eq!(
            (draft.reason(), draft.in_experiment()),
            (Reason::NotRunning, false)
        );
        assert_eq!(draft.variant().key.as_str(), "control");
        // Without an exposure nothing is remembered: still hashed.
        for _ in 0..2 {
            let unlogged = f.service.assign("e", "bob", false).await.unwrap();
            assert_eq!(unlogged.reason(), Reason::Hashed);
        }
        assert!(matches!(
            f.service.assign("missing", "alice", true).await,
            Err(Error::ExperimentNotFound(k)) if k == "missing"
        ));
        // Once the hash leaves her out, her first exposure answers.
        let nobody = serde_json::from_value(serde_json::json!({"coverage": 0.0})).unwrap();
        f.service
            .patch("e", nobody, &Principal::open())
            .await
            .unwrap();
        let kept = f.service.assign("e", "alice", true).await.unwrap();
        assert_eq!(
            (kept.reason(), kept.variant().key.clone()),
            (Reason::Sticky, first.variant().key.clone())
        );

        assert_eq!(
            f.served(),
            [
                (Reason::Hashed, 4),
                (Reason::Sticky, 1),
                (Reason::NotRunning, 1)
            ]
        );
        let queued = f.queue.queued();
        let exposed: Vec<_> = queued
            .iter()
            .flat_map(|(events, _)| events)
            .map(|e| (&*e.unit_id, e.timestamp_ms))
            .collect();
        let now = unix_ms(T0 + Duration::from_secs(1));
        assert_eq!(exposed, [("alice", now), ("alice", now), ("alice", now)]);
    }

    #[actix::test]
    async fn a_refused_exposure_fails_the_assignment_and_counts_nothing() {
        let f = fixture(10);
        f.running("e").await;
        f.queue.refuse(true);
        assert!(matches!(
            f.service.assign("e", "alice", true).await,
            Err(Error::Overloaded(_))
        ));
        assert!(matches!(
            f.service.assign_all("alice", None, true).await,
            Err(Error::Overloaded(_))
        ));
        assert!(f.served().is_empty());
        f.queue.refuse(false);
        let retried = f.service.assign("e", "alice", true).await.unwrap();
        assert_eq!(retried.reason(), Reason::Hashed, "nothing was remembered");
    }

    /// With `ingest.enqueue_wait_ms`, an assignment refused for a full
    /// queue waits for room and is decided again, not answered 503.
    #[actix::test]
    async fn a_refused_exposure_waits_for_room_and_is_queued_then() {
        let f = fixture_over(10, RecordingQueue::waiting(Duration::from_secs(60)));
        f.running("e").await;
        f.queue.refuse(true);
        let writer = {
            let queue = Arc::clone(&f.queue);
            actix::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                queue.make_room();
            })
        };
        let assigned = f.service.assign("e", "alice", true).await.unwrap();
        assert_eq!(assigned.reason(), Reason::Hashed);
        writer.await.unwrap();
        assert_eq!(f.queue.queued().len(), 1, "exposed once");
        assert_eq!(f.served(), [(Reason::Hashed, 1)]);
    }

    #[actix::test]
    async fn assign_all_without_keys_assigns_the_running_experiments_in_one_exposure() {
        let f = fixture(10);
        f.running("b").await;
        f.running("a").await;
        f.draft("c").await;
        f.with_status("d", &[Action::Start, Action::Pause]).await;
        f.with_status("e", &[Action::Start, Action::Complete]).await;

        let all = f.service.assign_all("alice", None, true).await.unwrap();
        assert_eq!(experiments(&all), ["a", "b"]);
        assert_eq!(f.served(), [(Reason::Hashed, 2)]);
        let queued = f.queue.queued();
        let [(events, sticky)] = &queued[..] else {
            panic!("one queue call: {}", queued.len())
        };
        assert_eq!((events.len(), sticky.len()), (2, 2));
    }

    #[actix::test]
    async fn assign_all_with_keys_assigns_each_once_and_bounds_the_keys_listed() {
        let f = fixture(5);
        f.running("a").await;
        f.running("b").await;
        f.draft("c").await;

        let repeated = keys(&["b", "a", "b", "b", "a"]);
        let once = f
            .service
            .assign_all("u", Some(&repeated), true)
            .await
            .unwrap();
        assert_eq!(experiments(&once), ["b", "a"], "first mention order");
        let [(events, _)] = &f.queue.queued()[..] else {
            panic!("one queue call")
        };
        assert_eq!(events.len(), 2, "one exposure each");

        let named = f
            .service
            .assign_all("u", Some(&keys(&["c"])), false)
            .await
            .unwrap();
        assert_eq!(
            named[0].reason(),
            Reason::NotRunning,
            "any status when named"
        );

        let before = f.served();
        // Six keys, three of them distinct: the list is what is bounded.
        let six = keys(&["a", "b", "c", "a", "b", "c"]);
        match f.service.assign_all("u", Some(&six), true).await {
            Err(Error::Invalid { field, message }) => {
                assert_eq!(field, "experiments");
                assert!(message.contains("at most 5"), "{message}");
            }
            other => panic!("{:?}", other.map(|a| a.len())),
        }
        let unknown = keys(&["a", "zzz"]);
        assert!(matches!(
            f.service.assign_all("u", Some(&unknown), true).await,
            Err(Error::ExperimentNotFound(k)) if k == "zzz"
        ));
        assert_eq!(f.served(), before, "a refused request counts nothing");
        assert_eq!(f.queue.queued().len(), 1, "and exposes nothing");
    }

    #[actix::test]
    async fn list_pages_in_key_order_and_shows_archived_only_when_asked() {
        let f = fixture(10);
        f.draft("a").await;
        f.with_status("b", &[Action::Archive]).await;
        f.running("c").await;
        f.draft("d").await;
        let page = |status, after, limit| {
            let page = f.service.list(status, after, limit);
            let items: Vec<String> = page
                .items
                .iter()
                .map(|c| c.experiment().key.to_string())
                .collect();
            (items, page.next.map(|k| k.to_string()))
        };
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        assert_eq!(
            page(None, None, 2),
            (strings(&["a", "c"]), Some("c".into()))
        );
        assert_eq!(page(None, Some("c"), 2), (strings(&["d"]), None));
        assert_eq!(page(None, None, 3), (strings(&["a", "c", "d"]), None));
        assert_eq!(
            page(Some(Status::Archived), None, 10),
            (strings(&["b"]), None)
        );
        assert_eq!(
            page(Some(Status::Running), None, 10),
            (strings(&["c"]), None)
        );
        assert!(matches!(
            f.service.get("nope"),
            Err(Error::ExperimentNotFound(_))
        ));
    }
}
