//! `shim.sock`: local callers (the CLI, later MCP and helpers). Each
//! connection carries one [`LocalRequest`]; forwarded requests become one
//! yamux stream to the laptop, with the caller's context attached here, from
//! `SO_PEERCRED`, never from what the caller claims.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use nexus_protocol::{
    ANSWER_RECEIVED, Call, CallKey, CallerContext, ErrorCode, FrameError, LinkStatus, LocalOp,
    LocalReply, LocalRequest, MAX_FRAME, PairingInfo, RETRY_WINDOW, Reply, Request, StatusInfo,
};
use nexus_transport::{MuxStream, TransportError};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::unix::UCred;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};
use zeroize::{Zeroize, Zeroizing};

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
        let Some(cred) = crate::trust::trusted_peer(&conn) else {
            warn!("shim.sock connection from another user refused");
            continue;
        };
        next += 1;
        let (shared, stop, gate, id) = (shared.clone(), shutdown.clone(), gate.clone(), next);
        tasks.spawn(async move {
            let span = info_span!("local", id, pid = cred.pid(), uid = cred.uid());
            handle(conn, cred, &shared, &stop, &gate)
                .instrument(span)
                .await;
        });
    }
}

/// What the kernel says about the peer (`cred`, from `SO_PEERCRED`);
/// `/proc` adds exe and cwd on Linux.
pub(crate) fn caller_context(cred: UCred) -> CallerContext {
    let mut ctx = CallerContext {
        uid: Some(cred.uid()),
        gid: Some(cred.gid()),
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
        ..CallerContext::default()
    };
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
    cred: UCred,
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
    let into = matches!(req.op, LocalOp::ForwardInto(_));
    match req.op {
        LocalOp::Status => {
            let _ = nexus_transport::send(&mut conn, &LocalReply::Status(status(shared))).await;
        }
        LocalOp::PairingUri { rotate } => {
            let reply = pairing(shared, rotate);
            let _ = nexus_transport::send(&mut conn, &reply).await;
        }
        LocalOp::Forward(Request::Http(_) | Request::GitHttp(_)) => {
            let reply = Reply::error(
                ErrorCode::BadRequest,
                "HTTP requests go to $NEXUS_HTTP_URL (see `nexus-shim env`), not shim.sock",
            );
            let _ = nexus_transport::send(&mut conn, &LocalReply::Reply(reply)).await;
        }
        LocalOp::ForwardInto(request)
            if !matches!(request, Request::FileGet { .. } | Request::FileSync { .. }) =>
        {
            let reply = Reply::error(
                ErrorCode::BadRequest,
                "only file get and file sync write into the caller's files",
            );
            let _ = nexus_transport::send(&mut conn, &LocalReply::Reply(reply)).await;
        }
        LocalOp::Forward(request) | LocalOp::ForwardInto(request) => {
            // Only a forwarded call needs who is calling (read from /proc,
            // the dearest part of the local hop): not `status` or `pairing-uri`.
            let caller = caller_context(cred);
            let wait = Duration::from_millis(req.wait_ms).min(MAX_WAIT);
            let Ok(_permit) = gate.acquire().await else {
                return;
            };
            forward(&mut conn, caller, request, wait, shared, shutdown, into).await;
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
    into: bool,
) {
    let tool = request.tool();
    let (mut reader, mut writer) = conn.split();
    let closing = || {
        Err(Reply::error(
            ErrorCode::Internal,
            "the nexus-shim daemon is shutting down; retry when it is back",
        ))
    };
    let hung_up_abandoned = || debug!(tool, "the caller hung up; call abandoned");
    // A brokered git connection's caller keeps writing (git's side of the
    // protocol, as `Upload` frames): relayed to the laptop, not taken for
    // a hang-up.
    let result = if matches!(request, Request::GitSsh { .. }) {
        tokio::select! {
            r = call_laptop(&mut writer, caller, request, wait, shared, Upstream::Upload(&mut reader)) => r,
            () = shutdown.cancelled() => closing(),
        }
    } else if into {
        // The caller's only bytes are descriptors, when asked for.
        let files = crate::sink::Caller::new(reader.as_ref());
        tokio::select! {
            r = call_laptop(&mut writer, caller, request, wait, shared, Upstream::Files(&files)) => r,
            () = files.hung_up() => return hung_up_abandoned(),
            () = shutdown.cancelled() => closing(),
        }
    } else {
        tokio::select! {
            r = call_laptop(&mut writer, caller, request, wait, shared, Upstream::Nothing) => r,
            () = hung_up(&mut reader) => return hung_up_abandoned(),
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

/// The error of a call whose link died before its answer: `retried` when
/// it was a read sent again on the next link, and that died too or never
/// came; `part` when part of its answer had reached the caller (a read is
/// sent again only when none had).
pub(crate) fn lost(call: &Call, part: bool) -> Reply {
    let message = if part && call.key.is_some() {
        "the link to the laptop dropped during the call, after part of its answer had arrived; \
         it was not sent again (a read is, only when none of its answer had arrived)"
    } else if call.key.is_some_and(|k| k.retry) {
        "the link to the laptop dropped during the call, and it was not answered on the next link \
         either (none came within --wait, or it dropped too)"
    } else if call.request.is_retryable() {
        "the link to the laptop dropped during the call; no new link came within --wait to send it again"
    } else {
        "the link to the laptop dropped during the call; it was not retried (it may have effects \
         on the laptop or beyond: check before running it again)"
    };
    Reply::error(ErrorCode::Internal, message)
}

/// A call as it goes to the laptop: a read that may be sent again carries
/// a fresh key (see [`Request::is_retryable`]).
pub(crate) fn new_call(caller: CallerContext, request: Request) -> Call {
    let key = request.is_retryable().then(|| CallKey {
        id: rand::random(),
        retry: false,
        later: false,
    });
    Call {
        caller,
        request,
        key,
        received: Vec::new(),
    }
}

/// For a read whose link died before any of its answer reached its caller,
/// the next link, with the call marked as its second and last attempt. It
/// must come within the caller's `wait` and the laptop's [`RETRY_WINDOW`];
/// `None` when the call is not to be sent again.
pub(crate) async fn retry_link(
    shared: &Shared,
    old: &Arc<Link>,
    call: &mut Call,
    wait: Duration,
    first_sent: Instant,
) -> Option<Arc<Link>> {
    let key = call.key.as_mut().filter(|k| !k.retry)?;
    key.retry = true;
    let left = RETRY_WINDOW.saturating_sub(first_sent.elapsed()).min(wait);
    let mut rx = shared.link.subscribe();
    let next = tokio::time::timeout(
        left,
        rx.wait_for(|l| {
            l.as_ref()
                .is_some_and(|l| !Arc::ptr_eq(l, old) && !l.mux.is_closed())
        }),
    )
    .await
    .ok()?
    .ok()?
    .clone()?;
    info!(
        tool = call.request.tool(),
        "the link dropped before the laptop answered this read; sending it again on the new link"
    );
    Some(next)
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

/// Opens a stream and sends the call, with the confirmations of answers
/// read since the last call; the request rides with the SYN. A call that
/// [closes with its request](Link::closes_with_request) sends nothing
/// more: our side of its stream closes in the same write, and its answer
/// is confirmed with a later call.
async fn open_call(link: &Link, call: &mut Call) -> Result<MuxStream, TransportError> {
    let mut stream = link.mux.open().await?;
    // Chosen per attempt: a retry may go to another laptop build.
    let one_reply = link.closes_with_request(&call.request);
    if let Some(key) = call.key.as_mut() {
        key.later = one_reply;
    }
    call.received = link.take_received();
    let sent = nexus_transport::send(&mut stream, &*call).await;
    call.received.clear();
    sent?;
    if one_reply {
        stream
            .shutdown()
            .await
            .map_err(|source| TransportError::Io {
                context: "closing a call's request".into(),
                source,
            })?;
    }
    Ok(stream)
}

/// One call on a live link, answered by one final reply.
async fn call_once(link: &Link, call: &mut Call) -> Result<Reply, TransportError> {
    let mut stream = open_call(link, call).await?;
    let reply = nexus_transport::recv(&mut stream, MAX_FRAME).await?;
    ended(link, &mut stream, call).await;
    Ok(reply)
}

/// After a call's final reply was read: one that closed its side at
/// [`open_call`] is confirmed with the next call (if keyed); another is
/// confirmed and closed now.
async fn ended(link: &Link, stream: &mut MuxStream, call: &Call) {
    if link.closes_with_request(&call.request) {
        link.answered(call);
    } else {
        received(stream, call).await;
    }
}

/// Closes our side of a call's stream once its final reply is read (a
/// streamed call, or any call to a laptop that confirms nothing later),
/// telling the laptop first, for a keyed call, that the answer arrived.
pub(crate) async fn received(stream: &mut (impl AsyncWrite + Unpin), call: &Call) {
    if call.key.is_some() {
        let _ = stream.write_all(&[ANSWER_RECEIVED]).await;
    }
    let _ = stream.shutdown().await;
}

fn no_answer(limit: Duration) -> Reply {
    Reply::error(
        ErrorCode::Internal,
        format!("the laptop did not answer within {}s", limit.as_secs()),
    )
}

/// Waits for the link (up to `wait`), then makes one call (a read again on
/// the next link if its link dies first); failures come back as error
/// replies.
pub(crate) async fn request(
    shared: &Shared,
    caller: CallerContext,
    request: Request,
    wait: Duration,
) -> Reply {
    let Some(mut link) = wait_for_link(shared, wait).await else {
        return not_linked(wait);
    };
    let mut call = new_call(caller, request);
    let first_sent = Instant::now();
    loop {
        match tokio::time::timeout(CALL_TIMEOUT, call_once(&link, &mut call)).await {
            Ok(Ok(reply)) => return reply,
            Ok(Err(_)) => match retry_link(shared, &link, &mut call, wait, first_sent).await {
                Some(next) => link = next,
                None => return lost(&call, false),
            },
            Err(_) => return no_answer(CALL_TIMEOUT),
        }
    }
}

/// What the caller sends after its request.
enum Upstream<'u, 'c, 'a> {
    /// Nothing (its end is a hang-up).
    Nothing,
    /// Bytes (already `Upload` frames, which the laptop decodes) copied to
    /// the laptop as they come: brokered git.
    Upload(&'u mut (dyn tokio::io::AsyncRead + Unpin + Send)),
    /// The descriptors of the files it asked for (`ForwardInto`).
    Files(&'c crate::sink::Caller<'a>),
}

/// Relays one call. `Err` carries the reply to send when the laptop could not
/// answer; relayed replies are written as they arrive (file data into the
/// caller's descriptors with [`Upstream::Files`]).
async fn call_laptop(
    conn: &mut (impl tokio::io::AsyncWrite + Unpin),
    caller: CallerContext,
    request: Request,
    wait: Duration,
    shared: &Shared,
    mut upstream: Upstream<'_, '_, '_>,
) -> Result<(), Reply> {
    let Some(mut link) = wait_for_link(shared, wait).await else {
        return Err(not_linked(wait));
    };
    // A streamed answer (tool output, file data) lasts as long as the laptop
    // lets it (tool timeouts are enforced there); others get CALL_TIMEOUT.
    let limit = if request.is_streaming() {
        MAX_WAIT
    } else {
        CALL_TIMEOUT
    };
    let mut call = new_call(caller, request);
    let first_sent = Instant::now();
    loop {
        match tokio::time::timeout(limit, relay(&link, &mut call, conn, &mut upstream)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(Failed::Lost { part })) => {
                let next = if part {
                    None
                } else {
                    retry_link(shared, &link, &mut call, wait, first_sent).await
                };
                match next {
                    Some(next) => link = next,
                    None => return Err(lost(&call, part)),
                }
            }
            Ok(Err(Failed::Reply(reply))) => return Err(reply),
            Err(_) => return Err(no_answer(limit)),
        }
    }
}

/// Why an attempt at a call ended without its answer relayed.
enum Failed {
    /// The link died under it; `part`: after part of the answer had
    /// reached the caller.
    Lost {
        /// Whether part of the answer had been written to the caller.
        part: bool,
    },
    /// An error for the caller.
    Reply(Reply),
}

/// One attempt at a call on `link`, its replies written to the caller as
/// they arrive. With `upload` (brokered git, whose caller keeps writing),
/// the caller's bytes go up the stream while the answers come down.
async fn relay(
    link: &Link,
    call: &mut Call,
    conn: &mut (impl tokio::io::AsyncWrite + Unpin),
    upstream: &mut Upstream<'_, '_, '_>,
) -> Result<(), Failed> {
    let mut stream = open_call(link, call)
        .await
        .map_err(|_| Failed::Lost { part: false })?;
    let (files, from) = match upstream {
        Upstream::Nothing => (None, None),
        Upstream::Files(caller) => (Some(crate::sink::Files::new(caller)), None),
        Upstream::Upload(from) => (None, Some(&mut **from)),
    };
    let Some(from) = from else {
        if answers(&mut stream, conn, files).await? {
            ended(link, &mut stream, call).await;
        }
        return Ok(());
    };
    let (mut down, mut up) = tokio::io::split(stream);
    let uploading = async {
        let _ = tokio::io::copy(from, &mut up).await;
        let _ = up.shutdown().await;
        std::future::pending::<()>().await
    };
    let done = tokio::select! {
        r = answers(&mut down, conn, None) => r?,
        () = uploading => false,
    };
    // Only a call that ended with its final reply closes its stream
    // cleanly; dropping it otherwise resets it on the laptop.
    if done {
        let _ = up.shutdown().await;
    }
    Ok(())
}

/// Relays a call's replies to its caller: `true` once the final one is
/// written, `false` when the caller went away first.
async fn answers(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    conn: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut files: Option<crate::sink::Files<'_, '_>>,
) -> Result<bool, Failed> {
    let mut part = false;
    // One buffer for every frame of the answer (bulk answers are many
    // frames of up to 256 KiB); wiped after any frame that is not bulk
    // data, and when dropped.
    let mut body = Zeroizing::new(Vec::new());
    loop {
        let bad = |e: &dyn std::fmt::Display| {
            Failed::Reply(Reply::error(
                ErrorCode::Internal,
                format!("bad answer from the laptop: {e}"),
            ))
        };
        match nexus_transport::recv_body_into(stream, MAX_FRAME, &mut body).await {
            Ok(()) => {}
            // A stream that ends inside a frame ended with its link too.
            Err(
                TransportError::Closed
                | TransportError::Io { .. }
                | TransportError::Frame(FrameError::Truncated { .. } | FrameError::Io(_)),
            ) => return Err(Failed::Lost { part }),
            Err(e) => return Err(bad(&e)),
        }
        // With `ForwardInto`, file data goes into the caller's file, and
        // only there.
        if let Some(files) = files.as_mut() {
            match nexus_protocol::chunk_data(&body) {
                Some((nexus_protocol::Channel::Data, at)) => {
                    part = true;
                    if let Err(ended) = files.write(&mut body, at).await {
                        let _ = nexus_transport::send(conn, &ended).await;
                        return Ok(false);
                    }
                    continue;
                }
                Some(_) => {}
                None if nexus_protocol::chunk_local_prefix(&body, MAX_FRAME).is_some() => {
                    return Err(bad(&"a chunk whose data cannot be found"));
                }
                None => {}
            }
        }
        // Bulk data (file contents, tool output) passes through as it
        // came: not decoded, re-encoded, copied or wiped here (the caller
        // decodes it in full).
        if let Some(prefix) = nexus_protocol::chunk_local_prefix(&body, MAX_FRAME) {
            part = true;
            let mut frame = prefix.as_slice().chain(body.as_slice());
            if conn.write_all_buf(&mut frame).await.is_err() {
                return Ok(false);
            }
            continue;
        }
        let decoded = nexus_protocol::decode::<Reply>(&body);
        body.zeroize();
        let reply = match decoded {
            Ok(r) => r,
            Err(e) => return Err(bad(&e)),
        };
        let last = reply.is_final();
        part = true;
        let starts = match &reply {
            Reply::FileStart { size, .. } => Some(*size),
            _ => None,
        };
        if let Some(files) = files.as_mut()
            && (last || starts.is_some())
        {
            // The file before is whole (or failed): say so first.
            if let Some(w) = files.close().await {
                let failed = matches!(&w, LocalReply::Written { error: Some(_), .. });
                if nexus_transport::send(conn, &w).await.is_err() || failed {
                    return Ok(false);
                }
            }
            if starts.is_some() {
                files.expect_descriptor();
            }
        }
        let sent = nexus_transport::send(conn, &LocalReply::Reply(reply)).await;
        if sent.is_err() {
            // The caller went away; dropping the stream resets it on the laptop.
            return Ok(false);
        }
        if let (Some(files), Some(size)) = (files.as_mut(), starts)
            && files.open(size).await.is_err()
        {
            return Ok(false);
        }
        if last {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_protocol::Channel;

    /// A laptop stream that ends, cleanly or inside a frame, is a lost
    /// link; whether part of the answer had reached the caller decides if
    /// the read may be sent again.
    #[tokio::test]
    async fn a_stream_that_ends_is_lost_with_or_without_part_of_its_answer() {
        let (laptop, mut stream) = tokio::io::duplex(1 << 16);
        drop(laptop);
        let mut caller = Vec::new();
        let ended = answers(&mut stream, &mut caller, None).await;
        assert!(matches!(ended, Err(Failed::Lost { part: false })));
        assert!(caller.is_empty());

        let (mut laptop, mut stream) = tokio::io::duplex(1 << 16);
        let chunk = Reply::Chunk {
            channel: Channel::Data,
            data: b"part".to_vec(),
        };
        nexus_transport::send(&mut laptop, &chunk)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // The next frame's header, cut short.
        laptop
            .write_all(&[0, 0])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(laptop);
        let ended = answers(&mut stream, &mut caller, None).await;
        assert!(matches!(ended, Err(Failed::Lost { part: true })));
        assert!(!caller.is_empty());
    }
}
