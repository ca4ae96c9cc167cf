//! `nexus-bench`: figures for the README, in one run.
//!
//! 1. floor: a bare TLS 1.3 + yamux request/response on loopback, in process,
//!    with the same pattern as a real call (a new stream per call, one frame
//!    each way);
//! 2. daemon path: a token fetched over `shim.sock` → shim → tunnel → proxy →
//!    policy → env source → back, with the real binaries and no CLI process
//!    start per call;
//! 3. 1,000 concurrent calls through the daemon path;
//! 4. idle RSS of both daemons;
//! 5. the daemon path through `delay_proxy.py` at an emulated RTT, against
//!    that link's own measured echo RTT.
//!
//! Build first: `cargo build --release --workspace`, then
//! `target/release/nexus-bench [--calls N] [--rtt-ms MS] [--json FILE]`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nexus_protocol::{
    Call, CallerContext, LinkStatus, LocalOp, LocalReply, LocalRequest, MAX_FRAME, Reply, Request,
    Secret,
};
use nexus_transport::tls::{ClientAuthorizer, client_config, server_config, server_name};
use nexus_transport::tokio_rustls::{TlsAcceptor, TlsConnector};
use nexus_transport::{Fingerprint, Identity, MuxConfig, mux, recv, send};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;

struct Args {
    calls: usize,
    concurrent: usize,
    rtt_ms: u64,
    json: Option<PathBuf>,
    delay_proxy: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        calls: 2000,
        concurrent: 1000,
        rtt_ms: 50,
        json: None,
        delay_proxy: PathBuf::from(env_or(
            "NEXUS_DELAY_PROXY",
            "../shared/tools/delay_proxy.py",
        )),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--calls" => a.calls = val()?.parse()?,
            "--concurrent" => a.concurrent = val()?.parse()?,
            "--rtt-ms" => a.rtt_ms = val()?.parse()?,
            "--json" => a.json = Some(val()?.into()),
            "--delay-proxy" => a.delay_proxy = val()?.into(),
            "-h" | "--help" => {
                println!(
                    "nexus-bench [--calls N] [--concurrent N] [--rtt-ms MS] [--json FILE] [--delay-proxy PATH]\n\
                     Run `cargo build --release --workspace` first; binaries are taken from this one's directory."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; see --help"),
        }
    }
    Ok(a)
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let bin = std::env::current_exe()?
        .parent()
        .context("no exe dir")?
        .to_path_buf();
    for b in ["nexus-shim", "nexus-agent-proxy"] {
        if !bin.join(b).exists() {
            bail!(
                "{} not found; run `cargo build --release --workspace` first",
                bin.join(b).display()
            );
        }
    }
    let mut report = serde_json::Map::new();
    println!(
        "nexus-bench: {} sequential calls per row, {} concurrent\n",
        args.calls, args.concurrent
    );

    let floor = floor(args.calls).await?;
    row("(a) bare TLS+yamux request/response", &floor);

    let setup = Setup::start(&bin, None).await?;
    let local = status_calls(&setup.sock, args.calls).await?;
    row("(b0) status over shim.sock (no tunnel)", &local);
    let path = daemon_calls(&setup.sock, args.calls).await?;
    row("(b) token via shim.sock -> tunnel -> proxy", &path);
    let (p50a, p50b) = (pct(&floor, 50.0), pct(&path, 50.0));
    println!(
        "    (b)/(a) p50 ratio {:.2} (target <= 1.3); (b) p99/p50 {:.2} (target <= 3)",
        p50b / p50a,
        pct(&path, 99.0) / p50b
    );

    let (ok, errors, wall) = concurrent_calls(&setup.sock, args.concurrent).await;
    println!(
        "(c) {} concurrent calls: {ok} ok, {errors} errors, {:.1} ms wall",
        args.concurrent,
        wall.as_secs_f64() * 1e3
    );
    let (rss_proxy, rss_shim) = (rss_kb(setup.proxy.id()), rss_kb(setup.shim.id()));
    println!(
        "(d) RSS after load: proxy {} KiB, shim {} KiB",
        rss_proxy, rss_shim
    );
    drop(setup);

    let idle = Setup::start(&bin, None).await?;
    daemon_calls(&idle.sock, 10).await?;
    let (idle_proxy, idle_shim) = (rss_kb(idle.proxy.id()), rss_kb(idle.shim.id()));
    println!(
        "(d) idle RSS (linked, 10 calls served): proxy {idle_proxy} KiB (target <= 15360), shim {idle_shim} KiB (target <= 10240)"
    );
    drop(idle);

    report.insert("floor_us".into(), summary(&floor));
    report.insert("daemon_path_us".into(), summary(&path));
    report.insert("local_status_us".into(), summary(&local));
    report.insert("concurrent".into(), serde_json::json!({"n": args.concurrent, "ok": ok, "errors": errors, "wall_ms": wall.as_secs_f64() * 1e3}));
    report.insert("rss_kib".into(), serde_json::json!({"proxy_idle": idle_proxy, "shim_idle": idle_shim, "proxy_after_load": rss_proxy, "shim_after_load": rss_shim}));

    if args.delay_proxy.exists() && args.rtt_ms > 0 {
        let echo_rtt = delayed_echo_rtt(&args.delay_proxy, args.rtt_ms, 50).await?;
        let delayed = Setup::start(&bin, Some((&args.delay_proxy, args.rtt_ms))).await?;
        let calls = daemon_calls(&delayed.sock, 50).await?;
        let (e50, c50) = (pct(&echo_rtt, 50.0), pct(&calls, 50.0));
        row(
            &format!(
                "(e) link echo RTT through delay_proxy at {} ms",
                args.rtt_ms
            ),
            &echo_rtt,
        );
        row("(e) token call through the same link", &calls);
        println!(
            "    one call = {:.2} RTT; overhead over 1 RTT: {:+.2} ms (target < 2 ms)",
            c50 / e50,
            (c50 - e50) / 1e3
        );
        report.insert("delay".into(), serde_json::json!({"rtt_ms": args.rtt_ms, "echo_us": summary(&echo_rtt), "call_us": summary(&calls)}));
    } else {
        println!(
            "(e) skipped: {} not found (pass --delay-proxy)",
            args.delay_proxy.display()
        );
    }
    if let Some(path) = args.json {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::Value::Object(report))?,
        )?;
    }
    Ok(())
}

fn pct(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = p / 100.0 * (s.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (rank - lo as f64)
}

fn summary(s: &[f64]) -> serde_json::Value {
    serde_json::json!({"n": s.len(), "p50": pct(s, 50.0), "p99": pct(s, 99.0)})
}

fn row(label: &str, s: &[f64]) {
    println!(
        "{label:<48} p50 {:>9.1} us   p99 {:>9.1} us   (n={})",
        pct(s, 50.0),
        pct(s, 99.0),
        s.len()
    );
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Debug)]
struct AnyClient;
impl ClientAuthorizer for AnyClient {
    fn authorize(&self, _: &Fingerprint) -> bool {
        true
    }
}

/// (a): the same per-call pattern as the product (new stream, one frame each
/// way) with nothing else: no daemon hop, no policy, no source.
async fn floor(calls: usize) -> Result<Vec<f64>> {
    let (server_id, client_id) = (
        Identity::generate("nexus-shim")?,
        Identity::generate("laptop")?,
    );
    let acceptor = TlsAcceptor::from(server_config(&server_id, Arc::new(AnyClient))?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let tls = acceptor.accept(tcp).await?;
        let (_h, mut inbound, _) =
            mux::start(tls, mux::Mode::Client, MuxConfig::PROXY, server_stop);
        while let Some(mut s) = inbound.recv().await {
            tokio::spawn(async move {
                if let Ok(call) = recv::<_, Call>(&mut s, MAX_FRAME).await {
                    let reply = match call.request {
                        Request::Token { name } => Reply::Token(Secret::from(name)),
                        other => Reply::error(
                            nexus_protocol::ErrorCode::BadRequest,
                            format!("{other:?}"),
                        ),
                    };
                    let _ = send(&mut s, &reply).await;
                    let _ = s.shutdown().await;
                }
            });
        }
        anyhow::Ok(())
    });
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (cfg, _) = client_config(&client_id, server_id.fingerprint())?;
    let tls = TlsConnector::from(cfg).connect(server_name(), tcp).await?;
    let (h, _in, _) = mux::start(tls, mux::Mode::Server, MuxConfig::SHIM, stop.clone());
    let mut out = Vec::with_capacity(calls);
    for i in 0..calls + 50 {
        let t = Instant::now();
        let mut s = h.open().await?;
        let call = Call {
            caller: CallerContext::default(),
            request: Request::Token {
                name: "demo".into(),
            },
        };
        send(&mut s, &call).await?;
        let _: Reply = recv(&mut s, MAX_FRAME).await?;
        if i >= 50 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    stop.cancel();
    server.abort();
    Ok(out)
}

async fn one_call(sock: &Path) -> Result<()> {
    let mut c = UnixStream::connect(sock).await?;
    send(
        &mut c,
        &LocalRequest {
            wait_ms: 5000,
            op: LocalOp::Forward(Request::Token {
                name: "demo".into(),
            }),
        },
    )
    .await?;
    match recv::<_, LocalReply>(&mut c, MAX_FRAME).await? {
        LocalReply::Reply(Reply::Token(v)) if v.expose() == b"bench-value" => Ok(()),
        other => bail!("unexpected reply {other:?}"),
    }
}

async fn status_calls(sock: &Path, calls: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let mut c = UnixStream::connect(sock).await?;
        send(
            &mut c,
            &LocalRequest {
                wait_ms: 0,
                op: LocalOp::Status,
            },
        )
        .await?;
        let _: LocalReply = recv(&mut c, MAX_FRAME).await?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

async fn daemon_calls(sock: &Path, calls: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(calls);
    for i in 0..calls + 20 {
        let t = Instant::now();
        one_call(sock).await?;
        if i >= 20 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

async fn concurrent_calls(sock: &Path, n: usize) -> (usize, usize, Duration) {
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let sock = sock.to_path_buf();
        set.spawn(async move { one_call(&sock).await });
    }
    let (mut ok, mut err) = (0, 0);
    while let Some(r) = set.join_next().await {
        if matches!(r, Ok(Ok(()))) {
            ok += 1
        } else {
            err += 1
        }
    }
    (ok, err, t.elapsed())
}

/// The "1 RTT" unit: a 32-byte echo through a delay proxy, on a kept-open connection.
async fn delayed_echo_rtt(script: &Path, rtt_ms: u64, n: usize) -> Result<Vec<f64>> {
    use tokio::io::AsyncReadExt;
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let target = echo.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 32];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let dp = DelayProxy::start(script, &target.to_string(), rtt_ms)?;
    let mut s = TcpStream::connect(("127.0.0.1", dp.port)).await?;
    s.set_nodelay(true)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 32];
    for i in 0..n + 3 {
        let t = Instant::now();
        s.write_all(&[7u8; 32]).await?;
        s.read_exact(&mut buf).await?;
        if i >= 3 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    server.abort();
    Ok(out)
}

struct DelayProxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl DelayProxy {
    fn start(script: &Path, target: &str, rtt_ms: u64) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port_file = dir.path().join("port");
        let child = Command::new("python3")
            .arg(script)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--target",
                target,
                "--rtt-ms",
                &rtt_ms.to_string(),
                "--port-file",
            ])
            .arg(&port_file)
            .stdout(Stdio::null())
            .spawn()
            .context("starting delay_proxy.py (python3)")?;
        let port = wait_for(
            || {
                std::fs::read_to_string(&port_file)
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            },
            "delay proxy port",
        )?;
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for<T>(mut f: impl FnMut() -> Option<T>, what: &str) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A shim and a proxy, paired and linked, serving token `demo` from env.
struct Setup {
    shim: Child,
    proxy: Child,
    sock: PathBuf,
    _delay: Option<DelayProxy>,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(bin: &Path, delay: Option<(&Path, u64)>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (state, config) = (dir.path().join("state"), dir.path().join("config"));
        let shim = Command::new(bin.join("nexus-shim"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("NEXUS_STATE_DIR", &state)
            .env("NEXUS_LOG", "warn")
            .spawn()?;
        let uri = wait_for(
            || std::fs::read_to_string(state.join("pairing.uri")).ok(),
            "pairing.uri",
        )?;
        let addr = uri
            .trim_start_matches("nexus://")
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        let pair = Command::new(bin.join("nexus-agent-proxy"))
            .args(["pair", uri.trim(), "--name", "bench"])
            .env("NEXUS_CONFIG_DIR", &config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !pair.success() {
            bail!("pairing failed");
        }
        let delay = match delay {
            Some((script, rtt)) => {
                let dp = DelayProxy::start(script, &addr, rtt)?;
                let record = config.join("workspaces/bench.toml");
                let text = std::fs::read_to_string(&record)?
                    .replace(&addr, &format!("127.0.0.1:{}", dp.port));
                std::fs::write(&record, text)?;
                Some(dp)
            }
            None => None,
        };
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            "[tokens.demo]\nsource = \"env:NEXUS_BENCH_TOKEN\"\n",
        )?;
        let proxy = Command::new(bin.join("nexus-agent-proxy"))
            // The per-tool call-rate limit (default 200/s) is a flood guard;
            // lifted here so the bench measures the path, not the guard.
            .args([
                "run",
                "--workspace",
                "bench",
                "--max-calls-per-second",
                "1000000",
                "--policy",
            ])
            .arg(&policy)
            .env("NEXUS_CONFIG_DIR", &config)
            .env("NEXUS_BENCH_TOKEN", "bench-value")
            .env("NEXUS_LOG", "warn")
            .spawn()?;
        let sock = state.join("shim.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = UnixStream::connect(&sock).await {
                send(
                    &mut c,
                    &LocalRequest {
                        wait_ms: 0,
                        op: LocalOp::Status,
                    },
                )
                .await?;
                if let Ok(LocalReply::Status(s)) = recv::<_, LocalReply>(&mut c, MAX_FRAME).await
                    && s.link == LinkStatus::Linked
                {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("the proxy did not link within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            shim,
            proxy,
            sock,
            _delay: delay,
            _dir: dir,
        })
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for c in [&mut self.proxy, &mut self.shim] {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}
