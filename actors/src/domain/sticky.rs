//! A unit's first exposure to an experiment: what makes its assignment
//! sticky (`sticky_assignments` column family).

use serde::{Deserialize, Serialize};

use crate::domain::ExperimentKey;

/// A unit's first exposure to an experiment, as persisted (and, in cluster
/// mode, carried on the event log with the exposure that makes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickyAssignment {
    /// The experiment.
    pub experiment: ExperimentKey,
    /// The unit.
    pub unit: Box<str>,
    /// Key of the variant the unit was served.
    pub variant: Box<str>,
    /// When, in milliseconds since the Unix epoch.
    pub first_exposed_ms: i64,
    /// The variant is not the one the hash gives the unit (a client
    /// reported it), so the experiment's assignments must look their units
    /// up from now on.
    pub diverges: bool,
}
