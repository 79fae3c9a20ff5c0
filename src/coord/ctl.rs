//! The control socket `<state-dir>/<job-id>/ctl.sock` (mode 0600): one command per connection,
//! one line each way. Commands: pause, resume, cancel, status, rate BYTES[/s] [OPS].

use crate::error::Error;
use crate::job::Control;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest command line accepted.
const MAX_LINE: u64 = 256;

pub fn serve(path: PathBuf, control: Arc<Control>) -> Result<JoinHandle<()>, Error> {
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
                    Ok((s, _)) => handle(s, &control),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            let _ = std::fs::remove_file(&path);
        })
        .map_err(|e| Error::os("spawn", Path::new("ferry-ctl"), e))
}

fn handle(s: UnixStream, c: &Control) {
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

fn answer(cmd: &str, c: &Control) -> String {
    let mut it = cmd.split_whitespace();
    let res = match (it.next(), it.next(), it.next()) {
        (Some("pause"), None, None) => c.pause().map_err(|e| e.to_string()),
        (Some("resume"), None, None) => c.resume().map_err(|e| e.to_string()),
        (Some("cancel"), None, None) => c.cancel().map_err(|e| e.to_string()),
        (Some("status"), None, None) => {
            return serde_json::to_string(&c.status()).unwrap_or_else(|e| format!("error: {e}"));
        }
        (Some("rate"), Some(b), ops) => parse_rate(b).and_then(|bytes| {
            let ops = match ops {
                Some(o) => o.parse().map_err(|_| format!("bad ops rate '{o}'"))?,
                None => c.rates().1,
            };
            c.set_rate(bytes, ops);
            Ok(())
        }),
        _ => Err(format!(
            "unknown command '{cmd}' (pause, resume, cancel, status, rate RATE [OPS])"
        )),
    };
    match res {
        Ok(()) => "ok".into(),
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
