//! The experiment actor: the single writer of one experiment.
//!
//! Every change (patch, lifecycle action) is a message, handled atomically:
//! validate against the current record, persist it off the async threads,
//! then publish a fresh [`Compiled`] snapshot into the experiment's
//! [`Slot`]. Readers only ever load the snapshot, so assignment never waits
//! on the actor, and the actor never has to coordinate with readers.

use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwap;

use super::assignment::Compiled;
use super::sticky::StickyTable;
use crate::clock::Clock;
use crate::domain::{
    Action, Alert, DomainEvent, DomainEventKind, Experiment, ExperimentPatch, GuardrailStop,
    Status, VariantKey,
};
use crate::storage::Store;
use crate::{Error, Result};

/// What the hot path reads for one experiment: the published snapshot and
/// the units' first exposures.
#[derive(Debug)]
pub struct Slot {
    live: ArcSwap<Compiled>,
    /// First exposures, consulted for `sticky` assignments.
    pub sticky: StickyTable,
}

impl Slot {
    /// A slot publishing `experiment`.
    pub fn new(experiment: Experiment) -> Self {
        Self {
            live: ArcSwap::from_pointee(Compiled::new(experiment)),
            sticky: StickyTable::default(),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Compiled> {
        self.live.load_full()
    }
}

/// Owns one experiment.
pub struct ExperimentActor {
    slot: Arc<Slot>,
    store: Store,
    clock: Arc<dyn Clock>,
}

impl ExperimentActor {
    /// An actor for the experiment published in `slot`.
    pub fn new(slot: Arc<Slot>, store: Store, clock: Arc<dyn Clock>) -> Self {
        Self { slot, store, clock }
    }

    /// Persists `next` (with the domain event the change causes) on the
    /// blocking pool, then publishes it. Wrapped in an [`AtomicResponse`]
    /// so the next message waits until this one is done.
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
        let store = self.store.clone();
        let write = tokio::task::spawn_blocking(move || write(&store, &next).map(|()| next));
        AtomicResponse::new(Box::pin(fut::wrap_future(write).map(
            |joined, actor: &mut Self, _| {
                let next = joined.map_err(|_| Error::Unavailable)??;
                tracing::info!(
                    experiment = %next.key,
                    status = %next.status,
                    version = next.version,
                    "experiment changed"
                );
                let compiled = Arc::new(Compiled::new(next));
                actor.slot.live.store(Arc::clone(&compiled));
                Ok(compiled)
            },
        )))
    }
}

impl Actor for ExperimentActor {
    type Context = Context<Self>;
}

/// Apply a patch to the experiment.
#[derive(Message)]
#[rtype(result = "Result<Arc<Compiled>>")]
pub struct PatchExperiment(pub ExperimentPatch);

impl Handler<PatchExperiment> for ExperimentActor {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: PatchExperiment, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        self.commit(
            self.slot
                .snapshot()
                .experiment()
                .patched(msg.0, now)
                .map(|next| (next, None)),
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
}

impl Handler<TransitionExperiment> for ExperimentActor {
    type Result = AtomicResponse<Self, Result<Arc<Compiled>>>;

    fn handle(&mut self, msg: TransitionExperiment, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let current = self.slot.snapshot();
        self.commit(
            current
                .experiment()
                .transitioned(msg.action, msg.winner, now)
                .map(|next| {
                    let event = DomainEventKind::of_action(msg.action)
                        .map(|kind| DomainEvent::new(kind, &next, now));
                    (next, event)
                }),
        )
    }
}

/// A finding of the results monitor worth recording once.
#[derive(Debug, Clone)]
pub enum Finding {
    /// The primary metric is significant by its Holm-corrected always-valid
    /// p-value.
    Significant {
        /// The metric.
        metric: String,
        /// The treatment that differs from the control.
        variant: String,
        /// Its Holm-corrected always-valid p-value.
        p_value: f64,
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
                relative_lift,
            } => (
                &mut next.significant_at,
                DomainEventKind::ExperimentSignificant,
                serde_json::json!({
                    "metric": metric, "variant": variant,
                    "sequential_p_value_holm": p_value, "relative_lift": relative_lift,
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
                (next, move |store: &Store, e: &Experiment| {
                    store.put_guardrail_stop(e, &alert, &[&paused, &raised])
                })
            });
        self.commit_with(next)
    }
}
