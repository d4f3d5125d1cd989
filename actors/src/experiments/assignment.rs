//! The assignment algorithm of `docs/assignment.md`, exactly:
//!
//! ```text
//! bucket(salt, unit) = be_u32(md5(utf8(salt + ":" + unit))[0..4]) / 2^32
//! range_i = [start_i, start_i + coverage * w_i),  start_{i+1} = start_i + w_i
//! layer: start <= bucket(layer.key, unit) < end
//! forced, then sticky, then layer, then ranges; no range hit = not_in_coverage
//! ```
//!
//! That is phase 1's layout. After a change of weights a variant may own
//! several segments of the bucket space (see `domain/phase.rs`); each
//! enrolls the first `coverage` share of itself, as the single range does.
//!
//! An experiment with GrowthBook bucketing replaces `bucket` by GrowthBook's
//! hash (see [`super::growthbook`]); the ranges and the order are the same.
//!
//! Because each range grows from a fixed start as coverage rises, raising
//! coverage never moves a unit that was already in.

use std::collections::HashMap;

use md5::{Digest, Md5};
use serde::Serialize;

use super::growthbook;
use crate::domain::{moved, within, Bucketing, Experiment, Span, Status};
use crate::Result;

/// The unit's position in `[0, 1)` for `salt`. Hashes the parts one after
/// the other so no `salt:unit` string is allocated.
pub fn bucket(salt: &str, unit: &str) -> f64 {
    let mut hasher = Md5::new();
    hasher.update(salt.as_bytes());
    hasher.update(b":");
    hasher.update(unit.as_bytes());
    let digest = hasher.finalize();
    let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    f64::from(head) / 4_294_967_296.0
}

/// Why a unit got the variant it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its bucket fell in the variant's range.
    Hashed,
    /// It was exposed before; the variant it saw then is kept.
    Sticky,
    /// A forced override names it.
    Forced,
    /// The experiment is not running: control, or the winner once completed.
    NotRunning,
    /// Its bucket fell outside every range (coverage below 1).
    NotInCoverage,
    /// Its layer bucket fell outside the experiment's layer slice.
    NotInLayer,
    /// A holdout keeps it out of the experiment: it is served the control.
    Holdout,
}

impl Reason {
    /// Every reason, in declaration order (`as usize` indexes this).
    pub const ALL: [Reason; 7] = [
        Reason::Hashed,
        Reason::Sticky,
        Reason::Forced,
        Reason::NotRunning,
        Reason::NotInCoverage,
        Reason::NotInLayer,
        Reason::Holdout,
    ];

    /// The name on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Hashed => "hashed",
            Reason::Sticky => "sticky",
            Reason::Forced => "forced",
            Reason::NotRunning => "not_running",
            Reason::NotInCoverage => "not_in_coverage",
            Reason::NotInLayer => "not_in_layer",
            Reason::Holdout => "holdout",
        }
    }
}

/// The outcome of assigning one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index into the experiment's variants of what the unit is served.
    pub variant: usize,
    /// Whether the unit takes part (and so is exposed).
    pub in_experiment: bool,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// `hashed` overridden by a first exposure to `variant`: `sticky`
    /// unless it is the answer `hashed` gives anyway.
    pub fn sticky(hashed: Decision, variant: usize) -> Decision {
        if hashed.in_experiment && hashed.variant == variant {
            return hashed;
        }
        Decision {
            variant,
            in_experiment: true,
            reason: Reason::Sticky,
        }
    }
}

/// An experiment prepared for the hot path: ranges computed and forced
/// overrides indexed once per change rather than once per request.
#[derive(Debug)]
pub struct Compiled {
    experiment: Experiment,
    /// The current phase's segments, sorted.
    layout: Vec<Span>,
    /// Where an earlier phase, or the peak coverage, enrolled units in
    /// another variant than `layout` does now (or in one where it enrolls
    /// none): a unit whose bucket is here may have a first exposure that
    /// differs from the hash.
    moved: Vec<(f64, f64)>,
    forced: HashMap<Box<str>, usize>,
    /// What a unit outside the experiment is served.
    fallback: usize,
}

impl Compiled {
    /// Precomputes what [`Compiled::decide`] needs.
    pub fn new(experiment: Experiment) -> Self {
        let layout = experiment.layout();
        let earlier: Vec<Vec<Span>> = match experiment.phases.split_last() {
            Some((_, earlier)) => earlier.iter().map(|p| experiment.spans(p)).collect(),
            None => Vec::new(),
        };
        let mut before: Vec<(&[Span], f64)> = experiment
            .phases
            .iter()
            .zip(&earlier)
            .map(|(p, spans)| (spans.as_slice(), p.coverage))
            .collect();
        before.push((&layout, experiment.peak_coverage));
        let moved = moved(&before, (&layout, experiment.coverage));
        let forced = experiment
            .forced
            .iter()
            .filter_map(|(unit, variant)| {
                let index = experiment.variant_index(variant.as_str())?;
                Some((Box::from(unit.as_str()), index))
            })
            .collect();
        let fallback = match (&experiment.status, &experiment.winner) {
            (Status::Completed | Status::Archived, Some(w)) => {
                experiment.variant_index(w.as_str()).unwrap_or(0)
            }
            _ => 0,
        };
        Self {
            experiment,
            layout,
            moved,
            forced,
            fallback,
        }
    }

    /// The experiment this was compiled from.
    pub fn experiment(&self) -> &Experiment {
        &self.experiment
    }

    /// Assigns `unit`. `sticky` looks up the variant the unit was first
    /// exposed to; it is called only when that can differ from the hash:
    /// when the experiment is `diverged` (a client reported a variant the
    /// hash would not give), or when the hash puts the unit outside a
    /// coverage that was cut while it may have been inside. Everyone else
    /// is answered from the hash alone, with no lookup: their first
    /// exposure, if any, is the variant the hash gives.
    pub fn decide(
        &self,
        unit: &str,
        diverged: bool,
        sticky: impl FnOnce() -> Result<Option<usize>>,
    ) -> Result<Decision> {
        let out = |variant, reason| Decision {
            variant,
            in_experiment: false,
            reason,
        };
        let enrolled = |variant, reason| Decision {
            variant,
            in_experiment: true,
            reason,
        };
        if self.experiment.status != Status::Running {
            return Ok(out(self.fallback, Reason::NotRunning));
        }
        if let Some(&variant) = self.forced.get(unit) {
            return Ok(enrolled(variant, Reason::Forced));
        }
        if let Some(layer) = &self.experiment.layer {
            let b = match self.experiment.bucketing {
                Bucketing::Abacus => bucket(&layer.key, unit),
                Bucketing::Growthbook { .. } => growthbook::namespace(&layer.key, unit),
            };
            if !(layer.start <= b && b < layer.end) {
                return self.or_sticky(diverged, sticky, out(self.fallback, Reason::NotInLayer));
            }
        }
        let salt = &self.experiment.salt;
        let b = match self.experiment.bucketing {
            Bucketing::Abacus => bucket(salt, unit),
            Bucketing::Growthbook { hash_version } => growthbook::hash(salt, unit, hash_version),
        };
        let look = diverged || within(&self.moved, b);
        let hashed = match crate::domain::position(&self.layout, self.experiment.coverage, b) {
            Some(variant) => enrolled(variant, Reason::Hashed),
            None => out(self.fallback, Reason::NotInCoverage),
        };
        self.or_sticky(look, sticky, hashed)
    }

    /// Whether [`Compiled::decide`] for `unit` would look up its first
    /// exposure.
    pub fn looks_up(&self, unit: &str, diverged: bool) -> bool {
        let mut asked = false;
        let _ = self.decide(unit, diverged, || {
            asked = true;
            Ok(None)
        });
        asked
    }

    /// The unit's first exposure if `look` and it has one that differs
    /// from `hashed`, else `hashed`: `sticky` means the first exposure
    /// changed the answer, whichever way it was found.
    fn or_sticky(
        &self,
        look: bool,
        sticky: impl FnOnce() -> Result<Option<usize>>,
        hashed: Decision,
    ) -> Result<Decision> {
        if look {
            let variants = self.experiment.variants.len();
            if let Some(variant) = sticky()?.filter(|&v| v < variants) {
                return Ok(Decision::sticky(hashed, variant));
            }
        }
        Ok(hashed)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;
    use crate::domain::{Action, ExperimentIn, Layer};

    const VECTORS: &str = include_str!("../../testdata/assignment_vectors.json");

    #[derive(Deserialize)]
    struct Vectors {
        bucket: Vec<BucketVector>,
        assign: Vec<AssignVector>,
    }

    #[derive(Deserialize)]
    struct BucketVector {
        salt: String,
        unit: String,
        bucket: f64,
    }

    #[derive(Deserialize)]
    struct AssignVector {
        experiment: VectorExperiment,
        unit: String,
        variant: Option<String>,
    }

    #[derive(Deserialize)]
    struct VectorExperiment {
        salt: String,
        variants: Vec<String>,
        weights: Vec<f64>,
        coverage: f64,
        layer: Option<Layer>,
    }

    fn running(body: serde_json::Value) -> Compiled {
        let input: ExperimentIn = serde_json::from_value(body).expect("valid input");
        let now = OffsetDateTime::UNIX_EPOCH;
        let e = Experiment::create(input, now)
            .and_then(|e| e.transitioned(Action::Start, None, now))
            .expect("valid experiment");
        Compiled::new(e)
    }

    fn from_vector(v: &VectorExperiment) -> Compiled {
        let variants: Vec<_> = v
            .variants
            .iter()
            .zip(&v.weights)
            .map(|(k, w)| json!({"key": k, "weight": w}))
            .collect();
        running(json!({
            "key": "vector", "name": "vector", "salt": v.salt,
            "variants": variants, "coverage": v.coverage, "layer": v.layer,
        }))
    }

    fn served(c: &Compiled, unit: &str) -> Option<String> {
        let d = c.decide(unit, false, no_lookup).unwrap();
        d.in_experiment
            .then(|| c.experiment().variants[d.variant].key.to_string())
    }

    #[test]
    fn bucket_vectors_match_exactly() {
        let vectors: Vectors = serde_json::from_str(VECTORS).unwrap();
        assert!(!vectors.bucket.is_empty());
        for v in &vectors.bucket {
            assert_eq!(
                bucket(&v.salt, &v.unit),
                v.bucket,
                "{} / {}",
                v.salt,
                v.unit
            );
        }
    }

    #[test]
    fn assignment_vectors_match() {
        let vectors: Vectors = serde_json::from_str(VECTORS).unwrap();
        assert!(vectors.assign.len() >= 30);
        for v in &vectors.assign {
            let c = from_vector(&v.experiment);
            assert_eq!(served(&c, &v.unit), v.variant, "unit {}", v.unit);
        }
    }

    /// The vendored copy must not drift from the product contract's.
    ///
    /// The source lives outside the repository (`../shared` beside it), so
    /// a clone alone cannot run this: it is ignored by default and `.ci/run`
    /// runs it by name when the source is there. Run on its own, a missing
    /// source is a failure, never a silent pass. `ABACUS_VECTORS_SOURCE`
    /// points it at another copy.
    #[test]
    #[ignore = "needs ../shared/testdata beside the repository (or ABACUS_VECTORS_SOURCE); .ci/run runs it"]
    fn vendored_vectors_equal_the_shared_ones() {
        let source = std::env::var_os("ABACUS_VECTORS_SOURCE").map_or_else(
            || {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../shared/testdata/assignment_vectors.json")
            },
            std::path::PathBuf::from,
        );
        let text = std::fs::read_to_string(&source).unwrap_or_else(|e| {
            panic!(
                "cannot read the shared assignment vectors at {}: {e}; \
                 set ABACUS_VECTORS_SOURCE to their path",
                source.display()
            )
        });
        // Not assert_eq!: printing both files would bury the message.
        assert!(
            text == VECTORS,
            "actors/testdata/assignment_vectors.json differs from {}: refresh it from there",
            source.display()
        );
    }

    #[test]
    fn large_populations_split_within_one_percent_of_weights() {
        let c = running(json!({
            "key": "split", "name": "split",
            "variants": [
                {"key": "a", "weight": 0.5}, {"key": "b", "weight": 0.3}, {"key": "c", "weight": 0.2}
            ]
        }));
        let n = 100_000;
        let mut counts = [0usize; 3];
        for i in 0..n {
            let d = c.decide(&format!("unit-{i}"), false, no_lookup).unwrap();
            assert!(d.in_experiment);
            counts[d.variant] += 1;
        }
        for (count, weight) in counts.iter().zip([0.5, 0.3, 0.2]) {
            let share = *count as f64 / n as f64;
            assert!((share - weight).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn coverage_admits_its_share_and_raising_it_moves_nobody() {
        let body = |coverage: f64| {
            json!({
                "key": "cov", "name": "cov", "coverage": coverage,
                "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]
            })
        };
        let low = running(body(0.2));
        let high = running(body(0.7));
        let n = 50_000;
        let mut admitted = 0;
        for i in 0..n {
            let unit = format!("u{i}");
            if let Some(v) = served(&low, &unit) {
                admitted += 1;
                assert_eq!(served(&high, &unit), Some(v), "{unit} moved");
            }
        }
        let share = admitted as f64 / n as f64;
        assert!((share - 0.2).abs() < 0.01, "{share}");
    }

    #[test]
    fn precedence_is_forced_then_sticky_then_layer_then_hash() {
        let c = running(json!({
            "key": "p", "name": "p",
            "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}],
            "layer": {"key": "l", "start": 0.0, "end": 0.0001},
            "forced": {"qa-user": "b"}
        }));
        let forced = c.decide("qa-user", true, no_lookup).unwrap();
        assert_eq!((forced.variant, forced.reason), (1, Reason::Forced));
        let sticky = c.decide("someone", true, || Ok(Some(1))).unwrap();
        assert_eq!((sticky.variant, sticky.reason), (1, Reason::Sticky));
        let full = running(json!({
            "key": "p", "name": "p",
            "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]
        }));
        let hashed = full.decide("someone", false, no_lookup).unwrap();
        let same = full
            .decide("someone", true, || Ok(Some(hashed.variant)))
            .unwrap();
        assert_eq!(
            same, hashed,
            "a first exposure the hash agrees with is not news"
        );
        let other = full
            .decide("someone", true, || Ok(Some(1 - hashed.variant)))
            .unwrap();
        assert_eq!(
            (other.variant, other.reason),
            (1 - hashed.variant, Reason::Sticky)
        );
        let outside = c.decide("someone", true, || Ok(None)).unwrap();
        assert_eq!(outside.reason, Reason::NotInLayer);
        assert!(!outside.in_experiment);
        let undiverged = c.decide("someone", false, no_lookup).unwrap();
        assert_eq!(undiverged.reason, Reason::NotInLayer);
    }

    /// Looking a unit up is for the cases where its first exposure can
    /// differ from the hash; everyone else costs no read.
    #[test]
    fn only_units_a_coverage_cut_left_outside_are_looked_up() {
        let c = running(json!({
            "key": "cut", "name": "cut",
            "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]
        }));
        let units: Vec<String> = (0..2000).map(|i| format!("u{i}")).collect();
        for unit in &units {
            let d = c.decide(unit, false, no_lookup).unwrap();
            assert_eq!(d.reason, Reason::Hashed, "full coverage: no lookup");
        }
        let patch = serde_json::from_value(json!({"coverage": 0.3})).unwrap();
        let cut = Compiled::new(
            c.experiment()
                .patched(patch, OffsetDateTime::UNIX_EPOCH)
                .unwrap(),
        );
        let mut looked_up = 0;
        for unit in &units {
            let before = c.decide(unit, false, no_lookup).unwrap();
            let mut asked = false;
            let after = cut
                .decide(unit, false, || {
                    asked = true;
                    Ok(Some(before.variant))
                })
                .unwrap();
            looked_up += usize::from(asked);
            if asked {
                assert_eq!(after.reason, Reason::Sticky, "{unit}");
                assert!(after.in_experiment);
            } else {
                assert_eq!(
                    (after.variant, after.reason),
                    (before.variant, Reason::Hashed)
                );
            }
            assert_eq!(after.variant, before.variant, "{unit} moved");
        }
        let share = looked_up as f64 / units.len() as f64;
        assert!((share - 0.7).abs() < 0.05, "only the 70% cut out: {share}");

        // Raising it back to the peak leaves nothing to look up.
        let patch = serde_json::from_value(json!({"coverage": 1.0})).unwrap();
        let restored = Compiled::new(
            cut.experiment()
                .patched(patch, OffsetDateTime::UNIX_EPOCH)
                .unwrap(),
        );
        for unit in &units {
            restored.decide(unit, false, no_lookup).unwrap();
        }
    }

    /// A `sticky` lookup a decision must not make.
    fn no_lookup() -> Result<Option<usize>> {
        panic!("the first exposure must not be looked up")
    }

    #[test]
    fn stopped_experiments_serve_control_or_winner() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let input: ExperimentIn = serde_json::from_value(json!({
            "key": "w", "name": "w", "forced": {"qa": "b"},
            "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]
        }))
        .unwrap();
        let draft = Experiment::create(input, now).unwrap();
        let d = Compiled::new(draft.clone())
            .decide("qa", true, || Ok(Some(1)))
            .unwrap();
        assert_eq!(
            (d.variant, d.in_experiment, d.reason),
            (0, false, Reason::NotRunning)
        );

        let winner = draft.variants[1].key.clone();
        let done = draft
            .transitioned(Action::Start, None, now)
            .and_then(|e| e.transitioned(Action::Complete, Some(winner), now))
            .unwrap();
        let d = Compiled::new(done)
            .decide("anyone", true, no_lookup)
            .unwrap();
        assert_eq!((d.variant, d.reason), (1, Reason::NotRunning));
    }
}
