//! Summaries of a run, for people and for machines.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::server::Footprint;
use crate::stream::StreamFigures;

/// Outcome counters, shared by the request tasks.
#[derive(Debug, Default)]
pub struct Counts {
    /// 2xx with a complete body.
    pub ok: AtomicU64,
    /// Non-2xx answers.
    pub http_errors: AtomicU64,
    /// Connection errors and timeouts.
    pub io_errors: AtomicU64,
    /// The first connection error, with its causes: what to look at when
    /// `io_errors` is not zero.
    pub first_io_error: std::sync::OnceLock<String>,
    /// Arrivals not sent because `--max-in-flight` was reached.
    pub overflow: AtomicU64,
    /// 503s sent again (closed loop only, which retries them).
    pub retried: AtomicU64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// The result of one run.
#[derive(Debug, Serialize)]
pub struct Report {
    scenario: String,
    /// `?ack=` of event requests: `accepted` or `persisted`.
    ack: &'static str,
    /// `open` (at `target_rate`) or `closed` (`concurrency` workers).
    mode: &'static str,
    target_rate: u64,
    concurrency: usize,
    duration_s: f64,
    requests: u64,
    ok: u64,
    http_errors: u64,
    io_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_io_error: Option<String>,
    overflow: u64,
    retried: u64,
    throughput_rps: f64,
    /// Latency from each request's scheduled start to its last body byte.
    pub latency_ms: Percentiles,
    /// Webhook deliveries (`webhooks` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fan_out: Option<FanOut>,
    /// Live-stream listeners (`--stream-clients`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamFigures>,
    /// The server's memory, disk and restart time (`--footprint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footprint: Option<Footprint>,
    /// The server's CPU time over the run (with `--serve` or
    /// `--server-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<ServerCpu>,
}

/// What the run cost the server in CPU time (user + system, every thread).
#[derive(Debug, Serialize)]
pub struct ServerCpu {
    /// Over the run and the settling after it.
    pub seconds: f64,
    /// Per answered request, in microseconds.
    pub per_request_us: f64,
    /// Per event sent (a batch's events each), in microseconds; absent for
    /// requests that carry none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_event_us: Option<f64>,
}

/// What the local receiver got in a `webhooks` run.
#[derive(Debug, Serialize)]
pub struct FanOut {
    /// Subscriptions created.
    pub subscribers: usize,
    /// Created experiments × subscribers.
    pub expected: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// From the first request to the last delivery.
    pub seconds: f64,
    /// delivered / seconds.
    pub messages_per_s: f64,
}

impl Report {
    /// Some requests succeeded, none failed, every webhook delivery
    /// arrived, and stream listeners (if any) received and kept up.
    pub fn is_clean(&self) -> bool {
        self.ok > 0
            && self.http_errors == 0
            && self.io_errors == 0
            && self
                .fan_out
                .as_ref()
                .is_none_or(|w| w.delivered >= w.expected)
            && self
                .stream
                .as_ref()
                .is_none_or(|s| s.messages > 0 && s.dropped == 0)
    }

    /// Summarises a finished run.
    pub fn new(args: &crate::Args, h: &Histogram<u64>, c: &Counts, elapsed: Duration) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let ok = c.ok.load(Ordering::Relaxed);
        let http_errors = c.http_errors.load(Ordering::Relaxed);
        let io_errors = c.io_errors.load(Ordering::Relaxed);
        Self {
            scenario: args.scenario.name().to_owned(),
            ack: args.ack.name(),
            mode: if args.closed_loop { "closed" } else { "open" },
            target_rate: if args.closed_loop { 0 } else { args.rate },
            concurrency: if args.closed_loop {
                args.concurrency
            } else {
                0
            },
            duration_s: elapsed.as_secs_f64(),
            requests: ok + http_errors + io_errors,
            ok,
            http_errors,
            io_errors,
            first_io_error: c.first_io_error.get().cloned(),
            overflow: c.overflow.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            throughput_rps: (ok + http_errors) as f64 / elapsed.as_secs_f64(),
            latency_ms: Percentiles {
                p50: ms(0.5),
                p90: ms(0.9),
                p99: ms(0.99),
                p999: ms(0.999),
                max: h.max() as f64 / 1000.0,
            },
            fan_out: None,
            stream: None,
            footprint: None,
            server_cpu: None,
        }
    }

    /// The server's CPU time `used` over this run, per answered request
    /// and per event (`events_per_request` of each, when they carry any).
    pub fn cpu(&self, used: std::time::Duration, events_per_request: Option<u64>) -> ServerCpu {
        let answered = (self.ok + self.http_errors).max(1) as f64;
        let us = used.as_secs_f64() * 1e6;
        ServerCpu {
            seconds: used.as_secs_f64(),
            per_request_us: us / answered,
            per_event_us: events_per_request.map(|n| us / (answered * n.max(1) as f64)),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_ms;
        if self.mode == "closed" {
            writeln!(
                f,
                "scenario {}  closed loop, {} workers  {:.1} s",
                self.scenario, self.concurrency, self.duration_s
            )?;
        } else {
            writeln!(
                f,
                "scenario {}  target {}/s  {:.1} s",
                self.scenario, self.target_rate, self.duration_s
            )?;
        }
        if self.ack != "accepted" {
            writeln!(f, "events answered with ack={}", self.ack)?;
        }
        writeln!(
            f,
            "requests {}  ok {}  http errors {}  io errors {}  overflow {}",
            self.requests, self.ok, self.http_errors, self.io_errors, self.overflow
        )?;
        if let Some(error) = &self.first_io_error {
            writeln!(f, "first io error: {error}")?;
        }
        if self.retried > 0 {
            writeln!(f, "503s retried {}", self.retried)?;
        }
        writeln!(f, "throughput {:.0} req/s", self.throughput_rps)?;
        writeln!(
            f,
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        if let Some(c) = &self.server_cpu {
            write!(
                f,
                "server cpu  {:.2} s  {:.1} µs/request",
                c.seconds, c.per_request_us
            )?;
            match c.per_event_us {
                Some(e) => writeln!(f, "  {e:.2} µs/event")?,
                None => writeln!(f)?,
            }
        }
        if let Some(w) = &self.fan_out {
            writeln!(
                f,
                "webhooks  {} subscribers  delivered {} of {}  in {:.2} s  {:.0} messages/s",
                w.subscribers, w.delivered, w.expected, w.seconds, w.messages_per_s
            )?;
        }
        if let Some(s) = &self.stream {
            writeln!(
                f,
                "stream  {} clients  {} messages received  {} dropped as slow",
                s.clients, s.messages, s.dropped
            )?;
        }
        if let Some(p) = &self.footprint {
            writeln!(
                f,
                "footprint  {} events  RSS {:.1} MB  disk {:.1} MB ({:.0} bytes/event)",
                p.events, p.rss_mb, p.disk_mb, p.disk_bytes_per_event
            )?;
            writeln!(
                f,
                "restart  ready in {:.0} ms  RSS {:.1} MB  disk {:.1} MB",
                p.restart_to_ready_ms, p.rss_after_restart_mb, p.disk_after_restart_mb
            )?;
        }
        Ok(())
    }
}
