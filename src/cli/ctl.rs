//! `ferry ctl JOB COMMAND`: steer a running job through its control socket.

use clap::Args;
use ferry::Exit;
use ferry::coord::checkpoint::default_state_dir;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct CtlArgs {
    /// The job id (see `ferry jobs`).
    job: String,
    /// pause | resume | cancel | status | rate RATE [OPS]
    #[arg(required = true, num_args = 1..=3)]
    command: Vec<String>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

pub fn ctl(c: CtlArgs) -> ExitCode {
    use ferry::job::ctl;
    let root = c.state_dir.unwrap_or_else(default_state_dir);
    let fail = |m: String, code: Exit| {
        eprintln!("ferry ctl: {m}");
        code.into()
    };
    if c.job.is_empty() || c.job.contains('/') || c.job.starts_with('.') {
        return fail(
            format!("'{}' is not a job id (see `ferry jobs`)", c.job),
            Exit::Usage,
        );
    }
    let command = c.command.join(" ");
    if let Err(m) = ctl::parse_command(&command) {
        return fail(m, Exit::Usage);
    }
    let sock = root.join(&c.job).join("ctl.sock");
    match ctl::send(&sock, &command) {
        Ok(reply) => match reply.strip_prefix("error: ") {
            Some(m) => fail(format!("job {}: {m}", c.job), Exit::Failed),
            None => {
                ferry::outln!("{reply}");
                Exit::Ok.into()
            }
        },
        Err(e) => match ferry::job::jobs::JobEntry::load(&root, &c.job) {
            Some(job) => fail(job.not_running(&sock, &e), Exit::Failed),
            None => fail(
                format!(
                    "no job {} in {} (see `ferry jobs --state-dir {}`)",
                    c.job,
                    root.display(),
                    root.display()
                ),
                Exit::Usage,
            ),
        },
    }
}
