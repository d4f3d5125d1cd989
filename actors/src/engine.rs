//! The engine: builds the services and hands them out. It holds no
//! policy; each question a client can ask is answered by one service.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::alerts::{self, Alerts, Sources};
use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::cluster::{Cluster, ClusterSettings, Singleton};
use crate::credentials::Credentials;
use crate::domain::{EventLimits, Principal, QuotaLimits};
use crate::experiments::records::Records;
use crate::experiments::{self, Experiments};
use crate::ingest::retention::{self, Retention};
use crate::ingest::{
    derived, IngestLimits, Intake, IntakeBounds, JsonlSink, LiveAggregates, Mailbox, Owner,
    Publisher, SinkWorker,
};
use crate::live::{self, Live};
use crate::quotas::Quotas;
use crate::results::figures::{self, Board, Cadence, Consumers};
use crate::results::Results;
use crate::room::Room;
use crate::storage::{blocking, Store, StoreOptions};
use crate::webhooks::{self, Replication, Webhooks};
use crate::{Error, Result};

/// What the engine needs to start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The project the engine serves (its metrics' `project` label).
    pub project: Arc<str>,
    /// The project's quotas when it opens (the projects service sets them
    /// again from the project's overrides).
    pub quotas: QuotaLimits,
    /// RocksDB directory.
    pub storage_path: PathBuf,
    /// RocksDB's block cache, shared by every column family.
    pub cache_bytes: usize,
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
    pub webhooks: webhooks::DeliveryPolicy,
    /// Bounds on what one event may carry and when it may have happened.
    pub events: EventLimits,
    /// Most experiments one `assign_all` call may name.
    pub max_assignment_experiments: usize,
    /// Largest per-second live stats message.
    pub max_stats_message_bytes: usize,
    /// An export page stops once it holds this many bytes of events.
    pub max_export_page_bytes: usize,
    /// Most ids linked to one unit.
    pub max_links_per_unit: usize,
    /// Most API keys issued through the API.
    pub max_keys: usize,
    /// How long audit log entries are kept.
    pub audit_retention: Duration,
    /// Cluster mode: how this node joins; `None` for a single node.
    pub cluster: Option<ClusterSettings>,
}

/// The running engine: one handle per service.
pub struct Engine {
    experiments: Arc<Experiments>,
    intake: Arc<Intake>,
    results: Arc<Results>,
    webhooks: Arc<Webhooks>,
    alerts: Arc<Alerts>,
    live: Arc<Live>,
    credentials: Arc<Credentials>,
    audit: Arc<AuditLog>,
    quotas: Arc<Quotas>,
    store: Store,
    /// Cluster mode: the partitions this node folds.
    owner: Option<Owner>,
    /// Cluster mode: whether this node runs the results monitor, and
    /// whether it delivers webhooks.
    singletons: Vec<Singleton>,
}

impl Engine {
    /// Opens the store, restores every experiment (nothing per unit), and
    /// starts the services. Must run inside an actix
    /// system.
    pub async fn open(config: EngineConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let store = open_store(&config, Arc::clone(&clock)).await?;
        let cluster = match &config.cluster {
            Some(settings) => Some(Cluster::connect(settings, config.ingest.partitions).await?),
            None => None,
        };
        let records = match &cluster {
            Some(cluster) => Records::replicated(
                store.clone(),
                cluster.experiments().clone(),
                cluster.alerts().clone(),
            ),
            None => Records::local(store.clone()),
        };
        let bucket = records.bucket().cloned();
        let quotas = Arc::new(Quotas::new(Arc::clone(&config.project), config.quotas));
        let (registry, seen) = experiments::restore(&records, Arc::clone(&clock)).await?;
        let partitions = config.ingest.partitions;
        let aggregates = Arc::new(match cluster {
            Some(_) => LiveAggregates::replicated(usize::from(partitions)),
            None => LiveAggregates::new(usize::from(partitions)),
        });
        let mailbox = {
            let sinks = sinks(&config, &store)?;
            let (store, aggregates) = (store.clone(), Arc::clone(&aggregates));
            let limits = config.ingest;
            Arc::new(blocking(move || Mailbox::start(store, limits, sinks, aggregates)).await?)
        };
        derived::tell_all(&registry, &mailbox);
        derived::spawn(
            Arc::clone(&registry),
            Arc::clone(&mailbox),
            Arc::clone(&aggregates),
        );
        let (publisher, owner) = match &cluster {
            Some(cluster) => {
                let publisher = Arc::new(Publisher::new(
                    cluster.log().clone(),
                    partitions,
                    Arc::clone(mailbox.stats()),
                    Arc::new(Room::new(config.ingest.enqueue_wait)),
                    cluster.divergence().clone(),
                ));
                let owner = Owner::start(
                    cluster,
                    Arc::clone(&mailbox),
                    Arc::clone(&aggregates),
                    store.clone(),
                    partitions,
                    config.ingest.flush_max_events,
                )
                .await?;
                (Some(publisher), Some(owner))
            }
            None => (None, None),
        };
        let exposures = match &publisher {
            Some(publisher) => Arc::clone(publisher) as _,
            None => Arc::clone(&mailbox) as _,
        };
        let experiments = Arc::new(Experiments::new(
            Arc::clone(&registry),
            records,
            exposures,
            owner.as_ref().map(Owner::elsewhere),
            Arc::clone(&clock),
            config.max_assignment_experiments,
            Arc::clone(&quotas),
        )?);
        if let (Some(bucket), Some(cluster)) = (bucket, &cluster) {
            experiments.follow(bucket, seen, cluster.divergence().clone());
        }
        let intake = Arc::new(Intake::new(
            Arc::clone(&mailbox),
            publisher,
            Arc::clone(&registry),
            store.clone(),
            Arc::clone(&clock),
            config.events,
            IntakeBounds {
                max_export_page_bytes: config.max_export_page_bytes,
                max_links_per_unit: config.max_links_per_unit,
            },
        ));
        let results = Arc::new(Results::new(
            Arc::clone(&registry),
            Arc::clone(&aggregates),
            store.clone(),
            Arc::clone(&clock),
            config.ingest,
        ));
        if let Some(retention) = config.retention {
            retention::spawn(retention, store.clone(), Arc::clone(&registry));
        }
        let delivery = cluster
            .as_ref()
            .map(|c| Singleton::spawn(c.leases().clone(), "webhooks"));
        let webhooks = Arc::new(match (&cluster, &delivery) {
            (Some(cluster), Some(delivery)) => {
                let replication = Replication {
                    subscriptions: cluster.subscriptions().clone(),
                    outbox: cluster.outbox().clone(),
                    delivers: delivery.flag(),
                };
                Webhooks::start_replicated(
                    store.clone(),
                    config.webhooks,
                    Arc::clone(&clock),
                    Arc::clone(&quotas),
                    replication,
                )
                .await?
            }
            _ => {
                Webhooks::start(
                    store.clone(),
                    config.webhooks,
                    Arc::clone(&clock),
                    Arc::clone(&quotas),
                )
                .await?
            }
        });
        let live = Arc::new(Live::default());
        let monitor = cluster
            .as_ref()
            .map(|c| Singleton::spawn(c.leases().clone(), "results-monitor"));
        let board = Arc::new(Board::default());
        figures::spawn(
            Cadence {
                monitor: config.monitor_interval,
                timeline: config.timeline_interval,
                stats: Duration::from_secs(1),
            },
            Consumers {
                board: Arc::clone(&board),
                registry: Arc::clone(&registry),
                aggregates: Arc::clone(&aggregates),
                live: Arc::clone(&live),
                store: store.clone(),
                clock: Arc::clone(&clock),
                max_stats_bytes: config.max_stats_message_bytes,
                system: Principal::system(Arc::clone(&config.project)),
                monitors: match &monitor {
                    Some(singleton) => singleton.flag(),
                    None => Arc::new(AtomicBool::new(true)),
                },
            },
        );
        live::spawn(Arc::clone(&live), store.clone());
        let alerts = Arc::new(
            Alerts::start(
                store.clone(),
                Sources {
                    figures: board,
                    ingest: Arc::clone(mailbox.stats()),
                    webhooks: Arc::clone(&webhooks),
                    signals: Arc::default(),
                    live: Arc::clone(&live),
                },
                Arc::clone(&clock),
                // Rules are evaluated where webhooks are delivered: the
                // webhook rules read that node's delivery statistics.
                cluster
                    .as_ref()
                    .zip(delivery.as_ref())
                    .map(|(c, d)| alerts::Replication {
                        rules: c.alert_rules().clone(),
                        alerts: c.alerts().clone(),
                        evaluates: d.flag(),
                    }),
            )
            .await?,
        );
        let credentials = Credentials::start(
            store.clone(),
            Arc::clone(&clock),
            config.max_keys,
            cluster.as_ref().map(|c| c.api_keys().clone()),
        )
        .await?;
        Ok(Self {
            experiments,
            intake,
            results,
            webhooks,
            alerts,
            live,
            credentials,
            audit: Arc::new(AuditLog::new(store.clone())),
            quotas,
            store,
            owner,
            singletons: monitor.into_iter().chain(delivery).collect(),
        })
    }

    /// Experiments, their lifecycle and assignment.
    pub fn experiments(&self) -> &Arc<Experiments> {
        &self.experiments
    }

    /// Accepting client events and exporting stored ones.
    pub fn intake(&self) -> &Arc<Intake> {
        &self.intake
    }

    /// Results, timelines, aggregates and analytics.
    pub fn results(&self) -> &Arc<Results> {
        &self.results
    }

    /// Webhook subscriptions and their deliveries.
    pub fn webhooks(&self) -> &Arc<Webhooks> {
        &self.webhooks
    }

    /// Alert rules and alerts.
    pub fn alerts(&self) -> &Arc<Alerts> {
        &self.alerts
    }

    /// The live feed.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// API keys issued through the API.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// The audit log.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// The project's quotas.
    pub fn quotas(&self) -> &Arc<Quotas> {
        &self.quotas
    }

    /// Publishes every service's figures, and the store's and the
    /// process's, to the metrics recorder. Call just before rendering a
    /// scrape.
    pub async fn export_metrics(&self) {
        self.experiments.export_metrics();
        self.intake.export_metrics();
        self.webhooks.export_metrics();
        self.live.export_metrics();
        let store = self.store.clone();
        if let Ok(health) = blocking(move || store.health()).await {
            crate::metrics::export_store(health);
        }
        crate::metrics::export_process();
    }

    /// The store.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Whether this node is one of a cluster.
    pub fn is_clustered(&self) -> bool {
        self.owner.is_some()
    }

    /// Whether the engine can serve: the writer and the catalog run.
    pub fn is_ready(&self) -> bool {
        self.intake.is_alive() && self.experiments.is_alive()
    }

    /// Drains the writers and flushes the WAL. Call after the HTTP server
    /// has stopped taking requests.
    pub async fn shutdown(self: Arc<Self>) -> Result<()> {
        // Cluster mode: finish folding and hand the partitions over first.
        if let Some(owner) = &self.owner {
            owner.stop().await;
        }
        for singleton in &self.singletons {
            singleton.stop().await;
        }
        blocking(move || {
            self.intake.close();
            self.store.flush_wal()
        })
        .await
    }
}

/// Opens RocksDB with the expiry the configuration asks for.
async fn open_store(config: &EngineConfig, clock: Arc<dyn Clock>) -> Result<Store> {
    let path = config.storage_path.clone();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let options = StoreOptions {
        dedup_window_ms: ms(config.ingest.dedup_window),
        retention_ms: config.retention.map(|r| ms(r.by_timestamp())),
        cache_bytes: config.cache_bytes,
        audit_retention_ms: ms(config.audit_retention),
    };
    tracing::info!(path = %path.display(), "opening the store");
    blocking(move || Store::open_with_clock(&path, options, clock)).await
}

/// The extra sinks the configuration names.
fn sinks(config: &EngineConfig, store: &Store) -> Result<Vec<SinkWorker>> {
    let mut sinks = Vec::new();
    if let Some(path) = &config.jsonl_path {
        let sink = JsonlSink::open(path)
            .map_err(|e| Error::invalid("ingest.jsonl_path", format!("{}: {e}", path.display())))?;
        sinks.push(
            SinkWorker::spawn(Box::new(sink), store.clone(), 64).map_err(|_| Error::Unavailable)?,
        );
    }
    Ok(sinks)
}
