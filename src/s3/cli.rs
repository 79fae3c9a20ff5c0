//! `ferry s3 serve`: the S3 endpoint of one node, standalone.

use super::keys::KeyRing;
use super::limits::Limits;
use crate::cluster::registry::Registry;
use crate::cluster::store::Cluster;
use crate::cluster::topology::Topology;
use crate::exit::Exit;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(clap::Subcommand)]
pub enum S3Cmd {
    /// Serve the objects of this node's disks over the S3 REST API (path-style, SigV4).
    #[command(
        override_usage = "ferry s3 serve --listen ADDR --topology FILE --keys FILE [OPTIONS]"
    )]
    Serve(ServeArgs),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to serve HTTP on, e.g. 127.0.0.1:9000 (port 0: any free one, printed).
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// The cluster topology (its disks hold the objects; `ferry disk init` first).
    #[arg(long, value_name = "FILE")]
    pub topology: PathBuf,
    /// Access keys: one 'ACCESS_KEY SECRET_KEY' a line, mode 600. Never on the command line.
    #[arg(long, value_name = "FILE")]
    pub keys: PathBuf,
    /// The location registry [default: <state-dir>/registry.redb].
    #[arg(long, value_name = "FILE")]
    pub registry: Option<PathBuf>,
    /// Where ferry keeps its state [default: $XDG_STATE_HOME/ferry].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Largest object (one PUT or a completed multipart upload), e.g. 5G.
    #[arg(long, value_name = "BYTES", value_parser = crate::spec::parse_size, default_value = "5G")]
    pub max_object_size: usize,
    /// Largest part of a multipart upload.
    #[arg(long, value_name = "BYTES", value_parser = crate::spec::parse_size, default_value = "5G")]
    pub max_part_size: usize,
    /// Requests served at once; more are answered 503 SlowDown.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_inflight: usize,
    /// Open client connections at once.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,
    /// Largest request head (request line and headers); more is answered 431.
    #[arg(long, value_name = "BYTES", value_parser = crate::spec::parse_size, default_value = "64K")]
    pub max_header_bytes: usize,
}

impl ServeArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_object: self.max_object_size as u64,
            max_part: self.max_part_size as u64,
            max_inflight: self.max_inflight,
            max_connections: self.max_connections.max(1),
            max_header_bytes: self.max_header_bytes,
            ..Limits::default()
        }
    }
}

/// The object layer on this node's disks, with the registry (exclusive to this process) and
/// the previous topology it remembers (reads fall back to the previous owner).
pub fn open_cluster(topology: &Path, registry: &Path) -> Result<Cluster, String> {
    let topo = Topology::load(topology).map_err(|e| e.to_string())?;
    let reg = Registry::open(registry).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            format!("{e}: another ferry process (a rebalance?) holds the registry")
        } else {
            e.to_string()
        }
    })?;
    let previous = reg
        .topology("previous")
        .ok()
        .flatten()
        .and_then(|b| Topology::parse(&b).ok());
    Cluster::open(topo, topology, previous, Some(reg)).map_err(|e| e.to_string())
}

pub fn run(cmd: S3Cmd) -> ExitCode {
    let S3Cmd::Serve(a) = cmd;
    match serve(&a) {
        Ok(()) => Exit::Ok.into(),
        Err(m) => {
            eprintln!("ferry s3 serve: {m}");
            Exit::Usage.into()
        }
    }
}

/// Starts an endpoint: keys and topology loaded, the registry opened, the listener bound.
pub fn start(
    listen: &str,
    topology: &Path,
    keys: &Path,
    registry: &Path,
    limits: Limits,
) -> Result<super::server::Endpoint, String> {
    limits.check()?;
    let keys = KeyRing::load(keys)?;
    let cell = Arc::new(super::remote::ClusterCell::new(Some(open_cluster(
        topology, registry,
    )?)));
    let objects = super::server::Objects { cell, remote: None };
    start_with(listen, objects, keys, limits)
}

/// Starts an endpoint on `objects` (the agent's: the cluster's topology from etcd, the
/// other nodes through its peer transport).
pub fn start_with(
    listen: &str,
    objects: super::server::Objects,
    keys: KeyRing,
    limits: Limits,
) -> Result<super::server::Endpoint, String> {
    limits.check()?;
    let listener =
        std::net::TcpListener::bind(listen).map_err(|e| format!("--listen {listen}: bind: {e}"))?;
    super::server::start(listener, objects, keys, limits)
        .map_err(|e| format!("start the S3 endpoint: {e}"))
}

fn serve(a: &ServeArgs) -> Result<(), String> {
    let registry = a.registry.clone().unwrap_or_else(|| {
        a.state_dir
            .clone()
            .unwrap_or_else(crate::coord::checkpoint::default_state_dir)
            .join("registry.redb")
    });
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signal: {e}"))?;
    }
    let ep = start(&a.listen, &a.topology, &a.keys, &registry, a.limits())?;
    crate::outln!("ferry s3: serving http://{}", ep.addr);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ep.stop();
    Ok(())
}
