//! Column families. Names on disk never change.

/// A RocksDB column family, named for what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// `schema_version` → `[u8]`: layout version of the whole database.
    /// `next_event_seq` → `[u64 BE]`: the `seq` the next committed event
    /// gets, written with every event batch.
    /// `sink_cursor/{sink name}` → `[v1][seq: u64 BE]`: the last event an
    /// extra sink (e.g. `jsonl`) wrote and made durable; moved only after
    /// its output is fsynced, so after a crash or a write error the sink
    /// replays every event with a larger `seq` from [`Cf::Events`] (at
    /// least once).
    Meta,
    /// experiment key (UTF-8) → `[v1][JSON ExperimentRecord]`.
    Experiments,
    /// [`keys::unit`](super::keys::unit) → `[v1][first_exposed_ms: i64 BE][variant key UTF-8]`.
    /// A unit's first exposure; later assignments return the same variant.
    /// Written as merges that keep the first value (see
    /// [`units`](super::units)), so the writer never reads before it writes.
    /// Read by point lookups through the bloom filter and block cache,
    /// never loaded whole.
    Sticky,
    /// [`keys::event`](super::keys::event) → `[v2]` and the compact binary
    /// encoding of [`event_codec`](super::event_codec) (values written by
    /// layout 1 are `[v1][JSON EventRecord]` and still read). Every stored
    /// event, ordered by experiment, then time, then commit order, so "the
    /// events of X between t1 and t2" is one range scan. Events without an
    /// experiment share the empty-experiment prefix `[0]`.
    Events,
    /// [`keys::event_id`](super::keys::event_id) (unit and client event id)
    /// → `[committed_ms: u64 BE]`: when the batch
    /// holding the id was committed (the store's clock, not the event's
    /// timestamp). Ids seen within the de-duplication window; older entries
    /// are dropped by a compaction filter and ignored on read.
    EventIds,
    /// [`keys::aggregates`](super::keys::aggregates) (experiment and ingest
    /// partition) → `[v1][JSON AggregatesRecord]`: one partition's share of
    /// an experiment's aggregates, written with the batch of events that
    /// changed it. The totals are the sum of the shares.
    Aggregates,
    /// Legacy (layout 1): [`keys::unit`](super::keys::unit) → one unit's
    /// exposures to one experiment. Moved into [`Cf::Units`] the first time
    /// a newer abacus opens the store, and empty from then on.
    UnitExposures,
    /// sequence number (u64 BE) → `[v1][JSON DomainEvent]`. Every domain
    /// event: experiment created, changed and lifecycle, significance, SRM,
    /// guardrail stops, alerts raised and resolved, webhook tests. Each is
    /// written in the same WriteBatch as the change that caused it; the
    /// webhook dispatcher and the live stream read from here.
    Outbox,
    /// [`keys::bucket`](super::keys::bucket) → `[v1][JSON Bucket]`.
    /// Per-minute, -hour and -day counts and DDSketches for the analytics
    /// endpoints; written as RocksDB merges, combined by a merge operator.
    Analytics,
    /// [`keys::unit_event`](super::keys::unit_event) → the event's key in
    /// [`Cf::Events`]. A unit's events in time order; dropped at compaction
    /// once older than the retention.
    UnitEvents,
    /// subscription id (UTF-8) → `[v1][JSON Webhook]` (with its secret
    /// and delivery counters).
    Webhooks,
    /// [`keys::webhook_message`](super::keys::webhook_message) →
    /// `[v1][JSON WebhookMessage]`. Each subscription's pending messages, in
    /// outbox order.
    WebhookQueue,
    /// [`keys::webhook_attempt`](super::keys::webhook_attempt) →
    /// `[v1][JSON DeliveryAttemptRecord]`. Every delivery attempt, newest first.
    WebhookAttempts,
    /// rule id (UTF-8) → `[v1][JSON AlertRuleRecord]`.
    AlertRules,
    /// alert id (UTF-8, `alert_` + UUIDv7, so in time order) →
    /// `[v1][JSON AlertRecord]`. Written with its `alert.*` outbox events.
    Alerts,
    /// [`keys::timeline`](super::keys::timeline) → `[v1][JSON TimelineSnapshot]`.
    /// Cumulative per-variant figures of running experiments, every
    /// `results.timeline_interval_s` when they changed.
    Timeline,
    /// [`keys::unit_state`](super::keys::unit_state) → `[v1]` then per
    /// exposure `[experiment len: u8][experiment][variant len: u8][variant]
    /// [exposed_ms: i64 BE][measures: u16 BE]` and per measure
    /// `[key len: u8][key][events: u64 BE][sum: f64 BE]`. Everything the
    /// aggregator keeps about one unit across experiments (its exposures
    /// and running per-measure sums, which sums of squares need), read and
    /// rewritten by the ingest writer for the units of each batch.
    Units,
    /// key id (UTF-8) → `[v1][JSON ApiKey]`: API keys issued through the
    /// API, by the SHA-256 digest of their secret (never the secret).
    ApiKeys,
    /// audit entry id (`audit_` + UUIDv7 hex, so in time order) →
    /// `[v1][JSON AuditEntry]`: every change made through the API, written
    /// with the change and its `audit.recorded` outbox event; dropped at
    /// compaction once older than `audit.retention_days`.
    Audit,
    /// project key (UTF-8) → `[v1][JSON Project]`: the projects, in the
    /// default project's store only (each project has a store of its own).
    Projects,
    /// [`keys::prediction`](super::keys::prediction) (unit and
    /// `prediction_id`) → `[expires_ms: u64 BE]` and the prediction event
    /// in the binary encoding of [`event_codec`](super::event_codec): a
    /// model experiment's open predictions, each until an outcome joins
    /// it (then deleted) or its join window ends (then dropped by a
    /// compaction filter a day later, and ignored before). Read by point
    /// lookups for the outcomes of each batch.
    Predictions,
    /// Identity stitching (see [`aliases`](super::aliases)):
    /// [`keys::alias`](super::keys::alias) (`a` and an id) → `[v1]` and the
    /// unit it links to; [`keys::linked`](super::keys::linked) (`r`, the
    /// unit, the id) → `[v1][linked_ms: i64 BE]`, the ids linked to a
    /// unit; [`keys::transfer`](super::keys::transfer) (`t` and an id) →
    /// `[v1][unit len: u16 BE][unit]` and the id's state in the
    /// [`Cf::Units`] encoding: a link whose state has left its partition
    /// and not yet reached the unit's, deleted when it has.
    Aliases,
}

impl Cf {
    /// Every family, opened at start.
    pub const ALL: [Cf; 22] = [
        Cf::Meta,
        Cf::Experiments,
        Cf::Sticky,
        Cf::Events,
        Cf::EventIds,
        Cf::Aggregates,
        Cf::UnitExposures,
        Cf::Outbox,
        Cf::Analytics,
        Cf::UnitEvents,
        Cf::Webhooks,
        Cf::WebhookQueue,
        Cf::WebhookAttempts,
        Cf::AlertRules,
        Cf::Alerts,
        Cf::Timeline,
        Cf::Units,
        Cf::ApiKeys,
        Cf::Audit,
        Cf::Projects,
        Cf::Predictions,
        Cf::Aliases,
    ];

    /// The family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Experiments => "experiments",
            Cf::Sticky => "sticky_assignments",
            Cf::Events => "events",
            Cf::EventIds => "event_ids",
            Cf::Aggregates => "aggregates",
            Cf::UnitExposures => "unit_exposures",
            Cf::Outbox => "outbox",
            Cf::Analytics => "analytics",
            Cf::UnitEvents => "unit_events",
            Cf::Webhooks => "webhooks",
            Cf::WebhookQueue => "webhook_queue",
            Cf::WebhookAttempts => "webhook_attempts",
            Cf::AlertRules => "alert_rules",
            Cf::Alerts => "alerts",
            Cf::Timeline => "timeline",
            Cf::Units => "units",
            Cf::Projects => "projects",
            Cf::Predictions => "predictions",
            Cf::Aliases => "aliases",
            Cf::ApiKeys => "api_keys",
            Cf::Audit => "audit",
        }
    }
}
