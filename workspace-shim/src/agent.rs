//! `agent.sock`: the workspace's `SSH_AUTH_SOCK`.
//!
//! The shim answers what needs no decision, so that a `git push` costs one
//! network round trip: the identity list comes from the public keys the
//! laptop filtered and pushed on this link whenever they changed (asked
//! for instead before the first push, and on a bound connection while the
//! laptop agent holds keys added with `ssh-add -h`), and `session-bind@openssh.com` is acknowledged here
//! and carried with the next sign request. Every signature is decided and
//! made on the laptop, which verifies bind and sign together; everything
//! else (add, remove, lock, unknown messages) is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nexus_protocol::{CallerContext, IdentityPush, Reply, Request, SshIdentity};
use ssh_agent_lib::proto::extension::MessageExtension;
use ssh_agent_lib::proto::extension::{QueryResponse, SessionBind};
use ssh_agent_lib::proto::{Extension, Request as AgentRequest, Response};
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
/// `SSH_AGENTC_REQUEST_IDENTITIES`.
const REQUEST_IDENTITIES: u8 = 11;
/// `SSH_AGENT_IDENTITIES_ANSWER`.
const IDENTITIES_ANSWER: u8 = 12;
/// `SSH_AGENTC_SIGN_REQUEST`.
const SIGN_REQUEST: u8 = 13;
/// `SSH_AGENT_SIGN_RESPONSE`.
const SIGN_RESPONSE: u8 = 14;
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
        let Some(cred) = crate::trust::trusted_peer(&conn) else {
            warn!("agent connection from another user refused");
            continue;
        };
        let id = next.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = shared.clone();
        let stop = shutdown.clone();
        tasks.spawn(
            async move {
                let caller = crate::sockets::caller_context(cred);
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
        let Some(bytes) = handle(&body, id, &caller, &mut state, shared).await else {
            return;
        };
        let mut framed = Vec::with_capacity(4 + bytes.len());
        framed.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(0).to_be_bytes());
        framed.extend_from_slice(&bytes);
        if conn.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// The answer to one agent message (its body, unframed); `None` when it
/// cannot be encoded.
///
/// Keys and signatures pass as the laptop sent them, never parsed here:
/// certificates and key types this side cannot read still work, and the
/// laptop checks every byte of a sign request.
async fn handle(
    body: &[u8],
    id: u64,
    caller: &CallerContext,
    state: &mut ConnState,
    shared: &Shared,
) -> Option<Vec<u8>> {
    match body.first().copied() {
        Some(REQUEST_IDENTITIES) if body.len() == 1 => {
            return match identities(caller, state, shared).await {
                Some(ids) => identities_answer(&ids),
                None => encoded(&Response::Failure),
            };
        }
        Some(SIGN_REQUEST) => {
            let call = Request::SshSign {
                connection: id,
                binds: state.binds.clone(),
                request: body[1..].to_vec(),
            };
            return match laptop(shared, caller, call).await {
                Reply::SshSignature(sig) => {
                    let mut out = vec![SIGN_RESPONSE];
                    sig.encode(&mut out).ok()?;
                    Some(out)
                }
                other => {
                    warn!(reply = ?other, "the laptop refused to sign; see the laptop proxy's log for the reason");
                    encoded(&Response::Failure)
                }
            };
        }
        _ => {}
    }
    let response = match AgentRequest::decode(&mut &body[..]) {
        Ok(AgentRequest::Extension(ext)) => extension(ext, state),
        Ok(other) => {
            warn!(
                message_type = other.message_id(),
                "refused an agent request that is never forwarded"
            );
            Response::Failure
        }
        Err(e) => {
            warn!(message_type = body.first().copied(), error = %e, "refused an agent message");
            Response::Failure
        }
    };
    encoded(&response)
}

fn encoded(response: &Response) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    response.encode(&mut bytes).ok()?;
    Some(bytes)
}

/// `SSH_AGENT_IDENTITIES_ANSWER` with the laptop's blobs as they are.
fn identities_answer(ids: &[SshIdentity]) -> Option<Vec<u8>> {
    let mut out = vec![IDENTITIES_ANSWER];
    u32::try_from(ids.len()).ok()?.encode(&mut out).ok()?;
    for id in ids {
        id.blob.encode(&mut out).ok()?;
        id.comment.encode(&mut out).ok()?;
    }
    Some(out)
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

/// The identity list the laptop pushed on the current link (public keys
/// only). Each link has its own: a new link may come with another policy
/// or agent, and answers nothing from the one before.
#[derive(Debug, Default)]
pub struct IdentityCache(Mutex<Option<IdentityPush>>);

impl IdentityCache {
    /// Replaces the list with the laptop's newest.
    pub fn store(&self, push: IdentityPush) {
        if let Ok(mut c) = self.0.lock() {
            *c = Some(push);
        }
    }

    /// The list for an agent connection, bound or not; `None` when the
    /// laptop must be asked (nothing pushed yet, the laptop cannot list,
    /// or a bound connection while the laptop agent holds keys with
    /// destination constraints).
    fn get(&self, bound: bool) -> Option<Vec<SshIdentity>> {
        let c = self.0.lock().ok()?;
        let push = c.as_ref()?;
        if bound && push.constrained {
            return None;
        }
        push.ids.clone()
    }
}

/// The list for this agent connection; `None` when the laptop cannot list.
async fn identities(
    caller: &CallerContext,
    state: &ConnState,
    shared: &Shared,
) -> Option<Vec<SshIdentity>> {
    let bound = !state.binds.is_empty();
    let cached = shared
        .live_link()
        .and_then(|link| link.ssh_identities.get(bound));
    match cached {
        Some(ids) => Some(ids),
        None => {
            let request = if bound {
                Request::SshIdentitiesBound {
                    binds: state.binds.clone(),
                }
            } else {
                Request::SshIdentities
            };
            match laptop(shared, caller, request).await {
                Reply::SshIdentities(ids) => Some(ids),
                other => {
                    warn!(reply = ?other, "cannot list the laptop's keys");
                    None
                }
            }
        }
    }
}

async fn laptop(shared: &Shared, caller: &CallerContext, request: Request) -> Reply {
    crate::sockets::request(shared, caller.clone(), request, shared.agent_wait).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> SshIdentity {
        SshIdentity {
            blob: vec![n],
            comment: String::new(),
        }
    }

    /// Before a push, and while the laptop cannot list, every list is asked
    /// for; a bound connection uses the pushed list only while the laptop
    /// agent has no destination-constrained keys.
    #[test]
    fn the_pushed_list_answers_only_what_it_covers() {
        let cache = IdentityCache::default();
        assert_eq!(cache.get(false), None, "nothing pushed yet");
        cache.store(IdentityPush {
            ids: Some(vec![id(1)]),
            constrained: false,
        });
        assert_eq!(cache.get(false), Some(vec![id(1)]));
        assert_eq!(cache.get(true), Some(vec![id(1)]));
        cache.store(IdentityPush {
            ids: Some(vec![id(1), id(2)]),
            constrained: true,
        });
        assert_eq!(cache.get(false), Some(vec![id(1), id(2)]));
        assert_eq!(cache.get(true), None, "bound lists are asked for");
        cache.store(IdentityPush {
            ids: None,
            constrained: false,
        });
        assert_eq!(cache.get(false), None, "the laptop cannot list");
    }
}
