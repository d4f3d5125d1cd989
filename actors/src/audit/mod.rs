//! Reading the audit log. Entries are written by the services that make
//! the changes, each in the same store write as its change
//! ([`Store::audit_into`](crate::storage::Store)); this is the read side.

use crate::domain::{AuditEntry, AuditFilter};
use crate::storage::{blocking, Store};
use crate::Result;

/// One page of the log.
#[derive(Debug)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// The id to pass as `before` for the next page; `None` on the last.
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
    /// `[from_ms, to_ms)`, older than the entry `before` if given.
    pub async fn page(
        &self,
        filter: AuditFilter,
        from_ms: u64,
        to_ms: u64,
        before: Option<String>,
        limit: usize,
    ) -> Result<AuditPage> {
        let store = self.store.clone();
        let entries =
            blocking(move || store.audit(&filter, from_ms, to_ms, before.as_deref(), limit))
                .await?;
        let next = (entries.len() == limit)
            .then(|| entries.last().map(|e| e.id.to_string()))
            .flatten();
        Ok(AuditPage { entries, next })
    }
}
