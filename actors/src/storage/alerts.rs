//! Alert rules and alerts.

use rocksdb::{IteratorMode, WriteBatch};

use super::{decode_json, versioned_json, Cf, Store};
use crate::domain::{Alert, AlertRecord, AlertRule, AlertRuleRecord, AuditEntry};
use crate::domain::{DomainEvent, Experiment};
use crate::Result;

impl Store {
    /// Writes a rule, synced, with the audit entry of the change, if made
    /// through the API here.
    pub fn put_rule(&self, rule: &AlertRule, audit: Option<&AuditEntry>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(Cf::AlertRules),
            rule.id.as_str().as_bytes(),
            versioned_json(Cf::AlertRules, &AlertRuleRecord::from(rule))?,
        );
        self.write_audited(batch, audit)
    }

    /// Deletes a rule, resolving its active alerts in the same write (with
    /// the audit entry of the deletion, if made through the API here).
    pub fn delete_rule(
        &self,
        id: &str,
        resolved: &[(Alert, DomainEvent)],
        audit: Option<&AuditEntry>,
    ) -> Result<()> {
        let mut batch = self.alerts_batch(resolved)?;
        batch.delete_cf(self.cf(Cf::AlertRules), id.as_bytes());
        self.write_alerts(batch, resolved, audit)
    }

    /// Writes `batch` with the events of `changes` and, if given, `audit`
    /// and its event, synced.
    fn write_alerts(
        &self,
        mut batch: WriteBatch,
        changes: &[(Alert, DomainEvent)],
        audit: Option<&AuditEntry>,
    ) -> Result<()> {
        let recorded = audit
            .map(|entry| self.audit_into(&mut batch, entry))
            .transpose()?
            .flatten();
        let events: Vec<&DomainEvent> = changes
            .iter()
            .map(|(_, e)| e)
            .chain(recorded.as_ref())
            .collect();
        self.write_with_events(batch, &events)
    }

    /// Every rule, by id.
    pub fn rules(&self) -> Result<Vec<AlertRule>> {
        self.db
            .iterator_cf(self.cf(Cf::AlertRules), IteratorMode::Start)
            .map(|item| {
                decode_json::<AlertRuleRecord>(Cf::AlertRules, &item?.1).map(AlertRule::from)
            })
            .collect()
    }

    /// One rule.
    pub fn rule(&self, id: &str) -> Result<Option<AlertRule>> {
        self.db
            .get_pinned_cf(self.cf(Cf::AlertRules), id.as_bytes())?
            .map(|v| decode_json::<AlertRuleRecord>(Cf::AlertRules, &v).map(AlertRule::from))
            .transpose()
    }

    /// Writes alerts with their `alert.raised` / `alert.resolved` events
    /// (and the audit entry of a change made through the API here, if
    /// any), atomically and synced.
    pub fn put_alerts(
        &self,
        changes: &[(Alert, DomainEvent)],
        audit: Option<&AuditEntry>,
    ) -> Result<()> {
        let batch = self.alerts_batch(changes)?;
        self.write_alerts(batch, changes, audit)
    }

    /// Writes an experiment a guardrail paused, its alert, and their
    /// events, in one synced write: the pause, the reason and the alert
    /// exist together or not at all.
    pub fn put_guardrail_stop(
        &self,
        experiment: &Experiment,
        alert: &Alert,
        events: &[&DomainEvent],
    ) -> Result<()> {
        let mut batch = self.experiment_batch(experiment)?;
        batch.put_cf(
            self.cf(Cf::Alerts),
            alert.id.as_str().as_bytes(),
            versioned_json(Cf::Alerts, &AlertRecord::from(alert))?,
        );
        self.write_with_events(batch, events)
    }

    /// Writes one alert without an event of its own (an
    /// acknowledgement), synced, with the audit entry of the change if made
    /// through the API here.
    pub fn put_alert(&self, alert: &Alert, audit: Option<&AuditEntry>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(Cf::Alerts),
            alert.id.as_str().as_bytes(),
            versioned_json(Cf::Alerts, &AlertRecord::from(alert))?,
        );
        self.write_audited(batch, audit)
    }

    /// Alerts, newest first, at most `limit`, those passing `keep`.
    pub fn alerts(&self, limit: usize, keep: impl Fn(&Alert) -> bool) -> Result<Vec<Alert>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(Cf::Alerts), IteratorMode::End) {
            let alert = Alert::from(decode_json::<AlertRecord>(Cf::Alerts, &item?.1)?);
            if keep(&alert) {
                out.push(alert);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// One alert.
    pub fn alert(&self, id: &str) -> Result<Option<Alert>> {
        self.db
            .get_pinned_cf(self.cf(Cf::Alerts), id.as_bytes())?
            .map(|v| decode_json::<AlertRecord>(Cf::Alerts, &v).map(Alert::from))
            .transpose()
    }

    fn alerts_batch(&self, changes: &[(Alert, DomainEvent)]) -> Result<WriteBatch> {
        let mut batch = WriteBatch::default();
        for (alert, _) in changes {
            batch.put_cf(
                self.cf(Cf::Alerts),
                alert.id.as_str().as_bytes(),
                versioned_json(Cf::Alerts, &AlertRecord::from(alert))?,
            );
        }
        Ok(batch)
    }
}
