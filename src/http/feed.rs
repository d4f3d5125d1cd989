//! One client's view of the live hub, shared by the SSE and WebSocket
//! routes: replay after `Last-Event-ID`, then live messages, filtered by
//! experiment, with lag turned into a counted drop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use abacus_actors::live::{Live, LiveMessage};
use tokio::sync::broadcast::{self, error::RecvError};

/// A quiet connection gets an [`Item::Idle`] this often (keepalive).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// What a client is sent next.
pub enum Item {
    /// A message of the feed.
    Message(Arc<LiveMessage>),
    /// Nothing for a while: send a keepalive.
    Idle,
    /// The client fell too far behind and is being dropped; last item.
    Dropped,
}

/// A subscribed client.
pub struct Feed {
    live: Arc<Live>,
    replay: std::vec::IntoIter<Arc<LiveMessage>>,
    receiver: broadcast::Receiver<Arc<LiveMessage>>,
    /// Shared, so checking a message allocates nothing.
    experiment: Option<Arc<str>>,
    seen: u64,
    done: bool,
}

impl Feed {
    /// Subscribes, replaying kept messages after `after`.
    pub fn open(live: &Arc<Live>, after: Option<u64>, experiment: Option<String>) -> Self {
        let listener = live.subscribe(after);
        let experiment: Option<Arc<str>> = experiment.map(Into::into);
        let replay: Vec<_> = listener
            .replay
            .into_iter()
            .filter(|m| wanted(experiment.as_deref(), m))
            .collect();
        Self {
            live: Arc::clone(live),
            seen: replay.last().map_or(0, |m| m.id),
            replay: replay.into_iter(),
            receiver: listener.receiver,
            experiment,
            done: false,
        }
    }

    /// The next item, or `None` when the feed has ended (shutdown, or after
    /// [`Item::Dropped`]).
    pub async fn next(&mut self) -> Option<Item> {
        if self.done {
            return None;
        }
        if let Some(m) = self.replay.next() {
            return Some(Item::Message(m));
        }
        loop {
            if self.live.is_closed() {
                return None;
            }
            match tokio::time::timeout(KEEPALIVE, self.receiver.recv()).await {
                Err(_) => return Some(Item::Idle),
                Ok(Ok(m)) => match self.admit(m) {
                    Admit::Take(m) => return Some(Item::Message(m)),
                    Admit::Skip => {}
                    Admit::End => return None,
                },
                Ok(Err(RecvError::Lagged(_))) => {
                    self.live.dropped.fetch_add(1, Ordering::Relaxed);
                    self.done = true;
                    return Some(Item::Dropped);
                }
                Ok(Err(RecvError::Closed)) => return None,
            }
        }
    }

    /// A message already waiting, without waiting: lets a caller write a
    /// burst (the per-second stats of every experiment) in one go. Lag is
    /// left for [`Feed::next`] to report.
    pub fn ready(&mut self) -> Option<Arc<LiveMessage>> {
        if self.done {
            return None;
        }
        if let Some(m) = self.replay.next() {
            return Some(m);
        }
        loop {
            let m = self.receiver.try_recv().ok()?;
            match self.admit(m) {
                Admit::Take(m) => return Some(m),
                Admit::Skip => {}
                Admit::End => return None,
            }
        }
    }

    /// What to do with a received message: send it, skip it (seen already
    /// in the replay, or about another experiment), or end (shutdown).
    fn admit(&mut self, m: Arc<LiveMessage>) -> Admit {
        if m.kind == "closing" {
            self.done = true;
            return Admit::End;
        }
        if m.id <= self.seen || !wanted(self.experiment.as_deref(), &m) {
            return Admit::Skip;
        }
        self.seen = m.id;
        Admit::Take(m)
    }
}

/// See [`Feed::admit`].
enum Admit {
    Take(Arc<LiveMessage>),
    Skip,
    End,
}

fn wanted(experiment: Option<&str>, m: &LiveMessage) -> bool {
    experiment.is_none() || m.experiment.as_deref() == experiment
}

/// The client's resume point: the `Last-Event-ID` header, else the query.
pub fn resume_after(req: &actix_web::HttpRequest, query: Option<u64>) -> Option<u64> {
    req.headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(query)
}

#[cfg(test)]
mod tests {
    use abacus_actors::live::CAPACITY;
    use serde_json::json;

    use super::*;

    fn kinds(live: &Arc<Live>) {
        live.publish("stats", Some("a"), &json!({}));
        live.publish("stats", Some("b"), &json!({}));
    }

    #[tokio::test]
    async fn replays_only_the_wanted_experiment_then_follows_live() {
        let live = Arc::new(Live::default());
        kinds(&live);
        let mut feed = Feed::open(&live, Some(0), Some("b".into()));
        live.publish("experiment.paused", Some("a"), &json!({}));
        live.publish("experiment.paused", Some("b"), &json!({}));
        let mut got = Vec::new();
        for _ in 0..2 {
            match feed.next().await {
                Some(Item::Message(m)) => got.push((m.id, m.kind.clone())),
                _ => panic!("expected a message"),
            }
        }
        assert_eq!(got, [(2, "stats".into()), (4, "experiment.paused".into())]);
    }

    #[tokio::test]
    async fn a_client_too_far_behind_is_dropped_once_and_counted() {
        let live = Arc::new(Live::default());
        let mut feed = Feed::open(&live, None, None);
        for _ in 0..=CAPACITY {
            kinds(&live);
        }
        assert!(matches!(feed.next().await, Some(Item::Dropped)));
        assert!(feed.next().await.is_none());
        assert_eq!(live.dropped.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn closing_the_hub_ends_the_feed() {
        let live = Arc::new(Live::default());
        let mut feed = Feed::open(&live, None, None);
        live.close();
        assert!(feed.next().await.is_none());
    }
}
