//! Headless Chromium driven over the DevTools protocol (a WebSocket), for
//! testing the dashboard as a person would use it. Only loopback traffic:
//! the browser is started with its debugging port on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// One browser with one page.
pub struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromium` (installed by `scripts/bootstrap.sh test`).
    pub fn launch() -> Self {
        let profile = tempfile::tempdir().expect("profile dir");
        let binary = ["chromium", "chromium-browser"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok())
            .expect("chromium is not installed: run scripts/bootstrap.sh test");
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let endpoint = loop {
            let line = lines
                .next()
                .expect("chromium exited before listening")
                .expect("read chromium's stderr");
            if let Some(at) = line.find("ws://") {
                break line[at..].trim().to_owned();
            }
        };
        // Keep draining stderr so chromium never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let (socket, _) = tungstenite::connect(endpoint).expect("connect to DevTools");
        let mut browser = Self {
            child,
            socket,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().expect("session").to_owned();
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser
    }

    /// Sends one command and waits for its answer (events are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .expect("send to DevTools");
        loop {
            let frame = self.socket.read().expect("read from DevTools");
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {}", reply["error"]);
                return reply["result"].clone();
            }
        }
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        );
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, js: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "awaitPromise": true, "returnByValue": true}),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{js}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Polls `js` until it is truthy; returns its value.
    pub fn wait_for(&mut self, js: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.eval(js);
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                let page = self.eval("document.body.innerText.slice(0, 3000)");
                panic!(
                    "never true in the page: {js}\n--- page ---\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the whole page, or of the element matching `selector`.
    pub fn screenshot(&mut self, selector: Option<&str>, path: &Path) {
        let mut params = json!({"format": "png", "captureBeyondViewport": true});
        if let Some(selector) = selector {
            let rect = self.eval(&format!(
                "(() => {{ const r = document.querySelector({}).getBoundingClientRect(); \
                 return {{x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height, scale: 1}}; }})()",
                json!(selector)
            ));
            params["clip"] = rect;
        }
        let shot = self.call("Page.captureScreenshot", params);
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("png data"))
            .expect("base64 png");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
