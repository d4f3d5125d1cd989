//! Per-experiment aggregates ([`Cf::Aggregates`]), and the replay of
//! stored events in commit order that rebuilds them.

use rocksdb::{IteratorMode, WriteBatch};

use super::{decode_event, decode_json, keys, versioned_json, Cf, Store};
use crate::domain::AggregateChanges;
use crate::domain::{AggregatesRecord, AggregatesRecordRef, Event, ExperimentAggregates};
use crate::{Error, Result};

/// Events read per step of [`Store::for_each_event_in_commit_order`].
const REPLAY_CHUNK: usize = 10_000;
/// Present in [`Cf::Meta`] while a rebuild of the aggregates runs.
const REBUILDING_KEY: &[u8] = b"aggregates_rebuilding";

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
}

impl Store {
    /// Calls `f` with every stored event, in commit (`seq`) order, a chunk
    /// at a time. Events are keyed by experiment and time, so this first
    /// collects every event key with its `seq` (about 40 bytes each), sorts
    /// them, then reads the events in chunks: a recovery path, not a hot
    /// one.
    pub fn for_each_event_in_commit_order(
        &self,
        mut f: impl FnMut(&[Event]) -> Result<()>,
    ) -> Result<()> {
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
            f(&chunk)?;
        }
        Ok(())
    }

    /// Whether a rebuild of the aggregates was started and not finished.
    pub fn rebuild_pending(&self) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(Cf::Meta), REBUILDING_KEY)?
            .is_some())
    }

    /// Starts a rebuild: deletes every aggregate and unit record and marks
    /// the rebuild as running, in one synced write, so a crash before
    /// [`Store::finish_rebuild`] makes the next start rebuild again rather
    /// than trust half-rebuilt totals.
    pub fn start_rebuild(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        for cf in [Cf::Aggregates, Cf::Units] {
            let handle = self.cf(cf);
            for item in self.db.iterator_cf(handle, IteratorMode::Start) {
                batch.delete_cf(handle, item?.0);
            }
        }
        batch.put_cf(self.cf(Cf::Meta), REBUILDING_KEY, [1u8]);
        self.write_synced(batch)
    }

    /// Writes one step of a rebuild.
    pub fn write_aggregates(&self, changes: &AggregateChanges<'_>) -> Result<()> {
        let mut batch = WriteBatch::default();
        let cf = self.cf(Cf::Aggregates);
        for (key, aggregates) in &changes.experiments {
            batch.put_cf(
                cf,
                key.as_bytes(),
                versioned_json(Cf::Aggregates, &AggregatesRecordRef(aggregates))?,
            );
        }
        let cf = self.cf(Cf::Units);
        let mut value = Vec::new();
        for unit in &changes.units {
            value.clear();
            super::units::encode_unit(unit.exposures, &mut value);
            batch.put_cf(cf, keys::unit_state(unit.unit), &value);
        }
        self.write_synced(batch)
    }

    /// Marks the rebuild done.
    pub fn finish_rebuild(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(Cf::Meta), REBUILDING_KEY);
        self.write_synced(batch)
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<()> {
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }
}
