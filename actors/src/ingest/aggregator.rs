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
//! set ([`Aggregator::missing_units`], [`Aggregator::load_units`]), and
//! after the commit the working set is dropped. Memory is therefore bounded
//! by the batch, not by how many units exist, and start-up reads only the
//! per-experiment totals.
//!
//! Two rules keep the state bounded and finite whatever clients send.
//! Each experiment counts at most `max_measures` distinct measures; events
//! of further names count together under [`OTHER_MEASURE`], so random event
//! names cannot grow memory, records or stats messages. And every sum is
//! kept finite: values are bounded at ingestion (so sums cannot overflow in
//! practice), and the arithmetic saturates at `±f64::MAX` regardless, so no
//! infinity or NaN can ever reach a stored record.

use std::collections::{hash_map, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use dashmap::DashMap;

use crate::domain::{
    AggregateChanges, Event, EventType, ExperimentAggregates, Exposure, MeasureAggregates,
    UnitChange, UnitMeasure, VariantAggregates,
};
use crate::storage::Store;
use crate::{Error, Result};

/// The measure that events of names beyond an experiment's
/// `max_measures` count under. Measure names are `[a-z0-9_-]`, so no client
/// name can collide with it.
pub const OTHER_MEASURE: &str = "(other)";

/// The writer's aggregation state.
#[derive(Debug)]
pub struct Aggregator {
    max_measures: usize,
    experiments: HashMap<Arc<str>, ExperimentAggregates>,
    /// Each experiment's distinct measures (at most `max_measures` + 1).
    measures: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// The working set: the state of the units of the batch being folded,
    /// loaded from the store and dropped once it is committed.
    units: HashMap<Box<str>, Vec<Exposure>>,
    interned: HashSet<Arc<str>>,
    dirty_experiments: BTreeSet<Arc<str>>,
    dirty_units: BTreeSet<Box<str>>,
}

impl Aggregator {
    /// An empty aggregator counting at most `max_measures` distinct
    /// measures per experiment (further ones as [`OTHER_MEASURE`]).
    pub fn new(max_measures: usize) -> Self {
        Self {
            max_measures,
            experiments: HashMap::new(),
            measures: HashMap::new(),
            units: HashMap::new(),
            interned: HashSet::new(),
            dirty_experiments: BTreeSet::new(),
            dirty_units: BTreeSet::new(),
        }
    }

    /// Restores every experiment's persisted aggregates; per-unit state
    /// stays on disk until a batch needs it.
    pub fn restore(
        max_measures: usize,
        experiments: impl IntoIterator<Item = (String, ExperimentAggregates)>,
    ) -> Self {
        let mut this = Self::new(max_measures);
        for (key, aggregates) in experiments {
            let key = this.intern(&key);
            let names: Vec<Arc<str>> = aggregates
                .variants
                .values()
                .flat_map(|v| v.measures.keys())
                .map(|m| intern(&mut this.interned, m))
                .collect();
            this.measures
                .entry(Arc::clone(&key))
                .or_default()
                .extend(names);
            this.experiments.insert(key, aggregates);
        }
        this
    }

    /// Restores the persisted totals from `store`. When one cannot be
    /// decoded (a corrupt or foreign value), or an earlier rebuild did not
    /// finish, everything is rebuilt from the stored events instead,
    /// logged and counted in `abacus_store_records_rebuilt_total`: a bad
    /// record never keeps the server from starting. Events that retention
    /// already removed are then no longer counted.
    pub fn load(store: &Store, max_measures: usize) -> Result<Self> {
        let failure = match store.aggregates() {
            Ok(experiments) if !store.rebuild_pending()? => {
                return Ok(Self::restore(max_measures, experiments))
            }
            Ok(_) => "an earlier rebuild did not finish".to_owned(),
            Err(e @ Error::Corrupt { .. }) => e.to_string(),
            Err(e) => return Err(e),
        };
        tracing::error!(
            error = %failure,
            "aggregates could not be read; rebuilding them from the stored events"
        );
        metrics::counter!(crate::metrics::STORE_RECORDS_REBUILT, "cf" => "aggregates").increment(1);
        let mut this = Self::new(max_measures);
        let mut folded = 0u64;
        store.start_rebuild()?;
        store.for_each_event_in_commit_order(|events| {
            folded += events.len() as u64;
            let missing = this.missing_units(events);
            let states = store.unit_states(&missing)?;
            let missing: Vec<Box<str>> = missing.into_iter().map(Box::from).collect();
            this.load_units(missing.into_iter().zip(states));
            this.fold(events);
            store.write_aggregates(&this.changes())?;
            this.clear_working_set();
            Ok(())
        })?;
        store.finish_rebuild()?;
        tracing::warn!(events = folded, "aggregates rebuilt from stored events");
        Ok(this)
    }

    /// The distinct units of `events` whose state is not in the working
    /// set yet: what to read from the store before [`Aggregator::fold`].
    pub fn missing_units<'e>(&self, events: &'e [Event]) -> Vec<&'e str> {
        let mut seen = HashSet::with_capacity(events.len());
        events
            .iter()
            .map(|e| &*e.unit_id)
            .filter(|u| !self.units.contains_key(*u) && seen.insert(*u))
            .collect()
    }

    /// Puts units' stored state (`None`: nothing stored) into the working set.
    pub fn load_units(
        &mut self,
        units: impl IntoIterator<Item = (Box<str>, Option<Vec<Exposure>>)>,
    ) {
        for (unit, state) in units {
            self.units.insert(unit, state.unwrap_or_default());
        }
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
        let Some(exposures) = self.units.get_mut(&*e.unit_id) else {
            return;
        };
        let measure = e.metric_name();
        if measure.is_empty() {
            return;
        }
        let value = e.value.unwrap_or(1.0);
        let mut dirty = false;
        for exposure in exposures.iter_mut() {
            let matches = e
                .experiment
                .as_ref()
                .is_none_or(|x| x.as_str() == &*exposure.experiment)
                && e.variant
                    .as_ref()
                    .is_none_or(|v| v.as_str() == &*exposure.variant)
                && e.timestamp_ms >= exposure.exposed_ms;
            if !matches {
                continue;
            }
            let key = admit(
                &mut self.measures,
                &mut self.interned,
                self.max_measures,
                &exposure.experiment,
                measure,
            );
            let unit = match exposure.measures.iter_mut().find(|m| m.key == key) {
                Some(unit) => unit,
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
            let before = unit.sum;
            unit.events = unit.events.saturating_add(1);
            unit.sum = finite(unit.sum + value);
            let (first, after) = (unit.events == 1, unit.sum);
            let totals = measure_mut(
                &mut self.experiments,
                &exposure.experiment,
                &exposure.variant,
                &key,
            );
            totals.units += u64::from(first);
            totals.events = totals.events.saturating_add(1);
            totals.sum = finite(totals.sum + value);
            totals.sum_squares =
                finite(totals.sum_squares + (finite(after * after) - finite(before * before)));
            self.dirty_experiments
                .insert(Arc::clone(&exposure.experiment));
            dirty = true;
        }
        if dirty {
            self.dirty_units.insert(e.unit_id.clone());
        }
    }

    /// Counts an exposure; a unit's first to this variant makes it an
    /// exposed unit.
    fn expose(&mut self, experiment: &str, variant: &str, unit: &str, at_ms: i64) {
        let exp = self.intern(experiment);
        let var = self.intern(variant);
        let exposures = self.units.entry(unit.into()).or_default();
        let first = !exposures
            .iter()
            .any(|x| x.experiment == exp && x.variant == var);
        if first {
            exposures.push(Exposure {
                experiment: Arc::clone(&exp),
                variant: Arc::clone(&var),
                exposed_ms: at_ms,
                measures: Vec::new(),
            });
            self.dirty_units.insert(unit.into());
        }
        let totals = self.variant_mut(&exp, &var);
        totals.exposures += 1;
        totals.units += u64::from(first);
    }

    fn variant_mut(&mut self, exp: &Arc<str>, variant: &str) -> &mut VariantAggregates {
        self.dirty_experiments.insert(Arc::clone(exp));
        variant_mut(&mut self.experiments, exp, variant)
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        intern(&mut self.interned, s)
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
        AggregateChanges { experiments, units }
    }

    /// Publishes what changed to readers, once it is committed, and drops
    /// the working set.
    pub fn published(&mut self, live: &LiveAggregates) {
        for key in std::mem::take(&mut self.dirty_experiments) {
            if let Some(a) = self.experiments.get(&key) {
                live.by_experiment.insert(key, Arc::new(a.clone()));
            }
        }
        self.clear_working_set();
    }

    /// Forgets the working set and what changed in it.
    fn clear_working_set(&mut self) {
        self.dirty_experiments.clear();
        self.dirty_units.clear();
        self.units.clear();
    }

    /// Publishes everything (at start).
    pub fn publish_all(&self, live: &LiveAggregates) {
        for (key, a) in &self.experiments {
            live.by_experiment
                .insert(Arc::clone(key), Arc::new(a.clone()));
        }
    }

    /// One experiment's aggregates (empty when it has none yet).
    pub fn experiment(&self, key: &str) -> ExperimentAggregates {
        self.experiments.get(key).cloned().unwrap_or_default()
    }
}

/// The measure an event of `name` counts under in `experiment`: its own
/// name while the experiment has fewer than `max` distinct measures (or
/// already counts this one), [`OTHER_MEASURE`] after that.
fn admit(
    measures: &mut HashMap<Arc<str>, HashSet<Arc<str>>>,
    interned: &mut HashSet<Arc<str>>,
    max: usize,
    experiment: &Arc<str>,
    name: &str,
) -> Arc<str> {
    let known = match measures.entry(Arc::clone(experiment)) {
        hash_map::Entry::Occupied(o) => o.into_mut(),
        hash_map::Entry::Vacant(v) => v.insert(HashSet::new()),
    };
    if let Some(key) = known.get(name) {
        return Arc::clone(key);
    }
    let counted = known.len() - usize::from(known.contains(OTHER_MEASURE));
    let key = intern(interned, if counted < max { name } else { OTHER_MEASURE });
    known.insert(Arc::clone(&key));
    key
}

/// `x`, or the nearest finite value: sums saturate at `±f64::MAX`, and a
/// NaN (which only `inf - inf` could make) counts as 0.
fn finite(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(-f64::MAX, f64::MAX)
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

fn variant_mut<'a>(
    experiments: &'a mut HashMap<Arc<str>, ExperimentAggregates>,
    exp: &Arc<str>,
    variant: &str,
) -> &'a mut VariantAggregates {
    let variants = &mut experiments.entry(Arc::clone(exp)).or_default().variants;
    if !variants.contains_key(variant) {
        variants.insert(variant.to_owned(), VariantAggregates::default());
    }
    variants
        .get_mut(variant)
        .unwrap_or_else(|| unreachable!("inserted above"))
}

fn measure_mut<'a>(
    experiments: &'a mut HashMap<Arc<str>, ExperimentAggregates>,
    exp: &Arc<str>,
    variant: &str,
    measure: &str,
) -> &'a mut MeasureAggregates {
    let measures = &mut variant_mut(experiments, exp, variant).measures;
    if !measures.contains_key(measure) {
        measures.insert(measure.to_owned(), MeasureAggregates::default());
    }
    measures
        .get_mut(measure)
        .unwrap_or_else(|| unreachable!("inserted above"))
}

/// The published aggregates readers see: one immutable snapshot per
/// experiment, replaced after each committed batch that changed it.
#[derive(Debug, Default)]
pub struct LiveAggregates {
    by_experiment: DashMap<Arc<str>, Arc<ExperimentAggregates>>,
    /// What an experiment without data gets: always the same snapshot, so
    /// readers can tell "unchanged" by pointer.
    empty: Arc<ExperimentAggregates>,
}

impl LiveAggregates {
    /// The latest committed aggregates of an experiment.
    pub fn get(&self, experiment: &str) -> Arc<ExperimentAggregates> {
        self.by_experiment
            .get(experiment)
            .map_or_else(|| Arc::clone(&self.empty), |a| Arc::clone(&a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ExperimentKey, VariantKey};
    use crate::storage::{Cf, Commit};

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
        metric.properties = serde_json::from_str(r#"{"name": "latency", "value": 4}"#).unwrap();
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
        let mut resumed = Aggregator::load(&store, usize::MAX).unwrap();
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
        let missing = agg.missing_units(events);
        let states = store.unit_states(&missing).unwrap();
        let missing: Vec<Box<str>> = missing.into_iter().map(Box::from).collect();
        agg.load_units(missing.into_iter().zip(states));
        agg.fold(events);
        store
            .commit(&Commit {
                aggregates: Some(agg.changes()),
                next_seq: 1,
                ..Commit::default()
            })
            .unwrap();
        agg.published(&LiveAggregates::default());
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
        assert!(agg.interned.len() < 10, "unadmitted names are not kept");
        // Restored state keeps the same bound.
        let mut resumed = Aggregator::load(&store, 3).unwrap();
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
        store.put_raw(Cf::Aggregates, b"exp", poisoned);
        assert!(store.aggregates().is_err());

        let loaded = Aggregator::load(&store, 10).expect("rebuilt, not refused");
        assert_eq!(loaded.experiment("exp"), written.experiment("exp"));
        assert_eq!(store.aggregates().unwrap()[0].1, written.experiment("exp"));
        assert!(!store.rebuild_pending().unwrap());

        // A rebuild cut short (a crash) is done again at the next start.
        store.start_rebuild().unwrap();
        let mut loaded = Aggregator::load(&store, 10).expect("rebuilt again");
        assert_eq!(loaded.experiment("exp"), written.experiment("exp"));

        // The rebuilt per-unit state continues like the original.
        let more = [event(6, "buy", "u2", None)];
        fold_through(&mut loaded, &store, &more);
        written.fold(&more);
        assert_eq!(loaded.experiment("exp"), written.experiment("exp"));
    }
}
