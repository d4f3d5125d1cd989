//! Phases: an experiment's allocation history (`docs/assignment.md`,
//! "Phases").
//!
//! Phase 1 starts with the experiment. Each later change of its weights or
//! coverage while it runs (or is paused) starts the next, with the time,
//! the weights, the coverage and the **layout**: which stretches of the
//! bucket space `[0, 1)` each variant owns. A unit is in variant `v` when
//! its bucket is in the first `coverage` share of one of `v`'s segments,
//! so with one segment per variant (every phase 1) this is the contiguous
//! rule of phase-less experiments exactly.
//!
//! A new layout keeps as much of the old one as any layout can
//! ([`relayout`]): a variant whose weight falls gives up only its excess,
//! from its last segments backward, and the variants whose weight rises
//! take exactly those stretches, so the bucket space that changes variant
//! is the total variation distance between the old and the new weights
//! (50/50 → 70/30 moves 20%, the least possible). A variant may then own
//! several segments. Units already exposed keep their variant whatever
//! the layout says (their first exposure is sticky).
//!
//! Each unit's aggregates are kept under the phase of its first exposure
//! ([`stratum`]), so results can compare like with like: `phase=latest`
//! reads the current phase's units alone, `phase=all` weighs each phase's
//! comparison by its share of the units (a post-stratified estimate, which
//! a change of split cannot bias the way pooling can: no Simpson's paradox).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    Derivation, DerivedSums, Experiment, ExperimentAggregates, VariantAggregates, VariantKey,
};

/// Where an experiment's phase starts are told to the ingest partitions
/// among its derivations (outside the metric key alphabet).
pub const PHASES_DERIVATION: &str = "@phases";

/// Separates a variant key from its phase in a stratum key (outside the
/// key alphabet).
const STRATUM_SEPARATOR: char = '@';

/// Shorter segments than this are float dust, not allocation.
const EPSILON: f64 = 1e-12;

/// One phase of an experiment's allocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Phase {
    /// 1 for the first, then counting up.
    pub number: u32,
    /// When it began.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: OffsetDateTime,
    /// Each variant's weight, in the experiment's variant order.
    pub weights: Vec<f64>,
    /// The share of each segment that is enrolled.
    pub coverage: f64,
    /// Which stretches of the bucket space each variant owns, in order,
    /// covering `[0, 1)`.
    pub layout: Vec<Segment>,
}

/// A stretch `[start, end)` of the bucket space and the variant owning it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Segment {
    /// Inclusive.
    pub start: f64,
    /// Exclusive.
    pub end: f64,
    /// The owner.
    pub variant: VariantKey,
}

/// A segment by variant index: what [`relayout`] and assignment work on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    /// Inclusive.
    pub start: f64,
    /// Exclusive.
    pub end: f64,
    /// Index of the owning variant.
    pub variant: usize,
}

impl Span {
    fn len(&self) -> f64 {
        self.end - self.start
    }

    /// The enrolled part at `coverage`: the segment's first share.
    pub fn covered(&self, coverage: f64) -> (f64, f64) {
        (self.start, self.start + coverage * self.len())
    }
}

/// One segment per variant, in order: phase 1's layout.
pub fn contiguous(weights: &[f64]) -> Vec<Span> {
    let mut start = 0.0;
    weights
        .iter()
        .enumerate()
        .map(|(variant, w)| {
            let span = Span {
                start,
                end: start + w,
                variant,
            };
            start += w;
            span
        })
        .collect()
}

/// The layout for `weights` that keeps the most of `old`: every variant
/// keeps `min(old share, new share)` of its own space, shrinking variants
/// give up the rest from their last segments backward, and growing ones
/// fill those freed stretches in address order. The space that changes
/// owner is `Σ max(0, old share − new share)`, which no layout can beat.
pub fn relayout(old: &[Span], weights: &[f64]) -> Vec<Span> {
    let mut share = vec![0.0; weights.len()];
    for s in old {
        share[s.variant] += s.len();
    }
    let mut kept: Vec<Span> = old.to_vec();
    let mut freed: Vec<(f64, f64)> = Vec::new();
    for (variant, (&had, &wants)) in share.iter().zip(weights).enumerate() {
        let mut excess = had - wants;
        for s in kept.iter_mut().rev().filter(|s| s.variant == variant) {
            if excess <= EPSILON {
                break;
            }
            let cut = excess.min(s.len());
            freed.push((s.end - cut, s.end));
            s.end -= cut;
            excess -= cut;
        }
    }
    kept.retain(|s| s.len() > EPSILON);
    freed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut needs: Vec<f64> = share
        .iter()
        .zip(weights)
        .map(|(&had, &wants)| (wants - had).max(0.0))
        .collect();
    let mut growing = 0;
    for (mut start, end) in freed {
        while end - start > EPSILON {
            while growing < needs.len() && needs[growing] <= EPSILON {
                growing += 1;
            }
            // Rounding left a sliver nobody asked for: the last grower
            // takes it.
            let variant = growing.min(needs.len() - 1);
            let take = if growing < needs.len() {
                needs[growing].min(end - start)
            } else {
                end - start
            };
            let stop = if end - start - take <= EPSILON {
                end
            } else {
                start + take
            };
            kept.push(Span {
                start,
                end: stop,
                variant,
            });
            if let Some(n) = needs.get_mut(variant) {
                *n -= stop - start;
            }
            start = stop;
        }
    }
    kept.sort_by(|a, b| a.start.total_cmp(&b.start));
    merged(kept)
}

/// Adjacent segments of one variant as one.
fn merged(spans: Vec<Span>) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if last.variant == s.variant && (last.end - s.start).abs() <= EPSILON => {
                last.end = s.end;
            }
            _ => out.push(s),
        }
    }
    out
}

/// The variant whose enrolled part of a segment holds `b`, if any.
pub fn position(layout: &[Span], coverage: f64, b: f64) -> Option<usize> {
    // Segments are sorted: the one starting at or before `b` is the only
    // one that can hold it.
    let i = layout.partition_point(|s| s.start <= b).checked_sub(1)?;
    let s = layout[i];
    let (start, end) = s.covered(coverage);
    (start <= b && b < end).then_some(s.variant)
}

/// The stretches of the bucket space where some earlier `(layout,
/// coverage)` enrolled a unit in another variant than `now` does (or
/// than none): only there can a unit's first exposure differ from what
/// the hash gives now, so only there is it looked up. Sorted, disjoint.
pub fn moved(earlier: &[(&[Span], f64)], now: (&[Span], f64)) -> Vec<(f64, f64)> {
    let mut cuts: Vec<f64> = vec![0.0, 1.0];
    for (layout, coverage) in earlier.iter().copied().chain([now]) {
        for s in layout {
            let (a, b) = s.covered(coverage);
            cuts.extend([s.start, s.end, a, b]);
        }
    }
    cuts.sort_by(f64::total_cmp);
    cuts.dedup_by(|a, b| (*a - *b).abs() <= EPSILON);
    let mut out: Vec<(f64, f64)> = Vec::new();
    for pair in cuts.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let mid = a + (b - a) / 2.0;
        let current = position(now.0, now.1, mid);
        let differs = earlier.iter().any(|(layout, coverage)| {
            position(layout, *coverage, mid).is_some_and(|v| Some(v) != current)
        });
        if !differs {
            continue;
        }
        match out.last_mut() {
            Some(last) if (last.1 - a).abs() <= EPSILON => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    out
}

/// Whether `b` is in one of `regions` (sorted, disjoint).
pub fn within(regions: &[(f64, f64)], b: f64) -> bool {
    let i = regions.partition_point(|r| r.0 <= b);
    i > 0 && b < regions[i - 1].1
}

/// The key a variant's aggregates are kept under for units first exposed
/// in `phase`: the variant key itself in phase 1 (so experiments that never
/// changed allocation keep the keys they always had), `{variant}@{phase}`
/// after.
pub fn stratum(variant: &str, phase: u32) -> String {
    if phase <= 1 {
        variant.to_owned()
    } else {
        format!("{variant}{STRATUM_SEPARATOR}{phase}")
    }
}

/// The variant and phase of a stratum key.
pub fn split_stratum(key: &str) -> (&str, u32) {
    match key.split_once(STRATUM_SEPARATOR) {
        Some((variant, phase)) => (variant, phase.parse().unwrap_or(1)),
        None => (key, 1),
    }
}

/// The phase of an exposure at `at_ms`, from the starts of phases 2 on
/// (ascending).
pub fn phase_at(later_starts: &[i64], at_ms: i64) -> u32 {
    1 + later_starts.partition_point(|&start| start <= at_ms) as u32
}

/// What the ingest partitions need to key exposures by phase: the starts
/// of phases 2 on, in ms; `None` while there is one phase.
pub fn derivation(phases: &[Phase]) -> Option<Derivation> {
    let later: Vec<i64> = phases
        .iter()
        .skip(1)
        .map(|p| super::unix_ms(p.started_at))
        .collect();
    (!later.is_empty()).then(|| Derivation {
        measure: String::new(),
        cap: None,
        denominator: None,
        covariate: None,
        quantile: None,
        model: None,
        phases: Some(later),
    })
}

/// Which phases results read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PhaseView {
    /// Every phase, each weighed by its share of the units.
    #[default]
    All,
    /// The current phase's units alone.
    Latest,
}

impl ExperimentAggregates {
    /// Each stratum's aggregates by phase, then variant key.
    pub fn strata(&self) -> BTreeMap<u32, BTreeMap<&str, &VariantAggregates>> {
        let mut out: BTreeMap<u32, BTreeMap<&str, &VariantAggregates>> = BTreeMap::new();
        for (key, v) in &self.variants {
            let (variant, phase) = split_stratum(key);
            out.entry(phase).or_default().insert(variant, v);
        }
        out
    }

    /// These aggregates (as kept: by stratum) by variant key, over the
    /// phases of `view` of `experiment` (see [`Self::phase_view`]): as
    /// kept, with no copy, while every unit counted is of phase 1 and the
    /// view reads it.
    pub fn by_variant(&self, experiment: &Experiment, view: PhaseView) -> Cow<'_, Self> {
        let latest = experiment.phase().max(1);
        if self.phased() || (view == PhaseView::Latest && latest > 1) {
            Cow::Owned(self.phase_view(view, latest))
        } else {
            Cow::Borrowed(self)
        }
    }

    /// Whether units of more than one phase are counted.
    pub fn phased(&self) -> bool {
        self.variants.keys().any(|k| split_stratum(k).1 > 1)
    }

    /// These aggregates by variant key, for `view` of an experiment whose
    /// current phase is `latest`.
    ///
    /// `Latest` keeps that phase's units. `All` weighs every phase's units
    /// so that each variant's phases count in the proportion of all units
    /// (post-stratification): a unit of variant `v` first exposed in phase
    /// `p` stands for `W_p · n_v / n_{v,p}` units, `W_p` being phase `p`'s
    /// share of all units, `n_v` the variant's units and `n_{v,p}` its
    /// units in `p`. Every per-unit sum is scaled by that factor and the
    /// unit counts stay as they were, so each variant's mean is exactly
    /// the stratified mean `Σ W_p · mean_{v,p}`, and every analysis built
    /// on the sums (tests, intervals, CUPED, ratio metrics) reads the
    /// stratified figures. Quantile sketches and model figures are merged
    /// unweighted. Assignment mismatches are counted whatever the phase.
    pub fn phase_view(&self, view: PhaseView, latest: u32) -> ExperimentAggregates {
        let strata = self.strata();
        let mut out = ExperimentAggregates {
            variants: BTreeMap::new(),
            derived: self.derived.clone(),
        };
        let mismatches = |variant: &str| -> u64 {
            strata
                .values()
                .filter_map(|s| s.get(variant))
                .map(|v| v.assignment_mismatches)
                .sum()
        };
        match view {
            PhaseView::Latest => {
                for (variant, v) in strata.get(&latest).into_iter().flatten() {
                    let mut one = (*v).clone();
                    one.assignment_mismatches = mismatches(variant);
                    out.variants.insert((*variant).to_owned(), one);
                }
            }
            PhaseView::All => {
                let units_in = |s: &BTreeMap<&str, &VariantAggregates>| -> u64 {
                    s.values().map(|v| v.units).sum()
                };
                let total: u64 = strata.values().map(units_in).sum();
                let mut by_variant: BTreeMap<&str, u64> = BTreeMap::new();
                for s in strata.values() {
                    for (variant, v) in s {
                        *by_variant.entry(variant).or_default() += v.units;
                    }
                }
                for s in strata.values() {
                    let w = units_in(s) as f64 / total.max(1) as f64;
                    for (variant, v) in s {
                        let factor = match (v.units, by_variant[variant]) {
                            (0, _) | (_, 0) => 1.0,
                            (n, all) => w * all as f64 / n as f64,
                        };
                        let ours = out.variants.entry((*variant).to_owned()).or_default();
                        ours.add_scaled(v, factor);
                    }
                }
                for (variant, v) in out.variants.iter_mut() {
                    v.assignment_mismatches = mismatches(variant);
                }
            }
        }
        out
    }
}

impl VariantAggregates {
    /// Adds `other` with every per-unit sum scaled by `factor` (unit and
    /// event counts of units scaled too, rounded; exposures as they are).
    fn add_scaled(&mut self, other: &VariantAggregates, factor: f64) {
        let scale = |n: u64| (n as f64 * factor).round() as u64;
        self.units += other.units;
        self.exposures += other.exposures;
        for (name, m) in &other.measures {
            let ours = self.measures.entry(name.clone()).or_default();
            ours.units += scale(m.units);
            ours.events += scale(m.events);
            ours.sum = super::finite(ours.sum + factor * m.sum);
            ours.sum_squares = super::finite(ours.sum_squares + factor * m.sum_squares);
        }
        for (metric, d) in &other.derived {
            let scaled = DerivedSums {
                sum: factor * d.sum,
                sum_squares: factor * d.sum_squares,
                cross: factor * d.cross,
                capped: factor * d.capped,
                pre_sum: factor * d.pre_sum,
                pre_sum_squares: factor * d.pre_sum_squares,
                pre_cross: factor * d.pre_cross,
            };
            self.derived
                .entry(metric.clone())
                .or_default()
                .shift(DerivedSums::default(), scaled);
        }
        for (metric, s) in &other.sketches {
            self.sketches.entry(metric.clone()).or_default().merge(s);
        }
        if let Some(m) = &other.model {
            self.model.get_or_insert_with(Default::default).merge(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// The share of the bucket space whose owner differs between layouts,
    /// measured by sweeping both.
    fn changed(a: &[Span], b: &[Span]) -> f64 {
        let mut cuts: Vec<f64> = a.iter().chain(b).flat_map(|s| [s.start, s.end]).collect();
        cuts.sort_by(f64::total_cmp);
        cuts.windows(2)
            .filter(|w| {
                let mid = w[0] + (w[1] - w[0]) / 2.0;
                position(a, 1.0, mid) != position(b, 1.0, mid)
            })
            .map(|w| w[1] - w[0])
            .sum()
    }

    fn shares(layout: &[Span], n: usize) -> Vec<f64> {
        let mut out = vec![0.0; n];
        layout.iter().for_each(|s| out[s.variant] += s.len());
        out
    }

    fn assert_tiles(layout: &[Span]) {
        assert_eq!(layout.first().unwrap().start, 0.0);
        assert!((layout.last().unwrap().end - 1.0).abs() < 1e-9);
        for w in layout.windows(2) {
            assert_eq!(w[0].end, w[1].start, "{layout:?}");
            assert!(w[0].variant != w[1].variant, "merged: {layout:?}");
        }
    }

    #[test]
    fn fifty_fifty_to_seventy_thirty_moves_exactly_a_fifth() {
        let old = contiguous(&[0.5, 0.5]);
        let new = relayout(&old, &[0.7, 0.3]);
        assert!((changed(&old, &new) - 0.2).abs() < 1e-12, "{new:?}");
        assert_tiles(&new);
        let got = shares(&new, 2);
        assert!((got[0] - 0.7).abs() < 1e-12 && (got[1] - 0.3).abs() < 1e-12);
        // The treatment keeps the start of its range; the control gains
        // its tail.
        assert_eq!(position(&new, 1.0, 0.55), Some(1));
        assert_eq!(position(&new, 1.0, 0.79), Some(1));
        assert_eq!(position(&new, 1.0, 0.85), Some(0));
        assert_eq!(new.len(), 3);
        // Going back gives the tail back: the first layout again.
        assert_eq!(relayout(&new, &[0.5, 0.5]), old);
    }

    #[test]
    fn random_weight_changes_move_exactly_the_total_variation_distance() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        for _ in 0..500 {
            let n = rng.random_range(2..=6);
            let mut layout = contiguous(&normalised(&mut rng, n));
            // A chain of changes, as a bandit makes.
            for _ in 0..8 {
                let weights = normalised(&mut rng, n);
                let before = shares(&layout, n);
                let next = relayout(&layout, &weights);
                let optimum: f64 = before
                    .iter()
                    .zip(&weights)
                    .map(|(a, b)| (a - b).max(0.0))
                    .sum();
                let moved = changed(&layout, &next);
                assert!((moved - optimum).abs() < 1e-9, "{moved} vs {optimum}");
                for (got, want) in shares(&next, n).iter().zip(&weights) {
                    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
                }
                assert_tiles(&next);
                layout = next;
            }
        }
    }

    fn normalised(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f64> {
        let raw: Vec<f64> = (0..n).map(|_| rng.random_range(0.01..1.0)).collect();
        let total: f64 = raw.iter().sum();
        raw.iter().map(|w| w / total).collect()
    }

    #[test]
    fn only_space_that_changed_owner_or_left_coverage_is_looked_up() {
        let old = contiguous(&[0.5, 0.5]);
        let new = relayout(&old, &[0.7, 0.3]);
        let regions = moved(&[(&old, 1.0)], (&new, 1.0));
        assert_eq!(regions.len(), 1);
        assert!((regions[0].0 - 0.8).abs() < 1e-12 && (regions[0].1 - 1.0).abs() < 1e-12);
        assert!(within(&regions, 0.9) && !within(&regions, 0.4) && !within(&regions, 0.7));
        // A coverage cut from 1 to 0.5 of the same layout: the cut halves.
        let regions = moved(&[(&old, 1.0)], (&old, 0.5));
        assert_eq!(regions, vec![(0.25, 0.5), (0.75, 1.0)]);
        // Raising coverage moves nobody.
        assert!(moved(&[(&old, 0.5)], (&old, 1.0)).is_empty());
    }

    #[test]
    fn exposures_are_keyed_by_the_phase_they_fall_in() {
        let starts = [1_000, 2_000];
        assert_eq!(phase_at(&starts, 999), 1);
        assert_eq!(phase_at(&starts, 1_000), 2);
        assert_eq!(phase_at(&starts, 5_000), 3);
        assert_eq!(stratum("control", 1), "control");
        assert_eq!(stratum("control", 3), "control@3");
        assert_eq!(split_stratum("control@3"), ("control", 3));
        assert_eq!(split_stratum("control"), ("control", 1));
    }

    fn arm(units: u64, buyers: u64) -> VariantAggregates {
        let mut v = VariantAggregates {
            units,
            exposures: units,
            ..VariantAggregates::default()
        };
        v.measures.insert(
            "buy".into(),
            super::super::MeasureAggregates {
                units: buyers,
                events: buyers,
                sum: buyers as f64,
                sum_squares: buyers as f64,
            },
        );
        v
    }

    #[test]
    fn the_stratified_view_has_no_simpsons_paradox_across_a_split_change() {
        // Phase 1: 50/50, 10% buy in both. Phase 2: 90/10, 30% buy in
        // both (the season changed). No effect in either phase, but pooled
        // the treatment, mostly exposed in the good phase, looks far better.
        let mut a = ExperimentAggregates::default();
        a.variants.insert("control".into(), arm(1000, 100));
        a.variants.insert("b".into(), arm(1000, 100));
        a.variants.insert("control@2".into(), arm(200, 60));
        a.variants.insert("b@2".into(), arm(1800, 540));
        let rate = |a: &ExperimentAggregates, v: &str| {
            let x = &a.variants[v];
            x.measures["buy"].sum / x.units as f64
        };
        let pooled = a.phase_view(PhaseView::All, 2);
        assert_eq!(pooled.variants["b"].units, 2800);
        assert!((rate(&pooled, "control") - rate(&pooled, "b")).abs() < 1e-12);
        // Each is 0.5 × 10% + 0.5 × 30% (each phase holds half the units).
        assert!((rate(&pooled, "b") - 0.2).abs() < 1e-12);
        let latest = a.phase_view(PhaseView::Latest, 2);
        assert_eq!(latest.variants["control"].units, 200);
        assert!((rate(&latest, "b") - 0.3).abs() < 1e-12);
        // Merged naively the treatment reads 640/2800 against 160/1200:
        // the paradox the view avoids.
        let mut naive = ExperimentAggregates::default();
        for (key, v) in &a.variants {
            let one = ExperimentAggregates {
                variants: BTreeMap::from([(split_stratum(key).0.to_owned(), v.clone())]),
                ..ExperimentAggregates::default()
            };
            naive.add(&one);
        }
        assert!(rate(&naive, "b") > rate(&naive, "control") + 0.09);
    }
}
