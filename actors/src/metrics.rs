//! Every metric abacus exports, named `abacus_<subsystem>_<name>_<unit>`
//! and described once at start. Hot paths count in atomics (or per batch)
//! and [`crate::Engine::export_metrics`] publishes those at scrape time,
//! each service its own.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Requests by route pattern, method and status class.
pub const HTTP_REQUESTS: &str = "abacus_http_requests_total";
/// Request duration by route pattern and method.
pub const HTTP_DURATION: &str = "abacus_http_request_duration_seconds";
/// Requests slower than `server.slow_request_ms`, by route pattern.
pub const HTTP_SLOW: &str = "abacus_http_slow_requests_total";
/// Requests refused with 429 by a caller's token bucket, by scope
/// (`ingest`, `admin`).
pub const HTTP_RATE_LIMITED: &str = "abacus_http_rate_limited_total";
/// Requests refused with 429 by a project's quota, by project and quota
/// (`events_per_second`, `assignments_per_second`).
pub const QUOTA_REFUSED: &str = "abacus_quota_refused_total";
/// Events queued for storage.
pub const EVENTS_ACCEPTED: &str = "abacus_events_accepted_total";
/// Events refused, by reason (`mailbox_full`, `invalid`, `store_failed`).
pub const EVENTS_REJECTED: &str = "abacus_events_rejected_total";
/// Events committed to RocksDB.
pub const EVENTS_PERSISTED: &str = "abacus_events_persisted_total";
/// Events dropped as repeats of an `event_id`.
pub const EVENTS_DUPLICATE: &str = "abacus_events_duplicate_total";
/// Envelopes waiting in a mailbox, by mailbox.
pub const MAILBOX_DEPTH: &str = "abacus_ingest_mailbox_depth";
/// Capacity of a mailbox, by mailbox.
pub const MAILBOX_CAPACITY: &str = "abacus_ingest_mailbox_capacity";
/// Events per committed batch.
pub const SINK_BATCH: &str = "abacus_sink_batch_events";
/// Time to commit one batch (WriteBatch incl. aggregates).
pub const SINK_COMMIT: &str = "abacus_sink_commit_duration_seconds";
/// Events answered 202 (fire-and-forget) whose batch the store refused.
pub const EVENTS_LOST: &str = "abacus_events_lost_total";
/// Failed attempts of the ingest writer's store operations (each retry).
pub const INGEST_COMMIT_FAILURES: &str = "abacus_ingest_commit_failures_total";
/// 1 once a commit failed after every retry (until restart), else 0.
pub const INGEST_STORE_FAILED: &str = "abacus_ingest_store_failed";
/// Failed writes or flushes of an extra sink, by sink.
pub const SINK_WRITE_FAILURES: &str = "abacus_sink_write_failures_total";
/// 1 while an extra sink's writes fail (it replays once they work), by sink.
pub const SINK_FAILING: &str = "abacus_sink_failing";
/// Events an extra sink replayed from the store after a crash or an
/// error, by sink.
pub const SINK_REPLAYED: &str = "abacus_sink_replayed_events_total";
/// Committed events an extra sink has not made durable yet, by sink.
pub const SINK_LAG: &str = "abacus_sink_lag_events";
/// Assignments by reason.
pub const ASSIGNMENTS: &str = "abacus_assignments_total";
/// Experiments by status.
pub const EXPERIMENTS: &str = "abacus_experiments";
/// Webhook messages finished, by outcome (`delivered`, `failed`).
pub const WEBHOOK_MESSAGES: &str = "abacus_webhook_messages_total";
/// Webhook delivery attempts, by result (`success`, `failure`).
pub const WEBHOOK_ATTEMPTS: &str = "abacus_webhook_attempts_total";
/// Webhook subscriptions currently disabled.
pub const WEBHOOK_DISABLED: &str = "abacus_webhook_disabled_subscriptions";
/// Size of RocksDB's live SST files, all column families.
pub const ROCKSDB_LIVE_SST: &str = "abacus_rocksdb_live_sst_bytes";
/// Bytes RocksDB estimates compaction still has to rewrite.
pub const ROCKSDB_PENDING_COMPACTION: &str = "abacus_rocksdb_pending_compaction_bytes";
/// 1 while RocksDB delays or stops writes (a write stall), else 0.
pub const ROCKSDB_WRITE_STALL: &str = "abacus_rocksdb_write_stall";
/// Clients of the live stream.
pub const STREAM_CLIENTS: &str = "abacus_stream_clients";
/// Live-stream clients dropped, by reason (`slow_consumer`).
pub const STREAM_DROPPED: &str = "abacus_stream_dropped_total";
/// Resident memory of the process.
pub const PROCESS_RSS: &str = "abacus_process_resident_memory_bytes";
/// Derived records that could not be decoded, by family: rebuilt from
/// events at start (`aggregates`) or read as empty (`units`).
pub const STORE_RECORDS_REBUILT: &str = "abacus_store_records_rebuilt_total";
/// Undecodable values the analytics merge operator skipped.
pub const STORE_MERGE_SKIPPED: &str = "abacus_store_merge_operands_skipped_total";
/// Live-stream stats messages cut to `limits.max_stats_message_bytes`.
pub const STREAM_STATS_TRUNCATED: &str = "abacus_stream_stats_truncated_total";
/// Cluster mode: ingest partitions this node owns.
pub const CLUSTER_PARTITIONS_OWNED: &str = "abacus_cluster_partitions_owned";
/// Cluster mode: how long this node's last takeover of a partition took,
/// from taking its lease to folding everything its log held then.
pub const CLUSTER_TAKEOVER: &str = "abacus_cluster_last_takeover_seconds";
/// Cluster mode: 1 while this node runs the singleton task `task`.
pub const CLUSTER_SINGLETON_HELD: &str = "abacus_cluster_singleton_held";
/// Cluster mode: event log messages this node trimmed below its
/// partitions' snapshots.
pub const CLUSTER_LOG_TRIMMED: &str = "abacus_cluster_log_trimmed_total";
/// Cluster mode: first exposures asked of another node, by outcome.
pub const CLUSTER_LOOKUPS: &str = "abacus_cluster_lookups_total";

/// Every name above.
pub const ALL: &[&str] = &[
    HTTP_REQUESTS,
    HTTP_DURATION,
    HTTP_SLOW,
    HTTP_RATE_LIMITED,
    QUOTA_REFUSED,
    EVENTS_ACCEPTED,
    EVENTS_REJECTED,
    EVENTS_PERSISTED,
    EVENTS_DUPLICATE,
    MAILBOX_DEPTH,
    MAILBOX_CAPACITY,
    SINK_BATCH,
    SINK_COMMIT,
    EVENTS_LOST,
    INGEST_COMMIT_FAILURES,
    INGEST_STORE_FAILED,
    SINK_WRITE_FAILURES,
    SINK_FAILING,
    SINK_REPLAYED,
    SINK_LAG,
    ASSIGNMENTS,
    EXPERIMENTS,
    WEBHOOK_MESSAGES,
    WEBHOOK_ATTEMPTS,
    WEBHOOK_DISABLED,
    ROCKSDB_LIVE_SST,
    ROCKSDB_PENDING_COMPACTION,
    ROCKSDB_WRITE_STALL,
    STREAM_CLIENTS,
    STREAM_DROPPED,
    PROCESS_RSS,
    STORE_RECORDS_REBUILT,
    STORE_MERGE_SKIPPED,
    STREAM_STATS_TRUNCATED,
    CLUSTER_PARTITIONS_OWNED,
    CLUSTER_TAKEOVER,
    CLUSTER_SINGLETON_HELD,
    CLUSTER_LOOKUPS,
    CLUSTER_LOG_TRIMMED,
];

/// Histogram buckets of request and commit durations, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Histogram buckets of batch sizes, in events.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 4096.0, 8192.0,
];

/// Describes every metric to the installed recorder.
pub fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route pattern, method and status class."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request duration by route pattern and method."
    );
    describe_counter!(
        HTTP_SLOW,
        "HTTP requests slower than server.slow_request_ms, by route pattern."
    );
    describe_counter!(
        HTTP_RATE_LIMITED,
        "HTTP requests refused with 429 by the caller's token bucket, by scope (ingest, admin)."
    );
    describe_counter!(
        QUOTA_REFUSED,
        "Requests refused with 429 by a project's quota, by project and quota \
         (events_per_second, assignments_per_second)."
    );
    describe_counter!(EVENTS_ACCEPTED, "Events accepted into the ingest mailbox.");
    describe_counter!(
        EVENTS_REJECTED,
        "Events refused, by reason (mailbox_full, invalid, store_failed)."
    );
    describe_counter!(EVENTS_PERSISTED, "Events committed to RocksDB.");
    describe_counter!(
        EVENTS_DUPLICATE,
        "Events dropped as repeats of an event_id within the window."
    );
    describe_gauge!(MAILBOX_DEPTH, "Envelopes waiting in a mailbox.");
    describe_gauge!(
        MAILBOX_CAPACITY,
        "Envelopes a mailbox holds before refusing with 503."
    );
    describe_histogram!(SINK_BATCH, "Events per committed batch.");
    describe_gauge!(
        CLUSTER_PARTITIONS_OWNED,
        "Cluster mode: ingest partitions this node owns."
    );
    describe_gauge!(
        CLUSTER_TAKEOVER,
        Unit::Seconds,
        "Cluster mode: the last partition takeover, from its lease to folding what its log held."
    );
    describe_gauge!(
        CLUSTER_SINGLETON_HELD,
        "Cluster mode: 1 while this node runs the singleton task (label task)."
    );
    describe_counter!(
        CLUSTER_LOG_TRIMMED,
        "Cluster mode: event log messages this node trimmed below its partitions' snapshots."
    );
    describe_counter!(
        CLUSTER_LOOKUPS,
        "Cluster mode: first exposures asked of a partition's owner (label outcome: answered, or failed and answered from the hash)."
    );
    describe_histogram!(
        SINK_COMMIT,
        Unit::Seconds,
        "Time to commit one batch with its aggregates."
    );
    describe_counter!(
        EVENTS_LOST,
        "Events answered 202 without ack=persisted whose batch the store refused after every retry."
    );
    describe_counter!(
        INGEST_COMMIT_FAILURES,
        "Failed attempts of the ingest writer's store operations (commits, event-id reads); each retry counts."
    );
    describe_gauge!(
        INGEST_STORE_FAILED,
        "1 once a commit failed after ingest.commit_retries retries: events are refused until restart."
    );
    describe_counter!(
        SINK_WRITE_FAILURES,
        "Failed writes or flushes of an extra sink, by sink."
    );
    describe_gauge!(
        SINK_FAILING,
        "1 while an extra sink's writes fail; it replays from its cursor once they work."
    );
    describe_counter!(
        SINK_REPLAYED,
        "Events an extra sink replayed from RocksDB after a crash or an error, by sink."
    );
    describe_gauge!(
        SINK_LAG,
        "Committed events an extra sink has not made durable yet, by sink."
    );
    describe_counter!(ASSIGNMENTS, "Assignments by reason.");
    describe_gauge!(EXPERIMENTS, "Experiments by status.");
    describe_counter!(WEBHOOK_MESSAGES, "Webhook messages finished, by outcome.");
    describe_counter!(WEBHOOK_ATTEMPTS, "Webhook delivery attempts, by result.");
    describe_gauge!(
        WEBHOOK_DISABLED,
        "Webhook subscriptions currently disabled."
    );
    describe_gauge!(
        ROCKSDB_LIVE_SST,
        Unit::Bytes,
        "Size of RocksDB's live SST files."
    );
    describe_gauge!(
        ROCKSDB_PENDING_COMPACTION,
        Unit::Bytes,
        "Bytes RocksDB estimates compaction has to rewrite."
    );
    describe_gauge!(
        ROCKSDB_WRITE_STALL,
        "1 while RocksDB delays or stops writes."
    );
    describe_gauge!(
        STREAM_CLIENTS,
        "Clients of the live stream (SSE and WebSocket)."
    );
    describe_counter!(STREAM_DROPPED, "Live-stream clients dropped, by reason.");
    describe_gauge!(
        PROCESS_RSS,
        Unit::Bytes,
        "Resident memory of the abacus process."
    );
    describe_counter!(
        STORE_RECORDS_REBUILT,
        "Derived records undecodable, by family: rebuilt from events at start (aggregates) or read as empty (units)."
    );
    describe_counter!(
        STORE_MERGE_SKIPPED,
        "Undecodable analytics bucket values skipped by the merge operator."
    );
    describe_counter!(
        STREAM_STATS_TRUNCATED,
        "Live stats messages cut down to limits.max_stats_message_bytes."
    );
}
/// Publishes RocksDB's health: live SST files, bytes pending compaction,
/// whether writes are stalled.
pub(crate) fn export_store((live, pending, stalled): (u64, u64, bool)) {
    metrics::gauge!(ROCKSDB_LIVE_SST).set(live as f64);
    metrics::gauge!(ROCKSDB_PENDING_COMPACTION).set(pending as f64);
    metrics::gauge!(ROCKSDB_WRITE_STALL).set(f64::from(u8::from(stalled)));
}

/// Publishes the process's resident memory.
pub(crate) fn export_process() {
    if let Some(rss) = resident_bytes() {
        metrics::gauge!(PROCESS_RSS).set(rss as f64);
    }
}

/// Resident memory from `/proc/self/status` (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
