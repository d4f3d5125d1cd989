//! Reads of analytics buckets and of a unit's events, and the merge
//! operator that combines bucket deltas.

use rocksdb::{Direction, IteratorMode, MergeOperands, ReadOptions};

use super::{decode_event, decode_json, keys, Cf, Store, VALUE_V1};
use crate::analytics::Bucket;
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
                let bucket = decode_bucket(&value).ok_or_else(|| corrupt("bad bucket".into()))?;
                Ok((variant.to_owned(), bucket))
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
/// every delta. `None` (an undecodable value) makes RocksDB report
/// corruption rather than silently drop counts.
pub(super) fn merge_buckets(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    let mut merged = match existing {
        Some(v) => decode_bucket(v)?,
        None => Bucket::default(),
    };
    for operand in operands {
        merged.merge(&decode_bucket(operand)?);
    }
    let mut out = vec![VALUE_V1];
    serde_json::to_writer(&mut out, &merged).ok()?;
    Some(out)
}
