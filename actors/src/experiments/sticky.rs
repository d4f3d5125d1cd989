//! Sticky assignments: the variant each unit was first exposed to, and when.
//!
//! First exposures live on disk (the `sticky_assignments` column family),
//! one per unit and experiment, however many units arrive; nothing per unit
//! is loaded at start. Most assignments never need them: a unit's first
//! exposure can only differ from what the hash gives it now when the
//! experiment's coverage was cut after it was exposed and the hash now puts
//! it outside, or when a client reported a variant the hash would not have
//! given (the experiment is then *diverged*). [`Compiled::decide`] asks for
//! a lookup only in those cases, and a lookup is one point read answered by
//! the bloom filter or the block cache.
//!
//! Between a request and the commit of its exposure (a flush interval),
//! the new first exposure is *pending*: held here, so a request for the same
//! unit in that window sees it, and released by the [`Claim`] that the
//! exposure carries to the writer once it is committed (or refused). So
//! what this table holds is bounded by what the ingest mailbox holds.
//!
//! In cluster mode a unit's committed first exposures are in the store of
//! the node that folds its partition. When that is another node, an
//! assignment that depends on them asks it first ([`Elsewhere`]).
//!
//! [`Compiled::decide`]: super::assignment::Compiled::decide

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures_util::future::BoxFuture;

use crate::cluster::FoundExposure;
use crate::domain::Experiment;
use crate::storage::Store;
use crate::Result;

/// A unit's first exposure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstExposure {
    /// Index of the variant it saw.
    pub variant: usize,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// Cluster mode: where a unit's committed first exposures are asked for
/// when another node folds its partition.
pub trait Elsewhere: Send + Sync {
    /// The first exposures of `unit` to each of `experiments`, in order,
    /// as the node folding its partition has them; `None` when that is
    /// this node (its store answers).
    fn first_exposures(
        &self,
        unit: &str,
        experiments: Vec<String>,
    ) -> Option<BoxFuture<'static, Result<Vec<Option<FoundExposure>>>>>;
}

/// One experiment's first exposures: committed ones in the store, pending
/// ones here.
pub struct StickyTable {
    store: Store,
    /// First exposures queued but not committed yet. Variants are at most
    /// 20, so one byte holds the index. Every exposure of a new unit
    /// inserts and removes an entry, so the hasher is foldhash's rather
    /// than the default SipHash (its `quality` variant, seeded per process,
    /// as the unit ids are the client's).
    pending: DashMap<Box<str>, (u8, i64), foldhash::quality::RandomState>,
    /// Some first exposure differs from the hash: every assignment must
    /// look its unit up.
    diverged: AtomicBool,
}

impl StickyTable {
    /// A table reading committed first exposures from `store`;
    /// `diverged` as the store recorded it.
    pub fn new(store: Store, diverged: bool) -> Self {
        Self {
            store,
            pending: DashMap::default(),
            diverged: AtomicBool::new(diverged),
        }
    }

    /// Whether some first exposure differs from what the hash gives.
    pub fn diverged(&self) -> bool {
        self.diverged.load(Ordering::Relaxed)
    }

    /// Records that a first exposure about to be queued differs from the
    /// hash. Set before the exposure is queued, so no request can miss it;
    /// the store records it with the exposure (see `Store::commit`).
    pub fn diverge(&self) {
        self.diverged.store(true, Ordering::Relaxed);
    }

    /// The unit's first exposure to `experiment` (the current snapshot,
    /// which maps the stored variant key to its index): pending, else
    /// committed. A committed one whose variant no longer exists is
    /// ignored.
    pub fn get(&self, unit: &str, experiment: &Experiment) -> Result<Option<FirstExposure>> {
        if let Some(e) = self.pending.get(unit) {
            return Ok(Some(FirstExposure {
                variant: usize::from(e.0),
                at_ms: e.1,
            }));
        }
        let Some(stored) = self.store.first_exposure(experiment.key.as_str(), unit)? else {
            return Ok(None);
        };
        Ok(experiment
            .variant_index(&stored.variant)
            .map(|variant| FirstExposure {
                variant,
                at_ms: stored.at_ms,
            }))
    }

    /// Makes `first` the unit's pending first exposure unless one is
    /// pending already; then returns that one (`Err`), so two requests for
    /// one unit in flight together agree. The [`Claim`] releases it.
    pub fn claim(
        self: &Arc<Self>,
        unit: &str,
        first: FirstExposure,
    ) -> std::result::Result<Claim, FirstExposure> {
        match self.pending.entry(unit.into()) {
            Entry::Occupied(e) => Err(FirstExposure {
                variant: usize::from(e.get().0),
                at_ms: e.get().1,
            }),
            Entry::Vacant(e) => {
                e.insert((first.variant as u8, first.at_ms));
                Ok(Claim {
                    table: Arc::clone(self),
                    unit: unit.into(),
                })
            }
        }
    }

    /// First exposures pending now.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

impl std::fmt::Debug for StickyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StickyTable")
            .field("pending", &self.pending.len())
            .field("diverged", &self.diverged())
            .finish_non_exhaustive()
    }
}

/// A pending first exposure, travelling with its exposure event to the
/// writer. Dropping it (after the commit, or when the event is refused)
/// releases the entry: committed, the store answers for it; refused, it
/// never happened.
#[derive(Debug)]
pub struct Claim {
    table: Arc<StickyTable>,
    unit: Box<str>,
}

impl Claim {
    /// The unit whose first exposure this holds.
    pub fn unit(&self) -> &str {
        &self.unit
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.table.pending.remove(&self.unit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StickyAssignment;
    use crate::storage::Commit;

    #[test]
    fn a_pending_first_exposure_wins_until_released_then_the_store_answers() {
        let (_dir, store) = Store::temporary();
        let experiment = super::super::testing::running("e");
        let table = Arc::new(StickyTable::new(store.clone(), false));
        let first = FirstExposure {
            variant: 1,
            at_ms: 10,
        };
        let claim = table.claim("alice", first).unwrap();
        let later = FirstExposure {
            variant: 0,
            at_ms: 20,
        };
        assert_eq!(table.claim("alice", later).unwrap_err(), first);
        assert_eq!(table.get("alice", &experiment).unwrap(), Some(first));

        store
            .commit(&Commit {
                sticky: &[StickyAssignment {
                    experiment: experiment.key.clone(),
                    unit: "alice".into(),
                    variant: "treatment".into(),
                    first_exposed_ms: 10,
                    diverges: false,
                }],
                next_seq: 1,
                ..Commit::default()
            })
            .unwrap();
        drop(claim);
        assert_eq!(table.pending(), 0, "released");
        assert_eq!(table.get("alice", &experiment).unwrap(), Some(first));
        assert_eq!(table.get("bob", &experiment).unwrap(), None);
    }
}
