//! Following the assignment: newer epochs only; partitions released before the ack that lets
//! the leader hand them on; the agent's state follows what it sees.

use super::node::Agent;
use super::plan::{Assignment, Change, classify};
use super::state::AgentState;
use super::store::Op;
use serde_json::json;

impl Agent {
    pub(super) fn follow(&mut self) {
        let current = self.view.assignment(&self.keys);
        if let Some((rev, a)) = &current
            && *rev != self.applied.0
        {
            self.apply(*rev, a);
        }
        let target = self.observed(current.as_ref().map(|(_, a)| a));
        if target != self.state() {
            let why = match target {
                AgentState::Scaling => "a member joined",
                AgentState::Emergency => "a member's lease expired",
                AgentState::Rebalancing => "hand-over in progress",
                _ => "assignment settled",
            };
            self.go(target, why);
        }
    }

    fn apply(&mut self, rev: i64, a: &Assignment) {
        if a.epoch < self.max_epoch {
            self.event(
                "ignored_assignment",
                json!({"epoch": a.epoch, "newest_epoch": self.max_epoch}),
            );
            self.applied.0 = rev;
            return;
        }
        self.max_epoch = a.epoch;
        let mut owned = vec![false; crate::cluster::PARTITIONS];
        for p in a.owned_by(&self.node) {
            owned[p as usize] = true;
        }
        let (gained, lost) = owned
            .iter()
            .zip(&self.owned)
            .fold((0, 0), |(g, l), (n, o)| {
                (g + (*n && !*o) as usize, l + (!*n && *o) as usize)
            });
        self.applied = (rev, a.seq);
        self.owned = owned;
        let mut w = std::mem::replace(&mut self.work, Box::new(super::node::Idle));
        w.set_owned(&self.ctx(), &self.owned);
        self.work = w;
        let ack = Op::Put {
            key: self.keys.ack(&self.node),
            value: a.seq.to_string().into_bytes(),
            lease: self.lease,
        };
        let acked = self.store.txn(&[], &[ack]).is_ok();
        self.event(
            "owned",
            json!({"epoch": a.epoch, "seq": a.seq, "owned": self.owned_count(),
                "gained": gained, "released": lost, "acked": acked}),
        );
    }

    /// The state the cluster as seen puts this agent in.
    fn observed(&self, a: Option<&Assignment>) -> AgentState {
        let Some(a) = a else {
            return AgentState::WaitingAssignment;
        };
        if a.next.is_some() {
            return AgentState::Rebalancing;
        }
        let member = a.members.iter().any(|m| m == &self.node);
        match classify(&self.view.live(&self.keys), Some(a)) {
            _ if !member && self.state() == AgentState::WaitingAssignment => {
                AgentState::WaitingAssignment
            }
            Some(Change::Emergency) | Some(Change::Cold) => AgentState::Emergency,
            Some(Change::Scale) => AgentState::Scaling,
            None if member => AgentState::Stable,
            None => AgentState::Scaling,
        }
    }
}
