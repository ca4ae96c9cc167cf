//! End to end through the real binaries: pairing, tokens from every source
//! kind, policy decisions, link state, refusals, broken configuration and
//! shutdown. The shim runs on its own network namespace when possible.

use std::path::Path;
use std::time::Duration;

use nexus_e2e::front::{RouteMode, route_mode};
use nexus_e2e::{
    DEMO_POLICY, Laptop, Must, Output, PairingUri, Workspace, is_root, paired, shim_once,
    unique_name,
};

/// Asserts a refused `token get`: the exit code and a one-line explanation.
#[track_caller]
fn refused(out: &Output, code: i32, says: &str) {
    out.code(code).stderr_has(says);
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "one line\n{out}");
    assert!(out.stdout.is_empty(), "no value printed\n{out}");
}

#[test]
fn pairing_then_token_get() {
    let ws = Workspace::start();
    let uri = ws.uri();
    let parsed = PairingUri::parse(&uri);
    assert!(parsed.fingerprint.starts_with("sha256:"), "{uri}");
    // Asked on the workspace host itself, as an agent there would.
    let printed = ws.cli_on_host(["pairing-uri"]);
    assert_eq!(printed.ok().stdout.trim(), uri);
    ws.cli(["status"]).code(4).stdout_has("not linked");

    let laptop = Laptop::new();
    laptop
        .pair(&uri, "dev")
        .ok()
        .stdout_has("paired workspace \"dev\"");
    assert!(
        !ws.state_dir().join("pairing.uri").exists(),
        "pairing.uri outlived pairing"
    );
    ws.cli(["pairing-uri"]).code(5).stderr_has("already paired");

    let list = laptop.cli(["workspaces", "list", "--json"]);
    let records: serde_json::Value =
        serde_json::from_str(&list.ok().stdout).must("parsing workspaces list --json");
    let records = records.as_array().must("a JSON array of workspaces");
    assert_eq!(records.len(), 1, "{list}");
    assert_eq!(records[0]["name"], "dev");
    assert_eq!(records[0]["address"], parsed.address.as_str());
    assert_eq!(records[0]["fingerprint"], parsed.fingerprint.as_str());

    let policy = laptop.write_policy(DEMO_POLICY);
    let _proxy = laptop.run(&ws, "dev", &policy, &[("E2E_DEMO", "hello-e2e")]);
    let got = ws.cli_on_host(["token", "get", "demo"]);
    assert_eq!(got.ok().stdout, "hello-e2e\n");
    ws.cli(["secret", "get", "demo", "-n"])
        .ok()
        .stdout_has("hello-e2e");

    let status = ws.status_json();
    assert_eq!(status["linked"], true, "{status}");
    assert!(status["paired_fingerprint"].is_string(), "{status}");
    if let Some(laptop_ip) = ws.host_ip() {
        let peer = status["peer"].as_str().must("status names the peer");
        // Over a front (NEXUS_E2E_ROUTE), the shim's TCP peer is the front
        // itself; status then says which route the laptop came by.
        let seen = match route_mode() {
            RouteMode::Tcp => peer.starts_with(&format!("{laptop_ip}:")),
            RouteMode::Wss => peer.contains(&format!("websocket, forwarded for \"{laptop_ip}\"")),
            RouteMode::Stdio => peer.contains("stdio relay"),
        };
        assert!(
            seen,
            "the proxy should dial across the veth link, came from {peer}"
        );
    }
}

#[test]
fn tokens_from_env_file_and_command() {
    let (ws, laptop) = paired();
    let tokens = laptop.home().join("tokens");
    std::fs::create_dir(&tokens).must("creating the token dir");
    let abs = tokens.join("abs");
    std::fs::write(&abs, "file-value\n").must("writing a token file");
    std::fs::write(tokens.join("home"), "home-file-value").must("writing a token file");
    let policy = laptop.write_policy(&format!(
        r#"version = 1

[tokens.from-env]
source = "env:E2E_ENV_VALUE"

[tokens.from-file]
source = "file:{abs}"

[tokens.from-home-file]
source = "file:~/tokens/home"

[tokens.from-command]
source = {{ command = ["printf", "%s", "command;$(id)"] }}

[tokens.gone-file]
source = "file:{gone}"

[tokens.unset-env]
source = "env:E2E_NOT_SET"
"#,
        abs = abs.display(),
        gone = tokens.join("gone").display(),
    ));
    let _proxy = laptop.run(&ws, "dev", &policy, &[("E2E_ENV_VALUE", "env-value")]);

    for (name, want) in [
        ("from-env", "env-value"),
        ("from-file", "file-value"),
        ("from-home-file", "home-file-value"),
        // No shell: `$(id)` reaches printf verbatim.
        ("from-command", "command;$(id)"),
    ] {
        let got = ws.cli(["token", "get", name]);
        assert_eq!(got.ok().stdout, format!("{want}\n"), "{name}");
    }
    refused(
        &ws.cli(["token", "get", "gone-file"]),
        5,
        "does not exist on the laptop",
    );
    refused(
        &ws.cli(["token", "get", "unset-env"]),
        5,
        "E2E_NOT_SET is not set",
    );
}

/// A keyring entry `nexus/NAME` that is deleted even if the test fails.
struct KeyringEntry<'a> {
    laptop: &'a Laptop,
    name: String,
    deleted: bool,
}

impl KeyringEntry<'_> {
    #[track_caller]
    fn delete(&mut self) {
        self.laptop.cli(["secret", "delete", &self.name]).ok();
        self.deleted = true;
    }
}

impl Drop for KeyringEntry<'_> {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = self.laptop.cli(["secret", "delete", &self.name]);
        }
    }
}

#[test]
fn token_from_keyring() {
    let (ws, laptop) = paired();
    let name = unique_name("e2e");
    let absent = unique_name("e2e-absent");
    laptop
        .cli_with_stdin(["secret", "set", &name], b"keyring-value\n")
        .ok()
        .stderr_has(&format!("keyring:nexus/{name}"));
    let mut entry = KeyringEntry {
        laptop: &laptop,
        name: name.clone(),
        deleted: false,
    };
    let policy = laptop.write_policy(&format!(
        "version = 1\n\n[tokens.from-keyring]\nsource = \"keyring:nexus/{name}\"\n\n\
         [tokens.keyring-absent]\nsource = \"keyring:nexus/{absent}\"\n"
    ));
    let _proxy = laptop.run(&ws, "dev", &policy, &[]);

    let got = ws.cli(["token", "get", "from-keyring"]);
    assert_eq!(got.ok().stdout, "keyring-value\n");
    refused(
        &ws.cli(["token", "get", "keyring-absent"]),
        5,
        &format!("no keyring entry nexus/{absent}"),
    );

    entry.delete();
    refused(
        &ws.cli(["token", "get", "from-keyring"]),
        5,
        &format!("no keyring entry nexus/{name}"),
    );
    laptop
        .cli(["secret", "delete", &name])
        .code(1)
        .stderr_has("no keyring entry");
}

#[test]
fn undeclared_and_denied_tokens_exit_3() {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy(
        r#"version = 1

[tokens.demo]
source = "env:E2E_DEMO"

[tokens.prod-db]
source = "env:E2E_DEMO"

[[tokens.deny]]
name = "prod-*"
"#,
    );
    let _proxy = laptop.run(&ws, "dev", &policy, &[("E2E_DEMO", "v")]);
    refused(
        &ws.cli(["token", "get", "undeclared"]),
        3,
        "token \"undeclared\" is not declared in the policy (default deny)",
    );
    // Declared, yet a deny rule beats the declaration.
    refused(
        &ws.cli(["token", "get", "prod-db"]),
        3,
        "denied by [[tokens.deny]] name = \"prod-*\"",
    );
    ws.cli(["token", "get", "demo"]).ok();
}

#[test]
fn no_proxy_exits_4_after_the_wait() {
    let (ws, _laptop) = paired();
    ws.cli(["status"]).code(4);

    let waited = ws.cli(["token", "get", "demo", "--wait", "1s"]);
    refused(&waited, 4, "no laptop is linked to this workspace");
    assert!(
        waited.elapsed >= Duration::from_secs(1),
        "held for --wait\n{waited}"
    );

    let at_once = ws.cli(["token", "get", "demo", "--wait", "0"]);
    refused(&at_once, 4, "nexus-agent-proxy run");
    assert!(
        at_once.elapsed < Duration::from_secs(1),
        "--wait 0 fails at once\n{at_once}"
    );
}

#[test]
fn wrong_fingerprint_fails_pairing_and_the_shim_keeps_serving() {
    let ws = Workspace::start();
    let uri = PairingUri::parse(&ws.uri());
    let mut wrong = uri.clone();
    let last = if wrong.fingerprint.ends_with('0') {
        '1'
    } else {
        '0'
    };
    wrong.fingerprint.pop();
    wrong.fingerprint.push(last);

    let laptop = Laptop::new();
    laptop
        .pair(&wrong.to_string(), "dev")
        .code(1)
        .stderr_has(&format!("presented certificate {}", uri.fingerprint))
        .stderr_has(&format!("but {} is pinned", wrong.fingerprint));
    let list = laptop.cli(["workspaces", "list", "--json"]);
    assert_eq!(list.ok().stdout.trim(), "[]", "nothing recorded");

    // The token was not spent: the right URI still pairs.
    ws.cli(["pairing-uri"]).ok();
    laptop.pair(&uri.to_string(), "dev").ok();
}

#[test]
fn wrong_and_reused_pairing_tokens_are_refused() {
    let mut ws = Workspace::start();
    let uri = PairingUri::parse(&ws.uri());
    let laptop = Laptop::new();

    let mut wrong = uri.clone();
    wrong.token = if uri.token.starts_with('0') {
        "1".repeat(32)
    } else {
        "0".repeat(32)
    };
    laptop
        .pair(&wrong.to_string(), "dev")
        .code(1)
        .stderr_has("refused the pairing token");
    ws.wait_for_log("PairingToken");

    laptop.pair(&uri.to_string(), "dev").ok();
    // The same URI again: the token is spent.
    laptop
        .pair(&uri.to_string(), "dev-again")
        .code(1)
        .stderr_has("refused the pairing token");
    // Someone else holding the spent URI: their certificate is not the paired one.
    Laptop::new()
        .pair(&uri.to_string(), "stolen")
        .code(1)
        .stderr_has("refused this laptop's certificate");
}

#[test]
fn preset_pairing_token_works_once_even_across_restarts() {
    let token = unique_name("e2e-preset-token");
    let mut ws = Workspace::start_with_env(&[("NEXUS_PAIRING_TOKEN", &token)]);
    let uri = PairingUri::parse(&ws.uri());
    assert_eq!(uri.token, token);
    let laptop = Laptop::new();
    laptop.pair(&uri.to_string(), "dev").ok();

    ws.restart();
    ws.wait_for_log("NEXUS_PAIRING_TOKEN was already used once");
    assert!(!ws.state_dir().join("pairing.uri").exists());
    ws.cli(["pairing-uri"]).code(5);
    let status = ws.status_json();
    let listen = status["listen"].as_str().must("status names its address");
    let again = PairingUri {
        address: listen.to_owned(),
        ..uri.clone()
    };
    laptop
        .pair(&again.to_string(), "dev-again")
        .code(1)
        .stderr_has("refused the pairing token");
    Laptop::new()
        .pair(&again.to_string(), "other")
        .code(1)
        .stderr_has("refused this laptop's certificate");

    // The pairing itself survived the restart: same workspace key, same
    // laptop certificate; only the port (from port 0) moved.
    laptop.add_workspace_record("dev", listen, &uri.fingerprint);
    let policy = laptop.write_policy(DEMO_POLICY);
    let _proxy = laptop.run(&ws, "dev", &policy, &[("E2E_DEMO", "after-restart")]);
    assert_eq!(
        ws.cli(["token", "get", "demo"]).ok().stdout,
        "after-restart\n"
    );
}

#[test]
fn unknown_client_certificate_is_refused() {
    let (mut ws, laptop) = paired();
    let intruder = Laptop::new();
    intruder.copy_workspace_record(&laptop, "dev");
    let policy = intruder.write_policy(DEMO_POLICY);
    let mut run = intruder.spawn_run("dev", &policy, &[("E2E_DEMO", "x")]);
    ws.wait_for_log("refused a client certificate");
    run.wait_for_log("refused this laptop's certificate");
    ws.cli(["status"]).code(4);
    assert!(run.terminate().success(), "{}", run.log());

    let _proxy = laptop.run(&ws, "dev", &policy, &[("E2E_DEMO", "paired-one")]);
    assert_eq!(ws.cli(["token", "get", "demo"]).ok().stdout, "paired-one\n");
}

fn example_policy() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies/examples/policy.toml")
        .display()
        .to_string()
}

#[test]
fn broken_policy_stops_run_before_dialing() {
    let laptop = Laptop::new();
    // A workspace that would notice a dial: a listener nobody accepts on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").must("binding a listener");
    listener.set_nonblocking(true).must("non-blocking listener");
    let address = listener.local_addr().must("listener address").to_string();
    laptop.add_workspace_record("dev", &address, &format!("sha256:{}", "ab".repeat(32)));
    let policy = laptop.write_policy(
        "version = 1\n\n[tokens.demo]\nsource = \"env:E2E_DEMO\"\n\n\
         [tokens.vault]\nsource = \"vault:secret/a\"\n",
    );
    let at = format!("{}:7:10:", policy.display());

    let policy = policy.to_str().must("a UTF-8 temp path");
    let run = laptop.cli(["run", "--workspace", "dev", "--policy", policy]);
    run.code(1)
        .stderr_has(&at)
        .stderr_has("unknown source kind \"vault:\"")
        .stderr_has("refusing to start");
    assert!(
        listener
            .accept()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "run dialed the workspace despite the broken policy"
    );

    laptop
        .cli(["policy", "check", policy])
        .code(1)
        .stderr_has(&at);
    laptop
        .cli(["policy", "check", &example_policy()])
        .ok()
        .stdout_has(": ok");
}

#[test]
fn unsafe_state_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().must("temp dir");
    let shared = dir.path().join("group-writable");
    std::fs::create_dir(&shared).must("creating a state dir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).must("chmod 770");
    shim_once(&shared, ["serve", "--listen", "127.0.0.1:0"])
        .code(1)
        .stderr_has(&format!("chmod 700 {}", shared.display()));
    assert!(!shared.join("shim.sock").exists());
    assert!(!shared.join("key.pem").exists(), "no key written there");

    if !is_root() {
        eprintln!("skipped: a state dir owned by another user (needs root to chown)");
        return;
    }
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).must("creating a state dir");
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).must("chmod 700");
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).must("chown 65534");
    shim_once(&foreign, ["serve", "--listen", "127.0.0.1:0"])
        .code(1)
        .stderr_has("is owned by uid 65534, not by you");
}

#[test]
fn sigterm_stops_shim_and_proxy_cleanly() {
    let (mut ws, laptop) = paired();
    let policy = laptop.write_policy(DEMO_POLICY);
    let mut proxy = laptop.run(&ws, "dev", &policy, &[("E2E_DEMO", "v")]);
    ws.cli(["token", "get", "demo"]).ok();

    // The shim first, with the link up; then the proxy, which by now is
    // trying to reconnect.
    let shim_exit = ws.terminate();
    assert!(shim_exit.success(), "shim: {shim_exit}\n{}", ws.log());
    assert!(
        !ws.state_dir().join("shim.sock").exists(),
        "shim.sock left behind"
    );
    ws.cli(["status"])
        .code(1)
        .stderr_has("no nexus-shim daemon");
    let proxy_exit = proxy.terminate();
    assert!(proxy_exit.success(), "proxy: {proxy_exit}\n{}", proxy.log());
}

#[test]
fn sigterm_stops_a_linked_proxy_cleanly() {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy(DEMO_POLICY);
    let mut proxy = laptop.run(&ws, "dev", &policy, &[("E2E_DEMO", "v")]);
    let proxy_exit = proxy.terminate();
    assert!(proxy_exit.success(), "proxy: {proxy_exit}\n{}", proxy.log());
    // The shim notices the link is gone and keeps serving.
    let unlinked = nexus_e2e::poll(nexus_e2e::DEADLINE, || {
        (ws.cli(["status"]).exit_code == Some(4)).then_some(())
    });
    assert!(unlinked.is_some(), "status never showed the link down");
}
