//! An upstream error's content coding, undone for the classifier alone: the client receives the bytes
//! exactly as the upstream sent them. Clients ask for compressed answers (One-Hub and the Python SDK send
//! `accept-encoding: gzip, deflate`, Node's fetch adds `br`), and an error whose message cannot be read
//! is counted as `other`: a third-party refusal would go unseen. What cannot be undone here (`zstd`,
//! stacked codings, a coding that does not decode, more than [`MAX_DECODED`] once decoded) stays
//! unread, as before.

use http::header::CONTENT_ENCODING;
use http::HeaderMap;
use std::borrow::Cow;
use std::io::Read;

/// An error body decoded past this is not the API's error (which is a few hundred bytes), and a
/// small compressed body that expands without end must not hold memory.
pub const MAX_DECODED: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    /// HTTP's `deflate` is zlib-wrapped, but raw deflate streams are sent under that name too.
    Deflate,
    Brotli,
}

/// The answer's one content coding, or `None` for one this cannot undo.
pub fn coding(headers: &HeaderMap) -> Option<Coding> {
    let mut values = headers.get_all(CONTENT_ENCODING).iter();
    let Some(value) = values.next() else { return Some(Coding::Identity) };
    if values.next().is_some() {
        return None;
    }
    let name = value.to_str().ok()?.trim();
    if name.contains(',') {
        return None;
    }
    match name.to_ascii_lowercase().as_str() {
        "" | "identity" => Some(Coding::Identity),
        "gzip" | "x-gzip" => Some(Coding::Gzip),
        "deflate" => Some(Coding::Deflate),
        "br" => Some(Coding::Brotli),
        _ => None,
    }
}

/// `body` with `coding` undone, or `None` when it does not decode or decodes past [`MAX_DECODED`].
pub fn decode(coding: Coding, body: &[u8]) -> Option<Cow<'_, [u8]>> {
    let decoded = match coding {
        Coding::Identity => return Some(Cow::Borrowed(body)),
        Coding::Gzip => read_all(flate2::read::MultiGzDecoder::new(body)),
        Coding::Deflate => read_all(flate2::read::ZlibDecoder::new(body))
            .or_else(|| read_all(flate2::read::DeflateDecoder::new(body))),
        Coding::Brotli => read_all(brotli_decompressor::Decompressor::new(body, 4096)),
    };
    decoded.map(Cow::Owned)
}

/// Everything `reader` yields, unless it fails or yields more than [`MAX_DECODED`].
fn read_all(reader: impl Read) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(MAX_DECODED + 1).read_to_end(&mut out).ok()?;
    (out.len() as u64 <= MAX_DECODED).then_some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    const ERROR: &[u8] =
        br#"{"type":"error","error":{"type":"invalid_request_error","message":"Third-party apps"}}"#;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CONTENT_ENCODING, v.parse().unwrap());
        }
        h
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn the_codings_clients_ask_for_are_named_and_others_are_not() {
        assert_eq!(coding(&headers(&[])), Some(Coding::Identity));
        assert_eq!(coding(&headers(&["identity"])), Some(Coding::Identity));
        assert_eq!(coding(&headers(&["GZIP"])), Some(Coding::Gzip));
        assert_eq!(coding(&headers(&[" x-gzip "])), Some(Coding::Gzip));
        assert_eq!(coding(&headers(&["deflate"])), Some(Coding::Deflate));
        assert_eq!(coding(&headers(&["br"])), Some(Coding::Brotli));
        assert_eq!(coding(&headers(&["zstd"])), None);
        assert_eq!(coding(&headers(&["gzip, br"])), None, "stacked codings");
        assert_eq!(coding(&headers(&["gzip", "gzip"])), None, "stacked codings in two headers");
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, http::HeaderValue::from_bytes(b"gz\xffip").unwrap());
        assert_eq!(coding(&h), None, "not text");
    }

    #[test]
    fn gzip_deflate_raw_deflate_and_brotli_are_undone() {
        assert_eq!(decode(Coding::Gzip, &gzip(ERROR)).unwrap(), ERROR);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(ERROR).unwrap();
        assert_eq!(decode(Coding::Deflate, &z.finish().unwrap()).unwrap(), ERROR);
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(ERROR).unwrap();
        assert_eq!(decode(Coding::Deflate, &raw.finish().unwrap()).unwrap(), ERROR);
        // A brotli stream of ERROR stored uncompressed, bits from the least significant: WBITS=16 (0),
        // ISLAST=0, MNIBBLES=4 (00), MLEN-1 in 16 bits, ISUNCOMPRESSED=1, padding to the byte; the
        // bytes; then an empty last meta-block (ISLAST=1, ISLASTEMPTY=1).
        let mlen_minus_1 = u32::try_from(ERROR.len() - 1).unwrap();
        let header: u32 = (mlen_minus_1 << 4) | (1 << 20);
        let mut br = header.to_le_bytes()[..3].to_vec();
        br.extend_from_slice(ERROR);
        br.push(0x03);
        assert_eq!(decode(Coding::Brotli, &br).unwrap(), ERROR);
        assert_eq!(decode(Coding::Identity, ERROR).unwrap(), ERROR);
    }

    #[test]
    fn garbage_and_bombs_stay_unread() {
        assert_eq!(decode(Coding::Gzip, b"not gzip at all"), None);
        assert_eq!(decode(Coding::Deflate, b"\xff\xff\xff\xff"), None);
        assert_eq!(decode(Coding::Brotli, b"\xff\xff\xff\xff\xff\xff"), None);
        let bomb = gzip(&vec![b'a'; 10 * 1024 * 1024]);
        assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
        assert_eq!(decode(Coding::Gzip, &bomb), None, "10 MiB from {} bytes", bomb.len());
        let exactly = gzip(&vec![b'a'; MAX_DECODED as usize]);
        assert_eq!(decode(Coding::Gzip, &exactly).unwrap().len() as u64, MAX_DECODED);
    }
}
