//! The timeline: every so often (`results.timeline_interval_s`), each
//! running experiment's cumulative figures per variant are kept, so the
//! dashboard can draw how units and metrics grew over the experiment's
//! life. One small record per experiment per interval, written only when
//! something changed.

use std::collections::HashMap;

use super::figures::Figured;
use crate::domain::{ExperimentKey, TimelineSnapshot};
use crate::storage::{blocking, Store};

/// Remembers what was last kept per experiment, so only changes are
/// written.
#[derive(Default)]
pub(crate) struct Recorder {
    last: HashMap<ExperimentKey, TimelineSnapshot>,
}

impl Recorder {
    /// Keeps, at `at` (ms since the epoch), the snapshot of every running
    /// experiment whose figures changed since the last record. The write
    /// runs on its own task, so a slow disk never holds up the ticker.
    pub(crate) fn record(&mut self, board: &Figured, at: i64, store: &Store) {
        let mut changed = Vec::new();
        for (key, (_, figures)) in board {
            if self.last.get(key) != Some(&figures.timeline) {
                self.last.insert(key.clone(), figures.timeline.clone());
                changed.push((key.to_string(), figures.timeline.clone()));
            }
        }
        if changed.is_empty() {
            return;
        }
        let store = store.clone();
        actix::spawn(async move {
            let written = blocking(move || {
                changed
                    .iter()
                    .try_for_each(|(key, snapshot)| store.put_timeline(key, at, snapshot))
            });
            if let Err(e) = written.await {
                tracing::error!(error = %e, "writing the timeline failed");
            }
        });
    }
}
