//! The git credential helper protocol (`git help credential`), parsed
//! strictly: both the workspace (input from git) and the laptop (the same
//! input again, as it crossed the tunnel, and the answer of the laptop's own
//! `git credential fill`) read it through [`parse_credential`].
//!
//! Lines are `key=value`, ended by `\n`; a blank line or the end of input ends
//! the description. Refused (the CVE-2020-5260 / CVE-2024-52006 class, where a
//! newline or carriage return inside a URL smuggled a second key to a helper):
//! NUL or CR anywhere, any other control character but TAB in a value, keys
//! this version does not know, a scalar key given twice, non-UTF-8, anything
//! after the blank line, and input past [`MAX_CREDENTIAL_INPUT`]. Accepted:
//! every key git 2.47 sends or reads, including the repeated array keys
//! `capability[]`, `wwwauth[]` and `state[]`. `url=` is refused: git never
//! sends it to a helper, and a URL may carry embedded credentials.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::Secret;

/// Largest credential description accepted, in bytes.
pub const MAX_CREDENTIAL_INPUT: usize = 64 << 10;
/// Most entries one array key (`wwwauth[]`, ...) may have.
pub const MAX_ARRAY_ENTRIES: usize = 32;

/// One credential description, as git's helper protocol carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// `protocol=`: `https`, `http`, ...
    pub protocol: Option<String>,
    /// `host=`: host name, with `:port` when not the default.
    pub host: Option<String>,
    /// `path=`: sent only with `credential.useHttpPath=true`.
    pub path: Option<String>,
    /// `username=`.
    pub username: Option<String>,
    /// `password=`.
    pub password: Option<Secret>,
    /// `password_expiry_utc=`: seconds since the epoch.
    pub password_expiry_utc: Option<String>,
    /// `oauth_refresh_token=`.
    pub oauth_refresh_token: Option<Secret>,
    /// `authtype=` (with `capability[]=authtype`).
    pub authtype: Option<String>,
    /// `credential=`: a pre-encoded credential (with `authtype`).
    pub credential: Option<Secret>,
    /// `ephemeral=`: the credential must not be stored.
    pub ephemeral: Option<bool>,
    /// `continue=`: multistage authentication goes on.
    pub continue_: Option<bool>,
    /// `quit=`: the helper tells git to stop asking.
    pub quit: Option<bool>,
    /// `capability[]=`, in order.
    pub capability: Vec<String>,
    /// `wwwauth[]=`: the server's `WWW-Authenticate` headers, in order.
    pub wwwauth: Vec<String>,
    /// `state[]=`: helper state, in order.
    pub state: Vec<String>,
}

/// Why a credential description was refused. Messages never quote a value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CredentialError {
    /// Over [`MAX_CREDENTIAL_INPUT`].
    #[error("credential description longer than {MAX_CREDENTIAL_INPUT} bytes")]
    TooLong,
    /// A NUL byte anywhere.
    #[error("credential description contains a NUL byte")]
    Nul,
    /// A carriage return anywhere.
    #[error("credential description contains a carriage return (line {0})")]
    CarriageReturn(usize),
    /// Not UTF-8.
    #[error("credential description is not UTF-8 (line {0})")]
    NotUtf8(usize),
    /// A line without `=`.
    #[error("line {0} of the credential description has no '='")]
    NoEquals(usize),
    /// A key this version does not know.
    #[error("unknown credential key {0:?}")]
    UnknownKey(String),
    /// A scalar key given twice.
    #[error("credential key {0:?} given twice")]
    Duplicate(&'static str),
    /// An array key given too often.
    #[error("credential key {0:?} given more than {MAX_ARRAY_ENTRIES} times")]
    TooMany(&'static str),
    /// A value with a control character, or otherwise malformed for its key.
    #[error("credential key {key:?}: {why}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// What is wrong (never the value).
        why: &'static str,
    },
    /// Lines after the blank line that ends the description.
    #[error("data after the blank line that ends the credential description")]
    TrailingData,
}

/// Parses one credential description (git's helper input or output).
///
/// # Errors
/// A [`CredentialError`] saying what is wrong, never quoting a value.
pub fn parse_credential(input: &[u8]) -> Result<Credential, CredentialError> {
    if input.len() > MAX_CREDENTIAL_INPUT {
        return Err(CredentialError::TooLong);
    }
    if input.contains(&0) {
        return Err(CredentialError::Nul);
    }
    let mut cred = Credential::default();
    let mut ended = false;
    let body = input.strip_suffix(b"\n").unwrap_or(input);
    if body.is_empty() {
        return Ok(cred);
    }
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if ended {
            return Err(CredentialError::TrailingData);
        }
        if line.contains(&b'\r') {
            return Err(CredentialError::CarriageReturn(n));
        }
        if line.is_empty() {
            ended = true;
            continue;
        }
        let line = std::str::from_utf8(line).map_err(|_| CredentialError::NotUtf8(n))?;
        let (key, value) = line.split_once('=').ok_or(CredentialError::NoEquals(n))?;
        cred.set(key, value)?;
    }
    Ok(cred)
}

/// Checks a value: no control character but TAB.
fn plain(key: &'static str, value: &str) -> Result<(), CredentialError> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(CredentialError::BadValue {
            key,
            why: "contains a control character",
        });
    }
    Ok(())
}

fn boolean(key: &'static str, value: &str) -> Result<bool, CredentialError> {
    match value {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(CredentialError::BadValue {
            key,
            why: "expected 1, 0, true or false",
        }),
    }
}

fn scalar<T>(slot: &mut Option<T>, key: &'static str, v: T) -> Result<(), CredentialError> {
    if slot.is_some() {
        return Err(CredentialError::Duplicate(key));
    }
    *slot = Some(v);
    Ok(())
}

fn push(list: &mut Vec<String>, key: &'static str, value: &str) -> Result<(), CredentialError> {
    if value.is_empty() {
        return Err(CredentialError::BadValue {
            key,
            why: "is empty",
        });
    }
    if list.len() >= MAX_ARRAY_ENTRIES {
        return Err(CredentialError::TooMany(key));
    }
    list.push(value.to_owned());
    Ok(())
}

/// `protocol`: `[a-z0-9+.-]+`.
fn check_protocol(value: &str) -> Result<(), CredentialError> {
    let ok = !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(CredentialError::BadValue {
            key: "protocol",
            why: "expected a URL scheme like https",
        })
    }
}

/// `host`: a host name or address with an optional port; no user, path or space.
fn check_host(value: &str) -> Result<(), CredentialError> {
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'));
    if ok {
        Ok(())
    } else {
        Err(CredentialError::BadValue {
            key: "host",
            why: "expected HOST or HOST:PORT (letters, digits, . - _ : [ ])",
        })
    }
}

impl Credential {
    fn set(&mut self, key: &str, value: &str) -> Result<(), CredentialError> {
        match key {
            "protocol" => {
                check_protocol(value)?;
                scalar(&mut self.protocol, "protocol", value.to_owned())
            }
            "host" => {
                check_host(value)?;
                scalar(&mut self.host, "host", value.to_owned())
            }
            "path" => {
                plain("path", value)?;
                scalar(&mut self.path, "path", value.to_owned())
            }
            "username" => {
                plain("username", value)?;
                scalar(&mut self.username, "username", value.to_owned())
            }
            "password" => {
                plain("password", value)?;
                scalar(&mut self.password, "password", secret(value))
            }
            "password_expiry_utc" => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CredentialError::BadValue {
                        key: "password_expiry_utc",
                        why: "expected seconds since the epoch",
                    });
                }
                scalar(
                    &mut self.password_expiry_utc,
                    "password_expiry_utc",
                    value.to_owned(),
                )
            }
            "oauth_refresh_token" => {
                plain("oauth_refresh_token", value)?;
                scalar(
                    &mut self.oauth_refresh_token,
                    "oauth_refresh_token",
                    secret(value),
                )
            }
            "authtype" => {
                plain("authtype", value)?;
                scalar(&mut self.authtype, "authtype", value.to_owned())
            }
            "credential" => {
                plain("credential", value)?;
                scalar(&mut self.credential, "credential", secret(value))
            }
            "ephemeral" => scalar(
                &mut self.ephemeral,
                "ephemeral",
                boolean("ephemeral", value)?,
            ),
            "continue" => scalar(&mut self.continue_, "continue", boolean("continue", value)?),
            "quit" => scalar(&mut self.quit, "quit", boolean("quit", value)?),
            "capability[]" => {
                plain("capability[]", value)?;
                push(&mut self.capability, "capability[]", value)
            }
            "wwwauth[]" => {
                plain("wwwauth[]", value)?;
                push(&mut self.wwwauth, "wwwauth[]", value)
            }
            "state[]" => {
                plain("state[]", value)?;
                push(&mut self.state, "state[]", value)
            }
            other => Err(CredentialError::UnknownKey(
                other.chars().take(64).collect(),
            )),
        }
    }

    /// The description in git's format (one `key=value` line each,
    /// capabilities first), ready for a helper's stdin or stdout. Values were
    /// checked when parsed; a value set by hand that holds a newline, CR or
    /// NUL is left out rather than written.
    #[must_use]
    pub fn serialize(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        let mut line = |key: &str, value: &[u8]| {
            if value.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
                return;
            }
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
            out.extend_from_slice(value);
            out.push(b'\n');
        };
        for c in &self.capability {
            line("capability[]", c.as_bytes());
        }
        let text = [
            ("protocol", &self.protocol),
            ("host", &self.host),
            ("path", &self.path),
            ("username", &self.username),
        ];
        for (key, value) in text {
            if let Some(v) = value {
                line(key, v.as_bytes());
            }
        }
        if let Some(v) = &self.password {
            line("password", v.expose());
        }
        if let Some(v) = &self.password_expiry_utc {
            line("password_expiry_utc", v.as_bytes());
        }
        if let Some(v) = &self.oauth_refresh_token {
            line("oauth_refresh_token", v.expose());
        }
        if let Some(v) = &self.authtype {
            line("authtype", v.as_bytes());
        }
        if let Some(v) = &self.credential {
            line("credential", v.expose());
        }
        let flags = [
            ("ephemeral", self.ephemeral),
            ("continue", self.continue_),
            ("quit", self.quit),
        ];
        for (key, value) in flags {
            if let Some(v) = value {
                line(key, if v { b"1" } else { b"0" });
            }
        }
        for w in &self.wwwauth {
            line("wwwauth[]", w.as_bytes());
        }
        for s in &self.state {
            line("state[]", s.as_bytes());
        }
        out
    }
}

fn secret(value: &str) -> Secret {
    Secret::new(value.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What git 2.47.3 really sends to a helper's `get` (captured).
    const GIT_GET: &[u8] = b"capability[]=authtype\ncapability[]=state\nprotocol=http\n\
host=127.0.0.1:45575\npath=acme/repo.git\nusername=user\nwwwauth[]=Basic realm=\"x\"\n";

    #[test]
    fn parses_what_git_sends() {
        let c = parse_credential(GIT_GET).unwrap_or_default();
        assert_eq!(c.protocol.as_deref(), Some("http"));
        assert_eq!(c.host.as_deref(), Some("127.0.0.1:45575"));
        assert_eq!(c.path.as_deref(), Some("acme/repo.git"));
        assert_eq!(c.capability, ["authtype", "state"]);
        assert_eq!(c.wwwauth, ["Basic realm=\"x\""]);
        assert_eq!(&c.serialize()[..], GIT_GET);
        // A blank line ends it; EOF without a newline too.
        assert!(parse_credential(b"protocol=https\nhost=a\n\n").is_ok());
        assert!(parse_credential(b"protocol=https\nhost=a").is_ok());
        assert_eq!(parse_credential(b""), Ok(Credential::default()));
    }

    #[test]
    fn refuses_injection() {
        let cases: &[(&[u8], CredentialError)] = &[
            (b"host=a\0b\n", CredentialError::Nul),
            (b"host=a\r\n", CredentialError::CarriageReturn(1)),
            (b"path=x\rhost=evil\n", CredentialError::CarriageReturn(1)),
            (
                b"url=https://u:p@h/\n",
                CredentialError::UnknownKey("url".into()),
            ),
            (b"host=a\nhost=b\n", CredentialError::Duplicate("host")),
            (b"hostx\n", CredentialError::NoEquals(1)),
            (b"host=a\n\nhost=b\n", CredentialError::TrailingData),
            (
                b"host=a/b\n",
                CredentialError::BadValue {
                    key: "host",
                    why: "expected HOST or HOST:PORT (letters, digits, . - _ : [ ])",
                },
            ),
            (
                b"path=a\x1bb\n",
                CredentialError::BadValue {
                    key: "path",
                    why: "contains a control character",
                },
            ),
            (b"path=\xff\n", CredentialError::NotUtf8(1)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_credential(input).as_ref(), Err(want), "{input:?}");
        }
        assert_eq!(
            parse_credential(&vec![b'a'; MAX_CREDENTIAL_INPUT + 1]),
            Err(CredentialError::TooLong)
        );
        let many = "wwwauth[]=x\n".repeat(MAX_ARRAY_ENTRIES + 1);
        assert_eq!(
            parse_credential(many.as_bytes()),
            Err(CredentialError::TooMany("wwwauth[]"))
        );
    }

    #[test]
    fn errors_never_quote_values() {
        let e = parse_credential(b"password=hunter2\x07\n").err();
        assert!(e.is_some_and(|e| !e.to_string().contains("hunter2")));
    }
}
