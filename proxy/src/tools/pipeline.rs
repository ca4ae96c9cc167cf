//! The one entrance on the laptop. Every call passes, here and only here:
//! decode → lock → policy (every layer) → rate → approval → audit → run →
//! audit outcome.
//!
//! A tool (one file under `tools/`) implements [`Tool`]: what a decoded
//! request asks ([`Tool::ask`]: the policy's outcome and the words the
//! audit log and prompts use) and how an allowed call is carried out
//! ([`Tool::run`]). The lock, the gate and the audit lines are not the
//! tool's business: a run is stopped when the laptop locks (its future is
//! dropped, which kills a tool's process group and closes an upstream
//! request), and a denial it ends with is audited like any other.

use nexus_policy::{Action, Caller, Grant, Outcome, PolicySet, Request as PolicyRequest};
use nexus_protocol::{CallerContext, ErrorCode, Reply};
use tokio::io::{AsyncRead, AsyncWrite};

use super::ToolContext;
use super::gate::{self, Subject};

/// One call as it passes the pipeline: who asks, from which workspace.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scope<'a> {
    /// The laptop's settings and state.
    pub ctx: &'a ToolContext,
    /// The laptop's name of the workspace.
    pub workspace: &'a str,
    /// The caller, as the workspace reported it.
    pub caller: &'a CallerContext,
    /// The request's tool name (`token`, `file`...), for a refusal made
    /// before the request is decoded.
    pub tool: &'static str,
    /// The largest frame accepted from the workspace.
    pub max_frame: usize,
    /// How long the laptop works on this call, approval wait included
    /// (`run --call-timeout`); `None` for streamed answers, which end on
    /// their own (a tool at its policy timeout, a file at its end).
    pub call_timeout: Option<std::time::Duration>,
}

impl Scope<'_> {
    /// The caller as the policy sees it: reported by the workspace, so the
    /// policy uses it only to narrow.
    pub fn policy_caller(&self) -> Caller {
        Caller {
            uid: self.caller.uid,
            pid: self.caller.pid,
            exe: self.caller.exe.clone(),
            cwd: self.caller.cwd.clone(),
        }
    }

    /// Decides `action` for this caller with `policy` (every layer).
    pub fn decide(&self, policy: &PolicySet, action: Action<'_>) -> Outcome {
        policy.decide(&PolicyRequest {
            workspace: self.workspace,
            caller: Some(&self.policy_caller()),
            action,
        })
    }
}

/// What a decoded request asks.
pub(crate) enum Asked {
    /// A decision for the gate.
    Decided(Box<Decided>),
    /// A [`Listing`]: nothing to decide or audit.
    Listing,
}

impl Asked {
    /// A decision for the gate.
    pub fn decided(decided: Decided) -> Self {
        Self::Decided(Box::new(decided))
    }
}

/// A decision, and the words the audit log and the prompt use for it.
pub(crate) struct Decided {
    /// The policy's outcome, every layer applied.
    pub outcome: Outcome,
    /// The audit log's tool: `token`, `ssh`, `file-set`...
    pub tool: &'static str,
    /// What is asked, in words: names only, never a secret value.
    pub target: String,
    /// What makes two requests identical for "allow for 10 min": the
    /// request without anything that changes per call (session ids).
    pub approval_key: String,
}

impl Decided {
    /// A decision whose approval covers exactly the same `target`.
    pub fn new(outcome: Outcome, tool: &'static str, target: String) -> Self {
        Self {
            outcome,
            tool,
            approval_key: target.clone(),
            target,
        }
    }
}

/// One laptop tool.
pub(crate) trait Tool {
    /// What this request asks: decode, then decide with
    /// [`Scope::decide`]. Synchronous, so the decision is made on one
    /// policy snapshot with nothing awaited in between. `Err` is the reply
    /// for a request that cannot even be asked (malformed, or refused
    /// before a rule is asked; a `Denied` one is audited).
    fn ask(&mut self, scope: &Scope<'_>, policy: &PolicySet) -> Result<Asked, Reply>;

    /// Carries out the call the gate let through (`grant` is the deciding
    /// rule's grant), writing any non-final frames on `out`; returns the
    /// final reply, or `None` when it was already written.
    async fn run<S>(
        self,
        scope: &Scope<'_>,
        policy: &PolicySet,
        grant: Option<Grant>,
        out: &mut S,
    ) -> Option<Reply>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send;
}

/// A listing drawn from the policy alone (names and descriptions, never a
/// value): no decision to gate or audit, no laptop resource to wait on.
pub(crate) trait Listing {
    /// The list this workspace may see.
    fn list(&self, scope: &Scope<'_>, policy: &PolicySet) -> Reply;
}

impl<T: Listing> Tool for T {
    fn ask(&mut self, _: &Scope<'_>, _: &PolicySet) -> Result<Asked, Reply> {
        Ok(Asked::Listing)
    }

    async fn run<S>(
        self,
        scope: &Scope<'_>,
        policy: &PolicySet,
        _: Option<Grant>,
        _: &mut S,
    ) -> Option<Reply> {
        Some(self.list(scope, policy))
    }
}

/// The reply when the policy granted another kind of rule than the tool
/// asked for (a bug, never the workspace's doing).
pub(crate) fn wrong_grant() -> Option<Reply> {
    Some(Reply::error(
        ErrorCode::Internal,
        "policy granted something else",
    ))
}

/// The audit reason of a call the lock stopped under way.
pub const LOCKED_UNDER_WAY: &str = "stopped under way: the laptop was locked \
     (`nexus-agent-proxy lock`); every call is denied until its user runs \
     `nexus-agent-proxy unlock`";

/// Carries one call through the pipeline: its final reply, or `None` when
/// the tool already wrote it.
/// Sleeps until `deadline`; never, without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The reply to a call the laptop gave up on at `--call-timeout`, and the
/// audit line's reason.
fn timed_out(scope: &Scope<'_>) -> (Reply, String) {
    let timeout = scope
        .call_timeout
        .map(nexus_protocol::units::format_duration)
        .unwrap_or_default();
    tracing::warn!(tool = scope.tool, %timeout, "call timed out");
    (
        Reply::error(
            ErrorCode::Internal,
            format!(
                "the laptop gave up on this {} call after {timeout} \
                 (`nexus-agent-proxy run --call-timeout`)",
                scope.tool
            ),
        ),
        format!("stopped: the call took longer than --call-timeout ({timeout})"),
    )
}

/// Serves one call of `tool`, boxed: a call's task holds only this tool's
/// state. Unboxed, every call's task was sized to the largest tool (20 KiB,
/// the HTTP exchange), allocated and copied whole for each token call.
pub(crate) fn serve<T, S>(
    tool: T,
    scope: &Scope<'_>,
    out: &mut S,
) -> std::pin::Pin<Box<impl Future<Output = Option<Reply>>>>
where
    T: Tool,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    Box::pin(serve_here(tool, scope, out))
}

async fn serve_here<T, S>(mut tool: T, scope: &Scope<'_>, out: &mut S) -> Option<Reply>
where
    T: Tool,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let ctx = scope.ctx;
    // One policy snapshot per call: a reload applies from the next call on.
    let policy = ctx.policy.current();
    if ctx.locked() {
        let subject = Subject {
            workspace: scope.workspace,
            tool: scope.tool,
            target: "(any call)".to_owned(),
            caller: Some(scope.caller),
            approval_key: String::new(),
        };
        return Some(gate::refuse(ctx, &policy, &subject, None, gate::LOCKED.to_owned()).await);
    }
    let deadline = scope.call_timeout.map(|d| tokio::time::Instant::now() + d);
    let (subject, grant) = match tool.ask(scope, &policy) {
        // A request refused before any rule was asked (a replayed SSH
        // session, a sign without its bind, a malformed request) is a
        // decision too: audited, so probing leaves a trace.
        Err(Reply::Error(e)) if e.code == ErrorCode::Denied => {
            let subject = Subject {
                workspace: scope.workspace,
                tool: scope.tool,
                target: "(request refused before a rule was asked)".to_owned(),
                caller: Some(scope.caller),
                approval_key: String::new(),
            };
            gate::refuse(ctx, &policy, &subject, None, e.message.clone()).await;
            return Some(Reply::Error(e));
        }
        Err(reply) => return Some(reply),
        Ok(Asked::Listing) => (None, None),
        Ok(Asked::Decided(d)) => {
            let subject = Subject {
                workspace: scope.workspace,
                tool: d.tool,
                target: d.target,
                caller: Some(scope.caller),
                approval_key: d.approval_key,
            };
            let enforced = tokio::select! {
                r = gate::enforce(ctx, &policy, &subject, &d.outcome) => Some(r),
                () = sleep_until(deadline) => None,
            };
            match enforced {
                Some(Ok(())) => {}
                Some(Err(reply)) => return Some(reply),
                None => {
                    let (reply, why) = timed_out(scope);
                    gate::refuse(ctx, &policy, &subject, None, why).await;
                    return Some(reply);
                }
            }
            (Some(subject), d.outcome.decision.grant)
        }
    };
    let (ended, why) = tokio::select! {
        ended = tool.run(scope, &policy, grant, out) => {
            let why = match &ended {
                Some(Reply::Error(e)) if e.code == ErrorCode::Denied => Some(e.message.clone()),
                _ => None,
            };
            (ended, why)
        }
        () = ctx.lock.engaged() => {
            tracing::warn!(tool = scope.tool, "the laptop was locked; call under way stopped");
            (Some(Reply::error(ErrorCode::Denied, gate::LOCKED)), Some(LOCKED_UNDER_WAY.to_owned()))
        }
        () = sleep_until(deadline) => {
            let (reply, why) = timed_out(scope);
            (Some(reply), Some(why))
        }
    };
    // A denial after the gate's "allow" (the lock, a symlink out of the
    // allowed tree...) is audited too, so the log never ends at "allow"
    // for a call that was refused.
    if let (Some(subject), Some(why)) = (&subject, why) {
        gate::refuse(ctx, &policy, subject, None, why).await;
    }
    ended
}
