//! The timeline: every so often (`results.timeline_interval_s`), each
//! running experiment's cumulative figures per variant are kept, so the
//! dashboard can draw how units and metrics grew over the experiment's
//! life. One small record per experiment per interval, written only when
//! something changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::{Status, TimelineSnapshot};
use crate::experiments::registry::Registry;
use crate::ingest::LiveAggregates;
use crate::storage::{now_ms, Store};

/// Keeps snapshots every `every`, for as long as the actix system runs.
pub(crate) fn spawn(
    every: Duration,
    registry: Arc<Registry>,
    aggregates: Arc<LiveAggregates>,
    store: Store,
) {
    actix::spawn(async move {
        let mut last: HashMap<String, TimelineSnapshot> = HashMap::new();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let at = i64::try_from(now_ms()).unwrap_or(i64::MAX);
            let mut changed = Vec::new();
            for (key, entry) in registry.load().iter() {
                let compiled = entry.slot.snapshot();
                let experiment = compiled.experiment();
                if experiment.status != Status::Running {
                    continue;
                }
                let snapshot = TimelineSnapshot::of(experiment, &aggregates.get(key.as_str()));
                if last.get(key.as_str()) != Some(&snapshot) {
                    last.insert(key.to_string(), snapshot.clone());
                    changed.push((key.to_string(), snapshot));
                }
            }
            if changed.is_empty() {
                continue;
            }
            let store = store.clone();
            let written = tokio::task::spawn_blocking(move || {
                changed
                    .iter()
                    .try_for_each(|(key, snapshot)| store.put_timeline(key, at, snapshot))
            });
            if let Ok(Err(e)) = written.await {
                tracing::error!(error = %e, "writing the timeline failed");
            }
        }
    });
}
