//! Time as a dependency, so tests decide what "now" is.

use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;

/// Where the engine reads the current time from.
pub trait Clock: Send + Sync + 'static {
    /// The current time in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock showing `unix_ms` milliseconds since the epoch.
    pub fn at_unix_ms(unix_ms: i64) -> Self {
        Self(AtomicI64::new(unix_ms))
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        let ms = self.0.load(Ordering::Relaxed);
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}
