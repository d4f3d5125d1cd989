//! Each running experiment's figures, derived once per tick and read by
//! everything that watches experiments: the monitor (significance, SRM,
//! guardrail stops), the timeline, the live stats and the alert rules.
//!
//! One task ([`spawn`]) walks the running experiments once per tick,
//! derives their [`Figures`] (again only when the experiment or its
//! aggregates changed since the last tick), publishes them on the
//! [`Board`], and hands them to each consumer at its own cadence. Readers
//! on other threads (the alert actor) load the board without a lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::compute::{self, ExperimentResults};
use super::{monitor, timeline};
use crate::clock::Clock;
use crate::domain::{unix_ms, ExperimentAggregates, ExperimentKey, Status, TimelineSnapshot};
use crate::experiments::assignment::Compiled;
use crate::experiments::registry::{Entry, Registry};
use crate::ingest::LiveAggregates;
use crate::live::{self, Live};
use crate::storage::Store;

/// One running experiment's figures at one tick.
#[derive(Debug)]
pub struct Figures {
    /// The snapshot they were derived from.
    pub compiled: Arc<Compiled>,
    /// The aggregates they were derived from.
    pub aggregates: Arc<ExperimentAggregates>,
    /// Exposed units per variant, in the experiment's order.
    pub units: Vec<u64>,
    /// Results of the primary metric (every metric without one), with the
    /// SRM check and every guardrail against every treatment, as of the
    /// last monitor tick: the statistics are derived at the monitor's
    /// cadence, not every tick.
    pub results: Arc<ExperimentResults>,
    /// The cumulative figures the timeline keeps.
    pub timeline: TimelineSnapshot,
    /// The aggregates `results` were derived from.
    results_from: Arc<ExperimentAggregates>,
}

impl Figures {
    /// Derives the figures of `compiled`'s experiment from `aggregates`,
    /// the statistics included.
    pub fn of(compiled: Arc<Compiled>, aggregates: Arc<ExperimentAggregates>) -> Self {
        let primary = compiled.experiment().primary_metric.as_ref();
        let results = compute::compute(
            compiled.experiment(),
            &aggregates,
            primary.map(|m| m.as_str()),
        );
        Self::with_results(compiled, aggregates, Arc::new(results), None)
    }

    /// The figures of `aggregates` with statistics derived earlier (from
    /// `results_from`, or from `aggregates` themselves when `None`).
    fn with_results(
        compiled: Arc<Compiled>,
        aggregates: Arc<ExperimentAggregates>,
        results: Arc<ExperimentResults>,
        results_from: Option<Arc<ExperimentAggregates>>,
    ) -> Self {
        let experiment = compiled.experiment();
        let units = experiment
            .variants
            .iter()
            .map(|v| {
                aggregates
                    .variants
                    .get(v.key.as_str())
                    .map_or(0, |a| a.units)
            })
            .collect();
        let timeline = TimelineSnapshot::of(experiment, &aggregates);
        Self {
            results_from: results_from.unwrap_or_else(|| Arc::clone(&aggregates)),
            compiled,
            aggregates,
            units,
            results,
            timeline,
        }
    }

    /// Whether these figures still describe `compiled` and `aggregates`
    /// (with statistics derived from them, when `statistics`).
    fn is_of(
        &self,
        compiled: &Arc<Compiled>,
        aggregates: &Arc<ExperimentAggregates>,
        statistics: bool,
    ) -> bool {
        Arc::ptr_eq(&self.compiled, compiled)
            && Arc::ptr_eq(&self.aggregates, aggregates)
            && (!statistics || Arc::ptr_eq(&self.results_from, aggregates))
    }
}

/// The latest figures of every running experiment.
#[derive(Default)]
pub struct Board {
    figures: ArcSwap<BTreeMap<ExperimentKey, (Entry, Arc<Figures>)>>,
}

impl Board {
    /// Every running experiment's entry and figures as of the last tick.
    pub fn load(&self) -> Arc<BTreeMap<ExperimentKey, (Entry, Arc<Figures>)>> {
        self.figures.load_full()
    }

    /// Derives this tick's figures, reusing the last tick's for every
    /// experiment whose snapshot and aggregates did not change. The
    /// statistics are derived again only when `statistics` (the monitor's
    /// turn) or when the experiment itself changed.
    fn refresh(&self, registry: &Registry, aggregates: &LiveAggregates, statistics: bool) {
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
                    Arc::new(Figures::with_results(
                        compiled,
                        now,
                        Arc::clone(&f.results),
                        Some(Arc::clone(&f.results_from)),
                    ))
                }
                _ => Arc::new(Figures::of(compiled, now)),
            };
            next.insert(key.clone(), (entry.clone(), figures));
        }
        self.figures.store(Arc::new(next));
    }
}

#[cfg(test)]
impl Board {
    /// Puts `figures` on the board as if a tick had derived them.
    pub(crate) fn publish(&self, figures: BTreeMap<ExperimentKey, (Entry, Arc<Figures>)>) {
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
    /// The live stats messages (once a second).
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
}

/// Derives the figures every tick (the shortest cadence) and fans them
/// out, for as long as the actix system runs.
pub(crate) fn spawn(cadence: Cadence, to: Consumers) {
    let tick = cadence.monitor.min(cadence.stats).min(cadence.timeline);
    actix::spawn(async move {
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut monitored, mut recorded, mut streamed) = (None, None, None);
        let mut timeline = timeline::Recorder::default();
        let mut before: HashMap<ExperimentKey, Arc<ExperimentAggregates>> = HashMap::new();
        loop {
            let now = ticks.tick().await;
            let monitor = due(&mut monitored, now, cadence.monitor);
            to.board.refresh(&to.registry, &to.aggregates, monitor);
            let board = to.board.load();
            if monitor {
                for (entry, figures) in board.values() {
                    monitor::check(entry, figures);
                }
            }
            if due(&mut streamed, now, cadence.stats) {
                if to.live.clients() == 0 {
                    before.clear();
                } else {
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
            }
            if due(&mut recorded, now, cadence.timeline) {
                let at = unix_ms(to.clock.now());
                timeline.record(&board, at, &to.store).await;
            }
        }
    });
}

/// Whether work done `every` is due at `now` (at once the first time);
/// if so, remembers `now` as its last run.
fn due(last: &mut Option<Instant>, now: Instant, every: Duration) -> bool {
    let due = last.is_none_or(|last| now.duration_since(last) >= every);
    if due {
        *last = Some(now);
    }
    due
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
            registry.start(experiment(key, start), store.clone(), Arc::new(SystemClock));
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
            Arc::ptr_eq(&a.results, &c.results),
            "between monitor ticks the statistics are carried over"
        );
        assert_eq!(c.results.units, 0);
        board.refresh(&registry, &live, true);
        let (_, d) = &board.load()["on"];
        assert_eq!(d.results.units, 1, "the monitor's tick derives them");
        board.refresh(&registry, &live, true);
        let (_, e) = &board.load()["on"];
        assert!(Arc::ptr_eq(d, e), "and only once");
    }

    #[test]
    fn work_is_due_at_once_then_every_period() {
        let start = Instant::now();
        let mut last = None;
        let every = Duration::from_secs(5);
        assert!(due(&mut last, start, every));
        assert!(!due(&mut last, start + Duration::from_secs(4), every));
        assert!(due(&mut last, start + Duration::from_secs(5), every));
        assert!(!due(&mut last, start + Duration::from_secs(9), every));
    }
}
