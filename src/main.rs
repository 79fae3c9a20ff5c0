//! The `ferry` command line: a thin layer over the library.
//!
//! Exit codes: 0 everything copied and durable; 1 some entries failed (each is reported);
//! 2 bad usage or input, nothing written; 3 cancelled (`ferry ctl JOB cancel`); 130
//! interrupted (SIGINT/SIGTERM).

use clap::{Args, Parser, Subcommand};
use ferry::cluster::{Strategy, Topology};
use ferry::coord::checkpoint::default_state_dir;
use ferry::spec::{self, CopySpec, FsyncMode, IoMode, Preserve, VerifyMode};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Fast, safe data mover for Linux storage nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The topology format in brief (README.md, "Topology files", has it in full).
const TOPOLOGY_HELP: &str = "\
Topology files are JSON (README.md, \"Topology files\"):
  {\"generation\": 2, \"replicas\": 1, \"pools\": [{\"id\": \"p0\", \"sets\": [
    {\"id\": \"s0\", \"state\": \"active\", \"weight\": 1.0, \"disks\": [
      {\"id\": \"d0\", \"path\": \"/srv/s0d0\"}, {\"id\": \"d1\", \"path\": \"/srv/s0d1\"}]}]}]}
generation grows with every change; state is active, draining or removed; weight > 0;
set ids are unique, disk ids unique within their set; every disk path is absolute and
its own directory (not the same as, nor inside, another disk's).";

#[derive(Subcommand)]
enum Cmd {
    /// Copy files and directory trees (like cp -r, durable, in parallel).
    #[command(override_usage = "ferry copy [OPTIONS] SRC... DST")]
    Copy(CopyArgs),
    /// Move files and trees: copy, make durable, verify, then delete each source (one
    /// rename when source and target share a filesystem).
    #[command(override_usage = "ferry move [OPTIONS] SRC... DST")]
    Move(MoveArgs),
    /// Move every object whose owner changed between two topologies to its new owner.
    #[command(after_help = TOPOLOGY_HELP)]
    Rebalance(RebalanceArgs),
    /// Put, get, delete or locate one object of a cluster: BUCKET/KEY.
    #[command(after_help = TOPOLOGY_HELP)]
    Object(ObjectArgs),
    /// Compare two trees by content (or a tree against a manifest); list every difference.
    #[command(
        override_usage = "ferry verify [OPTIONS] SRC DST\n       ferry verify [OPTIONS] --manifest FILE DST"
    )]
    Verify(VerifyArgs),
    /// Build a sample tree, copy it, check the copy, print the speed, clean up.
    Demo(EngineArgs),
    /// Show what a topology change would move, without touching data.
    #[command(after_help = TOPOLOGY_HELP)]
    Plan(PlanArgs),
    /// Disks of a cluster: `init` writes each disk's identity file, once.
    #[command(after_help = TOPOLOGY_HELP)]
    Disk(DiskArgs),
    /// Steer a running job: pause, resume, cancel, status, rate RATE [OPS].
    Ctl(CtlArgs),
    /// List the jobs in the state dir with their state and progress.
    Jobs(JobsArgs),
    /// Make the CA and node certificates for ferry over the network (mutual TLS).
    Certs(ferry::net::cli::CertsArgs),
    /// Run this node's cluster agent (membership, election, assignment, cluster jobs).
    Agent(ferry::agent::cli::AgentArgs),
    /// Serve exported directories to ferry clients over mutual TLS (push, pull, verify).
    #[command(
        override_usage = "ferry serve --listen ADDR --export NAME=DIR [--export ...] [--tls-dir DIR] [--state-dir DIR]"
    )]
    Serve(ferry::net::cli::ServeArgs),
    /// A cluster's shared state: apply NEW.json, topology, status, pause, resume, rate RATE [OPS].
    Cluster(ferry::agent::cluster_cli::ClusterArgs),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    #[command(
        after_help = "bash: ferry completions bash > /etc/bash_completion.d/ferry\n\
                            zsh:  ferry completions zsh > \"${fpath[1]}/_ferry\"\n\
                            fish: ferry completions fish > ~/.config/fish/completions/ferry.fish"
    )]
    Completions(CompletionsArgs),
    /// Print the man page (ferry.1), or write one page per command into --dir.
    Manpage(ManpageArgs),
}

#[derive(Args)]
struct CompletionsArgs {
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Args)]
struct ManpageArgs {
    /// Write ferry.1 and ferry-COMMAND.1 for every command into DIR instead.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Args)]
struct DiskArgs {
    #[command(subcommand)]
    op: DiskOp,
}

#[derive(Subcommand)]
enum DiskOp {
    /// Write the identity file (.ferry-disk: cluster, set and disk id) of every disk of the
    /// topology that has none. Every disk root must exist; nothing is written otherwise, and
    /// a disk holding another identity is refused.
    Init {
        /// The topology (JSON).
        #[arg(long)]
        topology: PathBuf,
    },
}

#[derive(Args)]
struct PlanArgs {
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

#[derive(Args)]
struct MoveArgs {
    #[command(flatten)]
    copy: CopyArgs,
    /// Copy and delete even when source and target share a filesystem (instead of one rename).
    #[arg(long)]
    no_rename: bool,
}

#[derive(Args)]
struct RebalanceArgs {
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

#[derive(Args)]
struct ObjectArgs {
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

#[derive(Args)]
struct VerifyArgs {
    /// SRC DST, or just DST with --manifest.
    #[arg(required = true, num_args = 1..=2, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Check DST against this manifest (written by `ferry copy --manifest`).
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Reader threads (default: twice the online CPUs).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// With a ferry:// end: this client's ca.pem, cert.pem, key.pem
    /// [default: $FERRY_TLS_DIR or ~/.config/ferry/tls].
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
}

#[derive(Args)]
struct CopyArgs {
    /// Sources, then the destination.
    #[arg(required = true, num_args = 2.., value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Copy with the agents of cluster NAME over storage they all see (each copies the
    /// partitions it owns; the command returns when every partition is durably done).
    #[arg(long, value_name = "NAME", requires = "etcd")]
    cluster: Option<String>,
    /// The cluster's etcd client URLs (with --cluster).
    #[arg(long, value_name = "URL[,URL...]", requires = "cluster")]
    etcd: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
    /// Skip entries matching GLOB (rsync-style: rules apply in command-line order, first match
    /// wins; no '/' matches names at any depth, a '/' inside matches the end of the path, a
    /// leading '/' anchors at the source root, a trailing '/' matches directories only, '**'
    /// crosses directories).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Copy entries matching GLOB even if a later --exclude matches them.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Walk and report what would be copied (counts and bytes); write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not enter directories on other filesystems (mount points are created empty).
    #[arg(long, short = 'x')]
    one_file_system: bool,
    /// Stop at the first error (in-flight files are finished or removed, never left partial).
    #[arg(long)]
    fail_fast: bool,
    /// Bytes per second, e.g. 200M (binary multiples; 0 = unlimited). Changeable while running
    /// with `ferry ctl JOB rate RATE`.
    #[arg(long, value_parser = parse_rate, default_value = "0")]
    bwlimit: u64,
    /// File operations per second (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    ops_limit: u64,
    /// Where checkpoints, journals and control sockets live
    /// [default: ${XDG_STATE_HOME:-$HOME/.local/state}/ferry].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Start over instead of resuming an unfinished earlier run of the same command.
    #[arg(long, conflicts_with = "retry_failed")]
    fresh: bool,
    /// Copy again only what failed in the last run of this job.
    #[arg(long)]
    retry_failed: bool,
    /// Checksums: none, stream (xxh3 of every file as it is copied), or full (stream, then
    /// read the durable copy back past the page cache and compare) [default: stream for copy,
    /// full for move].
    #[arg(long, value_enum)]
    verify: Option<VerifyMode>,
    /// Write a manifest: one line per copied file (xxh3, size, mtime ns, path); see
    /// `ferry verify --manifest`.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Also write the final report (with latency quantiles) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Serve Prometheus metrics at ADDR (e.g. 127.0.0.1:9184) while the job runs.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// With a ferry:// end: this client's ca.pem, cert.pem, key.pem
    /// [default: $FERRY_TLS_DIR or ~/.config/ferry/tls].
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
}

/// temp + rename, so a reader never sees half a report.
fn write_report(path: &std::path::Path, report: &ferry::Report) -> std::io::Result<()> {
    let tmp = path.with_extension("ferry-tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

fn parse_rate(s: &str) -> Result<u64, String> {
    ferry::coord::ctl::parse_rate(s)
}

#[derive(Args)]
struct CtlArgs {
    /// The job id (see `ferry jobs`).
    job: String,
    /// pause | resume | cancel | status | rate RATE [OPS]
    #[arg(required = true, num_args = 1..=3)]
    command: Vec<String>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Args)]
struct JobsArgs {
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct EngineArgs {
    /// Reactor threads, each pinned to its own CPU (default: online CPUs).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Bytes per registered buffer, e.g. 512K, 1M.
    #[arg(long, value_parser = spec::parse_size, default_value = "512K")]
    buffer_size: usize,
    /// Buffers (= in-flight chunks) per reactor.
    #[arg(long, default_value_t = 64)]
    queue_depth: usize,
    /// Files larger than this are split so every reactor can work on them, e.g. 64M.
    #[arg(long, value_parser = spec::parse_size, default_value = "1G")]
    segment_size: usize,
    /// I/O backend.
    #[arg(long, value_enum, default_value_t = IoMode::Auto)]
    io: IoMode,
    /// Durability: group commit with syncfs (batch) or fsync per file.
    #[arg(long, value_enum, default_value_t = FsyncMode::Batch)]
    fsync: FsyncMode,
    /// Keep only these attributes (comma list of mode, ownership, timestamps, links, xattr,
    /// acl, all). Default: all, like cp -a.
    #[arg(long, value_name = "LIST")]
    preserve: Option<String>,
    /// Do not keep these attributes (same names as --preserve).
    #[arg(long, value_name = "LIST")]
    no_preserve: Option<String>,
    /// Never use O_DIRECT (by default files of 64 MiB and more bypass the page cache).
    #[arg(long)]
    no_direct: bool,
}

impl EngineArgs {
    fn preserve(&self) -> Result<Preserve, String> {
        let mut p = Preserve::ALL;
        if let Some(list) = &self.preserve {
            p = Preserve::NONE;
            p.set(list, true).map_err(|e| format!("--preserve: {e}"))?;
        }
        if let Some(list) = &self.no_preserve {
            p.set(list, false)
                .map_err(|e| format!("--no-preserve: {e}"))?;
        }
        Ok(p)
    }

    /// The engine part of a spec; Err: a bad --preserve/--no-preserve list.
    fn spec(&self, sources: Vec<PathBuf>, dest: PathBuf) -> Result<CopySpec, String> {
        let mut s = CopySpec::new(sources, dest);
        s.preserve = self.preserve()?;
        s.threads = self.threads;
        s.buffer_size = self.buffer_size;
        s.queue_depth = self.queue_depth;
        s.segment_size = self.segment_size as u64;
        s.io = self.io;
        s.fsync = self.fsync;
        s.direct = !self.no_direct;
        Ok(s)
    }
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.cmd {
        Cmd::Copy(a) => {
            let rules = matches
                .subcommand_matches("copy")
                .map(ordered_rules)
                .unwrap_or_default();
            copy(a, rules, None)
        }
        Cmd::Move(m) => {
            let rules = matches
                .subcommand_matches("move")
                .map(ordered_rules)
                .unwrap_or_default();
            copy(m.copy, rules, Some(m.no_rename))
        }
        Cmd::Verify(v) => verify(v),
        Cmd::Rebalance(r) => rebalance(r),
        Cmd::Object(o) => object(o),
        Cmd::Plan(p) => plan(p),
        Cmd::Disk(d) => disk(d),
        Cmd::Ctl(c) => ctl(c),
        Cmd::Jobs(j) => jobs(j),
        Cmd::Completions(c) => {
            let mut out = Vec::new();
            clap_complete::generate(c.shell, &mut Cli::command(), "ferry", &mut out);
            ferry::out!("{}", String::from_utf8_lossy(&out));
            ExitCode::SUCCESS
        }
        Cmd::Manpage(m) => manpage(m),
        Cmd::Certs(c) => ferry::net::cli::certs(c),
        Cmd::Agent(a) => ferry::agent::cli::agent(a),
        Cmd::Serve(s) => ferry::net::cli::serve(s),
        Cmd::Cluster(c) => ferry::agent::cluster_cli::cluster(c),
        Cmd::Demo(e) => {
            let spec = match e.spec(vec![PathBuf::from(".")], PathBuf::from(".")) {
                Ok(s) => s,
                Err(m) => {
                    eprintln!("ferry demo: {m}");
                    return ExitCode::from(2);
                }
            };
            if let Err(m) = spec.validate() {
                eprintln!("ferry demo: {m}");
                return ExitCode::from(2);
            }
            match ferry::demo::run(&spec).and_then(|ok| {
                let cluster = ferry::demo::run_cluster(&spec)?;
                Ok(ok && cluster)
            }) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(m) => {
                    eprintln!("ferry demo: {m}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// --include and --exclude merged in the order they were given (first match wins).
fn ordered_rules(m: &clap::ArgMatches) -> Vec<ferry::filter::Rule> {
    use ferry::filter::Rule;
    let mut v: Vec<(usize, Rule)> = Vec::new();
    for (id, make) in [
        ("include", Rule::Include as fn(String) -> Rule),
        ("exclude", Rule::Exclude as fn(String) -> Rule),
    ] {
        if let (Some(idx), Some(vals)) = (m.indices_of(id), m.get_many::<String>(id)) {
            v.extend(idx.zip(vals).map(|(i, s)| (i, make(s.clone()))));
        }
    }
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, r)| r).collect()
}

/// `ferry copy`, and `ferry move` (`moving`: Some(--no-rename)).
fn copy(mut a: CopyArgs, rules: Vec<ferry::filter::Rule>, moving: Option<bool>) -> ExitCode {
    if ferry::net::cli::any_remote(&a.paths) {
        return ferry::net::cli::remote_copy(ferry::net::cli::RemoteCopy {
            paths: a.paths,
            moving: moving.is_some(),
            json: a.json,
            quiet: a.quiet,
            report: a.report,
            tls_dir: a.tls_dir,
            state_dir: a.state_dir,
            fresh: a.fresh,
        });
    }
    let (cmd, done) = match moving {
        Some(_) => ("move", "moved"),
        None => ("copy", "copied"),
    };
    let dest = a.paths.pop().expect("clap requires two paths");
    if let (Some(cluster), Some(etcd)) = (&a.cluster, &a.etcd) {
        if moving.is_some() || a.paths.len() != 1 || !rules.is_empty() || a.dry_run {
            eprintln!(
                "ferry: --cluster takes one SRC directory and DST, with copy (no filters, no --dry-run)"
            );
            return ExitCode::from(2);
        }
        return ferry::agent::ccopy::run(ferry::agent::ccopy::Request {
            cluster,
            etcd,
            src: &a.paths[0],
            dst: &dest,
            verify: a.verify.unwrap_or(VerifyMode::Stream),
            json: a.json,
            quiet: a.quiet,
        });
    }
    let mut spec = match a.engine.spec(a.paths, dest) {
        Ok(s) => s,
        Err(m) => {
            eprintln!("ferry {cmd}: {m}");
            return ExitCode::from(2);
        }
    };
    spec.remove_source = moving.is_some();
    spec.no_rename = moving.unwrap_or(false);
    spec.verify = a.verify.unwrap_or(if moving.is_some() {
        VerifyMode::Full
    } else {
        VerifyMode::Stream
    });
    spec.manifest = a.manifest.clone();
    spec.filters = rules;
    spec.dry_run = a.dry_run;
    spec.one_file_system = a.one_file_system;
    spec.fail_fast = a.fail_fast;
    spec.bwlimit = a.bwlimit;
    spec.ops_limit = a.ops_limit;
    spec.fresh = a.fresh;
    spec.retry_failed = a.retry_failed;
    spec.state_dir_optional = a.state_dir.is_none();
    spec.state_dir = Some(a.state_dir.clone().unwrap_or_else(default_state_dir));
    let Ok(listener) = bind_metrics(cmd, a.metrics.as_deref()) else {
        eprintln!("ferry {cmd}: nothing was {done}");
        return ExitCode::from(2);
    };
    let interrupted = on_signals();
    // The control socket is the front end's: started on the job's control handle.
    let handle = match ferry::Job::start(spec).and_then(ferry::coord::ctl::serve_job) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ferry {cmd}: {e}");
            eprintln!("ferry {cmd}: nothing was {done}");
            return ExitCode::from(2);
        }
    };
    let w = Watch {
        cmd,
        json: a.json,
        quiet: a.quiet,
        report: a.report.clone(),
        dry_run: a.dry_run,
        migrating: false,
        summary: None,
    };
    watch(handle, &w, listener, &interrupted)
}

/// `--metrics ADDR`, bound before the job starts: an address in use is bad input (said here).
fn bind_metrics(cmd: &str, addr: Option<&str>) -> Result<Option<std::net::TcpListener>, ()> {
    let Some(addr) = addr else { return Ok(None) };
    ferry::coord::metrics::bind(addr)
        .map(Some)
        .map_err(|e| eprintln!("ferry {cmd}: --metrics {addr}: {e}"))
}

/// SIGINT/SIGTERM: stop cleanly (temp files removed, checkpoint written); a second SIGINT
/// exits at once.
fn on_signals() -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, interrupted.clone());
        let _ = signal_hook::flag::register(sig, interrupted.clone());
    }
    interrupted
}

/// How to show a running job.
struct Watch {
    /// The command's name for messages: copy, move, rebalance.
    cmd: &'static str,
    json: bool,
    quiet: bool,
    report: Option<PathBuf>,
    dry_run: bool,
    migrating: bool,
    /// Extra lines after the summary (rebalance counters), and their JSON.
    summary: Option<Box<dyn Fn() -> (String, serde_json::Value)>>,
}

/// Exit status of a job cancelled by `ferry ctl JOB cancel` (nothing failed; resumable).
const EXIT_CANCELLED: u8 = 3;
/// Exit status after SIGINT/SIGTERM (checkpointed; resumable).
const EXIT_INTERRUPTED: u8 = 130;

/// Where a running job's lines go: JSON lines on stdout, or a progress bar and plain lines.
struct Printer {
    cmd: &'static str,
    json: bool,
    migrating: bool,
    bar: Option<indicatif::ProgressBar>,
    /// Errors printed so far (they are printed as they happen, each once).
    errors_shown: usize,
}

impl Printer {
    /// A rebalance's Running state is shown as "migrating".
    fn state_name(&self, n: &'static str) -> &'static str {
        if self.migrating && n == "running" {
            "migrating"
        } else {
            n
        }
    }

    fn json_line(&self, mut v: serde_json::Value) {
        for k in ["state", "from", "to"] {
            if v.get(k).and_then(|x| x.as_str()) == Some("running") {
                v[k] = self.state_name("running").into();
            }
        }
        ferry::outln!("{v}")
    }

    /// One error, on stderr (above the progress bar) and as a JSON `error` event.
    fn error(&mut self, e: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("ferry {}: {e}", self.cmd)),
            None => eprintln!("ferry {}: {e}", self.cmd),
        }
        if self.json {
            self.json_line(serde_json::json!({"event": "error", "message": e}));
        }
        self.errors_shown += 1;
    }

    fn progress(&self, p: &ferry::job::Progress, finished: bool) {
        if self.json && !finished {
            let mut v = serde_json::to_value(p).unwrap_or_default();
            v["event"] = "progress".into();
            self.json_line(v);
        }
        let Some(b) = &self.bar else { return };
        // Durable work only, so it never goes backwards.
        let eta = match p.eta_secs {
            Some(s) => format!(", ETA {}s", s.ceil() as u64),
            None => String::new(),
        };
        b.set_message(format!(
            "{}: {}/{}{} files, {:.1} MB, {:.1} MB/s{eta}{}",
            self.state_name(p.state.name()),
            p.files,
            p.found_files,
            if p.walk_done { "" } else { "+" },
            p.bytes as f64 / 1e6,
            p.bytes as f64 / 1e6 / p.elapsed_secs.max(1e-3),
            if p.failed > 0 {
                format!(", {} failed", p.failed)
            } else {
                String::new()
            }
        ));
    }
}

/// Shows progress until the job ends, prints the report; the exit status.
fn watch(
    handle: ferry::JobHandle,
    a: &Watch,
    listener: Option<std::net::TcpListener>,
    interrupted: &AtomicBool,
) -> ExitCode {
    let job_id = handle.job_id().map(str::to_string);
    let metrics = match listener.map(|l| ferry::coord::metrics::serve_on(l, handle.control())) {
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            // Only a thread that could not start: the copy runs anyway, said loudly.
            eprintln!("ferry {}: --metrics: {e}", a.cmd);
            None
        }
        None => None,
    };
    let events = handle.events().expect("events taken once");
    use std::io::IsTerminal;
    let bar = (!a.quiet && !a.json && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .expect("static template"),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(200));
        pb
    });
    let mut out = Printer {
        cmd: a.cmd,
        json: a.json,
        migrating: a.migrating,
        bar,
        errors_shown: 0,
    };
    if a.json {
        out.json_line(
            serde_json::json!({"event": "start", "job_id": job_id, "pid": std::process::id()}),
        );
    }
    let mut stopping = false;
    let mut last_progress = std::time::Instant::now();
    loop {
        let finished = handle.is_finished();
        if interrupted.load(Ordering::Relaxed) && !stopping {
            stopping = true;
            let _ = handle.cancel();
        }
        for e in handle.errors_since(out.errors_shown) {
            out.error(&e);
        }
        if a.json {
            for ev in events.try_iter() {
                out.json_line(serde_json::to_value(&ev).unwrap_or_default());
            }
        }
        if last_progress.elapsed() >= std::time::Duration::from_secs(1) || finished {
            out.progress(&handle.status(), finished);
            last_progress = std::time::Instant::now();
        }
        if finished {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if let Some(b) = out.bar.take() {
        b.finish_and_clear();
    }
    let report = handle.wait();
    if let Some(m) = metrics {
        let _ = m.join(); // it sees the final state and stops within 20 ms
    }
    if a.json {
        for ev in events.try_iter() {
            out.json_line(serde_json::to_value(&ev).unwrap_or_default());
        }
    }
    finish(&mut out, a, report, stopping, job_id.unwrap_or_default())
}

/// Prints what is left of the errors, the report (JSON: always the last line), and says how
/// the job ended; the exit status.
fn finish(
    out: &mut Printer,
    a: &Watch,
    report: ferry::Report,
    stopping: bool,
    job_id: String,
) -> ExitCode {
    if let Some(path) = &a.report
        && let Err(e) = write_report(path, &report)
    {
        eprintln!("ferry {}: report '{}': {e}", a.cmd, path.display());
    }
    for e in report.errors.iter().skip(out.errors_shown) {
        out.error(e);
    }
    if report.failed as usize > report.errors.len() {
        eprintln!(
            "ferry {}: {} more errors not shown",
            a.cmd,
            report.failed as usize - report.errors.len()
        );
    }
    if !a.quiet && !a.json {
        say_rerun(&report, &job_id);
    }
    if a.json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        v["event"] = "report".into();
        if let Some(f) = &a.summary {
            v["rebalance"] = f().1;
        }
        out.json_line(v);
    } else if a.dry_run {
        ferry::outln!(
            "dry run: would copy {} files ({} bytes), {} dirs, {} symlinks, {} special files",
            report.files,
            report.bytes,
            report.dirs,
            report.symlinks,
            report.specials
        );
    } else if !a.quiet && !stopping {
        ferry::outln!("{}", report.summary());
        if let Some(f) = &a.summary {
            ferry::outln!("{}", f().0);
        }
    }
    if stopping {
        eprintln!(
            "ferry {}: interrupted, run the same command to resume",
            a.cmd
        );
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    if report.cancelled {
        eprintln!(
            "ferry {}: job {job_id} cancelled; finished files are kept, run the same command to resume",
            a.cmd
        );
    }
    if !report.ok() {
        ExitCode::from(1)
    } else if report.cancelled {
        ExitCode::from(EXIT_CANCELLED)
    } else {
        ExitCode::SUCCESS
    }
}

/// What an earlier run of the job had done already.
fn say_rerun(report: &ferry::Report, job_id: &str) {
    let clean = report.files == 0 && report.failed == 0 && !report.cancelled;
    if report.was_complete && report.moved_before > 0 && clean && report.resumed_files == 0 {
        ferry::outln!(
            "job {job_id} already complete: {} sources moved, nothing left to move",
            report.moved_before
        );
    } else if report.was_complete && clean {
        ferry::outln!(
            "job {job_id} already complete: {} files up to date",
            report.resumed_files
        );
    } else if report.was_complete {
        ferry::outln!(
            "job {job_id} was complete: {} files up to date, the rest brought up to date",
            report.resumed_files
        );
    } else if report.resumed_files > 0 {
        ferry::outln!(
            "resumed: {} files ({} bytes) were already done",
            report.resumed_files,
            report.resumed_bytes
        );
    }
}

fn rebalance(r: RebalanceArgs) -> ExitCode {
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
            return ExitCode::from(2);
        }
    };
    spec.verify = r.verify.unwrap_or(VerifyMode::Full);
    spec.bwlimit = r.bwlimit;
    spec.ops_limit = r.ops_limit;
    spec.fresh = r.fresh;
    spec.state_dir = Some(state_root);
    let Ok(listener) = bind_metrics("rebalance", r.metrics.as_deref()) else {
        eprintln!("ferry rebalance: nothing was moved");
        return ExitCode::from(2);
    };
    let interrupted = on_signals();
    let mut counters = None;
    let handle = ferry::Job::start_with(|| {
        let (p, _cluster, c) = rebalance::prepare(&opts, spec)?;
        counters = Some(c);
        Ok(p)
    })
    .and_then(ferry::coord::ctl::serve_job);
    let handle = match handle {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ferry rebalance: {e}");
            eprintln!("ferry rebalance: nothing was moved");
            return ExitCode::from(2);
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

fn object(o: ObjectArgs) -> ExitCode {
    use ferry::cluster::registry::Registry;
    use ferry::cluster::store::Cluster;
    let fail = |m: String, code: u8| {
        eprintln!("ferry object: {m}");
        ExitCode::from(code)
    };
    let Some((bucket, key)) = o.object.split_once('/') else {
        return fail(format!("'{}' is not BUCKET/KEY", o.object), 2);
    };
    let topo = match Topology::load(&o.topology) {
        Ok(t) => t,
        Err(e) => return fail(e.to_string(), 2),
    };
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
            return fail(
                format!(
                    "{e}: a rebalance holds the registry; write through its process or after it ends"
                ),
                1,
            );
        }
        Err(e) => return fail(e.to_string(), 1),
    };
    let previous = registry
        .as_ref()
        .and_then(|r| r.topology("previous").ok().flatten())
        .and_then(|b| Topology::parse(&b).ok());
    let c = match Cluster::open(topo, &o.topology, previous, registry) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string(), 2),
    };
    let key = key.as_bytes();
    match o.op.as_str() {
        "put" => {
            let data = match &o.file {
                Some(f) => std::fs::read(f),
                None => {
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).map(|_| v)
                }
            };
            let data = match data {
                Ok(d) => d,
                Err(e) => return fail(format!("reading the data: {e}"), 2),
            };
            match c.put(bucket, key, &data) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.is_usage() => fail(e.to_string(), 2),
                Err(e) => fail(e.to_string(), 1),
            }
        }
        "get" => match c.get(bucket, key) {
            Ok(Some(d)) => {
                let w = match &o.file {
                    Some(f) => std::fs::write(f, &d),
                    None => std::io::Write::write_all(&mut std::io::stdout(), &d),
                };
                match w {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(format!("writing the data: {e}"), 1),
                }
            }
            Ok(None) => fail(format!("{}: no such object", o.object), 1),
            Err(e) if e.is_usage() => fail(e.to_string(), 2),
            Err(e) => fail(e.to_string(), 1),
        },
        "rm" => match c.rm(bucket, key) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => fail(format!("{}: no such object", o.object), 1),
            Err(e) if e.is_usage() => fail(e.to_string(), 2),
            Err(e) => fail(e.to_string(), 1),
        },
        _ => match c.locate(bucket, key) {
            Ok(l) => {
                ferry::outln!("{}", serde_json::to_string_pretty(&l).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) if e.is_usage() => fail(e.to_string(), 2),
            Err(e) => fail(e.to_string(), 1),
        },
    }
}

fn verify(v: VerifyArgs) -> ExitCode {
    if let (None, [src, dst]) = (&v.manifest, v.paths.as_slice())
        && ferry::net::url::is_remote(dst.as_os_str())
    {
        return ferry::net::cli::remote_verify(src, dst.as_os_str(), v.json, v.tls_dir.clone());
    }
    let report = match (&v.manifest, v.paths.as_slice()) {
        (Some(m), [dst]) => {
            if !dst.is_dir() {
                eprintln!("ferry verify: '{}' is not a directory", dst.display());
                return ExitCode::from(2);
            }
            match ferry::manifest::read(m) {
                Ok(recs) => ferry::verify::verify_manifest(recs, dst, v.threads),
                Err(e) => {
                    eprintln!("ferry verify: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        (None, [src, dst]) => {
            for p in [src, dst] {
                if let Err(e) = std::fs::symlink_metadata(p) {
                    eprintln!("ferry verify: '{}': {e}", p.display());
                    return ExitCode::from(2);
                }
            }
            ferry::verify::verify_trees(src, dst, v.threads)
        }
        (Some(_), _) => {
            eprintln!("ferry verify: with --manifest, give only the destination directory");
            return ExitCode::from(2);
        }
        (None, _) => {
            eprintln!("ferry verify: give SRC and DST (or --manifest FILE DST)");
            return ExitCode::from(2);
        }
    };
    if v.json {
        ferry::outln!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        for m in &report.mismatches {
            ferry::outln!("differs: {m}");
        }
        ferry::outln!(
            "verified {} files, {:.1} MB in {:.2}s: {}",
            report.files,
            report.bytes as f64 / 1e6,
            report.secs,
            if report.mismatches.is_empty() {
                "all match".to_string()
            } else {
                format!("{} differences", report.mismatches.len())
            }
        );
    }
    if report.mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn plan(a: PlanArgs) -> ExitCode {
    let load = |p: &PathBuf| Topology::load(p).map_err(|e| eprintln!("ferry plan: {e}"));
    let (Ok(old), Ok(new)) = (load(&a.from), load(&a.to)) else {
        return ExitCode::from(2);
    };
    if new.generation <= old.generation {
        eprintln!(
            "ferry plan: topology '{}': generation: must grow from {} (in '{}'), got {}",
            a.to.display(),
            old.generation,
            a.from.display(),
            new.generation
        );
        return ExitCode::from(2);
    }
    if let Err(m) = ferry::cluster::topology::check_across((&old, &a.from), (&new, &a.to)) {
        eprintln!("ferry plan: {m}");
        return ExitCode::from(2);
    }
    if a.vnodes == 0 || a.vnodes > 10_000 {
        eprintln!("ferry plan: --vnodes must be between 1 and 10000");
        return ExitCode::from(2);
    }
    let mut report = ferry::cluster::plan::plan(&old, &new, a.strategy, a.vnodes);
    if a.scan {
        let pair = ((&old, a.from.as_path()), (&new, a.to.as_path()));
        if let Err(e) = ferry::cluster::rebalance::check_disks(pair.0, pair.1, false) {
            eprintln!("ferry: {e}");
            return ExitCode::from(2);
        }
        let table = ferry::cluster::PartitionTable::build(&new, a.strategy, a.vnodes);
        report.scan = Some(ferry::cluster::plan::scan(&old, &new, &table));
    }
    if a.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => ferry::outln!("{s}"),
            Err(e) => {
                eprintln!("ferry plan: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        ferry::out!("{}", report.render());
    }
    ExitCode::SUCCESS
}

fn disk(a: DiskArgs) -> ExitCode {
    let DiskOp::Init { topology } = a.op;
    let t = match Topology::load(&topology) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(2);
        }
    };
    match ferry::cluster::identity::init(&t, &topology) {
        Ok(done) => {
            for (d, wrote) in done {
                let what = if wrote {
                    "initialized"
                } else {
                    "already initialized"
                };
                ferry::outln!("disk {d}: {what}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry: {e}");
            ExitCode::from(2)
        }
    }
}

fn ctl(c: CtlArgs) -> ExitCode {
    use ferry::coord::ctl;
    let root = c.state_dir.unwrap_or_else(default_state_dir);
    let fail = |m: String, code: u8| {
        eprintln!("ferry ctl: {m}");
        ExitCode::from(code)
    };
    if c.job.is_empty() || c.job.contains('/') || c.job.starts_with('.') {
        return fail(format!("'{}' is not a job id (see `ferry jobs`)", c.job), 2);
    }
    let command = c.command.join(" ");
    if let Err(m) = ctl::parse_command(&command) {
        return fail(m, 2);
    }
    let sock = root.join(&c.job).join("ctl.sock");
    match ctl::send(&sock, &command) {
        Ok(reply) => match reply.strip_prefix("error: ") {
            Some(m) => fail(format!("job {}: {m}", c.job), 1),
            None => {
                ferry::outln!("{reply}");
                ExitCode::SUCCESS
            }
        },
        Err(e) => match ferry::coord::jobs::JobEntry::load(&root, &c.job) {
            Some(job) => fail(job.not_running(&sock, &e), 1),
            None => fail(
                format!(
                    "no job {} in {} (see `ferry jobs --state-dir {}`)",
                    c.job,
                    root.display(),
                    root.display()
                ),
                2,
            ),
        },
    }
}

/// `ferry manpage [--dir DIR]`.
fn manpage(m: ManpageArgs) -> ExitCode {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let written = match &m.dir {
        Some(dir) => clap_mangen::generate_to(cmd, dir)
            .map_err(|e| format!("writing man pages into '{}': {e}", dir.display())),
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| format!("rendering the man page: {e}"))
                .map(|()| ferry::out!("{}", String::from_utf8_lossy(&out)))
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry manpage: {e}");
            ExitCode::from(1)
        }
    }
}

fn jobs(j: JobsArgs) -> ExitCode {
    let root = j.state_dir.unwrap_or_else(default_state_dir);
    let Ok(rd) = std::fs::read_dir(&root) else {
        ferry::outln!("no jobs in {}", root.display());
        return ExitCode::SUCCESS;
    };
    let mut rows = Vec::new();
    for e in rd.flatten() {
        let id = e.file_name();
        if let Some(job) = ferry::coord::jobs::JobEntry::load(&root, &id.to_string_lossy()) {
            let note = if job.running {
                format!("  (running, pid {})", job.cp.pid)
            } else if job.interrupted() {
                "  (its process is gone: rerun the same command to resume)".to_string()
            } else {
                String::new()
            };
            let state = job.state_name();
            let cp = job.cp;
            rows.push(format!(
                "{}  {:<11} {:>9} files {:>14} bytes {:>5} failed  {} -> {}{note}",
                cp.job_id,
                state,
                cp.files,
                cp.bytes,
                cp.failed,
                cp.spec
                    .sources
                    .iter()
                    .map(|s| s.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                cp.spec.dest.display(),
            ));
        }
    }
    rows.sort();
    if rows.is_empty() {
        ferry::outln!("no jobs in {}", root.display());
    }
    for r in rows {
        ferry::outln!("{r}");
    }
    ExitCode::SUCCESS
}
