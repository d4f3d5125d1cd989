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
            "key": "exp", "name": "reference", "mixing_variance": 0.01,
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
            "key": "exp", "name": "family", "mixing_variance": 0.01,
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

/// Sends, for each unit `i` of `variant` in a served reference case, an
/// exposure and then what `events(i, value)` makes of its per-unit value.
fn serve_units(
    server: &TestServer,
    variant: &str,
    per_unit: &Value,
    events: impl Fn(&str, &Value) -> Vec<Value>,
) {
    let mut all = Vec::new();
    for (i, value) in per_unit.as_array().unwrap().iter().enumerate() {
        let unit = format!("{variant}-{i}");
        all.push(
            json!({"type": "exposure", "unit_id": unit, "experiment": "exp", "variant": variant}),
        );
        all.extend(events(&unit, value));
    }
    for chunk in all.chunks(1000) {
        let (status, body) = server.post("/v1/events", json!({ "events": chunk }));
        assert_eq!(status, 202, "{body}");
    }
}

/// Every figure of one metric's results against a reference case.
fn assert_metric(case_name: &str, metric: &Value, estimate: &[&str]) {
    let case = reference(case_name);
    for (expected, actual) in case["variants"]
        .as_array()
        .unwrap()
        .iter()
        .zip(metric["variants"].as_array().unwrap())
    {
        let mut fields = vec!["variant", "units", "stddev", "reason"];
        fields.extend(estimate);
        assert_close_fields(case_name, expected, actual, &fields);
        for bound in 0..2 {
            assert!(
                close(&expected["ci"][bound], &actual["ci"][bound]),
                "{case_name}: {actual}"
            );
        }
    }
    let (expected, actual) = (&case["comparisons"][0], &metric["comparisons"][0]);
    assert_close_fields(
        case_name,
        expected,
        actual,
        &[
            "statistic",
            "p_value",
            "chance_to_win",
            "sequential_p_value",
            "reason",
        ],
    );
    for lift in ["absolute", "relative"] {
        assert!(
            close(&expected[lift]["estimate"], &actual[lift]["estimate"]),
            "{case_name}: {actual}"
        );
        for bound in 0..2 {
            assert!(
                close(&expected[lift]["ci"][bound], &actual[lift]["ci"][bound]),
                "{case_name}: {actual}"
            );
        }
    }
}

fn metric<'a>(results: &'a Value, key: &str) -> &'a Value {
    results["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == key)
        .unwrap_or_else(|| panic!("{key} in {results}"))
}

/// Results until `done` holds of them (a changed metric definition is
/// recomputed by the ingest partitions in the background).
fn results_once(server: &TestServer, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, results) = server.get("/v1/experiments/exp/results");
        assert_eq!(status, 200, "{results}");
        if done(&results) {
            return results;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never settled: {results}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn ratio_and_capped_metrics_match_the_reference_and_a_new_cap_is_recomputed() {
    let mut server = TestServer::start();
    let (status, created) = server.post(
        "/v1/experiments",
        json!({
            "key": "exp", "name": "ratio and cap", "mixing_variance": 0.01,
            "variants": [{"key": "control", "weight": 1}, {"key": "t1", "weight": 1}],
            "metrics": [
                {"key": "taps_per_visit", "kind": "ratio", "measure": "tap", "denominator": "visit"},
                {"key": "spend", "kind": "mean", "measure": "purchase", "cap": 20},
                {"key": "purchase", "kind": "mean"}
            ]
        }),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["metrics"][1]["cap"], 20.0);
    assert_eq!(server.post_empty("/v1/experiments/exp/start").0, 200);
    let ratio = reference("ratio served");
    let spend = reference("mean capped served at 20");
    for (i, variant) in ["control", "t1"].into_iter().enumerate() {
        serve_units(&server, variant, &ratio["per_unit"][i], |unit, v| {
            let (taps, visits) = (v[0].as_u64().unwrap(), v[1].as_u64().unwrap());
            let tap = json!({"type": "tap", "unit_id": unit});
            let visit = json!({"type": "visit", "unit_id": unit});
            let mut out = vec![visit.clone(); visits as usize];
            out.extend(vec![tap; taps as usize]);
            out
        });
        // Each unit's spend in two purchases, so the cap applies to the
        // unit's running sum, not to one event.
        serve_units(&server, variant, &spend["per_unit"][i], |unit, v| {
            let v = v.as_f64().unwrap();
            let buy = |value: f64| json!({"type": "purchase", "unit_id": unit, "value": value});
            if v == 0.0 {
                vec![]
            } else {
                vec![buy(v / 2.0), buy(v / 2.0)]
            }
        });
    }
    server.barrier();
    let capped_over = |cap: f64| -> Vec<u64> {
        (0..2)
            .map(|i| {
                spend["per_unit"][i]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|v| v.as_f64().unwrap() > cap)
                    .count() as u64
            })
            .collect()
    };

    let results = results_once(&server, |r| metric(r, "spend")["pending"].is_null());
    let taps = metric(&results, "taps_per_visit");
    assert_eq!(
        (taps["kind"].as_str(), taps["denominator"].as_str()),
        (Some("ratio"), Some("visit"))
    );
    assert_metric("ratio served", taps, &["numerator", "denominator", "ratio"]);
    let capped = metric(&results, "spend");
    assert_metric("mean capped served at 20", capped, &["sum", "mean"]);
    assert_eq!(capped["capped_units"], json!(capped_over(20.0)));
    // The uncapped metric on the same measure sees every unit's whole spend.
    let whole: f64 = spend["per_unit"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!(close(
        &json!(whole),
        &metric(&results, "purchase")["variants"][0]["sum"]
    ));

    // A new cap on the running experiment: recomputed from the units.
    let (status, patched) = server.patch(
        "/v1/experiments/exp",
        json!({"metrics": [
            {"key": "taps_per_visit", "kind": "ratio", "measure": "tap", "denominator": "visit"},
            {"key": "spend", "kind": "mean", "measure": "purchase", "cap": 10},
            {"key": "purchase", "kind": "mean"}
        ]}),
    );
    assert_eq!(status, 200, "{patched}");
    let results = results_once(&server, |r| {
        let m = metric(r, "spend");
        m["pending"].is_null() && m["cap"] == 10.0
    });
    assert_metric(
        "mean capped served at 10",
        metric(&results, "spend"),
        &["sum", "mean"],
    );
    assert_eq!(
        metric(&results, "spend")["capped_units"],
        json!(capped_over(10.0))
    );
    assert_metric(
        "ratio served",
        metric(&results, "taps_per_visit"),
        &["ratio"],
    );

    // The sums and their definitions survive a restart.
    server.restart();
    let (_, after) = server.get("/v1/experiments/exp/results");
    assert!(metric(&after, "spend")["pending"].is_null(), "{after}");
    assert_metric(
        "mean capped served at 10",
        metric(&after, "spend"),
        &["sum", "mean"],
    );
    assert_metric("ratio served", metric(&after, "taps_per_visit"), &["ratio"]);

    // Definitions that cannot be analysed are refused.
    for (metric, field) in [
        (
            json!({"key": "r", "kind": "ratio"}),
            "metrics[0].denominator",
        ),
        (
            json!({"key": "r", "kind": "mean", "denominator": "visit"}),
            "metrics[0].denominator",
        ),
        (
            json!({"key": "r", "kind": "ratio", "denominator": "r"}),
            "metrics[0].denominator",
        ),
        (
            json!({"key": "r", "kind": "binomial", "cap": 3}),
            "metrics[0].cap",
        ),
        (
            json!({"key": "r", "kind": "mean", "cap": 0}),
            "metrics[0].cap",
        ),
        (
            json!({"key": "r", "kind": "mean", "cap": -2.5}),
            "metrics[0].cap",
        ),
    ] {
        let (status, err) = server.patch("/v1/experiments/exp", json!({ "metrics": [metric] }));
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["field"].as_str(), Some(field), "{err}");
    }
}

/// `minutes` from now, RFC 3339.
fn minutes_from_now(minutes: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::minutes(minutes))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[test]
fn cuped_adjusts_by_what_each_unit_spent_before_its_exposure() {
    let mut server = TestServer::start();
    let (status, created) = server.post(
        "/v1/experiments",
        json!({
            "key": "exp", "name": "cuped", "mixing_variance": 0.01,
            "variants": [{"key": "control", "weight": 1}, {"key": "t1", "weight": 1}],
            "metrics": [{"key": "purchase", "kind": "mean", "cuped": {"window_days": 3}}]
        }),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["metrics"][0]["cuped"], json!({"window_days": 3}));
    assert_eq!(server.post_empty("/v1/experiments/exp/start").0, 200);
    let case = reference("cuped served");
    let (before, exposed, after) = (
        minutes_from_now(-24 * 60),
        minutes_from_now(-60),
        minutes_from_now(-30),
    );
    // Five days before: outside the window, so it must not count.
    let too_early = minutes_from_now(-5 * 24 * 60);
    for (i, variant) in ["control", "t1"].into_iter().enumerate() {
        let mut events = Vec::new();
        for (u, pair) in case["per_unit"][i].as_array().unwrap().iter().enumerate() {
            let unit = format!("{variant}-{u}");
            let (spent_after, spent_before) =
                (pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap());
            events.push(
                json!({"type": "purchase", "unit_id": unit, "value": 500, "timestamp": too_early}),
            );
            if spent_before > 0.0 {
                events.push(json!({"type": "purchase", "unit_id": unit, "value": spent_before, "timestamp": before}));
            }
            events.push(json!({"type": "exposure", "unit_id": unit, "experiment": "exp", "variant": variant, "timestamp": exposed}));
            if spent_after > 0.0 {
                events.push(json!({"type": "purchase", "unit_id": unit, "value": spent_after, "timestamp": after}));
            }
        }
        let (status, body) = server.post("/v1/events", json!({ "events": events }));
        assert_eq!(status, 202, "{body}");
    }
    server.barrier();
    let check = |results: &Value| {
        let m = metric(results, "purchase");
        let expected = &case["cuped"];
        for field in ["theta", "variance_reduction"] {
            assert!(
                close(&expected[field], &m["cuped"][field]),
                "{field}: {}",
                m["cuped"]
            );
        }
        assert_eq!(
            (
                m["cuped"]["covariate"].as_str(),
                m["cuped"]["window_days"].as_u64()
            ),
            (Some("purchase"), Some(3))
        );
        assert_metric("cuped served", m, &["sum", "mean"]);
    };
    let (status, results) = server.get("/v1/experiments/exp/results");
    assert_eq!(status, 200, "{results}");
    check(&results);
    // The covariates were captured at the exposures: a restart keeps them.
    server.restart();
    let (_, results) = server.get("/v1/experiments/exp/results");
    check(&results);

    for (cuped, field) in [
        (json!({"window_days": 0}), "metrics[0].cuped.window_days"),
        (json!({"window_days": 91}), "metrics[0].cuped.window_days"),
    ] {
        let body = json!({"metrics": [{"key": "purchase", "kind": "mean", "cuped": cuped}]});
        let (status, err) = server.patch("/v1/experiments/exp", body);
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (422, Some(field)),
            "{err}"
        );
    }
    let body =
        json!({"metrics": [{"key": "purchase", "kind": "binomial", "cuped": {"window_days": 3}}]});
    let (status, err) = server.patch("/v1/experiments/exp", body);
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("metrics[0].cuped")),
        "{err}"
    );
}

/// A p90 of response times: the figures over HTTP equal the reference
/// computed from the same values (each unit in the group abacus hashes
/// its id to), the sketch survives a change to another metric and a
/// restart, a quantile metric added later counts from then on, and
/// definitions that cannot be analysed are refused.
#[test]
fn quantile_metrics_match_the_reference_and_keep_their_sketch() {
    let mut server = TestServer::start();
    let latency = json!({"key": "latency_p90", "kind": "quantile", "measure": "impression",
        "quantile": 0.9, "of": "response_time_ms"});
    let (status, created) = server.post(
        "/v1/experiments",
        json!({
            "key": "exp", "name": "quantiles", "mixing_variance": 0.01,
            "variants": [{"key": "control", "weight": 1}, {"key": "t1", "weight": 1}],
            "metrics": [latency, {"key": "purchase", "kind": "mean"}]
        }),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["metrics"][0]["of"], "response_time_ms");
    assert_eq!(server.post_empty("/v1/experiments/exp/start").0, 200);
    let case = reference("quantile served p90");
    for (i, variant) in ["control", "t1"].into_iter().enumerate() {
        serve_units(&server, variant, &case["per_unit"][i], |unit, times| {
            let shown = |ms: &Value| {
                json!({"type": "impression", "unit_id": unit,
                    "properties": {"response_time_ms": ms}})
            };
            let mut out: Vec<Value> = times.as_array().unwrap().iter().map(shown).collect();
            // Without the property: not counted.
            out.push(json!({"type": "impression", "unit_id": unit}));
            out
        });
    }
    server.barrier();

    let check = |results: &Value| {
        let m = metric(results, "latency_p90");
        assert_eq!(m["kind"], "quantile");
        assert_eq!(
            m["quantile"],
            json!({"level": 0.9, "of": "response_time_ms"})
        );
        assert_metric("quantile served p90", m, &["events", "value"]);
        for (expected, actual) in case["variants"]
            .as_array()
            .unwrap()
            .iter()
            .zip(m["variants"].as_array().unwrap())
        {
            for p in ["p50", "p90", "p95", "p99"] {
                let (e, a) = (&expected["percentiles"][p], &actual["percentiles"][p]);
                assert!(close(e, a), "{p}: {e} against {a}");
            }
        }
    };
    let (_, results) = server.get("/v1/experiments/exp/results");
    check(&results);

    // A cap on the other metric is recomputed from the units' sums; the
    // sketch, which they cannot give back, stays as it was. Another level
    // of the same value reads the same sketch, history included; a
    // quantile metric of a value not sketched yet counts from now on.
    let added = json!({"key": "late_p50", "kind": "quantile", "measure": "impression",
        "quantile": 0.5});
    let median = json!({"key": "latency_p50", "kind": "quantile", "measure": "impression",
        "quantile": 0.5, "of": "response_time_ms"});
    let (status, patched) = server.patch(
        "/v1/experiments/exp",
        json!({"metrics": [latency, {"key": "purchase", "kind": "mean", "cap": 50}, added, median]}),
    );
    assert_eq!(status, 200, "{patched}");
    let results = results_once(&server, |r| {
        r["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["pending"].is_null())
    });
    check(&results);
    let late = metric(&results, "late_p50");
    assert_eq!(late["variants"][0]["reason"], "no values yet", "{late}");
    let (p50, p90) = (
        metric(&results, "latency_p50"),
        metric(&results, "latency_p90"),
    );
    assert_eq!(p50["variants"][0]["events"], p90["variants"][0]["events"]);
    assert_eq!(
        p50["variants"][0]["value"],
        p90["variants"][0]["percentiles"]["p50"]
    );
    let (status, body) = server.post(
        "/v1/events",
        json!({"events": [
            {"type": "impression", "unit_id": "control-0", "value": 70, "properties": {"response_time_ms": 70}},
            {"type": "impression", "unit_id": "control-1", "value": 90, "properties": {"response_time_ms": 90}},
        ]}),
    );
    assert_eq!(status, 202, "{body}");
    server.barrier();
    let (_, results) = server.get("/v1/experiments/exp/results");
    let late = &metric(&results, "late_p50")["variants"][0];
    assert_eq!(late["events"], 2, "{late}");
    // Rank 0.5 of two values lies in the first one's bin, 2% wide.
    let median = late["value"].as_f64().unwrap();
    assert!((69.0..72.0).contains(&median), "{late}");

    // The sketches and their definitions survive a restart. (The two
    // late events count in the first metric too: compare its control's
    // count only.)
    server.restart();
    let (_, after) = server.get("/v1/experiments/exp/results");
    let m = metric(&after, "latency_p90");
    assert!(m["pending"].is_null(), "{after}");
    assert_eq!(
        m["variants"][0]["events"].as_u64().unwrap(),
        case["variants"][0]["events"].as_u64().unwrap() + 2
    );
    assert_metric_variant("quantile served p90", m, 1);
    assert_eq!(metric(&after, "late_p50")["variants"][0]["events"], 2);

    for (metric, field) in [
        (
            json!({"key": "q", "kind": "quantile"}),
            "metrics[0].quantile",
        ),
        (
            json!({"key": "q", "kind": "quantile", "quantile": 1}),
            "metrics[0].quantile",
        ),
        (
            json!({"key": "q", "kind": "quantile", "quantile": 0}),
            "metrics[0].quantile",
        ),
        (
            json!({"key": "q", "kind": "mean", "quantile": 0.5}),
            "metrics[0].quantile",
        ),
        (
            json!({"key": "q", "kind": "mean", "of": "dwell_time_ms"}),
            "metrics[0].of",
        ),
        (
            json!({"key": "q", "kind": "quantile", "quantile": 0.5, "cap": 3}),
            "metrics[0].cap",
        ),
        (
            json!({"key": "q", "kind": "quantile", "quantile": 0.5,
            "cuped": {"window_days": 7}}),
            "metrics[0].cuped",
        ),
    ] {
        let (status, err) = server.patch("/v1/experiments/exp", json!({ "metrics": [metric] }));
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["field"].as_str(), Some(field), "{err}");
    }
}

/// One variant's figures of a metric against a reference case's.
fn assert_metric_variant(case_name: &str, metric: &Value, variant: usize) {
    let case = reference(case_name);
    let (expected, actual) = (&case["variants"][variant], &metric["variants"][variant]);
    assert_close_fields(
        case_name,
        expected,
        actual,
        &["variant", "units", "events", "value"],
    );
    for bound in 0..2 {
        assert!(
            close(&expected["ci"][bound], &actual["ci"][bound]),
            "{actual}"
        );
    }
}
