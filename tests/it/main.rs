//! Black-box tests: each starts the real `abacus` binary on a free loopback
//! port with a temporary data directory and talks HTTP to it.

// Test helpers fail loudly by design.
#![allow(clippy::unwrap_used)]

mod common;

mod aggregates;
mod alerts;
mod aliases;
mod analytics;
mod assignment;
mod audit;
mod auth;
mod bandits;
mod client;
mod cluster;
mod config;
mod conformance;
mod dashboard;
mod durability;
mod errors;
mod events;
mod experiments;
mod growthbook;
mod holdouts;
mod hostile;
mod jwt;
mod keys;
mod limits;
mod metrics;
mod models;
mod openapi;
mod openfeature;
mod phases;
mod projects;
mod quotas;
mod restart;
mod results;
mod retention;
mod scale;
mod sequential;
mod sinks;
mod stream;
mod webhooks;
