//! `GET /metrics`: Prometheus text format.

use std::sync::OnceLock;

use abacus_actors::metrics as m;
use actix_web::{get, web, HttpResponse};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::AppState;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and describes every metric.
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), m::DURATION_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(m::SINK_BATCH.into()), m::BATCH_BUCKETS)
        })
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    m::describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(scrape);
}

/// Prometheus metrics: requests, events, mailboxes, sinks, assignments,
/// experiments, webhooks, RocksDB and memory.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain"))
)]
#[get("/metrics")]
async fn scrape(state: web::Data<AppState>, handle: web::Data<PrometheusHandle>) -> HttpResponse {
    state.engine.export_metrics().await;
    handle.run_upkeep();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped dashboard and alert examples only query metrics that exist.
    #[test]
    fn the_dashboard_and_examples_name_only_real_metrics() {
        for (file, text) in [
            (
                "grafana-dashboard.json",
                include_str!("../../config/grafana-dashboard.json"),
            ),
            (
                "prometheus.yml",
                include_str!("../../config/prometheus.yml"),
            ),
        ] {
            let mut found = 0;
            for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("abacus_") || word == "abacus_overview" {
                    continue;
                }
                let name = word.strip_suffix("_bucket").unwrap_or(word);
                assert!(
                    m::ALL.contains(&name),
                    "{file} queries unknown metric {word}"
                );
                found += 1;
            }
            assert!(found > 0, "{file} names no metric");
        }
    }
}
