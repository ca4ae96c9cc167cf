//! Batches yamux's writes into one write of the TLS stream per burst.
//!
//! yamux 0.14 writes a frame's 12-byte header and its body as two writes,
//! and flushes after every frame. Over `tokio-rustls`, every write is a
//! TLS record and a `sendmsg`, and every `sendmsg` wakes the peer: a call's
//! request, its answer and the stream close cost six records and six
//! wake-ups of the other process where two would do. A wake-up of another
//! process is the dearest thing on the token path (a CPU switch between
//! address spaces, often an inter-processor interrupt).
//!
//! [`Coalesce`] keeps what yamux writes in a buffer and holds a flush back
//! until the driver's next turn ([`FlushTurn`]): frames queued in one turn of
//! the driver (an answer and its stream close; a confirmation and a close)
//! leave in one write. The deferral wakes the driver, so a held flush is
//! never forgotten: it happens on the driver's next poll, right after the
//! tasks already queued on that worker.
//!
//! It is also where the connection's end is first seen: a read that finds
//! the end of the socket or an error, or a failed write, cancels `ended`
//! at once, before yamux fails the streams. A call whose stream failed
//! frees its place in a tool's queue, and the next queued call of the same
//! link must already see that link as gone (the driver's own signal, sent
//! after yamux has woken the streams, comes too late on another worker).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Bytes buffered before a write must wait for the buffer to drain: a few
/// of yamux's largest frames (64 KiB), so a bulk stream keeps the socket fed.
const CAPACITY: usize = 256 * 1024;

/// The driver's turn counter: the driver calls [`FlushTurn::next`] at the
/// start of every poll; a flush held in one turn happens in a later one.
#[derive(Debug, Clone, Default)]
pub(crate) struct FlushTurn(Arc<AtomicU64>);

impl FlushTurn {
    /// Starts a new turn of the driver.
    pub(crate) fn next(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// When the peer last sent anything: bytes read prove it alive even while
/// what we sent (a ping among them) waits behind a download on a slow link.
#[derive(Debug, Clone)]
pub(crate) struct Heard(Arc<(std::time::Instant, AtomicU64)>);

impl Heard {
    pub(crate) fn new() -> Self {
        Self(Arc::new((std::time::Instant::now(), AtomicU64::new(0))))
    }

    fn mark(&self) {
        let ms = u64::try_from(self.0.0.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.1.store(ms, Ordering::Relaxed);
    }

    /// The time of the last read that brought bytes (the start, before any).
    pub(crate) fn last(&self) -> std::time::Instant {
        let (start, ms) = &*self.0;
        start
            .checked_add(std::time::Duration::from_millis(ms.load(Ordering::Relaxed)))
            .unwrap_or(*start)
    }
}

/// A write-coalescing wrapper; reads pass through untouched.
#[derive(Debug)]
pub(crate) struct Coalesce<T> {
    io: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `io`.
    written: usize,
    turn: FlushTurn,
    /// The turn in which a flush was held back, if one is.
    held: Option<u64>,
    /// Cancelled when the socket ends or fails.
    ended: CancellationToken,
    /// Marked at every read that brings bytes.
    heard: Heard,
}

impl<T> Coalesce<T> {
    pub(crate) fn new(io: T, turn: FlushTurn, ended: CancellationToken, heard: Heard) -> Self {
        Self {
            io,
            buf: Vec::new(),
            written: 0,
            turn,
            held: None,
            ended,
            heard,
        }
    }

    /// Passes `r` on, cancelling `ended` first if it failed.
    fn watch<R>(&self, r: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        if matches!(r, Poll::Ready(Err(_))) {
            self.ended.cancel();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.buf.len() {
            let r = Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]);
            let n = ready!(self.watch(r))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        // A burst larger than usual does not keep its memory while idle.
        if self.buf.capacity() > CAPACITY {
            self.buf.shrink_to(CAPACITY);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining());
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && room > 0 {
            if buf.filled().len() == before {
                self.ended.cancel();
            } else {
                self.heard.mark();
            }
        }
        self.watch(r)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.buf.len() + data.len() > CAPACITY && !this.buf.is_empty() {
            ready!(this.poll_drain(cx))?;
        }
        let room = CAPACITY.saturating_sub(this.buf.len()).max(1);
        let n = data.len().min(room);
        this.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_empty() {
            this.held = None;
            let r = Pin::new(&mut this.io).poll_flush(cx);
            return this.watch(r);
        }
        let now = this.turn.now();
        match this.held {
            None => {
                // Hold it for the rest of this turn; the wake-up brings the
                // driver back for the write.
                this.held = Some(now);
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
            Some(turn) if turn == now => return Poll::Ready(Ok(())),
            Some(_) => {}
        }
        ready!(this.poll_drain(cx))?;
        this.held = None;
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        this.held = None;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records every write it is given.
    #[derive(Default, Clone)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if let Ok(mut w) = self.0.lock() {
                w.push(data.to_vec());
            }
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A coalescing writer over `sink`, in `turn`.
    fn over(sink: &Writes, turn: &FlushTurn) -> Coalesce<Writes> {
        Coalesce::new(
            sink.clone(),
            turn.clone(),
            CancellationToken::new(),
            Heard::new(),
        )
    }

    fn writes(w: &Writes) -> Vec<Vec<u8>> {
        w.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    #[test]
    fn writes_and_flushes_of_one_turn_leave_as_one_write_in_the_next() {
        let sink = Writes::default();
        let turn = FlushTurn::default();
        let mut c = over(&sink, &turn);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        turn.next();
        for part in [&b"head"[..], b"body", b"fin"] {
            assert!(matches!(
                Pin::new(&mut c).poll_write(&mut cx, part),
                Poll::Ready(Ok(_))
            ));
            assert!(matches!(
                Pin::new(&mut c).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            ));
        }
        assert!(writes(&sink).is_empty(), "held within the turn");
        turn.next();
        assert!(matches!(
            Pin::new(&mut c).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(writes(&sink), vec![b"headbodyfin".to_vec()]);
    }

    #[test]
    fn a_held_flush_wakes_the_driver() {
        let sink = Writes::default();
        let turn = FlushTurn::default();
        let mut c = over(&sink, &turn);
        let (waker, count) = futures_test_waker();
        let mut cx = Context::from_waker(&waker);
        let _ = Pin::new(&mut c).poll_write(&mut cx, b"x");
        let _ = Pin::new(&mut c).poll_flush(&mut cx);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn shutdown_writes_what_is_buffered_first() {
        let sink = Writes::default();
        let mut c = over(&sink, &FlushTurn::default());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let _ = Pin::new(&mut c).poll_write(&mut cx, b"last words");
        let _ = Pin::new(&mut c).poll_flush(&mut cx);
        assert!(matches!(
            Pin::new(&mut c).poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(writes(&sink), vec![b"last words".to_vec()]);
    }

    #[test]
    fn a_large_burst_is_written_in_pieces_no_larger_than_the_buffer() {
        let sink = Writes::default();
        let mut c = over(&sink, &FlushTurn::default());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let chunk = vec![1u8; 64 * 1024];
        let mut total = 0;
        for _ in 0..10 {
            let mut off = 0;
            while off < chunk.len() {
                match Pin::new(&mut c).poll_write(&mut cx, &chunk[off..]) {
                    Poll::Ready(Ok(n)) => off += n,
                    other => panic!("unexpected {other:?}"),
                }
            }
            total += chunk.len();
        }
        let _ = Pin::new(&mut c).poll_shutdown(&mut cx);
        let w = writes(&sink);
        assert!(w.iter().all(|p| p.len() <= CAPACITY));
        assert_eq!(w.iter().map(Vec::len).sum::<usize>(), total);
    }

    /// The end of the socket is seen where it is read, before yamux hears
    /// of it: a stream it fails must not free a place for a call of a link
    /// that still looks alive.
    #[test]
    fn the_end_of_the_socket_cancels_ended_at_once() {
        let ended = CancellationToken::new();
        let mut c = Coalesce::new(
            tokio::io::empty(),
            FlushTurn::default(),
            ended.clone(),
            Heard::new(),
        );
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut none = [0u8; 0];
        let _ = Pin::new(&mut c).poll_read(&mut cx, &mut ReadBuf::new(&mut none));
        assert!(!ended.is_cancelled(), "an empty read is not the end");
        let mut buf = [0u8; 16];
        let _ = Pin::new(&mut c).poll_read(&mut cx, &mut ReadBuf::new(&mut buf));
        assert!(ended.is_cancelled());
    }

    fn futures_test_waker() -> (std::task::Waker, Arc<std::sync::atomic::AtomicUsize>) {
        struct Count(Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
            fn wake_by_ref(self: &Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (std::task::Waker::from(Arc::new(Count(n.clone()))), n)
    }
}
