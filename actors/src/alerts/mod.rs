//! Alerts: rules on server and experiment figures, evaluated every second
//! by one [`AlertActor`] on its own thread; alerts move
//! `open → acknowledged → resolved` through the API and resolve
//! themselves when their condition clears. Every raise and resolution is
//! written with its `alert.raised` / `alert.resolved` outbox event in one
//! synced write, so webhooks and the live stream carry it.

mod alert;
mod evaluate;
mod rule;
mod signals;

use std::sync::Arc;

use actix::prelude::*;

pub use alert::{Alert, AlertStatus, Firing, Stamp, StampIn};
pub use rule::{AlertMetric, AlertRule, RuleIn, RulePatch, Severity};
pub use signals::Signals;

pub(crate) use self::evaluate::event_of;
use self::evaluate::{
    Acknowledge, AlertActor, CreateRule, DeleteRule, Figures, PatchRule, Resolve,
};
use crate::aggregator::LiveAggregates;
use crate::catalog::Registry;
use crate::clock::Clock;
use crate::ingest::IngestStats;
use crate::storage::{blocking, Store};
use crate::webhooks::Webhooks;
use crate::{Error, Result};

/// What the rules look at.
pub(crate) struct Sources {
    pub registry: Arc<Registry>,
    pub aggregates: Arc<LiveAggregates>,
    pub ingest: Arc<IngestStats>,
    pub webhooks: Arc<Webhooks>,
    pub signals: Arc<Signals>,
}

/// The alerting subsystem.
pub struct Alerts {
    addr: Addr<AlertActor>,
    store: Store,
    signals: Arc<Signals>,
    _thread: Arbiter,
}

/// Response-time percentiles in ms (upper bucket edges: at most 10% high).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// The server over a recent window, as the alert rules see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ServerFigures {
    /// Seconds covered (less than asked for just after start).
    pub window_s: usize,
    /// HTTP responses per second.
    pub requests_per_s: f64,
    /// Share of responses with status >= 400.
    pub error_rate: Option<f64>,
    /// Events accepted per second.
    pub events_per_s: f64,
    /// Events refused in the window.
    pub rejected: u64,
    /// Response times, every route.
    pub latency_ms: Percentiles,
    /// `POST /v1/events` response times.
    pub event_latency_ms: Percentiles,
}

/// Filter of [`Alerts::list`].
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Only alerts in this status.
    pub status: Option<AlertStatus>,
    /// Only alerts about this experiment.
    pub experiment: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
}

impl Alerts {
    /// Loads rules and active alerts and starts evaluating, on a thread of
    /// its own (its writes are synced and must not stall request threads).
    pub(crate) async fn start(
        store: Store,
        sources: Sources,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let (rules, active) = {
            let store = store.clone();
            blocking(move || {
                let rules = store.rules()?;
                let active = store.alerts(usize::MAX, |a| a.is_active() && a.rule_id.is_some())?;
                Ok((rules, active))
            })
            .await?
        };
        let signals = Arc::clone(&sources.signals);
        let thread = Arbiter::new();
        let actor_store = store.clone();
        let addr = AlertActor::start_in_arbiter(&thread.handle(), move |_| {
            AlertActor::new(actor_store, sources, clock, rules, active)
        });
        Ok(Self {
            addr,
            store,
            signals,
            _thread: thread,
        })
    }

    /// Where the HTTP layer records responses.
    pub fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    /// The server's figures over the last `seconds` (at most 300).
    pub async fn server_figures(&self, seconds: u32) -> Result<ServerFigures> {
        Ok(self.addr.send(Figures(seconds)).await?)
    }

    /// Creates a rule.
    pub async fn create_rule(&self, input: RuleIn) -> Result<AlertRule> {
        self.addr.send(CreateRule(input)).await?
    }

    /// Changes a rule.
    pub async fn patch_rule(&self, id: &str, patch: RulePatch) -> Result<AlertRule> {
        self.addr.send(PatchRule(id.to_owned(), patch)).await?
    }

    /// Deletes a rule; its active alerts resolve.
    pub async fn delete_rule(&self, id: &str) -> Result<()> {
        self.addr.send(DeleteRule(id.to_owned())).await?
    }

    /// Every rule.
    pub async fn rules(&self) -> Result<Vec<AlertRule>> {
        let store = self.store.clone();
        blocking(move || store.rules()).await
    }

    /// One rule.
    pub async fn rule(&self, id: &str) -> Result<AlertRule> {
        let (store, key) = (self.store.clone(), id.to_owned());
        blocking(move || store.rule(&key))
            .await?
            .ok_or_else(|| Error::RuleNotFound(id.to_owned()))
    }

    /// Alerts, newest first.
    pub async fn list(&self, filter: AlertFilter) -> Result<Vec<Alert>> {
        let store = self.store.clone();
        blocking(move || {
            store.alerts(filter.limit, |a| {
                filter.status.is_none_or(|s| a.status == s)
                    && filter
                        .experiment
                        .as_deref()
                        .is_none_or(|e| a.experiment.as_deref() == Some(e))
            })
        })
        .await
    }

    /// One alert.
    pub async fn get(&self, id: &str) -> Result<Alert> {
        let (store, key) = (self.store.clone(), id.to_owned());
        blocking(move || store.alert(&key))
            .await?
            .ok_or_else(|| Error::AlertNotFound(id.to_owned()))
    }

    /// `open → acknowledged`.
    pub async fn acknowledge(&self, id: &str, stamp: StampIn) -> Result<Alert> {
        self.addr.send(Acknowledge(id.to_owned(), stamp)).await?
    }

    /// `open | acknowledged → resolved`.
    pub async fn resolve(&self, id: &str, stamp: StampIn) -> Result<Alert> {
        self.addr.send(Resolve(id.to_owned(), stamp)).await?
    }
}
