//! The results monitor: every so often, looks at each running experiment's
//! live results and tells its actor, once, when the primary metric has
//! become significant (Holm-corrected always-valid p-value at or below
//! alpha; safe to check this often, which is what it is for), a
//! sample-ratio mismatch shows, or an `auto_stop` guardrail regressed (the
//! actor then pauses the experiment). The actor records it on the
//! experiment and writes the domain event with it.

use std::sync::Arc;
use std::time::Duration;

use super::compute as results;
use crate::domain::Status;
use crate::experiments::actor::{Finding, RecordFinding, StopForGuardrail};
use crate::experiments::registry::Registry;
use crate::ingest::LiveAggregates;

/// Checks every `every`, for as long as the actix system runs.
pub(crate) fn spawn(every: Duration, registry: Arc<Registry>, live: Arc<LiveAggregates>) {
    actix::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            check(&registry, &live);
        }
    });
}

/// One pass over the running experiments; cheap (microseconds each).
fn check(registry: &Registry, live: &LiveAggregates) {
    for entry in registry.load().values() {
        let compiled = entry.slot.snapshot();
        let experiment = compiled.experiment();
        if experiment.status != Status::Running {
            continue;
        }
        let aggregates = live.get(experiment.key.as_str());
        if experiment.guardrail_stop.is_none() && experiment.guardrails.iter().any(|g| g.auto_stop)
        {
            let regressed = results::guardrails(experiment, &aggregates)
                .into_iter()
                .find(|g| g.auto_stop && g.regressed);
            if let Some(check) = regressed {
                entry.addr.do_send(StopForGuardrail {
                    metric: check.metric,
                    variant: check.variant,
                    relative_lift: check.relative_lift,
                    p_value: check.p_value,
                    max_relative_drop: check.max_relative_drop,
                });
                continue;
            }
        }
        if experiment.srm_detected_at.is_none() {
            let (srm, units) = results::sample_ratio(experiment, &aggregates);
            if srm.detected {
                entry
                    .addr
                    .do_send(RecordFinding(Finding::SampleRatioMismatch {
                        p_value: srm.p_value.unwrap_or(0.0),
                        units,
                    }));
            }
        }
        let (None, Some(primary)) = (experiment.significant_at, &experiment.primary_metric) else {
            continue;
        };
        let results = results::compute(experiment, &aggregates, Some(primary.as_str()));
        let significant = results
            .metrics
            .iter()
            .flat_map(|m| m.comparisons.iter().map(move |c| (m, c)))
            .filter(|(_, c)| c.sequential_significant)
            .min_by(|a, b| {
                let p = |c: &crate::stats::Comparison| c.sequential_p_value_holm.unwrap_or(1.0);
                p(a.1).total_cmp(&p(b.1))
            });
        if let Some((metric, comparison)) = significant {
            entry.addr.do_send(RecordFinding(Finding::Significant {
                metric: metric.metric.clone(),
                variant: comparison.variant.clone(),
                p_value: comparison.sequential_p_value_holm.unwrap_or(0.0),
                relative_lift: comparison.relative.as_ref().and_then(|r| r.estimate),
            }));
        }
    }
}
