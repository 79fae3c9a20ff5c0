//! Group checks: many threads that each need the answer of a fresh check (one begun after
//! they asked) share one run of it, like a group commit. A caller that arrives while a check
//! is running waits for the next one, so its answer never predates its call.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Condvar, Mutex};

pub struct Group<T> {
    st: Mutex<St<T>>,
    cv: Condvar,
}

struct St<T> {
    /// Checks finished so far.
    done: u64,
    running: bool,
    last: Option<T>,
}

impl<T: Clone> Default for Group<T> {
    fn default() -> Self {
        Group {
            st: Mutex::new(St {
                done: 0,
                running: false,
                last: None,
            }),
            cv: Condvar::new(),
        }
    }
}

impl<T: Clone> Group<T> {
    /// The answer of a run of `check` that began after this call (this thread's own run, or
    /// another caller's that began later than this call did).
    pub fn run(&self, check: impl FnOnce() -> T) -> T {
        let mut st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        // A check running now began before us: ours is the one after it.
        let want = st.done + 1 + u64::from(st.running);
        let mut check = Some(check);
        loop {
            if st.done >= want {
                return st.last.clone().expect("set by the run that counted");
            }
            if st.running {
                st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.running = true;
            drop(st);
            let f = check.take().expect("a caller runs at most one check");
            let r = f();
            st = self.st.lock().unwrap_or_else(|p| p.into_inner());
            st.done += 1;
            st.running = false;
            st.last = Some(r);
            self.cv.notify_all();
        }
    }
}

/// One `Group` per key (e.g. per directory: an fsync of one directory covers only the names
/// in it). A key's group lives while a caller uses it, so the map holds at most as many keys
/// as there are callers at once.
pub struct Keyed<K, T> {
    groups: Mutex<HashMap<K, Arc<Group<T>>>>,
}

impl<K: Eq + Hash + Clone, T: Clone> Default for Keyed<K, T> {
    fn default() -> Self {
        Keyed {
            groups: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, T: Clone> Keyed<K, T> {
    /// `Group::run` on the group of `key`: the answer of a run of `check` for that key begun
    /// after this call.
    pub fn run(&self, key: &K, check: impl FnOnce() -> T) -> T {
        let g = {
            let mut m = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(key.clone()).or_default().clone()
        };
        let r = g.run(check);
        let mut m = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and this caller hold it (others take it under the map's lock): no one
        // waits on it, it goes.
        if Arc::strong_count(&g) == 2 {
            m.remove(key);
        }
        r
    }

    /// Keys with a group now (callers in `run`).
    pub fn len(&self) -> usize {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Group commits of items: each caller hands in one item (or a few), and a run takes every
/// item handed in before it began, so an item is in exactly one run, begun after its call;
/// all the run's callers get its answer. Every caller must pass the same work: whoever comes
/// first while no run is going runs it, for all. A run holds at most the items of the callers
/// there at once (each waits for its answer).
pub struct Batch<I, T> {
    st: Mutex<BatchSt<I, T>>,
    cv: Condvar,
}

struct BatchSt<I, T> {
    /// Items handed in for the next run (number `begun + 1`), by `callers` callers.
    pending: Vec<I>,
    callers: usize,
    begun: u64,
    running: bool,
    /// Answers of finished runs not yet taken by every caller: run -> (answer, callers left).
    answers: HashMap<u64, (T, usize)>,
}

impl<I, T> Default for Batch<I, T> {
    fn default() -> Self {
        Batch {
            st: Mutex::new(BatchSt {
                pending: Vec::new(),
                callers: 0,
                begun: 0,
                running: false,
                answers: HashMap::new(),
            }),
            cv: Condvar::new(),
        }
    }
}

impl<I, T: Clone> Batch<I, T> {
    /// The answer of the run that took `item` (begun after this call).
    pub fn run(&self, item: I, work: impl FnOnce(Vec<I>) -> T) -> T {
        self.run_many(vec![item], work)
    }

    /// `run` of several items at once (at least one): all in the same run.
    pub fn run_many(&self, items: Vec<I>, work: impl FnOnce(Vec<I>) -> T) -> T {
        assert!(!items.is_empty(), "a caller hands in at least one item");
        let mut st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        st.pending.extend(items);
        st.callers += 1;
        let mine = st.begun + 1;
        let mut work = Some(work);
        loop {
            if let Some((t, left)) = st.answers.get_mut(&mine) {
                let t = t.clone();
                *left -= 1;
                if *left == 0 {
                    st.answers.remove(&mine);
                }
                return t;
            }
            if !st.running && st.begun < mine {
                st.running = true;
                st.begun = mine;
                let items = std::mem::take(&mut st.pending);
                let n = std::mem::take(&mut st.callers);
                assert!(
                    n > 0 && items.len() >= n,
                    "a run takes at least its leader's items"
                );
                drop(st);
                let t = (work.take().expect("a caller leads at most one run"))(items);
                st = self.st.lock().unwrap_or_else(|p| p.into_inner());
                st.running = false;
                st.answers.insert(mine, (t, n));
                self.cv.notify_all();
                continue;
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[test]
    fn an_answer_never_predates_its_call_and_waiting_callers_share_a_run() {
        let g = Arc::new(Group::<u64>::default());
        let clock = Arc::new(AtomicU64::new(0));
        let runs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (g, clock, runs) = (g.clone(), clock.clone(), runs.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let asked = clock.fetch_add(1, Ordering::SeqCst);
                        let began = g.run(|| {
                            runs.fetch_add(1, Ordering::SeqCst);
                            let t = clock.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_micros(300));
                            t
                        });
                        assert!(
                            began > asked,
                            "a check begun at {began} answered a call at {asked}"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = runs.load(Ordering::SeqCst);
        assert!(
            n < 16 * 50,
            "callers shared no run ({n} runs for 800 calls)"
        );
        assert!(n > 0);
    }

    #[test]
    fn every_item_is_in_exactly_one_run_begun_after_its_call_and_callers_share_runs() {
        let b = Arc::new(Batch::<(u64, u64), u64>::default());
        let clock = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let runs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..16u64)
            .map(|i| {
                let (b, clock, seen, runs) = (b.clone(), clock.clone(), seen.clone(), runs.clone());
                std::thread::spawn(move || {
                    for j in 0..50u64 {
                        let asked = clock.fetch_add(1, Ordering::SeqCst);
                        let work = |items: Vec<(u64, u64)>| {
                            runs.fetch_add(1, Ordering::SeqCst);
                            let t = clock.fetch_add(1, Ordering::SeqCst);
                            seen.lock().unwrap().extend(items);
                            std::thread::sleep(Duration::from_micros(300));
                            t
                        };
                        // half the callers hand in two items at once
                        let began = match i % 2 {
                            0 => b.run((i, j), work),
                            _ => b.run_many(vec![(i, j), (i + 100, j)], work),
                        };
                        assert!(
                            began > asked,
                            "a run begun at {began} took a call at {asked}"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut all = seen.lock().unwrap().clone();
        all.sort();
        let mut want: Vec<_> = (0..16).flat_map(|i| (0..50).map(move |j| (i, j))).collect();
        want.extend(
            (1..16)
                .step_by(2)
                .flat_map(|i| (0..50).map(move |j| (i + 100, j))),
        );
        want.sort();
        assert_eq!(all, want, "every item once");
        let n = runs.load(Ordering::SeqCst);
        assert!(
            n < 16 * 50,
            "callers shared no run ({n} runs for 800 items)"
        );
        assert!(
            b.st.lock().unwrap().answers.is_empty(),
            "answers left behind"
        );
    }

    #[test]
    fn a_lone_caller_runs_its_own_check_each_time() {
        let g = Group::<u32>::default();
        let mut k = 0;
        for i in 1..=3 {
            assert_eq!(
                g.run(|| {
                    k += 1;
                    k
                }),
                i
            );
        }
    }

    #[test]
    fn keyed_runs_share_only_within_a_key_never_predate_the_call_and_leave_no_key() {
        let k = Arc::new(Keyed::<u8, (u64, u8)>::default());
        let clock = Arc::new(AtomicU64::new(0));
        let runs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..16u8)
            .map(|i| {
                let (k, clock, runs) = (k.clone(), clock.clone(), runs.clone());
                std::thread::spawn(move || {
                    let key = i % 2;
                    for _ in 0..40 {
                        let asked = clock.fetch_add(1, Ordering::SeqCst);
                        let (t, of) = k.run(&key, || {
                            runs.fetch_add(1, Ordering::SeqCst);
                            let t = clock.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_micros(300));
                            (t, key)
                        });
                        assert_eq!(of, key, "an answer of another key's run");
                        assert!(t > asked, "a run begun at {t} answered a call at {asked}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = runs.load(Ordering::SeqCst);
        assert!(
            n < 16 * 40,
            "callers shared no run ({n} runs for 640 calls)"
        );
        assert!(n >= 2, "each key ran its own check");
        assert!(
            k.is_empty(),
            "{} keys left after every caller returned",
            k.len()
        );
    }
}
