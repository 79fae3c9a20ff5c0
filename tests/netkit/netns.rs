//! Two network namespaces joined by a veth pair (server side `a`, client side `b`), deleted
//! when the guard is dropped, also when a test fails.

use super::super::common::*;
use std::ffi::OsStr;
use std::process::{Command, Stdio};

/// The server's address (in `a`) and the client's (in `b`).
pub const ADDR_A: &str = "10.201.0.1";
pub const ADDR_B: &str = "10.201.0.2";

pub struct Pair {
    pub a: String,
    pub b: String,
    pub dev_a: String,
    pub dev_b: String,
}

/// `ip ARGS...`; Err: its message.
pub fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let o = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        for ns in [&self.a, &self.b] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl Pair {
    /// Err: why this machine cannot (the caller skips with it).
    pub fn new(tag: &str) -> Result<Pair, String> {
        if !is_root() {
            return Err("network namespaces need root".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("ip is not installed (apt-get install iproute2)".into());
        }
        let id = format!("{}{tag}", std::process::id() % 100_000);
        let p = Pair {
            a: format!("fya{id}"),
            b: format!("fyb{id}"),
            dev_a: format!("va{id}"),
            dev_b: format!("vb{id}"),
        };
        // From here the guard deletes whatever was made.
        ip(&["netns", "add", &p.a])?;
        ip(&["netns", "add", &p.b])?;
        ip(&[
            "link", "add", &p.dev_a, "netns", &p.a, "type", "veth", "peer", "name", &p.dev_b,
            "netns", &p.b,
        ])?;
        for (ns, dev, addr) in [(&p.a, &p.dev_a, ADDR_A), (&p.b, &p.dev_b, ADDR_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(p)
    }

    /// The client's end of the link up or down (the peer loses its carrier too).
    pub fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.b, "link", "set", &self.dev_b, state]).unwrap();
    }

    /// Both ends shaped with a token bucket (`tc qdisc ... tbf rate RATE`, e.g. "200mbit",
    /// given in bits per second as `bits`). Err: tc or sch_tbf is missing.
    pub fn shape(&self, rate: &str, bits: u64) -> Result<(), String> {
        // The bucket holds at least one timer tick's worth (HZ 100 at worst) and a few frames.
        let burst = format!("{}", (bits / 8 / 100).max(64 << 10));
        for (ns, dev) in [(&self.a, &self.dev_a), (&self.b, &self.dev_b)] {
            run(
                "ip",
                &[
                    "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
                    "rate", rate, "burst", &burst, "latency", "50ms",
                ],
            )?;
        }
        Ok(())
    }

    /// `ferry ARGS...` inside namespace `ns`.
    pub fn ferry(&self, ns: &str, args: &[&OsStr]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, BIN]).args(args);
        c.env("XDG_STATE_HOME", state_home());
        c
    }
}
