//! A client for the laptop's ssh-agent that keeps keys as wire blobs.
//!
//! A typed client parses every identity and fails the whole list on one it
//! cannot read (a certificate valid forever, a key type it does not know);
//! here the list comes back raw and each entry is judged on its own, and
//! signatures and binds pass through byte for byte.

use std::path::Path;

use ssh_encoding::{Decode, Encode};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest answer read from the agent (OpenSSH's `AGENT_MAX_LEN`).
pub const MAX_AGENT_MESSAGE: usize = 256 << 10;

const FAILURE: u8 = 5;
const SUCCESS: u8 = 6;
const REQUEST_IDENTITIES: u8 = 11;
const IDENTITIES_ANSWER: u8 = 12;
const SIGN_REQUEST: u8 = 13;
const SIGN_RESPONSE: u8 = 14;
const EXTENSION: u8 = 27;

/// What went wrong talking to the laptop agent.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The agent answered `SSH_AGENT_FAILURE`.
    #[error("the agent refused")]
    Refused,
    /// The agent's answer is not what the protocol says.
    #[error("unexpected answer from the agent: {0}")]
    Protocol(String),
}

fn protocol(what: impl std::fmt::Display) -> AgentError {
    AgentError::Protocol(what.to_string())
}

/// One connection to the laptop agent.
#[derive(Debug)]
pub struct LaptopAgent {
    stream: UnixStream,
}

impl LaptopAgent {
    /// Connects to the agent socket at `path`.
    ///
    /// # Errors
    /// The socket's error.
    pub async fn connect(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            stream: UnixStream::connect(path).await?,
        })
    }

    async fn call(&mut self, body: &[u8]) -> Result<Vec<u8>, AgentError> {
        let len = u32::try_from(body.len()).map_err(|_| protocol("request too large"))?;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(body);
        self.stream.write_all(&frame).await?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_AGENT_MESSAGE {
            return Err(protocol(format!("an answer of {len} bytes")));
        }
        let mut answer = vec![0u8; len];
        self.stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    /// The wire blobs of the identities the agent lists, in its order
    /// (comments are dropped: they name laptop users, hosts and paths).
    ///
    /// # Errors
    /// [`AgentError`] when the agent fails or answers out of protocol.
    pub async fn list(&mut self) -> Result<Vec<Vec<u8>>, AgentError> {
        let answer = self.call(&[REQUEST_IDENTITIES]).await?;
        let (kind, r) = answer.split_first().ok_or_else(|| protocol("empty"))?;
        match *kind {
            IDENTITIES_ANSWER => {}
            FAILURE => return Err(AgentError::Refused),
            other => return Err(protocol(format!("message type {other}"))),
        }
        let r = &mut &r[..];
        let count = u32::decode(r).map_err(protocol)?;
        let mut blobs = Vec::new();
        for _ in 0..count {
            let blob = Vec::<u8>::decode(r).map_err(protocol)?;
            let _comment = Vec::<u8>::decode(r).map_err(protocol)?;
            blobs.push(blob);
        }
        Ok(blobs)
    }

    /// Sends an extension request; true when the agent answered success.
    ///
    /// # Errors
    /// [`AgentError`] when the socket fails.
    pub async fn extension(&mut self, name: &str, details: &[u8]) -> Result<bool, AgentError> {
        let mut body = vec![EXTENSION];
        name.encode(&mut body).map_err(protocol)?;
        body.extend_from_slice(details);
        let answer = self.call(&body).await?;
        Ok(answer.first() == Some(&SUCCESS))
    }

    /// Asks for a signature; returns the signature blob as the agent made it.
    ///
    /// # Errors
    /// [`AgentError::Refused`] when the agent refuses, others when it fails.
    pub async fn sign(
        &mut self,
        key_blob: &[u8],
        data: &[u8],
        flags: u32,
    ) -> Result<Vec<u8>, AgentError> {
        let mut body = vec![SIGN_REQUEST];
        key_blob.encode(&mut body).map_err(protocol)?;
        data.encode(&mut body).map_err(protocol)?;
        flags.encode(&mut body).map_err(protocol)?;
        let answer = self.call(&body).await?;
        let (kind, r) = answer.split_first().ok_or_else(|| protocol("empty"))?;
        match *kind {
            SIGN_RESPONSE => {
                let r = &mut &r[..];
                let sig = Vec::<u8>::decode(r).map_err(protocol)?;
                if r.is_empty() {
                    Ok(sig)
                } else {
                    Err(protocol("trailing bytes after the signature"))
                }
            }
            FAILURE => Err(AgentError::Refused),
            other => Err(protocol(format!("message type {other}"))),
        }
    }
}
