//! How a network command stops or retries, shared by the client and the multi-stream sender
//! (which both sides of a transfer run): the exit status of a failure, and which errors are
//! worth a reconnect.

use std::io;
use std::time::Duration;

/// Why a command stopped before it finished: exit status and message.
#[derive(Debug)]
pub struct Fatal {
    pub code: crate::Exit,
    pub msg: String,
}

/// A refusal by the server (unknown export, path outside it, ...) is bad input: exit 2, and
/// nothing was written. Anything else (network, TLS) is exit 1.
pub fn fatal(e: io::Error) -> Fatal {
    let code = if matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput
    ) {
        crate::Exit::Usage
    } else {
        crate::Exit::Failed
    };
    Fatal {
        code,
        msg: e.to_string(),
    }
}

/// How long a push keeps reconnecting to a peer that went away (reset, killed, restarted).
pub const RETRY_FOR: Duration = Duration::from_secs(300);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Errors worth reconnecting for: the connection broke or the peer is (still) down.
pub fn transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | BrokenPipe
            | UnexpectedEof
            | TimedOut
            | NotConnected
            | HostUnreachable
            | NetworkUnreachable
            | Interrupted
    )
}
