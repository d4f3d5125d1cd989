//! Projects: the namespaces a server's teams work in. Every experiment,
//! event, unit, result, webhook, alert and stream belongs to one; each
//! credential names the one it acts in. `default` always exists, so a
//! single-team install never names one.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::ids::{check_printable, NotPrintable};
use crate::domain::{ProjectKey, QuotaOverrides, QuotaPatch, DEFAULT_PROJECT};

/// Most characters of a project's name and description.
pub const MAX_PROJECT_NAME_CHARS: usize = 200;

/// A project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Project {
    /// Unique, immutable: `[a-z0-9_-]{1,64}`.
    pub key: ProjectKey,
    /// For people.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    /// Its own quotas; the server's configuration sets the others.
    #[serde(default)]
    pub quotas: QuotaOverrides,
}

impl Project {
    /// The `default` project, as a store that predates projects gets it.
    pub fn default_at(now: OffsetDateTime) -> Self {
        Self {
            key: ProjectKey::try_from(DEFAULT_PROJECT).unwrap_or_else(|_| unreachable!()),
            name: "Default".to_owned(),
            description: None,
            created_at: now,
            updated_at: now,
            quotas: QuotaOverrides::default(),
        }
    }

    /// A new project from `input`, at `now`.
    pub fn create(input: ProjectIn, now: OffsetDateTime) -> Result<Self, (&'static str, String)> {
        check_text("name", &input.name)?;
        if let Some(description) = &input.description {
            check_text("description", description)?;
        }
        input.quotas.check()?;
        Ok(Self {
            name: input.name,
            key: input.key,
            description: input.description,
            created_at: now,
            updated_at: now,
            quotas: input.quotas,
        })
    }

    /// This project with `patch` applied, at `now`.
    pub fn patched(
        &self,
        patch: ProjectPatch,
        now: OffsetDateTime,
    ) -> Result<Self, (&'static str, String)> {
        let mut next = self.clone();
        if let Some(name) = patch.name {
            check_text("name", &name)?;
            next.name = name;
        }
        if let Some(description) = patch.description {
            if let Some(text) = &description {
                check_text("description", text)?;
            }
            next.description = description;
        }
        if let Some(quotas) = patch.quotas {
            next.quotas = next.quotas.patched(quotas);
            next.quotas.check()?;
        }
        next.updated_at = now;
        Ok(next)
    }
}

fn check_text(field: &'static str, text: &str) -> Result<(), (&'static str, String)> {
    check_printable(text, MAX_PROJECT_NAME_CHARS).map_err(|why| {
        let message = match why {
            NotPrintable::Length => format!("1-{MAX_PROJECT_NAME_CHARS} characters"),
            NotPrintable::Control => "no control characters".to_owned(),
        };
        (field, message)
    })
}

/// `POST /v1/projects`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct ProjectIn {
    /// Unique, immutable: `[a-z0-9_-]{1,64}`.
    pub key: ProjectKey,
    /// For people: 1 to 200 characters without control characters.
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]{1,200}$")]
    pub name: String,
    /// Free text: 1 to 200 characters without control characters.
    #[serde(default)]
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]{1,200}$")]
    pub description: Option<String>,
    /// Its own quotas (absent: the server's).
    #[serde(default)]
    pub quotas: QuotaOverrides,
}

/// `PATCH /v1/projects/{key}`: what is present changes; a `null`
/// description clears it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct ProjectPatch {
    /// A new name.
    #[serde(default)]
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]{1,200}$")]
    pub name: Option<String>,
    /// A new description, or `null` to clear it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^[^\u0000-\u001f\u007f-\u009f]{1,200}$")]
    pub description: Option<Option<String>>,
    /// Quotas to set (a value) or give back to the server's (`null`).
    #[serde(default)]
    pub quotas: Option<QuotaPatch>,
}

/// A field that is present, `null` or not.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

crate::objects_only!(ProjectIn, ProjectPatch);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str) -> ProjectIn {
        ProjectIn {
            key: ProjectKey::try_from("growth").unwrap_or_else(|e| panic!("{e}")),
            name: name.to_owned(),
            description: None,
            quotas: QuotaOverrides::default(),
        }
    }

    #[test]
    fn a_project_needs_a_printable_name_and_patches_keep_what_is_absent() {
        let at = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(
            Project::create(input(""), at).map(|_| ()),
            Err(("name", "1-200 characters".to_owned()))
        );
        assert!(Project::create(input("a\u{7}"), at).is_err());
        let p = Project::create(input("Growth"), at).unwrap_or_else(|e| panic!("{e:?}"));
        let later = at + time::Duration::seconds(5);
        let described: ProjectPatch =
            serde_json::from_value(serde_json::json!({"description": "the growth team"}))
                .unwrap_or_else(|e| panic!("{e}"));
        let q = p
            .patched(described, later)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (q.name.as_str(), q.description.as_deref()),
            ("Growth", Some("the growth team"))
        );
        assert_eq!((q.created_at, q.updated_at), (at, later));
        let cleared: ProjectPatch =
            serde_json::from_value(serde_json::json!({"description": null}))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.patched(cleared, later).map(|p| p.description), Ok(None));
        let unknown = serde_json::from_value::<ProjectPatch>(serde_json::json!({"key": "x"}));
        assert!(unknown.is_err());
    }
}
