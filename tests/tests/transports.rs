//! The tunnel over routes other than raw TCP, with real parts: nginx as a
//! TLS-terminating WebSocket reverse proxy, sshd running
//! `nexus-shim serve --stdio`, and a connect command with no daemon in the
//! workspace. The certificate pin holds on every route.
//!
//! (`NEXUS_E2E_ROUTE=wss|stdio cargo test --test foundation` runs the whole
//! foundation suite over these routes; `.ci/run` does.)

use std::io::{Read, Write};

use nexus_e2e::front::Front;
use nexus_e2e::{DEMO_POLICY, Laptop, Must, PairingUri, Workspace, is_root, poll, shim_once};

fn shim_address(ws: &Workspace) -> String {
    PairingUri::parse(&ws.uri()).address
}

#[test]
fn wss_through_nginx_with_a_private_ca() {
    if !is_root() {
        return eprintln!("skipped: nginx and namespaces need root");
    }
    let ws = Workspace::start();
    let front = Front::nginx(&ws, &shim_address(&ws));
    let url = front.pair_args[1].clone();
    let ca = front.ca_file.clone().must("the front's CA");
    let laptop = Laptop::new();

    // The ingress's certificate is not in the OS store: refused, saying why.
    laptop
        .cli(["pair", &ws.uri(), "--name", "dev", "--connect", &url])
        .code(1)
        .stderr_has("outer TLS");
    // A CA file that is not PEM: refused before dialing.
    let bogus = laptop.write_policy("not a certificate");
    laptop
        .cli([
            "pair",
            &ws.uri(),
            "--name",
            "dev",
            "--connect",
            &url,
            "--ca-file",
            &bogus.display().to_string(),
        ])
        .code(1)
        .stderr_has("no certificate");

    let mut args = vec!["pair".to_owned(), ws.uri(), "--name".into(), "dev".into()];
    args.extend(front.pair_args.iter().cloned());
    laptop.cli(&args).ok();
    let policy = laptop.write_policy(DEMO_POLICY);
    let _proxy = laptop.run(&ws, "dev", &policy, &[("E2E_DEMO", "over-wss")]);
    assert_eq!(ws.cli(["token", "get", "demo"]).ok().stdout, "over-wss\n");
    let status = ws.status_json();
    let peer = status["peer"].as_str().must("status names the peer");
    assert!(peer.contains("websocket"), "{peer}");
    drop(ca);
}

/// Another workspace behind the same kind of front: the inner pin still
/// decides, so a front that leads to the wrong shim is a pin mismatch.
#[test]
fn wss_front_to_the_wrong_shim_is_a_pin_mismatch() {
    if !is_root() {
        return eprintln!("skipped: nginx and namespaces need root");
    }
    let ws = Workspace::start();
    let other = Workspace::start();
    let front = Front::nginx(&other, &shim_address(&other));
    let laptop = Laptop::new();
    let mut args = vec!["pair".to_owned(), ws.uri(), "--name".into(), "dev".into()];
    args.extend(front.pair_args.iter().cloned());
    laptop
        .cli(&args)
        .code(1)
        .stderr_has("is pinned. Someone may be intercepting the connection");
}

/// `serve --stdio` with no daemon on the state dir: the connect command runs
/// the whole daemon for the length of the session, and it goes away (sockets
/// removed) when the proxy stops.
#[test]
fn stdio_without_a_daemon_serves_for_the_session() {
    let mut ws = Workspace::start();
    let laptop = Laptop::new();
    laptop.pair(&ws.uri(), "dev").ok();
    assert!(ws.terminate().success());
    let state = ws.state_dir().to_path_buf();
    assert!(!state.join("shim.sock").exists());

    // The shim's stderr goes to the proxy (which logs it), as over ssh: once
    // the proxy is gone, logging must not stop the shim from shutting down.
    let command = format!(
        "NEXUS_LOG=info {} serve --stdio --state-dir {}",
        nexus_e2e::shim_binary().display(),
        state.display(),
    );
    let policy = laptop.write_policy(DEMO_POLICY);
    let mut proxy = laptop.spawn_run_with(
        "dev",
        &policy,
        &[("E2E_DEMO", std::ffi::OsStr::new("over-stdio"))],
        &[std::ffi::OsStr::new("--connect-command"), command.as_ref()],
    );
    let linked = poll(nexus_e2e::DEADLINE, || {
        (shim_once(&state, ["status"]).exit_code == Some(0)).then_some(())
    });
    assert!(linked.is_some(), "never linked over stdio\n{}", proxy.log());
    let got = shim_once(&state, ["token", "get", "demo"]);
    assert_eq!(got.ok().stdout, "over-stdio\n");
    let status: serde_json::Value =
        serde_json::from_str(&shim_once(&state, ["status", "--json"]).ok().stdout)
            .must("status --json");
    assert_eq!(status["peer"], "stdio (stdio)", "{status}");

    assert!(proxy.terminate().success(), "{}", proxy.log());
    let gone = poll(nexus_e2e::DEADLINE, || {
        (!state.join("shim.sock").exists()).then_some(())
    });
    assert!(
        gone.is_some(),
        "the session's daemon outlived the proxy\n{}",
        proxy.log()
    );
}

/// Through a real ssh login: `serve --stdio` relays into the running daemon.
#[test]
fn stdio_through_ssh_relays_into_the_daemon() {
    if !is_root() {
        return eprintln!("skipped: the ssh route logs in as root");
    }
    let ws = Workspace::start();
    let front = Front::sshd(&ws);
    let laptop = Laptop::new();
    let mut args = vec!["pair".to_owned(), ws.uri(), "--name".into(), "dev".into()];
    args.extend(front.pair_args.iter().cloned());
    laptop.cli(&args).ok();
    let policy = laptop.write_policy(DEMO_POLICY);
    let _proxy = laptop.run(&ws, "dev", &policy, &[("E2E_DEMO", "over-ssh")]);
    assert_eq!(ws.cli(["token", "get", "demo"]).ok().stdout, "over-ssh\n");
    let status = ws.status_json();
    assert!(
        status["peer"]
            .as_str()
            .is_some_and(|p| p.contains("stdio relay")),
        "{status}"
    );
    assert!(
        front.log().contains("Accepted publickey for root"),
        "{}",
        front.log()
    );
}

/// `serve --stdio` relaying into a daemon that refuses the tunnel ends at
/// once, though its stdin stays open: the laptop waits on the far end of
/// its stdout. It used to finish its work and then wait, in the runtime's
/// drop, for the blocking read of stdin, holding stdout open until the
/// laptop gave up.
#[test]
fn stdio_relay_ends_when_the_daemon_refuses_though_stdin_stays_open() {
    let ws = Workspace::start();
    let mut relay = ws
        .cli_command()
        .args(["serve", "--stdio"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .must("starting serve --stdio");
    // A TLS handshake record too large to be one: the daemon refuses.
    let mut stdin = relay.stdin.take().must("the relay's stdin");
    stdin
        .write_all(b"\x16\x03\x01\xff\xffnot-a-client-hello")
        .must("writing to the relay");
    let ended = poll(std::time::Duration::from_secs(20), || {
        relay.try_wait().ok().flatten()
    });
    let _ = relay.kill();
    let _ = relay.wait();
    assert!(
        ended.is_some(),
        "serve --stdio still ran 20 s after the daemon refused, stdin open\n{}",
        ws.log()
    );
    assert!(ws.log().contains("tunnel refused"), "{}", ws.log());
    drop(stdin);
}

/// The tunnel port answers raw TLS and WebSocket upgrades; anything else
/// (plain HTTP, garbage) is refused without disturbing the link.
#[test]
fn tunnel_port_refuses_plain_http_and_garbage() {
    let mut ws = Workspace::start();
    let laptop = Laptop::new();
    laptop.pair(&ws.uri(), "dev").ok();
    let policy = laptop.write_policy(DEMO_POLICY);
    let _proxy = laptop.run(&ws, "dev", &policy, &[("E2E_DEMO", "still-here")]);
    let address = ws.status_json()["listen"]
        .as_str()
        .must("status names the listen address")
        .to_owned();
    for probe in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"\x00\x01garbage",
    ] {
        let mut tcp = std::net::TcpStream::connect(&address).must("connecting to the tunnel port");
        tcp.write_all(probe).must("sending a probe");
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest);
    }
    ws.wait_for_log("neither TLS nor a WebSocket upgrade");
    assert_eq!(ws.cli(["token", "get", "demo"]).ok().stdout, "still-here\n");
}
