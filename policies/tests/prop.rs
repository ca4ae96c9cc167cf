//! Property tests: parsing never panics, rates round-trip, and decisions keep
//! the two promises of the engine (deny beats allow, default deny).

use std::time::Duration;

use nexus_policy::{Action, BoundHostKey, Decision, Grant, Policy, Rate, Request, Source, Verdict};
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../examples/policy.toml");

fn decide(policy: &Policy, name: &str) -> Decision {
    policy.decide(&Request {
        workspace: "ws",
        caller: None,
        action: Action::Token { name },
    })
}

/// A host key known_hosts pins for `hosts`, listed under no other name.
fn known_hosts_pin(hosts: &[String]) -> BoundHostKey<'_> {
    BoundHostKey {
        blob: &[],
        known_hosts_pins: hosts,
        known_as: &[],
        cert: None,
    }
}

/// One edit of a text: at a position (taken modulo the length), delete some
/// characters, then insert a string.
fn edit() -> impl Strategy<Value = (usize, usize, String)> {
    (
        any::<usize>(),
        0usize..4,
        prop_oneof![
            "[\\[\\]{}=\"'.,#\n a-z0-9:/*-]{0,6}",
            any::<String>(),
            Just("\n[tokens.x]\n".to_owned()),
            Just("[[tokens.deny]]\nname = ".to_owned()),
            Just("source = ".to_owned()),
            Just("\n[[ssh.allow]]\nhost = \"h\"\nuser = \"u\"\n".to_owned()),
            Just("[[ssh.deny]]\nkey = ".to_owned()),
            Just("keys = [\"SHA256:".to_owned()),
            Just("host_keys = [\"ssh-ed25519 AAAA".to_owned()),
            Just("sshsig_namespaces = [".to_owned()),
            Just(":99999".to_owned()),
            Just("\n[workspace.\"ci\".tokens.y]\nsource = \"env:Y\"\n".to_owned()),
            Just("[[workspace.ci.ssh.deny]]\nhost = ".to_owned()),
        ],
    )
}

fn apply(text: &str, edits: &[(usize, usize, String)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for (at, delete, insert) in edits {
        let at = at % (chars.len() + 1);
        let end = (at + delete).min(chars.len());
        chars.splice(at..end, insert.chars());
    }
    chars.into_iter().collect()
}

/// Every kind of decision, for a policy that loaded.
fn decide_everything(policy: &Policy) {
    for name in policy.token_names() {
        let _ = decide(policy, name);
    }
    let everywhere: Vec<String> = policy.ssh_rules().iter().map(|r| r.host.clone()).collect();
    for rule in policy.ssh_rules() {
        let key = rule
            .keys
            .as_ref()
            .and_then(|k| k.first())
            .map_or(K[0], String::as_str);
        let actions = [
            Action::SshUserauth {
                host_key: known_hosts_pin(&everywhere),
                user: &rule.user,
                key,
                forwarding: rule.forwarding,
            },
            Action::SshIdentity { key },
        ];
        for action in actions {
            check_decision(&on(policy, action));
        }
        for namespace in &rule.sshsig_namespaces {
            check_decision(&on(policy, Action::SshSig { namespace, key }));
        }
    }
}

fn on(policy: &Policy, action: Action<'_>) -> Decision {
    policy.decide(&Request {
        workspace: "ws",
        caller: None,
        action,
    })
}

/// What holds for every decision.
fn check_decision(d: &Decision) {
    assert_eq!(d.grant.is_some(), d.verdict == Verdict::Allow, "{d:?}");
    assert!(!d.reason.contains('\n'), "{d:?}");
    if d.verdict == Verdict::Allow {
        assert!(d.rule.is_some(), "{d:?}");
    }
}

fn check_no_panic(text: &str) {
    match Policy::from_sources(&[Source::new("p.toml", text)]) {
        Ok(policy) => {
            decide_everything(&policy);
            for w in policy.warnings() {
                assert!(w.line >= 1 && w.col >= 1, "{w}");
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            for e in &errors.0 {
                assert!(e.line >= 1 && e.col >= 1, "{e}");
                assert!(e.line <= text.lines().count().max(1) + 1, "{e}");
            }
        }
    }
}

/// Valid fingerprints of three keys.
const K: [&str; 3] = [
    "SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4",
    "SHA256:FbcsLRhbq7b6/tzLrmSp7R4b9z8ZPvsGMcbuMYEoaKo",
    "SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA",
];
const HOSTS: [&str; 5] = [
    "github.com",
    "github.com:2222",
    "prod-db",
    "PROD-web:22",
    "gitlab.com",
];
const USERS: [&str; 5] = ["git", "root", "ROOT", "alice", "Git"];
const NAMESPACES: [&str; 3] = ["git", "file", "Git"];
const HOST_GLOBS: [&str; 3] = ["prod-*", "github.com", "*"];
const USER_GLOBS: [&str; 2] = ["root", "g*"];

/// A generated `[[ssh.allow]]` rule (indexes into the tables above).
#[derive(Clone, Debug)]
struct AllowSpec {
    host: usize,
    /// `None`: user = "*".
    user: Option<usize>,
    keys: Option<Vec<usize>>,
    namespaces: Vec<usize>,
    forwarding: bool,
}

/// A generated `[[ssh.deny]]` rule; at least one field is set.
#[derive(Clone, Debug)]
struct DenySpec {
    host: Option<usize>,
    user: Option<usize>,
    key: Option<usize>,
}

fn allow_spec() -> impl Strategy<Value = AllowSpec> {
    (
        0..HOSTS.len(),
        proptest::option::of(0..USERS.len()),
        proptest::option::of(proptest::collection::vec(0..K.len(), 1..3)),
        proptest::collection::vec(0..2usize, 0..3),
        any::<bool>(),
    )
        .prop_map(|(host, user, keys, namespaces, forwarding)| AllowSpec {
            host,
            user,
            keys,
            namespaces,
            forwarding,
        })
}

fn deny_spec() -> impl Strategy<Value = DenySpec> {
    (
        proptest::option::of(0..HOST_GLOBS.len()),
        proptest::option::of(0..USER_GLOBS.len()),
        proptest::option::of(0..K.len()),
    )
        .prop_filter("a deny rule needs a field", |(h, u, k)| {
            h.is_some() || u.is_some() || k.is_some()
        })
        .prop_map(|(host, user, key)| DenySpec { host, user, key })
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quoted(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", items.join(", "))
}

fn render(allows: &[AllowSpec], denies: &[DenySpec]) -> String {
    let mut text = String::new();
    for a in allows {
        text.push_str(&format!(
            "[[ssh.allow]]\nhost = {:?}\nuser = {:?}\nforwarding = {}\nsshsig_namespaces = {}\n",
            HOSTS[a.host],
            a.user.map_or("*", |u| USERS[u]),
            a.forwarding,
            quoted(a.namespaces.iter().map(|&n| NAMESPACES[n].to_owned())),
        ));
        if let Some(keys) = &a.keys {
            text.push_str(&format!(
                "keys = {}\n",
                quoted(keys.iter().map(|&k| K[k].to_owned()))
            ));
        }
        text.push('\n');
    }
    for d in denies {
        text.push_str("[[ssh.deny]]\n");
        if let Some(h) = d.host {
            text.push_str(&format!("host = {:?}\n", HOST_GLOBS[h]));
        }
        if let Some(u) = d.user {
            text.push_str(&format!("user = {:?}\n", USER_GLOBS[u]));
        }
        if let Some(k) = d.key {
            text.push_str(&format!("key = {:?}\n", K[k]));
        }
        text.push('\n');
    }
    text
}

/// The host glob `HOST_GLOBS[glob]` over an allow rule's host, as the engine
/// should see it: case-insensitive, with or without the port.
fn model_host_glob(glob: usize, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let name = host.split(':').next().unwrap_or("");
    match HOST_GLOBS[glob] {
        "prod-*" => host.starts_with("prod-"),
        "github.com" => name == "github.com",
        _ => true,
    }
}

fn model_user_glob(glob: usize, user: &str) -> bool {
    let user = user.to_ascii_lowercase();
    match USER_GLOBS[glob] {
        "root" => user == "root",
        _ => user.starts_with('g'),
    }
}

fn admits_key(a: &AllowSpec, key: &str) -> bool {
    a.keys
        .as_ref()
        .is_none_or(|ks| ks.iter().any(|&k| K[k] == key))
}

/// The index of the allow rule that should grant a login, if any.
fn model_userauth(
    allows: &[AllowSpec],
    denies: &[DenySpec],
    pinned: &[bool],
    user: &str,
    key: &str,
    forwarding: bool,
) -> Option<usize> {
    allows.iter().enumerate().position(|(i, a)| {
        pinned[i]
            && a.user.is_none_or(|u| USERS[u] == user)
            && admits_key(a, key)
            && (!forwarding || a.forwarding)
            && !denies.iter().any(|d| {
                d.host.is_none_or(|h| model_host_glob(h, HOSTS[a.host]))
                    && d.user.is_none_or(|u| model_user_glob(u, user))
                    && d.key.is_none_or(|k| K[k] == key)
            })
    })
}

fn model_sshsig(
    allows: &[AllowSpec],
    denies: &[DenySpec],
    namespace: &str,
    key: &str,
) -> Option<usize> {
    if denies.iter().any(|d| d.key.is_some_and(|k| K[k] == key)) {
        return None;
    }
    allows.iter().position(|a| {
        a.namespaces.iter().any(|&n| NAMESPACES[n] == namespace) && admits_key(a, key)
    })
}

fn model_identity(allows: &[AllowSpec], denies: &[DenySpec], key: &str) -> Option<usize> {
    let hidden = denies
        .iter()
        .any(|d| d.host.is_none() && d.user.is_none() && d.key.is_some_and(|k| K[k] == key));
    if hidden {
        return None;
    }
    allows.iter().position(|a| admits_key(a, key))
}

/// The position in `policy.ssh_rules()` of the granted rule, if allowed.
fn granted(policy: &Policy, d: &Decision) -> Option<usize> {
    check_decision(d);
    match &d.grant {
        Some(Grant::Ssh(rule)) => policy.ssh_rules().iter().position(|r| r == rule),
        _ => None,
    }
}

/// A user, key or namespace: mostly from the tables, sometimes anything.
fn word(table: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(table).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ssh_decisions_follow_the_model(
        allows in proptest::collection::vec(allow_spec(), 0..6),
        denies in proptest::collection::vec(deny_spec(), 0..4),
        pinned in proptest::collection::vec(any::<bool>(), 6),
        user in word(&USERS),
        key in word(&K),
        namespace in word(&NAMESPACES),
        forwarding in any::<bool>(),
    ) {
        let text = render(&allows, &denies);
        let policy = Policy::from_sources(&[Source::new("p.toml", text.as_str())])
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(policy.ssh_rules().len(), allows.len());
        // known_hosts pins a key for hosts, so rules of one host are pinned together.
        let pins: Vec<String> = allows.iter().zip(&pinned).filter(|(_, p)| **p).map(|(a, _)| HOSTS[a.host].to_owned()).collect();
        let pinned: Vec<bool> = allows.iter().map(|a| pins.iter().any(|h| h == HOSTS[a.host])).collect();
        let d = on(&policy, Action::SshUserauth { host_key: known_hosts_pin(&pins), user: &user, key: &key, forwarding });
        prop_assert_eq!(
            granted(&policy, &d),
            model_userauth(&allows, &denies, &pinned, &user, &key, forwarding),
            "{:?}\n{}", d, text
        );
        let d = on(&policy, Action::SshSig { namespace: &namespace, key: &key });
        prop_assert_eq!(granted(&policy, &d), model_sshsig(&allows, &denies, &namespace, &key), "{:?}\n{}", d, text);
        let d = on(&policy, Action::SshIdentity { key: &key });
        prop_assert_eq!(granted(&policy, &d), model_identity(&allows, &denies, &key), "{:?}\n{}", d, text);
    }

    #[test]
    fn ssh_text_never_panics(parts in proptest::collection::vec(prop_oneof![
        Just("[[ssh.allow]]\n"),
        Just("[[ssh.deny]]\n"),
        Just("[ssh.allow]\n"),
        Just("[ssh]\n"),
        Just("host = \"github.com:22\"\n"),
        Just("host = \"*\"\n"),
        Just("host = \"h:0\"\n"),
        Just("user = \"git\"\n"),
        Just("user = \"\"\n"),
        Just("keys = [\"SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4\"]\n"),
        Just("keys = []\n"),
        Just("key = \"SHA256:x\"\n"),
        Just("host_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"]\n"),
        Just("host_keys = [\"ssh-rsa AAAA\"]\n"),
        Just("sshsig_namespaces = [\"git\", \"\"]\n"),
        Just("forwarding = 1\n"),
        Just("approve = \"prompt\"\n"),
        Just("rate = \"1/s\"\n"),
        Just("allow = [{ host = \"a\", user = \"b\" }]\n"),
        Just("deny = 3\n"),
    ], 0..12)) {
        check_no_panic(&parts.concat());
    }

    #[test]
    fn ssh_value_strings_never_panic(
        value in any::<String>(),
        field in prop::sample::select(vec!["host", "user", "keys", "host_keys", "sshsig_namespaces"]),
        deny_field in prop::sample::select(vec!["host", "user", "key"]),
    ) {
        let v = toml_string(&value);
        let mut text = String::from("[[ssh.allow]]\n");
        for (name, default) in [("host", "\"h\""), ("user", "\"u\"")] {
            if name != field {
                text.push_str(&format!("{name} = {default}\n"));
            }
        }
        if matches!(field, "keys" | "host_keys" | "sshsig_namespaces") {
            text.push_str(&format!("{field} = [{v}]\n"));
        } else {
            text.push_str(&format!("{field} = {v}\n"));
        }
        text.push_str(&format!("\n[[ssh.deny]]\n{deny_field} = {v}\n"));
        check_no_panic(&text);
    }

    #[test]
    fn ssh_requests_with_any_strings_never_panic(
        user in any::<String>(),
        key in any::<String>(),
        namespace in any::<String>(),
        forwarding in any::<bool>(),
        pin in any::<bool>(),
    ) {
        let policy = Policy::from_sources(&[Source::new("example.toml", EXAMPLE)])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let everywhere: Vec<String> = policy.ssh_rules().iter().filter(|_| pin).map(|r| r.host.clone()).collect();
        for action in [
            Action::SshUserauth { host_key: known_hosts_pin(&everywhere), user: &user, key: &key, forwarding },
            Action::SshSig { namespace: &namespace, key: &key },
            Action::SshIdentity { key: &key },
        ] {
            let d = on(&policy, action);
            check_decision(&d);
            prop_assert!(d.reason.chars().count() < 400, "{}", d.reason);
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check_no_panic(&text);
    }

    #[test]
    fn toml_like_text_never_panics(text in "[\\[\\]{}=\"'.,#\n a-z0-9:/*_-]{0,200}") {
        check_no_panic(&text);
    }

    #[test]
    fn mutated_example_never_panics(edits in proptest::collection::vec(edit(), 1..6)) {
        check_no_panic(&apply(EXAMPLE, &edits));
    }

    #[test]
    fn rates_round_trip_through_display(
        count in 1u32..,
        multiplier in 1u64..10_000,
        unit in prop::sample::select(vec!["s", "sec", "second", "m", "min", "minute", "h", "hour", "d", "day"]),
        spell_multiplier in any::<bool>(),
    ) {
        let text = if spell_multiplier || multiplier != 1 {
            format!("{count}/{multiplier}{unit}")
        } else {
            format!("{count}/{unit}")
        };
        let rate: Rate = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(rate.count, count);
        prop_assert!(rate.per >= Duration::from_secs(multiplier));
        let shown = rate.to_string();
        prop_assert_eq!(shown.parse::<Rate>(), Ok(rate), "{} -> {}", text, shown);
    }

    #[test]
    fn rate_parse_never_panics(text in any::<String>()) {
        let _ = text.parse::<Rate>();
    }

    #[test]
    fn any_requested_name_is_decided_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let policy = Policy::from_sources(&[Source::new("example.toml", EXAMPLE)])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let name = String::from_utf8_lossy(&bytes);
        let decision = decide(&policy, &name);
        prop_assert_eq!(decision.grant.is_some(), decision.verdict == Verdict::Allow);
        prop_assert!(!decision.reason.contains('\n'));
        if decision.verdict == Verdict::Allow {
            prop_assert!(policy.token_names().contains(&&*name));
        }
    }

    #[test]
    fn deny_beats_allow_and_undeclared_is_denied(
        declared in proptest::collection::btree_set("[a-c][a-c0-9._-]{0,4}", 0..8),
        deny_prefixes in proptest::collection::vec("[a-c]{1,2}", 0..3),
        asked in "[a-c][a-c0-9._-]{0,4}",
    ) {
        let mut text = String::new();
        for (i, name) in declared.iter().enumerate() {
            text.push_str(&format!("[tokens.\"{name}\"]\nsource = \"env:T{i}\"\n\n"));
        }
        for prefix in &deny_prefixes {
            text.push_str(&format!("[[tokens.deny]]\nname = \"{prefix}*\"\n\n"));
        }
        let policy = Policy::from_sources(&[Source::new("p.toml", text.as_str())])
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let decision = decide(&policy, &asked);
        let denied = deny_prefixes.iter().any(|p| asked.starts_with(p.as_str()));
        let expected = if !denied && declared.contains(&asked) { Verdict::Allow } else { Verdict::Deny };
        prop_assert_eq!(&decision.verdict, &expected, "{}\n{}", asked, text);
        prop_assert_eq!(decision.rule.is_none(), !denied && !declared.contains(&asked));
    }
}
