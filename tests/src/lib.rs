//! Harness for the end-to-end tests of Nexus Agent Proxy.
//!
//! The tests start the real binaries. A [`Workspace`] runs `nexus-shim serve`
//! on a "workspace host": its own network namespace, joined to the root one by
//! a veth pair, when running as root with `ip` available; loopback otherwise.
//! A [`Laptop`] runs `nexus-agent-proxy` in the root namespace, which dials the
//! workspace as a real laptop would. [`raw`] builds peers straight from
//! `nexus-transport` to send what the real binaries never would.
//!
//! Every fixture owns a fresh temporary directory, ports come from port 0 and
//! namespaces get unique names, so tests are independent and run in parallel.
//! Whatever a fixture starts is stopped when it is dropped, also when a test
//! panics. Readiness is always a condition polled against a deadline (a file
//! appears, `nexus-shim status` exits 0), never a fixed sleep.
#![forbid(unsafe_code)]

pub mod agent_wire;
pub mod connect_host;
pub mod front;
pub mod githttp;
pub mod hostile;
mod laptop;
pub mod link;
pub mod llm;
pub mod netns;
mod process;
pub mod raw;
pub mod sshd;
pub mod upstream;
mod workspace;

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use laptop::Laptop;
pub use process::Daemon;
pub use workspace::{PairingUri, Workspace, shim_once};

/// One env token, `demo`, read from `E2E_DEMO` in the proxy's environment.
pub const DEMO_POLICY: &str = "version = 1\n\n[tokens.demo]\nsource = \"env:E2E_DEMO\"\n";

/// A workspace paired with a fresh laptop under the name `dev`.
#[track_caller]
pub fn paired() -> (Workspace, Laptop) {
    let ws = Workspace::start();
    let laptop = Laptop::new();
    laptop.pair(&ws.uri(), "dev").ok();
    (ws, laptop)
}

/// How long a fixture may take to become ready, or a command to finish.
/// Generous: it only bounds failures; passing tests never wait for it.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How often polled conditions are checked.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Panics with context instead of `unwrap`/`expect`: a failed step in a
/// test should say what it was doing.
pub trait Must<T> {
    /// The value, or a panic naming `what` and the error.
    fn must(self, what: &str) -> T;
}

impl<T, E: fmt::Display> Must<T> for Result<T, E> {
    #[track_caller]
    fn must(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

impl<T> Must<T> for Option<T> {
    #[track_caller]
    fn must(self, what: &str) -> T {
        match self {
            Some(v) => v,
            None => panic!("{what}: nothing there"),
        }
    }
}

/// The directory holding the binaries under test: the cargo target profile
/// directory this test executable was built in (`target/debug/deps/<test>`
/// gives `target/debug/`).
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().must("locating the test executable");
        let dir = exe
            .parent()
            .filter(|d| d.ends_with("deps"))
            .and_then(Path::parent)
            .or_else(|| exe.parent())
            .must("the test executable has no parent directory")
            .to_path_buf();
        for bin in [SHIM, PROXY] {
            assert!(
                dir.join(bin).is_file(),
                "{} not found in {}: run `cargo build --workspace --bins` first",
                bin,
                dir.display()
            );
        }
        dir
    })
}

const SHIM: &str = "nexus-shim";
const PROXY: &str = "nexus-agent-proxy";

/// Path of `nexus-shim`.
fn shim_bin() -> PathBuf {
    bin_dir().join(SHIM)
}

/// Path of the `nexus-shim` binary under test (to install it somewhere).
pub fn shim_binary() -> PathBuf {
    shim_bin()
}

/// Path of the `nexus-agent-proxy` binary under test.
pub fn proxy_binary() -> PathBuf {
    proxy_bin()
}

/// The repository's root directory (for files under `deploy/`).
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Path of `nexus-agent-proxy`.
fn proxy_bin() -> PathBuf {
    bin_dir().join(PROXY)
}

/// A number unique within this test process (names, log files, subnets).
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A name unique across concurrent test processes too, for shared
/// resources such as keyring entries.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), unique())
}

/// Whether the tests run as root (network namespaces, `chown`).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A command for one of our binaries with a clean environment: no `NEXUS_*`
/// variable leaks in from the developer's shell, and `HOME` and the XDG
/// directories point into the fixture.
fn command(program: impl AsRef<OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    clean_env(&mut cmd, home);
    cmd
}

fn clean_env(cmd: &mut Command, home: &Path) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NEXUS_") {
            cmd.env_remove(key);
        }
    }
    // Nor the developer's ssh-agent: a test names the agent it means.
    cmd.env_remove("SSH_AUTH_SOCK").env_remove("SSH_AGENT_PID");
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_STATE_HOME", home.join(".local/state"));
}

/// Polls `cond` until it yields a value or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// The outcome of a command run to completion.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub what: String,
    /// Exit code (`None` when killed by a signal).
    pub exit_code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Output {
    /// Asserts the exit code, showing everything when it differs.
    #[track_caller]
    pub fn code(&self, want: i32) -> &Self {
        assert_eq!(self.exit_code, Some(want), "unexpected exit code\n{self}");
        self
    }

    /// Asserts exit code 0.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.code(0)
    }

    /// Asserts that stderr contains `needle`.
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
        self
    }

    /// Asserts that stdout contains `needle`.
    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
        self
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\nexit: {:?} after {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.what, self.exit_code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Renders a command line for messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion with `stdin` as its input, killing it (and
/// failing the test) if it outlives [`DEADLINE`].
#[track_caller]
pub fn run_to_end(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    run_to_end_within(cmd, stdin, DEADLINE)
}

/// [`run_to_end`] with its own deadline (an npm install, say).
#[track_caller]
pub fn run_to_end_within(cmd: &mut Command, stdin: Option<&[u8]>, deadline: Duration) -> Output {
    use std::io::Write;
    use std::process::Stdio;

    let what = describe(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().must(&format!("starting {what}"));
    if let (Some(bytes), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(bytes)
            .must(&format!("writing stdin of {what}"));
    }
    let pid = rustix::process::Pid::from_child(&child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let (result, timed_out) = match rx.recv_timeout(deadline) {
        Ok(r) => (r, false),
        Err(_) => {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            (rx.recv().must("collecting a killed command"), true)
        }
    };
    let out = result.must(&format!("waiting for {what}"));
    let out = Output {
        what,
        exit_code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    };
    assert!(
        !timed_out,
        "command still running after {deadline:?}\n{out}"
    );
    out
}
