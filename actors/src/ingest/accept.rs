//! Accepting client events: each one checked on its own, then attributed
//! against one snapshot per experiment for the whole request. All or
//! none: any failure refuses the request and leaves no trace.

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};
use time::OffsetDateTime;

use super::aliases::Resolver;
use crate::domain::{Event, EventId, EventIn, EventLimits, EventType, ExperimentKey, Status};
use crate::experiments::actor::Slot;
use crate::experiments::assignment::{Compiled, Reason};
use crate::experiments::exposure::FirstExposures;
use crate::experiments::registry::Entry;
use crate::{Error, Result};

/// Checks and attributes `inputs`. Exposures among them establish first
/// exposures (remembered in `firsts`, to be stored with the events); an
/// omitted variant is derived from the unit's assignment, and an explicit
/// one that differs from it is marked as a mismatch. A refusal names the
/// event: [`Error::InvalidEvent`].
pub(super) fn attribute(
    inputs: Vec<EventIn>,
    entries: &BTreeMap<ExperimentKey, Entry>,
    firsts: &mut FirstExposures,
    resolver: &mut Resolver<'_>,
    limits: &EventLimits,
    now: OffsetDateTime,
) -> Result<Vec<Event>> {
    let mut events = Vec::with_capacity(inputs.len());
    // (experiment, its snapshot, variant, index of the exposure event,
    // whether it differs from the hash) per exposure that may be a first.
    let mut exposures: Vec<(&Entry, Arc<Compiled>, usize, usize, bool)> = Vec::new();
    // The variant of each unit's first exposure in this batch, by
    // experiment (looked up by `&str`: no allocation per event).
    let mut exposed_in_batch: HashMap<*const Slot, HashMap<Box<str>, usize>> = HashMap::new();
    // One snapshot per experiment for the whole request, so a change
    // published meanwhile cannot make two events disagree on variants.
    let mut snapshots: HashMap<*const Slot, Arc<Compiled>> = HashMap::new();
    for (i, input) in inputs.into_iter().enumerate() {
        let at = |e: Error| Error::in_event(i, e);
        let mut event = input
            .check(now, limits, || EventId::Uuid(crate::domain::uuid_v7()))
            .map_err(at)?;
        // A linked id's events are its unit's (`ingest/aliases.rs`).
        resolver.resolve(&mut event.unit_id).map_err(at)?;
        let Some(key) = &event.experiment else {
            if event.variant.is_some() {
                return Err(at(Error::invalid(
                    "variant",
                    "a variant needs its experiment",
                )));
            }
            events.push(event);
            continue;
        };
        let (key, entry) = entries.get_key_value(key).ok_or_else(|| {
            at(Error::invalid(
                "experiment",
                format!("experiment '{key}' not found"),
            ))
        })?;
        let compiled = Arc::clone(
            snapshots
                .entry(Arc::as_ptr(&entry.slot))
                .or_insert_with(|| entry.slot.snapshot()),
        );
        let experiment = compiled.experiment();
        // Only a running experiment has exposures: one reported for a
        // draft, paused, completed or archived experiment would make its
        // unit count (and stick) outside the test.
        if event.kind == EventType::Exposure && experiment.status != Status::Running {
            return Err(at(Error::invalid(
                "experiment",
                format!(
                    "experiment '{key}' is {}: only a running experiment has exposures",
                    experiment.status.as_str()
                ),
            )));
        }
        // A first exposure earlier in this batch is not in the sticky table
        // yet, but already decides the variant.
        let earlier = exposed_in_batch
            .get(&Arc::as_ptr(&entry.slot))
            .and_then(|units| units.get(&*event.unit_id))
            .copied();
        let diverged = entry.slot.sticky.diverged() || earlier.is_some();
        let decided = compiled
            .decide(&event.unit_id, diverged, || match earlier {
                Some(variant) => Ok(Some(variant)),
                None => Ok(entry
                    .slot
                    .sticky
                    .get(&event.unit_id, experiment)?
                    .map(|f| f.variant)),
            })
            .map_err(at)?;
        let assigned = decided.in_experiment.then_some(decided.variant);
        let variant = match &event.variant {
            Some(v) => {
                let index = experiment.variant_index(v.as_str()).ok_or_else(|| {
                    at(Error::invalid(
                        "variant",
                        format!("'{v}' is not a variant of '{key}'"),
                    ))
                })?;
                event.assignment_mismatch = assigned.is_some_and(|a| a != index);
                event.variant = Some(experiment.variants[index].key.clone());
                Some(index)
            }
            None => {
                event.variant = assigned.map(|a| experiment.variants[a].key.clone());
                assigned
            }
        };
        if let (EventType::Exposure, Some(variant)) = (&event.kind, variant) {
            // A unit with a first exposure keeps it; any other becomes one,
            // and one the hash would not have given diverges.
            if decided.reason != Reason::Sticky {
                let diverges = decided.reason != Reason::Hashed || decided.variant != variant;
                exposures.push((entry, Arc::clone(&compiled), variant, i, diverges));
            }
            exposed_in_batch
                .entry(Arc::as_ptr(&entry.slot))
                .or_default()
                .entry(event.unit_id.clone())
                .or_insert(variant);
        }
        // The registry's keys: the event shares them instead of holding
        // its own copies.
        event.experiment = Some(key.clone());
        events.push(event);
    }
    for (entry, compiled, variant, i, diverges) in exposures {
        let event = &events[i];
        // One claimed by a request in flight stands.
        let _ = firsts.remember(
            &entry.slot,
            compiled.experiment(),
            &event.unit_id,
            variant,
            event.timestamp_ms,
            diverges,
        );
    }
    Ok(events)
}
