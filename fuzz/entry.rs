//! The fuzzed entry points, shared by the cargo-fuzz targets (nightly,
//! `fuzz/fuzz_targets/*.rs`) and the stable-toolchain test that replays the
//! committed corpus (`tests/tests/corpus.rs`). Each takes arbitrary bytes
//! from the untrusted side and must return, never panic or hang.
//!
//! Included with `#[path]` by both, so that the replayed corpus goes through
//! exactly the code the fuzzer ran.

use bytes::BytesMut;
use nexus_protocol::{
    Call, ClientHello, Control, ControlReply, FrameCodec, LocalReply, LocalRequest, Reply,
    ServerHello, decode,
};
use ssh_agent_lib::proto::Request as AgentRequest;
use ssh_encoding::Decode;
use tokio_util::codec::Decoder;

/// Frames and every message type either side decodes: the bytes are cut
/// into frames by the codec (with a small limit, so oversized headers are
/// exercised too), and every body and the whole input go through each
/// message decoder, and the daemon's in-place look at a chunk's data.
pub fn frame(data: &[u8]) {
    let mut codec = FrameCodec::new(64 << 10);
    let mut buf = BytesMut::from(data);
    let mut bodies = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(body)) => bodies.push(body),
            Ok(None) => {
                let _ = codec.decode_eof(&mut buf);
                break;
            }
            Err(_) => break,
        }
    }
    for body in bodies.iter().map(|b| &b[..]).chain([data]) {
        let _ = decode::<ClientHello>(body);
        let _ = decode::<ServerHello>(body);
        let _ = decode::<Call>(body);
        let _ = decode::<Reply>(body);
        let _ = decode::<LocalRequest>(body);
        let _ = decode::<LocalReply>(body);
        let _ = decode::<Control>(body);
        let _ = decode::<ControlReply>(body);
        // The daemon slices a laptop frame by this range (`ForwardInto`).
        if let Some((_, at)) = nexus_protocol::chunk_data(body) {
            let _ = &body[at];
        }
    }
}

/// One ssh-agent message body (what `agent.sock` reads after the length),
/// then the laptop's parsers: the sign request, its data (userauth or
/// SSHSIG), a session-bind body and a key or certificate blob.
pub fn agent(data: &[u8]) {
    let _ = AgentRequest::decode(&mut &data[..]);
    if let Ok(sign) = nexus_proxy::ssh_wire::parse_sign_request(data) {
        let _ = nexus_proxy::ssh_wire::parse_sign_data(&sign.data);
    }
    let _ = nexus_proxy::ssh_wire::parse_sign_data(data);
    let _ = nexus_proxy::ssh_wire::parse_session_bind(data);
    if let Ok(c) = nexus_proxy::ssh_cert::parse_credential(data)
        && let Some(cert) = c.cert
    {
        let _ = cert.verify();
    }
}

/// A policy file: parsed, validated and, when valid, asked a few questions.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sources = [nexus_policy::Source::new("fuzz.toml", text)];
    if let Ok(policy) = nexus_policy::Policy::from_sources(&sources) {
        for name in ["demo", "prod-db", "", "a*"] {
            let _ = policy.decide(&nexus_policy::Request {
                workspace: "dev",
                caller: None,
                action: nexus_policy::Action::Token { name },
            });
        }
    }
}

/// What git writes to a credential helper, as the shim reads it from git and
/// the laptop reads it again (and what the laptop's own git answers): the
/// strict parser, then a round trip: whatever parses must serialize to text
/// that parses back to the same credential.
pub fn credential(data: &[u8]) {
    if let Ok(parsed) = nexus_protocol::parse_credential(data) {
        let text = parsed.serialize();
        let again = nexus_protocol::parse_credential(&text);
        assert_eq!(
            again.as_ref().ok(),
            Some(&parsed),
            "round trip changed the credential"
        );
    }
}

/// A push request as the laptop reads it before forwarding (git's
/// receive-pack command list): fed whole and again in two pieces, which
/// must give the same answer.
pub fn pktline(data: &[u8]) {
    use nexus_protocol::pktline::PushCommands;
    let whole = PushCommands::new().feed(data);
    let cut = data.len() / 2;
    let mut r = PushCommands::new();
    let split = match r.feed(&data[..cut]) {
        Ok(nexus_protocol::pktline::Progress::NeedMore) => r.feed(&data[cut..]),
        other => other,
    };
    assert_eq!(
        whole, split,
        "the answer depends on where the request is cut"
    );
}
