//! The replicated outbox: every node's domain events on one stream,
//! `abacus_outbox`, for the one node that delivers webhooks.
//!
//! Each node relays its own outbox (what its actors recorded with their
//! changes) in order, publishing each event with its id as the message id:
//! JetStream drops a repeat within its duplicate window, so a relay that
//! crashed between publishing and moving its cursor does not send an event
//! twice. The delivering node reads the stream with the durable consumer
//! `webhooks` and acknowledges an event only once every subscription is
//! done with it; a node that takes delivery over starts after the last
//! acknowledged one, so nothing undelivered is lost with the node that
//! had it (at least once, in the stream's order).

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::{Acker, PublishMessage};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, AckKind};
use futures_util::{Stream, StreamExt};

use super::ClusterSettings;
use crate::domain::DomainEvent;
use crate::{Error, Result};

const STREAM: &str = "abacus_outbox";
const SUBJECT: &str = "abacus.outbox";
const CONSUMER: &str = "webhooks";

/// How long the stream keeps an event: longer than any retry schedule.
const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Handle on the replicated outbox.
#[derive(Clone)]
pub struct OutboxLog {
    jetstream: jetstream::Context,
}

/// One event read from the stream.
pub struct OutboxDelivery {
    /// Its sequence in the stream.
    pub seq: u64,
    /// Its delivery's sequence in the consumer (see [`super::Gaps`]).
    pub delivery: u64,
    /// The event; `Err` for a body this version cannot read.
    pub event: std::result::Result<DomainEvent, String>,
    /// Acknowledges it, and everything before it.
    pub acker: Acker,
}

/// Acknowledges `acker`'s message and every one before it.
pub async fn acknowledge(acker: &Acker) -> Result<()> {
    acker
        .ack_with(AckKind::Ack)
        .await
        .map_err(|e| Error::Cluster(format!("acknowledging the outbox: {e}")))
}

impl OutboxLog {
    /// Opens the stream, creating it if missing.
    pub(super) async fn open(
        jetstream: &jetstream::Context,
        settings: &ClusterSettings,
    ) -> Result<Self> {
        jetstream
            .get_or_create_stream(stream::Config {
                name: STREAM.to_owned(),
                description: Some("abacus domain events, for webhook delivery".to_owned()),
                subjects: vec![SUBJECT.to_owned()],
                max_age: MAX_AGE,
                storage: StorageType::File,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Cluster(format!("opening the outbox stream: {e}")))?;
        Ok(Self {
            jetstream: jetstream.clone(),
        })
    }

    /// Publishes `event` and waits until the stream stored it.
    pub async fn publish(&self, event: &DomainEvent) -> Result<()> {
        let failed = |e: &dyn std::fmt::Display| Error::Cluster(format!("relaying an event: {e}"));
        let body = serde_json::to_vec(event).map_err(|e| failed(&e))?;
        let message = PublishMessage::build()
            .payload(body.into())
            .message_id(&event.id);
        self.jetstream
            .send_publish(SUBJECT, message)
            .await
            .map_err(|e| failed(&e))?
            .await
            .map_err(|e| failed(&e))?;
        Ok(())
    }

    /// Every event after the last one acknowledged, in order, through the
    /// durable consumer, recreated to start there (a previous reader may
    /// hold some unacknowledged; they come again now, not after its
    /// acknowledgement wait).
    pub async fn read(&self) -> Result<impl Stream<Item = Result<OutboxDelivery>>> {
        let failed = |e: &dyn std::fmt::Display| Error::Cluster(format!("reading the outbox: {e}"));
        let stream = self
            .jetstream
            .get_stream(STREAM)
            .await
            .map_err(|e| failed(&e))?;
        let floor = match stream.consumer_info(CONSUMER).await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(_) => 0,
        };
        let _ = stream.delete_consumer(CONSUMER).await;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                description: Some("abacus: webhook delivery".to_owned()),
                deliver_policy: match floor {
                    0 => DeliverPolicy::All,
                    seq => DeliverPolicy::ByStartSequence {
                        start_sequence: seq + 1,
                    },
                },
                ack_policy: AckPolicy::All,
                // Longer than any retry schedule: a message is acknowledged
                // once every subscription is done with it.
                ack_wait: MAX_AGE,
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        let messages = consumer
            .stream()
            .expires(super::log::PULL_EXPIRES)
            .heartbeat(super::log::PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| failed(&e))?;
        Ok(messages.map(|message| {
            let message =
                message.map_err(|e| Error::Cluster(format!("reading the outbox: {e}")))?;
            let info = message
                .info()
                .map_err(|e| Error::Cluster(format!("reading the outbox: {e}")))?;
            let (seq, delivery) = (info.stream_sequence, info.consumer_sequence);
            let event = serde_json::from_slice(&message.payload).map_err(|e| e.to_string());
            let (_, acker) = message.split();
            Ok(OutboxDelivery {
                seq,
                delivery,
                event,
                acker,
            })
        }))
    }
}
