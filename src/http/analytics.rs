//! Click analytics (`/v1/analytics/*`), one unit's summary
//! (`/v1/units/{unit_id}`) and the side-by-side comparison of an
//! experiment's variants (`/v1/experiments/{key}/compare`).

use abacus_actors::results::Results;
use abacus_actors::storage::AnalyticsFilter;
use std::collections::BTreeMap;

use abacus_actors::domain::{unix_ms, Bucket, ExperimentKey, UnitId};
use abacus_actors::results::analytics::{
    total, CompareReport, CtrReport, Distribution, EngagementReport, RankReport, UnitSummary,
};
use actix_web::{get, web, HttpResponse};
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa::IntoParams;

use super::auth::Viewer;
use super::error::ApiResult;
use super::scoped::Scoped;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(ctr)
        .service(ranks)
        .service(response_times)
        .service(engagement)
        .service(unit)
        .service(compare);
}

/// Filters shared by the analytics endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsQuery {
    /// Only events of this experiment (its variants are broken out).
    experiment: Option<ExperimentKey>,
    /// Only this variant (needs `experiment`).
    variant: Option<String>,
    /// Only this unit's events (read exactly from its event index).
    unit_id: Option<UnitId>,
    /// From (RFC 3339, rounded down to the minute).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<OffsetDateTime>,
    /// To, exclusive (RFC 3339, rounded up to the minute).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<OffsetDateTime>,
}

impl From<AnalyticsQuery> for AnalyticsFilter {
    fn from(q: AnalyticsQuery) -> Self {
        AnalyticsFilter {
            experiment: q.experiment.map(String::from),
            variant: q.variant,
            unit: q.unit_id.map(String::from),
            from_ms: q.from.map(unix_ms),
            to_ms: q.to.map(unix_ms),
        }
    }
}

async fn buckets(
    results: &Results,
    query: web::Query<AnalyticsQuery>,
) -> ApiResult<BTreeMap<String, Bucket>> {
    Ok(results.analytics(query.into_inner().into()).await?)
}

/// Click-through rate: clicks / impressions, overall and per variant.
#[utoipa::path(
    tag = "analytics",
    params(AnalyticsQuery),
    responses(
        (status = 200, description = "CTR", body = CtrReport),
        (status = 404, description = "No such experiment"),
        (status = 422, description = "A `variant` without its `experiment`"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/analytics/ctr")]
async fn ctr(
    _: Viewer,
    results: Scoped<Results>,
    query: web::Query<AnalyticsQuery>,
) -> ApiResult<HttpResponse> {
    let by_variant = buckets(&results, query).await?;
    Ok(HttpResponse::Ok().json(CtrReport::of(&by_variant)))
}

/// Clicked ranks: distribution, mean, median, min, max.
#[utoipa::path(
    tag = "analytics",
    params(AnalyticsQuery),
    responses(
        (status = 200, description = "Ranks", body = RankReport),
        (status = 404, description = "No such experiment"),
        (status = 422, description = "A `variant` without its `experiment`"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/analytics/ranks")]
async fn ranks(
    _: Viewer,
    results: Scoped<Results>,
    query: web::Query<AnalyticsQuery>,
) -> ApiResult<HttpResponse> {
    let by_variant = buckets(&results, query).await?;
    Ok(HttpResponse::Ok().json(RankReport::of(&total(by_variant.values()))))
}

/// Response times of impressions and clicks: count, mean, min, max, p50,
/// p95, p99 (percentiles within 1%).
#[utoipa::path(
    tag = "analytics",
    params(AnalyticsQuery),
    responses(
        (status = 200, description = "Response times (ms)", body = Distribution),
        (status = 404, description = "No such experiment"),
        (status = 422, description = "A `variant` without its `experiment`"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/analytics/response-times")]
async fn response_times(
    _: Viewer,
    results: Scoped<Results>,
    query: web::Query<AnalyticsQuery>,
) -> ApiResult<HttpResponse> {
    let all = total(buckets(&results, query).await?.values());
    Ok(HttpResponse::Ok().json(Distribution::of(all.response_times.as_ref())))
}

/// Dwell time of engagements: mean and percentiles, overall and per action.
#[utoipa::path(
    tag = "analytics",
    params(AnalyticsQuery),
    responses(
        (status = 200, description = "Dwell times (ms)", body = EngagementReport),
        (status = 404, description = "No such experiment"),
        (status = 422, description = "A `variant` without its `experiment`"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/analytics/engagement")]
async fn engagement(
    _: Viewer,
    results: Scoped<Results>,
    query: web::Query<AnalyticsQuery>,
) -> ApiResult<HttpResponse> {
    let all = total(buckets(&results, query).await?.values());
    Ok(HttpResponse::Ok().json(EngagementReport::of(&all)))
}

/// One unit: its assignments, event counts by type, CTR and mean dwell.
#[utoipa::path(
    tag = "analytics",
    params(("unit_id" = UnitId, Path, description = "Unit id")),
    responses((status = 200, description = "The unit", body = UnitSummary)),
    security(("bearer" = []))
)]
#[get("/v1/units/{unit_id}")]
async fn unit(
    _: Viewer,
    results: Scoped<Results>,
    unit_id: web::Path<UnitId>,
) -> ApiResult<HttpResponse> {
    let unit_id = String::from(unit_id.into_inner());
    Ok(HttpResponse::Ok().json(results.unit_summary(&unit_id).await?))
}

/// The variants side by side (CTR, conversion rate, mean dwell, response
/// time percentiles) and the winner by the primary metric, `null` while
/// nothing is significant.
#[utoipa::path(
    tag = "analytics",
    params(("key" = ExperimentKey, Path, description = "Experiment key")),
    responses(
        (status = 200, description = "The comparison", body = CompareReport),
        (status = 404, description = "No such experiment"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/experiments/{key}/compare")]
async fn compare(
    _: Viewer,
    results: Scoped<Results>,
    key: web::Path<String>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(results.compare(&key).await?))
}
