//! The installable shim: the static `nexus-shim` that `scripts/build-static.sh`
//! builds has no dynamic dependencies, is small enough on the wire, and works
//! in an empty root holding nothing but itself, `/proc` and a tmpfs `/tmp`
//! (the stand-in for musl distributions, none of which can be tested here):
//! `--version`, then `serve` pairs and links with the normal laptop proxy and
//! a `token get` run inside that root is answered.
//!
//! The static binary is built once (CI runs the script) and named by
//! `NEXUS_STATIC_SHIM`. Without it these tests say loudly that they were
//! skipped, except under CI (`CI` set), where a missing binary fails them.
//! Host names as bind addresses are refused in every build, so that check
//! runs on the debug shim too.

use std::path::{Path, PathBuf};
use std::process::Command;

use nexus_e2e::netns::{self, NetNs};
use nexus_e2e::{DEADLINE, Daemon, Laptop, Must, is_root, poll, run_to_end, shim_once};

/// What travels to a workspace: the stripped static shim, gzip -9.
const WIRE_BUDGET: u64 = 5 * 1024 * 1024;

/// The static shim named by `NEXUS_STATIC_SHIM`, or `None` after a loud note.
fn static_shim() -> Option<PathBuf> {
    match std::env::var_os("NEXUS_STATIC_SHIM").filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "NEXUS_STATIC_SHIM={} is not a file",
                path.display()
            );
            Some(path)
        }
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "NEXUS_STATIC_SHIM is not set under CI: run scripts/build-static.sh and export its last line"
            );
            eprintln!(
                "SKIPPED: NEXUS_STATIC_SHIM is not set; run `export NEXUS_STATIC_SHIM=$(scripts/build-static.sh | tail -n1)` to test the static shim"
            );
            None
        }
    }
}

#[test]
fn static_shim_has_no_dynamic_dependencies_and_fits_the_wire_budget() {
    let Some(shim) = static_shim() else {
        return;
    };
    let ldd = run_to_end(Command::new("ldd").arg(&shim), None);
    let says_static = ["not a dynamic executable", "statically linked"]
        .iter()
        .any(|s| ldd.stdout.contains(s) || ldd.stderr.contains(s));
    assert!(says_static, "ldd lists dependencies\n{ldd}");
    let interp = run_to_end(Command::new("readelf").args(["-lW"]).arg(&shim), None);
    assert!(
        !interp.ok().stdout.contains("program interpreter"),
        "{interp}"
    );
    let sections = run_to_end(Command::new("readelf").args(["-SW"]).arg(&shim), None);
    let sections = &sections.ok().stdout;
    for debug in [".debug_info", ".debug_line"] {
        assert!(!sections.contains(debug), "the shipped shim keeps {debug}");
    }
    assert!(
        sections.contains(".gnu_debuglink"),
        "no link to the separate debug info"
    );
    let gz = run_to_end(
        Command::new("sh")
            .args(["-c", "gzip -9 -n -c \"$0\" | wc -c"])
            .arg(&shim),
        None,
    );
    let on_wire: u64 = gz.ok().stdout.trim().parse().must("gzip | wc -c");
    eprintln!(
        "static shim: {} bytes stripped, {on_wire} bytes gzip -9",
        std::fs::metadata(&shim).must("stat").len()
    );
    assert!(
        on_wire <= WIRE_BUDGET,
        "the shim takes {on_wire} bytes on the wire, over the budget of {WIRE_BUDGET}"
    );
}

/// An empty root: the binary at `/nexus-shim`, empty `/proc`, `/tmp` and
/// `/state` (the shim's state dir, left on disk so the test can read
/// `pairing.uri`), nothing else.
struct EmptyRoot {
    dir: tempfile::TempDir,
}

impl EmptyRoot {
    fn new(shim: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-chroot-")
            .tempdir()
            .must("temp dir");
        for d in ["proc", "tmp"] {
            std::fs::create_dir(dir.path().join(d)).must("creating a mount point");
        }
        std::fs::copy(shim, dir.path().join("nexus-shim")).must("copying the static shim");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `nexus-shim ARGS` chrooted here, in a private mount namespace with
    /// `/proc` and a tmpfs `/tmp` mounted; everything `exec`s, so the
    /// child's pid is the shim's. `wrap` puts it on a workspace host.
    fn command(&self, wrap: Option<&NetNs>, args: &[&str]) -> Command {
        let script = "set -eu
mount -t proc proc \"$0/proc\"
mount -t tmpfs -o mode=1777 tmpfs \"$0/tmp\"
exec chroot \"$0\" /nexus-shim \"$@\"";
        let mut cmd = wrap.map_or_else(|| Command::new("unshare"), |ns| ns.exec("unshare"));
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", script])
            .arg(self.path())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/tmp")
            .env("NEXUS_STATE_DIR", "/state")
            .env("NEXUS_LOG", "info");
        cmd
    }
}

/// `nexus-shim ARGS` inside the running shim's root and namespaces (mount,
/// network), as an agent in that workspace would run it.
fn inside(shim_pid: u32, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.args([
        "--target",
        &shim_pid.to_string(),
        "--mount",
        "--net",
        "--root",
        "--wd=/",
    ])
    .arg("/nexus-shim")
    .args(args)
    .env_clear()
    .env("HOME", "/tmp")
    .env("NEXUS_STATE_DIR", "/state")
    .env("NEXUS_WAIT", "10s");
    cmd
}

#[test]
fn static_shim_links_from_an_empty_chroot() {
    let Some(shim) = static_shim() else {
        return;
    };
    if !is_root() {
        eprintln!("SKIPPED: the empty-chroot test needs root (mount, chroot)");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the empty-chroot test as root"
        );
        return;
    }
    let root = EmptyRoot::new(&shim);
    let version = run_to_end(
        Command::new("chroot")
            .arg(root.path())
            .args(["/nexus-shim", "--version"]),
        None,
    );
    version.ok().stdout_has("nexus-shim ");

    let net = netns::supported().then(NetNs::create);
    let listen = net
        .as_ref()
        .map_or_else(|| "127.0.0.1:0".to_owned(), |ns| format!("{}:0", ns.ws_ip));
    let mut daemon = Daemon::spawn(
        root.command(net.as_ref(), &["serve", "--listen", &listen]),
        &root.path().join("shim.log"),
    );
    let uri_file = root.path().join("state/pairing.uri");
    let uri = poll(DEADLINE, || {
        std::fs::read_to_string(&uri_file)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .or_else(|| daemon.try_exit().map(|_| String::new()))
    })
    .unwrap_or_default();
    assert!(
        uri.starts_with("nexus://"),
        "the static shim wrote no pairing URI (exit: {:?})\n{}",
        daemon.try_exit(),
        daemon.log()
    );

    let laptop = Laptop::new();
    laptop.pair(uri.trim(), "static").ok();
    let policy = laptop.write_policy(nexus_e2e::DEMO_POLICY);
    let mut proxy = laptop.spawn_run("static", &policy, &[("E2E_DEMO", "from-the-laptop")]);
    let pid = daemon.pid();
    let linked = poll(DEADLINE, || {
        (run_to_end(&mut inside(pid, &["status"]), None).exit_code == Some(0)).then_some(())
    });
    assert!(
        linked.is_some(),
        "the proxy never linked to the static shim\n--- proxy ---\n{}\n--- shim ---\n{}",
        proxy.log(),
        daemon.log()
    );
    let token = run_to_end(&mut inside(pid, &["token", "get", "demo"]), None);
    assert_eq!(token.ok().stdout, "from-the-laptop\n");

    // In the same root a host name cannot be resolved: the error says so.
    let named = run_to_end(
        inside(pid, &["serve", "--listen", "localhost:0"]).env("NEXUS_STATE_DIR", "/tmp/other"),
        None,
    );
    named.code(1).stderr_has("host names are not resolved");

    proxy.terminate();
    let exit = daemon.terminate();
    assert!(
        exit.success(),
        "the static shim did not stop cleanly: {exit}\n{}",
        daemon.log()
    );
}

/// `--listen` and `--http-listen` take numeric addresses in every build: the
/// static shim cannot resolve names, and the same flags must mean the same
/// everywhere.
#[test]
fn bind_addresses_must_be_numeric() {
    let dir = tempfile::tempdir().must("temp dir");
    let state = dir.path().join("state");
    for args in [
        [
            "serve",
            "--listen",
            "localhost:7676",
            "--http-listen",
            "127.0.0.1:0",
        ],
        [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "localhost:0",
        ],
    ] {
        shim_once(&state, args)
            .code(1)
            .stderr_has("not a numeric IP:PORT")
            .stderr_has("host names are not resolved");
    }
}
