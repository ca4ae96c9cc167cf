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
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nexus_bench::{
    Proxy, ProxyOptions, Shim, TOKEN_VALUE, bin_dir, pair, pct, pinned, rss_kib, verdict, wait_link,
};
use nexus_e2e::link::LinkControl;
use nexus_protocol::{LocalOp, LocalReply, LocalRequest, MAX_FRAME, Reply, Request};
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
    let bin = bin_dir()?;
    println!("## 1. proxy RSS with 10 workspaces");
    ten_workspaces(&bin).await?;
    println!("## 2. recovery after restore, {cycles} cut/restore cycles");
    recovery(&bin, cycles).await?;
    println!("## 3. throughput of one workspace while another is flooded ({secs} s each)");
    println!("(a) call-rate guard lifted: only the proxy's fair share stands between them");
    let kept = isolation(&bin, secs, "1000000").await?;
    println!(
        "    fair share, guard lifted: the quiet workspace keeps {kept:.1}% of its alone throughput (target >= 80%): {}",
        verdict(kept >= 80.0)
    );
    println!("(b) default guard (200 calls/s per tool per workspace): both are capped by it");
    isolation(&bin, secs, "200").await?;
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
    matches!(attempt.await, Some(LocalReply::Reply(Reply::Token(v))) if v.expose() == TOKEN_VALUE.as_bytes())
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

async fn ten_workspaces(bin: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let mut shims = Vec::new();
    let mut names = Vec::new();
    for i in 0..10 {
        let name = format!("ws{i}");
        let shim = Shim::start(bin, &dir.path().join(&name), None)?;
        pair(bin, &config, &shim.uri, &name)?;
        shims.push(shim);
        names.push(name);
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let proxy = Proxy::start(
        bin,
        dir.path(),
        POLICY,
        ProxyOptions {
            workspaces: &names,
            ..ProxyOptions::default()
        },
    )?;
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
    let idle = rss_kib(proxy.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        let pid = proxy.pid();
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
    let shim = Shim::start(bin, &dir.path().join("ws"), None)?;
    let link = LinkControl::start(shim.address().parse()?);
    let uri = shim.uri.replace(&shim.address(), &link.address());
    pair(bin, &config, &uri, "ws")?;
    let opts = ProxyOptions {
        workspaces: &["ws"],
        ..ProxyOptions::default()
    };
    let _proxy = Proxy::start(bin, dir.path(), POLICY, opts)?;
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
        pct(&ms, 50.0),
        pct(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN),
        ms.len(),
        link.accepted()
    );
    Ok(())
}

/// The quiet workspace's throughput while the other floods, in percent of
/// its throughput alone.
async fn isolation(bin: &Path, secs: u64, rate: &str) -> Result<f64> {
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
    let quiet = Shim::start(bin, &dir.path().join("quiet"), Some("0"))?;
    let noisy = Shim::start(bin, &dir.path().join("noisy"), Some("1"))?;
    pair(bin, &config, &quiet.uri, "quiet")?;
    pair(bin, &config, &noisy.uri, "noisy")?;
    let opts = ProxyOptions {
        workspaces: &["quiet", "noisy"],
        rate,
        cpu: Some("0"),
        env: &[],
    };
    let _proxy = Proxy::start(bin, dir.path(), POLICY, opts)?;
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
    let kept = 100.0 * loaded as f64 / alone.max(1) as f64;
    println!(
        "quiet workspace, 4 callers: alone {:.0} calls/s answered ({alone_bad} refused or failed); while the other is flooded {:.0} calls/s answered ({loaded_bad} refused or failed) = {:.1}% of alone",
        rate(alone),
        rate(loaded),
        kept
    );
    println!(
        "flood: {flood_calls} calls opened in {} s by 64 callers on CPU 1 (with the flooded shim); proxy, quiet shim and its callers on CPU 0",
        secs + 2
    );
    Ok(kept)
}
