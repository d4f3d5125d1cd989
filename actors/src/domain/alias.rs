//! Identity stitching: an id a unit was known by (an anonymous visitor's)
//! linked to the unit it signed in as, and the rule that makes the two
//! one person in every experiment.
//!
//! The rule (documented in docs/assignment.md, "Identity stitching"): per
//! experiment, when only the linked id was exposed, the unit takes its
//! exposure as it is; when both were, the earlier first exposure wins (the
//! unit's own on a tie), and everything either did since counts there, as
//! one unit. So a person is counted once, in the variant they saw first.

use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;

use super::aggregate::{finite, Exposure, UnitMeasure};
use super::phase::split_stratum;

/// A link, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Alias {
    /// The id that was linked (an anonymous visitor's).
    pub from: String,
    /// The unit it links to: the one it signed in as.
    pub to: String,
    /// When it was linked.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub linked_at: OffsetDateTime,
    /// The experiments where the unit now has the linked id's variant
    /// (its first exposure came from the linked id).
    pub moved: Vec<MovedExposure>,
}

/// One experiment where the linked id's first exposure became the unit's.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MovedExposure {
    /// The experiment.
    pub experiment: String,
    /// The variant the unit keeps.
    pub variant: String,
    /// When the linked id was first exposed to it.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub first_exposed_at: OffsetDateTime,
}

/// An id's state on its way to the unit it links to: what a partition
/// took out of its share, for the unit's partition to fold in.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// The linked id.
    pub from: Box<str>,
    /// The unit it links to.
    pub to: Box<str>,
    /// When it was linked, in milliseconds since the Unix epoch.
    pub linked_ms: i64,
    /// The linked id's exposures and running sums.
    pub exposures: Vec<Exposure>,
}

/// A first exposure the unit took from the linked id: experiment, variant
/// (its key, without the phase), when.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    /// The experiment.
    pub experiment: Arc<str>,
    /// The variant's key.
    pub variant: Arc<str>,
    /// When the linked id was first exposed.
    pub at_ms: i64,
}

/// Folds `incoming` (the linked id's exposures) into `unit` (the unit's),
/// by the rule of the module docs. Returns the experiments whose first
/// exposure the unit now takes from `incoming`, and the experiments
/// touched (whose contributions to the aggregates changed).
pub fn merge(unit: &mut Vec<Exposure>, incoming: Vec<Exposure>) -> (Vec<Taken>, Vec<Arc<str>>) {
    let mut touched: Vec<Arc<str>> = Vec::new();
    for x in &incoming {
        if !touched.contains(&x.experiment) {
            touched.push(Arc::clone(&x.experiment));
        }
    }
    let mut taken = Vec::new();
    for experiment in &touched {
        let theirs: Vec<Exposure> = incoming
            .iter()
            .filter(|x| x.experiment == *experiment)
            .cloned()
            .collect();
        let mine: Vec<Exposure> = unit
            .iter()
            .filter(|x| x.experiment == *experiment)
            .cloned()
            .collect();
        unit.retain(|x| x.experiment != *experiment);
        let earliest = |xs: &[Exposure]| xs.iter().map(|x| x.exposed_ms).min();
        let theirs_first = match (earliest(&mine), earliest(&theirs)) {
            (None, _) => true,
            (Some(m), Some(t)) => t < m,
            (Some(_), None) => false,
        };
        if mine.is_empty() {
            // Nothing to reconcile: the unit takes the id's exposures.
            if let Some(first) = theirs.iter().min_by_key(|x| x.exposed_ms) {
                taken.push(taken_from(first));
            }
            unit.extend(theirs);
            continue;
        }
        // Ties go to the unit: it is listed first and `min_by_key` keeps
        // the first of equals.
        let all: Vec<Exposure> = mine.into_iter().chain(theirs).collect();
        let Some(winner) = all.iter().min_by_key(|x| x.exposed_ms).cloned() else {
            continue;
        };
        if theirs_first {
            taken.push(taken_from(&winner));
        }
        let mut one = Exposure {
            measures: Vec::new(),
            ..winner
        };
        for m in all.iter().flat_map(|x| &x.measures) {
            match one.measures.iter_mut().find(|o| o.key == m.key) {
                Some(o) => {
                    o.events = o.events.saturating_add(m.events);
                    o.sum = finite(o.sum + m.sum);
                }
                None => one.measures.push(UnitMeasure {
                    key: Arc::clone(&m.key),
                    events: m.events,
                    sum: m.sum,
                }),
            }
        }
        unit.push(one);
    }
    (taken, touched)
}

fn taken_from(x: &Exposure) -> Taken {
    Taken {
        experiment: Arc::clone(&x.experiment),
        variant: split_stratum(&x.variant).0.into(),
        at_ms: x.exposed_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposure(
        experiment: &str,
        variant: &str,
        at: i64,
        measures: &[(&str, u64, f64)],
    ) -> Exposure {
        Exposure {
            experiment: experiment.into(),
            variant: variant.into(),
            exposed_ms: at,
            measures: measures
                .iter()
                .map(|&(key, events, sum)| UnitMeasure {
                    key: key.into(),
                    events,
                    sum,
                })
                .collect(),
        }
    }

    #[test]
    fn an_unexposed_unit_takes_the_linked_ids_exposure_as_it_is() {
        let mut unit = vec![exposure("other", "a", 5, &[])];
        let theirs = exposure("exp", "b@2", 10, &[("click", 2, 2.0)]);
        let (taken, touched) = merge(&mut unit, vec![theirs.clone()]);
        assert_eq!(unit, vec![exposure("other", "a", 5, &[]), theirs]);
        assert_eq!(touched, vec![Arc::<str>::from("exp")]);
        assert_eq!(
            taken,
            vec![Taken {
                experiment: "exp".into(),
                variant: "b".into(),
                at_ms: 10
            }],
            "the sticky variant is the key, not the phase's stratum"
        );
    }

    #[test]
    fn the_earlier_first_exposure_wins_and_everything_counts_there_once() {
        // The anonymous id saw `control` first; the signed-in unit saw
        // `treatment` later: the person is a control unit.
        let mut unit = vec![exposure("exp", "treatment", 20, &[("click", 1, 1.0)])];
        let theirs = vec![exposure(
            "exp",
            "control",
            10,
            &[("click", 2, 2.0), ("buy", 1, 9.5)],
        )];
        let (taken, _) = merge(&mut unit, theirs);
        assert_eq!(
            unit,
            vec![exposure(
                "exp",
                "control",
                10,
                &[("click", 3, 3.0), ("buy", 1, 9.5)]
            )]
        );
        assert_eq!(taken.len(), 1);
        assert_eq!(&*taken[0].variant, "control");

        // The other way round: the unit's own first exposure stands.
        let mut unit = vec![exposure("exp", "treatment", 10, &[])];
        let (taken, _) = merge(
            &mut unit,
            vec![exposure("exp", "control", 20, &[("click", 1, 1.0)])],
        );
        assert_eq!(
            unit,
            vec![exposure("exp", "treatment", 10, &[("click", 1, 1.0)])]
        );
        assert!(taken.is_empty(), "nothing moves to the unit");
    }

    #[test]
    fn a_tie_goes_to_the_unit() {
        let mut unit = vec![exposure("exp", "treatment", 10, &[])];
        let (taken, _) = merge(&mut unit, vec![exposure("exp", "control", 10, &[])]);
        assert_eq!(unit, vec![exposure("exp", "treatment", 10, &[])]);
        assert!(taken.is_empty());
    }

    #[test]
    fn the_same_variant_sums_into_one_exposure() {
        let mut unit = vec![exposure("exp", "a", 30, &[("m", 1, 4.0)])];
        merge(&mut unit, vec![exposure("exp", "a", 10, &[("m", 2, 1.0)])]);
        assert_eq!(unit, vec![exposure("exp", "a", 10, &[("m", 3, 5.0)])]);
    }
}
