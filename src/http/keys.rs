//! `/v1/keys`: API keys issued, listed, rotated and revoked through the
//! API. A secret is shown once, in the answer that made it.

use abacus_actors::credentials::Credentials;
use abacus_actors::domain::{KeyId, KeyIn, KeyIssued, KeyOut, RotateIn};
use abacus_actors::projects::Projects;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{Administrator, Keys};
use super::error::{ApiError, ApiResult};
use super::extract::{MaybeJson, ValidJson};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(issue)
        .service(list)
        .service(read)
        .service(rotate)
        .service(revoke);
}

/// Keys are only issued by a server that checks them.
fn require_auth(req: &HttpRequest) -> ApiResult<()> {
    match req.app_data::<Keys>() {
        Some(keys) if !keys.is_open() => Ok(()),
        _ => Err(ApiError::AuthOff),
    }
}

/// Issue a key of a role in a project. An admin issues keys of its own
/// project up to `admin`; only an owner issues owner keys.
#[utoipa::path(
    operation_id = "issue_key",
    tag = "keys",
    request_body = KeyIn,
    responses(
        (status = 201, description = "Issued; the secret is shown only here", body = KeyIssued),
        (status = 403, description = "The caller may not issue a key of this role or project"),
        (status = 409, description = "The server runs without keys (`auth_off`)"),
        (status = 422, description = "Bad name, project or expiry, or `auth.max_keys` reached"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/keys")]
async fn issue(
    Administrator(by): Administrator,
    req: HttpRequest,
    projects: web::Data<Projects>,
    ValidJson(input): ValidJson<KeyIn>,
) -> ApiResult<HttpResponse> {
    require_auth(&req)?;
    let issued = projects.issue_key(input, &by).await?;
    Ok(HttpResponse::Created()
        .insert_header(("location", format!("/v1/keys/{}", issued.key.id)))
        .json(issued))
}

/// Every key.
#[derive(Serialize, ToSchema)]
pub struct KeyList {
    /// By id (in issue order); secrets are never listed.
    keys: Vec<KeyOut>,
}

/// List the keys the caller manages (an owner: every key).
#[utoipa::path(
    operation_id = "list_keys",
    tag = "keys",
    responses((status = 200, description = "Keys, without secrets", body = KeyList)),
    security(("bearer" = []))
)]
#[get("/v1/keys")]
async fn list(
    Administrator(by): Administrator,
    credentials: web::Data<Credentials>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(KeyList {
        keys: credentials.list(&by),
    }))
}

/// One key, without its secret.
#[utoipa::path(
    operation_id = "read_key",
    tag = "keys",
    params(("id" = KeyId, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key", body = KeyOut),
        (status = 404, description = "No such key (or of another project)"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/keys/{id}")]
async fn read(
    Administrator(by): Administrator,
    credentials: web::Data<Credentials>,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(credentials.get(&id, &by)?))
}

/// Give a key a new secret. With `grace_s`, the old secret keeps working
/// that many seconds more, so clients can move over without a failure.
#[utoipa::path(
    operation_id = "rotate_key",
    tag = "keys",
    params(("id" = KeyId, Path, description = "Key id")),
    request_body(content = Option<RotateIn>, description = "Optional: the old secret's grace"),
    responses(
        (status = 200, description = "The new secret, shown only here", body = KeyIssued),
        (status = 403, description = "The caller may not manage this key"),
        (status = 404, description = "No such key (or of another project)"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/keys/{id}/rotate")]
async fn rotate(
    Administrator(by): Administrator,
    credentials: web::Data<Credentials>,
    id: web::Path<String>,
    MaybeJson(body): MaybeJson<Option<RotateIn>>,
) -> ApiResult<HttpResponse> {
    let input = body.flatten().unwrap_or_default();
    Ok(HttpResponse::Ok().json(credentials.rotate(&id, input, &by).await?))
}

/// Revoke a key: its secrets stop working at once, on every node.
#[utoipa::path(
    operation_id = "revoke_key",
    tag = "keys",
    params(("id" = KeyId, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key as it was", body = KeyOut),
        (status = 403, description = "The caller may not manage this key"),
        (status = 404, description = "No such key (or of another project)"),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/keys/{id}")]
async fn revoke(
    Administrator(by): Administrator,
    credentials: web::Data<Credentials>,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(credentials.revoke(&id, &by).await?))
}
