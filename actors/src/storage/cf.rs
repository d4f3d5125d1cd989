//! Column families. Names on disk never change.

/// A RocksDB column family, named for what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// `schema_version` → `[u8]`. Layout version of the whole database.
    Meta,
    /// experiment key (UTF-8) → `[v1][JSON Experiment]`.
    Experiments,
    /// [`keys::sticky`](super::keys::sticky) → `[v1][first_exposed_ms: u64 BE][variant key UTF-8]`.
    /// A unit's first exposure; later assignments return the same variant.
    Sticky,
}

impl Cf {
    /// Every family, opened at start.
    pub const ALL: [Cf; 3] = [Cf::Meta, Cf::Experiments, Cf::Sticky];

    /// The family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Experiments => "experiments",
            Cf::Sticky => "sticky_assignments",
        }
    }
}
