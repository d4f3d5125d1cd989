//! Bandits over HTTP: an experiment whose split follows its primary metric,
//! one phase per update.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{error_code, TestServer};

fn bandit_body(key: &str, bandit: Value) -> Value {
    json!({
        "key": key, "name": key,
        "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}, {"key": "c", "weight": 1}],
        "metrics": [{"key": "conversion", "kind": "binomial"}],
        "primary_metric": "conversion",
        "allocation": "bandit",
        "bandit": bandit,
    })
}

#[test]
fn a_bandit_moves_traffic_to_the_best_arm_in_phases_and_keeps_the_floor() {
    let server = TestServer::start_with(&[("ABACUS_RESULTS__CHECK_INTERVAL_MS", "200")]);
    let (status, created) = server.post(
        "/v1/experiments",
        bandit_body(
            "arms",
            json!({"burn_in_units": 30, "floor": 0.05, "update_interval_s": 1}),
        ),
    );
    assert_eq!(status, 201, "{created}");
    let (status, started) = server.post_empty("/v1/experiments/arms/start");
    assert_eq!(status, 200, "{started}");
    let third = 1.0 / 3.0;
    assert_eq!(
        started["phases"][0]["weights"],
        json!([third, third, third])
    );

    // Units arrive in rounds; `c` converts half the time, the others one
    // in twenty. The split follows.
    let mut next_unit = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let experiment = loop {
        let mut events = Vec::new();
        for _ in 0..90 {
            let unit = format!("u{next_unit}");
            next_unit += 1;
            let variant = server.assign("arms", &unit)["variant"]
                .as_str()
                .unwrap()
                .to_owned();
            let converts = match variant.as_str() {
                "c" => next_unit % 2 == 0,
                _ => next_unit % 20 == 0,
            };
            if converts {
                events.push(json!({"type": "conversion", "unit_id": unit}));
            }
        }
        server.persist(json!({ "events": events }));
        std::thread::sleep(Duration::from_millis(1200));
        let (_, experiment) = server.get("/v1/experiments/arms");
        let phases = experiment["phases"].as_array().unwrap().len();
        let c = experiment["variants"][2]["weight"].as_f64().unwrap();
        if phases >= 2 && c > 0.8 {
            break experiment;
        }
        assert!(
            Instant::now() < deadline,
            "the split never followed: {experiment}"
        );
    };
    let phases = experiment["phases"].as_array().unwrap();
    for p in phases.iter().skip(1) {
        let w: Vec<f64> = p["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_f64().unwrap())
            .collect();
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{p}");
        assert!(w.iter().all(|&x| x >= 0.05 - 1e-9), "floor: {p}");
    }

    // A bandit sets its own weights.
    let (status, refused) = server.patch(
        "/v1/experiments/arms",
        json!({"variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}, {"key": "c", "weight": 8}]}),
    );
    assert_eq!(
        (status, error_code(&refused)),
        (409, "not_editable"),
        "{refused}"
    );

    // Each update is audited as abacus's own.
    let (status, audit) = server.get("/v1/audit?resource=experiment&resource_id=arms");
    assert_eq!(status, 200, "{audit}");
    let updates: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "experiment.reallocated")
        .collect();
    assert!(!updates.is_empty(), "{audit}");
    assert!(updates.iter().all(|e| e["actor"] == "abacus"), "{audit}");

    // Results read every phase, weighed: `c` is the winner by far.
    server.barrier();
    let (status, results) = server.get("/v1/experiments/arms/results");
    assert_eq!(status, 200, "{results}");
    assert!(results["phases"].as_array().unwrap().len() >= 2);
    let rates: Vec<f64> = results["metrics"][0]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rate"].as_f64().unwrap())
        .collect();
    assert!(
        rates[2] > 0.35 && rates[0] < 0.15 && rates[1] < 0.15,
        "{rates:?}"
    );
}

#[test]
fn bandit_settings_are_checked() {
    let server = TestServer::start();
    let refused = |body: Value, field: &str| {
        let (status, err) = server.post("/v1/experiments", body);
        assert_eq!(
            (status, error_code(&err)),
            (422, "validation_failed"),
            "{err}"
        );
        assert_eq!(err["error"]["field"], field, "{err}");
    };
    let mut no_primary = bandit_body("x1", json!({}));
    no_primary.as_object_mut().unwrap().remove("primary_metric");
    refused(no_primary, "primary_metric");
    let mut ratio = bandit_body("x2", json!({}));
    ratio["metrics"] =
        json!([{"key": "rpv", "kind": "ratio", "measure": "purchase", "denominator": "visit"}]);
    ratio["primary_metric"] = json!("rpv");
    refused(ratio, "primary_metric");
    refused(bandit_body("x3", json!({"floor": 0.5})), "bandit.floor");
    refused(
        bandit_body("x4", json!({"burn_in_units": 1})),
        "bandit.burn_in_units",
    );
    refused(
        bandit_body("x5", json!({"update_interval_s": 0})),
        "bandit.update_interval_s",
    );
    let mut fixed = bandit_body("x6", json!({}));
    fixed["allocation"] = json!("fixed");
    refused(fixed, "bandit");
    // Defaults fill what is left out.
    let mut defaults = bandit_body("ok", json!({}));
    defaults.as_object_mut().unwrap().remove("bandit");
    let (status, created) = server.post("/v1/experiments", defaults);
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["bandit"],
        json!({"burn_in_units": 100, "floor": 0.01, "update_interval_s": 86400})
    );
    assert_eq!(created["allocation"], "bandit");
}
