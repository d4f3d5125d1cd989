//! Partition snapshots for takeover: one object per partition in the
//! JetStream object store `abacus_snapshots`, replaced by its owner every
//! `cluster.snapshot_interval_s` while it folds. The object's description
//! carries the stream sequence the snapshot was taken at, so a new owner
//! can tell without downloading it whether it is newer than what its own
//! store holds.

use async_nats::jetstream;
use async_nats::jetstream::object_store::{self, ObjectMetadata};
use async_nats::jetstream::stream::StorageType;
use tokio::io::AsyncReadExt;

use super::ClusterSettings;
use crate::{Error, Result};

const BUCKET: &str = "abacus_snapshots";

fn name(partition: u16) -> String {
    format!("partition-{partition}")
}

/// Handle on the snapshots.
#[derive(Clone)]
pub struct SnapshotStore {
    objects: object_store::ObjectStore,
}

impl SnapshotStore {
    /// Opens the object store, creating it if missing.
    pub(super) async fn open(
        jetstream: &jetstream::Context,
        settings: &ClusterSettings,
    ) -> Result<Self> {
        if let Ok(objects) = jetstream.get_object_store(BUCKET).await {
            return Ok(Self { objects });
        }
        let objects = jetstream
            .create_object_store(object_store::Config {
                bucket: BUCKET.to_owned(),
                description: Some("abacus: one snapshot per ingest partition".to_owned()),
                storage: StorageType::File,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Cluster(format!("creating the snapshots store: {e}")))?;
        Ok(Self { objects })
    }

    /// Replaces `partition`'s snapshot, taken at stream sequence `seq`,
    /// unless the one stored is as far on (a node that lost the partition
    /// without knowing it yet must not put an older one back): whether it
    /// was stored.
    pub async fn put(&self, partition: u16, seq: u64, snapshot: &[u8]) -> Result<bool> {
        if self
            .seq(partition)
            .await?
            .is_some_and(|stored| stored >= seq)
        {
            return Ok(false);
        }
        let meta = ObjectMetadata {
            name: name(partition),
            description: Some(seq.to_string()),
            ..Default::default()
        };
        let mut data = snapshot;
        self.objects.put(meta, &mut data).await.map_err(|e| {
            Error::Cluster(format!("storing a snapshot of partition {partition}: {e}"))
        })?;
        Ok(true)
    }

    /// The stream sequence of `partition`'s latest snapshot; `None` when
    /// there is none.
    pub async fn seq(&self, partition: u16) -> Result<Option<u64>> {
        match self.objects.info(name(partition)).await {
            Ok(info) if !info.deleted => Ok(info.description.and_then(|d| d.parse().ok())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Cluster(format!(
                "reading the snapshot of partition {partition}: {e}"
            ))),
        }
    }

    /// `partition`'s latest snapshot.
    pub async fn get(&self, partition: u16) -> Result<Vec<u8>> {
        let failed = |e: &dyn std::fmt::Display| {
            Error::Cluster(format!(
                "reading the snapshot of partition {partition}: {e}"
            ))
        };
        let mut object = self
            .objects
            .get(name(partition))
            .await
            .map_err(|e| failed(&e))?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| failed(&e))?;
        Ok(bytes)
    }
}
