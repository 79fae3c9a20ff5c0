//! `ferry copy --cluster` over a shared tree with real agents and etcd, and the `ferry
//! cluster` commands. Skips (saying why) when etcd is not installed.

mod agent_harness;
mod etcd_harness;

use agent_harness::{Cluster, config, ferry};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn tree(root: &Path, files: usize, size: usize) {
    for i in 0..files {
        let d = root.join(format!("d{}/e{}", i % 7, i % 3));
        std::fs::create_dir_all(&d).unwrap();
        let data: Vec<u8> = (0..size + i).map(|j| (j * 31 + i * 7) as u8).collect();
        std::fs::write(d.join(format!("f{i}.bin")), data).unwrap();
    }
}

/// Every file of `a` is in `b` with the same bytes, and `b` holds nothing else (no temp).
fn same_tree(a: &Path, b: &Path) {
    let mut n = 0;
    for e in walk(b) {
        let rel = e.strip_prefix(b).unwrap();
        let name = rel.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !name.contains(".ferry"),
            "temp left under DST: {}",
            rel.display()
        );
        if e.is_file() {
            assert!(a.join(rel).is_file(), "extra file {}", rel.display());
        }
    }
    for e in walk(a) {
        if e.is_file() {
            let rel = e.strip_prefix(a).unwrap();
            assert_eq!(
                std::fs::read(&e).unwrap(),
                std::fs::read(b.join(rel)).unwrap_or_default(),
                "{}",
                rel.display()
            );
            n += 1;
        }
    }
    assert!(n > 0);
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn copy_cluster_survives_kill9_of_an_agent_and_completes_identical() {
    let Some(mut c) = Cluster::new(1, &config(300, 300)) else {
        return;
    };
    let src = c.dir.path().join("src");
    let dst = c.dir.path().join("dst");
    tree(&src, 90, 1 << 20);
    for n in ["a", "b", "c"] {
        c.start(n);
    }
    let a = c.wait_settled(&["a", "b", "c"], Duration::from_secs(10));
    c.wait_stable(&["a", "b", "c"], a.seq, Duration::from_secs(5));
    // slow enough that the kill lands mid-copy: 10 MiB/s per agent, 90 MiB in all
    assert!(ferry(&c, &["cluster", "rate", "10M"]).status.success());
    let t0 = Instant::now();
    let mut copy = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "copy",
            "--cluster",
            &c.name,
            "--etcd",
            &c.etcd.urls(),
            "--json",
        ])
        .arg(&src)
        .arg(&dst)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    c.kill9("b");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = copy.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = copy.kill();
            panic!("cluster copy did not finish: {}", c.logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = copy.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("copied in {:?}", t0.elapsed());
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["partitions_done"], 65536);
    assert_eq!(line["failed"], 0);
    same_tree(&src, &dst);
    // b died with work left: its own record covers less than it owned
    let id = line["job"].as_str().unwrap();
    let b_owned = a.owned_by("b").len();
    use ferry::agent::ClusterStore;
    let rec = c.store.get(&c.keys.progress(id, "b")).unwrap();
    let b_done = rec
        .map(|kv| {
            let p: ferry::agent::runner::Progress = serde_json::from_slice(&kv.value).unwrap();
            ferry::partset::PartSet::from_text(&p.done).unwrap().len()
        })
        .unwrap_or(0);
    assert!(
        b_done < b_owned,
        "the kill came too late: b had done {b_done} of {b_owned}"
    );
    // the survivors took b's partitions over (its lease expired mid-copy: an emergency), as
    // the leader classified it; a follower that sees b's loss and the new assignment in one
    // look goes from stable to the assignment without an emergency state of its own
    c.wait_settled(&["a", "c"], Duration::from_secs(1));
    let emergency = |e: &serde_json::Value| {
        e["event"] == "assigned" && e["why"].as_str().is_some_and(|w| w.contains("emergency"))
    };
    assert!(
        ["a", "c"].iter().any(|n| c.events(n).iter().any(emergency)),
        "no emergency assignment: {:?} {:?}",
        c.events("a"),
        c.events("c")
    );
    let st = ferry(&c, &["cluster", "status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(doc["jobs"][0]["state"], "completed", "{doc}");
}

#[test]
fn cluster_commands_apply_topology_status_and_control() {
    let Some(mut c) = Cluster::new(1, &config(200, 200)) else {
        return;
    };
    c.start("a");
    let a = c.wait_settled(&["a"], Duration::from_secs(10));
    c.wait_stable(&["a"], a.seq, Duration::from_secs(5));
    let t = c.dir.path().join("t.json");
    let topo = |g: u64, node: &str| {
        format!(
            r#"{{"generation": {g}, "pools": [{{"id": "p", "sets": [{{"id": "s1", "state": "active", "weight": 1.0, "disks": [{{"id": "d1", "path": "/x", {node}}}]}}]}}]}}"#
        )
    };
    std::fs::write(&t, topo(1, r#""node": "a""#)).unwrap();
    let o = ferry(&c, &["cluster", "apply", t.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ferry(&c, &["cluster", "apply", t.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not grow"));
    std::fs::write(
        &t,
        topo(2, r#""weight": 1"#).replace(r#", "weight": 1}"#, "}"),
    )
    .unwrap();
    let o = ferry(&c, &["cluster", "apply", t.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(".node"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = ferry(&c, &["cluster", "topology"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["generation"], 1);
    assert_eq!(v["pools"][0]["sets"][0]["disks"][0]["node"], "a");
    assert!(ferry(&c, &["cluster", "pause"]).status.success());
    assert!(
        ferry(&c, &["cluster", "rate", "5M", "100"])
            .status
            .success()
    );
    let o = ferry(&c, &["cluster", "status", "--json"]);
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        d["control"],
        serde_json::json!({"paused": true, "rate": 5 << 20, "ops": 100})
    );
    assert_eq!(d["leader"]["node"], "a");
    assert_eq!(d["generation"], 1);
    assert_eq!(d["members"][0]["state"], "stable");
    assert_eq!(d["members"][0]["owned"], 65536);
    assert!(d["members"][0]["lease_left_s"].as_i64().unwrap() >= 0);
    assert!(ferry(&c, &["cluster", "resume"]).status.success());
    let o = ferry(&c, &["cluster", "status"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("leader a"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
