//! The agent's settings: defaults from the issue, overridable by `--config FILE` (JSON).

use super::plan::Windows;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Lease TTL in seconds; keepalive every TTL/3.
    pub ttl_secs: i64,
    pub windows: Windows,
    /// Assignment strategy: hash, round-robin, weighted.
    pub strategy: String,
    /// This member's weight (the weighted strategy).
    pub weight: f64,
    /// How often the agent reads the cluster state from etcd.
    pub poll_ms: u64,
    /// Deadline of one etcd request.
    pub request_timeout_ms: u64,
    /// Per-partition progress is written at most this often.
    pub progress_interval_ms: u64,
    /// The admin API's bearer token [default: <state-dir>/admin.token, made on first start].
    pub token_file: Option<PathBuf>,
    /// Reactor threads of cluster copy jobs (0: online CPUs).
    pub copy_threads: usize,
    /// How long a node removed from the topology must be without a member key (no agent of
    /// it running) before its part of the rebalance is marked lost (`agent::lost`): its
    /// disks count as gone. Longer than a reboot, so a removed node that restarts moves its
    /// objects off.
    pub lost_after_secs: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            ttl_secs: 10,
            windows: Windows::default(),
            strategy: "hash".into(),
            weight: 1.0,
            poll_ms: 200,
            request_timeout_ms: 2000,
            progress_interval_ms: 5000,
            token_file: None,
            copy_threads: 0,
            lost_after_secs: 300,
        }
    }
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("--config '{}': read: {e}", path.display()))?;
        let de = &mut serde_json::Deserializer::from_slice(&text);
        let c: AgentConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| format!("--config '{}': {e}", path.display()))?;
        c.check()
            .map_err(|m| format!("--config '{}': {m}", path.display()))?;
        Ok(c)
    }

    pub fn check(&self) -> Result<(), String> {
        if !(1..=3600).contains(&self.ttl_secs) {
            return Err(format!("ttl_secs {}: use 1..3600", self.ttl_secs));
        }
        if !(10..=5000).contains(&self.poll_ms) {
            return Err(format!("poll_ms {}: use 10..5000", self.poll_ms));
        }
        if !(1..=86_400).contains(&self.lost_after_secs) {
            return Err(format!(
                "lost_after_secs {}: use 1..86400",
                self.lost_after_secs
            ));
        }
        if !(self.weight > 0.0 && self.weight.is_finite()) {
            return Err(format!("weight {}: must be > 0", self.weight));
        }
        super::assign::by_name(&self.strategy).map(|_| ())
    }
}
