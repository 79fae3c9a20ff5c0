//! `ferry rebalance`: move every object whose owner changed to its new owner.

use clap::Args;
use ferry::Exit;
use ferry::coord::checkpoint::default_state_dir;
use ferry::spec::VerifyMode;
use std::path::PathBuf;
use std::process::ExitCode;

use super::engine::{EngineArgs, parse_rate};
use super::watch::{Watch, bind_metrics, on_signals, watch};

#[derive(Args)]
pub struct RebalanceArgs {
    /// The topology the data is placed by now (JSON).
    #[arg(long)]
    from: PathBuf,
    /// The new topology (JSON); its generation must be larger.
    #[arg(long)]
    to: PathBuf,
    /// The location registry (redb) [default: <state-dir>/registry.redb].
    #[arg(long)]
    registry: Option<PathBuf>,
    /// Which objects move first: size (small first) or partition.
    #[arg(long, value_enum, default_value_t = ferry::cluster::rebalance::Order::Size)]
    order: ferry::cluster::rebalance::Order,
    /// Lifetime of read-forwarding entries, in seconds.
    #[arg(long, default_value_t = ferry::cluster::registry::FORWARD_TTL_SECS)]
    forward_ttl: u64,
    #[command(flatten)]
    engine: EngineArgs,
    /// Checksums: stream, or full (also read each copy back) [default: full].
    #[arg(long, value_enum)]
    verify: Option<VerifyMode>,
    /// Bytes per second, e.g. 200M (0 = unlimited); `ferry ctl JOB rate` changes it live.
    #[arg(long, value_parser = parse_rate, default_value = "0")]
    bwlimit: u64,
    /// Objects moved per second (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    ops_limit: u64,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Plan again from the disks instead of resuming an unfinished rebalance.
    #[arg(long)]
    fresh: bool,
    /// First write the identity file of NEW's disks that have none (as `ferry disk init`).
    #[arg(long)]
    init_disks: bool,
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

pub fn rebalance(r: RebalanceArgs) -> ExitCode {
    use ferry::cluster::rebalance;
    let state_root = r.state_dir.clone().unwrap_or_else(default_state_dir);
    let registry = r
        .registry
        .clone()
        .unwrap_or_else(|| state_root.join("registry.redb"));
    let mut opts = rebalance::Options::new(r.from.clone(), r.to.clone(), registry);
    opts.order = r.order;
    opts.forward_ttl_secs = r.forward_ttl;
    opts.init_disks = r.init_disks;
    let mut spec = match r.engine.spec(Vec::new(), PathBuf::new()) {
        Ok(s) => s,
        Err(m) => {
            eprintln!("ferry rebalance: {m}");
            return Exit::Usage.into();
        }
    };
    spec.verify = r.verify.unwrap_or(VerifyMode::Full);
    spec.bwlimit = r.bwlimit;
    spec.ops_limit = r.ops_limit;
    spec.fresh = r.fresh;
    spec.state_dir = Some(state_root);
    let Ok(listener) = bind_metrics("rebalance", r.metrics.as_deref()) else {
        eprintln!("ferry rebalance: nothing was moved");
        return Exit::Usage.into();
    };
    let interrupted = on_signals();
    let mut counters = None;
    let handle = ferry::Job::start_with(|| {
        let (p, _cluster, c) = rebalance::prepare(&opts, spec)?;
        counters = Some(c);
        Ok(p)
    })
    .and_then(ferry::job::ctl::serve_job);
    let handle = match handle {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ferry rebalance: {e}");
            eprintln!("ferry rebalance: nothing was moved");
            return Exit::Usage.into();
        }
    };
    let c = counters.expect("set by a successful prepare");
    let w = Watch {
        cmd: "rebalance",
        json: r.json,
        quiet: r.quiet,
        report: r.report.clone(),
        dry_run: false,
        migrating: true,
        summary: Some(Box::new(move || {
            use std::sync::atomic::Ordering::Relaxed;
            let text = format!(
                "rebalance: scanned {} objects ({:.1} MB) in {:.2}s; misplaced {} ({:.1} MB); \
                 {} skipped (partitions done earlier); {} superseded by client writes; \
                 {} left on non-owner disks{}",
                c.scanned.load(Relaxed),
                c.scanned_bytes.load(Relaxed) as f64 / 1e6,
                *c.scan_secs.lock().unwrap_or_else(|p| p.into_inner()),
                c.misplaced.load(Relaxed),
                c.misplaced_bytes.load(Relaxed) as f64 / 1e6,
                c.skipped_done.load(Relaxed),
                c.superseded.load(Relaxed),
                c.left_over.load(Relaxed),
                {
                    let l = c.lost_disks.lock().unwrap_or_else(|p| p.into_inner());
                    if l.is_empty() {
                        String::new()
                    } else {
                        format!("; LOST (disks gone): {}", l.join(", "))
                    }
                }
            );
            (text, serde_json::to_value(&*c).unwrap_or_default())
        })),
    };
    watch(handle, &w, listener, &interrupted)
}
