//! `nexus-shim setup`: the edits to an agent's own configuration files
//! (pure text in, text out, one module per agent) and writing them.
//!
//! Every edit merges into what is there, is idempotent, and its removal
//! takes out exactly the keys it owns (emptied containers it created too;
//! a file it created and emptied is deleted).

mod claude;
mod codex;
mod json;
mod opencode;
mod shell;

use std::io::Write;
use std::path::{Path, PathBuf};

/// The placeholder key written where an agent wants one: the laptop
/// removes it and adds the real key.
pub const PLACEHOLDER_KEY: &str = "nexus-placeholder";

/// The name the MCP server is registered under in every agent.
pub const MCP_NAME: &str = "nexus";

/// What `setup` wires an agent to.
#[derive(Clone, Debug)]
pub struct Wiring {
    /// `nexus-shim`, absolute.
    pub shim: String,
    /// The state dir, absolute (agents such as Codex clear the
    /// environment of MCP servers, so `NEXUS_STATE_DIR` would not reach it).
    pub state_dir: String,
    /// The LLM API, for agents (not for `setup shell`).
    pub api: Option<Api>,
    /// Keep the agent's own prompt before it calls `nexus` tools.
    pub ask: bool,
}

/// An HTTP API of the laptop's policy, as an agent's base URL.
#[derive(Clone, Debug)]
pub struct Api {
    /// Its name in the policy (`[http.NAME]`).
    pub name: String,
    /// `$NEXUS_HTTP_URL/NAME`, resolved.
    pub url: String,
    /// The policy's upstream already ends in `/v1`.
    pub upstream_has_v1: bool,
}

impl Api {
    /// The base URL of SDKs that expect the `/v1` in it (OpenAI's, the AI SDK's).
    pub fn v1_url(&self) -> String {
        if self.upstream_has_v1 {
            self.url.clone()
        } else {
            format!("{}/v1", self.url)
        }
    }
}

impl Wiring {
    /// The MCP server's command line.
    pub fn mcp_command(&self) -> Vec<String> {
        vec![
            self.shim.clone(),
            "--state-dir".into(),
            self.state_dir.clone(),
            "mcp".into(),
        ]
    }

    fn api(&self) -> Result<&Api, String> {
        self.api
            .as_ref()
            .ok_or_else(|| "no API to point the agent at".to_owned())
    }
}

/// Which configuration `setup` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Claude Code.
    ClaudeCode,
    /// OpenAI Codex CLI.
    Codex,
    /// OpenCode.
    OpenCode,
    /// The login and interactive shell start-up files.
    Shell,
}

impl Target {
    /// The API an agent uses unless `--api` names another.
    pub fn default_api(self) -> Option<&'static str> {
        match self {
            Self::ClaudeCode => Some("anthropic"),
            Self::Codex | Self::OpenCode => Some("openai"),
            Self::Shell => None,
        }
    }
}

/// Where the agents keep their files: the environment they read.
#[derive(Clone, Debug)]
pub struct Home {
    /// `$HOME`.
    pub home: PathBuf,
    /// `$XDG_CONFIG_HOME`, if set.
    pub xdg_config: Option<PathBuf>,
    /// `$CODEX_HOME`, if set.
    pub codex_home: Option<PathBuf>,
    /// `$CLAUDE_CONFIG_DIR`, if set.
    pub claude_dir: Option<PathBuf>,
    /// The login shell is zsh.
    pub zsh: bool,
}

impl Home {
    /// Read from this process's environment.
    pub fn from_env() -> Result<Self, SetupError> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let home = var("HOME").ok_or(SetupError::NoHome)?;
        let zsh = var("SHELL").is_some_and(|s| s.file_name().is_some_and(|n| n == "zsh"));
        Ok(Self {
            home,
            xdg_config: var("XDG_CONFIG_HOME"),
            codex_home: var("CODEX_HOME"),
            claude_dir: var("CLAUDE_CONFIG_DIR"),
            zsh,
        })
    }
}

/// An edit of one file: its new text given the old and the wiring (`None`:
/// remove what setup adds). Empty new text means the file goes.
type EditFn = fn(&str, Option<&Wiring>) -> Result<String, String>;

/// One file a target edits.
struct Edit {
    path: PathBuf,
    edit: EditFn,
}

fn edits(target: Target, home: &Home) -> Vec<Edit> {
    match target {
        Target::ClaudeCode => claude::edits(home),
        Target::Codex => codex::edits(home),
        Target::OpenCode => opencode::edits(home),
        Target::Shell => shell::edits(home),
    }
    .into_iter()
    .map(|(path, edit)| Edit { path, edit })
    .collect()
}

/// Why `setup` could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `$HOME` is not set.
    #[error("HOME is not set: the agents' files live under it")]
    NoHome,
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file's content is not what its agent reads.
    #[error("{path}: {why}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// A file's change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The file.
    pub path: PathBuf,
    /// Its new text; `None`: the file is removed.
    pub after: Option<String>,
}

/// The changes `target` needs (none when all is already so). `wiring`
/// `None` plans the removal.
pub fn plan(
    target: Target,
    home: &Home,
    wiring: Option<&Wiring>,
) -> Result<Vec<Change>, SetupError> {
    let mut changes = Vec::new();
    for Edit { path, edit } in edits(target, home) {
        let before = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(SetupError::Io { path, source }),
        };
        let after =
            edit(before.as_deref().unwrap_or(""), wiring).map_err(|why| SetupError::Content {
                path: path.clone(),
                why,
            })?;
        let after = (!after.is_empty()).then_some(after);
        if after != before && !(after.is_none() && before.as_deref() == Some("")) {
            changes.push(Change { path, after });
        }
    }
    Ok(changes)
}

/// Writes the changes: each file replaced whole (a temporary file renamed
/// over it, with its mode), so an agent never reads half a file.
pub fn apply(changes: &[Change]) -> Result<(), SetupError> {
    for c in changes {
        let io = |source| SetupError::Io {
            path: c.path.clone(),
            source,
        };
        match &c.after {
            None => std::fs::remove_file(&c.path).map_err(io)?,
            Some(text) => write_whole(&c.path, text).map_err(io)?,
        }
    }
    Ok(())
}

fn write_whole(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Agents keep tokens in some of these files: a new one is the user's only.
    let mode = std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o7777);
    let mut tmp = tempfile_in(dir, path)?;
    tmp.1.write_all(text.as_bytes())?;
    tmp.1
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)
}

/// A new file beside `path`, for the rename.
fn tempfile_in(dir: &Path, path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.nexus-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    Ok((tmp, file))
}

#[cfg(test)]
pub(crate) mod testing {
    //! What every writer's tests check.
    use super::*;

    /// A wiring as a live daemon would give.
    pub fn wiring(ask: bool) -> Wiring {
        Wiring {
            shim: "/usr/local/bin/nexus-shim".into(),
            state_dir: "/home/dev/.local/state/nexus".into(),
            api: Some(Api {
                name: "anthropic".into(),
                url: "http://127.0.0.1:4000/cap/anthropic".into(),
                upstream_has_v1: false,
            }),
            ask,
        }
    }

    /// Setup merges into `original` (keeping what was there), is
    /// idempotent, and its removal gives `original` back exactly; from
    /// nothing, the removal leaves nothing. Returns the set-up text.
    #[track_caller]
    pub fn round_trip(edit: EditFn, original: &str, ask: bool) -> String {
        let w = wiring(ask);
        let once = edit(original, Some(&w)).unwrap_or_else(|e| panic!("setup: {e}"));
        let twice = edit(&once, Some(&w)).unwrap_or_else(|e| panic!("setup again: {e}"));
        assert_eq!(once, twice, "setup is idempotent");
        let removed = edit(&once, None).unwrap_or_else(|e| panic!("remove: {e}"));
        assert_eq!(removed, original, "--remove restores the original");
        let again = edit(&removed, None).unwrap_or_else(|e| panic!("remove again: {e}"));
        assert_eq!(again, original, "--remove is idempotent");
        let fresh = edit("", Some(&w)).unwrap_or_else(|e| panic!("setup from nothing: {e}"));
        assert_eq!(edit(&fresh, None).as_deref(), Ok(""), "nothing left");
        once
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(dir: &Path) -> Home {
        Home {
            home: dir.to_owned(),
            xdg_config: None,
            codex_home: None,
            claude_dir: None,
            zsh: false,
        }
    }

    /// `plan` alone (what `--print` shows) writes nothing; `apply` writes
    /// it; planning again finds nothing to do; removal deletes the files
    /// setup created and restores the ones that were there.
    #[test]
    fn plan_writes_nothing_and_apply_round_trips() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let h = home(dir.path());
        let settings = dir.path().join(".claude/settings.json");
        std::fs::create_dir_all(dir.path().join(".claude")).unwrap_or_else(|e| panic!("{e}"));
        let original = "{\n  \"model\": \"opus\"\n}\n";
        std::fs::write(&settings, original).unwrap_or_else(|e| panic!("{e}"));
        let w = testing::wiring(false);
        let changes = plan(Target::ClaudeCode, &h, Some(&w)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(
            !dir.path().join(".claude.json").exists(),
            "planning wrote nothing"
        );
        assert_eq!(
            std::fs::read_to_string(&settings).ok().as_deref(),
            Some(original)
        );
        apply(&changes).unwrap_or_else(|e| panic!("{e}"));
        assert!(dir.path().join(".claude.json").exists());
        let again = plan(Target::ClaudeCode, &h, Some(&w)).unwrap_or_else(|e| panic!("{e}"));
        assert!(again.is_empty(), "{again:?}");
        let removal = plan(Target::ClaudeCode, &h, None).unwrap_or_else(|e| panic!("{e}"));
        apply(&removal).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !dir.path().join(".claude.json").exists(),
            "created, then removed"
        );
        assert_eq!(
            std::fs::read_to_string(&settings).ok().as_deref(),
            Some(original)
        );
    }

    #[test]
    fn a_broken_file_is_named_and_left_alone() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join(".claude.json");
        std::fs::write(&file, "{ not json").unwrap_or_else(|e| panic!("{e}"));
        let err = plan(
            Target::ClaudeCode,
            &home(dir.path()),
            Some(&testing::wiring(false)),
        );
        assert!(
            matches!(&err, Err(SetupError::Content { path, .. }) if *path == file),
            "{err:?}"
        );
    }
}
