//! `GET /v1/stream`: the live feed as Server-Sent Events.

use abacus_actors::live::Live;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::Viewer;
use super::feed::{resume_after, Feed, Item};
use super::scoped::Scoped;

/// Most messages written together.
const BURST: usize = 256;

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(stream);
}

/// Query of `GET /v1/stream` and `GET /v1/ws`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Only messages about this experiment.
    pub experiment: Option<String>,
    /// Resume after this id (the `Last-Event-ID` header wins).
    pub last_event_id: Option<u64>,
}

/// Server-Sent Events: `stats` once a second per running experiment
/// (exposures/s, events/s by type, per-variant units and primary metric),
/// and every domain event (`experiment.started`, `experiment.significant`,
/// `alert.raised`, ...) as it happens. Reconnect with `Last-Event-ID` to
/// resume; a client more than 1,024 messages behind is sent
/// `event: dropped` and closed.
#[utoipa::path(
    tag = "live",
    params(StreamQuery),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream")),
    security(("bearer" = []))
)]
#[get("/v1/stream")]
async fn stream(
    _: Viewer,
    live: Scoped<Live>,
    req: HttpRequest,
    query: web::Query<StreamQuery>,
) -> HttpResponse {
    let query = query.into_inner();
    let after = resume_after(&req, query.last_event_id);
    let feed = Feed::open(&live.into_inner(), after, query.experiment);
    let body = futures_util::stream::unfold(feed, |mut feed| async move {
        let bytes = match feed.next().await? {
            // A burst (each experiment's stats, once a second) goes out as
            // one write rather than one per message.
            Item::Message(m) => match feed.ready() {
                None => m.sse.clone(),
                Some(next) => {
                    let mut burst = BytesMut::with_capacity(m.sse.len() * 8);
                    burst.extend_from_slice(&m.sse);
                    burst.extend_from_slice(&next.sse);
                    for _ in 0..BURST {
                        match feed.ready() {
                            Some(more) => burst.extend_from_slice(&more.sse),
                            None => break,
                        }
                    }
                    burst.freeze()
                }
            },
            Item::Idle => Bytes::from_static(b": keepalive\n\n"),
            Item::Dropped => {
                Bytes::from_static(b"event: dropped\ndata: {\"reason\":\"slow_consumer\"}\n\n")
            }
        };
        Some((Ok::<_, actix_web::Error>(bytes), feed))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}
