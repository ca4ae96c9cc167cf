//! The declared shape of every policy table: its keys, their types,
//! defaults, limits and meaning. Parsers take their unknown-key messages
//! from here, and `docs/policy.md` is checked against it (see
//! `tests/schema_doc.rs`), so the schema is written once.
//!
//! This is the bottom layer of the crate: the vocabulary the sections
//! decide in (`decision`), diagnostics, rates, the typed value readers
//! (`read`), glob deny rules, and what a section is (`section`). It imports nothing else of the crate;
//! `sections` build on it, `engine` on those, `layers` and `explain` on top.

pub(crate) mod decision;
pub(crate) mod diag;
pub(crate) mod glob_deny;
pub(crate) mod probe;
pub(crate) mod rate;
pub(crate) mod read;
pub(crate) mod request;
pub(crate) mod section;

use std::time::Duration;

/// How a key's value is read and checked (see `read::Parser::fields`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// Read by the section itself: its shape is the section's own.
    Custom,
    /// Any string.
    Text,
    /// `true` or `false`.
    Bool,
    /// `approve = "prompt"`.
    Approve,
    /// `rate = "N/s|min|h"`.
    Rate,
    /// A duration in the one grammar, more than 0 and at most this.
    Timeout(Duration),
    /// A size in the one grammar, at most this many bytes.
    Size(u64),
    /// A string that passes `check`; `expected` names its form.
    Checked {
        /// The form, for a value of the wrong type.
        expected: &'static str,
        /// Why a string is refused.
        check: fn(&str) -> Result<(), String>,
    },
    /// An array of strings that each pass `check`.
    List {
        /// The form, for a value of the wrong type.
        expected: &'static str,
        /// Why an element is refused.
        check: fn(&str) -> Result<(), String>,
        /// The error for an empty array; empty when `[]` is fine.
        when_empty: &'static str,
    },
    /// A case-insensitive glob over what this names (`host names like "prod-*"`).
    Glob(&'static str),
}

/// One key of a policy table.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// The key as written in policy files.
    pub name: &'static str,
    /// Its type, as the reference names it (`string`, `size`, `list of globs`...).
    pub ty: &'static str,
    /// Whether a table without it is an error.
    pub required: bool,
    /// The value taken when the key is absent; empty when none applies.
    pub default: &'static str,
    /// Bounds beyond the type; empty when none.
    pub limits: &'static str,
    /// What it means, in one line.
    pub help: &'static str,
    /// How its value is read.
    pub(crate) kind: Kind,
}

impl Field {
    /// An optional key with no default and no limits.
    #[must_use]
    pub const fn optional(name: &'static str, ty: &'static str, help: &'static str) -> Field {
        Field {
            name,
            ty,
            required: false,
            default: "",
            limits: "",
            help,
            kind: Kind::Custom,
        }
    }

    /// A key every table must have.
    #[must_use]
    pub const fn required(name: &'static str, ty: &'static str, help: &'static str) -> Field {
        Field {
            required: true,
            ..Field::optional(name, ty, help)
        }
    }

    /// This key with a default.
    #[must_use]
    pub const fn default(self, default: &'static str) -> Field {
        Field { default, ..self }
    }

    /// This key with another meaning (a shared key in one table).
    #[must_use]
    pub const fn help(self, help: &'static str) -> Field {
        Field { help, ..self }
    }

    /// This key with limits.
    #[must_use]
    pub const fn limits(self, limits: &'static str) -> Field {
        Field { limits, ..self }
    }

    /// This key, read as `kind`.
    #[must_use]
    pub(crate) const fn read(self, kind: Kind) -> Field {
        Field { kind, ..self }
    }
}

/// `approve = "prompt"`, shared by every rule that can ask the laptop user.
pub const APPROVE: Field = Field::optional(
    "approve",
    "\"prompt\"",
    "ask the laptop user before each use",
)
.read(Kind::Approve);

/// `rate = "60/min"`, shared by every rule with a rate limit.
pub const RATE: Field = Field::optional(
    "rate",
    "rate",
    "at most N uses per s, min or h, e.g. \"60/min\"",
)
.read(Kind::Rate);

/// `description = "..."`, accepted by every table.
pub const DESCRIPTION: Field =
    Field::optional("description", "string", "shown in listings and prompts").read(Kind::Text);

/// One policy table: where it is written and its keys.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    /// Its header as written, e.g. `[tokens.NAME]` or `[[ssh.allow]]`.
    pub header: &'static str,
    /// Its keys, in the order messages list them.
    pub fields: &'static [Field],
}

/// `one of a, b, c`: the declared keys, for unknown-key messages.
#[must_use]
pub fn expected(fields: &[Field]) -> String {
    let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
    format!("one of {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_lists_names_in_order() {
        let fields = [
            Field::required("a", "string", "x"),
            Field::optional("b", "bool", "y").default("false"),
        ];
        assert_eq!(expected(&fields), "one of a, b");
        assert!(fields[0].required && !fields[1].required);
        assert_eq!(fields[1].default, "false");
    }
}
