//! `nexus-bench-reliability`: the figures of issue 7, with the real binaries.
//!
//! 1. proxy RSS with 10 linked workspaces, idle and under load (every
//!    workspace making calls at once);
//! 2. recovery after a link is restored: 100 cut/restore cycles through a
//!    controllable relay (`nexus_e2e::link`); the time from restore to the
//!    answer of a call issued during the outage, p50/p99;
//! 3. throughput of one workspace alone, then while another workspace is
//!    flooded by a client opening calls as fast as one core allows. The
//!    flood client and the flooded shim are pinned to CPU 1 (`taskset`); the
//!    proxy, the measured shim and its client to CPU 0.
//!
//! Build first: `cargo build --release --workspace`, then
//! `target/release/nexus-bench-reliability [--cycles N] [--secs S]`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nexus_e2e::link::LinkControl;
use nexus_protocol::{LinkStatus, LocalOp, LocalReply, LocalRequest, MAX_FRAME, Reply, Request};
use nexus_transport::{recv, send};
use tokio::net::UnixStream;

const POLICY: &str = "[tokens.demo]\nsource = \"env:NEXUS_BENCH_TOKEN\"\n";

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // Child mode: the flood client, pinned by the parent.
    if let Some(i) = args.iter().position(|a| a == "--flood") {
        let sock = PathBuf::from(args.get(i + 1).context("--flood SOCK SECS")?);
        let secs: u64 = args.get(i + 2).context("--flood SOCK SECS")?.parse()?;
        let n = flood(&sock, Duration::from_secs(secs)).await;
        println!("{n}");
        return Ok(());
    }
    let flag = |name: &str, default: u64| -> Result<u64> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args.get(i + 1).context("a value")?.parse()?),
            None => Ok(default),
        }
    };
    let cycles = flag("--cycles", 100)?;
    let secs = flag("--secs", 5)?;
    let bin = std::env::current_exe()?
        .parent()
        .context("no bin dir")?
        .to_path_buf();
    for b in ["nexus-shim", "nexus-agent-proxy"] {
        if !bin.join(b).is_file() {
            bail!("{b} not found next to this binary: cargo build --release --workspace");
        }
    }
    println!("## 1. proxy RSS with 10 workspaces");
    ten_workspaces(&bin).await?;
    println!("## 2. recovery after restore, {cycles} cut/restore cycles");
    recovery(&bin, cycles).await?;
    println!("## 3. throughput of one workspace while another is flooded ({secs} s each)");
    println!("(a) call-rate guard lifted: the flood is served in full");
    isolation(&bin, secs, "1000000").await?;
    println!("(b) default guard (200 calls/s per tool per workspace): both are capped by it");
    isolation(&bin, secs, "200").await?;
    Ok(())
}

/// A running `nexus-shim serve` with its own state dir.
struct Shim {
    child: Child,
    sock: PathBuf,
    uri: String,
}

impl Shim {
    fn start(bin: &Path, dir: &Path, name: &str, cpu: Option<&str>) -> Result<Self> {
        let state = dir.join(name);
        let mut cmd = pinned(cpu, &bin.join("nexus-shim"));
        let child = cmd
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("NEXUS_STATE_DIR", &state)
            .env("NEXUS_LOG", "warn")
            .spawn()?;
        let uri = wait_for(
            || std::fs::read_to_string(state.join("pairing.uri")).ok(),
            "pairing.uri",
        )?;
        Ok(Self {
            child,
            sock: state.join("shim.sock"),
            uri: uri.trim().to_owned(),
        })
    }

    fn address(&self) -> String {
        self.uri
            .trim_start_matches("nexus://")
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        term(&mut self.child);
    }
}

fn term(c: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let _ = c.wait();
}

/// `program`, under `taskset -c CPU` when asked.
fn pinned(cpu: Option<&str>, program: &Path) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn pair(bin: &Path, config: &Path, uri: &str, name: &str) -> Result<()> {
    let ok = Command::new(bin.join("nexus-agent-proxy"))
        .args(["pair", uri, "--name", name])
        .env("NEXUS_CONFIG_DIR", config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("pairing {name} failed");
    }
    Ok(())
}

struct Proxy(Child);

impl Proxy {
    fn start(bin: &Path, dir: &Path, names: &[String], cpu: Option<&str>) -> Result<Self> {
        Self::start_with(bin, dir, names, cpu, "1000000")
    }

    /// With `rate` as `--max-calls-per-second` (the per-tool guard).
    fn start_with(
        bin: &Path,
        dir: &Path,
        names: &[String],
        cpu: Option<&str>,
        rate: &str,
    ) -> Result<Self> {
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, POLICY)?;
        let mut cmd = pinned(cpu, &bin.join("nexus-agent-proxy"));
        cmd.arg("run");
        for n in names {
            cmd.args(["--workspace", n]);
        }
        // The call-rate guard is lifted unless asked: a flood is then
        // served, the worst case for the other workspace.
        let child = cmd
            .args(["--max-calls-per-second", rate, "--policy"])
            .arg(&policy)
            .env("NEXUS_CONFIG_DIR", dir.join("config"))
            .env("NEXUS_BENCH_TOKEN", "bench-value")
            .env("NEXUS_LOG", "warn")
            .spawn()?;
        Ok(Self(child))
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.0.id())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        term(&mut self.0);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn wait_for<T>(mut f: impl FnMut() -> Option<T>, what: &str) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn linked(sock: &Path) -> bool {
    let Ok(mut c) = UnixStream::connect(sock).await else {
        return false;
    };
    let req = LocalRequest {
        wait_ms: 0,
        op: LocalOp::Status,
    };
    if send(&mut c, &req).await.is_err() {
        return false;
    }
    matches!(recv::<_, LocalReply>(&mut c, MAX_FRAME).await, Ok(LocalReply::Status(s)) if s.link == LinkStatus::Linked)
}

async fn wait_link(sock: &Path, up: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while linked(sock).await != up {
        if Instant::now() > deadline {
            bail!("link never went {}", if up { "up" } else { "down" });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// One token call; whether it returned the value.
async fn call(sock: &Path, wait_ms: u64) -> bool {
    let attempt = async {
        let mut c = UnixStream::connect(sock).await.ok()?;
        let req = LocalRequest {
            wait_ms,
            op: LocalOp::Forward(Request::Token {
                name: "demo".into(),
            }),
        };
        send(&mut c, &req).await.ok()?;
        recv::<_, LocalReply>(&mut c, MAX_FRAME).await.ok()
    };
    matches!(attempt.await, Some(LocalReply::Reply(Reply::Token(v))) if v.expose() == b"bench-value")
}

/// Calls from `workers` concurrent callers for `dur`: (ok, failed).
async fn load(sock: &Path, workers: usize, dur: Duration) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (sock, ok, bad) = (sock.to_path_buf(), ok.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                if call(&sock, 5000).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed))
}

/// The flood client: 64 callers opening calls back to back, no waiting for
/// a link; returns how many calls it opened.
async fn flood(sock: &Path, dur: Duration) -> u64 {
    let opened = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (sock, opened, stop) = (sock.to_path_buf(), opened.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = call(&sock, 0).await;
                opened.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    opened.load(Ordering::Relaxed)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn ten_workspaces(bin: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let mut shims = Vec::new();
    let mut names = Vec::new();
    for i in 0..10 {
        let name = format!("ws{i}");
        let shim = Shim::start(bin, dir.path(), &name, None)?;
        pair(bin, &config, &shim.uri, &name)?;
        shims.push(shim);
        names.push(name);
    }
    let proxy = Proxy::start(bin, dir.path(), &names, None)?;
    for s in &shims {
        wait_link(&s.sock, true).await?;
    }
    // A few calls each, so that every code path has been touched.
    for s in &shims {
        for _ in 0..10 {
            call(&s.sock, 5000).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = proxy.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        let pid = proxy.0.id();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut runs = Vec::new();
    for s in &shims {
        let sock = s.sock.clone();
        runs.push(tokio::spawn(async move {
            load(&sock, 8, Duration::from_secs(3)).await
        }));
    }
    let (mut ok, mut bad) = (0, 0);
    for r in runs {
        let (o, b) = r.await?;
        ok += o;
        bad += b;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    println!(
        "proxy RSS, 10 workspaces linked: idle {:.1} MiB; under load (10 x 8 callers, 3 s, {ok} calls ok, {bad} failed) peak {:.1} MiB",
        idle as f64 / 1024.0,
        peak.load(Ordering::Relaxed) as f64 / 1024.0
    );
    drop(proxy);
    Ok(())
}

async fn recovery(bin: &Path, cycles: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let shim = Shim::start(bin, dir.path(), "ws", None)?;
    let link = LinkControl::start(shim.address().parse()?);
    let uri = shim.uri.replace(&shim.address(), &link.address());
    pair(bin, &config, &uri, "ws")?;
    let _proxy = Proxy::start(bin, dir.path(), &["ws".into()], None)?;
    wait_link(&shim.sock, true).await?;
    let mut ms = Vec::new();
    let mut lost = 0;
    for _ in 0..cycles {
        link.cut();
        wait_link(&shim.sock, false).await?;
        let sock = shim.sock.clone();
        let held = tokio::spawn(async move { call(&sock, 30_000).await });
        // Let the call reach the shim and wait there.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let restored = Instant::now();
        link.restore();
        if held.await? {
            ms.push(restored.elapsed().as_secs_f64() * 1e3);
        } else {
            lost += 1;
        }
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "recovery (restore -> answer of a call held through the outage): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} of {cycles} answered, {lost} failed; {} connections",
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN),
        ms.len(),
        link.accepted()
    );
    Ok(())
}

async fn isolation(bin: &Path, secs: u64, rate: &str) -> Result<()> {
    // This process (the quiet workspace's callers) joins CPU 0 too.
    let pinned_self = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()?
        .success();
    if !pinned_self {
        bail!("taskset failed: install util-linux");
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let quiet = Shim::start(bin, dir.path(), "quiet", Some("0"))?;
    let noisy = Shim::start(bin, dir.path(), "noisy", Some("1"))?;
    pair(bin, &config, &quiet.uri, "quiet")?;
    pair(bin, &config, &noisy.uri, "noisy")?;
    let _proxy = Proxy::start_with(
        bin,
        dir.path(),
        &["quiet".into(), "noisy".into()],
        Some("0"),
        rate,
    )?;
    wait_link(&quiet.sock, true).await?;
    wait_link(&noisy.sock, true).await?;
    let dur = Duration::from_secs(secs);
    // Warm up, then the unloaded figure.
    load(&quiet.sock, 4, Duration::from_secs(1)).await;
    let (alone, alone_bad) = load(&quiet.sock, 4, dur).await;
    let exe = std::env::current_exe()?;
    let flooder = pinned(Some("1"), &exe)
        .arg("--flood")
        .arg(&noisy.sock)
        .arg((secs + 2).to_string())
        .stdout(Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (loaded, loaded_bad) = load(&quiet.sock, 4, dur).await;
    let out = flooder.wait_with_output()?;
    let flood_calls: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let rate = |n: u64| n as f64 / dur.as_secs_f64();
    println!(
        "quiet workspace, 4 callers: alone {:.0} calls/s answered ({alone_bad} refused or failed); while the other is flooded {:.0} calls/s answered ({loaded_bad} refused or failed) = {:.1}% of alone",
        rate(alone),
        rate(loaded),
        100.0 * loaded as f64 / alone.max(1) as f64
    );
    println!(
        "flood: {flood_calls} calls opened in {} s by 64 callers on CPU 1 (with the flooded shim); proxy, quiet shim and its callers on CPU 0",
        secs + 2
    );
    Ok(())
}
