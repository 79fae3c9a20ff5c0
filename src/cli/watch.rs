//! Following a running job: progress, errors, events, the report and the exit status.

use ferry::Exit;
use ferry::job::Event;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::progress::{Ending, Render, renderer};

/// Durably replaced, so a reader never sees half a report.
fn write_report(path: &std::path::Path, report: &ferry::Report) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    ferry::coord::durable::replace(path, &body, 0o666)
}

/// `--metrics ADDR`, bound before the job starts: an address in use is bad input (said here).
pub fn bind_metrics(cmd: &str, addr: Option<&str>) -> Result<Option<std::net::TcpListener>, ()> {
    let Some(addr) = addr else { return Ok(None) };
    ferry::job::metrics::bind(addr)
        .map(Some)
        .map_err(|e| eprintln!("ferry {cmd}: --metrics {addr}: {e}"))
}

/// SIGINT/SIGTERM: stop cleanly (temp files removed, checkpoint written); a second SIGINT
/// exits at once.
pub fn on_signals() -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, interrupted.clone());
        let _ = signal_hook::flag::register(sig, interrupted.clone());
    }
    interrupted
}

/// How to show a running job.
pub struct Watch {
    /// The command's name for messages: copy, move, rebalance.
    pub cmd: &'static str,
    pub json: bool,
    pub quiet: bool,
    pub report: Option<PathBuf>,
    pub dry_run: bool,
    pub migrating: bool,
    /// Extra lines after the summary (rebalance counters), and their JSON.
    pub summary: Option<Box<dyn Fn() -> (String, serde_json::Value)>>,
}

/// Shows progress until the job ends, prints the report; the exit status.
pub fn watch(
    handle: ferry::JobHandle,
    a: &Watch,
    listener: Option<std::net::TcpListener>,
    interrupted: &AtomicBool,
) -> ExitCode {
    let job_id = handle.job_id().map(str::to_string);
    let metrics = match listener.map(|l| ferry::job::metrics::serve_on(l, handle.control())) {
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            // Only a thread that could not start: the copy runs anyway, said loudly.
            eprintln!("ferry {}: --metrics: {e}", a.cmd);
            None
        }
        None => None,
    };
    let mut out = renderer(a.cmd, a.json, a.quiet, a.migrating);
    out.start(job_id.as_deref());
    let events = handle.events().expect("events taken once");
    let (stopping, shown) = follow(&handle, &events, out.as_mut(), interrupted);
    out.clear();
    let report = handle.wait();
    if let Some(m) = metrics {
        let _ = m.join(); // it sees the final state and stops within 20 ms
    }
    for ev in events.try_iter() {
        out.event(&ev);
    }
    finish(
        out.as_mut(),
        shown,
        a,
        report,
        stopping,
        job_id.unwrap_or_default(),
    )
}

/// Until the job has finished: errors as they happen, events, progress once a second; the
/// first SIGINT/SIGTERM cancels it. Whether it was stopped by a signal, and the errors shown.
fn follow(
    handle: &ferry::JobHandle,
    events: &Receiver<Event>,
    out: &mut dyn Render,
    interrupted: &AtomicBool,
) -> (bool, usize) {
    let (mut stopping, mut shown) = (false, 0);
    let mut last_progress = Instant::now();
    loop {
        let finished = handle.is_finished();
        if interrupted.load(Ordering::Relaxed) && !stopping {
            stopping = true;
            let _ = handle.cancel();
        }
        for e in handle.errors_since(shown) {
            out.error(&e);
            shown += 1;
        }
        for ev in events.try_iter() {
            out.event(&ev);
        }
        if last_progress.elapsed() >= Duration::from_secs(1) || finished {
            out.progress(&handle.status(), finished);
            last_progress = Instant::now();
        }
        if finished {
            return (stopping, shown);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Prints what is left of the errors, the report (JSON: always the last line), and says how
/// the job ended; the exit status.
fn finish(
    out: &mut dyn Render,
    shown: usize,
    a: &Watch,
    report: ferry::Report,
    stopping: bool,
    job_id: String,
) -> ExitCode {
    if let Some(path) = &a.report
        && let Err(e) = write_report(path, &report)
    {
        eprintln!("ferry {}: report '{}': {e}", a.cmd, path.display());
    }
    for e in report.errors.iter().skip(shown) {
        out.error(e);
    }
    if report.failed as usize > report.errors.len() {
        eprintln!(
            "ferry {}: {} more errors not shown",
            a.cmd,
            report.failed as usize - report.errors.len()
        );
    }
    out.end(&Ending {
        report: &report,
        job_id: &job_id,
        dry_run: a.dry_run,
        stopping,
        extra: a.summary.as_ref().map(|f| f()),
    });
    if stopping {
        eprintln!(
            "ferry {}: interrupted, run the same command to resume",
            a.cmd
        );
        return Exit::Interrupted.into();
    }
    if report.cancelled {
        eprintln!(
            "ferry {}: job {job_id} cancelled; finished files are kept, run the same command to resume",
            a.cmd
        );
    }
    if !report.ok() {
        Exit::Failed.into()
    } else if report.cancelled {
        Exit::Cancelled.into()
    } else {
        Exit::Ok.into()
    }
}
