//! Wire protocol of Nexus Agent Proxy.
//!
//! Everything that crosses a socket is a **frame**: a 4-byte big-endian length
//! followed by that many bytes of MessagePack (rmp-serde, named fields so that
//! fields can be added without breaking older peers). This crate is pure: it
//! turns bytes into typed messages and back, and negotiates versions. It never
//! opens a socket.
//!
//! Three conversations use frames:
//! - the tunnel handshake, inside TLS and before yamux ([`ClientHello`], [`ServerHello`]);
//! - one forwarded session per yamux stream: a [`Call`] from the shim, then one
//!   or more [`Reply`] frames from the proxy, the last of which is final;
//! - local callers on the shim's Unix socket ([`LocalRequest`], [`LocalReply`]).
#![forbid(unsafe_code)]

mod credential;
mod error;
mod frame;
pub mod git_http;
mod message;
pub mod pktline;
mod secret;
mod section;
pub mod units;
mod version;

pub use credential::{
    Credential, CredentialError, MAX_ARRAY_ENTRIES, MAX_CREDENTIAL_INPUT, parse_credential,
};
pub use error::{DecodeError, FrameError};
pub use frame::{
    FrameCodec, HANDSHAKE_MAX_FRAME, HEADER_LEN, MAX_DEPTH, MAX_FRAME, body_len, decode,
    decode_borrowed, encode, encode_frame,
};
pub use message::{
    ANSWER_RECEIVED, Call, CallKey, CallerContext, Channel, ClientHello, ErrorCode, ErrorReply,
    GitOperation, GitService, HttpApi, HttpHeader, HttpRequest, LinkStatus, LocalOp, LocalReply,
    LocalRequest, MAX_CHUNK, PairingInfo, Refusal, Reply, Request, ServerHello, SshIdentity,
    StatusInfo, ToolInfo, Upload,
};
pub use message::{
    Control, ControlReply, GIT_HTTP_PREFIX, HOP_BY_HOP, IdentityPush, MAX_RECEIVED, RETRY_WINDOW,
    chunk_data, chunk_frame_prefix, chunk_local_prefix, connection_listed,
};
pub use secret::Secret;
pub use section::{Section, UnknownSection};
pub use version::{
    CONFIRMS_LATER, PROTOCOL_VERSION, SUPPORTED, VersionMismatch, VersionRange, negotiate,
};
