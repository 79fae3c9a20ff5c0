//! `ferry plan`: what a topology change would move, without touching data.

use clap::Args;
use ferry::Exit;
use ferry::cluster::{Strategy, Topology};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct PlanArgs {
    /// The current topology (JSON).
    #[arg(long)]
    from: PathBuf,
    /// The new topology (JSON); its generation must be larger.
    #[arg(long)]
    to: PathBuf,
    #[arg(long, value_enum, default_value_t = Strategy::Rendezvous)]
    strategy: Strategy,
    /// Virtual nodes per unit of weight (ring strategy).
    #[arg(long, default_value_t = ferry::cluster::placement::DEFAULT_VNODES)]
    vnodes: u32,
    /// Also walk the disks and count the objects and bytes that would move.
    #[arg(long)]
    scan: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

pub fn plan(a: PlanArgs) -> ExitCode {
    let load = |p: &PathBuf| Topology::load(p).map_err(|e| eprintln!("ferry plan: {e}"));
    let (Ok(old), Ok(new)) = (load(&a.from), load(&a.to)) else {
        return Exit::Usage.into();
    };
    if new.generation <= old.generation {
        eprintln!(
            "ferry plan: topology '{}': generation: must grow from {} (in '{}'), got {}",
            a.to.display(),
            old.generation,
            a.from.display(),
            new.generation
        );
        return Exit::Usage.into();
    }
    if let Err(m) = ferry::cluster::topology::check_across((&old, &a.from), (&new, &a.to)) {
        eprintln!("ferry plan: {m}");
        return Exit::Usage.into();
    }
    if a.vnodes == 0 || a.vnodes > 10_000 {
        eprintln!("ferry plan: --vnodes must be between 1 and 10000");
        return Exit::Usage.into();
    }
    let mut report = ferry::cluster::plan::plan(&old, &new, a.strategy, a.vnodes);
    if a.scan {
        let pair = ((&old, a.from.as_path()), (&new, a.to.as_path()));
        if let Err(e) = ferry::cluster::rebalance::check_disks(pair.0, pair.1, false) {
            eprintln!("ferry: {e}");
            return Exit::Usage.into();
        }
        let table = ferry::cluster::PartitionTable::build(&new, a.strategy, a.vnodes);
        report.scan = Some(ferry::cluster::plan::scan(&old, &new, &table));
    }
    if a.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => ferry::outln!("{s}"),
            Err(e) => {
                eprintln!("ferry plan: {e}");
                return Exit::Failed.into();
            }
        }
    } else {
        ferry::out!("{}", report.render());
    }
    Exit::Ok.into()
}
