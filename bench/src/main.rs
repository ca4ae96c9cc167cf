//! `nexus-bench`: figures for the README, in one run.
//!
//! 1. floor: a bare TLS 1.3 + yamux request/response on loopback, in process,
//!    with the same pattern as a real call (a new stream per call, one frame
//!    each way);
//! 2. daemon path: a token fetched over `shim.sock` → shim → tunnel → proxy →
//!    policy → env source → back, with the real binaries and no CLI process
//!    start per call;
//! 3. 1,000 concurrent calls through the daemon path;
//! 4. idle RSS of both daemons (the static LTO shim when it was built, else
//!    the release one);
//! 5. the daemon path through `delay_proxy.py` at an emulated RTT, against
//!    that link's own measured echo RTT.
//!
//! Build first: `cargo build --release --workspace`, then
//! `target/release/nexus-bench [--calls N] [--rtt-ms MS] [--json FILE]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nexus_bench::{
    Pair, TOKEN_VALUE, bin_dir, default_delay_proxy, delayed_echo_rtt, older_than, pct, rss_kib,
    static_shim, verdict,
};
use nexus_protocol::{
    Call, CallerContext, LocalOp, LocalReply, LocalRequest, MAX_FRAME, Reply, Request, Secret,
};
use nexus_transport::tls::{ClientAuthorizer, client_config, server_config, server_name};
use nexus_transport::tokio_rustls::{TlsAcceptor, TlsConnector};
use nexus_transport::{Fingerprint, Identity, MuxConfig, mux, recv, send};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;

const POLICY: &str = "[tokens.demo]\nsource = \"env:NEXUS_BENCH_TOKEN\"\n";

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
        delay_proxy: default_delay_proxy(),
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

#[tokio::main]
async fn main() -> Result<()> {
    // Child mode: the other end of row (h), a process that echoes.
    if let Some(path) = std::env::args().skip_while(|a| a != "--echo").nth(1) {
        return echo(Path::new(&path));
    }
    let args = parse_args()?;
    let bin = bin_dir()?;
    let mut report = serde_json::Map::new();
    println!(
        "nexus-bench: {} sequential calls per row, {} concurrent\n",
        args.calls, args.concurrent
    );

    let floor = floor(args.calls).await?;
    row("(a) bare TLS+yamux request/response", &floor);
    let hop = process_hop(args.calls)?;
    row("(h) one round trip to another process", &hop);

    let setup = Pair::start(&bin, POLICY, &[], None).await?;
    let local = status_calls(setup.sock(), args.calls).await?;
    row("(b0) status over shim.sock (no tunnel)", &local);
    let path = daemon_calls(setup.sock(), args.calls).await?;
    row("(b) token via shim.sock -> tunnel -> proxy", &path);
    let (p50a, p50b) = (pct(&floor, 50.0), pct(&path, 50.0));
    let (ratio, tail) = (p50b / p50a, pct(&path, 99.0) / p50b);
    println!(
        "    (b)/(a) p50 ratio {ratio:.2} (target <= 1.5): {}; (b) p99/p50 {tail:.2} (target <= 3): {}",
        verdict(ratio <= 1.5),
        verdict(tail <= 3.0)
    );

    let (ok, errors, wall) = concurrent_calls(setup.sock(), args.concurrent).await;
    println!(
        "(c) {} concurrent calls: {ok} ok, {errors} errors, {:.1} ms wall (target: all answered): {}",
        args.concurrent,
        wall.as_secs_f64() * 1e3,
        verdict(errors == 0)
    );
    let (rss_proxy, rss_shim) = (rss_kib(setup.proxy.pid()), rss_kib(setup.shim.pid()));
    println!(
        "(d) RSS after load: proxy {} KiB, shim {} KiB",
        rss_proxy, rss_shim
    );
    drop(setup);

    let idle = idle_rss(&bin).await?;

    report.insert("floor_us".into(), summary(&floor));
    report.insert("process_hop_us".into(), summary(&hop));
    report.insert("daemon_path_us".into(), summary(&path));
    report.insert("local_status_us".into(), summary(&local));
    report.insert("concurrent".into(), serde_json::json!({"n": args.concurrent, "ok": ok, "errors": errors, "wall_ms": wall.as_secs_f64() * 1e3}));
    report.insert("rss_kib".into(), serde_json::json!({"proxy_idle": idle.proxy, "shim_idle": idle.shim, "shim_idle_binary": idle.shim_binary, "shim_idle_release": idle.release_shim, "proxy_after_load": rss_proxy, "shim_after_load": rss_shim}));

    if args.delay_proxy.exists() && args.rtt_ms > 0 {
        let echo_rtt = delayed_echo_rtt(&args.delay_proxy, args.rtt_ms, 50).await?;
        let delayed =
            Pair::start(&bin, POLICY, &[], Some((&args.delay_proxy, args.rtt_ms))).await?;
        let calls = daemon_calls(delayed.sock(), 50).await?;
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

/// Idle RSS in KiB, linked and 10 calls served.
struct IdleRss {
    proxy: u64,
    /// The shim users run: the static LTO build when present.
    shim: u64,
    shim_binary: String,
    /// The release shim too, when the static one was measured.
    release_shim: Option<u64>,
}

/// (d): the static LTO shim is what `connect` uploads and releases ship, so
/// the target applies to it when it was built; the release shim (not
/// stripped, not LTO) is printed beside it for comparison, or judged alone.
async fn idle_rss(bin: &Path) -> Result<IdleRss> {
    let release = bin.join("nexus-shim");
    let mut shims = vec![(release.clone(), "release shim")];
    if let Some(s) = static_shim(bin) {
        shims.insert(0, (s, "static LTO shim"));
    }
    let mut measured = Vec::new();
    for (program, label) in &shims {
        let idle = Pair::start_shim(bin, program, POLICY, &[], None).await?;
        daemon_calls(idle.sock(), 10).await?;
        let rss = (rss_kib(idle.proxy.pid()), rss_kib(idle.shim.pid()));
        measured.push(rss);
        let note = match (*program == release, shims.len() > 1) {
            (true, true) => " (not what ships; for comparison)",
            (true, false) => " (no static LTO shim: build it with scripts/build-static.sh)",
            (false, _) if older_than(program, &release) => {
                " (older than the release build: rerun scripts/build-static.sh)"
            }
            (false, _) => "",
        };
        println!(
            "(d) idle RSS (linked, 10 calls served), {label} {}{note}: {} KiB",
            program.display(),
            rss.1
        );
    }
    let (proxy, shim) = measured[0];
    println!(
        "(d) idle RSS: proxy {proxy} KiB (target <= 15360), {} {shim} KiB (target <= 10240): {}",
        shims[0].1,
        verdict(proxy <= 15360 && shim <= 10240)
    );
    Ok(IdleRss {
        proxy,
        shim,
        shim_binary: shims[0].0.display().to_string(),
        release_shim: measured.get(1).map(|m| m.1),
    })
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
            key: None,
            received: Vec::new(),
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
        LocalReply::Reply(Reply::Token(v)) if v.expose() == TOKEN_VALUE.as_bytes() => Ok(()),
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

/// Row (h): what one round trip between two processes costs on this machine
/// (64 bytes each way over a Unix socket, blocking reads, no runtime), the
/// unit the daemon path pays twice more than the in-process floor (a): its
/// caller and the shim, the shim and the proxy are separate processes.
fn process_hop(calls: usize) -> Result<Vec<f64>> {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("echo.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--echo")
        .arg(&path)
        .spawn()
        .context("starting the echo process")?;
    let (mut conn, _) = listener.accept()?;
    let mut buf = [7u8; 64];
    let mut out = Vec::with_capacity(calls);
    for i in 0..calls + 50 {
        let t = Instant::now();
        conn.write_all(&buf)?;
        conn.read_exact(&mut buf)?;
        if i >= 50 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(conn);
    let _ = child.wait();
    Ok(out)
}

/// The echo process of row (h): answers every 64 bytes until the end.
fn echo(path: &Path) -> Result<()> {
    use std::io::{Read, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(path)?;
    let mut buf = [0u8; 64];
    while conn.read_exact(&mut buf).is_ok() {
        conn.write_all(&buf)?;
    }
    Ok(())
}
