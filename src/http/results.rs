//! Results and statistics: `/v1/experiments/{key}/results` and
//! `/v1/stats/sample-size`.

use abacus_actors::domain::{unix_ms, ExperimentKey, PhaseView};
use abacus_actors::results::compute::ExperimentResults;
use abacus_actors::results::Results;
use abacus_actors::stats::{sample_size, SampleSize, SampleSizeAnswer};
use actix_web::{get, web, HttpResponse};
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa::IntoParams;

use super::auth::Viewer;
use super::error::{ApiError, ApiResult};
use super::scoped::Scoped;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(results)
        .service(timeline)
        .service(predictions)
        .service(sample_size_route);
}

/// Query of `GET /v1/experiments/{key}/timeline`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TimelineQuery {
    /// The metric whose value to give (default: the primary metric).
    metric: Option<String>,
    /// At most this many points, 2-2000 (default 200), evenly thinned.
    #[param(minimum = 2, maximum = 2000)]
    points: Option<usize>,
}

/// How the experiment grew: per variant cumulative exposed units and the
/// metric's value (rate or mean per unit), kept every
/// `results.timeline_interval_s` while it runs; the last point is now.
#[utoipa::path(
    tag = "results",
    params(("key" = ExperimentKey, Path, description = "Experiment key"), TimelineQuery),
    responses(
        (status = 200, description = "The timeline", body = abacus_actors::results::Timeline),
        (status = 404, description = "No such experiment"),
        (status = 422, description = "Not a metric of the experiment"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/experiments/{key}/timeline")]
async fn timeline(
    _: Viewer,
    service: Scoped<Results>,
    key: web::Path<String>,
    query: web::Query<TimelineQuery>,
) -> ApiResult<HttpResponse> {
    let points = query.points.unwrap_or(200);
    if !(2..=2000).contains(&points) {
        return Err(ApiError::bad_query("points", "points must be 2-2000"));
    }
    let timeline = service
        .timeline(&key, query.metric.as_deref(), points)
        .await?;
    Ok(HttpResponse::Ok().json(timeline))
}

/// Query of `GET /v1/experiments/{key}/results`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ResultsQuery {
    /// One metric; all of the experiment's metrics when absent. Its
    /// p-values are corrected with every metric's all the same.
    metric: Option<String>,
    /// Only units first exposed, and events, at or after this time (RFC 3339).
    /// With `from` or `to` the stored events of the window are read.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<OffsetDateTime>,
    /// ... and before this time (RFC 3339), after `from`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<OffsetDateTime>,
    /// `all` (the default): every phase, each weighed by its share of the
    /// units; `latest`: the units first exposed in the current phase.
    #[serde(default)]
    #[param(inline)]
    phase: PhaseView,
}

/// Per variant units, events, conversions or sum, rate or mean, stddev and
/// 95% interval; per treatment the absolute and relative lift, p-value,
/// significance after the experiment's `correction`, chance to win and an
/// always-valid p-value;
/// and the sample-ratio-mismatch check. Undefined numbers are `null` with a
/// `reason`.
#[utoipa::path(
    tag = "results",
    params(("key" = ExperimentKey, Path, description = "Experiment key"), ResultsQuery),
    responses(
        (status = 200, description = "The results", body = ExperimentResults),
        (status = 404, description = "No such experiment"),
        (status = 422, description = "Not a metric of the experiment"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/experiments/{key}/results")]
async fn results(
    _: Viewer,
    service: Scoped<Results>,
    key: web::Path<String>,
    query: web::Query<ResultsQuery>,
) -> ApiResult<HttpResponse> {
    let window = match (query.from, query.to) {
        (None, None) => None,
        (from, to) => {
            let from = from.map_or(i64::MIN, unix_ms);
            let to = to.map_or(i64::MAX, unix_ms);
            if from >= to {
                return Err(ApiError::bad_query("to", "to must be after from"));
            }
            Some((from, to))
        }
    };
    let results = service
        .results(&key, query.metric.as_deref(), window, query.phase)
        .await?;
    Ok(HttpResponse::Ok().json(results))
}

/// Query of `GET /v1/experiments/{key}/predictions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PredictionsQuery {
    /// At most this many, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// How many of an experiment's newest events the live view looks through
/// for predictions, and of a unit's events after a prediction for its
/// outcome: a bound on the work of one request.
const MAX_SCANNED: usize = 10_000;

/// An experiment's newest predictions, newest first, each with the
/// outcome that joined it (`null` while none has; always, outside a model
/// experiment, where nothing joins them): the live view. Looks through the
/// experiment's newest 10,000 events.
#[utoipa::path(
    tag = "results",
    params(("key" = ExperimentKey, Path, description = "Experiment key"), PredictionsQuery),
    responses(
        (status = 200, description = "The newest predictions", body = abacus_actors::results::model::LivePredictions),
        (status = 404, description = "No such experiment"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/experiments/{key}/predictions")]
async fn predictions(
    _: Viewer,
    service: Scoped<Results>,
    key: web::Path<String>,
    query: web::Query<PredictionsQuery>,
) -> ApiResult<HttpResponse> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_query("limit", "limit must be 1-100"));
    }
    let predictions = service.predictions(&key, limit, MAX_SCANNED).await?;
    Ok(HttpResponse::Ok().json(predictions))
}

/// Query of `GET /v1/stats/sample-size`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SampleSizeQuery {
    /// Baseline conversion rate (proportions), in (0, 1).
    #[param(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    baseline: Option<f64>,
    /// Standard deviation of the per-unit value (means), above 0; give
    /// this or `baseline`, not both.
    #[param(exclusive_minimum = 0.0)]
    stddev: Option<f64>,
    /// Smallest absolute difference to detect (p2 - p1, or of means), not
    /// 0; with `baseline`, `baseline + mde` must lie in (0, 1).
    mde: f64,
    /// Significance level, two-sided, in (0, 1) (default 0.05).
    #[param(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    alpha: Option<f64>,
    /// Power, in (0, 1) (default 0.8).
    #[param(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    power: Option<f64>,
}

/// Units needed per variant: two proportions from `baseline`, or two means
/// from `stddev`.
#[utoipa::path(
    operation_id = "sample_size",
    tag = "results",
    params(SampleSizeQuery),
    responses(
        (status = 200, description = "Units per variant", body = SampleSizeAnswer),
        (status = 400, description = "Missing or impossible parameters"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/stats/sample-size")]
async fn sample_size_route(
    _: Viewer,
    query: web::Query<SampleSizeQuery>,
) -> ApiResult<HttpResponse> {
    let question = match (query.baseline, query.stddev) {
        (Some(baseline), None) => SampleSize::Proportion {
            baseline,
            mde: query.mde,
        },
        (None, Some(stddev)) => SampleSize::Mean {
            stddev,
            mde: query.mde,
        },
        _ => {
            return Err(ApiError::bad_query(
                "baseline",
                "give baseline (proportions) or stddev (means), not both",
            ))
        }
    };
    let (alpha, power) = (query.alpha.unwrap_or(0.05), query.power.unwrap_or(0.8));
    // The always-valid test's power is simulated (milliseconds of CPU):
    // off the worker.
    let answer = web::block(move || sample_size(question, alpha, power))
        .await
        .map_err(|_| ApiError::Engine(abacus_actors::Error::Unavailable))?
        .map_err(|e| ApiError::bad_query(e.field, e.message))?;
    Ok(HttpResponse::Ok().json(answer))
}
