//! Client commands for git credentials, custom laptop tools, laptop files
//! and `exec`. Each is one request on `shim.sock`; streamed answers (tool
//! output, file data) are written out as they arrive.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use nexus_protocol::{
    Channel, GitOperation, LocalOp, LocalReply, MAX_CREDENTIAL_INPUT, Reply, Request, Secret,
    parse_credential,
};

use crate::cli::{ClientArgs, client_error, unexpected as reply_error};
use crate::client::Session;
use crate::state::StateDir;

/// `tool list`, `tool run`.
#[derive(Debug, Subcommand)]
pub(crate) enum ToolCommand {
    /// List the laptop tools this workspace may run, with their argument patterns.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a laptop tool; its output streams here, its exit code is ours.
    ///
    /// Arguments after `--` are matched one by one against the patterns the
    /// laptop's policy declares (see `tool list`). If this command is killed,
    /// the tool is killed on the laptop.
    Run {
        /// Tool name, as declared in the laptop's policy.
        name: String,
        /// Arguments for the tool (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `http list`, `http url`.
#[derive(Debug, Subcommand)]
pub(crate) enum HttpCommand {
    /// List the HTTP APIs the laptop calls for this workspace: use
    /// `$NEXUS_HTTP_URL/NAME` as the API's base URL with any placeholder key
    /// (e.g. `OPENAI_BASE_URL=$NEXUS_HTTP_URL/openai/v1 OPENAI_API_KEY=nexus`);
    /// the laptop adds the real one.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print $NEXUS_HTTP_URL of the running daemon (exit 1 when it serves
    /// no HTTP endpoint).
    Url,
}

/// `file get`, `file sync`.
#[derive(Debug, Subcommand)]
pub(crate) enum FileCommand {
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

/// `exec --env VAR=token:NAME... -- CMD ARGS`.
#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// VAR=token:NAME: set VAR to the laptop token NAME, in CMD's environment only.
    #[arg(long = "env", value_name = "VAR=token:NAME")]
    envs: Vec<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `git-credential get|store|erase`: git's helper protocol on stdin/stdout.
pub(crate) async fn git_credential(
    state: &StateDir,
    operation: &str,
    client: &ClientArgs,
) -> Result<ExitCode> {
    let op = match operation {
        "get" => GitOperation::Get,
        "store" => GitOperation::Store,
        "erase" => GitOperation::Erase,
        // Helpers ignore operations they do not know (git's documented rule).
        _ => return Ok(ExitCode::SUCCESS),
    };
    let quit = || {
        if op == GitOperation::Get {
            println!("quit=1");
            let _ = std::io::stdout().flush();
        }
    };
    let mut input = zeroize::Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(MAX_CREDENTIAL_INPUT as u64 + 1)
        .read_to_end(&mut input)
        .context("reading the credential description from stdin")?;
    let cred = match parse_credential(&input) {
        Ok(c) => c,
        Err(e) => {
            quit();
            eprintln!("nexus-shim: refused the credential description from git: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let request = Request::GitCredential {
        operation: op,
        input: Secret::new(cred.serialize().to_vec()),
    };
    let mut session = match Session::start(state, client.wait, LocalOp::Forward(request)).await {
        Ok(s) => s,
        Err(e) => {
            quit();
            return Ok(client_error(&e));
        }
    };
    match session.next().await {
        Ok(LocalReply::Reply(Reply::GitCredential(out))) => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.expose()).context("writing to git")?;
            stdout.flush().context("writing to git")?;
            Ok(ExitCode::SUCCESS)
        }
        // store/erase that no rule lists do nothing, quietly: git calls
        // them after every use.
        Ok(LocalReply::Reply(Reply::Error(e)))
            if op != GitOperation::Get && e.code == nexus_protocol::ErrorCode::Denied =>
        {
            Ok(ExitCode::SUCCESS)
        }
        // Allowed, but the laptop has nothing for this URL: answer like a
        // helper with nothing to offer (no output, success), so git asks
        // its next helper or the user. Only a denial stops git (`quit=1`).
        Ok(LocalReply::Reply(Reply::Error(e)))
            if op == GitOperation::Get && e.code == nexus_protocol::ErrorCode::Missing =>
        {
            tracing::debug!(reason = %e.message, "the laptop has no credential for this URL");
            Ok(ExitCode::SUCCESS)
        }
        Ok(other) => {
            quit();
            Ok(reply_error(other))
        }
        Err(e) => {
            quit();
            Ok(client_error(&e))
        }
    }
}

/// `tool list` / `tool run`.
pub(crate) async fn tool(state: &StateDir, cmd: ToolCommand) -> Result<ExitCode> {
    match cmd {
        ToolCommand::List { json, client } => tool_list(state, json, &client).await,
        ToolCommand::Run { name, args, client } => {
            let op = LocalOp::Forward(Request::ToolRun { name, args });
            let mut session = match Session::start(state, client.wait, op).await {
                Ok(s) => s,
                Err(e) => return Ok(client_error(&e)),
            };
            loop {
                match session.next().await {
                    Ok(LocalReply::Reply(Reply::Chunk { channel, data })) => {
                        let res = if channel == Channel::Stderr {
                            let mut e = std::io::stderr().lock();
                            e.write_all(&data).and_then(|()| e.flush())
                        } else {
                            let mut o = std::io::stdout().lock();
                            o.write_all(&data).and_then(|()| o.flush())
                        };
                        // A closed stdout (`| head`) ends the run like SIGPIPE would.
                        if res.is_err() {
                            return Ok(ExitCode::from(141));
                        }
                    }
                    Ok(LocalReply::Reply(Reply::Exit(code))) => {
                        return Ok(ExitCode::from(
                            u8::try_from(code.clamp(0, 255)).unwrap_or(1),
                        ));
                    }
                    Ok(other) => return Ok(reply_error(other)),
                    Err(e) => return Ok(client_error(&e)),
                }
            }
        }
    }
}

pub(crate) async fn http(state: &StateDir, cmd: HttpCommand) -> Result<ExitCode> {
    let (json, client) = match cmd {
        HttpCommand::Url => {
            return match std::fs::read_to_string(state.http_url()) {
                Ok(url) => {
                    println!("{}", url.trim());
                    Ok(ExitCode::SUCCESS)
                }
                Err(_) => {
                    eprintln!(
                        "nexus-shim: no daemon serves HTTP injection for {} (start one with: nexus-shim serve; \
                         not with --http-listen none)",
                        state.root().display()
                    );
                    Ok(ExitCode::from(1))
                }
            };
        }
        HttpCommand::List { json, client } => (json, client),
    };
    let op = LocalOp::Forward(Request::HttpList);
    let mut session = match Session::start(state, client.wait, op).await {
        Ok(s) => s,
        Err(e) => return Ok(client_error(&e)),
    };
    let apis = match session.next().await {
        Ok(LocalReply::Reply(Reply::HttpApis(apis))) => apis,
        Ok(other) => return Ok(reply_error(other)),
        Err(e) => return Ok(client_error(&e)),
    };
    let base = std::fs::read_to_string(state.http_url())
        .map(|u| u.trim().to_owned())
        .unwrap_or_else(|_| "$NEXUS_HTTP_URL".to_owned());
    if json {
        let v: Vec<_> = apis
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name,
                    "url": format!("{base}/{}", a.name),
                    "upstream": a.upstream,
                    "description": a.description,
                    "methods": a.methods,
                    "paths": a.paths,
                    "approve": a.approve,
                    "mcp": a.mcp,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else if apis.is_empty() {
        eprintln!("nexus-shim: the laptop's policy declares no HTTP APIs for this workspace");
    } else {
        for a in apis {
            let approve = if a.approve { " (needs approval)" } else { "" };
            println!(
                "{base}/{}
    -> {}{approve}",
                a.name, a.upstream
            );
            if !a.description.is_empty() {
                println!("    {}", a.description);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn tool_list(state: &StateDir, json: bool, client: &ClientArgs) -> Result<ExitCode> {
    let mut session =
        match Session::start(state, client.wait, LocalOp::Forward(Request::ToolList)).await {
            Ok(s) => s,
            Err(e) => return Ok(client_error(&e)),
        };
    match session.next().await {
        Ok(LocalReply::Reply(Reply::Tools(tools))) => {
            if json {
                let v: Vec<_> = tools
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "name": t.name,
                            "description": t.description,
                            "args": t.args,
                            "approve": t.approve,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else if tools.is_empty() {
                eprintln!("nexus-shim: the laptop's policy declares no tools for this workspace");
            } else {
                for t in tools {
                    let args = if t.args.is_empty() {
                        String::new()
                    } else {
                        format!(" -- {}", t.args.join(" "))
                    };
                    let approve = if t.approve { " (needs approval)" } else { "" };
                    println!("{}{args}\n    {}{approve}", t.name, t.description);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(other) => Ok(reply_error(other)),
        Err(e) => Ok(client_error(&e)),
    }
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
pub(crate) async fn file(state: &StateDir, cmd: FileCommand) -> Result<ExitCode> {
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
    let mut session = match Session::start(state, client.wait, LocalOp::Forward(op)).await {
        Ok(s) => s,
        Err(e) => return Ok(client_error(&e)),
    };
    let mut current: Option<AtomicFile> = None;
    let mut to_stdout: Option<(u64, u64)> = None;
    let mut installed = 0usize;
    let mut into = sync.then(home).transpose()?;
    loop {
        let reply = match session.next().await {
            Ok(r) => r,
            Err(e) => return Ok(client_error(&e)),
        };
        match reply {
            LocalReply::Reply(Reply::FileStart { path, size, mode }) => {
                if let Some(done) = current.take() {
                    done.finish()?;
                    installed += 1;
                }
                if sync {
                    current = Some(AtomicFile::create(&install_path(&path)?, size, mode)?);
                } else if let Some(rel) = path.strip_prefix(&dir_prefix) {
                    let Some(dest) = &output else {
                        eprintln!(
                            "nexus-shim: {} is a directory on the laptop; give -o DEST_DIR",
                            dir_prefix
                        );
                        return Ok(ExitCode::from(2));
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
            }
            LocalReply::Reply(Reply::Chunk {
                channel: Channel::Data,
                data,
            }) => {
                if let Some(f) = current.as_mut() {
                    f.write(&data)?;
                } else if let Some((size, got)) = to_stdout.as_mut() {
                    *got += data.len() as u64;
                    anyhow::ensure!(*got <= *size, "the laptop sent more data than announced");
                    let mut o = std::io::stdout().lock();
                    if o.write_all(&data).is_err() {
                        return Ok(ExitCode::from(141));
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
            other => return Ok(reply_error(other)),
        }
    }
}

/// `exec`: fetch the tokens, then replace this process with the command,
/// the values set in its environment only. The command inherits our pid,
/// so signals sent to us reach it, and its exit code is the caller's.
pub(crate) async fn exec(state: &StateDir, args: ExecArgs) -> Result<ExitCode> {
    let mut envs: Vec<(String, Secret)> = Vec::new();
    for spec in &args.envs {
        let Some((var, name)) = spec
            .split_once('=')
            .and_then(|(v, src)| Some((v, src.strip_prefix("token:")?)))
        else {
            eprintln!(
                "nexus-shim: --env {spec:?}: expected VAR=token:NAME, e.g. --env OPENAI_API_KEY=token:openai"
            );
            return Ok(ExitCode::from(2));
        };
        let valid_var = var
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_var {
            eprintln!("nexus-shim: --env {var:?}: not a valid environment variable name");
            return Ok(ExitCode::from(2));
        }
        let op = LocalOp::Forward(Request::Token {
            name: name.to_owned(),
        });
        let mut session = match Session::start(state, args.client.wait, op).await {
            Ok(s) => s,
            Err(e) => return Ok(client_error(&e)),
        };
        match session.next().await {
            Ok(LocalReply::Reply(Reply::Token(value))) => envs.push((var.to_owned(), value)),
            Ok(other) => return Ok(reply_error(other)),
            Err(e) => return Ok(client_error(&e)),
        }
    }
    let Some((program, rest)) = args.command.split_first() else {
        eprintln!("nexus-shim: exec needs a command after --");
        return Ok(ExitCode::from(2));
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest);
    for (var, value) in &envs {
        use std::os::unix::ffi::OsStrExt;
        cmd.env(var, std::ffi::OsStr::from_bytes(value.expose()));
    }
    // Returns only if the command could not be started.
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    eprintln!(
        "nexus-shim: cannot run {}: {err}",
        Path::new(program).display()
    );
    Ok(ExitCode::from(
        if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
    ))
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
