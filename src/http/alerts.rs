//! `/v1/alerts`: alert rules, and the alerts they raise with their
//! acknowledge / resolve actions.

use abacus_actors::alerts::AlertFilter;
use abacus_actors::alerts::Alerts;
use abacus_actors::domain::{
    Alert, AlertId, AlertRule, AlertStatus, RuleId, RuleIn, RulePatch, StampIn,
};
use actix_web::{delete, get, patch, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Editor, Viewer};
use super::error::{ApiError, ApiResult};
use super::extract::ValidJson;
use super::scoped::Scoped;

const MAX_PAGE: usize = 500;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create_rule)
        .service(list_rules)
        .service(read_rule)
        .service(update_rule)
        .service(delete_rule)
        .service(list)
        .service(read)
        .service(acknowledge)
        .service(resolve);
}

/// Create a rule: `metric` is one of `event_latency_p95_ms`, `error_rate`,
/// `ingest_rejections` (with `threshold` and `window_s`), `srm`,
/// `guardrail_regression` (optionally for one `experiment`) or
/// `webhook_disabled`. Evaluated every second.
#[utoipa::path(
    tag = "alerts",
    request_body = RuleIn,
    responses(
        (status = 201, description = "Created", body = AlertRule),
        (status = 422, description = "Invalid rule"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/alerts/rules")]
async fn create_rule(
    Editor(by): Editor,
    alerts: Scoped<Alerts>,
    ValidJson(input): ValidJson<RuleIn>,
) -> ApiResult<HttpResponse> {
    let rule = alerts.create_rule(input, &by).await?;
    Ok(HttpResponse::Created()
        .insert_header(("location", format!("/v1/alerts/rules/{}", rule.id)))
        .json(rule))
}

/// Every rule.
#[derive(Serialize, ToSchema)]
pub struct RuleList {
    /// By id.
    rules: Vec<AlertRule>,
}

/// List the rules.
#[utoipa::path(
    tag = "alerts",
    responses((status = 200, description = "Rules", body = RuleList)),
    security(("bearer" = []))
)]
#[get("/v1/alerts/rules")]
async fn list_rules(_: Viewer, alerts: Scoped<Alerts>) -> ApiResult<HttpResponse> {
    let rules = alerts.rules().await?;
    Ok(HttpResponse::Ok().json(RuleList { rules }))
}

/// One rule.
#[utoipa::path(
    tag = "alerts",
    params(("id" = RuleId, Path, description = "Rule id")),
    responses(
        (status = 200, description = "The rule", body = AlertRule),
        (status = 404, description = "No such rule"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/alerts/rules/{id}")]
async fn read_rule(
    _: Viewer,
    alerts: Scoped<Alerts>,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(alerts.rule(&id).await?))
}

/// Change a rule's name, threshold, window, severity or enabled flag.
/// Disabling resolves its active alerts.
#[utoipa::path(
    tag = "alerts",
    params(("id" = RuleId, Path, description = "Rule id")),
    request_body = RulePatch,
    responses(
        (status = 200, description = "The rule", body = AlertRule),
        (status = 404, description = "No such rule"),
        (status = 422, description = "Invalid change"),
    ),
    security(("bearer" = []))
)]
#[patch("/v1/alerts/rules/{id}")]
async fn update_rule(
    Editor(by): Editor,
    alerts: Scoped<Alerts>,
    id: web::Path<String>,
    ValidJson(patch): ValidJson<RulePatch>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(alerts.patch_rule(&id, patch, &by).await?))
}

/// Delete a rule; its active alerts resolve.
#[utoipa::path(
    tag = "alerts",
    params(("id" = RuleId, Path, description = "Rule id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such rule"),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/alerts/rules/{id}")]
async fn delete_rule(
    Editor(by): Editor,
    alerts: Scoped<Alerts>,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    alerts.delete_rule(&id, &by).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Query of `GET /v1/alerts`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// `open`, `acknowledged` or `resolved`.
    status: Option<AlertStatus>,
    /// Only alerts about this experiment.
    experiment: Option<String>,
    /// At most this many, 1..=500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// Alerts, newest first.
#[derive(Serialize, ToSchema)]
pub struct AlertList {
    /// Newest first.
    alerts: Vec<Alert>,
}

/// List alerts, newest first.
#[utoipa::path(
    operation_id = "list_alerts",
    tag = "alerts",
    params(AlertQuery),
    responses((status = 200, description = "Alerts", body = AlertList)),
    security(("bearer" = []))
)]
#[get("/v1/alerts")]
async fn list(
    _: Viewer,
    alerts: Scoped<Alerts>,
    query: web::Query<AlertQuery>,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_query(
            "limit",
            format!("limit must be 1-{MAX_PAGE}"),
        ));
    }
    let alerts = alerts
        .list(AlertFilter {
            status: query.status,
            experiment: query.experiment,
            limit,
        })
        .await?;
    Ok(HttpResponse::Ok().json(AlertList { alerts }))
}

/// One alert.
#[utoipa::path(
    operation_id = "read_alert",
    tag = "alerts",
    params(("id" = AlertId, Path, description = "Alert id")),
    responses(
        (status = 200, description = "The alert", body = Alert),
        (status = 404, description = "No such alert"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/alerts/{id}")]
async fn read(_: Viewer, alerts: Scoped<Alerts>, id: web::Path<String>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(alerts.get(&id).await?))
}

/// `open → acknowledged`, recording who and why.
#[utoipa::path(
    operation_id = "acknowledge_alert",
    tag = "alerts",
    params(("id" = AlertId, Path, description = "Alert id")),
    request_body = StampIn,
    responses(
        (status = 200, description = "The alert", body = Alert),
        (status = 404, description = "No such alert"),
        (status = 409, description = "Not open"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/alerts/{id}/acknowledge")]
async fn acknowledge(
    Editor(by): Editor,
    alerts: Scoped<Alerts>,
    id: web::Path<String>,
    ValidJson(stamp): ValidJson<StampIn>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(alerts.acknowledge(&id, stamp, &by).await?))
}

/// `open | acknowledged → resolved`, recording who and why. A rule's alert
/// resolved while its condition holds is not raised again until the
/// condition clears once.
#[utoipa::path(
    operation_id = "resolve_alert",
    tag = "alerts",
    params(("id" = AlertId, Path, description = "Alert id")),
    request_body = StampIn,
    responses(
        (status = 200, description = "The alert", body = Alert),
        (status = 404, description = "No such alert"),
        (status = 409, description = "Already resolved"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/alerts/{id}/resolve")]
async fn resolve(
    Editor(by): Editor,
    alerts: Scoped<Alerts>,
    id: web::Path<String>,
    ValidJson(stamp): ValidJson<StampIn>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(alerts.resolve(&id, stamp, &by).await?))
}
