//! `nexus-shim mcp` driven by a real MCP client (the `mcp` Python SDK,
//! installed by `.ci/run`): it lists the laptop tools the policy allows and
//! calls them through the tunnel; denials come back as tool errors with the
//! laptop's reason; token values reach the model only for `mcp = true`.

use std::process::Command;

use nexus_e2e::{
    Daemon, Laptop, Must, Workspace, repo_root, run_to_end, run_to_end_within, shim_binary,
};

/// How long an npm install may take (the Inspector pulls a few hundred
/// packages on a first run).
const NPM_INSTALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);
use serde_json::{Value, json};

fn client(ws: &Workspace, calls: &Value) -> Value {
    client_with(Command::new("python3"), ws, calls)
}

/// [`client`], run by `python3` as `cmd` starts it (e.g. on the
/// workspace's host, where `$NEXUS_HTTP_URL`'s loopback is).
fn client_with(mut cmd: Command, ws: &Workspace, calls: &Value) -> Value {
    let script = repo_root().join("tests/scripts/mcp_client.py");
    let probe = run_to_end(Command::new("python3").args(["-c", "import mcp"]), None);
    assert_eq!(
        probe.exit_code,
        Some(0),
        "the `mcp` Python package is missing: pip install mcp (.ci/run does)\n{probe}"
    );
    let out = run_to_end(
        cmd.arg(&script)
            .arg(shim_binary())
            .arg(ws.state_dir())
            .arg(calls.to_string()),
        None,
    );
    serde_json::from_str(out.ok().stdout.trim()).must(&format!("the client's JSON\n{out}"))
}

#[test]
fn an_mcp_client_lists_and_calls_laptop_tools() {
    let ws = Workspace::start();
    let laptop = Laptop::new();
    laptop.pair(&ws.uri(), "dev").ok();
    std::fs::write(laptop.home().join("notes.txt"), "laptop notes\n").must("writing notes");
    std::fs::write(laptop.home().join("private.txt"), "not for you\n").must("writing private");
    std::fs::write(
        laptop.home().join(".gitconfig"),
        "[credential]\n\thelper = store\n",
    )
    .must("writing the laptop's .gitconfig");
    std::fs::write(
        laptop.home().join(".git-credentials"),
        "https://alice:s3cret-pw@git.example\n",
    )
    .must("writing the laptop's .git-credentials");
    let policy = laptop.write_policy(
        "[tools.echo-it]\ncommand = [\"echo\"]\nargs = [\"*\"]\ndescription = \"Echo one word\"\n\n\
         [tools.fails]\ncommand = [\"sh\", \"-c\", \"echo oops >&2; exit 7\"]\ndescription = \"Always fails\"\n\n\
         [tokens.demo]\nsource = \"env:E2E_DEMO\"\nmcp = true\n\n\
         [tokens.hidden]\nsource = \"env:E2E_HIDDEN\"\n\n\
         [[files.allow]]\npath = \"~/notes.txt\"\n\n\
         [[git-credential.allow]]\nhost = \"git.example\"\npath = \"acme/*\"\n",
    );
    let _proxy = laptop.run(
        &ws,
        "dev",
        &policy,
        &[("E2E_DEMO", "demo-value"), ("E2E_HIDDEN", "hidden-value")],
    );

    let calls = json!([
        ["tool_echo-it", {"args": ["hello"]}],
        ["tool_echo-it", {"args": ["--output=/etc/passwd"]}],
        ["tool_fails", {}],
        ["token_get", {"name": "demo"}],
        ["token_get", {"name": "hidden"}],
        ["file_get", {"path": "~/notes.txt"}],
        ["file_get", {"path": "~/private.txt"}],
        ["git_credential_check", {"url": "https://git.example/acme/app.git"}],
        ["git_credential_check", {"url": "https://git.example/other/app.git"}],
    ]);
    let got = client(&ws, &calls);
    let tools = got["tools"].as_object().must("tools");
    for name in [
        "tool_echo-it",
        "tool_fails",
        "token_get",
        "file_get",
        "git_credential_check",
    ] {
        assert!(tools.contains_key(name), "{name} not listed: {got}");
    }
    assert!(
        tools["tool_echo-it"]
            .as_str()
            .is_some_and(|d| d.contains("Echo one word")),
        "{got}"
    );
    let call = |i: usize| -> (bool, String) {
        let c = &got["calls"][i];
        (
            c["error"].as_bool().unwrap_or(true),
            c["text"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let (err, text) = call(0);
    assert!(!err && text.contains("hello"), "echo: {text}");
    let (err, text) = call(1);
    assert!(
        err && text.contains("denied by the laptop's policy"),
        "flag: {text}"
    );
    let (err, text) = call(2);
    assert!(
        err && text.contains("oops") && text.contains("exit code 7"),
        "fails: {text}"
    );
    let (err, text) = call(3);
    assert!(!err && text == "demo-value", "demo: {text}");
    let (err, text) = call(4);
    assert!(
        err && text.contains("mcp = true") && !text.contains("hidden-value"),
        "hidden: {text}"
    );
    let (err, text) = call(5);
    assert!(!err && text == "laptop notes\n", "notes: {text}");
    let (err, text) = call(6);
    assert!(err && text.contains("denied"), "private: {text}");
    let (err, text) = call(7);
    assert!(
        !err && text.contains("alice") && !text.contains("s3cret-pw"),
        "git ok: {text}"
    );
    let (err, text) = call(8);
    assert!(err && text.contains("denied"), "git other: {text}");
}

/// HTTP APIs whose rule says `mcp = true` are tools: the laptop adds the
/// key, so the model gets the answer and never the key; others are not
/// offered.
#[test]
fn an_mcp_client_calls_http_apis_without_seeing_the_key() {
    let up = nexus_e2e::upstream::Upstream::start("api.test").must("starting the upstream");
    let ws = Workspace::start();
    let laptop = Laptop::new();
    laptop.pair(&ws.uri(), "dev").ok();
    let ca = laptop.home().join("ca.pem");
    up.write_ca(&ca).must("writing the upstream's CA");
    let api = up.policy("api", "E2E_API_KEY", &ca).replace(
        "[http.api]\n",
        "[http.api]\nmcp = true\ndescription = \"Test API\"\n",
    );
    let quiet = up.policy("quiet", "E2E_QUIET_KEY", &ca);
    let policy = laptop.write_policy(&format!("{api}\n{quiet}"));
    const KEY: &str = "sk-mcp-real-9d3f";
    let _proxy = laptop.run(
        &ws,
        "dev",
        &policy,
        &[("E2E_API_KEY", KEY), ("E2E_QUIET_KEY", "sk-quiet")],
    );
    let calls = json!([
        ["http_api", {"path": "/bytes?n=5"}],
        ["http_api", {"method": "POST", "path": "/status/201", "body": {"a": 1}}],
        ["http_api", {"path": "/status/404"}],
        ["http_api", {"path": "/../x"}],
        ["http_quiet", {"path": "/bytes?n=5"}],
    ]);
    let got = client_with(ws.command_on_host("python3"), &ws, &calls);
    let tools = got["tools"].as_object().must("tools");
    assert!(
        tools
            .get("http_api")
            .and_then(Value::as_str)
            .is_some_and(|d| d.contains("Test API")),
        "{got}"
    );
    assert!(!tools.contains_key("http_quiet"), "not mcp = true: {got}");
    let call = |i: usize| -> (bool, String) {
        let c = &got["calls"][i];
        (
            c["error"].as_bool().unwrap_or(true),
            c["text"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let (err, text) = call(0);
    assert!(!err && text.starts_with("HTTP 200"), "bytes: {text}");
    let (err, text) = call(1);
    assert!(!err && text.starts_with("HTTP 201"), "post: {text}");
    let (err, text) = call(2);
    assert!(err && text.starts_with("HTTP 404"), "404: {text}");
    let (err, text) = call(3);
    assert!(err && text.contains("denied"), "dot segment: {text}");
    let (err, text) = call(4);
    assert!(err && text.contains("mcp = true"), "quiet: {text}");
    assert!(
        !got.to_string().contains(KEY),
        "the key reached the model: {got}"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1].method, "POST");
    let auth = seen[1]
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    assert_eq!(auth, Some(format!("Bearer {KEY}")));
}

/// Without a linked laptop, the fixed tools are still listed, and a call
/// says the laptop is not connected (no hang: the client's --wait).
#[test]
fn without_a_laptop_calls_fail_with_the_reason() {
    let ws = Workspace::start();
    let calls = json!([["file_get", {"path": "~/notes.txt"}]]);
    let script = repo_root().join("tests/scripts/mcp_client.py");
    let out = run_to_end(
        Command::new("python3")
            .arg(&script)
            .arg(shim_binary())
            .arg(ws.state_dir())
            .arg(calls.to_string())
            .env("NEXUS_MCP_TEST_WAIT", "1"),
        None,
    );
    let got: Value =
        serde_json::from_str(out.ok().stdout.trim()).must(&format!("the client's JSON\n{out}"));
    assert!(got["tools"].get("file_get").is_some(), "{got}");
    assert!(got["tools"].get("token_get").is_none(), "{got}");
    let c = &got["calls"][0];
    assert_eq!(c["error"], true, "{got}");
    assert!(
        c["text"]
            .as_str()
            .is_some_and(|t| t.contains("not connected") || t.contains("laptop")),
        "{got}"
    );
}

/// `@modelcontextprotocol/sdk` installed from npm into `target/` (once);
/// `None`, loudly, when npm is missing or unreachable.
fn ts_sdk() -> Option<std::path::PathBuf> {
    npm_package("mcp-ts-sdk", "@modelcontextprotocol/sdk")
}

/// The npm package `package` installed under `target/conformance/DIR`
/// (once), or `None` when npm cannot install it: the test is then skipped
/// loudly, and fails under `CI=true`.
fn npm_package(dir: &str, package: &str) -> Option<std::path::PathBuf> {
    // npm writes this last: an install cut short leaves none.
    let marker = "node_modules/.package-lock.json";
    let dir = repo_root().join("target/conformance").join(dir);
    if dir.join(marker).exists() {
        return Some(dir);
    }
    std::fs::create_dir_all(&dir).must("creating the npm cache dir");
    let out = run_to_end_within(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .arg(package),
        None,
        NPM_INSTALL_DEADLINE,
    );
    if out.exit_code == Some(0) && dir.join(marker).exists() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "cannot install {package} from npm, and CI must run this test\n{out}"
    );
    eprintln!(
        "SKIPPED: cannot install {package} from npm (is npm installed and the registry reachable?)\n{out}"
    );
    None
}

/// A linked workspace whose laptop offers one tool, `echo-it`.
fn echo_world() -> (Workspace, Laptop, Daemon) {
    let ws = Workspace::start();
    let laptop = Laptop::new();
    laptop.pair(&ws.uri(), "dev").ok();
    let policy = laptop.write_policy(
        "[tools.echo-it]\ncommand = [\"echo\"]\nargs = [\"*\"]\ndescription = \"Echo one word\"\n",
    );
    let proxy = laptop.run(&ws, "dev", &policy, &[]);
    (ws, laptop, proxy)
}

/// The MCP Inspector's CLI (`mcp-inspector --cli ... --method tools/list`)
/// lists the laptop tools through `nexus-shim mcp`.
#[test]
fn the_mcp_inspector_cli_lists_the_tools() {
    let Some(dir) = npm_package("mcp-inspector", "@modelcontextprotocol/inspector") else {
        return;
    };
    let (ws, _laptop, _proxy) = echo_world();
    let out = run_to_end(
        Command::new(dir.join("node_modules/.bin/mcp-inspector"))
            .arg("--cli")
            .arg(shim_binary())
            .args(["mcp", "--state-dir"])
            .arg(ws.state_dir())
            .args(["--wait", "10s", "--method", "tools/list"]),
        None,
    );
    let got: Value =
        serde_json::from_str(out.ok().stdout.trim()).must(&format!("the Inspector's JSON\n{out}"));
    let names: Vec<&str> = got["tools"]
        .as_array()
        .must(&format!("a tool list\n{got}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"tool_echo-it"), "{got}");
}

/// The official TypeScript client: lists and calls tools, and gets JSON-RPC
/// errors (unknown method -32601, malformed params -32602) answered with the
/// request's id, so its pending requests settle instead of timing out.
#[test]
fn the_typescript_sdk_client_works_and_gets_errors_with_their_ids() {
    let Some(sdk) = ts_sdk() else { return };
    let (ws, _laptop, _proxy) = echo_world();
    let out = run_to_end(
        Command::new("node")
            .arg(repo_root().join("tests/scripts/mcp_client_ts.mjs"))
            .arg(&sdk)
            .arg(shim_binary())
            .arg(ws.state_dir()),
        None,
    );
    let got: Value =
        serde_json::from_str(out.ok().stdout.trim()).must(&format!("the client's JSON\n{out}"));
    assert_eq!(got["server"], "nexus-shim", "{got}");
    assert!(
        got["tools"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("tool_echo-it"))),
        "{got}"
    );
    assert_eq!(
        got["call"],
        json!({"error": false, "text": "hello\n"}),
        "{got}"
    );
    assert_eq!(got["unknown_method"], -32601, "{got}");
    assert_eq!(got["bad_params"], -32602, "{got}");
    assert_eq!(got["after"], true, "{got}");
}

/// Raw lines a client library would never send: not JSON gets -32700 with
/// a null id; valid JSON that is no request gets -32600 with its id; and
/// the session goes on.
#[test]
fn malformed_lines_get_json_rpc_errors() {
    let ws = Workspace::start();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}});
    let input = format!(
        "{init}\n{}\nnot json at all\n{}\n{}\n",
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": "x-2", "method": "tools/call", "params": "oops"}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}),
    );
    let out = run_to_end(
        Command::new(shim_binary())
            .args(["mcp", "--wait", "0", "--state-dir"])
            .arg(ws.state_dir()),
        Some(input.as_bytes()),
    );
    let answers: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).must(&format!("a JSON line: {l}")))
        .collect();
    let summary: Vec<(Value, Value)> = answers
        .iter()
        .map(|a| (a["id"].clone(), a["error"]["code"].clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!(1), Value::Null),
            (Value::Null, json!(-32700)),
            (json!("x-2"), json!(-32600)),
            (json!(3), Value::Null),
        ],
        "{out}"
    );
}
