//! Extra sinks are at least once: a sink that cannot write neither stops
//! ingestion nor loses events, and after a crash or a restart it writes
//! from its cursor every stored event it had not made durable.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::TestServer;

fn jsonl_env(path: &Path) -> [(&'static str, String); 2] {
    [
        ("ABACUS_INGEST__SINKS", r#"["rocksdb", "jsonl"]"#.to_owned()),
        ("ABACUS_INGEST__JSONL_PATH", path.display().to_string()),
    ]
}

fn start_with_jsonl(path: &Path) -> TestServer {
    let env = jsonl_env(path);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestServer::start_with(&env)
}

/// Every `event_id` of every stored event.
fn stored_ids(server: &TestServer) -> HashSet<String> {
    server
        .stored(None)
        .iter()
        .chain(&server.stored(Some("exp")))
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The `event_id`s in the file, [`TestServer::barrier`]'s left out (as
/// [`TestServer::stored`] does); every line must be a whole JSON object.
fn file_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let event: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("torn line {line:?}: {e}"));
            (event["type"] != "barrier").then(|| event["event_id"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// Waits (at most 60 s) until the file holds every id in `ids`; returns
/// how many lines it has.
fn wait_for_file(path: &Path, ids: &HashSet<String>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = file_ids(path);
        let seen: HashSet<&str> = lines.iter().map(String::as_str).collect();
        let missing = ids.iter().filter(|id| !seen.contains(id.as_str())).count();
        if missing == 0 {
            return lines.len();
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} stored events never reached {}",
            ids.len(),
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metrics(server: &TestServer) -> String {
    server
        .request(Method::GET, "/metrics")
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// `ingest.jsonl_path` is a link to /dev/full, so every write fails with
/// ENOSPC: events are still answered 202 (well past the sink's mailbox of
/// 64 batches), stored, and the server stays ready and stops cleanly.
/// After a restart with a writable file there, every stored event is in it.
#[test]
fn a_sink_that_cannot_write_neither_blocks_nor_loses_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let mut server = start_with_jsonl(&path);
    server.running_experiment("exp", json!({}));

    for n in 0..300 {
        let events: Vec<Value> = (0..20)
            .map(|i| {
                let unit = format!("u{n}-{i}");
                if i % 2 == 0 {
                    json!({"event_id": format!("x-{n}-{i}"), "type": "exposure", "unit_id": unit, "experiment": "exp"})
                } else {
                    json!({"event_id": format!("x-{n}-{i}"), "type": "conversion", "unit_id": unit, "value": 2})
                }
            })
            .collect();
        let (status, body) = server.post("/v1/events", json!({"events": events}));
        assert_eq!(status, 202, "request {n}: {body}");
    }
    server.persist(json!({"event_id": "x-persisted", "type": "conversion", "unit_id": "p"}));
    // That commit is one partition's; the barrier waits for every one.
    server.barrier();
    let (status, ready) = server.get("/readyz");
    assert_eq!(
        status, 200,
        "a failing extra sink does not fail readiness: {ready}"
    );
    let ids = stored_ids(&server);
    assert_eq!(ids.len(), 300 * 20 + 1, "everything stored in RocksDB");

    let text = metrics(&server);
    assert!(
        text.contains(r#"abacus_sink_failing{sink="jsonl"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"abacus_sink_write_failures_total{sink="jsonl"}"#),
        "{text}"
    );
    assert!(text.contains("abacus_ingest_store_failed 0"), "{text}");
    assert!(server.log().contains("sink write failed"));

    let started = Instant::now();
    let status = server.stop();
    assert!(status.success(), "{status}\n{}", server.log());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped in bounded time"
    );

    // A writable file at the same path: the sink's cursor has not moved,
    // so it replays every stored event.
    std::fs::remove_file(&path).unwrap();
    server.restart_stopped();
    let lines = wait_for_file(&path, &ids);
    assert_eq!(lines, ids.len(), "written once each after the restart");
}

/// SIGKILL while events flow: after a restart the file holds every stored
/// event (those written but not yet behind the cursor come twice), and no
/// line is torn.
#[test]
fn after_sigkill_every_stored_event_reaches_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut server = start_with_jsonl(&path);
    let url = server.url("/v1/events");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            for n in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let events: Vec<Value> = (0..20)
                    .map(|i| json!({"event_id": format!("k-{n}-{i}"), "type": "click", "unit_id": format!("u{i}"), "properties": {"item_id": "a"}}))
                    .collect();
                if client
                    .post(&url)
                    .json(&json!({"events": events}))
                    .send()
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    // Lines so far (the last may be mid-write while the server runs).
    let lines =
        |path: &Path| std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines(&path) < 20_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    server.restart_stopped();
    let ids = stored_ids(&server);
    assert!(
        ids.len() >= 20_000,
        "load ran before the kill: {}",
        ids.len()
    );
    let lines = wait_for_file(&path, &ids);
    eprintln!(
        "SIGKILL with the jsonl sink: {} events stored, {lines} lines ({} written twice)",
        ids.len(),
        lines - ids.len()
    );
}
