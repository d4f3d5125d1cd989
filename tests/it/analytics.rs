//! Click analytics over HTTP: CTR, ranks, response times, engagement, a
//! unit's summary and the side-by-side comparison, with their filters;
//! counts exact, percentiles within 1% of the exact ones.

use serde_json::{json, Value};

use crate::common::TestServer;

/// The value at rank floor(q (n - 1)).
fn exact(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64) as usize]
}

fn within_one_percent(got: &Value, want: f64) -> bool {
    (got.as_f64().unwrap() - want).abs() <= 0.01 * want
}

#[test]
fn analytics_count_exactly_and_percentiles_stay_within_one_percent() {
    let server = TestServer::start_with(&[("ABACUS_INGEST__MAX_EVENT_AGE_S", "315360000")]);
    server.running_experiment(
        "search",
        json!({"metrics": [{"key": "conversion", "kind": "binomial"}], "primary_metric": "conversion"}),
    );
    let mut events = Vec::new();
    let mut latencies = Vec::new();
    let mut dwell_read = Vec::new();
    for i in 0..400u32 {
        let variant = if i % 2 == 0 { "control" } else { "treatment" };
        let unit = format!("u{i}");
        let base = json!({"unit_id": unit, "experiment": "search", "variant": variant});
        let with = |kind: &str, props: Value| {
            let mut e = base.clone();
            e["type"] = json!(kind);
            e["properties"] = props;
            e
        };
        events.push(with("exposure", json!({})));
        let latency = 5.0 + f64::from(i % 97) * 3.7;
        latencies.push(latency);
        events.push(with(
            "impression",
            json!({"query": "shoes", "response_time_ms": latency}),
        ));
        // control: a quarter of its units click; treatment: half.
        let clicks = if variant == "control" {
            i % 8 == 0
        } else {
            i % 4 == 1
        };
        if clicks {
            events.push(with("click", json!({"item_id": "sku", "rank": i % 5 + 1})));
            let dwell = 100.0 + f64::from(i) * 10.0;
            dwell_read.push(dwell);
            events.push(with(
                "engagement",
                json!({"item_id": "sku", "dwell_time_ms": dwell, "action": "read"}),
            ));
        }
    }
    // An old impression outside the window queried below.
    events
        .push(json!({"type": "impression", "unit_id": "old", "timestamp": "2026-01-01T00:00:00Z"}));
    for chunk in events.chunks(1000) {
        assert_eq!(server.post("/v1/events", json!({ "events": chunk })).0, 202);
    }
    server.barrier();

    let (status, ctr) = server.get("/v1/analytics/ctr?experiment=search");
    assert_eq!(status, 200, "{ctr}");
    assert_eq!(
        (&ctr["impressions"], &ctr["clicks"]),
        (&json!(400), &json!(150))
    );
    let variants = ctr["variants"].as_array().unwrap();
    let by = |v: &str| variants.iter().find(|x| x["variant"] == v).unwrap().clone();
    assert_eq!(by("control")["clicks"], 50);
    assert_eq!(by("control")["ctr"], 0.25);
    assert_eq!(by("treatment")["ctr"], 0.5);
    let (_, only) = server.get("/v1/analytics/ctr?experiment=search&variant=treatment");
    assert_eq!(only["impressions"], 200);
    let (_, everything) = server.get("/v1/analytics/ctr");
    assert_eq!(
        everything["impressions"], 401,
        "all events, the old one too"
    );
    let (_, recent) = server.get("/v1/analytics/ctr?from=2026-06-01T00:00:00Z");
    assert_eq!(recent["impressions"], 400);

    let (_, ranks) = server.get("/v1/analytics/ranks?experiment=search");
    let mut clicked: Vec<u64> = (0..400u64)
        .filter(|i| if i % 2 == 0 { i % 8 == 0 } else { i % 4 == 1 })
        .map(|i| i % 5 + 1)
        .collect();
    clicked.sort_unstable();
    assert_eq!(ranks["clicks"], 150);
    assert_eq!(ranks["min"], clicked[0]);
    assert_eq!(ranks["max"], clicked[149]);
    assert_eq!(ranks["median"], clicked[74]);
    let mean = clicked.iter().sum::<u64>() as f64 / 150.0;
    assert!((ranks["mean"].as_f64().unwrap() - mean).abs() < 1e-9);

    let (_, rt) = server.get("/v1/analytics/response-times?experiment=search");
    latencies.sort_by(f64::total_cmp);
    assert_eq!(rt["count"], 400);
    assert_eq!(rt["min"], latencies[0]);
    assert_eq!(rt["max"], latencies[399]);
    for (field, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)] {
        let want = exact(&latencies, q);
        assert!(
            within_one_percent(&rt[field], want),
            "{field}: {} vs {want}",
            rt[field]
        );
    }

    let (_, engagement) = server.get("/v1/analytics/engagement?experiment=search");
    dwell_read.sort_by(f64::total_cmp);
    let read = &engagement["actions"][0];
    assert_eq!(read["action"], "read");
    assert_eq!(read["dwell_time_ms"]["count"], 150);
    assert!(within_one_percent(
        &read["dwell_time_ms"]["p95"],
        exact(&dwell_read, 0.95)
    ));

    let (status, unit) = server.get("/v1/units/u1");
    assert_eq!(status, 200, "{unit}");
    assert_eq!(unit["assignments"]["search"], "treatment");
    assert_eq!(unit["events"]["impression"], 1);
    assert_eq!(unit["events"]["click"], 1);
    assert_eq!(unit["ctr"], 1.0);
    assert_eq!(unit["mean_dwell_ms"], 110.0);
    let (_, by_unit) = server.get("/v1/analytics/ctr?unit_id=u2");
    assert_eq!(
        (&by_unit["impressions"], &by_unit["clicks"]),
        (&json!(1), &json!(0))
    );

    let (status, compare) = server.get("/v1/experiments/search/compare");
    assert_eq!(status, 200, "{compare}");
    let v = compare["variants"].as_array().unwrap();
    assert_eq!(
        (v[0]["variant"].as_str(), v[0]["units"].as_u64()),
        (Some("control"), Some(200))
    );
    assert_eq!(v[1]["ctr"], 0.5);
    let treatment_dwell: Vec<f64> = (0..400u32)
        .filter(|i| i % 4 == 1)
        .map(|i| 100.0 + f64::from(i) * 10.0)
        .collect();
    let mean_dwell = treatment_dwell.iter().sum::<f64>() / treatment_dwell.len() as f64;
    assert!((v[1]["mean_dwell_ms"].as_f64().unwrap() - mean_dwell).abs() < 1e-9);
    assert_eq!(
        compare["winner"],
        Value::Null,
        "no conversions: nothing significant"
    );

    let (status, err) = server.get("/v1/analytics/ctr?variant=control");
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("variant"))
    );
    let (status, _) = server.get("/v1/analytics/ctr?experiment=nope");
    assert_eq!(status, 404);
}

#[test]
fn compare_names_the_winner_once_the_primary_metric_is_significant() {
    let server = TestServer::start();
    server.running_experiment(
        "exp",
        json!({"metrics": [{"key": "conversion", "kind": "binomial"}], "primary_metric": "conversion"}),
    );
    let mut events = Vec::new();
    for i in 0..6000u32 {
        let variant = if i % 2 == 0 { "control" } else { "treatment" };
        let unit = format!("u{i}");
        events.push(
            json!({"type": "exposure", "unit_id": unit, "experiment": "exp", "variant": variant}),
        );
        let converts = if variant == "control" {
            i % 10 == 0
        } else {
            i % 10 == 1 || i % 10 == 3
        };
        if converts {
            events.push(json!({"type": "conversion", "unit_id": unit}));
        }
    }
    for chunk in events.chunks(1000) {
        assert_eq!(server.post("/v1/events", json!({ "events": chunk })).0, 202);
    }
    server.barrier();
    let (_, compare) = server.get("/v1/experiments/exp/compare");
    assert_eq!(compare["winner"], "treatment", "{compare}");
    assert_eq!(compare["variants"][1]["conversion_rate"], 0.4);
}
