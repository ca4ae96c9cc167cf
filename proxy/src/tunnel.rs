//! The tunnel client: dial a workspace over TLS, say hello, then answer the
//! calls the shim opens as yamux streams. Reconnects with jittered backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_protocol::{
    ANSWER_RECEIVED, Call, CallKey, ClientHello, ErrorCode, HANDSHAKE_MAX_FRAME, Refusal, Reply,
    SUPPORTED, Secret, ServerHello,
};
use nexus_transport::tls::{PinnedServer, client_config, server_name};
use nexus_transport::tokio_rustls::{TlsConnector, client::TlsStream};
use nexus_transport::{
    Fingerprint, Identity, MuxConfig, MuxHandle, MuxStream, TransportError, mux,
};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backoff::{self, Backoff};
use crate::keepalive::{self, Hints};
use crate::limits::Limits;
use crate::retries::{Answer, Claim, LINK_GONE_GRACE, Retries, Tape};
use crate::route::{Conduit, Route};
use crate::tools::{self, ToolContext};

/// How long a TCP connect plus TLS plus hello may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the shim may take to send a call's first frame.
pub const CALL_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a dial failed, phrased for the user.
#[derive(Debug, Error)]
pub enum DialError {
    /// TCP could not connect.
    #[error(
        "cannot reach {addr}: {source}; is `nexus-shim serve` running there and the port reachable?"
    )]
    Unreachable {
        /// Address dialed.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The workspace's certificate is not the pinned one.
    #[error(
        "the workspace at {addr} presented certificate {seen} but {pinned} is pinned. Someone may be \
         intercepting the connection, or the workspace's state dir was reset. If you trust the change, \
         get a new URI there (nexus-shim pairing-uri --rotate) and pair again"
    )]
    PinMismatch {
        /// Address dialed.
        addr: String,
        /// What was presented.
        seen: String,
        /// What we pinned.
        pinned: Fingerprint,
    },
    /// The shim refused our certificate or token.
    #[error("{0}")]
    Refused(String),
    /// Anything else on the way.
    #[error("{context}: {source}")]
    Failed {
        /// What we were doing.
        context: &'static str,
        /// Cause.
        source: TransportError,
    },
    /// Timed out.
    #[error("no answer from {0} within {DIAL_TIMEOUT:?}")]
    Timeout(String),
}

impl DialError {
    /// Whether retrying can help without the user doing something.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Timeout(_) | Self::Failed { .. }
        )
    }
}

const NOT_PAIRED: &str = "the workspace refused this laptop's certificate: this laptop is not the one paired \
     there (or the pairing token expired, or the workspace was reset). Run `nexus-shim pairing-uri --rotate` in the \
     workspace and pair again";

/// Dials `route`, pins `pin`, says hello (with a pairing token when pairing).
///
/// # Errors
/// A [`DialError`] whose message says what to do.
pub async fn dial(
    route: &Route,
    pin: Fingerprint,
    identity: &Identity,
    pairing_token: Option<Secret>,
) -> Result<(TlsStream<Conduit>, bool), DialError> {
    let addr = &route.to_string();
    let attempt = async {
        let tcp = route
            .connect()
            .await
            .map_err(|source| DialError::Unreachable {
                addr: addr.to_owned(),
                source,
            })?;
        let tcp: Conduit = Box::new(nexus_transport::read_buffered(tcp));
        let (config, verifier) =
            client_config(identity, pin).map_err(|source| DialError::Failed {
                context: "TLS setup",
                source,
            })?;
        let name = server_name();
        let mut tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| classify(addr, &verifier, e, "TLS handshake"))?;
        let hello = ClientHello {
            versions: SUPPORTED,
            pairing_token,
            software: crate::SOFTWARE.into(),
        };
        nexus_transport::send(&mut tls, &hello)
            .await
            .map_err(|e| classify_transport(addr, &verifier, e))?;
        let answer: ServerHello = nexus_transport::recv(&mut tls, HANDSHAKE_MAX_FRAME)
            .await
            .map_err(|e| classify_transport(addr, &verifier, e))?;
        match answer {
            ServerHello::Accepted { paired_now, software, version } => {
                debug!(software = %crate::tools::clip(&software), version, "workspace accepted");
                Ok((tls, paired_now))
            }
            ServerHello::Refused { reason, versions } => Err(DialError::Refused(match reason {
                Refusal::Version => format!(
                    "protocol version mismatch: the workspace speaks {versions}, this proxy speaks {SUPPORTED}; \
                     upgrade the older of nexus-agent-proxy and nexus-shim"
                ),
                Refusal::PairingToken => "the workspace refused the pairing token: it is wrong, already used or \
                     expired. Get a fresh URI with `nexus-shim pairing-uri --rotate` in the workspace"
                    .to_owned(),
                Refusal::NotPaired => NOT_PAIRED.to_owned(),
            })),
        }
    };
    tokio::time::timeout(DIAL_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(DialError::Timeout(addr.to_owned())))
}

fn classify_transport(addr: &str, verifier: &PinnedServer, e: TransportError) -> DialError {
    match e {
        TransportError::Io { source, .. } => classify(addr, verifier, source, "hello"),
        TransportError::Closed => DialError::Refused(NOT_PAIRED.to_owned()),
        other => DialError::Failed {
            context: "hello",
            source: other,
        },
    }
}

fn classify(
    addr: &str,
    verifier: &PinnedServer,
    e: std::io::Error,
    context: &'static str,
) -> DialError {
    use nexus_transport::tokio_rustls::rustls::{
        AlertDescription, CertificateError, Error as TlsError,
    };
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>());
    match tls {
        Some(TlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure)) => {
            DialError::PinMismatch {
                addr: addr.to_owned(),
                seen: verifier
                    .seen()
                    .map_or_else(|| "(none)".to_owned(), |f| f.to_string()),
                pinned: verifier.expected(),
            }
        }
        Some(TlsError::AlertReceived(
            AlertDescription::AccessDenied
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown,
        )) => DialError::Refused(NOT_PAIRED.to_owned()),
        _ => DialError::Failed {
            context,
            source: TransportError::Io {
                context: context.into(),
                source: e,
            },
        },
    }
}

/// Keeps one workspace linked until `shutdown`: dial, serve, and on loss
/// dial again with jittered [`Backoff`] (at once after a wake or a network
/// change).
pub async fn serve_workspace(
    ws: crate::config::Workspace,
    ctx: Arc<ToolContext>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
) {
    let identity = match ctx.identity() {
        Ok(id) => id,
        Err(e) => {
            return warn!(
                error = format!("{e:#}"),
                "cannot load this laptop's identity"
            );
        }
    };
    let route = match Route::for_workspace(&ws) {
        Ok(r) => r,
        Err(e) => {
            return warn!(
                error = format!("{e:#}"),
                "the workspace record's route is invalid; pair again"
            );
        }
    };
    // Calls outlive the link they came on (a dead link must not wait for
    // them before redialing); they are drained here at shutdown.
    let calls = TaskTracker::new();
    let tools = Arc::new(ToolGates::new(limits.max_calls_per_tool));
    // Keys outlive links: a read's second attempt comes on the next one.
    let retries = Arc::new(Retries::default());
    // One drain after SIGTERM, whoever waits first: the link's calls are
    // this workspace's calls too, and waiting for them twice doubled the
    // time a stop took while a tool ran on.
    let drain = DrainFrom::default();
    let mut hints = Hints::new(route.socket_addr().map(|a| a.ip()));
    let mut outage_start: Option<Instant> = None;
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        ctx.links.down(&ws.name);
        let dial_start = Instant::now();
        let dialed = tokio::select! {
            () = shutdown.cancelled() => break,
            r = dial(&route, ws.fingerprint, &identity, None) => r,
        };
        // A pin mismatch or a refusal needs the user, not a retry every second.
        let (needs_user, at_once) = match dialed {
            Ok((tls, _)) => {
                let peer = route.socket_addr();
                info!(route = %route, "linked");
                let up = Instant::now();
                let link = Link {
                    workspace: &ws.name,
                    ctx: &ctx,
                    limits: &limits,
                    tools: &tools,
                    retries: &retries,
                    calls: &calls,
                    drain: &drain,
                };
                ctx.links.up(&ws.name, up - dial_start);
                let (dead, served) = link.serve(tls, peer, &shutdown).await;
                ctx.links.down(&ws.name);
                // Any link ends the outage (the next one gets the fast cap
                // again); only a link that answered calls or lasted starts
                // the next with quick retries, so a link that keeps dropping
                // at once is not redialed in a loop.
                outage_start = None;
                if served > 0 || up.elapsed() > Duration::from_secs(3) {
                    backoff.reset();
                }
                if shutdown.is_cancelled() {
                    break;
                }
                if let Some(peer) = peer {
                    hints = Hints::new(Some(peer.ip()));
                }
                match dead {
                    Some(why) => warn!(?why, "link declared dead; reconnecting"),
                    None => warn!("link lost; reconnecting"),
                }
                (false, dead.is_some_and(keepalive::Dead::redial_at_once))
            }
            Err(e) => {
                let since = *outage_start.get_or_insert_with(Instant::now);
                warn!(error = %e, outage_s = since.elapsed().as_secs(), "cannot link");
                (!e.is_transient(), false)
            }
        };
        if at_once {
            backoff.reset();
            continue;
        }
        let since = *outage_start.get_or_insert_with(Instant::now);
        let wait = backoff::jittered(backoff.next(since.elapsed(), needs_user));
        let hint = tokio::select! {
            () = shutdown.cancelled() => break,
            h = keepalive::sleep_unless_hinted(wait, &mut hints) => h,
        };
        if let Some(hint) = hint {
            info!(?hint, "woke up or changed networks; redialing now");
            backoff.reset();
        }
    }
    calls.close();
    if tokio::time::timeout_at(drain.until(), calls.wait())
        .await
        .is_err()
    {
        warn!("calls still running {DRAIN_TIMEOUT:?} after shutdown; leaving them");
    }
}

/// How long in-flight calls may take to finish after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// When a workspace's drain began: set by the first to wait.
#[derive(Debug, Default)]
struct DrainFrom(std::sync::OnceLock<Instant>);

impl DrainFrom {
    /// The end of the drain, [`DRAIN_TIMEOUT`] after it began.
    fn until(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(*self.0.get_or_init(Instant::now)) + DRAIN_TIMEOUT
    }
}

/// Per-workspace gates: calls of one tool running at once.
#[derive(Debug)]
struct ToolGates {
    max: usize,
    gates: std::sync::Mutex<std::collections::HashMap<&'static str, Arc<Semaphore>>>,
}

impl ToolGates {
    fn new(max: usize) -> Self {
        Self {
            max,
            gates: std::sync::Mutex::default(),
        }
    }

    fn gate(&self, tool: &'static str) -> Option<Arc<Semaphore>> {
        let mut gates = self.gates.lock().ok()?;
        Some(
            gates
                .entry(tool)
                .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
                .clone(),
        )
    }

    /// A place for one call of `tool`: at once if one is free, else in turn
    /// (tokio's semaphore is first come, first served), waiting at most
    /// `wait`. `None` when none came free in time.
    async fn enter(&self, tool: &'static str, wait: Duration) -> Option<OwnedSemaphorePermit> {
        let gate = self.gate(tool)?;
        if let Ok(place) = gate.clone().try_acquire_owned() {
            return Some(place);
        }
        tokio::time::timeout(wait, gate.acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// A call's place among the calls one workspace has in flight, given back
/// while the call waits its turn for its tool, so that a queue of one
/// tool's calls never holds up the others.
struct InFlight {
    gate: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    /// Waits for a place for `tool` (FIFO), not counted in flight meanwhile.
    /// A call still waiting when its link ends leaves the queue: its answer
    /// could only go into a dead stream, so it must not run later.
    async fn queue_for(
        &mut self,
        tools: &ToolGates,
        tool: &'static str,
        wait: Duration,
        link: &MuxHandle,
    ) -> Queued {
        if let Some(place) = tools.gate(tool).and_then(|g| g.try_acquire_owned().ok()) {
            return Queued::Place(place);
        }
        self.permit = None;
        info!(tool, "no place free for this tool; the call waits its turn");
        let waiting = async {
            let place = tools.enter(tool, wait).await?;
            self.permit = self.gate.clone().acquire_owned().await.ok();
            Some(place)
        };
        // The link's end is looked at first, and again once a place came:
        // a place often comes free because the link's end just failed the
        // call holding it.
        tokio::select! {
            biased;
            () = link.closed() => Queued::LinkGone,
            place = waiting => match place {
                Some(_) if link.is_closed() => Queued::LinkGone,
                Some(place) => Queued::Place(place),
                None => Queued::TimedOut,
            },
        }
    }
}

/// How a call's wait for its tool ended.
enum Queued {
    /// Its turn came.
    Place(OwnedSemaphorePermit),
    /// No place came free within the wait.
    TimedOut,
    /// Its link ended first.
    LinkGone,
}

/// What serving one live link needs.
struct Link<'a> {
    workspace: &'a str,
    ctx: &'a Arc<ToolContext>,
    limits: &'a Arc<Limits>,
    tools: &'a Arc<ToolGates>,
    retries: &'a Arc<Retries>,
    calls: &'a TaskTracker,
    drain: &'a DrainFrom,
}

impl Link<'_> {
    /// Answers the streams of one live link until it ends, is found dead,
    /// or `shutdown`; returns why it was found dead, if it was, and how many
    /// calls it carried. On shutdown, calls in flight on this link
    /// finish (for at most [`DRAIN_TIMEOUT`]) before the link is closed;
    /// calls arriving meanwhile are reset, and the shim fails them cleanly.
    async fn serve(
        self,
        tls: TlsStream<Conduit>,
        peer: Option<SocketAddr>,
        shutdown: &CancellationToken,
    ) -> (Option<keepalive::Dead>, u64) {
        let close = CancellationToken::new();
        let (mux, mut inbound, driver) =
            mux::start(tls, mux::Mode::Client, MuxConfig::PROXY, close.clone());
        let watcher_stop = close.child_token();
        // Every route gets pings (only TCP to an IP address gets route
        // watching too).
        let watcher = Some(tokio::spawn(keepalive::watch_link(
            mux.clone(),
            peer,
            self.limits.keepalive_timeout,
            self.limits.ping_interval(),
            watcher_stop.clone(),
        )));
        // The identity list follows the laptop agent for as long as the link.
        let push_stop = close.child_token();
        let pusher = tokio::spawn(tools::ssh_push::run(
            mux.clone(),
            self.workspace.to_owned(),
            self.ctx.clone(),
            push_stop.clone(),
        ));
        let on_link = TaskTracker::new();
        let gate = Arc::new(Semaphore::new(self.limits.max_calls_in_flight));
        let mut next = 0u64;
        let mut watcher = watcher;
        let mut dead = None;
        loop {
            let stream = tokio::select! {
                s = inbound.recv() => match s { Some(s) => s, None => break },
                () = shutdown.cancelled() => break,
                d = async { match watcher.as_mut() { Some(w) => w.await.ok().flatten(), None => std::future::pending().await } } => {
                    watcher = None;
                    if let Some(why) = d {
                        dead = Some(why);
                        mux.abort();
                    }
                    continue;
                }
            };
            let permit = tokio::select! {
                p = gate.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                () = shutdown.cancelled() => break,
            };
            next += 1;
            let span = info_span!("call", id = next);
            let (ctx, limits, tools) = (self.ctx.clone(), self.limits.clone(), self.tools.clone());
            let retries = self.retries.clone();
            let gate_for_call = gate.clone();
            let workspace = self.workspace.to_owned();
            let link_mux = mux.clone();
            self.calls.spawn(
                on_link
                    .track_future(async move {
                        let mut in_flight = InFlight {
                            gate: gate_for_call,
                            permit: Some(permit),
                        };
                        let link = OnLink {
                            tools: &tools,
                            retries: &retries,
                            in_flight: &mut in_flight,
                            mux: &link_mux,
                        };
                        answer(stream, &workspace, &ctx, &limits, link).await;
                        drop(in_flight);
                    })
                    .instrument(span),
            );
        }
        watcher_stop.cancel();
        push_stop.cancel();
        if shutdown.is_cancelled() {
            // Refuse new calls (their streams are reset), let the running
            // ones answer, then close the link gracefully.
            drop(inbound);
            on_link.close();
            if tokio::time::timeout_at(self.drain.until(), on_link.wait())
                .await
                .is_err()
            {
                warn!("calls still running {DRAIN_TIMEOUT:?} after SIGTERM; closing the link");
            }
        }
        close.cancel();
        let exit = driver.await;
        let _ = pusher.await;
        debug!(?exit, "link driver ended");
        (dead, next)
    }
}

/// A call's share of its link: the tool gates, its place in flight, and
/// the link itself (to know when it ended).
struct OnLink<'a> {
    tools: &'a ToolGates,
    retries: &'a Retries,
    in_flight: &'a mut InFlight,
    mux: &'a MuxHandle,
}

async fn answer(
    mut stream: MuxStream,
    workspace: &str,
    ctx: &ToolContext,
    limits: &Limits,
    mut link: OnLink<'_>,
) {
    let Some(call) = read_call(&mut stream, limits).await else {
        return;
    };
    // Answers the workspace confirms it read: not kept for second attempts.
    for id in call.received.iter().take(nexus_protocol::MAX_RECEIVED) {
        link.retries.confirmed(*id);
    }
    let tool = call.request.tool();
    match call.key.filter(|_| call.request.is_retryable()) {
        None => {
            if let Ran::Answer(reply) =
                run(&call, &mut stream, workspace, ctx, limits, &mut link).await
            {
                finish(&mut stream, reply, tool).await;
            }
        }
        Some(key) => answer_keyed(&call, key, &mut stream, workspace, ctx, limits, link).await,
    }
}

/// The call a stream starts with; a malformed one is answered here.
async fn read_call(stream: &mut MuxStream, limits: &Limits) -> Option<Call> {
    match tokio::time::timeout(
        CALL_READ_TIMEOUT,
        nexus_transport::recv(stream, limits.max_call_frame),
    )
    .await
    {
        Ok(Ok(call)) => Some(call),
        Ok(Err(TransportError::Closed)) => None,
        Ok(Err(e)) => {
            warn!(error = %crate::tools::clip(&e.to_string()), "malformed call refused");
            let reply = Reply::error(
                ErrorCode::BadRequest,
                format!("malformed call refused by the laptop: {e}"),
            );
            let _ = nexus_transport::send(stream, &reply).await;
            let _ = stream.shutdown().await;
            None
        }
        Err(_) => {
            warn!("the workspace opened a call and sent nothing; dropped");
            None
        }
    }
}

/// What running a call came to.
enum Ran {
    /// Its final reply (`None`: the tool wrote it).
    Answer(Option<Reply>),
    /// Its link ended before its turn: never decided, not answered.
    Dropped,
}

/// Runs a call once its tool has a place for it.
async fn run<S>(
    call: &Call,
    stream: &mut S,
    workspace: &str,
    ctx: &ToolContext,
    limits: &Limits,
    link: &mut OnLink<'_>,
) -> Ran
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let tool = call.request.tool();
    let tools = link.tools;
    // Beyond the tool's places, calls wait their turn (as long as a call
    // may take), rather than fail: a `make -j64` whose jobs each ask for a
    // credential gets 64 answers.
    let ran = match link
        .in_flight
        .queue_for(tools, tool, limits.call_timeout, link.mux)
        .await
    {
        Queued::LinkGone => {
            warn!(
                tool,
                "the link ended while this call waited its turn; dropped unanswered"
            );
            Ran::Dropped
        }
        Queued::TimedOut => {
            let waited = nexus_protocol::units::format_duration(limits.call_timeout);
            warn!(tool, limit = tools.max, %waited, "no place for a call of this tool in time; refused");
            Ran::Answer(Some(Reply::error(
                ErrorCode::Denied,
                format!(
                    "{} {tool} calls from this workspace were running for all of {waited} \
                     (`nexus-agent-proxy run --max-calls-per-tool`, `--call-timeout`); retry later",
                    tools.max
                ),
            )))
        }
        // Streamed answers (tool output, file data) end on their own: a tool
        // at its policy timeout, a file at its end or when the workspace
        // stops reading (yamux flow control holds the laptop side). Others
        // get --call-timeout, inside the pipeline, which audits the cut.
        Queued::Place(_place) => {
            let timeout = (!call.request.is_streaming()).then_some(limits.call_timeout);
            // Started in turn with the other workspaces' calls.
            let dispatch =
                tools::dispatch(call, workspace, ctx, stream, limits.max_call_frame, timeout);
            Ran::Answer(ctx.fair.run(workspace, dispatch).await)
        }
    };
    // The answer is made: sending it takes no place.
    link.in_flight.permit = None;
    ran
}

/// A retryable read under its key: the first attempt the laptop sees runs,
/// a second one gets the first one's answer, so that the read is decided,
/// audited, counted and run once (see [`crate::retries`]).
async fn answer_keyed(
    call: &Call,
    key: CallKey,
    stream: &mut MuxStream,
    workspace: &str,
    ctx: &ToolContext,
    limits: &Limits,
    mut link: OnLink<'_>,
) {
    let (id, tool) = (key.id, call.request.tool());
    // Confirmed with a later call rather than on this stream (which the
    // workspace closed with the request): one answered by one reply.
    let later = key.later && !call.request.is_streaming();
    // Twice at most: a joined first attempt that ended unanswered (its
    // link gone before its turn) was never decided, so this one runs.
    for _ in 0..2 {
        match link.retries.claim(id, call, &ctx.policy.current()) {
            Claim::Mismatch => {
                warn!(tool, "a retried call named another call's key; refused");
                let refusal = Reply::error(
                    ErrorCode::BadRequest,
                    "refused by the laptop: a retried call must repeat its first attempt",
                );
                finish(stream, Some(refusal), tool).await;
                return;
            }
            Claim::Full | Claim::Again => {
                if let Ran::Answer(reply) =
                    run(call, stream, workspace, ctx, limits, &mut link).await
                {
                    finish(stream, reply, tool).await;
                }
                return;
            }
            Claim::First(mut answering) if call.request.is_streaming() => {
                // Its answer is every byte it writes, kept as it goes.
                let mux = link.mux.clone();
                let link_gone = async move { mux.closed().await };
                let mut tape = Tape::new(&mut *stream, link_gone, LINK_GONE_GRACE);
                let Ran::Answer(reply) =
                    run(call, &mut tape, workspace, ctx, limits, &mut link).await
                else {
                    return;
                };
                let sent = finish(&mut tape, reply, tool).await;
                let (answer, broken) = tape.into_answer();
                answering.answered(answer);
                answering.finish(sent && !broken && delivered(stream).await);
                return;
            }
            Claim::First(mut answering) => {
                let Ran::Answer(reply) = run(call, stream, workspace, ctx, limits, &mut link).await
                else {
                    return;
                };
                if let Some(reply) = &reply {
                    answering.answered(Answer::Reply(reply.clone()));
                }
                let sent = finish(stream, reply, tool).await;
                if later {
                    answering.later(sent);
                } else {
                    answering.finish(sent && delivered(stream).await);
                }
                return;
            }
            Claim::Join(mut first) => {
                let joined =
                    tokio::time::timeout(limits.call_timeout, first.wait_for(Option::is_some))
                        .await
                        .map(|answer| answer.map(|a| a.clone()));
                let reply = match joined {
                    Ok(Ok(_)) if ctx.locked() => {
                        Some(Reply::error(ErrorCode::Denied, tools::gate::LOCKED))
                    }
                    Ok(Ok(answer)) => {
                        info!(
                            tool,
                            "a read sent again after its link died got its first attempt's answer"
                        );
                        match answer {
                            Some(Answer::Reply(reply)) => Some(reply),
                            Some(Answer::Replay(bytes)) => {
                                // The first attempt's frames, its final reply included.
                                if stream.write_all(&bytes).await.is_err() {
                                    return;
                                }
                                None
                            }
                            Some(Answer::Unkept) | None => Some(crate::retries::unkept()),
                        }
                    }
                    Ok(Err(_)) => continue,
                    Err(_) => Some(Reply::error(
                        ErrorCode::Internal,
                        "the first attempt of this call is still running on the laptop; retry later",
                    )),
                };
                link.in_flight.permit = None;
                // (One confirmed later is forgotten then.)
                if finish(stream, reply, tool).await && !later && delivered(stream).await {
                    link.retries.delivered(id);
                }
                return;
            }
        }
    }
}

/// Sends a call's final reply, if the tool did not, and closes our side.
/// Whether the reply went out.
async fn finish<S>(stream: &mut S, reply: Option<Reply>, tool: &'static str) -> bool
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let mut sent = true;
    if let Some(reply) = reply {
        // An error ending a stream (a timeout, a lock) must not wait for ever
        // on a workspace that stopped reading (the stream's window full):
        // past the wait, the stream is dropped (reset). A `Done` after a
        // slow reader's last chunk still waits for it.
        let send = nexus_transport::send(stream, &reply);
        if matches!(reply, Reply::Error(_)) {
            match tokio::time::timeout(FINAL_SEND_TIMEOUT, send).await {
                Ok(r) => sent = r.is_ok(),
                Err(_) => {
                    warn!(
                        tool,
                        "the workspace did not take the final reply; stream reset"
                    );
                    return false;
                }
            }
        } else {
            sent = send.await.is_ok();
        }
    }
    sent && stream.shutdown().await.is_ok()
}

/// Whether the shim confirmed our last reply of a keyed call (it sends
/// [`ANSWER_RECEIVED`] once it has read it). A link that died first, or a
/// shim that says nothing in time, leaves it in doubt: a dying link ends
/// every stream as if closed, so an end of stream proves nothing.
async fn delivered(stream: &mut MuxStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(FINAL_SEND_TIMEOUT, stream.read(&mut byte)).await,
        Ok(Ok(1))
    ) && byte[0] == ANSWER_RECEIVED
}

/// How long a final error may wait for the workspace to read.
const FINAL_SEND_TIMEOUT: Duration = Duration::from_secs(10);
