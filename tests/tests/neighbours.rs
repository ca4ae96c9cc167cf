//! Hostile neighbours inside the workspace (issue 17): a second local user
//! must not be able to swap the shim's state directory, stand in for its
//! daemon, or hand the workspace user a URL of theirs.
//!
//! Runs as root (it creates two users and runs the shim as each with
//! `setpriv`); elsewhere it says loudly that it was skipped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nexus_e2e::{DEADLINE, Daemon, Must, Output, is_root, poll, run_to_end, shim_binary};

const VICTIM: &str = "nexus-e2e-victim";
const MALLORY: &str = "nexus-e2e-mallory";

/// The uid of `user`, created if missing.
fn user(name: &str) -> u32 {
    let id = || {
        Command::new("id")
            .args(["-u", name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
    };
    if let Some(uid) = id() {
        return uid;
    }
    run_to_end(
        Command::new("useradd").args(["-M", "-s", "/bin/sh", "-c", "nexus e2e neighbour", name]),
        None,
    );
    id().must(&format!("creating user {name}"))
}

/// The scene: a directory everyone can enter, the shim binary copied where
/// both users can run it, and a home for the victim.
struct Scene {
    dir: tempfile::TempDir,
    shim: PathBuf,
    victim: u32,
    mallory: u32,
}

impl Scene {
    fn new() -> Option<Scene> {
        if !is_root() {
            eprintln!("SKIPPED: the neighbour tests need root (two users, setpriv)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-neighbours-")
            .tempdir()
            .must("temp dir");
        chmod(dir.path(), 0o755);
        let shim = dir.path().join("nexus-shim");
        std::fs::copy(shim_binary(), &shim).must("copying the shim");
        chmod(&shim, 0o755);
        Some(Scene {
            victim: user(VICTIM),
            mallory: user(MALLORY),
            shim,
            dir,
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A directory owned by `uid` with `mode`.
    fn folder(&self, rel: &str, uid: u32, mode: u32) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).must("mkdir");
        rustix::fs::chown(&p, Some(rustix::fs::Uid::from_raw(uid)), None).must("chown");
        chmod(&p, mode);
        p
    }

    /// `sh -c SCRIPT` as `uid`, with the shim as `$SHIM` and `HOME`.
    fn as_user(&self, uid: u32, home: &Path, script: &str) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", home)
        .env("SHIM", &self.shim)
        .env("NEXUS_LOG", "warn");
        cmd
    }

    fn run(&self, uid: u32, home: &Path, script: &str) -> Output {
        run_to_end(&mut self.as_user(uid, home, script), None)
    }

    /// The victim's daemon on `state` (`None`: the default under `home`).
    fn serve(&self, home: &Path, state: Option<&Path>, umask: &str) -> Daemon {
        let flag = state.map_or_else(String::new, |s| format!("--state-dir '{}'", s.display()));
        let script = format!(
            "umask {umask}; exec \"$SHIM\" serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 {flag}"
        );
        Daemon::spawn(
            self.as_user(self.victim, home, &script),
            &self.path("serve.log"),
        )
    }
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).must("chmod");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0)
}

fn wait_for(p: &Path, daemon: &Daemon) {
    let ready = poll(DEADLINE, || p.exists().then_some(()));
    assert!(
        ready.is_some(),
        "{} never appeared\n{}",
        p.display(),
        daemon.log()
    );
}

/// With the user's umask at 000 the shim still creates `~/.local`,
/// `~/.local/state` and its state dir 0700, so the other user cannot move
/// the state dir aside.
#[test]
fn umask_000_does_not_open_the_state_dir_to_others() {
    let Some(s) = Scene::new() else { return };
    let home = s.folder("victim-home", s.victim, 0o755);
    let daemon = s.serve(&home, None, "000");
    let state = home.join(".local/state/nexus");
    wait_for(&state.join("http.url"), &daemon);
    for dir in [
        home.join(".local"),
        home.join(".local/state"),
        state.clone(),
    ] {
        assert_eq!(
            mode(&dir) & 0o077,
            0,
            "{} is {:o}",
            dir.display(),
            mode(&dir)
        );
    }
    let out = s.run(
        s.mallory,
        &s.path("."),
        &format!(
            "mv '{}' '{}/stolen'",
            state.display(),
            s.path(".").display()
        ),
    );
    assert_ne!(
        out.exit_code,
        Some(0),
        "the other user moved the state dir\n{out}"
    );
    assert!(state.join("shim.sock").exists());
    // The victim's own commands are fine.
    s.run(s.victim, &home, "\"$SHIM\" env")
        .ok()
        .stdout_has("NEXUS_HTTP_URL='http://127.0.0.1:");
}

/// A state dir in a world-writable volume without the sticky bit (the
/// sidecar layout done wrong) is refused by the daemon and by every command,
/// naming the folder; with the sticky bit it works, and the other user can
/// no longer move it aside; made writable later (after pairing), every
/// command refuses again.
#[test]
fn a_shared_volume_needs_the_sticky_bit() {
    let Some(s) = Scene::new() else { return };
    let home = s.folder("victim-home2", s.victim, 0o755);
    let shared = s.folder("shared", 0, 0o2777);
    let state = shared.join("nexus");
    let mut daemon = s.serve(&home, Some(&state), "022");
    let exited = poll(DEADLINE, || daemon.try_exit());
    assert!(
        exited.is_some_and(|st| !st.success()),
        "serve ran in a 2777 volume"
    );
    let log = daemon.log();
    assert!(
        log.contains("sticky bit") && log.contains("shared"),
        "{log}"
    );
    for cmd in ["status", "env", "pairing-uri", "token get demo --wait 0"] {
        let out = s.run(
            s.victim,
            &home,
            &format!("\"$SHIM\" {cmd} --state-dir '{}'", state.display()),
        );
        assert_ne!(out.exit_code, Some(0), "{out}");
        out.stderr_has("sticky bit");
    }

    // With the sticky bit the layout is safe.
    chmod(&shared, 0o3777);
    let daemon = s.serve(&home, Some(&state), "022");
    wait_for(&state.join("http.url"), &daemon);
    let out = s.run(
        s.mallory,
        &home,
        &format!("mv '{}' '{}/x'", state.display(), shared.display()),
    );
    assert_ne!(
        out.exit_code,
        Some(0),
        "moved despite the sticky bit\n{out}"
    );
    s.run(
        s.victim,
        &home,
        &format!("\"$SHIM\" env --state-dir '{}'", state.display()),
    )
    .ok()
    .stdout_has("NEXUS_HTTP_URL");

    // The volume loses its sticky bit while the daemon runs.
    chmod(&shared, 0o2777);
    let out = s.run(
        s.victim,
        &home,
        &format!("\"$SHIM\" status --state-dir '{}'", state.display()),
    );
    assert_ne!(out.exit_code, Some(0), "{out}");
    out.stderr_has("sticky bit");
    drop(daemon);
}

/// A state dir another user made for the victim is refused, whatever
/// daemon runs there.
#[test]
fn a_state_dir_of_another_user_is_refused() {
    let Some(s) = Scene::new() else { return };
    let home = s.folder("victim-home3", s.victim, 0o755);
    let sticky = s.folder("tmp", 0, 0o1777);
    let theirs = s.folder("tmp/nexus", s.mallory, 0o700);
    for cmd in ["pairing-uri", "env", "http url"] {
        let out = s.run(
            s.victim,
            &home,
            &format!("\"$SHIM\" {cmd} --state-dir '{}'", theirs.display()),
        );
        assert_ne!(out.exit_code, Some(0), "{out}");
        assert!(
            out.stderr.contains("owned by uid") || out.stderr.contains("not by you"),
            "{out}"
        );
    }
    drop(sticky);
}

/// Behind the victim's own `shim.sock` (a link the victim was tricked into)
/// listens a process of another user: `SO_PEERCRED` shows it, and the
/// command refuses to talk to it.
#[test]
fn a_daemon_of_another_user_is_not_trusted() {
    let Some(s) = Scene::new() else { return };
    let home = s.folder("victim-home4", s.victim, 0o755);
    let public = s.folder("public", s.mallory, 0o755);
    let evil = public.join("evil.sock");
    let listener = format!(
        "import socket,os,time\ns=socket.socket(socket.AF_UNIX)\ns.bind('{}')\nos.chmod('{}',0o777)\ns.listen(8)\nopen('{}','w').close()\nwhile True:\n  c,_=s.accept()\n",
        evil.display(),
        evil.display(),
        public.join("ready").display()
    );
    let mallory = Daemon::spawn(
        {
            let mut c = s.as_user(s.mallory, &public, "exec python3 -c \"$CODE\"");
            c.env("CODE", listener);
            c
        },
        &s.path("mallory.log"),
    );
    wait_for(&public.join("ready"), &mallory);
    let state = s.folder("victim-state", s.victim, 0o700);
    std::os::unix::fs::symlink(&evil, state.join("shim.sock")).must("symlink");
    let out = s.run(
        s.victim,
        &home,
        &format!(
            "\"$SHIM\" token get demo --wait 0 --state-dir '{}'",
            state.display()
        ),
    );
    assert_ne!(out.exit_code, Some(0), "{out}");
    out.stderr_has(&format!("runs as uid {}", s.mallory));
}

/// Behind a state dir opened up by mistake (0711, sockets 0666), the
/// daemon itself still refuses another user on `agent.sock` and
/// `shim.sock`, as ssh-agent does (same uid or root).
#[test]
fn the_daemon_refuses_another_users_connections() {
    let Some(s) = Scene::new() else { return };
    let home = s.folder("victim-home5", s.victim, 0o755);
    let state = home.join("state");
    let daemon = s.serve(&home, Some(&state), "077");
    wait_for(&state.join("http.url"), &daemon);
    chmod(&state, 0o711);
    for sock in ["agent.sock", "shim.sock"] {
        chmod(&state.join(sock), 0o666);
    }
    let out = s.run(
        s.mallory,
        &home,
        &format!(
            "SSH_AUTH_SOCK='{}' ssh-add -l",
            state.join("agent.sock").display()
        ),
    );
    // Closed at once: ssh-add dies of the broken pipe or says it cannot
    // talk to the agent; never a list, never "no identities" (an answer).
    assert!(
        out.exit_code != Some(0)
            && !out.stdout.contains("SHA256")
            && !out.stdout.contains("no identities"),
        "another user used the agent\n{out}"
    );
    let refused = poll(DEADLINE, || {
        daemon
            .log()
            .contains("agent connection from another user refused")
            .then_some(())
    });
    assert!(refused.is_some(), "{}", daemon.log());
    let out = s.run(
        s.mallory,
        &home,
        &format!("\"$SHIM\" status --state-dir '{}'", state.display()),
    );
    assert_ne!(out.exit_code, Some(0), "{out}");
}
