//! What the sections share: deny rules with one glob field (`[[tokens.deny]]
//! name = ...`, `[[files.deny]] path = ...`) and the shape of a denial.

use globset::GlobMatcher;
use toml::de::DeValue;

use super::Field;
use super::decision::{Decided, RuleRef, Verdict};
use super::read::{Key, Parser, Value, compile_glob};

/// A denial by `rule` (`None`: the default deny).
pub(crate) fn deny<G>(rule: Option<RuleRef>, reason: String) -> Decided<G> {
    Decided {
        verdict: Verdict::Deny,
        rule,
        reason,
        grant: None,
    }
}

/// A deny rule with one glob: `[[tokens.deny]] name`, `[[files.deny]] path`,
/// `[[tools.deny]] name`, `[[http.deny]] name`.
#[derive(Clone, Debug)]
pub(crate) struct DenyRule {
    /// The glob as written.
    pub pattern: String,
    /// The compiled glob (case-insensitive).
    pub matcher: GlobMatcher,
    /// Where the rule is written.
    pub rule: RuleRef,
}

/// How a section writes its glob deny rules.
pub(crate) struct DenyShape<'a> {
    /// The table, e.g. `tokens.deny`.
    pub section: &'a str,
    /// Its declared keys: the glob first, then `description`.
    pub fields: &'a [Field],
    /// An example glob, for messages.
    pub example: &'a str,
    /// What the glob is matched against, e.g. `token names`.
    pub over: &'a str,
}

impl<O> Parser<'_, '_, O> {
    /// `[X]` holding `[X.NAME]` tables and `[[X.deny]]` rules of `shape`:
    /// each named table goes to `named`; the valid deny rules come back.
    /// `what` names the tables for a value of the wrong type.
    pub(crate) fn named_tables(
        &mut self,
        section: &str,
        what: &str,
        value: &Value<'_>,
        shape: &DenyShape<'_>,
        named: fn(&mut Self, &Key<'_>, &Value<'_>),
    ) -> Vec<DenyRule> {
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            self.wrong_type(section, value, found, what);
            return Vec::new();
        };
        let mut denies = Vec::new();
        for (key, value) in table {
            if key.get_ref() == "deny" {
                denies.extend(self.glob_denies(shape, value));
            } else {
                named(self, key, value);
            }
        }
        denies
    }

    /// `[[X.deny]]`: the valid rules of `shape`; errors are reported.
    pub(crate) fn glob_denies(
        &mut self,
        shape: &DenyShape<'_>,
        value: &Value<'_>,
    ) -> Vec<DenyRule> {
        let mut denies = Vec::new();
        self.rule_list(shape.section, value, |p, rule| {
            denies.extend(p.glob_deny(shape, rule));
        });
        denies
    }

    /// One deny rule of `shape`; errors are reported, `None` then.
    pub(crate) fn glob_deny(
        &mut self,
        shape: &DenyShape<'_>,
        value: &Value<'_>,
    ) -> Option<DenyRule> {
        let DenyShape {
            section,
            fields,
            example,
            over,
        } = *shape;
        let field = fields.first().map_or("name", |f| f.name);
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            let expected = format!("a table with {field} = \"GLOB\"");
            self.wrong_type(section, value, found, &expected);
            return None;
        };
        let errors_before = self.report.errors.len();
        let v = self.fields(section, fields, table, &[]);
        let pattern = v.at(field).and_then(|(at, item)| {
            self.string(at, item, &format!("a glob over {over} like {example:?}"))
                .map(|p| (p.to_owned(), item.span()))
        });
        if !v.has(field) {
            self.report.error(
                &value.span(),
                format!(
                    "{section}: missing {field}; expected {field} = \"GLOB\" (e.g. {example:?})"
                ),
            );
        }
        let (pattern, span) = pattern?;
        match compile_glob(&pattern) {
            Ok(matcher) if self.report.errors.len() == errors_before => Some(DenyRule {
                pattern,
                matcher,
                rule: self.rule_ref(&value.span(), section.to_owned()),
            }),
            Ok(_) => None,
            Err(why) => {
                self.report.error(
                    &span,
                    format!(
                        "{section}.{field}: invalid glob {pattern:?} ({why}); expected a glob over \
                         {over} using *, ? and [...]"
                    ),
                );
                None
            }
        }
    }
}
