//! `TestServer`: the real binary, a temp RocksDB, a free port; readiness
//! is polled, never slept on; the process is stopped on `Drop`.

#![allow(dead_code)] // each test file uses a different part of this module

pub mod browser;
pub mod nats;
pub mod receiver;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

/// A running abacus process.
pub struct TestServer {
    child: Option<Child>,
    dir: TempDir,
    env: Vec<(String, String)>,
    port: u16,
    client: Client,
    token: Option<String>,
}

impl TestServer {
    /// Starts a server with the embedded defaults (open auth).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `ABACUS_*` environment variables.
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let mut server = Self {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            port: 0,
            client: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            token: None,
        };
        server.spawn();
        server
    }

    /// The data directory, kept across restarts.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        for attempt in 0..5 {
            self.port = free_port();
            let log = File::options()
                .create(true)
                .append(true)
                .open(self.log_path())
                .expect("log file");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_abacus"));
            cmd.arg("serve")
                .env_clear()
                .env("ABACUS_SERVER__BIND", format!("127.0.0.1:{}", self.port))
                .env("ABACUS_STORAGE__PATH", self.data_dir())
                .env("ABACUS_SERVER__WORKERS", "2")
                // Two partitions whatever the machine's cores, so a test
                // runs alike everywhere and `barrier` covers every one.
                .env("ABACUS_INGEST__PARTITIONS", "2")
                .env("RUST_LOG", "info")
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            self.child = Some(cmd.spawn().expect("start abacus"));
            if self.wait_ready() {
                return;
            }
            let _ = self.child.take().map(|mut c| {
                let _ = c.kill();
                c.wait()
            });
            eprintln!("attempt {attempt}: server did not start; retrying on another port");
        }
        panic!("abacus did not become ready:\n{}", self.log());
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            let ready = self
                .client
                .get(self.url("/readyz"))
                .timeout(Duration::from_millis(500))
                .send();
            if ready.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Sends SIGKILL: no drain, no flush.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("server is running");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }

    /// Stops gracefully (asserting a clean exit) and starts again on the same data.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "exit status {status}:\n{}", self.log());
        self.spawn();
    }

    /// Sets (or replaces) an `ABACUS_*` variable for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// The server process's resident memory, from `/proc/<pid>/status`.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("server is running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line");
        kib * 1024
    }

    /// Starts again on the same data after [`TestServer::stop`].
    pub fn restart_stopped(&mut self) {
        assert!(self.child.is_none(), "server is still running");
        self.spawn();
    }

    /// Sends `Authorization: Bearer token` from now on.
    pub fn use_token(&mut self, token: Option<&str>) {
        self.token = token.map(str::to_owned);
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The token requests carry, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// A request builder with the current token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let builder = self.client.request(method, self.url(path));
        match &self.token {
            Some(t) => builder.bearer_auth(t),
            None => builder,
        }
    }

    /// Sends a request with an optional JSON body; returns status and JSON body.
    pub fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut builder = self.request(method, path);
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        read(builder.send().expect("request"))
    }

    /// A request in `project` (the `X-Abacus-Project` header); returns
    /// status and JSON body.
    pub fn call_in(
        &self,
        project: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut builder = self
            .request(method, path)
            .header("x-abacus-project", project);
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        read(builder.send().expect("request"))
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(body))
    }

    /// `POST /v1/events?ack=persisted` with `body` (one event or a batch);
    /// asserts every event was accepted and is committed.
    pub fn persist(&self, body: Value) {
        let (status, answer) = self.post("/v1/events?ack=persisted", body);
        assert_eq!(
            (status, answer["persisted"].as_bool()),
            (202, Some(true)),
            "{answer}"
        );
    }

    /// `POST path` without a body.
    pub fn post_empty(&self, path: &str) -> (u16, Value) {
        self.call(Method::POST, path, None)
    }

    /// `PATCH path` with a JSON body.
    pub fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::PATCH, path, Some(body))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.call(Method::DELETE, path, None)
    }

    /// Creates and starts a two-variant experiment; returns its JSON.
    pub fn running_experiment(&self, key: &str, extra: Value) -> Value {
        let mut body = json!({
            "key": key,
            "name": format!("experiment {key}"),
            "variants": [{"key": "control", "weight": 1}, {"key": "treatment", "weight": 1}],
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let (status, created) = self.post("/v1/experiments", body);
        assert_eq!(status, 201, "{created}");
        let (status, started) = self.post_empty(&format!("/v1/experiments/{key}/start"));
        assert_eq!(status, 200, "{started}");
        started
    }

    /// Every stored event of `experiment` (or of no experiment), paging
    /// through the export; [`TestServer::barrier`]'s events left out.
    pub fn stored(&self, experiment: Option<&str>) -> Vec<Value> {
        let mut events = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = "/v1/events?limit=10000".to_owned();
            if let Some(e) = experiment {
                path.push_str(&format!("&experiment={e}"));
            }
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = self.get(&path);
            assert_eq!(status, 200, "{page}");
            events.extend(
                page["events"]
                    .as_array()
                    .expect("events")
                    .iter()
                    .filter(|e| e["type"] != "barrier")
                    .cloned(),
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return events,
            }
        }
    }

    /// Waits for everything queued so far. Each partition's mailbox is
    /// FIFO, so once a later `ack=persisted` request with a unit in every
    /// partition is committed, so is all before it: 256 units miss one of
    /// a test server's partitions (two, unless a test sets more, at most
    /// four) with a chance below 1e-31, and the waiter hears `persisted`
    /// only once each part is committed. Barrier events are left out of
    /// [`TestServer::stored`].
    pub fn barrier(&self) {
        let events: Vec<Value> = (0..256)
            .map(|i| json!({"type": "barrier", "unit_id": format!("barrier-{i}")}))
            .collect();
        self.persist(json!({ "events": events }));
    }

    /// The experiment's aggregates, live and recomputed from stored
    /// events; asserts both agree exactly.
    pub fn aggregates(&self, key: &str) -> Value {
        let (status, live) = self.get(&format!("/v1/experiments/{key}/aggregates"));
        assert_eq!(status, 200, "{live}");
        let (status, rebuilt) =
            self.get(&format!("/v1/experiments/{key}/aggregates?source=events"));
        assert_eq!(status, 200, "{rebuilt}");
        assert_eq!(live, rebuilt, "live aggregates differ from a rebuild");
        live
    }

    /// `GET .../assignment` for `unit`.
    pub fn assign(&self, key: &str, unit: &str) -> Value {
        let (status, body) = self.get(&format!(
            "/v1/experiments/{key}/assignment?unit_id={}",
            urlencode(unit)
        ));
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Status and JSON body (`null` when the body is not JSON).
pub fn read(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts the spec's error body and returns its code.
pub fn error_code(body: &Value) -> &str {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The shared test vectors of the product contract.
pub fn vectors() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("actors/testdata/assignment_vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json")
}

impl TestServer {
    /// `127.0.0.1:port`, for raw TCP clients.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Runs `abacus serve` with only `env` (and a temporary data directory)
/// and expects it to exit by itself within `within`; returns its exit code
/// and everything it printed. A server still running then is killed and
/// the test fails.
pub fn serve_expecting_exit(env: &[(&str, &str)], within: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("server.log");
    let log = File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_abacus"))
        .arg("serve")
        .env_clear()
        .env("ABACUS_STORAGE__PATH", dir.path().join("data"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start abacus");
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "abacus was still running after {within:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    (status.code(), output)
}

/// Runs the Python script `script` (a path from the repository's root)
/// with `args`, as the tests' real clients and oracles are (the test
/// command installs their packages, `tests/requirements.txt`); panics with
/// its output unless it succeeds. Returns what it printed.
pub fn python(script: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
