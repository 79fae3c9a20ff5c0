//! The rebalance scan's list of misplaced objects: spilled to files by class (size or
//! partition) and read back class by class, so the move order is small objects first (or
//! partition by partition) while memory stays flat however many objects move.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// Small objects first: the most objects reach their owner soonest.
    Size,
    /// Partition by partition: each partition's move finishes early (fine-grained checkpoints).
    Partition,
}

impl Order {
    pub fn name(self) -> &'static str {
        match self {
            Order::Size => "size",
            Order::Partition => "partition",
        }
    }

    /// The order a name (`size`, `partition`) stands for.
    pub fn parse(s: &str) -> Option<Order> {
        [Order::Size, Order::Partition]
            .into_iter()
            .find(|o| o.name() == s)
    }
}

/// A misplaced object: where it is (`src`) and where it goes (`dst`, its path on the owner
/// disk; for a move to another node, `src` again: the owner comes from the partition).
pub(crate) struct Candidate {
    pub size: u64,
    pub partition: u16,
    pub src: PathBuf,
    pub dst: PathBuf,
    pub dev: u64,
    /// Where the object belongs (for messages).
    pub to: String,
}

/// Most moves queued at once: the scanner spills what it finds to files and feeds the queue
/// from them, so memory stays flat however many objects move.
pub const MAX_QUEUED: usize = 16_384;
/// Spill classes: by size (powers of two) or by partition (top 8 bits).
pub(crate) const CLASSES: usize = 257;

/// Misplaced objects found by the scan, in files by class (the order they are moved in).
pub(crate) struct Spill {
    dir: PathBuf,
    files: Vec<Mutex<Option<std::io::BufWriter<std::fs::File>>>>,
    order: Order,
}

impl Spill {
    pub fn new(dir: PathBuf, order: Order) -> std::io::Result<Spill> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Spill {
            dir,
            files: (0..CLASSES).map(|_| Mutex::new(None)).collect(),
            order,
        })
    }

    fn class(&self, c: &Candidate) -> usize {
        match self.order {
            Order::Size => (64 - c.size.leading_zeros()) as usize,
            Order::Partition => (c.partition >> 8) as usize,
        }
    }

    pub fn put(&self, c: &Candidate) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let k = self.class(c);
        let mut g = self.files[k].lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            let f = std::fs::File::create(self.dir.join(k.to_string()))?;
            *g = Some(std::io::BufWriter::with_capacity(64 << 10, f));
        }
        let w = g.as_mut().expect("opened above");
        w.write_all(&c.size.to_le_bytes())?;
        w.write_all(&c.dev.to_le_bytes())?;
        w.write_all(&c.partition.to_le_bytes())?;
        for p in [&c.src, &c.dst] {
            let b = p.as_os_str().as_bytes();
            w.write_all(&(b.len() as u32).to_le_bytes())?;
            w.write_all(b)?;
        }
        Ok(())
    }

    /// Calls `f` for every record, class by class.
    pub fn drain(&self, f: &mut dyn FnMut(Candidate) -> bool) -> std::io::Result<()> {
        use std::io::Read;
        use std::os::unix::ffi::OsStringExt;
        for k in 0..CLASSES {
            let Some(mut w) = self.files[k]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            else {
                continue;
            };
            w.flush()?;
            drop(w);
            let path = self.dir.join(k.to_string());
            let mut r = std::io::BufReader::with_capacity(64 << 10, std::fs::File::open(&path)?);
            let mut head = [0u8; 18];
            loop {
                match r.read_exact(&mut head) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
                let mut paths = [PathBuf::new(), PathBuf::new()];
                for p in &mut paths {
                    let mut len = [0u8; 4];
                    r.read_exact(&mut len)?;
                    let mut b = vec![0u8; u32::from_le_bytes(len) as usize];
                    r.read_exact(&mut b)?;
                    *p = PathBuf::from(std::ffi::OsString::from_vec(b));
                }
                let [src, dst] = paths;
                let c = Candidate {
                    size: u64::from_le_bytes(head[..8].try_into().expect("8 bytes")),
                    dev: u64::from_le_bytes(head[8..16].try_into().expect("8 bytes")),
                    partition: u16::from_le_bytes(head[16..18].try_into().expect("2 bytes")),
                    src,
                    dst,
                    to: String::new(),
                };
                if !f(c) {
                    break;
                }
            }
            std::fs::remove_file(&path)?;
        }
        Ok(())
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        // Scratch space only: nothing is lost if it stays behind.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
