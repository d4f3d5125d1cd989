//! Server figures the HTTP layer feeds in for alert rules and the
//! dashboard: every response's status and response time, and separately
//! those of `POST /v1/events`. Lock-free counters (a few relaxed adds per
//! request); the evaluator takes a cumulative snapshot each second and
//! differences them over a rule's window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets grow by this factor, so a percentile read from the
/// bucket's upper edge is at most 10% high.
const GROWTH: f64 = 1.1;
/// Buckets from 1 µs up to about 190 s (1.1^200 µs).
const BUCKETS: usize = 200;

/// Counters since start.
#[derive(Debug)]
pub struct Signals {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    event_latency: [AtomicU64; BUCKETS],
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            event_latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SignalCounts {
    /// Responses sent.
    pub requests: u64,
    /// Responses with status >= 400.
    pub errors: u64,
    /// Response times per bucket, every route.
    pub latency: Vec<u64>,
    /// `POST /v1/events` response times per bucket.
    pub event_latency: Vec<u64>,
}

impl Signals {
    /// Counts one response; `event` when it answered `POST /v1/events`.
    pub fn record(&self, status: u16, event: bool, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 400 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let bucket = bucket(took);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        if event {
            self.event_latency[bucket].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> SignalCounts {
        SignalCounts {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: load(&self.latency),
            event_latency: load(&self.event_latency),
        }
    }
}

impl SignalCounts {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &SignalCounts) -> SignalCounts {
        SignalCounts {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: minus(&self.latency, &earlier.latency),
            event_latency: minus(&self.event_latency, &earlier.event_latency),
        }
    }

    /// The `q` quantile of event response times in ms (the bucket's upper
    /// edge), or `None` without events.
    pub fn event_latency_ms(&self, q: f64) -> Option<f64> {
        quantile_ms(&self.event_latency, q)
    }

    /// The `q` quantile of every response time in ms, or `None` without
    /// requests.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        quantile_ms(&self.latency, q)
    }

    /// Share of responses that were errors, or `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

fn load(buckets: &[AtomicU64]) -> Vec<u64> {
    buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
}

fn minus(now: &[u64], then: &[u64]) -> Vec<u64> {
    now.iter()
        .zip(then)
        .map(|(now, then)| now.saturating_sub(*then))
        .collect()
}

/// The upper edge of the bucket holding rank `ceil(q n)`, in ms.
fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(GROWTH.powi(i as i32 + 1) / 1000.0);
        }
    }
    None
}

/// The bucket of a duration: `floor(log_1.1(µs))`, clamped.
fn bucket(took: Duration) -> usize {
    let micros = took.as_secs_f64() * 1e6;
    if micros <= 1.0 {
        return 0;
    }
    ((micros.ln() / GROWTH.ln()) as usize).min(BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p95_is_within_ten_percent_above_the_truth() {
        let signals = Signals::default();
        let before = signals.snapshot();
        for ms in 1..=100 {
            signals.record(202, true, Duration::from_millis(ms));
        }
        let window = signals.snapshot().since(&before);
        let p95 = window.event_latency_ms(0.95).unwrap();
        assert!((95.0..=95.0 * GROWTH).contains(&p95), "{p95}");
        assert_eq!(
            SignalCounts {
                event_latency: vec![0; BUCKETS],
                ..window
            }
            .event_latency_ms(0.95),
            None
        );
    }

    #[test]
    fn error_rate_counts_4xx_and_5xx_over_the_window_only() {
        let signals = Signals::default();
        signals.record(500, false, Duration::ZERO);
        let before = signals.snapshot();
        for status in [200, 404, 422, 503] {
            signals.record(status, false, Duration::ZERO);
        }
        assert_eq!(signals.snapshot().since(&before).error_rate(), Some(0.75));
        assert_eq!(before.since(&before).error_rate(), None);
    }
}
