//! Assignment: which variant a unit sees, for one experiment or all.

use abacus_actors::domain::{ExperimentKey, UnitId};
use abacus_actors::experiments::assignment::Reason;
use abacus_actors::experiments::Assignment;
use abacus_actors::experiments::Experiments;
use abacus_actors::quotas::Quotas;
use actix_web::{get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Ingest;
use super::error::{ApiError, ApiResult};
use super::extract::ValidJson;
use super::scoped::Scoped;

// Bodies are read from JSON objects only, never from arrays of their
// fields (abacus_actors::objects_only).
abacus_actors::objects_only!(AssignAllIn);

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // The static path first: the router tries routes in order, and a
    // dynamic one costs a regex match on every request that passes it.
    cfg.service(assign_all).service(assign_one);
}

/// Query of `GET /v1/experiments/{key}/assignment`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AssignQuery {
    /// The unit to assign.
    #[param(value_type = UnitId)]
    unit_id: String,
    /// Log an exposure (and make the assignment sticky); default true.
    log_exposure: Option<bool>,
}

/// Body of `POST /v1/assignments`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct AssignAllIn {
    /// The unit to assign.
    unit_id: UnitId,
    /// Only these experiments (any status); all running ones if absent.
    experiments: Option<Vec<ExperimentKey>>,
    /// Log exposures (and make assignments sticky); default true.
    log_exposure: Option<bool>,
}

/// One assignment.
#[derive(Serialize, ToSchema)]
pub struct AssignmentOut<'a> {
    /// Experiment key.
    experiment: &'a str,
    /// Variant key served.
    variant: &'a str,
    /// The variant's payload.
    #[schema(value_type = Option<serde_json::Value>)]
    payload: Option<&'a Value>,
    /// Whether the unit takes part (and was exposed).
    in_experiment: bool,
    /// Why this variant.
    reason: Reason,
}

impl<'a> From<&'a Assignment> for AssignmentOut<'a> {
    fn from(a: &'a Assignment) -> Self {
        let variant = a.variant();
        Self {
            experiment: a.experiment().as_str(),
            variant: variant.key.as_str(),
            payload: variant.payload.as_ref(),
            in_experiment: a.in_experiment(),
            reason: a.reason(),
        }
    }
}

/// Every assignment of one unit.
#[derive(Serialize, ToSchema)]
pub struct AssignmentsOut<'a> {
    /// The unit.
    unit_id: &'a str,
    /// One per experiment, in key order.
    assignments: Vec<AssignmentOut<'a>>,
}

/// Assign a unit to one experiment.
#[utoipa::path(
    tag = "assignments",
    params(("key" = ExperimentKey, Path, description = "Experiment key"), AssignQuery),
    responses(
        (status = 200, description = "The assignment", body = AssignmentOut),
        (status = 404, description = "No such experiment"),
        (status = 503, description = "Exposure mailbox full; retry"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/experiments/{key}/assignment")]
async fn assign_one(
    _: Ingest,
    experiments: Scoped<Experiments>,
    quotas: Scoped<Quotas>,
    key: web::Path<String>,
    query: web::Query<AssignQuery>,
) -> ApiResult<HttpResponse> {
    UnitId::check(&query.unit_id).map_err(|message| ApiError::bad_query("unit_id", message))?;
    quotas.admit_assignment()?;
    let assignment = experiments
        .assign(&key, &query.unit_id, query.log_exposure.unwrap_or(true))
        .await?;
    Ok(HttpResponse::Ok().json(AssignmentOut::from(&assignment)))
}

/// Assign a unit to every running experiment (or the named ones) at once.
#[utoipa::path(
    tag = "assignments",
    request_body = AssignAllIn,
    responses(
        (status = 200, description = "The assignments", body = AssignmentsOut),
        (status = 404, description = "A named experiment does not exist"),
        (status = 503, description = "Exposure mailbox full; retry"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/assignments")]
async fn assign_all(
    _: Ingest,
    experiments: Scoped<Experiments>,
    quotas: Scoped<Quotas>,
    ValidJson(body): ValidJson<AssignAllIn>,
) -> ApiResult<HttpResponse> {
    quotas.admit_assignment()?;
    let assignments = experiments
        .assign_all(
            body.unit_id.as_str(),
            body.experiments.as_deref(),
            body.log_exposure.unwrap_or(true),
        )
        .await?;
    Ok(HttpResponse::Ok().json(AssignmentsOut {
        unit_id: body.unit_id.as_str(),
        assignments: assignments.iter().map(AssignmentOut::from).collect(),
    }))
}
