//! Cluster map and placement: where every object belongs (topology, placement v1, plans).

pub mod disksync;
pub mod identity;
pub mod migrate;
pub mod placement;
pub mod plan;
pub mod reach;
pub mod rebalance;
pub mod registry;
pub(crate) mod spill;
pub mod store;
pub mod topology;

pub use placement::{PARTITIONS, PartitionTable, Placement, Strategy, partition_of};
pub use topology::{SetState, Topology, TopologyError};
