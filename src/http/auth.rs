//! Bearer-key authentication with two scopes. A key is presented as
//! `Authorization: Bearer <key>` or, as OpenFeature's providers send it,
//! `X-API-Key: <key>`.
//!
//! `admin` keys may do everything; `ingest` keys only ask for assignments
//! and send events. Handlers declare what they need by taking an [`Admin`]
//! or [`Ingest`] extractor as their first argument. Presented keys are
//! hashed and compared against every configured key's hash in constant
//! time, so neither a key's content nor its length leaks through timing.
//! With no key configured the server is open, to programs: a request that a
//! browser marks as coming from another site's page (an `Origin` that is
//! not this server's own) is refused, so a page on the web cannot drive an
//! open server on the visitor's machine.
//!
//! Once the caller is known, the same extractor takes a token from its
//! bucket ([`super::limits`]): admin routes and ingest routes each have one
//! bucket per caller.

use std::future::{ready, Ready};

use actix_web::http::header;
use actix_web::{dev::Payload, FromRequest, HttpRequest};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::limits::{Caller, RateLimits};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Admin,
    /// Assignments and events only.
    Ingest,
}

/// The configured keys, hashed.
#[derive(Clone, Default)]
pub struct Keys {
    keys: Vec<([u8; 32], Scope)>,
}

impl Keys {
    /// Hashes the configured keys.
    pub fn new(admin: &[String], ingest: &[String]) -> Self {
        let hashed = |keys: &[String], scope| {
            keys.iter()
                .map(move |k| (digest(k.as_bytes()), scope))
                .collect::<Vec<_>>()
        };
        let mut keys = hashed(admin, Scope::Admin);
        keys.extend(hashed(ingest, Scope::Ingest));
        Self { keys }
    }

    /// No key configured: every request is allowed.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The position and scope of `presented`, checking every key without an
    /// early exit.
    fn find(&self, presented: &[u8]) -> Option<(usize, Scope)> {
        let presented = digest(presented);
        let mut found = None;
        for (i, (key, scope)) in self.keys.iter().enumerate() {
            if bool::from(key.ct_eq(&presented)) {
                found = Some((i, *scope));
            }
        }
        found
    }

    /// Checks the request's bearer key allows `needed`; returns who is
    /// calling, for the rate limits.
    fn authorize(&self, req: &HttpRequest, needed: Scope) -> Result<Caller, ApiError> {
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
        match (self.find(token.as_bytes()), needed) {
            (None, _) => Err(ApiError::Unauthorized),
            (Some((i, Scope::Admin)), _) | (Some((i, Scope::Ingest)), Scope::Ingest) => {
                Ok(Caller::Key(i))
            }
            (Some((_, Scope::Ingest)), Scope::Admin) => Err(ApiError::Forbidden),
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
pub(super) fn authorize(req: &HttpRequest, needed: Scope) -> Result<(), ApiError> {
    let caller = match req.app_data::<Keys>() {
        Some(keys) => keys.authorize(req, needed)?,
        // Keys are registered by `http::configure`; failing closed if not.
        None => return Err(ApiError::Unauthorized),
    };
    match req.app_data::<RateLimits>() {
        Some(limits) => limits.check(needed, caller),
        None => Ok(()),
    }
}

/// Proof that the request carries an admin key (or the server is open).
pub struct Admin;

/// Proof that the request carries an ingest or admin key (or the server is open).
pub struct Ingest;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authorize(req, Scope::Admin).map(|()| Admin))
    }
}

impl FromRequest for Ingest {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authorize(req, Scope::Ingest).map(|()| Ingest))
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn keys() -> Keys {
        Keys::new(
            &["admin-key-0123456789".to_owned()],
            &["ingest-key-0123456789".to_owned()],
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
            .authorize(&with("admin-key-0123456789"), Scope::Admin)
            .is_ok());
        assert!(k
            .authorize(&with("ingest-key-0123456789"), Scope::Ingest)
            .is_ok());
        assert!(matches!(
            k.authorize(&with("ingest-key-0123456789"), Scope::Admin),
            Err(ApiError::Forbidden)
        ));
        assert!(matches!(
            k.authorize(&with("admin-key-012345678"), Scope::Ingest),
            Err(ApiError::Unauthorized)
        ));
        let bare = TestRequest::default().to_http_request();
        assert!(matches!(
            k.authorize(&bare, Scope::Ingest),
            Err(ApiError::Unauthorized)
        ));
    }

    #[test]
    fn open_mode_allows_everything() {
        let open = Keys::new(&[], &[]);
        assert!(open.is_open());
        let bare = TestRequest::default().to_http_request();
        assert!(open.authorize(&bare, Scope::Admin).is_ok());
    }

    fn from(origin: &str, host: &str) -> HttpRequest {
        TestRequest::default()
            .insert_header((header::ORIGIN, origin))
            .insert_header((header::HOST, host))
            .to_http_request()
    }

    #[test]
    fn open_mode_refuses_other_sites_pages() {
        let open = Keys::new(&[], &[]);
        for (origin, host) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://LOCALHOST:8080", "localhost:8080"),
            ("http://example.com", "example.com:80"),
            ("https://example.com:443", "example.com"),
        ] {
            assert!(
                open.authorize(&from(origin, host), Scope::Admin).is_ok(),
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
                    open.authorize(&from(origin, host), Scope::Ingest),
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
            keyed.authorize(&req, Scope::Admin).ok(),
            Some(Caller::Key(0))
        );
    }
}
