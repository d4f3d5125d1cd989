//! Bearer-key authentication with two scopes.
//!
//! `admin` keys may do everything; `ingest` keys only ask for assignments
//! and send events. Handlers declare what they need by taking an [`Admin`]
//! or [`Ingest`] extractor as their first argument. Presented keys are
//! hashed and compared against every configured key's hash in constant
//! time, so neither a key's content nor its length leaks through timing.
//! With no key configured the server is open.

use std::future::{ready, Ready};

use actix_web::http::header;
use actix_web::{dev::Payload, FromRequest, HttpRequest};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;

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

    /// The scope of `presented`, checking every key without an early exit.
    fn scope_of(&self, presented: &[u8]) -> Option<Scope> {
        let presented = digest(presented);
        let mut found = None;
        for (key, scope) in &self.keys {
            if bool::from(key.ct_eq(&presented)) {
                found = Some(*scope);
            }
        }
        found
    }

    /// Checks the request's bearer key allows `needed`.
    fn authorize(&self, req: &HttpRequest, needed: Scope) -> Result<(), ApiError> {
        if self.is_open() {
            return Ok(());
        }
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or(ApiError::Unauthorized)?;
        match (self.scope_of(token.as_bytes()), needed) {
            (None, _) => Err(ApiError::Unauthorized),
            (Some(Scope::Admin), _) | (Some(Scope::Ingest), Scope::Ingest) => Ok(()),
            (Some(Scope::Ingest), Scope::Admin) => Err(ApiError::Forbidden),
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn authorize(req: &HttpRequest, needed: Scope) -> Result<(), ApiError> {
    match req.app_data::<Keys>() {
        Some(keys) => keys.authorize(req, needed),
        // Keys are registered by `http::configure`; failing closed if not.
        None => Err(ApiError::Unauthorized),
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
}
