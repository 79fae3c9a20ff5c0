//! `ferry completions SHELL` and `ferry manpage [--dir DIR]`.

use clap::Args;
use ferry::Exit;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManpageArgs {
    /// Write ferry.1 and ferry-COMMAND.1 for every command into DIR instead.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// `ferry completions SHELL`: the script on stdout.
pub fn completions(c: CompletionsArgs, mut cmd: clap::Command) -> ExitCode {
    let mut out = Vec::new();
    clap_complete::generate(c.shell, &mut cmd, "ferry", &mut out);
    ferry::out!("{}", String::from_utf8_lossy(&out));
    Exit::Ok.into()
}

/// `ferry manpage [--dir DIR]`.
pub fn manpage(m: ManpageArgs, cmd: clap::Command) -> ExitCode {
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
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            eprintln!("ferry manpage: {e}");
            Exit::Failed.into()
        }
    }
}
