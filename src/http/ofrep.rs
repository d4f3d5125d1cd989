//! The OpenFeature Remote Evaluation Protocol (OFREP, `open-feature/protocol`
//! `service/openapi.yaml`): OpenFeature SDKs evaluate abacus experiments as
//! flags. A flag is an experiment, the context's `targetingKey` is the unit
//! id, the variant is the variant's key and the value its payload (its key
//! when it has none).
//!
//! | abacus reason | OFREP reason | value |
//! | --- | --- | --- |
//! | `hashed`, `sticky` | `SPLIT` | served |
//! | `forced` | `TARGETING_MATCH` | served |
//! | `not_running` | `DISABLED` | served (the control, or the winner) |
//! | `not_in_coverage`, `not_in_layer` | `DEFAULT` | omitted: the SDK serves the caller's default |
//!
//! `metadata` carries abacus's own reason and whether the unit takes part.
//! Evaluations log exposures as assignments do (`ofrep.log_exposure`).
//! Errors are OFREP's: `{key, errorCode, errorDetails}` with 400 or 404;
//! 401 and 403 have no body; 429 has `Retry-After`.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{post, web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::auth::{self, Acting};
use super::error::{ApiError, ErrorBody};
use super::extract::MaybeJsonBytes;
use super::AppState;
use abacus_actors::domain::{ExperimentKey, Need, UnitId};
use abacus_actors::experiments::assignment::Reason;
use abacus_actors::experiments::{Assignment, Experiments};
use abacus_actors::Error as EngineError;

/// `[ofrep]` settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Evaluations log exposures (and make assignments sticky).
    pub log_exposure: bool,
}

/// Registers both routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(evaluate_one).service(evaluate_all);
}

/// The body of both routes as the document states it. It is read by hand
/// ([`targeting_key`]), to answer OFREP's error codes: `PARSE_ERROR`,
/// `TARGETING_KEY_MISSING`, `INVALID_CONTEXT`.
#[derive(ToSchema)]
pub struct EvaluationRequest {
    /// What to evaluate for.
    pub context: EvaluationContext,
}

/// OpenFeature's evaluation context. abacus needs the targeting key: an
/// experiment is split by unit. Other attributes are taken and not used.
#[derive(ToSchema)]
pub struct EvaluationContext {
    /// The unit id.
    #[schema(rename = "targetingKey")]
    pub targeting_key: UnitId,
}

/// One flag's evaluation.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation<'a> {
    /// The flag (experiment) key.
    key: &'a str,
    /// `SPLIT`, `TARGETING_MATCH`, `DISABLED` or `DEFAULT`.
    reason: &'static str,
    /// The variant's key.
    variant: &'a str,
    /// The variant's payload, or its key; absent for `DEFAULT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    value: Option<FlagValue<'a>>,
    /// abacus's own reason and whether the unit takes part.
    metadata: Metadata,
}

/// A flag's value, borrowed from the experiment's snapshot.
#[derive(Serialize)]
#[serde(untagged)]
enum FlagValue<'a> {
    /// The variant's payload.
    Payload(&'a Value),
    /// Its key, when it has no payload.
    Key(&'a str),
}

/// What abacus says of an evaluation beyond OFREP's reason.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    /// `hashed`, `sticky`, `forced`, `not_running`, `not_in_coverage` or
    /// `not_in_layer`.
    reason: &'static str,
    /// Whether the unit takes part.
    in_experiment: bool,
}

impl<'a> Evaluation<'a> {
    fn of(a: &'a Assignment) -> Self {
        let variant = a.variant();
        // `DEFAULT` omits the value, so that the SDK serves the caller's.
        let (reason, served) = match a.reason() {
            Reason::Hashed | Reason::Sticky => ("SPLIT", true),
            Reason::Forced => ("TARGETING_MATCH", true),
            Reason::NotRunning => ("DISABLED", true),
            Reason::NotInCoverage | Reason::NotInLayer => ("DEFAULT", false),
            Reason::Holdout => ("TARGETING_MATCH", true),
        };
        let value = served.then(|| match &variant.payload {
            Some(payload) => FlagValue::Payload(payload),
            None => FlagValue::Key(variant.key.as_str()),
        });
        Self {
            key: a.experiment().as_str(),
            reason,
            variant: variant.key.as_str(),
            value,
            metadata: Metadata {
                reason: a.reason().as_str(),
                in_experiment: a.in_experiment(),
            },
        }
    }
}

/// An evaluation OFREP answers with an error code.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The flag key, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// `FLAG_NOT_FOUND`, `TARGETING_KEY_MISSING`, `INVALID_CONTEXT`,
    /// `PARSE_ERROR` or `GENERAL`.
    error_code: &'static str,
    /// What went wrong.
    error_details: String,
}

/// Every flag's evaluation for one context.
#[derive(Serialize, ToSchema)]
pub struct Bulk<'a> {
    /// One per experiment that is not archived, in key order.
    flags: Vec<Evaluation<'a>>,
}

/// Evaluate one flag (an experiment) for a context.
#[utoipa::path(
    tag = "openfeature",
    params(("key" = String, Path, description = "Flag (experiment) key")),
    request_body(content = EvaluationRequest, description = "The context to evaluate for"),
    responses(
        (status = 200, description = "The evaluation", body = Evaluation),
        (status = 400, description = "`PARSE_ERROR`, `TARGETING_KEY_MISSING` or `INVALID_CONTEXT`", body = Failure),
        (status = 401, description = "No valid key (no body)"),
        (status = 403, description = "The key may not evaluate (no body)"),
        (status = 404, description = "`FLAG_NOT_FOUND`", body = Failure),
        (status = 429, description = "Rate limited; see `Retry-After` (no body)"),
        (status = 408, description = "`request_timeout`: the body did not arrive within `server.body_timeout_ms`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over `server.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body needs `Content-Type: application/json`", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[post("/ofrep/v1/evaluate/flags/{key}")]
async fn evaluate_one(
    req: HttpRequest,
    state: web::Data<AppState>,
    key: web::Path<String>,
    MaybeJsonBytes(body): MaybeJsonBytes,
) -> HttpResponse {
    let key = key.into_inner();
    let (unit, experiments) = match admitted(&req, &body, Some(&key)) {
        Ok(admitted) => admitted,
        Err(refused) => return *refused,
    };
    match experiments
        .assign(&key, unit.as_str(), state.ofrep.log_exposure)
        .await
    {
        Ok(assignment) => HttpResponse::Ok().json(Evaluation::of(&assignment)),
        Err(EngineError::ExperimentNotFound(_)) => failed(
            StatusCode::NOT_FOUND,
            Some(key.clone()),
            ("FLAG_NOT_FOUND", format!("no experiment '{key}'")),
        ),
        Err(e) => engine_failure(Some(key), e),
    }
}

/// Evaluate every flag (experiment that is not archived) for a context.
#[utoipa::path(
    tag = "openfeature",
    params(("If-None-Match" = Option<String>, Header, description = "The `ETag` of an earlier answer: 304 if nothing changed")),
    request_body(content = EvaluationRequest, description = "The context to evaluate for"),
    responses(
        (status = 200, description = "Every evaluation, with an `ETag`", body = Bulk),
        (status = 304, description = "Unchanged since the `If-None-Match` ETag"),
        (status = 400, description = "`PARSE_ERROR`, `TARGETING_KEY_MISSING` or `INVALID_CONTEXT`", body = Failure),
        (status = 401, description = "No valid key (no body)"),
        (status = 403, description = "The key may not evaluate (no body)"),
        (status = 429, description = "Rate limited; see `Retry-After` (no body)"),
        (status = 408, description = "`request_timeout`: the body did not arrive within `server.body_timeout_ms`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over `server.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body needs `Content-Type: application/json`", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[post("/ofrep/v1/evaluate/flags")]
async fn evaluate_all(
    req: HttpRequest,
    state: web::Data<AppState>,
    MaybeJsonBytes(body): MaybeJsonBytes,
) -> HttpResponse {
    let (unit, experiments) = match admitted(&req, &body, None) {
        Ok(admitted) => admitted,
        Err(refused) => return *refused,
    };
    // Listed without a status, archived experiments are left out.
    let keys: Vec<ExperimentKey> = experiments
        .list(None, None, usize::MAX)
        .items
        .iter()
        .map(|c| c.experiment().key.clone())
        .collect();
    let mut assignments = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(experiments.max_assignment_experiments().max(1)) {
        match experiments
            .assign_all(unit.as_str(), Some(chunk), state.ofrep.log_exposure)
            .await
        {
            Ok(some) => assignments.extend(some),
            Err(e) => return engine_failure(None, e),
        }
    }
    let bulk = Bulk {
        flags: assignments.iter().map(Evaluation::of).collect(),
    };
    let Ok(json) = serde_json::to_vec(&bulk) else {
        return failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            ("GENERAL", "the evaluations could not be encoded".into()),
        );
    };
    let digest = format!("{:x}", Sha256::digest(&json));
    let tag = format!("\"{}\"", &digest[..32]);
    let unchanged = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if unchanged {
        HttpResponse::NotModified().finish()
    } else {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(json)
    };
    if let Ok(value) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// The unit a request may be evaluated for, and the experiments of the
/// project it acts in; or the answer refusing it: the caller's key and
/// rate first ([`refusal`]), then the project's assignment quota (429 with
/// `Retry-After`), then the body's `context.targetingKey` (a 400 naming
/// `key`, the flag asked for).
fn admitted(
    req: &HttpRequest,
    body: &[u8],
    key: Option<&str>,
) -> Result<(UnitId, Arc<Experiments>), Box<HttpResponse>> {
    if let Some(refused) = refusal(req) {
        return Err(Box::new(refused));
    }
    let Some(Acting(engine)) = req.extensions().get::<Acting>().cloned() else {
        return Err(Box::new(HttpResponse::Unauthorized().finish()));
    };
    if let Err(EngineError::OverQuota { retry_after_s, .. }) = engine.quotas().admit_assignment() {
        return Err(Box::new(
            HttpResponse::TooManyRequests()
                .insert_header((header::RETRY_AFTER, retry_after_s))
                .finish(),
        ));
    }
    let unit = targeting_key(body).map_err(|failure| {
        Box::new(failed(
            StatusCode::BAD_REQUEST,
            key.map(str::to_owned),
            failure,
        ))
    })?;
    Ok((unit, Arc::clone(engine.experiments())))
}

/// Nothing if the caller may evaluate (an ingest or admin key, as a bearer
/// token or in `X-API-Key`) within its rate; else OFREP's answer: 401 or
/// 403 without a body, or 429 with `Retry-After`.
fn refusal(req: &HttpRequest) -> Option<HttpResponse> {
    let refused = auth::authorize(req, Need::Ingest).err()?;
    Some(match refused {
        ApiError::Unauthorized | ApiError::InvalidToken(_) => HttpResponse::Unauthorized().finish(),
        ApiError::RateLimited { retry_after_s, .. } => HttpResponse::TooManyRequests()
            .insert_header((header::RETRY_AFTER, retry_after_s))
            .finish(),
        _ => HttpResponse::Forbidden().finish(),
    })
}

/// The unit id a request body names as `context.targetingKey`, or the
/// failure to answer.
fn targeting_key(body: &[u8]) -> Result<UnitId, (&'static str, String)> {
    let request: Value = if body.is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ("PARSE_ERROR", format!("the body is not JSON: {e}")))?
    };
    let Some(request) = request.as_object() else {
        return Err(("PARSE_ERROR", "the body must be a JSON object".into()));
    };
    let context = match request.get("context") {
        None | Some(Value::Null) => {
            return Err(("TARGETING_KEY_MISSING", "no context.targetingKey".into()))
        }
        Some(Value::Object(context)) => context,
        Some(_) => return Err(("INVALID_CONTEXT", "context must be an object".into())),
    };
    match context.get("targetingKey") {
        None | Some(Value::Null) => {
            Err(("TARGETING_KEY_MISSING", "no context.targetingKey".into()))
        }
        Some(Value::String(key)) => UnitId::try_from(key.clone()).map_err(|message| {
            (
                "INVALID_CONTEXT",
                format!("targetingKey is not a valid unit id: {message}"),
            )
        }),
        Some(_) => Err(("INVALID_CONTEXT", "targetingKey must be a string".into())),
    }
}

/// An OFREP failure body with `status`.
fn failed(
    status: StatusCode,
    key: Option<String>,
    (error_code, error_details): (&'static str, String),
) -> HttpResponse {
    HttpResponse::build(status).json(Failure {
        key,
        error_code,
        error_details,
    })
}

/// An engine error as OFREP's `GENERAL`, with abacus's status (503 with
/// `Retry-After` when the engine cannot take the exposure now).
fn engine_failure(key: Option<String>, e: EngineError) -> HttpResponse {
    let error = ApiError::Engine(e);
    let status = error.status_code();
    let mut response = failed(status, key, ("GENERAL", error.public_message()));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
