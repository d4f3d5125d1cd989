//! Bearer keys with admin and ingest scopes.

use serde_json::json;

use crate::common::{error_code, TestServer};

const ADMIN: &str = "admin-secret-0123456789";
const INGEST: &str = "ingest-secret-0123456789";

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
    assert!(server.log().contains("bearer-key auth enabled"));
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
