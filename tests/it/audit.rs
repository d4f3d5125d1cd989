//! The audit log: every change made through the API, with who made it,
//! when, and the values before and after; filtered, paged, kept across a
//! restart, and announced as `audit.recorded` to webhooks and the stream.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::receiver::Receiver;
use crate::common::{error_code, urlencode, TestServer};

const OWNER: &str = "owner-secret-0123456789";
const ADMIN: &str = "admin-secret-0123456789";
const EDITOR: &str = "editor-secret-0123456789";
const VIEWER: &str = "viewer-secret-0123456789";

fn secured() -> TestServer {
    TestServer::start_with(&[
        ("ABACUS_AUTH__OWNER_KEYS", &format!("[\"{OWNER}\"]")),
        ("ABACUS_AUTH__ADMIN_KEYS", &format!("[\"{ADMIN}\"]")),
        ("ABACUS_AUTH__EDITOR_KEYS", &format!("[\"{EDITOR}\"]")),
        ("ABACUS_AUTH__VIEWER_KEYS", &format!("[\"{VIEWER}\"]")),
    ])
}

fn entries(server: &TestServer, query: &str) -> Vec<Value> {
    let (status, page) = server.get(&format!("/v1/audit{query}"));
    assert_eq!(status, 200, "{page}");
    page["entries"].as_array().unwrap().clone()
}

fn actions(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect()
}

/// An editor's experiment changes and an admin's key changes, in order.
fn make_changes(server: &mut TestServer) -> String {
    server.use_token(Some(EDITOR));
    let body = json!({"key": "checkout", "name": "Checkout", "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]});
    assert_eq!(server.post("/v1/experiments", body).0, 201);
    assert_eq!(
        server
            .patch("/v1/experiments/checkout", json!({"coverage": 0.5}))
            .0,
        200
    );
    assert_eq!(server.post_empty("/v1/experiments/checkout/start").0, 200);
    server.use_token(Some(ADMIN));
    let (status, issued) = server.post("/v1/keys", json!({"name": "ci", "role": "viewer"}));
    assert_eq!(status, 201);
    let id = issued["id"].as_str().unwrap().to_owned();
    assert_eq!(server.post_empty(&format!("/v1/keys/{id}/rotate")).0, 200);
    assert_eq!(server.delete(&format!("/v1/keys/{id}")).0, 200);
    id
}

#[test]
fn every_change_is_recorded_with_who_when_and_before_and_after() {
    let mut server = secured();
    let key_id = make_changes(&mut server);
    let log = entries(&server, "");
    assert_eq!(
        actions(&log),
        [
            "key.revoked",
            "key.rotated",
            "key.issued",
            "experiment.started",
            "experiment.updated",
            "experiment.created"
        ]
    );
    let [revoked, rotated, issued, started, updated, created] = &log[..] else {
        unreachable!()
    };
    for e in [started, updated, created] {
        assert_eq!(e["actor"], "config/editor/0");
        assert_eq!(e["resource"], "experiment");
        assert_eq!(e["resource_id"], "checkout");
        assert_eq!(e["project"], "default");
    }
    assert!(created["before"].is_null());
    assert_eq!(created["after"]["status"], "draft");
    assert_eq!(updated["before"]["coverage"], 1.0);
    assert_eq!(updated["after"]["coverage"], 0.5);
    assert_eq!(started["before"]["status"], "draft");
    assert_eq!(started["after"]["status"], "running");
    for e in [revoked, rotated, issued] {
        assert_eq!(e["actor"], "config/admin/0");
        assert_eq!(
            (e["resource"].as_str(), e["resource_id"].as_str()),
            (Some("key"), Some(key_id.as_str()))
        );
    }
    assert!(issued["before"].is_null());
    assert_eq!(issued["after"]["role"], "viewer");
    assert_ne!(rotated["before"]["prefix"], rotated["after"]["prefix"]);
    assert!(revoked["after"].is_null());
    // No secret, no digest, ever.
    let text = serde_json::to_string(&log).unwrap();
    assert!(
        !text.contains("digest") && !text.contains("\"secret\""),
        "{text}"
    );
    // Newest first, each with its time.
    let times: Vec<&str> = log.iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // Written with the change: still there after a restart.
    server.restart();
    server.use_token(Some(ADMIN));
    assert_eq!(entries(&server, "").len(), 6);
}

#[test]
fn the_log_filters_by_actor_resource_and_time_and_pages() {
    let mut server = secured();
    let key_id = make_changes(&mut server);
    let by_editor = entries(&server, "?actor=config/editor/0");
    assert_eq!(by_editor.len(), 3);
    assert!(actions(&by_editor)
        .iter()
        .all(|a| a.starts_with("experiment.")));
    assert_eq!(entries(&server, "?resource=key").len(), 3);
    assert_eq!(entries(&server, &format!("?resource_id={key_id}")).len(), 3);
    assert_eq!(
        entries(
            &server,
            "?resource=experiment&resource_id=checkout&actor=config/admin/0"
        )
        .len(),
        0
    );
    assert_eq!(entries(&server, "?project=default").len(), 6);
    // A window after every change holds none of them; one before, all.
    let at = |e: &Value| e["at"].as_str().unwrap().to_owned();
    let log = entries(&server, "");
    let newest = at(&log[0]);
    let oldest = at(&log[5]);
    let since_newest = entries(&server, &format!("?from={}", urlencode(&newest)));
    assert_eq!(since_newest.first(), log.first());
    assert_eq!(
        entries(
            &server,
            &format!(
                "?from={}&to={}",
                urlencode("2000-01-01T00:00:00Z"),
                urlencode(&oldest)
            )
        )
        .len(),
        0
    );
    assert_eq!(
        entries(
            &server,
            &format!("?to={}", urlencode("2999-01-01T00:00:00Z"))
        )
        .len(),
        6
    );
    // Pages of two: every entry once, in order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("/v1/audit?limit=2&cursor={c}"),
            None => "/v1/audit?limit=2".to_owned(),
        };
        let (status, page) = server.get(&query);
        assert_eq!(status, 200, "{page}");
        paged.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(paged.len() <= 6, "pages do not end");
    }
    assert_eq!(paged, log);
    let long = format!("?actor={}", "a".repeat(301));
    for bad in [
        "?limit=0",
        "?limit=501",
        "?cursor=nope",
        "?resource=planet",
        "?extra=1",
        &long,
    ] {
        let (status, body) = server.get(&format!("/v1/audit{bad}"));
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_query"),
            "{bad}: {body}"
        );
    }
}

#[test]
fn only_admins_read_the_log_and_only_their_projects() {
    let mut server = secured();
    make_changes(&mut server);
    server.use_token(Some(EDITOR));
    let (status, body) = server.get("/v1/audit");
    assert_eq!((status, error_code(&body)), (403, "forbidden"));
    server.use_token(Some(ADMIN));
    let (status, body) = server.get("/v1/audit?project=growth");
    assert_eq!((status, error_code(&body)), (403, "forbidden"));
    server.use_token(Some(OWNER));
    assert_eq!(entries(&server, "?project=growth").len(), 0);
    assert_eq!(entries(&server, "").len(), 6);
}

#[test]
fn a_recorded_change_reaches_webhooks_and_the_stream() {
    let server = TestServer::start_with(&[("ABACUS_WEBHOOKS__ALLOW_PRIVATE", "true")]);
    let receiver = Receiver::answering(204);
    let (status, _) = server.post(
        "/v1/webhooks",
        json!({"url": receiver.url(), "events": ["audit.recorded"]}),
    );
    assert_eq!(status, 201);
    let stream = crate::stream::connect(&server, "", None);
    server.running_experiment("announced", json!({}));

    // The subscription's own creation is recorded, and announced, first.
    let got = receiver.wait_for(3, Duration::from_secs(20));
    let delivered: Vec<Value> = got.iter().map(|r| r.json()).collect();
    assert!(
        delivered.iter().all(|d| d["type"] == "audit.recorded"),
        "{delivered:?}"
    );
    let entry = |i: usize| &delivered[i]["data"]["entry"];
    assert_eq!(entry(0)["action"], "webhook.created");
    assert_eq!(entry(1)["action"], "experiment.created");
    assert_eq!(entry(1)["actor"], "open");
    assert_eq!(entry(1)["resource_id"], "announced");
    assert_eq!(entry(2)["action"], "experiment.started");

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let message = stream
            .recv_timeout(left)
            .expect("audit.recorded on the stream");
        if message.event == "audit.recorded" {
            seen.push(
                message.data["data"]["entry"]["action"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            );
        }
    }
    assert_eq!(seen, ["experiment.created", "experiment.started"]);
}

#[test]
fn webhook_rule_and_alert_changes_are_recorded_too() {
    let server = TestServer::start_with(&[("ABACUS_WEBHOOKS__ALLOW_PRIVATE", "true")]);
    let receiver = Receiver::answering(204);
    let (status, hook) = server.post(
        "/v1/webhooks",
        json!({"url": receiver.url(), "events": ["alert.raised"], "description": "pager"}),
    );
    assert_eq!(status, 201, "{hook}");
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let (status, rule) = server.post(
        "/v1/alerts/rules",
        json!({"name": "errors", "metric": "error_rate", "threshold": 0.5, "window_s": 2}),
    );
    assert_eq!(status, 201, "{rule}");
    let rule_id = rule["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/alerts/rules/{rule_id}");
    assert_eq!(server.patch(&path, json!({"threshold": 0.6})).0, 200);
    // Nine in ten requests fail until the rule raises an alert.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let alert_id = loop {
        for i in 0..9 {
            server.get(&format!("/v1/experiments/missing-{i}"));
        }
        let (_, open) = server.get("/v1/alerts?status=open");
        if let Some(id) = open["alerts"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "never raised");
        std::thread::sleep(Duration::from_millis(20));
    };
    let ack = format!("/v1/alerts/{alert_id}/acknowledge");
    assert_eq!(server.post(&ack, json!({"by": "ana"})).0, 200);
    assert_eq!(server.delete(&path).0, 204);
    assert_eq!(server.delete(&format!("/v1/webhooks/{hook_id}")).0, 204);

    let log = entries(&server, "");
    assert_eq!(
        actions(&log),
        [
            "webhook.deleted",
            "alert_rule.deleted",
            "alert.acknowledged",
            "alert_rule.updated",
            "alert_rule.created",
            "webhook.created"
        ]
    );
    let [unhooked, deleted, acked, updated, created, hooked] = &log[..] else {
        unreachable!()
    };
    assert_eq!(hooked["resource"], "webhook");
    assert_eq!(hooked["resource_id"], hook_id.as_str());
    assert_eq!(hooked["after"]["description"], "pager");
    assert!(unhooked["after"].is_null());
    assert_eq!(unhooked["before"]["url"], receiver.url());
    for e in [created, updated, deleted] {
        assert_eq!(e["resource"], "alert_rule");
        assert_eq!(e["resource_id"], rule_id.as_str());
    }
    assert_eq!(updated["before"]["threshold"], 0.5);
    assert_eq!(updated["after"]["threshold"], 0.6);
    assert_eq!(acked["resource"], "alert");
    assert_eq!(acked["before"]["status"], "open");
    assert_eq!(acked["after"]["status"], "acknowledged");
    // A subscription's secret is never recorded.
    let text = serde_json::to_string(&log).unwrap();
    assert!(!text.contains("secret"), "{text}");
}

#[test]
fn viewers_on_the_stream_learn_that_a_key_changed_but_not_who_or_how() {
    let mut server = secured();
    server.use_token(Some(VIEWER));
    let stream = crate::stream::connect(&server, "", None);
    server.use_token(Some(ADMIN));
    let (status, issued) = server.post("/v1/keys", json!({"name": "ci", "role": "editor"}));
    assert_eq!(status, 201, "{issued}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let entry = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let message = stream.recv_timeout(left).expect("audit.recorded");
        if message.event == "audit.recorded" {
            break message.data["data"]["entry"].clone();
        }
    };
    assert_eq!(entry["action"], "key.issued");
    assert_eq!(entry["resource_id"], issued["id"]);
    for hidden in ["actor", "before", "after"] {
        assert!(entry.get(hidden).is_none(), "{entry}");
    }
    assert!(!entry.to_string().contains("ci"), "{entry}");
}
