//! Sticky assignments: the variant each unit was first exposed to, and when.
//!
//! Reads are on the assignment hot path, so every experiment keeps its
//! first exposures in memory ([`StickyTable`], a sharded concurrent map: no
//! lock is held across an await and a lookup never touches disk). A new
//! entry travels to RocksDB with the exposure event that caused it, in the
//! same committed batch; at start the tables are rebuilt from the store.

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::registry::Registry;
use crate::storage::Store;
use crate::{Error, Result};

/// A unit's first exposure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstExposure {
    /// Index of the variant it saw.
    pub variant: usize,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// One experiment's first exposures, by unit id.
#[derive(Debug, Default)]
pub struct StickyTable {
    /// Variants are at most 20, so one byte holds the index.
    units: DashMap<Box<str>, (u8, i64)>,
}

impl StickyTable {
    /// The unit's first exposure, if it has had one.
    pub fn get(&self, unit: &str) -> Option<FirstExposure> {
        self.units.get(unit).map(|e| FirstExposure {
            variant: usize::from(e.0),
            at_ms: e.1,
        })
    }

    /// Records `unit`'s first exposure unless it already has one. Returns
    /// the standing first exposure when there was one (`Err`), so a race
    /// between two requests for one unit has exactly one winner.
    pub fn insert_first(
        &self,
        unit: &str,
        first: FirstExposure,
    ) -> std::result::Result<(), FirstExposure> {
        match self.units.entry(unit.into()) {
            Entry::Occupied(e) => Err(FirstExposure {
                variant: usize::from(e.get().0),
                at_ms: e.get().1,
            }),
            Entry::Vacant(e) => {
                e.insert((first.variant as u8, first.at_ms));
                Ok(())
            }
        }
    }

    /// Undoes [`StickyTable::insert_first`] when the exposure carrying it
    /// could not be queued, so nothing unpersisted is remembered.
    pub fn forget(&self, unit: &str) {
        self.units.remove(unit);
    }

    /// Loads a persisted first exposure at start.
    pub fn restore(&self, unit: Box<str>, first: FirstExposure) {
        self.units.insert(unit, (first.variant as u8, first.at_ms));
    }
}

/// Rebuilds every experiment's sticky table from the store; returns how
/// many first exposures were restored. Blocks on the store.
pub(super) fn restore(store: &Store, registry: &Registry) -> Result<usize> {
    let entries = registry.load();
    let mut restored = 0;
    for record in store.sticky() {
        // An undecodable first exposure is skipped rather than refusing to
        // start: its unit is assigned by hash again (the same variant
        // unless weights or coverage changed since).
        let record = match record {
            Ok(record) => record,
            Err(e @ Error::Corrupt { .. }) => {
                tracing::error!(error = %e, "skipping an undecodable sticky assignment");
                metrics::counter!(crate::metrics::STORE_RECORDS_REBUILT, "cf" => "sticky")
                    .increment(1);
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(entry) = entries.get(&record.experiment) else {
            continue;
        };
        let snapshot = entry.slot.snapshot();
        if let Some(variant) = snapshot.experiment().variant_index(&record.variant) {
            let first = FirstExposure {
                variant,
                at_ms: record.first_exposed_ms,
            };
            entry.slot.sticky.restore(record.unit, first);
            restored += 1;
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_exposure_wins() {
        let table = StickyTable::default();
        let first = FirstExposure {
            variant: 1,
            at_ms: 10,
        };
        assert_eq!(table.insert_first("alice", first), Ok(()));
        let later = FirstExposure {
            variant: 0,
            at_ms: 20,
        };
        assert_eq!(table.insert_first("alice", later), Err(first));
        assert_eq!(table.get("alice"), Some(first));
        table.forget("alice");
        assert_eq!(table.get("alice"), None);
    }
}
