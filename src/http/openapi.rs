//! The OpenAPI 3 document, generated from the handlers' annotations and
//! served at `/openapi.json`. A route missing here fails the
//! `openapi_covers_every_route` test.

use actix_web::{get, web, HttpResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    aggregates, alerts, analytics, assignments, events, experiments, health, performance,
    prometheus, results, stream, webhooks, ws,
};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "abacus",
        description = "Self-hosted A/B testing and event analytics. Errors are \
            `{\"error\": {\"code\", \"message\", \"field\"?}}`."
    ),
    paths(
        experiments::create,
        experiments::list,
        experiments::read,
        experiments::update,
        experiments::archive,
        experiments::lifecycle,
        aggregates::aggregates,
        results::results,
        results::timeline,
        results::sample_size_route,
        analytics::ctr,
        analytics::ranks,
        analytics::response_times,
        analytics::engagement,
        analytics::unit,
        analytics::compare,
        webhooks::create,
        webhooks::list,
        webhooks::read,
        webhooks::remove,
        webhooks::test,
        webhooks::enable,
        webhooks::deliveries,
        alerts::create_rule,
        alerts::list_rules,
        alerts::read_rule,
        alerts::update_rule,
        alerts::delete_rule,
        alerts::list,
        alerts::read,
        alerts::acknowledge,
        alerts::resolve,
        stream::stream,
        ws::ws,
        assignments::assign_one,
        assignments::assign_all,
        events::ingest,
        events::export,
        health::healthz,
        health::readyz,
        prometheus::scrape,
        performance::server_stats,
        openapi_json,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "experiments", description = "Experiments and their lifecycle"),
        (name = "assignments", description = "Which variant a unit sees"),
        (name = "events", description = "What units did"),
        (name = "results", description = "Statistics"),
        (name = "analytics", description = "Clicks, ranks, response and dwell times, units"),
        (name = "webhooks", description = "Signed deliveries of domain events"),
        (name = "live", description = "What is happening now"),
        (name = "alerts", description = "Rules, alerts, acknowledgement and resolution"),
        (name = "operations", description = "Health, metrics and API description"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(openapi_json);
}

/// This document.
#[utoipa::path(tag = "operations", responses((status = 200, description = "OpenAPI 3 JSON")))]
#[get("/openapi.json")]
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
