//! API keys issued, rotated and revoked through the API.
//!
//! A key's secret is shown once, when it is issued or rotated; the store
//! keeps its SHA-256 digest. Secrets are 32 random bytes, so a fast digest
//! is as good as a slow one: nobody can guess their way to a preimage. The
//! request path looks a presented secret's digest up in an in-memory table
//! swapped whole on every change ([`ArcSwap`]): no lock, no disk.
//!
//! In cluster mode the keys live in a shared bucket, changed there first;
//! every node mirrors it into its own store and table, so a key issued or
//! revoked on one node works or stops on every node within the watch's
//! delay (well under a second on a healthy cluster).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use foldhash::HashMap;
use rand::RngExt;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::cluster::{RecordBucket, RecordChange};
use crate::domain::{
    ApiKey, AuditEntry, KeyId, KeyIn, KeyIssued, KeyOut, Previous, Principal, ResourceKind, Role,
    RotateIn,
};
use crate::storage::{blocking, Store};
use crate::{Error, Result};

/// What every issued secret starts with, so a leaked one is recognisable
/// (secret scanners match on it).
const SECRET_PREFIX: &str = "abk_";
/// Random bytes in a secret.
const SECRET_BYTES: usize = 32;
/// Characters of a secret kept to recognise it by: the prefix and 8 more.
const SHOWN_CHARS: usize = SECRET_PREFIX.len() + 8;

/// A SHA-256 digest: how secrets are looked up.
pub type SecretDigest = [u8; 32];

/// The digest of a presented secret.
pub fn digest(secret: &[u8]) -> SecretDigest {
    Sha256::digest(secret).into()
}

/// One way in to a stored key: its current secret or, during a rotation's
/// grace, its replaced one.
#[derive(Clone)]
struct Entry {
    principal: Principal,
    /// When this way in stops working, if ever.
    until: Option<OffsetDateTime>,
}

/// The stored keys, by id and by the digests that open them.
#[derive(Default)]
struct Table {
    keys: BTreeMap<KeyId, ApiKey>,
    by_digest: HashMap<SecretDigest, Entry>,
}

impl Table {
    fn build(keys: BTreeMap<KeyId, ApiKey>) -> Self {
        let mut by_digest = HashMap::default();
        for key in keys.values() {
            let principal = Principal {
                id: key.id.as_str().into(),
                role: key.role,
                project: key.project.as_str().into(),
            };
            if let Some(current) = parse_digest(&key.digest) {
                let until = key.expires_at;
                by_digest.insert(
                    current,
                    Entry {
                        principal: principal.clone(),
                        until,
                    },
                );
            }
            if let Some(previous) = &key.previous {
                if let Some(old) = parse_digest(&previous.digest) {
                    let until = Some(
                        key.expires_at
                            .map_or(previous.until, |e| e.min(previous.until)),
                    );
                    by_digest.insert(old, Entry { principal, until });
                }
            }
        }
        Self { keys, by_digest }
    }
}

/// The key service.
pub struct Credentials {
    store: Store,
    clock: Arc<dyn Clock>,
    /// Most keys kept (`auth.max_keys`).
    max_keys: usize,
    table: ArcSwap<Table>,
    /// Held while a change is written and the table rebuilt, so that the
    /// table always matches the store.
    changing: tokio::sync::Mutex<()>,
    /// Cluster mode: the shared keys (changed there first).
    shared: Option<RecordBucket<ApiKey>>,
}

impl Credentials {
    /// Loads the stored keys; in cluster mode (`shared`) also mirrors the
    /// shared bucket from now on. Must run inside an actix system.
    pub(crate) async fn start(
        store: Store,
        clock: Arc<dyn Clock>,
        max_keys: usize,
        shared: Option<RecordBucket<ApiKey>>,
    ) -> Result<Arc<Self>> {
        let stored = {
            let store = store.clone();
            blocking(move || store.api_keys()).await?
        };
        let keys = stored.into_iter().map(|k| (k.id.clone(), k)).collect();
        let this = Arc::new(Self {
            store,
            clock,
            max_keys,
            table: ArcSwap::from_pointee(Table::build(keys)),
            changing: tokio::sync::Mutex::new(()),
            shared: shared.clone(),
        });
        if let Some(bucket) = shared {
            actix::spawn(follow(Arc::clone(&this), bucket));
        }
        Ok(this)
    }

    /// Who a presented secret's digest belongs to, if it works now.
    pub fn lookup(&self, digest: &SecretDigest) -> Option<Principal> {
        let table = self.table.load();
        let entry = table.by_digest.get(digest)?;
        match entry.until {
            Some(until) if until <= self.clock.now() => None,
            _ => Some(entry.principal.clone()),
        }
    }

    /// How many keys are stored.
    pub fn count(&self) -> usize {
        self.table.load().keys.len()
    }

    /// Issues a key in the project the input names (the issuer's by
    /// default), which the caller has checked exists; its secret is in the
    /// answer and nowhere else.
    pub async fn issue(&self, input: KeyIn, by: &Principal) -> Result<KeyIssued> {
        let now = self.clock.now();
        input
            .validate(now)
            .map_err(|(field, message)| Error::invalid(field, message))?;
        let project = input
            .project
            .as_ref()
            .map_or(&*by.project, |p| p.as_str())
            .to_owned();
        permit(by, input.role, &project)?;
        let _changing = self.changing.lock().await;
        if self.table.load().keys.len() >= self.max_keys {
            return Err(Error::invalid(
                "keys",
                format!(
                    "at most {} keys (auth.max_keys); revoke one first",
                    self.max_keys
                ),
            ));
        }
        let (secret, digest) = mint_secret();
        let key = ApiKey {
            id: KeyId::mint(),
            name: input.name,
            project,
            role: input.role,
            prefix: secret[..SHOWN_CHARS].to_owned(),
            digest,
            previous: None,
            created_at: now,
            created_by: by.id.to_string(),
            rotated_at: None,
            expires_at: input.expires_at,
        };
        if let Some(shared) = &self.shared {
            shared.create(key.id.as_str(), &key).await?;
        }
        let audit = audit(by, now, "key.issued", None, Some(&key));
        self.keep(key.clone(), Some(audit)).await?;
        tracing::info!(key = %key.id, role = key.role.as_str(), by = %by.id, "API key issued");
        Ok(KeyIssued {
            key: key.view(now),
            secret,
        })
    }

    /// Every key the caller may see (an owner: all; others: their
    /// project's), by id.
    pub fn list(&self, by: &Principal) -> Vec<KeyOut> {
        let now = self.clock.now();
        self.table
            .load()
            .keys
            .values()
            .filter(|k| visible(by, k))
            .map(|k| k.view(now))
            .collect()
    }

    /// One key.
    pub fn get(&self, id: &str, by: &Principal) -> Result<KeyOut> {
        let table = self.table.load();
        let key = find(&table, id, by)?;
        Ok(key.view(self.clock.now()))
    }

    /// Gives a key a new secret; the old one works for `grace_s` more
    /// seconds (not at all with 0).
    pub async fn rotate(&self, id: &str, input: RotateIn, by: &Principal) -> Result<KeyIssued> {
        input
            .validate()
            .map_err(|(field, message)| Error::invalid(field, message))?;
        let _changing = self.changing.lock().await;
        let local = find(&self.table.load(), id, by)?.clone();
        // In cluster mode the shared record is rotated, not this node's
        // copy, which may lag a rotation made on another node.
        let (mut key, revision) = match &self.shared {
            Some(shared) => {
                let (key, revision) = shared
                    .get(id)
                    .await?
                    .ok_or_else(|| Error::KeyNotFound(id.to_owned()))?;
                (key, Some(revision))
            }
            None => (local, None),
        };
        permit(by, key.role, &key.project)?;
        let now = self.clock.now();
        let before = key.clone();
        let (secret, digest) = mint_secret();
        let replaced = std::mem::replace(&mut key.digest, digest);
        key.previous = (input.grace_s > 0).then(|| Previous {
            digest: replaced,
            until: now + time::Duration::seconds(i64::from(input.grace_s)),
        });
        key.prefix = secret[..SHOWN_CHARS].to_owned();
        key.rotated_at = Some(now);
        if let (Some(shared), Some(revision)) = (&self.shared, revision) {
            shared.update(id, &key, revision).await?;
        }
        let audit = audit(by, now, "key.rotated", Some(&before), Some(&key));
        self.keep(key.clone(), Some(audit)).await?;
        tracing::info!(key = %key.id, grace_s = input.grace_s, by = %by.id, "API key rotated");
        Ok(KeyIssued {
            key: key.view(now),
            secret,
        })
    }

    /// Revokes a key: its secrets stop working at once and its record is
    /// deleted. Answers the key as it was.
    pub async fn revoke(&self, id: &str, by: &Principal) -> Result<KeyOut> {
        let _changing = self.changing.lock().await;
        let key = find(&self.table.load(), id, by)?.clone();
        permit(by, key.role, &key.project)?;
        if let Some(shared) = &self.shared {
            shared.delete(id).await?;
        }
        let audit = audit(by, self.clock.now(), "key.revoked", Some(&key), None);
        self.forget(id, Some(audit)).await?;
        tracing::info!(key = %key.id, by = %by.id, "API key revoked");
        Ok(key.view(self.clock.now()))
    }

    /// Revokes every key of `project` (being deleted), on behalf of `by`.
    pub async fn revoke_project(&self, project: &str, by: &Principal) -> Result<()> {
        let ids: Vec<KeyId> = {
            let table = self.table.load();
            table
                .keys
                .values()
                .filter(|k| k.project == project)
                .map(|k| k.id.clone())
                .collect()
        };
        for id in ids {
            match self.revoke(id.as_str(), by).await {
                Ok(_) | Err(Error::KeyNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Stores `key` (with the audit entry of the change, if made here)
    /// and puts it in the table. In cluster mode the shared bucket is the
    /// truth: the table takes the change even if the local write fails.
    async fn keep(&self, key: ApiKey, audit: Option<AuditEntry>) -> Result<()> {
        let store = self.store.clone();
        let stored = key.clone();
        let written = blocking(move || store.put_api_key(&stored, audit.as_ref())).await;
        if written.is_ok() || self.shared.is_some() {
            self.swap(|keys| {
                keys.insert(key.id.clone(), key);
            });
        }
        written
    }

    /// Deletes `id` from the store (with the audit entry of the
    /// revocation, if made here) and the table.
    async fn forget(&self, id: &str, audit: Option<AuditEntry>) -> Result<()> {
        let store = self.store.clone();
        let owned = id.to_owned();
        let written = blocking(move || store.delete_api_key(&owned, audit.as_ref())).await;
        if written.is_ok() || self.shared.is_some() {
            self.swap(|keys| {
                keys.retain(|k, _| k.as_str() != id);
            });
        }
        written
    }

    fn swap(&self, change: impl FnOnce(&mut BTreeMap<KeyId, ApiKey>)) {
        let mut keys = self.table.load().keys.clone();
        change(&mut keys);
        self.table.store(Arc::new(Table::build(keys)));
    }
}

/// The audit entry of `action` by `by` on a key, before and after (as the
/// API shows keys: no digest).
fn audit(
    by: &Principal,
    at: OffsetDateTime,
    action: &str,
    before: Option<&ApiKey>,
    after: Option<&ApiKey>,
) -> AuditEntry {
    let view = |k: &ApiKey| serde_json::to_value(k.view(at)).ok();
    let key = before.or(after);
    let id = key.map(|k| k.id.to_string()).unwrap_or_default();
    let mut entry = AuditEntry::new(
        by,
        at,
        action,
        ResourceKind::Key,
        id,
        before.and_then(view),
        after.and_then(view),
    );
    // The key's project, which may not be the caller's (an owner's).
    if let Some(key) = key {
        entry.project.clone_from(&key.project);
    }
    entry
}

/// A fresh secret and the hex digest to store.
fn mint_secret() -> (String, String) {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill(&mut bytes[..]);
    let secret = format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let digest = hex(&digest(secret.as_bytes()));
    (secret, digest)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn parse_digest(text: &str) -> Option<SecretDigest> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether `by` may see `key`: an owner sees every key, anyone else their
/// own project's.
fn visible(by: &Principal, key: &ApiKey) -> bool {
    by.role == Role::Owner || *by.project == *key.project
}

fn find<'t>(table: &'t Table, id: &str, by: &Principal) -> Result<&'t ApiKey> {
    table
        .keys
        .get(id)
        .filter(|key| visible(by, key))
        .ok_or_else(|| Error::KeyNotFound(id.to_owned()))
}

/// Whether `by` may issue, rotate or revoke a key of `role` in `project`.
fn permit(by: &Principal, role: Role, project: &str) -> Result<()> {
    if !by.role.may_manage(role) {
        return Err(Error::NotPermitted(format!(
            "a {} may not manage {} keys",
            by.role.as_str(),
            role.as_str()
        )));
    }
    if by.role != Role::Owner && *by.project != *project {
        return Err(Error::NotPermitted(format!(
            "keys of project '{project}' are managed by its admins"
        )));
    }
    Ok(())
}

/// Mirrors the shared bucket into this node. Keys stored here that the
/// bucket no longer holds (revoked while this node was away) are dropped
/// once the bucket's current content has been seen.
async fn follow(credentials: Arc<Credentials>, bucket: RecordBucket<ApiKey>) {
    let mut seen = BTreeSet::new();
    let mut current = false;
    bucket
        .follow(|change| {
            let credentials = Arc::clone(&credentials);
            let outcome = match &change {
                RecordChange::Put(id, _, _) if !current => {
                    seen.insert(id.clone());
                    None
                }
                RecordChange::Current if !current => {
                    current = true;
                    Some(std::mem::take(&mut seen))
                }
                _ => None,
            };
            async move {
                if let Err(e) = mirror(&credentials, change, outcome).await {
                    tracing::warn!(error = %e, "mirroring an API key failed");
                }
                true
            }
        })
        .await;
}

async fn mirror(
    credentials: &Credentials,
    change: RecordChange<ApiKey>,
    current: Option<BTreeSet<String>>,
) -> Result<()> {
    let _changing = credentials.changing.lock().await;
    match change {
        RecordChange::Put(_, key, _) => {
            if credentials.table.load().keys.get(&key.id) != Some(&key) {
                credentials.keep(*key, None).await?;
            }
        }
        RecordChange::Deleted(id, _) => credentials.forget(&id, None).await?,
        RecordChange::Current => {
            let gone: Vec<KeyId> = credentials
                .table
                .load()
                .keys
                .keys()
                .filter(|id| {
                    current
                        .as_ref()
                        .is_some_and(|seen| !seen.contains(id.as_str()))
                })
                .cloned()
                .collect();
            for id in gone {
                credentials.forget(id.as_str(), None).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::DEFAULT_PROJECT;
    use crate::storage::StoreOptions;

    fn principal(role: Role) -> Principal {
        Principal {
            id: format!("config/{}/0", role.as_str()).into(),
            role,
            project: DEFAULT_PROJECT.into(),
        }
    }

    fn key_in(role: Role) -> KeyIn {
        KeyIn {
            name: "ci".to_owned(),
            role,
            project: None,
            expires_at: None,
        }
    }

    async fn service(
        dir: &std::path::Path,
        clock: Arc<ManualClock>,
        max: usize,
    ) -> Arc<Credentials> {
        let options = StoreOptions {
            dedup_window_ms: 60_000,
            retention_ms: None,
            cache_bytes: 1 << 20,
            audit_retention_ms: 365 * 24 * 3600 * 1000,
        };
        let store =
            Store::open_with_clock(dir, options, clock.clone()).unwrap_or_else(|e| panic!("{e}"));
        Credentials::start(store, clock, max, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn start() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)
    }

    #[actix::test]
    async fn an_issued_secret_opens_its_key_until_revoked_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let clock = Arc::new(ManualClock::new(start()));
        let admin = principal(Role::Admin);
        let issued = {
            let keys = service(dir.path(), Arc::clone(&clock), 10).await;
            let issued = keys
                .issue(key_in(Role::Viewer), &admin)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(issued.secret.starts_with("abk_"));
            assert_eq!(issued.secret.len(), 4 + 43);
            assert_eq!(issued.key.prefix, issued.secret[..12]);
            assert_eq!(issued.key.created_by, "config/admin/0");
            let found = keys.lookup(&digest(issued.secret.as_bytes()));
            assert_eq!(found.map(|p| p.role), Some(Role::Viewer));
            assert!(keys.lookup(&digest(b"abk_nope")).is_none());
            issued
        };
        // Stored by digest only, and read back after a restart.
        let keys = service(dir.path(), Arc::clone(&clock), 10).await;
        let stored = keys.table.load().keys.values().next().cloned();
        let stored = stored.unwrap_or_else(|| panic!("the key was not kept"));
        assert!(!serde_json::to_string(&stored)
            .unwrap_or_default()
            .contains(&issued.secret[4..]));
        let id = issued.key.id.as_str();
        assert!(keys.lookup(&digest(issued.secret.as_bytes())).is_some());
        let revoked = keys
            .revoke(id, &admin)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(revoked.id.as_str(), id);
        assert!(keys.lookup(&digest(issued.secret.as_bytes())).is_none());
        assert!(matches!(keys.get(id, &admin), Err(Error::KeyNotFound(_))));
        drop(keys);
        let keys = service(dir.path(), clock, 10).await;
        assert!(keys.lookup(&digest(issued.secret.as_bytes())).is_none());
        assert_eq!(keys.count(), 0);
    }

    #[actix::test]
    async fn a_rotation_keeps_the_old_secret_for_its_grace_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let clock = Arc::new(ManualClock::new(start()));
        let admin = principal(Role::Admin);
        let keys = service(dir.path(), Arc::clone(&clock), 10).await;
        let first = keys
            .issue(key_in(Role::Ingest), &admin)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let id = first.key.id.as_str();
        let second = keys
            .rotate(id, RotateIn { grace_s: 60 }, &admin)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(second.key.id, first.key.id);
        assert_ne!(second.secret, first.secret);
        assert!(keys.lookup(&digest(first.secret.as_bytes())).is_some());
        assert!(keys.lookup(&digest(second.secret.as_bytes())).is_some());
        clock.advance(std::time::Duration::from_secs(60));
        assert!(keys.lookup(&digest(first.secret.as_bytes())).is_none());
        assert!(keys.lookup(&digest(second.secret.as_bytes())).is_some());
        // Without a grace the old secret stops at once.
        let third = keys
            .rotate(id, RotateIn::default(), &admin)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(keys.lookup(&digest(second.secret.as_bytes())).is_none());
        assert!(keys.lookup(&digest(third.secret.as_bytes())).is_some());
    }

    #[actix::test]
    async fn keys_expire_are_bounded_and_only_the_right_roles_manage_them() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let clock = Arc::new(ManualClock::new(start()));
        let keys = service(dir.path(), Arc::clone(&clock), 2).await;
        let (owner, admin, editor) = (
            principal(Role::Owner),
            principal(Role::Admin),
            principal(Role::Editor),
        );
        assert!(matches!(
            keys.issue(key_in(Role::Owner), &admin).await,
            Err(Error::NotPermitted(_))
        ));
        assert!(matches!(
            keys.issue(key_in(Role::Viewer), &editor).await,
            Err(Error::NotPermitted(_))
        ));
        let expiring = KeyIn {
            expires_at: Some(start() + time::Duration::seconds(30)),
            ..key_in(Role::Viewer)
        };
        let viewer = keys
            .issue(expiring, &admin)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let top = keys
            .issue(key_in(Role::Owner), &owner)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            keys.issue(key_in(Role::Viewer), &owner).await,
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            keys.revoke(top.key.id.as_str(), &admin).await,
            Err(Error::NotPermitted(_))
        ));
        assert!(keys.lookup(&digest(viewer.secret.as_bytes())).is_some());
        clock.advance(std::time::Duration::from_secs(30));
        assert!(keys.lookup(&digest(viewer.secret.as_bytes())).is_none());
        let listed = keys.list(&admin);
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().any(|k| k.id == viewer.key.id && !k.active));
    }

    #[test]
    fn digests_print_and_parse_back() {
        let d = digest(b"abk_x");
        assert_eq!(parse_digest(&hex(&d)), Some(d));
        assert_eq!(parse_digest("zz"), None);
        assert_eq!(parse_digest(&"g".repeat(64)), None);
    }
}
