//! Brokered git over HTTPS: the workspace's git talks smart HTTP to
//! `$NEXUS_HTTP_URL/_git/HOST/REPO/...`; the laptop sends each request on
//! to `https://HOST/REPO/...` with its own credential (from its own `git
//! credential fill`, the rule's `username` pinning the account) and
//! streams the answer back. The credential never goes back: the
//! workspace's credential headers are dropped, `WWW-Authenticate` is not
//! returned, and an echo of the header is masked.
//!
//! A push (`POST git-receive-pack`) is read up to the end of its command
//! list before a byte of its body goes on: every ref update is decided,
//! and one the policy does not allow refuses the whole push, answered as
//! git's own report (`! [remote rejected] REF (reason)`), so nothing of it
//! reaches the server. LFS's batch API is brokered the same way (an upload
//! needs a push rule: its JSON body is read first); the
//! transfer URLs it hands out go direct.

use std::time::Duration;

use base64::Engine as _;
use nexus_policy::{Action, GitOp, GitRefUpdate, GitRule, Grant, PolicySet, Verdict};
use nexus_protocol::git_http::{Endpoint, GitPath, check_host};
use nexus_protocol::pktline::{Commands, PktError, Progress, PushCommands, pkt_line};
use nexus_protocol::{
    Channel, Credential, ErrorCode, GitService, HttpHeader, HttpRequest, MAX_CHUNK, Reply, Upload,
    parse_credential,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::PushRefused;
use crate::tools::git_credential::run_git;
use crate::tools::http::{Body, Limits, Prepared, Scrub, exchange, forwarded_headers};
use crate::tools::pipeline::{Asked, Scope, Tool, wrong_grant};
use crate::tools::{ToolContext, clip};

/// How long the workspace may take to send a push's command list.
const COMMANDS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one request to the git server may take, body included (a
/// large clone or push streams for a while).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most body bytes of one request (a push's pack).
const MAX_BODY: u64 = 8 << 30;
/// Response headers that carry or ask for a credential: never returned.
const STRIPPED: &[&str] = &["www-authenticate", "authentication-info", "set-cookie"];

/// One request of the workspace's git to a brokered host.
#[derive(Debug)]
pub struct Call<'a> {
    req: &'a HttpRequest,
    /// The checked path, once `ask` parsed it.
    path: Option<GitPath>,
}

impl<'a> Call<'a> {
    /// The request as the shim forwarded it (`name` is the host).
    pub fn new(req: &'a HttpRequest) -> Self {
        Self { req, path: None }
    }
}

impl Tool for Call<'_> {
    fn ask(&mut self, scope: &Scope<'_>, policy: &PolicySet) -> Result<Asked, Reply> {
        let req = self.req;
        let refused = |e: nexus_protocol::git_http::GitPathError| {
            Reply::error(ErrorCode::Denied, e.to_string())
        };
        check_host(&req.name).map_err(refused)?;
        let path = GitPath::parse(&req.method, &req.path).map_err(refused)?;
        // A push's ref updates are decided again once they are read.
        let service = if path.endpoint.is_push() {
            GitService::ReceivePack
        } else {
            GitService::UploadPack
        };
        let asked = super::ask_open(scope, policy, &req.name, &path.repo, service);
        self.path = Some(path);
        asked
    }

    async fn run<S>(
        self,
        scope: &Scope<'_>,
        policy: &PolicySet,
        grant: Option<Grant>,
        stream: &mut S,
    ) -> Option<Reply>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (Some(Grant::Git(rule)), Some(path)) = (grant, self.path) else {
            return wrong_grant();
        };
        let req = self.req;
        let host = req.name.to_ascii_lowercase();
        let label = format!("git host {host}");
        let mut body = Body {
            declared: req.body_len,
            ahead: Vec::new(),
            ended: false,
        };
        // A push's command list is read while the laptop's git finds the
        // credential.
        let prepare = prepare(req, &host, &path, &rule, scope.ctx);
        let (prepared, read) = if path.endpoint == Endpoint::ReceivePack {
            let (p, r) = tokio::join!(prepare, read_commands(req, stream, scope.max_frame));
            (p, Some(r))
        } else {
            (prepare.await, None)
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(reply) => return Some(reply),
        };
        if let Some(read) = read {
            let read = match read {
                Ok(r) => r,
                Err(why) => {
                    // Denied, not a bad request: the pipeline audits it, so
                    // probing with hostile bodies leaves a trace.
                    warn!(tool = "git", git_host = %host, reason = %why, body_len = ?req.body_len, "push refused unread");
                    return Some(Reply::error(ErrorCode::Denied, why));
                }
            };
            let Some(commands) = &read.commands else {
                // git's probe is answered here as its server would (an
                // empty result): nothing of a push reaches the server
                // before its ref updates are decided, not even this.
                return Some(receive_pack_result(Vec::new(), stream).await);
            };
            if let Err(reasons) = decide_push(scope, policy, &host, &path.repo, commands).await {
                return Some(refuse_push(commands, &reasons, stream).await);
            }
            body.ahead = read.ahead;
            body.ended = read.ended;
        }
        if path.endpoint == Endpoint::LfsBatch {
            let data = match read_lfs_batch(stream, scope.max_frame).await {
                Ok(d) => d,
                Err(why) => return Some(Reply::error(ErrorCode::BadRequest, why)),
            };
            // Opened as a fetch: an upload (or anything not plainly a
            // download) writes to the repository's LFS store, so it needs
            // a push rule like any other write.
            if !is_lfs_download(&data) {
                let open = scope.decide(
                    policy,
                    Action::Git {
                        host: &host,
                        repo: &path.repo,
                        op: GitOp::PushOpen,
                    },
                );
                if open.verdict != Verdict::Allow {
                    // Denied: the pipeline audits it.
                    let why = format!("Git LFS upload refused: {}", open.reason);
                    return Some(Reply::error(ErrorCode::Denied, why));
                }
            }
            body.ahead = data;
            body.ended = true;
        }
        let limits = Limits {
            name: &host,
            label,
            max_request_size: MAX_BODY,
            timeout: EXCHANGE_TIMEOUT,
            strip: STRIPPED,
            unauthorized: Some(format!(
                "the server at {host} refused the laptop's credential for {}; \
                 fix the credential on the laptop (its git credential helpers)",
                path.raw_repo
            )),
        };
        exchange(body, &limits, prepared, stream, scope.max_frame)
            .await
            .into_reply()
    }
}

/// The upstream request: the workspace's headers without any credential,
/// the laptop's credential added.
async fn prepare(
    req: &HttpRequest,
    host: &str,
    path: &GitPath,
    rule: &GitRule,
    ctx: &ToolContext,
) -> Result<Prepared, Reply> {
    let internal =
        |what: String| Reply::error(ErrorCode::Internal, format!("git host {host}: {what}"));
    // `req.path` passed `GitPath::parse`: letters, digits and `-_.~+/`
    // and a fixed endpoint, so it cannot leave the host's origin.
    let url = reqwest::Url::parse(&format!("https://{host}{}", req.path))
        .map_err(|e| internal(format!("invalid URL: {e}")))?;
    let (name, port) = host.split_once(':').unwrap_or((host, "443"));
    let port = port.parse::<u16>().ok();
    if url.host_str() != Some(name) || url.port_or_known_default() != port {
        return Err(internal(
            "the request's path would leave the host".to_owned(),
        ));
    }
    let method = reqwest::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| Reply::error(ErrorCode::BadRequest, "invalid HTTP method"))?;
    if path.endpoint == Endpoint::ReceivePack
        && req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("content-encoding")
                && !h.value.eq_ignore_ascii_case(b"identity")
        })
    {
        return Err(Reply::error(
            ErrorCode::BadRequest,
            "a push with a compressed body (Content-Encoding) cannot be read by the laptop, \
             which must see its ref updates; git does not compress pushes, so this client is \
             not git",
        ));
    }
    // Whatever credential the workspace's git sent is dropped with every
    // other credential header; the laptop's goes in `authorization`.
    let mut headers = forwarded_headers(&req.headers, Some("authorization"))?;
    headers.remove(reqwest::header::COOKIE);
    if let Some(len) = req.body_len.filter(|_| method == reqwest::Method::POST) {
        headers.insert(reqwest::header::CONTENT_LENGTH, len.into());
    }
    let token = credential(host, path, rule, ctx).await?;
    // Asked for an uncompressed answer, so the mask can read it.
    headers.insert(
        reqwest::header::ACCEPT_ENCODING,
        reqwest::header::HeaderValue::from_static("identity"),
    );
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Basic {}", token.as_str()))
        .map_err(|_| internal("the credential cannot go in a header".to_owned()))?;
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    let ca_file = rule
        .ca_file
        .as_deref()
        .map(|p| crate::tools::token::expand_home(p, ctx.home()));
    let client = ctx.http.client(ca_file, false).map_err(internal)?;
    Ok(Prepared {
        client,
        method,
        url,
        headers,
        scrub: Scrub::new(token.as_bytes()),
    })
}

/// The laptop's credential for the repository, as the base64 of
/// `USER:PASSWORD` (what goes out, hence what an echo would show).
async fn credential(
    host: &str,
    path: &GitPath,
    rule: &GitRule,
    ctx: &ToolContext,
) -> Result<Zeroizing<String>, Reply> {
    let ask = Credential {
        protocol: Some("https".to_owned()),
        host: Some(host.to_owned()),
        path: Some(path.raw_repo.clone()),
        username: rule.username.clone(),
        ..Credential::default()
    };
    let out = run_git("fill", &ask, ctx).await?;
    let missing = |why: &str| {
        Reply::error(
            ErrorCode::Missing,
            format!("the laptop's git has no usable credential for https://{host}/: {why}"),
        )
    };
    let got = parse_credential(&out).map_err(|_| missing("its answer could not be read"))?;
    let (Some(user), Some(password)) = (got.username.as_deref(), got.password.as_ref()) else {
        return Err(missing(
            "no username and password; store one there (run git fetch once on the laptop)",
        ));
    };
    if rule.username.as_deref().is_some_and(|u| u != user) {
        // A helper that answers for another account than the rule names.
        return Err(missing(
            "its helper answered for another account than the rule's username",
        ));
    }
    let mut pair = Zeroizing::new(Vec::with_capacity(user.len() + 1 + password.expose().len()));
    pair.extend_from_slice(user.as_bytes());
    pair.push(b':');
    pair.extend_from_slice(password.expose());
    Ok(Zeroizing::new(
        base64::engine::general_purpose::STANDARD.encode(&*pair),
    ))
}

/// The start of a push's body, read before any of it goes on.
struct Read {
    /// The ref updates; `None` for git's probe (see [`PROBE`]).
    commands: Option<Commands>,
    /// Every body byte read so far, to send first once allowed.
    ahead: Vec<u8>,
    /// Whether the body's end was read too.
    ended: bool,
}

/// The whole body of the request git sends before a push too large for
/// one buffer, to settle authentication before it streams: a flush alone,
/// which updates nothing (its answer only needs a 200).
const PROBE: &[u8] = b"0000";

/// Reads a push's command list from the upload frames.
async fn read_commands<S: AsyncRead + Unpin>(
    req: &HttpRequest,
    stream: &mut S,
    max_frame: usize,
) -> Result<Read, String> {
    let max_frame = max_frame.max(MAX_CHUNK + 64);
    let mut reader = PushCommands::new();
    let mut ahead = Vec::new();
    let read = async {
        loop {
            let frame: Upload = nexus_transport::recv(&mut *stream, max_frame)
                .await
                .map_err(|e| format!("the push's body broke off: {e}"))?;
            let Upload::Data(data) = frame else {
                return Err(
                    "the push's body ended before its command list did (no flush-pkt)".to_owned(),
                );
            };
            let progress = reader.feed(&data);
            ahead.extend_from_slice(&data);
            match progress {
                Ok(Progress::NeedMore) => {}
                Ok(Progress::Done(commands)) => return Ok(Some(commands)),
                Err(PktError::Empty) if ahead == PROBE && req.body_len == Some(4) => {
                    return Ok(None);
                }
                Err(e) => return Err(format!("push refused: {e}")),
            }
        }
    };
    let commands = tokio::time::timeout(COMMANDS_TIMEOUT, read)
        .await
        .map_err(|_| {
            format!(
                "push refused: its command list did not end within {}s",
                COMMANDS_TIMEOUT.as_secs()
            )
        })??;
    let ended = req.body_len.is_some_and(|n| n == ahead.len() as u64);
    if ended {
        // The end frame follows the last data at once: read it, so the
        // exchange does not wait for it.
        let end: Result<Upload, _> = nexus_transport::recv(&mut *stream, max_frame).await;
        if !matches!(end, Ok(Upload::End)) {
            return Err("the push's body is longer than its Content-Length".to_owned());
        }
    }
    Ok(Read {
        commands,
        ahead,
        ended,
    })
}

/// Most bytes of an LFS batch request (git-lfs sends 100 objects, a few
/// KiB, per request).
const MAX_LFS_BATCH: usize = 1 << 20;

/// Reads an LFS batch request's whole body, which decides whether it is a
/// fetch or a write.
async fn read_lfs_batch<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_frame: usize,
) -> Result<Vec<u8>, String> {
    let max_frame = max_frame.max(MAX_CHUNK + 64);
    let read = async {
        let mut data = Vec::new();
        loop {
            let frame: Upload = nexus_transport::recv(&mut *stream, max_frame)
                .await
                .map_err(|e| format!("the LFS batch request broke off: {e}"))?;
            match frame {
                Upload::Data(piece) if data.len() + piece.len() <= MAX_LFS_BATCH => {
                    data.extend_from_slice(&piece);
                }
                Upload::Data(_) => {
                    return Err(format!(
                        "an LFS batch request over {MAX_LFS_BATCH} bytes is refused"
                    ));
                }
                Upload::End => return Ok(data),
            }
        }
    };
    tokio::time::timeout(COMMANDS_TIMEOUT, read)
        .await
        .map_err(|_| {
            format!(
                "the LFS batch request did not end within {}s",
                COMMANDS_TIMEOUT.as_secs()
            )
        })?
}

/// Whether an LFS batch request is plainly a download: a JSON object whose
/// only `operation` key is `"download"`. Keys are compared without case and
/// every duplicate counts, as some servers (Go's `encoding/json`) match
/// `OPERATION` too and keep the last.
fn is_lfs_download(body: &[u8]) -> bool {
    use serde::de::{Deserializer as _, MapAccess, Visitor};

    struct Operations;
    impl<'de> Visitor<'de> for Operations {
        type Value = Vec<Option<String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an LFS batch request object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                let value: serde_json::Value = map.next_value()?;
                if key.eq_ignore_ascii_case("operation") {
                    found.push(value.as_str().map(str::to_owned));
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let ops = de.deserialize_map(Operations).and_then(|ops| {
        de.end()?;
        Ok(ops)
    });
    matches!(ops.as_deref(), Ok([Some(op)]) if op == "download")
}

/// Decides every ref update of the push at once (policy, limits,
/// approval, audit): `Err` holds, per update, why it is refused (`None`:
/// allowed alone, refused with the rest).
async fn decide_push(
    scope: &Scope<'_>,
    policy: &PolicySet,
    host: &str,
    repo: &str,
    commands: &Commands,
) -> Result<(), Vec<Option<String>>> {
    let whole = super::decide_push(scope, policy, host, repo, &commands.updates).await;
    let Err(PushRefused(why)) = whole else {
        info!(tool = "git", git_host = %host, repo = %clip(repo), updates = commands.updates.len(), "push allowed");
        return Ok(());
    };
    // Each update alone, for git's report: which ones the policy refuses
    // (a decision only: the push's one audit line is written above).
    let mut reasons: Vec<Option<String>> = commands
        .updates
        .iter()
        .map(|u| {
            let update = [GitRefUpdate {
                name: u.name.clone(),
                delete: u.is_delete(),
            }];
            let alone = scope.decide(
                policy,
                Action::Git {
                    host,
                    repo,
                    op: GitOp::Push(&update),
                },
            );
            (alone.verdict != Verdict::Allow).then(|| alone.reason.clone())
        })
        .collect();
    if reasons.iter().all(Option::is_none) {
        // Refused as a whole only (an approval said no, a rate limit): the
        // same reason for every update.
        reasons = vec![Some(why); commands.updates.len()];
    }
    Err(reasons)
}

/// Answers a refused push as its server would: report-status with `ng`
/// for every ref update, which git prints as `! [remote rejected] REF
/// (REASON)`. Inside side-band-64k when the client asked for it.
async fn refuse_push<S: AsyncWrite + Unpin>(
    commands: &Commands,
    reasons: &[Option<String>],
    stream: &mut S,
) -> Reply {
    if !commands
        .capabilities
        .iter()
        .any(|c| c == "report-status" || c == "report-status-v2")
    {
        let why = reasons.iter().flatten().next().cloned().unwrap_or_default();
        return Reply::error(
            ErrorCode::Denied,
            format!("denied by the laptop's policy: {why}"),
        );
    }
    let mut report = pkt_line(b"unpack ok\n");
    for (update, reason) in commands.updates.iter().zip(reasons) {
        let reason = match reason {
            Some(r) => format!("nexus: {r}"),
            None => {
                "nexus: refused with the rest of this push (a push is allowed whole or not at all)"
                    .to_owned()
            }
        };
        let line = format!("ng {} {}\n", update.name, one_line(&reason));
        report.extend(pkt_line(line.as_bytes()));
    }
    report.extend_from_slice(b"0000");
    let sideband = commands
        .capabilities
        .iter()
        .any(|c| c == "side-band-64k" || c == "side-band");
    let body = if sideband {
        let max = if commands.capabilities.iter().any(|c| c == "side-band-64k") {
            65515
        } else {
            995
        };
        let mut out = Vec::new();
        for piece in report.chunks(max - 1) {
            let mut payload = vec![1u8];
            payload.extend_from_slice(piece);
            out.extend(pkt_line(&payload));
        }
        out.extend_from_slice(b"0000");
        out
    } else {
        report
    };
    receive_pack_result(body, stream).await
}

/// Answers a `git-receive-pack` request from the laptop with `body`.
async fn receive_pack_result<S: AsyncWrite + Unpin>(body: Vec<u8>, stream: &mut S) -> Reply {
    let header = |name: &str, value: &str| HttpHeader {
        name: name.to_owned(),
        value: value.as_bytes().to_vec(),
    };
    let mut frames = nexus_protocol::encode_frame(&Reply::HttpHead {
        status: 200,
        headers: vec![
            header("content-type", "application/x-git-receive-pack-result"),
            header("cache-control", "no-cache"),
            header("content-length", &body.len().to_string()),
        ],
    });
    for piece in body.chunks(MAX_CHUNK) {
        frames.extend(nexus_protocol::encode_frame(&Reply::Chunk {
            channel: Channel::Data,
            data: piece.to_vec(),
        }));
    }
    if stream.write_all(&frames).await.is_err() || stream.flush().await.is_err() {
        warn!(
            tool = "git",
            "the workspace went away before the laptop's answer"
        );
    }
    Reply::Done
}

/// A reason on one report line: no line breaks, bounded.
fn one_line(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(400)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const Z: &str = "0000000000000000000000000000000000000000";

    /// Only a plain download is a fetch; an upload, or anything a server
    /// could read as one, needs a push rule.
    #[test]
    fn lfs_batch_operations() {
        let download = br#"{"operation":"download","transfers":["basic"],"objects":[]}"#;
        assert!(is_lfs_download(download));
        for write in [
            &br#"{"operation":"upload","objects":[]}"#[..],
            br#"{"operation":"download","OPERATION":"upload"}"#,
            br#"{"operation":"download","operation":"upload"}"#,
            br#"{"op\u0065ration":"upload","operation":"download"}"#,
            br#"{"operation":["download"]}"#,
            br#"{"objects":[]}"#,
            br#"{"operation":"download"} {"operation":"upload"}"#,
            b"\x1f\x8b\x08\x00",
            b"",
        ] {
            assert!(
                !is_lfs_download(write),
                "{}",
                String::from_utf8_lossy(write)
            );
        }
    }

    /// A refusal is git's own report, inside side-band-64k when asked.
    #[tokio::test]
    async fn a_refused_push_is_reported_per_ref() {
        let commands = Commands {
            updates: vec![
                nexus_protocol::pktline::RefUpdate {
                    old: Z.to_owned(),
                    new: A.to_owned(),
                    name: "refs/heads/agent/x".to_owned(),
                },
                nexus_protocol::pktline::RefUpdate {
                    old: A.to_owned(),
                    new: A.to_owned(),
                    name: "refs/heads/main".to_owned(),
                },
            ],
            capabilities: vec!["report-status".to_owned(), "side-band-64k".to_owned()],
            len: 0,
        };
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        let reasons = [
            None,
            Some("ref main is not in push\nsecond line".to_owned()),
        ];
        let end = refuse_push(&commands, &reasons, &mut ours).await;
        assert_eq!(end, Reply::Done);
        drop(ours);
        let head: Reply = nexus_transport::recv(&mut theirs, 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(head, Reply::HttpHead { status: 200, .. }));
        let Ok(Reply::Chunk { data, .. }) = nexus_transport::recv(&mut theirs, 1 << 20).await
        else {
            panic!("no body");
        };
        let text = String::from_utf8_lossy(&data);
        assert!(data[4] == 1 && text.ends_with("0000"), "{text}");
        assert!(text.contains("unpack ok\n"), "{text}");
        assert!(
            text.contains("ng refs/heads/main nexus: ref main is not in push second line\n"),
            "{text}"
        );
        assert!(
            text.contains("ng refs/heads/agent/x nexus: refused with the rest"),
            "{text}"
        );
    }
}
