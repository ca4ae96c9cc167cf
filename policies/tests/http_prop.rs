//! Property tests of HTTP injection: whatever path the workspace sends,
//! a URL the laptop would dial has the upstream's scheme, host and port, a
//! path under the upstream's base path and no dot segment; and no request
//! makes the engine panic.

use nexus_policy::{Action, Grant, HttpRule, Policy, Request, Source, Verdict};
use proptest::prelude::*;

const POLICY: &str = r#"
[tokens.k]
source = "env:K"

[http.root]
upstream = "https://api.example.com"
header = "Authorization"
value = "Bearer {token}"
token = "k"

[http.based]
upstream = "https://h.example:8443/api/v2"

[http.local]
upstream = "http://127.0.0.1:11434/v1/"
methods = ["GET", "POST"]
paths = ["/models", "/chat/*", "/files/**"]
"#;

fn policy() -> Policy {
    Policy::from_sources(&[Source::new("p.toml", POLICY)]).unwrap_or_else(|e| panic!("{e}"))
}

fn rule(p: &Policy, name: &str) -> HttpRule {
    match p.http_apis().into_iter().find(|a| a.name == name).cloned() {
        Some(r) => r,
        None => panic!("no {name}"),
    }
}

/// Pieces that attack the join: dot segments, encodings, authority tricks.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E".to_owned()),
        Just("%2f".to_owned()),
        Just("%5c".to_owned()),
        Just("%25".to_owned()),
        Just("%252e".to_owned()),
        Just("%00".to_owned()),
        Just("%c0%ae".to_owned()),
        Just("%e2%80%ae".to_owned()),
        Just("%".to_owned()),
        Just("@".to_owned()),
        Just(":".to_owned()),
        Just("\\".to_owned()),
        Just("?".to_owned()),
        Just("#".to_owned()),
        Just(";".to_owned()),
        Just("evil.com".to_owned()),
        Just("127.0.0.1:22".to_owned()),
        Just("\t".to_owned()),
        Just("\n".to_owned()),
        Just(" ".to_owned()),
        Just("．".to_owned()),
        Just("／".to_owned()),
        Just("é".to_owned()),
        "[a-z0-9]{1,4}",
        "%[0-9a-fA-F]{2}",
        ".{1,3}",
    ]
}

fn rest() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(piece(), 0..12).prop_map(|p| p.concat()),
        proptest::collection::vec(piece(), 0..12).prop_map(|p| format!("/{}", p.concat())),
        any::<String>(),
    ]
}

/// What must hold of every URL `url_for` returns.
fn check_url(r: &HttpRule, url: &url::Url) -> Result<(), TestCaseError> {
    prop_assert_eq!(url.scheme(), r.upstream.scheme());
    prop_assert_eq!(url.host_str(), Some(r.upstream.host()));
    prop_assert_eq!(url.port_or_known_default(), Some(r.upstream.port()));
    prop_assert_eq!(url.username(), "");
    prop_assert_eq!(url.password(), None);
    prop_assert_eq!(url.fragment(), None);
    let path = url.path();
    let base = r.upstream.base_path();
    prop_assert!(
        path == base || path.starts_with(&format!("{base}/")),
        "{} not under {}",
        path,
        base
    );
    for seg in path.split('/') {
        let bare = seg.split(';').next().unwrap_or(seg).to_ascii_lowercase();
        let dotty = bare.replace("%2e", ".");
        prop_assert!(dotty != "." && dotty != "..", "dot segment in {}", path);
    }
    prop_assert!(!path.contains("//"), "empty segment in {}", path);
    prop_assert!(url.as_str().starts_with(r.upstream.as_str()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn urls_never_leave_the_upstream(rest in rest()) {
        let p = policy();
        for name in ["root", "based", "local"] {
            let r = rule(&p, name);
            if let Ok(url) = r.url_for(&rest) {
                check_url(&r, &url)?;
            }
        }
    }

    #[test]
    fn decisions_never_panic_and_agree_with_url_for(
        name in prop_oneof![Just("root".to_owned()), Just("local".to_owned()), Just("based".to_owned()), ".{0,8}"],
        method in prop_oneof![Just("GET".to_owned()), Just("POST".to_owned()), Just("TRACE".to_owned()), ".{0,8}"],
        rest in rest(),
    ) {
        let p = policy();
        let path = rest.split_once('?').map_or(rest.as_str(), |(p, _)| p);
        let d = p.decide(&Request {
            workspace: "w",
            caller: None,
            action: Action::Http { name: &name, method: &method, path },
        });
        prop_assert_eq!(d.grant.is_some(), d.verdict == Verdict::Allow);
        prop_assert!(!d.reason.contains('\n'));
        if let Some(Grant::Http(r)) = &d.grant {
            prop_assert!(method != "TRACE" && method != "CONNECT");
            // An allowed path always makes a URL on the upstream.
            let url = r.url_for(path);
            prop_assert!(url.is_ok(), "{:?}: {:?}", path, url);
            if let Ok(url) = url {
                check_url(r, &url)?;
            }
        }
    }

    #[test]
    fn http_policy_text_never_panics(
        parts in proptest::collection::vec(prop_oneof![
            Just("[http.a]\n".to_owned()),
            Just("[[http.deny]]\nname = \"a*\"\n".to_owned()),
            Just("[tokens.t]\nsource = \"env:T\"\n".to_owned()),
            Just("token = \"t\"\n".to_owned()),
            Just("source = \"env:T\"\n".to_owned()),
            Just("header = \"Authorization\"\n".to_owned()),
            Just("value = \"Bearer {token}\"\n".to_owned()),
            Just("methods = [\"GET\"]\n".to_owned()),
            Just("paths = [\"/v1/*\"]\n".to_owned()),
            Just("[workspace.ci.http.a]\n".to_owned()),
            "upstream = \"[a-z:/.\\[\\]0-9@%]{0,30}\"\n",
            "paths = \\[\"[/a-z*.\\[\\]{}]{0,10}\"\\]\n",
            "value = \"[ -~]{0,12}\"\n",
        ], 0..10),
    ) {
        let text = parts.concat();
        if let Ok(p) = Policy::from_sources(&[Source::new("p.toml", &text)]) {
            for a in p.http_apis() {
                let _ = a.url_for("/v1/x?y");
                let _ = p.decide(&Request {
                    workspace: "ci",
                    caller: None,
                    action: Action::Http { name: &a.name, method: "GET", path: "/v1/x" },
                });
            }
            let _ = p.decide(&Request { workspace: "w", caller: None, action: Action::Token { name: "t" } });
        }
    }
}
