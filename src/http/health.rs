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
    /// Why not ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<String>,
}

/// Alive: the process answers HTTP.
#[utoipa::path(tag = "operations", responses((status = 200, body = Health)))]
#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok",
        reasons: Vec::new(),
    })
}

/// Ready: the store is open, the engine's actors and writers run, the
/// event store has not failed (a commit refused after every retry, until
/// restart), and the ingest mailbox is below its high-water mark
/// (`ingest.high_water`).
#[utoipa::path(
    tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health))
)]
#[get("/readyz")]
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let mut reasons = Vec::new();
    // Every project's engine: a failure in one is the server's.
    for engine in state.projects.engines() {
        if !engine.is_ready() {
            reasons.push("the store or an actor is not running".to_owned());
        }
        if let Some(failure) = engine.intake().store_failure() {
            reasons.push(format!(
                "the event store failed ({failure}); events are refused until abacus is restarted"
            ));
        }
        let (depth, capacity) = engine.intake().mailbox();
        if depth as f64 > state.high_water * capacity as f64 {
            reasons.push(format!(
                "ingest mailbox above its high-water mark ({depth} of {capacity})"
            ));
        }
    }
    reasons.dedup();
    if reasons.is_empty() {
        HttpResponse::Ok().json(Health {
            status: "ready",
            reasons,
        })
    } else {
        HttpResponse::ServiceUnavailable().json(Health {
            status: "not_ready",
            reasons,
        })
    }
}
