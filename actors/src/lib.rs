//! The abacus engine.
//!
//! Everything that is not HTTP lives here: the domain (experiments, their
//! lifecycle and validation), the assignment algorithm, the RocksDB store and
//! the actors that own state. Each experiment is owned by one
//! [`ExperimentActor`](experiment::ExperimentActor), the single writer of its
//! record; it publishes an immutable snapshot that the assignment hot path
//! reads without a lock or a mailbox round-trip. The [`Engine`] is the facade
//! the HTTP layer calls.

pub mod aggregator;
pub mod alerts;
pub mod analytics;
pub mod assignment;
pub mod catalog;
pub mod clock;
pub mod domain;
mod engine;
mod error;
pub mod experiment;
pub mod ingest;
pub mod live;
pub mod metrics;
mod monitor;
pub mod results;
pub mod retention;
pub mod stats;
pub mod sticky;
pub mod storage;
pub mod timeline;
pub mod webhooks;

pub use engine::{Assignment, Engine, EngineConfig, Page, Timeline, TimelinePoint};
pub use error::{Error, Result};
