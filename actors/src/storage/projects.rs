//! Projects, kept in the default project's store (the server's own).

use rocksdb::{IteratorMode, WriteBatch};

use super::{decode_json, versioned_json, Cf, Store};
use crate::domain::{AuditEntry, Project};
use crate::Result;

impl Store {
    /// Writes a project, synced, with the audit entry of the change that
    /// made it, if any.
    pub fn put_project(&self, project: &Project, audit: Option<&AuditEntry>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(Cf::Projects),
            project.key.as_str().as_bytes(),
            versioned_json(Cf::Projects, project)?,
        );
        self.write_audited(batch, audit)
    }

    /// Deletes a project's record, synced, with the audit entry of the
    /// deletion.
    pub fn delete_project(&self, key: &str, audit: Option<&AuditEntry>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(Cf::Projects), key.as_bytes());
        self.write_audited(batch, audit)
    }

    /// Every project, by key.
    pub fn projects(&self) -> Result<Vec<Project>> {
        self.db
            .iterator_cf(self.cf(Cf::Projects), IteratorMode::Start)
            .map(|item| decode_json(Cf::Projects, &item?.1))
            .collect()
    }
}
