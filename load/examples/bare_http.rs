//! The HTTP floor: actix-web answering `GET /healthz` and `/readyz` and
//! nothing else, with abacus's allocator and worker count, so the
//! harness's `health` scenario can tell what an HTTP exchange costs on a
//! machine before anything abacus adds (routing among its routes, the
//! observability middleware, the engine):
//!
//! ```sh
//! cargo build --release --example bare_http
//! abacus-load --serve target/release/examples/bare_http --scenario health --rate 10000
//! ```
//!
//! It takes `serve` and `ABACUS_SERVER__BIND` like abacus does, so
//! `--serve` can start it; everything else the harness sets is ignored.

use actix_web::{web, App, HttpResponse, HttpServer};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Both probes' answer: abacus's body when all is well.
async fn ok() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::var("ABACUS_SERVER__BIND").unwrap_or_else(|_| "127.0.0.1:8080".into());
    HttpServer::new(|| App::new().service(web::resource(["/healthz", "/readyz"]).get(ok)))
        .bind(bind)?
        .run()
        .await
}
