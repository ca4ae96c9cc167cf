//! The data inside an ssh-agent sign request, parsed strictly.
//!
//! The agent protocol says nothing about *what* is signed; OpenSSH clients
//! ask for two kinds of data, and we accept only those:
//! - a userauth request (RFC 4252 §7, plus OpenSSH's
//!   `publickey-hostbound-v00@openssh.com`, which appends the server's host
//!   key), which names the session id, the remote user and the key;
//! - an SSHSIG blob (`ssh-keygen -Y sign`, git's `gpg.format=ssh`), which
//!   names a namespace.
//!
//! Everything else, including trailing bytes, is an error.
//!
//! Keys inside these messages stay wire blobs, compared byte for byte: they
//! may be certificates (see [`crate::ssh_cert`]).

use signature::Verifier;
use ssh_encoding::Decode;
use ssh_key::Signature;
use thiserror::Error;

use crate::ssh_cert::{Credential, parse_credential};

/// `SSH_MSG_USERAUTH_REQUEST`.
const USERAUTH_REQUEST: u8 = 50;
/// The preamble of an SSHSIG signed-data blob.
const SSHSIG_MAGIC: &[u8; 6] = b"SSHSIG";

/// Why sign data is not something we agree to sign.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Not a userauth request nor an SSHSIG blob.
    #[error("the data to sign is neither an SSH userauth request nor an SSHSIG blob ({0})")]
    Unrecognized(String),
    /// A userauth request with a method we do not sign for.
    #[error("userauth method {0:?} is not a public-key method")]
    Method(String),
}

/// The authentication method of a userauth request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `publickey`
    PublicKey,
    /// `publickey-hostbound-v00@openssh.com`: carries the server's host key.
    HostBound,
}

/// A parsed userauth request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Userauth {
    /// The SSH session identifier (exchange hash).
    pub session_id: Vec<u8>,
    /// The remote user name.
    pub user: String,
    /// The service requested (`ssh-connection`).
    pub service: String,
    /// The method.
    pub method: Method,
    /// The signature algorithm named in the request.
    pub algorithm: String,
    /// The wire blob of the key (or certificate) being authenticated.
    pub key: Vec<u8>,
    /// The wire blob of the server's host key or certificate (hostbound
    /// method only).
    pub host_key: Option<Vec<u8>>,
}

/// A parsed SSHSIG signed-data blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSig {
    /// The namespace (`git`, `file`, ...).
    pub namespace: String,
    /// The hash algorithm of the message digest.
    pub hash_algorithm: String,
}

/// What a sign request asks to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignData {
    /// An SSH login.
    Userauth(Box<Userauth>),
    /// A detached signature over a file or commit.
    SshSig(SshSig),
}

fn err(what: impl std::fmt::Display) -> WireError {
    WireError::Unrecognized(what.to_string())
}

/// Parses the data of a sign request.
///
/// # Errors
/// [`WireError`] for anything but a well-formed userauth request or SSHSIG blob.
pub fn parse_sign_data(data: &[u8]) -> Result<SignData, WireError> {
    if let Some(rest) = data.strip_prefix(SSHSIG_MAGIC) {
        return parse_sshsig(rest).map(SignData::SshSig);
    }
    parse_userauth(data).map(|u| SignData::Userauth(Box::new(u)))
}

fn string(r: &mut &[u8]) -> Result<Vec<u8>, WireError> {
    Vec::<u8>::decode(r).map_err(err)
}

fn utf8(r: &mut &[u8], field: &str) -> Result<String, WireError> {
    String::from_utf8(string(r)?).map_err(|_| err(format!("{field} is not UTF-8")))
}

/// A key or certificate blob, checked to parse.
fn key(r: &mut &[u8]) -> Result<Vec<u8>, WireError> {
    let blob = string(r)?;
    parse_credential(&blob).map_err(err)?;
    Ok(blob)
}

/// An `SSH_AGENTC_SIGN_REQUEST` body (after the message type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignRequest {
    /// The wire blob of the key or certificate to sign with.
    pub key_blob: Vec<u8>,
    /// That key, parsed.
    pub credential: Credential,
    /// The data to sign.
    pub data: Vec<u8>,
    /// The signature flags (RSA hash choice).
    pub flags: u32,
}

/// Parses a sign request body.
///
/// # Errors
/// [`WireError`] when it is malformed or names no key we can read.
pub fn parse_sign_request(body: &[u8]) -> Result<SignRequest, WireError> {
    let r = &mut &body[..];
    let key_blob = string(r)?;
    let credential = parse_credential(&key_blob).map_err(err)?;
    let data = string(r)?;
    let flags = u32::decode(r).map_err(err)?;
    if !r.is_empty() {
        return Err(err("trailing bytes after the sign request"));
    }
    Ok(SignRequest {
        key_blob,
        credential,
        data,
        flags,
    })
}

/// A `session-bind@openssh.com` extension whose host-key signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBind {
    /// The wire blob of the host key or certificate.
    pub host_blob: Vec<u8>,
    /// That host key, parsed.
    pub host_key: Credential,
    /// The SSH session identifier.
    pub session_id: Vec<u8>,
    /// Whether the session forwards the agent onward.
    pub is_forwarding: bool,
    /// The extension's details as received, to pass on to the laptop agent.
    pub raw: Vec<u8>,
}

/// Why a session bind is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BindError {
    /// Not a well-formed bind.
    #[error("malformed session-bind ({0})")]
    Malformed(String),
    /// The host key's signature over the session id does not verify.
    #[error("the session-bind's host key signature does not verify")]
    Signature,
}

/// Parses the details of a session-bind extension and verifies the host
/// key's signature over the session id (with the certified key, for a host
/// certificate: the certificate itself is judged against the pinned CAs).
///
/// # Errors
/// [`BindError`].
pub fn parse_session_bind(body: &[u8]) -> Result<SessionBind, BindError> {
    let malformed = |e: WireError| BindError::Malformed(e.to_string());
    let r = &mut &body[..];
    let host_blob = string(r).map_err(malformed)?;
    let host_key = parse_credential(&host_blob).map_err(|e| BindError::Malformed(e.to_string()))?;
    let session_id = string(r).map_err(malformed)?;
    let sig_blob = string(r).map_err(malformed)?;
    let is_forwarding = u8::decode(r).map_err(|e| malformed(err(e)))? != 0;
    if !r.is_empty() {
        return Err(malformed(err("trailing bytes after the session-bind")));
    }
    let s = &mut &sig_blob[..];
    let signature = Signature::decode(s).map_err(|e| malformed(err(e)))?;
    if !s.is_empty() {
        return Err(malformed(err("trailing bytes in the signature")));
    }
    host_key
        .key
        .verify(&session_id, &signature)
        .map_err(|_| BindError::Signature)?;
    Ok(SessionBind {
        host_blob,
        host_key,
        session_id,
        is_forwarding,
        raw: body.to_vec(),
    })
}

fn parse_userauth(data: &[u8]) -> Result<Userauth, WireError> {
    let r = &mut &data[..];
    let session_id = string(r)?;
    if session_id.is_empty() || session_id.len() > 64 {
        return Err(err(format!("session id of {} bytes", session_id.len())));
    }
    let msg = u8::decode(r).map_err(err)?;
    if msg != USERAUTH_REQUEST {
        return Err(err(format!("message type {msg}")));
    }
    let user = utf8(r, "user")?;
    let service = utf8(r, "service")?;
    let method_name = utf8(r, "method")?;
    let method = match method_name.as_str() {
        "publickey" => Method::PublicKey,
        "publickey-hostbound-v00@openssh.com" => Method::HostBound,
        _ => return Err(WireError::Method(method_name.chars().take(64).collect())),
    };
    if u8::decode(r).map_err(err)? != 1 {
        return Err(err("publickey request without a signature flag"));
    }
    let algorithm = utf8(r, "algorithm")?;
    let key = key(r)?;
    let host_key = match method {
        Method::HostBound => Some(self::key(r)?),
        Method::PublicKey => None,
    };
    if !r.is_empty() {
        return Err(err("trailing bytes after the userauth request"));
    }
    Ok(Userauth {
        session_id,
        user,
        service,
        method,
        algorithm,
        key,
        host_key,
    })
}

fn parse_sshsig(rest: &[u8]) -> Result<SshSig, WireError> {
    let r = &mut &rest[..];
    let namespace = utf8(r, "namespace")?;
    let _reserved = string(r)?;
    let hash_algorithm = utf8(r, "hash algorithm")?;
    let digest = string(r)?;
    if namespace.is_empty()
        || !matches!(hash_algorithm.as_str(), "sha256" | "sha512")
        || digest.len() > 64
    {
        return Err(err("malformed SSHSIG blob"));
    }
    if !r.is_empty() {
        return Err(err("trailing bytes after the SSHSIG blob"));
    }
    Ok(SshSig {
        namespace,
        hash_algorithm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_encoding::Encode;
    use ssh_key::public::KeyData;

    fn ed25519() -> KeyData {
        KeyData::Ed25519(ssh_key::public::Ed25519PublicKey([7u8; 32]))
    }

    fn put(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(s);
    }

    fn blob(k: &KeyData) -> Vec<u8> {
        let mut v = Vec::new();
        k.encode(&mut v).unwrap_or_else(|e| panic!("{e}"));
        v
    }

    pub(crate) fn userauth(
        sid: &[u8],
        user: &str,
        method: &str,
        host: Option<&KeyData>,
    ) -> Vec<u8> {
        let mut d = Vec::new();
        put(&mut d, sid);
        d.push(USERAUTH_REQUEST);
        put(&mut d, user.as_bytes());
        put(&mut d, b"ssh-connection");
        put(&mut d, method.as_bytes());
        d.push(1);
        put(&mut d, b"ssh-ed25519");
        put(&mut d, &blob(&ed25519()));
        if let Some(h) = host {
            put(&mut d, &blob(h));
        }
        d
    }

    #[test]
    fn userauth_both_methods() {
        let plain = parse_sign_data(&userauth(&[1; 32], "git", "publickey", None));
        assert!(
            matches!(plain, Ok(SignData::Userauth(ref u)) if u.user == "git" && u.method == Method::PublicKey && u.key == blob(&ed25519()))
        );
        let host = ed25519();
        let bound = parse_sign_data(&userauth(
            &[1; 32],
            "git",
            "publickey-hostbound-v00@openssh.com",
            Some(&host),
        ));
        assert!(matches!(bound, Ok(SignData::Userauth(ref u)) if u.host_key == Some(blob(&host))));
    }

    #[test]
    fn rejects_other_methods_trailing_and_truncated() {
        assert_eq!(
            parse_sign_data(&userauth(&[1; 32], "git", "password", None)),
            Err(WireError::Method("password".into()))
        );
        let mut d = userauth(&[1; 32], "git", "publickey", None);
        d.push(0);
        assert!(parse_sign_data(&d).is_err());
        let d = userauth(&[1; 32], "git", "publickey", None);
        for cut in 0..d.len() {
            assert!(parse_sign_data(&d[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse_sign_data(&userauth(&[], "git", "publickey", None)).is_err());
    }

    #[test]
    fn sshsig_blob() {
        let mut d = SSHSIG_MAGIC.to_vec();
        put(&mut d, b"git");
        put(&mut d, b"");
        put(&mut d, b"sha512");
        put(&mut d, &[9; 64]);
        assert_eq!(
            parse_sign_data(&d),
            Ok(SignData::SshSig(SshSig {
                namespace: "git".into(),
                hash_algorithm: "sha512".into()
            }))
        );
        d.push(1);
        assert!(parse_sign_data(&d).is_err());
    }

    fn bind(seed: u8, sid: &[u8], forwarding: bool) -> Vec<u8> {
        use signature::Signer;
        let host =
            ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]));
        let sig: ssh_key::Signature = host.try_sign(sid).unwrap_or_else(|e| panic!("{e}"));
        let mut d = Vec::new();
        put(&mut d, &blob(host.public_key().key_data()));
        put(&mut d, sid);
        let mut s = Vec::new();
        sig.encode(&mut s).unwrap_or_else(|e| panic!("{e}"));
        put(&mut d, &s);
        d.push(u8::from(forwarding));
        d
    }

    #[test]
    fn session_binds_verify_and_keep_their_bytes() {
        let body = bind(4, &[9; 32], true);
        let b = parse_session_bind(&body).unwrap_or_else(|e| panic!("{e}"));
        assert!(b.is_forwarding && b.session_id == [9; 32] && b.raw == body);
        assert!(b.host_key.cert.is_none());
        // The signature covers the session id: another one does not verify.
        let mut forged = body.clone();
        forged[4 + 51 + 4] ^= 1;
        assert_eq!(parse_session_bind(&forged), Err(BindError::Signature));
        let mut long = body.clone();
        long.push(0);
        assert!(matches!(
            parse_session_bind(&long),
            Err(BindError::Malformed(_))
        ));
    }

    #[test]
    fn sign_requests_parse_strictly() {
        let mut d = Vec::new();
        put(&mut d, &blob(&ed25519()));
        put(&mut d, b"data");
        d.extend_from_slice(&2u32.to_be_bytes());
        let r = parse_sign_request(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.data.as_slice(), r.flags), (&b"data"[..], 2));
        assert_eq!(r.credential.key, ed25519());
        d.push(0);
        assert!(parse_sign_request(&d).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse_sign_data(&data);
            let mut s = SSHSIG_MAGIC.to_vec();
            s.extend_from_slice(&data);
            let _ = parse_sign_data(&s);
            let _ = parse_sign_request(&data);
            let _ = parse_session_bind(&data);
        }
    }
}
