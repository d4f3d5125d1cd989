//! Analytics buckets: how a batch becomes bucket deltas, how a query reads
//! them, a unit's events, and the merge operator that combines deltas.
//!
//! The writer folds every committed batch into [`Bucket`]s per scope (the
//! event's experiment, `""` for none, and `"*"` for everything), variant
//! and time bucket at three resolutions (minute, hour, day), written as
//! RocksDB merges in the batch's WriteBatch. A query over any range reads
//! at most a few hundred buckets: whole days where it can, then hours,
//! then minutes, so 30 days cost the same as one. Queries resolve to the
//! minute (`from` rounds down, `to` up). A query for one unit instead reads
//! that unit's events through the `unit_events` index, exactly.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};
use rocksdb::{Direction, IteratorMode, MergeOperands, ReadOptions};

use super::{decode_event, decode_json, keys, Cf, Store};
use crate::domain::Bucket;
use crate::domain::Event;
use crate::{Error, Result};

impl Store {
    /// The buckets of `scope` at `level` starting in `[from_ms, to_ms)`,
    /// with their variant.
    pub fn buckets(
        &self,
        scope: &str,
        level: u8,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, Bucket)>> {
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(keys::bucket_bound(scope, level, to_ms));
        let start = keys::bucket_bound(scope, level, from_ms);
        let corrupt = |reason: String| Error::Corrupt {
            cf: Cf::Analytics.name(),
            reason,
        };
        self.db
            .iterator_cf_opt(
                self.cf(Cf::Analytics),
                options,
                IteratorMode::From(&start, Direction::Forward),
            )
            .map(|item| {
                let (key, value) = item?;
                let variant = keys::bucket_variant(&key, scope)
                    .ok_or_else(|| corrupt(format!("bad key {key:?}")))?;
                Ok(decode_bucket(&value).map(|bucket| (variant.to_owned(), bucket)))
            })
            // A bucket that cannot be decoded is left out of the answer
            // (and counted) rather than failing every query over its time.
            .filter_map(|r: Result<Option<_>>| {
                r.inspect(|found| {
                    if found.is_none() {
                        metrics::counter!(crate::metrics::STORE_MERGE_SKIPPED).increment(1);
                    }
                })
                .transpose()
            })
            .collect()
    }

    /// Up to `limit` events of `unit` with `from_ms <= timestamp < to_ms`,
    /// in time order.
    pub fn unit_events(
        &self,
        unit: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(keys::unit_event_bound(unit, to_ms));
        let start = keys::unit_event_bound(unit, from_ms);
        let event_keys: Vec<Box<[u8]>> = self
            .db
            .iterator_cf_opt(
                self.cf(Cf::UnitEvents),
                options,
                IteratorMode::From(&start, Direction::Forward),
            )
            .take(limit)
            .map(|item| item.map(|(_, event_key)| event_key))
            .collect::<std::result::Result<_, _>>()?;
        let events_cf = self.cf(Cf::Events);
        self.db
            .batched_multi_get_cf(events_cf, event_keys.iter(), false)
            .into_iter()
            // An index entry whose event retention already removed is skipped.
            .filter_map(|found| found.map(|v| v.map(|v| decode_event(&v))).transpose())
            .map(|r| r.map_err(Error::from).and_then(|e| e))
            .collect()
    }
}

/// First byte of a bucket in the compact encoding (`[v1]` was JSON).
const BUCKET_V2: u8 = 2;

/// `[v2][postcard]`: a bucket as stored. Counts and a sketch's bins are
/// varints, so a sketch costs a byte per bin between its lowest and highest
/// value instead of the digits and commas of its JSON (`[v1]`, still read).
pub(super) fn encode_bucket(bucket: &Bucket) -> Result<Vec<u8>> {
    postcard::to_extend(bucket, vec![BUCKET_V2]).map_err(|e| Error::Corrupt {
        cf: Cf::Analytics.name(),
        reason: e.to_string(),
    })
}

fn decode_bucket(value: &[u8]) -> Option<Bucket> {
    match value.split_first() {
        Some((&BUCKET_V2, bytes)) => postcard::from_bytes(bytes).ok(),
        _ => decode_json(Cf::Analytics, value).ok(),
    }
}

/// RocksDB's merge operator for [`Cf::Analytics`]: the stored bucket plus
/// every delta. It never fails: a failed merge would make RocksDB refuse
/// every later read of the key (and compaction), so one bad value would
/// break the endpoint for good. An undecodable value is skipped instead,
/// logged and counted in `abacus_store_merge_operands_skipped_total`; what
/// it held is lost, what the others hold is kept.
pub(super) fn merge_buckets(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    let mut skipped = 0u64;
    let mut decode = |v: &[u8]| {
        let bucket = decode_bucket(v);
        skipped += u64::from(bucket.is_none());
        bucket
    };
    let mut merged = existing.and_then(&mut decode).unwrap_or_default();
    for operand in operands {
        if let Some(delta) = decode(operand) {
            merged.merge(&delta);
        }
    }
    if skipped > 0 {
        tracing::error!(skipped, "undecodable analytics values skipped in a merge");
        metrics::counter!(crate::metrics::STORE_MERGE_SKIPPED).increment(skipped);
    }
    // A bucket holds only numbers and strings, so it always encodes.
    encode_bucket(&merged).ok()
}

const MINUTE_MS: i64 = 60_000;
/// (level, width): minute, hour, day.
const LEVELS: [(u8, i64); 3] = [(0, MINUTE_MS), (1, 3_600_000), (2, 86_400_000)];
/// The scope holding every event.
const ALL: &str = "*";
/// Most events one unit query reads.
const MAX_UNIT_EVENTS: usize = 100_000;

/// Which events an analytics query covers.
#[derive(Debug, Clone, Default)]
pub struct AnalyticsFilter {
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

/// The bucket deltas of a batch of events, by [`keys::bucket`]. Each event
/// is counted once into its minute, in its own scope and in the all-events
/// scope; the hour and day buckets are merged from those minutes. A batch's
/// events mostly share a minute, so this costs two additions per event
/// rather than one per level, and no key is built per event.
pub(crate) fn bucket_deltas(events: &[Event]) -> HashMap<Vec<u8>, Bucket> {
    let mut minutes: HashMap<(&str, i64, &str), Bucket> = HashMap::new();
    for e in events {
        let scope = e.experiment.as_ref().map_or("", |x| x.as_str());
        let variant = e.variant.as_ref().map_or("", |v| v.as_str());
        let ts = e.timestamp_ms.max(0);
        let minute = ts - ts % MINUTE_MS;
        minutes.entry((scope, minute, variant)).or_default().add(e);
        minutes.entry((ALL, minute, "")).or_default().add(e);
    }
    let mut out: HashMap<Vec<u8>, Bucket> = HashMap::with_capacity(minutes.len() * 3);
    for ((scope, minute, variant), bucket) in minutes {
        for (level, width) in &LEVELS[1..] {
            out.entry(keys::bucket(
                scope,
                *level,
                minute - minute % width,
                variant,
            ))
            .or_default()
            .merge(&bucket);
        }
        out.insert(keys::bucket(scope, LEVELS[0].0, minute, variant), bucket);
    }
    out
}

impl Store {
    /// The buckets the filter covers, merged per variant (`""` for events
    /// without one). Blocks on the store.
    pub fn analytics(&self, filter: &AnalyticsFilter) -> Result<BTreeMap<String, Bucket>> {
        let store = self;
        let from = filter.from_ms.unwrap_or(0).max(0);
        let to = filter
            .to_ms
            .unwrap_or(i64::MAX)
            .min(i64::try_from(store.now_ms()).unwrap_or(i64::MAX) + 2 * LEVELS[2].1);
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
    fn a_bad_merge_operand_is_skipped_and_the_rest_kept() {
        let (_dir, store) = Store::temporary();
        let cf = store.cf(Cf::Analytics);
        let key = keys::bucket("exp", 0, 60_000, "a");
        let one = Bucket {
            events: 1,
            clicks: 1,
            ..Bucket::default()
        };
        let good = super::super::versioned_json(Cf::Analytics, &one).unwrap();
        store.db.merge_cf(cf, &key, &good).unwrap();
        store.db.merge_cf(cf, &key, b"\x01{not json").unwrap();
        store.db.merge_cf(cf, &key, &good).unwrap();
        let buckets = store.buckets("exp", 0, 0, i64::MAX).expect("readable");
        assert_eq!(buckets.len(), 1);
        assert_eq!((buckets[0].1.events, buckets[0].1.clicks), (2, 2));
        // Stays readable after compaction, and later merges still apply.
        store.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        store.db.merge_cf(cf, &key, &good).unwrap();
        let buckets = store.buckets("exp", 0, 0, i64::MAX).expect("readable");
        assert_eq!(buckets[0].1.events, 3);
    }

    #[test]
    fn buckets_are_stored_compactly_and_json_ones_still_read() {
        let mut bucket = Bucket::default();
        for i in 0..1000 {
            bucket.add(&Event {
                properties: Some(crate::domain::Properties::of(
                    serde_json::json!({"rank": i % 5, "response_time_ms": i}),
                )),
                ..Event::sample("click", "u")
            });
        }
        let v1 = super::super::versioned_json(Cf::Analytics, &bucket).unwrap();
        let v2 = encode_bucket(&bucket).unwrap();
        assert!(
            v2.len() * 2 < v1.len(),
            "{} vs {} bytes",
            v2.len(),
            v1.len()
        );
        let seen = |b: &Bucket| {
            let times = b.response_times.as_ref().expect("response times");
            format!("{b:?} {} {:?}", times.sum(), times.quantile(0.9))
        };
        for value in [&v1, &v2] {
            assert_eq!(seen(&decode_bucket(value).expect("decodes")), seen(&bucket));
        }
        // Deltas in either encoding merge with each other.
        let (_dir, store) = Store::temporary();
        let (cf, key) = (store.cf(Cf::Analytics), keys::bucket("exp", 0, 60_000, "a"));
        store.db.merge_cf(cf, &key, &v1).unwrap();
        store.db.merge_cf(cf, &key, &v2).unwrap();
        store.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        store.db.merge_cf(cf, &key, &v1).unwrap();
        let buckets = store.buckets("exp", 0, 0, i64::MAX).expect("readable");
        assert_eq!(buckets[0].1.clicks, 3000);
        let stored = store.db.get_cf(cf, &key).unwrap().expect("stored");
        assert_eq!(stored[0], BUCKET_V2);
    }

    #[test]
    fn deltas_count_each_event_once_per_level_and_scope() {
        let kinds = ["click", "impression", "conversion"];
        let events: Vec<Event> = (0..500i64)
            .map(|i| {
                let mut e = Event::sample(kinds[(i % 3) as usize], &format!("u{}", i % 7));
                e.experiment = (i % 4 != 0).then(|| {
                    crate::domain::ExperimentKey::try_from("exp".to_owned()).expect("a key")
                });
                e.variant = (i % 2 == 0)
                    .then(|| crate::domain::VariantKey::try_from("b".to_owned()).expect("a key"));
                // Spread over minutes, hours and two days.
                e.timestamp_ms = 86_400_000 - 5_000_000 + i * 20_011;
                e.properties = Some(crate::domain::Properties::of(
                    serde_json::json!({"rank": i % 5, "response_time_ms": i % 90}),
                ));
                e
            })
            .collect();
        // The definition: every event added to each level's bucket of its
        // own scope and of the all-events scope.
        let mut expected: HashMap<Vec<u8>, Bucket> = HashMap::new();
        for e in &events {
            let scope = e.experiment.as_ref().map_or("", |x| x.as_str());
            let variant = e.variant.as_ref().map_or("", |v| v.as_str());
            for (level, width) in LEVELS {
                let start = e.timestamp_ms - e.timestamp_ms % width;
                for key in [
                    keys::bucket(scope, level, start, variant),
                    keys::bucket(ALL, level, start, ""),
                ] {
                    expected.entry(key).or_default().add(e);
                }
            }
        }
        // Equal content; a sketch's bin layout depends on the order it grew in.
        let summary = |m: HashMap<Vec<u8>, Bucket>| {
            m.into_iter()
                .map(|(k, b)| {
                    let times = b.response_times.as_ref().map(|s| {
                        let q = [0.1, 0.5, 0.9, 0.99].map(|q| s.quantile(q));
                        (s.sum(), q)
                    });
                    (k, format!("{b:?} {times:?}"))
                })
                .collect::<BTreeMap<_, _>>()
        };
        let actual = summary(bucket_deltas(&events));
        assert!(actual.len() > 20, "{} buckets", actual.len());
        assert_eq!(actual, summary(expected));
    }

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
