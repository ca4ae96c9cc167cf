//! `file get` and `file sync`: allowlisted laptop files, read-only, each
//! written atomically (a temporary file, fsync, rename).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use nexus_protocol::{Channel, LocalOp, LocalReply, Reply, Request};

use super::call::{BROKEN_PIPE, ClientArgs, Stop, USAGE};
use crate::client::Session;
use crate::state::StateDir;

/// `file get`, `file sync`.
#[derive(Debug, Subcommand)]
pub(super) enum FileCommand {
    /// Copy one allowlisted laptop file (read-only) to stdout or DEST.
    ///
    /// `~/x`, `$HOME/x` and paths under this workspace's $HOME all mean `~/x`
    /// on the laptop.
    Get {
        /// The laptop path: `~/...` or absolute.
        path: String,
        /// Write here (atomically: a temporary file, fsync, rename) instead of stdout.
        #[arg(short = 'o', long, value_name = "DEST")]
        output: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Install a named set of laptop files into this workspace's $HOME,
    /// each file atomically.
    Sync {
        /// Set name, as declared in the laptop's policy ([files.sets.NAME]).
        set: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A file written next to its destination and renamed over it once
/// complete and synced; removed if dropped before that.
struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<std::fs::File>,
    expected: u64,
    written: u64,
    mode: u32,
}

impl AtomicFile {
    fn create(dest: &Path, expected: u64, mode: u32) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = dest
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = dest
            .file_name()
            .with_context(|| format!("{} names no file", dest.display()))?;
        let tmp = dir.join(format!(
            ".{}.nexus-{}-{:x}",
            name.to_string_lossy(),
            std::process::id(),
            rand::random::<u32>()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            file: Some(file),
            expected,
            written: 0,
            mode: (mode & 0o777) | 0o600,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.written += data.len() as u64;
        anyhow::ensure!(
            self.written <= self.expected,
            "the laptop sent more data than announced for {}",
            self.dest.display()
        );
        if let Some(f) = self.file.as_mut() {
            f.write_all(data)
                .with_context(|| format!("writing {}", self.tmp.display()))?;
        }
        Ok(())
    }

    /// The descriptor the daemon writes the file's data into.
    fn descriptor(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Ok(self.file.as_ref().context("file already finished")?.as_fd())
    }

    /// The daemon wrote `bytes` into [`Self::descriptor`].
    fn written_by_daemon(&mut self, bytes: u64) -> Result<()> {
        self.written = bytes;
        anyhow::ensure!(
            self.written <= self.expected,
            "the laptop sent more data than announced for {}",
            self.dest.display()
        );
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        anyhow::ensure!(
            self.written == self.expected,
            "{}: the laptop sent {} of {} bytes (the file changed while read?); nothing installed",
            self.dest.display(),
            self.written,
            self.expected
        );
        let file = self.file.take().context("file already finished")?;
        // The data may have been written by the daemon: the file itself
        // must hold what was announced.
        let len = file
            .metadata()
            .with_context(|| format!("reading {}", self.tmp.display()))?
            .len();
        anyhow::ensure!(
            len == self.expected,
            "{}: {len} bytes written of {} announced; nothing installed",
            self.dest.display(),
            self.expected
        );
        file.sync_all()
            .with_context(|| format!("syncing {}", self.tmp.display()))?;
        std::fs::set_permissions(&self.tmp, std::fs::Permissions::from_mode(self.mode))
            .with_context(|| format!("setting the mode of {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("installing {}", self.dest.display()))?;
        if let Some(dir) = self.dest.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Whether stdout is a file the daemon writes into itself (see
/// `sink::takes`): a regular file or `/dev/null`.
fn stdout_taken() -> bool {
    use std::os::fd::AsFd;
    std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| crate::sink::takes(&m))
}

/// This workspace's home, for `~/` in paths.
fn home() -> Result<PathBuf> {
    std::env::home_dir().context("HOME is not set in this workspace")
}

/// The laptop path for a workspace argument: paths under this workspace's
/// $HOME (a shell expanded `~`) mean the laptop's `~/`.
fn laptop_path(arg: &str) -> String {
    for prefix in ["$HOME/", "${HOME}/"] {
        if let Some(rest) = arg.strip_prefix(prefix) {
            return format!("~/{rest}");
        }
    }
    if let Ok(h) = home()
        && let Some(rest) = Path::new(arg).strip_prefix(&h).ok().and_then(Path::to_str)
        && !rest.is_empty()
    {
        let slash = if arg.ends_with('/') { "/" } else { "" };
        return format!("~/{rest}{slash}");
    }
    arg.to_owned()
}

/// Where a `~/x` file of a set goes: `$HOME/x`, never outside it.
fn install_path(shown: &str) -> Result<PathBuf> {
    let rest = shown
        .strip_prefix("~/")
        .with_context(|| format!("{shown}: only ~/ paths can be installed into the workspace"))?;
    anyhow::ensure!(
        !rest.is_empty()
            && rest
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".."),
        "{shown}: refusing a path with '.', '..' or empty segments"
    );
    Ok(home()?.join(rest))
}

/// `file get` / `file sync`.
pub(super) async fn run(state: &StateDir, cmd: FileCommand) -> Result<ExitCode> {
    let (op, client, output, sync) = match cmd {
        FileCommand::Get {
            path,
            output,
            client,
        } => (
            Request::FileGet {
                path: laptop_path(&path),
            },
            client,
            output,
            false,
        ),
        FileCommand::Sync { set, client } => (Request::FileSync { set }, client, None, true),
    };
    // A directory's files come back under it: `~/dir/` + relative path.
    let dir_prefix = match &op {
        Request::FileGet { path } => format!("{}/", path.trim_end_matches('/')),
        _ => String::new(),
    };
    // The daemon writes each file's data straight into the file (or
    // stdout) this command passes it, after each FileStart; output into a
    // pipe, a terminal or a socket comes as frames, written here.
    let direct = output.is_some() || sync || stdout_taken();
    let op = if direct {
        LocalOp::ForwardInto(op)
    } else {
        LocalOp::Forward(op)
    };
    let mut session = Session::start(state, client.wait, op).await?;
    let mut current: Option<AtomicFile> = None;
    let mut to_stdout: Option<(u64, u64)> = None;
    let mut installed = 0usize;
    let mut into = sync.then(home).transpose()?;
    loop {
        match session.next().await? {
            LocalReply::Reply(Reply::FileStart { path, size, mode }) => {
                if let Some(done) = current.take() {
                    done.finish()?;
                    installed += 1;
                }
                if sync {
                    current = Some(AtomicFile::create(&install_path(&path)?, size, mode)?);
                } else if let Some(rel) = path.strip_prefix(&dir_prefix) {
                    let Some(dest) = &output else {
                        return Err(Stop::new(
                            USAGE,
                            format!("{dir_prefix} is a directory on the laptop; give -o DEST_DIR"),
                        )
                        .into());
                    };
                    anyhow::ensure!(
                        rel.split('/')
                            .all(|s| !s.is_empty() && s != "." && s != ".."),
                        "{path}: refusing a path with '.', '..' or empty segments"
                    );
                    current = Some(AtomicFile::create(&dest.join(rel), size, mode)?);
                    into = Some(dest.clone());
                } else if let Some(dest) = &output {
                    current = Some(AtomicFile::create(dest, size, mode)?);
                } else {
                    to_stdout = Some((size, 0));
                }
                match &current {
                    Some(f) if direct => session.send_descriptor(f.descriptor()?).await?,
                    None if direct => {
                        use std::os::fd::AsFd;
                        std::io::stdout().flush().context("writing to stdout")?;
                        session.send_descriptor(std::io::stdout().as_fd()).await?;
                    }
                    _ => {}
                }
            }
            LocalReply::Written {
                bytes,
                error,
                broken_pipe,
            } => {
                if broken_pipe {
                    return Ok(ExitCode::from(BROKEN_PIPE));
                }
                if let Some(e) = error {
                    anyhow::bail!("{e}");
                }
                if let Some(f) = current.as_mut() {
                    f.written_by_daemon(bytes)?;
                } else if let Some((size, got)) = to_stdout.as_mut() {
                    *got = bytes;
                    anyhow::ensure!(*got <= *size, "the laptop sent more data than announced");
                }
            }
            LocalReply::Reply(Reply::Chunk {
                channel: Channel::Data,
                data,
            }) => {
                anyhow::ensure!(
                    !direct,
                    "the daemon relayed file data it should have written"
                );
                if let Some(f) = current.as_mut() {
                    f.write(&data)?;
                } else if let Some((size, got)) = to_stdout.as_mut() {
                    *got += data.len() as u64;
                    anyhow::ensure!(*got <= *size, "the laptop sent more data than announced");
                    let mut o = std::io::stdout().lock();
                    if o.write_all(&data).is_err() {
                        return Ok(ExitCode::from(BROKEN_PIPE));
                    }
                } else {
                    anyhow::bail!("the laptop sent data before a file header");
                }
            }
            LocalReply::Reply(Reply::Chunk {
                channel: Channel::Stderr | Channel::Stdout,
                data,
            }) => {
                let _ = std::io::stderr().write_all(&data);
            }
            LocalReply::Reply(Reply::Done) => {
                if let Some(done) = current.take() {
                    done.finish()?;
                    installed += 1;
                }
                if let Some((size, got)) = to_stdout {
                    anyhow::ensure!(
                        got == size,
                        "the laptop sent {got} of {size} bytes (the file changed while read?)"
                    );
                    std::io::stdout().flush().context("writing to stdout")?;
                }
                if let Some(dir) = into {
                    eprintln!(
                        "nexus-shim: installed {installed} file(s) into {}",
                        dir.display()
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(Stop::reply(other).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_paths_stay_in_home() {
        assert!(install_path("~/.config/x.json").is_ok());
        for bad in ["/etc/passwd", "~/../x", "~/a/../../b", "~/", "~/a//b", "x"] {
            assert!(install_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn atomic_files_appear_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dest = dir.path().join("sub/f");
        let mut f = AtomicFile::create(&dest, 3, 0o644).unwrap_or_else(|e| panic!("{e}"));
        f.write(b"ab").unwrap_or_else(|e| panic!("{e}"));
        assert!(!dest.exists());
        assert!(f.finish().is_err(), "short file installed");
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub"))
                .map(Iterator::count)
                .ok(),
            Some(0)
        );
        let mut f = AtomicFile::create(&dest, 3, 0o644).unwrap_or_else(|e| panic!("{e}"));
        f.write(b"abc").unwrap_or_else(|e| panic!("{e}"));
        assert!(f.write(b"d").is_err());
    }
}
