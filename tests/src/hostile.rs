//! Helpers for the hostile-workspace tests (`tests/hostile.rs`): the
//! workspace is the attacker, so these build what a malicious shim or local
//! caller would send (hand-made MessagePack, raw yamux frames, handshakes
//! with throwaway identities) and watch the victim from outside (`/proc`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nexus_protocol::{
    Call, CallerContext, HANDSHAKE_MAX_FRAME, MAX_FRAME, Reply, Request, ServerHello,
};
use nexus_transport::mux::{self, Mode, MuxExit};
use nexus_transport::tls;
use nexus_transport::tokio_rustls::TlsConnector;
use nexus_transport::{Identity, MuxConfig, MuxHandle, TransportError};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::raw::{FakeConn, within};
use crate::{DEADLINE, Daemon, Must, Output, poll, shim_bin, shim_once};

/// A length-prefixed frame around `body`, as both sides put on the wire.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).must("a body under 4 GiB");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Hand-written MessagePack, for messages our own types cannot express.
pub mod msgpack {
    /// Appends a map header for `n` entries.
    pub fn map(out: &mut Vec<u8>, n: u8) {
        assert!(n < 16, "fixmap only");
        out.push(0x80 | n);
    }

    /// Appends a string (fixstr, str8, str16 or str32 as its length needs).
    pub fn str(out: &mut Vec<u8>, s: &[u8]) {
        let len = s.len();
        if len < 32 {
            out.push(0xa0 | u8::try_from(len).unwrap_or(0));
        } else if let Ok(l) = u8::try_from(len) {
            out.extend_from_slice(&[0xd9, l]);
        } else if let Ok(l) = u16::try_from(len) {
            out.push(0xda);
            out.extend_from_slice(&l.to_be_bytes());
        } else {
            out.push(0xdb);
            let l = u32::try_from(len).unwrap_or(u32::MAX);
            out.extend_from_slice(&l.to_be_bytes());
        }
        out.extend_from_slice(s);
    }

    /// `{"bogus": [[[...nil...]]]}` with `depth` nested one-element arrays:
    /// an unknown field, which the decoder skips by recursing.
    pub fn nesting_bomb(depth: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(depth + 8);
        map(&mut out, 1);
        str(&mut out, b"bogus");
        out.resize(out.len() + depth, 0x91);
        out.push(0xc0);
        out
    }

    /// A `Call` as `nexus_protocol::encode` lays it out (a map with named
    /// fields; the request an externally tagged enum, i.e. a one-entry map
    /// from the variant name to its fields), with any variant name and an
    /// optional `name` field: `{"caller": {}, "request": {VARIANT: {..}}}`.
    pub fn call(variant: &[u8], name: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        map(&mut out, 2);
        str(&mut out, b"caller");
        map(&mut out, 0);
        str(&mut out, b"request");
        map(&mut out, 1);
        str(&mut out, variant);
        match name {
            Some(n) => {
                map(&mut out, 1);
                str(&mut out, b"name");
                str(&mut out, n);
            }
            None => map(&mut out, 0),
        }
        out
    }
}

/// A `Call` for token `name`, with an empty caller context.
pub fn token_call(name: &str) -> Call {
    Call {
        caller: CallerContext::default(),
        request: Request::Token {
            name: name.to_owned(),
        },
        key: None,
        received: Vec::new(),
    }
}

/// A fake shim's multiplexed link to the real proxy, through the real
/// transport crate. Dropping it closes the connection.
#[derive(Debug)]
pub struct Link {
    /// Opens streams toward the proxy.
    pub mux: MuxHandle,
    stop: CancellationToken,
    _driver: tokio::task::JoinHandle<MuxExit>,
}

impl Link {
    /// Starts yamux (shim side) on an accepted connection, with `limits`.
    pub fn start(conn: FakeConn, limits: MuxConfig) -> Self {
        let stop = CancellationToken::new();
        let (mux, _inbound, driver) = mux::start(conn, Mode::Server, limits, stop.clone());
        Self {
            mux,
            stop,
            _driver: driver,
        }
    }

    /// Sends `body` (any bytes) as the first frame of a new stream and reads
    /// one reply frame.
    ///
    /// # Errors
    /// Whatever the transport says: the stream or link closed, a bad frame.
    pub async fn call_raw(&self, body: &[u8]) -> Result<Reply, TransportError> {
        let s = self.mux.open().await?;
        let (mut rd, mut wr) = tokio::io::split(s);
        let bytes = frame(body);
        // Read while writing: the proxy may answer (and stop reading) long
        // before an oversized frame is through.
        let writing = async {
            let _ = wr.write_all(&bytes).await;
            let _ = wr.flush().await;
            std::future::pending::<()>().await;
        };
        let exchange = async {
            tokio::select! {
                reply = nexus_transport::recv(&mut rd, MAX_FRAME) => reply,
                () = writing => unreachable!("the write side never finishes"),
            }
        };
        let reply = within(DEADLINE, exchange).await;
        let _ = rd.unsplit(wr).shutdown().await;
        reply
    }

    /// Makes one well-formed call and reads its reply.
    ///
    /// # Errors
    /// As [`Link::call_raw`].
    pub async fn call(&self, call: &Call) -> Result<Reply, TransportError> {
        self.call_raw(&nexus_protocol::encode(call)).await
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// yamux frames written by hand, to open streams the way a hostile peer
/// would: without waiting for acknowledgements or honouring any limit.
pub mod yamux {
    /// Frame type: data.
    pub const DATA: u8 = 0;
    /// Frame type: window update.
    pub const WINDOW_UPDATE: u8 = 1;
    /// Frame type: ping.
    pub const PING: u8 = 2;
    /// Frame type: go away (the connection ends).
    pub const GO_AWAY: u8 = 3;
    /// Flag: opens a stream.
    pub const SYN: u16 = 1;
    /// Flag: acknowledges a stream or a ping.
    pub const ACK: u16 = 2;
    /// Flag: resets a stream.
    pub const RST: u16 = 8;

    /// The 12-byte header.
    pub fn header(kind: u8, flags: u16, stream: u32, len: u32) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[1] = kind;
        h[2..4].copy_from_slice(&flags.to_be_bytes());
        h[4..8].copy_from_slice(&stream.to_be_bytes());
        h[8..12].copy_from_slice(&len.to_be_bytes());
        h
    }

    /// A data frame carrying `body` on `stream`.
    pub fn data(flags: u16, stream: u32, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let mut out = header(DATA, flags, stream, len).to_vec();
        out.extend_from_slice(body);
        out
    }
}

/// One frame the proxy sent on a [`RawMux`].
#[derive(Debug)]
pub struct RawFrame {
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u16,
    /// Stream id.
    pub stream: u32,
    /// Length field (credit, ping value, go-away code, or body length).
    pub len: u32,
    /// Body (data frames only).
    pub body: Vec<u8>,
}

/// A shim-side yamux connection driven frame by frame by the test. A reader
/// task answers pings and queues what the proxy sends; a writer task owns the
/// write half. `closed` fires when either side of the connection fails.
#[derive(Debug)]
pub struct RawMux {
    out: mpsc::Sender<Vec<u8>>,
    frames: mpsc::UnboundedReceiver<RawFrame>,
    closed: CancellationToken,
    next_id: u32,
}

impl RawMux {
    /// Takes over an accepted connection (after the hello).
    pub fn start(conn: FakeConn) -> Self {
        let (mut rd, mut wr) = tokio::io::split(conn);
        let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(8);
        let (frames_tx, frames) = mpsc::unbounded_channel();
        let closed = CancellationToken::new();
        let writer_closed = closed.clone();
        tokio::spawn(async move {
            while let Some(bytes) = out_rx.recv().await {
                let ok = wr.write_all(&bytes).await.is_ok() && wr.flush().await.is_ok();
                if !ok {
                    break;
                }
            }
            writer_closed.cancel();
        });
        let pong = out.clone();
        let reader_closed = closed.clone();
        tokio::spawn(async move {
            loop {
                let mut h = [0u8; 12];
                if rd.read_exact(&mut h).await.is_err() {
                    break;
                }
                let kind = h[1];
                let flags = u16::from_be_bytes([h[2], h[3]]);
                let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
                let mut body = Vec::new();
                if kind == yamux::DATA {
                    body.resize(len as usize, 0);
                    if rd.read_exact(&mut body).await.is_err() {
                        break;
                    }
                }
                if kind == yamux::PING && flags & yamux::ACK == 0 {
                    let _ = pong.try_send(yamux::header(yamux::PING, yamux::ACK, 0, len).to_vec());
                    continue;
                }
                let _ = frames_tx.send(RawFrame {
                    kind,
                    flags,
                    stream,
                    len,
                    body,
                });
                if kind == yamux::GO_AWAY {
                    break;
                }
            }
            reader_closed.cancel();
        });
        Self {
            out,
            frames,
            closed,
            next_id: 2,
        }
    }

    /// A fresh stream id (the shim is the yamux server: even ids).
    pub fn next_stream(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        id
    }

    /// Queues bytes for the wire; `false` once the connection is gone.
    pub async fn send(&self, bytes: Vec<u8>) -> bool {
        if self.closed.is_cancelled() {
            return false;
        }
        tokio::select! {
            r = self.out.send(bytes) => r.is_ok(),
            () = self.closed.cancelled() => false,
        }
    }

    /// Whether the connection has ended (either direction failed, or the
    /// proxy said go away).
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resets `stream`.
    pub async fn reset(&self, stream: u32) -> bool {
        self.send(yamux::header(yamux::WINDOW_UPDATE, yamux::RST, stream, 0).to_vec())
            .await
    }

    /// Opens a stream carrying `body` as one frame and waits for the
    /// proxy's whole reply frame on it.
    pub async fn call(&mut self, body: &[u8]) -> Reply {
        let id = self.next_stream();
        assert!(
            self.send(yamux::data(yamux::SYN, id, &frame(body))).await,
            "the raw link closed before the call"
        );
        let mut got = Vec::new();
        let step = async {
            loop {
                let f = self.frames.recv().await.must("the raw link closed");
                if f.stream != id {
                    continue;
                }
                assert!(f.flags & yamux::RST == 0, "the proxy reset the call");
                got.extend_from_slice(&f.body);
                if let Some(header) = got.get(..4) {
                    let len = u32::from_be_bytes(header.try_into().must("4 bytes")) as usize;
                    if got.len() >= 4 + len {
                        return nexus_protocol::decode(&got[4..4 + len]).must("decoding the reply");
                    }
                }
            }
        };
        within(DEADLINE, step).await
    }

    /// Frames the proxy sent so far (data frames for the flood streams,
    /// window updates, go away), without waiting.
    pub fn drain(&mut self) -> Vec<RawFrame> {
        let mut v = Vec::new();
        while let Ok(f) = self.frames.try_recv() {
            v.push(f);
        }
        v
    }
}

/// Dials the shim at `address` (pinning `fingerprint`) with a throwaway
/// client identity, writes `bytes` (a hand-made hello frame) and reads the
/// answer: `Ok(Some(hello))`, `Ok(None)` when the shim closed without one
/// (with or without a TLS close_notify), or
/// `Err` for a TLS-level refusal.
pub async fn hello_bytes(
    address: &str,
    fingerprint: &str,
    bytes: &[u8],
) -> Result<Option<ServerHello>, String> {
    let identity = Identity::generate("nexus-agent-proxy").must("a throwaway identity");
    let pin = fingerprint.parse().must("the shim's fingerprint");
    let (config, _) = tls::client_config(&identity, pin).must("client config");
    let step = async {
        let tcp = TcpStream::connect(address).await.must("dialing the shim");
        let mut conn = TlsConnector::from(config)
            .connect(tls::server_name(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        conn.write_all(bytes)
            .await
            .map_err(|e| format!("writing: {e}"))?;
        conn.flush().await.map_err(|e| format!("flushing: {e}"))?;
        match nexus_transport::recv(&mut conn, HANDSHAKE_MAX_FRAME).await {
            Ok(h) => Ok(Some(h)),
            Err(TransportError::Closed) => Ok(None),
            // Closed without a TLS close_notify: still no answer.
            Err(TransportError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    };
    within(DEADLINE, step).await
}

/// The pid of a live process with `arg` among its arguments and, if given,
/// `env` (`NAME=VALUE`) in its environment: a test's unique policy path
/// finds its proxy, a unique `NEXUS_STATE_DIR` its shim.
pub fn find_pid(arg: &OsStr, env: Option<&OsStr>) -> Option<u32> {
    let has = |file: &Path, wanted: &[u8]| {
        std::fs::read(file).is_ok_and(|all| all.split(|b| *b == 0).any(|a| a == wanted))
    };
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse().ok()?;
        let dir = e.path();
        let found = has(&dir.join("cmdline"), arg.as_encoded_bytes())
            && env.is_none_or(|v| has(&dir.join("environ"), v.as_encoded_bytes()));
        found.then_some(pid)
    })
}

/// How many files `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Waits for the process started with `arg` on its command line.
#[track_caller]
pub fn wait_pid_with_arg(arg: &Path) -> u32 {
    poll(DEADLINE, || find_pid(arg.as_os_str(), None)).must(&format!(
        "a process with {} in its arguments",
        arg.display()
    ))
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// How many live processes have `pid` as their parent.
pub fn children_of(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|s| s.parse::<u32>().is_ok())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // `PID (COMM) STATE PPID ...`; COMM may hold spaces and parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok())
                == Some(pid)
        })
        .count()
}

/// Samples a measure on its own thread until stopped; keeps the maximum.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `measure` every `every`.
    pub fn start(every: Duration, measure: impl Fn() -> Option<u64> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let (s, m, n) = (stop.clone(), max.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(v) = measure() {
                    m.fetch_max(v, Ordering::Relaxed);
                    n.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(every);
            }
        });
        Self {
            stop,
            max,
            samples,
            thread: Some(thread),
        }
    }

    /// The largest value seen so far.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// How many samples were taken.
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// Stops sampling; returns the maximum.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.max()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Raises this process's soft limit on open files to the hard limit (the
/// tests hold a thousand sockets, and daemons they start inherit it).
pub fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

/// `nexus-shim serve` on loopback under `ulimit -n NOFILE`, started through
/// `sh` like a constrained container would run it.
#[derive(Debug)]
pub struct LimitedShim {
    shim: Daemon,
    state: PathBuf,
    _dir: TempDir,
}

impl LimitedShim {
    /// Starts the shim with at most `nofile` open files and waits until it
    /// has written its pairing URI and bound `shim.sock`.
    #[track_caller]
    pub fn start(nofile: u32) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-limited-")
            .tempdir()
            .must("creating the shim's temp dir");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).must("creating the shim's home");
        let state = dir.path().join("state");
        let mut cmd = crate::command("sh", &home);
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(shim_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("NEXUS_STATE_DIR", &state)
            .env("NEXUS_LOG", "info");
        let mut shim = Daemon::spawn(cmd, &dir.path().join("shim.log"));
        let ready = poll(DEADLINE, || {
            if state.join("shim.sock").exists() && state.join("pairing.uri").exists() {
                Some(true)
            } else {
                shim.try_exit().map(|_| false)
            }
        });
        assert!(
            ready == Some(true),
            "the limited shim did not become ready (exit: {:?})\n--- log ---\n{}",
            shim.try_exit(),
            shim.log()
        );
        Self {
            shim,
            state,
            _dir: dir,
        }
    }

    /// The tunnel's `HOST:PORT`, from the pairing URI.
    #[track_caller]
    pub fn address(&self) -> String {
        let uri = std::fs::read_to_string(self.state.join("pairing.uri")).must("pairing.uri");
        crate::PairingUri::parse(uri.trim()).address
    }

    /// The daemon's log.
    pub fn log(&self) -> String {
        self.shim.log()
    }

    /// Panics with the log if the daemon has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        self.shim.assert_running();
    }

    /// Runs `nexus-shim ARGS` against this daemon.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> Output {
        shim_once(&self.state, args)
    }
}

/// Runs `nexus-shim ARGS` for the daemon on `state`, giving up after
/// `limit`: `None` when it was still running then (it is killed).
pub fn shim_within(state: &Path, args: &[&str], limit: Duration) -> Option<Output> {
    use std::process::Stdio;
    let home = state.parent().unwrap_or(state);
    let mut cmd = crate::command(shim_bin(), home);
    cmd.args(args)
        .env("NEXUS_STATE_DIR", state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("nexus-shim {}", args.join(" "));
    let start = std::time::Instant::now();
    let mut child = cmd.spawn().must(&format!("starting {what}"));
    let finished = poll(limit, || child.try_wait().ok().flatten()).is_some();
    if !finished {
        let _ = child.kill();
    }
    let out = child.wait_with_output().must(&format!("collecting {what}"));
    finished.then(|| Output {
        what,
        exit_code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    })
}
