//! `--serve`: the harness starts its own abacus on a free loopback port
//! with a fresh data directory, and stops it with SIGTERM when done. With
//! `--footprint` it also reads what the server costs: resident memory (from
//! `/proc`), bytes on disk, and how long a restart takes to be ready.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

/// A server the harness started.
pub struct Spawned {
    binary: PathBuf,
    child: Child,
    port: u16,
    data: tempfile::TempDir,
}

/// What a server costs after a run (`--footprint`).
#[derive(Debug, Serialize)]
pub struct Footprint {
    /// Events the server committed (`abacus_events_persisted_total`).
    pub events: u64,
    /// Resident memory at the end of the run.
    pub rss_mb: f64,
    /// The data directory's size at the end of the run.
    pub disk_mb: f64,
    /// `disk_mb` per committed event, in bytes.
    pub disk_bytes_per_event: f64,
    /// SIGTERM, then start again on the same data: until `/readyz` is 200.
    pub restart_to_ready_ms: f64,
    /// Resident memory right after the restart.
    pub rss_after_restart_mb: f64,
    /// The data directory's size right after the restart.
    pub disk_after_restart_mb: f64,
}

impl Spawned {
    /// Starts `binary serve` and waits (up to 60 s) until `/readyz` is 200.
    pub fn start(binary: &Path) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = launch(binary, port, data.path())?;
        let server = Self {
            binary: binary.to_owned(),
            child,
            port,
            data,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Reads the server's footprint, restarting it once on the same data
    /// directory to time how long it takes to be ready again.
    pub fn footprint(&mut self) -> anyhow::Result<Footprint> {
        // What was accepted may still be in the mailbox: wait (at most
        // 60 s) until the writer has committed it.
        let deadline = Instant::now() + Duration::from_secs(60);
        let metrics = loop {
            let metrics = reqwest::blocking::get(format!("{}/metrics", self.url()))?.text()?;
            let queued = metric(&metrics, "abacus_ingest_mailbox_depth{mailbox=\"ingest\"}");
            if queued == 0.0 || Instant::now() >= deadline {
                break metrics;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let events = metric(&metrics, "abacus_events_persisted_total") as u64;
        let rss = self.rss_bytes()?;
        let disk = dir_bytes(self.data.path())?;
        self.stop();
        let started = Instant::now();
        self.child = launch(&self.binary, self.port, self.data.path())?;
        self.wait_ready()?;
        let restart = started.elapsed();
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        Ok(Footprint {
            events,
            rss_mb: mb(rss),
            disk_mb: mb(disk),
            disk_bytes_per_event: if events == 0 {
                0.0
            } else {
                disk as f64 / events as f64
            },
            restart_to_ready_ms: restart.as_secs_f64() * 1000.0,
            rss_after_restart_mb: mb(self.rss_bytes()?),
            disk_after_restart_mb: mb(dir_bytes(self.data.path())?),
        })
    }

    /// The server's resident memory, from `/proc/<pid>/status`.
    fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .context("no VmRSS in /proc status")?;
        Ok(kb * 1024)
    }

    /// Polls `/readyz` until it is 200 (at most 60 s).
    fn wait_ready(&self) -> anyhow::Result<()> {
        let ready = format!("{}/readyz", self.url());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = reqwest::blocking::get(&ready).is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} never became ready",
                self.binary.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 30 s.
    fn stop(&mut self) {
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

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of the sample named exactly `name` (with its labels) in a
/// Prometheus text exposition; 0 when absent.
fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Starts `binary serve` on `port` with its data under `data`.
fn launch(binary: &Path, port: u16, data: &Path) -> anyhow::Result<Child> {
    Command::new(binary)
        .arg("serve")
        .env("ABACUS_SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("ABACUS_STORAGE__PATH", data.join("data"))
        .env("ABACUS_WEBHOOKS__ALLOW_PRIVATE", "true")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// Bytes of every file under `dir`. A file RocksDB deletes while this
/// walks (a compaction's inputs) counts as gone, not as an error: the
/// walk runs while the server compacts.
fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_by_their_exact_name_and_labels() {
        let text = "# TYPE x counter\nabacus_events_persisted_total 12\n\
                    abacus_ingest_mailbox_depth{mailbox=\"ingest\"} 3\n";
        assert_eq!(metric(text, "abacus_events_persisted_total"), 12.0);
        assert_eq!(
            metric(text, "abacus_ingest_mailbox_depth{mailbox=\"ingest\"}"),
            3.0
        );
        assert_eq!(metric(text, "abacus_events"), 0.0);
    }
}
