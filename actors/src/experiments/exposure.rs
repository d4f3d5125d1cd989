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

#[cfg(test)]
mod tests {
    use super::super::assignment::Reason;
    use super::super::sticky::FirstExposure;
    use super::super::testing::{input, running, RecordingQueue, T0};
    use super::*;
    use crate::domain::Experiment;
    use crate::Error;

    const NOW: i64 = 1_700_000_000_000;

    fn slot(key: &str) -> Slot {
        Slot::new(running(key))
    }

    /// Decides and exposes `unit` in every slot, as one request does.
    fn request(
        slots: &[&Slot],
        unit: &str,
        now_ms: i64,
        queue: &RecordingQueue,
    ) -> (Result<()>, Vec<Assignment>) {
        let mut assignments: Vec<Assignment> =
            slots.iter().map(|s| Assignment::decide(s, unit)).collect();
        let result = expose(slots, &mut assignments, unit, now_ms, queue);
        (result, assignments)
    }

    fn summary(a: &Assignment) -> (usize, Reason) {
        (a.decision.variant, a.decision.reason)
    }

    #[test]
    fn a_hashed_decision_becomes_the_first_exposure_with_one_event_and_one_record() {
        let slot = slot("e");
        let queue = RecordingQueue::default();
        let (result, assignments) = request(&[&slot], "alice", NOW, &queue);
        result.unwrap();
        let [a] = &assignments[..] else { panic!() };
        assert_eq!(a.reason(), Reason::Hashed);
        let variant = a.decision.variant;
        let variant_key = slot.snapshot().experiment().variants[variant].key.clone();

        let queued = queue.queued();
        assert_eq!(queued.len(), 1, "one call for the request");
        let (events, sticky) = &queued[0];
        let [event] = &events[..] else {
            panic!("one exposure event: {events:?}")
        };
        assert_eq!(event.kind, EventType::Exposure);
        assert_eq!(&*event.unit_id, "alice");
        assert_eq!(event.experiment.as_ref().map(|k| k.as_str()), Some("e"));
        assert_eq!(event.variant.as_ref(), Some(&variant_key));
        assert_eq!((event.timestamp_ms, event.received_ms), (NOW, NOW));
        assert_eq!(
            sticky,
            &[StickyAssignment {
                experiment: "e".try_into().unwrap(),
                unit: "alice".into(),
                variant: variant_key.as_str().into(),
                first_exposed_ms: NOW,
            }]
        );
        assert_eq!(
            slot.sticky.get("alice"),
            Some(FirstExposure {
                variant,
                at_ms: NOW
            }),
            "remembered at once, for the next request"
        );
    }

    #[test]
    fn a_second_request_is_served_the_standing_variant_as_sticky_and_stores_nothing_new() {
        let slot = slot("e");
        let queue = RecordingQueue::default();
        let (first, assignments) = request(&[&slot], "alice", NOW, &queue);
        first.unwrap();
        let variant = assignments[0].decision.variant;

        let (second, assignments) = request(&[&slot], "alice", NOW + 1000, &queue);
        second.unwrap();
        assert_eq!(summary(&assignments[0]), (variant, Reason::Sticky));
        let queued = queue.queued();
        assert_eq!(queued.len(), 2);
        let (events, sticky) = &queued[1];
        assert_eq!(events.len(), 1, "every exposure is an event");
        assert_eq!(events[0].timestamp_ms, NOW + 1000);
        assert!(sticky.is_empty(), "no second first exposure: {sticky:?}");
        assert_eq!(slot.sticky.get("alice").map(|f| f.at_ms), Some(NOW));
    }

    /// Two requests for one unit decided before either exposed: the one
    /// that exposes second is served what the first one made sticky.
    #[test]
    fn a_racing_request_takes_the_variant_that_won() {
        let slot = slot("e");
        let queue = RecordingQueue::default();
        let mut assignments = [Assignment::decide(&slot, "alice")];
        assert_eq!(assignments[0].reason(), Reason::Hashed);
        // The winner saw the other variant (weights may differ between
        // snapshots), so the rewrite is visible.
        let standing = FirstExposure {
            variant: 1 - assignments[0].decision.variant,
            at_ms: NOW - 5,
        };
        slot.sticky.insert_first("alice", standing).unwrap();

        expose(&[&slot], &mut assignments, "alice", NOW, &queue).unwrap();
        assert_eq!(summary(&assignments[0]), (standing.variant, Reason::Sticky));
        let queued = queue.queued();
        let (events, sticky) = &queued[0];
        let standing_key = slot.snapshot().experiment().variants[standing.variant]
            .key
            .clone();
        assert_eq!(events[0].variant.as_ref(), Some(&standing_key));
        assert!(sticky.is_empty());
        assert_eq!(slot.sticky.get("alice"), Some(standing), "left as it was");
    }

    #[test]
    fn a_refused_queue_forgets_every_first_exposure_of_the_request_and_only_those() {
        let (a, b, c) = (slot("a"), slot("b"), slot("c"));
        let queue = RecordingQueue::default();
        // An earlier, accepted request made alice sticky in `a`.
        request(&[&a], "alice", NOW - 1000, &queue).0.unwrap();

        queue.refuse(true);
        let (refused, assignments) = request(&[&a, &b, &c], "alice", NOW, &queue);
        assert!(matches!(refused, Err(Error::Overloaded(_))), "{refused:?}");
        assert_eq!(queue.queued().len(), 1, "nothing of the refused request");
        assert_eq!(assignments[0].reason(), Reason::Sticky);
        assert_eq!(b.sticky.get("alice"), None, "forgotten");
        assert_eq!(c.sticky.get("alice"), None, "forgotten");
        assert_eq!(
            a.sticky.get("alice").map(|f| f.at_ms),
            Some(NOW - 1000),
            "the earlier request's first exposure stands"
        );

        // The next request makes its own first exposures.
        queue.refuse(false);
        let (accepted, assignments) = request(&[&b, &c], "alice", NOW + 1, &queue);
        accepted.unwrap();
        assert!(assignments.iter().all(|a| a.reason() == Reason::Hashed));
        let (events, sticky) = queue.queued().pop().unwrap();
        assert_eq!(events.len(), 2);
        let firsts: Vec<_> = sticky
            .iter()
            .map(|s| (s.experiment.as_str(), s.first_exposed_ms))
            .collect();
        assert_eq!(firsts, [("b", NOW + 1), ("c", NOW + 1)]);
    }

    #[test]
    fn units_not_in_the_experiment_produce_no_event_and_no_first_exposure() {
        let draft = Slot::new(Experiment::create(input("d"), T0).unwrap());
        let mut closed = running("closed");
        closed.coverage = 0.0;
        let closed = Slot::new(closed);
        let queue = RecordingQueue::default();

        let (result, assignments) = request(&[&draft, &closed], "alice", NOW, &queue);
        result.unwrap();
        let reasons: Vec<_> = assignments.iter().map(Assignment::reason).collect();
        assert_eq!(reasons, [Reason::NotRunning, Reason::NotInCoverage]);
        assert!(queue.queued().is_empty(), "the queue is not even called");
        assert_eq!(draft.sticky.get("alice"), None);
        assert_eq!(closed.sticky.get("alice"), None);

        // Beside an experiment it is in, only that one is exposed.
        let open = slot("open");
        let (result, _) = request(&[&closed, &open], "alice", NOW, &queue);
        result.unwrap();
        let queued = queue.queued();
        let (events, sticky) = &queued[0];
        let exposed: Vec<_> = events
            .iter()
            .map(|e| e.experiment.as_ref().unwrap().as_str())
            .collect();
        assert_eq!(exposed, ["open"]);
        assert_eq!(sticky.len(), 1);
    }

    /// Forced units are exposed (they take part) but never made sticky:
    /// lifting the override must return them to their hashed variant.
    #[test]
    fn forced_units_are_exposed_but_not_made_sticky() {
        let mut experiment = running("f");
        experiment.forced.insert(
            "qa".to_owned().try_into().unwrap(),
            "treatment".try_into().unwrap(),
        );
        let slot = Slot::new(experiment);
        let queue = RecordingQueue::default();
        let (result, assignments) = request(&[&slot], "qa", NOW, &queue);
        result.unwrap();
        assert_eq!(summary(&assignments[0]), (1, Reason::Forced));
        let queued = queue.queued();
        let (events, sticky) = &queued[0];
        assert_eq!(events.len(), 1);
        assert!(sticky.is_empty());
        assert_eq!(slot.sticky.get("qa"), None);
    }

    #[test]
    fn remember_on_a_unit_that_has_a_first_exposure_returns_the_standing_one() {
        let slot = slot("e");
        let experiment = running("e");
        let mut firsts = FirstExposures::default();
        firsts.remember(&slot, &experiment, "alice", 0, 10).unwrap();
        let standing = firsts
            .remember(&slot, &experiment, "alice", 1, 20)
            .unwrap_err();
        assert_eq!(
            standing,
            FirstExposure {
                variant: 0,
                at_ms: 10
            }
        );
        let records = firsts.queue_with(Ok).unwrap();
        assert_eq!(records.len(), 1, "the loser remembered nothing");
        assert_eq!(
            (&*records[0].variant, records[0].first_exposed_ms),
            ("control", 10)
        );

        // One made by an earlier request stands against a new collector too.
        let mut later = FirstExposures::default();
        assert_eq!(
            later.remember(&slot, &experiment, "alice", 1, 30),
            Err(standing)
        );
        // Refusing it forgets nothing it did not remember.
        later
            .queue_with(|_| Err::<(), _>(Error::Unavailable))
            .unwrap_err();
        assert_eq!(slot.sticky.get("alice"), Some(standing));
    }
}
