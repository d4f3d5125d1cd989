//! Phases over HTTP: weight and coverage changes of a running experiment,
//! what they move, what they keep, and results per phase.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::common::{error_code, urlencode, TestServer};

/// The variant `unit` is served, without logging an exposure.
fn peek(server: &TestServer, key: &str, unit: &str) -> (String, String) {
    let (status, a) = server.get(&format!(
        "/v1/experiments/{key}/assignment?unit_id={}&log_exposure=false",
        urlencode(unit)
    ));
    assert_eq!(status, 200, "{a}");
    (
        a["variant"].as_str().unwrap().to_owned(),
        a["reason"].as_str().unwrap().to_owned(),
    )
}

fn exposed(
    server: &TestServer,
    key: &str,
    units: impl Iterator<Item = String>,
) -> Vec<(String, String)> {
    units
        .map(|u| {
            let a = server.assign(key, &u);
            (u, a["variant"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn a_weight_change_starts_a_phase_keeps_exposed_units_and_moves_a_fifth_of_the_rest() {
    let mut server = TestServer::start();
    server.running_experiment("split", json!({}));
    let exposed = exposed(&server, "split", (0..600).map(|i| format!("seen-{i}")));
    let fresh: Vec<String> = (0..4000).map(|i| format!("fresh-{i}")).collect();
    let before: HashMap<&str, String> = fresh
        .iter()
        .map(|u| (u.as_str(), peek(&server, "split", u).0))
        .collect();
    server.barrier();

    let (status, patched) = server.patch(
        "/v1/experiments/split",
        json!({"variants": [{"key": "control", "weight": 70}, {"key": "treatment", "weight": 30}]}),
    );
    assert_eq!(status, 200, "{patched}");
    let phases = patched["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2, "{patched}");
    assert_eq!(phases[0]["number"], 1);
    assert_eq!(phases[1]["number"], 2);
    assert_eq!(phases[1]["weights"], json!([0.7, 0.3]));
    // The treatment keeps [0.5, 0.8) of its range; the control gains its tail.
    let layout = &phases[1]["layout"];
    assert_eq!(layout.as_array().unwrap().len(), 3, "{layout}");
    assert_eq!(layout[2]["variant"], "control");
    assert!(
        (layout[2]["start"].as_f64().unwrap() - 0.8).abs() < 1e-12,
        "{layout}"
    );

    // Every unit exposed before keeps its variant; those whose bucket
    // moved say why.
    let mut sticky = 0;
    for (unit, variant) in &exposed {
        let (now, reason) = peek(&server, "split", unit);
        assert_eq!(&now, variant, "{unit} was exposed to {variant}");
        sticky += usize::from(reason == "sticky");
    }
    assert!(
        sticky > 0,
        "some exposed treatment units sit in the moved fifth"
    );

    // Of the units never exposed, a fifth of the bucket space changed
    // variant, all of it from the treatment to the control.
    let mut moved = 0;
    for u in &fresh {
        let (now, reason) = peek(&server, "split", u);
        assert_eq!(reason, "hashed");
        if now != before[u.as_str()] {
            assert_eq!(
                (before[u.as_str()].as_str(), now.as_str()),
                ("treatment", "control")
            );
            moved += 1;
        }
    }
    let share = moved as f64 / fresh.len() as f64;
    assert!((0.17..0.23).contains(&share), "moved {share}");

    // Variant keys stay fixed while running; the phase survives a restart,
    // and so does every exposed unit's variant.
    let (status, refused) = server.patch(
        "/v1/experiments/split",
        json!({"variants": [{"key": "control", "weight": 1}, {"key": "other", "weight": 1}]}),
    );
    assert_eq!(
        (status, error_code(&refused)),
        (409, "not_editable"),
        "{refused}"
    );
    assert_eq!(refused["error"]["field"], "variants", "{refused}");
    server.restart();
    let (_, after) = server.get("/v1/experiments/split");
    assert_eq!(after["phases"], patched["phases"]);
    for (unit, variant) in exposed.iter().step_by(7) {
        assert_eq!(&peek(&server, "split", unit).0, variant);
    }

    // The audit trail holds the change, phases before and after.
    let (status, audit) = server.get("/v1/audit?resource=experiment&resource_id=split");
    assert_eq!(status, 200, "{audit}");
    let change = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["after"]["phases"]
                .as_array()
                .is_some_and(|p| p.len() == 2)
        })
        .unwrap_or_else(|| panic!("no entry with the new phase: {audit}"));
    assert_eq!(change["before"]["phases"].as_array().unwrap().len(), 1);
}

#[test]
fn a_coverage_change_is_a_phase_and_units_cut_out_keep_their_variant() {
    let server = TestServer::start();
    server.running_experiment("cover", json!({}));
    let exposed = exposed(&server, "cover", (0..300).map(|i| format!("u-{i}")));
    server.barrier();
    let (status, patched) = server.patch("/v1/experiments/cover", json!({"coverage": 0.4}));
    assert_eq!(status, 200, "{patched}");
    let phases = patched["phases"].as_array().unwrap();
    assert_eq!((phases.len(), &phases[1]["coverage"]), (2, &json!(0.4)));
    assert_eq!(
        phases[1]["layout"], phases[0]["layout"],
        "coverage alone moves no segment"
    );
    for (unit, variant) in &exposed {
        assert_eq!(&peek(&server, "cover", unit).0, variant);
    }
    let outside = (0..400)
        .filter(|i| peek(&server, "cover", &format!("new-{i}")).1 == "not_in_coverage")
        .count();
    assert!(
        (200..280).contains(&outside),
        "{outside} of 400 outside 40% coverage"
    );
}

/// Exposes `units` now, then converts the ones `converts` picks.
fn run_phase(
    server: &TestServer,
    key: &str,
    prefix: &str,
    units: usize,
    converts: impl Fn(usize) -> bool,
) {
    let assigned = exposed(server, key, (0..units).map(|i| format!("{prefix}-{i}")));
    let events: Vec<Value> = assigned
        .iter()
        .enumerate()
        .filter(|(i, _)| converts(*i))
        .map(|(_, (unit, _))| json!({"type": "conversion", "unit_id": unit, "experiment": key}))
        .collect();
    server.persist(json!({ "events": events }));
}

#[test]
fn results_weigh_each_phase_so_a_split_change_cannot_fake_a_lift() {
    let server = TestServer::start();
    server.running_experiment(
        "season",
        json!({"metrics": [{"key": "conversion", "kind": "binomial"}], "primary_metric": "conversion"}),
    );
    // Phase 1, 50/50: one unit in ten converts, whatever its variant.
    run_phase(&server, "season", "early", 1500, |i| i % 10 == 0);
    let (status, _) = server.patch(
        "/v1/experiments/season",
        json!({"variants": [{"key": "control", "weight": 1}, {"key": "treatment", "weight": 9}]}),
    );
    assert_eq!(status, 200);
    // Phase 2 counts units first exposed from a second after the change.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Phase 2, 10/90: the season turns and three in ten convert in both.
    run_phase(&server, "season", "late", 1500, |i| i % 10 < 3);
    server.barrier();

    // Kept by phase: the late units under `variant@2`, live and rebuilt alike.
    let kept = server.aggregates("season");
    let variants = &kept["variants"];
    for key in ["control", "treatment", "control@2", "treatment@2"] {
        assert!(
            variants[key]["units"].as_u64().unwrap() > 50,
            "{key}: {kept}"
        );
    }
    let rate = |v: &Value| {
        v["measures"]["conversion"]["units"].as_f64().unwrap_or(0.0) / v["units"].as_f64().unwrap()
    };
    let pooled = |variant: &str| {
        let (a, b) = (&variants[variant], &variants[format!("{variant}@2")]);
        let converted = a["measures"]["conversion"]["units"].as_f64().unwrap()
            + b["measures"]["conversion"]["units"].as_f64().unwrap();
        converted / (a["units"].as_f64().unwrap() + b["units"].as_f64().unwrap())
    };
    assert!(
        pooled("treatment") > pooled("control") + 0.05,
        "pooled, the treatment looks better: {} vs {}",
        pooled("treatment"),
        pooled("control")
    );

    let (status, all) = server.get("/v1/experiments/season/results");
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["phase"], "all");
    let lift = &all["metrics"][0]["comparisons"][0];
    let relative = lift["relative"]["estimate"].as_f64().unwrap();
    assert!(relative.abs() < 0.15, "stratified, no lift: {lift}");
    assert!(lift["p_value"].as_f64().unwrap() > 0.01, "{lift}");
    // Each variant's rate is the phases' rates weighed by their shares.
    let rate_of = |r: &Value, i: usize| r["metrics"][0]["variants"][i]["rate"].as_f64().unwrap();
    for i in 0..2 {
        assert!(
            (rate_of(&all, i) - 0.2).abs() < 0.04,
            "{}",
            all["metrics"][0]
        );
    }
    // SRM per phase against that phase's weights: none, despite 10/90.
    let phases = all["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    assert_eq!(phases[1]["weights"], json!([0.1, 0.9]));
    for p in phases {
        assert_eq!(p["srm"]["detected"], false, "{p}");
    }
    assert_eq!(all["srm"]["detected"], false, "{}", all["srm"]);
    let late = phases[1]["units"].as_array().unwrap();
    assert_eq!(late[0].as_u64(), variants["control@2"]["units"].as_u64());

    let (status, latest) = server.get("/v1/experiments/season/results?phase=latest");
    assert_eq!(status, 200, "{latest}");
    assert_eq!(latest["phase"], "latest");
    let units = &latest["metrics"][0]["variants"];
    assert_eq!(units[0]["units"], variants["control@2"]["units"]);
    assert_eq!(units[1]["units"], variants["treatment@2"]["units"]);
    assert!((rate_of(&latest, 1) - rate(&variants["treatment@2"])).abs() < 1e-12);

    let (status, bad) = server.get("/v1/experiments/season/results?phase=first");
    assert_eq!((status, error_code(&bad)), (400, "invalid_query"), "{bad}");
}
