//! Cluster mode: several abacus nodes on one NATS JetStream cluster.
//!
//! The experiments live in a replicated key-value bucket, the one truth
//! every node serves from: a change is a compare-and-set on the key's
//! revision (two nodes racing cannot both win), and every node watches the
//! bucket and publishes what changed into its own registry. Each node keeps
//! a local copy in its RocksDB store (and its domain events in its own
//! outbox) so that everything downstream of the registry works as on a
//! single node.

mod bucket;

use std::time::Duration;

pub use bucket::{ExperimentBucket, Revision};

use crate::{Error, Result};

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
}

/// This node's connection to the cluster and the buckets it uses.
#[derive(Clone)]
pub struct Cluster {
    experiments: ExperimentBucket,
}

impl Cluster {
    /// Connects to one of `settings.nats_urls` (retrying until the
    /// timeout: the NATS servers may be starting too) and opens the
    /// buckets, creating them with `settings.replicas` if missing.
    pub async fn connect(settings: &ClusterSettings) -> Result<Self> {
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
        let jetstream = async_nats::jetstream::new(client);
        let experiments = ExperimentBucket::open(&jetstream, settings.replicas, deadline).await?;
        tracing::info!(node = %settings.node_id, replicas = settings.replicas, "joined the cluster");
        Ok(Self { experiments })
    }

    /// The replicated experiments.
    pub fn experiments(&self) -> &ExperimentBucket {
        &self.experiments
    }
}
