//! Length-prefixed frames and typed encode/decode.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{DecodeError, FrameError};

/// Bytes of the big-endian length prefix.
pub const HEADER_LEN: usize = 4;
/// Default limit for one frame body (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;
/// Limit before the peer is authenticated: hellos are tiny (bore uses 256 B;
/// ours carry a token and version ranges).
pub const HANDSHAKE_MAX_FRAME: usize = 4 << 10;

/// Serializes a message into a frame body (MessagePack with named fields).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing our own plain data types into a Vec cannot fail: no maps with
    // non-string keys, no I/O. Should that ever change, a nil body would be
    // rejected by the peer's decoder, never mis-read.
    rmp_serde::to_vec_named(msg).unwrap_or_default()
}

/// Serializes a message straight into a whole frame (length prefix and
/// body in one buffer, one copy of the payload): for bulk frames such as
/// file data, where an extra copy per hop shows.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    if rmp_serde::encode::write_named(&mut out, msg).is_err() {
        out.truncate(HEADER_LEN);
    }
    let len = u32::try_from(out.len() - HEADER_LEN).unwrap_or(u32::MAX);
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    out
}

/// Deepest nesting a frame may have. Our messages nest a handful of levels;
/// rmp-serde's default (1024) lets a 1 KiB frame of nested arrays inside an
/// ignored field overflow a small thread stack.
pub const MAX_DEPTH: usize = 32;

/// Parses a frame body. Unknown fields are ignored (forward compatibility);
/// anything else malformed, or nested deeper than [`MAX_DEPTH`], is an error,
/// never a panic.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    decode_borrowed(body)
}

/// [`decode`] for a message that borrows from `body` (bytes are not
/// copied out).
///
/// # Errors
/// [`DecodeError`] when `body` is not a valid `T`.
pub fn decode_borrowed<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    de.set_max_depth(MAX_DEPTH);
    Ok(T::deserialize(&mut de)?)
}

/// Reads a frame header: the body length, refused when over `max` (before
/// anything is buffered). Every frame reader goes through here.
///
/// # Errors
/// [`FrameError::TooLarge`].
pub fn body_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// `tokio_util` codec for length-prefixed frames with a hard size limit.
///
/// Decoding returns `Ok(None)` while a frame is incomplete and checks the
/// announced length before reserving anything.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// A codec that refuses frames larger than `max` bytes (body only).
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self { max }
    }

    /// The limit in force.
    #[must_use]
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        let Some(&[a, b, c, d]) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = body_len([a, b, c, d], self.max)?;
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(src.split_to(len)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let expected = src.get(..HEADER_LEN).map_or(HEADER_LEN, |h| {
                    HEADER_LEN + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize
                });
                Err(FrameError::Truncated {
                    buffered: src.len(),
                    expected,
                })
            }
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&body[..], dst)
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        if body.len() > self.max {
            return Err(FrameError::TooLarge {
                len: body.len(),
                max: self.max,
            });
        }
        let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
            len: body.len(),
            max: self.max,
        })?;
        dst.reserve(HEADER_LEN + body.len());
        dst.put_u32(len);
        dst.put_slice(body);
        Ok(())
    }
}

impl Encoder<Vec<u8>> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: Vec<u8>, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&body[..], dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        FrameCodec::default()
            .encode(body, &mut out)
            .unwrap_or_default();
        out
    }

    #[test]
    fn round_trip_and_partial() {
        let mut codec = FrameCodec::default();
        let mut buf = frame(b"hello");
        let tail = buf.split_off(6);
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        buf.unsplit(tail);
        let got = codec.decode(&mut buf).ok().flatten();
        assert_eq!(got.as_deref(), Some(&b"hello"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_is_refused_before_buffering() {
        let mut codec = FrameCodec::new(8);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 9][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { len: 9, max: 8 })
        ));
        assert!(matches!(
            codec.encode(&[0u8; 9][..], &mut BytesMut::new()),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn encode_frame_is_header_plus_encode() {
        let msg = ("x", 7u32, vec![1u8, 2, 3]);
        let framed = encode_frame(&msg);
        let body = encode(&msg);
        assert_eq!(framed[..HEADER_LEN], (body.len() as u32).to_be_bytes());
        assert_eq!(framed[HEADER_LEN..], body[..]);
    }

    #[test]
    fn eof_inside_frame_is_truncated() {
        let mut codec = FrameCodec::default();
        let mut buf = frame(b"abcdef");
        buf.truncate(7);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated {
                buffered: 7,
                expected: 10
            })
        ));
    }
}
