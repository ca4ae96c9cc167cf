//! A controllable network link: a userspace TCP relay between the laptop and
//! a workspace that a test can pause, cut and restore.
//!
//! - [`LinkControl::pause`]: bytes stop flowing both ways, sockets stay open
//!   (a stalled network: nothing fails until a keepalive notices). New
//!   connections are accepted but not connected onward until restored.
//! - [`LinkControl::hold_toward_workspace`]: bytes from the laptop to the
//!   workspace are held, the other way flows (calls arrive, answers wait).
//! - [`LinkControl::cut`]: every connection is reset, and new ones are reset
//!   as soon as they are accepted (a network that is gone).
//! - [`LinkControl::restore`]: back to normal; paused bytes flow on.
//!
//! The relay runs on its own thread and runtime, so synchronous tests drive
//! it like any other fixture. Dropping it stops it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Must;

/// What the link does right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Relaying.
    Up,
    /// Holding bytes, keeping sockets.
    Paused,
    /// Holding the bytes toward the workspace only.
    HoldingTowardWorkspace,
    /// Resetting everything.
    Cut,
}

/// A running relay from a loopback port to `upstream`.
#[derive(Debug)]
pub struct LinkControl {
    address: SocketAddr,
    state: watch::Sender<LinkState>,
    /// Cancelled (and replaced) on every cut: resets the live connections.
    epoch: EpochSlot,
    accepted: Arc<AtomicU64>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LinkControl {
    /// Starts relaying from `127.0.0.1:0` to `upstream`.
    #[track_caller]
    pub fn start(upstream: SocketAddr) -> Arc<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .must("building the link's runtime");
        // Bound here (std), so that the fixture works from async code too.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").must("binding the link");
        listener
            .set_nonblocking(true)
            .must("a non-blocking listener");
        let address = listener.local_addr().must("the link's address");
        let (state, _) = watch::channel(LinkState::Up);
        let stop = CancellationToken::new();
        let epoch: EpochSlot = Arc::default();
        let accepted = Arc::new(AtomicU64::new(0));
        let (rx, slot, count, stop2) = (
            state.subscribe(),
            epoch.clone(),
            accepted.clone(),
            stop.clone(),
        );
        let task = move |listener| accept_loop(listener, upstream, rx, slot, count, stop2);
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => task(listener).await,
                    Err(e) => eprintln!("the link cannot listen: {e}"),
                }
            });
        });
        Arc::new(Self {
            address,
            state,
            epoch,
            accepted,
            stop,
            thread: Some(thread),
        })
    }

    /// `HOST:PORT` the laptop should dial.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops forwarding; sockets stay open.
    pub fn pause(&self) {
        self.state.send_replace(LinkState::Paused);
    }

    /// Holds the bytes the laptop sends to the workspace (until restored or
    /// cut); the workspace's bytes still reach the laptop.
    pub fn hold_toward_workspace(&self) {
        self.state.send_replace(LinkState::HoldingTowardWorkspace);
    }

    /// Resets every connection and refuses new ones until restored.
    pub fn cut(&self) {
        self.state.send_replace(LinkState::Cut);
        if let Ok(mut cur) = self.epoch.lock() {
            cur.cancel();
            *cur = CancellationToken::new();
        }
    }

    /// Back to relaying.
    pub fn restore(&self) {
        self.state.send_replace(LinkState::Up);
    }
}

impl Drop for LinkControl {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type EpochSlot = Arc<std::sync::Mutex<CancellationToken>>;

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Receiver<LinkState>,
    epochs: EpochSlot,
    accepted: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    loop {
        let conn = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let Ok((down, _)) = conn else { continue };
        accepted.fetch_add(1, Ordering::Relaxed);
        let epoch = match epochs.lock() {
            Ok(e) => e.clone(),
            Err(_) => return,
        };
        if *state.borrow() == LinkState::Cut {
            reset(&down);
            continue;
        }
        tokio::spawn(relay(down, upstream, state.clone(), epoch));
    }
}

/// Closes with RST instead of FIN.
fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

/// Waits until bytes may flow (`toward_workspace`: the laptop's); false
/// once the link is cut.
async fn wait_up(state: &mut watch::Receiver<LinkState>, toward_workspace: bool) -> bool {
    state
        .wait_for(|s| match s {
            LinkState::Paused => false,
            LinkState::HoldingTowardWorkspace => !toward_workspace,
            LinkState::Up | LinkState::Cut => true,
        })
        .await
        .is_ok_and(|s| *s != LinkState::Cut)
}

async fn relay(
    down: TcpStream,
    upstream: SocketAddr,
    mut state: watch::Receiver<LinkState>,
    epoch: CancellationToken,
) {
    let setup = async {
        if !wait_up(&mut state, false).await {
            return None;
        }
        TcpStream::connect(upstream).await.ok()
    };
    let up = tokio::select! {
        () = epoch.cancelled() => None,
        u = setup => u,
    };
    let Some(up) = up else {
        reset(&down);
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = down.set_nodelay(true);
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    let a = pump(&mut dr, &mut uw, state.clone(), true);
    let b = pump(&mut ur, &mut dw, state.clone(), false);
    let cut = tokio::select! {
        () = epoch.cancelled() => true,
        () = async { tokio::join!(a, b); } => false,
    };
    if cut {
        reset(dw.as_ref());
        reset(uw.as_ref());
    }
}

/// Copies one direction (`toward_workspace`: the laptop's bytes), holding
/// bytes while paused or held.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<LinkState>,
    toward_workspace: bool,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // An end of stream is held while paused, like the bytes.
                if wait_up(&mut state, toward_workspace).await {
                    let _ = to.shutdown().await;
                }
                return;
            }
            Ok(n) => n,
        };
        if !wait_up(&mut state, toward_workspace).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
