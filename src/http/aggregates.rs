//! `/v1/experiments/{key}/aggregates`: the raw per-variant sums that
//! results are computed from, live or recomputed from stored events.

use abacus_actors::domain::{ExperimentAggregates, ExperimentKey};
use abacus_actors::results::Results;
use actix_web::{get, web, HttpResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::auth::Viewer;
use super::error::ApiResult;
use super::scoped::Scoped;

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(aggregates);
}

/// Where the numbers come from.
#[derive(Debug, Default, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Maintained as events are committed (instant).
    #[default]
    Live,
    /// Recomputed from the stored events (reads them all; for checking).
    Events,
}

/// Query of `GET /v1/experiments/{key}/aggregates`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AggregatesQuery {
    /// `live` (default) or `events`.
    source: Option<Source>,
}

/// Per variant: exposed units, exposures, assignment mismatches, and per
/// measure (event type or metric name) the units that did it, events,
/// sum and sum of squares of per-unit sums.
#[utoipa::path(
    tag = "experiments",
    params(("key" = ExperimentKey, Path, description = "Experiment key"), AggregatesQuery),
    responses(
        (status = 200, description = "The experiment's aggregates", body = ExperimentAggregates),
        (status = 404, description = "No such experiment"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/experiments/{key}/aggregates")]
async fn aggregates(
    _: Viewer,
    results: Scoped<Results>,
    key: web::Path<String>,
    query: web::Query<AggregatesQuery>,
) -> ApiResult<HttpResponse> {
    Ok(match query.source.unwrap_or_default() {
        Source::Live => HttpResponse::Ok().json(&*results.aggregates(&key)?),
        Source::Events => {
            HttpResponse::Ok().json(results.rebuilt_aggregates(&key, i64::MIN, i64::MAX).await?)
        }
    })
}
