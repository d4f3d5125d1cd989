//! The alert actor: owns the rules and the active alerts, evaluates every
//! rule once a second, and is the one writer of both on this node.
//!
//! In cluster mode (see [`super::replicated`]) the rules and alerts are
//! shared: every node's actor keeps a mirror of them, and only the node
//! holding the evaluator's lease evaluates the rules, raising and clearing
//! alerts by compare-and-set in the shared bucket before recording them
//! (with their events) in its own store.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use time::OffsetDateTime;

use super::signals::SignalCounts;
use super::{Percentiles, ServerFigures, Sources};
use crate::clock::Clock;
use crate::cluster::{RecordBucket, RecordChange, Revision};
use crate::domain::{
    Alert, AlertId, AlertMetric, AlertRecord, AlertRule, AlertRuleRecord, AuditEntry, DomainEvent,
    Firing, Principal, ResourceKind, RuleId, RuleIn, RulePatch, StampIn, WebhookId, MAX_WINDOW_S,
    SYSTEM,
};
use crate::storage::Store;
use crate::{Error, Result};

/// How often rules are evaluated.
const TICK: Duration = Duration::from_secs(1);

/// An alert's identity while active: its rule and its subject (experiment,
/// subscription, or empty for server rules).
type Key = (RuleId, String);

/// One second's cumulative server counters.
struct Sample {
    signals: SignalCounts,
    rejections: u64,
    accepted: u64,
}

/// See the module docs.
pub(super) struct AlertActor {
    store: Store,
    sources: Sources,
    clock: Arc<dyn Clock>,
    rules: BTreeMap<RuleId, AlertRule>,
    active: HashMap<Key, Alert>,
    /// Resolved by a person while still firing: not raised again until the
    /// condition clears once.
    suppressed: HashSet<Key>,
    history: VecDeque<Sample>,
    /// The built-in store-failure alerts not yet resolved by abacus (one,
    /// or those an earlier run left), shared with [`super::Alerts`] so they
    /// are listed even when the failed store cannot record them.
    store_alerts: Arc<Mutex<Vec<Alert>>>,
    /// The newest is recorded in the store with its `alert.raised` event.
    store_alert_recorded: bool,
    /// The newest was published to the live feed directly.
    store_alert_streamed: bool,
    /// Cluster mode: the shared alerts.
    shared: Option<Shared>,
}

/// What the actor needs in cluster mode.
pub(super) struct Shared {
    /// The alerts every node mirrors.
    pub bucket: RecordBucket<AlertRecord>,
    /// Whether this node evaluates the rules now (it holds the lease).
    pub evaluates: Arc<AtomicBool>,
    /// Each shared alert's revision as last seen here.
    pub revisions: HashMap<AlertId, Revision>,
    /// Each shared rule's revision as last seen here (deleted ones too,
    /// so a late copy of an older change is not applied).
    pub rule_revisions: HashMap<String, Revision>,
    /// The newest alert of each rule and subject: whether it was resolved
    /// by a person decides whether the key is suppressed.
    pub newest: HashMap<Key, AlertId>,
    /// The mirror has every alert there was when it started: until then
    /// this node does not evaluate (it would raise alerts already open).
    pub current: bool,
}

impl Shared {
    /// Cluster mode as `bucket` and `evaluates` say, nothing mirrored yet.
    pub fn new(bucket: RecordBucket<AlertRecord>, evaluates: Arc<AtomicBool>) -> Self {
        Self {
            bucket,
            evaluates,
            revisions: HashMap::new(),
            rule_revisions: HashMap::new(),
            newest: HashMap::new(),
            current: false,
        }
    }
}

/// How long one tick's alert changes may wait for the shared bucket.
const SHARE_WAIT: Duration = Duration::from_secs(5);

impl AlertActor {
    pub(super) fn new(
        store: Store,
        sources: Sources,
        clock: Arc<dyn Clock>,
        rules: Vec<AlertRule>,
        active: Vec<Alert>,
        store_alerts: Arc<Mutex<Vec<Alert>>>,
        shared: Option<Shared>,
    ) -> Self {
        // Counting starts now: the first window includes the first second.
        let mut history = VecDeque::with_capacity(MAX_WINDOW_S as usize + 2);
        history.push_back(Sample {
            signals: sources.signals.snapshot(),
            rejections: 0,
            accepted: 0,
        });
        Self {
            store,
            sources,
            clock,
            rules: rules.into_iter().map(|r| (r.id.clone(), r)).collect(),
            active: active
                .into_iter()
                .filter_map(|a| Some((key_of(&a)?, a)))
                .collect(),
            suppressed: HashSet::new(),
            history,
            store_alerts,
            store_alert_recorded: true,
            store_alert_streamed: false,
            shared,
        }
    }

    /// The built-in alert on the event store: raised (critical, without a
    /// rule) once the ingest writer marks the store failed; resolved by
    /// abacus when the store works (after a restart). The failed store
    /// may refuse to record it too, so it is kept in memory (listed by
    /// [`super::Alerts::list`]), published to the live feed directly when
    /// it cannot go through the outbox, and mirrored by the
    /// `abacus_ingest_store_failed` gauge. Recording it is retried every
    /// tick.
    fn check_store(&mut self) {
        let now = self.clock.now();
        let current = self.store_alerts();
        match self.sources.ingest.store_failure() {
            Some(reason) if current.is_empty() => {
                let alert = Alert::store_failed(&reason, now);
                tracing::error!(alert = %alert.id, %reason, "alert raised: the event store failed");
                self.set_store_alerts(vec![alert]);
                self.store_alert_recorded = false;
                self.store_alert_streamed = false;
            }
            None if !current.is_empty() => {
                let cleared: Vec<(Alert, DomainEvent)> = current
                    .iter()
                    .filter(|a| a.is_active())
                    .map(|a| {
                        let a = a.cleared("the event store takes writes again", now);
                        let event = a.domain_event(now);
                        (a, event)
                    })
                    .collect();
                match self.store.put_alerts(&cleared, None) {
                    Ok(()) => {
                        tracing::info!("store-failure alert resolved");
                        self.set_store_alerts(Vec::new());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "resolving the store-failure alert failed")
                    }
                }
                return;
            }
            _ => {}
        }
        if self.store_alert_recorded {
            return;
        }
        let Some(alert) = self.store_alerts().pop() else {
            return;
        };
        let event = alert.domain_event(now);
        match self.store.put_alerts(&[(alert, event.clone())], None) {
            Ok(()) => self.store_alert_recorded = true,
            Err(e) if !self.store_alert_streamed => {
                tracing::error!(error = %e, "recording the store-failure alert failed; it is kept in memory and sent to the live feed");
                self.sources
                    .live
                    .publish("alert.raised", None, &event.payload());
                self.store_alert_streamed = true;
            }
            Err(_) => {}
        }
    }

    /// The unresolved built-in store alerts, oldest first.
    fn store_alerts(&self) -> Vec<Alert> {
        self.store_alerts
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    fn set_store_alerts(&self, alerts: Vec<Alert>) {
        if let Ok(mut current) = self.store_alerts.lock() {
            *current = alerts;
        }
    }

    /// A built-in store alert by id, recorded or not.
    fn store_alert(&self, id: &AlertId) -> Option<Alert> {
        self.store_alerts().into_iter().find(|a| &a.id == id)
    }

    /// Keeps the in-memory copy of a built-in store alert in step with a
    /// change made through the API.
    fn track(&self, alert: &Alert) {
        if let Ok(mut alerts) = self.store_alerts.lock() {
            for a in alerts.iter_mut().filter(|a| a.id == alert.id) {
                a.clone_from(alert);
            }
        }
    }

    /// Takes this second's sample, runs the built-in store check and, where
    /// this node evaluates, every enabled rule: returns the alerts to raise
    /// and to clear.
    fn evaluate(&mut self) -> Vec<Alert> {
        self.check_store();
        let ingest = &self.sources.ingest;
        let sample = Sample {
            signals: self.sources.signals.snapshot(),
            rejections: ingest.rejected_full_events.load(Ordering::Relaxed)
                + ingest.rejected_invalid.load(Ordering::Relaxed)
                + ingest.rejected_failed.load(Ordering::Relaxed),
            accepted: ingest.accepted.load(Ordering::Relaxed),
        };
        if self.history.len() > MAX_WINDOW_S as usize {
            self.history.pop_front();
        }
        self.history.push_back(sample);
        if let Some(shared) = &self.shared {
            if !shared.current || !shared.evaluates.load(Ordering::Acquire) {
                return Vec::new();
            }
        }

        let mut firing: HashMap<Key, (&AlertRule, Firing)> = HashMap::new();
        for rule in self.rules.values().filter(|r| r.enabled) {
            for f in self.check(rule) {
                let subject = subject(
                    f.experiment.as_deref(),
                    f.subscription.as_ref().map(WebhookId::as_str),
                );
                firing.insert((rule.id.clone(), subject), (rule, f));
            }
        }
        let now = self.clock.now();
        let mut changes = Vec::new();
        for (key, (rule, f)) in &firing {
            if !self.active.contains_key(key) && !self.suppressed.contains(key) {
                changes.push(Alert::raised(rule, f.clone(), now));
            }
        }
        for (key, alert) in &self.active {
            if !firing.contains_key(key) {
                let why = match self.rules.get(&key.0) {
                    None => "rule deleted",
                    Some(rule) if !rule.enabled => "rule disabled",
                    Some(_) => "condition cleared",
                };
                changes.push(alert.cleared(why, now));
            }
        }
        self.suppressed.retain(|k| firing.contains_key(k));
        changes
    }

    /// Records what a tick found: in this node's store, or in cluster mode
    /// first in the shared bucket, all at once and for at most
    /// [`SHARE_WAIT`] (a change another node made since loses there, and
    /// the next tick decides again on what the mirror brings). A failed
    /// write changes nothing: the next tick tries again.
    fn record(&mut self, changes: Vec<Alert>, ctx: &mut Context<Self>) {
        if changes.is_empty() {
            return;
        }
        let Some(shared) = &self.shared else {
            let _ = self.write(changes, None);
            return;
        };
        let bucket = shared.bucket.clone();
        let writes = changes.into_iter().map(|alert| {
            let revision = shared.revisions.get(&alert.id).copied();
            let bucket = bucket.clone();
            async move {
                let (id, record) = (alert.id.as_str(), AlertRecord::from(&alert));
                let written = match revision {
                    None => bucket.create(id, &record).await,
                    Some(revision) => bucket.update(id, &record, revision).await,
                };
                match written {
                    Ok(revision) => Some((alert, revision)),
                    Err(e) => {
                        tracing::warn!(alert = %alert.id, error = %e, "sharing an alert failed");
                        None
                    }
                }
            }
        });
        let share = tokio::time::timeout(SHARE_WAIT, futures_util::future::join_all(writes));
        ctx.wait(share.into_actor(self).map(|written, actor, _| {
            let Ok(written) = written else {
                tracing::warn!("sharing alerts: NATS did not answer in time");
                return;
            };
            let now = actor.clock.now();
            let written: Vec<((Alert, DomainEvent), Revision)> = written
                .into_iter()
                .flatten()
                .map(|(alert, revision)| {
                    let event = alert.domain_event(now);
                    ((alert, event), revision)
                })
                .collect();
            // The bucket is the truth: memory follows it even if this
            // node's copy cannot be written.
            let (with_events, revisions): (Vec<_>, Vec<_>) = written.into_iter().unzip();
            if let Err(e) = actor.store.put_alerts(&with_events, None) {
                tracing::error!(error = %e, "recording shared alerts here failed");
            }
            for ((alert, _), revision) in with_events.into_iter().zip(revisions) {
                actor.mirror_in_memory(&alert, revision);
                actor.remember(alert);
            }
        }));
    }

    /// Cluster mode: keeps a shared alert as the bucket has it at
    /// `revision`, unless this node has seen a newer one; with `event`
    /// (the change was made through this node) the event is recorded
    /// whatever the revision, for this node's outbox to relay, with the
    /// alert as this node has it.
    fn mirror(&mut self, msg: MirrorAlert) -> Result<()> {
        let MirrorAlert {
            alert,
            revision,
            event,
            audit,
        } = msg;
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let audit = audit.as_ref();
        let seen = shared.revisions.get(&alert.id).copied().unwrap_or(0);
        if revision <= seen {
            return match event {
                Some(event) => {
                    let stored = self.store.alert(alert.id.as_str())?.unwrap_or(alert);
                    self.store.put_alerts(&[(stored, event)], audit)
                }
                None => self.store.write_audited(Default::default(), audit),
            };
        }
        // Memory first: the bucket is the truth, whatever this store says.
        self.mirror_in_memory(&alert, revision);
        match event {
            Some(event) => self.store.put_alerts(&[(alert, event)], audit),
            None => self.store.put_alert(&alert, audit),
        }
    }

    /// Cluster mode: the active alerts, the newest alert of each key and
    /// the suppressed keys as the shared `alert` at `revision` leaves them.
    /// A key is suppressed while its newest alert is one a person resolved
    /// (until the evaluator sees its condition clear once), so a node
    /// taking evaluation over does not raise it again at once either.
    fn mirror_in_memory(&mut self, alert: &Alert, revision: Revision) {
        let Some(shared) = &mut self.shared else {
            return;
        };
        shared.revisions.insert(alert.id.clone(), revision);
        let Some(key) = key_of(alert) else {
            return;
        };
        let newest = shared
            .newest
            .entry(key.clone())
            .or_insert_with(|| alert.id.clone());
        if alert.id > *newest {
            newest.clone_from(&alert.id);
        }
        let is_newest = *newest == alert.id;
        if alert.is_active() {
            if is_newest {
                self.suppressed.remove(&key);
                self.active.insert(key, alert.clone());
            }
            return;
        }
        if self.active.get(&key).is_some_and(|a| a.id == alert.id) {
            self.active.remove(&key);
        }
        if is_newest && alert.resolved.as_ref().is_some_and(|r| r.by != SYSTEM) {
            self.suppressed.insert(key);
        }
    }

    /// What `rule` finds true now.
    fn check(&self, rule: &AlertRule) -> Vec<Firing> {
        let threshold = rule.threshold.unwrap_or(0.0);
        let server = |value: Option<f64>, message: String| -> Vec<Firing> {
            value
                .filter(|v| *v > threshold)
                .map(|value| Firing {
                    experiment: None,
                    subscription: None,
                    value: Some(value),
                    message,
                })
                .into_iter()
                .collect()
        };
        match rule.metric {
            AlertMetric::EventLatencyP95Ms => {
                let p95 = self.window(rule).0.event_latency_ms(0.95);
                server(
                    p95,
                    format!(
                        "p95 of POST /v1/events over {} s is {:.2} ms (threshold {threshold} ms)",
                        rule.window_s,
                        p95.unwrap_or(0.0)
                    ),
                )
            }
            AlertMetric::ErrorRate => {
                let rate = self.window(rule).0.error_rate();
                server(
                    rate,
                    format!(
                        "{:.1}% of responses over {} s were errors (threshold {:.1}%)",
                        rate.unwrap_or(0.0) * 100.0,
                        rule.window_s,
                        threshold * 100.0
                    ),
                )
            }
            AlertMetric::IngestRejections => {
                let rejected = self.window(rule).1;
                server(
                    Some(rejected as f64),
                    format!(
                        "{rejected} events refused over {} s (threshold {threshold})",
                        rule.window_s
                    ),
                )
            }
            AlertMetric::Srm
            | AlertMetric::GuardrailRegression
            | AlertMetric::PredictionDrift
            | AlertMetric::ModelQuality => self.experiments(rule),
            // Raised by `check_store`, never by a rule.
            AlertMetric::StoreFailed => Vec::new(),
            AlertMetric::WebhookDisabled => self
                .sources
                .webhooks
                .disabled()
                .into_iter()
                .map(|id| Firing {
                    experiment: None,
                    message: format!("webhook subscription {id} is disabled"),
                    subscription: Some(id),
                    value: None,
                })
                .collect(),
        }
    }

    /// The rule's window: server counters and refused events.
    fn window(&self, rule: &AlertRule) -> (SignalCounts, u64) {
        let (last, first, _) = self.span(rule.window_s);
        (
            last.signals.since(&first.signals),
            last.rejections.saturating_sub(first.rejections),
        )
    }

    /// The newest sample, the one up to `seconds` before it, and the
    /// seconds between them.
    fn span(&self, seconds: u32) -> (&Sample, &Sample, usize) {
        let len = self.history.len();
        let back = (seconds as usize).min(len.saturating_sub(1));
        // The history is never empty: it is seeded at start.
        let last = &self.history[len - 1];
        (last, &self.history[len - 1 - back], back)
    }

    /// SRM, guardrail and model rules over running experiments, from the figures
    /// the results ticker derived.
    fn experiments(&self, rule: &AlertRule) -> Vec<Firing> {
        let mut out = Vec::new();
        for (key, (_, figures)) in self.sources.figures.load().iter() {
            if rule.experiment.as_ref().is_some_and(|e| e != key) {
                continue;
            }
            let model_rule = matches!(
                rule.metric,
                AlertMetric::PredictionDrift | AlertMetric::ModelQuality
            );
            let found = if model_rule {
                let threshold = rule.threshold.unwrap_or(0.0);
                (figures.model.as_ref())
                    .and_then(|m| model_firing(rule.metric, key.as_str(), m, threshold))
            } else if rule.metric == AlertMetric::Srm {
                figures.srm.detected.then(|| Firing {
                    experiment: Some(key.to_string()),
                    subscription: None,
                    value: figures.srm.p_value,
                    message: format!(
                        "sample-ratio mismatch in {key}: units {:?}, p = {:.2e}",
                        figures.units,
                        figures.srm.p_value.unwrap_or(0.0)
                    ),
                })
            } else {
                figures
                    .guardrails
                    .iter()
                    .find(|g| g.regressed)
                    .map(|g| Firing {
                        experiment: Some(key.to_string()),
                        subscription: None,
                        value: g.relative_lift,
                        message: format!(
                            "guardrail '{}' regressed in {key}: variant '{}' moved it by {:+.1}% \
                             (tolerated {:.1}%)",
                            g.metric,
                            g.variant,
                            g.relative_lift.unwrap_or(0.0) * 100.0,
                            g.max_relative_drop * 100.0
                        ),
                    })
            };
            out.extend(found);
        }
        out
    }

    /// Persists alert changes with their events (and `audit`, the entry of
    /// the API change that made them, if any), then mirrors them in memory.
    fn write(&mut self, changes: Vec<Alert>, audit: Option<&AuditEntry>) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        let with_events: Vec<(Alert, DomainEvent)> = changes
            .into_iter()
            .map(|a| {
                let event = a.domain_event(now);
                (a, event)
            })
            .collect();
        if let Err(e) = self.store.put_alerts(&with_events, audit) {
            tracing::error!(error = %e, "writing alerts failed");
            return Err(e);
        }
        for (alert, _) in with_events {
            self.remember(alert);
        }
        Ok(())
    }

    fn remember(&mut self, alert: Alert) {
        let Some(key) = key_of(&alert) else {
            return;
        };
        if alert.is_active() {
            tracing::warn!(alert = %alert.id, severity = ?alert.severity, message = %alert.message, "alert raised");
            self.active.insert(key, alert);
        } else {
            tracing::info!(alert = %alert.id, "alert resolved");
            self.active.remove(&key);
        }
    }

    /// The rule's active alerts, resolved because `why`.
    fn resolve_all_of(&self, rule: &RuleId, why: &str, now: OffsetDateTime) -> Vec<Alert> {
        self.active
            .iter()
            .filter(|((r, _), _)| r == rule)
            .map(|(_, a)| a.cleared(why, now))
            .collect()
    }
}

/// A model rule's firing for one experiment: the variant furthest beyond
/// `threshold` (PSI for drift, relative degradation for quality).
fn model_firing(
    metric: AlertMetric,
    experiment: &str,
    model: &crate::results::model::ModelResults,
    threshold: f64,
) -> Option<Firing> {
    let drift = metric == AlertMetric::PredictionDrift;
    let (variant, value) = model
        .variants
        .iter()
        .filter_map(|v| {
            let value = if drift {
                v.drift.psi
            } else {
                v.quality.degradation
            };
            Some((v.variant.as_str(), value?))
        })
        .filter(|(_, value)| *value > threshold)
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    let message = if drift {
        format!(
            "predictions of '{variant}' in {experiment} drifted from its baseline: \
             PSI {value:.3} (threshold {threshold})"
        )
    } else {
        format!(
            "model quality of '{variant}' in {experiment} fell {:.1}% from its baseline \
             (threshold {:.1}%)",
            value * 100.0,
            threshold * 100.0
        )
    };
    Some(Firing {
        experiment: Some(experiment.to_owned()),
        subscription: None,
        value: Some(value),
        message,
    })
}

fn key_of(alert: &Alert) -> Option<Key> {
    let subject = subject(
        alert.experiment.as_deref(),
        alert.subscription.as_ref().map(WebhookId::as_str),
    );
    Some((alert.rule_id.clone()?, subject))
}

/// What an alert is about: its experiment, its subscription, or the server
/// (empty).
fn subject(experiment: Option<&str>, subscription: Option<&str>) -> String {
    experiment.or(subscription).unwrap_or_default().to_owned()
}

impl Actor for AlertActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |actor, ctx| {
            let changes = actor.evaluate();
            actor.record(changes, ctx);
        });
    }
}

/// The server's figures over the last `0` seconds.
#[derive(Message)]
#[rtype(result = "ServerFigures")]
pub(super) struct ReadServerFigures(pub u32);

impl Handler<ReadServerFigures> for AlertActor {
    type Result = MessageResult<ReadServerFigures>;

    fn handle(&mut self, msg: ReadServerFigures, _: &mut Context<Self>) -> Self::Result {
        let (last, first, seconds) = self.span(msg.0);
        let window = last.signals.since(&first.signals);
        let per_s = |n: u64| {
            if seconds == 0 {
                0.0
            } else {
                n as f64 / seconds as f64
            }
        };
        MessageResult(ServerFigures {
            window_s: seconds,
            requests_per_s: per_s(window.requests),
            error_rate: window.error_rate(),
            events_per_s: per_s(last.accepted.saturating_sub(first.accepted)),
            rejected: last.rejections.saturating_sub(first.rejections),
            latency_ms: Percentiles {
                p50: window.latency_ms(0.50),
                p95: window.latency_ms(0.95),
                p99: window.latency_ms(0.99),
            },
            event_latency_ms: Percentiles {
                p50: window.event_latency_ms(0.50),
                p95: window.event_latency_ms(0.95),
                p99: window.event_latency_ms(0.99),
            },
        })
    }
}

/// Create a rule.
#[derive(Message)]
#[rtype(result = "Result<AlertRule>")]
pub(super) struct CreateRule(pub RuleIn, pub Principal);

impl Handler<CreateRule> for AlertActor {
    type Result = Result<AlertRule>;

    fn handle(&mut self, msg: CreateRule, _: &mut Context<Self>) -> Self::Result {
        let rule = AlertRule::create(msg.0, self.clock.now())?;
        let audit = rule_audit(
            &msg.1,
            rule.created_at,
            "alert_rule.created",
            None,
            Some(&rule),
        );
        self.store.put_rule(&rule, Some(&audit))?;
        self.rules.insert(rule.id.clone(), rule.clone());
        Ok(rule)
    }
}

/// Change a rule.
#[derive(Message)]
#[rtype(result = "Result<AlertRule>")]
pub(super) struct PatchRule(pub RuleId, pub RulePatch, pub Principal);

impl Handler<PatchRule> for AlertActor {
    type Result = Result<AlertRule>;

    fn handle(&mut self, msg: PatchRule, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let current = self
            .rules
            .get(&msg.0)
            .ok_or_else(|| Error::RuleNotFound(msg.0.to_string()))?;
        let next = current.patched(msg.1, now)?;
        let audit = rule_audit(
            &msg.2,
            now,
            "alert_rule.updated",
            Some(current),
            Some(&next),
        );
        self.store.put_rule(&next, Some(&audit))?;
        let disabled = !next.enabled;
        self.rules.insert(next.id.clone(), next.clone());
        if disabled {
            let resolved = self.resolve_all_of(&next.id, "rule disabled", now);
            if !resolved.is_empty() {
                self.write(resolved, None)?;
            }
        }
        Ok(next)
    }
}

/// Delete a rule.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub(super) struct DeleteRule(pub RuleId, pub Principal);

impl Handler<DeleteRule> for AlertActor {
    type Result = Result<()>;

    fn handle(&mut self, msg: DeleteRule, _: &mut Context<Self>) -> Self::Result {
        let Some(rule) = self.rules.get(&msg.0) else {
            return Err(Error::RuleNotFound(msg.0.to_string()));
        };
        let now = self.clock.now();
        let audit = rule_audit(&msg.1, now, "alert_rule.deleted", Some(rule), None);
        let resolved: Vec<(Alert, DomainEvent)> = self
            .resolve_all_of(&msg.0, "rule deleted", now)
            .into_iter()
            .map(|a| {
                let event = a.domain_event(now);
                (a, event)
            })
            .collect();
        self.store
            .delete_rule(msg.0.as_str(), &resolved, Some(&audit))?;
        self.rules.remove(&msg.0);
        for (alert, _) in resolved {
            self.remember(alert);
        }
        self.suppressed.retain(|(rule, _)| rule != &msg.0);
        Ok(())
    }
}

/// Acknowledge an alert.
#[derive(Message)]
#[rtype(result = "Result<Alert>")]
pub(super) struct Acknowledge(pub AlertId, pub StampIn, pub Principal);

impl Handler<Acknowledge> for AlertActor {
    type Result = Result<Alert>;

    fn handle(&mut self, msg: Acknowledge, _: &mut Context<Self>) -> Self::Result {
        let current = self
            .store
            .alert(msg.0.as_str())?
            .or_else(|| self.store_alert(&msg.0))
            .ok_or_else(|| Error::AlertNotFound(msg.0.to_string()))?;
        let now = self.clock.now();
        let next = current.acknowledged(msg.1, now)?;
        let audit = alert_audit(&msg.2, now, "alert.acknowledged", &current, &next);
        // Acknowledging is not news for subscribers: no outbox event.
        self.store.put_alert(&next, Some(&audit))?;
        self.track(&next);
        if let Some(key) = key_of(&next) {
            self.active.insert(key, next.clone());
        }
        Ok(next)
    }
}

/// Resolve an alert by hand.
#[derive(Message)]
#[rtype(result = "Result<Alert>")]
pub(super) struct Resolve(pub AlertId, pub StampIn, pub Principal);

impl Handler<Resolve> for AlertActor {
    type Result = Result<Alert>;

    fn handle(&mut self, msg: Resolve, _: &mut Context<Self>) -> Self::Result {
        let current = self
            .store
            .alert(msg.0.as_str())?
            .or_else(|| self.store_alert(&msg.0))
            .ok_or_else(|| Error::AlertNotFound(msg.0.to_string()))?;
        let now = self.clock.now();
        let next = current.resolved_by(msg.1, now)?;
        let audit = alert_audit(&msg.2, now, "alert.resolved", &current, &next);
        self.write(vec![next.clone()], Some(&audit))?;
        // A store alert resolved by hand is not raised again before a restart.
        self.track(&next);
        if let Some(key) = key_of(&next) {
            self.suppressed.insert(key);
        }
        Ok(next)
    }
}

/// Cluster mode: a rule as the shared bucket has it now (created, changed
/// or deleted on any node).
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub(super) struct MirrorRule {
    pub change: RecordChange<AlertRuleRecord>,
    /// The audit entry of the change, when made through this node.
    pub audit: Option<AuditEntry>,
}

impl Handler<MirrorRule> for AlertActor {
    type Result = Result<()>;

    fn handle(&mut self, msg: MirrorRule, _: &mut Context<Self>) -> Self::Result {
        let Some(shared) = &mut self.shared else {
            return Ok(());
        };
        let audit = msg.audit.as_ref();
        let (id, revision) = match &msg.change {
            RecordChange::Put(id, _, revision) | RecordChange::Deleted(id, revision) => {
                (id.clone(), *revision)
            }
            RecordChange::Current => return Ok(()),
        };
        // The watch and the node that made a change both bring it: the
        // older of two copies is not applied over the newer.
        if shared
            .rule_revisions
            .get(&id)
            .is_some_and(|&seen| seen >= revision)
        {
            return self.store.write_audited(Default::default(), audit);
        }
        shared.rule_revisions.insert(id.clone(), revision);
        match msg.change {
            RecordChange::Put(_, record, _) => {
                let rule = AlertRule::from(*record);
                self.rules.insert(rule.id.clone(), rule.clone());
                self.store.put_rule(&rule, audit)?;
            }
            RecordChange::Deleted(..) => {
                // Its active alerts are cleared by the evaluator's next tick.
                self.rules.retain(|rule, _| rule.as_str() != id);
                self.suppressed.retain(|(rule, _)| rule.as_str() != id);
                self.store.delete_rule(&id, &[], audit)?;
            }
            RecordChange::Current => {}
        }
        Ok(())
    }
}

/// Cluster mode: the alerts mirror has every alert there was when it
/// started; evaluation may begin.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct MirrorCurrent;

impl Handler<MirrorCurrent> for AlertActor {
    type Result = ();

    fn handle(&mut self, _: MirrorCurrent, _: &mut Context<Self>) {
        if let Some(shared) = &mut self.shared {
            shared.current = true;
        }
    }
}

/// Cluster mode: an alert as the shared bucket has it at `revision`; with
/// `event` when the change was made through this node.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub(super) struct MirrorAlert {
    pub alert: Alert,
    pub revision: Revision,
    pub event: Option<DomainEvent>,
    /// The audit entry of the change, when made through this node's API.
    pub audit: Option<AuditEntry>,
}

impl Handler<MirrorAlert> for AlertActor {
    type Result = Result<()>;

    fn handle(&mut self, msg: MirrorAlert, _: &mut Context<Self>) -> Self::Result {
        self.mirror(msg)
    }
}

/// The audit entry of `action` by `by` on a rule, before and after.
pub(super) fn rule_audit(
    by: &Principal,
    at: OffsetDateTime,
    action: &str,
    before: Option<&AlertRule>,
    after: Option<&AlertRule>,
) -> AuditEntry {
    let id = before
        .or(after)
        .map(|r| r.id.to_string())
        .unwrap_or_default();
    AuditEntry::of_change(by, at, action, ResourceKind::AlertRule, id, before, after)
}

/// The audit entry of `action` by `by` on an alert, before and after.
pub(super) fn alert_audit(
    by: &Principal,
    at: OffsetDateTime,
    action: &str,
    before: &Alert,
    after: &Alert,
) -> AuditEntry {
    AuditEntry::of_change(
        by,
        at,
        action,
        ResourceKind::Alert,
        before.id.as_str(),
        Some(before),
        Some(after),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;
    use crate::alerts::tests::{sources, store};
    use crate::alerts::Signals;
    use crate::clock::{ManualClock, SystemClock};
    use crate::domain::{
        Action, AlertStatus, DomainEventKind, Experiment, ExperimentAggregates, ExperimentIn,
        ExperimentKey, Severity,
    };
    use crate::experiments::registry::{Entry, Registry};
    use crate::ingest::IngestStats;
    use crate::results::figures::{Board, Figures};

    async fn actor(store: &Store, ingest: &Arc<IngestStats>, loaded: Vec<Alert>) -> AlertActor {
        let sources = sources(store, ingest).await;
        let loaded = Arc::new(Mutex::new(loaded));
        AlertActor::new(
            store.clone(),
            sources,
            Arc::new(SystemClock),
            Vec::new(),
            Vec::new(),
            loaded,
            None,
        )
    }

    #[test]
    fn a_failed_store_raises_one_critical_alert_without_a_rule_until_a_healthy_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        actix::System::new().block_on(async {
            let ingest = Arc::new(IngestStats::default());
            let mut alerts = actor(&store, &ingest, Vec::new()).await;
            alerts.check_store();
            assert!(
                alerts.store_alerts().is_empty(),
                "nothing while the store works"
            );

            ingest.mark_failed("commit failed after 5 retries: disk full".into());
            alerts.check_store();
            alerts.check_store();
            let raised = alerts.store_alerts();
            assert_eq!(raised.len(), 1, "raised once");
            let alert = &raised[0];
            assert_eq!(
                (
                    alert.metric,
                    alert.severity,
                    alert.rule_id.as_ref().map(RuleId::as_str)
                ),
                (AlertMetric::StoreFailed, Severity::Critical, None)
            );
            assert!(alert.message.contains("disk full"), "{}", alert.message);
            assert!(
                alerts.store_alert_recorded,
                "this store still takes the alert"
            );
            let stored = store
                .alert(alert.id.as_str())
                .expect("read")
                .expect("recorded");
            assert_eq!(stored.status, AlertStatus::Open);
            let outbox = store.outbox(0, 10).expect("outbox");
            assert_eq!(outbox.len(), 1, "alert.raised for webhooks and the stream");

            // After a restart the store works: the alert resolves itself.
            let healthy = Arc::new(IngestStats::default());
            let mut restarted = actor(&store, &healthy, vec![stored]).await;
            restarted.check_store();
            assert!(restarted.store_alerts().is_empty());
            let resolved = store.alert(alert.id.as_str()).expect("read").expect("kept");
            assert_eq!(resolved.status, AlertStatus::Resolved);
            assert_eq!(resolved.resolved.expect("stamp").by, "abacus");
        });
    }

    const T0: OffsetDateTime = datetime!(2030-01-02 03:04:05 UTC);

    /// An alert actor on a [`ManualClock`], with the board and signals it
    /// reads, driven by calling its methods (the interval never runs).
    struct Harness {
        _dir: tempfile::TempDir,
        store: Store,
        clock: Arc<ManualClock>,
        board: Arc<Board>,
        signals: Arc<Signals>,
        ingest: Arc<IngestStats>,
        registry: Registry,
        alerts: AlertActor,
    }

    impl Harness {
        async fn new(rules: Vec<AlertRule>) -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = store(dir.path());
            let clock = Arc::new(ManualClock::new(T0));
            let ingest = Arc::new(IngestStats::default());
            let sources = sources(&store, &ingest).await;
            let ingest_stats = Arc::clone(&ingest);
            let (board, signals) = (Arc::clone(&sources.figures), Arc::clone(&sources.signals));
            let alerts = AlertActor::new(
                store.clone(),
                sources,
                Arc::clone(&clock) as Arc<dyn Clock>,
                rules,
                Vec::new(),
                Arc::default(),
                None,
            );
            Self {
                _dir: dir,
                store,
                clock,
                board,
                signals,
                ingest: ingest_stats,
                registry: Registry::default(),
                alerts,
            }
        }

        /// Starts a running experiment `key` (two variants, metric `buy`).
        fn experiment(&self, key: &str, extra: serde_json::Value) -> Entry {
            let mut body = json!({
                "key": key, "name": key,
                "variants": [{"key": "control", "weight": 1}, {"key": "b", "weight": 1}],
                "metrics": [{"key": "buy", "kind": "binomial"}],
            });
            body.as_object_mut()
                .expect("object")
                .extend(extra.as_object().expect("object").clone());
            let input: ExperimentIn = serde_json::from_value(body).expect("input");
            let running = Experiment::create(input, T0)
                .and_then(|e| e.transitioned(Action::Start, None, T0))
                .expect("running");
            let clock: Arc<dyn Clock> = Arc::clone(&self.clock) as Arc<dyn Clock>;
            self.registry
                .start_local(running, self.store.clone(), clock)
        }

        /// Puts these experiments' figures on the board (and only these).
        fn show(&self, figures: &[(&Entry, ExperimentAggregates)]) {
            let board = figures
                .iter()
                .map(|(entry, aggregates)| {
                    let compiled = entry.slot.snapshot();
                    let key = compiled.experiment().key.clone();
                    let f = Figures::of(compiled, Arc::new(aggregates.clone()));
                    (key, (Entry::clone(entry), Arc::new(f)))
                })
                .collect::<BTreeMap<ExperimentKey, _>>();
            self.board.publish(board);
        }

        /// One tick a second later.
        fn tick(&mut self) {
            self.clock.advance(Duration::from_secs(1));
            let changes = self.alerts.evaluate();
            let _ = self.alerts.write(changes, None);
        }

        /// Every stored alert, oldest first.
        fn stored(&self) -> Vec<Alert> {
            let mut all = self.store.alerts(usize::MAX, |_| true).expect("alerts");
            all.reverse();
            all
        }

        /// The outbox's alert events (not the audit log's): each event's
        /// kind, alert id and time.
        fn outbox(&self) -> Vec<(DomainEventKind, String, OffsetDateTime)> {
            self.store
                .outbox(0, 100)
                .expect("outbox")
                .into_iter()
                .filter(|(_, e)| e.kind != DomainEventKind::AuditRecorded)
                .map(|(_, e)| {
                    let id = e.data["alert"]["id"].as_str().expect("alert id").to_owned();
                    (e.kind, id, e.at)
                })
                .collect()
        }

        fn patch(&mut self, rule: &AlertRule, patch: RulePatch) -> AlertRule {
            let mut ctx = Context::new();
            self.alerts
                .handle(
                    PatchRule(rule.id.clone(), patch, Principal::open()),
                    &mut ctx,
                )
                .expect("patched")
        }

        fn resolve(&mut self, alert: &Alert, by: &str) -> Alert {
            let mut ctx = Context::new();
            let stamp = StampIn {
                by: by.to_owned(),
                note: None,
            };
            self.alerts
                .handle(
                    Resolve(alert.id.clone(), stamp, Principal::open()),
                    &mut ctx,
                )
                .expect("resolved")
        }
    }

    fn rule(body: serde_json::Value) -> AlertRule {
        AlertRule::create(serde_json::from_value(body).expect("rule input"), T0).expect("valid")
    }

    /// A sample-ratio mismatch (p far below 0.001).
    fn srm() -> ExperimentAggregates {
        ExperimentAggregates::two_arms([5000, 4000], [500, 400])
    }

    /// Even split, same conversion: nothing to report.
    fn healthy() -> ExperimentAggregates {
        ExperimentAggregates::two_arms([5000, 5000], [500, 500])
    }

    #[actix::test]
    async fn an_srm_rule_raises_one_alert_per_experiment_and_resolves_it_when_it_clears() {
        let srm_rule = rule(json!({"name": "srm", "metric": "srm", "severity": "error"}));
        let mut h = Harness::new(vec![srm_rule.clone()]).await;
        let (checkout, search) = (
            h.experiment("checkout", json!({})),
            h.experiment("search", json!({})),
        );
        h.show(&[(&checkout, srm()), (&search, healthy())]);

        h.tick();
        let raised_at = h.clock.now();
        let stored = h.stored();
        assert_eq!(stored.len(), 1, "one alert, for checkout only: {stored:?}");
        let alert = &stored[0];
        assert_eq!(alert.rule_id.as_ref(), Some(&srm_rule.id));
        assert_eq!(
            (alert.metric, alert.severity, alert.status),
            (AlertMetric::Srm, Severity::Error, AlertStatus::Open)
        );
        assert_eq!(alert.experiment.as_deref(), Some("checkout"));
        assert!(
            alert.message.contains("sample-ratio mismatch in checkout"),
            "{}",
            alert.message
        );
        assert!(alert.value.is_some_and(|p| p < 0.001), "{:?}", alert.value);
        assert_eq!(alert.raised_at, raised_at, "stamped by the actor's clock");

        // Still mismatched: the same alert, nothing new.
        h.tick();
        h.tick();
        assert_eq!(h.stored(), stored, "one alert over repeated evaluations");
        assert_eq!(h.outbox().len(), 1, "one alert.raised");

        // The figures recover: abacus resolves it.
        h.show(&[(&checkout, healthy()), (&search, healthy())]);
        h.tick();
        let cleared_at = h.clock.now();
        let [resolved] = h.stored().try_into().expect("still one alert");
        assert_eq!(resolved.id, alert.id);
        assert_eq!(resolved.status, AlertStatus::Resolved);
        let stamp = resolved.resolved.expect("resolution stamp");
        assert_eq!(
            (stamp.by.as_str(), stamp.at, stamp.note.as_deref()),
            ("abacus", cleared_at, Some("condition cleared"))
        );
        assert!(h.alerts.active.is_empty());
        assert_eq!(
            h.outbox(),
            [
                (
                    DomainEventKind::AlertRaised,
                    alert.id.to_string(),
                    raised_at
                ),
                (
                    DomainEventKind::AlertResolved,
                    alert.id.to_string(),
                    cleared_at
                ),
            ]
        );

        h.tick();
        assert_eq!(h.outbox().len(), 2, "nothing more once cleared");
    }

    #[actix::test]
    async fn a_rule_scoped_to_one_experiment_ignores_the_others() {
        let scoped = rule(json!({"name": "b only", "metric": "srm", "experiment": "b"}));
        let every = rule(json!({"name": "all", "metric": "srm"}));
        let mut h = Harness::new(vec![scoped.clone(), every.clone()]).await;
        let (a, b) = (h.experiment("a", json!({})), h.experiment("b", json!({})));
        h.show(&[(&a, srm()), (&b, srm())]);

        h.tick();
        let by = |rule: &AlertRule| {
            let mut experiments: Vec<String> = h
                .stored()
                .into_iter()
                .filter(|x| x.rule_id.as_ref() == Some(&rule.id))
                .filter_map(|x| x.experiment)
                .collect();
            experiments.sort();
            experiments
        };
        assert_eq!(by(&scoped), ["b"]);
        assert_eq!(by(&every), ["a", "b"], "both show SRM");
    }

    #[actix::test]
    async fn a_guardrail_rule_raises_on_a_regressed_guardrail() {
        let guard = rule(json!({"name": "guard", "metric": "guardrail_regression"}));
        let mut h = Harness::new(vec![guard.clone()]).await;
        let guardrails = json!({"guardrails": [{"metric": "buy", "max_relative_drop": 0.05}]});
        let (worse, fine) = (
            h.experiment("worse", guardrails.clone()),
            h.experiment("fine", guardrails),
        );
        h.show(&[
            (
                &worse,
                ExperimentAggregates::two_arms([5000, 5000], [1000, 600]),
            ),
            (
                &fine,
                ExperimentAggregates::two_arms([5000, 5000], [1000, 1000]),
            ),
        ]);

        h.tick();
        let [alert] = h.stored().try_into().expect("one alert");
        assert_eq!(alert.rule_id.as_ref(), Some(&guard.id));
        assert_eq!(alert.metric, AlertMetric::GuardrailRegression);
        assert_eq!(alert.experiment.as_deref(), Some("worse"));
        assert!(
            alert
                .message
                .starts_with("guardrail 'buy' regressed in worse: variant 'b' moved it by -40.0%"),
            "{}",
            alert.message
        );
        let lift = alert.value.expect("relative lift");
        assert!((lift + 0.4).abs() < 1e-9, "{lift}");
    }

    #[actix::test]
    async fn events_refused_on_a_failed_store_count_as_ingest_rejections() {
        let rejections = rule(json!({
            "name": "refused", "metric": "ingest_rejections", "threshold": 5, "window_s": 10
        }));
        let mut h = Harness::new(vec![rejections]).await;
        h.tick();
        assert!(h.stored().is_empty());
        h.ingest.rejected_failed.fetch_add(8, Ordering::Relaxed);
        h.tick();
        let [alert] = h.stored().try_into().expect("raised");
        assert_eq!(alert.value, Some(8.0));
    }

    #[actix::test]
    async fn an_error_rate_rule_looks_at_its_window_only() {
        // The window counts the actor's samples, one per evaluation (the
        // clock does not enter into it): window_s = 3 is the last three
        // evaluations.
        let errors = rule(json!({
            "name": "errors", "metric": "error_rate", "threshold": 0.5, "window_s": 3
        }));
        let mut h = Harness::new(vec![errors]).await;

        h.tick();
        assert!(h.stored().is_empty(), "no requests: no rate, no alert");

        for _ in 0..10 {
            h.signals.record(500, false, Duration::from_millis(1));
        }
        h.tick();
        let raised_at = h.clock.now();
        let [alert] = h.stored().try_into().expect("raised");
        assert_eq!(alert.value, Some(1.0));
        assert!(
            alert.message.starts_with("100.0% of responses over 3 s"),
            "{}",
            alert.message
        );
        assert_eq!(alert.raised_at, raised_at);

        // One good response a second: the errors stay in the window for
        // three samples, then drop out, though 10 of the 13 responses
        // since start were errors.
        for second in 1..=3 {
            h.signals.record(200, false, Duration::from_millis(1));
            h.tick();
            let [now] = h.stored().try_into().expect("one alert");
            let expected = if second < 3 {
                AlertStatus::Open
            } else {
                AlertStatus::Resolved
            };
            assert_eq!(now.status, expected, "{second} s after the errors");
        }
        let [cleared] = h.stored().try_into().expect("one alert");
        assert_eq!(
            cleared.resolved.map(|s| (s.by, s.at)),
            Some(("abacus".to_owned(), h.clock.now()))
        );
    }

    #[actix::test]
    async fn an_alert_resolved_by_hand_stays_down_until_its_condition_clears_once() {
        let srm_rule = rule(json!({"name": "srm", "metric": "srm"}));
        let mut h = Harness::new(vec![srm_rule]).await;
        let exp = h.experiment("exp", json!({}));
        h.show(&[(&exp, srm())]);

        h.tick();
        let [first] = h.stored().try_into().expect("raised");
        h.clock.advance(Duration::from_millis(300));
        let resolved = h.resolve(&first, "ana");
        assert_eq!(resolved.status, AlertStatus::Resolved);
        let stamp = resolved.resolved.expect("stamp");
        assert_eq!((stamp.by.as_str(), stamp.at), ("ana", h.clock.now()));

        // The mismatch persists: not raised again.
        h.tick();
        h.tick();
        let [still] = h.stored().try_into().expect("no new alert");
        assert_eq!(still.id, first.id);
        assert_eq!(still.resolved.expect("stamp").by, "ana");

        // It clears once, and the next mismatch is news again.
        h.show(&[(&exp, healthy())]);
        h.tick();
        assert_eq!(h.stored().len(), 1);
        h.show(&[(&exp, srm())]);
        h.tick();
        let [old, new] = h.stored().try_into().expect("raised again");
        assert_eq!(old.id, first.id);
        assert_ne!(new.id, first.id);
        assert_eq!(
            (new.status, new.raised_at),
            (AlertStatus::Open, h.clock.now())
        );
        let kinds: Vec<_> = h.outbox().into_iter().map(|(kind, ..)| kind).collect();
        assert_eq!(
            kinds,
            [
                DomainEventKind::AlertRaised,
                DomainEventKind::AlertResolved,
                DomainEventKind::AlertRaised
            ]
        );
    }

    #[actix::test]
    async fn disabling_a_rule_resolves_its_alerts_and_it_raises_nothing_until_enabled() {
        let (one, other) = (
            rule(json!({"name": "one", "metric": "srm"})),
            rule(json!({"name": "other", "metric": "srm"})),
        );
        let mut h = Harness::new(vec![one.clone(), other.clone()]).await;
        let exp = h.experiment("exp", json!({}));
        h.show(&[(&exp, srm())]);
        h.tick();
        assert_eq!(h.stored().len(), 2, "one alert per rule");
        let of = |h: &Harness, rule: &AlertRule| -> Vec<Alert> {
            h.stored()
                .into_iter()
                .filter(|a| a.rule_id.as_ref() == Some(&rule.id))
                .collect()
        };

        h.clock.advance(Duration::from_secs(5));
        let off = RulePatch {
            enabled: Some(false),
            ..RulePatch::default()
        };
        let disabled = h.patch(&one, off);
        assert!(!disabled.enabled);
        assert_eq!(disabled.updated_at, h.clock.now());
        assert_eq!(h.store.rule(one.id.as_str()).expect("read"), Some(disabled));
        let [resolved] = of(&h, &one).try_into().expect("one alert of the rule");
        assert_eq!(resolved.status, AlertStatus::Resolved);
        let stamp = resolved.resolved.expect("stamp");
        assert_eq!(
            (stamp.by.as_str(), stamp.at, stamp.note.as_deref()),
            ("abacus", h.clock.now(), Some("rule disabled"))
        );
        let [open] = of(&h, &other).try_into().expect("one alert of the other");
        assert_eq!(open.status, AlertStatus::Open, "other rules' alerts stay");
        let kinds: Vec<_> = h.outbox().into_iter().map(|(kind, ..)| kind).collect();
        assert_eq!(kinds.last(), Some(&DomainEventKind::AlertResolved));

        // Still mismatched, but the rule is off.
        h.tick();
        assert_eq!(of(&h, &one).len(), 1, "a disabled rule raises nothing");

        let on = RulePatch {
            enabled: Some(true),
            ..RulePatch::default()
        };
        h.patch(&one, on);
        h.tick();
        let alerts = of(&h, &one);
        assert_eq!(alerts.len(), 2, "enabled again, it raises anew");
        assert!(alerts[1].is_active());
    }
}
