//! Cluster mode, the receiving side: a request's events go to the
//! replicated event log instead of this node's mailboxes. Each partition's
//! part becomes one message on its subject; the partition's owner, on
//! whichever node, folds it (see [`super::owner`]).
//!
//! The shape of fire-and-forget is kept: the handler answers once the
//! messages are handed to the connection, and a task waits for their
//! acknowledgements, holding their place among the
//! `cluster.max_inflight_publishes` (refused `Overloaded` beyond, the 503
//! with `Retry-After`). `ack=persisted` answers after JetStream has stored
//! every part on a quorum of the stream's replicas. A publish that fails
//! after a 202 is counted as lost and logged, as a failed commit is on a
//! single node.
//!
//! A client-reported first exposure the hash would not give makes its
//! experiment *diverged* (see `experiments::sticky`); every node must then
//! look units up. The first such request on a node records the experiment
//! in the shared divergence bucket before it is answered, and every node
//! follows that bucket.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::mailbox::{by_partition, IngestStats};
use crate::cluster::{wire, EventLog, RecordBucket, Reservation, Sent};
use crate::domain::{unix_ms, Event, ExperimentKey};
use crate::experiments::exposure::{ExposureQueue, FirstExposures};
use crate::experiments::sticky::Claim;
use crate::room::Room;
use crate::Result;

/// Publishes events to the event log, one message per partition touched.
pub struct Publisher {
    log: EventLog,
    partitions: usize,
    stats: Arc<IngestStats>,
    /// Assignments refused for a full log wait here for acknowledgements.
    room: Arc<Room>,
    /// The shared record of diverged experiments.
    divergence: RecordBucket<i64>,
    /// Experiments this node recorded there (at most every experiment).
    diverged: Mutex<HashSet<ExperimentKey>>,
}

/// The messages of one request, ready to send.
struct Messages {
    bodies: Vec<(u16, Vec<u8>)>,
    events: u64,
    claims: Vec<Claim>,
    room: Reservation,
}

impl Publisher {
    /// Publishes to `log`, splitting units into `partitions` as the
    /// owners' writers do; counts into `stats`; records diverged
    /// experiments in `divergence`.
    pub fn new(
        log: EventLog,
        partitions: u16,
        stats: Arc<IngestStats>,
        room: Arc<Room>,
        divergence: RecordBucket<i64>,
    ) -> Self {
        Self {
            log,
            partitions: usize::from(partitions.max(1)),
            stats,
            room,
            divergence,
            diverged: Mutex::default(),
        }
    }

    /// Records in the shared bucket the experiments `firsts` makes
    /// diverged that this node has not recorded yet.
    async fn share_divergence(&self, firsts: &FirstExposures) -> Result<()> {
        // Nearly every request diverges nothing: no lock for those.
        if firsts.diverging().next().is_none() {
            return Ok(());
        }
        let new: Vec<ExperimentKey> = {
            let recorded = self
                .diverged
                .lock()
                .map_err(|_| crate::Error::Unavailable)?;
            firsts
                .diverging()
                .filter(|key| !recorded.contains(*key))
                .cloned()
                .collect()
        };
        for key in new {
            let now = unix_ms(time::OffsetDateTime::now_utc());
            match self.divergence.create(key.as_str(), &now).await {
                Ok(_) | Err(crate::Error::ChangedElsewhere(_)) => {}
                Err(e) => return Err(e),
            }
            if let Ok(mut recorded) = self.diverged.lock() {
                recorded.insert(key);
            }
        }
        Ok(())
    }

    /// Publishes `events` (all or none are sent). Without `wait` the answer
    /// comes once they are handed to the connection; with it, the receiver
    /// it returns resolves `true` once the log stored every part on a
    /// quorum, `false` if it did not.
    pub async fn send(
        &self,
        events: Vec<Event>,
        firsts: FirstExposures,
        wait: bool,
    ) -> Result<Option<tokio::sync::oneshot::Receiver<bool>>> {
        self.share_divergence(&firsts).await?;
        let messages = self.prepare(events, firsts)?;
        let sent = self.log.publish(messages.bodies, messages.room).await;
        let sent = sent.inspect_err(|e| {
            tracing::error!(error = %e, "events could not be handed to the event log");
        })?;
        self.stats
            .accepted
            .fetch_add(messages.events, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pending = self.pending(messages.events, messages.claims, !wait);
        tokio::spawn(async move {
            // A caller that stopped waiting is no matter.
            let _ = tx.send(pending.settle(Ok(sent)).await);
        });
        Ok(wait.then_some(rx))
    }

    /// What to do once `messages`' publishes were sent (see [`Pending`]);
    /// `answered`: the caller was already answered 202.
    fn pending(&self, events: u64, claims: Vec<Claim>, answered: bool) -> Pending {
        Pending {
            events,
            claims,
            answered,
            stats: Arc::clone(&self.stats),
            room: Arc::clone(&self.room),
        }
    }

    /// Splits `events` (and their first exposures) by partition, encodes
    /// each part and reserves room for them: `Overloaded` (counted) when
    /// the log has too many publishes in flight.
    fn prepare(&self, events: Vec<Event>, firsts: FirstExposures) -> Result<Messages> {
        let (sticky, claims) = firsts.into_parts();
        let n = events.len() as u64;
        let bodies = by_partition(events, sticky, self.partitions, |p, events, sticky| {
            (p as u16, wire::encode(&events, &sticky))
        });
        let room = self.log.reserve(bodies.len()).inspect_err(|_| {
            self.stats.rejected_full.fetch_add(1, Ordering::Relaxed);
            self.stats
                .rejected_full_events
                .fetch_add(n, Ordering::Relaxed);
        })?;
        Ok(Messages {
            bodies,
            events: n,
            claims,
            room,
        })
    }
}

/// A request's publishes in flight: what is released and counted once the
/// log answers.
struct Pending {
    events: u64,
    /// First exposures held pending until the log stored them.
    claims: Vec<Claim>,
    /// The caller was answered 202 already: a failure loses the events.
    answered: bool,
    stats: Arc<IngestStats>,
    room: Arc<Room>,
}

impl Pending {
    /// Waits for the acknowledgements of `sent`, releases the claims and
    /// the room, and counts and logs answered events the log did not
    /// store as lost. Resolves whether it stored them.
    async fn settle(self, sent: Result<Sent>) -> bool {
        let stored = match sent {
            Ok(sent) => sent.stored().await,
            Err(e) => Err(e),
        };
        drop(self.claims);
        self.room.freed();
        if let Err(e) = &stored {
            if self.answered {
                let events = self.events;
                self.stats.lost.fetch_add(events, Ordering::Relaxed);
                tracing::error!(error = %e, events, "events answered 202 were not stored by the event log and are lost");
            }
        }
        stored.is_ok()
    }
}

/// Exposures from assignments go to the event log like client events.
impl ExposureQueue for Publisher {
    fn queue(&self, events: Vec<Event>, firsts: FirstExposures) -> Result<()> {
        let messages = self.prepare(events, firsts)?;
        self.stats
            .accepted
            .fetch_add(messages.events, Ordering::Relaxed);
        let log = self.log.clone();
        let pending = self.pending(messages.events, messages.claims, true);
        tokio::spawn(async move {
            pending
                .settle(log.publish(messages.bodies, messages.room).await)
                .await;
        });
        Ok(())
    }

    fn room(&self) -> &Room {
        &self.room
    }
}
