//! Job control: pause/resume/cancel/rate from the library and through `ferry ctl`, SIGINT, and
//! resume after kill -9 that redoes almost nothing.

mod common;
use common::*;
use ferry::coord::state::JobState;
use ferry::{CopySpec, Job};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tree(root: &Path, files: usize, size: usize) {
    fs::create_dir_all(root).unwrap();
    for i in 0..files {
        let d = root.join(format!("d{}", i % 5));
        fs::create_dir_all(&d).unwrap();
        write_file(&d.join(format!("f{i:04}")), size, i as u64);
    }
}

/// Bytes under `root` including temp files: what has been written so far.
fn written(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                use std::os::unix::fs::MetadataExt;
                total += m.blocks() * 512;
            }
        }
    }
    total
}

#[test]
fn pause_stops_writing_and_resume_finishes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 60, 1 << 20);
    let dst = t.path().join("dst");
    let mut spec = CopySpec::new(vec![src.clone()], dst.clone());
    spec.bwlimit = 20 << 20; // 60 MiB at 20 MiB/s: about 3 s
    spec.buffer_size = 256 << 10;
    let h = Job::start(spec).unwrap();
    let events = h.events().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let t0 = Instant::now();
    h.pause().unwrap();
    // Within 100 ms no new submission; in-flight I/O completes, then nothing more is written.
    std::thread::sleep(Duration::from_millis(150));
    let a = written(&dst);
    std::thread::sleep(Duration::from_millis(600));
    let b = written(&dst);
    assert_eq!(a, b, "bytes were written while paused");
    assert_eq!(h.state(), JobState::Paused);
    let st = h.status();
    assert!(st.walk_done && st.found_files == 60, "{st:?}");
    assert!(
        st.eta_secs.is_some_and(|e| e > 0.0),
        "an ETA once the walk is over: {st:?}"
    );
    assert!(h.pause().is_err(), "pausing twice is an invalid transition");
    assert!(t0.elapsed() < Duration::from_secs(5));
    h.resume().unwrap();
    let r = within(Duration::from_secs(60), move || h.wait());
    assert!(r.ok(), "{:?}", r.errors);
    assert_same_tree(&src, &dst);
    let states: Vec<JobState> = events
        .try_iter()
        .filter_map(|e| match e {
            ferry::job::Event::State { to, .. } => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        vec![
            JobState::Scanning,
            JobState::Running,
            JobState::Paused,
            JobState::Running,
            JobState::Completed
        ]
    );
}

#[test]
fn bwlimit_holds_the_rate_and_changes_apply_while_running() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 24, 1 << 20);
    let mut spec = CopySpec::new(vec![src.clone()], t.path().join("dst"));
    spec.bwlimit = 8 << 20; // 24 MiB at 8 MiB/s: 3 s
    spec.buffer_size = 128 << 10;
    let start = Instant::now();
    let r = within(Duration::from_secs(60), move || {
        Job::start(spec).unwrap().wait()
    });
    let secs = start.elapsed().as_secs_f64();
    assert!(r.ok());
    // The burst (a tenth of a second) lets the start run ahead a little.
    assert!(
        (2.6..3.6).contains(&secs),
        "24 MiB at 8 MiB/s took {secs:.2} s"
    );

    let mut spec = CopySpec::new(vec![src.clone()], t.path().join("dst2"));
    spec.bwlimit = 2 << 20;
    spec.buffer_size = 128 << 10;
    let start = Instant::now();
    let h = Job::start(spec).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    h.set_rate(0, 0); // unlimited from now on
    let r = within(Duration::from_secs(60), move || h.wait());
    assert!(r.ok());
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "the raised limit did not apply (24 MiB at 2 MiB/s would take 12 s)"
    );
}

#[test]
fn cancel_keeps_finished_files_and_the_same_job_resumes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 80, 256 << 10);
    let dst = t.path().join("dst");
    let state = t.path().join("state");
    let mk = || {
        let mut s = CopySpec::new(vec![src.clone()], dst.clone());
        s.state_dir = Some(state.clone());
        s
    };
    let mut spec = mk();
    spec.bwlimit = 4 << 20; // 20 MiB at 4 MiB/s: 5 s
    let h = Job::start(spec).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    h.cancel().unwrap();
    let r = within(Duration::from_secs(30), move || h.wait());
    assert!(r.cancelled);
    assert_eq!(r.failed, 0, "a cancel is not a failure: {:?}", r.errors);
    assert!(temp_files(&dst).is_empty(), "{:?}", temp_files(&dst));
    let done_before = r.files;
    assert!(done_before > 0 && done_before < 80, "copied {done_before}");
    // Every final name is complete.
    for i in 0..80 {
        let rel = format!("d{}/f{i:04}", i % 5);
        if dst.join(&rel).exists() {
            assert!(files_equal(&src.join(&rel), &dst.join(&rel)), "{rel}");
        }
    }
    // The same job again: resumes (skips what is done), lands in the same place.
    let spec2 = mk();
    let r = within(Duration::from_secs(60), move || {
        Job::start(spec2).unwrap().wait()
    });
    assert!(r.ok(), "{:?}", r.errors);
    assert_eq!(r.resumed_files, done_before);
    assert_eq!(r.files + r.resumed_files, 80);
    assert_same_tree(&src, &dst);
}

fn ferry_cmd(args: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

#[test]
fn ferry_ctl_and_jobs_steer_a_running_copy() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 40, 256 << 10);
    let dst = t.path().join("dst");
    let state = t.path().join("state");
    let child = ferry_cmd(&[
        "copy".as_ref(),
        "--bwlimit".as_ref(),
        "2M".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        src.as_os_str(),
        dst.as_os_str(),
    ])
    .spawn()
    .map(Spawned::new)
    .unwrap();
    let id = wait_for_socket(&state);
    let ctl = |cmd: &[&str]| {
        let mut a: Vec<&std::ffi::OsStr> = vec!["ctl".as_ref(), id.as_ref()];
        a.extend(cmd.iter().map(|s| std::ffi::OsStr::new(*s)));
        a.push("--state-dir".as_ref());
        a.push(state.as_os_str());
        let o = ferry_cmd(&a).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
    };
    assert_eq!(ctl(&["pause"]), (Some(0), "ok".to_string()));
    let (_, st) = ctl(&["status"]);
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["state"], "paused");
    let (code, reply) = ctl(&["bogus"]);
    assert_eq!(code, Some(2), "an unknown command is bad usage");
    assert!(reply.is_empty(), "errors go to stderr, not stdout: {reply}");
    let (code, reply) = ctl(&["pause"]);
    assert_eq!(code, Some(1), "pausing a paused job is refused");
    assert!(reply.is_empty(), "errors go to stderr, not stdout: {reply}");
    let jobs = ferry_cmd(&["jobs".as_ref(), "--state-dir".as_ref(), state.as_os_str()])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&jobs.stdout);
    assert!(
        listing.contains(&id) && listing.contains("running"),
        "{listing}"
    );
    assert_eq!(ctl(&["rate", "0"]).0, Some(0));
    assert_eq!(ctl(&["resume"]).0, Some(0));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&src, &dst);
    let (code, _) = ctl(&["status"]);
    assert_eq!(code, Some(1), "the job is over: no socket");
}

/// `ferry ctl ARGS... --state-dir STATE`: (exit code, stdout, stderr).
fn ctl_in(state: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut a: Vec<&std::ffi::OsStr> = vec!["ctl".as_ref()];
    a.extend(args.iter().map(|s| std::ffi::OsStr::new(*s)));
    a.push("--state-dir".as_ref());
    a.push(state.as_os_str());
    let o = ferry_cmd(&a).output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
        String::from_utf8_lossy(&o.stderr).trim().to_string(),
    )
}

/// `ferry jobs --state-dir STATE`: the line of job `id`.
fn jobs_line(state: &Path, id: &str) -> String {
    let o = ferry_cmd(&["jobs".as_ref(), "--state-dir".as_ref(), state.as_os_str()])
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    out.lines()
        .find(|l| l.contains(id))
        .unwrap_or_else(|| panic!("job {id} not listed: {out}"))
        .to_string()
}

/// A job killed with -9 is not shown as running: its lock is free, so it is `interrupted`
/// (rerun to resume), in `ferry jobs` and in `ferry ctl`; a finished job and an unknown id get
/// their own messages; every ctl error is on stderr with a non-zero exit.
#[test]
fn jobs_and_ctl_tell_live_killed_finished_and_unknown_jobs_apart() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 40, 256 << 10);
    let dst = t.path().join("dst");
    let state = t.path().join("state");
    let args = [
        "copy".as_ref(),
        "--bwlimit".as_ref(),
        "2M".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        src.as_os_str(),
        dst.as_os_str(),
    ];
    let mut child = ferry_cmd(&args).spawn().map(Spawned::new).unwrap();
    let id = wait_for_socket(&state);
    let live = jobs_line(&state, &id);
    assert!(
        live.contains("running") && !live.contains("interrupted"),
        "{live}"
    );
    let _ = child.kill(); // SIGKILL: no checkpoint update, the socket file stays
    let _ = child.wait();
    let dead = jobs_line(&state, &id);
    assert!(
        dead.contains("interrupted") && dead.contains("rerun") && !dead.contains("running"),
        "{dead}"
    );
    let (code, out, err) = ctl_in(&state, &[&id, "status"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("interrupted") && err.contains("resume"),
        "{err}"
    );
    let (code, out, err) = ctl_in(&state, &[&id, "rate"]);
    assert_eq!(code, Some(2), "a missing value is bad usage: {err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("rate needs a value") && !err.contains("unknown command"),
        "{err}"
    );
    let rerun: Vec<&std::ffi::OsStr> = args
        .iter()
        .copied()
        .filter(|a| *a != "2M" && *a != "--bwlimit")
        .collect();
    let o = ferry_cmd(&rerun).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(jobs_line(&state, &id).contains("completed"));
    let (code, out, err) = ctl_in(&state, &[&id, "status"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("job {id} completed at ")) && err.contains("not running"),
        "{err}"
    );
    let (code, out, err) = ctl_in(&state, &["0123456789abcdef", "status"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("no job 0123456789abcdef in {}", state.display())),
        "{err}"
    );
}

/// The JSON lines of a run's stdout.
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `ferry ctl JOB cancel` is not a failure: the copy exits 3 (its own code), reports
/// `"cancelled":true` with nothing failed, and the report event still comes last.
#[test]
fn a_cancelled_copy_exits_3_not_1() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 40, 256 << 10);
    let state = t.path().join("state");
    let child = ferry_cmd(&[
        "copy".as_ref(),
        "--json".as_ref(),
        "--bwlimit".as_ref(),
        "2M".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        src.as_os_str(),
        t.path().join("dst").as_os_str(),
    ])
    .spawn()
    .map(Spawned::new)
    .unwrap();
    let id = wait_for_socket(&state);
    let (code, _, err) = ctl_in(&state, &[&id, "cancel"]);
    assert_eq!(code, Some(0), "{err}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let lines = json_lines(&out);
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "report", "{last}");
    assert_eq!(last["cancelled"], true);
    assert_eq!(last["failed"], 0);
}

/// SIGINT/SIGTERM under --json: the run still ends with its `report` event (the README says
/// it comes last), and exits 130.
#[test]
fn json_ends_with_the_report_after_sigint_and_sigterm() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        tree(&src, 40, 256 << 10);
        let child = ferry_cmd(&[
            "copy".as_ref(),
            "--json".as_ref(),
            "--bwlimit".as_ref(),
            "2M".as_ref(),
            "--state-dir".as_ref(),
            t.path().join("state").as_os_str(),
            src.as_os_str(),
            t.path().join("dst").as_os_str(),
        ])
        .spawn()
        .map(Spawned::new)
        .unwrap();
        wait_for_socket(&t.path().join("state"));
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
        let lines = json_lines(&out);
        let last = lines.last().unwrap();
        assert_eq!(last["event"], "report", "signal {sig}: {last}");
    }
}

/// An `error` event is printed when the error happens, not gathered for the end: it comes
/// before any progress event that counts it, and each error is printed once.
#[test]
fn json_error_events_come_when_they_happen() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 40, 100 << 10);
    fs::write(
        src.join("a"),
        b"a file where the destination has a directory",
    )
    .unwrap();
    let dst = t.path().join("dst");
    fs::create_dir_all(dst.join("a")).unwrap();
    fs::write(dst.join("a/keep"), b"x").unwrap();
    // dst/. : the contents of src land in dst itself, so dst/a (a directory) is in the way.
    let mut into = src.clone().into_os_string();
    into.push("/.");
    let out = ferry(&[
        "copy".as_ref(),
        "--json".as_ref(),
        "--bwlimit".as_ref(),
        "1M".as_ref(),
        "--state-dir".as_ref(),
        t.path().join("state").as_os_str(),
        into.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = json_lines(&out);
    let at = |pred: &dyn Fn(&serde_json::Value) -> bool| lines.iter().position(pred);
    let error = at(&|v| v["event"] == "error").expect("an error event");
    let counted = at(&|v| v["event"] == "progress" && v["failed"].as_u64() >= Some(1))
        .expect("a progress event counts the failure (4 MB at 1 MB/s)");
    assert!(
        error < counted,
        "error event at line {error}, after {counted}"
    );
    let ended = at(&|v| v["event"] == "state" && v["to"] == "failed").unwrap();
    assert!(error < ended);
    assert_eq!(lines.iter().filter(|v| v["event"] == "error").count(), 1);
    assert_eq!(lines.last().unwrap()["event"], "report");
}

#[test]
fn sigint_checkpoints_and_the_same_command_resumes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 40, 256 << 10);
    let dst = t.path().join("dst");
    let state = t.path().join("state");
    let args = [
        "copy".as_ref(),
        "--bwlimit".as_ref(),
        "3M".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        src.as_os_str(),
        dst.as_os_str(),
    ];
    let child = ferry_cmd(&args).spawn().map(Spawned::new).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run the same command to resume"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(temp_files(&dst).is_empty());
    let a: Vec<&std::ffi::OsStr> = args
        .iter()
        .copied()
        .filter(|a| *a != "3M" && *a != "--bwlimit")
        .collect();
    let out = ferry_cmd(&a).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming job"));
    assert_same_tree(&src, &dst);
}

/// A job started by relative paths is the same job from another working directory: resumed by
/// absolute paths, it finishes in the place the first run was copying to (its checkpoint keeps
/// absolute paths), and a later run is not refused as "a different job spec".
#[test]
fn a_job_started_by_relative_paths_resumes_from_another_directory() {
    let t = tempfile::tempdir().unwrap();
    let here = t.path().join("here");
    let src = here.join("src");
    tree(&src, 40, 256 << 10);
    let state = t.path().join("state");
    let first = [
        "copy".as_ref(),
        "--bwlimit".as_ref(),
        "3M".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "src".as_ref(),
        "dst".as_ref(),
    ];
    let child = ferry_cmd(&first)
        .current_dir(&here)
        .spawn()
        .map(Spawned::new)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let dst = here.join("dst");
    let again = [
        "copy".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        src.as_os_str(),
        dst.as_os_str(),
    ];
    // From elsewhere (the directory holding `here`), where "src" and "dst" mean nothing.
    let out = ferry_cmd(&again).current_dir(t.path()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming job"), "{}", stderr(&out));
    assert_same_tree(&src, &dst);
    assert!(
        !t.path().join("dst").exists(),
        "nothing lands beside the working directory"
    );
    // And the finished job run again, relative from its first directory: not refused, and it
    // lands where its first run did (not in dst/src, though dst exists now).
    let out = ferry_cmd(&first).current_dir(&here).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dst.join("src").exists(), "a rerun nested into dst/src");
    assert_same_tree(&src, &dst);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("already complete: 40 files up to date"),
        "{text}"
    );
}

#[test]
fn kill_9_then_resume_redoes_almost_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 3000, 8 << 10);
    let dst = t.path().join("dst");
    let state = t.path().join("state");
    let mut rng = ferry::demo::XorShift(0x5eed);
    let total = 3000u64;
    for cycle in 0..20 {
        // 80 file operations/s: each cycle gets through at most ~100 files before the kill
        // (and commits some only when it outlives a group commit's 500 ms), so no cycle
        // finishes the job.
        let mut child = ferry_cmd(&[
            "copy".as_ref(),
            "--ops-limit".as_ref(),
            "80".as_ref(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            src.as_os_str(),
            dst.as_os_str(),
        ])
        .spawn()
        .map(Spawned::new)
        .unwrap();
        std::thread::sleep(Duration::from_millis(200 + rng.next_u64() % 1000));
        assert!(
            child.try_wait().unwrap().is_none(),
            "cycle {cycle} finished before the kill"
        );
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // No final name with partial data, ever.
        for i in 0..total as usize {
            let rel = format!("d{}/f{i:04}", i % 5);
            let p = dst.join(&rel);
            if p.exists() {
                assert!(
                    files_equal(&src.join(&rel), &p),
                    "cycle {cycle}: {rel} is partial"
                );
            }
        }
    }
    // Complete copies now: what the resume must not copy again (beyond the bound). A new
    // tree is built under a hidden name (`--temp auto`): nothing is under dst yet, the
    // complete copies are in the hidden tree.
    assert!(!dst.exists(), "the hidden tree got its name before the end");
    let hidden = hidden_trees(t.path());
    assert_eq!(hidden.len(), 1, "one hidden tree: {hidden:?}");
    let complete_before = (0..total as usize)
        .filter(|i| {
            let rel = format!("d{}/f{i:04}", i % 5);
            let p = hidden[0].join(&rel);
            p.exists() && files_equal(&src.join(&rel), &p)
        })
        .count() as u64;
    assert!(
        complete_before > 100,
        "the kill cycles made progress ({complete_before})"
    );
    // Finish and check everything.
    let out = ferry(&[
        "copy".as_ref(),
        "--json".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = report_line(&out);
    let resumed = v["resumed_files"].as_u64().unwrap();
    assert_eq!(resumed + v["files"].as_u64().unwrap(), total);
    // Complete files that were not skipped were copied again. Bound: what can be in flight
    // (2 reactors x 64 buffers) plus one checkpoint interval (1000).
    let redone = complete_before.saturating_sub(resumed);
    eprintln!("after 20 kills: {complete_before} complete, {resumed} skipped, {redone} redone");
    assert!(
        redone <= 2 * 64 + 1000,
        "redid {redone} of {complete_before} complete files"
    );
    assert_same_tree(&src, &dst);
    assert!(temp_files(&dst).is_empty());
}

#[test]
fn json_lines_carry_start_states_progress_and_report() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 10, 1 << 20);
    let out = ferry(&[
        "copy".as_ref(),
        "--json".as_ref(),
        "--bwlimit".as_ref(),
        "4M".as_ref(),
        "--state-dir".as_ref(),
        t.path().join("state").as_os_str(),
        src.as_os_str(),
        t.path().join("dst").as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = report_line(&out);
    assert_eq!(report["files"], 10);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let progress: Vec<u64> = lines
        .iter()
        .filter(|v| v["event"] == "progress")
        .map(|v| v["bytes"].as_u64().unwrap())
        .collect();
    assert!(
        !progress.is_empty(),
        "10 MiB at 4 MiB/s reports progress every second"
    );
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes backwards"
    );
    assert!(
        lines
            .iter()
            .any(|v| v["event"] == "state" && v["to"] == "completed"),
        "the final state change is reported"
    );
}

#[test]
fn report_file_has_latency_quantiles() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 20, 300 << 10);
    let rep = t.path().join("report.json");
    for fsync in ["batch", "file"] {
        let out = ferry(&[
            "copy".as_ref(),
            "-q".as_ref(),
            "--fsync".as_ref(),
            fsync.as_ref(),
            "--report".as_ref(),
            rep.as_os_str(),
            "--state-dir".as_ref(),
            t.path().join("state").as_os_str(),
            src.as_os_str(),
            t.path().join(format!("dst-{fsync}")).as_os_str(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&rep).unwrap()).unwrap();
        let l = &v["latency_us"];
        assert!(l["read"]["count"].as_u64().unwrap() >= 20, "{l}");
        assert_eq!(l["file"]["count"], 20, "{l}");
        assert_eq!(l["open"]["count"], 20, "{l}");
        for k in ["read", "write", "file"] {
            let q = &l[k];
            assert!(q["p50"].as_u64().unwrap() <= q["p99"].as_u64().unwrap());
            assert!(q["p99"].as_u64().unwrap() <= q["max"].as_u64().unwrap());
        }
        if fsync == "file" {
            assert_eq!(l["fsync"]["count"], 20);
        }
    }
}

/// A --metrics address that cannot be bound is bad input: a clear error and exit 2 before any
/// work (nothing copied, no job started), for copy and move alike.
#[test]
fn a_busy_metrics_address_fails_before_any_work() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 4, 4 << 10);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    for cmd in ["copy", "move"] {
        let dst = t.path().join(format!("dst-{cmd}"));
        let out = ferry(&[
            cmd.as_ref(),
            "--metrics".as_ref(),
            addr.as_ref(),
            "--state-dir".as_ref(),
            t.path().join("state").as_os_str(),
            src.as_os_str(),
            dst.as_os_str(),
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains("--metrics") && err.contains(&addr) && err.contains("in use"),
            "{cmd}: {err}"
        );
        assert!(!dst.exists(), "{cmd}: nothing is written");
        assert!(!t.path().join("state").exists(), "{cmd}: no job started");
    }
    assert_eq!(
        src.read_dir().unwrap().count(),
        4,
        "the move deleted nothing"
    );
}

#[test]
fn metrics_endpoint_serves_prometheus_text_while_running() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 8, 1 << 20);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = ferry_cmd(&[
        "copy".as_ref(),
        "--bwlimit".as_ref(),
        "4M".as_ref(),
        "--metrics".as_ref(),
        addr.as_ref(),
        "--state-dir".as_ref(),
        t.path().join("state").as_os_str(),
        src.as_os_str(),
        t.path().join("dst").as_os_str(),
    ])
    .spawn()
    .map(Spawned::new)
    .unwrap();
    let start = Instant::now();
    let body = loop {
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut b = String::new();
            s.read_to_string(&mut b).unwrap();
            break b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "metrics never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    assert!(body.contains("ferry_bytes_total "), "{body}");
    assert!(body.contains("ferry_state{state=\"running\"} 1"), "{body}");
    assert!(
        body.contains(&format!("ferry_bwlimit_bytes_per_second {}", 4 << 20)),
        "{body}"
    );
    assert!(
        body.contains("ferry_latency_us{kind=\"read\",quantile=\"0.99\"}"),
        "{body}"
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bwlimit_holds_within_five_percent_over_ten_seconds() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 40, 2 << 20);
    let mut spec = CopySpec::new(vec![src.clone()], t.path().join("dst"));
    spec.bwlimit = 8 << 20; // 80 MiB at 8 MiB/s: 10 s
    let start = Instant::now();
    let r = within(Duration::from_secs(60), move || {
        Job::start(spec).unwrap().wait()
    });
    let secs = start.elapsed().as_secs_f64();
    assert!(r.ok());
    let rate = (80u64 << 20) as f64 / secs;
    let err = (rate - (8u64 << 20) as f64).abs() / (8u64 << 20) as f64;
    assert!(
        err <= 0.05,
        "achieved {:.2} MiB/s for 8 MiB/s ({secs:.2} s)",
        rate / (1u64 << 20) as f64
    );
}

#[test]
fn retry_failed_copies_only_the_last_failures() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let uid = is_root().then_some(65534u32);
    let src = t.path().join("src");
    tree(&src, 30, 4096);
    let bad: Vec<String> = [3usize, 14, 25]
        .iter()
        .map(|i| format!("d{}/f{i:04}", i % 5))
        .collect();
    for b in &bad {
        fs::set_permissions(src.join(b), fs::Permissions::from_mode(0o000)).unwrap();
    }
    let out_dir = t.path().join("out");
    let state = t.path().join("state");
    fs::create_dir(&out_dir).unwrap();
    fs::create_dir(&state).unwrap();
    if is_root() {
        give_to_nobody(t.path(), &[&out_dir, &state]);
    }
    let dst = out_dir.join("dst");
    let run = |extra: &[&str]| {
        let mut a: Vec<&std::ffi::OsStr> =
            vec!["copy".as_ref(), "--state-dir".as_ref(), state.as_os_str()];
        a.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
        a.push(src.as_os_str());
        a.push(dst.as_os_str());
        ferry_with(&a, Duration::from_secs(60), uid)
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    for b in &bad {
        assert!(!dst.join(b).exists());
        fs::set_permissions(src.join(b), fs::Permissions::from_mode(0o644)).unwrap();
    }
    // A file that did not fail, removed from the copy: a failures-only rerun leaves it alone.
    fs::remove_file(dst.join("d0/f0000")).unwrap();
    let out = run(&["--retry-failed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("retrying 3 failed files"),
        "{}",
        stderr(&out)
    );
    for b in &bad {
        assert!(files_equal(&src.join(b), &dst.join(b)), "{b}");
    }
    assert!(
        !dst.join("d0/f0000").exists(),
        "only the failures were copied"
    );
    let out = run(&["--retry-failed"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// A reader of --json that goes away (`ferry copy --json | head -1`) does not stop the job or
/// crash ferry: the copy completes and exits 0, and nothing panics.
#[test]
fn a_closed_stdout_does_not_stop_the_job() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 40, 64 << 10);
    let dst = t.path().join("dst");
    let mut child = ferry_cmd(&[
        "copy".as_ref(),
        "--json".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ])
    .env("XDG_STATE_HOME", state_home())
    .spawn()
    .map(Spawned::new)
    .unwrap();
    drop(child.stdout.take()); // the reader is gone before ferry writes its first line
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert_same_tree(&src, &dst);
}

/// A tiny --bwlimit is not overrun by an initial burst of whole buffers: at 10 KiB/s, 30
/// files of 10 KiB take about 30 s, so after 1.5 s at most a few are done (the burst was one
/// 512 KiB buffer: all 300 KiB went in 0.2 s).
#[test]
fn a_tiny_bwlimit_has_no_big_initial_burst() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 30, 10 << 10);
    let mut spec = CopySpec::new(vec![src.clone()], t.path().join("dst"));
    spec.bwlimit = 10 << 10;
    let h = Job::start(spec).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let st = h.status();
    assert!(!h.is_finished() && st.files <= 3, "{st:?}");
    h.cancel().unwrap();
    within(Duration::from_secs(30), move || h.wait());
}

#[test]
fn ferry_jobs_shows_a_live_jobs_counts_not_its_last_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, 40, 64 << 10);
    let (dst, state) = (t.path().join("dst"), t.path().join("state"));
    let mut child = ferry_cmd(&[
        "copy".as_ref(),
        "--bwlimit".as_ref(),
        "256K".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        src.as_os_str(),
        dst.as_os_str(),
    ])
    .spawn()
    .unwrap();
    // Checkpoints come every 5 s: at 2.5 s the last one still says 0 files.
    std::thread::sleep(Duration::from_millis(2500));
    let jobs = ferry_cmd(&["jobs".as_ref(), "--state-dir".as_ref(), state.as_os_str()])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let listing = String::from_utf8_lossy(&jobs.stdout).into_owned();
    let files: u64 = listing
        .split_whitespace()
        .zip(listing.split_whitespace().skip(1))
        .find(|(_, w)| *w == "files")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("a files count in {listing}"));
    assert!(files > 0, "a live job shows its files so far: {listing}");
    assert!(
        listing.contains("running") && listing.contains("counts: live"),
        "{listing}"
    );
}
