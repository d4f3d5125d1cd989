//! The abacus server: configuration, telemetry and the HTTP layer around
//! the engine in `abacus-actors`.
//!
//! [`run`] is the whole server. `main` calls it with a bound listener and a
//! shutdown signal; tests could call it the same way with a listener on
//! `127.0.0.1:0`.

pub mod http;
mod settings;
pub mod telemetry;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

use abacus_actors::clock::SystemClock;
use abacus_actors::projects::Projects;
use abacus_config::Config;
use actix_web::{web, App, HttpServer};

use crate::http::auth::{jwt::Tokens, Keys};
use crate::http::AppState;

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine (store, actors) failed.
    #[error("engine: {0}")]
    Engine(#[from] abacus_actors::Error),
    /// The listener or the HTTP server failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    /// The metrics recorder could not be installed.
    #[error("metrics: {0}")]
    Metrics(String),
    /// The token verification keys could not be read.
    #[error("auth: {0}")]
    Auth(String),
}

/// Serves until `shutdown` resolves, then stops accepting, finishes
/// in-flight requests, drains the engine's mailboxes and flushes RocksDB.
/// Must run inside an actix system.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    // First: what the engines count from their start is recorded.
    let metrics = http::prometheus::install().map_err(Error::Metrics)?;
    let projects = Projects::open(
        settings::engine(&config),
        settings::projects(&config),
        Arc::new(SystemClock),
    )
    .await?;
    let projects = Arc::new(projects);
    let keys = auth_keys(&config, &projects)?;
    let serving = serve(&config, listener, Arc::clone(&projects), keys, metrics)?;
    shutdown.await;
    serving.stop().await;
    tracing::info!("shutdown: draining mailboxes and flushing the stores");
    projects.shutdown().await?;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Every credential the server accepts, and a loud word when there are
/// none. Starts following the JWKS file, if there is one.
fn auth_keys(config: &Config, projects: &Projects) -> Result<Keys, Error> {
    let credentials = projects.root().credentials();
    let tokens = Tokens::new(&config.auth.jwt).map_err(Error::Auth)?;
    if let Some(tokens) = &tokens {
        actix_web::rt::spawn(Arc::clone(tokens).watch());
    }
    let keys = Keys::new(&config.auth, Some(Arc::clone(credentials)), tokens);
    if keys.is_open() {
        tracing::warn!("no auth keys configured: the API is OPEN to anyone who can reach it");
    } else {
        tracing::info!(
            owner_keys = config.auth.owner_keys.len(),
            admin_keys = config.auth.admin_keys.len(),
            editor_keys = config.auth.editor_keys.len(),
            viewer_keys = config.auth.viewer_keys.len(),
            ingest_keys = config.auth.ingest_keys.len(),
            issued_keys = credentials.count(),
            jwt = config.auth.jwt.is_on(),
            "auth enabled"
        );
    }
    Ok(keys)
}

/// The running HTTP server and what must stop with it.
struct Serving {
    projects: Arc<Projects>,
    handle: actix_web::dev::ServerHandle,
    server: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
    sweeper: actix_web::rt::task::JoinHandle<()>,
}

impl Serving {
    /// Stops accepting and finishes in-flight requests.
    async fn stop(self) {
        // Long-lived streams would otherwise hold the graceful stop until
        // its timeout.
        for engine in self.projects.engines() {
            engine.live().close();
        }
        tracing::info!("shutdown: no longer accepting; finishing in-flight requests");
        self.handle.stop(true).await;
        self.sweeper.abort();
        if let Ok(Err(e)) = self.server.await {
            tracing::error!(error = %e, "http server stopped with an error");
        }
    }
}

/// Starts the HTTP server on `listener` with every route, limit and
/// middleware the configuration asks for.
fn serve(
    config: &Config,
    listener: TcpListener,
    projects: Arc<Projects>,
    keys: Keys,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<Serving, Error> {
    let state = web::Data::new(AppState {
        projects: Arc::clone(&projects),
        high_water: config.ingest.high_water,
        ofrep: http::ofrep::Settings {
            log_exposure: config.ofrep.log_exposure,
        },
    });
    let metrics = web::Data::new(metrics);
    let slow = web::Data::new(http::observe::SlowRequest(
        config.server.slow_request_ms.get(),
    ));
    let limits = http::Limits {
        body_bytes: config.server.max_body_bytes,
        max_batch: config.ingest.max_batch,
        body_timeout: config.server.body_timeout_ms.get(),
        max_assignment_experiments: config.limits.max_assignment_experiments,
        max_abs_value: config.limits.max_abs_value,
    };
    // Built and encoded once, shared by every worker.
    let document = web::Data::new(http::openapi::Document::stated(&limits));
    let rates = http::limits::RateLimits::new(
        config.limits.ingest_rps,
        config.limits.admin_rps,
        config.limits.burst,
    );
    // Keeps the keyed limiters' memory bounded (see `RateLimits`); runs on
    // this (the system's) thread, not on an HTTP worker.
    let sweeper = actix_web::rt::spawn(rates.clone().sweep(http::limits::SWEEP_EVERY));
    let mut server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(http::observe::observe))
            .app_data(metrics.clone())
            .app_data(slow.clone())
            .app_data(document.clone())
            .configure(http::configure(
                state.clone(),
                keys.clone(),
                rates.clone(),
                limits,
            ))
    })
    .disable_signals()
    .max_connections(config.server.max_connections)
    .client_request_timeout(config.server.client_request_timeout_ms.get())
    .shutdown_timeout(
        u64::try_from(
            config
                .server
                .shutdown_timeout_ms
                .get()
                .as_millis()
                .div_ceil(1000),
        )
        .unwrap_or(u64::MAX),
    );
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let addr = listener.local_addr()?;
    let server = server.listen(listener)?.run();
    let handle = server.handle();
    tracing::info!(%addr, "abacus listening");
    Ok(Serving {
        projects,
        handle,
        server: actix_web::rt::spawn(server),
        sweeper,
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
