//! Results over HTTP: numbers equal to the scipy/statsmodels reference for
//! the same counts, nulls with reasons where undefined, time windows, and
//! the sample-size calculator.

use serde_json::{json, Value};

use crate::common::TestServer;

const CASES: &str = include_str!("../stats/cases.json");

fn reference(name: &str) -> Value {
    let cases: Value = serde_json::from_str(CASES).unwrap();
    cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

fn close(expected: &Value, actual: &Value) -> bool {
    match (expected.as_f64(), actual.as_f64()) {
        (Some(e), Some(a)) => (e - a).abs() <= 1e-6 * e.abs().max(a.abs()),
        _ => expected == actual,
    }
}

/// Each of `fields` of `actual` is [`close`] to `expected`'s.
fn assert_close_fields(case: &str, expected: &Value, actual: &Value, fields: &[&str]) {
    for field in fields {
        assert!(
            close(&expected[field], &actual[field]),
            "{case}, {field}: {} vs {}",
            expected[field],
            actual[field]
        );
    }
}

/// Sends exposures for `units` units of `variant` (ids `{variant}-{i}`),
/// and a purchase for the first `buyers` of them.
fn populate(server: &TestServer, variant: &str, units: usize, buyers: usize) {
    let mut events: Vec<Value> = (0..units)
        .map(|i| json!({"type": "exposure", "unit_id": format!("{variant}-{i}"), "experiment": "exp", "variant": variant}))
        .collect();
    events.extend(
        (0..buyers).map(|i| json!({"type": "purchase", "unit_id": format!("{variant}-{i}")})),
    );
    for chunk in events.chunks(1000) {
        let (status, body) = server.post("/v1/events", json!({ "events": chunk }));
        assert_eq!(status, 202, "{body}");
    }
}

#[test]
fn results_match_the_reference_statistics_for_the_same_counts() {
    let server = TestServer::start();
    server.post(
        "/v1/experiments",
        json!({
            "key": "exp", "name": "reference",
            "variants": [{"key": "control", "weight": 1}, {"key": "t1", "weight": 1}],
            "metrics": [{"key": "purchase", "kind": "binomial"}],
            "primary_metric": "purchase"
        }),
    );
    assert_eq!(server.post_empty("/v1/experiments/exp/start").0, 200);
    populate(&server, "control", 1000, 100);
    populate(&server, "t1", 1000, 120);
    server.barrier();

    let (status, results) = server.get("/v1/experiments/exp/results");
    assert_eq!(status, 200, "{results}");
    let case = reference("binomial medium");
    let metric = &results["metrics"][0];
    assert_eq!(
        (metric["metric"].as_str(), metric["primary"].as_bool()),
        (Some("purchase"), Some(true))
    );
    for (i, expected) in case["variants"].as_array().unwrap().iter().enumerate() {
        let actual = &metric["variants"][i];
        for field in ["variant", "units", "conversions", "rate", "stddev"] {
            assert!(
                close(&expected[field], &actual[field]),
                "{field}: {expected} vs {actual}"
            );
        }
        for bound in 0..2 {
            assert!(close(&expected["ci"][bound], &actual["ci"][bound]));
        }
    }
    let expected = &case["comparisons"][0];
    let actual = &metric["comparisons"][0];
    assert_close_fields(
        "binomial medium",
        expected,
        actual,
        &[
            "statistic",
            "p_value",
            "p_value_holm",
            "significant",
            "chance_to_win",
            "sequential_p_value",
        ],
    );
    for lift in ["absolute", "relative"] {
        assert!(close(
            &expected[lift]["estimate"],
            &actual[lift]["estimate"]
        ));
        for bound in 0..2 {
            assert!(close(
                &expected[lift]["ci"][bound],
                &actual[lift]["ci"][bound]
            ));
        }
    }
    assert!(close(&case["srm"]["p_value"], &results["srm"]["p_value"]));
    assert_eq!(results["srm"]["detected"], false);
    assert_eq!(results["units"], 2000);

    // One metric by name; a metric the experiment does not have is 422.
    let (status, one) = server.get("/v1/experiments/exp/results?metric=purchase");
    assert_eq!((status, one["metrics"].as_array().unwrap().len()), (200, 1));
    let (status, err) = server.get("/v1/experiments/exp/results?metric=nope");
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("metric"))
    );
}

#[test]
fn an_experiment_without_data_gives_nulls_with_reasons() {
    let server = TestServer::start();
    server.running_experiment(
        "exp",
        json!({"metrics": [{"key": "revenue", "kind": "mean"}, {"key": "signup", "kind": "binomial"}]}),
    );
    let (status, results) = server.get("/v1/experiments/exp/results");
    assert_eq!(status, 200, "{results}");
    assert_eq!(results["srm"]["p_value"], Value::Null);
    assert!(results["srm"]["reason"].is_string());
    for metric in results["metrics"].as_array().unwrap() {
        let c = &metric["comparisons"][0];
        assert_eq!(c["p_value"], Value::Null, "{c}");
        assert!(c["reason"].is_string(), "{c}");
        assert_eq!(metric["variants"][0]["reason"], "no exposed units");
    }
    let text = serde_json::to_string(&results).unwrap();
    assert!(!text.contains("NaN"));
    let (status, _) = server.get("/v1/experiments/missing/results");
    assert_eq!(status, 404);
}

#[test]
fn a_time_window_counts_only_units_and_events_inside_it() {
    let server = TestServer::start_with(&[("ABACUS_INGEST__MAX_EVENT_AGE_S", "315360000")]);
    server.running_experiment(
        "exp",
        json!({"metrics": [{"key": "buy", "kind": "binomial"}]}),
    );
    let event = |kind: &str, unit: &str, variant: Option<&str>, ts: &str| {
        let mut e = json!({"type": kind, "unit_id": unit, "timestamp": ts});
        if let Some(v) = variant {
            e["experiment"] = json!("exp");
            e["variant"] = json!(v);
        }
        e
    };
    let (status, _) = server.post(
        "/v1/events?ack=persisted",
        json!({"events": [
            event("exposure", "early", Some("control"), "2026-10-01T00:00:00Z"),
            event("buy", "early", None, "2026-10-01T01:00:00Z"),
            event("exposure", "late", Some("treatment"), "2026-10-10T00:00:00Z"),
            event("buy", "late", None, "2026-10-10T01:00:00Z"),
        ]}),
    );
    assert_eq!(status, 202);
    let (_, all) = server.get("/v1/experiments/exp/results");
    assert_eq!(all["units"], 2);
    let (status, window) =
        server.get("/v1/experiments/exp/results?from=2026-10-05T00:00:00Z&to=2026-10-20T00:00:00Z");
    assert_eq!(status, 200, "{window}");
    assert_eq!(window["units"], 1);
    let variants = &window["metrics"][0]["variants"];
    assert_eq!(variants[0]["units"], 0);
    assert_eq!(
        (&variants[1]["units"], &variants[1]["conversions"]),
        (&json!(1), &json!(1))
    );
    let (status, _) =
        server.get("/v1/experiments/exp/results?from=2026-10-20T00:00:00Z&to=2026-10-05T00:00:00Z");
    assert_eq!(status, 400);
}

#[test]
fn sample_size_for_proportions_and_means() {
    let server = TestServer::start();
    let (status, body) =
        server.get("/v1/stats/sample-size?baseline=0.1&mde=0.02&alpha=0.05&power=0.8");
    assert_eq!(
        (status, body["units_per_variant"].as_u64()),
        (200, Some(3841)),
        "{body}"
    );
    let (status, body) = server.get("/v1/stats/sample-size?stddev=10&mde=1");
    assert_eq!(
        (status, body["units_per_variant"].as_u64()),
        (200, Some(1570))
    );
    let (status, body) = server.get("/v1/stats/sample-size?baseline=0.99&mde=0.02");
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("mde"))
    );
    let (status, body) = server.get("/v1/stats/sample-size?baseline=0.1");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    let (status, _) = server.get("/v1/stats/sample-size?baseline=0.1&stddev=2&mde=0.01");
    assert_eq!(status, 400);
}

#[test]
fn significance_and_srm_are_recorded_once_and_survive_a_restart() {
    let mut server = TestServer::start_with(&[("ABACUS_RESULTS__CHECK_INTERVAL_MS", "50")]);
    server.post(
        "/v1/experiments",
        json!({
            "key": "exp", "name": "signals",
            "variants": [{"key": "control", "weight": 1}, {"key": "t1", "weight": 1}],
            "metrics": [{"key": "purchase", "kind": "binomial"}],
            "primary_metric": "purchase"
        }),
    );
    assert_eq!(server.post_empty("/v1/experiments/exp/start").0, 200);
    let (_, before) = server.get("/v1/experiments/exp");
    assert_eq!(before["significant_at"], Value::Null);
    assert_eq!(before["srm_detected_at"], Value::Null);
    // 2,000 vs 3,000 exposed units on 50/50 weights; 10% vs 20% buy.
    populate(&server, "control", 2000, 200);
    populate(&server, "t1", 3000, 600);
    server.barrier();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let recorded = loop {
        let (_, e) = server.get("/v1/experiments/exp");
        if e["significant_at"].is_string() && e["srm_detected_at"].is_string() {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "never recorded: {e}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // More evidence later does not move the first record.
    populate(&server, "t1", 500, 200);
    server.barrier();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (_, later) = server.get("/v1/experiments/exp");
    assert_eq!(later["significant_at"], recorded["significant_at"]);
    assert_eq!(later["srm_detected_at"], recorded["srm_detected_at"]);
    server.restart();
    let (_, restarted) = server.get("/v1/experiments/exp");
    assert_eq!(restarted["significant_at"], recorded["significant_at"]);
    assert_eq!(restarted["srm_detected_at"], recorded["srm_detected_at"]);
}

#[test]
fn the_timeline_keeps_cumulative_figures_as_the_experiment_grows() {
    let server = TestServer::start_with(&[("ABACUS_RESULTS__TIMELINE_INTERVAL_S", "1")]);
    server.post(
        "/v1/experiments",
        json!({
            "key": "exp", "name": "timeline",
            "variants": [{"key": "control", "weight": 1}, {"key": "t1", "weight": 1}],
            "metrics": [{"key": "purchase", "kind": "binomial"}],
            "primary_metric": "purchase"
        }),
    );
    assert_eq!(server.post_empty("/v1/experiments/exp/start").0, 200);
    populate(&server, "control", 100, 10);
    server.barrier();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    populate(&server, "t1", 100, 40);
    server.barrier();
    std::thread::sleep(std::time::Duration::from_millis(2500));

    let (status, timeline) = server.get("/v1/experiments/exp/timeline");
    assert_eq!(status, 200, "{timeline}");
    assert_eq!(timeline["metric"], "purchase");
    let points = timeline["points"].as_array().unwrap();
    assert!(points.len() >= 3, "{timeline}");
    let units = |p: &Value, i: usize| p["variants"][i]["units"].as_u64().unwrap();
    for pair in points.windows(2) {
        assert!(pair[0]["at_ms"].as_i64() <= pair[1]["at_ms"].as_i64());
        assert!(units(&pair[0], 1) <= units(&pair[1], 1), "{timeline}");
    }
    // Kept while only the control had data, and now.
    assert!(
        points
            .iter()
            .any(|p| units(p, 0) == 100 && units(p, 1) == 0),
        "{timeline}"
    );
    let now = points.last().unwrap();
    assert_eq!((units(now, 0), units(now, 1)), (100, 100));
    assert_eq!(now["variants"][0]["value"].as_f64(), Some(0.1));
    assert_eq!(now["variants"][1]["value"].as_f64(), Some(0.4));

    let (status, thin) = server.get("/v1/experiments/exp/timeline?points=2");
    assert_eq!(status, 200);
    assert_eq!(thin["points"].as_array().unwrap().len(), 2, "{thin}");
    assert_eq!(thin["points"][1]["variants"], now["variants"]);
    assert_eq!(server.get("/v1/experiments/exp/timeline?points=1").0, 400);
    assert_eq!(
        server.get("/v1/experiments/exp/timeline?metric=nope").0,
        422
    );
}

/// Sends exposures for `units` units of `variant` and a `purchase` for the
/// first `buyers`, a `signup` for the first `signups` of them.
fn populate_two(server: &TestServer, variant: &str, units: usize, buyers: usize, signups: usize) {
    populate(server, variant, units, buyers);
    let events: Vec<Value> = (0..signups)
        .map(|i| json!({"type": "signup", "unit_id": format!("{variant}-{i}")}))
        .collect();
    for chunk in events.chunks(1000) {
        let (status, body) = server.post("/v1/events", json!({ "events": chunk }));
        assert_eq!(status, 202, "{body}");
    }
}

/// The adjusted p-values and flags of every comparison of `results`
/// against the reference family `name`'s.
fn assert_family(results: &Value, name: &str) {
    let case = reference(name);
    for (i, expected) in case["metrics"].as_array().unwrap().iter().enumerate() {
        let metric = results["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == ["purchase", "signup"][i])
            .unwrap_or_else(|| panic!("metric {i} in {results}"));
        for (e, a) in expected["comparisons"]
            .as_array()
            .unwrap()
            .iter()
            .zip(metric["comparisons"].as_array().unwrap())
        {
            assert_close_fields(
                name,
                e,
                a,
                &[
                    "p_value",
                    "p_value_holm",
                    "p_value_adjusted",
                    "significant",
                    "sequential_p_value_adjusted",
                    "sequential_significant",
                ],
            );
        }
    }
}

#[test]
fn a_correction_spans_every_treatment_and_metric_and_can_change_any_time() {
    let server = TestServer::start();
    let (status, created) = server.post(
        "/v1/experiments",
        json!({
            "key": "exp", "name": "family",
            "variants": [{"key": "control", "weight": 1}, {"key": "t1", "weight": 1}, {"key": "t2", "weight": 1}],
            "metrics": [{"key": "purchase", "kind": "binomial"}, {"key": "signup", "kind": "binomial"}],
            "correction": "bh"
        }),
    );
    assert_eq!(
        (status, created["correction"].as_str()),
        (201, Some("bh")),
        "{created}"
    );
    assert_eq!(server.post_empty("/v1/experiments/exp/start").0, 200);
    // The reference family "served": purchases 30/45/52, signups 60/66/90
    // of 300 units a variant.
    populate_two(&server, "control", 300, 30, 60);
    populate_two(&server, "t1", 300, 45, 66);
    populate_two(&server, "t2", 300, 52, 90);
    server.barrier();

    let (status, results) = server.get("/v1/experiments/exp/results");
    assert_eq!(status, 200, "{results}");
    assert_eq!(results["correction"], json!({"method": "bh", "members": 4}));
    assert_family(&results, "family served bh");
    // One metric's numbers are those of the whole family.
    let (_, one) = server.get("/v1/experiments/exp/results?metric=signup");
    assert_eq!(one["metrics"].as_array().unwrap().len(), 1);
    assert_eq!(
        one["metrics"][0]["comparisons"],
        results["metrics"][1]["comparisons"]
    );

    for (correction, name, members) in [
        (json!("holm"), "family served holm", 4),
        (json!("none"), "family served none", 4),
        (Value::Null, "family served per metric", 2),
    ] {
        let (status, patched) =
            server.patch("/v1/experiments/exp", json!({ "correction": correction }));
        assert_eq!(status, 200, "{patched}");
        assert_eq!(patched["correction"], correction);
        let (_, results) = server.get("/v1/experiments/exp/results");
        assert_eq!(
            results["correction"],
            json!({"method": correction, "members": members})
        );
        assert_family(&results, name);
    }

    let (status, err) = server.patch("/v1/experiments/exp", json!({"correction": "bonferroni"}));
    assert_eq!(status, 422, "{err}");
    assert_eq!(
        (
            err["error"]["code"].as_str(),
            err["error"]["field"].as_str()
        ),
        (Some("invalid_body"), Some("correction")),
        "{err}"
    );
}
