//! The domain: identifiers, experiments, their lifecycle and validation,
//! events and their aggregates.
//! Plain data and pure functions, tested without actors or storage.

mod aggregate;
mod event;
mod experiment;
mod happening;
mod ids;
mod lifecycle;

pub use aggregate::{
    ExperimentAggregates, Exposure, MeasureAggregates, UnitMeasure, VariantAggregates,
};
pub use event::{unix_ms, Event, EventIn, EventType};
pub use experiment::{
    Experiment, ExperimentIn, ExperimentPatch, Guardrail, GuardrailStop, Layer, Metric, MetricKind,
    Variant, MAX_VARIANTS,
};
pub use happening::{DomainEvent, DomainEventKind};
pub use ids::{ExperimentKey, MetricKey, UnitId, VariantKey};
pub use lifecycle::{Action, Status};
