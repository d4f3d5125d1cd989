//! Hostile input: numbers that would overflow, names without end, huge
//! bags, timestamps from another age, exposures outside a running
//! experiment. Each is refused with a 422 naming its field or counted in a
//! bounded bucket; afterwards the server restarts, every acknowledged event
//! is there and every endpoint answers.

use serde_json::{json, Value};

use crate::common::{error_code, TestServer};

fn refused(server: &TestServer, body: Value) -> String {
    let (status, answer) = server.post("/v1/events", body.clone());
    assert_eq!(status, 422, "{body} -> {answer}");
    assert_eq!(error_code(&answer), "validation_failed", "{answer}");
    answer["error"]["field"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn every_class_of_hostile_input_is_refused_and_the_server_survives_a_restart() {
    let mut server = TestServer::start_with(&[("ABACUS_LIMITS__MAX_MEASURES", "20")]);
    server.running_experiment(
        "exp",
        json!({"metrics": [{"key": "revenue", "kind": "mean"}], "primary_metric": "revenue"}),
    );
    let (status, _) = server.post(
        "/v1/events?ack=persisted",
        json!({"events": [
            {"type": "exposure", "unit_id": "u", "experiment": "exp", "variant": "control"},
            {"type": "impression", "unit_id": "u", "experiment": "exp",
             "properties": {"response_time_ms": 12.5}},
            {"type": "metric", "unit_id": "u", "value": 1e15, "properties": {"name": "revenue"}}
        ]}),
    );
    assert_eq!(status, 202);

    // Numbers that used to poison the store.
    let numbers = [
        (
            json!({"type": "revenue", "unit_id": "u", "value": 1e200}),
            "value",
        ),
        (
            json!({"type": "metric", "unit_id": "u", "properties": {"name": "revenue", "value": -1e300}}),
            "properties.value",
        ),
        (
            json!({"type": "impression", "unit_id": "u", "properties": {"response_time_ms": 1e308}}),
            "properties.response_time_ms",
        ),
        (
            json!({"type": "click", "unit_id": "u", "properties": {"item_id": "a", "rank": 1e9}}),
            "properties.rank",
        ),
    ];
    for (body, field) in numbers {
        assert_eq!(refused(&server, body), field);
    }
    // Sizes and times.
    let bag = "x".repeat(1 << 20);
    let big = json!({"type": "x", "unit_id": "u", "properties": {"bag": bag}});
    let (status, _) = server.post("/v1/events", big);
    assert_eq!(status, 413, "1 MB is over the body limit");
    let bag = "x".repeat(20_000);
    assert_eq!(
        refused(
            &server,
            json!({"type": "x", "unit_id": "u", "properties": {"bag": bag}})
        ),
        "properties"
    );
    for ts in [
        "2024-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "2999-01-01T00:00:00Z",
    ] {
        assert_eq!(
            refused(
                &server,
                json!({"type": "x", "unit_id": "u", "timestamp": ts})
            ),
            "timestamp"
        );
    }
    // Lifecycle: exposures only for a running experiment.
    let (status, _) = server.post(
        "/v1/experiments",
        json!({"key": "draft", "name": "d",
               "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]}),
    );
    assert_eq!(status, 201);
    let exposure = |exp: &str, variant: &str| json!({"type": "exposure", "unit_id": "v", "experiment": exp, "variant": variant});
    assert_eq!(refused(&server, exposure("draft", "a")), "experiment");
    server.running_experiment("paused", json!({}));
    server.post_empty("/v1/experiments/paused/pause");
    assert_eq!(
        refused(&server, exposure("paused", "control")),
        "experiment"
    );
    assert!(server.assign("paused", "v")["in_experiment"] == false);
    let (status, body) = server.post(
        "/v1/experiments",
        json!({"key": "tiny", "name": "t",
               "variants": [{"key": "a", "weight": 1e-320}, {"key": "b", "weight": 1e300}]}),
    );
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("variants[0].weight")),
        "{body}"
    );
    // Assignments: capped by the keys listed (the document's maxItems),
    // repeats or not, and each assigned once.
    let many: Vec<String> = (0..101).map(|i| format!("e{i}")).collect();
    for keys in [json!(many), json!(vec!["exp"; 101])] {
        let (status, body) = server.post(
            "/v1/assignments",
            json!({"unit_id": "u", "experiments": keys}),
        );
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some("experiments"))
        );
    }
    let (status, body) = server.post(
        "/v1/assignments",
        json!({"unit_id": "w", "experiments": vec!["exp"; 100]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["assignments"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    // Names without end count together under "(other)".
    for round in 0..3 {
        let events: Vec<Value> = (0..500)
            .map(|i| json!({"type": format!("name-{round}-{i}"), "unit_id": "u"}))
            .collect();
        let (status, _) = server.post("/v1/events", json!({ "events": events }));
        assert_eq!(status, 202);
    }
    server.barrier();
    let aggregates = server.aggregates("exp");
    let measures = aggregates["variants"]["control"]["measures"]
        .as_object()
        .unwrap();
    assert!(measures.len() <= 21, "{} measures", measures.len());
    let other = measures["(other)"]["events"].as_u64().unwrap();
    assert!(other >= 1480, "{other}");
    assert_eq!(measures["revenue"]["sum"], 1e15);

    let acknowledged = server.stored(None).len() + server.stored(Some("exp")).len();
    server.restart();
    assert_eq!(
        server.stored(None).len() + server.stored(Some("exp")).len(),
        acknowledged,
        "every acknowledged event is there after the restart"
    );
    assert_eq!(server.aggregates("exp"), aggregates);
    for path in [
        "/v1/experiments/exp/results",
        "/v1/experiments/exp/compare",
        "/v1/experiments/exp/timeline",
        "/v1/analytics/ctr",
        "/v1/analytics/response-times",
        "/v1/analytics/ranks",
        "/v1/analytics/engagement",
        "/v1/units/u",
        "/v1/experiments",
        "/readyz",
    ] {
        let (status, body) = server.get(path);
        assert_eq!(status, 200, "{path}: {body}");
    }
}

#[test]
fn memory_stays_bounded_under_endless_measure_names() {
    let server = TestServer::start();
    server.running_experiment("exp", json!({}));
    let units: Vec<Value> = (0..100)
        .map(|i| json!({"type": "exposure", "unit_id": format!("u{i}"), "experiment": "exp", "variant": "control"}))
        .collect();
    assert_eq!(server.post("/v1/events", json!({ "events": units })).0, 202);
    server.barrier();
    let before = server.rss_bytes();
    // 100,000 distinct names, each sent by one of the exposed units, in two
    // halves: bounded state means the second half adds (almost) nothing.
    let send_half = |half: usize| {
        for round in half * 50..(half + 1) * 50 {
            let events: Vec<Value> = (0..1000)
                .map(|i| {
                    json!({"type": format!("n{round}x{i}"), "unit_id": format!("u{}", i % 100),
                           "properties": {"pad": "p".repeat(64)}})
                })
                .collect();
            let (status, body) = server.post("/v1/events", json!({ "events": events }));
            assert_eq!(status, 202, "{body}");
        }
        server.barrier();
        server.rss_bytes()
    };
    let rss = (before, send_half(0), send_half(1));
    // Unbounded, 60,000 names took RSS from 23 MB to 232 MB. Bounded, what
    // grows is RocksDB's memtables (the events themselves, flushed at 64 MB
    // per family) and allocator slack, not per-name state.
    assert_rss_bounded(rss, ["50,000 distinct measure names", "100,000"], 128, 48);
    let measures = server.aggregates("exp")["variants"]["control"]["measures"]
        .as_object()
        .unwrap()
        .len();
    assert_eq!(measures, 201, "200 names plus (other)");
}

#[test]
fn memory_stays_bounded_under_large_property_bags() {
    let server = TestServer::start();
    let before = server.rss_bytes();
    // Bodies just under the 1 MB body limit: 60 events, each with a
    // property bag just under the 16 KiB bound, so every one is accepted.
    let bag = "p".repeat(16_000);
    let body = json!({ "events": (0..60)
        .map(|i| json!({"type": "view", "unit_id": format!("u{i}"), "properties": {"bag": bag}}))
        .collect::<Vec<_>>() });
    let send = |requests: usize| {
        for _ in 0..requests {
            let (status, reply) = server.post("/v1/events", body.clone());
            assert_eq!(status, 202, "{reply}");
        }
        server.barrier();
        server.rss_bytes()
    };
    let rss = (before, send(50), send(50));
    // What is held is RocksDB's memtables (flushed at 64 MB per family) and
    // allocator slack; a request's bags are dropped once it is written.
    assert_rss_bounded(rss, ["48 MB of property bags", "96 MB"], 192, 96);
}

/// Prints resident memory before, after the first half of a load and
/// after all of it (`after`: what each half was), and asserts the whole
/// load grew it by less than `total_mb` and the second half by less than
/// `second_half_mb`: bounded state stops growing.
fn assert_rss_bounded(
    (before, half, full): (u64, u64, u64),
    after: [&str; 2],
    total_mb: u64,
    second_half_mb: u64,
) {
    let mb = |b: u64| b >> 20;
    eprintln!(
        "RSS {} MB before, {} MB after {}, {} MB after {}",
        mb(before),
        mb(half),
        after[0],
        mb(full),
        after[1]
    );
    assert!(
        full - before < total_mb << 20,
        "RSS grew by {} MB",
        mb(full - before)
    );
    assert!(
        full.saturating_sub(half) < second_half_mb << 20,
        "the second half grew RSS by {} MB",
        mb(full.saturating_sub(half))
    );
}

/// Arbitrary JSON against the real server: never a 5xx, and every refusal
/// carries the JSON error body.
#[test]
fn arbitrary_bodies_never_get_a_server_error() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let server = TestServer::start();
    server.running_experiment("exp", json!({}));
    let event = || {
        (
            prop::sample::select(vec![
                "exposure",
                "impression",
                "click",
                "engagement",
                "metric",
                "conversion",
                "x",
            ]),
            json_value(),
            json_value(),
            json_value(),
        )
            .prop_map(|(kind, value, ts, props)| {
                json!({"type": kind, "unit_id": "u", "experiment": "exp",
                       "value": value, "timestamp": ts, "properties": props})
            })
    };
    let body = prop_oneof![
        json_value().prop_map(|v| ("/v1/events", v)),
        event().prop_map(|e| ("/v1/events", e)),
        prop::collection::vec(event(), 1..20).prop_map(|es| ("/v1/events", json!({"events": es}))),
        json_value().prop_map(|v| ("/v1/experiments", v)),
        json_value().prop_map(|v| (
            "/v1/experiments",
            json!({"key": "k", "name": "n", "variants": v, "coverage": v})
        )),
        json_value().prop_map(|v| ("/v1/assignments", json!({"unit_id": "u", "experiments": v}))),
        json_value().prop_map(|v| ("/v1/alerts/rules", v)),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&body, |(path, body)| {
            let (status, answer) = server.post(path, body.clone());
            prop_assert!(status < 500, "{path} {body} -> {status} {answer}");
            if status >= 400 {
                prop_assert!(!error_code(&answer).is_empty(), "{answer}");
            }
            Ok(())
        })
        .unwrap();
    let (status, _) = server.get("/readyz");
    assert_eq!(status, 200);
}

/// Arbitrary JSON, with the numbers and strings that break naive code.
fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![1e308, -1e308, 1e-320, 1e15, 1e16, -0.0]).prop_map(Value::from),
        "\\PC{0,30}".prop_map(Value::from),
        Just(Value::from("2024-01-01T00:00:00Z")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
