//! Topology v2: v1 plus a `node` on every disk (the agent that serves it). Placement ignores
//! it; the cluster requires it.

use crate::cluster::Topology;

pub fn check_v2(t: &Topology) -> Result<(), String> {
    for (pi, pool) in t.pools.iter().enumerate() {
        for (si, set) in pool.sets.iter().enumerate() {
            for (di, d) in set.disks.iter().enumerate() {
                let f = format!("pools[{pi}].sets[{si}].disks[{di}].node");
                match &d.node {
                    None => {
                        return Err(format!(
                            "{f}: missing (topology v2 names the node of every disk)"
                        ));
                    }
                    Some(n) => super::keys::check_name(&f, n)?,
                }
            }
        }
    }
    Ok(())
}
