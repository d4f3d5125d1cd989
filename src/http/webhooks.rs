//! `/v1/webhooks`: subscriptions, test messages, re-enabling and the
//! delivery log.

use abacus_actors::domain::{DeliveryAttempt, WebhookId, WebhookIn, WebhookOut};
use abacus_actors::webhooks::Webhooks;
use actix_web::{delete, get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Editor;
use super::error::{ApiError, ApiResult};
use super::extract::{self, ValidJson};
use super::scoped::Scoped;

const MAX_PAGE: usize = 500;
/// The largest delivery cursor taken: 2^53 - 1, the largest integer every
/// JSON client reads exactly, and the `maximum` the document states.
const MAX_CURSOR: u64 = (1 << 53) - 1;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create)
        .service(list)
        .service(read)
        .service(remove)
        .service(test)
        .service(enable)
        .service(deliveries);
}

/// A new subscription, with its secret (shown this once).
#[derive(Serialize, ToSchema)]
pub struct CreatedSubscription {
    /// The subscription.
    #[serde(flatten)]
    subscription: WebhookOut,
    /// `whsec_` + base64 of 32 random bytes: verify signatures with it.
    secret: String,
}

/// Subscribe a URL to event types. The URL must be http(s) and resolve to
/// public addresses unless `webhooks.allow_private` is set.
#[utoipa::path(
    operation_id = "create_webhook",
    tag = "webhooks",
    request_body = WebhookIn,
    responses(
        (status = 201, description = "Created; the secret is shown only here", body = CreatedSubscription),
        (status = 422, description = "Bad URL (scheme, private address) or event types"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/webhooks")]
async fn create(
    Editor(by): Editor,
    webhooks: Scoped<Webhooks>,
    ValidJson(input): ValidJson<WebhookIn>,
) -> ApiResult<HttpResponse> {
    let (subscription, secret) = webhooks.create(input, &by).await?;
    Ok(HttpResponse::Created()
        .insert_header(("location", format!("/v1/webhooks/{}", subscription.id)))
        .json(CreatedSubscription {
            subscription,
            secret,
        }))
}

/// Every subscription.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionList {
    /// By id.
    webhooks: Vec<WebhookOut>,
}

/// List subscriptions with their delivery counters.
#[utoipa::path(
    operation_id = "list_webhooks",
    tag = "webhooks",
    responses((status = 200, description = "Subscriptions", body = SubscriptionList)),
    security(("bearer" = []))
)]
#[get("/v1/webhooks")]
async fn list(_: Editor, webhooks: Scoped<Webhooks>) -> ApiResult<HttpResponse> {
    let webhooks = webhooks.list().await?;
    Ok(HttpResponse::Ok().json(SubscriptionList { webhooks }))
}

/// One subscription: counters (messages, attempts, successes, failures,
/// success rate, last error), pending messages, why it is disabled.
#[utoipa::path(
    operation_id = "read_webhook",
    tag = "webhooks",
    params(("id" = WebhookId, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The subscription", body = WebhookOut),
        (status = 404, description = "No such subscription"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/webhooks/{id}")]
async fn read(
    _: Editor,
    webhooks: Scoped<Webhooks>,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(webhooks.get(&id).await?))
}

/// Delete a subscription with its pending messages and log.
#[utoipa::path(
    operation_id = "delete_webhook",
    tag = "webhooks",
    params(("id" = WebhookId, Path, description = "Webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such subscription"),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/webhooks/{id}")]
async fn remove(
    Editor(by): Editor,
    webhooks: Scoped<Webhooks>,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    webhooks.delete(&id, &by).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A queued test message.
#[derive(Serialize, ToSchema)]
pub struct TestQueued {
    /// Its `webhook-id`.
    message_id: String,
}

/// Send a `webhook.test` message to this subscription (queued like any
/// other; an enabled subscription gets it at once).
#[utoipa::path(
    operation_id = "test_webhook",
    tag = "webhooks",
    params(("id" = WebhookId, Path, description = "Webhook id")),
    responses(
        (status = 202, description = "Queued", body = TestQueued),
        (status = 404, description = "No such subscription"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/webhooks/{id}/test")]
async fn test(
    _: Editor,
    webhooks: Scoped<Webhooks>,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let message_id = webhooks.test(&id).await?;
    Ok(HttpResponse::Accepted().json(TestQueued { message_id }))
}

/// Turn a disabled subscription back on; its pending messages go out.
#[utoipa::path(
    operation_id = "enable_webhook",
    tag = "webhooks",
    params(("id" = WebhookId, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "Enabled", body = WebhookOut),
        (status = 404, description = "No such subscription"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/webhooks/{id}/enable")]
async fn enable(
    Editor(by): Editor,
    webhooks: Scoped<Webhooks>,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(webhooks.enable(&id, &by).await?))
}

/// Query of the delivery log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Page size, 1..=500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(minimum = 0, maximum = 9007199254740991.0)]
    cursor: Option<u64>,
}

/// A page of attempts.
#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    /// Newest first.
    deliveries: Vec<DeliveryAttempt>,
    /// Cursor of the next (older) page; `null` on the last.
    next_cursor: Option<u64>,
}

/// Every delivery attempt, newest first: time, status code, latency, error
/// and outcome.
#[utoipa::path(
    operation_id = "list_deliveries",
    tag = "webhooks",
    params(("id" = WebhookId, Path, description = "Webhook id"), DeliveriesQuery),
    responses(
        (status = 200, description = "Attempts", body = DeliveryPage),
        (status = 404, description = "No such subscription"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/webhooks/{id}/deliveries")]
async fn deliveries(
    _: Editor,
    webhooks: Scoped<Webhooks>,
    id: web::Path<String>,
    query: web::Query<DeliveriesQuery>,
) -> ApiResult<HttpResponse> {
    let limit = extract::page_limit(query.limit, 50, MAX_PAGE)?;
    if query.cursor.is_some_and(|c| c > MAX_CURSOR) {
        return Err(ApiError::bad_query(
            "cursor",
            format!("cursor must be at most {MAX_CURSOR}"),
        ));
    }
    let (deliveries, next_cursor) = webhooks.deliveries(&id, query.cursor, limit).await?;
    Ok(HttpResponse::Ok().json(DeliveryPage {
        deliveries,
        next_cursor,
    }))
}
