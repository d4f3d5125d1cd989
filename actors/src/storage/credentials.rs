//! API keys issued through the API.

use rocksdb::{IteratorMode, WriteBatch};

use super::{decode_json, versioned_json, Cf, Store};
use crate::domain::{ApiKey, AuditEntry};
use crate::Result;

impl Store {
    /// Writes a key's record, synced (an issued secret works after a
    /// crash), with the audit entry of the change that made it, if any.
    pub fn put_api_key(&self, key: &ApiKey, audit: Option<&AuditEntry>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(Cf::ApiKeys),
            key.id.as_str().as_bytes(),
            versioned_json(Cf::ApiKeys, key)?,
        );
        self.write_audited(batch, audit)
    }

    /// Deletes a key's record, synced (a revoked secret stays revoked
    /// after a crash), with the audit entry of the revocation, if any.
    pub fn delete_api_key(&self, id: &str, audit: Option<&AuditEntry>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(Cf::ApiKeys), id.as_bytes());
        self.write_audited(batch, audit)
    }

    /// Every key, by id.
    pub fn api_keys(&self) -> Result<Vec<ApiKey>> {
        self.db
            .iterator_cf(self.cf(Cf::ApiKeys), IteratorMode::Start)
            .map(|item| decode_json(Cf::ApiKeys, &item?.1))
            .collect()
    }
}
