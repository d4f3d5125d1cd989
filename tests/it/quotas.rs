//! Quotas per project: rates refused with 429 and `Retry-After` and
//! counted under the project's label in `/metrics` (seen by that project
//! and the owners only), counts refused with 422; the server's quotas
//! apply unless a project overrides them, and overrides outlive a restart.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{error_code, TestServer};

const OWNER: &str = "owner-secret-0123456789";

fn secured(env: &[(&str, &str)]) -> TestServer {
    let owner = format!("[\"{OWNER}\"]");
    let mut all = vec![
        ("ABACUS_AUTH__OWNER_KEYS", owner.as_str()),
        ("ABACUS_WEBHOOKS__ALLOW_PRIVATE", "true"),
    ];
    all.extend_from_slice(env);
    let mut server = TestServer::start_with(&all);
    server.use_token(Some(OWNER));
    server
}

/// Issues a key of `role` in `project`; its secret.
fn issue(server: &TestServer, role: &str, project: &str) -> String {
    let (status, key) = server.post(
        "/v1/keys",
        json!({"name": format!("{project} {role}"), "role": role, "project": project}),
    );
    assert_eq!(status, 201, "{key}");
    key["secret"].as_str().unwrap().to_owned()
}

fn events(n: usize) -> Value {
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"type": "signup", "unit_id": format!("u{i}")}))
        .collect();
    json!({ "events": events })
}

/// Status, `Retry-After` and code of a request.
fn send(server: &TestServer, method: Method, path: &str, body: Value) -> (u16, Option<u64>, Value) {
    let response = server.request(method, path).json(&body).send().unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = response.json().unwrap_or(Value::Null);
    (status, retry_after, body)
}

/// The `/metrics` text as `token` sees it.
fn scrape(server: &TestServer, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::blocking::Client::new().get(server.url("/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

fn refused(metrics: &str, project: &str, quota: &str) -> Option<f64> {
    let series = format!("abacus_quota_refused_total{{project=\"{project}\",quota=\"{quota}\"}}");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
}

#[test]
fn a_projects_rates_are_refused_with_retry_after_and_counted_under_its_label_only() {
    let mut server = secured(&[]);
    let (status, growth) = server.post(
        "/v1/projects",
        json!({"key": "growth", "name": "Growth",
               "quotas": {"events_per_second": 2, "assignments_per_second": 1}}),
    );
    assert_eq!(status, 201, "{growth}");
    assert_eq!(
        growth["quotas"],
        json!({"events_per_second": 2, "assignments_per_second": 1})
    );
    assert_eq!(growth["quotas_in_force"]["events_per_second"], 2);
    assert_eq!(
        growth["quotas_in_force"]["max_experiments"], 10000,
        "the server's"
    );
    let editor = issue(&server, "editor", "growth");
    let ingest = issue(&server, "ingest", "growth");
    let default_viewer = issue(&server, "viewer", "default");
    server.use_token(Some(&editor));
    server.running_experiment("checkout", json!({}));

    // A second's quota at once, then 429 until the bucket refills.
    server.use_token(Some(&ingest));
    let (status, _, body) = send(&server, Method::POST, "/v1/events", events(2));
    assert_eq!(status, 202, "{body}");
    let (status, retry_after, body) = send(&server, Method::POST, "/v1/events", events(1));
    assert_eq!(
        (status, error_code(&body)),
        (429, "quota_exceeded"),
        "{body}"
    );
    assert_eq!(retry_after, Some(1));
    // A batch no wait would let through is refused as such.
    let (status, _, body) = send(&server, Method::POST, "/v1/events", events(3));
    assert_eq!(
        (status, error_code(&body)),
        (422, "validation_failed"),
        "{body}"
    );
    let assignment = "/v1/experiments/checkout/assignment?unit_id=u1";
    assert_eq!(send(&server, Method::GET, assignment, Value::Null).0, 200);
    let (status, retry_after, body) = send(&server, Method::GET, assignment, Value::Null);
    assert_eq!(
        (status, error_code(&body)),
        (429, "quota_exceeded"),
        "{body}"
    );
    assert!(retry_after.is_some_and(|s| s >= 1));
    let (status, retry_after, _) = send(
        &server,
        Method::POST,
        "/ofrep/v1/evaluate/flags/checkout",
        json!({"context": {"targetingKey": "u2"}}),
    );
    assert_eq!(status, 429, "OpenFeature evaluations are assignments");
    assert!(retry_after.is_some());

    // The default project has no such quota.
    server.use_token(Some(OWNER));
    for _ in 0..5 {
        let (status, _, body) = send(&server, Method::POST, "/v1/events", events(10));
        assert_eq!(status, 202, "{body}");
    }

    // Counted under growth's label, which growth and the owners see.
    let (status, all) = scrape(&server, Some(OWNER));
    assert_eq!(status, 200);
    assert_eq!(
        refused(&all, "growth", "events_per_second"),
        Some(1.0),
        "{all}"
    );
    assert_eq!(refused(&all, "growth", "assignments_per_second"), Some(2.0));
    assert_eq!(refused(&all, "default", "events_per_second"), Some(0.0));
    let (_, own) = scrape(&server, Some(&ingest));
    assert_eq!(refused(&own, "growth", "events_per_second"), Some(1.0));
    assert!(!own.contains("project=\"default\""), "{own}");
    for other in [Some(default_viewer.as_str()), None] {
        let (status, text) = scrape(&server, other);
        assert_eq!(status, 200);
        assert!(
            !text.contains("project=\"growth\""),
            "{other:?} sees growth"
        );
        assert!(
            text.contains("abacus_events_accepted_total"),
            "server series stay"
        );
    }
    assert_eq!(scrape(&server, Some("not-a-key-0123456789")).0, 401);

    // Given back to the server's quota (none), across a restart.
    let (status, changed) = server.patch(
        "/v1/projects/growth",
        json!({"quotas": {"events_per_second": null}}),
    );
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["quotas"], json!({"assignments_per_second": 1}));
    assert_eq!(changed["quotas_in_force"]["events_per_second"], 0);
    server.restart();
    server.use_token(Some(&ingest));
    for _ in 0..5 {
        let (status, _, body) = send(&server, Method::POST, "/v1/events", events(10));
        assert_eq!(status, 202, "{body}");
    }
    assert_eq!(send(&server, Method::GET, assignment, Value::Null).0, 200);
    assert_eq!(send(&server, Method::GET, assignment, Value::Null).0, 429);
}

#[test]
fn a_project_holds_at_most_its_quota_of_experiments_and_webhooks() {
    let server = secured(&[
        ("ABACUS_QUOTAS__MAX_EXPERIMENTS", "2"),
        ("ABACUS_QUOTAS__MAX_WEBHOOKS", "1"),
    ]);
    for bad in [
        json!({"key": "growth", "name": "G", "quotas": {"max_experiments": 0}}),
        json!({"key": "growth", "name": "G", "quotas": {"max_webhooks": 1000001}}),
        json!({"key": "growth", "name": "G", "quotas": {"events_per_second": -1}}),
        json!({"key": "growth", "name": "G", "quotas": {"rps": 1}}),
    ] {
        let (status, body) = server.post("/v1/projects", bad.clone());
        assert!([400, 422].contains(&status), "{bad}: {status} {body}");
    }
    let (status, body) = server.post(
        "/v1/projects",
        json!({"key": "growth", "name": "G", "quotas": {"max_experiments": 1}}),
    );
    assert_eq!(status, 201, "{body}");
    let create = |project: &str, key: &str| {
        let body = json!({"key": key, "name": key, "variants": [
            {"key": "control", "weight": 1}, {"key": "treatment", "weight": 1}]});
        server.call_in(project, Method::POST, "/v1/experiments", Some(body))
    };
    assert_eq!(create("growth", "a").0, 201);
    let (status, body) = create("growth", "b");
    assert_eq!(
        (status, error_code(&body)),
        (422, "validation_failed"),
        "{body}"
    );
    assert_eq!(body["error"]["field"], "quotas.max_experiments");
    // Archiving one makes room.
    assert_eq!(
        server
            .call_in("growth", Method::DELETE, "/v1/experiments/a", None)
            .0,
        200
    );
    assert_eq!(create("growth", "b").0, 201);
    // The default project has the server's quota of two.
    assert_eq!(create("default", "a").0, 201);
    assert_eq!(create("default", "b").0, 201);
    assert_eq!(create("default", "c").0, 422);

    let hook = json!({"url": "http://127.0.0.1:9/hook", "events": ["experiment.started"]});
    let subscribe =
        |project: &str| server.call_in(project, Method::POST, "/v1/webhooks", Some(hook.clone()));
    assert_eq!(subscribe("growth").0, 201);
    let (status, body) = subscribe("growth");
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("quotas.max_webhooks")),
        "{body}"
    );
    assert_eq!(
        subscribe("default").0,
        201,
        "each project has its own count"
    );
    // A raised quota applies at once.
    let (status, _) = server.patch(
        "/v1/projects/growth",
        json!({"quotas": {"max_webhooks": 2}}),
    );
    assert_eq!(status, 200);
    assert_eq!(subscribe("growth").0, 201);
}
