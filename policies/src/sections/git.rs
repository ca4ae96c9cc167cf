//! The `git` section: git brokered by the laptop. The laptop holds the
//! credential (its own `ssh`, its own `git credential fill`), sees every
//! ref update of a push before a byte of it reaches the server, and allows
//! fetches of the repositories and pushes to the branches its rules name.
//!
//! A push is decided once, with all its ref updates: refused whole when
//! any one is not allowed, naming that ref and the rule. Its keys are
//! declared in the `Field` tables below and documented in `docs/policy.md`.

use globset::GlobMatcher;
use toml::de::DeValue;

use super::{git_credential, ssh};
use crate::schema::decision::{Approve, Decided, RuleRef, Verdict, shown_name};
use crate::schema::glob_deny::deny;
use crate::schema::probe::{ProbeArgs, clip};
use crate::schema::rate::Rate;
use crate::schema::read::Glob;
use crate::schema::read::{Parser, Value};
use crate::schema::request::{Action, GitOp, GitRefUpdate};
use crate::schema::section::{PolicySection, SectionGrant, Terms};
use crate::schema::{APPROVE, DESCRIPTION, Field, Kind, RATE, Table};

/// The remote user of an SSH rule without `ssh_user`.
pub const DEFAULT_SSH_USER: &str = "git";

/// The keys of `[[git.allow]]`.
const ALLOW_FIELDS: &[Field] = &[
    Field::required(
        "host",
        "host",
        "`HOST` or `HOST:PORT`, exact (case-insensitive)",
    )
    .read(Kind::Checked {
        expected: "\"HOST\" or \"HOST:PORT\"",
        check: ssh::check_host,
    }),
    Field::required(
        "repo",
        "glob",
        "over the repository path without a trailing `.git`; `*` stays within a segment, `**` crosses them",
    )
    .read(Kind::Checked {
        expected: "a glob like \"acme/*\"",
        check: check_repo_glob,
    }),
    Field::optional(
        "push",
        "list of ref globs",
        "branches the workspace may push (`refs/heads/` implied; `refs/tags/v*` for other refs)",
    )
    .default("[] (no push)")
    .read(Kind::List {
        expected: "a list of branch globs like [\"agent/*\"]",
        check: check_ref_glob,
        when_empty: "",
    }),
    Field::optional("delete", "bool", "whether pushes may delete the refs `push` names")
        .default("false")
        .read(Kind::Bool),
    Field::optional(
        "username",
        "string",
        "HTTPS: the account the laptop asks its own credential helpers for",
    )
    .default("the helpers' answer for the URL")
    .read(Kind::Checked {
        expected: "an account name",
        check: check_name,
    }),
    Field::optional("ssh_user", "string", "SSH: the remote user")
        .default("\"git\"")
        .read(Kind::Checked {
            expected: "a user name like \"git\"",
            check: check_name,
        }),
    Field::optional(
        "ca_file",
        "path",
        "HTTPS: an extra root certificate for a private git server",
    )
    .read(Kind::Text),
    APPROVE.help("ask the laptop user before each fetch and each push"),
    RATE.help("at most N fetches and pushes per s, min or h"),
    DESCRIPTION,
];

/// The keys of `[[git.deny]]`; at least one of the first three.
const DENY_FIELDS: &[Field] = &[
    Field::optional("host", "glob", "glob over the host, case-insensitive")
        .read(Kind::Glob("host names like \"*.corp\"")),
    Field::optional(
        "repo",
        "glob",
        "glob over the repository path, case-insensitive; without `ref`, fetches are denied too",
    ),
    Field::optional(
        "ref",
        "glob",
        "glob over the refs a push updates (`refs/heads/` implied), case-insensitive",
    ),
    DESCRIPTION,
];

/// The tables of the `git` section.
const TABLES: &[Table] = &[
    Table {
        header: "[[git.allow]]",
        fields: ALLOW_FIELDS,
    },
    Table {
        header: "[[git.deny]]",
        fields: DENY_FIELDS,
    },
];

/// A `[[git.allow]]` rule: what the laptop needs to carry out an allowed
/// fetch or push.
#[derive(Clone, Debug)]
pub struct GitRule {
    /// `HOST` or `HOST:PORT`, lower-cased.
    pub host: String,
    /// Repository glob as written.
    pub repo: String,
    repo_matcher: GlobMatcher,
    /// Ref globs a push may update, as full ref patterns (`refs/heads/agent/*`).
    pub push: Vec<String>,
    push_matchers: Vec<GlobMatcher>,
    /// Whether pushes may delete the refs `push` names.
    pub delete: bool,
    /// HTTPS: the account to ask the laptop's credential helpers for.
    pub username: Option<String>,
    /// SSH: the remote user.
    pub ssh_user: String,
    /// HTTPS: an extra root certificate, as written (`~/` allowed).
    pub ca_file: Option<String>,
    /// Whether the laptop user must approve each fetch and push.
    pub approve: Option<Approve>,
    /// Optional rate limit, enforced by the laptop.
    pub rate: Option<Rate>,
    /// What the rule is for.
    pub description: String,
    /// Where the rule is written.
    pub rule: RuleRef,
}

impl PartialEq for GitRule {
    fn eq(&self, other: &Self) -> bool {
        self.rule == other.rule
    }
}

/// A `[[git.deny]]` rule.
#[derive(Clone, Debug)]
pub(crate) struct GitDenyRule {
    host: Option<Glob>,
    repo: Option<Glob>,
    refs: Option<Glob>,
    rule: RuleRef,
}

/// Every git rule of one source (or, merged, of all).
#[derive(Clone, Debug, Default)]
pub(crate) struct GitSection {
    allow: Vec<GitRule>,
    deny: Vec<GitDenyRule>,
}

impl PolicySection for GitSection {
    const NAME: nexus_protocol::Section = nexus_protocol::Section::Git;
    const TABLES: &'static [Table] = TABLES;

    fn parse(p: &mut Parser<'_, '_, Self>, value: &Value<'_>) {
        p.git(value);
    }

    fn append(&mut self, other: Self) {
        self.allow.extend(other.allow);
        self.deny.extend(other.deny);
    }

    fn add_denies_from(&mut self, other: &Self) {
        self.deny.extend(other.deny.iter().cloned());
    }

    /// `host`, `repo`, `op` (`fetch`, the default, or `push`), for a push
    /// one `ref` or more (`agent/x`, `refs/tags/v1`) and `delete=true`
    /// when they are deleted.
    fn probe<T>(
        args: &ProbeArgs<'_>,
        _: &[&Self],
        decide: impl FnOnce(Action<'_>) -> T,
    ) -> Result<T, String> {
        args.check_keys(&["host", "repo", "op", "ref", "delete"])?;
        let host = args.need("host", "github.com")?;
        let repo = args.need("repo", "acme/app")?;
        let delete = match args.arg("delete") {
            None | Some("false") => false,
            Some("true") => true,
            Some(d) => return Err(format!("delete={:?}: expected true or false", clip(d))),
        };
        let refs: Vec<GitRefUpdate> = args
            .all("ref")
            .into_iter()
            .map(|r| GitRefUpdate {
                name: full_ref(&r),
                delete,
            })
            .collect();
        match args.arg("op") {
            None | Some("fetch") if refs.is_empty() => Ok(decide(Action::Git {
                host,
                repo,
                op: GitOp::Fetch,
            })),
            None | Some("fetch") => Err("op=fetch takes no ref; use op=push".to_owned()),
            Some("push") if refs.is_empty() => {
                Err("op=push needs --arg ref=BRANCH (e.g. ref=agent/x), once per ref".to_owned())
            }
            Some("push") => Ok(decide(Action::Git {
                host,
                repo,
                op: GitOp::Push(&refs),
            })),
            Some(op) => Err(format!("op={:?}: expected fetch or push", clip(op))),
        }
    }
}

impl SectionGrant for GitRule {
    fn terms(&self) -> Terms<'_> {
        Terms {
            rate: self.rate,
            approve: self.approve,
            rule: &self.rule,
        }
    }

    /// Where a baseline allows the same request, how the laptop connects
    /// is the org's: its SSH user, account and root certificate.
    fn cap(&mut self, ceiling: &Self, org: bool) {
        self.delete &= ceiling.delete;
        if !org {
            return;
        }
        self.ssh_user.clone_from(&ceiling.ssh_user);
        if ceiling.username.is_some() {
            self.username.clone_from(&ceiling.username);
        }
        if ceiling.ca_file.is_some() {
            self.ca_file.clone_from(&ceiling.ca_file);
        }
    }
}

impl GitSection {
    /// The hosts with an allow rule, lower-cased and sorted, that no deny
    /// rule covers whole (one with only a host).
    pub(crate) fn hosts(&self) -> Vec<&str> {
        let mut hosts: Vec<&str> = self
            .allow
            .iter()
            .map(|r| r.host.as_str())
            .filter(|h| {
                !self.deny.iter().any(|d| {
                    d.repo.is_none()
                        && d.refs.is_none()
                        && d.host.as_ref().is_some_and(|g| g.matcher.is_match(h))
                })
            })
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts
    }

    /// Decides a fetch, the opening of a push connection, or a push.
    pub(crate) fn decide(&self, host: &str, repo: &str, op: GitOp<'_>) -> Decided<GitRule> {
        let host_lc = host.to_ascii_lowercase();
        let what = match op {
            GitOp::Fetch => format!("git fetch of {}", target(&host_lc, repo)),
            GitOp::PushOpen | GitOp::Push(_) => format!("git push to {}", target(&host_lc, repo)),
        };
        if let Err(why) = ssh::check_host(&host_lc) {
            return deny(None, format!("{what} refused: {why}"));
        }
        let path = match repo_path(repo) {
            Ok(p) => p,
            Err(why) => return deny(None, format!("{what} refused: {why}")),
        };
        let refs: &[GitRefUpdate] = match op {
            GitOp::Push(refs) => refs,
            GitOp::Fetch | GitOp::PushOpen => &[],
        };
        if let GitOp::Push([]) = op {
            return deny(None, format!("{what} refused: the push names no ref"));
        }
        if let Some(r) = refs.iter().find(|r| !valid_ref(&r.name)) {
            return deny(
                None,
                format!("{what} refused: invalid ref name {}", shown_name(&r.name)),
            );
        }
        if let Some((d, r)) = self.deny.iter().find_map(|d| {
            let place = d.host.as_ref().is_none_or(|g| g.matcher.is_match(&host_lc))
                && d.repo.as_ref().is_none_or(|g| g.matcher.is_match(path));
            match &d.refs {
                _ if !place => None,
                None => Some((d, None)),
                Some(g) => refs
                    .iter()
                    .find(|r| g.matcher.is_match(&r.name))
                    .map(|r| (d, Some(r))),
            }
        }) {
            let which = r.map_or_else(String::new, |r| format!(": ref {}", shown_name(&r.name)));
            return deny(
                Some(d.rule.clone()),
                format!("{what} denied by [[git.deny]] ({}){which}", d.rule),
            );
        }
        let mut first_refusal: Option<(&GitRule, String)> = None;
        for rule in self
            .allow
            .iter()
            .filter(|r| r.host == host_lc && r.repo_matcher.is_match(path))
        {
            let refused = match op {
                GitOp::Fetch => None,
                GitOp::PushOpen if rule.push.is_empty() => {
                    Some("the rule allows no push (no `push` key)".to_owned())
                }
                GitOp::PushOpen => None,
                GitOp::Push(refs) => refs.iter().find_map(|r| rule.refuses(r)),
            };
            match refused {
                None => {
                    let mut grant = rule.clone();
                    // The ref updates are decided once they are known; that
                    // decision asks and counts, not the connection's opening.
                    if op == GitOp::PushOpen {
                        grant.approve = None;
                        grant.rate = None;
                    }
                    return Decided {
                        verdict: Verdict::Allow,
                        reason: format!(
                            "{what}{} allowed by [[git.allow]] ({})",
                            refs_of(refs),
                            rule.rule
                        ),
                        rule: Some(rule.rule.clone()),
                        grant: Some(grant),
                    };
                }
                Some(why) => {
                    first_refusal.get_or_insert((rule, why));
                }
            }
        }
        match first_refusal {
            Some((rule, why)) => deny(
                Some(rule.rule.clone()),
                format!("{what} refused by [[git.allow]] ({}): {why}", rule.rule),
            ),
            None => deny(
                None,
                format!("{what}: no [[git.allow]] rule matches (default deny)"),
            ),
        }
    }
}

impl GitRule {
    /// Why this rule does not allow the ref update, if it does not.
    fn refuses(&self, update: &GitRefUpdate) -> Option<String> {
        let name = shown_name(&update.name);
        if !self.push_matchers.iter().any(|m| m.is_match(&update.name)) {
            let allowed = if self.push.is_empty() {
                "no ref".to_owned()
            } else {
                self.push.join(", ")
            };
            return Some(format!("ref {name} is not in push (allows {allowed})"));
        }
        if update.delete && !self.delete {
            return Some(format!("deleting ref {name} needs delete = true"));
        }
        None
    }
}

/// `HOST/REPO`, quoted and cut, for reasons.
fn target(host: &str, repo: &str) -> String {
    shown_name(&format!("{host}/{}", repo.trim_start_matches('/')))
}

/// ` (refs/heads/a, refs/heads/b)` for a push, nothing otherwise.
fn refs_of(refs: &[GitRefUpdate]) -> String {
    if refs.is_empty() {
        return String::new();
    }
    let names: Vec<String> = refs
        .iter()
        .take(8)
        .map(|r| {
            let verb = if r.delete { "delete " } else { "" };
            format!("{verb}{}", clip(&r.name))
        })
        .collect();
    let more = refs.len().saturating_sub(names.len());
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(" ({}{more})", names.join(", "))
}

/// `agent/x` is `refs/heads/agent/x`; `refs/...` stays.
pub(crate) fn full_ref(pattern: &str) -> String {
    if pattern.starts_with("refs/") {
        pattern.to_owned()
    } else {
        format!("refs/heads/{pattern}")
    }
}

/// The repository path a rule's glob is matched against: without one
/// leading `/` (`ssh://HOST/acme/app`) and without a trailing `.git`.
///
/// # Errors
/// Why the path cannot name one repository unambiguously, or could carry
/// anything but a path into the server's command line (it ends up inside
/// single quotes there).
pub fn repo_path(repo: &str) -> Result<&str, String> {
    let shown = shown_name(repo);
    let path = repo.strip_prefix('/').unwrap_or(repo);
    let path = path.strip_suffix(".git").unwrap_or(path);
    if path.is_empty() {
        return Err(format!("repository {shown} is empty"));
    }
    if path.len() > 512 {
        return Err("the repository path is longer than 512 characters".to_owned());
    }
    if let Some(c) = path.chars().find(|&c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '~' | '+' | '@'))
    }) {
        return Err(format!(
            "repository {shown} contains {c:?}; repository paths use A-Z a-z 0-9 . - _ ~ + @ /"
        ));
    }
    if path.starts_with(['-', '/']) {
        return Err(format!("repository {shown} starts with {:?}", &path[..1]));
    }
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!(
            "repository {shown} has '.', '..' or empty segments"
        ));
    }
    Ok(path)
}

/// A full ref name as git accepts it (the protocol crate checked pushes
/// already; probes come here unchecked).
fn valid_ref(name: &str) -> bool {
    name.starts_with("refs/")
        && !name.ends_with('/')
        && !name.contains("..")
        && !name.contains("//")
        && name
            .bytes()
            .all(|b| b > b' ' && b != 0x7f && !b"~^:?*[\\".contains(&b))
}

fn check_repo_glob(p: &str) -> Result<(), String> {
    if p.ends_with(".git") {
        return Err(format!(
            "repo glob {}: write it without the trailing \".git\" (both spellings match)",
            shown_name(p)
        ));
    }
    if p.starts_with('/') {
        return Err(format!(
            "repo glob {}: write it without a leading '/'",
            shown_name(p)
        ));
    }
    path_glob(p, false).map(|_| ())
}

fn check_ref_glob(p: &str) -> Result<(), String> {
    if p.is_empty() || p.starts_with('/') || p.starts_with("refs/heads/refs/") {
        return Err(format!(
            "ref glob {}: expected a branch glob like \"agent/*\" or a full ref like \"refs/tags/v*\"",
            shown_name(p)
        ));
    }
    path_glob(&full_ref(p), false).map(|_| ())
}

fn check_name(n: &str) -> Result<(), String> {
    if n.is_empty() || n.starts_with('-') || n.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        Err(format!(
            "{} is empty, starts with '-' or contains whitespace",
            shown_name(n)
        ))
    } else {
        Ok(())
    }
}

/// Compiles a glob over `/`-separated names: `*` within a segment.
fn path_glob(pattern: &str, case_insensitive: bool) -> Result<GlobMatcher, String> {
    git_credential::path_glob(pattern, case_insensitive)
        .map_err(|why| format!("invalid glob {} ({why})", shown_name(pattern)))
}

impl Parser<'_, '_, GitSection> {
    /// `[git]`: `[[git.allow]]` and `[[git.deny]]`.
    pub(crate) fn git(&mut self, value: &Value<'_>) {
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type("git", value, found, "[[git.allow]] and [[git.deny]] rules");
        };
        for (key, value) in table {
            match key.get_ref().as_ref() {
                "allow" => self.rule_list("git.allow", value, Self::git_allow),
                "deny" => self.rule_list("git.deny", value, Self::git_deny),
                _ => self.unknown_key("git", key, "[[git.allow]] or [[git.deny]]"),
            }
        }
    }

    fn git_allow(&mut self, value: &Value<'_>) {
        const SECTION: &str = "git.allow";
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(
                SECTION,
                value,
                found,
                "a table with host = \"HOST\" and repo = \"GLOB\"",
            );
        };
        let errors_before = self.report.errors.len();
        let v = self.fields(
            SECTION,
            ALLOW_FIELDS,
            table,
            &[("branches", "; branch globs go in push")],
        );
        for key in ["host", "repo"] {
            if !v.has(key) {
                self.report.error(
                    &value.span(),
                    format!(
                        "git.allow: missing {key}; expected host = \"github.com\" and repo = \"acme/*\""
                    ),
                );
            }
        }
        if self.report.errors.len() != errors_before {
            return;
        }
        let (Some(host), Some(repo)) = (v.text("host"), v.text("repo")) else {
            return;
        };
        let push: Vec<String> = v
            .list("push")
            .unwrap_or_default()
            .iter()
            .map(|p| full_ref(p))
            .collect();
        // Checked by the field's reader: these compile.
        let (Ok(repo_matcher), Ok(push_matchers)) = (
            path_glob(repo, false),
            push.iter()
                .map(|p| path_glob(p, false))
                .collect::<Result<Vec<_>, _>>(),
        ) else {
            return;
        };
        let rule = self.rule_ref(&value.span(), SECTION.to_owned());
        self.out.allow.push(GitRule {
            host: host.to_ascii_lowercase(),
            repo: repo.to_owned(),
            repo_matcher,
            push,
            push_matchers,
            delete: v.bool("delete").unwrap_or(false),
            username: v.text("username").map(str::to_owned),
            ssh_user: v.text("ssh_user").unwrap_or(DEFAULT_SSH_USER).to_owned(),
            ca_file: v.text("ca_file").map(str::to_owned),
            approve: v.approve("approve"),
            rate: v.rate("rate"),
            description: v.text("description").unwrap_or_default().to_owned(),
            rule,
        });
    }

    fn git_deny(&mut self, value: &Value<'_>) {
        const SECTION: &str = "git.deny";
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(SECTION, value, found, "a table with host, repo and/or ref");
        };
        let errors_before = self.report.errors.len();
        let v = self.fields(SECTION, DENY_FIELDS, table, &[]);
        let mut glob = |key: &str, full: fn(&str) -> String| {
            v.at(key).and_then(|(at, item)| {
                let p = self.string(at, item, "a glob like \"acme/secret*\"")?;
                let pattern = full(p);
                match path_glob(&pattern, true) {
                    Ok(matcher) => Some(Glob { pattern, matcher }),
                    Err(why) => {
                        self.report.error(&item.span(), format!("{at}: {why}"));
                        None
                    }
                }
            })
        };
        let repo = glob("repo", |p| {
            p.trim_start_matches('/')
                .trim_end_matches(".git")
                .to_owned()
        });
        let refs = glob("ref", full_ref);
        if !["host", "repo", "ref"].iter().any(|k| v.has(k)) {
            self.report.error(
                &value.span(),
                "git.deny: a deny rule needs at least one of host, repo or ref; \
                 to deny all git, write host = \"*\"",
            );
        }
        if self.report.errors.len() == errors_before {
            let rule = self.rule_ref(&value.span(), SECTION.to_owned());
            self.out.deny.push(GitDenyRule {
                host: v.glob("host"),
                repo,
                refs,
                rule,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decision;
    use crate::{Policy, Request, Source};

    const TEXT: &str = r#"
[[git.allow]]
host = "GitHub.com"
repo = "acme/*"
push = ["agent/*", "refs/tags/v*"]

[[git.allow]]
host = "git.corp:2222"
repo = "team/**"
push = ["**"]
delete = true
ssh_user = "gitolite"

[[git.deny]]
repo = "acme/secret*"

[[git.deny]]
ref = "agent/frozen"
"#;

    fn policy(text: &str) -> Policy {
        Policy::from_sources(&[Source::new("p.toml", text)]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn decide(p: &Policy, host: &str, repo: &str, op: GitOp<'_>) -> Decision {
        p.decide(&Request {
            workspace: "w",
            caller: None,
            action: Action::Git { host, repo, op },
        })
    }

    fn push(refs: &[(&str, bool)]) -> Vec<GitRefUpdate> {
        refs.iter()
            .map(|(n, delete)| GitRefUpdate {
                name: full_ref(n),
                delete: *delete,
            })
            .collect()
    }

    #[test]
    fn fetches() {
        let p = policy(TEXT);
        for (host, repo, allowed, says) in [
            ("github.com", "acme/app", true, "p.toml:2"),
            ("GITHUB.COM", "acme/app.git", true, "p.toml:2"),
            ("github.com", "/acme/app.git", true, "p.toml:2"),
            ("github.com", "acme/x/y", false, "default deny"),
            ("github.com", "other/app", false, "default deny"),
            (
                "github.com",
                "acme/secret-x",
                false,
                "[[git.deny]] (p.toml:14)",
            ),
            ("github.com", "acme/../other/app", false, "'..'"),
            ("github.com", "acme//app", false, "empty segments"),
            ("github.com", "acme/%2e%2e/app", false, "contains '%'"),
            ("github.com", "-oProxyCommand=x", false, "contains '='"),
            ("github.com", "-upload-pack", false, "starts with \"-\""),
            (
                "github.com",
                "acme/app' ; rm -rf ~ '",
                false,
                "contains '\\''",
            ),
            ("github.com", "//acme/app", false, "starts with \"/\""),
            ("github.com:22", "acme/app", false, "default deny"),
            ("git hub.com", "acme/app", false, "contains ' '"),
            ("-oProxyCommand=x", "acme/app", false, "starts with \"-\""),
            ("git.corp:2222", "team/a/b", true, "p.toml:7"),
        ] {
            let d = decide(&p, host, repo, GitOp::Fetch);
            assert_eq!(
                d.verdict == Verdict::Allow,
                allowed,
                "{host} {repo}: {}",
                d.reason
            );
            assert!(d.reason.contains(says), "{host} {repo}: {}", d.reason);
        }
    }

    #[test]
    fn pushes_are_decided_whole() {
        let p = policy(TEXT);
        let gh =
            |refs: &[(&str, bool)]| decide(&p, "github.com", "acme/app", GitOp::Push(&push(refs)));
        let d = gh(&[("agent/x", false), ("refs/tags/v1", false)]);
        assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
        assert!(
            d.reason.contains("refs/heads/agent/x, refs/tags/v1"),
            "{}",
            d.reason
        );
        for (refs, says) in [
            (
                &[("main", false)][..],
                "ref \"refs/heads/main\" is not in push",
            ),
            (
                &[("agent/x", false), ("main", false)],
                "\"refs/heads/main\"",
            ),
            (&[("agent/x", true)], "needs delete = true"),
            (&[("agent/x/y", false)], "not in push"),
            (&[("agent/frozen", false)], "[[git.deny]] (p.toml:17): ref"),
        ] {
            let d = gh(refs);
            assert_eq!(d.verdict, Verdict::Deny, "{refs:?}: {}", d.reason);
            assert!(d.reason.contains(says), "{refs:?}: {}", d.reason);
            assert!(d.reason.contains("p.toml:"), "names the rule: {}", d.reason);
        }
        let d = decide(
            &p,
            "git.corp:2222",
            "team/a",
            GitOp::Push(&push(&[("main", true)])),
        );
        assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
        let d = decide(&p, "github.com", "acme/app", GitOp::Push(&[]));
        assert_eq!(d.verdict, Verdict::Deny);
        let bad = [GitRefUpdate {
            name: "HEAD".into(),
            delete: false,
        }];
        let d = decide(&p, "github.com", "acme/app", GitOp::Push(&bad));
        assert!(d.reason.contains("invalid ref"), "{}", d.reason);
    }

    #[test]
    fn opening_a_push_needs_a_push_rule_and_defers_its_terms() {
        let p = policy(
            "[[git.allow]]\nhost = \"h\"\nrepo = \"r/*\"\npush = [\"a\"]\napprove = \"prompt\"\nrate = \"1/min\"\n\n\
             [[git.allow]]\nhost = \"h\"\nrepo = \"ro/*\"\n",
        );
        let d = decide(&p, "h", "r/x", GitOp::PushOpen);
        assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
        let grant = match d.grant {
            Some(crate::Grant::Git(g)) => g,
            other => panic!("{other:?}"),
        };
        assert_eq!((grant.approve, grant.rate), (None, None));
        assert_eq!(grant.ssh_user, "git");
        let d = decide(&p, "h", "ro/x", GitOp::PushOpen);
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(d.reason.contains("allows no push"), "{}", d.reason);
        assert_eq!(
            decide(&p, "h", "ro/x", GitOp::Fetch).verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn hosts_are_listed_once_unless_denied_whole() {
        let p = policy(
            "[[git.allow]]\nhost = \"B\"\nrepo = \"*\"\n[[git.allow]]\nhost = \"a\"\nrepo = \"*\"\n\
             [[git.allow]]\nhost = \"b\"\nrepo = \"x\"\n[[git.allow]]\nhost = \"c\"\nrepo = \"*\"\n\
             [[git.deny]]\nhost = \"c\"\n",
        );
        assert_eq!(p.sections.git.hosts(), ["a", "b"]);
    }
}
