//! The live feed behind `GET /v1/stream` (SSE) and `GET /v1/ws`: once a
//! second, per running experiment, exposures/s, events/s by type and the
//! live per-variant figures; and every domain event (lifecycle,
//! significance, SRM, alerts) as it is written.
//!
//! One bounded broadcast channel fans messages out to every client; a
//! client that falls more than its capacity behind is dropped (and
//! counted) rather than allowed to grow memory. The last
//! [`REPLAY`] messages are kept so a reconnecting client resumes from its
//! `Last-Event-ID` without a gap.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::domain::{json_len, ExperimentAggregates, PhaseView, TimelineSnapshot};
use crate::storage::{blocking, Store};

/// Messages a client may lag behind before it is dropped.
pub const CAPACITY: usize = 1024;
/// Messages kept for `Last-Event-ID` resumption.
pub const REPLAY: usize = 1024;

/// One message of the feed, rendered once for every client.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveMessage {
    /// Monotonic id (the SSE `id`).
    pub id: u64,
    /// `stats` or a domain event type (`experiment.started`, ...).
    pub kind: String,
    /// The experiment it concerns, for filtering.
    pub experiment: Option<String>,
    /// As a Server-Sent Events frame: `id`, `event`, `data` lines.
    pub sse: bytes::Bytes,
    /// As a WebSocket text frame: `{"id", "event", "data"}`.
    pub json: bytestring::ByteString,
}

/// The hub.
pub struct Live {
    tx: broadcast::Sender<Arc<LiveMessage>>,
    recent: Mutex<VecDeque<Arc<LiveMessage>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// Clients dropped for falling behind.
    pub dropped: AtomicU64,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            tx: broadcast::Sender::new(CAPACITY),
            recent: Mutex::new(VecDeque::with_capacity(REPLAY)),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }
}

/// A client's view: what to replay, then the live receiver.
pub struct Listener {
    /// Kept messages after the client's `Last-Event-ID`, oldest first.
    pub replay: Vec<Arc<LiveMessage>>,
    /// Everything published from now on (may repeat the tail of `replay`;
    /// skip ids already seen).
    pub receiver: broadcast::Receiver<Arc<LiveMessage>>,
}

impl Live {
    /// Publishes a message to every client.
    pub fn publish(&self, kind: &str, experiment: Option<&str>, data: &Value) {
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = Arc::new(LiveMessage {
            id,
            kind: kind.to_owned(),
            experiment: experiment.map(str::to_owned),
            sse: format!("id: {id}\nevent: {kind}\ndata: {data}\n\n").into(),
            json: json!({"id": id, "event": kind, "data": data})
                .to_string()
                .into(),
        });
        if recent.len() == REPLAY {
            recent.pop_front();
        }
        recent.push_back(Arc::clone(&message));
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(message);
    }

    /// Subscribes, replaying kept messages after `after`.
    pub fn subscribe(&self, after: Option<u64>) -> Listener {
        let recent = self.recent.lock();
        let receiver = self.tx.subscribe();
        let replay = match (after, recent) {
            (Some(after), Ok(recent)) => recent.iter().filter(|m| m.id > after).cloned().collect(),
            _ => Vec::new(),
        };
        Listener { replay, receiver }
    }

    /// Ends every stream (at shutdown, so long-lived requests do not hold
    /// it up).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.publish("closing", None, &json!({}));
    }

    /// Whether [`Live::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Publishes the listeners and the slow ones dropped.
    pub fn export_metrics(&self) {
        use crate::metrics as m;
        metrics::gauge!(m::STREAM_CLIENTS).set(self.clients() as f64);
        metrics::counter!(m::STREAM_DROPPED, "reason" => "slow_consumer")
            .absolute(self.dropped.load(Ordering::Relaxed));
    }

    /// Clients currently subscribed.
    pub fn clients(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Tails the outbox for domain events and publishes each, for as long as
/// the actix system runs.
pub(crate) fn spawn(live: Arc<Live>, store: Store) {
    actix::spawn(async move {
        let mut written = store.outbox_watch();
        let mut cursor = store.outbox_last().unwrap_or(0);
        loop {
            if written.changed().await.is_err() {
                return;
            }
            let owned = store.clone();
            let read = blocking(move || owned.outbox(cursor, 1000)).await;
            let Ok(events) = read else {
                continue;
            };
            for (seq, event) in events {
                cursor = seq;
                live.publish(
                    &serde_json::to_value(event.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    event.experiment.as_deref(),
                    &event.payload(),
                );
            }
        }
    });
}

/// `data` cut down to `max_bytes` when it is larger: the measures with the
/// most events in `events_per_s` are kept as far as they fit, and
/// `truncated: true` says some were left out. A message (kept 1,024 times
/// for replay and sent to every client) thus has a bounded size whatever
/// clients name their events.
fn bounded(mut data: Value, max_bytes: usize) -> Value {
    if json_len(&data) <= max_bytes {
        return data;
    }
    metrics::counter!(crate::metrics::STREAM_STATS_TRUNCATED).increment(1);
    let Some(Value::Object(events)) = data.get_mut("events_per_s").map(Value::take) else {
        return data;
    };
    data["events_per_s"] = json!({});
    data["truncated"] = json!(true);
    let mut budget = max_bytes.saturating_sub(json_len(&data));
    let mut busiest: Vec<(String, Value)> = events.into_iter().collect();
    busiest.sort_by_key(|(_, n)| std::cmp::Reverse(n.as_u64().unwrap_or(0)));
    let mut kept = serde_json::Map::new();
    for (name, n) in busiest {
        // `"name":n,` with room for a 20-digit count.
        let cost = name.len() + 24;
        if cost > budget {
            break;
        }
        budget -= cost;
        kept.insert(name, n);
    }
    data["events_per_s"] = Value::Object(kept);
    data
}

/// The per-second `stats` message of a running experiment: what changed
/// since `before`, cut to `max_bytes` (see [`bounded`]).
pub(crate) fn stats_message(
    experiment: &crate::domain::Experiment,
    now: &ExperimentAggregates,
    before: &ExperimentAggregates,
    max_bytes: usize,
) -> Value {
    bounded(second(experiment, now, before), max_bytes)
}

/// One second of an experiment: what changed since `before`.
fn second(
    experiment: &crate::domain::Experiment,
    now: &ExperimentAggregates,
    before: &ExperimentAggregates,
) -> Value {
    let mut exposures = 0;
    let mut events: HashMap<&str, u64> = HashMap::new();
    for (key, v) in &now.variants {
        let was = before.variants.get(key);
        exposures += v.exposures - was.map_or(0, |w| w.exposures.min(v.exposures));
        for (measure, m) in &v.measures {
            let then = was
                .and_then(|w| w.measures.get(measure))
                .map_or(0, |w| w.events.min(m.events));
            *events.entry(measure.as_str()).or_default() += m.events - then;
        }
    }
    let primary = experiment.primary_metric.as_ref().map(|p| p.as_str());
    let viewed = now.by_variant(experiment, PhaseView::All);
    let variants: Vec<Value> = TimelineSnapshot::of(experiment, &viewed)
        .values(experiment, primary)
        .into_iter()
        .map(|v| json!({"variant": v.variant, "units": v.units, "primary": v.value}))
        .collect();
    json!({
        "experiment": experiment.key,
        "exposures_per_s": exposures,
        "events_per_s": events,
        "primary_metric": experiment.primary_metric,
        "variants": variants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_replays_what_was_missed_in_order() {
        let live = Live::default();
        for i in 0..5 {
            live.publish("stats", Some("e"), &json!({ "i": i }));
        }
        let sub = live.subscribe(Some(3));
        let ids: Vec<u64> = sub.replay.iter().map(|m| m.id).collect();
        assert_eq!(ids, [4, 5]);
        assert!(live.subscribe(None).replay.is_empty());
    }

    #[test]
    fn stats_messages_are_cut_to_their_bound_keeping_the_busiest_measures() {
        let events: serde_json::Map<String, Value> = (0..5000)
            .map(|i| (format!("measure-name-{i}"), json!(i)))
            .collect();
        let data = json!({"experiment": "e", "events_per_s": events, "variants": []});
        let cut = bounded(data, 4096);
        assert!(json_len(&cut) <= 4096, "{}", json_len(&cut));
        assert_eq!(cut["truncated"], json!(true));
        let kept = cut["events_per_s"].as_object().unwrap();
        assert!(kept.len() > 50, "{}", kept.len());
        assert!(kept.contains_key("measure-name-4999"));
        assert!(!kept.contains_key("measure-name-0"));
        let small = json!({"experiment": "e", "events_per_s": {"click": 3}});
        assert_eq!(bounded(small.clone(), 4096), small);
    }

    #[test]
    fn a_client_that_falls_behind_is_told_it_lagged() {
        let live = Live::default();
        let mut sub = live.subscribe(None);
        for i in 0..(CAPACITY + 10) {
            live.publish("stats", None, &json!({ "i": i }));
        }
        assert!(matches!(
            sub.receiver.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        // Memory stays bounded: only the replay window is kept.
        assert_eq!(live.recent.lock().unwrap().len(), REPLAY);
    }
}
