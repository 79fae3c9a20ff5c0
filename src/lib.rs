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

pub mod agent;
pub mod cluster;
pub mod coord;
pub mod copy;
pub mod demo;
pub mod dirents;
pub mod error;
pub mod exit;
pub mod filter;
pub mod io;
pub mod job;
pub mod latency;
pub mod manifest;
pub mod meta;
pub mod net;
pub mod out;
pub mod partset;
pub mod pathser;
pub mod queue;
pub mod reactor;
pub mod s3;
pub mod spec;
pub mod stats;
pub mod temp;
pub mod verify;

pub use error::{Error, ErrorKind};
pub use exit::Exit;
pub use job::{Job, JobHandle};
pub use spec::{CopySpec, FsyncMode, IoMode};
pub use stats::Report;

/// Runs one copy job to the end. `Err`: bad input, nothing written. `Ok(report)`: see
/// `report.ok()`; everything counted as copied is durable.
pub fn copy(spec: CopySpec) -> Result<Report, Error> {
    copy::run(spec)
}
