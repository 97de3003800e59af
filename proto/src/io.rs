use crate::frame::{decode_frame, encode_frame, frame_len, FrameError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one frame and decodes it. `Ok(None)` is a clean end of stream between frames.
/// `buf` is reused across calls so a long-lived connection does not allocate per message.
pub async fn read_frame<R, T>(reader: &mut R, buf: &mut Vec<u8>) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut header = [0u8; 4];
    match reader.read(&mut header[..1]).await? {
        0 => return Ok(None),
        _ => {
            reader.read_exact(&mut header[1..]).await.map_err(FrameError::from_read)?;
        }
    }
    let len = frame_len(header)?;
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(buf).await.map_err(FrameError::from_read)?;
    decode_frame(buf).map(Some)
}

/// Encodes and writes one frame with a single write call.
pub async fn write_frame<W, T>(writer: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    writer.write_all(&encode_frame(msg)).await?;
    writer.flush().await?;
    Ok(())
}
