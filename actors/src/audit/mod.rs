//! Reading the audit log. Entries are written by the services that make
//! the changes, each in the same store write as its change
//! ([`Store::audit_into`](crate::storage::Store)); this is the read side.

use crate::domain::{AuditEntry, AuditFilter};
use crate::storage::{blocking, Store};
use crate::Result;

/// The most entries one page examines, so that a filter few entries pass
/// costs a bounded read per request; the page then ends early, with a
/// cursor to go on from.
const EXAMINED_PER_PAGE: usize = 10_000;

/// One page of the log.
#[derive(Debug)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// The id to pass as `before` for the next page; `None` on the last.
    /// A page may hold fewer than `limit` entries and still have one.
    pub next: Option<String>,
}

/// The audit log's read side: one store's.
pub struct AuditLog {
    store: Store,
}

/// One page of several stores' logs (each project keeps the entries of
/// its own changes; the server's store those of keys and projects),
/// newest first.
pub async fn page_of(
    logs: &[&AuditLog],
    filter: AuditFilter,
    (from_ms, to_ms): (u64, u64),
    before: Option<String>,
    limit: usize,
) -> Result<AuditPage> {
    let mut entries = Vec::new();
    // The newest point some log stopped at before its end: below it, that
    // log's entries were not all read, so the page ends there.
    let mut floor: Option<String> = None;
    for log in logs {
        let page = log
            .page(filter.clone(), from_ms, to_ms, before.clone(), limit)
            .await?;
        entries.extend(page.entries);
        if let Some(next) = page.next {
            floor = floor.max(Some(next));
        }
    }
    entries.sort_by(|a, b| b.id.cmp(&a.id));
    if let Some(floor) = &floor {
        entries.retain(|e| e.id.as_str() >= floor.as_str());
    }
    let full = entries.len() >= limit;
    entries.truncate(limit);
    let next = match entries.last() {
        Some(last) if full || floor.is_some() => Some(last.id.to_string()),
        None => floor,
        Some(_) => None,
    };
    Ok(AuditPage { entries, next })
}

impl AuditLog {
    /// The log kept in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Up to `limit` entries admitted by `filter`, newest first, made in
    /// `[from_ms, to_ms)`, older than the entry `before` if given (fewer
    /// when [`EXAMINED_PER_PAGE`] entries were examined first).
    pub async fn page(
        &self,
        filter: AuditFilter,
        from_ms: u64,
        to_ms: u64,
        before: Option<String>,
        limit: usize,
    ) -> Result<AuditPage> {
        let store = self.store.clone();
        let window = (from_ms, to_ms);
        let (entries, next) = blocking(move || {
            store.audit(&filter, window, before.as_deref(), limit, EXAMINED_PER_PAGE)
        })
        .await?;
        Ok(AuditPage { entries, next })
    }
}
