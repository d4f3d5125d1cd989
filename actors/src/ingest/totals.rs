//! What the ingest partitions share: the measure names each experiment
//! counts, and the published totals readers see.
//!
//! Each partition folds its own units into its own share of every
//! experiment's aggregates. Shares count disjoint units, so an
//! experiment's totals are their sum ([`ExperimentAggregates::add`]); the
//! sum is made when a partition publishes, not when a reader reads, so a
//! reader still gets one immutable snapshot and can tell "unchanged" by
//! pointer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use dashmap::DashMap;

use crate::domain::{measures, ExperimentAggregates};

/// The measure that events of names beyond an experiment's
/// `max_measures` count under. Measure names are `[a-z0-9_-]`, so no client
/// name can collide with it.
pub const OTHER_MEASURE: &str = "(other)";

/// The distinct measures each experiment counts, at most `max` (plus
/// [`OTHER_MEASURE`]). Shared by every partition, so all of them count an
/// event name the same way: under its own name, or as `(other)`.
#[derive(Debug)]
pub struct MeasureNames {
    max: usize,
    by_experiment: RwLock<HashMap<Arc<str>, HashSet<Arc<str>>>>,
}

impl MeasureNames {
    /// Names counted per experiment: at most `max`.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            by_experiment: RwLock::default(),
        }
    }

    /// The measure an event of `name` counts under in `experiment`: its
    /// own name while the experiment has fewer than `max` distinct
    /// measures (or already counts this one), [`OTHER_MEASURE`] after
    /// that. A known name costs one shared read lock; only a new one takes
    /// the write lock, and there are at most `max + 1` per experiment.
    pub fn admit(&self, experiment: &Arc<str>, name: &str) -> Arc<str> {
        let known = self
            .by_experiment
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(experiment)
            .and_then(|names| names.get(name).cloned());
        if let Some(key) = known {
            return key;
        }
        let mut all = self
            .by_experiment
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let names = all.entry(Arc::clone(experiment)).or_default();
        if let Some(key) = names.get(name) {
            return Arc::clone(key);
        }
        let counted = names.len() - usize::from(names.contains(OTHER_MEASURE));
        let admitted = if counted < self.max {
            name
        } else {
            OTHER_MEASURE
        };
        if let Some(key) = names.get(admitted) {
            return Arc::clone(key);
        }
        let key: Arc<str> = admitted.into();
        names.insert(Arc::clone(&key));
        key
    }

    /// How many names `experiment` counts.
    #[cfg(test)]
    pub fn count(&self, experiment: &str) -> usize {
        self.by_experiment
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(experiment)
            .map_or(0, HashSet::len)
    }

    /// Records the names restored aggregates already count.
    pub fn restore(&self, experiment: &Arc<str>, aggregates: &ExperimentAggregates) {
        let mut all = self
            .by_experiment
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let names = all.entry(Arc::clone(experiment)).or_default();
        for variant in aggregates.variants.values() {
            for name in variant.measures.keys() {
                if !names.contains(name.as_str()) && !measures::is_builtin(name) {
                    names.insert(name.as_str().into());
                }
            }
        }
    }
}

/// Shares named by (partition, experiment).
pub type ShareKeys = BTreeSet<(usize, Arc<str>)>;

/// The published aggregates readers see: one immutable snapshot of each
/// experiment's totals, replaced after each committed batch that changed
/// a partition's share of it.
#[derive(Debug)]
pub struct LiveAggregates {
    totals: DashMap<Arc<str>, Arc<ExperimentAggregates>>,
    /// Each experiment's latest share from each partition, with the event
    /// log sequence it was folded to (cluster mode; 0 on a single node).
    shares: DashMap<Arc<str>, Vec<(u64, Arc<ExperimentAggregates>)>>,
    partitions: usize,
    /// What an experiment without data gets: always the same snapshot, so
    /// readers can tell "unchanged" by pointer.
    empty: Arc<ExperimentAggregates>,
    /// Cluster mode: the shares this node's writers changed since they
    /// were last taken for publishing, by (partition, experiment); `None`
    /// on a single node, which publishes nowhere.
    changed: Option<Mutex<ShareKeys>>,
    /// Cluster mode: the event log sequence each partition's writer has
    /// folded to.
    folded: Vec<AtomicU64>,
}

impl Default for LiveAggregates {
    fn default() -> Self {
        Self::new(1)
    }
}

impl LiveAggregates {
    /// Totals over `partitions` shares.
    pub fn new(partitions: usize) -> Self {
        Self {
            totals: DashMap::new(),
            shares: DashMap::new(),
            partitions: partitions.max(1),
            empty: Arc::default(),
            changed: None,
            folded: (0..partitions.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Totals over `partitions` shares that also remember which shares this
    /// node's writers changed, for publishing to the other nodes.
    pub fn replicated(partitions: usize) -> Self {
        Self {
            changed: Some(Mutex::default()),
            ..Self::new(partitions)
        }
    }

    /// The latest committed totals of an experiment.
    pub fn get(&self, experiment: &str) -> Arc<ExperimentAggregates> {
        self.totals
            .get(experiment)
            .map_or_else(|| Arc::clone(&self.empty), |a| Arc::clone(&a))
    }

    /// Replaces `partition`'s share of `experiment`, folded by this node's
    /// writer to the sequence it last reported ([`LiveAggregates::folded`]),
    /// and publishes the new totals. Publishes of one experiment are
    /// serialised by its entry, so two partitions cannot publish sums that
    /// each miss the other.
    pub fn publish(&self, partition: usize, experiment: Arc<str>, share: ExperimentAggregates) {
        if let Some(Ok(mut changed)) = self.changed.as_ref().map(Mutex::lock) {
            changed.insert((partition, Arc::clone(&experiment)));
        }
        self.set(partition, experiment, share, self.folded_to(partition));
    }

    /// [`LiveAggregates::publish`] for a share another node folded to
    /// `seq` (cluster mode): not this node's to publish again.
    pub fn adopt(
        &self,
        partition: usize,
        experiment: Arc<str>,
        share: ExperimentAggregates,
        seq: u64,
    ) {
        self.set(partition, experiment, share, seq);
    }

    /// Replaces a share unless the one held was folded further (a late
    /// fold by a node that lost the partition, or a late publish by one,
    /// never hides a newer share).
    fn set(&self, partition: usize, experiment: Arc<str>, share: ExperimentAggregates, seq: u64) {
        let mut shares = self
            .shares
            .entry(Arc::clone(&experiment))
            .or_insert_with(|| vec![(0, Arc::clone(&self.empty)); self.partitions]);
        let Some(slot) = shares.get_mut(partition) else {
            return;
        };
        if seq < slot.0 {
            return;
        }
        *slot = (seq, Arc::new(share));
        let total = if self.partitions == 1 {
            Arc::clone(&slot.1)
        } else {
            let mut total = ExperimentAggregates::default();
            for (_, share) in shares.iter() {
                total.add(share);
            }
            Arc::new(total)
        };
        self.totals.insert(experiment, total);
    }

    /// `partition`'s latest share of `experiment`, and the sequence it was
    /// folded to.
    pub fn share(
        &self,
        partition: usize,
        experiment: &str,
    ) -> Option<(u64, Arc<ExperimentAggregates>)> {
        let shares = self.shares.get(experiment)?;
        shares.get(partition).cloned()
    }

    /// Marks every share of `partition` changed, to be published again: a
    /// node that took the partition over publishes what it holds once it
    /// has caught up, even if nothing changes after (what it folded before
    /// may never have been published: its lease can have flickered
    /// meanwhile).
    pub fn touch(&self, partition: usize) {
        let Some(Ok(mut changed)) = self.changed.as_ref().map(Mutex::lock) else {
            return;
        };
        for entry in &self.shares {
            changed.insert((partition, Arc::clone(entry.key())));
        }
    }

    /// Every share of `partition`: experiment, the sequence it was folded
    /// to, the sums.
    pub fn shares_of(&self, partition: usize) -> Vec<(Arc<str>, u64, Arc<ExperimentAggregates>)> {
        self.shares
            .iter()
            .filter_map(|entry| {
                let (seq, share) = entry.value().get(partition)?;
                Some((Arc::clone(entry.key()), *seq, Arc::clone(share)))
            })
            .collect()
    }

    /// Takes the shares this node's writers changed since the last call.
    pub fn take_changed(&self) -> ShareKeys {
        match self.changed.as_ref().map(Mutex::lock) {
            Some(Ok(mut changed)) => std::mem::take(&mut *changed),
            _ => ShareKeys::new(),
        }
    }

    /// Records that `partition`'s writer has folded the event log up to
    /// `seq` (cluster mode).
    pub fn folded(&self, partition: usize, seq: u64) {
        if let Some(folded) = self.folded.get(partition) {
            folded.fetch_max(seq, Ordering::AcqRel);
        }
    }

    /// The event log sequence `partition`'s writer has folded to here.
    pub fn folded_to(&self, partition: usize) -> u64 {
        self.folded
            .get(partition)
            .map_or(0, |f| f.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_counts_the_same_names_and_no_more_than_the_bound() {
        let names = MeasureNames::new(2);
        let e: Arc<str> = "e".into();
        assert_eq!(&*names.admit(&e, "a"), "a");
        assert_eq!(&*names.admit(&e, "b"), "b");
        assert_eq!(&*names.admit(&e, "c"), OTHER_MEASURE);
        assert_eq!(&*names.admit(&e, "a"), "a", "a known name keeps counting");
        assert_eq!(&*names.admit(&e, "d"), OTHER_MEASURE);
        let other: Arc<str> = "other-experiment".into();
        assert_eq!(&*names.admit(&other, "c"), "c", "per experiment");
    }

    #[test]
    fn a_share_folded_less_far_than_the_one_held_is_ignored() {
        let live = LiveAggregates::replicated(2);
        let e: Arc<str> = "e".into();
        let units = |live: &LiveAggregates| live.get("e").variants["control"].units;
        live.adopt(
            1,
            Arc::clone(&e),
            ExperimentAggregates::two_arms([10, 0], [0, 0]),
            50,
        );
        // A former owner's late share, folded to 40: older, ignored.
        live.adopt(
            1,
            Arc::clone(&e),
            ExperimentAggregates::two_arms([8, 0], [0, 0]),
            40,
        );
        assert_eq!(units(&live), 10);
        // This node's writer folding a stale partition only to 45, too.
        live.folded(1, 45);
        live.publish(
            1,
            Arc::clone(&e),
            ExperimentAggregates::two_arms([9, 0], [0, 0]),
        );
        assert_eq!(units(&live), 10);
        // Folded further: taken.
        live.adopt(
            1,
            Arc::clone(&e),
            ExperimentAggregates::two_arms([12, 0], [0, 0]),
            60,
        );
        assert_eq!(units(&live), 12);
        assert_eq!(live.share(1, "e").map(|(seq, _)| seq), Some(60));
        assert_eq!(
            live.take_changed().into_iter().collect::<Vec<_>>(),
            [(1, Arc::clone(&e))],
            "only this node's own publish is to be published again"
        );
    }

    #[test]
    fn totals_are_the_sum_of_the_partitions_latest_shares() {
        let live = LiveAggregates::new(2);
        let e: Arc<str> = "e".into();
        assert!(Arc::ptr_eq(&live.get("e"), &live.get("nothing")));
        live.publish(
            0,
            Arc::clone(&e),
            ExperimentAggregates::two_arms([10, 20], [1, 2]),
        );
        live.publish(
            1,
            Arc::clone(&e),
            ExperimentAggregates::two_arms([5, 5], [1, 1]),
        );
        let total = live.get("e");
        assert_eq!(total.variants["control"].units, 15);
        assert_eq!(total.variants["b"].measures["buy"].events, 3);
        // A newer share replaces the partition's older one.
        live.publish(
            1,
            Arc::clone(&e),
            ExperimentAggregates::two_arms([6, 5], [1, 1]),
        );
        assert_eq!(live.get("e").variants["control"].units, 16);
        assert!(Arc::ptr_eq(&live.get("e"), &live.get("e")), "one snapshot");
    }
}
