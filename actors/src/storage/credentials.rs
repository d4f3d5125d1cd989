//! API keys issued through the API.

use rocksdb::{IteratorMode, WriteOptions};

use super::{decode_json, versioned_json, Cf, Store};
use crate::domain::ApiKey;
use crate::Result;

impl Store {
    /// Writes a key's record, synced: an issued secret works after a crash.
    pub fn put_api_key(&self, key: &ApiKey) -> Result<()> {
        self.db.put_cf_opt(
            self.cf(Cf::ApiKeys),
            key.id.as_str().as_bytes(),
            versioned_json(Cf::ApiKeys, key)?,
            &synced(),
        )?;
        Ok(())
    }

    /// Deletes a key's record, synced: a revoked secret stays revoked
    /// after a crash.
    pub fn delete_api_key(&self, id: &str) -> Result<()> {
        self.db
            .delete_cf_opt(self.cf(Cf::ApiKeys), id.as_bytes(), &synced())?;
        Ok(())
    }

    /// Every key, by id.
    pub fn api_keys(&self) -> Result<Vec<ApiKey>> {
        self.db
            .iterator_cf(self.cf(Cf::ApiKeys), IteratorMode::Start)
            .map(|item| decode_json(Cf::ApiKeys, &item?.1))
            .collect()
    }
}

fn synced() -> WriteOptions {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    sync
}
