//! RocksDB, the only store. [`Store`] opens the database with every column
//! family in [`Cf`] and offers typed reads and writes; key layouts live in
//! [`keys`]. Callers must not call it from an async worker thread: it
//! blocks on disk.

mod cf;
pub mod keys;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};

pub use cf::Cf;

use crate::domain::{Experiment, ExperimentKey};
use crate::{Error, Result};

/// Version of the on-disk layout, kept in [`Cf::Meta`].
const SCHEMA_VERSION: u8 = 1;
const SCHEMA_KEY: &[u8] = b"schema_version";
/// First byte of every value: the version of its encoding.
const VALUE_V1: u8 = 1;

/// A unit's first exposure to an experiment, as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyRecord {
    /// The experiment.
    pub experiment: ExperimentKey,
    /// The unit.
    pub unit: Box<str>,
    /// Key of the variant the unit was served.
    pub variant: Box<str>,
    /// When, in milliseconds since the Unix epoch.
    pub first_exposed_ms: u64,
}

/// A handle on the open database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

impl Store {
    /// Opens (creating if needed) the database under `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options.increase_parallelism(2);
        let families = Cf::ALL.iter().map(|cf| {
            let mut cf_options = Options::default();
            cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(cf.name(), cf_options)
        });
        let db = DB::open_cf_descriptors(&options, path, families)?;
        let store = Self { db: Arc::new(db) };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<()> {
        let meta = self.cf(Cf::Meta);
        match self.db.get_cf(meta, SCHEMA_KEY)? {
            None => self.db.put_cf(meta, SCHEMA_KEY, [SCHEMA_VERSION])?,
            Some(v) if v.as_slice() == [SCHEMA_VERSION] => {}
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

    /// Writes an experiment record, synced to disk: control-plane changes
    /// are rare and must survive a power cut once acknowledged.
    pub fn put_experiment(&self, experiment: &Experiment) -> Result<()> {
        let mut value = vec![VALUE_V1];
        serde_json::to_writer(&mut value, experiment).map_err(|e| Error::Corrupt {
            cf: Cf::Experiments.name(),
            reason: e.to_string(),
        })?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.put_cf_opt(
            self.cf(Cf::Experiments),
            experiment.key.as_str(),
            value,
            &sync,
        )?;
        Ok(())
    }

    /// Every stored experiment, in key order.
    pub fn experiments(&self) -> Result<Vec<Experiment>> {
        let corrupt = |reason: String| Error::Corrupt {
            cf: Cf::Experiments.name(),
            reason,
        };
        self.db
            .iterator_cf(self.cf(Cf::Experiments), IteratorMode::Start)
            .map(|item| {
                let (key, value) = item?;
                match value.split_first() {
                    Some((&VALUE_V1, json)) => serde_json::from_slice(json)
                        .map_err(|e| corrupt(format!("{}: {e}", String::from_utf8_lossy(&key)))),
                    _ => Err(corrupt(format!(
                        "{}: unknown value version",
                        String::from_utf8_lossy(&key)
                    ))),
                }
            })
            .collect()
    }

    /// Persists first exposures in one atomic batch (WAL, not fsynced: a
    /// process crash loses nothing, a power cut may lose the last batches).
    pub fn put_sticky(&self, records: &[StickyRecord]) -> Result<()> {
        let cf = self.cf(Cf::Sticky);
        let mut batch = WriteBatch::default();
        for r in records {
            let key = keys::sticky(&r.experiment, &r.unit);
            let mut value = Vec::with_capacity(9 + r.variant.len());
            value.push(VALUE_V1);
            value.extend_from_slice(&r.first_exposed_ms.to_be_bytes());
            value.extend_from_slice(r.variant.as_bytes());
            batch.put_cf(cf, key, value);
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Every persisted first exposure, grouped by experiment.
    pub fn sticky(&self) -> impl Iterator<Item = Result<StickyRecord>> + '_ {
        self.db
            .iterator_cf(self.cf(Cf::Sticky), IteratorMode::Start)
            .map(|item| {
                let (key, value) = item?;
                decode_sticky(&key, &value).ok_or_else(|| Error::Corrupt {
                    cf: Cf::Sticky.name(),
                    reason: format!("undecodable record {key:?}"),
                })
            })
    }

    /// Flushes the write-ahead log to disk; called once at shutdown.
    pub fn flush_wal(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

fn decode_sticky(key: &[u8], value: &[u8]) -> Option<StickyRecord> {
    let (experiment, unit) = keys::parse_sticky(key)?;
    let (&VALUE_V1, rest) = value.split_first()? else {
        return None;
    };
    let (ts, variant) = rest.split_at_checked(8)?;
    Some(StickyRecord {
        experiment,
        unit: unit.into(),
        variant: std::str::from_utf8(variant).ok()?.into(),
        first_exposed_ms: u64::from_be_bytes(ts.try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(exp: &str, unit: &str, variant: &str, ms: u64) -> StickyRecord {
        StickyRecord {
            experiment: ExperimentKey::try_from(exp).unwrap(),
            unit: unit.into(),
            variant: variant.into(),
            first_exposed_ms: ms,
        }
    }

    #[test]
    fn sticky_records_round_trip_through_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let written = vec![
            record("a", "alice", "control", 1),
            record("a", "bob", "green", 2),
            record("b", "ünï", "x", u64::MAX),
        ];
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_sticky(&written).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let read: Vec<_> = store.sticky().collect::<Result<_>>().unwrap();
        assert_eq!(read, written);
    }

    #[test]
    fn a_future_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .db
                .put_cf(store.cf(Cf::Meta), SCHEMA_KEY, [SCHEMA_VERSION + 1])
                .unwrap();
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(Error::Corrupt { .. })
        ));
    }
}
