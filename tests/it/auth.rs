//! Bearer keys and their roles: owner, admin, editor, viewer, ingest.

use serde_json::json;

use crate::common::{error_code, TestServer};

const OWNER: &str = "owner-secret-0123456789";
const ADMIN: &str = "admin-secret-0123456789";
const INGEST: &str = "ingest-secret-0123456789";
const EDITOR: &str = "editor-secret-0123456789";
const VIEWER: &str = "viewer-secret-0123456789";

fn secured() -> TestServer {
    TestServer::start_with(&[
        ("ABACUS_AUTH__ADMIN_KEYS", &format!("[\"{ADMIN}\"]")),
        ("ABACUS_AUTH__INGEST_KEYS", &format!("[\"{INGEST}\"]")),
    ])
}

#[test]
fn requests_without_a_valid_key_are_401() {
    let mut server = secured();
    for token in [None, Some("wrong-key-0123456789"), Some("")] {
        server.use_token(token);
        let response = server
            .request(reqwest::Method::GET, "/v1/experiments")
            .send()
            .unwrap();
        assert_eq!(response.status(), 401, "{token:?}");
        assert!(response.headers().contains_key("www-authenticate"));
        let body: serde_json::Value = response.json().unwrap();
        assert_eq!(error_code(&body), "unauthorized");
    }
    assert!(server.log().contains("auth enabled"));
}

#[test]
fn ingest_keys_may_assign_but_not_administer() {
    let mut server = secured();
    server.use_token(Some(ADMIN));
    server.running_experiment("auth", json!({}));

    server.use_token(Some(INGEST));
    assert_eq!(server.assign("auth", "u1")["experiment"], "auth");
    assert_eq!(
        server.post("/v1/assignments", json!({"unit_id": "u1"})).0,
        200
    );
    for (status, err) in [
        server.get("/v1/experiments"),
        server.get("/v1/experiments/auth"),
        server.post_empty("/v1/experiments/auth/pause"),
        server.delete("/v1/experiments/auth"),
        server.post("/v1/experiments", json!({})),
    ] {
        assert_eq!((status, error_code(&err)), (403, "forbidden"));
    }
    server.use_token(Some(ADMIN));
    assert_eq!(server.get("/v1/experiments/auth").1["status"], "running");
}

#[test]
fn probes_and_the_api_document_need_no_key() {
    let server = secured();
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(server.get("/readyz").0, 200);
    assert_eq!(server.get("/openapi.json").0, 200);
}

#[test]
fn open_mode_is_announced() {
    let server = TestServer::start();
    assert_eq!(server.get("/v1/experiments").0, 200);
    assert!(server.log().contains("API is OPEN"), "{}", server.log());
}

/// What a route needs, as docs/api.md tells it: reads are for viewers
/// (webhook subscriptions, which hold their targets, only for editors),
/// assignments, events and OpenFeature evaluations for ingest keys, every
/// change for editors, keys and the audit log for admins; owners and
/// admins may do everything.
fn needs(method: &str, path: &str) -> &'static str {
    if path.starts_with("/v1/keys") || path == "/v1/audit" {
        return "administer";
    }
    let ingest = [
        ("post", "/v1/assignments"),
        ("get", "/v1/experiments/{key}/assignment"),
        ("post", "/v1/events"),
    ];
    if ingest.contains(&(method, path)) || path.starts_with("/ofrep/") {
        "ingest"
    } else if method == "get" && !path.starts_with("/v1/webhooks") {
        "read"
    } else {
        "change"
    }
}

#[test]
fn every_documented_route_admits_exactly_the_roles_it_should() {
    let mut server = TestServer::start_with(&[
        ("ABACUS_AUTH__OWNER_KEYS", &format!("[\"{OWNER}\"]")),
        ("ABACUS_AUTH__ADMIN_KEYS", &format!("[\"{ADMIN}\"]")),
        ("ABACUS_AUTH__EDITOR_KEYS", &format!("[\"{EDITOR}\"]")),
        ("ABACUS_AUTH__VIEWER_KEYS", &format!("[\"{VIEWER}\"]")),
        ("ABACUS_AUTH__INGEST_KEYS", &format!("[\"{INGEST}\"]")),
    ]);
    let (_, doc) = server.get("/openapi.json");
    server.use_token(Some(ADMIN));
    server.running_experiment("k", json!({}));
    let all = ["read", "change", "ingest", "administer"];
    let roles = [
        (OWNER, all.as_slice()),
        (ADMIN, &all),
        (EDITOR, &["read", "change", "ingest"]),
        (VIEWER, &["read"]),
        (INGEST, &["ingest"]),
    ];
    let mut walked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !(path.starts_with("/v1/") || path.starts_with("/ofrep/")) {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let need = needs(method, path);
            let url = path
                .replace("{key}", "k")
                .replace("{unit_id}", "u")
                .replace("{id}", "wh_none");
            // Only whether the role is refused is asked, so what a change
            // does to `k` (archiving it, say) does not matter.
            for (key, allowed) in roles {
                server.use_token(Some(key));
                let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let response = server.request(method.clone(), &url).send().unwrap();
                let status = response.status().as_u16();
                let may = allowed.contains(&need);
                assert_eq!(
                    status == 403,
                    !may,
                    "{method} {url} with a key that {} {need}: {status}",
                    if may { "may" } else { "may not" }
                );
                assert_ne!(status, 401, "{method} {url}");
                walked += 1;
            }
        }
    }
    assert!(walked >= 5 * 45, "walked {walked} route and role pairs");
}
