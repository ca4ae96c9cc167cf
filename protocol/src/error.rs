use thiserror::Error;

/// Why a frame could not be read off the byte stream.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The length prefix announces more than the negotiated limit. The body is
    /// never buffered, so a hostile peer cannot make us allocate it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length announced by the peer.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// The peer closed the stream in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} of {expected} bytes received)")]
    Truncated {
        /// Bytes received, header included.
        buffered: usize,
        /// Bytes the frame needed, header included.
        expected: usize,
    },
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a frame body is not a valid message.
#[derive(Debug, Error)]
#[error("malformed message: {0}")]
pub struct DecodeError(pub(crate) String);

impl From<rmp_serde::decode::Error> for DecodeError {
    fn from(e: rmp_serde::decode::Error) -> Self {
        Self(e.to_string())
    }
}
