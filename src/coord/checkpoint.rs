//! Durable job state for resume: `<state-dir>/<job-id>/` holds a journal of durably finished
//! files (appended and fdatasync'd after the data's own durability point) and an atomically
//! replaced JSON checkpoint. A lock file keeps two processes off the same job.

use super::state::JobState;
use crate::spec::CopySpec;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `${XDG_STATE_HOME:-$HOME/.local/state}/ferry`.
pub fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x).join("ferry"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".local/state/ferry"),
    }
}

/// `p` made absolute: resolved where it exists (or its parent does), else joined to the working
/// directory. Checkpoints keep their paths this way, so a job started by relative paths is the
/// same job (and lands in the same place) when resumed from another directory.
pub fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            parent
                .canonicalize()
                .map(|c| c.join(name))
                .unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
        }
        _ => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
    }
}

/// Stable id of a job: a hash of what decides its result (sources and destination as absolute
/// paths, kept metadata, filters, filesystem boundary). Speed settings do not change it.
pub fn job_id(spec: &CopySpec) -> String {
    #[derive(Serialize)]
    struct Key<'a> {
        #[serde(with = "crate::pathser::many")]
        sources: Vec<PathBuf>,
        #[serde(with = "crate::pathser")]
        dest: PathBuf,
        preserve: &'a crate::spec::Preserve,
        filters: &'a [crate::filter::Rule],
        one_file_system: bool,
        /// A move and a copy of the same paths are different jobs (left out for copies, so
        /// their ids stay as they were).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        remove_source: bool,
    }
    let k = Key {
        sources: spec.sources.iter().map(|s| absolute(s)).collect(),
        dest: absolute(&spec.dest),
        preserve: &spec.preserve,
        filters: &spec.filters,
        one_file_system: spec.one_file_system,
        remove_source: spec.remove_source,
    };
    let bytes = serde_json::to_vec(&k).expect("plain data serializes");
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
}

/// Whether a process holds the lock of the job whose state is in `dir` (it runs the job now;
/// the lock goes with the process, even on kill -9). Probes with a shared lock, dropped at
/// once.
pub fn is_running(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join("lock")) else {
        return false;
    };
    // SAFETY: valid fd; closing `f` drops the probe's lock.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } < 0 {
        return io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK);
    }
    false
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub job_id: String,
    pub state: JobState,
    pub spec: CopySpec,
    /// Where each source lands, fixed by the first run (cp -r semantics would change once the
    /// destination exists).
    #[serde(with = "crate::pathser::many")]
    pub targets: Vec<PathBuf>,
    pub files: u64,
    pub bytes: u64,
    pub failed: u64,
    pub updated_unix: u64,
    pub pid: u32,
    /// The token in this job's temp names (see `temp`); absent in checkpoints of older builds.
    #[serde(default)]
    pub temp_token: Option<String>,
}

/// What the journal says a source looked like when its copy became durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    pub size: u64,
    pub mtime: (i64, i64),
    /// The streamed xxh3 of the copy (None with --verify=none).
    pub hash: Option<u64>,
}

impl Done {
    /// `st` has the size and ns mtime the source had when its copy became durable.
    pub fn same_source(&self, st: &libc::stat) -> bool {
        self.size == st.st_size as u64 && self.mtime == (st.st_mtime, st.st_mtime_nsec)
    }

    /// `st` is still that source: a regular file, not written to since (the check before a
    /// move deletes a source, and before a rebalance switches an object's location).
    pub fn unchanged(&self, st: &libc::stat) -> bool {
        st.st_mode & libc::S_IFMT == libc::S_IFREG && self.same_source(st)
    }
}

/// Most failed sources remembered for `--retry-failed`.
pub const MAX_FAILED_RECORDS: usize = 1_000_000;

/// The failures of a job's last run: files, and directories (everything below them).
#[derive(Debug, Default)]
pub struct FailedSet {
    pub files: std::collections::HashSet<PathBuf>,
    pub dirs: Vec<PathBuf>,
}

impl FailedSet {
    pub fn contains(&self, src: &Path) -> bool {
        self.files.contains(src) || self.dirs.iter().any(|d| src.starts_with(d))
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }
}

/// Most journal lines loaded on resume (memory bound: about 100 bytes each).
pub const MAX_JOURNAL_RECORDS: usize = 50_000_000;

pub struct StateDir {
    pub dir: PathBuf,
    journal: Mutex<File>,
    _lock: File,
}

/// Lower-case hex, by table: this runs for every journaled file on the committer thread
/// (`format!` per byte showed up as a quarter of its time in a profile).
fn hex_into(bytes: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
}

/// One journal line, "F SIZE MTIME_S MTIME_NS HEXPATH[ HASH]\n", written digit by digit: it
/// runs once per file copied, where `write!`'s formatting machinery cost ~650 instructions.
fn record_into(p: &Path, d: &Done, buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"F ");
    dec_into(d.size, false, buf);
    buf.push(b' ');
    dec_into(d.mtime.0.unsigned_abs(), d.mtime.0 < 0, buf);
    buf.push(b' ');
    dec_into(d.mtime.1.unsigned_abs(), d.mtime.1 < 0, buf);
    buf.push(b' ');
    hex_into(p.as_os_str().as_bytes(), buf);
    if let Some(h) = d.hash {
        buf.push(b' ');
        hex_into(&h.to_be_bytes(), buf);
    }
    buf.push(b'\n');
}

/// `n` in decimal, after a '-' when `neg`.
fn dec_into(mut n: u64, neg: bool, buf: &mut Vec<u8>) {
    let mut d = [0u8; 20];
    let mut i = d.len();
    loop {
        i -= 1;
        d[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if neg {
        buf.push(b'-');
    }
    buf.extend_from_slice(&d[i..]);
}

fn hex(bytes: &[u8]) -> String {
    let mut v = Vec::new();
    hex_into(bytes, &mut v);
    String::from_utf8(v).expect("hex digits are ASCII")
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl StateDir {
    /// Creates (0700) and locks the job's directory. Fails if another process runs the job.
    pub fn open(root: &Path, id: &str) -> io::Result<StateDir> {
        let dir = root.join(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))?;
        // A few tries: `is_running` (ferry jobs, ferry ctl) holds a shared lock for an
        // instant, and must not turn a starting job away.
        let mut tries = 0;
        // SAFETY: valid fd.
        while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e);
            }
            tries += 1;
            if tries > 20 {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("job {id} is already running in another process"),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join("journal"))?;
        Ok(StateDir {
            dir,
            journal: Mutex::new(journal),
            _lock: lock,
        })
    }

    pub fn load_checkpoint(&self) -> Option<Checkpoint> {
        let text = fs::read(self.dir.join("checkpoint.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Empties the journal (a completed job needs none: running it again starts anew).
    pub fn truncate_journal(&self) -> io::Result<()> {
        let j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        j.set_len(0)?;
        j.sync_all()
    }

    /// Forgets an earlier run (after completion, or with --fresh).
    pub fn reset(&self) -> io::Result<()> {
        self.truncate_journal()?;
        match fs::remove_file(self.dir.join("checkpoint.json")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The journal as source path -> what it looked like. A torn last line (a crash while
    /// appending) is ignored: that file is simply copied again.
    pub fn load_journal(&self) -> io::Result<HashMap<PathBuf, Done>> {
        let f = File::open(self.dir.join("journal"))?;
        let mut out = HashMap::new();
        for line in io::BufReader::new(f).lines() {
            let Ok(line) = line else { break };
            let mut it = line.split(' ');
            let rec = (|| {
                if it.next()? != "F" {
                    return None;
                }
                let size = it.next()?.parse().ok()?;
                let sec = it.next()?.parse().ok()?;
                let nsec = it.next()?.parse().ok()?;
                let path = unhex(it.next()?)?;
                // Optional: the copy's xxh3 (absent with --verify=none).
                let hash = match it.next() {
                    Some(h) => Some(u64::from_str_radix(h, 16).ok()?),
                    None => None,
                };
                Some((
                    PathBuf::from(std::ffi::OsString::from_vec(path)),
                    Done {
                        size,
                        mtime: (sec, nsec),
                        hash,
                    },
                ))
            })();
            match rec {
                Some((p, d)) if out.len() < MAX_JOURNAL_RECORDS => {
                    out.insert(p, d);
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Appends finished files and makes them durable (one fdatasync for the whole group).
    pub fn append(&self, recs: &[(PathBuf, Done)]) -> io::Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(recs.len() * 96);
        for (p, d) in recs {
            record_into(p, d, &mut buf);
        }
        let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        j.write_all(&buf)?;
        j.sync_data()
    }

    /// Replaces the list of the last run's failures (durably, as the checkpoint).
    pub fn write_failed(&self, failed: &[(PathBuf, bool)]) -> io::Result<()> {
        let mut buf = Vec::new();
        for (p, dir) in failed {
            writeln!(
                buf,
                "{} {}",
                if *dir { "D" } else { "F" },
                hex(p.as_os_str().as_bytes())
            )?;
        }
        super::durable::replace(&self.dir.join("failed"), &buf, 0o666)
    }

    pub fn load_failed(&self) -> io::Result<FailedSet> {
        let text = match fs::read_to_string(self.dir.join("failed")) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FailedSet::default()),
            Err(e) => return Err(e),
        };
        let mut set = FailedSet::default();
        for line in text.lines() {
            let Some((kind, h)) = line.split_once(' ') else {
                continue;
            };
            let Some(bytes) = unhex(h) else { continue };
            let p = PathBuf::from(std::ffi::OsString::from_vec(bytes));
            if kind == "D" {
                set.dirs.push(p);
            } else {
                set.files.insert(p);
            }
        }
        Ok(set)
    }

    /// temp + fsync + rename + directory fsync: the checkpoint is always whole.
    pub fn write_checkpoint(&self, cp: &Checkpoint) -> io::Result<()> {
        let body = serde_json::to_vec_pretty(cp).map_err(io::Error::other)?;
        super::durable::replace(&self.dir.join("checkpoint.json"), &body, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_are_what_the_format_string_made() {
        let p = Path::new("/a/b\nc");
        for (size, s, ns, hash) in [
            (0, 0, 0, None),
            (4096, 1_796_194_657, 43_052_274, Some(0x6f)),
            (u64::MAX, i64::MIN, -1, Some(u64::MAX)),
            (7, -5, 999_999_999, Some(0)),
        ] {
            let d = Done {
                size,
                mtime: (s, ns),
                hash,
            };
            let mut want = format!("F {size} {s} {ns} {}", hex(p.as_os_str().as_bytes()));
            if let Some(h) = hash {
                want.push_str(&format!(" {h:016x}"));
            }
            want.push('\n');
            let mut got = Vec::new();
            record_into(p, &d, &mut got);
            assert_eq!(String::from_utf8(got).unwrap(), want);
        }
    }

    #[test]
    fn journal_round_trips_odd_names_and_ignores_a_torn_tail() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path(), "job").unwrap();
        let odd = PathBuf::from(std::ffi::OsString::from_vec(b"/a/new\nline \xff".to_vec()));
        let d = Done {
            size: 5,
            mtime: (1, 2),
            hash: Some(0xfeed_0000_0000_beef),
        };
        let e = Done { hash: None, ..d };
        s.append(&[(odd.clone(), d), (PathBuf::from("/b"), e)])
            .unwrap();
        // A crash mid-append leaves half a line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(t.path().join("job/journal"))
            .unwrap();
        f.write_all(b"F 9 9 9 2f6").unwrap();
        let j = s.load_journal().unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!(j[&odd], d);
        assert!(
            StateDir::open(t.path(), "job").is_err(),
            "second process is locked out"
        );
    }

    #[test]
    fn job_id_ignores_speed_settings_but_not_results() {
        let mut a = CopySpec::new(vec!["/x".into()], "/y".into());
        let id = job_id(&a);
        a.threads = 7;
        a.bwlimit = 100;
        assert_eq!(job_id(&a), id);
        a.preserve.xattr = false;
        assert_ne!(job_id(&a), id);
    }
}
