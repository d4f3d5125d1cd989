//! `/v1/aliases`: identity stitching. Links an id a unit was known by (an
//! anonymous visitor's) to the unit it signed in as, so that both are one
//! person in every experiment (see docs/assignment.md).

use abacus_actors::domain::{Alias, UnitId};
use abacus_actors::ingest::{Identity, Intake};
use actix_web::{get, post, web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::{Ingest, Viewer};
use super::error::ApiResult;
use super::extract::ValidJson;
use super::scoped::Scoped;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(link).service(identity);
}

/// Body of `POST /v1/aliases`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasIn {
    /// The id to link: an anonymous visitor's, a device's.
    from: UnitId,
    /// The unit it is: the signed-in user's id.
    to: UnitId,
}

/// Link an id to a unit: from now on the id is that unit. The unit keeps
/// the variants the id was exposed to (where both were exposed, the
/// earlier first exposure wins), events under either id count for the
/// unit, and results count the person once. Answers once the id's state
/// is the unit's.
#[utoipa::path(
    operation_id = "link_alias",
    tag = "assignments",
    request_body = AliasIn,
    responses(
        (status = 201, description = "Linked", body = Alias),
        (status = 200, description = "Linked already, as asked", body = Alias),
        (status = 409, description = "`link_conflict`: the id is linked to another unit, ids are linked to it, or the unit has `limits.max_links_per_unit` ids; `unsupported` in cluster mode"),
        (status = 422, description = "Invalid ids, or an id linked to itself"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/aliases")]
async fn link(
    _: Ingest,
    intake: Scoped<Intake>,
    ValidJson(input): ValidJson<AliasIn>,
) -> ApiResult<HttpResponse> {
    let (alias, created): (Alias, bool) =
        intake.link(input.from.as_str(), input.to.as_str()).await?;
    Ok(match created {
        true => HttpResponse::Created().json(alias),
        false => HttpResponse::Ok().json(alias),
    })
}

/// A unit's identity: the unit this id links to, if any, and the ids
/// linked to it.
#[utoipa::path(
    operation_id = "read_alias",
    tag = "assignments",
    params(("unit_id" = UnitId, Path, description = "An id or a unit")),
    responses((status = 200, description = "What it links to and what links to it", body = Identity)),
    security(("bearer" = []))
)]
#[get("/v1/aliases/{unit_id}")]
async fn identity(
    _: Viewer,
    intake: Scoped<Intake>,
    unit: web::Path<UnitId>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(intake.identity(unit.as_str()).await?))
}
