//! The results monitor: looks at each running experiment's figures and
//! tells its actor, once, when the primary metric has become significant
//! (corrected always-valid p-value at or below alpha; safe to check
//! this often, which is what it is for), a sample-ratio mismatch shows, or
//! an `auto_stop` guardrail regressed (the actor then pauses the
//! experiment). The actor records it on the experiment and writes the
//! domain event with it. It also tells a bandit its next split when one is
//! due (see `results/bandit.rs`). Runs every `results.check_interval_ms`,
//! from the figures ticker.

use time::OffsetDateTime;

use super::bandit;
use super::figures::Figures;
use crate::domain::Principal;
use crate::experiments::actor::{Finding, Reallocate, RecordFinding, StopForGuardrail};
use crate::experiments::registry::Entry;
use crate::stats::bandit::DRAWS;

/// Checks one running experiment's figures at `now`; cheap (the only
/// statistics computed here are a due bandit's draws). `by` is who a
/// bandit's update is recorded as made by.
pub(crate) fn check(entry: &Entry, figures: &Figures, now: OffsetDateTime, by: &Principal) {
    let experiment = figures.compiled.experiment();
    if let Some(split) = bandit::due(experiment, &figures.aggregates, now, DRAWS) {
        entry.addr.do_send(Reallocate {
            split,
            by: by.clone(),
        });
    }
    if experiment.guardrail_stop.is_none() {
        if let Some(check) = figures
            .guardrails
            .iter()
            .find(|g| g.auto_stop && g.regressed)
        {
            entry.addr.do_send(StopForGuardrail {
                metric: check.metric.clone(),
                variant: check.variant.clone(),
                relative_lift: check.relative_lift,
                p_value: check.p_value,
                max_relative_drop: check.max_relative_drop,
            });
            return;
        }
    }
    if experiment.srm_detected_at.is_none() && figures.srm.detected {
        entry
            .addr
            .do_send(RecordFinding(Finding::SampleRatioMismatch {
                p_value: figures.srm.p_value.unwrap_or(0.0),
                units: figures.units.clone(),
            }));
    }
    let (None, Some(metric)) = (experiment.significant_at, &figures.primary) else {
        return;
    };
    let significant = metric
        .comparisons
        .iter()
        .filter(|c| c.sequential_significant)
        .min_by(|a, b| {
            let p = |c: &crate::stats::Comparison| c.sequential_p_value_adjusted.unwrap_or(1.0);
            p(a).total_cmp(&p(b))
        });
    if let Some(comparison) = significant {
        entry.addr.do_send(RecordFinding(Finding::Significant {
            metric: metric.metric.clone(),
            variant: comparison.variant.clone(),
            p_value: comparison.sequential_p_value_adjusted.unwrap_or(0.0),
            p_value_holm: comparison.sequential_p_value_holm.unwrap_or(0.0),
            correction: experiment.correction,
            relative_lift: comparison.relative.as_ref().and_then(|r| r.estimate),
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;
    use crate::clock::SystemClock;
    use crate::domain::{
        Action, Experiment, ExperimentAggregates, ExperimentIn, MeasureAggregates,
    };
    use crate::experiments::registry::Registry;
    use crate::storage::Store;

    fn running(extra: serde_json::Value) -> Experiment {
        let mut body = json!({
            "key": "exp", "name": "exp",
            "variants": [{"key": "control", "weight": 1}, {"key": "b", "weight": 1}],
            "metrics": [{"key": "buy", "kind": "binomial"}],
            "primary_metric": "buy",
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let input: ExperimentIn = serde_json::from_value(body).expect("input");
        Experiment::create(input, OffsetDateTime::now_utc())
            .and_then(|e| e.transitioned(Action::Start, None, OffsetDateTime::now_utc()))
            .expect("running")
    }

    /// Runs `check` on the figures of `experiment` with `aggregates`, then
    /// waits for the actor to have handled what it was told.
    async fn checked(experiment: Experiment, aggregates: ExperimentAggregates) -> Experiment {
        let (_dir, store) = Store::temporary();
        store.put_experiment(&experiment, None).expect("stored");
        let registry = Registry::default();
        let entry = registry.start_local(experiment, store, Arc::new(SystemClock));
        let figures = Figures::of(entry.slot.snapshot(), Arc::new(aggregates));
        check(
            &entry,
            &figures,
            OffsetDateTime::now_utc(),
            &Principal::open(),
        );
        // Wait (at most a second) for the actor to publish what it recorded.
        let before = entry.slot.snapshot();
        for _ in 0..100 {
            if !Arc::ptr_eq(&before, &entry.slot.snapshot()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        entry.slot.snapshot().experiment().clone()
    }

    #[actix::test]
    async fn a_significant_primary_metric_is_recorded_on_the_experiment() {
        let e = checked(
            running(json!({})),
            ExperimentAggregates::two_arms([5000, 5000], [500, 800]),
        )
        .await;
        assert!(e.significant_at.is_some(), "significance recorded");
        assert_eq!(e.status, crate::domain::Status::Running);
    }

    /// The primary metric's always-valid p-value alone is 0.02; beside nine
    /// other metrics that did not move, a correction across metrics makes
    /// it ten times larger.
    #[actix::test]
    async fn a_correction_across_metrics_decides_whether_the_primary_is_significant() {
        let mut aggregates = ExperimentAggregates::two_arms([5000, 5000], [500, 612]);
        let others: Vec<String> = (1..10).map(|i| format!("m{i}")).collect();
        let flat = MeasureAggregates {
            units: 500,
            events: 500,
            sum: 500.0,
            sum_squares: 500.0,
        };
        for variant in aggregates.variants.values_mut() {
            for key in &others {
                variant.measures.insert(key.clone(), flat.clone());
            }
        }
        let mut metrics = vec![json!({"key": "buy", "kind": "binomial"})];
        metrics.extend(others.iter().map(|k| json!({"key": k, "kind": "binomial"})));
        for (correction, significant) in [
            (json!("none"), true),
            (json!("holm"), false),
            (json!("bh"), false),
            (serde_json::Value::Null, true),
        ] {
            let experiment = running(
                json!({"metrics": metrics, "correction": correction, "mixing_variance": 0.01}),
            );
            let e = checked(experiment, aggregates.clone()).await;
            assert_eq!(e.significant_at.is_some(), significant, "{correction}");
        }
    }

    #[actix::test]
    async fn a_sample_ratio_mismatch_is_recorded() {
        let e = checked(
            running(json!({})),
            ExperimentAggregates::two_arms([5000, 4000], [500, 400]),
        )
        .await;
        assert!(e.srm_detected_at.is_some(), "SRM recorded");
        assert!(e.significant_at.is_none(), "no lift: nothing significant");
    }

    #[actix::test]
    async fn an_auto_stop_guardrail_that_regressed_pauses_the_experiment() {
        let guarded = running(json!({
            "guardrails": [{"metric": "buy", "max_relative_drop": 0.05, "auto_stop": true}]
        }));
        let e = checked(
            guarded,
            ExperimentAggregates::two_arms([5000, 5000], [1000, 600]),
        )
        .await;
        assert_eq!(e.status, crate::domain::Status::Paused);
        let stop = e.guardrail_stop.expect("guardrail stop recorded");
        assert_eq!((stop.metric.as_str(), stop.variant.as_str()), ("buy", "b"));
    }

    #[actix::test]
    async fn nothing_is_said_of_an_experiment_without_findings() {
        let e = checked(
            running(json!({})),
            ExperimentAggregates::two_arms([5000, 5000], [500, 505]),
        )
        .await;
        assert!(e.significant_at.is_none() && e.srm_detected_at.is_none());
        assert!(e.guardrail_stop.is_none());
    }
}
