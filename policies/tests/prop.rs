//! Property tests: parsing never panics, rates round-trip, and decisions keep
//! the two promises of the engine (deny beats allow, default deny).

use std::time::Duration;

use nexus_policy::{Action, Decision, Policy, Rate, Request, Source, Verdict};
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../examples/policy.toml");

fn decide(policy: &Policy, name: &str) -> Decision {
    policy.decide(&Request {
        workspace: "ws",
        caller: None,
        action: Action::Token { name },
    })
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

fn check_no_panic(text: &str) {
    match Policy::from_sources(&[Source::new("p.toml", text)]) {
        Ok(policy) => {
            for name in policy.token_names() {
                let _ = decide(&policy, name);
            }
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

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
