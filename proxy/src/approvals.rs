//! Approvals (`approve = "prompt"`): a call waits until the laptop user
//! answers, through `nexus-agent-proxy approve` (the control socket) or the
//! proxy's own terminal, or the timeout passes (then it is denied).
//!
//! An answer applies to the one request it was given for. "Allow for 10
//! minutes" also lets *identical* requests through until then; what is
//! identical is the [`ApprovalRequest::key`] the tool chose: for a token,
//! (workspace, name); for an SSH login, (workspace, host key, user, key),
//! since session ids differ every time. The key never includes anything
//! that changes per call, and never a secret.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// How long a call waits for an answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests one workspace may have waiting at once; more are denied at once
/// (a workspace must not bury the real request in a flood of prompts).
pub const MAX_PENDING_PER_WORKSPACE: usize = 8;
/// The longest "allow for" an answer may give.
pub const MAX_GRANT: Duration = Duration::from_secs(24 * 3600);
/// The longest request shown for approval, in characters. A prompt shows
/// the whole request (escaped), never a cut one: a workspace could pad an
/// early argument to push what matters behind the cut. Longer requests
/// are refused.
pub const MAX_SHOWN_SUMMARY: usize = 1024;

/// A request's summary as prompts and `approve` show it: whole, escaped to
/// one line (bounded by [`MAX_SHOWN_SUMMARY`] when asked).
#[must_use]
pub fn shown_summary(summary: &str) -> String {
    summary.chars().flat_map(char::escape_debug).collect()
}

/// What a tool asks the user about.
#[derive(Clone, Debug)]
pub struct ApprovalRequest {
    /// The laptop's name of the workspace.
    pub workspace: String,
    /// `token`, `ssh`, ...
    pub tool: String,
    /// The whole request in one line for the user (names, hosts, users,
    /// key fingerprints; no values).
    pub summary: String,
    /// What makes two requests identical (see the module docs).
    pub key: String,
    /// The rule asking for approval (`file:line`).
    pub rule: String,
    /// Caller pid, as the workspace reported it.
    pub caller_pid: Option<u32>,
    /// Caller executable, as the workspace reported it.
    pub caller_exe: Option<String>,
}

impl ApprovalRequest {
    /// The hash shown to the user, over the identity of the request.
    #[must_use]
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for part in [&self.workspace, &self.tool, &self.key] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(&h.finalize()[..8])
    }
}

/// A waiting request, as `approve` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingView {
    /// The number to answer with.
    pub id: u64,
    /// Workspace.
    pub workspace: String,
    /// Tool.
    pub tool: String,
    /// The request.
    pub summary: String,
    /// Hash of the request's identity.
    pub hash: String,
    /// The rule asking.
    pub rule: String,
    /// Reported caller pid.
    pub caller_pid: Option<u32>,
    /// Reported caller executable.
    pub caller_exe: Option<String>,
    /// Seconds left before it is denied.
    pub expires_in: u64,
}

/// The user's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Allow or deny.
    pub allow: bool,
    /// Also allow identical requests for this many milliseconds.
    pub for_ms: Option<u64>,
}

struct Pending {
    request: ApprovalRequest,
    hash: String,
    deadline: Instant,
    reply: oneshot::Sender<bool>,
}

/// Waiting requests and standing "allow for" answers.
#[derive(Default)]
pub struct Approvals {
    state: Mutex<State>,
    timeout: Option<Duration>,
}

#[derive(Default)]
struct State {
    next: u64,
    pending: BTreeMap<u64, Pending>,
    /// (request hash) → until when identical requests are allowed.
    grants: HashMap<String, Instant>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals").finish_non_exhaustive()
    }
}

impl Approvals {
    /// Approvals that wait `timeout` (default [`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn new(timeout: Option<Duration>) -> Self {
        Self {
            state: Mutex::default(),
            timeout,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the user; true only on an explicit allow (of this request, or
    /// of identical ones for a time) before the timeout.
    pub async fn ask(&self, request: ApprovalRequest) -> Result<(), String> {
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let length = request.summary.chars().count();
        if length > MAX_SHOWN_SUMMARY {
            return Err(format!(
                "the request is too long to show for approval ({length} characters, at most \
                 {MAX_SHOWN_SUMMARY}); shorten its arguments or path"
            ));
        }
        let hash = request.hash();
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.state();
            let now = Instant::now();
            st.grants.retain(|_, until| *until > now);
            if st.grants.contains_key(&hash) {
                return Ok(());
            }
            let waiting = st
                .pending
                .values()
                .filter(|p| p.request.workspace == request.workspace)
                .count();
            if waiting >= MAX_PENDING_PER_WORKSPACE {
                return Err(format!(
                    "{MAX_PENDING_PER_WORKSPACE} requests of this workspace already wait for approval"
                ));
            }
            st.next += 1;
            let id = st.next;
            tracing::warn!(
                id,
                workspace = %request.workspace,
                tool = %request.tool,
                request = %crate::tools::clip(&request.summary),
                hash = %hash,
                "approval needed: answer with `nexus-agent-proxy approve {id}` (or --deny)"
            );
            crate::prompt::show(id, &request, &hash, timeout);
            st.pending.insert(
                id,
                Pending {
                    request,
                    hash,
                    deadline: now + timeout,
                    reply: tx,
                },
            );
            id
        };
        // Whatever ends the wait, the entry must go (a dropped call too).
        let _cleanup = Cleanup {
            approvals: self,
            id,
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err("the laptop user denied it".to_owned()),
            Ok(Err(_)) | Err(_) => Err(format!(
                "nobody approved it on the laptop within {}s",
                timeout.as_secs()
            )),
        }
    }

    /// The waiting requests, oldest first.
    pub fn pending(&self) -> Vec<PendingView> {
        let now = Instant::now();
        self.state()
            .pending
            .iter()
            .map(|(id, p)| PendingView {
                id: *id,
                workspace: p.request.workspace.clone(),
                tool: p.request.tool.clone(),
                summary: p.request.summary.clone(),
                hash: p.hash.clone(),
                rule: p.request.rule.clone(),
                caller_pid: p.request.caller_pid,
                caller_exe: p.request.caller_exe.clone(),
                expires_in: p.deadline.saturating_duration_since(now).as_secs(),
            })
            .collect()
    }

    /// Answers request `id`; with `for_ms`, identical requests are allowed
    /// until then too.
    ///
    /// # Errors
    /// When no request `id` waits (answered, timed out, or never there).
    pub fn answer(&self, id: u64, answer: Answer) -> Result<PendingView, String> {
        let view = self
            .pending()
            .into_iter()
            .find(|p| p.id == id)
            .ok_or_else(|| {
                format!("no request {id} is waiting (answered, timed out or never asked); see `nexus-agent-proxy approve`")
            })?;
        let mut st = self.state();
        let Some(p) = st.pending.remove(&id) else {
            return Err(format!("request {id} was just answered or timed out"));
        };
        if answer.allow
            && let Some(ms) = answer.for_ms
        {
            let span = Duration::from_millis(ms).min(MAX_GRANT);
            st.grants.insert(p.hash.clone(), Instant::now() + span);
        }
        let _ = p.reply.send(answer.allow);
        Ok(view)
    }

    /// Drops every standing "allow for" (e.g. on `lock`).
    pub fn revoke_all(&self) {
        self.state().grants.clear();
    }
}

/// Removes a pending entry when its wait ends, however it ends.
struct Cleanup<'a> {
    approvals: &'a Approvals,
    id: u64,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.approvals.state().pending.remove(&self.id);
    }
}

/// The caller as the workspace reported it, for prompts and lists.
#[must_use]
pub fn caller_text(pid: Option<u32>, exe: Option<&str>) -> String {
    match (pid, exe) {
        (Some(pid), Some(exe)) => format!("pid {pid} {}", crate::tools::clip(exe)),
        (Some(pid), None) => format!("pid {pid}"),
        _ => "unknown".to_owned(),
    }
}

/// How long an "allow for" lasts (`approve --for`, `y ID DURATION` at a
/// prompt): a duration in the one grammar, more than 0 and at most
/// [`MAX_GRANT`].
///
/// # Errors
/// A message with the accepted forms and the bound.
pub fn grant_span(text: &str) -> Result<Duration, String> {
    match nexus_protocol::units::parse_duration(text)? {
        d if d.is_zero() || d > MAX_GRANT => Err(format!(
            "{text}: an approval may also cover identical requests for 1ms to {}",
            nexus_protocol::units::format_duration(MAX_GRANT)
        )),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A workspace pads a tool's arguments so that the part that matters
    /// comes after the first 128 characters: the approver still sees it.
    /// (Prompts and `approve` cut requests at 128 characters, so a user
    /// approved arguments they could not see anywhere.)
    #[test]
    fn the_approver_sees_the_whole_request() {
        let padded = format!(
            "deploy [\"--env\", \"staging\", \"{}\", \"--env\", \"production\"]",
            "x".repeat(150)
        );
        let shown = shown_summary(&padded);
        assert!(shown.ends_with("\\\"production\\\"]"), "{shown}");
        assert!(!shown_summary("a\nb").contains('\n'));
    }

    fn req(key: &str) -> ApprovalRequest {
        ApprovalRequest {
            workspace: "dev".into(),
            tool: "token".into(),
            summary: format!("token {key}"),
            key: key.into(),
            rule: "p.toml:1".into(),
            caller_pid: None,
            caller_exe: None,
        }
    }

    async fn wait_pending(a: &Approvals, n: usize) -> Vec<PendingView> {
        loop {
            let p = a.pending();
            if p.len() >= n {
                return p;
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn an_answer_covers_its_request_only() {
        let a = Arc::new(Approvals::new(Some(Duration::from_secs(30))));
        let (a1, a2) = (a.clone(), a.clone());
        let first = tokio::spawn(async move { a1.ask(req("A")).await });
        let second = tokio::spawn(async move { a2.ask(req("B")).await });
        let pending = wait_pending(&a, 2).await;
        let id_a = pending
            .iter()
            .find(|p| p.summary == "token A")
            .map(|p| p.id);
        let id_b = pending
            .iter()
            .find(|p| p.summary == "token B")
            .map(|p| p.id);
        let (Some(id_a), Some(id_b)) = (id_a, id_b) else {
            panic!("{pending:?}")
        };
        assert!(
            a.answer(
                id_a,
                Answer {
                    allow: true,
                    for_ms: None
                }
            )
            .is_ok()
        );
        assert_eq!(first.await.ok(), Some(Ok(())));
        assert!(
            a.answer(
                id_b,
                Answer {
                    allow: false,
                    for_ms: None
                }
            )
            .is_ok()
        );
        assert!(second.await.ok().is_some_and(|r| r.is_err()));
        // No standing grant: A asks again.
        let a3 = a.clone();
        let again = tokio::spawn(async move { a3.ask(req("A")).await });
        let p = wait_pending(&a, 1).await;
        assert!(
            a.answer(
                p[0].id,
                Answer {
                    allow: true,
                    for_ms: Some(600_000)
                }
            )
            .is_ok()
        );
        assert_eq!(again.await.ok(), Some(Ok(())));
        // Now identical requests pass at once, others still ask.
        assert_eq!(a.ask(req("A")).await, Ok(()));
        assert!(
            a.answer(
                999,
                Answer {
                    allow: true,
                    for_ms: None
                }
            )
            .is_err()
        );
        // The same request from another workspace is another request.
        let a4 = a.clone();
        let other = tokio::spawn(async move {
            let mut r = req("A");
            r.workspace = "ci".into();
            a4.ask(r).await
        });
        let p = wait_pending(&a, 1).await;
        assert_eq!(p[0].workspace, "ci");
        let deny = Answer {
            allow: false,
            for_ms: None,
        };
        assert!(a.answer(p[0].id, deny).is_ok());
        assert!(other.await.ok().is_some_and(|r| r.is_err()));
    }

    #[tokio::test]
    async fn unanswered_is_denied() {
        let a = Approvals::new(Some(Duration::from_millis(20)));
        let got = a.ask(req("A")).await;
        assert!(got.is_err_and(|e| e.contains("nobody approved it")));
        assert!(a.pending().is_empty());
    }

    #[tokio::test]
    async fn a_flood_of_prompts_is_capped() {
        let a = Arc::new(Approvals::new(None));
        let mut waiting = Vec::new();
        for i in 0..MAX_PENDING_PER_WORKSPACE {
            let a = a.clone();
            waiting.push(tokio::spawn(
                async move { a.ask(req(&i.to_string())).await },
            ));
        }
        wait_pending(&a, MAX_PENDING_PER_WORKSPACE).await;
        assert!(
            a.ask(req("x"))
                .await
                .is_err_and(|e| e.contains("already wait"))
        );
    }

    #[test]
    fn grant_spans_use_the_one_grammar_within_a_day() {
        assert_eq!(grant_span("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(grant_span("10min"), Ok(Duration::from_secs(600)));
        assert_eq!(grant_span("90"), Ok(Duration::from_secs(90)));
        assert_eq!(grant_span("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(grant_span("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(grant_span("1d"), Ok(MAX_GRANT));
        assert!(grant_span("ten").is_err());
        assert!(grant_span("5d").is_err_and(|e| e.contains("1ms to 1d")));
        assert!(grant_span("0").is_err());
    }

    /// What the user approves must be visible whole: a workspace must not
    /// pad an early argument so that the part that matters falls behind the
    /// cut of the prompt. Shown in full (escaped) up to a bound; longer
    /// requests are refused rather than shown cut.
    #[tokio::test]
    async fn the_prompt_shows_the_whole_request_or_refuses_it() {
        let padded = format!(
            "pr [\"--title\", \"{}\", \"--body\", \"HIDDEN-PART\"]",
            " ".repeat(200)
        );
        assert!(shown_summary(&padded).contains("HIDDEN-PART"));
        assert!(!shown_summary("a\nb").contains('\n'));
        let a = Approvals::new(Some(Duration::from_secs(30)));
        let mut long = req("L");
        long.summary = "x".repeat(MAX_SHOWN_SUMMARY + 1);
        let r = tokio::time::timeout(Duration::from_secs(5), a.ask(long)).await;
        assert!(
            matches!(&r, Ok(Err(why)) if why.contains("too long")),
            "{r:?}"
        );
        assert!(a.pending().is_empty());
    }
}
