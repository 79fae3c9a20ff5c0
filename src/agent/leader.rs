//! Election and the leader's round. Leadership is the lease-bound `leader` key won by a
//! create-revision-0 compare; its create revision is the epoch. Every leader write compares
//! that revision (and the assignment's), so an ex-leader that wakes up changes nothing.

use super::node::Agent;
use super::state::AgentState;
use super::store::{Cmp, Op};
use serde_json::json;
use std::time::Instant;

impl Agent {
    /// Tries to become leader when nobody is; notices when someone else is.
    pub(super) fn campaign(&mut self) {
        let key = self.keys.leader();
        if self.view.get(&key).is_none() {
            let put = Op::Put {
                key: key.clone(),
                value: json!({"node": self.node}).to_string().into_bytes(),
                lease: self.lease,
            };
            match self.store.txn(&[Cmp::CreateRev(key.clone(), 0)], &[put]) {
                Ok((true, rev)) => {
                    self.epoch = Some(rev);
                    self.planner = super::plan::Planner::new(
                        self.cfg.windows,
                        super::assign::by_name(&self.cfg.strategy).expect("checked at start"),
                    );
                    self.event("elected", json!({"epoch": rev}));
                }
                Ok((false, _)) => {}
                Err(_) => return,
            }
        }
        if self.state() == AgentState::Election {
            self.go(AgentState::WaitingAssignment, "leader known");
        }
    }

    /// The leader's round: write the assignment the planner asks for, fenced by the epoch.
    pub(super) fn lead(&mut self) {
        let Some(epoch) = self.epoch else { return };
        let key = self.keys.leader();
        if self.view.get(&key).map(|kv| kv.create_rev) != Some(epoch) {
            self.epoch = None;
            self.event(
                "stepped_down",
                json!({"epoch": epoch, "why": "leader key changed"}),
            );
            return;
        }
        let live = self.view.live(&self.keys);
        let acks = self.view.acks(&self.keys);
        let current = self.view.assignment(&self.keys);
        let view = super::plan::View {
            live: &live,
            current: current.as_ref().map(|(_, a)| a),
            acks: &acks,
        };
        let Some((a, why)) = self.planner.step(Instant::now(), &view, epoch) else {
            return;
        };
        let cur_rev = current.as_ref().map(|(r, _)| *r).unwrap_or(0);
        match self.write_assignment(epoch, cur_rev, a.to_json()) {
            Ok(true) => self.event(
                "assigned",
                json!({"epoch": epoch, "seq": a.seq, "members": a.members, "why": why,
                    "handover": a.next.is_some()}),
            ),
            Ok(false) => {
                self.event("write_rejected", json!({"epoch": epoch, "seq": a.seq}));
            }
            Err(_) => {}
        }
    }

    /// The fenced write: our leader key still has our epoch, the assignment is the one we read.
    pub fn write_assignment(
        &self,
        epoch: i64,
        cur_rev: i64,
        value: Vec<u8>,
    ) -> Result<bool, super::store::StoreError> {
        let cmps = [
            Cmp::CreateRev(self.keys.leader(), epoch),
            Cmp::ModRev(self.keys.assignment(), cur_rev),
        ];
        let put = Op::Put {
            key: self.keys.assignment(),
            value,
            lease: 0,
        };
        self.store.txn(&cmps, &[put]).map(|(ok, _)| ok)
    }
}
