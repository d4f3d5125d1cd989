//! `--serve`: the harness starts its own abacus on a free loopback port
//! with a fresh data directory, and stops it with SIGTERM when done.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A server the harness started.
pub struct Spawned {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Spawned {
    /// Starts `binary serve` and waits (up to 60 s) until `/readyz` is 200.
    pub fn start(binary: &Path) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(binary)
            .arg("serve")
            .env("ABACUS_SERVER__BIND", format!("127.0.0.1:{port}"))
            .env("ABACUS_STORAGE__PATH", data.path().join("data"))
            .env("ABACUS_WEBHOOKS__ALLOW_PRIVATE", "true")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let server = Self {
            child,
            port,
            _data: data,
        };
        let ready = format!("{}/readyz", server.url());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = reqwest::blocking::get(&ready).is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(server);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} never became ready",
                binary.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
