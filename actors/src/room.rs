//! Waiting for room in the ingest mailboxes. A request that finds a
//! partition's mailbox full (client events, or an assignment's exposure)
//! waits, up to `ingest.enqueue_wait_ms`, for a writer to take parts, and
//! tries again; only then is it refused 503. A burst, or a
//! client that saturates the request threads, is slowed instead of
//! refused, and the writers get the CPU the waiting requests leave.
//!
//! The wait costs nothing while there is room: the first try is made
//! without touching the notifier.

use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{Error, Result};

/// Where refused requests wait for the writers to take parts.
#[derive(Debug, Default)]
pub struct Room {
    freed: Notify,
    /// Longest a request waits before it is refused.
    wait: Duration,
}

impl Room {
    /// Requests wait at most `wait` (zero: refused at once).
    pub fn new(wait: Duration) -> Self {
        Self {
            freed: Notify::new(),
            wait,
        }
    }

    /// Wakes every waiting request: a writer took parts. Takes a lock
    /// without contention; writers call it at most once per collecting
    /// step, not per part.
    pub fn freed(&self) {
        self.freed.notify_waiters();
    }

    /// Runs `attempt` until it is not refused [`Error::Overloaded`] or the
    /// wait has passed; then answers what the last attempt did. Each retry
    /// follows a writer taking parts, registered before the attempt it
    /// follows, so a release between the two is not missed.
    pub async fn retry<T>(&self, mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
        match attempt() {
            Err(Error::Overloaded(_)) if !self.wait.is_zero() => {}
            answered => return answered,
        }
        let deadline = Instant::now() + self.wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match attempt() {
                Err(Error::Overloaded(_)) => {}
                answered => return answered,
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return attempt();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn an_answer_other_than_overloaded_is_returned_at_once() {
        let room = Room::new(Duration::from_secs(60));
        let tries = AtomicUsize::new(0);
        let answer = room
            .retry(|| {
                tries.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::Unavailable)
            })
            .await;
        assert!(matches!(answer, Err(Error::Unavailable)), "{answer:?}");
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }

    /// Retries an attempt refused every time; how many times it ran.
    async fn refused_every_time(room: &Room) -> usize {
        let tries = AtomicUsize::new(0);
        let answer = room
            .retry(|| {
                tries.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::Overloaded("ingest"))
            })
            .await;
        assert!(matches!(answer, Err(Error::Overloaded(_))), "{answer:?}");
        tries.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn without_a_wait_a_full_mailbox_is_refused_at_once() {
        assert_eq!(refused_every_time(&Room::new(Duration::ZERO)).await, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_request_tries_again_when_room_is_freed() {
        let room = Arc::new(Room::new(Duration::from_secs(60)));
        let full = Arc::new(AtomicBool::new(true));
        let writer = {
            let (room, full) = (Arc::clone(&room), Arc::clone(&full));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                full.store(false, Ordering::SeqCst);
                room.freed();
            })
        };
        let started = Instant::now();
        let answer = room
            .retry(|| {
                if full.load(Ordering::SeqCst) {
                    Err(Error::Overloaded("ingest"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(answer.ok(), Some(7));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(20) && waited < Duration::from_secs(60),
            "{waited:?}"
        );
        writer.await.expect("the writer task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_still_refused_after_the_wait_is_refused() {
        let started = Instant::now();
        let tries = refused_every_time(&Room::new(Duration::from_millis(100))).await;
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        // The first try, one after registering for a release, one at the deadline.
        assert_eq!(tries, 3);
    }
}
