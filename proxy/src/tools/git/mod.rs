//! Git brokered by the laptop (`[[git.allow]]`): what both transports
//! share. The workspace never holds the credential: the laptop connects
//! with its own `ssh` ([`ssh`]) or its own `git credential fill` (HTTPS),
//! and decides each connection twice:
//!
//! - when it opens ([`ask_open`], through the pipeline like any call):
//!   a fetch of the repository, or a push connection to it;
//! - for a push, once its command list is read and before a byte of it is
//!   forwarded ([`decide_push`]): every ref update at once, through the
//!   policy, the rate limits, the approval and the audit log. An approval
//!   covers (workspace, host, repo, refs).

pub mod https;
pub mod ssh;

use nexus_policy::{
    Action, GitOp, GitRefUpdate, GitRule, Grant, PolicySet, Verdict, git_repo_path,
};
use nexus_protocol::pktline::RefUpdate;
use nexus_protocol::{ErrorCode, GitService, Reply};

use super::clip;
use super::gate::{self, Subject};
use super::pipeline::{Asked, Decided, Listing, Scope};

/// The audit log's tool for every brokered git decision.
pub const TOOL: &str = "git";

/// `HOST/REPO`, as audit lines, prompts and approval keys name a repository.
fn place(host: &str, repo: &str) -> String {
    format!(
        "{}/{}",
        clip(&host.to_ascii_lowercase()),
        clip(git_repo_path(repo).unwrap_or(repo))
    )
}

/// The decision when a brokered connection opens: a fetch
/// (`git-upload-pack`), or a push connection (`git-receive-pack`) whose ref
/// updates [`decide_push`] decides later. `host` is `HOST` or `HOST:PORT`.
///
/// # Errors
/// None yet: every request is decided (a malformed one is denied by the
/// policy, which checks host and repository first).
pub(crate) fn ask_open(
    scope: &Scope<'_>,
    policy: &PolicySet,
    host: &str,
    repo: &str,
    service: GitService,
) -> Result<Asked, Reply> {
    let op = match service {
        GitService::UploadPack => GitOp::Fetch,
        GitService::ReceivePack => GitOp::PushOpen,
    };
    let outcome = scope.decide(policy, Action::Git { host, repo, op });
    let verb = match service {
        GitService::UploadPack => "fetch",
        GitService::ReceivePack => "open push",
    };
    let target = format!("{verb} {}", place(host, repo));
    Ok(Asked::decided(Decided::new(outcome, TOOL, target)))
}

/// Whether the laptop brokers git for `host` (`HOST` or `HOST:PORT`) for
/// this workspace: a host no rule names is the workspace's own business.
pub(crate) fn brokers(scope: &Scope<'_>, policy: &PolicySet, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    policy.git_hosts_for(scope.workspace).contains(&host)
}

/// The rule a push is carried out under, or why it is refused.
pub(crate) type PushDecision = Result<GitRule, PushRefused>;

/// A refused push: one line for git's output, naming the ref and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushRefused(pub String);

/// Decides a push once its command list is known, before any of it is
/// forwarded: policy (every layer), rate limits, approval and one audit
/// line naming the repository and every ref. Refused whole if any ref
/// update is not allowed.
pub(crate) async fn decide_push(
    scope: &Scope<'_>,
    policy: &PolicySet,
    host: &str,
    repo: &str,
    updates: &[RefUpdate],
) -> PushDecision {
    let refs: Vec<GitRefUpdate> = updates
        .iter()
        .map(|u| GitRefUpdate {
            name: u.name.clone(),
            delete: u.is_delete(),
        })
        .collect();
    let outcome = scope.decide(
        policy,
        Action::Git {
            host,
            repo,
            op: GitOp::Push(&refs),
        },
    );
    let names: Vec<String> = refs
        .iter()
        .map(|r| {
            let verb = if r.delete { "delete " } else { "" };
            format!("{verb}{}", r.name)
        })
        .collect();
    let target = format!("push {}: {}", place(host, repo), names.join(", "));
    let subject = Subject {
        workspace: scope.workspace,
        tool: TOOL,
        approval_key: target.clone(),
        target,
        caller: Some(scope.caller),
    };
    if let Err(reply) = gate::enforce(scope.ctx, policy, &subject, &outcome).await {
        let message = match reply {
            Reply::Error(e) => e.message,
            other => format!("{other:?}"),
        };
        return Err(PushRefused(message));
    }
    match outcome.decision.grant {
        Some(Grant::Git(rule)) if outcome.verdict == Verdict::Allow => Ok(rule),
        _ => Err(PushRefused("the policy granted something else".to_owned())),
    }
}

/// Refuses a push whose command list cannot be decided (malformed, protocol
/// v2, a pack first, cut short): audited like any denial, so that probing
/// leaves a trace; the message is the refusal line for git's output.
pub(crate) async fn refuse_push(
    scope: &Scope<'_>,
    policy: &PolicySet,
    host: &str,
    repo: &str,
    why: String,
) -> PushRefused {
    let subject = Subject {
        workspace: scope.workspace,
        tool: TOOL,
        target: format!("push {}: (command list not read)", place(host, repo)),
        caller: Some(scope.caller),
        approval_key: String::new(),
    };
    match gate::refuse(scope.ctx, policy, &subject, None, why.clone()).await {
        Reply::Error(e) => PushRefused(e.message),
        _ => PushRefused(why),
    }
}

/// `Request::GitHosts`: the hosts `nexus-shim env` points git at the laptop for.
pub(crate) struct Hosts;

impl Listing for Hosts {
    fn list(&self, scope: &Scope<'_>, policy: &PolicySet) -> Reply {
        Reply::GitHosts(policy.git_hosts_for(scope.workspace))
    }
}

/// The reply for a grant of another kind (a bug, never the workspace's doing).
fn wrong_grant() -> Reply {
    Reply::error(ErrorCode::Internal, "policy granted something else")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::test_support::{ask, context};
    use nexus_protocol::Request;

    const POLICY: &str = "[[git.allow]]\nhost = \"github.com\"\nrepo = \"acme/*\"\npush = [\"agent/*\"]\n\n\
        [[git.allow]]\nhost = \"git.corp:2222\"\nrepo = \"**\"\n";

    fn update(name: &str, delete: bool) -> RefUpdate {
        let oid = "1".repeat(40);
        let zero = "0".repeat(40);
        RefUpdate {
            old: oid.clone(),
            new: if delete { zero } else { oid },
            name: name.to_owned(),
        }
    }

    #[tokio::test]
    async fn hosts_are_listed() {
        let ctx = context(POLICY, None);
        assert_eq!(
            ask(&ctx, Request::GitHosts).await,
            Reply::GitHosts(vec!["git.corp:2222".into(), "github.com".into()])
        );
    }

    #[tokio::test]
    async fn a_push_is_decided_whole_and_audited_once() {
        let ctx = context(POLICY, None);
        let policy = ctx.policy.current();
        let caller = nexus_protocol::CallerContext::default();
        let scope = Scope {
            ctx: &ctx,
            workspace: "w",
            caller: &caller,
            tool: TOOL,
            max_frame: nexus_protocol::MAX_FRAME,
            call_timeout: None,
        };
        let ok = decide_push(
            &scope,
            &policy,
            "GitHub.com",
            "/acme/app.git",
            &[update("refs/heads/agent/x", false)],
        )
        .await;
        assert!(ok.is_ok_and(|r| r.ssh_user == "git"));
        let refused = decide_push(
            &scope,
            &policy,
            "github.com",
            "acme/app",
            &[
                update("refs/heads/agent/x", false),
                update("refs/heads/main", false),
            ],
        )
        .await;
        let Err(PushRefused(why)) = refused else {
            panic!("{refused:?}")
        };
        assert!(
            why.contains("\"refs/heads/main\"") && why.contains("p.toml:1"),
            "{why}"
        );
        let deleted = decide_push(
            &scope,
            &policy,
            "github.com",
            "acme/app",
            &[update("refs/heads/agent/x", true)],
        )
        .await;
        assert!(deleted.is_err_and(|PushRefused(w)| w.contains("delete = true")));
        let entries = ctx.audit.recent();
        let pushes: Vec<_> = entries
            .iter()
            .filter(|e| e.target.starts_with("push github.com/acme/app"))
            .collect();
        assert_eq!(pushes.len(), 3, "{entries:?}");
        assert_eq!(pushes[1].decision, "deny");
        assert_eq!(
            pushes[1].target, "push github.com/acme/app: refs/heads/agent/x, refs/heads/main",
            "one line names every ref"
        );
    }
}
