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

/// The audit log's read side.
pub struct AuditLog {
    store: Store,
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
