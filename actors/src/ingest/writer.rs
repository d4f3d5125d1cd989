//! A partition's writer thread: it owns the units that hash to its
//! partition, their state and its share of the aggregates (see
//! [`super::aggregator`]), and commits their events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocksdb::WriteBatch;

use super::aggregator::{Aggregator, LiveAggregates};
use super::mailbox::{
    partition_of, Ack, Arrival, Batch, Command, Inbox, IngestLimits, IngestStats, Link, LinkReply,
    Part, Queued, Restore,
};
use super::sequencer::Sequencer;
use super::sink::SinkWorker;
use crate::clock::Clock;
use crate::domain::{
    unix_ms, AggregateChanges, Derivations, Event, EventId, ExperimentKey, Exposure,
    StickyAssignment, Taken, Transfer,
};
use crate::room::Room;
use crate::storage::{bucket_deltas, Arrived, ClientId, Commit, Restored, Store};
use crate::{Error, Result};

/// Where the writer commits batches and looks things up: the store, or a
/// test double that fails on demand.
pub(crate) trait Committer: Send + 'static {
    /// Encodes one batch (see [`Store::prepare`]).
    fn prepare(&mut self, commit: &Commit<'_>) -> Result<WriteBatch>;
    /// Writes a prepared batch atomically (see [`Store::write`]).
    fn write(&mut self, batch: WriteBatch, sync: bool) -> Result<()>;
    /// For each id, whether it was committed for its unit at or after
    /// `since_ms`.
    fn seen_ids(&mut self, ids: &[ClientId<'_>], since_ms: u64) -> Result<Vec<bool>>;
    /// Each unit's stored aggregator state (see [`Store::unit_states`]).
    fn unit_states(&mut self, units: &[&str]) -> Result<Vec<Option<Vec<Exposure>>>>;
    /// Each (unit, `prediction_id`)'s open prediction (see
    /// [`Store::open_predictions`]).
    fn open_predictions(&mut self, ids: &[(&str, &str)]) -> Result<Vec<Option<Event>>>;
    /// A unit's stored events in a time range, at most `limit` (see
    /// [`Store::unit_events`]).
    fn unit_events(
        &mut self,
        unit: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<Event>>;
    /// Writes a snapshot of the partition (see [`Store::restore_partition`]).
    fn restore(&mut self, partition: u16, snapshot: &[u8]) -> Result<Restored>;
    /// Every stored unit state that `belongs` (see
    /// [`Store::for_each_unit_state`]).
    fn scan_units(
        &mut self,
        belongs: &dyn Fn(&str) -> bool,
        f: &mut dyn FnMut(&[Exposure]),
    ) -> Result<()>;
    /// Writes recomputed shares (see [`Store::write_aggregates`]).
    fn write_shares(&mut self, partition: u16, changes: &AggregateChanges<'_>) -> Result<()>;
    /// Whether any id was ever linked (see [`Store::has_links`]).
    fn has_links(&mut self) -> bool;
    /// The unit each id links to, links in the making included (see
    /// [`Store::linked_or_linking`]).
    fn linked_or_linking(&mut self, ids: &[&str]) -> Result<Vec<Option<Box<str>>>>;
    /// Adds a batch's links and arrivals to its write (see
    /// [`Store::write_transfer`] and [`Store::write_arrival`]).
    fn stitch(&mut self, batch: &mut WriteBatch, stitched: &Stitched);
}

/// What a batch links (the ids' states taken out) and what it folds in.
#[derive(Default)]
pub(super) struct Stitched {
    pub(super) links: Vec<Transfer>,
    pub(super) arrivals: Vec<Arrived>,
}

impl Stitched {
    fn is_empty(&self) -> bool {
        self.links.is_empty() && self.arrivals.is_empty()
    }
}

impl Committer for Store {
    fn prepare(&mut self, commit: &Commit<'_>) -> Result<WriteBatch> {
        Store::prepare(self, commit)
    }

    fn write(&mut self, batch: WriteBatch, sync: bool) -> Result<()> {
        Store::write(self, batch, sync)
    }

    fn seen_ids(&mut self, ids: &[ClientId<'_>], since_ms: u64) -> Result<Vec<bool>> {
        Store::seen_ids(self, ids, since_ms)
    }

    fn unit_states(&mut self, units: &[&str]) -> Result<Vec<Option<Vec<Exposure>>>> {
        Store::unit_states(self, units)
    }

    fn open_predictions(&mut self, ids: &[(&str, &str)]) -> Result<Vec<Option<Event>>> {
        Store::open_predictions(self, ids)
    }

    fn unit_events(
        &mut self,
        unit: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        Store::unit_events(self, unit, from_ms, to_ms, limit)
    }

    fn restore(&mut self, partition: u16, snapshot: &[u8]) -> Result<Restored> {
        Store::restore_partition(self, partition, snapshot)
    }

    fn scan_units(
        &mut self,
        belongs: &dyn Fn(&str) -> bool,
        f: &mut dyn FnMut(&[Exposure]),
    ) -> Result<()> {
        Store::for_each_unit_state(self, belongs, f)
    }

    fn write_shares(&mut self, partition: u16, changes: &AggregateChanges<'_>) -> Result<()> {
        Store::write_aggregates(self, partition, changes)
    }

    fn has_links(&mut self) -> bool {
        Store::has_links(self)
    }

    fn linked_or_linking(&mut self, ids: &[&str]) -> Result<Vec<Option<Box<str>>>> {
        Store::linked_or_linking(self, ids)
    }

    fn stitch(&mut self, batch: &mut WriteBatch, stitched: &Stitched) {
        for transfer in &stitched.links {
            self.write_transfer(batch, transfer);
        }
        for arrived in &stitched.arrivals {
            self.write_arrival(batch, arrived);
        }
    }
}

/// What a writer does once what was queued before it is committed.
enum Then {
    Restore(Restore),
    Settled(tokio::sync::oneshot::Sender<()>),
    Drained(flume::Sender<()>),
    Respec(Arc<str>, Arc<Derivations>),
}

/// How long a collecting writer sleeps between looks at its mailbox: with
/// the default `flush_interval_ms` (5) one sleep per batch. Each look is a
/// timer wake-up (about 10 µs of CPU on a small virtual machine); looking
/// every millisecond was 3% of the server's CPU at 10,000 exposures/s.
/// A longer flush interval is still cut into steps this long, so a full
/// batch (`flush_max_events`) waits little longer than it.
const COLLECT_STEP: Duration = Duration::from_millis(5);

/// State of one partition's writer thread.
pub(super) struct Writer {
    pub(super) partition: u16,
    pub(super) committer: Box<dyn Committer>,
    pub(super) limits: IngestLimits,
    /// The extra sinks, shared by every partition; fed in `seq` order.
    pub(super) sinks: Arc<Vec<SinkWorker>>,
    pub(super) stats: Arc<IngestStats>,
    /// Numbers events and orders commits across partitions.
    pub(super) sequencer: Arc<Sequencer>,
    pub(super) aggregator: Aggregator,
    pub(super) live: Arc<LiveAggregates>,
    /// What this partition's mailbox holds (its bounds); released as
    /// parts are taken.
    pub(super) queued: Arc<Queued>,
    /// Every partition's inbox (this one's too): where events of a linked
    /// id and a link's state are sent on to.
    pub(super) peers: Arc<Vec<Inbox>>,
    /// Told when parts were taken, for requests waiting for room.
    pub(super) room: Arc<Room>,
    /// The store's clock: where the de-duplication window ends.
    pub(super) clock: Arc<dyn Clock>,
}

impl Writer {
    /// Batches, commits and fans out until told to stop; then drains.
    pub(super) fn run(mut self, rx: &flume::Receiver<Command>) {
        let mut pending: Vec<Part> = Vec::new();
        let mut then = None;
        loop {
            let stopping = self.collect(rx, &mut pending, &mut then);
            self.room.freed();
            if !pending.is_empty() {
                self.commit(&mut pending);
            }
            // The callers may have stopped waiting; nothing to do then.
            match then.take() {
                Some(Then::Restore(Restore { snapshot, reply })) => {
                    let _ = reply.send(self.restore(&snapshot));
                }
                Some(Then::Settled(done)) => {
                    let _ = done.send(());
                }
                Some(Then::Drained(done)) => {
                    let _ = done.send(());
                }
                Some(Then::Respec(experiment, derivations)) => {
                    self.respec(&experiment, derivations);
                }
                None => {}
            }
            if stopping {
                break;
            }
        }
        tracing::info!(
            partition = self.partition,
            persisted = self.stats.persisted.load(Ordering::Relaxed),
            lost = self.stats.lost.load(Ordering::Relaxed),
            "ingest writer drained and stopped"
        );
    }

    /// Waits for a part, then collects more until the flush interval has
    /// passed or `flush_max_events` are pending, by sleeping in short steps
    /// and draining what came meanwhile rather than waking for each part:
    /// under assignment load every exposure is a part, and a wake-up each
    /// cost both sides a futex call, about a fifth of the server's CPU.
    /// Returns whether the writer was told to stop (or its mailbox closed).
    /// A snapshot to restore, or a caller waiting for what is queued to be
    /// committed, ends the collecting too: `then` says what to do once
    /// what came before is committed.
    fn collect(
        &self,
        rx: &flume::Receiver<Command>,
        pending: &mut Vec<Part>,
        then: &mut Option<Then>,
    ) -> bool {
        let Ok(mut command) = rx.recv() else {
            return true;
        };
        let deadline = Instant::now() + self.limits.flush_interval;
        let mut events = 0;
        loop {
            match command {
                Command::Store(part) => {
                    self.queued.release(part.events.len());
                    events += part.events.len();
                    // A link applies to what was queued before it: the
                    // batch ends with it, and the events after it (which
                    // this partition no longer folds) come in the next.
                    let links = !part.links.is_empty();
                    pending.push(part);
                    if links {
                        return false;
                    }
                }
                Command::Stop => return true,
                Command::Restore(snapshot) => {
                    *then = Some(Then::Restore(snapshot));
                    return false;
                }
                Command::Settle(done) => {
                    *then = Some(Then::Settled(done));
                    return false;
                }
                Command::Drain(done) => {
                    *then = Some(Then::Drained(done));
                    return false;
                }
                Command::Respec(experiment, derivations) => {
                    *then = Some(Then::Respec(experiment, derivations));
                    return false;
                }
            }
            if events >= self.limits.flush_max_events {
                return false;
            }
            command = loop {
                match rx.try_recv() {
                    Ok(next) => break next,
                    Err(flume::TryRecvError::Disconnected) => return true,
                    Err(flume::TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline {
                            return false;
                        }
                        // What was taken so far is room for waiting requests.
                        self.room.freed();
                        std::thread::sleep((deadline - now).min(COLLECT_STEP));
                    }
                }
            };
        }
    }

    /// Commits everything pending as one WriteBatch with the aggregates it
    /// changes, fsynced when an `ack=persisted` caller waits on it (one
    /// sync for all of them; batches nobody waits on are not synced).
    ///
    /// Everything but the write happens side by side with the other
    /// partitions: de-duplicate, read the units' state, fold, encode. Then
    /// the batch takes a [`Ticket`](super::sequencer::Ticket) — its `seq`
    /// range — and writes when its turn comes, so `seq` order is commit
    /// order. A failing write is retried `commit_retries` times; then the
    /// store is marked failed and this and every later batch is refused
    /// (see [`Writer::refuse`]). While it retries the mailboxes fill and
    /// handlers answer 503. The first exposures' claims are released when
    /// this returns: after the commit, or with the refusal.
    fn commit(&mut self, pending: &mut Vec<Part>) {
        let mut batch = Batch {
            events: Vec::with_capacity(pending.iter().map(|p| p.events.len()).sum()),
            ..Batch::default()
        };
        let mut acks = Vec::new();
        let mut claims = Vec::new();
        let mut unwaited = 0;
        let mut stream_seq = None;
        let (mut links, mut arrivals) = (Vec::new(), Vec::new());
        if let Err(e) = self.send_on_linked(pending) {
            self.fail("reading links", &e);
        }
        for part in pending.drain(..) {
            if part.ack.is_none() {
                unwaited += part.events.len();
            }
            stream_seq = stream_seq.max(part.stream_seq);
            batch.events.extend(part.events);
            batch.sticky.extend(part.sticky);
            claims.extend(part.claims);
            acks.extend(part.ack);
            links.extend(part.links);
            arrivals.extend(part.arrivals);
        }
        if self.stats.is_failed() {
            return self.refuse(acks, unwaited);
        }
        if let Err(e) = self.drop_duplicates(&mut batch) {
            self.fail("reading event ids", &e);
            return self.refuse(acks, unwaited);
        }
        let named: Vec<&str> = (links.iter().map(|l: &Link| &*l.from))
            .chain(arrivals.iter().map(|a: &Arrival| &*a.transfer.to))
            .collect();
        if let Err(e) = self.load_units(&batch, &named) {
            self.fail("reading unit state", &e);
            return self.refuse(acks, unwaited);
        }
        drop(named);
        // Linked ids' states first (the order does not change the result:
        // the earlier exposure wins whichever comes first), then the
        // events, then the links: they apply to everything before them.
        let mut stitched = Stitched::default();
        let mut answers: Vec<(Option<LinkReply>, Vec<Taken>)> = Vec::new();
        for Arrival { transfer, reply } in arrivals {
            let taken = self.aggregator.attach(&transfer.to, transfer.exposures);
            let sticky = taken
                .iter()
                .filter_map(|t| {
                    Some(StickyAssignment {
                        experiment: ExperimentKey::try_from(&*t.experiment).ok()?,
                        unit: transfer.to.clone(),
                        variant: (&*t.variant).into(),
                        first_exposed_ms: t.at_ms,
                        // The linked id's variant need not be what the hash
                        // gives the unit: from now on its assignments look
                        // it up.
                        diverges: true,
                    })
                })
                .collect();
            stitched.arrivals.push(Arrived {
                from: transfer.from,
                to: transfer.to,
                linked_ms: transfer.linked_ms,
                taken: sticky,
            });
            answers.push((reply, taken));
        }
        self.aggregator.fold(&batch.events);
        let mut callers = Vec::with_capacity(links.len());
        for Link {
            from,
            to,
            at_ms,
            reply,
        } in links
        {
            let exposures = self.aggregator.detach(&from);
            stitched.links.push(Transfer {
                from,
                to,
                linked_ms: at_ms,
                exposures,
            });
            callers.push(reply);
        }
        let buckets = bucket_deltas(&batch.events);
        let ticket = self.sequencer.ticket(batch.events.len() as u64);
        for (e, seq) in batch.events.iter_mut().zip(ticket.start()..) {
            e.seq = seq;
        }
        let started = Instant::now();
        let ids = client_ids(&batch.events);
        let commit = Commit {
            events: &batch.events,
            sticky: &batch.sticky,
            client_ids: &ids,
            next_seq: ticket.end(),
            aggregates: Some(self.aggregator.changes()),
            partition: self.partition,
            buckets: Some(&buckets),
            // The event log keeps what an owner folds: no fsync needed.
            sync: (!acks.is_empty() || !stitched.is_empty()) && stream_seq.is_none(),
            stream_seq,
        };
        let prepare = |committer: &mut Box<dyn Committer>| -> Result<WriteBatch> {
            let mut batch = committer.prepare(&commit)?;
            if !stitched.is_empty() {
                committer.stitch(&mut batch, &stitched);
            }
            Ok(batch)
        };
        let mut prepared = Some(prepare(&mut self.committer));
        ticket.wait_turn();
        let committed = retry("commit", &self.limits, &self.stats.commit_failures, || {
            let batch = match prepared.take() {
                Some(batch) => batch?,
                None => prepare(&mut self.committer)?,
            };
            self.committer.write(batch, commit.sync)
        });
        drop(commit);
        drop(ids);
        if let Err(e) = committed {
            self.fail("commit", &e);
            drop(ticket);
            return self.refuse(acks, unwaited);
        }
        metrics::histogram!(crate::metrics::SINK_COMMIT).record(started.elapsed().as_secs_f64());
        metrics::histogram!(crate::metrics::SINK_BATCH).record(batch.events.len() as f64);
        // The sequence first: the shares are published as folded to it.
        if let Some(seq) = stream_seq {
            self.live.folded(usize::from(self.partition), seq);
        }
        self.aggregator.published(&self.live);
        drop(claims);
        self.stats
            .persisted
            .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        for ack in acks {
            ack.send(true);
        }
        for (reply, taken) in answers {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(taken));
            }
        }
        self.send_on_links(stitched.links, callers);
        if !self.sinks.is_empty() {
            let batch = Arc::new(batch);
            for sink in self.sinks.iter() {
                sink.send(Arc::clone(&batch));
            }
        }
        // Sinks are fed in `seq` order: the turn passes on only now.
        drop(ticket);
    }

    /// Cluster mode: replaces the partition's state with a snapshot (in the
    /// store, then its shares of the aggregates here, published as
    /// changed); answers the stream sequence it was taken at.
    fn restore(&mut self, snapshot: &[u8]) -> Result<u64> {
        let restored = self.committer.restore(self.partition, snapshot)?;
        for (experiment, share) in restored.shares {
            self.aggregator.replace(&experiment, share);
        }
        self.live.folded(usize::from(self.partition), restored.seq);
        self.aggregator.published(&self.live);
        for (experiment, derivations) in self.aggregator.stale() {
            self.respec(&experiment, derivations);
        }
        Ok(restored.seq)
    }

    /// Keeps `experiment`'s derived metrics for `derivations`; when the
    /// share kept them for others, recomputes them from this partition's
    /// units (a full scan of the stored unit states, while this partition
    /// waits), writes the share and publishes it. A failure is logged and
    /// leaves the share as it was: its metrics stay out of the results.
    fn respec(&mut self, experiment: &str, derivations: Arc<Derivations>) {
        // A failed store takes nothing more: what the working set holds
        // was refused.
        if self.stats.is_failed() {
            return;
        }
        let (partition, partitions) = (self.partition, self.limits.partitions);
        let committer = &mut self.committer;
        let started = Instant::now();
        let mine =
            |unit: &str| partition_of(unit, usize::from(partitions)) == usize::from(partition);
        let recomputed = self
            .aggregator
            .respec(experiment, derivations, |f| committer.scan_units(&mine, f));
        let written = match recomputed {
            Ok(false) => return,
            Ok(true) => {
                let (limits, failures) = (&self.limits, &self.stats.commit_failures);
                let changes = self.aggregator.share_changes();
                retry("writing derived sums", limits, failures, || {
                    committer.write_shares(partition, &changes)
                })
            }
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                self.aggregator.published(&self.live);
                tracing::info!(
                    experiment,
                    partition,
                    ms = started.elapsed().as_millis() as u64,
                    "derived metric sums recomputed from the stored unit states"
                );
            }
            Err(error) => tracing::error!(
                experiment,
                partition,
                %error,
                "derived metric sums could not be recomputed; the metrics stay out of results"
            ),
        }
    }

    /// Events of ids linked since they were queued (a link committed
    /// between a request's look-up of its ids and its queueing) go on to
    /// the partition of the unit each links to, rewritten to it, with a
    /// share of their caller's ack: through its mailbox even when that is
    /// this partition's, so that they come after the id's state (sent
    /// there when the link was committed). Nothing is read until some id
    /// was ever linked.
    fn send_on_linked(&mut self, pending: &mut [Part]) -> Result<()> {
        if !self.committer.has_links() {
            return Ok(());
        }
        let linked: HashMap<Box<str>, Box<str>> = {
            let mut seen = HashSet::new();
            let ids: Vec<&str> = (pending.iter().flat_map(|p| &p.events))
                .map(|e| &*e.unit_id)
                .filter(|u| seen.insert(*u))
                .collect();
            if ids.is_empty() {
                return Ok(());
            }
            let (limits, failures) = (&self.limits, &self.stats.commit_failures);
            let committer = &mut self.committer;
            let found = retry("reading links", limits, failures, || {
                committer.linked_or_linking(&ids)
            })?;
            (ids.iter().zip(found))
                .filter_map(|(id, to)| Some(((*id).into(), to?)))
                .collect()
        };
        if linked.is_empty() {
            return Ok(());
        }
        let count = self.peers.len();
        for part in pending.iter_mut() {
            if !(part.events.iter()).any(|e| linked.contains_key(&*e.unit_id)) {
                continue;
            }
            let mut elsewhere: BTreeMap<usize, Part> = BTreeMap::new();
            for mut e in std::mem::take(&mut part.events) {
                let Some(to) = linked.get(&*e.unit_id) else {
                    part.events.push(e);
                    continue;
                };
                e.unit_id = to.clone();
                let p = partition_of(to, count);
                elsewhere.entry(p).or_default().events.push(e);
            }
            for mut r in std::mem::take(&mut part.sticky) {
                let Some(to) = linked.get(&*r.unit) else {
                    part.sticky.push(r);
                    continue;
                };
                r.unit = to.clone();
                let p = partition_of(to, count);
                elsewhere.entry(p).or_default().sticky.push(r);
            }
            for (p, mut sent) in elsewhere {
                sent.ack = part.ack.as_ref().map(Ack::fork);
                self.peers[p].forward(sent)?;
            }
        }
        Ok(())
    }

    /// After a commit: each linked id's state goes on to its unit's
    /// partition, with the caller waiting for it. One that cannot (the
    /// server is stopping) stays in the store and goes on at the next
    /// start.
    fn send_on_links(&self, links: Vec<Transfer>, callers: Vec<Option<LinkReply>>) {
        for (transfer, reply) in links.into_iter().zip(callers) {
            let p = partition_of(&transfer.to, self.peers.len());
            let part = Part {
                arrivals: vec![Arrival { transfer, reply }],
                ..Part::default()
            };
            if self.peers[p].forward(part).is_err() {
                tracing::warn!(
                    partition = p,
                    "a link's state waits in the store for the next start"
                );
            }
        }
    }

    /// Reads the stored state of the batch's units, and of the `named`
    /// ones (links and arrivals), into the aggregator's working set: one
    /// batched read per batch; and for covariates and joins, the earlier
    /// events of the units that need them.
    fn load_units(&mut self, batch: &Batch, named: &[&str]) -> Result<()> {
        let (limits, failures) = (&self.limits, &self.stats.commit_failures);
        let committer = &mut self.committer;
        let units = (batch.events.iter().map(|e| &*e.unit_id)).chain(named.iter().copied());
        self.aggregator.load_states(units, |units| {
            retry("reading unit state", limits, failures, || {
                committer.unit_states(units)
            })
        })?;
        // A unit whose earlier events cannot be read (an undecodable
        // event) gets no covariate: 0, which keeps CUPED unbiased. Never a
        // reason to refuse events, nor to retry.
        let limit = limits.max_covariate_events;
        self.aggregator
            .load_histories(&batch.events, |unit, from, to| {
                Ok(committer
                    .unit_events(unit, from, to, limit)
                    .unwrap_or_else(|error| {
                        tracing::warn!(
                            unit,
                            %error,
                            "a unit's earlier events could not be read: its covariates are 0"
                        );
                        Vec::new()
                    }))
            })?;
        // Open predictions are state, like the units': read with retries.
        self.aggregator.load_joins(&batch.events, |ids| {
            retry("reading open predictions", limits, failures, || {
                committer.open_predictions(ids)
            })
        })
    }

    /// Marks the store failed: `what` failed after every retry.
    fn fail(&self, what: &str, error: &Error) {
        let retries = self.limits.commit_retries;
        tracing::error!(
            error = %error,
            retries,
            "{what} failed after every retry: the event store is marked failed; \
             new events are refused with 503 until abacus is restarted"
        );
        self.stats
            .mark_failed(format!("{what} failed after {retries} retries: {error}"));
    }

    /// Answers a batch the store did not take: `ack=persisted` callers are
    /// told `false` (they answer 503); the `unwaited` events were already
    /// answered 202 and are lost, counted and logged.
    fn refuse(&self, acks: Vec<Ack>, unwaited: usize) {
        for ack in acks {
            ack.send(false);
        }
        if unwaited > 0 {
            self.stats
                .lost
                .fetch_add(unwaited as u64, Ordering::Relaxed);
            tracing::error!(
                events = unwaited,
                "events answered 202 could not be stored and are lost"
            );
        }
    }

    /// Removes events whose client id was committed within the window or
    /// repeats one earlier in the batch. Fails when the store cannot be
    /// read after every retry.
    fn drop_duplicates(&mut self, batch: &mut Batch) -> Result<()> {
        let now_ms = u64::try_from(unix_ms(self.clock.now())).unwrap_or(0);
        let window_start = now_ms.saturating_sub(
            u64::try_from(self.limits.dedup_window.as_millis()).unwrap_or(u64::MAX),
        );
        let client_ids = client_ids(&batch.events);
        if client_ids.is_empty() {
            return Ok(());
        }
        let seen = retry(
            "reading event ids",
            &self.limits,
            &self.stats.commit_failures,
            || self.committer.seen_ids(&client_ids, window_start),
        )?;
        drop(client_ids);
        let mut duplicate = seen.into_iter();
        let mut in_batch = HashSet::with_capacity(duplicate.len());
        let keep: Vec<bool> = batch
            .events
            .iter()
            .map(|e| {
                !e.client_id
                    || (!duplicate.next().unwrap_or(false)
                        && in_batch.insert((&*e.unit_id, e.event_id.text())))
            })
            .collect();
        drop(in_batch);
        let before = batch.events.len();
        let mut keep = keep.into_iter();
        batch.events.retain(|_| keep.next().unwrap_or(true));
        let dropped = before - batch.events.len();
        if dropped > 0 {
            self.stats
                .duplicates
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The ids of `events` that clients gave (and so may repeat), with their
/// units.
fn client_ids(events: &[Event]) -> Vec<ClientId<'_>> {
    events
        .iter()
        .filter_map(|e| match &e.event_id {
            // A client's id stays its text until it is stored.
            EventId::Text(id) if e.client_id => Some(ClientId {
                unit: &e.unit_id,
                id,
            }),
            _ => None,
        })
        .collect()
}

/// Runs a store operation until it succeeds, at most `1 + commit_retries`
/// times, the n-th retry after [`back_off`]`(n)`; the last error when every
/// attempt failed. Each failed attempt is counted in `failures`.
fn retry<T>(
    what: &str,
    limits: &IngestLimits,
    failures: &AtomicU64,
    mut op: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut attempt = 0;
    loop {
        match op() {
            Ok(t) => return Ok(t),
            Err(e) => {
                failures.fetch_add(1, Ordering::Relaxed);
                if attempt >= limits.commit_retries {
                    return Err(e);
                }
                attempt += 1;
                let wait = back_off(limits.commit_retry, attempt);
                tracing::error!(
                    error = %e,
                    attempt,
                    retries = limits.commit_retries,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "{what} failed; retrying"
                );
                std::thread::sleep(wait);
            }
        }
    }
}

/// The wait before retry number `attempt` (from 1): linear back-off.
fn back_off(step: Duration, attempt: u32) -> Duration {
    step.saturating_mul(attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_linearly_and_stop_after_the_last() {
        let step = Duration::from_millis(100);
        let waits: Vec<u128> = (1..=5).map(|n| back_off(step, n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 300, 400, 500]);

        let limits = IngestLimits {
            partitions: 1,
            mailbox_capacity: 1,
            mailbox_events: 1 << 20,
            enqueue_wait: Duration::ZERO,
            flush_interval: Duration::ZERO,
            flush_max_events: 1,
            dedup_window: Duration::ZERO,
            commit_retries: 3,
            commit_retry: Duration::ZERO,
            max_measures: 1,
            max_covariate_events: 1000,
            max_quantile_bins: 1024,
        };
        let failures = AtomicU64::new(0);
        let mut calls = 0;
        let result: Result<()> = retry("test", &limits, &failures, || {
            calls += 1;
            Err(Error::Unavailable)
        });
        assert!(result.is_err());
        assert_eq!((calls, failures.load(Ordering::Relaxed)), (4, 4));
    }
}
