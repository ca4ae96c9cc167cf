//! `nexus-agent-proxy connect TARGET` and `disconnect NAME`: set a workspace
//! up through the user's own channel (ssh, kubectl, docker or a command)
//! and pair with it, with nothing to copy or paste.
//!
//! Steps, each one run of the channel: a probe (system, architecture,
//! writable home, the installed shim's SHA-256, daemon, pairing); then,
//! only if something is missing, one setup run (upload gzip-compressed on
//! stdin, from the shim's `.gz` when one lies beside it, checked and installed atomically into `~/.local/bin`; restart after
//! an upgrade; start the daemon; read a fresh single-use pairing URI); then
//! pairing over `CHANNEL sh -c 'nexus-shim serve --stdio'`, which becomes
//! the workspace's route. Run again, the probe finds everything in place.

mod channel;
mod remote;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nexus_transport::Fingerprint;
use sha2::{Digest, Sha256};

pub use channel::{Channel, Target, quote};

use crate::config::{ConfigDir, validate_name};

/// How long the probe and pairing-free steps may take.
const PROBE_LIMIT: Duration = Duration::from_secs(60);
/// How long the upload and start may take (a slow link, a large shim).
const SETUP_LIMIT: Duration = Duration::from_secs(600);

/// `connect` outcomes that are not plain errors (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The workspace is paired with another laptop (exit 3).
    #[error("{0}")]
    Refused(String),
    /// The channel did not reach the workspace (exit 4).
    #[error("{0}")]
    Unreachable(String),
}

/// Prints `e` in one line and returns its exit code: 3 refused, 4
/// unreachable, 1 anything else.
pub fn report(e: &anyhow::Error) -> ExitCode {
    eprintln!("nexus-agent-proxy: {e:#}");
    match e.downcast_ref::<Failure>() {
        Some(Failure::Refused(_)) => ExitCode::from(3),
        Some(Failure::Unreachable(_)) => ExitCode::from(4),
        None => ExitCode::from(1),
    }
}

/// `connect` settings.
#[derive(Debug, Clone)]
pub struct Connect {
    /// The channel.
    pub channel: Channel,
    /// The workspace's name on this laptop.
    pub name: String,
    /// `--shim-binary`.
    pub shim_binary: Option<PathBuf>,
    /// `--replace`: take over a workspace paired with another laptop.
    pub replace: bool,
}

impl Connect {
    /// Settings from the command line: `target` or `command` (clap makes
    /// sure there is exactly one), `--name` (required with `--command`).
    ///
    /// # Errors
    /// No usable name.
    pub fn new(
        target: Option<&Target>,
        command: Option<String>,
        name: Option<String>,
        shim_binary: Option<PathBuf>,
        replace: bool,
    ) -> Result<Self> {
        let (channel, default) = match (target, command) {
            (Some(t), _) => (t.channel(), Some(t.default_name())),
            (None, Some(cmd)) => (Channel::Shell(cmd), None),
            (None, None) => bail!("give a TARGET or --command CMD"),
        };
        let name = name
            .or(default)
            .context("give the workspace a name with --name NAME")?;
        validate_name(&name).context("choose another with --name NAME")?;
        Ok(Self {
            channel,
            name,
            shim_binary,
            replace,
        })
    }
}

/// What the probe found.
#[derive(Debug)]
struct Probe {
    arch: &'static str,
    sha256: Option<String>,
    /// `nexus-shim status` exit code: 0 linked, 4 not linked, 1 no daemon.
    daemon: Option<i32>,
    paired: Option<Fingerprint>,
}

#[derive(serde::Deserialize)]
struct PairedView {
    fingerprint: Fingerprint,
}

async fn probe(channel: &Channel) -> Result<Probe> {
    let ran = remote::run(channel, &remote::probe(), None, PROBE_LIMIT)
        .await
        .map_err(|e| Failure::Unreachable(format!("{e:#}")))?;
    if ran.code != Some(0) || !ran.stdout.lines().any(|l| l == "nexus-probe") {
        return Err(Failure::Unreachable(format!(
            "cannot reach the workspace through `{}`: {}; check that `{}` gives a shell there",
            channel.prefix(),
            ran.reason(),
            channel.line("echo ok"),
        ))
        .into());
    }
    let os = ran.value("os").unwrap_or_default();
    if os != "Linux" {
        bail!(
            "the workspace runs {:?}, not Linux: nexus-shim runs on Linux only",
            crate::tools::clip(os)
        );
    }
    let raw_arch = ran.value("arch").unwrap_or_default();
    let arch = match raw_arch {
        "x86_64" | "amd64" => "x86_64",
        "aarch64" | "arm64" => "aarch64",
        other => bail!(
            "unknown workspace architecture {:?}: give a nexus-shim built for it with --shim-binary PATH",
            crate::tools::clip(other)
        ),
    };
    if ran.value("writable") != Some("yes") {
        bail!(
            "the workspace user has no writable home (HOME={:?}): ~/.local/bin must be writable there; \
             connect as another user or fix HOME",
            crate::tools::clip(ran.value("home").unwrap_or_default())
        );
    }
    if let Some(tool) = ran.value("missing") {
        bail!(
            "the workspace lacks `{}`: install it there (connect needs gzip, sha256sum and mktemp)",
            crate::tools::clip(tool)
        );
    }
    let paired = match ran.value("paired") {
        Some(json) => Some(
            serde_json::from_str::<PairedView>(json)
                .context("the workspace's pairing record (paired.json) is unreadable")?
                .fingerprint,
        ),
        None => None,
    };
    Ok(Probe {
        arch,
        sha256: ran.value("sha256").map(str::to_owned),
        daemon: ran.value("daemon").and_then(|d| d.parse().ok()),
        paired,
    })
}

/// The shim to install: `--shim-binary`, else `CONFIG/shims/nexus-shim-linux-ARCH`,
/// else, on a Linux laptop of the same architecture, the `nexus-shim` beside us.
fn shim_for(config: &ConfigDir, given: Option<&Path>, arch: &str) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let laid_out = config.root().join(format!("shims/nexus-shim-linux-{arch}"));
    if laid_out.is_file() {
        return Ok(laid_out);
    }
    if cfg!(target_os = "linux") && std::env::consts::ARCH == arch {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("nexus-shim")))
            .filter(|p| p.is_file());
        if let Some(p) = beside {
            return Ok(p);
        }
    }
    bail!(
        "no nexus-shim for linux-{arch}: give one with --shim-binary PATH, or put it at {} \
         (scripts/install.sh and the release archives lay it out there)",
        laid_out.display()
    )
}

/// What travels for the shim at `path` whose SHA-256 is `digest`: the
/// `PATH.gz` beside it when that holds exactly this shim (what
/// `scripts/build-static.sh` and `scripts/install.sh` lay out, `gzip -9`
/// once), else a `gzip -c` made now. Checking the `.gz` costs a gunzip,
/// several times cheaper than compressing 11 MiB again on every upload.
async fn compressed(path: &Path, digest: &str) -> Result<Vec<u8>> {
    let mut beside = path.as_os_str().to_owned();
    beside.push(".gz");
    let beside = PathBuf::from(beside);
    if let Ok(gz) = std::fs::read(&beside) {
        if gunzipped_digest(&gz).await.as_deref() == Some(digest) {
            return Ok(gz);
        }
        tracing::warn!(file = %beside.display(), "ignoring a compressed shim that is not this shim");
    }
    gzip(path).await
}

/// The SHA-256 (hex) of `gz` decompressed by the laptop's gzip, or `None`
/// when it is not gzip.
async fn gunzipped_digest(gz: &[u8]) -> Option<String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let input = gz.to_vec();
    let feed = tokio::spawn(async move {
        // gzip stops reading on bad input; its exit status says so.
        let _ = stdin.write_all(&input).await;
    });
    let out = child.wait_with_output().await.ok()?;
    feed.abort();
    out.status
        .success()
        .then(|| hex::encode(Sha256::digest(&out.stdout)))
}

/// `gzip -c` of `bytes` (the laptop's gzip, as the workspace's gunzips it).
async fn gzip(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let out = tokio::process::Command::new("gzip")
        .args(["-c", "-n"])
        .stdin(file)
        .output()
        .await
        .context("running gzip on this laptop")?;
    if !out.status.success() {
        bail!(
            "gzip failed on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Sets the workspace up and pairs with it; returns its name. Idempotent:
/// run again, it finds everything in place and changes nothing.
///
/// # Errors
/// Any step, phrased for the user; [`Failure`] for exit codes 3 and 4.
pub async fn connect(config: &ConfigDir, c: &Connect) -> Result<String> {
    let us = config.identity()?.fingerprint();
    let route = c.channel.line(&remote::stdio());
    let existing = config.workspace(&c.name).ok();
    if let Some(ws) = &existing
        && ws.connect_command.as_deref() != Some(route.as_str())
    {
        bail!(
            "a workspace named {:?} is already paired by another route; choose another --name, or \
             `nexus-agent-proxy disconnect {}` first",
            c.name,
            c.name
        );
    }
    let found = probe(&c.channel).await?;
    if let Some(other) = found.paired.filter(|fp| *fp != us)
        && !c.replace
    {
        return Err(Failure::Refused(format!(
            "the workspace is paired with another laptop ({other}); run again with --replace to pair \
             it with this one instead (the other laptop loses it)"
        ))
        .into());
    }
    let shim = shim_for(config, c.shim_binary.as_deref(), found.arch)?;
    let bytes = std::fs::read(&shim).with_context(|| format!("reading {}", shim.display()))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    drop(bytes);
    let upload = found.sha256.as_deref() != Some(digest.as_str());
    let running = matches!(found.daemon, Some(0 | 4));
    let pair = found.paired != Some(us) || existing.is_none();
    if upload || !running || pair {
        let input = if upload {
            let gz = compressed(&shim, &digest).await?;
            tracing::info!(shim = %shim.display(), wire_bytes = gz.len(), "uploading the shim");
            Some(gz)
        } else {
            None
        };
        let script = remote::setup(upload.then_some(digest.as_str()), upload && running, pair);
        let ran = remote::run(&c.channel, &script, input, SETUP_LIMIT).await?;
        if ran.code != Some(0) || !ran.stdout.lines().any(|l| l == "nexus-ready") {
            bail!("setting the workspace up: {}", ran.reason());
        }
        if pair {
            let uri = ran
                .value("uri")
                .context("the workspace printed no pairing URI")?;
            let via = crate::pair::Via {
                connect_command: Some(route.clone()),
                ..Default::default()
            };
            crate::pair::pair(config, uri, &c.name, via).await?;
        }
        eprintln!(
            "workspace {:?}: shim {}, daemon {}, {}",
            c.name,
            if upload { "installed" } else { "up to date" },
            match (running, upload) {
                (true, true) => "restarted",
                (true, false) => "running",
                (false, _) => "started",
            },
            if pair { "paired" } else { "already paired" }
        );
    } else {
        eprintln!("workspace {:?}: already set up and paired", c.name);
    }
    Ok(c.name.clone())
}

/// `disconnect NAME [--uninstall]`: stops the workspace's daemon (and with
/// `uninstall`, removes the shim and its pairing there), then forgets the
/// workspace. The record goes even when the workspace cannot be reached
/// (exit 4 then says the daemon may still run).
///
/// # Errors
/// Unknown name; a record `connect` did not make; the remote step failed.
pub async fn disconnect(config: &ConfigDir, name: &str, uninstall: bool) -> Result<()> {
    let ws = config.workspace(name)?;
    let channel = ws
        .connect_command
        .as_deref()
        .and_then(|line| Channel::from_line(line, &remote::stdio()))
        .with_context(|| {
            format!(
                "{name:?} was not set up by `connect`; forget it with `nexus-agent-proxy workspaces remove {name}`"
            )
        })?;
    let ran = remote::run(&channel, &remote::teardown(uninstall), None, PROBE_LIMIT).await;
    let stopped = ran
        .as_ref()
        .is_ok_and(|r| r.code == Some(0) && r.stdout.lines().any(|l| l == "nexus-stopped"));
    config.remove_workspace(name)?;
    if stopped {
        eprintln!(
            "workspace {name:?}: daemon stopped{}, record removed",
            if uninstall { ", shim uninstalled" } else { "" }
        );
        return Ok(());
    }
    let why = match ran {
        Ok(r) => r.reason(),
        Err(e) => format!("{e:#}"),
    };
    Err(Failure::Unreachable(format!(
        "record {name:?} removed, but the workspace was not reached through `{}` ({why}): its daemon may still run",
        channel.prefix()
    ))
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `gzip -9 -n -c path` into `path.gz`, as build-static.sh does.
    fn gzip_beside(path: &Path) -> Vec<u8> {
        let out = std::process::Command::new("gzip")
            .args(["-9", "-n", "-c"])
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("gzip: {e}"));
        let mut beside = path.as_os_str().to_owned();
        beside.push(".gz");
        std::fs::write(PathBuf::from(beside), &out.stdout).unwrap_or_else(|e| panic!("{e}"));
        out.stdout
    }

    #[tokio::test]
    async fn the_gz_beside_the_shim_travels_only_when_it_is_that_shim() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let shim = dir.path().join("nexus-shim");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8).collect();
        std::fs::write(&shim, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let digest = hex::encode(Sha256::digest(&bytes));
        let made = gzip_beside(&shim);
        assert_eq!(compressed(&shim, &digest).await.ok(), Some(made));

        // A newer shim beside an old .gz: compressed afresh, and it is the new one.
        let newer = [bytes.as_slice(), b"v2"].concat();
        std::fs::write(&shim, &newer).unwrap_or_else(|e| panic!("{e}"));
        let digest = hex::encode(Sha256::digest(&newer));
        let gz = compressed(&shim, &digest).await.unwrap_or_default();
        assert_eq!(gunzipped_digest(&gz).await, Some(digest));
        assert_eq!(gunzipped_digest(b"not gzip").await, None);
    }
}
