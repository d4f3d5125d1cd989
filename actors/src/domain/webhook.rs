//! Webhook subscriptions, their pending messages and delivery attempts:
//! plain data, persisted as JSON.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{DomainEventKind, WebhookId};

// Bodies are read from JSON objects only, never from arrays of their
// fields (domain/objects.rs).
crate::objects_only!(WebhookIn);

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct WebhookIn {
    /// Where to POST: an `http://` or `https://` URL as written (no
    /// surrounding spaces, control characters or backslashes), with a
    /// host and without credentials, whose host resolves only to public
    /// addresses (unless `webhooks.allow_private`).
    #[schema(
        pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^/\\\u0000-\u0020\u007f-\u009f]([^\\\u0000-\u001f\u007f-\u009f]*[^\\\u0000-\u0020\u007f-\u009f])?$"
    )]
    pub url: String,
    /// Which event types to receive (at least one).
    #[schema(min_items = 1)]
    pub events: Vec<DomainEventKind>,
    /// Free text, up to 1,000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
}

/// A subscription as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    /// `wh_` and 32 hex digits.
    pub id: WebhookId,
    /// Target URL.
    pub url: String,
    /// Event types delivered.
    pub events: Vec<DomainEventKind>,
    /// Free text.
    pub description: Option<String>,
    /// `whsec_` + base64 of 32 random bytes; shown once, at creation.
    pub secret: String,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Why and when deliveries stopped, until `enable`.
    pub disabled: Option<Disabled>,
    /// Delivery counters.
    pub stats: DeliveryStats,
}

/// Why a subscription stopped receiving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Disabled {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// Why: `gone` (the endpoint answered 410) or `failing` (too many
    /// messages in a row failed every retry).
    pub reason: String,
}

/// Counters of one subscription.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryStats {
    /// Messages delivered (a 2xx).
    pub delivered: u64,
    /// Messages that failed every retry.
    pub failed_messages: u64,
    /// HTTP attempts.
    pub attempts: u64,
    /// Attempts answered 2xx.
    pub successes: u64,
    /// Attempts that failed (non-2xx, timeout, connection error).
    pub failures: u64,
    /// Messages in a row that failed every retry; reset by a delivery.
    pub consecutive_failed_messages: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// A subscription as the API shows it: no secret.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WebhookOut {
    /// Id.
    pub id: WebhookId,
    /// Target URL.
    pub url: String,
    /// Event types delivered.
    pub events: Vec<DomainEventKind>,
    /// Free text.
    pub description: Option<String>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Whether deliveries are on.
    pub enabled: bool,
    /// Why they are off.
    pub disabled: Option<Disabled>,
    /// Messages queued for it so far: delivered, failed and pending.
    pub messages: u64,
    /// Counters.
    pub stats: DeliveryStats,
    /// successes / attempts; `null` before the first attempt.
    pub success_rate: Option<f64>,
    /// Messages waiting (including one being retried).
    pub pending: u64,
}

impl Webhook {
    /// The API view, with the queue length.
    pub fn view(&self, pending: u64) -> WebhookOut {
        WebhookOut {
            id: self.id.clone(),
            url: self.url.clone(),
            events: self.events.clone(),
            description: self.description.clone(),
            created_at: self.created_at,
            enabled: self.disabled.is_none(),
            disabled: self.disabled.clone(),
            messages: self.stats.delivered + self.stats.failed_messages + pending,
            stats: self.stats.clone(),
            success_rate: (self.stats.attempts > 0)
                .then(|| self.stats.successes as f64 / self.stats.attempts as f64),
            pending,
        }
    }
}

/// A message waiting in a subscription's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookMessage {
    /// The `webhook-id`: the domain event's id, the same on every retry.
    pub id: String,
    /// Event type.
    pub kind: DomainEventKind,
    /// The JSON body, signed as is.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not before this time (ms since the epoch).
    pub next_attempt_ms: i64,
}

/// One delivery attempt, as `GET /v1/webhooks/{id}/deliveries` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeliveryAttempt {
    /// The message's `webhook-id`.
    pub message_id: String,
    /// Its event type.
    #[serde(rename = "type")]
    pub kind: DomainEventKind,
    /// 1 for the first try.
    pub attempt: u32,
    /// When it was sent.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// The HTTP status, if one came back.
    pub status_code: Option<u16>,
    /// Time to the response (or the failure), in ms.
    pub latency_ms: f64,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// `delivered`, `retrying`, `failed` (retries exhausted) or `disabled`.
    pub outcome: String,
}
