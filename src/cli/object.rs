//! `ferry object put|get|rm|locate BUCKET/KEY`: one object of a cluster.

use clap::Args;
use ferry::Exit;
use ferry::cluster::Topology;
use ferry::coord::checkpoint::default_state_dir;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ObjectArgs {
    /// put | get | rm | locate
    #[arg(value_parser = ["put", "get", "rm", "locate"])]
    op: String,
    /// BUCKET/KEY
    object: String,
    /// The current topology (JSON).
    #[arg(long)]
    topology: PathBuf,
    /// The location registry [default: <state-dir>/registry.redb].
    #[arg(long)]
    registry: Option<PathBuf>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// put: read the data from FILE (default: standard input). get: write it to FILE
    /// (default: standard output).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

/// Why a command failed, and its exit status.
type Fail = (String, Exit);

/// A store error: usage errors are bad input (2), the rest failures (1).
fn store_err(e: ferry::Error) -> Fail {
    let code = if e.is_usage() {
        Exit::Usage
    } else {
        Exit::Failed
    };
    (e.to_string(), code)
}

pub fn object(o: ObjectArgs) -> ExitCode {
    let done = o
        .object
        .split_once('/')
        .ok_or_else(|| (format!("'{}' is not BUCKET/KEY", o.object), Exit::Usage))
        .and_then(|(bucket, key)| {
            let c = open_cluster(&o)?;
            run(&o, &c, bucket, key.as_bytes())
        });
    match done {
        Ok(()) => Exit::Ok.into(),
        Err((m, code)) => {
            eprintln!("ferry object: {m}");
            code.into()
        }
    }
}

/// The cluster of `--topology` with its registry (and the previous topology it kept).
fn open_cluster(o: &ObjectArgs) -> Result<ferry::cluster::store::Cluster, Fail> {
    use ferry::cluster::registry::Registry;
    use ferry::cluster::store::Cluster;
    let topo = Topology::load(&o.topology).map_err(|e| (e.to_string(), Exit::Usage))?;
    let path = o.registry.clone().unwrap_or_else(|| {
        o.state_dir
            .clone()
            .unwrap_or_else(default_state_dir)
            .join("registry.redb")
    });
    // The registry is one process's: while a rebalance holds it, reads still work through
    // placement (current, then previous owner); writes must wait, or the mover could not
    // order them.
    let registry = match Registry::open(&path) {
        Ok(r) => Some(r),
        Err(e)
            if e.raw_os_error() == Some(libc::EBUSY)
                && matches!(o.op.as_str(), "get" | "locate") =>
        {
            None
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            return Err((
                format!(
                    "{e}: a rebalance holds the registry; write through its process or after it ends"
                ),
                Exit::Failed,
            ));
        }
        Err(e) => return Err((e.to_string(), Exit::Failed)),
    };
    let previous = registry
        .as_ref()
        .and_then(|r| r.topology("previous").ok().flatten())
        .and_then(|b| Topology::parse(&b).ok());
    Cluster::open(topo, &o.topology, previous, registry).map_err(|e| (e.to_string(), Exit::Usage))
}

/// The operation itself.
fn run(
    o: &ObjectArgs,
    c: &ferry::cluster::store::Cluster,
    bucket: &str,
    key: &[u8],
) -> Result<(), Fail> {
    let missing = || (format!("{}: no such object", o.object), Exit::Failed);
    match o.op.as_str() {
        "put" => {
            let data = match &o.file {
                Some(f) => std::fs::read(f),
                None => {
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).map(|_| v)
                }
            };
            let data = data.map_err(|e| (format!("reading the data: {e}"), Exit::Usage))?;
            c.put(bucket, key, &data).map_err(store_err)
        }
        "get" => {
            let d = c.get(bucket, key).map_err(store_err)?.ok_or_else(missing)?;
            match &o.file {
                Some(f) => std::fs::write(f, &d),
                None => std::io::Write::write_all(&mut std::io::stdout(), &d),
            }
            .map_err(|e| (format!("writing the data: {e}"), Exit::Failed))
        }
        "rm" => match c.rm(bucket, key).map_err(store_err)? {
            true => Ok(()),
            false => Err(missing()),
        },
        _ => {
            let l = c.locate(bucket, key).map_err(store_err)?;
            ferry::outln!("{}", serde_json::to_string_pretty(&l).unwrap_or_default());
            Ok(())
        }
    }
}
