//! Webhooks in cluster mode. Three tasks per node:
//!
//! - **follow**: subscriptions live in the shared bucket (created and
//!   deleted there first); every node mirrors them into its own store and
//!   runs an actor for each, so any node answers for them.
//! - **relay**: every node publishes its own outbox (the domain events of
//!   the changes it made) to the shared outbox stream, in order, from a
//!   cursor in its store (`cluster::outbox` drops a repeat).
//! - **deliver**: one node at a time, the holder of the lease
//!   `singleton.webhooks`, reads the shared outbox and fans it out into its
//!   subscriptions' queues exactly as a single node fans out its own
//!   outbox, keyed by the stream's sequence. Once a second it acknowledges
//!   the stream up to the oldest message a subscription has not finished
//!   (delivered or failed for good). A node that takes delivery over drops
//!   whatever its queues held from an earlier turn and starts after the
//!   last acknowledged message, so a message in flight on a node that died
//!   is delivered again by the next one: at least once, in the stream's
//!   order per subscription, with the event's id as `webhook-id` every
//!   time.
//!
//! Delivery statistics, disabled flags and the attempt log stay with the
//! node that delivered; a node taking over starts from the shared record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::subscriber::Rewind;
use super::{dispatcher, Webhooks};
use crate::cluster::{acknowledge, Gaps, OutboxLog, RecordBucket, RecordChange};
use crate::domain::Webhook;
use crate::storage::blocking;
use crate::{Error, Result};

/// The relay's cursor in the store: the last outbox sequence relayed.
const RELAY_CURSOR: &str = "cluster-outbox-relay";

/// How long a failed task waits before trying again.
const RETRY: Duration = Duration::from_millis(500);

/// Events read from the shared outbox per fan-out.
const CHUNK: usize = 500;

/// What cluster mode shares for webhooks.
pub struct Replication {
    /// The shared subscriptions.
    pub subscriptions: RecordBucket<Webhook>,
    /// The shared outbox.
    pub outbox: OutboxLog,
    /// Whether this node delivers now (it holds the delivery lease).
    pub delivers: Arc<AtomicBool>,
}

/// Starts the three tasks.
pub(super) fn spawn(webhooks: Webhooks, replication: Replication) {
    actix::spawn(follow(webhooks.clone(), replication.subscriptions));
    actix::spawn(relay(webhooks.clone(), replication.outbox.clone()));
    actix::spawn(deliver(webhooks, replication.outbox, replication.delivers));
}

/// Mirrors the shared subscriptions into this node.
async fn follow(webhooks: Webhooks, bucket: RecordBucket<Webhook>) {
    bucket
        .follow(|change| {
            let webhooks = webhooks.clone();
            async move {
                if let Err(e) = mirror(&webhooks, change).await {
                    tracing::warn!(error = %e, "mirroring a subscription failed");
                }
                true
            }
        })
        .await;
}

async fn mirror(webhooks: &Webhooks, change: RecordChange<Webhook>) -> Result<()> {
    match change {
        RecordChange::Put(_, subscription, _) => {
            if webhooks.entry(subscription.id.as_str()).is_ok() {
                return Ok(());
            }
            let store = webhooks.store.clone();
            let stored = (*subscription).clone();
            blocking(move || store.put_subscription(&stored, None)).await?;
            webhooks.spawn(*subscription);
            Ok(())
        }
        RecordChange::Deleted(id, _) => match webhooks.forget(&id, None).await {
            Err(Error::WebhookNotFound(_)) => Ok(()),
            forgotten => forgotten,
        },
        RecordChange::Current => Ok(()),
    }
}

/// Publishes this node's outbox to the shared one, in order.
async fn relay(webhooks: Webhooks, outbox: OutboxLog) {
    let mut written = webhooks.store.outbox_watch();
    loop {
        if let Err(e) = relay_pending(&webhooks, &outbox).await {
            tracing::warn!(error = %e, "relaying domain events failed; retrying");
            tokio::time::sleep(RETRY).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), written.changed()).await;
    }
}

async fn relay_pending(webhooks: &Webhooks, outbox: &OutboxLog) -> Result<()> {
    loop {
        let store = webhooks.store.clone();
        let events =
            blocking(move || store.outbox(store.sink_cursor(RELAY_CURSOR)?, CHUNK)).await?;
        if events.is_empty() {
            return Ok(());
        }
        for (seq, event) in events {
            outbox.publish(&event).await?;
            let store = webhooks.store.clone();
            blocking(move || store.set_sink_cursor(RELAY_CURSOR, seq)).await?;
        }
    }
}

/// Delivers from the shared outbox while this node holds the lease.
async fn deliver(webhooks: Webhooks, outbox: OutboxLog, delivers: Arc<AtomicBool>) {
    loop {
        if delivers.load(Ordering::Acquire) {
            tracing::info!("this node delivers webhooks now");
            if let Err(e) = lead(&webhooks, &outbox, &delivers).await {
                tracing::warn!(error = %e, "webhook delivery stopped; starting again");
            }
            // What the queues still hold is the next holder's to deliver.
            let store = webhooks.store.clone();
            if let Err(e) = blocking(move || store.clear_webhook_queues()).await {
                tracing::error!(error = %e, "clearing the webhook queues failed");
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One turn as the delivering node; returns when the lease is lost.
async fn lead(webhooks: &Webhooks, outbox: &OutboxLog, delivers: &AtomicBool) -> Result<()> {
    let store = webhooks.store.clone();
    blocking(move || store.clear_webhook_queues()).await?;
    // The queues fill again from the last acknowledged message, maybe at
    // positions the subscribers had passed.
    if let Ok(entries) = webhooks.entries.read() {
        for entry in entries.values() {
            entry.addr.do_send(Rewind);
        }
    }
    let deliveries = outbox.read().await?;
    let mut chunks = std::pin::pin!(deliveries.ready_chunks(CHUNK));
    let mut unacknowledged = BTreeMap::new();
    let mut gaps = Gaps::default();
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            chunk = chunks.next() => {
                let chunk = chunk.ok_or_else(|| Error::Cluster("the outbox consumer ended".into()))?;
                let mut events = Vec::with_capacity(chunk.len());
                for delivery in chunk {
                    let delivery = delivery?;
                    gaps.check(delivery.delivery)?;
                    if delivery.seq <= last {
                        // A redelivery of what is queued already.
                        continue;
                    }
                    match delivery.event {
                        Ok(event) => events.push((delivery.seq, event)),
                        Err(e) => tracing::error!(seq = delivery.seq, error = %e, "skipping an unreadable domain event"),
                    }
                    last = delivery.seq;
                    unacknowledged.insert(delivery.seq, delivery.acker);
                }
                dispatcher::fan_out(&webhooks.store, &webhooks.entries, events, last).await?;
            }
            _ = tick.tick() => {
                if !delivers.load(Ordering::Acquire) {
                    return Ok(());
                }
                let store = webhooks.store.clone();
                let oldest = blocking(move || store.oldest_queued()).await?;
                let done = oldest.map_or(last, |seq| seq.saturating_sub(1));
                let newest_done = unacknowledged.range(..=done).next_back().map(|(&seq, _)| seq);
                if let Some(seq) = newest_done {
                    let rest = unacknowledged.split_off(&(seq + 1));
                    if let Some(acker) = unacknowledged.remove(&seq) {
                        acknowledge(&acker).await?;
                    }
                    unacknowledged = rest;
                }
            }
        }
    }
}
