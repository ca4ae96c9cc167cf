//! `nexus-agent-proxy connect` / `disconnect` against a workspace host with
//! a fresh user and no shim: a real sshd in its own network namespace, and
//! stand-in `kubectl`/`docker` executables entering that namespace.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use nexus_e2e::connect_host::ConnectHost;
use nexus_e2e::sshd::LaptopAgent;
use nexus_e2e::{DEADLINE, DEMO_POLICY, Daemon, Laptop, Must, Output, poll, run_to_end};

/// The shim to upload: `NEXUS_STATIC_SHIM` (the static release build), else
/// a stripped copy of the debug build (what a release ships is stripped).
fn upload_shim() -> PathBuf {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        if let Some(p) = std::env::var_os("NEXUS_STATIC_SHIM") {
            return PathBuf::from(p);
        }
        let out = std::env::temp_dir().join(format!("nexus-e2e-shim-{}", std::process::id()));
        run_to_end(
            Command::new("strip")
                .arg("-o")
                .arg(&out)
                .arg(nexus_e2e::shim_binary()),
            None,
        )
        .ok();
        out
    })
    .clone()
}

#[track_caller]
fn some<T>(v: Option<T>, what: &str) -> T {
    v.unwrap_or_else(|| panic!("{what}"))
}

fn connect(laptop: &Laptop, host: &ConnectHost, args: &[&str]) -> Output {
    let mut cmd = laptop.command();
    cmd.env("PATH", host.path())
        .arg("connect")
        .args(args)
        .arg("--shim-binary")
        .arg(upload_shim());
    run_to_end(&mut cmd, None)
}

fn sha256_in_workspace(host: &ConnectHost) -> String {
    host.as_user("sha256sum \"$HOME/.local/bin/nexus-shim\"")
        .ok()
        .stdout
        .clone()
}

#[test]
fn connect_over_ssh_installs_pairs_links_and_is_idempotent() {
    let host = ConnectHost::start().with_sshd();
    let target = host.ssh_target();
    let agent = LaptopAgent::start();
    let laptop = Laptop::new();
    let policy = laptop.write_policy(&format!(
        "{DEMO_POLICY}\n[[ssh.allow]]\nhost = \"github.com\"\nuser = \"git\"\nhost_keys = [{:?}]\n",
        agent.ed25519.line
    ));

    // 1. A fresh workspace: installed, started, paired and linked.
    let mut cmd = laptop.command();
    cmd.env("PATH", host.path())
        .env("E2E_DEMO", "sekrit")
        .env("SSH_AUTH_SOCK", agent.sock())
        .args(["connect", &target, "--name", "dev", "--policy"])
        .arg(&policy)
        .arg("--shim-binary")
        .arg(upload_shim());
    let mut proxy = Daemon::spawn(cmd, &laptop.home().join("connect.log"));
    let linked = poll(DEADLINE, || {
        let st = host.as_user("\"$HOME/.local/bin/nexus-shim\" status --wait 0 2>/dev/null");
        (st.exit_code == Some(0)).then_some(())
    });
    some(linked, &format!("never linked\n{}", proxy.log()));
    let token = host.as_user("\"$HOME/.local/bin/nexus-shim\" token get demo");
    assert_eq!(token.ok().stdout.trim(), "sekrit", "{}", proxy.log());
    let listed = host.as_user(
        "eval \"$(\"$HOME/.local/bin/nexus-shim\" env)\" && case \"$SSH_AUTH_SOCK\" in /*) ssh-add -l;; esac",
    );
    listed.ok().stdout_has(&agent.ed25519.fingerprint);
    let env = host
        .as_user("\"$HOME/.local/bin/nexus-shim\" env")
        .ok()
        .stdout
        .clone();
    let url = some(
        env.lines()
            .find(|l| l.starts_with("export NEXUS_HTTP_URL=")),
        "env prints NEXUS_HTTP_URL",
    )
    .to_owned();
    assert!(env.contains("NEXUS_STATE_DIR='/"), "{env}");
    // New login shells get that environment: `setup shell` ran.
    let profile = host.as_user("cat \"$HOME/.profile\"");
    profile
        .ok()
        .stdout_has("env)\" # added by: nexus-shim setup shell");

    // 2. Again: nothing uploaded, nothing changed.
    let installed = sha256_in_workspace(&host);
    let again = connect(&laptop, &host, &[&target, "--name", "dev", "--no-run"]);
    again.ok().stderr_has("already set up and paired");
    assert!(!again.stderr.contains("uploading"), "{again}");
    assert_eq!(sha256_in_workspace(&host), installed);

    // 3. The daemon restarts: same pairing, same $NEXUS_HTTP_URL; the
    //    running link comes back through the recorded route.
    //    (The link's redial may start it before this `connect` does.)
    let pid_file = host.state_dir().join("serve.pid");
    let old = std::fs::read_to_string(&pid_file).must("reading serve.pid");
    host.as_user("kill \"$(cat \"$HOME/.local/state/nexus/serve.pid\")\"")
        .ok();
    connect(&laptop, &host, &[&target, "--name", "dev", "--no-run"]).ok();
    let restarted = poll(DEADLINE, || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .filter(|p| *p != old)
    });
    some(restarted, "the daemon did not come back");
    let env = host
        .as_user("\"$HOME/.local/bin/nexus-shim\" env")
        .ok()
        .stdout
        .clone();
    assert!(env.contains(&url), "{url} changed:\n{env}");
    let token = host.as_user("\"$HOME/.local/bin/nexus-shim\" token get demo");
    assert_eq!(token.ok().stdout.trim(), "sekrit", "{}", proxy.log());
    proxy.terminate();

    // 4. Another laptop is refused, naming --replace, and takes over with it.
    let other = Laptop::new();
    connect(&other, &host, &[&target, "--name", "dev", "--no-run"])
        .code(3)
        .stderr_has("--replace");
    connect(
        &other,
        &host,
        &[&target, "--name", "dev", "--no-run", "--replace"],
    )
    .ok()
    .stderr_has("paired");

    // 5. An upload altered on the way is refused by its checksum; the
    //    installed shim stays.
    let changed = other.home().join("nexus-shim-changed");
    let mut bytes = std::fs::read(upload_shim()).must("reading the shim");
    bytes.extend_from_slice(b"\0changed");
    std::fs::write(&changed, bytes).must("writing a changed shim");
    let (rest, port) = some(target.rsplit_once(':'), "port");
    let ip = some(rest.rsplit_once('@'), "user@").1;
    let corrupt = host.script(
        "corrupting-ssh",
        &format!(
            "case \"$1\" in\n*want=[0-9a-f]*) gzip -dc | {{ cat; printf X; }} | gzip -c | \
             ssh -p {port} {user}@{ip} \"$1\";;\n*) exec ssh -p {port} {user}@{ip} \"$1\";;\nesac\n",
            user = host.user,
        ),
    );
    let mut cmd = other.command();
    cmd.env("PATH", host.path())
        .arg("connect")
        .arg("--command")
        .arg(&corrupt)
        .args(["--name", "viacmd", "--no-run", "--shim-binary"])
        .arg(&changed);
    run_to_end(&mut cmd, None)
        .code(1)
        .stderr_has("SHA-256")
        .stderr_has("nothing was installed");
    assert_eq!(sha256_in_workspace(&host), installed);

    // 6. disconnect --uninstall: daemon stopped, shim gone, record gone.
    let mut cmd = other.command();
    cmd.env("PATH", host.path())
        .args(["disconnect", "dev", "--uninstall"]);
    run_to_end(&mut cmd, None).ok();
    assert!(!host.shim().exists());
    let profile = host.as_user("cat \"$HOME/.profile\" 2>/dev/null; true");
    assert!(!profile.stdout.contains("nexus-shim"), "{profile}");
    assert!(!host.state_dir().join("serve.pid").exists());
    other.cli(["workspaces", "list"]).ok();
    assert!(
        !other.cli(["workspaces", "list"]).stdout.contains("dev"),
        "record kept"
    );
}

#[test]
fn an_unreachable_workspace_exits_4_and_bad_targets_2() {
    let laptop = Laptop::new();
    let mut cmd = laptop.command();
    cmd.args(["connect", "--command", "false", "--name", "x", "--no-run"]);
    run_to_end(&mut cmd, None)
        .code(4)
        .stderr_has("cannot reach the workspace");
    laptop
        .cli(["connect", "ssh://-oProxyCommand=x", "--no-run"])
        .code(2);
    laptop
        .cli(["connect", "--command", "sh", "--no-run"])
        .code(2);
}

#[test]
fn kubectl_and_docker_targets_run_the_exact_command_lines() {
    let host = ConnectHost::start();
    let laptop = Laptop::new();
    connect(
        &laptop,
        &host,
        &["kubectl://team/agent-pod/main", "--no-run"],
    )
    .ok()
    .stderr_has("shim installed, daemon started, paired");
    let ws = laptop.cli(["workspaces", "list"]).ok().stdout.clone();
    assert!(ws.contains("agent-pod"), "{ws}");
    host.as_user("\"$HOME/.local/bin/nexus-shim\" status --wait 0")
        .code(4);
    // The same workspace through docker, as another laptop record: paired
    // to this laptop already, so only the route is new.
    connect(&laptop, &host, &["docker://devbox", "--no-run"])
        .ok()
        .stderr_has("shim up to date, daemon running, paired");
    let mut cmd = laptop.command();
    cmd.env("PATH", host.path())
        .args(["disconnect", "agent-pod"]);
    run_to_end(&mut cmd, None).ok();
    let log = host.stand_in_log();
    assert!(
        log.contains("kubectl exec -i -n team agent-pod -c main -- sh -c"),
        "{log}"
    );
    assert!(log.contains("docker exec -i devbox sh -c"), "{log}");
}
