//! Laptop files for the workspace, read-only: `file get PATH` for a file an
//! `[[files.allow]]` rule covers, `file sync SET` for a declared set.
//!
//! The policy judges the path lexically (`~/x` or `/x`, no `..`); here the
//! path is resolved on the laptop, symlinks included, and the file actually
//! opened must still lie under the granted path, be a regular file (no
//! device, fifo or socket) and fit the size limit. The data is streamed in
//! chunks, at the pace the workspace reads it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nexus_policy::{Action, Grant, PolicySet};
use nexus_protocol::{Channel, ErrorCode, MAX_CHUNK, Reply};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::pipeline::{Asked, Decided, Scope, Tool, wrong_grant};
use super::{ToolContext, clip};

/// Files a set may install at most (directories are walked).
pub const MAX_SET_FILES: usize = 1000;
/// Directory depth walked inside a set's directory.
const MAX_DEPTH: usize = 8;

/// `~/x`, `$HOME/x`, `${HOME}/x` → `~/x`; `/x` stays; anything else is refused.
pub fn normalize(path: &str) -> Result<String, String> {
    for prefix in ["$HOME/", "${HOME}/"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            return Ok(format!("~/{rest}"));
        }
    }
    if path.starts_with("~/") || path.starts_with('/') {
        Ok(path.to_owned())
    } else {
        Err(format!(
            "path {:?} must start with ~/, $HOME/ or /",
            clip(path)
        ))
    }
}

fn expand(path: &str, home: Option<&Path>) -> Option<PathBuf> {
    match path.strip_prefix("~/") {
        Some(rest) => home.map(|h| h.join(rest)),
        None => Some(PathBuf::from(path)),
    }
}

/// Why a file could not be handed out.
fn refused(code: ErrorCode, msg: String) -> Reply {
    Reply::error(code, msg)
}

/// An opened, checked file.
struct Opened {
    file: tokio::fs::File,
    /// The file actually opened, symlinks resolved.
    real: PathBuf,
    size: u64,
    mode: u32,
}

/// Opens `shown` (normalized) at `real` only if it resolves under `root`
/// (a directory for a directory rule, else the allowed file itself), is a
/// regular file, and is at most `max` bytes.
async fn open_checked(
    shown: &str,
    real: &Path,
    root: &Path,
    dir: bool,
    max: u64,
) -> Result<Opened, Reply> {
    let not_found = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let canon_root = tokio::fs::canonicalize(root).await.map_err(|e| {
        if not_found(&e) {
            refused(ErrorCode::Missing, format!("{shown}: not on the laptop"))
        } else {
            refused(ErrorCode::Internal, format!("{shown}: {e}"))
        }
    })?;
    let canon = tokio::fs::canonicalize(real).await.map_err(|e| {
        if not_found(&e) {
            refused(ErrorCode::Missing, format!("{shown}: not on the laptop"))
        } else {
            refused(ErrorCode::Internal, format!("{shown}: {e}"))
        }
    })?;
    let inside = |p: &Path| {
        if dir {
            p.starts_with(&canon_root) && p != canon_root
        } else {
            p == canon_root
        }
    };
    if !inside(&canon) {
        return Err(refused(
            ErrorCode::Denied,
            format!("{shown}: resolves (through a symlink) outside the path the policy allows"),
        ));
    }
    let mut opts = tokio::fs::OpenOptions::new();
    opts.read(true)
        // No blocking on a fifo swapped in after the check, no symlink at the end.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    let file = opts
        .open(&canon)
        .await
        .map_err(|e| refused(ErrorCode::Denied, format!("{shown}: cannot open: {e}")))?;
    // What was opened is judged, not the name: a swap between the checks
    // above and the open is caught here.
    #[cfg(target_os = "linux")]
    let canon = {
        use std::os::fd::AsRawFd;
        let fd_path = tokio::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .await
            .map_err(|e| refused(ErrorCode::Internal, format!("{shown}: {e}")))?;
        if !inside(&fd_path) {
            return Err(refused(
                ErrorCode::Denied,
                format!("{shown}: changed while being opened; refused"),
            ));
        }
        fd_path
    };
    let meta = file
        .metadata()
        .await
        .map_err(|e| refused(ErrorCode::Internal, format!("{shown}: {e}")))?;
    if meta.is_dir() {
        return Err(refused(
            ErrorCode::BadRequest,
            format!(
                "{shown} is a directory; get its files one by one, or declare a set and use file sync"
            ),
        ));
    }
    if !meta.is_file() {
        return Err(refused(
            ErrorCode::Denied,
            format!("{shown} is not a regular file (device, fifo or socket); refused"),
        ));
    }
    if meta.len() > max {
        return Err(refused(
            ErrorCode::Denied,
            format!(
                "{shown} is {} bytes, over the policy's max_size of {max}",
                meta.len()
            ),
        ));
    }
    Ok(Opened {
        file,
        real: canon,
        size: meta.len(),
        mode: meta.permissions().mode() & 0o777,
    })
}

/// A file was not sent whole: the workspace caller went away.
struct Gone;

impl Gone {
    fn reply(self) -> Reply {
        debug!("the workspace caller went away during a file transfer");
        Reply::Done
    }
}

/// The deny rule covering the file actually opened (symlinks resolved),
/// in its `/abs` form and, under the laptop home, its `~/x` form: a deny
/// rule judges what is read, not only the name asked for.
async fn denied_real(ctx: &ToolContext, workspace: &str, real: &Path) -> Option<String> {
    let policy = ctx.policy.current();
    let mut forms = Vec::new();
    if let Some(home) = ctx.home()
        && let Ok(home) = tokio::fs::canonicalize(home).await
        && let Ok(rest) = real.strip_prefix(&home)
        && let Some(rest) = rest.to_str()
    {
        forms.push(format!("~/{rest}"));
    }
    forms.extend(real.to_str().map(str::to_owned));
    forms
        .iter()
        .find_map(|f| policy.file_denied(workspace, f))
        .map(|rule| rule.to_string())
}

/// Room kept before the data in the read buffer for its frame's prefix
/// (37 bytes at most; see [`nexus_protocol::chunk_frame_prefix`]).
const PREFIX_ROOM: usize = 64;

/// Sends one opened file: its header, then its data in chunks.
///
/// Each chunk is read (on the blocking pool, into a buffer kept for the
/// whole file) right behind the room for its frame's prefix, which is then
/// written in front of it: the data is copied once, by the read, before
/// the stream takes it. The next chunk is read while this one is sent.
async fn send_file<S: AsyncWrite + Unpin>(shown: &str, f: Opened, out: &mut S) -> Result<(), Gone> {
    let header = Reply::FileStart {
        path: shown.to_owned(),
        size: f.size,
        mode: f.mode,
    };
    nexus_transport::send(out, &header)
        .await
        .map_err(|_| Gone)?;
    let file = f.file.into_std().await;
    let mut left = f.size;
    let mut spare = Vec::new();
    let mut reading = (left > 0).then(|| read_chunk(file, Vec::new(), left));
    while let Some(read) = reading.take() {
        let (file, mut buf, n) = read.await.map_err(|_| Gone)?;
        let n = n.map_err(|_| Gone)?;
        if n == 0 {
            // Shrank while read: the workspace sees a short file and fails.
            break;
        }
        left -= n as u64;
        if left > 0 {
            reading = Some(read_chunk(file, std::mem::take(&mut spare), left));
        }
        let prefix = nexus_protocol::chunk_frame_prefix(Channel::Data, n);
        let start = PREFIX_ROOM.checked_sub(prefix.len()).ok_or(Gone)?;
        buf[start..PREFIX_ROOM].copy_from_slice(&prefix);
        out.write_all(&buf[start..PREFIX_ROOM + n])
            .await
            .map_err(|_| Gone)?;
        out.flush().await.map_err(|_| Gone)?;
        spare = buf;
    }
    Ok(())
}

/// Reads the next chunk of `file` (`left` bytes to go) into `buf` behind
/// [`PREFIX_ROOM`], on the blocking pool; gives back the file, the buffer
/// and the bytes read.
fn read_chunk(
    mut file: std::fs::File,
    mut buf: Vec<u8>,
    left: u64,
) -> tokio::task::JoinHandle<(std::fs::File, Vec<u8>, std::io::Result<usize>)> {
    tokio::task::spawn_blocking(move || {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(MAX_CHUNK);
        // Grown once (zeroed then); later chunks reuse it as it is.
        if buf.len() < PREFIX_ROOM + want {
            buf.resize(PREFIX_ROOM + want, 0);
        }
        let n = loop {
            match std::io::Read::read(&mut file, &mut buf[PREFIX_ROOM..PREFIX_ROOM + want]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        (file, buf, n)
    })
}

/// `file get PATH`.
#[derive(Debug)]
pub struct Get<'a> {
    path: &'a str,
    /// The path normalized by `ask` (`~/x` or `/x`).
    shown: String,
}

impl<'a> Get<'a> {
    /// The request for `path`, as the workspace wrote it.
    pub fn new(path: &'a str) -> Self {
        Self {
            path,
            shown: String::new(),
        }
    }
}

impl Tool for Get<'_> {
    fn ask(&mut self, scope: &Scope<'_>, policy: &PolicySet) -> Result<Asked, Reply> {
        self.shown = normalize(self.path).map_err(|m| Reply::error(ErrorCode::BadRequest, m))?;
        let outcome = scope.decide(policy, Action::File { path: &self.shown });
        Ok(Asked::decided(Decided::new(
            outcome,
            "file",
            self.shown.clone(),
        )))
    }

    /// A refusal made here, after the policy allowed the path (a symlink
    /// out of the allowed tree, a denied file behind it, over the size
    /// limit, not a regular file), is audited by the pipeline.
    async fn run<S>(
        self,
        scope: &Scope<'_>,
        _: &PolicySet,
        grant: Option<Grant>,
        stream: &mut S,
    ) -> Option<Reply>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(Grant::File(rule)) = grant else {
            return wrong_grant();
        };
        let (shown, ctx, workspace) = (self.shown, scope.ctx, scope.workspace);
        let home = ctx.home();
        let (Some(real), Some(root)) = (
            expand(&shown, home.as_deref()),
            expand(&rule.path, home.as_deref()),
        ) else {
            return Some(Reply::error(
                ErrorCode::Internal,
                "the laptop user has no home directory",
            ));
        };
        if rule.is_dir() && is_dir_inside(&real, &root).await {
            let dir = format!("{}/", shown.trim_end_matches('/'));
            let files = collect(&[dir], &root, home.as_deref()).await;
            return Some(send_all(files, rule.max_size, workspace, ctx, stream).await);
        }
        let opened = match open_checked(&shown, &real, &root, rule.is_dir(), rule.max_size).await {
            Ok(o) => o,
            Err(reply) => return Some(reply),
        };
        if let Some(rule) = denied_real(ctx, workspace, &opened.real).await {
            tracing::warn!(path = %clip(&shown), %rule, "file get resolves to a denied file");
            return Some(Reply::error(
                ErrorCode::Denied,
                format!(
                    "{shown}: resolves (through a symlink) to a file [[files.deny]] covers ({rule})"
                ),
            ));
        }
        Some(match send_file(&shown, opened, stream).await {
            Ok(()) => Reply::Done,
            Err(gone) => gone.reply(),
        })
    }
}

/// `file sync SET`.
#[derive(Debug)]
pub struct Sync<'a> {
    /// The set's name in the policy.
    pub set: &'a str,
}

impl Tool for Sync<'_> {
    fn ask(&mut self, scope: &Scope<'_>, policy: &PolicySet) -> Result<Asked, Reply> {
        let outcome = scope.decide(policy, Action::FileSet { name: self.set });
        Ok(Asked::decided(Decided::new(
            outcome,
            "file-set",
            self.set.to_owned(),
        )))
    }

    async fn run<S>(
        self,
        scope: &Scope<'_>,
        _: &PolicySet,
        grant: Option<Grant>,
        stream: &mut S,
    ) -> Option<Reply>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(Grant::FileSet(rule)) = grant else {
            return wrong_grant();
        };
        let home = scope.ctx.home();
        let mut files = Vec::new();
        for entry in &rule.paths {
            if let Some(root) = expand(entry, home.as_deref()) {
                files.extend(collect(std::slice::from_ref(entry), &root, home.as_deref()).await);
            }
        }
        Some(send_all(files, rule.max_size, scope.workspace, scope.ctx, stream).await)
    }
}

/// Whether `real` is a directory that resolves inside `root`.
async fn is_dir_inside(real: &Path, root: &Path) -> bool {
    let (Ok(r), Ok(c)) = (
        tokio::fs::canonicalize(root).await,
        tokio::fs::canonicalize(real).await,
    ) else {
        return false;
    };
    c.starts_with(&r) && tokio::fs::metadata(&c).await.is_ok_and(|m| m.is_dir())
}

/// Sends every file that passes the checks; the others become notes on
/// stderr. The deny rules apply to each file found.
async fn send_all<S: AsyncWrite + Unpin>(
    files: Vec<Found>,
    max: u64,
    workspace: &str,
    ctx: &ToolContext,
    stream: &mut S,
) -> Reply {
    for (shown, real, root, dir) in files {
        if let Some(deny) = ctx.policy.current().file_denied(workspace, &shown) {
            debug!(path = %clip(&shown), rule = %deny, "file denied inside a granted directory");
            continue;
        }
        match open_checked(&shown, &real, &root, dir, max).await {
            Ok(opened) => {
                if let Some(rule) = denied_real(ctx, workspace, &opened.real).await {
                    debug!(path = %clip(&shown), %rule, "file resolves to a denied file");
                    continue;
                }
                if let Err(gone) = send_file(&shown, opened, stream).await {
                    return gone.reply();
                }
            }
            Err(Reply::Error(e)) => {
                let note = format!("nexus: skipped {shown}: {}\n", e.message);
                let chunk = Reply::Chunk {
                    channel: Channel::Stderr,
                    data: note.into_bytes(),
                };
                if nexus_transport::send(stream, &chunk).await.is_err() {
                    return Reply::Done;
                }
            }
            Err(_) => {}
        }
    }
    Reply::Done
}

/// A file found: (shown path, real path, root it must resolve under, root is a directory).
type Found = (String, PathBuf, PathBuf, bool);

/// The files under `entries` (`~/file`, or `~/dir/` walked without
/// following symlinked directories), each to be checked against `root`.
async fn collect(entries: &[String], root: &Path, home: Option<&Path>) -> Vec<Found> {
    let mut out = Vec::new();
    for entry in entries {
        let Some(start) = expand(entry, home) else {
            continue;
        };
        if !entry.ends_with('/') {
            out.push((entry.clone(), start, root.to_path_buf(), false));
            continue;
        }
        let mut stack = vec![(start, entry.clone(), 0usize)];
        while let Some((dir, shown, depth)) = stack.pop() {
            let Ok(mut rd) = tokio::fs::read_dir(&dir).await else {
                continue;
            };
            while let Ok(Some(e)) = rd.next_entry().await {
                if out.len() >= MAX_SET_FILES {
                    return out;
                }
                let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(kind) = e.file_type().await else {
                    continue;
                };
                let child_shown = format!("{shown}{name}");
                if kind.is_dir() && depth < MAX_DEPTH {
                    stack.push((e.path(), format!("{child_shown}/"), depth + 1));
                } else if kind.is_file() || kind.is_symlink() {
                    out.push((child_shown, e.path(), root.to_path_buf(), true));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::test_support;

    #[test]
    fn normalizing() {
        assert_eq!(normalize("~/a"), Ok("~/a".into()));
        assert_eq!(normalize("$HOME/a"), Ok("~/a".into()));
        assert_eq!(normalize("${HOME}/a/b"), Ok("~/a/b".into()));
        assert_eq!(normalize("/etc/x"), Ok("/etc/x".into()));
        assert!(normalize("a").is_err());
        assert!(normalize("~root/x").is_err());
    }

    /// `lock` is a kill switch: a file being streamed when the laptop
    /// locks stops there, with a denial, and the audit log says so.
    #[tokio::test]
    async fn a_lock_stops_a_file_being_sent() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("big");
        std::fs::write(&file, vec![7u8; 4 << 20]).unwrap_or_else(|e| panic!("{e}"));
        let policy = format!("[[files.allow]]\npath = \"{}/\"\n", dir.path().display());
        let config = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ctx = test_support::with_config(test_support::context(&policy, None), config.path());
        let ctx = std::sync::Arc::new(ctx);
        let lock = crate::control::lock_path(config.path());
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 12);
        let path = file.display().to_string();
        let send = tokio::spawn({
            let ctx = ctx.clone();
            async move {
                let get = nexus_protocol::Request::FileGet { path };
                test_support::call(&ctx, get, &mut ours).await
            }
        });
        let first = nexus_transport::recv::<_, Reply>(&mut theirs, 1 << 20).await;
        assert!(matches!(first, Ok(Reply::FileStart { .. })), "{first:?}");
        std::fs::write(&lock, b"1\n").unwrap_or_else(|e| panic!("{e}"));
        // What `lock`'s notice on the control socket does.
        assert!(ctx.lock.is_on());
        let reader = tokio::spawn(async move {
            let mut got = 0usize;
            while let Ok(r) = nexus_transport::recv::<_, Reply>(&mut theirs, 1 << 20).await {
                if let Reply::Chunk { data, .. } = r {
                    got += data.len();
                }
            }
            got
        });
        let end = send.await.ok().flatten().unwrap_or(Reply::Done);
        assert!(
            matches!(&end, Reply::Error(e) if e.code == ErrorCode::Denied),
            "{end:?}"
        );
        let got = reader.await.unwrap_or(usize::MAX);
        assert!(got < 4 << 20, "the whole file went out after the lock");
        let last = ctx.audit.recent().pop();
        assert!(
            last.as_ref().is_some_and(|e| e.decision == "deny"
                && e.target.ends_with("/big")
                && e.reason.contains("stopped under way")),
            "{last:?}"
        );
    }

    /// A deny rule judges the file actually read, not only the name asked
    /// for: a symlink inside an allowed tree must not hand out a file a
    /// deny rule covers (`file get DIR/link`, or DIR walked as a whole).
    #[tokio::test]
    async fn a_symlink_does_not_dodge_a_deny_rule() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("auth.key"), b"SECRET-KEY")
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("auth.key", dir.path().join("current"))
            .unwrap_or_else(|e| panic!("{e}"));
        let policy = format!(
            "[[files.allow]]\npath = \"{}/\"\n\n[[files.deny]]\npath = \"**/*.key\"\n",
            dir.path().display()
        );
        let ctx = crate::tools::test_support::context(&policy, None);
        for ask in ["current", ""] {
            let path = format!("{}/{ask}", dir.path().display());
            let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
            let get = nexus_protocol::Request::FileGet { path: path.clone() };
            let end = test_support::call(&ctx, get, &mut ours).await;
            drop(ours);
            let mut leaked = false;
            while let Ok(r) = nexus_transport::recv::<_, Reply>(&mut theirs, 1 << 20).await {
                if let Reply::Chunk { data, .. } = r {
                    leaked |= data.windows(10).any(|w| w == b"SECRET-KEY");
                }
            }
            assert!(!leaked, "get {path}: the denied file was sent ({end:?})");
        }
        // The refusal after the policy's "allow" is in the audit log too.
        let decisions: Vec<(String, String)> = ctx
            .audit
            .recent()
            .into_iter()
            .map(|e| (e.target, e.decision))
            .collect();
        let current = format!("{}/current", dir.path().display());
        assert!(
            decisions.contains(&(current.clone(), "allow".into()))
                && decisions.contains(&(current, "deny".into())),
            "{decisions:?}"
        );
    }
}
