//! Key codecs. Variable-length parts are length-prefixed or last, so that
//! all keys of one experiment are one contiguous, prefix-scannable range.

use crate::domain::ExperimentKey;

/// `[len: u8][experiment key][unit id]` — experiment keys are at most 64
/// bytes, so one length byte suffices, and every unit of an experiment
/// shares the prefix [`experiment_prefix`].
pub fn sticky(experiment: &ExperimentKey, unit: &str) -> Vec<u8> {
    let mut key = experiment_prefix(experiment);
    key.extend_from_slice(unit.as_bytes());
    key
}

/// `[len: u8][experiment key]`: the prefix of every per-experiment key.
pub fn experiment_prefix(experiment: &ExperimentKey) -> Vec<u8> {
    let exp = experiment.as_str().as_bytes();
    let mut key = Vec::with_capacity(1 + exp.len() + 32);
    // Experiment keys are 1..=64 bytes by construction.
    key.push(exp.len() as u8);
    key.extend_from_slice(exp);
    key
}

/// Inverse of [`sticky`].
pub fn parse_sticky(key: &[u8]) -> Option<(ExperimentKey, &str)> {
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
        fn sticky_keys_round_trip(exp in key(), unit in "\\PC{1,40}") {
            let encoded = sticky(&exp, &unit);
            let (e, u) = parse_sticky(&encoded).unwrap();
            prop_assert_eq!(e, exp);
            prop_assert_eq!(u, unit.as_str());
        }

        #[test]
        fn an_experiments_keys_share_its_prefix_and_no_other(
            a in key(), b in key(), unit in "\\PC{0,40}"
        ) {
            let k = sticky(&a, &unit);
            prop_assert!(k.starts_with(&experiment_prefix(&a)));
            if a != b {
                prop_assert!(!k.starts_with(&experiment_prefix(&b)));
            }
        }
    }
}
