//! The audit log. An entry's key is its id, `audit_` and a UUIDv7 in hex,
//! whose first 12 digits are its time in milliseconds: the log is one
//! time-ordered range, and a time window is a key range.

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use super::{decode_json, versioned_json, Cf, Store};
use crate::domain::{AuditEntry, AuditFilter, DomainEvent, DomainEventKind};
use crate::Result;

/// When the entry under `key` was made, in ms (its UUIDv7's first 48
/// bits); `None` for a key of another shape.
pub(super) fn entry_ms(key: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(key.strip_prefix(b"audit_")?.get(..12)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// The smallest key of an entry made at or after `ms`.
fn bound(ms: u64) -> Vec<u8> {
    format!("audit_{:012x}", ms.min((1 << 48) - 1)).into_bytes()
}

impl Store {
    /// Puts `entry` into `batch` and returns its `audit.recorded` domain
    /// event, if it is announced ([`AuditEntry::announcement`]), for the
    /// caller to write with it.
    pub(crate) fn audit_into(
        &self,
        batch: &mut WriteBatch,
        entry: &AuditEntry,
    ) -> Result<Option<DomainEvent>> {
        batch.put_cf(
            self.cf(Cf::Audit),
            entry.id.as_str().as_bytes(),
            versioned_json(Cf::Audit, entry)?,
        );
        let Some(data) = entry.announcement().map_err(|e| crate::Error::Corrupt {
            cf: Cf::Audit.name(),
            reason: e.to_string(),
        })?
        else {
            return Ok(None);
        };
        let experiment = (entry.resource == crate::domain::ResourceKind::Experiment)
            .then_some(entry.resource_id.as_str());
        Ok(Some(DomainEvent::about(
            DomainEventKind::AuditRecorded,
            experiment,
            entry.at,
            serde_json::json!({ "entry": data }),
        )))
    }

    /// Writes `batch`, synced, with `audit` (the entry of the change the
    /// batch makes, if made through the API here) and its event.
    pub(crate) fn write_audited(
        &self,
        mut batch: WriteBatch,
        audit: Option<&AuditEntry>,
    ) -> Result<()> {
        let recorded: Option<DomainEvent> = audit
            .map(|entry| self.audit_into(&mut batch, entry))
            .transpose()?
            .flatten();
        let events: Vec<&DomainEvent> = recorded.iter().collect();
        self.write_with_events(batch, &events)
    }

    /// Up to `limit` entries admitted by `filter`, newest first, made in
    /// `[from_ms, to_ms)` and, with `before`, older than the entry with
    /// that id (the previous page's last), examining at most `examine`
    /// entries; with the id to go on from when it stopped before the end
    /// (at `limit`, or having examined `examine` without filling it).
    pub fn audit(
        &self,
        filter: &AuditFilter,
        (from_ms, to_ms): (u64, u64),
        before: Option<&str>,
        limit: usize,
        examine: usize,
    ) -> Result<(Vec<AuditEntry>, Option<String>)> {
        let mut upper = bound(to_ms);
        if let Some(before) = before.map(str::as_bytes).filter(|b| *b < upper.as_slice()) {
            upper = before.to_vec();
        }
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(bound(from_ms));
        options.set_iterate_upper_bound(upper.clone());
        let mut entries = Vec::new();
        let mut examined = 0;
        for item in self.db.iterator_cf_opt(
            self.cf(Cf::Audit),
            options,
            IteratorMode::From(&upper, Direction::Reverse),
        ) {
            let (key, value) = item?;
            // The cursor's own entry, whatever the bound does in reverse.
            if *key >= *upper {
                continue;
            }
            let entry: AuditEntry = decode_json(Cf::Audit, &value)?;
            examined += 1;
            let stop = examined == examine;
            let id = stop.then(|| entry.id.to_string());
            if filter.admits(&entry) {
                entries.push(entry);
                if entries.len() == limit {
                    let last = entries.last().map(|e| e.id.to_string());
                    return Ok((entries, last));
                }
            }
            if stop {
                return Ok((entries, id));
            }
        }
        Ok((entries, None))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::domain::{AuditId, Principal, ResourceKind};
    use crate::storage::StoreOptions;

    #[test]
    fn entries_are_listed_newest_first_and_dropped_once_past_their_retention() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
        let options = StoreOptions {
            dedup_window_ms: 60_000,
            retention_ms: None,
            cache_bytes: 8 << 20,
            audit_retention_ms: 60_000,
        };
        let store = Store::open_with_clock(dir.path(), options, clock.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let by = Principal::open();
        for n in 0..3 {
            let entry = AuditEntry::new(
                &by,
                clock.now(),
                "key.issued",
                ResourceKind::Key,
                format!("key_{n}"),
                None,
                None,
            );
            let mut batch = WriteBatch::default();
            let recorded = store
                .audit_into(&mut batch, &entry)
                .unwrap_or_else(|e| panic!("{e}"));
            let recorded: Vec<&DomainEvent> = recorded.iter().collect();
            store
                .write_with_events(batch, &recorded)
                .unwrap_or_else(|e| panic!("{e}"));
            std::thread::sleep(Duration::from_millis(2));
        }
        let all = AuditFilter::default();
        let ever = (0, u64::MAX);
        let (listed, next) = store
            .audit(&all, ever, None, 10, 100)
            .unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<&str> = listed.iter().map(|e| e.resource_id.as_str()).collect();
        assert_eq!(ids, ["key_2", "key_1", "key_0"]);
        assert_eq!(next, None);
        let (older, _) = store
            .audit(&all, ever, Some(listed[0].id.as_str()), 10, 100)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(older.len(), 2, "the cursor's own entry is not repeated");
        // A selective filter examines a bounded number of entries a page,
        // and says where to go on.
        let key_0 = AuditFilter {
            resource_id: Some("key_0".into()),
            ..AuditFilter::default()
        };
        let (none_yet, next) = store
            .audit(&key_0, ever, None, 10, 2)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(none_yet.is_empty());
        assert_eq!(next.as_deref(), Some(listed[1].id.as_str()));
        let (found, next) = store
            .audit(&key_0, ever, next.as_deref(), 10, 2)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((found.len(), next), (1, None));

        // Within the retention, compaction keeps them; past it, drops them.
        let kept_after_compaction = |store: &Store| {
            let cf = store.cf(Cf::Audit);
            store.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
            store
                .audit(&all, (0, u64::MAX), None, 10, 100)
                .map(|(e, _)| e.len())
                .ok()
        };
        store
            .db
            .flush_cf(store.cf(Cf::Audit))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kept_after_compaction(&store), Some(3));
        clock.advance(Duration::from_secs(61));
        assert_eq!(kept_after_compaction(&store), Some(0));
    }

    #[test]
    fn an_ids_time_is_its_key_order() {
        let id = AuditId::mint();
        let ms = entry_ms(id.as_str().as_bytes()).unwrap_or(0);
        let now =
            u64::try_from(crate::domain::unix_ms(time::OffsetDateTime::now_utc())).unwrap_or(0);
        assert!(ms <= now && now - ms < 60_000, "{ms} {now}");
        assert!(bound(ms).as_slice() <= id.as_str().as_bytes());
        assert!(bound(ms + 1).as_slice() > id.as_str().as_bytes());
        assert_eq!(entry_ms(b"other"), None);
    }
}
