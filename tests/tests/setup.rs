//! End to end: `nexus-shim setup` writes each agent's own files from a live
//! daemon linked to a laptop with `[http.anthropic]` and `[http.openai]`;
//! `mcp` without a daemon fails loudly; `status --wait` waits for a link;
//! and an SDK's placeholder credentials never reach an upstream.

use std::path::{Path, PathBuf};
use std::process::Command;

use nexus_e2e::upstream::Upstream;
use nexus_e2e::{
    DEADLINE, Daemon, Laptop, Must, Output, Workspace, paired, poll, run_to_end, shim_binary,
};
use serde_json::Value;

/// The real key: only the laptop's environment and the upstream see it.
const KEY: &str = "sk-e2e-setup-real-7d3e";

/// A paired workspace and a laptop serving `[http.anthropic]` and `[http.openai]`.
struct World {
    ws: Workspace,
    _laptop: Laptop,
    _proxy: Daemon,
    anthropic: Upstream,
    _openai: Upstream,
}

#[track_caller]
fn world() -> World {
    let anthropic = Upstream::start("anthropic.test").must("starting an upstream");
    let openai = Upstream::start("openai.test").must("starting an upstream");
    let (ws, laptop) = paired();
    let mut policy = "version = 1\n\n".to_owned();
    // One key per origin: the laptop refuses a secret bound to two.
    for (name, up, var) in [
        ("anthropic", &anthropic, "E2E_SETUP_KEY"),
        ("openai", &openai, "E2E_SETUP_OTHER_KEY"),
    ] {
        let ca = laptop.home().join(format!("{name}-ca.pem"));
        up.write_ca(&ca).must("writing an upstream's CA");
        policy.push_str(&up.policy(name, var, &ca));
        policy.push('\n');
    }
    let policy = laptop.write_policy(&policy);
    let proxy = laptop.run(
        &ws,
        "dev",
        &policy,
        &[("E2E_SETUP_KEY", KEY), ("E2E_SETUP_OTHER_KEY", "sk-other")],
    );
    World {
        ws,
        _laptop: laptop,
        _proxy: proxy,
        anthropic,
        _openai: openai,
    }
}

/// `nexus-shim ARGS` for `ws`, with none of the runner's agent settings.
#[track_caller]
fn shim(ws: &Workspace, args: &[&str]) -> Output {
    let mut cmd = ws.cli_command();
    cmd.args(args)
        .env_remove("CODEX_HOME")
        .env_remove("CLAUDE_CONFIG_DIR")
        .env("SHELL", "/bin/bash");
    run_to_end(&mut cmd, None)
}

#[track_caller]
fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).must(&format!("reading {}", path.display()));
    serde_json::from_str(&text).must(&format!("parsing {}", path.display()))
}

/// `STATE/http.url`: `$NEXUS_HTTP_URL`.
#[track_caller]
fn http_url(ws: &Workspace) -> String {
    let text = std::fs::read_to_string(ws.state_dir().join("http.url")).must("reading http.url");
    text.trim().to_owned()
}

/// The MCP command every agent gets: this binary, an absolute state dir.
fn mcp_command(ws: &Workspace) -> Vec<String> {
    let exe = std::fs::canonicalize(shim_binary()).unwrap_or_else(|_| shim_binary());
    let state = std::path::absolute(ws.state_dir()).unwrap_or_else(|_| ws.state_dir().into());
    vec![
        exe.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "mcp".into(),
    ]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn setup_writes_each_agents_files_from_the_live_daemon_and_removes_them() {
    let w = world();
    let home = w.ws.home().to_owned();
    let url = http_url(&w.ws);
    let command = mcp_command(&w.ws);

    shim(&w.ws, &["setup", "claude-code"]).ok();
    let state = json(&home.join(".claude.json"));
    let server = &state["mcpServers"]["nexus"];
    let mut got = vec![server["command"].as_str().unwrap_or_default().to_owned()];
    got.extend(strings(&server["args"]));
    assert_eq!(got, command);
    let settings = json(&home.join(".claude/settings.json"));
    assert_eq!(
        settings["env"]["ANTHROPIC_BASE_URL"],
        format!("{url}/anthropic")
    );
    assert_eq!(
        settings["env"]["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"],
        "1"
    );
    assert_eq!(
        strings(&settings["permissions"]["allow"]),
        ["mcp__nexus__*"]
    );

    shim(&w.ws, &["setup", "codex"]).ok();
    let codex = std::fs::read_to_string(home.join(".codex/config.toml")).must("codex config");
    assert!(codex.contains("model_provider = \"nexus\""), "{codex}");
    assert!(
        codex.contains(&format!("base_url = \"{url}/openai/v1\"")),
        "{codex}"
    );
    assert!(
        codex.contains(&format!("command = \"{}\"", command[0])),
        "{codex}"
    );
    assert!(
        codex.contains(&format!("\"--state-dir\", \"{}\"", command[2])),
        "{codex}"
    );

    // --print shows the change and writes nothing.
    let opencode = home.join(".config/opencode/opencode.json");
    shim(&w.ws, &["setup", "opencode", "--print"])
        .ok()
        .stdout_has(&format!("{url}/openai/v1"));
    assert!(!opencode.exists(), "--print wrote {}", opencode.display());
    shim(&w.ws, &["setup", "opencode"]).ok();
    let oc = json(&opencode);
    assert_eq!(
        oc["provider"]["openai"]["options"]["baseURL"],
        format!("{url}/openai/v1")
    );
    assert_eq!(strings(&oc["mcp"]["nexus"]["command"]), command);

    // Idempotent; then --remove leaves the home as it was (empty).
    shim(&w.ws, &["setup", "codex"])
        .ok()
        .stderr_has("nothing to change");
    for agent in ["claude-code", "codex", "opencode"] {
        shim(&w.ws, &["setup", agent, "--remove"]).ok();
    }
    for file in [
        ".claude.json",
        ".claude/settings.json",
        ".codex/config.toml",
        ".config/opencode/opencode.json",
    ] {
        assert!(!home.join(file).exists(), "{file} is left");
    }
}

#[test]
fn a_missing_api_is_named_with_the_way_out() {
    let w = world();
    shim(&w.ws, &["setup", "codex", "--api", "nope"])
        .code(1)
        .stderr_has("--api")
        .stderr_has("http list");
    assert!(!w.ws.home().join(".codex").exists());
}

#[test]
fn without_a_linked_laptop_setup_exits_4_and_shell_needs_none() {
    let ws = Workspace::start();
    shim(&ws, &["setup", "claude-code", "--wait", "0"]).code(4);
    assert!(!ws.home().join(".claude.json").exists());

    shim(&ws, &["setup", "shell"]).ok();
    shim(&ws, &["setup", "shell"]).ok();
    for rc in [".profile", ".bashrc"] {
        let text = std::fs::read_to_string(ws.home().join(rc)).must(rc);
        assert_eq!(text.matches(" env)\"").count(), 1, "{rc}: {text}");
    }
    assert!(
        !ws.home().join(".zshrc").exists(),
        "bash is the login shell"
    );
    shim(&ws, &["setup", "shell", "--remove"]).ok();
    assert!(!ws.home().join(".profile").exists());
}

#[test]
fn mcp_without_a_daemon_fails_loudly() {
    let dir = tempfile::tempdir().must("a temp dir");
    let state: PathBuf = dir.path().join("state");
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
    let out = run_to_end(
        Command::new(shim_binary())
            .args(["mcp", "--wait", "0"])
            .env("HOME", dir.path())
            .env("NEXUS_STATE_DIR", &state),
        Some(format!("{init}\n").as_bytes()),
    );
    out.code(1).stderr_has("no nexus-shim daemon");
    let reply: Value = serde_json::from_str(out.stdout.trim()).must(&format!("a reply\n{out}"));
    assert_eq!(reply["id"], 1, "{out}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no nexus-shim daemon")),
        "{out}"
    );
}

#[test]
fn status_wait_waits_for_a_link_that_comes_up_later() {
    let ws = Workspace::start();
    let laptop = Laptop::new();
    laptop.pair(&ws.uri(), "dev").ok();
    ws.cli(["status"]).code(4);
    let mut status = ws.spawn_cli(["status", "--wait", "20s"]);
    let policy = laptop.write_policy(nexus_e2e::DEMO_POLICY);
    let _proxy = laptop.spawn_run("dev", &policy, &[]);
    let code = poll(DEADLINE, || status.try_wait().ok().flatten()).map(|s| s.code());
    assert_eq!(code, Some(Some(0)), "status --wait saw the link");
}

#[test]
fn the_upstream_sees_only_the_real_key_whatever_the_sdk_sent() {
    let w = world();
    let mut cmd = w.ws.command_on_host("sh");
    cmd.arg("-c")
        .arg(format!(
            "set -e; eval \"$('{}' env)\"; exec curl -sS --max-time 20 -o /dev/null -w '%{{http_code}}' \
             -H 'Authorization: Bearer PLACEHOLDER' -H 'x-api-key: PLACEHOLDER' \
             \"$NEXUS_HTTP_URL/anthropic/status/204\"",
            shim_binary().display()
        ))
        .env("NEXUS_STATE_DIR", w.ws.state_dir());
    let out = run_to_end(&mut cmd, None);
    assert_eq!(out.stdout.trim(), "204", "{out}");
    let seen = w.anthropic.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let creds: Vec<(&str, &[u8])> = seen[0]
        .headers
        .iter()
        .filter(|(n, _)| ["authorization", "x-api-key"].contains(&n.to_ascii_lowercase().as_str()))
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    assert_eq!(creds.len(), 1, "{creds:?}");
    assert_eq!(creds[0].1, format!("Bearer {KEY}").as_bytes());
}
