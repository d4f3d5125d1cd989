//! `GET /metrics`: Prometheus text format.
//!
//! Series labelled with a `project` (a project's quota refusals) are that
//! project's: a scrape sees them with an owner's credential (or on an open
//! server), a project's credential sees its own project's, and a scrape
//! without a credential sees only the series no project owns.

use std::sync::OnceLock;

use abacus_actors::metrics as m;
use actix_web::{get, web, HttpRequest, HttpResponse};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::auth::{self, Sees};
use super::error::ApiResult;
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
    responses(
        (status = 200, description = "Prometheus text exposition format; series of a project only for its credentials and owners'", content_type = "text/plain"),
        (status = 401, description = "A credential was presented and is not valid"),
    )
)]
#[get("/metrics")]
async fn scrape(
    req: HttpRequest,
    state: web::Data<AppState>,
    handle: web::Data<PrometheusHandle>,
) -> ApiResult<HttpResponse> {
    let sees = auth::scraper(&req)?;
    state.projects.root().export_metrics().await;
    handle.run_upkeep();
    let text = handle.render();
    let body = match sees {
        Sees::Everything => text,
        Sees::Project(project) => visible(&text, Some(&project)),
        Sees::Unlabelled => visible(&text, None),
    };
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body))
}

/// The lines of `text` whose `project` label, if they have one, is
/// `project`.
fn visible(text: &str, project: Option<&str>) -> String {
    text.lines()
        .filter(|line| match label(line, "project") {
            None => true,
            Some(of) => Some(of) == project,
        })
        .fold(String::with_capacity(text.len()), |mut out, line| {
            out.push_str(line);
            out.push('\n');
            out
        })
}

/// The value of a sample line's `name` label (project keys need no
/// escaping: `[a-z0-9_-]`).
fn label<'t>(line: &'t str, name: &str) -> Option<&'t str> {
    if line.starts_with('#') {
        return None;
    }
    let labels = &line[line.find('{')? + 1..line.rfind('}')?];
    let mut rest = labels;
    loop {
        let (key, value) = rest.split_once("=\"")?;
        let (value, after) = value.split_once('"')?;
        if key.trim_start_matches(',') == name {
            return Some(value);
        }
        rest = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projects_series_are_shown_to_it_alone() {
        let text = "# TYPE abacus_quota_refused_total counter\n\
                    abacus_quota_refused_total{project=\"growth\",quota=\"events_per_second\"} 3\n\
                    abacus_quota_refused_total{quota=\"events_per_second\",project=\"search\"} 1\n\
                    abacus_events_accepted_total 9\n";
        let growth = visible(text, Some("growth"));
        assert!(growth.contains("project=\"growth\""), "{growth}");
        assert!(!growth.contains("search"), "{growth}");
        assert!(growth.contains("abacus_events_accepted_total 9"));
        let nobody = visible(text, None);
        assert!(!nobody.contains("project="), "{nobody}");
        assert!(nobody.contains("# TYPE abacus_quota_refused_total"));
        assert_eq!(label("m{a=\"x\",project=\"p\"} 1", "project"), Some("p"));
        assert_eq!(label("m{subproject=\"p\"} 1", "project"), None);
    }

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
