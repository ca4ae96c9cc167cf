//! Whether what a command finds in the state directory is its own user's.
//!
//! Other users may share the workspace (a sidecar, a CI runner's helpers,
//! an agent sandbox with several uids). If one of them could replace the
//! state directory, the daemon behind `shim.sock` or the `http.url` a
//! command reads, the workspace user's `pairing-uri` would print theirs and
//! the laptop would pair with them; `nexus-shim env` would send the agent's
//! API requests to them. So every command checks, before trusting anything:
//! - every folder above the state directory: owned by the caller or root,
//!   and no other user may write to it unless the sticky bit keeps them
//!   from moving what is not theirs (`/tmp` is fine, a world-writable
//!   volume without it is not, nor any folder another user owns);
//! - files read directly (`http.url`): owned by the caller (or root), not
//!   writable by others, not a link;
//! - the daemon behind a socket: `SO_PEERCRED` says it runs as the caller's
//!   uid or as root.
//!
//! A refusal names the path (or socket) and says why and what to do.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// The uid commands run as, asked once: the daemon checks it for every
/// local connection, and it never changes.
#[cfg(unix)]
pub(crate) fn me() -> u32 {
    static ME: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ME.get_or_init(|| rustix::process::geteuid().as_raw())
}

/// Whether `owner` may be trusted by the caller: the caller or root.
#[cfg(unix)]
fn trusted_owner(owner: u32) -> bool {
    owner == me() || owner == 0
}

/// Refuses a state directory below a folder another user could rename or
/// replace it in.
///
/// # Errors
/// The first unsafe folder, with the reason and the fix.
#[cfg(unix)]
pub fn check_ancestors(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let real = dir
        .canonicalize()
        .with_context(|| format!("resolving state dir {}", dir.display()))?;
    for folder in real.ancestors().skip(1) {
        let meta =
            std::fs::metadata(folder).with_context(|| format!("reading {}", folder.display()))?;
        let mode = meta.mode();
        let sticky = mode & 0o1000 != 0;
        let owner_is_other = !trusted_owner(meta.uid());
        let shared_write = mode & 0o022 != 0;
        // The sticky bit binds other users, never the folder's owner: a
        // folder another user owns is theirs to rearrange either way.
        if owner_is_other {
            bail!(
                "state dir {}: its parent {} belongs to uid {}, who could move it aside and put \
                 another in its place; use a state dir under a folder of your own (--state-dir \
                 or NEXUS_STATE_DIR)",
                dir.display(),
                folder.display(),
                meta.uid()
            );
        }
        if shared_write && !sticky {
            bail!(
                "state dir {}: its parent {} is writable by other users (mode {:04o}) without \
                 the sticky bit, so they could move the state dir aside and put another in its \
                 place; fix it with `chmod go-w {}` (or `chmod +t` on a shared volume), or use \
                 another --state-dir",
                dir.display(),
                folder.display(),
                mode & 0o7777,
                folder.display()
            );
        }
    }
    Ok(())
}

/// Reads a small file the daemon wrote, refusing one another user could
/// have written.
///
/// # Errors
/// When it is missing, unreadable, a link, or not the caller's own.
#[cfg(unix)]
pub fn read_private(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || !trusted_owner(meta.uid()) || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a private file of yours (owner uid {}, mode {:03o}); another user may \
                 have written it. Restart the daemon (`nexus-shim serve`) to write it anew",
                path.display(),
                meta.uid(),
                meta.mode() & 0o777
            ),
        ));
    }
    let mut text = String::new();
    file.take(64 << 10).read_to_string(&mut text)?;
    Ok(text)
}

/// Checks that the process behind a connected socket runs as the caller
/// (or root).
///
/// # Errors
/// When it runs as another user, or its credentials cannot be read.
#[cfg(unix)]
pub fn check_peer(stream: &tokio::net::UnixStream, socket: &Path) -> Result<()> {
    let cred = stream
        .peer_cred()
        .with_context(|| format!("reading the credentials of {}", socket.display()))?;
    if trusted_owner(cred.uid()) {
        return Ok(());
    }
    bail!(
        "the daemon behind {} runs as uid {}, not as you (uid {}): another user started it; \
         refusing to talk to it. Stop it, or use a state dir of your own (--state-dir)",
        socket.display(),
        cred.uid(),
        me()
    )
}

/// The credentials of the process at the other end of an accepted
/// connection (one `SO_PEERCRED` read, kept for the caller's context), if
/// it runs as this daemon's user or as root (what ssh-agent checks with
/// getpeereid).
pub fn trusted_peer(stream: &tokio::net::UnixStream) -> Option<tokio::net::unix::UCred> {
    stream.peer_cred().ok().filter(|c| trusted_owner(c.uid()))
}

/// Elsewhere: no uids to compare.
#[cfg(not(unix))]
pub fn check_ancestors(_dir: &Path) -> Result<()> {
    Ok(())
}

/// Elsewhere: a plain read.
#[cfg(not(unix))]
pub fn read_private(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_writable_parent_needs_the_sticky_bit() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let shared = tmp.path().join("shared");
        let state = shared.join("nexus");
        std::fs::create_dir_all(&state).unwrap_or_else(|e| panic!("{e}"));
        chmod(&shared, 0o700);
        assert!(check_ancestors(&state).is_ok());
        chmod(&shared, 0o2777);
        let err = check_ancestors(&state)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("without the sticky bit") && err.contains("shared"),
            "{err}"
        );
        chmod(&shared, 0o1777);
        assert!(check_ancestors(&state).is_ok());
    }

    /// The owner of a folder may rename anything in it, sticky bit or not
    /// (sticky only stops *other* users): a sticky folder that belongs to
    /// another user is as unsafe a parent as one without the bit.
    #[test]
    fn a_sticky_parent_owned_by_another_user_is_refused() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let shared = tmp.path().join("shared");
        let state = shared.join("nexus");
        std::fs::create_dir_all(&state).unwrap_or_else(|e| panic!("{e}"));
        chmod(&shared, 0o1777);
        // Handing a folder to another uid needs root; elsewhere there is
        // nothing to set up.
        if std::os::unix::fs::chown(&shared, Some(me().wrapping_add(4242)), None).is_err() {
            return;
        }
        let err = check_ancestors(&state)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("shared"),
            "a sticky parent owned by another uid was accepted: its owner can move the state dir aside"
        );
    }

    #[test]
    fn a_file_others_can_write_is_not_read() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = tmp.path().join("http.url");
        std::fs::write(&f, "http://127.0.0.1:1/x\n").unwrap_or_else(|e| panic!("{e}"));
        chmod(&f, 0o600);
        assert!(read_private(&f).is_ok_and(|t| t.starts_with("http://")));
        chmod(&f, 0o666);
        assert!(read_private(&f).is_err());
        chmod(&f, 0o600);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap_or_else(|e| panic!("{e}"));
        assert!(read_private(&link).is_err(), "a link is not followed");
    }
}
