//! Each partition owner's share of every experiment's aggregates, for
//! every node to sum: one key-value bucket, `abacus_shares`, with the key
//! `<partition>.<experiment>`. A share is a sum over the partition's units,
//! so an experiment's totals are the sum of its partitions' latest shares,
//! whichever node folded each. The value carries the stream sequence the
//! share was folded to: a reader keeps the newest, so a share published
//! late by an owner that has since lost the partition does not win.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, Operation};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::ClusterSettings;
use crate::domain::{AggregatesRecord, AggregatesRecordRef, ExperimentAggregates};
use crate::{Error, Result};

/// The bucket's name in JetStream.
const BUCKET: &str = "abacus_shares";

/// One partition's share of one experiment's aggregates.
#[derive(Debug)]
pub struct Share {
    /// The ingest partition that folded it.
    pub partition: u16,
    /// The experiment.
    pub experiment: String,
    /// The last stream sequence folded into it.
    pub seq: u64,
    /// The sums.
    pub aggregates: ExperimentAggregates,
}

#[derive(Serialize)]
struct ShareOut<'a> {
    seq: u64,
    aggregates: AggregatesRecordRef<'a>,
}

#[derive(Deserialize)]
struct ShareIn {
    seq: u64,
    aggregates: AggregatesRecord,
}

/// Handle on the shares bucket.
#[derive(Clone)]
pub struct ShareBucket {
    kv: kv::Store,
}

impl ShareBucket {
    /// Opens the bucket, creating it if missing.
    pub(super) async fn open(
        jetstream: &jetstream::Context,
        settings: &ClusterSettings,
    ) -> Result<Self> {
        let description = "abacus: each partition's share of every experiment's aggregates";
        let kv = super::key_value(jetstream, BUCKET, description, Duration::ZERO, settings).await?;
        Ok(Self { kv })
    }

    /// Publishes `partition`'s share of `experiment`, folded to `seq`.
    pub async fn put(
        &self,
        partition: u16,
        experiment: &str,
        seq: u64,
        aggregates: &ExperimentAggregates,
    ) -> Result<()> {
        let value = serde_json::to_vec(&ShareOut {
            seq,
            aggregates: AggregatesRecordRef(aggregates),
        })
        .map_err(|e| Error::Cluster(format!("encoding a share: {e}")))?;
        self.kv
            .put(format!("{partition}.{experiment}"), value.into())
            .await
            .map_err(|e| Error::Cluster(format!("publishing a share: {e}")))?;
        Ok(())
    }

    /// The latest share of every key, then every new one as it is put.
    /// Entries this version cannot read are skipped (and logged). The
    /// stream ends when the watch fails (its server died, say): watch
    /// again then.
    pub async fn watch(&self) -> Result<impl Stream<Item = Share>> {
        let entries = self
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| Error::Cluster(format!("watching the shares bucket: {e}")))?;
        Ok(
            super::until_failed(entries, "shares").filter_map(|entry| async move {
                if entry.operation != Operation::Put {
                    return None;
                }
                let share = decode(&entry.key, &entry.value);
                if let Err(e) = &share {
                    tracing::warn!(key = %entry.key, error = %e, "skipping an unreadable share");
                }
                share.ok()
            }),
        )
    }
}

fn decode(key: &str, value: &[u8]) -> std::result::Result<Share, String> {
    let (partition, experiment) = key.split_once('.').ok_or("a key without a partition")?;
    let partition = partition.parse().map_err(|_| "a bad partition")?;
    let share: ShareIn = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    Ok(Share {
        partition,
        experiment: experiment.to_owned(),
        seq: share.seq,
        aggregates: share.aggregates.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_reads_back_as_published() {
        let aggregates = ExperimentAggregates::two_arms([10, 20], [1, 2]);
        let value = serde_json::to_vec(&ShareOut {
            seq: 42,
            aggregates: AggregatesRecordRef(&aggregates),
        })
        .expect("encodes");
        let share = decode("3.checkout", &value).expect("decodes");
        assert_eq!(
            (share.partition, share.experiment.as_str(), share.seq),
            (3, "checkout", 42)
        );
        assert_eq!(share.aggregates, aggregates);
        assert!(decode("checkout", &value).is_err());
        assert!(decode("x.checkout", &value).is_err());
    }
}
