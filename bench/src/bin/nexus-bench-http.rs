//! `nexus-bench-http`: the cost of HTTP secret injection (issue 8), with
//! the real binaries and a real HTTPS upstream (`nexus_e2e::upstream`).
//!
//! The same upstream is called two ways, each over one kept-alive HTTP/1.1
//! connection: directly (TLS, trusting the upstream's test CA), and through
//! the shim's plain-HTTP endpoint (`$NEXUS_HTTP_URL/bench/...`), where the
//! laptop proxy adds `Authorization: Bearer <key>` and makes the request.
//!
//! (a) GET `/echo/x`: p50/p90/p99 both ways on loopback, and the added p50
//!     (target <= 1 RTT + 1 ms);
//! (b) the same with the tunnel through `delay_proxy.py` at an emulated RTT:
//!     the added latency minus that link's own echo RTT (target <= 1 ms);
//! (c) streaming throughput of GET `/bytes?n=...` both ways, median of 5
//!     (target >= 50 % of direct in the same run, and >= 100 MB/s).
//!
//! Build first: `cargo build --release --workspace`, then
//! `target/release/nexus-bench-http [--requests N] [--mb N] [--rtt-ms MS] [--json FILE]`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use nexus_bench::{
    AbortOnDrop, Pair, bin_dir, default_delay_proxy, delayed_echo_rtt, pct, wait_for,
};
use nexus_e2e::upstream::Upstream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The key the laptop injects; the benchmark checks the upstream saw it.
const KEY: &str = "sk-bench-0123456789abcdef";

/// The `[http.NAME]` the requests go through.
const API: &str = "bench";

struct Args {
    requests: usize,
    mb: u64,
    runs: usize,
    rtt_ms: u64,
    delayed_requests: usize,
    json: Option<PathBuf>,
    delay_proxy: PathBuf,
    direct_only: bool,
}

const HELP: &str = "\
nexus-bench-http [--requests N] [--mb N] [--runs N] [--rtt-ms MS] [--delayed-requests N]
                 [--delay-proxy PATH] [--json FILE] [--direct-only]
Latency and throughput of HTTP secret injection ($NEXUS_HTTP_URL/NAME/...) against
the same HTTPS upstream called directly.
  --requests N          timed GET /echo/x per side on loopback, after 200 warm-up (2000)
  --mb N                size of each streamed GET /bytes, MiB (200)
  --runs N              streamed GETs per side; the median is reported (5)
  --rtt-ms MS           emulated RTT of the tunnel for (b); 0 skips (b) (50)
  --delayed-requests N  timed GETs per side through the delayed tunnel (100)
  --delay-proxy PATH    delay_proxy.py (NEXUS_DELAY_PROXY, ../shared/tools/delay_proxy.py)
  --json FILE           also write the figures as JSON
  --direct-only         measure the direct side only (no shim, no proxy)
Run `cargo build --release --workspace` first; binaries are taken from this one's directory.";

fn parse_args() -> Result<Args> {
    let mut a = Args {
        requests: 2000,
        mb: 200,
        runs: 5,
        rtt_ms: 50,
        delayed_requests: 100,
        json: None,
        delay_proxy: default_delay_proxy(),
        direct_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--requests" => a.requests = val()?.parse()?,
            "--mb" => a.mb = val()?.parse()?,
            "--runs" => a.runs = val()?.parse()?,
            "--rtt-ms" => a.rtt_ms = val()?.parse()?,
            "--delayed-requests" => a.delayed_requests = val()?.parse()?,
            "--json" => a.json = Some(val()?.into()),
            "--delay-proxy" => a.delay_proxy = val()?.into(),
            "--direct-only" => a.direct_only = true,
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; see --help"),
        }
    }
    ensure!(
        a.requests > 0 && a.runs > 0,
        "--requests and --runs must be > 0"
    );
    Ok(a)
}

/// One kept-alive HTTP/1.1 connection.
struct Client {
    send: http1::SendRequest<Empty<Bytes>>,
    host: String,
    /// Prepended to every path (the shim's capability segment and API name).
    prefix: String,
    _conn: AbortOnDrop<()>,
}

impl Client {
    async fn over<T>(io: T, host: &str, prefix: &str) -> Result<Self>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = http1::handshake(TokioIo::new(io)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            send,
            host: host.to_owned(),
            prefix: prefix.to_owned(),
            _conn: AbortOnDrop(conn),
        })
    }

    /// Straight to the upstream, over TLS.
    async fn direct(up: &Upstream) -> Result<Self> {
        let host = format!("localhost:{}", up.addr().port());
        Self::over(up.connect().await?, &host, "").await
    }

    /// To `$NEXUS_HTTP_URL/NAME`, plain HTTP on the workspace's loopback.
    async fn shim(http_url: &str, name: &str) -> Result<Self> {
        let rest = http_url
            .strip_prefix("http://")
            .with_context(|| format!("http.url is not http://...: {http_url:?}"))?;
        let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the shim's HTTP endpoint {addr}"))?;
        tcp.set_nodelay(true)?;
        let base = path.trim_matches('/');
        let prefix = if base.is_empty() {
            format!("/{name}")
        } else {
            format!("/{base}/{name}")
        };
        Self::over(tcp, addr, &prefix).await
    }

    /// GET `path`, reading the whole body; its status and length.
    async fn get(&mut self, path: &str) -> Result<(StatusCode, u64)> {
        self.send.ready().await?;
        let req = Request::get(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, &self.host)
            .body(Empty::new())?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                len += data.len() as u64;
            }
        }
        Ok((status, len))
    }

    /// `n` timed GETs of `path` after `warm` untimed ones, in ms.
    async fn timed(&mut self, path: &str, warm: usize, n: usize) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(n);
        for i in 0..warm + n {
            let t = Instant::now();
            let (status, _) = self.get(path).await?;
            ensure!(status == StatusCode::OK, "GET {path}: {status}");
            if i >= warm {
                out.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(out)
    }

    /// MB/s of `runs` GETs of `bytes` bytes, sorted.
    async fn throughput(&mut self, bytes: u64, runs: usize) -> Result<Vec<f64>> {
        let path = format!("/bytes?n={bytes}");
        let mut rates = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let (status, len) = self.get(&path).await?;
            ensure!(
                status == StatusCode::OK && len == bytes,
                "GET {path}: {status}, {len} bytes"
            );
            rates.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e6);
        }
        rates.sort_by(f64::total_cmp);
        Ok(rates)
    }
}

fn row(label: &str, ms: &[f64]) {
    println!(
        "{label:<50} p50 {:>8.3} ms  p90 {:>8.3} ms  p99 {:>8.3} ms  (n={})",
        pct(ms, 50.0),
        pct(ms, 90.0),
        pct(ms, 99.0),
        ms.len()
    );
}

fn summary(ms: &[f64]) -> serde_json::Value {
    serde_json::json!({"n": ms.len(), "p50": pct(ms, 50.0), "p90": pct(ms, 90.0), "p99": pct(ms, 99.0)})
}

/// The middle of sorted `rates`.
fn median(rates: &[f64]) -> f64 {
    rates[rates.len() / 2]
}

fn rates_row(label: &str, rates: &[f64]) {
    println!(
        "{label:<50} median {:>7.0} MB/s (min {:.0}, max {:.0})",
        median(rates),
        rates[0],
        rates[rates.len() - 1]
    );
}

/// A paired shim and proxy serving `policy`, and the shim's `http.url`.
async fn start_pair(
    bin: &std::path::Path,
    policy: &str,
    delay: Option<(&std::path::Path, u64)>,
) -> Result<(Pair, String)> {
    let pair = Pair::start(bin, policy, &[("NEXUS_BENCH_KEY", KEY)], delay).await?;
    let file = pair.shim.state.join("http.url");
    let url = wait_for(
        || Some(std::fs::read_to_string(&file).ok()?.trim().to_owned()),
        "STATE/http.url (does this nexus-shim serve HTTP injection?)",
    )?;
    Ok((pair, url))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let up = Upstream::start("api.test").context("starting the HTTPS upstream")?;
    let ca = dir.path().join("ca.pem");
    up.write_ca(&ca)?;
    let bytes = args.mb << 20;
    let mut report = serde_json::Map::new();
    println!(
        "nexus-bench-http: {} GETs per side, {} x {} MiB streamed, upstream {}\n",
        args.requests,
        args.runs,
        args.mb,
        up.url()
    );

    let mut direct = Client::direct(&up).await?;
    let d = direct.timed("/echo/x", 200, args.requests).await?;
    row("(a) GET /echo/x direct (TLS, keep-alive)", &d);
    report.insert("direct_ms".into(), summary(&d));

    if args.direct_only {
        let rates = direct.throughput(bytes, args.runs).await?;
        rates_row(&format!("(c) GET {} MiB direct", args.mb), &rates);
        report.insert("direct_mb_s".into(), serde_json::json!(rates));
        return write_json(args.json, report);
    }

    let bin = bin_dir()?;
    let policy = up.policy(API, "NEXUS_BENCH_KEY", &ca);
    let (pair, url) = start_pair(&bin, &policy, None).await?;
    let mut shim = Client::shim(&url, API).await?;
    // The injection works before anything is timed: the upstream saw the key.
    let before = up.requests().len();
    let (status, _) = shim.get("/echo/check").await?;
    let seen = up.requests();
    let check = seen.get(before..).unwrap_or_default();
    let injected = check.iter().any(|r| {
        r.path == "/echo/check"
            && r.header("authorization") == Some(format!("Bearer {KEY}").as_bytes())
    });
    ensure!(
        status == StatusCode::OK && injected,
        "GET {url}/{API}/echo/check: {status}; the upstream did not see the injected key"
    );
    let s = shim.timed("/echo/x", 200, args.requests).await?;
    row("(a) GET /echo/x via $NEXUS_HTTP_URL/bench", &s);
    let added = pct(&s, 50.0) - pct(&d, 50.0);
    println!("    added latency at p50: {added:.3} ms (target <= 1 RTT + 1 ms; loopback RTT ~0)");
    report.insert("shim_ms".into(), summary(&s));
    report.insert("added_p50_ms".into(), serde_json::json!(added));

    let dr = direct.throughput(bytes, args.runs).await?;
    rates_row(&format!("(c) GET {} MiB direct", args.mb), &dr);
    let sr = shim.throughput(bytes, args.runs).await?;
    rates_row(&format!("(c) GET {} MiB via the shim", args.mb), &sr);
    let share = 100.0 * median(&sr) / median(&dr);
    println!(
        "    through the shim {share:.0}% of direct (target >= 50% in the same run): {}; >= 100 MB/s: {}",
        nexus_bench::verdict(share >= 50.0),
        nexus_bench::verdict(median(&sr) >= 100.0)
    );
    report.insert("direct_mb_s".into(), serde_json::json!(dr));
    report.insert("shim_mb_s".into(), serde_json::json!(sr));
    drop(shim);
    drop(pair);

    if args.rtt_ms > 0 && args.delay_proxy.exists() {
        let n = args.delayed_requests;
        let echo: Vec<f64> = delayed_echo_rtt(&args.delay_proxy, args.rtt_ms, n.min(50))
            .await?
            .into_iter()
            .map(|us| us / 1e3)
            .collect();
        let (pair, url) = start_pair(&bin, &policy, Some((&args.delay_proxy, args.rtt_ms))).await?;
        let mut shim = Client::shim(&url, API).await?;
        let dd = direct.timed("/echo/x", 20, n).await?;
        let sd = shim.timed("/echo/x", 5, n).await?;
        row(
            &format!(
                "(b) link echo RTT through delay_proxy at {} ms",
                args.rtt_ms
            ),
            &echo,
        );
        row("(b) GET /echo/x direct", &dd);
        row("(b) GET /echo/x via the shim, tunnel delayed", &sd);
        let added = pct(&sd, 50.0) - pct(&dd, 50.0);
        let over = added - pct(&echo, 50.0);
        println!(
            "    added at p50: {added:.3} ms = {:.2} RTT; minus 1 RTT: {over:+.3} ms (target <= 1 ms)",
            added / pct(&echo, 50.0)
        );
        report.insert(
            "delay".into(),
            serde_json::json!({"rtt_ms": args.rtt_ms, "echo_ms": summary(&echo), "direct_ms": summary(&dd), "shim_ms": summary(&sd), "added_p50_ms": added, "added_minus_rtt_ms": over}),
        );
        drop(shim);
        drop(pair);
    } else {
        println!(
            "(b) skipped: --rtt-ms 0 or {} not found (--delay-proxy)",
            args.delay_proxy.display()
        );
    }
    write_json(args.json, report)
}

fn write_json(
    path: Option<PathBuf>,
    report: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::Value::Object(report))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
