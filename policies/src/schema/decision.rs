//! The vocabulary every section decides in: verdicts, rule references,
//! approval, and a decision carrying the section's own grant.

use std::fmt;

use super::diag::Diagnostic;

/// Longest part of a requested name quoted in a decision reason; the name comes
/// from the untrusted workspace and must not flood the audit log.
const MAX_SHOWN_NAME: usize = 96;

/// Allow or deny.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The laptop carries the call out as the grant says.
    Allow,
    /// The laptop refuses the call.
    Deny,
}

/// Where a rule is written: `Display` gives `file:line`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// Source name (file path) holding the rule.
    pub file: String,
    /// 1-based line of the rule's table header (see the crate docs).
    pub line: usize,
    /// 1-based character column of the rule's table header.
    pub col: usize,
    /// Dotted path of the rule's table, e.g. `tokens.openai` or `tokens.deny`.
    pub section: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

impl RuleRef {
    /// A diagnostic placed at this rule.
    pub(crate) fn diagnostic(&self, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
            message,
        }
    }
}

/// Whether a grant needs the laptop user's approval first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approve {
    /// Ask the laptop user each time (`approve = "prompt"`).
    Prompt,
}

/// The outcome of deciding a request, with a grant of type `G`: a
/// section's own rule inside the policy crate, [`crate::Grant`] outside
/// (see [`crate::Decision`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Decided<G> {
    /// Allow or deny.
    pub verdict: Verdict,
    /// The rule that decided; `None` for the default deny.
    pub rule: Option<RuleRef>,
    /// One human-readable line saying why; never holds a secret value.
    pub reason: String,
    /// What the laptop must do; `Some` only when allowed.
    pub grant: Option<G>,
}

impl<G> Decided<G> {
    /// The same decision with its grant wrapped by `wrap`.
    pub(crate) fn map<H>(self, wrap: impl FnOnce(G) -> H) -> Decided<H> {
        Decided {
            verdict: self.verdict,
            rule: self.rule,
            reason: self.reason,
            grant: self.grant.map(wrap),
        }
    }
}

/// The requested name quoted and escaped for a reason line, cut if very long.
pub(crate) fn shown_name(name: &str) -> String {
    match name.char_indices().nth(MAX_SHOWN_NAME) {
        Some((cut, _)) => format!("{:?}", format!("{}…", &name[..cut])),
        None => format!("{name:?}"),
    }
}
