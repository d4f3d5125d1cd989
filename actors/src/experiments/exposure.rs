//! Exposure: the one place an assignment decision becomes sticky and
//! becomes an exposure event.
//!
//! A unit's first exposure to an experiment is remembered in the
//! experiment's [`StickyTable`](super::sticky::StickyTable) at once (so
//! the next request already sees it) and travels to the store with the
//! exposure event that caused it, in the same committed batch. If the
//! request is refused before it is queued (a full mailbox, a failed
//! store), every first exposure it remembered is forgotten again, so what
//! the hot path sees never runs ahead of what will be stored.

use super::actor::Slot;
use super::assignment::Reason;
use super::sticky::FirstExposure;
use super::Assignment;
use crate::domain::{Event, EventType, Experiment, StickyAssignment};
use crate::Result;

/// Where exposures are queued: the ingest mailbox in the server.
pub trait ExposureQueue: Send + Sync {
    /// Queues `events` with the first exposures they establish, or refuses
    /// at once (full mailbox, failed store) without queueing any of them.
    fn queue(&self, events: Vec<Event>, sticky: Vec<StickyAssignment>) -> Result<()>;
}

/// First exposures remembered while one request is handled: they become
/// records stored with the request's events, or are forgotten again if
/// the request is refused.
#[derive(Default)]
pub struct FirstExposures<'a> {
    remembered: Vec<(&'a Slot, Box<str>)>,
    records: Vec<StickyAssignment>,
}

impl<'a> FirstExposures<'a> {
    /// Makes `variant` the unit's first exposure to the experiment in
    /// `slot`, at `at_ms`. If one stands already (an earlier request, or
    /// one racing this one), returns it and remembers nothing.
    pub fn remember(
        &mut self,
        slot: &'a Slot,
        experiment: &Experiment,
        unit: &str,
        variant: usize,
        at_ms: i64,
    ) -> std::result::Result<(), FirstExposure> {
        slot.sticky
            .insert_first(unit, FirstExposure { variant, at_ms })?;
        self.remembered.push((slot, unit.into()));
        self.records.push(StickyAssignment {
            experiment: experiment.key.clone(),
            unit: unit.into(),
            variant: experiment.variants[variant].key.as_str().into(),
            first_exposed_ms: at_ms,
        });
        Ok(())
    }

    /// Hands the records to `queue`. If it refuses, every first exposure
    /// remembered here is forgotten, so a later request makes its own.
    pub fn queue_with<T>(
        self,
        queue: impl FnOnce(Vec<StickyAssignment>) -> Result<T>,
    ) -> Result<T> {
        let Self {
            remembered,
            records,
        } = self;
        queue(records).inspect_err(|_| {
            for (slot, unit) in &remembered {
                slot.sticky.forget(unit);
            }
        })
    }
}

/// Queues an exposure for every assignment that puts the unit in its
/// experiment. A `hashed` answer becomes the unit's first exposure; if
/// another request made one first, the answer becomes that variant,
/// `sticky`. If the queue refuses, nothing is remembered.
pub(super) fn expose(
    slots: &[&Slot],
    assignments: &mut [Assignment],
    unit: &str,
    now_ms: i64,
    queue: &dyn ExposureQueue,
) -> Result<()> {
    let mut firsts = FirstExposures::default();
    let mut events = Vec::new();
    for (slot, a) in slots.iter().zip(assignments.iter_mut()) {
        if !a.decision.in_experiment {
            continue;
        }
        let experiment = a.compiled.experiment();
        if a.decision.reason == Reason::Hashed {
            if let Err(standing) =
                firsts.remember(slot, experiment, unit, a.decision.variant, now_ms)
            {
                a.decision.variant = standing.variant;
                a.decision.reason = Reason::Sticky;
            }
        }
        events.push(event(experiment, a.decision.variant, unit, now_ms));
    }
    if events.is_empty() {
        return Ok(());
    }
    firsts.queue_with(|sticky| queue.queue(events, sticky))
}

/// The exposure event an assignment logs.
fn event(experiment: &Experiment, variant: usize, unit: &str, now_ms: i64) -> Event {
    Event {
        seq: 0,
        event_id: uuid::Uuid::now_v7().to_string().into(),
        kind: EventType::Exposure,
        unit_id: unit.into(),
        experiment: Some(experiment.key.clone()),
        variant: Some(experiment.variants[variant].key.clone()),
        value: None,
        timestamp_ms: now_ms,
        received_ms: now_ms,
        session_id: None,
        properties: None,
        assignment_mismatch: false,
        client_id: false,
    }
}
