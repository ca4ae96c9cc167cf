//! The laptop side: a config dir and the `nexus-agent-proxy` CLI.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::{Daemon, Must, Output, Workspace, command, proxy_bin, run_to_end, unique};

/// A laptop: its own `NEXUS_CONFIG_DIR` (identity, paired workspaces) and
/// home directory. Proxies it runs are returned to the test, which stops
/// them by dropping them.
#[derive(Debug)]
pub struct Laptop {
    config: PathBuf,
    home: PathBuf,
    dir: TempDir,
}

impl Laptop {
    /// A laptop with empty configuration.
    #[track_caller]
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-laptop-")
            .tempdir()
            .must("creating the laptop's temp dir");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).must("creating the laptop's home");
        Self {
            config: dir.path().join("config"),
            home,
            dir,
        }
    }

    /// `NEXUS_CONFIG_DIR` (audit log, lock file, control socket).
    pub fn config_dir(&self) -> &Path {
        &self.config
    }

    /// The laptop user's home (`~/` in file sources).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Where the laptop's certificate and key live.
    pub fn identity_dir(&self) -> PathBuf {
        self.config.join("identity")
    }

    /// A `nexus-agent-proxy` command with this laptop's environment.
    pub fn command(&self) -> Command {
        let mut cmd = command(proxy_bin(), &self.home);
        cmd.env("NEXUS_CONFIG_DIR", &self.config);
        cmd
    }

    /// Runs `nexus-agent-proxy ARGS` to completion.
    #[track_caller]
    pub fn cli<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_to_end(self.command().args(args), None)
    }

    /// Starts `nexus-agent-proxy ARGS` without waiting (`audit tail -f`),
    /// stdout piped; the test kills it.
    #[track_caller]
    pub fn spawn_cli<I, S>(&self, args: I) -> std::process::Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command()
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .must("starting nexus-agent-proxy")
    }

    /// Runs `nexus-agent-proxy ARGS` with `input` on stdin (a pipe, not a TTY).
    #[track_caller]
    pub fn cli_with_stdin<I, S>(&self, args: I, input: &[u8]) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_to_end(self.command().args(args), Some(input))
    }

    /// `pair URI --name NAME`, whatever the outcome; over the workspace's
    /// front when `NEXUS_E2E_ROUTE` put one before it.
    #[track_caller]
    pub fn pair(&self, uri: &str, name: &str) -> Output {
        let address = uri
            .trim()
            .strip_prefix("nexus://")
            .and_then(|rest| rest.split('?').next())
            .unwrap_or_default();
        let mut args = vec![
            "pair".to_owned(),
            uri.to_owned(),
            "--name".into(),
            name.into(),
        ];
        args.extend(crate::front::pair_args(address));
        self.cli(args)
    }

    /// Writes a policy file outside the config dir and returns its path.
    #[track_caller]
    pub fn write_policy(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join(format!("policy-{}.toml", unique()));
        std::fs::write(&path, text).must(&format!("writing {}", path.display()));
        path
    }

    /// Writes a workspace record by hand, as `pair` would have.
    #[track_caller]
    pub fn add_workspace_record(&self, name: &str, address: &str, fingerprint: &str) {
        let dir = self.workspaces_dir();
        let record = format!(
            "name = {name:?}\naddress = {address:?}\nfingerprint = {fingerprint:?}\npaired_at = 0\n"
        );
        std::fs::write(dir.join(format!("{name}.toml")), record).must("writing a workspace record");
    }

    /// Copies the record of workspace `name` from another laptop's config,
    /// as someone who got hold of the file would.
    #[track_caller]
    pub fn copy_workspace_record(&self, from: &Laptop, name: &str) {
        let file = format!("{name}.toml");
        let src = from.config.join("workspaces").join(&file);
        let dir = self.workspaces_dir();
        std::fs::copy(&src, dir.join(&file)).must(&format!("copying {}", src.display()));
    }

    /// `CONFIG/workspaces`, created 0700 like the proxy does.
    #[track_caller]
    fn workspaces_dir(&self) -> PathBuf {
        let dir = self.config.join("workspaces");
        let mut b = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(b.recursive(true), 0o700);
        b.create(&dir).must(&format!("creating {}", dir.display()));
        dir
    }

    /// Starts `run --workspace NAME --policy POLICY` with `envs` added (the
    /// values of `env:` sources), without waiting for anything.
    #[track_caller]
    pub fn spawn_run(&self, workspace: &str, policy: &Path, envs: &[(&str, &str)]) -> Daemon {
        self.spawn_run_with(workspace, policy, &os_envs(envs), &[])
    }

    /// Like [`Laptop::spawn_run`], with more `run` arguments (`--ssh-agent PATH`).
    #[track_caller]
    pub fn spawn_run_with(
        &self,
        workspace: &str,
        policy: &Path,
        envs: &[(&str, &OsStr)],
        args: &[&OsStr],
    ) -> Daemon {
        let mut cmd = self.command();
        cmd.arg("run")
            .args(["--workspace", workspace])
            .arg("--policy")
            .arg(policy)
            .args(args)
            .env("NEXUS_LOG", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let log = self.dir.path().join(format!("proxy-{}.log", unique()));
        Daemon::spawn(cmd, &log)
    }

    /// Starts `run` for workspace `name` and waits until `ws` reports the
    /// link up (`nexus-shim status` exits 0).
    #[track_caller]
    pub fn run(&self, ws: &Workspace, name: &str, policy: &Path, envs: &[(&str, &str)]) -> Daemon {
        self.run_with(ws, name, policy, &os_envs(envs), &[])
    }

    /// Like [`Laptop::run`], with more `run` arguments and environment
    /// (`SSH_AUTH_SOCK`, `--ssh-agent PATH`).
    #[track_caller]
    pub fn run_with(
        &self,
        ws: &Workspace,
        name: &str,
        policy: &Path,
        envs: &[(&str, &OsStr)],
        args: &[&OsStr],
    ) -> Daemon {
        let mut proxy = self.spawn_run_with(name, policy, envs, args);
        ws.wait_linked(&mut proxy);
        proxy
    }

    /// Writes `~/.ssh/known_hosts` in the laptop's home (what the proxy pins
    /// hosts from when a rule has no `host_keys`).
    #[track_caller]
    pub fn write_known_hosts(&self, text: &str) {
        let dir = self.home.join(".ssh");
        std::fs::create_dir_all(&dir).must("creating the laptop's ~/.ssh");
        std::fs::write(dir.join("known_hosts"), text).must("writing the laptop's known_hosts");
    }
}

/// `(name, value)` pairs as `OsStr` values.
fn os_envs<'a>(envs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a OsStr)> {
    envs.iter().map(|(k, v)| (*k, OsStr::new(*v))).collect()
}

impl Default for Laptop {
    fn default() -> Self {
        Self::new()
    }
}
