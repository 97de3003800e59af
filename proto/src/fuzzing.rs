//! What must hold for any bytes a peer sends on the socket, checked by the `frame` fuzz target
//! (`fuzz/` at the repository's root) and by the replay of its seed corpus below. A property that does
//! not hold panics, which is what libFuzzer reports as a crash.

use crate::blocking::read_frame;
use crate::{decode_frame, encode_frame, frame_len, FrameError, RequestFrame, ResponseFrame, MAX_FRAME_LEN};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::io::Cursor;

/// `data` as a length prefix, as a frame body (whole, and after a 4-byte prefix) of either direction,
/// and as a stream of frames read one after another.
pub fn frames(data: &[u8]) {
    if let Some(header) = data.first_chunk::<4>() {
        let declared = u32::from_be_bytes(*header) as usize;
        match frame_len(*header) {
            Ok(len) => assert!(len == declared && len <= MAX_FRAME_LEN),
            Err(e) => assert!(declared > MAX_FRAME_LEN, "{declared}-byte frame refused: {e}"),
        }
    }
    for body in [data, data.get(4..).unwrap_or_default()] {
        decode::<RequestFrame>(body);
        decode::<ResponseFrame>(body);
    }
    read_all::<RequestFrame>(data);
    read_all::<ResponseFrame>(data);
}

/// A body decodes to a message that encodes and decodes back to itself, or fails with an error that
/// quotes nothing of it.
fn decode<T: DeserializeOwned + Serialize + PartialEq + Debug>(body: &[u8]) {
    match decode_frame::<T>(body) {
        Ok(message) => {
            let frame = encode_frame(&message);
            let again = decode_frame::<T>(&frame[4..]).expect("an encoded message decodes");
            assert_eq!(again, message, "a message survives encoding");
        }
        Err(e) => assert_quotes_nothing(&e),
    }
}

/// Reads frames until the stream ends or fails: each frame read takes exactly its prefix and body from
/// the stream, and reading stops for good at the first error.
fn read_all<T: DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    let mut stream = Cursor::new(data);
    let mut buf = Vec::new();
    loop {
        let start = stream.position() as usize;
        match read_frame::<_, T>(&mut stream, &mut buf) {
            Ok(None) => {
                assert_eq!(start, data.len(), "a clean end only between frames");
                return;
            }
            Ok(Some(message)) => {
                let end = stream.position() as usize;
                let body = &data[start + 4..end];
                assert_eq!(body.len(), buf.len());
                let alone = decode_frame::<T>(body).expect("a frame read decodes on its own");
                assert_eq!(alone, message);
            }
            Err(e) => {
                assert_quotes_nothing(&e);
                return;
            }
        }
    }
}

/// Frame errors name a kind, a position or a length, never the peer's text: a frame can carry a token.
/// serde's own messages would quote it in backticks; ours have no quotes at all.
fn assert_quotes_nothing(e: &FrameError) {
    let text = e.to_string();
    assert!(!text.contains(['`', '"', '\'']), "a frame error quotes its input: {text}");
    assert!(!text.contains(crate::anthropic::TOKEN_PREFIX) && !text.contains("sctest"), "{text}");
}

/// Runs every file of `fuzz/corpus/<target>/` through `check`, naming each file that breaks it: the seed
/// corpus (and every crash once found) as a regression suite on a stable toolchain.
pub fn replay_corpus(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut failed = Vec::new();
    let mut seen = 0;
    for entry in entries {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
        seen += 1;
    }
    assert!(seen > 0, "{} is empty", dir.display());
    assert!(failed.is_empty(), "{} of {seen} inputs break `{target}`: {failed:#?}", failed.len());
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_frame_corpus_holds() {
        super::replay_corpus("frame", super::frames);
    }
}
