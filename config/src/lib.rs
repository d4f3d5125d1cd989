//! Layered configuration for abacus.
//!
//! The embedded, commented `config/default.toml` is the base layer; an
//! optional file given with `--config` overrides it, and `ABACUS_*`
//! environment variables (`__` between levels, e.g. `ABACUS_SERVER__BIND`)
//! override both. Every struct denies unknown keys so a typo is an error at
//! start rather than a silently ignored setting, and loading ends in
//! [`Config::validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The compiled-in default configuration, verbatim.
pub const DEFAULT_TOML: &str = include_str!("../default.toml");

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "ABACUS_";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file named with `--config` does not exist or cannot be read.
    #[error("config file {path}: {source}")]
    File {
        /// The path that was given.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// A layer could not be parsed or has a key of the wrong type or name.
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
    /// Every layer parsed, but a value is out of range.
    #[error("invalid config: {key}: {reason}")]
    Invalid {
        /// Dotted key, e.g. `server.bind`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result alias for configuration loading.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The whole configuration of one abacus process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Where and how data is stored.
    pub storage: StorageConfig,
    /// Mailboxes and batching between handlers and writers.
    pub ingest: IngestConfig,
    /// Results monitoring.
    pub results: ResultsConfig,
    /// Webhook delivery.
    pub webhooks: WebhooksConfig,
    /// Rate limits and bounds on what a client can make abacus hold.
    pub limits: LimitsConfig,
    /// Bearer keys.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
    /// Running as one of several nodes on NATS JetStream (off by default).
    pub cluster: ClusterConfig,
    /// The OpenFeature remote evaluation routes.
    pub ofrep: OfrepConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// Projects beside `default`.
    pub projects: ProjectsConfig,
    /// Quotas of every project.
    pub quotas: QuotasConfig,
}

/// `[quotas]`: what each project may take of the server, unless the
/// project overrides it (`PATCH /v1/projects/{key}`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasConfig {
    /// Events a project may send a second; 0: no limit.
    pub events_per_second: u32,
    /// Assignment requests a project may make a second; 0: no limit.
    pub assignments_per_second: u32,
    /// Most experiments a project holds that are not archived.
    pub max_experiments: u32,
    /// Most webhook subscriptions a project holds.
    pub max_webhooks: u32,
}

/// `[projects]`: the namespaces teams share a server in. Each project
/// beyond `default` has a store of its own, with its own block cache.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectsConfig {
    /// Most projects, `default` included.
    pub max_projects: usize,
    /// Each further project's block cache, in MiB (the default project's
    /// is `storage.cache_mb`).
    pub cache_mb: usize,
}

/// `[audit]`: the log of changes made through the API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Entries older than this are dropped (at compaction).
    pub retention_days: PositiveDays,
}

/// `[ofrep]`: OpenFeature's remote evaluation protocol.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OfrepConfig {
    /// Evaluations log exposures and make assignments sticky, as
    /// assignments with `log_exposure` do.
    pub log_exposure: bool,
}

/// `[cluster]`: several nodes sharing their truth through NATS JetStream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster mode on; the single node with its embedded store otherwise.
    pub enabled: bool,
    /// NATS servers to connect to (any of them; the client finds the rest).
    pub nats_urls: Vec<String>,
    /// This node's name, unique in the cluster (logs, leases).
    pub node_id: String,
    /// JetStream replicas of abacus's buckets and streams (1, 3 or 5).
    pub replicas: usize,
    /// Longest wait for a NATS server at start.
    pub connect_timeout_ms: PositiveMillis,
    /// How long a partition's lease lasts unless its owner renews it: a
    /// dead node's partitions are taken over within about this.
    pub lease_ttl_ms: PositiveMillis,
    /// Event publishes awaiting JetStream's acknowledgement on this node;
    /// beyond it requests are refused with 503 and `Retry-After`.
    pub max_inflight_publishes: usize,
    /// Size of the replicated event log (MiB); once full, new events are
    /// refused with 503 rather than old ones dropped.
    pub log_max_mb: u64,
    /// How often an owner stores a snapshot of each partition it folds
    /// (a new owner restores it and replays only the log after it).
    pub snapshot_interval_s: PositiveSeconds,
    /// Longest wait for a partition's owner to say a unit's first
    /// exposures when an assignment depends on them; past it the unit is
    /// answered from the hash.
    pub lookup_timeout_ms: PositiveMillis,
}

/// Declares a duration type the configuration writes as a whole number
/// of one unit. A positive one refuses 0 while the configuration is read,
/// so the error names the key and no later check can be forgotten.
macro_rules! duration_type {
    ($(#[$doc:meta])* $name:ident, $from:path, positive: $positive:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(try_from = "u64", into = "u64")]
        pub struct $name(u64);

        impl $name {
            /// The duration.
            pub fn get(self) -> Duration {
                $from(self.0)
            }
        }

        impl TryFrom<u64> for $name {
            type Error = &'static str;
            fn try_from(n: u64) -> std::result::Result<Self, Self::Error> {
                if $positive && n == 0 {
                    Err("must be positive")
                } else {
                    Ok(Self(n))
                }
            }
        }

        impl From<$name> for u64 {
            fn from(d: $name) -> u64 {
                d.0
            }
        }
    };
}

/// `n` days as a duration.
fn days(n: u64) -> Duration {
    Duration::from_secs(n.saturating_mul(24 * 3600))
}

duration_type!(
    /// Milliseconds, 0 allowed.
    Millis,
    Duration::from_millis,
    positive: false
);
duration_type!(
    /// Milliseconds, more than 0.
    PositiveMillis,
    Duration::from_millis,
    positive: true
);
duration_type!(
    /// Whole days, 0 allowed.
    Days,
    days,
    positive: false
);
duration_type!(
    /// Whole days, more than 0.
    PositiveDays,
    days,
    positive: true
);
duration_type!(
    /// Seconds, 0 allowed.
    Seconds,
    Duration::from_secs,
    positive: false
);
duration_type!(
    /// Seconds, more than 0.
    PositiveSeconds,
    Duration::from_secs,
    positive: true
);

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Upper bound on a graceful shutdown.
    pub shutdown_timeout_ms: PositiveMillis,
    /// Requests slower than this are logged as warnings and counted.
    pub slow_request_ms: Millis,
    /// Open connections per worker thread.
    pub max_connections: usize,
    /// Deadline for a request's headers.
    pub client_request_timeout_ms: PositiveMillis,
    /// Deadline for a request's body once its headers arrived (408 after).
    pub body_timeout_ms: PositiveMillis,
}

/// `[storage]`: the RocksDB database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Database directory.
    pub path: PathBuf,
    /// Raw events are kept at least this many days after they were
    /// received; 0 keeps them forever. Aggregates are kept either way.
    pub retention_days: Days,
    /// How often the retention sweep runs, in seconds (also once at start).
    pub retention_sweep_interval_s: PositiveSeconds,
    /// RocksDB's block cache (with bloom and index blocks), shared by every
    /// column family, in MiB.
    pub cache_mb: usize,
}

/// `[ingest]`: the event pipeline.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Writers events are partitioned over by unit; 0 = one per core.
    pub partitions: usize,
    /// Requests the partitions' mailboxes hold together before answering 503.
    pub mailbox_capacity: usize,
    /// Events the partitions' mailboxes hold together before answering 503:
    /// the bound on what queued requests take in memory.
    pub mailbox_events: usize,
    /// Longest a request waits for room in a full mailbox before its 503.
    pub enqueue_wait_ms: Millis,
    /// Most events in one request body.
    pub max_batch: usize,
    /// Longest time an event waits in the writer before its batch commits.
    pub flush_interval_ms: PositiveMillis,
    /// Most events in one committed batch.
    pub flush_max_events: usize,
    /// How long a client `event_id` is remembered for de-duplication.
    pub dedup_window_days: PositiveDays,
    /// Sinks committed events go to; `rocksdb` is required.
    pub sinks: Vec<SinkKind>,
    /// File the `jsonl` sink appends to.
    pub jsonl_path: PathBuf,
    /// `/readyz` fails while the mailbox is fuller than this fraction.
    pub high_water: f64,
    /// Oldest event timestamp accepted, in seconds before now.
    pub max_event_age_s: PositiveSeconds,
    /// Newest event timestamp accepted, in seconds after now.
    pub max_future_skew_s: Seconds,
    /// Retries of a failing commit before the store is marked failed.
    pub commit_retries: u32,
    /// Added wait before each retry of a failing commit (linear back-off).
    pub commit_retry_ms: PositiveMillis,
}

/// `[results]`: watching running experiments.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// How often running experiments are checked for significance of the
    /// primary metric and for sample-ratio mismatch.
    pub check_interval_ms: PositiveMillis,
    /// How often running experiments' cumulative figures are kept for the
    /// timeline (`GET /v1/experiments/{key}/timeline`).
    pub timeline_interval_s: PositiveSeconds,
}

/// `[webhooks]`: delivery policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Allow targets on loopback, private and link-local addresses.
    pub allow_private: bool,
    /// Bound on one delivery attempt.
    pub timeout_ms: PositiveMillis,
    /// Delays before each retry; a message fails once they are used up.
    pub retry_schedule_ms: Vec<Millis>,
    /// Each delay is scaled by a random factor in 1 ± jitter.
    pub jitter: f64,
    /// Consecutive failed messages that disable a subscription.
    pub disable_after: u32,
    /// Longest `Retry-After` honoured.
    pub max_retry_after_ms: Millis,
}

/// `[limits]`: what one client may cost. Every resource a client can grow
/// is bounded here.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second per key on the ingest routes; 0 = unlimited.
    pub ingest_rps: u32,
    /// Requests per second per key on every other `/v1` route; 0 = unlimited.
    pub admin_rps: u32,
    /// Token-bucket depth: requests a key may make at once.
    pub burst: u32,
    /// Largest accepted `|value|` of an event.
    pub max_abs_value: f64,
    /// Largest accepted duration property, in milliseconds.
    pub max_duration_ms: f64,
    /// Distinct measures counted per experiment before `(other)`.
    pub max_measures: usize,
    /// Most earlier events of a unit read to form its CUPED covariates at
    /// its first exposure.
    pub max_covariate_events: usize,
    /// Most bins of one variant's sketch of a quantile metric.
    pub max_quantile_bins: usize,
    /// Largest `properties` of one event, in bytes of its JSON as sent.
    pub max_property_bytes: usize,
    /// Most experiments named in one `POST /v1/assignments`.
    pub max_assignment_experiments: usize,
    /// Largest accepted clicked rank (bounds rank histograms).
    pub max_rank: u32,
    /// Largest per-second live stats message, in bytes.
    pub max_stats_message_bytes: usize,
    /// An events export page stops once it holds this many bytes.
    pub max_export_page_bytes: usize,
    /// Most ids linked to one unit (`POST /v1/aliases`).
    pub max_links_per_unit: usize,
}

/// A destination for committed events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// The embedded store of record.
    Rocksdb,
    /// One JSON object per line in `ingest.jsonl_path`.
    Jsonl,
}

/// `[auth]`: bearer keys by role, keys issued through the API, and JWT
/// sign-in.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Serve without keys on a non-loopback address.
    pub allow_open: bool,
    /// Server-wide keys: every project, and owner keys through the API.
    pub owner_keys: Vec<String>,
    /// Keys of the default project with every permission there, issuing
    /// keys included.
    pub admin_keys: Vec<String>,
    /// Keys that may change experiments, webhooks and alert rules, read
    /// everything, and assign and send events.
    pub editor_keys: Vec<String>,
    /// Keys that may only read: experiments, results, analytics, events,
    /// alerts, the live stream.
    pub viewer_keys: Vec<String>,
    /// Keys that may only assign and send events.
    pub ingest_keys: Vec<String>,
    /// Most keys issued through the API (`POST /v1/keys`).
    pub max_keys: usize,
    /// Bearer tokens that are JWTs.
    pub jwt: JwtConfig,
}

/// `[auth.jwt]`: JSON Web Tokens as bearer credentials, verified with a
/// shared HS256 secret and/or RS256/ES256 public keys from a JWKS file.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256 shared secret, at least 32 bytes; empty turns HS256 off.
    pub hs256_secret: String,
    /// A JWKS file (`{"keys": [...]}`) of RS256/ES256 public keys, read
    /// again whenever it changes; empty turns them off.
    pub jwks_file: String,
    /// The `iss` every token must carry; empty accepts any issuer.
    pub issuer: String,
    /// A value every token's `aud` must hold; empty accepts any audience.
    pub audience: String,
    /// The claim naming the token's project (absent: `default`).
    pub project_claim: String,
    /// The claim naming the token's role (`owner`, `admin`, `editor`,
    /// `viewer` or `ingest`); a token without it is refused.
    pub role_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// How often the JWKS file is checked for a change.
    pub reload_interval_ms: PositiveMillis,
    /// Verified tokens remembered, so a token is verified once rather
    /// than on every request (forgotten when the keys change).
    pub cache_entries: usize,
}

impl JwtConfig {
    /// Whether any way of verifying a token is configured.
    pub fn is_on(&self) -> bool {
        !self.hs256_secret.is_empty() || !self.jwks_file.is_empty()
    }
}

impl AuthConfig {
    /// No key configured and no token accepted: every request is allowed.
    pub fn is_open(&self) -> bool {
        self.all_keys().next().is_none() && !self.jwt.is_on()
    }

    /// Every configured key, whatever its role.
    pub fn all_keys(&self) -> impl Iterator<Item = &String> + Clone {
        self.owner_keys
            .iter()
            .chain(&self.admin_keys)
            .chain(&self.editor_keys)
            .chain(&self.viewer_keys)
            .chain(&self.ingest_keys)
    }
}

/// Keys are secrets: never print them, not even in debug output.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |keys: &Vec<String>| format!("[{} redacted]", keys.len());
        f.debug_struct("AuthConfig")
            .field("allow_open", &self.allow_open)
            .field("owner_keys", &redacted(&self.owner_keys))
            .field("admin_keys", &redacted(&self.admin_keys))
            .field("editor_keys", &redacted(&self.editor_keys))
            .field("viewer_keys", &redacted(&self.viewer_keys))
            .field("ingest_keys", &redacted(&self.ingest_keys))
            .field("max_keys", &self.max_keys)
            .field("jwt", &self.jwt)
            .finish()
    }
}

/// The shared secret is a secret: never print it.
impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "hs256_secret",
                &if self.hs256_secret.is_empty() {
                    "(off)"
                } else {
                    "(redacted)"
                },
            )
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("project_claim", &self.project_claim)
            .field("role_claim", &self.role_claim)
            .field("leeway_s", &self.leeway_s)
            .field("reload_interval_ms", &self.reload_interval_ms)
            .field("cache_entries", &self.cache_entries)
            .finish()
    }
}

/// `[log]`: tracing output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Default `tracing` filter directive.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Loads the default layer, then `file` if given, then the process
    /// environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::from_figment(Self::figment(file)?.merge(Env::prefixed(ENV_PREFIX).split("__")))
    }

    /// The shipped defaults alone, whatever the environment holds: for
    /// tests that build on them.
    pub fn defaults() -> Result<Self> {
        Self::from_figment(Self::figment(None)?)
    }

    /// The default and file layers, without the environment.
    fn figment(file: Option<&Path>) -> Result<Figment> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            // figment skips a missing file silently; a path the operator
            // typed must exist.
            let text = std::fs::read_to_string(path).map_err(|source| Error::File {
                path: path.to_owned(),
                source,
            })?;
            figment = figment.merge(Toml::string(&text));
        }
        Ok(figment)
    }

    fn from_figment(figment: Figment) -> Result<Self> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that types alone cannot express.
    pub fn validate(&self) -> Result<()> {
        fn invalid(key: &'static str, reason: &str) -> Result<()> {
            Err(Error::Invalid {
                key,
                reason: reason.to_owned(),
            })
        }
        if self.server.max_body_bytes < 1024 {
            return invalid("server.max_body_bytes", "must be at least 1024");
        }
        if !(8..=1 << 20).contains(&self.storage.cache_mb) {
            return invalid("storage.cache_mb", "must be between 8 and 1048576");
        }
        if self.storage.path.as_os_str().is_empty() {
            return invalid("storage.path", "must not be empty");
        }
        if !(0.0..1.0).contains(&self.webhooks.jitter) {
            return invalid("webhooks.jitter", "must be in [0, 1)");
        }
        if self.webhooks.disable_after == 0 {
            return invalid("webhooks.disable_after", "must be positive");
        }
        if !(self.ingest.high_water > 0.0 && self.ingest.high_water <= 1.0) {
            return invalid("ingest.high_water", "must be in (0, 1]");
        }
        if self.ingest.mailbox_capacity == 0 {
            return invalid("ingest.mailbox_capacity", "must be positive");
        }
        if self.ingest.mailbox_events < self.ingest.max_batch {
            return invalid(
                "ingest.mailbox_events",
                "must be at least ingest.max_batch (a whole batch must fit)",
            );
        }
        if self.cluster.enabled {
            if self.cluster.nats_urls.is_empty() {
                return invalid(
                    "cluster.nats_urls",
                    "at least one NATS server in cluster mode",
                );
            }
            if self.cluster.node_id.trim().is_empty() {
                return invalid("cluster.node_id", "every node needs a name in cluster mode");
            }
            let id = &self.cluster.node_id;
            if id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                // It is part of key names in the leases bucket.
                return invalid(
                    "cluster.node_id",
                    "1-64 characters of A-Z, a-z, 0-9, - or _",
                );
            }
            if ![1, 3, 5].contains(&self.cluster.replicas) {
                return invalid("cluster.replicas", "must be 1, 3 or 5");
            }
            if self.cluster.lease_ttl_ms.get() < Duration::from_millis(500) {
                return invalid("cluster.lease_ttl_ms", "must be at least 500");
            }
            if self.cluster.max_inflight_publishes == 0 {
                return invalid("cluster.max_inflight_publishes", "must be at least 1");
            }
            if self.cluster.log_max_mb == 0 {
                return invalid("cluster.log_max_mb", "must be at least 1");
            }
        }
        if self.ingest.enqueue_wait_ms.get() > Duration::from_secs(10) {
            return invalid("ingest.enqueue_wait_ms", "must be at most 10000");
        }
        if self.ingest.partitions > 64 {
            return invalid(
                "ingest.partitions",
                "must be between 1 and 64, or 0 for one per core",
            );
        }
        if self.ingest.flush_max_events == 0 {
            return invalid("ingest.flush_max_events", "must be positive");
        }
        if !(1..=100_000).contains(&self.ingest.max_batch) {
            return invalid("ingest.max_batch", "must be between 1 and 100000");
        }
        if !self.ingest.sinks.contains(&SinkKind::Rocksdb) {
            return invalid(
                "ingest.sinks",
                "must include \"rocksdb\", the store of record",
            );
        }
        if self.server.max_connections == 0 {
            return invalid("server.max_connections", "must be positive");
        }
        self.limits.validate()?;
        if self.auth.is_open() && !self.auth.allow_open && !self.server.bind.ip().is_loopback() {
            return invalid(
                "auth",
                "no keys are configured and server.bind is not a loopback address: \
                 set auth.admin_keys (or auth.allow_open = true to serve openly)",
            );
        }
        let keys = self.auth.all_keys();
        for key in keys.clone() {
            if key.to_ascii_lowercase().contains("change-me") {
                return invalid(
                    "auth",
                    "a key is still the example's placeholder: generate a secret one",
                );
            }
            if key.len() < 16 {
                return invalid("auth", "every key must be at least 16 characters");
            }
            if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return invalid("auth", "keys must not contain whitespace");
            }
        }
        let mut all: Vec<&String> = keys.collect();
        all.sort();
        if all.windows(2).any(|w| w[0] == w[1]) {
            return invalid("auth", "a key appears twice (or under two roles)");
        }
        if !(1..=1_000).contains(&self.projects.max_projects) {
            return invalid("projects.max_projects", "must be 1-1000");
        }
        if !(1..=65_536).contains(&self.projects.cache_mb) {
            return invalid("projects.cache_mb", "must be 1-65536");
        }
        for (key, rate) in [
            ("quotas.events_per_second", self.quotas.events_per_second),
            (
                "quotas.assignments_per_second",
                self.quotas.assignments_per_second,
            ),
        ] {
            if rate > 10_000_000 {
                return invalid(key, "must be 0-10000000 (0: no limit)");
            }
        }
        for (key, count) in [
            ("quotas.max_experiments", self.quotas.max_experiments),
            ("quotas.max_webhooks", self.quotas.max_webhooks),
        ] {
            if !(1..=1_000_000).contains(&count) {
                return invalid(key, "must be 1-1000000");
            }
        }
        if !(1..=100_000).contains(&self.auth.max_keys) {
            return invalid("auth.max_keys", "must be 1-100000");
        }
        self.auth.jwt.validate()
    }
}

impl JwtConfig {
    fn validate(&self) -> Result<()> {
        let invalid = |key: &'static str, reason: &str| {
            Err(Error::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if !self.hs256_secret.is_empty() && self.hs256_secret.len() < 32 {
            return invalid(
                "auth.jwt.hs256_secret",
                "must be at least 32 bytes (HS256 is only as strong as its secret)",
            );
        }
        if self.project_claim.is_empty() || self.role_claim.is_empty() {
            return invalid("auth.jwt", "project_claim and role_claim must name a claim");
        }
        if self.leeway_s > 600 {
            return invalid("auth.jwt.leeway_s", "at most 600 seconds");
        }
        if !(1..=1_000_000).contains(&self.cache_entries) {
            return invalid("auth.jwt.cache_entries", "must be 1-1000000");
        }
        Ok(())
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<()> {
        let invalid = |key: &'static str, reason: &str| {
            Err(Error::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.burst == 0 {
            return invalid("limits.burst", "must be positive");
        }
        if !(self.max_abs_value.is_finite() && self.max_abs_value >= 1.0) {
            return invalid("limits.max_abs_value", "must be finite and at least 1");
        }
        // Sums of squares of per-unit sums must stay finite: (1e15 * 1e9
        // events)^2 = 1e48, far from f64::MAX (1.8e308).
        if self.max_abs_value > 1e100 {
            return invalid("limits.max_abs_value", "must be at most 1e100");
        }
        if !(self.max_duration_ms.is_finite() && self.max_duration_ms >= 1.0) {
            return invalid("limits.max_duration_ms", "must be finite and at least 1");
        }
        let positive = [
            ("limits.max_measures", self.max_measures),
            ("limits.max_covariate_events", self.max_covariate_events),
            ("limits.max_quantile_bins", self.max_quantile_bins),
            ("limits.max_property_bytes", self.max_property_bytes),
            (
                "limits.max_assignment_experiments",
                self.max_assignment_experiments,
            ),
            ("limits.max_rank", self.max_rank as usize),
            (
                "limits.max_stats_message_bytes",
                self.max_stats_message_bytes,
            ),
            ("limits.max_export_page_bytes", self.max_export_page_bytes),
            ("limits.max_links_per_unit", self.max_links_per_unit),
        ];
        for (key, value) in positive {
            if value == 0 {
                return invalid(key, "must be positive");
            }
        }
        if self.max_rank > 100_000 {
            return invalid("limits.max_rank", "must be at most 100000");
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail closures return its (large) error type; that is its API.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    /// Asserts the environment set in `jail` is refused, naming `key`.
    fn refused(jail: &mut figment::Jail, key: &str) {
        let err = load_in(jail, None).unwrap_err();
        assert!(err.to_string().contains(key), "{err}");
    }

    fn load_in(jail: &mut figment::Jail, file: Option<&str>) -> Result<Config> {
        let path = file.map(|body| {
            jail.create_file("abacus.toml", body).expect("write file");
            PathBuf::from("abacus.toml")
        });
        Config::load(path.as_deref())
    }

    #[test]
    fn embedded_default_is_valid_and_local() {
        figment::Jail::expect_with(|jail| {
            let config = load_in(jail, None).expect("default loads");
            assert_eq!(config.server.bind.to_string(), "127.0.0.1:8080");
            assert_eq!(config.storage.path, PathBuf::from("./data"));
            assert!(config.auth.is_open());
            Ok(())
        });
    }

    #[test]
    fn file_overrides_default_and_env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ABACUS_SERVER__WORKERS", "3");
            let config = load_in(
                jail,
                Some("[server]\nworkers = 2\nbind = \"127.0.0.1:9000\"\n"),
            )
            .expect("loads");
            assert_eq!(config.server.workers, 3, "env wins over file");
            assert_eq!(config.server.bind.port(), 9000, "file wins over default");
            assert_eq!(
                config.ingest.flush_interval_ms.get(),
                Duration::from_millis(5),
                "default kept"
            );
            Ok(())
        });
    }

    #[test]
    fn env_lists_set_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ABACUS_AUTH__ADMIN_KEYS", "[\"0123456789abcdef\"]");
            let config = load_in(jail, None).expect("loads");
            assert_eq!(config.auth.admin_keys, vec!["0123456789abcdef"]);
            assert!(!config.auth.is_open());
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        figment::Jail::expect_with(|jail| {
            let err = load_in(jail, Some("[server]\nbnd = \"x\"\n")).unwrap_err();
            assert!(err.to_string().contains("bnd"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn cluster_mode_needs_servers_a_node_name_and_an_odd_replica_count() {
        figment::Jail::expect_with(|jail| {
            let config = load_in(jail, None).unwrap();
            assert!(!config.cluster.enabled, "off by default");
            jail.set_env("ABACUS_CLUSTER__ENABLED", "true");
            refused(jail, "cluster.node_id");
            jail.set_env("ABACUS_CLUSTER__NODE_ID", "node 1.a");
            refused(jail, "cluster.node_id");
            jail.set_env("ABACUS_CLUSTER__NODE_ID", "node-1");
            jail.set_env("ABACUS_CLUSTER__LEASE_TTL_MS", "100");
            refused(jail, "cluster.lease_ttl_ms");
            jail.set_env("ABACUS_CLUSTER__LEASE_TTL_MS", "3000");
            jail.set_env("ABACUS_CLUSTER__MAX_INFLIGHT_PUBLISHES", "0");
            refused(jail, "cluster.max_inflight_publishes");
            jail.set_env("ABACUS_CLUSTER__MAX_INFLIGHT_PUBLISHES", "10");
            jail.set_env("ABACUS_CLUSTER__REPLICAS", "2");
            refused(jail, "cluster.replicas");
            jail.set_env("ABACUS_CLUSTER__REPLICAS", "3");
            jail.set_env("ABACUS_CLUSTER__NATS_URLS", "[]");
            refused(jail, "cluster.nats_urls");
            jail.set_env("ABACUS_CLUSTER__NATS_URLS", r#"["nats://10.0.0.1:4222"]"#);
            let config = load_in(jail, None).unwrap();
            assert_eq!(config.cluster.nats_urls, ["nats://10.0.0.1:4222"]);
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        figment::Jail::expect_with(|jail| {
            let err = load_in(jail, Some("[server]\nbind = \"not an address\"\n")).unwrap_err();
            assert!(matches!(err, Error::Parse(_)), "{err}");
            jail.set_env("ABACUS_INGEST__MAILBOX_CAPACITY", "0");
            let err = load_in(jail, None).unwrap_err();
            assert!(err.to_string().contains("ingest.mailbox_capacity"), "{err}");
            jail.set_env("ABACUS_INGEST__MAILBOX_CAPACITY", "8");
            jail.set_env("ABACUS_INGEST__PARTITIONS", "65");
            let err = load_in(jail, None).unwrap_err();
            assert!(err.to_string().contains("ingest.partitions"), "{err}");
            jail.set_env("ABACUS_INGEST__PARTITIONS", "64");
            assert_eq!(load_in(jail, None).unwrap().ingest.partitions, 64);
            jail.set_env("ABACUS_INGEST__MAILBOX_EVENTS", "999");
            let err = load_in(jail, None).unwrap_err();
            assert!(err.to_string().contains("ingest.mailbox_events"), "{err}");
            jail.set_env("ABACUS_INGEST__MAILBOX_EVENTS", "1000");
            assert_eq!(load_in(jail, None).unwrap().ingest.mailbox_events, 1000);
            jail.set_env("ABACUS_INGEST__ENQUEUE_WAIT_MS", "10001");
            refused(jail, "ingest.enqueue_wait_ms");
            jail.set_env("ABACUS_INGEST__ENQUEUE_WAIT_MS", "0");
            let config = load_in(jail, None).unwrap();
            assert_eq!(config.ingest.enqueue_wait_ms.get(), Duration::ZERO);
            Ok(())
        });
    }

    #[test]
    fn short_or_duplicate_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ABACUS_AUTH__ADMIN_KEYS", "[\"short\"]");
            assert!(load_in(jail, None).is_err());
            jail.set_env("ABACUS_AUTH__ADMIN_KEYS", "[\"0123456789abcdef\"]");
            jail.set_env("ABACUS_AUTH__INGEST_KEYS", "[\"0123456789abcdef\"]");
            assert!(load_in(jail, None).is_err());
            Ok(())
        });
    }

    #[test]
    fn the_store_of_record_cannot_be_configured_away() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ABACUS_INGEST__SINKS", "[\"jsonl\"]");
            let err = load_in(jail, None).expect_err("rocksdb is required");
            assert!(err.to_string().contains("ingest.sinks"), "{err}");
            jail.set_env("ABACUS_INGEST__SINKS", "[\"rocksdb\", \"jsonl\"]");
            let config = load_in(jail, None).expect("loads");
            assert_eq!(config.ingest.sinks, [SinkKind::Rocksdb, SinkKind::Jsonl]);
            Ok(())
        });
    }

    #[test]
    fn open_mode_is_loopback_only_unless_allowed() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ABACUS_SERVER__BIND", "0.0.0.0:8080");
            let err = load_in(jail, None).expect_err("open on 0.0.0.0");
            assert!(err.to_string().contains("auth"), "{err}");
            jail.set_env("ABACUS_AUTH__ALLOW_OPEN", "true");
            load_in(jail, None).expect("allowed explicitly");
            jail.set_env("ABACUS_AUTH__ALLOW_OPEN", "false");
            jail.set_env("ABACUS_AUTH__ADMIN_KEYS", "[\"0123456789abcdef\"]");
            load_in(jail, None).expect("keys make any bind fine");
            Ok(())
        });
    }

    #[test]
    fn the_production_example_needs_real_keys() {
        figment::Jail::expect_with(|jail| {
            let example = include_str!("../examples/production.toml");
            let err = load_in(jail, Some(example)).expect_err("placeholders refused");
            assert!(err.to_string().contains("placeholder"), "{err}");
            jail.set_env(
                "ABACUS_AUTH__ADMIN_KEYS",
                "[\"a-real-admin-secret-0123456789\"]",
            );
            jail.set_env(
                "ABACUS_AUTH__INGEST_KEYS",
                "[\"a-real-ingest-secret-0123456789\"]",
            );
            load_in(jail, Some(example)).expect("real keys from the environment");
            Ok(())
        });
    }

    #[test]
    fn limits_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ABACUS_LIMITS__INGEST_RPS", "500");
            let config = load_in(jail, None).expect("loads");
            assert_eq!(config.limits.ingest_rps, 500);
            let err = load_in(jail, Some("[limits]\nmax_abs_value = 1e300\n"))
                .expect_err("too large a bound");
            assert!(err.to_string().contains("limits.max_abs_value"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/abacus.toml"))).unwrap_err();
        assert!(matches!(err, Error::File { .. }), "{err}");
    }

    #[test]
    fn debug_output_redacts_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ABACUS_AUTH__OWNER_KEYS", "[\"super-secret-owner-key\"]");
            jail.set_env("ABACUS_AUTH__ADMIN_KEYS", "[\"super-secret-admin-key\"]");
            jail.set_env(
                "ABACUS_AUTH__JWT__HS256_SECRET",
                "super-secret-hs256-0123456789abcdef",
            );
            let config = load_in(jail, None).expect("valid");
            let printed = format!("{:?}", config.auth);
            assert!(!printed.contains("super-secret"), "{printed}");
            assert!(printed.contains("[1 redacted]"), "{printed}");
            Ok(())
        });
    }

    #[test]
    fn a_zero_duration_that_must_be_positive_names_its_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ABACUS_SERVER__BODY_TIMEOUT_MS", "0");
            let err = load_in(jail, None).expect_err("refused");
            let text = err.to_string().to_lowercase();
            assert!(text.contains("body_timeout_ms"), "{text}");
            assert!(text.contains("must be positive"), "{text}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("ABACUS_SERVER__SLOW_REQUEST_MS", "0");
            let config = load_in(jail, None).expect("0 is allowed here");
            assert_eq!(config.server.slow_request_ms.get(), Duration::ZERO);
            Ok(())
        });
    }

    #[test]
    fn the_block_cache_budget_is_bounded() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ABACUS_STORAGE__CACHE_MB", "4");
            let err = load_in(jail, None).expect_err("too small");
            assert!(err.to_string().contains("storage.cache_mb"), "{err}");
            Ok(())
        });
    }
}
