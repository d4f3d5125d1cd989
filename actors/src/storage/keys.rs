//! Key codecs. Variable-length parts are length-prefixed or last, so that
//! all keys of one experiment are one contiguous, prefix-scannable range.
//!
//! Room for projects: every per-experiment key starts with the experiment
//! key's length, 1..=64. A later project scope goes in front as
//! `[0x80 | project len][project]`, a first byte no key written today can
//! have, so scoped and unscoped keys never collide and one project's keys
//! stay one range. Per-unit keys ([`unit_state`]) start with the project
//! scope already: `0` for the default project.

use crate::domain::ExperimentKey;

/// `[len: u8][experiment key][unit id]`: a unit within an experiment
/// (first exposures, unit aggregates). Experiment keys are at most 64
/// bytes, so one length byte suffices, and every unit of an experiment
/// shares the prefix [`experiment_prefix`].
pub fn unit(experiment: &str, unit: &str) -> Vec<u8> {
    let mut key = prefix(experiment);
    key.extend_from_slice(unit.as_bytes());
    key
}

/// `[0][unit id]`: all of one unit's aggregator state ([`Cf::Units`]).
/// The leading `0` is the default project's scope (see the module docs).
///
/// [`Cf::Units`]: super::Cf::Units
pub fn unit_state(unit: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + unit.len());
    key.push(0);
    key.extend_from_slice(unit.as_bytes());
    key
}

/// `[a][id]`: the unit `id` links to ([`Cf::Aliases`]).
///
/// [`Cf::Aliases`]: super::Cf::Aliases
pub fn alias(id: &str) -> Vec<u8> {
    [b"a", id.as_bytes()].concat()
}

/// `[r][len: u16 BE][unit]`: the start of the ids linked to `unit`.
pub fn linked_prefix(unit: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + unit.len());
    key.push(b'r');
    // Unit ids are at most 1,024 bytes (256 characters) by construction.
    key.extend_from_slice(&(unit.len() as u16).to_be_bytes());
    key.extend_from_slice(unit.as_bytes());
    key
}

/// [`linked_prefix`] then `id`: `id` is linked to `unit`.
pub fn linked(unit: &str, id: &str) -> Vec<u8> {
    let mut key = linked_prefix(unit);
    key.extend_from_slice(id.as_bytes());
    key
}

/// `[t][id]`: `id`'s state on its way to the unit it links to.
pub fn transfer(id: &str) -> Vec<u8> {
    [b"t", id.as_bytes()].concat()
}

/// `[len: u8][experiment key][partition: u16 BE]`: one ingest partition's
/// share of an experiment's aggregates; an experiment's shares are one
/// range.
pub fn aggregates(experiment: &str, partition: u16) -> Vec<u8> {
    let mut key = prefix(experiment);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// Inverse of [`aggregates`].
pub fn parse_aggregates(key: &[u8]) -> Option<(&str, u16)> {
    let (&len, rest) = key.split_first()?;
    let (exp, partition) = rest.split_at_checked(usize::from(len))?;
    let partition = u16::from_be_bytes(partition.try_into().ok()?);
    Some((std::str::from_utf8(exp).ok()?, partition))
}

/// `[len: u16 BE][unit][event id]`: a client event id, remembered per unit.
/// Every event of a unit goes to the same ingest partition, so the
/// partition that owns the unit alone reads and writes its ids.
pub fn event_id(unit: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + unit.len() + id.len());
    // Unit ids are at most 1,024 bytes (256 characters) by construction.
    key.extend_from_slice(&(unit.len() as u16).to_be_bytes());
    key.extend_from_slice(unit.as_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// `[len: u16 BE][unit][prediction id]`: a model experiment's open
/// prediction, kept per unit like [`event_id`], by the partition that
/// owns the unit.
pub fn prediction(unit: &str, id: &str) -> Vec<u8> {
    event_id(unit, id)
}

/// `[len: u8][experiment key][at_ms: u64 BE]`: a timeline snapshot.
pub fn timeline(experiment: &str, at_ms: i64) -> Vec<u8> {
    let mut key = prefix(experiment);
    key.extend_from_slice(&u64::try_from(at_ms).unwrap_or(0).to_be_bytes());
    key
}

/// `[len: u8][experiment key]`: the prefix of every per-experiment key.
pub fn experiment_prefix(experiment: &ExperimentKey) -> Vec<u8> {
    prefix(experiment.as_str())
}

fn prefix(experiment: &str) -> Vec<u8> {
    let exp = experiment.as_bytes();
    let mut key = Vec::with_capacity(1 + exp.len() + 32);
    // Experiment keys are 1..=64 bytes by construction.
    key.push(exp.len() as u8);
    key.extend_from_slice(exp);
    key
}

/// `[len: u8][experiment key][timestamp_ms: u64 BE][seq: u64 BE]`; events
/// without an experiment have `len = 0`. Negative timestamps sort as 0.
pub fn event(experiment: Option<&ExperimentKey>, timestamp_ms: i64, seq: u64) -> Vec<u8> {
    let mut key = event_prefix(experiment);
    key.extend_from_slice(&clamp_ms(timestamp_ms).to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The first key of `experiment`'s events at or after `timestamp_ms`.
pub fn event_bound(experiment: Option<&ExperimentKey>, timestamp_ms: i64) -> Vec<u8> {
    let mut key = event_prefix(experiment);
    key.extend_from_slice(&clamp_ms(timestamp_ms).to_be_bytes());
    key
}

/// `[len][experiment]` of [`event`], or `[0]` for events without one.
pub fn event_prefix(experiment: Option<&ExperimentKey>) -> Vec<u8> {
    match experiment {
        Some(e) => experiment_prefix(e),
        None => vec![0],
    }
}

/// `[len: u8][scope][level: u8][start_ms: u64 BE][variant]`: one analytics
/// bucket. The scope is an experiment key, `""` for events without one or
/// `"*"` for all events; all variants of one bucket are adjacent, and one
/// level of one scope is a time-ordered range.
pub fn bucket(scope: &str, level: u8, start_ms: i64, variant: &str) -> Vec<u8> {
    let mut key = bucket_bound(scope, level, start_ms);
    key.extend_from_slice(variant.as_bytes());
    key
}

/// The first key of `scope`'s buckets of `level` starting at or after `start_ms`.
pub fn bucket_bound(scope: &str, level: u8, start_ms: i64) -> Vec<u8> {
    let mut key = prefix(scope);
    key.push(level);
    key.extend_from_slice(&clamp_ms(start_ms).to_be_bytes());
    key
}

/// The variant of a [`bucket`] key, given its scope.
pub fn bucket_variant<'k>(key: &'k [u8], scope: &str) -> Option<&'k str> {
    std::str::from_utf8(key.get(1 + scope.len() + 1 + 8..)?).ok()
}

/// `[len: u16 BE][unit][timestamp_ms: u64 BE][seq: u64 BE]`: one event of a
/// unit, so a unit's events are one range scan.
pub fn unit_event(unit: &str, timestamp_ms: i64, seq: u64) -> Vec<u8> {
    let mut key = unit_event_bound(unit, timestamp_ms);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The first [`unit_event`] key of `unit` at or after `timestamp_ms`.
pub fn unit_event_bound(unit: &str, timestamp_ms: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + unit.len() + 16);
    // Unit ids are at most 1,024 bytes (256 characters) by construction.
    key.extend_from_slice(&(unit.len() as u16).to_be_bytes());
    key.extend_from_slice(unit.as_bytes());
    key.extend_from_slice(&clamp_ms(timestamp_ms).to_be_bytes());
    key
}

/// The timestamp of a [`unit_event`] key.
pub fn unit_event_ms(key: &[u8]) -> Option<u64> {
    let (len, rest) = key.split_first_chunk::<2>()?;
    let ts = rest.get(usize::from(u16::from_be_bytes(*len))..)?;
    Some(u64::from_be_bytes(*ts.first_chunk::<8>()?))
}

/// `[len: u8][subscription id][outbox seq: u64 BE]`: a pending webhook
/// message; a subscription's queue is one prefix, oldest first.
pub fn webhook_message(subscription: &str, seq: u64) -> Vec<u8> {
    let mut key = prefix(subscription);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `[len: u8][subscription id][u64::MAX - attempt number: u64 BE]`: newest
/// attempt first.
pub fn webhook_attempt(subscription: &str, number: u64) -> Vec<u8> {
    let mut key = prefix(subscription);
    key.extend_from_slice(&(u64::MAX - number).to_be_bytes());
    key
}

/// The prefix of every key of one subscription.
pub fn subscription_prefix(subscription: &str) -> Vec<u8> {
    prefix(subscription)
}

/// The trailing `u64` of a webhook key.
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(*key.last_chunk::<8>()?))
}

fn clamp_ms(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

/// Inverse of [`unit`].
pub fn parse_unit(key: &[u8]) -> Option<(ExperimentKey, &str)> {
    let (&len, rest) = key.split_first()?;
    let (exp, unit) = rest.split_at_checked(usize::from(len))?;
    let exp = ExperimentKey::try_from(std::str::from_utf8(exp).ok()?).ok()?;
    Some((exp, std::str::from_utf8(unit).ok()?))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key() -> impl Strategy<Value = ExperimentKey> {
        "[a-z0-9_-]{1,64}".prop_map(|s| ExperimentKey::try_from(s).unwrap())
    }

    proptest! {
        #[test]
        fn event_keys_sort_by_experiment_then_time_then_seq(
            a in key(), t1 in 0i64..i64::MAX, t2 in 0i64..i64::MAX, s1: u64, s2: u64
        ) {
            let k1 = event(Some(&a), t1, s1);
            let k2 = event(Some(&a), t2, s2);
            prop_assert_eq!(k1 < k2, (t1, s1) < (t2, s2));
            let lo = event_bound(Some(&a), t1.min(t2));
            let hi = event_bound(Some(&a), t1.max(t2).saturating_add(1));
            prop_assert!(lo <= k1.clone().min(k2.clone()) && k1.max(k2) < hi);
            prop_assert!(!event(None, t1, s1).starts_with(&experiment_prefix(&a)));
        }

        #[test]
        fn bucket_keys_order_by_level_then_time_and_keep_their_variant(
            a in key(), l1 in 0u8..3, l2 in 0u8..3, t1 in 0i64..i64::MAX, t2 in 0i64..i64::MAX,
            v in "[a-z0-9_-]{0,64}"
        ) {
            let k1 = bucket(a.as_str(), l1, t1, &v);
            let k2 = bucket(a.as_str(), l2, t2, "");
            if (l1, t1) != (l2, t2) {
                prop_assert_eq!(k1 < k2, (l1, t1) < (l2, t2));
            }
            prop_assert_eq!(bucket_variant(&k1, a.as_str()), Some(v.as_str()));
            prop_assert!(k1 >= bucket_bound(a.as_str(), l1, t1));
        }

        #[test]
        fn unit_event_keys_keep_a_units_events_together_in_time_order(
            u in "\\PC{1,40}", w in "\\PC{1,40}", t1 in 0i64..i64::MAX, t2 in 0i64..i64::MAX, s: u64
        ) {
            let k1 = unit_event(&u, t1, s);
            let k2 = unit_event(&u, t2, s);
            prop_assert_eq!(k1 < k2, t1 < t2);
            prop_assert_eq!(unit_event_ms(&k1), Some(t1 as u64));
            let lo = unit_event_bound(&u, 0);
            let hi = unit_event_bound(&u, i64::MAX);
            prop_assert!(lo <= k1 && k1 < hi);
            if u != w {
                let other = unit_event(&w, t1, s);
                prop_assert!(!(lo <= other && other < hi));
            }
        }

        #[test]
        fn aggregate_keys_round_trip_and_keep_an_experiments_shares_together(
            a in key(), b in key(), p: u16
        ) {
            let k = aggregates(a.as_str(), p);
            prop_assert_eq!(parse_aggregates(&k), Some((a.as_str(), p)));
            prop_assert!(k.starts_with(&experiment_prefix(&a)));
            if a != b {
                prop_assert!(!k.starts_with(&experiment_prefix(&b)));
            }
        }

        #[test]
        fn unit_keys_round_trip(exp in key(), u in "\\PC{1,40}") {
            let encoded = unit(exp.as_str(), &u);
            let (e, parsed) = parse_unit(&encoded).unwrap();
            prop_assert_eq!(e, exp);
            prop_assert_eq!(parsed, u.as_str());
        }

        #[test]
        fn an_experiments_keys_share_its_prefix_and_no_other(
            a in key(), b in key(), u in "\\PC{0,40}"
        ) {
            let k = unit(a.as_str(), &u);
            prop_assert!(k.starts_with(&experiment_prefix(&a)));
            if a != b {
                prop_assert!(!k.starts_with(&experiment_prefix(&b)));
            }
        }
    }
}
