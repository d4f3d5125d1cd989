//! Quotas: what one project may take of a shared server. Rates (events and
//! assignment requests a second) are refused with 429 and `Retry-After`
//! past the limit; counts (experiments that are not archived, webhook
//! subscriptions) with 422. The server's configuration sets them for every
//! project; a project may override each one.

use serde::{Deserialize, Serialize};

/// Largest rate a quota may name, a second.
pub const MAX_QUOTA_RATE: u32 = 10_000_000;
/// Largest count a quota may name.
pub const MAX_QUOTA_COUNT: u32 = 1_000_000;

/// A project's quotas in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaLimits {
    /// Events accepted a second (a batch counts each event); 0: no limit.
    pub events_per_second: u32,
    /// Assignment requests a second (`/v1/assignments`, one unit and one
    /// or many experiments, and OpenFeature evaluations); 0: no limit.
    pub assignments_per_second: u32,
    /// Most experiments that are not archived.
    pub max_experiments: u32,
    /// Most webhook subscriptions.
    pub max_webhooks: u32,
}

/// A project's own quotas: each one set replaces the server's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverrides {
    /// Events a second; 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 10_000_000)]
    pub events_per_second: Option<u32>,
    /// Assignment requests a second; 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 10_000_000)]
    pub assignments_per_second: Option<u32>,
    /// Most experiments that are not archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_experiments: Option<u32>,
    /// Most webhook subscriptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_webhooks: Option<u32>,
}

impl QuotaOverrides {
    /// The quotas in force: these overrides over the server's `defaults`.
    pub fn over(&self, defaults: QuotaLimits) -> QuotaLimits {
        QuotaLimits {
            events_per_second: self.events_per_second.unwrap_or(defaults.events_per_second),
            assignments_per_second: self
                .assignments_per_second
                .unwrap_or(defaults.assignments_per_second),
            max_experiments: self.max_experiments.unwrap_or(defaults.max_experiments),
            max_webhooks: self.max_webhooks.unwrap_or(defaults.max_webhooks),
        }
    }

    /// Each override within its bounds, or the field that is not.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let rates = [
            ("quotas.events_per_second", self.events_per_second),
            ("quotas.assignments_per_second", self.assignments_per_second),
        ];
        for (field, rate) in rates {
            if rate.is_some_and(|r| r > MAX_QUOTA_RATE) {
                return Err((field, format!("0-{MAX_QUOTA_RATE} (0: no limit)")));
            }
        }
        let counts = [
            ("quotas.max_experiments", self.max_experiments),
            ("quotas.max_webhooks", self.max_webhooks),
        ];
        for (field, count) in counts {
            if count.is_some_and(|c| !(1..=MAX_QUOTA_COUNT).contains(&c)) {
                return Err((field, format!("1-{MAX_QUOTA_COUNT}")));
            }
        }
        Ok(())
    }

    /// These overrides with `patch` applied: a value sets, `null` clears
    /// (back to the server's), absent keeps.
    pub fn patched(&self, patch: QuotaPatch) -> Self {
        let pick = |now: Option<u32>, change: Option<Option<u32>>| change.unwrap_or(now);
        Self {
            events_per_second: pick(self.events_per_second, patch.events_per_second),
            assignments_per_second: pick(self.assignments_per_second, patch.assignments_per_second),
            max_experiments: pick(self.max_experiments, patch.max_experiments),
            max_webhooks: pick(self.max_webhooks, patch.max_webhooks),
        }
    }
}

/// A change to a project's quotas: a value sets one, `null` gives it back
/// to the server's configuration, absent leaves it.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct QuotaPatch {
    /// Events a second; 0: no limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, maximum = 10_000_000)]
    pub events_per_second: Option<Option<u32>>,
    /// Assignment requests a second; 0: no limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, maximum = 10_000_000)]
    pub assignments_per_second: Option<Option<u32>>,
    /// Most experiments that are not archived.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1_000_000)]
    pub max_experiments: Option<Option<u32>>,
    /// Most webhook subscriptions.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1_000_000)]
    pub max_webhooks: Option<Option<u32>>,
}

/// A field that is present, `null` or not.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

crate::objects_only!(QuotaPatch);

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: QuotaLimits = QuotaLimits {
        events_per_second: 0,
        assignments_per_second: 0,
        max_experiments: 100,
        max_webhooks: 10,
    };

    #[test]
    fn overrides_replace_the_servers_quotas_one_by_one_and_null_gives_them_back() {
        let set: QuotaPatch = serde_json::from_value(
            serde_json::json!({"events_per_second": 500, "max_webhooks": 2}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let own = QuotaOverrides::default().patched(set);
        assert_eq!(
            own.over(DEFAULTS),
            QuotaLimits {
                events_per_second: 500,
                max_webhooks: 2,
                ..DEFAULTS
            }
        );
        let cleared: QuotaPatch = serde_json::from_value(serde_json::json!({"max_webhooks": null}))
            .unwrap_or_else(|e| panic!("{e}"));
        let own = own.patched(cleared);
        assert_eq!(own.max_webhooks, None);
        assert_eq!(own.events_per_second, Some(500), "absent keeps");
        assert!(serde_json::from_value::<QuotaPatch>(serde_json::json!({"rps": 1})).is_err());
    }

    #[test]
    fn overrides_are_bounded() {
        let zero_experiments = QuotaOverrides {
            max_experiments: Some(0),
            ..QuotaOverrides::default()
        };
        assert_eq!(
            zero_experiments.check().map_err(|(field, _)| field),
            Err("quotas.max_experiments")
        );
        let too_fast = QuotaOverrides {
            events_per_second: Some(MAX_QUOTA_RATE + 1),
            ..QuotaOverrides::default()
        };
        assert!(too_fast.check().is_err());
        let unlimited = QuotaOverrides {
            events_per_second: Some(0),
            ..QuotaOverrides::default()
        };
        assert_eq!(unlimited.check(), Ok(()));
    }
}
