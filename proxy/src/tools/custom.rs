//! Custom laptop tools declared in the policy (`[tools.NAME]`): listed for
//! the workspace, run without a shell in their own process group, output
//! streamed back as it is produced, killed at the timeout or as soon as the
//! workspace caller goes away.

use std::process::Stdio;

use nexus_policy::{Action, Grant, PolicySet, ToolRule};
use nexus_protocol::{Channel, ErrorCode, MAX_CHUNK, Reply, ToolInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::{debug, info};

use super::ToolContext;
use super::pipeline::{Asked, Decided, Listing, Scope, Tool, wrong_grant};

/// Read size for tool output; smaller than a chunk so output flows early.
const READ_SIZE: usize = 64 << 10;
/// Exit code reported when the laptop killed the tool at its timeout.
pub const TIMEOUT_EXIT: i32 = 124;

/// `tool list`: the tools this workspace could run: declared in every
/// binding layer, hidden by no deny rule of any layer (a baseline deny or a
/// `[workspace."NAME"]` section narrows the list too; running one is still
/// decided in full).
#[derive(Debug)]
pub struct List;

impl Listing for List {
    fn list(&self, scope: &Scope<'_>, policy: &PolicySet) -> Reply {
        let tools = policy
            .tools_for(scope.workspace)
            .into_iter()
            .map(|t| ToolInfo {
                name: t.name.clone(),
                description: t.description.clone(),
                args: t.args.clone(),
                approve: t.approve.is_some(),
            })
            .collect();
        Reply::Tools(tools)
    }
}

/// Kills the tool's whole process group when dropped, unless disarmed.
///
/// Only armed while the group leader is unreaped (the tool is waited for
/// only after its pipes close), so its pid cannot have been reused as
/// another group's id.
struct GroupGuard(Option<rustix::process::Pid>);

impl GroupGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }

    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tool run NAME -- ARGS`, its output streamed.
#[derive(Debug)]
pub struct Run<'a> {
    /// The tool's name in the policy.
    pub name: &'a str,
    /// The arguments after the rule's fixed command.
    pub args: &'a [String],
}

impl Tool for Run<'_> {
    fn ask(&mut self, scope: &Scope<'_>, policy: &PolicySet) -> Result<Asked, Reply> {
        let (name, args) = (self.name, self.args);
        let outcome = scope.decide(policy, Action::Tool { name, args });
        // The arguments are part of what an approval covers.
        let shown = format!("{name} {args:?}");
        Ok(Asked::decided(Decided::new(outcome, "tool", shown)))
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
        let Some(Grant::Tool(rule)) = grant else {
            return wrong_grant();
        };
        Some(execute(&rule, self.args, scope.ctx, stream).await)
    }
}

/// The program to run: a name is looked up on `path` here, so that the
/// spawn can use `posix_spawn` (with a bare name and its own PATH, the
/// standard library falls back to fork + exec, which costs a copy of the
/// proxy's page tables per run). Not found: the name as is (the spawn then
/// reports it missing).
fn resolve(program: &str, path: Option<&str>) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return program.into();
    }
    path.into_iter()
        .flat_map(std::env::split_paths)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| program.into())
}

fn command(rule: &ToolRule, args: &[String], ctx: &ToolContext) -> tokio::process::Command {
    let (program, fixed) = rule
        .command
        .split_first()
        .map_or(("", &[][..]), |(p, f)| (p.as_str(), f));
    let path = ctx
        .source_path
        .clone()
        .or_else(|| std::env::var("PATH").ok());
    let mut cmd = tokio::process::Command::new(resolve(program, path.as_deref()));
    cmd.args(fixed)
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    if let Some(home) = ctx.home() {
        cmd.env("HOME", &home);
        let dir = match rule.cwd.as_deref() {
            Some("~") | None => home,
            Some(c) => super::token::expand_home(c, Some(home)),
        };
        cmd.current_dir(dir);
    }
    for var in &rule.env {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd
}

async fn execute<S: AsyncRead + AsyncWrite + Unpin>(
    rule: &ToolRule,
    args: &[String],
    ctx: &ToolContext,
    stream: &mut S,
) -> Reply {
    let mut child = match command(rule, args, ctx).spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Reply::error(
                ErrorCode::Missing,
                format!(
                    "tool {:?}: {:?} is not installed on the laptop (or not on --source-path), \
                     or its working directory is missing",
                    rule.name,
                    rule.command.first().map(String::as_str).unwrap_or_default()
                ),
            );
        }
        Err(e) => {
            return Reply::error(
                ErrorCode::Internal,
                format!("tool {:?} could not start on the laptop: {e}", rule.name),
            );
        }
    };
    let mut group = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw),
    );
    info!(tool = %rule.name, pid = child.id(), "tool started");
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Reply::error(ErrorCode::Internal, "tool pipes unavailable");
    };
    let (mut rx, mut tx) = tokio::io::split(stream);
    let deadline = tokio::time::sleep(rule.timeout);
    tokio::pin!(deadline);
    let (mut out_open, mut err_open) = (true, true);
    let mut obuf = vec![0u8; READ_SIZE.min(MAX_CHUNK)];
    let mut ebuf = vec![0u8; READ_SIZE.min(MAX_CHUNK)];
    let mut probe = [0u8; 1];
    // A lock drops this future (the pipeline selects on it): the group
    // guard kills the tool.
    loop {
        let (channel, n) = tokio::select! {
            r = out.read(&mut obuf), if out_open => match r {
                Ok(0) | Err(_) => { out_open = false; continue; }
                Ok(n) => (Channel::Stdout, n),
            },
            r = err.read(&mut ebuf), if err_open => match r {
                Ok(0) | Err(_) => { err_open = false; continue; }
                Ok(n) => (Channel::Stderr, n),
            },
            unreaped = leader_exit(group.0), if !out_open && !err_open => {
                // The leader is a zombie, not reaped: its pid is still the
                // group's. Whatever it left behind in the group (a
                // background child) ends with it; then it is reaped.
                if unreaped {
                    group.kill();
                }
                group.disarm();
                let status = child.wait().await;
                return match status {
                    Ok(s) => Reply::Exit(exit_code(s)),
                    Err(e) => Reply::error(ErrorCode::Internal, format!("waiting for the tool: {e}")),
                };
            }
            // The shim sends nothing after the call: any read completing
            // means the workspace caller went away (stream reset or closed).
            _ = rx.read(&mut probe) => {
                group.kill();
                debug!(tool = %rule.name, "the workspace caller went away; tool killed");
                return Reply::Done;
            }
            () = &mut deadline => {
                group.kill();
                let note = format!("nexus: tool {:?} killed by the laptop after its timeout of {:?}\n", rule.name, rule.timeout);
                let _ = send_chunk(&mut tx, Channel::Stderr, note.into_bytes()).await;
                return Reply::Exit(TIMEOUT_EXIT);
            }
        };
        let data = if channel == Channel::Stdout {
            obuf[..n].to_vec()
        } else {
            ebuf[..n].to_vec()
        };
        // Waits on the stream's flow control: a caller that does not read
        // stops the tool's output here, never an unbounded buffer.
        let sent = tokio::select! {
            r = send_chunk(&mut tx, channel, data) => r,
            _ = rx.read(&mut probe) => Err(()),
            () = &mut deadline => {
                group.kill();
                return Reply::Exit(TIMEOUT_EXIT);
            }
        };
        if sent.is_err() {
            group.kill();
            return Reply::Done;
        }
    }
}

/// Returns once the group leader `pid` has exited, without reaping it
/// (`waitid` with `WNOWAIT`): true when it is known to be an unreaped
/// zombie, so its pid cannot have been reused and the group may be killed.
/// Polled: the pipes already closed, so the exit is due.
async fn leader_exit(pid: Option<rustix::process::Pid>) -> bool {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    let Some(pid) = pid else {
        return false;
    };
    // The pipes close a moment before the leader becomes a zombie: a first
    // look usually comes too early. Where the kernel can say when it
    // exits, wait for that instead of a timer (a 1 ms timer cost a quick
    // tool 2 ms).
    #[cfg(target_os = "linux")]
    exited(pid).await;
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
    // Usually due at once; a tool that closed its output early and runs on
    // is looked at less and less often (at most every 64 ms).
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match waitid(WaitId::Pid(pid), options) {
            Ok(None) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(64));
            }
            Ok(Some(_)) => return true,
            Err(_) => return false,
        }
    }
}

/// Returns once `pid` (our unreaped child: its pid cannot be reused) has
/// exited, by a pidfd, which turns readable then; at once when no pidfd can
/// be had (Linux before 5.3), leaving the caller to poll.
#[cfg(target_os = "linux")]
async fn exited(pid: rustix::process::Pid) {
    use rustix::process::{PidfdFlags, pidfd_open};
    use tokio::io::{Interest, unix::AsyncFd};
    let Ok(fd) = pidfd_open(pid, PidfdFlags::NONBLOCK) else {
        return;
    };
    // Deprecated because it cannot check that an arbitrary `T` keeps its
    // descriptor open and the same while registered; an `OwnedFd` moved in
    // does, until the `AsyncFd` drops it.
    #[allow(deprecated)]
    let registered = AsyncFd::with_interest(fd, Interest::READABLE);
    if let Ok(fd) = registered {
        let _ = fd.readable().await;
    }
}

/// One frame of a stream's output on the call's stream; `Err` when the
/// workspace is gone.
pub(crate) async fn send_chunk<W: AsyncWrite + Unpin>(
    tx: &mut W,
    channel: Channel,
    data: Vec<u8>,
) -> Result<(), ()> {
    nexus_transport::send_chunk(tx, channel, &data)
        .await
        .map_err(|_| ())
}

/// The process's exit code, or 128 + the signal that ended it.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::test_support::{self, context};

    const POLICY: &str = "[tools.t]\ncommand = [\"sh\", \"-c\", \"echo out; echo err >&2; exit 3\"]\n\n\
        [tools.slow]\ncommand = [\"sh\", \"-c\", \"echo $$; exec sleep 30\"]\n\n\
        [tools.bg]\ncommand = [\"sh\", \"-c\", \"sleep 30 >/dev/null 2>&1 & echo $!\"]\n";

    fn rule(ctx: &ToolContext, name: &str) -> ToolRule {
        ctx.policy
            .current()
            .user()
            .tools()
            .into_iter()
            .find(|t| t.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no tool {name}"))
    }

    #[test]
    fn programs_are_looked_up_on_the_tools_path() {
        assert_eq!(
            resolve("/bin/sh", None),
            std::path::PathBuf::from("/bin/sh")
        );
        let found = resolve("sh", Some("relative:/nonexistent:/usr/bin:/bin"));
        assert!(found.is_absolute() && found.ends_with("sh"), "{found:?}");
        assert_eq!(
            resolve("no-such-tool-x", Some("/usr/bin")),
            std::path::PathBuf::from("no-such-tool-x")
        );
    }

    #[tokio::test]
    async fn output_streams_in_chunks_then_the_exit_code() {
        let ctx = context(POLICY, None);
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(r) = nexus_transport::recv::<_, Reply>(&mut theirs, 1 << 20).await {
                got.push(r);
            }
            got
        });
        let end = execute(&rule(&ctx, "t"), &[], &ctx, &mut ours).await;
        drop(ours);
        assert_eq!(end, Reply::Exit(3));
        let got = reader.await.unwrap_or_default();
        assert!(got.contains(&Reply::Chunk {
            channel: Channel::Stdout,
            data: b"out\n".to_vec()
        }));
        assert!(got.contains(&Reply::Chunk {
            channel: Channel::Stderr,
            data: b"err\n".to_vec()
        }));
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_kills_the_tool() {
        let ctx = context(POLICY, None);
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        let run = tokio::spawn(async move {
            let r = rule(&ctx, "slow");
            execute(&r, &[], &ctx, &mut ours).await
        });
        // The tool's pid comes first; then the caller hangs up.
        let first = nexus_transport::recv::<_, Reply>(&mut theirs, 1 << 20).await;
        let Ok(Reply::Chunk { data, .. }) = first else {
            panic!("{first:?}");
        };
        let pid: i32 = String::from_utf8_lossy(&data).trim().parse().unwrap_or(0);
        drop(theirs);
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), run).await;
        assert!(matches!(end, Ok(Ok(Reply::Done))), "{end:?}");
        // SIGKILL was sent; the kernel takes a moment to carry it out.
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !gone() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(gone(), "tool {pid} still running");
    }

    /// `lock` is a kill switch: a tool already running when the laptop
    /// locks is killed, not left to run until its timeout, and the audit
    /// log records how the run ended.
    #[tokio::test]
    async fn a_lock_stops_a_running_tool() {
        let config = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ctx = test_support::with_config(context(POLICY, None), config.path());
        let ctx = std::sync::Arc::new(ctx);
        let stop = tokio_util::sync::CancellationToken::new();
        let watcher = tokio::spawn({
            let (ctx, stop) = (ctx.clone(), stop.clone());
            async move { ctx.lock.watch(stop).await }
        });
        let lock = crate::control::lock_path(config.path());
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        let run = tokio::spawn({
            let ctx = ctx.clone();
            async move {
                let request = nexus_protocol::Request::ToolRun {
                    name: "slow".into(),
                    args: Vec::new(),
                };
                test_support::call(&ctx, request, &mut ours).await
            }
        });
        let first = nexus_transport::recv::<_, Reply>(&mut theirs, 1 << 20).await;
        assert!(matches!(first, Ok(Reply::Chunk { .. })), "{first:?}");
        std::fs::write(&lock, b"1\n").unwrap_or_else(|e| panic!("{e}"));
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), run).await;
        let Ok(Ok(Some(Reply::Error(e)))) = end else {
            panic!("the tool ran on after the lock: {end:?}");
        };
        assert_eq!(e.code, ErrorCode::Denied);
        let lines: Vec<_> = ctx
            .audit
            .recent()
            .into_iter()
            .map(|e| (e.target, e.decision, e.reason))
            .collect();
        assert!(
            matches!(&lines[..], [(t1, allow, _), (t2, deny, why)]
                if t1 == "slow []" && t2 == t1 && allow == "allow" && deny == "deny"
                    && why.contains("stopped under way")),
            "{lines:?}"
        );
        drop(theirs);
        stop.cancel();
        assert!(watcher.await.is_ok());
    }

    /// A tool that leaves a child behind in its group (with its pipes
    /// closed) does not leave it running on the laptop once the tool ends:
    /// no timeout and no caller would ever stop it.
    #[tokio::test]
    async fn a_finished_tool_leaves_no_process_behind() {
        let ctx = context(POLICY, None);
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        let end = execute(&rule(&ctx, "bg"), &[], &ctx, &mut ours).await;
        drop(ours);
        assert_eq!(end, Reply::Exit(0));
        let mut out = Vec::new();
        while let Ok(r) = nexus_transport::recv::<_, Reply>(&mut theirs, 1 << 20).await {
            if let Reply::Chunk { data, .. } = r {
                out.extend(data);
            }
        }
        let pid: i32 = String::from_utf8_lossy(&out).trim().parse().unwrap_or(0);
        assert!(pid > 0, "{out:?}");
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !gone() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let left = !gone();
        if left {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap_or(rustix::process::Pid::INIT),
                rustix::process::Signal::KILL,
            );
        }
        assert!(!left, "the tool's child {pid} runs on after the tool ended");
    }
}
