//! Time as a dependency, so tests decide what "now" is.

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

#[cfg(test)]
pub(crate) use manual::ManualClock;

#[cfg(test)]
mod manual {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::Clock;

    /// A clock that only moves when a test moves it, so time-dependent
    /// behaviour (retry schedules, recorded timestamps) can be asserted
    /// exactly instead of slept through.
    ///
    /// Holds Unix nanoseconds in one atomic: an `i64` spans the years 1677
    /// to 2262, and actors on other threads read it without a lock.
    #[derive(Debug)]
    pub struct ManualClock {
        nanos: AtomicI64,
    }

    impl ManualClock {
        /// A clock showing `at`. Panics outside the years 1677 to 2262.
        pub fn new(at: OffsetDateTime) -> Self {
            Self {
                nanos: AtomicI64::new(nanos(at)),
            }
        }

        /// Shows `at` from now on (it may go backwards).
        pub fn set(&self, at: OffsetDateTime) {
            self.nanos.store(nanos(at), Ordering::SeqCst);
        }

        /// Moves the clock forward by `by`.
        pub fn advance(&self, by: Duration) {
            let by = i64::try_from(by.as_nanos()).expect("advance by less than 292 years");
            self.nanos.fetch_add(by, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> OffsetDateTime {
            let nanos = self.nanos.load(Ordering::SeqCst);
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
                .expect("an i64 of nanoseconds is always a valid time")
        }
    }

    fn nanos(at: OffsetDateTime) -> i64 {
        i64::try_from(at.unix_timestamp_nanos()).expect("a time between 1677 and 2262")
    }

    mod tests {
        use time::macros::datetime;

        use super::*;

        #[test]
        fn shows_what_it_was_set_to_and_moves_only_when_told() {
            let start = datetime!(2030-01-02 03:04:05.678_901_234 UTC);
            let clock = ManualClock::new(start);
            assert_eq!(clock.now(), start);
            assert_eq!(clock.now(), start, "reading does not move it");

            clock.advance(Duration::from_millis(1500));
            assert_eq!(clock.now(), start + time::Duration::milliseconds(1500));

            let earlier = datetime!(2001-01-01 00:00 UTC);
            clock.set(earlier);
            assert_eq!(clock.now(), earlier, "set may go backwards");
            clock.advance(Duration::from_nanos(1));
            assert_eq!(clock.now(), earlier + time::Duration::nanoseconds(1));
        }
    }
}
