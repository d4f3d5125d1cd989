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
    batch: usize,
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
            batch: args.batch.max(1),
            events_path: match args.ack {
                Ack::Accepted => "/v1/events",
                Ack::Persisted => "/v1/events?ack=persisted",
            },
            run_id,
            deliveries: None,
        };
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
        if let Some(key) = &args.experiment {
            target.experiment = key.clone();
            return Ok(target);
        }
        for i in 0..args.experiments.max(1) {
            let key = format!("load-{run_id}-{i}");
            let body = json!({
                "key": key, "name": "load test",
                "variants": [
                    {"key": "control", "weight": 1, "payload": {"colour": "blue"}},
                    {"key": "treatment", "weight": 1, "payload": {"colour": "green"}}
                ],
                "metrics": [
                    {"key": "conversion", "kind": "mean"},
                    {"key": "click", "kind": "binomial"}
                ],
                "primary_metric": "conversion"
            });
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
        let unit = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.units;
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
                    "/v1/experiments/{}/assignment?unit_id=user-{unit}",
                    self.experiment
                ),
            ),
            Scenario::AssignAll => self
                .request(Method::POST, "/v1/assignments")
                .json(&json!({"unit_id": format!("user-{unit}")})),
            Scenario::Ingest => self
                .request(Method::POST, self.events_path)
                .json(&self.event(n)),
            Scenario::IngestBatch => {
                let first = n * self.batch as u64;
                let events: Vec<_> = (first..first + self.batch as u64)
                    .map(|i| self.event(i))
                    .collect();
                self.request(Method::POST, self.events_path)
                    .json(&json!({ "events": events }))
            }
            Scenario::Results => self.request(
                Method::GET,
                &format!("/v1/experiments/{}/results", self.experiment),
            ),
            Scenario::Mixed => unreachable!("resolved above"),
            Scenario::Webhooks => self.request(Method::POST, "/v1/experiments").json(&json!({
                "key": format!("load-{}-wh-{n}", self.run_id), "name": "webhook fan-out",
                "variants": [{"key": "control", "weight": 1}, {"key": "b", "weight": 1}]
            })),
        }
    }

    /// The run's `i`th event. Ten consecutive events belong to one unit
    /// (`--units` of them, round robin): an exposure to the run's
    /// experiment, eight clicks, then a conversion worth 5..45 and no
    /// experiment (it counts in every experiment of the unit). So N events
    /// expose min(N / 10, units) units.
    fn event(&self, i: u64) -> serde_json::Value {
        let unit = (i / 10) % self.units;
        let unit_id = format!("user-{unit}");
        let i = (i % 10) as usize;
        match i {
            0 => json!({"type": "exposure", "unit_id": unit_id, "experiment": self.experiment}),
            9 => json!({"type": "conversion", "unit_id": unit_id, "value": 5 + unit % 40}),
            _ => json!({
                "type": "click", "unit_id": unit_id, "experiment": self.experiment,
                "properties": {"item_id": format!("sku-{i}"), "rank": i % 10 + 1, "response_time_ms": 12.5}
            }),
        }
    }
}
