//! Webhook subscriptions, queues and attempt logs.

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use super::{decode_json, keys, versioned_json, Cf, Store};
use crate::domain::{AuditEntry, DeliveryAttempt, DeliveryAttemptRecord, Webhook, WebhookMessage};
use crate::{Error, Result};

/// Meta key: the last outbox sequence number fanned out to queues.
const DISPATCH_CURSOR_KEY: &[u8] = b"webhook_dispatch_cursor";

/// What one finished delivery attempt changes, written together.
pub struct AttemptWrite<'a> {
    /// The subscription after the attempt (counters, maybe disabled).
    pub subscription: &'a Webhook,
    /// The message's queue position.
    pub seq: u64,
    /// The message to keep for a retry; `None` removes it (delivered or
    /// failed for good).
    pub retry: Option<&'a WebhookMessage>,
    /// The attempt to log.
    pub attempt: &'a DeliveryAttempt,
}

impl Store {
    /// Writes a subscription record, synced, with the audit entry of the
    /// change, if made through the API here.
    pub fn put_subscription(
        &self,
        subscription: &Webhook,
        audit: Option<&AuditEntry>,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(Cf::Webhooks),
            subscription.id.as_str().as_bytes(),
            versioned_json(Cf::Webhooks, subscription)?,
        );
        self.write_audited(batch, audit)
    }

    /// Every subscription.
    pub fn subscriptions(&self) -> Result<Vec<Webhook>> {
        self.db
            .iterator_cf(self.cf(Cf::Webhooks), IteratorMode::Start)
            .map(|item| decode_json(Cf::Webhooks, &item?.1))
            .collect()
    }

    /// Deletes a subscription with its queue and attempt log (and the
    /// audit entry of the deletion, if made through the API here).
    pub fn delete_subscription(&self, id: &str, audit: Option<&AuditEntry>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(Cf::Webhooks), id.as_bytes());
        let (from, to) = prefix_range(id);
        batch.delete_range_cf(self.cf(Cf::WebhookQueue), &from, &to);
        batch.delete_range_cf(self.cf(Cf::WebhookAttempts), &from, &to);
        self.write_audited(batch, audit)
    }

    /// Where fan-out to queues stopped: the last outbox sequence number done.
    pub fn dispatch_cursor(&self) -> Result<u64> {
        Ok(self
            .db
            .get_cf(self.cf(Cf::Meta), DISPATCH_CURSOR_KEY)?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Queues messages (subscription, outbox seq, message) and moves the
    /// dispatch cursor, atomically: a crash re-dispatches nothing twice and
    /// loses nothing.
    pub fn enqueue(&self, messages: &[(&str, u64, WebhookMessage)], cursor: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        let queue = self.cf(Cf::WebhookQueue);
        for (subscription, seq, message) in messages {
            batch.put_cf(
                queue,
                keys::webhook_message(subscription, *seq),
                versioned_json(Cf::WebhookQueue, message)?,
            );
        }
        batch.put_cf(self.cf(Cf::Meta), DISPATCH_CURSOR_KEY, cursor.to_be_bytes());
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.write_opt(batch, &sync)?;
        Ok(())
    }

    /// The oldest pending message of a subscription at or after position
    /// `from`, with its position. Starting past the messages already
    /// removed keeps the read from wading through their tombstones.
    pub fn queue_head(
        &self,
        subscription: &str,
        from: u64,
    ) -> Result<Option<(u64, WebhookMessage)>> {
        let (_, to) = prefix_range(subscription);
        let from = keys::webhook_message(subscription, from);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(to);
        let mut iter = self.db.iterator_cf_opt(
            self.cf(Cf::WebhookQueue),
            options,
            IteratorMode::From(&from, Direction::Forward),
        );
        match iter.next().transpose()? {
            None => Ok(None),
            Some((key, value)) => {
                let seq = keys::trailing_u64(&key).ok_or_else(|| Error::Corrupt {
                    cf: Cf::WebhookQueue.name(),
                    reason: format!("bad key {key:?}"),
                })?;
                Ok(Some((seq, decode_json(Cf::WebhookQueue, &value)?)))
            }
        }
    }

    /// The oldest position an enabled subscription still has queued
    /// (cluster mode: the shared outbox is acknowledged up to just before
    /// it; a disabled subscription's messages wait in its queue, not in
    /// the outbox).
    pub fn oldest_queued(&self) -> Result<Option<u64>> {
        let mut oldest: Option<u64> = None;
        let enabled = self
            .subscriptions()?
            .into_iter()
            .filter(|s| s.disabled.is_none());
        for subscription in enabled {
            if let Some((seq, _)) = self.queue_head(subscription.id.as_str(), 0)? {
                oldest = Some(oldest.map_or(seq, |o| o.min(seq)));
            }
        }
        Ok(oldest)
    }

    /// Empties every subscription's queue (cluster mode: a node giving up
    /// or taking over delivery; the shared outbox still holds what was
    /// not acknowledged).
    pub fn clear_webhook_queues(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        // Keys start with a length byte below 0xFF.
        batch.delete_range_cf(
            self.cf(Cf::WebhookQueue),
            [0u8].as_slice(),
            [0xFFu8].as_slice(),
        );
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.write_opt(batch, &sync)?;
        Ok(())
    }

    /// Pending messages of a subscription.
    pub fn queue_len(&self, subscription: &str) -> Result<u64> {
        let (from, to) = prefix_range(subscription);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(to);
        let mut n = 0;
        for item in self.db.iterator_cf_opt(
            self.cf(Cf::WebhookQueue),
            options,
            IteratorMode::From(&from, Direction::Forward),
        ) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Records a finished attempt: the log entry, the message's fate and
    /// the subscription's counters, atomically.
    pub fn record_attempt(&self, record: &AttemptWrite<'_>) -> Result<()> {
        let id = record.subscription.id.as_str();
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(Cf::Webhooks),
            id.as_bytes(),
            versioned_json(Cf::Webhooks, record.subscription)?,
        );
        let queue_key = keys::webhook_message(id, record.seq);
        match record.retry {
            Some(message) => batch.put_cf(
                self.cf(Cf::WebhookQueue),
                queue_key,
                versioned_json(Cf::WebhookQueue, message)?,
            ),
            None => batch.delete_cf(self.cf(Cf::WebhookQueue), queue_key),
        }
        batch.put_cf(
            self.cf(Cf::WebhookAttempts),
            keys::webhook_attempt(id, record.subscription.stats.attempts),
            versioned_json(
                Cf::WebhookAttempts,
                &DeliveryAttemptRecord::from(record.attempt),
            )?,
        );
        self.db.write(batch)?;
        Ok(())
    }

    /// Up to `limit` attempts of a subscription, newest first, after the
    /// attempt number `before` (exclusive) when given; with the number to
    /// continue from.
    pub fn attempts(
        &self,
        subscription: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<DeliveryAttempt>, Option<u64>)> {
        let (from, to) = prefix_range(subscription);
        let start = match before {
            Some(n) => keys::webhook_attempt(subscription, n.saturating_sub(1)),
            None => from,
        };
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(to);
        let mut out = Vec::new();
        let mut last = None;
        for item in self.db.iterator_cf_opt(
            self.cf(Cf::WebhookAttempts),
            options,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (key, value) = item?;
            if out.len() == limit {
                return Ok((out, last));
            }
            last = keys::trailing_u64(&key).map(|k| u64::MAX - k);
            out.push(DeliveryAttempt::from(decode_json::<DeliveryAttemptRecord>(
                Cf::WebhookAttempts,
                &value,
            )?));
        }
        Ok((out, None))
    }
}

/// `[prefix, prefix + 1)` of one subscription's keys.
fn prefix_range(subscription: &str) -> (Vec<u8>, Vec<u8>) {
    let from = keys::subscription_prefix(subscription);
    let mut to = from.clone();
    // Ids are short ASCII, so the last byte is never 0xFF.
    if let Some(last) = to.last_mut() {
        *last += 1;
    }
    (from, to)
}
