//! Membership: the node id claimed under a lease, renewed every TTL/3; a live id held by
//! another agent is refused; a lost lease (the agent stalled past its TTL) drops everything
//! and claims the id again. A node marked lost (`agent::lost`) is refused once its id is
//! claimed: its disks are quarantined until an operator clears the mark.

use super::node::Agent;
use super::state::AgentState;
use super::store::{Cmp, Op};
use super::view::MemberInfo;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

impl Agent {
    /// Claims `members/<node>`; Err: another live agent holds it (or we were stopped).
    pub(super) fn claim(&mut self, stop: &AtomicBool) -> Result<(), String> {
        let mut said = false;
        while !stop.load(Ordering::Relaxed) {
            match self.try_claim() {
                Ok(true) => {
                    self.lease_renewed = Instant::now();
                    self.go(AgentState::Election, "node id claimed");
                    return Ok(());
                }
                Ok(false) => continue,
                Err((m, true)) => {
                    if !said {
                        self.event(
                            "etcd_unreachable",
                            json!({"error": m, "while": "claiming id"}),
                        );
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err((m, false)) => return Err(m),
            }
        }
        Err("stopped before the node id was claimed".into())
    }

    /// Ok(true) claimed; Ok(false) try again; Err((message, retryable)).
    fn try_claim(&mut self) -> Result<bool, (String, bool)> {
        let st = &*self.store;
        let e = |e: super::store::StoreError| (e.to_string(), e.unavailable);
        let key = self.keys.member(&self.node);
        let lease = st.grant(self.cfg.ttl_secs).map_err(e)?;
        let value = serde_json::to_vec(&self.member_info()).expect("serializable");
        let put = Op::Put {
            key: key.clone(),
            value,
            lease,
        };
        let (ok, rev) = st
            .txn(&[Cmp::CreateRev(key.clone(), 0)], &[put])
            .map_err(e)?;
        if ok {
            // Our key exists now: no agent can mark this node lost any more; was it before?
            return match super::lost::quarantined(st, &self.keys, &self.node) {
                Ok(None) => {
                    self.lease = lease;
                    self.incarnation = rev;
                    Ok(true)
                }
                Ok(Some(m)) => {
                    let _ = st.revoke(lease);
                    self.event("quarantined", json!({"why": m}));
                    Err((m, false))
                }
                Err(x) => {
                    let _ = st.revoke(lease);
                    Err(e(x))
                }
            };
        }
        let _ = st.revoke(lease);
        let Some(kv) = st.get(&key).map_err(e)? else {
            return Ok(false);
        };
        let held: Option<MemberInfo> = serde_json::from_slice(&kv.value).ok();
        if let Some(h) = &held
            && h.instance == self.instance
        {
            // An earlier run of this agent (same state dir) died without revoking: its lease
            // is ours to end.
            st.revoke(kv.lease).map_err(e)?;
            self.event("reclaimed", json!({"lease": kv.lease}));
            return Ok(false);
        }
        let left = st.time_left(kv.lease).unwrap_or(-1);
        let (addr, pid) = held.map(|h| (h.addr, h.pid)).unwrap_or_default();
        Err((
            format!(
                "node id '{}' is already claimed by a live agent (address {addr}, pid {pid}, lease {left} s left): stop that agent or pick another --node",
                self.node
            ),
            false,
        ))
    }

    /// Renews the lease when a third of its TTL has passed; a lost lease starts over.
    pub(super) fn renew(&mut self, stop: &AtomicBool) -> Result<(), String> {
        let every = Duration::from_millis(self.cfg.ttl_secs as u64 * 1000 / 3);
        let mine = self.view.get(&self.keys.member(&self.node));
        let gone =
            self.state() != AgentState::ClaimingId && mine.is_none_or(|kv| kv.lease != self.lease);
        if !gone && self.lease_renewed.elapsed() < every {
            return Ok(());
        }
        let ttl = if gone {
            0
        } else {
            match self.store.keepalive(self.lease) {
                Ok(t) => t,
                Err(_) => return Ok(()), // etcd unreachable: keep state, retry next round
            }
        };
        if ttl > 0 {
            self.lease_renewed = Instant::now();
            return Ok(());
        }
        self.lease_lost();
        self.claim(stop)
    }

    /// The lease expired under us: we own nothing and lead nothing any more.
    fn lease_lost(&mut self) {
        self.work.stop();
        self.owned.iter_mut().for_each(|o| *o = false);
        self.applied = (0, 0);
        if let Some(epoch) = self.epoch.take() {
            self.event("stepped_down", json!({"epoch": epoch, "why": "lease lost"}));
        }
        self.lease = 0;
        self.status_written = None;
        self.go(AgentState::ClaimingId, "lease lost");
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::AgentConfig;
    use super::super::keys::Keys;
    use super::*;
    use crate::agent::store::{ClusterStore, MemStore};
    use std::sync::Arc;

    #[test]
    fn a_node_marked_lost_claims_its_id_and_refuses_to_run_keeping_no_key() {
        let store = Arc::new(MemStore::default());
        let keys = Keys::new("t").unwrap();
        let new = || {
            let cfg = AgentConfig::default();
            let k = Keys::new("t").unwrap();
            Agent::new(store.clone(), k, "b", "x:1", cfg, "i".into()).unwrap()
        };
        let mark = super::super::lost::Mark {
            generation: 3,
            by: "a".into(),
            why: "node b removed and not running".into(),
            at_ms: 1,
        };
        let v = serde_json::to_vec(&mark).unwrap();
        store.put(&keys.lost("b"), &v, 0).unwrap();
        let mut ag = new();
        ag.go(AgentState::ClaimingId, "test");
        let m = ag.claim(&AtomicBool::new(false)).unwrap_err();
        assert!(
            m.starts_with("node b was marked lost at generation 3 by node a")
                && m.contains("its disks are quarantined"),
            "{m}"
        );
        assert_eq!((ag.lease, ag.incarnation), (0, 0));
        assert!(
            store.get(&keys.member("b")).unwrap().is_none(),
            "no key kept"
        );
        // cleared: it runs
        store.txn(&[], &[Op::Delete(keys.lost("b"))]).unwrap();
        let mut ag = new();
        ag.go(AgentState::ClaimingId, "test");
        ag.claim(&AtomicBool::new(false)).unwrap();
        assert!(ag.incarnation > 0);
        assert!(store.get(&keys.member("b")).unwrap().is_some());
    }
}
