//! The replicated experiments bucket: one key per experiment, its stored
//! record ([`ExperimentRecord`], the JSON the local store keeps) as the
//! value, changed only by compare-and-set on the revision.

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use futures_util::{Stream, StreamExt};

use crate::domain::{Experiment, ExperimentRecord};
use crate::{Error, Result};

/// The bucket's name in JetStream.
const BUCKET: &str = "abacus_experiments";

/// Revisions kept per experiment (the latest is the one read).
const HISTORY: i64 = 5;

/// A key's revision in the bucket: the stream sequence of its last write.
/// Compare-and-set takes the revision the writer last saw.
pub type Revision = u64;

/// Handle on the experiments bucket.
#[derive(Clone)]
pub struct ExperimentBucket {
    kv: kv::Store,
}

impl ExperimentBucket {
    /// Opens the bucket, creating it with `replicas` if missing (two nodes
    /// starting together may both try; the second finds it). Tries again
    /// until `deadline`: a JetStream cluster starting beside abacus has no
    /// leader for its first seconds.
    pub(super) async fn open(
        jetstream: &jetstream::Context,
        replicas: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Self> {
        loop {
            match Self::try_open(jetstream, replicas).await {
                Ok(bucket) => return Ok(bucket),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::info!(error = %e, "the experiments bucket is not available yet");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
            }
        }
    }

    async fn try_open(jetstream: &jetstream::Context, replicas: usize) -> Result<Self> {
        if let Ok(kv) = jetstream.get_key_value(BUCKET).await {
            return Ok(Self { kv });
        }
        // The bucket's stream, as the client's `create_key_value` would
        // make it; that call first reads the account's limits in a form
        // nats-server 2.9 does not answer, so the stream is created here.
        let config = stream::Config {
            name: format!("KV_{BUCKET}"),
            description: Some("abacus experiments: the cluster's one truth".to_owned()),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: HISTORY,
            storage: StorageType::File,
            num_replicas: replicas,
            discard: DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            ..Default::default()
        };
        // A failed create is fine if another node created it meanwhile.
        let created = jetstream.create_stream(config).await.err();
        let kv = jetstream.get_key_value(BUCKET).await.map_err(|opened| {
            Error::Cluster(match created {
                Some(e) => format!("creating the experiments bucket: {e}"),
                None => format!("opening the experiments bucket: {opened}"),
            })
        })?;
        Ok(Self { kv })
    }

    /// Writes a new experiment; `ExperimentExists` if the key is taken
    /// (by any node, archived experiments included).
    pub async fn create(&self, experiment: &Experiment) -> Result<Revision> {
        let key = experiment.key.as_str();
        self.kv
            .create(key, encode(experiment)?)
            .await
            .map_err(|e| match e.kind() {
                CreateErrorKind::AlreadyExists => Error::ExperimentExists(key.to_owned()),
                _ => Error::Cluster(format!("creating experiment '{key}': {e}")),
            })
    }

    /// Replaces the experiment if its revision is still `revision`;
    /// `ChangedElsewhere` if another node wrote it since.
    pub async fn update(&self, experiment: &Experiment, revision: Revision) -> Result<Revision> {
        let key = experiment.key.as_str();
        let what = format!("experiment '{key}'");
        super::compare_and_set(&self.kv, key, encode(experiment)?, revision, &what).await
    }

    /// Every experiment with its revision, and the bucket's last revision:
    /// watch from the one after it to see every later change (a change
    /// that lands while this reads may be seen twice, never missed).
    pub async fn load(&self) -> Result<(Vec<(Experiment, Revision)>, Revision)> {
        let last = self
            .kv
            .status()
            .await
            .map_err(|e| Error::Cluster(format!("reading the experiments bucket: {e}")))?
            .info
            .state
            .last_sequence;
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| Error::Cluster(format!("listing experiments: {e}")))?;
        let mut experiments = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| Error::Cluster(format!("listing experiments: {e}")))?;
            let entry = self
                .kv
                .entry(key.as_str())
                .await
                .map_err(|e| Error::Cluster(format!("reading experiment '{key}': {e}")))?;
            if let Some(entry) = entry.filter(|e| e.operation == Operation::Put) {
                experiments.push((decode(&entry.key, &entry.value)?, entry.revision));
            }
        }
        Ok((experiments, last))
    }

    /// Every change after `after`, as it happens. Ends if the connection
    /// to the cluster is lost for good.
    pub async fn watch(
        &self,
        after: Revision,
    ) -> Result<impl Stream<Item = Result<(Experiment, Revision)>> + use<>> {
        let watch = self
            .kv
            .watch_all_from_revision(after + 1)
            .await
            .map_err(|e| Error::Cluster(format!("watching experiments: {e}")))?;
        Ok(watch.filter_map(|entry| async move {
            match entry {
                Ok(entry) if entry.operation == Operation::Put => Some(
                    decode(&entry.key, &entry.value).map(|experiment| (experiment, entry.revision)),
                ),
                Ok(_) => None,
                Err(e) => Some(Err(Error::Cluster(format!("watching experiments: {e}")))),
            }
        }))
    }
}

fn encode(experiment: &Experiment) -> Result<bytes::Bytes> {
    serde_json::to_vec(&ExperimentRecord::from(experiment))
        .map(bytes::Bytes::from)
        .map_err(|e| Error::Cluster(format!("encoding experiment: {e}")))
}

fn decode(key: &str, value: &[u8]) -> Result<Experiment> {
    serde_json::from_slice::<ExperimentRecord>(value)
        .map(Experiment::from)
        .map_err(|e| Error::Corrupt {
            cf: "abacus_experiments",
            reason: format!("experiment '{key}': {e}"),
        })
}
