//! A real HTTPS server standing in for an API such as `api.openai.com`: the
//! upstream of the HTTP-injection tests and benchmark.
//!
//! It serves HTTP/1.1 and HTTP/2 (ALPN `h2`, `http/1.1`) over TLS, with a
//! leaf certificate for `localhost`, `127.0.0.1` and a name of the test's
//! choosing, signed by a fresh test CA ([`Upstream::ca_pem`]). It records every
//! request it receives ([`Upstream::requests`]) and answers:
//!
//! | path | answer |
//! |---|---|
//! | `/echo/...` (any method) | 200, JSON `{method, path, version, headers: [[name, value]], body_len}` |
//! | `/held/...` (any method) | as `/echo/`, recorded at once but answered only after [`Upstream::release`] |
//! | `/sse?events=N` | `text/event-stream`: `data: 0\n\n` at once, each next event only after [`Upstream::release`] |
//! | `/bytes?n=N` | N bytes (`0..=250` repeating) in 64 KiB chunks, generated as they are sent |
//! | `/status/CODE` | that status, empty body |
//! | `/redirect` | 302 with `Location: https://evil.test/` (a proxy must not follow it) |
//! | `.../v1/messages`, `.../v1/responses`, `.../v1/chat/completions` | a scripted LLM ([`crate::llm`]) |
//! | anything else | 404 |
//!
//! Started with [`Upstream::start_flooding`], it is hostile instead: each
//! HTTP/2 connection gets one empty 200 answer, then PING and SETTINGS
//! frames as fast as it can write them until the client closes it
//! ([`Upstream::flood`] counts both).
//!
//! The server runs on its own thread and runtime, so synchronous tests and
//! async benchmarks use it alike; dropping the [`Upstream`] cancels every
//! task and joins the thread.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use nexus_transport::tokio_rustls::rustls::crypto::aws_lc_rs;
use nexus_transport::tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use nexus_transport::tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use nexus_transport::tokio_rustls::{
    self as tokio_rustls, TlsAcceptor, TlsConnector, client::TlsStream,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// How much of each request body is kept in [`Seen::body`].
pub const RECORDED_BODY_CAP: usize = 1 << 20;

/// The chunk size of `/bytes`.
const CHUNK: usize = 64 << 10;

/// One request as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query, as sent (`/echo/x?a=1`).
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Every header, in order, values as bytes (HTTP/2's `:authority` is
    /// given as `host`).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, up to [`RECORDED_BODY_CAP`] bytes.
    pub body: Vec<u8>,
    /// The body's full length.
    pub body_len: u64,
}

impl Seen {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// What the serving tasks share with the handle.
#[derive(Debug)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    /// Permits for held SSE events.
    gate: Semaphore,
    /// Held SSE responses whose client is still there.
    open: std::sync::atomic::AtomicUsize,
    /// Whether HTTP/2 connections get the flood instead of answers.
    flooding: bool,
    /// Flood frames written, over all connections.
    flood_frames: AtomicU64,
    /// Flooded connections the client closed.
    flood_closed: AtomicU64,
}

/// A running HTTPS upstream; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Listens on `127.0.0.1:0` with a certificate for `localhost`,
    /// `127.0.0.1` and `name` (for example `api.test`), signed by a new CA.
    pub fn start(name: &str) -> io::Result<Self> {
        Self::start_with(name, false)
    }

    /// Like [`Self::start`], but hostile: every HTTP/2 connection gets one
    /// empty 200 answer, then a flood of PING and SETTINGS frames.
    pub fn start_flooding(name: &str) -> io::Result<Self> {
        Self::start_with(name, true)
    }

    /// Flood frames written so far, and flooded connections the client
    /// has closed.
    pub fn flood(&self) -> (u64, u64) {
        (
            self.shared.flood_frames.load(Ordering::SeqCst),
            self.shared.flood_closed.load(Ordering::SeqCst),
        )
    }

    fn start_with(name: &str, flooding: bool) -> io::Result<Self> {
        let (ca_pem, ca_der, server) = certificates(name).map_err(io::Error::other)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            seen: Mutex::default(),
            gate: Semaphore::new(0),
            open: std::sync::atomic::AtomicUsize::new(0),
            flooding,
            flood_frames: AtomicU64::new(0),
            flood_closed: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let (st, stop2) = (shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("e2e-upstream".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => accept_loop(l, acceptor, st, stop2).await,
                        Err(e) => eprintln!("the upstream cannot listen: {e}"),
                    }
                });
                // Dropping the runtime here ends every connection task.
            })?;
        Ok(Self {
            addr,
            ca_pem,
            ca_der,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// The test CA that signed the server's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes [`Self::ca_pem`] to `path` (a policy's `ca_file`).
    pub fn write_ca(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, &self.ca_pem)
    }

    /// The laptop policy text declaring this upstream as `[http.NAME]`: its
    /// key is token NAME from `env:ENV_VAR`, sent as `Authorization: Bearer
    /// <key>`, and the server is trusted through `ca_file` (see [`Self::write_ca`]).
    pub fn policy(&self, name: &str, env_var: &str, ca_file: &Path) -> String {
        format!(
            "[tokens.{name}]\nsource = \"env:{env_var}\"\n\n\
             [http.{name}]\nupstream = \"{}\"\nheader = \"Authorization\"\n\
             value = \"Bearer {{token}}\"\ntoken = \"{name}\"\nca_file = \"{}\"\n",
            self.url(),
            ca_file.display()
        )
    }

    /// Streaming responses (`/sse`, `/bytes`) not yet ended or dropped.
    pub fn open_streams(&self) -> usize {
        self.shared.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Lets `n` held `/sse` events go (shared by all `/sse` responses).
    pub fn release(&self, n: usize) {
        self.shared.gate.add_permits(n);
    }

    /// A TLS client configuration that trusts only the test CA, offering
    /// `alpn` (for example `["http/1.1"]`).
    pub fn client_config(&self, alpn: &[&str]) -> io::Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).map_err(io::Error::other)?;
        let mut cfg = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// A TLS connection to the server as `localhost`, offering `http/1.1`
    /// only, with `TCP_NODELAY`.
    pub async fn connect(&self) -> io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name =
            rustls::pki_types::ServerName::try_from("localhost").map_err(io::Error::other)?;
        TlsConnector::from(self.client_config(&["http/1.1"])?)
            .connect(name, tcp)
            .await
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The CA (PEM and DER) and a server configuration with its leaf.
fn certificates(
    name: &str,
) -> Result<(String, CertificateDer<'static>, ServerConfig), Box<dyn std::error::Error + Send + Sync>>
{
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "nexus-e2e upstream test CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        name.to_owned(),
    ])?;
    leaf.distinguished_name.push(DnType::CommonName, name);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut server = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone()], key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((ca_cert.pem(), ca_cert.der().clone(), server))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, shared, stop) = (acceptor.clone(), shared.clone(), stop.clone());
        tokio::spawn(async move {
            let tls = tokio::select! {
                _ = stop.cancelled() => return,
                r = acceptor.accept(tcp) => match r {
                    Ok(tls) => tls,
                    Err(_) => return,
                },
            };
            if shared.flooding && tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                return tokio::select! {
                    _ = stop.cancelled() => {}
                    () = flood_h2(tls, &shared) => {}
                };
            }
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

/// One HTTP/2 frame header: length, type, flags, stream.
fn h2_frame(len: usize, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
    let len = u32::try_from(len).unwrap_or(0).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f
}

/// The hostile HTTP/2 server of [`Upstream::start_flooding`], by hand: the
/// preface and settings, one empty 200 answer to the first request, then
/// PING and SETTINGS frames until the client goes (its ACKs are read and
/// dropped meanwhile).
async fn flood_h2(tls: tokio_rustls::server::TlsStream<TcpStream>, shared: &Shared) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SETTINGS: u8 = 4;
    const HEADERS: u8 = 1;
    const PING: u8 = 6;
    let (mut rx, mut tx) = tokio::io::split(tls);
    let mut preface = [0u8; 24];
    if rx.read_exact(&mut preface).await.is_err()
        || tx.write_all(&h2_frame(0, SETTINGS, 0, 0)).await.is_err()
    {
        return;
    }
    // Up to the first request's headers, acknowledging the client's settings.
    let stream = loop {
        let mut head = [0u8; 9];
        if rx.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if rx.read_exact(&mut payload).await.is_err() {
            return;
        }
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match head[3] {
            SETTINGS
                if head[4] & 1 == 0
                    && tx.write_all(&h2_frame(0, SETTINGS, 1, 0)).await.is_err() =>
            {
                return;
            }
            HEADERS => break id,
            _ => {}
        }
    };
    // `:status 200` (HPACK static index 8), END_HEADERS | END_STREAM.
    let mut answer = h2_frame(1, HEADERS, 0x4 | 0x1, stream);
    answer.push(0x88);
    if tx.write_all(&answer).await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = vec![0u8; 64 << 10];
        while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let flood = async {
        let mut batch = Vec::new();
        for i in 0..64u64 {
            batch.extend_from_slice(&h2_frame(8, PING, 0, 0));
            batch.extend_from_slice(&i.to_be_bytes());
            batch.extend_from_slice(&h2_frame(0, SETTINGS, 0, 0));
        }
        while tx.write_all(&batch).await.is_ok() {
            shared.flood_frames.fetch_add(128, Ordering::SeqCst);
        }
    };
    tokio::select! {
        () = drain => {}
        () = flood => {}
    }
    shared.flood_closed.fetch_add(1, Ordering::SeqCst);
}

type AnyBody = BoxBody<Bytes, Infallible>;

/// Records the request, then answers it by path.
async fn answer(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<AnyBody> {
    let (parts, mut body) = req.into_parts();
    let mut seen = Seen {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        version: format!("{:?}", parts.version),
        headers: Vec::new(),
        body: Vec::new(),
        body_len: 0,
    };
    if parts.headers.get(hyper::header::HOST).is_none()
        && let Some(authority) = parts.uri.authority()
    {
        seen.headers
            .push(("host".into(), authority.as_str().as_bytes().to_vec()));
    }
    for (n, v) in &parts.headers {
        seen.headers
            .push((n.as_str().to_owned(), v.as_bytes().to_vec()));
    }
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            seen.body_len += data.len() as u64;
            let room = RECORDED_BODY_CAP.saturating_sub(seen.body.len());
            seen.body.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    let held = seen.path.starts_with("/held/");
    let reply = if held {
        None
    } else {
        Some(route(shared, &seen))
    };
    shared
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(seen.clone());
    match reply {
        Some(reply) => reply,
        None => {
            // Recorded first, so that a test sees it in flight.
            if let Ok(permit) = shared.gate.acquire().await {
                permit.forget();
            }
            route(shared, &seen)
        }
    }
}

/// `data` as a gzip member of uncompressed (stored) deflate blocks: what
/// `gunzip` and `curl --compressed` read, without a compression crate.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.push(u8::from(blocks.peek().is_none()));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_le_bytes());
    out
}

fn route(shared: &Arc<Shared>, seen: &Seen) -> Response<AnyBody> {
    let (path, query) = seen.path.split_once('?').unwrap_or((&seen.path, ""));
    let param = |key: &str| -> Option<u64> {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    let gzipped = path.starts_with("/gzip-echo/");
    if path.starts_with("/echo/") || path == "/echo" || path.starts_with("/held/") || gzipped {
        let headers: Vec<[String; 2]> = seen
            .headers
            .iter()
            .map(|(n, v)| [n.clone(), String::from_utf8_lossy(v).into_owned()])
            .collect();
        let json = serde_json::json!({
            "method": seen.method,
            "path": seen.path,
            "version": seen.version,
            "headers": headers,
            "body_len": seen.body_len,
        });
        // `/gzip-echo/`: a hostile upstream that compresses the echo even
        // when asked for `identity`.
        if gzipped {
            return respond(
                StatusCode::OK,
                Full::new(Bytes::from(gzip_stored(json.to_string().as_bytes()))).boxed(),
            )
            .with(CONTENT_TYPE, "application/json")
            .with(hyper::header::CONTENT_ENCODING, "gzip");
        }
        return respond(
            StatusCode::OK,
            Full::new(Bytes::from(json.to_string())).boxed(),
        )
        .with(CONTENT_TYPE, "application/json");
    }
    if let Some(llm) = crate::llm::answer(path, &seen.body) {
        return respond(StatusCode::OK, Full::new(Bytes::from(llm.body)).boxed())
            .with(CONTENT_TYPE, llm.content_type)
            .with(CACHE_CONTROL, "no-cache");
    }
    match path {
        "/sse" => {
            let events = param("events").unwrap_or(1);
            respond(StatusCode::OK, held_events(shared, events))
                .with(CONTENT_TYPE, "text/event-stream")
                .with(CACHE_CONTROL, "no-cache")
        }
        "/bytes" => respond(
            StatusCode::OK,
            Counted {
                body: Generated::new(param("n").unwrap_or(0)).boxed(),
                _open: OpenGuard::new(shared),
            }
            .boxed(),
        )
        .with(CONTENT_TYPE, "application/octet-stream"),
        "/redirect" => respond(StatusCode::FOUND, empty()).with(LOCATION, "https://evil.test/"),
        _ => match path.strip_prefix("/status/").map(str::parse::<u16>) {
            Some(Ok(code)) => match StatusCode::from_u16(code) {
                Ok(status) => respond(status, empty()),
                Err(_) => respond(StatusCode::BAD_REQUEST, empty()),
            },
            Some(Err(_)) => respond(StatusCode::BAD_REQUEST, empty()),
            None => respond(StatusCode::NOT_FOUND, empty()),
        },
    }
}

fn empty() -> AnyBody {
    Full::new(Bytes::new()).boxed()
}

fn respond(status: StatusCode, body: AnyBody) -> Response<AnyBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

/// Adding a static header in a chain.
trait With {
    fn with(self, name: hyper::header::HeaderName, value: &'static str) -> Self;
}

impl With for Response<AnyBody> {
    fn with(mut self, name: hyper::header::HeaderName, value: &'static str) -> Self {
        self.headers_mut()
            .insert(name, hyper::header::HeaderValue::from_static(value));
        self
    }
}

/// `data: 0` now, then one event per permit of the shared gate. The feeding
/// task ends when the client goes away, or with the runtime (the Upstream).
fn held_events(shared: &Arc<Shared>, events: u64) -> AnyBody {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let shared = shared.clone();
    let open = OpenGuard::new(&shared);
    tokio::spawn(async move {
        let _open = open;
        for i in 0..events {
            if i > 0 {
                tokio::select! {
                    _ = tx.closed() => return,
                    permit = shared.gate.acquire() => match permit {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    },
                }
            }
            if tx
                .send(Bytes::from(format!("data: {i}\n\n")))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    ChannelBody(rx).boxed()
}

/// Counts a streaming response (`/sse`, `/bytes`) until it is dropped.
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared
            .open
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(shared.clone())
    }
}

/// A body counted by [`OpenGuard`] while it lives.
struct Counted {
    body: AnyBody,
    _open: OpenGuard,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = <AnyBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A body fed by a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// `n` bytes made as they are sent, in [`CHUNK`]s of one shared block.
struct Generated {
    left: u64,
    block: Bytes,
}

impl Generated {
    fn new(n: u64) -> Self {
        let block: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
        Self {
            left: n,
            block: Bytes::from(block),
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.block.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Must;
    use hyper::client::conn::{http1, http2};

    type Sender = http1::SendRequest<Full<Bytes>>;

    async fn h1(up: &Upstream) -> Sender {
        let tls = up.connect().await.must("connecting");
        let (send, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .must("HTTP/1.1 handshake");
        tokio::spawn(conn);
        send
    }

    fn get(path: &str) -> Request<Full<Bytes>> {
        Request::get(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .must("a request")
    }

    async fn body(r: Response<Incoming>) -> Vec<u8> {
        r.into_body()
            .collect()
            .await
            .must("reading the body")
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn echo_answers_what_it_saw_and_records_it() {
        let up = Upstream::start("api.test").must("starting");
        let mut s = h1(&up).await;
        let req = Request::post("/echo/x?y=1")
            .header("host", "localhost")
            .header("authorization", "Bearer sk-real")
            .body(Full::new(Bytes::from_static(b"hello")))
            .must("a request");
        let r = s.send_request(req).await.must("echo");
        assert_eq!(r.status(), StatusCode::OK);
        let json: serde_json::Value = serde_json::from_slice(&body(r).await).must("JSON");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/echo/x?y=1");
        assert_eq!(json["body_len"], 5);
        assert!(
            json["headers"]
                .as_array()
                .must("headers")
                .contains(&serde_json::json!(["authorization", "Bearer sk-real"]))
        );
        // The same connection is kept alive for the next request.
        let r = s.send_request(get("/echo/again")).await.must("again");
        assert_eq!(r.status(), StatusCode::OK);
        let seen = up.requests();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[0].header("Authorization"),
            Some(&b"Bearer sk-real"[..])
        );
        assert_eq!(seen[0].body, b"hello");
        assert_eq!(seen[1].path, "/echo/again");
    }

    #[tokio::test]
    async fn serves_http2_when_offered() {
        let up = Upstream::start("api.test").must("starting");
        let tcp = TcpStream::connect(up.addr()).await.must("tcp");
        let name = rustls::pki_types::ServerName::try_from("api.test").must("name");
        let cfg = up.client_config(&["h2"]).must("client config");
        let tls = TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .must("TLS as api.test");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .must("h2 handshake");
        tokio::spawn(conn);
        let req = Request::get(format!("https://api.test:{}/echo/h2", up.addr().port()))
            .body(Full::new(Bytes::new()))
            .must("request");
        let r = s.send_request(req).await.must("h2 echo");
        assert_eq!(r.status(), StatusCode::OK);
        let seen = up.requests();
        assert_eq!(seen[0].version, "HTTP/2.0");
        assert!(
            seen[0]
                .header("host")
                .must("host")
                .starts_with(b"api.test:")
        );
    }

    #[tokio::test]
    async fn sse_holds_each_next_event_until_released() {
        let up = Upstream::start("api.test").must("starting");
        let mut s = h1(&up).await;
        let r = s.send_request(get("/sse?events=3")).await.must("sse");
        assert_eq!(r.headers()[CONTENT_TYPE], "text/event-stream");
        let mut b = r.into_body();
        let mut next = async || {
            loop {
                let f = b
                    .frame()
                    .await
                    .must("a frame")
                    .must("a frame, not an error");
                if let Ok(d) = f.into_data() {
                    return d;
                }
            }
        };
        assert_eq!(next().await, "data: 0\n\n");
        up.release(1);
        assert_eq!(next().await, "data: 1\n\n");
        up.release(1);
        assert_eq!(next().await, "data: 2\n\n");
        assert!(b.frame().await.is_none(), "three events, then the end");
    }

    #[tokio::test]
    async fn bytes_status_redirect_and_not_found() {
        let up = Upstream::start("api.test").must("starting");
        let mut s = h1(&up).await;
        let r = s.send_request(get("/bytes?n=200000")).await.must("bytes");
        let data = body(r).await;
        assert_eq!(data.len(), 200_000);
        assert!(
            data.iter()
                .enumerate()
                .all(|(i, b)| *b == ((i % CHUNK) % 251) as u8)
        );
        let r = s.send_request(get("/status/418")).await.must("status");
        assert_eq!(r.status().as_u16(), 418);
        body(r).await;
        let r = s.send_request(get("/redirect")).await.must("redirect");
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[LOCATION], "https://evil.test/");
        body(r).await;
        let r = s.send_request(get("/nothing")).await.must("404");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        body(r).await;
        let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(
            paths,
            ["/bytes?n=200000", "/status/418", "/redirect", "/nothing"]
        );
    }

    #[tokio::test]
    async fn records_at_most_the_cap_of_a_body() {
        let up = Upstream::start("api.test").must("starting");
        let mut s = h1(&up).await;
        let big = Bytes::from(vec![b'x'; RECORDED_BODY_CAP + 10]);
        let req = Request::put("/echo/big")
            .header("host", "localhost")
            .body(Full::new(big))
            .must("request");
        body(s.send_request(req).await.must("put")).await;
        let seen = up.requests();
        assert_eq!(seen[0].body.len(), RECORDED_BODY_CAP);
        assert_eq!(seen[0].body_len, (RECORDED_BODY_CAP + 10) as u64);
    }

    proptest::proptest! {
        /// Any path and query a client sends gets an answer, never a panic.
        #[test]
        fn any_path_is_answered(path in "/[a-z0-9/?=&%.]{0,40}") {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .must("a runtime");
            let _in_rt = rt.enter();
            let shared = Arc::new(Shared {
                seen: Mutex::default(),
                gate: Semaphore::new(0),
                open: std::sync::atomic::AtomicUsize::new(0),
                flooding: false,
                flood_frames: AtomicU64::new(0),
                flood_closed: AtomicU64::new(0),
            });
            let seen = Seen {
                method: "GET".into(),
                path: path.clone(),
                version: "HTTP/1.1".into(),
                headers: vec![],
                body: vec![],
                body_len: 0,
            };
            let status = route(&shared, &seen).status();
            let known = path.starts_with("/echo") || path.starts_with("/held/") || path.starts_with("/sse")
                || path.starts_with("/bytes") || path.starts_with("/redirect")
                || path.starts_with("/status/")
                || crate::llm::answer(path.split('?').next().unwrap_or_default(), b"").is_some();
            proptest::prop_assert!(known || status == StatusCode::NOT_FOUND, "{path}: {status}");
        }
    }

    #[test]
    fn the_ca_and_a_policy_are_written_for_the_laptop() {
        let up = Upstream::start("api.test").must("starting");
        let dir = tempfile::tempdir().must("tempdir");
        up.write_ca(&dir.path().join("ca.pem")).must("writing");
        let pem = std::fs::read_to_string(dir.path().join("ca.pem")).must("reading");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(up.url().starts_with("https://localhost:"));
        let policy = up.policy("api", "KEY_VAR", &dir.path().join("ca.pem"));
        assert!(policy.contains(&format!("[http.api]\nupstream = \"{}\"\n", up.url())));
        assert!(policy.contains("value = \"Bearer {token}\"\ntoken = \"api\"\n"));
        assert!(policy.contains("source = \"env:KEY_VAR\""));
    }
}
