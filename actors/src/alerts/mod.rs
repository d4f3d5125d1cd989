//! Alerts: rules on server and experiment figures, evaluated every second
//! by one [`AlertActor`] on its own thread; alerts move
//! `open → acknowledged → resolved` through the API and resolve
//! themselves when their condition clears. Every raise and resolution is
//! written with its `alert.raised` / `alert.resolved` outbox event in one
//! synced write, so webhooks and the live stream carry it.
//!
//! One alert needs no rule: when the event store fails (a commit refused
//! after every retry) the actor raises a critical `store_failed` alert
//! itself. The failed store may refuse to record it, so it is also kept in
//! memory (listed with the stored ones) and sent to the live feed directly;
//! the `abacus_ingest_store_failed` gauge carries it to Prometheus.
//!
//! In cluster mode rules and alerts are shared by every node and evaluated
//! on one ([`replicated`]).

mod evaluate;
mod replicated;
mod signals;

use std::sync::{Arc, Mutex};

use actix::prelude::*;

pub use replicated::Replication;
pub use signals::Signals;

use self::evaluate::{
    alert_audit, rule_audit, Acknowledge, AlertActor, CreateRule, DeleteRule, MirrorAlert,
    MirrorRule, PatchRule, ReadServerFigures, Resolve, Shared,
};
use crate::clock::Clock;
use crate::cluster::RecordChange;
use crate::domain::{
    Alert, AlertId, AlertMetric, AlertRecord, AlertRule, AlertRuleRecord, AlertStatus, Principal,
    RuleId, RuleIn, RulePatch, StampIn,
};
use crate::ingest::IngestStats;
use crate::live::Live;
use crate::results::figures::Board;
use crate::storage::{blocking, Store};
use crate::webhooks::Webhooks;
use crate::{Error, Result};

/// What the rules look at.
pub(crate) struct Sources {
    /// Each running experiment's figures, derived once per tick.
    pub figures: Arc<Board>,
    pub ingest: Arc<IngestStats>,
    pub webhooks: Arc<Webhooks>,
    pub signals: Arc<Signals>,
    pub live: Arc<Live>,
}

/// The alerting subsystem.
pub struct Alerts {
    addr: Addr<AlertActor>,
    store: Store,
    signals: Arc<Signals>,
    /// The built-in store-failure alerts, recorded or not.
    store_alerts: Arc<Mutex<Vec<Alert>>>,
    clock: Arc<dyn Clock>,
    /// Cluster mode: the shared rules and alerts.
    replication: Option<Replication>,
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
    /// With `replication` (cluster mode) they are mirrored from the shared
    /// buckets and evaluated only while this node holds the lease.
    pub(crate) async fn start(
        store: Store,
        sources: Sources,
        clock: Arc<dyn Clock>,
        replication: Option<Replication>,
    ) -> Result<Self> {
        let (rules, active, failed) = {
            let store = store.clone();
            blocking(move || {
                let rules = store.rules()?;
                let active = store.alerts(usize::MAX, |a| a.is_active() && a.rule_id.is_some())?;
                let failed = store.alerts(usize::MAX, |a| {
                    a.is_active() && a.metric == AlertMetric::StoreFailed
                })?;
                Ok((rules, active, failed))
            })
            .await?
        };
        let signals = Arc::clone(&sources.signals);
        let store_alerts = Arc::new(Mutex::new(failed));
        let thread = Arbiter::new();
        let actor_store = store.clone();
        let actor_alerts = Arc::clone(&store_alerts);
        let actor_clock = Arc::clone(&clock);
        let shared = replication
            .as_ref()
            .map(|r| Shared::new(r.alerts.clone(), Arc::clone(&r.evaluates)));
        let addr = AlertActor::start_in_arbiter(&thread.handle(), move |_| {
            AlertActor::new(
                actor_store,
                sources,
                actor_clock,
                rules,
                active,
                actor_alerts,
                shared,
            )
        });
        if let Some(replication) = &replication {
            replicated::spawn(&addr, replication);
        }
        Ok(Self {
            addr,
            store,
            signals,
            store_alerts,
            clock,
            replication,
            _thread: thread,
        })
    }

    /// Where the HTTP layer records responses.
    pub fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    /// The server's figures over the last `seconds` (at most 300).
    pub async fn server_figures(&self, seconds: u32) -> Result<ServerFigures> {
        Ok(self.addr.send(ReadServerFigures(seconds)).await?)
    }

    /// Creates a rule on behalf of `by`.
    pub async fn create_rule(&self, input: RuleIn, by: &Principal) -> Result<AlertRule> {
        let Some(shared) = &self.replication else {
            return self.addr.send(CreateRule(input, by.clone())).await?;
        };
        let rule = AlertRule::create(input, self.clock.now())?;
        let record = AlertRuleRecord::from(&rule);
        let revision = shared.rules.create(rule.id.as_str(), &record).await?;
        let audit = rule_audit(by, rule.created_at, "alert_rule.created", None, Some(&rule));
        let change = RecordChange::Put(id_of(&rule), Box::new(record), revision);
        self.mirror_rule(change, audit).await?;
        Ok(rule)
    }

    /// Cluster mode: records a change this node made to the shared rules,
    /// with its audit entry.
    async fn mirror_rule(
        &self,
        change: RecordChange<AlertRuleRecord>,
        audit: crate::domain::AuditEntry,
    ) -> Result<()> {
        let audit = Some(audit);
        self.addr.send(MirrorRule { change, audit }).await?
    }

    /// Changes a rule. Disabling it resolves its alerts (in cluster mode
    /// on the evaluating node's next tick).
    pub async fn patch_rule(
        &self,
        id: &str,
        patch: RulePatch,
        by: &Principal,
    ) -> Result<AlertRule> {
        let rule = rule_id(id)?;
        let Some(shared) = &self.replication else {
            return self.addr.send(PatchRule(rule, patch, by.clone())).await?;
        };
        let (current, revision) = shared
            .rules
            .get(id)
            .await?
            .ok_or_else(|| Error::RuleNotFound(id.to_owned()))?;
        let now = self.clock.now();
        let current = AlertRule::from(current);
        let next = current.patched(patch, now)?;
        let record = AlertRuleRecord::from(&next);
        let revision = shared.rules.update(id, &record, revision).await?;
        let audit = rule_audit(by, now, "alert_rule.updated", Some(&current), Some(&next));
        let change = RecordChange::Put(id_of(&next), Box::new(record), revision);
        self.mirror_rule(change, audit).await?;
        Ok(next)
    }

    /// Deletes a rule; its active alerts resolve (in cluster mode on the
    /// evaluating node's next tick).
    pub async fn delete_rule(&self, id: &str, by: &Principal) -> Result<()> {
        let rule = rule_id(id)?;
        let Some(shared) = &self.replication else {
            return self.addr.send(DeleteRule(rule, by.clone())).await?;
        };
        let Some((current, _)) = shared.rules.get(id).await? else {
            return Err(Error::RuleNotFound(id.to_owned()));
        };
        let revision = shared.rules.delete(id).await?;
        let current = AlertRule::from(current);
        let audit = rule_audit(
            by,
            self.clock.now(),
            "alert_rule.deleted",
            Some(&current),
            None,
        );
        let change = RecordChange::Deleted(id.to_owned(), revision);
        self.mirror_rule(change, audit).await
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

    /// Alerts, newest first, with a store-failure alert the store could
    /// not record.
    pub async fn list(&self, filter: AlertFilter) -> Result<Vec<Alert>> {
        let store = self.store.clone();
        let unrecorded = self.store_alerts();
        blocking(move || {
            let keep = |a: &Alert| {
                filter.status.is_none_or(|s| a.status == s)
                    && filter
                        .experiment
                        .as_deref()
                        .is_none_or(|e| a.experiment.as_deref() == Some(e))
            };
            let mut alerts = store.alerts(filter.limit, keep)?;
            for alert in unrecorded.into_iter().filter(keep) {
                // Ids sort by time, and the list is newest first.
                if let Err(at) = alerts.binary_search_by(|a| alert.id.cmp(&a.id)) {
                    alerts.insert(at, alert);
                }
            }
            alerts.truncate(filter.limit);
            Ok(alerts)
        })
        .await
    }

    /// One alert.
    pub async fn get(&self, id: &str) -> Result<Alert> {
        let (store, key) = (self.store.clone(), id.to_owned());
        let unrecorded = self
            .store_alerts()
            .into_iter()
            .find(|a| a.id.as_str() == id);
        blocking(move || store.alert(&key))
            .await?
            .or(unrecorded)
            .ok_or_else(|| Error::AlertNotFound(id.to_owned()))
    }

    fn store_alerts(&self) -> Vec<Alert> {
        self.store_alerts
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// `open → acknowledged`, by `by`.
    pub async fn acknowledge(&self, id: &str, stamp: StampIn, by: &Principal) -> Result<Alert> {
        // Acknowledging is not news for subscribers: no outbox event.
        let shared = |alert: &Alert| alert.acknowledged(stamp.clone(), self.clock.now());
        let action = ("alert.acknowledged", by);
        match self.change_shared(id, shared, false, action).await? {
            Some(alert) => Ok(alert),
            None => {
                let ack = Acknowledge(alert_id(id)?, stamp, by.clone());
                self.addr.send(ack).await?
            }
        }
    }

    /// `open | acknowledged → resolved`, by `by`.
    pub async fn resolve(&self, id: &str, stamp: StampIn, by: &Principal) -> Result<Alert> {
        let shared = |alert: &Alert| alert.resolved_by(stamp.clone(), self.clock.now());
        match self
            .change_shared(id, shared, true, ("alert.resolved", by))
            .await?
        {
            Some(alert) => Ok(alert),
            None => {
                let resolve = Resolve(alert_id(id)?, stamp, by.clone());
                self.addr.send(resolve).await?
            }
        }
    }

    /// Cluster mode: changes the shared alert `id` by compare-and-set and
    /// records it here (with its event if `announce`, and the audit entry
    /// of the `action` by its caller); `None` on a single node or for an
    /// alert only this node has (a store failure).
    async fn change_shared(
        &self,
        id: &str,
        change: impl FnOnce(&Alert) -> Result<Alert>,
        announce: bool,
        (action, by): (&str, &Principal),
    ) -> Result<Option<Alert>> {
        let Some(shared) = &self.replication else {
            return Ok(None);
        };
        alert_id(id)?;
        let Some((current, revision)) = shared.alerts.get(id).await? else {
            return Ok(None);
        };
        let current = Alert::from(current);
        let next = change(&current)?;
        let revision = shared
            .alerts
            .update(id, &AlertRecord::from(&next), revision)
            .await?;
        let now = self.clock.now();
        let event = announce.then(|| next.domain_event(now));
        let mirror = MirrorAlert {
            alert: next.clone(),
            revision,
            event,
            audit: Some(alert_audit(by, now, action, &current, &next)),
        };
        self.addr.send(mirror).await??;
        Ok(Some(next))
    }
}

/// A rule's id as its key in the shared bucket.
fn id_of(rule: &AlertRule) -> String {
    rule.id.as_str().to_owned()
}

/// `id` as a rule id; one that cannot be one names no rule.
fn rule_id(id: &str) -> Result<RuleId> {
    RuleId::try_from(id.to_owned()).map_err(|_| Error::RuleNotFound(id.to_owned()))
}

/// `id` as an alert id; one that cannot be one names no alert.
fn alert_id(id: &str) -> Result<AlertId> {
    AlertId::try_from(id.to_owned()).map_err(|_| Error::AlertNotFound(id.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::SystemClock;
    use crate::storage::StoreOptions;
    use crate::webhooks::DeliveryPolicy;

    /// Sources with nothing in them but `ingest`.
    pub(super) async fn sources(store: &Store, ingest: &Arc<IngestStats>) -> Sources {
        let settings = DeliveryPolicy {
            allow_private: false,
            timeout: Duration::from_secs(1),
            retry_schedule: Vec::new(),
            jitter: 0.0,
            disable_after: 1,
            max_retry_after: Duration::from_secs(1),
        };
        let webhooks = Webhooks::start(
            store.clone(),
            settings,
            Arc::new(crate::clock::SystemClock),
            crate::quotas::Quotas::unmetered(),
        )
        .await
        .expect("webhooks");
        Sources {
            figures: Arc::default(),
            ingest: Arc::clone(ingest),
            webhooks: Arc::new(webhooks),
            signals: Arc::default(),
            live: Arc::default(),
        }
    }

    pub(super) fn store(dir: &std::path::Path) -> Store {
        let options = StoreOptions {
            dedup_window_ms: 1000,
            retention_ms: None,
            cache_bytes: 8 << 20,
            audit_retention_ms: 365 * 24 * 3600 * 1000,
        };
        Store::open(dir, options).expect("store")
    }

    #[test]
    fn a_store_alert_the_store_could_not_record_is_listed_and_found() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        actix::System::new().block_on(async {
            let ingest = Arc::new(IngestStats::default());
            let sources = sources(&store, &ingest).await;
            let alerts = Alerts::start(store.clone(), sources, Arc::new(SystemClock), None)
                .await
                .expect("start");
            let unrecorded = Alert::store_failed("disk full", time::OffsetDateTime::now_utc());
            alerts
                .store_alerts
                .lock()
                .expect("lock")
                .push(unrecorded.clone());
            let filter = AlertFilter {
                status: Some(AlertStatus::Open),
                experiment: None,
                limit: 10,
            };
            let listed = alerts.list(filter).await.expect("list");
            assert_eq!(listed, std::slice::from_ref(&unrecorded));
            assert_eq!(
                alerts.get(unrecorded.id.as_str()).await.expect("get"),
                unrecorded
            );
            let filter = AlertFilter {
                status: Some(AlertStatus::Resolved),
                experiment: None,
                limit: 10,
            };
            assert!(alerts.list(filter).await.expect("list").is_empty());
        });
    }
}
