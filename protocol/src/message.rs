//! Typed messages. Every enum is externally tagged, every struct uses named
//! fields, so a peer that sends an unknown variant gets a clean decode error.

use serde::{Deserialize, Serialize};

use crate::{Secret, VersionRange};

/// First frame of a tunnel, proxy → shim, inside TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientHello {
    /// Versions the proxy speaks.
    pub versions: VersionRange,
    /// The one-time pairing token, only when pairing a new laptop.
    pub pairing_token: Option<Secret>,
    /// Software name and version, for logs.
    pub software: String,
}

/// Answer to [`ClientHello`], shim → proxy. After `Accepted`, yamux starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ServerHello {
    /// The laptop is paired (now or before); yamux follows.
    Accepted {
        /// Negotiated version.
        version: u16,
        /// Whether this connection just paired the laptop.
        paired_now: bool,
        /// Software name and version, for logs.
        software: String,
    },
    /// The shim refuses; the connection closes after this frame.
    Refused {
        /// Why, for the proxy's error message.
        reason: Refusal,
        /// Versions the shim speaks.
        versions: VersionRange,
    },
}

/// Why a shim refused a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// No common protocol version.
    Version,
    /// The pairing token is wrong, used, or expired.
    PairingToken,
    /// The client certificate is not the paired laptop's and no token came with it.
    NotPaired,
}

/// What the workspace reports about the local process behind a call.
///
/// Reported by the **untrusted** side: policy may use it to narrow (deny),
/// never to grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerContext {
    /// Peer uid from `SO_PEERCRED`.
    pub uid: Option<u32>,
    /// Peer gid from `SO_PEERCRED`.
    pub gid: Option<u32>,
    /// Peer pid from `SO_PEERCRED`.
    pub pid: Option<u32>,
    /// `/proc/PID/exe` of the peer, when readable.
    pub exe: Option<String>,
    /// `/proc/PID/cwd` of the peer, when readable.
    pub cwd: Option<String>,
}

/// One forwarded session: the first frame on a yamux stream, shim → proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    /// Who asked, as the workspace saw it.
    pub caller: CallerContext,
    /// What was asked.
    pub request: Request,
    /// Set by the shim on a read it may send again on its next link if
    /// this one dies before the answer ([`Request::is_retryable`]): the
    /// laptop decides and runs both attempts once. Absent on other calls
    /// (and from older shims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<CallKey>,
    /// Keys of earlier calls on this link whose answer the shim has read
    /// and confirms here rather than on their own streams
    /// ([`CallKey::later`]): the laptop need not keep those answers for a
    /// second attempt. It reads at most [`MAX_RECEIVED`] of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub received: Vec<u64>,
}

/// Most confirmations one [`Call`] carries (more are ignored): about
/// 600 bytes, so that they never push a call past a small frame limit.
pub const MAX_RECEIVED: usize = 64;

/// How long after its first attempt a retryable call may be sent again;
/// the laptop keeps an answer it could not deliver at least this long.
pub const RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

/// The byte a shim writes on a keyed, streamed call's stream once it has
/// read the final reply (then it closes its side): the laptop's proof that
/// the answer arrived, so it need not keep it for a second attempt. A bare
/// end of stream proves nothing: a dying link ends every stream too. A
/// call answered by one reply is confirmed later instead
/// ([`CallKey::later`]).
pub const ANSWER_RECEIVED: u8 = 0x06;

/// The shim's name for one retryable call, the same on both attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallKey {
    /// Random, chosen by the shim (the laptop keeps keys per workspace).
    pub id: u64,
    /// Whether this is the second attempt.
    pub retry: bool,
    /// Whether the shim confirms the answer in the `received` of a later
    /// [`Call`] on the link instead of on this call's stream, whose side it
    /// closed with the request: one frame less each way for a read answered
    /// by one reply (not [`Request::is_streaming`]). Absent from older
    /// shims, which confirm with [`ANSWER_RECEIVED`].
    #[serde(default)]
    pub later: bool,
}

/// A request a local caller makes of the laptop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The value of a named token.
    Token {
        /// Token name as declared in the laptop's policy.
        name: String,
    },
    /// The laptop agent's identities that the policy lets this workspace see.
    SshIdentities,
    /// The identities as [`Request::SshIdentities`], listed by the laptop
    /// agent on a connection bound as the workspace's agent connection is,
    /// so that keys added with `ssh-add -h` are listed only where they may
    /// be used.
    SshIdentitiesBound {
        /// Bodies of the `session-bind@openssh.com` extensions the shim
        /// acknowledged on the agent connection, in order.
        #[serde(with = "serde_bytes_vec")]
        binds: Vec<Vec<u8>>,
    },
    /// An ssh-agent sign request, with the session binds the shim
    /// acknowledged on the same agent connection. The laptop verifies bind
    /// and sign together before anything reaches its agent.
    SshSign {
        /// The shim's number for the agent connection: reported, not trusted,
        /// so it only correlates logs (replay is judged by session and key).
        connection: u64,
        /// Bodies of the `session-bind@openssh.com` extensions, in order.
        #[serde(with = "serde_bytes_vec")]
        binds: Vec<Vec<u8>>,
        /// The `SSH_AGENTC_SIGN_REQUEST` body (without the type byte).
        #[serde(with = "serde_bytes")]
        request: Vec<u8>,
    },
    /// Host keys pinned for the hosts the policy allows, for the
    /// workspace's `known_hosts`.
    SshKnownHosts,
    /// A git credential helper call from the workspace's git.
    GitCredential {
        /// `get`, `store` or `erase`.
        operation: GitOperation,
        /// The description git gave the helper, re-serialized by the shim
        /// after a strict parse (see [`crate::parse_credential`]); parsed
        /// again on the laptop. May hold a password (`store`, `erase`).
        input: Secret,
    },
    /// The custom laptop tools this workspace may run.
    ToolList,
    /// The tokens this workspace may get whose rule offers them to MCP
    /// clients (`mcp = true`), for `nexus-shim mcp`.
    McpTokens,
    /// Run a custom laptop tool; answered by [`Reply::Chunk`] frames
    /// (stdout, stderr) as the tool writes, then [`Reply::Exit`].
    ToolRun {
        /// Tool name, as declared in the laptop's policy.
        name: String,
        /// Arguments after the declared command (matched by the policy).
        args: Vec<String>,
    },
    /// One allowlisted laptop file; answered by [`Reply::FileStart`],
    /// [`Reply::Chunk`] frames of data, then [`Reply::Done`].
    FileGet {
        /// `~/x`, `$HOME/x` or an absolute path (as the workspace wrote it).
        path: String,
    },
    /// A named set of laptop files: for each file a [`Reply::FileStart`] and
    /// its data chunks, then [`Reply::Done`].
    FileSync {
        /// Set name, as declared in the laptop's policy.
        set: String,
    },
    /// The HTTP APIs (`[http.NAME]`) this workspace may call.
    HttpList,
    /// An HTTP request for the upstream of `[http.NAME]`. The request body
    /// follows on the same stream as [`Upload`] frames (always ending with
    /// [`Upload::End`]); the answer is [`Reply::HttpHead`], [`Reply::Chunk`]
    /// frames of body data, then [`Reply::Done`].
    Http(HttpRequest),
    /// Brokered git over HTTPS: `$NEXUS_HTTP_URL/_git/HOST/REPO/...`, with
    /// `name` the host (`HOST` or `HOST:PORT`) and `path` what follows it
    /// (see [`crate::git_http::GitPath`]). Body and answer as for
    /// [`Request::Http`]; the laptop adds its own credential.
    GitHttp(HttpRequest),
    /// The hosts the laptop brokers git for (`[[git.allow]]`), so that
    /// `nexus-shim env` can point the workspace's git at it; answered by
    /// [`Reply::GitHosts`].
    GitHosts,
    /// A git command over SSH, run by the laptop with its own `ssh`
    /// (`ssh HOST git-upload-pack|git-receive-pack 'REPO'`). What git
    /// writes follows as [`Upload`] frames (ending with [`Upload::End`]);
    /// the answer is [`Reply::Chunk`] frames ([`Channel::Stdout`] for the
    /// server's protocol bytes, [`Channel::Stderr`] for its messages),
    /// then [`Reply::Exit`].
    GitSsh {
        /// Host name as git named it (`HOST`, never `USER@HOST`).
        host: String,
        /// Port, when git was given one (`ssh://HOST:PORT/...`).
        port: Option<u16>,
        /// Which git service.
        service: GitService,
        /// Repository path as git sent it (`acme/app.git`, `/acme/app.git`).
        repo: String,
    },
}

/// The first path segment of `$NEXUS_HTTP_URL` under which the workspace's
/// git reaches brokered HTTPS hosts (`$NEXUS_HTTP_URL/_git/HOST/REPO...`):
/// `[http.NAME]` names start with a letter or digit, so none can take it.
pub const GIT_HTTP_PREFIX: &str = "_git";

/// A git service a brokered connection runs on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GitService {
    /// `git-upload-pack`: fetch and clone.
    UploadPack,
    /// `git-receive-pack`: push.
    ReceivePack,
}

impl GitService {
    /// The server command (`git-upload-pack`, `git-receive-pack`).
    #[must_use]
    pub fn command(self) -> &'static str {
        match self {
            Self::UploadPack => "git-upload-pack",
            Self::ReceivePack => "git-receive-pack",
        }
    }

    /// The service named by a server command, if it is one of the two.
    #[must_use]
    pub fn from_command(command: &str) -> Option<Self> {
        match command {
            "git-upload-pack" => Some(Self::UploadPack),
            "git-receive-pack" => Some(Self::ReceivePack),
            _ => None,
        }
    }
}

/// What the workspace asked of an `[http.NAME]` API: never a host, only a
/// path below the upstream the laptop's policy declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// The API's name (the first path segment after `$NEXUS_HTTP_URL`).
    pub name: String,
    /// Method, as sent (`GET`, `POST`...).
    pub method: String,
    /// The rest of the path after `/NAME` (empty or starting with `/`),
    /// with the query string if any.
    pub path: String,
    /// Request headers, hop-by-hop ones already removed by the shim.
    pub headers: Vec<HttpHeader>,
    /// `Content-Length` when the client gave one (else the body is
    /// delimited by [`Upload::End`]).
    pub body_len: Option<u64>,
}

/// One HTTP header. Values are bytes: HTTP allows non-UTF-8 octets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHeader {
    /// Header name (lowercase).
    pub name: String,
    /// Header value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// A frame of a request body, shim → proxy, after an HTTP [`Call`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Upload {
    /// Body bytes (at most [`MAX_CHUNK`]).
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The body is complete.
    End,
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), or that the
/// receiving side sets itself (`host`): never relayed in either direction,
/// by the shim or the laptop. `content-length` is not here: the laptop
/// keeps a declared length.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The header names a `Connection` header lists (lowercase): they belong
/// to the same hop and are dropped with it. `headers` is (name, value).
pub fn connection_listed<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<String> {
    headers
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// An `[http.NAME]` API as `nexus-shim http list` and MCP show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpApi {
    /// API name: `$NEXUS_HTTP_URL/NAME/...`.
    pub name: String,
    /// What it is (from the policy).
    pub description: String,
    /// The upstream origin and base path the laptop sends requests to.
    pub upstream: String,
    /// Methods allowed (empty: any).
    pub methods: Vec<String>,
    /// Path patterns allowed (empty: any).
    pub paths: Vec<String>,
    /// Whether MCP clients are offered it as a tool.
    pub mcp: bool,
    /// Whether each request needs the laptop user's approval.
    pub approve: bool,
}

/// What a git credential helper is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GitOperation {
    /// `get`: find a credential (the laptop runs `git credential fill`).
    Get,
    /// `store`: git used the credential successfully (`git credential approve`).
    Store,
    /// `erase`: the credential was rejected (`git credential reject`).
    Erase,
}

impl GitOperation {
    /// The helper protocol's name (`get`, `store`, `erase`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Store => "store",
            Self::Erase => "erase",
        }
    }
}

/// A custom tool as `tool list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// Tool name.
    pub name: String,
    /// What it does (from the policy).
    pub description: String,
    /// The argument patterns the policy accepts after the command.
    pub args: Vec<String>,
    /// Whether each run needs the laptop user's approval.
    pub approve: bool,
}

/// Which output a [`Reply::Chunk`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// A tool's standard output.
    Stdout,
    /// A tool's standard error.
    Stderr,
    /// File contents.
    Data,
}

impl Request {
    /// The policy section (and laptop tool) that answers this request.
    #[must_use]
    pub fn section(&self) -> crate::Section {
        use crate::Section;
        match self {
            Self::Token { .. } | Self::McpTokens => Section::Tokens,
            Self::SshIdentities
            | Self::SshIdentitiesBound { .. }
            | Self::SshSign { .. }
            | Self::SshKnownHosts => Section::Ssh,
            Self::GitCredential { .. } => Section::GitCredential,
            Self::ToolList | Self::ToolRun { .. } => Section::Tools,
            Self::FileGet { .. } | Self::FileSync { .. } => Section::Files,
            Self::HttpList | Self::Http(_) => Section::Http,
            Self::GitHosts | Self::GitSsh { .. } | Self::GitHttp(_) => Section::Git,
        }
    }

    /// Tool name, for logs and policy: [`crate::Section::tool_name`].
    #[must_use]
    pub fn tool(&self) -> &'static str {
        self.section().tool_name()
    }

    /// Whether the call only reads, so that a shim whose link died before
    /// any byte of the answer reached its caller may send it again (with
    /// the same [`CallKey`]): token values and names, the identity list,
    /// pinned host keys, `git credential get`, the tool and API lists,
    /// `file get`, and an API's `GET` or `HEAD` without a body.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        if let Self::Http(req) = self {
            return matches!(req.method.as_str(), "GET" | "HEAD") && req.body_len == Some(0);
        }
        matches!(
            self,
            Self::Token { .. }
                | Self::FileGet { .. }
                | Self::McpTokens
                | Self::SshIdentities
                | Self::SshIdentitiesBound { .. }
                | Self::SshKnownHosts
                | Self::GitCredential {
                    operation: GitOperation::Get,
                    ..
                }
                | Self::ToolList
                | Self::HttpList
        )
    }

    /// Whether the answer is a stream of frames (tool output, file data)
    /// rather than one reply.
    #[must_use]
    pub fn is_streaming(&self) -> bool {
        matches!(
            self,
            Self::ToolRun { .. }
                | Self::FileGet { .. }
                | Self::FileSync { .. }
                | Self::Http(_)
                | Self::GitHttp(_)
                | Self::GitSsh { .. }
        )
    }
}

/// A public key the workspace may list (public data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshIdentity {
    /// The key blob in SSH wire encoding.
    #[serde(with = "serde_bytes")]
    pub blob: Vec<u8>,
    /// The agent's comment for the key.
    pub comment: String,
}

mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub(super) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for b in v {
            seq.serialize_element(serde_bytes::Bytes::new(b))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<serde_bytes::ByteBuf> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(serde_bytes::ByteBuf::into_vec).collect())
    }
}

/// The MessagePack start of a [`Reply::Chunk`] body: a map of one entry
/// keyed `Chunk` (named, externally tagged encoding).
const CHUNK_TAG: &[u8] = &[0x81, 0xa5, b'C', b'h', b'u', b'n', b'k'];
/// What turns a [`Reply`] body into a [`LocalReply::Reply`] body.
const LOCAL_REPLY_TAG: &[u8] = &[0x81, 0xa5, b'R', b'e', b'p', b'l', b'y'];

/// For the shim's relay of bulk data: when `body` (one laptop frame) is a
/// [`Reply::Chunk`], what goes before it to make the whole `shim.sock`
/// frame that carries it as [`LocalReply::Reply`] (its length and the
/// wrapper's tag), so the data is relayed without being decoded,
/// re-encoded or even copied (the two parts go out in one vectored
/// write); `None` for any other body (decode that one) or when the frame
/// would exceed `max`. The caller decodes what it receives in full, as
/// always.
#[must_use]
pub fn chunk_local_prefix(body: &[u8], max: usize) -> Option<Vec<u8>> {
    if !body.starts_with(CHUNK_TAG) {
        return None;
    }
    let len = LOCAL_REPLY_TAG.len() + body.len();
    if len > max {
        return None;
    }
    let header = u32::try_from(len).ok()?.to_be_bytes();
    let mut prefix = Vec::with_capacity(header.len() + LOCAL_REPLY_TAG.len());
    prefix.extend_from_slice(&header);
    prefix.extend_from_slice(LOCAL_REPLY_TAG);
    Some(prefix)
}

/// The frame of a [`Reply::Chunk`] of `len` bytes on `channel`, without the
/// bytes: what goes before them, so a sender can read data into a buffer
/// right behind it and send both with no copy (`encode_frame` would copy
/// the data once more). `prefix + data` is exactly
/// `encode_frame(&Reply::Chunk { channel, data })`.
#[must_use]
pub fn chunk_frame_prefix(channel: Channel, len: usize) -> Vec<u8> {
    // The empty chunk ends with its data's header, `bin8` of length 0;
    // the real length may need a longer one.
    let mut out = crate::frame::encode_frame(&Reply::Chunk {
        channel,
        data: Vec::new(),
    });
    out.truncate(out.len().saturating_sub(2));
    match (u8::try_from(len), u16::try_from(len), u32::try_from(len)) {
        (Ok(n), _, _) => out.extend_from_slice(&[0xc4, n]),
        (_, Ok(n), _) => {
            out.push(0xc5);
            out.extend_from_slice(&n.to_be_bytes());
        }
        (_, _, n) => {
            out.push(0xc6);
            out.extend_from_slice(&n.unwrap_or(u32::MAX).to_be_bytes());
        }
    }
    let body = (out.len() - crate::HEADER_LEN).saturating_add(len);
    let body = u32::try_from(body).unwrap_or(u32::MAX);
    out[..crate::HEADER_LEN].copy_from_slice(&body.to_be_bytes());
    out
}

/// For the daemon's [`LocalOp::ForwardInto`]: when `body` (one laptop
/// frame) is a [`Reply::Chunk`], its channel and where its data lies in
/// `body`, found without copying the data; `None` for any other body.
#[must_use]
pub fn chunk_data(body: &[u8]) -> Option<(Channel, std::ops::Range<usize>)> {
    #[derive(Deserialize)]
    enum ChunkOnly<'a> {
        Chunk {
            channel: Channel,
            #[serde(borrow, with = "serde_bytes")]
            data: &'a [u8],
        },
    }
    if !body.starts_with(CHUNK_TAG) {
        return None;
    }
    let ChunkOnly::Chunk { channel, data } =
        crate::frame::decode_borrowed::<ChunkOnly<'_>>(body).ok()?;
    // `data` borrows from `body`: its place is its offset in it.
    let start = (data.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(data.len()).filter(|&e| e <= body.len())?;
    Some((channel, start..end))
}

/// Largest data chunk in one [`Reply::Chunk`]: well under the frame limit,
/// large enough that framing costs little.
pub const MAX_CHUNK: usize = 256 << 10;

/// A frame of the answer, proxy → shim. A stream carries replies until the
/// first final one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A token's value.
    Token(Secret),
    /// Answer to [`Request::SshIdentities`] and
    /// [`Request::SshIdentitiesBound`].
    SshIdentities(Vec<SshIdentity>),
    /// Answer to [`Request::SshSign`]: the signature in SSH wire encoding.
    SshSignature(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Answer to [`Request::SshKnownHosts`]: `known_hosts` lines.
    SshKnownHosts(Vec<String>),
    /// Answer to [`Request::GitCredential`]: what the helper prints to git
    /// (`quit=1` when the laptop refused, nothing for `store`/`erase`).
    GitCredential(Secret),
    /// Answer to [`Request::ToolList`].
    Tools(Vec<ToolInfo>),
    /// Answer to [`Request::McpTokens`]: token names.
    McpTokens(Vec<String>),
    /// Answer to [`Request::HttpList`].
    HttpApis(Vec<HttpApi>),
    /// Answer to [`Request::GitHosts`]: `HOST` or `HOST:PORT` of every
    /// host the laptop brokers git for, sorted.
    GitHosts(Vec<String>),
    /// Answer to [`Request::GitSsh`] when the laptop brokers no git for
    /// that host: the workspace's own `ssh` may try it (final).
    GitNotBrokered,
    /// The upstream's response status and headers (not final); the body
    /// follows as [`Channel::Data`] chunks, then [`Reply::Done`].
    HttpHead {
        /// Status code.
        status: u16,
        /// Response headers, hop-by-hop ones removed.
        headers: Vec<HttpHeader>,
    },
    /// A piece of a streamed answer (not final). At most [`MAX_CHUNK`] bytes.
    Chunk {
        /// Which output.
        channel: Channel,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A file of a streamed answer starts (not final); its data follows as
    /// [`Channel::Data`] chunks.
    FileStart {
        /// The path as the workspace should name it (`~/x`, or absolute).
        path: String,
        /// Size in bytes, as the laptop read it.
        size: u64,
        /// Permission bits (`0o644`), without set-id bits.
        mode: u32,
    },
    /// A tool run ended with this exit code (final; 128+N for signal N).
    Exit(i32),
    /// A streamed answer is complete (final).
    Done,
    /// The call failed; see the code.
    Error(ErrorReply),
}

impl Reply {
    /// Whether this frame ends the session.
    #[must_use]
    pub fn is_final(&self) -> bool {
        match self {
            Self::Token(_)
            | Self::SshIdentities(_)
            | Self::SshSignature(_)
            | Self::SshKnownHosts(_)
            | Self::GitCredential(_)
            | Self::Tools(_)
            | Self::McpTokens(_)
            | Self::HttpApis(_)
            | Self::GitHosts(_)
            | Self::GitNotBrokered
            | Self::Exit(_)
            | Self::Done
            | Self::Error(_) => true,
            Self::Chunk { .. } | Self::FileStart { .. } | Self::HttpHead { .. } => false,
        }
    }

    /// Shorthand for an error reply.
    #[must_use]
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error(ErrorReply {
            code,
            message: message.into(),
            retry_after_ms: None,
        })
    }

    /// A denial because a rate limit is spent, with when to try again (the
    /// HTTP endpoint answers 429 with `Retry-After`, which SDKs honour).
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self::Error(ErrorReply {
            code: ErrorCode::Denied,
            message: message.into(),
            retry_after_ms: Some(
                u64::try_from(retry_after.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
        })
    }
}

/// A failed call, with a one-line message that says what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Category, which fixes the CLI exit code.
    pub code: ErrorCode,
    /// One line for the user; never contains a secret.
    pub message: String,
    /// Set when a rate limit refused the call: when a retry may succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// Failure categories with stable CLI exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Denied by policy, undeclared, rate-limited or not approved (exit 3).
    Denied,
    /// Allowed, but absent at the laptop source (exit 5).
    Missing,
    /// No laptop linked within the wait (exit 4).
    NotConnected,
    /// The request was malformed or unsupported (exit 1).
    BadRequest,
    /// Anything else (exit 1).
    Internal,
}

impl ErrorCode {
    /// The shim CLI exit code for this failure.
    #[must_use]
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Denied => 3,
            Self::NotConnected => 4,
            Self::Missing => 5,
            Self::BadRequest | Self::Internal => 1,
        }
    }
}

/// A local caller's request on `shim.sock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalRequest {
    /// How long to hold the call while no laptop is linked (0: fail at once).
    pub wait_ms: u64,
    /// What to do.
    pub op: LocalOp,
}

/// Operations on `shim.sock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LocalOp {
    /// Daemon and link state, answered locally.
    Status,
    /// The pairing URI, optionally with a freshly issued token.
    PairingUri {
        /// Issue a new token (and so a new URI) first.
        rotate: bool,
    },
    /// A request forwarded to the laptop.
    Forward(Request),
    /// A file request ([`Request::FileGet`], [`Request::FileSync`])
    /// forwarded to the laptop, whose file data the daemon writes straight
    /// into descriptors the caller passes, as OpenSSH's multiplexing client
    /// passes its stdio to the master: the bytes skip a copy and a process.
    /// After relaying each [`Reply::FileStart`], the daemon reads one byte
    /// that carries the file's descriptor (`SCM_RIGHTS`), writes the file's
    /// data into it, and sends [`LocalReply::Written`] before the next
    /// `FileStart` or the final reply. The caller sends nothing else.
    ForwardInto(Request),
}

/// Answers on `shim.sock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LocalReply {
    /// Answer to [`LocalOp::Status`].
    Status(StatusInfo),
    /// Answer to [`LocalOp::PairingUri`].
    Pairing(PairingInfo),
    /// A reply frame relayed from the laptop (or a local error).
    Reply(Reply),
    /// For [`LocalOp::ForwardInto`]: the file's data is in the caller's
    /// descriptor (closed by the daemon), `bytes` of it; or writing it
    /// failed after `bytes`, and the call ends here.
    Written {
        /// Bytes written into the descriptor.
        bytes: u64,
        /// Why writing stopped early, if it did.
        error: Option<String>,
        /// Whether it stopped because the reading end had closed (a pipe
        /// into `head`): not an error for a command-line tool.
        broken_pipe: bool,
    },
}

/// Daemon and link state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Whether a paired laptop is connected right now.
    pub link: LinkStatus,
    /// Address the tunnel listener is bound to.
    pub listen: String,
    /// Fingerprint of the paired laptop's certificate, if paired.
    pub paired_fingerprint: Option<String>,
    /// Whether a pairing token is waiting to be used.
    pub pairing_pending: bool,
    /// Remote address of the linked laptop.
    pub peer: Option<String>,
    /// Seconds since the current link came up.
    pub linked_for_s: Option<u64>,
    /// Shim software version.
    pub version: String,
}

/// Link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkStatus {
    /// A paired laptop is connected.
    Linked,
    /// No laptop is connected.
    NotLinked,
}

/// Answer to a pairing URI request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairingInfo {
    /// The URI to give `nexus-agent-proxy pair` (it carries the token).
    Uri {
        /// `nexus://HOST:PORT?fp=sha256:..&token=..`
        uri: Secret,
        /// Seconds until the token expires.
        expires_in_s: u64,
    },
    /// A laptop is paired and no token is pending.
    AlreadyPaired,
}

/// First frame of a stream the **proxy** opens toward the shim (the shim
/// opens one stream per call the other way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Keepalive: the shim answers [`ControlReply::Pong`] with the same
    /// number. Any answer, even a reset stream, proves the link alive.
    Ping {
        /// The proxy's sequence number, echoed back.
        seq: u64,
        /// How often the proxy pings, so that the shim can tell a silent
        /// laptop from a slow one.
        interval_ms: u64,
    },
    /// The identity list the workspace may see, sent whenever it changed
    /// on the laptop, so that `ssh-add -l` costs no round trip. The shim
    /// answers [`ControlReply::SshIdentitiesStored`].
    SshIdentities(IdentityPush),
}

/// What [`Control::SshIdentities`] carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityPush {
    /// The list, as [`Request::SshIdentities`] would answer now; `None`
    /// when the laptop cannot list (no agent, locked): the shim then asks
    /// for each list, and gets the reason.
    pub ids: Option<Vec<SshIdentity>>,
    /// Whether the laptop agent holds keys with destination constraints
    /// (`ssh-add -h`): then an agent connection with session binds must ask
    /// with [`Request::SshIdentitiesBound`] instead of using this list.
    pub constrained: bool,
}

/// The shim's answer on a [`Control`] stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlReply {
    /// Answer to [`Control::Ping`].
    Pong {
        /// The ping's number.
        seq: u64,
    },
    /// Answer to [`Control::SshIdentities`]: the list replaced the one
    /// before.
    SshIdentitiesStored,
}

#[cfg(test)]
mod relay_tests {
    use super::*;
    use crate::{decode, encode, encode_frame};

    /// The raw relay builds exactly the frame that encoding the wrapped
    /// reply would, and leaves every other reply to be decoded.
    #[test]
    fn a_chunk_is_rewrapped_byte_for_byte() {
        for data in [Vec::new(), b"x".to_vec(), vec![7u8; MAX_CHUNK]] {
            let chunk = Reply::Chunk {
                channel: Channel::Data,
                data,
            };
            let body = encode(&chunk);
            let relayed = chunk_local_prefix(&body, crate::MAX_FRAME).map(|mut p| {
                p.extend_from_slice(&body);
                p
            });
            let expected = encode_frame(&LocalReply::Reply(chunk.clone()));
            assert_eq!(relayed.as_deref(), Some(&expected[..]));
            let body = &expected[crate::HEADER_LEN..];
            assert!(
                matches!(decode::<LocalReply>(body), Ok(LocalReply::Reply(r)) if r == chunk),
                "the relayed frame decodes to the chunk"
            );
        }
        for other in [
            Reply::Done,
            Reply::Exit(3),
            Reply::error(ErrorCode::Denied, "Chunk"),
        ] {
            assert_eq!(chunk_local_prefix(&encode(&other), crate::MAX_FRAME), None);
        }
        let big = encode(&Reply::Chunk {
            channel: Channel::Stdout,
            data: vec![0; 100],
        });
        assert_eq!(chunk_local_prefix(&big, big.len()), None, "over max");
    }

    /// `chunk_data` finds exactly a chunk's data, for every size the
    /// encoding has a different length header for, and nothing else.
    #[test]
    fn a_chunk_s_data_is_found_in_place() {
        for len in [0, 1, 31, 32, 255, 256, 65_535, 65_536, MAX_CHUNK] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for channel in [Channel::Data, Channel::Stdout, Channel::Stderr] {
                let body = encode(&Reply::Chunk {
                    channel,
                    data: data.clone(),
                });
                let (c, at) = chunk_data(&body).unwrap_or_else(|| panic!("{len}"));
                assert_eq!(c, channel);
                assert_eq!(&body[at], &data[..]);
            }
        }
        for other in [Reply::Done, Reply::error(ErrorCode::Denied, "Chunk")] {
            assert_eq!(chunk_data(&encode(&other)), None);
        }
    }

    /// A chunk sent as prefix + data is the chunk's frame, byte for byte,
    /// for each length header size; no prefix is longer than the room the
    /// laptop's file sender keeps for it (37 bytes of its 64).
    #[test]
    fn a_chunk_s_prefix_and_data_are_its_frame() {
        for len in [0, 1, 255, 256, 65_535, 65_536, MAX_CHUNK] {
            for channel in [Channel::Data, Channel::Stdout, Channel::Stderr] {
                assert!(chunk_frame_prefix(channel, len).len() <= 37);
                let data = vec![9u8; len];
                let mut sent = chunk_frame_prefix(channel, len);
                sent.extend_from_slice(&data);
                assert_eq!(sent, encode_frame(&Reply::Chunk { channel, data }), "{len}");
            }
        }
    }

    proptest::proptest! {
        /// Whatever the bytes after the tag, `chunk_data` never panics and
        /// any range it gives lies inside the body.
        #[test]
        fn chunk_data_never_reads_outside_the_body(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut body = CHUNK_TAG.to_vec();
            body.extend_from_slice(&tail);
            if let Some((_, at)) = chunk_data(&body) {
                proptest::prop_assert!(at.end <= body.len() && at.start <= at.end);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(method: &str, body_len: Option<u64>) -> Request {
        Request::Http(HttpRequest {
            name: "api".into(),
            method: method.into(),
            path: "/v1/x".into(),
            headers: Vec::new(),
            body_len,
        })
    }

    /// Only a GET or HEAD known to carry no body is sent again: a body, or
    /// one of unknown length, may make it more than a read.
    #[test]
    fn an_http_request_is_retryable_only_as_a_bodyless_get_or_head() {
        assert!(http("GET", Some(0)).is_retryable());
        assert!(http("HEAD", Some(0)).is_retryable());
        assert!(!http("GET", Some(3)).is_retryable());
        assert!(!http("GET", None).is_retryable());
        assert!(!http("POST", Some(0)).is_retryable());
        assert!(!http("DELETE", Some(0)).is_retryable());
        assert!(Request::FileGet { path: "~/x".into() }.is_retryable());
        assert!(!Request::FileSync { set: "s".into() }.is_retryable());
    }
}
