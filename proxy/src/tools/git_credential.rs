//! git credentials over HTTP(S): the workspace's git asks its helper
//! (`nexus-shim git-credential`), and the laptop answers with its own
//! `git credential fill`, so whatever helper the laptop uses (osxkeychain,
//! libsecret, Git Credential Manager, `gh auth git-credential`, store)
//! works unchanged. `store`/`erase` reach the laptop's helpers (`git
//! credential approve`/`reject`) only when a rule lists them.

use std::process::Stdio;
use std::time::Duration;

use nexus_policy::{Action, GitAction, GitCredentialRule, Grant, PolicySet};
use nexus_protocol::{Credential, ErrorCode, GitOperation, Reply, Secret, parse_credential};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::warn;

use super::pipeline::{Asked, Decided, Scope, Tool, wrong_grant};
use super::{ToolContext, clip};

/// How long the laptop's git (and its helper) may take; a helper that shows
/// a keychain dialog needs the user.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Most output read from the laptop's git.
const MAX_OUTPUT: usize = nexus_protocol::MAX_CREDENTIAL_INPUT;

fn action(op: GitOperation) -> GitAction {
    match op {
        GitOperation::Get => GitAction::Get,
        GitOperation::Store => GitAction::Store,
        GitOperation::Erase => GitAction::Erase,
    }
}

/// One helper call (`get`, `store`, `erase`) with git's description of
/// the credential.
#[derive(Debug)]
pub struct Helper<'a> {
    op: GitOperation,
    input: &'a Secret,
    /// The description, once parsed by `ask`.
    cred: Credential,
}

impl<'a> Helper<'a> {
    /// The call `op` with git's description `input` (not yet parsed).
    pub fn new(op: GitOperation, input: &'a Secret) -> Self {
        Self {
            op,
            input,
            cred: Credential::default(),
        }
    }
}

impl Tool for Helper<'_> {
    fn ask(&mut self, scope: &Scope<'_>, policy: &PolicySet) -> Result<Asked, Reply> {
        self.cred = parse_credential(self.input.expose()).map_err(|e| {
            Reply::error(
                ErrorCode::BadRequest,
                format!("credential description refused by the laptop: {e}"),
            )
        })?;
        let cred = &self.cred;
        let (Some(protocol), Some(host)) = (cred.protocol.as_deref(), cred.host.as_deref()) else {
            return Err(Reply::error(
                ErrorCode::BadRequest,
                "the credential description names no protocol or host",
            ));
        };
        // The username is part of what is asked (the laptop's helpers pick
        // the account by it), so the prompt, the audit line and what an
        // approval "for 10 minutes" covers all name it, percent-encoded in
        // the URL's userinfo: text in the path (which comes last) cannot
        // pass for it.
        let user = cred
            .username
            .as_deref()
            .map(|u| format!("{}@", userinfo(u)))
            .unwrap_or_default();
        let target = format!(
            "{protocol}://{user}{host}/{}",
            cred.path.as_deref().unwrap_or_default()
        );
        let action = Action::GitCredential {
            protocol,
            host,
            path: cred.path.as_deref(),
            username: cred.username.as_deref(),
            action: action(self.op),
        };
        let outcome = scope.decide(policy, action);
        let logged = format!("{} {target}", self.op.as_str());
        Ok(Asked::decided(Decided::new(
            outcome,
            "git-credential",
            logged,
        )))
    }

    async fn run<S>(
        self,
        scope: &Scope<'_>,
        _: &PolicySet,
        grant: Option<Grant>,
        _: &mut S,
    ) -> Option<Reply> {
        let Some(Grant::GitCredential(rule)) = grant else {
            return wrong_grant();
        };
        let (op, cred, ctx) = (self.op, self.cred, scope.ctx);
        // Only the fields that name the credential (and, for store/erase,
        // the credential itself) reach the laptop's git.
        let mut ask = Credential {
            protocol: cred.protocol.clone(),
            host: cred.host.clone(),
            path: cred.path.clone(),
            username: cred.username.clone(),
            ..Credential::default()
        };
        Some(match op {
            GitOperation::Get => fill(&ask, &rule, ctx).await,
            GitOperation::Store | GitOperation::Erase => {
                ask.password = cred.password.clone();
                ask.password_expiry_utc = cred.password_expiry_utc.clone();
                let verb = if op == GitOperation::Store {
                    "approve"
                } else {
                    "reject"
                };
                match run_git(verb, &ask, ctx).await {
                    Ok(_) => Reply::GitCredential(Secret::default()),
                    Err(reply) => reply,
                }
            }
        })
    }
}

/// A username as URL userinfo: anything but letters, digits and `-._~`
/// percent-encoded (so `@`, `:` and `/` cannot fake a host).
fn userinfo(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for b in user.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn fill(ask: &Credential, rule: &GitCredentialRule, ctx: &ToolContext) -> Reply {
    let out = match run_git("fill", ask, ctx).await {
        Ok(out) => out,
        Err(reply) => return reply,
    };
    let got = match parse_credential(&out) {
        Ok(c) => c,
        Err(e) => {
            return Reply::error(
                ErrorCode::Internal,
                format!("the laptop's git credential fill printed something unexpected: {e}"),
            );
        }
    };
    if got.password.is_none() {
        return Reply::error(
            ErrorCode::Missing,
            "the laptop's git has no password for this URL; store one there (e.g. run git fetch once on the laptop)",
        );
    }
    // The request may name no account: the one the laptop's helper picked
    // must be one the rule allows, or its credential stays on the laptop.
    if rule.limits_usernames()
        && !got
            .username
            .as_deref()
            .is_some_and(|u| rule.admits_username(u))
    {
        warn!(tool = "git-credential", rule = %rule.rule, "refused: the laptop's credential is for an account the rule does not allow");
        return Reply::error(
            ErrorCode::Denied,
            format!(
                "the laptop's credential for this URL is for account {}, which the usernames of rule {} do not include",
                got.username
                    .as_deref()
                    .map_or_else(|| "(none)".to_owned(), |u| format!("{:?}", clip(u))),
                rule.rule
            ),
        );
    }
    // Only what git needs from a helper; never the laptop's refresh tokens.
    let answer = Credential {
        username: got.username,
        password: got.password,
        password_expiry_utc: got.password_expiry_utc,
        ..Credential::default()
    };
    Reply::GitCredential(Secret::new(answer.serialize().to_vec()))
}

/// Runs `git credential VERB` with `input` on stdin: no shell, no terminal
/// prompt, a timeout and an output cap.
pub(crate) async fn run_git(
    verb: &str,
    input: &Credential,
    ctx: &ToolContext,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Reply> {
    let mut cmd = tokio::process::Command::new("git");
    // No terminal prompt, and no askpass dialog either: a workspace must
    // not be able to pop up a password prompt on the laptop whose answer
    // it would receive. (`false` fails, so git gives up; `true` would
    // answer an empty password.) Helpers with their own UI still work.
    cmd.args(["credential", verb])
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "false")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(p) = &ctx.source_path {
        cmd.env("PATH", p);
    }
    let mut child = cmd.spawn().map_err(|e| {
        Reply::error(
            ErrorCode::Internal,
            format!("cannot run the laptop's git: {e}; is git installed and on --source-path?"),
        )
    })?;
    let (Some(mut stdin), Some(mut out), Some(mut err)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(Reply::error(ErrorCode::Internal, "git pipes unavailable"));
    };
    let body = input.serialize();
    let run = async {
        let write = async {
            let _ = stdin.write_all(&body).await;
            let _ = stdin.write_all(b"\n").await;
            drop(stdin);
        };
        let mut value = zeroize::Zeroizing::new(Vec::new());
        let mut errors = Vec::new();
        let mut o = (&mut out).take(MAX_OUTPUT as u64 + 1);
        let mut e = (&mut err).take(4096);
        let ((), r, _) = tokio::join!(write, o.read_to_end(&mut value), e.read_to_end(&mut errors));
        r.map_err(|e| Reply::error(ErrorCode::Internal, format!("reading git's output: {e}")))?;
        let status = child
            .wait()
            .await
            .map_err(|e| Reply::error(ErrorCode::Internal, format!("waiting for git: {e}")))?;
        Ok::<_, Reply>((status, value, errors))
    };
    let (status, value, errors) =
        tokio::time::timeout(GIT_TIMEOUT, run).await.map_err(|_| {
            Reply::error(
                ErrorCode::Internal,
                format!("the laptop's git credential {verb} did not finish within {GIT_TIMEOUT:?}"),
            )
        })??;
    if !status.success() {
        let stderr = String::from_utf8_lossy(&errors);
        warn!(verb, %status, stderr = %clip(stderr.trim()), "git credential failed on the laptop");
        let code = if verb == "fill" {
            ErrorCode::Missing
        } else {
            ErrorCode::Internal
        };
        return Err(Reply::error(
            code,
            format!(
                "the laptop's git credential {verb} failed ({status}); it has no stored credential \
                 for this URL, or its helper needs the user; see the proxy's log"
            ),
        ));
    }
    if value.len() > MAX_OUTPUT {
        return Err(Reply::error(
            ErrorCode::Internal,
            format!("the laptop's git printed more than {MAX_OUTPUT} bytes"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::test_support::context;

    /// One helper call through the whole pipeline.
    async fn helper(ctx: &ToolContext, operation: GitOperation, input: Secret) -> Reply {
        let request = nexus_protocol::Request::GitCredential { operation, input };
        crate::tools::test_support::ask(ctx, request).await
    }

    const POLICY: &str = "[[git-credential.allow]]\nhost = \"h.test\"\npath = \"a/*\"\n";

    /// A fake `git` on the source path printing `output` and exiting `code`.
    fn fake_git(output: &str, code: i32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let script = dir.path().join("git");
        std::fs::write(
            &script,
            format!("#!/bin/sh\ncat >/dev/null\nprintf '%b' '{output}'\nexit {code}\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    async fn get(output: &str, code: i32) -> Reply {
        let dir = fake_git(output, code);
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        let mut ctx = context(POLICY, None);
        ctx.source_path = Some(path);
        let input = Secret::new(b"protocol=https\nhost=h.test\npath=a/r.git\n".to_vec());
        helper(&ctx, GitOperation::Get, input).await
    }

    #[tokio::test]
    async fn the_laptop_answer_is_checked_and_filtered() {
        let ok = get(
            "username=u\\npassword=p\\noauth_refresh_token=R\\nwwwauth[]=x\\n",
            0,
        )
        .await;
        let Reply::GitCredential(out) = ok else {
            panic!("{ok:?}");
        };
        assert_eq!(out.expose(), b"username=u\npassword=p\n");
        let big = "a".repeat(70_000);
        let r = get(&format!("path={big}\\n"), 0).await;
        assert!(
            matches!(&r, Reply::Error(e) if e.message.contains("more than")),
            "{r:?}"
        );
        let r = get("password=p\\rquit=1\\n", 0).await;
        assert!(
            matches!(&r, Reply::Error(e) if e.code == ErrorCode::Internal),
            "{r:?}"
        );
        let r = get("", 128).await;
        assert!(
            matches!(&r, Reply::Error(e) if e.code == ErrorCode::Missing),
            "{r:?}"
        );
        let r = get("username=u\\n", 0).await;
        assert!(
            matches!(&r, Reply::Error(e) if e.code == ErrorCode::Missing),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_shim_that_skips_its_own_check_is_refused_here_too() {
        let ctx = context(POLICY, None);
        for input in [
            &b"protocol=https\nhost=h.test\npath=a/r\rhost=evil\n"[..],
            b"protocol=https\nhost=h.test\0\npath=a/r\n",
            b"url=https://u:p@h.test/a/r\n",
            b"path=a/r\n",
        ] {
            let r = helper(&ctx, GitOperation::Get, Secret::new(input.to_vec())).await;
            assert!(
                matches!(&r, Reply::Error(e) if e.code == ErrorCode::BadRequest),
                "{input:?}: {r:?}"
            );
        }
    }

    /// "Allow for 10 minutes" covers the request the user saw: a workspace
    /// must not reuse it to fetch another account's password for the same
    /// URL by changing `username=` (the laptop's helpers key on it).
    #[tokio::test]
    async fn an_approval_does_not_cover_another_username() {
        let dir = fake_git("username=u\\npassword=p\\n", 0);
        let mut ctx = context(
            "[[git-credential.allow]]\nhost = \"h.test\"\napprove = \"prompt\"\n",
            None,
        );
        ctx.source_path = Some(format!("{}:/usr/bin:/bin", dir.path().display()));
        ctx.approvals = std::sync::Arc::new(crate::approvals::Approvals::new(Some(
            std::time::Duration::from_secs(2),
        )));
        let ctx = std::sync::Arc::new(ctx);
        let ask = |user: &str| {
            let ctx = ctx.clone();
            let input = format!("protocol=https\nhost=h.test\nusername={user}\n");
            tokio::spawn(async move {
                helper(&ctx, GitOperation::Get, Secret::new(input.into_bytes())).await
            })
        };
        let first = ask("work");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let id = loop {
            if let Some(p) = ctx.approvals.pending().first() {
                break p.id;
            }
            assert!(std::time::Instant::now() < deadline, "no prompt");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        let summary = ctx.approvals.pending()[0].summary.clone();
        assert_eq!(
            summary, "get https://work@h.test/",
            "the prompt hides the username"
        );
        assert_eq!(userinfo("a@b.c/d:e f"), "a%40b.c%2Fd%3Ae%20f");
        let given = crate::approvals::Answer {
            allow: true,
            for_ms: Some(600_000),
        };
        assert!(ctx.approvals.answer(id, given).is_ok());
        let r = first.await.unwrap_or(Reply::Done);
        assert!(matches!(r, Reply::GitCredential(_)), "{r:?}");
        // Another account, same URL: asks again (and times out unanswered).
        let r = ask("personal").await.unwrap_or(Reply::Done);
        assert!(
            matches!(&r, Reply::Error(e) if e.code == ErrorCode::Denied),
            "{r:?}"
        );
    }
}
