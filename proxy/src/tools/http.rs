//! HTTP secret injection (`[http.NAME]`): the workspace calls
//! `$NEXUS_HTTP_URL/NAME/rest` with a placeholder key; the laptop sends the
//! request to the upstream the policy declares for `NAME`, with the real
//! secret in the header the policy names, and streams the answer back.
//!
//! The workspace never names a host: it names an API, and a path below that
//! API's base. The policy checks the path lexically ([`HttpRule::url_for`]
//! refuses dot segments, encoded separators and anything that could become an
//! authority) and the joined URL's origin is checked again before dialing.
//! Redirects are returned to the workspace, never followed, so a secret is
//! only ever sent to the origin it is bound to. The request body is streamed
//! up to the rule's `max_request_size`; the response streams at the pace the
//! workspace reads it (server-sent events arrive as the upstream sends them).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use futures::channel::mpsc;
use nexus_policy::{Action, Grant, HttpRule, TokenSource};
use nexus_protocol::{
    Channel, ErrorCode, HOP_BY_HOP, HttpApi, HttpHeader, HttpRequest, MAX_CHUNK, Reply, Secret,
    Upload, connection_listed,
};
use nexus_transport::tokio_rustls::rustls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::ToolContext;
use super::pipeline::{Asked, Decided, Listing, Scope, Tool, wrong_grant};

/// Most request headers passed on.
const MAX_HEADERS: usize = 128;
/// How long a secret from a command source (`op read`, `gh auth token`) is
/// reused before the command runs again: one run per request would add
/// seconds to each.
const COMMAND_SECRET_TTL: Duration = Duration::from_secs(300);
/// Time to connect to an upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an upstream connection is kept idle for the next request. Short:
/// an idle HTTP/2 connection has no caller left, yet its upstream can keep
/// the laptop busy answering PING and SETTINGS floods for as long as it is
/// kept (90 s before, at most about twice this now); a new handshake costs
/// far less than an API's answer takes.
const POOL_IDLE: Duration = Duration::from_secs(2);

/// A CA file's modification time and size: its client is rebuilt when
/// either changes.
type FileStamp = (SystemTime, u64);
/// A client, and the stamp of the CA file it trusts.
type Pooled = (Option<FileStamp>, reqwest::Client);

/// HTTP clients (one per set of trusted roots, each with its pool of
/// upstream connections) and secrets from slow sources, kept across calls.
#[derive(Debug, Default)]
pub struct HttpState {
    clients: Mutex<HashMap<(Option<PathBuf>, bool), Pooled>>,
    secrets: Mutex<HashMap<String, (Instant, Secret)>>,
}

impl HttpState {
    /// A client trusting the OS roots plus `ca_file`, reused while the file
    /// is unchanged (its connections stay pooled across requests).
    ///
    /// HTTPS goes through the laptop's `HTTPS_PROXY`/`ALL_PROXY` when set
    /// (a proxy sees only the tunnel); a plain `http://` upstream, which the
    /// policy allows for loopback only, is always dialed `direct`ly, so the
    /// key never goes to a proxy in the clear.
    pub(super) fn client(
        &self,
        ca_file: Option<PathBuf>,
        direct: bool,
    ) -> Result<reqwest::Client, String> {
        let key = (ca_file, direct);
        let ca_file = &key.0;
        let stamp = ca_file.as_ref().and_then(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        });
        if let Ok(cache) = self.clients.lock()
            && let Some((s, client)) = cache.get(&key)
            && *s == stamp
        {
            return Ok(client.clone());
        }
        let roots = crate::route::tls_roots(ca_file.as_deref(), "set ca_file in the [http] rule")
            .map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut builder = reqwest::Client::builder();
        if direct {
            builder = builder.no_proxy();
        }
        let client = builder
            .use_preconfigured_tls(tls)
            // A redirect could send the secret's header to another origin:
            // the workspace gets the 3xx and decides.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        if let Ok(mut cache) = self.clients.lock() {
            cache.insert(key, (stamp, client.clone()));
        }
        Ok(client)
    }

    /// The secret of `source`; a command's answer is reused for a while.
    async fn secret(
        &self,
        source: &TokenSource,
        ctx: &ToolContext,
    ) -> Result<Secret, super::token::SourceError> {
        let TokenSource::Command(_) = source else {
            return super::token::fetch(source, ctx).await;
        };
        let key = source.to_string();
        if let Ok(cache) = self.secrets.lock()
            && let Some((at, value)) = cache.get(&key)
            && at.elapsed() < COMMAND_SECRET_TTL
        {
            return Ok(value.clone());
        }
        let value = super::token::fetch(source, ctx).await?;
        if let Ok(mut cache) = self.secrets.lock() {
            cache.retain(|_, (at, _)| at.elapsed() < COMMAND_SECRET_TTL);
            cache.insert(key, (Instant::now(), value.clone()));
        }
        Ok(value)
    }
}

/// `nexus-shim http list`: the APIs this workspace could call.
#[derive(Debug)]
pub struct List;

impl Listing for List {
    fn list(&self, scope: &Scope<'_>, policy: &nexus_policy::PolicySet) -> Reply {
        let apis = policy
            .http_for(scope.workspace)
            .into_iter()
            .map(|r| HttpApi {
                name: r.name.clone(),
                description: r.description.clone(),
                upstream: r.upstream.as_str().to_owned(),
                methods: r.methods.clone(),
                paths: r.paths.clone(),
                mcp: r.mcp,
                approve: r.approve.is_some(),
            })
            .collect();
        Reply::HttpApis(apis)
    }
}

/// One HTTP request to `$NEXUS_HTTP_URL/NAME/...`, its answer streamed
/// (a small answer goes whole: head, body and end in one write).
#[derive(Debug)]
pub struct Call<'a> {
    /// The request as the shim forwarded it.
    pub req: &'a HttpRequest,
}

impl Tool for Call<'_> {
    fn ask(&mut self, scope: &Scope<'_>, policy: &nexus_policy::PolicySet) -> Result<Asked, Reply> {
        let req = self.req;
        let path = req
            .path
            .split_once('?')
            .map_or(req.path.as_str(), |(p, _)| p);
        let action = Action::Http {
            name: &req.name,
            method: &req.method,
            path,
        };
        let outcome = scope.decide(policy, action);
        // What an approval covers: the API, the method and the path (not
        // the query or the body).
        let shown = format!("{} {} {path}", req.name, req.method);
        Ok(Asked::decided(Decided::new(outcome, "http", shown)))
    }

    async fn run<S>(
        self,
        scope: &Scope<'_>,
        _: &nexus_policy::PolicySet,
        grant: Option<Grant>,
        stream: &mut S,
    ) -> Option<Reply>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(Grant::Http(rule)) = grant else {
            return wrong_grant();
        };
        let prepared = match prepare(self.req, &rule, scope.ctx).await {
            Ok(p) => p,
            Err(reply) => return Some(reply),
        };
        let limits = Limits {
            name: &rule.name,
            label: format!("[http.{}]", rule.name),
            max_request_size: rule.max_request_size,
            timeout: rule.timeout,
            strip: &[],
            unauthorized: None,
        };
        let body = Body {
            declared: self.req.body_len,
            ahead: Vec::new(),
            ended: false,
        };
        exchange(body, &limits, prepared, stream, scope.max_frame)
            .await
            .into_reply()
    }
}

/// What bounds one exchange with an upstream, and names it in messages.
pub(super) struct Limits<'a> {
    /// For log lines: the API's name, or the git host.
    pub name: &'a str,
    /// For messages: `[http.NAME]`, `git host H`.
    pub label: String,
    /// Most request body bytes sent on.
    pub max_request_size: u64,
    /// How long the whole exchange may take.
    pub timeout: Duration,
    /// Response headers never returned to the workspace (lowercase).
    pub strip: &'static [&'static str],
    /// When set, a `401` is not returned but answered with this message:
    /// the credential is the laptop's, and the workspace cannot fix it.
    pub unauthorized: Option<String>,
}

/// The request body: what the client declared, and what was already read
/// from the stream before the exchange (a push's command list).
pub(super) struct Body {
    /// `Content-Length`, when the client gave one.
    pub declared: Option<u64>,
    /// Body bytes already read, sent first.
    pub ahead: Vec<u8>,
    /// Whether [`Upload::End`] was already read too.
    pub ended: bool,
}

impl Final {
    /// The final reply still to send, if any.
    pub(super) fn into_reply(self) -> Option<Reply> {
        match self {
            Final::Send(reply) => Some(reply),
            Final::Sent => None,
        }
    }
}

/// How an exchange ended.
pub(super) enum Final {
    /// With this final reply, still to send.
    Send(Reply),
    /// With its final frame already written.
    Sent,
}

impl From<Reply> for Final {
    fn from(reply: Reply) -> Self {
        Self::Send(reply)
    }
}

/// What is ready before any byte goes upstream.
pub(super) struct Prepared {
    /// The pooled client for the upstream's roots.
    pub client: reqwest::Client,
    /// The request's method.
    pub method: reqwest::Method,
    /// Where it goes.
    pub url: reqwest::Url,
    /// The headers it carries, credential included.
    pub headers: reqwest::header::HeaderMap,
    /// Masks the injected secret in what goes back to the workspace.
    pub scrub: Option<Scrub>,
}

async fn prepare(req: &HttpRequest, rule: &HttpRule, ctx: &ToolContext) -> Result<Prepared, Reply> {
    let api = &rule.name;
    if let Some(len) = req.body_len
        && len > rule.max_request_size
    {
        return Err(Reply::error(
            ErrorCode::BadRequest,
            format!(
                "request body of {len} bytes is over [http.{api}] max_request_size ({} bytes)",
                rule.max_request_size
            ),
        ));
    }
    let url = rule
        .url_for(&req.path)
        .map_err(|why| Reply::error(ErrorCode::Denied, format!("[http.{api}]: {why}")))?;
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|_| {
        Reply::error(
            ErrorCode::BadRequest,
            format!("invalid HTTP method {}", super::clip(&req.method)),
        )
    })?;
    let mut headers = forwarded_headers(&req.headers, rule.header.as_deref())?;
    if !rule.methods.is_empty() {
        // Upstreams that honour these would turn an allowed GET into a
        // DELETE the rule's `methods` does not allow.
        for name in METHOD_OVERRIDES {
            headers.remove(name);
        }
    }
    let mut scrub = None;
    // The length the client declared goes on (some upstreams refuse a
    // chunked body); an empty GET stays without one, as it came.
    let has_body = !matches!(method, reqwest::Method::GET | reqwest::Method::HEAD);
    if let Some(len) = req.body_len.filter(|&n| n > 0 || has_body) {
        headers.insert(reqwest::header::CONTENT_LENGTH, len.into());
    }
    if let (Some(name), Some(secret)) = (&rule.header, &rule.secret) {
        let value = ctx
            .http
            .secret(secret.source(), ctx)
            .await
            .map_err(|e| e.reply(&format!("[http.{api}] secret")))?;
        let text = std::str::from_utf8(value.expose()).map_err(|_| {
            Reply::error(
                ErrorCode::Internal,
                format!("[http.{api}] secret is not UTF-8 text"),
            )
        })?;
        let text = text.trim_end_matches(['\r', '\n']);
        scrub = Scrub::new(text.as_bytes());
        // The mask can only find the key in a body it can read: with a key
        // injected, the upstream is asked for an uncompressed answer.
        headers.insert(
            reqwest::header::ACCEPT_ENCODING,
            reqwest::header::HeaderValue::from_static("identity"),
        );
        let filled = Zeroizing::new(rule.header_value(text));
        let mut value = reqwest::header::HeaderValue::from_str(&filled).map_err(|_| {
            Reply::error(
                ErrorCode::Internal,
                format!("[http.{api}] secret holds characters a header cannot carry"),
            )
        })?;
        value.set_sensitive(true);
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| Reply::error(ErrorCode::Internal, format!("[http.{api}] header: {e}")))?;
        headers.insert(name, value);
    }
    let ca_file = rule
        .ca_file
        .as_deref()
        .map(|p| super::token::expand_home(p, ctx.home()));
    let client = ctx
        .http
        .client(ca_file, rule.upstream.scheme() == "http")
        .map_err(|e| Reply::error(ErrorCode::Internal, format!("[http.{api}]: {e}")))?;
    Ok(Prepared {
        client,
        method,
        url,
        headers,
        scrub,
    })
}

/// Headers some frameworks read as the request's real method.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The headers the SDKs carry an API key in: with a key injected, none of
/// them goes on from the workspace.
const CREDENTIAL_HEADERS: [&str; 4] = ["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// The workspace's headers that go on: not hop-by-hop, not the one the
/// secret goes into nor any other credential header (the workspace's
/// placeholders), not `content-length`
/// (set from the body the laptop actually sends), and with a key injected
/// no `range` (the mask needs the whole echo).
pub(super) fn forwarded_headers(
    given: &[HttpHeader],
    injected: Option<&str>,
) -> Result<reqwest::header::HeaderMap, Reply> {
    if given.len() > MAX_HEADERS {
        return Err(Reply::error(
            ErrorCode::BadRequest,
            format!("more than {MAX_HEADERS} request headers"),
        ));
    }
    let mut out = reqwest::header::HeaderMap::new();
    let listed = connection_listed(given.iter().map(|h| (h.name.as_str(), &h.value[..])));
    for h in given {
        let name = h.name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&name.as_str())
            || listed.contains(&name)
            || name == "content-length"
            || injected.is_some_and(|i| i.eq_ignore_ascii_case(&name))
            // Whatever credential the client's SDK sent (its placeholder, in
            // whichever header that SDK uses) must not reach the upstream
            // beside the real key.
            || (injected.is_some() && CREDENTIAL_HEADERS.contains(&name.as_str()))
            // A range of an echo could hand the key over in pieces, each too
            // short to be masked: with a key injected, answers come whole.
            || (injected.is_some() && matches!(name.as_str(), "range" | "if-range"))
        {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_bytes(&h.value),
        ) else {
            return Err(Reply::error(
                ErrorCode::BadRequest,
                format!("invalid request header {}", super::clip(&h.name)),
            ));
        };
        out.append(n, v);
    }
    Ok(out)
}

/// The upstream's headers that go back to the workspace: not this hop's,
/// not those in `strip`.
fn returned_headers(given: &reqwest::header::HeaderMap, strip: &[&str]) -> Vec<HttpHeader> {
    let listed = connection_listed(given.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    given
        .iter()
        .filter(|(n, _)| {
            !HOP_BY_HOP.contains(&n.as_str())
                && !strip.contains(&n.as_str())
                && !listed.iter().any(|l| l == n.as_str())
        })
        .map(|(n, v)| HttpHeader {
            name: n.as_str().to_owned(),
            value: v.as_bytes().to_vec(),
        })
        .collect()
}

type BodySender = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Reads the request body from the workspace and feeds it to the upstream
/// request, at most `max` bytes. Returns the reader once the body ended.
async fn pump<R: AsyncRead + Unpin>(
    mut rx: R,
    mut body: BodySender,
    max: u64,
    given: Body,
    max_frame: usize,
) -> Result<R, Reply> {
    use futures::SinkExt;
    // A body frame holds up to one chunk (the shim sends 64 KiB), whatever
    // the call-frame limit was lowered to (it may go down to 4 KiB).
    let max_frame = max_frame.max(MAX_CHUNK + 64);
    let declared = given.declared;
    let mut total = 0u64;
    let mut ahead = (!given.ahead.is_empty()).then_some(Upload::Data(given.ahead));
    let mut ended = given.ended;
    loop {
        let frame = match ahead.take() {
            Some(frame) => frame,
            None if ended => return Ok(rx),
            None => nexus_transport::recv(&mut rx, max_frame)
                .await
                .map_err(|e| {
                    Reply::error(
                        ErrorCode::BadRequest,
                        format!("the request body broke off: {e}"),
                    )
                })?,
        };
        ended |= matches!(frame, Upload::End);
        match frame {
            Upload::Data(data) => {
                total += data.len() as u64;
                if total > max || declared.is_some_and(|d| total > d) {
                    let why = if total > max {
                        format!("request body over max_request_size ({max} bytes)")
                    } else {
                        "request body longer than its Content-Length".to_owned()
                    };
                    let _ = body.send(Err(std::io::Error::other(why.clone()))).await;
                    return Err(Reply::error(ErrorCode::BadRequest, why));
                }
                // An upstream that answered early stops reading: the rest
                // is read and dropped, so the stream stays in step.
                let _ = body.send(Ok(Bytes::from(data))).await;
            }
            Upload::End => return Ok(rx),
        }
    }
}

/// Sends the request and relays the response.
pub(super) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    given: Body,
    limits: &Limits<'_>,
    p: Prepared,
    stream: &mut S,
    max_frame: usize,
) -> Final {
    let api = limits.name;
    let label = &limits.label;
    let mut scrub = p.scrub;
    let is_head = p.method == reqwest::Method::HEAD;
    let (rx, mut tx) = tokio::io::split(stream);
    let (body_tx, body_rx) = mpsc::channel(4);
    let mut builder = p.client.request(p.method, p.url).headers(p.headers);
    if given.declared != Some(0) {
        builder = builder.body(reqwest::Body::wrap_stream(body_rx));
    }
    let started = Instant::now();
    let send = builder.send();
    let pump = pump(rx, body_tx, limits.max_request_size, given, max_frame);
    let deadline = tokio::time::sleep(limits.timeout);
    tokio::pin!(send, pump, deadline);
    // Once the body is in, the reader comes back to notice a caller that
    // goes away.
    let mut reader: Option<ReadHalf<&mut S>> = None;
    let timed_out = || {
        Reply::error(
            ErrorCode::Internal,
            format!(
                "{label}: no complete answer within its timeout ({:?})",
                limits.timeout
            ),
        )
    };
    let response = loop {
        tokio::select! {
            r = &mut pump, if reader.is_none() => match r {
                Ok(rx) => reader = Some(rx),
                Err(reply) => return reply.into(),
            },
            r = &mut send => break r,
            () = gone(reader.as_mut()) => return Reply::Done.into(),
            () = &mut deadline => return timed_out().into(),
        }
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            warn!(api, error = %e, "upstream request failed");
            return Reply::error(ErrorCode::Internal, upstream_error(label, &e)).into();
        }
    };
    info!(
        api,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "upstream answered"
    );
    if response.status() == reqwest::StatusCode::UNAUTHORIZED
        && let Some(message) = &limits.unauthorized
    {
        return Reply::error(ErrorCode::Missing, message.clone()).into();
    }
    if scrub.is_some()
        && let Some(encoding) = encoded(response.headers())
    {
        // Asked for `identity`, the upstream compressed anyway: the mask
        // cannot read the body, and an echo of the key would reach the
        // workspace inside it. Refused, never passed through unread.
        warn!(api, %encoding, "upstream compressed a keyed answer; refused");
        return Reply::error(
            ErrorCode::Internal,
            format!(
                "{label}: the upstream answered with Content-Encoding {encoding:?} although \
                 asked for an uncompressed answer; with a key injected the laptop must read the \
                 body to keep the key out of it, so the answer is refused"
            ),
        )
        .into();
    }
    let mut headers = returned_headers(response.headers(), limits.strip);
    if let Some(s) = &scrub {
        for h in &mut headers {
            s.mask(&mut h.value);
        }
    }
    let head = Reply::HttpHead {
        status: response.status().as_u16(),
        headers,
    };
    let mut body = BodyReader {
        response,
        left: Bytes::new(),
    };
    // The head goes with whatever of the body is already here, in one
    // write: a small answer crosses the link as one piece. A HEAD response
    // has no body, whatever its Content-Length says (reading one over
    // HTTP/2 fails on the length).
    let mut first = Zeroizing::new(nexus_protocol::encode_frame(&head));
    let mut ended = is_head;
    while !ended && first.len() < MAX_CHUNK {
        match body.next().now_or_never() {
            Some(Ok(Some(data))) => {
                let data = match &mut scrub {
                    Some(s) => s.feed(data),
                    None => data,
                };
                if !data.is_empty() {
                    first.extend_from_slice(&nexus_protocol::encode_frame(&Reply::Chunk {
                        channel: Channel::Data,
                        data,
                    }));
                }
            }
            Some(Ok(None)) => {
                ended = true;
                if let Some(rest) = scrub.as_mut().map(Scrub::finish)
                    && !rest.is_empty()
                {
                    first.extend_from_slice(&nexus_protocol::encode_frame(&Reply::Chunk {
                        channel: Channel::Data,
                        data: rest,
                    }));
                }
            }
            Some(Err(e)) => {
                return Reply::error(
                    ErrorCode::Internal,
                    format!("{label}: the upstream's response broke off: {e}"),
                )
                .into();
            }
            None => break,
        }
    }
    if ended {
        // The whole answer in one piece, end included.
        first.extend_from_slice(&nexus_protocol::encode_frame(&Reply::Done));
    }
    // Bounded like every later write: a workspace that never reads must not
    // hold this past the timeout (a lock drops the whole exchange; found in
    // the second review).
    let wrote = tokio::select! {
        r = async { tx.write_all(&first).await?; tx.flush().await } => r.is_ok(),
        () = gone(reader.as_mut()) => false,
        () = &mut deadline => return timed_out().into(),
    };
    if !wrote {
        return Reply::Done.into();
    }
    if ended {
        return Final::Sent;
    }
    loop {
        let data = tokio::select! {
            r = &mut pump, if reader.is_none() => match r {
                Ok(rx) => { reader = Some(rx); continue; }
                Err(reply) => return reply.into(),
            },
            c = body.next() => match c {
                Ok(Some(data)) => match &mut scrub {
                    Some(s) => s.feed(data),
                    None => data,
                },
                Ok(None) => match scrub.as_mut().map(Scrub::finish) {
                    Some(rest) if !rest.is_empty() => rest,
                    _ => return Reply::Done.into(),
                },
                Err(e) => {
                    warn!(api, error = %e, "upstream response broke off");
                    return Reply::error(ErrorCode::Internal, format!("{label}: the upstream's response broke off: {e}")).into();
                }
            },
            () = gone(reader.as_mut()) => return Reply::Done.into(),
            () = &mut deadline => return timed_out().into(),
        };
        if data.is_empty() {
            continue; // all held back: a possible start of the secret
        }
        // Waits on the stream's flow control: a workspace that stops
        // reading holds the upstream here, never an unbounded buffer.
        let sent = tokio::select! {
            r = nexus_transport::send_chunk(&mut tx, Channel::Data, &data) => r.is_ok(),
            () = gone(reader.as_mut()) => false,
            () = &mut deadline => return timed_out().into(),
        };
        if !sent {
            debug!(
                api,
                "the workspace caller went away; upstream response dropped"
            );
            return Reply::Done.into();
        }
    }
}

/// The response's content or transfer codings, other than `identity` and
/// `chunked` (which hyper undoes): what would hide a body from the mask.
fn encoded(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let codings: Vec<String> = [
        reqwest::header::CONTENT_ENCODING,
        reqwest::header::TRANSFER_ENCODING,
    ]
    .iter()
    .flat_map(|name| headers.get_all(name))
    .flat_map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    })
    .filter(|c| !c.is_empty() && c != "identity" && c != "chunked")
    .collect();
    (!codings.is_empty()).then(|| super::clip(&codings.join(", ")))
}

/// Shortest secret that is masked: a shorter one would garble ordinary
/// text, and is no real key.
const MIN_SCRUBBED: usize = 8;

/// Masks the injected secret in the response (an upstream that echoes the
/// request, or an error quoting its headers, would hand it to the
/// workspace): each occurrence becomes as many `*`, so lengths (and the
/// upstream's `Content-Length`) stay right. A body is masked across chunk
/// boundaries by holding back only a chunk's end that could begin the
/// secret; text ending in a newline (server-sent events) is never held.
///
/// It cannot see the secret in an encoded body (gzip, base64...): a policy
/// must not bind a key to an upstream that transforms what it echoes.
pub(super) struct Scrub {
    secret: Zeroizing<Vec<u8>>,
    held: Zeroizing<Vec<u8>>,
}

impl Scrub {
    /// A mask for `secret`; `None` when it is too short to mask.
    pub(super) fn new(secret: &[u8]) -> Option<Scrub> {
        // Spaces around the key go out as read, but an upstream that echoes
        // the header trims them: the key itself is what is masked.
        let secret = secret.trim_ascii();
        (secret.len() >= MIN_SCRUBBED).then(|| Scrub {
            secret: Zeroizing::new(secret.to_vec()),
            held: Zeroizing::new(Vec::new()),
        })
    }

    /// Masks every whole occurrence in `buf` (a vectorized substring
    /// search: the body streams through here).
    fn mask(&self, buf: &mut [u8]) {
        let n = self.secret.len();
        let mut i = 0;
        while let Some(at) = memchr::memmem::find(&buf[i..], &self.secret) {
            buf[i + at..i + at + n].fill(b'*');
            i += at + n;
        }
    }

    /// The next piece of the body to send, masked. `data` is taken as is
    /// (no copy) unless a held-back end goes before it.
    fn feed(&mut self, data: Vec<u8>) -> Vec<u8> {
        let mut buf = if self.held.is_empty() {
            data
        } else {
            let mut buf = std::mem::take(&mut *self.held);
            buf.extend_from_slice(&data);
            buf
        };
        self.mask(&mut buf);
        let keep = (1..self.secret.len().min(buf.len() + 1))
            .rev()
            .find(|&k| buf.ends_with(&self.secret[..k]))
            .unwrap_or(0)
            // A frame stays within one chunk.
            .max(buf.len().saturating_sub(MAX_CHUNK));
        *self.held = buf.split_off(buf.len() - keep);
        buf
    }

    /// What was held back, at the body's end (not the secret: never whole).
    fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut *self.held)
    }
}

/// Resolves when the workspace caller goes away: it sends nothing after the
/// body, so any read completing means the stream was reset or closed.
/// Never resolves while the body is still being read.
async fn gone<R: AsyncRead + Unpin>(reader: Option<&mut R>) {
    let Some(r) = reader else {
        return std::future::pending().await;
    };
    let mut byte = [0u8; 1];
    let _ = r.read(&mut byte).await;
}

/// The upstream's response body, read in frame-sized pieces.
struct BodyReader {
    response: reqwest::Response,
    /// Read from the upstream, not yet sent.
    left: Bytes,
}

impl BodyReader {
    /// The next piece: what the upstream sent, plus whatever else is
    /// already there, up to one chunk (so a fast body goes in large frames
    /// and a trickle of events goes at once). `None` at the end.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, reqwest::Error> {
        if self.left.is_empty() {
            match self.response.chunk().await? {
                Some(first) => self.left = first,
                None => return Ok(None),
            }
        }
        let mut data = Vec::with_capacity(self.left.len().min(MAX_CHUNK));
        loop {
            let take = self.left.len().min(MAX_CHUNK - data.len());
            data.extend_from_slice(&self.left.split_to(take));
            if data.len() >= MAX_CHUNK / 2 || !self.left.is_empty() {
                return Ok(Some(data));
            }
            match self.response.chunk().now_or_never() {
                Some(Ok(Some(more))) => self.left = more,
                Some(Ok(None)) | None => return Ok(Some(data)),
                Some(Err(e)) => return Err(e),
            }
        }
    }
}

/// One line for the workspace: what went wrong reaching the upstream.
fn upstream_error(label: &str, e: &reqwest::Error) -> String {
    let what = if e.is_connect() {
        "could not connect to the upstream"
    } else if e.is_timeout() {
        "the upstream timed out"
    } else if e.is_body() {
        "sending the request body failed"
    } else {
        "the request to the upstream failed"
    };
    // The error chain names the cause (TLS, DNS...), never a header.
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    format!("{label}: {what}: {}", super::clip(&cause))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> HttpHeader {
        HttpHeader {
            name: name.to_owned(),
            value: value.as_bytes().to_vec(),
        }
    }

    /// The workspace's placeholder key, hop-by-hop headers (also those a
    /// `Connection` header names) and its own length never go upstream.
    #[test]
    fn forwarded_headers_drop_the_placeholder_and_this_hops_headers() {
        let given = [
            h("Authorization", "Bearer placeholder"),
            h("host", "evil.test"),
            h("connection", "keep-alive, X-Hop"),
            h("x-hop", "1"),
            h("content-length", "99"),
            h("transfer-encoding", "chunked"),
            h("accept", "text/event-stream"),
            h("x-custom", "kept"),
        ];
        let out = forwarded_headers(&given, Some("authorization")).unwrap_or_else(|_| panic!());
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept", "x-custom"]);
        assert!(forwarded_headers(&[h("bad name", "x")], None).is_err());
        assert!(forwarded_headers(&[h("x", "a\nb")], None).is_err());
        let many: Vec<_> = (0..=MAX_HEADERS)
            .map(|i| h(&format!("x-{i}"), "1"))
            .collect();
        assert!(forwarded_headers(&many, None).is_err());
    }

    async fn upload(
        frames: Vec<Upload>,
        max: u64,
        declared: Option<u64>,
    ) -> (Result<(), Reply>, Vec<u8>) {
        let (mut shim, laptop) = tokio::io::duplex(1 << 20);
        for f in &frames {
            nexus_transport::send_data(&mut shim, f)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // The shim's side ends after the frames (a cut body is a closed stream).
        drop(shim);
        let (tx, mut rx) = mpsc::channel(64);
        let given = Body {
            declared,
            ahead: Vec::new(),
            ended: false,
        };
        let pumped = pump(laptop, tx, max, given, 1 << 20).await.map(|_| ());
        let mut got = Vec::new();
        while let Ok(Ok(b)) = rx.try_recv() {
            got.extend_from_slice(&b);
        }
        (pumped, got)
    }

    /// The body is capped by the rule and by its own declared length, and
    /// a body that never ends is an error, not a hang.
    #[tokio::test]
    async fn the_request_body_is_capped() {
        let data = |n: usize| Upload::Data(vec![7; n]);
        let (ok, got) = upload(vec![data(10), data(5), Upload::End], 15, Some(15)).await;
        assert!(ok.is_ok());
        assert_eq!(got.len(), 15);
        let (over, _) = upload(vec![data(10), data(6), Upload::End], 15, None).await;
        assert!(matches!(over, Err(Reply::Error(e)) if e.message.contains("max_request_size")));
        let (long, _) = upload(vec![data(10), Upload::End], 100, Some(5)).await;
        assert!(matches!(long, Err(Reply::Error(e)) if e.message.contains("Content-Length")));
        let (cut, _) = upload(vec![data(3)], 100, None).await;
        assert!(matches!(cut, Err(Reply::Error(e)) if e.message.contains("broke off")));
    }

    /// Body frames of up to one chunk pass whatever `--max-call-frame` is
    /// (4 KiB at least): the shim sends 64 KiB pieces, and a lowered call
    /// limit must not break every request body over it.
    #[tokio::test]
    async fn body_frames_pass_under_a_lowered_call_frame_limit() {
        let (mut shim, laptop) = tokio::io::duplex(1 << 20);
        for f in [Upload::Data(vec![7; 64 << 10]), Upload::End] {
            nexus_transport::send_data(&mut shim, &f)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let (tx, _rx) = mpsc::channel(64);
        let given = Body {
            declared: None,
            ahead: Vec::new(),
            ended: false,
        };
        let pumped = pump(laptop, tx, 1 << 20, given, 4 << 10).await;
        assert!(pumped.is_ok(), "{:?}", pumped.err());
    }

    /// A response body goes in frames of at most one chunk, whole, in order,
    /// whatever sizes the upstream's pieces come in.
    #[tokio::test]
    async fn response_bodies_are_framed_whole() {
        let pieces: Vec<Result<Bytes, std::io::Error>> =
            [1usize, MAX_CHUNK + 3, 10, 2 * MAX_CHUNK, 0, 5]
                .iter()
                .enumerate()
                .map(|(i, &n)| Ok(Bytes::from(vec![u8::try_from(i).unwrap_or(0); n])))
                .collect();
        let expected: Vec<u8> = pieces
            .iter()
            .flat_map(|p| p.as_ref().map(|b| b.to_vec()).unwrap_or_default())
            .collect();
        let body = reqwest::Body::wrap_stream(futures::stream::iter(pieces));
        let response = reqwest::Response::from(hyper_response(body));
        let mut reader = BodyReader {
            response,
            left: Bytes::new(),
        };
        let mut got = Vec::new();
        while let Some(frame) = reader.next().await.unwrap_or_else(|e| panic!("{e}")) {
            assert!(frame.len() <= MAX_CHUNK && !frame.is_empty());
            got.extend(frame);
        }
        assert_eq!(got, expected);
    }

    /// Content and transfer codings that would hide a body from the mask
    /// are named; `identity` and `chunked` are not.
    #[test]
    fn codings_that_hide_the_body_are_named() {
        use reqwest::header::{CONTENT_ENCODING, HeaderMap, HeaderValue, TRANSFER_ENCODING};
        let with = |pairs: &[(reqwest::header::HeaderName, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(n, HeaderValue::from_static(v));
            }
            encoded(&h)
        };
        assert_eq!(with(&[]), None);
        assert_eq!(
            with(&[
                (CONTENT_ENCODING, "identity"),
                (TRANSFER_ENCODING, "chunked")
            ]),
            None
        );
        assert_eq!(with(&[(CONTENT_ENCODING, "gzip")]).as_deref(), Some("gzip"));
        assert_eq!(
            with(&[(TRANSFER_ENCODING, "gzip, chunked")]).as_deref(),
            Some("gzip")
        );
    }

    /// The secret is masked wherever the body's pieces split it, lengths
    /// stay, and a piece ending in a newline is sent whole at once.
    #[test]
    fn the_secret_is_masked_across_chunk_boundaries() {
        let secret = b"sk-real-0123456789";
        let body =
            b"{\"auth\":\"Bearer sk-real-0123456789\",\"x\":\"sk-real-01sk-real-0123456789\"}\n";
        let mut expected = body.to_vec();
        Scrub::new(secret)
            .unwrap_or_else(|| panic!())
            .mask(&mut expected);
        assert!(!expected.windows(secret.len()).any(|w| w == secret));
        assert_eq!(expected.len(), body.len());
        for cut1 in 0..body.len() {
            for cut2 in cut1..body.len() {
                let mut s = Scrub::new(secret).unwrap_or_else(|| panic!());
                let mut got = s.feed(body[..cut1].to_vec());
                got.extend(s.feed(body[cut1..cut2].to_vec()));
                got.extend(s.feed(body[cut2..].to_vec()));
                got.extend(s.finish());
                assert_eq!(got, expected, "cut at {cut1} and {cut2}");
            }
        }
        let mut s = Scrub::new(secret).unwrap_or_else(|| panic!());
        assert_eq!(s.feed(b"data: sk-real\n\n".to_vec()), b"data: sk-real\n\n");
        assert_eq!(s.feed(b"data: sk-".to_vec()), b"data: ");
        assert_eq!(s.finish(), b"sk-");
        let big = vec![b'a'; MAX_CHUNK];
        let mut s = Scrub::new(secret).unwrap_or_else(|| panic!());
        assert_eq!(s.feed(b"sk-re".to_vec()).len(), 0);
        assert!(s.feed(big.to_vec()).len() <= MAX_CHUNK);
        assert!(Scrub::new(b"short").is_none());
    }

    /// A secret read with spaces around it (a file or variable written
    /// `KEY ` ) is sent as is, and an upstream that echoes the header value
    /// trims them: the mask must still find the key.
    #[test]
    fn a_secret_with_spaces_around_it_is_masked_in_a_trimmed_echo() {
        let mut s = Scrub::new(b" sk-padded-0123456789\t ").unwrap_or_else(|| panic!());
        let mut got = s.feed(b"{\"authorization\":\"Bearer sk-padded-0123456789\"}".to_vec());
        got.extend(s.finish());
        assert!(
            !got.windows(20).any(|w| w == b"sk-padded-0123456789"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }

    /// With a key injected, every SDK's placeholder goes, whichever header
    /// it rides in; without one (a keyless API) the client's own headers pass.
    #[test]
    fn every_placeholder_credential_goes_when_a_key_is_injected() {
        let given = [
            h("Authorization", "Bearer PLACEHOLDER"),
            h("x-api-key", "PLACEHOLDER"),
            h("api-key", "PLACEHOLDER"),
            h("x-goog-api-key", "PLACEHOLDER"),
            h("x-custom-key", "PLACEHOLDER"),
            h("anthropic-version", "2023-06-01"),
        ];
        let out = forwarded_headers(&given, Some("x-custom-key")).unwrap_or_else(|_| panic!());
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["anthropic-version"]);
        let out = forwarded_headers(&given, None).unwrap_or_else(|_| panic!());
        assert_eq!(out.len(), given.len());
    }

    /// With a key injected, `Range` would let the workspace fetch an echo
    /// of the key piece by piece (each piece shorter than the key, so never
    /// masked): it does not go on. Without a key it does.
    #[test]
    fn a_range_never_goes_to_a_keyed_upstream() {
        let given = [
            h("Range", "bytes=30-40"),
            h("If-Range", "x"),
            h("accept", "*/*"),
        ];
        let out = forwarded_headers(&given, Some("authorization")).unwrap_or_else(|_| panic!());
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept"]);
        let out = forwarded_headers(&given, None).unwrap_or_else(|_| panic!());
        assert!(out.contains_key("range"));
    }

    proptest::proptest! {
        /// Whatever the body and however it is cut, the output is the whole
        /// body masked, no secret survives, and no frame exceeds a chunk.
        #[test]
        fn masking_does_not_depend_on_the_cuts(
            parts in proptest::collection::vec(
                (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), proptest::prelude::any::<bool>()),
                0..12,
            ),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let secret = b"sk-abcabcab";
            let mut body = Vec::new();
            for (noise, with_secret) in &parts {
                body.extend_from_slice(noise);
                if *with_secret {
                    body.extend_from_slice(secret);
                }
            }
            let mut expected = body.clone();
            let whole = Scrub::new(secret).unwrap_or_else(|| panic!());
            whole.mask(&mut expected);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let mut s = Scrub::new(secret).unwrap_or_else(|| panic!());
            let (mut got, mut from) = (Vec::new(), 0);
            for c in cuts.into_iter().chain([body.len()]) {
                got.extend(s.feed(body[from..c].to_vec()));
                from = c;
            }
            got.extend(s.finish());
            proptest::prop_assert_eq!(&got, &expected);
            proptest::prop_assert!(!got.windows(secret.len()).any(|w| w == secret));
        }
    }

    fn hyper_response(body: reqwest::Body) -> http::Response<reqwest::Body> {
        http::Response::new(body)
    }
}
