//! `GET /v1/stream`: the live feed as Server-Sent Events.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use abacus_actors::live::LiveMessage;
use actix_web::web::Bytes;
use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use super::auth::Admin;
use super::AppState;

/// A comment line this often keeps idle connections (and proxies) alive.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(stream);
}

/// Query of `GET /v1/stream`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Only messages about this experiment.
    experiment: Option<String>,
    /// Resume after this id (the `Last-Event-ID` header wins).
    last_event_id: Option<u64>,
}

/// Server-Sent Events: `stats` once a second per running experiment
/// (exposures/s, events/s by type, per-variant units and primary metric),
/// and every domain event (`experiment.started`, `experiment.significant`,
/// ...) as it happens. Reconnect with `Last-Event-ID` to resume; a client
/// more than 1,024 messages behind is sent `event: dropped` and closed.
#[utoipa::path(
    tag = "live",
    params(StreamQuery),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream")),
    security(("bearer" = []))
)]
#[get("/v1/stream")]
async fn stream(
    _: Admin,
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<StreamQuery>,
) -> HttpResponse {
    let after = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(query.last_event_id);
    let live = Arc::clone(state.engine.live());
    let subscription = live.subscribe(after);
    // Shared, so cloning the filter per message allocates nothing.
    let filter: Option<Arc<str>> = query.into_inner().experiment.map(Into::into);
    let wanted = move |m: &LiveMessage| {
        m.kind == "closing"
            || filter.is_none()
            || m.experiment.is_some() && m.experiment.as_deref() == filter.as_deref()
    };
    let replay: Vec<_> = subscription
        .replay
        .into_iter()
        .filter(|m| wanted(m))
        .collect();
    let last_replayed = replay.last().map_or(0, |m| m.id);
    let state = (
        replay.into_iter(),
        subscription.receiver,
        last_replayed,
        false,
    );
    let body = futures_util::stream::unfold(state, move |(mut replay, mut rx, mut seen, done)| {
        let live = Arc::clone(&live);
        let wanted = wanted.clone();
        async move {
            if done {
                return None;
            }
            if let Some(m) = replay.next() {
                return Some((
                    Ok::<_, actix_web::Error>(frame(&m)),
                    (replay, rx, seen, false),
                ));
            }
            loop {
                if live.is_closed() {
                    return None;
                }
                match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
                    Err(_) => {
                        return Some((
                            Ok(Bytes::from_static(b": keepalive\n\n")),
                            (replay, rx, seen, false),
                        ))
                    }
                    Ok(Ok(m)) if m.id <= seen || !wanted(&m) => {}
                    Ok(Ok(m)) if m.kind == "closing" => return None,
                    Ok(Ok(m)) => {
                        seen = m.id;
                        return Some((Ok(frame(&m)), (replay, rx, seen, false)));
                    }
                    Ok(Err(RecvError::Lagged(_))) => {
                        live.dropped.fetch_add(1, Ordering::Relaxed);
                        let bye = Bytes::from_static(
                            b"event: dropped\ndata: {\"reason\":\"slow_consumer\"}\n\n",
                        );
                        return Some((Ok(bye), (replay, rx, seen, true)));
                    }
                    Ok(Err(RecvError::Closed)) => return None,
                }
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}

/// One SSE frame.
fn frame(m: &LiveMessage) -> Bytes {
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        m.id, m.kind, m.data
    ))
}
