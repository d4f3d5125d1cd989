//! Keys issued through the API: issue, list, rotate, revoke; who may
//! manage which; bounds; and that all of it holds across a restart.

use serde_json::{json, Value};

use crate::common::{error_code, TestServer};

const OWNER: &str = "owner-secret-0123456789";
const ADMIN: &str = "admin-secret-0123456789";
const EDITOR: &str = "editor-secret-0123456789";

fn secured(extra: &[(&str, &str)]) -> TestServer {
    let mut env = vec![
        ("ABACUS_AUTH__OWNER_KEYS", format!("[\"{OWNER}\"]")),
        ("ABACUS_AUTH__ADMIN_KEYS", format!("[\"{ADMIN}\"]")),
        ("ABACUS_AUTH__EDITOR_KEYS", format!("[\"{EDITOR}\"]")),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestServer::start_with(&env)
}

/// Issues a key as the current caller; its id and secret.
fn issue(server: &TestServer, body: Value) -> (String, String) {
    let (status, issued) = server.post("/v1/keys", body);
    assert_eq!(status, 201, "{issued}");
    (
        issued["id"].as_str().unwrap().to_owned(),
        issued["secret"].as_str().unwrap().to_owned(),
    )
}

/// The status `GET /v1/experiments` answers `secret`.
fn reads(server: &mut TestServer, secret: &str) -> u16 {
    server.use_token(Some(secret));
    server.get("/v1/experiments").0
}

#[test]
fn an_issued_key_works_for_its_role_is_listed_without_its_secret_and_stops_when_revoked() {
    let mut server = secured(&[]);
    server.use_token(Some(ADMIN));
    let (status, issued) = server.post("/v1/keys", json!({"name": "dashboard", "role": "viewer"}));
    assert_eq!(status, 201, "{issued}");
    let id = issued["id"].as_str().unwrap().to_owned();
    let secret = issued["secret"].as_str().unwrap().to_owned();
    assert!(id.starts_with("key_"), "{id}");
    assert!(secret.starts_with("abk_"), "{secret}");
    assert_eq!(issued["role"], "viewer");
    assert_eq!(issued["project"], "default");
    assert_eq!(issued["created_by"], "config/admin/0");
    assert_eq!(issued["prefix"], secret[..12]);

    // The secret reads, but may not change anything.
    assert_eq!(reads(&mut server, &secret), 200);
    let (status, body) = server.post("/v1/experiments", json!({"key": "x"}));
    assert_eq!((status, error_code(&body)), (403, "forbidden"));

    // Listed and read without the secret, by the admin.
    server.use_token(Some(ADMIN));
    let (status, listed) = server.get("/v1/keys");
    assert_eq!(status, 200);
    let text = listed.to_string();
    assert!(!text.contains(&secret[4..]), "{text}");
    assert!(!text.contains("digest"), "{text}");
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], id.as_str());
    assert_eq!(keys[0]["active"], true);
    let (status, one) = server.get(&format!("/v1/keys/{id}"));
    assert_eq!(status, 200);
    assert_eq!(one["name"], "dashboard");
    assert!(one.get("secret").is_none());

    // Revoked: the secret stops at once.
    let (status, revoked) = server.delete(&format!("/v1/keys/{id}"));
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(reads(&mut server, &secret), 401);
    server.use_token(Some(ADMIN));
    assert_eq!(server.get(&format!("/v1/keys/{id}")).0, 404);
    assert_eq!(server.delete(&format!("/v1/keys/{id}")).0, 404);
}

#[test]
fn a_rotation_gives_a_new_secret_and_keeps_the_old_one_only_for_its_grace() {
    let mut server = secured(&[]);
    server.use_token(Some(ADMIN));
    let (id, first) = issue(&server, json!({"name": "sdk", "role": "ingest"}));
    let (status, rotated) = server.post(&format!("/v1/keys/{id}/rotate"), json!({"grace_s": 3600}));
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(rotated["id"], id.as_str());
    assert!(rotated["previous_valid_until"].is_string(), "{rotated}");
    for secret in [&first, &second] {
        server.use_token(Some(secret));
        let (status, _) = server.post("/v1/assignments", json!({"unit_id": "u1"}));
        assert_eq!(status, 200);
    }
    // Without a body, no grace: the secret before stops at once.
    server.use_token(Some(ADMIN));
    let (status, rotated) = server.post_empty(&format!("/v1/keys/{id}/rotate"));
    assert_eq!(status, 200, "{rotated}");
    let third = rotated["secret"].as_str().unwrap().to_owned();
    assert!(rotated["previous_valid_until"].is_null(), "{rotated}");
    for (secret, works) in [(&first, false), (&second, false), (&third, true)] {
        server.use_token(Some(secret));
        let (status, _) = server.post("/v1/assignments", json!({"unit_id": "u1"}));
        assert_eq!(status == 200, works, "{status}");
    }
    server.use_token(Some(ADMIN));
    let (status, body) = server.post(
        &format!("/v1/keys/{id}/rotate"),
        json!({"grace_s": 604_801}),
    );
    assert_eq!((status, error_code(&body)), (422, "validation_failed"));
}

#[test]
fn only_admins_manage_keys_and_only_owners_manage_owner_keys() {
    let mut server = secured(&[]);
    // An editor may not even list keys.
    server.use_token(Some(EDITOR));
    for (status, body) in [
        server.get("/v1/keys"),
        server.post("/v1/keys", json!({"name": "x", "role": "viewer"})),
    ] {
        assert_eq!((status, error_code(&body)), (403, "forbidden"));
    }
    // An admin may not issue an owner key; an owner may.
    server.use_token(Some(ADMIN));
    let (status, body) = server.post("/v1/keys", json!({"name": "root", "role": "owner"}));
    assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");
    server.use_token(Some(OWNER));
    let (owner_key, owner_secret) = issue(&server, json!({"name": "root", "role": "owner"}));
    // An issued admin key issues keys itself, but may not touch the owner's.
    let (_, admin_secret) = issue(&server, json!({"name": "team admin", "role": "admin"}));
    server.use_token(Some(&admin_secret));
    let (_, viewer) = issue(&server, json!({"name": "wallboard", "role": "viewer"}));
    assert_eq!(reads(&mut server, &viewer), 200);
    server.use_token(Some(&admin_secret));
    for (status, body) in [
        server.delete(&format!("/v1/keys/{owner_key}")),
        server.post_empty(&format!("/v1/keys/{owner_key}/rotate")),
    ] {
        assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");
    }
    assert_eq!(reads(&mut server, &owner_secret), 200);
    // Only the default project exists so far.
    server.use_token(Some(OWNER));
    let (status, body) = server.post(
        "/v1/keys",
        json!({"name": "x", "role": "viewer", "project": "growth"}),
    );
    assert_eq!((status, error_code(&body)), (422, "validation_failed"));
    assert_eq!(body["error"]["field"], "project");
}

#[test]
fn bad_bodies_the_bound_and_expiry_are_refused_clearly() {
    let mut server = secured(&[("ABACUS_AUTH__MAX_KEYS", "2")]);
    server.use_token(Some(ADMIN));
    for (body, code) in [
        (json!({"name": "", "role": "viewer"}), "validation_failed"),
        (json!({"name": "x", "role": "root"}), "invalid_body"),
        (json!({"role": "viewer"}), "invalid_body"),
        (
            json!({"name": "x", "role": "viewer", "extra": 1}),
            "invalid_body",
        ),
        (json!(["x", "viewer"]), "invalid_body"),
        (
            json!({"name": "x", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}),
            "validation_failed",
        ),
    ] {
        let (status, answer) = server.post("/v1/keys", body.clone());
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(error_code(&answer), code, "{body}: {answer}");
    }
    issue(&server, json!({"name": "a", "role": "viewer"}));
    issue(
        &server,
        json!({"name": "b", "role": "viewer", "expires_at": "2999-01-01T00:00:00Z"}),
    );
    let (status, body) = server.post("/v1/keys", json!({"name": "c", "role": "viewer"}));
    assert_eq!(
        (status, error_code(&body)),
        (422, "validation_failed"),
        "{body}"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("auth.max_keys"));
}

#[test]
fn issued_keys_and_revocations_survive_a_restart() {
    let mut server = secured(&[]);
    server.use_token(Some(ADMIN));
    let (_, kept) = issue(&server, json!({"name": "kept", "role": "viewer"}));
    let (gone_id, gone) = issue(&server, json!({"name": "gone", "role": "viewer"}));
    assert_eq!(server.delete(&format!("/v1/keys/{gone_id}")).0, 200);
    server.restart();
    assert_eq!(reads(&mut server, &kept), 200);
    assert_eq!(reads(&mut server, &gone), 401);
    server.use_token(Some(ADMIN));
    assert_eq!(
        server.get("/v1/keys").1["keys"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn an_open_server_issues_no_keys() {
    let server = TestServer::start();
    let (status, body) = server.post("/v1/keys", json!({"name": "x", "role": "admin"}));
    assert_eq!((status, error_code(&body)), (409, "auth_off"), "{body}");
}
