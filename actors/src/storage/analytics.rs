//! Reads of analytics buckets and of a unit's events, and the merge
//! operator that combines bucket deltas.

use rocksdb::{Direction, IteratorMode, MergeOperands, ReadOptions};

use super::{decode_event, decode_json, keys, Cf, Store, VALUE_V1};
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

fn decode_bucket(value: &[u8]) -> Option<Bucket> {
    decode_json(Cf::Analytics, value).ok()
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
    let mut out = vec![VALUE_V1];
    // A bucket holds only finite numbers (inputs are bounded at ingestion),
    // so it always serialises.
    serde_json::to_writer(&mut out, &merged).ok()?;
    Some(out)
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
}
