//! Bodies between the endpoint's async side and the blocking file I/O. A GET's file is read on
//! a blocking thread into a small bounded channel that the response streams from (a slow
//! client stalls its reader, never the runtime); a PUT's body is pulled chunk by chunk by the
//! blocking writer, each chunk within the idle limit.

use super::errors::BodyError;
use bytes::Bytes;
use futures::StreamExt;
use s3s::StdError;
use s3s::dto::StreamingBlob;
use s3s::stream::{ByteStream, RemainingLength};
use std::fs::File;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// Bytes read from a file per chunk.
pub const CHUNK: usize = 256 << 10;
/// Chunks read ahead of the client.
const AHEAD: usize = 4;

/// A byte range of a file, read on a blocking thread.
pub struct FileStream {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    left: u64,
}

impl FileStream {
    /// Must run inside the endpoint's runtime.
    pub fn spawn(f: File, range: Range<u64>) -> FileStream {
        let (tx, rx) = mpsc::channel(AHEAD);
        let left = range.end - range.start;
        tokio::task::spawn_blocking(move || read_range(&f, range, &tx));
        FileStream { rx, left }
    }
}

impl FileStream {
    /// The bytes of a remote object (`len` of them), pulled on a blocking thread.
    pub fn from_chunks(mut chunks: super::remote::Chunks, len: u64) -> FileStream {
        let (tx, rx) = mpsc::channel(AHEAD);
        tokio::task::spawn_blocking(move || {
            loop {
                let r = chunks();
                let stop = !matches!(r, Ok(Some(_)));
                let item = match r {
                    Ok(Some(b)) => Ok(b),
                    Ok(None) => return,
                    Err(e) => Err(e),
                };
                if tx.blocking_send(item).is_err() || stop {
                    return; // the client went away (dropping `chunks` drops the connection)
                }
            }
        });
        FileStream { rx, left: len }
    }
}

fn read_range(f: &File, range: Range<u64>, tx: &mpsc::Sender<Result<Bytes, std::io::Error>>) {
    use std::os::unix::fs::FileExt;
    let mut at = range.start;
    while at < range.end {
        let n = CHUNK.min((range.end - at) as usize);
        let mut buf = vec![0u8; n];
        let r = match f.read_at(&mut buf, at) {
            // The name may be replaced meanwhile; this open file never shrinks under a reader
            // (objects are replaced by rename), so 0 bytes here is a real fault.
            Ok(0) => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            Ok(k) => {
                buf.truncate(k);
                at += k as u64;
                Ok(Bytes::from(buf))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
        let failed = r.is_err();
        if tx.blocking_send(r).is_err() || failed {
            return; // the client went away, or the error is sent
        }
    }
}

impl futures::Stream for FileStream {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.left = self.left.saturating_sub(b.len() as u64);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) if self.left > 0 => {
                let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                self.left = 0;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl ByteStream for FileStream {
    fn remaining_length(&self) -> RemainingLength {
        RemainingLength::new_exact(self.left as usize)
    }
}

/// A PUT body as a blocking pull: for the writer on a blocking thread of the runtime `h`.
pub fn puller(
    h: tokio::runtime::Handle,
    body: Option<StreamingBlob>,
    idle: Duration,
) -> impl FnMut() -> Result<Option<Bytes>, BodyError> {
    let mut body = body;
    move || {
        let Some(b) = body.as_mut() else {
            return Ok(None); // no body: an empty object
        };
        match h.block_on(tokio::time::timeout(idle, b.next())) {
            Err(_) => Err(BodyError::Idle),
            Ok(None) => Ok(None),
            Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
            Ok(Some(Err(e))) => Err(BodyError::Read(e.to_string())),
        }
    }
}
