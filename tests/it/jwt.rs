//! JWT sign-in: tokens made by PyJWT, as an identity provider makes them
//! (tests/jwt/tokens.py), signed with HS256 and with RS256/ES256 keys of a
//! JWKS file that the server reads again when it changes.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::{error_code, python, TestServer};

const SECRET: &str = "hs256-shared-secret-0123456789abcdef";
const ISSUER: &str = "https://idp.example.test";
const AUDIENCE: &str = "abacus";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Fresh keys `kids` in `dir` (the JWKS file replaced whole).
fn make_keys(dir: &Path, kids: &[&str]) {
    let mut args = vec!["keys", dir.to_str().unwrap()];
    args.extend_from_slice(kids);
    python("tests/jwt/tokens.py", &args);
}

/// Tokens signed as `specs` say.
fn sign(dir: &Path, specs: Value) -> Vec<String> {
    let out = python(
        "tests/jwt/tokens.py",
        &["sign", dir.to_str().unwrap(), &specs.to_string()],
    );
    serde_json::from_slice(&out).unwrap()
}

/// Good claims for `sub` with `role`, with `change` applied.
fn claims(sub: &str, role: &str, change: Value) -> Value {
    let mut claims = json!({
        "sub": sub, "role": role, "iss": ISSUER, "aud": AUDIENCE,
        "iat": now(), "exp": now() + 600,
    });
    for (k, v) in change.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn hs(claims: Value) -> Value {
    json!({"alg": "HS256", "secret": SECRET, "claims": claims})
}

fn server(dir: &Path) -> TestServer {
    let jwks = dir.join("jwks.json");
    TestServer::start_with(&[
        ("ABACUS_AUTH__JWT__HS256_SECRET", SECRET),
        ("ABACUS_AUTH__JWT__JWKS_FILE", jwks.to_str().unwrap()),
        ("ABACUS_AUTH__JWT__ISSUER", ISSUER),
        ("ABACUS_AUTH__JWT__AUDIENCE", AUDIENCE),
        ("ABACUS_AUTH__JWT__RELOAD_INTERVAL_MS", "100"),
    ])
}

#[test]
fn tokens_of_each_algorithm_carry_their_role() {
    let keys = tempfile::tempdir().unwrap();
    make_keys(keys.path(), &["rsa-1", "ec-1"]);
    let mut server = server(keys.path());
    let tokens = sign(
        keys.path(),
        json!([
            hs(claims("vera", "viewer", json!({}))),
            {"alg": "RS256", "kid": "rsa-1", "claims": claims("ed", "editor", json!({}))},
            {"alg": "ES256", "kid": "ec-1", "claims": claims("ingo", "ingest", json!({}))},
            hs(claims("ada", "admin", json!({}))),
        ]),
    );
    let [viewer, editor, ingest, admin] = [&tokens[0], &tokens[1], &tokens[2], &tokens[3]];

    // Without a token the server is not open: a JWT configuration alone
    // closes it.
    assert_eq!(server.get("/v1/experiments").0, 401);

    server.use_token(Some(editor));
    server.running_experiment("jwt", json!({}));
    let (status, body) = server.get("/v1/experiments/jwt");
    assert_eq!((status, body["status"].as_str()), (200, Some("running")));

    server.use_token(Some(viewer));
    assert_eq!(server.get("/v1/experiments/jwt").0, 200);
    let (status, body) = server.post_empty("/v1/experiments/jwt/pause");
    assert_eq!((status, error_code(&body)), (403, "forbidden"));

    server.use_token(Some(ingest));
    assert_eq!(server.assign("jwt", "u1")["experiment"], "jwt");
    assert_eq!(server.get("/v1/experiments").0, 403);

    // What a token changes is recorded as its subject's doing.
    server.use_token(Some(admin));
    let (status, issued) = server.post("/v1/keys", json!({"name": "from sso", "role": "viewer"}));
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["created_by"], "jwt:ada");
}

#[test]
fn every_claim_is_checked_and_a_refusal_says_why() {
    let keys = tempfile::tempdir().unwrap();
    make_keys(keys.path(), &["rsa-1"]);
    let mut server = server(keys.path());
    let cases = [
        (
            "expired",
            hs(claims("a", "viewer", json!({"exp": now() - 120}))),
        ),
        ("no exp", hs(claims("a", "viewer", json!({"exp": null})))),
        (
            "not yet valid",
            hs(claims("a", "viewer", json!({"nbf": now() + 3600}))),
        ),
        (
            "wrong issuer",
            hs(claims("a", "viewer", json!({"iss": "https://evil.test"}))),
        ),
        (
            "wrong audience",
            hs(claims("a", "viewer", json!({"aud": "other"}))),
        ),
        (
            "no subject",
            hs(claims("a", "viewer", json!({"sub": null}))),
        ),
        ("no role", hs(claims("a", "viewer", json!({"role": null})))),
        ("unknown role", hs(claims("a", "root", json!({})))),
        (
            "a project that is no project key",
            hs(claims("a", "viewer", json!({"project": "Growth Team"}))),
        ),
        (
            "another secret",
            json!({"alg": "HS256", "secret": "not-the-secret-0123456789abcdefghij",
                   "claims": claims("a", "viewer", json!({}))}),
        ),
        (
            "unknown kid",
            json!({"alg": "RS256", "kid": "rsa-1", "claims": claims("a", "viewer", json!({}))}),
        ),
    ];
    let specs: Vec<Value> = cases.iter().map(|(_, s)| s.clone()).collect();
    let mut tokens = sign(keys.path(), Value::Array(specs));
    // The last one names a kid the key set does not hold.
    let forged = tokens.pop().unwrap();
    let mut parts: Vec<&str> = forged.split('.').collect();
    let header = base64_url(&json!({"alg": "RS256", "kid": "rsa-9", "typ": "JWT"}).to_string());
    parts[0] = &header;
    tokens.push(parts.join("."));
    for ((why, _), token) in cases.iter().zip(&tokens) {
        server.use_token(Some(token));
        let response = server
            .request(reqwest::Method::GET, "/v1/experiments")
            .send()
            .unwrap();
        assert_eq!(response.status(), 401, "{why}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.contains("invalid_token"), "{why}: {challenge}");
        let body: Value = response.json().unwrap();
        assert_eq!(error_code(&body), "invalid_token", "{why}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // A well-formed project that does not exist is not found.
    let growth = sign(
        keys.path(),
        json!([hs(claims("a", "viewer", json!({"project": "growth"})))]),
    );
    server.use_token(Some(&growth[0]));
    let (status, body) = server.get("/v1/experiments");
    assert_eq!((status, error_code(&body)), (404, "project_not_found"));
}

#[test]
fn a_changed_key_set_is_read_again_and_its_old_keys_stop_working() {
    let keys = tempfile::tempdir().unwrap();
    make_keys(keys.path(), &["rsa-1"]);
    let mut server = server(keys.path());
    let old = sign(
        keys.path(),
        json!([{"alg": "RS256", "kid": "rsa-1", "claims": claims("a", "viewer", json!({}))}]),
    );
    server.use_token(Some(&old[0]));
    assert_eq!(server.get("/v1/experiments").0, 200);

    // The provider rotates: a new key, the old one gone.
    make_keys(keys.path(), &["ec-2"]);
    let new = sign(
        keys.path(),
        json!([{"alg": "ES256", "kid": "ec-2", "claims": claims("a", "viewer", json!({}))}]),
    );
    server.use_token(Some(&new[0]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.get("/v1/experiments").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the new key set was not read:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server.use_token(Some(&old[0]));
    assert_eq!(
        server.get("/v1/experiments").0,
        401,
        "a token of a removed key still works"
    );

    // A broken file is logged, and the keys read last are kept.
    std::fs::write(keys.path().join("jwks.json"), "{not json").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains("cannot be used") {
        assert!(Instant::now() < deadline, "the broken file was not noticed");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.use_token(Some(&new[0]));
    assert_eq!(server.get("/v1/experiments").0, 200);

    // A file that is gone is logged, and the keys read last are kept.
    std::fs::remove_file(keys.path().join("jwks.json")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains("JWKS file is gone") {
        assert!(
            Instant::now() < deadline,
            "the missing file was not noticed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.get("/v1/experiments").0, 200);

    // An empty key set withdraws every key at once.
    std::fs::write(keys.path().join("jwks.json"), r#"{"keys": []}"#).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.get("/v1/experiments").0 != 401 {
        assert!(
            Instant::now() < deadline,
            "an emptied key set kept its keys:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_server_whose_key_set_cannot_be_read_does_not_start() {
    let missing = "/nonexistent/jwks.json";
    let (code, log) = crate::common::serve_expecting_exit(
        &[("ABACUS_AUTH__JWT__JWKS_FILE", missing)],
        Duration::from_secs(30),
    );
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains(missing), "{log}");
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}
