//! Quantile metrics: each variant's event values of a measure in a
//! log-binned histogram (1% relative error), split by unit into
//! [`GROUPS`] random groups, so a quantile's sampling variance can be
//! estimated clustered by unit (docs/statistics.md, "Quantile metrics").
//!
//! The estimate is the sketch's quantile at rank `q (n - 1)`, interpolated
//! inside its bin. Its variance is
//! Woodruff's (1952): the share `F` of events at or below the estimate
//! has a variance estimated from the groups, which are independent
//! clusters of whole units (`G/(G-1) Σ_g (a_g - F m_g)² / N²`, `a_g` the
//! group's events at or below, `m_g` its events); the quantiles at
//! `q ± z·se(F)` bound an interval whose half-width over `z` is the
//! estimate's standard error. Only bins are kept, so it never needs the
//! values again, and sketches of disjoint units add bin by bin.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{Event, Properties};

/// Groups units are hashed into; a quantile's variance has `GROUPS - 1`
/// degrees of freedom.
pub const GROUPS: usize = 20;
/// Bins kept per sketch unless configured (`limits.max_quantile_bins`);
/// beyond the bound the two lowest merge, so the low tail loses
/// resolution first, as in DDSketch.
pub const DEFAULT_QUANTILE_BINS: usize = 1024;
/// Half the relative width of a bin: `γ = (1 + α) / (1 - α)`.
const RELATIVE_ERROR: f64 = 0.01;
/// Values of smaller magnitude fall in the zero bin.
const MIN_MAGNITUDE: f64 = 1e-9;
/// Keeps positive bins above 0 and negative ones below it: more than the
/// magnitude of the lowest bin of [`MIN_MAGNITUDE`].
const OFFSET: i32 = 1100;
/// The normal quantile Woodruff's interval is read at (95%).
const WOODRUFF_Z: f64 = 1.959_963_984_540_054;

/// `γ = (1 + α) / (1 - α)`: bin `k` holds `(γ^(k-1), γ^k]`.
fn ln_gamma() -> f64 {
    ((1.0 + RELATIVE_ERROR) / (1.0 - RELATIVE_ERROR)).ln()
}

/// The group of a unit: FNV-1a of its id, stable across processes,
/// versions and nodes (shares of one unit must always agree).
pub fn group_of(unit: &str) -> usize {
    let hash = unit.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % GROUPS as u64) as usize
}

/// Which number of an event a quantile metric reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuantileOf {
    /// The event's `value` (a `metric` event's, or an order's amount).
    #[default]
    Value,
    /// `properties.response_time_ms`.
    ResponseTimeMs,
    /// `properties.dwell_time_ms`.
    DwellTimeMs,
    /// A prediction's `properties.latency_ms`.
    LatencyMs,
}

impl QuantileOf {
    /// The number `e` has, if any: events without it are not counted.
    pub fn read(self, e: &Event) -> Option<f64> {
        match self {
            Self::Value => e.value,
            Self::ResponseTimeMs => e.properties.as_ref().and_then(Properties::response_time_ms),
            Self::DwellTimeMs => e.properties.as_ref().and_then(Properties::dwell_time_ms),
            Self::LatencyMs => e.properties.as_ref().and_then(Properties::latency_ms),
        }
    }
}

/// What a quantile metric keeps a sketch of.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuantileSpec {
    /// The quantile tested, in (0, 1).
    pub level: f64,
    /// The number read from each event of the measure.
    #[serde(default)]
    pub of: QuantileOf,
}

/// A variant's values of one quantile metric: events per bin per group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuantileSketch {
    /// Bin → events of each group (a record of another length does not
    /// decode).
    #[schema(value_type = Object)]
    bins: BTreeMap<i32, [u64; GROUPS]>,
}

/// A quantile and the variance of its estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantileEstimate {
    /// The sketch's quantile.
    pub value: f64,
    /// Woodruff's variance of it, clustered by unit; `None` while the
    /// values come from fewer than two unit groups.
    pub variance: Option<Variance>,
}

/// A variance estimated from `df + 1` unit groups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Variance {
    /// The variance.
    pub value: f64,
    /// Its degrees of freedom: the groups holding values, less one.
    pub df: f64,
}

impl QuantileSketch {
    /// Counts `value` for a unit of `group`, keeping at most `max_bins`
    /// bins; non-finite values are not counted (ingestion refuses them).
    pub fn add(&mut self, value: f64, group: usize, max_bins: usize) {
        if !value.is_finite() || group >= GROUPS {
            return;
        }
        let counts = self.bins.entry(bin_of(value)).or_insert([0; GROUPS]);
        counts[group] = counts[group].saturating_add(1);
        self.bound(max_bins);
    }

    /// Adds `other`'s counts (a sketch of other units). Unbounded: the sum
    /// of bounded shares, for one answer.
    pub fn merge(&mut self, other: &QuantileSketch) {
        for (bin, theirs) in &other.bins {
            let ours = self.bins.entry(*bin).or_insert([0; GROUPS]);
            for (a, b) in ours.iter_mut().zip(theirs) {
                *a = a.saturating_add(*b);
            }
        }
    }

    fn bound(&mut self, max_bins: usize) {
        while self.bins.len() > max_bins.max(1) {
            let Some((_, lowest)) = self.bins.pop_first() else {
                return;
            };
            if let Some(mut next) = self.bins.first_entry() {
                for (a, b) in next.get_mut().iter_mut().zip(lowest) {
                    *a = a.saturating_add(b);
                }
            }
        }
    }

    /// Events counted.
    pub fn count(&self) -> u64 {
        self.bins.values().flatten().sum()
    }

    /// Events at each bin, all groups together, in value order.
    fn totals(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.bins.iter().map(|(bin, g)| (*bin, g.iter().sum()))
    }

    /// Where rank `q (n - 1)` (0-based, continuous) of the `n` counted
    /// events falls: its bin and the position inside it, the `c` events
    /// of a bin taken to sit at `(j + 0.5) / c` of its width.
    fn locate(&self, q: f64, n: u64) -> Option<(i32, f64)> {
        let rank = q.clamp(0.0, 1.0) * (n - 1) as f64;
        let mut seen = 0.0;
        for (bin, count) in self.totals() {
            let count = count as f64;
            if count > 0.0 && seen + count > rank {
                let inside = ((rank - seen + 0.5) / count).clamp(0.0, 1.0);
                return Some((bin, inside));
            }
            seen += count;
        }
        None
    }

    /// The `q` quantile, or `None` without events: rank `q (n - 1)`,
    /// interpolated inside its bin, so within one bin's width (2%) of
    /// the exact value there; interpolating keeps the estimate from
    /// jumping bin to bin, which would widen its error beyond what its
    /// interval accounts for.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        (n > 0)
            .then(|| self.locate(q, n))
            .flatten()
            .map(|(bin, inside)| value_at(bin, inside))
    }

    /// The `q` quantile with Woodruff's variance, clustered by the unit
    /// groups; `None` without events.
    pub fn estimate(&self, q: f64) -> Option<QuantileEstimate> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let (at, inside) = self.locate(q, n)?;
        let value = value_at(at, inside);
        // Each group's events at or below the estimate (the same share of
        // the estimate's bin as its position), and all its events.
        let mut below = [0.0; GROUPS];
        let mut all = [0.0; GROUPS];
        for (bin, counts) in &self.bins {
            let weight = match bin.cmp(&at) {
                std::cmp::Ordering::Less => 1.0,
                std::cmp::Ordering::Equal => inside,
                std::cmp::Ordering::Greater => 0.0,
            };
            for (g, &c) in counts.iter().enumerate() {
                all[g] += c as f64;
                below[g] += weight * c as f64;
            }
        }
        // Only the groups holding events are clusters: with few units most
        // groups are empty, and counting them would shrink the variance.
        let groups = all.iter().filter(|&&m| m > 0.0).count();
        if groups < 2 {
            return Some(QuantileEstimate {
                value,
                variance: None,
            });
        }
        let total = n as f64;
        let share = below.iter().sum::<f64>() / total;
        let spread: f64 = below
            .iter()
            .zip(all)
            .map(|(a, m)| (a - share * m).powi(2))
            .sum();
        let k = groups as f64;
        let se_share = (k / (k - 1.0) * spread).sqrt() / total;
        let step = WOODRUFF_Z * se_share;
        let lower = self.quantile(q - step)?;
        let upper = self.quantile(q + step)?;
        // A side cut off at the smallest or largest value says nothing of
        // the spread: the other side's half-width stands for both.
        let half = match (q - step < 0.0, q + step > 1.0) {
            (true, false) => upper - value,
            (false, true) => value - lower,
            _ => (upper - lower) / 2.0,
        };
        let se = half / WOODRUFF_Z;
        Some(QuantileEstimate {
            value,
            variance: Some(Variance {
                value: se * se,
                df: k - 1.0,
            }),
        })
    }
}

#[cfg(test)]
impl QuantileSketch {
    /// A sketch of `"bin,group,events"` cells, space-separated (the
    /// reference cases' input, `tests/stats/reference.py`).
    pub(crate) fn from_cells(cells: &str) -> Self {
        let mut sketch = Self::default();
        for cell in cells.split_whitespace() {
            let parts: Vec<&str> = cell.split(',').collect();
            let (bin, group, events) = (
                parts[0].parse().expect("bin"),
                parts[1].parse::<usize>().expect("group"),
                parts[2].parse::<u64>().expect("events"),
            );
            sketch.bins.entry(bin).or_insert([0; GROUPS])[group] += events;
        }
        sketch
    }
}

/// The bin of `v`: 0 for `|v| < MIN_MAGNITUDE`, else `±(OFFSET + k)`
/// with `k = ceil(log_γ |v|)`, so bins sort like their values.
pub(super) fn bin_of(v: f64) -> i32 {
    let magnitude = v.abs();
    if magnitude < MIN_MAGNITUDE {
        return 0;
    }
    let k = (magnitude.ln() / ln_gamma()).ceil() as i32 + OFFSET;
    if v > 0.0 {
        k
    } else {
        -k
    }
}

/// The value at `inside` (0 to 1) of `bin`'s width, in log scale: bin
/// `OFFSET + k` spans `(γ^(k-1), γ^k]`, its negative mirror the same
/// magnitudes below zero.
fn value_at(bin: i32, inside: f64) -> f64 {
    if bin == 0 {
        return 0.0;
    }
    let k = f64::from(bin.abs() - OFFSET);
    if bin > 0 {
        ((k - 1.0 + inside) * ln_gamma()).exp()
    } else {
        -((k - inside) * ln_gamma()).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    #[test]
    fn quantiles_are_within_the_relative_error_of_the_exact_rank_either_sign() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // e^-4 to e^6 either sign: about 1,000 bins, within the default.
        let mut values: Vec<f64> = (0..20_000)
            .map(|_| {
                let v = (rng.random::<f64>() * 10.0 - 4.0).exp();
                if rng.random::<f64>() < 0.3 {
                    -v
                } else {
                    v
                }
            })
            .collect();
        values.push(0.0);
        let mut sketch = QuantileSketch::default();
        for (i, v) in values.iter().enumerate() {
            sketch.add(*v, i % GROUPS, DEFAULT_QUANTILE_BINS);
        }
        values.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.25, 0.3, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let (got, want) = (sketch.quantile(q).unwrap(), exact(&values, q));
            assert!(
                (got - want).abs() <= 2.0 * RELATIVE_ERROR * want.abs() + 1e-12,
                "q {q}: {got} against {want}"
            );
        }
        assert_eq!(sketch.count(), values.len() as u64);
    }

    #[test]
    fn sketches_of_disjoint_units_merge_like_one_sketch_and_stay_bounded() {
        let (mut a, mut b, mut both) = (
            QuantileSketch::default(),
            QuantileSketch::default(),
            QuantileSketch::default(),
        );
        for i in 0..5_000u32 {
            let v = f64::from(i % 977) * 1.7 + 0.5;
            let unit = format!("u{}", i % 300);
            let part = if i % 3 == 0 { &mut a } else { &mut b };
            part.add(v, group_of(&unit), DEFAULT_QUANTILE_BINS);
            both.add(v, group_of(&unit), DEFAULT_QUANTILE_BINS);
        }
        a.merge(&b);
        assert_eq!(a, both);
        // Every magnitude from 1e-9 to 1e15 would need about 2,800 bins.
        let mut wide = QuantileSketch::default();
        for e in -900..1500 {
            wide.add(10f64.powf(f64::from(e) / 100.0), 0, 700);
        }
        assert_eq!(wide.bins.len(), 700);
        assert_eq!(wide.count(), 2400);
        let top = wide.quantile(1.0).unwrap();
        assert!((top / 10f64.powf(14.99) - 1.0).abs() < 2.0 * RELATIVE_ERROR);
    }

    #[test]
    fn units_spread_over_every_group_and_keep_theirs() {
        let mut seen = [0u32; GROUPS];
        for i in 0..20_000 {
            seen[group_of(&format!("user-{i}"))] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(group_of("user-42"), group_of("user-42"));
    }

    #[test]
    fn no_events_no_estimate_and_one_value_no_variance() {
        assert_eq!(QuantileSketch::default().estimate(0.5), None);
        let mut one = QuantileSketch::default();
        for g in 0..GROUPS {
            one.add(42.0, g, DEFAULT_QUANTILE_BINS);
        }
        let e = one.estimate(0.9).unwrap();
        assert!((e.value / 42.0 - 1.0).abs() < 2.0 * RELATIVE_ERROR);
        assert_eq!(e.variance.map(|v| (v.value, v.df)), Some((0.0, 19.0)));
        // One unit's values are one cluster: no variance to speak of.
        let mut alone = QuantileSketch::default();
        for v in [10.0, 20.0, 30.0] {
            alone.add(v, 7, DEFAULT_QUANTILE_BINS);
        }
        assert_eq!(alone.estimate(0.5).unwrap().variance, None);
    }
}
