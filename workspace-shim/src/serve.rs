//! `nexus-shim serve`: the daemon. It accepts the paired laptop's tunnel and
//! serves local callers on `shim.sock`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nexus_protocol::{
    ClientHello, HANDSHAKE_MAX_FRAME, Refusal, SUPPORTED, ServerHello, negotiate,
};
use nexus_transport::tls::{ClientAuthorizer, peer_fingerprint};
use nexus_transport::tokio_rustls::TlsAcceptor;
use nexus_transport::{Fingerprint, Identity, MuxConfig, MuxHandle, mux};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::ingress::Incoming;
use crate::state::{Paired, PairingToken, StateDir, pairing_uri};

/// How long an unauthenticated peer may take to finish TLS and say hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Unauthenticated handshakes in progress at once.
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// Wrong pairing tokens tolerated before the pending token is burned.
pub const MAX_TOKEN_FAILURES: u32 = 10;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop neither spins nor floods the log.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Logs a failed accept and pauses; shared by every accept loop.
pub(crate) async fn accept_failed(e: &std::io::Error) {
    warn!(error = %e, "accept failed; pausing");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// How long in-flight calls may take to finish after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Daemon settings, validated before anything binds.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the state lives.
    pub state: StateDir,
    /// What the pairing URI names, when not the bound address.
    pub advertise: Option<String>,
    /// Lifetime of a pairing token.
    pub pairing_ttl: Duration,
    /// A token preset by the platform (`NEXUS_PAIRING_TOKEN`).
    pub preset_token: Option<String>,
    /// How long `agent.sock` requests wait for the laptop.
    pub agent_wait: Duration,
    /// How long the laptop may go without a ping before its link is
    /// declared dead.
    pub keepalive_timeout: Duration,
}

/// The daemon's bound sockets.
#[derive(Debug)]
pub struct Listeners {
    /// The laptop's tunnel over TCP (raw TLS or WebSocket); none with
    /// `--listen none` or `--stdio`.
    pub tunnel: Option<TcpListener>,
    /// `tunnel.sock`: tunnels relayed by `serve --stdio`.
    pub relay: tokio::net::UnixListener,
    /// Serve one tunnel on stdin/stdout, and stop when it ends.
    pub stdio: bool,
    /// `shim.sock`.
    pub local: tokio::net::UnixListener,
    /// `agent.sock`.
    pub agent: tokio::net::UnixListener,
    /// `$NEXUS_HTTP_URL` (HTTP secret injection) and its URL capability;
    /// none with `--http-listen none`.
    pub http: Option<(TcpListener, String)>,
}

/// The current link to the laptop.
#[derive(Debug)]
pub struct Link {
    /// Opens streams toward the laptop.
    pub mux: MuxHandle,
    /// Where the laptop's connection came from, as seen here.
    pub peer: String,
    /// When it came up.
    pub since: Instant,
    /// The identity list the laptop pushed on this link.
    pub ssh_identities: Arc<crate::agent::IdentityCache>,
    id: u64,
    stop: CancellationToken,
    /// The protocol version the laptop and this shim agreed on.
    version: u16,
    /// Keys of answers read here, to confirm with the next calls.
    received: Mutex<VecDeque<u64>>,
}

/// Most confirmations kept for the next calls; past it, the oldest are
/// left to expire on the laptop, so the queue is bounded whatever the
/// traffic.
const MAX_QUEUED_RECEIVED: usize = 1024;

impl Link {
    /// Whether a call of `request` on this link closes our side of its
    /// stream with the request and is confirmed in a later call: one
    /// answered by one reply, to a laptop that takes confirmations so.
    pub(crate) fn closes_with_request(&self, request: &nexus_protocol::Request) -> bool {
        self.version >= nexus_protocol::CONFIRMS_LATER && !request.is_streaming()
    }

    /// Notes that `call`'s answer was read, for the next calls on this
    /// link to confirm, when its key asks for that ([`CallKey::later`]).
    ///
    /// [`CallKey::later`]: nexus_protocol::CallKey::later
    pub(crate) fn answered(&self, call: &nexus_protocol::Call) {
        if let Some(key) = call.key.filter(|k| k.later)
            && let Ok(mut received) = self.received.lock()
        {
            if received.len() >= MAX_QUEUED_RECEIVED {
                received.pop_front();
            }
            received.push_back(key.id);
        }
    }

    /// The confirmations a call opened now carries (the oldest, up to
    /// [`MAX_RECEIVED`](nexus_protocol::MAX_RECEIVED)).
    pub(crate) fn take_received(&self) -> Vec<u64> {
        self.received.lock().map_or_else(
            |_| Vec::new(),
            |mut r| {
                let n = r.len().min(nexus_protocol::MAX_RECEIVED);
                r.drain(..n).collect()
            },
        )
    }
}

/// State shared by the tunnel acceptor, the local socket and the TLS verifier.
#[derive(Debug)]
pub struct Shared {
    /// Paths.
    pub state: StateDir,
    /// Our certificate fingerprint (what the laptop pins).
    pub fingerprint: Fingerprint,
    /// Pairing state: the paired laptop and any pending token.
    pub pairing: Mutex<Pairing>,
    /// The live link, if any.
    pub link: watch::Sender<Option<Arc<Link>>>,
    /// Address the tunnel listener is bound to (none: stdio and relays only).
    pub listen: Option<SocketAddr>,
    /// What the pairing URI names.
    pub advertise: String,
    /// Lifetime of new pairing tokens.
    pub pairing_ttl: Duration,
    /// How long agent requests wait for a link.
    pub agent_wait: Duration,
    /// See [`ServeConfig::keepalive_timeout`].
    pub keepalive_timeout: Duration,
}

/// Who may connect.
#[derive(Debug, Default)]
pub struct Pairing {
    /// The paired laptop.
    pub paired: Option<Paired>,
    /// A token waiting to be used.
    pub token: Option<PairingToken>,
    /// Wrong tokens presented since the pending one was issued.
    pub failures: u32,
}

impl Shared {
    /// Issues a fresh token and rewrites `pairing.uri`. Returns the URI.
    pub fn rotate_token(&self) -> Result<String> {
        let token = PairingToken::generate(self.pairing_ttl);
        let uri = pairing_uri(&self.advertise, self.fingerprint, token.value());
        nexus_transport::write_private(&self.state.pairing_uri(), uri.as_bytes())?;
        if let Ok(mut p) = self.pairing.lock() {
            p.token = Some(token);
            p.failures = 0;
        }
        info!("issued a new pairing token");
        Ok(uri)
    }

    /// The current link, if it is alive.
    pub fn live_link(&self) -> Option<Arc<Link>> {
        self.link.borrow().clone().filter(|l| !l.mux.is_closed())
    }
}

#[derive(Debug)]
struct Authorizer(Arc<Shared>);

impl ClientAuthorizer for Authorizer {
    fn authorize(&self, fp: &Fingerprint) -> bool {
        let Ok(p) = self.0.pairing.lock() else {
            return false;
        };
        p.paired.as_ref().is_some_and(|x| x.fingerprint == *fp)
            || p.token.as_ref().is_some_and(|t| !t.expired())
    }
}

/// Lets glibc's allocator keep the memory of a download's buffered frames
/// instead of handing it back to the kernel after each burst.
///
/// A download may have its grown window in flight (256 KiB plus up to the
/// link's window headroom), in 64 KiB yamux frames. glibc trims the heap's
/// free top once it exceeds 128 KiB, so each burst of frames faults its
/// pages in again: a fifth more shim CPU per `file get`. glibc raises its
/// mmap threshold to the size of a freed mmapped block, and its trim
/// threshold to twice that (`mallopt(3)`, "dynamic mmap threshold"):
/// freeing one block of the headroom's size sets both, with no unsafe code.
/// Nothing is touched, so idle RSS stays the same; after a download up to
/// twice the headroom of freed heap may stay mapped in each malloc arena
/// (the daemon's thread, and each blocking thread that allocated), and
/// blocks up to the headroom's size come from the heap rather than mmap.
fn keep_freed_heap() {
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        drop(std::hint::black_box(Vec::<u8>::with_capacity(
            MuxConfig::SHIM.window_headroom,
        )));
    }
}

/// Runs the daemon on already-bound listeners until `shutdown` fires.
///
/// Returns once in-flight calls have drained (or [`DRAIN_TIMEOUT`] passed)
/// and the sockets are removed.
pub async fn run(
    cfg: ServeConfig,
    listeners: Listeners,
    identity: Identity,
    shutdown: CancellationToken,
) -> Result<()> {
    keep_freed_heap();
    let Listeners {
        tunnel: listener,
        relay,
        stdio,
        local,
        agent,
        http,
    } = listeners;
    let listen = match &listener {
        Some(l) => Some(l.local_addr().context("reading the bound address")?),
        None => None,
    };
    // Without a listener the URI's address is never dialed (the laptop pairs
    // with --connect-command), but it must still be HOST:PORT.
    let advertise = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| listen.map_or_else(|| "stdio:0".to_owned(), advertised));
    let paired = cfg.state.load_paired()?;
    let (link, _) = watch::channel(None);
    let shared = Arc::new(Shared {
        state: cfg.state.clone(),
        fingerprint: identity.fingerprint(),
        pairing: Mutex::new(Pairing {
            paired: paired.clone(),
            token: None,
            failures: 0,
        }),
        link,
        listen,
        advertise,
        pairing_ttl: cfg.pairing_ttl,
        agent_wait: cfg.agent_wait,
        keepalive_timeout: cfg.keepalive_timeout,
    });
    setup_pairing(&shared, &cfg, paired.is_some())?;
    let tls = TlsAcceptor::from(nexus_transport::tls::server_config(
        &identity,
        Arc::new(Authorizer(shared.clone())),
    )?);
    info!(listen = ?listen, fingerprint = %identity.fingerprint(), state_dir = %cfg.state.root().display(), "nexus-shim serving");

    nexus_transport::write_private(
        &cfg.state.pid_file(),
        format!("{}\n", std::process::id()).as_bytes(),
    )?;
    let tasks = TaskTracker::new();
    tasks.spawn(crate::sockets::serve_local(
        local,
        shared.clone(),
        tasks.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(crate::agent::serve_agent(
        agent,
        shared.clone(),
        tasks.clone(),
        shutdown.clone(),
    ));
    if let Some((listener, key)) = http {
        let url = crate::http::base_url(listener.local_addr()?, &key);
        nexus_transport::write_private(&shared.state.http_url(), format!("{url}\n").as_bytes())?;
        info!(file = %shared.state.http_url().display(), "HTTP injection endpoint ready ($NEXUS_HTTP_URL, see `nexus-shim env`)");
        tasks.spawn(crate::http::serve_http(
            listener,
            key,
            shared.clone(),
            tasks.clone(),
            shutdown.clone(),
        ));
    }
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let mut next_id = 0u64;
    if stdio {
        // One tunnel, on our stdin/stdout; the daemon ends with it.
        next_id += 1;
        let permit = handshakes.clone().try_acquire_owned()?;
        let (tls, shared, stop) = (tls.clone(), shared.clone(), shutdown.clone());
        tasks.spawn(
            async move {
                // Whatever way this ends, the daemon ends with it.
                let _stop_on_exit = stop.clone().drop_guard();
                accept_tunnel(
                    Incoming::Stdio,
                    "stdio".into(),
                    1,
                    tls,
                    shared,
                    stop,
                    permit,
                )
                .await;
                info!("stdin closed: stopping");
            }
            .instrument(info_span!("tunnel", id = 1, peer = "stdio")),
        );
    }
    loop {
        let (incoming, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = crate::ingress::accept_tcp(listener.as_ref()) => match r {
                Ok((tcp, peer)) => (Incoming::Tcp(tcp), peer.to_string()),
                Err(e) => { accept_failed(&e).await; continue; }
            },
            r = crate::ingress::accept_relay(&relay) => match r {
                Ok(unix) => (Incoming::Relay(unix), "tunnel.sock".to_owned()),
                Err(e) => { accept_failed(&e).await; continue; }
            },
        };
        // Unauthenticated peers get a bounded number of handshakes at once;
        // past that, new connections are closed at once.
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many pending handshakes; connection closed");
            continue;
        };
        next_id += 1;
        let span = info_span!("tunnel", id = next_id, %peer);
        tasks.spawn(
            accept_tunnel(
                incoming,
                peer,
                next_id,
                tls.clone(),
                shared.clone(),
                shutdown.clone(),
                permit,
            )
            .instrument(span),
        );
    }

    info!("shutting down: draining calls");
    tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        warn!("calls still running after {DRAIN_TIMEOUT:?}; closing anyway");
    }
    if let Some(link) = shared.link.send_replace(None) {
        link.stop.cancel();
    }
    let _ = std::fs::remove_file(shared.state.shim_sock());
    let _ = std::fs::remove_file(shared.state.agent_sock());
    let _ = std::fs::remove_file(shared.state.tunnel_sock());
    let _ = std::fs::remove_file(shared.state.pairing_uri());
    let _ = std::fs::remove_file(shared.state.http_url());
    let _ = std::fs::remove_file(shared.state.pid_file());
    info!("stopped");
    Ok(())
}

fn setup_pairing(shared: &Shared, cfg: &ServeConfig, paired: bool) -> Result<()> {
    let uri_path = shared.state.pairing_uri();
    if let Some(preset) = cfg.preset_token.clone().filter(|t| !t.is_empty()) {
        if shared.state.is_burned(&preset) {
            warn!("NEXUS_PAIRING_TOKEN was already used once; ignoring it (tokens are single use)");
        } else {
            let token = PairingToken::preset(preset, cfg.pairing_ttl);
            let uri = pairing_uri(&shared.advertise, shared.fingerprint, token.value());
            nexus_transport::write_private(&uri_path, uri.as_bytes())?;
            if let Ok(mut p) = shared.pairing.lock() {
                p.token = Some(token);
            }
            return Ok(());
        }
    }
    if paired {
        let _ = std::fs::remove_file(&uri_path);
    } else {
        shared.rotate_token()?;
        info!(file = %uri_path.display(), "not paired yet: pairing URI written (see `nexus-shim pairing-uri`)");
    }
    Ok(())
}

/// Parses an address to bind (`--listen`, `--http-listen`): numeric only.
/// The static shim cannot resolve host names (glibc loads its resolver at
/// run time, which a static binary cannot do), so every build refuses them
/// with the same error instead of failing one way here and another there.
pub fn numeric_addr(flag: &str, value: &str) -> Result<SocketAddr> {
    value.parse().map_err(|_| {
        anyhow::anyhow!(
            "{flag} {value}: not a numeric IP:PORT such as 0.0.0.0:7676, 127.0.0.1:0 or [::]:7676 (host names are not resolved)"
        )
    })
}

/// A host name for the pairing URI when bound to a wildcard address.
fn advertised(listen: SocketAddr) -> String {
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", listen.port())
}

async fn accept_tunnel(
    incoming: Incoming,
    mut peer: String,
    id: u64,
    tls: TlsAcceptor,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    handshake_permit: OwnedSemaphorePermit,
) {
    if let Incoming::Tcp(tcp) = &incoming {
        nexus_transport::tune_tcp(tcp);
    }
    let handshake = async {
        let (io, via) = incoming.open().await.context("opening the tunnel")?;
        if let Some(via) = via {
            peer = format!("{peer} ({via})");
        }
        let io: crate::ingress::Conduit = Box::new(nexus_transport::read_buffered(io));
        let mut stream = tls.accept(io).await.context("TLS handshake")?;
        let fp = peer_fingerprint(stream.get_ref().1).context("the client sent no certificate")?;
        let hello: ClientHello = nexus_transport::recv(&mut stream, HANDSHAKE_MAX_FRAME)
            .await
            .context("reading hello")?;
        let answer = judge(&shared, fp, &hello);
        nexus_transport::send(&mut stream, &answer).await?;
        anyhow::Ok((stream, answer, fp))
    };
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
    drop(handshake_permit);
    let (stream, answer, fp) = match outcome {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return warn!(error = format!("{e:#}"), "tunnel refused"),
        Err(_) => return warn!("tunnel refused: handshake took longer than {HANDSHAKE_TIMEOUT:?}"),
    };
    let ServerHello::Accepted {
        paired_now,
        version,
        ..
    } = answer
    else {
        return warn!(client_fingerprint = %fp, reason = ?answer, "tunnel refused");
    };
    let stop = shutdown.child_token();
    let (mux, inbound, driver) =
        mux::start(stream, mux::Mode::Server, MuxConfig::SHIM, stop.clone());
    // The laptop opens streams for pings and identity lists; `keepalive`
    // answers them.
    let ssh_identities = Arc::new(crate::agent::IdentityCache::default());
    let keepalive = crate::keepalive::run(
        mux.clone(),
        inbound,
        shared.keepalive_timeout,
        ssh_identities.clone(),
    );
    let link = Arc::new(Link {
        mux,
        peer,
        since: Instant::now(),
        ssh_identities,
        id,
        stop: stop.clone(),
        version,
        received: Mutex::default(),
    });
    if let Some(old) = shared.link.send_replace(Some(link)) {
        info!(
            old = old.id,
            "a new connection from the paired laptop replaces the previous one"
        );
        old.stop.cancel();
    }
    info!(client_fingerprint = %fp, paired_now, "laptop linked");
    let (exit, ()) = tokio::join!(driver, keepalive);
    shared.link.send_if_modified(|cur| {
        if cur.as_ref().is_some_and(|l| l.id == id) {
            *cur = None;
            true
        } else {
            false
        }
    });
    info!(?exit, "laptop link ended");
}

/// Decides a hello: version first, then the pin, then the token.
fn judge(shared: &Shared, fp: Fingerprint, hello: &ClientHello) -> ServerHello {
    let refuse = |reason| ServerHello::Refused {
        reason,
        versions: SUPPORTED,
    };
    let version = match negotiate(SUPPORTED, hello.versions) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "version mismatch");
            return refuse(Refusal::Version);
        }
    };
    let Ok(mut p) = shared.pairing.lock() else {
        return refuse(Refusal::NotPaired);
    };
    let token_ok = match (&hello.pairing_token, &p.token) {
        (Some(given), Some(pending)) => !pending.expired() && pending.matches(given.expose()),
        _ => false,
    };
    let paired_now = if token_ok {
        let record = Paired::now(fp);
        let burned = p.token.take().map(|t| shared.state.burn(t.value()));
        if let Err(e) = shared
            .state
            .save_paired(&record)
            .and(burned.unwrap_or(Ok(())))
        {
            warn!(error = format!("{e:#}"), "could not record the pairing");
            return refuse(Refusal::NotPaired);
        }
        let _ = std::fs::remove_file(shared.state.pairing_uri());
        p.paired = Some(record);
        true
    } else if hello.pairing_token.is_some() {
        p.failures += 1;
        if p.failures >= MAX_TOKEN_FAILURES
            && let Some(t) = p.token.take()
        {
            let _ = shared.state.burn(t.value());
            let _ = std::fs::remove_file(shared.state.pairing_uri());
            warn!(
                failures = p.failures,
                "too many wrong pairing tokens: the pending token is burned; issue a new one with \
                 `nexus-shim pairing-uri --rotate`"
            );
        }
        return refuse(Refusal::PairingToken);
    } else if p.paired.as_ref().is_some_and(|x| x.fingerprint == fp) {
        false
    } else {
        return refuse(Refusal::NotPaired);
    };
    ServerHello::Accepted {
        version,
        paired_now,
        software: crate::SOFTWARE.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::numeric_addr;

    #[test]
    fn bind_addresses_are_numeric() {
        for ok in ["0.0.0.0:7676", "127.0.0.1:0", "[::]:7676", "[::1]:0"] {
            assert!(numeric_addr("--listen", ok).is_ok(), "{ok}");
        }
        for bad in ["localhost:7676", "example.com:1", "0.0.0.0", ":7676", ""] {
            let err = numeric_addr("--listen", bad).err().map(|e| e.to_string());
            assert_eq!(
                err.as_deref(),
                Some(
                    format!("--listen {bad}: not a numeric IP:PORT such as 0.0.0.0:7676, 127.0.0.1:0 or [::]:7676 (host names are not resolved)").as_str()
                ),
            );
        }
    }
}
