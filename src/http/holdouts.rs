//! `/v1/holdouts`: units kept out of experiments to measure what everything
//! shipped does together.

use abacus_actors::domain::{ExperimentKey, Holdout, HoldoutIn, PhaseView};
use abacus_actors::experiments::Experiments;
use abacus_actors::results::compute::ExperimentResults;
use abacus_actors::results::Results;
use actix_web::http::header;
use actix_web::{delete, get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Editor, Viewer};
use super::error::ApiResult;
use super::extract::ValidJson;
use super::scoped::Scoped;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create)
        .service(list)
        .service(read)
        .service(end)
        .service(results);
}

/// Every holdout.
#[derive(Serialize, ToSchema)]
pub struct HoldoutList<'a> {
    /// In key order.
    holdouts: Vec<&'a Holdout>,
}

/// Create a holdout: from now on it keeps `fraction` of all units out of
/// its experiments (all when `experiments` is absent).
#[utoipa::path(
    operation_id = "create_holdout",
    tag = "holdouts",
    request_body = HoldoutIn,
    responses(
        (status = 201, description = "Created", body = Holdout),
        (status = 409, description = "Key already taken by a holdout or an experiment"),
        (status = 422, description = "Invalid holdout"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/holdouts")]
async fn create(
    Editor(by): Editor,
    experiments: Scoped<Experiments>,
    ValidJson(input): ValidJson<HoldoutIn>,
) -> ApiResult<HttpResponse> {
    let created = experiments
        .holdouts()
        .create(input, &by, |key| experiments.exists(key))
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/holdouts/{}", created.key)))
        .json(&*created))
}

/// List the holdouts, ended ones included.
#[utoipa::path(
    operation_id = "list_holdouts",
    tag = "holdouts",
    responses((status = 200, description = "Every holdout", body = HoldoutList)),
    security(("bearer" = []))
)]
#[get("/v1/holdouts")]
async fn list(_: Viewer, experiments: Scoped<Experiments>) -> ApiResult<HttpResponse> {
    let all = experiments.holdouts().all();
    Ok(HttpResponse::Ok().json(HoldoutList {
        holdouts: all.iter().map(|h| &**h).collect(),
    }))
}

/// Read one holdout.
#[utoipa::path(
    operation_id = "read_holdout",
    tag = "holdouts",
    params(("key" = ExperimentKey, Path, description = "Holdout key")),
    responses(
        (status = 200, description = "The holdout", body = Holdout),
        (status = 404, description = "No such holdout"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/holdouts/{key}")]
async fn read(
    _: Viewer,
    experiments: Scoped<Experiments>,
    key: web::Path<String>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(&*experiments.holdouts().get(&key)?))
}

/// End a holdout: its units are served like everyone else from now on; it
/// and its results stay readable.
#[utoipa::path(
    operation_id = "end_holdout",
    tag = "holdouts",
    params(("key" = ExperimentKey, Path, description = "Holdout key")),
    responses(
        (status = 200, description = "The ended holdout", body = Holdout),
        (status = 404, description = "No such holdout"),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/holdouts/{key}")]
async fn end(
    Editor(by): Editor,
    experiments: Scoped<Experiments>,
    key: web::Path<String>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(&*experiments.holdouts().end(&key, &by).await?))
}

/// Query of `GET /v1/holdouts/{key}/results`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HoldoutResultsQuery {
    /// One of the holdout's metrics; all when absent.
    metric: Option<String>,
}

/// Everything shipped against the holdout: the holdout's metrics for the
/// units it holds out (`holdout`, the control) and the units of the same
/// experiments it does not (`exposed`), with the same statistics as an
/// experiment's results.
#[utoipa::path(
    operation_id = "holdout_results",
    tag = "holdouts",
    params(("key" = ExperimentKey, Path, description = "Holdout key"), HoldoutResultsQuery),
    responses(
        (status = 200, description = "The results", body = ExperimentResults),
        (status = 404, description = "No such holdout"),
        (status = 422, description = "Not a metric of the holdout"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/holdouts/{key}/results")]
async fn results(
    _: Viewer,
    experiments: Scoped<Experiments>,
    results: Scoped<Results>,
    key: web::Path<String>,
    query: web::Query<HoldoutResultsQuery>,
) -> ApiResult<HttpResponse> {
    let holdout = experiments.holdouts().get(&key)?;
    let answer = results.holdout(&holdout, query.metric.as_deref(), PhaseView::All)?;
    Ok(HttpResponse::Ok().json(answer))
}
