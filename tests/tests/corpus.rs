//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the
//! same entry points the cargo-fuzz targets use (`fuzz/entry.rs`), on the
//! stable toolchain: a crash the fuzzer once found stays fixed even where
//! nightly is missing. A panic anywhere fails the test with the file name.

#[path = "../../fuzz/entry.rs"]
mod entry;

use std::path::{Path, PathBuf};

/// A fuzz entry point.
type Entry = fn(&[u8]);

/// Every target with a corpus directory, and its entry point.
const TARGETS: &[(&str, Entry)] = &[
    ("frame", entry::frame),
    ("agent", entry::agent),
    ("policy", entry::policy),
    ("credential", entry::credential),
    ("pktline", entry::pktline),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file());
    out.sort();
    out
}

#[test]
fn every_corpus_file_goes_through_its_target_without_a_panic() {
    for (target, run) in TARGETS {
        let dir = corpus_dir(target);
        let inputs = files(&dir);
        assert!(
            !inputs.is_empty(),
            "no seed corpus in {}: every fuzz target needs one",
            dir.display()
        );
        for path in &inputs {
            let data = std::fs::read(path).unwrap_or_default();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
        }
        eprintln!("{target}: {} corpus files replayed", inputs.len());
    }
}

#[test]
fn every_corpus_directory_has_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name} has no entry in this test's TARGETS: add one so it is replayed"
        );
    }
}

proptest::proptest! {
    /// Arbitrary bytes, on top of the corpus (the property-test twin of the
    /// fuzzers, for machines without nightly).
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
        for (_, run) in TARGETS {
            run(&data);
        }
    }
}

/// Writes the generated seeds (real messages of each kind) into the corpus.
/// Run by hand after a protocol change:
/// `cargo test -p nexus-e2e --test corpus -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes into fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    seeds::write();
}

mod seeds {
    use super::corpus_dir;
    use nexus_protocol::{
        Call, CallerContext, ClientHello, Control, ControlReply, LocalOp, LocalRequest, Reply,
        Request, SUPPORTED, Secret, ServerHello, encode,
    };

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(body);
        out
    }

    fn ssh_string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(s);
    }

    fn put(target: &str, name: &str, data: &[u8]) {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        std::fs::write(dir.join(name), data).unwrap_or_default();
    }

    pub fn write() {
        let caller = CallerContext {
            uid: Some(1000),
            gid: Some(1000),
            pid: Some(42),
            exe: Some("/usr/bin/git".into()),
            cwd: Some("/work".into()),
        };
        let token = Call {
            caller: caller.clone(),
            request: Request::Token {
                name: "demo".into(),
            },
            key: None,
            received: Vec::new(),
        };
        let sign = Call {
            caller,
            request: Request::SshSign {
                connection: 3,
                binds: vec![vec![0, 0, 0, 1, 0x41]],
                request: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            },
            key: None,
            received: Vec::new(),
        };
        let hello = ClientHello {
            versions: SUPPORTED,
            pairing_token: Some(Secret::from("t0ken".to_owned())),
            software: "nexus-agent-proxy 0.1.0".into(),
        };
        let frames: Vec<(&str, Vec<u8>)> = vec![
            ("call-token", encode(&token)),
            ("call-sign", encode(&sign)),
            (
                "call-identities",
                encode(&Call {
                    caller: CallerContext::default(),
                    request: Request::SshIdentities,
                    key: None,
                    received: Vec::new(),
                }),
            ),
            ("hello", encode(&hello)),
            (
                "server-hello",
                encode(&ServerHello::Accepted {
                    version: 1,
                    paired_now: true,
                    software: "x".into(),
                }),
            ),
            (
                "reply-token",
                encode(&Reply::Token(Secret::from("v".to_owned()))),
            ),
            (
                "reply-error",
                encode(&Reply::error(nexus_protocol::ErrorCode::Denied, "no")),
            ),
            (
                "local-forward",
                encode(&LocalRequest {
                    wait_ms: 30_000,
                    op: LocalOp::Forward(Request::Token {
                        name: "demo".into(),
                    }),
                }),
            ),
            (
                "local-status",
                encode(&LocalRequest {
                    wait_ms: 0,
                    op: LocalOp::Status,
                }),
            ),
            (
                "ping",
                encode(&Control::Ping {
                    seq: 1,
                    interval_ms: 2500,
                }),
            ),
            ("pong", encode(&ControlReply::Pong { seq: 1 })),
        ];
        for (name, body) in &frames {
            put("frame", name, &frame(body));
        }
        let mut two = frame(&frames[0].1);
        two.extend(frame(&frames[9].1));
        put("frame", "two-frames", &two);
        put("frame", "oversized-header", &[0xff, 0xff, 0xff, 0xff, 0x80]);
        put("frame", "truncated", &frame(&frames[0].1)[..10]);
        let mut bomb = vec![0, 0, 0x10, 0];
        bomb.extend(std::iter::repeat_n(0x91u8, 4096));
        put("frame", "nesting", &bomb);

        // ssh-agent bodies: list, sign (key blob, data, flags), extensions.
        put("agent", "list", &[11]);
        let mut key = Vec::new();
        ssh_string(&mut key, b"ssh-ed25519");
        ssh_string(&mut key, &[7u8; 32]);
        let mut userauth = Vec::new();
        ssh_string(&mut userauth, &[1u8; 32]);
        userauth.push(50);
        ssh_string(&mut userauth, b"git");
        ssh_string(&mut userauth, b"ssh-connection");
        ssh_string(&mut userauth, b"publickey");
        userauth.push(1);
        ssh_string(&mut userauth, b"ssh-ed25519");
        ssh_string(&mut userauth, &key);
        let mut sign_body = vec![13];
        ssh_string(&mut sign_body, &key);
        ssh_string(&mut sign_body, &userauth);
        sign_body.extend_from_slice(&0u32.to_be_bytes());
        put("agent", "sign-userauth", &sign_body);
        put("agent", "userauth-data", &userauth);
        let mut sshsig = b"SSHSIG".to_vec();
        ssh_string(&mut sshsig, b"git");
        ssh_string(&mut sshsig, b"");
        ssh_string(&mut sshsig, b"sha512");
        ssh_string(&mut sshsig, &[9u8; 64]);
        put("agent", "sshsig-data", &sshsig);
        let mut bind = Vec::new();
        ssh_string(&mut bind, &key);
        ssh_string(&mut bind, &[1u8; 32]);
        let mut sig = Vec::new();
        ssh_string(&mut sig, b"ssh-ed25519");
        ssh_string(&mut sig, &[0u8; 64]);
        ssh_string(&mut bind, &sig);
        bind.push(0);
        put("agent", "session-bind-body", &bind);
        let mut ext = vec![27];
        ssh_string(&mut ext, b"session-bind@openssh.com");
        ext.extend_from_slice(&bind);
        put("agent", "extension-bind", &ext);
        let mut query = vec![27];
        ssh_string(&mut query, b"query");
        put("agent", "extension-query", &query);
        put("agent", "add-identity", &[17, 0, 0, 0, 11]);
        put("agent", "lock", &[22, 0, 0, 0, 1, b'x']);
        put("agent", "huge-length", &[13, 0xff, 0xff, 0xff, 0xff]);

        // Policies: the example and every fixture.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut policies = vec![root.join("examples/policy.toml")];
        for sub in ["tests/fixtures/valid", "tests/fixtures/invalid"] {
            for e in std::fs::read_dir(root.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.path().extension().is_some_and(|x| x == "toml") {
                    policies.push(e.path());
                }
            }
        }
        for p in policies {
            let name = p
                .strip_prefix(&root)
                .map(|r| r.to_string_lossy().replace('/', "-"))
                .unwrap_or_default();
            put("policy", &name, &std::fs::read(&p).unwrap_or_default());
        }
    }
}
