//! GrowthBook bucketing, against the official GrowthBook Python SDK: a
//! team that recreates a running GrowthBook experiment in abacus keeps
//! every user's variation.

use serde_json::{json, Value};

use crate::common::{error_code, python, TestServer};

/// What `tests/growthbook/oracle.py` prints: GrowthBook's answers for
/// `experiments` random experiments × `units` random unit ids.
fn oracle(experiments: usize, units: usize, seed: u64) -> Value {
    let [experiments, units, seed] =
        [experiments as u64, units as u64, seed].map(|n| n.to_string());
    let out = python("tests/growthbook/oracle.py", &[&experiments, &units, &seed]);
    serde_json::from_slice(&out).expect("the oracle's JSON")
}

#[test]
fn every_unit_gets_the_variation_growthbooks_sdk_gives() {
    const EXPERIMENTS: usize = 200;
    const UNITS: usize = 50; // 10,000 pairs
    let answers = oracle(EXPERIMENTS, UNITS, 20_261_201);
    let server = TestServer::start();

    let experiments = answers["experiments"].as_array().expect("experiments");
    // GrowthBook lets experiments of one namespace overlap; abacus refuses
    // overlapping slices of a layer. So the experiments go in rounds of
    // mutually disjoint ones, each round archived before the next.
    let overlap =
        |a: &Value, b: &Value| match (a["namespace"].as_array(), b["namespace"].as_array()) {
            (Some(a), Some(b)) => {
                let range = |n: &Vec<Value>| (n[1].as_f64().unwrap(), n[2].as_f64().unwrap());
                let ((a0, a1), (b0, b1)) = (range(a), range(b));
                a[0] == b[0] && a0 < b1 && b0 < a1
            }
            _ => false,
        };
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, e) in experiments.iter().enumerate() {
        let fits = |r: &&mut Vec<usize>| r.iter().all(|&j| !overlap(e, &experiments[j]));
        match rounds.iter_mut().find(fits) {
            Some(round) => round.push(i),
            None => rounds.push(vec![i]),
        }
    }
    assert!(
        rounds.len() > 1,
        "the oracle's namespaces overlap somewhere"
    );
    let units = answers["units"].as_array().expect("units");
    let expected = answers["expected"].as_array().expect("expected");
    let mut wrong = Vec::new();
    let mut compared = 0;
    for round in &rounds {
        let mut keys = Vec::new();
        for (i, e) in round.iter().map(|&i| (i, &experiments[i])) {
            let key = format!("gb-{i}");
            let variants: Vec<Value> = e["weights"]
                .as_array()
                .expect("weights")
                .iter()
                .enumerate()
                .map(|(j, w)| json!({"key": format!("v{j}"), "weight": w}))
                .collect();
            let layer = match e["namespace"].as_array() {
                Some(ns) => json!({"key": ns[0], "start": ns[1], "end": ns[2]}),
                None => Value::Null,
            };
            let (status, body) = server.post(
                "/v1/experiments",
                json!({
                    "key": key, "name": key, "salt": e["seed"], "variants": variants,
                    "coverage": e["coverage"], "layer": layer,
                    "bucketing": {"scheme": "growthbook", "hash_version": e["hash_version"]},
                }),
            );
            assert_eq!(status, 201, "{e}: {body}");
            assert_eq!(body["bucketing"]["scheme"], "growthbook");
            let (status, body) = server.post_empty(&format!("/v1/experiments/{key}/start"));
            assert_eq!(status, 200, "{body}");
            keys.push(key);
        }

        for (u, unit) in units.iter().enumerate() {
            for chunk in keys.chunks(100) {
                let (status, body) = server.post(
                    "/v1/assignments",
                    json!({"unit_id": unit, "experiments": chunk, "log_exposure": false}),
                );
                assert_eq!(status, 200, "{body}");
                for a in body["assignments"].as_array().expect("assignments") {
                    compared += 1;
                    let key = a["experiment"].as_str().expect("key");
                    let i: usize = key["gb-".len()..].parse().expect("index");
                    let want = &expected[i * UNITS + u];
                    let (want_in, want_variation) =
                        (want[0] == true, want[1].as_u64().expect("id"));
                    let got_in = a["in_experiment"] == true;
                    let got = a["variant"].as_str().expect("variant");
                    // Outside the experiment GrowthBook serves its first
                    // variation, abacus its control.
                    let agrees = got_in == want_in && got == format!("v{want_variation}");
                    if !agrees {
                        wrong.push(format!(
                        "{unit} in {key} ({}): abacus {got} in={got_in}, GrowthBook v{want_variation} in={want_in}",
                        experiments[i]
                    ));
                    }
                }
            }
        }
        for key in &keys {
            let (status, body) = server.delete(&format!("/v1/experiments/{key}"));
            assert_eq!(status, 200, "{body}");
        }
    }
    assert_eq!(compared, EXPERIMENTS * UNITS, "every pair compared");
    assert!(
        wrong.is_empty(),
        "{} of {} differ, e.g. {:#?}",
        wrong.len(),
        EXPERIMENTS * UNITS,
        &wrong[..wrong.len().min(5)]
    );
}

#[test]
fn growthbook_bucketing_refuses_what_growthbook_would_not_split_as_asked() {
    let server = TestServer::start();
    for (bucketing, variants, field) in [
        (
            json!({"scheme": "growthbook", "hash_version": 3}),
            json!([{"key": "a", "weight": 0.5}, {"key": "b", "weight": 0.5}]),
            "bucketing.hash_version",
        ),
        (
            json!({"scheme": "growthbook", "hash_version": 2}),
            json!([{"key": "a", "weight": 1}, {"key": "b", "weight": 3}]),
            "variants",
        ),
    ] {
        let (status, body) = server.post(
            "/v1/experiments",
            json!({"key": "gb", "name": "gb", "variants": variants, "bucketing": bucketing}),
        );
        assert_eq!(
            (status, error_code(&body)),
            (422, "validation_failed"),
            "{body}"
        );
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let (status, body) = server.post(
        "/v1/experiments",
        json!({"key": "gb", "name": "gb", "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}],
               "bucketing": {"scheme": "optimizely"}}),
    );
    assert_eq!(status, 422, "{body}");

    // Chosen while a draft, fixed once running.
    let (status, created) = server.post(
        "/v1/experiments",
        json!({"key": "gb", "name": "gb", "variants": [{"key": "a", "weight": 0.5}, {"key": "b", "weight": 0.5}]}),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["bucketing"], json!({"scheme": "abacus"}));
    let growthbook = json!({"bucketing": {"scheme": "growthbook", "hash_version": 2}});
    let (status, patched) = server.patch("/v1/experiments/gb", growthbook.clone());
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["bucketing"]["hash_version"], 2);
    server.post_empty("/v1/experiments/gb/start");
    let (status, body) = server.patch(
        "/v1/experiments/gb",
        json!({"bucketing": {"scheme": "abacus"}}),
    );
    assert_eq!((status, error_code(&body)), (409, "not_editable"), "{body}");
}
