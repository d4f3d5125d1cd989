//! The dashboard at `/`: one page, its script and its styles, compiled
//! into the binary. It drives the same API a client would (the key, when
//! auth is on, is asked for once and kept in the browser session).

use actix_web::{get, web, HttpResponse};

const INDEX: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/app.js");
const STYLE: &str = include_str!("../dashboard/style.css");

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(index).service(script).service(style);
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(body)
}

#[get("/")]
async fn index() -> HttpResponse {
    let mut response = asset("text/html; charset=utf-8", INDEX);
    response.headers_mut().insert(
        actix_web::http::header::CONTENT_SECURITY_POLICY,
        actix_web::http::header::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
        ),
    );
    response
}

#[get("/dashboard/app.js")]
async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

#[get("/dashboard/style.css")]
async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}
