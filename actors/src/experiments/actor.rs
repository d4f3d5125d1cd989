//! The experiment actor: the single writer of one experiment.
//!
//! Every change (patch, lifecycle action) is a message, handled atomically:
//! validate against the current record, persist it off the async threads,
//! then publish a fresh [`Compiled`] snapshot into the experiment's
//! [`Slot`]. Readers only ever load the snapshot, so assignment never waits
//! on the actor, and the actor never has to coordinate with readers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwap;

use super::assignment::Compiled;
use super::records::Records;
use super::sticky::StickyTable;
use crate::clock::Clock;
use crate::cluster::Revision;
use crate::domain::{
    Action, Alert, Allocation, AuditEntry, Correction, DomainEvent, DomainEventKind, Experiment,
    ExperimentPatch, GuardrailStop, Principal, Reallocation, ResourceKind, Status, VariantKey,
};
use crate::storage::Store;
use crate::Result;

/// What the hot path reads for one experiment: the published snapshot and
/// the units' first exposures.
#[derive(Debug)]
pub struct Slot {
    live: ArcSwap<Compiled>,
    /// Cluster mode: the revision of the published record in the
    /// replicated bucket (0 on a single node).
    revision: AtomicU64,
    /// First exposures, consulted for `sticky` assignments.
    pub sticky: Arc<StickyTable>,
}

impl Slot {
    /// A slot publishing `experiment` (at `revision` in cluster mode), its
    /// first exposures in `store`.
    pub fn new(experiment: Experiment, revision: Revision, store: Store) -> Self {
        let sticky = StickyTable::new(store, false);
        Self {
            live: ArcSwap::from_pointee(Compiled::new(experiment)),
            revision: AtomicU64::new(revision),
            sticky: Arc::new(sticky),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Compiled> {
        self.live.load_full()
    }

    /// The revision of the published record (cluster mode).
    pub fn revision(&self) -> Revision {
        self.revision.load(Ordering::Acquire)
    }

    /// Publishes `experiment` at `revision`. Only the owning actor calls it.
    fn publish(&self, experiment: Experiment, revision: Revision) -> Arc<Compiled> {
        let compiled = Arc::new(Compiled::new(experiment));
        self.live.store(Arc::clone(&compiled));
        self.revision.store(revision, Ordering::Release);
        compiled
    }
}

/// Owns one experiment.
pub struct ExperimentActor {
    slot: Arc<Slot>,
    records: Records,
    clock: Arc<dyn Clock>,
}

impl ExperimentActor {
    /// An actor for the experiment published in `slot`, writing through
    /// `records`.
    pub fn new(slot: Arc<Slot>, records: Records, clock: Arc<dyn Clock>) -> Self {
        Self {
            slot,
            records,
            clock,
        }
    }

    /// Persists `next` (with the domain event the change causes), then
    /// publishes it. Wrapped in an [`AtomicResponse`] so the next message
    /// waits until this one is done. In cluster mode the write is a
    /// compare-and-set on the revision this node last saw: a change another
    /// node made first wins, and this one is refused `ChangedElsewhere`.
    fn commit(
        &self,
        next: Result<(Experiment, Option<DomainEvent>)>,
    ) -> AtomicResponse<Self, Result<Arc<Compiled>>> {
        self.commit_with(next.map(|(next, event)| {
            (next, move |store: &Store, e: &Experiment| {
                store.put_experiment(e, event.as_ref())
            })
        }))
    }

    /// [`Self::commit`] of a change made through the API: `audit`, the
    /// entry with the experiment as it was, gets the experiment as it is
    /// and goes into the same write.
    fn commit_audited(
        &self,
        next: Result<(Experiment, Option<DomainEvent>)>,
        mut audit: AuditEntry,
    ) -> AtomicResponse<Self, Result<Arc<Compiled>>> {
        self.commit_with(next.map(|(next, event)| {
            (next, move |store: &Store, e: &Experiment| {
                audit.after = serde_json::to_value(e).ok();
                store.put_experiment_audited(e, event.as_ref(), &audit)
            })
        }))
    }

    /// [`Self::commit`] with its own write (one atomic store call).
    fn commit_with<W>(
        &self,
        next: Result<(Experiment, W)>,
    ) -> AtomicResponse<Self, Result<Arc<Compiled>>>
    where
        W: FnOnce(&Store, &Experiment) -> Result<()> + Send + 'static,
    {
        let (next, write) = match next {
            Ok(next) => next,
            Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Err(e)))),
        };
        let records = self.records.clone();
        let revision = self.slot.revision();
        let write = async move { records.update(next, revision, write).await };
        AtomicResponse::new(Box::pin(fut::wrap_future(write).map(
            |written, actor: &mut Self, _| {
                let (next, revision) = written?;
                tracing::info!(
                    experiment = %next.key,
                    status = %next.status,
                    version = next.version,
                    revision,
                    "experiment changed"
                );
                Ok(actor.slot.publish(next, revision))
            },
        )))
    }
}

/// Cluster mode: a change of this experiment read from the replicated
/// bucket (another node's, or this node's own coming back), published if
/// it is newer than what the slot holds.
#[derive(Message)]
#[rtype(result = "Result<Arc<Compiled>>")]
pub struct Adopt {
    /// The record as the bucket holds it.
    pub experiment: Experiment,
    /// Its revision there.
    pub revision: Revision,
}

impl Handler<Adopt> for ExperimentActor {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: Adopt, _: &mut Context<Self>) -> Self::Result {
        if msg.revision <= self.slot.revision() {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(self.slot.snapshot()))));
        }
        let records = self.records.clone();
        let adopt = async move { records.adopt(msg.experiment).await };
        AtomicResponse::new(Box::pin(fut::wrap_future(adopt).map(
            move |adopted, actor: &mut Self, _| {
                let next = adopted?;
                // A newer one may have been published while this was written.
                if msg.revision <= actor.slot.revision() {
                    return Ok(actor.slot.snapshot());
                }
                tracing::info!(
                    experiment = %next.key,
                    status = %next.status,
                    revision = msg.revision,
                    "experiment changed on another node"
                );
                Ok(actor.slot.publish(next, msg.revision))
            },
        )))
    }
}

impl Actor for ExperimentActor {
    type Context = Context<Self>;
}

/// The audit entry of `action` by `by` on the experiment `before` (its
/// `after` is filled in when the change is written).
fn audit(
    by: &Principal,
    at: time::OffsetDateTime,
    action: impl Into<String>,
    before: &Experiment,
) -> AuditEntry {
    AuditEntry::new(
        by,
        at,
        action,
        ResourceKind::Experiment,
        before.key.as_str(),
        serde_json::to_value(before).ok(),
        None,
    )
}

/// Apply a patch to the experiment, on behalf of a caller.
#[derive(Message)]
#[rtype(result = "Result<Arc<Compiled>>")]
pub struct PatchExperiment(pub ExperimentPatch, pub Principal);

impl Handler<PatchExperiment> for ExperimentActor {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: PatchExperiment, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let current = self.slot.snapshot();
        let before = current.experiment();
        self.commit_audited(
            before.patched(msg.0, now).map(|next| {
                let event = (next.phase() > before.phase().max(1))
                    .then(|| reallocated(&next, now, serde_json::json!({"reason": "patch"})));
                (next, event)
            }),
            audit(&msg.1, now, "experiment.updated", before),
        )
    }
}

/// `experiment.reallocated` for the phase `next` begins; `about` adds to
/// its data.
fn reallocated(
    next: &Experiment,
    now: time::OffsetDateTime,
    about: serde_json::Value,
) -> DomainEvent {
    let mut data = serde_json::json!({"experiment": next, "phase": next.phases.last()});
    if let (Some(data), Some(about)) = (data.as_object_mut(), about.as_object()) {
        data.extend(about.clone());
    }
    DomainEvent::with_data(DomainEventKind::ExperimentReallocated, next, now, data)
}

/// Move a running bandit to a new split: a new phase, from the results
/// monitor's turn (see `results/bandit.rs`).
#[derive(Message)]
#[rtype(result = "Result<Arc<Compiled>>")]
pub struct Reallocate {
    /// The split, and the phase it follows.
    pub split: Reallocation,
    /// Who is recorded as making it (abacus itself).
    pub by: Principal,
}

impl Handler<Reallocate> for ExperimentActor {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: Reallocate, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let current = self.slot.snapshot();
        let before = current.experiment();
        // A split computed for an earlier phase, or for a bandit since
        // paused or changed, is stale: the next turn computes afresh.
        let stale = before.status != Status::Running
            || before.allocation != Allocation::Bandit
            || before.phase() != msg.split.after_phase;
        if stale {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(current))));
        }
        let chance = msg.split.chance_best;
        self.commit_audited(
            before.reallocated(&msg.split.weights, now).map(|next| {
                tracing::info!(experiment = %next.key, phase = next.phase(), weights = ?msg.split.weights, "bandit update");
                let about = serde_json::json!({"reason": "bandit", "chance_best": chance});
                let event = reallocated(&next, now, about);
                (next, Some(event))
            }),
            audit(&msg.by, now, "experiment.reallocated", before),
        )
    }
}

/// Move the experiment through its lifecycle.
#[derive(Message)]
#[rtype(result = "Result<Arc<Compiled>>")]
pub struct TransitionExperiment {
    /// What to do.
    pub action: Action,
    /// The variant to serve everyone after `complete`.
    pub winner: Option<VariantKey>,
    /// Who asked.
    pub by: Principal,
}

impl Handler<TransitionExperiment> for ExperimentActor {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: TransitionExperiment, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let current = self.slot.snapshot();
        let before = current.experiment();
        let action = format!("experiment.{}", msg.action.past_tense());
        self.commit_audited(
            before
                .transitioned(msg.action, msg.winner, now)
                .map(|next| {
                    let event = DomainEventKind::of_action(msg.action)
                        .map(|kind| DomainEvent::new(kind, &next, now));
                    (next, event)
                }),
            audit(&msg.by, now, action, before),
        )
    }
}

/// A finding of the results monitor worth recording once.
#[derive(Debug, Clone)]
pub enum Finding {
    /// The primary metric is significant by its corrected always-valid
    /// p-value.
    Significant {
        /// The metric.
        metric: String,
        /// The treatment that differs from the control.
        variant: String,
        /// Its always-valid p-value after the experiment's correction.
        p_value: f64,
        /// Its always-valid p-value after Holm across the metric's
        /// treatments.
        p_value_holm: f64,
        /// The correction `p_value` was computed under.
        correction: Option<Correction>,
        /// Its relative lift.
        relative_lift: Option<f64>,
    },
    /// Exposed units deviate from the configured weights.
    SampleRatioMismatch {
        /// The chi-square p-value.
        p_value: f64,
        /// Exposed units per variant.
        units: Vec<u64>,
    },
}

/// Record a finding on the experiment (`significant_at`,
/// `srm_detected_at`) with its domain event, unless it is already recorded.
#[derive(Message)]
#[rtype(result = "Result<Arc<Compiled>>")]
pub struct RecordFinding(pub Finding);

impl Handler<RecordFinding> for ExperimentActor {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: RecordFinding, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let current = self.slot.snapshot();
        let mut next = current.experiment().clone();
        let (slot, kind, data) = match msg.0 {
            Finding::Significant {
                metric,
                variant,
                p_value,
                p_value_holm,
                correction,
                relative_lift,
            } => (
                &mut next.significant_at,
                DomainEventKind::ExperimentSignificant,
                serde_json::json!({
                    "metric": metric, "variant": variant,
                    "sequential_p_value_adjusted": p_value,
                    "sequential_p_value_holm": p_value_holm,
                    "correction": correction,
                    "relative_lift": relative_lift,
                }),
            ),
            Finding::SampleRatioMismatch { p_value, units } => (
                &mut next.srm_detected_at,
                DomainEventKind::ExperimentSrmDetected,
                serde_json::json!({"p_value": p_value, "units": units}),
            ),
        };
        if slot.is_some() {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(current))));
        }
        *slot = Some(now);
        next.touch(now);
        let mut data = data;
        data["experiment"] = serde_json::to_value(&next).unwrap_or_default();
        let event = DomainEvent::with_data(kind, &next, now, data);
        self.commit(Ok((next, Some(event))))
    }
}

/// Pause the experiment because a guardrail regressed (once: ignored when
/// it is not running or a guardrail already stopped it).
#[derive(Debug, Message)]
#[rtype(result = "Result<Arc<Compiled>>")]
pub struct StopForGuardrail {
    /// The guardrail metric.
    pub metric: String,
    /// The treatment that regressed.
    pub variant: String,
    /// (treatment - control) / control.
    pub relative_lift: Option<f64>,
    /// The always-valid p-value that the harm exceeds the tolerance.
    pub p_value: Option<f64>,
    /// The tolerance.
    pub max_relative_drop: f64,
}

impl Handler<StopForGuardrail> for ExperimentActor {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: StopForGuardrail, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let current = self.slot.snapshot();
        let experiment = current.experiment();
        if experiment.status != Status::Running || experiment.guardrail_stop.is_some() {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(current))));
        }
        let check = msg;
        let (Some(guardrail), Some(variant)) = (
            experiment
                .guardrails
                .iter()
                .find(|g| g.metric.as_str() == check.metric),
            experiment
                .variants
                .iter()
                .find(|v| v.key.as_str() == check.variant),
        ) else {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(current))));
        };
        let stop = GuardrailStop {
            metric: guardrail.metric.clone(),
            variant: variant.key.clone(),
            relative_lift: check.relative_lift,
            p_value: check.p_value.unwrap_or(0.0),
            max_relative_drop: check.max_relative_drop,
            at: now,
        };
        let next = experiment
            .transitioned(Action::Pause, None, now)
            .map(|mut next| {
                next.guardrail_stop = Some(stop.clone());
                let alert = Alert::guardrail_stop(next.key.as_str(), &stop);
                let paused = DomainEvent::with_data(
                    DomainEventKind::ExperimentPaused,
                    &next,
                    now,
                    serde_json::json!({"experiment": &next, "reason": "guardrail", "guardrail": &stop}),
                );
                let raised = alert.domain_event(now);
                tracing::warn!(experiment = %next.key, metric = %stop.metric, variant = %stop.variant, "guardrail regression: pausing");
                let records = self.records.clone();
                (next, move |store: &Store, e: &Experiment| {
                    store.put_guardrail_stop(e, &alert, &[&paused, &raised])?;
                    records.share_alert(&alert);
                    Ok(())
                })
            });
        self.commit_with(next)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{input, running, T0};
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::AlertMetric;
    use crate::storage::StoreOptions;
    use crate::Error;

    const OPTIONS: StoreOptions = StoreOptions {
        dedup_window_ms: 1000,
        retention_ms: None,
        cache_bytes: 8 << 20,
        audit_retention_ms: 365 * 24 * 3600 * 1000,
    };

    /// Starts an actor publishing `experiment`. Must run inside an actix
    /// system.
    fn start(
        experiment: Experiment,
        store: &Store,
        clock: &Arc<ManualClock>,
    ) -> (Arc<Slot>, Addr<ExperimentActor>) {
        let slot = Arc::new(Slot::new(experiment, 0, store.clone()));
        let actor = ExperimentActor::new(
            Arc::clone(&slot),
            Records::local(store.clone()),
            clock.clone(),
        );
        (slot, actor.start())
    }

    /// The kinds of the domain events in the outbox, in order, but the
    /// audit log's (see [`audited`]).
    fn outbox(store: &Store) -> Vec<DomainEventKind> {
        let events = store.outbox(0, 100).unwrap();
        events
            .into_iter()
            .map(|(_, e)| e.kind)
            .filter(|k| *k != DomainEventKind::AuditRecorded)
            .collect()
    }

    /// The actions of the audit log, oldest first, after checking each
    /// has its `audit.recorded` event in the outbox.
    fn audited(store: &Store) -> Vec<String> {
        let filter = crate::domain::AuditFilter::default();
        let (mut entries, _) = store
            .audit(&filter, (0, u64::MAX), None, 100, 1000)
            .unwrap();
        entries.reverse();
        let announced: Vec<String> = store
            .outbox(0, 100)
            .unwrap()
            .into_iter()
            .filter(|(_, e)| e.kind == DomainEventKind::AuditRecorded)
            .map(|(_, e)| e.data["entry"]["id"].as_str().unwrap().to_owned())
            .collect();
        let ids: Vec<String> = entries.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, announced, "each entry announced once, in order");
        entries.into_iter().map(|e| e.action).collect()
    }

    fn transition(action: Action) -> TransitionExperiment {
        TransitionExperiment {
            action,
            winner: None,
            by: Principal::open(),
        }
    }

    fn patch(body: serde_json::Value) -> PatchExperiment {
        PatchExperiment(serde_json::from_value(body).unwrap(), Principal::open())
    }

    fn guardrail_stop() -> StopForGuardrail {
        StopForGuardrail {
            metric: "errors".into(),
            variant: "treatment".into(),
            relative_lift: Some(0.2),
            p_value: Some(0.001),
            max_relative_drop: 0.05,
        }
    }

    #[test]
    fn changes_publish_a_new_snapshot_and_persist_it_for_the_next_start() {
        use DomainEventKind as K;
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let at = |s: u64| T0 + Duration::from_secs(s);
        let last = actix::System::new().block_on(async {
            let store = Store::open(dir.path(), OPTIONS).unwrap();
            let draft = Experiment::create(input("e"), T0).unwrap();
            let (slot, addr) = start(draft, &store, &clock);

            clock.set(at(10));
            let patched = addr
                .send(patch(serde_json::json!({"name": "renamed"})))
                .await
                .unwrap()
                .unwrap();
            assert!(Arc::ptr_eq(&slot.snapshot(), &patched), "published");
            let e = patched.experiment();
            assert_eq!(
                (e.name.as_str(), e.version, e.updated_at),
                ("renamed", 2, at(10))
            );
            assert_eq!(
                store.experiments().unwrap(),
                std::slice::from_ref(e),
                "persisted"
            );

            let mut statuses = Vec::new();
            for (second, action) in [
                (20, Action::Start),
                (30, Action::Pause),
                (40, Action::Resume),
            ] {
                clock.set(at(second));
                let next = addr.send(transition(action)).await.unwrap().unwrap();
                assert!(Arc::ptr_eq(&slot.snapshot(), &next));
                assert_eq!(next.experiment().updated_at, at(second));
                statuses.push(next.experiment().status);
            }
            assert_eq!(statuses, [Status::Running, Status::Paused, Status::Running]);

            clock.set(at(50));
            let winner = Some("treatment".try_into().unwrap());
            let done = addr
                .send(TransitionExperiment {
                    action: Action::Complete,
                    winner: winner.clone(),
                    by: Principal::open(),
                })
                .await
                .unwrap()
                .unwrap();
            let e = done.experiment().clone();
            assert_eq!(
                (e.status, &e.winner, e.version),
                (Status::Completed, &winner, 6)
            );
            assert_eq!((e.started_at, e.completed_at), (Some(at(20)), Some(at(50))));
            assert_eq!(
                outbox(&store),
                [
                    K::ExperimentStarted,
                    K::ExperimentPaused,
                    K::ExperimentResumed,
                    K::ExperimentCompleted
                ],
                "a patch has no event; each transition one"
            );
            assert_eq!(
                audited(&store),
                [
                    "experiment.updated",
                    "experiment.started",
                    "experiment.paused",
                    "experiment.resumed",
                    "experiment.completed"
                ],
                "every change through the API is in the audit log"
            );
            e
        });

        // The system and its actors are gone; the store opens again and
        // start-up restores the last published state.
        let store = Store::open(dir.path(), OPTIONS).unwrap();
        assert_eq!(store.experiments().unwrap(), std::slice::from_ref(&last));
        actix::System::new().block_on(async {
            let (registry, _) = super::super::restore(&Records::local(store), clock)
                .await
                .unwrap();
            let entry = registry.get("e").expect("restored");
            assert_eq!(entry.slot.snapshot().experiment(), &last);
        });
    }

    /// Two changes queued together: the second starts from the first's
    /// result, so neither is lost.
    #[actix::test]
    async fn queued_changes_apply_one_after_another() {
        let (_dir, store) = Store::temporary();
        let clock = Arc::new(ManualClock::new(T0));
        let (slot, addr) = start(running("e"), &store, &clock);
        let first = addr.send(patch(serde_json::json!({"name": "one"})));
        let second = addr.send(patch(serde_json::json!({"description": "two"})));
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        let e = slot.snapshot();
        let e = e.experiment();
        assert_eq!(
            (e.name.as_str(), e.description.as_deref(), e.version),
            ("one", Some("two"), 4)
        );
        assert_eq!(store.experiments().unwrap()[0].version, 4);
    }

    #[actix::test]
    async fn a_refused_change_leaves_the_snapshot_and_the_store_as_they_were() {
        let (_dir, store) = Store::temporary();
        let clock = Arc::new(ManualClock::new(T0));
        let draft = Experiment::create(input("e"), T0).unwrap();
        store.put_experiment(&draft, None).unwrap();
        let (slot, addr) = start(draft.clone(), &store, &clock);
        let before = slot.snapshot();

        let refused = addr.send(transition(Action::Pause)).await.unwrap();
        assert!(
            matches!(
                refused,
                Err(Error::InvalidTransition {
                    from: "draft",
                    action: "pause"
                })
            ),
            "{:?}",
            refused.map(|_| ())
        );
        let bad_winner = TransitionExperiment {
            action: Action::Complete,
            winner: Some("nobody".try_into().unwrap()),
            by: Principal::open(),
        };
        addr.send(transition(Action::Start)).await.unwrap().unwrap();
        let running = slot.snapshot();
        let refused = addr.send(bad_winner).await.unwrap();
        assert!(matches!(refused, Err(Error::Invalid { ref field, .. }) if field == "winner"));
        let refused = addr
            .send(patch(serde_json::json!({"salt": "reshuffle"})))
            .await
            .unwrap();
        assert!(matches!(
            refused,
            Err(Error::NotEditable {
                field: "salt",
                status: "running"
            })
        ));

        assert!(Arc::ptr_eq(&slot.snapshot(), &running), "nothing published");
        assert_eq!(
            store.experiments().unwrap(),
            std::slice::from_ref(running.experiment())
        );
        assert_eq!(outbox(&store), [DomainEventKind::ExperimentStarted]);
        assert_eq!(audited(&store), ["experiment.started"], "nor audited");
        assert_eq!(before.experiment(), &draft, "an old snapshot is immutable");
    }

    #[actix::test]
    async fn a_guardrail_stop_pauses_once_and_records_when_by_the_clock() {
        use DomainEventKind as K;
        let (_dir, store) = Store::temporary();
        let clock = Arc::new(ManualClock::new(T0));
        let (slot, addr) = start(running("e"), &store, &clock);
        let stopped_at = T0 + Duration::from_secs(3600);
        clock.set(stopped_at);

        let paused = addr.send(guardrail_stop()).await.unwrap().unwrap();
        let e = paused.experiment();
        assert_eq!(e.status, Status::Paused);
        assert_eq!(e.updated_at, stopped_at);
        let stop = GuardrailStop {
            metric: "errors".try_into().unwrap(),
            variant: "treatment".try_into().unwrap(),
            relative_lift: Some(0.2),
            p_value: 0.001,
            max_relative_drop: 0.05,
            at: stopped_at,
        };
        assert_eq!(e.guardrail_stop.as_ref(), Some(&stop));
        assert!(Arc::ptr_eq(&slot.snapshot(), &paused));
        assert_eq!(store.experiments().unwrap(), std::slice::from_ref(e));
        let alerts = store.alerts(10, |_| true).unwrap();
        let [alert] = &alerts[..] else {
            panic!("one alert: {alerts:?}")
        };
        assert_eq!(alert.metric, AlertMetric::GuardrailRegression);
        assert_eq!(alert.experiment.as_deref(), Some("e"));
        assert_eq!(alert.raised_at, stopped_at);
        assert_eq!(outbox(&store), [K::ExperimentPaused, K::AlertRaised]);

        // Paused: a second stop is ignored.
        clock.advance(Duration::from_secs(60));
        let again = addr.send(guardrail_stop()).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&again, &paused));

        // Resumed by hand, the record stays and the guardrail does not
        // trip again.
        let resumed = addr
            .send(transition(Action::Resume))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resumed.experiment().guardrail_stop.as_ref(), Some(&stop));
        let again = addr.send(guardrail_stop()).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&again, &resumed));
        assert_eq!(again.experiment().status, Status::Running);
        assert_eq!(store.alerts(10, |_| true).unwrap().len(), 1);
        assert_eq!(
            outbox(&store),
            [K::ExperimentPaused, K::AlertRaised, K::ExperimentResumed]
        );
    }

    #[actix::test]
    async fn a_guardrail_stop_naming_no_guardrail_or_variant_is_ignored() {
        let (_dir, store) = Store::temporary();
        let clock = Arc::new(ManualClock::new(T0));
        let (slot, addr) = start(running("e"), &store, &clock);
        let before = slot.snapshot();
        for stop in [
            StopForGuardrail {
                metric: "latency".into(),
                ..guardrail_stop()
            },
            StopForGuardrail {
                variant: "nobody".into(),
                ..guardrail_stop()
            },
        ] {
            let after = addr.send(stop).await.unwrap().unwrap();
            assert!(Arc::ptr_eq(&after, &before));
        }
        assert!(store.experiments().unwrap().is_empty(), "nothing written");
    }

    #[actix::test]
    async fn a_finding_is_recorded_once_with_its_event() {
        use DomainEventKind as K;
        let (_dir, store) = Store::temporary();
        let clock = Arc::new(ManualClock::new(T0));
        let (_slot, addr) = start(running("e"), &store, &clock);
        let significant = || {
            RecordFinding(Finding::Significant {
                metric: "errors".into(),
                variant: "treatment".into(),
                p_value: 0.03,
                p_value_holm: 0.01,
                correction: Some(Correction::Bh),
                relative_lift: Some(-0.1),
            })
        };
        let found_at = T0 + Duration::from_secs(5);
        clock.set(found_at);
        let recorded = addr.send(significant()).await.unwrap().unwrap();
        assert_eq!(recorded.experiment().significant_at, Some(found_at));
        assert_eq!(recorded.experiment().version, 3);

        clock.advance(Duration::from_secs(5));
        let again = addr.send(significant()).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&again, &recorded), "recorded once");

        let srm = RecordFinding(Finding::SampleRatioMismatch {
            p_value: 1e-6,
            units: vec![100, 150],
        });
        let both = addr.send(srm).await.unwrap().unwrap();
        let e = both.experiment();
        assert_eq!(
            (e.significant_at, e.srm_detected_at),
            (Some(found_at), Some(clock.now()))
        );
        let events = store.outbox(0, 10).unwrap();
        let kinds: Vec<_> = events.iter().map(|(_, e)| e.kind).collect();
        assert_eq!(kinds, [K::ExperimentSignificant, K::ExperimentSrmDetected]);
        let data = &events[0].1.data;
        assert_eq!(data["metric"], "errors");
        assert_eq!(data["experiment"]["key"], "e");
        assert_eq!(
            (
                &data["sequential_p_value_adjusted"],
                &data["sequential_p_value_holm"],
                &data["correction"]
            ),
            (
                &serde_json::json!(0.03),
                &serde_json::json!(0.01),
                &serde_json::json!("bh")
            )
        );
        assert_eq!(events[1].1.data["units"], serde_json::json!([100, 150]));
    }
}
