//! Property tests of the git-credential, files and tools sections: whatever
//! the workspace sends, a flag never passes a non-flag pattern, an allowed
//! file path never climbs out with `..`, and an allowed git path never
//! carries `.`/`..` segments.

use nexus_policy::{Action, GitAction, Policy, Request, Source, Verdict, match_args};
use proptest::prelude::*;

const POLICY: &str = r#"
[[git-credential.allow]]
host = "github.com"
path = "acme/*"

[[files.allow]]
path = "~/.opencode/"

[tools.t]
command = ["echo"]
args = ["--title", "*", "v?", "**"]
"#;

fn policy() -> Policy {
    Policy::from_sources(&[Source::new("p.toml", POLICY)]).unwrap_or_else(|e| panic!("{e}"))
}

fn arg() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z]{0,6}", "-{1,2}[a-z=/]{0,8}", "v[0-9-]", ".{0,8}"]
}

proptest! {
    #[test]
    fn flags_only_match_flag_patterns(
        patterns in proptest::collection::vec(prop_oneof![Just("*".to_owned()), Just("?*".to_owned()), "[a-z*?]{0,4}"], 0..5),
        args in proptest::collection::vec(arg(), 0..6),
    ) {
        if match_args(&patterns, &args).is_ok() {
            // A final "**" takes any further (non-flag) arguments.
            if patterns.last().is_some_and(|p| p == "**") {
                prop_assert!(args.len() + 1 >= patterns.len());
            } else {
                prop_assert_eq!(patterns.len(), args.len());
            }
            prop_assert!(args.iter().all(|a| !a.starts_with('-')));
        }
    }

    #[test]
    fn tool_decisions_never_admit_flags_for_stars(args in proptest::collection::vec(arg(), 0..6)) {
        let p = policy();
        let d = p.decide(&Request { workspace: "w", caller: None, action: Action::Tool { name: "t", args: &args } });
        if d.verdict == Verdict::Allow {
            prop_assert_eq!(args[0].as_str(), "--title");
            prop_assert!(args[1..].iter().all(|a| !a.starts_with('-')));
        }
    }

    #[test]
    fn allowed_files_stay_inside(tail in "[a-z./%~]{0,24}") {
        let path = format!("~/.opencode/{tail}");
        let p = policy();
        let d = p.decide(&Request { workspace: "w", caller: None, action: Action::File { path: &path } });
        if d.verdict == Verdict::Allow {
            prop_assert!(path.split('/').all(|s| s != ".." && s != "."), "{}", path);
            prop_assert!(!path.contains("//"));
        }
    }

    #[test]
    fn allowed_git_paths_are_canonical(tail in "[a-z./%A-F0-9]{0,16}") {
        let path = format!("acme/{tail}");
        let p = policy();
        let d = p.decide(&Request {
            workspace: "w",
            caller: None,
            action: Action::GitCredential { protocol: "https", host: "github.com", path: Some(&path), username: None, action: GitAction::Get },
        });
        if d.verdict == Verdict::Allow {
            prop_assert!(!tail.contains('/') && tail != "." && tail != "..", "{}", path);
            prop_assert!(!path.to_ascii_lowercase().contains("%2e"), "{}", path);
        }
    }
}
