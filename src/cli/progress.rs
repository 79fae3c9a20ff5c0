//! How a running job is shown: one `Render` trait, three renderers (a progress bar with plain
//! lines, JSON lines on stdout for `--json`, errors only for `-q`).

use ferry::Report;
use ferry::job::{Event, Progress};

/// What the end of a job prints besides the errors.
pub struct Ending<'a> {
    pub report: &'a Report,
    pub job_id: &'a str,
    pub dry_run: bool,
    /// SIGINT/SIGTERM stopped the job: no summary (it is resumable).
    pub stopping: bool,
    /// Extra lines after the summary (rebalance counters), and their JSON.
    pub extra: Option<(String, serde_json::Value)>,
}

/// A renderer of one running job. Errors go to stderr in every mode.
pub trait Render {
    /// The job started (its id, if it has one).
    fn start(&mut self, _job_id: Option<&str>) {}
    /// One error, each shown once.
    fn error(&mut self, msg: &str);
    /// One job event (state change, rate change, ...).
    fn event(&mut self, _ev: &Event) {}
    /// The job's progress, about once a second (and once more when it has finished).
    fn progress(&mut self, _p: &Progress, _finished: bool) {}
    /// The job has finished: take down anything drawn on the terminal.
    fn clear(&mut self) {}
    /// The report; for JSON always the last line.
    fn end(&mut self, e: &Ending);
}

/// `--json`, else `-q`, else the bar (drawn only when stderr is a terminal).
pub fn renderer(cmd: &'static str, json: bool, quiet: bool, migrating: bool) -> Box<dyn Render> {
    use std::io::IsTerminal;
    if json {
        Box::new(Json { cmd, migrating })
    } else if quiet {
        Box::new(Quiet { cmd })
    } else {
        let bar = std::io::stderr().is_terminal().then(spinner);
        Box::new(Human {
            cmd,
            migrating,
            bar,
        })
    }
}

fn spinner() -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .expect("static template"),
    );
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

/// A rebalance's Running state is shown as "migrating".
fn state_name(migrating: bool, n: &'static str) -> &'static str {
    if migrating && n == "running" {
        "migrating"
    } else {
        n
    }
}

fn dry_run_line(r: &Report) {
    for t in &r.targets {
        ferry::outln!("dry run: '{}' -> '{}'", t.source, t.target);
    }
    ferry::outln!(
        "dry run: would copy {} files ({} bytes), {} hard links, {} dirs, {} symlinks, {} special files",
        r.files,
        r.bytes,
        r.hardlinks,
        r.dirs,
        r.symlinks,
        r.specials
    );
}

/// JSON lines on stdout (and errors on stderr too).
struct Json {
    cmd: &'static str,
    migrating: bool,
}

impl Json {
    fn line(&self, mut v: serde_json::Value) {
        for k in ["state", "from", "to"] {
            if v.get(k).and_then(|x| x.as_str()) == Some("running") {
                v[k] = state_name(self.migrating, "running").into();
            }
        }
        ferry::outln!("{v}")
    }
}

impl Render for Json {
    fn start(&mut self, job_id: Option<&str>) {
        self.line(
            serde_json::json!({"event": "start", "job_id": job_id, "pid": std::process::id()}),
        );
    }

    fn error(&mut self, msg: &str) {
        eprintln!("ferry {}: {msg}", self.cmd);
        self.line(serde_json::json!({"event": "error", "message": msg}));
    }

    fn event(&mut self, ev: &Event) {
        self.line(serde_json::to_value(ev).unwrap_or_default());
    }

    fn progress(&mut self, p: &Progress, finished: bool) {
        if !finished {
            let mut v = serde_json::to_value(p).unwrap_or_default();
            v["event"] = "progress".into();
            self.line(v);
        }
    }

    fn end(&mut self, e: &Ending) {
        let mut v = serde_json::to_value(e.report).unwrap_or_default();
        v["event"] = "report".into();
        if let Some((_, j)) = &e.extra {
            v["rebalance"] = j.clone();
        }
        self.line(v);
    }
}

/// `-q`: errors only (and a dry run's counts, which are its output).
struct Quiet {
    cmd: &'static str,
}

impl Render for Quiet {
    fn error(&mut self, msg: &str) {
        eprintln!("ferry {}: {msg}", self.cmd);
    }

    fn end(&mut self, e: &Ending) {
        if e.dry_run {
            dry_run_line(e.report);
        }
    }
}

/// A spinner with the durable progress on a terminal, plain lines otherwise.
struct Human {
    cmd: &'static str,
    migrating: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Render for Human {
    fn error(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("ferry {}: {msg}", self.cmd)),
            None => eprintln!("ferry {}: {msg}", self.cmd),
        }
    }

    fn progress(&mut self, p: &Progress, _finished: bool) {
        let Some(b) = &self.bar else { return };
        b.set_message(bar_message(p, state_name(self.migrating, p.state.name())));
    }

    fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn end(&mut self, e: &Ending) {
        say_rerun(e.report, e.job_id);
        if e.dry_run {
            dry_run_line(e.report);
        } else if !e.stopping {
            ferry::outln!("{}", e.report.summary());
            if let Some((text, _)) = &e.extra {
                ferry::outln!("{text}");
            }
        }
    }
}

/// Durable work only, so it never goes backwards.
fn bar_message(p: &Progress, state: &str) -> String {
    let eta = match p.eta_secs {
        Some(s) => format!(", ETA {}s", s.ceil() as u64),
        None => String::new(),
    };
    format!(
        "{state}: {}/{}{} files, {:.1} MB, {:.1} MB/s{eta}{}",
        p.files,
        p.found_files,
        if p.walk_done { "" } else { "+" },
        p.bytes as f64 / 1e6,
        p.bytes as f64 / 1e6 / p.elapsed_secs.max(1e-3),
        if p.failed > 0 {
            format!(", {} failed", p.failed)
        } else {
            String::new()
        }
    )
}

/// What an earlier run of the job had done already.
fn say_rerun(report: &ferry::Report, job_id: &str) {
    let clean = report.files == 0 && report.failed == 0 && !report.cancelled;
    if report.was_complete && report.moved_before > 0 && clean && report.resumed_files == 0 {
        ferry::outln!(
            "job {job_id} already complete: {} sources moved, nothing left to move",
            report.moved_before
        );
    } else if report.was_complete && clean {
        ferry::outln!(
            "job {job_id} already complete: {} files up to date",
            report.resumed_files
        );
    } else if report.was_complete {
        ferry::outln!(
            "job {job_id} was complete: {} files up to date, the rest brought up to date",
            report.resumed_files
        );
    } else if report.resumed_files > 0 {
        ferry::outln!(
            "resumed: {} files ({} bytes) were already done",
            report.resumed_files,
            report.resumed_bytes
        );
    }
}
