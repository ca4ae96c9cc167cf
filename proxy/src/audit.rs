//! The audit log: every decision, one JSON line each, hash-chained, in
//! `$NEXUS_CONFIG_DIR/audit.jsonl` (0600), kept under a size budget by
//! rotating segments (see `store.rs`).
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
//! names, hosts, users), never values; JSON escaping keeps newlines, control
//! and bidi characters as `\u` escapes inside their field (`escape.rs`), and
//! every string is cut to a bounded length: a target is kept whole up to
//! the approval prompt's limit, so the log holds what was decided. A call
//! writes its own line (one `write` and one positioned write of the head,
//! under a lock) and is denied if it cannot (fail closed); a handoff to a
//! writer thread and back cost more than the write. A thread of its own
//! writes only the count lines of coalesced denials when their second ends.

mod escape;
mod store;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use escape::escape_json_text;
pub use store::{
    ANCHOR_FILE, DEFAULT_BUDGET, DENY_BYTES_PER_SECOND, HEAD_FILE, LOG_FILE, MIN_BUDGET,
};
/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Decisions kept in memory for `status`.
pub const RECENT: usize = 20;
/// Longest name field (workspace, rule, executable) kept in a line, in characters.
const MAX_NAME: usize = 256;
/// Longest target kept in a line, in characters: what an approval prompt
/// shows at most (longer requests needing approval are refused), so the log
/// keeps everything the user was asked about.
const MAX_TARGET: usize = crate::approvals::MAX_SHOWN_SUMMARY;
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
    /// Identical denials this line stands for: 1, or for the line that
    /// follows a denial, how often it was repeated within the next second.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

// serde's skip_serializing_if passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_one(n: &u64) -> bool {
    *n == 1
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

/// The writer's handle. Dropping it writes any denial still counting its
/// twins and stops the thread that closes coalescing windows.
#[derive(Debug)]
pub struct Audit {
    shared: Arc<Shared>,
    recent: Mutex<VecDeque<Entry>>,
}

/// The writer, shared by the calls and the window thread.
struct Shared {
    writer: Mutex<store::Writer>,
    /// Wakes the window thread: an earlier window to close, or the end.
    wake: Condvar,
    stop: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    fn writer(&self) -> MutexGuard<'_, store::Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes coalescing windows as they come due, until told to stop.
    fn close_windows(&self) {
        let mut writer = self.writer();
        while !self.stop.load(Ordering::Acquire) {
            let now = std::time::Instant::now();
            writer = match writer.due() {
                Some(due) if due <= now => {
                    if let Err(e) = writer.tick(now) {
                        tracing::error!(error = %e, "audit log");
                    }
                    continue;
                }
                Some(due) => {
                    self.wake
                        .wait_timeout(writer, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .wake
                    .wait(writer)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
        if let Err(e) = writer.flush() {
            tracing::error!(error = %e, "audit log");
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Taken so that the thread is either waiting (and woken) or sees `stop`.
        drop(self.shared.writer());
        self.shared.wake.notify_all();
    }
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
    let body = to_json_line(entry)?;
    let hash = hash_of(body.as_bytes());
    let open = body.strip_suffix('}').ok_or("entry is not a JSON object")?;
    Ok((format!("{open},\"hash\":\"{hash}\"}}\n"), hash))
}

/// An entry as one JSON object with every control and bidi character
/// escaped: what the log holds and what `audit tail --json` prints.
///
/// # Errors
/// When the entry cannot be serialized.
pub fn to_json_line(entry: &Entry) -> Result<String, String> {
    let json = serde_json::to_string(entry).map_err(|e| e.to_string())?;
    Ok(match escape_json_text(&json) {
        std::borrow::Cow::Borrowed(_) => json,
        std::borrow::Cow::Owned(escaped) => escaped,
    })
}

/// Splits a line into its body (what the hash covers) and the hash written.
fn unseal(line: &str) -> Option<(String, &str)> {
    let (open, tail) = line.rsplit_once(",\"hash\":\"")?;
    let hash = tail.strip_suffix("\"}")?;
    Some((format!("{open}}}"), hash))
}

impl Audit {
    /// Opens (or starts) the log in `dir` with the default budget.
    ///
    /// # Errors
    /// As [`Audit::open_with_budget`].
    pub fn open(dir: &Path) -> anyhow::Result<Audit> {
        Self::open_with_budget(dir, DEFAULT_BUDGET)
    }

    /// Opens (or starts) the log in `dir`, kept under `budget` bytes in all,
    /// and starts the thread that closes coalescing windows, which ends when
    /// the handle is dropped (writing any denial still waiting for its twins).
    ///
    /// # Errors
    /// When the files cannot be opened or the head is unreadable.
    pub fn open_with_budget(dir: &Path, budget: u64) -> anyhow::Result<Audit> {
        let writer = store::Writer::open(dir, budget.max(MIN_BUDGET))?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        std::thread::Builder::new()
            .name("audit-windows".into())
            .spawn({
                let shared = shared.clone();
                move || shared.close_windows()
            })?;
        Ok(Audit {
            shared,
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
            target: cut(&event.target, MAX_TARGET),
            decision: if event.allowed { "allow" } else { "deny" }.to_owned(),
            rule: event.rule.map(|r| cut(&r, MAX_NAME)),
            reason: cut(&event.reason, MAX_REASON),
            caller_pid: event.caller_pid,
            caller_exe: event.caller_exe.map(|e| cut(&e, MAX_NAME)),
            policy: policy.to_owned(),
            prev: String::new(),
            count: 1,
        };
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(entry.clone());
        }
        let mut writer = self.shared.writer();
        let due = writer.due();
        let taken = writer.take(entry, std::time::Instant::now());
        if writer.due() != due {
            self.shared.wake.notify_one();
        }
        taken
    }

    /// Writes any denial still waiting for identical ones (on shutdown, so
    /// the last count is on disk before the proxy exits).
    ///
    /// # Errors
    /// Why it could not be written.
    pub async fn flush(&self) -> Result<(), String> {
        self.shared.writer().flush()
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
    /// The oldest kept line does not follow the last line rotated out.
    #[error(
        "the oldest kept entry does not follow entry {0} named in {ANCHOR_FILE} (lines were removed from the start)"
    )]
    BadAnchor(u64),
    /// Something is wrong in a rotated segment.
    #[error("{file}: {error}")]
    InSegment {
        /// The segment's file name.
        file: String,
        /// What is wrong there (line numbers count in that file).
        error: Box<Tampered>,
    },
}

/// What an intact log holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Entries kept and checked.
    pub entries: u64,
    /// Entries rotated out to keep the log within its budget (their chain
    /// ends at `audit.anchor`, where the oldest kept entry picks it up).
    pub rotated_out: u64,
    /// Segment files read (rotated ones plus `audit.jsonl`).
    pub segments: usize,
}

/// The chain as far as it has been checked.
struct Chain {
    prev: String,
    seq: u64,
    entries: u64,
    /// The anchor, until the first kept line has been checked against it.
    start: Option<(u64, String)>,
}

impl Chain {
    /// Checks one segment's lines; errors count lines in that file.
    fn check(&mut self, file: File) -> Result<(), Result<Tampered, std::io::Error>> {
        for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
            let n = i + 1;
            let line = line.map_err(Err)?;
            let text = std::str::from_utf8(&line).map_err(|_| Ok(Tampered::Garbled(n)))?;
            let (body, written) = unseal(text).ok_or(Ok(Tampered::Garbled(n)))?;
            if hash_of(body.as_bytes()) != written {
                return Err(Ok(Tampered::Changed(n)));
            }
            let entry: Entry = serde_json::from_str(&body).map_err(|_| Ok(Tampered::Garbled(n)))?;
            if self.entries == 0 {
                match &self.start {
                    // A segment left behind by a rotation cut short (the
                    // anchor was written, the file not yet removed).
                    Some((anchor, _)) if entry.seq <= *anchor => continue,
                    Some((anchor, hash)) if entry.seq != anchor + 1 || entry.prev != *hash => {
                        return Err(Ok(Tampered::BadAnchor(*anchor)));
                    }
                    None if entry.seq != 1 || entry.prev != GENESIS => {
                        return Err(Ok(Tampered::BadStart));
                    }
                    _ => {}
                }
            } else if entry.prev != self.prev || entry.seq != self.seq + 1 {
                return Err(Ok(Tampered::Broken(n)));
            }
            self.prev = written.to_owned();
            self.seq = entry.seq;
            self.entries += 1;
        }
        Ok(())
    }
}

/// Checks the chain of every segment in `dir` (rotated ones, oldest first,
/// then `audit.jsonl`) from `audit.anchor` (or the start) to `audit.head`.
///
/// # Errors
/// `Err(Ok(_))`: tampering found; `Err(Err(_))`: the files cannot be read.
pub fn verify(dir: &Path) -> Result<Verified, Result<Tampered, std::io::Error>> {
    let anchor = store::read_mark(&dir.join(ANCHOR_FILE)).map_err(Err)?;
    let head = store::read_mark(&dir.join(HEAD_FILE)).map_err(Err)?;
    let mut chain = Chain {
        prev: anchor
            .as_ref()
            .map_or_else(|| GENESIS.to_owned(), |a| a.1.clone()),
        seq: anchor.as_ref().map_or(0, |a| a.0),
        entries: 0,
        start: anchor.clone(),
    };
    let mut segments = 0;
    for path in store::rotated_segments(dir).map_err(Err)? {
        chain.check(File::open(&path).map_err(Err)?).map_err(|e| {
            e.map(|error| Tampered::InSegment {
                file: path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                error: Box::new(error),
            })
        })?;
        segments += 1;
    }
    match File::open(dir.join(LOG_FILE)) {
        Ok(f) => {
            chain.check(f)?;
            segments += 1;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Err(e)),
    }
    let rotated_out = anchor.as_ref().map_or(0, |a| a.0);
    let verified = Verified {
        entries: chain.entries,
        rotated_out,
        segments,
    };
    match head {
        None if chain.seq == 0 => Ok(verified),
        None => Err(Ok(Tampered::NoHead)),
        Some((h_seq, _)) if h_seq != chain.seq => Err(Ok(Tampered::Truncated {
            found: chain.seq,
            expected: h_seq,
        })),
        Some((_, h_hash)) if h_hash != chain.prev => Err(Ok(Tampered::HeadMismatch)),
        Some(_) => Ok(verified),
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
        assert_eq!(verify(tmp.path()).ok().map(|v| v.entries), Some(0));
        write(tmp.path(), &["a", "b"]).await;
        write(tmp.path(), &["c"]).await;
        assert_eq!(verify(tmp.path()).ok().map(|v| v.entries), Some(3));
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
        assert_eq!(verify(tmp.path()).ok().map(|v| v.entries), Some(2));
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
        let mut w = store::Writer::broken(tmp.path(), open_ro(), open_ro(), 4);
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
            count: 1,
        };
        assert!(
            w.append(entry)
                .is_err_and(|e| e.contains("writing the audit log"))
        );
        assert_eq!(w.seq(), 4);
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

    fn deny(target: &str) -> Event {
        Event {
            allowed: false,
            reason: "denied by the laptop's policy".into(),
            ..event(target)
        }
    }

    fn dir_size(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// A flood of allowed calls stays within the budget; the chain still
    /// verifies from the anchor, and says how many entries went.
    #[tokio::test]
    async fn the_log_stays_within_its_budget_and_still_verifies() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let budget = MIN_BUDGET;
        {
            let audit =
                Audit::open_with_budget(tmp.path(), budget).unwrap_or_else(|e| panic!("{e}"));
            for i in 0..2000 {
                let target = format!("token-{i}-{}", "x".repeat(100));
                audit
                    .record(event(&target), "abc")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        assert!(
            dir_size(tmp.path()) <= budget,
            "{} > {budget}",
            dir_size(tmp.path())
        );
        let v = verify(tmp.path()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(v.entries + v.rotated_out, 2000, "{v:?}");
        assert!(v.rotated_out > 0 && v.segments > 1, "{v:?}");
        // The chain goes on across a restart with a smaller budget.
        {
            let audit =
                Audit::open_with_budget(tmp.path(), budget).unwrap_or_else(|e| panic!("{e}"));
            audit
                .record(event("after"), "abc")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let again = verify(tmp.path()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(again.entries + again.rotated_out, 2001);
    }

    /// Removing the oldest kept segment by hand, or changing a line in a
    /// rotated segment, shows.
    #[tokio::test]
    async fn tampering_with_rotated_segments_shows() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        {
            let audit =
                Audit::open_with_budget(tmp.path(), MIN_BUDGET).unwrap_or_else(|e| panic!("{e}"));
            for i in 0..1500 {
                audit
                    .record(event(&format!("t{i:0100}")), "abc")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let segs = store::rotated_segments(tmp.path()).unwrap_or_default();
        assert!(segs.len() >= 2, "{segs:?}");
        let text = std::fs::read_to_string(&segs[1]).unwrap_or_default();
        std::fs::write(&segs[1], text.replacen("\"t0", "\"x0", 1))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            verify(tmp.path()),
            Err(Ok(Tampered::InSegment { ref error, .. })) if **error == Tampered::Changed(1)
        ));
        std::fs::write(&segs[1], text).unwrap_or_else(|e| panic!("{e}"));
        assert!(verify(tmp.path()).is_ok());
        std::fs::remove_file(&segs[0]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            verify(tmp.path()),
            Err(Ok(Tampered::InSegment { ref error, .. })) if matches!(**error, Tampered::BadAnchor(_))
        ));
    }

    /// A workspace repeating a refused call writes the first at once and
    /// then one line a second with the count of repeats; an allowed call in
    /// between keeps the order.
    #[tokio::test]
    async fn identical_denials_are_one_line_with_a_count() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        {
            let audit = Audit::open(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
            for _ in 0..500 {
                audit
                    .record(deny("prod-db"), "abc")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            audit
                .record(event("ok"), "abc")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            audit
                .record(deny("prod-db"), "abc")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            audit.flush().await.unwrap_or_else(|e| panic!("{e}"));
        }
        let (read, _) = read_lines(&log_path(tmp.path()), 0).unwrap_or_default();
        let summary: Vec<(String, String, u64)> = read
            .iter()
            .map(|l| {
                (
                    l.entry.target.clone(),
                    l.entry.decision.clone(),
                    l.entry.count,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("prod-db".into(), "deny".into(), 1),
                ("prod-db".into(), "deny".into(), 499),
                ("ok".into(), "allow".into(), 1),
                ("prod-db".into(), "deny".into(), 1),
            ]
        );
        assert_eq!(verify(tmp.path()).ok().map(|v| v.entries), Some(4));
    }

    /// The log keeps the whole target an approval prompt could show, and
    /// no control, C1 or bidi character raw.
    #[tokio::test]
    async fn the_line_holds_what_was_decided_and_no_raw_controls() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let long = format!("deploy {} DANGEROUS-ARG", "a".repeat(300));
        let hostile = "x\u{9b}31m\u{7f}\u{202e}gpj.exe";
        write(tmp.path(), &[&long, hostile]).await;
        let raw = std::fs::read_to_string(log_path(tmp.path())).unwrap_or_default();
        assert!(raw.contains("DANGEROUS-ARG"), "the target was cut");
        assert!(
            raw.chars()
                .all(|c| c == '\n' || !c.is_control() && !('\u{2028}'..='\u{206f}').contains(&c)),
            "{raw:?}"
        );
        assert!(raw.contains("\\u009b") && raw.contains("\\u202e"), "{raw}");
        let (read, _) = read_lines(&log_path(tmp.path()), 0).unwrap_or_default();
        assert_eq!(read[1].entry.target, hostile);
        let json = to_json_line(&read[1].entry).unwrap_or_default();
        assert!(json.is_ascii(), "{json}");
        assert_eq!(verify(tmp.path()).ok().map(|v| v.entries), Some(2));
    }

    /// A workspace varying the names of refused calls cannot flood the log:
    /// past 32 KiB of denial lines in a second its denials are counted into
    /// one line, while another workspace's denials and every allowed call
    /// are still written one by one.
    #[test]
    fn a_workspace_cannot_flush_the_log_with_distinct_denials() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut w =
            store::Writer::open(tmp.path(), DEFAULT_BUDGET).unwrap_or_else(|e| panic!("{e}"));
        let t0 = std::time::Instant::now();
        let entry = |ws: &str, target: String, allowed: bool| Entry {
            seq: 0,
            ts: 0,
            workspace: ws.into(),
            tool: "token".into(),
            target,
            decision: if allowed { "allow" } else { "deny" }.into(),
            rule: None,
            reason: "no".into(),
            caller_pid: None,
            caller_exe: None,
            policy: "p".into(),
            prev: String::new(),
            count: 1,
        };
        for i in 0..1000 {
            let name = format!("{i}-{}", "\u{e0041}".repeat(900));
            w.take(entry("flood", name, false), t0)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        w.take(entry("flood", "ok".into(), true), t0)
            .unwrap_or_else(|e| panic!("{e}"));
        w.take(entry("quiet", "other".into(), false), t0)
            .unwrap_or_else(|e| panic!("{e}"));
        w.tick(t0 + store::COALESCE)
            .unwrap_or_else(|e| panic!("{e}"));
        let (read, _) = read_lines(&log_path(tmp.path()), 0).unwrap_or_default();
        let flood_lines = read
            .iter()
            .filter(|l| {
                l.entry.workspace == "flood"
                    && l.entry.decision == "deny"
                    && l.entry.tool == "token"
            })
            .count();
        assert!(
            flood_lines < 10,
            "{flood_lines} denial lines written one by one"
        );
        let over = read
            .iter()
            .find(|l| l.entry.tool == "audit")
            .map(|l| l.entry.count);
        assert_eq!(
            over,
            Some(1000 - flood_lines as u64),
            "the count of denials over the rate"
        );
        assert!(
            read.iter()
                .any(|l| l.entry.target == "ok" && l.entry.decision == "allow")
        );
        assert!(read.iter().any(|l| l.entry.workspace == "quiet"));
        let size = std::fs::metadata(log_path(tmp.path()))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(
            size < 2 * store::DENY_BYTES_PER_SECOND + 8192,
            "{size} bytes for one second"
        );
        assert!(verify(tmp.path()).is_ok());
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_ts(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ts(1_709_251_199_000), "2024-02-29T23:59:59Z");
        assert_eq!(format_ts(1_798_761_600_000), "2027-01-01T00:00:00Z");
    }
}
