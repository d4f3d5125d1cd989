//! Liveness and readiness probes.

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(healthz).service(readyz);
}

/// Probe answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `not_ready`.
    status: &'static str,
}

/// Alive: the process answers HTTP.
#[utoipa::path(tag = "operations", responses((status = 200, body = Health)))]
#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Ready: the store is open and the engine's actors and writers run.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health))
)]
#[get("/readyz")]
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.engine.is_ready() {
        HttpResponse::Ok().json(Health { status: "ready" })
    } else {
        HttpResponse::ServiceUnavailable().json(Health {
            status: "not_ready",
        })
    }
}
