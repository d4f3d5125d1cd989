//! The abacus engine.
//!
//! Everything that is not HTTP lives here, in layers that only look down:
//!
//! - [`domain`]: plain data and pure functions, and every stored record;
//! - [`storage`]: RocksDB, depending on the domain only; [`stats`]: the
//!   statistics, pure; [`room`]: waiting for room in a full queue;
//! - the services: [`experiments`] (the registry, one actor per
//!   experiment, assignment, stickiness, exposures), [`ingest`] (accepting
//!   events, the mailbox, the writer, sinks), [`results`], [`webhooks`],
//!   [`alerts`], [`live`];
//! - [`Engine`]: builds the services and hands the HTTP layer a handle to
//!   each. It holds no policy.
//!
//! Each experiment is owned by one
//! [`ExperimentActor`](experiments::actor::ExperimentActor), the single
//! writer of its record; it publishes an immutable snapshot that the
//! assignment hot path reads without a lock or a mailbox round-trip.

pub mod alerts;
pub mod audit;
pub mod clock;
pub mod cluster;
pub mod credentials;
pub mod domain;
mod engine;
mod error;
pub mod experiments;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod projects;
pub mod quotas;
pub mod results;
pub mod room;
pub mod stats;
pub mod storage;
pub mod webhooks;

pub use engine::{Engine, EngineConfig};
pub use error::{Error, Result};
