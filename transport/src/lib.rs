//! TLS 1.3 with pinned certificates, plus yamux, shared by `nexus-agent-proxy`
//! and `nexus-shim`.
//!
//! Neither side trusts a CA: each pins the SHA-256 fingerprint of the other's
//! self-signed certificate, learned once at pairing. One task owns each yamux
//! connection ([`mux::start`]); everything else talks to it through a
//! [`MuxHandle`].
#![forbid(unsafe_code)]

mod coalesce;
pub mod docs;
mod error;
mod fingerprint;
mod frame_io;
mod identity;
pub mod log_limit;
pub mod mux;
pub mod process;
pub mod tls;
pub mod ws;

pub use error::TransportError;
pub use fingerprint::{Fingerprint, ParseFingerprintError};
pub use frame_io::{
    recv, recv_body, recv_body_into, recv_wiping, recv_wiping_into, send, send_chunk, send_data,
};
pub use identity::{Identity, write_private};
pub use mux::{MuxConfig, MuxHandle, MuxStream};
pub use tokio_rustls;

/// Bytes the link's socket is read in at once, below TLS.
pub const LINK_READ_BUFFER: usize = 64 << 10;

/// The link's byte stream with a read buffer below TLS. rustls reads at
/// most 4 KiB per call (`read_tls`), so a bulk answer cost a `recv` per
/// 4 KiB; through this buffer a `recv` takes what the socket holds, up to
/// [`LINK_READ_BUFFER`]. Writes pass straight through.
pub fn read_buffered<T: tokio::io::AsyncRead>(io: T) -> tokio::io::BufReader<T> {
    tokio::io::BufReader::with_capacity(LINK_READ_BUFFER, io)
}

/// Sets `TCP_NODELAY`: every call is a small request waiting for a small
/// answer, so Nagle's algorithm would only add latency.
pub fn tune_tcp(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}
