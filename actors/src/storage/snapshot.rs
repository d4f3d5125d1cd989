//! Cluster mode: one ingest partition's state as a snapshot another node
//! can restore. A new owner restores the latest one and folds the log only
//! after its sequence, instead of from the start.
//!
//! A snapshot holds what folding needs, read at one RocksDB snapshot so
//! that it matches the stream sequence stored with it: the partition's
//! units' state ([`Cf::Units`]), their first exposures ([`Cf::Sticky`]),
//! their client event ids ([`Cf::EventIds`], for de-duplication), their
//! open predictions ([`Cf::Predictions`]) and the partition's share of
//! every experiment's aggregates ([`Cf::Aggregates`]). Raw events, their per-unit index and analytics
//! stay with the node that folded them.
//!
//! ```text
//! [version 1] [stream sequence: u64 LE]
//! records: [family: u8] [key length: u32 LE] [key] [value length: u32 LE] [value]
//! ```

use rocksdb::{IteratorMode, WriteBatch};

use super::{decode_json, keys, stream_seq_key, Cf, Store};
use crate::domain::{AggregatesRecord, ExperimentAggregates};
use crate::{Error, Result};

const VERSION: u8 = 1;

/// The families a snapshot carries, with their byte in it.
const FAMILIES: [(u8, Cf); 5] = [
    (1, Cf::Units),
    (2, Cf::Sticky),
    (3, Cf::EventIds),
    (4, Cf::Aggregates),
    (5, Cf::Predictions),
];

/// What [`Store::restore_partition`] restored.
pub struct Restored {
    /// The stream sequence the snapshot was taken at.
    pub seq: u64,
    /// The partition's share of each experiment's aggregates.
    pub shares: Vec<(String, ExperimentAggregates)>,
}

/// The unit a key of `cf` belongs to, or for [`Cf::Aggregates`] the
/// partition its share is of.
enum Owner<'k> {
    Unit(&'k str),
    Partition(u16),
}

fn owner(cf: Cf, key: &[u8]) -> Option<Owner<'_>> {
    let unit = match cf {
        Cf::Units => key.get(1..)?,
        Cf::Sticky => key.get(1 + usize::from(*key.first()?)..)?,
        Cf::EventIds | Cf::Predictions => {
            let len = usize::from(u16::from_be_bytes([*key.first()?, *key.get(1)?]));
            key.get(2..2 + len)?
        }
        Cf::Aggregates => return keys::parse_aggregates(key).map(|(_, p)| Owner::Partition(p)),
        _ => return None,
    };
    std::str::from_utf8(unit).ok().map(Owner::Unit)
}

/// A length-prefixed part of a record.
fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    if tail.len() < len {
        return None;
    }
    let (part, tail) = tail.split_at(len);
    *rest = tail;
    Some(part)
}

impl Store {
    /// `partition`'s state and the stream sequence it was folded to, at one
    /// point in time; `belongs` says whether a unit is the partition's.
    pub fn partition_snapshot(
        &self,
        partition: u16,
        belongs: impl Fn(&str) -> bool,
    ) -> Result<(u64, Vec<u8>)> {
        let snapshot = self.db.snapshot();
        let seq = snapshot
            .get_cf(self.cf(Cf::Meta), stream_seq_key(partition))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        let mut out = Vec::with_capacity(1 << 16);
        out.push(VERSION);
        out.extend_from_slice(&seq.to_le_bytes());
        for (byte, cf) in FAMILIES {
            for item in snapshot.iterator_cf(self.cf(cf), IteratorMode::Start) {
                let (key, value) = item?;
                let ours = match owner(cf, &key) {
                    Some(Owner::Unit(unit)) => belongs(unit),
                    Some(Owner::Partition(p)) => p == partition,
                    None => false,
                };
                if ours {
                    out.push(byte);
                    for part in [&key, &value] {
                        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                        out.extend_from_slice(part);
                    }
                }
            }
        }
        Ok((seq, out))
    }

    /// Writes a snapshot of `partition` into this store, with its stream
    /// sequence, in one write. What the store held of the partition is
    /// older (state only grows with the log), so the snapshot's records
    /// replace it.
    pub fn restore_partition(&self, partition: u16, snapshot: &[u8]) -> Result<Restored> {
        let corrupt = |reason: &str| Error::Corrupt {
            cf: "snapshot",
            reason: reason.to_owned(),
        };
        let mut rest = match snapshot.split_first() {
            Some((&VERSION, rest)) => rest,
            _ => return Err(corrupt("unknown snapshot version")),
        };
        let (seq, tail) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("truncated"))?;
        let seq = u64::from_le_bytes(*seq);
        rest = tail;
        let mut batch = WriteBatch::default();
        let mut shares = Vec::new();
        while let Some((&byte, tail)) = rest.split_first() {
            rest = tail;
            let key = take(&mut rest).ok_or_else(|| corrupt("truncated"))?;
            let value = take(&mut rest).ok_or_else(|| corrupt("truncated"))?;
            let cf = FAMILIES
                .iter()
                .find(|(b, _)| *b == byte)
                .map(|(_, cf)| *cf)
                .ok_or_else(|| corrupt("unknown family"))?;
            if cf == Cf::Aggregates {
                let (experiment, p) =
                    keys::parse_aggregates(key).ok_or_else(|| corrupt("bad aggregates key"))?;
                if p != partition {
                    return Err(corrupt("a share of another partition"));
                }
                let record: AggregatesRecord = decode_json(Cf::Aggregates, value)?;
                shares.push((experiment.to_owned(), record.into()));
            }
            batch.put_cf(self.cf(cf), key, value);
        }
        batch.put_cf(
            self.cf(Cf::Meta),
            stream_seq_key(partition),
            seq.to_be_bytes(),
        );
        self.write(batch, true)?;
        Ok(Restored { seq, shares })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{
        AggregateChanges, ExperimentKey, Exposure, PredictionChange, StickyAssignment, UnitChange,
    };
    use crate::storage::{ClientId, Commit};

    fn exposure(variant: &str) -> Exposure {
        Exposure {
            experiment: Arc::from("checkout"),
            variant: Arc::from(variant),
            exposed_ms: 7,
            measures: Vec::new(),
        }
    }

    #[test]
    fn a_partition_snapshot_carries_its_units_state_and_shares_and_nothing_else() {
        let (_dir, store) = Store::temporary();
        let share = ExperimentAggregates::two_arms([3, 4], [1, 2]);
        let other = ExperimentAggregates::two_arms([9, 9], [9, 9]);
        let (alice, bob) = ([exposure("control")], [exposure("b")]);
        let sticky: Vec<StickyAssignment> = ["alice", "bob"]
            .iter()
            .map(|unit| StickyAssignment {
                experiment: ExperimentKey::try_from("checkout").unwrap(),
                unit: (*unit).into(),
                variant: "control".into(),
                first_exposed_ms: 7,
                diverges: false,
            })
            .collect();
        let ids = [
            ClientId {
                unit: "alice",
                id: "a-1",
            },
            ClientId {
                unit: "bob",
                id: "b-1",
            },
        ];
        let predictions: Vec<crate::domain::Event> = ["alice", "bob"]
            .iter()
            .map(|unit| crate::domain::Event::sample("prediction", unit))
            .collect();
        for (partition, aggregates, seq) in [(1, &share, 40), (2, &other, 9)] {
            store
                .commit(&Commit {
                    sticky: &sticky,
                    client_ids: &ids,
                    next_seq: 1,
                    partition,
                    stream_seq: Some(seq),
                    aggregates: Some(AggregateChanges {
                        experiments: vec![("checkout", aggregates)],
                        units: vec![
                            UnitChange {
                                unit: "alice",
                                exposures: &alice,
                            },
                            UnitChange {
                                unit: "bob",
                                exposures: &bob,
                            },
                        ],
                        predictions: predictions
                            .iter()
                            .map(|p| PredictionChange {
                                unit: &p.unit_id,
                                id: "p-1",
                                open: Some((p, 7)),
                            })
                            .collect(),
                    }),
                    ..Commit::default()
                })
                .unwrap();
        }

        // Alice is partition 1's; Bob another's.
        let (seq, snapshot) = store.partition_snapshot(1, |unit| unit == "alice").unwrap();
        assert_eq!(seq, 40);
        let (_dir2, fresh) = Store::temporary();
        let restored = fresh.restore_partition(1, &snapshot).unwrap();
        assert_eq!(restored.seq, 40);
        assert_eq!(restored.shares, [("checkout".to_owned(), share)]);
        assert_eq!(fresh.stream_seq(1).unwrap(), 40);
        assert_eq!(fresh.stream_seq(2).unwrap(), 0);
        assert_eq!(
            fresh.unit_states(&["alice", "bob"]).unwrap(),
            [Some(alice.to_vec()), None]
        );
        assert_eq!(fresh.seen_ids(&ids, 0).unwrap(), [true, false]);
        let open = fresh
            .open_predictions(&[("alice", "p-1"), ("bob", "p-1")])
            .unwrap();
        assert_eq!(open, [Some(predictions[0].clone()), None]);
        assert!(fresh.first_exposure("checkout", "alice").unwrap().is_some());
        assert!(fresh.first_exposure("checkout", "bob").unwrap().is_none());
        assert_eq!(
            fresh.aggregates().unwrap().len(),
            1,
            "only partition 1's share"
        );

        for cut in [0, 1, 5, snapshot.len() - 1] {
            assert!(
                fresh.restore_partition(1, &snapshot[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        assert!(
            fresh.restore_partition(2, &snapshot).is_err(),
            "another partition's shares"
        );
    }
}
