//! `ferry cluster apply|topology|status|pause|resume|clear-lost|rate`: the cluster's shared state in
//! etcd, read and changed with compare-and-swap.

use super::etcd::EtcdStore;
use super::keys::Keys;
use super::plan::Assignment;
use super::store::{ClusterStore, Cmp, Op};
use super::view::{Control, MemberInfo};
use crate::Exit;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub cmd: ClusterCmd,
    /// The cluster's name.
    #[arg(long, value_name = "NAME", global = true)]
    pub cluster: Option<String>,
    /// etcd client URLs: http://HOST:PORT[,http://HOST:PORT...].
    #[arg(long, value_name = "URL[,URL...]", global = true)]
    pub etcd: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
    /// Store NEW.json (topology v2: every disk names its node) as the next generation, and
    /// start the rebalance to it.
    Apply {
        #[arg(value_name = "NEW.json")]
        file: PathBuf,
        /// Which objects move first: size (small first) or partition.
        #[arg(long, value_enum, default_value_t = crate::cluster::rebalance::Order::Size)]
        order: crate::cluster::rebalance::Order,
    },
    /// Print the current topology.
    Topology,
    /// Members, leader and epoch, generation, assignment and job progress.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Pause every agent's cluster jobs and the rebalance (within a second).
    Pause,
    /// Resume them.
    Resume,
    /// Clear the mark of a node whose part of a rebalance was marked lost (its agent refuses
    /// to run while it is there): only once its disks are wiped or taken away, as what they
    /// hold may be keys deleted or overwritten since.
    ClearLost {
        #[arg(value_name = "NODE")]
        node: String,
    },
    /// Bytes per second per agent (e.g. 200M; 0 = unlimited) and optionally file ops per second.
    Rate {
        #[arg(value_name = "RATE")]
        rate: String,
        #[arg(value_name = "OPS")]
        ops: Option<u64>,
    },
}

fn fail(m: impl std::fmt::Display) -> ExitCode {
    eprintln!("ferry cluster: {m}");
    Exit::Usage.into()
}

pub fn cluster(a: ClusterArgs) -> ExitCode {
    let (Some(name), Some(etcd)) = (&a.cluster, &a.etcd) else {
        return fail("--cluster NAME and --etcd URL are required");
    };
    let keys = match Keys::new(name) {
        Ok(k) => k,
        Err(m) => return fail(m),
    };
    let store = match EtcdStore::new(etcd, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(m) => return fail(format!("--etcd: {m}")),
    };
    let r = match a.cmd {
        ClusterCmd::Apply { file, order } => apply(&store, &keys, &file, order),
        ClusterCmd::Topology => topology(&store, &keys),
        ClusterCmd::Status { json } => status(&store, &keys, json),
        ClusterCmd::Pause => control(&store, &keys, |c| c.paused = true),
        ClusterCmd::Resume => control(&store, &keys, |c| c.paused = false),
        ClusterCmd::ClearLost { node } => clear_lost(&store, &keys, &node),
        ClusterCmd::Rate { rate, ops } => match crate::job::ctl::parse_rate(&rate) {
            Ok(r) => control(&store, &keys, |c| {
                c.rate = r;
                c.ops = ops.unwrap_or(c.ops);
            }),
            Err(m) => Err(format!("rate '{rate}': {m}")),
        },
    };
    match r {
        Ok(()) => Exit::Ok.into(),
        Err(m) => fail(m),
    }
}

/// Deletes `lost/<node>` as read (a newer mark is left alone), saying which mark it was.
fn clear_lost(store: &dyn ClusterStore, keys: &Keys, node: &str) -> Result<(), String> {
    super::keys::check_name("NODE", node)?;
    let key = keys.lost(node);
    let read = |e: super::store::StoreError| format!("read {key}: {e}");
    let Some(kv) = store.get(&key).map_err(read)? else {
        return Err(format!("node {node} is not marked lost (no key {key})"));
    };
    let m: super::lost::Mark = serde_json::from_slice(&kv.value).unwrap_or_default();
    let c = [Cmp::ModRev(key.clone(), kv.mod_rev)];
    let (ok, _) = store
        .txn(&c, &[Op::Delete(key.clone())])
        .map_err(|e| format!("delete {key}: {e}"))?;
    if !ok {
        return Err(format!(
            "node {node} was marked lost again meanwhile: nothing cleared"
        ));
    }
    crate::outln!(
        "node {node}: the mark of generation {} (by node {}) is cleared; its agent may start",
        m.generation,
        m.by
    );
    Ok(())
}

fn apply(
    store: &dyn ClusterStore,
    keys: &Keys,
    file: &std::path::Path,
    order: crate::cluster::rebalance::Order,
) -> Result<(), String> {
    let t = crate::cluster::Topology::load(file).map_err(|e| e.to_string())?;
    super::topo::check_v2(&t).map_err(|m| format!("topology '{}': {m}", file.display()))?;
    let cur = store.get(&keys.topology()).map_err(|e| e.to_string())?;
    let cur_rev = cur.as_ref().map(|kv| kv.mod_rev).unwrap_or(0);
    let mut ops = Vec::new();
    if let Some(kv) = &cur {
        let old = crate::cluster::Topology::parse(&kv.value)
            .map_err(|(f, m)| format!("the stored topology ({}): {f}: {m}", keys.topology()))?;
        if t.generation <= old.generation {
            return Err(format!(
                "topology '{}': generation {} does not grow (the cluster is at {})",
                file.display(),
                t.generation,
                old.generation
            ));
        }
        crate::cluster::topology::check_across((&old, Path::new("the cluster's")), (&t, file))?;
        pending_bound(store, keys, &old, (&t, file))?;
        let spec = super::rebalance_state::Spec {
            generation: t.generation,
            from_generation: old.generation,
            order: order.name().into(),
            previous: old,
            topology: t.clone(),
            created_ms: super::state::now_ms(),
        };
        ops.push(Op::Put {
            key: keys.rebalance(t.generation),
            value: serde_json::to_vec(&spec).map_err(|e| e.to_string())?,
            lease: 0,
        });
    }
    let value = serde_json::to_vec(&t).map_err(|e| e.to_string())?;
    ops.push(Op::Put {
        key: keys.topology(),
        value,
        lease: 0,
    });
    if let Some(kv) = &cur {
        // The replaced generation too: agents' reads fall back to its owners.
        ops.push(Op::Put {
            key: keys.previous_topology(),
            value: kv.value.clone(),
            lease: 0,
        });
    }
    match store.txn(&[Cmp::ModRev(keys.topology(), cur_rev)], &ops) {
        Ok((true, _)) if ops.len() > 1 => {
            println!(
                "topology generation {} stored; rebalance to it started (ferry cluster status)",
                t.generation
            );
            Ok(())
        }
        Ok((true, _)) => {
            println!("topology generation {} stored", t.generation);
            Ok(())
        }
        Ok((false, _)) => {
            Err("the topology changed while applying (compare-and-swap failed); run again".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Refuses `new` if reads would then have to look through more than `MAX_GENERATIONS`
/// generations: the new one, `old`, and the older ones whose objects may still wait at
/// their owners (the rebalances after them not completed on every node).
fn pending_bound(
    store: &dyn ClusterStore,
    keys: &Keys,
    old: &crate::cluster::Topology,
    (new, file): (&crate::cluster::Topology, &Path),
) -> Result<(), String> {
    use crate::cluster::store::MAX_GENERATIONS;
    let older = super::rebalance_state::unsettled(store, keys, old.generation, MAX_GENERATIONS)?;
    if older.len() + 2 <= MAX_GENERATIONS {
        return Ok(());
    }
    let gens: Vec<String> = std::iter::once(old.generation)
        .chain(older.iter().map(|t| t.generation))
        .map(|g| g.to_string())
        .collect();
    Err(format!(
        "topology '{}': generation {} refused: the rebalance to generation {} is not completed \
         on every node, so objects may still wait at their owners under generations {}, and a \
         read looks through at most {MAX_GENERATIONS} generations; wait until `ferry cluster \
         status` shows that rebalance completed, then apply again",
        file.display(),
        new.generation,
        old.generation,
        gens.join(", ")
    ))
}

fn topology(store: &dyn ClusterStore, keys: &Keys) -> Result<(), String> {
    match store.get(&keys.topology()).map_err(|e| e.to_string())? {
        Some(kv) => {
            let v: Value = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
            crate::outln!("{}", serde_json::to_string_pretty(&v).expect("json"));
            Ok(())
        }
        None => Err(format!(
            "no topology stored for this cluster yet ({})",
            keys.topology()
        )),
    }
}

/// Read, change, compare-and-swap (retried on a concurrent change).
fn control(store: &dyn ClusterStore, keys: &Keys, f: impl Fn(&mut Control)) -> Result<(), String> {
    for _ in 0..5 {
        let cur = store.get(&keys.control()).map_err(|e| e.to_string())?;
        let rev = cur.as_ref().map(|kv| kv.mod_rev).unwrap_or(0);
        let mut c: Control = cur
            .and_then(|kv| serde_json::from_slice(&kv.value).ok())
            .unwrap_or_default();
        f(&mut c);
        let put = Op::Put {
            key: keys.control(),
            value: serde_json::to_vec(&c).expect("json"),
            lease: 0,
        };
        if store
            .txn(&[Cmp::ModRev(keys.control(), rev)], &[put])
            .map_err(|e| e.to_string())?
            .0
        {
            println!(
                "control: paused {}, rate {} B/s, ops {}/s",
                c.paused, c.rate, c.ops
            );
            return Ok(());
        }
    }
    Err("control kept changing under us; run again".into())
}

fn status(store: &dyn ClusterStore, keys: &Keys, as_json: bool) -> Result<(), String> {
    let doc = status_doc(store, keys)?;
    if as_json {
        crate::outln!("{doc}");
    } else {
        print_status(&doc);
    }
    Ok(())
}

/// Everything `cluster status` shows, as JSON.
pub fn status_doc(store: &dyn ClusterStore, keys: &Keys) -> Result<Value, String> {
    let snap = store.range(&keys.root, false).map_err(|e| e.to_string())?;
    let get = |k: &str| snap.kvs.iter().find(|kv| kv.key == k);
    let leader = get(&keys.leader()).map(|kv| {
        let v: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        json!({"node": v["node"], "epoch": kv.create_rev})
    });
    let a = get(&keys.assignment()).and_then(|kv| Assignment::from_json(&kv.value).ok());
    let mut members = Vec::new();
    for kv in snap
        .kvs
        .iter()
        .filter(|kv| kv.key.starts_with(&keys.members()))
    {
        let Ok(m) = serde_json::from_slice::<MemberInfo>(&kv.value) else {
            continue;
        };
        let st: Value = get(&keys.status(&m.node))
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .unwrap_or_default();
        let owned = a.as_ref().map(|a| a.owned_by(&m.node).len()).unwrap_or(0);
        members.push(
            json!({"node": m.node, "addr": m.addr, "state": st["state"], "owned": owned,
            "lease_left_s": store.time_left(kv.lease).unwrap_or(-1)}),
        );
    }
    let generation = get(&keys.topology())
        .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .map(|v| v["generation"].clone());
    let released = a.as_ref().map(|a| {
        a.owners
            .iter()
            .filter(|&&o| o == super::assign::NONE)
            .count()
    });
    let control: Control = get(&keys.control())
        .and_then(|kv| serde_json::from_slice(&kv.value).ok())
        .unwrap_or_default();
    Ok(json!({
        "cluster": keys.root, "leader": leader, "members": members, "generation": generation,
        "assignment": a.as_ref().map(|a| json!({"epoch": a.epoch, "seq": a.seq, "strategy": a.strategy,
            "handover": a.next.is_some(), "released": released})),
        "control": control, "jobs": jobs(store, keys, &snap.kvs),
        "rebalance": super::rebalance_state::summary(keys, &snap.kvs, control.paused),
    }))
}

fn jobs(store: &dyn ClusterStore, keys: &Keys, kvs: &[super::store::Kv]) -> Vec<Value> {
    let prefix = keys.jobs();
    let mut out = Vec::new();
    for kv in kvs
        .iter()
        .filter(|kv| kv.key.starts_with(&prefix) && kv.key.ends_with("/spec"))
    {
        let id = &kv.key[prefix.len()..kv.key.len() - 5];
        let Ok(spec) = serde_json::from_slice::<super::runner::JobSpec>(&kv.value) else {
            continue;
        };
        let end = kvs
            .iter()
            .find(|e| e.key == kv.key.replace("/spec", "/end"));
        let state = end
            .and_then(|e| serde_json::from_slice::<Value>(&e.value).ok())
            .map(|v| v["state"].clone());
        let Ok((done, sum)) = super::ccopy::totals(store, keys, id) else {
            continue;
        };
        let secs =
            (super::state::now_ms().saturating_sub(spec.created_ms) as f64 / 1000.0).max(0.001);
        let rate = sum.bytes as f64 / secs;
        let left = crate::cluster::PARTITIONS - done.len();
        let eta =
            (!done.is_empty() && state.is_none()).then(|| secs * left as f64 / done.len() as f64);
        out.push(json!({"id": id, "src": spec.src, "dst": spec.dst, "state": state.unwrap_or(json!("running")),
            "partitions": {"done": done.len(), "running": sum.running, "pending": left},
            "files": sum.files, "bytes": sum.bytes, "failed": sum.failed,
            "rate_bytes_s": rate as u64, "eta_s": eta}));
    }
    out
}

fn print_status(d: &Value) {
    let l = &d["leader"];
    println!(
        "cluster {}  leader {} (epoch {})  topology generation {}",
        d["cluster"].as_str().unwrap_or(""),
        l["node"].as_str().unwrap_or("none"),
        l["epoch"],
        d["generation"]
    );
    println!("assignment {}", d["assignment"]);
    println!("control {}", d["control"]);
    for m in d["members"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:<22} {:<20} owned {:>6}  lease {} s left",
            m["node"].as_str().unwrap_or(""),
            m["addr"].as_str().unwrap_or(""),
            m["state"].as_str().unwrap_or("?"),
            m["owned"],
            m["lease_left_s"]
        );
    }
    print_rebalance(&d["rebalance"]);
    for j in d["jobs"].as_array().into_iter().flatten() {
        println!(
            "  job {} {}: partitions {}, {} files, {} bytes, {} B/s, eta {} s",
            j["id"].as_str().unwrap_or(""),
            j["state"],
            j["partitions"],
            j["files"],
            j["bytes"],
            j["rate_bytes_s"],
            j["eta_s"]
        );
    }
}

fn mb(v: &Value) -> f64 {
    v.as_u64().unwrap_or(0) as f64 / 1e6
}

fn eta(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |s| format!("{s:.0} s"))
}

fn print_rebalance(r: &Value) {
    if r.is_null() {
        return;
    }
    println!(
        "rebalance {} -> {} ({}): {}/{} objects, {:.1}/{:.1} MB, {:.1} MB/s, eta {}, {} superseded, {} failed",
        r["from_generation"],
        r["generation"],
        r["state"].as_str().unwrap_or("?"),
        r["objects"],
        r["objects_total"],
        mb(&r["bytes"]),
        mb(&r["bytes_total"]),
        mb(&r["rate_bytes_s"]),
        eta(&r["eta_s"]),
        r["superseded"],
        r["failed"]
    );
    for n in r["nodes"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:<10} {}/{} objects, {:.1}/{:.1} MB, {:.1} MB/s, eta {}, {} partitions done",
            n["node"].as_str().unwrap_or(""),
            n["state"].as_str().unwrap_or("?"),
            n["objects"],
            n["objects_total"],
            mb(&n["bytes"]),
            mb(&n["bytes_total"]),
            mb(&n["rate_bytes_s"]),
            eta(&n["eta_s"]),
            n["partitions_done"]
        );
        if n["user_target_us"].as_u64().unwrap_or(0) > 0 {
            let ms = |k: &str| n[k].as_f64().unwrap_or(0.0) / 1000.0;
            let limit = match n["limit_bytes_s"].as_u64().unwrap_or(0) {
                0 => "unlimited".to_string(),
                b => format!("{:.1} MB/s", b as f64 / 1e6),
            };
            println!(
                "    pace: limit {limit}, client p99 {:.1} ms (target {:.1} ms)",
                ms("user_p99_us"),
                ms("user_target_us")
            );
        }
        for u in n["unreachable"].as_array().into_iter().flatten() {
            let since = u["since_ms"].as_u64().unwrap_or(0);
            let secs = super::state::now_ms().saturating_sub(since) / 1000;
            println!(
                "    waiting for node {} (unreachable for {secs} s, {} probes): {}",
                u["peer"].as_str().unwrap_or("?"),
                u["probes"],
                u["error"].as_str().unwrap_or("")
            );
        }
        for w in n["handover"].as_array().into_iter().flatten() {
            let since = w["since_ms"].as_u64().unwrap_or(0);
            let secs = super::state::now_ms().saturating_sub(since) / 1000;
            println!(
                "    {} moves wait for node {} to hand its tombstones over ({secs} s): {}",
                w["moves"],
                w["node"].as_str().unwrap_or("?"),
                w["why"].as_str().unwrap_or("")
            );
        }
        if let Some(why) = n["why"].as_str().filter(|w| !w.is_empty()) {
            println!("    lost: {why}");
        }
        for e in n["errors"].as_array().into_iter().flatten().take(3) {
            println!("    error: {}", e.as_str().unwrap_or(""));
        }
    }
}
