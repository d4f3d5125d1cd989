//! Assignment over HTTP: the contract's vectors, stickiness, overrides,
//! layers and the all-experiments call.

use serde_json::{json, Value};

use crate::common::{error_code, urlencode, vectors, TestServer};

#[test]
fn every_assignment_vector_holds_over_http() {
    let server = TestServer::start();
    let vectors = vectors();
    let mut created = std::collections::HashMap::new();
    for (i, v) in vectors["assign"].as_array().unwrap().iter().enumerate() {
        let e = &v["experiment"];
        let fingerprint = e.to_string();
        let key = created
            .entry(fingerprint)
            .or_insert_with(|| {
                let key = format!("vector-{i}");
                let variants: Vec<Value> = e["variants"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(e["weights"].as_array().unwrap())
                    .map(|(k, w)| json!({"key": k, "weight": w}))
                    .collect();
                let mut extra = json!({"salt": e["salt"], "coverage": e["coverage"]});
                if !e["layer"].is_null() {
                    extra["layer"] = e["layer"].clone();
                }
                let mut body = json!({"key": key, "name": key, "variants": variants});
                body.as_object_mut()
                    .unwrap()
                    .extend(extra.as_object().unwrap().clone());
                let (status, err) = server.post("/v1/experiments", body);
                assert_eq!(status, 201, "{err}");
                server.post_empty(&format!("/v1/experiments/{key}/start"));
                key
            })
            .clone();
        let unit = v["unit"].as_str().unwrap();
        let (_, a) = server.get(&format!(
            "/v1/experiments/{key}/assignment?unit_id={}&log_exposure=false",
            urlencode(unit)
        ));
        let served = a["in_experiment"]
            .as_bool()
            .unwrap()
            .then(|| a["variant"].clone());
        assert_eq!(
            served.unwrap_or(Value::Null),
            v["variant"],
            "unit {unit}: {a}"
        );
        if a["in_experiment"] == false {
            assert_eq!(a["variant"], "control", "outsiders get the control");
        }
    }
}

#[test]
fn the_first_exposure_sticks_when_coverage_shrinks() {
    let server = TestServer::start();
    server.running_experiment("sticky", json!({}));
    let units: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let first: Vec<Value> = units.iter().map(|u| server.assign("sticky", u)).collect();
    assert!(first
        .iter()
        .all(|a| a["reason"] == "hashed" && a["in_experiment"] == true));

    let (status, _) = server.patch("/v1/experiments/sticky", json!({"coverage": 0.01}));
    assert_eq!(status, 200);
    let mut sticky = 0;
    for (unit, before) in units.iter().zip(&first) {
        let now = server.assign("sticky", unit);
        assert_eq!(now["variant"], before["variant"], "{unit}");
        assert_eq!(now["in_experiment"], true, "{unit}");
        // `sticky` when the first exposure changed the answer: the unit is
        // outside the new coverage. The 1% still inside are `hashed`.
        match now["reason"].as_str() {
            Some("sticky") => sticky += 1,
            Some("hashed") => {}
            other => panic!("{unit}: {other:?}"),
        }
    }
    assert!(sticky > 190, "{sticky}");
    // A newcomer now mostly falls outside the shrunken coverage.
    let outsiders = (0..100)
        .filter(|i| server.assign("sticky", &format!("new-{i}"))["reason"] == "not_in_coverage")
        .count();
    assert!(outsiders > 90, "{outsiders}");
}

#[test]
fn without_exposure_logging_nothing_sticks() {
    let server = TestServer::start();
    server.running_experiment("quiet", json!({}));
    for _ in 0..2 {
        let (_, a) = server.get("/v1/experiments/quiet/assignment?unit_id=ann&log_exposure=false");
        assert_eq!(a["reason"], "hashed");
    }
    assert_eq!(server.assign("quiet", "bea")["reason"], "hashed");
    // With nobody in coverage any more, only a recorded first exposure
    // keeps a unit in.
    let (status, _) = server.patch("/v1/experiments/quiet", json!({"coverage": 0.0}));
    assert_eq!(status, 200);
    let (_, ann) = server.get("/v1/experiments/quiet/assignment?unit_id=ann&log_exposure=false");
    assert_eq!(ann["reason"], "not_in_coverage");
    assert_eq!(server.assign("quiet", "bea")["reason"], "sticky");
}

#[test]
fn forced_overrides_win_and_payloads_are_returned() {
    let server = TestServer::start();
    server.running_experiment(
        "forced",
        json!({
            "variants": [
                {"key": "control", "weight": 1, "payload": {"n": 1}},
                {"key": "treatment", "weight": 1, "payload": {"n": 2}}
            ],
            "coverage": 0,
            "forced": {"qa@example.com": "treatment"}
        }),
    );
    let a = server.assign("forced", "qa@example.com");
    assert_eq!(
        a,
        json!({
            "experiment": "forced", "variant": "treatment", "payload": {"n": 2},
            "in_experiment": true, "reason": "forced"
        })
    );
    let b = server.assign("forced", "someone");
    assert_eq!(
        (b["reason"].as_str(), b["payload"]["n"].as_i64()),
        (Some("not_in_coverage"), Some(1))
    );
}

#[test]
fn layers_keep_experiments_apart() {
    let server = TestServer::start();
    server.running_experiment(
        "left",
        json!({"layer": {"key": "search", "start": 0.0, "end": 0.5}}),
    );
    server.running_experiment(
        "right",
        json!({"layer": {"key": "search", "start": 0.5, "end": 1.0}}),
    );
    for i in 0..300 {
        let unit = format!("u{i}");
        let left = server.assign("left", &unit)["in_experiment"] == true;
        let right = server.assign("right", &unit)["in_experiment"] == true;
        assert!(
            left != right,
            "{unit} must be in exactly one experiment of the layer"
        );
    }
}

#[test]
fn assign_all_covers_running_experiments_or_the_named_ones() {
    let server = TestServer::start();
    server.running_experiment("a1", json!({}));
    server.running_experiment("a2", json!({}));
    server.post(
        "/v1/experiments",
        json!({
            "key": "a3-draft", "name": "draft",
            "variants": [{"key": "control", "weight": 1}, {"key": "b", "weight": 1}]
        }),
    );

    let (status, all) = server.post("/v1/assignments", json!({"unit_id": "zoe"}));
    assert_eq!(status, 200, "{all}");
    let keys: Vec<&str> = all["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["experiment"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a1", "a2"]);
    assert_eq!(all["unit_id"], "zoe");
    // Same answer as the single-experiment call, which now sees the stickiness.
    assert_eq!(
        server.assign("a1", "zoe")["variant"],
        all["assignments"][0]["variant"]
    );

    let (_, named) = server.post(
        "/v1/assignments",
        json!({"unit_id": "zoe", "experiments": ["a3-draft"]}),
    );
    assert_eq!(named["assignments"][0]["reason"], "not_running");

    let (status, err) = server.post(
        "/v1/assignments",
        json!({"unit_id": "zoe", "experiments": ["nope"]}),
    );
    assert_eq!((status, error_code(&err)), (404, "experiment_not_found"));
    let (status, err) = server.post("/v1/assignments", json!({"unit_id": ""}));
    assert_eq!((status, error_code(&err)), (422, "invalid_body"));
    assert_eq!(err["error"]["field"], "unit_id");
}

#[test]
fn unit_ids_are_validated() {
    let server = TestServer::start();
    server.running_experiment("ids", json!({}));
    for bad in ["", &"x".repeat(300), "tab%09inside"] {
        let (status, err) = server.get(&format!("/v1/experiments/ids/assignment?unit_id={bad}"));
        assert_eq!(
            (status, error_code(&err)),
            (400, "invalid_query"),
            "{bad:?}"
        );
    }
    let (status, err) = server.get("/v1/experiments/ids/assignment");
    assert_eq!((status, error_code(&err)), (400, "invalid_query"));
}

#[test]
fn a_layer_refuses_overlapping_slices_even_when_asked_at_once() {
    let server = TestServer::start();
    let body = |key: &str, layer: &str, start: f64, end: f64| {
        json!({"key": key, "name": key,
               "variants": [{"key": "control", "weight": 1}, {"key": "b", "weight": 1}],
               "layer": {"key": layer, "start": start, "end": end}})
    };
    assert_eq!(
        server
            .post("/v1/experiments", body("left", "search", 0.0, 0.5))
            .0,
        201
    );
    let (status, error) = server.post("/v1/experiments", body("mid", "search", 0.4, 0.6));
    assert_eq!(
        (status, error_code(&error)),
        (409, "layer_overlap"),
        "{error}"
    );
    assert_eq!(error["error"]["field"], "layer");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'left'"),
        "{error}"
    );
    // Touching is not overlapping; another layer is another space.
    assert_eq!(
        server
            .post("/v1/experiments", body("right", "search", 0.5, 0.7))
            .0,
        201
    );
    assert_eq!(
        server
            .post("/v1/experiments", body("other", "feed", 0.4, 0.6))
            .0,
        201
    );
    // A draft moved onto a taken slice is refused; onto a free one, moved.
    let (status, error) = server.patch(
        "/v1/experiments/right",
        json!({"layer": {"key": "search", "start": 0.45, "end": 0.7}}),
    );
    assert_eq!(
        (status, error_code(&error)),
        (409, "layer_overlap"),
        "{error}"
    );
    let (status, moved) = server.patch(
        "/v1/experiments/right",
        json!({"layer": {"key": "search", "start": 0.6, "end": 0.9}}),
    );
    assert_eq!(
        (status, moved["layer"]["start"].as_f64()),
        (200, Some(0.6)),
        "{moved}"
    );
    // An archived experiment's slice is free again.
    assert_eq!(server.delete("/v1/experiments/left").0, 200);
    assert_eq!(
        server
            .post("/v1/experiments", body("mid", "search", 0.4, 0.6))
            .0,
        201
    );

    // Twenty clients ask for overlapping slices of a fresh layer at once,
    // ten by creating, ten by moving a draft onto it: exactly one wins.
    for i in 0..10 {
        let key = format!("mover-{i}");
        assert_eq!(
            server
                .post("/v1/experiments", body(&key, &format!("own-{i}"), 0.0, 1.0))
                .0,
            201
        );
    }
    let server = &server;
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for i in 0..10 {
            let start = f64::from(i) / 100.0;
            handles.push(s.spawn(move || {
                server
                    .post(
                        "/v1/experiments",
                        body(&format!("racer-{i}"), "hot", start, start + 0.5),
                    )
                    .0
            }));
            handles.push(s.spawn(move || {
                server
                    .patch(
                        &format!("/v1/experiments/mover-{i}"),
                        json!({"layer": {"key": "hot", "start": start + 0.05, "end": start + 0.55}}),
                    )
                    .0
            }));
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won = statuses.iter().filter(|s| matches!(s, 200 | 201)).count();
    assert_eq!(won, 1, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 201 | 409)),
        "{statuses:?}"
    );
}
