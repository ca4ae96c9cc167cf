//! Property tests of the layered engine and of the `policy explain`/`policy
//! test` parsers: a baseline never loosens, a workspace section never
//! loosens, and the parsers never panic.

use nexus_policy::explain::{parse_arg, parse_fixture};
use nexus_policy::{Action, Policy, PolicySet, Request, Source, Verdict};
use proptest::prelude::*;

fn policy(name: &str, text: &str) -> Result<Policy, TestCaseError> {
    Policy::from_sources(&[Source::new(name, text)])
        .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))
}

fn tokens_text(prefix: &str, declared: &[String], denies: &[String]) -> String {
    let mut text = String::new();
    for (i, name) in declared.iter().enumerate() {
        text.push_str(&format!(
            "[{prefix}tokens.\"{name}\"]\nsource = \"env:T{i}\"\n\n"
        ));
    }
    for p in denies {
        text.push_str(&format!("[[{prefix}tokens.deny]]\nname = \"{p}*\"\n\n"));
    }
    text
}

fn token(set: &PolicySet, ws: &str, name: &str) -> Verdict {
    set.decide(&Request {
        workspace: ws,
        caller: None,
        action: Action::Token { name },
    })
    .decision
    .verdict
}

proptest! {
    #[test]
    fn layers_only_narrow(
        user in proptest::collection::vec("[a-c][a-c0-9]{0,2}", 0..6),
        user_denies in proptest::collection::vec("[a-c]{1,2}", 0..2),
        base in proptest::collection::vec("[a-c][a-c0-9]{0,2}", 0..4),
        base_denies in proptest::collection::vec("[a-c]{1,2}", 0..2),
        section in proptest::collection::vec("[a-c][a-c0-9]{0,2}", 0..3),
        asked in "[a-c][a-c0-9]{0,2}",
    ) {
        let mut user: Vec<String> = user;
        user.sort();
        user.dedup();
        let mut base: Vec<String> = base;
        base.sort();
        base.dedup();
        let mut section: Vec<String> = section;
        section.sort();
        section.dedup();
        let mut user_text = tokens_text("", &user, &user_denies);
        user_text.push_str(&tokens_text("workspace.ci.", &section, &[]));
        let user_policy = policy("user.toml", &user_text)?;
        let base_policy = policy("base.toml", &tokens_text("", &base, &base_denies))?;
        let alone = PolicySet::new(None, user_policy.clone());
        let layered = PolicySet::new(Some(base_policy), user_policy);
        for ws in ["dev", "ci"] {
            let with_base = token(&layered, ws, &asked);
            let without = token(&alone, ws, &asked);
            if with_base == Verdict::Allow {
                prop_assert_eq!(&without, &Verdict::Allow, "a baseline loosened {}", asked);
                prop_assert!(!base_denies.iter().any(|p| asked.starts_with(p.as_str())));
                prop_assert!(base.is_empty() || base.contains(&asked));
            }
        }
        // The ci section narrows ci, never dev, never beyond the global rules.
        let ci = token(&alone, "ci", &asked);
        let dev = token(&alone, "dev", &asked);
        if ci == Verdict::Allow {
            prop_assert_eq!(&dev, &Verdict::Allow);
            prop_assert!(section.is_empty() || section.contains(&asked));
        }
    }

    #[test]
    fn fixture_parser_never_panics(text in "[\\[\\]{}=\"'.,#\n a-z0-9_:/*-]{0,200}") {
        let _ = parse_fixture("f.toml", &text);
        let with_case = format!("[[case]]\n{text}");
        let _ = parse_fixture("f.toml", &with_case);
    }

    #[test]
    fn arg_parser_splits_at_the_first_equals(key in "[a-z_]{1,8}", value in any::<String>()) {
        let parsed = parse_arg(&format!("{key}={value}"));
        if value.len() <= 4096 {
            prop_assert_eq!(parsed, Ok((key, value.clone())));
        } else {
            prop_assert!(parsed.is_err());
        }
        let _ = parse_arg(&value);
    }
}
