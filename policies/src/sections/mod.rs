//! The policy sections, one file each: its tables of declared keys, its
//! rules, how it reads them, decides, caps a grant under a ceiling layer
//! and warns about rules that never fire.
//!
//! A section depends only on [`crate::schema`] (and `http` on `tokens`,
//! whose tokens it binds) and implements
//! [`PolicySection`](crate::schema::section::PolicySection); the engine holds one of
//! each ([`Sections`]) and dispatches.

pub(crate) mod files;
pub(crate) mod git;
pub(crate) mod http;
pub(crate) mod ssh;
pub(crate) mod tokens;
pub(crate) mod tools;

use crate::schema::diag::Diagnostic;
use crate::schema::section::PolicySection as _;

use files::FilesSection;
use git::GitSection;
use http::HttpSection;
use ssh::SshSection;
use tokens::TokensSection;
use tools::ToolsSection;

/// One of each section: the rules of one source, or merged.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sections {
    pub(crate) tokens: TokensSection,
    pub(crate) ssh: SshSection,
    pub(crate) git: GitSection,
    pub(crate) files: FilesSection,
    pub(crate) tools: ToolsSection,
    pub(crate) http: HttpSection,
}

impl Sections {
    /// Adds the rules of a later source.
    pub(crate) fn append(&mut self, other: Sections) {
        self.tokens.append(other.tokens);
        self.ssh.append(other.ssh);
        self.git.append(other.git);
        self.files.append(other.files);
        self.tools.append(other.tools);
        self.http.append(other.http);
    }

    /// Adds every deny rule of `other` (after these sections' own).
    pub(crate) fn add_denies_from(&mut self, other: &Sections) {
        self.tokens.add_denies_from(&other.tokens);
        self.ssh.add_denies_from(&other.ssh);
        self.git.add_denies_from(&other.git);
        self.files.add_denies_from(&other.files);
        self.tools.add_denies_from(&other.tools);
        self.http.add_denies_from(&other.http);
    }

    /// Every section's warnings, and those of HTTP APIs about the tokens
    /// they bind.
    pub(crate) fn cross_check(&self) -> Vec<Diagnostic> {
        let mut found = self.tokens.cross_check();
        found.extend(self.ssh.cross_check());
        found.extend(self.git.cross_check());
        found.extend(self.files.cross_check());
        found.extend(self.tools.cross_check());
        found.extend(self.http.cross_check());
        found.extend(self.http.cross_check_tokens(&self.tokens));
        found
    }
}
