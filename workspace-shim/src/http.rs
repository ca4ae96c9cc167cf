//! `$NEXUS_HTTP_URL`: plain HTTP on workspace loopback for HTTP secret
//! injection. `$NEXUS_HTTP_URL/NAME/rest` is forwarded to the laptop, which
//! sends it to the upstream its policy declares for `NAME` with the real key
//! added; the workspace only ever holds a placeholder.
//!
//! This is a base URL, not a forward proxy: absolute-form requests and
//! `CONNECT` are refused, and nothing here names a host. The URL carries a
//! random capability (`/KEY/`, kept in the 0700 state dir), requests must
//! say `Host: 127.0.0.1` / `localhost` (no DNS rebinding from a browser),
//! and on Linux only the daemon's own uid (or root) may call, as with the
//! 0600 sockets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request as HttpReq, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nexus_protocol::{
    Call, CallerContext, ErrorCode, HOP_BY_HOP, HttpHeader, HttpRequest, MAX_FRAME, Reply, Request,
    Upload,
};
use nexus_transport::MuxStream;
use rand::RngCore;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};
use zeroize::Zeroizing;

use crate::serve::Shared;
use crate::state::StateDir;

/// Response body type: upstream data streamed from the laptop, or a short
/// local answer.
pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// Request body bytes per upload frame (the laptop takes body frames of up
/// to `MAX_CHUNK`, whatever its call-frame limit).
const UPLOAD_CHUNK: usize = 64 << 10;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The capability in `$NEXUS_HTTP_URL`'s path: read from the state dir, or
/// created there (32 hex characters, 128 bits).
///
/// # Errors
/// The file could not be read or written.
pub fn load_or_create_key(state: &StateDir) -> anyhow::Result<String> {
    let path = state.http_key();
    if let Ok(text) = std::fs::read_to_string(&path) {
        let key = text.trim();
        if key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(key.to_ascii_lowercase());
        }
        warn!(file = %path.display(), "http.key is malformed; creating a new one");
    }
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let key = hex::encode(raw);
    nexus_transport::write_private(&path, key.as_bytes())?;
    Ok(key)
}

/// Binds `$NEXUS_HTTP_URL`'s listener for `serve --http-listen ADDR`
/// (`none`: no endpoint) and returns it with the URL's key.
///
/// With port 0 the port chosen at first start is kept in the state dir and
/// asked for again at every later start, because agents' config files hold
/// the URL literally: if another program took it meanwhile, starting fails
/// naming the port, rather than moving the URL silently.
///
/// # Errors
/// A bad address, the address or the kept port taken, the state dir
/// unwritable.
pub async fn bind(state: &StateDir, listen: &str) -> anyhow::Result<Option<(TcpListener, String)>> {
    use anyhow::Context as _;
    if listen == "none" {
        return Ok(None);
    }
    let mut addr: SocketAddr = crate::serve::numeric_addr("--http-listen", listen)?;
    let requested = addr.port();
    let kept = if requested == 0 {
        read_kept_port(state)
    } else {
        None
    };
    if let Some(port) = kept {
        addr.set_port(port);
    }
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if kept.is_some() && e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "HTTP port {} is taken by another program, but $NEXUS_HTTP_URL keeps the port chosen at \
             first start (agents' configs hold it): stop that program, or pick a port with \
             --http-listen 127.0.0.1:PORT (and update configs holding the old URL)",
            addr.port()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("binding the HTTP endpoint on {addr} (--http-listen)"));
        }
    };
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        warn!(%bound, "--http-listen is not a loopback address: other hosts can reach it (its URL's key still applies)");
    }
    if requested == 0 && kept.is_none() {
        nexus_transport::write_private(
            &state.http_port(),
            format!("{}\n", bound.port()).as_bytes(),
        )?;
    }
    Ok(Some((listener, load_or_create_key(state)?)))
}

fn read_kept_port(state: &StateDir) -> Option<u16> {
    let text = std::fs::read_to_string(state.http_port()).ok()?;
    text.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

/// The base URL agents use: loopback, whatever address was bound.
#[must_use]
pub fn base_url(bound: SocketAddr, key: &str) -> String {
    let host = match bound.ip() {
        std::net::IpAddr::V6(ip) if !ip.is_unspecified() => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => ip.to_string(),
        std::net::IpAddr::V6(_) => "[::1]".to_owned(),
        std::net::IpAddr::V4(_) => "127.0.0.1".to_owned(),
    };
    format!("http://{host}:{}/{key}", bound.port())
}

/// What every request handler needs.
#[derive(Debug)]
pub(crate) struct Ctx {
    shared: Arc<Shared>,
    key: String,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// Serves `$NEXUS_HTTP_URL` until `shutdown`.
pub async fn serve_http(
    listener: TcpListener,
    key: String,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        shared,
        key,
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
    });
    let mut next = 0u64;
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { crate::serve::accept_failed(&e).await; continue; }
            },
        };
        next += 1;
        let local = tcp.local_addr().ok();
        let caller = peer_context(peer, local);
        let span = info_span!("http", conn = next, uid = caller.uid);
        tasks.spawn(connection(tcp, caller, ctx.clone()).instrument(span));
    }
}

async fn connection(tcp: tokio::net::TcpStream, caller: CallerContext, ctx: Arc<Ctx>) {
    let _ = tcp.set_nodelay(true);
    if caller.uid.is_none() && !uid_allowed(None) {
        warn!(
            "HTTP caller refused: its uid is not in /proc/net/tcp (it closed already, or /proc/net is hidden here)"
        );
        return;
    }
    if !uid_allowed(caller.uid) {
        warn!(
            uid = caller.uid,
            "HTTP caller with another uid refused (only the daemon's uid and root may call)"
        );
        return;
    }
    let shutdown = ctx.shutdown.clone();
    let service = hyper::service::service_fn(move |req| {
        let (ctx, caller) = (ctx.clone(), caller.clone());
        async move { Ok::<_, Infallible>(handle(req, caller, &ctx).await) }
    });
    // HTTP/1.1, and HTTP/2 with prior knowledge (h2c: `curl
    // --http2-prior-knowledge`, httpx with `http1=False`), told apart by
    // the connection preface.
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "HTTP connection ended"); },
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Whether a caller of this uid may use the endpoint: the daemon's own, or
/// root (as the 0600 sockets allow). Unknown: on Linux no (the socket table
/// always names a live caller, so an unknown one is a caller that already
/// closed, or one the lookup cannot see); elsewhere yes, the capability in
/// the URL still applies.
fn uid_allowed(uid: Option<u32>) -> bool {
    match uid {
        Some(u) => u == 0 || u == crate::trust::me(),
        None => !cfg!(target_os = "linux"),
    }
}

/// A local answer in the JSON error shape OpenAI- and Anthropic-style SDKs
/// print, so the agent shows the reason.
fn answer(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": { "message": format!("nexus: {message}"), "type": kind, "code": kind }
    });
    let mut resp = json_response(status, &body);
    resp.headers_mut()
        .insert("x-nexus-error", header::HeaderValue::from_static("1"));
    resp
}

/// A local JSON answer.
fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A local answer for an error reply (anything else is unexpected here).
pub(crate) fn from_reply(reply: Reply) -> Response<Body> {
    match reply {
        Reply::Error(e) => {
            debug!(code = ?e.code, "HTTP request refused");
            match e.retry_after_ms {
                Some(ms) if e.code == ErrorCode::Denied => rate_limited(&e.message, ms),
                _ => from_error(e.code, &e.message),
            }
        }
        other => {
            warn!(reply = ?other, "unexpected reply");
            from_error(ErrorCode::Internal, "unexpected answer from the laptop")
        }
    }
}

fn from_error(code: ErrorCode, message: &str) -> Response<Body> {
    let (status, kind) = match code {
        ErrorCode::Denied => (StatusCode::FORBIDDEN, "nexus_denied"),
        ErrorCode::NotConnected => (StatusCode::SERVICE_UNAVAILABLE, "nexus_not_connected"),
        ErrorCode::Missing => (StatusCode::BAD_GATEWAY, "nexus_missing"),
        ErrorCode::BadRequest => (StatusCode::BAD_REQUEST, "nexus_bad_request"),
        ErrorCode::Internal => (StatusCode::BAD_GATEWAY, "nexus_upstream_error"),
    };
    answer(status, kind, message)
}

/// 429 with `Retry-After` (whole seconds, rounded up), which the OpenAI and
/// Anthropic SDKs wait for and retry, where a 403 would fail at once.
fn rate_limited(message: &str, retry_after_ms: u64) -> Response<Body> {
    let mut response = answer(StatusCode::TOO_MANY_REQUESTS, "nexus_rate_limited", message);
    let secs = retry_after_ms.div_ceil(1000).max(1);
    if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// Whether `Host` names loopback (any port), or is absent.
fn loopback_host(req: &HttpReq<Incoming>) -> bool {
    let Some(host) = req.headers().get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    loopback_name(name)
}

/// `127.0.0.1`, `localhost` or `::1` (brackets allowed), any case.
fn loopback_name(name: &str) -> bool {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    matches!(
        name.to_ascii_lowercase().as_str(),
        "127.0.0.1" | "localhost" | "::1"
    )
}

/// Compares the capability without an early exit.
fn key_matches(given: &str, key: &str) -> bool {
    given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn valid_api_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

async fn handle(req: HttpReq<Incoming>, caller: CallerContext, ctx: &Ctx) -> Response<Body> {
    // HTTP/2 always carries :scheme and :authority in the URI; there they
    // must name plain http on loopback, as `Host` must for HTTP/1.1.
    let foreign = if req.version() == hyper::Version::HTTP_2 {
        req.uri().scheme_str().is_some_and(|s| s != "http")
            || req
                .uri()
                .authority()
                .is_some_and(|a| !loopback_name(a.host()))
    } else {
        req.uri().scheme().is_some() || req.uri().authority().is_some()
    };
    if foreign {
        return answer(
            StatusCode::BAD_REQUEST,
            "nexus_bad_request",
            "this is not a forward proxy: use $NEXUS_HTTP_URL/NAME as a base URL",
        );
    }
    if req.method() == hyper::Method::CONNECT {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "nexus_bad_request",
            "CONNECT is not supported: use $NEXUS_HTTP_URL/NAME as a base URL",
        );
    }
    if req.version() < hyper::Version::HTTP_11 {
        // Without chunked framing, a body of unknown length ends at the
        // close: one the laptop had to break off would look complete.
        return answer(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "nexus_bad_request",
            "HTTP/1.0 cannot tell a broken-off answer from a complete one: use HTTP/1.1",
        );
    }
    if !loopback_host(&req) {
        return answer(
            StatusCode::FORBIDDEN,
            "nexus_denied",
            "the Host header must name 127.0.0.1, localhost or [::1]",
        );
    }
    let path = req.uri().path();
    let mut parts = path.strip_prefix('/').unwrap_or(path).splitn(2, '/');
    let given = parts.next().unwrap_or_default();
    if !key_matches(given, &ctx.key) {
        return answer(
            StatusCode::NOT_FOUND,
            "nexus_not_found",
            "no such endpoint; use the URL in $NEXUS_HTTP_URL (from `nexus-shim env`)",
        );
    }
    let after = parts.next().unwrap_or_default();
    if let Some(rest) = after
        .strip_prefix(nexus_protocol::GIT_HTTP_PREFIX)
        .and_then(|r| r.strip_prefix('/'))
    {
        let rest = rest.to_owned();
        return crate::git_http::handle(req, &rest, caller, ctx).await;
    }
    let (name, rest) = match after.split_once('/') {
        Some((n, r)) => (n, format!("/{r}")),
        None => (after, String::new()),
    };
    if after.is_empty() {
        return list(&caller, ctx).await;
    }
    if !valid_api_name(name) {
        return answer(
            StatusCode::NOT_FOUND,
            "nexus_not_found",
            "no such API name; see `nexus-shim http list`",
        );
    }
    let path = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    let request = relayed(&req, name, path);
    debug!(api = %request.name, method = %request.method, "HTTP request");
    let ends = Ends {
        fail: from_reply,
        drain: false,
    };
    forward(Request::Http(request), req.into_body(), caller, ctx, ends).await
}

/// The request as the laptop gets it: `name`, `path`, and the headers
/// that are not this hop's.
pub(crate) fn relayed(req: &HttpReq<Incoming>, name: &str, path: String) -> HttpRequest {
    let listed = nexus_protocol::connection_listed(
        req.headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes())),
    );
    let headers = req
        .headers()
        .iter()
        .filter(|(n, _)| {
            !HOP_BY_HOP.contains(&n.as_str())
                && *n != header::CONTENT_LENGTH
                && !listed.iter().any(|l| l == n.as_str())
        })
        .map(|(n, v)| HttpHeader {
            name: n.as_str().to_owned(),
            value: v.as_bytes().to_vec(),
        })
        .collect();
    HttpRequest {
        name: name.to_owned(),
        method: req.method().as_str().to_owned(),
        path,
        headers,
        body_len: hyper::body::Body::size_hint(req.body()).exact(),
    }
}

/// How [`forward`] ends what the laptop does not answer itself.
pub(crate) struct Ends {
    /// The local answer for an error reply.
    pub fail: fn(Reply) -> Response<Body>,
    /// Whether a request body the laptop stopped reading (a push it
    /// refused) is still read to its end here, so that the client, still
    /// sending, gets to read the answer instead of a reset.
    pub drain: bool,
}

/// `GET $NEXUS_HTTP_URL/`: the APIs this workspace may call, as JSON.
async fn list(caller: &CallerContext, ctx: &Ctx) -> Response<Body> {
    let reply = crate::sockets::request(
        &ctx.shared,
        caller.clone(),
        Request::HttpList,
        ctx.shared.agent_wait,
    )
    .await;
    match reply {
        Reply::HttpApis(apis) => {
            let body = serde_json::json!({ "apis": apis.iter().map(|a| serde_json::json!({
                "name": a.name, "description": a.description, "upstream": a.upstream,
                "methods": a.methods, "paths": a.paths, "approve": a.approve,
            })).collect::<Vec<_>>() });
            json_response(StatusCode::OK, &body)
        }
        other => from_reply(other),
    }
}

/// Sends `request` (an [`Request::Http`] or [`Request::GitHttp`]) with
/// `body` to the laptop and streams its answer back. A `GET` or `HEAD`
/// without a body whose link dies before the response's head arrived (so
/// before any byte of it reached the client) is sent once more on the next
/// link, within the wait; other requests are not, since they may have
/// effects.
pub(crate) async fn forward(
    request: Request,
    body: Incoming,
    caller: CallerContext,
    ctx: &Ctx,
    ends: Ends,
) -> Response<Body> {
    let fail = ends.fail;
    let wait = ctx.shared.agent_wait;
    let Some(mut link) = crate::sockets::wait_for_link(&ctx.shared, wait).await else {
        return fail(crate::sockets::not_linked(wait));
    };
    // Without a body, the call and the body's end go in one write: one
    // piece on the link instead of two.
    let bodyless =
        matches!(&request, Request::Http(r) | Request::GitHttp(r) if r.body_len == Some(0));
    let mut body = (!bodyless).then_some(body);
    let mut call = crate::sockets::new_call(caller, request);
    let first_sent = std::time::Instant::now();
    loop {
        if let Some(response) = attempt(&link, &mut call, body.take(), ctx, &ends).await {
            return response;
        }
        match crate::sockets::retry_link(&ctx.shared, &link, &mut call, wait, first_sent).await {
            Some(next) => link = next,
            None => return fail(crate::sockets::lost(&call, false)),
        }
    }
}

/// One attempt at `call` on `link`: the response, or `None` when the link
/// died before the response's head came.
async fn attempt(
    link: &crate::serve::Link,
    call: &mut Call,
    body: Option<Incoming>,
    ctx: &Ctx,
    ends: &Ends,
) -> Option<Response<Body>> {
    let fail = ends.fail;
    let mut stream = link.mux.open().await.ok()?;
    // With the confirmations of answers read since the last call.
    call.received = link.take_received();
    let mut frames = zeroize::Zeroizing::new(nexus_protocol::encode_frame(&*call));
    call.received.clear();
    if body.is_none() {
        frames.extend_from_slice(&nexus_protocol::encode_frame(&Upload::End));
    }
    if stream.write_all(&frames).await.is_err() || stream.flush().await.is_err() {
        return None;
    }
    drop(frames);
    let (mut rx, tx) = tokio::io::split(stream);
    // The write half is held until the exchange is over (dropping the last
    // half resets the stream: the laptop stops): by the upload while it
    // sends a body, else by the response, which confirms a keyed answer.
    let done = CancellationToken::new();
    let mut held = None;
    match body {
        Some(body) => {
            let sending = Sending {
                done: done.clone(),
                shutdown: ctx.shutdown.clone(),
                drain: ends.drain,
            };
            ctx.tasks.spawn(upload(body, tx, sending).in_current_span());
        }
        None => held = Some(tx),
    }
    let guard = done.drop_guard();
    let first = tokio::select! {
        r = nexus_transport::recv::<_, Reply>(&mut rx, MAX_FRAME) => r,
        () = ctx.shutdown.cancelled() => {
            return Some(fail(Reply::error(ErrorCode::Internal, "the nexus-shim daemon is shutting down; retry when it is back")));
        }
    };
    match first {
        Ok(Reply::HttpHead { status, headers }) => {
            let Ok(status) = StatusCode::from_u16(status) else {
                return Some(fail(Reply::error(
                    ErrorCode::Internal,
                    "the upstream sent an invalid status",
                )));
            };
            let confirm = held.filter(|_| call.key.is_some()).map(|tx| Confirm {
                tx,
                call: call.clone(),
                left: content_length(&headers),
                shutdown: ctx.shutdown.clone(),
            });
            // hyper never reads the body of an answer that has none: its
            // end is read here, to confirm it.
            let bodiless = matches!(&call.request, Request::Http(r) if r.method == "HEAD")
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED;
            let body = match confirm {
                Some(mut confirm) if bodiless => {
                    confirm.at_done(&mut rx).await;
                    Full::new(Bytes::new())
                        .map_err(|never| match never {})
                        .boxed()
                }
                confirm => relay(rx, confirm, guard, ctx.shutdown.clone()),
            };
            let mut resp = Response::new(body);
            *resp.status_mut() = status;
            for h in headers {
                if HOP_BY_HOP.contains(&h.name.as_str()) {
                    continue;
                }
                if let (Ok(n), Ok(v)) = (
                    header::HeaderName::from_bytes(h.name.as_bytes()),
                    header::HeaderValue::from_bytes(&h.value),
                ) {
                    resp.headers_mut().append(n, v);
                }
            }
            info!(status = status.as_u16(), "HTTP response streaming");
            Some(resp)
        }
        Ok(other) => {
            if let Some(tx) = held.as_mut() {
                crate::sockets::received(tx, call).await;
            }
            Some(fail(other))
        }
        Err(_) => None,
    }
}

/// How an upload ends.
struct Sending {
    /// The exchange is over (the answer ended or was dropped).
    done: CancellationToken,
    shutdown: CancellationToken,
    /// See [`Ends::drain`].
    drain: bool,
}

/// Sends the request body up as [`Upload`] frames, then holds the write
/// half until the exchange is `done`.
async fn upload(mut body: Incoming, mut tx: WriteHalf<MuxStream>, s: Sending) {
    if !send_body(&mut body, &mut tx, &s).await {
        drop(tx);
        if s.drain {
            drain(body, &s.shutdown).await;
        }
        return;
    }
    tokio::select! {
        () = s.done.cancelled() => {}
        () = s.shutdown.cancelled() => {}
    }
}

/// Reads what the client still sends, and drops it.
async fn drain(mut body: Incoming, shutdown: &CancellationToken) {
    loop {
        tokio::select! {
            f = body.frame() => if !matches!(f, Some(Ok(_))) { return },
            () = shutdown.cancelled() => return,
        }
    }
}

/// Sends the body and its end; false when it broke off.
async fn send_body(body: &mut Incoming, tx: &mut WriteHalf<MuxStream>, s: &Sending) -> bool {
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            () = s.done.cancelled() => return false,
            () = s.shutdown.cancelled() => return false,
        };
        match frame {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers: not forwarded
                };
                for piece in data.chunks(UPLOAD_CHUNK) {
                    let sent = nexus_transport::send_data(tx, &Upload::Data(piece.to_vec())).await;
                    if sent.is_err() {
                        return false;
                    }
                }
            }
            // The client broke off: dropping the write half (with the
            // response gone too) resets the stream, and the laptop stops.
            Some(Err(e)) => {
                debug!(error = %e, "request body broke off");
                return false;
            }
            None => break,
        }
    }
    nexus_transport::send_data(tx, &Upload::End).await.is_ok()
}

/// What confirms a keyed call's answer to the laptop once it is in.
struct Confirm {
    tx: WriteHalf<MuxStream>,
    call: Call,
    /// Body bytes still to come, by the answer's `Content-Length`.
    left: Option<u64>,
    /// The daemon's: its shutdown does not wait for an answer's end.
    shutdown: CancellationToken,
}

impl Confirm {
    /// Counts `n` body bytes in; whether the body is now whole by its
    /// `Content-Length` (hyper then stops reading it, and never sees the
    /// answer's end).
    fn took(&mut self, n: usize) -> bool {
        self.left = self.left.map(|l| l.saturating_sub(n as u64));
        self.left == Some(0)
    }

    /// Reads the answer's end from `rx` and, if it is one, confirms it.
    async fn at_done(&mut self, rx: &mut ReadHalf<MuxStream>) {
        let end = nexus_transport::recv::<_, Reply>(rx, MAX_FRAME);
        let ended = tokio::select! {
            r = tokio::time::timeout(CONFIRM_WAIT, end) => matches!(r, Ok(Ok(Reply::Done))),
            () = self.shutdown.cancelled() => false,
        };
        if ended {
            crate::sockets::received(&mut self.tx, &self.call).await;
        }
    }
}

/// How long the end of an answer whose body is already in may take to come.
const CONFIRM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// An answer's `Content-Length`, if it gave one.
fn content_length(headers: &[HttpHeader]) -> Option<u64> {
    let h = headers.iter().find(|h| h.name == "content-length")?;
    std::str::from_utf8(&h.value).ok()?.trim().parse().ok()
}

/// State of a streamed response body.
struct Relay {
    rx: ReadHalf<MuxStream>,
    /// For a keyed call, to confirm its answer at its end.
    confirm: Option<Confirm>,
    _done: DropGuard,
    shutdown: CancellationToken,
    /// Every frame is read into this one buffer (a fresh one per frame of
    /// up to 256 KiB costs page faults), wiped after any that is not data.
    buf: Zeroizing<Vec<u8>>,
}

/// The response body: the laptop's data chunks until `Done`; an error or a
/// dropped link aborts it (the client sees a broken-off body, never a
/// short one that looks complete).
fn relay(
    rx: ReadHalf<MuxStream>,
    confirm: Option<Confirm>,
    done: DropGuard,
    shutdown: CancellationToken,
) -> Body {
    let state = Some(Relay {
        rx,
        confirm,
        _done: done,
        shutdown,
        buf: Zeroizing::new(Vec::new()),
    });
    let frames = futures::stream::unfold(state, |state| async move {
        let mut s = state?;
        let next = tokio::select! {
            r = nexus_transport::recv_wiping_into(&mut s.rx, MAX_FRAME, &mut s.buf, |r: &Reply| !matches!(r, Reply::Chunk { .. })) => r,
            () = s.shutdown.cancelled() => {
                return Some((Err(std::io::Error::other("nexus-shim is shutting down")), None));
            }
        };
        match next {
            Ok(Reply::Chunk { data, .. }) => {
                let len = data.len();
                let frame = Ok(Frame::data(Bytes::from(data)));
                if s.confirm.as_mut().is_some_and(|c| c.took(len)) {
                    if let Some(c) = s.confirm.as_mut() {
                        c.at_done(&mut s.rx).await;
                    }
                    return Some((frame, None));
                }
                Some((frame, Some(s)))
            }
            Ok(Reply::Done) => {
                if let Some(c) = s.confirm.as_mut() {
                    crate::sockets::received(&mut c.tx, &c.call).await;
                }
                None
            }
            Ok(Reply::Error(e)) => {
                warn!(message = %e.message, "HTTP response broke off");
                Some((Err(std::io::Error::other(e.message)), None))
            }
            Ok(_) => Some((
                Err(std::io::Error::other(
                    "unexpected frame in an HTTP response",
                )),
                None,
            )),
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    });
    StreamBody::new(frames).boxed()
}

/// What is known of a loopback TCP caller: its uid, from the kernel's
/// socket table (Linux); nothing elsewhere.
fn peer_context(peer: SocketAddr, local: Option<SocketAddr>) -> CallerContext {
    CallerContext {
        uid: local.and_then(|l| tcp_peer_uid(peer, l)),
        ..CallerContext::default()
    }
}

#[cfg(target_os = "linux")]
fn tcp_peer_uid(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    fn hex(addr: SocketAddr) -> String {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(ip) => format!("{:08X}", u32::from_ne_bytes(ip.octets())),
            std::net::IpAddr::V6(ip) => ip
                .octets()
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        };
        format!("{ip}:{:04X}", addr.port())
    }
    // An IPv4 caller of a dual-stack listener is listed in the IPv4 table.
    let (peer, local) = match (peer.ip().to_canonical(), local.ip().to_canonical()) {
        (p @ std::net::IpAddr::V4(_), l @ std::net::IpAddr::V4(_)) => (
            SocketAddr::new(p, peer.port()),
            SocketAddr::new(l, local.port()),
        ),
        _ => (peer, local),
    };
    let table = if peer.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    // The caller's socket: its local address is our peer, its remote ours.
    let (want_local, want_remote) = (hex(peer), hex(local));
    // A socket its process already closed (an orphan in FIN_WAIT or
    // TIME_WAIT) is listed with uid 0 and inode 0: it has no owner, and must
    // not pass for root.
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == want_local && f[2] == want_remote && f[9] != "0")
            .then(|| f[7].parse().ok())
            .flatten()
    })
}

#[cfg(not(target_os = "linux"))]
fn tcp_peer_uid(_peer: SocketAddr, _local: SocketAddr) -> Option<u32> {
    None
}

/// One request through `$NEXUS_HTTP_URL` (read from the state dir), for
/// `nexus-shim mcp`: status and body (cut at `max` bytes, with a flag).
///
/// # Errors
/// No daemon serves HTTP, or the exchange broke; a message for the model.
pub(crate) async fn call(
    state: &StateDir,
    name: &str,
    method: &str,
    path: &str,
    body: Option<(String, String)>,
    max: usize,
) -> Result<(u16, Vec<u8>, bool), String> {
    let base = std::fs::read_to_string(state.http_url())
        .map_err(|_| "the nexus-shim daemon serves no HTTP endpoint (it runs with --http-listen none, or not at all)".to_owned())?;
    let base = base.trim();
    let rest = base
        .strip_prefix("http://")
        .ok_or("http.url is malformed")?;
    let (authority, key) = rest.split_once('/').ok_or("http.url is malformed")?;
    if !path.starts_with('/') || path.contains(['\r', '\n', ' ', '#']) {
        return Err("`path` must start with / and hold no spaces or line breaks".to_owned());
    }
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connecting to the daemon's HTTP endpoint: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let uri = format!("/{key}/{name}{path}");
    let mut builder = HttpReq::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, authority);
    let payload = match body {
        Some((content_type, text)) => {
            builder = builder.header(header::CONTENT_TYPE, content_type);
            Bytes::from(text)
        }
        None => Bytes::new(),
    };
    let req = builder
        .body(Full::new(payload))
        .map_err(|e| format!("invalid request: {e}"))?;
    let outcome = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let (mut out, mut cut) = (Vec::new(), false);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the response broke off: {e}"))?;
            if let Ok(data) = frame.into_data() {
                let room = max.saturating_sub(out.len());
                out.extend_from_slice(&data[..data.len().min(room)]);
                if data.len() > room {
                    cut = true;
                    break;
                }
            }
        }
        Ok((status, out, cut))
    }
    .await;
    driver.abort();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `$NEXUS_HTTP_URL` survives a restart: the port chosen at first start
    /// is asked for again, and when another program holds it the daemon
    /// says so, naming the port and `--http-listen`, instead of moving.
    #[tokio::test]
    async fn the_http_port_is_kept_across_restarts() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let state = StateDir::resolve(Some(tmp.path().join("s")))?;
        state.prepare()?;
        let first = bind(&state, "127.0.0.1:0")
            .await?
            .map(|(l, k)| (l.local_addr(), k));
        let Some((Ok(addr), key)) = first else {
            anyhow::bail!("no listener");
        };
        let again = bind(&state, "127.0.0.1:0").await?;
        let Some((listener, key2)) = again else {
            anyhow::bail!("no listener");
        };
        assert_eq!((listener.local_addr()?, key2), (addr, key));
        let taken = bind(&state, "127.0.0.1:0")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        let Err(msg) = taken else {
            anyhow::bail!("a taken port was not reported");
        };
        assert!(
            msg.contains(&addr.port().to_string()) && msg.contains("--http-listen"),
            "{msg}"
        );
        assert!(bind(&state, "none").await?.is_none());
        Ok(())
    }

    #[test]
    fn urls_name_loopback() {
        let key = "0".repeat(32);
        assert_eq!(
            base_url("0.0.0.0:80".parse().unwrap_or_else(|e| panic!("{e}")), &key),
            format!("http://127.0.0.1:80/{key}")
        );
        assert_eq!(
            base_url("[::1]:9".parse().unwrap_or_else(|e| panic!("{e}")), &key),
            format!("http://[::1]:9/{key}")
        );
    }

    #[test]
    fn keys_and_names() {
        assert!(key_matches("abc", "abc"));
        assert!(!key_matches("abd", "abc"));
        assert!(!key_matches("ab", "abc"));
        assert!(valid_api_name("openai"));
        assert!(valid_api_name("a.b_c-1"));
        for bad in ["", "..x/", "a b", "a%2f", &"a".repeat(65)] {
            assert!(!valid_api_name(bad), "{bad}");
        }
    }

    /// The kernel's socket table names the uid of a loopback caller.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_loopback_callers_uid_is_found() -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let (server, peer) = listener.accept().await?;
        let uid = tcp_peer_uid(peer, server.local_addr()?);
        assert_eq!(uid, Some(rustix::process::geteuid().as_raw()));
        drop(client);
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod attack_tests {
    use super::*;

    /// A caller that writes its request and closes before the daemon
    /// accepts: its socket is an orphan in FIN_WAIT2, which the kernel's
    /// table lists with uid 0 (a timewait socket has no owner). That must
    /// not pass as root.
    #[tokio::test]
    async fn a_caller_that_closed_before_accept_is_not_root() -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
        std::io::Write::write_all(&mut client, b"GET / HTTP/1.1\r\n\r\n")?;
        let client_addr = client.local_addr()?;
        drop(client);
        // Wait until the kernel moved the orphan to FIN_WAIT2 (state 05) or
        // its timewait form.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (server, peer) = listener.accept().await?;
        assert_eq!(peer, client_addr);
        loop {
            let table = std::fs::read_to_string("/proc/net/tcp")?;
            let gone = table.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 9 && f[3] == "05" && f[9] == "0"
            });
            if gone {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no orphan FIN_WAIT2 socket"
            );
            tokio::task::yield_now().await;
        }
        let uid = tcp_peer_uid(peer, server.local_addr()?);
        assert!(
            !uid_allowed(uid),
            "an ownerless socket passed as uid {uid:?}"
        );
        Ok(())
    }

    /// An IPv4 caller of a dual-stack listener (`--http-listen [::]:PORT`)
    /// is found too, now that an unknown caller is refused.
    #[tokio::test]
    async fn an_ipv4_caller_of_a_dual_stack_listener_is_found() -> anyhow::Result<()> {
        let Ok(listener) = TcpListener::bind("[::]:0").await else {
            return Ok(()); // no IPv6 here
        };
        let port = listener.local_addr()?.port();
        let client = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let (server, peer) = listener.accept().await?;
        let uid = tcp_peer_uid(peer, server.local_addr()?);
        assert_eq!(uid, Some(rustix::process::geteuid().as_raw()));
        drop(client);
        Ok(())
    }

    /// On Linux a caller whose uid cannot be found is refused, not waved
    /// through as "unknown".
    #[test]
    fn an_unknown_uid_is_refused_on_linux() {
        assert!(!uid_allowed(None));
    }
}
