//! Domain events: what happened to an experiment that someone outside may
//! want to hear about. Each is written to the outbox (`Cf::Outbox`) in the
//! same WriteBatch as the change that caused it, so none is lost or
//! invented by a crash; webhooks deliver them from there.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::{Action, Experiment, WebhookId};

/// The kinds of domain event, named as webhook subscribers see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum DomainEventKind {
    /// A draft was created.
    #[serde(rename = "experiment.created")]
    ExperimentCreated,
    /// `draft → running`.
    #[serde(rename = "experiment.started")]
    ExperimentStarted,
    /// `running → paused`.
    #[serde(rename = "experiment.paused")]
    ExperimentPaused,
    /// `paused → running`.
    #[serde(rename = "experiment.resumed")]
    ExperimentResumed,
    /// `→ completed`.
    #[serde(rename = "experiment.completed")]
    ExperimentCompleted,
    /// The primary metric became significant (first time only).
    #[serde(rename = "experiment.significant")]
    ExperimentSignificant,
    /// A sample-ratio mismatch was detected (first time only).
    #[serde(rename = "experiment.srm_detected")]
    ExperimentSrmDetected,
    /// Weights or coverage changed: a new phase began, by a patch or a
    /// bandit's update.
    #[serde(rename = "experiment.reallocated")]
    ExperimentReallocated,
    /// An alert was raised.
    #[serde(rename = "alert.raised")]
    AlertRaised,
    /// An alert was resolved.
    #[serde(rename = "alert.resolved")]
    AlertResolved,
    /// Sent on request to one webhook subscription.
    #[serde(rename = "webhook.test")]
    WebhookTest,
    /// A change made through the API was recorded in the audit log.
    #[serde(rename = "audit.recorded")]
    AuditRecorded,
}

impl DomainEventKind {
    /// The event a lifecycle action causes, if any (archiving has none).
    pub fn of_action(action: Action) -> Option<Self> {
        match action {
            Action::Start => Some(Self::ExperimentStarted),
            Action::Pause => Some(Self::ExperimentPaused),
            Action::Resume => Some(Self::ExperimentResumed),
            Action::Complete => Some(Self::ExperimentCompleted),
            Action::Archive => None,
        }
    }
}

/// One domain event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DomainEvent {
    /// Unique id (UUIDv7); becomes the `webhook-id` of its deliveries.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: DomainEventKind,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// The experiment it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// Only this webhook subscription gets it (`webhook.test`); else every
    /// subscription to its type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<WebhookId>,
    /// Details: the experiment after the change, and for significance and
    /// SRM the numbers that triggered it.
    #[schema(value_type = Object)]
    pub data: Value,
}

impl DomainEvent {
    /// An event about `experiment` (as it is after the change).
    pub fn new(kind: DomainEventKind, experiment: &Experiment, at: OffsetDateTime) -> Self {
        Self::with_data(
            kind,
            experiment,
            at,
            serde_json::json!({ "experiment": experiment }),
        )
    }

    /// An event with its own details.
    pub fn with_data(
        kind: DomainEventKind,
        experiment: &Experiment,
        at: OffsetDateTime,
        data: Value,
    ) -> Self {
        Self::about(kind, Some(experiment.key.as_str()), at, data)
    }

    /// An event not caused by an experiment change (alerts), maybe about
    /// an experiment.
    pub fn about(
        kind: DomainEventKind,
        experiment: Option<&str>,
        at: OffsetDateTime,
        data: Value,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            at,
            experiment: experiment.map(str::to_owned),
            subscription: None,
            data,
        }
    }

    /// A `webhook.test` for one subscription.
    pub fn test(subscription: &WebhookId, at: OffsetDateTime) -> Self {
        Self {
            subscription: Some(subscription.clone()),
            ..Self::about(
                DomainEventKind::WebhookTest,
                None,
                at,
                serde_json::json!({ "subscription": subscription }),
            )
        }
    }

    /// The body webhook subscribers receive:
    /// `{"type", "timestamp", "data"}` (the Standard Webhooks shape), with
    /// the event's id and experiment in `data`.
    pub fn payload(&self) -> Value {
        let mut data = self.data.clone();
        if let Value::Object(map) = &mut data {
            map.insert("event_id".into(), Value::String(self.id.clone()));
            if let Some(e) = &self.experiment {
                map.entry("experiment_key")
                    .or_insert(Value::String(e.clone()));
            }
        }
        serde_json::json!({
            "type": self.kind,
            "timestamp": self.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "data": data,
        })
    }
}
