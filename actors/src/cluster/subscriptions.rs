//! Webhook subscriptions shared by every node: the key-value bucket
//! `abacus_webhooks`, one key per subscription id, its record (secret
//! included: whichever node delivers signs with it) as the value. A
//! subscription created or deleted on any node is seen by every node.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use futures_util::{Stream, StreamExt};

use super::ClusterSettings;
use crate::domain::{Webhook, WebhookId};
use crate::{Error, Result};

const BUCKET: &str = "abacus_webhooks";

/// A change to the shared subscriptions.
#[derive(Debug)]
pub enum SubscriptionChange {
    /// Created (or rewritten).
    Put(Box<Webhook>),
    /// Deleted.
    Deleted(WebhookId),
}

/// Handle on the subscriptions bucket.
#[derive(Clone)]
pub struct SubscriptionBucket {
    kv: kv::Store,
}

impl SubscriptionBucket {
    /// Opens the bucket, creating it if missing.
    pub(super) async fn open(
        jetstream: &jetstream::Context,
        settings: &ClusterSettings,
    ) -> Result<Self> {
        let description = "abacus: webhook subscriptions";
        let kv = super::key_value(jetstream, BUCKET, description, Duration::ZERO, settings).await?;
        Ok(Self { kv })
    }

    /// Adds a new subscription (its id is fresh, so the key is free).
    pub async fn create(&self, subscription: &Webhook) -> Result<()> {
        let value = serde_json::to_vec(subscription)
            .map_err(|e| Error::Cluster(format!("encoding a subscription: {e}")))?;
        match self.kv.create(subscription.id.as_str(), value.into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::Cluster(format!("creating a subscription: {e}"))),
        }
    }

    /// Deletes a subscription.
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.kv
            .delete(id)
            .await
            .map_err(|e| Error::Cluster(format!("deleting a subscription: {e}")))
    }

    /// Every subscription as it is now, then every change. The stream ends
    /// when the watch fails: watch again then.
    pub async fn watch(&self) -> Result<impl Stream<Item = SubscriptionChange>> {
        let entries = self
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| Error::Cluster(format!("watching the subscriptions: {e}")))?;
        Ok(super::until_failed(entries, "subscriptions").filter_map(|entry| async move {
            match entry.operation {
                Operation::Put => match serde_json::from_slice(&entry.value) {
                    Ok(webhook) => Some(SubscriptionChange::Put(Box::new(webhook))),
                    Err(e) => {
                        tracing::warn!(key = %entry.key, error = %e, "skipping an unreadable subscription");
                        None
                    }
                },
                Operation::Delete | Operation::Purge => WebhookId::try_from(entry.key.clone())
                    .ok()
                    .map(SubscriptionChange::Deleted),
            }
        }))
    }
}
