//! The cluster agent: membership, election, assignment and the runner of cluster jobs, all
//! coordinated through a `ClusterStore` (etcd in production, an in-memory fake in tests).

pub mod conns;
pub mod etcd;
pub mod http;
pub mod store;
pub mod topo;

pub use store::{ClusterStore, Cmp, Kv, MemStore, Op, Snapshot, StoreError};
pub mod admin;
pub mod assign;
pub mod ccopy;
pub mod cli;
pub mod cluster_cli;
pub mod config;
pub mod follow;
pub mod handover;
pub mod keys;
pub mod leader;
pub mod lost;
pub mod member;
pub mod memory;
pub mod node;
pub mod objects;
pub mod pace;
pub mod peer;
pub mod plan;
pub mod rebalance;
pub mod rebalance_state;
pub mod runner;
pub mod state;
pub mod sweep;
pub mod view;
