//! The `ferry` command line: a thin layer over the library, one file per command.
//!
//! Exit statuses are `ferry::Exit` (README.md, "Exit codes"): 0 everything copied and durable;
//! 1 some entries failed (each is reported); 2 bad usage or input, nothing written; 3 cancelled
//! (`ferry ctl JOB cancel`); 130 interrupted (SIGINT/SIGTERM).

mod copy;
mod ctl;
mod demo;
mod disk;
mod docs;
mod engine;
mod jobs;
mod object;
mod plan;
mod progress;
mod rebalance;
mod verify;
mod watch;

use clap::{Parser, Subcommand};
use copy::{CopyArgs, MoveArgs};
use ctl::CtlArgs;
use disk::DiskArgs;
use docs::{CompletionsArgs, ManpageArgs};
use jobs::JobsArgs;
use object::ObjectArgs;
use plan::PlanArgs;
use rebalance::RebalanceArgs;
use std::process::ExitCode;
use verify::VerifyArgs;

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
    /// Build a sample tree, copy it, check the copy, print the speed, clean up; with
    /// --cluster, etcd and agents on loopback rebalancing under client load.
    Demo(demo::DemoArgs),
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
    /// The S3-compatible endpoint: `serve` this node's objects over the S3 REST API.
    S3 {
        #[command(subcommand)]
        cmd: ferry::s3::cli::S3Cmd,
    },
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

/// Parses the command line and runs the command; its exit status.
pub fn run() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.cmd {
        Cmd::Copy(a) => {
            let rules = copy::ordered_rules(matches.subcommand_matches("copy"));
            copy::copy(a, rules, None)
        }
        Cmd::Move(m) => {
            let rules = copy::ordered_rules(matches.subcommand_matches("move"));
            copy::copy(m.copy, rules, Some(m.no_rename))
        }
        Cmd::Verify(v) => verify::verify(v),
        Cmd::Rebalance(r) => rebalance::rebalance(r),
        Cmd::Object(o) => object::object(o),
        Cmd::Plan(p) => plan::plan(p),
        Cmd::Disk(d) => disk::disk(d),
        Cmd::Ctl(c) => ctl::ctl(c),
        Cmd::Jobs(j) => jobs::jobs(j),
        Cmd::Completions(c) => docs::completions(c, Cli::command()),
        Cmd::Manpage(m) => docs::manpage(m, Cli::command()),
        Cmd::Certs(c) => ferry::net::cli::certs(c),
        Cmd::Agent(a) => ferry::agent::cli::agent(a),
        Cmd::Serve(s) => ferry::net::cli::serve(s),
        Cmd::S3 { cmd } => ferry::s3::cli::run(cmd),
        Cmd::Cluster(c) => ferry::agent::cluster_cli::cluster(c),
        Cmd::Demo(e) => demo::demo(e),
    }
}
