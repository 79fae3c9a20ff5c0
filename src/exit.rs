//! The exit statuses every `ferry` command uses (README.md, "Exit codes").

use std::process::ExitCode;

/// How a command ended, as its process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Everything done (and, for copies, durable).
    Ok = 0,
    /// Some entries failed (each one is reported), or a check found differences.
    Failed = 1,
    /// Bad usage or input: nothing was written.
    Usage = 2,
    /// Cancelled by `ferry ctl JOB cancel` (nothing failed; resumable).
    Cancelled = 3,
    /// Stopped by SIGINT/SIGTERM (checkpointed; resumable).
    Interrupted = 130,
}

impl Exit {
    /// `Ok` when `ok`, else `Failed`.
    pub fn ok_or_failed(ok: bool) -> Exit {
        if ok { Exit::Ok } else { Exit::Failed }
    }

    /// The status as a number (for code that passes statuses along).
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn codes_are_the_documented_ones() {
        let all = [
            (Exit::Ok, 0),
            (Exit::Failed, 1),
            (Exit::Usage, 2),
            (Exit::Cancelled, 3),
            (Exit::Interrupted, 130),
        ];
        for (e, n) in all {
            assert_eq!(e.code(), n, "{e:?}");
        }
        assert_eq!(Exit::ok_or_failed(true), Exit::Ok);
        assert_eq!(Exit::ok_or_failed(false), Exit::Failed);
    }
}
