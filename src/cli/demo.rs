//! `ferry demo`: build a sample tree, copy it, check the copy, print the speed, clean up.
//! `ferry demo --cluster`: etcd and five agents on loopback, a node added under client load.

use super::engine::EngineArgs;
use ferry::Exit;
use ferry::cluster_demo::{self, Outcome};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Run the cluster demo: etcd and 4 agents on loopback, objects loaded through their S3
    /// endpoints, a fifth node added and rebalanced while clients read and write.
    #[arg(long)]
    cluster: bool,
    /// Objects the cluster demo loads.
    #[arg(long, default_value_t = 3000, requires = "cluster")]
    objects: usize,
    /// Their largest size (sizes are skewed small), e.g. 1M.
    #[arg(long, value_parser = ferry::spec::parse_size, default_value = "1M", requires = "cluster")]
    max_size: usize,
    /// Client threads reading and writing during the demo.
    #[arg(long, default_value_t = 4, requires = "cluster")]
    clients: usize,
    /// Client operations per second, all threads together (90 % GET, 10 % PUT).
    #[arg(long, default_value_t = 200.0, requires = "cluster")]
    client_ops: f64,
    /// Seconds of client load before the fifth node joins (the baseline).
    #[arg(long, default_value_t = 8, requires = "cluster")]
    baseline: u64,
    /// Write one row a second (t_s, phase, client ops/s, client p99 ms, migration MB/s, the
    /// pace's limit) to FILE.
    #[arg(long, value_name = "FILE", requires = "cluster")]
    csv: Option<PathBuf>,
    /// The agents' --user-p99 (a duration, or `off`: no pace, only --rate).
    #[arg(long, value_name = "DURATION|off", requires = "cluster")]
    user_p99: Option<String>,
    /// The cluster's fixed migration rate per agent (`ferry cluster rate`), e.g. 50M.
    #[arg(long, value_name = "RATE", requires = "cluster")]
    rate: Option<String>,
    /// Write the objects straight onto the disks of n1-n4 (where a PUT under the first
    /// topology puts them, with their registry entries) before the agents start, instead of
    /// loading them through S3: for a million objects in minutes.
    #[arg(long, requires = "cluster")]
    seed: bool,
    /// Give up when the rebalance has not completed after this many seconds.
    #[arg(long, default_value_t = 600, requires = "cluster")]
    timeout: u64,
}

fn cluster(a: &DemoArgs) -> ExitCode {
    let o = cluster_demo::Options {
        objects: a.objects,
        max_size: a.max_size as u64,
        clients: a.clients.max(1),
        client_ops: a.client_ops,
        baseline_s: a.baseline,
        csv: a.csv.clone(),
        user_p99: a.user_p99.clone(),
        rate: a.rate.clone(),
        timeout: std::time::Duration::from_secs(a.timeout),
        seed: a.seed,
    };
    if !(o.client_ops > 0.0 && o.client_ops <= 100_000.0) || o.objects == 0 || o.max_size < 1024 {
        eprintln!("ferry demo: --client-ops 0 < N <= 100000, --objects > 0, --max-size >= 1K");
        return Exit::Usage.into();
    }
    match cluster_demo::run(&o) {
        Ok(Outcome::Ran(ok)) => Exit::ok_or_failed(ok).into(),
        Ok(Outcome::NoEtcd) => {
            eprintln!("ferry demo: {}", cluster_demo::INSTALL);
            Exit::Usage.into()
        }
        Err(m) if m == "interrupted" => {
            eprintln!("ferry demo --cluster: interrupted; everything it started is stopped");
            Exit::Interrupted.into()
        }
        Err(m) => {
            eprintln!("ferry demo --cluster: {m}");
            Exit::Failed.into()
        }
    }
}

pub fn demo(a: DemoArgs) -> ExitCode {
    if a.cluster {
        return cluster(&a);
    }
    let e = a.engine;
    let fail = |m: String, code: Exit| {
        eprintln!("ferry demo: {m}");
        code.into()
    };
    let spec = match e.spec(vec![PathBuf::from(".")], PathBuf::from(".")) {
        Ok(s) => s,
        Err(m) => return fail(m, Exit::Usage),
    };
    if let Err(m) = spec.validate() {
        return fail(m, Exit::Usage);
    }
    match ferry::demo::run(&spec).and_then(|ok| {
        let cluster = ferry::demo::run_cluster(&spec)?;
        Ok(ok && cluster)
    }) {
        Ok(ok) => Exit::ok_or_failed(ok).into(),
        Err(m) => fail(m, Exit::Failed),
    }
}
