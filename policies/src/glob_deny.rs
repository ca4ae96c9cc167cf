//! What the git-credential, files and tools sections share: deny rules with
//! one glob field (`[[files.deny]] path = ...`, `[[tools.deny]] name = ...`)
//! and the shape of a denial.

use globset::GlobMatcher;
use toml::de::DeValue;

use crate::engine::{Decision, RuleRef, Verdict};
use crate::parse::{Parser, Value, compile_glob, path_key};
use crate::schema::{Field, expected};

/// A denial by `rule` (`None`: the default deny).
pub(crate) fn deny(rule: Option<RuleRef>, reason: String) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        rule,
        reason,
        grant: None,
    }
}

/// A parsed single-glob deny rule.
#[derive(Clone, Debug)]
pub(crate) struct GlobDeny {
    /// The glob as written.
    pub pattern: String,
    /// The compiled glob (case-insensitive).
    pub matcher: GlobMatcher,
    /// Where the rule is written.
    pub rule: RuleRef,
}

impl Parser<'_> {
    /// One `[[SECTION]]` deny rule declared by `fields`: its first field, a
    /// glob, then `description`; `example` shows one in messages.
    pub(crate) fn glob_deny(
        &mut self,
        section: &str,
        fields: &[Field],
        example: &str,
        value: &Value<'_>,
    ) -> Option<GlobDeny> {
        let field = fields.first().map_or("name", |f| f.name);
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            let expected = format!("a table with {field} = \"GLOB\"");
            self.wrong_type(section, value, found, &expected);
            return None;
        };
        let errors_before = self.report.errors.len();
        let mut pattern = None;
        for (key, item) in table {
            let at = format!("{section}.{}", path_key(key.get_ref()));
            match key.get_ref().as_ref() {
                k if k == field => {
                    pattern = self
                        .string(&at, item, &format!("a glob like {example:?}"))
                        .map(|p| (p.to_owned(), item.span()));
                }
                "description" => {
                    self.string(&at, item, "a string");
                }
                _ => self.unknown_key(section, key, &expected(fields)),
            }
        }
        let Some((pattern, span)) = pattern else {
            if self.report.errors.len() == errors_before {
                self.report.error(
                    &value.span(),
                    format!(
                        "{section}: missing {field}; expected {field} = \"GLOB\" (e.g. {example:?})"
                    ),
                );
            }
            return None;
        };
        match compile_glob(&pattern) {
            Ok(matcher) if self.report.errors.len() == errors_before => Some(GlobDeny {
                pattern,
                matcher,
                rule: self.rule_ref(&value.span(), section.to_owned()),
            }),
            Ok(_) => None,
            Err(why) => {
                self.report
                    .error(&span, format!("{section}.{field}: invalid glob ({why})"));
                None
            }
        }
    }
}
