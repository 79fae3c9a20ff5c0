//! `ferry copy` and `ferry move`.

use clap::Args;
use ferry::Exit;
use ferry::coord::checkpoint::default_state_dir;
use ferry::spec::VerifyMode;
use std::path::PathBuf;
use std::process::ExitCode;

use super::engine::EngineArgs;
use super::engine::parse_rate;
use super::watch::{Watch, bind_metrics, on_signals, watch};

#[derive(Args)]
pub struct MoveArgs {
    #[command(flatten)]
    pub copy: CopyArgs,
    /// Copy and delete even when source and target share a filesystem (instead of one rename).
    #[arg(long)]
    pub no_rename: bool,
}

#[derive(Args)]
pub struct CopyArgs {
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
    /// With a ferry:// source or target: TLS connections used at once (small files are
    /// spread over them, big files split across them) [default: one per reactor, see
    /// --threads].
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=ferry::net::msg::MAX_STREAMS as i64)
    )]
    streams: Option<u32>,
}

/// --include and --exclude merged in the order they were given (first match wins).
pub fn ordered_rules(m: Option<&clap::ArgMatches>) -> Vec<ferry::filter::Rule> {
    use ferry::filter::Rule;
    let Some(m) = m else { return Vec::new() };
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
pub fn copy(mut a: CopyArgs, rules: Vec<ferry::filter::Rule>, moving: Option<bool>) -> ExitCode {
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
            streams: a.streams.map_or(a.engine.threads, |n| n as usize),
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
            return Exit::Usage.into();
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
    let state_dir = a.state_dir.clone();
    let mut spec = match a.engine.spec(std::mem::take(&mut a.paths), dest) {
        Ok(s) => s,
        Err(m) => {
            eprintln!("ferry {cmd}: {m}");
            return Exit::Usage.into();
        }
    };
    job_options(&mut spec, &a, rules, moving);
    spec.state_dir_optional = state_dir.is_none();
    spec.state_dir = Some(state_dir.unwrap_or_else(default_state_dir));
    let Ok(listener) = bind_metrics(cmd, a.metrics.as_deref()) else {
        eprintln!("ferry {cmd}: nothing was {done}");
        return Exit::Usage.into();
    };
    let interrupted = on_signals();
    // The control socket is the front end's: started on the job's control handle.
    let handle = match ferry::Job::start(spec).and_then(ferry::job::ctl::serve_job) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ferry {cmd}: {e}");
            eprintln!("ferry {cmd}: nothing was {done}");
            return Exit::Usage.into();
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

/// The job's options from the command line (the engine's are set already).
fn job_options(
    spec: &mut ferry::CopySpec,
    a: &CopyArgs,
    rules: Vec<ferry::filter::Rule>,
    moving: Option<bool>,
) {
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
}
