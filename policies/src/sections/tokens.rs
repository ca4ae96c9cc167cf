//! The `tokens` section: named secrets the workspace may fetch
//! (`[tokens.NAME]`), and `[[tokens.deny]]` globs over their names.
//!
//! Its keys are declared in the `Field` tables below and documented in
//! `docs/policy.md`.

use std::collections::BTreeMap;
use std::fmt;

use toml::de::{DeTable, DeValue};

use crate::schema::decision::{Approve, Decided, RuleRef, Verdict, shown_name};
use crate::schema::diag::Diagnostic;
use crate::schema::glob_deny::{DenyRule, DenyShape, deny};
use crate::schema::probe::ProbeArgs;
use crate::schema::rate::Rate;
use crate::schema::read::{
    Key, MAX_TOKEN_NAME, Parser, Value, argv_from, path_key, valid_env_var, valid_token_name,
};
use crate::schema::request::Action;
use crate::schema::section::{PolicySection, SectionGrant, Terms};
use crate::schema::{APPROVE, DESCRIPTION, Field, Kind, RATE, Table};

/// The accepted forms of `source`, for error messages.
const SOURCE_EXPECTED: &str =
    "expected keyring:SERVICE/ACCOUNT, env:VAR, file:PATH or command:[...]";

/// Longest `kind:` prefix echoed back in an error (the rest of a bad source is
/// never echoed, in case a secret was pasted there by mistake).
const MAX_KIND_LEN: usize = 32;

/// Parses the string forms of `source`.
///
/// Error messages never echo the value past its `kind:` prefix, in case a
/// secret was pasted there by mistake.
fn parse_source_str(s: &str) -> Result<TokenSource, String> {
    if s.contains('\0') {
        return Err("source contains a NUL character".to_owned());
    }
    if let Some(rest) = s.strip_prefix("keyring:") {
        let Some((service, account)) = rest.rsplit_once('/') else {
            return Err(
                "keyring source has no '/'; expected keyring:SERVICE/ACCOUNT, e.g. \"keyring:nexus/openai\""
                    .to_owned(),
            );
        };
        let empty = match (service.is_empty(), account.is_empty()) {
            (false, false) => {
                return Ok(TokenSource::Keyring {
                    service: service.to_owned(),
                    account: account.to_owned(),
                });
            }
            (true, false) => "service",
            (false, true) => "account",
            (true, true) => "service and account",
        };
        return Err(format!(
            "keyring source has an empty {empty}; expected keyring:SERVICE/ACCOUNT with both parts non-empty"
        ));
    }
    if let Some(var) = s.strip_prefix("env:") {
        return if valid_env_var(var) {
            Ok(TokenSource::Env(var.to_owned()))
        } else {
            Err(format!(
                "invalid environment variable name {var:?}; expected env:VAR with VAR matching [A-Za-z_][A-Za-z0-9_]*"
            ))
        };
    }
    if let Some(file) = s.strip_prefix("file:") {
        return if file.is_empty() {
            Err("file source has an empty path; expected file:PATH, e.g. \"file:~/.config/openai.key\"".to_owned())
        } else {
            Ok(TokenSource::File(file.to_owned()))
        };
    }
    if let Some(array) = s.strip_prefix("command:") {
        let value = DeValue::parse(array).map_err(|e| {
            format!(
                "command source is not a TOML array of strings ({}); expected command:[\"PROGRAM\", \"ARG\", ...]",
                e.message()
            )
        })?;
        return argv_from(value.get_ref())
            .map(TokenSource::Command)
            .map_err(|why| format!("command source: {why}"));
    }
    match s.split_once(':') {
        Some((kind, _)) if !kind.is_empty() && kind.chars().count() <= MAX_KIND_LEN => {
            Err(format!(
                "unknown source kind \"{}:\"; {SOURCE_EXPECTED}",
                kind.escape_debug()
            ))
        }
        _ => Err(format!("source has no kind prefix; {SOURCE_EXPECTED}")),
    }
}

/// The keys of `[tokens.NAME]`.
const TOKEN_FIELDS: &[Field] = &[
    Field::required(
        "source",
        "token source",
        "`keyring:SERVICE/ACCOUNT`, `env:VAR`, `file:PATH`, `command:[...]` or `{ command = [...] }`",
    ),
    RATE,
    Field::optional("mcp", "bool", "whether an MCP client may see the value")
        .default("false")
        .read(Kind::Bool),
    APPROVE,
    Field::optional(
        "reveal",
        "bool",
        "`token get` works even when an `[http.*]` section binds the token",
    )
    .default("false")
    .read(Kind::Bool),
    DESCRIPTION,
];

/// The keys of `[[tokens.deny]]`.
const TOKEN_DENY_FIELDS: &[Field] = &[
    Field::required("name", "glob", "glob over token names, case-insensitive"),
    DESCRIPTION,
];

/// The tables of the `tokens` section.
const TABLES: &[Table] = &[
    Table {
        header: "[tokens.NAME]",
        fields: TOKEN_FIELDS,
    },
    Table {
        header: "[[tokens.deny]]",
        fields: TOKEN_DENY_FIELDS,
    },
];

/// Where the laptop reads a token's value from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `keyring:SERVICE/ACCOUNT`: an entry of the OS keyring.
    Keyring {
        /// Keyring service (everything before the last `/`).
        service: String,
        /// Keyring account (everything after the last `/`).
        account: String,
    },
    /// `env:VAR`: an environment variable of the laptop proxy.
    Env(String),
    /// `file:PATH`: a file, path kept verbatim (it may start with `~/`).
    File(String),
    /// `{ command = [...] }` or `command:[...]`: the stdout of a program run without a shell.
    Command(Vec<String>),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Keyring { service, account } => write!(f, "keyring:{service}/{account}"),
            TokenSource::Env(var) => write!(f, "env:{var}"),
            TokenSource::File(path) => write!(f, "file:{path}"),
            TokenSource::Command(argv) => write!(f, "command:{argv:?}"),
        }
    }
}

/// A declared token: `[tokens.NAME]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRule {
    /// The token name.
    pub name: String,
    /// Where its value comes from.
    pub source: TokenSource,
    /// Optional rate limit, enforced by the laptop.
    pub rate: Option<Rate>,
    /// Whether an MCP client may see the value.
    pub mcp: bool,
    /// Whether the laptop user must approve each use.
    pub approve: Option<Approve>,
    /// `reveal = true`: `token get` is allowed even when an `[http.*]`
    /// section binds the token to its upstream.
    pub reveal: bool,
    /// Where the token is declared.
    pub rule: RuleRef,
}

/// Every tokens rule of one source (or, merged, of all).
#[derive(Clone, Debug, Default)]
pub(crate) struct TokensSection {
    /// Every token name declared, valid body or not, for duplicate detection.
    pub declared: Vec<(String, RuleRef)>,
    /// The tokens whose declaration is valid; the first declaration wins.
    pub tokens: BTreeMap<String, TokenRule>,
    /// The valid `[[tokens.deny]]` rules, in source order.
    pub denies: Vec<DenyRule>,
}

impl PolicySection for TokensSection {
    const NAME: nexus_protocol::Section = nexus_protocol::Section::Tokens;
    const TABLES: &'static [Table] = TABLES;

    fn parse(p: &mut Parser<'_, '_, Self>, value: &Value<'_>) {
        p.tokens(value);
    }

    fn append(&mut self, other: Self) {
        self.declared.extend(other.declared);
        for (name, token) in other.tokens {
            self.tokens.entry(name).or_insert(token);
        }
        self.denies.extend(other.denies);
    }

    fn add_denies_from(&mut self, other: &Self) {
        self.denies.extend(other.denies.iter().cloned());
    }

    /// `name`.
    fn probe<T>(
        args: &ProbeArgs<'_>,
        _: &[&Self],
        decide: impl FnOnce(Action<'_>) -> T,
    ) -> Result<T, String> {
        args.check_keys(&["name"])?;
        let name = args.need("name", "openai")?;
        Ok(decide(Action::Token { name }))
    }

    /// Warnings about deny rules that never fire and declarations that never allow.
    fn cross_check(&self) -> Vec<Diagnostic> {
        let (tokens, denies) = (&self.tokens, &self.denies);
        let mut warnings = Vec::new();
        for deny in denies {
            if !tokens.keys().any(|name| deny.matcher.is_match(name)) {
                warnings.push(deny.rule.diagnostic(
                    format!(
                        "[[tokens.deny]] name = {:?} matches no declared token; it only guards against future declarations",
                        deny.pattern
                    ),
                ));
            }
        }
        for token in tokens.values() {
            if let Some(deny) = denies.iter().find(|d| d.matcher.is_match(&token.name)) {
                warnings.push(token.rule.diagnostic(format!(
                    "token {:?} is declared but always denied by [[tokens.deny]] name = {:?} ({})",
                    token.name, deny.pattern, deny.rule
                )));
            }
        }
        warnings
    }
}

impl TokensSection {
    /// The first deny rule matching `name`.
    pub(crate) fn denied(&self, name: &str) -> Option<&DenyRule> {
        self.denies.iter().find(|d| d.matcher.is_match(name))
    }

    /// Deny rules first (in source order), then declarations, then the
    /// default deny. The engine then checks the `[http.*]` bindings.
    pub(crate) fn decide(&self, name: &str) -> Decided<TokenRule> {
        let shown = shown_name(name);
        if let Some(d) = self.denied(name) {
            return deny(
                Some(d.rule.clone()),
                format!(
                    "token {shown} denied by [[tokens.deny]] name = {:?} ({})",
                    d.pattern, d.rule
                ),
            );
        }
        match self.tokens.get(name) {
            Some(token) => Decided {
                verdict: Verdict::Allow,
                reason: format!(
                    "token {shown} allowed by [{}] ({})",
                    token.rule.section, token.rule
                ),
                rule: Some(token.rule.clone()),
                grant: Some(token.clone()),
            },
            None => deny(
                None,
                format!("token {shown} is not declared in the policy (default deny)"),
            ),
        }
    }
}

impl SectionGrant for TokenRule {
    fn terms(&self) -> Terms<'_> {
        Terms {
            rate: self.rate,
            approve: self.approve,
            rule: &self.rule,
        }
    }
}

impl Parser<'_, '_, TokensSection> {
    /// `[tokens]`: token declarations and the `deny` list.
    fn tokens(&mut self, value: &Value<'_>) {
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type("tokens", value, found, "a table of [tokens.NAME] sections");
        };
        for (key, value) in table {
            if key.get_ref() == "deny" {
                self.deny_list(value);
            } else {
                self.token(key, value);
            }
        }
    }

    /// `[[tokens.deny]]`: the array of deny rules.
    fn deny_list(&mut self, value: &Value<'_>) {
        let DeValue::Array(rules) = value.get_ref() else {
            return self.report.error(
                &value.span(),
                format!(
                    "tokens.deny: the name \"deny\" is reserved for deny rules and cannot be a token; \
                     write deny rules as [[tokens.deny]] with name = \"GLOB\" (found a {})",
                    value.get_ref().type_str()
                ),
            );
        };
        for rule in rules {
            self.deny_rule(rule);
        }
    }

    /// One `[[tokens.deny]]` entry.
    fn deny_rule(&mut self, value: &Value<'_>) {
        let shape = DenyShape {
            section: "tokens.deny",
            fields: TOKEN_DENY_FIELDS,
            example: "prod-*",
            over: "token names",
        };
        if let Some(deny) = self.glob_deny(&shape, value) {
            self.out.denies.push(deny);
        }
    }

    /// One `[tokens.NAME]` declaration.
    fn token(&mut self, key: &Key<'_>, value: &Value<'_>) {
        let name: &str = key.get_ref();
        let section = format!("tokens.{}", path_key(name));
        if !valid_token_name(name) {
            return self.report.error(
                &key.span(),
                format!(
                    "{section}: invalid token name {name:?}; expected 1 to {MAX_TOKEN_NAME} \
                     characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
                ),
            );
        }
        let DeValue::Table(table) = value.get_ref() else {
            let expected = format!("a table ([{section}] with source = \"...\")");
            return self.wrong_type(&section, value, value.get_ref(), &expected);
        };
        let rule = self.rule_ref(&value.span(), section.clone());
        self.out.declared.push((name.to_owned(), rule.clone()));

        let errors_before = self.report.errors.len();
        let v = self.fields(&section, TOKEN_FIELDS, table, &[]);
        let source = v
            .at("source")
            .and_then(|(path, item)| self.source(path, item));
        if !v.has("source") {
            self.report.error(
                &value.span(),
                format!(
                    "{section}: missing source; expected source = \"keyring:SERVICE/ACCOUNT\", \
                     \"env:VAR\", \"file:PATH\" or {{ command = [\"PROGRAM\", \"ARG\", ...] }}"
                ),
            );
        }
        if let Some(source) = source.filter(|_| self.report.errors.len() == errors_before) {
            self.out.tokens.insert(
                name.to_owned(),
                TokenRule {
                    name: name.to_owned(),
                    source,
                    rate: v.rate("rate"),
                    mcp: v.bool("mcp").unwrap_or(false),
                    approve: v.approve("approve"),
                    reveal: v.bool("reveal").unwrap_or(false),
                    rule,
                },
            );
        }
    }
}

/// The token source reader, shared with `[http.NAME]` (`source = ...`).
impl<O> Parser<'_, '_, O> {
    /// `source = "kind:..."` or `source = { command = [...] }`.
    pub(crate) fn source(&mut self, path: &str, value: &Value<'_>) -> Option<TokenSource> {
        let result = match value.get_ref() {
            DeValue::String(s) => parse_source_str(s),
            DeValue::Table(table) => return self.command_table(path, value, table),
            other => {
                let expected =
                    "a string like \"keyring:SERVICE/ACCOUNT\" or a table { command = [...] }";
                self.wrong_type(path, value, other, expected);
                return None;
            }
        };
        result
            .map_err(|why| self.report.error(&value.span(), format!("{path}: {why}")))
            .ok()
    }

    /// `source = { command = ["PROGRAM", "ARG", ...] }`.
    fn command_table(
        &mut self,
        path: &str,
        value: &Value<'_>,
        table: &DeTable<'_>,
    ) -> Option<TokenSource> {
        let mut argv = None;
        let mut seen_command = false;
        for (key, item) in table {
            if key.get_ref() == "command" {
                seen_command = true;
                argv = argv_from(item.get_ref())
                    .map_err(|why| {
                        self.report
                            .error(&item.span(), format!("{path}.command: {why}"));
                    })
                    .ok();
            } else {
                self.unknown_key(path, key, "only command = [\"PROGRAM\", \"ARG\", ...]");
            }
        }
        if !seen_command {
            self.report.error(
                &value.span(),
                format!(
                    "{path}: missing command; expected source = {{ command = [\"PROGRAM\", \"ARG\", ...] }}"
                ),
            );
        }
        argv.map(TokenSource::Command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_strings() {
        let keyring = |s: &str, a: &str| TokenSource::Keyring {
            service: s.into(),
            account: a.into(),
        };
        let ok = [
            ("keyring:nexus/openai", keyring("nexus", "openai")),
            ("keyring:a/b/c", keyring("a/b", "c")),
            (
                "env:NEXUS_DEMO_TOKEN",
                TokenSource::Env("NEXUS_DEMO_TOKEN".into()),
            ),
            ("env:_x1", TokenSource::Env("_x1".into())),
            ("file:~/.k", TokenSource::File("~/.k".into())),
            (
                r#"command:["op", "read", "op://dev/x"]"#,
                TokenSource::Command(vec!["op".into(), "read".into(), "op://dev/x".into()]),
            ),
        ];
        for (text, want) in ok {
            assert_eq!(parse_source_str(text), Ok(want), "{text}");
        }
        let bad = [
            ("keyring:nexus", "has no '/'"),
            ("keyring:nexus/", "empty account"),
            ("keyring:/openai", "empty service"),
            ("keyring:/", "empty service and account"),
            ("env:1X", "invalid environment variable name \"1X\""),
            ("env:", "invalid environment variable name \"\""),
            ("env:A-B", "invalid environment variable name"),
            ("file:", "empty path"),
            ("command:[]", "command is empty"),
            ("command:[\"\"]", "program (the first element) is empty"),
            ("command:[1]", "must be strings, found integer"),
            (
                "command:\"gh\"",
                "expected an array of strings, found string",
            ),
            ("command:[\"gh\"", "not a TOML array"),
            ("vault:sk-secret", "unknown source kind \"vault:\""),
            ("sk-secret", "no kind prefix"),
            ("env:A\0", "NUL"),
        ];
        for (text, want) in bad {
            match parse_source_str(text) {
                Err(msg) => {
                    assert!(msg.contains(want), "{text}: {msg}");
                    assert!(!msg.contains("secret"), "{text} echoed: {msg}");
                }
                Ok(got) => panic!("{text}: accepted as {got:?}"),
            }
        }
    }
}
