//! The deploy artifacts work as shipped: the dev container feature's
//! `install.sh` leaves a working shim in a clean mount namespace, the systemd
//! units pass `systemd-analyze verify`, the LaunchAgent is a valid plist, the
//! Kubernetes manifest parses and shares the state volume between the agent
//! and the sidecar, and completions/man pages come out of both binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use nexus_e2e::{
    DEADLINE, Daemon, Laptop, Must, is_root, poll, proxy_binary, repo_root, run_to_end,
    shim_binary, shim_once,
};

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An image's root as `install.sh` sees it, inside a private mount
/// namespace: `/usr/local/bin`, `/usr/local/share` and `/var/lib` are empty
/// directories of a temporary dir, bound over the real ones by [`Self::mounts`].
struct FakeRoot {
    root: tempfile::TempDir,
    bin: PathBuf,
    share: PathBuf,
    var_lib: PathBuf,
}

impl FakeRoot {
    /// `None` (with a note) where private mount namespaces are unavailable.
    fn new() -> Option<Self> {
        if !is_root() || !have("unshare") {
            eprintln!("skipped: needs root and unshare(1) for a private mount namespace");
            return None;
        }
        let root = tempfile::tempdir().must("temp dir");
        let dir = |name: &str| {
            let d = root.path().join(name);
            std::fs::create_dir_all(&d).must("creating a fake root dir");
            d
        };
        let (bin, share, var_lib) = (dir("bin"), dir("share"), dir("var-lib"));
        Some(Self {
            root,
            bin,
            share,
            var_lib,
        })
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    /// The start of a script run in the namespace: strict mode, the binds.
    fn mounts(&self) -> String {
        format!(
            "set -eu
mount --bind {} /usr/local/bin
mount --bind {} /usr/local/share
mount --bind {} /var/lib
",
            self.bin.display(),
            self.share.display(),
            self.var_lib.display()
        )
    }
}

/// Runs `install.sh` as a dev container build would (root, options as
/// variables), inside a private mount and pid namespace where
/// `/usr/local/bin`, `/usr/local/share` and `/var/lib` are empty directories,
/// then the feature's entrypoint; a laptop pairs with the shim it started and
/// a token crosses the link.
#[test]
fn devcontainer_feature_installs_a_working_shim() {
    let Some(fake) = FakeRoot::new() else {
        return;
    };
    let (bin, var_lib) = (&fake.bin, &fake.var_lib);
    let gitconfig = fake.path().join("gitconfig");
    // The container's command waits on this fifo: opening it for writing
    // ends the container, and with it (pid namespace) the shim.
    let stop = var_lib.join("stop.fifo");
    run_to_end(Command::new("mkfifo").arg(&stop), None).ok();
    let install = deploy("devcontainer/nexus-shim/install.sh");
    let script = format!(
        "{mounts}BINARY={shim} LISTEN=127.0.0.1:0 _REMOTE_USER=root sh {install}
export NEXUS_STATE_DIR=/var/lib/nexus/state
exec /usr/local/share/nexus-shim/entrypoint.sh cat /var/lib/stop.fifo",
        mounts = fake.mounts(),
        shim = shim_binary().display(),
        install = install.display(),
    );
    let mut cmd = Command::new("unshare");
    // A pid namespace whose init is the container command: when it exits,
    // the kernel ends the shim too; --kill-child covers a failed test.
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "sh",
        "-c",
        &script,
    ])
    .env("GIT_CONFIG_SYSTEM", &gitconfig)
    .env_remove("NEXUS_STATE_DIR");
    let mut container = Daemon::spawn(cmd, &fake.path().join("container.log"));

    let state = var_lib.join("nexus/state");
    let uri_file = state.join("pairing.uri");
    let uri = poll(DEADLINE, || {
        std::fs::read_to_string(&uri_file)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .or_else(|| container.try_exit().map(|_| String::new()))
    })
    .unwrap_or_default();
    let shim_log = std::fs::read_to_string(var_lib.join("nexus/shim.log")).unwrap_or_default();
    assert!(
        uri.starts_with("nexus://"),
        "no pairing URI from the installed shim\n--- install/entrypoint ---\n{}\n--- shim.log ---\n{shim_log}",
        container.log()
    );
    assert!(
        container
            .log()
            .contains("nexus-shim feature: installed nexus-shim"),
        "{}",
        container.log()
    );
    let installed = bin.join("nexus-shim");
    assert_eq!(
        std::fs::read(&installed).must("reading the installed binary"),
        std::fs::read(shim_binary()).must("reading the built binary"),
        "install.sh installed something else"
    );
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).must("stat").permissions())
            & 0o777
    };
    assert_eq!(mode(&installed), 0o755);
    assert_eq!(mode(&state), 0o700, "the state dir must be private");
    let git_get = |key: &str| {
        run_to_end(
            Command::new("git")
                .args(["config", "--file"])
                .arg(&gitconfig)
                .args(["--get", key]),
            None,
        )
        .ok()
        .stdout
        .trim()
        .to_owned()
    };
    assert_eq!(git_get("credential.helper"), "!nexus-shim git-credential");
    assert_eq!(git_get("credential.useHttpPath"), "true");

    let laptop = Laptop::new();
    laptop.pair(uri.trim(), "devcontainer").ok();
    let policy = laptop.write_policy("version = 1\n\n[tokens.demo]\nsource = \"env:E2E_DEMO\"\n");
    let mut proxy = laptop.spawn_run("devcontainer", &policy, &[("E2E_DEMO", "from-the-laptop")]);
    let linked = poll(DEADLINE, || {
        (shim_once(&state, ["status"]).exit_code == Some(0)).then_some(())
    });
    assert!(
        linked.is_some(),
        "the proxy never linked to the installed shim\n--- proxy ---\n{}\n--- shim.log ---\n{}",
        proxy.log(),
        std::fs::read_to_string(var_lib.join("nexus/shim.log")).unwrap_or_default()
    );
    let token = shim_once(&state, ["token", "get", "demo"]);
    assert_eq!(token.ok().stdout, "from-the-laptop\n");
    // HTTP injection is served too; `env` exports its URL.
    let url = shim_once(&state, ["http", "url"]).ok().stdout.clone();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let env = shim_once(&state, ["env"]).ok().stdout.clone();
    assert!(
        env.contains(&format!("NEXUS_HTTP_URL='{}'", url.trim())),
        "{env}"
    );
    proxy.terminate();
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&stop)
            .must("stopping the container"),
    );
    let exit = poll(DEADLINE, || container.try_exit());
    assert!(
        exit.is_some_and(|e| e.success()),
        "container: {exit:?}\n{}",
        container.log()
    );
}

/// `install.sh` run with hostile option values and a non-root remote user:
/// the values reach `feature.env` byte for byte and run nothing, and the
/// directory where the root-run entrypoint appends `shim.log` is not the
/// remote user's. (It was: the user, that is anything in the workspace,
/// could replace `shim.log` with a symlink, and the entrypoint, as root at
/// the next container start, appended the shim's log to any file it
/// names.)
#[test]
fn devcontainer_install_is_safe_with_hostile_options_and_user() {
    let Some(fake) = FakeRoot::new() else {
        return;
    };
    let var_lib = &fake.var_lib;
    let pwned = fake.path().join("pwned");
    let listen = format!(
        "0.0.0.0:1'; touch {p}; echo '$(touch {p})`touch {p}`",
        p = pwned.display()
    );
    let advertise = format!("h:1\n\"$(touch {p})\"\\'\\", p = pwned.display());
    let install = deploy("devcontainer/nexus-shim/install.sh");
    let script = format!(
        "{mounts}BINARY={shim} _REMOTE_USER=nobody sh {install} >&2
. /usr/local/share/nexus-shim/feature.env
printf '%s\\0%s\\0%s' \"$NEXUS_USER\" \"$NEXUS_LISTEN\" \"$NEXUS_ADVERTISE\"",
        mounts = fake.mounts(),
        shim = shim_binary().display(),
        install = install.display(),
    );
    let out = run_to_end(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("LISTEN", &listen)
            .env("ADVERTISE", &advertise)
            .env("GITCREDENTIALHELPER", "false"),
        None,
    );
    out.ok();
    assert_eq!(
        out.stdout,
        format!("nobody\0{listen}\0{advertise}"),
        "feature.env does not hold the options as given"
    );
    assert!(!pwned.exists(), "an option value ran a command");
    use std::os::unix::fs::MetadataExt;
    let meta = |p: &Path| std::fs::metadata(p).must("stat");
    let state = var_lib.join("nexus/state");
    assert_eq!(meta(&state).uid(), 65534, "the state dir is the user's");
    let log_dir = meta(&var_lib.join("nexus"));
    assert_eq!(
        log_dir.uid(),
        0,
        "the user owns the directory of the log the root entrypoint appends to"
    );
    assert_eq!(
        log_dir.mode() & 0o022,
        0,
        "others can write the log's directory"
    );
}

/// The feature metadata names the entrypoint and the state dir that
/// `install.sh` creates, and exports the agent socket inside it.
#[test]
fn devcontainer_feature_metadata_matches_install_sh() {
    let text = std::fs::read_to_string(deploy("devcontainer/nexus-shim/devcontainer-feature.json"))
        .must("reading devcontainer-feature.json");
    let meta: serde_json::Value = serde_json::from_str(&text).must("parsing the feature JSON");
    assert_eq!(meta["id"], "nexus-shim");
    assert_eq!(
        meta["entrypoint"],
        "/usr/local/share/nexus-shim/entrypoint.sh"
    );
    assert_eq!(
        meta["containerEnv"]["NEXUS_STATE_DIR"],
        "/var/lib/nexus/state"
    );
    assert_eq!(
        meta["containerEnv"]["SSH_AUTH_SOCK"],
        "/var/lib/nexus/state/agent.sock"
    );
    assert_eq!(meta["mounts"][0]["target"], "/var/lib/nexus");
    let install = std::fs::read_to_string(deploy("devcontainer/nexus-shim/install.sh"))
        .must("reading install.sh");
    let options = meta["options"].as_object().must("feature options");
    for name in options.keys() {
        assert!(
            install.contains(&format!("{}=", name.to_uppercase())),
            "install.sh ignores option {name}"
        );
    }
    let syntax = run_to_end(
        Command::new("sh")
            .arg("-n")
            .arg(deploy("devcontainer/nexus-shim/install.sh")),
        None,
    );
    syntax.ok();
}

/// `systemd-analyze verify` on both units, with `%h/.cargo/bin` pointed at
/// the binaries under test (verify insists the executable exists).
#[test]
fn systemd_units_verify() {
    if !have("systemd-analyze") {
        eprintln!("skipped: systemd-analyze not installed");
        return;
    }
    let dir = tempfile::tempdir().must("temp dir");
    let bin_dir = proxy_binary()
        .parent()
        .must("binary directory")
        .display()
        .to_string();
    let mut units = Vec::new();
    for unit in ["nexus-agent-proxy.service", "nexus-shim.service"] {
        let text = std::fs::read_to_string(deploy(&format!("systemd/{unit}"))).must("reading unit");
        assert!(text.contains("%h/.cargo/bin/"), "{unit}: ExecStart moved?");
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace("%h/.cargo/bin", &bin_dir)).must("writing unit");
        units.push(path);
    }
    run_to_end(
        Command::new("systemd-analyze").arg("verify").args(&units),
        None,
    )
    .ok();
}

/// The LaunchAgent is a well-formed plist that runs `nexus-agent-proxy run`
/// with a PATH for command token sources.
#[test]
fn launchd_plist_is_valid() {
    let plist = deploy("launchd/dev.nexus.agent-proxy.plist");
    let check = "import plistlib, sys
p = plistlib.load(open(sys.argv[1], 'rb'))
assert p['ProgramArguments'][-1] == 'run', p
assert p['ProgramArguments'][0].endswith('/nexus-agent-proxy'), p
assert 'NEXUS_SOURCE_PATH' in p['EnvironmentVariables'], p
assert p['KeepAlive'] is True, p";
    run_to_end(
        Command::new("python3").args(["-c", check]).arg(&plist),
        None,
    )
    .ok();
}

/// The sidecar manifest parses, and the agent and the shim share the state
/// volume and uid (the sockets are 0600).
#[test]
fn kubernetes_sidecar_shares_state_and_uid() {
    let has_yaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_yaml {
        eprintln!("skipped: python3 has no yaml module");
        return;
    }
    let check = "import yaml, sys
docs = list(yaml.safe_load_all(open(sys.argv[1])))
pod = next(d for d in docs if d['kind'] == 'Pod')
spec = pod['spec']
assert spec['securityContext']['runAsUser'] == 1000, spec
cs = {c['name']: c for c in spec['containers']}
mounts = lambda c: {m['name']: m['mountPath'] for m in c['volumeMounts']}
assert mounts(cs['agent'])['nexus-state'] == mounts(cs['nexus-shim'])['nexus-state'], cs
env = {e['name']: e['value'] for e in cs['agent']['env']}
assert env['SSH_AUTH_SOCK'].startswith(env['NEXUS_STATE_DIR']), env
assert 'runAsUser' not in cs['agent'].get('securityContext', {}), 'same uid for both'
assert 'runAsUser' not in cs['nexus-shim'].get('securityContext', {}), 'same uid for both'
svc = next(d for d in docs if d['kind'] == 'Service')
assert svc['spec']['ports'][0]['port'] == 7676, svc";
    run_to_end(
        Command::new("python3")
            .args(["-c", check])
            .arg(deploy("kubernetes/workspace-sidecar.yaml")),
        None,
    )
    .ok();
}

/// Completion scripts and man pages come out of both binaries.
#[test]
fn completions_and_man_pages() {
    for (bin, sub) in [(shim_binary(), "token"), (proxy_binary(), "policy")] {
        let out = run_to_end(Command::new(&bin).args(["completions", "bash"]), None);
        out.ok().stdout_has(sub);
        let dir = tempfile::tempdir().must("temp dir");
        run_to_end(Command::new(&bin).arg("man-pages").arg(dir.path()), None)
            .ok()
            .stdout_has("man pages");
        let name = bin
            .file_name()
            .must("binary name")
            .to_string_lossy()
            .into_owned();
        let page = std::fs::read_to_string(dir.path().join(format!("{name}.1")))
            .must("reading the top man page");
        assert!(page.contains(".TH"), "not a man page: {page}");
        assert!(
            dir.path().join(format!("{name}-{sub}.1")).is_file(),
            "no page for {sub}"
        );
    }
}
