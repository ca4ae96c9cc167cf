//! A workspace host for `nexus-agent-proxy connect`: a network namespace
//! with a fresh unprivileged user who has no shim installed, reached by a
//! real `sshd` there, or by stand-in `kubectl` and `docker` executables
//! that check the command line `connect` builds and then enter the same
//! namespace as that user (real clusters and a docker daemon are not
//! available here).
//!
//! The laptop finds the `ssh` wrapper (which only adds `-F` with the test's
//! key and known_hosts, as `~/.ssh/config` would) and the stand-ins first
//! on its `PATH`: [`ConnectHost::path`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::netns::NetNs;
use crate::sshd::{PubKey, SSHD, require_openssh, spawn_sshd_on, sshd_config};
use crate::{Daemon, Must, Output, is_root, run_to_end, unique};

/// See the module documentation.
#[derive(Debug)]
pub struct ConnectHost {
    ns: NetNs,
    /// The workspace user.
    pub user: String,
    home: PathBuf,
    bin: PathBuf,
    sshd: Option<(Daemon, u16)>,
    dir: TempDir,
}

impl ConnectHost {
    /// The namespace, the user (home 0700, nothing in it) and the stand-ins.
    #[track_caller]
    pub fn start() -> Self {
        assert!(
            is_root() && crate::netns::supported(),
            "the connect tests create a user and a network namespace: run them as root"
        );
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-connect-")
            .tempdir()
            .must("creating a temp dir");
        set_mode(dir.path(), 0o755);
        let user = format!("nxc{}x{}", std::process::id() % 100_000, unique());
        let home = dir.path().join("home");
        let out = run_to_end(
            Command::new("useradd")
                .args(["-M", "-s", "/bin/sh", "-p", "*", "-d"])
                .arg(&home)
                .arg(&user),
            None,
        );
        assert!(out.exit_code == Some(0), "useradd {user}\n{out}");
        std::fs::create_dir(&home).must("creating the workspace home");
        run_to_end(Command::new("chown").arg(&user).arg(&home), None).ok();
        set_mode(&home, 0o700);
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).must("creating the stand-ins' dir");
        let host = Self {
            ns: NetNs::create(),
            user,
            home,
            bin,
            sshd: None,
            dir,
        };
        host.write_stand_ins();
        host
    }

    /// Starts sshd in the namespace, letting the user in with a fresh key,
    /// and the laptop's `ssh` wrapper that uses it.
    #[track_caller]
    pub fn with_sshd(mut self) -> Self {
        require_openssh();
        let root = self.dir.path().join("sshd");
        std::fs::create_dir(&root).must("creating the sshd dir");
        set_mode(&root, 0o755);
        let host_key = PubKey::generate(&root, "host_ed25519", "ed25519");
        let client = PubKey::generate(&root, "client_ed25519", "ed25519");
        std::fs::write(root.join("authorized_keys"), format!("{}\n", client.line))
            .must("writing authorized_keys");
        set_mode(&root.join("authorized_keys"), 0o644);
        std::fs::create_dir_all("/run/sshd").must("creating /run/sshd");
        let ip = self.ns.ws_ip;
        let ns = &self.ns;
        let (daemon, port) = spawn_sshd_on(&|| ns.exec(SSHD), &root, |port| {
            sshd_config(&root, ip, port, &self.user)
        });
        let known = root.join("known_hosts");
        std::fs::write(&known, format!("[{ip}]:{port} {}\n", host_key.line))
            .must("writing known_hosts");
        let config = root.join("ssh_config");
        std::fs::write(
            &config,
            format!(
                "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
                 StrictHostKeyChecking yes\n  LogLevel ERROR\n",
                root.join("client_ed25519").display(),
                known.display()
            ),
        )
        .must("writing ssh_config");
        self.script(
            "ssh",
            &format!("exec /usr/bin/ssh -F {} \"$@\"\n", config.display()),
        );
        self.sshd = Some((daemon, port));
        self
    }

    /// `ssh://USER@IP:PORT`.
    #[track_caller]
    pub fn ssh_target(&self) -> String {
        let port = self
            .sshd
            .as_ref()
            .map_or_else(|| panic!("with_sshd first"), |(_, p)| *p);
        format!("ssh://{}@{}:{port}", self.user, self.ns.ws_ip)
    }

    /// The laptop's `PATH`: the wrapper and stand-ins first.
    pub fn path(&self) -> OsString {
        let mut path = self.bin.clone().into_os_string();
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        path
    }

    /// Writes an executable script into the laptop's stand-in dir.
    #[track_caller]
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).must("writing a stand-in");
        set_mode(&path, 0o755);
        path
    }

    /// The command lines the stand-ins were given, up to the remote program.
    pub fn stand_in_log(&self) -> String {
        std::fs::read_to_string(self.bin.join("calls.log")).unwrap_or_default()
    }

    /// Runs `script` with `sh -c` as the workspace user, on the workspace
    /// host, with a clean environment.
    #[track_caller]
    pub fn as_user(&self, script: &str) -> Output {
        run_to_end(self.enter_as_user().args(["sh", "-c", script]), None)
    }

    fn enter_as_user(&self) -> Command {
        let mut cmd = self.ns.exec("runuser");
        cmd.args(["-u", &self.user, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin");
        cmd
    }

    /// The shim `connect` installs.
    pub fn shim(&self) -> PathBuf {
        self.home.join(".local/bin/nexus-shim")
    }

    /// The workspace's state dir.
    pub fn state_dir(&self) -> PathBuf {
        self.home.join(".local/state/nexus")
    }

    fn write_stand_ins(&self) {
        let enter = format!(
            "ip netns exec {} runuser -u {} -- env -i HOME={} PATH=/usr/local/bin:/usr/bin:/bin",
            self.ns.name(),
            self.user,
            self.home.display()
        );
        let log = self.bin.join("calls.log");
        let log = log.display();
        // kubectl exec -i [-n NS] POD [-c C] -- PROGRAM ARGS...
        self.script(
            "kubectl",
            &format!(
                "[ \"$1 $2\" = 'exec -i' ] || {{ echo \"kubectl stand-in: not exec -i: $*\" >&2; exit 2; }}\n\
                 shift 2; line='kubectl exec -i'\n\
                 while [ \"$1\" != -- ]; do [ $# -gt 0 ] || exit 2; line=\"$line $1\"; shift; done; shift\n\
                 echo \"$line -- $1 $2\" >> {log}\n\
                 exec {enter} \"$@\"\n"
            ),
        );
        // docker exec -i CONTAINER PROGRAM ARGS...
        self.script(
            "docker",
            &format!(
                "[ \"$1 $2\" = 'exec -i' ] || {{ echo \"docker stand-in: not exec -i: $*\" >&2; exit 2; }}\n\
                 echo \"docker exec -i $3 $4 $5\" >> {log}\n\
                 shift 3\n\
                 exec {enter} \"$@\"\n"
            ),
        );
    }
}

impl Drop for ConnectHost {
    fn drop(&mut self) {
        // The daemon `connect` started outlives every session on purpose.
        if let Ok(pid) = std::fs::read_to_string(self.state_dir().join("serve.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = Command::new("userdel").arg(&self.user).status();
    }
}

#[track_caller]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .must(&format!("chmod {mode:o} {}", path.display()));
}
