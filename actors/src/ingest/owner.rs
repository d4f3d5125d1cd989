//! Cluster mode, the folding side: this node owns some ingest partitions
//! and folds their events from the replicated log into its own store.
//!
//! - **Leases.** Every third of `cluster.lease_ttl_ms` the node says it is
//!   alive, renews the leases it holds, gives up those beyond its fair
//!   share (partitions ÷ live nodes, rounded up: a node that joins gets
//!   work) and takes free ones up to it. A lease it cannot renew for a
//!   whole TTL is treated as lost, and its consumer stops.
//! - **Exactly once.** A partition's consumer starts after the last log
//!   sequence this node's store folded for it ([`Store::stream_seq`]),
//!   hands each chunk of messages to the partition's writer
//!   ([`Mailbox::fold`]), which commits the sequence in the same RocksDB
//!   write as the state it produced, and acknowledges the log only then.
//!   Redeliveries at or below the folded sequence are skipped. So whatever
//!   stops a node, its store describes exactly a prefix of the log.
//! - **Snapshots and takeover.** Every `cluster.snapshot_interval_s` an
//!   owner stores a snapshot of each partition it folded since (its state
//!   at one RocksDB snapshot, with the sequence committed in it). A node
//!   that takes a partition restores the latest snapshot when it is newer
//!   than what its own store folded, through the partition's writer, and
//!   folds the log after it (from its own store's sequence, the start if
//!   it never owned it, when there is no newer snapshot or it cannot be
//!   read: the log keeps every event). The time from the lease to folding what the
//!   log held then is logged and exported
//!   (`abacus_cluster_last_takeover_seconds`).
//! - **Shares.** Four times a second the node publishes the shares of the
//!   aggregates its writers changed, with the sequence they were folded
//!   to; it adopts the other partitions' latest shares from the bucket, so
//!   every node's totals are the sum over all partitions. A share replaces
//!   the one held only if it was folded at least as far, so a late fold or
//!   publish by a node that lost the partition never hides a newer one.
//! - **Lookups.** Once a partition caught up with its log, its owner
//!   answers other nodes' lookups of its units' first exposures
//!   (`cluster::lookups`); [`Owner::elsewhere`] is the asking side.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::mailbox::{partition_of, Mailbox};
use super::LiveAggregates;
use crate::cluster::{
    Cluster, Continuity, EventLog, FoundExposure, Gaps, HeldLease, Lease, Leases, LookupRequest,
    Lookups, ShareBucket, SnapshotStore,
};
use crate::experiments::sticky::Elsewhere;
use crate::storage::{blocking, Store};
use crate::{Error, Result};

/// How long a new owner waits to learn whether a partition has a snapshot.
const SNAPSHOT_LOOKUP: Duration = Duration::from_secs(2);

/// How often changed shares are published.
const SHARE_INTERVAL: Duration = Duration::from_millis(250);

/// How long a failed read of a partition or of the shares waits before it
/// is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// What the tasks share.
struct Context {
    log: EventLog,
    leases: Leases,
    shares: ShareBucket,
    snapshots: SnapshotStore,
    lookups: Lookups,
    /// How often owned partitions are snapshotted.
    snapshot_interval: Duration,
    mailbox: Arc<Mailbox>,
    live: Arc<LiveAggregates>,
    store: Store,
    partitions: u16,
    /// Messages handed to a writer at once, at most.
    batch: usize,
    /// Which partitions this node owns now.
    owned: Vec<AtomicBool>,
}

/// This node's ownership of partitions; stops (releasing its leases) on
/// [`Owner::stop`].
pub struct Owner {
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    elsewhere: Arc<OwnersLookup>,
}

/// A partition this node holds.
struct Held {
    lease: HeldLease,
    stop: watch::Sender<bool>,
    consumer: JoinHandle<()>,
}

impl Owner {
    /// Starts taking partitions of `mailbox` (whose writers fold them) and
    /// exchanging shares of `live`. Every partition's share starts as the
    /// store holds it, at the sequence the store folded.
    pub async fn start(
        cluster: &Cluster,
        mailbox: Arc<Mailbox>,
        live: Arc<LiveAggregates>,
        store: Store,
        partitions: u16,
        batch: usize,
    ) -> Result<Self> {
        let folded = {
            let store = store.clone();
            blocking(move || {
                (0..partitions)
                    .map(|p| store.stream_seq(p))
                    .collect::<Result<Vec<u64>>>()
            })
            .await?
        };
        for (p, seq) in folded.into_iter().enumerate() {
            live.folded(p, seq);
        }
        let context = Arc::new(Context {
            log: cluster.log().clone(),
            leases: cluster.leases().clone(),
            shares: cluster.shares().clone(),
            snapshots: cluster.snapshots().clone(),
            lookups: cluster.lookups().clone(),
            snapshot_interval: cluster.snapshot_interval(),
            mailbox,
            live,
            store,
            partitions,
            batch: batch.max(1),
            owned: (0..partitions).map(|_| AtomicBool::new(false)).collect(),
        });
        let (stop, stopped) = watch::channel(false);
        let elsewhere = Arc::new(OwnersLookup(Arc::clone(&context)));
        let tasks = vec![
            tokio::spawn(hold_leases(Arc::clone(&context), stopped.clone())),
            tokio::spawn(publish_shares(Arc::clone(&context), stopped.clone())),
            tokio::spawn(take_snapshots(Arc::clone(&context), stopped.clone())),
            tokio::spawn(adopt_shares(context, stopped)),
        ];
        Ok(Self {
            stop,
            tasks: Mutex::new(tasks),
            elsewhere,
        })
    }

    /// Where assignments ask for first exposures of units in partitions
    /// this node does not fold.
    pub fn elsewhere(&self) -> Arc<dyn Elsewhere> {
        Arc::clone(&self.elsewhere) as _
    }

    /// Hands every partition over (stops folding, publishes its shares,
    /// releases its lease, so other nodes take it at once rather than
    /// after the TTL) and stops. Idempotent.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// The lease loop (see the module's doc).
async fn hold_leases(cx: Arc<Context>, mut stopped: watch::Receiver<bool>) {
    let every = cx.leases.ttl() / 3;
    let split = format!(
        "{}/{}",
        cx.partitions,
        partition_of("abacus partition probe", 1 << 16)
    );
    // Where this node starts looking for free partitions: nodes starting
    // together then try different ones first.
    let offset = partition_of(cx.leases.node(), usize::from(cx.partitions));
    let mut held: BTreeMap<u16, Held> = BTreeMap::new();
    loop {
        // Each step waits for NATS at most a turn, so a server that stops
        // answering never holds up the renewals.
        let nodes = match tokio::time::timeout(every, cx.leases.heartbeat(&split)).await {
            Ok(Ok(nodes)) => Some(nodes),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cluster heartbeat failed");
                None
            }
            Err(_) => {
                tracing::warn!("cluster heartbeat: NATS did not answer in time");
                None
            }
        };
        renew(&cx, &mut held).await;
        if let Some(nodes) = nodes {
            // A node whose store failed folds nothing: it hands its
            // partitions to the others rather than holding them idle.
            let share = if cx.mailbox.stats().is_failed() {
                0
            } else {
                usize::from(cx.partitions).div_ceil(nodes)
            };
            while held.len() > share {
                let Some((partition, h)) = held.pop_last() else {
                    break;
                };
                give_up(&cx, partition, h).await;
                tracing::info!(
                    partition,
                    nodes,
                    "partition handed over to balance the nodes"
                );
            }
            if held.len() < share {
                // Cut short, a lease taken but not recorded expires.
                let taking = take(&cx, &mut held, share, offset);
                if tokio::time::timeout(every, taking).await.is_err() {
                    tracing::warn!("taking partitions: NATS did not answer in time");
                }
            }
        }
        metrics::gauge!(crate::metrics::CLUSTER_PARTITIONS_OWNED).set(held.len() as f64);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => break,
        }
    }
    for (partition, h) in std::mem::take(&mut held) {
        give_up(&cx, partition, h).await;
    }
    metrics::gauge!(crate::metrics::CLUSTER_PARTITIONS_OWNED).set(0.0);
}

/// Renews every held lease, all at once (each waits no longer than it has
/// left); stops the consumers of those lost, and restarts any consumer
/// that ended on an error.
async fn renew(cx: &Arc<Context>, held: &mut BTreeMap<u16, Held>) {
    let renewals = held.iter_mut().map(|(&partition, h)| async move {
        let kept = cx.leases.keep(&mut h.lease).await;
        (partition, h, kept)
    });
    let mut lost = Vec::new();
    for (partition, h, kept) in futures_util::future::join_all(renewals).await {
        if !kept {
            lost.push(partition);
        } else if h.consumer.is_finished() {
            let (stop, stopped) = watch::channel(false);
            h.stop = stop;
            h.consumer = tokio::spawn(consume(Arc::clone(cx), partition, stopped));
        }
    }
    for partition in lost {
        if let Some(h) = held.remove(&partition) {
            // Not ours any more: stop at once rather than finish a chunk
            // (and hold up the other leases' renewals meanwhile).
            cx.owned[usize::from(partition)].store(false, Ordering::Release);
            h.consumer.abort();
        }
    }
}

/// Takes free partitions until this node holds `share` of them.
async fn take(cx: &Arc<Context>, held: &mut BTreeMap<u16, Held>, share: usize, offset: usize) {
    let taken = match cx.leases.taken().await {
        Ok(taken) => taken,
        Err(e) => {
            tracing::warn!(error = %e, "reading the leases failed");
            return;
        }
    };
    let count = usize::from(cx.partitions);
    for i in 0..count {
        if held.len() >= share {
            break;
        }
        let partition = ((offset + i) % count) as u16;
        if taken.contains(&partition) || held.contains_key(&partition) {
            continue;
        }
        let Some(lease) = cx.leases.take(Lease::Partition(partition)).await else {
            continue;
        };
        tracing::info!(partition, "partition taken");
        cx.owned[usize::from(partition)].store(true, Ordering::Release);
        let (stop, stopped) = watch::channel(false);
        let consumer = tokio::spawn(consume(Arc::clone(cx), partition, stopped));
        held.insert(
            partition,
            Held {
                lease,
                stop,
                consumer,
            },
        );
    }
}

/// Hands `partition` over: stops folding it (after the chunk in hand is
/// committed, if that takes less than a quarter of the lease's TTL),
/// publishes its shares as they are then, and deletes the lease so
/// another node takes it at once.
async fn give_up(cx: &Context, partition: u16, h: Held) {
    let p = usize::from(partition);
    let _ = h.stop.send(true);
    let abort = h.consumer.abort_handle();
    if tokio::time::timeout(cx.leases.ttl() / 4, h.consumer)
        .await
        .is_err()
    {
        abort.abort();
    }
    for (experiment, seq, share) in cx.live.shares_of(p) {
        if let Err(e) = cx.shares.put(partition, &experiment, seq, &share).await {
            tracing::warn!(partition, error = %e, "publishing a share failed");
        }
    }
    cx.owned[p].store(false, Ordering::Release);
    cx.leases.give_back(h.lease).await;
}

/// Folds `partition` until told to stop, reading again after an error.
async fn consume(cx: Arc<Context>, partition: u16, mut stopped: watch::Receiver<bool>) {
    loop {
        match fold(&cx, partition, &mut stopped).await {
            Ok(()) => return,
            Err(Error::Unavailable) => {
                tracing::error!(partition, "the store failed: this node stops folding");
                return;
            }
            Err(e) => tracing::warn!(partition, error = %e, "reading the partition again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// One reading of `partition`'s log (see the module's doc); `Ok` when told
/// to stop.
async fn fold(cx: &Context, partition: u16, stopped: &mut watch::Receiver<bool>) -> Result<()> {
    let started = Instant::now();
    // A consumer stopped midway may have left a part queued: what this
    // node folded is known once it is committed.
    cx.mailbox.settle(partition).await?;
    if let Err(e) = restore(cx, partition).await {
        tracing::warn!(partition, error = %e, "restoring a snapshot failed; folding the log instead");
    }
    let after = {
        let store = cx.store.clone();
        blocking(move || store.stream_seq(partition)).await?
    };
    let (pending, deliveries) = cx.log.read(partition, after, cx.batch).await?;
    let mut chunks = std::pin::pin!(deliveries.ready_chunks(cx.batch));
    let mut folded = after;
    let mut continuity = Continuity::after(after);
    let mut gaps = Gaps::default();
    let mut read = 0u64;
    let mut caught_up = false;
    // Aborted when this reading ends.
    let mut answering = tokio::task::JoinSet::new();
    loop {
        if !caught_up && read >= pending {
            caught_up = true;
            answering.spawn(answer_lookups(
                cx.lookups.clone(),
                cx.store.clone(),
                partition,
            ));
            cx.live.touch(usize::from(partition));
            let took = started.elapsed();
            metrics::gauge!(crate::metrics::CLUSTER_TAKEOVER).set(took.as_secs_f64());
            tracing::info!(
                partition,
                from = after,
                messages = read,
                ms = took.as_millis() as u64,
                "partition caught up with its log"
            );
        }
        let chunk = tokio::select! {
            _ = stopped.changed() => return Ok(()),
            chunk = chunks.next() => chunk.ok_or_else(|| {
                Error::Cluster(format!("partition {partition}: its consumer ended"))
            })?,
        };
        let mut events = Vec::new();
        let mut sticky = Vec::new();
        let mut last = None;
        for delivery in chunk {
            let mut delivery = delivery?;
            gaps.check(delivery.delivery)?;
            read += 1;
            if continuity.check(delivery.seq)? {
                match std::mem::replace(&mut delivery.part, Ok(Default::default())) {
                    Ok(part) => {
                        events.extend(part.events);
                        sticky.extend(part.sticky);
                    }
                    Err(e) => tracing::error!(
                        partition,
                        seq = delivery.seq,
                        error = %e,
                        "skipping an event log message this version cannot read"
                    ),
                }
            }
            last = Some(delivery);
        }
        let Some(last) = last else { continue };
        if last.seq > folded {
            if !events.is_empty() && !cx.mailbox.fold(partition, events, sticky, last.seq).await? {
                return Err(Error::Unavailable);
            }
            folded = last.seq;
        }
        if let Err(e) = last.ack().await {
            tracing::warn!(partition, error = %e, "acknowledging the log failed; it will redeliver");
        }
    }
}

/// Answers other nodes' lookups of `partition`'s first exposures from this
/// node's store, until aborted. A lookup it cannot answer is left to time
/// out (the asker then answers from the hash).
async fn answer_lookups(lookups: Lookups, store: Store, partition: u16) {
    let requests = match lookups.serve(partition).await {
        Ok(requests) => requests,
        Err(e) => {
            tracing::warn!(partition, error = %e, "cannot answer lookups");
            return;
        }
    };
    let mut requests = std::pin::pin!(requests);
    while let Some((request, answer)) = requests.next().await {
        let experiments: Vec<&str> = request.experiments.iter().map(String::as_str).collect();
        let found = match store.first_exposures(&experiments, &request.unit) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(partition, error = %e, "reading first exposures failed");
                continue;
            }
        };
        let found: Vec<Option<FoundExposure>> = found
            .into_iter()
            .map(|f| {
                f.map(|f| FoundExposure {
                    variant: f.variant.into(),
                    at_ms: f.at_ms,
                })
            })
            .collect();
        if let Err(e) = answer.send(&found).await {
            tracing::debug!(partition, error = %e, "a lookup's answer was not sent");
        }
    }
}

/// Asks a unit's partition's owner for its first exposures, unless this
/// node folds that partition.
struct OwnersLookup(Arc<Context>);

impl Elsewhere for OwnersLookup {
    fn first_exposures(
        &self,
        unit: &str,
        experiments: Vec<String>,
    ) -> Option<BoxFuture<'static, Result<Vec<Option<FoundExposure>>>>> {
        let cx = &self.0;
        let partition = partition_of(unit, usize::from(cx.partitions));
        if cx.owned[partition].load(Ordering::Acquire) {
            return None;
        }
        let lookups = cx.lookups.clone();
        let request = LookupRequest {
            unit: unit.to_owned(),
            experiments,
        };
        Some(async move { lookups.ask(partition as u16, &request).await }.boxed())
    }
}

/// Restores `partition` from its latest snapshot when that is newer than
/// what this node's store folded.
async fn restore(cx: &Context, partition: u16) -> Result<()> {
    let folded = {
        let store = cx.store.clone();
        blocking(move || store.stream_seq(partition)).await?
    };
    // A store with no snapshot yet (a new cluster) may not answer at all
    // until its stream has a leader: the log is folded instead meanwhile.
    let Ok(latest) = tokio::time::timeout(SNAPSHOT_LOOKUP, cx.snapshots.seq(partition)).await
    else {
        return Err(Error::Cluster(format!(
            "no answer about partition {partition}'s snapshot within {SNAPSHOT_LOOKUP:?}"
        )));
    };
    let Some(seq) = latest? else {
        return Ok(());
    };
    if seq <= folded {
        return Ok(());
    }
    let started = Instant::now();
    let snapshot = cx.snapshots.get(partition).await?;
    let bytes = snapshot.len();
    let seq = cx.mailbox.restore(partition, snapshot).await?;
    tracing::info!(
        partition,
        seq,
        bytes,
        ms = started.elapsed().as_millis() as u64,
        "partition restored from its snapshot"
    );
    Ok(())
}

/// Stores a snapshot of each owned partition that folded something since
/// its last one, every `cluster.snapshot_interval_s`.
async fn take_snapshots(cx: Arc<Context>, mut stopped: watch::Receiver<bool>) {
    // The sequence of each partition's last snapshot.
    let mut taken: HashMap<u16, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cx.snapshot_interval) => {}
            _ = stopped.changed() => return,
        }
        for partition in 0..cx.partitions {
            let p = usize::from(partition);
            let last = taken.get(&partition).copied().unwrap_or(0);
            if !cx.owned[p].load(Ordering::Acquire) || cx.live.folded_to(p) <= last {
                continue;
            }
            let (store, count) = (cx.store.clone(), usize::from(cx.partitions));
            let snapshot = blocking(move || {
                store.partition_snapshot(partition, |unit| partition_of(unit, count) == p)
            })
            .await;
            let stored = match snapshot {
                Ok((seq, bytes)) => cx
                    .snapshots
                    .put(partition, seq, &bytes)
                    .await
                    .map(|s| (seq, s)),
                Err(e) => Err(e),
            };
            let seq = match stored {
                Ok((seq, true)) => seq,
                Ok((seq, false)) => {
                    tracing::info!(
                        partition,
                        seq,
                        "a newer snapshot is stored: the partition has moved"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "storing a snapshot failed");
                    continue;
                }
            };
            taken.insert(partition, seq);
            // What the snapshot holds, the log need not.
            match cx.log.trim(partition, seq).await {
                Ok(trimmed) => {
                    metrics::counter!(crate::metrics::CLUSTER_LOG_TRIMMED).increment(trimmed)
                }
                Err(e) => tracing::warn!(partition, error = %e, "trimming the log failed"),
            }
        }
    }
}

/// Publishes the shares this node's writers changed, four times a second,
/// and once more when stopping.
async fn publish_shares(cx: Arc<Context>, mut stopped: watch::Receiver<bool>) {
    let mut failed = std::collections::BTreeSet::new();
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(SHARE_INTERVAL) => false,
            _ = stopped.changed() => true,
        };
        let mut changed = cx.live.take_changed();
        changed.append(&mut failed);
        for (partition, experiment) in changed {
            // Only an owner publishes: a share this node restored for a
            // partition it does not own is older than the owner's.
            if !cx
                .owned
                .get(partition)
                .is_some_and(|o| o.load(Ordering::Acquire))
            {
                continue;
            }
            let Some((seq, share)) = cx.live.share(partition, &experiment) else {
                continue;
            };
            if let Err(e) = cx
                .shares
                .put(partition as u16, &experiment, seq, &share)
                .await
            {
                tracing::warn!(partition, error = %e, "publishing a share failed; trying again");
                failed.insert((partition, experiment));
            }
        }
        if stop {
            return;
        }
    }
}

/// Adopts every partition's latest share that was folded further than the
/// one this node holds.
async fn adopt_shares(cx: Arc<Context>, mut stopped: watch::Receiver<bool>) {
    loop {
        match cx.shares.watch().await {
            Ok(shares) => {
                let mut shares = std::pin::pin!(shares);
                loop {
                    let share = tokio::select! {
                        share = shares.next() => share,
                        _ = stopped.changed() => return,
                    };
                    let Some(share) = share else { break };
                    let p = usize::from(share.partition);
                    if p >= cx.owned.len() {
                        continue;
                    }
                    // Even for a partition this node believes it owns: a
                    // share folded further than its own comes from a node
                    // that took the partition while this one's lease loop
                    // was stuck on an unreachable NATS server.
                    // Kept only if folded further than the share held
                    // (see `LiveAggregates::adopt`).
                    let experiment = share.experiment.into();
                    cx.live.adopt(p, experiment, share.aggregates, share.seq);
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching the shares failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stopped.changed() => return,
        }
    }
}
