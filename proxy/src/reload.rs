//! The policy in force, and reloading it when its files change.
//!
//! Every call reads the policy once ([`PolicyHandle::current`]) and decides
//! with that snapshot, so a reload never splits a call between two
//! versions. A valid change applies to the next call; the tunnels stay up.
//! An invalid change keeps the last good policy and is reported with
//! `file:line:col` in the log and in `status`: a broken file never loosens
//! (nor tightens) anything.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nexus_policy::PolicySet;
use notify::{EventKind, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Quiet time after the last file event before reloading: editors write a
/// file in several steps (truncate, write, rename).
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Where the layers are read from.
#[derive(Clone, Debug, Default)]
pub struct PolicyPaths {
    /// The user's policy file or directory; `None`: deny everything.
    pub user: Option<PathBuf>,
    /// The org baseline file or directory; `None`: no baseline.
    pub baseline: Option<PathBuf>,
}

/// What `status` says about the policy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// Hash of the files in force.
    pub digest: String,
    /// When they were loaded (seconds since the epoch).
    pub loaded_at: u64,
    /// The user's policy path.
    pub user: Option<String>,
    /// The baseline path.
    pub baseline: Option<String>,
    /// Successful reloads since start.
    pub reloads: u64,
    /// The last failed reload's errors (`file:line:col: message` lines),
    /// cleared by the next successful one.
    pub last_error: Option<String>,
}

/// The policy in force, swappable at run time.
#[derive(Debug)]
pub struct PolicyHandle {
    current: RwLock<Arc<PolicySet>>,
    info: Mutex<PolicyInfo>,
    paths: PolicyPaths,
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl PolicyHandle {
    /// A handle holding `set`, loaded from `paths`.
    pub fn new(set: PolicySet, paths: PolicyPaths) -> Self {
        let info = PolicyInfo {
            digest: set.digest().to_owned(),
            loaded_at: now_secs(),
            user: paths.user.as_ref().map(|p| p.display().to_string()),
            baseline: paths.baseline.as_ref().map(|p| p.display().to_string()),
            ..PolicyInfo::default()
        };
        Self {
            current: RwLock::new(Arc::new(set)),
            info: Mutex::new(info),
            paths,
        }
    }

    /// The policy for one call.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What `status` shows.
    pub fn info(&self) -> PolicyInfo {
        self.info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again: a valid policy replaces the current one, an
    /// invalid one is reported and changes nothing. Blocking (file reads).
    ///
    /// # Errors
    /// The load errors, `file:line:col` per line.
    pub fn reload(&self) -> Result<(), String> {
        let loaded = PolicySet::load(self.paths.user.as_deref(), self.paths.baseline.as_deref());
        let mut info = self.info.lock().unwrap_or_else(PoisonError::into_inner);
        match loaded {
            Ok(set) => {
                if set.digest() == info.digest {
                    info.last_error = None;
                    return Ok(());
                }
                for w in set.warnings() {
                    warn!(warning = %w, "policy");
                }
                info.digest = set.digest().to_owned();
                info.loaded_at = now_secs();
                info.reloads += 1;
                info.last_error = None;
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
                info!(digest = %info.digest, "policy reloaded; applies to the next call");
                Ok(())
            }
            Err(e) => {
                let text = format!("{} ({}): {e}", e.layer, "kept the last good policy");
                error!(layer = %e.layer, errors = %e, "policy reload failed; keeping the last good policy");
                info.last_error = Some(text.clone());
                Err(text)
            }
        }
    }

    /// Watches the policy and baseline files and reloads on change, until
    /// `shutdown`. Returns at once if nothing can be watched (logged).
    pub fn watch(self: Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let targets: Vec<Target> = [&self.paths.user, &self.paths.baseline]
            .into_iter()
            .flatten()
            .map(|p| Target::of(p))
            .collect();
        let filter = targets.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            if event
                .paths
                .iter()
                .any(|p| filter.iter().any(|t| t.concerns(p)))
            {
                // Full: a reload is already due, which will read this too.
                let _ = tx.try_send(());
            }
        });
        let watcher = watcher.and_then(|mut w| {
            for t in &targets {
                w.watch(&t.dir, RecursiveMode::NonRecursive)?;
            }
            Ok(w)
        });
        tokio::spawn(async move {
            let _watcher = match watcher {
                Ok(w) => w,
                Err(e) => {
                    return warn!(error = %e, "cannot watch the policy files; changes need a restart");
                }
            };
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    got = rx.recv() => if got.is_none() { return },
                }
                // Debounce: reload once the files have been quiet for a moment.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                let handle = self.clone();
                let _ = tokio::task::spawn_blocking(move || handle.reload()).await;
            }
        })
    }
}

/// A watched directory, and which files in it matter.
#[derive(Clone, Debug)]
struct Target {
    dir: PathBuf,
    /// `Some(name)`: only this file; `None`: any `*.toml` in `dir`.
    file: Option<std::ffi::OsString>,
}

impl Target {
    fn of(path: &Path) -> Target {
        if path.is_dir() {
            Target {
                dir: path.to_path_buf(),
                file: None,
            }
        } else {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            Target {
                dir,
                file: path.file_name().map(ToOwned::to_owned),
            }
        }
    }

    /// Whether an event on `path` may change the policy.
    fn concerns(&self, path: &Path) -> bool {
        let in_dir = path.parent().is_some_and(|p| same_dir(p, &self.dir));
        match &self.file {
            Some(name) => in_dir && path.file_name() == Some(name.as_os_str()),
            None => (in_dir && path.extension().is_some_and(|e| e == "toml")) || path == self.dir,
        }
    }
}

/// Directory equality that survives `./x` versus `/abs/x` spellings.
fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_reload_keeps_the_last_good_policy() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("policy.toml");
        std::fs::write(&file, "[tokens.a]\nsource = \"env:A\"\n").unwrap_or_else(|e| panic!("{e}"));
        let paths = PolicyPaths {
            user: Some(file.clone()),
            baseline: None,
        };
        let set = PolicySet::load(Some(&file), None).unwrap_or_else(|e| panic!("{e}"));
        let handle = PolicyHandle::new(set, paths);
        let first = handle.info().digest;
        std::fs::write(&file, "[tokens.a\n").unwrap_or_else(|e| panic!("{e}"));
        let err = handle.reload().err().unwrap_or_default();
        assert!(err.contains("policy.toml:1:"), "{err}");
        assert_eq!(handle.info().digest, first);
        assert!(handle.info().last_error.is_some());
        assert_eq!(handle.current().user().token_names(), ["a"]);
        std::fs::write(&file, "[tokens.b]\nsource = \"env:B\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(handle.reload(), Ok(()));
        assert_eq!(handle.current().user().token_names(), ["b"]);
        assert!(handle.info().last_error.is_none());
        assert_eq!(handle.info().reloads, 1);
    }

    #[test]
    fn a_vanished_or_broken_baseline_never_loosens() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let user = dir.path().join("policy.toml");
        let base = dir.path().join("base.d");
        let write = |p: &Path, t: &str| std::fs::write(p, t).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(&base).unwrap_or_else(|e| panic!("{e}"));
        write(&user, "[tokens.prod]\nsource = \"env:A\"\n");
        let deny = base.join("deny.toml");
        write(&deny, "[[tokens.deny]]\nname = \"prod\"\n");
        let paths = PolicyPaths {
            user: Some(user.clone()),
            baseline: Some(base.clone()),
        };
        let set = PolicySet::load(Some(&user), Some(&base)).unwrap_or_else(|e| panic!("{e}"));
        let handle = PolicyHandle::new(set, paths);
        let denied = |h: &PolicyHandle| {
            h.current()
                .decide(&nexus_policy::Request {
                    workspace: "dev",
                    caller: None,
                    action: nexus_policy::Action::Token { name: "prod" },
                })
                .verdict
                == nexus_policy::Verdict::Deny
        };
        assert!(denied(&handle));
        write(&deny, "[[tokens.deny]]\nname = \"prod\"\nbroken\n");
        assert!(handle.reload().is_err());
        assert!(denied(&handle));
        std::fs::remove_dir_all(&base).unwrap_or_else(|e| panic!("{e}"));
        assert!(handle.reload().is_err());
        assert!(denied(&handle));
    }

    #[test]
    fn a_call_never_sees_two_versions_while_reloads_race_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("policy.toml");
        let versions = [
            "[tokens.a]\nsource = \"env:A\"\n[[tokens.deny]]\nname = \"b\"\n",
            "[tokens.b]\nsource = \"env:B\"\n[[tokens.deny]]\nname = \"a\"\n",
        ];
        let put = |text: &str| {
            let tmp = dir.path().join("policy.tmp");
            std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{e}"));
            std::fs::rename(&tmp, &file).unwrap_or_else(|e| panic!("{e}"));
        };
        put(versions[0]);
        let set = PolicySet::load(Some(&file), None).unwrap_or_else(|e| panic!("{e}"));
        let handle = Arc::new(PolicyHandle::new(
            set,
            PolicyPaths {
                user: Some(file.clone()),
                baseline: None,
            },
        ));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deciders: Vec<_> = (0..3)
            .map(|_| {
                let (handle, stop) = (handle.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut calls = 0u32;
                    loop {
                        let policy = handle.current();
                        let allowed = |name| {
                            policy
                                .decide(&nexus_policy::Request {
                                    workspace: "dev",
                                    caller: None,
                                    action: nexus_policy::Action::Token { name },
                                })
                                .verdict
                                == nexus_policy::Verdict::Allow
                        };
                        assert!(allowed("a") != allowed("b"), "a call saw a mixed policy");
                        calls += 1;
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return calls;
                        }
                    }
                })
            })
            .collect();
        for i in 0..100 {
            put(versions[(i + 1) % 2]);
            assert_eq!(handle.reload(), Ok(()));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for d in deciders {
            assert!(d.join().unwrap_or_else(|_| panic!("a decider failed")) > 0);
        }
        assert_eq!(handle.info().reloads, 100);
    }

    #[test]
    fn targets_match_only_policy_files() {
        let file = Target {
            dir: "/c".into(),
            file: Some("policy.toml".into()),
        };
        assert!(file.concerns(Path::new("/c/policy.toml")));
        assert!(!file.concerns(Path::new("/c/audit.jsonl")));
        assert!(!file.concerns(Path::new("/c/x/policy.toml")));
        let dir = Target {
            dir: "/c/policy.d".into(),
            file: None,
        };
        assert!(dir.concerns(Path::new("/c/policy.d/10.toml")));
        assert!(!dir.concerns(Path::new("/c/policy.d/10.toml.swp")));
    }
}
