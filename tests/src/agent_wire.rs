//! The ssh-agent protocol as a hostile workspace process speaks it: a raw
//! client for `agent.sock`, and a relay that sits between a real `ssh` and
//! `agent.sock` to record (and optionally tamper with) what ssh sends, so a
//! test can replay genuine session binds and sign requests.
//!
//! Messages are `uint32 length || body`; a body starts with its type byte.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::{DEADLINE, Must};

/// `SSH_AGENT_FAILURE`.
pub const FAILURE: u8 = 5;
/// `SSH_AGENT_SUCCESS`.
pub const SUCCESS: u8 = 6;
/// `SSH_AGENTC_REQUEST_IDENTITIES`.
pub const REQUEST_IDENTITIES: u8 = 11;
/// `SSH_AGENT_IDENTITIES_ANSWER`.
pub const IDENTITIES_ANSWER: u8 = 12;
/// `SSH_AGENTC_SIGN_REQUEST`.
pub const SIGN_REQUEST: u8 = 13;
/// `SSH_AGENT_SIGN_RESPONSE`.
pub const SIGN_RESPONSE: u8 = 14;
/// `SSH_AGENTC_EXTENSION`.
pub const EXTENSION: u8 = 27;
/// `SSH_AGENT_EXTENSION_FAILURE`.
pub const EXTENSION_FAILURE: u8 = 28;

/// The extension name OpenSSH binds sessions with.
pub const SESSION_BIND: &str = "session-bind@openssh.com";

/// `uint32 length || body`.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len())
        .must("a small agent message")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(body);
    out
}

/// Appends an SSH `string`.
pub fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&frame(s));
}

/// An `SSH_AGENTC_EXTENSION` body: `27 || string name || details`.
pub fn extension(name: &str, details: &[u8]) -> Vec<u8> {
    let mut body = vec![EXTENSION];
    put_string(&mut body, name.as_bytes());
    body.extend_from_slice(details);
    body
}

/// Reads one framed message; `None` at end of stream.
fn read_message(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut body).ok()?;
    Some(body)
}

/// One connection to an agent socket, driven message by message.
#[derive(Debug)]
pub struct AgentConn {
    stream: UnixStream,
}

impl AgentConn {
    /// Connects to `path`.
    #[track_caller]
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).must(&format!("connecting to {}", path.display()));
        stream
            .set_read_timeout(Some(DEADLINE))
            .must("setting a read timeout");
        Self { stream }
    }

    /// Sends `body` and returns the reply's body (its first byte is the
    /// reply type).
    #[track_caller]
    pub fn call(&mut self, body: &[u8]) -> Vec<u8> {
        self.stream
            .write_all(&frame(body))
            .must("writing an agent message");
        read_message(&mut self.stream).must("an agent reply (the connection closed)")
    }

    /// Sends `body` and returns only the reply type.
    #[track_caller]
    pub fn call_type(&mut self, body: &[u8]) -> u8 {
        let reply = self.call(body);
        *reply.first().must("a non-empty agent reply")
    }
}

/// The key blobs of an `SSH_AGENT_IDENTITIES_ANSWER` body
/// (`12 || uint32 n || n × (string blob || string comment)`); `None` when
/// it is anything else or malformed.
pub fn identity_blobs(answer: &[u8]) -> Option<Vec<Vec<u8>>> {
    fn string<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        let (s, tail) = (tail.get(..len)?, tail.get(len..)?);
        *rest = tail;
        Some(s)
    }
    let (&kind, mut rest) = answer.split_first()?;
    if kind != IDENTITIES_ANSWER {
        return None;
    }
    let (n, tail) = rest.split_first_chunk::<4>()?;
    rest = tail;
    let mut blobs = Vec::new();
    for _ in 0..u32::from_be_bytes(*n) {
        blobs.push(string(&mut rest)?.to_vec());
        string(&mut rest)?;
    }
    Some(blobs)
}

/// What a client sent on one relayed connection, in order.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// Message bodies, client to agent.
    pub messages: Vec<Vec<u8>>,
}

impl Captured {
    /// The first `session-bind@openssh.com` message (whole body).
    pub fn session_bind(&self) -> Option<&[u8]> {
        self.messages
            .iter()
            .find(|m| is_session_bind(m))
            .map(Vec::as_slice)
    }

    /// The first sign request (whole body).
    pub fn sign_request(&self) -> Option<&[u8]> {
        self.messages
            .iter()
            .find(|m| m.first() == Some(&SIGN_REQUEST))
            .map(Vec::as_slice)
    }
}

/// Whether `body` is a session-bind extension message.
pub fn is_session_bind(body: &[u8]) -> bool {
    let mut name = Vec::new();
    put_string(&mut name, SESSION_BIND.as_bytes());
    body.first() == Some(&EXTENSION) && body[1..].starts_with(&name)
}

/// A copy of session-bind `body` with `is_forwarding` set (its last byte).
/// The host's signature covers only the session id, so it still verifies.
pub fn with_forwarding(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    if let Some(last) = out.last_mut() {
        *last = 1;
    }
    out
}

/// A copy of session-bind `body` whose host signature no longer verifies
/// (a bit flipped in its last signature byte, just before the flag).
pub fn with_bad_signature(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    let at = out.len().checked_sub(2).must("a session-bind body");
    out[at] ^= 1;
    out
}

/// What the relay does to what it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Forwards everything unchanged.
    Nothing,
    /// Sets `is_forwarding` in every session bind (a workspace claiming an
    /// onward hop, or a genuine one: the laptop must refuse both).
    MarkForwarding,
}

/// A Unix-socket relay in front of an agent socket that records every
/// message clients send, per connection.
#[derive(Debug)]
pub struct AgentRelay {
    path: PathBuf,
    connections: Arc<Mutex<Vec<Arc<Mutex<Captured>>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AgentRelay {
    /// Listens on `path`, relaying each connection to `upstream`.
    #[track_caller]
    pub fn start(path: &Path, upstream: &Path, tamper: Tamper) -> Self {
        let listener = UnixListener::bind(path).must(&format!("binding {}", path.display()));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (connections, stop, upstream) =
                (connections.clone(), stop.clone(), upstream.to_path_buf());
            std::thread::spawn(move || {
                accept_loop(&listener, &upstream, tamper, &connections, &stop)
            })
        };
        Self {
            path: path.to_path_buf(),
            connections,
            stop,
            thread: Some(thread),
        }
    }

    /// The relay's socket (an `SSH_AUTH_SOCK`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was captured so far, one entry per connection in accept order.
    pub fn connections(&self) -> Vec<Captured> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|c| c.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .collect()
    }
}

impl Drop for AgentRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop`.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: &UnixListener,
    upstream: &Path,
    tamper: Tamper,
    connections: &Mutex<Vec<Arc<Mutex<Captured>>>>,
    stop: &AtomicBool,
) {
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(agent) = UnixStream::connect(upstream) else {
            continue;
        };
        let captured = Arc::new(Mutex::new(Captured::default()));
        connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(captured.clone());
        let (Ok(mut agent_r), Ok(mut client_w)) = (agent.try_clone(), client.try_clone()) else {
            continue;
        };
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut agent_r, &mut client_w);
            let _ = client_w.shutdown(std::net::Shutdown::Both);
        });
        std::thread::spawn(move || relay_requests(client, agent, tamper, &captured));
    }
}

fn relay_requests(
    mut client: UnixStream,
    mut agent: UnixStream,
    tamper: Tamper,
    captured: &Mutex<Captured>,
) {
    while let Some(body) = read_message(&mut client) {
        let body = match tamper {
            Tamper::MarkForwarding if is_session_bind(&body) => with_forwarding(&body),
            _ => body,
        };
        captured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .messages
            .push(body.clone());
        if agent.write_all(&frame(&body)).is_err() {
            break;
        }
    }
    let _ = agent.shutdown(std::net::Shutdown::Write);
}
