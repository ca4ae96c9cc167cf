//! Git brokered by the laptop over SSH (issue 16), with real parts: a git
//! host `sshd` with bare repositories next to the workspace, the laptop's
//! own `ssh` and `ssh-agent`, and the workspace's `git` configured by
//! `nexus-shim env` (`core.sshCommand = nexus-shim git-ssh`). No
//! `[[ssh.allow]]` rule exists: the workspace's agent.sock signs nothing,
//! and every byte reaches the host through the laptop, which decides each
//! push with all its ref updates before forwarding any of it.

use std::path::{Path, PathBuf};
use std::process::Command;

use nexus_e2e::sshd::{SshWorld, bare_repo, chown};
use nexus_e2e::{Must, Output, run_to_end, shim_binary};

/// A git host, a linked laptop whose policy brokers `repo.git` (fetch,
/// push to `agent/*`), and a second repository no rule names.
struct Broker {
    world: SshWorld,
    /// A bare repository no rule names.
    other: PathBuf,
}

/// The line of the `[[git.allow]]` header in the policy file the proxy runs
/// (`version = 1` and a blank line come first).
const ALLOW_LINE: usize = 3;

impl Broker {
    #[track_caller]
    fn start() -> Self {
        let mut world = SshWorld::new();
        let other = bare_repo(world.host.dir(), "other.git", world.host.user);
        seed(&world.host.dir().join("repo.git"), world.host.user);
        let dir = world.host.dir().display().to_string();
        let policy = format!(
            "[[git.allow]]\nhost = {:?}\nrepo = {:?}\npush = [\"agent/*\"]\nssh_user = {:?}\n",
            world.host.policy_host(),
            format!("{}/repo", dir.trim_start_matches('/')),
            world.host.user,
        );
        // The laptop's ssh: its own known_hosts (which pins the git host)
        // and its agent; nothing of the machine's configuration.
        let laptop_ssh = laptop_ssh(&world);
        world.start_proxy_with_env(&policy, &[("NEXUS_GIT_SSH", laptop_ssh.as_os_str())]);
        Self { world, other }
    }

    fn repo(&self) -> PathBuf {
        self.world.host.dir().join("repo.git")
    }

    fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://git@{}:{}{}",
            self.world.host.ip,
            self.world.host.port,
            repo.display()
        )
    }

    /// `git ARGS` in the workspace, configured by `nexus-shim env`.
    #[track_caller]
    fn git(&self, args: &[&str]) -> Output {
        let mut cmd = self.on_workspace();
        cmd.args([
            "-c",
            &format!("eval \"$({} env)\" && exec git \"$@\"", shim()),
        ])
        .arg("sh")
        .args(args);
        run_to_end(&mut cmd, None)
    }

    /// `nexus-shim git-ssh ARGS` in the workspace, with `input` on stdin.
    #[track_caller]
    fn git_ssh(&self, args: &[&str], input: &[u8]) -> Output {
        let mut cmd = self.on_workspace();
        cmd.args(["-c", &format!("exec {} git-ssh \"$@\"", shim())])
            .arg("sh")
            .args(args);
        run_to_end(&mut cmd, Some(input))
    }

    fn on_workspace(&self) -> Command {
        let state = self
            .world
            .ws
            .agent_sock()
            .parent()
            .must("agent.sock has a directory")
            .to_path_buf();
        let mut cmd = self.world.ws.command_on_host("sh");
        cmd.current_dir(self.world.ws_dir())
            .env("NEXUS_STATE_DIR", state)
            .env("NEXUS_WAIT", "10s")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "E2E")
            .env("GIT_AUTHOR_EMAIL", "e2e@example.com")
            .env("GIT_COMMITTER_NAME", "E2E")
            .env("GIT_COMMITTER_EMAIL", "e2e@example.com");
        cmd
    }

    /// The git host's refs of `repo`: `NAME OID` lines.
    fn refs(&self, repo: &Path) -> String {
        let mut cmd = Command::new("git");
        cmd.args(["-c", "safe.directory=*", "--git-dir"])
            .arg(repo)
            .args(["for-each-ref", "--format=%(refname) %(objectname)"]);
        run_to_end(&mut cmd, None).ok().stdout.clone()
    }

    /// A new commit in clone `name`, pushed with `refspecs`.
    #[track_caller]
    fn commit_and_push(&self, name: &str, refspecs: &[&str]) -> Output {
        self.git(&["-C", name, "commit", "-q", "--allow-empty", "-m", "work"])
            .ok();
        let mut args = vec!["-C", name, "push", "origin"];
        args.extend_from_slice(refspecs);
        self.git(&args)
    }
}

fn shim() -> String {
    format!("'{}'", shim_binary().display())
}

/// One commit on `main` in `repo`, written straight into it.
#[track_caller]
fn seed(repo: &Path, user: &str) {
    // Ours while we write into it (git refuses a repository of another user).
    chown(repo, "root");
    let work = tempfile::tempdir().must("a seed work tree");
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.current_dir(work.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args([
                "-c",
                "user.name=Seed",
                "-c",
                "user.email=seed@example.com",
                "-c",
                "init.defaultBranch=main",
                "-c",
                "safe.directory=*",
            ])
            .args(args);
        run_to_end(&mut cmd, None).ok();
    };
    git(&["init", "-q", "."]);
    git(&["commit", "-q", "--allow-empty", "-m", "seed"]);
    git(&[
        "push",
        "-q",
        &repo.display().to_string(),
        "HEAD:refs/heads/main",
    ]);
    chown(repo, user);
}

/// A wrapper the proxy runs as its `ssh` (`NEXUS_GIT_SSH`): the laptop's
/// known_hosts and no other configuration.
#[track_caller]
fn laptop_ssh(world: &SshWorld) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let home = world.laptop.home();
    let config = home.join("git_ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host *\n  UserKnownHostsFile {}/.ssh/known_hosts\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  CheckHostIP no\n  UpdateHostKeys no\n  \
             IdentityFile {}/no-such-key\n  ControlMaster no\n  ControlPath none\n  \
             ConnectTimeout 10\n  LogLevel ERROR\n",
            home.display(),
            home.display()
        ),
    )
    .must("writing the laptop's ssh config");
    let wrapper = home.join("laptop-ssh");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec ssh -F '{}' \"$@\"\n", config.display()),
    )
    .must("writing the laptop's ssh wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .must("chmod the wrapper");
    wrapper
}

/// A refused push as git shows it: one line naming the ref and the rule,
/// then git's own failure.
#[track_caller]
fn refused(out: &Output, reference: &str, rule: &str) {
    assert_ne!(out.exit_code, Some(0), "the push must fail\n{out}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("push refused by the laptop"))
        .unwrap_or_else(|| panic!("no refusal line\n{out}"));
    assert!(
        line.contains(reference) && line.contains(rule),
        "the refusal names {reference} and {rule}: {line}"
    );
}

#[test]
fn clone_fetch_and_push_per_ref_through_the_laptop() {
    let mut b = Broker::start();
    let rule = format!(".toml:{ALLOW_LINE})");
    let url = b.url(&b.repo());

    // No credential or rule for the workspace's own ssh: the clone goes
    // through the laptop.
    b.git(&["clone", "-q", &url, "c"]).ok();
    b.world.wait_for_proxy_line(&["decision", "allow", "fetch"]);
    b.git(&["-C", "c", "fetch", "-q", "origin"]).ok();

    // A push to an agent branch is accepted.
    let before = b.refs(&b.repo());
    b.commit_and_push("c", &["HEAD:refs/heads/agent/x"]).ok();
    let after = b.refs(&b.repo());
    assert!(after.contains("refs/heads/agent/x "), "{after}");
    assert_eq!(
        main_of(&before),
        main_of(&after),
        "main untouched by the agent push"
    );

    // main, a mixed push and a delete are refused whole, naming the ref
    // and the rule, and the server's refs do not change.
    let before = b.refs(&b.repo());
    refused(
        &b.commit_and_push("c", &["HEAD:refs/heads/main"]),
        "refs/heads/main",
        &rule,
    );
    refused(
        &b.commit_and_push("c", &["HEAD:refs/heads/agent/y", "HEAD:refs/heads/main"]),
        "refs/heads/main",
        &rule,
    );
    refused(
        &b.git(&["-C", "c", "push", "origin", ":refs/heads/agent/x"]),
        "delete = true",
        &rule,
    );
    assert_eq!(
        b.refs(&b.repo()),
        before,
        "nothing of a refused push landed"
    );
    // One decision names every ref of the push.
    b.world
        .wait_for_proxy_line(&["decision", "deny", "refs/heads/main, refs/heads/agent/y"]);

    // A repository outside the glob is refused when the connection opens.
    let other_url = b.url(&b.other.clone());
    let out = b.git(&["-C", "c", "push", &other_url, "HEAD:refs/heads/agent/x"]);
    out.code(128).stderr_has("no [[git.allow]] rule matches");
    assert_eq!(b.refs(&b.other), "", "nothing reached the other repository");
    b.world.assert_running();
}

fn main_of(refs: &str) -> Option<&str> {
    refs.lines().find(|l| l.starts_with("refs/heads/main "))
}

#[test]
fn hostile_inputs_are_refused_and_the_proxy_keeps_serving() {
    let mut b = Broker::start();
    let port = b.world.host.port.to_string();
    let host = b.world.host.ip.to_string();
    let repo = b.repo().display().to_string();
    let ssh = |command: &str, input: &[u8]| {
        b.git_ssh(&["-p", &port, &format!("git@{host}"), command], input)
    };
    let before = b.refs(&b.repo());

    // Paths that could name another repository or inject an option.
    for (path, why) in [
        (format!("{repo}/../other.git"), "'..'"),
        (repo.replace("/repo.git", "//repo.git"), "empty segments"),
        (repo.replace("/repo.git", "%2frepo.git"), "contains '%'"),
        ("-oProxyCommand=touch /tmp/x".to_owned(), "contains '='"),
        ("-F /tmp/x".to_owned(), "contains ' '"),
        ("-upload-pack=x".to_owned(), "contains '='"),
    ] {
        let out = ssh(&format!("git-upload-pack '{path}'"), b"");
        out.code(3).stderr_has(why);
    }
    // Hosts and commands the shim does not even send.
    for args in [
        &["-p", &port, "git@a b", "git-upload-pack 'x'"][..],
        &["-oProxyCommand=touch /tmp/x", "git-upload-pack 'x'"],
        &["-p", &port, &host, "sh -c id"],
        &["-p", &port, &host, "git-upload-pack 'x'\\''y'"],
    ] {
        b.git_ssh(args, b"").code(2).stderr_has("git-ssh:");
    }

    // Push requests the laptop cannot decide: nothing reaches the server.
    let oid = "1".repeat(40);
    let command = |name: &str| {
        let line = format!("{} {oid} {name}\0report-status\n", "0".repeat(40));
        format!("{:04x}{line}", line.len() + 4)
    };
    let push = format!("git-receive-pack '{repo}'");
    let pkt = |s: &str| format!("{:04x}{s}", s.len() + 4);
    let push_options = format!(
        "{}0000{}0000PACK",
        pkt(&format!(
            "{} {oid} refs/heads/agent/z\0report-status push-options\n",
            "0".repeat(40)
        )),
        pkt("merge_request.create\n")
    );
    for (input, why) in [
        (b"0001".to_vec(), "protocol v2"),
        (
            b"0014command=ls-refs\n0000".to_vec(),
            "malformed ref update",
        ),
        (b"ffffnot a length".to_vec(), "bad pkt-line length"),
        (b"0100short".to_vec(), "ended before its command list"),
        (
            command("refs/heads/agent/z").into_bytes(),
            "ended before its command list",
        ),
        (b"PACK\x00\x00\x00\x02".to_vec(), "a pack"),
        // An allowed ref, with options a server could act on (GitLab's
        // merge_request.*, Gerrit's submit) beyond what the policy sees.
        (push_options.into_bytes(), "push options"),
    ] {
        let out = ssh(&push, &input);
        assert_ne!(out.exit_code, Some(0), "{out}");
        out.stderr_has("push refused by the laptop").stderr_has(why);
    }
    // A command list sent to upload-pack pushes nothing.
    let smuggled = format!("{}0000PACK", command("refs/heads/main"));
    let out = ssh(&format!("git-upload-pack '{repo}'"), smuggled.as_bytes());
    assert_ne!(out.exit_code, Some(0), "{out}");
    assert_eq!(b.refs(&b.repo()), before, "no hostile input changed a ref");
    // Each refused push is audited as a denial.
    b.world
        .wait_for_proxy_line(&["refused", "tool=\"git\"", "protocol v2"]);
    let audited = b
        .world
        .count_proxy_lines(&["decision", "deny", "(command list not read)"]);
    assert_eq!(audited, 7, "{}", b.world.proxy_log());

    // The proxy still serves.
    b.git(&["clone", "-q", &b.url(&b.repo()), "after"]).ok();
    b.world.assert_running();
}
