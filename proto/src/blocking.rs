//! Framing over blocking `std::io` streams, for servers that give each connection its own thread.

use crate::frame::{decode_frame, encode_frame, frame_len, FrameError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{ErrorKind, Read, Write};

/// Reads one frame and decodes it. `Ok(None)` is a clean end of stream between frames.
/// `buf` is reused across calls so a long-lived connection does not allocate per message.
pub fn read_frame<R, T>(reader: &mut R, buf: &mut Vec<u8>) -> Result<Option<T>, FrameError>
where
    R: Read,
    T: DeserializeOwned,
{
    let mut header = [0u8; 4];
    loop {
        match reader.read(&mut header[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    reader.read_exact(&mut header[1..]).map_err(FrameError::from_read)?;
    let len = frame_len(header)?;
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(buf).map_err(FrameError::from_read)?;
    decode_frame(buf).map(Some)
}

/// Encodes and writes one frame with a single write call.
pub fn write_frame<W, T>(writer: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: Write,
    T: Serialize,
{
    writer.write_all(&encode_frame(msg))?;
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, RequestFrame};
    use std::io::Cursor;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &RequestFrame::from(Request::GetToken)).expect("write");
        write_frame(&mut wire, &RequestFrame::from(Request::Status)).expect("write");
        let mut reader = Cursor::new(wire);
        let mut buf = Vec::new();
        let first: RequestFrame = read_frame(&mut reader, &mut buf).expect("read").expect("frame");
        let second: RequestFrame = read_frame(&mut reader, &mut buf).expect("read").expect("frame");
        assert_eq!((first.request, second.request), (Request::GetToken, Request::Status));
        assert!(read_frame::<_, RequestFrame>(&mut reader, &mut buf).expect("read").is_none());
    }

    #[test]
    fn a_frame_cut_short_is_truncated() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &RequestFrame::from(Request::GetToken)).expect("write");
        wire.truncate(wire.len() - 3);
        let err = read_frame::<_, RequestFrame>(&mut Cursor::new(wire), &mut Vec::new()).expect_err("cut");
        assert!(matches!(err, FrameError::Truncated), "{err}");
        let err = read_frame::<_, RequestFrame>(&mut Cursor::new(vec![0, 0]), &mut Vec::new())
            .expect_err("cut header");
        assert!(matches!(err, FrameError::Truncated), "{err}");
    }
}
