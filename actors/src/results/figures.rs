//! Each running experiment's figures, derived once and read by everything
//! that watches experiments: the monitor (significance, SRM, guardrail
//! stops), the timeline, the live stats and the alert rules.
//!
//! One task ([`spawn`]) keeps the [`Board`]: every second (and on the
//! monitor's and the timeline's turns) it derives the figures of each
//! running experiment whose snapshot or aggregates changed — units, SRM,
//! guardrails and the timeline snapshot, all from the same aggregates —
//! and, on the monitor's turn, the primary metric's statistics. It then
//! hands them to the consumer whose turn it is. Readers on other threads
//! (the alert actor) load the board without a lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::compute::{self, GuardrailCheck, MetricResults};
use super::model::{self, ModelResults};
use super::{monitor, timeline};
use crate::clock::Clock;
use crate::domain::{
    unix_ms, ExperimentAggregates, ExperimentKey, PhaseView, Principal, Status, TimelineSnapshot,
};
use crate::experiments::assignment::Compiled;
use crate::experiments::registry::{Entry, Registry};
use crate::ingest::LiveAggregates;
use crate::live::{self, Live};
use crate::stats::Srm;
use crate::storage::Store;

/// One running experiment's figures.
#[derive(Debug)]
pub struct Figures {
    /// The snapshot they were derived from.
    pub compiled: Arc<Compiled>,
    /// The aggregates they were derived from.
    pub aggregates: Arc<ExperimentAggregates>,
    /// Exposed units per variant, in the experiment's order.
    pub units: Vec<u64>,
    /// The sample-ratio check on `units`.
    pub srm: Srm,
    /// Every guardrail against every treatment.
    pub guardrails: Vec<GuardrailCheck>,
    /// The cumulative figures the timeline keeps.
    pub timeline: TimelineSnapshot,
    /// A model experiment's drift and quality, for the alert rules.
    pub model: Option<ModelResults>,
    /// The primary metric's results as of the monitor's last turn (`None`
    /// without a primary metric).
    pub primary: Option<Arc<MetricResults>>,
    /// The aggregates `primary` was derived from.
    primary_from: Arc<ExperimentAggregates>,
}

impl Figures {
    /// Derives every figure of `compiled`'s experiment from `aggregates`,
    /// the primary metric's statistics included.
    pub fn of(compiled: Arc<Compiled>, aggregates: Arc<ExperimentAggregates>) -> Self {
        let experiment = compiled.experiment();
        let viewed = aggregates.by_variant(experiment, PhaseView::All);
        let primary = compute::primary(experiment, &viewed).map(Arc::new);
        let from = Arc::clone(&aggregates);
        Self::with_primary(compiled, aggregates, primary, from)
    }

    /// The figures of `aggregates`, with the primary metric's statistics
    /// derived earlier from `primary_from`.
    fn with_primary(
        compiled: Arc<Compiled>,
        aggregates: Arc<ExperimentAggregates>,
        primary: Option<Arc<MetricResults>>,
        primary_from: Arc<ExperimentAggregates>,
    ) -> Self {
        let experiment = compiled.experiment();
        let (srm, units) = compute::sample_ratio(experiment, &aggregates);
        let viewed = aggregates.by_variant(experiment, PhaseView::All);
        let guardrails = compute::guardrails(experiment, &viewed);
        let timeline = TimelineSnapshot::of(experiment, &viewed);
        let model = model::results(experiment, &viewed);
        Self {
            model,
            compiled,
            aggregates,
            units,
            srm,
            guardrails,
            timeline,
            primary,
            primary_from,
        }
    }

    /// Whether these figures still describe `compiled` and `aggregates`
    /// (with the primary metric's statistics too, when `statistics`).
    fn is_of(
        &self,
        compiled: &Arc<Compiled>,
        aggregates: &Arc<ExperimentAggregates>,
        statistics: bool,
    ) -> bool {
        Arc::ptr_eq(&self.compiled, compiled)
            && Arc::ptr_eq(&self.aggregates, aggregates)
            && (!statistics || Arc::ptr_eq(&self.primary_from, aggregates))
    }
}

/// Every running experiment's entry and figures.
pub type Figured = BTreeMap<ExperimentKey, (Entry, Arc<Figures>)>;

/// The latest figures of every running experiment.
#[derive(Default)]
pub struct Board {
    figures: ArcSwap<Figured>,
}

impl Board {
    /// Every running experiment's entry and figures as of the last refresh.
    pub fn load(&self) -> Arc<Figured> {
        self.figures.load_full()
    }

    /// Derives the figures of every running experiment whose snapshot or
    /// aggregates changed since the last refresh, and the primary metric's
    /// statistics too when `statistics` (the monitor's turn) or when the
    /// experiment itself changed. Returns the board.
    fn refresh(
        &self,
        registry: &Registry,
        aggregates: &LiveAggregates,
        statistics: bool,
    ) -> Arc<Figured> {
        let last = self.figures.load();
        let mut next = BTreeMap::new();
        for (key, entry) in registry.load().iter() {
            let compiled = entry.slot.snapshot();
            if compiled.experiment().status != Status::Running {
                continue;
            }
            let now = aggregates.get(key.as_str());
            let figures = match last.get(key) {
                Some((_, f)) if f.is_of(&compiled, &now, statistics) => Arc::clone(f),
                Some((_, f)) if !statistics && Arc::ptr_eq(&f.compiled, &compiled) => {
                    Arc::new(Figures::with_primary(
                        compiled,
                        now,
                        f.primary.clone(),
                        Arc::clone(&f.primary_from),
                    ))
                }
                _ => Arc::new(Figures::of(compiled, now)),
            };
            next.insert(key.clone(), (entry.clone(), figures));
        }
        let next = Arc::new(next);
        self.figures.store(Arc::clone(&next));
        next
    }
}

#[cfg(test)]
impl Board {
    /// Puts `figures` on the board as if a refresh had derived them.
    pub(crate) fn publish(&self, figures: Figured) {
        self.figures.store(Arc::new(figures));
    }
}

/// How often each consumer wants the figures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cadence {
    /// The monitor's checks (`results.check_interval_ms`).
    pub monitor: Duration,
    /// The timeline's records (`results.timeline_interval_s`).
    pub timeline: Duration,
    /// The live stats messages, and the board's refresh for the alert
    /// rules (once a second).
    pub stats: Duration,
}

/// What the ticker feeds.
pub(crate) struct Consumers {
    pub board: Arc<Board>,
    pub registry: Arc<Registry>,
    pub aggregates: Arc<LiveAggregates>,
    pub live: Arc<Live>,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub max_stats_bytes: usize,
    /// Who the monitor's changes (a bandit's updates) are recorded as made
    /// by: abacus itself, in the engine's project.
    pub system: Principal,
    /// Whether this node runs the monitor now: always on a single node; in
    /// cluster mode while it holds the monitor's lease.
    pub monitors: Arc<std::sync::atomic::AtomicBool>,
}

/// Keeps the board and feeds each consumer on its own interval, for as
/// long as the actix system runs.
pub(crate) fn spawn(cadence: Cadence, to: Consumers) {
    let interval = |every: Duration| {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    };
    actix::spawn(async move {
        let (mut monitor, mut stats, mut timeline) = (
            interval(cadence.monitor),
            interval(cadence.stats),
            interval(cadence.timeline),
        );
        let mut recorder = timeline::Recorder::default();
        let mut before: HashMap<ExperimentKey, Arc<ExperimentAggregates>> = HashMap::new();
        loop {
            tokio::select! {
                _ = monitor.tick() => {
                    if !to.monitors.load(std::sync::atomic::Ordering::Acquire) {
                        continue;
                    }
                    for (entry, figures) in to.board.refresh(&to.registry, &to.aggregates, true).values() {
                        monitor::check(entry, figures, to.clock.now(), &to.system);
                    }
                }
                _ = stats.tick() => {
                    let board = to.board.refresh(&to.registry, &to.aggregates, false);
                    if to.live.clients() == 0 {
                        before.clear();
                        continue;
                    }
                    for (key, (_, figures)) in board.iter() {
                        let was = before.get(key).cloned().unwrap_or_default();
                        let data = live::stats_message(
                            figures.compiled.experiment(),
                            &figures.aggregates,
                            &was,
                            to.max_stats_bytes,
                        );
                        to.live.publish("stats", Some(key.as_str()), &data);
                        before.insert(key.clone(), Arc::clone(&figures.aggregates));
                    }
                }
                _ = timeline.tick() => {
                    let board = to.board.refresh(&to.registry, &to.aggregates, false);
                    recorder.record(&board, unix_ms(to.clock.now()), &to.store);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;
    use crate::clock::SystemClock;
    use crate::domain::{Action, Event, Experiment, ExperimentIn, VariantKey};
    use crate::ingest::aggregator::Aggregator;

    fn experiment(key: &str, start: bool) -> Experiment {
        let input: ExperimentIn = serde_json::from_value(json!({
            "key": key, "name": key,
            "variants": [{"key": "control", "weight": 1}, {"key": "b", "weight": 1}],
            "metrics": [{"key": "exposure", "kind": "binomial"}],
            "primary_metric": "exposure",
        }))
        .expect("input");
        let draft = Experiment::create(input, OffsetDateTime::now_utc()).expect("draft");
        if start {
            draft
                .transitioned(Action::Start, None, OffsetDateTime::now_utc())
                .expect("running")
        } else {
            draft
        }
    }

    #[actix::test]
    async fn figures_are_derived_once_until_the_aggregates_change() {
        let (_dir, store) = Store::temporary();
        let registry = Registry::default();
        for (key, start) in [("on", true), ("draft", false)] {
            registry.start_local(experiment(key, start), store.clone(), Arc::new(SystemClock));
        }
        let live = LiveAggregates::default();
        let board = Board::default();

        board.refresh(&registry, &live, true);
        let first = board.load();
        assert_eq!(
            first.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["on"],
            "only running experiments have figures"
        );
        board.refresh(&registry, &live, true);
        let (_, a) = &first["on"];
        let (_, b) = &board.load()["on"];
        assert!(
            Arc::ptr_eq(a, b),
            "unchanged: the same figures, not derived again"
        );

        let mut aggregator = Aggregator::new(10);
        aggregator.fold(&[Event {
            experiment: Some(ExperimentKey::try_from("on").unwrap()),
            variant: Some(VariantKey::try_from("b").unwrap()),
            ..Event::sample("exposure", "u1")
        }]);
        aggregator.published(&live);
        board.refresh(&registry, &live, false);
        let (_, c) = &board.load()["on"];
        assert!(!Arc::ptr_eq(a, c), "new aggregates: derived again");
        assert_eq!(c.units, [0, 1]);
        assert_eq!(c.timeline.variants["b"].units, 1);
        assert!(
            a.primary.is_some()
                && Arc::ptr_eq(a.primary.as_ref().unwrap(), c.primary.as_ref().unwrap()),
            "between monitor turns the primary metric's statistics are carried over"
        );
        assert_eq!(c.primary.as_ref().unwrap().variants[1].units, 0);
        board.refresh(&registry, &live, true);
        let (_, d) = &board.load()["on"];
        assert_eq!(
            d.primary.as_ref().unwrap().variants[1].units,
            1,
            "the monitor's turn derives them"
        );
        board.refresh(&registry, &live, true);
        let (_, e) = &board.load()["on"];
        assert!(Arc::ptr_eq(d, e), "and only once");
    }
}
