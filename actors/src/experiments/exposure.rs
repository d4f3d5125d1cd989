//! Exposure: the one place an assignment decision becomes sticky and
//! becomes an exposure event.
//!
//! A unit's new first exposure to an experiment is claimed at once as
//! pending in the experiment's [`StickyTable`](super::sticky::StickyTable)
//! (so a request for the same unit before the commit already sees it) and
//! travels to the store with the exposure event that caused it, in the
//! same committed batch, where it is kept only if the unit has none yet.
//! The [`Claim`] travels with it and releases the pending entry once the
//! batch is committed, or at once if the request is refused (a full
//! mailbox, a failed store), so what the hot path sees never runs ahead of
//! what will be stored.

use super::actor::Slot;
use super::assignment::{Decision, Reason};
use super::sticky::{Claim, FirstExposure};
use super::Assignment;
use crate::domain::{
    Derivations, Event, EventType, Experiment, ExperimentKey, Holdout, StickyAssignment, VariantKey,
};
use crate::room::Room;
use crate::Result;

/// Where exposures are queued: the ingest mailbox in the server.
pub trait ExposureQueue: Send + Sync {
    /// Queues `events` with the first exposures they may establish, or
    /// refuses at once (full mailbox, failed store) without queueing any
    /// of them.
    fn queue(&self, events: Vec<Event>, firsts: FirstExposures) -> Result<()>;

    /// Where an assignment refused for a full queue waits for room before
    /// it is decided again.
    fn room(&self) -> &Room;

    /// Tells the pipeline an experiment's capped, ratio and CUPED metrics
    /// (after what is queued now): events queued after this are folded
    /// under them. A pipeline that folds elsewhere (cluster mode's
    /// publisher) learns them from `ingest/derived.rs` instead.
    fn respec(&self, _experiment: &str, _derivations: Derivations) {}
}

/// First exposures claimed while one request is handled: records to store
/// with the request's events, and the claims that hold them pending until
/// then. Dropped unqueued, it releases every claim.
#[derive(Debug, Default)]
pub struct FirstExposures {
    records: Vec<StickyAssignment>,
    claims: Vec<Claim>,
}

impl FirstExposures {
    /// Makes `variant` the unit's first exposure to the experiment in
    /// `slot`, at `at_ms`, unless one is pending already (a request racing
    /// this one): then returns that one and claims nothing. `diverges`
    /// says the variant is not the one the hash gives the unit; the
    /// experiment is marked so before anything is queued.
    pub fn remember(
        &mut self,
        slot: &Slot,
        experiment: &Experiment,
        unit: &str,
        variant: usize,
        at_ms: i64,
        diverges: bool,
    ) -> std::result::Result<(), FirstExposure> {
        let claim = slot.sticky.claim(unit, FirstExposure { variant, at_ms })?;
        if diverges {
            slot.sticky.diverge();
        }
        self.claims.push(claim);
        self.records.push(StickyAssignment {
            experiment: experiment.key.clone(),
            unit: unit.into(),
            variant: experiment.variants[variant].key.as_str().into(),
            first_exposed_ms: at_ms,
            diverges,
        });
        Ok(())
    }

    /// The experiments a first exposure here diverges in.
    pub fn diverging(&self) -> impl Iterator<Item = &ExperimentKey> {
        self.records
            .iter()
            .filter(|r| r.diverges)
            .map(|r| &r.experiment)
    }

    /// The records to store, and the claims to release after the commit.
    pub fn into_parts(self) -> (Vec<StickyAssignment>, Vec<Claim>) {
        (self.records, self.claims)
    }
}

/// Queues an exposure for every assignment that puts the unit in its
/// experiment. A `hashed` answer becomes the unit's pending first exposure
/// (kept only if it has none yet); if another request in flight claimed one
/// first, the answer becomes that variant (`sticky` if it differs). If the
/// queue refuses, nothing is remembered.
///
/// `held` are the holdouts the unit met, each exposed as an experiment of
/// its own: to `holdout` when it holds the unit, else to `exposed`.
pub(super) fn expose(
    slots: &[&Slot],
    assignments: &mut [Assignment],
    unit: &str,
    now_ms: i64,
    held: Vec<(ExperimentKey, bool)>,
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
            let claimed =
                firsts.remember(slot, experiment, unit, a.decision.variant, now_ms, false);
            if let Err(standing) = claimed {
                a.decision = Decision::sticky(a.decision, standing.variant);
            }
        }
        events.push(event(experiment, a.decision.variant, unit, now_ms));
    }
    for (holdout, held) in held {
        events.push(event_of(holdout, Holdout::variant(held), unit, now_ms));
    }
    if events.is_empty() {
        return Ok(());
    }
    queue.queue(events, firsts)
}

/// The exposure event an assignment logs.
fn event(experiment: &Experiment, variant: usize, unit: &str, now_ms: i64) -> Event {
    let variant = experiment.variants[variant].key.clone();
    event_of(experiment.key.clone(), variant, unit, now_ms)
}

/// An exposure of `unit` to `variant` of `experiment`, now.
fn event_of(experiment: ExperimentKey, variant: VariantKey, unit: &str, now_ms: i64) -> Event {
    Event {
        seq: 0,
        event_id: crate::domain::EventId::Uuid(crate::domain::uuid_v7()),
        kind: EventType::Exposure,
        unit_id: unit.into(),
        experiment: Some(experiment),
        variant: Some(variant),
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
    use crate::storage::Store;
    use crate::Error;

    const NOW: i64 = 1_700_000_000_000;

    /// Slots over one temporary store.
    struct Slots {
        _dir: tempfile::TempDir,
        store: Store,
    }

    impl Slots {
        fn new() -> Self {
            let (dir, store) = Store::temporary();
            Self { _dir: dir, store }
        }

        fn of(&self, experiment: Experiment) -> Slot {
            Slot::new(experiment, 0, self.store.clone())
        }

        fn running(&self, key: &str) -> Slot {
            self.of(running(key))
        }
    }

    /// Decides and exposes `unit` in every slot, as one request does.
    fn request(
        slots: &[&Slot],
        unit: &str,
        now_ms: i64,
        queue: &RecordingQueue,
    ) -> (Result<()>, Vec<Assignment>) {
        let mut assignments: Vec<Assignment> = slots
            .iter()
            .map(|s| Assignment::decide(s, unit, &crate::experiments::Answered::default()).unwrap())
            .collect();
        let result = expose(slots, &mut assignments, unit, now_ms, Vec::new(), queue);
        (result, assignments)
    }

    fn summary(a: &Assignment) -> (usize, Reason) {
        (a.decision.variant, a.decision.reason)
    }

    fn pending(slot: &Slot, unit: &str) -> Option<FirstExposure> {
        slot.sticky.get(unit, slot.snapshot().experiment()).unwrap()
    }

    #[test]
    fn a_hashed_decision_becomes_a_pending_first_exposure_with_one_event_and_one_record() {
        let slots = Slots::new();
        let slot = slots.running("e");
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
                diverges: false,
            }]
        );
        let first = Some(FirstExposure {
            variant,
            at_ms: NOW,
        });
        assert_eq!(pending(&slot, "alice"), first, "pending at once");
        queue.release();
        assert_eq!(pending(&slot, "alice"), None, "released with the claim");
    }

    #[test]
    fn a_request_while_the_first_is_in_flight_is_served_it_and_claims_nothing() {
        let slots = Slots::new();
        let slot = slots.running("e");
        let queue = RecordingQueue::default();
        let (first, assignments) = request(&[&slot], "alice", NOW, &queue);
        first.unwrap();
        let variant = assignments[0].decision.variant;

        let (second, assignments) = request(&[&slot], "alice", NOW + 1000, &queue);
        second.unwrap();
        assert_eq!(
            summary(&assignments[0]),
            (variant, Reason::Hashed),
            "the hash agrees with the pending first exposure"
        );
        let queued = queue.queued();
        assert_eq!(queued.len(), 2);
        let (events, sticky) = &queued[1];
        assert_eq!(events.len(), 1, "every exposure is an event");
        assert_eq!(events[0].timestamp_ms, NOW + 1000);
        assert!(sticky.is_empty(), "no second first exposure: {sticky:?}");
        assert_eq!(pending(&slot, "alice").map(|f| f.at_ms), Some(NOW));
    }

    /// Two requests for one unit decided before either exposed: the one
    /// that exposes second is served what the first one claimed.
    #[test]
    fn a_racing_request_takes_the_variant_that_won() {
        let slots = Slots::new();
        let slot = slots.running("e");
        let queue = RecordingQueue::default();
        let mut assignments =
            [
                Assignment::decide(&slot, "alice", &crate::experiments::Answered::default())
                    .unwrap(),
            ];
        assert_eq!(assignments[0].reason(), Reason::Hashed);
        // The winner saw the other variant, so the rewrite is visible.
        let standing = FirstExposure {
            variant: 1 - assignments[0].decision.variant,
            at_ms: NOW - 5,
        };
        let _winner = slot.sticky.claim("alice", standing).unwrap();

        expose(&[&slot], &mut assignments, "alice", NOW, Vec::new(), &queue).unwrap();
        assert_eq!(summary(&assignments[0]), (standing.variant, Reason::Sticky));
        let queued = queue.queued();
        let (events, sticky) = &queued[0];
        let standing_key = slot.snapshot().experiment().variants[standing.variant]
            .key
            .clone();
        assert_eq!(events[0].variant.as_ref(), Some(&standing_key));
        assert!(sticky.is_empty());
        assert_eq!(pending(&slot, "alice"), Some(standing), "left as it was");
    }

    #[test]
    fn a_refused_queue_releases_every_claim_of_the_request_and_only_those() {
        let slots = Slots::new();
        let (a, b, c) = (slots.running("a"), slots.running("b"), slots.running("c"));
        let queue = RecordingQueue::default();
        // An earlier request, still in flight, claimed alice in `a`.
        request(&[&a], "alice", NOW - 1000, &queue).0.unwrap();

        queue.refuse(true);
        let (refused, assignments) = request(&[&a, &b, &c], "alice", NOW, &queue);
        assert!(matches!(refused, Err(Error::Overloaded(_))), "{refused:?}");
        assert_eq!(queue.queued().len(), 1, "nothing of the refused request");
        assert_eq!(assignments[0].reason(), Reason::Hashed, "the hash agrees");
        assert_eq!(pending(&b, "alice"), None, "released");
        assert_eq!(pending(&c, "alice"), None, "released");
        assert_eq!(
            pending(&a, "alice").map(|f| f.at_ms),
            Some(NOW - 1000),
            "the earlier request's claim stands"
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
        let slots = Slots::new();
        let draft = slots.of(Experiment::create(input("d"), T0).unwrap());
        let mut closed = running("closed");
        closed.coverage = 0.0;
        closed.peak_coverage = 0.0;
        let closed = slots.of(closed);
        let queue = RecordingQueue::default();

        let (result, assignments) = request(&[&draft, &closed], "alice", NOW, &queue);
        result.unwrap();
        let reasons: Vec<_> = assignments.iter().map(Assignment::reason).collect();
        assert_eq!(reasons, [Reason::NotRunning, Reason::NotInCoverage]);
        assert!(queue.queued().is_empty(), "the queue is not even called");
        assert_eq!(pending(&draft, "alice"), None);
        assert_eq!(pending(&closed, "alice"), None);

        // Beside an experiment it is in, only that one is exposed.
        let open = slots.running("open");
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
        let slots = Slots::new();
        let mut experiment = running("f");
        experiment.forced.insert(
            "qa".to_owned().try_into().unwrap(),
            "treatment".try_into().unwrap(),
        );
        let slot = slots.of(experiment);
        let queue = RecordingQueue::default();
        let (result, assignments) = request(&[&slot], "qa", NOW, &queue);
        result.unwrap();
        assert_eq!(summary(&assignments[0]), (1, Reason::Forced));
        let queued = queue.queued();
        let (events, sticky) = &queued[0];
        assert_eq!(events.len(), 1);
        assert!(sticky.is_empty());
        assert_eq!(pending(&slot, "qa"), None);
    }

    #[test]
    fn a_diverging_first_exposure_marks_its_experiment_before_it_is_queued() {
        let slots = Slots::new();
        let slot = slots.running("e");
        let experiment = running("e");
        let mut firsts = FirstExposures::default();
        firsts
            .remember(&slot, &experiment, "alice", 0, 10, false)
            .unwrap();
        assert!(!slot.sticky.diverged());
        firsts
            .remember(&slot, &experiment, "bob", 1, 10, true)
            .unwrap();
        assert!(slot.sticky.diverged());
        let standing = firsts
            .remember(&slot, &experiment, "alice", 1, 20, true)
            .unwrap_err();
        assert_eq!(
            standing,
            FirstExposure {
                variant: 0,
                at_ms: 10
            }
        );
        let (records, claims) = firsts.into_parts();
        let summary: Vec<_> = records
            .iter()
            .map(|r| (&*r.unit, &*r.variant, r.diverges))
            .collect();
        assert_eq!(
            summary,
            [("alice", "control", false), ("bob", "treatment", true)],
            "the loser claimed nothing"
        );
        drop(claims);
        assert_eq!(pending(&slot, "alice"), None);
    }
}
