//! Frames: the unit of the wire protocol. A frame is a 5-byte header (type: u8, payload
//! length: u32 little-endian) and the payload. This layout never changes between protocol
//! versions, so two builds can always read each other's Hello and refuse each other clearly.
//!
//! The decoder is pure (bytes in, frames out): a socket driver (blocking thread today, io_uring
//! later) feeds it whatever arrived. It never allocates more than one frame's payload, which is
//! checked against [`MAX_PAYLOAD`] before any allocation.

use std::fmt;

/// Header bytes before every payload.
pub const HEADER: usize = 5;
/// The largest data chunk a sender puts in one frame.
pub const MAX_CHUNK: usize = 1 << 20;
/// The largest payload accepted: a chunk plus room for its small header fields.
pub const MAX_PAYLOAD: usize = MAX_CHUNK + 64 * 1024;

/// Why the peer's bytes are not a valid stream (the connection is closed after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// A header announcing more than [`MAX_PAYLOAD`] bytes.
    Oversize { len: u64 },
    /// A frame type this version does not know.
    UnknownType(u8),
    /// A payload that ends early, has trailing bytes or an invalid field.
    Malformed { what: &'static str },
    /// The first frame is not a ferry Hello (not a ferry peer, or random bytes).
    NotFerry,
    /// The peer speaks another protocol version.
    Version { ours: u16, theirs: u16 },
    /// The stream ended inside a frame.
    Truncated { have: usize, need: usize },
    /// A valid frame where it makes no sense (e.g. data before its file).
    Unexpected { what: &'static str },
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Oversize { len } => {
                write!(f, "frame of {len} bytes exceeds the limit of {MAX_PAYLOAD}")
            }
            ProtoError::UnknownType(t) => write!(f, "unknown frame type {t}"),
            ProtoError::Malformed { what } => write!(f, "malformed frame: {what}"),
            ProtoError::NotFerry => write!(f, "peer does not speak the ferry protocol"),
            ProtoError::Version { ours, theirs } => write!(
                f,
                "protocol version mismatch: this build speaks version {ours}, the peer {theirs} \
                 (run the same ferry release on both ends)"
            ),
            ProtoError::Truncated { have, need } => write!(
                f,
                "connection closed inside a frame ({have} of {need} bytes)"
            ),
            ProtoError::Unexpected { what } => write!(f, "unexpected frame: {what}"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// One frame: its type byte and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Appends one frame to `out`. Panics only on a programming error (payload over the limit).
pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    encode_head(kind, payload.len(), out);
    out.extend_from_slice(payload);
}

/// Appends the header of a frame whose `len` payload bytes the caller sends right after it.
pub fn encode_head(kind: u8, len: usize, out: &mut Vec<u8>) {
    assert!(len <= MAX_PAYLOAD, "frame payload over the limit");
    out.push(kind);
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

/// A payload at least this big is filled straight from what is pushed (one copy), not
/// gathered in the decoder's buffer first.
const DIRECT: usize = 16 * 1024;

/// Incremental frame decoder: feed bytes as they arrive, take frames out.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as frames (compacted lazily).
    start: usize,
    /// A big frame whose header was read: its type, length and the payload so far.
    big: Option<(u8, usize, Vec<u8>)>,
    /// Payload buffers handed back by the caller ([`Decoder::recycle`]), for the next big
    /// frames: a fresh 1 MiB allocation per Data frame was page faults and the kernel zeroing
    /// the pages (13 % of the receiver's CPU at 10 Gbit/s, perf).
    spare: Vec<Vec<u8>>,
}

/// Payload buffers kept for reuse (a read-ahead's worth of 1 MiB chunks).
const SPARE_MAX: usize = 8;

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes. The buffer holds at most one partial frame plus what is pushed,
    /// so callers bound it by pushing at most one read's worth between calls to `next`.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if let Some((_, len, p)) = self.big.as_mut() {
            let take = (*len - p.len()).min(bytes.len());
            p.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if bytes.is_empty() {
                return;
            }
        }
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > MAX_PAYLOAD {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Takes back a big frame's payload (once its bytes are used) to fill the next one.
    pub fn recycle(&mut self, mut v: Vec<u8>) {
        if v.capacity() >= DIRECT && self.spare.len() < SPARE_MAX {
            v.clear();
            self.spare.push(v);
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn pending(&self) -> usize {
        let big = self.big.as_ref().map_or(0, |(_, _, p)| HEADER + p.len());
        self.buf.len() - self.start + big
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or why the stream is bad.
    /// `known` says which frame types this version understands.
    pub fn next_frame(&mut self, known: impl Fn(u8) -> bool) -> Result<Option<Frame>, ProtoError> {
        if let Some((kind, len, p)) = self.big.take() {
            if p.len() < len {
                self.big = Some((kind, len, p));
                return Ok(None);
            }
            return Ok(Some(Frame { kind, payload: p }));
        }
        let avail = &self.buf[self.start..];
        if avail.is_empty() {
            return Ok(None);
        }
        if !known(avail[0]) {
            return Err(ProtoError::UnknownType(avail[0]));
        }
        if avail.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes(avail[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            return Err(ProtoError::Oversize { len: len as u64 });
        }
        if avail.len() < HEADER + len {
            if len >= DIRECT {
                // The rest of it goes straight into its payload (checked length: bounded).
                let mut p = match self.spare.pop() {
                    Some(v) if v.capacity() >= len => v,
                    _ => Vec::with_capacity(len),
                };
                p.extend_from_slice(&avail[HEADER..]);
                self.big = Some((avail[0], len, p));
                self.start = self.buf.len();
            }
            return Ok(None);
        }
        let frame = Frame {
            kind: avail[0],
            payload: avail[HEADER..HEADER + len].to_vec(),
        };
        self.start += HEADER + len;
        Ok(Some(frame))
    }

    /// At end of stream: Ok if no partial frame is left.
    pub fn finish(&self) -> Result<(), ProtoError> {
        if let Some((_, len, p)) = &self.big {
            return Err(ProtoError::Truncated {
                have: HEADER + p.len(),
                need: HEADER + len,
            });
        }
        let have = self.pending();
        if have == 0 {
            return Ok(());
        }
        let need = if have >= HEADER {
            HEADER
                + u32::from_le_bytes(self.buf[self.start + 1..self.start + 5].try_into().unwrap())
                    as usize
        } else {
            HEADER
        };
        Err(ProtoError::Truncated { have, need })
    }
}

/// Reads the fields of one payload, every read checked against what is left.
pub struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(payload: &'a [u8]) -> Self {
        Cursor { rest: payload }
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtoError> {
        if self.rest.len() < n {
            return Err(ProtoError::Malformed { what });
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, ProtoError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, ProtoError> {
        Ok(self.u64(what)? as i64)
    }

    /// A u32-length-prefixed byte string (bounded by the payload, so by the frame limit).
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], ProtoError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    /// The rest of the payload.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// Ok if every byte was read.
    pub fn end(&self, what: &'static str) -> Result<(), ProtoError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Malformed { what })
        }
    }
}

/// Writers matching [`Cursor`].
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every frame of `wire` pushed `split` bytes at a time; the stream must end whole.
    fn decode_in_chunks(wire: &[u8], split: usize) -> Vec<Frame> {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(split) {
            d.push(chunk);
            while let Some(f) = d.next_frame(|_| true).unwrap() {
                got.push(f);
            }
        }
        d.finish().unwrap();
        got
    }

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut wire = Vec::new();
        encode(1, b"hello", &mut wire);
        encode(2, b"", &mut wire);
        encode(3, &[7; 3000], &mut wire);
        for split in [1, 2, 5, 6, 7, 100, wire.len()] {
            let got = decode_in_chunks(&wire, split);
            assert_eq!(got.len(), 3, "split {split}");
            assert_eq!(got[0].payload, b"hello");
            assert_eq!(got[2].payload.len(), 3000);
        }
    }

    #[test]
    fn recycled_payloads_fill_later_big_frames_with_only_their_own_bytes() {
        let (a, b) = (vec![0xaa; DIRECT * 4], vec![0x55; DIRECT * 2 + 3]);
        let mut d = Decoder::new();
        let mut wire = Vec::new();
        encode(2, &a, &mut wire);
        // Pushed in pieces: the big frame's payload is filled directly.
        d.push(&wire[..100]);
        assert!(d.next_frame(|_| true).unwrap().is_none());
        d.push(&wire[100..]);
        let fa = d.next_frame(|_| true).unwrap().expect("frame a");
        assert_eq!(fa.payload, a);
        d.recycle(fa.payload);
        wire.clear();
        encode(2, &b, &mut wire);
        d.push(&wire[..10]);
        assert!(d.next_frame(|_| true).unwrap().is_none());
        d.push(&wire[10..]);
        let fb = d.next_frame(|_| true).unwrap().expect("frame b");
        assert_eq!(
            fb.payload, b,
            "nothing of a's bytes is left in the reused buffer"
        );
        // A fresh buffer would have b's length as its capacity.
        assert_eq!(
            fb.payload.capacity(),
            a.len(),
            "the recycled buffer was reused"
        );
        for _ in 0..SPARE_MAX * 2 {
            d.recycle(Vec::with_capacity(DIRECT));
        }
        d.recycle(vec![1; 10]);
        assert_eq!(
            d.spare.len(),
            SPARE_MAX,
            "bounded; small buffers are not kept"
        );
    }

    #[test]
    fn big_frames_split_anywhere_come_out_whole_with_small_ones_around() {
        let big: Vec<u8> = (0..DIRECT * 3 + 7).map(|i| (i * 31 % 251) as u8).collect();
        let mut wire = Vec::new();
        encode(1, b"head", &mut wire);
        encode(2, &big, &mut wire);
        encode(3, b"tail", &mut wire);
        encode(2, &big[..DIRECT], &mut wire);
        for split in [1, 3, 5, 4096, DIRECT - 1, DIRECT + 9, wire.len()] {
            let got = decode_in_chunks(&wire, split);
            let kinds: Vec<u8> = got.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, [1, 2, 3, 2], "split {split}");
            assert_eq!(got[1].payload, big, "split {split}");
            assert_eq!(got[2].payload, b"tail", "split {split}");
            assert_eq!(got[3].payload, big[..DIRECT], "split {split}");
        }
    }

    #[test]
    fn a_big_frame_cut_short_is_truncated() {
        let mut wire = Vec::new();
        encode(2, &vec![9; DIRECT * 2], &mut wire);
        let mut d = Decoder::new();
        d.push(&wire[..DIRECT]);
        assert_eq!(d.next_frame(|_| true), Ok(None));
        d.push(&wire[DIRECT..DIRECT + 100]);
        assert_eq!(d.next_frame(|_| true), Ok(None));
        assert_eq!(d.pending(), DIRECT + 100);
        assert_eq!(
            d.finish(),
            Err(ProtoError::Truncated {
                have: DIRECT + 100,
                need: HEADER + DIRECT * 2
            })
        );
    }

    #[test]
    fn oversize_length_is_refused_before_any_allocation() {
        let mut d = Decoder::new();
        d.push(&[1, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            d.next_frame(|_| true),
            Err(ProtoError::Oversize {
                len: u32::MAX as u64
            })
        );
        assert!(d.pending() == 5, "nothing was allocated for the payload");
    }

    #[test]
    fn truncated_frame_is_reported_at_end_of_stream() {
        let mut d = Decoder::new();
        d.push(&[1, 10, 0, 0, 0, 1, 2]);
        assert_eq!(d.next_frame(|_| true), Ok(None));
        assert_eq!(d.finish(), Err(ProtoError::Truncated { have: 7, need: 15 }));
    }

    #[test]
    fn cursor_refuses_short_fields() {
        let mut c = Cursor::new(&[3, 0, 0, 0, b'a']);
        assert!(c.bytes("name").is_err());
    }
}
