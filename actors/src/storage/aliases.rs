//! Identity stitching on disk ([`Cf::Aliases`]): which unit an id links
//! to, the ids linked to a unit, and links whose state is still on its way
//! from the id's ingest partition to the unit's.
//!
//! Links grow with the users a client signs in, so none is held in memory:
//! an id is resolved by a point read, and only once some id was ever
//! linked ([`Store::has_links`]); a store without links pays nothing.

use std::sync::atomic::Ordering;

use rocksdb::{IteratorMode, WriteBatch};

use super::units::{decode_unit, encode_unit, first_exposure_value};
use super::{keys, Cf, Store, VALUE_V1};
use crate::domain::{StickyAssignment, Transfer};
use crate::{Error, Result};

impl Store {
    /// Whether any id was ever linked (read at open, set before the first
    /// link is queued): until then nothing is looked up.
    pub fn has_links(&self) -> bool {
        self.linked.load(Ordering::Acquire)
    }

    /// Records that links exist, before the first one is queued, so that
    /// every reader resolves ids from then on.
    pub fn links_exist(&self) {
        self.linked.store(true, Ordering::Release);
    }

    /// Whether the store holds any link, made or in the making: read once
    /// at open.
    pub(super) fn any_link(&self) -> Result<bool> {
        let mut iter = self
            .db
            .iterator_cf(self.cf(Cf::Aliases), IteratorMode::Start);
        Ok(iter.next().transpose()?.is_some())
    }

    /// The unit each of `ids` links to or is being linked to, in order
    /// (`None`: neither): one batched read, and none at all while no id
    /// was ever linked. Where an ingest writer sends a linked id's events,
    /// so that they reach the unit's partition after the id's state (sent
    /// before them).
    pub fn linked_or_linking(&self, ids: &[&str]) -> Result<Vec<Option<Box<str>>>> {
        if !self.has_links() {
            return Ok(vec![None; ids.len()]);
        }
        let keys: Vec<Vec<u8>> = (ids.iter())
            .flat_map(|id| [keys::alias(id), keys::transfer(id)])
            .collect();
        let found: Vec<Option<Vec<u8>>> = self
            .db
            .batched_multi_get_cf(self.cf(Cf::Aliases), &keys, false)
            .into_iter()
            .map(|found| Ok(found?.map(|v| v.to_vec())))
            .collect::<Result<_>>()?;
        found
            .chunks(2)
            .map(|pair| match pair {
                [Some(alias), _] => decode_alias(alias).map(Some),
                [None, Some(transfer)] => decode_transfer(transfer)
                    .map(|(to, _, _)| Some(to))
                    .ok_or_else(|| Error::Corrupt {
                        cf: Cf::Aliases.name(),
                        reason: "undecodable transfer".into(),
                    }),
                _ => Ok(None),
            })
            .collect()
    }

    /// The unit `id` links to, if it links to one: one point read, and
    /// none while no id was ever linked. A link in the making does not
    /// count yet: its unit's partition has not folded the id's state in.
    pub fn canonical_unit(&self, id: &str) -> Result<Option<Box<str>>> {
        if !self.has_links() {
            return Ok(None);
        }
        self.db
            .get_pinned_cf(self.cf(Cf::Aliases), keys::alias(id))?
            .map(|v| decode_alias(&v))
            .transpose()
    }

    /// The ids linked to `unit` and when, in id order: at most `limit`.
    pub fn linked_ids(&self, unit: &str, limit: usize) -> Result<Vec<(String, i64)>> {
        let prefix = keys::linked_prefix(unit);
        let iter = self.db.iterator_cf(
            self.cf(Cf::Aliases),
            IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item?;
            let Some(id) = key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if out.len() == limit {
                break;
            }
            let ms = value
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map_or(0, i64::from_be_bytes);
            out.push((String::from_utf8_lossy(id).into_owned(), ms));
        }
        Ok(out)
    }

    /// Every link whose state has not reached its unit yet (the server
    /// stopped in between): sent on again at start.
    pub fn pending_transfers(&self) -> Result<Vec<Transfer>> {
        let iter = self.db.iterator_cf(
            self.cf(Cf::Aliases),
            IteratorMode::From(b"t", rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item?;
            let Some(from) = key.strip_prefix(b"t") else {
                break;
            };
            let from = std::str::from_utf8(from).ok();
            match from.zip(decode_transfer(&value)) {
                Some((from, (to, linked_ms, exposures))) => out.push(Transfer {
                    from: from.into(),
                    to,
                    linked_ms,
                    exposures,
                }),
                None => {
                    return Err(Error::Corrupt {
                        cf: Cf::Aliases.name(),
                        reason: format!("undecodable transfer {key:?}"),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Adds a link in the making to `batch`, written by the linked id's
    /// partition with the state it took out of its share: the state waits
    /// for the unit's partition, and until then the id's events go there
    /// after it ([`Store::linked_or_linking`]).
    pub(crate) fn write_transfer(&self, batch: &mut WriteBatch, transfer: &Transfer) {
        let to = &*transfer.to;
        let mut state = vec![VALUE_V1];
        state.extend_from_slice(&transfer.linked_ms.to_be_bytes());
        state.extend_from_slice(&(to.len() as u16).to_be_bytes());
        state.extend_from_slice(to.as_bytes());
        encode_unit(&transfer.exposures, &mut state);
        batch.put_cf(self.cf(Cf::Aliases), keys::transfer(&transfer.from), &state);
    }

    /// Adds to `batch`, written by the unit's partition as it folds a
    /// linked id's state in: the link (from now on requests resolve the id
    /// to the unit: their events come after the state), its listing under
    /// the unit, the end of the transfer, and the first exposures the unit
    /// takes from the id (a put, not the keep-first merge: the earlier
    /// exposure wins, whichever was written first).
    pub(crate) fn write_arrival(&self, batch: &mut WriteBatch, arrived: &Arrived) {
        let cf = self.cf(Cf::Aliases);
        let (from, to) = (&*arrived.from, &*arrived.to);
        let mut value = vec![VALUE_V1];
        value.extend_from_slice(to.as_bytes());
        batch.put_cf(cf, keys::alias(from), &value);
        let mut when = vec![VALUE_V1];
        when.extend_from_slice(&arrived.linked_ms.to_be_bytes());
        batch.put_cf(cf, keys::linked(to, from), &when);
        batch.delete_cf(cf, keys::transfer(from));
        for r in &arrived.taken {
            batch.put_cf(
                self.cf(Cf::Sticky),
                keys::unit(r.experiment.as_str(), &r.unit),
                first_exposure_value(r),
            );
            self.mark_divergent(batch, r);
        }
    }
}

/// A linked id's state folded into its unit's: what the unit's partition
/// writes (see [`Store::write_arrival`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Arrived {
    /// The linked id.
    pub from: Box<str>,
    /// Its unit.
    pub to: Box<str>,
    /// When it was linked.
    pub linked_ms: i64,
    /// The first exposures the unit took from the id.
    pub taken: Vec<StickyAssignment>,
}

fn decode_alias(value: &[u8]) -> Result<Box<str>> {
    match value.split_first() {
        Some((&VALUE_V1, to)) => std::str::from_utf8(to).map(Into::into).ok(),
        _ => None,
    }
    .ok_or_else(|| Error::Corrupt {
        cf: Cf::Aliases.name(),
        reason: "undecodable link".into(),
    })
}

fn decode_transfer(value: &[u8]) -> Option<(Box<str>, i64, Vec<crate::domain::Exposure>)> {
    let (&VALUE_V1, rest) = value.split_first()? else {
        return None;
    };
    let (ms, rest) = rest.split_at_checked(8)?;
    let linked_ms = i64::from_be_bytes(ms.try_into().ok()?);
    let (len, rest) = rest.split_at_checked(2)?;
    let len = usize::from(u16::from_be_bytes(len.try_into().ok()?));
    let (to, state) = rest.split_at_checked(len)?;
    Some((
        std::str::from_utf8(to).ok()?.into(),
        linked_ms,
        decode_unit(state)?,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{Exposure, UnitMeasure};
    use crate::storage::StoreOptions;

    #[test]
    fn a_link_resolves_lists_and_waits_until_its_state_arrives() {
        let (dir, store) = Store::temporary();
        let options = || StoreOptions {
            dedup_window_ms: 1000,
            retention_ms: None,
            cache_bytes: 8 << 20,
            audit_retention_ms: 1000,
        };
        assert!(!store.has_links());
        assert_eq!(store.canonical_unit("anon").expect("read"), None);
        let transfer = Transfer {
            from: "anon".into(),
            to: "alice".into(),
            linked_ms: 1_000,
            exposures: vec![Exposure {
                experiment: "exp".into(),
                variant: "b".into(),
                exposed_ms: 7,
                measures: vec![UnitMeasure {
                    key: Arc::from("click"),
                    events: 2,
                    sum: 2.0,
                }],
            }],
        };
        store.links_exist();
        let mut batch = WriteBatch::default();
        store.write_transfer(&mut batch, &transfer);
        store.write(batch, true).expect("write");

        let ids = ["anon", "alice", "bob"];
        let nothing: Vec<Option<Box<str>>> = vec![None, None, None];
        let made = |ids: &[&str]| -> Vec<Option<Box<str>>> {
            (ids.iter())
                .map(|id| store.canonical_unit(id).expect("read"))
                .collect()
        };
        assert_eq!(made(&ids), nothing, "in the making");
        let linking = store.linked_or_linking(&ids).expect("read");
        assert_eq!(linking, vec![Some("alice".into()), None, None]);
        assert_eq!(store.pending_transfers().expect("pending"), vec![transfer]);

        let taken = StickyAssignment {
            experiment: "exp".try_into().expect("key"),
            unit: "alice".into(),
            variant: "b".into(),
            first_exposed_ms: 7,
            diverges: true,
        };
        let arrived = Arrived {
            from: "anon".into(),
            to: "alice".into(),
            linked_ms: 1_000,
            taken: vec![taken],
        };
        let mut batch = WriteBatch::default();
        store.write_arrival(&mut batch, &arrived);
        store.write(batch, true).expect("write");
        assert!(store.pending_transfers().expect("pending").is_empty());
        let found = made(&ids);
        assert_eq!(found, vec![Some("alice".into()), None, None]);
        assert_eq!(store.linked_or_linking(&ids).expect("read"), found);
        assert_eq!(
            store.linked_ids("alice", 10).expect("list"),
            vec![("anon".to_owned(), 1_000)]
        );
        assert!(store.linked_ids("alic", 10).expect("list").is_empty());
        let first = store.first_exposure("exp", "alice").expect("read");
        assert_eq!(first.map(|f| (f.variant, f.at_ms)), Some(("b".into(), 7)));
        assert_eq!(store.divergent_experiments().expect("read"), vec!["exp"]);
        drop(store);

        let store = Store::open(dir.path(), options()).expect("reopen");
        assert!(store.has_links(), "links are found at open");
    }
}
