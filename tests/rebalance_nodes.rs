//! A rebalance run by one node (`rebalance::Options::local`), in process: same-node moves go
//! through the engine, moves to another node's disk through the `Migrate` sender (here an
//! in-process receiver that writes the owner disk as the transport's would), and no source
//! is deleted once the fence says this node no longer owns its moves.

mod common;
use common::placed::{assert_placed, where_is};
use ferry::cluster::migrate::{Fence, Hold, Local, Migrate, Object, Outcome};
use ferry::cluster::rebalance::{self, Options};
use ferry::cluster::store::{Cluster, Placed, object_path};
use ferry::cluster::{Topology, partition_of};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Disks `(set, disk, node)` under `root`; generation `g`.
fn topo(root: &Path, g: u64, sets: &[(&str, &[(&str, &str)])]) -> Topology {
    let sets: Vec<serde_json::Value> = sets
        .iter()
        .map(|(s, disks)| {
            let disks: Vec<serde_json::Value> = disks
                .iter()
                .map(|(d, n)| serde_json::json!({"id": d, "path": root.join(format!("{s}{d}")), "node": n}))
                .collect();
            serde_json::json!({"id": s, "state": "active", "weight": 1.0, "disks": disks})
        })
        .collect();
    let v = serde_json::json!({"generation": g, "pools": [{"id": "p", "sets": sets}]});
    let t = Topology::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
    for s in t.sets() {
        for d in &s.disks {
            std::fs::create_dir_all(&d.path).unwrap();
        }
    }
    ferry::cluster::identity::init(&t, Path::new("test topology")).unwrap();
    t
}

/// The receiving side of a cross-node move, in process: temp, fsync, rename on the owner
/// disk; a copy already there is a newer client write (Superseded).
struct Receiver {
    disks: HashMap<String, PathBuf>,
    calls: AtomicUsize,
}

impl Migrate for Receiver {
    fn migrate(
        &self,
        _node: &str,
        disk: &str,
        obj: &Object,
        body: &mut dyn Read,
    ) -> Result<Outcome, ferry::Error> {
        let (bucket, key, size, hash) = (obj.bucket, obj.key, obj.size, obj.hash);
        assert_eq!(obj.from, "s0/d0", "the source disk");
        self.calls.fetch_add(1, Ordering::Relaxed);
        let dst = object_path(&self.disks[disk], bucket, key);
        let mut data = Vec::new();
        body.read_to_end(&mut data).unwrap();
        assert_eq!(data.len() as u64, size);
        assert_eq!(xxhash_rust::xxh3::xxh3_64(&data), hash, "the sender's xxh3");
        if dst.exists() {
            return Ok(Outcome::Superseded);
        }
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        let tmp = dst.with_extension("ferry-tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        std::fs::rename(&tmp, &dst).unwrap();
        Ok(Outcome::Stored)
    }
}

struct Setup {
    _t: tempfile::TempDir,
    dir: PathBuf,
    old: Topology,
    new: Topology,
    want: HashMap<String, Vec<u8>>,
}

/// Node a has s0/d0; NEW adds s0/d1 on a (same-node moves) and set s1 on node b (cross-node).
fn setup(n: usize) -> Setup {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let old = topo(&dir, 1, &[("s0", &[("d0", "a")])]);
    let new = topo(
        &dir,
        2,
        &[("s0", &[("d0", "a"), ("d1", "a")]), ("s1", &[("d0", "b")])],
    );
    let c = Cluster::new(old.clone(), None, None);
    let mut want = HashMap::new();
    for i in 0..n {
        let key = format!("k{}/obj{i}", i % 5);
        let data: Vec<u8> = (0..(i * 37) % 5000 + 1).map(|j| (i + j) as u8).collect();
        c.put("bkt", key.as_bytes(), &data).unwrap();
        want.insert(key, data);
    }
    std::fs::write(dir.join("old.json"), serde_json::to_vec(&old).unwrap()).unwrap();
    std::fs::write(dir.join("new.json"), serde_json::to_vec(&new).unwrap()).unwrap();
    Setup {
        _t: t,
        dir,
        old,
        new,
        want,
    }
}

/// Node a's run with `sender` and `fence`; its report and the partitions it logged done.
fn run_a(s: &Setup, sender: Arc<dyn Migrate>, fence: Fence) -> (ferry::Report, HashSet<u16>) {
    let done = Arc::new(Mutex::new(HashSet::new()));
    let r = start_a(s, sender, fence, None, done.clone()).wait();
    let d = done.lock().unwrap().clone();
    (r, d)
}

/// Starts node a's run with `sender`, `fence` and `hold`; the partitions done go to `done`.
fn start_a(
    s: &Setup,
    sender: Arc<dyn Migrate>,
    fence: Fence,
    hold: Option<Hold>,
    done: Arc<Mutex<HashSet<u16>>>,
) -> ferry::JobHandle {
    let cluster = Arc::new(Cluster::for_node(
        s.new.clone(),
        Some(s.old.clone()),
        None,
        "a",
    ));
    let d2 = done.clone();
    let mut opts = Options::new(
        s.dir.join("old.json"),
        s.dir.join("new.json"),
        s.dir.join("unused.redb"),
    );
    opts.local = Some(Local {
        node: "a".into(),
        cluster,
        sender,
        fence,
        skip: HashSet::new(),
        on_done: Arc::new(move |p| {
            d2.lock().unwrap().insert(p);
        }),
        hold,
    });
    let mut spec = ferry::CopySpec::new(vec![], PathBuf::new());
    spec.state_dir = Some(s.dir.join("state"));
    spec.fresh = true;
    ferry::Job::start_with(|| Ok(rebalance::prepare(&opts, spec)?.0)).unwrap()
}

/// The moves of the odd partitions are held (as for a node that has not handed its
/// tombstones over) until `open`: the others, same-node and cross-node, all go meanwhile,
/// the held ones stay at their source and the run does not end; once released, they go and
/// the run completes with every object once at its owner.
#[test]
fn held_moves_wait_while_the_others_go_and_go_once_released() {
    let s = setup(400);
    let rx = Arc::new(Receiver {
        disks: HashMap::from([("s1/d0".to_string(), s.dir.join("s1d0"))]),
        calls: AtomicUsize::new(0),
    });
    let open = Arc::new(AtomicBool::new(false));
    let o = open.clone();
    let hold: Hold = Arc::new(move |from: &str, p: u16| {
        assert_eq!(from, "s0/d0");
        (p % 2 == 1 && !o.load(Ordering::Acquire)).then(|| ("b".into(), "test".into()))
    });
    let done = Arc::new(Mutex::new(HashSet::new()));
    let h = start_a(&s, rx, Arc::new(|| Ok(true)), Some(hold), done);
    let placed = Placed::new(s.new.clone());
    let owner = |k: &String| placed.owner_key(partition_of(b"bkt", k.as_bytes()));
    let moving: Vec<&String> = s.want.keys().filter(|k| owner(k) != "s0/d0").collect();
    let held = |k: &&String| partition_of(b"bkt", k.as_bytes()) % 2 == 1;
    let (kinds, free) = (
        moving
            .iter()
            .filter(|k| held(k))
            .map(|k| owner(k))
            .collect::<HashSet<_>>(),
        moving.iter().filter(|k| !held(k)).count(),
    );
    assert!(
        kinds.len() == 2 && free > 50,
        "held moves to both disks, others too"
    );
    let start = std::time::Instant::now();
    loop {
        let at = where_is(&s.new, "bkt");
        let went = moving
            .iter()
            .filter(|k| !held(k) && at[**k] == [owner(k)])
            .count();
        if went == free {
            break;
        }
        assert!(
            start.elapsed().as_secs() < 30,
            "{went} of {free} unheld moves went"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let at = where_is(&s.new, "bkt");
    for k in moving.iter().filter(|k| held(k)) {
        assert_eq!(at[*k], ["s0/d0".to_string()], "{k} moved while held");
    }
    assert!(!h.is_finished(), "the run ended with moves held");
    open.store(true, Ordering::Release);
    let r = h.wait();
    assert!(r.ok(), "{:?}", r.errors);
    assert_placed(&s.new, "bkt", &s.want);
}

#[test]
fn a_nodes_run_moves_locally_and_through_the_sender_each_object_once() {
    let s = setup(600);
    let rx = Arc::new(Receiver {
        disks: HashMap::from([("s1/d0".to_string(), s.dir.join("s1d0"))]),
        calls: AtomicUsize::new(0),
    });
    let (r, done) = run_a(&s, rx.clone(), Arc::new(|| Ok(true)));
    assert!(r.ok(), "{:?}", r.errors);
    let placed = Placed::new(s.new.clone());
    let at = where_is(&s.new, "bkt");
    let (mut local, mut remote) = (0, 0);
    for (k, data) in &s.want {
        let p = partition_of(b"bkt", k.as_bytes());
        let owner = placed.owner_key(p);
        assert_eq!(
            at.get(k),
            Some(&vec![owner.clone()]),
            "{k}: exactly once, at its owner"
        );
        assert_eq!(
            &std::fs::read(object_path(&placed.owner(p).path, "bkt", k.as_bytes())).unwrap(),
            data
        );
        match owner.as_str() {
            "s1/d0" => remote += 1,
            "s0/d1" => local += 1,
            _ => {}
        }
    }
    assert!(local > 50 && remote > 100, "local {local}, remote {remote}");
    assert_eq!(
        rx.calls.load(Ordering::Relaxed),
        remote,
        "one send per cross-node object"
    );
    assert_eq!(r.files as usize, local + remote);
    // every partition that had an object to move is logged done
    let moved: HashSet<u16> = s
        .want
        .keys()
        .map(|k| partition_of(b"bkt", k.as_bytes()))
        .filter(|&p| placed.owner_key(p) != "s0/d0")
        .collect();
    assert_eq!(done, moved);
}

#[test]
fn without_ownership_no_source_is_deleted() {
    let s = setup(300);
    let rx = Arc::new(Receiver {
        disks: HashMap::from([("s1/d0".to_string(), s.dir.join("s1d0"))]),
        calls: AtomicUsize::new(0),
    });
    let owned = Arc::new(AtomicBool::new(false));
    let o2 = owned.clone();
    let (r, done) = run_a(
        &s,
        rx.clone(),
        Arc::new(move || Ok(o2.load(Ordering::Relaxed))),
    );
    assert!(
        !r.ok(),
        "a run that may not delete its sources cannot complete"
    );
    assert!(
        r.errors.iter().any(|e| e.contains("fence")),
        "{:?}",
        r.errors
    );
    assert!(done.is_empty(), "{} partitions logged done", done.len());
    // every object is still at its source (s0/d0), maybe copied to its owner as well
    let at = where_is(&s.new, "bkt");
    for k in s.want.keys() {
        assert!(at[k].contains(&"s0/d0".to_string()), "{k}: {:?}", at[k]);
    }
    // ownership back: the next run finishes, every object once at its owner
    owned.store(true, Ordering::Relaxed);
    let (r, _) = run_a(&s, rx, Arc::new(move || Ok(owned.load(Ordering::Relaxed))));
    assert!(r.ok(), "{:?}", r.errors);
    assert_placed(&s.new, "bkt", &s.want);
}
