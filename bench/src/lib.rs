//! What every benchmark binary of Nexus Agent Proxy starts the same way: the
//! release binaries next to the running one, a `nexus-shim serve`, a paired
//! and linked `nexus-agent-proxy run`, an emulated-RTT link through
//! `delay_proxy.py`, and the small statistics the reports print.
//!
//! Every process started here is sent SIGTERM and reaped when its handle is
//! dropped, also when a benchmark fails half-way.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nexus_protocol::{LinkStatus, LocalOp, LocalReply, LocalRequest, MAX_FRAME};
use nexus_transport::{recv, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// The name every bench pairs its workspace under, unless it pairs several.
pub const WORKSPACE: &str = "bench";

/// The env token the default policies serve (`NEXUS_BENCH_TOKEN` in the proxy).
pub const TOKEN_VALUE: &str = "bench-value";

/// How long a process may take to become ready; bounds failures only.
const READY: Duration = Duration::from_secs(30);

/// The directory of the running binary, where `cargo build --release
/// --workspace` also put `nexus-shim` and `nexus-agent-proxy`.
pub fn bin_dir() -> Result<PathBuf> {
    let bin = std::env::current_exe()?
        .parent()
        .context("no directory for this binary")?
        .to_path_buf();
    for b in ["nexus-shim", "nexus-agent-proxy"] {
        if !bin.join(b).is_file() {
            bail!(
                "{} not found; run `cargo build --release --workspace` first",
                bin.join(b).display()
            );
        }
    }
    Ok(bin)
}

/// The shim users run, when it was built: the static LTO binary of
/// `scripts/build-static.sh` (`NEXUS_STATIC_SHIM`, else
/// `target/static/dist/nexus-shim` beside `bin`, the release directory).
pub fn static_shim(bin: &Path) -> Option<PathBuf> {
    let path = match std::env::var_os("NEXUS_STATIC_SHIM") {
        Some(p) => PathBuf::from(p),
        None => bin.parent()?.join("static/dist/nexus-shim"),
    };
    path.is_file().then_some(path)
}

/// Whether `a` was modified before `b` (false when either cannot be read).
pub fn older_than(a: &Path, b: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((modified(a), modified(b)), (Some(a), Some(b)) if a < b)
}

/// `delay_proxy.py` from `NEXUS_DELAY_PROXY`, else the shared copy; extra
/// arguments for it from `NEXUS_DELAY_ARGS`.
pub fn default_delay_proxy() -> PathBuf {
    std::env::var_os("NEXUS_DELAY_PROXY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/tools/delay_proxy.py"))
}

/// Polls `f` until it gives a value, for at most 30 s.
pub fn wait_for<T>(mut f: impl FnMut() -> Option<T>, what: &str) -> Result<T> {
    let deadline = Instant::now() + READY;
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

/// SIGTERM (the daemons' clean shutdown), then reap.
pub fn term(c: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let _ = c.wait();
}

/// `program`, under `taskset -c CPU` when asked.
pub fn pinned(cpu: Option<&str>, program: &Path) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Resident set size of a process in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The `p`th percentile (0 to 100) of `samples`, interpolated between ranks;
/// NaN when there are none.
pub fn pct(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = p / 100.0 * (s.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (rank - lo as f64)
}

/// How a report prints a target: `met`, or `MISSED` to stand out.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// A running `nexus-shim serve` on `127.0.0.1:0` with its own state dir.
#[derive(Debug)]
pub struct Shim {
    child: Child,
    /// `NEXUS_STATE_DIR` of this shim.
    pub state: PathBuf,
    /// Its local socket, `shim.sock`.
    pub sock: PathBuf,
    /// Its pairing URI (`nexus://ADDR?...`).
    pub uri: String,
}

impl Shim {
    /// Starts the release shim of `bin` in `state` (pinned to `cpu` when
    /// given) and waits for its pairing URI.
    pub fn start(bin: &Path, state: &Path, cpu: Option<&str>) -> Result<Self> {
        Self::start_program(&bin.join("nexus-shim"), state, cpu)
    }

    /// [`Shim::start`] with the shim binary `program`.
    pub fn start_program(program: &Path, state: &Path, cpu: Option<&str>) -> Result<Self> {
        let child = pinned(cpu, program)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("NEXUS_STATE_DIR", state)
            .env("NEXUS_LOG", "warn")
            .spawn()
            .context("starting nexus-shim serve")?;
        // Owned before waiting, so that a timeout still stops it.
        let mut shim = Self {
            child,
            state: state.to_path_buf(),
            sock: state.join("shim.sock"),
            uri: String::new(),
        };
        shim.uri = wait_for(
            || std::fs::read_to_string(state.join("pairing.uri")).ok(),
            "pairing.uri",
        )?
        .trim()
        .to_owned();
        Ok(shim)
    }

    /// The `HOST:PORT` the shim listens on, from its pairing URI.
    pub fn address(&self) -> String {
        self.uri
            .trim_start_matches("nexus://")
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        term(&mut self.child);
    }
}

/// `nexus-agent-proxy pair URI --name NAME` into the laptop config `config`.
pub fn pair(bin: &Path, config: &Path, uri: &str, name: &str) -> Result<()> {
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

/// Points the paired workspace `name` in `config` at `address` instead of
/// the shim's own (a relay or delay line in between).
pub fn redirect(config: &Path, name: &str, shim_address: &str, address: &str) -> Result<()> {
    let record = config.join(format!("workspaces/{name}.toml"));
    let text = std::fs::read_to_string(&record)?.replace(shim_address, address);
    std::fs::write(&record, text)?;
    Ok(())
}

/// How to start a [`Proxy`].
#[derive(Debug, Clone, Copy)]
pub struct ProxyOptions<'a> {
    /// The workspaces it serves (`--workspace`, paired beforehand).
    pub workspaces: &'a [&'a str],
    /// `--max-calls-per-second`: the per-tool call-rate guard.
    pub rate: &'a str,
    /// Pinned to this CPU when given.
    pub cpu: Option<&'a str>,
    /// More environment, beside `NEXUS_BENCH_TOKEN` = [`TOKEN_VALUE`].
    pub env: &'a [(&'a str, &'a str)],
}

impl Default for ProxyOptions<'_> {
    fn default() -> Self {
        Self {
            workspaces: &[WORKSPACE],
            // The per-tool call-rate limit (default 200/s) is a flood guard;
            // lifted by default so that benches measure the path, not the guard.
            rate: "1000000",
            cpu: None,
            env: &[],
        }
    }
}

/// A running `nexus-agent-proxy run` with the laptop config `dir/config`.
#[derive(Debug)]
pub struct Proxy(Child);

impl Proxy {
    /// Writes `policy` to `dir/policy.toml` and runs the proxy on it.
    pub fn start(bin: &Path, dir: &Path, policy: &str, opts: ProxyOptions<'_>) -> Result<Self> {
        let policy_file = dir.join("policy.toml");
        std::fs::write(&policy_file, policy)?;
        let mut cmd = pinned(opts.cpu, &bin.join("nexus-agent-proxy"));
        cmd.arg("run");
        for n in opts.workspaces {
            cmd.args(["--workspace", n]);
        }
        cmd.args(["--max-calls-per-second", opts.rate, "--policy"])
            .arg(&policy_file)
            .env("NEXUS_CONFIG_DIR", dir.join("config"))
            .env("NEXUS_BENCH_TOKEN", TOKEN_VALUE)
            .env("NEXUS_LOG", "warn");
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        Ok(Self(cmd.spawn().context("starting nexus-agent-proxy run")?))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        term(&mut self.0);
    }
}

/// Whether the shim behind `sock` says it is linked to a laptop.
pub async fn linked(sock: &Path) -> bool {
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
    matches!(recv::<_, LocalReply>(&mut c, MAX_FRAME).await,
        Ok(LocalReply::Status(s)) if s.link == LinkStatus::Linked)
}

/// Waits (30 s at most) until the link behind `sock` is up, or down.
pub async fn wait_link(sock: &Path, up: bool) -> Result<()> {
    let deadline = Instant::now() + READY;
    while linked(sock).await != up {
        if Instant::now() > deadline {
            bail!("link never went {}", if up { "up" } else { "down" });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// A shim and a proxy, paired as [`WORKSPACE`] and linked, the proxy
/// optionally dialing through `delay_proxy.py`. Stops in reverse order.
#[derive(Debug)]
pub struct Pair {
    // Field order is drop order: the proxy first, then its link, then the shim.
    /// The laptop side.
    pub proxy: Proxy,
    _delay: Option<DelayProxy>,
    /// The workspace side.
    pub shim: Shim,
    /// Holds `state/`, `config/` and `policy.toml`.
    pub dir: tempfile::TempDir,
}

impl Pair {
    /// Starts both in a new temporary directory (`state/`, `config/`,
    /// `policy.toml`) and waits for the link. `delay` is `(delay_proxy.py, rtt_ms)`.
    pub async fn start(
        bin: &Path,
        policy: &str,
        proxy_env: &[(&str, &str)],
        delay: Option<(&Path, u64)>,
    ) -> Result<Self> {
        Self::start_shim(bin, &bin.join("nexus-shim"), policy, proxy_env, delay).await
    }

    /// [`Pair::start`] with the shim binary `shim` instead of the release one.
    pub async fn start_shim(
        bin: &Path,
        shim: &Path,
        policy: &str,
        proxy_env: &[(&str, &str)],
        delay: Option<(&Path, u64)>,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("config");
        let shim = Shim::start_program(shim, &dir.path().join("state"), None)?;
        pair(bin, &config, &shim.uri, WORKSPACE)?;
        let delay = match delay {
            Some((script, rtt)) => {
                let dp = DelayProxy::start(script, &shim.address(), rtt)?;
                redirect(
                    &config,
                    WORKSPACE,
                    &shim.address(),
                    &format!("127.0.0.1:{}", dp.port),
                )?;
                Some(dp)
            }
            None => None,
        };
        let opts = ProxyOptions {
            env: proxy_env,
            ..ProxyOptions::default()
        };
        let proxy = Proxy::start(bin, dir.path(), policy, opts)?;
        let pair = Self {
            proxy,
            _delay: delay,
            shim,
            dir,
        };
        wait_link(&pair.shim.sock, true)
            .await
            .context("the proxy did not link")?;
        Ok(pair)
    }

    /// The shim's `shim.sock`.
    pub fn sock(&self) -> &Path {
        &self.shim.sock
    }
}

/// `delay_proxy.py` relaying `127.0.0.1:port` to a target with an emulated RTT.
#[derive(Debug)]
pub struct DelayProxy {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl DelayProxy {
    /// Starts the script (with `python3`) towards `target` (`HOST:PORT`).
    pub fn start(script: &Path, target: &str, rtt_ms: u64) -> Result<Self> {
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
            // e.g. `--rate-mbit 40` for bench/precise_delay_proxy.py
            .args(
                std::env::var("NEXUS_DELAY_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .stdout(Stdio::null())
            .spawn()
            .context("starting delay_proxy.py (python3)")?;
        let mut dp = Self {
            child,
            port: 0,
            _dir: dir,
        };
        dp.port = wait_for(
            || {
                std::fs::read_to_string(&port_file)
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            },
            "delay proxy port",
        )?;
        Ok(dp)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The "1 RTT" unit: `n` round trips of a 32-byte echo through a delay
/// proxy at `rtt_ms`, on one kept-open connection, in µs.
pub async fn delayed_echo_rtt(script: &Path, rtt_ms: u64, n: usize) -> Result<Vec<f64>> {
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
    // Aborted on every path out, so the echo server never outlives the call.
    let _stop = AbortOnDrop(server);
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
    Ok(out)
}

/// Aborts a task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
