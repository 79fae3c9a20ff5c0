//! Rebalance: exactly the misplaced objects move, to their owners, nothing is lost across
//! kill -9, client writes and deletes during the move win, a changed generation is refused on
//! resume, and a full owner disk pauses the job. Disks are loop-device ext4/xfs filesystems
//! (scripts/mkdisks.sh) when root, plain directories otherwise (said on stderr).

mod common;
use common::*;
use ferry::cluster::rebalance::{self, Options};
use ferry::cluster::store::{Cluster, object_path};
use ferry::cluster::{Topology, partition_of};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// N disks: loop devices when possible; removed (unmounted) on drop.
struct Disks {
    dir: PathBuf,
    paths: Vec<PathBuf>,
    _t: tempfile::TempDir,
}

impl Disks {
    fn new(n: usize, size_mb: usize) -> Disks {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("disks");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mkdisks.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .arg(n.to_string())
            .arg(size_mb.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let paths: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .collect();
        assert_eq!(paths.len(), n);
        Disks { dir, paths, _t: t }
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mkdisks.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg("--remove")
            .arg(&self.dir)
            .status();
    }
}

/// A topology: one set per listed disk index, ("active"|"draining", weight).
fn topo(generation: u64, disks: &Disks, sets: &[(usize, &str, f64)]) -> Topology {
    let sets: Vec<serde_json::Value> = sets
        .iter()
        .map(|&(i, state, w)| {
            serde_json::json!({"id": format!("s{i}"), "state": state, "weight": w,
                "disks": [{"id": format!("d{i}"), "path": disks.paths[i]}]})
        })
        .collect();
    let v = serde_json::json!({"generation": generation, "pools": [{"id": "p", "sets": sets}]});
    let t = Topology::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
    // Each disk proves it is the disk (written once; later topologies find it there).
    ferry::cluster::identity::init(&t, Path::new("test topology")).unwrap();
    t
}

/// `n` equal active sets, one per disk 0..n.
fn equal(generation: u64, disks: &Disks, n: usize) -> Topology {
    let sets: Vec<(usize, &str, f64)> = (0..n).map(|i| (i, "active", 1.0)).collect();
    topo(generation, disks, &sets)
}

fn save(t: &Topology, p: &Path) -> PathBuf {
    fs::write(p, serde_json::to_vec(t).unwrap()).unwrap();
    p.to_path_buf()
}

fn content(i: usize, version: u64) -> Vec<u8> {
    pattern((i * 2971) % 60_000 + 1, i as u64 * 1000 + version)
}

/// Puts `n` objects under `t`; returns key -> expected bytes.
fn fill(t: &Topology, n: usize) -> HashMap<String, Vec<u8>> {
    let c = Cluster::new(t.clone(), None, None);
    let mut m = HashMap::new();
    for i in 0..n {
        let key = format!("dir{}/obj{i}", i % 7);
        let data = content(i, 0);
        c.put("bkt", key.as_bytes(), &data).unwrap();
        m.insert(key, data);
    }
    m
}

/// Every live key exactly once, on its owner under `t`, with its bytes; nothing else.
fn assert_placed(t: &Topology, disks: &Disks, want: &HashMap<String, Vec<u8>>) {
    let placed = ferry::cluster::store::Placed::new(t.clone());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, d) in disks.paths.iter().enumerate() {
        let mut errors = Vec::new();
        ferry::cluster::store::walk_objects(d, &mut errors, &mut |b, k, _| {
            let key = String::from_utf8(k.to_vec()).unwrap();
            assert_eq!(b, "bkt");
            let p = partition_of(b.as_bytes(), k);
            assert_eq!(
                placed.owner(p).id,
                format!("d{i}"),
                "{key} is on d{i}, not on its owner"
            );
            *seen.entry(key).or_default() += 1;
        });
        assert!(
            errors.is_empty() || !t.sets().any(|s| s.disks[0].path == *d),
            "{errors:?}"
        );
    }
    for (k, data) in want {
        assert_eq!(seen.get(k), Some(&1), "{k} must exist exactly once");
        let p = partition_of(b"bkt", k.as_bytes());
        let path = object_path(&placed.owner(p).path, "bkt", k.as_bytes());
        assert_eq!(&fs::read(&path).unwrap(), data, "{k} has the wrong bytes");
    }
    assert_eq!(
        seen.len(),
        want.len(),
        "objects nobody put (or deleted ones) exist"
    );
}

/// Starts a rebalance (state and registry under `state`; `bwlimit` 0 = unthrottled).
fn start(
    from: &Path,
    to: &Path,
    state: &Path,
    bwlimit: u64,
) -> (ferry::JobHandle, Arc<Cluster>, Arc<rebalance::Counters>) {
    let opts = Options::new(from.into(), to.into(), state.join("registry.redb"));
    let mut spec = ferry::CopySpec::new(vec![], PathBuf::new());
    spec.state_dir = Some(state.to_path_buf());
    spec.bwlimit = bwlimit;
    let mut parts = None;
    let h = ferry::Job::start_with(|| {
        let (p, cluster, counters) = rebalance::prepare(&opts, spec)?;
        parts = Some((cluster, counters));
        Ok(p)
    })
    .unwrap();
    let (cluster, counters) = parts.unwrap();
    (h, cluster, counters)
}

/// A rebalance run to its end.
fn run(from: &Path, to: &Path, state: &Path) -> (ferry::Report, Arc<rebalance::Counters>) {
    let (h, _, counters) = start(from, to, state, 0);
    let r = within(Duration::from_secs(120), move || h.wait());
    (r, counters)
}

fn scan_misplaced(from: &Topology, to: &Topology) -> u64 {
    let table = ferry::cluster::PartitionTable::build(to, ferry::cluster::Strategy::Rendezvous, 0);
    ferry::cluster::plan::scan(from, to, &table).misplaced_objects
}

#[test]
fn adding_and_draining_sets_move_exactly_the_misplaced_objects() {
    let disks = Disks::new(6, 320);
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let g1 = equal(1, &disks, 4);
    let want = fill(&g1, 2000);
    // 1: a fifth set joins.
    let g2 = equal(2, &disks, 5);
    let misplaced = scan_misplaced(&g1, &g2);
    let (f1, f2) = (
        save(&g1, &t.path().join("g1.json")),
        save(&g2, &t.path().join("g2.json")),
    );
    let (r, c) = run(&f1, &f2, &state);
    assert!(r.ok(), "{:?}", r.errors);
    assert_eq!(r.files, misplaced, "moved exactly the misplaced objects");
    assert_eq!(
        c.misplaced.load(std::sync::atomic::Ordering::Relaxed),
        misplaced
    );
    // About a fifth of the objects move (ideal 2000/5 = 400).
    assert!((300..=500).contains(&r.files), "moved {}", r.files);
    assert_placed(&g2, &disks, &want);
    // 2: right after, set 1 drains and a sixth joins: two changes in a row.
    let g3 = topo(
        3,
        &disks,
        &[
            (0, "active", 1.0),
            (1, "draining", 1.0),
            (2, "active", 1.0),
            (3, "active", 1.0),
            (4, "active", 1.0),
            (5, "active", 2.0),
        ],
    );
    let f3 = save(&g3, &t.path().join("g3.json"));
    let misplaced = scan_misplaced(&g2, &g3);
    let (r, _) = run(&f2, &f3, &state);
    assert!(r.ok(), "{:?}", r.errors);
    assert_eq!(r.files, misplaced);
    assert_placed(&g3, &disks, &want);
    let mut on_drained = 0;
    ferry::cluster::store::walk_objects(&disks.paths[1], &mut Vec::new(), &mut |_, _, _| {
        on_drained += 1
    });
    assert_eq!(on_drained, 0, "a draining set empties completely");
    // Nothing misplaced: a rerun moves nothing.
    let (r, c) = run(&f2, &f3, &state);
    assert!(r.ok());
    assert_eq!(
        (
            r.files,
            c.misplaced.load(std::sync::atomic::Ordering::Relaxed)
        ),
        (0, 0)
    );
    // A generation that does not grow is refused.
    let opts = Options::new(f3.clone(), f2.clone(), state.join("registry.redb"));
    let e = rebalance::prepare(&opts, ferry::CopySpec::new(vec![], PathBuf::new()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("generation"), "{e}");
}

#[test]
fn client_writes_and_deletes_during_a_rebalance_win_and_reads_never_fail() {
    let disks = Disks::new(5, 320);
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let g1 = equal(1, &disks, 4);
    let mut want = fill(&g1, 1500);
    let g2 = topo(
        2,
        &disks,
        &[
            (0, "active", 1.0),
            (1, "active", 1.0),
            (2, "active", 1.0),
            (3, "active", 1.0),
            (4, "active", 2.0),
        ],
    );
    let (f1, f2) = (
        save(&g1, &t.path().join("g1.json")),
        save(&g2, &t.path().join("g2.json")),
    );
    // Throttled to ~2-3 s of moving, so the client overlaps it.
    let (h, cluster, _) = start(&f1, &f2, &state, 8 << 20);
    let keys: Vec<String> = {
        let mut k: Vec<String> = want.keys().cloned().collect();
        k.sort();
        k
    };
    let mut rng = ferry::demo::XorShift(0xc11e47);
    let (mut writes, mut deletes, mut reads) = (0, 0, 0);
    let mut deleted = std::collections::HashSet::new();
    while !h.is_finished() {
        let i = (rng.next_u64() % keys.len() as u64) as usize;
        let k = &keys[i];
        match rng.next_u64() % 20 {
            // ~5 % of operations overwrite, ~2.5 % delete; the rest read.
            0 if !deleted.contains(k) => {
                let data = content(i, 1 + writes as u64);
                cluster.put("bkt", k.as_bytes(), &data).unwrap();
                want.insert(k.clone(), data);
                writes += 1;
            }
            1 if rng.next_u64().is_multiple_of(2) && !deleted.contains(k) => {
                assert!(cluster.rm("bkt", k.as_bytes()).unwrap(), "{k} existed");
                want.remove(k);
                deleted.insert(k.clone());
                deletes += 1;
            }
            _ => {
                let got = cluster.get("bkt", k.as_bytes()).unwrap();
                match want.get(k) {
                    Some(data) => assert_eq!(
                        got.as_ref(),
                        Some(data),
                        "read of live {k} failed or was stale"
                    ),
                    None => assert!(got.is_none(), "deleted {k} came back"),
                }
                reads += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let r = within(Duration::from_secs(120), move || h.wait());
    eprintln!(
        "client during the rebalance: {writes} writes, {deletes} deletes, {reads} reads; moved {}",
        r.files
    );
    assert!(r.ok(), "{:?}", r.errors);
    assert!(
        writes >= 10 && deletes >= 5 && reads >= 100,
        "the client did not overlap the move"
    );
    drop(cluster);
    assert_placed(&g2, &disks, &want);
}

/// `ferry rebalance --from F1 --to F2 --state-dir STATE EXTRA...`.
fn rebalance_args(f: (&Path, &Path), state: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec![
        "rebalance".into(),
        "--from".into(),
        f.0.into(),
        "--to".into(),
        f.1.into(),
    ];
    v.extend(["--state-dir".into(), state.into()]);
    v.extend(extra.iter().map(|s| s.into()));
    v
}

/// Every object of `want` intact somewhere (maybe twice: copied, source not yet deleted);
/// (how many are in two places, how many are at their owner under `placed`).
fn intact_somewhere(
    disks: &Disks,
    want: &HashMap<String, Vec<u8>>,
    placed: &ferry::cluster::store::Placed,
) -> (usize, usize) {
    let mut found: HashMap<String, usize> = HashMap::new();
    for d in &disks.paths {
        ferry::cluster::store::walk_objects(d, &mut Vec::new(), &mut |_, k, _| {
            let key = String::from_utf8(k.to_vec()).unwrap();
            let data = fs::read(object_path(d, "bkt", k)).unwrap();
            assert_eq!(
                Some(&data),
                want.get(&key),
                "{key} damaged on {}",
                d.display()
            );
            *found.entry(key).or_default() += 1;
        });
    }
    for k in want.keys() {
        assert!(found.contains_key(k), "{k} is lost");
    }
    let at_owner = want
        .keys()
        .filter(|k| {
            let p = partition_of(b"bkt", k.as_bytes());
            object_path(&placed.owner(p).path, "bkt", k.as_bytes()).exists()
        })
        .count();
    (found.values().filter(|&&n| n > 1).count(), at_owner)
}

/// Runs the rebalance (`args` with these extra flags) and kills it -9 after 100-500 ms, for
/// up to 40 rounds, `check`ing the disks after each kill; the kills that landed mid-run (it
/// stops at 20, or once a run finished before its kill).
fn kill_rounds(
    args: &dyn Fn(&[&str]) -> Vec<std::ffi::OsString>,
    rate: &str,
    check: &dyn Fn() -> (usize, usize),
) -> usize {
    let mut rng = ferry::demo::XorShift(0x4eba1);
    kills_mid_run(40, 20, |round| {
        let io = if round % 2 == 0 { "auto" } else { "sync" };
        let mut cmd = Command::new(BIN);
        cmd.args(args(&["--bwlimit", rate, "--ops-limit", "30", "--io", io]));
        let delay = 100 + rng.next_u64() % 400;
        let finished = killed_after(&mut cmd, Duration::from_millis(delay));
        let (twice, at_owner) = check();
        eprintln!(
            "round {round}: killed after {delay} ms: {at_owner} objects at their owner, {twice} in two places"
        );
        finished
    })
}

#[test]
fn kill_9_during_a_rebalance_loses_nothing_and_resume_finishes() {
    let disks = Disks::new(5, 320);
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let g1 = equal(1, &disks, 4);
    let want = fill(&g1, 1200);
    let g2 = topo(
        2,
        &disks,
        &[
            (0, "active", 1.0),
            (1, "draining", 1.0),
            (2, "active", 1.0),
            (3, "active", 1.0),
            (4, "active", 1.0),
        ],
    );
    let (f1, f2) = (
        save(&g1, &t.path().join("g1.json")),
        save(&g2, &t.path().join("g2.json")),
    );
    let total: usize = want.values().map(|v| v.len()).sum();
    let rate = format!("{}", total / 40); // the moved part (~40 %) takes ~16 s
    let args = |extra: &[&str]| rebalance_args((&f1, &f2), &state, extra);
    let placed2 = ferry::cluster::store::Placed::new(g2.clone());
    let check = || intact_somewhere(&disks, &want, &placed2);
    let kills = kill_rounds(&args, &rate, &check);
    assert!(kills >= 20, "only {kills} kills landed mid-rebalance");
    // Another generation is refused while this one is unfinished; the same finishes it.
    let g3 = topo(
        3,
        &disks,
        &[
            (0, "active", 1.0),
            (2, "active", 1.0),
            (3, "active", 1.0),
            (4, "active", 1.0),
        ],
    );
    let f3 = save(&g3, &t.path().join("g3.json"));
    fs::copy(&f3, &f2).unwrap();
    let out = ferry(&args(&[]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--fresh"), "{}", stderr(&out));
    save(&g2, &f2);
    let out = ferry(&args(&[]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(check(), (0, want.len()));
    assert_placed(&g2, &disks, &want);
}

#[test]
fn a_full_owner_disk_pauses_the_rebalance_and_loses_nothing() {
    if !is_root() {
        eprintln!("SKIP: a disk that fills up needs a loop-device filesystem (root)");
        return;
    }
    let disks = Disks::new(5, 320);
    if !disks.dir.join("images").exists() {
        eprintln!("SKIP: no loop devices here (plain directories do not fill up)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let g1 = equal(1, &disks, 4);
    let want = fill(&g1, 1000);
    let g2 = equal(2, &disks, 5);
    // The new disk has ~2 MiB left; about 6 MB must move onto it.
    let filler = disks.paths[4].join("filler");
    let free = {
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(disks.paths[4].as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C string and out-pointer.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        s.f_bavail * s.f_frsize
    };
    write_file(&filler, (free - (2 << 20)) as usize, 5);
    let (f1, f2) = (
        save(&g1, &t.path().join("g1.json")),
        save(&g2, &t.path().join("g2.json")),
    );
    let (h, _, _) = start(&f1, &f2, &state, 0);
    let events = h.events().unwrap();
    let start = std::time::Instant::now();
    loop {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(ferry::job::Event::DestinationFull { .. }) => break,
            Ok(_) => {}
            Err(_) => assert!(
                start.elapsed() < Duration::from_secs(30) && !h.is_finished(),
                "no destination-full pause: {:?}",
                h.status()
            ),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.state(), ferry::coord::state::JobState::Paused);
    assert_eq!(h.status().failed, 0);
    // Nothing lost while paused: every object intact somewhere.
    let mut found = std::collections::HashSet::new();
    for d in &disks.paths {
        ferry::cluster::store::walk_objects(d, &mut Vec::new(), &mut |_, k, _| {
            let key = String::from_utf8(k.to_vec()).unwrap();
            if key != "filler" {
                assert_eq!(
                    Some(&fs::read(object_path(d, "bkt", k)).unwrap()),
                    want.get(&key)
                );
                found.insert(key);
            }
        });
    }
    assert_eq!(found.len(), want.len());
    fs::remove_file(&filler).unwrap();
    h.resume().unwrap();
    let r = within(Duration::from_secs(60), move || h.wait());
    assert!(r.ok(), "{:?}", r.errors);
    assert_placed(&g2, &disks, &want);
}
