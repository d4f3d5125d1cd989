//! `abacus-load`: an open-loop load generator for abacus.
//!
//! Requests are *scheduled* at a fixed arrival rate and each one's latency
//! is measured from its scheduled start, not from when it was actually
//! sent, so a stalled server is charged for the queue it causes (no
//! coordinated omission). Latencies go into an HDR histogram. Every run is
//! bounded by `--duration` and `--max-requests`.

mod cpu;
mod receiver;
mod report;
mod run;
mod scenario;
mod server;
mod stream;

use std::time::Duration;

use clap::Parser;

use crate::scenario::{Ack, Scenario};

/// The same allocator as the server: the harness shares the machine's
/// cores with it, so every cycle the harness saves is the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Open-loop load test for an abacus server.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// What to send.
    #[arg(long, value_enum, default_value_t = Scenario::Assign)]
    scenario: Scenario,
    /// Base URL of a running abacus server (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Arrival rate in requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to send, e.g. `10s`, `500ms`, `2m`.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Stop after this many requests even if time remains.
    #[arg(long, default_value_t = 1_000_000)]
    max_requests: u64,
    /// Requests in flight beyond which new arrivals are counted as
    /// `overflow` instead of sent (bounds the harness's own memory).
    #[arg(long, default_value_t = 2048)]
    max_in_flight: usize,
    /// Distinct unit ids to draw from.
    #[arg(long, default_value_t = 100_000)]
    units: u64,
    /// Unit ids run from `user-<first-unit>` (so runs into different
    /// experiments can use disjoint units).
    #[arg(long, default_value_t = 0)]
    first_unit: u64,
    /// Experiments to create and start before the run (`assign-all` asks
    /// for all of them; `assign` uses the first).
    #[arg(long, default_value_t = 1)]
    experiments: usize,
    /// Use this existing experiment instead of creating fresh ones (e.g.
    /// read `results` of an experiment another run is filling).
    #[arg(long)]
    experiment: Option<String>,
    /// Give the created experiments derived metrics beside their plain
    /// ones: a capped mean, a ratio and two quantiles (the p90 of the
    /// conversions' values, the p99 of the clicks' response times), to
    /// measure what keeping them costs ingest.
    #[arg(long)]
    derived_metrics: bool,
    /// Makes the created experiments model experiments (classification),
    /// and the events predictions and their outcomes instead of clicks
    /// (see `Target::event`): measures the join on the ingest path.
    #[arg(long)]
    model: bool,
    /// Before the run, link this many anonymous ids (`anon-<n>`) to units
    /// (`user-<first-unit + n>`) with `POST /v1/aliases`: from the first
    /// link on, every assignment and event request looks its unit's link
    /// up, which this measures.
    #[arg(long, default_value_t = 0)]
    links: u64,
    /// Webhook subscriptions the `webhooks` scenario creates (the server
    /// needs `webhooks.allow_private = true`).
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Assignments without logging the exposure (`log_exposure=false`):
    /// the assignment path alone, without the event it writes.
    #[arg(long)]
    no_exposure: bool,
    /// Events per request in `ingest-batch`.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// When event requests (`ingest`, `ingest-batch`, `mixed`) are
    /// answered: `accepted` (queued) or `persisted` (`?ack=persisted`:
    /// after the group commit, fsynced).
    #[arg(long, value_enum, default_value_t = Ack::Accepted)]
    ack: Ack,
    /// Bearer key for the server, if auth is on.
    #[arg(long, env = "ABACUS_LOAD_TOKEN")]
    token: Option<String>,
    /// Run inside this project: with `--token` an owner's, create the
    /// project, issue an admin key in it and send every request with that
    /// key (the path a team's own credential takes).
    #[arg(long, requires = "token")]
    project: Option<String>,
    /// Harness runtime threads. With one, a busy moment in the harness's
    /// own scheduler shows up as tens of milliseconds of false latency.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Closed loop: `--concurrency` workers each send their next request as
    /// soon as the last one answered (measures capacity; `--rate` is ignored).
    #[arg(long)]
    closed_loop: bool,
    /// Workers in closed-loop mode.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Start this abacus binary (`serve` on a free loopback port with a
    /// fresh temporary data directory, webhooks to loopback allowed), run
    /// against it, then stop it with SIGTERM. `--url` is ignored.
    #[arg(long)]
    serve: Option<std::path::PathBuf>,
    /// The pid of the server at `--url`, to report its CPU time per
    /// request (with `--serve` the harness knows it).
    #[arg(long)]
    server_pid: Option<u32>,
    /// With `--serve`: after the run, report the server's resident memory,
    /// its data directory's size and bytes per committed event, then
    /// restart it on the same data and report the time to ready and the
    /// memory and disk right after.
    #[arg(long, requires = "serve")]
    footprint: bool,
    /// Hold this many `GET /v1/stream` connections open during the run
    /// and report what they received (fan-out cost of the live feed).
    #[arg(long, default_value_t = 0)]
    stream_clients: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Exit non-zero if p99 is above this many milliseconds.
    #[arg(long)]
    assert_p99_ms: Option<f64>,
    /// Exit non-zero if any request failed or none succeeded (or, for
    /// `webhooks`, a delivery is missing).
    #[arg(long)]
    assert_no_errors: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = number.parse().map_err(|_| format!("bad duration '{s}'"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in '{s}' (ms, s, m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    let mut server = match &args.serve {
        Some(binary) => {
            let server = server::Spawned::start(binary)?;
            args.url = server.url();
            args.server_pid = Some(server.pid());
            Some(server)
        }
        None => None,
    };
    let host = reqwest::Url::parse(&args.url)?;
    anyhow::ensure!(
        matches!(host.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")),
        "abacus-load only targets loopback addresses"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let mut report = runtime.block_on(run::run(&args))?;
    if let (true, Some(server)) = (args.footprint, server.as_mut()) {
        report.footprint = Some(server.footprint()?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    if args.assert_no_errors {
        anyhow::ensure!(
            report.is_clean(),
            "the run had errors or no successful request"
        );
    }
    if let Some(limit) = args.assert_p99_ms {
        anyhow::ensure!(
            report.latency_ms.p99 <= limit,
            "p99 {:.3} ms is above the limit of {limit} ms",
            report.latency_ms.p99
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
    }
}
