//! Assignment of the 65,536 partitions per strategy: time to compute at 10, 50 and 200 members
//! (median of `RUNS`, a cold start and an N-1 → N re-assignment with the previous owners), the
//! fraction of partitions that move for N → N+1, and the balance (largest and smallest share
//! against the fair one). `cargo run --release --example assign_bench`.

use ferry::agent::assign::{Member, Strategy, by_name, counts};
use std::time::{Duration, Instant};

const RUNS: usize = 9;
const P: usize = 65536;

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            name: format!("node{i:03}"),
            // the weighted strategy sees weights 1, 2, 3, 1, 2, 3, ...
            weight: 1.0 + (i % 3) as f64,
            incarnation: 1,
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// This thread's CPU time: on a shared machine it counts only our work, not the waits.
fn cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// (median wall time, median CPU time) of `runs` calls.
fn time(runs: usize, f: impl Fn() -> Vec<u16>) -> (Duration, Duration) {
    let (mut wall, mut busy) = (vec![], vec![]);
    for _ in 0..runs {
        let (t, c) = (Instant::now(), cpu());
        std::hint::black_box(f());
        wall.push(t.elapsed());
        busy.push(cpu() - c);
    }
    (median(wall), median(busy))
}

/// Fraction of partitions whose owner (by name) differs.
fn moved(a: &[Member], oa: &[u16], b: &[Member], ob: &[u16]) -> f64 {
    let n = (0..P)
        .filter(|&p| a[oa[p] as usize].name != b[ob[p] as usize].name)
        .count();
    n as f64 / P as f64
}

/// (smallest, largest) share of a member against its fair share (weight-proportional for
/// `weighted`, equal for the others).
fn balance(s: &dyn Strategy, m: &[Member], owners: &[u16]) -> (f64, f64) {
    let c = counts(owners, m.len());
    let total: f64 = m.iter().map(|x| x.weight).sum();
    let fair = |i: usize| {
        if s.name() == "weighted" {
            m[i].weight / total * P as f64
        } else {
            P as f64 / m.len() as f64
        }
    };
    let r: Vec<f64> = (0..m.len()).map(|i| c[i] as f64 / fair(i)).collect();
    (
        r.iter().cloned().fold(f64::MAX, f64::min),
        r.iter().cloned().fold(0.0, f64::max),
    )
}

fn main() {
    println!(
        "{:<12} {:>7} {:>16} {:>16} {:>12} {:>22}",
        "strategy",
        "members",
        "cold ms wall/cpu",
        "N-1→N wall/cpu",
        "moved N→N+1",
        "share min/max of fair"
    );
    for name in ["hash", "round-robin", "weighted"] {
        let s = by_name(name).unwrap();
        for n in [10usize, 50, 200] {
            let (a, b, c) = (members(n - 1), members(n), members(n + 1));
            let none = |_: u16| None;
            let cold = time(RUNS, || s.assign(&b, &none));
            let oa = s.assign(&a, &none);
            let prev_a = |p: u16| Some(a[oa[p as usize] as usize].name.clone());
            let warm = time(RUNS, || s.assign(&b, &prev_a));
            let ob = s.assign(&b, &prev_a);
            let prev_b = |p: u16| Some(b[ob[p as usize] as usize].name.clone());
            let oc = s.assign(&c, &prev_b);
            let (lo, hi) = balance(&*s, &b, &ob);
            println!(
                "{:<12} {:>7} {:>7.1} / {:>6.1} {:>7.1} / {:>6.1} {:>11.2}% {:>13.3} / {:.3}",
                name,
                n,
                cold.0.as_secs_f64() * 1e3,
                cold.1.as_secs_f64() * 1e3,
                warm.0.as_secs_f64() * 1e3,
                warm.1.as_secs_f64() * 1e3,
                moved(&b, &ob, &c, &oc) * 100.0,
                lo,
                hi
            );
        }
    }
}
