//! The analytics answers, built from merged [`Bucket`]s.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::domain::{Bucket, Sketch};

/// `GET /v1/analytics/ctr`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CtrReport {
    /// Impression events.
    pub impressions: u64,
    /// Click events.
    pub clicks: u64,
    /// clicks / impressions; `null` without impressions.
    pub ctr: Option<f64>,
    /// The same per variant (`""`: events without one).
    pub variants: Vec<VariantCtr>,
}

/// One variant's CTR.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VariantCtr {
    /// Variant key.
    pub variant: String,
    /// Impression events.
    pub impressions: u64,
    /// Click events.
    pub clicks: u64,
    /// clicks / impressions.
    pub ctr: Option<f64>,
}

/// A distribution's summary; percentiles within
/// [`SKETCH_RELATIVE_ERROR`](super::SKETCH_RELATIVE_ERROR).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Distribution {
    /// Values.
    pub count: u64,
    /// Their mean (exact).
    pub mean: Option<f64>,
    /// Smallest (exact).
    pub min: Option<f64>,
    /// Largest (exact).
    pub max: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

impl Distribution {
    /// The summary of a sketch (or of nothing).
    pub fn of(sketch: Option<&Sketch>) -> Self {
        let count = sketch.map_or(0, Sketch::count);
        let q = |q| sketch.and_then(|s| s.quantile(q));
        Self {
            count,
            mean: sketch.filter(|_| count > 0).map(|s| s.sum() / count as f64),
            min: sketch.and_then(Sketch::min),
            max: sketch.and_then(Sketch::max),
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
        }
    }
}

/// `GET /v1/analytics/ranks`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RankReport {
    /// Clicks that carried a rank.
    pub clicks: u64,
    /// Rank → clicks (exact).
    pub distribution: BTreeMap<u64, u64>,
    /// Mean clicked rank.
    pub mean: Option<f64>,
    /// Median clicked rank (the rank at floor(0.5 (n - 1))).
    pub median: Option<u64>,
    /// Smallest.
    pub min: Option<u64>,
    /// Largest.
    pub max: Option<u64>,
}

/// `GET /v1/analytics/engagement`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EngagementReport {
    /// Dwell time (ms) over all actions.
    pub dwell_time_ms: Distribution,
    /// Per action (`""`: none given).
    pub actions: Vec<ActionDwell>,
}

/// Dwell time of one action.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ActionDwell {
    /// The action.
    pub action: String,
    /// Its dwell times (ms).
    pub dwell_time_ms: Distribution,
}

/// `GET /v1/units/{unit_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct UnitSummary {
    /// The unit.
    pub unit_id: String,
    /// Its first exposures: experiment → variant.
    pub assignments: BTreeMap<String, String>,
    /// Stored events by type.
    pub events: BTreeMap<String, u64>,
    /// Impression events.
    pub impressions: u64,
    /// Click events.
    pub clicks: u64,
    /// clicks / impressions.
    pub ctr: Option<f64>,
    /// Mean dwell time of its engagements (ms).
    pub mean_dwell_ms: Option<f64>,
}

/// Everything merged into one bucket.
pub fn total<'a>(buckets: impl IntoIterator<Item = &'a Bucket>) -> Bucket {
    let mut all = Bucket::default();
    for b in buckets {
        all.merge(b);
    }
    all
}

/// clicks / impressions, `None` without impressions.
pub fn ctr(b: &Bucket) -> Option<f64> {
    (b.impressions > 0).then(|| b.clicks as f64 / b.impressions as f64)
}

impl CtrReport {
    /// From per-variant buckets.
    pub fn of(by_variant: &BTreeMap<String, Bucket>) -> Self {
        let all = total(by_variant.values());
        Self {
            impressions: all.impressions,
            clicks: all.clicks,
            ctr: ctr(&all),
            variants: by_variant
                .iter()
                .map(|(variant, b)| VariantCtr {
                    variant: variant.clone(),
                    impressions: b.impressions,
                    clicks: b.clicks,
                    ctr: ctr(b),
                })
                .collect(),
        }
    }
}

impl RankReport {
    /// From a merged bucket.
    pub fn of(b: &Bucket) -> Self {
        let clicks: u64 = b.ranks.values().sum();
        let weighted: f64 = b.ranks.iter().map(|(r, n)| *r as f64 * *n as f64).sum();
        let median_rank = clicks.saturating_sub(1) / 2;
        let mut seen = 0;
        let median = b.ranks.iter().find_map(|(r, n)| {
            seen += n;
            (seen > median_rank).then_some(*r)
        });
        Self {
            clicks,
            distribution: b.ranks.clone(),
            mean: (clicks > 0).then(|| weighted / clicks as f64),
            median,
            min: b.ranks.keys().next().copied(),
            max: b.ranks.keys().next_back().copied(),
        }
    }
}

impl EngagementReport {
    /// From a merged bucket.
    pub fn of(b: &Bucket) -> Self {
        let mut all: Option<Sketch> = None;
        for s in b.dwell.values() {
            match &mut all {
                Some(a) => a.merge(s),
                None => all = Some(s.clone()),
            }
        }
        Self {
            dwell_time_ms: Distribution::of(all.as_ref()),
            actions: b
                .dwell
                .iter()
                .map(|(action, s)| ActionDwell {
                    action: action.clone(),
                    dwell_time_ms: Distribution::of(Some(s)),
                })
                .collect(),
        }
    }
}

/// `GET /v1/experiments/{key}/compare`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CompareReport {
    /// The experiment.
    pub experiment: String,
    /// The metric that picks the winner.
    pub primary_metric: Option<String>,
    /// Side by side, the control first.
    pub variants: Vec<VariantSummary>,
    /// The treatment whose primary metric is significantly better than the
    /// control by the corrected always-valid p-value (the best one if
    /// several), the control if every treatment is significantly worse, or
    /// `null` while that is undecided.
    pub winner: Option<String>,
}

/// One variant side by side with the others.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VariantSummary {
    /// Variant key.
    pub variant: String,
    /// Exposed units.
    pub units: u64,
    /// Impression events.
    pub impressions: u64,
    /// Click events.
    pub clicks: u64,
    /// clicks / impressions.
    pub ctr: Option<f64>,
    /// Exposed units with a `conversion` / exposed units.
    pub conversion_rate: Option<f64>,
    /// Mean dwell time of engagements (ms).
    pub mean_dwell_ms: Option<f64>,
    /// Response times of impressions and clicks (ms).
    pub response_time_ms: Distribution,
}

impl VariantSummary {
    /// From the variant's analytics bucket and its exposed and converted units.
    pub fn of(variant: &str, b: &Bucket, units: u64, converted: u64) -> Self {
        let engagement = EngagementReport::of(b);
        Self {
            variant: variant.to_owned(),
            units,
            impressions: b.impressions,
            clicks: b.clicks,
            ctr: ctr(b),
            conversion_rate: (units > 0).then(|| converted as f64 / units as f64),
            mean_dwell_ms: engagement.dwell_time_ms.mean,
            response_time_ms: Distribution::of(b.response_times.as_ref()),
        }
    }
}
