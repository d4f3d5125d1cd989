//! Encoding of aggregates and unit exposures ([`Cf::Aggregates`],
//! [`Cf::UnitExposures`]). Unit records are many and rewritten with every
//! batch that touches the unit, so they use a compact binary layout rather
//! than JSON.

use std::sync::Arc;

use rocksdb::{IteratorMode, WriteBatch};

use super::{decode_event, decode_json, keys, versioned_json, Cf, Store, VALUE_V1};
use crate::domain::AggregateChanges;
use crate::domain::{
    AggregatesRecord, AggregatesRecordRef, Event, ExperimentAggregates, Exposure, UnitMeasure,
};
use crate::{Error, Result};

/// Events read per step of [`Store::for_each_event_in_commit_order`].
const REPLAY_CHUNK: usize = 10_000;

impl Store {
    /// Every experiment's persisted aggregates.
    pub fn aggregates(&self) -> Result<Vec<(String, ExperimentAggregates)>> {
        let corrupt = |reason: String| Error::Corrupt {
            cf: Cf::Aggregates.name(),
            reason,
        };
        self.db
            .iterator_cf(self.cf(Cf::Aggregates), IteratorMode::Start)
            .map(|item| {
                let (key, value) = item?;
                let key = String::from_utf8(key.into_vec()).map_err(|e| corrupt(e.to_string()))?;
                Ok((
                    key,
                    decode_json::<AggregatesRecord>(Cf::Aggregates, &value)?.into(),
                ))
            })
            .collect()
    }

    /// Every persisted unit exposure, with its unit.
    pub fn unit_exposures(&self) -> Result<Vec<(Box<str>, Exposure)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(Cf::UnitExposures), IteratorMode::Start)
        {
            let (key, value) = item?;
            let decoded = keys::parse_unit(&key)
                .and_then(|(exp, unit)| Some((unit, decode_exposures(exp.as_str(), &value)?)));
            let Some((unit, exposures)) = decoded else {
                return Err(Error::Corrupt {
                    cf: Cf::UnitExposures.name(),
                    reason: format!("undecodable record {key:?}"),
                });
            };
            out.extend(exposures.into_iter().map(|x| (Box::from(unit), x)));
        }
        Ok(out)
    }
}

impl Store {
    /// Calls `f` with every stored event, in commit (`seq`) order, a chunk
    /// at a time. Events are keyed by experiment and time, so this first
    /// collects every event key with its `seq` (about 40 bytes each), sorts
    /// them, then reads the events in chunks: a recovery path, not a hot
    /// one.
    pub fn for_each_event_in_commit_order(&self, mut f: impl FnMut(&[Event])) -> Result<()> {
        let mut order: Vec<(u64, Box<[u8]>)> = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(Cf::Events), IteratorMode::Start)
        {
            let (key, _) = item?;
            let seq = keys::trailing_u64(&key).ok_or_else(|| Error::Corrupt {
                cf: Cf::Events.name(),
                reason: format!("key too short: {key:?}"),
            })?;
            order.push((seq, key));
        }
        order.sort_unstable_by_key(|(seq, _)| *seq);
        let events_cf = self.cf(Cf::Events);
        let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
        for keys in order.chunks(REPLAY_CHUNK) {
            chunk.clear();
            for found in self
                .db
                .batched_multi_get_cf(events_cf, keys.iter().map(|(_, k)| k), false)
            {
                if let Some(value) = found? {
                    chunk.push(decode_event(&value)?);
                }
            }
            f(&chunk);
        }
        Ok(())
    }

    /// Replaces every aggregate and unit-exposure record with `changes`,
    /// in one synced write (after a rebuild from events).
    pub fn replace_aggregates(&self, changes: &AggregateChanges<'_>) -> Result<()> {
        let mut batch = WriteBatch::default();
        for cf in [Cf::Aggregates, Cf::UnitExposures] {
            let handle = self.cf(cf);
            for item in self.db.iterator_cf(handle, IteratorMode::Start) {
                batch.delete_cf(handle, item?.0);
            }
        }
        let cf = self.cf(Cf::Aggregates);
        for (key, aggregates) in &changes.experiments {
            batch.put_cf(
                cf,
                key.as_bytes(),
                versioned_json(Cf::Aggregates, &AggregatesRecordRef(aggregates))?,
            );
        }
        let cf = self.cf(Cf::UnitExposures);
        let mut value = Vec::new();
        for unit in &changes.units {
            value.clear();
            encode_exposures(&unit.exposures, &mut value);
            batch.put_cf(cf, keys::unit(unit.experiment, unit.unit), &value);
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }
}

/// `[v1]` then each exposure; see [`Cf::UnitExposures`]. Keys are at most
/// 64 bytes (one length byte), and a unit has far fewer than 2^16 measures.
pub(super) fn encode_exposures(exposures: &[&Exposure], out: &mut Vec<u8>) {
    out.push(VALUE_V1);
    for x in exposures {
        push_key(out, &x.variant);
        out.extend_from_slice(&x.exposed_ms.to_be_bytes());
        let n = u16::try_from(x.measures.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for m in x.measures.iter().take(usize::from(n)) {
            push_key(out, &m.key);
            out.extend_from_slice(&m.events.to_be_bytes());
            out.extend_from_slice(&m.sum.to_bits().to_be_bytes());
        }
    }
}

fn push_key(out: &mut Vec<u8>, key: &str) {
    let len = u8::try_from(key.len()).unwrap_or(u8::MAX);
    out.push(len);
    out.extend_from_slice(&key.as_bytes()[..usize::from(len)]);
}

fn decode_exposures(experiment: &str, value: &[u8]) -> Option<Vec<Exposure>> {
    let experiment: Arc<str> = experiment.into();
    let (&VALUE_V1, mut rest) = value.split_first()? else {
        return None;
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let variant = take_key(&mut rest)?;
        let exposed_ms = i64::from_be_bytes(take(&mut rest)?);
        let n = u16::from_be_bytes(take(&mut rest)?);
        let mut measures = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let key = take_key(&mut rest)?;
            let events = u64::from_be_bytes(take(&mut rest)?);
            let sum = f64::from_bits(u64::from_be_bytes(take(&mut rest)?));
            measures.push(UnitMeasure { key, events, sum });
        }
        out.push(Exposure {
            experiment: Arc::clone(&experiment),
            variant,
            exposed_ms,
            measures,
        });
    }
    Some(out)
}

fn take<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
    let (head, tail) = rest.split_first_chunk::<N>()?;
    *rest = tail;
    Some(*head)
}

fn take_key(rest: &mut &[u8]) -> Option<Arc<str>> {
    let [len] = take::<1>(rest)?;
    let (key, tail) = rest.split_at_checked(usize::from(len))?;
    *rest = tail;
    Some(std::str::from_utf8(key).ok()?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposures_round_trip_bit_for_bit() {
        let x = |variant: &str, ms: i64, measures: Vec<UnitMeasure>| Exposure {
            experiment: "exp".into(),
            variant: variant.into(),
            exposed_ms: ms,
            measures,
        };
        let m = |key: &str, events: u64, sum: f64| UnitMeasure {
            key: key.into(),
            events,
            sum,
        };
        let written = vec![
            x("control", -5, vec![]),
            x(
                "b",
                i64::MAX,
                vec![m("click", 3, 0.1 + 0.2), m("revenue", u64::MAX, -1e300)],
            ),
        ];
        let mut bytes = Vec::new();
        encode_exposures(&written.iter().collect::<Vec<_>>(), &mut bytes);
        assert_eq!(decode_exposures("exp", &bytes), Some(written));
        assert_eq!(decode_exposures("exp", &bytes[..bytes.len() - 1]), None);
    }
}
