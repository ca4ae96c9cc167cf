//! Regression tests for the security review: the workspace is the attacker.
//! A fake shim drives the real proxy with what a compromised workspace could
//! send (nesting bombs, stream floods, call floods, forged log lines), and
//! raw local or network clients push the real shim (hello bombs, fd
//! exhaustion, a wedged `shim.sock`, pairing-token guessing). Each attack
//! must fail alone while the victim keeps serving.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nexus_e2e::hostile::{
    LimitedShim, Link, RawMux, Sampler, children_of, find_pid, frame, hello_bytes, msgpack,
    open_fds, raise_nofile, shim_within, status_kib, token_call, wait_pid_with_arg, yamux,
};
use nexus_e2e::raw::{FakeShim, within};
use nexus_e2e::{DEADLINE, DEMO_POLICY, Daemon, Laptop, Must, PairingUri, Workspace, poll};
use nexus_protocol::{
    Call, CallerContext, ClientHello, ErrorCode, HANDSHAKE_MAX_FRAME, LocalOp, LocalRequest,
    Refusal, Reply, Request, SUPPORTED, Secret, ServerHello,
};
use nexus_transport::{MuxConfig, TransportError};
use tokio::task::JoinSet;

const DEMO_VALUE: &str = "still-serving";

/// A forged log line, then a terminal title escape.
const EVIL: &str = "\n2099-01-01T00:00:00Z  INFO forged line\x1b]0;pwned\x07";

fn demo_value() -> Reply {
    Reply::Token(Secret::from(DEMO_VALUE.to_owned()))
}

/// The real proxy, linked to a fake shim the test drives.
struct Victim {
    fake: FakeShim,
    proxy: Daemon,
    pid: u32,
    _laptop: Laptop,
}

impl Victim {
    /// Starts `nexus-agent-proxy run` against a fresh fake shim with
    /// `policy` and `E2E_DEMO` set.
    async fn start(policy: &str) -> Self {
        let fake = FakeShim::bind().await;
        let laptop = Laptop::new();
        laptop.add_workspace_record("fake", fake.address(), &fake.fingerprint());
        let path = laptop.write_policy(policy);
        let proxy = laptop.spawn_run("fake", &path, &[("E2E_DEMO", DEMO_VALUE)]);
        let pid = wait_pid_with_arg(&path);
        Self {
            fake,
            proxy,
            pid,
            _laptop: laptop,
        }
    }

    /// Accepts the proxy's (next) connection and starts yamux on it.
    async fn link(&self) -> Link {
        Link::start(self.fake.accept_link().await, MuxConfig::SHIM)
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// 1. Nesting bombs -------------------------------------------------------

#[tokio::test]
async fn nesting_bomb_in_the_hello_leaves_the_shim_serving() {
    let mut ws = Workspace::start();
    let uri = PairingUri::parse(&ws.uri());
    // An unknown hello field holding 4000 nested arrays: within the 4 KiB
    // handshake limit, and deep enough to overflow a debug build's stack
    // without the decoder's depth cap.
    let body = msgpack::nesting_bomb(4000);
    assert!(body.len() <= HANDSHAKE_MAX_FRAME, "{} bytes", body.len());
    let answer = hello_bytes(&uri.address, &uri.fingerprint, &frame(&body)).await;
    assert!(
        matches!(answer, Ok(None)),
        "the shim should drop the connection without an answer, got {answer:?}"
    );
    ws.wait_for_log("tunnel refused");

    ws.cli(["status"]).code(4);
    let laptop = Laptop::new();
    laptop.pair(&uri.to_string(), "dev").ok();
    assert!(
        ws.log().contains("depth"),
        "the refusal should name the nesting depth\n{}",
        ws.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_bomb_in_a_call_leaves_the_proxy_serving() {
    let mut v = Victim::start(DEMO_POLICY).await;
    let link = v.link().await;
    let body = msgpack::nesting_bomb(100_000);
    assert!(body.len() <= 512 << 10, "fits in one call frame");
    match link.call_raw(&body).await {
        Ok(Reply::Error(e)) => assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}"),
        Err(TransportError::Closed) => {}
        other => panic!("expected a refusal of the bomb, got {other:?}"),
    }
    let reply = within(DEADLINE, link.call(&token_call("demo")))
        .await
        .must("a valid call on the same connection");
    assert_eq!(reply, demo_value());
    assert!(!link.mux.is_closed(), "the connection survived");
    v.proxy.assert_running();
}

// 2. Memory flood ------------------------------------------------------------

/// What each flood stream sends: a header announcing a 500 KiB call, then
/// 100 KiB of it, never the rest.
fn flood_payload() -> Vec<u8> {
    let mut p = (500u32 << 10).to_be_bytes().to_vec();
    p.resize(4 + (100 << 10), b'x');
    p
}

/// Opens up to `n` streams at once with raw frames (no waiting for the
/// proxy's acknowledgements, as a hostile peer would); returns their ids.
async fn flood(raw: &mut RawMux, n: usize) -> Vec<u32> {
    let payload = flood_payload();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id = raw.next_stream();
        if !raw.send(yamux::data(yamux::SYN, id, &payload)).await {
            break;
        }
        ids.push(id);
    }
    ids
}

const RSS_LIMIT_KIB: u64 = 200 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_flood_keeps_proxy_memory_bounded() {
    let mut v = Victim::start(DEMO_POLICY).await;
    let pid = v.pid;
    let rss = Sampler::start(Duration::from_millis(10), move || status_kib(pid, "VmRSS"));
    let mut raw = RawMux::start(v.fake.accept_link().await);

    // Phase 1: 500 streams, under the proxy's 512-stream limit, held open.
    let held = flood(&mut raw, 500).await;
    assert_eq!(held.len(), 500, "the link closed during the flood");
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(2) {
        assert!(
            rss.max() < RSS_LIMIT_KIB,
            "proxy RSS reached {:.0} MiB while 500 streams were held",
            mib(rss.max())
        );
        v.proxy.assert_running();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !raw.is_closed(),
        "the proxy dropped a link within its stream limit"
    );
    let phase1 = rss.max();
    for id in &held {
        assert!(raw.reset(*id).await, "resetting the flood");
    }
    let reply = raw.call(&nexus_protocol::encode(&token_call("demo"))).await;
    assert_eq!(
        reply,
        demo_value(),
        "a valid call after the flood was reset"
    );

    // Phase 2: 1000 streams, past the limit. Whatever the proxy does with
    // the link, its memory stays bounded and it keeps serving.
    let sent = flood(&mut raw, 1000).await.len();
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(1) {
        assert!(
            rss.max() < RSS_LIMIT_KIB,
            "proxy RSS reached {:.0} MiB under a 1000-stream flood",
            mib(rss.max())
        );
        v.proxy.assert_running();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let samples = rss.samples();
    let peak = rss.stop();
    let hwm = status_kib(pid, "VmHWM").must("the proxy's VmHWM");
    eprintln!(
        "flood: phase 1 peak {:.0} MiB; phase 2 sent {sent} streams, link {}; peak {:.0} MiB, \
         VmHWM {:.0} MiB, {samples} samples",
        mib(phase1),
        if raw.is_closed() {
            "dropped by the proxy"
        } else {
            "kept"
        },
        mib(peak),
        mib(hwm)
    );
    assert!(hwm < RSS_LIMIT_KIB, "proxy peak RSS {:.0} MiB", mib(hwm));

    let reply = if raw.is_closed() {
        // The proxy reconnects; the next link answers.
        drop(raw);
        let link = v.link().await;
        within(DEADLINE, link.call(&token_call("demo")))
            .await
            .must("a valid call after the flood")
    } else {
        for id in raw.drain().iter().map(|f| f.stream).collect::<Vec<_>>() {
            let _ = raw.reset(id).await;
        }
        raw.call(&nexus_protocol::encode(&token_call("demo"))).await
    };
    assert_eq!(reply, demo_value());
    v.proxy.assert_running();
}

// 3. Command-source concurrency ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_sources_run_at_most_64_at_once() {
    let policy = "version = 1\n\n[tokens.slow]\nsource = { command = [\"sh\", \"-c\", \"sleep 0.5; echo v\"] }\n";
    let mut v = Victim::start(policy).await;
    let link = v.link().await;
    let pid = v.pid;
    let children = Sampler::start(Duration::from_millis(5), move || {
        Some(children_of(pid) as u64)
    });

    let mut calls = JoinSet::new();
    for _ in 0..300 {
        let mux = link.mux.clone();
        calls.spawn(async move {
            let mut s = mux.open().await?;
            nexus_transport::send(&mut s, &token_call("slow")).await?;
            nexus_transport::recv::<_, Reply>(&mut s, nexus_protocol::MAX_FRAME).await
        });
    }
    let (mut values, mut errors) = (0, Vec::new());
    let all = async {
        while let Some(r) = calls.join_next().await {
            match r.must("a call task") {
                Ok(Reply::Token(t)) if t.expose() == b"v" => values += 1,
                Ok(Reply::Error(e)) => errors.push(e),
                other => panic!("a call got neither the value nor an error reply: {other:?}"),
            }
        }
    };
    within(Duration::from_secs(60), all).await;
    let most = children.stop();
    eprintln!(
        "command sources: {values} values, {} errors, at most {most} children at once",
        errors.len()
    );
    assert!(
        most <= 64,
        "the proxy ran {most} token commands at once (limit 64)"
    );
    assert!(most > 0, "no token command was ever seen running");
    assert_eq!(values + errors.len(), 300);
    for e in &errors {
        assert!(
            e.code == ErrorCode::Denied && e.message.contains("too many"),
            "unexpected error: {e:?}"
        );
    }
    v.proxy.assert_running();
}

// 4. Log injection ---------------------------------------------------------

/// Whether a log line starts like `tracing`'s fmt output (`2026-..T..Z`)
/// or is a continuation (leading whitespace). A forged line dated 2099
/// counts as injected.
fn starts_like_a_log_line(line: &str) -> bool {
    let b = line.as_bytes();
    let stamp = b.len() > 11
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && !line.starts_with("2099");
    stamp || line.starts_with([' ', '\t'])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_strings_cannot_forge_or_flood_log_lines() {
    let mut v = Victim::start(DEMO_POLICY).await;
    let link = v.link().await;

    // The hand-made encoding is the real one: a valid call decodes.
    let valid = msgpack::call(b"Token", Some(b"demo"));
    let decoded: Call = nexus_protocol::decode(&valid).must("decoding the hand-made call");
    assert_eq!(decoded.request, token_call("demo").request);

    // (a) An unknown request variant whose name forges a line, short and long.
    for variant in [format!("Tok{EVIL}"), EVIL.repeat(10_000)] {
        match link
            .call_raw(&msgpack::call(variant.as_bytes(), None))
            .await
        {
            Ok(Reply::Error(e)) => assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}"),
            other => panic!("an unknown variant: {other:?}"),
        }
    }
    // (b) Token names with a newline and ESC: undeclared, so denied, and
    // logged as a decision.
    for name in [format!("demo{EVIL}"), EVIL.repeat(10_000)] {
        match link.call(&token_call(&name)).await {
            Ok(Reply::Error(e)) => assert_eq!(e.code, ErrorCode::Denied, "{e:?}"),
            other => panic!("an evil token name: {other:?}"),
        }
    }
    // (c) A 1 MiB name: over the call frame limit.
    match link.call(&token_call(&"n".repeat(1 << 20))).await {
        Ok(Reply::Error(e)) => assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}"),
        Err(TransportError::Closed) => {}
        other => panic!("a 1 MiB token name: {other:?}"),
    }
    // (d) A forged caller context on an allowed call (logged with the decision).
    let forged_caller = Call {
        caller: CallerContext {
            exe: Some(format!("/bin/sh{EVIL}")),
            cwd: Some(EVIL.repeat(1000)),
            ..CallerContext::default()
        },
        request: Request::Token {
            name: "demo".into(),
        },
        key: None,
        received: Vec::new(),
    };
    assert_eq!(
        link.call(&forged_caller)
            .await
            .must("the forged-caller call"),
        demo_value()
    );
    v.proxy.assert_running();

    let log = v.proxy.log();
    assert!(
        log.contains("forged line") && log.contains("malformed call refused"),
        "the payloads never reached the log, so this test proves nothing\n{log}"
    );
    assert!(!log.contains('\x1b'), "a raw ESC reached the log");
    assert!(!log.contains('\x07'), "a raw BEL reached the log");
    for line in log.lines() {
        assert!(
            starts_like_a_log_line(line),
            "an injected line in the proxy's log: {line:?}"
        );
        assert!(
            line.len() <= 4096,
            "a log line of {} bytes: {}...",
            line.len(),
            &line[..200]
        );
    }
}

// 5. Per-tool call rate ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_floods_are_rate_limited_per_tool() {
    let mut v = Victim::start(DEMO_POLICY).await;
    let link = v.link().await;
    let mut workers = JoinSet::new();
    for _ in 0..50 {
        let mux = link.mux.clone();
        workers.spawn(async move {
            let mut replies = Vec::new();
            for _ in 0..20 {
                let mut s = mux.open().await.must("opening a call stream");
                nexus_transport::send(&mut s, &token_call("demo"))
                    .await
                    .must("sending a call");
                let reply: Reply = nexus_transport::recv(&mut s, nexus_protocol::MAX_FRAME)
                    .await
                    .must("a reply (the link must survive the flood)");
                replies.push(reply);
            }
            replies
        });
    }
    let started = Instant::now();
    let (mut ok, mut limited, mut last_retry) = (0, 0, None);
    while let Some(r) = within(Duration::from_secs(60), workers.join_next()).await {
        for reply in r.must("a call worker") {
            match reply {
                Reply::Token(_) => ok += 1,
                Reply::Error(e)
                    if e.code == ErrorCode::Denied
                        && e.message.contains("too many")
                        && e.message.contains("retry") =>
                {
                    limited += 1;
                    last_retry = Some(e.message);
                }
                other => panic!("unexpected reply under a call flood: {other:?}"),
            }
        }
    }
    eprintln!(
        "rate: {ok} served, {limited} refused in {:?}; last: {last_retry:?}",
        started.elapsed()
    );
    assert_eq!(ok + limited, 1000);
    assert!(
        limited > 0,
        "1000 calls in {:?}, none refused",
        started.elapsed()
    );
    assert!(ok >= 200, "the first 200 calls of a second are served");
    assert!(!link.mux.is_closed(), "the flood ended the link");
    v.proxy.assert_running();

    // Once the window has passed, calls are served again.
    let retry_ms: u64 = last_retry
        .as_deref()
        .and_then(|m| m.split("retry in ").nth(1))
        .and_then(|m| m.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .must("the retry delay in the refusal");
    tokio::time::sleep(Duration::from_millis(retry_ms + 50)).await;
    let reply = within(DEADLINE, link.call(&token_call("demo")))
        .await
        .must("a call after the window");
    assert_eq!(reply, demo_value());
}

// 6. Accept loop under fd exhaustion -----------------------------------------

#[test]
fn accept_failures_neither_spin_nor_flood_the_log() {
    let mut shim = LimitedShim::start(64);
    let address = shim.address();
    let conns: Vec<_> = (0..100)
        .map(|_| std::net::TcpStream::connect(&address).must("connecting to the tunnel port"))
        .collect();
    // Wait until the shim has run out of descriptors, then hold on.
    let exhausted = poll(DEADLINE, || {
        shim.log().contains("accept failed").then_some(())
    });
    assert!(
        exhausted.is_some(),
        "the shim never ran out of files\n{}",
        shim.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    let failures = shim
        .log()
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    shim.assert_running();
    drop(conns);
    eprintln!("accept failed logged {failures} times in ~1 s");
    assert!(
        failures < 100,
        "accept failed {failures} times in about a second: the loop spins"
    );
    let answered = poll(DEADLINE, || {
        (shim.cli(&["status"]).exit_code == Some(4)).then_some(())
    });
    assert!(
        answered.is_some(),
        "status never answered after the connections closed\n{}",
        shim.log()
    );
}

// 7. shim.sock wedge ----------------------------------------------------

/// A forwarded request that would wait "forever" for a laptop.
fn wedge_request() -> Vec<u8> {
    frame(&nexus_protocol::encode(&LocalRequest {
        wait_ms: u64::MAX,
        op: LocalOp::Forward(Request::Token { name: "x".into() }),
    }))
}

/// Opens `n` connections on `shim.sock`, each holding a wedge request, and
/// waits until the daemon has accepted them all.
fn wedge(ws: &Workspace, n: usize) -> Vec<UnixStream> {
    raise_nofile();
    let sock = ws.state_dir().join("shim.sock");
    let req = wedge_request();
    let conns: Vec<_> = (0..n)
        .map(|_| {
            let mut c = UnixStream::connect(&sock).must("connecting to shim.sock");
            c.write_all(&req).must("sending a held request");
            c
        })
        .collect();
    let env = format!("NEXUS_STATE_DIR={}", ws.state_dir().display());
    let pid = poll(DEADLINE, || {
        find_pid(OsStr::new("serve"), Some(OsStr::new(&env)))
    })
    .must("the shim's pid");
    let accepted = poll(DEADLINE, || (open_fds(pid) >= n).then_some(()));
    assert!(
        accepted.is_some(),
        "the shim holds {} files, expected {n}+",
        open_fds(pid)
    );
    conns
}

#[test]
fn held_forward_calls_do_not_wedge_status() {
    let ws = Workspace::start();
    let conns = wedge(&ws, 1100);
    let status = ws.cli(["status"]);
    status.code(4);
    assert!(
        status.elapsed < Duration::from_secs(2),
        "status took {:?} behind 1100 held calls",
        status.elapsed
    );
    let uri = ws.cli(["pairing-uri"]);
    uri.ok();
    assert!(
        uri.elapsed < Duration::from_secs(2),
        "pairing-uri took {:?}",
        uri.elapsed
    );
    drop(conns);
    ws.cli(["status"]).code(4);
}

/// A caller that hangs up while its call waits for a laptop must give back
/// its place under `MAX_LOCAL_CALLS`; otherwise 1024 callers that connect,
/// ask to wait an hour and leave block every forwarded call (even `--wait
/// 0`) for that hour, and all reach the laptop once it links.
#[test]
fn callers_that_hung_up_do_not_hold_the_forwarding_gate() {
    let ws = Workspace::start();
    drop(wedge(&ws, 1100));
    // Every held caller is gone: a new call must not queue behind them.
    let out = shim_within(
        ws.state_dir(),
        &["token", "get", "x", "--wait", "0"],
        Duration::from_secs(5),
    )
    .unwrap_or_else(|| {
        panic!(
            "`token get x --wait 0` still waiting after 5 s: the 1100 callers that hung up \
             still hold the forwarding gate"
        )
    });
    out.code(4);
}

// 8. Pairing token brute force ------------------------------------------------

fn hello_with_token(token: &str) -> Vec<u8> {
    frame(&nexus_protocol::encode(&ClientHello {
        versions: SUPPORTED,
        pairing_token: Some(Secret::from(token.to_owned())),
        software: "nexus-e2e guesser".into(),
    }))
}

#[tokio::test]
async fn ten_wrong_pairing_tokens_burn_the_pending_one() {
    let mut ws = Workspace::start();
    let uri = PairingUri::parse(&ws.uri());
    for i in 0..10 {
        let guess = format!("wrong-guess-{i:02}-0123456789abcdef");
        let answer = hello_bytes(&uri.address, &uri.fingerprint, &hello_with_token(&guess)).await;
        match answer {
            Ok(Some(ServerHello::Refused { reason, .. })) => {
                assert_eq!(reason, Refusal::PairingToken, "guess {i}");
            }
            other => panic!("guess {i}: expected a token refusal, got {other:?}"),
        }
    }
    ws.wait_for_log("too many wrong pairing tokens");

    // The right token no longer pairs.
    let laptop = Laptop::new();
    let out = laptop.pair(&uri.to_string(), "dev");
    assert_ne!(out.exit_code, Some(0), "the burned token paired\n{out}");
    assert!(
        !ws.state_dir().join("paired.json").exists(),
        "a pairing was recorded"
    );
    let pending = ws.cli(["pairing-uri"]);
    eprintln!("burned token: pair says {out}\npairing-uri says {pending}");
    assert_ne!(
        pending.exit_code,
        Some(0),
        "pairing-uri still prints a URI\n{pending}"
    );

    // A rotated token pairs.
    let rotated = ws.cli(["pairing-uri", "--rotate"]);
    rotated.ok();
    let fresh = rotated.stdout.trim();
    assert_ne!(PairingUri::parse(fresh).token, uri.token);
    laptop.pair(fresh, "dev").ok();
    assert!(ws.state_dir().join("paired.json").exists());
}
