//! The example fixtures shipped beside the example policy pass, and a
//! fixture that expects the wrong thing fails with a clear difference.

use std::path::Path;

use nexus_policy::explain::{FixturePaths, run_fixtures};

#[test]
fn example_fixtures_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tests");
    let reports = run_fixtures(&dir, &FixturePaths::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reports.len(), 2);
    for r in &reports {
        assert!(r.passed(), "{r:#?}");
        assert!(!r.cases.is_empty());
    }
}

#[test]
fn a_wrong_expectation_fails_and_says_how() {
    let tmp = std::env::temp_dir().join(format!("nexus-fixture-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("{e}"));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy.toml");
    let fixture = tmp.join("wrong.toml");
    std::fs::write(
        &fixture,
        format!(
            "policy = {:?}\n\n[[case]]\ntool = \"token\"\nargs = {{ name = \"prod-db\" }}\nexpect = \"allow\"\n",
            example.display().to_string()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let reports =
        run_fixtures(&fixture, &FixturePaths::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!reports[0].passed());
    let diffs = &reports[0].cases[0].1;
    assert_eq!(diffs[0], "expected allow, got deny");
    assert!(diffs[1].contains("prod-*"), "{diffs:?}");
    let _ = std::fs::remove_dir_all(&tmp);
}
