//! Click analytics: CTR, clicked ranks, response times, engagement.
//!
//! The writer folds every committed batch into [`Bucket`]s per scope (the
//! event's experiment, `""` for none, and `"*"` for everything), variant
//! and time bucket at three resolutions (minute, hour, day), written as
//! RocksDB merges in the batch's WriteBatch. A query over any range reads
//! at most a few hundred buckets: whole days where it can, then hours,
//! then minutes, so 30 days cost the same as one. Queries resolve to the
//! minute (`from` rounds down, `to` up). A query for one unit instead reads
//! that unit's events through the `unit_events` index, exactly.

mod report;

use std::collections::{BTreeMap, HashMap};

pub use report::{
    ctr, total, ActionDwell, CompareReport, CtrReport, Distribution, EngagementReport, RankReport,
    UnitSummary, VariantCtr, VariantSummary,
};

use crate::domain::{Bucket, Event};
use crate::storage::{keys, now_ms, Store};
use crate::Result;

const MINUTE_MS: i64 = 60_000;
/// (level, width): minute, hour, day.
const LEVELS: [(u8, i64); 3] = [(0, MINUTE_MS), (1, 3_600_000), (2, 86_400_000)];
/// The scope holding every event.
const ALL: &str = "*";
/// Most events one unit query reads.
const MAX_UNIT_EVENTS: usize = 100_000;

/// Which events an analytics query covers.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only events of this experiment (its variants are broken out).
    pub experiment: Option<String>,
    /// Only this variant (needs `experiment`).
    pub variant: Option<String>,
    /// Only this unit's events.
    pub unit: Option<String>,
    /// From this time (ms since the epoch), inclusive.
    pub from_ms: Option<i64>,
    /// To this time, exclusive.
    pub to_ms: Option<i64>,
}

/// The bucket deltas of a batch of events, by [`keys::bucket`].
pub(crate) fn deltas(events: &[Event]) -> HashMap<Vec<u8>, Bucket> {
    let mut out: HashMap<Vec<u8>, Bucket> = HashMap::new();
    for e in events {
        let scope = e.experiment.as_ref().map_or("", |x| x.as_str());
        let variant = e.variant.as_ref().map_or("", |v| v.as_str());
        let ts = e.timestamp_ms.max(0);
        for (level, width) in LEVELS {
            let start = ts - ts % width;
            out.entry(keys::bucket(scope, level, start, variant))
                .or_default()
                .add(e);
            out.entry(keys::bucket(ALL, level, start, ""))
                .or_default()
                .add(e);
        }
    }
    out
}

/// The buckets the filter covers, merged per variant (`""` for events
/// without one). Blocks on the store.
pub fn query(store: &Store, filter: &Filter) -> Result<BTreeMap<String, Bucket>> {
    let from = filter.from_ms.unwrap_or(0).max(0);
    let to = filter
        .to_ms
        .unwrap_or(i64::MAX)
        .min(i64::try_from(now_ms()).unwrap_or(i64::MAX) + 2 * LEVELS[2].1);
    let mut out: BTreeMap<String, Bucket> = BTreeMap::new();
    if let Some(unit) = &filter.unit {
        for e in store.unit_events(unit, from, to, MAX_UNIT_EVENTS)? {
            let experiment = e.experiment.as_ref().map(|x| x.as_str());
            let variant = e.variant.as_ref().map_or("", |v| v.as_str());
            if filter
                .experiment
                .as_deref()
                .is_some_and(|x| Some(x) != experiment)
                || filter.variant.as_deref().is_some_and(|v| v != variant)
            {
                continue;
            }
            out.entry(variant.to_owned()).or_default().add(&e);
        }
        return Ok(out);
    }
    let scope = filter.experiment.as_deref().unwrap_or(ALL);
    let (from, to) = (
        from - from % MINUTE_MS,
        to.saturating_add(MINUTE_MS - 1) / MINUTE_MS * MINUTE_MS,
    );
    for (level, start, end) in spans(from, to) {
        for (variant, bucket) in store.buckets(scope, level, start, end)? {
            if filter.variant.as_deref().is_some_and(|v| v != variant) {
                continue;
            }
            out.entry(variant).or_default().merge(&bucket);
        }
    }
    Ok(out)
}

/// Splits minute-aligned `[from, to)` into runs of whole days, hours and
/// minutes: `(level, start, end)`, at most five.
fn spans(from: i64, to: i64) -> Vec<(u8, i64, i64)> {
    let mut out: Vec<(u8, i64, i64)> = Vec::new();
    let mut at = from;
    while at < to {
        let (level, width) = LEVELS
            .iter()
            .rev()
            .copied()
            .find(|&(_, w)| at % w == 0 && at + w <= to)
            .unwrap_or(LEVELS[0]);
        match out.last_mut() {
            Some(run) if run.0 == level && run.2 == at => run.2 += width,
            _ => out.push((level, at, at + width)),
        }
        at += width;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_into_few_whole_spans_covering_exactly() {
        let day = LEVELS[2].1;
        let from = 3 * day + 7 * 3_600_000 + 13 * MINUTE_MS;
        let to = 33 * day + 5 * 3_600_000 + 2 * MINUTE_MS;
        let spans = spans(from, to);
        assert!(spans.len() <= 5, "{spans:?}");
        assert_eq!(spans.first().map(|s| s.1), Some(from));
        assert_eq!(spans.last().map(|s| s.2), Some(to));
        assert!(spans.windows(2).all(|w| w[0].2 == w[1].1));
        assert!(spans.iter().any(|s| s.0 == 2 && s.2 - s.1 == 29 * day));
    }
}
