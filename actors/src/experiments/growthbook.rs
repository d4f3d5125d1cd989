//! GrowthBook's bucketing hash, for experiments with
//! `"bucketing": {"scheme": "growthbook"}`: what its SDKs compute, so a
//! running GrowthBook experiment recreated in abacus (same seed as salt,
//! same weights, coverage and namespace) keeps every user's variant.
//!
//! ```text
//! fnv(s)     = FNV-1a 32 over the UTF-16 code units of s (JavaScript's charCodeAt)
//! version 1: fnv(unit + seed) % 1000 / 1000
//! version 2: fnv(decimal(fnv(seed + unit))) % 10000 / 10000
//! namespace: version 1 with the seed "__" + namespace
//! ```
//!
//! Checked against the official Python SDK (`tests/growthbook/`).

const OFFSET: u32 = 0x811c_9dc5;
const PRIME: u32 = 0x0100_0193;

/// Folds `s`'s UTF-16 code units into the FNV-1a state `hash`.
fn fold(hash: u32, s: &str) -> u32 {
    s.encode_utf16()
        .fold(hash, |h, unit| (h ^ u32::from(unit)).wrapping_mul(PRIME))
}

/// GrowthBook's `hash(seed, value, version)` for versions 1 and 2; any
/// other version hashes as 2 (the experiment refuses other versions).
pub fn hash(seed: &str, value: &str, version: u8) -> f64 {
    if version == 1 {
        let n = fold(fold(OFFSET, value), seed);
        f64::from(n % 1000) / 1000.0
    } else {
        let inner = fold(fold(OFFSET, seed), value);
        let mut digits = [0u8; 10];
        let n = fold(OFFSET, decimal(inner, &mut digits));
        f64::from(n % 10_000) / 10_000.0
    }
}

/// `n` in decimal, written into `digits` (a `u32` has at most ten).
fn decimal(mut n: u32, digits: &mut [u8; 10]) -> &str {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&digits[start..]).unwrap_or_default()
}

/// GrowthBook's namespace position of `unit` in the namespace `name`.
pub fn namespace(name: &str, unit: &str) -> f64 {
    let n = fold(fold(fold(OFFSET, unit), "__"), name);
    f64::from(n % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a's own test vectors, and GrowthBook's published `hash` cases
    /// (`packages/sdk-js/test/cases.json`, `[seed, value, version,
    /// expected]`), which its Python SDK also gives.
    #[test]
    fn fnv_and_growthbooks_published_hash_cases() {
        assert_eq!(fold(OFFSET, ""), 0x811c_9dc5);
        assert_eq!(fold(OFFSET, "a"), 0xe40c_292c);
        assert_eq!(fold(OFFSET, "foobar"), 0xbf9c_f968);
        for (seed, value, version, expected) in [
            ("", "a", 1, 0.22),
            ("", "b", 1, 0.077),
            ("b", "a", 1, 0.946),
            ("ef", "d", 1, 0.652),
            ("asdf", "8952klfjas09ujk", 1, 0.549),
            ("", "123", 1, 0.011),
            ("", "___)((*\":&", 1, 0.563),
            ("seed", "a", 2, 0.0505),
            ("seed", "b", 2, 0.2696),
            ("foo", "ab", 2, 0.2575),
            ("foo", "def", 2, 0.2019),
            ("89123klj", "8952klfjas09ujkasdf", 2, 0.124),
            ("90850943850283058242805", "123", 2, 0.7516),
            ("()**(%$##$%#$#", "___)((*\":&", 2, 0.0128),
        ] {
            assert_eq!(
                hash(seed, value, version),
                expected,
                "{seed:?} {value:?} v{version}"
            );
        }
    }

    #[test]
    fn decimal_is_the_shortest_form() {
        let mut digits = [0u8; 10];
        assert_eq!(decimal(0, &mut digits), "0");
        assert_eq!(decimal(7, &mut digits), "7");
        assert_eq!(decimal(u32::MAX, &mut digits), "4294967295");
    }

    #[test]
    fn a_namespace_is_version_1_with_a_prefixed_seed() {
        for unit in ["a", "user-1", "ünïcödé", "🙂"] {
            assert_eq!(namespace("ns", unit), hash("__ns", unit, 1));
        }
    }

    #[test]
    fn characters_outside_the_basic_plane_hash_as_two_code_units() {
        // "🙂" is U+1F642: the surrogates D83D DE42, as JavaScript sees it.
        let by_units = [0xd83d_u32, 0xde42]
            .iter()
            .fold(OFFSET, |h, &u| (h ^ u).wrapping_mul(PRIME));
        assert_eq!(fold(OFFSET, "🙂"), by_units);
        assert_eq!(by_units, 0x8d31_631e, "the Python SDK's fnv1a32");
    }
}
