//! The client half of `shim.sock`: one request, then replies until final.

use std::time::Duration;

use nexus_protocol::{LocalOp, LocalReply, LocalRequest, MAX_FRAME};
use tokio::net::UnixStream;

use crate::state::StateDir;

/// Why a client command could not get an answer (exit 1 either way).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens on the state dir.
    #[error("{0}")]
    NoDaemon(String),
    /// The daemon broke the conversation.
    #[error("{0}")]
    Broken(String),
    /// The state dir or the daemon is not the caller's own.
    #[error("{0}")]
    Unsafe(String),
}

/// A connection to the daemon carrying one request.
#[derive(Debug)]
pub struct Session {
    conn: UnixStream,
}

impl Session {
    /// Connects and sends the request, once the state dir and the daemon
    /// behind its socket have been found to be the caller's own (see
    /// [`crate::trust`]).
    pub async fn start(state: &StateDir, wait: Duration, op: LocalOp) -> Result<Self, ClientError> {
        if state.root().exists() {
            state
                .check()
                .map_err(|e| ClientError::Unsafe(format!("{e:#}")))?;
        }
        let path = state.shim_sock();
        let mut conn = UnixStream::connect(&path).await.map_err(|e| {
            ClientError::NoDaemon(format!(
                "no nexus-shim daemon is running for {} ({}: {e}); start one with: nexus-shim serve",
                state.root().display(),
                path.display()
            ))
        })?;
        #[cfg(unix)]
        crate::trust::check_peer(&conn, &path)
            .map_err(|e| ClientError::Unsafe(format!("{e:#}")))?;
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        nexus_transport::send(&mut conn, &LocalRequest { wait_ms, op })
            .await
            .map_err(|e| ClientError::Broken(format!("sending the request to the daemon: {e}")))?;
        Ok(Self { conn })
    }

    /// The connection, for a call whose caller keeps writing after its
    /// request (`git-ssh`: `Upload` frames).
    pub fn into_inner(self) -> UnixStream {
        self.conn
    }

    /// Passes `fd` to the daemon (one byte carrying it, `SCM_RIGHTS`): the
    /// file it just announced goes there (see `LocalOp::ForwardInto`).
    pub async fn send_descriptor(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), ClientError> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let send = || {
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [fd];
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(std::io::Error::other("no room for the descriptor"));
            }
            let sent = rustix::net::sendmsg(
                &self.conn,
                &[std::io::IoSlice::new(&[0])],
                &mut control,
                SendFlags::DONTWAIT,
            )?;
            if sent == 1 {
                Ok(())
            } else {
                Err(std::io::ErrorKind::WriteZero.into())
            }
        };
        self.conn
            .async_io(tokio::io::Interest::WRITABLE, send)
            .await
            .map_err(|e| ClientError::Broken(format!("passing the file to the daemon: {e}")))
    }

    /// The next reply.
    pub async fn next(&mut self) -> Result<LocalReply, ClientError> {
        nexus_transport::recv_wiping(&mut self.conn, MAX_FRAME, |r| {
            !matches!(r, LocalReply::Reply(nexus_protocol::Reply::Chunk { .. }))
        })
        .await
        .map_err(|e| {
            ClientError::Broken(format!(
                "the daemon ended the conversation ({e}); see its log"
            ))
        })
    }
}
