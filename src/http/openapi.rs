//! The OpenAPI 3 document, generated from the handlers' annotations and
//! served at `/openapi.json`. A route missing here fails the
//! `openapi_covers_every_route` test; `tests/conformance` holds the server
//! to every constraint and status the document states.

use std::sync::OnceLock;

use abacus_actors::domain::MAX_FORCED;
use actix_web::{get, web, HttpResponse};
use serde_json::{json, Value};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, Response, Type};
use utoipa::{Modify, OpenApi};

use super::{
    aggregates, alerts, aliases, analytics, assignments, audit, error, events, experiments, health,
    holdouts, keys, ofrep, performance, projects, prometheus, results, stream, webhooks, ws,
    Limits,
};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "abacus",
        description = "Self-hosted A/B testing and event analytics. Errors are \
            `{\"error\": {\"code\", \"message\", \"field\"?}}`. Every `/v1` route \
            acts in the caller's project (an owner's in the one its `X-Abacus-Project` \
            header names, `default` without one) and may answer 401 `unauthorized`, \
            403 `forbidden` (a key of the wrong scope or project, or a cross-site request \
            to a server without keys), 404 `project_not_found` and 429 `rate_limited` \
            (with `Retry-After`); every route taking a body may answer 408 `request_timeout`, \
            413 `payload_too_large` and 415 `unsupported_media_type`."
    ),
    paths(
        experiments::create,
        experiments::list,
        experiments::read,
        experiments::update,
        experiments::archive,
        experiments::start,
        experiments::pause,
        experiments::resume,
        experiments::complete,
        holdouts::create,
        holdouts::list,
        holdouts::read,
        holdouts::end,
        holdouts::results,
        aggregates::aggregates,
        results::results,
        results::timeline,
        results::predictions,
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
        keys::issue,
        keys::list,
        keys::read,
        keys::rotate,
        keys::revoke,
        projects::create,
        projects::list,
        projects::read,
        projects::change,
        projects::remove,
        audit::list,
        stream::stream,
        ws::ws,
        assignments::assign_one,
        assignments::assign_all,
        aliases::link,
        aliases::identity,
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
        aggregates::Source,
        events::AckMode,
        error::ErrorBody
    )),
    modifiers(&BearerAuth, &CommonErrors),
    tags(
        (name = "experiments", description = "Experiments and their lifecycle"),
        (name = "holdouts", description = "Units kept out of experiments, and what everything shipped does against them"),
        (name = "assignments", description = "Which variant a unit sees"),
        (name = "openfeature", description = "OpenFeature remote evaluation (OFREP): experiments as flags"),
        (name = "events", description = "What units did"),
        (name = "results", description = "Statistics"),
        (name = "analytics", description = "Clicks, ranks, response and dwell times, units"),
        (name = "webhooks", description = "Signed deliveries of domain events"),
        (name = "live", description = "What is happening now"),
        (name = "alerts", description = "Rules, alerts, acknowledgement and resolution"),
        (name = "keys", description = "API keys: issue, list, rotate, revoke"),
        (name = "audit", description = "Who changed what, when, before and after"),
        (name = "projects", description = "The namespaces teams share a server in"),
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

/// The errors routes answer beyond their own, added to every operation so
/// clients (and schemathesis) find each status a route can answer where
/// they look, each `/v1` error with the `Error` body:
/// - every `/v1` route: 401, 403 and 429 (with `Retry-After`);
/// - a route with a body: 400 `malformed_json`, 408, 413, 415 and 422
///   (`invalid_body`: a field of the wrong type or shape; `validation_failed`:
///   a rule over several fields, such as distinct variant keys);
/// - a route with query parameters: 400 `invalid_query`;
/// - a route with path parameters: 404 (a path that names nothing,
///   including one that could not name anything);
/// - 503 answers carry `Retry-After`.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/v1/");
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                if api {
                    add_api_errors(op);
                }
                for (status, response) in op.responses.responses.iter_mut() {
                    if matches!(status.as_str(), "429" | "503") {
                        if let utoipa::openapi::RefOr::T(response) = response {
                            response.headers.insert(
                                "Retry-After".into(),
                                HeaderBuilder::new()
                                    .schema(utoipa::openapi::schema::Object::with_type(
                                        Type::Integer,
                                    ))
                                    .description(Some("Whole seconds to wait before retrying"))
                                    .build(),
                            );
                        }
                    }
                }
            }
        }
    }
}

fn add_api_errors(op: &mut Operation) {
    let located = |place: ParameterIn| {
        op.parameters
            .iter()
            .flatten()
            .any(|p| p.parameter_in == place)
    };
    let (query, path, body) = (
        located(ParameterIn::Query),
        located(ParameterIn::Path),
        op.request_body.is_some(),
    );
    let mut statuses = vec![
        ("401", "unauthorized: no valid bearer key"),
        (
            "403",
            "forbidden: the key's role does not allow this route, or (without keys) a \
             cross-site browser request",
        ),
        (
            "429",
            "rate_limited: this key's (or, without keys, this address's) requests per second \
             are used up",
        ),
    ];
    if query {
        statuses.push((
            "400",
            "invalid_query: a parameter is malformed or out of range",
        ));
    }
    if path {
        statuses.push(("404", "not_found: the path names nothing"));
    }
    if body {
        statuses.extend([
            (
                "400",
                "malformed_json: the body is not JSON (or a parameter is malformed)",
            ),
            (
                "408",
                "request_timeout: the body did not arrive within server.body_timeout_ms",
            ),
            ("413", "payload_too_large: body over server.max_body_bytes"),
            (
                "415",
                "unsupported_media_type: a body needs Content-Type application/json",
            ),
            (
                "422",
                "invalid_body (a field of the wrong type or shape) or validation_failed \
                 (a rule the body breaks)",
            ),
        ]);
    }
    for (status, description) in statuses {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| Response::new(description).into());
    }
    // Every error of a `/v1` route has the one error body.
    for (status, response) in op.responses.responses.iter_mut() {
        if !(status.starts_with('4') || status.starts_with('5')) {
            continue;
        }
        if let utoipa::openapi::RefOr::T(response) = response {
            if response.content.is_empty() {
                response.content.insert(
                    "application/json".into(),
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Error")))
                        .build(),
                );
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

/// The document as served: [`ApiDoc`] with the bounds this server was
/// configured with stated where they apply, encoded once.
pub struct Document(web::Bytes);

impl Document {
    /// The document for a server with these limits.
    pub fn stated(limits: &Limits) -> Self {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        let schemas = &mut doc["components"]["schemas"];
        let bound = limits.max_abs_value;
        merge(
            &mut schemas["EventIn"]["properties"]["value"],
            json!({"minimum": -bound, "maximum": bound}),
        );
        merge(
            &mut schemas["EventsIn"]["oneOf"][1]["properties"]["events"],
            json!({"minItems": 1, "maxItems": limits.max_batch}),
        );
        merge(
            &mut schemas["AssignAllIn"]["properties"]["experiments"],
            json!({"maxItems": limits.max_assignment_experiments}),
        );
        // Both shapes of these are objects; without saying so, generators
        // take any JSON value for the whole body.
        for either in ["EventsIn", "Bucketing"] {
            merge(&mut schemas[either], json!({"type": "object"}));
        }
        // utoipa has no field attribute for it.
        for body in ["ExperimentIn", "ExperimentPatch"] {
            merge(
                &mut schemas[body]["properties"]["forced"],
                json!({"maxProperties": MAX_FORCED}),
            );
        }
        for (path, id, targets) in LINKS {
            let (param, pointer) = id;
            let links: serde_json::Map<String, Value> = targets
                .iter()
                .map(|operation| {
                    let link = json!({
                        "operationId": operation,
                        "parameters": {param: pointer},
                    });
                    ((*operation).to_owned(), link)
                })
                .collect();
            doc["paths"][path]["post"]["responses"]["201"]["links"] = Value::Object(links);
        }
        split_nullable(&mut doc);
        Self(serde_json::to_vec(&doc).unwrap_or_default().into())
    }
}

/// Rewrites every constrained `{"type": [T, "null"], ...}` as `{"oneOf":
/// [{"type": "null"}, {"type": T, ...}]}`: the same values, but generators
/// (schemathesis) meant to break a `maxLength` or a `minimum` no longer
/// offer `null`, which satisfies both, as the breaking value, and
/// schemathesis 4.3 no longer fails drawing a `format`ted string of a
/// list of types.
fn split_nullable(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for child in map.values_mut() {
                split_nullable(child);
            }
            let Some(Value::Array(types)) = map.get("type") else {
                return;
            };
            let [Value::String(ty), Value::String(null)] = types.as_slice() else {
                return;
            };
            if null != "null" {
                return;
            }
            let ty = ty.clone();
            const CONSTRAINTS: [&str; 11] = [
                "format",
                "minLength",
                "maxLength",
                "pattern",
                "minimum",
                "maximum",
                "exclusiveMinimum",
                "exclusiveMaximum",
                "minItems",
                "maxItems",
                "maxProperties",
            ];
            if !CONSTRAINTS.iter().any(|c| map.contains_key(*c)) {
                return;
            }
            // Everything but the annotations moves into the typed branch.
            const ANNOTATIONS: [&str; 4] = ["description", "title", "default", "examples"];
            let (notes, mut typed): (serde_json::Map<_, _>, serde_json::Map<_, _>) =
                std::mem::take(map)
                    .into_iter()
                    .partition(|(k, _)| ANNOTATIONS.contains(&k.as_str()));
            typed.insert("type".into(), Value::String(ty));
            *map = notes;
            map.insert(
                "oneOf".into(),
                json!([{"type": "null"}, Value::Object(typed)]),
            );
        }
        Value::Array(items) => items.iter_mut().for_each(split_nullable),
        _ => {}
    }
}

/// What a create answers leads to the operations on what it created:
/// (the create's path, the parameter and where the answer holds it, the
/// operations). OpenAPI links, which clients and stateful testers follow.
const LINKS: [(&str, (&str, &str), &[&str]); 3] = [
    (
        "/v1/experiments",
        ("key", "$response.body#/key"),
        &[
            "read_experiment",
            "update_experiment",
            "archive_experiment",
            "start_experiment",
            "pause_experiment",
            "resume_experiment",
            "complete_experiment",
            "assign_one",
            "aggregates",
            "results",
            "timeline",
            "compare",
        ],
    ),
    (
        "/v1/webhooks",
        ("id", "$response.body#/id"),
        &[
            "read_webhook",
            "delete_webhook",
            "test_webhook",
            "enable_webhook",
            "list_deliveries",
        ],
    ),
    (
        "/v1/alerts/rules",
        ("id", "$response.body#/id"),
        &["read_rule", "update_rule", "delete_rule"],
    ),
];

/// Adds `fields` to the object `target`.
fn merge(target: &mut Value, fields: Value) {
    if let (Value::Object(target), Value::Object(fields)) = (target, fields) {
        target.extend(fields);
    }
}

/// This document.
#[utoipa::path(tag = "operations", responses((status = 200, description = "OpenAPI 3 JSON")))]
#[get("/openapi.json")]
async fn openapi_json(document: web::Data<Document>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.0.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constrained_nullable_becomes_a_choice_with_its_annotations_outside() {
        let mut schema = json!({"properties": {
            "note": {"type": ["string", "null"], "maxLength": 5, "description": "d"},
            "plain": {"type": ["string", "null"]},
        }});
        split_nullable(&mut schema);
        assert_eq!(
            schema["properties"]["note"],
            json!({"description": "d", "oneOf": [{"type": "null"}, {"type": "string", "maxLength": 5}]})
        );
        assert_eq!(
            schema["properties"]["plain"],
            json!({"type": ["string", "null"]})
        );
    }

    #[test]
    fn the_stated_document_is_the_configured_one() {
        let limits = Limits {
            body_bytes: 1,
            max_batch: 3,
            body_timeout: std::time::Duration::from_secs(1),
            max_assignment_experiments: 4,
            max_abs_value: 5.0,
        };
        let doc: Value = serde_json::from_slice(&Document::stated(&limits).0).unwrap();
        let events = &doc["components"]["schemas"]["EventsIn"];
        assert_eq!(events["type"], "object");
        assert_eq!(events["oneOf"][1]["properties"]["events"]["maxItems"], 3);
    }
}
