use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks, carried by every frame. Bumped only for incompatible
/// changes; new optional fields do not need a bump because both sides ignore fields they do not know.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest frame either side accepts. Real messages are a few hundred bytes; the cap keeps a
/// confused or hostile peer from making the agent allocate without bound.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The message is not valid JSON of the expected shape. The detail names the position and the
    /// kind of fault but never quotes the input, which may hold a token.
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("protocol version {got} is not supported (this side speaks {supported})")]
    UnsupportedVersion { got: u16, supported: u16 },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    // The cause is in the message, not `source()`, so `{:#}` chains do not print it twice.
    #[error("socket I/O: {0}")]
    Io(std::io::Error),
}

/// Serializes `msg` into a complete frame: length prefix and JSON body.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0; 4]);
    // Serializing our own plain-data messages into a Vec cannot fail: no maps with non-string keys, no
    // custom serializers that error.
    serde_json::to_writer(&mut out, msg).unwrap_or_else(|e| unreachable!("message serialization: {e}"));
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Reads the length prefix, refusing frames over [`MAX_FRAME_LEN`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN });
    }
    Ok(len)
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u16,
}

/// Parses a frame body (without its length prefix). A body that fails to parse but names another
/// protocol version is reported as [`FrameError::UnsupportedVersion`], so mismatched builds say so.
pub fn decode_frame<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| {
        if let Ok(VersionOnly { v }) = serde_json::from_slice::<VersionOnly>(body) {
            if v != PROTOCOL_VERSION {
                return FrameError::UnsupportedVersion { got: v, supported: PROTOCOL_VERSION };
            }
        }
        malformed(&e)
    })
}

fn malformed(e: &serde_json::Error) -> FrameError {
    use serde_json::error::Category;
    let kind = match e.classify() {
        Category::Io => "I/O error",
        Category::Syntax => "invalid JSON",
        Category::Data => "unexpected message shape",
        Category::Eof => "incomplete JSON",
    };
    FrameError::Malformed(format!("{kind} at line {} column {}", e.line(), e.column()))
}

impl FrameError {
    /// A read that ended early: inside a frame, the end of the stream is a truncated frame.
    pub(crate) fn from_read(e: std::io::Error) -> FrameError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    }
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, RequestFrame, Secret};

    #[test]
    fn encode_then_decode() {
        let frame = encode_frame(&RequestFrame::from(Request::Status));
        let len = frame_len(frame[..4].try_into().expect("4 bytes")).expect("len");
        assert_eq!(len, frame.len() - 4);
        let back: RequestFrame = decode_frame(&frame[4..]).expect("decode");
        assert_eq!(back.request, Request::Status);
    }

    #[test]
    fn oversized_frames_are_refused() {
        let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(frame_len(header), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn malformed_errors_never_quote_the_input() {
        let body = br#"{"v":1,"op":"report_rejected","token":12345678}"#;
        let err = decode_frame::<RequestFrame>(body).expect_err("must fail");
        assert!(!err.to_string().contains("12345678"), "{err}");
        let body = br#"{"v":1,"op":"sk-ant-oat01-leak"}"#;
        let err = decode_frame::<RequestFrame>(body).expect_err("must fail");
        assert!(!err.to_string().contains("leak"), "{err}");
        let _ = Secret::new("unused");
    }

    #[test]
    fn other_versions_are_named() {
        let body = br#"{"v":7,"op":"teleport"}"#;
        let err = decode_frame::<RequestFrame>(body).expect_err("must fail");
        assert!(matches!(err, FrameError::UnsupportedVersion { got: 7, .. }), "{err}");
    }
}
