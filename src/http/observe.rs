//! Per-request observability: `X-Response-Time-Ms` on every response, the
//! request counter and duration histogram by route pattern (never the raw
//! path), and a warning plus a counter for requests slower than
//! `server.slow_request_ms`.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abacus_actors::metrics as m;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage};
use foldhash::{HashMap, HashMapExt};
use metrics::{Counter, Histogram};

use super::auth::Acting;
use super::AppState;

/// The header every response carries.
pub const RESPONSE_TIME: HeaderName = HeaderName::from_static("x-response-time-ms");

/// Requests slower than this are logged and counted (app data).
#[derive(Debug, Clone, Copy)]
pub struct SlowRequest(pub Duration);

/// A route's request counter (by method and status class) and duration
/// histogram (by method).
type Handles = (Counter, Histogram);

thread_local! {
    /// The metric handles of each (route pattern, method, status class)
    /// this worker has answered, registered on first use: looking them up
    /// in the recorder on every request built, hashed and dropped two
    /// label sets. Bounded by the routes, methods and classes there are.
    static HANDLES: RefCell<HashMap<(String, &'static str, &'static str), Handles>> =
        RefCell::new(HashMap::new());
}

/// The middleware, for `actix_web::middleware::from_fn`.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let slow = req
        .app_data::<web::Data<SlowRequest>>()
        .map_or(Duration::MAX, |s| s.0);
    let method = method_label(req.method());
    let mut res = next.call(req).await?;
    let elapsed = started.elapsed();
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let class = match res.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    // The signals of the project the request acted in (the default one's
    // when it was refused before it had one).
    let acting = res.request().extensions().get::<Acting>().cloned();
    let engine = acting.map(|Acting(engine)| engine).or_else(|| {
        let state = res.request().app_data::<web::Data<AppState>>()?;
        Some(Arc::clone(state.projects.root()))
    });
    if let Some(engine) = engine {
        let event = method == "POST" && route == "/v1/events";
        engine
            .alerts()
            .signals()
            .record(res.status().as_u16(), event, elapsed);
    }
    let ms = elapsed.as_secs_f64() * 1000.0;
    // Formatted on the stack: milliseconds with three decimals fit.
    let mut text = [0u8; 32];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    if write!(cursor, "{ms:.3}").is_ok() {
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        if let Ok(value) = HeaderValue::from_bytes(&text[..len]) {
            res.headers_mut().insert(RESPONSE_TIME, value);
        }
    }
    if elapsed > slow {
        tracing::warn!(%route, %method, status = res.status().as_u16(), duration_ms = ms, "slow request");
        metrics::counter!(m::HTTP_SLOW, "route" => route.clone()).increment(1);
    }
    HANDLES.with_borrow_mut(|handles| {
        let (requests, duration) = handles.entry((route, method, class)).or_insert_with_key(
            |(route, method, class)| {
                (
                    metrics::counter!(m::HTTP_REQUESTS, "route" => route.clone(), "method" => *method, "status" => *class),
                    metrics::histogram!(m::HTTP_DURATION, "route" => route.clone(), "method" => *method),
                )
            },
        );
        requests.increment(1);
        duration.record(elapsed.as_secs_f64());
    });
    Ok(res)
}

/// A static label for the method, so labelling allocates nothing for it.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
