//! Reading values out of a policy document: the typed readers every section
//! uses, each reporting a mistake at its `file:line:col` and going on, so
//! that all mistakes of a file are reported at once.
//!
//! The document is read as a `toml::de::DeTable` rather than through serde
//! structs: that gives the span of every key and value (for `line:col` in
//! errors), the span of every `[table]` header (for rule references), and lets
//! validation go on after the first mistake.

use std::ops::Range;
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use nexus_protocol::units;

use super::decision::{Approve, RuleRef};
use super::diag::Reporter;
use super::rate::{RATE_EXPECTED, Rate};
use super::{Field, Kind, expected};

/// The longest token name.
pub(crate) const MAX_TOKEN_NAME: usize = 64;

/// A key with its span, as the TOML parser gives it.
pub(crate) type Key<'i> = Spanned<DeString<'i>>;

/// A value with its span, as the TOML parser gives it.
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Reads one section of one document: reports go to `report`, rules to `out`.
pub(crate) struct Parser<'r, 'a, O> {
    /// Where mistakes go.
    pub(crate) report: &'r mut Reporter<'a>,
    /// What the section found so far.
    pub(crate) out: O,
}

/// A compiled case-insensitive glob with the text it came from.
#[derive(Clone, Debug)]
pub(crate) struct Glob {
    /// The glob as written.
    pub pattern: String,
    /// The compiled glob.
    pub matcher: GlobMatcher,
}

/// One key's value as its [`Kind`] read it.
#[derive(Debug)]
enum Found {
    /// Present but wrong; the error is reported.
    Bad,
    /// A [`Kind::Custom`] key, for the section to read.
    Custom,
    Text(String),
    Bool(bool),
    Approve(Approve),
    Rate(Rate),
    Duration(Duration),
    Size(u64),
    List(Vec<String>),
    Glob(Glob),
}

/// The keys of one table, each read as its [`Field`] declares; a key
/// written wrong is present (see [`Values::has`]) but yields no value.
#[derive(Debug, Default)]
pub(crate) struct Values<'v> {
    /// Each key: its name, dotted path, value as written, and as read.
    found: Vec<(&'static str, String, &'v Value<'v>, Found)>,
}

impl<'v> Values<'v> {
    fn get(&self, name: &str) -> Option<&Found> {
        self.found
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|(.., f)| f)
    }

    /// Whether the table holds key `name`, valid or not.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Key `name`'s dotted path and value as written: a [`Kind::Custom`]
    /// key for the section to read, or another for a further check.
    pub(crate) fn at(&self, name: &str) -> Option<(&str, &'v Value<'v>)> {
        self.found
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|(_, path, value, _)| (path.as_str(), *value))
    }

    /// A [`Kind::Text`] or [`Kind::Checked`] key.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            Found::Text(t) => Some(t),
            _ => None,
        }
    }

    /// A [`Kind::Bool`] key.
    pub(crate) fn bool(&self, name: &str) -> Option<bool> {
        match self.get(name)? {
            Found::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A [`Kind::Approve`] key.
    pub(crate) fn approve(&self, name: &str) -> Option<Approve> {
        match self.get(name)? {
            Found::Approve(a) => Some(*a),
            _ => None,
        }
    }

    /// A [`Kind::Rate`] key.
    pub(crate) fn rate(&self, name: &str) -> Option<Rate> {
        match self.get(name)? {
            Found::Rate(r) => Some(*r),
            _ => None,
        }
    }

    /// A [`Kind::Timeout`] key.
    pub(crate) fn duration(&self, name: &str) -> Option<Duration> {
        match self.get(name)? {
            Found::Duration(d) => Some(*d),
            _ => None,
        }
    }

    /// A [`Kind::Size`] key.
    pub(crate) fn size(&self, name: &str) -> Option<u64> {
        match self.get(name)? {
            Found::Size(n) => Some(*n),
            _ => None,
        }
    }

    /// A [`Kind::List`] key.
    pub(crate) fn list(&self, name: &str) -> Option<Vec<String>> {
        match self.get(name)? {
            Found::List(l) => Some(l.clone()),
            _ => None,
        }
    }

    /// A [`Kind::Glob`] key.
    pub(crate) fn glob(&self, name: &str) -> Option<Glob> {
        match self.get(name)? {
            Found::Glob(g) => Some(g.clone()),
            _ => None,
        }
    }
}

impl<O> Parser<'_, '_, O> {
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

    /// Reads every key of `table` (written at `section`, e.g. `tools.gh`)
    /// as `fields` declare it, reporting each mistake at its position. A
    /// key not declared is an error listing the declared ones, followed by
    /// the hint `hints` give for that key, if any.
    pub(crate) fn fields<'v>(
        &mut self,
        section: &str,
        fields: &[Field],
        table: &'v DeTable<'v>,
        hints: &[(&str, &str)],
    ) -> Values<'v> {
        let mut values = Values::default();
        for (key, item) in table {
            let name: &str = key.get_ref();
            let Some(field) = fields.iter().find(|f| f.name == name) else {
                let hint = hints
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map_or("", |(_, h)| h);
                self.unknown_key(section, key, &format!("{}{hint}", expected(fields)));
                continue;
            };
            let path = format!("{section}.{}", path_key(name));
            let found = match field.kind {
                Kind::Custom => Some(Found::Custom),
                Kind::Text => self
                    .string(&path, item, "a string")
                    .map(|t| Found::Text(t.to_owned())),
                Kind::Bool => match item.get_ref() {
                    DeValue::Boolean(b) => Some(Found::Bool(*b)),
                    other => {
                        self.wrong_type(&path, item, other, "true or false");
                        None
                    }
                },
                Kind::Approve => self.approve(&path, item).map(Found::Approve),
                Kind::Rate => self.rate(&path, item).map(Found::Rate),
                Kind::Timeout(max) => self.timeout(&path, item, max).map(Found::Duration),
                Kind::Size(max) => self.size(&path, item, max).map(Found::Size),
                Kind::Checked { expected, check } => self
                    .checked_string(&path, item, expected, check)
                    .map(Found::Text),
                Kind::List {
                    expected,
                    check,
                    when_empty,
                } => self
                    .string_list(&path, item, expected, check, when_empty)
                    .map(Found::List),
                Kind::Glob(over) => self.glob(&path, item, over).map(Found::Glob),
            };
            let found = found.unwrap_or(Found::Bad);
            values.found.push((field.name, path, item, found));
        }
        values
    }

    /// `[[X.allow]]` or `[[X.deny]]`: an array of tables, each checked by `rule`.
    pub(crate) fn rule_list(
        &mut self,
        section: &str,
        value: &Value<'_>,
        mut rule: impl FnMut(&mut Self, &Value<'_>),
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
}
