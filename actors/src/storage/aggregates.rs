//! Encoding of aggregates and unit exposures ([`Cf::Aggregates`],
//! [`Cf::UnitExposures`]). Unit records are many and rewritten with every
//! batch that touches the unit, so they use a compact binary layout rather
//! than JSON.

use std::sync::Arc;

use rocksdb::IteratorMode;

use super::{decode_json, keys, Cf, Store, VALUE_V1};
use crate::domain::{ExperimentAggregates, Exposure, UnitMeasure};
use crate::{Error, Result};

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
                Ok((key, decode_json(Cf::Aggregates, &value)?))
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
