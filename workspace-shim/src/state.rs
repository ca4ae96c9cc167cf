//! The shim's persistent state directory.
//!
//! It holds the shim's key and certificate, the paired laptop's fingerprint,
//! the burned pairing tokens, `pairing.uri` and the sockets. A key that
//! changed on restart would look exactly like an attack to the laptop, so the
//! directory must persist, and it is refused when another user owns it or
//! others can write to it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nexus_transport::Fingerprint;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Files inside the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Resolves the directory: the flag or `NEXUS_STATE_DIR` (given by clap),
    /// else `$XDG_STATE_HOME/nexus`, else `~/.local/state/nexus`.
    pub fn resolve(flag: Option<PathBuf>) -> Result<Self> {
        let root = match flag {
            Some(p) => p,
            None => match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
                Some(x) => PathBuf::from(x).join("nexus"),
                None => std::env::home_dir()
                    .context(
                        "cannot find the home directory; pass --state-dir or set NEXUS_STATE_DIR",
                    )?
                    .join(".local/state/nexus"),
            },
        };
        // `env` prints these paths for agents' config files, read from any
        // working directory: keep them absolute.
        let root = std::path::absolute(&root)
            .with_context(|| format!("resolving state dir {}", root.display()))?;
        Ok(Self { root })
    }

    /// Creates the directory and any missing parent 0700 (whatever the
    /// umask: with umask 000, `~/.local/state` made 0777 let any user swap
    /// the state dir), then checks it is safe.
    pub fn prepare(&self) -> Result<()> {
        if !self.root.exists() {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(&self.root)
                .with_context(|| format!("creating state dir {}", self.root.display()))?;
        }
        self.check()
    }

    /// Refuses a directory owned by another user or writable by others, or
    /// one below a folder where another user could swap it
    /// ([`crate::trust::check_ancestors`]).
    pub fn check(&self) -> Result<()> {
        let meta = std::fs::symlink_metadata(&self.root)
            .with_context(|| format!("reading state dir {}", self.root.display()))?;
        if !meta.is_dir() {
            bail!("state dir {} is not a directory", self.root.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let me = rustix::process::geteuid().as_raw();
            if meta.uid() != me {
                bail!(
                    "state dir {} is owned by uid {}, not by you (uid {me}); refusing to keep keys there. \
                     Use a directory of your own with --state-dir or NEXUS_STATE_DIR",
                    self.root.display(),
                    meta.uid()
                );
            }
            let mode = meta.mode() & 0o777;
            if mode & 0o022 != 0 {
                bail!(
                    "state dir {} is writable by group or others (mode {mode:03o}); anyone able to write \
                     there could replace the keys or sockets. Fix it with: chmod 700 {}",
                    self.root.display(),
                    self.root.display()
                );
            }
        }
        crate::trust::check_ancestors(&self.root)
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Local callers' socket.
    pub fn shim_sock(&self) -> PathBuf {
        self.root.join("shim.sock")
    }

    /// The workspace's `SSH_AUTH_SOCK`.
    pub fn agent_sock(&self) -> PathBuf {
        self.root.join("agent.sock")
    }

    /// Where `serve --stdio` relays hand their tunnel to the daemon.
    pub fn tunnel_sock(&self) -> PathBuf {
        self.root.join("tunnel.sock")
    }

    /// The pairing URI, present only while a token is pending.
    pub fn pairing_uri(&self) -> PathBuf {
        self.root.join("pairing.uri")
    }

    /// `$NEXUS_HTTP_URL` of the running daemon (`nexus-shim env` reads it).
    pub fn http_url(&self) -> PathBuf {
        self.root.join("http.url")
    }

    /// The capability in `$NEXUS_HTTP_URL`'s path, kept across restarts so
    /// that a fixed `--http-listen` gives a stable URL.
    pub fn http_key(&self) -> PathBuf {
        self.root.join("http.key")
    }

    /// The HTTP endpoint's port chosen at first start, reused by later
    /// starts so that `$NEXUS_HTTP_URL` never changes.
    pub fn http_port(&self) -> PathBuf {
        self.root.join("http.port")
    }

    /// The running daemon's pid (`nexus-agent-proxy connect` stops it to
    /// upgrade the shim).
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("serve.pid")
    }

    fn paired_file(&self) -> PathBuf {
        self.root.join("paired.json")
    }

    fn burned_file(&self) -> PathBuf {
        self.root.join("burned-tokens")
    }

    /// The paired laptop, if any.
    pub fn load_paired(&self) -> Result<Option<Paired>> {
        match std::fs::read(self.paired_file()) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is corrupt; remove it and pair the laptop again",
                    self.paired_file().display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.paired_file().display())),
        }
    }

    /// Records the paired laptop (replacing any earlier one).
    pub fn save_paired(&self, paired: &Paired) -> Result<()> {
        let json = serde_json::to_vec_pretty(paired)?;
        nexus_transport::write_private(&self.paired_file(), &json)?;
        Ok(())
    }

    /// Whether this token was used before (or was preset and already consumed).
    pub fn is_burned(&self, token: &str) -> bool {
        let hash = token_hash(token);
        std::fs::read_to_string(self.burned_file()).is_ok_and(|s| s.lines().any(|l| l == hash))
    }

    /// Marks a token as used, forever.
    pub fn burn(&self, token: &str) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.burned_file())
            .with_context(|| format!("writing {}", self.burned_file().display()))?;
        writeln!(f, "{}", token_hash(token))?;
        Ok(())
    }
}

/// The laptop this workspace is paired with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Paired {
    /// Its certificate fingerprint: the only client accepted from now on.
    pub fingerprint: Fingerprint,
    /// When it paired (seconds since the epoch).
    pub paired_at: u64,
}

impl Paired {
    /// A record for `fingerprint` paired now.
    pub fn now(fingerprint: Fingerprint) -> Self {
        let paired_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            fingerprint,
            paired_at,
        }
    }
}

/// A one-time pairing token with its deadline. Only its hash is compared.
#[derive(Debug)]
pub struct PairingToken {
    value: zeroize::Zeroizing<String>,
    expires: Instant,
}

impl PairingToken {
    /// A fresh random token (128 bits).
    pub fn generate(ttl: Duration) -> Self {
        let mut raw = [0u8; 16];
        rand::rng().fill_bytes(&mut raw);
        Self::preset(hex::encode(raw), ttl)
    }

    /// A token chosen by the platform (`NEXUS_PAIRING_TOKEN`).
    pub fn preset(value: String, ttl: Duration) -> Self {
        Self {
            value: zeroize::Zeroizing::new(value),
            expires: Instant::now() + ttl,
        }
    }

    /// The token text, for the URI.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.expires
    }

    /// Time left.
    pub fn remaining(&self) -> Duration {
        self.expires.saturating_duration_since(Instant::now())
    }

    /// Compares in constant time over the hashes, so timing says nothing
    /// about how much of a guess was right.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let a = Sha256::digest(self.value.as_bytes());
        let b = Sha256::digest(candidate);
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `nexus://HOST:PORT?fp=sha256:..&token=..`
pub fn pairing_uri(advertise: &str, fingerprint: Fingerprint, token: &str) -> String {
    format!("nexus://{advertise}?fp={fingerprint}&token={token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matching_and_expiry() {
        let t = PairingToken::preset("abc".into(), Duration::from_secs(60));
        assert!(t.matches(b"abc"));
        assert!(!t.matches(b"abd"));
        assert!(!t.matches(b""));
        assert!(!t.expired());
        assert!(PairingToken::preset("x".into(), Duration::ZERO).expired());
        assert_eq!(
            PairingToken::generate(Duration::from_secs(1)).value().len(),
            32
        );
    }

    #[test]
    fn refuses_group_writable_and_burns_tokens() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let state = StateDir {
            root: tmp.path().join("st"),
        };
        state.prepare().unwrap_or_else(|e| panic!("{e}"));
        assert!(!state.is_burned("t1"));
        state.burn("t1").unwrap_or_else(|e| panic!("{e}"));
        assert!(state.is_burned("t1") && !state.is_burned("t2"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(state.root(), std::fs::Permissions::from_mode(0o770))
                .unwrap_or(());
            let err = state
                .check()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("chmod 700"), "{err}");
        }
    }
}
