//! Keeps the ingest partitions' derived sums following the metric
//! definitions (capped, ratio and CUPED metrics).
//!
//! The experiments service tells the partitions an experiment's
//! definitions directly when it is created or patched, before any later
//! event is queued ([`ExposureQueue::respec`](crate::experiments::exposure::ExposureQueue::respec)).
//! This module covers the rest: [`tell_all`] at start, before anything is
//! served, and a task ([`spawn`]) that tells the partitions again
//! whenever an experiment's definitions differ from what it last told
//! them (an experiment adopted from another node in cluster mode), and
//! whenever the published totals still disagree with them a while after
//! the last tell (a tell lost to a race between two patches, a
//! recomputation that failed, a snapshot restored under older
//! definitions). A partition told what it keeps already does nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{LiveAggregates, Mailbox};
use crate::domain::{Derivations, ExperimentKey};
use crate::experiments::assignment::Compiled;
use crate::experiments::registry::Registry;

/// How often the task looks.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// How long totals may disagree with the definitions after a tell before
/// the partitions are told again: long enough for a recomputation of a
/// large partition to finish, so that a slow one is not restarted.
const HEAL_AFTER: Duration = Duration::from_secs(10);

/// Tells the partitions every experiment's definitions: what the engine
/// does once at start, before serving, so that no event of an experiment
/// whose share was never written is folded without them.
pub(crate) fn tell_all(registry: &Registry, mailbox: &Mailbox) {
    for (key, entry) in registry.load().iter() {
        let derivations = entry.slot.snapshot().experiment().derivations();
        if !derivations.is_empty() {
            mailbox.respec(key.as_str(), derivations);
        }
    }
}

/// What the task last told the partitions of one experiment.
struct Told {
    snapshot: Arc<Compiled>,
    derivations: Derivations,
    at: Instant,
}

/// Starts the task on the current actix system.
pub(crate) fn spawn(registry: Arc<Registry>, mailbox: Arc<Mailbox>, live: Arc<LiveAggregates>) {
    actix::spawn(async move {
        let mut ticks = tokio::time::interval(LOOK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut told: HashMap<ExperimentKey, Told> = HashMap::new();
        loop {
            ticks.tick().await;
            if !mailbox.is_alive() {
                return;
            }
            let entries = registry.load();
            told.retain(|key, _| entries.contains_key(key));
            for (key, entry) in entries.iter() {
                let snapshot = entry.slot.snapshot();
                let derivations = match told.get(key) {
                    Some(t) if Arc::ptr_eq(&t.snapshot, &snapshot) => t.derivations.clone(),
                    _ => snapshot.experiment().derivations(),
                };
                let changed = told.get(key).is_none_or(|t| t.derivations != derivations);
                let totals = live.get(key.as_str());
                let disagree = !totals.variants.is_empty() && totals.derived != derivations;
                let overdue = told.get(key).is_none_or(|t| t.at.elapsed() >= HEAL_AFTER);
                let mut at = told.get(key).map_or_else(Instant::now, |t| t.at);
                if changed || (disagree && overdue) {
                    mailbox.respec(key.as_str(), derivations.clone());
                    at = Instant::now();
                }
                told.insert(
                    key.clone(),
                    Told {
                        snapshot,
                        derivations,
                        at,
                    },
                );
            }
        }
    });
}
