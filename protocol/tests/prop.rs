//! Property tests: frames and messages round-trip, and no input makes a
//! decoder panic, allocate past the limit, or accept a truncated frame.

use bytes::BytesMut;
use nexus_protocol::{
    Call, CallKey, CallerContext, ClientHello, ErrorCode, FrameCodec, FrameError, LocalOp,
    LocalReply, LocalRequest, Reply, Request, Secret, ServerHello, VersionRange, decode, encode,
};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn request() -> impl Strategy<Value = Request> {
    ".{0,80}".prop_map(|name| Request::Token { name })
}

fn caller() -> impl Strategy<Value = CallerContext> {
    (
        any::<Option<u32>>(),
        any::<Option<u32>>(),
        any::<Option<u32>>(),
        any::<Option<String>>(),
        any::<Option<String>>(),
    )
        .prop_map(|(uid, gid, pid, exe, cwd)| CallerContext {
            uid,
            gid,
            pid,
            exe,
            cwd,
        })
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|v| Reply::Token(Secret::new(v))),
        (0..5u8, ".{0,80}").prop_map(|(c, m)| {
            let code = [
                ErrorCode::Denied,
                ErrorCode::Missing,
                ErrorCode::NotConnected,
                ErrorCode::BadRequest,
                ErrorCode::Internal,
            ][usize::from(c)];
            Reply::error(code, m)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn frames_round_trip_in_any_chunking(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8), cut in 1usize..64) {
        let mut codec = FrameCodec::new(512);
        let mut wire = BytesMut::new();
        for b in &bodies {
            codec.encode(&b[..], &mut wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        // Feed the wire in chunks of `cut` bytes: partial frames must wait, not fail.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(cut) {
            buf.extend_from_slice(chunk);
            while let Some(f) = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                got.push(f.to_vec());
            }
        }
        prop_assert_eq!(got, bodies);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn garbage_never_panics_and_respects_limit(bytes in proptest::collection::vec(any::<u8>(), 0..2048), max in 0usize..1024) {
        let mut codec = FrameCodec::new(max);
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(f)) => prop_assert!(f.len() <= max),
                Ok(None) => { prop_assert!(buf.is_empty()); break; }
                Err(FrameError::TooLarge { len, max: m }) => { prop_assert!(len > m); break; }
                Err(FrameError::Truncated { buffered, expected }) => { prop_assert!(buffered < expected); break; }
                Err(FrameError::Io(e)) => return Err(TestCaseError::fail(e.to_string())),
            }
        }
    }

    #[test]
    fn garbage_bodies_decode_to_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Call>(&bytes);
        let _ = decode::<Reply>(&bytes);
        let _ = decode::<ClientHello>(&bytes);
        let _ = decode::<ServerHello>(&bytes);
        let _ = decode::<LocalRequest>(&bytes);
        let _ = decode::<LocalReply>(&bytes);
    }

    #[test]
    fn messages_round_trip(
        caller in caller(), request in request(), reply in reply(), wait_ms in any::<u64>(),
        key in proptest::option::of((any::<u64>(), any::<bool>(), any::<bool>())),
        received in proptest::collection::vec(any::<u64>(), 0..4),
    ) {
        let key = key.map(|(id, retry, later)| CallKey { id, retry, later });
        let call = Call { caller: caller.clone(), request: request.clone(), key, received: received.clone() };
        let back: Call = decode(&encode(&call)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back.caller, caller);
        prop_assert_eq!(back.request, request.clone());
        prop_assert_eq!(back.key, key);
        prop_assert_eq!(back.received, received);
        let back: Reply = decode(&encode(&reply)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, reply);
        let local = LocalRequest { wait_ms, op: LocalOp::Forward(request.clone()) };
        let back: LocalRequest = decode(&encode(&local)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back.wait_ms, wait_ms);
        prop_assert!(matches!(back.op, LocalOp::Forward(r) if r == request));
    }

    #[test]
    fn truncated_messages_are_errors(request in request(), cut in 0usize..40) {
        let body = encode(&Call { caller: CallerContext::default(), request, key: None, received: Vec::new() });
        let cut = cut.min(body.len().saturating_sub(1));
        prop_assert!(decode::<Call>(&body[..cut]).is_err());
    }
}

#[test]
fn unknown_variant_is_an_error() {
    #[derive(serde::Serialize)]
    enum Future {
        Teleport { to: String },
    }
    let body = encode(&Future::Teleport { to: "mars".into() });
    let err = decode::<Request>(&body)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("malformed message"), "{err}");
}

#[test]
fn hello_carries_version_range() {
    let hello = ClientHello {
        versions: VersionRange { min: 1, max: 7 },
        pairing_token: None,
        software: "x".into(),
    };
    let back: ClientHello = decode(&encode(&hello)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.versions, VersionRange { min: 1, max: 7 });
}

/// A map with one unknown field holding `depth` nested arrays: what a hostile
/// peer sends to exhaust the decoder's stack.
fn nested_bomb(depth: usize) -> Vec<u8> {
    let mut v = vec![0x81, 0xa5];
    v.extend_from_slice(b"bogus");
    v.extend(std::iter::repeat_n(0x91, depth));
    v.push(0xc0);
    v
}

#[test]
fn deep_nesting_is_an_error_even_on_a_small_stack() {
    // A 256 KiB stack overflows at a few thousand levels without a limit.
    let worker = std::thread::Builder::new().stack_size(256 << 10).spawn(|| {
        for depth in [100, 1_000, 100_000] {
            let bomb = nested_bomb(depth);
            assert!(decode::<Call>(&bomb).is_err(), "Call at depth {depth}");
            assert!(
                decode::<ClientHello>(&bomb).is_err(),
                "ClientHello at depth {depth}"
            );
            assert!(
                decode::<LocalRequest>(&bomb).is_err(),
                "LocalRequest at depth {depth}"
            );
            assert!(decode::<Reply>(&bomb).is_err(), "Reply at depth {depth}");
        }
    });
    assert!(
        worker.map(|h| h.join().is_ok()).unwrap_or(false),
        "decoder crashed on nested input"
    );
}

#[test]
fn shallow_unknown_fields_are_still_ignored() {
    // Forward compatibility: a newer peer's extra field (not deeply nested) is fine.
    #[derive(serde::Serialize)]
    struct Newer {
        versions: VersionRange,
        pairing_token: Option<Secret>,
        software: String,
        extra: Vec<Vec<u8>>,
    }
    let body = encode(&Newer {
        versions: VersionRange { min: 1, max: 1 },
        pairing_token: None,
        software: "x".into(),
        extra: vec![vec![1, 2]],
    });
    assert!(decode::<ClientHello>(&body).is_ok());
}
