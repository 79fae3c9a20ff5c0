//! Issue 21, session 17: the per-file data paths a local copy could take, one against another
//! on the same tree (not ferry's engine: no temps, no commit; the data path alone, on 2 threads
//! like ferry's 2 reactors). Run it through `scripts/fresh-run.sh` (a fresh destination, timed
//! through a final sync):
//!
//!   FS=xfs scripts/fresh-run.sh mixed warm target/release/examples/datapath MODE
//!
//! MODE (every chunk is at most 256 KiB, ferry's cached chunk, or DATAPATH_CHUNK KiB):
//!   rw          pread into a buffer, xxh3 it, pwrite it (ferry's path today, blocking)
//!   rw-nohash   the same without the hash
//!   sendfile    sendfile(2) chunk by chunk, no hash (what fcp and cpz do after EXDEV)
//!   sf-mapdst   sendfile a chunk, then xxh3 the chunk through a read-only mapping of the
//!               destination (one mapping per file, made after the data landed)
//!   sf-mapdst-c the same, but the destination is mapped once per file before the copy and
//!               each chunk is hashed right after its sendfile (it is still in the L2 cache)
//!   sf-pread    sendfile a chunk, then pread the same source chunk into a buffer and hash it
//!   sf-readdst  sendfile a chunk, then pread it back from the destination (just written: in
//!               the page cache and the L2) into a buffer and hash it: the bytes that landed
//!   mapsrc      mmap the source, xxh3 a chunk from the mapping, pwrite it from the mapping
//!               (SIGBUS if the source shrinks meanwhile: measured only)
//!   splice      splice source -> pipe -> destination, no hash
//!   splice-mapdst-c  splice as above, each chunk hashed through the destination's mapping
//!
//! Prints the number of files and bytes and an xor of the per-file digests (equal across the
//! hashing modes when they hashed the same bytes).
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::Xxh3;

/// The chunk (256 KiB, ferry's cached chunk; DATAPATH_CHUNK=KIB overrides it).
fn chunk() -> usize {
    std::env::var("DATAPATH_CHUNK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(256 << 10, |k| k << 10)
}
const THREADS: usize = 2;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Rw,
    RwNoHash,
    Sendfile,
    SfMapDst,
    SfMapDstChunk,
    SfPread,
    SfReadDst,
    MapSrc,
    Splice,
    SpliceMapDstChunk,
}

fn parse(m: &str) -> Option<Mode> {
    Some(match m {
        "rw" => Mode::Rw,
        "rw-nohash" => Mode::RwNoHash,
        "sendfile" => Mode::Sendfile,
        "sf-mapdst" => Mode::SfMapDst,
        "sf-mapdst-c" => Mode::SfMapDstChunk,
        "sf-pread" => Mode::SfPread,
        "sf-readdst" => Mode::SfReadDst,
        "mapsrc" => Mode::MapSrc,
        "splice" => Mode::Splice,
        "splice-mapdst-c" => Mode::SpliceMapDstChunk,
        _ => return None,
    })
}

fn fail(op: &str, p: &Path) -> ! {
    let e = std::io::Error::last_os_error();
    eprintln!("datapath: {op} {}: {e}", p.display());
    std::process::exit(1)
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in paths")
}

fn walk(src: &Path, dst: &Path, files: &mut Vec<(PathBuf, PathBuf, u64)>) {
    std::fs::create_dir_all(dst).unwrap_or_else(|_| fail("mkdir", dst));
    let rd = std::fs::read_dir(src).unwrap_or_else(|_| fail("readdir", src));
    for e in rd {
        let e = e.unwrap_or_else(|_| fail("readdir", src));
        let ft = e.file_type().unwrap_or_else(|_| fail("stat", &e.path()));
        let (s, d) = (e.path(), dst.join(e.file_name()));
        if ft.is_dir() {
            walk(&s, &d, files);
        } else if ft.is_file() {
            let len = e.metadata().unwrap_or_else(|_| fail("stat", &s)).len();
            files.push((s, d, len));
        }
    }
}

fn open(p: &Path, flags: i32) -> OwnedFd {
    let c = cpath(p);
    // SAFETY: a valid C string; the fd returned is owned here.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        fail("open", p);
    }
    // SAFETY: a fresh fd nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A read-only shared mapping of `len` bytes of `fd` (len > 0).
struct Map {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Map {
    fn new(fd: i32, len: usize, p: &Path) -> Map {
        // SAFETY: a fresh mapping; nobody else holds its address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            fail("mmap", p);
        }
        Map { ptr, len }
    }

    fn slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.len);
        // SAFETY: inside the mapping; the file is at least off+len long (written before).
        unsafe { std::slice::from_raw_parts((self.ptr as *const u8).add(off), len) }
    }

    /// Fills the page tables of a range at once (instead of a fault per 16 pages).
    fn populate(&self, off: usize, len: usize) {
        let page = 4096;
        let a = off / page * page;
        // SAFETY: a range inside the mapping.
        unsafe {
            libc::madvise(
                (self.ptr as *mut u8).add(a) as *mut libc::c_void,
                len + off - a,
                23, /* MADV_POPULATE_READ */
            )
        };
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The paths and fds of one file's copy.
struct Files<'a> {
    s: &'a Path,
    d: &'a Path,
    sf: i32,
    df: i32,
}

struct Worker {
    chunk: usize,
    buf: Vec<u8>,
    pipe: [i32; 2],
    h: Xxh3,
}

impl Worker {
    fn new() -> Worker {
        let mut pipe = [0; 2];
        // SAFETY: a valid out array.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            fail("pipe", Path::new("-"));
        }
        // SAFETY: our pipe.
        unsafe { libc::fcntl(pipe[1], libc::F_SETPIPE_SZ, chunk() as i32) };
        Worker {
            chunk: chunk(),
            buf: vec![0u8; chunk()],
            pipe,
            h: Xxh3::new(),
        }
    }

    fn pwrite_all(&self, fd: i32, mut p: *const u8, mut len: usize, mut off: i64, d: &Path) {
        while len > 0 {
            // SAFETY: p..p+len is readable memory.
            let n = unsafe { libc::pwrite(fd, p as *const libc::c_void, len, off) };
            if n <= 0 {
                fail("pwrite", d);
            }
            let n = n as usize;
            // SAFETY: within the range.
            p = unsafe { p.add(n) };
            len -= n;
            off += n as i64;
        }
    }

    fn pread_full(&mut self, fd: i32, len: usize, off: i64, s: &Path) {
        let mut got = 0;
        while got < len {
            // SAFETY: the buffer has room for len bytes.
            let n = unsafe {
                libc::pread(
                    fd,
                    self.buf.as_mut_ptr().add(got) as *mut libc::c_void,
                    len - got,
                    off + got as i64,
                )
            };
            if n <= 0 {
                fail("pread", s);
            }
            got += n as usize;
        }
    }

    fn sendfile_chunk(&self, out: i32, inp: i32, off: i64, len: usize, s: &Path) {
        let mut o = off;
        let end = off + len as i64;
        while o < end {
            // SAFETY: valid fds and offset pointer.
            let n = unsafe { libc::sendfile(out, inp, &mut o, (end - o) as usize) };
            if n <= 0 {
                fail("sendfile", s);
            }
        }
    }

    fn splice_chunk(&self, out: i32, inp: i32, off: i64, len: usize, s: &Path) {
        let mut o_in = off;
        let mut o_out = off;
        let end = off + len as i64;
        while o_in < end {
            // SAFETY: valid fds and offset pointers.
            let n = unsafe {
                libc::splice(
                    inp,
                    &mut o_in,
                    self.pipe[1],
                    std::ptr::null_mut(),
                    (end - o_in) as usize,
                    libc::SPLICE_F_MOVE,
                )
            };
            if n <= 0 {
                fail("splice in", s);
            }
            let mut left = n;
            while left > 0 {
                // SAFETY: as above.
                let m = unsafe {
                    libc::splice(
                        self.pipe[0],
                        std::ptr::null_mut(),
                        out,
                        &mut o_out,
                        left as usize,
                        libc::SPLICE_F_MOVE,
                    )
                };
                if m <= 0 {
                    fail("splice out", s);
                }
                left -= m;
            }
        }
    }

    /// Moves (and maybe hashes) one chunk `(off, len)` the way `mode` does.
    fn chunk_of(
        &mut self,
        mode: Mode,
        f: Files,
        (off, len): (usize, usize),
        src_map: &Option<Map>,
        dst_map: &Option<Map>,
    ) {
        let Files { s, d, sf, df } = f;
        let o = off as i64;
        match mode {
            Mode::Rw | Mode::RwNoHash => {
                self.pread_full(sf, len, o, s);
                if mode == Mode::Rw {
                    self.h.update(&self.buf[..len]);
                }
                self.pwrite_all(df, self.buf.as_ptr(), len, o, d);
            }
            Mode::Sendfile | Mode::SfMapDst => self.sendfile_chunk(df, sf, o, len, s),
            Mode::SfMapDstChunk => {
                self.sendfile_chunk(df, sf, o, len, s);
                let m = dst_map.as_ref().expect("mapped");
                m.populate(off, len);
                self.h.update(m.slice(off, len));
            }
            Mode::SfPread => {
                self.sendfile_chunk(df, sf, o, len, s);
                self.pread_full(sf, len, o, s);
                self.h.update(&self.buf[..len]);
            }
            Mode::SfReadDst => {
                self.sendfile_chunk(df, sf, o, len, s);
                self.pread_full(df, len, o, d);
                self.h.update(&self.buf[..len]);
            }
            Mode::MapSrc => {
                let m = src_map.as_ref().expect("mapped");
                self.h.update(m.slice(off, len));
                self.pwrite_all(df, m.slice(off, len).as_ptr(), len, o, d);
            }
            Mode::Splice => self.splice_chunk(df, sf, o, len, s),
            Mode::SpliceMapDstChunk => {
                self.splice_chunk(df, sf, o, len, s);
                let m = dst_map.as_ref().expect("mapped");
                m.populate(off, len);
                self.h.update(m.slice(off, len));
            }
        }
    }

    /// Copies one file; returns its digest (0 when the mode does not hash).
    fn copy(&mut self, mode: Mode, s: &Path, d: &Path, size: u64) -> u64 {
        let src = open(s, libc::O_RDONLY);
        let flags = libc::O_CREAT | libc::O_TRUNC;
        let needs_read = matches!(
            mode,
            Mode::SfMapDst | Mode::SfMapDstChunk | Mode::SpliceMapDstChunk | Mode::SfReadDst
        );
        let dst = open(
            d,
            flags
                | if needs_read {
                    libc::O_RDWR
                } else {
                    libc::O_WRONLY
                },
        );
        let (sf, df) = (src.as_raw_fd(), dst.as_raw_fd());
        let size = size as usize;
        self.h.reset();
        let hashing = !matches!(mode, Mode::RwNoHash | Mode::Sendfile | Mode::Splice);
        if size == 0 {
            return if hashing { self.h.digest() } else { 0 };
        }
        let src_map = (mode == Mode::MapSrc).then(|| Map::new(sf, size, s));
        let dst_map = if matches!(mode, Mode::SfMapDstChunk | Mode::SpliceMapDstChunk) {
            // SAFETY: our fd; the size the copy will write anyway.
            if unsafe { libc::ftruncate(df, size as i64) } != 0 {
                fail("ftruncate", d);
            }
            Some(Map::new(df, size, d))
        } else {
            None
        };
        let mut off = 0usize;
        while off < size {
            let len = self.chunk.min(size - off);
            self.chunk_of(mode, Files { s, d, sf, df }, (off, len), &src_map, &dst_map);
            off += len;
        }
        if mode == Mode::SfMapDst {
            let m = Map::new(df, size, d);
            m.populate(0, size);
            self.h.update(m.slice(0, size));
        }
        if hashing { self.h.digest() } else { 0 }
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let Some(mode) = a.get(1).and_then(|m| parse(m)) else {
        eprintln!("usage: datapath MODE SRC DST (modes: see the source's header)");
        std::process::exit(2)
    };
    let (src, dst) = (Path::new(&a[2]), Path::new(&a[3]));
    let mut files = Vec::new();
    walk(src, dst, &mut files);
    let total: u64 = files.iter().map(|f| f.2).sum();
    let files = std::sync::Arc::new(files);
    let mut hs = Vec::new();
    for t in 0..THREADS {
        let files = files.clone();
        hs.push(std::thread::spawn(move || {
            let mut w = Worker::new();
            let mut x = 0u64;
            for (s, d, len) in files.iter().skip(t).step_by(THREADS) {
                x ^= w.copy(mode, s, d, *len);
            }
            x
        }));
    }
    let x = hs
        .into_iter()
        .fold(0u64, |x, h| x ^ h.join().expect("worker"));
    println!(
        "datapath {mode:?}: {} files, {total} bytes, digest xor {x:016x}",
        files.len()
    );
}
