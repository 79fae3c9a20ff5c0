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
        if self.holds(a) {
            for p in a.owned_by(&self.node) {
                owned[p as usize] = true;
            }
        }
        let (gained, lost) = owned
            .iter()
            .zip(&self.owned)
            .fold((0, 0), |(g, l), (n, o)| {
                (g + (*n && !*o) as usize, l + (!*n && *o) as usize)
            });
        self.applied = (rev, a.seq);
        self.owned = owned;
        // The new set may be worked on from `start_ms`; what was released is no longer worked on
        // from `released_ms` (before the ack that lets the leader hand it on).
        let start_ms = super::state::now_ms();
        let mut w = std::mem::replace(&mut self.work, Box::new(super::node::Idle));
        w.set_owned(&self.ctx(), &self.owned);
        self.work = w;
        let released_ms = super::state::now_ms();
        let ack = Op::Put {
            key: self.keys.ack(&self.node),
            value: a.seq.to_string().into_bytes(),
            lease: self.lease,
        };
        let acked = self.store.txn(&[], &[ack]).is_ok();
        self.event(
            "owned",
            json!({"epoch": a.epoch, "seq": a.seq, "rev": rev, "owned": self.owned_count(),
                "gained": gained, "released": lost, "acked": acked,
                "start_ms": start_ms, "released_ms": released_ms}),
        );
    }

    /// Whether `a` was written for this run of the agent (an earlier run's share is not ours:
    /// the leader may be giving it away without a release).
    fn holds(&self, a: &Assignment) -> bool {
        a.incarnation(&self.node) == Some(self.incarnation)
    }

    /// The state the cluster as seen puts this agent in.
    fn observed(&self, a: Option<&Assignment>) -> AgentState {
        let Some(a) = a else {
            return AgentState::WaitingAssignment;
        };
        if a.next.is_some() {
            return AgentState::Rebalancing;
        }
        let member = self.holds(a);
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

#[cfg(test)]
mod tests {
    use super::super::config::AgentConfig;
    use super::super::keys::Keys;
    use super::super::node::Agent;
    use super::super::plan::Assignment;
    use super::super::state::AgentState;
    use super::super::store::{ClusterStore, MemStore};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_restarted_agent_holds_nothing_of_its_earlier_runs_assignment() {
        let store = Arc::new(MemStore::default());
        let keys = Keys::new("t").unwrap();
        let cfg = AgentConfig::default();
        let mut ag = Agent::new(
            store.clone(),
            Keys::new("t").unwrap(),
            "c",
            "x:1",
            cfg,
            "i".into(),
        )
        .unwrap();
        ag.go(AgentState::ClaimingId, "test");
        ag.claim(&AtomicBool::new(false)).unwrap();
        ag.go(AgentState::WaitingAssignment, "test");
        let me = ag.incarnation;
        // written for c's earlier run: the leader may be giving its share away unreleased
        let a = Assignment {
            epoch: 1,
            seq: 1,
            strategy: "hash".into(),
            members: vec!["a".into(), "b".into(), "c".into()],
            incarnations: vec![1, 2, me - 1],
            owners: (0..65536).map(|p| (p % 3) as u16).collect(),
            next: None,
        };
        store.put(&keys.assignment(), &a.to_json(), 0).unwrap();
        ag.view.refresh(&*ag.store, &keys.root).unwrap();
        ag.follow();
        assert_eq!(ag.owned_count(), 0);
        assert_eq!(ag.state(), AgentState::WaitingAssignment);
        let ack = store.get(&keys.ack("c")).unwrap().expect("acked");
        assert_eq!(
            ack.value, b"1",
            "holding nothing, it has released everything"
        );
        // written for this run: its share is held
        let b = Assignment {
            seq: 2,
            incarnations: vec![1, 2, me],
            ..a
        };
        store.put(&keys.assignment(), &b.to_json(), 0).unwrap();
        ag.view.refresh(&*ag.store, &keys.root).unwrap();
        ag.follow();
        assert_eq!(ag.owned_count(), 65536 / 3);
    }
}
