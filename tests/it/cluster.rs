//! Cluster mode over HTTP: three `nats-server`s (JetStream, R3) and
//! abacus nodes sharing one truth for experiments.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::nats::NatsCluster;
use crate::common::{error_code, TestServer};

/// Polls `node` until `path` answers 200 with `check` true, for at most
/// five seconds.
fn served(node: &TestServer, path: &str, check: impl Fn(&Value) -> bool) {
    let started = Instant::now();
    loop {
        let (status, body) = node.get(path);
        if status == 200 && check(&body) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} never became what was expected: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The variant every experiment gives `unit` on `node`, without exposures.
fn assignments(node: &TestServer, unit: &str) -> Vec<(String, String)> {
    let (status, body) = node.post(
        "/v1/assignments",
        json!({"unit_id": unit, "log_exposure": false}),
    );
    assert_eq!(status, 200, "{body}");
    body["assignments"]
        .as_array()
        .expect("assignments")
        .iter()
        .map(|a| {
            (
                a["experiment"].as_str().expect("key").to_owned(),
                a["variant"].as_str().expect("variant").to_owned(),
            )
        })
        .collect()
}

#[test]
fn experiments_changed_on_one_node_are_served_alike_by_every_node() {
    let nats = NatsCluster::start(3);
    let nodes = nats.nodes(3);
    let [a, b, c] = &nodes[..] else {
        unreachable!()
    };

    a.running_experiment("checkout", json!({}));
    a.running_experiment(
        "pricing",
        json!({"variants": [{"key": "low", "weight": 1}, {"key": "mid", "weight": 1}, {"key": "high", "weight": 2}]}),
    );
    for node in [b, c] {
        for key in ["checkout", "pricing"] {
            served(node, &format!("/v1/experiments/{key}"), |e| {
                e["status"] == "running"
            });
        }
    }

    // A change made on another node reaches the first.
    let (status, patched) = b.patch("/v1/experiments/pricing", json!({"name": "Pricing v2"}));
    assert_eq!(status, 200, "{patched}");
    for node in [a, c] {
        served(node, "/v1/experiments/pricing", |e| {
            e["name"] == "Pricing v2"
        });
    }

    // Identical answers for 10,000 units from every node.
    std::thread::scope(|scope| {
        let answers: Vec<_> = nodes
            .iter()
            .map(|node| {
                scope.spawn(move || {
                    (0..10_000)
                        .map(|i| assignments(node, &format!("unit-{i}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let answers: Vec<Vec<_>> = answers
            .into_iter()
            .map(|a| a.join().expect("a client"))
            .collect();
        assert_eq!(answers[0].len(), 10_000);
        assert!(
            answers[0].iter().all(|a| a.len() == 2),
            "{:?}",
            answers[0][0]
        );
        assert_eq!(answers[0], answers[1], "node-1 and node-2 differ");
        assert_eq!(answers[0], answers[2], "node-1 and node-3 differ");
    });

    // A node that joins later (an empty data directory) reads them all
    // from the cluster.
    let late = nats.abacus("node-4", 3);
    let (status, list) = late.get("/v1/experiments");
    assert_eq!(status, 200, "{list}");
    let keys: Vec<&str> = list["experiments"]
        .as_array()
        .expect("experiments")
        .iter()
        .map(|e| e["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, ["checkout", "pricing"]);
    assert_eq!(
        assignments(&late, "unit-7"),
        assignments(a, "unit-7"),
        "the late node assigns alike"
    );
}

#[test]
fn two_nodes_racing_one_change_cannot_both_win() {
    let nats = NatsCluster::start(3);
    let nodes = nats.nodes(3);
    let keys: Vec<String> = (0..5).map(|i| format!("race-{i}")).collect();
    for key in &keys {
        let (status, created) = nodes[0].post(
            "/v1/experiments",
            json!({"key": key, "name": key, "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]}),
        );
        assert_eq!(status, 201, "{created}");
    }
    for node in &nodes[1..] {
        for key in &keys {
            served(node, &format!("/v1/experiments/{key}"), |e| {
                e["status"] == "draft"
            });
        }
    }
    // The same key cannot be created twice, on any node.
    let (status, taken) = nodes[2].post(
        "/v1/experiments",
        json!({"key": "race-0", "name": "again", "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]}),
    );
    assert_eq!(
        (status, error_code(&taken)),
        (409, "experiment_exists"),
        "{taken}"
    );

    for key in &keys {
        let path = format!("/v1/experiments/{key}/start");
        let barrier = std::sync::Barrier::new(nodes.len());
        let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
            let racers: Vec<_> = nodes
                .iter()
                .map(|node| {
                    let (path, barrier) = (&path, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        node.post_empty(path)
                    })
                })
                .collect();
            racers
                .into_iter()
                .map(|r| r.join().expect("a racer"))
                .collect()
        });
        let won = answers.iter().filter(|(s, _)| *s == 200).count();
        assert_eq!(won, 1, "{key}: {answers:?}");
        for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
            assert_eq!(*status, 409, "{body}");
            assert!(
                ["conflict", "invalid_transition"].contains(&error_code(body)),
                "{body}"
            );
        }
        // Every node ends up serving the one winner's change.
        for node in &nodes {
            served(node, &format!("/v1/experiments/{key}"), |e| {
                e["status"] == "running" && e["version"] == 2
            });
        }
    }
}
