//! Bad input on the wire, from peers built with `nexus-transport`: another
//! protocol version, and malformed, oversized or truncated frames. Each must
//! fail alone, with a clear error, while the other side keeps serving.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use nexus_e2e::raw::{FakeShim, hello_as, link_as, within};
use nexus_e2e::{DEADLINE, DEMO_POLICY, Laptop, Must, PairingUri, Workspace};
use nexus_protocol::{
    ANSWER_RECEIVED, Call, CallerContext, ClientHello, ErrorCode, LocalReply, MAX_FRAME, Refusal,
    Reply, Request, SUPPORTED, Secret, ServerHello, VersionRange,
};
use nexus_transport::mux::{self, Mode};
use nexus_transport::{MuxConfig, MuxStream, TransportError};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Versions no build speaks.
const FUTURE: VersionRange = VersionRange { min: 90, max: 99 };

/// A length-prefixed frame around `body`.
fn frame(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).must("a small body");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A body that is no MessagePack value at all (0xc1 is never used).
const GARBAGE: [u8; 16] = [0xc1; 16];

/// A 2 MiB length prefix: twice the frame limit, body never sent.
const OVERSIZED_HEADER: [u8; 4] = (2u32 << 20).to_be_bytes();

/// A header announcing 100 bytes, then 10 of them.
fn half_frame() -> Vec<u8> {
    let mut out = 100u32.to_be_bytes().to_vec();
    out.extend_from_slice(&[7; 10]);
    out
}

#[tokio::test]
async fn shim_refuses_another_protocol_version_naming_both() {
    let mut ws = Workspace::start();
    let uri = PairingUri::parse(&ws.uri());
    let laptop = Laptop::new();
    laptop.pair(&uri.to_string(), "dev").ok();

    // The paired laptop's own certificate, so only the version is wrong.
    let hello = ClientHello {
        versions: FUTURE,
        pairing_token: None,
        software: "nexus-e2e".into(),
    };
    let answer = hello_as(
        &laptop.identity_dir(),
        &uri.address,
        &uri.fingerprint,
        &hello,
    )
    .await;
    match answer {
        ServerHello::Refused { reason, versions } => {
            assert_eq!(reason, Refusal::Version);
            assert_eq!(versions, SUPPORTED, "the shim names what it speaks");
        }
        other @ ServerHello::Accepted { .. } => panic!("accepted v90..v99: {other:?}"),
    }
    ws.wait_for_log("the peer speaks v90..v99");

    // The shim keeps serving the real proxy.
    let policy = laptop.write_policy(DEMO_POLICY);
    let _proxy = laptop.run(&ws, "dev", &policy, &[("E2E_DEMO", "v")]);
    ws.cli(["token", "get", "demo"]).ok();
}

/// Confirmations follow the laptop's protocol version. A v1 laptop (before
/// they moved into later calls) still gets each keyed read's
/// `ANSWER_RECEIVED` on its stream, after the answer. A v2 laptop gets a
/// stream that ends with the request, and the read's key in the next call.
#[tokio::test]
async fn confirmations_follow_the_laptops_protocol_version() {
    use tokio::io::AsyncReadExt;
    for (versions, later) in [(VersionRange { min: 1, max: 1 }, false), (SUPPORTED, true)] {
        let ws = Workspace::start();
        let uri = PairingUri::parse(&ws.uri());
        let laptop = Laptop::new();
        laptop.pair(&uri.to_string(), "dev").ok();
        let hello = ClientHello {
            versions,
            pairing_token: None,
            software: "nexus-e2e".into(),
        };
        let (conn, answer) = link_as(
            &laptop.identity_dir(),
            &uri.address,
            &uri.fingerprint,
            &hello,
        )
        .await;
        assert!(matches!(answer, ServerHello::Accepted { .. }), "{answer:?}");
        let stop = CancellationToken::new();
        let (_mux, mut calls, _driver) = mux::start(conn, Mode::Client, MuxConfig::PROXY, stop);
        let mut first = None;
        for _ in 0..2 {
            let mut cli = ws.cli_command();
            cli.args(["token", "get", "demo"])
                .stdout(std::process::Stdio::piped());
            let child = cli.spawn().must("starting token get");
            let mut stream = within(DEADLINE, calls.recv()).await.must("the read");
            let call: Call = within(DEADLINE, nexus_transport::recv(&mut stream, MAX_FRAME))
                .await
                .must("the call");
            let key = call.key.must("a keyed read");
            assert_eq!(key.later, later, "{versions}");
            let carried: Vec<u64> = first.filter(|_| later).into_iter().collect();
            assert_eq!(call.received, carried, "{versions}");
            first = Some(key.id);
            nexus_transport::send(&mut stream, &Reply::Token(Secret::from("v".to_owned())))
                .await
                .must("answering");
            stream.shutdown().await.must("closing");
            let mut rest = Vec::new();
            within(DEADLINE, stream.read_to_end(&mut rest))
                .await
                .must("the stream's end");
            let confirmation = if later { vec![] } else { vec![ANSWER_RECEIVED] };
            assert_eq!(rest, confirmation, "{versions}");
            let out = tokio::task::spawn_blocking(move || child.wait_with_output())
                .await
                .must("token get")
                .must("token get");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
        }
    }
}

#[tokio::test]
async fn proxy_reports_a_version_mismatch_naming_both() {
    let fake = FakeShim::bind().await;
    let uri = format!(
        "nexus://{}?fp={}&token=e2e-token-0123456789",
        fake.address(),
        fake.fingerprint()
    );
    let pair = tokio::task::spawn_blocking(move || {
        let laptop = Laptop::new();
        laptop.pair(&uri, "fake")
    });
    let (mut conn, hello) = fake.accept_hello().await;
    assert_eq!(hello.versions, SUPPORTED);
    assert!(hello.pairing_token.is_some(), "pairing sends the token");
    let refusal = ServerHello::Refused {
        reason: Refusal::Version,
        versions: FUTURE,
    };
    nexus_transport::send(&mut conn, &refusal)
        .await
        .must("sending the refusal");
    let out = pair.await.must("the pair command");
    out.code(1)
        .stderr_has("protocol version mismatch")
        .stderr_has("the workspace speaks v90..v99")
        .stderr_has(&format!("this proxy speaks {SUPPORTED}"));
}

/// Asserts the proxy refused what came on `stream`: an error reply, or
/// the stream closed. Never a hang.
async fn assert_stream_refused(stream: &mut MuxStream, what: &str) {
    let answer: Result<Reply, _> = within(DEADLINE, nexus_transport::recv(stream, MAX_FRAME)).await;
    match answer {
        Ok(Reply::Error(e)) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{what}: {e:?}");
            assert!(
                e.message.contains("malformed call refused"),
                "{what}: {e:?}"
            );
        }
        Err(TransportError::Closed) => {}
        other => panic!("{what}: expected an error reply or a closed stream, got {other:?}"),
    }
}

#[tokio::test]
async fn proxy_survives_bad_frames_on_one_connection() {
    let fake = FakeShim::bind().await;
    let laptop = Laptop::new();
    laptop.add_workspace_record("fake", fake.address(), &fake.fingerprint());
    let policy = laptop.write_policy(DEMO_POLICY);
    let mut proxy = laptop.spawn_run("fake", &policy, &[("E2E_DEMO", "still-serving")]);

    let conn = fake.accept_link().await;
    let stop = CancellationToken::new();
    let (mux, _inbound, driver) = mux::start(conn, Mode::Server, MuxConfig::SHIM, stop.clone());

    let mut s = mux.open().await.must("opening stream 1");
    s.write_all(&frame(&GARBAGE)).await.must("garbage frame");
    assert_stream_refused(&mut s, "a garbage body").await;

    let mut s = mux.open().await.must("opening stream 2");
    s.write_all(&OVERSIZED_HEADER).await.must("2 MiB header");
    assert_stream_refused(&mut s, "a 2 MiB length prefix").await;

    let mut s = mux.open().await.must("opening stream 3");
    s.write_all(&half_frame()).await.must("half a frame");
    s.shutdown().await.must("closing stream 3");
    assert_stream_refused(&mut s, "half a frame").await;

    // The same connection still answers a valid call.
    let mut s = mux.open().await.must("opening stream 4");
    let call = Call {
        caller: CallerContext::default(),
        request: Request::Token {
            name: "demo".into(),
        },
        key: None,
        received: Vec::new(),
    };
    nexus_transport::send(&mut s, &call)
        .await
        .must("sending a call");
    let reply: Reply = within(DEADLINE, nexus_transport::recv(&mut s, MAX_FRAME))
        .await
        .must("the reply to a valid call");
    assert_eq!(
        reply,
        Reply::Token(Secret::from("still-serving".to_owned()))
    );
    assert!(!mux.is_closed(), "the connection survived");
    proxy.assert_running();

    stop.cancel();
    let _ = within(DEADLINE, driver).await;
    drop(fake);
    assert!(
        proxy.log().contains("malformed call refused"),
        "{}",
        proxy.log()
    );
    let exit = proxy.terminate();
    assert!(exit.success(), "proxy: {exit}\n{}", proxy.log());
}

/// Sends `bytes` on a fresh `shim.sock` connection (then half-closes) and
/// returns the daemon's answer.
fn local_exchange(ws: &Workspace, bytes: &[u8]) -> LocalReply {
    let path = ws.state_dir().join("shim.sock");
    let mut conn = UnixStream::connect(&path).must("connecting to shim.sock");
    conn.set_read_timeout(Some(DEADLINE)).must("read timeout");
    conn.write_all(bytes).must("writing to shim.sock");
    conn.shutdown(std::net::Shutdown::Write)
        .must("half-closing shim.sock");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).must("reading the answer");
    let (header, body) = answer.split_at_checked(4).must("an answer frame");
    let len = u32::from_be_bytes(header.try_into().must("a 4-byte header"));
    assert_eq!(
        usize::try_from(len).ok(),
        Some(body.len()),
        "one whole frame"
    );
    nexus_protocol::decode(body).must("decoding the answer")
}

#[test]
fn shim_socket_answers_garbage_with_an_error() {
    let ws = Workspace::start();
    for (what, bytes) in [
        ("garbage body", frame(&GARBAGE)),
        ("oversized header", OVERSIZED_HEADER.to_vec()),
        ("half a frame", half_frame()),
    ] {
        match local_exchange(&ws, &bytes) {
            LocalReply::Reply(Reply::Error(e)) => {
                assert_eq!(e.code, ErrorCode::BadRequest, "{what}: {e:?}");
                assert!(
                    e.message.contains("bad request on shim.sock"),
                    "{what}: {e:?}"
                );
            }
            other => panic!("{what}: expected an error, got {other:?}"),
        }
    }
    // The daemon still serves well-formed callers.
    ws.cli(["status"]).code(4).stdout_has("not linked");
}
