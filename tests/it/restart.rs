//! Experiments and sticky assignments survive a graceful restart.

use serde_json::{json, Value};

use crate::common::TestServer;

#[test]
fn experiments_and_sticky_assignments_survive_restart() {
    let mut server = TestServer::start();
    server.running_experiment("survivor", json!({"description": "kept"}));
    server.post(
        "/v1/experiments",
        json!({
            "key": "draft-one", "name": "d",
            "variants": [{"key": "control", "weight": 1}, {"key": "b", "weight": 1}]
        }),
    );
    server.post_empty("/v1/experiments/survivor/pause");
    server.post_empty("/v1/experiments/survivor/resume");
    let before = server.get("/v1/experiments/survivor").1;

    let units: Vec<String> = (0..500).map(|i| format!("unit-{i}")).collect();
    let first: Vec<Value> = units.iter().map(|u| server.assign("survivor", u)).collect();
    // Shrink coverage so only stickiness keeps these units in.
    server.patch("/v1/experiments/survivor", json!({"coverage": 0.01}));
    let patched = server.get("/v1/experiments/survivor").1;

    server.restart();

    assert_eq!(server.get("/v1/experiments/survivor").1, patched);
    assert_eq!(
        patched["version"].as_u64(),
        before["version"].as_u64().map(|v| v + 1)
    );
    assert_eq!(server.get("/v1/experiments/draft-one").1["status"], "draft");
    let mut sticky = 0;
    for (unit, before) in units.iter().zip(&first) {
        let after = server.assign("survivor", unit);
        assert_eq!(after["variant"], before["variant"], "{unit}");
        assert_eq!(after["in_experiment"], true, "{unit}");
        sticky += usize::from(after["reason"] == "sticky");
    }
    // All but the ~1% the new coverage still hashes in.
    assert!(sticky > 480, "{sticky}");
    assert!(
        server.log().contains("shutdown complete"),
        "{}",
        server.log()
    );
}

#[test]
fn sigterm_exits_zero_after_draining() {
    let mut server = TestServer::start();
    server.running_experiment("bye", json!({}));
    for i in 0..50 {
        server.assign("bye", &format!("u{i}"));
    }
    let status = server.stop();
    assert!(status.success(), "{status}");
    let log = server.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("ingest writer drained"), "{log}");
}
