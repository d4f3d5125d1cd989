//! Per-caller request rates: one token bucket per caller and route class.
//!
//! Two keyed limiters (governor's GCRA, which is a token bucket kept as a
//! single "theoretical arrival time" per key): one for the ingest routes
//! (assignments and `POST /v1/events`), one for every other `/v1` route.
//! A caller is the principal it authenticated as (a key's id, a configured
//! key's role and position, a token's subject; never a secret), or in open
//! mode the client's address. Each bucket refills at `limits.ingest_rps` / `limits.admin_rps`
//! tokens a second and holds at most `limits.burst`; a rate of 0 means no
//! limiter at all. The check runs in the [`super::auth`] extractors, right
//! after the credential is recognised, so it is hashed once per request.
//!
//! Cost on the hot path: one clock read (TSC), one lookup in a sharded
//! `DashMap` under a shard *read* lock and one compare-and-swap on the
//! caller's atomic state. Nothing is allocated except when a caller is seen
//! for the first time (its map entry), and no lock is held across an await
//! (the check is synchronous).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use abacus_actors::metrics as m;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use super::auth::Scope;
use super::error::ApiError;

/// Who a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// A known caller, by its principal's id: a key's, or a token's
    /// subject's (every token of one subject shares a bucket).
    Principal(std::sync::Arc<str>),
    /// Open mode: the client's address; IPv6 by its /64 prefix, since one
    /// host usually holds a whole /64 and could otherwise rotate through it.
    Addr(IpAddr),
}

impl Caller {
    /// The caller for a peer address (`None` in unit tests without one).
    pub fn from_peer(peer: Option<SocketAddr>) -> Self {
        let ip = match peer.map(|p| p.ip()) {
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(Ipv6Addr::from(prefix))
                }
            },
            Some(v4) => v4,
            None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Caller::Addr(ip)
    }
}

type Bucket = DefaultKeyedRateLimiter<Caller>;

/// How often [`RateLimits::sweep`] forgets idle callers.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The two limiters, shared by every worker (app data; cloning is two
/// `Arc` clones, done once per worker).
///
/// # Memory
///
/// A keyed limiter keeps one entry per caller it has seen: the caller (24
/// bytes) and its state (8 bytes), about 40 bytes with the map's overhead.
/// With keys that is at most the number of configured keys. In open mode
/// callers are client addresses, which an outsider can vary (one per TCP
/// connection it can open; IPv6 counted by /64), so [`RateLimits::sweep`]
/// calls `retain_recent()` every [`SWEEP_EVERY`]: it drops every caller
/// whose bucket has refilled, which it has at most `(burst + 1) / rps`
/// seconds after the caller's last request, then gives the freed capacity
/// back (`shrink_to_fit`). The map so holds at most the callers seen in the
/// last `(burst + 1) / rps` seconds plus one sweep interval: with the
/// default burst of 100 at 1,000 requests/s, those of about the last 10 s,
/// so a million distinct addresses in that window would cost about 40 MB.
#[derive(Clone, Default)]
pub struct RateLimits {
    ingest: Option<Arc<Bucket>>,
    admin: Option<Arc<Bucket>>,
}

impl RateLimits {
    /// Limiters for the configured rates; a rate of 0 has none.
    pub fn new(ingest_rps: u32, admin_rps: u32, burst: u32) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let bucket = |rps: u32| {
            NonZeroU32::new(rps)
                .map(|rps| Arc::new(Bucket::dashmap(Quota::per_second(rps).allow_burst(burst))))
        };
        let limits = Self {
            ingest: bucket(ingest_rps),
            admin: bucket(admin_rps),
        };
        // Export the counter at 0 from the start, so a rate over it is
        // defined before the first refusal.
        for (bucket, scope) in [(&limits.ingest, "ingest"), (&limits.admin, "admin")] {
            if bucket.is_some() {
                metrics::counter!(m::HTTP_RATE_LIMITED, "scope" => scope).increment(0);
            }
        }
        limits
    }

    /// Takes one token from `caller`'s bucket for `scope`'s routes, or says
    /// when to retry (whole seconds, at least 1) and counts the refusal.
    pub fn check(&self, scope: Scope, caller: Caller) -> Result<(), ApiError> {
        let (bucket, label) = match scope {
            Scope::Ingest => (&self.ingest, "ingest"),
            Scope::Admin => (&self.admin, "admin"),
        };
        let Some(bucket) = bucket else {
            return Ok(());
        };
        bucket.check_key(&caller).map_err(|not_until| {
            let wait = not_until.wait_time_from(bucket.clock().now());
            let retry_after_s = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            metrics::counter!(m::HTTP_RATE_LIMITED, "scope" => label).increment(1);
            ApiError::RateLimited {
                scope: label,
                retry_after_s,
            }
        })
    }

    fn buckets(&self) -> impl Iterator<Item = &Arc<Bucket>> {
        self.ingest.iter().chain(self.admin.iter())
    }

    /// Forgets callers whose bucket is full again (they are no different
    /// from callers never seen) and returns the freed capacity.
    pub fn retain_recent(&self) {
        for bucket in self.buckets() {
            bucket.retain_recent();
            bucket.shrink_to_fit();
        }
    }

    /// Callers currently remembered, over both limiters.
    pub fn callers(&self) -> usize {
        self.buckets().map(|b| b.len()).sum()
    }

    /// Calls [`RateLimits::retain_recent`] every `every`, for ever (the
    /// server aborts it at shutdown). Returns at once when nothing is limited.
    pub async fn sweep(self, every: Duration) {
        if self.ingest.is_none() && self.admin.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_burst_then_refuses_with_retry_after() {
        let limits = RateLimits::new(1, 0, 3);
        let alice = Caller::Principal("alice".into());
        for _ in 0..3 {
            limits
                .check(Scope::Ingest, alice.clone())
                .expect("within the burst");
        }
        match limits.check(Scope::Ingest, alice.clone()) {
            Err(ApiError::RateLimited {
                scope,
                retry_after_s,
            }) => {
                assert_eq!(scope, "ingest");
                assert!(retry_after_s >= 1, "{retry_after_s}");
            }
            other => panic!("{other:?}"),
        }
        // Another caller, and the other class, are untouched.
        limits
            .check(Scope::Ingest, Caller::Principal("bob".into()))
            .expect("own bucket");
        for _ in 0..100 {
            limits
                .check(Scope::Admin, alice.clone())
                .expect("admin rate 0 = none");
        }
    }

    #[test]
    fn idle_callers_are_forgotten() {
        let limits = RateLimits::new(1_000_000, 0, 1);
        for i in 0..100u8 {
            let peer = SocketAddr::from(([10, 0, 0, i], 1234));
            limits
                .check(Scope::Ingest, Caller::from_peer(Some(peer)))
                .expect("first request");
        }
        assert_eq!(limits.callers(), 100);
        // At a million tokens a second every bucket is full again at once.
        std::thread::sleep(Duration::from_millis(5));
        limits.retain_recent();
        assert_eq!(limits.callers(), 0);
    }

    #[test]
    fn ipv6_callers_are_grouped_by_64_bit_prefix() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1".parse().expect("addr");
        let b: SocketAddr = "[2001:db8:1:2:bbbb::2]:2".parse().expect("addr");
        let c: SocketAddr = "[2001:db8:1:3::1]:3".parse().expect("addr");
        assert_eq!(Caller::from_peer(Some(a)), Caller::from_peer(Some(b)));
        assert_ne!(Caller::from_peer(Some(a)), Caller::from_peer(Some(c)));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4".parse().expect("addr");
        let v4: SocketAddr = "127.0.0.1:5".parse().expect("addr");
        assert_eq!(Caller::from_peer(Some(mapped)), Caller::from_peer(Some(v4)));
    }
}
