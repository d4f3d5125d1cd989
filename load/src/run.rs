//! The open-loop driver.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::cpu;
use crate::receiver::Deliveries;
use crate::report::{Counts, FanOut, Report};
use crate::scenario::Target;
use crate::stream::Listeners;
use crate::Args;

/// How long an idle pooled connection is kept. Shorter than the server's
/// keep-alive (actix's default, 5 s): a connection the server closes just
/// as the harness reuses it fails with "connection closed before message
/// completed", which is the client's race, not the server's error. After a
/// burst the pool holds many connections that then sit idle.
const POOL_IDLE: Duration = Duration::from_secs(3);

/// Runs one bounded test (open loop, or closed with `--closed-loop`) and
/// summarises it.
pub async fn run(args: &Args) -> anyhow::Result<Report> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_in_flight)
        .pool_idle_timeout(POOL_IDLE)
        .timeout(Duration::from_secs(10))
        .build()?;
    let target = Arc::new(Target::prepare(args, client).await?);
    let listeners = match args.stream_clients {
        0 => None,
        n => Some(Listeners::open(&args.url, args.token.as_deref(), n).await?),
    };
    // 1 µs to 60 s, 3 significant digits.
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let counts = Arc::new(Counts::default());

    let cpu_before = args.server_pid.map(cpu::of).transpose()?;
    let start = Instant::now();
    if args.closed_loop {
        closed_loop(args, &target, &histogram, &counts).await;
    } else {
        open_loop(args, &target, &histogram, &counts, start).await;
    }
    let elapsed = start.elapsed();
    // What was answered may still be committed after the answer (202):
    // its cost is the run's too.
    let cpu_used = match (args.server_pid, cpu_before) {
        (Some(pid), Some(before)) => {
            tokio::time::sleep(cpu::SETTLE).await;
            Some(cpu::of(pid)? - before)
        }
        _ => None,
    };
    let histogram = histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?
        .clone();
    let mut report = Report::new(args, &histogram, &counts, elapsed);
    let events = args.scenario.events_per_request(args);
    report.server_cpu = cpu_used.map(|used| report.cpu(used, events));
    report.stream = listeners.map(Listeners::close);
    if let Some(deliveries) = &target.deliveries {
        let expected = counts.ok.load(Ordering::Relaxed) * args.subscribers as u64;
        report.fan_out = Some(fan_out(deliveries, expected, args.subscribers, start).await);
    }
    Ok(report)
}

/// Arrivals at `--rate` from `start`, each sent on its own task; latency
/// from each request's scheduled start, so a slow server cannot hide
/// behind its own slowness (no coordinated omission).
async fn open_loop(
    args: &Args,
    target: &Arc<Target>,
    histogram: &Arc<Mutex<Histogram<u64>>>,
    counts: &Arc<Counts>,
    start: Instant,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let total = args
        .max_requests
        .min((args.duration.as_secs_f64() * args.rate as f64).ceil() as u64);
    let mut arrivals = pace(start, interval, total);
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((n, scheduled)) = arrivals.recv().await {
        if in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
            counts.overflow.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let request = target.nth(n);
        let (histogram, counts, in_flight) = (
            Arc::clone(histogram),
            Arc::clone(counts),
            Arc::clone(&in_flight),
        );
        tasks.spawn(async move {
            let outcome = send(request).await;
            outcome_counter(&counts, outcome).fetch_add(1, Ordering::Relaxed);
            let micros = u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX);
            if let Ok(mut h) = histogram.lock() {
                h.saturating_record(micros.max(1));
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// How long a closed-loop worker waits before sending a 503'd request
/// again, and how often it tries.
const RETRY_AFTER: Duration = Duration::from_millis(10);
const MAX_RETRIES: usize = 1000;

/// `--concurrency` workers sending back to back until the duration or the
/// request count runs out; latency from each first send to the answer. A
/// 503 (mailbox full) is sent again after [`RETRY_AFTER`], so a closed-loop
/// fill delivers every event at the rate the server takes them.
async fn closed_loop(
    args: &Args,
    target: &Arc<Target>,
    histogram: &Arc<Mutex<Histogram<u64>>>,
    counts: &Arc<Counts>,
) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + args.duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (target, histogram, counts, next) = (
            Arc::clone(target),
            Arc::clone(histogram),
            Arc::clone(counts),
            Arc::clone(&next),
        );
        let max = args.max_requests;
        workers.spawn(async move {
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= max {
                    break;
                }
                let sent = Instant::now();
                let mut outcome = send(target.nth(n)).await;
                for _ in 0..MAX_RETRIES {
                    if !matches!(outcome, Outcome::Busy) {
                        break;
                    }
                    counts.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RETRY_AFTER).await;
                    outcome = send(target.nth(n)).await;
                }
                outcome_counter(&counts, outcome).fetch_add(1, Ordering::Relaxed);
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                if let Ok(mut h) = histogram.lock() {
                    h.saturating_record(micros.max(1));
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// How a request ended.
enum Outcome {
    Ok,
    /// 503: the server asks to retry.
    Busy,
    Http,
    Io(reqwest::Error),
}

/// Sends and reads the whole body: the request is done when it is.
async fn send(request: reqwest::RequestBuilder) -> Outcome {
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let read = response.bytes().await.is_ok();
            if read && status.is_success() {
                Outcome::Ok
            } else if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                Outcome::Busy
            } else {
                Outcome::Http
            }
        }
        Err(error) => Outcome::Io(error),
    }
}

fn outcome_counter(counts: &Counts, outcome: Outcome) -> &std::sync::atomic::AtomicU64 {
    match outcome {
        Outcome::Ok => &counts.ok,
        Outcome::Http | Outcome::Busy => &counts.http_errors,
        Outcome::Io(error) => {
            // `{:#}` prints the error and its causes, outermost first.
            counts
                .first_io_error
                .get_or_init(|| format!("{:#}", anyhow::Error::new(error)));
            &counts.io_errors
        }
    }
}

/// Waits (at most 120 s) for every expected delivery, then measures.
async fn fan_out(
    deliveries: &Deliveries,
    expected: u64,
    subscribers: usize,
    start: Instant,
) -> FanOut {
    let deadline = Instant::now() + Duration::from_secs(120);
    while deliveries.count.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = deliveries.count.load(Ordering::Relaxed);
    let last = deliveries
        .last
        .lock()
        .ok()
        .and_then(|l| *l)
        .unwrap_or(start);
    let seconds = last.duration_since(start).as_secs_f64();
    FanOut {
        subscribers,
        expected,
        delivered,
        seconds,
        messages_per_s: delivered as f64 / seconds.max(f64::EPSILON),
    }
}

/// Emits `(n, scheduled start)` for each of `total` arrivals from an OS
/// thread. The async runtime's timer has millisecond granularity, which
/// would add up to a millisecond of the harness's own lateness to every
/// latency; a thread sleeping on the OS's high-resolution timer keeps the
/// schedule to tens of microseconds.
fn pace(start: Instant, interval: Duration, total: u64) -> mpsc::UnboundedReceiver<(u64, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut n = 0;
        while n < total {
            let now = Instant::now();
            while n < total {
                let scheduled = start + interval.mul_f64(n as f64);
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                    break;
                }
                if tx.send((n, scheduled)).is_err() {
                    return;
                }
                n += 1;
            }
        }
    });
    rx
}
