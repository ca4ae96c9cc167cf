//! Laptop-side tools: each forwarded request is decided by the policy, then
//! answered by one tool module.

pub mod custom;
pub mod file;
pub mod gate;
pub mod git_credential;
pub mod http;
pub mod ssh;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use nexus_policy::{Action, Caller, Rate, Request as PolicyRequest};
use nexus_protocol::{Call, ErrorCode, Reply, Request};

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
}

impl ToolContext {
    /// The laptop's identity.
    pub fn identity(&self) -> Result<nexus_transport::Identity> {
        self.config.identity()
    }

    /// Whether the kill switch (`nexus-agent-proxy lock`) is on.
    pub fn locked(&self) -> bool {
        crate::control::is_locked(self.config.root())
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
            Reply::error(
                ErrorCode::Denied,
                format!(
                    "too many {tool} calls (limit {}); retry in {} ms",
                    ctx.call_rate,
                    retry.as_millis().max(1)
                ),
            )
        })
}

/// Decides and answers a streamed call (tool run, file get/sync, HTTP),
/// writing its non-final frames on `stream`; returns the final reply to
/// send, or `None` when it was already written (with the last data, in
/// one piece).
pub async fn dispatch_stream<S>(
    call: &Call,
    workspace: &str,
    ctx: &ToolContext,
    stream: &mut S,
    max_frame: usize,
) -> Option<Reply>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(reply) = call_rate(call, workspace, ctx) {
        return Some(reply);
    }
    ctx.links.call(workspace);
    Some(match &call.request {
        Request::ToolRun { name, args } => {
            custom::run(name, args, workspace, &call.caller, ctx, stream).await
        }
        Request::FileGet { path } => file::get(path, workspace, &call.caller, ctx, stream).await,
        Request::FileSync { set } => file::sync(set, workspace, &call.caller, ctx, stream).await,
        Request::Http(req) => {
            return http::request(req, workspace, &call.caller, ctx, stream, max_frame).await;
        }
        _ => answer(call, workspace, ctx).await,
    })
}

/// Decides and answers one call.
pub async fn dispatch(call: &Call, workspace: &str, ctx: &ToolContext) -> Reply {
    if let Err(reply) = call_rate(call, workspace, ctx) {
        return reply;
    }
    ctx.links.call(workspace);
    answer(call, workspace, ctx).await
}

/// Decides and answers one call with a single reply.
async fn answer(call: &Call, workspace: &str, ctx: &ToolContext) -> Reply {
    // One policy snapshot per call: a reload applies from the next call on.
    let policy = ctx.policy.current();
    if ctx.locked() {
        let subject = gate::Subject {
            workspace,
            tool: call.request.tool(),
            target: "(any call)".to_owned(),
            caller: Some(&call.caller),
            approval_key: String::new(),
        };
        return gate::refuse(ctx, &policy, &subject, None, gate::LOCKED.to_owned()).await;
    }
    let caller = Caller {
        uid: call.caller.uid,
        pid: call.caller.pid,
        exe: call.caller.exe.clone(),
        cwd: call.caller.cwd.clone(),
    };
    match &call.request {
        Request::Token { name } => {
            let outcome = policy.decide(&PolicyRequest {
                workspace,
                caller: Some(&caller),
                action: Action::Token { name },
            });
            let subject = gate::Subject {
                workspace,
                tool: "token",
                target: name.clone(),
                caller: Some(&call.caller),
                approval_key: name.clone(),
            };
            if let Err(reply) = gate::enforce(ctx, &policy, &subject, &outcome).await {
                return reply;
            }
            token::answer(name, outcome.decision, ctx).await
        }
        Request::SshIdentities => ssh::identities(workspace, &policy, ctx).await,
        Request::SshSign {
            connection,
            binds,
            request,
        } => {
            // Reported by the workspace: for matching the shim's log only.
            tracing::debug!(agent_connection = connection, "ssh sign request");
            ssh::sign(workspace, &call.caller, binds, request, &policy, ctx).await
        }
        Request::SshKnownHosts => ssh::known_hosts(&policy, ctx),
        Request::GitCredential { operation, input } => {
            git_credential::answer(*operation, input, workspace, &call.caller, ctx).await
        }
        Request::ToolList => custom::list(&policy, workspace),
        Request::McpTokens => token::mcp_names(workspace, &caller, &policy),
        Request::HttpList => http::list(&policy, workspace),
        Request::ToolRun { .. }
        | Request::FileGet { .. }
        | Request::FileSync { .. }
        | Request::Http(_) => Reply::error(
            ErrorCode::BadRequest,
            "this request needs a streamed answer",
        ),
    }
}

/// Decides `action` with the policy in force (one snapshot, returned for
/// the gate). Synchronous: an [`Action`] may hold a non-`Send` matcher and
/// must not live across an await.
pub(crate) fn decide(
    ctx: &ToolContext,
    workspace: &str,
    caller: &nexus_protocol::CallerContext,
    action: Action<'_>,
) -> (Arc<nexus_policy::PolicySet>, nexus_policy::Outcome) {
    let policy = ctx.policy.current();
    let as_caller = Caller {
        uid: caller.uid,
        pid: caller.pid,
        exe: caller.exe.clone(),
        cwd: caller.cwd.clone(),
    };
    let outcome = policy.decide(&PolicyRequest {
        workspace,
        caller: Some(&as_caller),
        action,
    });
    (policy, outcome)
}

/// Passes a decision through the gate (lock, verdict, every layer's rate
/// limits, the approval prompt, the audit log): the grant, or the denial to
/// send.
///
/// `target` names what is asked in the audit log and the prompt (never a
/// secret), and is what makes two requests identical for an approval given
/// "for 10 minutes".
pub(crate) async fn grant(
    ctx: &ToolContext,
    (policy, outcome): (Arc<nexus_policy::PolicySet>, nexus_policy::Outcome),
    workspace: &str,
    caller: &nexus_protocol::CallerContext,
    (tool, target): (&'static str, &str),
) -> Result<nexus_policy::Grant, Reply> {
    let subject = gate::Subject {
        workspace,
        tool,
        target: target.to_owned(),
        caller: Some(caller),
        approval_key: target.to_owned(),
    };
    if ctx.locked() {
        return Err(gate::refuse(ctx, &policy, &subject, None, gate::LOCKED.to_owned()).await);
    }
    gate::enforce(ctx, &policy, &subject, &outcome).await?;
    outcome
        .decision
        .grant
        .ok_or_else(|| Reply::error(ErrorCode::Internal, "policy allowed without a rule"))
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
            source_path: path.map(|p| p.display().to_string()),
            rates: RateLimiter::default(),
            ssh_agent: None,
            replay: ssh::ReplayCache::default(),
            call_rate: Rate {
                count: 1000,
                per: std::time::Duration::from_secs(1),
            },
            http: http::HttpState::default(),
        }
    }
}
