//! The OpenAPI 3 document, generated from the handlers' annotations and
//! served at `/openapi.json`. A route missing here fails the
//! `openapi_covers_every_route` test.

use std::sync::OnceLock;

use actix_web::{get, web, HttpResponse};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::Response;
use utoipa::{Modify, OpenApi};

use super::{
    aggregates, alerts, analytics, assignments, events, experiments, health, ofrep, performance,
    prometheus, results, stream, webhooks, ws,
};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "abacus",
        description = "Self-hosted A/B testing and event analytics. Errors are \
            `{\"error\": {\"code\", \"message\", \"field\"?}}`. Every `/v1` route \
            may answer 401 `unauthorized`, 403 `forbidden` (a key of the wrong scope, or \
            a cross-site request to a server without keys) and 429 `rate_limited` (with \
            `Retry-After`); every route taking a body may answer 408 `request_timeout`, \
            413 `payload_too_large` and 415 `unsupported_media_type`."
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
        ofrep::evaluate_one,
        ofrep::evaluate_all,
        events::accept,
        events::export,
        health::healthz,
        health::readyz,
        prometheus::scrape,
        performance::server_stats,
        openapi_json,
    ),
    // Schemas only parameters name: utoipa registers those of bodies and
    // responses by itself, not these.
    components(schemas(
        experiments::LifecycleAction,
        aggregates::Source,
        events::AckMode
    )),
    modifiers(&BearerAuth, &CommonErrors),
    tags(
        (name = "experiments", description = "Experiments and their lifecycle"),
        (name = "assignments", description = "Which variant a unit sees"),
        (name = "openfeature", description = "OpenFeature remote evaluation (OFREP): experiments as flags"),
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
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The errors any `/v1` route, or any route with a body, may answer with,
/// added to every operation so clients see them where they look.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let add = |op: &mut Operation, status: &str, description: &str| {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| Response::new(description).into());
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                add(op, "401", "unauthorized: no valid bearer key");
                add(
                    op,
                    "403",
                    "forbidden: the key's scope does not allow this route, or (without \
                     keys) a cross-site browser request",
                );
                add(
                    op,
                    "429",
                    "rate_limited: this key's (or, without keys, this address's) requests \
                     per second are used up; Retry-After says when to retry",
                );
                if op.request_body.is_some() {
                    add(
                        op,
                        "408",
                        "request_timeout: the body did not arrive within server.body_timeout_ms",
                    );
                    add(
                        op,
                        "413",
                        "payload_too_large: body over server.max_body_bytes",
                    );
                    add(
                        op,
                        "415",
                        "unsupported_media_type: a body needs Content-Type application/json",
                    );
                }
            }
        }
    }
}

/// The methods the document lists for the route `path` is an instance of
/// (a `{param}` segment matches any one segment); none when no route
/// matches. The document is the router's truth: `tests/it/openapi.rs`
/// checks that they agree.
pub fn methods_of(path: &str) -> Vec<&'static str> {
    static ROUTES: OnceLock<Vec<(Vec<String>, Vec<&'static str>)>> = OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        ApiDoc::openapi()
            .paths
            .paths
            .iter()
            .map(|(template, item)| {
                let segments = template.split('/').map(str::to_owned).collect();
                let methods = [
                    ("GET", item.get.is_some()),
                    ("POST", item.post.is_some()),
                    ("PUT", item.put.is_some()),
                    ("PATCH", item.patch.is_some()),
                    ("DELETE", item.delete.is_some()),
                ];
                let methods = methods
                    .into_iter()
                    .filter(|(_, has)| *has)
                    .map(|(m, _)| m)
                    .collect();
                (segments, methods)
            })
            .collect()
    });
    let asked: Vec<&str> = path.split('/').collect();
    let mut allowed: Vec<&'static str> = routes
        .iter()
        .filter(|(template, _)| {
            template.len() == asked.len()
                && template.iter().zip(&asked).all(|(t, a)| {
                    (t.starts_with('{') && t.ends_with('}') && !a.is_empty()) || t == a
                })
        })
        .flat_map(|(_, methods)| methods.iter().copied())
        .collect();
    allowed.sort_unstable();
    allowed.dedup();
    allowed
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
