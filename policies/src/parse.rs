//! From TOML text to rules: walks the parsed document, keeping every span, and
//! checks each key so that all mistakes of a file are reported at once.
//!
//! The document is read as a `toml::de::DeTable` rather than through serde
//! structs: that gives the span of every key and value (for `line:col` in
//! errors), the span of every `[table]` header (for rule references), and lets
//! validation go on after the first mistake.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use nexus_protocol::units;

use crate::diag::{Diagnostic, Reporter};
use crate::engine::{Approve, RuleRef, TokenRule, TokenSource};
use crate::glob_deny::{DenyRule, DenyShape};
use crate::rate::{RATE_EXPECTED, Rate};
use crate::schema::{APPROVE, DESCRIPTION, Field, RATE, Table, expected};
use crate::ssh::{self, Glob, SshDenyRule, SshRule};
use crate::{files, git, tools};

/// The accepted forms of `source`, for error messages.
const SOURCE_EXPECTED: &str =
    "expected keyring:SERVICE/ACCOUNT, env:VAR, file:PATH or command:[...]";

/// Longest `kind:` prefix echoed back in an error (the rest of a bad source is
/// never echoed, in case a secret was pasted there by mistake).
const MAX_KIND_LEN: usize = 32;

/// The longest token name.
const MAX_TOKEN_NAME: usize = 64;

/// A key with its span, as the TOML parser gives it.
pub(crate) type Key<'i> = Spanned<DeString<'i>>;
/// A value with its span, as the TOML parser gives it.
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Everything found in one source.
#[derive(Debug, Default)]
pub(crate) struct ParsedFile {
    /// Every token name declared, valid body or not, for duplicate detection.
    pub declared: Vec<(String, RuleRef)>,
    /// The tokens whose declaration is valid.
    pub tokens: Vec<TokenRule>,
    /// The valid `[[tokens.deny]]` rules, in source order.
    pub denies: Vec<DenyRule>,
    /// The valid `[[ssh.allow]]` rules, in source order.
    pub ssh_rules: Vec<SshRule>,
    /// The valid `[[ssh.deny]]` rules, in source order.
    pub ssh_denies: Vec<SshDenyRule>,
    /// `[[git-credential.allow]]` and `[[git-credential.deny]]`.
    pub git: git::GitSection,
    /// `[[files.allow]]`, `[[files.deny]]`, `[files.sets.NAME]`.
    pub files: files::FilesSection,
    /// `[tools.NAME]` and `[[tools.deny]]`.
    pub tools: tools::ToolsSection,
    /// `[http.NAME]` and `[[http.deny]]`.
    pub http: crate::http::HttpSection,
    /// Errors, in no particular order.
    pub errors: Vec<Diagnostic>,
    /// Warnings, in no particular order.
    pub warnings: Vec<Diagnostic>,
    /// Top-level sections holding anything but deny rules (see `layers`).
    pub allow_sections: BTreeSet<String>,
    /// `[workspace."NAME"]` sections, each parsed like a file of its own.
    pub workspaces: Vec<(String, ParsedFile)>,
}

/// Parses and validates one policy source.
pub(crate) fn parse_source(file: &str, text: &str) -> ParsedFile {
    let mut parser = Parser {
        report: Reporter::new(file, text),
        out: ParsedFile::default(),
        nested: false,
    };
    // Only the first syntax error: those after it are mostly echoes of it.
    match DeTable::parse(text) {
        Ok(root) => parser.document(root.get_ref()),
        Err(e) => parser.syntax_error(&e),
    }
    let Parser {
        report, mut out, ..
    } = parser;
    out.errors = report.errors;
    out.warnings = report.warnings;
    out
}

/// Walks one document.
pub(crate) struct Parser<'a> {
    pub(crate) report: Reporter<'a>,
    pub(crate) out: ParsedFile,
    /// Inside a `[workspace."NAME"]` section.
    pub(crate) nested: bool,
}

impl Parser<'_> {
    /// Reports what the TOML parser rejected.
    fn syntax_error(&mut self, error: &toml::de::Error) {
        let span = error.span().unwrap_or(0..0);
        let mut message = format!("TOML syntax error: {}", error.message());
        if error.message() == "duplicate key" {
            let key = self.report.text(&span);
            message =
                format!("{message} {key:?}; a key or [table] may be defined only once per file");
        }
        self.report.error(&span, message);
    }

    /// The top level: `version`, `[tokens]`, `[ssh]`, and the other sections.
    fn document(&mut self, root: &DeTable<'_>) {
        for (key, value) in root {
            let name: &str = key.get_ref();
            if crate::layers::holds_allow_rules(name, value.get_ref()) {
                self.out.allow_sections.insert(name.to_owned());
            }
            match name {
                "version" => self.version(value),
                "workspace" => self.workspaces(key, value),
                "tokens" => self.tokens(value),
                "ssh" => self.ssh(value),
                "git-credential" => self.git_credential(value),
                "files" => self.files(value),
                "tools" => self.tools_section(value),
                "http" => self.http_section(value),
                _ => self.report.error(
                    &key.span(),
                    format!(
                        "unknown top-level key {name:?}; expected version, [tokens.NAME], \
                         [[tokens.deny]], [[ssh.allow]], [[ssh.deny]], [[git-credential.allow]], \
                         [[files.allow]], [files.sets.NAME], [tools.NAME], [http.NAME], each \
                         also in [workspace.\"NAME\"]"
                    ),
                ),
            }
        }
    }

    /// `[workspace."NAME"]`: rules that narrow the others for one workspace.
    fn workspaces(&mut self, key: &Key<'_>, value: &Value<'_>) {
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type("workspace", value, found, "a table of [workspace.\"NAME\"]");
        };
        if self.nested {
            return self.report.error(
                &key.span(),
                "workspace: a [workspace.\"NAME\"] section cannot hold another one",
            );
        }
        for (name, body) in table {
            let section = format!("workspace.{}", path_key(name.get_ref()));
            if let Err(why) = crate::layers::check_workspace_name(name.get_ref()) {
                self.report.error(&name.span(), format!("{section}: {why}"));
                continue;
            }
            let DeValue::Table(inner) = body.get_ref() else {
                let found = body.get_ref();
                self.wrong_type(
                    &section,
                    body,
                    found,
                    "a table of rules ([tokens.NAME], [[ssh.allow]], ...)",
                );
                continue;
            };
            let outer = std::mem::take(&mut self.out);
            self.nested = true;
            self.document(inner);
            self.nested = false;
            let parsed = std::mem::replace(&mut self.out, outer);
            self.out
                .workspaces
                .push((name.get_ref().to_string(), parsed));
        }
    }

    /// `version = 1`.
    fn version(&mut self, value: &Value<'_>) {
        match value.get_ref() {
            DeValue::Integer(n) if i64::from_str_radix(n.as_str(), n.radix()) == Ok(1) => {}
            DeValue::Integer(_) => {
                let written = self.report.text(&value.span());
                self.report.error(
                    &value.span(),
                    format!(
                        "version: unsupported policy version {written}; this build understands version = 1"
                    ),
                );
            }
            other => self.wrong_type("version", value, other, "an integer (version = 1)"),
        }
    }

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

    /// `[ssh]`: `[[ssh.allow]]` and `[[ssh.deny]]`.
    fn ssh(&mut self, value: &Value<'_>) {
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(
                "ssh",
                value,
                found,
                "a table of [[ssh.allow]] and [[ssh.deny]] rules",
            );
        };
        for (key, value) in table {
            match key.get_ref().as_ref() {
                "allow" => self.ssh_list("ssh.allow", value, Self::ssh_allow),
                "deny" => self.ssh_list("ssh.deny", value, Self::ssh_deny),
                _ => self.unknown_key("ssh", key, "[[ssh.allow]] or [[ssh.deny]]"),
            }
        }
    }

    /// `[[ssh.allow]]` or `[[ssh.deny]]`: an array of tables, each checked by `rule`.
    pub(crate) fn ssh_list(
        &mut self,
        section: &str,
        value: &Value<'_>,
        rule: fn(&mut Self, &Value<'_>),
    ) {
        match value.get_ref() {
            DeValue::Array(items) => {
                for item in items.iter() {
                    rule(self, item);
                }
            }
            DeValue::Table(_) => self.report.error(
                &value.span(),
                format!(
                    "{section}: rules are an array of tables: write [[{section}]] (double \
                     brackets), once per rule, not [{section}]"
                ),
            ),
            other => self.wrong_type(
                section,
                value,
                other,
                &format!("an array of tables ([[{section}]])"),
            ),
        }
    }

    /// One `[[ssh.allow]]` rule.
    fn ssh_allow(&mut self, value: &Value<'_>) {
        const SECTION: &str = "ssh.allow";
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(
                SECTION,
                value,
                found,
                "a table with host = \"HOST\" and user = \"USER\"",
            );
        };
        let errors_before = self.report.errors.len();
        let (mut host, mut user) = (None, None);
        let (mut seen_host, mut seen_user) = (false, false);
        let (mut keys, mut host_keys) = (None, None);
        let mut sshsig_namespaces = Vec::new();
        let mut forwarding = false;
        let (mut approve, mut rate) = (None, None);
        for (key, item) in table {
            let path = format!("{SECTION}.{}", path_key(key.get_ref()));
            match key.get_ref().as_ref() {
                "host" => {
                    seen_host = true;
                    host = self.checked_string(
                        &path,
                        item,
                        "\"HOST\" or \"HOST:PORT\"",
                        ssh::check_host,
                    );
                }
                "user" => {
                    seen_user = true;
                    user = self.checked_string(
                        &path,
                        item,
                        "a user name like \"git\", or \"*\"",
                        ssh::check_user,
                    );
                }
                "keys" => {
                    keys = self.string_list(
                        &path,
                        item,
                        "an array of key fingerprints like [\"SHA256:...\"]",
                        ssh::check_fingerprint,
                        "the rule would allow no key; leave keys out to allow every key in the \
                         laptop agent, or list fingerprints from `ssh-add -l`",
                    );
                }
                "host_keys" => {
                    host_keys = self.string_list(
                        &path,
                        item,
                        "an array of host public keys like [\"ssh-ed25519 AAAA...\"]",
                        ssh::check_host_key,
                        "the rule would pin no host key; leave host_keys out to use the laptop's \
                         known_hosts for host, or list keys from `ssh-keyscan HOST`",
                    );
                }
                "sshsig_namespaces" => {
                    sshsig_namespaces = self
                        .string_list(
                            &path,
                            item,
                            "an array of namespaces like [\"git\"]",
                            ssh::check_namespace,
                            "",
                        )
                        .unwrap_or_default();
                }
                "forwarding" => match item.get_ref() {
                    DeValue::Boolean(b) => forwarding = *b,
                    other => self.wrong_type(&path, item, other, "true or false"),
                },
                "approve" => approve = self.approve(&path, item),
                "rate" => rate = self.rate(&path, item),
                "description" => {
                    self.string(&path, item, "a string");
                }
                other => {
                    let hint = if other == "key" {
                        " (allow rules take a list, keys = [\"SHA256:...\"])"
                    } else {
                        ""
                    };
                    self.unknown_key(
                        SECTION,
                        key,
                        &format!("{}{hint}", expected(ssh::ALLOW_FIELDS)),
                    );
                }
            }
        }
        if !seen_host {
            self.report.error(
                &value.span(),
                "ssh.allow: missing host; expected host = \"HOST\" or \"HOST:PORT\" (e.g. \"github.com\")",
            );
        }
        if !seen_user {
            self.report.error(
                &value.span(),
                "ssh.allow: missing user; expected user = \"NAME\" (e.g. \"git\"), or \"*\" for any user",
            );
        }
        let (Some(host), Some(user)) = (host, user) else {
            return;
        };
        if self.report.errors.len() == errors_before {
            let rule = self.rule_ref(&value.span(), SECTION.to_owned());
            self.out.ssh_rules.push(SshRule {
                host,
                user,
                keys,
                host_keys,
                sshsig_namespaces,
                forwarding,
                approve,
                rate,
                rule,
            });
        }
    }

    /// One `[[ssh.deny]]` rule.
    fn ssh_deny(&mut self, value: &Value<'_>) {
        const SECTION: &str = "ssh.deny";
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(SECTION, value, found, "a table with host, user and/or key");
        };
        let errors_before = self.report.errors.len();
        let (mut host, mut user, mut key_fp) = (None, None, None);
        let mut seen_field = false;
        for (key, item) in table {
            let path = format!("{SECTION}.{}", path_key(key.get_ref()));
            match key.get_ref().as_ref() {
                "host" => {
                    seen_field = true;
                    host = self.glob(&path, item, "host names like \"prod-*\"");
                }
                "user" => {
                    seen_field = true;
                    user = self.glob(&path, item, "user names like \"root\"");
                }
                "key" => {
                    seen_field = true;
                    key_fp = self.checked_string(
                        &path,
                        item,
                        "a key fingerprint like \"SHA256:...\"",
                        ssh::check_fingerprint,
                    );
                }
                "description" => {
                    self.string(&path, item, "a string");
                }
                other => {
                    let hint = if other == "keys" {
                        " (a deny rule takes one key = \"SHA256:...\"; write one rule per key)"
                    } else {
                        ""
                    };
                    self.unknown_key(
                        SECTION,
                        key,
                        &format!("{}{hint}", expected(ssh::DENY_FIELDS)),
                    );
                }
            }
        }
        if !seen_field {
            self.report.error(
                &value.span(),
                "ssh.deny: a deny rule needs at least one of host, user or key (it matches when \
                 all of them match); to deny every SSH use, write host = \"*\"",
            );
        }
        if self.report.errors.len() == errors_before {
            let rule = self.rule_ref(&value.span(), SECTION.to_owned());
            self.out.ssh_denies.push(SshDenyRule {
                host,
                user,
                key: key_fp,
                rule,
            });
        }
    }

    /// A case-insensitive glob in a string.
    pub(crate) fn glob(&mut self, path: &str, value: &Value<'_>, over: &str) -> Option<Glob> {
        let pattern = self.string(path, value, &format!("a glob over {over}"))?;
        compile_glob(pattern)
            .map(|matcher| Glob {
                pattern: pattern.to_owned(),
                matcher,
            })
            .map_err(|why| {
                self.report.error(
                    &value.span(),
                    format!(
                        "{path}: invalid glob {pattern:?} ({why}); expected a glob over {over} \
                         using *, ? and [...]"
                    ),
                );
            })
            .ok()
    }

    /// A string that passes `check`; otherwise an error saying why.
    pub(crate) fn checked_string(
        &mut self,
        path: &str,
        value: &Value<'_>,
        expected: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> Option<String> {
        let text = self.string(path, value, expected)?;
        check(text)
            .map(|()| text.to_owned())
            .map_err(|why| self.report.error(&value.span(), format!("{path}: {why}")))
            .ok()
    }

    /// An array of strings that each pass `check`. `when_empty`, if not "",
    /// is the error for an empty array. `None` if anything is wrong.
    pub(crate) fn string_list(
        &mut self,
        path: &str,
        value: &Value<'_>,
        expected: &str,
        check: fn(&str) -> Result<(), String>,
        when_empty: &str,
    ) -> Option<Vec<String>> {
        let DeValue::Array(items) = value.get_ref() else {
            let found = value.get_ref();
            self.wrong_type(path, value, found, expected);
            return None;
        };
        if items.is_empty() && !when_empty.is_empty() {
            self.report.error(
                &value.span(),
                format!("{path}: the list is empty: {when_empty}"),
            );
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(text) => match check(text) {
                    Ok(()) => out.push(text.to_string()),
                    Err(why) => {
                        ok = false;
                        self.report.error(&item.span(), format!("{path}: {why}"));
                    }
                },
                other => {
                    ok = false;
                    self.wrong_type(path, item, other, &format!("strings in {expected}"));
                }
            }
        }
        ok.then_some(out)
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
        let mut source = None;
        let mut seen_source = false;
        let mut rate = None;
        let mut mcp = false;
        let mut approve = None;
        let mut reveal = false;
        for (key, item) in table {
            let path = format!("{section}.{}", path_key(key.get_ref()));
            match key.get_ref().as_ref() {
                "source" => {
                    seen_source = true;
                    source = self.source(&path, item);
                }
                "rate" => rate = self.rate(&path, item),
                "mcp" => match item.get_ref() {
                    DeValue::Boolean(b) => mcp = *b,
                    other => self.wrong_type(&path, item, other, "true or false"),
                },
                "approve" => approve = self.approve(&path, item),
                "reveal" => match item.get_ref() {
                    DeValue::Boolean(b) => reveal = *b,
                    other => self.wrong_type(&path, item, other, "true or false"),
                },
                "description" => {
                    self.string(&path, item, "a string");
                }
                _ => self.unknown_key(&section, key, &expected(TOKEN_FIELDS)),
            }
        }
        if !seen_source {
            self.report.error(
                &value.span(),
                format!(
                    "{section}: missing source; expected source = \"keyring:SERVICE/ACCOUNT\", \
                     \"env:VAR\", \"file:PATH\" or {{ command = [\"PROGRAM\", \"ARG\", ...] }}"
                ),
            );
        }
        if let Some(source) = source.filter(|_| self.report.errors.len() == errors_before) {
            self.out.tokens.push(TokenRule {
                name: name.to_owned(),
                source,
                rate,
                mcp,
                approve,
                reveal,
                rule,
            });
        }
    }

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

    /// `rate = "60/min"`.
    pub(crate) fn rate(&mut self, path: &str, value: &Value<'_>) -> Option<Rate> {
        let text = self.string(path, value, "a string like \"60/min\"")?;
        text.parse()
            .map_err(|e| {
                self.report.error(
                    &value.span(),
                    format!("{path}: invalid rate {text:?}: {e}; {RATE_EXPECTED}"),
                );
            })
            .ok()
    }

    /// A size in the one grammar of [`units`], at most `max`.
    pub(crate) fn size(&mut self, path: &str, value: &Value<'_>, max: u64) -> Option<u64> {
        let text = self.string(path, value, "a size like \"10MiB\"")?;
        let checked = units::parse_size(text).and_then(|n| {
            if n <= max {
                Ok(n)
            } else {
                Err(format!(
                    "{text:?} is more than the {} maximum",
                    units::format_size(max)
                ))
            }
        });
        checked
            .map_err(|why| self.report.error(&value.span(), format!("{path}: {why}")))
            .ok()
    }

    /// A timeout in the one grammar of [`units`]: more than 0, at most `max`.
    pub(crate) fn timeout(
        &mut self,
        path: &str,
        value: &Value<'_>,
        max: Duration,
    ) -> Option<Duration> {
        let text = self.string(path, value, "a duration like \"60s\"")?;
        let checked = units::parse_duration(text).and_then(|d| {
            if d.is_zero() || d > max {
                Err(format!(
                    "timeout {text:?} must be more than 0 and at most {}",
                    shown_hours(max)
                ))
            } else {
                Ok(d)
            }
        });
        checked
            .map_err(|why| self.report.error(&value.span(), format!("{path}: {why}")))
            .ok()
    }

    /// `approve = "prompt"`.
    pub(crate) fn approve(&mut self, path: &str, value: &Value<'_>) -> Option<Approve> {
        match self.string(path, value, "\"prompt\"")? {
            "prompt" => Some(Approve::Prompt),
            other => {
                self.report.error(
                    &value.span(),
                    format!(
                        "{path}: unknown approval mode {other:?}; expected \"prompt\" (or leave approve out)"
                    ),
                );
                None
            }
        }
    }

    /// The string in `value`, or an error saying a string was expected.
    pub(crate) fn string<'v>(
        &mut self,
        path: &str,
        value: &'v Value<'_>,
        expected: &str,
    ) -> Option<&'v str> {
        match value.get_ref() {
            DeValue::String(s) => Some(s),
            other => {
                self.wrong_type(path, value, other, expected);
                None
            }
        }
    }

    /// Reports a value of the wrong type.
    pub(crate) fn wrong_type(
        &mut self,
        path: &str,
        value: &Value<'_>,
        found: &DeValue<'_>,
        expected: &str,
    ) {
        self.report.error(
            &value.span(),
            format!("{path}: expected {expected}, found {}", found.type_str()),
        );
    }

    /// Reports a key that has no meaning in `section`.
    pub(crate) fn unknown_key(&mut self, section: &str, key: &Key<'_>, expected: &str) {
        let name: &str = key.get_ref();
        self.report.error(
            &key.span(),
            format!("{section}: unknown key {name:?}; expected {expected}"),
        );
    }

    /// A reference to the rule whose table starts at `span`.
    pub(crate) fn rule_ref(&self, span: &Range<usize>, section: String) -> RuleRef {
        let (line, col) = self.report.position(span);
        RuleRef {
            file: self.report.file.to_owned(),
            line,
            col,
            section,
        }
    }
}

/// Compiles a non-empty glob, case-insensitive.
pub(crate) fn compile_glob(pattern: &str) -> Result<GlobMatcher, String> {
    if pattern.is_empty() {
        return Err("it is empty".to_owned());
    }
    GlobBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.kind().to_string())
}

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

/// The argument vector in an array of strings: non-empty, with a non-empty program.
pub(crate) fn argv_from(value: &DeValue<'_>) -> Result<Vec<String>, String> {
    const SHAPE: &str = "expected [\"PROGRAM\", \"ARG\", ...]";
    let DeValue::Array(items) = value else {
        return Err(format!(
            "expected an array of strings, found {}; {SHAPE}",
            value.type_str()
        ));
    };
    let mut argv = Vec::with_capacity(items.len());
    for item in items {
        match item.get_ref() {
            DeValue::String(s) if s.contains('\0') => {
                return Err("a command argument contains a NUL character".to_owned());
            }
            DeValue::String(s) => argv.push(s.to_string()),
            other => {
                return Err(format!(
                    "command arguments must be strings, found {}; {SHAPE}",
                    other.type_str()
                ));
            }
        }
    }
    match argv.first() {
        None => Err(format!("command is empty; {SHAPE}")),
        Some(program) if program.is_empty() => Err(format!(
            "command program (the first element) is empty; {SHAPE}"
        )),
        Some(_) => Ok(argv),
    }
}

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`, and not the reserved `deny`.
pub(crate) fn valid_token_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.len() <= MAX_TOKEN_NAME
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "deny"
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn valid_env_var(var: &str) -> bool {
    let bytes = var.as_bytes();
    bytes
        .first()
        .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A key as it would be written in a dotted path: bare if it can be, quoted otherwise.
pub(crate) fn path_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
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
    Field::optional("mcp", "bool", "whether an MCP client may see the value").default("false"),
    APPROVE,
    Field::optional(
        "reveal",
        "bool",
        "`token get` works even when an `[http.*]` section binds the token",
    )
    .default("false"),
    DESCRIPTION,
];

/// The keys of `[[tokens.deny]]`.
const TOKEN_DENY_FIELDS: &[Field] = &[
    Field::required("name", "glob", "glob over token names, case-insensitive"),
    DESCRIPTION,
];

/// The tables of the `tokens` section.
pub(crate) const TOKEN_TABLES: &[Table] = &[
    Table {
        header: "[tokens.NAME]",
        fields: TOKEN_FIELDS,
    },
    Table {
        header: "[[tokens.deny]]",
        fields: TOKEN_DENY_FIELDS,
    },
];

/// A limit in whole hours (`24h`), as people think of timeouts; otherwise as
/// [`units::format_duration`] writes it.
fn shown_hours(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 && secs.is_multiple_of(3600) && d.subsec_nanos() == 0 {
        format!("{}h", secs / 3600)
    } else {
        units::format_duration(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_names() {
        for ok in ["a", "openai", "gh", "A.b_c-d", "0", &"x".repeat(64)] {
            assert!(valid_token_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "a b",
            "a/b",
            "é",
            "deny",
            &"x".repeat(65),
        ] {
            assert!(!valid_token_name(bad), "{bad}");
        }
    }

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

    #[test]
    fn rule_refs_point_at_table_headers() {
        let text = "version = 1\n\n[tokens.a]\nsource = \"env:A\"\n\n  [[tokens.deny]]\nname = \"x*\"\n\n[tokens]\nb = { source = \"env:B\" }\n";
        let parsed = parse_source("p.toml", text);
        assert_eq!(parsed.errors, vec![]);
        let at = |t: &TokenRule| (t.name.clone(), t.rule.line, t.rule.col);
        let mut tokens: Vec<_> = parsed.tokens.iter().map(at).collect();
        tokens.sort();
        assert_eq!(tokens, vec![("a".into(), 3, 1), ("b".into(), 10, 5)]);
        let deny = &parsed.denies[0].rule;
        assert_eq!(
            (deny.line, deny.col, deny.section.as_str()),
            (6, 3, "tokens.deny")
        );
    }
}
