//! Where the laptop's tunnel comes in, below the pinned mutual TLS:
//!
//! - TCP on `--listen`, either raw TLS or a WebSocket (an HTTP ingress or
//!   reverse proxy in front, `wss://` on the laptop); one port serves both,
//!   told apart by the first byte (a TLS handshake record starts with 0x16,
//!   an HTTP request with a letter);
//! - `tunnel.sock` in the state dir, where `serve --stdio` relays hand over
//!   a tunnel that reached the workspace through `kubectl exec` or `ssh`;
//! - this process's own stdin/stdout (`serve --stdio` with no daemon running).
//!
//! None of these adds trust: the laptop is authenticated by its certificate
//! pin inside, whichever way the bytes came.

use std::io;

use nexus_transport::ws::{self, WsIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// A byte stream from the laptop.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A boxed [`Io`].
pub type Conduit = Box<dyn Io>;

/// A connection that arrived, before the TLS handshake.
#[derive(Debug)]
pub enum Incoming {
    /// On the TCP listener: raw TLS or a WebSocket.
    Tcp(TcpStream),
    /// On `tunnel.sock`, from a `serve --stdio` relay.
    Relay(UnixStream),
    /// Our stdin/stdout.
    Stdio,
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

impl Incoming {
    /// The byte stream the TLS runs on, and how it came (for the log). For
    /// TCP this reads the first byte (without consuming it) and, for HTTP,
    /// runs the WebSocket handshake: the caller bounds it with the handshake
    /// timeout.
    ///
    /// # Errors
    /// I/O errors, or a malformed WebSocket upgrade.
    pub async fn open(self) -> io::Result<(Conduit, Option<String>)> {
        match self {
            Self::Tcp(tcp) => {
                let mut first = [0u8; 1];
                if tcp.peek(&mut first).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed before saying anything",
                    ));
                }
                if first[0] == TLS_HANDSHAKE {
                    return Ok((Box::new(tcp), None));
                }
                let mut forwarded = None;
                // The callback's type (and its large error) is tungstenite's.
                #[allow(clippy::result_large_err)]
                let note = |req: &Request, resp: Response| {
                    forwarded = req
                        .headers()
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v.chars().take(64).collect::<String>());
                    Ok(resp)
                };
                let socket = ws::accept_hdr_async_with_config(tcp, note, Some(ws::config()))
                    .await
                    .map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("neither TLS nor a WebSocket upgrade: {e}"),
                        )
                    })?;
                let via = match forwarded {
                    Some(f) => format!("websocket, forwarded for {f:?}"),
                    None => "websocket".to_owned(),
                };
                Ok((Box::new(WsIo::new(socket)), Some(via)))
            }
            Self::Relay(unix) => Ok((Box::new(unix), Some("stdio relay".to_owned()))),
            Self::Stdio => Ok((
                Box::new(tokio::io::join(tokio::io::stdin(), tokio::io::stdout())),
                Some("stdio".to_owned()),
            )),
        }
    }
}

/// Accepts on the TCP listener if there is one (else never returns).
pub async fn accept_tcp(
    listener: Option<&TcpListener>,
) -> io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Accepts on `tunnel.sock`.
pub async fn accept_relay(listener: &UnixListener) -> io::Result<UnixStream> {
    listener.accept().await.map(|(s, _)| s)
}

/// `serve --stdio` when a daemon already runs: copies stdin to its
/// `tunnel.sock` and its answers to stdout. When the daemon's side ends (it
/// refused or closed the tunnel), so does the relay, at once: the laptop is
/// waiting on the far end of stdout and would otherwise wait for its own
/// timeout. When stdin ends, the daemon is told (write side shut) and its
/// last answers are still passed on.
///
/// # Errors
/// I/O errors on either side.
pub async fn relay_stdio(daemon: UnixStream) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (mut from_daemon, mut to_daemon) = daemon.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let ignore_pipe = |r: io::Result<u64>| match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map(|_| ()),
    };
    tokio::select! {
        r = tokio::io::copy(&mut from_daemon, &mut stdout) => {
            let _ = stdout.flush().await;
            ignore_pipe(r)
        }
        r = tokio::io::copy(&mut stdin, &mut to_daemon) => {
            ignore_pipe(r)?;
            let _ = to_daemon.shutdown().await;
            let r = tokio::io::copy(&mut from_daemon, &mut stdout).await;
            let _ = stdout.flush().await;
            ignore_pipe(r)
        }
    }
}
