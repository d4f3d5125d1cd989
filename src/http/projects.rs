//! `/v1/projects`: the namespaces a server's teams work in, managed by its
//! owners. Each project's data is its own; a credential acts in its
//! project (an owner in the one `X-Abacus-Project` names).

use abacus_actors::domain::{Project, ProjectIn, ProjectKey, ProjectPatch, QuotaLimits};
use abacus_actors::projects::Projects;
use actix_web::{delete, get, patch, post, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Owner;
use super::error::ApiResult;
use super::extract::ValidJson;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create)
        .service(list)
        .service(read)
        .service(change)
        .service(remove);
}

/// A project, and the quotas in force for it.
#[derive(Serialize, ToSchema)]
pub struct ProjectOut {
    #[serde(flatten)]
    project: Project,
    /// Its own quotas over the server's (`[quotas]`).
    quotas_in_force: QuotaLimits,
}

impl ProjectOut {
    fn of(projects: &Projects, project: Project) -> Self {
        Self {
            quotas_in_force: projects.quotas_of(&project),
            project,
        }
    }
}

/// Create a project, with a store of its own.
#[utoipa::path(
    operation_id = "create_project",
    tag = "projects",
    request_body = ProjectIn,
    responses(
        (status = 201, description = "The project", body = ProjectOut),
        (status = 409, description = "A project has this key (`project_exists`), or the server runs in cluster mode (`unsupported`)"),
        (status = 422, description = "Bad name, description or quota, or `projects.max_projects` reached"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/projects")]
async fn create(
    Owner(by): Owner,
    projects: web::Data<Projects>,
    ValidJson(input): ValidJson<ProjectIn>,
) -> ApiResult<HttpResponse> {
    let project = projects.create(input, &by).await?;
    Ok(HttpResponse::Created()
        .insert_header(("location", format!("/v1/projects/{}", project.key)))
        .json(ProjectOut::of(&projects, project)))
}

/// Every project.
#[derive(Serialize, ToSchema)]
pub struct ProjectList {
    /// By key; `default` is always there.
    projects: Vec<ProjectOut>,
}

/// List the projects.
#[utoipa::path(
    operation_id = "list_projects",
    tag = "projects",
    responses((status = 200, description = "Every project", body = ProjectList)),
    security(("bearer" = []))
)]
#[get("/v1/projects")]
async fn list(_: Owner, projects: web::Data<Projects>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(ProjectList {
        projects: (projects.list().await?.into_iter())
            .map(|p| ProjectOut::of(&projects, p))
            .collect(),
    }))
}

/// One project.
#[utoipa::path(
    operation_id = "read_project",
    tag = "projects",
    params(("key" = ProjectKey, Path, description = "Project key")),
    responses(
        (status = 200, description = "The project", body = ProjectOut),
        (status = 404, description = "No such project"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/projects/{key}")]
async fn read(
    _: Owner,
    projects: web::Data<Projects>,
    key: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let project = projects.get(&key).await?;
    Ok(HttpResponse::Ok().json(ProjectOut::of(&projects, project)))
}

/// Change a project's name, description or quotas (a quota set to `null`
/// is the server's again).
#[utoipa::path(
    operation_id = "update_project",
    tag = "projects",
    params(("key" = ProjectKey, Path, description = "Project key")),
    request_body = ProjectPatch,
    responses(
        (status = 200, description = "The project", body = ProjectOut),
        (status = 404, description = "No such project"),
        (status = 422, description = "Bad name, description or quota"),
    ),
    security(("bearer" = []))
)]
#[patch("/v1/projects/{key}")]
async fn change(
    Owner(by): Owner,
    projects: web::Data<Projects>,
    key: web::Path<String>,
    ValidJson(patch): ValidJson<ProjectPatch>,
) -> ApiResult<HttpResponse> {
    let project = projects.patch(&key, patch, &by).await?;
    Ok(HttpResponse::Ok().json(ProjectOut::of(&projects, project)))
}

/// Delete a project: its keys are revoked and its data is gone (removed
/// from disk at the next start). `default` cannot be deleted.
#[utoipa::path(
    operation_id = "delete_project",
    tag = "projects",
    params(("key" = ProjectKey, Path, description = "Project key")),
    responses(
        (status = 200, description = "The project as it was", body = Project),
        (status = 404, description = "No such project"),
        (status = 422, description = "The default project"),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/projects/{key}")]
async fn remove(
    Owner(by): Owner,
    projects: web::Data<Projects>,
    key: web::Path<String>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(projects.delete(&key, &by).await?))
}
