//! `ferry agent ...`: the command that runs one node's agent.

use super::config::AgentConfig;
use super::etcd::EtcdStore;
use super::keys::{Keys, check_name};
use super::node::Agent;
use crate::Exit;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The cluster's name (its keys live under /ferry/v1/NAME/ in etcd).
    #[arg(long, value_name = "NAME")]
    pub cluster: String,
    /// This node's id, unique among the cluster's live agents.
    #[arg(long, value_name = "NODE")]
    pub node: String,
    /// etcd client URLs: http://HOST:PORT[,http://HOST:PORT...].
    #[arg(long, value_name = "URL[,URL...]")]
    pub etcd: String,
    /// Serve the admin API (status, health, metrics; bearer token) at ADDR, e.g. 127.0.0.1:9190.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Where the agent keeps its token, instance id and job state
    /// [default: <ferry state dir>/agent/NAME/NODE].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Settings (JSON): ttl_secs, windows {cold_ms, scale_ms, emergency_ms}, strategy, weight,
    /// poll_ms, request_timeout_ms, progress_interval_ms, token_file, copy_threads.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print every event (state transitions, elections, assignments) as a JSON line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also serve this node's objects over the S3 API at ADDR (with --s3-keys, --s3-topology).
    #[arg(long, value_name = "ADDR", requires_all = ["s3_keys", "s3_topology"])]
    pub s3_listen: Option<String>,
    /// The S3 endpoint's access keys ('ACCESS_KEY SECRET_KEY' lines, mode 600).
    #[arg(long, value_name = "FILE", requires = "s3_listen")]
    pub s3_keys: Option<PathBuf>,
    /// The topology of this node's disks for the S3 endpoint (single node for now).
    #[arg(long, value_name = "FILE", requires = "s3_listen")]
    pub s3_topology: Option<PathBuf>,
}

fn fail(m: impl std::fmt::Display) -> ExitCode {
    eprintln!("ferry agent: {m}");
    Exit::Usage.into()
}

/// Holds an exclusive lock on the state dir for the process's life (one agent per dir).
fn lock_dir(dir: &Path) -> Result<std::fs::File, String> {
    let p = dir.join("agent.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| format!("open '{}': {e}", p.display()))?;
    // SAFETY: a valid fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "state dir '{}' is in use by another agent (flock '{}': {})",
            dir.display(),
            p.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(f)
}

/// The state dir's instance id (made once): a restart of this agent may take back its own id.
fn instance(dir: &Path) -> Result<String, String> {
    let p = dir.join("instance");
    match std::fs::read_to_string(&p) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let id = super::admin::random_hex(16).map_err(|e| format!("/dev/urandom: {e}"))?;
            crate::coord::durable::replace(&p, id.as_bytes(), 0o666)
                .map_err(|e| format!("instance id: {e}"))?;
            Ok(id)
        }
    }
}

pub fn agent(a: AgentArgs) -> ExitCode {
    match agent_inner(a) {
        Ok(code) => code,
        Err(m) => fail(m),
    }
}

fn agent_inner(a: AgentArgs) -> Result<ExitCode, String> {
    let cfg = match &a.config {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    };
    let keys = Keys::new(&a.cluster)?;
    check_name("--node", &a.node)?;
    let dir = a.state_dir.clone().unwrap_or_else(|| {
        crate::coord::checkpoint::default_state_dir()
            .join("agent")
            .join(&a.cluster)
            .join(&a.node)
    });
    std::fs::create_dir_all(&dir).map_err(|e| format!("create '{}': {e}", dir.display()))?;
    let _lock = lock_dir(&dir)?;
    let token = super::admin::load_token(
        &cfg.token_file
            .clone()
            .unwrap_or_else(|| dir.join("admin.token")),
    )?;
    let store = EtcdStore::new(&a.etcd, Duration::from_millis(cfg.request_timeout_ms))
        .map_err(|m| format!("--etcd: {m}"))?;
    let listener = std::net::TcpListener::bind(&a.listen)
        .map_err(|e| format!("--listen {}: bind: {e}", a.listen))?;
    let addr = listener
        .local_addr()
        .map(|s| s.to_string())
        .unwrap_or(a.listen.clone());
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signal: {e}"))?;
    }
    let s3 = match (&a.s3_listen, &a.s3_keys, &a.s3_topology) {
        (Some(l), Some(k), Some(t)) => {
            let limits = crate::s3::limits::Limits::default();
            let reg = dir.join("registry.redb");
            Some(
                crate::s3::cli::start(l, t, k, &reg, limits)
                    .map_err(|m| format!("--s3-listen: {m}"))?,
            )
        }
        _ => None,
    };
    let store: Arc<dyn super::store::ClusterStore> = Arc::new(store);
    let mut agent = Agent::new(store.clone(), keys, &a.node, &addr, cfg, instance(&dir)?)?;
    agent.json = a.json;
    let threads = agent.cfg.copy_threads;
    let sender = Arc::new(crate::cluster::migrate::NoTransport);
    agent.work = Box::new(super::node::Works(vec![
        Box::new(super::runner::Runner::new(threads)),
        Box::new(super::rebalance::Rebalancer::new(
            store,
            dir.clone(),
            threads,
            sender,
            &a.node,
        )),
    ]));
    let admin = super::admin::serve(listener, token, agent.shared.clone(), stop.clone())
        .map_err(|e| format!("admin thread: {e}"))?;
    let r = agent.run(&stop);
    drop(s3); // stops the endpoint: requests in flight finish first
    let signalled = stop.swap(true, Ordering::Relaxed);
    let _ = admin.join();
    match r {
        Ok(()) => Ok(Exit::Ok.into()),
        Err(_) if signalled && agent.lease == 0 => Ok(Exit::Ok.into()),
        Err(m) => Err(m),
    }
}
