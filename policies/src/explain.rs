//! `policy explain` and `policy test`: requests written as `tool` plus
//! `key=value` arguments ([`Probe`]), decided without a workspace, and
//! fixture files of such requests with the decisions expected of them.
//!
//! ```toml
//! # policies/examples/tests/basics.toml
//! policy = "../policy.toml"         # optional, relative to this file
//! # baseline = "../baseline.d"      # optional
//!
//! [[case]]
//! name = "the OpenAI key is handed out"   # optional
//! workspace = "dev"                 # optional, default "dev"
//! tool = "token"
//! args = { name = "openai" }
//! expect = "allow"                  # allow | deny | prompt (allowed after approval)
//! rule = "policy.toml:42"           # optional: the deciding rule, or "default"
//! ```
//!
//! `tool` takes a tool name (`token`, `file`, ...) or a section name
//! (`tokens`, `files`, ...); each section turns the arguments into its
//! request (`PolicySection::probe` in its file), and `docs/policy.md` lists
//! them. In a fixture, a repeated argument is a list (`args = { name =
//! "open-pr", args = ["--title", "x"] }`); on the command line it is one
//! `--arg args=VALUE` each, in order.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use nexus_protocol::{Section, UnknownSection};
use serde::Deserialize;

use crate::layers::{Outcome, PolicySet};
use crate::schema::decision::{RuleRef, Verdict};
use crate::schema::diag::{Diagnostic, line_col};
use crate::schema::probe::{ProbeArgs, clip};
use crate::schema::request::Request;
use crate::sections::Sections;

/// Longest argument value, so that a fixture cannot balloon a report.
const MAX_ARG: usize = 4096;

/// A request to decide, as `policy explain` and fixtures write it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// The workspace's pairing name.
    pub workspace: String,
    /// The tool or section name (`token` or `tokens`, `file` or `files`, ...;
    /// see [`Section`]).
    pub tool: String,
    /// `key=value` arguments, in the order given. Only `args` (a tool's
    /// arguments, one per entry) may repeat; see the module docs per tool.
    pub args: Vec<(String, String)>,
}

/// Splits `KEY=VALUE` (the value may hold `=`).
///
/// # Errors
/// A message when there is no `=`, the key is empty or the value too long.
pub fn parse_arg(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!(
            "argument {:?} has no '='; write KEY=VALUE, e.g. name=openai",
            clip(text)
        ));
    };
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "argument key {:?} is not a word; write KEY=VALUE, e.g. name=openai",
            clip(key)
        ));
    }
    if value.len() > MAX_ARG {
        return Err(format!("argument {key} is longer than {MAX_ARG} bytes"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

impl Probe {
    /// Decides this probe with `set`.
    ///
    /// # Errors
    /// A message naming what is missing or unknown in the probe.
    pub fn decide(&self, set: &PolicySet) -> Result<Outcome, String> {
        let section: Section = self
            .tool
            .parse()
            .map_err(|e: UnknownSection| format!("{:?}: {e}", clip(&self.tool)))?;
        let args = ProbeArgs {
            tool: &self.tool,
            args: &self.args,
        };
        let policies = set.policies();
        let all: Vec<&Sections> = policies.iter().map(|p| &p.sections).collect();
        Sections::probe(section, &args, &all, |action| {
            set.decide(&Request {
                workspace: &self.workspace,
                caller: None,
                action,
            })
        })
    }
}

/// What a fixture expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Allowed without asking.
    Allow,
    /// Denied.
    Deny,
    /// Allowed once the laptop user approves.
    Prompt,
}

impl Expect {
    /// What an outcome amounts to.
    #[must_use]
    pub fn of(outcome: &Outcome) -> Expect {
        match (&outcome.verdict, &outcome.approve) {
            (Verdict::Deny, _) => Expect::Deny,
            (Verdict::Allow, Some(_)) => Expect::Prompt,
            (Verdict::Allow, None) => Expect::Allow,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
            Expect::Prompt => "prompt",
        })
    }
}

/// One fixture file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// The policy to test, relative to the fixture file.
    pub policy: Option<String>,
    /// The baseline to test with, relative to the fixture file.
    pub baseline: Option<String>,
    /// The cases, in order.
    #[serde(default, rename = "case")]
    pub cases: Vec<Case>,
}

/// One request and what it must come to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// A name for reports.
    pub name: Option<String>,
    /// The workspace (pairing name); default `dev`.
    #[serde(default = "default_workspace")]
    pub workspace: String,
    /// The tool.
    pub tool: String,
    /// Arguments; strings, or booleans and integers written as such, or a
    /// list of strings (each one argument: `args = ["--title", "x"]`).
    #[serde(default)]
    pub args: BTreeMap<String, ArgValue>,
    /// The expected decision.
    pub expect: Expect,
    /// The expected deciding rule: `FILE:LINE` (matched at the end of the
    /// path) or `default` for the default deny.
    pub rule: Option<String>,
}

/// An argument value in a fixture.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ArgValue {
    /// A string.
    Text(String),
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Int(i64),
    /// A list of strings: one argument each, e.g. a tool's `args`.
    List(Vec<String>),
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Text(s) => f.write_str(s),
            ArgValue::Bool(b) => write!(f, "{b}"),
            ArgValue::Int(n) => write!(f, "{n}"),
            ArgValue::List(items) => write!(f, "{items:?}"),
        }
    }
}

fn default_workspace() -> String {
    "dev".to_owned()
}

/// Parses a fixture file; errors carry `file:line:col`.
///
/// # Errors
/// The TOML or shape error, positioned.
pub fn parse_fixture(file: &str, text: &str) -> Result<Fixture, Diagnostic> {
    toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map_or((0, 0), |span| line_col(text, span.start));
        Diagnostic {
            file: file.to_owned(),
            line,
            col,
            message: e.message().to_owned(),
        }
    })
}

impl Case {
    /// The request this case makes.
    #[must_use]
    pub fn probe(&self) -> Probe {
        Probe {
            workspace: self.workspace.clone(),
            tool: self.tool.clone(),
            args: self
                .args
                .iter()
                .flat_map(|(k, v)| match v {
                    ArgValue::List(items) => items.iter().map(|i| (k.clone(), i.clone())).collect(),
                    other => vec![(k.clone(), other.to_string())],
                })
                .collect(),
        }
    }

    /// A label for reports: the name, else the tool and arguments.
    #[must_use]
    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(n) => format!("case {} {n:?}", index + 1),
            None => format!("case {} ({})", index + 1, self.probe()),
        }
    }

    /// Checks the case against `set`.
    ///
    /// # Errors
    /// What differs, as one line per difference.
    pub fn check(&self, set: &PolicySet) -> Result<Outcome, Vec<String>> {
        let outcome = self.probe().decide(set).map_err(|e| vec![e])?;
        let mut diffs = Vec::new();
        let got = Expect::of(&outcome);
        if got != self.expect {
            diffs.push(format!("expected {}, got {got}", self.expect));
        }
        if let Some(want) = &self.rule
            && !rule_matches(want, outcome.rule.as_ref())
        {
            let shown = outcome
                .rule
                .as_ref()
                .map_or_else(|| "default".to_owned(), ToString::to_string);
            diffs.push(format!("expected rule {want}, got {shown}"));
        }
        if diffs.is_empty() {
            Ok(outcome)
        } else {
            diffs.push(format!("reason: {}", outcome.reason));
            Err(diffs)
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "workspace={} tool={}", self.workspace, self.tool)?;
        for (k, v) in &self.args {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// Whether `want` (`FILE:LINE`, a path suffix, or `default`) names `got`.
#[must_use]
pub fn rule_matches(want: &str, got: Option<&RuleRef>) -> bool {
    match got {
        None => want == "default",
        Some(rule) => {
            let full = rule.to_string();
            full == want || full.ends_with(&format!("/{want}"))
        }
    }
}

/// Which policy and baseline a fixture run uses: `flag` paths beat a
/// fixture file's own `policy`/`baseline` keys, which beat the defaults.
#[derive(Clone, Debug, Default)]
pub struct FixturePaths {
    /// `--policy`.
    pub policy_flag: Option<PathBuf>,
    /// The configured default policy, if any.
    pub policy_default: Option<PathBuf>,
    /// `--baseline`.
    pub baseline_flag: Option<PathBuf>,
    /// The default baseline directory, if it exists.
    pub baseline_default: Option<PathBuf>,
}

/// The result of one fixture file.
#[derive(Clone, Debug)]
pub struct FileReport {
    /// The fixture file.
    pub file: PathBuf,
    /// Why the file or its policy could not be used at all.
    pub error: Option<String>,
    /// Each case: its label and what differed (empty: passed).
    pub cases: Vec<(String, Vec<String>)>,
}

impl FileReport {
    /// Whether everything in the file passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.cases.iter().all(|(_, d)| d.is_empty())
    }
}

/// Runs `path` (a fixture file, or every `*.toml` directly in a directory,
/// in name order).
///
/// # Errors
/// When `path` cannot be read or holds no fixture file.
pub fn run_fixtures(path: &Path, paths: &FixturePaths) -> Result<Vec<FileReport>, String> {
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        return Err(format!("{}: no *.toml fixture files", path.display()));
    }
    Ok(files.iter().map(|f| run_file(f, paths)).collect())
}

fn run_file(file: &Path, paths: &FixturePaths) -> FileReport {
    let mut report = FileReport {
        file: file.to_path_buf(),
        error: None,
        cases: Vec::new(),
    };
    let name = file.display().to_string();
    let fixture = match std::fs::read_to_string(file)
        .map_err(|e| format!("{name}: {e}"))
        .and_then(|t| parse_fixture(&name, &t).map_err(|d| d.to_string()))
    {
        Ok(f) => f,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    let here = file.parent().unwrap_or(Path::new("."));
    let pick = |flag: &Option<PathBuf>, key: &Option<String>, default: &Option<PathBuf>| {
        flag.clone()
            .or_else(|| key.as_ref().map(|k| here.join(k)))
            .or_else(|| default.clone())
    };
    let policy = pick(&paths.policy_flag, &fixture.policy, &paths.policy_default);
    let baseline = pick(
        &paths.baseline_flag,
        &fixture.baseline,
        &paths.baseline_default,
    );
    let Some(policy) = policy else {
        report.error = Some(format!(
            "{name}: no policy to test: set policy = \"PATH\" in the file or pass --policy"
        ));
        return report;
    };
    let set = match PolicySet::load(Some(&policy), baseline.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(format!("the {} does not load:\n{e}", e.layer));
            return report;
        }
    };
    if fixture.cases.is_empty() {
        report.error = Some(format!("{name}: no [[case]] in this file"));
    }
    for (i, case) in fixture.cases.iter().enumerate() {
        let diffs = case.check(&set).err().unwrap_or_default();
        report.cases.push((case.label(i), diffs));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Policy, Source};

    fn set(user: &str, baseline: Option<&str>) -> PolicySet {
        let load = |name: &str, text: &str| {
            Policy::from_sources(&[Source::new(name, text)]).unwrap_or_else(|e| panic!("{e}"))
        };
        PolicySet::new(
            baseline.map(|b| load("/etc/base.toml", b)),
            load("/u/user.toml", user),
        )
    }

    fn probe(ws: &str, tool: &str, args: &[(&str, &str)]) -> Probe {
        Probe {
            workspace: ws.into(),
            tool: tool.into(),
            args: args
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }

    #[test]
    fn args_parse() {
        assert_eq!(parse_arg("name=a=b"), Ok(("name".into(), "a=b".into())));
        assert!(parse_arg("name").is_err());
        assert!(parse_arg("=x").is_err());
        assert!(parse_arg("a b=x").is_err());
    }

    #[test]
    fn probes_name_what_is_wrong() {
        let s = set("[tokens.a]\nsource = \"env:A\"\n", None);
        let err = |p: Probe| p.decide(&s).err().unwrap_or_default();
        assert!(err(probe("dev", "nope", &[])).contains("unknown tool"));
        assert!(err(probe("dev", "token", &[])).contains("needs --arg name"));
        assert!(err(probe("dev", "token", &[("nam", "a")])).contains("no argument \"nam\""));
        assert!(err(probe("dev", "ssh", &[("op", "x")])).contains("unknown ssh op"));
        assert!(
            err(probe("dev", "ssh", &[("host", "h"), ("forwarding", "yes")]))
                .contains("true or false")
        );
    }

    #[test]
    fn git_credential_file_and_tool_probes() {
        let s = set(
            "[[git-credential.allow]]\nhost = \"github.com\"\npath = \"acme/*\"\n\n\
             [[files.allow]]\npath = \"~/.config/x/\"\n\n\
             [tools.t]\ncommand = [\"true\"]\nargs = [\"-v\", \"*\"]\n",
            None,
        );
        let verdict = |tool: &str, args: &[(&str, &str)]| {
            probe("dev", tool, args)
                .decide(&s)
                .map(|o| Expect::of(&o))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let git = [("protocol", "https"), ("host", "github.com")];
        let with = |extra: &[(&'static str, &'static str)]| [&git[..], extra].concat();
        assert_eq!(
            verdict("git-credential", &with(&[("path", "acme/a")])),
            Expect::Allow
        );
        assert_eq!(
            verdict(
                "git-credential",
                &with(&[("path", "acme/a"), ("username", "u")])
            ),
            Expect::Allow
        );
        assert_eq!(
            verdict("git-credential", &with(&[("path", "other/a")])),
            Expect::Deny
        );
        assert_eq!(
            verdict(
                "git-credential",
                &with(&[("path", "acme/a"), ("action", "erase")])
            ),
            Expect::Deny
        );
        for tool in ["file", "files"] {
            assert_eq!(verdict(tool, &[("path", "~/.config/x/a")]), Expect::Allow);
            assert_eq!(verdict(tool, &[("path", "~/.ssh/id")]), Expect::Deny);
        }
        for tool in ["tool", "tools"] {
            assert_eq!(
                verdict(tool, &[("name", "t"), ("args", "-v"), ("args", "x")]),
                Expect::Allow
            );
            // Order matters, as on the command line.
            assert_eq!(
                verdict(tool, &[("name", "t"), ("args", "x"), ("args", "-v")]),
                Expect::Deny
            );
            assert_eq!(verdict(tool, &[("name", "t")]), Expect::Deny);
        }
        let err = |tool: &str, args: &[(&str, &str)]| {
            probe("dev", tool, args)
                .decide(&s)
                .err()
                .unwrap_or_default()
        };
        assert!(err("git-credential", &git[..1]).contains("needs --arg host"));
        assert!(
            err("git-credential", &with(&[("action", "fill")])).contains("get, store or erase")
        );
        assert!(err("file", &[]).contains("path=PATH"));
        assert!(err("file", &[("path", "~/a"), ("set", "s")]).contains("path=PATH"));
        assert!(err("file", &[("path", "rel")]).contains("path=\"rel\""));
        assert!(err("tool", &[("name", "t"), ("name", "u")]).contains("once"));
        assert!(err("tool", &[("args", "x")]).contains("needs --arg name"));
    }

    #[test]
    fn http_probes() {
        let s = set(
            "[http.api]\nupstream = \"https://h\"\nmethods = [\"POST\"]\npaths = [\"/v1/*\"]\n",
            None,
        );
        let verdict = |args: &[(&str, &str)]| {
            probe("dev", "http", args)
                .decide(&s)
                .map(|o| Expect::of(&o))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let post = [("name", "api"), ("method", "POST"), ("path", "/v1/chat")];
        assert_eq!(verdict(&post), Expect::Allow);
        assert_eq!(
            verdict(&[
                ("name", "api"),
                ("method", "POST"),
                ("path", "/v1/chat?x=1")
            ]),
            Expect::Allow
        );
        // GET by default, and "/" by default.
        assert_eq!(
            verdict(&[("name", "api"), ("path", "/v1/chat")]),
            Expect::Deny
        );
        assert_eq!(
            verdict(&[("name", "api"), ("method", "POST")]),
            Expect::Deny
        );
        assert_eq!(
            verdict(&[("name", "api"), ("method", "POST"), ("path", "/v1/../x")]),
            Expect::Deny
        );
        let err = |args: &[(&str, &str)]| {
            probe("dev", "http", args)
                .decide(&s)
                .err()
                .unwrap_or_default()
        };
        assert!(err(&[]).contains("needs --arg name"));
        assert!(err(&[("name", "api"), ("host", "evil")]).contains("no argument \"host\""));
        assert!(err(&[("name", "api"), ("path", "/v1/x?a b")]).contains("query"));
    }

    #[test]
    fn fixtures_check_verdict_and_rule() {
        let s = set(
            "[tokens.a]\nsource = \"env:A\"\n\n[tokens.b]\nsource = \"env:B\"\napprove = \"prompt\"\n",
            None,
        );
        let fixture = parse_fixture(
            "f.toml",
            r#"
[[case]]
tool = "token"
args = { name = "a" }
expect = "allow"
rule = "user.toml:1"

[[case]]
tool = "token"
args = { name = "b" }
expect = "prompt"

[[case]]
tool = "token"
args = { name = "zz" }
expect = "deny"
rule = "default"

[[case]]
name = "wrong on purpose"
tool = "token"
args = { name = "a" }
expect = "deny"
rule = "user.toml:9"
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let results: Vec<_> = fixture.cases.iter().map(|c| c.check(&s)).collect();
        assert!(results[..3].iter().all(Result::is_ok), "{results:?}");
        let Err(diffs) = &results[3] else {
            panic!("a wrong expectation passed")
        };
        assert_eq!(diffs[0], "expected deny, got allow");
        assert_eq!(diffs[1], "expected rule user.toml:9, got /u/user.toml:1");
    }

    #[test]
    fn fixture_errors_are_positioned() {
        let e = parse_fixture("f.toml", "[[case]]\ntool = \"token\"\nexpect = \"maybe\"\n")
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!((e.line, e.file.as_str()), (3, "f.toml"), "{e}");
        let e = parse_fixture(
            "f.toml",
            "[[case]]\ntool = \"token\"\nexpect = \"allow\"\nextra = 1\n",
        )
        .err()
        .unwrap_or_else(|| panic!("accepted"));
        assert!(e.message.contains("extra"), "{e}");
    }

    #[test]
    fn rule_suffix_matches_whole_components() {
        let rule = RuleRef {
            file: "/x/my-policy.toml".into(),
            line: 3,
            col: 1,
            section: "tokens.a".into(),
        };
        assert!(rule_matches("my-policy.toml:3", Some(&rule)));
        assert!(rule_matches("/x/my-policy.toml:3", Some(&rule)));
        assert!(!rule_matches("policy.toml:3", Some(&rule)));
        assert!(!rule_matches("default", Some(&rule)));
        assert!(rule_matches("default", None));
    }
}
