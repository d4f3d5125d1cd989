//! Identity stitching: `POST /v1/aliases` links an id a unit was known by
//! (an anonymous visitor's) to the unit it signed in as.
//!
//! How a link is made, so that nothing is counted twice or lost:
//!
//! 1. The id's partition, after every event queued for the id before the
//!    link, takes the id's state (its exposures and running sums) out of
//!    its share of the aggregates and writes, in one WriteBatch, the link,
//!    the id's now empty state and the state on its way (a *transfer*).
//! 2. It sends the state on to the unit's partition, which folds it into
//!    the unit's by the rule of `domain/alias.rs` (the earlier first
//!    exposure wins; everything counts there once), adds it to its share,
//!    takes the id's first exposures where they win, and deletes the
//!    transfer, in one WriteBatch. A transfer still stored at start (the
//!    server stopped in between) is sent on again.
//! 3. From the link's commit on, requests resolve the id to the unit
//!    (assignments, and events before they are queued), and a writer that
//!    finds events of a linked id queued before it knew sends them on to
//!    the unit's partition.
//!
//! Links are made one at a time per id and per unit ([`Busy`]), so the
//! checks below cannot race: an id links to one unit, a unit that ids
//! link to links nowhere itself (no chains), and a unit has at most
//! `limits.max_links_per_unit` ids.

use std::time::Duration;

use dashmap::DashSet;
use serde::Serialize;

use super::Intake;
use crate::domain::{unix_ms, Alias, MovedExposure, Taken};
use crate::storage::{blocking, Store};
use crate::{Error, Result};

/// How long a link waits for another link of the same id or unit to
/// finish before it is refused.
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// A unit's identity: what it links to and what links to it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Identity {
    /// The id asked about.
    pub unit_id: String,
    /// The unit this id links to, if it was linked to one.
    pub links_to: Option<String>,
    /// The ids linked to this unit, in id order.
    pub linked: Vec<LinkedId>,
}

/// An id linked to a unit.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LinkedId {
    /// The id.
    pub id: String,
    /// When it was linked.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub linked_at: time::OffsetDateTime,
}

/// Ids and units with a link being made.
#[derive(Debug, Default)]
pub(super) struct Busy(DashSet<Box<str>>);

/// Holds ids in [`Busy`] until dropped.
struct Holding<'a> {
    busy: &'a Busy,
    ids: Vec<Box<str>>,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            self.busy.0.remove(id);
        }
    }
}

impl Busy {
    /// Takes every one of `ids`, or none and `false` when one is taken.
    fn take(&self, ids: &[&str]) -> Option<Holding<'_>> {
        let mut held = Holding {
            busy: self,
            ids: Vec::with_capacity(ids.len()),
        };
        for id in ids {
            if !self.0.insert((*id).into()) {
                return None;
            }
            held.ids.push((*id).into());
        }
        Some(held)
    }

    /// [`Busy::take`], waiting up to [`BUSY_WAIT`] for other links of the
    /// same ids to finish.
    async fn wait(&self, ids: &[&str]) -> Result<Holding<'_>> {
        let deadline = tokio::time::Instant::now() + BUSY_WAIT;
        loop {
            if let Some(held) = self.take(ids) {
                return Ok(held);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::LinkConflict(
                    "another link of this id or unit is being made; retry".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Intake {
    /// Links `from` to `to` (the unit `to` links to, if it was linked
    /// itself). Answers the link and whether it is new: linking again what
    /// is linked already answers the link as it stands.
    pub async fn link(&self, from: &str, to: &str) -> Result<(Alias, bool)> {
        if self.publisher.is_some() {
            return Err(Error::Unsupported(
                "identity stitching is not available in cluster mode yet",
            ));
        }
        if from == to {
            return Err(Error::invalid("to", "an id cannot be linked to itself"));
        }
        let (store, asked) = (self.store.clone(), to.to_owned());
        let unit: Box<str> =
            blocking(move || Ok(store.canonical_unit(&asked)?.unwrap_or(asked.into()))).await?;
        if *unit == *from {
            // `to` is an id linked to `from` already: the other way round.
            return Err(Error::LinkConflict(format!(
                "'{to}' is linked to '{from}' already"
            )));
        }
        let to = unit;
        let _held = self.busy.wait(&[from, &to]).await?;
        let store = self.store.clone();
        let (from_owned, to_owned) = (Box::<str>::from(from), to.clone());
        let max = self.max_links_per_unit;
        let standing = blocking(move || {
            if let Some(linked) = store.canonical_unit(&from_owned)? {
                if linked == to_owned {
                    let when = store.linked_ids(&to_owned, usize::MAX)?;
                    let at = when.iter().find(|(id, _)| **id == *from_owned);
                    return Ok(Some(at.map_or(0, |(_, ms)| *ms)));
                }
                return Err(Error::LinkConflict(format!(
                    "'{from_owned}' is linked to '{linked}' already"
                )));
            }
            if !store.linked_ids(&from_owned, 1)?.is_empty() {
                return Err(Error::LinkConflict(format!(
                    "ids are linked to '{from_owned}': it cannot link to another unit"
                )));
            }
            if store.canonical_unit(&to_owned)?.is_some() {
                return Err(Error::LinkConflict(format!(
                    "'{to_owned}' was linked to another unit meanwhile; retry"
                )));
            }
            if store.linked_ids(&to_owned, max)?.len() >= max {
                return Err(Error::LinkConflict(format!(
                    "'{to_owned}' has {max} linked ids, the most limits.max_links_per_unit allows"
                )));
            }
            Ok(None)
        })
        .await?;
        if let Some(ms) = standing {
            let alias = Alias {
                from: from.to_owned(),
                to: to.to_string(),
                linked_at: at(ms),
                moved: Vec::new(),
            };
            return Ok((alias, false));
        }
        // From now on every writer and request looks ids up.
        self.store.links_exist();
        let now = self.clock.now();
        let answer = self.mailbox.link(from, &to, unix_ms(now)).await?;
        let taken = answer.await.map_err(|_| Error::Unavailable)??;
        self.diverge(&taken);
        let alias = Alias {
            from: from.to_owned(),
            to: to.to_string(),
            linked_at: now,
            moved: taken
                .into_iter()
                .map(|t| MovedExposure {
                    experiment: t.experiment.to_string(),
                    variant: t.variant.to_string(),
                    first_exposed_at: at(t.at_ms),
                })
                .collect(),
        };
        Ok((alias, true))
    }

    /// What `unit` links to and the ids linked to it (at most
    /// `limits.max_links_per_unit`).
    pub async fn identity(&self, unit: &str) -> Result<Identity> {
        let store = self.store.clone();
        let (unit, max) = (unit.to_owned(), self.max_links_per_unit);
        blocking(move || {
            let links_to = store.canonical_unit(&unit)?.map(String::from);
            let linked = store
                .linked_ids(&unit, max)?
                .into_iter()
                .map(|(id, ms)| LinkedId {
                    id,
                    linked_at: at(ms),
                })
                .collect();
            Ok(Identity {
                unit_id: unit,
                links_to,
                linked,
            })
        })
        .await
    }

    /// The experiments where the unit took a linked id's first exposure
    /// look their units up from now on: the variant need not be the one
    /// the hash gives the unit. The store marked them so with the
    /// exposures, for the next start.
    fn diverge(&self, taken: &[Taken]) {
        let registry = self.registry.load();
        for t in taken {
            if let Some(entry) = registry.get(&*t.experiment) {
                entry.slot.sticky.diverge();
            }
        }
    }
}

fn at(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Resolves a request's unit ids: a linked id becomes the unit it links
/// to. One point read per distinct id, and none until some id was ever
/// linked.
pub(super) struct Resolver<'a> {
    store: &'a Store,
    seen: Vec<(Box<str>, Option<Box<str>>)>,
}

impl<'a> Resolver<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Self {
            store,
            seen: Vec::new(),
        }
    }

    /// Replaces `id` with the unit it links to, if it links to one.
    pub(super) fn resolve(&mut self, id: &mut Box<str>) -> Result<()> {
        if !self.store.has_links() {
            return Ok(());
        }
        let to = match self.seen.iter().find(|(seen, _)| *seen == *id) {
            Some((_, to)) => to.clone(),
            None => {
                let to = self.store.canonical_unit(id)?;
                self.seen.push((id.clone(), to.clone()));
                to
            }
        };
        if let Some(to) = to {
            *id = to;
        }
        Ok(())
    }
}
