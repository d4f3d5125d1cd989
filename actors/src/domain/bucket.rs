//! [`Bucket`]: what happened in one time bucket for one scope and variant,
//! in a form that merges associatively (counts add, histograms add,
//! DDSketches merge), so RocksDB's merge operator can combine a batch's
//! deltas with what is stored without the writer ever reading.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};

use crate::domain::{Event, EventType, Properties};

/// Relative accuracy of every percentile: the value reported for rank
/// `floor(q (n - 1))` is within 1% of the exact value at that rank.
pub const SKETCH_RELATIVE_ERROR: f64 = 0.01;
/// Most actions tracked per bucket; further ones count as `other`.
const MAX_ACTIONS: usize = 32;

/// Counts and distributions of one bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bucket {
    /// Every event.
    pub events: u64,
    /// `impression` events.
    pub impressions: u64,
    /// `click` events.
    pub clicks: u64,
    /// `conversion` events.
    pub conversions: u64,
    /// Clicked ranks: rank → clicks.
    pub ranks: BTreeMap<u64, u64>,
    /// `response_time_ms` of impressions and clicks.
    pub response_times: Option<Sketch>,
    /// `dwell_time_ms` of engagements by `action` (`""` when none).
    pub dwell: BTreeMap<String, Sketch>,
}

impl Bucket {
    /// Counts one event.
    pub fn add(&mut self, e: &Event) {
        let props = e.properties.as_ref();
        self.events += 1;
        match e.kind {
            EventType::Impression => self.impressions += 1,
            EventType::Click => {
                self.clicks += 1;
                if let Some(rank) = props.and_then(Properties::rank) {
                    *self.ranks.entry(rank).or_default() += 1;
                }
            }
            EventType::Conversion => self.conversions += 1,
            EventType::Engagement => {
                if let Some(dwell) = props.and_then(Properties::dwell_time_ms) {
                    let action = props.and_then(Properties::action).unwrap_or("");
                    let action =
                        if self.dwell.contains_key(action) || self.dwell.len() < MAX_ACTIONS {
                            action
                        } else {
                            "other"
                        };
                    self.dwell
                        .entry(action.to_owned())
                        .or_insert_with(Sketch::new)
                        .add(dwell);
                }
            }
            _ => {}
        }
        if matches!(e.kind, EventType::Impression | EventType::Click) {
            if let Some(ms) = props.and_then(Properties::response_time_ms) {
                self.response_times.get_or_insert_with(Sketch::new).add(ms);
            }
        }
    }

    /// Adds `other` into this bucket.
    pub fn merge(&mut self, other: &Bucket) {
        self.events += other.events;
        self.impressions += other.impressions;
        self.clicks += other.clicks;
        self.conversions += other.conversions;
        for (rank, n) in &other.ranks {
            *self.ranks.entry(*rank).or_default() += n;
        }
        if let Some(theirs) = &other.response_times {
            match &mut self.response_times {
                Some(mine) => mine.merge(theirs),
                None => self.response_times = Some(theirs.clone()),
            }
        }
        // Bounded like `add`, so buckets merged over many batches stay small.
        for (action, theirs) in &other.dwell {
            let action = if self.dwell.contains_key(action) || self.dwell.len() < MAX_ACTIONS {
                action.as_str()
            } else {
                "other"
            };
            match self.dwell.get_mut(action) {
                Some(mine) => mine.merge(theirs),
                None => {
                    self.dwell.insert(action.to_owned(), theirs.clone());
                }
            }
        }
    }
}

/// A DDSketch (1% relative error) with exact count, sum, min and max.
#[derive(Clone, Serialize, Deserialize)]
pub struct Sketch(DDSketch);

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketch")
            .field("count", &self.count())
            .field("min", &self.min())
            .field("max", &self.max())
            .finish()
    }
}

impl Sketch {
    fn new() -> Self {
        Self(DDSketch::new(Config::new(
            SKETCH_RELATIVE_ERROR,
            2048,
            1e-9,
        )))
    }

    fn add(&mut self, v: f64) {
        self.0.add(v);
    }

    pub(crate) fn merge(&mut self, other: &Sketch) {
        // Every sketch here is built with the same config, so this holds.
        let _ = self.0.merge(&other.0);
    }

    /// Values added.
    pub fn count(&self) -> u64 {
        self.0.count() as u64
    }

    /// Their sum.
    pub fn sum(&self) -> f64 {
        self.0.sum().unwrap_or(0.0)
    }

    /// The smallest, exactly.
    pub fn min(&self) -> Option<f64> {
        self.0.min()
    }

    /// The largest, exactly.
    pub fn max(&self) -> Option<f64> {
        self.0.max()
    }

    /// The value at rank `floor(q (count - 1))`, within 1%.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.0.quantile(q).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// The exact value at rank floor(q (n - 1)) of sorted values.
    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64) as usize]
    }

    #[test]
    fn merged_sketch_percentiles_are_within_one_percent_of_exact() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // 60 "minute" sketches of skewed latencies, merged as a query does.
        let mut merged: Option<Sketch> = None;
        let mut all = Vec::new();
        for minute in 0..60 {
            let mut s = Sketch::new();
            for _ in 0..1000 {
                // Log-uniform over 0.1 ms .. 10 s, plus a slow minute.
                let v = 10f64.powf(rng.random::<f64>() * 5.0 - 1.0)
                    * if minute == 7 { 3.0 } else { 1.0 };
                s.add(v);
                all.push(v);
            }
            match &mut merged {
                Some(m) => m.merge(&s),
                None => merged = Some(s),
            }
        }
        let merged = merged.unwrap();
        all.sort_by(f64::total_cmp);
        for q in [0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999] {
            let (got, want) = (merged.quantile(q).unwrap(), exact(&all, q));
            assert!(
                (got - want).abs() <= SKETCH_RELATIVE_ERROR * want,
                "q{q}: {got} vs {want}"
            );
        }
        assert_eq!(merged.count(), 60_000);
        assert_eq!(merged.min(), all.first().copied());
        assert_eq!(merged.max(), all.last().copied());
    }

    #[test]
    fn merging_keeps_the_action_bound() {
        let mut total = Bucket::default();
        for i in 0..2 * MAX_ACTIONS {
            let mut one = Bucket::default();
            one.add(&Event {
                properties: Some(crate::domain::Properties::of(
                    serde_json::json!({"action": format!("a{i}"), "dwell_time_ms": 5}),
                )),
                ..Event::sample("engagement", "u")
            });
            total.merge(&one);
        }
        assert_eq!(total.dwell.len(), MAX_ACTIONS + 1);
        let counted: u64 = total.dwell.values().map(Sketch::count).sum();
        assert_eq!(counted, 2 * MAX_ACTIONS as u64);
        assert_eq!(total.dwell["other"].count(), MAX_ACTIONS as u64);
    }

    #[test]
    fn buckets_merge_like_their_events_combined() {
        let event = |kind: &str, props: serde_json::Value| Event {
            properties: Some(crate::domain::Properties::of(props)),
            ..Event::sample(kind, "u")
        };
        let events = [
            event("impression", serde_json::json!({"response_time_ms": 12})),
            event(
                "click",
                serde_json::json!({"item_id": "a", "rank": 3, "response_time_ms": 30}),
            ),
            event("click", serde_json::json!({"item_id": "b", "rank": 1})),
            event(
                "engagement",
                serde_json::json!({"item_id": "a", "dwell_time_ms": 900, "action": "read"}),
            ),
            event("conversion", serde_json::json!({})),
        ];
        let mut one = Bucket::default();
        events.iter().for_each(|e| one.add(e));
        let (mut a, mut b) = (Bucket::default(), Bucket::default());
        events[..2].iter().for_each(|e| a.add(e));
        events[2..].iter().for_each(|e| b.add(e));
        a.merge(&b);
        let json = |b: &Bucket| serde_json::to_value(b).unwrap();
        assert_eq!(json(&a), json(&one));
        assert_eq!(
            (one.events, one.impressions, one.clicks, one.conversions),
            (5, 1, 2, 1)
        );
        assert_eq!(one.ranks, BTreeMap::from([(1, 1), (3, 1)]));
        assert_eq!(one.dwell["read"].count(), 1);
    }
}
