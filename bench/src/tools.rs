//! `nexus-bench-tools`: throughput of `file get` and the overhead of
//! `tool run`, with the real binaries (a paired shim and proxy on loopback).
//!
//! 1. `file get` of a 100 MB laptop file: in process over `shim.sock` (the
//!    frames read and dropped), and with the real CLI writing `-o DEST`
//!    (temporary file, fsync, rename);
//! 2. `tool run true` over `shim.sock` against a local spawn of `true`, on
//!    loopback and through `delay_proxy.py` at an emulated RTT (against
//!    that link's own request/response time, a `token get`).
//!
//! Build first: `cargo build --release --workspace`, then
//! `target/release/nexus-bench-tools [--mb N] [--runs N] [--rtt-ms MS] [--delay-proxy PATH]`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nexus_bench::{Pair, bin_dir, default_delay_proxy, pct, verdict};
use nexus_protocol::{Channel, LocalOp, LocalReply, LocalRequest, MAX_FRAME, Reply, Request};
use nexus_transport::{recv, send};
use tokio::net::UnixStream;

struct Args {
    mb: usize,
    runs: usize,
    rtt_ms: u64,
    delay_proxy: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        mb: 100,
        runs: 300,
        rtt_ms: 50,
        delay_proxy: default_delay_proxy(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--mb" => a.mb = val()?.parse()?,
            "--runs" => a.runs = val()?.parse()?,
            "--rtt-ms" => a.rtt_ms = val()?.parse()?,
            "--delay-proxy" => a.delay_proxy = val()?.into(),
            "-h" | "--help" => {
                println!(
                    "nexus-bench-tools [--mb N] [--runs N] [--rtt-ms MS] [--delay-proxy PATH]\n\
                     Run `cargo build --release --workspace` first."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; see --help"),
        }
    }
    Ok(a)
}

async fn open(sock: &Path, op: LocalOp) -> Result<UnixStream> {
    let mut c = UnixStream::connect(sock).await?;
    send(&mut c, &LocalRequest { wait_ms: 5000, op }).await?;
    Ok(c)
}

async fn one(sock: &Path, op: LocalOp) -> Result<LocalReply> {
    let mut c = open(sock, op).await?;
    Ok(recv(&mut c, MAX_FRAME).await?)
}

/// Reads a streamed answer to its final frame; returns the data bytes seen
/// and the exit code, if any.
async fn drain(sock: &Path, request: Request) -> Result<(u64, Option<i32>)> {
    let mut c = open(sock, LocalOp::Forward(request)).await?;
    let mut bytes = 0u64;
    loop {
        match recv::<_, LocalReply>(&mut c, MAX_FRAME).await? {
            LocalReply::Reply(Reply::Chunk {
                channel: Channel::Data,
                data,
            }) => bytes += data.len() as u64,
            LocalReply::Reply(Reply::Chunk { .. } | Reply::FileStart { .. }) => {}
            LocalReply::Reply(Reply::Done) => return Ok((bytes, None)),
            LocalReply::Reply(Reply::Exit(code)) => return Ok((bytes, Some(code))),
            other => bail!("unexpected answer: {other:?}"),
        }
    }
}

/// CPU seconds (user + system) a process has used so far (Linux, 100 Hz ticks).
fn cpu_s(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 of stat; `rest` starts at field 3.
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn row(label: &str, ms: &[f64]) {
    println!(
        "{label:<52} p50 {:>8.3} ms  p99 {:>8.3} ms",
        pct(ms, 50.0),
        pct(ms, 99.0)
    );
}

/// `runs` token calls one after the other over `sock`, each timed (ms).
async fn token_calls(sock: &Path, runs: usize) -> Result<Vec<f64>> {
    timed(runs, || async move {
        one(
            sock,
            LocalOp::Forward(Request::Token {
                name: "demo".into(),
            }),
        )
        .await?;
        Ok(())
    })
    .await
}

async fn timed<F, Fut>(runs: usize, mut f: F) -> Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f().await?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// The same file through an OpenSSH channel: a local `sshd` (default
/// cipher) with a fresh host and user key, one master connection made
/// first (the login), then `ssh -T HOST cat FILE >/dev/null` over it,
/// five times; each run's time for `ssh -T HOST true` over the same master
/// is taken off (channel open and process start). Median MB/s.
fn openssh_channel(dir: &Path, file: &Path, size: u64) -> Result<f64> {
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.is_file() {
        bail!(
            "{} not found (apt-get install openssh-server)",
            sshd.display()
        );
    }
    let root = dir.join("sshd");
    std::fs::create_dir_all(&root)?;
    for key in ["host", "user"] {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(root.join(key))
            .status()
            .context("ssh-keygen")?;
        anyhow::ensure!(st.success(), "ssh-keygen failed");
    }
    std::fs::copy(root.join("user.pub"), root.join("authorized_keys"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
        .trim()
        .to_owned();
    let r = root.display();
    let config = root.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {r}/host\nPidFile none\n\
             AuthorizedKeysFile {r}/authorized_keys\nAllowUsers {user}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PrintMotd no\nUseDNS no\nLogLevel ERROR\n"
        ),
    )?;
    let daemon = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting sshd")?;
    let _daemon = Reaped(daemon);
    nexus_bench::wait_for(
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        "sshd to listen",
    )?;
    let ctl = root.join("ctl");
    let ssh = |extra: &[&str]| {
        let mut c = Command::new("ssh");
        c.args(["-T", "-p", &port.to_string(), "-i"])
            .arg(root.join("user"))
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-S",
            ])
            .arg(&ctl)
            .args(extra)
            .arg(format!("{user}@127.0.0.1"));
        c
    };
    let master = ssh(&["-M", "-N"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("ssh master")?;
    let _master = Reaped(master);
    nexus_bench::wait_for(
        || {
            ssh(&["-O", "check"])
                .stderr(std::process::Stdio::null())
                .status()
                .ok()
                .filter(std::process::ExitStatus::success)
        },
        "the ssh master connection",
    )?;
    let timed_run = |args: &[&str]| -> Result<f64> {
        let t = Instant::now();
        let st = ssh(&[])
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "ssh {args:?} failed");
        Ok(t.elapsed().as_secs_f64())
    };
    let path = file.display().to_string();
    let mut rates = Vec::new();
    for _ in 0..5 {
        let empty = timed_run(&["true"])?;
        let full = timed_run(&["cat", &path])?;
        rates.push(size as f64 / (full - empty).max(1e-6) / 1e6);
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

/// A child process killed and reaped when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The file fetched over the delayed link (r4).
const FAR_SIZE: usize = 16 << 20;

const TOOLS: &str = "[tools.true]\ncommand = [\"true\"]\n\n\
                     [tokens.demo]\nsource = \"env:NEXUS_BENCH_TOKEN\"\n\n\
                     [tokens.spawned]\nsource = { command = [\"echo\", \"v\"] }\n";

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let bin = bin_dir()?;
    let dir = tempfile::tempdir()?;
    let big = dir.path().join("big.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&big)?;
        let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        for _ in 0..args.mb {
            f.write_all(&block)?;
        }
    }
    let size = (args.mb as u64) << 20;
    // A smaller file for the delayed link, where a download is bound by
    // the stream's window rather than by CPU.
    let far = dir.path().join("far.bin");
    std::fs::write(&far, vec![7u8; FAR_SIZE])?;
    let policy = format!(
        "[[files.allow]]\npath = \"{}\"\nmax_size = \"{}MiB\"\n\n\
         [[files.allow]]\npath = \"{}\"\nmax_size = \"{}MiB\"\n\n{TOOLS}",
        big.display(),
        args.mb + 1,
        far.display(),
        (FAR_SIZE >> 20) + 1
    );
    let pair = Pair::start(&bin, &policy, &[], None).await?;
    let path = big.display().to_string();

    println!(
        "nexus-bench-tools: {} MB file, {} tool runs\n",
        args.mb, args.runs
    );
    // Warm the page cache and the link once.
    drain(pair.sock(), Request::FileGet { path: path.clone() }).await?;
    let pids: Vec<String> = [pair.shim.pid(), pair.proxy.pid()]
        .iter()
        .map(u32::to_string)
        .collect();
    let cpu = |pids: &[String]| -> Vec<f64> {
        pids.iter()
            .map(|p| cpu_s(p))
            .chain([cpu_s("self")])
            .collect()
    };
    // (f1) what a user runs, the like of `ssh -T HOST cat FILE >/dev/null`:
    // the CLI hands the daemon its stdout, which the daemon writes into.
    // Process start is included (ssh's is taken off below).
    let cpu_before = cpu(&pids);
    let mut rates = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let st = Command::new(bin.join("nexus-shim"))
            .args(["file", "get", &path])
            .stdout(std::fs::File::create("/dev/null")?)
            .env("NEXUS_STATE_DIR", &pair.shim.state)
            .status()?;
        let secs = t.elapsed().as_secs_f64();
        if !st.success() {
            bail!("nexus-shim file get >/dev/null failed");
        }
        rates.push(size as f64 / secs / 1e6);
    }
    let cpu_after = cpu(&pids);
    let per_get = |before: &[f64], after: &[f64]| -> Vec<f64> {
        before
            .iter()
            .zip(after)
            .map(|(a, b)| (b - a) / 5.0)
            .collect()
    };
    let used = per_get(&cpu_before, &cpu_after);
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "(f1) nexus-shim file get FILE >/dev/null (CLI)         median {:.0} MB/s (min {:.0}, max {:.0}; target >= 500)",
        median,
        rates[0],
        rates[rates.len() - 1]
    );
    println!(
        "     CPU per get: shim {:.3} s, proxy {:.3} s (the daemon writes into the CLI's stdout)",
        used[0], used[1]
    );
    // (f1r) the same file relayed as frames over shim.sock to a reader in
    // this process (`LocalOp::Forward`: the MCP server's way, and any
    // client that reads the data itself).
    let cpu_before = cpu(&pids);
    let mut relayed = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (bytes, _) = drain(pair.sock(), Request::FileGet { path: path.clone() }).await?;
        let secs = t.elapsed().as_secs_f64();
        if bytes != size {
            bail!("file get returned {bytes} of {size} bytes");
        }
        relayed.push(size as f64 / secs / 1e6);
    }
    let per_run = per_get(&cpu_before, &cpu(&pids));
    relayed.sort_by(f64::total_cmp);
    println!(
        "(f1r) file get {} MB as frames to a reader in process  median {:.0} MB/s (min {:.0}, max {:.0})",
        args.mb,
        relayed[relayed.len() / 2],
        relayed[0],
        relayed[relayed.len() - 1]
    );
    // CPU per 100 MB in each stage (shim, proxy, reader): the stages run in
    // parallel, so the busiest one bounds throughput on an idle machine.
    let busiest = per_run.iter().copied().fold(0.0, f64::max);
    println!(
        "     CPU per get: shim {:.3} s, proxy {:.3} s, reader {:.3} s => CPU-bound ceiling {:.0} MB/s",
        per_run[0],
        per_run[1],
        per_run[2],
        size as f64 / busiest / 1e6
    );
    match openssh_channel(dir.path(), &big, size) {
        Ok(ssh) => println!(
            "(f0) OpenSSH channel: ssh -T HOST cat FILE >/dev/null  median {ssh:.0} MB/s (login and channel open excluded); \
             file get (f1) = {:.2}x (target >= 1.5x): {}",
            median / ssh,
            verdict(median >= 1.5 * ssh)
        ),
        Err(e) => println!("(f0) OpenSSH channel skipped: {e:#}"),
    }
    println!("     file get >= 500 MB/s: {}", verdict(median >= 500.0));
    let dest = dir.path().join("dest.bin");
    let mut cli = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let st = Command::new(bin.join("nexus-shim"))
            .args(["file", "get", &path, "-o"])
            .arg(&dest)
            .env("NEXUS_STATE_DIR", &pair.shim.state)
            .status()?;
        let secs = t.elapsed().as_secs_f64();
        if !st.success() || std::fs::metadata(&dest)?.len() != size {
            bail!("nexus-shim file get -o failed");
        }
        cli.push(size as f64 / secs / 1e6);
    }
    cli.sort_by(f64::total_cmp);
    println!(
        "(f2) nexus-shim file get -o DEST (CLI, fsync, rename)  median {:.0} MB/s",
        cli[1]
    );

    let local = timed(args.runs, || async {
        let st = tokio::process::Command::new("true").status().await?;
        anyhow::ensure!(st.success());
        Ok(())
    })
    .await?;
    row("(t0) local spawn of `true`", &local);
    let sock = pair.sock().to_path_buf();
    let remote = timed(args.runs, || {
        let sock = sock.clone();
        async move {
            let (_, code) = drain(
                &sock,
                Request::ToolRun {
                    name: "true".into(),
                    args: vec![],
                },
            )
            .await?;
            anyhow::ensure!(code == Some(0), "tool run true: {code:?}");
            Ok(())
        }
    })
    .await?;
    row("(t1) tool run true over shim.sock, loopback", &remote);
    let token = timed(args.runs, || {
        let sock = sock.clone();
        async move {
            match one(
                &sock,
                LocalOp::Forward(Request::Token {
                    name: "demo".into(),
                }),
            )
            .await?
            {
                LocalReply::Reply(Reply::Token(_)) => Ok(()),
                other => bail!("token: {other:?}"),
            }
        }
    })
    .await?;
    row(
        "(t2) token get over the same path (1 request/response)",
        &token,
    );
    println!(
        "    overhead of tool run over a local spawn: {:.3} ms at p50 (target <= 1 RTT + 1 ms; RTT here ~{:.3} ms)",
        pct(&remote, 50.0) - pct(&local, 50.0),
        pct(&token, 50.0)
    );
    drop(pair);

    if args.delay_proxy.exists() {
        let pair = Pair::start(&bin, &policy, &[], Some((&args.delay_proxy, args.rtt_ms))).await?;
        let runs = args.runs.min(40);
        let sock = pair.sock().to_path_buf();
        let token = token_calls(&sock, runs).await?;
        row(
            &format!("(r1) token get at {} ms RTT (the link's RTT)", args.rtt_ms),
            &token,
        );
        let remote = timed(runs, || {
            let sock = sock.clone();
            async move {
                drain(
                    &sock,
                    Request::ToolRun {
                        name: "true".into(),
                        args: vec![],
                    },
                )
                .await?;
                Ok(())
            }
        })
        .await?;
        row(
            &format!("(r2) tool run true at {} ms RTT", args.rtt_ms),
            &remote,
        );
        // The same laptop-side spawn in a one-frame answer: tells the cost of
        // spawning on the laptop apart from the streaming.
        let spawned = timed(runs, || {
            let sock = sock.clone();
            async move {
                let op = LocalOp::Forward(Request::Token {
                    name: "spawned".into(),
                });
                one(&sock, op).await?;
                Ok(())
            }
        })
        .await?;
        row(
            &format!("(r3) token from a command source at {} ms RTT", args.rtt_ms),
            &spawned,
        );
        let overhead = pct(&remote, 50.0) - pct(&local, 50.0);
        println!(
            "    overhead over a local spawn: {overhead:.3} ms = the link's request/response ({:.3} ms) + {:.3} ms (target <= 1 RTT + 1 ms)",
            pct(&token, 50.0),
            overhead - pct(&token, 50.0)
        );
        // (r4) a download across the delayed link: bound by how much the
        // stream may have in flight (its window) per round trip.
        let far = far.display().to_string();
        let mut rates = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let (bytes, _) = drain(&sock, Request::FileGet { path: far.clone() }).await?;
            if bytes != FAR_SIZE as u64 {
                bail!("file get returned {bytes} of {FAR_SIZE} bytes");
            }
            rates.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e6);
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "(r4) file get {} MiB at {} ms RTT                   median {:.0} MB/s (min {:.0}, max {:.0})",
            FAR_SIZE >> 20,
            args.rtt_ms,
            rates[1],
            rates[0],
            rates[2]
        );
        // (r5) a token call while downloads run on the same link: what a
        // grown window queues ahead of a small answer.
        let busy = tokio::spawn({
            let (sock, far) = (sock.clone(), far.clone());
            async move {
                loop {
                    if drain(&sock, Request::FileGet { path: far.clone() })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        let during = token_calls(&sock, runs).await?;
        busy.abort();
        row(
            &format!("(r5) token get at {} ms RTT during downloads", args.rtt_ms),
            &during,
        );
    } else {
        println!(
            "(r) skipped: {} not found (--delay-proxy)",
            args.delay_proxy.display()
        );
    }
    Ok(())
}
