//! Standard output for reports, JSON lines and listings. A reader that goes away
//! (`ferry copy --json | head`) is not the job's failure: the job goes on, and what it would
//! still print is dropped. Any other write error (a full disk under a redirect) is said once
//! on stderr. `println!` would panic on both.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` (and a newline when `newline`) to stdout and flushes it.
pub fn write(args: std::fmt::Arguments, newline: bool) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut o = std::io::stdout().lock();
    let r = o
        .write_fmt(args)
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| o.flush());
    if let Err(e) = r
        && !CLOSED.swap(true, Ordering::Relaxed)
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("ferry: write to standard output: {e}; nothing more is printed there");
    }
}

/// `println!` that survives a closed or failing stdout (see the module's doc).
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*), true) };
}

/// `print!` that survives a closed or failing stdout.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*), false) };
}
