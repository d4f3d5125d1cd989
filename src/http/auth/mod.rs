//! Who is calling, and whether they may. A credential is presented as
//! `Authorization: Bearer <credential>` or, as OpenFeature's providers
//! send it, `X-API-Key: <credential>`. It is one of:
//!
//! - a key from the configuration (`auth.owner_keys`, `auth.admin_keys`,
//!   ...), of the role its list names;
//! - a key issued through the API (`POST /v1/keys`), stored by its digest
//!   ([`abacus_actors::credentials`]);
//! - a JSON Web Token ([`jwt`]), when `auth.jwt` is configured.
//!
//! Keys are found by the SHA-256 digest of what was presented, in hash
//! tables: timing can at most tell an attacker something about a digest
//! of their own choosing, which brings them no closer to a key.
//!
//! Handlers declare what they need by taking a [`Viewer`], [`Editor`],
//! [`Ingest`] or [`Administrator`] extractor as their first argument; each
//! carries the caller's [`Principal`]. With no key configured and no
//! tokens accepted the server is open, to programs: a request that a
//! browser marks as coming from another site's page (an `Origin` that is
//! not this server's own) is refused, so a page on the web cannot drive an
//! open server on the visitor's machine.
//!
//! Once the caller is known, the same extractor takes a token from its
//! bucket ([`super::limits`]): ingest routes and the others each have one
//! bucket per caller.
//!
//! Every request acts in one project: its credential's. A server-wide
//! credential (an owner's, or any caller of an open server) acts in
//! `default`, or in the project its `X-Abacus-Project` header names; any
//! other credential may send the header only with its own project. The
//! extractor puts the project's engine in the request, for the
//! [`super::scoped::Scoped`] services that follow it.

pub mod jwt;

use std::future::{ready, Ready};
use std::sync::Arc;

use abacus_actors::credentials::{digest, Credentials, SecretDigest};
use abacus_actors::domain::{Need, Principal, Role, DEFAULT_PROJECT};
use abacus_actors::projects::Projects;
use abacus_actors::Engine;
use actix_web::http::header;
use actix_web::{dev::Payload, web, FromRequest, HttpMessage, HttpRequest};

use abacus_config::AuthConfig;

use self::jwt::Tokens;
use super::error::ApiError;
use super::limits::{Caller, RateLimits};

/// Which rate-limit bucket a route draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every route but the ingest ones.
    Admin,
    /// Assignments and events.
    Ingest,
}

/// The bucket a route that needs `need` draws from.
fn scope(need: Need) -> Scope {
    match need {
        Need::Ingest => Scope::Ingest,
        Need::Read | Need::Change | Need::Administer | Need::Own => Scope::Admin,
    }
}

/// Every credential the server accepts.
#[derive(Clone, Default)]
pub struct Keys {
    /// The configured keys, by digest.
    configured: Arc<foldhash::HashMap<SecretDigest, Principal>>,
    /// Keys issued through the API (none in unit tests).
    issued: Option<Arc<Credentials>>,
    /// JWT verification, when configured.
    tokens: Option<Arc<Tokens>>,
}

impl Keys {
    /// The configured keys, hashed, beside the issued keys and tokens.
    pub fn new(
        auth: &AuthConfig,
        issued: Option<Arc<Credentials>>,
        tokens: Option<Arc<Tokens>>,
    ) -> Self {
        let roles = [
            (&auth.owner_keys, Role::Owner),
            (&auth.admin_keys, Role::Admin),
            (&auth.editor_keys, Role::Editor),
            (&auth.viewer_keys, Role::Viewer),
            (&auth.ingest_keys, Role::Ingest),
        ];
        let configured = roles
            .into_iter()
            .flat_map(|(keys, role)| {
                keys.iter().enumerate().map(move |(i, k)| {
                    let principal = Principal {
                        id: format!("config/{}/{i}", role.as_str()).into(),
                        role,
                        project: DEFAULT_PROJECT.into(),
                    };
                    (digest(k.as_bytes()), principal)
                })
            })
            .collect();
        Self {
            configured: Arc::new(configured),
            issued,
            tokens,
        }
    }

    /// No key configured and no tokens accepted: every request is allowed
    /// (and issued keys are ignored).
    pub fn is_open(&self) -> bool {
        self.configured.is_empty() && self.tokens.is_none()
    }

    /// Who presented `credential`.
    fn identify(&self, credential: &str) -> Result<Principal, ApiError> {
        if let Some(tokens) = self
            .tokens
            .as_ref()
            .filter(|_| Tokens::looks_like_jwt(credential))
        {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            return tokens
                .verify(credential, u64::try_from(now).unwrap_or(0))
                .map_err(|e| ApiError::InvalidToken(e.to_string()));
        }
        let digest = digest(credential.as_bytes());
        self.configured
            .get(&digest)
            .cloned()
            .or_else(|| self.issued.as_ref()?.lookup(&digest))
            .ok_or(ApiError::Unauthorized)
    }

    /// The request's credential, if it presents one: `/metrics` serves
    /// anyone, and more to those who say who they are.
    fn presented<'r>(&self, req: &'r HttpRequest) -> Option<&'r str> {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        // OpenFeature's remote evaluation protocol also sends `X-API-Key`.
        bearer.or_else(|| req.headers().get("x-api-key")?.to_str().ok())
    }

    /// Checks the request's credential allows `needed`; returns who is
    /// calling and their rate-limit bucket.
    fn authorize(&self, req: &HttpRequest, needed: Need) -> Result<(Principal, Caller), ApiError> {
        if self.is_open() {
            if cross_site(req) {
                return Err(ApiError::CrossSite);
            }
            return Ok((Principal::open(), Caller::from_peer(req.peer_addr())));
        }
        let credential = self.presented(req).ok_or(ApiError::Unauthorized)?;
        let principal = self.identify(credential)?;
        if !principal.role.allows(needed) {
            return Err(ApiError::Forbidden);
        }
        let caller = Caller::Principal(Arc::clone(&principal.id));
        Ok((principal, caller))
    }
}

/// The request carries an `Origin` that is not this server's own: a
/// browser sent it on behalf of another site's page (or of an opaque
/// origin, `null`). Same origin means the same host and port as the `Host`
/// header (the scheme's default port may be left out of either). Requests
/// without `Origin` (curl, SDKs, same-origin GETs) are not cross-site.
fn cross_site(req: &HttpRequest) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return false;
    };
    let Some((scheme, origin)) = origin.to_str().ok().and_then(|o| o.split_once("://")) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let Some(host) = host else {
        return true;
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    let origin = origin.strip_suffix(default_port).unwrap_or(origin);
    let host = host.strip_suffix(default_port).unwrap_or(host);
    !origin.eq_ignore_ascii_case(host)
}

/// Which projects' series a `/metrics` scrape may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sees {
    /// Every series: an owner, or anyone on an open server.
    Everything,
    /// Series without a `project` label, and this project's.
    Project(Arc<str>),
    /// Series without a `project` label: no credential was presented.
    Unlabelled,
}

/// What the caller of `/metrics` may see: a credential that is presented
/// must be valid (401 otherwise); none at all sees the server's own
/// series, as a Prometheus without a key always has.
pub(super) fn scraper(req: &HttpRequest) -> Result<Sees, ApiError> {
    let keys = req.app_data::<Keys>().ok_or(ApiError::Unauthorized)?;
    if keys.is_open() {
        return Ok(Sees::Everything);
    }
    let Some(credential) = keys.presented(req) else {
        return Ok(Sees::Unlabelled);
    };
    let principal = keys.identify(credential)?;
    Ok(match principal.role {
        Role::Owner => Sees::Everything,
        _ => Sees::Project(principal.project),
    })
}

/// The header a server-wide credential names the project it acts in by.
pub const PROJECT_HEADER: &str = "x-abacus-project";

/// The engine of the project a request acts in, once authorized.
#[derive(Clone)]
pub(super) struct Acting(pub Arc<Engine>);

/// Checks the caller's credential allows `needed` and takes a token from
/// its bucket; who the caller is, in the project the request acts in
/// (whose engine it leaves in the request's extensions).
pub(super) fn authorize(req: &HttpRequest, needed: Need) -> Result<Principal, ApiError> {
    let (mut principal, caller) = match req.app_data::<Keys>() {
        Some(keys) => keys.authorize(req, needed)?,
        // Keys are registered by `http::configure`; failing closed if not.
        None => return Err(ApiError::Unauthorized),
    };
    if let Some(limits) = req.app_data::<RateLimits>() {
        limits.check(scope(needed), caller)?;
    }
    if let Some(named) = req.headers().get(PROJECT_HEADER) {
        let named = named.to_str().map_err(|_| ApiError::Forbidden)?;
        if principal.role == Role::Owner {
            principal.project = named.into();
        } else if named != &*principal.project {
            return Err(ApiError::OtherProject(principal.project.to_string()));
        }
    }
    let projects = req
        .app_data::<web::Data<Projects>>()
        .ok_or(ApiError::Unauthorized)?;
    let engine = projects
        .engine(&principal.project)
        .ok_or_else(|| abacus_actors::Error::ProjectNotFound(principal.project.to_string()))?;
    req.extensions_mut().insert(Acting(engine));
    Ok(principal)
}

/// Proof that the caller may read (or the server is open).
pub struct Viewer(pub Principal);

/// Proof that the caller may change experiments, webhooks and alert
/// rules (or the server is open).
pub struct Editor(pub Principal);

/// Proof that the caller may assign and send events (or the server is
/// open).
pub struct Ingest(pub Principal);

/// Proof that the caller may manage its project's keys (or the server is
/// open).
pub struct Administrator(pub Principal);

/// Proof that the caller is one of the server's owners (or the server is
/// open): projects are theirs to manage.
pub struct Owner(pub Principal);

macro_rules! extractor {
    ($name:ident, $need:expr) => {
        impl FromRequest for $name {
            type Error = ApiError;
            type Future = Ready<Result<Self, ApiError>>;

            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                ready(authorize(req, $need).map($name))
            }
        }
    };
}

extractor!(Viewer, Need::Read);
extractor!(Editor, Need::Change);
extractor!(Ingest, Need::Ingest);
extractor!(Administrator, Need::Administer);
extractor!(Owner, Need::Own);

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn config(keys: &[(&str, Role)]) -> AuthConfig {
        let of = |role| {
            keys.iter()
                .filter(|(_, r)| *r == role)
                .map(|(k, _)| (*k).to_owned())
                .collect()
        };
        let defaults = abacus_config::Config::defaults()
            .unwrap_or_else(|e| panic!("the default configuration: {e}"));
        AuthConfig {
            owner_keys: of(Role::Owner),
            admin_keys: of(Role::Admin),
            editor_keys: of(Role::Editor),
            viewer_keys: of(Role::Viewer),
            ingest_keys: of(Role::Ingest),
            ..defaults.auth
        }
    }

    fn keys() -> Keys {
        Keys::new(
            &config(&[
                ("owner-key-0123456789", Role::Owner),
                ("admin-key-0123456789", Role::Admin),
                ("editor-key-0123456789", Role::Editor),
                ("viewer-key-0123456789", Role::Viewer),
                ("ingest-key-0123456789", Role::Ingest),
            ]),
            None,
            None,
        )
    }

    fn with(token: &str) -> HttpRequest {
        TestRequest::default()
            .insert_header((header::AUTHORIZATION, format!("Bearer {token}")))
            .to_http_request()
    }

    #[test]
    fn scopes_are_enforced() {
        let k = keys();
        assert!(k
            .authorize(&with("admin-key-0123456789"), Need::Change)
            .is_ok());
        assert!(k
            .authorize(&with("ingest-key-0123456789"), Need::Ingest)
            .is_ok());
        assert!(matches!(
            k.authorize(&with("ingest-key-0123456789"), Need::Change),
            Err(ApiError::Forbidden)
        ));
        assert!(matches!(
            k.authorize(&with("admin-key-012345678"), Need::Ingest),
            Err(ApiError::Unauthorized)
        ));
        let bare = TestRequest::default().to_http_request();
        assert!(matches!(
            k.authorize(&bare, Need::Ingest),
            Err(ApiError::Unauthorized)
        ));
    }

    #[test]
    fn each_role_gets_what_it_needs_and_nothing_more() {
        let k = keys();
        for (key, read, change, ingest, administer) in [
            ("owner-key-0123456789", true, true, true, true),
            ("admin-key-0123456789", true, true, true, true),
            ("editor-key-0123456789", true, true, true, false),
            ("viewer-key-0123456789", true, false, false, false),
            ("ingest-key-0123456789", false, false, true, false),
        ] {
            for (need, allowed) in [
                (Need::Read, read),
                (Need::Change, change),
                (Need::Ingest, ingest),
                (Need::Administer, administer),
            ] {
                match k.authorize(&with(key), need) {
                    Ok(_) => assert!(allowed, "{key} may not {need:?}"),
                    Err(ApiError::Forbidden) => assert!(!allowed, "{key} may {need:?}"),
                    Err(other) => panic!("{key} {need:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn open_mode_allows_everything() {
        let open = Keys::new(&config(&[]), None, None);
        assert!(open.is_open());
        let bare = TestRequest::default().to_http_request();
        assert!(open.authorize(&bare, Need::Change).is_ok());
    }

    fn from(origin: &str, host: &str) -> HttpRequest {
        TestRequest::default()
            .insert_header((header::ORIGIN, origin))
            .insert_header((header::HOST, host))
            .to_http_request()
    }

    #[test]
    fn open_mode_refuses_other_sites_pages() {
        let open = Keys::new(&config(&[]), None, None);
        for (origin, host) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://LOCALHOST:8080", "localhost:8080"),
            ("http://example.com", "example.com:80"),
            ("https://example.com:443", "example.com"),
        ] {
            assert!(
                open.authorize(&from(origin, host), Need::Change).is_ok(),
                "{origin} on {host}"
            );
        }
        for (origin, host) in [
            ("http://evil.example", "127.0.0.1:8080"),
            ("http://127.0.0.1:9999", "127.0.0.1:8080"),
            ("http://127.0.0.1", "127.0.0.1:8080"),
            ("null", "127.0.0.1:8080"),
            ("https://example.com", "example.com:80"),
        ] {
            assert!(
                matches!(
                    open.authorize(&from(origin, host), Need::Ingest),
                    Err(ApiError::CrossSite)
                ),
                "{origin} on {host}"
            );
        }
        // With keys, the key is what counts: no Origin rule.
        let keyed = keys();
        let req = TestRequest::default()
            .insert_header((header::ORIGIN, "http://evil.example"))
            .insert_header((header::AUTHORIZATION, "Bearer admin-key-0123456789"))
            .to_http_request();
        let (who, caller) = keyed
            .authorize(&req, Need::Change)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&*who.id, "config/admin/0");
        assert_eq!(caller, Caller::Principal("config/admin/0".into()));
    }
}
