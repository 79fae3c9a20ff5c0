//! `ferry jobs`: the jobs in the state dir with their state and progress.

use clap::Args;
use ferry::Exit;
use ferry::coord::checkpoint::default_state_dir;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct JobsArgs {
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

pub fn jobs(j: JobsArgs) -> ExitCode {
    let root = j.state_dir.unwrap_or_else(default_state_dir);
    let Ok(rd) = std::fs::read_dir(&root) else {
        ferry::outln!("no jobs in {}", root.display());
        return Exit::Ok.into();
    };
    let mut rows = Vec::new();
    for e in rd.flatten() {
        let id = e.file_name();
        if let Some(job) = ferry::job::jobs::JobEntry::load(&root, &id.to_string_lossy()) {
            let note = if job.running && job.live {
                format!("  (running, pid {}; counts: live)", job.cp.pid)
            } else if job.running {
                format!("  (running, pid {}; counts: last checkpoint)", job.cp.pid)
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
                    .map(|s| ferry::error::shown(s))
                    .collect::<Vec<_>>()
                    .join(" "),
                ferry::error::shown(&cp.spec.dest),
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
    Exit::Ok.into()
}
