//! Brokered git over SSH (`Request::GitSsh`): the laptop runs exactly
//! `ssh -o BatchMode=yes [-p PORT] -l SSH_USER -- HOST git-upload-pack|git-receive-pack 'REPO'`
//! with its own configuration, known_hosts and agent, and relays the bytes.
//!
//! The connection opens as soon as the open decision allows it, so that
//! the server's ref advertisement is on its way while the workspace waits.
//! For a push, the workspace's bytes are held until the command list is
//! complete and [`decide_push`] allowed every ref update: a refused push
//! reaches the server not at all, and git shows one line naming the ref
//! and the rule before "the remote end hung up".

use std::process::Stdio;
use std::time::Duration;

use nexus_policy::{Grant, PolicySet};
use nexus_protocol::pktline::{PktError, Progress, PushCommands};
use nexus_protocol::{Channel, ErrorCode, GitService, MAX_CHUNK, Reply, Upload};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Mutex;
use tracing::info;

use super::{PushRefused, ask_open, brokers, decide_push, refuse_push, wrong_grant};
use crate::tools::custom::send_chunk;
use crate::tools::pipeline::{Asked, Scope, Tool};

/// How long the workspace's git may take to send a push's command list
/// after the server's ref advertisement: git sends it at once, so only a
/// stalled or hostile client reaches this.
pub const COMMANDS_TIMEOUT: Duration = Duration::from_secs(60);

/// The `ssh` program when `run --git-ssh` does not name another.
pub const DEFAULT_SSH: &str = "ssh";

/// One git command over SSH, as the workspace's `nexus-shim git-ssh` asked.
pub(crate) struct Connect<'a> {
    host: &'a str,
    port: Option<u16>,
    service: GitService,
    repo: &'a str,
}

impl<'a> Connect<'a> {
    /// The request's parts.
    pub fn new(host: &'a str, port: Option<u16>, service: GitService, repo: &'a str) -> Self {
        Self {
            host,
            port,
            service,
            repo,
        }
    }

    /// `HOST`, or `HOST:PORT` for a port other than 22: what rules name.
    fn policy_host(&self) -> String {
        match self.port {
            Some(p) if p != 22 => format!("{}:{p}", self.host),
            _ => self.host.to_owned(),
        }
    }
}

impl Tool for Connect<'_> {
    fn ask(&mut self, scope: &Scope<'_>, policy: &PolicySet) -> Result<Asked, Reply> {
        let host = self.policy_host();
        if !brokers(scope, policy, &host) {
            return Err(Reply::GitNotBrokered);
        }
        ask_open(scope, policy, &host, self.repo, self.service)
    }

    async fn run<S>(
        self,
        scope: &Scope<'_>,
        policy: &PolicySet,
        grant: Option<Grant>,
        out: &mut S,
    ) -> Option<Reply>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(Grant::Git(rule)) = grant else {
            return Some(wrong_grant());
        };
        let mut command = Command::new(&scope.ctx.git_ssh);
        command.args(["-o", "BatchMode=yes", "-T", "-x", "-a"]);
        command.args(["-o", "ClearAllForwardings=yes"]);
        if let Some(port) = self.port {
            command.args(["-p", &port.to_string()]);
        }
        // Host and repository passed the policy's checks (no leading '-',
        // no quote, no space): safe after `--` and inside single quotes.
        command
            .args(["-l", &rule.ssh_user, "--", self.host])
            .arg(format!("{} '{}'", self.service.command(), self.repo));
        match &scope.ctx.ssh_agent {
            Some(sock) => command.env("SSH_AUTH_SOCK", sock),
            None => command.env_remove("SSH_AUTH_SOCK"),
        };
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Some(Reply::error(
                    ErrorCode::Internal,
                    format!(
                        "the laptop could not run {} for git: {e}",
                        scope.ctx.git_ssh.display()
                    ),
                ));
            }
        };
        info!(tool = super::TOOL, host = %self.policy_host(), service = self.service.command(), "git over ssh");
        let host = self.policy_host();
        Some(relay(scope, policy, &host, &self, &mut child, out).await)
    }
}

/// Relays one connection until the server's side ends; the final reply.
async fn relay<S>(
    scope: &Scope<'_>,
    policy: &PolicySet,
    host: &str,
    conn: &Connect<'_>,
    child: &mut Child,
    out: &mut S,
) -> Reply
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Reply::error(ErrorCode::Internal, "ssh started without its pipes");
    };
    let (mut rx, tx) = tokio::io::split(out);
    let tx = Mutex::new(tx);
    let down = async {
        let a = pump(stdout, Channel::Stdout, &tx);
        let b = pump(stderr, Channel::Stderr, &tx);
        tokio::join!(a, b)
    };
    let up = async {
        let push = conn.service == GitService::ReceivePack;
        let ended = upstream(scope, policy, host, conn.repo, push, &mut rx, stdin).await;
        if ended.is_err() {
            // Nothing of the push was forwarded: end the connection.
            let _ = child.start_kill();
        }
        ended
    };
    let (up, _) = tokio::join!(up, down);
    let status = child.wait().await;
    let mut tx = tx.into_inner();
    if let Err(PushRefused(why)) = up {
        let line = format!("nexus: push refused by the laptop: {why}\n");
        let _ = send_chunk(&mut tx, Channel::Stderr, line.into_bytes()).await;
        return Reply::Exit(1);
    }
    Reply::Exit(status.map_or(1, crate::tools::custom::exit_code))
}

/// Copies one output of `ssh` to the workspace as chunks.
async fn pump<R, W>(mut from: R, channel: Channel, tx: &Mutex<W>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut tx = tx.lock().await;
        if send_chunk(&mut *tx, channel, buf[..n].to_vec())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Copies the workspace's bytes to `ssh`. On a push the command list is
/// read first and decided before any byte is written; `Err` is a refusal,
/// and then nothing was written.
async fn upstream<R: AsyncRead + Unpin>(
    scope: &Scope<'_>,
    policy: &PolicySet,
    host: &str,
    repo: &str,
    push: bool,
    rx: &mut R,
    mut stdin: ChildStdin,
) -> Result<(), PushRefused> {
    let max = scope.max_frame;
    if push {
        match tokio::time::timeout(COMMANDS_TIMEOUT, commands(rx, max)).await {
            Err(_) => {
                let why = format!(
                    "the push's command list did not arrive within {}s",
                    COMMANDS_TIMEOUT.as_secs()
                );
                return Err(refuse_push(scope, policy, host, repo, why).await);
            }
            Ok(Err(why)) => return Err(refuse_push(scope, policy, host, repo, why).await),
            Ok(Ok(Held::Nothing(bytes))) => {
                // A flush alone: git has nothing to push and says so.
                let _ = stdin.write_all(&bytes).await;
                return Ok(());
            }
            Ok(Ok(Held::Push(updates, bytes))) => {
                decide_push(scope, policy, host, repo, &updates).await?;
                if stdin.write_all(&bytes).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    while let Ok(Some(data)) = next_upload(rx, max).await {
        if stdin.write_all(&data).await.is_err() {
            break;
        }
    }
    // Dropping stdin tells the server the client is done.
    Ok(())
}

/// What a push's first bytes held.
enum Held {
    /// The ref updates, and every byte received so far.
    Push(Vec<nexus_protocol::pktline::RefUpdate>, Vec<u8>),
    /// Only a flush: no ref to update.
    Nothing(Vec<u8>),
}

/// Reads upload frames until the command list is complete.
async fn commands<R: AsyncRead + Unpin>(rx: &mut R, max: usize) -> Result<Held, String> {
    let mut reader = PushCommands::new();
    let mut held = Vec::new();
    loop {
        let Some(data) = next_upload(rx, max).await? else {
            return Err("the push ended before its command list was complete".to_owned());
        };
        held.extend_from_slice(&data);
        match reader.feed(&data) {
            Ok(Progress::NeedMore) => {}
            Ok(Progress::Done(c)) => return Ok(Held::Push(c.updates, held)),
            Err(PktError::Empty) if held == b"0000" => return Ok(Held::Nothing(held)),
            Err(e) => return Err(format!("not a push the laptop can decide: {e}")),
        }
    }
}

/// The next piece of the workspace's input; `None` at its end.
async fn next_upload<R: AsyncRead + Unpin>(
    rx: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, String> {
    match nexus_transport::recv::<_, Upload>(rx, max).await {
        Ok(Upload::Data(data)) => Ok(Some(data)),
        Ok(Upload::End) | Err(nexus_transport::TransportError::Closed) => Ok(None),
        Err(e) => Err(format!("bad frame from the workspace: {e}")),
    }
}
