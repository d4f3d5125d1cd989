//! A unit's first exposure to an experiment: what makes its assignment
//! sticky (`sticky_assignments` column family).

use crate::domain::ExperimentKey;

/// A unit's first exposure to an experiment, as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
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
