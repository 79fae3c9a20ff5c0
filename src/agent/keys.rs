//! The key layout under `/ferry/v1/<cluster>/`, in one place.

pub struct Keys {
    pub root: String,
}

/// A cluster or node name: 1-64 of [A-Za-z0-9._-] (it becomes part of etcd keys).
pub fn check_name(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && s != "."
        && s != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} '{s}': use 1-64 letters, digits, '.', '_' or '-'"
        ))
    }
}

impl Keys {
    pub fn new(cluster: &str) -> Result<Keys, String> {
        check_name("--cluster", cluster)?;
        Ok(Keys {
            root: format!("/ferry/v1/{cluster}/"),
        })
    }

    fn k(&self, rest: &str) -> String {
        format!("{}{rest}", self.root)
    }

    pub fn members(&self) -> String {
        self.k("members/")
    }
    pub fn member(&self, node: &str) -> String {
        self.k(&format!("members/{node}"))
    }
    pub fn leader(&self) -> String {
        self.k("leader")
    }
    pub fn assignment(&self) -> String {
        self.k("assignment")
    }
    pub fn acks(&self) -> String {
        self.k("acks/")
    }
    pub fn ack(&self, node: &str) -> String {
        self.k(&format!("acks/{node}"))
    }
    pub fn status(&self, node: &str) -> String {
        self.k(&format!("status/{node}"))
    }
    pub fn topology(&self) -> String {
        self.k("topology")
    }
    /// The topology `topology` replaced (reads fall back to its owners while objects move).
    pub fn previous_topology(&self) -> String {
        self.k("previous_topology")
    }
    /// The topology generation a node's object layer routes every request by (its S3
    /// endpoint and peer transport), once requests routed by an older one are done.
    pub fn served(&self, node: &str) -> String {
        self.k(&format!("served/{node}"))
    }
    pub fn control(&self) -> String {
        self.k("control")
    }
    pub fn jobs(&self) -> String {
        self.k("jobs/")
    }
    pub fn job(&self, id: &str) -> String {
        self.k(&format!("jobs/{id}/spec"))
    }
    pub fn progress(&self, id: &str, node: &str) -> String {
        self.k(&format!("jobs/{id}/progress/{node}"))
    }
    pub fn progress_prefix(&self, id: &str) -> String {
        self.k(&format!("jobs/{id}/progress/"))
    }
    /// Rebalance jobs, one per topology generation (zero-padded: key order is number order).
    pub fn rebalances(&self) -> String {
        self.k("rebalance/")
    }
    pub fn rebalance(&self, generation: u64) -> String {
        self.k(&format!("rebalance/{generation:020}/spec"))
    }
    pub fn rebalance_progress(&self, generation: u64, node: &str) -> String {
        self.k(&format!("rebalance/{generation:020}/progress/{node}"))
    }
    /// A node whose part of a rebalance was marked lost (`agent::lost`): its agent refuses to
    /// run (its disks are quarantined) until an operator deletes this key
    /// (`ferry cluster clear-lost NODE`).
    pub fn lost(&self, node: &str) -> String {
        self.k(&format!("lost/{node}"))
    }
    pub fn rebalance_progress_prefix(&self, generation: u64) -> String {
        self.k(&format!("rebalance/{generation:020}/progress/"))
    }
}
