//! `agent.sock`: the workspace's `SSH_AUTH_SOCK`.
//!
//! The shim answers what needs no decision, so that a `git push` costs one
//! network round trip: the identity list comes from a cache of public keys
//! the laptop filtered, and `session-bind@openssh.com` is acknowledged here
//! and carried with the next sign request. Every signature is decided and
//! made on the laptop, which verifies bind and sign together; everything
//! else (add, remove, lock, unknown messages) is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nexus_protocol::{CallerContext, Reply, Request, SshIdentity};
use ssh_agent_lib::proto::extension::MessageExtension;
use ssh_agent_lib::proto::extension::{QueryResponse, SessionBind};
use ssh_agent_lib::proto::{
    Extension, Identity, PublicCredential, Request as AgentRequest, Response,
};
use ssh_agent_lib::ssh_key::Signature;
use ssh_encoding::{Decode, Encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::serve::Shared;

/// Largest agent message accepted (OpenSSH uses 256 KiB too).
pub const MAX_AGENT_MESSAGE: usize = 256 << 10;
/// Agent connections served at once.
pub const MAX_AGENT_CONNECTIONS: usize = 256;
/// Session binds kept per agent connection: OpenSSH's own agent keeps 16
/// (`AGENT_MAX_SESSION_IDS`), one per hop of a forwarding chain; the laptop
/// decides each hop.
pub const MAX_BINDS: usize = 16;

/// Accepts agent connections until `shutdown`.
pub async fn serve_agent(
    listener: UnixListener,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let gate = Arc::new(Semaphore::new(MAX_AGENT_CONNECTIONS));
    let next = AtomicU64::new(0);
    loop {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            return;
        };
        let conn = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((conn, _)) => conn,
                Err(e) => { crate::serve::accept_failed(&e).await; continue; }
            },
        };
        // As ssh-agent does: only our own user (or root) may use the agent,
        // a second wall behind the socket's 0600.
        if !crate::trust::peer_is_trusted(&conn) {
            warn!("agent connection from another user refused");
            continue;
        }
        let id = next.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = shared.clone();
        let stop = shutdown.clone();
        tasks.spawn(
            async move {
                let caller = crate::sockets::caller_context(&conn);
                tokio::select! {
                    () = serve_connection(conn, id, caller, &shared) => {},
                    () = stop.cancelled() => {},
                }
                drop(permit);
            }
            .instrument(info_span!("agent", conn = id)),
        );
    }
}

/// What one agent connection has bound so far.
#[derive(Debug, Default)]
struct ConnState {
    binds: Vec<Vec<u8>>,
}

async fn serve_connection(mut conn: UnixStream, id: u64, caller: CallerContext, shared: &Shared) {
    let mut state = ConnState::default();
    loop {
        let mut len = [0u8; 4];
        if conn.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_AGENT_MESSAGE {
            warn!(len, "agent message over the limit; closing the connection");
            return;
        }
        let mut body = vec![0u8; len];
        if conn.read_exact(&mut body).await.is_err() {
            return;
        }
        let response = handle(&body, id, &caller, &mut state, shared).await;
        let mut bytes = Vec::new();
        if response.encode(&mut bytes).is_err() {
            return;
        }
        let mut framed = Vec::with_capacity(4 + bytes.len());
        framed.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(0).to_be_bytes());
        framed.extend_from_slice(&bytes);
        if conn.write_all(&framed).await.is_err() {
            return;
        }
    }
}

async fn handle(
    body: &[u8],
    id: u64,
    caller: &CallerContext,
    state: &mut ConnState,
    shared: &Shared,
) -> Response {
    let request = match AgentRequest::decode(&mut &body[..]) {
        Ok(r) => r,
        Err(e) => {
            warn!(message_type = body.first().copied(), error = %e, "refused an agent message");
            return Response::Failure;
        }
    };
    match request {
        AgentRequest::RequestIdentities => identities(caller, shared).await,
        AgentRequest::SignRequest(_) => {
            let call = Request::SshSign {
                connection: id,
                binds: state.binds.clone(),
                request: body[1..].to_vec(),
            };
            match laptop(shared, caller, call).await {
                Reply::SshSignature(bytes) => match Signature::decode(&mut &bytes[..]) {
                    Ok(sig) => Response::SignResponse(sig),
                    Err(_) => Response::Failure,
                },
                other => {
                    warn!(reply = ?other, "the laptop refused to sign; see the laptop proxy's log for the reason");
                    Response::Failure
                }
            }
        }
        AgentRequest::Extension(ext) => extension(ext, state),
        other => {
            warn!(
                message_type = other.message_id(),
                "refused an agent request that is never forwarded"
            );
            Response::Failure
        }
    }
}

fn extension(ext: Extension, state: &mut ConnState) -> Response {
    match ext.name.as_str() {
        SessionBind::NAME => {
            // Acknowledged here, judged on the laptop with the sign request.
            if state.binds.len() >= MAX_BINDS {
                return Response::Failure;
            }
            state.binds.push(ext.details.into_bytes());
            Response::Success
        }
        "query" => Extension::new_message(QueryResponse {
            extensions: vec![SessionBind::NAME.to_owned()],
        })
        .map_or(Response::Failure, Response::ExtensionResponse),
        name => {
            debug!(extension = name, "unsupported agent extension");
            Response::ExtensionFailure
        }
    }
}

/// How often a cached identity list is checked against the laptop.
pub const IDENTITY_REFRESH: Duration = Duration::from_secs(5);

/// Public keys the laptop lets this workspace list (public data), and when
/// the laptop was last asked for them.
#[derive(Debug, Default)]
pub struct IdentityCache {
    ids: Option<Vec<SshIdentity>>,
    asked: Option<Instant>,
}

impl IdentityCache {
    /// Forgets everything (a new link may bring another policy or agent).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

async fn identities(caller: &CallerContext, shared: &Shared) -> Response {
    let cached = shared
        .ssh_identities
        .lock()
        .ok()
        .and_then(|c| c.ids.clone());
    let ids = match cached {
        Some(ids) => {
            // Answer at once; refresh in the background (at most every
            // IDENTITY_REFRESH) so keys added on the laptop show up soon.
            refresh_identities(shared);
            ids
        }
        None => match laptop(shared, caller, Request::SshIdentities).await {
            Reply::SshIdentities(ids) => {
                if let Ok(mut c) = shared.ssh_identities.lock() {
                    c.ids = Some(ids.clone());
                    c.asked = Some(Instant::now());
                }
                ids
            }
            other => {
                warn!(reply = ?other, "cannot list the laptop's keys");
                return Response::Failure;
            }
        },
    };
    Response::IdentitiesAnswer(ids.iter().filter_map(to_identity).collect())
}

fn to_identity(id: &SshIdentity) -> Option<Identity> {
    let key = ssh_agent_lib::ssh_key::public::KeyData::decode(&mut &id.blob[..]).ok()?;
    Some(Identity {
        credential: PublicCredential::Key(key),
        comment: id.comment.clone(),
    })
}

/// Fetches the identity list into the cache in the background: after a link
/// comes up, and after answers served from the cache once the list is older
/// than [`IDENTITY_REFRESH`].
pub fn refresh_identities(shared: &Shared) {
    let Some(link) = shared.live_link() else {
        return;
    };
    let cache = shared.ssh_identities.clone();
    {
        let Ok(mut c) = cache.lock() else { return };
        if c.asked.is_some_and(|t| t.elapsed() < IDENTITY_REFRESH) {
            return;
        }
        c.asked = Some(Instant::now());
    }
    tokio::spawn(async move {
        let call =
            crate::sockets::call_once(&link, CallerContext::default(), Request::SshIdentities);
        if let Ok(Ok(Reply::SshIdentities(ids))) =
            tokio::time::timeout(Duration::from_secs(30), call).await
            && !link.mux.is_closed()
            && let Ok(mut c) = cache.lock()
        {
            c.ids = Some(ids);
        }
    });
}

async fn laptop(shared: &Shared, caller: &CallerContext, request: Request) -> Reply {
    crate::sockets::request(shared, caller.clone(), request, shared.agent_wait).await
}
