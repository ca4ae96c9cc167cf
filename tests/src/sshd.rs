//! Real OpenSSH parts for the agent-forwarding tests: the laptop's
//! `ssh-agent` holding an ed25519 and an RSA key, a "git host" `sshd` with a
//! bare repository next to the workspace, and [`SshWorld`], which wires them
//! to a paired [`Workspace`] and [`Laptop`].
//!
//! The git host listens on the workspace host's address (inside its network
//! namespace when there is one: in real life the git server is close to the
//! workspace, the laptop far). As root, sshd lets in a dedicated unprivileged
//! user ([`login_user`], created if missing, as the anchor benchmark does);
//! otherwise it runs as, and lets in, the current user.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tempfile::TempDir;

use crate::{DEADLINE, Daemon, Laptop, Must, Output, Workspace, is_root, poll, run_to_end, unique};

/// The user the git host's sshd lets in when the tests run as root.
const ROOT_MODE_USER: &str = "nexuse2e";

/// The programs these tests run; `.ci/run` installs them.
const TOOLS: [&str; 5] = ["ssh", "ssh-agent", "ssh-add", "ssh-keygen", "git"];

/// Where sshd must be (it re-executes itself by absolute path).
pub const SSHD: &str = "/usr/sbin/sshd";

/// Fails the test with a clear message when OpenSSH or git is missing.
#[track_caller]
pub fn require_openssh() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let mut missing: Vec<String> = TOOLS
            .iter()
            .filter(|t| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {t}")])
                    .output()
                    .map_or(true, |o| !o.status.success())
            })
            .map(|t| (*t).to_owned())
            .collect();
        if !Path::new(SSHD).is_file() {
            missing.push(SSHD.to_owned());
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the SSH tests need OpenSSH and git; missing: {}. Run .ci/run as root \
                 (it installs openssh-server openssh-client git socat), or \
                 `apt-get install openssh-server openssh-client git`",
                missing.join(", ")
            ))
        }
    });
    if let Err(e) = checked {
        panic!("{e}");
    }
}

/// The user the git host lets in: a dedicated unprivileged user as root
/// (created with `useradd` if missing: shell `/bin/sh`, no password, so
/// key-only logins), else the current user.
#[track_caller]
pub fn login_user() -> &'static str {
    static USER: OnceLock<String> = OnceLock::new();
    USER.get_or_init(|| {
        if !is_root() {
            let out = run_to_end(Command::new("id").arg("-un"), None);
            return out.ok().stdout.trim().to_owned();
        }
        let exists = || {
            Command::new("id")
                .arg(ROOT_MODE_USER)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !exists() {
            // `-p '*'`: no password, yet not "locked" (sshd without PAM
            // refuses locked accounts, even for keys).
            let out = run_to_end(
                Command::new("useradd").args([
                    "-m",
                    "-s",
                    "/bin/sh",
                    "-p",
                    "*",
                    "-c",
                    "nexus e2e git host",
                    ROOT_MODE_USER,
                ]),
                None,
            );
            assert!(exists(), "cannot create user {ROOT_MODE_USER}\n{out}");
        }
        ROOT_MODE_USER.to_owned()
    })
}

/// A public key: its OpenSSH line and its fingerprint.
#[derive(Debug, Clone)]
pub struct PubKey {
    /// `ALGO BASE64` (no comment).
    pub line: String,
    /// `SHA256:...`, as `ssh-add -l` prints it.
    pub fingerprint: String,
    /// The `.pub` file.
    pub path: PathBuf,
}

impl PubKey {
    /// `ssh-keygen -t KIND` into `dir/name` (no passphrase); the private
    /// key stays at `dir/name`.
    #[track_caller]
    pub fn generate(dir: &Path, name: &str, kind: &str) -> Self {
        let private = dir.join(name);
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-t", kind, "-N", "", "-C", name, "-f"])
            .arg(&private);
        if kind == "rsa" {
            cmd.args(["-b", "2048"]);
        }
        run_to_end(&mut cmd, None).ok();
        Self::read(&dir.join(format!("{name}.pub")))
    }

    /// Reads a `.pub` file.
    #[track_caller]
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).must(&format!("reading {}", path.display()));
        let line = text
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let out = run_to_end(
            Command::new("ssh-keygen")
                .args(["-l", "-E", "sha256", "-f"])
                .arg(path),
            None,
        );
        let fingerprint = out
            .ok()
            .stdout
            .split_whitespace()
            .nth(1)
            .must("a fingerprint from ssh-keygen -l")
            .to_owned();
        Self {
            line,
            fingerprint,
            path: path.to_path_buf(),
        }
    }
}

/// The laptop's `ssh-agent -D -a SOCK`, holding an ed25519 and an RSA key
/// whose private files were deleted once added.
#[derive(Debug)]
pub struct LaptopAgent {
    daemon: Daemon,
    sock: PathBuf,
    /// The ed25519 key.
    pub ed25519: PubKey,
    /// The RSA key (2048 bits: `rsa-sha2-256` and `rsa-sha2-512` signatures).
    pub rsa: PubKey,
    dir: TempDir,
}

impl LaptopAgent {
    /// Starts the agent and adds both keys.
    #[track_caller]
    pub fn start() -> Self {
        require_openssh();
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-agent-")
            .tempdir()
            .must("creating the agent's temp dir");
        let ed25519 = PubKey::generate(dir.path(), "laptop-ed25519", "ed25519");
        let rsa = PubKey::generate(dir.path(), "laptop-rsa", "rsa");
        let sock = dir.path().join("agent.sock");
        let mut cmd = Command::new("ssh-agent");
        cmd.args(["-D", "-a"]).arg(&sock);
        let mut daemon = Daemon::spawn(cmd, &dir.path().join("ssh-agent.log"));
        // Ready once it accepts: the socket file appears at bind(), a
        // moment before listen().
        let up = poll(DEADLINE, || {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                Some(true)
            } else {
                daemon.try_exit().map(|_| false)
            }
        });
        assert!(
            up == Some(true),
            "ssh-agent never listened on {}\n{}",
            sock.display(),
            daemon.log()
        );
        let agent = Self {
            daemon,
            sock,
            ed25519,
            rsa,
            dir,
        };
        for name in ["laptop-ed25519", "laptop-rsa"] {
            let private = agent.dir.path().join(name);
            agent.ssh_add([private.as_os_str()]).ok();
            // From now on the private key lives only in the agent.
            std::fs::remove_file(&private).must("deleting a private key file");
        }
        agent
    }

    /// The agent's socket (the laptop's `SSH_AUTH_SOCK`).
    pub fn sock(&self) -> &Path {
        &self.sock
    }

    /// `ssh-add ARGS` against this agent, on the laptop.
    #[track_caller]
    pub fn ssh_add<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ssh-add");
        cmd.args(args).env("SSH_AUTH_SOCK", &self.sock);
        run_to_end(&mut cmd, None)
    }

    /// Panics with the log if the agent died.
    #[track_caller]
    pub fn assert_running(&mut self) {
        self.daemon.assert_running();
    }
}

/// A "git host": `sshd -D -e -f CONFIG` with its own host key, an
/// `AuthorizedKeysFile`, and a bare repository, on the workspace host.
#[derive(Debug)]
pub struct GitHost {
    sshd: Daemon,
    /// Where it listens.
    pub ip: std::net::Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// The user it lets in.
    pub user: &'static str,
    /// Its ed25519 host key.
    pub host_key: PubKey,
    repo: PathBuf,
    dir: TempDir,
}

impl GitHost {
    /// Starts sshd on the workspace host of `ws`, letting [`login_user`] in
    /// with any of `authorized`, and creates `repo.git`.
    #[track_caller]
    pub fn start(ws: &Workspace, authorized: &[&PubKey]) -> Self {
        Self::start_with(ws, authorized, &|_, _| String::new())
    }

    /// [`GitHost::start`] with extra sshd_config lines, written by `extra`
    /// given the host's directory (where its host key `host_ed25519` is, and
    /// where it may create CA keys and certificates) and its address.
    #[track_caller]
    pub fn start_with(
        ws: &Workspace,
        authorized: &[&PubKey],
        extra: &dyn Fn(&Path, std::net::Ipv4Addr) -> String,
    ) -> Self {
        require_openssh();
        let user = login_user();
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-git-")
            .tempdir()
            .must("creating the git host's temp dir");
        let root = dir.path();
        // The login user reads authorized_keys and the repository.
        set_mode(root, 0o755);
        let host_key = PubKey::generate(root, "host_ed25519", "ed25519");
        let authorized_keys = root.join("authorized_keys");
        let keys: String = authorized.iter().map(|k| format!("{}\n", k.line)).collect();
        std::fs::write(&authorized_keys, keys).must("writing authorized_keys");
        set_mode(&authorized_keys, 0o644);
        let repo = bare_repo(root, "repo.git", user);
        if is_root() {
            // The privilege separation directory of Debian's sshd.
            std::fs::create_dir_all("/run/sshd").must("creating /run/sshd");
        }
        let ip = ws.ip();
        let more = extra(root, ip);
        let (sshd, port) = spawn_sshd(ws, root, |port| sshd_config(root, ip, port, user) + &more);
        Self {
            sshd,
            ip,
            port,
            user,
            host_key,
            repo,
            dir,
        }
    }

    /// The policy's `host`: `IP:PORT`.
    pub fn policy_host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// How known_hosts names it: `[IP]:PORT`.
    pub fn known_hosts_name(&self) -> String {
        format!("[{}]:{}", self.ip, self.port)
    }

    /// A known_hosts line pinning its real host key.
    pub fn known_hosts_line(&self) -> String {
        format!("{} {}\n", self.known_hosts_name(), self.host_key.line)
    }

    /// `ssh://USER@IP:PORT/.../repo.git`.
    pub fn url(&self) -> String {
        format!(
            "ssh://{}@{}:{}{}",
            self.user,
            self.ip,
            self.port,
            self.repo.display()
        )
    }

    /// sshd's log (`-e`, LogLevel VERBOSE).
    pub fn log(&self) -> String {
        self.sshd.log()
    }

    /// Whether sshd logged a public-key login with the key `fingerprint`.
    pub fn accepted(&self, fingerprint: &str) -> bool {
        self.log()
            .lines()
            .any(|l| l.contains("Accepted publickey") && l.contains(fingerprint))
    }

    /// The git host's directory (for a second host key, say).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `git init --bare DIR/NAME`, owned by the git host's login user.
#[track_caller]
pub fn bare_repo(dir: &Path, name: &str, user: &str) -> PathBuf {
    let repo = dir.join(name);
    run_to_end(
        Command::new("git")
            .args(["-c", "init.defaultBranch=main", "init", "-q", "--bare"])
            .arg(&repo),
        None,
    )
    .ok();
    chown(&repo, user);
    repo
}

/// `chown -R USER: PATH` when the tests run as root (otherwise every file
/// is the one user's already).
pub fn chown(path: &Path, user: &str) {
    if is_root() {
        run_to_end(
            Command::new("chown")
                .args(["-R", &format!("{user}:")])
                .arg(path),
            None,
        )
        .ok();
    }
}

pub(crate) fn sshd_config(root: &Path, ip: std::net::Ipv4Addr, port: u16, user: &str) -> String {
    let root = root.display();
    format!(
        "Port {port}
ListenAddress {ip}
HostKey {root}/host_ed25519
PidFile none
AuthorizedKeysFile {root}/authorized_keys
AllowUsers {user}
PermitRootLogin no
PubkeyAuthentication yes
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowAgentForwarding yes
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 100
LogLevel VERBOSE
"
    )
}

/// Starts sshd on the workspace host of `ws` with the configuration
/// `config(port)` (files under `root`), on a free port: sshd cannot bind port
/// 0 and tell us, so a lost race ("Address already in use") is retried on
/// another port. Returns the daemon and its port.
#[track_caller]
pub(crate) fn spawn_sshd(
    ws: &Workspace,
    root: &Path,
    config: impl Fn(u16) -> String,
) -> (Daemon, u16) {
    spawn_sshd_on(&|| ws.command_on_host(SSHD), root, config)
}

/// [`spawn_sshd`] with sshd started by `on_host` (a command for `SSHD` on
/// the host it should listen on).
#[track_caller]
pub(crate) fn spawn_sshd_on(
    on_host: &dyn Fn() -> Command,
    root: &Path,
    config: impl Fn(u16) -> String,
) -> (Daemon, u16) {
    for attempt in 0..8 {
        let port = free_port();
        let file = root.join(format!("sshd_config.{attempt}"));
        std::fs::write(&file, config(port)).must("writing sshd_config");
        let mut cmd = on_host();
        cmd.args(["-D", "-e", "-f"]).arg(&file);
        let mut sshd = Daemon::spawn(cmd, &root.join(format!("sshd.{attempt}.log")));
        let ready = poll(DEADLINE, || {
            if sshd.log().contains("Server listening on") {
                Some(true)
            } else {
                sshd.try_exit().map(|_| false)
            }
        });
        if ready == Some(true) {
            return (sshd, port);
        }
        let log = sshd.log();
        assert!(
            log.contains("Address already in use"),
            "sshd did not start (exit: {:?})\n--- sshd log ---\n{log}",
            sshd.try_exit()
        );
    }
    panic!("sshd found no free port in 8 attempts");
}

/// A port free on loopback right now (for daemons that cannot bind port 0
/// and tell us; a lost race shows as "Address already in use").
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .must("binding 127.0.0.1:0")
}

#[track_caller]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .must(&format!("chmod {mode:o} {}", path.display()));
}

/// How the proxy finds the laptop agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentFrom {
    /// `SSH_AUTH_SOCK` in its environment (the default).
    Env,
    /// `--ssh-agent PATH`.
    Flag,
}

/// A paired workspace and laptop, the laptop's agent, a git host next to
/// the workspace, and the workspace side of OpenSSH: an ssh config that pins
/// host keys through `UserKnownHostsFile` and never prompts.
///
/// Fields drop in order: the proxy, sshd, the agent, the laptop, the
/// workspace (shim, then namespace), the workspace-side files.
#[derive(Debug)]
pub struct SshWorld {
    proxy: Option<Daemon>,
    /// The git host.
    pub host: GitHost,
    /// The laptop's agent.
    pub agent: LaptopAgent,
    /// The laptop, paired with `ws` as `dev`, whose `~/.ssh/known_hosts`
    /// pins the git host's real key.
    pub laptop: Laptop,
    /// The workspace.
    pub ws: Workspace,
    dir: TempDir,
}

impl SshWorld {
    /// Everything but the proxy, which [`SshWorld::start_proxy`] starts with
    /// a policy. The git host accepts both laptop keys.
    #[track_caller]
    pub fn new() -> Self {
        Self::with_sshd(&|_, _| String::new())
    }

    /// [`SshWorld::new`] with extra sshd_config lines (see
    /// [`GitHost::start_with`]).
    #[track_caller]
    pub fn with_sshd(extra: &dyn Fn(&Path, std::net::Ipv4Addr) -> String) -> Self {
        require_openssh();
        let ws = Workspace::start();
        let laptop = Laptop::new();
        laptop.pair(&ws.uri(), "dev").ok();
        let agent = LaptopAgent::start();
        let host = GitHost::start_with(&ws, &[&agent.ed25519, &agent.rsa], extra);
        laptop.write_known_hosts(&host.known_hosts_line());
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-wsfiles-")
            .tempdir()
            .must("creating the workspace-side temp dir");
        let world = Self {
            proxy: None,
            host,
            agent,
            laptop,
            ws,
            dir,
        };
        std::fs::write(world.ssh_config(), world.ssh_config_text())
            .must("writing the workspace's ssh config");
        std::fs::write(world.known_hosts(), "").must("creating the workspace's known_hosts");
        world
    }

    /// Writes `policy` (prefixed with `version = 1`) and starts the proxy,
    /// pointed at the laptop agent the `how` way; waits for the link.
    #[track_caller]
    pub fn start_proxy(&mut self, policy: &str, how: AgentFrom) {
        let policy = self
            .laptop
            .write_policy(&format!("version = 1\n\n{policy}"));
        let sock = self.agent.sock().as_os_str();
        let proxy = match how {
            AgentFrom::Env => {
                self.laptop
                    .run_with(&self.ws, "dev", &policy, &[("SSH_AUTH_SOCK", sock)], &[])
            }
            AgentFrom::Flag => self.laptop.run_with(
                &self.ws,
                "dev",
                &policy,
                &[],
                &[OsStr::new("--ssh-agent"), sock],
            ),
        };
        self.proxy = Some(proxy);
    }

    /// Like [`SshWorld::start_proxy`] with the agent from `SSH_AUTH_SOCK`
    /// and `envs` added to the proxy's environment.
    #[track_caller]
    pub fn start_proxy_with_env(&mut self, policy: &str, envs: &[(&str, &OsStr)]) {
        let policy = self
            .laptop
            .write_policy(&format!("version = 1\n\n{policy}"));
        let mut all = vec![("SSH_AUTH_SOCK", self.agent.sock().as_os_str())];
        all.extend_from_slice(envs);
        self.proxy = Some(self.laptop.run_with(&self.ws, "dev", &policy, &all, &[]));
    }

    /// Stops the proxy (SIGTERM, a clean exit) and waits until the shim
    /// reports the link down.
    #[track_caller]
    pub fn stop_proxy(&mut self) {
        let mut proxy = self.proxy.take().must("the proxy was started");
        let status = proxy.terminate();
        assert!(
            status.success(),
            "proxy exit on SIGTERM: {status}\n{}",
            proxy.log()
        );
        let down = poll(DEADLINE, || {
            (self.ws.cli(["status"]).exit_code == Some(4)).then_some(())
        });
        assert!(
            down.is_some(),
            "the shim still reports a link\n{}",
            self.ws.log()
        );
    }

    /// The running proxy.
    #[track_caller]
    pub fn proxy(&mut self) -> &mut Daemon {
        self.proxy.as_mut().must("the proxy was started")
    }

    /// The proxy's log so far.
    pub fn proxy_log(&self) -> String {
        self.proxy.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// The proxy's log lines, with the escaping it applies to text that may
    /// come from the workspace (`\"`, `\'`) undone, so needles can quote.
    fn proxy_lines(&self) -> Vec<String> {
        self.proxy_log()
            .lines()
            .map(|l| l.replace("\\\"", "\"").replace("\\'", "'"))
            .collect()
    }

    /// Waits for a line of the proxy's log holding every one of `needles`
    /// and returns it; fails with the log at the deadline.
    #[track_caller]
    pub fn wait_for_proxy_line(&mut self, needles: &[&str]) -> String {
        let found = poll(DEADLINE, || {
            self.proxy_lines()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
        });
        match found {
            Some(line) => line,
            None => panic!(
                "the proxy never logged a line with {needles:?}\n--- proxy log ---\n{}",
                self.proxy_log()
            ),
        }
    }

    /// How many lines of the proxy's log hold every one of `needles`.
    pub fn count_proxy_lines(&self, needles: &[&str]) -> usize {
        self.proxy_lines()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// A directory for workspace-side files (clones, key files).
    pub fn ws_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The workspace's ssh config (`ssh -F`).
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    /// The workspace's `UserKnownHostsFile`.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    fn ssh_config_text(&self) -> String {
        let d = self.dir.path().display();
        format!(
            "Host *
  UserKnownHostsFile {d}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  CheckHostIP no
  UpdateHostKeys no
  HashKnownHosts no
  IdentitiesOnly no
  IdentityFile {d}/no-such-key
  PreferredAuthentications publickey
  BatchMode yes
  ControlMaster no
  ControlPath none
  ConnectTimeout 10
  LogLevel ERROR
"
        )
    }

    /// `nexus-shim known-hosts` on the workspace host, written to the
    /// workspace's `UserKnownHostsFile`. Returns the command's output.
    #[track_caller]
    pub fn trust_pinned_hosts(&self) -> Output {
        let out = self.ws.cli_on_host(["known-hosts"]);
        out.ok();
        std::fs::write(self.known_hosts(), &out.stdout).must("writing the workspace's known_hosts");
        out
    }

    /// Trusts the git host's real key in the workspace, whatever the laptop
    /// pins: a workspace that learned the key elsewhere (or a host in the
    /// middle that the workspace cannot tell from the real one).
    #[track_caller]
    pub fn trust_host_directly(&self) {
        std::fs::write(self.known_hosts(), self.host.known_hosts_line())
            .must("writing the workspace's known_hosts");
    }

    /// `PROGRAM` on the workspace host with `SSH_AUTH_SOCK=sock`, git using
    /// the workspace ssh config and a committer identity, in the
    /// workspace-side directory.
    pub fn ws_command_with_sock(&self, program: &str, sock: &Path) -> Command {
        let mut cmd = self.ws.command_on_host(program);
        cmd.current_dir(self.dir.path())
            .env("SSH_AUTH_SOCK", sock)
            .env(
                "GIT_SSH_COMMAND",
                format!("ssh -F {}", self.ssh_config().display()),
            )
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "init.defaultBranch")
            .env("GIT_CONFIG_VALUE_0", "main")
            .env("GIT_AUTHOR_NAME", "E2E")
            .env("GIT_AUTHOR_EMAIL", "e2e@example.com")
            .env("GIT_COMMITTER_NAME", "E2E")
            .env("GIT_COMMITTER_EMAIL", "e2e@example.com");
        cmd
    }

    /// Runs `PROGRAM ARGS` on the workspace host against `agent.sock`.
    #[track_caller]
    pub fn ws_run<I, S>(&self, program: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.ws_command_with_sock(program, &self.ws.agent_sock());
        cmd.args(args);
        run_to_end(&mut cmd, None)
    }

    /// `ssh -F CONFIG -p PORT OPTIONS... USER@IP REMOTE...` from the
    /// workspace host with `SSH_AUTH_SOCK=sock`; the remote command is
    /// `true` when `remote` is empty.
    #[track_caller]
    pub fn ssh_login(&self, sock: &Path, user: &str, options: &[&str], remote: &[&str]) -> Output {
        let mut cmd = self.ws_command_with_sock("ssh", sock);
        cmd.arg("-F")
            .arg(self.ssh_config())
            .args(["-p", &self.host.port.to_string()])
            .args(options)
            .arg(format!("{user}@{}", self.host.ip));
        if remote.is_empty() {
            cmd.arg("true");
        } else {
            cmd.args(remote);
        }
        run_to_end(&mut cmd, None)
    }

    /// `git clone URL NAME` in the workspace; returns the output.
    #[track_caller]
    pub fn clone_repo(&self, name: &str) -> Output {
        self.ws_run("git", ["clone", "-q", &self.host.url(), name])
    }

    /// A new commit in clone `name` (created if absent: `git init` with the
    /// git host as `origin`), pushed to `branch`; returns the push's output.
    #[track_caller]
    pub fn commit_and_push(&self, name: &str, branch: &str) -> Output {
        let repo = self.dir.path().join(name);
        if !repo.exists() {
            self.ws_run("git", ["init", "-q", name]).ok();
            self.git_in(name, &["remote", "add", "origin", &self.host.url()])
                .ok();
        }
        let message = format!("commit {}", unique());
        self.git_in(name, &["commit", "-q", "--allow-empty", "-m", &message])
            .ok();
        self.git_in(
            name,
            &["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")],
        )
    }

    /// `git -C NAME ARGS` in the workspace.
    #[track_caller]
    pub fn git_in(&self, name: &str, args: &[&str]) -> Output {
        let mut cmd = self.ws_command_with_sock("git", &self.ws.agent_sock());
        cmd.arg("-C").arg(self.dir.path().join(name)).args(args);
        run_to_end(&mut cmd, None)
    }

    /// Asserts that the proxy and the git host still run.
    #[track_caller]
    pub fn assert_running(&mut self) {
        self.proxy().assert_running();
        self.host.sshd.assert_running();
        self.agent.assert_running();
    }
}

impl Default for SshWorld {
    fn default() -> Self {
        Self::new()
    }
}
