//! The `tools` section: laptop commands the workspace may run by name.
//!
//! Its keys are declared in the `Field` tables below and documented in
//! `docs/policy.md`.
//!
//! Arguments are matched element by element against `args`: a literal, or a
//! pattern with `*` (any run of characters) and `?` (one character). An
//! argument starting with `-` only matches a pattern element that starts
//! with `-` itself, so `*` never lets `--output=FILE` or `-oProxyCommand=...`
//! through. A final `"**"` accepts any number of further arguments, none
//! starting with `-`.

use std::time::Duration;

use toml::de::DeValue;

use crate::schema::decision::{Approve, Decided, RuleRef, Verdict, shown_name};
use crate::schema::diag::Diagnostic;
use crate::schema::glob_deny::{DenyRule, DenyShape, deny};
use crate::schema::probe::ProbeArgs;
use crate::schema::rate::Rate;
use crate::schema::read::{
    Key, Parser, Value, argv_from, path_key, valid_env_var, valid_token_name,
};
use crate::schema::request::Action;
use crate::schema::section::{PolicySection, SectionGrant, Terms};
use crate::schema::{APPROVE, DESCRIPTION, Field, Kind, RATE, Table};

/// The keys of `[tools.NAME]`.
const TOOL_FIELDS: &[Field] = &[
    Field::required(
        "command",
        "list of strings",
        "program and its fixed arguments, run without a shell",
    ),
    Field::optional(
        "args",
        "list of patterns",
        "the workspace's arguments, matched element by element",
    )
    .default("no arguments")
    .read(Kind::List {
        expected: "a list of patterns",
        check: check_pattern,
        when_empty: "",
    }),
    DESCRIPTION,
    Field::optional("timeout", "duration", "the run is killed after this long")
        .default("60s")
        .limits("more than 0, at most 24h")
        .read(Kind::Timeout(MAX_TIMEOUT)),
    Field::optional(
        "env",
        "list of variable names",
        "variables of the proxy's environment passed on",
    )
    .default("none")
    .read(Kind::List {
        expected: "a list of variable names",
        check: check_env,
        when_empty: "",
    }),
    Field::optional("cwd", "path", "working directory (absolute or `~/...`)")
        .default("~")
        .read(Kind::Checked {
            expected: "a directory",
            check: check_cwd,
        }),
    APPROVE,
    RATE,
];

/// The keys of `[[tools.deny]]`.
const DENY_FIELDS: &[Field] = &[
    Field::required("name", "glob", "glob over tool names, case-insensitive"),
    DESCRIPTION,
];

/// The tables of the `tools` section.
const TABLES: &[Table] = &[
    Table {
        header: "[tools.NAME]",
        fields: TOOL_FIELDS,
    },
    Table {
        header: "[[tools.deny]]",
        fields: DENY_FIELDS,
    },
];

/// Default time a tool may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest timeout a rule may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Most arguments a caller may pass.
pub const MAX_ARGS: usize = 256;

/// A `[tools.NAME]` declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolRule {
    /// The tool's name.
    pub name: String,
    /// Program and fixed leading arguments.
    pub command: Vec<String>,
    /// Patterns for the caller's arguments, element by element.
    pub args: Vec<String>,
    /// For `tool list`.
    pub description: String,
    /// How long a run may take before it is killed.
    pub timeout: Duration,
    /// Names of proxy environment variables passed to the tool.
    pub env: Vec<String>,
    /// Working directory (`~/` is the laptop home); default the home.
    pub cwd: Option<String>,
    /// Whether the laptop user must approve each run.
    pub approve: Option<Approve>,
    /// Optional rate limit, enforced by the laptop.
    pub rate: Option<Rate>,
    /// Where the tool is declared.
    pub rule: RuleRef,
}

/// Every tools rule of one source (or, merged, of all).
#[derive(Clone, Debug, Default)]
pub(crate) struct ToolsSection {
    tools: Vec<ToolRule>,
    deny: Vec<DenyRule>,
}

/// Whether one argument matches one pattern element.
fn element_matches(pattern: &str, arg: &str) -> bool {
    if arg.starts_with('-') && !pattern.starts_with('-') {
        return false;
    }
    wildcard(pattern.as_bytes(), arg.as_bytes())
}

/// `*` and `?` wildcard match, iterative (no exponential backtracking).
fn wildcard(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        match p.get(pi) {
            Some(b'?') => {
                pi += 1;
                si += 1;
            }
            Some(b'*') => {
                star = Some(pi);
                mark = si;
                pi += 1;
            }
            Some(&c) if c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some(sp) => {
                    pi = sp + 1;
                    mark += 1;
                    si = mark;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches the caller's arguments against a rule's patterns.
///
/// # Errors
/// Why the arguments do not fit, naming the first bad position.
pub fn match_args(patterns: &[String], args: &[String]) -> Result<(), String> {
    if args.len() > MAX_ARGS {
        return Err(format!("more than {MAX_ARGS} arguments"));
    }
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(format!("argument {} contains a NUL character", i + 1));
    }
    let (fixed, rest) = match patterns.split_last() {
        Some((last, fixed)) if last == "**" => (fixed, true),
        _ => (patterns, false),
    };
    if args.len() < fixed.len() || (!rest && args.len() > fixed.len()) {
        let want = if rest {
            format!("at least {}", fixed.len())
        } else {
            fixed.len().to_string()
        };
        return Err(format!(
            "{} argument(s) given, the rule takes {want} ({})",
            args.len(),
            describe(patterns)
        ));
    }
    for (i, (p, a)) in fixed.iter().zip(args).enumerate() {
        if !element_matches(p, a) {
            let dash = if a.starts_with('-') && !p.starts_with('-') {
                " (an argument starting with '-' only matches a pattern that starts with '-')"
            } else {
                ""
            };
            return Err(format!(
                "argument {} {} does not match {p:?}{dash}",
                i + 1,
                shown_name(a)
            ));
        }
    }
    if let Some((i, a)) = args
        .iter()
        .enumerate()
        .skip(fixed.len())
        .find(|(_, a)| a.starts_with('-'))
    {
        return Err(format!(
            "argument {} {} starts with '-', which \"**\" never accepts",
            i + 1,
            shown_name(a)
        ));
    }
    Ok(())
}

fn describe(patterns: &[String]) -> String {
    if patterns.is_empty() {
        "no arguments".to_owned()
    } else {
        format!("{patterns:?}")
    }
}

impl PolicySection for ToolsSection {
    const NAME: nexus_protocol::Section = nexus_protocol::Section::Tools;
    const TABLES: &'static [Table] = TABLES;

    fn parse(p: &mut Parser<'_, '_, Self>, value: &Value<'_>) {
        p.tools_section(value);
    }

    fn append(&mut self, other: Self) {
        self.tools.extend(other.tools);
        self.deny.extend(other.deny);
    }

    fn add_denies_from(&mut self, other: &Self) {
        self.deny.extend(other.deny.iter().cloned());
    }

    /// `name` and one `args` per argument, in order; none is a run without
    /// arguments.
    fn probe<T>(
        args: &ProbeArgs<'_>,
        _: &[&Self],
        decide: impl FnOnce(Action<'_>) -> T,
    ) -> Result<T, String> {
        args.check_keys(&["name", "args"])?;
        let name = args.need("name", "open-pr")?;
        let list = args.all("args");
        if list.len() > MAX_ARGS {
            return Err(format!("more than {MAX_ARGS} args= arguments"));
        }
        Ok(decide(Action::Tool { name, args: &list }))
    }

    fn cross_check(&self) -> Vec<Diagnostic> {
        self.tools
            .iter()
            .filter_map(|t| {
                let d = self.denied(&t.name)?;
                Some(t.rule.diagnostic(format!(
                    "tool {:?} is declared but always denied by [[tools.deny]] name = {:?} ({})",
                    t.name, d.pattern, d.rule
                )))
            })
            .collect()
    }
}

impl SectionGrant for ToolRule {
    fn terms(&self) -> Terms<'_> {
        Terms {
            rate: self.rate,
            approve: self.approve,
            rule: &self.rule,
        }
    }

    /// What runs is the org's: a baseline that declares the tool pins its
    /// command and working directory; its timeout and environment cap the
    /// user's (shorter, fewer variables).
    fn cap(&mut self, ceiling: &Self, org: bool) {
        if !org {
            return;
        }
        self.command.clone_from(&ceiling.command);
        self.timeout = self.timeout.min(ceiling.timeout);
        self.env.retain(|e| ceiling.env.contains(e));
        if ceiling.cwd.is_some() {
            self.cwd.clone_from(&ceiling.cwd);
        }
    }
}

impl ToolsSection {
    fn denied(&self, name: &str) -> Option<&DenyRule> {
        self.deny.iter().find(|d| d.matcher.is_match(name))
    }

    /// Declared tools no deny rule hides, in declaration order.
    pub(crate) fn listed(&self) -> Vec<&ToolRule> {
        self.tools
            .iter()
            .filter(|t| self.denied(&t.name).is_none())
            .collect()
    }

    pub(crate) fn decide(&self, name: &str, args: &[String]) -> Decided<ToolRule> {
        let shown = shown_name(name);
        if let Some(d) = self.denied(name) {
            return deny(
                Some(d.rule.clone()),
                format!(
                    "tool {shown} denied by [[tools.deny]] name = {:?} ({})",
                    d.pattern, d.rule
                ),
            );
        }
        let Some(tool) = self.tools.iter().find(|t| t.name == name) else {
            return deny(
                None,
                format!("tool {shown} is not declared in the policy (default deny)"),
            );
        };
        match match_args(&tool.args, args) {
            Ok(()) => Decided {
                verdict: Verdict::Allow,
                reason: format!("tool {shown} allowed by [tools.{name}] ({})", tool.rule),
                rule: Some(tool.rule.clone()),
                grant: Some(tool.clone()),
            },
            Err(why) => deny(
                Some(tool.rule.clone()),
                format!("tool {shown}: {why} ([tools.{name}] at {})", tool.rule),
            ),
        }
    }
}

fn check_pattern(p: &str) -> Result<(), String> {
    if p.contains('\0') {
        return Err("an argument pattern contains a NUL character".to_owned());
    }
    Ok(())
}

fn check_env(v: &str) -> Result<(), String> {
    if valid_env_var(v) {
        Ok(())
    } else {
        Err(format!(
            "invalid environment variable name {}; expected [A-Za-z_][A-Za-z0-9_]*",
            shown_name(v)
        ))
    }
}

fn check_cwd(p: &str) -> Result<(), String> {
    if p == "~" || p.starts_with("~/") || p.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "cwd {} must be absolute or start with ~/",
            shown_name(p)
        ))
    }
}

impl Parser<'_, '_, ToolsSection> {
    /// `[tools]`: `[tools.NAME]` declarations and `[[tools.deny]]`.
    pub(crate) fn tools_section(&mut self, value: &Value<'_>) {
        let shape = DenyShape {
            section: "tools.deny",
            fields: DENY_FIELDS,
            example: "deploy-*",
            over: "tool names",
        };
        let denies = self.named_tables("tools", "[tools.NAME] tables", value, &shape, Self::tool);
        self.out.deny.extend(denies);
    }

    fn tool(&mut self, key: &Key<'_>, value: &Value<'_>) {
        let name: &str = key.get_ref();
        let section = format!("tools.{}", path_key(name));
        if !valid_token_name(name) {
            return self.report.error(
                &key.span(),
                format!(
                    "{section}: invalid tool name {}; expected 1 to 64 characters from A-Z a-z 0-9 . _ -, \
                     starting with a letter or digit",
                    shown_name(name)
                ),
            );
        }
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(&section, value, found, "a table with command = [...]");
        };
        let errors_before = self.report.errors.len();
        let v = self.fields(&section, TOOL_FIELDS, table, &[]);
        let command = v.at("command").and_then(|(at, item)| {
            argv_from(item.get_ref())
                .map_err(|why| self.report.error(&item.span(), format!("{at}: {why}")))
                .ok()
        });
        if let (Some(list), Some((at, item))) = (v.list("args"), v.at("args"))
            && list.iter().rev().skip(1).any(|p| p == "**")
        {
            self.report.error(
                &item.span(),
                format!("{at}: \"**\" may only be the last pattern"),
            );
        }
        if command.is_none() && self.report.errors.len() == errors_before {
            self.report.error(
                &value.span(),
                format!(
                    "{section}: missing command; expected command = [\"PROGRAM\", \"ARG\", ...]"
                ),
            );
        }
        if self.report.errors.len() != errors_before {
            return;
        }
        if let Some(first) = self.out.tools.iter().find(|t| t.name == name) {
            let msg = format!(
                "{section}: declared twice (first at {}); declare each tool once",
                first.rule
            );
            return self.report.error(&value.span(), msg);
        }
        if let Some(command) = command {
            let rule = self.rule_ref(&value.span(), section);
            self.out.tools.push(ToolRule {
                name: name.to_owned(),
                command,
                args: v.list("args").unwrap_or_default(),
                description: v.text("description").unwrap_or_default().to_owned(),
                timeout: v.duration("timeout").unwrap_or(DEFAULT_TIMEOUT),
                env: v.list("env").unwrap_or_default(),
                cwd: v.text("cwd").map(str::to_owned),
                approve: v.approve("approve"),
                rate: v.rate("rate"),
                rule,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn argument_matching() {
        let pr = s(&["--title", "*", "--body", "*"]);
        assert!(match_args(&pr, &s(&["--title", "t", "--body", "b c"])).is_ok());
        assert!(match_args(&pr, &s(&["--title", "", "--body", "x"])).is_ok());
        for bad in [
            s(&["--title", "--output=x", "--body", "b"]),
            s(&["--title", "-oProxyCommand=sh", "--body", "b"]),
            s(&["--title", "t", "--body"]),
            s(&["--title", "t", "--body", "b", "--web"]),
            s(&["--body", "t", "--title", "b"]),
            s(&["--title", "t\0", "--body", "b"]),
        ] {
            assert!(match_args(&pr, &bad).is_err(), "{bad:?}");
        }
        let rest = s(&["log", "**"]);
        assert!(match_args(&rest, &s(&["log"])).is_ok());
        assert!(match_args(&rest, &s(&["log", "a", "b"])).is_ok());
        assert!(match_args(&rest, &s(&["log", "a", "--exec=x"])).is_err());
        assert!(match_args(&[], &s(&["x"])).is_err());
        assert!(match_args(&[], &[]).is_ok());
        assert!(element_matches("v?.*", "v1.2"));
        assert!(!element_matches("v?.*", "v12"));
        assert!(element_matches("--out=*.txt", "--out=a.txt"));
        // No exponential blow-up.
        assert!(!element_matches(&"*a".repeat(30), &"a".repeat(29)));
    }

    #[test]
    fn timeouts_use_the_one_duration_grammar() {
        let timeout = |t: &str| {
            let text = format!("[tools.t]\ncommand = [\"true\"]\ntimeout = \"{t}\"\n");
            crate::Policy::from_sources(&[crate::Source::new("p.toml", text)])
                .map(|p| p.tools().first().map(|r| r.timeout))
                .map_err(|e| e.to_string())
        };
        assert_eq!(timeout("60s"), Ok(Some(Duration::from_secs(60))));
        assert_eq!(timeout("500ms"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(timeout("10min"), Ok(Some(Duration::from_secs(600))));
        assert_eq!(timeout("1d"), Ok(Some(MAX_TIMEOUT)));
        for bad in ["0s", "25h", "2d", "", "s", "5 fortnights"] {
            assert!(timeout(bad).is_err(), "{bad}");
        }
    }
}
