//! Timeline snapshots.

use rocksdb::{Direction, IteratorMode};

use super::{decode_json, keys, versioned_json, Cf, Store};
use crate::domain::TimelineSnapshot;
use crate::Result;

impl Store {
    /// Keeps an experiment's snapshot at `at_ms`. Not synced: it is derived
    /// from aggregates and a lost one only thins the chart.
    pub fn put_timeline(
        &self,
        experiment: &str,
        at_ms: i64,
        snapshot: &TimelineSnapshot,
    ) -> Result<()> {
        self.db.put_cf(
            self.cf(Cf::Timeline),
            keys::timeline(experiment, at_ms),
            versioned_json(Cf::Timeline, snapshot)?,
        )?;
        Ok(())
    }

    /// An experiment's snapshots, oldest first.
    pub fn timeline(&self, experiment: &str) -> Result<Vec<(i64, TimelineSnapshot)>> {
        let from = keys::timeline(experiment, 0);
        let prefix = &from[..from.len() - 8];
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(Cf::Timeline),
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            let Some(at) = key
                .strip_prefix(prefix)
                .and_then(|t| <[u8; 8]>::try_from(t).ok())
            else {
                break;
            };
            let at = i64::try_from(u64::from_be_bytes(at)).unwrap_or(i64::MAX);
            out.push((at, decode_json(Cf::Timeline, &value)?));
        }
        Ok(out)
    }
}
