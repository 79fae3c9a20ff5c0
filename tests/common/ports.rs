//! Ports for test servers that keep their number across restarts (an agent's S3 endpoint, an
//! etcd member, a server a test kills and starts again). They are taken below the kernel's
//! ephemeral range: a port from `bind(:0)` comes from that range, and while its server is down
//! any outgoing connection of the machine may get it as its local port (seen in CI as
//! "bind: Address already in use" when an agent started). Unique within a test binary,
//! checked free when handed out.

use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);
/// The lowest port handed out.
const BASE: u32 = 10_000;

/// The first port of the kernel's ephemeral range (32768 if unreadable).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Parts of the range: each includer of this file (a separate module instance with its own
/// counter) hands out ports from its own part, `slot`, so two never give out the same port.
pub const SLOTS: u32 = 4;

/// A port free now on 127.0.0.1, outside the ephemeral range where it has room, from part
/// `slot` (< SLOTS) of it: sequential from an offset of this process's, so one binary's
/// ports are distinct until a part (~5,000 ports) wraps.
pub fn free_port_in(slot: u32) -> u16 {
    assert!(slot < SLOTS);
    let low = ephemeral_low();
    if low < BASE + 1000 * SLOTS {
        return ephemeral();
    }
    let part = (low - BASE) / SLOTS;
    let first = BASE + slot * part;
    let offset = std::process::id().wrapping_mul(7919) % part;
    for _ in 0..part {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = first + offset.wrapping_add(n) % part;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    ephemeral()
}

fn ephemeral() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
