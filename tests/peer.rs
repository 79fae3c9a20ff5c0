//! The peer transport between agents (src/agent/peer), in process: two nodes' object layers,
//! a peer server for each, clients as the other node. Mutual TLS with the cluster CA and the
//! node names, Get/Put/Delete/List/Bucket, Migrate (a client's newer write or delete wins),
//! bodies checked (size, xxh3), a node down answered fast, limits.

use bytes::Bytes;
use ferry::agent::peer::msg::{MAX_BURY, Msg, Range, Req};
use ferry::agent::peer::server::{self, Limits, PeerServer};
use ferry::agent::peer::wire::Wire;
use ferry::agent::peer::{Migrated, PeerClient};
use ferry::cluster::registry::Registry;
use ferry::net::certs;
use ferry::s3::remote::{BucketOp, Burial, ClusterCell, Fetched};
use ferry::{Cluster, Target, Topology};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Node {
    cell: Arc<ClusterCell>,
    server: PeerServer,
}

struct Fixture {
    dir: tempfile::TempDir,
    nodes: HashMap<String, Node>,
}

fn topology(root: &Path) -> Topology {
    let set = |s: &str, n: &str| {
        let disk = |d: &str| {
            let p = root.join(format!("{s}{d}"));
            std::fs::create_dir_all(&p).unwrap();
            serde_json::json!({"id": d, "path": p, "node": n})
        };
        serde_json::json!({"id": s, "state": "active", "weight": 1.0, "disks": [disk("d0"), disk("d1")]})
    };
    let v = serde_json::json!({"generation": 1, "cluster": "t",
        "pools": [{"id": "p", "sets": [set("s1", "n1"), set("s2", "n2")]}]});
    Topology::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
}

fn fixture(limits: Limits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    certs::init(&ca).unwrap();
    for n in ["n1", "n2", "n3"] {
        certs::issue(&ca, n, 0, 30).unwrap();
    }
    let t = topology(dir.path());
    ferry::cluster::identity::init(&t, Path::new("t.json")).unwrap();
    let mut nodes = HashMap::new();
    for n in ["n1", "n2"] {
        let reg = Registry::open(&dir.path().join(format!("{n}.redb"))).unwrap();
        let c =
            Cluster::open_node(t.clone(), Path::new("t"), None, Some(Arc::new(reg)), n).unwrap();
        let cell = Arc::new(ClusterCell::new(Some(c)));
        let tls = ferry::net::tls::server_config(&ca.join(n)).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = server::start(l, tls, (n, cell.clone()), None, limits.clone()).unwrap();
        nodes.insert(n.to_string(), Node { cell, server });
    }
    Fixture { dir, nodes }
}

impl Fixture {
    fn tls(&self, who: &str) -> PathBuf {
        self.dir.path().join("ca").join(who)
    }

    fn addrs(&self) -> HashMap<String, String> {
        self.nodes
            .iter()
            .map(|(n, x)| (n.clone(), x.server.addr.to_string()))
            .collect()
    }

    /// A client presenting `who`'s certificate as node `me`.
    fn client_as(&self, tls: &Path, me: &str) -> PeerClient {
        let addrs = self.addrs();
        let resolve =
            Box::new(move |n: &str| addrs.get(n).cloned().ok_or_else(|| format!("no {n}")));
        PeerClient::new(tls, me, resolve).unwrap()
    }

    fn client(&self, me: &str) -> PeerClient {
        self.client_as(&self.tls(me), me)
    }

    fn cluster(&self, n: &str) -> Arc<Cluster> {
        self.nodes[n].cell.get().unwrap()
    }
}

fn source(data: &[u8], piece: usize) -> impl FnMut() -> std::io::Result<Option<Bytes>> + '_ {
    let mut at = 0;
    move || {
        if at >= data.len() {
            return Ok(None);
        }
        let n = piece.min(data.len() - at);
        at += n;
        Ok(Some(Bytes::copy_from_slice(&data[at - n..at])))
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn read_all(f: Fetched) -> (u64, std::ops::Range<u64>, Vec<u8>) {
    let Fetched::Found { stat, range, body } = f else {
        panic!("not found");
    };
    let mut body = body.expect("a body");
    let mut v = Vec::new();
    while let Some(b) = body().unwrap() {
        v.extend_from_slice(&b);
    }
    (stat.size, range, v)
}

#[test]
fn objects_are_put_read_listed_and_deleted_on_another_node() {
    let f = fixture(Limits::default());
    let c = f.client("n1");
    let data = pattern(3 << 20 | 123);
    c.bucket("n2", BucketOp::Create, "b").unwrap();
    assert!(c.bucket("n2", BucketOp::Exists, "b").unwrap());
    assert!(c.bucket("n2", BucketOp::Empty, "b").unwrap());
    let st = c
        .put(
            "n2",
            "s2/d0",
            ("b", "dir/k"),
            Some(data.len() as u64),
            &mut source(&data, 70_000),
        )
        .unwrap();
    assert!(!st.etag.is_empty());
    let on_disk = std::fs::read(f.dir.path().join("s2d0/b/dir/k")).unwrap();
    assert!(on_disk == data, "the object is on n2's disk s2/d0");
    let (size, range, got) = read_all(c.get("n2", "b", "dir/k", None, true).unwrap());
    assert_eq!((size, range), (data.len() as u64, 0..data.len() as u64));
    assert!(got == data, "the whole object came back");
    let r = Range::Int {
        first: 10,
        last: Some(19),
    };
    let (_, range, got) = read_all(c.get("n2", "b", "dir/k", Some(r), true).unwrap());
    assert_eq!((range, got.as_slice()), (10..20, &data[10..20]));
    let (_, _, got) = read_all(
        c.get("n2", "b", "dir/k", Some(Range::Suffix { length: 5 }), true)
            .unwrap(),
    );
    assert_eq!(got, &data[data.len() - 5..]);
    let bad = Range::Int {
        first: data.len() as u64,
        last: None,
    };
    assert!(matches!(
        c.get("n2", "b", "dir/k", Some(bad), true).unwrap(),
        Fetched::BadRange { .. }
    ));
    assert!(matches!(
        c.get("n2", "b", "nope", None, true).unwrap(),
        Fetched::Missing
    ));
    let head = c.get("n2", "b", "dir/k", None, false).unwrap();
    assert!(matches!(head, Fetched::Found { body: None, .. }));
    let keys: Vec<String> = c
        .list("n2", "b", "dir/", None)
        .unwrap()
        .items
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["dir/k"]);
    assert!(!c.bucket("n2", BucketOp::Empty, "b").unwrap());
    assert!(c.buckets("n2").unwrap().iter().any(|(b, _)| b == "b"));
    // n2 does not serve s1/d0: refused, nothing written there.
    let e = c
        .put("n2", "s1/d0", ("b", "x"), Some(1), &mut source(b"x", 1))
        .unwrap_err();
    assert!(e.is_usage(), "{e}");
    assert!(!f.dir.path().join("s1d0/b/x").exists());
    assert!(c.delete("n2", "b", "dir/k", true).unwrap());
    assert!(!c.delete("n2", "b", "dir/k", true).unwrap());
    // n2 serves the key's owner disk: it keeps the delete's tombstone and says so.
    assert!(matches!(
        c.get("n2", "b", "dir/k", None, true).unwrap(),
        Fetched::Deleted { .. }
    ));
}

#[test]
fn a_migrated_copy_is_stored_once_and_a_newer_client_write_wins() {
    let f = fixture(Limits::default());
    let c = f.client("n1");
    let old = UNIX_EPOCH + Duration::new(1_600_000_000, 5);
    let m = c
        .migrate(
            "n2",
            ("s2/d1", "s1/d0"),
            ("b", "m/1"),
            (4, old, None),
            &mut source(b"v1v1", 3),
        )
        .unwrap();
    assert_eq!(m, Migrated::Stored);
    let p = f.dir.path().join("s2d1/b/m/1");
    assert_eq!(std::fs::read(&p).unwrap(), b"v1v1");
    assert_eq!(
        std::fs::metadata(&p).unwrap().modified().unwrap(),
        old,
        "the source's mtime"
    );
    let reg = f.cluster("n2");
    let r = reg.registry.as_ref().unwrap();
    assert_eq!(r.location(b"b/m/1").unwrap().unwrap().0, "s2/d1");
    assert_eq!(r.forwarding(b"b/m/1").unwrap().unwrap().from, "s1/d0");
    // The same object again (a retry): nothing changes.
    let again = c.migrate(
        "n2",
        ("s2/d1", "s1/d0"),
        ("b", "m/1"),
        (4, old, None),
        &mut source(b"v1v1", 4),
    );
    assert_eq!(again.unwrap(), Migrated::Superseded);
    // A client's write at the owner, then the old copy arrives: the write wins.
    c.put("n2", "s2/d1", ("b", "m/2"), Some(3), &mut source(b"new", 3))
        .unwrap();
    let late = c.migrate(
        "n2",
        ("s2/d1", "s1/d0"),
        ("b", "m/2"),
        (3, old, None),
        &mut source(b"old", 3),
    );
    assert_eq!(late.unwrap(), Migrated::Superseded);
    assert_eq!(
        std::fs::read(f.dir.path().join("s2d1/b/m/2")).unwrap(),
        b"new"
    );
    // A body shorter than announced: an error, nothing named.
    let e = c.migrate(
        "n2",
        ("s2/d1", "s1/d0"),
        ("b", "m/3"),
        (10, old, None),
        &mut source(b"short", 5),
    );
    assert!(e.is_err());
    assert!(!f.dir.path().join("s2d1/b/m/3").exists());
    assert!(
        std::fs::read_dir(f.dir.path().join("s2d1/b/m"))
            .unwrap()
            .count()
            == 2,
        "no temp left"
    );
    // A disk the node does not serve.
    let e = c.migrate(
        "n2",
        ("s1/d1", "s1/d0"),
        ("b", "m/4"),
        (1, old, None),
        &mut source(b"x", 1),
    );
    assert!(e.unwrap_err().is_usage());
}

/// A key of bucket `b` (under `prefix`) whose owner disk is node n2's.
fn owned_by_n2(f: &Fixture, prefix: &str) -> (String, String) {
    let c = f.cluster("n2");
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .map(|k| {
            let p = ferry::cluster::partition_of(b"b", k.as_bytes());
            (k, c.current.owner_key(p))
        })
        .find(|(_, d)| d.starts_with("s2/"))
        .unwrap()
}

#[test]
fn a_delete_at_the_owner_wins_over_a_copy_still_on_its_way() {
    let f = fixture(Limits::default());
    let c = f.client("n1");
    let (key, disk) = owned_by_n2(&f, "t/");
    let old = UNIX_EPOCH + Duration::new(1_600_000_000, 5);
    c.put("n2", &disk, ("b", &key), Some(2), &mut source(b"v0", 2))
        .unwrap();
    assert!(c.delete("n2", "b", &key, true).unwrap(), "the copy existed");
    let n2 = f.cluster("n2");
    let tomb = n2.deleted_at("b", key.as_bytes()).unwrap();
    assert!(tomb.is_some(), "the owner keeps a tombstone");
    // The copy that was on its way from n1 arrives: dropped, the key stays deleted.
    let late = c.migrate(
        "n2",
        (&disk, "s1/d0"),
        ("b", &key),
        (3, old, None),
        &mut source(b"old", 3),
    );
    assert_eq!(late.unwrap(), Migrated::Superseded);
    let path = n2.disk_path(&disk).unwrap().join("b").join(&key);
    assert!(!path.exists(), "a deleted key came back");
    match c.get("n2", "b", &key, None, false).unwrap() {
        Fetched::Deleted { at } => assert_eq!(Some(at), tomb),
        _ => panic!("a Get of the deleted key is not Deleted"),
    }
    let listed = c.list("n2", "b", "t/", None).unwrap();
    assert!(listed.items.is_empty(), "{:?}", listed.items);
    assert_eq!(listed.deleted, vec![(key.clone(), tomb.unwrap())]);
    // A copy written after the delete (newer than the tombstone) is stored.
    let newer = SystemTime::now() + Duration::from_secs(3600);
    let m = c.migrate(
        "n2",
        (&disk, "s1/d0"),
        ("b", &key),
        (3, newer, None),
        &mut source(b"new", 3),
    );
    assert_eq!(m.unwrap(), Migrated::Stored);
    assert_eq!(
        read_all(c.get("n2", "b", &key, None, true).unwrap()).2,
        b"new"
    );
    // A client's write after a delete clears the tombstone.
    let (k2, d2) = owned_by_n2(&f, "u/");
    assert!(!c.delete("n2", "b", &k2, true).unwrap());
    assert!(n2.deleted_at("b", k2.as_bytes()).unwrap().is_some());
    c.put("n2", &d2, ("b", &k2), Some(1), &mut source(b"w", 1))
        .unwrap();
    assert_eq!(n2.deleted_at("b", k2.as_bytes()).unwrap(), None);
    // Copies removed after a write elsewhere (no client's delete) leave no tombstone.
    let (k3, d3) = owned_by_n2(&f, "v/");
    c.put("n2", &d3, ("b", &k3), Some(1), &mut source(b"x", 1))
        .unwrap();
    assert!(c.delete("n2", "b", &k3, false).unwrap());
    assert_eq!(n2.deleted_at("b", k3.as_bytes()).unwrap(), None);
    assert!(matches!(
        c.get("n2", "b", &k3, None, false).unwrap(),
        Fetched::Missing
    ));
}

/// A tombstone of `b/key` deleted `at` under generation 1, handed to n2 alone: kept?
fn bury_one(c: &PeerClient, key: &str, at: SystemTime) -> bool {
    let kept = c.bury("n2", &[burial(key, at)]).unwrap();
    assert_eq!(kept.len(), 1);
    kept[0]
}

fn burial(key: &str, at: SystemTime) -> Burial {
    Burial {
        bucket: "b".into(),
        key: key.into(),
        at,
        generation: 1,
    }
}

/// `n` keys of bucket `b` under `prefix` whose owner disk is node n2's, with that disk.
fn many_owned_by_n2(f: &Fixture, prefix: &str, n: usize) -> Vec<(String, String)> {
    let c = f.cluster("n2");
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .map(|k| {
            let p = ferry::cluster::partition_of(b"b", k.as_bytes());
            (k, c.current.owner_key(p))
        })
        .filter(|(_, d)| d.starts_with("s2/"))
        .take(n)
        .collect()
}

/// Tombstones handed over in bounded batches: 10,001 of them (copies older and newer than
/// their deletes among them, the first key twice) reach n2 in at most ceil(n / MAX_BURY)
/// requests; each keeps its delete's time (the later of two), a copy no newer goes, a newer
/// one wins. A Bury of more than MAX_BURY tombstones is refused.
#[test]
fn tombstones_are_buried_in_bounded_batches_with_their_times() {
    let f = fixture(Limits::default());
    let c = f.client("n1");
    let keys = many_owned_by_n2(&f, "m/", 10_000);
    let n2 = f.cluster("n2");
    for (k, d) in &keys[..200] {
        c.put("n2", d, ("b", k), Some(1), &mut source(b"x", 1))
            .unwrap();
    }
    let (base, hour) = (SystemTime::now(), Duration::from_secs(3600));
    let newer = |i: usize| (100..200).contains(&i); // written after their delete
    let mut v: Vec<Burial> = keys
        .iter()
        .enumerate()
        .map(|(i, (k, _))| match newer(i) {
            true => burial(k, base - hour),
            false => burial(k, base + Duration::from_millis(i as u64)),
        })
        .collect();
    v.push(burial(&keys[0].0, base - hour)); // an earlier delete of the first key
    let before = f.nodes["n2"].server.requests();
    let kept = c.bury("n2", &v).unwrap();
    let requests = f.nodes["n2"].server.requests() - before;
    assert!(
        requests as usize <= v.len().div_ceil(MAX_BURY),
        "{requests} requests for {} tombstones",
        v.len()
    );
    assert_eq!(kept.len(), v.len());
    for (i, (k, d)) in keys.iter().enumerate() {
        assert_eq!(kept[i], !newer(i), "{k}: kept");
        let path = n2.disk_path(d).unwrap().join("b").join(k);
        assert_eq!(path.exists(), newer(i), "{k}: only a newer copy stays");
        let t = n2.deleted_at("b", k.as_bytes()).unwrap();
        assert_eq!(t, (!newer(i)).then_some(v[i].at), "{k}: the delete's time");
    }
    assert!(kept[keys.len()], "an earlier delete of a deleted key");
    assert_eq!(
        n2.deleted_at("b", keys[0].0.as_bytes()).unwrap(),
        Some(v[0].at),
        "the later of two"
    );
    let tls = ferry::net::tls::client_config(&f.tls("n1")).unwrap();
    let addr = f.nodes["n2"].server.addr.to_string();
    let t = Duration::from_secs(5);
    let mut w = Wire::connect(&addr, "n2", "n1", tls, t, t).unwrap();
    let over = vec![burial("m/x", base); MAX_BURY + 1];
    w.send(&Msg::Req(Req::Bury(over))).unwrap();
    match w.recv().unwrap() {
        Msg::Error { msg, .. } => assert!(msg.contains(&MAX_BURY.to_string()), "{msg}"),
        other => panic!("a Bury over the limit answered {other:?}"),
    }
    assert_eq!(n2.deleted_at("b", b"m/x").unwrap(), None);
}

/// A tombstone handed over by the node that kept it (Bury): at the key's new owner the copies
/// no newer than it go and it is kept with the delete's time (the later of two), so a copy of
/// the deleted version that arrives after is dropped; a copy written after the delete wins.
#[test]
fn a_buried_tombstone_keeps_its_time_and_drops_older_copies() {
    let f = fixture(Limits::default());
    let c = f.client("n1");
    let (key, disk) = owned_by_n2(&f, "w/");
    c.put("n2", &disk, ("b", &key), Some(2), &mut source(b"v0", 2))
        .unwrap();
    let n2 = f.cluster("n2");
    let path = n2.disk_path(&disk).unwrap().join("b").join(&key);
    let written = std::fs::metadata(&path).unwrap().modified().unwrap();
    let hour = Duration::from_secs(3600);
    assert!(!bury_one(&c, &key, written - hour));
    assert!(path.exists(), "a copy newer than the tombstone went");
    assert_eq!(n2.deleted_at("b", key.as_bytes()).unwrap(), None);
    let at = written + Duration::from_millis(1);
    assert!(bury_one(&c, &key, at));
    assert!(!path.exists(), "a copy no newer than the tombstone stayed");
    match c.get("n2", "b", &key, None, false).unwrap() {
        Fetched::Deleted { at: t } => assert_eq!(t, at, "the delete's time is kept"),
        _ => panic!("a Get of the buried key is not Deleted"),
    }
    let late = c.migrate(
        "n2",
        (&disk, "s1/d0"),
        ("b", &key),
        (3, written, None),
        &mut source(b"old", 3),
    );
    assert_eq!(late.unwrap(), Migrated::Superseded);
    assert!(bury_one(&c, &key, written - hour));
    assert_eq!(
        n2.deleted_at("b", key.as_bytes()).unwrap(),
        Some(at),
        "the later one"
    );
}

#[test]
fn a_body_whose_xxh3_differs_is_never_named() {
    let f = fixture(Limits::default());
    let tls = ferry::net::tls::client_config(&f.tls("n1")).unwrap();
    let addr = f.nodes["n2"].server.addr.to_string();
    let t = Duration::from_secs(5);
    let mut w = Wire::connect(&addr, "n2", "n1", tls, t, t).unwrap();
    let req = Req::Put {
        disk: "s2/d0".into(),
        bucket: "b".into(),
        key: "h".into(),
        size: Some(3),
    };
    w.queue(&Msg::Req(req)).unwrap();
    w.queue_data(b"abc").unwrap();
    w.send(&Msg::End {
        len: 3,
        hash: 12345,
    })
    .unwrap();
    match w.recv().unwrap() {
        Msg::Error { msg, .. } => assert!(msg.contains("xxh3"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(!f.dir.path().join("s2d0/b/h").exists());
}

#[test]
fn only_peers_with_the_cluster_ca_and_their_own_name_are_accepted() {
    let f = fixture(Limits::default());
    let other = f.dir.path().join("other");
    certs::init(&other).unwrap();
    certs::issue(&other, "n1", 0, 30).unwrap();
    let e = f
        .client_as(&other.join("n1"), "n1")
        .delete("n2", "b", "k", false)
        .unwrap_err();
    assert!(matches!(e.target, Target::Peer(_)), "{e}");
    // n3's certificate (our CA) claiming to be n1.
    let e = f
        .client_as(&f.tls("n3"), "n1")
        .delete("n2", "b", "k", false)
        .unwrap_err();
    assert!(e.to_string().contains("does not name node 'n1'"), "{e}");
    // n1's server answering for n2: the client checks the name it dialled.
    let mut addrs = f.addrs();
    addrs.insert("n2".into(), addrs["n1"].clone());
    let resolve = Box::new(move |n: &str| addrs.get(n).cloned().ok_or_else(|| n.to_string()));
    let c = PeerClient::new(&f.tls("n3"), "n3", resolve).unwrap();
    let e = c.delete("n2", "b", "k", false).unwrap_err();
    assert!(matches!(e.target, Target::Peer(_)), "{e}");
    assert!(
        f.client("n1").delete("n2", "b", "k", false).is_ok(),
        "the right peer is served"
    );
}

#[test]
fn a_node_that_is_down_or_busy_is_an_error_at_once() {
    let f = fixture(Limits {
        inflight: 0,
        ..Limits::default()
    });
    let c = f.client("n1");
    let e = c.delete("n2", "b", "k", false).unwrap_err();
    assert!(e.to_string().contains("too many requests"), "{e}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let resolve = Box::new(move |_: &str| Ok(closed.to_string()));
    let c = PeerClient::new(&f.tls("n1"), "n1", resolve).unwrap();
    let t = Instant::now();
    let e = c.get("n2", "b", "k", None, true).err().unwrap();
    assert!(matches!(e.target, Target::Peer(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let _ = SystemTime::now();
}

/// An agent restarted on another port (`--peer-listen HOST:0`) is reached at once through
/// the member record in etcd: an address that does not answer is looked up again.
#[test]
fn a_node_restarted_on_another_address_is_reached_at_once() {
    use ferry::agent::{ClusterStore, MemStore, keys::Keys};
    let mut f = fixture(Limits::default());
    let store = Arc::new(MemStore::default());
    let keys = Keys::new("t").unwrap();
    let record = |addr: &str| {
        let v = serde_json::json!({"node": "n2", "addr": "x", "weight": 1.0, "pid": 1,
            "instance": "i", "started_ms": 0, "peer": addr});
        store
            .put(&keys.member("n2"), &serde_json::to_vec(&v).unwrap(), 0)
            .unwrap();
    };
    record(&f.addrs()["n2"]);
    let resolve = ferry::agent::peer::client::etcd_resolver(store.clone(), Keys::new("t").unwrap());
    let c = PeerClient::new(&f.tls("n1"), "n1", resolve).unwrap();
    assert!(!c.bucket("n2", BucketOp::Exists, "b").unwrap());
    // n2 restarts on a new port and says so in its member record
    let n2 = f.nodes.remove("n2").unwrap();
    let cell = n2.cell.clone();
    drop(n2.server);
    let tls = ferry::net::tls::server_config(&f.tls("n2")).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = server::start(l, tls, ("n2", cell.clone()), None, Limits::default()).unwrap();
    record(&server.addr.to_string());
    let t = Instant::now();
    let r = c.bucket("n2", BucketOp::Exists, "b");
    assert!(r.is_ok(), "n2 at its new address: {:?}", r.err());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    f.nodes.insert("n2".into(), Node { cell, server });
}

/// A source that yields `first` bytes, then waits until `gate` is released (or dropped),
/// then yields the rest: a body that stalls mid-way, holding its request's slots.
fn gated(
    data: Vec<u8>,
    first: usize,
    gate: std::sync::mpsc::Receiver<()>,
) -> impl FnMut() -> std::io::Result<Option<Bytes>> {
    let mut at = 0;
    move || {
        if at == first {
            let _ = gate.recv();
        }
        if at >= data.len() {
            return Ok(None);
        }
        let n = if at < first { first } else { data.len() } - at;
        at += n;
        Ok(Some(Bytes::copy_from_slice(&data[at - n..at])))
    }
}

/// Waits until `n2` has received `n` requests (each counted before it takes any slot).
fn received(f: &Fixture, n: u64) {
    let t = Instant::now();
    while f.nodes["n2"].server.requests() < n {
        let got = f.nodes["n2"].server.requests();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{got} of {n} requests"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100)); // past its slot checks
}

/// Migrations take at most `Limits::migrations` of a node's in-flight requests, and one
/// waiting for its turn holds none: with every migration slot held by stalled bodies and a
/// third migration waiting, a client's stalled Put and a Get are still served; the waiting
/// migration is stored once a slot is freed.
#[test]
fn migrations_waiting_for_a_slot_leave_the_clients_theirs() {
    let f = fixture(Limits {
        inflight: 4,
        migrations: 2,
        ..Limits::default()
    });
    let old = UNIX_EPOCH + Duration::new(1_600_000_000, 0);
    let body = pattern(600 << 10);
    let c = Arc::new(f.client("n1"));
    c.put("n2", "s2/d1", ("b", "g/1"), Some(3), &mut source(b"get", 3))
        .unwrap();
    let base = f.nodes["n2"].server.requests();
    let mut gates = Vec::new();
    let mut moving = Vec::new();
    for i in 0..3u64 {
        let (tx, rx) = std::sync::mpsc::channel();
        gates.push(tx);
        let (c, body) = (c.clone(), body.clone());
        moving.push(std::thread::spawn(move || {
            let key = format!("m/{i}");
            let len = body.len() as u64;
            let mut src = gated(body, 300 << 10, rx);
            c.migrate(
                "n2",
                ("s2/d0", "s1/d0"),
                ("b", &key),
                (len, old, None),
                &mut src,
            )
        }));
        received(&f, base + i + 1);
    }
    // Two migrations hold their slots mid-body; the third waits for one.
    let (ptx, prx) = std::sync::mpsc::channel();
    let put = {
        let (c, body) = (c.clone(), body.clone());
        std::thread::spawn(move || {
            let mut src = gated(body, 300 << 10, prx);
            c.put("n2", "s2/d1", ("b", "p/1"), Some(600 << 10), &mut src)
        })
    };
    received(&f, base + 4);
    let t = Instant::now();
    let got = c
        .get("n2", "b", "g/1", None, true)
        .expect("a client's Get is served");
    assert_eq!(read_all(got).2, b"get");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let waiting = f.dir.path().join("s2d0/b/m/2");
    assert!(!waiting.exists(), "the third migration waits for a slot");
    ptx.send(()).unwrap();
    assert!(put.join().unwrap().is_ok(), "the client's Put");
    for g in &gates {
        g.send(()).unwrap();
    }
    for (i, m) in moving.into_iter().enumerate() {
        let r = m.join().unwrap();
        assert_eq!(r.unwrap(), Migrated::Stored, "migration {i}");
        let p = f.dir.path().join(format!("s2d0/b/m/{i}"));
        assert_eq!(std::fs::read(&p).unwrap(), body, "m/{i}");
    }
    assert_eq!(
        std::fs::read(f.dir.path().join("s2d1/b/p/1")).unwrap(),
        body
    );
}

fn object<'a>(key: &'a str, body: &[u8], mtime: SystemTime) -> ferry::cluster::migrate::Object<'a> {
    ferry::cluster::migrate::Object {
        from: "s1/d0",
        bucket: "b",
        key: key.as_bytes(),
        size: body.len() as u64,
        mtime,
        hash: xxhash_rust::xxh3::xxh3_64(body),
    }
}

/// Temp files under `dir` (`ferry::temp::is_temp_name`), recursively.
fn temps_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(temps_under(&p));
        } else if ferry::temp::is_temp_name(e.file_name().as_encoded_bytes()) {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_batch_of_migrated_copies_lands_each_once_and_a_bad_body_names_none() {
    use ferry::cluster::migrate::{Migrate as _, Outcome};
    use std::io::Read;
    let f = fixture(Limits::default());
    let c = f.client("n1");
    let old = UNIX_EPOCH + Duration::new(1_600_000_000, 7);
    // A client's newer write of m/b is at the owner before its old copy arrives.
    c.put("n2", "s2/d1", ("b", "m/b"), Some(3), &mut source(b"new", 3))
        .unwrap();
    let (a, b) = (pattern(70_000), b"old".to_vec());
    let (oa, ob, oa2) = (
        object("m/a", &a, old),
        object("m/b", &b, old),
        object("m/a", &a, old),
    );
    let (mut ra, mut rb, mut ra2) = (&a[..], &b[..], &a[..]);
    let mut items: Vec<(&str, _, &mut dyn Read)> = vec![
        ("s2/d1", &oa, &mut ra),
        ("s2/d1", &ob, &mut rb),
        ("s2/d0", &oa2, &mut ra2), // the same key twice in one batch: its stripe locked once
    ];
    let got = c.migrate_many("n2", &mut items).unwrap();
    let got: Vec<_> = got.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(got, [Outcome::Stored, Outcome::Superseded, Outcome::Stored]);
    let root = f.dir.path();
    for d in ["s2d1", "s2d0"] {
        let p = root.join(d).join("b/m/a");
        assert_eq!(std::fs::read(&p).unwrap(), a, "{d}: the copy's bytes");
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), old);
    }
    assert_eq!(
        std::fs::read(root.join("s2d1/b/m/b")).unwrap(),
        b"new",
        "the write won"
    );
    let reg = f.cluster("n2");
    let r = reg.registry.as_ref().unwrap();
    assert_eq!(r.forwarding(b"b/m/a").unwrap().unwrap().from, "s1/d0");
    // A disk n2 does not serve, second in a batch: an error for the whole batch, the first
    // copy is not named either.
    let (oc, od) = (object("m/c", b"cc", old), object("m/d", b"dd", old));
    let (mut rc, mut rd) = (&b"cc"[..], &b"dd"[..]);
    let mut items: Vec<(&str, _, &mut dyn Read)> =
        vec![("s2/d0", &oc, &mut rc), ("s1/d1", &od, &mut rd)];
    assert!(c.migrate_many("n2", &mut items).unwrap_err().is_usage());
    assert!(!root.join("s2d0/b/m/c").exists());
    // The second body's xxh3 differs from what its End says: none of the batch is named.
    let tls = ferry::net::tls::client_config(&f.tls("n1")).unwrap();
    let addr = f.nodes["n2"].server.addr.to_string();
    let t = Duration::from_secs(5);
    let mut w = Wire::connect(&addr, "n2", "n1", tls, t, t).unwrap();
    let head = |key: &str| ferry::agent::peer::msg::Migrate {
        disk: "s2/d0".into(),
        from: "s1/d0".into(),
        bucket: "b".into(),
        key: key.into(),
        size: 3,
        mtime: old,
    };
    w.queue(&Msg::Req(Req::MigrateMany(vec![head("m/e"), head("m/f")])))
        .unwrap();
    for (body, hash) in [(b"eee", xxhash_rust::xxh3::xxh3_64(b"eee")), (b"fff", 1)] {
        w.queue_data(body).unwrap();
        w.send(&Msg::End { len: 3, hash }).unwrap();
    }
    match w.recv().unwrap() {
        Msg::Error { msg, .. } => assert!(msg.contains("xxh3"), "{msg}"),
        other => panic!("{other:?}"),
    }
    for k in ["m/c", "m/e", "m/f"] {
        assert!(!root.join("s2d0/b").join(k).exists(), "{k} named");
    }
    assert_eq!(temps_under(root), Vec::<PathBuf>::new(), "temps left");
}

/// A batch whose keys this node holds (here: a lock taken by hand, as a sender of this node
/// moving the other way would hold it) gives up within the lock wait instead of waiting on
/// it: an error for the whole batch, nothing named, no temp left; then it lands.
#[test]
fn a_batch_whose_keys_are_held_here_gives_up_and_names_nothing() {
    use ferry::cluster::migrate::{Migrate as _, Outcome};
    use std::io::Read;
    let f = fixture(Limits::default());
    let c = f.client("n1");
    let old = UNIX_EPOCH + Duration::new(1_600_000_000, 9);
    let (oa, ob) = (object("h/a", b"aa", old), object("h/b", b"bb", old));
    let n2 = f.cluster("n2");
    let held = n2.lock("b", b"h/b");
    let start = Instant::now();
    let (mut ra, mut rb) = (&b"aa"[..], &b"bb"[..]);
    let mut items: Vec<(&str, _, &mut dyn Read)> =
        vec![("s2/d0", &oa, &mut ra), ("s2/d0", &ob, &mut rb)];
    let e = c.migrate_many("n2", &mut items).unwrap_err();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "waited {took:?}: {e}");
    assert!(e.to_string().contains("one by one"), "{e}");
    let root = f.dir.path();
    assert!(!root.join("s2d0/b/h/a").exists() && !root.join("s2d0/b/h/b").exists());
    assert_eq!(temps_under(root), Vec::<PathBuf>::new(), "temps left");
    drop(held);
    let (mut ra, mut rb) = (&b"aa"[..], &b"bb"[..]);
    let mut items: Vec<(&str, _, &mut dyn Read)> =
        vec![("s2/d0", &oa, &mut ra), ("s2/d0", &ob, &mut rb)];
    let got: Vec<_> = c
        .migrate_many("n2", &mut items)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got, [Outcome::Stored, Outcome::Stored]);
    assert_eq!(std::fs::read(root.join("s2d0/b/h/b")).unwrap(), b"bb");
}
