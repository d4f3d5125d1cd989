//! Alerts: what a rule (or a guardrail stop) raised, and what people did
//! about it. `open → acknowledged → resolved`; an alert also resolves
//! itself when its condition clears.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{
    AlertId, AlertMetric, AlertRule, DomainEvent, DomainEventKind, GuardrailStop, RuleId, Severity,
    WebhookId,
};
use crate::{Error, Result};

// Bodies are read from JSON objects only, never from arrays of their
// fields (domain/objects.rs).
crate::objects_only!(StampIn);

const MAX_BY_CHARS: usize = 200;
const MAX_NOTE_CHARS: usize = 2000;
/// Who resolves an alert whose condition cleared.
pub const SYSTEM: &str = "abacus";

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// Raised; nobody has looked yet.
    Open,
    /// Someone is on it.
    Acknowledged,
    /// Over.
    Resolved,
}

impl AlertStatus {
    /// The status as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
        }
    }
}

impl std::fmt::Display for AlertStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who did something to an alert, when, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stamp {
    /// A person's name or a system's (`abacus` for automatic resolution).
    pub by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// Free text.
    pub note: Option<String>,
}

/// Body of `POST /v1/alerts/{id}/acknowledge` and `/resolve`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct StampIn {
    /// Who: 1-200 characters, not all blank.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub by: String,
    /// Why (up to 2,000 characters).
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub note: Option<String>,
}

impl StampIn {
    fn stamp(self, now: OffsetDateTime) -> Result<Stamp> {
        let chars = self.by.trim().chars().count();
        if chars == 0 || self.by.chars().count() > MAX_BY_CHARS {
            return Err(Error::invalid(
                "by",
                format!("by must be 1-{MAX_BY_CHARS} characters"),
            ));
        }
        if self
            .note
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_NOTE_CHARS)
        {
            return Err(Error::invalid(
                "note",
                format!("note must be at most {MAX_NOTE_CHARS} characters"),
            ));
        }
        Ok(Stamp {
            by: self.by,
            at: now,
            note: self.note,
        })
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Alert {
    /// `alert_` and a UUIDv7 (so ids sort by time).
    pub id: AlertId,
    /// The rule that raised it; `null` for a guardrail stop or a store
    /// failure, which abacus raises itself.
    pub rule_id: Option<RuleId>,
    /// The rule's name, or what happened.
    pub name: String,
    /// What was watched.
    pub metric: AlertMetric,
    /// How loud.
    pub severity: Severity,
    /// The experiment it concerns.
    pub experiment: Option<String>,
    /// The webhook subscription it concerns.
    pub subscription: Option<WebhookId>,
    /// Where it is in its life.
    pub status: AlertStatus,
    /// The figure when raised.
    pub value: Option<f64>,
    /// The rule's threshold.
    pub threshold: Option<f64>,
    /// One sentence for people.
    pub message: String,
    /// When it was raised.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub raised_at: OffsetDateTime,
    /// Who acknowledged it.
    pub acknowledged: Option<Stamp>,
    /// Who (or `abacus`, when the condition cleared) resolved it.
    pub resolved: Option<Stamp>,
}

/// A condition a rule found true, about one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// The experiment, for experiment rules.
    pub experiment: Option<String>,
    /// The subscription, for webhook rules.
    pub subscription: Option<WebhookId>,
    /// The figure.
    pub value: Option<f64>,
    /// One sentence for people.
    pub message: String,
}

impl Alert {
    /// The `alert.raised` or `alert.resolved` event of the alert as it is
    /// now.
    pub fn domain_event(&self, now: OffsetDateTime) -> DomainEvent {
        let kind = if self.is_active() {
            DomainEventKind::AlertRaised
        } else {
            DomainEventKind::AlertResolved
        };
        DomainEvent::about(
            kind,
            self.experiment.as_deref(),
            now,
            serde_json::json!({ "alert": self }),
        )
    }

    /// An open alert raised by `rule`.
    pub fn raised(rule: &AlertRule, firing: Firing, now: OffsetDateTime) -> Self {
        Self {
            id: AlertId::mint(),
            rule_id: Some(rule.id.clone()),
            name: rule.name.clone(),
            metric: rule.metric,
            severity: rule.severity,
            experiment: firing.experiment,
            subscription: firing.subscription,
            status: AlertStatus::Open,
            value: firing.value,
            threshold: rule.threshold,
            message: firing.message,
            raised_at: now,
            acknowledged: None,
            resolved: None,
        }
    }

    /// The critical alert a guardrail raises when it pauses an experiment.
    pub fn guardrail_stop(experiment: &str, stop: &GuardrailStop) -> Self {
        let lift = stop
            .relative_lift
            .map_or_else(|| "unknown".to_owned(), |l| format!("{:+.1}%", l * 100.0));
        Self {
            id: AlertId::mint(),
            rule_id: None,
            name: format!("guardrail '{}' paused {experiment}", stop.metric),
            metric: AlertMetric::GuardrailRegression,
            severity: Severity::Critical,
            experiment: Some(experiment.to_owned()),
            subscription: None,
            status: AlertStatus::Open,
            value: stop.relative_lift,
            threshold: Some(stop.max_relative_drop),
            message: format!(
                "variant '{}' moved '{}' by {lift} (tolerated {:.1}%, always-valid p = {:.2e}); \
                 the experiment is paused and serves the control",
                stop.variant,
                stop.metric,
                stop.max_relative_drop * 100.0,
                stop.p_value
            ),
            raised_at: stop.at,
            acknowledged: None,
            resolved: None,
        }
    }

    /// The critical alert abacus raises itself when the event store
    /// refused a commit after every retry.
    pub fn store_failed(reason: &str, now: OffsetDateTime) -> Self {
        Self {
            id: AlertId::mint(),
            rule_id: None,
            name: "event store failed".to_owned(),
            metric: AlertMetric::StoreFailed,
            severity: Severity::Critical,
            experiment: None,
            subscription: None,
            status: AlertStatus::Open,
            value: None,
            threshold: None,
            message: format!(
                "{reason}. New events and exposures are refused with 503 and /readyz fails \
                 until abacus is restarted; fire-and-forget events of the failed batch are \
                 lost (abacus_events_lost_total)"
            ),
            raised_at: now,
            acknowledged: None,
            resolved: None,
        }
    }

    /// Whether it still needs attention.
    pub fn is_active(&self) -> bool {
        self.status != AlertStatus::Resolved
    }

    /// `open → acknowledged`. The stamp is checked first: one no alert
    /// could take is refused as such (422), whatever this one's status.
    pub fn acknowledged(&self, input: StampIn, now: OffsetDateTime) -> Result<Self> {
        let stamp = input.stamp(now)?;
        if self.status != AlertStatus::Open {
            return Err(Error::AlertTransition {
                from: self.status.as_str(),
                action: "acknowledge",
            });
        }
        let mut next = self.clone();
        next.acknowledged = Some(stamp);
        next.status = AlertStatus::Acknowledged;
        Ok(next)
    }

    /// `open | acknowledged → resolved`, the stamp checked first.
    pub fn resolved_by(&self, input: StampIn, now: OffsetDateTime) -> Result<Self> {
        let stamp = input.stamp(now)?;
        if self.status == AlertStatus::Resolved {
            return Err(Error::AlertTransition {
                from: self.status.as_str(),
                action: "resolve",
            });
        }
        let mut next = self.clone();
        next.resolved = Some(stamp);
        next.status = AlertStatus::Resolved;
        Ok(next)
    }

    /// Resolved by abacus because `why` (the condition cleared, the rule
    /// went away).
    pub fn cleared(&self, why: &str, now: OffsetDateTime) -> Self {
        let mut next = self.clone();
        next.status = AlertStatus::Resolved;
        next.resolved = Some(Stamp {
            by: SYSTEM.to_owned(),
            at: now,
            note: Some(why.to_owned()),
        });
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RuleIn;

    fn alert() -> Alert {
        let rule = AlertRule::create(
            serde_json::from_value::<RuleIn>(serde_json::json!({"name": "x", "metric": "srm"}))
                .expect("rule"),
            OffsetDateTime::UNIX_EPOCH,
        )
        .expect("valid");
        let firing = Firing {
            experiment: Some("e".into()),
            subscription: None,
            value: Some(0.0001),
            message: "m".into(),
        };
        Alert::raised(&rule, firing, OffsetDateTime::UNIX_EPOCH)
    }

    fn by(who: &str) -> StampIn {
        StampIn {
            by: who.into(),
            note: Some("on it".into()),
        }
    }

    #[test]
    fn moves_open_acknowledged_resolved_and_no_other_way() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let open = alert();
        let acked = open.acknowledged(by("ana"), now).unwrap();
        assert_eq!(acked.status, AlertStatus::Acknowledged);
        assert_eq!(acked.acknowledged.as_ref().unwrap().by, "ana");
        assert!(matches!(
            acked.acknowledged(by("bo"), now),
            Err(Error::AlertTransition { .. })
        ));
        let done = acked.resolved_by(by("bo"), now).unwrap();
        assert!(!done.is_active());
        assert!(done.resolved_by(by("bo"), now).is_err());
        // Straight from open to resolved is fine.
        assert!(open.resolved_by(by("bo"), now).is_ok());
        assert!(matches!(
            open.acknowledged(by(" "), now),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn clearing_is_signed_by_abacus() {
        let cleared = alert().cleared("condition cleared", OffsetDateTime::UNIX_EPOCH);
        assert_eq!(cleared.status, AlertStatus::Resolved);
        assert_eq!(cleared.resolved.unwrap().by, SYSTEM);
    }
}
