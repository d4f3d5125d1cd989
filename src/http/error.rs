//! The one place errors become HTTP responses.
//!
//! Every failure a client can see is an [`ApiError`]; its `ResponseError`
//! impl matches exhaustively on the cause, so adding an engine error without
//! deciding its status does not compile. Bodies follow the spec:
//! `{"error": {"code", "message", "field"?}}`. A 5xx body is generic; the
//! cause goes to the log.

use abacus_actors::Error as EngineError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Anything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The body is not JSON at all.
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON of the wrong shape: a missing, unknown or mistyped field.
    #[error("{message}")]
    InvalidBody {
        /// Path of the offending field, when known.
        field: Option<String>,
        /// What serde said.
        message: String,
    },
    /// A query-string parameter is missing or malformed.
    #[error("{message}")]
    InvalidQuery {
        /// The parameter, when known.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The body is larger than `server.max_body_bytes`.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The body was not declared as JSON.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// No valid bearer key was presented.
    #[error("a valid 'Authorization: Bearer <key>' header is required")]
    Unauthorized,
    /// A JWT was presented but is not valid (signature, expiry, claims).
    #[error("{0}")]
    InvalidToken(String),
    /// The credential is valid but its role does not allow this route.
    #[error("this credential's role does not allow this request")]
    Forbidden,
    /// The request names a project its credential does not belong to.
    #[error("this credential acts in project '{0}' only")]
    OtherProject(String),
    /// Keys cannot be issued: the server runs without keys (open mode).
    #[error(
        "this server runs without keys (open mode): configure auth.owner_keys or \
         auth.admin_keys before issuing keys through the API"
    )]
    AuthOff,
    /// Open mode (no keys): a browser sent this request for another site's page.
    #[error(
        "cross-site request refused: this server runs without keys and only \
         answers its own pages and clients that send no Origin"
    )]
    CrossSite,
    /// The caller has used up its token bucket for this class of routes.
    #[error("too many requests on the {scope} routes for this caller; retry in {retry_after_s} s")]
    RateLimited {
        /// `ingest` or `admin`.
        scope: &'static str,
        /// Whole seconds until a token is back (at least 1).
        retry_after_s: u64,
    },
    /// The body did not arrive within `server.body_timeout_ms` of the headers.
    #[error("the request body was not received within {after_ms} ms")]
    RequestTimeout {
        /// The configured deadline.
        after_ms: u64,
    },
    /// No route matches the path.
    #[error("no route matches {0}")]
    RouteNotFound(String),
    /// The route exists but not with this method.
    #[error("{method} is not allowed on {path}; allowed: {allow}")]
    MethodNotAllowed {
        /// The method asked for.
        method: String,
        /// The path.
        path: String,
        /// The methods the route takes, for the `Allow` header.
        allow: String,
    },
    /// A WebSocket route was asked for without a valid upgrade handshake.
    #[error("this route speaks WebSocket only: {0}")]
    UpgradeRequired(String),
}

/// The body of every error answer (`Error` in the API document).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// What went wrong.
    error: ErrorDetail<'a>,
}

/// One error.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable snake_case code to match on: `malformed_json`,
    /// `invalid_body`, `invalid_query`, `validation_failed`, `not_found`,
    /// `experiment_not_found`, `conflict`, `rate_limited`, ...
    code: &'a str,
    /// For people.
    message: String,
    /// The offending field or parameter, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// A malformed or out-of-range query parameter.
    pub fn bad_query(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidQuery {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    /// Whether the request was refused for what it carries (a body or a
    /// value that breaks a rule), rather than for the server's state.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            ApiError::InvalidBody { .. }
                | ApiError::Engine(EngineError::Invalid { .. } | EngineError::InvalidEvent { .. })
        )
    }

    /// What the client is told: the error itself, but for a server error
    /// (other than 503) a generic line, the cause going to the log.
    pub fn public_message(&self) -> String {
        let status = self.status_code();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self, "request failed");
            "internal error; the cause is in the server log".to_owned()
        } else {
            self.to_string()
        }
    }

    /// Stable snake_case code clients can match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Engine(e) => match e {
                EngineError::ExperimentNotFound(_) => "experiment_not_found",
                EngineError::HoldoutNotFound(_) => "holdout_not_found",
                EngineError::WebhookNotFound(_) => "webhook_not_found",
                EngineError::RuleNotFound(_) => "alert_rule_not_found",
                EngineError::KeyNotFound(_) => "key_not_found",
                EngineError::ProjectNotFound(_) => "project_not_found",
                EngineError::ProjectExists(_) => "project_exists",
                EngineError::LinkConflict(_) => "link_conflict",
                EngineError::Unsupported(_) => "unsupported",
                EngineError::NotPermitted(_) => "forbidden",
                EngineError::AlertNotFound(_) => "alert_not_found",
                EngineError::AlertTransition { .. } => "invalid_transition",
                EngineError::ExperimentExists(_) => "experiment_exists",
                EngineError::LayerOverlap { .. } => "layer_overlap",
                EngineError::Invalid { .. } | EngineError::InvalidEvent { .. } => {
                    "validation_failed"
                }
                EngineError::InvalidTransition { .. } => "invalid_transition",
                EngineError::NotEditable { .. } | EngineError::Reallocation { .. } => {
                    "not_editable"
                }
                EngineError::Overloaded(_) => "overloaded",
                EngineError::OverQuota { .. } => "quota_exceeded",
                EngineError::Unavailable | EngineError::Cluster(_) => "unavailable",
                EngineError::ChangedElsewhere(_) => "conflict",
                EngineError::Storage(_) | EngineError::Corrupt { .. } => "internal",
            },
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidBody { .. } => "invalid_body",
            ApiError::InvalidQuery { .. } => "invalid_query",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unauthorized => "unauthorized",
            ApiError::InvalidToken(_) => "invalid_token",
            ApiError::AuthOff => "auth_off",
            ApiError::Forbidden | ApiError::OtherProject(_) | ApiError::CrossSite => "forbidden",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::RouteNotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UpgradeRequired(_) => "upgrade_required",
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::Engine(
                EngineError::Invalid { field, .. } | EngineError::InvalidEvent { field, .. },
            ) => Some(field),
            ApiError::Engine(EngineError::NotEditable { field, .. }) => Some(field),
            ApiError::Engine(EngineError::LayerOverlap { .. }) => Some("layer"),
            ApiError::Engine(EngineError::Reallocation { .. }) => Some("variants"),
            ApiError::Engine(EngineError::LinkConflict(_)) => Some("from"),
            ApiError::InvalidBody { field, .. } | ApiError::InvalidQuery { field, .. } => {
                field.as_deref()
            }
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Engine(e) => match e {
                EngineError::ExperimentNotFound(_)
                | EngineError::HoldoutNotFound(_)
                | EngineError::WebhookNotFound(_)
                | EngineError::RuleNotFound(_)
                | EngineError::AlertNotFound(_)
                | EngineError::KeyNotFound(_)
                | EngineError::ProjectNotFound(_) => StatusCode::NOT_FOUND,
                EngineError::NotPermitted(_) => StatusCode::FORBIDDEN,
                EngineError::ExperimentExists(_)
                | EngineError::LayerOverlap { .. }
                | EngineError::ProjectExists(_)
                | EngineError::LinkConflict(_)
                | EngineError::Unsupported(_)
                | EngineError::InvalidTransition { .. }
                | EngineError::AlertTransition { .. }
                | EngineError::NotEditable { .. }
                | EngineError::Reallocation { .. }
                | EngineError::ChangedElsewhere(_) => StatusCode::CONFLICT,
                EngineError::Invalid { .. } | EngineError::InvalidEvent { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                EngineError::Overloaded(_) | EngineError::Unavailable | EngineError::Cluster(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                EngineError::OverQuota { .. } => StatusCode::TOO_MANY_REQUESTS,
                EngineError::Storage(_) | EngineError::Corrupt { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            ApiError::MalformedJson(_) | ApiError::InvalidQuery { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidBody { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized | ApiError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::AuthOff => StatusCode::CONFLICT,
            ApiError::Forbidden | ApiError::OtherProject(_) | ApiError::CrossSite => {
                StatusCode::FORBIDDEN
            }
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let message = self.public_message();
        let mut response = HttpResponse::build(status);
        match self {
            ApiError::Engine(
                EngineError::Overloaded(_) | EngineError::Unavailable | EngineError::Cluster(_),
            ) => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            ApiError::Unauthorized => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"abacus\""),
                ));
            }
            // RFC 6750: the token was presented and refused.
            ApiError::InvalidToken(_) => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"abacus\", error=\"invalid_token\""),
                ));
            }
            ApiError::RateLimited { retry_after_s, .. }
            | ApiError::Engine(EngineError::OverQuota { retry_after_s, .. }) => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from(*retry_after_s)));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                if let Ok(allow) = HeaderValue::from_str(allow) {
                    response.insert_header((header::ALLOW, allow));
                }
            }
            // The rest of the body may still be trickling in: do not wait
            // for it on this connection.
            ApiError::RequestTimeout { .. } => {
                response.force_close();
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message,
                field: self.field(),
            },
        })
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
