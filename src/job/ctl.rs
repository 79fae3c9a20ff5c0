//! The control socket `<state-dir>/<job-id>/ctl.sock` (mode 0600): one command per connection,
//! one line each way. Commands: pause, resume, cancel, status, rate BYTES[/s] [OPS].

use crate::error::{Error, ErrorKind, Target};
use crate::job::{Control, JobHandle};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest command line accepted.
const MAX_LINE: u64 = 256;

/// Starts the control socket of a job that has a state dir (`<state-dir>/<job-id>/ctl.sock`)
/// on its control handle; the handle waits for it. Front ends call this: the job itself
/// knows nothing of sockets.
pub fn serve_job(mut h: JobHandle) -> Result<JobHandle, Error> {
    if let Some(path) = h.ctl_socket() {
        let server = serve(path, h.control())?;
        h.attach_server(server);
    }
    Ok(h)
}

/// What a control socket steers: a job, or a network transfer (`net::steer`).
pub trait Steered: Send + Sync {
    /// True once it has ended (the socket's server then exits).
    fn is_over(&self) -> bool;
    /// The reply line to a checked command (Err: why it was refused).
    fn command(&self, c: Command) -> Result<String, String>;
}

impl Steered for Control {
    fn is_over(&self) -> bool {
        Control::is_over(self)
    }

    fn command(&self, c: Command) -> Result<String, String> {
        match c {
            Command::Status => {
                return serde_json::to_string(&self.status()).map_err(|e| e.to_string());
            }
            Command::Pause => self.pause().map_err(|e| e.to_string())?,
            Command::Resume => self.resume().map_err(|e| e.to_string())?,
            Command::Cancel => self.cancel().map_err(|e| e.to_string())?,
            Command::Rate(bytes, ops) => self.set_rate(bytes, ops.unwrap_or(self.rates().1)),
        }
        Ok("ok".into())
    }
}

/// Serves the control socket at `path` (mode 0600) until `control` is over.
pub fn serve(path: PathBuf, control: Arc<dyn Steered>) -> Result<JoinHandle<()>, Error> {
    // A socket left by a killed run is stale: the state dir's lock says no one else runs it.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| Error::os("bind", &path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::os("chmod", &path, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::os("listen", &path, e))?;
    std::thread::Builder::new()
        .name("ferry-ctl".into())
        .spawn(move || {
            while !control.is_over() {
                match listener.accept() {
                    Ok((s, _)) => handle(s, &*control),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            let _ = std::fs::remove_file(&path);
        })
        .map_err(|e| Error::at("spawn", Target::Thread("ferry-ctl"), ErrorKind::Os(e)))
}

fn handle(s: UnixStream, c: &dyn Steered) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let Ok(reader) = s.try_clone() else { return };
    if BufReader::new(std::io::Read::take(reader, MAX_LINE))
        .read_line(&mut line)
        .is_err()
    {
        return;
    }
    let reply = answer(line.trim(), c);
    let mut s = s;
    let _ = writeln!(s, "{reply}");
}

/// A control command, checked (by `ferry ctl` before it connects, and by the server).
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Cancel,
    Status,
    /// Bytes/s, and file operations/s (None: keep the current one).
    Rate(u64, Option<u64>),
}

const USAGE: &str = "pause, resume, cancel, status, rate RATE [OPS]";

/// Parses `pause|resume|cancel|status|rate RATE [OPS]`; Err says what is wrong.
pub fn parse_command(cmd: &str) -> Result<Command, String> {
    let w: Vec<&str> = cmd.split_whitespace().collect();
    let bare = |c: Command| match w.len() {
        1 => Ok(c),
        _ => Err(format!("'{}' takes no value ({USAGE})", w[0])),
    };
    match w.first().copied() {
        Some("pause") => bare(Command::Pause),
        Some("resume") => bare(Command::Resume),
        Some("cancel") => bare(Command::Cancel),
        Some("status") => bare(Command::Status),
        Some("rate") => match w[1..] {
            [] => Err(
                "rate needs a value: rate RATE [OPS] (bytes/s, e.g. 50M; 0 = \
                       unlimited; OPS: file operations/s)"
                    .into(),
            ),
            [b] => Ok(Command::Rate(parse_rate(b)?, None)),
            [b, o] => {
                let ops = o
                    .parse()
                    .map_err(|_| format!("bad ops rate '{o}' (file operations/s, e.g. 100)"))?;
                Ok(Command::Rate(parse_rate(b)?, Some(ops)))
            }
            _ => Err(format!("too many values for rate ({USAGE})")),
        },
        _ => Err(format!("unknown command '{cmd}' ({USAGE})")),
    }
}

fn answer(cmd: &str, c: &dyn Steered) -> String {
    match parse_command(cmd).and_then(|cmd| c.command(cmd)) {
        Ok(reply) => reply,
        Err(e) => format!("error: {e}"),
    }
}

/// `200M`, `1G`, `0` (unlimited); binary multiples.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    crate::spec::parse_size(s.trim_end_matches("/s")).map(|v| v as u64)
}

/// Client side: sends one command, returns the reply line.
pub fn send(sock: &Path, cmd: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "{cmd}")?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    Ok(reply.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_say_what_is_missing() {
        assert_eq!(parse_command("pause"), Ok(Command::Pause));
        assert_eq!(parse_command(" status "), Ok(Command::Status));
        assert_eq!(parse_command("rate 2M"), Ok(Command::Rate(2 << 20, None)));
        assert_eq!(parse_command("rate 0 50"), Ok(Command::Rate(0, Some(50))));
        let e = parse_command("rate").unwrap_err();
        assert!(e.starts_with("rate needs a value"), "{e}");
        assert!(parse_command("rate x").unwrap_err().contains("'x'"));
        assert!(
            parse_command("rate 1M x")
                .unwrap_err()
                .contains("bad ops rate")
        );
        assert!(
            parse_command("pause now")
                .unwrap_err()
                .contains("takes no value")
        );
        assert!(
            parse_command("bogus")
                .unwrap_err()
                .starts_with("unknown command 'bogus'")
        );
    }
}
