//! The abacus server: configuration, telemetry and the HTTP layer around
//! the engine in `abacus-actors`.
//!
//! [`run`] is the whole server. `main` calls it with a bound listener and a
//! shutdown signal; tests could call it the same way with a listener on
//! `127.0.0.1:0`.

pub mod http;
pub mod telemetry;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use abacus_actors::clock::SystemClock;
use abacus_actors::domain::EventLimits;
use abacus_actors::ingest::retention::Retention;
use abacus_actors::ingest::IngestLimits;
use abacus_actors::webhooks;
use abacus_actors::{Engine, EngineConfig};
use abacus_config::{Config, SinkKind};
use actix_web::{web, App, HttpServer};

use crate::http::{auth::Keys, AppState};

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
}

/// What one event may carry and when it may have happened.
fn event_limits(config: &Config) -> EventLimits {
    let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
    EventLimits {
        max_abs_value: config.limits.max_abs_value,
        max_duration_ms: config.limits.max_duration_ms,
        max_rank: u64::from(config.limits.max_rank),
        max_property_bytes: config.limits.max_property_bytes,
        max_age_ms: ms(config.ingest.max_event_age_s),
        max_skew_ms: ms(config.ingest.max_future_skew_s),
    }
}

/// Serves until `shutdown` resolves, then stops accepting, finishes
/// in-flight requests, drains the engine's mailboxes and flushes RocksDB.
/// Must run inside an actix system.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let engine = Arc::new(
        Engine::open(
            EngineConfig {
                storage_path: config.storage.path.clone(),
                ingest: IngestLimits {
                    mailbox_capacity: config.ingest.mailbox_capacity,
                    flush_interval: Duration::from_millis(config.ingest.flush_interval_ms),
                    flush_max_events: config.ingest.flush_max_events,
                    dedup_window: Duration::from_secs(
                        u64::from(config.ingest.dedup_window_days) * 24 * 3600,
                    ),
                    max_measures: config.limits.max_measures,
                    commit_retries: config.ingest.commit_retries,
                    commit_retry: Duration::from_millis(config.ingest.commit_retry_ms),
                },
                jsonl_path: config
                    .ingest
                    .sinks
                    .contains(&SinkKind::Jsonl)
                    .then(|| config.ingest.jsonl_path.clone()),
                retention: (config.storage.retention_days > 0).then(|| Retention {
                    keep: Duration::from_secs(u64::from(config.storage.retention_days) * 24 * 3600),
                    max_event_age: Duration::from_secs(config.ingest.max_event_age_s),
                    every: Duration::from_secs(config.storage.retention_sweep_interval_s),
                }),
                events: event_limits(&config),
                max_assignment_experiments: config.limits.max_assignment_experiments,
                max_stats_message_bytes: config.limits.max_stats_message_bytes,
                max_export_page_bytes: config.limits.max_export_page_bytes,
                monitor_interval: Duration::from_millis(config.results.check_interval_ms),
                timeline_interval: Duration::from_secs(config.results.timeline_interval_s),
                webhooks: webhooks::Settings {
                    allow_private: config.webhooks.allow_private,
                    timeout: Duration::from_millis(config.webhooks.timeout_ms),
                    retry_schedule: config
                        .webhooks
                        .retry_schedule_ms
                        .iter()
                        .map(|&ms| Duration::from_millis(ms))
                        .collect(),
                    jitter: config.webhooks.jitter,
                    disable_after: config.webhooks.disable_after,
                    max_retry_after: Duration::from_millis(config.webhooks.max_retry_after_ms),
                },
            },
            Arc::new(SystemClock),
        )
        .await?,
    );
    let keys = Keys::new(&config.auth.admin_keys, &config.auth.ingest_keys);
    if keys.is_open() {
        tracing::warn!("no auth keys configured: the API is OPEN to anyone who can reach it");
    } else {
        tracing::info!(
            admin_keys = config.auth.admin_keys.len(),
            ingest_keys = config.auth.ingest_keys.len(),
            "bearer-key auth enabled"
        );
    }
    let metrics = http::prometheus::install().map_err(Error::Metrics)?;
    let state = web::Data::new(AppState {
        engine: Arc::clone(&engine),
        high_water: config.ingest.high_water,
    });
    let metrics = web::Data::new(metrics);
    let slow = web::Data::new(http::observe::SlowRequest(Duration::from_millis(
        config.server.slow_request_ms,
    )));
    let limits = http::Limits {
        body_bytes: config.server.max_body_bytes,
        max_batch: config.ingest.max_batch,
        body_timeout: Duration::from_millis(config.server.body_timeout_ms),
    };
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
            .configure(http::configure(
                state.clone(),
                keys.clone(),
                rates.clone(),
                limits,
            ))
    })
    .disable_signals()
    .max_connections(config.server.max_connections)
    .client_request_timeout(Duration::from_millis(
        config.server.client_request_timeout_ms,
    ))
    .shutdown_timeout(config.server.shutdown_timeout_ms.div_ceil(1000));
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let addr = listener.local_addr()?;
    let server = server.listen(listener)?.run();
    let handle = server.handle();
    tracing::info!(%addr, "abacus listening");

    let serving = actix_web::rt::spawn(server);
    shutdown.await;
    // Long-lived streams would otherwise hold the graceful stop until its timeout.
    engine.live().close();
    tracing::info!("shutdown: no longer accepting; finishing in-flight requests");
    handle.stop(true).await;
    sweeper.abort();
    if let Ok(Err(e)) = serving.await {
        tracing::error!(error = %e, "http server stopped with an error");
    }
    tracing::info!("shutdown: draining mailboxes and flushing the store");
    engine.shutdown().await?;
    tracing::info!("shutdown complete");
    Ok(())
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
