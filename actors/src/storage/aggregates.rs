//! Per-experiment aggregates ([`Cf::Aggregates`]), and the replay of
//! stored events in commit order that rebuilds them.

use rocksdb::{IteratorMode, WriteBatch};

use super::{decode_event, decode_json, keys, versioned_json, Cf, Store};
use crate::domain::AggregateChanges;
use crate::domain::{
    AggregatesRecord, AggregatesRecordRef, Event, ExperimentAggregates, ExperimentKey,
};
use crate::{Error, Result};

/// Events read per step of [`Store::for_each_event_in_commit_order`].
const REPLAY_CHUNK: usize = 10_000;
/// Present in [`Cf::Meta`] while a rebuild of the aggregates runs.
const REBUILDING_KEY: &[u8] = b"aggregates_rebuilding";
/// In [`Cf::Meta`]: the ingest partition count that wrote the store (u16 BE).
const PARTITIONS_KEY: &[u8] = b"ingest_partitions";
/// In [`Cf::Meta`] once the aggregates are keyed by partition.
const AGGREGATES_LAYOUT_KEY: &[u8] = b"aggregates_layout";

impl Store {
    /// Every persisted share of an experiment's aggregates: (experiment,
    /// ingest partition, aggregates). An experiment's totals are the sum
    /// of its shares.
    pub fn aggregates(&self) -> Result<Vec<(String, u16, ExperimentAggregates)>> {
        let corrupt = |reason: String| Error::Corrupt {
            cf: Cf::Aggregates.name(),
            reason,
        };
        self.db
            .iterator_cf(self.cf(Cf::Aggregates), IteratorMode::Start)
            .map(|item| {
                let (key, value) = item?;
                let (experiment, partition) = keys::parse_aggregates(&key)
                    .ok_or_else(|| corrupt(format!("bad key {key:?}")))?;
                Ok((
                    experiment.to_owned(),
                    partition,
                    decode_json::<AggregatesRecord>(Cf::Aggregates, &value)?.into(),
                ))
            })
            .collect()
    }

    /// How many ingest partitions wrote this store, if it was recorded.
    pub fn ingest_partitions(&self) -> Result<Option<u16>> {
        let value = self.db.get_pinned_cf(self.cf(Cf::Meta), PARTITIONS_KEY)?;
        Ok(value.and_then(|v| <[u8; 2]>::try_from(&*v).ok().map(u16::from_be_bytes)))
    }

    /// Records `partitions` as the store's partition count, and when
    /// `totals` is given replaces every share of every experiment's
    /// aggregates with one share, in partition 0, holding its totals: how
    /// a store moves to another partition count. Shares are sums over
    /// disjoint units, so the totals are exact whichever partition owns a
    /// unit from now on. One synced write.
    pub fn set_ingest_partitions(
        &self,
        partitions: u16,
        totals: Option<&[(&str, &ExperimentAggregates)]>,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        if let Some(totals) = totals {
            let cf = self.cf(Cf::Aggregates);
            for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                batch.delete_cf(cf, item?.0);
            }
            for (experiment, aggregates) in totals {
                batch.put_cf(
                    cf,
                    keys::aggregates(experiment, 0),
                    versioned_json(Cf::Aggregates, &AggregatesRecordRef(aggregates))?,
                );
            }
        }
        batch.put_cf(self.cf(Cf::Meta), PARTITIONS_KEY, partitions.to_be_bytes());
        self.write(batch, true)
    }

    /// Moves layout-1 aggregates (keyed by the bare experiment key) to
    /// partition 0's share, once, at the first open by this version.
    pub(super) fn migrate_aggregates(&self) -> Result<()> {
        let meta = self.cf(Cf::Meta);
        if self
            .db
            .get_pinned_cf(meta, AGGREGATES_LAYOUT_KEY)?
            .is_some()
        {
            return Ok(());
        }
        let cf = self.cf(Cf::Aggregates);
        let mut batch = WriteBatch::default();
        let mut moved = 0;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            batch.delete_cf(cf, &key);
            match std::str::from_utf8(&key) {
                Ok(experiment) if ExperimentKey::try_from(experiment).is_ok() => {
                    batch.put_cf(cf, keys::aggregates(experiment, 0), value);
                    moved += 1;
                }
                // Not an experiment key: nothing to move; a rebuild from
                // the events restores whatever it described.
                _ => batch.put_cf(meta, REBUILDING_KEY, [1u8]),
            }
        }
        batch.put_cf(meta, AGGREGATES_LAYOUT_KEY, [2u8]);
        self.write(batch, true)?;
        if moved > 0 {
            tracing::warn!(
                experiments = moved,
                "aggregates moved to the partitioned layout"
            );
        }
        Ok(())
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
        for cf in [Cf::Aggregates, Cf::Units, Cf::Predictions] {
            let handle = self.cf(cf);
            for item in self.db.iterator_cf(handle, IteratorMode::Start) {
                batch.delete_cf(handle, item?.0);
            }
        }
        batch.put_cf(self.cf(Cf::Meta), REBUILDING_KEY, [1u8]);
        self.write(batch, true)
    }

    /// Writes aggregates outside an ingest commit, synced: a step of a
    /// rebuild (into partition 0's shares), or a partition's shares after
    /// it recomputed derived sums.
    pub fn write_aggregates(&self, partition: u16, changes: &AggregateChanges<'_>) -> Result<()> {
        let mut batch = WriteBatch::default();
        let cf = self.cf(Cf::Aggregates);
        for (key, aggregates) in &changes.experiments {
            batch.put_cf(
                cf,
                keys::aggregates(key, partition),
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
        self.write_predictions(&mut batch, changes);
        self.write(batch, true)
    }

    /// Marks the rebuild done.
    pub fn finish_rebuild(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(Cf::Meta), REBUILDING_KEY);
        self.write(batch, true)
    }
}
