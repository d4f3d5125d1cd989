//! Extractors that turn requests into validated values, so handlers only
//! read: extract, one call into the engine, map to a response.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The configured body limit, stored as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// How long a body may take to arrive once its request's headers did
/// (`server.body_timeout_ms`), stored as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// A JSON body decoded strictly: 413 past the limit, 415 without a JSON
/// content type (`application/json` or `application/*+json`, parameters
/// allowed), 408 when it does not arrive within the body deadline, 400 for
/// malformed JSON, 422 naming the field for a body of the wrong shape.
pub struct ValidJson<T>(pub T);

/// Like [`ValidJson`], but an empty body is `None` (for actions whose body
/// is optional, such as `complete`); only a request that does carry a body
/// needs the JSON content type.
pub struct MaybeJson<T>(pub Option<T>);

/// A route that takes no body: anything but blanks is refused (422), so a
/// body meant for another route is not silently ignored.
pub struct NoBody;

impl FromRequest for NoBody {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_body(req, payload, false);
        Box::pin(async move {
            let bytes = body?.await?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                Ok(NoBody)
            } else {
                Err(ApiError::InvalidBody {
                    field: None,
                    message: "this action takes no body".into(),
                })
            }
        })
    }
}

/// A JSON body's bytes, checked like [`ValidJson`] (content type, limit,
/// deadline) but not decoded, for a handler with a faster decoding of its
/// own that falls back on [`parse`] for the error.
pub struct JsonBytes(pub web::BytesMut);

/// [`JsonBytes`] that may be absent (then empty), for a protocol whose
/// own decoding answers its own errors (OpenFeature's).
pub struct MaybeJsonBytes(pub web::BytesMut);

impl FromRequest for JsonBytes {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_body(req, payload, true);
        Box::pin(async move { Ok(JsonBytes(body?.await?)) })
    }
}

impl FromRequest for MaybeJsonBytes {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_body(req, payload, false);
        Box::pin(async move { Ok(MaybeJsonBytes(body?.await?)) })
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for ValidJson<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_body(req, payload, true);
        Box::pin(async move {
            let bytes = body?.await?;
            parse(&bytes).map(ValidJson)
        })
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for MaybeJson<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let typed = req.headers().contains_key(header::CONTENT_TYPE);
        let body = read_body(req, payload, false);
        Box::pin(async move {
            let bytes = body?.await?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(MaybeJson(None));
            }
            if !typed {
                // Sent without a declared length and without a type.
                return Err(ApiError::UnsupportedMediaType);
            }
            parse(&bytes).map(|v| MaybeJson(Some(v)))
        })
    }
}

/// `application/json` or `application/<anything>+json`, any parameters
/// (`; charset=utf-8`), any case.
fn is_json(content_type: &header::HeaderValue) -> bool {
    let Ok(ct) = content_type.to_str() else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let json = subtype.eq_ignore_ascii_case("json")
        || subtype
            .len()
            .checked_sub(5)
            .and_then(|at| subtype.get(at..))
            .is_some_and(|tail| tail.eq_ignore_ascii_case("+json"));
    kind.eq_ignore_ascii_case("application") && json
}

/// Checks headers at once, then returns a future reading at most the
/// configured limit before the body deadline. A body needs a JSON content
/// type; with `required` false a request without one passes as long as it
/// declares no body (the caller checks a body sent without a length).
fn read_body(
    req: &HttpRequest,
    payload: &mut Payload,
    required: bool,
) -> Result<impl Future<Output = Result<web::BytesMut, ApiError>>, ApiError> {
    let limit = req.app_data::<BodyLimit>().map_or(1 << 20, |l| l.0);
    let timeout = req
        .app_data::<BodyTimeout>()
        .map_or(Duration::from_secs(10), |t| t.0);
    // The deadline runs from now, when the headers have been read, not from
    // the first poll.
    let deadline = tokio::time::Instant::now() + timeout;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match req.headers().get(header::CONTENT_TYPE) {
        Some(ct) if !is_json(ct) => return Err(ApiError::UnsupportedMediaType),
        None if required || declared.is_some_and(|n| n > 0) => {
            return Err(ApiError::UnsupportedMediaType)
        }
        _ => {}
    }
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut payload = payload.take();
    let read = async move {
        let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::MalformedJson(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    Ok(async move {
        tokio::time::timeout_at(deadline, read)
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::RequestTimeout {
                    after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                })
            })
    })
}

/// Decodes `bytes` as one JSON value of type `T`, with the failing field's
/// path in the error. A valid body is decoded once, without path
/// tracking (which costs about a quarter of an ingest handler's time);
/// only a refused one is decoded again to name the field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(_) => parse_tracked(bytes),
    }
}

/// [`parse`] with the path of the failing field tracked.
fn parse_tracked<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // A shape error in the first value of a body that is not valid JSON
        // as a whole (e.g. `{} {}`) is still malformed JSON.
        let well_formed = serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
        match inner.classify() {
            serde_json::error::Category::Data if well_formed => ApiError::InvalidBody {
                field: (path != ".").then_some(path),
                message: inner.to_string(),
            },
            _ => ApiError::MalformedJson(inner.to_string()),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
}

/// A page size asked for as `limit`, `default` when absent; 400
/// `invalid_query` outside `1..=max`.
pub fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_query(
            "limit",
            format!("limit must be between 1 and {max}"),
        ));
    }
    Ok(limit)
}

/// Maps query-string errors to the JSON error body.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _| {
        let message = err.to_string();
        let field = message.split('`').nth(1).map(str::to_owned);
        ApiError::InvalidQuery { field, message }.into()
    })
}

/// Maps path-segment errors to the JSON error body.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|err, req| ApiError::RouteNotFound(format!("{} ({err})", req.path())).into())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Shape {
        name: String,
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        weight: f64,
    }

    #[test]
    fn malformed_json_is_a_400_kind() {
        assert!(matches!(
            parse::<Shape>(b"{\"name\": "),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse::<Shape>(b"{\"name\":\"a\",\"inner\":{\"weight\":1}} trailing"),
            Err(ApiError::MalformedJson(_))
        ));
    }

    #[test]
    fn json_content_types() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
            "application/vnd.abacus+JSON ;q=1",
        ] {
            assert!(is_json(&header::HeaderValue::from_static(ct)), "{ct}");
        }
        for ct in [
            "text/plain",
            "text/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
            "json",
            "",
        ] {
            assert!(!is_json(&header::HeaderValue::from_static(ct)), "{ct}");
        }
    }

    #[test]
    fn wrong_shapes_name_the_field() {
        let err = parse::<Shape>(br#"{"name":"a","inner":{"weight":"heavy"}}"#).unwrap_err();
        match err {
            ApiError::InvalidBody { field, .. } => {
                assert_eq!(field.as_deref(), Some("inner.weight"))
            }
            other => panic!("{other:?}"),
        }
        let err = parse::<Shape>(br#"{"name":"a","inner":{"weight":1},"extra":1}"#).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }
}
