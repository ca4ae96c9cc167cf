//! The policy sections, one file each: its tables of declared keys, its
//! rules, how it reads them, decides, caps a grant under a ceiling layer,
//! warns about rules that never fire and builds a probe.
//!
//! A section depends only on [`crate::schema`] (and `http` on `tokens`,
//! whose tokens it binds) and implements
//! [`PolicySection`](crate::schema::section::PolicySection). [`Sections`]
//! holds one of each, listed once in the `sections!` call below, and does
//! to each alike what the engine asks of all of them.

pub(crate) mod files;
pub(crate) mod git;
pub(crate) mod git_credential;
pub(crate) mod http;
pub(crate) mod ssh;
pub(crate) mod tokens;
pub(crate) mod tools;

use nexus_protocol::Section;

use crate::schema::Table;
use crate::schema::decision::RuleRef;
use crate::schema::diag::{Diagnostic, Reporter};
use crate::schema::probe::ProbeArgs;
use crate::schema::read::{Parser, Value};
use crate::schema::request::Action;
use crate::schema::section::PolicySection;

use files::FilesSection;
use git::GitSection;
use git_credential::GitCredentialSection;
use http::HttpSection;
use ssh::SshSection;
use tokens::TokensSection;
use tools::ToolsSection;

/// Declares [`Sections`], one field per section in [`Section::ALL`]
/// order, and the methods that treat every section alike.
macro_rules! sections {
    ($($field:ident: $ty:ty),* $(,)?) => {
        /// One of each section: the rules of one source, or merged.
        #[derive(Clone, Debug, Default)]
        pub(crate) struct Sections {
            $(pub(crate) $field: $ty,)*
        }

        impl Sections {
            /// Every section's tables, in [`Section::ALL`] order.
            pub(crate) const SCHEMA: &[&[Table]] = &[$(<$ty>::TABLES),*];

            /// The sections held, in field order.
            #[cfg(test)]
            const NAMES: &[Section] = &[$(<$ty>::NAME),*];

            /// Reads `value`, the whole table of top-level key `name`, with
            /// the reader of the section of that name, if there is one.
            pub(crate) fn parse(
                &mut self,
                report: &mut Reporter<'_>,
                name: &str,
                value: &Value<'_>,
            ) -> Option<Section> {
                $(
                    if name == <$ty>::NAME.section_name() {
                        let mut p = Parser {
                            report: &mut *report,
                            out: std::mem::take(&mut self.$field),
                        };
                        <$ty>::parse(&mut p, value);
                        self.$field = p.out;
                        return Some(<$ty>::NAME);
                    }
                )*
                None
            }

            /// Adds the rules of a later source.
            pub(crate) fn append(&mut self, other: Sections) {
                $(self.$field.append(other.$field);)*
            }

            /// Adds every deny rule of `other` (after these sections' own).
            pub(crate) fn add_denies_from(&mut self, other: &Sections) {
                $(self.$field.add_denies_from(&other.$field);)*
            }

            /// Every section's warnings, and those of HTTP APIs about the
            /// tokens they bind.
            pub(crate) fn cross_check(&self) -> Vec<Diagnostic> {
                let mut found = Vec::new();
                $(found.extend(self.$field.cross_check());)*
                found.extend(self.http.cross_check_tokens(&self.tokens));
                found
            }

            /// Every section's rules that reach past `ceiling`, an org
            /// baseline layer's sections (`capped`: whether it has allow
            /// rules in a section).
            pub(crate) fn beyond<'a>(
                &'a self,
                ceiling: &Sections,
                capped: impl Fn(Section) -> bool,
            ) -> Vec<(&'a RuleRef, String)> {
                let mut out = Vec::new();
                $(out.extend(self.$field.beyond(&ceiling.$field, capped(<$ty>::NAME)));)*
                out
            }

            /// Builds the action a probe of `section` asks for and decides
            /// it with `decide`; `all`: the sections of every policy of the set.
            pub(crate) fn probe<T>(
                section: Section,
                args: &ProbeArgs<'_>,
                all: &[&Sections],
                decide: impl FnOnce(Action<'_>) -> T,
            ) -> Result<T, String> {
                $(
                    if section == <$ty>::NAME {
                        let layers: Vec<&$ty> = all.iter().map(|s| &s.$field).collect();
                        return <$ty>::probe(args, &layers, decide);
                    }
                )*
                Err(format!("{section}: no policy section decides it"))
            }
        }
    };
}

sections! {
    tokens: TokensSection,
    ssh: SshSection,
    git_credential: GitCredentialSection,
    files: FilesSection,
    tools: ToolsSection,
    http: HttpSection,
    git: GitSection,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_is_held_once_in_protocol_order() {
        assert_eq!(Sections::NAMES, Section::ALL);
    }
}
