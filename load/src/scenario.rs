//! Scenarios: how to prepare the server and what each request is.

use anyhow::Context;
use reqwest::{Client, Method, RequestBuilder};
use serde_json::json;

/// A kind of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `GET /v1/experiments/{key}/assignment` for random units.
    Assign,
    /// `POST /v1/assignments` for random units.
    AssignAll,
    /// `POST /v1/events` with one event.
    Ingest,
    /// `POST /v1/events` with `--batch` events.
    IngestBatch,
    /// `GET /v1/experiments/{key}/results`.
    Results,
    /// `POST /v1/experiments`, each fanned out as `experiment.created` to
    /// `--subscribers` webhook subscriptions on a local receiver.
    Webhooks,
    /// Half assignments, 40% single events, 10% results reads.
    Mixed,
    /// `GET /healthz`: an HTTP exchange with no work behind it, the floor
    /// every other scenario's CPU per request stands on.
    Health,
}

/// When `POST /v1/events` answers: its `ack` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ack {
    /// Once the events are validated and queued (202 at once).
    Accepted,
    /// Once their batch is committed and fsynced (group commit).
    Persisted,
}

impl Ack {
    /// The name used on the command line and in the query.
    pub fn name(self) -> &'static str {
        match self {
            Ack::Accepted => "accepted",
            Ack::Persisted => "persisted",
        }
    }
}

impl Scenario {
    /// Events each request carries, for the CPU per event: `None` when
    /// they carry none (an exposure an assignment logs is the server's).
    pub fn events_per_request(self, args: &crate::Args) -> Option<u64> {
        match self {
            Scenario::Ingest => Some(1),
            Scenario::IngestBatch => Some(args.batch.max(1) as u64),
            _ => None,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Assign => "assign",
            Scenario::AssignAll => "assign-all",
            Scenario::Ingest => "ingest",
            Scenario::IngestBatch => "ingest-batch",
            Scenario::Results => "results",
            Scenario::Webhooks => "webhooks",
            Scenario::Mixed => "mixed",
            Scenario::Health => "health",
        }
    }
}

/// Everything a request needs, prepared once.
pub struct Target {
    client: Client,
    base: String,
    token: Option<String>,
    scenario: Scenario,
    experiment: String,
    units: u64,
    /// The first unit id's number (`--first-unit`).
    first_unit: u64,
    batch: usize,
    /// Predictions and outcomes instead of clicks (`--model`).
    model: bool,
    /// `--no-exposure`: assignments ask the server not to log exposures.
    log_exposure: bool,
    /// `POST` path of event requests, with `?ack=` when not the default.
    events_path: &'static str,
    run_id: u128,
    /// Deliveries to the local receiver (`webhooks` only).
    pub deliveries: Option<std::sync::Arc<crate::receiver::Deliveries>>,
}

impl Target {
    /// Creates and starts `experiments` fresh experiments on the server.
    pub async fn prepare(args: &crate::Args, client: Client) -> anyhow::Result<Self> {
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis();
        let mut target = Self {
            client,
            base: args.url.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
            scenario: args.scenario,
            experiment: String::new(),
            units: args.units.max(1),
            first_unit: args.first_unit,
            batch: args.batch.max(1),
            model: args.model,
            log_exposure: !args.no_exposure,
            events_path: match args.ack {
                Ack::Accepted => "/v1/events",
                Ack::Persisted => "/v1/events?ack=persisted",
            },
            run_id,
            deliveries: None,
        };
        if let Some(project) = &args.project {
            target.token = Some(target.enter(project).await?);
        }
        if args.scenario == Scenario::Webhooks {
            let (url, deliveries) = crate::receiver::start().await?;
            for _ in 0..args.subscribers {
                let created = target
                    .request(Method::POST, "/v1/webhooks")
                    .json(&json!({"url": url, "events": ["experiment.created"]}))
                    .send()
                    .await
                    .context("is abacus running at --url?")?;
                anyhow::ensure!(
                    created.status() == 201,
                    "subscribe (needs webhooks.allow_private): {}",
                    created.text().await?
                );
            }
            target.deliveries = Some(deliveries);
            return Ok(target);
        }
        // Nothing to prepare: it may even run against a bare HTTP server
        // (`examples/bare_http.rs`).
        if args.scenario == Scenario::Health {
            return Ok(target);
        }
        for n in 0..args.links {
            let to = format!("user-{}", args.first_unit + n);
            let linked = target
                .request(Method::POST, "/v1/aliases")
                .json(&json!({"from": format!("anon-{n}"), "to": to}))
                .send()
                .await
                .context("is abacus running at --url?")?;
            anyhow::ensure!(
                linked.status().is_success(),
                "link: {}",
                linked.text().await?
            );
        }
        if let Some(key) = &args.experiment {
            target.experiment = key.clone();
            return Ok(target);
        }
        let mut metrics = vec![
            json!({"key": "conversion", "kind": "mean"}),
            json!({"key": "click", "kind": "binomial"}),
        ];
        if args.derived_metrics {
            metrics.extend([
                json!({"key": "conversion_capped", "kind": "mean", "measure": "conversion", "cap": 30}),
                json!({"key": "clicks_per_conversion", "kind": "ratio", "measure": "click",
                    "denominator": "conversion"}),
                json!({"key": "conversion_p90", "kind": "quantile", "measure": "conversion",
                    "quantile": 0.9}),
                json!({"key": "click_latency_p99", "kind": "quantile", "measure": "click",
                    "quantile": 0.99, "of": "response_time_ms"}),
            ]);
        }
        for i in 0..args.experiments.max(1) {
            let key = format!("load-{run_id}-{i}");
            let mut body = json!({
                "key": key, "name": "load test",
                "variants": [
                    {"key": "control", "weight": 1, "payload": {"colour": "blue"}},
                    {"key": "treatment", "weight": 1, "payload": {"colour": "green"}}
                ],
                "metrics": metrics,
                "primary_metric": "conversion"
            });
            if args.model {
                body["model"] = json!({"task": "classification"});
            }
            let created = target
                .request(Method::POST, "/v1/experiments")
                .json(&body)
                .send()
                .await
                .context("is abacus running at --url?")?;
            anyhow::ensure!(created.status() == 201, "create: {}", created.text().await?);
            let started = target
                .request(Method::POST, &format!("/v1/experiments/{key}/start"))
                .send()
                .await?;
            anyhow::ensure!(started.status() == 200, "start: {}", started.text().await?);
            if i == 0 {
                target.experiment = key;
            }
        }
        Ok(target)
    }

    /// Creates `project` (with the owner's token) and issues an admin key
    /// in it; its secret.
    async fn enter(&self, project: &str) -> anyhow::Result<String> {
        let created = self
            .request(Method::POST, "/v1/projects")
            .json(&json!({"key": project, "name": project}))
            .send()
            .await
            .context("is abacus running at --url?")?;
        anyhow::ensure!(
            created.status() == 201,
            "create project (needs an owner's --token): {}",
            created.text().await?
        );
        let issued = self
            .request(Method::POST, "/v1/keys")
            .json(&json!({"name": "load", "role": "admin", "project": project}))
            .send()
            .await?;
        anyhow::ensure!(
            issued.status() == 201,
            "issue key: {}",
            issued.text().await?
        );
        let key: serde_json::Value = issued.json().await?;
        key["secret"]
            .as_str()
            .map(str::to_owned)
            .context("the issued key has no secret")
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => builder.bearer_auth(t),
            None => builder,
        }
    }

    /// The `n`th request of the run.
    pub fn nth(&self, n: u64) -> RequestBuilder {
        // A cheap, well-spread sequence of unit ids (a multiplicative hash).
        let unit = self.first_unit + n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.units;
        let scenario = match self.scenario {
            Scenario::Mixed => match n % 10 {
                0..=4 => Scenario::Assign,
                5..=8 => Scenario::Ingest,
                _ => Scenario::Results,
            },
            other => other,
        };
        match scenario {
            Scenario::Assign => self.request(
                Method::GET,
                &format!(
                    "/v1/experiments/{}/assignment?unit_id=user-{unit}&log_exposure={}",
                    self.experiment, self.log_exposure
                ),
            ),
            Scenario::AssignAll => self.request(Method::POST, "/v1/assignments").json(
                &json!({"unit_id": format!("user-{unit}"), "log_exposure": self.log_exposure}),
            ),
            Scenario::Ingest => {
                let mut body = String::with_capacity(EVENT_BYTES);
                self.event(n, &mut body);
                self.post_json(self.events_path, body)
            }
            Scenario::IngestBatch => {
                let first = n * self.batch as u64;
                let mut body = String::with_capacity(16 + self.batch * (EVENT_BYTES + 1));
                body.push_str(r#"{"events":["#);
                for i in first..first + self.batch as u64 {
                    if i > first {
                        body.push(',');
                    }
                    self.event(i, &mut body);
                }
                body.push_str("]}");
                self.post_json(self.events_path, body)
            }
            Scenario::Results => self.request(
                Method::GET,
                &format!("/v1/experiments/{}/results", self.experiment),
            ),
            Scenario::Mixed => unreachable!("resolved above"),
            Scenario::Health => self.request(Method::GET, "/healthz"),
            Scenario::Webhooks => self.request(Method::POST, "/v1/experiments").json(&json!({
                "key": format!("load-{}-wh-{n}", self.run_id), "name": "webhook fan-out",
                "variants": [{"key": "control", "weight": 1}, {"key": "b", "weight": 1}]
            })),
        }
    }

    /// A POST of a JSON body rendered by the caller.
    fn post_json(&self, path: &str, body: String) -> RequestBuilder {
        self.request(Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
    }

    /// Appends the run's `i`th event to `out` as JSON. Ten consecutive
    /// events belong to one unit (`--units` of them from `--first-unit`,
    /// round robin): an exposure to the run's experiment, eight clicks,
    /// then a conversion worth 5..45 and no experiment (it counts in every
    /// experiment of the unit). So N events expose min(N / 10, units)
    /// units. With `--model` the clicks are four predictions and then
    /// their four outcomes, which the writer joins. Rendered straight to text (the experiment key and unit ids
    /// need no escaping): building and serialising a JSON tree per event
    /// cost the harness more CPU than it left the server on a small
    /// machine.
    fn event(&self, i: u64, out: &mut String) {
        use std::fmt::Write as _;
        let unit = self.first_unit + (i / 10) % self.units;
        let (experiment, i) = (&self.experiment, i % 10);
        // Writing to a String cannot fail.
        let _ = match i {
            1..=4 if self.model => write!(
                out,
                r#"{{"type":"prediction","unit_id":"user-{unit}","experiment":"{experiment}","properties":{{"prediction_id":"p{i}","score":0.{},"latency_ms":{}}}}}"#,
                10 + (unit * 7 + i) % 90,
                5 + (unit + i) % 20
            ),
            5..=8 if self.model => write!(
                out,
                r#"{{"type":"outcome","unit_id":"user-{unit}","properties":{{"prediction_id":"p{}","label":{}}}}}"#,
                i - 4,
                (unit + i) % 2
            ),
            0 => write!(
                out,
                r#"{{"type":"exposure","unit_id":"user-{unit}","experiment":"{experiment}"}}"#
            ),
            9 => write!(
                out,
                r#"{{"type":"conversion","unit_id":"user-{unit}","value":{}}}"#,
                5 + unit % 40
            ),
            _ => write!(
                out,
                r#"{{"type":"click","unit_id":"user-{unit}","experiment":"{experiment}","properties":{{"item_id":"sku-{i}","rank":{},"response_time_ms":12.5}}}}"#,
                i % 10 + 1
            ),
        };
    }
}

/// About the length of one rendered event, to size bodies up front.
const EVENT_BYTES: usize = 160;

#[cfg(test)]
mod tests {
    use super::*;

    impl Target {
        fn for_test(experiment: &str, units: u64) -> Self {
            Self {
                client: Client::new(),
                base: "http://127.0.0.1:1".into(),
                token: None,
                scenario: Scenario::IngestBatch,
                experiment: experiment.into(),
                units,
                first_unit: 0,
                batch: 10,
                model: false,
                log_exposure: true,
                events_path: "/v1/events",
                run_id: 0,
                deliveries: None,
            }
        }
    }

    #[test]
    fn assignments_say_whether_to_log_the_exposure_and_health_is_the_probe() {
        let mut target = Target::for_test("exp-1", 1000);
        target.scenario = Scenario::Assign;
        let query = |t: &Target| t.nth(0).build().unwrap().url().query().map(str::to_owned);
        assert!(query(&target).unwrap().ends_with("&log_exposure=true"));
        target.log_exposure = false;
        assert!(query(&target).unwrap().ends_with("&log_exposure=false"));
        target.scenario = Scenario::Health;
        let probe = target.nth(1).build().unwrap();
        assert_eq!(
            (probe.method().as_str(), probe.url().path()),
            ("GET", "/healthz")
        );
    }

    #[test]
    fn rendered_events_are_the_documented_json() {
        let target = Target::for_test("exp-1", 1000);
        let events: Vec<serde_json::Value> = (0..10)
            .map(|i| {
                let mut out = String::new();
                target.event(20 + i, &mut out);
                serde_json::from_str(&out).expect("valid JSON")
            })
            .collect();
        assert_eq!(
            events[0],
            json!({"type": "exposure", "unit_id": "user-2", "experiment": "exp-1"})
        );
        assert_eq!(
            events[3],
            json!({"type": "click", "unit_id": "user-2", "experiment": "exp-1",
                   "properties": {"item_id": "sku-3", "rank": 4, "response_time_ms": 12.5}})
        );
        assert_eq!(
            events[9],
            json!({"type": "conversion", "unit_id": "user-2", "value": 7})
        );
    }

    #[test]
    fn model_runs_send_predictions_then_their_outcomes() {
        let mut target = Target::for_test("exp-1", 1000);
        target.model = true;
        let event = |i: u64| -> serde_json::Value {
            let mut out = String::new();
            target.event(20 + i, &mut out);
            serde_json::from_str(&out).expect("valid JSON")
        };
        let prediction = event(2);
        assert_eq!(
            (
                &prediction["type"],
                &prediction["properties"]["prediction_id"]
            ),
            (&json!("prediction"), &json!("p2"))
        );
        let score = prediction["properties"]["score"].as_f64().unwrap();
        assert!((0.1..1.0).contains(&score), "{score}");
        let outcome = event(6);
        assert_eq!(
            (&outcome["type"], &outcome["properties"]["prediction_id"]),
            (&json!("outcome"), &json!("p2"))
        );
        assert_eq!(event(9)["type"], "conversion");
    }
}
