//! The identity list, pushed to the shim whenever it changes, so that the
//! workspace's `ssh-add -l` (and the list every `ssh` login starts with)
//! costs no round trip and is never more than [`PUSH_EVERY`] old.
//!
//! Per link, the laptop agent is asked every [`PUSH_EVERY`] (a local socket
//! call), the list is filtered by the policy as [`super::ssh::Identities`]
//! does, and sent on a [`Control::SshIdentities`] stream when it differs
//! from the last one the shim stored. Each look also lists once on an agent
//! connection bound to a throwaway host key: the laptop agent hides a key
//! added with `ssh-add -h` there, so a difference means the agent holds
//! destination-constrained keys, and the shim must ask the laptop for each
//! bound agent connection's list.

use std::time::Duration;

use nexus_protocol::{Control, ControlReply, HANDSHAKE_MAX_FRAME, IdentityPush};
use nexus_transport::MuxHandle;
use ssh_agent_lib::proto::extension::SessionBind as BindMessage;
use ssh_encoding::Encode;
use ssh_key::private::Ed25519Keypair;
use ssh_key::{PrivateKey, Signature, SigningKey};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ToolContext;
use super::ssh::allowed_identities;
use crate::ssh_wire::{SessionBind, parse_session_bind};

/// How often the laptop agent is asked.
pub const PUSH_EVERY: Duration = Duration::from_millis(500);
/// How long the shim may take to store a pushed list.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Pushes the identity list of `workspace` on `mux` whenever it changes,
/// until `stop`.
pub async fn run(
    mux: MuxHandle,
    workspace: String,
    ctx: std::sync::Arc<ToolContext>,
    stop: CancellationToken,
) {
    let probe = probe_bind();
    let mut stored: Option<IdentityPush> = None;
    loop {
        // A laptop agent that hangs (a locked 1Password) must not hold up
        // the link's teardown and redial.
        let now = tokio::select! {
            () = stop.cancelled() => return,
            now = current(&workspace, &ctx, probe.as_ref()) => now,
        };
        if stored.as_ref() != Some(&now) {
            let pushed = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(PUSH_TIMEOUT, push(&mux, &now)) => matches!(r, Ok(true)),
            };
            if pushed {
                // Only on a change: a line per key added or removed.
                info!(
                    tool = "ssh",
                    shown = now.ids.as_ref().map(Vec::len),
                    constrained = now.constrained,
                    "identity list pushed"
                );
                stored = Some(now);
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PUSH_EVERY) => {}
        }
    }
}

/// The list the workspace may see now.
async fn current(workspace: &str, ctx: &ToolContext, probe: Option<&SessionBind>) -> IdentityPush {
    let unknown = IdentityPush {
        ids: None,
        constrained: false,
    };
    // Locked: every list is asked for, and refused with the reason.
    if ctx.locked() {
        return unknown;
    }
    let policy = ctx.policy.current();
    let Ok((ids, _)) = allowed_identities(workspace, &policy, ctx, &[]).await else {
        return unknown;
    };
    let constrained = match probe {
        Some(bind) => {
            match allowed_identities(workspace, &policy, ctx, std::slice::from_ref(bind)).await {
                Ok((seen, _)) => seen != ids,
                Err(_) => return unknown,
            }
        }
        // Without a probe, assume the worst: bound lists are asked for.
        None => true,
    };
    IdentityPush {
        ids: Some(ids),
        constrained,
    }
}

/// A session bind to a host key of our own, made up here: no destination
/// constraint can name it.
fn probe_bind() -> Option<SessionBind> {
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&rand::random()));
    let session_id: [u8; 32] = rand::random();
    let signature = sign(&key, &session_id)?;
    let message = BindMessage {
        host_key: key.public_key().key_data().clone(),
        session_id: session_id.to_vec(),
        signature,
        is_forwarding: false,
    };
    let mut body = Vec::new();
    message.encode(&mut body).ok()?;
    parse_session_bind(&body).ok()
}

fn sign<K: SigningKey>(key: &K, data: &[u8]) -> Option<Signature> {
    key.try_sign(data).ok()
}

/// Sends `list` on its own stream; true once the shim stored it.
async fn push(mux: &MuxHandle, list: &IdentityPush) -> bool {
    let Ok(mut stream) = mux.open().await else {
        return false;
    };
    let control = Control::SshIdentities(list.clone());
    if let Err(e) = nexus_transport::send(&mut stream, &control).await {
        warn!(error = %e, "cannot push the identity list");
        return false;
    }
    let answer = nexus_transport::recv::<_, ControlReply>(&mut stream, HANDSHAKE_MAX_FRAME).await;
    let _ = stream.shutdown().await;
    matches!(answer, Ok(ControlReply::SshIdentitiesStored))
}
