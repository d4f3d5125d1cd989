//! JSON Web Tokens as bearer credentials, verified with `jsonwebtoken`:
//! HS256 with a shared secret, RS256 and ES256 with the public keys of a
//! JWKS file that is read again whenever it changes.
//!
//! Each algorithm is tried only with keys of its own kind (the HS256
//! secret for HS256, RSA keys for RS256, P-256 keys for ES256), so a
//! public key can never be used as an HMAC secret. `exp` is required;
//! `nbf`, `iss` and `aud` are checked; `sub` names the caller in logs and
//! in what it changes. A verified token is remembered until it expires
//! (or the keys change), so each token is verified once, not per request.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use abacus_actors::credentials::{digest, SecretDigest};
use abacus_actors::domain::{Principal, ProjectKey, Role, DEFAULT_PROJECT};
use abacus_config::JwtConfig;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Most characters of a token's `sub`.
const MAX_SUBJECT_CHARS: usize = 256;

/// Why a token was refused, for the 401's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, a bad signature, an unknown key, a failed claim check.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Verified, but it names no role or no usable project.
    #[error("token refused: {0}")]
    Refused(String),
}

/// A public key of the JWKS file, with the one algorithm it verifies.
struct PublicKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// What a file looked like: its modification time and size.
type Stamp = (SystemTime, u64);

/// The JWKS file's keys, and which reading of the file they are.
#[derive(Default)]
struct KeySet {
    generation: u64,
    keys: Vec<PublicKey>,
}

/// Verified tokens, and the key set generation they were verified with.
#[derive(Default)]
struct Cache {
    generation: u64,
    verified: foldhash::HashMap<SecretDigest, Verified>,
}

/// A verified token, until it expires.
#[derive(Clone)]
struct Verified {
    principal: Principal,
    expires_unix: u64,
}

/// The token verifier.
pub struct Tokens {
    hs256: Option<DecodingKey>,
    jwks_file: Option<PathBuf>,
    jwks: ArcSwap<KeySet>,
    /// The JWKS file when it was read at start.
    jwks_read: Option<Stamp>,
    issuer: Option<String>,
    audience: Option<String>,
    project_claim: String,
    role_claim: String,
    leeway_s: u64,
    reload_interval: Duration,
    /// Cleared when the key set changes; a verification that began with
    /// an older key set is not kept.
    cache: Mutex<Cache>,
    cache_entries: usize,
}

impl Tokens {
    /// The verifier the configuration asks for; `None` when JWTs are off.
    /// A JWKS file that cannot be read or holds no usable key is an error
    /// here. Later, a file that cannot be read or parsed is logged and the
    /// last keys kept, but a readable one replaces them, even when it holds
    /// none (that is how every key is withdrawn at once).
    pub fn new(config: &JwtConfig) -> Result<Option<Arc<Self>>, String> {
        if !config.is_on() {
            return Ok(None);
        }
        let jwks_file = (!config.jwks_file.is_empty()).then(|| PathBuf::from(&config.jwks_file));
        let jwks_read = jwks_file.as_deref().and_then(stamp);
        let jwks = match &jwks_file {
            Some(path) => read_key_set(path)?,
            None => Vec::new(),
        };
        if let (Some(path), true) = (&jwks_file, jwks.is_empty()) {
            return Err(format!(
                "{}: no RS256 or ES256 key in the key set",
                path.display()
            ));
        }
        let hs256 = (!config.hs256_secret.is_empty())
            .then(|| DecodingKey::from_secret(config.hs256_secret.as_bytes()))
            .transpose()
            .map_err(|e| format!("auth.jwt.hs256_secret: {e}"))?;
        let some = |s: &String| (!s.is_empty()).then(|| s.clone());
        Ok(Some(Arc::new(Self {
            hs256,
            jwks_file,
            jwks: ArcSwap::from_pointee(KeySet {
                generation: 0,
                keys: jwks,
            }),
            jwks_read,
            issuer: some(&config.issuer),
            audience: some(&config.audience),
            project_claim: config.project_claim.clone(),
            role_claim: config.role_claim.clone(),
            leeway_s: config.leeway_s,
            reload_interval: config.reload_interval_ms.get(),
            cache: Mutex::default(),
            cache_entries: config.cache_entries,
        })))
    }

    /// Whether `token` looks like a JWT (three base64url parts, a JSON
    /// header): only those are verified as tokens.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
    }

    /// Who `token` names, if it verifies at `now_unix`.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Principal, TokenError> {
        let digest = digest(token.as_bytes());
        if let Some(hit) = self.cached(&digest, now_unix) {
            return Ok(hit);
        }
        // Loaded first: what is verified with it is cached only while it
        // is still the key set.
        let set = self.jwks.load();
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("header: {e}")))?;
        let claims = match header.alg {
            Algorithm::HS256 => {
                let key = self.hs256.as_ref().ok_or_else(|| {
                    TokenError::Invalid("HS256 tokens are not accepted here".to_owned())
                })?;
                self.decode(token, key, Algorithm::HS256)?
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                // The error of the last key tried; with none to try, that.
                let mut failure = TokenError::Invalid(format!(
                    "no {:?} key{} in the key set",
                    header.alg,
                    header
                        .kid
                        .as_deref()
                        .map(|kid| format!(" with kid '{}'", kid.escape_debug()))
                        .unwrap_or_default()
                ));
                let verified = set
                    .keys
                    .iter()
                    .filter(|k| k.algorithm == header.alg)
                    .filter(|k| header.kid.is_none() || k.kid == header.kid)
                    .find_map(|k| {
                        self.decode(token, &k.key, header.alg)
                            .map_err(|e| failure = e)
                            .ok()
                    });
                verified.ok_or(failure)?
            }
            other => {
                return Err(TokenError::Invalid(format!(
                    "algorithm {other:?} is not accepted (HS256, RS256, ES256 are)"
                )))
            }
        };
        let verified = self.principal(&claims, now_unix)?;
        self.remember(digest, verified.clone(), set.generation, now_unix);
        Ok(verified.principal)
    }

    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        algorithm: Algorithm,
    ) -> Result<Map<String, Value>, TokenError> {
        let mut validation = Validation::new(algorithm);
        // `exp` and `nbf` are checked on abacus's clock (in `principal`),
        // the same one the cache of verified tokens expires them by.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// The caller a verified token's claims name, if it is valid at
    /// `now_unix`.
    fn principal(
        &self,
        claims: &Map<String, Value>,
        now_unix: u64,
    ) -> Result<Verified, TokenError> {
        let seconds = |claim: &str| match claims.get(claim) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                TokenError::Invalid(format!("'{claim}' must be a whole number of seconds"))
            }),
        };
        let expires_unix =
            seconds("exp")?.ok_or_else(|| TokenError::Invalid("'exp' is required".to_owned()))?;
        if now_unix >= expires_unix.saturating_add(self.leeway_s) {
            return Err(TokenError::Invalid("the token has expired".to_owned()));
        }
        if seconds("nbf")?.is_some_and(|nbf| nbf > now_unix.saturating_add(self.leeway_s)) {
            return Err(TokenError::Invalid(
                "the token is not valid yet ('nbf')".to_owned(),
            ));
        }
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| {
                !s.is_empty()
                    && s.chars().count() <= MAX_SUBJECT_CHARS
                    && !s.chars().any(char::is_control)
            })
            .ok_or_else(|| {
                TokenError::Refused(format!(
                    "'sub' must be 1-{MAX_SUBJECT_CHARS} characters without control characters"
                ))
            })?;
        let role = claims
            .get(&self.role_claim)
            .and_then(Value::as_str)
            .and_then(Role::parse)
            .ok_or_else(|| {
                TokenError::Refused(format!(
                    "claim '{}' must name a role: owner, admin, editor, viewer or ingest",
                    self.role_claim
                ))
            })?;
        // Whether the project exists is asked of each request.
        let project = match claims.get(&self.project_claim) {
            None => DEFAULT_PROJECT,
            Some(Value::String(p)) if ProjectKey::try_from(p.as_str()).is_ok() => p,
            Some(other) => {
                return Err(TokenError::Refused(format!(
                    "claim '{}' must name a project (a-z, 0-9, _ or -), not {other}",
                    self.project_claim
                )))
            }
        };
        Ok(Verified {
            principal: Principal {
                id: format!("jwt:{subject}").into(),
                role,
                project: project.into(),
            },
            expires_unix,
        })
    }

    fn cached(&self, digest: &SecretDigest, now_unix: u64) -> Option<Principal> {
        let cache = self.cache.lock().ok()?;
        let hit = cache.verified.get(digest)?;
        (now_unix < hit.expires_unix.saturating_add(self.leeway_s)).then(|| hit.principal.clone())
    }

    /// Keeps a token verified with key set `generation`, unless the keys
    /// changed since; when the cache is full, drops the expired ones, and
    /// everything if that frees nothing.
    fn remember(&self, digest: SecretDigest, verified: Verified, generation: u64, now_unix: u64) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.generation != generation {
            return;
        }
        let entries = &mut cache.verified;
        if entries.len() >= self.cache_entries {
            let leeway = self.leeway_s;
            entries.retain(|_, v| now_unix < v.expires_unix.saturating_add(leeway));
            if entries.len() >= self.cache_entries {
                entries.clear();
            }
        }
        entries.insert(digest, verified);
    }

    /// Reads the JWKS file again whenever its size or modification time
    /// changes, until the process ends. A file that is gone or cannot be
    /// parsed is logged and the keys read last are kept.
    pub async fn watch(self: Arc<Self>) {
        let Some(path) = self.jwks_file.clone() else {
            return;
        };
        let mut seen = self.jwks_read;
        let mut tick = tokio::time::interval(self.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            if now.is_none() {
                tracing::warn!(path = %path.display(), "the JWKS file is gone; keeping the keys read last");
                continue;
            }
            let read = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_key_set(&path)).await
            };
            match read {
                Ok(Ok(keys)) => {
                    if keys.is_empty() {
                        tracing::warn!(path = %path.display(), "the JWKS file holds no usable key: no RS256 or ES256 token verifies now");
                    } else {
                        tracing::info!(path = %path.display(), keys = keys.len(), "JWKS file read again");
                    }
                    self.replace_keys(keys);
                }
                Ok(Err(e)) => tracing::warn!(
                    error = %e,
                    "the JWKS file changed but cannot be used; keeping the keys read last"
                ),
                Err(_) => return,
            }
        }
    }
}

impl Tokens {
    /// Makes `keys` the key set, and forgets every token verified with the
    /// last one, including any whose verification is under way.
    fn replace_keys(&self, keys: Vec<PublicKey>) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let generation = cache.generation + 1;
        self.jwks.store(Arc::new(KeySet { generation, keys }));
        cache.generation = generation;
        cache.verified.clear();
    }
}

/// The file's modification time and size, if it can be read.
fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The RS256 and ES256 keys of a JWKS file (perhaps none); other kinds of
/// keys are skipped with a warning.
fn read_key_set(path: &std::path::Path) -> Result<Vec<PublicKey>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a JWKS document: {e}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => {
                tracing::warn!(kid = ?kid, "skipping a JWKS key that is neither RSA nor P-256");
                continue;
            }
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(PublicKey {
                kid,
                algorithm,
                key,
            }),
            Err(e) => tracing::warn!(kid = ?kid, error = %e, "skipping an unreadable JWKS key"),
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "hs256-test-secret-0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn config() -> JwtConfig {
        JwtConfig {
            hs256_secret: SECRET.to_owned(),
            jwks_file: String::new(),
            issuer: "https://idp.test".to_owned(),
            audience: "abacus".to_owned(),
            project_claim: "project".to_owned(),
            role_claim: "role".to_owned(),
            leeway_s: 0,
            reload_interval_ms: serde_json::from_value(json!(1000))
                .unwrap_or_else(|e| panic!("{e}")),
            cache_entries: 2,
        }
    }

    fn secret_key(secret: &[u8]) -> EncodingKey {
        EncodingKey::from_secret(secret).unwrap_or_else(|e| panic!("{e}"))
    }

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &secret_key(SECRET.as_bytes()),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn good() -> Value {
        json!({"sub": "ana", "role": "editor", "iss": "https://idp.test", "aud": "abacus", "exp": NOW + 60})
    }

    fn with(change: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut claims = good();
        if let Value::Object(map) = &mut claims {
            change(map);
        }
        token(claims)
    }

    fn tokens() -> Arc<Tokens> {
        Tokens::new(&config())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("on"))
    }

    #[test]
    fn a_good_token_names_its_subject_role_and_project() {
        let t = tokens();
        let who = t
            .verify(&token(good()), NOW)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&*who.id, "jwt:ana");
        assert_eq!(who.role, Role::Editor);
        assert_eq!(&*who.project, DEFAULT_PROJECT);
        assert!(Tokens::looks_like_jwt(&token(good())));
        assert!(!Tokens::looks_like_jwt("abk_notatoken"));
    }

    #[test]
    fn every_claim_is_checked() {
        let t = tokens();
        for (why, bad) in [
            (
                "expired",
                with(|c| drop(c.insert("exp".into(), json!(NOW - 1)))),
            ),
            ("no exp", with(|c| drop(c.remove("exp")))),
            (
                "not yet",
                with(|c| drop(c.insert("nbf".into(), json!(NOW + 30)))),
            ),
            (
                "issuer",
                with(|c| drop(c.insert("iss".into(), json!("https://evil.test")))),
            ),
            ("no issuer", with(|c| drop(c.remove("iss")))),
            (
                "audience",
                with(|c| drop(c.insert("aud".into(), json!("other")))),
            ),
            ("no audience", with(|c| drop(c.remove("aud")))),
            ("no subject", with(|c| drop(c.remove("sub")))),
            ("no role", with(|c| drop(c.remove("role")))),
            (
                "bad role",
                with(|c| drop(c.insert("role".into(), json!("root")))),
            ),
            (
                "project",
                with(|c| drop(c.insert("project".into(), json!("Not A Key")))),
            ),
        ] {
            assert!(t.verify(&bad, NOW).is_err(), "{why} was accepted");
        }
        let signed_elsewhere = encode(
            &Header::new(Algorithm::HS256),
            &good(),
            &secret_key(b"another-secret-0123456789abcdefgh"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(t.verify(&signed_elsewhere, NOW).is_err());
        // RS256 without a key set: no key to try.
        let rs = format!(
            "eyJhbGciOiJSUzI1NiJ9.{}",
            token(good()).split_once('.').map_or("", |p| p.1)
        );
        assert!(t.verify(&rs, NOW).is_err());
    }

    #[test]
    fn a_verification_begun_with_replaced_keys_is_not_kept() {
        let t = tokens();
        let cached = |t: &Tokens| t.cache.lock().map_or(0, |c| c.verified.len());
        assert!(t.verify(&token(good()), NOW).is_ok());
        assert_eq!(cached(&t), 1);
        t.replace_keys(Vec::new());
        assert_eq!(cached(&t), 0);
        // A verification that loaded the old keys ends after the swap.
        let verified = Verified {
            principal: Principal::open(),
            expires_unix: NOW + 60,
        };
        t.remember(digest(b"late"), verified.clone(), 0, NOW);
        assert_eq!(cached(&t), 0);
        t.remember(digest(b"late"), verified, 1, NOW);
        assert_eq!(cached(&t), 1);
    }

    #[test]
    fn a_cached_token_still_expires() {
        let t = tokens();
        let short = with(|c| drop(c.insert("exp".into(), json!(NOW + 5))));
        assert!(t.verify(&short, NOW).is_ok());
        assert!(t.verify(&short, NOW + 4).is_ok());
        assert!(t.verify(&short, NOW + 5).is_err());
        // The cache stays within its bound.
        for i in 0..5 {
            let other = with(|c| drop(c.insert("sub".into(), json!(format!("u{i}")))));
            assert!(t.verify(&other, NOW).is_ok());
        }
        assert!(t.cache.lock().map_or(0, |c| c.verified.len()) <= 2);
    }
}
