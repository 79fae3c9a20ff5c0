//! Network namespaces on one bridge of the test's own namespace: each has a veth whose other
//! end is a port of the bridge, and an address on the bridge's subnet; the bridge has one too,
//! so the test and what it runs beside itself (etcd) reach every namespace, and they reach
//! each other. A namespace's link taken down cuts it off from all of them. Deleted on drop,
//! also when a test fails.

use super::super::common::is_root;
use super::netns::ip;
use std::process::Command;

pub struct Bridge {
    pub dev: String,
    /// The bridge's own address (in the test's namespace).
    pub host: String,
    /// A second address of the bridge, for a service beside the test (etcd) that a
    /// namespace can be cut off from alone (`cut_from`) while it still reaches `host`.
    pub aux: String,
    pub ns: Vec<Ns>,
}

/// One namespace: its name, its end of the veth, its address.
pub struct Ns {
    pub name: String,
    pub dev: String,
    pub addr: String,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the bridge's port.
        for n in &self.ns {
            let _ = ip(&["netns", "del", &n.name]);
        }
        let _ = ip(&["link", "del", &self.dev]);
    }
}

impl Bridge {
    /// `n` namespaces on a new bridge. Err: why this machine cannot (the caller skips).
    pub fn new(tag: &str, n: usize) -> Result<Bridge, String> {
        assert!(n < 200, "one /24 for the bridge and its namespaces");
        if !is_root() {
            return Err("network namespaces need root".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("ip is not installed (apt-get install iproute2)".into());
        }
        let pid = std::process::id();
        let id = format!("{}{tag}", pid % 100_000);
        // A subnet of this process's own, so concurrent test processes do not meet.
        let net = format!("10.{}.{}", 210 + pid % 40, (pid / 40) % 250);
        let mut b = Bridge {
            dev: format!("fbr{id}"),
            host: format!("{net}.1"),
            aux: format!("{net}.254"),
            ns: Vec::new(),
        };
        // From here the guard deletes whatever was made.
        ip(&["link", "add", &b.dev, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", b.host), "dev", &b.dev])?;
        ip(&["addr", "add", &format!("{}/24", b.aux), "dev", &b.dev])?;
        ip(&["link", "set", &b.dev, "up"])?;
        for i in 0..n {
            let ns = Ns {
                name: format!("fyn{id}{i}"),
                dev: format!("fv{id}{i}"),
                addr: format!("{net}.{}", i + 2),
            };
            let port = format!("fp{id}{i}");
            ip(&["netns", "add", &ns.name])?;
            b.ns.push(ns);
            let ns = b.ns.last().expect("pushed");
            let (name, dev) = (ns.name.as_str(), ns.dev.as_str());
            ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", dev, "netns", name,
            ])?;
            ip(&["link", "set", &port, "master", &b.dev])?;
            ip(&["link", "set", &port, "up"])?;
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{}/24", ns.addr),
                "dev",
                dev,
            ])?;
            ip(&["-n", name, "link", "set", dev, "up"])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
        }
        Ok(b)
    }

    /// Namespace `i`'s link up or down (its port on the bridge loses its carrier too).
    pub fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        let n = &self.ns[i];
        ip(&["-n", &n.name, "link", "set", &n.dev, state]).unwrap();
    }

    /// Namespace `i` cut off from `aux` alone (a blackhole route there: its packets to
    /// `aux` are dropped, everything else passes), or joined again.
    pub fn cut_from_aux(&self, i: usize, cut: bool) {
        let verb = if cut { "add" } else { "del" };
        let to = format!("{}/32", self.aux);
        ip(&["-n", &self.ns[i].name, "route", verb, "blackhole", &to]).unwrap();
    }

    /// The command prefix that runs a program in namespace `i` (it execs: same pid).
    pub fn wrap(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.ns[i].name]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}
