use thiserror::Error;

/// Failures of the transport layer.
#[derive(Debug, Error)]
pub enum TransportError {
    /// Socket or file I/O.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS configuration or handshake.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Certificate generation.
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A PEM file that does not hold what it should.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A frame could not be read.
    #[error(transparent)]
    Frame(#[from] nexus_protocol::FrameError),
    /// A frame held no valid message.
    #[error(transparent)]
    Decode(#[from] nexus_protocol::DecodeError),
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// The multiplexer failed.
    #[error("multiplexer: {0}")]
    Mux(#[from] yamux::ConnectionError),
}

impl TransportError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
