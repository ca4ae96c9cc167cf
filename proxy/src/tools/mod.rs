//! Laptop-side tools: each forwarded request passes the one [`pipeline`],
//! then is answered by one tool module.

pub mod custom;
pub mod file;
pub mod gate;
pub mod git;
pub mod git_credential;
pub mod http;
pub mod pipeline;
pub mod ssh;
pub mod ssh_push;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use nexus_policy::Rate;
use nexus_protocol::{Call, Reply, Request};
use pipeline::{Scope, serve};

use crate::config::ConfigDir;
use crate::rate::RateLimiter;

/// What every tool call needs: the policy and the laptop's settings.
#[derive(Debug)]
pub struct ToolContext {
    /// The policy in force; read it once per call (`current()`).
    pub policy: Arc<crate::reload::PolicyHandle>,
    /// The audit log (every decision goes through `gate`).
    pub audit: crate::audit::Audit,
    /// Approvals waiting for the laptop user.
    pub approvals: Arc<crate::approvals::Approvals>,
    /// Link state per workspace, for `status`.
    pub links: crate::control::LinkBoard,
    /// The configuration directory.
    pub config: ConfigDir,
    /// The kill switch of `config`, watched for calls under way.
    pub lock: Arc<crate::control::KillSwitch>,
    /// `PATH` for command token sources (service managers give none).
    pub source_path: Option<String>,
    /// Per-rule rate limits.
    pub rates: RateLimiter,
    /// The laptop's ssh-agent socket (`--ssh-agent`, default `SSH_AUTH_SOCK`).
    pub ssh_agent: Option<PathBuf>,
    /// Session ids already bound, per workspace.
    pub replay: ssh::ReplayCache,
    /// Calls per tool per workspace, allowed or not.
    pub call_rate: Rate,
    /// HTTP clients and cached secrets for `[http.NAME]` requests.
    pub http: http::HttpState,
    /// The `ssh` program brokered git runs (`run --git-ssh`).
    pub git_ssh: PathBuf,
    /// Turns shared round robin among workspaces, so one flooding cannot
    /// starve the others.
    pub fair: Arc<crate::fair::FairShare>,
}

impl ToolContext {
    /// The laptop's identity.
    pub fn identity(&self) -> Result<nexus_transport::Identity> {
        self.config.identity()
    }

    /// Whether the kill switch (`nexus-agent-proxy lock`) is on, looking
    /// at it now.
    pub fn locked(&self) -> bool {
        self.lock.is_on()
    }

    /// Home directory for `~/` in sources.
    pub fn home(&self) -> Option<PathBuf> {
        std::env::home_dir()
    }
}

/// Default calls per second one workspace may make of one tool, allowed or
/// not (`run --max-calls-per-second`): bounds log volume and laptop work
/// under a flood.
pub const DEFAULT_CALLS_PER_SECOND: u32 = 200;

/// A workspace-supplied string made safe for one log line: escaped (no
/// newlines or terminal escapes) and cut to 128 characters.
pub fn clip(s: &str) -> String {
    const MAX: usize = 128;
    let mut out: String = s.chars().take(MAX).flat_map(char::escape_debug).collect();
    if s.chars().nth(MAX).is_some() {
        out.push_str("...");
    }
    out
}

/// The per-tool call-rate guard: `Err` is the denial to send.
fn call_rate(call: &Call, workspace: &str, ctx: &ToolContext) -> Result<(), Reply> {
    let tool = call.request.tool();
    ctx.rates
        .check(&format!("{workspace}\0calls\0{tool}"), ctx.call_rate)
        .map_err(|retry| {
            Reply::rate_limited(
                format!(
                    "too many {tool} calls (limit {}); retry in {} ms",
                    ctx.call_rate,
                    retry.as_millis().max(1)
                ),
                retry,
            )
        })
}

/// Carries one call through the pipeline (see [`pipeline`]): its final
/// reply, or `None` when the tool already wrote it (a streamed answer's
/// last data, in one piece). Streamed tools (tool run, file get/sync, HTTP)
/// write their non-final frames on `stream`; the others only read the
/// policy and the laptop.
pub async fn dispatch<S>(
    call: &Call,
    workspace: &str,
    ctx: &ToolContext,
    stream: &mut S,
    max_frame: usize,
    call_timeout: Option<std::time::Duration>,
) -> Option<Reply>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    if let Err(reply) = call_rate(call, workspace, ctx) {
        return Some(reply);
    }
    ctx.links.call(workspace);
    let scope = Scope {
        ctx,
        workspace,
        caller: &call.caller,
        tool: call.request.tool(),
        max_frame,
        call_timeout,
    };
    match &call.request {
        Request::Token { name } => serve(token::Token { name }, &scope, stream).await,
        Request::McpTokens => serve(token::McpNames, &scope, stream).await,
        Request::SshIdentities => serve(ssh::Identities::new(&[]), &scope, stream).await,
        Request::SshIdentitiesBound { binds } => {
            serve(ssh::Identities::new(binds), &scope, stream).await
        }
        Request::SshSign {
            connection,
            binds,
            request,
        } => {
            // Reported by the workspace: for matching the shim's log only.
            tracing::debug!(agent_connection = connection, "ssh sign request");
            serve(ssh::Sign::new(binds, request), &scope, stream).await
        }
        Request::SshKnownHosts => serve(ssh::KnownHosts, &scope, stream).await,
        Request::GitCredential { operation, input } => {
            let helper = git_credential::Helper::new(*operation, input);
            serve(helper, &scope, stream).await
        }
        Request::ToolList => serve(custom::List, &scope, stream).await,
        Request::ToolRun { name, args } => serve(custom::Run { name, args }, &scope, stream).await,
        Request::FileGet { path } => serve(file::Get::new(path), &scope, stream).await,
        Request::FileSync { set } => serve(file::Sync { set }, &scope, stream).await,
        Request::HttpList => serve(http::List, &scope, stream).await,
        Request::Http(req) => serve(http::Call { req }, &scope, stream).await,
        Request::GitHttp(req) => serve(git::https::Call::new(req), &scope, stream).await,
        Request::GitHosts => serve(git::Hosts, &scope, stream).await,
        Request::GitSsh {
            host,
            port,
            service,
            repo,
        } => {
            let connect = git::ssh::Connect::new(host, *port, *service, repo);
            serve(connect, &scope, stream).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clip_escapes_and_bounds() {
        assert_eq!(clip("demo"), "demo");
        let forged = clip("x\n2099-01-01 INFO forged\u{1b}]0;t\u{7}");
        assert!(
            !forged.contains('\n') && !forged.contains('\u{1b}') && !forged.contains('\u{7}'),
            "{forged}"
        );
        let long = clip(&"a".repeat(1 << 20));
        assert_eq!(long.len(), 131);
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A context with `policy` and, as `--source-path`, `path`.
    pub(crate) fn context(policy: &str, path: Option<&std::path::Path>) -> ToolContext {
        let policy =
            nexus_policy::Policy::from_sources(&[nexus_policy::Source::new("p.toml", policy)])
                .unwrap_or_else(|e| panic!("{e}"));
        let audit_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")).keep();
        ToolContext {
            policy: Arc::new(crate::reload::PolicyHandle::new(
                nexus_policy::PolicySet::new(None, policy),
                crate::reload::PolicyPaths::default(),
            )),
            audit: crate::audit::Audit::open(&audit_dir).unwrap_or_else(|e| panic!("{e}")),
            approvals: Arc::new(crate::approvals::Approvals::new(None)),
            links: Default::default(),
            config: ConfigDir::resolve(Some(std::env::temp_dir()))
                .unwrap_or_else(|e| panic!("{e}")),
            lock: Arc::new(crate::control::KillSwitch::new(&std::env::temp_dir())),
            source_path: path.map(|p| p.display().to_string()),
            rates: RateLimiter::default(),
            ssh_agent: None,
            replay: ssh::ReplayCache::default(),
            call_rate: Rate {
                count: 1000,
                per: std::time::Duration::from_secs(1),
            },
            http: http::HttpState::default(),
            git_ssh: git::ssh::DEFAULT_SSH.into(),
            fair: Arc::new(crate::fair::FairShare::new(4)),
        }
    }

    /// `ctx` with its own configuration directory `dir` (and lock file).
    pub(crate) fn with_config(mut ctx: ToolContext, dir: &std::path::Path) -> ToolContext {
        ctx.config = ConfigDir::resolve(Some(dir.to_path_buf())).unwrap_or_else(|e| panic!("{e}"));
        ctx.lock = Arc::new(crate::control::KillSwitch::new(dir));
        ctx
    }

    /// Sends `request` through the whole pipeline, as from workspace `w`.
    pub(crate) async fn call<S>(
        ctx: &ToolContext,
        request: Request,
        stream: &mut S,
    ) -> Option<Reply>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let call = Call {
            caller: nexus_protocol::CallerContext::default(),
            request,
            key: None,
            received: Vec::new(),
        };
        dispatch(&call, "w", ctx, stream, nexus_protocol::MAX_FRAME, None).await
    }

    /// Like [`call`] for a request answered with one reply.
    pub(crate) async fn ask(ctx: &ToolContext, request: Request) -> Reply {
        let (mut ours, _theirs) = tokio::io::duplex(1 << 16);
        call(ctx, request, &mut ours).await.unwrap_or(Reply::Done)
    }
}
