//! Retention: raw events are deleted once they have been kept for the
//! configured time after abacus received them.
//!
//! Events are keyed by their own timestamp, which a client chooses, but
//! only within `[received - max_event_age, received + skew]` (checked at
//! ingestion). So deleting every event whose *timestamp* is older than
//! `keep + max_event_age` never removes one received less than `keep` ago:
//! nothing acknowledged disappears before its time, and nothing is kept
//! longer than `keep + max_event_age + skew`.
//!
//! A sweep lays one range tombstone per experiment (and one for events
//! without an experiment) over the keys older than the cutoff. That is a
//! handful of small writes, so ingestion never waits on it; RocksDB drops
//! the covered data at compaction. Aggregates are not touched: results keep
//! counting expired events, while a rebuild from events no longer can.

use std::sync::Arc;
use std::time::Duration;

use crate::experiments::registry::Registry;
use crate::storage::{blocking, Store};
use crate::Result;

/// How long raw events are kept and how often that is enforced.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// How long an event is kept at least, counted from its receipt.
    pub keep: Duration,
    /// How far in the past an event's timestamp may be when it arrives.
    pub max_event_age: Duration,
    /// Time between sweeps; the first runs at start.
    pub every: Duration,
}

impl Retention {
    /// Events whose timestamp is older than this are past their time
    /// whenever they arrived (see the module docs).
    pub fn by_timestamp(&self) -> Duration {
        self.keep.saturating_add(self.max_event_age)
    }
}

/// Sweeps now and then every `retention.every`, on the blocking pool, for as
/// long as the actix system runs.
pub(crate) fn spawn(retention: Retention, store: Store, registry: Arc<Registry>) {
    actix::spawn(async move {
        let mut ticks = tokio::time::interval(retention.every);
        loop {
            ticks.tick().await;
            let (store, registry) = (store.clone(), Arc::clone(&registry));
            match blocking(move || sweep(&store, &registry, retention)).await {
                Ok(cutoff_ms) => tracing::debug!(cutoff_ms, "retention sweep done"),
                Err(e) => tracing::error!(error = %e, "retention sweep failed"),
            }
        }
    });
}

/// Deletes every event whose timestamp is older than now minus
/// [`Retention::by_timestamp`]; returns the cutoff.
fn sweep(store: &Store, registry: &Registry, retention: Retention) -> Result<i64> {
    let keep_ms = u64::try_from(retention.by_timestamp().as_millis()).unwrap_or(u64::MAX);
    let cutoff_ms = i64::try_from(store.now_ms().saturating_sub(keep_ms)).unwrap_or(0);
    for key in registry.load().keys() {
        store.delete_events_before(Some(key), cutoff_ms)?;
    }
    store.delete_events_before(None, cutoff_ms)?;
    Ok(cutoff_ms)
}
