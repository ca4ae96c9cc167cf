//! End to end: HTTP secret injection. A real HTTPS upstream on the laptop
//! (`nexus_e2e::upstream`), a policy `[http.api]` naming it, and `curl` on
//! the workspace host calling `$NEXUS_HTTP_URL/api/...` after
//! `eval "$(nexus-shim env)"`, as an agent would with a base URL.
//!
//! The workspace is the attacker: it must never hold the key, never make
//! the laptop dial anything but the declared upstream (a decoy listener on
//! the laptop's loopback counts every connection it gets), and never reach
//! an API without the capability segment of `NEXUS_HTTP_URL`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::sync::mpsc;

use nexus_e2e::upstream::Upstream;
use nexus_e2e::{DEADLINE, Daemon, Laptop, Must, Output, Workspace, paired, poll, run_to_end};

/// The real key: only the laptop's environment and the upstream see it.
const KEY: &str = "sk-e2e-real-4f1c9a0b7d2e6c3a";

/// What the agent is given instead.
const PLACEHOLDER: &str = "sk-placeholder";

/// A paired workspace and laptop, the proxy serving `[http.api]` on an upstream.
struct World {
    ws: Workspace,
    _laptop: Laptop,
    proxy: Daemon,
    up: Upstream,
}

#[track_caller]
fn world() -> World {
    world_with(&[])
}

/// [`world`], with `keys` (TOML lines) added to `[http.api]`.
#[track_caller]
fn world_tuned(keys: &str) -> World {
    world_from(upstream(), &[], keys)
}

/// [`world`], with more APIs: `(name, upstream, env var, key)` each.
#[track_caller]
fn world_with(more: &[(&str, &Upstream, &str, &str)]) -> World {
    world_from(upstream(), more, "")
}

#[track_caller]
fn upstream() -> Upstream {
    Upstream::start("api.test").must("starting the upstream")
}

/// A world whose `[http.api]` is `up`.
#[track_caller]
fn world_from(up: Upstream, more: &[(&str, &Upstream, &str, &str)], api_keys: &str) -> World {
    let (ws, laptop) = paired();
    let mut policy = "version = 1\n\n".to_owned();
    let mut envs = vec![("E2E_API_KEY", KEY)];
    for (name, server, var, key) in [("api", &up, "E2E_API_KEY", KEY)]
        .into_iter()
        .chain(more.iter().copied())
    {
        let ca = laptop.home().join(format!("{name}-ca.pem"));
        server.write_ca(&ca).must("writing an upstream's CA");
        let mut text = server.policy(name, var, &ca);
        if name == "api" {
            text = text.replace("[http.api]\n", &format!("[http.api]\n{api_keys}"));
        }
        policy.push_str(&text);
        policy.push('\n');
        envs.push((var, key));
    }
    let policy = laptop.write_policy(&policy);
    let proxy = laptop.run(&ws, "dev", &policy, &envs);
    World {
        ws,
        _laptop: laptop,
        proxy,
        up,
    }
}

impl World {
    /// `sh -c SCRIPT` on the workspace host after `eval "$(nexus-shim env)"`.
    fn sh(&self, script: &str) -> std::process::Command {
        let mut cmd = self.ws.command_on_host("sh");
        cmd.arg("-c")
            .arg(format!(
                "set -e; eval \"$('{}' env)\"; {script}",
                nexus_e2e::shim_binary().display()
            ))
            .env("NEXUS_STATE_DIR", self.ws.state_dir());
        cmd
    }

    /// Runs `curl -sS --path-as-is ARGS` on the workspace host; ARGS is
    /// shell text, so it may use `$NEXUS_HTTP_URL`.
    #[track_caller]
    fn curl(&self, args: &str) -> Output {
        run_to_end(
            &mut self.sh(&format!("exec curl -sS --path-as-is --max-time 20 {args}")),
            None,
        )
    }

    /// The HTTP status of `curl ARGS` (0 when there was no HTTP answer).
    #[track_caller]
    fn status(&self, args: &str) -> u16 {
        let out = self.curl(&format!("-o /dev/null -w '%{{http_code}}' {args}"));
        out.stdout.trim().parse().unwrap_or(0)
    }

    /// `STATE/http.url`, which `nexus-shim env` exports as `NEXUS_HTTP_URL`.
    #[track_caller]
    fn http_url(&self) -> String {
        let file = self.ws.state_dir().join("http.url");
        poll(DEADLINE, || {
            Some(std::fs::read_to_string(&file).ok()?.trim().to_owned())
        })
        .must("the shim wrote STATE/http.url")
    }
}

/// A loopback listener on the laptop that nothing should ever dial.
struct Decoy(TcpListener);

impl Decoy {
    #[track_caller]
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").must("binding the decoy");
        l.set_nonblocking(true).must("a non-blocking decoy");
        Self(l)
    }

    fn addr(&self) -> String {
        self.0
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// Whether anything connected so far.
    fn dialed(&self) -> bool {
        self.0.accept().is_ok()
    }
}

/// `NUL`-separated `/proc/PID/environ`, as text.
fn environ(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
        .into_owned()
}

/// Kills a child when dropped (a test that fails half-way leaves no curl).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_upstream_sees_the_real_key_and_the_workspace_never_holds_it() {
    let w = world();
    let url = w.http_url();
    let env = run_to_end(&mut w.sh("echo \"$NEXUS_HTTP_URL\""), None);
    assert_eq!(
        env.stdout.trim(),
        url,
        "nexus-shim env exports NEXUS_HTTP_URL\n{env}"
    );

    // The agent sends its placeholder; the laptop replaces it.
    let out = w.curl(&format!(
        "-H 'Authorization: Bearer {PLACEHOLDER}' -w '%{{http_code}}' \"$NEXUS_HTTP_URL/api/status/204\""
    ));
    assert_eq!(out.stdout.trim(), "204", "{out}");
    let seen = w.up.requests();
    assert_eq!(seen.len(), 1, "one request reached the upstream: {seen:?}");
    let auth: Vec<&[u8]> = seen[0]
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.as_slice())
        .collect();
    assert_eq!(
        auth,
        [format!("Bearer {KEY}").as_bytes()],
        "exactly the real key"
    );
    assert_eq!(seen[0].path, "/status/204");
    assert!(!out.stdout.contains(KEY) && !out.stderr.contains(KEY));

    // A caller alive mid-stream: neither its environment nor the shim's has the key.
    let mut cmd = w.sh("exec curl -sS -N --max-time 20 \"$NEXUS_HTTP_URL/api/sse?events=2\"");
    let mut curl = Reaped(cmd.stdout(Stdio::piped()).spawn().must("starting curl"));
    let mut lines = BufReader::new(curl.0.stdout.take().must("curl's stdout")).lines();
    let first = lines.next().must("a first event").must("reading curl");
    assert_eq!(first, "data: 0");
    let caller = environ(curl.0.id());
    assert!(
        caller.contains("NEXUS_HTTP_URL="),
        "read the caller's environ: {caller}"
    );
    assert!(
        !caller.contains(KEY),
        "the key is in the caller's environment"
    );
    let shim = environ(w.ws.pid().must("the shim's pid"));
    assert!(
        !shim.is_empty() && !shim.contains(KEY),
        "the key is in the shim's environment"
    );
    w.up.release(1);
    let second = lines
        .map(|l| l.must("reading curl"))
        .find(|l| !l.is_empty())
        .must("a second event");
    assert_eq!(second, "data: 1");

    // Nor anything the shim wrote.
    for entry in walk(w.ws.state_dir()) {
        let text = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&text).contains(KEY),
            "the key is in {}",
            entry.display()
        );
    }
    assert!(!w.ws.log().contains(KEY), "the key is in the shim's log");
    assert!(
        !w.proxy.log().contains(KEY),
        "the key is in the proxy's log"
    );
}

/// Every regular file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

#[test]
fn a_streamed_response_arrives_incrementally() {
    let w = world();
    let mut cmd = w.sh("exec curl -sS -N --max-time 30 \"$NEXUS_HTTP_URL/api/sse?events=3\"");
    let mut curl = Reaped(cmd.stdout(Stdio::piped()).spawn().must("starting curl"));
    let stdout = curl.0.stdout.take().must("curl's stdout");
    // Lines come through a channel so that a buffering proxy fails the
    // test at the deadline instead of hanging it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !line.is_empty() && tx.send(line).is_err() {
                return;
            }
        }
    });
    // Event 1 does not exist yet when event 0 is read.
    assert_eq!(
        rx.recv_timeout(DEADLINE).must("event 0 before any release"),
        "data: 0"
    );
    w.up.release(1);
    assert_eq!(rx.recv_timeout(DEADLINE).must("event 1"), "data: 1");
    w.up.release(1);
    assert_eq!(rx.recv_timeout(DEADLINE).must("event 2"), "data: 2");
    let status = curl.0.wait().must("curl's exit");
    assert!(status.success(), "curl after the last event: {status}");
}

#[test]
fn an_undeclared_name_is_refused_and_reaches_nothing() {
    let w = world();
    for path in ["other/echo/x", "api.test/echo/x", "apix/echo/x", "/echo/x"] {
        let code = w.status(&format!("\"$NEXUS_HTTP_URL/{path}\""));
        assert!(
            code == 403 || code == 404,
            "/{path} for an undeclared name: {code}"
        );
    }
    // The base URL itself lists the declared APIs (from the laptop).
    let list = w.curl("\"$NEXUS_HTTP_URL/\"");
    assert!(list.stdout.contains("\"name\":\"api\""), "{list}");
    assert!(w.up.requests().is_empty(), "{:?}", w.up.requests());
}

#[test]
fn the_url_without_its_capability_is_refused() {
    let w = world();
    let url = w.http_url();
    let rest = url.strip_prefix("http://").must("an http:// URL");
    let (addr, cap) = rest.split_once('/').must("a capability path segment");
    assert!(
        cap.len() >= 16,
        "the capability is long enough to be unguessable: {cap:?}"
    );
    let mut wrong = cap.to_owned();
    wrong.pop();
    for bad in [
        format!("http://{addr}/api/echo/x"),
        format!("http://{addr}/{wrong}/api/echo/x"),
        format!("http://{addr}/{cap}x/api/echo/x"),
        format!("http://{addr}//{cap}/../api/echo/x"),
    ] {
        let code = w.status(&format!("'{bad}'"));
        assert!(code == 403 || code == 404, "{bad}: {code}");
    }
    assert!(w.up.requests().is_empty(), "{:?}", w.up.requests());
    // The real URL works, so the refusals above were about the capability.
    assert_eq!(w.status("\"$NEXUS_HTTP_URL/api/echo/x\""), 200);
}

#[test]
fn path_and_host_tricks_never_leave_the_upstream() {
    let w = world();
    let decoy = Decoy::start();
    let d = decoy.addr();
    let tricks = [
        "\"$NEXUS_HTTP_URL/api/../x\"".to_owned(),
        "\"$NEXUS_HTTP_URL/api/%2e%2e/x\"".to_owned(),
        "\"$NEXUS_HTTP_URL/api/%2e%2e%2f%2e%2e/x\"".to_owned(),
        "\"$NEXUS_HTTP_URL/api//evil.test/x\"".to_owned(),
        format!("\"$NEXUS_HTTP_URL/api//{d}/x\""),
        format!("\"$NEXUS_HTTP_URL/api/@{d}/x\""),
        format!("\"$NEXUS_HTTP_URL/api/http://{d}/x\""),
        format!("-H 'Host: {d}' \"$NEXUS_HTTP_URL/api/echo/x\""),
        "-H 'Host: evil.test' \"$NEXUS_HTTP_URL/api/echo/x\"".to_owned(),
        // Absolute-form request targets, sent to the shim's own port.
        format!("--request-target 'http://{d}/' \"$NEXUS_HTTP_URL/api/echo/x\""),
        "--request-target 'http://evil.test/' \"$NEXUS_HTTP_URL/api/echo/x\"".to_owned(),
        format!(
            "--request-target \"http://{d}/${{NEXUS_HTTP_URL#http://*/}}/api/echo/x\" \"$NEXUS_HTTP_URL/api/echo/x\""
        ),
        // No CONNECT tunnelling through the endpoint either.
        "-X CONNECT \"$NEXUS_HTTP_URL/api/echo/x\"".to_owned(),
    ];
    for t in &tricks {
        let code = w.status(t);
        assert!(code != 0, "{t}: no HTTP answer at all");
    }
    assert!(!decoy.dialed(), "the laptop dialed the decoy {d}");
    for seen in w.up.requests() {
        let host = seen
            .header("host")
            .map(|h| String::from_utf8_lossy(h).into_owned());
        assert_eq!(
            host.as_deref(),
            Some(format!("localhost:{}", w.up.addr().port()).as_str()),
            "the upstream got {} with a Host the workspace chose",
            seen.path
        );
    }

    // The upstream's redirect comes back as it is, not followed.
    let out =
        w.curl("-o /dev/null -w '%{http_code} %{redirect_url}' \"$NEXUS_HTTP_URL/api/redirect\"");
    assert_eq!(out.stdout.trim(), "302 https://evil.test/", "{out}");
}

#[test]
fn each_key_goes_only_to_its_own_upstream() {
    const OTHER_KEY: &str = "sk-e2e-other-9d8c7b6a5f4e";
    let other = Upstream::start("other.test").must("starting the second upstream");
    let w = world_with(&[("other", &other, "E2E_OTHER_KEY", OTHER_KEY)]);
    assert_eq!(w.status("\"$NEXUS_HTTP_URL/api/echo/a\""), 200);
    assert_eq!(w.status("\"$NEXUS_HTTP_URL/other/echo/b\""), 200);
    // Crossing over through the path names the other API's upstream, never
    // the first API's key on it.
    w.status("\"$NEXUS_HTTP_URL/api/../other/echo/c\"");
    w.status("\"$NEXUS_HTTP_URL/other/%2e%2e/api/echo/d\"");
    let bearer = |k: &str| format!("Bearer {k}").into_bytes();
    for seen in w.up.requests() {
        assert_eq!(
            seen.header("authorization"),
            Some(&bearer(KEY)[..]),
            "api got {}",
            seen.path
        );
    }
    for seen in other.requests() {
        assert_eq!(
            seen.header("authorization"),
            Some(&bearer(OTHER_KEY)[..]),
            "other got {}",
            seen.path
        );
    }
    assert!(w.up.requests().iter().any(|r| r.path == "/echo/a"));
    assert!(other.requests().iter().any(|r| r.path == "/echo/b"));
}

/// A body over the rule's `max_request_size` never reaches the upstream
/// whole: refused before dialing when its length is declared, cut off (the
/// upstream sees a broken request, never a complete one) when it is not.
#[test]
fn a_body_over_the_limit_is_refused() {
    let w = world_tuned("max_request_size = \"1KiB\"\n");
    let ok = w.status("-X POST --data-binary @/dev/null \"$NEXUS_HTTP_URL/api/echo/small\"");
    assert_eq!(ok, 200);
    let declared = w.curl(
        "-X POST -w '\\n%{http_code}' --data-binary \"$(head -c 2048 /dev/zero | tr '\\0' a)\" \
         \"$NEXUS_HTTP_URL/api/echo/big\"",
    );
    assert!(declared.stdout.trim_end().ends_with("400"), "{declared}");
    assert!(declared.stdout.contains("max_request_size"), "{declared}");
    let chunked = w.curl(
        "-X POST -w '\\n%{http_code}' -H 'Transfer-Encoding: chunked' \
         --data-binary \"$(head -c 4096 /dev/zero | tr '\\0' a)\" \"$NEXUS_HTTP_URL/api/echo/chunked\"",
    );
    assert!(!chunked.stdout.trim_end().ends_with("200"), "{chunked}");
    let whole_big =
        w.up.requests()
            .iter()
            .filter(|r| r.path != "/echo/small")
            .any(|r| r.body_len > 1024);
    assert!(
        !whole_big,
        "a body over the limit reached the upstream: {:?}",
        w.up.requests()
    );
}

/// A key is bound to one origin: a policy that also sends it to another
/// host does not load, so the proxy never starts with it (`policy check`
/// says where, exit 1), and its value is never handed to the workspace.
#[test]
fn a_key_sent_to_a_second_origin_is_refused_at_load() {
    let laptop = Laptop::new();
    let policy = laptop.write_policy(
        "[tokens.gh]\nsource = \"env:E2E_GH\"\n\n\
         [http.github]\nupstream = \"https://api.github.com\"\nheader = \"Authorization\"\n\
         value = \"token {token}\"\ntoken = \"gh\"\n\n\
         [http.exfil]\nupstream = \"https://attacker.example\"\nheader = \"Authorization\"\n\
         value = \"token {token}\"\ntoken = \"gh\"\n",
    );
    let out = run_to_end(
        std::process::Command::new(nexus_e2e::proxy_binary())
            .args(["policy", "check"])
            .arg(&policy),
        None,
    );
    assert_eq!(out.exit_code, Some(1), "{out}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("http.exfil") && text.contains("already bound to [http.github]"),
        "{out}"
    );
}

/// An upstream that echoes the request (a debug endpoint, an error message
/// quoting the headers) must not hand the injected key to the workspace:
/// the laptop masks it in everything that comes back, keeping lengths.
#[test]
fn an_upstream_that_echoes_the_request_does_not_hand_over_the_key() {
    let w = world();
    let out = w.curl(&format!(
        "-i -H 'Authorization: Bearer {PLACEHOLDER}' -H 'Accept-Encoding: gzip, br' \
         \"$NEXUS_HTTP_URL/api/echo/x\""
    ));
    assert!(out.stdout.contains("authorization"), "{out}");
    assert!(!out.stdout.contains(KEY), "the key came back: {out}");
    let seen = w.up.requests();
    assert!(
        seen[0]
            .header("authorization")
            .is_some_and(|v| v == format!("Bearer {KEY}").as_bytes()),
        "the upstream still got the key: {seen:?}"
    );
    // A compressed echo would carry the key past the mask: the upstream is
    // asked for an uncompressed answer whenever a key is injected.
    assert_eq!(
        seen[0].header("accept-encoding"),
        Some(&b"identity"[..]),
        "{seen:?}"
    );
}

/// An upstream that compresses its echo although asked for `identity`
/// would carry the key past the mask inside the gzip body: with a key
/// injected, such an answer is refused (502), never passed through unread.
#[test]
fn a_compressed_echo_of_the_key_is_refused() {
    let w = world();
    let out = w.curl(&format!(
        "-i --compressed -H 'Authorization: Bearer {PLACEHOLDER}' \"$NEXUS_HTTP_URL/api/gzip-echo/x\""
    ));
    assert!(
        !out.stdout.contains(KEY),
        "the key came back compressed: {out}"
    );
    assert!(out.stdout.contains("502"), "{out}");
    assert!(
        out.stdout.contains("Content-Encoding"),
        "the refusal names why: {out}"
    );
    assert_eq!(w.up.requests().len(), 1, "the upstream was asked once");
}

/// A rule's rate limit answers 429 with `Retry-After` (which the OpenAI
/// and Anthropic SDKs wait for and retry), not a 403 they raise at once.
#[test]
fn a_spent_rate_limit_is_429_with_retry_after() {
    let w = world_tuned("rate = \"1/min\"\n");
    let first = w.curl("-s -o /dev/null -w '%{http_code}' \"$NEXUS_HTTP_URL/api/echo/a\"");
    assert_eq!(first.stdout.trim(), "200", "{first}");
    let second = w.curl("-s -i \"$NEXUS_HTTP_URL/api/echo/b\"");
    assert!(second.stdout.starts_with("HTTP/1.1 429"), "{second}");
    let retry = second
        .stdout
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| (1..=60).contains(&s)), "{second}");
    assert!(second.stdout.contains("rate-limited"), "{second}");
    assert_eq!(
        w.up.requests().len(),
        1,
        "the refused call reached the upstream"
    );
}

/// An HTTP/2 client with prior knowledge (h2c) is served like an HTTP/1.1
/// one: same checks, the key injected on the laptop, never seen here.
#[test]
fn http2_prior_knowledge_is_served() {
    let w = world();
    let out = w.curl(&format!(
        "--http2-prior-knowledge -i -H 'Authorization: Bearer {PLACEHOLDER}' \"$NEXUS_HTTP_URL/api/echo/h2\""
    ));
    assert!(out.stdout.starts_with("HTTP/2 200"), "{out}");
    assert!(!out.stdout.contains(KEY), "{out}");
    let bad = w.curl("--http2-prior-knowledge -s -o /dev/null -w '%{http_code}' -H 'Host: evil.test' \"$NEXUS_HTTP_URL/api/echo/x\"");
    assert_ne!(
        bad.stdout.trim(),
        "200",
        "a foreign Host passed over h2c: {bad}"
    );
    let seen = w.up.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0]
            .header("authorization")
            .is_some_and(|v| v == format!("Bearer {KEY}").as_bytes()),
        "{seen:?}"
    );
}

/// With `methods` set, a method-override header cannot turn an allowed GET
/// into a DELETE at an upstream that honours it: the headers are dropped.
#[test]
fn method_override_headers_do_not_pass_a_methods_rule() {
    let w = world_tuned("methods = [\"GET\"]\n");
    let status = w.status(
        "-H 'X-HTTP-Method-Override: DELETE' -H 'X-HTTP-Method: DELETE' \
         -H 'X-Method-Override: DELETE' \"$NEXUS_HTTP_URL/api/echo/o\"",
    );
    assert_eq!(status, 200);
    let seen = w.up.requests();
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert!(
            seen[0].header(name).is_none(),
            "{name} reached the upstream: {seen:?}"
        );
    }
}

/// A HEAD request gets the upstream's head and a clean end: its
/// Content-Length announces a body that never comes (HTTP/2 upstream).
#[test]
fn a_head_request_ends_cleanly() {
    let w = world();
    let out = w.curl("-I \"$NEXUS_HTTP_URL/api/echo/head\" -I \"$NEXUS_HTTP_URL/api/echo/again\"");
    assert_eq!(out.stdout.matches("200 OK").count(), 2, "{out}");
    assert_eq!(w.up.requests().len(), 2);
    assert!(!w.proxy.log().contains("broke off"), "{}", w.proxy.log());
}

/// Starts `curl -N` on the held SSE stream and waits for its first event.
#[track_caller]
fn sse_caller(w: &World) -> (Reaped, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut cmd = w.sh("exec curl -sS -N --max-time 60 \"$NEXUS_HTTP_URL/api/sse?events=100\"");
    let mut curl = Reaped(cmd.stdout(Stdio::piped()).spawn().must("starting curl"));
    let mut lines = BufReader::new(curl.0.stdout.take().must("curl's stdout")).lines();
    assert_eq!(
        lines.next().must("a first event").must("reading curl"),
        "data: 0"
    );
    (curl, lines)
}

/// Callers that go away mid-stream end their upstream responses too: no
/// stream is left running on the laptop (or the upstream) for them.
#[test]
fn callers_that_go_away_mid_stream_end_the_upstream_stream() {
    let w = world();
    let callers: Vec<_> = (0..5).map(|_| sse_caller(&w)).collect();
    assert_eq!(w.up.open_streams(), 5);
    drop(callers);
    poll(DEADLINE, || (w.up.open_streams() == 0).then_some(()))
        .must("the upstream streams end once their callers are gone");
}

/// `nexus-agent-proxy lock` ends a stream under way, even one the
/// workspace stopped reading.
#[test]
fn lock_ends_a_stream_under_way() {
    let w = world();
    let (_reading, lines) = sse_caller(&w);
    // A caller that reads nothing more: its window fills.
    let stalled =
        w.sh("exec curl -sS -N --max-time 60 \"$NEXUS_HTTP_URL/api/bytes?n=100000000\" | sleep 60");
    let mut stalled = stalled;
    let _stalled = Reaped(stalled.stdout(Stdio::null()).spawn().must("starting curl"));
    poll(DEADLINE, || (w.up.open_streams() == 2).then_some(())).must("both streams started");
    w._laptop.cli(["lock"]).ok();
    poll(DEADLINE, || (w.up.open_streams() == 0).then_some(())).unwrap_or_else(|| {
        panic!(
            "{} upstream stream(s) still open after lock",
            w.up.open_streams()
        )
    });
    // Nothing more reaches the reading caller: its stream has ended.
    w.up.release(5);
    let rest: Vec<String> = lines
        .map_while(Result::ok)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(rest.is_empty(), "the stream went on after lock: {rest:?}");
    // Both stops are audited, naming the call.
    let log = w._laptop.config_dir().join("audit.jsonl");
    poll(DEADLINE, || {
        let text = std::fs::read_to_string(&log).ok()?;
        let stopped = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| {
                e["tool"] == "http"
                    && e["target"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("api GET "))
                    && e["decision"] == "deny"
                    && e["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("stopped under way"))
            })
            .count();
        (stopped == 2).then_some(())
    })
    .must("two audit lines for the streams the lock stopped");
}

/// Another uid on the workspace host is refused even with the whole URL
/// (the capability can leak through a command line in `ps`).
#[test]
fn another_uid_is_refused_even_with_the_url() {
    let w = world();
    assert_eq!(w.status("\"$NEXUS_HTTP_URL/api/echo/own\""), 200);
    let out = run_to_end(
        &mut w.sh(
            "exec setpriv --reuid=65534 --regid=65534 --clear-groups curl -sS -o /dev/null \
             -w '%{http_code}' --max-time 5 \"$NEXUS_HTTP_URL/api/echo/nobody\"",
        ),
        None,
    );
    assert_eq!(out.stdout.trim(), "000", "{out}");
    assert!(
        !w.up.requests().iter().any(|r| r.path == "/echo/nobody"),
        "another uid's request reached the upstream"
    );
}

/// A plain `http://` upstream (loopback only, e.g. a local model server)
/// is dialed directly: a laptop `HTTP_PROXY`/`ALL_PROXY` would otherwise
/// receive the key in the clear (found by the red team).
#[test]
fn a_loopback_http_upstream_never_goes_through_a_proxy() {
    use std::io::{Read, Write};
    let upstream = TcpListener::bind("127.0.0.1:0").must("binding the upstream");
    let port = upstream.local_addr().must("upstream address").port();
    let seen = std::thread::spawn(move || {
        let (mut conn, _) = upstream.accept().ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .ok()?;
        Some(String::from_utf8_lossy(&got).into_owned())
    });
    let proxy_decoy = Decoy::start();
    let (ws, laptop) = paired();
    let policy = laptop.write_policy(&format!(
        "[http.local]\nupstream = \"http://127.0.0.1:{port}\"\nheader = \"Authorization\"\n\
         value = \"Bearer {{token}}\"\nsource = \"env:E2E_LOCAL_KEY\"\n"
    ));
    let via = format!("http://{}", proxy_decoy.addr());
    let _proxy = laptop.run(
        &ws,
        "dev",
        &policy,
        &[
            ("E2E_LOCAL_KEY", KEY),
            ("HTTP_PROXY", &via),
            ("http_proxy", &via),
            ("ALL_PROXY", &via),
        ],
    );
    let w = World {
        ws,
        _laptop: laptop,
        proxy: _proxy,
        up: Upstream::start("unused.test").must("starting an unused upstream"),
    };
    let _ = w.http_url();
    let out = w.curl("\"$NEXUS_HTTP_URL/local/v1/models\"");
    assert_eq!(out.stdout, "ok", "{out}");
    let request = seen
        .join()
        .ok()
        .flatten()
        .must("the upstream got a request");
    assert!(request.contains(&format!("Bearer {KEY}")), "{request}");
    assert!(!proxy_decoy.dialed(), "the key went through HTTP_PROXY");
}

/// A plain loopback upstream that answers each request by its path with
/// raw bytes, in the pieces given (each piece flushed on its own, a short
/// pause between, so they arrive as separate body chunks), then closes.
fn raw_upstream(script: fn(&str) -> Vec<String>) -> u16 {
    use std::io::{Read, Write};
    let upstream = TcpListener::bind("127.0.0.1:0").must("binding the upstream");
    let port = upstream.local_addr().must("upstream address").port();
    std::thread::spawn(move || {
        for conn in upstream.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&got).into_owned();
            let path = text.split(' ').nth(1).unwrap_or_default().to_owned();
            for piece in script(&path) {
                let _ = conn.write_all(piece.as_bytes());
                let _ = conn.flush();
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
        }
    });
    port
}

/// A workspace and laptop with `[http.raw]` on a [`raw_upstream`].
fn raw_world(port: u16) -> World {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy(&format!(
        "[http.raw]\nupstream = \"http://127.0.0.1:{port}\"\nheader = \"Authorization\"\n\
         value = \"Bearer {{token}}\"\nsource = \"env:E2E_RAW_KEY\"\n"
    ));
    let proxy = laptop.run(&ws, "dev", &policy, &[("E2E_RAW_KEY", KEY)]);
    let w = World {
        ws,
        _laptop: laptop,
        proxy,
        up: Upstream::start("unused.test").must("starting an unused upstream"),
    };
    let _ = w.http_url();
    w
}

/// Second review: an echo split across body chunks (the key's start in the
/// first batch, its end later) is masked, and a body cut short by the
/// upstream (under its Content-Length, or a chunked body without its end)
/// never looks complete to the workspace's client.
#[test]
fn split_echoes_are_masked_and_cut_bodies_never_look_complete() {
    fn script(path: &str) -> Vec<String> {
        let head = |len: &str| format!("HTTP/1.1 200 OK\r\n{len}connection: close\r\n\r\n");
        match path {
            "/split" => {
                // The key's start comes with the head (the first batch),
                // its end in a later chunk.
                let body = format!("auth=Bearer {KEY}\n");
                let cut = "auth=Bearer sk-e2e".len();
                vec![
                    head(&format!("content-length: {}\r\n", body.len())) + &body[..cut],
                    body[cut..].to_owned(),
                ]
            }
            "/short" => vec![head("content-length: 100\r\n"), "only ten b".to_owned()],
            "/chunked" => vec![
                head("transfer-encoding: chunked\r\n"),
                "5\r\nhello\r\n".to_owned(),
            ],
            _ => vec![head("content-length: 0\r\n")],
        }
    }
    let port = raw_upstream(script);
    let w = raw_world(port);
    let out = w.curl("-w '\\n%{http_code}' \"$NEXUS_HTTP_URL/raw/split\"");
    assert_eq!(out.exit_code, Some(0), "{out}");
    assert!(!out.stdout.contains(KEY), "the key came back: {out}");
    assert!(out.stdout.starts_with("auth=Bearer ****"), "{out}");
    for path in ["short", "chunked"] {
        // -f: an error answer (when the cut is seen before the head) fails too.
        let out = w.curl(&format!("-f \"$NEXUS_HTTP_URL/raw/{path}\""));
        assert_ne!(
            out.exit_code,
            Some(0),
            "a cut /{path} looked complete: {out}"
        );
    }
    // HTTP/1.0 has no chunked framing: a body without a length ends at the
    // close, so a broken-off one would look complete. Such clients are
    // refused with a clear answer.
    let old = w.curl("--http1.0 -w '\\n%{http_code}' \"$NEXUS_HTTP_URL/raw/chunked\"");
    assert!(old.stdout.trim_end().ends_with("505"), "{old}");
    assert!(old.stdout.contains("HTTP/1.1"), "{old}");
}

/// Opens an `[http.NAME]` call on `link` for `path`, body ended, and
/// returns its stream, never to be read.
async fn unread_call(
    link: &nexus_e2e::hostile::Link,
    name: &str,
    path: &str,
) -> nexus_transport::MuxStream {
    use nexus_protocol::{Call, CallerContext, HttpRequest, Request, Upload, encode_frame};
    use tokio::io::AsyncWriteExt;
    let call = Call {
        caller: CallerContext::default(),
        request: Request::Http(HttpRequest {
            name: name.into(),
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body_len: Some(0),
        }),
        key: None,
        received: Vec::new(),
    };
    let mut stream = link.mux.open().await.must("opening a stream");
    let mut frames = encode_frame(&call);
    frames.extend(encode_frame(&Upload::End));
    stream.write_all(&frames).await.must("sending the call");
    stream.flush().await.must("sending the call");
    stream
}

/// Second review: a workspace that never reads its answer cannot hold the
/// laptop (and its upstream) past the API's timeout, even when the first
/// write (head and the body already there) is larger than the stream's
/// window: over HTTP/1.1 and over HTTP/2 (where the upstream's data is
/// buffered on the laptop before the first write); and the final reply
/// that nobody reads does not keep the call's task for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_never_reads_is_dropped_at_the_timeout() {
    use std::io::{Read, Write};
    let upstream = TcpListener::bind("127.0.0.1:0").must("binding the upstream");
    let port = upstream.local_addr().must("upstream address").port();
    let (closed_tx, closed_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = upstream.accept() else {
            return;
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let mut out =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 4 << 20).into_bytes();
        out.extend(std::iter::repeat_n(b'x', 600 << 10));
        let _ = conn.write_all(&out);
        // The rest never comes: this read ends when the laptop lets go.
        let _ = conn.read(&mut buf);
        let _ = closed_tx.send(());
    });
    let up = Upstream::start("api.test").must("starting the upstream");
    let fake = nexus_e2e::raw::FakeShim::bind().await;
    let laptop = Laptop::new();
    laptop.add_workspace_record("fake", fake.address(), &fake.fingerprint());
    let ca = laptop.home().join("api-ca.pem");
    up.write_ca(&ca).must("writing the upstream's CA");
    let policy = laptop.write_policy(&format!(
        "[http.raw]\nupstream = \"http://127.0.0.1:{port}\"\nheader = \"Authorization\"\n\
         value = \"Bearer {{token}}\"\nsource = \"env:E2E_RAW_KEY\"\ntimeout = \"1s\"\n\n{}",
        up.policy("api", "E2E_API_KEY", &ca)
            .replace("[http.api]\n", "[http.api]\ntimeout = \"1s\"\n")
    ));
    // Two places for HTTP calls: both unread calls hold one until they end.
    let proxy = laptop.spawn_run_with(
        "fake",
        &policy,
        &[
            ("E2E_RAW_KEY", std::ffi::OsStr::new(KEY)),
            (
                "E2E_API_KEY",
                std::ffi::OsStr::new("sk-other-key-0123456789"),
            ),
        ],
        &[
            std::ffi::OsStr::new("--max-calls-per-tool"),
            std::ffi::OsStr::new("2"),
        ],
    );
    let link =
        nexus_e2e::hostile::Link::start(fake.accept_link().await, nexus_transport::MuxConfig::SHIM);
    let _h1 = unread_call(&link, "raw", "/big").await;
    let _h2 = unread_call(&link, "api", "/bytes?n=67108864").await;
    let closed = tokio::task::spawn_blocking(move || closed_rx.recv_timeout(DEADLINE)).await;
    assert!(
        matches!(closed, Ok(Ok(()))),
        "the laptop still holds the HTTP/1.1 upstream long past the API's 1s timeout"
    );
    let started = poll(DEADLINE, || (up.requests().len() == 1).then_some(()));
    assert!(started.is_some(), "the HTTP/2 request reached the upstream");
    let let_go = poll(DEADLINE, || (up.open_streams() == 0).then_some(()));
    assert!(
        let_go.is_some(),
        "the laptop still holds the HTTP/2 upstream long past the API's 1s timeout"
    );
    // And their places are free again: a third call is answered (not
    // refused as one too many) once the final replies gave up waiting.
    let answered = poll(DEADLINE, || {
        let call = nexus_protocol::Call {
            caller: nexus_protocol::CallerContext::default(),
            request: nexus_protocol::Request::Http(nexus_protocol::HttpRequest {
                name: "api".into(),
                method: "GET".into(),
                path: "/status/204".into(),
                headers: Vec::new(),
                body_len: Some(0),
            }),
            key: None,
            received: Vec::new(),
        };
        let handle = tokio::runtime::Handle::current();
        let reply =
            std::thread::scope(|s| s.spawn(|| handle.block_on(link.call(&call))).join().ok())?;
        match reply {
            Ok(nexus_protocol::Reply::Error(e)) if e.message.contains("too many") => None,
            other => Some(other),
        }
    });
    assert!(
        answered.is_some(),
        "the unread calls still hold their places"
    );
    // Nor does a final reply (the timeout's error) wait for ever on a full
    // window: the laptop gives up on the stream.
    let gave_up = poll(DEADLINE, || {
        proxy
            .log()
            .contains("did not take the final reply")
            .then_some(())
    });
    assert!(gave_up.is_some(), "{}", proxy.log());
}

/// The proxy's CPU time so far (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).must("the proxy's stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    field(11) + field(12)
}

/// Issue 17: an HTTP/2 upstream that answers, then floods PING and
/// SETTINGS frames on the connection the laptop would pool, cannot hold the
/// laptop's CPU: the proxy closes that idle connection within seconds
/// (today it kept it, and about 0.9 of a core, for 90 s), and the flood
/// ends.
#[test]
fn an_upstream_flooding_frames_after_its_answer_is_cut_off() {
    let up = Upstream::start_flooding("api.test").must("starting the hostile upstream");
    let w = world_from(up, &[], "");
    assert_eq!(w.status("\"$NEXUS_HTTP_URL/api/x\""), 200);
    let pid = w.proxy.pid();
    let flooding = poll(DEADLINE, || (w.up.flood().0 > 0).then_some(()));
    assert!(flooding.is_some(), "the upstream never got to flood");
    let before = cpu_ticks(pid);
    let closed = poll(DEADLINE, || (w.up.flood().1 > 0).then_some(()));
    let (frames, _) = w.up.flood();
    let used = cpu_ticks(pid) - before;
    eprintln!(
        "flooding upstream: {frames} frames sent before the proxy closed it; proxy CPU meanwhile {used} ticks"
    );
    assert!(
        closed.is_some(),
        "the proxy kept the flooding connection for over {DEADLINE:?} ({frames} frames)"
    );
    // Ticks are 10 ms: at most a few seconds of CPU in all, however fast
    // the upstream floods.
    assert!(used < 500, "the flood cost the proxy {used} ticks of CPU");
}
