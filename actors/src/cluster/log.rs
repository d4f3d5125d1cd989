//! The replicated event log: a JetStream stream per ingest partition,
//! `abacus_events_<partition>`, with the subject `abacus.events.<partition>`.
//! One stream each spreads their raft leaders over the NATS servers, and
//! makes a partition's sequences contiguous, so a reader can tell that
//! messages it has not folded were trimmed ([`Continuity`]).
//!
//! The node that receives events validates them and publishes each
//! partition's part as one message; JetStream acknowledges a publish once
//! the stream has stored it on a quorum of its replicas, which is when an
//! `ack=persisted` caller is answered. What is in flight is bounded by
//! `cluster.max_inflight_publishes` (a semaphore): beyond it a request is
//! refused `Overloaded`, the 503 with `Retry-After` a full mailbox gives
//! on a single node.
//!
//! A partition's owner reads its stream with a durable consumer named for
//! the partition and the node, from the first sequence its store has not
//! folded (see `ingest::owner`). Once the owner has stored a snapshot of
//! the partition, it trims the stream below it ([`EventLog::trim`]): a new
//! owner restores the snapshot and reads only what follows. Each stream
//! holds at most its share of `cluster.log_max_mb` and then refuses new
//! messages (`DiscardPolicy::New`): an acknowledged event is never dropped
//! to make room.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use futures_util::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::wire::{self, Part};
use super::ClusterSettings;
use crate::{Error, Result};

/// The name of `partition`'s stream in JetStream.
fn stream_name(partition: u16) -> String {
    format!("abacus_events_{partition}")
}

/// How long a delivered message may stay unacknowledged before JetStream
/// sends it again. Long: an owner acknowledges after its commit, and a
/// redelivery at or below what it folded is skipped anyway.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// How long a partition's consumer nobody reads from is kept.
const ABANDONED: Duration = Duration::from_secs(600);

/// Messages a partition's consumer may hold unacknowledged.
const MAX_ACK_PENDING: i64 = 20_000;

/// How long one pull request waits, and how often the server says it is
/// still there meanwhile: a reader whose server died (or whose consumer
/// lost its leader) misses two heartbeats, errs, and reads again, within
/// about two seconds rather than the client's default half minute.
pub(super) const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// See [`PULL_EXPIRES`].
pub(super) const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// The subject of `partition`'s events.
fn subject(partition: u16) -> String {
    format!("abacus.events.{partition}")
}

/// Handle on the event log.
#[derive(Clone)]
pub struct EventLog {
    jetstream: jetstream::Context,
    in_flight: Arc<Semaphore>,
    /// This node's id: each node reads through consumers of its own.
    node: String,
}

/// Room for some publishes, held until JetStream acknowledges them.
pub struct Reservation {
    _permits: OwnedSemaphorePermit,
}

/// Publishes sent, their acknowledgements not yet heard.
pub struct Sent {
    acks: Vec<PublishAckFuture>,
    _room: Reservation,
}

impl Sent {
    /// Waits for every acknowledgement: `Ok` once the stream stored every
    /// message on a quorum.
    pub async fn stored(self) -> Result<()> {
        for ack in self.acks {
            ack.await
                .map_err(|e| Error::Cluster(format!("the event log did not store events: {e}")))?;
        }
        Ok(())
    }
}

/// One message read from a partition's subject.
pub struct Delivery {
    /// Its sequence in the stream.
    pub seq: u64,
    /// Its delivery's sequence in the consumer: one more than the last
    /// one's, unless a delivery went missing (see [`Gaps`]).
    pub delivery: u64,
    /// What it carries; `Err` for a body this version cannot read.
    pub part: std::result::Result<Part, String>,
    message: jetstream::Message,
}

impl Delivery {
    /// Acknowledges this message and, the consumer acknowledging
    /// cumulatively, every one before it.
    pub async fn ack(&self) -> Result<()> {
        self.message
            .ack_with(AckKind::Ack)
            .await
            .map_err(|e| Error::Cluster(format!("acknowledging stream message {}: {e}", self.seq)))
    }
}

/// Watches a partition's stream sequences as they are read. A partition's
/// stream holds nothing else, so they follow on one by one; a message read
/// again is at or below the last one, and one further on than the next
/// means the messages in between were trimmed (below a snapshot), so the
/// reader must restore that snapshot rather than fold past a hole.
#[derive(Debug)]
pub struct Continuity {
    next: u64,
}

impl Continuity {
    /// Expects the message after `after` next.
    pub fn after(after: u64) -> Self {
        Self { next: after + 1 }
    }

    /// Takes the next message's sequence: whether it is new (a repeat is
    /// not), or `Cluster` if messages before it are gone.
    pub fn check(&mut self, seq: u64) -> Result<bool> {
        if seq < self.next {
            return Ok(false);
        }
        if seq > self.next {
            return Err(Error::Cluster(format!(
                "messages {}..{seq} were trimmed from the log; restoring the snapshot",
                self.next
            )));
        }
        self.next = seq + 1;
        Ok(true)
    }
}

/// Watches a consumer's delivery sequence. The consumer acknowledges
/// cumulatively, and the client re-pulls on its own after a short
/// reconnect: a message lost in between would be acknowledged with the
/// next one and never sent again. Every delivery (redeliveries included)
/// takes the next delivery sequence, so a gap means one went missing, and
/// the reader must read again from what it committed.
#[derive(Debug, Default)]
pub struct Gaps {
    last: Option<u64>,
}

impl Gaps {
    /// Takes the next delivery's sequence; `Cluster` if one is missing.
    pub fn check(&mut self, delivery: u64) -> Result<()> {
        let expected = self.last.map(|last| last + 1);
        self.last = Some(delivery);
        match expected {
            Some(expected) if expected != delivery => Err(Error::Cluster(format!(
                "delivery {expected} never arrived (the next was {delivery}); reading again"
            ))),
            _ => Ok(()),
        }
    }
}

impl EventLog {
    /// Opens the streams of `partitions` partitions, creating any missing
    /// with `settings.replicas`; each may hold its share of
    /// `settings.log_max_bytes`.
    pub(super) async fn open(
        jetstream: &jetstream::Context,
        settings: &ClusterSettings,
        partitions: u16,
    ) -> Result<Self> {
        let share = settings.log_max_bytes / u64::from(partitions.max(1));
        for partition in 0..partitions {
            let config = stream::Config {
                name: stream_name(partition),
                description: Some(format!("abacus events of ingest partition {partition}")),
                subjects: vec![subject(partition)],
                retention: RetentionPolicy::Limits,
                discard: DiscardPolicy::New,
                max_bytes: i64::try_from(share).unwrap_or(i64::MAX),
                storage: StorageType::File,
                num_replicas: settings.replicas,
                ..Default::default()
            };
            jetstream.get_or_create_stream(config).await.map_err(|e| {
                Error::Cluster(format!(
                    "opening the event log of partition {partition}: {e}"
                ))
            })?;
        }
        Ok(Self {
            jetstream: jetstream.clone(),
            in_flight: Arc::new(Semaphore::new(settings.max_inflight_publishes)),
            node: settings.node_id.clone(),
        })
    }

    /// Room for `messages` publishes, or `Overloaded` at once when
    /// `cluster.max_inflight_publishes` are awaiting their acknowledgement.
    pub fn reserve(&self, messages: usize) -> Result<Reservation> {
        let n = u32::try_from(messages).unwrap_or(u32::MAX);
        Arc::clone(&self.in_flight)
            .try_acquire_many_owned(n)
            .map(|permits| Reservation { _permits: permits })
            .map_err(|_| Error::Overloaded("event log"))
    }

    /// Sends each partition's message; the answer waits for their
    /// acknowledgements. Sending only hands them to the connection.
    pub async fn publish(&self, parts: Vec<(u16, Vec<u8>)>, room: Reservation) -> Result<Sent> {
        let mut acks = Vec::with_capacity(parts.len());
        for (partition, body) in parts {
            let ack = self
                .jetstream
                .publish(subject(partition), body.into())
                .await
                .map_err(|e| Error::Cluster(format!("publishing events: {e}")))?;
            acks.push(ack);
        }
        Ok(Sent { acks, _room: room })
    }

    /// `partition`'s messages after sequence `after` (everything when 0),
    /// in order, through its durable consumer, recreated to start there:
    /// where a previous owner's consumer had got to does not matter, only
    /// what this node's store has folded. Also answers how many messages
    /// were waiting when it started (what a takeover must replay).
    pub async fn read(
        &self,
        partition: u16,
        after: u64,
        batch: usize,
    ) -> Result<(u64, impl Stream<Item = Result<Delivery>>)> {
        let cluster = |what: &str, e: &dyn std::fmt::Display| {
            Error::Cluster(format!("partition {partition}: {what}: {e}"))
        };
        let stream = self
            .jetstream
            .get_stream(stream_name(partition))
            .await
            .map_err(|e| cluster("opening the event log", &e))?;
        // This node's own consumer of the partition. Were it shared, a node
        // that lost the lease without knowing yet would recreate it at its
        // own position under the new owner's reads, which would then
        // continue from there without a word.
        let name = format!("partition-{partition}-{}", self.node);
        // Absent the first time; any other failure shows in the create.
        let _ = stream.delete_consumer(&name).await;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("abacus: the owner of partition {partition}")),
                filter_subject: subject(partition),
                deliver_policy: match after {
                    0 => DeliverPolicy::All,
                    seq => DeliverPolicy::ByStartSequence {
                        start_sequence: seq + 1,
                    },
                },
                ack_policy: AckPolicy::All,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_ACK_PENDING,
                // A consumer left by a node that died or gave the
                // partition up goes away by itself.
                inactive_threshold: ABANDONED,
                ..Default::default()
            })
            .await
            .map_err(|e| cluster("creating its consumer", &e))?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch.max(1))
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| cluster("reading", &e))?;
        let deliveries = messages.map(move |message| {
            let message =
                message.map_err(|e| Error::Cluster(format!("partition {partition}: {e}")))?;
            let info = message
                .info()
                .map_err(|e| Error::Cluster(format!("partition {partition}: {e}")))?;
            let (seq, delivery) = (info.stream_sequence, info.consumer_sequence);
            Ok(Delivery {
                seq,
                delivery,
                part: wire::decode(&message.payload),
                message,
            })
        });
        Ok((pending, deliveries))
    }

    /// Removes `partition`'s messages up to `seq`, which a snapshot now
    /// holds; answers how many went.
    pub async fn trim(&self, partition: u16, seq: u64) -> Result<u64> {
        let failed = |e: &dyn std::fmt::Display| {
            Error::Cluster(format!("trimming the log of partition {partition}: {e}"))
        };
        let stream = self
            .jetstream
            .get_stream(stream_name(partition))
            .await
            .map_err(|e| failed(&e))?;
        let purged = stream
            .purge()
            .sequence(seq + 1)
            .await
            .map_err(|e| failed(&e))?;
        Ok(purged.purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partitions_sequences_follow_on_and_a_hole_is_an_error() {
        let mut read = Continuity::after(10);
        assert!(read.check(11).unwrap());
        assert!(!read.check(11).unwrap(), "read again");
        assert!(!read.check(5).unwrap(), "read again");
        assert!(read.check(12).unwrap());
        assert!(read.check(14).is_err(), "13 was trimmed");

        let mut fresh = Continuity::after(0);
        assert!(fresh.check(3).is_err(), "1 and 2 were trimmed");
        assert!(Continuity::after(0).check(1).unwrap());
    }

    #[test]
    fn a_missing_delivery_is_an_error_and_the_watch_goes_on_from_the_next() {
        let mut gaps = Gaps::default();
        assert!(gaps.check(7).is_ok(), "the first delivery sets the start");
        assert!(gaps.check(8).is_ok());
        assert!(gaps.check(10).is_err(), "9 never arrived");
        assert!(gaps.check(11).is_ok());
    }
}
