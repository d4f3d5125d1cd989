//! Leases: which node owns each ingest partition, and which nodes are
//! alive. One key-value bucket, `abacus_leases`, whose entries expire
//! `cluster.lease_ttl_ms` after their last write:
//!
//! - `partition.<n>` holds its owner's node id (and `singleton.<name>`
//!   that of the node running a task that must run once, alike). It is taken by a create
//!   (which fails while the key exists) and kept by compare-and-set on its
//!   revision, so at most one node holds it; an owner that stops renewing
//!   it (dead, or cut off from NATS) loses it when it expires, and another
//!   node creates it again.
//! - `node.<id>` holds how the node splits units into partitions (their
//!   count and a probe of the hash), rewritten at every renewal: the live
//!   nodes are the keys present, and every node must split units alike.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, CreateErrorKind};
use futures_util::TryStreamExt;

use super::{ClusterSettings, Revision};
use crate::{Error, Result};

/// The bucket's name in JetStream.
const BUCKET: &str = "abacus_leases";

/// A lease this node holds: the revision it last wrote, and when.
#[derive(Debug)]
pub struct Held {
    lease: Lease,
    revision: Revision,
    written: Instant,
}

/// Handle on the leases bucket, as one node.
#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
    node: String,
    ttl: Duration,
}

/// What a lease is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Folding an ingest partition.
    Partition(u16),
    /// A task that must run on one node at a time (the results monitor).
    Singleton(&'static str),
}

impl Lease {
    /// Its key in the bucket.
    fn key(self) -> String {
        match self {
            Self::Partition(partition) => format!("partition.{partition}"),
            Self::Singleton(name) => format!("singleton.{name}"),
        }
    }
}

impl std::fmt::Display for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Partition(partition) => write!(f, "partition {partition}"),
            Self::Singleton(name) => write!(f, "the {name}"),
        }
    }
}

impl Leases {
    /// Opens the bucket, creating it if missing (its entries then live
    /// `settings.lease_ttl`; an existing bucket keeps its own).
    pub(super) async fn open(
        jetstream: &jetstream::Context,
        settings: &ClusterSettings,
    ) -> Result<Self> {
        let description = "abacus: partition owners and live nodes";
        let kv =
            super::key_value(jetstream, BUCKET, description, settings.lease_ttl, settings).await?;
        Ok(Self {
            kv,
            node: settings.node_id.clone(),
            ttl: settings.lease_ttl,
        })
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// How long a lease lasts unless renewed.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Says this node is alive and splits units as `split` says (their
    /// partition count and a probe of the hash); answers how many nodes
    /// are alive. `Cluster` if a live node splits them otherwise: one
    /// unit's events would then be folded by two owners.
    pub async fn heartbeat(&self, split: &str) -> Result<usize> {
        let failed = |e: &dyn std::fmt::Display| Error::Cluster(format!("heartbeat: {e}"));
        self.kv
            .put(format!("node.{}", self.node), split.to_owned().into())
            .await
            .map_err(|e| failed(&e))?;
        let keys = self.keys().await?;
        let mut nodes = 0;
        for key in keys.iter().filter(|k| k.starts_with("node.")) {
            nodes += 1;
            let theirs = self.kv.get(key).await.map_err(|e| failed(&e))?;
            if let Some(theirs) = theirs.filter(|v| **v != *split.as_bytes()) {
                return Err(Error::Cluster(format!(
                    "node {} splits units as {}, this node as {split} (partitions/probe): \
                     every node needs the same ingest.partitions and abacus version",
                    &key["node.".len()..],
                    String::from_utf8_lossy(&theirs)
                )));
            }
        }
        Ok(nodes.max(1))
    }

    /// Which partitions have an owner now.
    pub async fn taken(&self) -> Result<Vec<u16>> {
        Ok(self
            .keys()
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix("partition.")?.parse().ok())
            .collect())
    }

    /// Every key present (not expired, not deleted).
    async fn keys(&self) -> Result<Vec<String>> {
        let failed = |e: &dyn std::fmt::Display| Error::Cluster(format!("reading leases: {e}"));
        self.kv
            .keys()
            .await
            .map_err(|e| failed(&e))?
            .try_collect()
            .await
            .map_err(|e| failed(&e))
    }

    /// Takes `lease` if nobody holds it: its revision, or `None` when
    /// another node does.
    async fn acquire(&self, lease: Lease) -> Result<Option<Revision>> {
        match self.kv.create(lease.key(), self.node.clone().into()).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(Error::Cluster(format!("taking {lease}: {e}"))),
        }
    }

    /// Renews this node's `lease`: its new revision, or `None` when the
    /// lease was lost (it expired and someone else took it, or it changed
    /// since `revision`).
    async fn renew(&self, lease: Lease, revision: Revision) -> Result<Option<Revision>> {
        let key = lease.key();
        match self
            .kv
            .update(&key, self.node.clone().into(), revision)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if super::stale_revision(&e) => Ok(None),
            Err(e) => match self.kv.entry(&key).await {
                // A stale revision (servers since 2.11 name it otherwise).
                Ok(Some(entry)) if entry.revision != revision => Ok(None),
                Ok(None) => Ok(None),
                _ => Err(Error::Cluster(format!("renewing {lease}: {e}"))),
            },
        }
    }

    /// Takes `lease` if nobody holds it (`None` when someone does, or
    /// NATS did not answer: logged).
    pub async fn take(&self, lease: Lease) -> Option<Held> {
        // The server starts the TTL when it stores the write, after this.
        let sent = Instant::now();
        match self.acquire(lease).await {
            Ok(Some(revision)) => Some(Held {
                lease,
                revision,
                written: sent,
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%lease, error = %e, "taking a lease failed");
                None
            }
        }
    }

    /// Renews `held`; `false` once it is lost: another node took it, or it
    /// could not be renewed for a whole TTL (by then it may have expired,
    /// and another node may hold it). A failed renewal before that keeps
    /// it. Waits for NATS no longer than the lease has left: a node cut off
    /// stops believing it holds a lease no later than the lease can expire.
    pub async fn keep(&self, held: &mut Held) -> bool {
        let lease = held.lease;
        // The server starts the TTL when it stores the write, after this.
        let sent = Instant::now();
        let expires = held.written + self.ttl;
        let renewed = tokio::time::timeout_at(expires.into(), self.renew(lease, held.revision));
        match renewed.await {
            Ok(Ok(Some(revision))) => {
                held.revision = revision;
                held.written = sent;
                true
            }
            Ok(Ok(None)) => {
                tracing::warn!(%lease, "lease lost: another node holds it now");
                false
            }
            Err(_) => {
                tracing::error!(%lease, "lease not renewed for a whole TTL: NATS did not answer");
                false
            }
            Ok(Err(e)) if Instant::now() >= expires => {
                tracing::error!(%lease, error = %e, "lease not renewed for a whole TTL");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(%lease, error = %e, "renewing a lease failed");
                true
            }
        }
    }

    /// Gives `held` up so another node can take it at once (logged if
    /// NATS refuses: it expires then).
    pub async fn give_back(&self, held: Held) {
        if let Err(e) = self.release(held.lease, held.revision).await {
            tracing::warn!(lease = %held.lease, error = %e, "releasing a lease failed; it will expire");
        }
    }

    /// Gives `lease` up (only if this node still holds it at `revision`),
    /// so another node can take it at once.
    async fn release(&self, lease: Lease, revision: Revision) -> Result<()> {
        self.kv
            .delete_expect_revision(lease.key(), Some(revision))
            .await
            .map_err(|e| Error::Cluster(format!("releasing {lease}: {e}")))
    }
}
