//! A WebSocket connection as a byte stream, for the `wss://` transport: the
//! pinned mutual TLS and yamux run inside binary messages, so the tunnel
//! passes HTTP ingresses and corporate proxies that only speak HTTP(S).
//!
//! The WebSocket layer adds no trust: the outer TLS (when there is one) is
//! only transport; who is on the other end is still decided by the pins of
//! the inner TLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message, protocol::WebSocketConfig};

pub use tokio_tungstenite::{accept_hdr_async_with_config, client_async_with_config};

/// Largest WebSocket message accepted. Writers send at most what yamux hands
/// them at once (frames of up to 16 KiB of TLS records); the limit bounds
/// what a hostile peer can make us buffer.
pub const MAX_MESSAGE: usize = 1 << 20;

/// WebSocket settings for both ends. Messages are written out as they are
/// sent (no write buffering): TLS hands over whole records and sometimes
/// never flushes (the alert after a failed handshake), and a record stuck in
/// a buffer would stall the tunnel or lose the reason for a refusal.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .write_buffer_size(0)
}

/// Reads and writes binary messages as one byte stream.
#[derive(Debug)]
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last message.
    pending: bytes::Bytes,
    eof: bool,
}

impl<S> WsIo<S> {
    /// Wraps an established WebSocket.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: bytes::Bytes::new(),
            eof: false,
        }
    }
}

fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                // Pings are answered by tungstenite on the next write or flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on the tunnel websocket",
                    )));
                }
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                // Proxies and peers often just drop the TCP connection: to
                // the TLS inside, that is the end of the stream, as on TCP.
                Some(Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ))) => self.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(MAX_MESSAGE);
        Pin::new(&mut self.ws)
            .start_send(Message::binary(buf[..n].to_vec()))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Bytes written on one side arrive in order on the other, whatever the
    /// message boundaries, and a close reads as end of stream.
    #[tokio::test]
    async fn bytes_cross_in_order_and_close_is_eof() -> TestResult {
        let (client_io, server_io) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let ws = tokio_tungstenite::accept_async_with_config(server_io, Some(config())).await?;
            let mut io = WsIo::new(ws);
            let mut got = Vec::new();
            io.read_to_end(&mut got).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(got)
        });
        let (ws, _) =
            client_async_with_config("ws://workspace/nexus", client_io, Some(config())).await?;
        let mut io = WsIo::new(ws);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(7_777) {
            io.write_all(chunk).await?;
        }
        io.shutdown().await?;
        let got = server.await?.map_err(|e| e.to_string())?;
        assert_eq!(got, data);
        Ok(())
    }
}
