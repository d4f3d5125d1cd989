//! Where experiment records are written: the local store on a single node;
//! in cluster mode the replicated bucket first (the compare-and-set there
//! decides which change wins), then the node's local copy with the domain
//! event the change causes, so that webhooks, the live stream and restarts
//! work as on a single node.

use std::time::Duration;

use crate::cluster::{ExperimentBucket, RecordBucket, Revision};
use crate::domain::{Alert, AlertRecord, AuditEntry, DomainEvent, Experiment};
use crate::storage::{blocking, Store};
use crate::Result;

/// How often sharing an alert is tried, a second apart.
const SHARE_ATTEMPTS: u32 = 30;

/// The writer's side of the experiment records (the catalog and the
/// experiment actors hold one each).
#[derive(Clone)]
pub struct Records {
    store: Store,
    bucket: Option<ExperimentBucket>,
    /// Cluster mode: the shared alerts, where a guardrail stop's alert goes.
    alerts: Option<RecordBucket<AlertRecord>>,
}

impl Records {
    /// Records kept in `store` alone; revisions stay 0.
    pub fn local(store: Store) -> Self {
        Self {
            store,
            bucket: None,
            alerts: None,
        }
    }

    /// Records whose truth is `bucket`, copied into `store`; the alerts a
    /// change raises are shared in `alerts`.
    pub fn replicated(
        store: Store,
        bucket: ExperimentBucket,
        alerts: RecordBucket<AlertRecord>,
    ) -> Self {
        Self {
            store,
            bucket: Some(bucket),
            alerts: Some(alerts),
        }
    }

    /// The local store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The replicated bucket, in cluster mode.
    pub fn bucket(&self) -> Option<&ExperimentBucket> {
        self.bucket.as_ref()
    }

    /// Writes a new experiment with its `experiment.created` event and its
    /// audit entry; `ExperimentExists` when the key is taken (on any node).
    pub async fn create(
        &self,
        experiment: Experiment,
        event: DomainEvent,
        audit: AuditEntry,
    ) -> Result<(Experiment, Revision)> {
        let revision = match &self.bucket {
            Some(bucket) => bucket.create(&experiment).await?,
            None => 0,
        };
        let store = self.store.clone();
        let experiment = blocking(move || {
            store
                .put_experiment_audited(&experiment, Some(&event), &audit)
                .map(|()| experiment)
        })
        .await?;
        Ok((experiment, revision))
    }

    /// Writes a change of an experiment last seen at `revision`;
    /// `ChangedElsewhere` when another node changed it since. `write`
    /// stores the local copy and whatever goes with it (domain events, an
    /// alert) in one batch.
    pub async fn update<W>(
        &self,
        experiment: Experiment,
        revision: Revision,
        write: W,
    ) -> Result<(Experiment, Revision)>
    where
        W: FnOnce(&Store, &Experiment) -> Result<()> + Send + 'static,
    {
        let revision = match &self.bucket {
            Some(bucket) => bucket.update(&experiment, revision).await?,
            None => revision,
        };
        let store = self.store.clone();
        let experiment = blocking(move || write(&store, &experiment).map(|()| experiment)).await?;
        Ok((experiment, revision))
    }

    /// Cluster mode: shares an alert this node raised with a change it won
    /// (a guardrail stop, recorded here with the change), retrying in the
    /// background while the cluster does not answer. A single node has
    /// nothing to do.
    pub fn share_alert(&self, alert: &Alert) {
        let Some(bucket) = self.alerts.clone() else {
            return;
        };
        let record = AlertRecord::from(alert);
        // Called from the blocking thread that wrote the change, where
        // tokio's runtime is at hand but not actix's.
        tokio::spawn(async move {
            let id = record.id.as_str();
            for attempt in 1..=SHARE_ATTEMPTS {
                match bucket.create(id, &record).await {
                    Ok(_) | Err(crate::Error::ChangedElsewhere(_)) => return,
                    Err(e) if attempt == SHARE_ATTEMPTS => {
                        tracing::error!(alert = %id, error = %e, "sharing an alert failed; only this node lists it");
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        });
    }

    /// Keeps the local copy of a change another node made (its domain
    /// event is that node's to publish).
    pub async fn adopt(&self, experiment: Experiment) -> Result<Experiment> {
        let store = self.store.clone();
        blocking(move || store.put_experiment(&experiment, None).map(|()| experiment)).await
    }
}
