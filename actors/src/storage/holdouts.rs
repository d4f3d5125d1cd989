//! Holdouts, one small record each in [`Cf::Meta`] under
//! [`HOLDOUT_PREFIX`], written synced with the audit entry of the change.

use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::{decode_json, versioned_json, Cf, Store};
use crate::domain::{AuditEntry, Holdout};
use crate::Result;

/// Prefix of a holdout's key in [`Cf::Meta`]; the holdout key follows.
const HOLDOUT_PREFIX: &[u8] = b"holdout/";

impl Store {
    /// Writes a holdout, with the audit entry of the change.
    pub fn put_holdout(&self, holdout: &Holdout, audit: Option<&AuditEntry>) -> Result<()> {
        let mut batch = WriteBatch::default();
        let key = [HOLDOUT_PREFIX, holdout.key.as_str().as_bytes()].concat();
        batch.put_cf(self.cf(Cf::Meta), key, versioned_json(Cf::Meta, holdout)?);
        self.write_audited(batch, audit)
    }

    /// Every holdout, in key order: read at start.
    pub fn holdouts(&self) -> Result<Vec<Holdout>> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(Cf::Meta),
            IteratorMode::From(HOLDOUT_PREFIX, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(HOLDOUT_PREFIX) {
                break;
            }
            out.push(decode_json(Cf::Meta, &value)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;

    #[test]
    fn holdouts_come_back_in_key_order_and_nothing_else_does() {
        let (_dir, store) = Store::temporary();
        for key in ["b", "a"] {
            let input =
                serde_json::from_value(json!({"key": key, "name": key, "fraction": 0.1})).unwrap();
            let h = Holdout::create(input, OffsetDateTime::UNIX_EPOCH).unwrap();
            store.put_holdout(&h, None).unwrap();
        }
        let keys: Vec<String> = store
            .holdouts()
            .unwrap()
            .iter()
            .map(|h| h.key.to_string())
            .collect();
        assert_eq!(keys, ["a", "b"]);
    }
}
