//! The one vocabulary of tools and policy sections, shared by the wire
//! (which tool a call is for), the policy's layers and `policy explain`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A policy section, which is also the laptop tool that answers its calls.
///
/// Each has two names: the section's, as written in policy files
/// (`[tokens.NAME]`, `[[files.allow]]`), and the tool's, as logs, audit
/// lines and `policy explain --tool` have always called it (`token`, `file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    /// `[tokens.NAME]`: named secrets (`token get`, `exec --env`).
    Tokens,
    /// `[[ssh.allow]]`: SSH agent forwarding and SSHSIG signing.
    Ssh,
    /// `[[git-credential.allow]]`: the workspace's git credential helper.
    GitCredential,
    /// `[[files.allow]]`, `[files.sets.NAME]`: laptop files, read-only.
    Files,
    /// `[tools.NAME]`: custom laptop commands.
    Tools,
    /// `[http.NAME]`: HTTP APIs with the secret injected on the laptop.
    Http,
    /// `[[git.allow]]`: git brokered by the laptop, over SSH or HTTPS, with
    /// repository and branch rules; no credential enters the workspace.
    Git,
}

impl Section {
    /// Every section, in the order policy files and listings show them.
    pub const ALL: [Section; 7] = [
        Section::Tokens,
        Section::Ssh,
        Section::GitCredential,
        Section::Files,
        Section::Tools,
        Section::Http,
        Section::Git,
    ];

    /// The section's name in policy files: `tokens`, `git-credential`, ...
    #[must_use]
    pub const fn section_name(self) -> &'static str {
        match self {
            Section::Tokens => "tokens",
            Section::Ssh => "ssh",
            Section::GitCredential => "git-credential",
            Section::Files => "files",
            Section::Tools => "tools",
            Section::Http => "http",
            Section::Git => "git",
        }
    }

    /// The tool's name in logs, audit lines and `policy explain --tool`:
    /// `token`, `file`, `tool`, ...
    #[must_use]
    pub const fn tool_name(self) -> &'static str {
        match self {
            Section::Tokens => "token",
            Section::Ssh => "ssh",
            Section::GitCredential => "git-credential",
            Section::Files => "file",
            Section::Tools => "tool",
            Section::Http => "http",
            Section::Git => "git",
        }
    }

    /// The section whose policy-file name is `name` (`tokens`, not `token`).
    #[must_use]
    pub fn from_section_name(name: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.section_name() == name)
    }
}

impl fmt::Display for Section {
    /// The tool's name (`token`), as logs and audit lines show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tool_name())
    }
}

/// A name that is neither a tool's nor a section's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown tool {0:?}: expected one of token, ssh, git-credential, file, tool, http, git (or the section names tokens, files, tools)"
)]
pub struct UnknownSection(pub String);

impl FromStr for Section {
    type Err = UnknownSection;

    /// Reads either name: `token` or `tokens`, `file` or `files`, ...
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Section::ALL
            .into_iter()
            .find(|sec| sec.tool_name() == s || sec.section_name() == s)
            .ok_or_else(|| UnknownSection(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_names_read_back() {
        for s in Section::ALL {
            assert_eq!(s.tool_name().parse::<Section>(), Ok(s));
            assert_eq!(s.section_name().parse::<Section>(), Ok(s));
            assert_eq!(Section::from_section_name(s.section_name()), Some(s));
        }
        assert!("tokenz".parse::<Section>().is_err());
        assert_eq!(Section::from_section_name("token"), None);
    }
}
