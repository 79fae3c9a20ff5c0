//! The `ferry` command line: a thin layer over the library.
//!
//! Exit codes: 0 everything copied and durable; 1 some entries failed (each is reported);
//! 2 bad usage or input, nothing written.

use clap::{Args, Parser, Subcommand};
use ferry::cluster::{Strategy, Topology};
use ferry::spec::{self, CopySpec, FsyncMode, IoMode, Preserve};
use std::path::PathBuf;
use std::process::ExitCode;

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

#[derive(Subcommand)]
enum Cmd {
    /// Copy files and directory trees (like cp -r, durable, in parallel).
    Copy(CopyArgs),
    /// Build a sample tree, copy it, check the copy, print the speed, clean up.
    Demo(EngineArgs),
    /// Show what a topology change would move, without touching data.
    Plan(PlanArgs),
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
struct CopyArgs {
    /// Sources, then the destination.
    #[arg(required = true, num_args = 2.., value_name = "SRC... DST")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
    /// Skip entries matching GLOB (rsync-style: rules apply in command-line order, first match
    /// wins; no '/' matches names at any depth, a leading '/' anchors at the source root, a
    /// trailing '/' matches directories only).
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

    fn spec(&self, sources: Vec<PathBuf>, dest: PathBuf) -> CopySpec {
        let mut s = CopySpec::new(sources, dest);
        s.threads = self.threads;
        s.buffer_size = self.buffer_size;
        s.queue_depth = self.queue_depth;
        s.segment_size = self.segment_size as u64;
        s.io = self.io;
        s.fsync = self.fsync;
        s
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
            copy(a, rules)
        }
        Cmd::Plan(p) => plan(p),
        Cmd::Demo(e) => {
            let spec = e.spec(vec![PathBuf::from(".")], PathBuf::from("."));
            if let Err(m) = spec.validate() {
                eprintln!("ferry: {m}");
                return ExitCode::from(2);
            }
            match ferry::demo::run(&spec) {
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

fn copy(mut a: CopyArgs, rules: Vec<ferry::filter::Rule>) -> ExitCode {
    let dest = a.paths.pop().expect("clap requires two paths");
    let mut spec = a.engine.spec(a.paths, dest);
    spec.filters = rules;
    spec.dry_run = a.dry_run;
    spec.one_file_system = a.one_file_system;
    spec.fail_fast = a.fail_fast;
    spec.preserve = match a.engine.preserve() {
        Ok(p) => p,
        Err(m) => {
            eprintln!("ferry: {m}");
            return ExitCode::from(2);
        }
    };
    let report = match ferry::copy(spec) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: {e}");
            eprintln!("ferry: nothing was copied");
            return ExitCode::from(2);
        }
    };
    for e in &report.errors {
        eprintln!("ferry: {e}");
    }
    if a.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("ferry: report: {e}"),
        }
    } else if a.dry_run {
        println!(
            "dry run: would copy {} files ({} bytes), {} dirs, {} symlinks, {} special files",
            report.files, report.bytes, report.dirs, report.symlinks, report.specials
        );
    } else if !a.quiet {
        println!("{}", report.summary());
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        if report.failed as usize > report.errors.len() {
            eprintln!(
                "ferry: {} more errors not shown",
                report.failed as usize - report.errors.len()
            );
        }
        ExitCode::from(1)
    }
}

fn plan(a: PlanArgs) -> ExitCode {
    let load = |p: &PathBuf| Topology::load(p).map_err(|e| eprintln!("ferry: {e}"));
    let (Ok(old), Ok(new)) = (load(&a.from), load(&a.to)) else {
        return ExitCode::from(2);
    };
    if new.generation <= old.generation {
        eprintln!(
            "ferry: topology '{}': generation: must grow from {} (in '{}'), got {}",
            a.to.display(),
            old.generation,
            a.from.display(),
            new.generation
        );
        return ExitCode::from(2);
    }
    if a.vnodes == 0 || a.vnodes > 10_000 {
        eprintln!("ferry: --vnodes must be between 1 and 10000");
        return ExitCode::from(2);
    }
    let mut report = ferry::cluster::plan::plan(&old, &new, a.strategy, a.vnodes);
    if a.scan {
        let table = ferry::cluster::PartitionTable::build(&new, a.strategy, a.vnodes);
        report.scan = Some(ferry::cluster::plan::scan(&old, &new, &table));
    }
    if a.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("ferry: plan: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", report.render());
    }
    ExitCode::SUCCESS
}
