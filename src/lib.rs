//! ferry: a data mover for Linux storage nodes.
//!
//! The engine copies trees with thread-per-core reactors, each pinned to a CPU with its own
//! io_uring and registered buffer arena; data goes read -> write from the same buffer, and a file
//! only gets its final name once it is durable.
//!
//! ```no_run
//! let mut spec = ferry::CopySpec::new(vec!["/data/src".into()], "/data/dst".into());
//! spec.threads = 2;
//! let report = ferry::copy(spec).expect("bad input");
//! assert!(report.ok(), "{:?}", report.errors);
//! println!("{}", report.summary());
//! ```

// The engine's pieces an embedder names: jobs, their specs, reports and errors, trees and
// clusters. The modules stay public for the `ferry` binary, the tests and the benches; the
// ones marked hidden are the engine's insides, not a surface to build on.
pub mod agent;
pub mod cluster;
pub mod cluster_demo;
pub mod coord;
pub mod copy;
#[doc(hidden)]
pub mod demo;
#[doc(hidden)]
pub mod dirents;
pub mod error;
pub mod exit;
pub mod filter;
#[doc(hidden)]
pub mod io;
pub mod job;
#[doc(hidden)]
pub mod latency;
pub mod manifest;
#[doc(hidden)]
pub mod meta;
pub mod net;
#[doc(hidden)]
pub mod out;
#[doc(hidden)]
pub mod partset;
#[doc(hidden)]
pub mod pathser;
#[doc(hidden)]
pub mod queue;
#[doc(hidden)]
pub mod reactor;
pub mod s3;
pub mod spec;
pub mod stats;
#[doc(hidden)]
pub mod temp;
pub mod verify;

pub use cluster::Topology;
pub use cluster::store::Cluster;
pub use coord::state::JobState;
pub use error::{Error, ErrorKind, Target};
pub use exit::Exit;
pub use job::{Control, Event, Job, JobHandle, Progress};
pub use spec::{CopySpec, FsyncMode, IoMode, Preserve, VerifyMode};
pub use stats::Report;
pub use verify::{VerifyReport, verify_manifest, verify_trees};

/// Runs one copy job to the end. `Err`: bad input, nothing written. `Ok(report)`: see
/// `report.ok()`; everything counted as copied is durable.
pub fn copy(spec: CopySpec) -> Result<Report, Error> {
    copy::run(spec)
}
