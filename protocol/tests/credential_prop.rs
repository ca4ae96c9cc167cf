//! Property tests of the git credential protocol parser: no input panics,
//! valid descriptions round-trip, and injected CR, NUL or newlines inside a
//! value never reach the parsed result as a second key.

use nexus_protocol::{Credential, MAX_CREDENTIAL_INPUT, Secret, parse_credential};
use proptest::prelude::*;

/// A value git could legitimately send: printable, no `=` restriction.
fn value() -> impl Strategy<Value = String> {
    "[ -~\t]{1,40}"
}

fn credential() -> impl Strategy<Value = Credential> {
    (
        proptest::option::of("[a-z][a-z0-9+.-]{0,8}"),
        proptest::option::of("[a-z0-9.-]{1,20}(:[0-9]{1,5})?"),
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::collection::vec(value(), 0..4),
        proptest::collection::vec(value(), 0..4),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(
            |(protocol, host, path, username, password, capability, wwwauth, quit)| Credential {
                protocol,
                host,
                path,
                username,
                password: password.map(Secret::from),
                capability,
                wwwauth,
                quit,
                ..Credential::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(c) = parse_credential(&bytes) {
            prop_assert!(!bytes.contains(&0) && !bytes.contains(&b'\r'));
            // What was accepted serializes to something accepted again, equal.
            let again = parse_credential(&c.serialize());
            prop_assert_eq!(again.as_ref(), Ok(&c));
        }
    }

    #[test]
    fn valid_descriptions_round_trip(c in credential()) {
        let bytes = c.serialize();
        prop_assert_eq!(parse_credential(&bytes), Ok(c));
    }

    #[test]
    fn injected_bytes_are_refused(
        c in credential(),
        bad in prop_oneof![Just(b'\r'), Just(0u8), Just(0x1bu8)],
        at in any::<prop::sample::Index>(),
    ) {
        let mut bytes = c.serialize().to_vec();
        prop_assume!(!bytes.is_empty());
        let i = at.index(bytes.len());
        // Inside a value (not replacing a line end), a control byte is refused.
        prop_assume!(bytes[i] != b'\n');
        bytes.insert(i + 1, bad);
        prop_assert!(parse_credential(&bytes).is_err());
    }

    #[test]
    fn a_smuggled_line_never_becomes_a_second_host(c in credential(), host in "[a-z]{1,10}") {
        // A newline inside the path (git's CVE-2020-5260) would add a key:
        // host appears twice or path gets cut; either way it is not silently
        // the attacker's host alone.
        let mut c = c;
        c.path = Some(format!("x\nhost={host}"));
        let bytes = c.serialize();
        // serialize drops the value rather than writing a forged line.
        let parsed = parse_credential(&bytes);
        prop_assert!(parsed.as_ref().is_ok_and(|p| p.path.is_none()));
    }
}

#[test]
fn the_size_limit_is_exact() {
    let line = b"path=";
    let mut ok = line.to_vec();
    ok.resize(MAX_CREDENTIAL_INPUT, b'a');
    assert!(parse_credential(&ok).is_ok());
    ok.push(b'a');
    assert!(parse_credential(&ok).is_err());
}
