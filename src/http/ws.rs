//! `GET /v1/ws`: the live feed over a WebSocket, for clients that prefer
//! one. Same messages, filters and resumption as `GET /v1/stream`, each as
//! one text frame `{"id": 7, "event": "stats", "data": {...}}`.

use abacus_actors::live::Live;
use actix_web::{get, web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::StreamExt;

use super::auth::Viewer;
use super::error::ApiError;
use super::feed::{resume_after, Feed, Item};
use super::scoped::Scoped;
use super::stream::StreamQuery;

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(ws);
}

/// WebSocket upgrade: the live feed as JSON text frames. Resume with the
/// `Last-Event-ID` header or `?last_event_id=`; a client more than 1,024
/// messages behind is sent `{"event": "dropped"}` and closed (1008).
#[utoipa::path(
    tag = "live",
    params(super::stream::StreamQuery),
    responses((status = 101, description = "Switching protocols to a WebSocket")),
    security(("bearer" = []))
)]
#[get("/v1/ws")]
async fn ws(
    _: Viewer,
    live: Scoped<Live>,
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let after = resume_after(&req, query.last_event_id);
    let (response, mut session, mut incoming) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::UpgradeRequired(e.to_string()))?;
    let mut feed = Feed::open(&live.into_inner(), after, query.experiment);
    actix_web::rt::spawn(async move {
        let close = loop {
            tokio::select! {
                item = feed.next() => match item {
                    Some(Item::Message(m)) => {
                        if session.text(m.json.clone()).await.is_err() {
                            return;
                        }
                    }
                    Some(Item::Idle) => {
                        if session.ping(b"").await.is_err() {
                            return;
                        }
                    }
                    Some(Item::Dropped) => {
                        let _ = session
                            .text(r#"{"event":"dropped","data":{"reason":"slow_consumer"}}"#)
                            .await;
                        break Some(CloseReason {
                            code: CloseCode::Policy,
                            description: Some("slow consumer".into()),
                        });
                    }
                    None => break Some(CloseCode::Away.into()),
                },
                message = incoming.next() => match message {
                    Some(Ok(Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                    // The feed is one-way; anything else the client sends is ignored.
                    Some(Ok(_)) => {}
                },
            }
        };
        let _ = session.close(close).await;
    });
    Ok(response)
}
