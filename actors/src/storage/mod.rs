//! RocksDB, the only store. [`Store`] opens the database with every column
//! family in [`Cf`] and offers typed reads and writes; key layouts live in
//! [`keys`]. Callers must not call it from an async worker thread: it
//! blocks on disk.

mod aggregates;
mod alerts;
mod aliases;
mod analytics;
mod audit;
mod cf;
mod credentials;
pub(crate) mod event_codec;
mod holdouts;
pub mod keys;
mod projects;
mod snapshot;
mod timeline;
mod units;
mod webhooks;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use foldhash::HashMap;
use rocksdb::compaction_filter::Decision as CompactionDecision;
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};

pub use aliases::Arrived;
pub(crate) use analytics::bucket_deltas;
pub use analytics::AnalyticsFilter;
pub use cf::Cf;
pub use snapshot::Restored;
pub use units::StoredFirstExposure;
pub use webhooks::AttemptWrite;

use crate::clock::Clock;
use crate::domain::{
    unix_ms, AggregateChanges, AggregatesRecordRef, AuditEntry, Bucket, DomainEvent, Event,
    EventType, Experiment, ExperimentKey, ExperimentRecord, StickyAssignment,
};
use crate::{Error, Result};

/// Version of the on-disk layout, kept in [`Cf::Meta`]. Layout 2 has
/// projects: a store of layout 1 holds the `default` project's data, and
/// is stamped 2 the first time this build opens it (the `projects` family
/// is created empty; the default project is recorded by the server).
/// A build that reads only layout 1 then refuses the store rather than
/// ignore its projects.
const SCHEMA_VERSION: u8 = 2;
const SCHEMA_KEY: &[u8] = b"schema_version";
/// The next event sequence number, written with every event batch.
const NEXT_SEQ_KEY: &[u8] = b"next_event_seq";

/// In [`Cf::Meta`], cluster mode: the event log sequence a partition's
/// state was folded to.
fn stream_seq_key(partition: u16) -> Vec<u8> {
    format!("stream_seq/{partition}").into_bytes()
}
/// Prefix of an extra sink's cursor in [`Cf::Meta`]; the sink's name follows.
const SINK_CURSOR_PREFIX: &[u8] = b"sink_cursor/";
/// First byte of every value: the version of its encoding.
const VALUE_V1: u8 = 1;
/// How long an open prediction is kept after its join window ends: the
/// default `ingest.max_event_age_s` (7 days) and a day.
pub const PREDICTION_GRACE_MS: u64 = 8 * 86_400_000;

/// How long the store keeps what it expires on its own.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Client event ids older than this are dropped at compaction.
    pub dedup_window_ms: u64,
    /// Unit event-index entries older than this are dropped at compaction
    /// (the events themselves by the retention sweep); `None` keeps them.
    pub retention_ms: Option<u64>,
    /// The block cache every column family shares: RocksDB's memory for
    /// reads, bounded whatever the store holds.
    pub cache_bytes: usize,
    /// Audit log entries older than this are dropped at compaction.
    pub audit_retention_ms: u64,
}

/// Everything one committed batch writes, in one RocksDB WriteBatch.
#[derive(Default)]
pub struct Commit<'a> {
    /// Numbered events.
    pub events: &'a [Event],
    /// First exposures they may establish (each kept only if its unit has
    /// none yet).
    pub sticky: &'a [StickyAssignment],
    /// Client event ids to remember for de-duplication, with their units.
    pub client_ids: &'a [ClientId<'a>],
    /// The sequence number after the last event.
    pub next_seq: u64,
    /// Aggregates the events changed: the committing partition's shares.
    pub aggregates: Option<AggregateChanges<'a>>,
    /// The ingest partition committing, whose aggregate shares these are.
    pub partition: u16,
    /// Analytics bucket deltas, by [`keys::bucket`], merged into the store.
    pub buckets: Option<&'a HashMap<Vec<u8>, Bucket>>,
    /// fsync the write-ahead log before returning: set when an
    /// `ack=persisted` caller waits on the batch (one sync for all of them).
    pub sync: bool,
    /// Cluster mode: the last event log sequence of the partition these
    /// events came from, stored with the state they produce, so that what
    /// was folded is known exactly whenever the node stops.
    pub stream_seq: Option<u64>,
}

/// A client event id and its unit: de-duplication is per unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId<'a> {
    /// The unit the event is about.
    pub unit: &'a str,
    /// The id the client gave it.
    pub id: &'a str,
}

/// A handle on the open database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// The next outbox sequence number. Held while an experiment change and
    /// its domain event are written, so outbox keys commit in order.
    next_outbox: Arc<Mutex<u64>>,
    /// Counts outbox writes; its receivers (webhook dispatcher, live
    /// stream) wake on every change.
    outbox_written: Arc<tokio::sync::watch::Sender<u64>>,
    /// What "now" is for expiry and for the commit time of event ids.
    clock: Arc<dyn Clock>,
    /// Some id was ever linked to a unit: only then are ids resolved (see
    /// [`aliases`]).
    linked: Arc<AtomicBool>,
}

impl Store {
    /// Opens (creating if needed) the database under `path`, on the
    /// system clock: for tests; the engine opens it on its own clock.
    #[cfg(test)]
    pub(crate) fn open(path: &Path, options: StoreOptions) -> Result<Self> {
        Self::open_with_clock(path, options, Arc::new(crate::clock::SystemClock))
    }

    /// Opens (creating if needed) the database under `path`, expiring by
    /// `clock`'s time.
    pub fn open_with_clock(
        path: &Path,
        options: StoreOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let StoreOptions {
            dedup_window_ms,
            retention_ms,
            cache_bytes,
            audit_retention_ms,
        } = options;
        // One block cache for every family, index and filter blocks inside
        // the same budget.
        let cache = rocksdb::Cache::new_lru_cache(cache_bytes);
        let table = table_options(&cache, true);
        let scanned = table_options(&cache, false);
        // Every family's memtables are charged to the same cache, so what
        // the store holds for reads and for writes together stays within
        // `cache_bytes` however fast events arrive; a full budget flushes
        // the largest memtable. The write-ahead log is bounded too: past
        // it, the families holding its oldest entries are flushed.
        let memtables = rocksdb::WriteBufferManager::new_write_buffer_manager_with_cache(
            cache_bytes / 2,
            false,
            cache.clone(),
        );
        // Compactions run at the lowest CPU priority, so on a small machine
        // they take the cycles requests leave rather than adding tail
        // latency to assignment; flushes keep normal priority (a flush that
        // waits stalls writes). Compaction that falls behind slows writes
        // through RocksDB's own level-0 triggers, which the mailboxes turn
        // into 503s, not into unbounded memory.
        let mut env = rocksdb::Env::new()?;
        env.lower_thread_pool_cpu_priority();
        let mut options = Options::default();
        options.set_env(&env);
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // One flush and three compactions at a time: with a single
        // compaction slot, one long rewrite of the events held up every
        // other family's, whose level-0 files then piled up to the stall
        // trigger (at 300k events/s the writers spent more time delayed by
        // RocksDB than encoding). Compactions run niced, so extra slots
        // take idle cycles, not request time.
        env.set_high_priority_background_threads(1);
        env.set_low_priority_background_threads(COMPACTIONS);
        options.set_max_background_jobs(1 + COMPACTIONS);
        options.set_write_buffer_manager(&memtables);
        options.set_max_total_wal_size((cache_bytes as u64).max(64 << 20));
        let memtable_bytes = (cache_bytes / 4).clamp(1 << 20, 64 << 20);
        let families = Cf::ALL.iter().map(|&cf| {
            let mut cf_options = Options::default();
            cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
            cf_options.set_write_buffer_size(memtable_bytes);
            if matches!(cf, Cf::Events | Cf::UnitEvents) {
                cf_options.set_block_based_table_factory(&scanned);
                // Written at the rate of events and read by range scans
                // (exports, rebuilds) and by point reads of keys an index
                // or a scan has just found (a unit's events, a sink's
                // replay), never by lookups of keys that may be absent,
                // which many level-0 files and no filters slow. Merging 16
                // at a time rewrites the level below a quarter as often as
                // the default 4, and the stall triggers leave compaction
                // room to catch up after a burst instead of delaying writes.
                cf_options.set_level_zero_file_num_compaction_trigger(16);
                cf_options.set_level_zero_slowdown_writes_trigger(48);
                cf_options.set_level_zero_stop_writes_trigger(72);
            } else {
                cf_options.set_block_based_table_factory(&table);
            }
            if cf == Cf::Analytics {
                cf_options.set_merge_operator_associative("bucket_merge", analytics::merge_buckets);
            }
            if cf == Cf::Sticky {
                cf_options.set_merge_operator_associative("keep_first", units::keep_first);
            }
            if let (Cf::UnitEvents, Some(keep)) = (cf, retention_ms) {
                let clock = Arc::clone(&clock);
                cf_options.set_compaction_filter("expired_unit_events", move |_, key, _| {
                    match keys::unit_event_ms(key) {
                        Some(ms) if ms < now_ms(&*clock).saturating_sub(keep) => {
                            CompactionDecision::Remove
                        }
                        _ => CompactionDecision::Keep,
                    }
                });
            }
            if cf == Cf::Audit {
                let clock = Arc::clone(&clock);
                cf_options.set_compaction_filter("expired_audit", move |_, key, _| {
                    match audit::entry_ms(key) {
                        Some(ms) if ms < now_ms(&*clock).saturating_sub(audit_retention_ms) => {
                            CompactionDecision::Remove
                        }
                        _ => CompactionDecision::Keep,
                    }
                });
            }
            if cf == Cf::Predictions {
                let clock = Arc::clone(&clock);
                cf_options.set_compaction_filter("expired_predictions", move |_, _, value| {
                    // Kept past its join window for as long as an outcome
                    // dated inside the window may still arrive (7 days'
                    // `ingest.max_event_age_s` by default) and a day of skew.
                    let cutoff = now_ms(&*clock).saturating_sub(PREDICTION_GRACE_MS);
                    if seen_within(value.get(..8).unwrap_or_default(), cutoff) {
                        CompactionDecision::Keep
                    } else {
                        CompactionDecision::Remove
                    }
                });
            }
            if cf == Cf::EventIds {
                let clock = Arc::clone(&clock);
                cf_options.set_compaction_filter("expired_event_ids", move |_, _, value| {
                    if seen_within(value, now_ms(&*clock).saturating_sub(dedup_window_ms)) {
                        CompactionDecision::Keep
                    } else {
                        CompactionDecision::Remove
                    }
                });
            }
            ColumnFamilyDescriptor::new(cf.name(), cf_options)
        });
        let db = DB::open_cf_descriptors(&options, path, families)?;
        let mut store = Self {
            db: Arc::new(db),
            next_outbox: Arc::default(),
            outbox_written: Arc::new(tokio::sync::watch::Sender::new(0)),
            clock,
            linked: Arc::default(),
        };
        store.check_schema()?;
        if store.any_link()? {
            store.links_exist();
        }
        store.migrate_unit_exposures()?;
        store.migrate_aggregates()?;
        let last = store
            .db
            .iterator_cf(store.cf(Cf::Outbox), IteratorMode::End)
            .next()
            .transpose()?
            .and_then(|(key, _)| key.as_ref().try_into().ok().map(u64::from_be_bytes));
        store.next_outbox = Arc::new(Mutex::new(last.map_or(1, |l| l + 1)));
        Ok(store)
    }

    fn check_schema(&self) -> Result<()> {
        let meta = self.cf(Cf::Meta);
        match self.db.get_cf(meta, SCHEMA_KEY)? {
            None => self.db.put_cf(meta, SCHEMA_KEY, [SCHEMA_VERSION])?,
            Some(v) if v.as_slice() == [SCHEMA_VERSION] => {}
            Some(v) if v.as_slice() == [1] => {
                let mut sync = WriteOptions::default();
                sync.set_sync(true);
                self.db
                    .put_cf_opt(meta, SCHEMA_KEY, [SCHEMA_VERSION], &sync)?;
                tracing::info!(
                    from = 1,
                    to = SCHEMA_VERSION,
                    "store layout migrated: its data is the default project's"
                );
            }
            Some(v) => {
                return Err(Error::Corrupt {
                    cf: Cf::Meta.name(),
                    reason: format!("schema version {v:?}, this build reads {SCHEMA_VERSION}"),
                })
            }
        }
        Ok(())
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every family in Cf::ALL is opened in `open`, so this cannot miss.
        self.db
            .cf_handle(cf.name())
            .unwrap_or_else(|| unreachable!("column family {} is opened at start", cf.name()))
    }

    /// The clock the store expires by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Now by the store's clock, in milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        now_ms(&*self.clock)
    }

    /// Writes an experiment record and the domain event its change caused,
    /// atomically and synced to disk: control-plane changes are rare and
    /// must survive a power cut once acknowledged.
    pub fn put_experiment(
        &self,
        experiment: &Experiment,
        event: Option<&DomainEvent>,
    ) -> Result<()> {
        self.write_with_events(self.experiment_batch(experiment)?, event.as_slice())
    }

    /// [`Store::put_experiment`] of a change made through the API, with its
    /// audit entry and `audit.recorded` event in the same write.
    pub fn put_experiment_audited(
        &self,
        experiment: &Experiment,
        event: Option<&DomainEvent>,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut batch = self.experiment_batch(experiment)?;
        let recorded = self.audit_into(&mut batch, audit)?;
        let events: Vec<&DomainEvent> = event.into_iter().chain(recorded.as_ref()).collect();
        self.write_with_events(batch, &events)
    }

    /// A batch writing an experiment record.
    pub(crate) fn experiment_batch(&self, experiment: &Experiment) -> Result<WriteBatch> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(Cf::Experiments),
            experiment.key.as_str(),
            versioned_json(Cf::Experiments, &ExperimentRecord::from(experiment))?,
        );
        Ok(batch)
    }

    /// Appends a domain event that changes nothing else (`webhook.test`).
    pub fn append_outbox(&self, event: &DomainEvent) -> Result<()> {
        self.write_with_events(WriteBatch::default(), &[event])
    }

    /// Writes `batch` plus `events` at the next outbox positions, synced,
    /// and wakes the outbox's readers if there were any.
    pub(crate) fn write_with_events(
        &self,
        mut batch: WriteBatch,
        events: &[&DomainEvent],
    ) -> Result<()> {
        let values = events
            .iter()
            .map(|e| versioned_json(Cf::Outbox, e))
            .collect::<Result<Vec<_>>>()?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        {
            let mut next = self.next_outbox.lock().map_err(|_| Error::Unavailable)?;
            for (i, value) in values.into_iter().enumerate() {
                batch.put_cf(self.cf(Cf::Outbox), (*next + i as u64).to_be_bytes(), value);
            }
            self.db.write_opt(batch, &sync)?;
            *next += events.len() as u64;
        }
        if !events.is_empty() {
            self.outbox_written.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// A receiver that changes after every outbox write.
    pub fn outbox_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.outbox_written.subscribe()
    }

    /// The sequence number of the last outbox entry (0 when empty).
    pub fn outbox_last(&self) -> Result<u64> {
        Ok(self
            .next_outbox
            .lock()
            .map_err(|_| Error::Unavailable)?
            .saturating_sub(1))
    }

    /// Up to `limit` domain events with sequence numbers after `after`, in order.
    pub fn outbox(&self, after: u64, limit: usize) -> Result<Vec<(u64, DomainEvent)>> {
        let start = after.saturating_add(1).to_be_bytes();
        self.db
            .iterator_cf(
                self.cf(Cf::Outbox),
                IteratorMode::From(&start, Direction::Forward),
            )
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                let corrupt = |reason: String| Error::Corrupt {
                    cf: Cf::Outbox.name(),
                    reason,
                };
                let seq = key
                    .as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt(format!("bad key {key:?}")))?;
                Ok((seq, decode_json(Cf::Outbox, &value)?))
            })
            .collect()
    }

    /// Every stored experiment, in key order.
    pub fn experiments(&self) -> Result<Vec<Experiment>> {
        self.db
            .iterator_cf(self.cf(Cf::Experiments), IteratorMode::Start)
            .map(|item| {
                decode_json::<ExperimentRecord>(Cf::Experiments, &item?.1).map(Experiment::from)
            })
            .collect()
    }

    /// Commits one batch atomically through the write-ahead log. Unless
    /// `commit.sync`, the WAL is not fsynced: a process crash loses nothing
    /// committed, a power cut may lose the last unsynced batches. With
    /// `sync` the batch (and every earlier one) survives a power cut.
    pub fn commit(&self, commit: &Commit<'_>) -> Result<()> {
        let batch = self.prepare(commit)?;
        self.write(batch, commit.sync)
    }

    /// Writes a batch [`Store::prepare`] built, fsynced if `sync`.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// Encodes everything `commit` writes into one WriteBatch, without
    /// writing it: the costly part of a commit, which ingest partitions do
    /// side by side before they write in `seq` order.
    pub fn prepare(&self, commit: &Commit<'_>) -> Result<WriteBatch> {
        let mut batch = WriteBatch::default();
        let events_cf = self.cf(Cf::Events);
        let mut value = Vec::with_capacity(256);
        let units_cf = self.cf(Cf::UnitEvents);
        for e in commit.events {
            value.clear();
            event_codec::encode(e, &mut value);
            let key = keys::event(e.experiment.as_ref(), e.timestamp_ms, e.seq);
            batch.put_cf(
                units_cf,
                keys::unit_event(&e.unit_id, e.timestamp_ms, e.seq),
                &key,
            );
            batch.put_cf(events_cf, key, &value);
        }
        if let Some(buckets) = commit.buckets {
            let cf = self.cf(Cf::Analytics);
            for (key, bucket) in buckets {
                batch.merge_cf(cf, key, analytics::encode_bucket(bucket)?);
            }
        }
        for r in commit.sticky {
            self.write_first_exposure(&mut batch, r);
        }
        let ids_cf = self.cf(Cf::EventIds);
        let now = self.now_ms().to_be_bytes();
        for id in commit.client_ids {
            batch.put_cf(ids_cf, keys::event_id(id.unit, id.id), now);
        }
        if let Some(changes) = &commit.aggregates {
            let cf = self.cf(Cf::Aggregates);
            for (key, aggregates) in &changes.experiments {
                value.clear();
                value.push(VALUE_V1);
                serde_json::to_writer(&mut value, &AggregatesRecordRef(aggregates)).map_err(
                    |err| Error::Corrupt {
                        cf: Cf::Aggregates.name(),
                        reason: err.to_string(),
                    },
                )?;
                batch.put_cf(cf, keys::aggregates(key, commit.partition), &value);
            }
            let cf = self.cf(Cf::Units);
            for unit in &changes.units {
                value.clear();
                units::encode_unit(unit.exposures, &mut value);
                batch.put_cf(cf, keys::unit_state(unit.unit), &value);
            }
            self.write_predictions(&mut batch, changes);
        }
        batch.put_cf(
            self.cf(Cf::Meta),
            NEXT_SEQ_KEY,
            commit.next_seq.to_be_bytes(),
        );
        if let Some(seq) = commit.stream_seq {
            batch.put_cf(
                self.cf(Cf::Meta),
                stream_seq_key(commit.partition),
                seq.to_be_bytes(),
            );
        }
        Ok(batch)
    }

    /// Cluster mode: the last event log sequence folded into `partition`'s
    /// state in this store; 0 when none was.
    pub fn stream_seq(&self, partition: u16) -> Result<u64> {
        let value = self
            .db
            .get_cf(self.cf(Cf::Meta), stream_seq_key(partition))?;
        Ok(value
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// The last event `seq` the sink `name` wrote and made durable; 0 when
    /// it has written nothing yet.
    pub fn sink_cursor(&self, name: &str) -> Result<u64> {
        let Some(value) = self.db.get_cf(self.cf(Cf::Meta), sink_cursor_key(name))? else {
            return Ok(0);
        };
        let seq = match value.split_first() {
            Some((&VALUE_V1, seq)) => <[u8; 8]>::try_from(seq).ok(),
            _ => None,
        };
        seq.map(u64::from_be_bytes).ok_or_else(|| Error::Corrupt {
            cf: Cf::Meta.name(),
            reason: format!("sink cursor of {name}: {value:?}"),
        })
    }

    /// Moves the sink `name`'s cursor to `seq`. Not synced: a cursor lost
    /// with the last unsynced WAL records only makes the sink write those
    /// events again.
    pub fn set_sink_cursor(&self, name: &str, seq: u64) -> Result<()> {
        let mut value = [0u8; 9];
        value[0] = VALUE_V1;
        value[1..].copy_from_slice(&seq.to_be_bytes());
        self.db
            .put_cf(self.cf(Cf::Meta), sink_cursor_key(name), value)?;
        Ok(())
    }

    /// Up to `limit` stored events with `seq > after`, in `seq` order: what
    /// a sink replays from its cursor. Scans every event key (the `seq` is
    /// the key's last eight bytes, so no value is decoded for the scan):
    /// retention bounds it, and sinks call it only at start and after an
    /// error. Keeps at most `limit` keys in memory per call.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let cf = self.cf(Cf::Events);
        let mut options = ReadOptions::default();
        options.fill_cache(false);
        let mut iter = self.db.raw_iterator_cf_opt(cf, options);
        iter.seek_to_first();
        // The `limit` smallest seqs above `after`, largest on top.
        let mut smallest: std::collections::BinaryHeap<(u64, Box<[u8]>)> =
            std::collections::BinaryHeap::with_capacity(limit.min(1 << 16) + 1);
        while let Some(key) = iter.key() {
            let seq = keys::trailing_u64(key).unwrap_or(0);
            let wanted = seq > after
                && (smallest.len() < limit || smallest.peek().is_some_and(|(top, _)| seq < *top));
            if wanted {
                smallest.push((seq, key.into()));
                if smallest.len() > limit {
                    smallest.pop();
                }
            }
            iter.next();
        }
        iter.status()?;
        let keys = smallest.into_sorted_vec();
        let mut events = Vec::with_capacity(keys.len());
        let values = self
            .db
            .batched_multi_get_cf(cf, keys.iter().map(|(_, key)| key), false);
        for value in values {
            // Gone since the scan (retention): nothing to replay.
            if let Some(value) = value? {
                events.push(decode_event(&value)?);
            }
        }
        Ok(events)
    }

    /// The sequence number the next committed event gets.
    pub fn next_seq(&self) -> Result<u64> {
        Ok(self
            .db
            .get_cf(self.cf(Cf::Meta), NEXT_SEQ_KEY)?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1))
    }

    /// Each (unit, `prediction_id`)'s open prediction, `None` when there
    /// is none (never made, joined, or dropped well past its join window;
    /// the join checks the window itself).
    pub fn open_predictions(&self, ids: &[(&str, &str)]) -> Result<Vec<Option<Event>>> {
        let cf = self.cf(Cf::Predictions);
        let keys: Vec<Vec<u8>> = ids.iter().map(|(u, id)| keys::prediction(u, id)).collect();
        self.db
            .batched_multi_get_cf(cf, &keys, false)
            .into_iter()
            .map(|found| {
                let Some(value) = found? else {
                    return Ok(None);
                };
                let (_expires, event) = value.split_at_checked(8).ok_or(Error::Corrupt {
                    cf: Cf::Predictions.name(),
                    reason: "a value without its expiry".to_owned(),
                })?;
                decode_event(event).map(Some)
            })
            .collect()
    }

    /// Puts the open predictions of `changes` into `batch`, and deletes
    /// the joined ones.
    pub(crate) fn write_predictions(&self, batch: &mut WriteBatch, changes: &AggregateChanges<'_>) {
        let cf = self.cf(Cf::Predictions);
        let mut value = Vec::new();
        for p in &changes.predictions {
            let key = keys::prediction(p.unit, p.id);
            match p.open {
                Some((event, expires_ms)) => {
                    value.clear();
                    value.extend_from_slice(&u64::try_from(expires_ms).unwrap_or(0).to_be_bytes());
                    event_codec::encode(event, &mut value);
                    batch.put_cf(cf, key, &value);
                }
                None => batch.delete_cf(cf, key),
            }
        }
    }

    /// For each id, whether it was committed for its unit at or after
    /// `since_ms`.
    pub fn seen_ids(&self, ids: &[ClientId<'_>], since_ms: u64) -> Result<Vec<bool>> {
        let cf = self.cf(Cf::EventIds);
        let keys: Vec<Vec<u8>> = ids.iter().map(|c| keys::event_id(c.unit, c.id)).collect();
        self.db
            .batched_multi_get_cf(cf, &keys, false)
            .into_iter()
            .map(|found| Ok(found?.is_some_and(|v| seen_within(&v, since_ms))))
            .collect()
    }

    /// Up to `limit` events of `experiment` (or of no experiment) with
    /// `from_ms <= timestamp < to_ms`, starting after the key `after`.
    /// Returns the events and the key to continue from, if more remain.
    pub fn events(
        &self,
        experiment: Option<&ExperimentKey>,
        from_ms: i64,
        to_ms: i64,
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Event>, Option<Vec<u8>>)> {
        let start = keys::event_bound(experiment, from_ms);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(keys::event_bound(experiment, to_ms));
        let from = match after {
            Some(after) if after >= start.as_slice() => after.to_vec(),
            _ => start,
        };
        let iter = self.db.iterator_cf_opt(
            self.cf(Cf::Events),
            options,
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut events = Vec::with_capacity(limit.min(1024));
        let mut last: Option<Box<[u8]>> = None;
        let mut bytes = 0usize;
        for item in iter {
            let (key, value) = item?;
            if Some(&*key) == after {
                continue;
            }
            if events.len() == limit || (bytes >= max_bytes && !events.is_empty()) {
                // More remain: continue after the last key returned.
                return Ok((events, last.map(Vec::from)));
            }
            bytes += value.len();
            events.push(decode_event(&value)?);
            last = Some(key);
        }
        Ok((events, None))
    }

    /// The newest events of `experiment` of type `kind`, newest first: up
    /// to `limit` of them among its newest `max_scanned` events (a bound
    /// on the work, whatever else the experiment's events are).
    pub fn newest_events(
        &self,
        experiment: &ExperimentKey,
        kind: &EventType,
        limit: usize,
        max_scanned: usize,
    ) -> Result<Vec<Event>> {
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(keys::event_prefix(Some(experiment)));
        let end = keys::event_bound(Some(experiment), i64::MAX);
        let iter = self.db.iterator_cf_opt(
            self.cf(Cf::Events),
            options,
            IteratorMode::From(&end, Direction::Reverse),
        );
        let mut events = Vec::new();
        for item in iter.take(max_scanned) {
            let (_, value) = item?;
            let event = decode_event(&value)?;
            if event.kind == *kind {
                events.push(event);
                if events.len() == limit {
                    break;
                }
            }
        }
        Ok(events)
    }

    /// Deletes the events of `experiment` (or of no experiment) older than
    /// `cutoff_ms` with one range tombstone: cheap, and never blocks writers.
    pub fn delete_events_before(
        &self,
        experiment: Option<&ExperimentKey>,
        cutoff_ms: i64,
    ) -> Result<()> {
        self.db.delete_range_cf(
            self.cf(Cf::Events),
            keys::event_bound(experiment, 0),
            keys::event_bound(experiment, cutoff_ms),
        )?;
        Ok(())
    }

    /// RocksDB's own figures: (live SST bytes, pending compaction bytes,
    /// whether writes are delayed or stopped), over all column families.
    pub fn health(&self) -> Result<(u64, u64, bool)> {
        let mut live = 0;
        let mut pending = 0;
        for cf in Cf::ALL {
            let handle = self.cf(cf);
            live += self
                .db
                .property_int_value_cf(handle, "rocksdb.live-sst-files-size")?
                .unwrap_or(0);
            pending += self
                .db
                .property_int_value_cf(handle, "rocksdb.estimate-pending-compaction-bytes")?
                .unwrap_or(0);
        }
        let stopped = self
            .db
            .property_int_value("rocksdb.is-write-stopped")?
            .unwrap_or(0);
        let delayed = self
            .db
            .property_int_value("rocksdb.actual-delayed-write-rate")?
            .unwrap_or(0);
        Ok((live, pending, stopped > 0 || delayed > 0))
    }

    /// Flushes the write-ahead log to disk; called once at shutdown.
    pub fn flush_wal(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

/// Background compactions RocksDB runs at once (at the lowest CPU priority).
const COMPACTIONS: i32 = 3;

/// Table options over the shared `cache`. With `bloom`, each file carries a
/// bloom filter so a point read of a key that is not there rarely touches
/// disk; families never asked for a key that may be absent go without, and
/// their flushes and compactions skip hashing every key into one.
fn table_options(cache: &rocksdb::Cache, bloom: bool) -> rocksdb::BlockBasedOptions {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    if bloom {
        table.set_bloom_filter(10.0, false);
    }
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // Partitioned: a point read loads one small partition of a file's
    // index and filter, not the whole of each. In a store many times the
    // cache, whole filters and indexes were evicted and read back for
    // nearly every lookup (half the writers' CPU in a 100M-event store).
    // The top level of each stays pinned.
    table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_pin_top_level_index_and_filter(true);
    table
}

/// [`SINK_CURSOR_PREFIX`] then the sink's name.
fn sink_cursor_key(name: &str) -> Vec<u8> {
    [SINK_CURSOR_PREFIX, name.as_bytes()].concat()
}

/// `[v1][JSON]`.
fn versioned_json(cf: Cf, value: &impl serde::Serialize) -> Result<Vec<u8>> {
    let mut out = vec![VALUE_V1];
    serde_json::to_writer(&mut out, value).map_err(|e| Error::Corrupt {
        cf: cf.name(),
        reason: e.to_string(),
    })?;
    Ok(out)
}

/// A stored event: the binary encoding, or JSON as layout 1 wrote it.
fn decode_event(value: &[u8]) -> Result<Event> {
    event_codec::decode(value).map_err(|reason| Error::Corrupt {
        cf: Cf::Events.name(),
        reason,
    })
}

/// The inverse of [`versioned_json`]: strict on the version byte.
fn decode_json<T: serde::de::DeserializeOwned>(cf: Cf, value: &[u8]) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt {
        cf: cf.name(),
        reason,
    };
    match value.split_first() {
        Some((&VALUE_V1, json)) => serde_json::from_slice(json).map_err(|e| corrupt(e.to_string())),
        _ => Err(corrupt("unknown value version".into())),
    }
}

/// Whether an [`Cf::EventIds`] value records a time at or after `since_ms`.
fn seen_within(value: &[u8], since_ms: u64) -> bool {
    value
        .try_into()
        .map(u64::from_be_bytes)
        .is_ok_and(|at| at >= since_ms)
}

/// Runs store work on the blocking pool, never on an async worker.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::Unavailable)?
}

/// The clock's time in milliseconds since the Unix epoch (0 before it).
fn now_ms(clock: &dyn Clock) -> u64 {
    u64::try_from(unix_ms(clock.now())).unwrap_or(0)
}

#[cfg(test)]
impl Store {
    /// A store in a fresh temporary directory, for tests; the directory
    /// lives as long as the returned guard.
    pub(crate) fn temporary() -> (tempfile::TempDir, Self) {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = StoreOptions {
            dedup_window_ms: 1000,
            retention_ms: None,
            cache_bytes: 8 << 20,
            audit_retention_ms: 365 * 24 * 3600 * 1000,
        };
        let store = Store::open(dir.path(), options).expect("store");
        (dir, store)
    }

    /// Writes `value` as a version-1 record under `key`, bypassing every
    /// encoder: how tests plant a record abacus could not have written.
    pub(crate) fn put_raw(&self, cf: Cf, key: &[u8], value: &[u8]) {
        let mut record = vec![VALUE_V1];
        record.extend_from_slice(value);
        self.db.put_cf(self.cf(cf), key, &record).expect("put");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_reads_through_the_one_bounded_block_cache() {
        let (_dir, store) = Store::temporary();
        for cf in Cf::ALL {
            let capacity = store
                .db
                .property_int_value_cf(store.cf(cf), "rocksdb.block-cache-capacity")
                .expect("property");
            assert_eq!(capacity, Some(8 << 20), "{}", cf.name());
        }
    }

    const WINDOW: StoreOptions = StoreOptions {
        dedup_window_ms: 7 * 24 * 3600 * 1000,
        retention_ms: None,
        cache_bytes: 8 << 20,
        audit_retention_ms: 365 * 24 * 3600 * 1000,
    };

    #[test]
    fn the_folded_stream_sequence_is_kept_per_partition_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), WINDOW).unwrap();
            assert_eq!(store.stream_seq(3).unwrap(), 0, "nothing folded yet");
            for (partition, seq) in [(3, 41), (3, 42), (1, 7)] {
                store
                    .commit(&Commit {
                        next_seq: 1,
                        partition,
                        stream_seq: Some(seq),
                        ..Commit::default()
                    })
                    .unwrap();
            }
            // A commit from outside the log leaves the sequence alone.
            store
                .commit(&Commit {
                    next_seq: 1,
                    partition: 3,
                    ..Commit::default()
                })
                .unwrap();
        }
        let store = Store::open(dir.path(), WINDOW).unwrap();
        let folded: Vec<u64> = (0..4).map(|p| store.stream_seq(p).unwrap()).collect();
        assert_eq!(folded, [0, 7, 0, 42]);
    }

    #[test]
    fn experiment_changes_and_their_domain_events_commit_together_in_order() {
        use crate::domain::{DomainEvent, DomainEventKind, ExperimentIn};
        let dir = tempfile::tempdir().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let input: ExperimentIn = serde_json::from_value(serde_json::json!({
            "key": "e", "name": "e",
            "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]
        }))
        .unwrap();
        let experiment = Experiment::create(input, now).unwrap();
        let event = |kind| DomainEvent::new(kind, &experiment, now);
        let (created, started) = (
            event(DomainEventKind::ExperimentCreated),
            event(DomainEventKind::ExperimentStarted),
        );
        {
            let store = Store::open(dir.path(), WINDOW).unwrap();
            store.put_experiment(&experiment, Some(&created)).unwrap();
            store.put_experiment(&experiment, None).unwrap();
        }
        let store = Store::open(dir.path(), WINDOW).unwrap();
        store.put_experiment(&experiment, Some(&started)).unwrap();
        let outbox = store.outbox(0, 10).unwrap();
        assert_eq!(outbox, [(1, created), (2, started.clone())]);
        assert_eq!(store.outbox(1, 10).unwrap(), [(2, started)]);
        assert_eq!(store.experiments().unwrap(), [experiment]);
    }

    #[test]
    fn a_layout_1_store_is_stamped_2_and_keeps_its_experiments() {
        let dir = tempfile::tempdir().unwrap();
        let input: crate::domain::ExperimentIn = serde_json::from_value(serde_json::json!({
            "key": "checkout", "name": "Checkout",
            "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]
        }))
        .unwrap();
        let experiment = Experiment::create(input, time::OffsetDateTime::now_utc()).unwrap();
        {
            let store = Store::open(dir.path(), WINDOW).unwrap();
            store.put_experiment(&experiment, None).unwrap();
            store
                .db
                .put_cf(store.cf(Cf::Meta), SCHEMA_KEY, [1])
                .unwrap();
        }
        let store = Store::open(dir.path(), WINDOW).unwrap();
        let stamped = store.db.get_cf(store.cf(Cf::Meta), SCHEMA_KEY).unwrap();
        assert_eq!(stamped.as_deref(), Some(&[SCHEMA_VERSION][..]));
        assert_eq!(store.experiments().unwrap(), [experiment]);
        assert_eq!(store.projects().unwrap(), []);
    }

    #[test]
    fn a_future_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), WINDOW).unwrap();
            store
                .db
                .put_cf(store.cf(Cf::Meta), SCHEMA_KEY, [SCHEMA_VERSION + 1])
                .unwrap();
        }
        assert!(matches!(
            Store::open(dir.path(), WINDOW),
            Err(Error::Corrupt { .. })
        ));
    }

    fn event(experiment: Option<&str>, ts: i64, seq: u64) -> Event {
        Event {
            seq,
            event_id: format!("e{seq}").into(),
            experiment: experiment.map(|e| ExperimentKey::try_from(e).unwrap()),
            timestamp_ms: ts,
            received_ms: ts,
            ..Event::sample("conversion", "u")
        }
    }

    #[test]
    fn event_ranges_page_by_time_and_experiment() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), WINDOW).unwrap();
        let events: Vec<Event> = (1..=10)
            .map(|i| event(Some("a"), i * 100, i as u64))
            .chain([event(Some("b"), 150, 11), event(None, 150, 12)])
            .collect();
        store
            .commit(&Commit {
                events: &events,
                next_seq: 13,
                ..Commit::default()
            })
            .unwrap();
        let a = ExperimentKey::try_from("a").unwrap();

        let (page, next) = store
            .events(Some(&a), 200, 800, None, 3, usize::MAX)
            .unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4]);
        let (rest, end) = store
            .events(Some(&a), 200, 800, next.as_deref(), 10, usize::MAX)
            .unwrap();
        assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 6, 7]);
        assert!(end.is_none());
        let (none, _) = store
            .events(None, 0, i64::MAX, None, 10, usize::MAX)
            .unwrap();
        assert_eq!(none.iter().map(|e| e.seq).collect::<Vec<_>>(), [12]);
        // A byte budget smaller than one event still returns one per page.
        let (small, next) = store.events(Some(&a), 200, 800, None, 10, 1).unwrap();
        assert_eq!(small.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        assert!(next.is_some());

        store.delete_events_before(Some(&a), 500).unwrap();
        let (kept, _) = store
            .events(Some(&a), 0, i64::MAX, None, 100, usize::MAX)
            .unwrap();
        assert_eq!(kept.first().map(|e| e.seq), Some(5));
        let b = ExperimentKey::try_from("b").unwrap();
        assert_eq!(
            store
                .events(Some(&b), 0, i64::MAX, None, 10, usize::MAX)
                .unwrap()
                .0
                .len(),
            1
        );
    }

    fn id<'a>(unit: &'a str, id: &'a str) -> ClientId<'a> {
        ClientId { unit, id }
    }

    #[test]
    fn client_ids_are_remembered_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), WINDOW).unwrap();
        store
            .commit(&Commit {
                client_ids: &[id("u", "x"), id("u", "y")],
                next_seq: 1,
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(
            store
                .seen_ids(&[id("u", "x"), id("u", "z"), id("u", "y"), id("v", "x")], 0)
                .unwrap(),
            [true, false, true, false],
            "per unit"
        );
        assert_eq!(store.seen_ids(&[id("u", "x")], u64::MAX).unwrap(), [false]);
    }

    #[test]
    fn sink_cursors_round_trip_and_replay_reads_events_after_them_in_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), WINDOW).unwrap();
        assert_eq!(
            store.sink_cursor("jsonl").unwrap(),
            0,
            "nothing written yet"
        );
        // Key order is experiment, then time; seq order differs.
        let events: Vec<Event> = (1..=9)
            .map(|seq| {
                let experiment = ["a", "b"][seq as usize % 2];
                event(Some(experiment), 1000 - seq as i64, seq)
            })
            .chain([event(None, 5, 10)])
            .collect();
        store
            .commit(&Commit {
                events: &events,
                next_seq: 11,
                sync: true,
                ..Commit::default()
            })
            .unwrap();
        store.set_sink_cursor("jsonl", 4).unwrap();
        assert_eq!(store.sink_cursor("jsonl").unwrap(), 4);
        assert_eq!(store.sink_cursor("other").unwrap(), 0);
        let seqs = |after, limit| -> Vec<u64> {
            store
                .events_after(after, limit)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(seqs(4, 100), [5, 6, 7, 8, 9, 10]);
        assert_eq!(seqs(4, 2), [5, 6], "the smallest first, at most limit");
        assert!(seqs(10, 100).is_empty());
        store
            .db
            .put_cf(store.cf(Cf::Meta), sink_cursor_key("bad"), [9u8, 0])
            .unwrap();
        assert!(matches!(
            store.sink_cursor("bad"),
            Err(Error::Corrupt { .. })
        ));
    }
}
