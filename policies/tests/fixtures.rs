//! Every policy under `tests/fixtures/valid` loads and every one under
//! `tests/fixtures/invalid` fails, each with the messages its sibling
//! `.expected` file lists (one `line:col: message` substring per line). A valid
//! fixture may also have a `.expected` file: then it lists expected warnings.

use std::fs;
use std::path::{Path, PathBuf};

use nexus_policy::{Policy, PolicyErrors};

/// The `*.toml` files in a fixture directory, sorted.
fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        // Not `ends_with(".toml")`: on a Path that compares whole components.
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures found in {}", dir.display());
    files
}

/// The non-empty lines of the `.expected` file beside `toml`, if there is one.
fn expected(toml: &Path) -> Option<Vec<String>> {
    let text = fs::read_to_string(toml.with_extension("expected")).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// Asserts that every expected line is a substring of one of the lines in `got`.
fn assert_all_found(fixture: &Path, wanted: &[String], got: &[String]) {
    for want in wanted {
        assert!(
            got.iter().any(|line| line.contains(want.as_str())),
            "{}: expected a diagnostic containing\n  {want}\ngot:\n  {}",
            fixture.display(),
            got.join("\n  ")
        );
    }
}

#[test]
fn valid_fixtures_load() {
    for path in fixtures("valid") {
        let policy = Policy::load(&path)
            .unwrap_or_else(|errors| panic!("{} should load:\n{errors}", path.display()));
        let warnings: Vec<String> = policy.warnings().iter().map(ToString::to_string).collect();
        match expected(&path) {
            Some(wanted) => assert_all_found(&path, &wanted, &warnings),
            None => assert!(
                warnings.is_empty(),
                "{}: unexpected warnings:\n{}",
                path.display(),
                warnings.join("\n")
            ),
        }
    }
}

#[test]
fn invalid_fixtures_fail_with_the_expected_messages() {
    for path in fixtures("invalid") {
        let wanted =
            expected(&path).unwrap_or_else(|| panic!("{} has no .expected file", path.display()));
        assert!(
            !wanted.is_empty(),
            "{}: empty .expected file",
            path.display()
        );
        let PolicyErrors(errors) = match Policy::load(&path) {
            Ok(_) => panic!("{} should fail to load", path.display()),
            Err(errors) => errors,
        };
        let name = path.display().to_string();
        for error in &errors {
            assert_eq!(error.file, name, "diagnostics name the file they are about");
        }
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_all_found(&path, &wanted, &got);
    }
}

#[test]
fn the_example_policy_loads_cleanly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy.toml");
    let policy = Policy::load(&path).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(policy.token_names(), ["demo", "gh", "openai"]);
    let ssh: Vec<_> = policy
        .ssh_rules()
        .iter()
        .map(|r| {
            (
                r.host.as_str(),
                r.user.as_str(),
                r.sshsig_namespaces.clone(),
            )
        })
        .collect();
    assert_eq!(ssh, [("github.com", "git", vec!["git".to_owned()])]);
    // The ssh section adds no warning to `policy check`.
    let warnings: Vec<String> = policy.warnings().iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().all(|w| !w.contains("ssh")),
        "{}",
        warnings.join("\n")
    );
}

#[test]
fn the_commented_ssh_examples_are_valid_once_uncommented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy.toml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let start = text
        .find("# --- SSH agent forwarding")
        .unwrap_or_else(|| panic!("no ssh part in the example"));
    let end = text
        .find("# --- HTTP secret injection")
        .unwrap_or_else(|| panic!("no http part in the example"));
    // Uncomment the lines that are TOML (`# [[...]]`, `# key = ...`), not the prose.
    let is_toml = |rest: &str| {
        let header = rest.starts_with("[[") && rest.ends_with("]]");
        let key = rest.split_once(" = ").is_some_and(|(k, _)| {
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        });
        header || key
    };
    let uncommented: String = text[start..end]
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_toml(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let policy = Policy::from_sources(&[nexus_policy::Source::new(
        "ssh-example.toml",
        uncommented.as_str(),
    )])
    .unwrap_or_else(|errors| panic!("{errors}\n{uncommented}"));
    let hosts: Vec<_> = policy.ssh_rules().iter().map(|r| r.host.as_str()).collect();
    assert_eq!(hosts, ["github.com", "git.example.com:2222"]);
    assert!(policy.warnings().is_empty(), "{:?}", policy.warnings());
}

#[test]
fn a_directory_loads_all_its_toml_files() {
    let policy = Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid"))
        .unwrap_or_else(|errors| panic!("{errors}"));
    assert!(policy.token_names().contains(&"cmd_table"));
    assert!(policy.token_names().contains(&"inline"));
}

#[test]
fn a_directory_reports_the_errors_of_every_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let PolicyErrors(errors) = match Policy::load(&dir) {
        Ok(_) => panic!("the invalid fixtures should not load together"),
        Err(errors) => errors,
    };
    for path in fixtures("invalid") {
        let name = path.display().to_string();
        assert!(errors.iter().any(|d| d.file == name), "no error for {name}");
    }
}

#[test]
fn a_missing_path_is_an_error_about_the_whole_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/no-such.toml");
    let PolicyErrors(errors) = match Policy::load(&path) {
        Ok(_) => panic!("a missing file should not load"),
        Err(errors) => errors,
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 0);
    assert!(
        errors[0].to_string().contains("cannot read policy"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_directory_reads_only_its_own_visible_toml_files_in_name_order() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dir");
    let policy = Policy::load(&dir).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(policy.token_names(), ["openai", "prod-db"]);
    let decision = policy.decide(&nexus_policy::Request {
        workspace: "ws",
        caller: None,
        action: nexus_policy::Action::Token { name: "prod-db" },
    });
    assert_eq!(decision.verdict, nexus_policy::Verdict::Deny);
    let rule = decision.rule.unwrap_or_else(|| panic!("no deciding rule"));
    assert_eq!(
        rule.file,
        dir.join("10-baseline.toml").display().to_string()
    );
    assert_eq!(rule.line, 2);
}
