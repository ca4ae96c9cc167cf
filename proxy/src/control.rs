//! The laptop's control socket, `$NEXUS_CONFIG_DIR/control.sock` (0600,
//! same user only): `status`, `approve`, and `lock`/`unlock` notices for a
//! running proxy. One JSON request line, one JSON answer line.
//!
//! The kill switch itself is a file, `$NEXUS_CONFIG_DIR/locked`: `lock`
//! creates it and every call checks it, so a lock holds without a running
//! proxy, at once for every workspace, and across restarts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::approvals::{Answer, PendingView};
use crate::audit::Entry;
use crate::reload::{PolicyInfo, now_secs};
use crate::tools::ToolContext;

/// The socket's file name in the configuration directory.
pub const SOCKET: &str = "control.sock";
/// The kill switch's file name in the configuration directory.
pub const LOCK_FILE: &str = "locked";
/// Longest request line.
const MAX_REQUEST: u64 = 64 << 10;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A request on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Everything `status` shows.
    Status,
    /// The approvals waiting.
    Pending,
    /// Answer approval `id`.
    Answer {
        /// Which request.
        id: u64,
        /// The answer.
        #[serde(flatten)]
        answer: Answer,
    },
    /// `lock` just created the lock file: drop standing approvals.
    Locked,
    /// `unlock` just removed it.
    Unlocked,
}

/// One workspace's link, for `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkView {
    /// Workspace name.
    pub name: String,
    /// Whether the tunnel is up.
    pub linked: bool,
    /// Since when (seconds since the epoch) it is up or down.
    pub since: u64,
    /// How long the last dial took (TCP + TLS + hello, about 3 round trips).
    pub setup_ms: Option<u64>,
    /// Calls answered on this link.
    pub calls: u64,
    /// Seconds since the last call, if any.
    pub idle_s: Option<u64>,
}

/// The answer to [`ControlRequest::Status`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// Whether the kill switch is on.
    pub locked: bool,
    /// The policy in force.
    pub policy: PolicyInfo,
    /// Every workspace this proxy serves.
    pub workspaces: Vec<LinkView>,
    /// Approvals waiting.
    pub pending: Vec<PendingView>,
    /// The last decisions, oldest first.
    pub recent: Vec<Entry>,
}

#[derive(Debug, Default)]
struct Link {
    linked: bool,
    since: u64,
    setup_ms: Option<u64>,
    calls: u64,
    last_call: Option<Instant>,
}

/// Link state of every workspace, for `status`.
#[derive(Debug, Default)]
pub struct LinkBoard {
    links: Mutex<BTreeMap<String, Link>>,
}

impl LinkBoard {
    fn with<R>(&self, name: &str, f: impl FnOnce(&mut Link) -> R) -> R {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        f(links.entry(name.to_owned()).or_default())
    }

    /// A workspace's tunnel came up after a dial of `setup`.
    pub fn up(&self, name: &str, setup: Duration) {
        self.with(name, |l| {
            l.linked = true;
            l.since = now_secs();
            l.setup_ms = Some(u64::try_from(setup.as_millis()).unwrap_or(u64::MAX));
        });
    }

    /// A workspace is served but not linked (yet, or any more).
    pub fn down(&self, name: &str) {
        self.with(name, |l| {
            if l.linked || l.since == 0 {
                l.since = now_secs();
            }
            l.linked = false;
        });
    }

    /// A call arrived from `name`.
    pub fn call(&self, name: &str) {
        self.with(name, |l| {
            l.calls += 1;
            l.last_call = Some(Instant::now());
        });
    }

    fn view(&self) -> Vec<LinkView> {
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        links
            .iter()
            .map(|(name, l)| LinkView {
                name: name.clone(),
                linked: l.linked,
                since: l.since,
                setup_ms: l.setup_ms,
                calls: l.calls,
                idle_s: l.last_call.map(|t| t.elapsed().as_secs()),
            })
            .collect()
    }
}

/// The lock file of a configuration directory.
pub fn lock_path(config: &Path) -> PathBuf {
    config.join(LOCK_FILE)
}

/// Whether the kill switch is on. Anything but a clean "no such file"
/// counts as locked: fail closed.
pub fn is_locked(config: &Path) -> bool {
    match std::fs::symlink_metadata(lock_path(config)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// How often the running proxy looks at the lock file for calls under way.
const LOCK_POLL: Duration = Duration::from_millis(250);

/// The kill switch as a running proxy sees it: the lock file, looked at
/// before every call ([`KillSwitch::is_on`]) and watched by one task
/// ([`KillSwitch::watch`]) for the calls under way, which wait on
/// [`KillSwitch::engaged`].
#[derive(Debug)]
pub struct KillSwitch {
    config: PathBuf,
    state: watch::Sender<bool>,
}

impl KillSwitch {
    /// The switch of configuration directory `config`.
    #[must_use]
    pub fn new(config: &Path) -> Self {
        Self {
            config: config.to_owned(),
            state: watch::channel(is_locked(config)).0,
        }
    }

    /// Looks at the lock file now; when it is on, every call waiting in
    /// [`engaged`](Self::engaged) wakes.
    pub fn is_on(&self) -> bool {
        let on = is_locked(&self.config);
        self.state
            .send_if_modified(|seen| std::mem::replace(seen, on) != on);
        on
    }

    /// Returns once the switch is seen on.
    pub async fn engaged(&self) {
        let mut seen = self.state.subscribe();
        // The sender lives in `self`, borrowed here: this never errs.
        let _ = seen.wait_for(|on| *on).await;
    }

    /// Looks at the lock file every 250 ms until `shutdown`, so a lock made
    /// while no proxy answered `lock`'s notice still stops calls under way.
    pub async fn watch(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(LOCK_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    self.is_on();
                }
            }
        }
    }
}

/// Binds the control socket of `config` (0600). Also what keeps two proxies
/// off one configuration directory (they would interleave one audit chain).
///
/// # Errors
/// Another proxy serves it, or it cannot be bound.
pub async fn bind(config: &Path) -> Result<UnixListener> {
    let path = config.join(SOCKET);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            bail!(
                "{} is in use: another nexus-agent-proxy runs with this configuration directory",
                path.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    info!(socket = %path.display(), "control socket ready");
    Ok(listener)
}

/// Serves the control socket until `shutdown`, then removes it.
pub async fn serve(listener: UnixListener, ctx: Arc<ToolContext>, shutdown: CancellationToken) {
    let path = ctx.config.root().join(SOCKET);
    let me = rustix::process::geteuid().as_raw();
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => { warn!(error = %e, "control socket accept failed"); continue; }
            },
        };
        if stream.peer_cred().map(|c| c.uid()).ok() != Some(me) {
            warn!("control socket: refused a client of another user");
            continue;
        }
        let ctx = ctx.clone();
        let stop = shutdown.clone();
        conns.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = handle(stream, &ctx) => {}
            }
        });
    }
    conns.close();
    conns.wait().await;
    let _ = std::fs::remove_file(&path);
}

async fn handle(stream: UnixStream, ctx: &ToolContext) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let answer = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => match serde_json::from_str::<ControlRequest>(&line) {
            Ok(req) => respond(req, ctx),
            Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
        },
        _ => return,
    };
    let mut text = answer.to_string();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

fn respond(req: ControlRequest, ctx: &ToolContext) -> serde_json::Value {
    let value = match req {
        ControlRequest::Status => serde_json::to_value(Status {
            locked: ctx.lock.is_on(),
            policy: ctx.policy.info(),
            workspaces: ctx.links.view(),
            pending: ctx.approvals.pending(),
            recent: ctx.audit.recent(),
        }),
        ControlRequest::Pending => serde_json::to_value(ctx.approvals.pending()),
        ControlRequest::Answer { id, answer } => match ctx.approvals.answer(id, answer) {
            Ok(view) => {
                info!(id, allow = answer.allow, for_ms = answer.for_ms, hash = %view.hash, "approval answered");
                serde_json::to_value(view)
            }
            Err(e) => return serde_json::json!({ "error": e }),
        },
        ControlRequest::Locked => {
            ctx.approvals.revoke_all();
            // Calls under way stop now, not at the next look.
            ctx.lock.is_on();
            warn!(
                "locked: every call from every workspace is denied until `nexus-agent-proxy unlock`"
            );
            Ok(serde_json::json!({}))
        }
        ControlRequest::Unlocked => {
            ctx.lock.is_on();
            info!("unlocked");
            Ok(serde_json::json!({}))
        }
    };
    value.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

/// Sends one request to the running proxy of `config` and returns its answer.
///
/// # Errors
/// No proxy running (no socket), or an error answer.
pub fn request(config: &Path, req: &ControlRequest) -> Result<serde_json::Value> {
    let path = config.join(SOCKET);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        anyhow::anyhow!(
            "no running proxy answers on {} ({e}); start one with `nexus-agent-proxy run`",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = serde_json::to_string(req)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let value: serde_json::Value =
        serde_json::from_str(&line).context("the proxy's answer is not JSON")?;
    if let Some(e) = value.get("error").and_then(|e| e.as_str()) {
        bail!("{e}");
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One watcher serves every call under way: a lock file written while
    /// calls wait wakes each of them, and `is_on` sees it at once.
    #[tokio::test]
    async fn the_kill_switch_wakes_every_waiting_call() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let switch = Arc::new(KillSwitch::new(dir.path()));
        assert!(!switch.is_on());
        let stop = CancellationToken::new();
        let watcher = tokio::spawn({
            let (switch, stop) = (switch.clone(), stop.clone());
            async move { switch.watch(stop).await }
        });
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let switch = switch.clone();
                tokio::spawn(async move { switch.engaged().await })
            })
            .collect();
        std::fs::write(lock_path(dir.path()), b"1\n").unwrap_or_else(|e| panic!("{e}"));
        for call in waiting {
            let woke = tokio::time::timeout(Duration::from_secs(10), call).await;
            assert!(matches!(woke, Ok(Ok(()))), "a call missed the lock");
        }
        assert!(switch.is_on());
        std::fs::remove_file(lock_path(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        assert!(!switch.is_on(), "unlock is seen at once");
        stop.cancel();
        assert!(watcher.await.is_ok());
    }

    /// Anything at the lock path, even a dangling link or a directory, is
    /// on; only "no such file" is off. The path is looked at each time, so
    /// a configuration directory moved aside and made again (a restore
    /// from backup) is the one whose lock counts. (A build that held the
    /// old directory open kept serving after `lock` wrote the new one.)
    #[cfg(unix)]
    #[test]
    fn the_lock_path_is_looked_at_each_time() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap_or_else(|e| panic!("{e}"));
        let switch = KillSwitch::new(&config);
        let lock = lock_path(&config);
        std::os::unix::fs::symlink(config.join("nowhere"), &lock).unwrap_or_else(|e| panic!("{e}"));
        assert!(switch.is_on(), "a dangling link");
        std::fs::remove_file(&lock).unwrap_or_else(|e| panic!("{e}"));
        assert!(!switch.is_on());
        std::fs::create_dir(&lock).unwrap_or_else(|e| panic!("{e}"));
        assert!(switch.is_on(), "a directory");
        std::fs::remove_dir(&lock).unwrap_or_else(|e| panic!("{e}"));
        assert!(!switch.is_on());
        std::fs::rename(&config, dir.path().join("config.old")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(&config).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&lock, b"1\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(switch.is_on(), "the lock of the directory made again");
    }
}
