//! `shim.sock`: local callers (the CLI, later MCP and helpers). Each
//! connection carries one [`LocalRequest`]; forwarded requests become one
//! yamux stream to the laptop, with the caller's context attached here, from
//! `SO_PEERCRED`, never from what the caller claims.

use std::sync::Arc;
use std::time::Duration;

use nexus_protocol::{
    Call, CallerContext, ErrorCode, LinkStatus, LocalOp, LocalReply, LocalRequest, MAX_FRAME,
    PairingInfo, Reply, Request, StatusInfo,
};
use nexus_transport::{MuxStream, TransportError};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::serve::{Link, Shared};

/// Forwarded calls in progress at once; more wait. `status` and
/// `pairing-uri` are answered outside this gate, so a flood of held calls
/// cannot hide the daemon's state. Idle connections are dropped after
/// [`REQUEST_READ_TIMEOUT`].
pub const MAX_LOCAL_CALLS: usize = 1024;
/// The longest `--wait` honoured; a caller asking for more gets this.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// How long a local caller may take to send its request.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the laptop may take to answer one call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Accepts local callers until `shutdown`.
pub async fn serve_local(
    listener: UnixListener,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let gate = Arc::new(Semaphore::new(MAX_LOCAL_CALLS));
    let mut next = 0u64;
    loop {
        let conn = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((conn, _)) => conn,
                Err(e) => { crate::serve::accept_failed(&e).await; continue; }
            },
        };
        if !crate::trust::peer_is_trusted(&conn) {
            warn!("shim.sock connection from another user refused");
            continue;
        }
        next += 1;
        let (shared, stop, gate, id) = (shared.clone(), shutdown.clone(), gate.clone(), next);
        tasks.spawn(async move {
            let caller = caller_context(&conn);
            let span = info_span!("local", id, pid = caller.pid, uid = caller.uid);
            handle(conn, caller, &shared, &stop, &gate)
                .instrument(span)
                .await;
        });
    }
}

/// What the kernel says about the peer; `/proc` adds exe and cwd on Linux.
pub(crate) fn caller_context(conn: &UnixStream) -> CallerContext {
    let mut ctx = CallerContext::default();
    if let Ok(cred) = conn.peer_cred() {
        ctx.uid = Some(cred.uid());
        ctx.gid = Some(cred.gid());
        ctx.pid = cred.pid().and_then(|p| u32::try_from(p).ok());
    }
    #[cfg(target_os = "linux")]
    if let Some(pid) = ctx.pid {
        let link = |what: &str| {
            std::fs::read_link(format!("/proc/{pid}/{what}"))
                .ok()
                .map(|p| p.display().to_string())
        };
        ctx.exe = link("exe");
        ctx.cwd = link("cwd");
    }
    ctx
}

async fn handle(
    mut conn: UnixStream,
    caller: CallerContext,
    shared: &Shared,
    shutdown: &CancellationToken,
    gate: &Semaphore,
) {
    let req: LocalRequest = match tokio::time::timeout(
        REQUEST_READ_TIMEOUT,
        nexus_transport::recv(&mut conn, MAX_FRAME),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(TransportError::Closed)) => return,
        Ok(Err(e)) => {
            let msg = format!(
                "bad request on shim.sock: {e}; is this client the same version as the daemon?"
            );
            let _ = nexus_transport::send(
                &mut conn,
                &LocalReply::Reply(Reply::error(ErrorCode::BadRequest, msg)),
            )
            .await;
            return;
        }
        Err(_) => return debug!("local caller sent nothing; closing"),
    };
    match req.op {
        LocalOp::Status => {
            let _ = nexus_transport::send(&mut conn, &LocalReply::Status(status(shared))).await;
        }
        LocalOp::PairingUri { rotate } => {
            let reply = pairing(shared, rotate);
            let _ = nexus_transport::send(&mut conn, &reply).await;
        }
        LocalOp::Forward(Request::Http(_)) => {
            let reply = Reply::error(
                ErrorCode::BadRequest,
                "HTTP requests go to $NEXUS_HTTP_URL (see `nexus-shim env`), not shim.sock",
            );
            let _ = nexus_transport::send(&mut conn, &LocalReply::Reply(reply)).await;
        }
        LocalOp::Forward(request) => {
            let wait = Duration::from_millis(req.wait_ms).min(MAX_WAIT);
            let Ok(_permit) = gate.acquire().await else {
                return;
            };
            forward(&mut conn, caller, request, wait, shared, shutdown).await;
        }
    }
    let _ = conn.shutdown().await;
}

fn status(shared: &Shared) -> StatusInfo {
    let link = shared.live_link();
    let (paired_fingerprint, pairing_pending) = shared.pairing.lock().map_or((None, false), |p| {
        (
            p.paired.as_ref().map(|x| x.fingerprint.to_string()),
            p.token.as_ref().is_some_and(|t| !t.expired()),
        )
    });
    StatusInfo {
        link: if link.is_some() {
            LinkStatus::Linked
        } else {
            LinkStatus::NotLinked
        },
        listen: shared
            .listen
            .map_or_else(|| "none".to_owned(), |a| a.to_string()),
        paired_fingerprint,
        pairing_pending,
        peer: link.as_ref().map(|l| l.peer.to_string()),
        linked_for_s: link.as_ref().map(|l| l.since.elapsed().as_secs()),
        version: crate::SOFTWARE.into(),
    }
}

fn pairing(shared: &Shared, rotate: bool) -> LocalReply {
    if rotate {
        return match shared.rotate_token() {
            Ok(uri) => LocalReply::Pairing(PairingInfo::Uri {
                uri: uri.into(),
                expires_in_s: shared.pairing_ttl.as_secs(),
            }),
            Err(e) => LocalReply::Reply(Reply::error(
                ErrorCode::Internal,
                format!("could not issue a token: {e:#}"),
            )),
        };
    }
    let pending = shared
        .pairing
        .lock()
        .ok()
        .and_then(|p| p.token.as_ref().map(|t| (t.expired(), t.remaining())));
    let paired = shared.pairing.lock().is_ok_and(|p| p.paired.is_some());
    match pending {
        None if paired => LocalReply::Pairing(PairingInfo::AlreadyPaired),
        None => LocalReply::Reply(Reply::error(
            ErrorCode::Missing,
            "no laptop is paired and no pairing token is pending (it was used, or burned after wrong \
             guesses); issue a new one with: nexus-shim pairing-uri --rotate",
        )),
        Some((true, _)) => LocalReply::Reply(Reply::error(
            ErrorCode::BadRequest,
            "the pairing token has expired; issue a new one with: nexus-shim pairing-uri --rotate",
        )),
        Some((false, left)) => match std::fs::read_to_string(shared.state.pairing_uri()) {
            Ok(uri) => LocalReply::Pairing(PairingInfo::Uri {
                uri: uri.into(),
                expires_in_s: left.as_secs(),
            }),
            Err(e) => LocalReply::Reply(Reply::error(
                ErrorCode::Internal,
                format!("reading pairing.uri: {e}"),
            )),
        },
    }
}

pub(crate) async fn wait_for_link(shared: &Shared, wait: Duration) -> Option<Arc<Link>> {
    if let Some(l) = shared.live_link() {
        return Some(l);
    }
    let mut rx = shared.link.subscribe();
    let found = tokio::time::timeout(
        wait,
        rx.wait_for(|l| l.as_ref().is_some_and(|l| !l.mux.is_closed())),
    )
    .await;
    found.ok()?.ok()?.clone()
}

async fn forward(
    conn: &mut UnixStream,
    caller: CallerContext,
    request: Request,
    wait: Duration,
    shared: &Shared,
    shutdown: &CancellationToken,
) {
    let tool = request.tool();
    let (mut reader, mut writer) = conn.split();
    let closing = || {
        Err(Reply::error(
            ErrorCode::Internal,
            "the nexus-shim daemon is shutting down; retry when it is back",
        ))
    };
    // A brokered git connection's caller keeps writing (git's side of the
    // protocol, as `Upload` frames): relayed to the laptop, not taken for
    // a hang-up.
    let result = if matches!(request, Request::GitSsh { .. }) {
        tokio::select! {
            r = call_laptop(&mut writer, caller, request, wait, shared, Some(&mut reader)) => r,
            () = shutdown.cancelled() => closing(),
        }
    } else {
        tokio::select! {
            r = call_laptop(&mut writer, caller, request, wait, shared, None) => r,
            () = hung_up(&mut reader) => return debug!(tool, "the caller hung up; call abandoned"),
            () = shutdown.cancelled() => closing(),
        }
    };
    if let Err(reply) = result {
        debug!(tool, reply = ?reply, "call failed");
        let _ = nexus_transport::send(&mut writer, &LocalReply::Reply(reply)).await;
    }
}

/// Resolves when the caller closes its side: it sends nothing after its
/// request, so any read completing means it hung up (or broke protocol).
/// A call whose caller is gone must not keep its place in the gate, nor be
/// forwarded to the laptop later.
async fn hung_up(reader: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut byte = [0u8; 1];
    let _ = tokio::io::AsyncReadExt::read(reader, &mut byte).await;
}

fn lost() -> Reply {
    Reply::error(
        ErrorCode::Internal,
        "the link to the laptop dropped during the call; it was not retried",
    )
}

pub(crate) fn not_linked(wait: Duration) -> Reply {
    Reply::error(
        ErrorCode::NotConnected,
        format!(
            "no laptop is linked to this workspace (waited {}s); on the laptop run: nexus-agent-proxy run",
            wait.as_secs()
        ),
    )
}

/// Opens a stream and sends the call; the request rides with the SYN.
async fn open_call(
    link: &Link,
    caller: CallerContext,
    request: Request,
) -> Result<MuxStream, TransportError> {
    let mut stream = link.mux.open().await?;
    nexus_transport::send(&mut stream, &Call { caller, request }).await?;
    Ok(stream)
}

/// One call on a live link, answered by one final reply.
pub(crate) async fn call_once(
    link: &Link,
    caller: CallerContext,
    request: Request,
) -> Result<Reply, TransportError> {
    let mut stream = open_call(link, caller, request).await?;
    let reply = nexus_transport::recv(&mut stream, MAX_FRAME).await?;
    let _ = stream.shutdown().await;
    Ok(reply)
}

/// Waits for the link (up to `wait`), then makes one call; failures come
/// back as error replies.
pub(crate) async fn request(
    shared: &Shared,
    caller: CallerContext,
    request: Request,
    wait: Duration,
) -> Reply {
    let Some(link) = wait_for_link(shared, wait).await else {
        return not_linked(wait);
    };
    match tokio::time::timeout(CALL_TIMEOUT, call_once(&link, caller, request)).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => lost(),
        Err(_) => Reply::error(
            ErrorCode::Internal,
            format!(
                "the laptop did not answer within {}s",
                CALL_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// Relays one call. `Err` carries the reply to send when the laptop could not
/// answer; relayed replies are written as they arrive. `upload`: the
/// caller's side, whose bytes (already `Upload` frames, which the laptop
/// decodes) are copied to the laptop as they come.
async fn call_laptop(
    conn: &mut (impl tokio::io::AsyncWrite + Unpin),
    caller: CallerContext,
    request: Request,
    wait: Duration,
    shared: &Shared,
    upload: Option<&mut (dyn tokio::io::AsyncRead + Unpin + Send)>,
) -> Result<(), Reply> {
    let Some(link) = wait_for_link(shared, wait).await else {
        return Err(not_linked(wait));
    };
    // A streamed answer (tool output, file data) lasts as long as the laptop
    // lets it (tool timeouts are enforced there); others get CALL_TIMEOUT.
    let limit = if request.is_streaming() {
        MAX_WAIT
    } else {
        CALL_TIMEOUT
    };
    let stream = link.mux.open().await.map_err(|_| lost())?;
    let (mut stream, mut up) = tokio::io::split(stream);
    nexus_transport::send(&mut up, &Call { caller, request })
        .await
        .map_err(|_| lost())?;
    let uploading = async {
        if let Some(from) = upload {
            let _ = tokio::io::copy(from, &mut up).await;
            let _ = up.shutdown().await;
        }
        std::future::pending::<()>().await;
    };
    // Only a call that ended with its final reply closes its stream
    // cleanly; dropping it otherwise resets it on the laptop.
    let mut finished = false;
    let relay = async {
        loop {
            let bad = |e: &dyn std::fmt::Display| {
                Reply::error(
                    ErrorCode::Internal,
                    format!("bad answer from the laptop: {e}"),
                )
            };
            let mut body = match nexus_transport::recv_body(&mut stream, MAX_FRAME).await {
                Ok(b) => b,
                Err(TransportError::Closed) => return Err(lost()),
                Err(e) => return Err(bad(&e)),
            };
            // Bulk data (file contents, tool output) passes through as it
            // came: not decoded, re-encoded or wiped here (the caller
            // decodes it in full).
            if let Some(frame) = nexus_protocol::chunk_as_local_frame(&body, MAX_FRAME) {
                std::mem::take(&mut *body).clear();
                if conn.write_all(&frame).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            let reply: Reply = match nexus_protocol::decode(&body) {
                Ok(r) => r,
                Err(e) => return Err(bad(&e)),
            };
            drop(body);
            let last = reply.is_final();
            let sent = nexus_transport::send(conn, &LocalReply::Reply(reply)).await;
            if sent.is_err() {
                // The caller went away; dropping the stream resets it on the laptop.
                return Ok(());
            }
            if last {
                finished = true;
                return Ok(());
            }
        }
    };
    let relay = async {
        tokio::select! {
            r = relay => r,
            () = uploading => Ok(()),
        }
    };
    let ended = tokio::time::timeout(limit, relay)
        .await
        .unwrap_or_else(|_| {
            Err(Reply::error(
                ErrorCode::Internal,
                format!("the laptop did not answer within {}s", limit.as_secs()),
            ))
        });
    if finished {
        let _ = up.shutdown().await;
    }
    ended
}
