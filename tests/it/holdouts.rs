//! Holdouts over HTTP: a fraction of units kept out of every experiment,
//! and everything shipped measured against them.

use serde_json::{json, Value};

use crate::common::{error_code, urlencode, TestServer};

fn assigned(server: &TestServer, key: &str, unit: &str, log: bool) -> (String, String) {
    let (status, a) = server.get(&format!(
        "/v1/experiments/{key}/assignment?unit_id={}&log_exposure={log}",
        urlencode(unit)
    ));
    assert_eq!(status, 200, "{a}");
    (
        a["variant"].as_str().unwrap().to_owned(),
        a["reason"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn a_holdout_keeps_its_units_out_of_everything_and_measures_what_shipped() {
    let server = TestServer::start();
    server.running_experiment("checkout", json!({}));
    server.running_experiment("search", json!({}));
    let (status, done) = server.post(
        "/v1/experiments/search/complete",
        json!({"winner": "treatment"}),
    );
    assert_eq!(status, 200, "{done}");
    // Units exposed before the holdout starts keep what they saw.
    let early: Vec<(String, String)> = (0..200)
        .map(|i| {
            let unit = format!("early-{i}");
            let (variant, _) = assigned(&server, "checkout", &unit, true);
            (unit, variant)
        })
        .collect();
    server.barrier();

    let body = json!({"key": "q4", "name": "Q4 holdout", "fraction": 0.2,
        "metrics": [{"key": "conversion", "kind": "binomial"}]});
    let (status, created) = server.post("/v1/holdouts", body.clone());
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["salt"], "holdout:q4");
    // Holdouts and experiments share one key space.
    let (status, taken) = server.post(
        "/v1/holdouts",
        json!({"key": "checkout", "name": "x", "fraction": 0.1}),
    );
    assert_eq!(
        (status, error_code(&taken)),
        (409, "experiment_exists"),
        "{taken}"
    );
    let (status, taken) = server.post(
        "/v1/experiments",
        json!({"key": "q4", "name": "x", "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]}),
    );
    assert_eq!(
        (status, error_code(&taken)),
        (409, "experiment_exists"),
        "{taken}"
    );

    for (unit, variant) in &early {
        let (now, reason) = assigned(&server, "checkout", unit, false);
        assert_eq!(&now, variant, "{unit} keeps its variant");
        assert_ne!(reason, "holdout");
    }

    // New units: the same fifth is held out of both experiments, served
    // the control (not the shipped winner); the others convert more.
    let mut events = Vec::new();
    let mut held = 0;
    let total = 2000;
    for i in 0..total {
        let unit = format!("u{i}");
        let (checkout, why) = assigned(&server, "checkout", &unit, true);
        let (search, why_search) = assigned(&server, "search", &unit, true);
        let is_held = why == "holdout";
        assert_eq!(
            is_held,
            why_search == "holdout",
            "{unit}: {why} / {why_search}"
        );
        if is_held {
            held += 1;
            assert_eq!((checkout.as_str(), search.as_str()), ("control", "control"));
        } else {
            assert_eq!(search, "treatment", "the winner is shipped to the others");
        }
        let converts = if is_held { i % 10 == 0 } else { i % 10 < 3 };
        if converts {
            events.push(json!({"type": "conversion", "unit_id": unit}));
        }
    }
    assert!(
        (340..460).contains(&held),
        "{held} of {total} held out at 20%"
    );
    server.persist(json!({ "events": events }));
    server.barrier();

    let (status, results) = server.get("/v1/holdouts/q4/results");
    assert_eq!(status, 200, "{results}");
    let variants = &results["metrics"][0]["variants"];
    assert_eq!(variants[0]["variant"], "holdout");
    assert_eq!(variants[0]["units"], held);
    assert_eq!(variants[1]["variant"], "exposed");
    assert_eq!(variants[1]["units"], total - held);
    let rate = |v: &Value| v["rate"].as_f64().unwrap();
    assert!((rate(&variants[0]) - 0.1).abs() < 0.04, "{variants}");
    assert!((rate(&variants[1]) - 0.3).abs() < 0.04, "{variants}");
    let lift = &results["metrics"][0]["comparisons"][0];
    assert!(lift["p_value"].as_f64().unwrap() < 1e-6, "{lift}");
    assert_eq!(results["srm"]["detected"], false, "{}", results["srm"]);
    let (status, unknown) = server.get("/v1/holdouts/q4/results?metric=revenue");
    assert_eq!(
        (status, error_code(&unknown)),
        (422, "validation_failed"),
        "{unknown}"
    );

    // Ended, it holds no one: its units are hashed like everyone else.
    let (status, ended) = server.delete("/v1/holdouts/q4");
    assert_eq!(status, 200, "{ended}");
    assert!(ended["ended_at"].is_string(), "{ended}");
    let released = (0..total)
        .map(|i| format!("u{i}"))
        .find(|u| assigned(&server, "search", u, false).0 == "control")
        .is_none();
    assert!(
        released,
        "no unit is served the control of a shipped winner any more"
    );
    let (status, list) = server.get("/v1/holdouts");
    assert_eq!(status, 200);
    assert_eq!(list["holdouts"][0]["key"], "q4");
    let (status, gone) = server.get("/v1/holdouts/nope");
    assert_eq!(
        (status, error_code(&gone)),
        (404, "holdout_not_found"),
        "{gone}"
    );
}

#[test]
fn holdouts_are_checked_and_cover_only_their_experiments() {
    let server = TestServer::start();
    server.running_experiment("covered", json!({}));
    server.running_experiment("free", json!({}));
    let refused = |body: Value, field: &str| {
        let (status, err) = server.post("/v1/holdouts", body);
        assert_eq!(
            (status, error_code(&err)),
            (422, "validation_failed"),
            "{err}"
        );
        assert_eq!(err["error"]["field"], field, "{err}");
    };
    refused(
        json!({"key": "h", "name": "h", "fraction": 0.9}),
        "fraction",
    );
    refused(
        json!({"key": "h", "name": "h", "fraction": 0.1, "metrics": [{"key": "r", "kind": "ratio", "measure": "a", "denominator": "b"}]}),
        "metrics[0]",
    );
    let (status, created) = server.post(
        "/v1/holdouts",
        json!({"key": "h", "name": "h", "fraction": 0.5, "experiments": ["covered"]}),
    );
    assert_eq!(status, 201, "{created}");
    let mut held = 0;
    for i in 0..200 {
        let unit = format!("v{i}");
        if assigned(&server, "covered", &unit, false).1 == "holdout" {
            held += 1;
        }
        assert_ne!(assigned(&server, "free", &unit, false).1, "holdout");
    }
    assert!((70..130).contains(&held), "{held} of 200 at 50%");
}
