//! The facade the HTTP layer calls: one method per thing a client can ask.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::aggregator::{Aggregator, LiveAggregates};
use crate::alerts::{Alerts, Sources};
use crate::analytics::{
    self, CompareReport, EngagementReport, Filter, UnitSummary, VariantSummary,
};
use crate::assignment::{Compiled, Decision, Reason};
use crate::catalog::{Catalog, CreateExperiment, Entry, Registry};
use crate::clock::Clock;
use crate::domain::{
    unix_ms, Action, Bucket, Event, EventIn, EventLimits, EventType, ExperimentAggregates,
    ExperimentIn, ExperimentKey, ExperimentPatch, Status, StickyAssignment, TimelineSnapshot,
    Variant, VariantKey, VariantPoint,
};
use crate::experiment::{PatchExperiment, Slot, TransitionExperiment};
use crate::ingest::{Envelope, Ingest, IngestLimits, JsonlSink, SinkActor};
use crate::live::Live;
use crate::results::{self, ExperimentResults};
use crate::retention::Retention;
use crate::sticky::FirstExposure;
use crate::storage::{blocking, Store, StoreOptions};
use crate::webhooks::{self, Webhooks};
use crate::{Error, Result};

/// `GET /v1/experiments/{key}/timeline`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Timeline {
    /// The experiment.
    pub experiment: String,
    /// The metric whose value is given (the primary one by default).
    pub metric: Option<String>,
    /// Oldest first; the last one is now.
    pub points: Vec<TimelinePoint>,
}

/// The cumulative figures at one moment.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TimelinePoint {
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Per variant, the control first.
    pub variants: Vec<VariantPoint>,
}

/// What the engine needs to start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// RocksDB directory.
    pub storage_path: PathBuf,
    /// Mailbox, batching and de-duplication of the event pipeline.
    pub ingest: IngestLimits,
    /// Also append every committed event to this JSON-lines file.
    pub jsonl_path: Option<PathBuf>,
    /// Delete raw events older than this; `None` keeps them forever.
    pub retention: Option<Retention>,
    /// How often running experiments are checked for significance and SRM.
    pub monitor_interval: Duration,
    /// How often running experiments' cumulative figures are kept.
    pub timeline_interval: Duration,
    /// Webhook delivery policy.
    pub webhooks: webhooks::Settings,
    /// Bounds on what one event may carry and when it may have happened.
    pub events: EventLimits,
    /// Most experiments one `assign_all` call may name.
    pub max_assignment_experiments: usize,
    /// Largest per-second live stats message.
    pub max_stats_message_bytes: usize,
    /// An export page stops once it holds this many bytes of events.
    pub max_export_page_bytes: usize,
}

/// What `ingest` queued.
pub struct Accepted {
    /// Number of events queued.
    pub count: usize,
    /// Resolves `true` once they are committed, when asked for.
    pub persisted: Option<tokio::sync::oneshot::Receiver<bool>>,
}

/// A page of exported events.
pub struct EventPage {
    /// The events, by time then commit order.
    pub events: Vec<Event>,
    /// Opaque cursor of the next page.
    pub next: Option<Vec<u8>>,
}

/// One unit's assignment to one experiment. Holds the snapshot it was
/// decided on, so the response borrows keys and payloads instead of
/// cloning them.
pub struct Assignment {
    compiled: Arc<Compiled>,
    decision: Decision,
}

impl Assignment {
    /// The experiment's key.
    pub fn experiment(&self) -> &ExperimentKey {
        &self.compiled.experiment().key
    }

    /// The variant served.
    pub fn variant(&self) -> &Variant {
        &self.compiled.experiment().variants[self.decision.variant]
    }

    /// Whether the unit takes part.
    pub fn in_experiment(&self) -> bool {
        self.decision.in_experiment
    }

    /// Why it got this variant.
    pub fn reason(&self) -> Reason {
        self.decision.reason
    }
}

/// A page of experiments.
pub struct Page {
    /// The experiments, in key order.
    pub items: Vec<Arc<Compiled>>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<ExperimentKey>,
}

/// The running engine.
pub struct Engine {
    registry: Arc<Registry>,
    catalog: Addr<Catalog>,
    store: Store,
    ingest: Ingest,
    aggregates: Arc<LiveAggregates>,
    webhooks: Arc<Webhooks>,
    alerts: Alerts,
    live: Arc<Live>,
    /// Assignments served, by [`Reason`] (index = `reason as usize`).
    assignments: [AtomicU64; 6],
    clock: Arc<dyn Clock>,
    event_limits: EventLimits,
    max_measures: usize,
    max_assignment_experiments: usize,
    max_export_page_bytes: usize,
}

impl Engine {
    /// Opens the store, restores every experiment and its sticky
    /// assignments, and starts the actors. Must run inside an actix system.
    pub async fn open(config: EngineConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let path = config.storage_path.clone();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let options = StoreOptions {
            dedup_window_ms: ms(config.ingest.dedup_window),
            retention_ms: config.retention.map(|r| ms(r.by_timestamp())),
        };
        let (store, experiments) = blocking(move || {
            let store = Store::open(&path, options)?;
            let experiments = store.experiments()?;
            Ok((store, experiments))
        })
        .await?;
        let registry = Arc::new(Registry::default());
        for experiment in experiments {
            registry.start(experiment, store.clone(), Arc::clone(&clock));
        }
        let restored = {
            let (store, registry) = (store.clone(), Arc::clone(&registry));
            blocking(move || restore_sticky(&store, &registry)).await?
        };
        tracing::info!(
            experiments = registry.load().len(),
            sticky_assignments = restored,
            path = %config.storage_path.display(),
            "store opened"
        );
        let mut sinks = Vec::new();
        if let Some(path) = &config.jsonl_path {
            let sink = JsonlSink::open(path).map_err(|e| {
                Error::invalid("ingest.jsonl_path", format!("{}: {e}", path.display()))
            })?;
            sinks.push(
                SinkActor::spawn(Box::new(sink), store.clone(), 64)
                    .map_err(|_| Error::Unavailable)?,
            );
        }
        let aggregates = Arc::new(LiveAggregates::default());
        let ingest = {
            let (store, aggregates) = (store.clone(), Arc::clone(&aggregates));
            blocking(move || Ingest::start(store, config.ingest, sinks, aggregates)).await?
        };
        crate::monitor::spawn(
            config.monitor_interval,
            Arc::clone(&registry),
            Arc::clone(&aggregates),
        );
        crate::timeline::spawn(
            config.timeline_interval,
            Arc::clone(&registry),
            Arc::clone(&aggregates),
            store.clone(),
        );
        if let Some(retention) = config.retention {
            crate::retention::spawn(retention, store.clone(), Arc::clone(&registry));
        }
        let webhooks = Arc::new(Webhooks::start(store.clone(), config.webhooks).await?);
        let live = Arc::new(Live::default());
        let alerts = Alerts::start(
            store.clone(),
            Sources {
                registry: Arc::clone(&registry),
                aggregates: Arc::clone(&aggregates),
                ingest: Arc::clone(ingest.stats()),
                webhooks: Arc::clone(&webhooks),
                signals: Arc::default(),
                live: Arc::clone(&live),
            },
            Arc::clone(&clock),
        )
        .await?;
        crate::live::spawn(
            Arc::clone(&live),
            Arc::clone(&registry),
            Arc::clone(&aggregates),
            store.clone(),
            config.max_stats_message_bytes,
        );
        let catalog =
            Catalog::new(Arc::clone(&registry), store.clone(), Arc::clone(&clock)).start();
        Ok(Self {
            registry,
            catalog,
            store,
            ingest,
            aggregates,
            webhooks,
            alerts,
            live,
            assignments: Default::default(),
            clock,
            event_limits: config.events,
            max_measures: config.ingest.max_measures,
            max_assignment_experiments: config.max_assignment_experiments,
            max_export_page_bytes: config.max_export_page_bytes,
        })
    }

    /// Creates a draft experiment.
    pub async fn create(&self, input: ExperimentIn) -> Result<Arc<Compiled>> {
        self.catalog.send(CreateExperiment(input)).await?
    }

    /// The current snapshot of one experiment.
    pub fn get(&self, key: &str) -> Result<Arc<Compiled>> {
        Ok(self.entry(key)?.slot.snapshot())
    }

    /// Experiments in key order after `after`, at most `limit`. Archived
    /// experiments only appear when asked for by status.
    pub fn list(&self, status: Option<Status>, after: Option<&str>, limit: usize) -> Page {
        let entries = self.registry.load();
        let range = match after {
            Some(after) => entries
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => entries.range::<str, _>(..),
        };
        let mut items: Vec<Arc<Compiled>> = Vec::with_capacity(limit.min(entries.len()));
        let mut next = None;
        for entry in range.map(|(_, entry)| entry) {
            let compiled = entry.slot.snapshot();
            let s = compiled.experiment().status;
            let wanted = match status {
                Some(wanted) => s == wanted,
                None => s != Status::Archived,
            };
            if !wanted {
                continue;
            }
            if items.len() == limit {
                next = items.last().map(|last| last.experiment().key.clone());
                break;
            }
            items.push(compiled);
        }
        Page { items, next }
    }

    /// Applies a patch through the experiment's actor.
    pub async fn patch(&self, key: &str, patch: ExperimentPatch) -> Result<Arc<Compiled>> {
        self.entry(key)?.addr.send(PatchExperiment(patch)).await?
    }

    /// Runs a lifecycle action through the experiment's actor.
    pub async fn transition(
        &self,
        key: &str,
        action: Action,
        winner: Option<VariantKey>,
    ) -> Result<Arc<Compiled>> {
        let msg = TransitionExperiment { action, winner };
        self.entry(key)?.addr.send(msg).await?
    }

    /// Assigns `unit` to one experiment. Lock-free on the experiment; the
    /// exposure (and a first exposure's stickiness) is queued without
    /// waiting.
    pub fn assign(&self, key: &str, unit: &str, log_exposure: bool) -> Result<Assignment> {
        let entry = self.entry(key)?;
        let mut assignments = [decide(&entry.slot, unit)];
        if log_exposure {
            self.expose(&[&entry.slot], &mut assignments, unit)?;
        }
        let [assignment] = assignments;
        self.count(std::slice::from_ref(&assignment));
        Ok(assignment)
    }

    /// Assigns `unit` to every running experiment, or to the named ones
    /// whatever their status (each once, at most
    /// `max_assignment_experiments`). Exposures are queued together.
    pub fn assign_all(
        &self,
        unit: &str,
        keys: Option<&[ExperimentKey]>,
        log_exposure: bool,
    ) -> Result<Vec<Assignment>> {
        let entries: Vec<Entry> = match keys {
            Some(keys) => {
                let mut unique: Vec<&ExperimentKey> = Vec::with_capacity(keys.len());
                for key in keys {
                    if !unique.contains(&key) {
                        unique.push(key);
                    }
                    if unique.len() > self.max_assignment_experiments {
                        return Err(Error::invalid(
                            "experiments",
                            format!(
                                "at most {} distinct experiments per request",
                                self.max_assignment_experiments
                            ),
                        ));
                    }
                }
                unique
                    .into_iter()
                    .map(|k| self.entry(k.as_str()))
                    .collect::<Result<_>>()?
            }
            None => self
                .registry
                .load()
                .values()
                .filter(|e| e.slot.snapshot().experiment().status == Status::Running)
                .cloned()
                .collect(),
        };
        let slots: Vec<&Slot> = entries.iter().map(|e| &*e.slot).collect();
        let mut assignments: Vec<Assignment> = slots.iter().map(|s| decide(s, unit)).collect();
        if log_exposure {
            self.expose(&slots, &mut assignments, unit)?;
        }
        self.count(&assignments);
        Ok(assignments)
    }

    /// Counts served assignments by reason (one relaxed add each).
    fn count(&self, assignments: &[Assignment]) {
        for a in assignments {
            self.assignments[a.decision.reason as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes the figures kept in atomics and the ones read on demand
    /// (mailbox, experiments, RocksDB, memory) to the metrics recorder.
    /// Call just before rendering a scrape.
    pub async fn export_metrics(&self) {
        use crate::metrics as m;
        use metrics::{counter, gauge};
        let stats = self.ingest.stats();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter!(m::EVENTS_ACCEPTED).absolute(load(&stats.accepted));
        counter!(m::EVENTS_REJECTED, "reason" => "mailbox_full")
            .absolute(load(&stats.rejected_full_events));
        counter!(m::EVENTS_REJECTED, "reason" => "invalid").absolute(load(&stats.rejected_invalid));
        counter!(m::EVENTS_PERSISTED).absolute(load(&stats.persisted));
        counter!(m::EVENTS_DUPLICATE).absolute(load(&stats.duplicates));
        counter!(m::EVENTS_REJECTED, "reason" => "store_failed")
            .absolute(load(&stats.rejected_failed));
        counter!(m::EVENTS_LOST).absolute(load(&stats.lost));
        counter!(m::INGEST_COMMIT_FAILURES).absolute(load(&stats.commit_failures));
        gauge!(m::INGEST_STORE_FAILED).set(f64::from(u8::from(stats.is_failed())));
        gauge!(m::MAILBOX_DEPTH, "mailbox" => "ingest").set(self.ingest.depth() as f64);
        gauge!(m::MAILBOX_CAPACITY, "mailbox" => "ingest").set(self.ingest.capacity() as f64);
        for reason in Reason::ALL {
            counter!(m::ASSIGNMENTS, "reason" => reason.as_str())
                .absolute(load(&self.assignments[reason as usize]));
        }
        let mut by_status = [0u64; Status::ALL.len()];
        for entry in self.registry.load().values() {
            let status = entry.slot.snapshot().experiment().status;
            if let Some(i) = Status::ALL.iter().position(|s| *s == status) {
                by_status[i] += 1;
            }
        }
        for (status, n) in Status::ALL.iter().zip(by_status) {
            gauge!(m::EXPERIMENTS, "status" => status.as_str()).set(n as f64);
        }
        gauge!(m::WEBHOOK_DISABLED).set(self.webhooks.disabled().len() as f64);
        let store = self.store.clone();
        if let Ok((live, pending, stalled)) = blocking(move || store.health()).await {
            gauge!(m::ROCKSDB_LIVE_SST).set(live as f64);
            gauge!(m::ROCKSDB_PENDING_COMPACTION).set(pending as f64);
            gauge!(m::ROCKSDB_WRITE_STALL).set(f64::from(u8::from(stalled)));
        }
        gauge!(m::STREAM_CLIENTS).set(self.live.clients() as f64);
        counter!(m::STREAM_DROPPED, "reason" => "slow_consumer").absolute(load(&self.live.dropped));
        if let Some(rss) = resident_bytes() {
            gauge!(m::PROCESS_RSS).set(rss as f64);
        }
    }

    /// The ingest mailbox's depth and capacity.
    pub fn mailbox(&self) -> (usize, usize) {
        (self.ingest.depth(), self.ingest.capacity())
    }

    /// Queues an exposure for every assignment in the experiment, recording
    /// first exposures. If the mailbox is full nothing is remembered and the
    /// caller gets `Overloaded`.
    fn expose(&self, slots: &[&Slot], assignments: &mut [Assignment], unit: &str) -> Result<()> {
        let now = unix_ms(self.clock.now());
        let mut events = Vec::new();
        let mut sticky = Vec::new();
        let mut remembered = Vec::new();
        for (slot, a) in slots.iter().zip(assignments.iter_mut()) {
            if !a.decision.in_experiment {
                continue;
            }
            let experiment = a.compiled.experiment();
            if a.decision.reason == Reason::Hashed {
                let first = FirstExposure {
                    variant: a.decision.variant,
                    at_ms: now,
                };
                match slot.sticky.insert_first(unit, first) {
                    Ok(()) => {
                        remembered.push(*slot);
                        sticky.push(StickyAssignment {
                            experiment: experiment.key.clone(),
                            unit: unit.into(),
                            variant: experiment.variants[first.variant].key.as_str().into(),
                            first_exposed_ms: now,
                        });
                    }
                    Err(standing) => {
                        a.decision.variant = standing.variant;
                        a.decision.reason = Reason::Sticky;
                    }
                }
            }
            events.push(exposure(experiment, a.decision.variant, unit, now));
        }
        if events.is_empty() {
            return Ok(());
        }
        let envelope = Envelope {
            events,
            sticky,
            ack: None,
        };
        self.ingest.submit(envelope).inspect_err(|_| {
            for slot in remembered {
                slot.sticky.forget(unit);
            }
        })
    }

    /// Validates and queues client events, all or none. Exposures among
    /// them establish first exposures; an omitted variant is derived from
    /// the unit's assignment, and an explicit one that differs from it is
    /// marked as a mismatch. `index_fields` prefixes error fields with
    /// `events[i].` (for a batch body).
    pub fn ingest(&self, inputs: Vec<EventIn>, index_fields: bool, wait: bool) -> Result<Accepted> {
        let n = inputs.len() as u64;
        let result = self.validate_and_queue(inputs, index_fields, wait);
        if let Err(Error::Invalid { .. }) = &result {
            self.count_invalid(n);
        }
        result
    }

    /// Counts events refused before they reached [`Engine::ingest`] (a
    /// body of the wrong shape), so rejection figures include them.
    pub fn count_invalid(&self, events: u64) {
        self.ingest
            .stats()
            .rejected_invalid
            .fetch_add(events, Ordering::Relaxed);
    }

    fn validate_and_queue(
        &self,
        inputs: Vec<EventIn>,
        index_fields: bool,
        wait: bool,
    ) -> Result<Accepted> {
        let now = self.clock.now();
        let entries = self.registry.load();
        let at = |i: usize, e: Error| match e {
            Error::Invalid { field, message } if index_fields => Error::Invalid {
                field: format!("events[{i}].{field}"),
                message: format!("event {i}: {message}"),
            },
            other => other,
        };
        let mut events = Vec::with_capacity(inputs.len());
        // (experiment, its snapshot, variant, index of the exposure event)
        // per exposure.
        let mut firsts: Vec<(&Entry, Arc<Compiled>, usize, usize)> = Vec::new();
        let mut exposed_in_batch: HashMap<(*const Slot, Box<str>), usize> = HashMap::new();
        // One snapshot per experiment for the whole request, so a change
        // published meanwhile cannot make two events disagree on variants.
        let mut snapshots: HashMap<*const Slot, Arc<Compiled>> = HashMap::new();
        for (i, input) in inputs.into_iter().enumerate() {
            let mut event = input
                .check(now, &self.event_limits, || uuid::Uuid::now_v7().to_string())
                .map_err(|e| at(i, e))?;
            match &event.experiment {
                Some(key) => {
                    let entry = entries.get(key).ok_or_else(|| {
                        at(
                            i,
                            Error::invalid("experiment", format!("experiment '{key}' not found")),
                        )
                    })?;
                    let compiled = Arc::clone(
                        snapshots
                            .entry(Arc::as_ptr(&entry.slot))
                            .or_insert_with(|| entry.slot.snapshot()),
                    );
                    let experiment = compiled.experiment();
                    // Only a running experiment has exposures: one reported
                    // for a draft, paused, completed or archived experiment
                    // would make its unit count (and stick) outside the test.
                    if event.kind == EventType::Exposure && experiment.status != Status::Running {
                        return Err(at(
                            i,
                            Error::invalid(
                                "experiment",
                                format!(
                                    "experiment '{key}' is {}: only a running experiment has exposures",
                                    experiment.status.as_str()
                                ),
                            ),
                        ));
                    }
                    // A first exposure earlier in this batch is not in the
                    // sticky table yet, but already decides the variant.
                    let decided = compiled.decide(&event.unit_id, || {
                        entry
                            .slot
                            .sticky
                            .get(&event.unit_id)
                            .map(|f| f.variant)
                            .or_else(|| {
                                exposed_in_batch
                                    .get(&(Arc::as_ptr(&entry.slot), event.unit_id.clone()))
                                    .copied()
                            })
                    });
                    let assigned = decided.in_experiment.then_some(decided.variant);
                    let variant = match &event.variant {
                        Some(v) => {
                            let index = experiment.variant_index(v.as_str()).ok_or_else(|| {
                                at(
                                    i,
                                    Error::invalid(
                                        "variant",
                                        format!("'{v}' is not a variant of '{key}'"),
                                    ),
                                )
                            })?;
                            event.assignment_mismatch = assigned.is_some_and(|a| a != index);
                            Some(index)
                        }
                        None => {
                            event.variant = assigned.map(|a| experiment.variants[a].key.clone());
                            assigned
                        }
                    };
                    if let (EventType::Exposure, Some(variant)) = (&event.kind, variant) {
                        firsts.push((entry, Arc::clone(&compiled), variant, i));
                        exposed_in_batch
                            .entry((Arc::as_ptr(&entry.slot), event.unit_id.clone()))
                            .or_insert(variant);
                    }
                }
                None if event.variant.is_some() => {
                    return Err(at(
                        i,
                        Error::invalid("variant", "a variant needs its experiment"),
                    ));
                }
                None => {}
            }
            events.push(event);
        }
        let mut sticky = Vec::new();
        let mut remembered = Vec::new();
        for (entry, compiled, variant, i) in firsts {
            let event = &events[i];
            let first = FirstExposure {
                variant,
                at_ms: event.timestamp_ms,
            };
            if entry
                .slot
                .sticky
                .insert_first(&event.unit_id, first)
                .is_ok()
            {
                remembered.push((entry, event.unit_id.clone()));
                let experiment = compiled.experiment();
                sticky.push(StickyAssignment {
                    experiment: experiment.key.clone(),
                    unit: event.unit_id.clone(),
                    variant: experiment.variants[variant].key.as_str().into(),
                    first_exposed_ms: event.timestamp_ms,
                });
            }
        }
        let (ack, persisted) = if wait {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let count = events.len();
        self.ingest
            .submit(Envelope {
                events,
                sticky,
                ack,
            })
            .inspect_err(|_| {
                for (entry, unit) in &remembered {
                    entry.slot.sticky.forget(unit);
                }
            })?;
        Ok(Accepted { count, persisted })
    }

    /// A page of stored events of `experiment` (or of events without one)
    /// with `from_ms <= timestamp < to_ms`: at most `limit` events, and it
    /// ends early once it holds `limits.max_export_page_bytes`.
    pub async fn events(
        &self,
        experiment: Option<ExperimentKey>,
        from_ms: i64,
        to_ms: i64,
        cursor: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<EventPage> {
        let store = self.store.clone();
        let max_bytes = self.max_export_page_bytes;
        blocking(move || {
            let (events, next) = store.events(
                experiment.as_ref(),
                from_ms,
                to_ms,
                cursor.as_deref(),
                limit,
                max_bytes,
            )?;
            Ok(EventPage { events, next })
        })
        .await
    }

    /// The live feed.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Webhook subscriptions and their deliveries.
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// The webhook subsystem.
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// The experiment's aggregates as of the last committed batch.
    pub fn aggregates(&self, key: &str) -> Result<Arc<ExperimentAggregates>> {
        self.entry(key)?;
        Ok(self.aggregates.get(key))
    }

    /// The experiment's aggregates recomputed from its stored events (and
    /// the events that name no experiment) with `from_ms <= timestamp <
    /// to_ms`, folded in commit order. Reads them all into memory: for an
    /// operator's check or a time-window query, not a hot path. Over all
    /// time it equals [`Engine::aggregates`] unless retention has removed
    /// events.
    pub async fn rebuilt_aggregates(
        &self,
        key: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<ExperimentAggregates> {
        let experiment = self.entry(key)?.slot.snapshot().experiment().key.clone();
        let store = self.store.clone();
        let max_measures = self.max_measures;
        blocking(move || {
            let mut events = Vec::new();
            for scope in [Some(&experiment), None] {
                let mut cursor = None;
                loop {
                    let (page, next) = store.events(
                        scope,
                        from_ms,
                        to_ms,
                        cursor.as_deref(),
                        10_000,
                        usize::MAX,
                    )?;
                    events.extend(page);
                    match next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
            }
            events.sort_unstable_by_key(|e| e.seq);
            let mut aggregator = Aggregator::new(max_measures);
            aggregator.fold(&events);
            Ok(aggregator.experiment(experiment.as_str()))
        })
        .await
    }

    /// Results for one metric (all the experiment's metrics when `None`),
    /// from the live aggregates, or for units exposed and events within
    /// `window` (from, to in ms) by folding the stored events of that window.
    pub async fn results(
        &self,
        key: &str,
        metric: Option<&str>,
        window: Option<(i64, i64)>,
    ) -> Result<ExperimentResults> {
        let compiled = self.get(key)?;
        let experiment = compiled.experiment();
        if let Some(metric) = metric {
            if !experiment.metrics.iter().any(|m| m.key.as_str() == metric) {
                return Err(Error::invalid(
                    "metric",
                    format!("'{metric}' is not a metric of '{key}'"),
                ));
            }
        }
        let aggregates = match window {
            None => self.aggregates.get(key),
            Some((from, to)) => Arc::new(self.rebuilt_aggregates(key, from, to).await?),
        };
        Ok(results::compute(experiment, &aggregates, metric))
    }

    /// The experiment's cumulative figures over time for `metric` (the
    /// primary metric when `None`), thinned to at most `max_points`, ending
    /// with the figures now.
    pub async fn timeline(
        &self,
        key: &str,
        metric: Option<&str>,
        max_points: usize,
    ) -> Result<Timeline> {
        let compiled = self.get(key)?;
        let experiment = compiled.experiment();
        let metric = match metric {
            Some(m) if experiment.metrics.iter().any(|x| x.key.as_str() == m) => Some(m.to_owned()),
            Some(m) => {
                return Err(Error::invalid(
                    "metric",
                    format!("'{m}' is not a metric of '{key}'"),
                ))
            }
            None => experiment.primary_metric.as_ref().map(ToString::to_string),
        };
        let (store, owned) = (self.store.clone(), key.to_owned());
        let mut stored = blocking(move || store.timeline(&owned)).await?;
        stored.push((
            unix_ms(self.clock.now()),
            TimelineSnapshot::of(experiment, &self.aggregates.get(key)),
        ));
        let step = stored.len().div_ceil(max_points.max(2) - 1).max(1);
        let last = stored.len() - 1;
        let points = stored
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0 || *i == last)
            .map(|(_, (at, snapshot))| TimelinePoint {
                at_ms: *at,
                variants: snapshot.values(experiment, metric.as_deref()),
            })
            .collect();
        Ok(Timeline {
            experiment: key.to_owned(),
            metric,
            points,
        })
    }

    /// Analytics buckets the filter covers, merged per variant.
    pub async fn analytics(&self, filter: Filter) -> Result<BTreeMap<String, Bucket>> {
        if let Some(key) = &filter.experiment {
            self.entry(key)?;
        } else if filter.variant.is_some() {
            return Err(Error::invalid(
                "variant",
                "a variant filter needs experiment",
            ));
        }
        let store = self.store.clone();
        blocking(move || analytics::query(&store, &filter)).await
    }

    /// One unit: its first exposures, and what its stored events add up to.
    pub async fn unit_summary(&self, unit: &str) -> Result<UnitSummary> {
        let assignments = self
            .registry
            .load()
            .values()
            .filter_map(|entry| {
                let first = entry.slot.sticky.get(unit)?;
                let compiled = entry.slot.snapshot();
                let experiment = compiled.experiment();
                let variant = experiment.variants.get(first.variant)?;
                Some((experiment.key.to_string(), variant.key.to_string()))
            })
            .collect();
        let store = self.store.clone();
        let owned = unit.to_owned();
        let (events, bucket) = blocking(move || {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let mut bucket = Bucket::default();
            for e in store.unit_events(&owned, 0, i64::MAX, 100_000)? {
                *counts.entry(e.kind.as_str().to_owned()).or_default() += 1;
                bucket.add(&e);
            }
            Ok((counts, bucket))
        })
        .await?;
        Ok(UnitSummary {
            unit_id: unit.to_owned(),
            assignments,
            events,
            impressions: bucket.impressions,
            clicks: bucket.clicks,
            ctr: analytics::ctr(&bucket),
            mean_dwell_ms: EngagementReport::of(&bucket).dwell_time_ms.mean,
        })
    }

    /// The variants side by side, and the winner by the primary metric.
    pub async fn compare(&self, key: &str) -> Result<CompareReport> {
        let compiled = self.get(key)?;
        let experiment = compiled.experiment();
        let aggregates = self.aggregates.get(key);
        let buckets = self
            .analytics(Filter {
                experiment: Some(key.to_owned()),
                ..Filter::default()
            })
            .await?;
        let empty = Bucket::default();
        let variants = experiment
            .variants
            .iter()
            .map(|v| {
                let a = aggregates.variants.get(v.key.as_str());
                let converted = a
                    .and_then(|a| a.measures.get("conversion"))
                    .map_or(0, |m| m.units);
                let bucket = buckets.get(v.key.as_str()).unwrap_or(&empty);
                VariantSummary::of(v.key.as_str(), bucket, a.map_or(0, |a| a.units), converted)
            })
            .collect();
        let winner = experiment.primary_metric.as_ref().and_then(|metric| {
            let results = results::compute(experiment, &aggregates, Some(metric.as_str()));
            results::winner(experiment, &results.metrics.first()?.comparisons)
        });
        Ok(CompareReport {
            experiment: experiment.key.to_string(),
            primary_metric: experiment.primary_metric.as_ref().map(ToString::to_string),
            variants,
            winner,
        })
    }

    fn entry(&self, key: &str) -> Result<Entry> {
        self.registry
            .get(key)
            .ok_or_else(|| Error::ExperimentNotFound(key.to_owned()))
    }

    /// Whether the engine can serve: the writer is running.
    pub fn is_ready(&self) -> bool {
        self.ingest.is_alive() && self.catalog.connected()
    }

    /// Why the event store was marked failed (a commit refused after every
    /// retry; events are refused until restart), or `None` while it works.
    pub fn store_failure(&self) -> Option<String> {
        self.ingest.stats().store_failure()
    }

    /// Drains the writers and flushes the WAL. Call after the HTTP server
    /// has stopped taking requests.
    pub async fn shutdown(self: Arc<Self>) -> Result<()> {
        blocking(move || {
            self.ingest.close();
            self.store.flush_wal()
        })
        .await
    }
}

fn restore_sticky(store: &Store, registry: &Registry) -> Result<usize> {
    let entries = registry.load();
    let mut restored = 0;
    for record in store.sticky() {
        // An undecodable first exposure is skipped rather than refusing to
        // start: its unit is assigned by hash again (the same variant
        // unless weights or coverage changed since).
        let record = match record {
            Ok(record) => record,
            Err(e @ Error::Corrupt { .. }) => {
                tracing::error!(error = %e, "skipping an undecodable sticky assignment");
                metrics::counter!(crate::metrics::STORE_RECORDS_REBUILT, "cf" => "sticky")
                    .increment(1);
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(entry) = entries.get(&record.experiment) else {
            continue;
        };
        let snapshot = entry.slot.snapshot();
        if let Some(variant) = snapshot.experiment().variant_index(&record.variant) {
            let first = FirstExposure {
                variant,
                at_ms: record.first_exposed_ms,
            };
            entry.slot.sticky.restore(record.unit, first);
            restored += 1;
        }
    }
    Ok(restored)
}

/// Resident memory from `/proc/self/status` (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Assigns without side effects: the snapshot and the sticky table only.
fn decide(slot: &Slot, unit: &str) -> Assignment {
    let compiled = slot.snapshot();
    let decision = compiled.decide(unit, || slot.sticky.get(unit).map(|f| f.variant));
    Assignment { compiled, decision }
}

/// The exposure event an assignment logs.
fn exposure(
    experiment: &crate::domain::Experiment,
    variant: usize,
    unit: &str,
    now_ms: i64,
) -> Event {
    Event {
        seq: 0,
        event_id: uuid::Uuid::now_v7().to_string().into(),
        kind: EventType::Exposure,
        unit_id: unit.into(),
        experiment: Some(experiment.key.clone()),
        variant: Some(experiment.variants[variant].key.clone()),
        value: None,
        timestamp_ms: now_ms,
        received_ms: now_ms,
        session_id: None,
        properties: None,
        assignment_mismatch: false,
        client_id: false,
    }
}
