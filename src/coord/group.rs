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
