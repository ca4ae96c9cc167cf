//! Laptop-side tools: each forwarded request is decided by the policy, then
//! answered by one tool module.

pub mod approval;
pub mod custom;
pub mod file;
pub mod git_credential;
pub mod ssh;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use nexus_policy::{Action, Caller, Decision, Policy, Rate, Request as PolicyRequest, Verdict};
use nexus_protocol::{Call, ErrorCode, Reply, Request};
use tracing::info;

use crate::config::ConfigDir;
use crate::rate::RateLimiter;

/// What every tool call needs: the policy and the laptop's settings.
#[derive(Debug)]
pub struct ToolContext {
    /// The policy in force.
    pub policy: Arc<Policy>,
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
}

impl ToolContext {
    /// The laptop's identity.
    pub fn identity(&self) -> Result<nexus_transport::Identity> {
        self.config.identity()
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

/// Decides and answers a streamed call (tool run, file get/sync), writing
/// its non-final frames on `stream`; returns the final reply.
pub async fn dispatch_stream<S>(
    call: &Call,
    workspace: &str,
    ctx: &ToolContext,
    stream: &mut S,
) -> Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(reply) = call_rate(call, workspace, ctx) {
        return reply;
    }
    match &call.request {
        Request::ToolRun { name, args } => {
            custom::run(name, args, workspace, &call.caller, ctx, stream).await
        }
        Request::FileGet { path } => file::get(path, workspace, &call.caller, ctx, stream).await,
        Request::FileSync { set } => file::sync(set, workspace, &call.caller, ctx, stream).await,
        _ => dispatch(call, workspace, ctx).await,
    }
}

/// Decides and answers one call.
pub async fn dispatch(call: &Call, workspace: &str, ctx: &ToolContext) -> Reply {
    if let Err(reply) = call_rate(call, workspace, ctx) {
        return reply;
    }
    let caller = Caller {
        uid: call.caller.uid,
        pid: call.caller.pid,
        exe: call.caller.exe.clone(),
        cwd: call.caller.cwd.clone(),
    };
    match &call.request {
        Request::Token { name } => {
            let decision = ctx.policy.decide(&PolicyRequest {
                workspace,
                caller: Some(&caller),
                action: Action::Token { name },
            });
            log_decision("token", name, &decision, &call.caller);
            if decision.verdict == Verdict::Deny {
                return Reply::error(
                    ErrorCode::Denied,
                    format!("denied by the laptop's policy: {}", decision.reason),
                );
            }
            token::answer(name, workspace, decision, ctx).await
        }
        Request::SshIdentities => ssh::identities(workspace, ctx).await,
        Request::SshSign {
            connection,
            binds,
            request,
        } => {
            // Reported by the workspace: for matching the shim's log only.
            tracing::debug!(agent_connection = connection, "ssh sign request");
            ssh::sign(workspace, binds, request, ctx).await
        }
        Request::SshKnownHosts => ssh::known_hosts(ctx),
        Request::GitCredential { operation, input } => {
            git_credential::answer(*operation, input, workspace, &call.caller, ctx).await
        }
        Request::ToolList => custom::list(ctx),
        Request::ToolRun { .. } | Request::FileGet { .. } | Request::FileSync { .. } => {
            Reply::error(
                ErrorCode::BadRequest,
                "this request needs a streamed answer",
            )
        }
    }
}

/// Decides `action`, logs the decision, and gives the grant, or the denial
/// to send.
pub(crate) fn grant(
    ctx: &ToolContext,
    workspace: &str,
    caller: &nexus_protocol::CallerContext,
    (tool, target): (&str, &str),
    action: Action<'_>,
) -> Result<nexus_policy::Grant, Reply> {
    let decision = ctx.policy.decide(&PolicyRequest {
        workspace,
        caller: None,
        action,
    });
    log_decision(tool, target, &decision, caller);
    if decision.verdict == Verdict::Deny {
        return Err(Reply::error(
            ErrorCode::Denied,
            format!("denied by the laptop's policy: {}", decision.reason),
        ));
    }
    decision
        .grant
        .ok_or_else(|| Reply::error(ErrorCode::Internal, "policy allowed without a rule"))
}

/// A rule's approval and rate limit (keyed by `key`), before it is carried out.
pub(crate) fn admit(
    ctx: &ToolContext,
    what: &str,
    rule: &nexus_policy::RuleRef,
    approve: Option<nexus_policy::Approve>,
    rate: Option<Rate>,
    key: &str,
) -> Result<(), Reply> {
    approval::require(approve, what, rule)?;
    if let Some(rate) = rate
        && let Err(retry) = ctx.rates.check(key, rate)
    {
        return Err(Reply::error(
            ErrorCode::Denied,
            format!(
                "{what} is rate-limited to {rate} by the laptop's policy; retry in {}s",
                retry.as_secs().max(1)
            ),
        ));
    }
    Ok(())
}

pub(crate) fn log_decision(
    tool: &str,
    target: &str,
    d: &Decision,
    caller: &nexus_protocol::CallerContext,
) {
    let rule = d.rule.as_ref().map(ToString::to_string);
    info!(
        tool,
        target = %clip(target),
        decision = if d.verdict == Verdict::Allow {
            "allow"
        } else {
            "deny"
        },
        rule = rule.as_deref().unwrap_or("default"),
        caller_pid = caller.pid,
        caller_exe = caller.exe.as_deref().map(clip),
        "decision"
    );
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
        ToolContext {
            policy: Arc::new(policy),
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
        }
    }
}
