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

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::mailbox::{partition_of, IngestStats};
use crate::cluster::{wire, EventLog, Reservation};
use crate::domain::{Event, StickyAssignment};
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
    /// owners' writers do; counts into `stats`.
    pub fn new(log: EventLog, partitions: u16, stats: Arc<IngestStats>, room: Arc<Room>) -> Self {
        Self {
            log,
            partitions: usize::from(partitions.max(1)),
            stats,
            room,
        }
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
        let messages = self.prepare(events, firsts)?;
        let n = messages.events;
        let sent = self.log.publish(messages.bodies, messages.room).await;
        let sent = match sent {
            Ok(sent) => sent,
            Err(e) => {
                tracing::error!(error = %e, "events could not be handed to the event log");
                return Err(e);
            }
        };
        self.stats.accepted.fetch_add(n, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (stats, room, claims) = (
            Arc::clone(&self.stats),
            Arc::clone(&self.room),
            messages.claims,
        );
        tokio::spawn(async move {
            let stored = sent.stored().await;
            drop(claims);
            room.freed();
            if let Err(e) = &stored {
                if !wait {
                    stats.lost.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(error = %e, events = n, "events answered 202 were not stored by the event log and are lost");
                }
            }
            // A caller that stopped waiting is no matter.
            let _ = tx.send(stored.is_ok());
        });
        Ok(wait.then_some(rx))
    }

    /// Splits `events` (and their first exposures) by partition, encodes
    /// each part and reserves room for them: `Overloaded` (counted) when
    /// the log has too many publishes in flight.
    fn prepare(&self, events: Vec<Event>, firsts: FirstExposures) -> Result<Messages> {
        let (sticky, claims) = firsts.into_parts();
        let n = events.len() as u64;
        let mut parts: Vec<(Vec<Event>, Vec<StickyAssignment>)> =
            (0..self.partitions).map(|_| Default::default()).collect();
        for event in events {
            parts[partition_of(&event.unit_id, self.partitions)]
                .0
                .push(event);
        }
        for record in sticky {
            parts[partition_of(&record.unit, self.partitions)]
                .1
                .push(record);
        }
        let bodies: Vec<(u16, Vec<u8>)> = parts
            .iter()
            .enumerate()
            .filter(|(_, (events, _))| !events.is_empty())
            .map(|(p, (events, sticky))| (p as u16, wire::encode(events, sticky)))
            .collect();
        let room = match self.log.reserve(bodies.len()) {
            Ok(room) => room,
            Err(e) => {
                self.stats.rejected_full.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .rejected_full_events
                    .fetch_add(n, Ordering::Relaxed);
                return Err(e);
            }
        };
        Ok(Messages {
            bodies,
            events: n,
            claims,
            room,
        })
    }
}

/// Exposures from assignments go to the event log like client events.
impl ExposureQueue for Publisher {
    fn queue(&self, events: Vec<Event>, firsts: FirstExposures) -> Result<()> {
        let messages = self.prepare(events, firsts)?;
        let (log, stats, room) = (
            self.log.clone(),
            Arc::clone(&self.stats),
            Arc::clone(&self.room),
        );
        let n = messages.events;
        stats.accepted.fetch_add(n, Ordering::Relaxed);
        tokio::spawn(async move {
            let stored = match log.publish(messages.bodies, messages.room).await {
                Ok(sent) => sent.stored().await,
                Err(e) => Err(e),
            };
            drop(messages.claims);
            room.freed();
            if let Err(e) = stored {
                stats.lost.fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, "exposures were not stored by the event log and are lost");
            }
        });
        Ok(())
    }

    fn room(&self) -> &Room {
        &self.room
    }
}
