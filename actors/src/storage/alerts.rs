//! Alert rules and alerts.

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use super::{decode_json, versioned_json, Cf, Store};
use crate::domain::{Alert, AlertRecord, AlertRule, AlertRuleRecord};
use crate::domain::{DomainEvent, Experiment};
use crate::Result;

impl Store {
    /// Writes a rule, synced.
    pub fn put_rule(&self, rule: &AlertRule) -> Result<()> {
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.put_cf_opt(
            self.cf(Cf::AlertRules),
            rule.id.as_str().as_bytes(),
            versioned_json(Cf::AlertRules, &AlertRuleRecord::from(rule))?,
            &sync,
        )?;
        Ok(())
    }

    /// Deletes a rule, resolving its active alerts in the same write.
    pub fn delete_rule(&self, id: &str, resolved: &[(Alert, DomainEvent)]) -> Result<()> {
        let mut batch = self.alerts_batch(resolved)?;
        batch.delete_cf(self.cf(Cf::AlertRules), id.as_bytes());
        let events: Vec<&DomainEvent> = resolved.iter().map(|(_, e)| e).collect();
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

    /// Writes alerts with their `alert.raised` / `alert.resolved` events,
    /// atomically and synced.
    pub fn put_alerts(&self, changes: &[(Alert, DomainEvent)]) -> Result<()> {
        let batch = self.alerts_batch(changes)?;
        let events: Vec<&DomainEvent> = changes.iter().map(|(_, e)| e).collect();
        self.write_with_events(batch, &events)
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

    /// Writes one alert without an event (an acknowledgement), synced.
    pub fn put_alert(&self, alert: &Alert) -> Result<()> {
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.put_cf_opt(
            self.cf(Cf::Alerts),
            alert.id.as_str().as_bytes(),
            versioned_json(Cf::Alerts, &AlertRecord::from(alert))?,
            &sync,
        )?;
        Ok(())
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
