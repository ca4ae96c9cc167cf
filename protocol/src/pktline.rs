//! The ref updates of a git push, read from the pkt-lines the workspace's
//! git sends before its pack (smart HTTP's `git-receive-pack` request body,
//! or what follows the ref advertisement over SSH).
//!
//! The laptop must decide a push before a byte of it reaches the server, so
//! [`PushCommands`] is fed the request as it arrives and answers once the
//! command list is complete (its flush packet), with every ref update and
//! how many bytes the list took; nothing after that is read. Anything that
//! is not a well-formed protocol v0/v1 command list is refused with the
//! reason: lengths that lie or run past the limits, a pack before the
//! commands, protocol v2 packets, push certificates, malformed object ids
//! or ref names.
//!
//! Format (git's `Documentation/gitprotocol-pack.txt`):
//! ```text
//! update-requests = *shallow ( command-list | push-cert )
//! shallow         = PKT-LINE("shallow" SP obj-id LF)
//! command-list    = PKT-LINE(command NUL capability-list) *PKT-LINE(command) flush-pkt
//! command         = old-id SP new-id SP name
//! ```

use std::fmt;

/// Largest pkt-line git sends (`LARGE_PACKET_MAX`), header included.
pub const MAX_PKT_LEN: usize = 65520;
/// Most ref updates one push may carry.
pub const MAX_UPDATES: usize = 10_000;
/// Most bytes the command list may take before its flush.
pub const MAX_COMMAND_LIST: usize = 4 << 20;

/// One ref update of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The object the ref points at now on the server (all zeros: created).
    pub old: String,
    /// The object it is to point at (all zeros: deleted).
    pub new: String,
    /// The full ref name, e.g. `refs/heads/agent/x`.
    pub name: String,
}

impl RefUpdate {
    /// Whether this update deletes the ref.
    #[must_use]
    pub fn is_delete(&self) -> bool {
        self.new.bytes().all(|b| b == b'0')
    }

    /// Whether this update creates the ref.
    #[must_use]
    pub fn is_create(&self) -> bool {
        self.old.bytes().all(|b| b == b'0')
    }
}

/// A complete command list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commands {
    /// The ref updates, in the order sent.
    pub updates: Vec<RefUpdate>,
    /// The capabilities after the first command's NUL.
    pub capabilities: Vec<String>,
    /// Bytes of the input the list took, its flush included.
    pub len: usize,
}

/// Why a push request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PktError {
    /// A length header that is not four hex digits, or out of range.
    #[error("bad pkt-line length {0:?} at byte {1}")]
    BadLength(String, usize),
    /// Protocol v2 packets (delim, response-end) on the push path.
    #[error("protocol v2 packet on a push; the push path speaks protocol v0/v1 only")]
    ProtocolV2,
    /// A pack (or anything else) before the command list was complete.
    #[error("data before the push's command list was complete: {0}")]
    Unexpected(String),
    /// A signed push.
    #[error("signed pushes (push-cert) are not supported through the laptop")]
    PushCert,
    /// Push options (`git push -o`): servers act on them beyond the ref
    /// updates (GitLab's `merge_request.*`, Gerrit's `submit`), where the
    /// policy cannot see.
    #[error(
        "push options (git push -o) are not passed through the laptop: servers act on them \
         (merge requests, submits) beyond the ref updates its policy decides"
    )]
    PushOptions,
    /// A command line that is not `OLD NEW REF`.
    #[error("malformed ref update {0:?}")]
    BadCommand(String),
    /// A ref name git itself would refuse.
    #[error("invalid ref name {0:?}")]
    BadRef(String),
    /// A flush before any command.
    #[error("the push names no ref update")]
    Empty,
    /// More than [`MAX_UPDATES`] updates or [`MAX_COMMAND_LIST`] bytes.
    #[error(
        "the push's command list is too long (at most {MAX_UPDATES} updates, {MAX_COMMAND_LIST} bytes)"
    )]
    TooLong,
}

/// Reads a push's command list from the pieces of a request.
#[derive(Debug, Default)]
pub struct PushCommands {
    buf: Vec<u8>,
    /// Bytes of `buf` already parsed.
    pos: usize,
    updates: Vec<RefUpdate>,
    capabilities: Option<Vec<String>>,
}

/// What feeding a piece gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The list is not complete yet: feed more.
    NeedMore,
    /// The list is complete; the bytes after `len` are the pack (or push
    /// options), not read.
    Done(Commands),
}

impl PushCommands {
    /// A reader at the start of a request.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next piece of the request.
    ///
    /// # Errors
    /// Why the request is not a push the laptop can decide; the reader
    /// must not be fed again after an error.
    pub fn feed(&mut self, data: &[u8]) -> Result<Progress, PktError> {
        // Keep at most what the list may take, plus one header's look-ahead.
        let room = (MAX_COMMAND_LIST + 4).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        loop {
            let rest = &self.buf[self.pos..];
            if rest.len() < 4 {
                return self.need_more();
            }
            let header = &rest[..4];
            if self.updates.is_empty() && rest.starts_with(b"PACK") {
                return Err(PktError::Unexpected("a pack".into()));
            }
            let len = parse_len(header).ok_or_else(|| {
                PktError::BadLength(String::from_utf8_lossy(header).into_owned(), self.pos)
            })?;
            match len {
                0 => {
                    self.pos += 4;
                    if self.updates.is_empty() {
                        return Err(PktError::Empty);
                    }
                    return Ok(Progress::Done(Commands {
                        updates: std::mem::take(&mut self.updates),
                        capabilities: self.capabilities.take().unwrap_or_default(),
                        len: self.pos,
                    }));
                }
                1 | 2 => return Err(PktError::ProtocolV2),
                3 => {
                    return Err(PktError::BadLength(
                        String::from_utf8_lossy(header).into_owned(),
                        self.pos,
                    ));
                }
                _ if len > MAX_PKT_LEN => {
                    return Err(PktError::BadLength(
                        String::from_utf8_lossy(header).into_owned(),
                        self.pos,
                    ));
                }
                _ => {}
            }
            if rest.len() < len {
                return self.need_more();
            }
            let payload = rest[4..len].to_vec();
            self.pos += len;
            self.line(&payload)?;
        }
    }

    fn need_more(&self) -> Result<Progress, PktError> {
        if self.buf.len() > MAX_COMMAND_LIST {
            Err(PktError::TooLong)
        } else {
            Ok(Progress::NeedMore)
        }
    }

    /// One pkt-line's payload.
    fn line(&mut self, payload: &[u8]) -> Result<(), PktError> {
        let payload = payload.strip_suffix(b"\n").unwrap_or(payload);
        let (command, caps) = match payload.iter().position(|&b| b == 0) {
            Some(i) => (&payload[..i], Some(&payload[i + 1..])),
            None => (payload, None),
        };
        let text = std::str::from_utf8(command)
            .map_err(|_| PktError::BadCommand(String::from_utf8_lossy(command).into_owned()))?;
        if self.updates.is_empty() && self.capabilities.is_none() {
            if let Some(oid) = text.strip_prefix("shallow ") {
                return if is_oid(oid) && caps.is_none() {
                    Ok(())
                } else {
                    Err(PktError::BadCommand(clip(text)))
                };
            }
            if text == "push-cert" {
                return Err(PktError::PushCert);
            }
        }
        let mut parts = text.splitn(3, ' ');
        let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(PktError::BadCommand(clip(text)));
        };
        if !is_oid(old) || !is_oid(new) || old.len() != new.len() {
            return Err(PktError::BadCommand(clip(text)));
        }
        check_ref(name)?;
        match (caps, &self.capabilities) {
            (Some(c), None) => {
                let c = std::str::from_utf8(c).map_err(|_| PktError::BadCommand(clip(text)))?;
                let caps: Vec<String> = c
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if caps.iter().any(|c| c == "push-options") {
                    return Err(PktError::PushOptions);
                }
                self.capabilities = Some(caps);
            }
            (Some(_), Some(_)) => return Err(PktError::BadCommand(clip(text))),
            (None, None) => self.capabilities = Some(Vec::new()),
            (None, Some(_)) => {}
        }
        if self.updates.len() == MAX_UPDATES {
            return Err(PktError::TooLong);
        }
        self.updates.push(RefUpdate {
            old: old.to_owned(),
            new: new.to_owned(),
            name: name.to_owned(),
        });
        Ok(())
    }
}

/// Four hex digits.
fn parse_len(header: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(header).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    usize::from_str_radix(text, 16).ok()
}

/// A SHA-1 or SHA-256 object id in lower-case hex.
fn is_oid(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A short, printable quote of workspace text for an error.
fn clip(s: &str) -> String {
    s.chars().take(120).flat_map(char::escape_debug).collect()
}

/// A full ref name by git's rules (`git check-ref-format`), strict enough
/// that a glob over it means what it says.
///
/// # Errors
/// [`PktError::BadRef`] naming it.
pub fn check_ref(name: &str) -> Result<(), PktError> {
    let bad = || PktError::BadRef(clip(name));
    if !name.starts_with("refs/") || name.len() > 1024 || name.ends_with('/') || name.ends_with('.')
    {
        return Err(bad());
    }
    if name.contains("..") || name.contains("@{") || name.contains("//") || name.ends_with(".lock")
    {
        return Err(bad());
    }
    if name.bytes().any(|b| {
        b < 0x20 || b == 0x7f || matches!(b, b' ' | b'~' | b'^' | b':' | b'?' | b'*' | b'[' | b'\\')
    }) {
        return Err(bad());
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c.starts_with('.') || c.ends_with(".lock"))
    {
        return Err(bad());
    }
    Ok(())
}

/// Writes one pkt-line (for tests and for the laptop's own error reports).
#[must_use]
pub fn pkt_line(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
    out.extend_from_slice(payload);
    out
}

impl fmt::Display for RefUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_delete() {
            write!(f, "delete {}", self.name)
        } else if self.is_create() {
            write!(f, "create {}", self.name)
        } else {
            write!(f, "update {}", self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    fn request(lines: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend(pkt_line(l.as_bytes()));
        }
        out.extend_from_slice(b"0000PACK\x00\x00\x00\x02");
        out
    }

    fn read_all(data: &[u8]) -> Result<Commands, PktError> {
        match PushCommands::new().feed(data)? {
            Progress::Done(c) => Ok(c),
            Progress::NeedMore => Err(PktError::Unexpected("incomplete".into())),
        }
    }

    #[test]
    fn a_push_is_read_up_to_its_flush() {
        let data = request(&[
            format!("{A} {B} refs/heads/agent/x\0report-status side-band-64k agent=git/2.47\n"),
            format!("{B} {Z} refs/heads/old\n"),
        ]);
        let c = read_all(&data).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.updates.len(), 2);
        assert_eq!(c.updates[0].name, "refs/heads/agent/x");
        assert!(c.updates[1].is_delete() && !c.updates[0].is_delete());
        assert!(c.capabilities.contains(&"report-status".to_owned()));
        assert_eq!(&data[c.len..c.len + 4], b"PACK");
    }

    #[test]
    fn every_split_gives_the_same_answer() {
        let data = request(&[format!("{Z} {B} refs/heads/agent/new\0report-status\n")]);
        let whole = read_all(&data).unwrap_or_else(|e| panic!("{e}"));
        for cut in 0..data.len() {
            let mut r = PushCommands::new();
            let first = r.feed(&data[..cut]).unwrap_or_else(|e| panic!("{e}"));
            let got = match first {
                Progress::Done(c) => c,
                Progress::NeedMore => match r.feed(&data[cut..]) {
                    Ok(Progress::Done(c)) => c,
                    other => panic!("cut {cut}: {other:?}"),
                },
            };
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn hostile_requests_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"PACK\x00\x00\x00\x02".to_vec(), "pack first"),
            (b"zzzz".to_vec(), "bad length"),
            (b"0003".to_vec(), "length 3"),
            (b"0001".to_vec(), "v2 delim"),
            (b"0000".to_vec(), "empty"),
            (b"fff5".to_vec(), "over the maximum"),
            (request(&[format!("{A} {B} refs/heads/../x\n")]), "dot dot"),
            (request(&[format!("{A} {B} HEAD\n")]), "not under refs/"),
            (request(&[format!("{A} {B} refs/heads/a b\n")]), "space"),
            (request(&[format!("{A} {B}\n")]), "no name"),
            (request(&[format!("{A} XYZ refs/heads/x\n")]), "bad oid"),
            (
                request(&["push-cert\0report-status\n".to_owned()]),
                "push cert",
            ),
            (
                request(&[format!(
                    "{A} {B} refs/for/main\0report-status push-options\n"
                )]),
                "push options",
            ),
            (
                request(&[
                    format!("{A} {B} refs/heads/x\0a\n"),
                    format!("{A} {B} refs/heads/y\0b\n"),
                ]),
                "caps twice",
            ),
        ];
        for (data, what) in cases {
            assert!(read_all(&data).is_err(), "{what}: accepted");
        }
    }

    #[test]
    fn shallow_lines_before_the_commands_are_allowed() {
        let data = request(&[
            format!("shallow {A}\n"),
            format!("{A} {B} refs/heads/agent/x\0report-status\n"),
        ]);
        let c = read_all(&data).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.updates.len(), 1);
    }

    #[test]
    fn a_list_that_never_ends_is_cut_off() {
        let mut r = PushCommands::new();
        let line = pkt_line(format!("{A} {B} refs/heads/agent/x\n").as_bytes());
        let mut last = Ok(Progress::NeedMore);
        for _ in 0..(MAX_COMMAND_LIST / line.len() + 2) {
            last = r.feed(&line);
            if last.is_err() {
                break;
            }
        }
        assert_eq!(last, Err(PktError::TooLong));
    }

    #[test]
    fn ref_names() {
        for good in ["refs/heads/main", "refs/heads/agent/x-1", "refs/tags/v1.2"] {
            assert!(check_ref(good).is_ok(), "{good}");
        }
        for bad in [
            "refs/heads/",
            "refs/heads/x.lock",
            "refs/heads/.x",
            "refs/heads/a@{1}",
            "main",
            "refs//x",
            "refs/heads/x\u{7f}",
        ] {
            assert!(check_ref(bad).is_err(), "{bad}");
        }
    }
}
