//! Asking a partition's owner for what only it holds: a unit's first
//! exposures. A node assigns from its own snapshot, but when the answer
//! depends on the variant a unit was first exposed to (a coverage cut, or
//! an experiment where clients reported variants the hash would not give)
//! and the unit's partition is folded elsewhere, it asks by NATS
//! request-reply on `abacus.lookup.<partition>`, which the owner answers
//! while it folds the partition (after catching up with its log).
//!
//! No owner (a takeover in progress) answers at once with no responders;
//! a slow one is given `cluster.lookup_timeout_ms`. Either way the caller
//! falls back to what the hash gives.

use std::time::Duration;

use async_nats::{Client, Request, Subject};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A unit's first exposures to some experiments, asked of its owner.
#[derive(Debug, Serialize, Deserialize)]
pub struct LookupRequest {
    /// The unit.
    pub unit: String,
    /// The experiments' keys.
    pub experiments: Vec<String>,
}

/// A first exposure as the owner's store has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoundExposure {
    /// The variant's key.
    pub variant: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// Asks and answers lookups.
#[derive(Clone)]
pub struct Lookups {
    client: Client,
    timeout: Duration,
}

impl Lookups {
    pub(super) fn new(client: Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// The owner's answer, one per experiment of `request`, in order.
    pub async fn ask(
        &self,
        partition: u16,
        request: &LookupRequest,
    ) -> Result<Vec<Option<FoundExposure>>> {
        let body = serde_json::to_vec(request)
            .map_err(|e| Error::Cluster(format!("encoding a lookup: {e}")))?;
        let asked = Request::new()
            .payload(body.into())
            .timeout(Some(self.timeout));
        let reply = self
            .client
            .send_request(subject(partition), asked)
            .await
            .map_err(|e| Error::Cluster(format!("looking up in partition {partition}: {e}")))?;
        let found: Vec<Option<FoundExposure>> = serde_json::from_slice(&reply.payload)
            .map_err(|e| Error::Cluster(format!("a lookup's answer: {e}")))?;
        if found.len() != request.experiments.len() {
            return Err(Error::Cluster(
                "a lookup's answer does not match it".to_owned(),
            ));
        }
        Ok(found)
    }

    /// The lookups asked of `partition`, each with where to answer it;
    /// ends when unsubscribed (dropped) or the connection closes.
    pub async fn serve(
        &self,
        partition: u16,
    ) -> Result<impl Stream<Item = (LookupRequest, Answer)> + use<>> {
        let requests = self
            .client
            .subscribe(subject(partition))
            .await
            .map_err(|e| Error::Cluster(format!("answering lookups: {e}")))?;
        let client = self.client.clone();
        Ok(requests.filter_map(move |message| {
            let asked = message.reply.and_then(|reply| {
                match serde_json::from_slice::<LookupRequest>(&message.payload) {
                    Ok(request) => Some((
                        request,
                        Answer {
                            client: client.clone(),
                            reply,
                        },
                    )),
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping an unreadable lookup");
                        None
                    }
                }
            });
            std::future::ready(asked)
        }))
    }
}

/// Where a lookup's answer goes.
pub struct Answer {
    client: Client,
    reply: Subject,
}

impl Answer {
    /// Sends `found`, one per experiment asked, in order.
    pub async fn send(self, found: &[Option<FoundExposure>]) -> Result<()> {
        let body = serde_json::to_vec(found)
            .map_err(|e| Error::Cluster(format!("encoding a lookup's answer: {e}")))?;
        self.client
            .publish(self.reply, body.into())
            .await
            .map_err(|e| Error::Cluster(format!("answering a lookup: {e}")))
    }
}

fn subject(partition: u16) -> String {
    format!("abacus.lookup.{partition}")
}
