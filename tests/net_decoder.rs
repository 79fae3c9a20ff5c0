//! The frame decoder against random bytes: an error or more-needed, never a panic, never a
//! buffer larger than what was pushed.

use ferry::net::frame::{self, MAX_PAYLOAD};
use ferry::net::msg::{Msg, MsgDecoder, VERSION};
use proptest::prelude::*;

/// Feeds `bytes` in `chunk`-sized pieces; returns how the stream ended.
fn feed(d: &mut MsgDecoder, bytes: &[u8], chunk: usize) -> Result<usize, String> {
    let mut n = 0;
    for piece in bytes.chunks(chunk.max(1)) {
        d.push(piece);
        loop {
            match d.next_msg() {
                Ok(Some(_)) => n += 1,
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    d.finish().map_err(|e| e.to_string())?;
    Ok(n)
}

fn hello() -> Vec<u8> {
    let mut v = Vec::new();
    Msg::Hello { version: VERSION }.encode(&mut v);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096),
                                chunk in 1usize..600) {
        let mut d = MsgDecoder::new();
        // Random bytes are not a ferry peer: refused (or still waiting for a whole frame).
        if let Ok(n) = feed(&mut d, &bytes, chunk) {
            prop_assert!(n == 0 || bytes.starts_with(&[1]) || bytes.starts_with(&[2])
                || bytes.starts_with(&[5]));
        }
    }

    #[test]
    fn random_frames_after_hello_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..8192),
                                             chunk in 1usize..900) {
        let mut d = MsgDecoder::new();
        let mut wire = hello();
        wire.extend_from_slice(&bytes);
        let _ = feed(&mut d, &wire, chunk);
    }

    #[test]
    fn well_formed_headers_with_random_payloads(kind in any::<u8>(),
                                                payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut wire = hello();
        frame::encode(kind, &payload, &mut wire);
        let mut d = MsgDecoder::new();
        let _ = feed(&mut d, &wire, 7);
    }

    #[test]
    fn any_length_over_the_limit_is_refused(len in (MAX_PAYLOAD as u32 + 1)..=u32::MAX, kind in 1u8..=16) {
        let mut wire = hello();
        wire.push(kind);
        wire.extend_from_slice(&len.to_le_bytes());
        let mut d = MsgDecoder::new();
        let e = feed(&mut d, &wire, 64).unwrap_err();
        prop_assert!(e.contains("exceeds the limit"), "{}", e);
    }
}

#[test]
fn truncated_stream_is_an_error() {
    let mut wire = hello();
    Msg::Data {
        bytes: vec![9; 1000],
    }
    .encode(&mut wire);
    wire.truncate(wire.len() - 10);
    let mut d = MsgDecoder::new();
    let e = feed(&mut d, &wire, 100).unwrap_err();
    assert!(e.contains("closed inside a frame"), "{e}");
}

#[test]
fn unknown_version_is_named() {
    let mut wire = Vec::new();
    Msg::Hello { version: 999 }.encode(&mut wire);
    let mut d = MsgDecoder::new();
    let e = feed(&mut d, &wire, 3).unwrap_err();
    assert!(e.contains("version mismatch") && e.contains("999"), "{e}");
}
