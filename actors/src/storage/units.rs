//! Per-unit state on disk: first exposures ([`Cf::Sticky`]) and the
//! aggregator's per-unit sums ([`Cf::Units`]).
//!
//! Both grow with every unit a client ever sends, so neither is held in
//! memory or loaded at start: they are read by point lookups for the units
//! at hand, through the bloom filters and the one bounded block cache.
//! First exposures are written as merges that keep the first value, so
//! the writer never has to read one before writing it, and two batches
//! racing to make a unit's first exposure cannot overwrite each other.

use std::sync::Arc;

use rocksdb::{IteratorMode, MergeOperands, WriteBatch};

use super::{keys, Cf, Store, VALUE_V1};
use crate::domain::{Exposure, StickyAssignment, UnitMeasure};
use crate::{Error, Result};

/// Prefix of an experiment's divergence marker in [`Cf::Meta`]; the
/// experiment key follows. Its presence says some first exposure of the
/// experiment differs from what the hash gives (see
/// [`Store::divergent_experiments`]).
const DIVERGENT_PREFIX: &[u8] = b"sticky_divergent/";

/// A unit's first exposure as stored: the variant key and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFirstExposure {
    /// Key of the variant.
    pub variant: Box<str>,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
}

impl Store {
    /// `unit`'s first exposure to `experiment`, if one is committed: one
    /// point read, answered by the bloom filter when there is none.
    pub fn first_exposure(
        &self,
        experiment: &str,
        unit: &str,
    ) -> Result<Option<StoredFirstExposure>> {
        let found = self
            .db
            .get_pinned_cf(self.cf(Cf::Sticky), keys::unit(experiment, unit))?;
        found
            .map(|value| {
                decode_first_exposure(&value).ok_or_else(|| Error::Corrupt {
                    cf: Cf::Sticky.name(),
                    reason: format!("undecodable first exposure of {unit:?} in {experiment}"),
                })
            })
            .transpose()
    }

    /// `unit`'s committed first exposures to each of `experiments`, in
    /// order: one batched read.
    pub fn first_exposures(
        &self,
        experiments: &[&str],
        unit: &str,
    ) -> Result<Vec<Option<StoredFirstExposure>>> {
        let keys: Vec<Vec<u8>> = experiments.iter().map(|e| keys::unit(e, unit)).collect();
        self.db
            .batched_multi_get_cf(self.cf(Cf::Sticky), &keys, false)
            .into_iter()
            .map(|found| Ok(found?.and_then(|v| decode_first_exposure(&v))))
            .collect()
    }

    /// Experiments with a first exposure that differs from the hash (a
    /// client reported a variant the unit would not have been assigned):
    /// only there must every assignment look its unit up. One small record
    /// per such experiment, read at start.
    pub fn divergent_experiments(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(Cf::Meta),
            IteratorMode::From(DIVERGENT_PREFIX, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, _) = item?;
            let Some(experiment) = key.strip_prefix(DIVERGENT_PREFIX) else {
                break;
            };
            out.push(String::from_utf8_lossy(experiment).into_owned());
        }
        Ok(out)
    }

    /// The stored state of each of `units`, in order (`None`: nothing
    /// stored). A record that cannot be decoded is logged, counted in
    /// `abacus_store_records_rebuilt_total{cf="units"}` and read as
    /// empty: one unit's history is lost rather than the store refusing
    /// every later batch that touches it.
    pub fn unit_states(&self, units: &[&str]) -> Result<Vec<Option<Vec<Exposure>>>> {
        let keys: Vec<Vec<u8>> = units.iter().map(|u| keys::unit_state(u)).collect();
        self.db
            .batched_multi_get_cf(self.cf(Cf::Units), &keys, false)
            .into_iter()
            .zip(units)
            .map(|(found, unit)| {
                let Some(value) = found? else {
                    return Ok(None);
                };
                let decoded = decode_unit(&value);
                if decoded.is_none() {
                    tracing::error!(unit, "an undecodable unit record is read as empty");
                    metrics::counter!(crate::metrics::STORE_RECORDS_REBUILT, "cf" => "units")
                        .increment(1);
                }
                Ok(decoded)
            })
            .collect()
    }

    /// Calls `f` with the stored state of every unit that `belongs` (one
    /// ingest partition's units), read from one point in time: a full scan
    /// of [`Cf::Units`], for recomputing a metric's derived sums after its
    /// definition changed. Undecodable records are skipped, as
    /// [`Store::unit_states`] reads them as empty.
    pub fn for_each_unit_state(
        &self,
        belongs: &dyn Fn(&str) -> bool,
        f: &mut dyn FnMut(&[Exposure]),
    ) -> Result<()> {
        let snapshot = self.db.snapshot();
        for item in snapshot.iterator_cf(self.cf(Cf::Units), IteratorMode::Start) {
            let (key, value) = item?;
            let Some(unit) = key.get(1..).and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            if !belongs(unit) {
                continue;
            }
            if let Some(exposures) = decode_unit(&value) {
                f(&exposures);
            }
        }
        Ok(())
    }

    /// Moves layout-1 unit records ([`Cf::UnitExposures`], one per unit and
    /// experiment) into [`Cf::Units`] (one per unit), once: a store written
    /// by an older abacus is upgraded in place at its first open, and the
    /// legacy family is empty from then on. Returns how many units moved.
    pub(super) fn migrate_unit_exposures(&self) -> Result<usize> {
        let legacy = self.cf(Cf::UnitExposures);
        let mut iter = self.db.iterator_cf(legacy, IteratorMode::Start).peekable();
        if iter.peek().is_none() {
            return Ok(0);
        }
        let mut by_unit: std::collections::BTreeMap<Box<str>, Vec<Exposure>> =
            std::collections::BTreeMap::new();
        let mut batch = WriteBatch::default();
        for item in iter {
            let (key, value) = item?;
            batch.delete_cf(legacy, &key);
            let decoded = keys::parse_unit(&key)
                .and_then(|(exp, unit)| Some((unit, decode_legacy(exp.as_str(), &value)?)));
            match decoded {
                Some((unit, exposures)) => {
                    by_unit.entry(unit.into()).or_default().extend(exposures)
                }
                None => {
                    tracing::error!(key = ?key, "an undecodable legacy unit record is dropped");
                    metrics::counter!(crate::metrics::STORE_RECORDS_REBUILT, "cf" => "units")
                        .increment(1);
                }
            }
        }
        let units = self.cf(Cf::Units);
        let mut value = Vec::new();
        for (unit, exposures) in &by_unit {
            value.clear();
            encode_unit(exposures.iter(), &mut value);
            batch.put_cf(units, keys::unit_state(unit), &value);
        }
        self.write(batch, true)?;
        tracing::warn!(
            units = by_unit.len(),
            "unit records moved to the per-unit layout"
        );
        Ok(by_unit.len())
    }

    /// Adds a first exposure (kept only if the unit has none) and, when it
    /// differs from the hash, the experiment's divergence marker, to `batch`.
    pub(super) fn write_first_exposure(&self, batch: &mut WriteBatch, r: &StickyAssignment) {
        batch.merge_cf(
            self.cf(Cf::Sticky),
            keys::unit(r.experiment.as_str(), &r.unit),
            first_exposure_value(r),
        );
        self.mark_divergent(batch, r);
    }

    /// Adds the experiment's divergence marker to `batch` when `r` differs
    /// from the hash.
    pub(super) fn mark_divergent(&self, batch: &mut WriteBatch, r: &StickyAssignment) {
        if r.diverges {
            let key = [DIVERGENT_PREFIX, r.experiment.as_str().as_bytes()].concat();
            batch.put_cf(self.cf(Cf::Meta), key, [VALUE_V1]);
        }
    }
}

/// A first exposure as [`Cf::Sticky`] stores it.
pub(super) fn first_exposure_value(r: &StickyAssignment) -> Vec<u8> {
    let mut value = Vec::with_capacity(9 + r.variant.len());
    value.push(VALUE_V1);
    value.extend_from_slice(&r.first_exposed_ms.to_be_bytes());
    value.extend_from_slice(r.variant.as_bytes());
    value
}

/// The [`Cf::Sticky`] merge operator: the first value written wins, so a
/// first exposure is never replaced by a later one.
pub(super) fn keep_first(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    existing
        .or_else(|| operands.into_iter().next())
        .map(<[u8]>::to_vec)
}

fn decode_first_exposure(value: &[u8]) -> Option<StoredFirstExposure> {
    let (&VALUE_V1, rest) = value.split_first()? else {
        return None;
    };
    let (ts, variant) = rest.split_at_checked(8)?;
    Some(StoredFirstExposure {
        variant: std::str::from_utf8(variant).ok()?.into(),
        at_ms: i64::from_be_bytes(ts.try_into().ok()?),
    })
}

/// `[v1]` then each exposure; see [`Cf::Units`]. Keys are at most 64 bytes
/// (one length byte), and a unit has far fewer than 2^16 measures.
pub(super) fn encode_unit<'a>(
    exposures: impl IntoIterator<Item = &'a Exposure>,
    out: &mut Vec<u8>,
) {
    out.push(VALUE_V1);
    for x in exposures {
        push_key(out, &x.experiment);
        encode_exposure(x, out);
    }
}

fn encode_exposure(x: &Exposure, out: &mut Vec<u8>) {
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

pub(super) fn decode_unit(value: &[u8]) -> Option<Vec<Exposure>> {
    let (&VALUE_V1, mut rest) = value.split_first()? else {
        return None;
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let experiment = take_key(&mut rest)?;
        out.push(decode_exposure(experiment, &mut rest)?);
    }
    Some(out)
}

/// A layout-1 record: one experiment's exposures, the experiment in the key.
fn decode_legacy(experiment: &str, value: &[u8]) -> Option<Vec<Exposure>> {
    let experiment: Arc<str> = experiment.into();
    let (&VALUE_V1, mut rest) = value.split_first()? else {
        return None;
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        out.push(decode_exposure(Arc::clone(&experiment), &mut rest)?);
    }
    Some(out)
}

fn decode_exposure(experiment: Arc<str>, rest: &mut &[u8]) -> Option<Exposure> {
    let variant = take_key(rest)?;
    let exposed_ms = i64::from_be_bytes(take(rest)?);
    let n = u16::from_be_bytes(take(rest)?);
    let mut measures = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let key = take_key(rest)?;
        let events = u64::from_be_bytes(take(rest)?);
        let sum = f64::from_bits(u64::from_be_bytes(take(rest)?));
        measures.push(UnitMeasure { key, events, sum });
    }
    Some(Exposure {
        experiment,
        variant,
        exposed_ms,
        measures,
    })
}

fn push_key(out: &mut Vec<u8>, key: &str) {
    let len = u8::try_from(key.len()).unwrap_or(u8::MAX);
    out.push(len);
    out.extend_from_slice(&key.as_bytes()[..usize::from(len)]);
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
    use super::super::{Commit, StoreOptions};
    use super::*;
    use crate::domain::ExperimentKey;

    /// Options for stores the tests reopen.
    const OPTIONS: StoreOptions = StoreOptions {
        dedup_window_ms: 1000,
        retention_ms: None,
        cache_bytes: 8 << 20,
        audit_retention_ms: 365 * 24 * 3600 * 1000,
    };

    fn exposure(experiment: &str, variant: &str, ms: i64, measures: Vec<UnitMeasure>) -> Exposure {
        Exposure {
            experiment: experiment.into(),
            variant: variant.into(),
            exposed_ms: ms,
            measures,
        }
    }

    fn measure(key: &str, events: u64, sum: f64) -> UnitMeasure {
        UnitMeasure {
            key: key.into(),
            events,
            sum,
        }
    }

    #[test]
    fn unit_records_round_trip_bit_for_bit() {
        let written = vec![
            exposure("a", "control", -5, vec![]),
            exposure(
                "b",
                "treatment",
                i64::MAX,
                vec![
                    measure("click", 3, 0.1 + 0.2),
                    measure("revenue", u64::MAX, -1e300),
                ],
            ),
        ];
        let mut bytes = Vec::new();
        encode_unit(&written, &mut bytes);
        assert_eq!(decode_unit(&bytes), Some(written));
        assert_eq!(decode_unit(&bytes[..bytes.len() - 1]), None);
    }

    fn first(exp: &str, unit: &str, variant: &str, ms: i64, diverges: bool) -> StickyAssignment {
        StickyAssignment {
            experiment: ExperimentKey::try_from(exp).unwrap(),
            unit: unit.into(),
            variant: variant.into(),
            first_exposed_ms: ms,
            diverges,
        }
    }

    #[test]
    fn the_first_committed_first_exposure_wins_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), OPTIONS).unwrap();
            let commit = |records: &[StickyAssignment]| {
                store
                    .commit(&Commit {
                        sticky: records,
                        next_seq: 1,
                        ..Commit::default()
                    })
                    .unwrap();
            };
            commit(&[first("a", "alice", "control", 1, false)]);
            commit(&[
                first("a", "alice", "treatment", 2, true),
                first("b", "ünï", "x", i64::MAX, false),
            ]);
            store.db.flush_cf(store.cf(Cf::Sticky)).unwrap();
            commit(&[first("a", "alice", "other", 3, false)]);
        }
        let store = Store::open(dir.path(), OPTIONS).unwrap();
        let stored = |variant: &str, at_ms| {
            Some(StoredFirstExposure {
                variant: variant.into(),
                at_ms,
            })
        };
        assert_eq!(
            store.first_exposure("a", "alice").unwrap(),
            stored("control", 1)
        );
        assert_eq!(store.first_exposure("a", "bob").unwrap(), None);
        assert_eq!(
            store.first_exposures(&["b", "a", "c"], "ünï").unwrap(),
            [stored("x", i64::MAX), None, None]
        );
        assert_eq!(store.divergent_experiments().unwrap(), ["a"]);
    }

    #[test]
    fn legacy_unit_records_move_to_the_per_unit_layout_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = exposure("a", "control", 5, vec![measure("buy", 2, 3.5)]);
        let b = exposure("b", "green", 6, vec![]);
        {
            let store = Store::open(dir.path(), OPTIONS).unwrap();
            for x in [&a, &b] {
                let mut value = vec![VALUE_V1];
                encode_exposure(x, &mut value);
                store
                    .db
                    .put_cf(
                        store.cf(Cf::UnitExposures),
                        keys::unit(&x.experiment, "alice"),
                        value,
                    )
                    .unwrap();
            }
            store
                .db
                .put_cf(
                    store.cf(Cf::UnitExposures),
                    keys::unit("a", "broken"),
                    [9u8],
                )
                .unwrap();
        }
        let store = Store::open(dir.path(), OPTIONS).unwrap();
        assert_eq!(
            store.unit_states(&["alice", "broken", "nobody"]).unwrap(),
            [Some(vec![a, b]), None, None]
        );
        assert!(store
            .db
            .iterator_cf(store.cf(Cf::UnitExposures), IteratorMode::Start)
            .next()
            .is_none());
        assert_eq!(store.migrate_unit_exposures().unwrap(), 0, "done once");
    }
}
