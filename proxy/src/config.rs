//! The laptop's configuration directory (`$NEXUS_CONFIG_DIR`, default
//! `~/.config/nexus`): our identity, the paired workspaces, the policy.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nexus_transport::{Fingerprint, Identity};
use serde::{Deserialize, Serialize};

/// Paths under the configuration directory.
#[derive(Debug, Clone)]
pub struct ConfigDir {
    root: PathBuf,
}

impl ConfigDir {
    /// The flag or `NEXUS_CONFIG_DIR` (from clap), else `$XDG_CONFIG_HOME/nexus`,
    /// else `~/.config/nexus`.
    pub fn resolve(flag: Option<PathBuf>) -> Result<Self> {
        let root = match flag {
            Some(p) => p,
            None => match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
                Some(x) => PathBuf::from(x).join("nexus"),
                None => std::env::home_dir()
                    .context(
                        "cannot find the home directory; pass --config-dir or set NEXUS_CONFIG_DIR",
                    )?
                    .join(".config/nexus"),
            },
        };
        Ok(Self { root })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory tree (0700) if needed.
    pub fn prepare(&self) -> Result<()> {
        for dir in [
            self.root.clone(),
            self.workspaces_dir(),
            self.identity_dir(),
        ] {
            if dir.exists() {
                continue;
            }
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    fn workspaces_dir(&self) -> PathBuf {
        self.root.join("workspaces")
    }

    fn identity_dir(&self) -> PathBuf {
        self.root.join("identity")
    }

    /// The laptop's client certificate and key, created on first use.
    pub fn identity(&self) -> Result<Identity> {
        self.prepare()?;
        let (id, created) = Identity::load_or_create(&self.identity_dir(), "nexus-agent-proxy")?;
        if created {
            tracing::info!(fingerprint = %id.fingerprint(), "created this laptop's key and certificate");
        }
        Ok(id)
    }

    /// The default policy: `policy.toml`, else `policy.d/`.
    pub fn default_policy(&self) -> Option<PathBuf> {
        [self.root.join("policy.toml"), self.root.join("policy.d")]
            .into_iter()
            .find(|p| p.exists())
    }

    fn record_path(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        Ok(self.workspaces_dir().join(format!("{name}.toml")))
    }

    /// Saves a workspace record (replacing one of the same name).
    pub fn save_workspace(&self, ws: &Workspace) -> Result<()> {
        self.prepare()?;
        let text = toml::to_string_pretty(ws).context("encoding the workspace record")?;
        nexus_transport::write_private(&self.record_path(&ws.name)?, text.as_bytes())?;
        Ok(())
    }

    /// Loads one workspace record.
    pub fn workspace(&self, name: &str) -> Result<Workspace> {
        let path = self.record_path(name)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "no workspace named {name:?} is paired; see `nexus-agent-proxy workspaces list`, or pair it first"
                )
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid workspace record", path.display()))
    }

    /// All workspace records, sorted by name.
    pub fn workspaces(&self) -> Result<Vec<Workspace>> {
        let dir = self.workspaces_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "toml")
                && let Some(name) = path.file_stem().and_then(|s| s.to_str())
            {
                out.push(self.workspace(name)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Forgets a workspace.
    pub fn remove_workspace(&self, name: &str) -> Result<()> {
        let path = self.record_path(name)?;
        std::fs::remove_file(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("no workspace named {name:?} is paired")
            } else {
                anyhow::Error::new(e).context(format!("removing {}", path.display()))
            }
        })
    }
}

/// Workspace names become file names and policy keys.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !ok {
        bail!(
            "invalid workspace name {name:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
        );
    }
    Ok(())
}

/// A paired workspace, as recorded by `pair`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workspace {
    /// The laptop's name for it: the only name policy ever sees.
    pub name: String,
    /// `HOST:PORT` of its `nexus-shim serve`.
    pub address: String,
    /// Pinned certificate fingerprint of the shim.
    pub fingerprint: Fingerprint,
    /// When it was paired (seconds since the epoch).
    pub paired_at: u64,
    /// Reach it through this `wss://` / `ws://` URL instead of `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// Reach it through this command's stdin/stdout (run by `sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_command: Option<String>,
    /// Extra root certificate(s) for a `wss://` ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["dev", "ci-runner_2", "a.b"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "../x", "sp ace", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn records_round_trip() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cfg = ConfigDir {
            root: tmp.path().join("c"),
        };
        let ws = Workspace {
            name: "dev".into(),
            address: "127.0.0.1:1".into(),
            fingerprint: Fingerprint::of(b"x"),
            paired_at: 1,
            connect: None,
            connect_command: None,
            ca_file: None,
        };
        cfg.save_workspace(&ws).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.workspaces().map(|v| v.len()).unwrap_or(0), 1);
        assert_eq!(
            cfg.workspace("dev").map(|w| w.fingerprint).ok(),
            Some(ws.fingerprint)
        );
        cfg.remove_workspace("dev")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(cfg.workspace("dev").is_err());
    }
}
