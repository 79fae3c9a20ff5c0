//! Background work yields the CPU to client requests: a migration's threads run at a lower
//! scheduling priority (nice), so on a busy node the scheduler serves a client's request the
//! moment it is runnable, within microseconds, where the pace controller (`coord::pace`) only
//! acts once a window. Nice does not cap anything: an idle CPU still goes to the migration,
//! so it keeps what is left over.
//!
//! Linux nice is per thread and inherited by the threads a thread creates, so lowering the
//! job's coordinating thread lowers its reactors, committer and senders too.

use std::sync::OnceLock;

/// The nice value of background threads: CFS gives a nice-10 thread about 1/10 of the CPU a
/// nice-0 one gets while both want it (weights 110 vs 1024), and all of it when alone.
pub const NICE: i32 = 10;

/// The calling thread's id (nice is set per thread: PRIO_PROCESS with a tid).
fn tid() -> libc::id_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() as libc::id_t }
}

fn set_nice(v: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall on this thread's id.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid(), v) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn nice() -> i32 {
    // getpriority can return -1 as a value: errno tells an error apart (none is possible for
    // the calling thread's own id).
    // SAFETY: plain syscall on this thread's id.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, tid()) }
}

/// Lowers the calling thread (and the threads it creates from now on) for good. A failure
/// changes nothing but the priority, so it is said once and the work goes on.
pub fn lower_this_thread() {
    if let Err(e) = set_nice(NICE.max(nice())) {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("ferry: setpriority(nice {NICE}) for background work: {e}"));
    }
}

/// Whether this process may raise a thread's priority back (root, CAP_SYS_NICE or an
/// RLIMIT_NICE that allows it): only then is a shared thread lowered for one request. Probed
/// once, on a thread of its own (a failed probe leaves only that thread lowered).
fn can_restore() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::spawn(|| {
            let start = nice();
            set_nice(start + 1).is_ok() && set_nice(start).is_ok() && nice() == start
        })
        .join()
        .unwrap_or(false)
    })
}

/// A thread that serves both clients and migrations (a peer connection) runs one migration
/// request lowered; dropping the guard restores it. Where the priority could not be raised
/// back, nothing is lowered (the thread's next request may be a client's).
pub struct Lowered(Option<i32>);

impl Lowered {
    pub fn enter() -> Lowered {
        if !can_restore() {
            return Lowered(None);
        }
        let was = nice();
        match was < NICE && set_nice(NICE).is_ok() {
            true => Lowered(Some(was)),
            false => Lowered(None),
        }
    }
}

impl Drop for Lowered {
    fn drop(&mut self) {
        if let Some(was) = self.0
            && let Err(e) = set_nice(was)
        {
            // can_restore said this works: a failure is a bug worth seeing, not a panic.
            eprintln!("ferry: setpriority(nice {was}) after a migration request: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_request_is_restored_and_a_lowered_thread_stays_low_with_its_children() {
        std::thread::spawn(|| {
            let start = nice();
            {
                let _g = Lowered::enter();
                if can_restore() {
                    assert_eq!(nice(), NICE.max(start));
                }
            }
            assert_eq!(nice(), start, "the guard restores the thread's priority");
            lower_this_thread();
            assert_eq!(nice(), NICE.max(start));
            let child = std::thread::spawn(nice).join().unwrap();
            assert_eq!(child, NICE.max(start), "threads created later inherit it");
        })
        .join()
        .unwrap();
    }
}
