//! The decision engine: merged rules from every policy source, and `decide`.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

mod document;

use nexus_protocol::Section;

use crate::schema::Table;
use crate::schema::decision::{Decided, RuleRef, Verdict};
use crate::schema::diag::{Diagnostic, PolicyErrors};
use crate::schema::request::{Action, Request};
use crate::schema::section::{SectionGrant, Terms};
use crate::sections::Sections;
use crate::sections::files::{FileRule, FileSet};
use crate::sections::git::GitRule;
use crate::sections::git_credential::GitCredentialRule;
use crate::sections::http::HttpRule;
use crate::sections::ssh::{self, SshRule};
use crate::sections::tokens::{TokenRule, TokensSection};
use crate::sections::tools::ToolRule;

/// Every table a policy may hold, section by section in
/// [`nexus_protocol::Section::ALL`]
/// order: the schema `docs/policy.md` documents.
pub const SCHEMA: &[&[Table]] = Sections::SCHEMA;

/// One policy text in memory, e.g. the contents of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Name used in diagnostics and rule references, e.g. the file path.
    pub name: String,
    /// The TOML text.
    pub text: String,
}

impl Source {
    /// A source called `name` holding `text`.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }
}

/// What the laptop must do to carry out an allowed request.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
// One grant per request, moved once: boxing the HTTP rule would only change the API.
#[allow(clippy::large_enum_variant)]
pub enum Grant {
    /// Fetch and hand out this token, within its limits.
    Token(TokenRule),
    /// Sign (or list the identity) as this `[[ssh.allow]]` rule allows, with its
    /// approval and rate limit.
    Ssh(SshRule),
    /// Run the laptop's git credential helpers as this rule allows.
    GitCredential(GitCredentialRule),
    /// Read a file under this `[[files.allow]]` rule (within its size limit).
    File(FileRule),
    /// Install this set of files.
    FileSet(FileSet),
    /// Run this tool.
    Tool(ToolRule),
    /// Forward one HTTP request to this API's upstream, secret injected.
    Http(HttpRule),
    /// Broker a git fetch or push as this `[[git.allow]]` rule allows.
    Git(GitRule),
}

impl Grant {
    /// The rate, approval and rule that come with this grant.
    pub(crate) fn terms(&self) -> Terms<'_> {
        match self {
            Grant::Token(g) => g.terms(),
            Grant::Ssh(g) => g.terms(),
            Grant::GitCredential(g) => g.terms(),
            Grant::File(g) => g.terms(),
            Grant::FileSet(g) => g.terms(),
            Grant::Tool(g) => g.terms(),
            Grant::Http(g) => g.terms(),
            Grant::Git(g) => g.terms(),
        }
    }

    /// Narrows this grant under `ceiling`, another allowing layer's grant
    /// for the same request (`org`: the baseline's), as its section says.
    pub(crate) fn cap(&mut self, ceiling: &Grant, org: bool) {
        match (self, ceiling) {
            (Grant::Token(g), Grant::Token(c)) => g.cap(c, org),
            (Grant::Ssh(g), Grant::Ssh(c)) => g.cap(c, org),
            (Grant::GitCredential(g), Grant::GitCredential(c)) => g.cap(c, org),
            (Grant::File(g), Grant::File(c)) => g.cap(c, org),
            (Grant::FileSet(g), Grant::FileSet(c)) => g.cap(c, org),
            (Grant::Tool(g), Grant::Tool(c)) => g.cap(c, org),
            (Grant::Http(g), Grant::Http(c)) => g.cap(c, org),
            (Grant::Git(g), Grant::Git(c)) => g.cap(c, org),
            _ => {}
        }
    }
}

/// The outcome of [`Policy::decide`].
pub type Decision = Decided<Grant>;

impl Sections {
    /// Decides one request by the section it belongs to.
    fn decide(&self, action: &Action<'_>) -> Decision {
        match *action {
            Action::Token { name } => self.decide_token(name),
            Action::SshUserauth {
                host_key,
                user,
                key,
                forwarding,
            } => ssh::decide_userauth(
                &self.ssh.rules,
                &self.ssh.denies,
                &ssh::Login {
                    host_key,
                    user,
                    key,
                    forwarding,
                },
            )
            .map(Grant::Ssh),
            Action::SshSig { namespace, key } => {
                ssh::decide_sshsig(&self.ssh.rules, &self.ssh.denies, namespace, key)
                    .map(Grant::Ssh)
            }
            Action::SshIdentity { key } => {
                ssh::decide_identity(&self.ssh.rules, &self.ssh.denies, key).map(Grant::Ssh)
            }
            Action::SshUnboundUserauth { user, key } => {
                ssh::decide_unbound(&self.ssh.rules, &self.ssh.denies, user, key).map(Grant::Ssh)
            }
            Action::SshHop { host_key } => {
                ssh::decide_hop(&self.ssh.rules, &self.ssh.denies, &host_key).map(Grant::Ssh)
            }
            Action::GitCredential {
                protocol,
                host,
                path,
                username,
                action,
            } => self
                .git_credential
                .decide(protocol, host, path, username, action)
                .map(Grant::GitCredential),
            Action::File { path } => self.files.decide_file(path).map(Grant::File),
            Action::FileSet { name } => self.files.decide_set(name).map(Grant::FileSet),
            Action::Tool { name, args } => self.tools.decide(name, args).map(Grant::Tool),
            Action::Http { name, method, path } => self
                .http
                .decide(name, method, path, &self.tokens)
                .map(Grant::Http),
            Action::Git { host, repo, op } => self.git.decide(host, repo, op).map(Grant::Git),
        }
    }

    /// A token the tokens section allows is still denied when an
    /// `[http.*]` section binds it to its upstream.
    fn decide_token(&self, name: &str) -> Decision {
        let decided = self.tokens.decide(name);
        if let Some(token) = &decided.grant
            && let Some(b) = self.http.binding_of(token)
        {
            return crate::sections::http::bound_token_denial(token, b);
        }
        decided.map(Grant::Token)
    }
}

/// A validated policy: every rule of every source, merged. Immutable once built.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub(crate) sections: Sections,
    warnings: Vec<Diagnostic>,
    /// Top-level sections with anything but deny rules (see `layers`).
    allow_sections: BTreeSet<Section>,
    /// `[workspace."NAME"]` sections of every source, merged per name.
    pub(crate) workspaces: BTreeMap<String, Policy>,
}

impl Policy {
    /// Load a file, or a directory (all `*.toml` in it, sorted by name, non-recursive).
    ///
    /// In a directory, names starting with `.` are skipped (editor lock and
    /// backup files), like the shell's `*.toml` does. Every file is read and
    /// checked, so the errors of all of them come back together.
    ///
    /// # Errors
    ///
    /// Every unreadable file and every mistake in any file, each with its
    /// `file:line:col`.
    pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
        Self::load_with_sources(path).map(|(policy, _)| policy)
    }

    /// Like [`Policy::load`], also giving the sources read (e.g. to hash them).
    ///
    /// # Errors
    ///
    /// As [`Policy::load`].
    pub fn load_with_sources(path: &Path) -> Result<(Policy, Vec<Source>), PolicyErrors> {
        let name = path.display().to_string();
        let is_dir = std::fs::metadata(path)
            .map_err(|e| PolicyErrors(vec![Diagnostic::whole_file(&name, cannot_read(&e))]))?
            .is_dir();
        if !is_dir {
            let sources = vec![Source {
                name,
                text: read_text(path)?,
            }];
            return Self::from_sources(&sources).map(|p| (p, sources));
        }
        let files = policy_files(path).map_err(|e| {
            PolicyErrors(vec![Diagnostic::whole_file(
                &name,
                format!("cannot list policy directory: {e}"),
            )])
        })?;
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for file in &files {
            match read_text(file) {
                Ok(text) => sources.push(Source::new(file.display().to_string(), text)),
                Err(PolicyErrors(diags)) => errors.extend(diags),
            }
        }
        let mut warnings = Vec::new();
        if files.is_empty() {
            warnings.push(Diagnostic::whole_file(
                &name,
                "no *.toml files in this directory; the policy is empty and denies everything",
            ));
        }
        Self::build(&sources, errors, warnings).map(|p| (p, sources))
    }

    /// Build from in-memory sources (name is used in diagnostics, e.g. the file path).
    ///
    /// Later sources add to earlier ones.
    ///
    /// # Errors
    ///
    /// Every mistake in any source, each with its `file:line:col`; a token
    /// name declared twice is reported at the second declaration.
    pub fn from_sources(sources: &[Source]) -> Result<Policy, PolicyErrors> {
        Self::build(sources, Vec::new(), Vec::new())
    }

    /// An empty policy: denies everything.
    #[must_use]
    pub fn deny_all() -> Policy {
        Policy::default()
    }

    /// Decide one request. Default deny; any matching deny rule beats any allow.
    #[must_use]
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        self.sections.decide(&req.action)
    }

    /// The HTTP APIs declared and not denied, in file order.
    #[must_use]
    pub fn http_apis(&self) -> Vec<&HttpRule> {
        self.sections.http.listed()
    }

    /// The hosts `[[git.allow]]` rules broker git for (`HOST` or
    /// `HOST:PORT`, lower-cased, sorted), except those a deny rule covers whole.
    #[must_use]
    pub fn git_hosts(&self) -> Vec<&str> {
        self.sections.git.hosts()
    }

    /// The tools `tool list` shows: declared and not denied, in file order.
    #[must_use]
    pub fn tools(&self) -> Vec<&ToolRule> {
        self.sections.tools.listed()
    }

    /// The `[[files.deny]]` rule matching a path found inside a granted
    /// directory or set (normalized `~/x` form), if any.
    #[must_use]
    pub fn file_denied(&self, path: &str) -> Option<RuleRef> {
        self.sections.files.is_denied(path)
    }

    /// Whether `section` holds any rule besides deny rules: then, in a
    /// ceiling layer, it caps the others.
    #[must_use]
    pub fn has_allow_rules(&self, section: Section) -> bool {
        self.allow_sections.contains(&section)
    }

    /// Adds every deny rule of `other` (after this policy's own).
    pub(crate) fn add_denies_from(&mut self, other: &Policy) {
        self.sections.add_denies_from(&other.sections);
    }

    /// Non-fatal findings (e.g. a deny pattern that matches no declared token), for `policy check`.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Names of the declared tokens (for listing), sorted.
    #[must_use]
    pub fn token_names(&self) -> Vec<&str> {
        self.sections
            .tokens
            .tokens
            .keys()
            .map(String::as_str)
            .collect()
    }

    /// The declaration of token `name`, if any (for listing; deny rules are not applied).
    #[must_use]
    pub fn token(&self, name: &str) -> Option<&TokenRule> {
        self.sections.tokens.tokens.get(name)
    }

    /// Allow rules of the ssh section, in file order (sources in the order
    /// given), e.g. for the proxy to resolve each rule's pinned host keys.
    /// Deny rules are not applied.
    #[must_use]
    pub fn ssh_rules(&self) -> &[SshRule] {
        &self.sections.ssh.rules
    }

    /// The rules of this policy, a user layer, that reach past `ceiling`,
    /// an org baseline layer for `workspace`, each with why.
    pub(crate) fn beyond<'a>(
        &'a self,
        ceiling: &Policy,
        workspace: &str,
    ) -> Vec<(&'a RuleRef, String)> {
        let mut out = Vec::new();
        // A token's decision takes the ceiling's `[http.*]` bindings too, so
        // it is asked of the whole ceiling policy.
        for token in self.sections.tokens.tokens.values() {
            let d = ceiling.decide(&Request {
                workspace,
                caller: None,
                action: Action::Token { name: &token.name },
            });
            let capped = d.rule.is_some() || ceiling.has_allow_rules(Section::Tokens);
            if d.verdict == Verdict::Deny && capped {
                out.push((&token.rule, format!("there, {}", d.reason)));
            }
        }
        out.extend(
            self.sections
                .beyond(&ceiling.sections, |s| ceiling.has_allow_rules(s)),
        );
        out
    }

    /// Parses every source, merges them and collects all errors, sorted by position per source.
    fn build(
        sources: &[Source],
        errors: Vec<Diagnostic>,
        warnings: Vec<Diagnostic>,
    ) -> Result<Policy, PolicyErrors> {
        let files = sources
            .iter()
            .map(|s| document::parse_source(&s.name, &s.text))
            .collect();
        let order: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        Self::assemble(files, &order, errors, warnings, None)
    }

    /// Merges parsed sources (`order` ranks their names for sorting warnings).
    /// `outer`: the enclosing policy's tokens, for a workspace section.
    fn assemble(
        parsed_files: Vec<document::ParsedFile>,
        order: &[&str],
        mut errors: Vec<Diagnostic>,
        mut warnings: Vec<Diagnostic>,
        outer: Option<&TokensSection>,
    ) -> Result<Policy, PolicyErrors> {
        let mut first_seen: BTreeMap<String, RuleRef> = BTreeMap::new();
        let mut merged = Sections::default();
        let mut allow_sections = BTreeSet::new();
        let mut sections: BTreeMap<String, Vec<document::ParsedFile>> = BTreeMap::new();
        for mut parsed in parsed_files {
            allow_sections.append(&mut parsed.allow_sections);
            for (name, section) in parsed.workspaces.drain(..) {
                sections.entry(name).or_default().push(section);
            }
            for (name, at) in std::mem::take(&mut parsed.sections.tokens.declared) {
                match first_seen.entry(name) {
                    Entry::Vacant(slot) => {
                        slot.insert(at);
                    }
                    Entry::Occupied(seen) => {
                        let (name, first) = (seen.key(), seen.get());
                        parsed.errors.push(at.diagnostic(format!(
                            "{}: token {name:?} is already declared at {}:{}:{}; declare each token once",
                            at.section, first.file, first.line, first.col,
                        )));
                    }
                }
            }
            parsed.errors.sort_by_key(|d| (d.line, d.col));
            parsed.warnings.sort_by_key(|d| (d.line, d.col));
            errors.append(&mut parsed.errors);
            warnings.append(&mut parsed.warnings);
            merged.append(parsed.sections);
        }
        errors.extend(merged.http.resolve(&merged.tokens, outer));
        let mut workspaces = BTreeMap::new();
        for (name, files) in sections {
            match Self::assemble(files, order, Vec::new(), Vec::new(), Some(&merged.tokens)) {
                Ok(mut policy) => {
                    warnings.append(&mut policy.warnings);
                    workspaces.insert(name, policy);
                }
                Err(PolicyErrors(mut found)) => errors.append(&mut found),
            }
        }
        if outer.is_none() {
            // A secret is bound across the policy and all its workspace sections.
            let all = std::iter::once(&merged.http)
                .chain(workspaces.values().map(|p: &Policy| &p.sections.http));
            let (bound, mut found) = crate::sections::http::bind(all);
            errors.append(&mut found);
            for ws in workspaces.values_mut() {
                ws.sections.http.set_bound(bound.clone());
            }
            merged.http.set_bound(bound);
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        let mut found = merged.cross_check();
        let rank = |file: &str| order.iter().position(|s| *s == file);
        found.sort_by_key(|d| (rank(&d.file), d.line, d.col));
        warnings.append(&mut found);
        Ok(Policy {
            sections: merged,
            warnings,
            allow_sections,
            workspaces,
        })
    }
}

/// The `*.toml` files directly in `dir`, sorted by name, dotfiles skipped.
fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
        if !hidden && path.extension() == Some(OsStr::new("toml")) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads one policy file as UTF-8 text.
fn read_text(path: &Path) -> Result<String, PolicyErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        PolicyErrors(vec![Diagnostic::whole_file(
            &path.display().to_string(),
            cannot_read(&e),
        )])
    })
}

/// The message for a file that cannot be read.
fn cannot_read(e: &std::io::Error) -> String {
    format!("cannot read policy: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Approve, Caller, TokenSource, Verdict};

    const POLICY: &str = r#"version = 1

[tokens.openai]
source = "keyring:nexus/openai"
rate = "60/min"

[tokens.prod-db]
source = "env:PROD_DB"

[[tokens.deny]]
name = "prod-*"

[tokens.gh]
source = { command = ["gh", "auth", "token"] }
approve = "prompt"
mcp = true

[[tokens.deny]]
name = "*-admin"
"#;

    fn policy() -> Policy {
        Policy::from_sources(&[Source::new("policy.toml", POLICY)])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn decide(policy: &Policy, name: &str) -> Decision {
        policy.decide(&Request {
            workspace: "ws",
            caller: None,
            action: Action::Token { name },
        })
    }

    #[test]
    fn decisions() {
        use Verdict::{Allow, Deny};
        let policy = policy();
        // (name, verdict, deciding rule line, reason)
        let cases: &[(&str, Verdict, Option<usize>, &str)] = &[
            (
                "openai",
                Allow,
                Some(3),
                r#"token "openai" allowed by [tokens.openai] (policy.toml:3)"#,
            ),
            (
                "gh",
                Allow,
                Some(13),
                r#"token "gh" allowed by [tokens.gh] (policy.toml:13)"#,
            ),
            (
                "prod-db",
                Deny,
                Some(10),
                r#"token "prod-db" denied by [[tokens.deny]] name = "prod-*" (policy.toml:10)"#,
            ),
            (
                "PROD-other",
                Deny,
                Some(10),
                r#"token "PROD-other" denied by [[tokens.deny]] name = "prod-*" (policy.toml:10)"#,
            ),
            (
                "root-admin",
                Deny,
                Some(18),
                r#"token "root-admin" denied by [[tokens.deny]] name = "*-admin" (policy.toml:18)"#,
            ),
            (
                "prod-admin",
                Deny,
                Some(10),
                r#"token "prod-admin" denied by [[tokens.deny]] name = "prod-*" (policy.toml:10)"#,
            ),
            (
                "anthropic",
                Deny,
                None,
                r#"token "anthropic" is not declared in the policy (default deny)"#,
            ),
            (
                "OpenAI",
                Deny,
                None,
                r#"token "OpenAI" is not declared in the policy (default deny)"#,
            ),
            (
                "",
                Deny,
                None,
                r#"token "" is not declared in the policy (default deny)"#,
            ),
            (
                "a\nb",
                Deny,
                None,
                r#"token "a\nb" is not declared in the policy (default deny)"#,
            ),
        ];
        for (name, verdict, line, reason) in cases {
            let d = decide(&policy, name);
            assert_eq!(&d.verdict, verdict, "{name}");
            assert_eq!(d.rule.as_ref().map(|r| r.line), *line, "{name}");
            assert_eq!(&d.reason, reason, "{name}");
            assert_eq!(d.grant.is_some(), *verdict == Allow, "{name}");
        }
    }

    #[test]
    fn grants_carry_the_whole_declaration() {
        let Some(Grant::Token(gh)) = decide(&policy(), "gh").grant else {
            panic!("gh should be granted");
        };
        let expected = TokenRule {
            name: "gh".into(),
            source: TokenSource::Command(vec!["gh".into(), "auth".into(), "token".into()]),
            rate: None,
            mcp: true,
            approve: Some(Approve::Prompt),
            reveal: false,
            rule: RuleRef {
                file: "policy.toml".into(),
                line: 13,
                col: 1,
                section: "tokens.gh".into(),
            },
        };
        assert_eq!(gh, expected);
        let Some(Grant::Token(openai)) = decide(&policy(), "openai").grant else {
            panic!("openai should be granted");
        };
        assert_eq!(openai.rate.map(|r| r.to_string()), Some("60/min".into()));
        assert_eq!(
            openai.source,
            TokenSource::Keyring {
                service: "nexus".into(),
                account: "openai".into()
            }
        );
    }

    #[test]
    fn deny_rules_from_any_source_beat_allows_from_any_other() {
        let user = Source::new("user.toml", "[tokens.prod-db]\nsource = \"env:X\"\n");
        let baseline = Source::new("baseline.toml", "\n[[tokens.deny]]\nname = \"prod-*\"\n");
        for sources in [[user.clone(), baseline.clone()], [baseline, user]] {
            let policy = Policy::from_sources(&sources).unwrap_or_else(|e| panic!("{e}"));
            let d = decide(&policy, "prod-db");
            assert_eq!(d.verdict, Verdict::Deny);
            assert_eq!(
                d.rule.map(|r| r.to_string()),
                Some("baseline.toml:2".into())
            );
        }
    }

    #[test]
    fn a_token_declared_twice_is_an_error_at_the_second() {
        let a = Source::new("a.toml", "[tokens.x]\nsource = \"env:A\"\n");
        let b = Source::new(
            "b.toml",
            "# b\n\n[tokens.y]\nsource = \"env:B\"\n[tokens.x]\nsource = \"env:B\"\n",
        );
        let Err(PolicyErrors(errors)) = Policy::from_sources(&[a.clone(), b]) else {
            panic!("duplicate accepted");
        };
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "b.toml:5:1: tokens.x: token \"x\" is already declared at a.toml:1:1; declare each token once"
            ]
        );
        // Even when the first declaration is itself broken.
        let broken = Source::new("c.toml", "[tokens.x]\nsource = \"vault:A\"\n");
        let Err(PolicyErrors(errors)) = Policy::from_sources(&[broken, a]) else {
            panic!("duplicate accepted");
        };
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[1]
                .to_string()
                .starts_with("a.toml:1:1: tokens.x: token \"x\" is already declared at c.toml:1:1")
        );
    }

    #[test]
    fn errors_of_all_sources_come_back_in_order() {
        let sources = [
            Source::new(
                "one.toml",
                "[tokens.b]\nsource = \"env:-\"\n[tokens.a]\nsource = \"nope\"\n",
            ),
            Source::new("two.toml", "[tokens.c\n"),
            Source::new("three.toml", "version = 7\n"),
        ];
        let Err(PolicyErrors(errors)) = Policy::from_sources(&sources) else {
            panic!("errors accepted");
        };
        let at: Vec<_> = errors
            .iter()
            .map(|d| format!("{}:{}:{}", d.file, d.line, d.col))
            .collect();
        assert_eq!(
            at,
            [
                "one.toml:2:10",
                "one.toml:4:10",
                "two.toml:1:10",
                "three.toml:1:11"
            ]
        );
    }

    #[test]
    fn warnings_name_useless_and_overriding_rules() {
        let policy = policy();
        let warnings: Vec<_> = policy.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                r#"policy.toml:7:1: token "prod-db" is declared but always denied by [[tokens.deny]] name = "prod-*" (policy.toml:10)"#,
                r#"policy.toml:18:1: [[tokens.deny]] name = "*-admin" matches no declared token; it only guards against future declarations"#,
            ]
        );
    }

    #[test]
    fn http_section_is_decided() {
        // [http] was a reserved section that only warned; it is decided now.
        let text = "[http.openai]\nupstream = \"https://api.openai.com\"\nmethods = [\"POST\"]\n";
        let policy =
            Policy::from_sources(&[Source::new("p.toml", text)]).unwrap_or_else(|e| panic!("{e}"));
        assert!(policy.warnings().is_empty(), "{:?}", policy.warnings());
        let on = |method| {
            policy.decide(&Request {
                workspace: "ws",
                caller: None,
                action: Action::Http {
                    name: "openai",
                    method,
                    path: "/v1/chat/completions",
                },
            })
        };
        let ok = on("POST");
        assert_eq!(ok.verdict, Verdict::Allow, "{}", ok.reason);
        assert_eq!(ok.rule.map(|r| r.to_string()), Some("p.toml:1".into()));
        assert_eq!(on("GET").verdict, Verdict::Deny);
        assert_eq!(policy.http_apis().len(), 1);
        // An unknown top-level section is still an error.
        let Err(e) = Policy::from_sources(&[Source::new("p.toml", "[htttp.x]\n")]) else {
            panic!("accepted")
        };
        assert!(
            e.to_string().contains("unknown top-level key \"htttp\""),
            "{e}"
        );
    }

    #[test]
    fn deny_all_denies_everything() {
        let policy = Policy::deny_all();
        let d = decide(&policy, "openai");
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.rule, None);
        assert!(policy.warnings().is_empty());
        assert!(policy.token_names().is_empty());
    }

    #[test]
    fn listing() {
        let policy = policy();
        assert_eq!(policy.token_names(), ["gh", "openai", "prod-db"]);
        assert_eq!(
            policy.token("openai").map(|t| t.source.to_string()),
            Some("keyring:nexus/openai".into())
        );
        assert!(policy.token("prod-*").is_none());
    }

    #[test]
    fn long_names_are_cut_in_reasons() {
        let name = "x".repeat(10_000);
        let reason = decide(&policy(), &name).reason;
        assert!(reason.len() < 200, "{reason}");
        assert!(reason.contains("…\""), "{reason}");
    }

    #[test]
    fn the_caller_never_grants() {
        let caller = Caller {
            uid: Some(0),
            pid: Some(1),
            exe: Some("/usr/bin/gh".into()),
            cwd: Some("/".into()),
        };
        let policy = policy();
        for name in ["openai", "prod-db", "nope"] {
            let with = policy.decide(&Request {
                workspace: "ws",
                caller: Some(&caller),
                action: Action::Token { name },
            });
            assert_eq!(with, decide(&policy, name));
        }
    }

    #[test]
    fn policy_is_send_sync_and_cheap_to_share() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Policy>();
        assert_send_sync::<Decision>();
    }
}
