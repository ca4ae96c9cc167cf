//! The `files` section: laptop files the workspace may read (`nexus-shim
//! file get`) and named sets it may install (`nexus-shim file sync`).
//!
//! Its keys are declared in the `Field` tables below and documented in
//! `docs/policy.md`.
//!
//! The engine judges paths lexically, in the `~/x` or `/abs` form the proxy
//! normalizes them to; the proxy then resolves symlinks on the laptop and
//! checks that the real file is still under the granted path.

use toml::de::DeValue;

use crate::schema::decision::{Decided, RuleRef, Verdict, shown_name};
use crate::schema::diag::Diagnostic;
use crate::schema::glob_deny::{DenyRule, DenyShape, deny};
use crate::schema::probe::{ProbeArgs, clip};
use crate::schema::read::{Key, Parser, Value, path_key, valid_token_name};
use crate::schema::request::Action;
use crate::schema::section::{PolicySection, SectionGrant, Terms};
use crate::schema::{DESCRIPTION, Field, Kind, Table};

/// `max_size`, shared by `[[files.allow]]` and `[files.sets.NAME]`.
const MAX_SIZE: Field = Field::optional("max_size", "size", "largest file handed out")
    .default("10MiB")
    .read(Kind::Size(u64::MAX));

/// The keys of `[[files.allow]]`.
const ALLOW_FIELDS: &[Field] = &[
    Field::required(
        "path",
        "path",
        "`~/...` or absolute; a trailing `/` allows every file below the directory",
    )
    .read(Kind::Checked {
        expected: "\"~/...\" or \"/...\"",
        check: check_path_msg,
    }),
    MAX_SIZE,
    DESCRIPTION,
];

/// The keys of `[[files.deny]]`.
const DENY_FIELDS: &[Field] = &[
    Field::required(
        "path",
        "glob",
        "glob over the requested path (`~/...` form), case-insensitive; `*` crosses `/`",
    ),
    DESCRIPTION,
];

/// The keys of `[files.sets.NAME]`.
const SET_FIELDS: &[Field] = &[
    Field::required(
        "paths",
        "list of paths",
        "files or directories (`~/...`) installed into the workspace's home",
    )
    .read(Kind::List {
        expected: "a list of paths like [\"~/.opencode/config.json\"]",
        check: check_set_path,
        when_empty: "the set would install nothing",
    }),
    MAX_SIZE.limits("per file"),
    DESCRIPTION,
];

/// The tables of the `files` section.
const TABLES: &[Table] = &[
    Table {
        header: "[[files.allow]]",
        fields: ALLOW_FIELDS,
    },
    Table {
        header: "[[files.deny]]",
        fields: DENY_FIELDS,
    },
    Table {
        header: "[files.sets.NAME]",
        fields: SET_FIELDS,
    },
];

/// Default per-file size limit (10 MiB).
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;

/// A `[[files.allow]]` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRule {
    /// `~/x` or `/x`, as written; a directory when it ends in `/`.
    pub path: String,
    /// Largest file size handed out.
    pub max_size: u64,
    /// Where the rule is written.
    pub rule: RuleRef,
}

impl FileRule {
    /// Whether the rule allows a whole directory tree.
    #[must_use]
    pub fn is_dir(&self) -> bool {
        self.path.ends_with('/')
    }

    /// A directory rule covers the directory itself (`file get ~/dir/`)
    /// and everything below it.
    fn covers(&self, path: &str) -> bool {
        if self.is_dir() {
            path.starts_with(&self.path) || format!("{path}/") == self.path
        } else {
            path == self.path
        }
    }
}

/// A `[files.sets.NAME]` declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSet {
    /// The set's name.
    pub name: String,
    /// Files (`~/x`) or directories (`~/x/`) in the set.
    pub paths: Vec<String>,
    /// Largest size of each file.
    pub max_size: u64,
    /// Where the set is declared.
    pub rule: RuleRef,
}

/// Every files rule of one source (or, merged, of all).
#[derive(Clone, Debug, Default)]
pub(crate) struct FilesSection {
    allow: Vec<FileRule>,
    deny: Vec<DenyRule>,
    sets: Vec<FileSet>,
}

impl PolicySection for FilesSection {
    const NAME: nexus_protocol::Section = nexus_protocol::Section::Files;
    const TABLES: &'static [Table] = TABLES;

    fn parse(p: &mut Parser<'_, '_, Self>, value: &Value<'_>) {
        p.files(value);
    }

    fn append(&mut self, other: Self) {
        self.allow.extend(other.allow);
        self.deny.extend(other.deny);
        self.sets.extend(other.sets);
    }

    fn add_denies_from(&mut self, other: &Self) {
        self.deny.extend(other.deny.iter().cloned());
    }

    /// `path` (a file read) or `set` (a `[files.sets.NAME]`).
    fn probe<T>(
        args: &ProbeArgs<'_>,
        _: &[&Self],
        decide: impl FnOnce(Action<'_>) -> T,
    ) -> Result<T, String> {
        args.check_keys(&["path", "set"])?;
        match (args.arg("path"), args.arg("set")) {
            (Some(path), None) => {
                check_path(path).map_err(|why| format!("path={:?}: {why}", clip(path)))?;
                Ok(decide(Action::File { path }))
            }
            (None, Some(name)) => Ok(decide(Action::FileSet { name })),
            _ => Err(format!(
                "--tool {} needs one of --arg path=PATH (e.g. path=~/.gitconfig) or --arg set=NAME",
                args.tool
            )),
        }
    }

    fn cross_check(&self) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for rule in &self.allow {
            if let Some(d) = self.denied(&rule.path) {
                out.push(rule.rule.diagnostic(format!(
                    "[[files.allow]] path = {:?} is denied by [[files.deny]] ({})",
                    rule.path, d.rule
                )));
            }
        }
        out
    }
}

/// Every allowing layer's file rule caps the granted one: the smallest
/// `max_size` applies, and the narrowest tree (all of them cover the
/// request, so the longest path lies inside the others) is what the proxy
/// checks the opened file against.
impl SectionGrant for FileRule {
    fn terms(&self) -> Terms<'_> {
        Terms {
            rate: None,
            approve: None,
            rule: &self.rule,
        }
    }

    /// The narrower of the two grants: a file rule stays a file rule (a
    /// ceiling's directory of the same name must not widen it into the
    /// tree), and of two directories the deeper one wins.
    fn cap(&mut self, ceiling: &Self, _org: bool) {
        self.max_size = self.max_size.min(ceiling.max_size);
        let narrower = match (self.is_dir(), ceiling.is_dir()) {
            (false, _) => false,
            (true, false) => true,
            (true, true) => ceiling.path.len() > self.path.len(),
        };
        if narrower {
            self.path.clone_from(&ceiling.path);
        }
    }
}

/// A set's `max_size` is capped like a file rule's, and a set keeps only
/// the entries every allowing layer's set of that name covers.
impl SectionGrant for FileSet {
    fn terms(&self) -> Terms<'_> {
        Terms {
            rate: None,
            approve: None,
            rule: &self.rule,
        }
    }

    fn cap(&mut self, ceiling: &Self, _org: bool) {
        self.max_size = self.max_size.min(ceiling.max_size);
        self.paths.retain(|p| {
            ceiling
                .paths
                .iter()
                .any(|b| p == b || (b.ends_with('/') && p.starts_with(b.as_str())))
        });
    }
}

impl FilesSection {
    /// The deny rule matching `path`, if any.
    fn denied(&self, path: &str) -> Option<&DenyRule> {
        self.deny.iter().find(|d| d.matcher.is_match(path))
    }

    /// Decides a read of `path` (normalized: `~/x` or `/x`).
    pub(crate) fn decide_file(&self, path: &str) -> Decided<FileRule> {
        let shown = shown_name(path);
        if let Err(why) = check_path(path) {
            return deny(None, format!("file {shown} refused: {why}"));
        }
        if let Some(d) = self.denied(path) {
            return deny(
                Some(d.rule.clone()),
                format!(
                    "file {shown} denied by [[files.deny]] path = {:?} ({})",
                    d.pattern, d.rule
                ),
            );
        }
        match self.allow.iter().find(|r| r.covers(path)) {
            Some(rule) => Decided {
                verdict: Verdict::Allow,
                reason: format!("file {shown} allowed by [[files.allow]] ({})", rule.rule),
                rule: Some(rule.rule.clone()),
                grant: Some(rule.clone()),
            },
            None => deny(
                None,
                format!("file {shown} is not under any [[files.allow]] path (default deny)"),
            ),
        }
    }

    /// Decides a sync of set `name`; the proxy checks each file it finds
    /// with [`FilesSection::is_denied`] too.
    pub(crate) fn decide_set(&self, name: &str) -> Decided<FileSet> {
        let shown = shown_name(name);
        match self.sets.iter().find(|s| s.name == name) {
            Some(set) => Decided {
                verdict: Verdict::Allow,
                reason: format!(
                    "file set {shown} allowed by [files.sets.{name}] ({})",
                    set.rule
                ),
                rule: Some(set.rule.clone()),
                grant: Some(set.clone()),
            },
            None => deny(
                None,
                format!("file set {shown} is not declared in the policy (default deny)"),
            ),
        }
    }

    /// Whether a deny rule matches `path` (for files found inside a set's directories).
    pub(crate) fn is_denied(&self, path: &str) -> Option<RuleRef> {
        self.denied(path).map(|d| d.rule.clone())
    }
}

/// A path the engine can judge: `~/...` or `/...`, no `.`/`..`/empty
/// segments, no NUL or control characters, no backslash.
pub fn check_path(path: &str) -> Result<(), String> {
    let rest = if let Some(r) = path.strip_prefix("~/") {
        r
    } else if let Some(r) = path.strip_prefix('/') {
        r
    } else {
        return Err("expected a path starting with ~/ or /".to_owned());
    };
    if path.chars().any(char::is_control) || path.contains('\\') {
        return Err("the path contains a control character or a backslash".to_owned());
    }
    let body = rest.strip_suffix('/').unwrap_or(rest);
    if body.is_empty() {
        return Err("the path names a whole home or root directory".to_owned());
    }
    if body
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("the path has '.', '..' or empty segments".to_owned());
    }
    Ok(())
}

/// Set files are installed into the workspace's home, so they live in the laptop's.
fn check_set_path(p: &str) -> Result<(), String> {
    check_path_msg(p)?;
    if p.starts_with("~/") {
        Ok(())
    } else {
        Err(format!(
            "path {}: a set installs into the workspace's home, so its paths start with ~/",
            shown_name(p)
        ))
    }
}

fn check_path_msg(p: &str) -> Result<(), String> {
    check_path(p).map_err(|why| format!("path {}: {why}", shown_name(p)))
}

impl Parser<'_, '_, FilesSection> {
    /// `[files]`: `[[files.allow]]`, `[[files.deny]]`, `[files.sets.NAME]`.
    pub(crate) fn files(&mut self, value: &Value<'_>) {
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type("files", value, found, "[[files.allow]] rules");
        };
        for (key, value) in table {
            match key.get_ref().as_ref() {
                "allow" => self.rule_list("files.allow", value, Self::file_allow),
                "deny" => {
                    let shape = DenyShape {
                        section: "files.deny",
                        fields: DENY_FIELDS,
                        example: "**/*.key",
                        over: "paths",
                    };
                    let denies = self.glob_denies(&shape, value);
                    self.out.deny.extend(denies);
                }
                "sets" => self.file_sets(value),
                _ => self.unknown_key(
                    "files",
                    key,
                    "[[files.allow]], [[files.deny]] or [files.sets.NAME]",
                ),
            }
        }
    }

    fn file_allow(&mut self, value: &Value<'_>) {
        const SECTION: &str = "files.allow";
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(SECTION, value, found, "a table with path = \"~/...\"");
        };
        let errors_before = self.report.errors.len();
        let v = self.fields(SECTION, ALLOW_FIELDS, table, &[]);
        if !v.has("path") {
            self.report.error(
                &value.span(),
                "files.allow: missing path; expected path = \"~/FILE\" or \"~/DIR/\"",
            );
        }
        let path = v
            .text("path")
            .filter(|_| self.report.errors.len() == errors_before);
        if let Some(path) = path {
            let rule = self.rule_ref(&value.span(), SECTION.to_owned());
            self.out.allow.push(FileRule {
                path: path.to_owned(),
                max_size: v.size("max_size").unwrap_or(DEFAULT_MAX_SIZE),
                rule,
            });
        }
    }

    fn file_sets(&mut self, value: &Value<'_>) {
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type("files.sets", value, found, "[files.sets.NAME] tables");
        };
        for (key, value) in table {
            self.file_set(key, value);
        }
    }

    fn file_set(&mut self, key: &Key<'_>, value: &Value<'_>) {
        let name: &str = key.get_ref();
        let section = format!("files.sets.{}", path_key(name));
        if !valid_token_name(name) {
            return self.report.error(
                &key.span(),
                format!(
                    "{section}: invalid set name {}; expected 1 to 64 characters from A-Z a-z 0-9 . _ -",
                    shown_name(name)
                ),
            );
        }
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(&section, value, found, "a table with paths = [...]");
        };
        let errors_before = self.report.errors.len();
        let v = self.fields(&section, SET_FIELDS, table, &[]);
        let paths = v.list("paths");
        if paths.is_none() && self.report.errors.len() == errors_before {
            self.report.error(
                &value.span(),
                format!("{section}: missing paths; expected paths = [\"~/FILE\", \"~/DIR/\"]"),
            );
        }
        if let Some(paths) = paths.filter(|_| self.report.errors.len() == errors_before) {
            let rule = self.rule_ref(&value.span(), section);
            if let Some(first) = self.out.sets.iter().find(|s| s.name == name) {
                let msg = format!(
                    "files.sets.{name}: declared twice (first at {}); declare each set once",
                    first.rule
                );
                return self.report.error(&value.span(), msg);
            }
            self.out.sets.push(FileSet {
                name: name.to_owned(),
                paths,
                max_size: v.size("max_size").unwrap_or(DEFAULT_MAX_SIZE),
                rule,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, Policy, Request, Source};
    use crate::{Decision, Grant};

    fn decide(p: &Policy, path: &str) -> Decision {
        p.decide(&Request {
            workspace: "w",
            caller: None,
            action: Action::File { path },
        })
    }

    #[test]
    fn decisions() {
        let p = Policy::from_sources(&[Source::new(
            "p.toml",
            "[[files.allow]]\npath = \"~/.opencode/\"\n[[files.allow]]\npath = \"~/.claude/settings.json\"\nmax_size = \"1KiB\"\n[[files.deny]]\npath = \"**/*.key\"\n[files.sets.oc]\npaths = [\"~/.opencode/config.json\"]\n",
        )])
        .unwrap_or_else(|e| panic!("{e}"));
        for (path, allow, says) in [
            ("~/.opencode/config.json", true, "p.toml:1"),
            ("~/.opencode/a/b.json", true, "p.toml:1"),
            ("~/.opencode/", true, "p.toml:1"),
            ("~/.opencode", true, "p.toml:1"),
            ("~/.opencodex", false, "default deny"),
            ("~/.opencode/../.ssh/id_ed25519", false, "'..'"),
            ("~/.opencode//x", false, "empty"),
            ("~/.opencode/x.KEY", false, "files.deny"),
            ("~/.claude/settings.json", true, "p.toml:3"),
            ("~/.claude/settings.json.bak", false, "default deny"),
            ("/etc/passwd", false, "default deny"),
            ("relative", false, "~/"),
        ] {
            let d = decide(&p, path);
            assert_eq!(d.verdict == Verdict::Allow, allow, "{path}: {}", d.reason);
            assert!(d.reason.contains(says), "{path}: {}", d.reason);
        }
        let Some(Grant::File(rule)) = decide(&p, "~/.claude/settings.json").grant else {
            panic!("granted");
        };
        assert_eq!(rule.max_size, 1024);
        let set = p.decide(&Request {
            workspace: "w",
            caller: None,
            action: Action::FileSet { name: "oc" },
        });
        assert!(matches!(set.grant, Some(Grant::FileSet(ref s)) if s.paths.len() == 1));
    }
}
