//! Experiments: CRUD, paging and the lifecycle over HTTP.

use serde_json::json;

use crate::common::{error_code, TestServer};

fn body(key: &str) -> serde_json::Value {
    json!({
        "key": key,
        "name": "Checkout button",
        "description": "green vs blue",
        "variants": [
            {"key": "control", "weight": 2, "payload": {"colour": "blue"}},
            {"key": "green", "weight": 2, "payload": {"colour": "green"}}
        ],
        "coverage": 0.5,
        "metrics": [{"key": "purchase", "kind": "binomial"}],
        "primary_metric": "purchase"
    })
}

#[test]
fn create_returns_201_with_location_and_normalised_weights() {
    let server = TestServer::start();
    let response = server
        .request(reqwest::Method::POST, "/v1/experiments")
        .json(&body("checkout"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["location"].to_str().unwrap(),
        "/v1/experiments/checkout"
    );
    let created: serde_json::Value = response.json().unwrap();
    assert_eq!(created["status"], "draft");
    assert_eq!(created["salt"], "checkout");
    assert_eq!(created["variants"][0]["weight"], 0.5);
    assert_eq!(created["variants"][1]["payload"]["colour"], "green");
    assert_eq!(created["version"], 1);

    let (status, fetched) = server.get("/v1/experiments/checkout");
    assert_eq!(status, 200);
    assert_eq!(fetched, created);
}

#[test]
fn a_taken_key_is_a_409_even_after_archiving() {
    let server = TestServer::start();
    assert_eq!(server.post("/v1/experiments", body("dup")).0, 201);
    let (status, err) = server.post("/v1/experiments", body("dup"));
    assert_eq!((status, error_code(&err)), (409, "experiment_exists"));
    assert_eq!(server.delete("/v1/experiments/dup").0, 200);
    assert_eq!(server.post("/v1/experiments", body("dup")).0, 409);
}

#[test]
fn the_lifecycle_allows_only_its_transitions() {
    let server = TestServer::start();
    server.post("/v1/experiments", body("life"));
    let step = |action: &str| server.post_empty(&format!("/v1/experiments/life/{action}"));

    let (status, err) = step("pause");
    assert_eq!((status, error_code(&err)), (409, "invalid_transition"));
    assert_eq!(step("start").1["status"], "running");
    assert_eq!(step("start").0, 409);
    assert_eq!(step("pause").1["status"], "paused");
    assert_eq!(step("resume").1["status"], "running");
    let (status, done) = server.post("/v1/experiments/life/complete", json!({"winner": "green"}));
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (done["status"].as_str(), done["winner"].as_str()),
        (Some("completed"), Some("green"))
    );
    assert_eq!(step("resume").0, 409);
    assert_eq!(step("explode").0, 404);

    // Completed experiments serve the winner to everyone, outside the experiment.
    let a = server.assign("life", "anyone");
    assert_eq!(
        (
            a["variant"].as_str(),
            a["in_experiment"].as_bool(),
            a["reason"].as_str()
        ),
        (Some("green"), Some(false), Some("not_running"))
    );
}

#[test]
fn completing_with_an_unknown_winner_is_refused() {
    let server = TestServer::start();
    server.running_experiment("w", json!({}));
    let (status, err) = server.post("/v1/experiments/w/complete", json!({"winner": "nope"}));
    assert_eq!((status, error_code(&err)), (422, "validation_failed"));
    assert_eq!(err["error"]["field"], "winner");
    assert_eq!(server.get("/v1/experiments/w").1["status"], "running");
}

#[test]
fn patch_changes_what_may_change_and_refuses_the_rest() {
    let server = TestServer::start();
    server.post("/v1/experiments", body("p"));
    let (status, draft) = server.patch(
        "/v1/experiments/p",
        json!({"variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 3}], "primary_metric": null}),
    );
    assert_eq!(status, 200, "{draft}");
    assert_eq!(draft["variants"][1]["weight"], 0.75);
    assert_eq!(draft["primary_metric"], serde_json::Value::Null);
    assert_eq!(draft["version"], 2);

    server.post_empty("/v1/experiments/p/start");
    let (status, err) = server.patch("/v1/experiments/p", json!({"salt": "other"}));
    assert_eq!((status, error_code(&err)), (409, "not_editable"));
    assert_eq!(err["error"]["field"], "salt");

    let (status, running) = server.patch(
        "/v1/experiments/p",
        json!({"coverage": 0.9, "name": "Renamed"}),
    );
    assert_eq!(status, 200, "{running}");
    assert_eq!(
        (running["coverage"].as_f64(), running["name"].as_str()),
        (Some(0.9), Some("Renamed"))
    );
}

#[test]
fn unknown_experiments_are_404_everywhere() {
    let server = TestServer::start();
    for (status, err) in [
        server.get("/v1/experiments/ghost"),
        server.patch("/v1/experiments/ghost", json!({"name": "x"})),
        server.delete("/v1/experiments/ghost"),
        server.post_empty("/v1/experiments/ghost/start"),
        server.get("/v1/experiments/ghost/assignment?unit_id=a"),
    ] {
        assert_eq!((status, error_code(&err)), (404, "experiment_not_found"));
    }
}

#[test]
fn listing_pages_in_key_order_and_filters_by_status() {
    let server = TestServer::start();
    for key in ["e1", "e2", "e3", "e4", "e5"] {
        server.post("/v1/experiments", body(key));
    }
    server.post_empty("/v1/experiments/e2/start");
    server.delete("/v1/experiments/e5");

    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/experiments?limit=2&cursor={c}"),
            None => "/v1/experiments?limit=2".to_owned(),
        };
        let (status, page) = server.get(&path);
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for e in page["experiments"].as_array().unwrap() {
            keys.push(e["key"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(keys, ["e1", "e2", "e3", "e4"], "archived e5 is hidden");
    assert_eq!(pages, 2);

    let running = server.get("/v1/experiments?status=running").1;
    assert_eq!(running["experiments"].as_array().unwrap().len(), 1);
    let archived = server.get("/v1/experiments?status=archived").1;
    assert_eq!(archived["experiments"][0]["key"], "e5");

    for bad in ["limit=0", "limit=501", "status=sleeping", "colour=red"] {
        let (status, err) = server.get(&format!("/v1/experiments?{bad}"));
        assert_eq!((status, error_code(&err)), (400, "invalid_query"), "{bad}");
    }
}

#[test]
fn archiving_stops_assignment_and_freezes_the_experiment() {
    let server = TestServer::start();
    server.running_experiment("arch", json!({}));
    let (status, archived) = server.delete("/v1/experiments/arch");
    assert_eq!(
        (status, archived["status"].as_str()),
        (200, Some("archived"))
    );
    let a = server.assign("arch", "bob");
    assert_eq!(
        (a["variant"].as_str(), a["reason"].as_str()),
        (Some("control"), Some("not_running"))
    );
    assert_eq!(
        server.patch("/v1/experiments/arch", json!({"name": "x"})).0,
        409
    );
    assert_eq!(server.delete("/v1/experiments/arch").0, 409);
}
