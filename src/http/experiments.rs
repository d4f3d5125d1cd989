//! `/v1/experiments`: create, list, read, patch, archive, and the lifecycle.

use abacus_actors::domain::{
    Action, Experiment, ExperimentIn, ExperimentKey, ExperimentPatch, Principal, Status, VariantKey,
};
use abacus_actors::experiments::Experiments;
use actix_web::http::header;
use actix_web::{delete, get, patch, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Editor, Viewer};
use super::error::ApiResult;
use super::extract::{self, MaybeJson, NoBody, ValidJson};
use super::scoped::Scoped;

// Bodies are read from JSON objects only, never from arrays of their
// fields (abacus_actors::objects_only).
abacus_actors::objects_only!(CompleteIn);

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create)
        .service(list)
        .service(read)
        .service(update)
        .service(archive)
        .service(start)
        .service(pause)
        .service(resume)
        .service(complete);
}

/// Query of `GET /v1/experiments`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only experiments in this status; archived ones are listed only when asked for.
    status: Option<Status>,
    /// Page size, 1..=500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One page of experiments.
#[derive(Serialize, ToSchema)]
pub struct ExperimentPage<'a> {
    /// The experiments, in key order.
    experiments: Vec<&'a Experiment>,
    /// Cursor of the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// Body of `POST /v1/experiments/{key}/complete`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct CompleteIn {
    /// Variant to serve everyone from now on; the control if absent.
    winner: Option<VariantKey>,
}

/// Create an experiment (as a draft).
#[utoipa::path(
    operation_id = "create_experiment",
    tag = "experiments",
    request_body = ExperimentIn,
    responses(
        (status = 201, description = "Created", body = Experiment),
        (status = 409, description = "Key already taken"),
        (status = 422, description = "Invalid experiment"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/experiments")]
async fn create(
    Editor(by): Editor,
    experiments: Scoped<Experiments>,
    ValidJson(input): ValidJson<ExperimentIn>,
) -> ApiResult<HttpResponse> {
    let created = experiments.create(input, &by).await?;
    let experiment = created.experiment();
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/v1/experiments/{}", experiment.key),
        ))
        .json(experiment))
}

/// List experiments, in key order, a page at a time.
#[utoipa::path(
    operation_id = "list_experiments",
    tag = "experiments",
    params(ListQuery),
    responses((status = 200, description = "A page of experiments", body = ExperimentPage)),
    security(("bearer" = []))
)]
#[get("/v1/experiments")]
async fn list(
    _: Viewer,
    experiments: Scoped<Experiments>,
    query: web::Query<ListQuery>,
) -> ApiResult<HttpResponse> {
    let limit = extract::page_limit(query.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let page = experiments.list(query.status, query.cursor.as_deref(), limit);
    Ok(HttpResponse::Ok().json(ExperimentPage {
        experiments: page.items.iter().map(|c| c.experiment()).collect(),
        next_cursor: page.next.map(String::from),
    }))
}

/// Read one experiment.
#[utoipa::path(
    operation_id = "read_experiment",
    tag = "experiments",
    params(("key" = ExperimentKey, Path, description = "Experiment key")),
    responses(
        (status = 200, description = "The experiment", body = Experiment),
        (status = 404, description = "No such experiment"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/experiments/{key}")]
async fn read(
    _: Viewer,
    experiments: Scoped<Experiments>,
    key: web::Path<String>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(experiments.get(&key)?.experiment()))
}

/// Change an experiment. Name, description, coverage, forced overrides,
/// metrics, primary metric, alpha, mixing variance, correction and
/// guardrails may change any time; variants, salt, bucketing and layer only
/// while it is a draft.
#[utoipa::path(
    operation_id = "update_experiment",
    tag = "experiments",
    params(("key" = ExperimentKey, Path, description = "Experiment key")),
    request_body = ExperimentPatch,
    responses(
        (status = 200, description = "The changed experiment", body = Experiment),
        (status = 404, description = "No such experiment"),
        (status = 409, description = "Field not editable in this status"),
        (status = 422, description = "Invalid change"),
    ),
    security(("bearer" = []))
)]
#[patch("/v1/experiments/{key}")]
async fn update(
    Editor(by): Editor,
    experiments: Scoped<Experiments>,
    key: web::Path<String>,
    ValidJson(patch): ValidJson<ExperimentPatch>,
) -> ApiResult<HttpResponse> {
    let changed = experiments.patch(&key, patch, &by).await?;
    Ok(HttpResponse::Ok().json(changed.experiment()))
}

/// Archive an experiment: it stops assigning, its data is kept and its key
/// stays taken.
#[utoipa::path(
    operation_id = "archive_experiment",
    tag = "experiments",
    params(("key" = ExperimentKey, Path, description = "Experiment key")),
    responses(
        (status = 200, description = "The archived experiment", body = Experiment),
        (status = 404, description = "No such experiment"),
        (status = 409, description = "Already archived"),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/experiments/{key}")]
async fn archive(
    Editor(by): Editor,
    experiments: Scoped<Experiments>,
    key: web::Path<String>,
) -> ApiResult<HttpResponse> {
    transition(&experiments, &by, &key, Action::Archive, None).await
}

/// Start a draft: `draft → running`.
#[utoipa::path(
    operation_id = "start_experiment",
    tag = "experiments",
    params(("key" = ExperimentKey, Path, description = "Experiment key")),
    responses(
        (status = 200, description = "The running experiment", body = Experiment),
        (status = 404, description = "No such experiment"),
        (status = 409, description = "Not a draft"),
        (status = 422, description = "A body was sent: the action takes none"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/experiments/{key}/start")]
async fn start(
    Editor(by): Editor,
    experiments: Scoped<Experiments>,
    key: web::Path<String>,
    _: NoBody,
) -> ApiResult<HttpResponse> {
    transition(&experiments, &by, &key, Action::Start, None).await
}

/// Pause: `running → paused`; everyone is served the control meanwhile.
#[utoipa::path(
    operation_id = "pause_experiment",
    tag = "experiments",
    params(("key" = ExperimentKey, Path, description = "Experiment key")),
    responses(
        (status = 200, description = "The paused experiment", body = Experiment),
        (status = 404, description = "No such experiment"),
        (status = 409, description = "Not running"),
        (status = 422, description = "A body was sent: the action takes none"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/experiments/{key}/pause")]
async fn pause(
    Editor(by): Editor,
    experiments: Scoped<Experiments>,
    key: web::Path<String>,
    _: NoBody,
) -> ApiResult<HttpResponse> {
    transition(&experiments, &by, &key, Action::Pause, None).await
}

/// Resume: `paused → running`.
#[utoipa::path(
    operation_id = "resume_experiment",
    tag = "experiments",
    params(("key" = ExperimentKey, Path, description = "Experiment key")),
    responses(
        (status = 200, description = "The running experiment", body = Experiment),
        (status = 404, description = "No such experiment"),
        (status = 409, description = "Not paused"),
        (status = 422, description = "A body was sent: the action takes none"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/experiments/{key}/resume")]
async fn resume(
    Editor(by): Editor,
    experiments: Scoped<Experiments>,
    key: web::Path<String>,
    _: NoBody,
) -> ApiResult<HttpResponse> {
    transition(&experiments, &by, &key, Action::Resume, None).await
}

/// Every lifecycle route: the action, answered with the experiment after it.
async fn transition(
    experiments: &Experiments,
    by: &Principal,
    key: &str,
    action: Action,
    winner: Option<VariantKey>,
) -> ApiResult<HttpResponse> {
    let changed = experiments.transition(key, action, winner, by).await?;
    Ok(HttpResponse::Ok().json(changed.experiment()))
}

/// Complete an experiment (`running | paused → completed`): from now on
/// every unit is served the winner.
#[utoipa::path(
    operation_id = "complete_experiment",
    tag = "experiments",
    params(("key" = ExperimentKey, Path, description = "Experiment key")),
    request_body(content = Option<CompleteIn>, description = "Optional: the winner"),
    responses(
        (status = 200, description = "The completed experiment", body = Experiment),
        (status = 404, description = "No such experiment"),
        (status = 409, description = "Not running or paused"),
        (status = 422, description = "The winner is not a variant of the experiment"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/experiments/{key}/complete")]
async fn complete(
    Editor(by): Editor,
    experiments: Scoped<Experiments>,
    key: web::Path<String>,
    MaybeJson(body): MaybeJson<Option<CompleteIn>>,
) -> ApiResult<HttpResponse> {
    let winner = body.flatten().and_then(|b| b.winner);
    transition(&experiments, &by, &key, Action::Complete, winner).await
}
