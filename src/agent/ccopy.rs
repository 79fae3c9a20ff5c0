//! `ferry copy --cluster NAME SRC DST`: stores the job in etcd and follows it until every
//! partition is recorded done by the agents (which copy over shared storage, each its own
//! partitions; a dead agent's partitions are taken over by the next owner).

use super::etcd::EtcdStore;
use super::keys::Keys;
use super::runner::{JobSpec, Progress};
use super::store::{ClusterStore, Cmp, Op};
use crate::Exit;
use crate::partset::PartSet;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub struct Request<'a> {
    pub cluster: &'a str,
    pub etcd: &'a str,
    pub src: &'a Path,
    pub dst: &'a Path,
    pub verify: crate::spec::VerifyMode,
    pub json: bool,
    pub quiet: bool,
}

fn usage(m: impl std::fmt::Display) -> ExitCode {
    eprintln!("ferry copy --cluster: {m}");
    Exit::Usage.into()
}

/// Sums of every agent's progress for job `id`.
pub fn totals(
    store: &dyn ClusterStore,
    keys: &Keys,
    id: &str,
) -> Result<(PartSet, Progress), String> {
    let snap = store
        .range(&keys.progress_prefix(id), false)
        .map_err(|e| e.to_string())?;
    let (mut done, mut sum) = (PartSet::default(), Progress::default());
    for kv in snap.kvs {
        let Ok(p) = serde_json::from_slice::<Progress>(&kv.value) else {
            continue;
        };
        if let Ok(s) = PartSet::from_text(&p.done) {
            done.union(&s);
        }
        sum.files += p.files;
        sum.bytes += p.bytes;
        sum.failed += p.failed;
        sum.running += p.running;
        sum.errors.extend(p.errors);
    }
    Ok((done, sum))
}

pub fn run(r: Request) -> ExitCode {
    let keys = match Keys::new(r.cluster) {
        Ok(k) => k,
        Err(m) => return usage(m),
    };
    let store = match EtcdStore::new(r.etcd, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(m) => return usage(format!("--etcd: {m}")),
    };
    let src = match std::fs::canonicalize(r.src) {
        Ok(p) if p.is_dir() => p,
        Ok(p) => {
            return usage(format!(
                "'{}': SRC must be a directory (shared by every agent)",
                p.display()
            ));
        }
        Err(e) => return usage(format!("'{}': {e}", r.src.display())),
    };
    if let Err(e) = std::fs::create_dir_all(r.dst) {
        return usage(format!("create '{}': {e}", r.dst.display()));
    }
    let dst = std::fs::canonicalize(r.dst).unwrap_or(r.dst.to_path_buf());
    if dst.starts_with(&src) {
        return usage(format!("'{}' is inside '{}'", dst.display(), src.display()));
    }
    let id = super::admin::random_hex(6).unwrap_or_else(|_| format!("{}", std::process::id()));
    let spec = JobSpec {
        id: id.clone(),
        src,
        dst,
        verify: r.verify,
        created_ms: super::state::now_ms(),
    };
    let put = Op::Put {
        key: keys.job(&id),
        value: serde_json::to_vec(&spec).expect("json"),
        lease: 0,
    };
    match store.txn(&[Cmp::CreateRev(keys.job(&id), 0)], &[put]) {
        Ok((true, _)) => {}
        Ok((false, _)) => return usage(format!("job id {id} exists; run again")),
        Err(e) => return usage(e),
    }
    if !r.quiet {
        eprintln!("ferry copy --cluster {}: job {id} submitted", r.cluster);
    }
    follow(&store, &keys, &id, &r)
}

fn finish(store: &dyn ClusterStore, keys: &Keys, id: &str, state: &str) {
    let key = keys.job(id).replace("/spec", "/end");
    let v = json!({"state": state, "at_ms": super::state::now_ms()}).to_string();
    let _ = store.put(&key, v.as_bytes(), 0);
}

fn follow(store: &dyn ClusterStore, keys: &Keys, id: &str, r: &Request) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            finish(store, keys, id, "cancelled");
            eprintln!("ferry copy --cluster: job {id} cancelled; the agents stop their batches");
            return Exit::Interrupted.into();
        }
        let (done, sum) = match totals(store, keys, id) {
            Ok(t) => t,
            Err(m) => {
                eprintln!("ferry copy --cluster: {m} (retrying)");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let line = json!({"job": id, "partitions_done": done.len(), "files": sum.files,
            "bytes": sum.bytes, "failed": sum.failed, "elapsed_s": secs,
            "rate_bytes_s": (sum.bytes as f64 / secs) as u64});
        if done.len() == crate::cluster::PARTITIONS {
            finish(
                store,
                keys,
                id,
                if sum.failed == 0 {
                    "completed"
                } else {
                    "failed"
                },
            );
            for e in &sum.errors {
                eprintln!("ferry copy --cluster: {e}");
            }
            if r.json {
                crate::outln!("{line}");
            } else if !r.quiet {
                eprintln!(
                    "ferry copy --cluster: job {id} done: {} files, {} bytes in {secs:.1} s",
                    sum.files, sum.bytes
                );
            }
            return if sum.failed == 0 {
                Exit::Ok.into()
            } else {
                Exit::Failed.into()
            };
        }
        if !r.quiet && last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "ferry copy --cluster: {}/65536 partitions done, {} files, {} bytes",
                done.len(),
                sum.files,
                sum.bytes
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
