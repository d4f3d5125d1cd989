//! Where experiment records are written: the local store on a single node;
//! in cluster mode the replicated bucket first (the compare-and-set there
//! decides which change wins), then the node's local copy with the domain
//! event the change causes, so that webhooks, the live stream and restarts
//! work as on a single node.

use crate::cluster::{ExperimentBucket, Revision};
use crate::domain::{DomainEvent, Experiment};
use crate::storage::{blocking, Store};
use crate::Result;

/// The writer's side of the experiment records (the catalog and the
/// experiment actors hold one each).
#[derive(Clone)]
pub struct Records {
    store: Store,
    bucket: Option<ExperimentBucket>,
}

impl Records {
    /// Records kept in `store` alone; revisions stay 0.
    pub fn local(store: Store) -> Self {
        Self {
            store,
            bucket: None,
        }
    }

    /// Records whose truth is `bucket`, copied into `store`.
    pub fn replicated(store: Store, bucket: ExperimentBucket) -> Self {
        Self {
            store,
            bucket: Some(bucket),
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

    /// Writes a new experiment with its `experiment.created` event;
    /// `ExperimentExists` when the key is taken (on any node).
    pub async fn create(
        &self,
        experiment: Experiment,
        event: DomainEvent,
    ) -> Result<(Experiment, Revision)> {
        let revision = match &self.bucket {
            Some(bucket) => bucket.create(&experiment).await?,
            None => 0,
        };
        let store = self.store.clone();
        let experiment = blocking(move || {
            store
                .put_experiment(&experiment, Some(&event))
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

    /// Keeps the local copy of a change another node made (its domain
    /// event is that node's to publish).
    pub async fn adopt(&self, experiment: Experiment) -> Result<Experiment> {
        let store = self.store.clone();
        blocking(move || store.put_experiment(&experiment, None).map(|()| experiment)).await
    }
}
