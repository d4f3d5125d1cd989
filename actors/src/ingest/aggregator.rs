//! The aggregator: folds committed events into per-experiment aggregates.
//!
//! It is owned by the ingest writer thread, which folds each batch just
//! before committing it and writes the aggregates that changed in the same
//! RocksDB WriteBatch as the events. Aggregates on disk therefore always
//! describe exactly the events on disk, across crashes, with no second
//! write path to reconcile, and a single thread owns them, so there is no
//! lock. Readers get immutable snapshots from [`LiveAggregates`].
//!
//! Attribution (`docs/events.md`, "Attribution"): an exposure event makes its unit an
//! exposed unit of its variant (once); any other event counts towards the
//! measure named by [`Event::metric_name`] for each exposure of its unit
//! that it matches — the event's experiment (all of the unit's experiments
//! when it names none) and variant (all of the unit's variants in that
//! experiment when it names none) — provided it happened at or after that
//! exposure. Events are folded in commit order, so an outcome that arrives
//! before its unit's exposure does not count. [`Aggregator::fold`] over the
//! stored events in `seq` order reproduces the live numbers exactly.
//!
//! Per-unit state (each unit's exposures and running sums) lives on disk
//! ([`Cf::Units`](crate::storage::Cf::Units)), not here: before a batch is
//! folded, the writer loads the state of the batch's units into a working
//! set ([`Aggregator::load_units`]), and
//! after the commit the working set is dropped. Memory is therefore bounded
//! by the batch, not by how many units exist, and start-up reads only the
//! per-experiment totals.
//!
//! Derived sums. A capped or ratio metric is kept as sums over units of
//! a function of each unit's running sums ([`Derivation::terms`](crate::domain::Derivation::terms)), so a
//! fold adds the change of that function for the unit it touched. Which
//! metrics are derived, and how, is the experiment's definition: each
//! partition holds the definitions it keeps ([`Aggregator::respec`],
//! told by `ingest/derived.rs` whenever an experiment changes), and each
//! share records them. When a definition changes, the partition
//! recomputes the experiment's derived sums from its units' stored state
//! in one scan, between two commits, so they describe every committed
//! event under the new definition; a share whose recorded definitions
//! differ from the experiment's is left out of the results meanwhile.
//!
//! Covariates. A CUPED metric's covariate is the unit's sum of a measure
//! over a window before its first exposure, captured at that exposure and
//! kept with the unit's running sums (as the measure
//! [`Covariate::key`]), so it never has to be read again and survives
//! the retention of the events it came from. Before a batch is folded,
//! [`Aggregator::load_histories`] reads the earlier stored events of each
//! unit the batch is about to expose for the first time to such an
//! experiment; the batch's own events are added as they are folded, so
//! the covariate counts exactly the unit's events committed before its
//! exposure, inside the window.
//!
//! Predictions and outcomes. A prediction of a model experiment is kept
//! open, by unit and `prediction_id`, in the store
//! ([`Cf::Predictions`](crate::storage::Cf::Predictions)), written with
//! its batch. An outcome joins the open prediction of its unit with its
//! `prediction_id` (one sent again replaces the open one), when it comes at
//! most the experiment's join window after it and not before; the joined
//! prediction is then deleted, so a second outcome joins nothing. Before a
//! batch is folded, [`Aggregator::load_joins`] reads the open predictions
//! its outcomes name, with one batched point lookup; the batch's own
//! predictions are added as they are folded. The joined pair is counted,
//! for the exposures the prediction counted for, as the measures of
//! [`measures`](crate::domain::measures) (a unit's outcomes, correct
//! labels, log loss, errors, ...), which the model metrics are ratios of,
//! and in the variant's [`ModelAggregates`](crate::domain::ModelAggregates)
//! (calibration, drift). Folding the stored events in commit order
//! (a rebuild) finds the same pairs.
//!
//! Two rules keep the state bounded and finite whatever clients send.
//! Each experiment counts at most `max_measures` distinct measures; events
//! of further names count together under [`OTHER_MEASURE`], so random event
//! names cannot grow memory, records or stats messages. And every sum is
//! kept finite: values are bounded at ingestion (so sums cannot overflow in
//! practice), and the arithmetic saturates at `±f64::MAX` regardless, so no
//! infinity or NaN can ever reach a stored record.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::totals::MeasureNames;
pub use super::totals::{LiveAggregates, OTHER_MEASURE};
use crate::domain::{
    finite, group_of, measures, merge_linked, sketch_of, AggregateChanges, Covariate, Derivation,
    Derivations, DerivedSums, DriftWindow, Event, EventType, ExperimentAggregates, ExperimentKey,
    Exposure, ModelAggregates, ModelTracking, PredictionChange, Properties, Scored, Taken,
    UnitChange, UnitMeasure, VariantAggregates, VariantKey, DEFAULT_QUANTILE_BINS,
    MODEL_DERIVATION, PHASES_DERIVATION,
};
use crate::domain::{phase_at, split_stratum, stratum};
use crate::storage::{Store, PREDICTION_GRACE_MS};
use crate::{Error, Result};

/// One partition's aggregation state: its share of every experiment's
/// aggregates, and the working set of the batch it folds.
#[derive(Debug)]
pub struct Aggregator {
    partition: usize,
    experiments: HashMap<Arc<str>, ExperimentAggregates>,
    /// The measures each experiment counts, shared with every partition.
    names: Arc<MeasureNames>,
    /// Each experiment's derived metrics, by metric key (experiments
    /// without any are absent).
    derivations: HashMap<Arc<str>, Arc<Derivations>>,
    /// The working set: the state of the units of the batch being folded,
    /// loaded from the store and dropped once it is committed.
    units: HashMap<Box<str>, Vec<Exposure>>,
    /// Also in the working set: the earlier events of the units about to
    /// be exposed for the first time to an experiment with covariates.
    histories: HashMap<Box<str>, Vec<Earlier>>,
    /// Also in the working set: by unit, then `prediction_id`, the open
    /// predictions the batch's outcomes may join, and the batch's own
    /// (looked up by borrowed ids: no allocation per outcome).
    open: HashMap<Box<str>, HashMap<Box<str>, Open>>,
    interned: HashSet<Arc<str>>,
    /// Most bins of one variant's quantile sketch.
    max_quantile_bins: usize,
    /// Scratch for a fold: each derived metric's terms before the event.
    terms_before: Vec<DerivedSums>,
    dirty_experiments: BTreeSet<Arc<str>>,
    dirty_units: BTreeSet<Box<str>>,
}

/// One (unit, `prediction_id`) of the working set.
#[derive(Debug)]
struct Open {
    /// The open prediction; `None` when there is none (or it was joined).
    prediction: Option<Event>,
    /// Changed by this batch: written (or deleted) with it.
    changed: bool,
}

impl Aggregator {
    /// An empty, single-partition aggregator counting at most
    /// `max_measures` distinct measures per experiment (further ones as
    /// [`OTHER_MEASURE`]).
    pub fn new(max_measures: usize) -> Self {
        Self::for_partition(0, Arc::new(MeasureNames::new(max_measures)))
    }

    /// [`Aggregator::new`], counting from the start the measure names
    /// `counted` (another aggregator's figures of `experiment`) counts, and
    /// keeping the experiment's `derivations`.
    pub fn counting(
        max_measures: usize,
        experiment: &str,
        counted: &ExperimentAggregates,
        derivations: Derivations,
    ) -> Self {
        let mut this = Self::new(max_measures);
        let key = this.intern(experiment);
        this.names.restore(&key, counted);
        if !derivations.is_empty() {
            this.derivations.insert(key, Arc::new(derivations));
        }
        this
    }

    /// An empty aggregator for `partition`, sharing `names`.
    fn for_partition(partition: usize, names: Arc<MeasureNames>) -> Self {
        Self {
            partition,
            experiments: HashMap::new(),
            names,
            derivations: HashMap::new(),
            units: HashMap::new(),
            histories: HashMap::new(),
            open: HashMap::new(),
            interned: HashSet::new(),
            max_quantile_bins: DEFAULT_QUANTILE_BINS,
            terms_before: Vec::new(),
            dirty_experiments: BTreeSet::new(),
            dirty_units: BTreeSet::new(),
        }
    }

    /// Keeps each variant's quantile sketches within `bins` bins from now
    /// on (`limits.max_quantile_bins`; [`DEFAULT_QUANTILE_BINS`] until
    /// told).
    pub fn bound_sketches(&mut self, bins: usize) {
        self.max_quantile_bins = bins.max(1);
    }

    /// Replaces the share of `experiment` with a restored one (cluster
    /// mode: a snapshot), to be published with the next changes.
    /// The derived metrics this partition was told stay: a snapshot kept
    /// for older definitions is [`Aggregator::stale`] and recomputed.
    pub fn replace(&mut self, experiment: &str, aggregates: ExperimentAggregates) {
        let key = self.intern(experiment);
        self.names.restore(&key, &aggregates);
        self.experiments.insert(Arc::clone(&key), aggregates);
        self.dirty_experiments.insert(key);
    }

    /// Takes a restored share of `experiment`'s aggregates, and the
    /// definitions it kept derived sums for until told otherwise.
    fn restore(&mut self, experiment: &str, aggregates: ExperimentAggregates) {
        let key = self.intern(experiment);
        self.names.restore(&key, &aggregates);
        if aggregates.derived.is_empty() {
            self.derivations.remove(&key);
        } else {
            let kept = Arc::new(aggregates.derived.clone());
            self.derivations.insert(Arc::clone(&key), kept);
        }
        self.experiments.insert(key, aggregates);
    }

    /// One aggregator per partition, restored from `store` and published
    /// to `live`. Reads the shares of every experiment's aggregates (one
    /// small record per experiment and partition), nothing per unit.
    ///
    /// When a share cannot be decoded (a corrupt or foreign value), or an
    /// earlier rebuild did not finish, everything is rebuilt from the
    /// stored events instead, logged and counted in
    /// `abacus_store_records_rebuilt_total`: a bad record never keeps the
    /// server from starting (events that retention already removed are
    /// then no longer counted). When the store was written by another
    /// partition count, each experiment's shares are summed into one,
    /// which partition 0 takes: shares count disjoint units, so the totals
    /// stay exact whichever partition owns a unit from now on.
    pub fn load_partitions(
        store: &Store,
        partitions: u16,
        max_measures: usize,
        live: &LiveAggregates,
    ) -> Result<Vec<Self>> {
        let names = Arc::new(MeasureNames::new(max_measures));
        let mut summed = true;
        let mut shares = match store.aggregates() {
            Ok(shares) if !store.rebuild_pending()? => {
                summed = false;
                shares
            }
            Ok(_) => Self::rebuild(store, &names, "an earlier rebuild did not finish")?,
            Err(e @ Error::Corrupt { .. }) => Self::rebuild(store, &names, &e.to_string())?,
            Err(e) => return Err(e),
        };
        let recorded = store.ingest_partitions()?;
        let moved = recorded.is_some_and(|r| r != partitions)
            || shares.iter().any(|(_, p, _)| *p >= partitions);
        if moved {
            let mut totals: BTreeMap<String, ExperimentAggregates> = BTreeMap::new();
            for (experiment, _, share) in &shares {
                totals.entry(experiment.clone()).or_default().add(share);
            }
            let list: Vec<(&str, &ExperimentAggregates)> =
                totals.iter().map(|(k, a)| (k.as_str(), a)).collect();
            store.set_ingest_partitions(partitions, Some(&list))?;
            tracing::warn!(
                from = recorded,
                to = partitions,
                experiments = totals.len(),
                "ingest partitions changed: each experiment's shares summed into partition 0"
            );
            shares = totals.into_iter().map(|(k, a)| (k, 0, a)).collect();
            summed = true;
        } else if recorded.is_none() {
            store.set_ingest_partitions(partitions, None)?;
        }
        let mut aggregators: Vec<Self> = (0..usize::from(partitions))
            .map(|p| Self::for_partition(p, Arc::clone(&names)))
            .collect();
        for (experiment, partition, mut share) in shares {
            if summed {
                // Partition 0 holds every unit's sums, but units hash to
                // every partition: each recomputes the derived sums of its
                // own units once it is told the definitions (an empty
                // share with none recorded is stale for any), so that
                // together they count every unit once.
                // Sketches (of event values, which no unit state holds)
                // are kept with their definitions: partition 0 goes on
                // with them, and every partition adds its new events.
                share.derived.retain(|_, d| !d.sums_units());
                share.variants.values_mut().for_each(|v| v.derived.clear());
                for other in aggregators.iter_mut().skip(1) {
                    other.restore(&experiment, ExperimentAggregates::default());
                }
            }
            if let Some(aggregator) = aggregators.get_mut(usize::from(partition)) {
                aggregator.restore(&experiment, share);
            }
        }
        for aggregator in &aggregators {
            for (key, share) in &aggregator.experiments {
                live.publish(aggregator.partition, Arc::clone(key), share.clone());
            }
        }
        Ok(aggregators)
    }

    /// Rebuilds every experiment's aggregates from the stored events into
    /// partition 0's shares, through the same per-batch path the writer
    /// takes, so memory stays bounded by a chunk of events.
    fn rebuild(
        store: &Store,
        names: &Arc<MeasureNames>,
        failure: &str,
    ) -> Result<Vec<(String, u16, ExperimentAggregates)>> {
        tracing::error!(
            error = %failure,
            "aggregates could not be read; rebuilding them from the stored events"
        );
        metrics::counter!(crate::metrics::STORE_RECORDS_REBUILT, "cf" => "aggregates").increment(1);
        let mut this = Self::for_partition(0, Arc::clone(names));
        // Folded under the stored experiments' definitions, so quantile
        // sketches come back with every stored event (derived sums are
        // recomputed from the units afterwards; CUPED covariates, which
        // need each unit's history, do not come back).
        match store.experiments() {
            Ok(experiments) => {
                for experiment in experiments {
                    let derivations = experiment.derivations();
                    if !derivations.is_empty() {
                        let key = this.intern(experiment.key.as_str());
                        this.derivations.insert(key, Arc::new(derivations));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "rebuilding without the experiments' derived metrics")
            }
        }
        let mut folded = 0u64;
        // Open predictions stay in memory across chunks (the store's
        // would be dropped at compaction when they are old), each as long
        // as the store keeps one past its join window (eight days), counted
        // from the newest event folded.
        let mut open: HashMap<(Box<str>, Box<str>), (Event, i64)> = HashMap::new();
        store.start_rebuild()?;
        store.for_each_event_in_commit_order(|events| {
            folded += events.len() as u64;
            this.load_units(events, |units| store.unit_states(units))?;
            this.load_joins(events, |ids| {
                let get = |(unit, id): &(&str, &str)| {
                    let p = open.get(&(Box::from(*unit), Box::from(*id)))?;
                    Some(p.0.clone())
                };
                Ok(ids.iter().map(get).collect())
            })?;
            this.fold(events);
            let changes = this.changes();
            for p in &changes.predictions {
                let key = (Box::from(p.unit), Box::from(p.id));
                match p.open {
                    Some((e, expires)) => open.insert(key, (e.clone(), expires)),
                    None => open.remove(&key),
                };
            }
            let newest = events.iter().map(|e| e.timestamp_ms).max().unwrap_or(0);
            let kept_from = newest.saturating_sub(PREDICTION_GRACE_MS as i64);
            open.retain(|_, (_, expires)| *expires >= kept_from);
            store.write_aggregates(0, &changes)?;
            this.clear_working_set();
            Ok(())
        })?;
        store.finish_rebuild()?;
        tracing::warn!(events = folded, "aggregates rebuilt from stored events");
        Ok(this
            .experiments
            .into_iter()
            .map(|(k, a)| (k.to_string(), 0, a))
            .collect())
    }

    /// Puts the stored state of the units of `events` that are not in the
    /// working set yet into it, read with one call of `read` (given the
    /// distinct units; it answers each one's state, `None` when nothing is
    /// stored): what the writer does before [`Aggregator::fold`].
    pub fn load_units(
        &mut self,
        events: &[Event],
        read: impl FnOnce(&[&str]) -> Result<Vec<Option<Vec<Exposure>>>>,
    ) -> Result<()> {
        self.load_states(events.iter().map(|e| &*e.unit_id), read)
    }

    /// [`Aggregator::load_units`] for `units`: the batch's events' units and
    /// those its links and transfers name, in one read.
    pub fn load_states<'u>(
        &mut self,
        units: impl IntoIterator<Item = &'u str>,
        read: impl FnOnce(&[&str]) -> Result<Vec<Option<Vec<Exposure>>>>,
    ) -> Result<()> {
        let mut seen = HashSet::new();
        let missing: Vec<&str> = units
            .into_iter()
            .filter(|u| !self.units.contains_key(*u) && seen.insert(*u))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let states = read(&missing)?;
        for (unit, state) in missing.into_iter().zip(states) {
            self.units.insert(unit.into(), state.unwrap_or_default());
        }
        Ok(())
    }

    /// Identity stitching, in the linked id's partition: takes the id's
    /// state (in the working set) out of this partition's share, as if it
    /// had never been exposed, and returns it for the unit's partition to
    /// fold in ([`Aggregator::attach`]). The id's stored state becomes
    /// empty. Its exposure counts (events) and quantile sketches stay where
    /// its events were counted.
    pub fn detach(&mut self, id: &str) -> Vec<Exposure> {
        let exposures = self
            .units
            .get_mut(id)
            .map(std::mem::take)
            .unwrap_or_default();
        for x in &exposures {
            self.contribute(x, false);
        }
        self.dirty_units.insert(id.into());
        exposures
    }

    /// Identity stitching, in the unit's partition: folds a linked id's
    /// state (from [`Aggregator::detach`]) into the unit's (in the working
    /// set) by the rule of `domain/alias.rs`, and this partition's share
    /// with it. Returns the first exposures the unit takes from the id.
    pub fn attach(&mut self, unit: &str, incoming: Vec<Exposure>) -> Vec<Taken> {
        let mut exposures = self.units.remove(unit).unwrap_or_default();
        let mut interned = Vec::with_capacity(incoming.len());
        for mut x in incoming {
            x.experiment = self.intern(&x.experiment);
            x.variant = self.intern(&x.variant);
            for m in &mut x.measures {
                m.key = self.intern(&m.key);
            }
            interned.push(x);
        }
        let touches =
            |x: &Exposure, all: &[Exposure]| all.iter().any(|i| i.experiment == x.experiment);
        for x in exposures.iter().filter(|x| touches(x, &interned)) {
            self.contribute(x, false);
        }
        let (taken, touched) = merge_linked(&mut exposures, interned);
        for x in exposures.iter().filter(|x| touched.contains(&x.experiment)) {
            self.contribute(x, true);
        }
        self.units.insert(unit.into(), exposures);
        self.dirty_units.insert(unit.into());
        taken
    }

    /// Adds (or with `add` false, takes out) one exposure's part of its
    /// variant's aggregates: the unit, its measures (covariates are not
    /// measures) and its terms of the derived sums.
    fn contribute(&mut self, x: &Exposure, add: bool) {
        let step = |total: u64, by: u64| match add {
            true => total.saturating_add(by),
            false => total.saturating_sub(by),
        };
        let sign = if add { 1.0 } else { -1.0 };
        let derived = self.derivations.get(&x.experiment).map(Arc::clone);
        let variant = self.variant_mut(&x.experiment, &x.variant);
        variant.units = step(variant.units, 1);
        for m in x.measures.iter().filter(|m| !Covariate::is_any_key(&m.key)) {
            let totals = entry_mut(&mut variant.measures, &m.key);
            totals.units = step(totals.units, u64::from(m.events > 0));
            totals.events = step(totals.events, m.events);
            totals.sum = finite(totals.sum + sign * m.sum);
            totals.sum_squares = finite(totals.sum_squares + sign * finite(m.sum * m.sum));
        }
        for (metric, d) in derived.iter().flat_map(|all| all.iter()) {
            if d.sums_units() {
                let terms = d.terms(x);
                let sums = entry_mut(&mut variant.derived, metric);
                match add {
                    true => sums.shift(DerivedSums::default(), terms),
                    false => sums.shift(terms, DerivedSums::default()),
                }
            }
        }
    }

    /// Covariates: reads with `read(unit, from_ms, to_ms)` the events of
    /// each unit of `events` that one of them exposes for the first time
    /// to an experiment with a covariate, from the longest window before
    /// its exposure up to it: what the writer does after
    /// [`Aggregator::load_units`]. `read` answers the events committed
    /// before `events` (the caller leaves out any of `events` themselves).
    pub fn load_histories(
        &mut self,
        events: &[Event],
        mut read: impl FnMut(&str, i64, i64) -> Result<Vec<Event>>,
    ) -> Result<()> {
        if self.derivations.is_empty() {
            return Ok(());
        }
        let mut spans: HashMap<&str, (i64, i64)> = HashMap::new();
        for e in events.iter().filter(|e| e.kind == EventType::Exposure) {
            let (Some(exp), Some(variant)) = (&e.experiment, &e.variant) else {
                continue;
            };
            let Some(window) = self.derivations.get(exp.as_str()).and_then(|all| {
                let windows = all.values().filter_map(|d| d.covariate.as_ref());
                windows.map(|c| c.window_ms).max()
            }) else {
                continue;
            };
            let exposed = self.units.get(&*e.unit_id).is_some_and(|xs| {
                xs.iter()
                    .any(|x| &*x.experiment == exp.as_str() && &*x.variant == variant.as_str())
            });
            if exposed || self.histories.contains_key(&*e.unit_id) {
                continue;
            }
            let span = spans.entry(&e.unit_id).or_insert((i64::MAX, i64::MIN));
            span.0 = span.0.min(e.timestamp_ms.saturating_sub(window));
            span.1 = span.1.max(e.timestamp_ms);
        }
        for (unit, (from, to)) in spans {
            let earlier = read(unit, from, to)?;
            let earlier = earlier.iter().filter_map(Earlier::of).collect();
            self.histories.insert(unit.into(), earlier);
        }
        Ok(())
    }

    /// Joins: reads with one call of `read` (given the distinct unit and
    /// `prediction_id` of each outcome in `events` not in the working set
    /// yet; it answers each one's open prediction, `None` when there is
    /// none) the predictions the outcomes may join: what the writer does
    /// after [`Aggregator::load_units`]. Nothing is read while no
    /// experiment is a model experiment.
    pub fn load_joins(
        &mut self,
        events: &[Event],
        read: impl FnOnce(&[(&str, &str)]) -> Result<Vec<Option<Event>>>,
    ) -> Result<()> {
        if !(self.derivations.values()).any(|all| all.contains_key(MODEL_DERIVATION)) {
            return Ok(());
        }
        let mut seen = HashSet::new();
        let missing: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e.kind == EventType::Outcome)
            .filter_map(|e| {
                let id = &*e.properties.as_ref()?.model()?.prediction_id;
                Some((&*e.unit_id, id))
            })
            .filter(|&(unit, id)| {
                let known = self.open.get(unit).is_some_and(|ids| ids.contains_key(id));
                !known && seen.insert((unit, id))
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let found = read(&missing)?;
        for ((unit, id), prediction) in missing.into_iter().zip(found) {
            let ids = self.open.entry(unit.into()).or_default();
            ids.insert(
                id.into(),
                Open {
                    prediction,
                    changed: false,
                },
            );
        }
        Ok(())
    }

    /// Folds events in order, as committed.
    pub fn fold<'e>(&mut self, events: impl IntoIterator<Item = &'e Event>) {
        for event in events {
            self.fold_one(event);
        }
    }

    fn fold_one(&mut self, e: &Event) {
        if let (true, Some(exp), Some(variant)) = (e.assignment_mismatch, &e.experiment, &e.variant)
        {
            let exp = self.intern(exp.as_str());
            self.variant_mut(&exp, variant.as_str())
                .assignment_mismatches += 1;
        }
        if e.kind == EventType::Exposure {
            if let (Some(exp), Some(variant)) = (&e.experiment, &e.variant) {
                self.expose(exp.as_str(), variant.as_str(), &e.unit_id, e.timestamp_ms);
            }
            return;
        }
        if let Some(history) = self.histories.get_mut(&*e.unit_id) {
            history.extend(Earlier::of(e));
        }
        let measure = e.metric_name();
        if measure.is_empty() {
            return;
        }
        let at = Attribution::of(e);
        self.count(&e.unit_id, at, measure, e.value.unwrap_or(1.0), Some(e));
        match e.kind {
            EventType::Prediction => self.predicted(e),
            EventType::Outcome => self.outcome(e),
            _ => {}
        }
    }

    /// Counts `value` towards `measure` for each exposure of `unit` that
    /// `at` matches, with the derived metrics that read it; `event` is
    /// the event it came from, for quantile sketches (none for the join's
    /// measures).
    fn count(
        &mut self,
        unit: &str,
        at: Attribution<'_>,
        measure: &str,
        value: f64,
        event: Option<&Event>,
    ) {
        let Some(exposures) = self.units.get_mut(unit) else {
            return;
        };
        let mut dirty = false;
        for exposure in exposures.iter_mut().filter(|x| at.matches(x)) {
            let key = if measures::is_builtin(measure) {
                intern(&mut self.interned, measure)
            } else {
                self.names.admit(&exposure.experiment, measure)
            };
            let derived = self
                .derivations
                .get(&exposure.experiment)
                .filter(|all| all.values().any(|d| d.reads(&key)));
            // The terms before this event of each derived metric it can
            // change (one reading this measure), in a buffer the aggregator
            // reuses; the others' terms stay as they are.
            let changes = |d: &Derivation| d.sums_units() && d.reads(&key);
            let mut terms_before = std::mem::take(&mut self.terms_before);
            terms_before.clear();
            terms_before.extend(derived.iter().flat_map(|all| {
                all.values().map(|d| match changes(d) {
                    true => d.terms(exposure),
                    false => DerivedSums::default(),
                })
            }));
            let unit_sum = match exposure.measures.iter_mut().find(|m| m.key == key) {
                Some(unit_sum) => unit_sum,
                None => {
                    exposure.measures.push(UnitMeasure {
                        key: Arc::clone(&key),
                        events: 0,
                        sum: 0.0,
                    });
                    let last = exposure.measures.len() - 1;
                    &mut exposure.measures[last]
                }
            };
            let before = unit_sum.sum;
            unit_sum.events = unit_sum.events.saturating_add(1);
            unit_sum.sum = finite(unit_sum.sum + value);
            let (first, after) = (unit_sum.events == 1, unit_sum.sum);
            let variant = variant_mut(
                &mut self.experiments,
                &self.derivations,
                &exposure.experiment,
                &exposure.variant,
            );
            let totals = entry_mut(&mut variant.measures, &key);
            totals.units += u64::from(first);
            totals.events = totals.events.saturating_add(1);
            totals.sum = finite(totals.sum + value);
            totals.sum_squares =
                finite(totals.sum_squares + (finite(after * after) - finite(before * before)));
            if let Some(all) = derived {
                let variant = variant_mut(
                    &mut self.experiments,
                    &self.derivations,
                    &exposure.experiment,
                    &exposure.variant,
                );
                for ((metric, d), &before) in all.iter().zip(&terms_before) {
                    if let Some(spec) = &d.quantile {
                        // One sketch per measure and value read.
                        let first = || sketch_of(all, &d.measure, spec.of) == Some(metric.as_str());
                        let read = || event.and_then(|e| spec.of.read(e));
                        if let Some(v) = (d.measure == *key && first()).then(read).flatten() {
                            entry_mut(&mut variant.sketches, metric).add(
                                v,
                                group_of(unit),
                                self.max_quantile_bins,
                            );
                        }
                    } else if changes(d) {
                        let after = d.terms(exposure);
                        entry_mut(&mut variant.derived, metric).shift(before, after);
                    }
                }
            }
            self.terms_before = terms_before;
            self.dirty_experiments
                .insert(Arc::clone(&exposure.experiment));
            dirty = true;
        }
        if dirty {
            self.dirty_units.insert(unit.into());
        }
    }

    /// The variants of `exp` whose exposures of `unit` `at` matches.
    fn matched(&self, unit: &str, at: Attribution<'_>) -> Vec<Arc<str>> {
        let exposures = self.units.get(unit).map_or(&[][..], Vec::as_slice);
        exposures
            .iter()
            .filter(|x| at.matches(x))
            .map(|x| Arc::clone(&x.variant))
            .collect()
    }

    /// A prediction of a model experiment: one more of the unit's
    /// predictions, and its score in its variant's drift figures; kept
    /// open when an outcome of the batch may join it.
    fn predicted(&mut self, e: &Event) {
        let Some(exp) = &e.experiment else {
            return;
        };
        let Some(tracking) = tracking(&self.derivations, exp.as_str()) else {
            return;
        };
        let at = Attribution::of(e);
        self.count(&e.unit_id, at, measures::PREDICTIONS, 1.0, None);
        let fields = e.properties.as_ref().and_then(Properties::model);
        if let Some(x) = fields.and_then(|m| m.score).or(e.value) {
            let exp = self.intern(exp.as_str());
            for variant in self.matched(&e.unit_id, at) {
                self.model_mut(&exp, &variant)
                    .predicted(&tracking, made_ms(e), x);
            }
        }
        if let Some(m) = fields {
            let ids = self.open.entry(e.unit_id.clone()).or_default();
            let open = Open {
                prediction: Some(e.clone()),
                changed: true,
            };
            ids.insert(m.prediction_id.clone(), open);
        }
    }

    /// An outcome: when it joins an open prediction, the pair's measures
    /// for the exposures the prediction counted for, and its score in
    /// their variants' calibration and quality figures.
    fn outcome(&mut self, e: &Event) {
        let Some(id) = e.properties.as_ref().and_then(Properties::model) else {
            return;
        };
        let id = &*id.prediction_id;
        let open = self.open.get(&*e.unit_id).and_then(|ids| ids.get(id));
        let Some(prediction) = open.and_then(|o| o.prediction.as_ref()) else {
            return;
        };
        let Some(exp) = prediction.experiment.as_ref().map(ExperimentKey::as_str) else {
            return;
        };
        let Some(tracking) = tracking(&self.derivations, exp) else {
            return;
        };
        // An outcome naming an experiment joins that experiment's
        // predictions only; it comes at most the join window after its
        // prediction, and not before.
        let made = prediction.timestamp_ms;
        let within =
            (made..=made.saturating_add(tracking.join_window_ms)).contains(&e.timestamp_ms);
        if !within || e.experiment.as_ref().is_some_and(|x| x.as_str() != exp) {
            return;
        }
        let taken = self
            .open
            .get_mut(&*e.unit_id)
            .and_then(|ids| ids.get_mut(id));
        let Some(prediction) = taken.and_then(|o| {
            o.changed = true;
            o.prediction.take()
        }) else {
            return;
        };
        let exp = prediction
            .experiment
            .as_ref()
            .map_or("", ExperimentKey::as_str);
        let exp = self.intern(exp);
        let at = Attribution::of(&prediction);
        let scored = Scored::of(&prediction, e);
        self.count(&e.unit_id, at, measures::JOINED, 1.0, None);
        for (measure, value) in scored.measures() {
            self.count(&e.unit_id, at, measure, value, None);
        }
        for variant in self.matched(&e.unit_id, at) {
            self.model_mut(&exp, &variant)
                .joined(&tracking, made_ms(&prediction), scored);
        }
    }

    /// A variant's model figures, created if need be.
    fn model_mut(&mut self, exp: &Arc<str>, variant: &str) -> &mut ModelAggregates {
        self.variant_mut(exp, variant)
            .model
            .get_or_insert_with(ModelAggregates::default)
    }

    /// Counts an exposure; a unit's first to this variant makes it an
    /// exposed unit of the variant's stratum for the phase it falls in
    /// (see `domain/phase.rs`), where its later exposures count too.
    fn expose(&mut self, experiment: &str, variant: &str, unit: &str, at_ms: i64) {
        let exp = self.intern(experiment);
        let standing = self.units.get(unit).and_then(|xs| {
            xs.iter()
                .find(|x| x.experiment == exp && split_stratum(&x.variant).0 == variant)
                .map(|x| Arc::clone(&x.variant))
        });
        let first = standing.is_none();
        let var = match standing {
            Some(var) => var,
            None => {
                let starts = self
                    .derivations
                    .get(&exp)
                    .and_then(|all| all.get(PHASES_DERIVATION))
                    .and_then(|d| d.phases.as_deref())
                    .unwrap_or_default();
                match phase_at(starts, at_ms) {
                    1 => self.intern(variant),
                    phase => self.intern(&stratum(variant, phase)),
                }
            }
        };
        let exposures = self.units.entry(unit.into()).or_default();
        if first {
            exposures.push(Exposure {
                experiment: Arc::clone(&exp),
                variant: Arc::clone(&var),
                exposed_ms: at_ms,
                measures: Vec::new(),
            });
            self.dirty_units.insert(unit.into());
            self.capture(&exp, &var, unit);
        }
        let totals = self.variant_mut(&exp, &var);
        totals.exposures += 1;
        totals.units += u64::from(first);
    }

    /// Covariates: sums each covariate of `exp`'s metrics over the unit's
    /// earlier events into its new exposure (the last), and adds the
    /// exposure's terms to the variant's derived sums.
    fn capture(&mut self, exp: &Arc<str>, variant: &str, unit: &str) {
        let Some(all) = self.derivations.get(exp).map(Arc::clone) else {
            return;
        };
        let covariates: BTreeSet<&Covariate> =
            all.values().filter_map(|d| d.covariate.as_ref()).collect();
        let Some(exposure) = self.units.get_mut(unit).and_then(|xs| xs.last_mut()) else {
            return;
        };
        if covariates.is_empty() {
            return;
        }
        let earlier = self.histories.get(unit).map_or(&[][..], Vec::as_slice);
        let at = exposure.exposed_ms;
        for c in covariates {
            let (mut events, mut sum) = (0u64, 0.0);
            for e in earlier.iter().filter(|e| {
                *e.measure == c.measure && e.ms >= at.saturating_sub(c.window_ms) && e.ms < at
            }) {
                events += 1;
                sum = finite(sum + e.value);
            }
            if events > 0 {
                exposure.measures.push(UnitMeasure {
                    key: intern(&mut self.interned, &c.key()),
                    events,
                    sum,
                });
            }
        }
        let variant = variant_mut(&mut self.experiments, &self.derivations, exp, variant);
        for (metric, d) in all.iter().filter(|(_, d)| d.sums_units()) {
            entry_mut(&mut variant.derived, metric)
                .shift(DerivedSums::default(), d.terms(exposure));
        }
    }

    fn variant_mut(&mut self, exp: &Arc<str>, variant: &str) -> &mut VariantAggregates {
        self.dirty_experiments.insert(Arc::clone(exp));
        variant_mut(&mut self.experiments, &self.derivations, exp, variant)
    }

    /// Makes `experiment`'s derived metrics those of `derivations`. When
    /// its share kept derived sums for other definitions, recomputes them
    /// from the stored state of every unit of this partition, which `scan`
    /// hands over, and returns `true`: the share is then among the
    /// [`Aggregator::changes`] to write and publish. Call it between
    /// commits (with no working set), so the stored states are complete.
    pub fn respec(
        &mut self,
        experiment: &str,
        derivations: Arc<Derivations>,
        scan: impl FnOnce(&mut dyn FnMut(&[Exposure])) -> Result<()>,
    ) -> Result<bool> {
        let key = self.intern(experiment);
        let stale = self
            .experiments
            .get(&key)
            .is_some_and(|share| share.derived != *derivations);
        if stale {
            // Only sums of unit values are recomputed from the units: a
            // change to quantile metrics alone needs no scan.
            let summed = |all: &Derivations| -> Vec<(String, Derivation)> {
                all.iter()
                    .filter(|(_, d)| d.sums_units())
                    .map(|(k, d)| (k.clone(), d.clone()))
                    .collect()
            };
            let rescan = self
                .experiments
                .get(&key)
                .is_some_and(|share| summed(&share.derived) != summed(&derivations));
            let mut sums: HashMap<Arc<str>, BTreeMap<String, DerivedSums>> = HashMap::new();
            if rescan {
                scan(&mut |exposures| {
                    for x in exposures.iter().filter(|x| x.experiment == key) {
                        let variant = sums.entry(Arc::clone(&x.variant)).or_default();
                        for (metric, d) in derivations.iter().filter(|(_, d)| d.sums_units()) {
                            entry_mut(variant, metric).shift(DerivedSums::default(), d.terms(x));
                        }
                    }
                })?;
            }
            if let Some(share) = self.experiments.get_mut(&key) {
                // A sketch holds event values, which the units' state does
                // not: it is kept while a quantile metric still reads the
                // same values (under that metric's key: any level reads
                // it), and dropped when none does.
                let kept = |metric: &String| {
                    let was = share.derived.get(metric)?;
                    sketch_of(&derivations, &was.measure, was.quantile?.of)
                };
                // A model's figures hold event values too: they are kept
                // while its task stays, but for a baseline that moved.
                let model = |all: &Derivations| all.get(MODEL_DERIVATION).and_then(|d| d.model);
                let (was, now) = (model(&share.derived), model(&derivations));
                let same_task = was.zip(now).is_some_and(|(w, n)| w.task == n.task);
                let same_baseline = was.map(|w| w.baseline) == now.map(|n| n.baseline);
                for v in share.variants.values_mut() {
                    v.sketches = std::mem::take(&mut v.sketches)
                        .into_iter()
                        .filter_map(|(metric, s)| Some((kept(&metric)?.to_owned(), s)))
                        .collect();
                    match &mut v.model {
                        Some(_) if !same_task => v.model = None,
                        Some(m) if !same_baseline => m.baseline = DriftWindow::default(),
                        _ => {}
                    }
                    if rescan {
                        v.derived.clear();
                    }
                }
                share.derived = (*derivations).clone();
                for (variant, derived) in sums {
                    share
                        .variants
                        .entry(variant.to_string())
                        .or_default()
                        .derived = derived;
                }
            }
            self.dirty_experiments.insert(Arc::clone(&key));
        }
        if derivations.is_empty() {
            self.derivations.remove(&key);
        } else {
            self.derivations.insert(key, derivations);
        }
        Ok(stale)
    }

    /// The experiments whose share kept derived sums for other
    /// definitions than the ones this partition was last told (after a
    /// restored snapshot): each to [`Aggregator::respec`] again.
    pub fn stale(&self) -> Vec<(Arc<str>, Arc<Derivations>)> {
        self.experiments
            .iter()
            .filter_map(|(key, share)| {
                let told = self.derivations.get(key).cloned().unwrap_or_default();
                (share.derived != *told).then(|| (Arc::clone(key), told))
            })
            .collect()
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        intern(&mut self.interned, s)
    }

    /// The shares changed since the last [`Aggregator::published`], without
    /// the working set's units: what a recomputation of derived sums
    /// writes.
    pub fn share_changes(&self) -> AggregateChanges<'_> {
        AggregateChanges {
            units: Vec::new(),
            ..self.changes()
        }
    }

    /// What changed since the last [`Aggregator::published`].
    pub fn changes(&self) -> AggregateChanges<'_> {
        let experiments = self
            .dirty_experiments
            .iter()
            .filter_map(|k| self.experiments.get_key_value(k))
            .map(|(k, a)| (&**k, a))
            .collect();
        let units = self
            .dirty_units
            .iter()
            .filter_map(|unit| {
                let exposures = self.units.get(unit)?;
                Some(UnitChange { unit, exposures })
            })
            .collect();
        let predictions = (self.open.iter())
            .flat_map(|(unit, ids)| ids.iter().map(move |(id, o)| (unit, id, o)))
            .filter(|(_, _, o)| o.changed)
            .map(|(unit, id, o)| {
                let open = o.prediction.as_ref().map(|p| {
                    let exp = p.experiment.as_ref().map_or("", ExperimentKey::as_str);
                    let window = tracking(&self.derivations, exp).map_or(0, |t| t.join_window_ms);
                    (p, p.timestamp_ms.saturating_add(window))
                });
                PredictionChange { unit, id, open }
            })
            .collect();
        AggregateChanges {
            experiments,
            units,
            predictions,
        }
    }

    /// Publishes what changed to readers, once it is committed, and drops
    /// the working set.
    pub fn published(&mut self, live: &LiveAggregates) {
        for key in std::mem::take(&mut self.dirty_experiments) {
            if let Some(a) = self.experiments.get(&key) {
                live.publish(self.partition, key, a.clone());
            }
        }
        self.clear_working_set();
    }

    /// Forgets the working set and what changed in it.
    fn clear_working_set(&mut self) {
        self.dirty_experiments.clear();
        self.dirty_units.clear();
        self.units.clear();
        self.histories.clear();
        self.open.clear();
    }

    /// One experiment's aggregates (empty when it has none yet).
    pub fn experiment(&self, key: &str) -> ExperimentAggregates {
        self.experiments.get(key).cloned().unwrap_or_default()
    }
}

fn intern(interned: &mut HashSet<Arc<str>>, s: &str) -> Arc<str> {
    match interned.get(s) {
        Some(k) => Arc::clone(k),
        None => {
            let k: Arc<str> = s.into();
            interned.insert(Arc::clone(&k));
            k
        }
    }
}

/// A model experiment's tracking, if `exp` is one.
fn tracking(derivations: &HashMap<Arc<str>, Arc<Derivations>>, exp: &str) -> Option<ModelTracking> {
    derivations.get(exp)?.get(MODEL_DERIVATION)?.model
}

/// When a prediction counts as made for the drift and quality windows: its
/// timestamp, but never later than its receipt, so that one dated ahead
/// (up to `ingest.max_future_skew_s`) cannot push the window past every
/// other prediction.
fn made_ms(prediction: &Event) -> i64 {
    prediction.timestamp_ms.min(prediction.received_ms)
}

/// Which exposures an event (or a joined prediction) counts for: its
/// experiment's (all when it names none) and variant's (all of the unit's
/// in that experiment when it names none), from their exposure on.
#[derive(Clone, Copy)]
struct Attribution<'a> {
    experiment: Option<&'a str>,
    variant: Option<&'a str>,
    at_ms: i64,
}

impl<'a> Attribution<'a> {
    fn of(e: &'a Event) -> Self {
        Self {
            experiment: e.experiment.as_ref().map(ExperimentKey::as_str),
            variant: e.variant.as_ref().map(VariantKey::as_str),
            at_ms: e.timestamp_ms,
        }
    }

    fn matches(&self, x: &Exposure) -> bool {
        self.experiment.is_none_or(|e| e == &*x.experiment)
            && self
                .variant
                .is_none_or(|v| v == split_stratum(&x.variant).0)
            && self.at_ms >= x.exposed_ms
    }
}

/// One earlier event of a unit, as a covariate reads it.
#[derive(Debug)]
struct Earlier {
    measure: Box<str>,
    ms: i64,
    value: f64,
}

impl Earlier {
    /// `e` as a measure's value; exposures are not measures.
    fn of(e: &Event) -> Option<Self> {
        let measure = e.metric_name();
        (e.kind != EventType::Exposure && !measure.is_empty()).then(|| Self {
            measure: measure.into(),
            ms: e.timestamp_ms,
            value: e.value.unwrap_or(1.0),
        })
    }
}

/// A variant's aggregates, created if need be; a new share of an
/// experiment records the derived metrics it is kept for.
fn variant_mut<'a>(
    experiments: &'a mut HashMap<Arc<str>, ExperimentAggregates>,
    derivations: &HashMap<Arc<str>, Arc<Derivations>>,
    exp: &Arc<str>,
    variant: &str,
) -> &'a mut VariantAggregates {
    let share = experiments
        .entry(Arc::clone(exp))
        .or_insert_with(|| ExperimentAggregates {
            derived: derivations
                .get(exp)
                .map(|d| (**d).clone())
                .unwrap_or_default(),
            ..ExperimentAggregates::default()
        });
    entry_mut(&mut share.variants, variant)
}

/// `map[key]`, inserted as the default first if missing; the key is
/// allocated only then (this runs for every folded event).
fn entry_mut<'a, V: Default>(map: &'a mut BTreeMap<String, V>, key: &str) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key)
        .unwrap_or_else(|| unreachable!("inserted above"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ExperimentKey, MeasureAggregates, VariantKey};
    use crate::storage::{keys, Cf, Commit};

    /// The one aggregator of a single-partition store.
    fn load(store: &Store, max_measures: usize) -> Result<Aggregator> {
        Aggregator::load_partitions(store, 1, max_measures, &LiveAggregates::default())
            .map(|mut all| all.remove(0))
    }

    fn event(kind: &str, unit: &str, exp: Option<&str>, variant: Option<&str>, ts: i64) -> Event {
        Event {
            experiment: exp.map(|e| ExperimentKey::try_from(e).unwrap()),
            variant: variant.map(|v| VariantKey::try_from(v).unwrap()),
            timestamp_ms: ts,
            received_ms: ts,
            ..Event::sample(kind, unit)
        }
    }

    fn valued(mut e: Event, v: f64) -> Event {
        e.value = Some(v);
        e
    }

    fn measure<'a>(a: &'a ExperimentAggregates, variant: &str, m: &str) -> &'a MeasureAggregates {
        &a.variants[variant].measures[m]
    }

    /// Units exposed to `a` or `b` of `e`, each with sessions and
    /// purchases of random values after its exposure (and one before,
    /// which must not count); each unit's own sums, to check against.
    fn shoppers(seed: u64) -> (Vec<Event>, Vec<(String, f64, f64)>) {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut events, mut units) = (Vec::new(), Vec::new());
        for i in 0..60 {
            let (unit, variant) = (format!("u{i}"), if i % 2 == 0 { "a" } else { "b" });
            events.push(valued(event("purchase", &unit, None, None, 1), 100.0));
            events.push(event("exposure", &unit, Some("e"), Some(variant), 2));
            let (mut spent, mut sessions) = (0.0, 0.0);
            for _ in 0..rng.random_range(0..6) {
                let value = f64::from(rng.random_range(1..800_u32)) / 100.0;
                events.push(valued(event("purchase", &unit, None, None, 3), value));
                spent += value;
            }
            for _ in 0..rng.random_range(0..4) {
                events.push(event("session", &unit, Some("e"), None, 3));
                sessions += 1.0;
            }
            units.push((variant.to_owned(), spent, sessions));
        }
        // Interleave the units' events, keeping each unit's own order.
        events.sort_by_key(|e| e.timestamp_ms);
        (events, units)
    }

    fn derivations(cap: f64) -> Derivations {
        let d = |cap, denominator: Option<&str>| Derivation {
            measure: "purchase".into(),
            cap,
            denominator: denominator.map(Into::into),
            covariate: None,
            quantile: None,
            model: None,
            phases: None,
        };
        [
            ("capped".to_owned(), d(Some(cap), None)),
            ("per_session".to_owned(), d(None, Some("session"))),
        ]
        .into_iter()
        .collect()
    }

    /// What the derived sums must be: from each unit's own sums.
    fn expected(units: &[(String, f64, f64)], variant: &str, cap: f64) -> [DerivedSums; 2] {
        let mut out = [DerivedSums::default(); 2];
        for (_, spent, sessions) in units.iter().filter(|u| u.0 == variant) {
            let x = spent.min(cap);
            out[0].sum += x;
            out[0].sum_squares += x * x;
            out[0].capped += f64::from(u8::from(x < *spent));
            out[1].sum += spent;
            out[1].sum_squares += spent * spent;
            out[1].cross += spent * sessions;
        }
        out
    }

    fn assert_sums(a: &ExperimentAggregates, units: &[(String, f64, f64)], cap: f64) {
        for variant in ["a", "b"] {
            let want = expected(units, variant, cap);
            let got = &a.variants[variant].derived;
            for (metric, want) in ["capped", "per_session"].iter().zip(want) {
                let got = got.get(*metric).copied().unwrap_or_default();
                for (g, w) in [
                    (got.sum, want.sum),
                    (got.sum_squares, want.sum_squares),
                    (got.cross, want.cross),
                    (got.capped, want.capped),
                ] {
                    assert!(
                        (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                        "{variant} {metric}: {got:?} != {want:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn capped_and_ratio_sums_follow_each_units_running_sums() {
        let (events, units) = shoppers(7);
        let mut agg = Aggregator::new(usize::MAX);
        let told = agg.respec("e", Arc::new(derivations(10.0)), |_| Ok(()));
        assert!(!told.unwrap(), "nothing to recompute before any event");
        agg.fold(&events);
        let a = agg.experiment("e");
        assert_eq!(a.derived, derivations(10.0));
        assert_sums(&a, &units, 10.0);
        assert!(
            a.variants["a"].derived["capped"].capped > 0.0,
            "some unit is capped"
        );
    }

    #[test]
    fn a_link_moves_the_ids_sums_to_its_unit_and_counts_the_person_once() {
        let (events, units) = shoppers(13);
        let mut agg = Aggregator::new(usize::MAX);
        agg.respec("e", Arc::new(derivations(10.0)), |_| Ok(()))
            .unwrap();
        agg.fold(&events);
        // Each odd unit (variant b) is an id of the even one before it
        // (variant a): both first exposed at the same time, so the unit's
        // own exposure stands and the person is an `a` unit.
        let mut merged: Vec<(String, f64, f64)> = Vec::new();
        for pair in units.chunks(2) {
            let (unit, id) = (&pair[0], &pair[1]);
            merged.push((unit.0.clone(), unit.1 + id.1, unit.2 + id.2));
        }
        for k in 0..30 {
            let state = agg.detach(&format!("u{}", 2 * k + 1));
            let taken = agg.attach(&format!("u{}", 2 * k), state);
            assert!(taken.is_empty(), "a tie leaves the unit its own variant");
        }
        let a = agg.experiment("e");
        assert_eq!(a.variants["a"].units, 30);
        assert_eq!(a.variants["b"].units, 0, "each person counted once");
        assert_sums(&a, &merged, 10.0);
        let spent: f64 = merged.iter().map(|u| u.1).sum();
        let purchase = measure(&a, "a", "purchase");
        assert!((purchase.sum - spent).abs() < 1e-9, "{purchase:?}");
        let squares: f64 = merged.iter().map(|u| u.1 * u.1).sum();
        assert!((purchase.sum_squares - squares).abs() < 1e-6 * squares);
        let gone = measure(&a, "b", "purchase");
        assert_eq!((gone.units, gone.events), (0, 0));
        assert!(gone.sum.abs() < 1e-9 && gone.sum_squares.abs() < 1e-6);
    }

    #[test]
    fn a_linked_id_exposed_first_gives_the_unit_its_variant() {
        let mut agg = Aggregator::new(usize::MAX);
        agg.fold(&[
            event("exposure", "anon", Some("e"), Some("b"), 1),
            event("session", "anon", Some("e"), None, 2),
            event("session", "anon", Some("e"), None, 3),
            event("exposure", "alice", Some("e"), Some("a"), 5),
            event("session", "alice", Some("e"), None, 6),
        ]);
        let state = agg.detach("anon");
        let taken = agg.attach("alice", state);
        assert_eq!(
            taken
                .iter()
                .map(|t| (&*t.experiment, &*t.variant, t.at_ms))
                .collect::<Vec<_>>(),
            [("e", "b", 1)]
        );
        let a = agg.experiment("e");
        assert_eq!((a.variants["a"].units, a.variants["b"].units), (0, 1));
        let sessions = measure(&a, "b", "session");
        assert_eq!((sessions.units, sessions.events), (1, 3));
        assert_eq!((sessions.sum, sessions.sum_squares), (3.0, 9.0));
        let left = measure(&a, "a", "session");
        assert_eq!((left.units, left.events, left.sum), (0, 0, 0.0));
        assert_eq!(agg.units["anon"], Vec::new(), "the id keeps no state");
        assert!(agg.dirty_units.contains("anon") && agg.dirty_units.contains("alice"));
    }

    #[test]
    fn a_changed_definition_is_recomputed_from_the_units_and_only_then() {
        let (events, units) = shoppers(11);
        let mut agg = Aggregator::new(usize::MAX);
        agg.respec("e", Arc::new(derivations(10.0)), |_| Ok(()))
            .unwrap();
        agg.fold(&events);
        let states: Vec<Vec<Exposure>> = agg.units.values().cloned().collect();
        let scan = |f: &mut dyn FnMut(&[Exposure])| {
            states.iter().for_each(|s| f(s));
            Ok(())
        };
        assert!(!agg.respec("e", Arc::new(derivations(10.0)), scan).unwrap());
        assert!(agg.respec("e", Arc::new(derivations(4.0)), scan).unwrap());
        let a = agg.experiment("e");
        assert_eq!(a.derived, derivations(4.0));
        assert_sums(&a, &units, 4.0);
        // Folding on keeps them under the new definition.
        let more = [valued(event("purchase", "u0", None, None, 9), 50.0)];
        agg.fold(&more);
        let mut units = units;
        units[0].1 += 50.0;
        assert_sums(&agg.experiment("e"), &units, 4.0);
        // Dropping every derived metric empties them.
        assert!(agg.respec("e", Arc::new(Derivations::new()), scan).unwrap());
        let a = agg.experiment("e");
        assert!(a.derived.is_empty() && a.variants["a"].derived.is_empty());
    }

    /// After a partition-count change every share sits in partition 0, but
    /// units hash to every partition: each recomputes its own units'
    /// derived sums, and together they count every unit once.
    #[test]
    fn derived_sums_cover_every_unit_after_the_partition_count_changes() {
        let (_dir, store) = Store::temporary();
        let (events, units) = shoppers(5);
        let live = LiveAggregates::new(1);
        let mut one = Aggregator::load_partitions(&store, 1, usize::MAX, &live)
            .unwrap()
            .remove(0);
        one.respec("e", Arc::new(derivations(10.0)), |_| Ok(()))
            .unwrap();
        fold_into(&mut one, &store, &events, &live);
        assert_sums(&one.experiment("e"), &units, 10.0);

        let live = LiveAggregates::new(3);
        let mut parts = Aggregator::load_partitions(&store, 3, usize::MAX, &live).unwrap();
        let mut total = ExperimentAggregates::default();
        for (p, agg) in parts.iter_mut().enumerate() {
            let mine = |u: &str| crate::ingest::mailbox::partition_of(u, 3) == p;
            let told = agg.respec("e", Arc::new(derivations(10.0)), |f| {
                store.for_each_unit_state(&mine, f)
            });
            assert!(told.unwrap(), "partition {p} recomputes");
            total.add(&agg.experiment("e"));
        }
        assert_eq!(total.derived, derivations(10.0));
        assert_sums(&total, &units, 10.0);
    }

    /// A quantile metric's sketch holds event values that no unit's
    /// stored state keeps: it stays through a recomputation of the other
    /// derived metrics, a partition-count change and a change of level,
    /// and starts empty when the metric reads other values.
    #[test]
    fn a_quantile_sketch_is_kept_while_its_definition_stays() {
        use crate::domain::{QuantileOf, QuantileSpec};
        let with_quantile = |cap: f64, level: f64| {
            let mut all = derivations(cap);
            let spec = QuantileSpec {
                level,
                of: QuantileOf::Value,
            };
            all.insert(
                "spend_p90".into(),
                Derivation {
                    measure: "purchase".into(),
                    cap: None,
                    denominator: None,
                    covariate: None,
                    quantile: Some(spec),
                    model: None,
                    phases: None,
                },
            );
            Arc::new(all)
        };
        let sketch =
            |a: &ExperimentAggregates, v: &str| a.variants[v].sketches.get("spend_p90").cloned();
        let (_dir, store) = Store::temporary();
        let (events, units) = shoppers(13);
        let live = LiveAggregates::new(1);
        let mut one = load(&store, usize::MAX).unwrap();
        one.respec("e", with_quantile(10.0, 0.9), |_| Ok(()))
            .unwrap();
        fold_into(&mut one, &store, &events, &live);
        let before = one.experiment("e");
        for v in ["a", "b"] {
            // Every purchase after the exposure, each with its value.
            let counted = sketch(&before, v).map_or(0, |s| s.count());
            assert_eq!(counted, measure(&before, v, "purchase").events);
        }
        assert!(sketch(&before, "a").is_some_and(|s| s.count() > 10));

        let scan = |f: &mut dyn FnMut(&[Exposure])| store.for_each_unit_state(&|_| true, f);
        assert!(one.respec("e", with_quantile(4.0, 0.9), scan).unwrap());
        let after = one.experiment("e");
        assert_sums(&after, &units, 4.0);
        assert_eq!(sketch(&after, "a"), sketch(&before, "a"));

        let live = LiveAggregates::new(3);
        let mut parts = Aggregator::load_partitions(&store, 3, usize::MAX, &live).unwrap();
        let mut total = ExperimentAggregates::default();
        for (p, agg) in parts.iter_mut().enumerate() {
            let mine = |u: &str| crate::ingest::mailbox::partition_of(u, 3) == p;
            agg.respec("e", with_quantile(4.0, 0.9), |f| {
                store.for_each_unit_state(&mine, f)
            })
            .unwrap();
            total.add(&agg.experiment("e"));
        }
        assert_eq!(total.derived, *with_quantile(4.0, 0.9));
        assert_sums(&total, &units, 4.0);
        for v in ["a", "b"] {
            assert_eq!(sketch(&total, v), sketch(&before, v), "{v}");
        }

        // Another level reads the same values: the sketch stays, and no
        // unit is scanned for it.
        let told = parts[0].respec("e", with_quantile(4.0, 0.5), |_| {
            panic!("a quantile's change needs no scan")
        });
        assert!(told.unwrap());
        assert_eq!(sketch(&parts[0].experiment("e"), "a"), sketch(&before, "a"));
        // Other values: it starts empty.
        let mut other = (*with_quantile(4.0, 0.5)).clone();
        if let Some(q) = other.get_mut("spend_p90").and_then(|d| d.quantile.as_mut()) {
            q.of = QuantileOf::ResponseTimeMs;
        }
        assert!(parts[0].respec("e", Arc::new(other), |_| Ok(())).unwrap());
        assert_eq!(sketch(&parts[0].experiment("e"), "a"), None);
    }

    /// Cluster mode: a snapshot taken under older definitions is stale
    /// against what the partition was told since.
    #[test]
    fn a_restored_snapshot_under_older_definitions_is_stale() {
        let (events, _) = shoppers(9);
        let mut old = Aggregator::new(usize::MAX);
        old.respec("e", Arc::new(derivations(5.0)), |_| Ok(()))
            .unwrap();
        old.fold(&events);
        let mut agg = Aggregator::new(usize::MAX);
        agg.respec("e", Arc::new(derivations(10.0)), |_| Ok(()))
            .unwrap();
        assert!(agg.stale().is_empty());
        agg.replace("e", old.experiment("e"));
        let stale = agg.stale();
        assert_eq!(stale.len(), 1);
        assert_eq!((&*stale[0].0, &*stale[0].1), ("e", &derivations(10.0)));
    }

    #[test]
    fn shares_kept_for_different_definitions_leave_the_metric_out_of_the_total() {
        let (events, _) = shoppers(3);
        let mut one = Aggregator::new(usize::MAX);
        one.respec("e", Arc::new(derivations(10.0)), |_| Ok(()))
            .unwrap();
        one.fold(&events);
        let mut other = Aggregator::new(usize::MAX);
        other
            .respec("e", Arc::new(derivations(5.0)), |_| Ok(()))
            .unwrap();
        other.fold(&events);
        let mut total = ExperimentAggregates::default();
        total.add(&ExperimentAggregates::default());
        total.add(&one.experiment("e"));
        assert_eq!(total.derived, derivations(10.0));
        total.add(&other.experiment("e"));
        assert_eq!(
            total.derived.len(),
            1,
            "the capped metric differs: {:?}",
            total.derived
        );
        assert!(total.derived.contains_key("per_session"));
    }

    #[test]
    fn a_covariate_is_what_the_unit_did_in_the_window_before_its_first_exposure() {
        const DAY: i64 = 86_400_000;
        let cuped = Derivation {
            measure: "purchase".into(),
            cap: None,
            denominator: None,
            covariate: Some(Covariate {
                measure: "purchase".into(),
                window_ms: 7 * DAY,
            }),
            quantile: None,
            model: None,
            phases: None,
        };
        let all: Derivations = [("spend".to_owned(), cuped)].into_iter().collect();
        let mut agg = Aggregator::new(usize::MAX);
        agg.respec("e", Arc::new(all), |_| Ok(())).unwrap();
        let at = 30 * DAY;
        // Stored before the batch: one purchase inside the window, one
        // too early, one of another measure.
        let stored = vec![
            valued(event("purchase", "u", None, None, at - 8 * DAY), 1000.0),
            valued(event("purchase", "u", None, None, at - 2 * DAY), 5.0),
            valued(event("refund", "u", None, None, at - DAY), 7.0),
        ];
        let batch = [
            valued(event("purchase", "u", None, None, at - 1), 3.0),
            event("exposure", "u", Some("e"), Some("a"), at),
            valued(event("purchase", "u", None, None, at + 1), 11.0),
            // The second unit has no history: its covariate is 0.
            event("exposure", "w", Some("e"), Some("a"), at),
            valued(event("purchase", "w", None, None, at + 1), 2.0),
        ];
        let mut asked = Vec::new();
        agg.load_histories(&batch, |unit, from, to| {
            asked.push((unit.to_owned(), from, to));
            Ok(if unit == "u" {
                stored.clone()
            } else {
                Vec::new()
            })
        })
        .unwrap();
        asked.sort();
        assert_eq!(
            asked,
            [
                ("u".into(), at - 7 * DAY, at),
                ("w".into(), at - 7 * DAY, at)
            ]
        );
        agg.fold(&batch);
        let d = agg.experiment("e").variants["a"].derived["spend"];
        // u: covariate 5 + 3, value 11; w: covariate 0, value 2.
        assert_eq!(
            (d.pre_sum, d.pre_sum_squares, d.pre_cross),
            (8.0, 64.0, 88.0)
        );
        assert_eq!((d.sum, d.sum_squares), (13.0, 121.0 + 4.0));
        // A later batch neither reads nor changes a captured covariate.
        let later = [
            event("exposure", "u", Some("e"), Some("a"), at + 5),
            valued(event("purchase", "u", None, None, at + 6), 1.0),
        ];
        agg.load_histories(&later, |_, _, _| panic!("u was exposed already"))
            .unwrap();
        agg.fold(&later);
        let d = agg.experiment("e").variants["a"].derived["spend"];
        assert_eq!((d.pre_sum, d.pre_cross), (8.0, 8.0 * 12.0));
    }

    #[test]
    fn an_outcome_joins_its_open_prediction_once_within_the_window() {
        const HOUR: i64 = 3_600_000;
        let (_dir, store) = Store::temporary();
        let spec: crate::domain::ModelSpec = serde_json::from_value(
            serde_json::json!({"task": "classification", "join_window_hours": 1}),
        )
        .unwrap();
        let mut all: Derivations = (spec.metrics().iter())
            .filter_map(|m| Some((m.key.to_string(), m.derivation()?)))
            .collect();
        let t0 = crate::domain::unix_ms(time::OffsetDateTime::now_utc()) - 3 * HOUR;
        let started = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(t0);
        all.insert(MODEL_DERIVATION.into(), spec.derivation(Some(started)));
        let mut agg = load(&store, usize::MAX).unwrap();
        agg.respec("e", Arc::new(all), |_| Ok(())).unwrap();
        let model = |kind: &str, id: &str, props: serde_json::Value, at: i64| {
            let mut props = props;
            props["prediction_id"] = id.into();
            let mut e = event(
                kind,
                "u",
                (kind == "prediction").then_some("e"),
                None,
                t0 + at,
            );
            e.properties = Some(Properties::of(props));
            e
        };
        let predict =
            |id, score: f64, at| model("prediction", id, serde_json::json!({"score": score}), at);
        let outcome =
            |id, label: bool, at| model("outcome", id, serde_json::json!({"label": label}), at);
        // Each batch as the writer folds it: the open predictions its
        // outcomes name read from the store, and written back with it.
        let fold = |agg: &mut Aggregator, batch: &[Event]| {
            agg.load_joins(batch, |ids| store.open_predictions(ids))
                .unwrap();
            fold_through(agg, &store, batch);
        };
        fold(
            &mut agg,
            &[
                event("exposure", "u", Some("e"), Some("a"), t0 + 100),
                predict("p1", 0.8, 200),
                predict("p2", 0.3, 300),
            ],
        );
        // p1 joins once; p2's outcome is later than the window; p3 was
        // never predicted.
        fold(
            &mut agg,
            &[
                outcome("p1", true, 1000),
                outcome("p1", false, 1100),
                outcome("p2", true, 300 + 2 * HOUR),
                outcome("p3", true, 1200),
            ],
        );
        let open = |ids: &[(&str, &str)]| -> Vec<bool> {
            store
                .open_predictions(ids)
                .unwrap()
                .iter()
                .map(Option::is_some)
                .collect()
        };
        assert_eq!(
            open(&[("u", "p1"), ("u", "p2"), ("u", "p3")]),
            [false, true, false]
        );
        let figures = |agg: &Aggregator| {
            let a = agg.experiment("e");
            let v = &a.variants["a"];
            let sum = |m: &str| v.measures.get(m).map_or(0.0, |m| m.sum);
            let accuracy = v.derived["model_accuracy"];
            (
                [
                    sum(measures::PREDICTIONS),
                    sum(measures::JOINED),
                    sum(measures::LABELLED),
                    sum(measures::CORRECT),
                ],
                v.measures["outcome"].events,
                (accuracy.sum, accuracy.cross),
                v.model.clone().unwrap_or_default(),
            )
        };
        let (sums, outcomes, accuracy, m) = figures(&agg);
        assert_eq!(
            (sums, outcomes, accuracy),
            ([2.0, 1.0, 1.0, 1.0], 4, (1.0, 1.0))
        );
        let log_loss = agg.experiment("e").variants["a"].measures[measures::LOG_LOSS].sum;
        assert!((log_loss + 0.8f64.ln()).abs() < 1e-12, "{log_loss}");
        assert_eq!(
            (m.calibration[8].outcomes, m.calibration[8].correct),
            (1, 1)
        );
        assert_eq!((m.baseline.predictions, m.baseline.outcomes), (2, 1));
        // A prediction and its outcome in one batch join; p1, joined
        // already, does not join again.
        fold(
            &mut agg,
            &[
                predict("p4", 0.6, 2000),
                outcome("p4", false, 2001),
                outcome("p1", true, 2002),
            ],
        );
        let (sums, outcomes, accuracy, m) = figures(&agg);
        assert_eq!(
            (sums, outcomes, accuracy),
            ([3.0, 2.0, 2.0, 1.0], 6, (1.0, 2.0))
        );
        assert_eq!(
            (m.calibration[6].outcomes, m.calibration[6].correct),
            (1, 0)
        );
        assert_eq!(open(&[("u", "p4")]), [false]);
    }

    #[test]
    fn quantile_metrics_of_one_value_share_a_sketch_that_outlives_the_first() {
        use crate::domain::{QuantileOf, QuantileSpec};
        let quantile = |level| Derivation {
            measure: "purchase".into(),
            cap: None,
            denominator: None,
            covariate: None,
            quantile: Some(QuantileSpec {
                level,
                of: QuantileOf::Value,
            }),
            model: None,
            phases: None,
        };
        let all = |keys: &[(&str, f64)]| -> Arc<Derivations> {
            Arc::new(
                keys.iter()
                    .map(|(k, q)| ((*k).to_owned(), quantile(*q)))
                    .collect(),
            )
        };
        let mut agg = Aggregator::new(usize::MAX);
        agg.respec("e", all(&[("p50", 0.5), ("p99", 0.99)]), |_| Ok(()))
            .unwrap();
        let events: Vec<Event> = (0..20)
            .flat_map(|i| {
                let unit = format!("u{i}");
                [
                    event("exposure", &unit, Some("e"), Some("a"), 1),
                    valued(event("purchase", &unit, None, None, 2), f64::from(i)),
                ]
            })
            .collect();
        agg.fold(&events);
        let sketches = |agg: &Aggregator| -> Vec<(String, u64)> {
            let a = agg.experiment("e");
            let v = &a.variants["a"];
            v.sketches
                .iter()
                .map(|(k, s)| (k.clone(), s.count()))
                .collect()
        };
        assert_eq!(sketches(&agg), [("p50".to_owned(), 20)]);
        // The first goes: the sketch stays, under the next one's key.
        agg.respec("e", all(&[("p99", 0.99)]), |_| panic!("no scan"))
            .unwrap();
        assert_eq!(sketches(&agg), [("p99".to_owned(), 20)]);
        // No quantile metric of the value left: it goes.
        agg.respec("e", Arc::new(Derivations::new()), |_| panic!("no scan"))
            .unwrap();
        assert_eq!(sketches(&agg), []);
    }

    #[test]
    fn repeat_exposures_count_the_unit_once() {
        let mut agg = Aggregator::new(usize::MAX);
        let events = [
            event("exposure", "u1", Some("e"), Some("a"), 10),
            event("exposure", "u1", Some("e"), Some("a"), 20),
            event("exposure", "u2", Some("e"), Some("b"), 30),
        ];
        agg.fold(&events);
        let a = agg.experiment("e");
        assert_eq!((a.variants["a"].units, a.variants["a"].exposures), (1, 2));
        assert_eq!((a.variants["b"].units, a.variants["b"].exposures), (1, 1));
    }

    #[test]
    fn per_unit_sums_feed_sum_and_sum_of_squares() {
        let mut agg = Aggregator::new(usize::MAX);
        let events = [
            event("exposure", "u1", Some("e"), Some("a"), 10),
            event("exposure", "u2", Some("e"), Some("a"), 10),
            valued(event("conversion", "u1", Some("e"), None, 11), 2.0),
            valued(event("conversion", "u1", Some("e"), None, 12), 3.0),
            event("conversion", "u2", None, None, 13),
        ];
        agg.fold(&events);
        let a = agg.experiment("e");
        let m = measure(&a, "a", "conversion");
        assert_eq!((m.units, m.events), (2, 3));
        assert_eq!(m.sum, 6.0);
        assert_eq!(m.sum_squares, 5.0 * 5.0 + 1.0);
    }

    #[test]
    fn only_exposed_units_count_and_only_after_their_exposure() {
        let mut agg = Aggregator::new(usize::MAX);
        let events = [
            event("click", "u1", Some("e"), None, 5),
            event("exposure", "u1", Some("e"), Some("a"), 10),
            event("click", "u1", Some("e"), None, 9),
            event("click", "u1", Some("e"), None, 10),
            event("click", "stranger", None, None, 50),
        ];
        agg.fold(&events);
        let a = agg.experiment("e");
        assert_eq!(measure(&a, "a", "click").events, 1);
        assert_eq!(a.variants.len(), 1);
    }

    #[test]
    fn events_without_an_experiment_count_for_each_experiment_of_the_unit() {
        let mut agg = Aggregator::new(usize::MAX);
        let events = [
            event("exposure", "u", Some("e1"), Some("a"), 1),
            event("exposure", "u", Some("e2"), Some("b"), 1),
            valued(event("purchase", "u", None, None, 2), 9.5),
            valued(event("purchase", "u", Some("e1"), None, 3), 1.0),
        ];
        agg.fold(&events);
        assert_eq!(measure(&agg.experiment("e1"), "a", "purchase").sum, 10.5);
        assert_eq!(measure(&agg.experiment("e2"), "b", "purchase").sum, 9.5);
    }

    #[test]
    fn metric_events_count_under_their_name_and_mismatches_are_counted() {
        let mut agg = Aggregator::new(usize::MAX);
        let mut metric = valued(event("metric", "u", Some("e"), Some("a"), 2), 4.0);
        metric.properties = Some(crate::domain::Properties::of(
            serde_json::json!({"name": "latency", "value": 4}),
        ));
        let mut drifted = event("exposure", "u", Some("e"), Some("b"), 3);
        drifted.assignment_mismatch = true;
        let events = [
            event("exposure", "u", Some("e"), Some("a"), 1),
            metric,
            drifted,
            event("click", "u", Some("e"), Some("b"), 4),
        ];
        agg.fold(&events);
        let a = agg.experiment("e");
        assert_eq!(measure(&a, "a", "latency").sum, 4.0);
        assert_eq!(a.variants["b"].assignment_mismatches, 1);
        assert_eq!(a.variants["b"].units, 1, "the drifted unit saw b too");
        assert_eq!(measure(&a, "b", "click").events, 1);
        assert!(!a.variants["a"].measures.contains_key("click"));
    }

    #[test]
    fn restored_state_continues_exactly_where_it_left_off() {
        let events: Vec<Event> = (0..200)
            .map(|i| {
                let unit = format!("u{}", i % 7);
                if i % 5 == 0 {
                    event("exposure", &unit, Some("e"), Some("a"), i)
                } else {
                    valued(
                        event("buy", &unit, None, None, i),
                        f64::from(i as u32) / 3.0,
                    )
                }
            })
            .collect();
        let mut whole = Aggregator::new(usize::MAX);
        whole.fold(&events);

        // The first half is folded and committed; the second half starts
        // from the stored totals and loads each unit's state as it comes.
        let (_dir, store) = Store::temporary();
        let mut first = Aggregator::new(usize::MAX);
        for chunk in events[..100].chunks(30) {
            fold_through(&mut first, &store, chunk);
        }
        let mut resumed = load(&store, usize::MAX).unwrap();
        assert!(
            resumed.units.is_empty(),
            "no per-unit state is loaded at start"
        );
        for chunk in events[100..].chunks(7) {
            fold_through(&mut resumed, &store, chunk);
        }
        assert_eq!(resumed.experiment("e"), whole.experiment("e"));
    }

    /// What the writer does with a batch: load its units, fold, commit,
    /// publish.
    fn fold_through(agg: &mut Aggregator, store: &Store, events: &[Event]) {
        fold_into(agg, store, events, &LiveAggregates::default());
    }

    /// [`fold_through`] as the aggregator's partition, publishing to `live`.
    fn fold_into(agg: &mut Aggregator, store: &Store, events: &[Event], live: &LiveAggregates) {
        agg.load_units(events, |units| store.unit_states(units))
            .unwrap();
        agg.fold(events);
        store
            .commit(&Commit {
                aggregates: Some(agg.changes()),
                partition: agg.partition as u16,
                next_seq: 1,
                ..Commit::default()
            })
            .unwrap();
        agg.published(live);
    }

    #[test]
    fn measures_beyond_the_bound_count_as_other_and_memory_stays_bounded() {
        let mut agg = Aggregator::new(3);
        let mut events = vec![event("exposure", "u", Some("e"), Some("a"), 1)];
        events.extend((0..1000).map(|i| event(&format!("name-{i}"), "u", None, None, 2)));
        events.push(event("name-1", "u", None, None, 3));
        let (_dir, store) = Store::temporary();
        agg.fold(&events);
        store
            .commit(&Commit {
                aggregates: Some(agg.changes()),
                next_seq: 1,
                ..Commit::default()
            })
            .unwrap();
        let a = agg.experiment("e");
        let names: Vec<&str> = a.variants["a"]
            .measures
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(names, ["(other)", "name-0", "name-1", "name-2"]);
        assert_eq!(measure(&a, "a", "(other)").events, 997);
        assert_eq!(
            measure(&a, "a", "name-1").events,
            2,
            "a known name keeps counting"
        );
        assert_eq!(agg.units["u"][0].measures.len(), 4);
        assert_eq!(agg.names.count("e"), 4, "unadmitted names are not kept");
        // Restored state keeps the same bound.
        let mut resumed = load(&store, 3).unwrap();
        fold_through(
            &mut resumed,
            &store,
            &[event("brand-new", "u", None, None, 4)],
        );
        assert_eq!(
            measure(&resumed.experiment("e"), "a", "(other)").events,
            998
        );
    }

    #[test]
    fn sums_stay_finite_whatever_the_values() {
        let mut agg = Aggregator::new(10);
        let mut events = vec![event("exposure", "u", Some("e"), Some("a"), 1)];
        events.extend((0..4).map(|_| valued(event("buy", "u", None, None, 2), 1e200)));
        events.push(valued(event("buy", "u", None, None, 2), -f64::MAX));
        agg.fold(&events);
        let m = measure(&agg.experiment("e"), "a", "buy").clone();
        assert!(m.sum.is_finite() && m.sum_squares.is_finite(), "{m:?}");
        let json = serde_json::to_string(&agg.experiment("e")).unwrap();
        assert!(!json.contains("null"), "{json}");
    }

    #[test]
    fn changes_name_what_a_fold_touched_until_published() {
        let mut agg = Aggregator::new(usize::MAX);
        agg.fold(&[
            event("exposure", "u1", Some("e"), Some("a"), 1),
            event("click", "u1", None, None, 2),
        ]);
        let changes = agg.changes();
        assert_eq!(changes.experiments.len(), 1);
        assert_eq!(changes.units.len(), 1);
        assert_eq!(changes.units[0].exposures[0].measures[0].events, 1);
        let live = LiveAggregates::default();
        agg.published(&live);
        assert_eq!(live.get("e").variants["a"].units, 1);
        assert!(agg.changes().units.is_empty());
        assert!(agg.units.is_empty(), "the working set is dropped");
        assert_eq!(*live.get("nothing"), ExperimentAggregates::default());
    }

    #[test]
    fn an_undecodable_aggregate_is_rebuilt_from_the_events_not_fatal() {
        let (_dir, store) = Store::temporary();
        let event = |seq: u64, kind: &str, unit: &str, variant: Option<&str>| Event {
            seq,
            event_id: format!("e{seq}").into(),
            experiment: Some(ExperimentKey::try_from("exp").unwrap()),
            variant: variant.map(|v| VariantKey::try_from(v).unwrap()),
            value: Some(2.5),
            timestamp_ms: seq as i64,
            ..Event::sample(kind, unit)
        };
        let events = [
            event(1, "exposure", "u1", Some("a")),
            event(2, "exposure", "u2", Some("b")),
            event(3, "buy", "u1", None),
            event(4, "buy", "u2", None),
            event(5, "buy", "u1", None),
        ];
        let mut written = Aggregator::new(10);
        written.fold(&events);
        store
            .commit(&Commit {
                events: &events,
                next_seq: 6,
                aggregates: Some(written.changes()),
                ..Commit::default()
            })
            .unwrap();
        // What a non-finite sum used to be stored as.
        let poisoned = br#"{"variants":{"a":{"units":1,"exposures":1,"assignment_mismatches":0,"measures":{"buy":{"units":1,"events":2,"sum":null,"sum_squares":null}}}}}"#;
        store.put_raw(Cf::Aggregates, &keys::aggregates("exp", 0), poisoned);
        assert!(store.aggregates().is_err());

        let loaded = load(&store, 10).expect("rebuilt, not refused");
        assert_eq!(loaded.experiment("exp"), written.experiment("exp"));
        assert_eq!(store.aggregates().unwrap()[0].2, written.experiment("exp"));
        assert!(!store.rebuild_pending().unwrap());

        // A rebuild cut short (a crash) is done again at the next start.
        store.start_rebuild().unwrap();
        let mut loaded = load(&store, 10).expect("rebuilt again");
        assert_eq!(loaded.experiment("exp"), written.experiment("exp"));

        // The rebuilt per-unit state continues like the original.
        let more = [event(6, "buy", "u2", None)];
        fold_through(&mut loaded, &store, &more);
        written.fold(&more);
        assert_eq!(loaded.experiment("exp"), written.experiment("exp"));
    }

    /// A rebuild folds under the stored experiments' definitions: a
    /// quantile metric's sketch, which no unit state could give back,
    /// comes back whole.
    #[test]
    fn a_rebuild_brings_quantile_sketches_back_from_the_events() {
        let (_dir, store) = Store::temporary();
        let input = serde_json::from_value(serde_json::json!({
            "key": "e", "name": "E",
            "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}],
            "metrics": [{"key": "spend_p90", "kind": "quantile", "measure": "purchase",
                "quantile": 0.9}],
        }))
        .unwrap();
        let experiment =
            crate::domain::Experiment::create(input, time::OffsetDateTime::UNIX_EPOCH).unwrap();
        store.put_experiment(&experiment, None).unwrap();
        let (mut events, _) = shoppers(17);
        for (seq, e) in events.iter_mut().enumerate() {
            e.seq = seq as u64 + 1;
        }
        let live = LiveAggregates::new(1);
        let mut written = load(&store, usize::MAX).unwrap();
        written
            .respec("e", Arc::new(experiment.derivations()), |_| Ok(()))
            .unwrap();
        written
            .load_units(&events, |u| store.unit_states(u))
            .unwrap();
        written.fold(&events);
        store
            .commit(&Commit {
                events: &events,
                next_seq: events.len() as u64 + 1,
                aggregates: Some(written.changes()),
                ..Commit::default()
            })
            .unwrap();
        written.published(&live);
        let sketch = |a: &ExperimentAggregates| a.variants["a"].sketches.get("spend_p90").cloned();
        assert!(sketch(&written.experiment("e")).is_some_and(|s| s.count() > 10));

        store.start_rebuild().unwrap();
        let rebuilt = load(&store, usize::MAX).unwrap();
        assert_eq!(
            sketch(&rebuilt.experiment("e")),
            sketch(&written.experiment("e"))
        );
    }

    /// Each partition folds its own units; the totals are the sum of the
    /// shares, and survive a restart with another partition count.
    #[test]
    fn shares_of_several_partitions_sum_to_the_totals_across_a_partition_count_change() {
        let (_dir, store) = Store::temporary();
        let live = LiveAggregates::new(2);
        let mut parts = Aggregator::load_partitions(&store, 2, 10, &live).unwrap();
        let events: Vec<Event> = (0..60)
            .map(|i| {
                let unit = format!("u{}", i % 6);
                if i < 6 {
                    event("exposure", &unit, Some("e"), Some(["a", "b"][i % 2]), 1)
                } else {
                    valued(event("buy", &unit, None, None, 2), i as f64)
                }
            })
            .collect();
        let mut whole = Aggregator::new(10);
        whole.fold(&events);
        // Units u0, u2, u4 go to partition 0; the others to partition 1.
        for (p, aggregator) in parts.iter_mut().enumerate() {
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| (e.unit_id.as_bytes()[1] - b'0') as usize % 2 == p)
                .cloned()
                .collect();
            fold_into(aggregator, &store, &mine, &live);
        }
        assert_eq!(*live.get("e"), whole.experiment("e"));
        assert_eq!(store.aggregates().unwrap().len(), 2, "one share each");

        for partitions in [3, 1] {
            let live = LiveAggregates::new(usize::from(partitions));
            let restored = Aggregator::load_partitions(&store, partitions, 10, &live).unwrap();
            assert_eq!(restored.len(), usize::from(partitions));
            assert_eq!(*live.get("e"), whole.experiment("e"), "{partitions}");
            assert_eq!(store.ingest_partitions().unwrap(), Some(partitions));
            let shares = store.aggregates().unwrap();
            assert_eq!(shares.len(), 1, "summed into partition 0");
            assert_eq!(shares[0].1, 0);
        }
    }
}
