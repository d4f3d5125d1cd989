//! The HTTP layer: one module per resource, each with its own `configure`.
//! Handlers are thin: extract (auth and validation happen in extractors),
//! one call into the engine, map to a response.

pub mod aggregates;
pub mod alerts;
pub mod aliases;
pub mod analytics;
pub mod assignments;
pub mod audit;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod experiments;
pub mod extract;
pub mod feed;
pub mod health;
pub mod holdouts;
pub mod keys;
pub mod limits;
pub mod observe;
pub mod ofrep;
pub mod openapi;
pub mod performance;
pub mod projects;
pub mod prometheus;
pub mod results;
pub mod scoped;
pub mod stream;
pub mod webhooks;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use abacus_actors::projects::Projects;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use self::error::ApiError;

/// Shared by every handler.
pub struct AppState {
    /// Every project's engine.
    pub projects: Arc<Projects>,
    /// `/readyz` fails above this fraction of the mailbox's capacity.
    pub high_water: f64,
    /// The OpenFeature routes' settings.
    pub ofrep: ofrep::Settings,
}

/// Request-size limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body in bytes.
    pub body_bytes: usize,
    /// Most events in one `POST /v1/events`.
    pub max_batch: usize,
    /// Deadline for a body once its headers arrived (408 after).
    pub body_timeout: Duration,
    /// Most experiment keys in one `POST /v1/assignments`.
    pub max_assignment_experiments: usize,
    /// Largest magnitude of an event's value.
    pub max_abs_value: f64,
}

/// Mounts every route, the extractor configuration and the JSON 404.
/// Handlers get the service they call as [`scoped::Scoped`]`<Service>`,
/// the acting project's; the server-wide ones (projects, keys) as
/// `web::Data`.
pub fn configure(
    state: web::Data<AppState>,
    keys: auth::Keys,
    rates: limits::RateLimits,
    limits: Limits,
) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let root = state.projects.root();
        cfg.app_data(web::Data::from(Arc::clone(&state.projects)))
            .app_data(web::Data::from(Arc::clone(root.credentials())))
            .app_data(state.clone())
            .app_data(keys)
            .app_data(rates)
            .app_data(web::Data::new(limits))
            .app_data(extract::BodyLimit(limits.body_bytes))
            .app_data(extract::BodyTimeout(limits.body_timeout))
            .app_data(extract::query_config())
            .app_data(extract::path_config())
            // The hot routes first: the router tries resources in order,
            // and each dynamic pattern it passes costs a regex match (with
            // an allocation for its captures). Static paths cost a string
            // comparison, so they lead: health probes and events pass no
            // regex, assignments one.
            .configure(health::configure)
            .configure(events::configure)
            .configure(assignments::configure)
            .configure(ofrep::configure)
            .configure(experiments::configure)
            .configure(holdouts::configure)
            .configure(aliases::configure)
            .configure(aggregates::configure)
            .configure(results::configure)
            .configure(analytics::configure)
            .configure(webhooks::configure)
            .configure(alerts::configure)
            .configure(keys::configure)
            .configure(audit::configure)
            .configure(projects::configure)
            .configure(stream::configure)
            .configure(ws::configure)
            .configure(performance::configure)
            .configure(dashboard::configure)
            .configure(prometheus::configure)
            .configure(openapi::configure)
            .default_service(web::to(not_found));
    }
}

/// What no route took: 405 with `Allow` when the path is a documented
/// route's (with other methods), else the JSON 404.
async fn not_found(req: HttpRequest) -> HttpResponse {
    let allowed = openapi::methods_of(req.path());
    if allowed.is_empty() {
        return ApiError::RouteNotFound(format!("{} {}", req.method(), req.path()))
            .error_response();
    }
    ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.path().to_owned(),
        allow: allowed.join(", "),
    }
    .error_response()
}
