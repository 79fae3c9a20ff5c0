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
    /// poll_ms, request_timeout_ms, progress_interval_ms, token_file, copy_threads,
    /// lost_after_secs.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print every event (state transitions, elections, assignments) as a JSON line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also serve the cluster's objects over the S3 API at ADDR (with --s3-keys; the
    /// topology from etcd, other nodes' objects through --peer-listen's transport).
    #[arg(long, value_name = "ADDR", requires = "s3_keys")]
    pub s3_listen: Option<String>,
    /// The S3 endpoint's access keys ('ACCESS_KEY SECRET_KEY' lines, mode 600).
    #[arg(long, value_name = "FILE", requires = "s3_listen")]
    pub s3_keys: Option<PathBuf>,
    /// Serve the objects of a local topology file instead (one node, no etcd topology).
    #[arg(long, value_name = "FILE", requires = "s3_listen")]
    pub s3_topology: Option<PathBuf>,
    /// Serve this node's objects to the other agents at ADDR (mutual TLS; published in the
    /// member record), e.g. 10.0.0.1:7734.
    #[arg(long, value_name = "ADDR", requires = "tls_dir")]
    pub peer_listen: Option<String>,
    /// This node's TLS identity and the cluster CA (`ferry certs issue DIR NODE` makes it).
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// User I/O first: the client p99 (at the S3 endpoint) the rebalance yields to, e.g.
    /// 20ms; it also yields to this node's disks' completion latency. `off`: only the
    /// cluster's fixed rate [default: 1.25x the idle p99, 50ms before one is measured].
    #[arg(long, value_name = "DURATION|off")]
    pub user_p99: Option<String>,
}

/// The pace's settings from `--user-p99` (None: off).
fn pace_settings(a: &AgentArgs) -> Result<Option<crate::coord::pace::Settings>, String> {
    let user_p99 = match a.user_p99.as_deref() {
        Some("off") => return Ok(None),
        Some(v) => {
            Some(crate::coord::pace::parse_duration(v).map_err(|m| format!("--user-p99 {m}"))?)
        }
        None => None,
    };
    Ok(Some(crate::coord::pace::Settings {
        user_p99,
        disk_await: None,
    }))
}

/// What the agent serves besides its admin API (stopped when dropped, S3 first).
#[derive(Default)]
struct Served {
    s3: Option<crate::s3::server::Endpoint>,
    peer: Option<super::peer::server::PeerServer>,
    objects: Option<super::objects::Objects>,
    client: Option<Arc<super::peer::PeerClient>>,
}

impl Served {
    fn stop(&mut self) {
        self.s3.take(); // requests in flight finish first
        self.peer.take();
        self.objects.take();
    }
}

/// The S3 endpoint and the peer transport, as the flags ask.
fn serve_objects(
    a: &AgentArgs,
    dir: &Path,
    store: &Arc<dyn super::store::ClusterStore>,
    keys: &Keys,
) -> Result<Served, String> {
    let limits = crate::s3::limits::Limits::default();
    let reg = dir.join("registry.redb");
    let mut out = Served::default();
    if let (Some(l), Some(k), Some(t)) = (&a.s3_listen, &a.s3_keys, &a.s3_topology) {
        let ep = crate::s3::cli::start(l, t, k, &reg, limits);
        out.s3 = Some(ep.map_err(|m| format!("--s3-listen: {m}"))?);
        return Ok(out);
    }
    if a.s3_listen.is_none() && a.peer_listen.is_none() {
        return Ok(out);
    }
    let (Some(pl), Some(tls)) = (&a.peer_listen, &a.tls_dir) else {
        return Err("--s3-listen without --s3-topology serves the cluster's objects: it needs --peer-listen ADDR and --tls-dir DIR".into());
    };
    let resolve = super::peer::client::etcd_resolver(
        store.clone(),
        Keys {
            root: keys.root.clone(),
        },
    );
    let client = super::peer::PeerClient::new(tls, &a.node, resolve)
        .map_err(|e| format!("--tls-dir: {e}"))?;
    let client = Arc::new(client);
    let remote: Arc<dyn crate::s3::remote::Remote> = client.clone();
    let objects = super::objects::watch(store.clone(), keys, &a.node, &reg, Some(remote.clone()))?;
    let cfg = crate::net::tls::server_config(tls).map_err(|e| format!("--tls-dir: {e}"))?;
    let l =
        std::net::TcpListener::bind(pl).map_err(|e| format!("--peer-listen {pl}: bind: {e}"))?;
    let lim = super::peer::server::Limits::default();
    let on = Some(remote.clone());
    let peer = super::peer::server::start(l, cfg, (&a.node, objects.cell.clone()), on, lim)
        .map_err(|e| format!("--peer-listen {pl}: {e}"))?;
    if let (Some(l), Some(k)) = (&a.s3_listen, &a.s3_keys) {
        let ring = crate::s3::keys::KeyRing::load(k)?;
        let o = crate::s3::server::Objects {
            cell: objects.cell.clone(),
            remote: Some(remote),
        };
        let ep = crate::s3::cli::start_with(l, o, ring, limits);
        out.s3 = Some(ep.map_err(|m| format!("--s3-listen: {m}"))?);
    }
    out.peer = Some(peer);
    out.objects = Some(objects);
    out.client = Some(client);
    Ok(out)
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

/// A node marked lost serves none of its disks, not even before its id is claimed (where the
/// claim asks this again, for good); etcd not answering yet is left to the claim.
fn not_lost(store: &dyn super::store::ClusterStore, keys: &Keys, node: &str) -> Result<(), String> {
    match super::lost::quarantined(store, keys, node) {
        Ok(Some(m)) => Err(m),
        _ => Ok(()),
    }
}

/// The rebalance's probe of a node over the peer transport (`agent::lost`).
fn probe(c: Arc<super::peer::PeerClient>) -> super::lost::Probe {
    Box::new(move |n: &str, addr: &str| c.probe(n, addr).map_err(|e| e.to_string()))
}

fn agent_inner(a: AgentArgs) -> Result<ExitCode, String> {
    let cfg = match &a.config {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    };
    let pace = pace_settings(&a)?;
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
    let store: Arc<dyn super::store::ClusterStore> = Arc::new(store);
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
    not_lost(&*store, &keys, &a.node)?;
    let mut served = serve_objects(&a, &dir, &store, &keys)?;
    let k = Keys {
        root: keys.root.clone(),
    };
    let mut agent = Agent::new(store.clone(), keys, &a.node, &addr, cfg, instance(&dir)?)?;
    agent.json = a.json;
    agent.peer = served.peer.as_ref().map(|p| p.addr.to_string());
    let threads = agent.cfg.copy_threads;
    let sender: Arc<dyn crate::cluster::migrate::Migrate> = match &served.client {
        Some(c) => c.clone(),
        None => Arc::new(crate::cluster::migrate::NoTransport),
    };
    let mut rebalancer =
        super::rebalance::Rebalancer::new(store.clone(), dir.clone(), threads, sender, &a.node)
            .with_lost_after(Duration::from_secs(agent.cfg.lost_after_secs))
            .with_wake(agent.wake.clone());
    if let Some(c) = served.client.clone() {
        rebalancer = rebalancer.with_probe(probe(c));
    }
    if let Some(st) = pace {
        let latency = served.s3.as_ref().map(|e| e.latency.clone());
        rebalancer = rebalancer.with_pace(super::pace::Paced::new(st, latency));
    }
    if let Some(o) = &served.objects {
        rebalancer = rebalancer.with_clusters(o.moves_on(store, k));
    }
    agent.work = Box::new(super::node::Works(vec![
        Box::new(super::runner::Runner::new(threads)),
        Box::new(rebalancer),
    ]));
    let admin = super::admin::serve(listener, token, agent.shared.clone(), stop.clone())
        .map_err(|e| format!("admin thread: {e}"))?;
    let r = agent.run(&stop);
    served.stop();
    let signalled = stop.swap(true, Ordering::Relaxed);
    let _ = admin.join();
    match r {
        Ok(()) => Ok(Exit::Ok.into()),
        Err(_) if signalled && agent.lease == 0 => Ok(Exit::Ok.into()),
        Err(m) => Err(m),
    }
}
