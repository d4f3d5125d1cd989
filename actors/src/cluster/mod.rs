//! Cluster mode: several abacus nodes on one NATS JetStream cluster.
//!
//! - [`bucket`]: the experiments live in a replicated key-value bucket, the
//!   one truth every node serves from: a change is a compare-and-set on the
//!   key's revision (two nodes racing cannot both win), and every node
//!   watches the bucket and publishes what changed into its own registry.
//!   Each node keeps a local copy in its RocksDB store (and its domain
//!   events in its own outbox) so that everything downstream of the
//!   registry works as on a single node.
//! - [`log`]: events go to a replicated stream, a subject per ingest
//!   partition, in the [`wire`] format.
//! - [`leases`]: each partition has one owner at a time, which folds its
//!   subject into its own store (`ingest::owner` drives this).
//! - [`shares`]: owners publish their partitions' shares of the
//!   aggregates, which every node sums.
//! - [`lookups`]: a unit's first exposures asked of its partition's owner
//!   by request-reply.
//! - [`snapshots`]: owners store their partitions' state, so a new owner
//!   replays only the log after it.
//! - [`singleton`]: a task that must run on one node at a time (the
//!   results monitor, webhook delivery) runs where its lease is held.
//! - [`records`]: webhook subscriptions, alert rules and alerts in shared
//!   buckets every node mirrors (`webhooks::replicated` and
//!   `alerts::replicated` drive them).
//! - [`outbox`]: every node's domain events on one stream, for the node
//!   that delivers webhooks.
//!
//! This module speaks NATS and nothing else: what the engine does with the
//! streams and buckets lives with the engine's parts.

mod bucket;
mod leases;
mod log;
mod lookups;
mod outbox;
mod records;
mod shares;
mod singleton;
mod snapshots;
pub mod wire;

use std::time::Duration;

pub use bucket::{ExperimentBucket, Revision};
pub use leases::{Held as HeldLease, Lease, Leases};
pub use log::{Continuity, Delivery, EventLog, Gaps, Reservation, Sent};
pub use lookups::{Answer, FoundExposure, LookupRequest, Lookups};
pub use outbox::{acknowledge, OutboxDelivery, OutboxLog};
pub use records::{RecordBucket, RecordChange};
pub use shares::{Share, ShareBucket};
pub use singleton::Singleton;
pub use snapshots::SnapshotStore;

use crate::domain::{AlertRecord, AlertRuleRecord, ApiKey, Webhook};
use crate::{Error, Result};

/// Whether a refused compare-and-set failed because the key's revision
/// moved on. Older servers answer with the error kind; servers since 2.11
/// with JetStream error code 10164 ("wrong last sequence"), which this
/// client passes on only as text. Read back instead, a direct get may be
/// answered by a replica that has not applied the winner's write yet.
fn stale_revision(e: &async_nats::jetstream::kv::UpdateError) -> bool {
    use async_nats::jetstream::kv::UpdateErrorKind;
    e.kind() == UpdateErrorKind::WrongLastRevision || {
        let text = e.to_string();
        text.contains("error code 10164") || text.contains("wrong last sequence")
    }
}

/// Writes `value` under `key` if the key's revision is still `revision`:
/// its new revision, or `ChangedElsewhere` naming `what` (e.g.
/// "experiment 'checkout'") if another node wrote it since. A refusal the
/// server describes otherwise may still be a stale revision; the key's
/// revision, read back, tells.
async fn compare_and_set(
    kv: &async_nats::jetstream::kv::Store,
    key: &str,
    value: bytes::Bytes,
    revision: Revision,
    what: &str,
) -> Result<Revision> {
    let refused = match kv.update(key, value, revision).await {
        Ok(revision) => return Ok(revision),
        Err(e) if stale_revision(&e) => return Err(Error::ChangedElsewhere(what.to_owned())),
        Err(e) => e,
    };
    match kv.entry(key).await {
        Ok(Some(entry)) if entry.revision != revision => {
            Err(Error::ChangedElsewhere(what.to_owned()))
        }
        _ => Err(Error::Cluster(format!("updating {what}: {refused}"))),
    }
}

/// Opens the key-value bucket `bucket`, creating it if missing: one value
/// per key, on disk, `settings.replicas` copies, entries expiring after
/// `max_age` (zero: never). Two nodes starting together may both create
/// it; JetStream accepts the same config twice.
async fn key_value(
    jetstream: &async_nats::jetstream::Context,
    bucket: &str,
    description: &str,
    max_age: Duration,
    settings: &ClusterSettings,
) -> Result<async_nats::jetstream::kv::Store> {
    let config = async_nats::jetstream::kv::Config {
        bucket: bucket.to_owned(),
        description: description.to_owned(),
        history: 1,
        max_age,
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    // A cluster that has just formed may know its meta leader before it
    // counts every peer as online, and refuses to place replicas until
    // then ("no suitable peers for placement"): a node starting with it
    // tries again for a while rather than exiting.
    let deadline = std::time::Instant::now() + PLACEMENT_WAIT;
    loop {
        if let Ok(kv) = jetstream.get_key_value(bucket).await {
            return Ok(kv);
        }
        match jetstream.create_key_value(config.clone()).await {
            Ok(kv) => return Ok(kv),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(bucket, error = %e, "creating a bucket failed; trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(Error::Cluster(format!("creating the {bucket} bucket: {e}"))),
        }
    }
}

/// How long a starting node keeps trying to create a bucket the cluster
/// cannot place yet.
const PLACEMENT_WAIT: Duration = Duration::from_secs(15);

/// A key-value watch's entries until its first error, which is logged.
/// A watch whose server died keeps failing (missed heartbeats) rather than
/// recovering, so the caller watches again when this ends.
fn until_failed<E: std::fmt::Display>(
    entries: impl futures_util::Stream<Item = std::result::Result<async_nats::jetstream::kv::Entry, E>>,
    what: &'static str,
) -> impl futures_util::Stream<Item = async_nats::jetstream::kv::Entry> {
    use futures_util::StreamExt;
    entries
        .take_while(move |entry| {
            if let Err(e) = entry {
                tracing::warn!(error = %e, "watching the {what} failed; watching again");
            }
            std::future::ready(entry.is_ok())
        })
        .filter_map(|entry| std::future::ready(entry.ok()))
}

/// How a node joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// NATS servers to connect to; the client learns the others.
    pub nats_urls: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node_id: String,
    /// JetStream replicas of abacus's buckets.
    pub replicas: usize,
    /// Longest wait for a NATS server at start.
    pub connect_timeout: Duration,
    /// How long a partition lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// Event publishes awaiting their acknowledgement, at most.
    pub max_inflight_publishes: usize,
    /// Size of the event log; full, it refuses new events.
    pub log_max_bytes: u64,
    /// How often an owner stores a snapshot of each partition it folded.
    pub snapshot_interval: Duration,
    /// Longest wait for a partition's owner to answer a lookup.
    pub lookup_timeout: Duration,
}

/// This node's connection to the cluster and the buckets it uses.
#[derive(Clone)]
pub struct Cluster {
    experiments: ExperimentBucket,
    log: EventLog,
    leases: Leases,
    shares: ShareBucket,
    outbox: OutboxLog,
    subscriptions: RecordBucket<Webhook>,
    alert_rules: RecordBucket<AlertRuleRecord>,
    alerts: RecordBucket<AlertRecord>,
    divergence: RecordBucket<i64>,
    api_keys: RecordBucket<ApiKey>,
    snapshots: SnapshotStore,
    snapshot_interval: Duration,
    lookups: Lookups,
}

impl Cluster {
    /// Connects to one of `settings.nats_urls` (retrying until the
    /// timeout: the NATS servers may be starting too) and opens the
    /// buckets, creating them with `settings.replicas` if missing.
    pub async fn connect(settings: &ClusterSettings, partitions: u16) -> Result<Self> {
        let addresses = settings
            .nats_urls
            .iter()
            .map(|url| url.parse::<async_nats::ServerAddr>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Cluster(format!("bad NATS address: {e}")))?;
        let options = async_nats::ConnectOptions::new()
            .name(format!("abacus {}", settings.node_id))
            .retry_on_initial_connect()
            .connection_timeout(settings.connect_timeout);
        let deadline = tokio::time::Instant::now() + settings.connect_timeout;
        let client = tokio::time::timeout_at(deadline, options.connect(addresses))
            .await
            .map_err(|_| {
                Error::Cluster(format!(
                    "no NATS server answered within {:?} at {}",
                    settings.connect_timeout,
                    settings.nats_urls.join(", ")
                ))
            })?
            .map_err(|e| Error::Cluster(format!("connecting to NATS: {e}")))?;
        let lookups = Lookups::new(client.clone(), settings.lookup_timeout);
        let jetstream = async_nats::jetstream::new(client);
        let experiments = ExperimentBucket::open(&jetstream, settings.replicas, deadline).await?;
        let log = EventLog::open(&jetstream, settings, partitions).await?;
        let leases = Leases::open(&jetstream, settings).await?;
        let shares = ShareBucket::open(&jetstream, settings).await?;
        let outbox = OutboxLog::open(&jetstream, settings).await?;
        let subscriptions = RecordBucket::open(
            &jetstream,
            "abacus_webhooks",
            "webhook subscription",
            settings,
        )
        .await?;
        let alert_rules =
            RecordBucket::open(&jetstream, "abacus_alert_rules", "alert rule", settings).await?;
        let alerts = RecordBucket::open(&jetstream, "abacus_alerts", "alert", settings).await?;
        let divergence =
            RecordBucket::open(&jetstream, "abacus_divergence", "divergence", settings).await?;
        let api_keys =
            RecordBucket::open(&jetstream, "abacus_api_keys", "API key", settings).await?;
        let snapshots = SnapshotStore::open(&jetstream, settings).await?;
        tracing::info!(node = %settings.node_id, replicas = settings.replicas, "joined the cluster");
        Ok(Self {
            experiments,
            log,
            leases,
            shares,
            outbox,
            subscriptions,
            alert_rules,
            alerts,
            divergence,
            api_keys,
            snapshots,
            snapshot_interval: settings.snapshot_interval,
            lookups,
        })
    }

    /// The shared API keys.
    pub fn api_keys(&self) -> &RecordBucket<ApiKey> {
        &self.api_keys
    }

    /// The replicated experiments.
    pub fn experiments(&self) -> &ExperimentBucket {
        &self.experiments
    }

    /// The replicated event log.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// Partition leases and live nodes.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// The partitions' shares of the aggregates.
    pub fn shares(&self) -> &ShareBucket {
        &self.shares
    }

    /// Every node's domain events, for webhook delivery.
    pub fn outbox(&self) -> &OutboxLog {
        &self.outbox
    }

    /// The shared webhook subscriptions (their secrets included: whichever
    /// node delivers signs with them).
    pub fn subscriptions(&self) -> &RecordBucket<Webhook> {
        &self.subscriptions
    }

    /// The shared alert rules.
    pub fn alert_rules(&self) -> &RecordBucket<AlertRuleRecord> {
        &self.alert_rules
    }

    /// The shared alerts.
    pub fn alerts(&self) -> &RecordBucket<AlertRecord> {
        &self.alerts
    }

    /// The partitions' snapshots.
    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// The experiments with a client-reported first exposure the hash
    /// would not give (keyed by experiment, valued with when it was first
    /// seen, in ms since the Unix epoch): every node's assignments to them
    /// look units up.
    pub fn divergence(&self) -> &RecordBucket<i64> {
        &self.divergence
    }

    /// Lookups of first exposures on partitions' owners.
    pub fn lookups(&self) -> &Lookups {
        &self.lookups
    }

    /// How often an owner snapshots the partitions it folds.
    pub fn snapshot_interval(&self) -> Duration {
        self.snapshot_interval
    }
}
