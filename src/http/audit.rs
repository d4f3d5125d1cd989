//! `GET /v1/audit`: who changed what, when, with the values before and
//! after.

use abacus_actors::domain::{unix_ms, AuditEntry, AuditFilter, ResourceKind, Role};
use abacus_actors::projects::Projects;
use actix_web::{get, web, HttpResponse};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::auth::Administrator;
use super::error::{ApiError, ApiResult};
use super::extract;

const MAX_PAGE: usize = 500;
/// Longest `actor` or `resource_id` asked for: longer than any there is.
const MAX_NAME_CHARS: usize = 300;

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(list);
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this project's changes (an admin sees its own project's only).
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    project: Option<String>,
    /// Only this actor's: a key id, `config/<role>/<n>`, `jwt:<subject>`.
    #[param(max_length = 300)] // MAX_NAME_CHARS
    actor: Option<String>,
    /// Only changes to this kind of thing.
    resource: Option<ResourceKind>,
    /// Only changes to the thing with this key or id.
    #[param(max_length = 300)] // MAX_NAME_CHARS
    resource_id: Option<String>,
    /// Inclusive start (RFC 3339); default the beginning.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<OffsetDateTime>,
    /// Exclusive end (RFC 3339); default now and later.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<OffsetDateTime>,
    /// Page size, 1..=500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^audit_[0-9a-f]{32}$")]
    cursor: Option<String>,
}

/// A page of the audit log.
#[derive(Serialize, ToSchema)]
pub struct AuditPageOut {
    /// Newest first.
    entries: Vec<AuditEntry>,
    /// Cursor of the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// Changes made through the API, newest first: experiments and their
/// lifecycle, keys. Admins see their project's, owners every project's.
#[utoipa::path(
    operation_id = "list_audit",
    tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "A page of the audit log", body = AuditPageOut)),
    security(("bearer" = []))
)]
#[get("/v1/audit")]
async fn list(
    Administrator(by): Administrator,
    projects: web::Data<Projects>,
    query: web::Query<AuditQuery>,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    let limit = extract::page_limit(query.limit, 50, MAX_PAGE)?;
    for (field, value) in [("actor", &query.actor), ("resource_id", &query.resource_id)] {
        if value
            .as_ref()
            .is_some_and(|v| v.chars().count() > MAX_NAME_CHARS)
        {
            return Err(ApiError::bad_query(
                field,
                format!("at most {MAX_NAME_CHARS} characters"),
            ));
        }
    }
    if let Some(cursor) = &query.cursor {
        let hex = cursor.strip_prefix("audit_").unwrap_or("");
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad_query("cursor", "not a cursor from this API"));
        }
    }
    // An admin reads its own project's log; an owner any project's.
    let project = match (by.role, query.project) {
        (Role::Owner, asked) => asked,
        (_, Some(asked)) if *asked != *by.project => return Err(ApiError::Forbidden),
        _ => Some(by.project.to_string()),
    };
    let filter = AuditFilter {
        project,
        actor: query.actor,
        resource: query.resource,
        resource_id: query.resource_id,
    };
    let ms = |t: OffsetDateTime| u64::try_from(unix_ms(t)).unwrap_or(0);
    let from = query.from.map_or(0, ms);
    let to = query.to.map_or(u64::MAX, ms);
    let page = projects
        .audit(filter, (from, to), query.cursor, limit)
        .await?;
    Ok(HttpResponse::Ok().json(AuditPageOut {
        entries: page.entries,
        next_cursor: page.next,
    }))
}
