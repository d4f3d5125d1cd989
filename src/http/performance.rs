//! `GET /v1/server/stats`: how the server is doing right now, for the
//! dashboard's performance panel (Prometheus has the full picture).

use abacus_actors::alerts::{Alerts, ServerFigures};
use abacus_actors::ingest::Intake;
use abacus_actors::live::Live;
use actix_web::{get, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Viewer;
use super::error::{ApiError, ApiResult};
use super::scoped::Scoped;

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(server_stats);
}

/// Query of `GET /v1/server/stats`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Seconds to look back over, 1-300 (default 60).
    #[param(minimum = 1, maximum = 300)]
    window_s: Option<u32>,
}

/// The server now.
#[derive(Serialize, ToSchema)]
pub struct ServerStats {
    /// Rates and response times over the window.
    #[serde(flatten)]
    figures: ServerFigures,
    /// Events waiting for the writer.
    mailbox_depth: usize,
    /// The mailbox's capacity.
    mailbox_capacity: usize,
    /// Clients on `/v1/stream` and `/v1/ws`.
    stream_clients: usize,
}

/// Requests/s, error rate, events/s, event response-time percentiles over
/// a recent window, and the ingest mailbox.
#[utoipa::path(
    tag = "operations",
    params(StatsQuery),
    responses((status = 200, description = "The server now", body = ServerStats)),
    security(("bearer" = []))
)]
#[get("/v1/server/stats")]
async fn server_stats(
    _: Viewer,
    alerts: Scoped<Alerts>,
    intake: Scoped<Intake>,
    live: Scoped<Live>,
    query: web::Query<StatsQuery>,
) -> ApiResult<HttpResponse> {
    let window = query.window_s.unwrap_or(60);
    if !(1..=300).contains(&window) {
        return Err(ApiError::bad_query("window_s", "window_s must be 1-300"));
    }
    let figures = alerts.server_figures(window).await?;
    let (mailbox_depth, mailbox_capacity) = intake.mailbox();
    Ok(HttpResponse::Ok().json(ServerStats {
        figures,
        mailbox_depth,
        mailbox_capacity,
        stream_clients: live.clients(),
    }))
}
