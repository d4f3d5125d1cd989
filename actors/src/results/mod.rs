//! Results: what the experiments' data says.
//!
//! - [`compute`]: an experiment's results from its aggregates, guardrail
//!   checks, the winner;
//! - [`analytics`]: click analytics, one unit's summary, the comparison;
//! - [`figures`]: each running experiment's figures, derived once per
//!   tick and fanned out to the monitor, the timeline, the live stats and
//!   the alert rules;
//! - [`monitor`]: the check for significance, SRM and guardrail stops;
//! - [`timeline`]: the record of cumulative figures.

pub mod analytics;
pub mod bandit;
pub mod compute;
pub mod figures;
pub mod model;
mod monitor;
mod timeline;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use self::analytics::{CompareReport, EngagementReport, UnitSummary, VariantSummary};
use self::compute::ExperimentResults;
use self::model::{LivePrediction, LivePredictions};
use crate::clock::Clock;
use crate::domain::{
    unix_ms, Bucket, Event, EventType, Experiment, ExperimentAggregates, PhaseView,
    TimelineSnapshot, VariantPoint,
};
use crate::experiments::assignment::Compiled;
use crate::experiments::registry::Registry;
use crate::ingest::aggregator::Aggregator;
use crate::ingest::{IngestLimits, LiveAggregates};
use crate::storage::{blocking, AnalyticsFilter, Store};
use crate::{Error, Result};

/// Most events of one unit the live predictions view reads for outcomes.
const OUTCOME_SCAN: usize = 1_000;

/// `GET /v1/experiments/{key}/timeline`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Timeline {
    /// The experiment.
    pub experiment: String,
    /// The metric whose value is given (the primary one by default).
    pub metric: Option<String>,
    /// Oldest first; the last one is now.
    pub points: Vec<TimelinePoint>,
}

/// The cumulative figures at one moment.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TimelinePoint {
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Per variant, the control first.
    pub variants: Vec<VariantPoint>,
}

/// The results service: reads the live aggregates and the store, never
/// writes.
pub struct Results {
    registry: Arc<Registry>,
    aggregates: Arc<LiveAggregates>,
    store: Store,
    clock: Arc<dyn Clock>,
    /// The ingest bounds a rebuild of aggregates keeps to.
    limits: IngestLimits,
}

impl Results {
    /// The service over the experiments in `registry` and the aggregates
    /// the writer publishes into `aggregates`.
    pub(crate) fn new(
        registry: Arc<Registry>,
        aggregates: Arc<LiveAggregates>,
        store: Store,
        clock: Arc<dyn Clock>,
        limits: IngestLimits,
    ) -> Self {
        Self {
            registry,
            aggregates,
            store,
            clock,
            limits,
        }
    }

    /// The experiment's aggregates as of the last committed batch.
    pub fn aggregates(&self, key: &str) -> Result<Arc<ExperimentAggregates>> {
        self.snapshot(key)?;
        Ok(self.aggregates.get(key))
    }

    /// The experiment's aggregates recomputed from its stored events (and
    /// the events that name no experiment) with `from_ms <= timestamp <
    /// to_ms`, folded in commit order, counting the measure names the live
    /// aggregates count. Reads them all into memory: for an
    /// operator's check or a time-window query, not a hot path. Over all
    /// time it equals [`Results::aggregates`] unless retention has removed
    /// events, or a quantile metric's live sketch started after some (see
    /// docs/statistics.md, "Quantile metrics").
    pub async fn rebuilt_aggregates(
        &self,
        key: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<ExperimentAggregates> {
        let compiled = self.snapshot(key)?;
        let experiment = compiled.experiment().key.clone();
        let store = self.store.clone();
        let (max_measures, max_covariate_events, max_quantile_bins) = (
            self.limits.max_measures,
            self.limits.max_covariate_events,
            self.limits.max_quantile_bins,
        );
        // Which names an experiment counts (at most `max_measures`) is
        // settled as they first arrive, by whichever partition sees them
        // first: the rebuild counts the names the live aggregates count.
        let counted = self.aggregates.get(experiment.as_str());
        let derivations = compiled.experiment().derivations();
        blocking(move || {
            let mut events = Vec::new();
            for scope in [Some(&experiment), None] {
                let mut cursor = None;
                loop {
                    let (page, next) = store.events(
                        scope,
                        from_ms,
                        to_ms,
                        cursor.as_deref(),
                        10_000,
                        usize::MAX,
                    )?;
                    events.extend(page);
                    match next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
            }
            events.sort_unstable_by_key(|e| e.seq);
            let mut aggregator =
                Aggregator::counting(max_measures, experiment.as_str(), &counted, derivations);
            aggregator.bound_sketches(max_quantile_bins);
            // Covariates count the events committed before the window's.
            let first = events.first().map_or(u64::MAX, |e| e.seq);
            aggregator.load_histories(&events, |unit, from, to| {
                let mut earlier = store.unit_events(unit, from, to, max_covariate_events)?;
                earlier.retain(|e| e.seq < first);
                Ok(earlier)
            })?;
            // Outcomes join the predictions made inside the window (the
            // open ones of the store are today's, not the window's).
            aggregator.load_joins(&events, |ids| Ok(vec![None; ids.len()]))?;
            aggregator.fold(&events);
            Ok(aggregator.experiment(experiment.as_str()))
        })
        .await
    }

    /// Results for one metric (all the experiment's metrics when `None`),
    /// from the live aggregates, or for units exposed and events within
    /// `window` (from, to in ms) by folding the stored events of that
    /// window, over the phases of `view`.
    pub async fn results(
        &self,
        key: &str,
        metric: Option<&str>,
        window: Option<(i64, i64)>,
        view: PhaseView,
    ) -> Result<ExperimentResults> {
        let compiled = self.snapshot(key)?;
        let experiment = compiled.experiment();
        if let Some(metric) = metric {
            known_metric(experiment, metric)?;
        }
        let aggregates = match window {
            None => self.aggregates.get(key),
            Some((from, to)) => Arc::new(self.rebuilt_aggregates(key, from, to).await?),
        };
        Ok(compute::compute(experiment, &aggregates, metric, view))
    }

    /// A holdout's results: its metrics for the units it holds out against
    /// the others its experiments served, from the live aggregates (see
    /// `domain/holdout.rs`).
    pub fn holdout(
        &self,
        holdout: &crate::domain::Holdout,
        metric: Option<&str>,
        view: PhaseView,
    ) -> Result<ExperimentResults> {
        let experiment = holdout.as_experiment()?;
        if let Some(metric) = metric {
            known_metric(&experiment, metric)?;
        }
        let aggregates = self.aggregates.get(holdout.key.as_str());
        Ok(compute::compute(&experiment, &aggregates, metric, view))
    }

    /// The experiment's cumulative figures over time for `metric` (the
    /// primary metric when `None`), thinned to at most `max_points`, ending
    /// with the figures now.
    pub async fn timeline(
        &self,
        key: &str,
        metric: Option<&str>,
        max_points: usize,
    ) -> Result<Timeline> {
        let compiled = self.snapshot(key)?;
        let experiment = compiled.experiment();
        let metric = match metric {
            Some(m) => Some(known_metric(experiment, m)?.to_owned()),
            None => experiment.primary_metric.as_ref().map(ToString::to_string),
        };
        let (store, owned) = (self.store.clone(), key.to_owned());
        let mut stored = blocking(move || store.timeline(&owned)).await?;
        stored.push((
            unix_ms(self.clock.now()),
            TimelineSnapshot::of(
                experiment,
                &self
                    .aggregates
                    .get(key)
                    .by_variant(experiment, PhaseView::All),
            ),
        ));
        let step = stored.len().div_ceil(max_points.max(2) - 1).max(1);
        let last = stored.len() - 1;
        let points = stored
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0 || *i == last)
            .map(|(_, (at, snapshot))| TimelinePoint {
                at_ms: *at,
                variants: snapshot.values(experiment, metric.as_deref()),
            })
            .collect();
        Ok(Timeline {
            experiment: key.to_owned(),
            metric,
            points,
        })
    }

    /// Analytics buckets the filter covers, merged per variant.
    pub async fn analytics(&self, filter: AnalyticsFilter) -> Result<BTreeMap<String, Bucket>> {
        if let Some(key) = &filter.experiment {
            self.snapshot(key)?;
        } else if filter.variant.is_some() {
            return Err(Error::invalid(
                "variant",
                "a variant filter needs experiment",
            ));
        }
        let store = self.store.clone();
        blocking(move || store.analytics(&filter)).await
    }

    /// One unit: its first exposures, and what its stored events add up to.
    pub async fn unit_summary(&self, unit: &str) -> Result<UnitSummary> {
        let store = self.store.clone();
        let registry = Arc::clone(&self.registry);
        let owned = unit.to_owned();
        let (assignments, events, bucket) = blocking(move || {
            let assignments = registry
                .first_exposures(&store, &owned)?
                .into_iter()
                .collect();
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let mut bucket = Bucket::default();
            for e in store.unit_events(&owned, 0, i64::MAX, 100_000)? {
                *counts.entry(e.kind.as_str().to_owned()).or_default() += 1;
                bucket.add(&e);
            }
            Ok((assignments, counts, bucket))
        })
        .await?;
        Ok(UnitSummary {
            unit_id: unit.to_owned(),
            assignments,
            events,
            impressions: bucket.impressions,
            clicks: bucket.clicks,
            ctr: analytics::ctr(&bucket),
            mean_dwell_ms: EngagementReport::of(&bucket).dwell_time_ms.mean,
        })
    }

    /// The variants side by side, and the winner by the primary metric.
    pub async fn compare(&self, key: &str) -> Result<CompareReport> {
        let compiled = self.snapshot(key)?;
        let experiment = compiled.experiment();
        let kept = self.aggregates.get(key);
        let aggregates = kept.by_variant(experiment, PhaseView::All);
        let buckets = self
            .analytics(AnalyticsFilter {
                experiment: Some(key.to_owned()),
                ..AnalyticsFilter::default()
            })
            .await?;
        let empty = Bucket::default();
        let variants = experiment
            .variants
            .iter()
            .map(|v| {
                let a = aggregates.variants.get(v.key.as_str());
                let converted = a
                    .and_then(|a| a.measures.get("conversion"))
                    .map_or(0, |m| m.units);
                let bucket = buckets.get(v.key.as_str()).unwrap_or(&empty);
                VariantSummary::of(v.key.as_str(), bucket, a.map_or(0, |a| a.units), converted)
            })
            .collect();
        let winner = experiment.primary_metric.as_ref().and_then(|metric| {
            let results =
                compute::compute(experiment, &kept, Some(metric.as_str()), PhaseView::All);
            compute::winner(experiment, &results.metrics.first()?.comparisons)
        });
        Ok(CompareReport {
            experiment: experiment.key.to_string(),
            primary_metric: experiment.primary_metric.as_ref().map(ToString::to_string),
            variants,
            winner,
        })
    }

    /// An experiment's newest predictions (at most `limit`, among its
    /// newest `max_scanned` events), newest first, each with its outcome:
    /// in a model experiment, the first with its id within the join window
    /// among the unit's next [`OUTCOME_SCAN`] events (nothing joins them in
    /// another).
    pub async fn predictions(
        &self,
        key: &str,
        limit: usize,
        max_scanned: usize,
    ) -> Result<LivePredictions> {
        let compiled = self.snapshot(key)?;
        let experiment = compiled.experiment();
        let window = (experiment.model.as_ref()).map(|m| m.tracking(None).join_window_ms);
        let (store, key) = (self.store.clone(), experiment.key.clone());
        blocking(move || {
            let newest = store.newest_events(&key, &EventType::Prediction, limit, max_scanned)?;
            // Each unit's events from its first listed prediction to the end
            // of its last one's join window, read once.
            let mut spans: HashMap<&str, (i64, i64)> = HashMap::new();
            for p in newest.iter().filter(|_| window.is_some()) {
                let to = p.timestamp_ms.saturating_add(window.unwrap_or(0) + 1);
                let span = spans.entry(&p.unit_id).or_insert((p.timestamp_ms, to));
                *span = (span.0.min(p.timestamp_ms), span.1.max(to));
            }
            let mut later: HashMap<&str, Vec<Event>> = HashMap::new();
            for (unit, (from, to)) in spans {
                let mut events = store.unit_events(unit, from, to, OUTCOME_SCAN)?;
                events.retain(|e| e.kind == EventType::Outcome);
                events.sort_by_key(|e| e.seq);
                later.insert(unit, events);
            }
            let predictions = newest
                .iter()
                .filter_map(|p| {
                    let outcomes = later.get(&*p.unit_id).map_or(&[][..], Vec::as_slice);
                    LivePrediction::of(p, outcomes, window.unwrap_or(0))
                })
                .collect();
            Ok(LivePredictions {
                experiment: key.to_string(),
                predictions,
            })
        })
        .await
    }

    fn snapshot(&self, key: &str) -> Result<Arc<Compiled>> {
        Ok(self.registry.entry(key)?.slot.snapshot())
    }
}

/// `metric` if it is one of the experiment's metrics, else a 422 naming it.
fn known_metric<'m>(experiment: &Experiment, metric: &'m str) -> Result<&'m str> {
    if experiment
        .analysed_metrics()
        .iter()
        .any(|m| m.key.as_str() == metric)
    {
        Ok(metric)
    } else {
        Err(Error::invalid(
            "metric",
            format!("'{metric}' is not a metric of '{}'", experiment.key),
        ))
    }
}
