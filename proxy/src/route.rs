//! How the proxy reaches a workspace: the byte stream the pinned mutual TLS
//! and yamux run on.
//!
//! - `tls://HOST:PORT` (the default, what a pairing URI names): plain TCP.
//! - `wss://HOST[:PORT]/PATH` (or `ws://` inside a trusted network): a
//!   WebSocket through an HTTP ingress or reverse proxy. The outer TLS is
//!   checked against the OS roots plus an optional CA file, but it is only
//!   transport: the workspace is still authenticated by its pinned
//!   certificate inside.
//! - a connect command (`kubectl exec -i POD -- nexus-shim serve --stdio`,
//!   `ssh HOST nexus-shim serve --stdio`): the command's stdin and stdout,
//!   run by `sh -c` like ssh's ProxyCommand. Its stderr goes to our log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use nexus_transport::tokio_rustls::{TlsConnector, rustls};
use nexus_transport::ws::{self, WsIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tracing::warn;

/// A byte stream to a workspace.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A boxed [`Io`]: what the tunnel's TLS runs on.
pub type Conduit = Box<dyn Io>;

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// TCP to `HOST:PORT`.
    Tcp(String),
    /// A WebSocket.
    WebSocket(WsTarget),
    /// A command's stdin/stdout.
    Command(String),
}

/// A parsed `wss://` or `ws://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsTarget {
    /// The URL as given.
    pub url: String,
    /// Host name (SNI and `Host:`).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether there is an outer TLS layer (`wss`).
    pub tls: bool,
    /// Extra root certificate(s) for the outer TLS.
    pub ca_file: Option<PathBuf>,
}

impl Route {
    /// The route for a stored workspace record.
    ///
    /// # Errors
    /// The record's `connect` URL does not parse.
    pub fn for_workspace(ws: &crate::config::Workspace) -> Result<Self> {
        if let Some(cmd) = ws
            .connect_command
            .as_deref()
            .filter(|c| !c.trim().is_empty())
        {
            return Ok(Self::Command(cmd.to_owned()));
        }
        match ws.connect.as_deref().filter(|c| !c.is_empty()) {
            Some(url) => Self::parse(url, ws.ca_file.clone()),
            None => Ok(Self::Tcp(ws.address.clone())),
        }
    }

    /// Parses `tls://HOST:PORT`, `HOST:PORT`, `wss://HOST[:PORT]/PATH` or
    /// `ws://HOST[:PORT]/PATH`.
    ///
    /// # Errors
    /// Unknown scheme, missing host, bad port.
    pub fn parse(s: &str, ca_file: Option<PathBuf>) -> Result<Self> {
        let usage = "expected tls://HOST:PORT, wss://HOST[:PORT]/PATH or ws://HOST[:PORT]/PATH";
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("{s:?}: spaces or control characters in the address; {usage}");
        }
        let (scheme, rest) = s.split_once("://").unwrap_or(("tls", s));
        let (tls, default_port) = match scheme {
            "tls" | "tcp" => {
                if !rest.contains(':') || rest.contains('/') {
                    bail!("{s:?}: {usage}");
                }
                return Ok(Self::Tcp(rest.to_owned()));
            }
            "wss" => (true, 443),
            "ws" => (false, 80),
            other => bail!("{s:?}: unknown scheme {other:?}; {usage}"),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .with_context(|| format!("{s:?}: bad port {p:?}"))?,
            ),
            _ => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("{s:?}: no host; {usage}");
        }
        Ok(Self::WebSocket(WsTarget {
            url: s.to_owned(),
            host: host.to_owned(),
            port,
            tls,
            ca_file,
        }))
    }

    /// The address dialed when the route is TCP to an IP address: what the
    /// network-change hints watch (every route gets pings and wake probes).
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Self::Tcp(addr) => addr.parse().ok(),
            Self::WebSocket(_) | Self::Command(_) => None,
        }
    }

    /// Connects: TCP, the WebSocket handshake, or the command started.
    ///
    /// # Errors
    /// An I/O error phrased for the user (the caller adds the route).
    pub async fn connect(&self) -> std::io::Result<Conduit> {
        match self {
            Self::Tcp(addr) => {
                let tcp = TcpStream::connect(addr).await?;
                nexus_transport::tune_tcp(&tcp);
                Ok(Box::new(tcp))
            }
            Self::WebSocket(target) => connect_ws(target).await,
            Self::Command(cmd) => {
                spawn_command(cmd, !has_terminal()).map(|c| Box::new(c) as Conduit)
            }
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::WebSocket(t) => f.write_str(&t.url),
            Self::Command(cmd) => write!(f, "`{}`", crate::tools::clip(cmd)),
        }
    }
}

/// Applies `run --connect-command` (one workspace only).
///
/// # Errors
/// A command was given for more than one workspace.
pub fn with_connect_command(
    mut workspaces: Vec<crate::config::Workspace>,
    command: Option<String>,
) -> Result<Vec<crate::config::Workspace>> {
    let Some(command) = command else {
        return Ok(workspaces);
    };
    let [ws] = workspaces.as_mut_slice() else {
        bail!("--connect-command applies to one workspace; name it with --workspace NAME");
    };
    ws.connect = None;
    ws.connect_command = Some(command);
    Ok(workspaces)
}

async fn connect_ws(target: &WsTarget) -> std::io::Result<Conduit> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    nexus_transport::tune_tcp(&tcp);
    let config = Some(ws::config());
    if !target.tls {
        let (socket, _) = ws::client_async_with_config(target.url.as_str(), tcp, config)
            .await
            .map_err(|e| std::io::Error::other(format!("websocket handshake: {e}")))?;
        return Ok(Box::new(WsIo::new(socket)));
    }
    let roots = tls_roots(target.ca_file.as_deref(), "pass --ca-file")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let outer = TlsConnector::from(Arc::new(tls_config))
        .connect(name, tcp)
        .await
        .map_err(|e| std::io::Error::other(format!("outer TLS to {}: {e}", target.host)))?;
    let (socket, _) = ws::client_async_with_config(target.url.as_str(), outer, config)
        .await
        .map_err(|e| std::io::Error::other(format!("websocket handshake: {e}")))?;
    Ok(Box::new(WsIo::new(socket)))
}

/// The OS's root certificates, plus those in `ca_file`; `hint` says how
/// to add one when there are none.
pub(crate) fn tls_roots(
    ca_file: Option<&Path>,
    hint: &str,
) -> std::io::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| {
                std::io::Error::other(format!("reading CA file {}: {e}", path.display()))
            })?;
        if certs.is_empty() {
            return Err(std::io::Error::other(format!(
                "CA file {} holds no certificate",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| std::io::Error::other(format!("CA file {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(std::io::Error::other(format!(
            "no root certificates: the OS store is empty; {hint}"
        )));
    }
    Ok(roots)
}

/// How long a connect command may take to exit once its stdin is closed,
/// before it is killed.
pub const COMMAND_EXIT_GRACE: Duration = Duration::from_secs(5);

/// A connect command's stdin and stdout. When the link ends (this is
/// dropped), its stdin is closed so that it, and whatever it runs at the far
/// end, can finish cleanly; it is killed if it is still running
/// [`COMMAND_EXIT_GRACE`] later.
#[derive(Debug)]
pub struct CommandIo {
    child: Option<Child>,
    /// The command's own process group, when it has one.
    group: Option<rustix::process::Pid>,
    stdout: ChildStdout,
    stdin: Option<ChildStdin>,
}

impl Drop for CommandIo {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let Some(mut child) = self.child.take() else {
            return;
        };
        let mut group = GroupKill(self.group.take());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                // When the proxy exits during the grace period, this task
                // is dropped and the command left to end on its own (its
                // stdin is closed): a clean exit is still likely, a kill
                // would lose it.
                rt.spawn(async move {
                    if tokio::time::timeout(COMMAND_EXIT_GRACE, child.wait())
                        .await
                        .is_err()
                    {
                        warn!(
                            "the connect command did not exit after its stdin closed; killing it"
                        );
                        group.kill();
                        let _ = child.kill().await;
                    }
                });
            }
            Err(_) => {
                group.kill();
                let _ = child.start_kill();
            }
        }
    }
}

/// Kills a connect command's process group (`sh` and what it started:
/// `ssh`, `kubectl`, both sides of a pipe) when asked. Only armed while
/// `sh`, the group leader, is unreaped, so the id cannot be another
/// group's.
#[derive(Debug)]
struct GroupKill(Option<rustix::process::Pid>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Whether this process has a controlling terminal. A connect command runs
/// in its own process group (so all of it can be killed) only without one:
/// in a terminal, `ssh` may prompt on it, which a background group cannot.
fn has_terminal() -> bool {
    std::fs::File::open("/dev/tty").is_ok()
}

fn spawn_command(cmd: &str, own_group: bool) -> std::io::Result<CommandIo> {
    let mut command = Command::new("/bin/sh");
    if own_group {
        command.process_group(0);
    }
    let mut child = command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| std::io::Error::other(format!("starting the connect command: {e}")))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(std::io::Error::other("the connect command has no pipes"));
    };
    if let Some(stderr) = child.stderr.take() {
        // Ends when the command exits (its stderr closes).
        tokio::spawn(relay_stderr(stderr, RateLimited::new(), |line| {
            warn!(stderr = %crate::tools::clip(line), "connect command");
        }));
    }
    let group = own_group
        .then(|| child.id())
        .flatten()
        .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?));
    Ok(CommandIo {
        child: Some(child),
        group,
        stdout,
        stdin: Some(stdin),
    })
}

/// Longest connect-command stderr line kept; the rest of a longer line is
/// dropped. What the command prints is the workspace's (`kubectl exec`,
/// `ssh` relay what the far end writes): a line without an end must not
/// grow in the laptop's memory.
pub const STDERR_LINE_MAX: usize = 4096;
/// Connect-command stderr lines logged per second at most; the others are
/// counted, and the count is logged.
pub const STDERR_LINES_PER_SEC: u32 = 20;

/// A per-second budget of log lines.
#[derive(Debug)]
struct RateLimited {
    window: std::time::Instant,
    used: u32,
    dropped: u64,
}

impl RateLimited {
    fn new() -> Self {
        Self {
            window: std::time::Instant::now(),
            used: 0,
            dropped: 0,
        }
    }

    /// Whether one more line may be logged now.
    fn admit(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            if self.dropped > 0 {
                warn!(
                    dropped = self.dropped,
                    "connect command: stderr lines not logged (more than {STDERR_LINES_PER_SEC}/s)"
                );
            }
            *self = Self::new();
        }
        if self.used < STDERR_LINES_PER_SEC {
            self.used += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// Hands each line of `stderr` (at most [`STDERR_LINE_MAX`] bytes of it,
/// invalid UTF-8 replaced) to `emit`, within `budget`, until end of stream.
async fn relay_stderr<R: AsyncRead + Unpin>(
    stderr: R,
    mut budget: RateLimited,
    mut emit: impl FnMut(&str),
) {
    let mut reader = BufReader::new(stderr);
    let mut line: Vec<u8> = Vec::new();
    let mut flush = |line: &mut Vec<u8>| {
        if budget.admit() {
            emit(&String::from_utf8_lossy(line));
        }
        line.clear();
    };
    while let Ok(buf) = reader.fill_buf().await {
        if buf.is_empty() {
            if !line.is_empty() {
                flush(&mut line);
            }
            break;
        }
        let end = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..end.unwrap_or(buf.len())];
        let room = STDERR_LINE_MAX.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = end.map_or(buf.len(), |i| i + 1);
        reader.consume(used);
        if end.is_some() {
            flush(&mut line);
        }
    }
    if budget.dropped > 0 {
        warn!(
            dropped = budget.dropped,
            "connect command: stderr lines not logged (more than {STDERR_LINES_PER_SEC}/s)"
        );
    }
}

impl AsyncRead for CommandIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for CommandIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_write(cx, buf),
            None => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Closes the command's stdin (a pipe's only "shutdown"); tokio's
    /// `ChildStdin::poll_shutdown` would leave it open.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = match self.stdin.as_mut() {
            Some(stdin) => std::task::ready!(Pin::new(stdin).poll_flush(cx)),
            None => Ok(()),
        };
        drop(self.stdin.take());
        Poll::Ready(flushed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes() {
        let r = |s: &str| Route::parse(s, None).map_err(|e| e.to_string());
        assert_eq!(r("10.0.0.2:7676"), Ok(Route::Tcp("10.0.0.2:7676".into())));
        assert_eq!(
            r("tls://ws.example:7676"),
            Ok(Route::Tcp("ws.example:7676".into()))
        );
        let Ok(Route::WebSocket(t)) = r("wss://ingress.example.com/nexus") else {
            panic!("wss not parsed");
        };
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("ingress.example.com", 443, true)
        );
        let Ok(Route::WebSocket(t)) = r("ws://[::1]:8080/x") else {
            panic!("ws not parsed");
        };
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 8080, false));
        for bad in [
            "http://x/",
            "wss:///nexus",
            "wss://h:99999/",
            "tls://nohostport",
            "ws://a b/",
            "wss://h\n/",
        ] {
            assert!(r(bad).is_err(), "{bad} accepted");
        }
    }

    /// A hostile far end writes one endless line, invalid UTF-8 and a
    /// flood of lines to the connect command's stderr: the laptop keeps at
    /// most [`STDERR_LINE_MAX`] bytes of a line, goes on reading after
    /// bytes that are not UTF-8, and logs at most [`STDERR_LINES_PER_SEC`]
    /// lines a second. (It used to buffer a whole line, however long, and to
    /// stop reading, so stall the command, at the first invalid byte.)
    #[tokio::test]
    async fn connect_command_stderr_is_bounded() {
        use tokio::io::AsyncReadExt;
        let endless = tokio::io::repeat(b'a').take(64 << 20);
        let rest: &[u8] = b"\nnext\n\xff\xfe\nafter\n";
        let mut got = Vec::new();
        relay_stderr(endless.chain(rest), RateLimited::new(), |l| {
            got.push(l.to_owned());
        })
        .await;
        assert_eq!(
            got.len(),
            4,
            "{:?}",
            got.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(got[0].len(), STDERR_LINE_MAX);
        assert_eq!(got[1], "next");
        assert_eq!(got[3], "after");

        let flood = "x\n".repeat(10_000);
        let mut logged = 0u32;
        relay_stderr(flood.as_bytes(), RateLimited::new(), |_| logged += 1).await;
        assert_eq!(logged, STDERR_LINES_PER_SEC);
    }

    /// The pid of the process whose command line is exactly `args`.
    fn find_process(args: &[&str]) -> Option<u32> {
        let want: Vec<u8> = args
            .iter()
            .flat_map(|a| [a.as_bytes(), b"\0"].concat())
            .collect();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            (std::fs::read(e.path().join("cmdline")).ok()? == want).then_some(pid)
        })
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    /// A connect command whose far end ignores the end of its stdin (the
    /// workspace decides that): after the grace period, everything the
    /// command started is killed, not only `sh`. (Only `sh` was: the `ssh`
    /// or `kubectl` it ran lived on, one more per redial.)
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_connect_command_that_ignores_eof_is_killed_whole() -> Result<()> {
        let marker = format!(
            "{}.{}",
            1000 + std::process::id() % 1000,
            std::process::id()
        );
        // Two commands, so that sh cannot exec the last one.
        let io = spawn_command(&format!("sleep {marker}; true"), true)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let sleeper = loop {
            if let Some(pid) = find_process(&["sleep", &marker]) {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "sleep never started");
            tokio::task::yield_now().await;
        };
        drop(io);
        let deadline = std::time::Instant::now() + COMMAND_EXIT_GRACE + Duration::from_secs(10);
        while alive(sleeper) {
            assert!(
                std::time::Instant::now() < deadline,
                "the command's child outlived the grace period"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// A hostile `ws://` endpoint: a redirect is not followed (the route
    /// fails, naming the status), and after a real upgrade, a text message
    /// or a flood of pings ends the stream with an error or is answered
    /// without growing anything; binary data still arrives in order.
    #[tokio::test]
    async fn a_hostile_websocket_endpoint_gets_nowhere() -> Result<()> {
        use futures::{SinkExt, StreamExt};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_tungstenite::tungstenite::Message;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let route = Route::parse(&format!("ws://{addr}/nexus"), None)?;

        // 1. A redirect to somewhere else.
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await?;
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await?;
            tcp.write_all(
                b"HTTP/1.1 302 Found\r\nLocation: ws://192.0.2.1/evil\r\nContent-Length: 0\r\n\r\n",
            )
            .await?;
            Ok::<_, std::io::Error>(listener)
        });
        let refused = route.connect().await.err().map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("302")),
            "{refused:?}"
        );
        let listener = server.await??;

        // 2. A ping flood, binary data, then a text message.
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(ws::config()))
                .await
                .map_err(std::io::Error::other)?;
            for _ in 0..10_000 {
                ws.feed(Message::Ping(vec![0u8; 125].into()))
                    .await
                    .map_err(std::io::Error::other)?;
            }
            ws.send(Message::binary(b"data".to_vec()))
                .await
                .map_err(std::io::Error::other)?;
            ws.send(Message::text("not the tunnel"))
                .await
                .map_err(std::io::Error::other)?;
            // Keep the connection until the client gives up on it.
            while ws.next().await.is_some() {}
            Ok::<_, std::io::Error>(())
        });
        let mut io = route.connect().await?;
        let mut got = [0u8; 4];
        io.read_exact(&mut got).await?;
        assert_eq!(&got, b"data");
        let mut more = [0u8; 16];
        let text = io.read(&mut more).await;
        assert!(
            text.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::InvalidData),
            "{text:?}"
        );
        drop(io);
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        Ok(())
    }

    #[tokio::test]
    async fn command_conduit_is_the_commands_stdio() -> Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut io = Route::Command("cat".into()).connect().await?;
        io.write_all(b"ping").await?;
        io.shutdown().await?;
        let mut got = Vec::new();
        io.read_to_end(&mut got).await?;
        assert_eq!(got, b"ping");
        Ok(())
    }
}
