//! A task that must run on one node at a time (the results monitor: two
//! nodes would both record significance, SRM and guardrail stops) runs
//! where the lease `singleton.<name>` is held. Every node tries to take it
//! every third of the lease's TTL; the holder renews it then, and when the
//! holder dies the lease expires and another node takes it.
//!
//! The task itself asks [`Singleton::is_held`] before each run. A holder
//! cut off from NATS stops believing it holds the lease once a whole TTL
//! passed without a renewal, which is when another node can take it; what
//! the task does is compare-and-set on the experiments bucket, so a run
//! overlapping the new holder's loses rather than doubles.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Lease, Leases};

/// Whether this node runs a singleton task now.
pub struct Singleton {
    held: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Singleton {
    /// Starts trying to hold the lease `singleton.<name>`.
    pub fn spawn(leases: Leases, name: &'static str) -> Self {
        let held = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(hold(leases, name, Arc::clone(&held), stopped));
        Self {
            held,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// The flag the task reads before each run.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.held)
    }

    /// Whether this node holds the lease now.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Stops trying, releasing the lease if held. Idempotent.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn hold(
    leases: Leases,
    name: &'static str,
    held: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    let lease = Lease::Singleton(name);
    let mut holding = None;
    loop {
        holding = match holding {
            Some(mut h) => leases.keep(&mut h).await.then_some(h),
            None => leases.take(lease).await.inspect(|_| {
                tracing::info!(%lease, "this node runs it now");
            }),
        };
        held.store(holding.is_some(), Ordering::Release);
        metrics::gauge!(crate::metrics::CLUSTER_SINGLETON_HELD, "task" => name)
            .set(f64::from(u8::from(holding.is_some())));
        tokio::select! {
            _ = tokio::time::sleep(leases.ttl() / 3) => {}
            _ = stopped.changed() => break,
        }
    }
    held.store(false, Ordering::Release);
    metrics::gauge!(crate::metrics::CLUSTER_SINGLETON_HELD, "task" => name).set(0.0);
    if let Some(h) = holding {
        leases.give_back(h).await;
    }
}
