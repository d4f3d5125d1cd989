//! The always-valid p-value tuned to what the team planned, over HTTP: the
//! results say what it was tuned for, the tuning changes what the same
//! data can show, and the sample-size answer tells both tests' power.

use serde_json::{json, Value};

use crate::common::TestServer;

/// Exposes `n` units to `variant`, `converted` of them converting.
fn populate(server: &TestServer, key: &str, variant: &str, n: usize, converted: usize) {
    let mut events = Vec::new();
    for i in 0..n {
        let unit = format!("{variant}-{i}");
        events.push(
            json!({"type": "exposure", "unit_id": unit, "experiment": key, "variant": variant}),
        );
        if i < converted {
            events.push(json!({"type": "conversion", "unit_id": unit, "experiment": key}));
        }
    }
    for chunk in events.chunks(1000) {
        server.persist(json!({ "events": chunk }));
    }
}

fn results(server: &TestServer, key: &str) -> Value {
    let (status, r) = server.get(&format!("/v1/experiments/{key}/results"));
    assert_eq!(status, 200, "{r}");
    r["metrics"][0].clone()
}

#[test]
fn results_say_what_the_always_valid_test_is_tuned_for_and_the_plan_matters() {
    let server = TestServer::start();
    let binomial = json!([{"key": "conversion", "kind": "binomial"}]);
    server.running_experiment("exp", json!({"metrics": binomial}));
    // The case: 5,000 units an arm, 10% against 11.5%.
    populate(&server, "exp", "control", 5000, 500);
    populate(&server, "exp", "treatment", 5000, 575);
    server.barrier();

    let tuned = results(&server, "exp");
    assert_eq!(
        tuned["sequential"]["tuned_for"],
        json!({"source": "default", "units_per_variant": 5000}),
        "{tuned}"
    );
    let rho = tuned["sequential"]["rho"].as_f64().unwrap();
    assert!((7.5..9.0).contains(&rho), "{rho}");
    let p_tuned = tuned["comparisons"][0]["sequential_p_value"]
        .as_f64()
        .unwrap();
    let p_fixed = tuned["comparisons"][0]["p_value"].as_f64().unwrap();

    // The old fixed mixture, set by hand, on the same data.
    let (status, patched) = server.patch("/v1/experiments/exp", json!({"mixing_variance": 0.01}));
    assert_eq!(status, 200, "{patched}");
    let by_hand = results(&server, "exp");
    assert_eq!(
        by_hand["sequential"]["tuned_for"],
        json!({"source": "mixing_variance", "mixing_variance": 0.01})
    );
    assert_eq!(by_hand["sequential"]["rho"], Value::Null);
    let p_by_hand = by_hand["comparisons"][0]["sequential_p_value"]
        .as_f64()
        .unwrap();
    assert!(p_by_hand > p_fixed, "{p_by_hand}");
    assert!(p_fixed < p_tuned, "the fixed test says the most: {p_fixed}");

    // `null` tunes it again, now to the plan; planned for 200 times the
    // units it has, the mixture is far too narrow for this sample and the
    // same data says next to nothing.
    let (status, patched) = server.patch(
        "/v1/experiments/exp",
        json!({"mixing_variance": null, "plan": {"units_per_variant": 1_000_000, "mde": 0.1}}),
    );
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["mixing_variance"], Value::Null);
    let planned = results(&server, "exp");
    assert_eq!(
        planned["sequential"]["tuned_for"],
        json!({"source": "plan", "units_per_variant": 1_000_000})
    );
    let p_far = planned["comparisons"][0]["sequential_p_value"]
        .as_f64()
        .unwrap();
    assert!(
        p_far > 3.0 * p_tuned,
        "tuned to the sample it has, the test says more: {p_tuned} vs {p_far}"
    );
    // A metric's own MDE wins over the plan.
    let mut with_mde = binomial.clone();
    with_mde[0]["mde"] = json!(0.15);
    let (status, patched) = server.patch("/v1/experiments/exp", json!({"metrics": with_mde}));
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        results(&server, "exp")["sequential"]["tuned_for"],
        json!({"source": "mde", "mde": 0.15})
    );

    for (body, field) in [
        (
            json!({"plan": {"units_per_variant": 1}}),
            "plan.units_per_variant",
        ),
        (json!({"plan": {"mde": 0.0}}), "plan.mde"),
        (json!({"plan": {"mde": -0.1}}), "plan.mde"),
    ] {
        let (status, refused) = server.patch("/v1/experiments/exp", body.clone());
        assert_eq!(status, 422, "{body}: {refused}");
        assert_eq!(refused["error"]["field"], field, "{refused}");
    }
    let (status, refused) = server.patch(
        "/v1/experiments/exp",
        json!({"plan": {"units_per_variant": 10, "extra": 1}}),
    );
    assert_eq!(status, 422, "{refused}");
}

#[test]
fn the_sample_size_answer_tells_the_power_of_both_tests_at_the_plan() {
    let server = TestServer::start();
    let (status, plan) = server.get("/v1/stats/sample-size?baseline=0.1&mde=0.015");
    assert_eq!(status, 200, "{plan}");
    let fixed = plan["power_at_plan"]["fixed_horizon"].as_f64().unwrap();
    let always_valid = plan["power_at_plan"]["always_valid"].as_f64().unwrap();
    assert!((fixed - 0.8).abs() < 0.01, "{plan}");
    assert!(
        (0.45..0.65).contains(&always_valid) && always_valid >= 0.6 * fixed,
        "{plan}"
    );
    // The same question, the same answer: the simulation is seeded.
    let (_, again) = server.get("/v1/stats/sample-size?baseline=0.1&mde=0.015");
    assert_eq!(again, plan);
    let (_, means) = server.get("/v1/stats/sample-size?stddev=10&mde=1&power=0.9");
    let fixed = means["power_at_plan"]["fixed_horizon"].as_f64().unwrap();
    assert!((fixed - 0.9).abs() < 0.01, "{means}");
    assert!(means["power_at_plan"]["always_valid"].as_f64().unwrap() < fixed);
}
