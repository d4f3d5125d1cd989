//! Operations over HTTP: `/metrics` in Prometheus format (checked by
//! `promtool` and scraped by a real Prometheus server on loopback),
//! `X-Response-Time-Ms`, slow-request counting.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::TestServer;

fn scrape(server: &TestServer) -> String {
    let response = server
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    response.text().unwrap()
}

/// The value of the sample `name{labels}` (labels as rendered, `""` for none).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let head = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(|v| v.trim().parse().ok())
}

fn tool(name: &str) -> String {
    let path = format!("/usr/bin/{name}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: `make test` installs the `prometheus` package (scripts/bootstrap.sh)"
    );
    path
}

#[test]
fn metrics_count_what_happened_and_pass_promtool() {
    let server = TestServer::start_with(&[("ABACUS_SERVER__SLOW_REQUEST_MS", "0")]);
    server.running_experiment("exp", json!({}));
    for unit in ["a", "b", "c"] {
        server.assign("exp", unit);
    }
    let (status, _) = server.post(
        "/v1/events?ack=persisted",
        json!({"events": [{"type": "click", "unit_id": "a", "properties": {"item_id": "x"}},
                          {"type": "view", "unit_id": "a"}]}),
    );
    assert_eq!(status, 202);
    let (status, _) = server.post("/v1/events", json!({"type": "click", "unit_id": "a"}));
    assert_eq!(status, 422, "a click needs item_id");
    let (status, _) = server.post(
        "/v1/events",
        json!({"events": [{"type": "exposure"}, {"type": "exposure"}]}),
    );
    assert_eq!(status, 422, "events need unit_id");
    let response = server
        .request(reqwest::Method::GET, "/healthz")
        .send()
        .unwrap();
    let took: f64 = response.headers()["x-response-time-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(took >= 0.0);

    let text = scrape(&server);
    assert_eq!(
        sample(&text, "abacus_assignments_total", r#"reason="hashed""#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "abacus_events_accepted_total", ""),
        Some(5.0),
        "3 exposures + 2"
    );
    assert!(sample(&text, "abacus_events_persisted_total", "").unwrap() >= 2.0);
    assert_eq!(
        sample(&text, "abacus_events_rejected_total", r#"reason="invalid""#),
        Some(3.0),
        "one failing a rule, two of the wrong shape"
    );
    assert_eq!(
        sample(&text, "abacus_experiments", r#"status="running""#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "abacus_ingest_mailbox_capacity",
            r#"mailbox="ingest""#
        ),
        Some(8192.0),
        "the partitions' mailboxes together"
    );
    assert!(text.contains(r#"abacus_http_requests_total{route="/v1/experiments/{key}/assignment",method="GET",status="2xx"} 3"#), "{text}");
    assert!(text.contains("abacus_http_request_duration_seconds_bucket{"));
    assert!(text.contains("abacus_sink_commit_duration_seconds_bucket{"));
    assert!(sample(&text, "abacus_process_resident_memory_bytes", "").unwrap() > 1e6);
    assert!(text.contains("abacus_rocksdb_live_sst_bytes "));
    assert!(text.contains("abacus_http_slow_requests_total{"));
    assert!(text.contains("# HELP abacus_events_accepted_total"));

    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_real_prometheus_scrapes_abacus_and_answers_with_its_counters() {
    let server = TestServer::start();
    server.running_experiment("exp", json!({}));
    for unit in ["a", "b", "c", "d"] {
        server.assign("exp", unit);
    }
    let dir = tempfile::tempdir().unwrap();
    let target = server.url("").trim_start_matches("http://").to_owned();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: abacus\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut prometheus = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::blocking::Client::new();
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=abacus_assignments_total%7Breason%3D%22hashed%22%7D"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        let answer: Option<Value> = client.get(&query).send().ok().and_then(|r| r.json().ok());
        let value = answer
            .as_ref()
            .and_then(|a| a["data"]["result"][0]["value"][1].as_str())
            .map(str::to_owned);
        if let Some(v) = value {
            break v;
        }
        if Instant::now() > deadline {
            let _ = prometheus.kill();
            panic!("Prometheus never returned the counter: {answer:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert_eq!(value, "4");
}
