//! The configuration, translated into what the engine needs to start. The
//! engine does not depend on the configuration crate: this is the one
//! place that knows both.

use std::time::Duration;

use abacus_actors::cluster::ClusterSettings;
use abacus_actors::domain::{EventLimits, QuotaLimits, DEFAULT_PROJECT};
use abacus_actors::ingest::retention::Retention;
use abacus_actors::ingest::IngestLimits;
use abacus_actors::projects::ProjectLimits;
use abacus_actors::webhooks;
use abacus_actors::EngineConfig;
use abacus_config::{Config, SinkKind};

/// The engine's settings from the configuration.
pub fn engine(config: &Config) -> EngineConfig {
    EngineConfig {
        project: DEFAULT_PROJECT.into(),
        quotas: QuotaLimits {
            events_per_second: config.quotas.events_per_second,
            assignments_per_second: config.quotas.assignments_per_second,
            max_experiments: config.quotas.max_experiments,
            max_webhooks: config.quotas.max_webhooks,
        },
        storage_path: config.storage.path.clone(),
        cache_bytes: config.storage.cache_mb.saturating_mul(1 << 20),
        ingest: ingest(config),
        jsonl_path: config
            .ingest
            .sinks
            .contains(&SinkKind::Jsonl)
            .then(|| config.ingest.jsonl_path.clone()),
        retention: (config.storage.retention_days.get() > Duration::ZERO).then(|| Retention {
            keep: config.storage.retention_days.get(),
            max_event_age: config.ingest.max_event_age_s.get(),
            every: config.storage.retention_sweep_interval_s.get(),
        }),
        events: event_limits(config),
        cluster: config.cluster.enabled.then(|| ClusterSettings {
            nats_urls: config.cluster.nats_urls.clone(),
            node_id: config.cluster.node_id.clone(),
            replicas: config.cluster.replicas,
            connect_timeout: config.cluster.connect_timeout_ms.get(),
            lease_ttl: config.cluster.lease_ttl_ms.get(),
            max_inflight_publishes: config.cluster.max_inflight_publishes,
            log_max_bytes: config.cluster.log_max_mb.saturating_mul(1 << 20),
            snapshot_interval: config.cluster.snapshot_interval_s.get(),
            lookup_timeout: config.cluster.lookup_timeout_ms.get(),
        }),
        max_assignment_experiments: config.limits.max_assignment_experiments,
        max_stats_message_bytes: config.limits.max_stats_message_bytes,
        max_export_page_bytes: config.limits.max_export_page_bytes,
        max_links_per_unit: config.limits.max_links_per_unit,
        max_keys: config.auth.max_keys,
        audit_retention: config.audit.retention_days.get(),
        monitor_interval: config.results.check_interval_ms.get(),
        timeline_interval: config.results.timeline_interval_s.get(),
        webhooks: webhooks_settings(config),
    }
}

/// How many further projects there may be, and their stores' caches.
pub fn projects(config: &Config) -> ProjectLimits {
    ProjectLimits {
        max_projects: config.projects.max_projects,
        cache_bytes: config.projects.cache_mb.saturating_mul(1 << 20),
    }
}

/// The event pipeline's mailbox, batching and de-duplication.
fn ingest(config: &Config) -> IngestLimits {
    let partitions = match config.ingest.partitions {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    IngestLimits {
        // At most 64, by the configuration's bounds.
        partitions: u16::try_from(partitions.min(64)).unwrap_or(1),
        mailbox_capacity: config.ingest.mailbox_capacity,
        mailbox_events: config.ingest.mailbox_events,
        enqueue_wait: config.ingest.enqueue_wait_ms.get(),
        flush_interval: config.ingest.flush_interval_ms.get(),
        flush_max_events: config.ingest.flush_max_events,
        dedup_window: config.ingest.dedup_window_days.get(),
        max_measures: config.limits.max_measures,
        max_covariate_events: config.limits.max_covariate_events,
        max_quantile_bins: config.limits.max_quantile_bins,
        commit_retries: config.ingest.commit_retries,
        commit_retry: config.ingest.commit_retry_ms.get(),
    }
}

/// What one event may carry and when it may have happened.
fn event_limits(config: &Config) -> EventLimits {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    EventLimits {
        max_abs_value: config.limits.max_abs_value,
        max_duration_ms: config.limits.max_duration_ms,
        max_rank: u64::from(config.limits.max_rank),
        max_property_bytes: config.limits.max_property_bytes,
        max_age_ms: ms(config.ingest.max_event_age_s.get()),
        max_skew_ms: ms(config.ingest.max_future_skew_s.get()),
    }
}

/// Webhook delivery policy.
fn webhooks_settings(config: &Config) -> webhooks::DeliveryPolicy {
    webhooks::DeliveryPolicy {
        allow_private: config.webhooks.allow_private,
        timeout: config.webhooks.timeout_ms.get(),
        retry_schedule: config
            .webhooks
            .retry_schedule_ms
            .iter()
            .map(|ms| ms.get())
            .collect(),
        jitter: config.webhooks.jitter,
        disable_after: config.webhooks.disable_after,
        max_retry_after: config.webhooks.max_retry_after_ms.get(),
    }
}
