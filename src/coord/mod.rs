//! Job control: the state machine and the throttle (the coordinator's tools).

pub mod checkpoint;
pub mod ctl;
pub mod durable;
pub mod jobs;
pub mod metrics;
pub mod state;
pub mod stop;
pub mod throttle;
