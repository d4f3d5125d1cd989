//! The dispatcher: fans each new outbox event out to the queues of the
//! enabled subscriptions to its type, moving its cursor in the same write,
//! then wakes their actors.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::subscriber::Wake;
use super::Entries;
use crate::domain::{DomainEvent, WebhookMessage};
use crate::storage::{blocking, Store};
use crate::Result;

/// Outbox events read per write.
const CHUNK: usize = 500;

/// Runs for as long as the actix system: after every outbox write, and
/// once a second in case a write's notification was missed. (A wake-up a
/// busy subscriber receives is remembered by the subscriber itself.)
/// `creating` is held while a subscription is stored and listed, so no
/// chunk straddles a creation.
pub(super) fn spawn(store: Store, entries: Entries, creating: Arc<Mutex<()>>) {
    actix::spawn(async move {
        let mut written = store.outbox_watch();
        loop {
            if let Err(e) = dispatch(&store, &entries, &creating).await {
                tracing::error!(error = %e, "webhook dispatch failed; retrying");
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), written.changed()).await;
        }
    });
}

/// Fans out everything after the cursor.
async fn dispatch(store: &Store, entries: &Entries, creating: &Mutex<()>) -> Result<()> {
    loop {
        let _listed = creating.lock().await;
        let owned = store.clone();
        let events = blocking(move || owned.outbox(owned.dispatch_cursor()?, CHUNK)).await?;
        let Some(&(last, _)) = events.last() else {
            return Ok(());
        };
        fan_out(store, entries, events, last).await?;
    }
}

/// Queues each of `events` (by its position) for the enabled
/// subscriptions to its type and moves the dispatch cursor to `cursor`,
/// in one write; then wakes the subscriptions that got messages.
pub(super) async fn fan_out(
    store: &Store,
    entries: &Entries,
    events: Vec<(u64, DomainEvent)>,
    cursor: u64,
) -> Result<()> {
    // (id, event types, enabled) of every subscription, read once per chunk.
    let targets: Vec<_> = match entries.read() {
        Ok(entries) => entries
            .iter()
            .map(|(id, e)| {
                (
                    id.clone(),
                    e.events.clone(),
                    e.enabled.load(Ordering::Acquire),
                )
            })
            .collect(),
        Err(_) => return Ok(()),
    };
    let owned = store.clone();
    let woken = blocking(move || {
        let mut messages = Vec::new();
        let mut woken = BTreeSet::new();
        for (seq, event) in &events {
            let body = event.payload().to_string();
            for (id, kinds, enabled) in &targets {
                let addressed = event.subscription.as_ref().is_none_or(|s| s == id);
                if *enabled && addressed && kinds.contains(&event.kind) {
                    messages.push((
                        id.as_str(),
                        *seq,
                        WebhookMessage {
                            id: event.id.clone(),
                            kind: event.kind,
                            body: body.clone(),
                            attempts: 0,
                            next_attempt_ms: 0,
                        },
                    ));
                    woken.insert(id.clone());
                }
            }
        }
        owned.enqueue(&messages, cursor)?;
        Ok(woken)
    })
    .await?;
    if let Ok(entries) = entries.read() {
        for id in woken {
            if let Some(entry) = entries.get(&id) {
                entry.addr.do_send(Wake);
            }
        }
    }
    Ok(())
}
