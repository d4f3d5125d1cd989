//! Live-stream listeners held open during a run (`--stream-clients`), to
//! measure what fanning the feed out costs the requests under test, and
//! whether every listener keeps up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::task::JoinSet;

/// Open `GET /v1/stream` connections, counting what they receive.
pub struct Listeners {
    messages: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    tasks: JoinSet<()>,
    clients: usize,
}

/// What the listeners saw.
#[derive(Debug, Serialize)]
pub struct StreamFigures {
    /// Connections held open.
    pub clients: usize,
    /// SSE messages received, all clients.
    pub messages: u64,
    /// Clients the server dropped as too slow.
    pub dropped: u64,
}

impl Listeners {
    /// Opens `n` streams and starts reading them.
    pub async fn open(base: &str, token: Option<&str>, n: usize) -> anyhow::Result<Self> {
        // Its own client: the requests' client has a total timeout, which
        // would cut an endless stream.
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        let messages = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            let mut request = client.get(format!("{base}/v1/stream"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let mut response = request.send().await?.error_for_status()?;
            let (messages, dropped) = (Arc::clone(&messages), Arc::clone(&dropped));
            tasks.spawn(async move {
                // A frame ends with a blank line; carry the tail of each
                // chunk so a split terminator is still seen.
                let mut tail: Vec<u8> = Vec::new();
                while let Ok(Some(chunk)) = response.chunk().await {
                    tail.extend_from_slice(&chunk);
                    let text = String::from_utf8_lossy(&tail);
                    let frames = text.matches("\n\n").count() as u64;
                    if text.contains("event: dropped") {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    let keep = tail.len() - text.rfind("\n\n").map_or(0, |i| i + 2);
                    tail.drain(..tail.len() - keep);
                    messages.fetch_add(frames, Ordering::Relaxed);
                }
            });
        }
        Ok(Self {
            messages,
            dropped,
            tasks,
            clients: n,
        })
    }

    /// Closes every stream and reports.
    pub fn close(mut self) -> StreamFigures {
        self.tasks.abort_all();
        StreamFigures {
            clients: self.clients,
            messages: self.messages.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}
