//! Multi-armed bandits: an experiment whose weights follow its primary
//! metric (`docs/assignment.md`, "Bandits").
//!
//! A bandit starts with an equal split and keeps it until every arm has
//! `burn_in_units` exposed units. From then on, every
//! `update_interval_s`, the weights become each arm's probability of being
//! the best by Thompson sampling (see `stats/bandit.rs`), with a
//! `floor` under every arm, and each new split is a new
//! [phase](super::Phase): units already exposed keep their arm, and the
//! results weigh each phase by its share of the units, which corrects them
//! for the adaptive allocation.

use serde::{Deserialize, Serialize};

use super::{Experiment, MetricKind};
use crate::{Error, Result};

crate::objects_only!(serialize: BanditSpec);

/// Least burn-in per arm.
pub const MIN_BURN_IN_UNITS: u64 = 10;
/// Most burn-in per arm.
pub const MAX_BURN_IN_UNITS: u64 = 1_000_000;
/// Highest floor: an arm's weight never has to be more than this.
pub const MAX_FLOOR: f64 = 0.2;
/// Longest interval between updates: a week.
pub const MAX_UPDATE_INTERVAL_S: u64 = 7 * 86_400;

/// How an experiment's weights are set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// As configured; they change only by a patch.
    #[default]
    Fixed,
    /// By Thompson sampling on the primary metric.
    Bandit,
}

impl Allocation {
    /// Whether this is the default, which the API leaves out.
    pub fn is_fixed(&self) -> bool {
        *self == Allocation::Fixed
    }
}

/// A bandit's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct BanditSpec {
    /// Exposed units every arm must have before the first update
    /// (10-1,000,000, default 100); the split is equal until then.
    #[serde(default = "default_burn_in")]
    #[schema(minimum = 10, maximum = 1_000_000)]
    pub burn_in_units: u64,
    /// The least weight of any arm (0-0.2 and at most 1 / arms, default
    /// 0.01), so no arm stops being measured.
    #[serde(default = "default_floor")]
    #[schema(minimum = 0.0, maximum = 0.2)]
    pub floor: f64,
    /// Seconds between updates (1-604,800, default 86,400: daily).
    #[serde(default = "default_interval")]
    #[schema(minimum = 1, maximum = 604_800)]
    pub update_interval_s: u64,
}

impl Default for BanditSpec {
    fn default() -> Self {
        Self {
            burn_in_units: default_burn_in(),
            floor: default_floor(),
            update_interval_s: default_interval(),
        }
    }
}

fn default_burn_in() -> u64 {
    100
}

fn default_floor() -> f64 {
    0.01
}

fn default_interval() -> u64 {
    86_400
}

impl BanditSpec {
    /// The rules of a bandit of `experiment`.
    pub(super) fn check(&self, experiment: &Experiment) -> Result<()> {
        if !(MIN_BURN_IN_UNITS..=MAX_BURN_IN_UNITS).contains(&self.burn_in_units) {
            return Err(Error::invalid(
                "bandit.burn_in_units",
                format!("burn_in_units must be {MIN_BURN_IN_UNITS} to {MAX_BURN_IN_UNITS}"),
            ));
        }
        let arms = experiment.variants.len() as f64;
        if !(self.floor.is_finite() && (0.0..=MAX_FLOOR).contains(&self.floor))
            || self.floor * arms > 1.0
        {
            return Err(Error::invalid(
                "bandit.floor",
                format!("floor must be 0 to {MAX_FLOOR}, and at most 1 / the number of arms"),
            ));
        }
        if !(1..=MAX_UPDATE_INTERVAL_S).contains(&self.update_interval_s) {
            return Err(Error::invalid(
                "bandit.update_interval_s",
                format!("update_interval_s must be 1 to {MAX_UPDATE_INTERVAL_S}"),
            ));
        }
        let primary = experiment.primary_metric.as_ref().and_then(|key| {
            experiment
                .analysed_metrics()
                .iter()
                .find(|m| &m.key == key)
                .map(|m| m.kind)
        });
        match primary {
            Some(MetricKind::Binomial | MetricKind::Mean) => Ok(()),
            Some(_) => Err(Error::invalid(
                "primary_metric",
                "a bandit learns from a binomial or mean primary metric",
            )),
            None => Err(Error::invalid(
                "primary_metric",
                "a bandit needs a primary metric to learn from",
            )),
        }
    }
}

/// A bandit's next split, as the results monitor hands it to the
/// experiment's actor.
#[derive(Debug, Clone, PartialEq)]
pub struct Reallocation {
    /// The phase it follows; applied only while that one is current.
    pub after_phase: u32,
    /// Each arm's chance to be the best, in variant order.
    pub chance_best: Vec<f64>,
    /// The new weights, in variant order.
    pub weights: Vec<f64>,
}
