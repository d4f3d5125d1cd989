//! Model experiments end to end: predictions and outcomes joined by
//! `prediction_id`, the model metrics compared between versions, the
//! calibration table, the live predictions view, and drift and quality
//! alerts on a model that changed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::TestServer;

fn at(minutes_from_now: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::minutes(minutes_from_now))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}

fn metric<'a>(results: &'a Value, key: &str) -> &'a Value {
    results["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == key)
        .unwrap_or_else(|| panic!("no metric {key} in {results}"))
}

/// 400 units per variant, each with one prediction (a score of 0.8 or
/// 0.2, so the predicted label's probability is always 0.8) and, for 9 in
/// 10 of them, its outcome. The control is right for 7 in 10 units, the
/// treatment for 17 in 20.
fn classify(server: &TestServer) {
    for variant in ["control", "treatment"] {
        let mut predictions = Vec::new();
        let mut outcomes = Vec::new();
        for i in 0..400 {
            let unit = format!("{variant}-{i}");
            let truth = i % 2;
            let right = if variant == "control" {
                i % 10 < 7
            } else {
                i % 20 < 17
            };
            let predicted = if right { truth } else { 1 - truth };
            let latency = if variant == "control" {
                10 + i % 7
            } else {
                20 + i % 5
            };
            predictions.push(
                json!({"type": "exposure", "unit_id": unit, "experiment": "m", "variant": variant}),
            );
            predictions.push(json!({
                "type": "prediction", "unit_id": unit, "experiment": "m",
                "properties": {
                    "prediction_id": format!("p-{unit}"), "model": format!("{variant}-v1"),
                    "score": if predicted == 1 { 0.8 } else { 0.2 }, "latency_ms": latency
                }
            }));
            if i % 10 != 9 {
                outcomes.push(json!({
                    "type": "outcome", "unit_id": unit,
                    "properties": {"prediction_id": format!("p-{unit}"), "label": truth}
                }));
            }
        }
        server.persist(json!({ "events": predictions }));
        server.persist(json!({ "events": outcomes }));
    }
    // A second outcome of a joined prediction, and one of a prediction
    // never made: outcomes, joined to nothing.
    server.persist(json!({"events": [
        {"type": "outcome", "unit_id": "control-0", "properties": {"prediction_id": "p-control-0", "label": 1}},
        {"type": "outcome", "unit_id": "control-1", "properties": {"prediction_id": "p-elsewhere", "label": 1}},
    ]}));
}

#[test]
fn a_model_experiment_joins_outcomes_and_compares_model_versions() {
    let server = TestServer::start();
    server.running_experiment(
        "m",
        json!({"model": {"task": "classification"}, "primary_metric": "model_accuracy"}),
    );
    classify(&server);
    server.barrier();

    let (status, results) = server.get("/v1/experiments/m/results");
    assert_eq!(status, 200, "{results}");
    let model = &results["model"];
    assert_eq!(model["task"], "classification");
    let (control, treatment) = (&model["variants"][0], &model["variants"][1]);
    assert_eq!(
        (
            &control["predictions"],
            &control["outcomes"],
            &control["coverage"]
        ),
        (&json!(400), &json!(360), &json!(0.9)),
        "{control}"
    );
    // Joined: 9 units in 10; right: 7 of them (control), 16 in 18
    // (treatment).
    let accuracy = [280.0 / 360.0, 320.0 / 360.0];
    let log_loss = |right: f64| (right * -(0.8f64.ln()) + (360.0 - right) * -(0.2f64.ln())) / 360.0;
    let brier = |right: f64| (right * 0.04 + (360.0 - right) * 0.64) / 360.0;
    for (v, (acc, right)) in [control, treatment]
        .into_iter()
        .zip(accuracy.iter().zip([280.0, 320.0]))
    {
        assert!(close(v["accuracy"].as_f64().unwrap(), *acc, 1e-12), "{v}");
        assert!(
            close(v["log_loss"].as_f64().unwrap(), log_loss(right), 1e-12),
            "{v}"
        );
        assert!(
            close(v["brier"].as_f64().unwrap(), brier(right), 1e-12),
            "{v}"
        );
        assert_eq!(v["mae"], Value::Null, "{v}");
        // Every prediction's label had probability 0.8: one bin.
        let bin = &v["calibration"][8];
        assert_eq!(bin["outcomes"], 360, "{v}");
        assert!(close(bin["mean_confidence"].as_f64().unwrap(), 0.8, 1e-12));
        assert!(close(bin["accuracy"].as_f64().unwrap(), *acc, 1e-12));
        assert!(close(
            v["expected_calibration_error"].as_f64().unwrap(),
            (acc - 0.8).abs(),
            1e-12
        ));
    }
    // Latency: control 10..=16 ms, treatment 20..=24 ms (2% bins).
    let p50 = |v: &Value| v["latency_ms"]["p50"].as_f64().unwrap();
    assert!(
        close(p50(control), 13.0, 0.5) && close(p50(treatment), 22.0, 0.5),
        "{model}"
    );

    // The comparison is a metric like any other, clustered by unit.
    let acc = metric(&results, "model_accuracy");
    assert_eq!(
        (&acc["kind"], &acc["primary"]),
        (&json!("ratio"), &json!(true))
    );
    assert!(
        close(
            acc["variants"][0]["ratio"].as_f64().unwrap(),
            accuracy[0],
            1e-12
        ),
        "{acc}"
    );
    let c = &acc["comparisons"][0];
    assert!(
        close(
            c["absolute"]["estimate"].as_f64().unwrap(),
            accuracy[1] - accuracy[0],
            1e-9
        ),
        "{c}"
    );
    assert!(c["p_value"].as_f64().unwrap() < 0.001, "{c}");
    for key in [
        "model_log_loss",
        "model_brier",
        "model_coverage",
        "model_latency_p95",
    ] {
        assert!(
            metric(&results, key)["comparisons"][0]["p_value"].is_number(),
            "{key}"
        );
    }
    assert!(results["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["metric"] != "model_mae"));

    // Rebuilt from the stored events, the join gives the live figures
    // (sums of fractions as far as their order of addition allows).
    let (_, live) = server.get("/v1/experiments/m/aggregates");
    let (_, rebuilt) = server.get("/v1/experiments/m/aggregates?source=events");
    for v in ["control", "treatment"] {
        let (a, b) = (&live["variants"][v], &rebuilt["variants"][v]);
        for m in ["model.joined", "model.correct", "outcome", "prediction"] {
            assert_eq!(a["measures"][m], b["measures"][m], "{v} {m}");
        }
        let loss = |x: &Value| x["measures"]["model.log_loss"]["sum"].as_f64().unwrap();
        assert!(close(loss(a), loss(b), 1e-9), "{v}");
        let right = |x: &Value| x["model"]["calibration"][8]["correct"].clone();
        assert_eq!(right(a), right(b), "{v}");
        let predictions = |x: &Value| x["model"]["baseline"]["predictions"].clone();
        assert_eq!(predictions(a), predictions(b), "{v}");
    }
    assert_eq!(
        live["variants"]["control"]["measures"]["outcome"]["events"],
        362
    );

    // The live view: newest first, each with the outcome that joined it.
    let (status, live) = server.get("/v1/experiments/m/predictions?limit=3");
    assert_eq!(status, 200, "{live}");
    let list = live["predictions"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{live}");
    let times: Vec<&str> = list
        .iter()
        .map(|p| p["timestamp"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|t| t[0] >= t[1]), "{live}");
    let mut joined = 0;
    for p in list {
        // The treatment's predictions were sent last.
        let unit = p["unit_id"].as_str().unwrap();
        let i: u32 = unit.strip_prefix("treatment-").unwrap().parse().unwrap();
        assert_eq!(p["prediction_id"], format!("p-{unit}"));
        assert_eq!(
            (&p["model"], &p["variant"]),
            (&json!("treatment-v1"), &json!("treatment"))
        );
        if i % 10 == 9 {
            assert_eq!(p["outcome"], Value::Null, "{p}");
        } else {
            joined += 1;
            let outcome = &p["outcome"];
            assert_eq!(outcome["label"], (i % 2).to_string(), "{p}");
            assert_eq!(outcome["correct"], i % 20 < 17, "{p}");
        }
    }
    assert!(joined > 0, "{live}");

    // The variants' calibration and drift figures stay, whatever the
    // partitions are told after the start.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (_, later) = server.get("/v1/experiments/m/results");
    for v in later["model"]["variants"].as_array().unwrap() {
        assert_eq!(v["calibration"][8]["outcomes"], 360, "{v}");
        assert_eq!(v["drift"]["baseline_predictions"], 400, "{v}");
        assert_eq!(v["drift"]["window_predictions"], 400, "{v}");
    }
    assert_eq!(server.get("/v1/experiments/m/predictions?limit=0").0, 400);
    // Outside a model experiment predictions are listed, joined to nothing.
    server.running_experiment("plain", json!({}));
    server.persist(json!({"events": [
        {"type": "exposure", "unit_id": "solo", "experiment": "plain", "variant": "control"},
        {"type": "prediction", "unit_id": "solo", "experiment": "plain", "properties": {"prediction_id": "q", "value": 3}},
        {"type": "outcome", "unit_id": "solo", "properties": {"prediction_id": "q", "value": 3}},
    ]}));
    let (status, plain) = server.get("/v1/experiments/plain/predictions");
    assert_eq!(status, 200, "{plain}");
    let listed = &plain["predictions"][0];
    assert_eq!(
        (&listed["prediction_id"], &listed["outcome"]),
        (&json!("q"), &Value::Null),
        "{plain}"
    );
    assert_eq!(server.get("/v1/experiments/nope/predictions").0, 404);
}

#[test]
fn model_settings_and_prediction_events_are_checked() {
    let server = TestServer::start();
    let base = json!({"key": "x", "name": "x", "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]});
    let with = |extra: Value| {
        let mut body = base.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, field) in [
        (
            json!({"model": {"task": "classification", "join_window_hours": 0}}),
            "model.join_window_hours",
        ),
        (
            json!({"model": {"task": "regression", "drift": {"baseline_start": at(-60)}}}),
            "model.drift",
        ),
        (
            json!({"model": {"task": "regression", "drift": {"window_hours": 169}}}),
            "model.drift.window_hours",
        ),
        (
            json!({"model": {"task": "regression"}, "metrics": [{"key": "model_mae", "kind": "mean"}]}),
            "metrics[0].key",
        ),
    ] {
        let (status, error) = server.post("/v1/experiments", with(extra.clone()));
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (422, Some(field)),
            "{extra}: {error}"
        );
    }
    // A regression experiment gets the regressor's metrics; a guardrail
    // may watch one.
    let (status, created) = server.post(
        "/v1/experiments",
        with(json!({"model": {"task": "regression"}, "guardrails": [{"metric": "model_latency_p95", "max_relative_drop": 0.2, "higher_is_better": false}]})),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["model"]["join_window_hours"], 24);
    for (event, field) in [
        (
            json!({"type": "prediction", "unit_id": "u", "properties": {"prediction_id": "p", "value": 1}}),
            "experiment",
        ),
        (
            json!({"type": "prediction", "unit_id": "u", "experiment": "x", "properties": {"prediction_id": "p"}}),
            "properties.score",
        ),
        (
            json!({"type": "outcome", "unit_id": "u", "properties": {"label": "a"}}),
            "properties.prediction_id",
        ),
        (
            json!({"type": "outcome", "unit_id": "u", "properties": {"prediction_id": "p", "label": [1]}}),
            "properties.label",
        ),
    ] {
        let (status, error) = server.post("/v1/events", event.clone());
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (422, Some(field)),
            "{event}: {error}"
        );
    }
}

#[test]
fn a_regressor_is_scored_by_its_errors() {
    let server = TestServer::start();
    server.running_experiment("r", json!({"model": {"task": "regression"}}));
    let mut events = Vec::new();
    for (variant, miss) in [("control", 2.0), ("treatment", 1.0)] {
        for i in 0..50 {
            let unit = format!("{variant}-{i}");
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            events.push(
                json!({"type": "exposure", "unit_id": unit, "experiment": "r", "variant": variant}),
            );
            events.push(json!({"type": "prediction", "unit_id": unit, "experiment": "r", "value": 100.0 + sign * miss, "properties": {"prediction_id": "p"}}));
            events.push(json!({"type": "outcome", "unit_id": unit, "value": 100.0, "properties": {"prediction_id": "p"}}));
        }
    }
    server.persist(json!({ "events": events }));
    let (_, results) = server.get("/v1/experiments/r/results");
    let model = &results["model"]["variants"];
    assert_eq!(
        (&model[0]["mae"], &model[0]["rmse"]),
        (&json!(2.0), &json!(2.0)),
        "{model}"
    );
    assert_eq!(
        (&model[1]["mae"], &model[1]["calibration"]),
        (&json!(1.0), &json!([]))
    );
    let mae = metric(&results, "model_mae");
    assert!(close(
        mae["comparisons"][0]["absolute"]["estimate"]
            .as_f64()
            .unwrap(),
        -1.0,
        1e-12
    ));
}

#[test]
fn drift_and_quality_alerts_fire_for_the_model_that_changed() {
    let server = TestServer::start_with(&[("ABACUS_RESULTS__CHECK_INTERVAL_MS", "50")]);
    server.running_experiment(
        "d",
        json!({"model": {"task": "classification", "drift": {
            "baseline_start": at(-180), "baseline_end": at(-120), "window_hours": 1
        }}}),
    );
    for variant in ["control", "treatment"] {
        let mut events = Vec::new();
        for i in 0..200 {
            let unit = format!("{variant}-{i}");
            let s = f64::from(i % 100) / 100.0 + 0.005;
            events.push(json!({"type": "exposure", "unit_id": unit, "experiment": "d", "variant": variant, "timestamp": at(-240)}));
            // The baseline: scores spread over [0, 1], each label right.
            let label = i32::from(s >= 0.5);
            events.push(json!({"type": "prediction", "unit_id": unit, "experiment": "d", "timestamp": at(-150), "properties": {"prediction_id": "b", "score": s}}));
            events.push(json!({"type": "outcome", "unit_id": unit, "timestamp": at(-149), "properties": {"prediction_id": "b", "label": label}}));
            // Now the treatment scores everything above 0.5, and half of
            // it is wrong.
            let now = if variant == "treatment" {
                0.5 + s / 2.0
            } else {
                s
            };
            events.push(json!({"type": "prediction", "unit_id": unit, "experiment": "d", "timestamp": at(-10), "properties": {"prediction_id": "n", "score": now}}));
            events.push(json!({"type": "outcome", "unit_id": unit, "timestamp": at(-9), "properties": {"prediction_id": "n", "label": label}}));
        }
        server.persist(json!({ "events": events }));
    }
    for (metric, threshold) in [("prediction_drift", 0.2), ("model_quality", 0.1)] {
        let (status, rule) = server.post(
            "/v1/alerts/rules",
            json!({"name": metric, "metric": metric, "threshold": threshold, "experiment": "d"}),
        );
        assert_eq!(status, 201, "{rule}");
    }
    let (_, results) = server.get("/v1/experiments/d/results");
    let variants = &results["model"]["variants"];
    let psi = |v: &Value| v["drift"]["psi"].as_f64().unwrap();
    let worse = |v: &Value| v["quality"]["degradation"].as_f64().unwrap();
    assert!(
        psi(&variants[0]) < 1e-9 && worse(&variants[0]).abs() < 1e-9,
        "{variants}"
    );
    // Accuracy halved; the log loss rose by more.
    let window = &variants[1]["quality"]["window"];
    assert!(
        psi(&variants[1]) > 0.2 && window["accuracy"] == 0.5,
        "{variants}"
    );
    assert!(worse(&variants[1]) >= 0.5, "{variants}");
    assert_eq!(variants[1]["drift"]["baseline_predictions"], 200);

    let deadline = Instant::now() + Duration::from_secs(20);
    let alerts = loop {
        let (_, body) = server.get("/v1/alerts?experiment=d");
        let alerts = body["alerts"].as_array().unwrap().clone();
        if alerts.len() == 2 || Instant::now() > deadline {
            break alerts;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut fired: Vec<(String, bool)> = alerts
        .iter()
        .map(|a| {
            let message = a["message"].as_str().unwrap();
            (
                a["metric"].as_str().unwrap().to_owned(),
                message.contains("'treatment'"),
            )
        })
        .collect();
    fired.sort();
    assert_eq!(
        fired,
        [
            ("model_quality".to_owned(), true),
            ("prediction_drift".to_owned(), true)
        ],
        "{alerts:?}"
    );
}

#[test]
fn open_predictions_survive_a_restart_and_a_rebuild_finds_the_same_pairs() {
    let mut server = TestServer::start();
    server.running_experiment("s", json!({"model": {"task": "classification"}}));
    let mut predictions = Vec::new();
    let mut outcomes = Vec::new();
    for i in 0..20 {
        let unit = format!("u{i}");
        predictions.push(
            json!({"type": "exposure", "unit_id": unit, "experiment": "s", "variant": "control"}),
        );
        predictions.push(json!({"type": "prediction", "unit_id": unit, "experiment": "s", "properties": {"prediction_id": "p", "score": 0.9}}));
        outcomes.push(json!({"type": "outcome", "unit_id": unit, "properties": {"prediction_id": "p", "label": i % 4 != 0}}));
    }
    server.persist(json!({ "events": predictions }));
    server.restart();
    server.persist(json!({ "events": outcomes }));
    let joined = |server: &TestServer, source: &str| {
        let (status, a) = server.get(&format!("/v1/experiments/s/aggregates?source={source}"));
        assert_eq!(status, 200, "{a}");
        let m = &a["variants"]["control"]["measures"];
        (
            m["model.joined"]["sum"].clone(),
            m["model.correct"]["sum"].clone(),
        )
    };
    assert_eq!(joined(&server, "live"), (json!(20.0), json!(15.0)));
    assert_eq!(joined(&server, "events"), (json!(20.0), json!(15.0)));
}
