//! Reading and writing single frames on a raw byte stream (the handshake,
//! before yamux takes over the stream).
//!
//! Reads take exactly one frame's bytes and never more, so nothing that
//! follows the frame (the first yamux bytes) is lost in a buffer.

use nexus_protocol::{FrameError, HEADER_LEN, body_len, decode, encode, encode_frame};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::{Zeroize, Zeroizing};

use crate::TransportError;

/// Writes one message as a frame and flushes.
///
/// # Errors
/// I/O failures.
pub async fn send<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), TransportError> {
    // Frames may carry secrets: both buffers are wiped once written.
    let body = Zeroizing::new(encode(msg));
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    let mut buf = Zeroizing::new(Vec::with_capacity(HEADER_LEN + body.len()));
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)
        .await
        .map_err(TransportError::io("sending a frame"))?;
    w.flush()
        .await
        .map_err(TransportError::io("sending a frame"))?;
    Ok(())
}

/// Writes one frame of bulk data that holds no secret (file contents, tool
/// output): built in one buffer and not wiped, which costs a pass over the
/// data per hop for every frame that does.
///
/// # Errors
/// I/O failures.
pub async fn send_data<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), TransportError> {
    let frame = encode_frame(msg);
    w.write_all(&frame)
        .await
        .map_err(TransportError::io("sending a frame"))?;
    w.flush()
        .await
        .map_err(TransportError::io("sending a frame"))?;
    Ok(())
}

/// Writes `data` as one [`nexus_protocol::Reply::Chunk`] frame on
/// `channel` and flushes: its prefix, then the data as it lies (no copy
/// into an encoded frame first). Bulk data that holds no secret; not wiped.
///
/// # Errors
/// I/O failures.
pub async fn send_chunk<W: AsyncWrite + Unpin>(
    w: &mut W,
    channel: nexus_protocol::Channel,
    data: &[u8],
) -> Result<(), TransportError> {
    let prefix = nexus_protocol::chunk_frame_prefix(channel, data.len());
    let sending = TransportError::io("sending a frame");
    w.write_all(&prefix).await.map_err(sending)?;
    let sending = TransportError::io("sending a frame");
    w.write_all(data).await.map_err(sending)?;
    w.flush()
        .await
        .map_err(TransportError::io("sending a frame"))?;
    Ok(())
}

/// Reads exactly one frame of at most `max` bytes and decodes it.
///
/// # Errors
/// [`TransportError::Closed`] on a clean EOF before the frame, a frame error
/// when oversized or truncated, a decode error when malformed.
pub async fn recv<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<T, TransportError> {
    recv_wiping(r, max, |_: &T| true).await
}

/// Reads exactly one frame of at most `max` bytes and returns its body,
/// undecoded, in a buffer wiped on drop (a relay that passes some frames on
/// as they are).
///
/// # Errors
/// [`TransportError::Closed`] on a clean EOF before the frame, a frame error
/// when oversized or truncated.
pub async fn recv_body<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, TransportError> {
    let mut body = Zeroizing::new(Vec::new());
    recv_body_into(r, max, &mut body).await?;
    Ok(body)
}

/// Like [`recv_body`], into `body` (emptied first, its allocation kept): a
/// relay of bulk frames allocates once rather than once a frame (each fresh
/// allocation of a frame this size costs page faults). The caller wipes
/// `body` once what it held may be secret; on an error it holds part of a
/// frame.
///
/// # Errors
/// As [`recv_body`].
pub async fn recv_body_into<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    body: &mut Vec<u8>,
) -> Result<(), TransportError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r
            .read(&mut header[got..])
            .await
            .map_err(TransportError::io("reading a frame"))?;
        if n == 0 {
            return Err(if got == 0 {
                TransportError::Closed
            } else {
                FrameError::Truncated {
                    buffered: got,
                    expected: HEADER_LEN,
                }
                .into()
            });
        }
        got += n;
    }
    let len = body_len(header, max)?;
    // Filled without zeroing first (a pass over every frame saved); `take`
    // keeps the reads inside this frame, and the buffer grows only while
    // empty (so no copy of a frame is left behind by a reallocation).
    body.clear();
    body.reserve(len);
    while body.len() < len {
        let left = (len - body.len()) as u64;
        let n = (&mut *r)
            .take(left)
            .read_buf(body)
            .await
            .map_err(TransportError::io("reading a frame"))?;
        if n == 0 {
            return Err(TransportError::Frame(FrameError::Truncated {
                buffered: HEADER_LEN + body.len(),
                expected: HEADER_LEN + len,
            }));
        }
    }
    Ok(())
}

/// Like [`recv`], but the frame's bytes are wiped only when `wipe` says the
/// decoded message may hold a secret (a relay passes bulk data frames
/// through without a wiping pass each; anything undecodable is wiped).
///
/// # Errors
/// As [`recv_body`], and a decode error when malformed.
pub async fn recv_wiping<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
    wipe: impl FnOnce(&T) -> bool,
) -> Result<T, TransportError> {
    let mut body = Zeroizing::new(Vec::new());
    let msg = recv_wiping_into(r, max, &mut body, wipe).await?;
    // Wiped already where it had to be: released without another pass.
    drop(std::mem::take(&mut *body));
    Ok(msg)
}

/// Like [`recv_wiping`], reading into `body` (its allocation kept for the
/// next frame, see [`recv_body_into`]): the frame's bytes are wiped when
/// `wipe` says the message may hold a secret or it does not decode, and
/// only cleared otherwise.
///
/// # Errors
/// As [`recv_wiping`]; `body` then holds part of a frame, wiped when dropped.
pub async fn recv_wiping_into<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
    body: &mut Zeroizing<Vec<u8>>,
    wipe: impl FnOnce(&T) -> bool,
) -> Result<T, TransportError> {
    recv_body_into(r, max, body).await?;
    let decoded = decode::<T>(body);
    match &decoded {
        Ok(msg) if !wipe(msg) => body.clear(),
        _ => body.zeroize(),
    }
    Ok(decoded?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_protocol::{ErrorCode, Reply};

    #[tokio::test]
    async fn exact_reads_leave_following_bytes() {
        let (mut a, mut b) = tokio::io::duplex(64);
        send(&mut a, &Reply::error(ErrorCode::Denied, "no"))
            .await
            .map_err(|e| e.to_string())
            .unwrap_or(());
        a.write_all(b"tail").await.unwrap_or(());
        let got: Result<Reply, _> = recv(&mut b, 1024).await;
        assert!(matches!(got, Ok(Reply::Error(ref e)) if e.code == ErrorCode::Denied));
        let mut tail = [0u8; 4];
        b.read_exact(&mut tail).await.unwrap_or(0);
        assert_eq!(&tail, b"tail");
    }

    #[tokio::test]
    async fn oversized_and_truncated() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 1, 0]).await.unwrap_or(());
        let got: Result<Reply, _> = recv(&mut b, 16).await;
        assert!(matches!(
            got,
            Err(TransportError::Frame(FrameError::TooLarge {
                len: 256,
                max: 16
            }))
        ));
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 9, 1, 2]).await.unwrap_or(());
        drop(a);
        let got: Result<Reply, _> = recv(&mut b, 16).await;
        assert!(
            matches!(
                got,
                Err(TransportError::Frame(FrameError::Truncated { .. }))
            ),
            "{got:?}"
        );
    }
}
