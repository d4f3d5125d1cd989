//! The OpenAPI document covers every route, and every documented route exists.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::json;

use crate::common::{read, TestServer};

/// Every route the server mounts. A new route must be added here and to
/// the document, or this test fails.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/readyz"),
    ("get", "/v1/experiments"),
    ("post", "/v1/experiments"),
    ("get", "/v1/experiments/{key}"),
    ("patch", "/v1/experiments/{key}"),
    ("delete", "/v1/experiments/{key}"),
    ("post", "/v1/experiments/{key}/start"),
    ("post", "/v1/experiments/{key}/pause"),
    ("post", "/v1/experiments/{key}/resume"),
    ("post", "/v1/experiments/{key}/complete"),
    ("get", "/v1/experiments/{key}/aggregates"),
    ("get", "/v1/experiments/{key}/results"),
    ("get", "/v1/stats/sample-size"),
    ("get", "/v1/experiments/{key}/compare"),
    ("get", "/v1/analytics/ctr"),
    ("get", "/v1/analytics/ranks"),
    ("get", "/v1/analytics/response-times"),
    ("get", "/v1/analytics/engagement"),
    ("get", "/v1/units/{unit_id}"),
    ("post", "/v1/webhooks"),
    ("get", "/v1/webhooks"),
    ("get", "/v1/webhooks/{id}"),
    ("delete", "/v1/webhooks/{id}"),
    ("post", "/v1/webhooks/{id}/test"),
    ("post", "/v1/webhooks/{id}/enable"),
    ("get", "/v1/webhooks/{id}/deliveries"),
    ("post", "/v1/alerts/rules"),
    ("get", "/v1/alerts/rules"),
    ("get", "/v1/alerts/rules/{id}"),
    ("patch", "/v1/alerts/rules/{id}"),
    ("delete", "/v1/alerts/rules/{id}"),
    ("get", "/v1/alerts"),
    ("get", "/v1/alerts/{id}"),
    ("post", "/v1/alerts/{id}/acknowledge"),
    ("post", "/v1/alerts/{id}/resolve"),
    ("get", "/v1/server/stats"),
    ("get", "/v1/experiments/{key}/timeline"),
    ("get", "/v1/experiments/{key}/predictions"),
    ("get", "/v1/stream"),
    ("get", "/v1/ws"),
    ("get", "/v1/experiments/{key}/assignment"),
    ("post", "/v1/assignments"),
    ("post", "/ofrep/v1/evaluate/flags/{key}"),
    ("post", "/ofrep/v1/evaluate/flags"),
    ("post", "/v1/events"),
    ("get", "/v1/events"),
    ("post", "/v1/keys"),
    ("get", "/v1/keys"),
    ("get", "/v1/keys/{id}"),
    ("post", "/v1/keys/{id}/rotate"),
    ("delete", "/v1/keys/{id}"),
    ("get", "/v1/audit"),
    ("post", "/v1/projects"),
    ("get", "/v1/projects"),
    ("get", "/v1/projects/{key}"),
    ("patch", "/v1/projects/{key}"),
    ("delete", "/v1/projects/{key}"),
    ("post", "/v1/holdouts"),
    ("get", "/v1/holdouts"),
    ("get", "/v1/holdouts/{key}"),
    ("delete", "/v1/holdouts/{key}"),
    ("get", "/v1/holdouts/{key}/results"),
    ("post", "/v1/aliases"),
    ("get", "/v1/aliases/{unit_id}"),
];

#[test]
fn openapi_covers_every_route() {
    let server = TestServer::start();
    let (status, doc) = server.get("/openapi.json");
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "patch", "delete", "put"].contains(&m.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["Experiment"].is_object());
    assert!(doc["components"]["schemas"]["Bucketing"].is_object());

    // Every `$ref` names a schema the document has.
    let text = doc.to_string();
    let prefix = "\"#/components/schemas/";
    let missing: BTreeSet<&str> = text
        .match_indices(prefix)
        .map(|(at, _)| {
            let name = &text[at + prefix.len()..];
            &name[..name.find('"').unwrap_or(name.len())]
        })
        .filter(|name| !doc["components"]["schemas"][*name].is_object())
        .collect();
    assert!(missing.is_empty(), "$refs to nothing: {missing:?}");
}

#[test]
fn the_document_states_this_servers_limits_errors_and_links() {
    let server = TestServer::start_with(&[
        ("ABACUS_INGEST__MAX_BATCH", "256"),
        ("ABACUS_LIMITS__MAX_ASSIGNMENT_EXPERIMENTS", "7"),
        ("ABACUS_LIMITS__MAX_ABS_VALUE", "1000"),
    ]);
    let (_, doc) = server.get("/openapi.json");
    let schemas = &doc["components"]["schemas"];
    let batch = &schemas["EventsIn"]["oneOf"][1]["properties"]["events"];
    assert_eq!(
        (batch["minItems"].as_u64(), batch["maxItems"].as_u64()),
        (Some(1), Some(256))
    );
    let keys = &schemas["AssignAllIn"]["properties"]["experiments"]["oneOf"][1];
    assert_eq!(keys["maxItems"], 7, "{keys}");
    let value = &schemas["EventIn"]["properties"]["value"]["oneOf"][1];
    assert_eq!(
        (value["minimum"].as_f64(), value["maximum"].as_f64()),
        (Some(-1000.0), Some(1000.0))
    );
    assert_eq!(
        schemas["UnitId"]["pattern"],
        "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,256}$"
    );

    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id), "operationId {id} twice");
            // Every error of a /v1 route has the one error body.
            for (status, response) in op["responses"].as_object().unwrap() {
                if path.starts_with("/v1/") && !status.starts_with('2') && status != "101" {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    let links = &doc["paths"]["/v1/experiments"]["post"]["responses"]["201"]["links"];
    assert_eq!(
        links["start_experiment"]["parameters"]["key"],
        "$response.body#/key"
    );
    for (_, link) in links.as_object().unwrap() {
        let id = link["operationId"].as_str().unwrap();
        assert!(ids.contains(id), "a link to {id}, which is no operation");
    }
}

#[test]
fn a_method_a_route_does_not_take_is_405_with_allow() {
    let server = TestServer::start();
    server.running_experiment("k", json!({}));
    for (method, path, allow) in [
        (Method::PUT, "/v1/experiments", "GET, POST"),
        (Method::DELETE, "/v1/events", "GET, POST"),
        (Method::GET, "/v1/experiments/k/start", "POST"),
        (Method::POST, "/v1/experiments/k", "DELETE, GET, PATCH"),
        (Method::GET, "/ofrep/v1/evaluate/flags/k", "POST"),
        // Not taken for a lifecycle action: the actions are routes of their own.
        (Method::POST, "/v1/experiments/k/aggregates", "GET"),
    ] {
        let response = server.request(method.clone(), path).send().unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        let allowed = response.headers()["allow"].to_str().unwrap().to_owned();
        assert_eq!(allowed, allow, "{method} {path}");
        let (_, body) = read(response);
        assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    }
    let (status, body) = server.get("/v1/nothing-here");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[test]
fn every_documented_route_is_mounted() {
    let server = TestServer::start();
    server.running_experiment("k", json!({}));
    for (method, path) in ROUTES {
        let path = path
            .replace("{key}", "k")
            .replace("{unit_id}", "u")
            .replace("{id}", "wh_none");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = server.request(method.clone(), &path).send().unwrap();
        if path == "/v1/stream" {
            // Endless by design: the headers are enough.
            assert_eq!(response.status(), 200);
            continue;
        }
        let (_, body) = read(response);
        assert_ne!(
            body["error"]["code"], "not_found",
            "{method} {path} is not mounted"
        );
    }
}
