//! The agent's copy of the cluster's keys: each round reads the key list (revisions only) and
//! fetches just the values that changed, so a 65,536-partition assignment is read once per
//! change, not once per round. Level-triggered: a lost round is made up by the next.

use super::assign::Member;
use super::keys::Keys;
use super::plan::Assignment;
use super::store::{ClusterStore, Kv, StoreResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// What an agent stores at `members/<node>` (bound to its lease).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberInfo {
    pub node: String,
    pub addr: String,
    pub weight: f64,
    pub pid: u32,
    /// Random per state dir: tells a restart of the same agent from a second agent.
    pub instance: String,
    pub started_ms: u64,
    /// Where the agent serves the peer transport (`--peer-listen`), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// `control`: pause and rates, watched by every agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Control {
    #[serde(default)]
    pub paused: bool,
    /// Bytes per second per agent (0: unlimited).
    #[serde(default)]
    pub rate: u64,
    /// File operations per second per agent (0: unlimited).
    #[serde(default)]
    pub ops: u64,
}

#[derive(Default)]
pub struct View {
    pub kvs: BTreeMap<String, Kv>,
    pub revision: i64,
    /// The parsed assignment and the mod revision it was read at.
    assignment: Option<(i64, Assignment)>,
}

impl View {
    pub fn refresh(&mut self, store: &dyn ClusterStore, root: &str) -> StoreResult<()> {
        let snap = store.range(root, true)?;
        let mut next = BTreeMap::new();
        for k in snap.kvs {
            match self.kvs.remove(&k.key) {
                Some(old) if old.mod_rev == k.mod_rev => {
                    next.insert(k.key.clone(), old);
                }
                _ => {
                    if let Some(full) = store.get(&k.key)? {
                        next.insert(k.key.clone(), full);
                    }
                }
            }
        }
        self.kvs = next;
        self.revision = snap.revision;
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&Kv> {
        self.kvs.get(key)
    }

    pub fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Kv> + 'a {
        self.kvs
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
    }

    pub fn members(&self, keys: &Keys) -> Vec<(MemberInfo, Kv)> {
        let mut v: Vec<(MemberInfo, Kv)> = self
            .under(&keys.members())
            .filter_map(|kv| Some((serde_json::from_slice(&kv.value).ok()?, kv.clone())))
            .collect();
        v.sort_by(|a, b| a.0.node.cmp(&b.0.node));
        v
    }

    pub fn live(&self, keys: &Keys) -> Vec<Member> {
        self.members(keys)
            .into_iter()
            .map(|(m, kv)| Member {
                name: m.node,
                weight: m.weight,
                incarnation: kv.create_rev,
            })
            .collect()
    }

    pub fn acks(&self, keys: &Keys) -> HashMap<String, u64> {
        let p = keys.acks();
        self.under(&p)
            .filter_map(|kv| {
                let seq = std::str::from_utf8(&kv.value).ok()?.trim().parse().ok()?;
                Some((kv.key[p.len()..].to_string(), seq))
            })
            .collect()
    }

    /// The assignment and its mod revision (parsed once per change).
    pub fn assignment(&mut self, keys: &Keys) -> Option<(i64, Assignment)> {
        let kv = self.kvs.get(&keys.assignment())?;
        if self.assignment.as_ref().map(|(r, _)| *r) != Some(kv.mod_rev) {
            let a = Assignment::from_json(&kv.value).ok()?;
            self.assignment = Some((kv.mod_rev, a));
        }
        self.assignment.clone()
    }

    pub fn control(&self, keys: &Keys) -> Control {
        self.get(&keys.control())
            .and_then(|kv| serde_json::from_slice(&kv.value).ok())
            .unwrap_or_default()
    }
}
