//! A project's quotas in force, and the two token buckets that meter its
//! rates. Every engine (one per project) has one; the projects service sets
//! it from the server's configuration and the project's overrides, and
//! again whenever they change.
//!
//! Each rate is a token bucket (governor's GCRA: one atomic "theoretical
//! arrival time") holding one second of the rate, so a project may spend a
//! second's quota at once and then its rate. Cost on the hot path: one
//! `ArcSwap` load (no lock, no allocation), one clock read and one
//! compare-and-swap. Refusals are counted in
//! `abacus_quota_refused_total{project, quota}`.

use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota};

use crate::domain::QuotaLimits;
use crate::metrics as m;
use crate::{Error, Result};

/// The quotas in force and the buckets metering them.
struct InForce {
    limits: QuotaLimits,
    events: Option<Arc<DefaultDirectRateLimiter>>,
    assignments: Option<Arc<DefaultDirectRateLimiter>>,
}

/// One project's quotas.
pub struct Quotas {
    project: Arc<str>,
    in_force: ArcSwap<InForce>,
}

impl Quotas {
    /// `project`'s quotas, `limits` in force.
    pub fn new(project: Arc<str>, limits: QuotaLimits) -> Self {
        for quota in ["events_per_second", "assignments_per_second"] {
            metrics::counter!(m::QUOTA_REFUSED, "project" => project.to_string(), "quota" => quota)
                .increment(0);
        }
        Self {
            in_force: ArcSwap::from_pointee(InForce {
                limits,
                events: bucket(limits.events_per_second),
                assignments: bucket(limits.assignments_per_second),
            }),
            project,
        }
    }

    /// Quotas no test reaches.
    #[cfg(test)]
    pub(crate) fn unmetered() -> Arc<Self> {
        Arc::new(Self::new(
            "default".into(),
            QuotaLimits {
                events_per_second: 0,
                assignments_per_second: 0,
                max_experiments: u32::MAX,
                max_webhooks: u32::MAX,
            },
        ))
    }

    /// The quotas in force.
    pub fn limits(&self) -> QuotaLimits {
        self.in_force.load().limits
    }

    /// Puts `limits` in force. A rate that did not change keeps its bucket
    /// (and what was spent of it); one that did starts full.
    pub fn set(&self, limits: QuotaLimits) {
        let now = self.in_force.load();
        let keep = |rate: u32, was: u32, bucket: &Option<Arc<DefaultDirectRateLimiter>>| {
            if rate == was {
                bucket.clone()
            } else {
                self::bucket(rate)
            }
        };
        let next = InForce {
            limits,
            events: keep(
                limits.events_per_second,
                now.limits.events_per_second,
                &now.events,
            ),
            assignments: keep(
                limits.assignments_per_second,
                now.limits.assignments_per_second,
                &now.assignments,
            ),
        };
        self.in_force.store(Arc::new(next));
    }

    /// Takes `n` events from the events bucket: refused with when to retry
    /// past the rate, and as invalid when `n` is more than a second's
    /// quota (no wait would let it through).
    pub fn admit_events(&self, n: usize) -> Result<()> {
        let in_force = self.in_force.load();
        let Some(bucket) = &in_force.events else {
            return Ok(());
        };
        let rate = in_force.limits.events_per_second;
        let too_many = || {
            Error::invalid(
                "events",
                format!(
                    "a batch of {n} events is more than this project's quota of {rate} a \
                     second (quotas.events_per_second): send smaller batches"
                ),
            )
        };
        let n = u32::try_from(n)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(too_many)?;
        match bucket.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(self.refuse(
                "events_per_second",
                not_until.wait_time_from(bucket.clock().now()),
            )),
            Err(_) => Err(too_many()),
        }
    }

    /// Takes one assignment request from the assignments bucket, or says
    /// when to retry.
    pub fn admit_assignment(&self) -> Result<()> {
        let in_force = self.in_force.load();
        let Some(bucket) = &in_force.assignments else {
            return Ok(());
        };
        bucket.check().map_err(|not_until| {
            self.refuse(
                "assignments_per_second",
                not_until.wait_time_from(bucket.clock().now()),
            )
        })
    }

    /// Refuses one more of `what` (`experiments`, `webhooks`) when the
    /// project holds `held` and its quota is `max`.
    pub fn check_count(&self, what: &'static str, held: usize, max: u32) -> Result<()> {
        if held < max as usize {
            return Ok(());
        }
        let (field, more) = match what {
            "experiments" => (
                "quotas.max_experiments",
                "archive one, or raise the project's quota",
            ),
            _ => (
                "quotas.max_webhooks",
                "delete one, or raise the project's quota",
            ),
        };
        Err(Error::invalid(
            field,
            format!(
                "project '{}' holds its quota of {max} {what} ({field}): {more}",
                self.project
            ),
        ))
    }

    fn refuse(&self, quota: &'static str, wait: std::time::Duration) -> Error {
        metrics::counter!(m::QUOTA_REFUSED, "project" => self.project.to_string(), "quota" => quota)
            .increment(1);
        Error::OverQuota {
            project: Arc::clone(&self.project),
            quota,
            retry_after_s: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
        }
    }
}

/// A bucket holding one second of `rate`; none for 0 (no limit).
fn bucket(rate: u32) -> Option<Arc<DefaultDirectRateLimiter>> {
    NonZeroU32::new(rate)
        .map(|rate| Arc::new(DefaultDirectRateLimiter::direct(Quota::per_second(rate))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(events: u32, assignments: u32) -> QuotaLimits {
        QuotaLimits {
            events_per_second: events,
            assignments_per_second: assignments,
            max_experiments: 2,
            max_webhooks: 1,
        }
    }

    #[test]
    fn a_second_of_events_passes_then_the_rest_waits() {
        let quotas = Quotas::new("growth".into(), limits(10, 0));
        quotas.admit_events(6).expect("within a second's quota");
        quotas.admit_events(4).expect("the rest of it");
        match quotas.admit_events(1) {
            Err(Error::OverQuota {
                quota,
                retry_after_s,
                ..
            }) => assert_eq!((quota, retry_after_s), ("events_per_second", 1)),
            other => panic!("{other:?}"),
        }
        match quotas.admit_events(11) {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "events"),
            other => panic!("a batch no wait lets through is invalid: {other:?}"),
        }
        for _ in 0..1000 {
            quotas.admit_assignment().expect("0: no limit");
        }
    }

    #[test]
    fn a_changed_rate_starts_a_full_bucket_and_an_unchanged_one_keeps_its_state() {
        let quotas = Quotas::new("growth".into(), limits(0, 2));
        quotas.admit_assignment().expect("first");
        quotas.admit_assignment().expect("second");
        assert!(quotas.admit_assignment().is_err());
        quotas.set(limits(5, 2));
        assert!(quotas.admit_assignment().is_err(), "same rate, same bucket");
        quotas
            .admit_events(5)
            .expect("a new events bucket starts full");
        quotas.set(limits(5, 3));
        quotas.admit_assignment().expect("a new rate starts full");
        quotas.set(limits(0, 0));
        for _ in 0..100 {
            quotas.admit_events(1000).expect("no limit");
        }
    }

    #[test]
    fn counts_are_refused_at_the_quota() {
        let quotas = Quotas::new("growth".into(), limits(0, 0));
        quotas
            .check_count("experiments", 1, 2)
            .expect("room for one");
        match quotas.check_count("experiments", 2, 2) {
            Err(Error::Invalid { field, message }) => {
                assert_eq!(field, "quotas.max_experiments");
                assert!(message.contains("'growth'"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(quotas.check_count("webhooks", 1, 1).is_err());
    }
}
