//! The bounded mailboxes between the handlers and the partition writers,
//! and the counters both sides keep. [`Mailbox::submit`] routes a
//! request's events to the partitions that own their units and either
//! queues all of them or, when one is full and stays full for
//! `ingest.enqueue_wait_ms`, refuses: handlers never wait on disk, only
//! (briefly) for a writer to take what is queued.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::aggregator::{Aggregator, LiveAggregates};
use super::sequencer::Sequencer;
use super::sink::SinkWorker;
use super::writer::{self, Committer};
use crate::domain::{Derivations, Event, StickyAssignment, Taken, Transfer};
use crate::experiments::exposure::FirstExposures;
use crate::experiments::sticky::Claim;
use crate::room::Room;
use crate::storage::Store;
use crate::{Error, Result};

/// Events to store together, from one request.
pub struct Envelope {
    /// Validated, stamped events.
    pub events: Vec<Event>,
    /// First exposures these events may establish.
    pub sticky: Vec<StickyAssignment>,
    /// Holds them pending until the commit; dropped after it (or with a
    /// refused envelope), which releases them.
    pub claims: Vec<Claim>,
    /// Told `true` once the events are committed (for `ack=persisted`).
    pub ack: Option<tokio::sync::oneshot::Sender<bool>>,
}

impl Envelope {
    /// `events` with the first exposures they may establish, and the
    /// caller's ack when it waits for the commit.
    pub fn new(
        events: Vec<Event>,
        firsts: FirstExposures,
        ack: Option<tokio::sync::oneshot::Sender<bool>>,
    ) -> Self {
        let (sticky, claims) = firsts.into_parts();
        Self {
            events,
            sticky,
            claims,
            ack,
        }
    }
}

/// One partition's part of an [`Envelope`]: the events of the units it
/// owns.
#[derive(Default)]
pub(super) struct Part {
    pub(super) events: Vec<Event>,
    pub(super) sticky: Vec<StickyAssignment>,
    pub(super) claims: Vec<Claim>,
    pub(super) ack: Option<Ack>,
    /// Cluster mode: the event log sequence of the part's last message.
    pub(super) stream_seq: Option<u64>,
    /// Identity stitching, in the linked id's partition: ids to link,
    /// after the events queued before them (a part with links ends its
    /// writer's batch).
    pub(super) links: Vec<Link>,
    /// Identity stitching, in the unit's partition: linked ids' states to
    /// fold into their units.
    pub(super) arrivals: Vec<Arrival>,
}

/// Where a link's caller hears the first exposures its unit took from the
/// linked id, once the unit's partition has folded them in.
pub(super) type LinkReply = tokio::sync::oneshot::Sender<Result<Vec<Taken>>>;

/// An id to link to a unit: its partition takes the id's state out of its
/// share and sends it on as an [`Arrival`].
pub(super) struct Link {
    pub(super) from: Box<str>,
    pub(super) to: Box<str>,
    pub(super) at_ms: i64,
    pub(super) reply: Option<LinkReply>,
}

/// A linked id's state, for the unit's partition to fold in.
pub(super) struct Arrival {
    pub(super) transfer: Transfer,
    pub(super) reply: Option<LinkReply>,
}

/// A committed batch, as sinks and aggregates see it.
#[derive(Debug, Default)]
pub struct Batch {
    /// Events in commit order, numbered, duplicates removed.
    pub events: Vec<Event>,
    /// First exposures committed with them.
    pub sticky: Vec<StickyAssignment>,
}

/// One partition's share of an `ack=persisted` caller's answer: the caller
/// hears `true` once every partition its events went to has committed
/// them, `false` as soon as one could not. Dropped unsent, it says `false`.
pub(super) struct Ack {
    group: Arc<AckGroup>,
    sent: bool,
}

struct AckGroup {
    remaining: AtomicUsize,
    failed: AtomicBool,
    tx: Mutex<Option<tokio::sync::oneshot::Sender<bool>>>,
}

impl Ack {
    /// `parts` shares of the answer `tx` waits for.
    fn split(parts: usize, tx: tokio::sync::oneshot::Sender<bool>) -> Vec<Ack> {
        let group = Arc::new(AckGroup {
            remaining: AtomicUsize::new(parts),
            failed: AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
        });
        (0..parts)
            .map(|_| Ack {
                group: Arc::clone(&group),
                sent: false,
            })
            .collect()
    }

    /// Another share of the same answer: for events a writer sends on to
    /// another partition (those of an id linked meanwhile).
    pub(super) fn fork(&self) -> Ack {
        self.group.remaining.fetch_add(1, Ordering::AcqRel);
        Ack {
            group: Arc::clone(&self.group),
            sent: false,
        }
    }

    /// This partition's outcome.
    pub(super) fn send(mut self, committed: bool) {
        self.sent = true;
        self.group.done(committed);
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.sent {
            self.group.done(false);
        }
    }
}

impl AckGroup {
    fn done(&self, committed: bool) {
        if !committed {
            self.failed.store(true, Ordering::Release);
        }
        let last = self.remaining.fetch_sub(1, Ordering::AcqRel) == 1;
        if last || !committed {
            let tx = self.tx.lock().ok().and_then(|mut tx| tx.take());
            if let Some(tx) = tx {
                // The caller may have given up waiting; nothing to do then.
                let _ = tx.send(!self.failed.load(Ordering::Acquire));
            }
        }
    }
}

/// Batching and capacity of the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Partitions: writers, each owning the units that hash to it.
    pub partitions: u16,
    /// Requests the partitions' mailboxes hold together (each an equal
    /// share) before `submit` answers `Overloaded`.
    pub mailbox_capacity: usize,
    /// Events the partitions' mailboxes hold together (each an equal
    /// share) before `submit` answers `Overloaded`: their memory bound.
    pub mailbox_events: usize,
    /// Longest a request waits for room in a full mailbox before it is
    /// refused `Overloaded`.
    pub enqueue_wait: Duration,
    /// Longest an event waits before its batch is committed.
    pub flush_interval: Duration,
    /// Most events in one committed batch.
    pub flush_max_events: usize,
    /// How long a client event id is remembered for de-duplication.
    pub dedup_window: Duration,
    /// Retries of a failing commit before the store is marked failed.
    pub commit_retries: u32,
    /// Linear back-off of those retries: the n-th waits n × this.
    pub commit_retry: Duration,
    /// Distinct measures counted per experiment (see [`super::aggregator`]).
    pub max_measures: usize,
    /// Most earlier events of a unit read for its CUPED covariates.
    pub max_covariate_events: usize,
    /// Most bins of one variant's quantile sketch.
    pub max_quantile_bins: usize,
}

/// Counters the pipeline keeps for operators and tests.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Events accepted into the mailbox.
    pub accepted: AtomicU64,
    /// Envelopes refused because the mailbox was full.
    pub rejected_full: AtomicU64,
    /// Events in those envelopes.
    pub rejected_full_events: AtomicU64,
    /// Events refused by validation (the whole request is refused).
    pub rejected_invalid: AtomicU64,
    /// Events committed to the store.
    pub persisted: AtomicU64,
    /// Events dropped as duplicates of an earlier event id.
    pub duplicates: AtomicU64,
    /// Events refused because the store has failed.
    pub rejected_failed: AtomicU64,
    /// Events answered 202 without `ack=persisted` whose batch could not
    /// be committed: acknowledged, then lost.
    pub lost: AtomicU64,
    /// Failed attempts of the writer's store operations (each retry counts).
    pub commit_failures: AtomicU64,
    /// Set once a commit failed after every retry; stays set until restart.
    failed: AtomicBool,
    /// Why, for readiness and the alert.
    failure: Mutex<Option<String>>,
}

impl IngestStats {
    /// Why the store was marked failed, or `None` while it works.
    pub fn store_failure(&self) -> Option<String> {
        if !self.is_failed() {
            return None;
        }
        let reason = self.failure.lock().ok().and_then(|r| r.clone());
        Some(reason.unwrap_or_else(|| "the event store failed".to_owned()))
    }

    /// Whether the store was marked failed (one atomic load).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the store failed because of `reason`; the first reason stays.
    pub(crate) fn mark_failed(&self, reason: String) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(reason);
        }
        self.failed.store(true, Ordering::Release);
    }
}

pub(super) enum Command {
    Store(Part),
    /// Commit everything queued before this, then stop.
    Stop,
    /// Cluster mode: commit everything queued before this, then replace
    /// the partition's state with a snapshot.
    Restore(Restore),
    /// Commit everything queued before this, then say so.
    Settle(tokio::sync::oneshot::Sender<()>),
    /// [`Command::Settle`] for a caller that blocks (shutdown).
    Drain(flume::Sender<()>),
    /// Commit everything queued before this, then keep the experiment's
    /// derived metrics for these definitions (see
    /// [`Aggregator::respec`](super::aggregator::Aggregator::respec)).
    Respec(Arc<str>, Arc<Derivations>),
}

/// A snapshot for a partition's writer to restore, and where to answer
/// the stream sequence it was taken at.
pub(super) struct Restore {
    pub(super) snapshot: Vec<u8>,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<u64>>,
}

/// What a partition's mailbox holds and its writer has not taken yet:
/// the mailbox's bounds are kept here, so a request can reserve room in
/// every partition it touches before queueing in any.
#[derive(Debug, Default)]
pub(super) struct Queued {
    parts: AtomicUsize,
    events: AtomicUsize,
}

impl Queued {
    /// Takes a place, and room for `events`, if there are both (at most
    /// `parts` places and `room` events). With no events queued any part
    /// fits, so a batch larger than one partition's share still does.
    fn reserve(&self, events: usize, parts: usize, room: usize) -> bool {
        let fits = self
            .events
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q == 0 || q + events <= room).then_some(q + events)
            })
            .is_ok();
        let placed = fits
            && self
                .parts
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    (q < parts).then_some(q + 1)
                })
                .is_ok();
        if fits && !placed {
            self.events.fetch_sub(events, Ordering::AcqRel);
        }
        placed
    }

    /// Takes a place and room for `events` whatever the bounds: a part one
    /// writer sends on to another, already counted when it was queued.
    pub(super) fn force(&self, events: usize) {
        self.parts.fetch_add(1, Ordering::AcqRel);
        self.events.fetch_add(events, Ordering::AcqRel);
    }

    /// Gives back a place and room for `events`: a refused request's, or
    /// a part its writer took.
    pub(super) fn release(&self, events: usize) {
        self.parts.fetch_sub(1, Ordering::AcqRel);
        self.events.fetch_sub(events, Ordering::AcqRel);
    }
}

/// One partition's end of the pipeline.
struct Partition {
    inbox: Inbox,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Where a partition's writer takes commands, and what it holds: what
/// the handlers queue into, and the other writers send on to.
#[derive(Clone)]
pub(super) struct Inbox {
    pub(super) tx: flume::Sender<Command>,
    pub(super) queued: Arc<Queued>,
}

impl Inbox {
    /// Queues `part` whatever the bounds (see [`Queued::force`]).
    pub(super) fn forward(&self, part: Part) -> Result<()> {
        self.queued.force(part.events.len());
        let events = part.events.len();
        self.tx.send(Command::Store(part)).map_err(|_| {
            self.queued.release(events);
            Error::Unavailable
        })
    }
}

/// The handlers' end of the pipeline: one bounded mailbox per partition.
pub struct Mailbox {
    partitions: Vec<Partition>,
    /// Parts, and events, each partition may hold.
    capacity: usize,
    event_capacity: usize,
    /// The extra sinks every partition feeds; closed after the last
    /// partition stops.
    sinks: Mutex<Option<Arc<Vec<SinkWorker>>>>,
    stats: Arc<IngestStats>,
    /// Where requests refused for a full mailbox wait for the writers.
    room: Arc<Room>,
}

impl Mailbox {
    /// Starts one writer per partition, feeding committed batches to
    /// `sinks`. Restores the aggregates from `store` and publishes them to
    /// `live`.
    pub fn start(
        store: Store,
        limits: IngestLimits,
        sinks: Vec<SinkWorker>,
        live: Arc<LiveAggregates>,
    ) -> Result<Self> {
        let committers = (0..limits.partitions)
            .map(|_| Box::new(store.clone()) as Box<dyn Committer>)
            .collect();
        Self::start_with(store, limits, sinks, live, committers)
    }

    /// [`Mailbox::start`], committing through `committers` (test doubles
    /// that fail on demand; one per partition) instead of the store.
    fn start_with(
        store: Store,
        limits: IngestLimits,
        sinks: Vec<SinkWorker>,
        live: Arc<LiveAggregates>,
        committers: Vec<Box<dyn Committer>>,
    ) -> Result<Self> {
        let stats = Arc::new(IngestStats::default());
        let sinks = Arc::new(sinks);
        let sequencer = Sequencer::new(store.next_seq()?);
        let mut aggregators =
            Aggregator::load_partitions(&store, limits.partitions, limits.max_measures, &live)?;
        for aggregator in &mut aggregators {
            aggregator.bound_sketches(limits.max_quantile_bins);
        }
        let room = Arc::new(Room::new(limits.enqueue_wait));
        let (inboxes, receivers): (Vec<Inbox>, Vec<_>) = (0..aggregators.len())
            .map(|_| {
                let (tx, rx) = flume::unbounded();
                let queued = Arc::new(Queued::default());
                (Inbox { tx, queued }, rx)
            })
            .unzip();
        let peers = Arc::new(inboxes);
        let mut partitions = Vec::with_capacity(aggregators.len());
        for (((index, aggregator), committer), rx) in aggregators
            .into_iter()
            .enumerate()
            .zip(committers)
            .zip(receivers)
        {
            let inbox = peers[index].clone();
            let queued = Arc::clone(&inbox.queued);
            let writer = writer::Writer {
                partition: index as u16,
                committer,
                clock: Arc::clone(store.clock()),
                limits,
                sinks: Arc::clone(&sinks),
                stats: Arc::clone(&stats),
                sequencer: Arc::clone(&sequencer),
                aggregator,
                live: Arc::clone(&live),
                queued,
                peers: Arc::clone(&peers),
                room: Arc::clone(&room),
            };
            let thread = std::thread::Builder::new()
                .name(format!("ingest-{index}"))
                .spawn(move || writer.run(&rx))
                .map_err(|_| Error::Unavailable)?;
            partitions.push(Partition {
                inbox,
                thread: Mutex::new(Some(thread)),
            });
        }
        // Links whose state left its partition but did not reach its
        // unit's before the server stopped: sent on again.
        for transfer in store.pending_transfers()? {
            let p = partition_of(&transfer.to, partitions.len());
            let arrival = Arrival {
                transfer,
                reply: None,
            };
            partitions[p].inbox.forward(Part {
                arrivals: vec![arrival],
                ..Part::default()
            })?;
        }
        Ok(Self {
            // The bound is on the mailboxes together, whatever the count.
            capacity: (limits.mailbox_capacity / partitions.len().max(1)).max(1),
            event_capacity: (limits.mailbox_events / partitions.len().max(1)).max(1),
            partitions,
            sinks: Mutex::new(Some(sinks)),
            stats,
            room,
        })
    }

    /// Queues a request's events in the partitions that own their units,
    /// all or none. When one of them is full, waits up to the configured
    /// `enqueue_wait` for its writer to take parts, then answers
    /// `Overloaded`; `Unavailable` once the store has failed (the caller
    /// answers 503 and nothing is stored). A waiting caller's `ack` hears
    /// `true` once every partition involved has committed its part.
    pub async fn submit(&self, envelope: Envelope) -> Result<()> {
        let n = self.check_store(&envelope)?;
        let mut parts = Some(self.split(envelope));
        let placed = self.room.retry(|| self.place(&mut parts)).await;
        self.count(placed, n)
    }

    /// [`Mailbox::submit`] without waiting: refused at once when a
    /// partition is full (exposures from assignments, which retry the
    /// whole assignment through [`Mailbox::room`]).
    pub fn try_submit(&self, envelope: Envelope) -> Result<()> {
        let n = self.check_store(&envelope)?;
        let mut parts = Some(self.split(envelope));
        let placed = self.place(&mut parts);
        self.count(placed, n)
    }

    /// Cluster mode: queues what the event log holds for `partition` up to
    /// sequence `stream_seq`, for its writer to fold and commit with that
    /// sequence. Waits for room as long as it takes (the log keeps the
    /// events meanwhile), then for the commit. Answers whether they were
    /// committed; `Unavailable` once the store has failed.
    pub async fn fold(
        &self,
        partition: u16,
        events: Vec<Event>,
        sticky: Vec<StickyAssignment>,
        stream_seq: u64,
    ) -> Result<bool> {
        let index = usize::from(partition);
        if self.stats.is_failed() || index >= self.partitions.len() {
            return Err(Error::Unavailable);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let part = Part {
            events,
            sticky,
            claims: Vec::new(),
            ack: Some(Ack::split(1, tx).remove(0)),
            stream_seq: Some(stream_seq),
            ..Part::default()
        };
        let mut parts = Some(vec![(index, part)]);
        while let Err(e) = self.room.retry(|| self.place(&mut parts)).await {
            if !matches!(e, Error::Overloaded(_)) {
                return Err(e);
            }
        }
        Ok(rx.await.unwrap_or(false))
    }

    /// Cluster mode: has `partition`'s writer replace its state with
    /// `snapshot` (after committing what is queued before it); answers the
    /// stream sequence the snapshot was taken at.
    pub async fn restore(&self, partition: u16, snapshot: Vec<u8>) -> Result<u64> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.command(partition, Command::Restore(Restore { snapshot, reply }))?;
        answer.await.map_err(|_| Error::Unavailable)?
    }

    /// Waits until `partition`'s writer has committed everything queued
    /// before this call. Cluster mode: a consumer that was stopped midway
    /// may have left a part queued; a new one reads the folded sequence
    /// only after it.
    pub async fn settle(&self, partition: u16) -> Result<()> {
        let (done, settled) = tokio::sync::oneshot::channel();
        self.command(partition, Command::Settle(done))?;
        settled.await.map_err(|_| Error::Unavailable)
    }

    /// Identity stitching: has the partition owning `from` link it to
    /// `to` once what is queued before is committed; the answer comes once
    /// `to`'s partition has folded `from`'s state in (see
    /// [`Aggregator::attach`](super::aggregator::Aggregator::attach)).
    /// Waits for room like [`Mailbox::submit`].
    pub async fn link(
        &self,
        from: &str,
        to: &str,
        at_ms: i64,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Vec<Taken>>>> {
        if self.stats.is_failed() {
            return Err(Error::Unavailable);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let link = Link {
            from: from.into(),
            to: to.into(),
            at_ms,
            reply: Some(reply),
        };
        let part = Part {
            links: vec![link],
            ..Part::default()
        };
        let mut parts = Some(vec![(partition_of(from, self.partitions.len()), part)]);
        self.room.retry(|| self.place(&mut parts)).await?;
        Ok(answer)
    }

    /// Tells every partition's writer the derived metrics of `experiment`
    /// (after what is queued now): each recomputes its share's derived
    /// sums if they were kept for other definitions. A partition whose
    /// writer has stopped has nothing left to fold.
    pub fn respec(&self, experiment: &str, derivations: Derivations) {
        let (experiment, derivations): (Arc<str>, _) = (experiment.into(), Arc::new(derivations));
        for partition in &self.partitions {
            let command = Command::Respec(Arc::clone(&experiment), Arc::clone(&derivations));
            let _ = partition.inbox.tx.send(command);
        }
    }

    /// Hands `command` to `partition`'s writer.
    fn command(&self, partition: u16, command: Command) -> Result<()> {
        self.partitions
            .get(usize::from(partition))
            .ok_or(Error::Unavailable)?
            .inbox
            .tx
            .send(command)
            .map_err(|_| Error::Unavailable)
    }

    /// Where requests refused for a full mailbox wait for the writers.
    pub fn room(&self) -> &Room {
        &self.room
    }

    /// The envelope's event count, or `Unavailable` (counted) once the
    /// store has failed.
    fn check_store(&self, envelope: &Envelope) -> Result<u64> {
        let n = envelope.events.len() as u64;
        if self.stats.is_failed() {
            self.stats.rejected_failed.fetch_add(n, Ordering::Relaxed);
            return Err(Error::Unavailable);
        }
        Ok(n)
    }

    /// Takes a place in every partition `parts` go to and queues them
    /// (taking them), or takes none and leaves them: `Overloaded`.
    fn place(&self, parts: &mut Option<Vec<(usize, Part)>>) -> Result<()> {
        let Some(pending) = parts.as_ref() else {
            return Ok(());
        };
        let reserved: Vec<(&Inbox, usize)> = pending
            .iter()
            .map(|(p, part)| (&self.partitions[*p].inbox, part.events.len()))
            .take_while(|(p, events)| {
                p.queued
                    .reserve(*events, self.capacity, self.event_capacity)
            })
            .collect();
        if reserved.len() < pending.len() {
            for (p, events) in reserved {
                p.queued.release(events);
            }
            return Err(Error::Overloaded("ingest"));
        }
        for (p, part) in parts.take().into_iter().flatten() {
            if self.partitions[p]
                .inbox
                .tx
                .send(Command::Store(part))
                .is_err()
            {
                return Err(Error::Unavailable);
            }
        }
        Ok(())
    }

    /// Counts what became of a request's `n` events.
    fn count(&self, placed: Result<()>, n: u64) -> Result<()> {
        match &placed {
            Ok(()) => {
                self.stats.accepted.fetch_add(n, Ordering::Relaxed);
            }
            Err(Error::Overloaded(_)) => {
                self.stats.rejected_full.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .rejected_full_events
                    .fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        placed
    }

    /// The envelope's parts, by partition (see [`by_partition`]), each
    /// with the claims of its units and its share of the caller's ack.
    fn split(&self, envelope: Envelope) -> Vec<(usize, Part)> {
        let Envelope {
            events,
            sticky,
            claims,
            ack,
        } = envelope;
        let count = self.partitions.len();
        let mut parts = by_partition(events, sticky, count, |p, events, sticky| {
            let part = Part {
                events,
                sticky,
                ..Part::default()
            };
            (p, part)
        });
        if let [(_, only)] = &mut parts[..] {
            only.claims = claims;
        } else {
            for claim in claims {
                let p = partition_of(claim.unit(), count);
                // A claim of a partition without events is released now.
                if let Some((_, part)) = parts.iter_mut().find(|(q, _)| *q == p) {
                    part.claims.push(claim);
                }
            }
        }
        if let Some(tx) = ack {
            let acks = Ack::split(parts.len(), tx);
            for ((_, part), ack) in parts.iter_mut().zip(acks) {
                part.ack = Some(ack);
            }
        }
        parts
    }

    /// Parts waiting in the mailboxes.
    pub fn depth(&self) -> usize {
        self.partitions
            .iter()
            .map(|p| p.inbox.queued.parts.load(Ordering::Relaxed))
            .sum()
    }

    /// What the mailboxes hold together.
    pub fn capacity(&self) -> usize {
        self.capacity * self.partitions.len()
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }

    /// Whether every partition's writer is running.
    pub fn is_alive(&self) -> bool {
        self.partitions
            .iter()
            .all(|p| !p.inbox.tx.is_disconnected())
    }

    /// Commits everything queued, then flushes and stops every sink.
    /// Blocks, but not for ever: a failing store is given up on after its
    /// retries, and what is queued then is refused at once. Idempotent.
    ///
    /// Every writer first commits what it holds (and so sends on what it
    /// has for another partition: events of a linked id, a link's state),
    /// and only then is any told to stop.
    pub fn close(&self) {
        let (drained, done) = flume::unbounded();
        let running = (self.partitions.iter())
            .filter(|p| p.inbox.tx.send(Command::Drain(drained.clone())).is_ok())
            .count();
        drop(drained);
        for _ in 0..running {
            if done.recv().is_err() {
                break;
            }
        }
        let threads: Vec<JoinHandle<()>> = self
            .partitions
            .iter()
            .filter_map(|p| {
                let thread = p.thread.lock().ok().and_then(|mut t| t.take())?;
                if p.inbox.tx.send(Command::Stop).is_err() {
                    tracing::error!("an ingest writer had already stopped");
                }
                Some(thread)
            })
            .collect();
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("an ingest writer panicked");
            }
        }
        let sinks = self.sinks.lock().ok().and_then(|mut s| s.take());
        if let Some(sinks) = sinks {
            match Arc::try_unwrap(sinks) {
                Ok(sinks) => {
                    for sink in sinks {
                        sink.close();
                    }
                }
                Err(_) => tracing::error!("sinks still in use after every writer stopped"),
            }
        }
    }
}

/// `events` and the first exposures they may establish, grouped by the
/// partition (of `count`) that owns their units, in partition order;
/// groups without events are left out. Events keep their order within a
/// group, so a unit's events (all in one) stay in the order they came.
/// Each group becomes what `make` makes of it (partition, events, first
/// exposures). One unit (an assignment's exposure), or units that all hash
/// alike, make one group with nothing else allocated.
pub(super) fn by_partition<T>(
    events: Vec<Event>,
    sticky: Vec<StickyAssignment>,
    count: usize,
    mut make: impl FnMut(usize, Vec<Event>, Vec<StickyAssignment>) -> T,
) -> Vec<T> {
    // Each event's partition, hashed once; none to hash with one.
    let owners: Vec<usize> = if count <= 1 {
        Vec::new()
    } else {
        events
            .iter()
            .map(|e| partition_of(&e.unit_id, count))
            .collect()
    };
    let first = owners.first().copied().unwrap_or(0);
    if owners.iter().all(|&p| p == first) {
        return vec![make(first, events, sticky)];
    }
    let mut groups: Vec<(Vec<Event>, Vec<StickyAssignment>)> =
        (0..count).map(|_| Default::default()).collect();
    for (event, p) in events.into_iter().zip(owners) {
        groups[p].0.push(event);
    }
    for record in sticky {
        groups[partition_of(&record.unit, count)].1.push(record);
    }
    groups
        .into_iter()
        .enumerate()
        .filter(|(_, (events, _))| !events.is_empty())
        .map(|(p, (events, sticky))| make(p, events, sticky))
        .collect()
}

/// The partition that owns `unit`: a hash of its id with fixed keys, so
/// all of a unit's events meet in one writer. On a single node a unit may
/// land elsewhere after an upgrade (per-unit state is keyed by unit, not
/// partition, and every share of the aggregates counts); in cluster mode
/// every node must agree, which the leases check with a probe of it.
pub(super) fn partition_of(unit: &str, partitions: usize) -> usize {
    use std::hash::{DefaultHasher, Hasher};
    let mut hasher = DefaultHasher::new();
    hasher.write(unit.as_bytes());
    // Multiply-shift maps the 64-bit hash onto 0..partitions evenly.
    ((u128::from(hasher.finish()) * partitions as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn envelope(units: &[&str]) -> Envelope {
        let events = units
            .iter()
            .map(|u| Event::sample("conversion", u))
            .collect();
        Envelope::new(events, FirstExposures::default(), None)
    }

    /// A mailbox of `partitions` holding `capacity` parts each, with no
    /// writer: nothing drains it. The receivers are returned so the
    /// mailboxes stay open.
    fn idle(partitions: usize, capacity: usize) -> (Mailbox, Vec<flume::Receiver<Command>>) {
        idle_bounded(partitions, capacity, usize::MAX / 2)
    }

    /// [`idle`], holding at most `event_capacity` events per partition.
    fn idle_bounded(
        partitions: usize,
        capacity: usize,
        event_capacity: usize,
    ) -> (Mailbox, Vec<flume::Receiver<Command>>) {
        let (parts, receivers) = (0..partitions)
            .map(|_| {
                let (tx, rx) = flume::unbounded();
                let part = Partition {
                    inbox: Inbox {
                        tx,
                        queued: Arc::default(),
                    },
                    thread: Mutex::new(None),
                };
                (part, rx)
            })
            .unzip();
        let mailbox = Mailbox {
            partitions: parts,
            capacity,
            event_capacity,
            sinks: Mutex::new(None),
            stats: Arc::default(),
            room: Arc::default(),
        };
        (mailbox, receivers)
    }

    /// A unit of each of `partitions` partitions.
    fn one_unit_per_partition(partitions: usize) -> Vec<String> {
        let mut units = vec![String::new(); partitions];
        for i in 0.. {
            let unit = format!("u{i}");
            let p = partition_of(&unit, partitions);
            if units[p].is_empty() {
                units[p] = unit;
            }
            if units.iter().all(|u| !u.is_empty()) {
                return units;
            }
        }
        unreachable!()
    }

    #[test]
    fn a_full_mailbox_is_refused_at_once_and_counted() {
        let (ingest, _rx) = idle(1, 2);
        assert!(ingest.try_submit(envelope(&["a"])).is_ok());
        assert!(ingest.try_submit(envelope(&["a"])).is_ok());
        assert!(matches!(
            ingest.try_submit(envelope(&["a"])),
            Err(Error::Overloaded("ingest"))
        ));
        assert_eq!(ingest.stats().rejected_full.load(Ordering::Relaxed), 1);
        assert_eq!((ingest.depth(), ingest.capacity()), (2, 2));
    }

    /// A request that finds the mailbox full waits for its writer to take
    /// a part and is queued then; one that waits in vain is refused once,
    /// and counted once.
    #[tokio::test(start_paused = true)]
    async fn a_full_mailbox_makes_a_request_wait_for_room_up_to_the_limit() {
        let (mut ingest, rx) = idle(1, 1);
        ingest.room = Arc::new(Room::new(Duration::from_millis(100)));
        let ingest = Arc::new(ingest);
        ingest.submit(envelope(&["a"])).await.expect("room");
        let writer = {
            let ingest = Arc::clone(&ingest);
            let rx = rx[0].clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let Ok(Command::Store(part)) = rx.try_recv() else {
                    panic!("a queued part")
                };
                ingest.partitions[0].inbox.queued.release(part.events.len());
                ingest.room.freed();
            })
        };
        let started = tokio::time::Instant::now();
        ingest
            .submit(envelope(&["b"]))
            .await
            .expect("queued once room was freed");
        assert_eq!(started.elapsed(), Duration::from_millis(30));
        writer.await.expect("the writer task");

        let started = tokio::time::Instant::now();
        assert!(matches!(
            ingest.submit(envelope(&["c"])).await,
            Err(Error::Overloaded("ingest"))
        ));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        let stats = ingest.stats();
        assert_eq!(stats.rejected_full.load(Ordering::Relaxed), 1);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 2);
        assert_eq!(ingest.depth(), 1);
    }

    #[test]
    fn queued_events_are_bounded_whatever_the_request_count() {
        let (ingest, _rx) = idle_bounded(1, 100, 3);
        ingest.try_submit(envelope(&["a", "a"])).unwrap();
        assert!(matches!(
            ingest.try_submit(envelope(&["a", "a"])),
            Err(Error::Overloaded("ingest"))
        ));
        ingest.try_submit(envelope(&["a"])).unwrap();
        assert_eq!(ingest.depth(), 2, "the refused request took no place");
        // A partition with nothing queued takes a part larger than its share.
        let (ingest, _rx) = idle_bounded(1, 100, 3);
        ingest.try_submit(envelope(&["a"; 5])).unwrap();
        assert!(ingest.try_submit(envelope(&["a"])).is_err());
    }

    /// A request whose units span partitions is queued in all of them or
    /// in none: one full partition refuses the whole request.
    #[test]
    fn a_request_across_partitions_is_queued_whole_or_refused_whole() {
        let (ingest, rx) = idle(3, 1);
        let units = one_unit_per_partition(3);
        let [a, b, c] = [&*units[0], &*units[1], &*units[2]];
        ingest.try_submit(envelope(&[b])).unwrap();
        assert!(matches!(
            ingest.try_submit(envelope(&[a, c, b, a])),
            Err(Error::Overloaded("ingest"))
        ));
        assert_eq!(ingest.depth(), 1, "nothing of the refused request stays");
        assert!(rx[0].is_empty() && rx[2].is_empty());

        let (ingest, rx) = idle(3, 1);
        ingest.try_submit(envelope(&[a, c, b, a])).unwrap();
        assert_eq!(ingest.depth(), 3);
        let Ok(Command::Store(part)) = rx[0].try_recv() else {
            panic!("a part for partition 0")
        };
        let mine: Vec<&str> = part.events.iter().map(|e| &*e.unit_id).collect();
        assert_eq!(mine, [a, a], "a unit's events stay together, in order");
    }

    #[test]
    fn a_waiting_caller_hears_true_only_once_every_partition_committed() {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let mut acks = Ack::split(3, tx);
        acks.pop().unwrap().send(true);
        acks.pop().unwrap().send(true);
        assert!(rx.try_recv().is_err(), "one part still out");
        acks.pop().unwrap().send(true);
        assert_eq!(rx.try_recv(), Ok(true));

        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let mut acks = Ack::split(2, tx);
        drop(acks.pop());
        assert_eq!(rx.try_recv(), Ok(false), "a part refused (dropped) is a no");
        acks.pop().unwrap().send(true);
    }

    #[test]
    fn units_spread_over_the_partitions() {
        let mut counts = [0usize; 4];
        for i in 0..40_000 {
            counts[partition_of(&format!("user-{i}"), 4)] += 1;
        }
        assert!(
            counts.iter().all(|&n| (9_000..11_000).contains(&n)),
            "{counts:?}"
        );
        assert_eq!(partition_of("anyone", 1), 0);
    }

    #[test]
    fn close_commits_everything_queued_and_acknowledges_it() {
        let (_dir, store) = Store::temporary();
        let limits = IngestLimits {
            partitions: 1,
            mailbox_capacity: 10_000,
            mailbox_events: 1 << 20,
            enqueue_wait: Duration::ZERO,
            flush_interval: Duration::from_secs(60),
            flush_max_events: 1_000_000,
            dedup_window: Duration::from_secs(60),
            commit_retries: 5,
            commit_retry: Duration::from_millis(1),
            max_measures: 100,
            max_covariate_events: 1000,
            max_quantile_bins: 1024,
        };
        let live = Arc::new(LiveAggregates::default());
        let ingest = Mailbox::start(store.clone(), limits, Vec::new(), live).expect("start");
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let event = |i: usize| Event {
            event_id: format!("id-{}", i % 900).into(),
            timestamp_ms: 1,
            received_ms: 1,
            client_id: true,
            ..Event::sample("conversion", "u")
        };
        ingest
            .try_submit(Envelope::new(
                (0..1000).map(event).collect(),
                FirstExposures::default(),
                Some(tx),
            ))
            .expect("queued");
        ingest.close();
        assert_eq!(rx.try_recv(), Ok(true));
        let (stored, _) = store
            .events(None, 0, i64::MAX, None, 10_000, usize::MAX)
            .expect("read");
        assert_eq!(stored.len(), 900, "100 duplicate ids dropped");
        assert_eq!(ingest.stats().duplicates.load(Ordering::Relaxed), 100);
        assert_eq!(store.next_seq().expect("seq"), 901);
    }

    /// The de-duplication window is measured on the store's clock: moving
    /// the clock past it lets a repeated client id through again.
    #[test]
    fn the_dedup_window_follows_the_stores_clock() {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(crate::clock::ManualClock::new(
            time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
        ));
        let options = crate::storage::StoreOptions {
            dedup_window_ms: 60_000,
            retention_ms: None,
            cache_bytes: 8 << 20,
            audit_retention_ms: 365 * 24 * 3600 * 1000,
        };
        let store =
            Store::open_with_clock(dir.path(), options, Arc::clone(&clock) as _).expect("store");
        let limits = IngestLimits {
            partitions: 1,
            mailbox_capacity: 16,
            mailbox_events: 1 << 20,
            enqueue_wait: Duration::ZERO,
            flush_interval: Duration::from_millis(1),
            flush_max_events: 100,
            dedup_window: Duration::from_secs(60),
            commit_retries: 0,
            commit_retry: Duration::from_millis(1),
            max_measures: 10,
            max_covariate_events: 1000,
            max_quantile_bins: 1024,
        };
        let live = Arc::new(LiveAggregates::default());
        let ingest = Mailbox::start(store.clone(), limits, Vec::new(), live).expect("start");
        let send = || {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let event = Event {
                event_id: "same".into(),
                client_id: true,
                ..Event::sample("conversion", "u")
            };
            ingest
                .try_submit(Envelope::new(
                    vec![event],
                    FirstExposures::default(),
                    Some(tx),
                ))
                .expect("queued");
            rx.blocking_recv().expect("answered")
        };
        assert!(send());
        assert!(send());
        assert_eq!(ingest.stats().duplicates.load(Ordering::Relaxed), 1);
        clock.advance(Duration::from_secs(61));
        assert!(send());
        ingest.close();
        assert_eq!(
            ingest.stats().duplicates.load(Ordering::Relaxed),
            1,
            "past the window, the id is new again"
        );
        assert_eq!(store.next_seq().expect("seq"), 3, "two events stored");
    }

    /// Commits through the store after failing the first `failures` calls.
    struct Flaky {
        store: Store,
        failures: u64,
        calls: Arc<AtomicU64>,
    }

    impl Committer for Flaky {
        fn prepare(&mut self, commit: &crate::storage::Commit<'_>) -> Result<rocksdb::WriteBatch> {
            self.store.prepare(commit)
        }

        fn write(&mut self, batch: rocksdb::WriteBatch, sync: bool) -> Result<()> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.failures > 0 {
                self.failures -= 1;
                return Err(Error::Corrupt {
                    cf: "events",
                    reason: "injected failure".into(),
                });
            }
            self.store.write(batch, sync)
        }

        fn seen_ids(
            &mut self,
            ids: &[crate::storage::ClientId<'_>],
            since_ms: u64,
        ) -> Result<Vec<bool>> {
            self.store.seen_ids(ids, since_ms)
        }

        fn unit_states(
            &mut self,
            units: &[&str],
        ) -> Result<Vec<Option<Vec<crate::domain::Exposure>>>> {
            self.store.unit_states(units)
        }

        fn open_predictions(
            &mut self,
            ids: &[(&str, &str)],
        ) -> Result<Vec<Option<crate::domain::Event>>> {
            self.store.open_predictions(ids)
        }

        fn unit_events(
            &mut self,
            unit: &str,
            from_ms: i64,
            to_ms: i64,
            limit: usize,
        ) -> Result<Vec<Event>> {
            self.store.unit_events(unit, from_ms, to_ms, limit)
        }

        fn restore(&mut self, partition: u16, snapshot: &[u8]) -> Result<crate::storage::Restored> {
            self.store.restore_partition(partition, snapshot)
        }

        fn scan_units(
            &mut self,
            belongs: &dyn Fn(&str) -> bool,
            f: &mut dyn FnMut(&[crate::domain::Exposure]),
        ) -> Result<()> {
            self.store.for_each_unit_state(belongs, f)
        }

        fn write_shares(
            &mut self,
            partition: u16,
            changes: &crate::domain::AggregateChanges<'_>,
        ) -> Result<()> {
            self.store.write_aggregates(partition, changes)
        }

        fn has_links(&mut self) -> bool {
            self.store.has_links()
        }

        fn linked_or_linking(&mut self, ids: &[&str]) -> Result<Vec<Option<Box<str>>>> {
            self.store.linked_or_linking(ids)
        }

        fn stitch(&mut self, batch: &mut rocksdb::WriteBatch, stitched: &writer::Stitched) {
            Committer::stitch(&mut self.store, batch, stitched);
        }
    }

    /// An ingest pipeline whose commits fail `failures` times, with five
    /// retries 1 ms apart (linear), and a counter of commit calls.
    fn flaky(failures: u64) -> (tempfile::TempDir, Store, Mailbox, Arc<AtomicU64>) {
        let (dir, store) = Store::temporary();
        let limits = IngestLimits {
            partitions: 1,
            mailbox_capacity: 100,
            mailbox_events: 1 << 20,
            enqueue_wait: Duration::ZERO,
            flush_interval: Duration::from_millis(20),
            flush_max_events: 1_000_000,
            dedup_window: Duration::from_secs(60),
            commit_retries: 5,
            commit_retry: Duration::from_millis(1),
            max_measures: 100,
            max_covariate_events: 1000,
            max_quantile_bins: 1024,
        };
        let calls = Arc::new(AtomicU64::new(0));
        let committer = Flaky {
            store: store.clone(),
            failures,
            calls: Arc::clone(&calls),
        };
        let live = Arc::new(LiveAggregates::default());
        let ingest = Mailbox::start_with(
            store.clone(),
            limits,
            Vec::new(),
            live,
            vec![Box::new(committer)],
        )
        .expect("start");
        (dir, store, ingest, calls)
    }

    fn events(n: usize) -> Vec<Event> {
        (0..n)
            .map(|_| Event {
                timestamp_ms: 1,
                received_ms: 1,
                ..Event::sample("conversion", "u")
            })
            .collect()
    }

    fn stored(store: &Store) -> usize {
        store
            .events(None, 0, i64::MAX, None, 10_000, usize::MAX)
            .expect("read")
            .0
            .len()
    }

    #[test]
    fn a_commit_that_fails_a_few_times_is_retried_and_acknowledged() {
        let (_dir, store, ingest, calls) = flaky(3);
        let (tx, rx) = tokio::sync::oneshot::channel();
        ingest
            .try_submit(Envelope::new(
                events(10),
                FirstExposures::default(),
                Some(tx),
            ))
            .expect("queued");
        assert_eq!(rx.blocking_recv(), Ok(true));
        assert_eq!(
            calls.load(Ordering::Relaxed),
            4,
            "three failures, then success"
        );
        let stats = ingest.stats();
        assert_eq!(stats.commit_failures.load(Ordering::Relaxed), 3);
        assert_eq!(stats.store_failure(), None);
        ingest.close();
        assert_eq!(stored(&store), 10);
    }

    #[test]
    fn a_commit_that_keeps_failing_is_given_up_refused_and_does_not_hold_up_close() {
        let (_dir, store, ingest, calls) = flaky(u64::MAX);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        for ack in [Some(tx), None] {
            ingest
                .try_submit(Envelope::new(
                    events(if ack.is_some() { 10 } else { 7 }),
                    FirstExposures::default(),
                    ack,
                ))
                .expect("queued");
        }
        assert_eq!(rx.blocking_recv(), Ok(false), "the waiter hears false");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(calls.load(Ordering::Relaxed), 6, "one try and five retries");
        let stats = ingest.stats();
        assert_eq!(stats.commit_failures.load(Ordering::Relaxed), 6);
        let failure = stats.store_failure().expect("marked failed");
        assert!(failure.contains("after 5 retries"), "{failure}");
        // Counted once its batch is refused, which may be just after the waiter's.
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.lost.load(Ordering::Relaxed) < 7 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            stats.lost.load(Ordering::Relaxed),
            7,
            "fire-and-forget events lost"
        );

        assert!(matches!(
            ingest.try_submit(Envelope::new(events(3), FirstExposures::default(), None)),
            Err(Error::Unavailable)
        ));
        assert_eq!(stats.rejected_failed.load(Ordering::Relaxed), 3);
        let closing = Instant::now();
        ingest.close();
        assert!(
            closing.elapsed() < Duration::from_secs(1),
            "close is prompt"
        );
        assert_eq!(
            calls.load(Ordering::Relaxed),
            6,
            "no commit after giving up"
        );
        assert_eq!(stored(&store), 0);
    }
}
