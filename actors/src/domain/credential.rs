//! Who may do what: roles, what a request needs of its caller, and API
//! keys issued through the API (stored by their SHA-256 digest, never by
//! their text). Plain data and the rules between them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::ids::{check_printable, NotPrintable};
use crate::domain::{KeyId, ProjectKey};

/// The project that always exists: a single-team install's, and what a
/// credential that names none acts in.
pub const DEFAULT_PROJECT: &str = "default";

/// Most characters of a key's name.
pub const MAX_KEY_NAME_CHARS: usize = 100;

/// Longest grace a rotation may give the replaced secret: a week.
pub const MAX_ROTATION_GRACE_S: u32 = 7 * 24 * 3600;

/// What a credential may do. Each role may do what the roles below it may,
/// but `ingest`, which only assigns and sends events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The whole server: every project, and owner keys.
    Owner,
    /// A project's keys and settings, and everything an editor may.
    Admin,
    /// Change experiments, webhooks, alert rules and alerts; read; ingest.
    Editor,
    /// Read only.
    Viewer,
    /// Assignments and events only.
    Ingest,
}

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// To read: experiments, results, analytics, events, alerts, figures.
    Read,
    /// To change experiments, webhooks, alert rules and alerts.
    Change,
    /// To ask for assignments and send events.
    Ingest,
    /// To manage a project's keys and read its audit log.
    Administer,
    /// To manage projects: the server's owners only.
    Own,
}

impl Role {
    /// Whether a credential of this role may do what a route needs.
    pub fn allows(self, need: Need) -> bool {
        match self {
            Role::Owner => true,
            Role::Admin => need != Need::Own,
            Role::Editor => !matches!(need, Need::Administer | Need::Own),
            Role::Viewer => need == Need::Read,
            Role::Ingest => need == Need::Ingest,
        }
    }

    /// Whether a credential of this role may issue, rotate or revoke a key
    /// of role `other`: only an owner touches owner keys.
    pub fn may_manage(self, other: Role) -> bool {
        match self {
            Role::Owner => true,
            Role::Admin => other != Role::Owner,
            Role::Editor | Role::Viewer | Role::Ingest => false,
        }
    }

    /// The role's name in the API and in tokens' claims.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
            Role::Ingest => "ingest",
        }
    }

    /// The role named `s` (as [`Role::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Self> {
        [
            Role::Owner,
            Role::Admin,
            Role::Editor,
            Role::Viewer,
            Role::Ingest,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Who is calling, once their credential is checked: what changes
/// record as their author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// A key id (`key_…`), a configured key (`config/admin/0`), a token's
    /// subject (`jwt:…`), or `open` when the server runs without keys.
    pub id: std::sync::Arc<str>,
    /// What it may do.
    pub role: Role,
    /// Its project.
    pub project: std::sync::Arc<str>,
}

impl Principal {
    /// abacus itself, acting in `project` (a bandit's updates): recorded
    /// as [`SYSTEM`](super::SYSTEM).
    pub fn system(project: std::sync::Arc<str>) -> Self {
        Self {
            id: super::SYSTEM.into(),
            role: Role::Owner,
            project,
        }
    }

    /// The caller of a server without keys: may do everything.
    pub fn open() -> Self {
        Self {
            id: "open".into(),
            role: Role::Owner,
            project: DEFAULT_PROJECT.into(),
        }
    }
}

// Bodies are read from JSON objects only, never from arrays of their
// fields (domain/objects.rs).
crate::objects_only!(KeyIn);
crate::objects_only!(RotateIn);

/// `POST /v1/keys`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct KeyIn {
    /// What the key is for, for people: 1 to 100 characters without
    /// control characters.
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]{1,100}$")]
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Its project (an existing one); the issuer's by default.
    #[serde(default)]
    pub project: Option<ProjectKey>,
    /// When it stops working (RFC 3339, in the future); never by default.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
}

/// `POST /v1/keys/{id}/rotate`: how long the replaced secret keeps working.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct RotateIn {
    /// Seconds the old secret is still accepted beside the new one, so
    /// clients can move over without a failed request (0, the default,
    /// ends it at once; at most a week).
    #[serde(default)]
    #[schema(maximum = 604800)]
    pub grace_s: u32,
}

/// A secret replaced by a rotation with a grace period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Previous {
    /// Hex SHA-256 of the replaced secret.
    pub digest: String,
    /// When it stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// An API key as stored: its digest, never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// `key_` and 32 hex digits.
    pub id: KeyId,
    /// What it is for.
    pub name: String,
    /// Its project.
    pub project: String,
    /// What it may do.
    pub role: Role,
    /// The secret's first characters, to recognise it by.
    pub prefix: String,
    /// Hex SHA-256 of the secret.
    pub digest: String,
    /// The secret before the last rotation, while its grace lasts.
    pub previous: Option<Previous>,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who issued it: a key id or a token's subject.
    pub created_by: String,
    /// When its secret was last replaced.
    #[serde(with = "time::serde::rfc3339::option")]
    pub rotated_at: Option<OffsetDateTime>,
    /// When it stops working, if ever.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// A key as the API shows it: no secret, no digest.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KeyOut {
    /// Id.
    pub id: KeyId,
    /// What it is for.
    pub name: String,
    /// Its project.
    pub project: String,
    /// What it may do.
    pub role: Role,
    /// The secret's first characters, to recognise it by.
    pub prefix: String,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Who issued it: a key id, a configured key (`config/admin/0`: its
    /// role and position) or a token's subject (`jwt:…`).
    pub created_by: String,
    /// When its secret was last replaced.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub rotated_at: Option<OffsetDateTime>,
    /// Until when the secret replaced by the last rotation still works.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_valid_until: Option<OffsetDateTime>,
    /// When it stops working, if ever.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// Whether it works now (not expired).
    pub active: bool,
}

/// A key just issued or rotated, with its secret: shown this once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyIssued {
    /// The key.
    #[serde(flatten)]
    pub key: KeyOut,
    /// `abk_` and 43 characters: the bearer secret. Only its digest is
    /// kept; it cannot be shown again.
    pub secret: String,
}

impl ApiKey {
    /// The API view at `now`.
    pub fn view(&self, now: OffsetDateTime) -> KeyOut {
        KeyOut {
            id: self.id.clone(),
            name: self.name.clone(),
            project: self.project.clone(),
            role: self.role,
            prefix: self.prefix.clone(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            rotated_at: self.rotated_at,
            previous_valid_until: self
                .previous
                .as_ref()
                .map(|p| p.until)
                .filter(|until| *until > now),
            expires_at: self.expires_at,
            active: self.is_active(now),
        }
    }

    /// Not expired at `now`.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

impl KeyIn {
    /// Checks what the body says, at `now`.
    pub fn validate(&self, now: OffsetDateTime) -> Result<(), (&'static str, String)> {
        check_printable(&self.name, MAX_KEY_NAME_CHARS).map_err(|why| {
            let message = match why {
                NotPrintable::Length => format!("1-{MAX_KEY_NAME_CHARS} characters"),
                NotPrintable::Control => "no control characters".to_owned(),
            };
            ("name", message)
        })?;
        if let Some(at) = self.expires_at.filter(|at| *at <= now) {
            return Err(("expires_at", format!("{at} is not in the future")));
        }
        Ok(())
    }
}

impl RotateIn {
    /// Checks the grace period.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.grace_s > MAX_ROTATION_GRACE_S {
            return Err((
                "grace_s",
                format!("at most {MAX_ROTATION_GRACE_S} seconds (a week)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Role; 5] = [
        Role::Owner,
        Role::Admin,
        Role::Editor,
        Role::Viewer,
        Role::Ingest,
    ];

    #[test]
    fn roles_read_and_write_by_name() {
        for role in ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            let json = serde_json::to_string(&role).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
        }
        assert_eq!(Role::parse("Owner"), None);
        assert_eq!(Role::parse(""), None);
    }

    #[test]
    fn each_role_gets_what_it_needs_and_nothing_more() {
        use Need::*;
        for (role, allowed) in [
            (Role::Owner, vec![Read, Change, Ingest, Administer]),
            (Role::Admin, vec![Read, Change, Ingest, Administer]),
            (Role::Editor, vec![Read, Change, Ingest]),
            (Role::Viewer, vec![Read]),
            (Role::Ingest, vec![Ingest]),
        ] {
            for need in [Read, Change, Ingest, Administer] {
                assert_eq!(
                    role.allows(need),
                    allowed.contains(&need),
                    "{role:?} {need:?}"
                );
            }
        }
    }

    #[test]
    fn only_owners_manage_owner_keys_and_only_admins_manage_keys() {
        for manager in ALL {
            for managed in ALL {
                let expected = match manager {
                    Role::Owner => true,
                    Role::Admin => managed != Role::Owner,
                    _ => false,
                };
                assert_eq!(
                    manager.may_manage(managed),
                    expected,
                    "{manager:?} {managed:?}"
                );
            }
        }
    }

    fn key_in(name: &str, project: Option<&str>) -> KeyIn {
        KeyIn {
            name: name.to_owned(),
            role: Role::Viewer,
            project: project.map(|p| ProjectKey::try_from(p).unwrap_or_else(|e| panic!("{e}"))),
            expires_at: None,
        }
    }

    #[test]
    fn a_key_body_is_checked() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        assert_eq!(key_in("ci", None).validate(now), Ok(()));
        assert_eq!(key_in("ci", Some("growth")).validate(now), Ok(()));
        for (body, field) in [
            (key_in("", None), "name"),
            (key_in(&"x".repeat(101), None), "name"),
            (key_in("a\nb", None), "name"),
            (
                KeyIn {
                    expires_at: Some(now),
                    ..key_in("ci", None)
                },
                "expires_at",
            ),
        ] {
            assert_eq!(body.validate(now).err().map(|e| e.0), Some(field));
        }
        assert!(RotateIn { grace_s: 604_800 }.validate().is_ok());
        assert!(RotateIn { grace_s: 604_801 }.validate().is_err());
    }

    #[test]
    fn a_view_hides_a_lapsed_grace_and_marks_expiry() {
        let t0 = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let key = ApiKey {
            id: KeyId::mint(),
            name: "ci".to_owned(),
            project: DEFAULT_PROJECT.to_owned(),
            role: Role::Editor,
            prefix: "abk_AAAAAAAA".to_owned(),
            digest: "00".repeat(32),
            previous: Some(Previous {
                digest: "11".repeat(32),
                until: t0 + time::Duration::seconds(60),
            }),
            created_at: t0,
            created_by: "config".to_owned(),
            rotated_at: Some(t0),
            expires_at: Some(t0 + time::Duration::seconds(120)),
        };
        let early = key.view(t0);
        assert_eq!(
            early.previous_valid_until,
            Some(t0 + time::Duration::seconds(60))
        );
        assert!(early.active);
        let later = key.view(t0 + time::Duration::seconds(90));
        assert_eq!(later.previous_valid_until, None);
        assert!(later.active);
        assert!(!key.view(t0 + time::Duration::seconds(120)).active);
    }
}
