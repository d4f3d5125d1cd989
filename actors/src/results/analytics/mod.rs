//! Click analytics: CTR, clicked ranks, response times, engagement, one
//! unit's summary and the variant comparison, computed from the buckets
//! the store keeps ([`Store::analytics`](crate::storage::Store::analytics)).

mod report;

pub use report::{
    ctr, total, ActionDwell, CompareReport, CtrReport, Distribution, EngagementReport, RankReport,
    UnitSummary, VariantCtr, VariantSummary,
};
