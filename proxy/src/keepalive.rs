//! Keepalive for one link, and the two hints that a link is probably gone
//! before any timeout says so.
//!
//! - **Pings**: the proxy opens a short stream with [`Control::Ping`] every
//!   quarter of the keepalive timeout.
//!   Any answer proves the link alive (an older shim resets the stream:
//!   that is an answer too), and so does any byte the shim sends, for up to
//!   four timeouts without a pong (a ping can wait behind a download on a
//!   slow link). Neither for the whole timeout, or no pong for four: the
//!   link is dead and is dropped at once, so that the tunnel is dialed
//!   again. yamux's own pings (one per 10 s, for its RTT estimate) are
//!   answered by the peer's driver alone, so they prove nothing here.
//! - **Wake**: the monotonic clock stops while a laptop sleeps, the wall
//!   clock does not. When the wall clock has run ahead of the monotonic one,
//!   the laptop has just woken: the link is probed at once, and a sleeping
//!   backoff is cut short.
//! - **Route change**: the local address the kernel would use to reach the
//!   workspace (a connected UDP socket, which sends nothing) changes when
//!   the laptop changes networks. Same reaction as a wake.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nexus_protocol::{Control, ControlReply, HANDSHAKE_MAX_FRAME};
use nexus_transport::MuxHandle;
use nexus_transport::mux::{answer_wait, too_silent};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Wall-clock time gained over monotonic time that counts as a wake.
pub const WAKE_JUMP: Duration = Duration::from_secs(2);
/// How long a probe after a wake or route change may take before the link
/// is declared dead.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the clocks are compared.
const TICK: Duration = Duration::from_millis(200);
/// How often the route to the workspace is looked up.
const ROUTE_EVERY: Duration = Duration::from_secs(1);

/// Why a link was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dead {
    /// No answer to pings for the keepalive timeout.
    Silent(Duration),
    /// The laptop woke and the link did not answer a probe.
    Wake,
    /// The network changed and the link did not answer a probe.
    RouteChange,
}

impl Dead {
    /// Whether to redial at once instead of after a backoff.
    #[must_use]
    pub fn redial_at_once(self) -> bool {
        matches!(self, Self::Wake | Self::RouteChange)
    }
}

/// What the clocks and routes say since the last look.
#[derive(Debug)]
pub struct Hints {
    wall: SystemTime,
    mono: Instant,
    peer: Option<IpAddr>,
    route: Option<IpAddr>,
    route_checked: Instant,
}

/// A sign that the link may be gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Wall clock jumped ahead of monotonic time by this much.
    Woke(Duration),
    /// The local address toward the workspace changed.
    RouteChanged,
}

impl Hints {
    /// Starts watching; `peer` is the workspace's address, when known.
    #[must_use]
    pub fn new(peer: Option<IpAddr>) -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
            peer,
            route: peer.and_then(route_to),
            route_checked: Instant::now(),
        }
    }

    /// Compares the clocks (and, at most once a second, the route) with the
    /// last look.
    pub fn check(&mut self) -> Option<Hint> {
        let (wall, mono) = (SystemTime::now(), Instant::now());
        let wall_delta = wall.duration_since(self.wall).unwrap_or_default();
        let mono_delta = mono.duration_since(self.mono);
        self.wall = wall;
        self.mono = mono;
        let gained = wall_delta.saturating_sub(mono_delta);
        if gained > WAKE_JUMP {
            return Some(Hint::Woke(gained));
        }
        if let Some(peer) = self.peer
            && mono.duration_since(self.route_checked) >= ROUTE_EVERY
        {
            self.route_checked = mono;
            // A new route, or one where there was none (the network came
            // back), is a hint; losing the route is not: nothing to redial.
            let route = route_to(peer);
            let changed = route.is_some() && route != self.route;
            self.route = route;
            if changed {
                return Some(Hint::RouteChanged);
            }
        }
        None
    }
}

/// The local address the kernel would send from toward `peer`; `None` while
/// there is no route. A connected UDP socket sends nothing.
fn route_to(peer: IpAddr) -> Option<IpAddr> {
    let any: IpAddr = match peer {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = UdpSocket::bind((any, 0)).ok()?;
    sock.connect(SocketAddr::new(peer, 9)).ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}

/// Sleeps `total`, unless the laptop wakes or changes networks first: then
/// returns the hint at once, so the caller redials without waiting.
pub async fn sleep_unless_hinted(total: Duration, hints: &mut Hints) -> Option<Hint> {
    let until = tokio::time::Instant::now() + total;
    loop {
        let now = tokio::time::Instant::now();
        if now >= until {
            return None;
        }
        tokio::time::sleep((until - now).min(TICK)).await;
        if let Some(h) = hints.check() {
            return Some(h);
        }
    }
}

/// Watches a live link until it is found dead (returned), or `stop` fires or
/// the connection ends (`None`). `peer` is the workspace's address when the
/// route is TCP to an IP address (route changes are watched then); pings
/// and wake probes run on every route.
pub async fn watch_link(
    mux: MuxHandle,
    peer: Option<SocketAddr>,
    timeout: Duration,
    interval: Duration,
    stop: CancellationToken,
) -> Option<Dead> {
    let (alive_tx, alive_rx) = watch::channel(Instant::now());
    let ping_now = Arc::new(Notify::new());
    let pinger = tokio::spawn(pinger(
        mux.clone(),
        interval,
        timeout,
        alive_tx,
        ping_now.clone(),
        stop.clone(),
    ));
    let verdict = watchdog(&mux, peer, timeout, alive_rx, &ping_now, &stop).await;
    pinger.abort();
    verdict
}

async fn watchdog(
    mux: &MuxHandle,
    peer: Option<SocketAddr>,
    timeout: Duration,
    alive: watch::Receiver<Instant>,
    ping_now: &Notify,
    stop: &CancellationToken,
) -> Option<Dead> {
    let mut hints = Hints::new(peer.map(|p| p.ip()));
    let mut probe: Option<(Instant, Dead)> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            () = mux.closed() => return None,
            () = tokio::time::sleep(TICK) => {}
        }
        let heard = Heard {
            pong: *alive.borrow(),
            bytes: mux.last_heard(),
        };
        match verdict(Instant::now(), heard, probe, timeout) {
            Verdict::Dead(why) => return Some(why),
            Verdict::ProbeAnswered => {
                debug!(why = ?probe.map(|p| p.1), "probe answered; the link survived");
                probe = None;
            }
            Verdict::Alive => {}
        }
        if let Some(hint) = hints.check() {
            let why = match hint {
                Hint::Woke(gained) => {
                    info!(
                        asleep_s = gained.as_secs(),
                        "the laptop woke up; probing the link"
                    );
                    Dead::Wake
                }
                Hint::RouteChanged => {
                    info!("the route to the workspace changed; probing the link");
                    Dead::RouteChange
                }
            };
            probe = Some((Instant::now(), why));
            ping_now.notify_one();
        }
    }
}

/// What was last heard from the shim.
#[derive(Debug, Clone, Copy)]
struct Heard {
    /// The last answer to one of our pings.
    pong: Instant,
    /// The last read that brought any bytes.
    bytes: Instant,
}

/// What the watchdog makes of what it heard.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Alive,
    ProbeAnswered,
    Dead(Dead),
}

/// The link's state at `now`. Anything the shim sent counts, for a while
/// ([`too_silent`]). A wake or route probe (`probe`: since when, and
/// why) wants a pong: bytes read just after a wake may have come before it.
fn verdict(
    now: Instant,
    heard: Heard,
    probe: Option<(Instant, Dead)>,
    timeout: Duration,
) -> Verdict {
    if let Some(silent) = too_silent(now, heard.pong, heard.bytes, timeout) {
        return Verdict::Dead(Dead::Silent(silent));
    }
    match probe {
        Some((since, _)) if heard.pong >= since => Verdict::ProbeAnswered,
        Some((since, why)) if now.saturating_duration_since(since) > PROBE_TIMEOUT => {
            Verdict::Dead(why)
        }
        _ => Verdict::Alive,
    }
}

/// Pings every `interval` (or at once when asked), recording the time of
/// every answer.
async fn pinger(
    mux: MuxHandle,
    interval: Duration,
    timeout: Duration,
    alive: watch::Sender<Instant>,
    ping_now: Arc<Notify>,
    stop: CancellationToken,
) {
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let mut seq = 0u64;
    loop {
        seq += 1;
        let sent = Instant::now();
        let answered = tokio::select! {
            () = stop.cancelled() => return,
            // A late pong still counts (the link's bytes keep it alive
            // meanwhile), up to the wait's end.
            r = tokio::time::timeout(answer_wait(timeout), ping(&mux, seq, interval_ms)) => r.is_ok(),
            // A probe wants a ping sent after the wake: a pong to one sent
            // before could be an old answer read late.
            () = ping_now.notified() => continue,
        };
        if answered && !mux.is_closed() {
            let _ = alive.send(Instant::now());
            debug!(seq, rtt_us = sent.elapsed().as_micros(), "pong");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = ping_now.notified() => {}
        }
    }
}

/// One ping on its own stream. Returns when anything comes back: a pong, a
/// reset, an end of stream; all prove the peer is there.
async fn ping(mux: &MuxHandle, seq: u64, interval_ms: u64) {
    let Ok(mut stream) = mux.open().await else {
        return std::future::pending().await;
    };
    if nexus_transport::send(&mut stream, &Control::Ping { seq, interval_ms })
        .await
        .is_err()
    {
        return;
    }
    let answer = nexus_transport::recv::<_, ControlReply>(&mut stream, HANDSHAKE_MAX_FRAME).await;
    if let Ok(ControlReply::Pong { seq: back }) = answer
        && back != seq
    {
        debug!(seq, back, "pong for another ping");
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_transport::{MuxConfig, mux};

    #[test]
    fn no_hint_without_a_jump_or_a_route_change() {
        let mut h = Hints::new(Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(h.check(), None);
        // A pretend suspend: the last look happened long ago on the wall
        // clock, a moment ago on the monotonic one.
        h.wall -= Duration::from_secs(30);
        assert!(matches!(h.check(), Some(Hint::Woke(d)) if d >= Duration::from_secs(29)));
        assert_eq!(h.check(), None);
    }

    #[test]
    fn a_new_route_is_a_hint() {
        let mut h = Hints::new(Some(IpAddr::from([127, 0, 0, 1])));
        h.route = Some(IpAddr::from([192, 0, 2, 1]));
        h.route_checked -= ROUTE_EVERY;
        assert_eq!(h.check(), Some(Hint::RouteChanged));
        h.route_checked -= ROUTE_EVERY;
        assert_eq!(h.check(), None, "the new route is the reference now");
    }

    /// Watches a link to a peer that answers yamux but never reads its
    /// streams, with a 600 ms timeout: the verdict (within 10 s) and the time
    /// it took.
    async fn watch_silent_peer(address: Option<SocketAddr>) -> (Option<Dead>, Duration) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let stop = CancellationToken::new();
        let (h, _in, _task) = mux::start(a, mux::Mode::Client, MuxConfig::PROXY, stop.clone());
        // The peer keeps its inbound streams open without answering.
        let (_peer, mut peer_in, _ptask) =
            mux::start(b, mux::Mode::Server, MuxConfig::SHIM, stop.clone());
        let held = tokio::spawn(async move {
            let mut keep = Vec::new();
            while let Some(s) = peer_in.recv().await {
                keep.push(s);
            }
        });
        let started = Instant::now();
        let dead = tokio::time::timeout(
            Duration::from_secs(10),
            watch_link(
                h,
                address,
                Duration::from_millis(600),
                Duration::from_millis(150),
                stop.clone(),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("no verdict on a silent peer within 10 s"));
        let took = started.elapsed();
        stop.cancel();
        held.abort();
        (dead, took)
    }

    /// A peer that answers yamux but never reads its streams: pings get no
    /// answer, so the link is declared dead after the timeout.
    #[tokio::test]
    async fn a_silent_peer_is_declared_dead() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|_| unreachable!());
        let (dead, took) = watch_silent_peer(Some(peer)).await;
        assert!(matches!(dead, Some(Dead::Silent(_))), "{dead:?}");
        assert!(took >= Duration::from_millis(600));
    }

    /// A route with no IP address to watch (`wss://`, a connect command, a
    /// host name) still gets pings: a silent peer is declared dead. (The
    /// watcher used to run only for TCP routes to an IP address, so a
    /// black-holed WebSocket or `ssh` link was held forever.)
    #[tokio::test]
    async fn a_silent_peer_is_declared_dead_without_an_address() {
        let (dead, _) = watch_silent_peer(None).await;
        assert!(matches!(dead, Some(Dead::Silent(_))), "{dead:?}");
    }

    /// A shim whose pong is held back behind a download on a slow link: the
    /// bytes it keeps sending prove the link alive past the timeout, but not
    /// past four timeouts without a pong (yamux answers its own pings, so
    /// bytes cannot prove the shim's keepalive answers).
    #[tokio::test]
    async fn bytes_from_the_shim_stand_in_for_late_pongs_for_a_while() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let stop = CancellationToken::new();
        let (h, mut laptop_in, _task) =
            mux::start(a, mux::Mode::Client, MuxConfig::PROXY, stop.clone());
        // The peer never answers a ping, but sends a byte every 100 ms on a
        // stream of its own for 6 s.
        let (peer, mut peer_in, _ptask) =
            mux::start(b, mux::Mode::Server, MuxConfig::SHIM, stop.clone());
        let held = tokio::spawn(async move {
            let mut keep = Vec::new();
            while let Some(s) = peer_in.recv().await {
                keep.push(s);
            }
        });
        let trickle = tokio::spawn(async move {
            let Ok(mut up) = peer.open().await else {
                return;
            };
            for _ in 0..60 {
                if up.write_all(b"y").await.is_err() || up.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let accepted = tokio::spawn(async move { laptop_in.recv().await.map(|s| (s, laptop_in)) });
        let started = Instant::now();
        let mut watch = tokio::spawn(watch_link(
            h,
            None,
            Duration::from_secs(1),
            Duration::from_millis(250),
            stop.clone(),
        ));
        let early = tokio::time::timeout(Duration::from_millis(2500), &mut watch).await;
        assert!(
            early.is_err(),
            "declared dead while the shim sent bytes: {early:?}"
        );
        let dead = tokio::time::timeout(Duration::from_secs(5), watch).await;
        assert!(matches!(dead, Ok(Ok(Some(Dead::Silent(_))))), "{dead:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(3900),
            "dead after {:?}, before four timeouts",
            started.elapsed()
        );
        assert!(!trickle.is_finished(), "the bytes stopped first");
        stop.cancel();
        for t in [held, trickle] {
            t.abort();
        }
        accepted.abort();
    }

    /// The verdict: bytes stand in for a late pong for four timeouts, but
    /// never answer a wake or route probe.
    #[test]
    fn bytes_keep_a_link_but_never_answer_a_probe() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let timeout = s(10);
        let heard = |pong, bytes| Heard {
            pong: t0 + s(pong),
            bytes: t0 + s(bytes),
        };
        let at = |secs| t0 + s(secs);
        // Pong late, bytes recent: alive up to four timeouts without a pong.
        assert_eq!(verdict(at(25), heard(0, 24), None, timeout), Verdict::Alive);
        assert!(matches!(
            verdict(at(41), heard(0, 40), None, timeout),
            Verdict::Dead(Dead::Silent(_))
        ));
        // Nothing at all for the timeout: dead.
        assert!(matches!(
            verdict(at(21), heard(5, 10), None, timeout),
            Verdict::Dead(Dead::Silent(_))
        ));
        // A probe at 30: bytes after it do not answer it, a pong does.
        let probe = Some((at(30), Dead::Wake));
        assert_eq!(
            verdict(at(31), heard(28, 31), probe, timeout),
            Verdict::Alive
        );
        assert_eq!(
            verdict(at(33), heard(28, 33), probe, timeout),
            Verdict::Dead(Dead::Wake)
        );
        assert_eq!(
            verdict(at(31), heard(31, 31), probe, timeout),
            Verdict::ProbeAnswered
        );
    }

    /// A peer that resets every stream (an older shim) still proves the link
    /// alive.
    #[tokio::test]
    async fn a_peer_that_resets_pings_is_alive() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let stop = CancellationToken::new();
        let (h, _in, _task) = mux::start(a, mux::Mode::Client, MuxConfig::PROXY, stop.clone());
        let (_peer, peer_in, _ptask) =
            mux::start(b, mux::Mode::Server, MuxConfig::SHIM, stop.clone());
        drop(peer_in);
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|_| unreachable!());
        let verdict = tokio::time::timeout(
            Duration::from_millis(1500),
            watch_link(
                h,
                Some(peer),
                Duration::from_millis(500),
                Duration::from_millis(100),
                stop.clone(),
            ),
        )
        .await;
        assert!(
            verdict.is_err(),
            "the link was wrongly declared dead: {verdict:?}"
        );
        stop.cancel();
    }
}
