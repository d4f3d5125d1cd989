//! Alerts in cluster mode. Rules and alerts live in shared buckets
//! (`abacus_alert_rules`, `abacus_alerts`): a change made through any node
//! is written there first (a fresh key, or a compare-and-set on the key's
//! revision, so two nodes acknowledging or resolving one alert cannot both
//! win), and every node's alert actor mirrors both buckets into its own
//! store and memory, so any node lists and reads them.
//!
//! Rules are evaluated on one node at a time: the one holding the
//! webhook-delivery lease, where the delivery statistics the webhook rules
//! read are kept. Experiment rules read the figures every node derives from
//! the shared aggregates; server rules read the evaluating node's own
//! traffic. A node that takes evaluation over knows the active alerts from
//! its mirror and clears them when their condition no longer holds.
//!
//! The store-failure alert stays with the node whose store failed.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix::Addr;

use super::evaluate::{AlertActor, MirrorAlert, MirrorCurrent, MirrorRule};
use crate::cluster::{RecordBucket, RecordChange};
use crate::domain::{Alert, AlertRecord, AlertRuleRecord};

/// What cluster mode shares for alerts.
#[derive(Clone)]
pub struct Replication {
    /// The shared rules.
    pub rules: RecordBucket<AlertRuleRecord>,
    /// The shared alerts.
    pub alerts: RecordBucket<AlertRecord>,
    /// Whether this node evaluates the rules now (it holds the lease).
    pub evaluates: Arc<AtomicBool>,
}

/// Starts mirroring both buckets into `actor`, until it stops.
pub(super) fn spawn(actor: &Addr<AlertActor>, replication: &Replication) {
    let rules = actor.clone();
    actix::spawn(replication.rules.clone().follow(move |change| {
        let sent = rules.send(MirrorRule {
            change,
            audit: None,
        });
        async move { mirrored(sent.await, "an alert rule") }
    }));
    let alerts = actor.clone();
    actix::spawn(replication.alerts.clone().follow(move |change| {
        let alerts = alerts.clone();
        async move {
            match change {
                RecordChange::Put(_, record, revision) => {
                    let mirror = MirrorAlert {
                        alert: Alert::from(*record),
                        revision,
                        event: None,
                        audit: None,
                    };
                    mirrored(alerts.send(mirror).await, "an alert")
                }
                RecordChange::Current => alerts.send(MirrorCurrent).await.is_ok(),
                // Alerts are never deleted.
                RecordChange::Deleted(..) => true,
            }
        }
    }));
}

/// Whether to go on after mirroring `what`: not once the actor stopped.
fn mirrored(sent: Result<crate::Result<()>, actix::MailboxError>, what: &str) -> bool {
    match sent {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "mirroring {what} failed");
            true
        }
        Err(_) => false,
    }
}
