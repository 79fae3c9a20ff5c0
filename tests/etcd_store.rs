//! The etcd `ClusterStore` against a real etcd: ranges, compare-and-swap, leases with expiry,
//! member failover, and deadlines on a frozen member.

mod etcd_harness;

use etcd_harness::Etcd;
use ferry::agent::etcd::EtcdStore;
use ferry::agent::{ClusterStore, Cmp, Op};
use std::time::{Duration, Instant};

fn put(key: &str, value: &str, lease: i64) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease,
    }
}

#[test]
fn kv_txn_and_leases_on_real_etcd() {
    let Some(etcd) = Etcd::start(1) else { return };
    let s = EtcdStore::new(&etcd.urls(), Duration::from_secs(2)).unwrap();
    let r1 = s.put("/t/a", b"1", 0).unwrap();
    s.put("/t/b", b"2", 0).unwrap();
    s.put("/u", b"x", 0).unwrap();
    let snap = s.range("/t/", false).unwrap();
    let keys: Vec<&str> = snap.kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["/t/a", "/t/b"]);
    assert_eq!(snap.kvs[0].value, b"1");
    assert!(s.range("/t/", true).unwrap().kvs[0].value.is_empty());
    // compare-and-swap on the modification revision
    let (ok, r2) = s
        .txn(&[Cmp::ModRev("/t/a".into(), r1)], &[put("/t/a", "3", 0)])
        .unwrap();
    assert!(ok && r2 > r1);
    let (ok, _) = s
        .txn(&[Cmp::ModRev("/t/a".into(), r1)], &[put("/t/a", "4", 0)])
        .unwrap();
    assert!(!ok, "a stale revision is refused");
    assert_eq!(s.get("/t/a").unwrap().unwrap().value, b"3");
    // election: create-revision 0 compare, lease-bound; expiry frees it
    let l1 = s.grant(1).unwrap();
    let l2 = s.grant(5).unwrap();
    let absent = [Cmp::CreateRev("/t/leader".into(), 0)];
    assert!(s.txn(&absent, &[put("/t/leader", "a", l1)]).unwrap().0);
    assert!(!s.txn(&absent, &[put("/t/leader", "b", l2)]).unwrap().0);
    assert!(s.keepalive(l1).unwrap() >= 1);
    assert!(s.time_left(l2).unwrap() > 0);
    let start = Instant::now();
    while s.get("/t/leader").unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "lease never expired"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.keepalive(l1).unwrap(), 0, "an expired lease renews to 0");
    assert!(s.txn(&absent, &[put("/t/leader", "b", l2)]).unwrap().0);
    s.revoke(l2).unwrap();
    assert!(
        s.get("/t/leader").unwrap().is_none(),
        "revoke deletes the lease's keys"
    );
    assert!(
        s.put("/t/x", b"1", l2).is_err(),
        "a put on a dead lease fails"
    );
}

/// A frozen member costs one request deadline and a dead one a refused connect; with no
/// member left the call fails within its limit. Followers are frozen and stopped (a lost raft
/// leader would add an election, whose length load decides), and every bound is in units of
/// the configured deadline, so load slows etcd's answers but cannot fail the bounds.
#[test]
fn frozen_and_dead_members_cost_a_timeout_not_a_hang() {
    let Some(mut etcd) = Etcd::start(3) else {
        return;
    };
    let leader = etcd.wait_leader(Duration::from_secs(20));
    let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);
    // the client tries the followers first: f1 (to be frozen), then f2 (to be stopped)
    let urls = [f1, f2, leader]
        .map(|i| etcd.members[i].client.clone())
        .join(",");
    let t = Duration::from_millis(1000);
    let s = EtcdStore::new(&urls, t).unwrap();
    s.put("/k", b"v", 0).unwrap();
    let pid = etcd.pid(f1) as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let start = Instant::now();
    let got = s.get("/k");
    let took = start.elapsed();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(got.unwrap().unwrap().value, b"v");
    // one deadline lost on the frozen member, then an answer from one of the others
    assert!(took >= t, "the frozen member was skipped unasked: {took:?}");
    assert!(took < s.call_limit(), "{took:?}");
    // the member the client now talks to dies: two of three still serve
    etcd.stop(f2);
    let start = Instant::now();
    assert!(
        s.put("/k", b"w", 0).is_ok(),
        "two of three members still serve"
    );
    assert!(start.elapsed() < s.call_limit(), "{:?}", start.elapsed());
    etcd.stop(f1);
    etcd.stop(leader);
    let start = Instant::now();
    let e = s.get("/k").unwrap_err();
    assert!(e.unavailable, "{e}");
    let took = start.elapsed();
    // refused connects: it retries for its window (twice the deadline), no longer
    assert!(
        took >= 2 * t - Duration::from_millis(200) && took < s.call_limit(),
        "{took:?}"
    );
}
