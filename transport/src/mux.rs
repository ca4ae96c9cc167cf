//! yamux over the TLS stream: one task owns and polls the `Connection`; the
//! rest of the program opens and receives streams through a [`MuxHandle`].
//!
//! yamux 0.14 ends the **whole connection** when the opener exceeds the stream
//! limit, so opens are gated by a semaphore well below it: a flood of local
//! callers fails calls (they wait or time out), never the tunnel.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::poll_fn;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;

use crate::TransportError;
use crate::coalesce::{Coalesce, FlushTurn, Heard};

pub use yamux::Mode;

/// Limits of one multiplexed connection.
#[derive(Debug, Clone, Copy)]
pub struct MuxConfig {
    /// yamux's own limit on live streams (both directions together).
    pub max_streams: usize,
    /// How many streams this side may have open at once; further opens wait.
    /// Keep `ours + peer's < max_streams`.
    pub max_outbound: usize,
    /// Inbound streams queued for the application before new ones are reset.
    pub inbound_queue: usize,
    /// Receive window beyond 256 KiB per stream, for the streams whose
    /// reader keeps up: yamux doubles such a stream's window (up to what is
    /// left of this) when half of it was read within two round trips, and
    /// never shrinks it, so the first fast streams keep what they took
    /// until they end. At 50 ms RTT a 256 KiB window caps a download at
    /// 5 MB/s.
    ///
    /// Everything a grown window lets the sender put ahead of a small
    /// answer (a token, a keepalive ping) queues on the link: on a 40 Mbit/s
    /// uplink at 50 ms RTT, a token call during a download took 85 ms with
    /// 256 KiB windows, 245 ms with 2 MiB of headroom and 379 ms with 8 MiB
    /// (`bench/precise_delay_proxy.py --rate-mbit 40`). 2 MiB keeps a
    /// stream's window near OpenSSH's 2 MiB channel window.
    pub window_headroom: usize,
}

impl MuxConfig {
    /// The workspace side opens one stream per forwarded session. Its
    /// downloads (files, HTTP answers) may grow their windows: the sender
    /// is the laptop.
    pub const SHIM: Self = Self {
        max_streams: 512,
        max_outbound: 384,
        inbound_queue: 64,
        window_headroom: 2 << 20,
    };
    /// The laptop side mostly accepts; it opens only control streams. No
    /// headroom: the sender is the workspace, which must not make the
    /// laptop buffer more than 256 KiB per stream.
    pub const PROXY: Self = Self {
        max_streams: 512,
        max_outbound: 64,
        inbound_queue: 448,
        window_headroom: 0,
    };
}

// Only the workspace side lets windows grow: what the workspace sends the
// laptop stays bounded by 256 KiB a stream. Checked when compiling.
const _: () = assert!(MuxConfig::PROXY.window_headroom == 0);

/// How long a link's bytes alone may stand in for keepalive answers: four
/// times the silence allowed. Behind a download on a slow link an answer can
/// wait longer than that silence while the peer's bytes keep coming, but
/// yamux's drivers answer yamux's own pings (one per 10 s, for its RTT
/// estimate) without the application, so bytes cannot prove that the peer's
/// keepalive answers. Also how long one keepalive answer may be waited for.
#[must_use]
pub fn answer_wait(allowed: Duration) -> Duration {
    allowed.saturating_mul(4)
}

/// How long a link has been silent at `now`, once too long: nothing at all
/// since `heard` (the last byte, or the last answer if later) for longer than
/// `allowed`, or no keepalive answer since `answered` for longer than
/// [`answer_wait`]. `None` while the link counts as alive; both keepalive
/// watchdogs (laptop and workspace) judge by this.
#[must_use]
pub fn too_silent(
    now: std::time::Instant,
    answered: std::time::Instant,
    heard: std::time::Instant,
    allowed: Duration,
) -> Option<Duration> {
    let silent = now.saturating_duration_since(answered.max(heard));
    let unanswered = now.saturating_duration_since(answered);
    if silent > allowed {
        Some(silent)
    } else if unanswered > answer_wait(allowed) {
        Some(unanswered)
    } else {
        None
    }
}

/// yamux's default per-stream receive window.
const STREAM_WINDOW: usize = 256 * 1024;
/// Largest yamux data frame sent.
const SPLIT_SEND_SIZE: usize = 64 * 1024;

type OpenReply = oneshot::Sender<Result<yamux::Stream, TransportError>>;

/// A cheap, cloneable handle to a running multiplexer.
#[derive(Debug, Clone)]
pub struct MuxHandle {
    opens: mpsc::Sender<OpenReply>,
    permits: Arc<Semaphore>,
    closed: CancellationToken,
    abort: CancellationToken,
    heard: Heard,
}

impl MuxHandle {
    /// When the peer last sent anything (the connection's start, before
    /// anything came). Keepalives count it as an answer: on a slow link a
    /// download's data can hold a ping back for seconds while the peer's
    /// window updates keep arriving.
    #[must_use]
    pub fn last_heard(&self) -> std::time::Instant {
        self.heard.last()
    }

    /// Opens a stream. Nothing is sent until the first write, and no
    /// round trip is awaited: the request rides with the stream's SYN.
    ///
    /// # Errors
    /// [`TransportError::Closed`] once the connection is gone.
    pub async fn open(&self) -> Result<MuxStream, TransportError> {
        let permit = tokio::select! {
            p = self.permits.clone().acquire_owned() => p.map_err(|_| TransportError::Closed)?,
            () = self.closed.cancelled() => return Err(TransportError::Closed),
        };
        let (tx, rx) = oneshot::channel();
        self.opens
            .send(tx)
            .await
            .map_err(|_| TransportError::Closed)?;
        let stream = rx.await.map_err(|_| TransportError::Closed)??;
        Ok(MuxStream {
            inner: stream.compat(),
            _permit: Some(permit),
        })
    }

    /// Whether the connection has ended.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Drops the connection at once, without the graceful close: for a link
    /// declared dead, where a close could only wait for a peer that is gone.
    /// Live streams then fail; the driver ends with [`MuxExit::Aborted`].
    pub fn abort(&self) {
        self.abort.cancel();
    }

    /// Resolves once the connection has ended.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }
}

/// A yamux stream as a tokio byte stream. Streams we opened hold a permit of
/// the opening gate until dropped. Call `shutdown()` to half-close cleanly; a
/// drop without it resets the stream.
#[derive(Debug)]
pub struct MuxStream {
    inner: Compat<yamux::Stream>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How the driver ended.
#[derive(Debug)]
pub enum MuxExit {
    /// The peer closed the connection.
    PeerClosed,
    /// We were told to shut down and closed it.
    Shutdown,
    /// The connection failed.
    Failed(yamux::ConnectionError),
    /// [`MuxHandle::abort`] dropped it (a link declared dead).
    Aborted,
}

/// Starts the multiplexer on `io` and spawns the one task that owns it.
///
/// Returns the handle for opening streams, the receiver of inbound streams,
/// and the driver's join handle. Cancelling `shutdown` closes the connection
/// gracefully; the driver also ends when the peer goes away.
pub fn start<T>(
    io: T,
    mode: Mode,
    limits: MuxConfig,
    shutdown: CancellationToken,
) -> (
    MuxHandle,
    mpsc::Receiver<MuxStream>,
    tokio::task::JoinHandle<MuxExit>,
)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut cfg = yamux::Config::default();
    // Streams first: the window setters assert against the stream count.
    cfg.set_max_num_streams(limits.max_streams);
    // At least what yamux requires for this many streams at its default
    // 256 KiB per stream (which stays: smaller stream windows crush
    // throughput at 50 ms RTT), plus the headroom streams may grow into.
    // It bounds what a peer can make us buffer.
    cfg.set_max_connection_receive_window(Some(
        limits.max_streams * STREAM_WINDOW + limits.window_headroom,
    ));
    // Bulk streams (file data) in 64 KiB yamux frames rather than 16 KiB:
    // a quarter of the per-frame work, and still short enough not to hold
    // other streams' frames back noticeably.
    cfg.set_split_send_size(SPLIT_SEND_SIZE);
    let turn = FlushTurn::default();
    let closed = CancellationToken::new();
    let heard = Heard::new();
    let io = Coalesce::new(io, turn.clone(), closed.clone(), heard.clone());
    let conn = yamux::Connection::new(io.compat(), cfg, mode);
    let (open_tx, open_rx) = mpsc::channel(limits.max_outbound.max(1));
    let (in_tx, in_rx) = mpsc::channel(limits.inbound_queue.max(1));
    let abort = CancellationToken::new();
    let handle = MuxHandle {
        opens: open_tx,
        permits: Arc::new(Semaphore::new(limits.max_outbound)),
        closed: closed.clone(),
        abort: abort.clone(),
        heard,
    };
    let task =
        tokio::spawn(
            async move { drive(conn, &turn, &closed, open_rx, in_tx, shutdown, abort).await },
        );
    (handle, in_rx, task)
}

enum Step {
    Shutdown,
    Ended(MuxExit),
}

async fn drive<T>(
    mut conn: yamux::Connection<T>,
    turn: &FlushTurn,
    closed: &CancellationToken,
    mut opens: mpsc::Receiver<OpenReply>,
    inbound: mpsc::Sender<MuxStream>,
    shutdown: CancellationToken,
    abort: CancellationToken,
) -> MuxExit
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut waiting: VecDeque<OpenReply> = VecDeque::new();
    let step = {
        let mut cancelled = pin!(shutdown.cancelled());
        let mut aborted = pin!(abort.cancelled());
        poll_fn(|cx| {
            turn.next();
            if aborted.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Ended(MuxExit::Aborted));
            }
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Shutdown);
            }
            while let Poll::Ready(Some(reply)) = opens.poll_recv(cx) {
                waiting.push_back(reply);
            }
            while !waiting.is_empty() {
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        if let Some(reply) = waiting.pop_front() {
                            // A caller that gave up drops the stream, which resets it.
                            let _ = reply.send(Ok(stream));
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Step::Ended(MuxExit::Failed(e))),
                    Poll::Pending => break,
                }
            }
            loop {
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(stream))) => {
                        let stream = MuxStream {
                            inner: stream.compat(),
                            _permit: None,
                        };
                        if inbound.try_send(stream).is_err() {
                            // The application is saturated (or gone): reset this
                            // stream rather than let the peer grow our queue.
                            tracing::warn!("inbound stream queue full; resetting a new stream");
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Step::Ended(MuxExit::Failed(e)));
                    }
                    Poll::Ready(None) => return Poll::Ready(Step::Ended(MuxExit::PeerClosed)),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    };
    for reply in waiting.drain(..) {
        let _ = reply.send(Err(TransportError::Closed));
    }
    // Said before the connection (and with it every stream) is dropped or
    // closed, so that nothing freed by a failing stream starts on this link.
    closed.cancel();
    match step {
        Step::Ended(exit) => exit,
        Step::Shutdown => {
            // Bounded: a peer that stops reading must not hold our exit.
            let close = poll_fn(|cx| {
                turn.next();
                conn.poll_close(cx)
            });
            match tokio::time::timeout(std::time::Duration::from_secs(2), close).await {
                Ok(Ok(())) | Err(_) => MuxExit::Shutdown,
                Ok(Err(e)) => MuxExit::Failed(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Side = (MuxHandle, mpsc::Receiver<MuxStream>);

    fn pair() -> (Side, Side, CancellationToken) {
        let (a, b) = tokio::io::duplex(64 << 10);
        let stop = CancellationToken::new();
        let (ha, ra, _) = start(a, Mode::Server, MuxConfig::SHIM, stop.clone());
        let (hb, rb, _) = start(b, Mode::Client, MuxConfig::PROXY, stop.clone());
        ((ha, ra), (hb, rb), stop)
    }

    #[tokio::test]
    async fn request_response_both_directions() {
        let ((shim, _shim_in), (_proxy, mut proxy_in), stop) = pair();
        let echo = tokio::spawn(async move {
            while let Some(mut s) = proxy_in.recv().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let _ = s.read_to_end(&mut buf).await;
                    let _ = s.write_all(&buf).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..1000u32 {
            let shim = shim.clone();
            calls.spawn(async move {
                let mut s = shim.open().await.map_err(|e| e.to_string())?;
                s.write_all(&i.to_be_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                s.shutdown().await.map_err(|e| e.to_string())?;
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.map_err(|e| e.to_string())?;
                if back == i.to_be_bytes() {
                    Ok(())
                } else {
                    Err(format!("call {i} got {back:?}"))
                }
            });
        }
        let mut ok = 0;
        while let Some(r) = calls.join_next().await {
            if matches!(r, Ok(Ok(()))) {
                ok += 1;
            }
        }
        assert_eq!(
            ok, 1000,
            "1000 concurrent calls, more than the opening gate, all succeed"
        );
        stop.cancel();
        let _ = echo.await;
        assert!(shim.open().await.is_err());
    }

    /// A workspace opens a call and never reads the answer: the laptop's
    /// writer waits on flow control. When the link ends (peer gone or link
    /// aborted), that write must fail, so a streamed call (file get, tool
    /// run, which have no call timeout) cannot outlive its link.
    #[tokio::test]
    async fn a_write_blocked_on_a_silent_peer_fails_when_the_link_ends() {
        for abort in [false, true] {
            let (a, b) = tokio::io::duplex(1 << 20);
            let stop = CancellationToken::new();
            let peer_stop = CancellationToken::new();
            let (shim, _shim_in, shim_task) =
                start(a, Mode::Server, MuxConfig::SHIM, peer_stop.clone());
            let (proxy, mut proxy_in, _) = start(b, Mode::Client, MuxConfig::PROXY, stop.clone());
            let mut call = shim.open().await.map_err(|e| e.to_string());
            if let Ok(c) = call.as_mut() {
                let _ = c.write_all(b"call").await;
            }
            let mut answer = proxy_in.recv().await;
            let writer = tokio::spawn(async move {
                let chunk = vec![7u8; 64 << 10];
                let Some(s) = answer.as_mut() else {
                    return Err("no inbound stream".to_owned());
                };
                // Far more than the stream window: blocks once it is full.
                for _ in 0..1024 {
                    s.write_all(&chunk).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            });
            // Let the window fill, then end the link.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!writer.is_finished(), "the write did not block");
            if abort {
                proxy.abort();
            } else {
                shim_task.abort();
            }
            let ended = tokio::time::timeout(Duration::from_secs(10), writer).await;
            assert!(
                matches!(ended, Ok(Ok(Err(_)))),
                "abort={abort}: a write blocked on flow control outlived the link: {ended:?}"
            );
            drop(call);
            stop.cancel();
            peer_stop.cancel();
        }
    }

    #[tokio::test]
    async fn open_fails_once_peer_is_gone() {
        let (a, b) = tokio::io::duplex(1024);
        let stop = CancellationToken::new();
        let (h, _r, task) = start(a, Mode::Server, MuxConfig::SHIM, stop.clone());
        drop(b);
        let _ = task.await;
        assert!(h.is_closed());
        assert!(matches!(h.open().await, Err(TransportError::Closed)));
    }

    #[tokio::test]
    async fn abort_ends_the_connection_and_its_streams_at_once() {
        // A peer that never reads: a graceful close could not complete.
        let (a, _b) = tokio::io::duplex(1024);
        let stop = CancellationToken::new();
        let (h, _r, task) = start(a, Mode::Server, MuxConfig::SHIM, stop);
        let mut s = h.open().await.map_err(|e| e.to_string());
        if let Ok(s) = s.as_mut() {
            let _ = s.write_all(b"hello").await;
        }
        h.abort();
        assert!(matches!(task.await, Ok(MuxExit::Aborted)));
        h.closed().await;
        assert!(h.is_closed());
        if let Ok(mut s) = s {
            let mut buf = [0u8; 1];
            assert!(!matches!(s.read(&mut buf).await, Ok(1..)));
        }
    }
}
