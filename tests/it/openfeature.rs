//! OpenFeature's remote evaluation protocol (OFREP): experiments evaluated
//! as flags by the official OpenFeature Python SDK and its OFREP provider,
//! and the protocol's edges over plain HTTP.

use serde_json::{json, Value};

use crate::common::{python, TestServer};

const ADMIN: &str = "admin-secret-0123456789";
const INGEST: &str = "ingest-secret-0123456789";

/// A server with keys and the experiments `tests/openfeature/check.py`
/// expects; `extra` more environment.
fn flags(extra: &[(&str, &str)]) -> TestServer {
    let admin = format!("[\"{ADMIN}\"]");
    let ingest = format!("[\"{INGEST}\"]");
    let mut env = vec![
        ("ABACUS_AUTH__ADMIN_KEYS", admin.as_str()),
        ("ABACUS_AUTH__INGEST_KEYS", ingest.as_str()),
    ];
    env.extend_from_slice(extra);
    let mut server = TestServer::start_with(&env);
    server.use_token(Some(ADMIN));
    let two = |a: Value, b: Value| json!([a, b]);
    server.running_experiment(
        "checkout",
        json!({"variants": two(json!({"key": "on", "weight": 1, "payload": true}), json!({"key": "off", "weight": 1, "payload": false}))}),
    );
    server.running_experiment(
        "layout",
        json!({"variants": two(json!({"key": "grid", "weight": 1}), json!({"key": "list", "weight": 1}))}),
    );
    server.running_experiment(
        "limit",
        json!({"variants": two(json!({"key": "low", "weight": 1, "payload": 10}), json!({"key": "high", "weight": 1, "payload": 20})),
               "forced": {"u-forced": "high"}}),
    );
    let (status, body) = server.post(
        "/v1/experiments",
        json!({"key": "theme", "name": "theme", "variants": two(
            json!({"key": "light", "weight": 1, "payload": {"dark": false}}),
            json!({"key": "dark", "weight": 1, "payload": {"dark": true}}))}),
    );
    assert_eq!(status, 201, "{body}");
    server.running_experiment("narrow", json!({"coverage": 0}));
    server.use_token(Some(INGEST));
    server
}

#[test]
fn the_official_openfeature_sdk_evaluates_experiments_as_flags() {
    let mut server = flags(&[]);
    python("tests/openfeature/check.py", &[&server.url(""), INGEST]);
    // Evaluations logged exposures, as assignments do.
    server.use_token(Some(ADMIN));
    server.barrier();
    let aggregates = server.aggregates("checkout");
    let units: u64 = ["on", "off"]
        .iter()
        .map(|v| aggregates["variants"][v]["units"].as_u64().unwrap_or(0))
        .sum();
    // u-1 by the single evaluations and the bulk one, u-2 by the bulk one.
    assert_eq!(units, 2, "u-1 and u-2 were exposed: {aggregates}");
}

#[test]
fn the_protocols_errors_and_auth() {
    let mut server = flags(&[("ABACUS_OFREP__LOG_EXPOSURE", "false")]);
    let post = |server: &TestServer, path: &str, body: &str| {
        let response = server
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .expect("request");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (status, text)
    };
    let one = "/ofrep/v1/evaluate/flags/checkout";
    let unit = r#"{"context": {"targetingKey": "u-1"}}"#;

    let (status, body) = post(&server, one, unit);
    assert_eq!(status, 200, "{body}");
    let evaluation: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(evaluation["key"], "checkout");
    assert_eq!(evaluation["reason"], "SPLIT");

    for (body, code) in [
        ("{}", "TARGETING_KEY_MISSING"),
        (r#"{"context": {"plan": "pro"}}"#, "TARGETING_KEY_MISSING"),
        (r#"{"context": {"targetingKey": 7}}"#, "INVALID_CONTEXT"),
        (r#"{"context": "u-1"}"#, "INVALID_CONTEXT"),
        (r#"{"context": {"targetingKey": ""}}"#, "INVALID_CONTEXT"),
        ("[1]", "PARSE_ERROR"),
        ("{not json", "PARSE_ERROR"),
    ] {
        let (status, answer) = post(&server, one, body);
        let answer: Value = serde_json::from_str(&answer).expect("json");
        assert_eq!(
            (status, answer["errorCode"].as_str()),
            (400, Some(code)),
            "{body}: {answer}"
        );
        assert_eq!(answer["key"], "checkout");
        assert!(answer["errorDetails"].is_string());
    }
    let (status, answer) = post(&server, "/ofrep/v1/evaluate/flags/nope", unit);
    let answer: Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(
        (status, answer["errorCode"].as_str()),
        (404, Some("FLAG_NOT_FOUND"))
    );

    // 401 has no body, for either route.
    server.use_token(Some("wrong-key-0123456789"));
    for path in [one, "/ofrep/v1/evaluate/flags"] {
        let (status, body) = post(&server, path, unit);
        assert_eq!((status, body.as_str()), (401, ""), "{path}");
    }
    server.use_token(None);
    let (status, body) = post(&server, one, unit);
    assert_eq!((status, body.as_str()), (401, ""));

    // With log_exposure off, evaluating exposes nobody.
    server.use_token(Some(ADMIN));
    server.barrier();
    let aggregates = server.aggregates("checkout");
    let variants = aggregates["variants"].as_object().expect("variants");
    assert!(variants.values().all(|v| v["units"] == 0), "{aggregates}");
}

#[test]
fn a_rate_limited_evaluation_says_when_to_retry_without_a_body() {
    let server = flags(&[
        ("ABACUS_LIMITS__INGEST_RPS", "1"),
        ("ABACUS_LIMITS__BURST", "1"),
    ]);
    let mut limited = None;
    for _ in 0..20 {
        let response = server
            .request(reqwest::Method::POST, "/ofrep/v1/evaluate/flags/checkout")
            .json(&json!({"context": {"targetingKey": "u-1"}}))
            .send()
            .expect("request");
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("a 429 within 20 requests at 1 per second");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.text().unwrap_or_default(), "");
}
