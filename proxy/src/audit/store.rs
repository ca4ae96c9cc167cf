//! Where audit lines go: segments under a size budget, one hash chain.
//!
//! The active segment is `audit.jsonl`. Once it holds a segment's share of
//! the budget it is renamed `audit-<FIRST SEQ>.jsonl` and a new one starts;
//! then the oldest segments are removed until everything fits the budget.
//! Before a segment goes, the `SEQ HASH` of its last line is written to
//! `audit.anchor`, so the chain still starts somewhere known: `verify`
//! checks that the oldest kept line follows the anchor, and says how many
//! entries were rotated out.
//!
//! A denial is written at once; identical ones (same workspace, tool,
//! target, rule and reason) that follow within a second are counted and
//! written as one more line with that `count`: a workspace that repeats a
//! refused call cannot grow the log faster than its distinct calls.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Entry, GENESIS, Line, seal};

/// The log's file name in the configuration directory (the active segment).
pub const LOG_FILE: &str = "audit.jsonl";
/// The head file's name: `SEQ HASH` of the last line.
pub const HEAD_FILE: &str = "audit.head";
/// `SEQ HASH` of the last line rotated out.
pub const ANCHOR_FILE: &str = "audit.anchor";
/// Default total size of the audit log (`run --audit-max-size`).
pub const DEFAULT_BUDGET: u64 = 512 << 20;
/// The smallest budget `run --audit-max-size` takes.
pub const MIN_BUDGET: u64 = 64 << 10;
/// Segments a budget is cut into: a rotation frees about this share.
const SEGMENTS: u64 = 8;
/// Identical denials within this window are one line with a count.
pub const COALESCE: Duration = Duration::from_secs(1);
/// Bytes of denial lines one workspace may add to the log a second; beyond
/// that its denials are counted, and one line says how many when the
/// second is over. A workspace varying its refused names (each line up to
/// ~12 KB escaped) could otherwise turn the whole budget over in seconds
/// and push the lines of earlier allowed calls out of the log.
pub const DENY_BYTES_PER_SECOND: u64 = 32 << 10;

/// A rotated segment's file name: `audit-<FIRST SEQ, 20 digits>.jsonl`.
fn segment_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.jsonl")
}

/// The rotated segments in `dir`, oldest first.
///
/// # Errors
/// When the directory cannot be read.
pub fn rotated_segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let first = name
            .strip_prefix("audit-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            found.push((first, item.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Reads `SEQ HASH` from a head or anchor file.
pub fn read_mark(path: &Path) -> std::io::Result<Option<(u64, String)>> {
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

/// The first line of a segment, parsed.
fn first_entry(path: &Path) -> std::io::Result<Option<Line>> {
    let mut line = String::new();
    BufReader::new(File::open(path)?).read_line(&mut line)?;
    Ok(serde_json::from_str(line.trim_end()).ok())
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

/// Opens `path` for appending (or writing), created 0600.
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

/// `SEQ HASH` in a fixed width (the hash is always 64 hex digits), so one
/// positioned write replaces it whole: a reader never sees half of it.
fn mark(seq: u64, hash: &str) -> String {
    format!("{seq:020} {hash}\n")
}

/// Writes a `SEQ HASH` file anew (open, truncate, write).
fn write_mark(path: &Path, seq: u64, hash: &str) -> std::io::Result<()> {
    let file = open_private(path, false)?;
    file.set_len(0)?;
    write_at_start(&file, mark(seq, hash).as_bytes())?;
    file.sync_data()
}

/// The last denial written, and the identical ones counted since.
struct Pending {
    /// The denial; its `count` is the repeats seen since it was written.
    entry: Entry,
    since: Instant,
}

/// Whether two entries are the same denial (all but time and caller pid).
fn same_denial(a: &Entry, b: &Entry) -> bool {
    a.decision == "deny"
        && b.decision == "deny"
        && a.workspace == b.workspace
        && a.tool == b.tool
        && a.target == b.target
        && a.rule == b.rule
        && a.reason == b.reason
        && a.caller_exe == b.caller_exe
        && a.policy == b.policy
}

/// One workspace's denial lines in the current second.
struct DenyWindow {
    since: Instant,
    bytes: u64,
    /// Denials not written one by one, and the last of them (for its
    /// workspace and policy digest).
    over: Option<(u64, Entry)>,
}

/// The line that stands for the denials a workspace made over its rate.
fn over_line(n: u64, last: Entry) -> Entry {
    Entry {
        tool: "audit".into(),
        target: "(denials over the audit rate)".into(),
        decision: "deny".into(),
        rule: None,
        reason: format!(
            "{n} more denials from this workspace within one second were not written one by \
             one (over {} KiB of denial lines a second)",
            DENY_BYTES_PER_SECOND >> 10
        ),
        caller_pid: None,
        caller_exe: None,
        count: n,
        ..last
    }
}

/// The audit log's writing state, behind the lock every call takes.
pub(super) struct Writer {
    dir: PathBuf,
    log: File,
    head: File,
    seq: u64,
    prev: String,
    /// Bytes in the active segment, and the sequence number it starts at.
    active: (u64, u64),
    /// Rotated segments, oldest first, with their sizes.
    rotated: VecDeque<(PathBuf, u64)>,
    budget: u64,
    pending: Option<Pending>,
    denials: std::collections::HashMap<String, DenyWindow>,
}

impl Writer {
    /// Opens (or starts) the log in `dir` under `budget` bytes.
    ///
    /// The chain continues from the head file when there is one, so that
    /// lines removed from the end while the proxy was stopped still show.
    pub(super) fn open(dir: &Path, budget: u64) -> anyhow::Result<Writer> {
        let log_path = dir.join(LOG_FILE);
        let mut log = open_private(&log_path, true)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", log_path.display()))?;
        // Not a device or a pipe: reading its end must end.
        if !log.metadata()?.is_file() {
            anyhow::bail!("{} is not a regular file", log_path.display());
        }
        let head_path = dir.join(HEAD_FILE);
        let (seq, prev) = match read_mark(&head_path)? {
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
        write_at_start(&head, mark(seq, &prev).as_bytes())?;
        let size = log.metadata()?.len();
        let first = match first_entry(&log_path)? {
            Some(line) if size > 0 => line.entry.seq,
            _ => seq + 1,
        };
        let rotated = rotated_segments(dir)?
            .into_iter()
            .map(|p| {
                let len = std::fs::metadata(&p).map_or(0, |m| m.len());
                (p, len)
            })
            .collect();
        let mut writer = Writer {
            dir: dir.to_owned(),
            log,
            head,
            seq,
            prev,
            active: (size, first),
            rotated,
            budget,
            pending: None,
            denials: std::collections::HashMap::new(),
        };
        // A budget lowered since the last run applies at once.
        writer.prune().map_err(|e| anyhow::anyhow!(e))?;
        Ok(writer)
    }

    /// Takes one entry: a repeat of the last denial within [`COALESCE`] is
    /// only counted; a denial over its workspace's [`DENY_BYTES_PER_SECOND`]
    /// too; anything else is written now (after the count of the repeats,
    /// if any, in order).
    pub(super) fn take(&mut self, entry: Entry, now: Instant) -> Result<(), String> {
        if let Some(p) = &mut self.pending
            && same_denial(&p.entry, &entry)
            && now.duration_since(p.since) < COALESCE
        {
            p.entry.count += 1;
            return Ok(());
        }
        if entry.decision == "deny" && !self.within_deny_rate(&entry, now)? {
            return Ok(());
        }
        self.flush_repeats()?;
        let deny = (entry.decision == "deny").then(|| entry.clone());
        self.append(entry)?;
        self.pending = deny.map(|mut entry| {
            entry.count = 0;
            Pending { entry, since: now }
        });
        Ok(())
    }

    /// Whether a denial fits its workspace's rate; one that does not is
    /// counted for the line written when the second is over.
    fn within_deny_rate(&mut self, entry: &Entry, now: Instant) -> Result<bool, String> {
        let due = self
            .denials
            .get(&entry.workspace)
            .is_some_and(|w| now.duration_since(w.since) >= COALESCE);
        if due {
            self.close_window(&entry.workspace.clone())?;
        }
        let len = super::to_json_line(entry)?.len() as u64;
        let w = self
            .denials
            .entry(entry.workspace.clone())
            .or_insert_with(|| DenyWindow {
                since: now,
                bytes: 0,
                over: None,
            });
        if w.bytes + len > DENY_BYTES_PER_SECOND {
            let n = w.over.as_ref().map_or(0, |o| o.0) + 1;
            w.over = Some((n, entry.clone()));
            return Ok(false);
        }
        w.bytes += len;
        Ok(true)
    }

    /// Ends a workspace's second, writing how many denials went over.
    fn close_window(&mut self, workspace: &str) -> Result<(), String> {
        if let Some(DenyWindow {
            over: Some((n, last)),
            ..
        }) = self.denials.remove(workspace)
        {
            self.flush_repeats()?;
            self.append(over_line(n, last))?;
        }
        Ok(())
    }

    /// When something counted is due to be written: the last denial's
    /// repeats, or a workspace's denials over its rate.
    pub(super) fn due(&self) -> Option<Instant> {
        let repeats = self.pending.as_ref().map(|p| p.since + COALESCE);
        let over = self
            .denials
            .values()
            .filter(|w| w.over.is_some())
            .map(|w| w.since + COALESCE)
            .min();
        repeats.into_iter().chain(over).min()
    }

    /// Writes what is due at `now` and forgets finished seconds.
    pub(super) fn tick(&mut self, now: Instant) -> Result<(), String> {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| now.duration_since(p.since) >= COALESCE)
        {
            self.flush_repeats()?;
        }
        let done: Vec<String> = self
            .denials
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) >= COALESCE)
            .map(|(k, _)| k.clone())
            .collect();
        for ws in done {
            self.close_window(&ws)?;
        }
        Ok(())
    }

    /// Writes everything counted so far (on shutdown, or when asked).
    pub(super) fn flush(&mut self) -> Result<(), String> {
        self.flush_repeats()?;
        let all: Vec<String> = self.denials.keys().cloned().collect();
        for ws in all {
            self.close_window(&ws)?;
        }
        Ok(())
    }

    /// Writes the count of the last denial's repeats, if any, and forgets it.
    fn flush_repeats(&mut self) -> Result<(), String> {
        match self.pending.take() {
            Some(p) if p.entry.count > 0 => self.append(p.entry),
            _ => Ok(()),
        }
    }

    /// Appends one line, then rotates and prunes as the budget says.
    pub(super) fn append(&mut self, mut entry: Entry) -> Result<(), String> {
        entry.seq = self.seq + 1;
        entry.prev = self.prev.clone();
        let (line, hash) = seal(&entry)?;
        self.log
            .write_all(line.as_bytes())
            .and_then(|()| self.log.flush())
            .map_err(|e| format!("writing the audit log: {e}"))?;
        self.seq = entry.seq;
        self.prev = hash;
        self.active.0 += line.len() as u64;
        write_at_start(&self.head, mark(self.seq, &self.prev).as_bytes())
            .map_err(|e| format!("writing the audit head: {e}"))?;
        if self.active.0 >= self.segment_size() {
            self.rotate()?;
        }
        Ok(())
    }

    fn segment_size(&self) -> u64 {
        (self.budget / SEGMENTS).max(1)
    }

    /// Closes the active segment under its rotated name and starts a new one.
    fn rotate(&mut self) -> Result<(), String> {
        let (size, first) = self.active;
        let to = self.dir.join(segment_name(first));
        let from = self.dir.join(LOG_FILE);
        std::fs::rename(&from, &to).map_err(|e| format!("rotating the audit log: {e}"))?;
        self.log =
            open_private(&from, true).map_err(|e| format!("starting a new audit segment: {e}"))?;
        self.rotated.push_back((to, size));
        self.active = (0, self.seq + 1);
        self.prune()
    }

    /// Removes the oldest segments until the log fits its budget, anchoring
    /// the chain at the last line removed.
    fn prune(&mut self) -> Result<(), String> {
        let mut total = self.active.0 + self.rotated.iter().map(|(_, n)| n).sum::<u64>();
        while total > self.budget {
            let Some((oldest, size)) = self.rotated.front().cloned() else {
                break;
            };
            // The next segment's first line names the last line of this one.
            let next = self
                .rotated
                .get(1)
                .map_or_else(|| self.dir.join(LOG_FILE), |(p, _)| p.clone());
            let anchor = first_entry(&next)
                .map_err(|e| format!("reading {}: {e}", next.display()))?
                .map_or_else(
                    || (self.seq, self.prev.clone()),
                    |l| (l.entry.seq.saturating_sub(1), l.entry.prev),
                );
            write_mark(&self.dir.join(ANCHOR_FILE), anchor.0, &anchor.1)
                .map_err(|e| format!("writing the audit anchor: {e}"))?;
            std::fs::remove_file(&oldest)
                .map_err(|e| format!("removing {}: {e}", oldest.display()))?;
            self.rotated.pop_front();
            total -= size;
        }
        Ok(())
    }
}

#[cfg(test)]
impl Writer {
    /// A writer on files that refuse writes, at `seq`.
    pub(super) fn broken(dir: &Path, file: File, head: File, seq: u64) -> Writer {
        Writer {
            dir: dir.to_owned(),
            log: file,
            head,
            seq,
            prev: GENESIS.to_owned(),
            active: (0, seq + 1),
            rotated: VecDeque::new(),
            budget: DEFAULT_BUDGET,
            pending: None,
            denials: std::collections::HashMap::new(),
        }
    }

    pub(super) fn seq(&self) -> u64 {
        self.seq
    }
}
