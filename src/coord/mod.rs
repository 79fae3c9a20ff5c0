//! The coordinator's tools, below every job: the state machine and its events, the stop flags,
//! token buckets and the adaptive pace that sets them (with the disks' latency), the checkpoint
//! and journal, durable replace. The control socket and the metrics endpoint are front ends of
//! a job: they live in `job`.

pub mod background;
pub mod checkpoint;
pub mod diskstat;
pub mod durable;
pub mod group;
pub mod pace;
pub mod state;
pub mod stop;
pub mod throttle;
