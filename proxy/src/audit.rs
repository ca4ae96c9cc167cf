//! The audit log: every decision, one JSON line each, hash-chained, in
//! `$NEXUS_CONFIG_DIR/audit.jsonl` (0600).
//!
//! Each line is a JSON object whose last field is `"hash"`: the SHA-256 of
//! the line's text before that field (the object up to and without
//! `,"hash":...`, closed with `}`). Its `prev` field is the hash of the line
//! before (64 zeros for the first), and `seq` counts from 1. The hash and
//! sequence number of the last line are also written to `audit.head` after
//! each append, so that removing lines from the end shows as well:
//! [`verify`] names the first line that was changed, removed, inserted or
//! moved, or says that the tail is gone.
//!
//! What a line holds comes from the workspace only through names (token
//! names, hosts, users), never values; JSON escaping keeps newlines and
//! control characters inside their field, and every string is cut to a
//! bounded length. Writes happen on a dedicated thread; a call waits for its
//! line to be written, and is denied if it cannot be (fail closed).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// The log's file name in the configuration directory.
pub const LOG_FILE: &str = "audit.jsonl";
/// The head file's name: `SEQ HASH` of the last line.
pub const HEAD_FILE: &str = "audit.head";
/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Lines waiting to be written; calls beyond wait (up to [`WRITE_TIMEOUT`]).
pub const QUEUE: usize = 1024;
/// How long a call waits for its line to be written before it is denied.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Decisions kept in memory for `status`.
pub const RECENT: usize = 20;
/// Longest name field (target, executable) kept in a line, in characters.
const MAX_NAME: usize = 256;
/// Longest reason kept in a line, in characters.
const MAX_REASON: usize = 1024;

/// One decision, as the caller describes it (no secret values!).
#[derive(Clone, Debug, Default)]
pub struct Event {
    /// The laptop's name of the workspace.
    pub workspace: String,
    /// `token`, `ssh`, ...
    pub tool: String,
    /// What was asked for: a token name, `git@github.com`, ...
    pub target: String,
    /// Allowed or not.
    pub allowed: bool,
    /// The deciding rule (`file:line`), if any.
    pub rule: Option<String>,
    /// Why, in one line.
    pub reason: String,
    /// Caller pid, as the workspace reported it.
    pub caller_pid: Option<u32>,
    /// Caller executable, as the workspace reported it.
    pub caller_exe: Option<String>,
}

/// One line of the log, without its hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// 1, 2, 3, ...
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub ts: u64,
    /// Workspace name.
    pub workspace: String,
    /// Tool.
    pub tool: String,
    /// What was asked for.
    pub target: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// Deciding rule.
    pub rule: Option<String>,
    /// Why.
    pub reason: String,
    /// Reported caller pid.
    pub caller_pid: Option<u32>,
    /// Reported caller executable.
    pub caller_exe: Option<String>,
    /// Digest of the policy in force.
    pub policy: String,
    /// Hash of the previous line.
    pub prev: String,
}

/// A line as read back: the entry and its hash.
#[derive(Clone, Debug, Deserialize)]
pub struct Line {
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
    /// Its hash.
    pub hash: String,
}

type Job = (Entry, oneshot::Sender<Result<(), String>>);

/// The writer's handle.
#[derive(Debug)]
pub struct Audit {
    tx: mpsc::Sender<Job>,
    recent: Mutex<VecDeque<Entry>>,
}

/// Cuts a string to `max` characters.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The hash of a line body.
fn hash_of(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// `body` with its hash appended as the last field, and the hash.
fn seal(entry: &Entry) -> Result<(String, String), String> {
    let body = serde_json::to_string(entry).map_err(|e| e.to_string())?;
    let hash = hash_of(body.as_bytes());
    let open = body.strip_suffix('}').ok_or("entry is not a JSON object")?;
    Ok((format!("{open},\"hash\":\"{hash}\"}}\n"), hash))
}

/// Splits a line into its body (what the hash covers) and the hash written.
fn unseal(line: &str) -> Option<(String, &str)> {
    let (open, tail) = line.rsplit_once(",\"hash\":\"")?;
    let hash = tail.strip_suffix("\"}")?;
    Some((format!("{open}}}"), hash))
}

/// Reads `SEQ HASH` from the head file.
fn read_head(path: &Path) -> std::io::Result<Option<(u64, String)>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut parts = text.split_whitespace();
            match (parts.next().and_then(|s| s.parse().ok()), parts.next()) {
                (Some(seq), Some(hash)) => Ok(Some((seq, hash.to_owned()))),
                _ => Err(std::io::Error::other(format!(
                    "{} is not `SEQ HASH`",
                    path.display()
                ))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The last complete line of the log, read from its end.
fn last_line(file: &mut File) -> std::io::Result<Option<String>> {
    const TAIL: u64 = 64 << 10;
    let len = file.seek(SeekFrom::End(0))?;
    let start = len.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .lines()
        .rev()
        .find(|l| !l.is_empty())
        .map(str::to_owned))
}

/// Opens `path` for appending, created 0600.
fn open_private(path: &Path, append: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    if append {
        o.append(true).read(true);
    } else {
        o.write(true);
    }
    o.create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

/// Writes `bytes` at offset 0 in one positioned write.
#[cfg(unix)]
fn write_at_start(file: &File, bytes: &[u8]) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, 0)
}

/// Writes `bytes` at offset 0.
#[cfg(not(unix))]
fn write_at_start(mut file: &File, bytes: &[u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(bytes)
}

/// The writer thread's state.
struct Writer {
    log: File,
    head: File,
    seq: u64,
    prev: String,
}

impl Writer {
    fn append(&mut self, mut entry: Entry) -> Result<(), String> {
        entry.seq = self.seq + 1;
        entry.prev = self.prev.clone();
        let (line, hash) = seal(&entry)?;
        self.log
            .write_all(line.as_bytes())
            .and_then(|()| self.log.flush())
            .map_err(|e| format!("writing the audit log: {e}"))?;
        self.seq = entry.seq;
        self.prev = hash;
        // Fixed width (the hash is always 64 hex digits), one positioned
        // write in place: a reader never sees half of it.
        let head = format!("{:020} {}\n", self.seq, self.prev);
        write_at_start(&self.head, head.as_bytes())
            .map_err(|e| format!("writing the audit head: {e}"))
    }
}

impl Audit {
    /// Opens (or starts) the log in `dir` and starts its writer thread,
    /// which ends when the last handle is dropped.
    ///
    /// The chain continues from the head file when there is one, so that
    /// lines removed from the end while the proxy was stopped still show.
    ///
    /// # Errors
    /// When the files cannot be opened or the head is unreadable.
    pub fn open(dir: &Path) -> anyhow::Result<Audit> {
        let log_path = dir.join(LOG_FILE);
        let mut log = open_private(&log_path, true)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", log_path.display()))?;
        // Not a device or a pipe: reading its end must end.
        if !log.metadata()?.is_file() {
            anyhow::bail!("{} is not a regular file", log_path.display());
        }
        let head_path = dir.join(HEAD_FILE);
        let (seq, prev) = match read_head(&head_path)? {
            Some(head) => head,
            None => match last_line(&mut log)? {
                Some(line) => {
                    let parsed: Line = serde_json::from_str(&line).map_err(|e| {
                        anyhow::anyhow!(
                            "the last line of {} is not an audit entry ({e}); move the file \
                             away to start a new log",
                            log_path.display()
                        )
                    })?;
                    tracing::warn!(
                        "{} is missing; continuing the chain from the log's last line",
                        head_path.display()
                    );
                    (parsed.entry.seq, parsed.hash)
                }
                None => (0, GENESIS.to_owned()),
            },
        };
        let head = open_private(&head_path, false)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", head_path.display()))?;
        // From here on every head has the same length.
        head.set_len(0)?;
        write_at_start(&head, format!("{seq:020} {prev}\n").as_bytes())?;
        let mut writer = Writer {
            log,
            head,
            seq,
            prev,
        };
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                while let Some((entry, done)) = rx.blocking_recv() {
                    let _ = done.send(writer.append(entry));
                }
            })?;
        Ok(Audit {
            tx,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        })
    }

    /// Appends one decision and waits until it is written.
    ///
    /// # Errors
    /// Why it could not be written; the caller must then deny.
    pub async fn record(&self, event: Event, policy: &str) -> Result<(), String> {
        let entry = Entry {
            seq: 0,
            ts: u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis()),
            )
            .unwrap_or(u64::MAX),
            workspace: cut(&event.workspace, MAX_NAME),
            tool: cut(&event.tool, MAX_NAME),
            target: cut(&event.target, MAX_NAME),
            decision: if event.allowed { "allow" } else { "deny" }.to_owned(),
            rule: event.rule.map(|r| cut(&r, MAX_NAME)),
            reason: cut(&event.reason, MAX_REASON),
            caller_pid: event.caller_pid,
            caller_exe: event.caller_exe.map(|e| cut(&e, MAX_NAME)),
            policy: policy.to_owned(),
            prev: String::new(),
        };
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(entry.clone());
        }
        let (done, written) = oneshot::channel();
        let sent = tokio::time::timeout(WRITE_TIMEOUT, self.tx.send((entry, done))).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err("the audit writer has stopped".into()),
            Err(_) => return Err("the audit log is backed up".into()),
        }
        match tokio::time::timeout(WRITE_TIMEOUT, written).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the audit writer has stopped".into()),
            Err(_) => Err("the audit log did not answer in time".into()),
        }
    }

    /// The last decisions, oldest first (`seq` and `prev` not filled in).
    pub fn recent(&self) -> Vec<Entry> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// What [`verify`] found wrong.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Tampered {
    /// A line is not an audit entry at all.
    #[error("line {0}: not an audit entry (damaged, or written by hand)")]
    Garbled(usize),
    /// A line's content does not match its own hash.
    #[error("line {0}: changed after it was written (its hash does not match its content)")]
    Changed(usize),
    /// A line does not follow the one before it.
    #[error("line {0}: does not follow line {prev} (a line was removed, inserted or moved here)", prev = .0 - 1)]
    Broken(usize),
    /// The first line is not a start of the log.
    #[error("line 1: is not the first entry of a log (lines were removed from the start)")]
    BadStart,
    /// The log ends earlier than the head says.
    #[error(
        "the log ends at entry {found} but {HEAD_FILE} says {expected}: lines were removed from the end"
    )]
    Truncated {
        /// The last sequence number in the log.
        found: u64,
        /// The head's.
        expected: u64,
    },
    /// The head names another last line.
    #[error("the last line does not match {HEAD_FILE}: the end of the log was replaced")]
    HeadMismatch,
    /// There is a log but no head.
    #[error("{HEAD_FILE} is missing, so a truncated end would not show")]
    NoHead,
}

/// Checks the chain of `dir/audit.jsonl` against `dir/audit.head`; the
/// number of entries when intact.
///
/// # Errors
/// `Err(Ok(_))`: tampering found; `Err(Err(_))`: the files cannot be read.
pub fn verify(dir: &Path) -> Result<u64, Result<Tampered, std::io::Error>> {
    let log = match File::open(dir.join(LOG_FILE)) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Err(e)),
    };
    let head = read_head(&dir.join(HEAD_FILE)).map_err(Err)?;
    let mut prev = GENESIS.to_owned();
    let mut seq = 0u64;
    if let Some(log) = log {
        for (i, line) in BufReader::new(log).split(b'\n').enumerate() {
            let n = i + 1;
            let line = line.map_err(Err)?;
            let text = std::str::from_utf8(&line).map_err(|_| Ok(Tampered::Garbled(n)))?;
            let (body, written) = unseal(text).ok_or(Ok(Tampered::Garbled(n)))?;
            if hash_of(body.as_bytes()) != written {
                return Err(Ok(Tampered::Changed(n)));
            }
            let entry: Entry = serde_json::from_str(&body).map_err(|_| Ok(Tampered::Garbled(n)))?;
            if n == 1 && (entry.seq != 1 || entry.prev != GENESIS) {
                return Err(Ok(Tampered::BadStart));
            }
            if entry.prev != prev || entry.seq != seq + 1 {
                return Err(Ok(Tampered::Broken(n)));
            }
            prev = written.to_owned();
            seq = entry.seq;
        }
    }
    match head {
        None if seq == 0 => Ok(0),
        None => Err(Ok(Tampered::NoHead)),
        Some((h_seq, _)) if h_seq != seq => Err(Ok(Tampered::Truncated {
            found: seq,
            expected: h_seq,
        })),
        Some((_, h_hash)) if h_hash != prev => Err(Ok(Tampered::HeadMismatch)),
        Some(_) => Ok(seq),
    }
}

/// Reads every line of the log that parses (for `audit tail`).
///
/// # Errors
/// When the file cannot be read.
pub fn read_lines(path: &Path, from: u64) -> std::io::Result<(Vec<Line>, u64)> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = file.seek(SeekFrom::End(0))?;
    let from = if from > len { 0 } else { from };
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    // Only whole lines; a line being written is read next time.
    let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = String::from_utf8_lossy(&buf[..whole])
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok((lines, from + whole as u64))
}

/// `YYYY-MM-DDTHH:MM:SSZ` for milliseconds since the epoch.
pub fn format_ts(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One line for humans: time, workspace, tool, target, decision, rule, reason.
pub fn describe(entry: &Entry) -> String {
    let clean = |s: &str| crate::tools::clip(s);
    format!(
        "{} {} {} {} {} {} {}",
        format_ts(entry.ts),
        clean(&entry.workspace),
        clean(&entry.tool),
        clean(&entry.target),
        entry.decision,
        entry
            .rule
            .as_deref()
            .map_or_else(|| "default".to_owned(), clean),
        clean(&entry.reason),
    )
}

/// The log's path in `dir`.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(target: &str) -> Event {
        Event {
            workspace: "dev".into(),
            tool: "token".into(),
            target: target.into(),
            allowed: true,
            rule: Some("p.toml:3".into()),
            reason: "ok".into(),
            caller_pid: Some(7),
            caller_exe: Some("/bin/sh".into()),
        }
    }

    async fn write(dir: &Path, targets: &[&str]) {
        let audit = Audit::open(dir).unwrap_or_else(|e| panic!("{e}"));
        for t in targets {
            audit
                .record(event(t), "abc")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(LOG_FILE))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn put(dir: &Path, lines: &[String]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(dir.join(LOG_FILE), text).unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn the_chain_verifies_and_survives_a_restart() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(verify(tmp.path()).ok(), Some(0));
        write(tmp.path(), &["a", "b"]).await;
        write(tmp.path(), &["c"]).await;
        assert_eq!(verify(tmp.path()).ok(), Some(3));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tmp.path().join(LOG_FILE))
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(mode, 0o600);
        }
    }

    #[tokio::test]
    async fn every_kind_of_tampering_is_named() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write(tmp.path(), &["a", "b", "c", "d"]).await;
        let good = lines(tmp.path());
        let head = std::fs::read(tmp.path().join(HEAD_FILE)).unwrap_or_default();
        let check = |ls: &[String]| {
            put(tmp.path(), ls);
            let _ = std::fs::write(tmp.path().join(HEAD_FILE), &head);
            verify(tmp.path()).err().and_then(Result::ok)
        };
        let mut changed = good.clone();
        changed[1] = changed[1].replace("\"b\"", "\"x\"");
        assert_eq!(check(&changed), Some(Tampered::Changed(2)));
        let mut removed = good.clone();
        removed.remove(2);
        assert_eq!(check(&removed), Some(Tampered::Broken(3)));
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        assert_eq!(check(&swapped), Some(Tampered::Broken(2)));
        assert_eq!(
            check(&good[..3]),
            Some(Tampered::Truncated {
                found: 3,
                expected: 4
            })
        );
        assert_eq!(check(&good[1..]), Some(Tampered::BadStart));
        let mut garbled = good.clone();
        garbled[0].push('x');
        assert_eq!(check(&garbled), Some(Tampered::Garbled(1)));
        assert_eq!(check(&good), None);
        let _ = std::fs::remove_file(tmp.path().join(HEAD_FILE));
        assert_eq!(
            verify(tmp.path()).err().and_then(Result::ok),
            Some(Tampered::NoHead)
        );
    }

    #[tokio::test]
    async fn a_truncated_tail_still_shows_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write(tmp.path(), &["a", "b", "c"]).await;
        let good = lines(tmp.path());
        put(tmp.path(), &good[..2]);
        // The proxy starts again and appends: the chain goes on from the
        // head, so the removal is still found.
        write(tmp.path(), &["d"]).await;
        assert_eq!(
            verify(tmp.path()).err().and_then(Result::ok),
            Some(Tampered::Broken(3))
        );
    }

    #[tokio::test]
    async fn hostile_names_stay_in_their_field() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let forged = "x\"}\n{\"seq\":99,\"decision\":\"allow\"\u{1b}[2J\u{0}";
        let huge = "y".repeat(1 << 20);
        write(tmp.path(), &[forged, &huge]).await;
        let ls = lines(tmp.path());
        assert_eq!(ls.len(), 2, "one line per decision");
        assert!(ls[1].len() < 4096, "names are cut");
        assert_eq!(verify(tmp.path()).ok(), Some(2));
        let (read, _) = read_lines(&log_path(tmp.path()), 0).unwrap_or_default();
        assert_eq!(read[0].entry.target, forged);
        let shown = describe(&read[0].entry);
        assert!(
            !shown.contains('\n') && !shown.contains('\u{1b}'),
            "{shown}"
        );
    }

    #[test]
    fn a_failed_write_is_an_error_and_the_chain_does_not_advance() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("ro");
        std::fs::write(&path, "").unwrap_or_else(|e| panic!("{e}"));
        let open_ro = || File::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut w = Writer {
            log: open_ro(),
            head: open_ro(),
            seq: 4,
            prev: GENESIS.to_owned(),
        };
        let entry = Entry {
            seq: 0,
            ts: 0,
            workspace: "dev".into(),
            tool: "token".into(),
            target: "a".into(),
            decision: "allow".into(),
            rule: None,
            reason: String::new(),
            caller_pid: None,
            caller_exe: None,
            policy: String::new(),
            prev: String::new(),
        };
        assert!(
            w.append(entry)
                .is_err_and(|e| e.contains("writing the audit log"))
        );
        assert_eq!(w.seq, 4);
    }

    #[test]
    fn a_log_that_is_not_a_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/dev/full", tmp.path().join(LOG_FILE))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(Audit::open(tmp.path()).is_err());
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_ts(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ts(1_709_251_199_000), "2024-02-29T23:59:59Z");
        assert_eq!(format_ts(1_798_761_600_000), "2027-01-01T00:00:00Z");
    }
}
