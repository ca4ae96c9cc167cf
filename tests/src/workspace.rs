//! The workspace side: `nexus-shim serve` on its own host (or loopback) and
//! the `nexus-shim` CLI.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use tempfile::TempDir;

use crate::front::{Front, route_mode};
use crate::netns::{self, NetNs};
use crate::{DEADLINE, Daemon, Must, Output, command, poll, run_to_end, shim_bin};

/// A workspace: a state dir and a running `nexus-shim serve`.
///
/// Fields drop in order: the daemon (SIGTERM), then its namespace, then the
/// temporary directory.
#[derive(Debug)]
pub struct Workspace {
    front: Option<Front>,
    shim: Option<Daemon>,
    net: Option<NetNs>,
    state: PathBuf,
    home: PathBuf,
    envs: Vec<(String, String)>,
    dir: TempDir,
}

impl Workspace {
    /// Starts a shim with a fresh state dir and waits until it is ready.
    #[track_caller]
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// Like [`Workspace::start`], with extra environment for `serve` (kept
    /// for restarts), e.g. `NEXUS_PAIRING_TOKEN`.
    #[track_caller]
    pub fn start_with_env(envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-ws-")
            .tempdir()
            .must("creating the workspace's temp dir");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).must("creating the workspace's home");
        let mut ws = Self {
            front: None,
            shim: None,
            net: netns::supported().then(NetNs::create),
            state: dir.path().join("state"),
            home,
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            dir,
        };
        ws.spawn();
        ws
    }

    #[track_caller]
    fn spawn(&mut self) {
        let listen = match &self.net {
            Some(ns) => format!("{}:0", ns.ws_ip),
            None => "127.0.0.1:0".to_owned(),
        };
        let mut cmd = self.host_command();
        cmd.args(["serve", "--listen", &listen])
            .env("NEXUS_STATE_DIR", &self.state)
            .env("NEXUS_LOG", "info");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut shim = Daemon::spawn(cmd, &self.dir.path().join("shim.log"));
        let sock = self.state.join("shim.sock");
        let ready = poll(DEADLINE, || {
            let pairing_known =
                self.state.join("pairing.uri").exists() || self.state.join("paired.json").exists();
            if sock.exists() && pairing_known {
                Some(true)
            } else {
                shim.try_exit().map(|_| false)
            }
        });
        assert!(
            ready == Some(true),
            "nexus-shim serve did not become ready (exit: {:?})\n--- log ---\n{}",
            shim.try_exit(),
            shim.log()
        );
        self.shim = Some(shim);
        if self.front.is_none()
            && let Ok(uri) = std::fs::read_to_string(self.state.join("pairing.uri"))
        {
            let address = PairingUri::parse(uri.trim()).address;
            self.front = Front::start(route_mode(), self, &address);
        }
    }

    /// What stands in front of the shim (`NEXUS_E2E_ROUTE`), if anything.
    pub fn front(&self) -> Option<&Front> {
        self.front.as_ref()
    }

    /// `nexus-shim` with this workspace's environment, on the workspace host.
    fn host_command(&self) -> Command {
        self.command_on_host(shim_bin())
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    #[track_caller]
    pub fn terminate(&mut self) -> ExitStatus {
        self.shim.as_mut().must("the shim was started").terminate()
    }

    /// Stops the daemon (asserting a clean exit) and starts it again on the
    /// same state dir, with the same environment.
    #[track_caller]
    pub fn restart(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "shim exit on SIGTERM: {status}");
        self.spawn();
    }

    /// The pid of the running `nexus-shim serve` (to read `/proc/PID`).
    pub fn pid(&self) -> Option<u32> {
        self.shim.as_ref().map(Daemon::pid)
    }

    /// The daemon's log (all runs).
    pub fn log(&self) -> String {
        self.shim.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// Waits until the daemon's log contains `needle`.
    #[track_caller]
    pub fn wait_for_log(&mut self, needle: &str) {
        self.shim
            .as_mut()
            .must("the shim was started")
            .wait_for_log(needle);
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The pairing URI the daemon wrote (fails if there is none).
    #[track_caller]
    pub fn uri(&self) -> String {
        let path = self.state.join("pairing.uri");
        std::fs::read_to_string(&path)
            .must(&format!("reading {}", path.display()))
            .trim()
            .to_owned()
    }

    /// The laptop-side address of the veth link, when the workspace has its
    /// own host: where the proxy's connections come from.
    pub fn host_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.net.as_ref().map(|ns| ns.host_ip)
    }

    /// The workspace host's own address: its end of the veth link, or
    /// loopback when it has no namespace. Services a test starts "next to"
    /// the workspace (a git server) listen here.
    pub fn ip(&self) -> std::net::Ipv4Addr {
        self.net
            .as_ref()
            .map_or(std::net::Ipv4Addr::LOCALHOST, |ns| ns.ws_ip)
    }

    /// The workspace's home directory (`HOME` of commands run there).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `STATE/agent.sock`: the `SSH_AUTH_SOCK` the shim serves.
    pub fn agent_sock(&self) -> PathBuf {
        self.state.join("agent.sock")
    }

    /// Any program on the workspace host (through `ip netns exec` when it
    /// has one), with the workspace's clean environment (`HOME`, no
    /// `NEXUS_*`, no `SSH_AUTH_SOCK`).
    pub fn command_on_host(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = match &self.net {
            Some(ns) => ns.exec(program),
            None => Command::new(program),
        };
        crate::clean_env(&mut cmd, &self.home);
        cmd
    }

    /// Runs the `nexus-shim` CLI from the root namespace (the socket is a
    /// path, reachable from anywhere on the machine).
    #[track_caller]
    pub fn cli<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = command(shim_bin(), &self.home);
        self.cli_env(&mut cmd, args);
        run_to_end(&mut cmd, None)
    }

    /// The `nexus-shim` CLI as a command to spawn yourself (from the root
    /// namespace), for tests that need the caller's pid or run many at once.
    pub fn cli_command(&self) -> Command {
        let mut cmd = command(shim_bin(), &self.home);
        self.cli_env(&mut cmd, std::iter::empty::<&str>());
        cmd
    }

    /// Starts the `nexus-shim` CLI from the root namespace without waiting
    /// for it (a call that will wait for an approval), output piped.
    #[track_caller]
    pub fn spawn_cli<I, S>(&self, args: I) -> std::process::Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = command(shim_bin(), &self.home);
        self.cli_env(&mut cmd, args);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .must("starting nexus-shim")
    }

    /// Runs the `nexus-shim` CLI on the workspace host itself, through
    /// `ip netns exec` when it has one.
    #[track_caller]
    pub fn cli_on_host<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.host_command();
        self.cli_env(&mut cmd, args);
        run_to_end(&mut cmd, None)
    }

    fn cli_env<I, S>(&self, cmd: &mut Command, args: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        // A bounded default wait: a test that forgot its proxy fails fast.
        cmd.args(args)
            .env("NEXUS_STATE_DIR", &self.state)
            .env("NEXUS_WAIT", "10s");
    }

    /// `nexus-shim status --json`, parsed.
    #[track_caller]
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.cli(["status", "--json"]);
        serde_json::from_str(&out.stdout).must(&format!("parsing status --json\n{out}"))
    }

    /// Waits until `status` exits 0 (a laptop is linked); fails the test
    /// with both logs if `proxy` exits first or the deadline passes.
    #[track_caller]
    pub fn wait_linked(&self, proxy: &mut Daemon) {
        let linked = poll(DEADLINE, || {
            if self.cli(["status"]).exit_code == Some(0) {
                Some(true)
            } else {
                proxy.try_exit().map(|_| false)
            }
        });
        assert!(
            linked == Some(true),
            "the proxy never linked (proxy exit: {:?})\n--- proxy log ---\n{}\n--- shim log ---\n{}",
            proxy.try_exit(),
            proxy.log(),
            self.log()
        );
    }
}

/// Runs `nexus-shim ARGS` to completion with `NEXUS_STATE_DIR=state_dir`,
/// outside any fixture: for state dirs a fixture would never create.
#[track_caller]
pub fn shim_once<I, S>(state_dir: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let home = state_dir.parent().unwrap_or(state_dir);
    let mut cmd = command(shim_bin(), home);
    cmd.args(args).env("NEXUS_STATE_DIR", state_dir);
    run_to_end(&mut cmd, None)
}

/// A parsed `nexus://HOST:PORT?fp=sha256:..&token=..`, to tamper with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingUri {
    /// `HOST:PORT`.
    pub address: String,
    /// `sha256:<hex>`.
    pub fingerprint: String,
    /// The one-time token.
    pub token: String,
}

impl PairingUri {
    /// Parses the URI the shim writes.
    #[track_caller]
    pub fn parse(uri: &str) -> Self {
        let rest = uri.strip_prefix("nexus://").must("a nexus:// URI");
        let (address, query) = rest.split_once('?').must("URI parameters");
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
                .must(&format!("{key}= in {uri}"))
        };
        Self {
            address: address.to_owned(),
            fingerprint: param("fp"),
            token: param("token"),
        }
    }
}

impl fmt::Display for PairingUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nexus://{}?fp={}&token={}",
            self.address, self.fingerprint, self.token
        )
    }
}
