//! Bearer-key authentication with roles. A key is presented as
//! `Authorization: Bearer <key>` or, as OpenFeature's providers send it,
//! `X-API-Key: <key>`.
//!
//! A key has a [`Role`]: `admin` and `editor` keys may do everything there
//! is a route for today (admin-only routes, keys and projects, are to
//! come), `viewer` keys only read, `ingest` keys only ask for assignments
//! and send events. Handlers declare what they need by taking a
//! [`Viewer`], [`Editor`] or [`Ingest`] extractor as their first argument. Presented keys are
//! hashed and compared against every configured key's hash in constant
//! time, so neither a key's content nor its length leaks through timing.
//! With no key configured the server is open, to programs: a request that a
//! browser marks as coming from another site's page (an `Origin` that is
//! not this server's own) is refused, so a page on the web cannot drive an
//! open server on the visitor's machine.
//!
//! Once the caller is known, the same extractor takes a token from its
//! bucket ([`super::limits`]): ingest routes and the others each have one
//! bucket per caller.

use std::future::{ready, Ready};

use actix_web::http::header;
use actix_web::{dev::Payload, FromRequest, HttpRequest};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use abacus_config::AuthConfig;

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

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Change experiments, webhooks and alert rules; read; ingest.
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
}

impl Role {
    /// Whether a key of this role may do what a route needs.
    pub fn allows(self, need: Need) -> bool {
        match self {
            Role::Admin | Role::Editor => true,
            Role::Viewer => need == Need::Read,
            Role::Ingest => need == Need::Ingest,
        }
    }
}

impl Need {
    /// The bucket it draws from.
    fn scope(self) -> Scope {
        match self {
            Need::Read | Need::Change => Scope::Admin,
            Need::Ingest => Scope::Ingest,
        }
    }
}

/// The configured keys, hashed.
#[derive(Clone, Default)]
pub struct Keys {
    keys: Vec<([u8; 32], Role)>,
}

impl Keys {
    /// Hashes the configured keys.
    pub fn new(auth: &AuthConfig) -> Self {
        let roles = [
            (&auth.admin_keys, Role::Admin),
            (&auth.editor_keys, Role::Editor),
            (&auth.viewer_keys, Role::Viewer),
            (&auth.ingest_keys, Role::Ingest),
        ];
        let keys = roles
            .into_iter()
            .flat_map(|(keys, role)| keys.iter().map(move |k| (digest(k.as_bytes()), role)))
            .collect();
        Self { keys }
    }

    /// No key configured: every request is allowed.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The position and role of `presented`, checking every key without an
    /// early exit.
    fn find(&self, presented: &[u8]) -> Option<(usize, Role)> {
        let presented = digest(presented);
        let mut found = None;
        for (i, (key, role)) in self.keys.iter().enumerate() {
            if bool::from(key.ct_eq(&presented)) {
                found = Some((i, *role));
            }
        }
        found
    }

    /// Checks the request's bearer key allows `needed`; returns who is
    /// calling, for the rate limits.
    fn authorize(&self, req: &HttpRequest, needed: Need) -> Result<Caller, ApiError> {
        if self.is_open() {
            if cross_site(req) {
                return Err(ApiError::CrossSite);
            }
            return Ok(Caller::from_peer(req.peer_addr()));
        }
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        // OpenFeature's remote evaluation protocol also sends `X-API-Key`.
        let token = bearer
            .or_else(|| req.headers().get("x-api-key")?.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        match self.find(token.as_bytes()) {
            None => Err(ApiError::Unauthorized),
            Some((i, role)) if role.allows(needed) => Ok(Caller::Key(i)),
            Some(_) => Err(ApiError::Forbidden),
        }
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

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Checks the caller's key allows `needed` and takes a token from its
/// bucket.
pub(super) fn authorize(req: &HttpRequest, needed: Need) -> Result<(), ApiError> {
    let caller = match req.app_data::<Keys>() {
        Some(keys) => keys.authorize(req, needed)?,
        // Keys are registered by `http::configure`; failing closed if not.
        None => return Err(ApiError::Unauthorized),
    };
    match req.app_data::<RateLimits>() {
        Some(limits) => limits.check(needed.scope(), caller),
        None => Ok(()),
    }
}

/// Proof that the caller's key may read (or the server is open).
pub struct Viewer;

/// Proof that the caller's key may change experiments, webhooks and alert
/// rules (or the server is open).
pub struct Editor;

/// Proof that the caller's key may assign and send events (or the server
/// is open).
pub struct Ingest;

macro_rules! extractor {
    ($name:ident, $need:expr) => {
        impl FromRequest for $name {
            type Error = ApiError;
            type Future = Ready<Result<Self, ApiError>>;

            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                ready(authorize(req, $need).map(|()| $name))
            }
        }
    };
}

extractor!(Viewer, Need::Read);
extractor!(Editor, Need::Change);
extractor!(Ingest, Need::Ingest);

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
        AuthConfig {
            allow_open: false,
            admin_keys: of(Role::Admin),
            editor_keys: of(Role::Editor),
            viewer_keys: of(Role::Viewer),
            ingest_keys: of(Role::Ingest),
        }
    }

    fn keys() -> Keys {
        Keys::new(&config(&[
            ("admin-key-0123456789", Role::Admin),
            ("editor-key-0123456789", Role::Editor),
            ("viewer-key-0123456789", Role::Viewer),
            ("ingest-key-0123456789", Role::Ingest),
        ]))
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
        for (key, read, change, ingest) in [
            ("admin-key-0123456789", true, true, true),
            ("editor-key-0123456789", true, true, true),
            ("viewer-key-0123456789", true, false, false),
            ("ingest-key-0123456789", false, false, true),
        ] {
            for (need, allowed) in [
                (Need::Read, read),
                (Need::Change, change),
                (Need::Ingest, ingest),
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
        let open = Keys::new(&config(&[]));
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
        let open = Keys::new(&config(&[]));
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
        assert_eq!(
            keyed.authorize(&req, Need::Change).ok(),
            Some(Caller::Key(0))
        );
    }
}
