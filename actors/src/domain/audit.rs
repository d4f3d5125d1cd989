//! The audit log: who changed what through the API, when, and the values
//! before and after. An entry is written in the same store write as the
//! change it records, with an `audit.recorded` domain event, so neither
//! can exist without the other.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::domain::{AuditId, Principal, DEFAULT_PROJECT};

/// What kind of thing a change was made to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// An experiment: created, changed, its lifecycle.
    Experiment,
    /// A holdout: created, ended.
    Holdout,
    /// An API key: issued, rotated, revoked.
    Key,
    /// A webhook subscription: created, deleted, enabled.
    Webhook,
    /// An alert rule: created, updated, deleted.
    AlertRule,
    /// An alert: acknowledged, resolved by hand.
    Alert,
    /// A project: created, updated, deleted.
    Project,
}

impl ResourceKind {
    /// The kind's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Experiment => "experiment",
            ResourceKind::Holdout => "holdout",
            ResourceKind::Key => "key",
            ResourceKind::Webhook => "webhook",
            ResourceKind::AlertRule => "alert_rule",
            ResourceKind::Alert => "alert",
            ResourceKind::Project => "project",
        }
    }
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// `audit_` and 32 hex digits (a UUIDv7: entries sort by time).
    pub id: AuditId,
    /// When the change was made.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// The project of the thing changed.
    pub project: String,
    /// Who: a key id (`key_…`), a configured key (`config/admin/0`), a
    /// token's subject (`jwt:…`) or `open` on a server without keys.
    pub actor: String,
    /// What was done, e.g. `experiment.started` or `key.rotated`.
    pub action: String,
    /// The kind of thing changed.
    pub resource: ResourceKind,
    /// Its key or id.
    pub resource_id: String,
    /// The thing before the change (absent for a creation).
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    /// The thing after the change (absent for a deletion).
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

impl AuditEntry {
    /// An entry for `action` by `by` on `resource` `id`, now.
    pub fn new(
        by: &Principal,
        at: OffsetDateTime,
        action: impl Into<String>,
        resource: ResourceKind,
        resource_id: impl Into<String>,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Self {
        Self {
            id: AuditId::mint(),
            at,
            project: by.project.to_string(),
            actor: by.id.to_string(),
            action: action.into(),
            resource,
            resource_id: resource_id.into(),
            before,
            after,
        }
    }
}

impl AuditEntry {
    /// An entry for `action` by `by` on `resource` `id`, with the thing
    /// before and after as the API shows it.
    pub fn of_change<T: Serialize>(
        by: &Principal,
        at: OffsetDateTime,
        action: impl Into<String>,
        resource: ResourceKind,
        resource_id: impl Into<String>,
        before: Option<&T>,
        after: Option<&T>,
    ) -> Self {
        let view = |t: &T| serde_json::to_value(t).ok();
        Self::new(
            by,
            at,
            action,
            resource,
            resource_id,
            before.and_then(view),
            after.and_then(view),
        )
    }
}

impl AuditEntry {
    /// The entry as `audit.recorded` announces it to webhooks and the live
    /// stream of the project whose store holds it, which editors and
    /// viewers read: whole, except for changes to keys, whose names, roles,
    /// prefixes and actors are for admins (`GET /v1/audit`) only. Changes
    /// to another project, or to its keys, are kept in the default
    /// project's store but announced to nobody: they are not the default
    /// project's business, and the other project's own feed does not see
    /// that store.
    pub fn announcement(&self) -> serde_json::Result<Option<Value>> {
        let server_wide = matches!(self.resource, ResourceKind::Key | ResourceKind::Project);
        if server_wide && self.project != DEFAULT_PROJECT {
            return Ok(None);
        }
        if self.resource != ResourceKind::Key {
            return serde_json::to_value(self).map(Some);
        }
        Ok(Some(serde_json::json!({
            "id": self.id,
            "at": self.at.format(&time::format_description::well_known::Rfc3339).ok(),
            "project": self.project,
            "action": self.action,
            "resource": self.resource,
            "resource_id": self.resource_id,
        })))
    }
}

/// Which entries `GET /v1/audit` answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    /// Only this project's.
    pub project: Option<String>,
    /// Only this actor's.
    pub actor: Option<String>,
    /// Only changes to this kind of thing.
    pub resource: Option<ResourceKind>,
    /// Only changes to the thing with this key or id.
    pub resource_id: Option<String>,
}

impl AuditFilter {
    /// Whether `entry` passes.
    pub fn admits(&self, entry: &AuditEntry) -> bool {
        self.project.as_ref().is_none_or(|p| *p == entry.project)
            && self.actor.as_ref().is_none_or(|a| *a == entry.actor)
            && self.resource.is_none_or(|r| r == entry.resource)
            && self
                .resource_id
                .as_ref()
                .is_none_or(|id| *id == entry.resource_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Role, DEFAULT_PROJECT};

    fn entry() -> AuditEntry {
        let by = Principal {
            id: "config/admin/0".into(),
            role: Role::Admin,
            project: DEFAULT_PROJECT.into(),
        };
        AuditEntry::new(
            &by,
            OffsetDateTime::UNIX_EPOCH,
            "experiment.started",
            ResourceKind::Experiment,
            "checkout",
            Some(serde_json::json!({"status": "draft"})),
            Some(serde_json::json!({"status": "running"})),
        )
    }

    #[test]
    fn a_key_change_is_announced_without_who_or_what_it_holds() {
        let whole = entry();
        assert_eq!(
            whole.announcement().unwrap(),
            Some(serde_json::to_value(&whole).unwrap())
        );
        let key = AuditEntry {
            resource: ResourceKind::Key,
            action: "key.issued".into(),
            ..entry()
        };
        let announced = key.announcement().unwrap().unwrap();
        for hidden in ["actor", "before", "after"] {
            assert!(announced.get(hidden).is_none(), "{announced}");
        }
        assert_eq!(announced["action"], "key.issued");
        assert_eq!(announced["at"], "1970-01-01T00:00:00Z");
        assert_eq!(announced["id"], serde_json::json!(key.id));
        // Another project's keys and the project itself: to nobody.
        for resource in [ResourceKind::Key, ResourceKind::Project] {
            let elsewhere = AuditEntry {
                resource,
                project: "growth".into(),
                ..entry()
            };
            assert_eq!(elsewhere.announcement().unwrap(), None);
        }
        let own = AuditEntry {
            project: "growth".into(),
            ..entry()
        };
        assert!(
            own.announcement().unwrap().is_some(),
            "a project's own changes"
        );
    }

    #[test]
    fn a_filter_admits_only_what_matches_every_field_it_names() {
        let e = entry();
        assert!(AuditFilter::default().admits(&e));
        let all = AuditFilter {
            project: Some("default".into()),
            actor: Some("config/admin/0".into()),
            resource: Some(ResourceKind::Experiment),
            resource_id: Some("checkout".into()),
        };
        assert!(all.admits(&e));
        for miss in [
            AuditFilter {
                project: Some("other".into()),
                ..all.clone()
            },
            AuditFilter {
                actor: Some("key_x".into()),
                ..all.clone()
            },
            AuditFilter {
                resource: Some(ResourceKind::Key),
                ..all.clone()
            },
            AuditFilter {
                resource_id: Some("pricing".into()),
                ..all.clone()
            },
        ] {
            assert!(!miss.admits(&e), "{miss:?}");
        }
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let e = entry();
        let text = serde_json::to_string(&e).unwrap_or_default();
        let back: AuditEntry = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(back, e);
        assert!(text.contains("\"resource\":\"experiment\""), "{text}");
    }
}
