//! Cluster mode over HTTP: three `nats-server`s (JetStream, R3) and
//! abacus nodes sharing one truth for experiments.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::nats::NatsCluster;
use crate::common::receiver::{Answer, Receiver};
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
        let racers: Vec<_> = nodes.iter().map(|node| || node.post_empty(&path)).collect();
        exactly_one_wins(&race(racers), key);
        // Every node ends up serving the one winner's change.
        for node in &nodes {
            served(node, &format!("/v1/experiments/{key}"), |e| {
                e["status"] == "running" && e["version"] == 2
            });
        }
    }
}

/// Runs every one of `racers` at once, each on a thread of its own
/// released by one barrier; their answers, in order.
fn race<F>(racers: Vec<F>) -> Vec<(u16, Value)>
where
    F: FnOnce() -> (u16, Value) + Send,
{
    let barrier = std::sync::Barrier::new(racers.len());
    std::thread::scope(|scope| {
        let running: Vec<_> = racers
            .into_iter()
            .map(|racer| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    racer()
                })
            })
            .collect();
        running
            .into_iter()
            .map(|r| r.join().expect("a racer"))
            .collect()
    })
}

/// Exactly one of `answers` (to racing changes of `what`) succeeded; every
/// other lost with a 409 that says so.
fn exactly_one_wins(answers: &[(u16, Value)], what: &str) {
    let won = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(won, 1, "{what}: {answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 409, "{body}");
        assert!(
            ["conflict", "invalid_transition"].contains(&error_code(body)),
            "{body}"
        );
    }
}

/// One request of the ingest test: `units` units of `checkout`, each an
/// exposure then a conversion (adjacent, so a resent request keeps them
/// in order), with client ids so a resend is de-duplicated.
fn exposures_and_conversions(request: usize, units: usize) -> Value {
    let events: Vec<Value> = (0..units)
        .flat_map(|i| {
            let unit = format!("u{request}-{i}");
            [
                json!({"type": "exposure", "unit_id": unit, "experiment": "checkout", "event_id": format!("x-{unit}")}),
                json!({"type": "conversion", "unit_id": unit, "experiment": "checkout", "value": 2.5, "event_id": format!("c-{unit}")}),
            ]
        })
        .collect();
    json!({ "events": events })
}

/// Units, exposures and conversions of `checkout` as `node` sums them.
fn checkout_totals(node: &TestServer) -> (u64, u64, u64) {
    let (status, body) = node.get("/v1/experiments/checkout/aggregates");
    assert_eq!(status, 200, "{body}");
    let variants = body["variants"].as_object().expect("variants");
    variants.values().fold((0, 0, 0), |(u, x, c), v| {
        let count = |x: &Value| x.as_u64().unwrap_or(0);
        (
            u + count(&v["units"]),
            x + count(&v["exposures"]),
            c + count(&v["measures"]["conversion"]["events"]),
        )
    })
}

/// Sends `requests` requests of [`exposures_and_conversions`] round-robin
/// to `nodes` from four clients with `ack=persisted`; `midway` runs once,
/// when the middle request is taken, while no request is in flight (the
/// clients wait for it). A request a node did not acknowledge is sent
/// again, with the same event ids, to the next node. Answers how many
/// were sent again.
fn send_round_robin(
    nodes: &[TestServer],
    requests: usize,
    units: usize,
    midway: impl Fn() + Sync,
) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let resent = AtomicUsize::new(0);
    // Each request holds it shared; `midway` exclusively.
    let pause = std::sync::RwLock::new(());
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let request = next.fetch_add(1, Ordering::SeqCst);
                if request >= requests {
                    return;
                }
                if request == requests / 2 {
                    let _alone = pause.write().expect("no client panicked");
                    midway();
                }
                let _sending = pause.read().expect("no client panicked");
                let body = exposures_and_conversions(request, units);
                let first = Instant::now();
                let mut attempt = 0;
                loop {
                    let node = &nodes[(request + attempt) % nodes.len()];
                    let answer = client
                        .post(node.url("/v1/events?ack=persisted"))
                        .json(&body)
                        .send()
                        .ok()
                        .filter(|r| r.status() == 202)
                        .and_then(|r| r.json::<Value>().ok());
                    if answer.is_some_and(|a| a["persisted"] == true) {
                        break;
                    }
                    attempt += 1;
                    resent.fetch_add(1, Ordering::SeqCst);
                    // A NATS server's death costs its streams a leader
                    // election: a few seconds of 503s.
                    assert!(
                        first.elapsed() < Duration::from_secs(30),
                        "request {request} was not acknowledged within 30 s"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    resent.load(Ordering::SeqCst)
}

/// Waits until every one of `nodes` counts `events` units, exposures and
/// conversions of `checkout`, never more (two minutes at most); on failure
/// shows what every node of `all` did.
fn counted_exactly_once(nodes: &[&TestServer], all: &[TestServer], events: u64) {
    let expected = (events, events, events);
    let started = Instant::now();
    for node in nodes {
        loop {
            let totals = checkout_totals(node);
            if totals == expected {
                break;
            }
            assert!(
                totals.0 <= events && totals.1 <= events && totals.2 <= events,
                "counted more than was sent: {totals:?}, expected {expected:?}"
            );
            if started.elapsed() > Duration::from_secs(120) {
                for (i, n) in all.iter().enumerate() {
                    let lines: Vec<String> = n
                        .log()
                        .lines()
                        .filter(|l| l.contains("owner") || l.contains("ERROR"))
                        .map(str::to_owned)
                        .collect();
                    eprintln!("---- node {i}:\n{}", lines.join("\n"));
                }
                panic!("(units, exposures, conversions) {totals:?}, expected {expected:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Three `nats-server`s, three nodes splitting units into six partitions
/// (two each) and snapshotting them every second, and `checkout` running
/// on all of them.
fn three_nodes_with_checkout() -> (NatsCluster, Vec<TestServer>) {
    let nats = NatsCluster::start(3);
    let nodes = nats.nodes_with(
        3,
        &[
            ("ABACUS_INGEST__PARTITIONS", "6"),
            ("ABACUS_CLUSTER__SNAPSHOT_INTERVAL_S", "1"),
        ],
    );
    nodes[0].running_experiment("checkout", json!({}));
    for node in &nodes[1..] {
        served(node, "/v1/experiments/checkout", |e| {
            e["status"] == "running"
        });
    }
    (nats, nodes)
}

fn kill(pid: u32) {
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
}

#[test]
fn acknowledged_events_are_counted_exactly_once_after_a_node_dies() {
    const REQUESTS: usize = 400;
    const UNITS: usize = 250; // 2 events each: 200,000 events in all
    let (nats, nodes) = three_nodes_with_checkout();

    let victim = nodes[1].pid();
    let resent = send_round_robin(&nodes, REQUESTS, UNITS, || {
        // The victim dies once it has stored a snapshot (and trimmed the
        // log below it), so its partitions are taken over from one. On a
        // loaded machine the first half of the requests can be answered
        // before its first snapshot is stored.
        let started = Instant::now();
        while metric(&nodes[1], "abacus_cluster_log_trimmed_total") == 0.0 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the victim stored no snapshot within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        kill(victim)
    });
    assert!(
        resent > 0,
        "some requests went to the dead node and were sent again"
    );

    // Every surviving node counts every event exactly once, once the dead
    // node's partitions are taken over.
    counted_exactly_once(&[&nodes[0], &nodes[2]], &nodes, (REQUESTS * UNITS) as u64);
    // The survivors took the dead node's partitions over from the
    // snapshots it stored, then folded the log after them.
    let logs = nodes[0].log() + &nodes[2].log();
    assert!(
        logs.contains("partition restored from its snapshot"),
        "a takeover restores a snapshot"
    );
    assert!(
        logs.contains("partition caught up with its log"),
        "the takeover is logged"
    );
    // The log was trimmed below the snapshots meanwhile.
    let trimmed: f64 = [&nodes[0], &nodes[2]]
        .iter()
        .map(|node| metric(node, "abacus_cluster_log_trimmed_total"))
        .sum();
    assert!(trimmed > 0.0, "the survivors trimmed the log");

    // A node joining with an empty store takes partitions over from
    // their snapshots (what they hold is no longer in the log), and every
    // node still counts each event once.
    let late = nats.abacus_with("node-4", 3, &[("ABACUS_INGEST__PARTITIONS", "6")]);
    let started = Instant::now();
    while !late.log().contains("partition caught up with its log") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the late node took no partition over"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        late.log().contains("partition restored from its snapshot"),
        "the late node restored a snapshot"
    );
    std::thread::sleep(Duration::from_secs(1));
    counted_exactly_once(
        &[&nodes[0], &nodes[2], &late],
        &nodes,
        (REQUESTS * UNITS) as u64,
    );
}

/// The value of the unlabelled metric `name` on `node` (0 when absent).
fn metric(node: &TestServer, name: &str) -> f64 {
    let text = node
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn ingestion_goes_on_when_a_nats_server_dies() {
    const REQUESTS: usize = 200;
    const UNITS: usize = 250; // 100,000 events
    let (nats, nodes) = three_nodes_with_checkout();

    let victim = nats.pid(0);
    send_round_robin(&nodes, REQUESTS, UNITS, || kill(victim));

    counted_exactly_once(
        &nodes.iter().collect::<Vec<_>>(),
        &nodes,
        (REQUESTS * UNITS) as u64,
    );
}

/// Which of `nodes` say they run the singleton `task`.
fn holders(nodes: &[&TestServer], task: &str) -> Vec<usize> {
    let held = format!(r#"abacus_cluster_singleton_held{{task="{task}"}} 1"#);
    nodes
        .iter()
        .enumerate()
        .filter(|(_, node)| {
            let text = node
                .request(reqwest::Method::GET, "/metrics")
                .send()
                .and_then(|r| r.text())
                .unwrap_or_default();
            text.lines().any(|l| l == held)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Polls until exactly one of `nodes` runs `task` (15 s at most).
fn one_holder(nodes: &[&TestServer], task: &str) -> usize {
    let started = Instant::now();
    loop {
        if let [one] = holders(nodes, task)[..] {
            return one;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{task} runs on {:?}",
            holders(nodes, task)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_results_monitor_runs_on_one_node_and_moves_when_it_dies() {
    let nats = NatsCluster::start(3);
    let mut nodes = nats.nodes(3);
    let holder = one_holder(&nodes.iter().collect::<Vec<_>>(), "results-monitor");
    // Still one a few renewals later.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        holders(&nodes.iter().collect::<Vec<_>>(), "results-monitor"),
        [holder]
    );

    nodes[holder].kill();
    let survivors: Vec<&TestServer> = (0..3).filter(|&i| i != holder).map(|i| &nodes[i]).collect();
    one_holder(&survivors, "results-monitor");
}

#[test]
fn webhooks_still_arrive_in_order_when_the_delivering_node_dies() {
    const EXPERIMENTS: usize = 20;
    let nats = NatsCluster::start(3);
    let mut nodes = nats.nodes_with(
        3,
        &[
            ("ABACUS_WEBHOOKS__ALLOW_PRIVATE", "true"),
            ("ABACUS_WEBHOOKS__RETRY_SCHEDULE_MS", "[100]"),
            ("ABACUS_WEBHOOKS__JITTER", "0"),
        ],
    );
    // A slow receiver, so the delivering node dies with messages pending.
    let receiver = Receiver::start(|_| Answer::Delay(Duration::from_millis(100)));
    let (status, body) = nodes[0].post(
        "/v1/webhooks",
        json!({"url": receiver.url(), "events": ["experiment.created", "experiment.started"]}),
    );
    assert_eq!(status, 201, "{body}");
    let (id, secret) = (
        body["id"].as_str().unwrap(),
        body["secret"].as_str().unwrap(),
    );
    for node in &nodes {
        served(node, &format!("/v1/webhooks/{id}"), |w| w["id"] == id);
    }

    // Changes are made on the two nodes that do not deliver, so the one
    // killed holds nothing but deliveries.
    let deliverer = one_holder(&nodes.iter().collect::<Vec<_>>(), "webhooks");
    let makers: Vec<usize> = (0..3).filter(|&i| i != deliverer).collect();
    for n in 0..EXPERIMENTS {
        let node = &nodes[makers[n % 2]];
        let key = format!("exp-{n:02}");
        let (status, body) = node.post(
            "/v1/experiments",
            json!({"key": key, "name": key,
                   "variants": [{"key": "control", "weight": 1}, {"key": "b", "weight": 1}]}),
        );
        assert_eq!(status, 201, "{body}");
        assert_eq!(
            node.post_empty(&format!("/v1/experiments/{key}/start")).0,
            200
        );
    }
    receiver.wait_for(5, Duration::from_secs(30));
    nodes[deliverer].kill();
    let survivors: Vec<&TestServer> = makers.iter().map(|&i| &nodes[i]).collect();
    one_holder(&survivors, "webhooks");

    // Every message arrives (some twice: at least once), each verified
    // with the subscription's secret, and each experiment's creation
    // before its start.
    let verifier = standardwebhooks::Webhook::new(secret).unwrap();
    let started = Instant::now();
    let got = loop {
        let got = receiver.received();
        let mut firsts: Vec<(String, String)> = Vec::new();
        for r in &got {
            verifier
                .verify(&r.body, &r.header_map())
                .unwrap_or_else(|e| panic!("{e:?}: {:?}", r.headers));
            let message = (
                r.headers["webhook-id"].clone(),
                r.json()["type"].as_str().unwrap().to_owned(),
            );
            if !firsts.contains(&message) {
                firsts.push(message);
            }
        }
        if firsts.len() == 2 * EXPERIMENTS {
            break got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} of {} messages arrived",
            firsts.len(),
            2 * EXPERIMENTS
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "{} deliveries of {} messages across the takeover",
        got.len(),
        2 * EXPERIMENTS
    );
    let order: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let body = r.json();
            (
                body["data"]["experiment"]["key"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                body["type"].as_str().unwrap().to_owned(),
            )
        })
        .fold(Vec::new(), |mut seen, m| {
            if !seen.contains(&m) {
                seen.push(m);
            }
            seen
        });
    for n in 0..EXPERIMENTS {
        let key = format!("exp-{n:02}");
        let at = |kind: &str| order.iter().position(|(k, t)| *k == key && t == kind);
        assert!(
            at("experiment.created") < at("experiment.started"),
            "{key}: {order:?}"
        );
    }
    // Each maker's experiments arrive in the order it made them.
    for maker in 0..2 {
        let created: Vec<&String> = order
            .iter()
            .filter(|(k, t)| {
                t == "experiment.created" && k[4..].parse::<usize>().is_ok_and(|n| n % 2 == maker)
            })
            .map(|(k, _)| k)
            .collect();
        let mut sorted = created.clone();
        sorted.sort();
        assert_eq!(created, sorted);
    }
}

/// Polls `node` until `path` answers 200 with `check` true, for at most
/// fifteen seconds; returns that answer.
fn eventually(node: &TestServer, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = node.get(path);
        if status == 200 && check(&body) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{path} never became what was expected: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The alerts of a `/v1/alerts` answer.
fn alert_list(body: &Value) -> &[Value] {
    body["alerts"].as_array().expect("alerts")
}

#[test]
fn alert_rules_and_alerts_are_shared_and_evaluated_on_one_node() {
    let nats = NatsCluster::start(3);
    let nodes = nats.nodes(3);
    let all: Vec<&TestServer> = nodes.iter().collect();
    let evaluator = one_holder(&all, "webhooks");
    let (other, third) = ((evaluator + 1) % 3, (evaluator + 2) % 3);

    nodes[other].running_experiment("srm", json!({}));
    served(&nodes[third], "/v1/experiments/srm", |e| {
        e["status"] == "running"
    });
    // Every unit on one side of a 50/50 split, sent to two nodes.
    for (i, node) in [&nodes[other], &nodes[third]].into_iter().enumerate() {
        let events: Vec<Value> = (0..200)
            .map(|u| json!({"type": "exposure", "unit_id": format!("u{i}-{u}"), "experiment": "srm", "variant": "control"}))
            .collect();
        let (status, body) = node.post("/v1/events?ack=persisted", json!({ "events": events }));
        assert_eq!(status, 202, "{body}");
    }

    // A rule created on one node is every node's.
    let (status, rule) = nodes[third].post(
        "/v1/alerts/rules",
        json!({"name": "srm", "metric": "srm", "experiment": "srm"}),
    );
    assert_eq!(status, 201, "{rule}");
    let rule_path = format!("/v1/alerts/rules/{}", rule["id"].as_str().expect("id"));
    for node in &nodes {
        eventually(node, &rule_path, |r| r["name"] == "srm");
    }

    // Raised once, by the evaluator, and listed alike by every node.
    let open = eventually(&nodes[other], "/v1/alerts?experiment=srm", |b| {
        !alert_list(b).is_empty()
    });
    let id = alert_list(&open)[0]["id"].as_str().expect("id").to_owned();
    std::thread::sleep(Duration::from_secs(3));
    for node in &nodes {
        let list = eventually(node, "/v1/alerts?experiment=srm", |b| {
            !alert_list(b).is_empty()
        });
        let ids: Vec<&str> = alert_list(&list)
            .iter()
            .map(|a| a["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, [id.as_str()], "one alert, on every node: {list}");
    }

    // Acknowledged on one node, seen by the others.
    let alert_path = format!("/v1/alerts/{id}");
    let (status, acked) =
        nodes[other].post(&format!("{alert_path}/acknowledge"), json!({"by": "ana"}));
    assert_eq!(status, 200, "{acked}");
    for node in &nodes {
        eventually(node, &alert_path, |a| a["status"] == "acknowledged");
    }

    // Two nodes resolving it at once: one wins.
    let racers: Vec<_> = [other, third]
        .into_iter()
        .map(|i| {
            let (node, path) = (&nodes[i], &alert_path);
            move || {
                node.post(
                    &format!("{path}/resolve"),
                    json!({"by": format!("node {i}")}),
                )
            }
        })
        .collect();
    exactly_one_wins(&race(racers), &alert_path);
    for node in &nodes {
        eventually(node, &alert_path, |a| a["status"] == "resolved");
    }
    // Resolved by a person on another node while still firing: the
    // evaluator does not raise it again.
    std::thread::sleep(Duration::from_secs(3));
    for node in &nodes {
        let (_, list) = node.get("/v1/alerts?experiment=srm");
        assert_eq!(alert_list(&list).len(), 1, "{list}");
    }

    // Deleted on one node, gone from every node.
    let (status, _) = nodes[evaluator].delete(&rule_path);
    assert_eq!(status, 204);
    for node in &nodes {
        let started = Instant::now();
        while node.get(&rule_path).0 != 404 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{rule_path} still there"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The partitions each of `nodes` says it folds.
fn partitions_owned(nodes: &[TestServer]) -> Vec<u64> {
    nodes
        .iter()
        .map(|node| {
            let text = node
                .request(reqwest::Method::GET, "/metrics")
                .send()
                .and_then(|r| r.text())
                .unwrap_or_default();
            text.lines()
                .find_map(|l| l.strip_prefix("abacus_cluster_partitions_owned "))
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        })
        .collect()
}

/// `unit`'s variant of `key` on `node`, and whether it is in, without an
/// exposure.
fn variant_on(node: &TestServer, key: &str, unit: &str) -> (String, bool) {
    let (status, body) = node.get(&format!(
        "/v1/experiments/{key}/assignment?unit_id={unit}&log_exposure=false"
    ));
    assert_eq!(status, 200, "{body}");
    (
        body["variant"].as_str().expect("variant").to_owned(),
        body["in_experiment"].as_bool().expect("in_experiment"),
    )
}

#[test]
fn every_node_keeps_a_units_first_exposure_by_asking_its_partitions_owner() {
    const UNITS: usize = 300;
    let nats = NatsCluster::start(3);
    // A generous lookup timeout: this test is about answers, not latency.
    let nodes = nats.nodes_with(
        3,
        &[
            ("ABACUS_INGEST__PARTITIONS", "6"),
            ("ABACUS_CLUSTER__LOOKUP_TIMEOUT_MS", "5000"),
        ],
    );
    // Two partitions each, so most units are folded by another node than
    // the one that exposes them.
    let started = Instant::now();
    while partitions_owned(&nodes) != [2, 2, 2] {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "partitions owned: {:?}",
            partitions_owned(&nodes)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes[0].running_experiment("cut", json!({}));
    for node in &nodes[1..] {
        served(node, "/v1/experiments/cut", |e| e["status"] == "running");
    }

    // Units exposed through one node, folded by whichever owns them.
    let first: Vec<String> = (0..UNITS)
        .map(|i| {
            let a = nodes[0].assign("cut", &format!("u{i}"));
            a["variant"].as_str().expect("variant").to_owned()
        })
        .collect();
    served(&nodes[0], "/v1/experiments/cut/aggregates", |a| {
        let units: u64 = ["control", "treatment"]
            .iter()
            .map(|v| a["variants"][v]["units"].as_u64().unwrap_or(0))
            .sum();
        units == UNITS as u64
    });

    // Coverage cut to 10%: most units are now outside by the hash, but
    // every node still serves each exposed unit its first variant.
    let (status, body) = nodes[1].patch("/v1/experiments/cut", json!({"coverage": 0.1}));
    assert_eq!(status, 200, "{body}");
    for node in &nodes {
        served(node, "/v1/experiments/cut", |e| e["coverage"] == 0.1);
    }
    for (n, node) in nodes.iter().enumerate() {
        for (i, variant) in first.iter().enumerate() {
            let unit = format!("u{i}");
            assert_eq!(
                variant_on(node, "cut", &unit),
                (variant.clone(), true),
                "node {n}, {unit}"
            );
        }
    }

    // A client reports, through one node, a variant the hash would not
    // give: every node serves it from then on.
    let unit = (0..)
        .map(|i| format!("reported-{i}"))
        .find(|u| !variant_on(&nodes[0], "cut", u).1)
        .expect("a unit outside the coverage");
    let (status, body) = nodes[2].post(
        "/v1/events?ack=persisted",
        json!({"events": [{"type": "exposure", "unit_id": unit, "experiment": "cut", "variant": "treatment"}]}),
    );
    assert_eq!(status, 202, "{body}");
    for (n, node) in nodes.iter().enumerate() {
        let started = Instant::now();
        while variant_on(node, "cut", &unit) != ("treatment".to_owned(), true) {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "node {n} does not serve {unit} its reported variant"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Polls until `secret` gets `status` from `node`'s `GET /v1/experiments`,
/// for at most five seconds.
fn answers_key(node: &mut TestServer, secret: &str, status: u16) {
    node.use_token(Some(secret));
    let started = Instant::now();
    loop {
        let got = node.get("/v1/experiments").0;
        if got == status {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the key still gets {got}, not {status}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_key_issued_rotated_or_revoked_on_one_node_is_so_on_every_node() {
    const ADMIN: &str = "admin-secret-0123456789";
    let nats = NatsCluster::start(3);
    let mut nodes = nats.nodes_with(
        2,
        &[("ABACUS_AUTH__ADMIN_KEYS", "[\"admin-secret-0123456789\"]")],
    );
    for node in nodes.iter_mut() {
        node.use_token(Some(ADMIN));
    }
    let (status, issued) = nodes[0].post("/v1/keys", json!({"name": "shared", "role": "viewer"}));
    assert_eq!(status, 201, "{issued}");
    let id = issued["id"].as_str().unwrap().to_owned();
    let first = issued["secret"].as_str().unwrap().to_owned();
    answers_key(&mut nodes[1], &first, 200);

    // Rotated on the second node: the new secret works on the first, the
    // old one stops there.
    nodes[1].use_token(Some(ADMIN));
    let (status, rotated) = nodes[1].post_empty(&format!("/v1/keys/{id}/rotate"));
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["secret"].as_str().unwrap().to_owned();
    answers_key(&mut nodes[0], &second, 200);
    answers_key(&mut nodes[0], &first, 401);

    // Revoked on the first: it stops on the second.
    nodes[0].use_token(Some(ADMIN));
    assert_eq!(nodes[0].delete(&format!("/v1/keys/{id}")).0, 200);
    answers_key(&mut nodes[1], &second, 401);
    nodes[1].use_token(Some(ADMIN));
    assert_eq!(nodes[1].get(&format!("/v1/keys/{id}")).0, 404);
}
