//! The holdouts service: every holdout, read at start and swapped whole on
//! a change (rare), so an assignment reads them without a lock.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::clock::Clock;
use crate::domain::{AuditEntry, Holdout, HoldoutIn, Principal, ResourceKind};
use crate::storage::{blocking, Store};
use crate::{Error, Result};

/// Most holdouts a project may have: each costs every covered assignment
/// a hash.
pub const MAX_HOLDOUTS: usize = 20;

/// Every holdout of one project.
pub struct Holdouts {
    store: Store,
    clock: Arc<dyn Clock>,
    all: ArcSwap<Vec<Arc<Holdout>>>,
    /// Cluster mode, where holdouts are not built (each node's store
    /// would hold its own).
    replicated: bool,
    /// One change at a time (creates and ends are rare).
    writes: tokio::sync::Mutex<()>,
}

impl Holdouts {
    /// The holdouts `store` holds; `replicated` in cluster mode.
    pub fn load(store: Store, clock: Arc<dyn Clock>, replicated: bool) -> Result<Self> {
        let all = store.holdouts()?.into_iter().map(Arc::new).collect();
        Ok(Self {
            store,
            clock,
            replicated,
            all: ArcSwap::from_pointee(all),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// Every holdout, in key order.
    pub fn all(&self) -> Arc<Vec<Arc<Holdout>>> {
        self.all.load_full()
    }

    /// One holdout.
    pub fn get(&self, key: &str) -> Result<Arc<Holdout>> {
        self.all
            .load()
            .iter()
            .find(|h| h.key.as_str() == key)
            .cloned()
            .ok_or_else(|| Error::HoldoutNotFound(key.to_owned()))
    }

    /// Whether `holdout` holds `unit` out: its bucket for the holdout's
    /// salt is below the fraction.
    pub fn holds(holdout: &Holdout, unit: &str) -> bool {
        super::assignment::bucket(&holdout.salt, unit) < holdout.fraction
    }

    /// Creates a holdout on behalf of `by`; `taken` says whether an
    /// experiment holds the key (holdouts and experiments share keys:
    /// a holdout is measured as an experiment of its own).
    pub async fn create(
        &self,
        input: HoldoutIn,
        by: &Principal,
        taken: impl Fn(&str) -> bool,
    ) -> Result<Arc<Holdout>> {
        if self.replicated {
            return Err(Error::Unsupported(
                "holdouts are not built for cluster mode: each node would hold its own",
            ));
        }
        let _one = self.writes.lock().await;
        let holdout = Holdout::create(input, self.clock.now())?;
        let key = holdout.key.as_str();
        if taken(key) || self.get(key).is_ok() {
            return Err(Error::ExperimentExists(key.to_owned()));
        }
        if self.all.load().len() >= MAX_HOLDOUTS {
            return Err(Error::invalid(
                "key",
                format!("a project has at most {MAX_HOLDOUTS} holdouts"),
            ));
        }
        self.write(holdout, by, "holdout.created", None).await
    }

    /// Ends a holdout: its units are no longer held out; it and its
    /// results stay readable.
    pub async fn end(&self, key: &str, by: &Principal) -> Result<Arc<Holdout>> {
        let _one = self.writes.lock().await;
        let before = self.get(key)?;
        if before.ended_at.is_some() {
            return Ok(before);
        }
        let mut ended = (*before).clone();
        ended.ended_at = Some(self.clock.now());
        self.write(ended, by, "holdout.ended", Some(&before)).await
    }

    /// Stores `holdout` with its audit entry, then publishes it.
    async fn write(
        &self,
        holdout: Holdout,
        by: &Principal,
        action: &str,
        before: Option<&Holdout>,
    ) -> Result<Arc<Holdout>> {
        let audit = AuditEntry::of_change(
            by,
            self.clock.now(),
            action,
            ResourceKind::Holdout,
            holdout.key.as_str(),
            before,
            Some(&holdout),
        );
        let (store, stored) = (self.store.clone(), holdout.clone());
        blocking(move || store.put_holdout(&stored, Some(&audit))).await?;
        let holdout = Arc::new(holdout);
        let mut all: Vec<Arc<Holdout>> = self
            .all
            .load()
            .iter()
            .filter(|h| h.key != holdout.key)
            .cloned()
            .collect();
        all.push(Arc::clone(&holdout));
        all.sort_by(|a, b| a.key.cmp(&b.key));
        self.all.store(Arc::new(all));
        Ok(holdout)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;

    #[test]
    fn a_holdout_holds_its_fraction_of_units_by_its_own_hash() {
        let input = serde_json::from_value(json!({"key": "q4", "name": "Q4", "fraction": 0.1}));
        let h = Holdout::create(input.unwrap(), OffsetDateTime::UNIX_EPOCH).unwrap();
        let held = (0..20_000)
            .filter(|i| Holdouts::holds(&h, &format!("u{i}")))
            .count();
        assert!((1800..2200).contains(&held), "{held}");
        // Its own salt: independent of an experiment keyed alike.
        let same_as_experiment = (0..20_000)
            .filter(|i| {
                let unit = format!("u{i}");
                Holdouts::holds(&h, &unit) == (super::super::assignment::bucket("q4", &unit) < 0.1)
            })
            .count();
        assert!(same_as_experiment < 19_000, "{same_as_experiment}");
    }
}
