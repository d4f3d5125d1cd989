//! Records every node shares and mirrors: a key-value bucket whose keys are
//! the records' ids and whose values are their stored JSON. Webhook
//! subscriptions, alert rules and alerts live in one each; a change made on
//! any node is a create (the id is fresh) or a compare-and-set on the
//! key's revision, and every node watches the bucket to keep its own copy.

use std::marker::PhantomData;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ClusterSettings, Revision};
use crate::{Error, Result};

/// How long a failed watch waits before watching again.
const WATCH_AGAIN: Duration = Duration::from_millis(500);

/// A change to a shared record.
#[derive(Debug)]
pub enum RecordChange<R> {
    /// Created or changed: its id, the record, its revision in the bucket.
    Put(String, Box<R>, Revision),
    /// Deleted: its id and the deletion's revision.
    Deleted(String, Revision),
    /// Every record there was when the watch started has been handed over.
    Current,
}

/// Handle on one bucket of `R` (a stored record type).
pub struct RecordBucket<R> {
    kv: kv::Store,
    /// What one record is, for messages: "alert rule".
    what: &'static str,
    records: PhantomData<fn() -> R>,
}

impl<R> Clone for RecordBucket<R> {
    fn clone(&self) -> Self {
        Self {
            kv: self.kv.clone(),
            what: self.what,
            records: PhantomData,
        }
    }
}

impl<R: Serialize + DeserializeOwned> RecordBucket<R> {
    /// Opens the bucket `name`, creating it if missing.
    pub(super) async fn open(
        jetstream: &jetstream::Context,
        name: &str,
        what: &'static str,
        settings: &ClusterSettings,
    ) -> Result<Self> {
        let description = format!("abacus: {what}s");
        let kv = super::key_value(jetstream, name, &description, Duration::ZERO, settings).await?;
        Ok(Self {
            kv,
            what,
            records: PhantomData,
        })
    }

    /// Adds a record under a fresh `id`; `ChangedElsewhere` if the id is
    /// taken.
    pub async fn create(&self, id: &str, record: &R) -> Result<Revision> {
        let what = self.what;
        self.kv
            .create(id, self.encode(record)?)
            .await
            .map_err(|e| match e.kind() {
                CreateErrorKind::AlreadyExists => Error::ChangedElsewhere(format!("{what} '{id}'")),
                _ => Error::Cluster(format!("creating {what} '{id}': {e}")),
            })
    }

    /// The record and its revision, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<(R, Revision)>> {
        let what = self.what;
        let entry = self
            .kv
            .entry(id)
            .await
            .map_err(|e| Error::Cluster(format!("reading {what} '{id}': {e}")))?;
        entry
            .filter(|e| e.operation == Operation::Put)
            .map(|e| Ok((self.decode(&e.key, &e.value)?, e.revision)))
            .transpose()
    }

    /// Replaces the record if its revision is still `revision`;
    /// `ChangedElsewhere` if another node wrote it since.
    pub async fn update(&self, id: &str, record: &R, revision: Revision) -> Result<Revision> {
        let what = format!("{} '{id}'", self.what);
        super::compare_and_set(&self.kv, id, self.encode(record)?, revision, &what).await
    }

    /// Deletes the record: the deletion's revision.
    pub async fn delete(&self, id: &str) -> Result<Revision> {
        let what = self.what;
        let failed =
            |e: &dyn std::fmt::Display| Error::Cluster(format!("deleting {what} '{id}': {e}"));
        self.kv.delete(id).await.map_err(|e| failed(&e))?;
        // The key's last entry is now its deletion marker.
        let marker = self.kv.entry(id).await.map_err(|e| failed(&e))?;
        Ok(marker.map_or(0, |m| m.revision))
    }

    /// Every record as it is now, then [`RecordChange::Current`], then
    /// every change. The stream ends when the watch fails: watch again
    /// then.
    pub async fn watch(&self) -> Result<impl Stream<Item = RecordChange<R>> + use<R>> {
        let what = self.what;
        let failed =
            |e: &dyn std::fmt::Display| Error::Cluster(format!("watching the {what}s: {e}"));
        let empty = self
            .kv
            .status()
            .await
            .map_err(|e| failed(&e))?
            .info
            .state
            .messages
            == 0;
        let entries = self
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| failed(&e))?;
        let bucket = self.clone();
        let mut current = empty;
        let changes = super::until_failed(entries, what).flat_map(move |entry| {
            let change = match entry.operation {
                Operation::Put => match bucket.decode(&entry.key, &entry.value) {
                    Ok(record) => Some(RecordChange::Put(
                        entry.key,
                        Box::new(record),
                        entry.revision,
                    )),
                    Err(e) => {
                        tracing::warn!(key = %entry.key, error = %e, "skipping an unreadable {what}");
                        None
                    }
                },
                Operation::Delete | Operation::Purge => {
                    Some(RecordChange::Deleted(entry.key, entry.revision))
                }
            };
            // Nothing was pending after this one when it was delivered.
            let caught_up = !current && entry.delta == 0;
            current |= caught_up;
            futures_util::stream::iter(change.into_iter().chain(caught_up.then_some(RecordChange::Current)))
        });
        let started = futures_util::stream::iter(empty.then_some(RecordChange::Current));
        Ok(started.chain(changes))
    }

    /// Hands `apply` every record and then every change, for as long as it
    /// returns `true`; after a failed watch, watches again (from the start:
    /// `apply` must take a record it has seen again).
    pub async fn follow<F, Fut>(self, mut apply: F)
    where
        F: FnMut(RecordChange<R>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        loop {
            match self.watch().await {
                Ok(changes) => {
                    let mut changes = std::pin::pin!(changes);
                    while let Some(change) = changes.next().await {
                        if !apply(change).await {
                            return;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watching the {}s failed", self.what),
            }
            tokio::time::sleep(WATCH_AGAIN).await;
        }
    }

    fn encode(&self, record: &R) -> Result<bytes::Bytes> {
        serde_json::to_vec(record)
            .map(bytes::Bytes::from)
            .map_err(|e| Error::Cluster(format!("encoding a {}: {e}", self.what)))
    }

    fn decode(&self, key: &str, value: &[u8]) -> Result<R> {
        serde_json::from_slice(value)
            .map_err(|e| Error::Cluster(format!("{} '{key}': {e}", self.what)))
    }
}
