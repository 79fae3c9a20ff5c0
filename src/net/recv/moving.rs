//! The puller's side of a move (`ferry move ferry://HOST/NAME/PATH DST`): after each group
//! commit, the entries it made durable under their final names (a file's received xxh3
//! matched the sender's, or it never got a name) are named to the sender in a Remove, right
//! behind the batch's Ack; the sender deletes their sources if unchanged. At the end, once
//! the directories' metadata is durable here, the directories go too (the sender removes the
//! emptied ones). Removing entries changes a source directory's times, so the times each
//! directory had when first received are kept in the job's state (saved before the first
//! Remove that follows it) and a later session applies those, not the changed ones.

use super::{Receiver, beneath};
use crate::net::conn::Conn;
use crate::net::msg::{Meta, Msg, remove_chunks};
use std::collections::HashMap;
use std::io;

/// Saves directories' first-seen metadata durably (before any of their entries is removed).
pub type SaveDirs = Box<dyn FnMut(&[(Vec<u8>, Meta)]) -> io::Result<()> + Send>;

pub(super) struct Move {
    /// Directory metadata as first received (this session's, and earlier ones' from state).
    kept: HashMap<Vec<u8>, Meta>,
    /// Seen first in this session, not yet saved.
    fresh: Vec<(Vec<u8>, Meta)>,
    save: SaveDirs,
    /// Directories made (or found) here this session.
    dirs: Vec<Vec<u8>>,
    /// Entries named already (a hard link that was that file): asked with the next commit.
    noted: Vec<Vec<u8>>,
    /// Removes sent and not yet answered.
    asked: u64,
    /// Sources the sender said it deleted.
    removed: u64,
}

impl Move {
    /// Saves the directories seen first since the last save, then asks: nothing is removed
    /// at the sender before the times of the directories it is in are kept here.
    fn ask(&mut self, files: Vec<(Vec<u8>, Option<u64>)>, dirs: Vec<Vec<u8>>, out: &mut Vec<Msg>) {
        if !self.fresh.is_empty() {
            if let Err(e) = (self.save)(&self.fresh) {
                out.push(Msg::Fail {
                    id: 0,
                    msg: format!("move: save directory times (sources kept): {e}"),
                });
                return;
            }
            self.fresh.clear();
        }
        for r in remove_chunks(files, dirs) {
            out.push(r);
            self.asked += 1;
        }
    }
}

impl Receiver {
    /// A receiver of a pull that moves: `kept`, the directories' metadata saved by earlier
    /// sessions of the job; `save` keeps newly seen ones.
    pub fn moving(mut self, kept: HashMap<Vec<u8>, Meta>, save: SaveDirs) -> Receiver {
        self.moving = Some(Move {
            kept,
            fresh: Vec::new(),
            save,
            dirs: Vec::new(),
            noted: Vec::new(),
            asked: 0,
            removed: 0,
        });
        self
    }

    /// Sources the sender deleted for this receiver.
    pub fn removed(&self) -> u64 {
        self.moving.as_ref().map_or(0, |m| m.removed)
    }

    /// The metadata a directory gets: for a move, its times as first received.
    pub(super) fn dir_meta(&mut self, rel: &[u8], meta: Meta) -> Meta {
        let Some(m) = self.moving.as_mut() else {
            return meta;
        };
        match m.kept.get(rel) {
            Some(k) => Meta {
                atime: k.atime,
                mtime: k.mtime,
                ..meta
            },
            None => {
                m.kept.insert(rel.to_vec(), meta);
                m.fresh.push((rel.to_vec(), meta));
                meta
            }
        }
    }

    pub(super) fn dir_made(&mut self, rel: &[u8]) {
        if let Some(m) = self.moving.as_mut() {
            m.dirs.push(rel.to_vec());
        }
    }

    /// `rel` already is what was sent, under its final name (made durable before it is asked).
    pub(super) fn named_already(&mut self, rel: Vec<u8>) {
        if let Some(m) = self.moving.as_mut() {
            m.noted.push(rel);
        }
    }

    /// The batch committed: `durable` (None: nothing was synced after naming) is asked to be
    /// removed at the sender. Nothing is asked once the session is ending early (its next
    /// session sends those again), nor before the directories seen so far are saved.
    pub(super) fn ask_removal(
        &mut self,
        durable: Option<Vec<(Vec<u8>, Option<u64>)>>,
        out: &mut Vec<Msg>,
    ) {
        let stopping = self.stopped_early;
        let Some(m) = self.moving.as_mut() else {
            return;
        };
        if stopping {
            return;
        }
        let mut files = durable.unwrap_or_default();
        if !m.noted.is_empty() {
            if files.is_empty() && beneath::syncfs(&self.base).is_err() {
                return; // asked with a later batch
            }
            files.extend(m.noted.drain(..).map(|r| (r, None)));
        }
        if !files.is_empty() {
            m.ask(files, Vec::new(), out);
        }
    }

    /// At the end: every directory made here, whose metadata is durable now, is asked for.
    pub(super) fn ask_dirs(&mut self, out: &mut Vec<Msg>) {
        if let Some(m) = self.moving.as_mut()
            && !m.dirs.is_empty()
        {
            let dirs = std::mem::take(&mut m.dirs);
            m.ask(Vec::new(), dirs, out);
        }
    }

    /// The sender answered a Remove.
    pub(super) fn on_removed(&mut self, n: u64) -> Result<(), String> {
        match self.moving.as_mut() {
            Some(m) if m.asked > 0 => {
                m.asked -= 1;
                m.removed += n;
                Ok(())
            }
            _ => Err("Removed without a Remove".into()),
        }
    }
}

/// After a move's session is done: reads the sender's answers to the Removes not answered
/// yet (its reports of sources kept come before them).
pub fn await_removed(c: &mut Conn, rx: &mut Receiver) -> io::Result<()> {
    while rx.moving.as_ref().is_some_and(|m| m.asked > 0) {
        match c.recv()? {
            m @ (Msg::Removed { .. } | Msg::Fail { .. }) => {
                let mut out = Vec::new();
                rx.on_msg(m, &mut out).map_err(io::Error::other)?;
            }
            other => return Err(c.refused(other)),
        }
    }
    Ok(())
}
