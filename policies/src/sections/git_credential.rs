//! The `git-credential` section: which HTTP(S) git credentials the laptop's
//! own `git credential fill` may hand to the workspace, and whether the
//! workspace's `store`/`erase` reach the laptop's helpers.
//!
//! Its keys are declared in the `Field` tables below and documented in
//! `docs/policy.md`.

use globset::{GlobBuilder, GlobMatcher};
use toml::de::DeValue;

use super::ssh;
use crate::schema::decision::{Approve, Decided, RuleRef, Verdict, shown_name};
use crate::schema::diag::Diagnostic;
use crate::schema::glob_deny::deny;
use crate::schema::probe::{ProbeArgs, clip};
use crate::schema::rate::Rate;
use crate::schema::read::Glob;
use crate::schema::read::{Parser, Value};
use crate::schema::request::{Action, GitAction};
use crate::schema::section::{PolicySection, SectionGrant, Terms};
use crate::schema::{APPROVE, DESCRIPTION, Field, Kind, RATE, Table};

/// `protocol`, in allow and deny rules.
const PROTOCOL: Field = Field::optional("protocol", "string", "").read(Kind::Checked {
    expected: PROTOCOL_SHAPE,
    check: check_protocol,
});

/// The keys of `[[git-credential.allow]]`.
const ALLOW_FIELDS: &[Field] = &[
    PROTOCOL
        .help("URL scheme git sends")
        .default("\"https\""),
    Field::required(
        "host",
        "host",
        "`HOST` or `HOST:PORT`, exact (case-insensitive)",
    )
    .read(Kind::Checked {
        expected: "\"HOST\" or \"HOST:PORT\"",
        check: ssh::check_host,
    }),
    Field::optional(
        "path",
        "glob",
        "over the repository path git sends with `credential.useHttpPath`; `*` stays within a segment, `**` crosses them",
    )
    .default("any path")
    .read(Kind::Checked {
        expected: "a glob like \"acme/*\"",
        check: check_rule_path,
    }),
    Field::optional(
        "username",
        "glob or list of globs",
        "the accounts whose credentials may be handed out (case-insensitive); a request for another is refused",
    )
    .default("any account"),
    Field::optional(
        "actions",
        "list of get, store, erase",
        "what the workspace's git may ask of the laptop's helpers",
    )
    .default("[\"get\"]")
    .read(Kind::List {
        expected: "a list of \"get\", \"store\", \"erase\"",
        check: check_action,
        when_empty: "the rule would allow nothing; leave actions out for [\"get\"]",
    }),
    APPROVE,
    RATE,
    DESCRIPTION,
];

/// The keys of `[[git-credential.deny]]`; at least one of the first three.
const DENY_FIELDS: &[Field] = &[
    PROTOCOL.help("URL scheme, exact"),
    Field::optional("host", "glob", "glob over the host, case-insensitive")
        .read(Kind::Glob("host names like \"*.corp\"")),
    Field::optional(
        "path",
        "glob",
        "glob over the path, case-insensitive; a request without a path matches",
    ),
    DESCRIPTION,
];

/// The tables of the `git-credential` section.
const TABLES: &[Table] = &[
    Table {
        header: "[[git-credential.allow]]",
        fields: ALLOW_FIELDS,
    },
    Table {
        header: "[[git-credential.deny]]",
        fields: DENY_FIELDS,
    },
];

/// A `[[git-credential.allow]]` rule.
#[derive(Clone, Debug)]
pub struct GitCredentialRule {
    /// URL scheme, e.g. `https`.
    pub protocol: String,
    /// `HOST` or `HOST:PORT`, lower-cased.
    pub host: String,
    /// Path glob as written, with its matcher; `None` allows any path.
    pub path: Option<(String, GlobMatcher)>,
    /// Globs over the accounts allowed; empty allows any account.
    pub(crate) usernames: Vec<Glob>,
    /// What the workspace may do.
    pub actions: Vec<GitAction>,
    /// Whether the laptop user must approve each use.
    pub approve: Option<Approve>,
    /// Optional rate limit, enforced by the laptop.
    pub rate: Option<Rate>,
    /// Where the rule is written.
    pub rule: RuleRef,
}

impl GitCredentialRule {
    /// Whether the rule lets the credential of account `user` out: any
    /// account without `username`, else one its globs match.
    #[must_use]
    pub fn admits_username(&self, user: &str) -> bool {
        self.usernames.is_empty() || self.usernames.iter().any(|g| g.matcher.is_match(user))
    }

    /// Whether the rule names the accounts it allows.
    #[must_use]
    pub fn limits_usernames(&self) -> bool {
        !self.usernames.is_empty()
    }
}

impl PartialEq for GitCredentialRule {
    fn eq(&self, other: &Self) -> bool {
        self.rule == other.rule
    }
}

/// A `[[git-credential.deny]]` rule.
#[derive(Clone, Debug)]
pub(crate) struct GitDenyRule {
    protocol: Option<String>,
    host: Option<Glob>,
    path: Option<Glob>,
    rule: RuleRef,
}

/// Every git-credential rule of one source (or, merged, of all).
#[derive(Clone, Debug, Default)]
pub(crate) struct GitCredentialSection {
    allow: Vec<GitCredentialRule>,
    deny: Vec<GitDenyRule>,
}

impl PolicySection for GitCredentialSection {
    const NAME: nexus_protocol::Section = nexus_protocol::Section::GitCredential;
    const TABLES: &'static [Table] = TABLES;

    fn parse(p: &mut Parser<'_, '_, Self>, value: &Value<'_>) {
        p.git_credential(value);
    }

    fn append(&mut self, other: Self) {
        self.allow.extend(other.allow);
        self.deny.extend(other.deny);
    }

    fn add_denies_from(&mut self, other: &Self) {
        self.deny.extend(other.deny.iter().cloned());
    }

    /// `protocol`, `host` and optional `path`, `action` (`get`, the default,
    /// `store` or `erase`) and `username`.
    fn probe<T>(
        args: &ProbeArgs<'_>,
        _: &[&Self],
        decide: impl FnOnce(Action<'_>) -> T,
    ) -> Result<T, String> {
        args.check_keys(&["protocol", "host", "path", "username", "action"])?;
        let action = match args.arg("action") {
            None => GitAction::Get,
            Some(a) => GitAction::parse(a)
                .ok_or_else(|| format!("action={:?}: expected get, store or erase", clip(a)))?,
        };
        Ok(decide(Action::GitCredential {
            protocol: args.need("protocol", "https")?,
            host: args.need("host", "github.com")?,
            path: args.arg("path"),
            username: args.arg("username"),
            action,
        }))
    }

    /// Warnings about allow rules a deny rule always blocks.
    fn cross_check(&self) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for rule in &self.allow {
            let blocker = self.deny.iter().find(|d| {
                d.protocol.as_ref().is_none_or(|p| *p == rule.protocol)
                    && d.host
                        .as_ref()
                        .is_none_or(|g| g.matcher.is_match(&rule.host))
                    && d.path
                        .as_ref()
                        .is_none_or(|g| g.pattern == "*" || g.pattern == "**")
            });
            if let Some(deny) = blocker {
                out.push(rule.rule.diagnostic(format!(
                    "[[git-credential.allow]] host = {:?} is always denied by [[git-credential.deny]] ({})",
                    rule.host, deny.rule
                )));
            }
        }
        out
    }
}

impl SectionGrant for GitCredentialRule {
    fn terms(&self) -> Terms<'_> {
        Terms {
            rate: self.rate,
            approve: self.approve,
            rule: &self.rule,
        }
    }
}

impl GitCredentialSection {
    /// Decides one helper call. The path must be canonical (no `.`/`..`
    /// segments, no empty segments, no encoded separators): git sends what
    /// the URL said, and a server may resolve `acme/../other` elsewhere.
    pub(crate) fn decide(
        &self,
        protocol: &str,
        host: &str,
        path: Option<&str>,
        username: Option<&str>,
        action: GitAction,
    ) -> Decided<GitCredentialRule> {
        // `github.com:443` is `github.com` for https: the same rules judge
        // both spellings, and a deny on a name covers every port of it.
        let host_lc = without_default_port(protocol, &host.to_ascii_lowercase());
        let bare = host_name(&host_lc);
        let what = format!(
            "git credential {} for {}://{}/{}",
            action.as_str(),
            shown_name(protocol).trim_matches('"'),
            shown_name(&host_lc).trim_matches('"'),
            path.map(|p| shown_name(p).trim_matches('"').to_owned())
                .unwrap_or_default()
        );
        // git trims leading and trailing slashes from the path it sends, and
        // sends none rather than an empty one: such a path is hand-made, and
        // a glob's `*` (which stops at `/`) or a laptop `credential.<url>`
        // section would judge it differently.
        if let Some(p) = path
            && let Err(why) = check_request_path(p).and_then(|()| {
                if p.is_empty() || p.starts_with('/') || p.ends_with('/') {
                    Err("the path is empty, or starts or ends with '/' (git never sends that)")
                } else {
                    Ok(())
                }
            })
        {
            return deny(None, format!("{what} refused: {why}"));
        }
        if let Some(d) = self.deny.iter().find(|d| {
            d.protocol.as_deref().is_none_or(|x| x == protocol)
                && d.host
                    .as_ref()
                    .is_none_or(|g| g.matcher.is_match(&host_lc) || g.matcher.is_match(bare))
                && d.path
                    .as_ref()
                    .is_none_or(|g| path.is_none_or(|p| g.matcher.is_match(p)))
        }) {
            return deny(
                Some(d.rule.clone()),
                format!("{what} denied by [[git-credential.deny]] ({})", d.rule),
            );
        }
        let mut missing_path = None;
        let mut missing_action = None;
        let mut other_user = None;
        for rule in &self.allow {
            if rule.protocol != protocol || rule.host != host_lc {
                continue;
            }
            match (&rule.path, path) {
                (None, _) => {}
                (Some((_, m)), Some(p)) if m.is_match(p) => {}
                (Some(_), None) => {
                    missing_path.get_or_insert(rule);
                    continue;
                }
                (Some(_), Some(_)) => continue,
            }
            if !rule.actions.contains(&action) {
                missing_action.get_or_insert(rule);
                continue;
            }
            if let Some(u) = username
                && !rule.admits_username(u)
            {
                other_user.get_or_insert(rule);
                continue;
            }
            return Decided {
                verdict: Verdict::Allow,
                reason: format!("{what} allowed by [[git-credential.allow]] ({})", rule.rule),
                rule: Some(rule.rule.clone()),
                grant: Some(rule.clone()),
            };
        }
        let reason = if let Some(rule) = other_user {
            format!(
                "{what}: account {} is not among the usernames of rule {}",
                shown_name(username.unwrap_or_default()),
                rule.rule
            )
        } else if let Some(rule) = missing_action {
            format!(
                "{what}: rule {} does not list {:?} in actions",
                rule.rule,
                action.as_str()
            )
        } else if let Some(rule) = missing_path {
            format!(
                "{what}: rule {} needs the repository path, and git sent none; set \
                 git config credential.useHttpPath true (nexus-shim env does)",
                rule.rule
            )
        } else {
            format!("{what}: no [[git-credential.allow]] rule matches (default deny)")
        };
        deny(None, reason)
    }
}

/// A path as git sends it must name one repository unambiguously.
pub(crate) fn check_request_path(path: &str) -> Result<(), &'static str> {
    if path.chars().any(char::is_control) {
        return Err("the path contains a control character");
    }
    if path.contains('\\') {
        return Err("the path contains a backslash");
    }
    let lower = path.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00"]
        .iter()
        .any(|e| lower.contains(e))
    {
        return Err("the path contains an encoded dot, slash or NUL");
    }
    let trimmed = path.trim_start_matches('/');
    if trimmed.split('/').enumerate().any(|(i, seg)| {
        seg == "." || seg == ".." || (seg.is_empty() && i + 1 < trimmed.split('/').count())
    }) {
        return Err("the path has '.', '..' or empty segments");
    }
    Ok(())
}

/// Compiles a path glob: `*` within a segment, `**` across them.
pub(crate) fn path_glob(pattern: &str, case_insensitive: bool) -> Result<GlobMatcher, String> {
    if pattern.is_empty() {
        return Err("it is empty".to_owned());
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .case_insensitive(case_insensitive)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.kind().to_string())
}

const PROTOCOL_SHAPE: &str = "expected a URL scheme like \"https\"";

fn check_protocol(p: &str) -> Result<(), String> {
    if !p.is_empty()
        && p.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
        })
    {
        Ok(())
    } else {
        Err(format!(
            "invalid protocol {}; {PROTOCOL_SHAPE}",
            shown_name(p)
        ))
    }
}

/// `get`, `store` or `erase`.
fn check_action(a: &str) -> Result<(), String> {
    GitAction::parse(a).map(|_| ()).ok_or_else(|| {
        format!(
            "unknown action {}; expected \"get\", \"store\" or \"erase\"",
            shown_name(a)
        )
    })
}

fn check_rule_path(p: &str) -> Result<(), String> {
    check_request_path(p).map_err(|why| format!("path glob {}: {why}", shown_name(p)))
}

/// `HOST:443` for https and `HOST:80` for http, without the port.
fn without_default_port(protocol: &str, host: &str) -> String {
    let default = match protocol {
        "https" => ":443",
        "http" => ":80",
        _ => return host.to_owned(),
    };
    host.strip_suffix(default)
        .filter(|h| !h.is_empty() && (!h.contains(':') || h.ends_with(']')))
        .unwrap_or(host)
        .to_owned()
}

/// The name part of `HOST` or `HOST:PORT` (`[v6]:PORT` too).
fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    }
}

impl Parser<'_, '_, GitCredentialSection> {
    /// `[git-credential]`: `[[git-credential.allow]]` and `[[git-credential.deny]]`.
    pub(crate) fn git_credential(&mut self, value: &Value<'_>) {
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(
                "git-credential",
                value,
                found,
                "[[git-credential.allow]] and [[git-credential.deny]] rules",
            );
        };
        for (key, value) in table {
            match key.get_ref().as_ref() {
                "allow" => self.rule_list("git-credential.allow", value, Self::git_allow),
                "deny" => self.rule_list("git-credential.deny", value, Self::git_deny),
                _ => self.unknown_key(
                    "git-credential",
                    key,
                    "[[git-credential.allow]] or [[git-credential.deny]]",
                ),
            }
        }
    }

    fn git_allow(&mut self, value: &Value<'_>) {
        const SECTION: &str = "git-credential.allow";
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(SECTION, value, found, "a table with host = \"HOST\"");
        };
        let errors_before = self.report.errors.len();
        let v = self.fields(SECTION, ALLOW_FIELDS, table, &[]);
        let path = v
            .text("path")
            .zip(v.at("path"))
            .and_then(|(p, (at, item))| match path_glob(p, false) {
                Ok(m) => Some((p.to_owned(), m)),
                Err(why) => {
                    self.report.error(
                        &item.span(),
                        format!("{at}: invalid glob ({why}); expected e.g. \"acme/*\""),
                    );
                    None
                }
            });
        let usernames = v
            .at("username")
            .map(|(at, item)| self.usernames(at, item))
            .unwrap_or_default();
        if !v.has("host") {
            self.report.error(
                &value.span(),
                "git-credential.allow: missing host; expected host = \"HOST\" (e.g. \"github.com\")",
            );
        }
        if self.report.errors.len() != errors_before {
            return;
        }
        if let Some(host) = v.text("host") {
            let actions = match v.list("actions") {
                Some(list) => list.iter().filter_map(|a| GitAction::parse(a)).collect(),
                None => vec![GitAction::Get],
            };
            let rule = self.rule_ref(&value.span(), SECTION.to_owned());
            self.out.allow.push(GitCredentialRule {
                protocol: v.text("protocol").unwrap_or("https").to_owned(),
                host: host.to_ascii_lowercase(),
                path,
                usernames,
                actions,
                approve: v.approve("approve"),
                rate: v.rate("rate"),
                rule,
            });
        }
    }

    /// `username`: one glob, or a non-empty list of them.
    fn usernames(&mut self, at: &str, item: &Value<'_>) -> Vec<Glob> {
        const OVER: &str = "account names";
        match item.get_ref() {
            DeValue::Array(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .filter_map(|(i, v)| self.glob(&format!("{at}[{i}]"), v, OVER))
                .collect(),
            DeValue::Array(_) => {
                self.report.error(
                    &item.span(),
                    format!("{at}: the rule would allow no account; leave username out for any"),
                );
                Vec::new()
            }
            _ => self.glob(at, item, OVER).into_iter().collect(),
        }
    }

    fn git_deny(&mut self, value: &Value<'_>) {
        const SECTION: &str = "git-credential.deny";
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(SECTION, value, found, "a table with host and/or path");
        };
        let errors_before = self.report.errors.len();
        let v = self.fields(SECTION, DENY_FIELDS, table, &[]);
        let path = v.at("path").and_then(|(at, item)| {
            let p = self.string(at, item, "a glob like \"acme/secret*\"")?;
            match path_glob(p, true) {
                Ok(matcher) => Some(Glob {
                    pattern: p.to_owned(),
                    matcher,
                }),
                Err(why) => {
                    self.report
                        .error(&item.span(), format!("{at}: invalid glob ({why})"));
                    None
                }
            }
        });
        if !["protocol", "host", "path"].iter().any(|k| v.has(k)) {
            self.report.error(
                &value.span(),
                "git-credential.deny: a deny rule needs at least one of protocol, host or path; \
                 to deny every credential, write host = \"*\"",
            );
        }
        if self.report.errors.len() == errors_before {
            let rule = self.rule_ref(&value.span(), SECTION.to_owned());
            self.out.deny.push(GitDenyRule {
                protocol: v.text("protocol").map(str::to_owned),
                host: v.glob("host"),
                path,
                rule,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decision;
    use crate::{Action, Policy, Request, Source};

    /// A host's default port is the host, and a deny on a name covers it
    /// on every port (a deny on `github.com` used to miss `github.com:443`).
    #[test]
    fn ports_do_not_dodge_host_rules() {
        let p = policy(
            "[[git-credential.allow]]\nhost = \"github.com\"\n\n\
             [[git-credential.allow]]\nhost = \"secret.corp:8443\"\n\n\
             [[git-credential.deny]]\nhost = \"secret.corp\"\n",
        );
        let get = |host| decide(&p, "https", host, Some("a/b"), GitAction::Get).verdict;
        assert_eq!(get("github.com:443"), Verdict::Allow);
        assert_eq!(get("GitHub.com:443"), Verdict::Allow);
        assert_eq!(
            get("github.com:8443"),
            Verdict::Deny,
            "another port is another rule"
        );
        assert_eq!(
            get("secret.corp:8443"),
            Verdict::Deny,
            "the deny names the host"
        );
        assert_eq!(get("secret.corp:443"), Verdict::Deny);
        assert_eq!(without_default_port("http", "h:80"), "h");
        assert_eq!(without_default_port("https", "[::1]:443"), "[::1]");
        assert_eq!(without_default_port("https", "::443"), "::443");
        assert_eq!(host_name("[::1]:8443"), "[::1]");
        assert_eq!(host_name("h:x"), "h:x");
    }

    fn policy(text: &str) -> Policy {
        Policy::from_sources(&[Source::new("p.toml", text)]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn decide(p: &Policy, proto: &str, host: &str, path: Option<&str>, a: GitAction) -> Decision {
        decide_as(p, proto, host, path, None, a)
    }

    fn decide_as(
        p: &Policy,
        proto: &str,
        host: &str,
        path: Option<&str>,
        username: Option<&str>,
        a: GitAction,
    ) -> Decision {
        p.decide(&Request {
            workspace: "w",
            caller: None,
            action: Action::GitCredential {
                protocol: proto,
                host,
                path,
                username,
                action: a,
            },
        })
    }

    /// `username` limits the accounts; unset, any account goes.
    #[test]
    fn usernames_limit_the_accounts() {
        let p = policy(
            "[[git-credential.allow]]\nhost = \"a.example\"\nusername = \"bot-*\"\n\
             [[git-credential.allow]]\nhost = \"b.example\"\nusername = [\"alice\", \"bob\"]\n\
             [[git-credential.allow]]\nhost = \"c.example\"\n",
        );
        let get = |host, user| decide_as(&p, "https", host, None, user, GitAction::Get);
        assert_eq!(get("a.example", Some("bot-ci")).verdict, Verdict::Allow);
        let d = get("a.example", Some("alice"));
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(d.reason.contains("not among the usernames"), "{}", d.reason);
        assert_eq!(get("b.example", Some("Bob")).verdict, Verdict::Allow);
        assert_eq!(get("b.example", Some("carol")).verdict, Verdict::Deny);
        assert_eq!(get("c.example", Some("anyone")).verdict, Verdict::Allow);
        // No account named: allowed, and the laptop checks the one its
        // helper answers with.
        let d = get("a.example", None);
        assert_eq!(d.verdict, Verdict::Allow);
        let Some(crate::Grant::GitCredential(rule)) = d.grant else {
            panic!("no grant")
        };
        assert!(rule.limits_usernames() && !rule.admits_username("alice"));
        let bad = Policy::from_sources(&[Source::new(
            "p.toml",
            "[[git-credential.allow]]\nhost = \"h\"\nusername = []\n",
        )]);
        assert!(bad.is_err());
    }

    const TEXT: &str = r#"
[[git-credential.allow]]
host = "GitHub.com"
path = "acme/*"

[[git-credential.allow]]
protocol = "http"
host = "git.local:8080"
actions = ["get", "store", "erase"]

[[git-credential.deny]]
path = "acme/secret*"
"#;

    #[test]
    fn decisions() {
        use GitAction::{Erase, Get, Store};
        use Verdict::{Allow, Deny};
        let p = policy(TEXT);
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            GitAction,
            Verdict,
            &'a str,
        );
        let cases: &[Case<'_>] = &[
            (
                "https",
                "github.com",
                Some("acme/repo.git"),
                Get,
                Allow,
                "p.toml:2",
            ),
            (
                "https",
                "GITHUB.COM",
                Some("acme/repo"),
                Get,
                Allow,
                "p.toml:2",
            ),
            (
                "https",
                "github.com",
                Some("acme/x/y"),
                Get,
                Deny,
                "no [[git-credential.allow]]",
            ),
            (
                "https",
                "github.com",
                Some("other/repo"),
                Get,
                Deny,
                "default deny",
            ),
            (
                "https",
                "github.com",
                Some("acme/../other/r"),
                Get,
                Deny,
                "'..'",
            ),
            (
                "https",
                "github.com",
                Some("acme/%2e%2e/r"),
                Get,
                Deny,
                "encoded",
            ),
            (
                "https",
                "github.com",
                Some("acme//r"),
                Get,
                Deny,
                "empty segments",
            ),
            // Without a path a deny on a path applies: the credential covers the host.
            (
                "https",
                "github.com",
                None,
                Get,
                Deny,
                "git-credential.deny",
            ),
            (
                "https",
                "github.com",
                Some("acme/repo"),
                Store,
                Deny,
                "does not list \"store\"",
            ),
            (
                "http",
                "github.com",
                Some("acme/repo"),
                Get,
                Deny,
                "default deny",
            ),
            (
                "https",
                "github.com",
                Some("acme/Secret-x"),
                Get,
                Deny,
                "git-credential.deny",
            ),
            (
                "http",
                "git.local:8080",
                Some("acme/x"),
                Store,
                Allow,
                "p.toml:6",
            ),
            (
                "http",
                "git.local:8080",
                Some("acme/secret"),
                Erase,
                Deny,
                "p.toml:11",
            ),
            ("http", "git.local", Some("a/b"), Get, Deny, "default deny"),
        ];
        for (proto, host, path, action, verdict, says) in cases {
            let d = decide(&p, proto, host, *path, *action);
            assert_eq!(&d.verdict, verdict, "{host} {path:?}: {}", d.reason);
            assert!(d.reason.contains(says), "{host} {path:?}: {}", d.reason);
        }
        let p = policy("[[git-credential.allow]]\nhost = \"h\"\npath = \"a/*\"\n");
        let d = decide(&p, "https", "h", None, Get);
        assert!(d.reason.contains("useHttpPath"), "{}", d.reason);
    }
}

#[cfg(test)]
mod review_tests {
    use super::*;
    use crate::Decision;
    use crate::{Action, Policy, Request, Source};

    fn decide(text: &str, path: &str) -> Decision {
        let p =
            Policy::from_sources(&[Source::new("p.toml", text)]).unwrap_or_else(|e| panic!("{e}"));
        p.decide(&Request {
            workspace: "w",
            caller: None,
            action: Action::GitCredential {
                protocol: "https",
                host: "h",
                path: Some(path),
                username: None,
                action: GitAction::Get,
            },
        })
    }

    /// git trims leading and trailing slashes from the path it sends, so a
    /// path with them comes from a hand-made request: it must not slip past
    /// a deny rule (a laptop `credential.<url>` section matches
    /// `acme/secret.git/` as it matches `acme/secret.git`).
    #[test]
    fn slashes_around_the_path_do_not_dodge_a_deny() {
        for allow in ["", "path = \"acme/**\"\n"] {
            let text = format!(
                "[[git-credential.allow]]\nhost = \"h\"\n{allow}\n\
                 [[git-credential.deny]]\npath = \"acme/secret*\"\n"
            );
            assert_eq!(decide(&text, "acme/secret.git").verdict, Verdict::Deny);
            // An empty path is no path: a deny on a path covers it.
            for dodge in [
                "acme/secret.git/",
                "/acme/secret.git",
                "acme/secret.git//",
                "",
            ] {
                let d = decide(&text, dodge);
                assert_eq!(d.verdict, Verdict::Deny, "{allow} {dodge}: {}", d.reason);
            }
        }
    }
}
