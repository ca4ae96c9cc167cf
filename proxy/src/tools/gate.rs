//! The gate every decision passes before its call runs: the policy's
//! verdict, every rate limit of every layer, the approval prompt, the kill
//! switch again (an approval can take a while), and the audit log, in that
//! order. The pipeline calls [`enforce`] with the [`Outcome`] of
//! `PolicySet::decide`, and [`refuse`] for any other denial to audit.
//!
//! An allowed call goes ahead only once its audit line is written: if the
//! log cannot be written, the call is denied (fail closed) and says so.

use nexus_policy::{Outcome, PolicySet, Verdict};
use nexus_protocol::{CallerContext, ErrorCode, Reply};
use tracing::info;

use super::{ToolContext, clip};
use crate::approvals::ApprovalRequest;
use crate::audit::Event;

/// What a decision is about, for the audit log, prompts and rate keys.
#[derive(Clone, Debug)]
pub struct Subject<'a> {
    /// The laptop's name of the workspace.
    pub workspace: &'a str,
    /// `token`, `ssh`, ...
    pub tool: &'static str,
    /// What is asked, in words: a token name, `login as git to github.com
    /// with key SHA256:...`. Names only, never a secret value.
    pub target: String,
    /// The caller, as the workspace reported it.
    pub caller: Option<&'a CallerContext>,
    /// What makes two requests identical for "allow for 10 min": the
    /// request without anything that changes per call (session ids).
    pub approval_key: String,
}

/// The message of a locked laptop.
pub const LOCKED: &str = "the laptop is locked (`nexus-agent-proxy lock`): every call is denied \
     until its user runs `nexus-agent-proxy unlock`";

/// Lets an allowed decision through its limits, approval and audit line,
/// or answers why not.
///
/// # Errors
/// The reply to send instead (exit 3 in the workspace).
pub async fn enforce(
    ctx: &ToolContext,
    policy: &PolicySet,
    subject: &Subject<'_>,
    outcome: &Outcome,
) -> Result<(), Reply> {
    let rule = outcome.rule.as_ref().map(ToString::to_string);
    if outcome.verdict == Verdict::Deny {
        let msg = format!("denied by the laptop's policy: {}", outcome.reason);
        return Err(refuse(ctx, policy, subject, rule, msg).await);
    }
    for limit in &outcome.limits {
        let key = format!(
            "{}\0rate\0{}:{}:{}",
            subject.workspace, limit.rule.file, limit.rule.line, limit.rule.col
        );
        if let Err(retry) = ctx.rates.check(&key, limit.rate) {
            let msg = format!(
                "{} {} is rate-limited to {} by the laptop's policy ({}); retry in {}s",
                subject.tool,
                clip(&subject.target),
                limit.rate,
                limit.rule,
                retry.as_secs().max(1)
            );
            refuse(ctx, policy, subject, rule, msg.clone()).await;
            return Err(Reply::rate_limited(msg, retry));
        }
    }
    if let Some(asking) = &outcome.approve {
        let request = ApprovalRequest {
            workspace: subject.workspace.to_owned(),
            tool: subject.tool.to_owned(),
            summary: subject.target.clone(),
            key: subject.approval_key.clone(),
            rule: asking.to_string(),
            caller_pid: subject.caller.and_then(|c| c.pid),
            caller_exe: subject.caller.and_then(|c| c.exe.clone()),
        };
        if let Err(why) = ctx.approvals.ask(request).await {
            let msg = format!("needs approval on the laptop ({asking}): {why}");
            return Err(refuse(ctx, policy, subject, rule, msg).await);
        }
    }
    // Checked again after the wait: a lock applies to approved calls too.
    if ctx.locked() {
        return Err(refuse(ctx, policy, subject, None, LOCKED.to_owned()).await);
    }
    record(ctx, policy, subject, true, rule, outcome.reason.clone())
        .await
        .map_err(|e| {
            Reply::error(
                ErrorCode::Denied,
                format!("denied: the laptop cannot write its audit log ({e}); its user must fix that first"),
            )
        })
}

/// Audits a denial and returns the reply that carries it.
pub async fn refuse(
    ctx: &ToolContext,
    policy: &PolicySet,
    subject: &Subject<'_>,
    rule: Option<String>,
    message: String,
) -> Reply {
    // Workspace text in reasons is escaped and cut by the policy engine
    // (names) or by `clip` (targets): one line.
    tracing::warn!(tool = subject.tool, reason = %message, "refused");
    // A denial stands whether or not its line is written.
    if let Err(e) = record(ctx, policy, subject, false, rule, message.clone()).await {
        tracing::error!(error = %e, "audit log");
    }
    Reply::error(ErrorCode::Denied, message)
}

/// One decision to the log (tracing) and the audit log.
async fn record(
    ctx: &ToolContext,
    policy: &PolicySet,
    subject: &Subject<'_>,
    allowed: bool,
    rule: Option<String>,
    reason: String,
) -> Result<(), String> {
    info!(
        tool = subject.tool,
        target = %clip(&subject.target),
        decision = if allowed { "allow" } else { "deny" },
        rule = rule.as_deref().unwrap_or("default"),
        caller_pid = subject.caller.and_then(|c| c.pid),
        caller_exe = subject.caller.and_then(|c| c.exe.as_deref()).map(clip),
        "decision"
    );
    ctx.audit
        .record(
            Event {
                workspace: subject.workspace.to_owned(),
                tool: subject.tool.to_owned(),
                target: subject.target.clone(),
                allowed,
                rule,
                reason,
                caller_pid: subject.caller.and_then(|c| c.pid),
                caller_exe: subject.caller.and_then(|c| c.exe.clone()),
            },
            policy.digest(),
        )
        .await
}
