//! Reads that a workspace may send twice: when a link dies before any of a
//! read's answer reached its caller, the shim sends the call again on its
//! next link with the same [`CallKey`](nexus_protocol::CallKey). This table
//! makes the second attempt join the first rather than run again, so the
//! read is decided, audited, rate counted and run on the laptop once.
//!
//! An entry lives while its first attempt runs and, if that attempt's
//! answer may not have arrived, up to [`KEEP_UNDELIVERED`] more, holding the
//! answer (zeroized on drop): one reply, or for a streamed read (`file
//! get`, an API's `GET`) every byte its first attempt wrote, recorded by a
//! [`Tape`]. A delivered answer is forgotten once the workspace confirms
//! it: on the call's stream, or for a read answered by one reply in the
//! `received` of its next call ([`Retries::confirmed`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nexus_policy::PolicySet;
use nexus_protocol::{Call, Reply};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use zeroize::Zeroizing;

/// How long an answer the workspace may not have received is kept for the
/// call's second attempt: the shim's retry window plus slack for clocks
/// and the time the first attempt ran.
pub const KEEP_UNDELIVERED: Duration =
    nexus_protocol::RETRY_WINDOW.saturating_add(Duration::from_secs(60));
/// Most keyed calls one workspace may have in the table; beyond it, calls
/// run unkeyed (a second attempt of one is then decided again).
pub const MAX_ENTRIES: usize = 1024;
/// The longest streamed answer kept for a second attempt; a longer one is
/// not replayed (its second attempt fails, asking to run it again).
pub const REPLAY_LIMIT: usize = 1 << 20;
/// Most bytes of streamed answers one workspace may have kept at once, so
/// a shim that never confirms an answer cannot make the laptop hoard them.
pub const MAX_KEPT: usize = 32 << 20;

/// A keyed call's answer, as its second attempt gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The one reply of a read answered by one reply.
    Reply(Reply),
    /// Every byte a streamed read wrote on its stream, final reply
    /// included: its second attempt writes them as they are.
    Replay(Arc<Zeroizing<Vec<u8>>>),
    /// A streamed answer that was not kept (past [`REPLAY_LIMIT`] or
    /// [`MAX_KEPT`]).
    Unkept,
}

/// The keyed calls of one workspace.
#[derive(Debug, Default)]
pub struct Retries {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    /// Bytes of the replays held in `entries`.
    kept: usize,
    /// The generation of the next entry.
    next: u64,
}

impl Table {
    fn remove(&mut self, id: u64) {
        if let Some(entry) = self.entries.remove(&id) {
            self.kept -= entry.bytes;
        }
    }

    /// The entry of key `id` if it is still the one of `generation`:
    /// an attempt outlived by its entry (replaced after a reload) must not
    /// touch the next call's.
    fn ours(&mut self, id: u64, generation: u64) -> Option<&mut Entry> {
        self.entries
            .get_mut(&id)
            .filter(|e| e.generation == generation)
    }

    /// Forgets every answer kept past its time.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove(id);
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// What the call was (request and caller), as a digest: an attempt
    /// must repeat it exactly, and a large request is not kept in memory.
    call: [u8; 32],
    /// The policy the first attempt was decided under: a second attempt
    /// under another one (a reload came between) is decided afresh.
    policy: Arc<PolicySet>,
    answer: watch::Receiver<Option<Answer>>,
    /// Set once the first attempt answered but could not confirm delivery.
    expires: Option<Instant>,
    /// The size of its replay, counted in [`Table::kept`].
    bytes: usize,
    /// Which claim of the key made it.
    generation: u64,
    /// Whether a second attempt has joined it.
    joined: bool,
}

/// The SHA-256 of what a call asks and who asks it (its key aside).
fn digest(call: &Call) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(nexus_protocol::encode(&(&call.request, &call.caller)));
    h.finalize().into()
}

/// What a keyed call should do.
#[derive(Debug)]
pub enum Claim<'a> {
    /// The first attempt the laptop sees: run it, and say how it went.
    First(Answering<'a>),
    /// A second attempt: its answer comes from the first.
    Join(watch::Receiver<Option<Answer>>),
    /// The key names a different call: refused.
    Mismatch,
    /// The table is full: run it as an unkeyed call.
    Full,
    /// The key was already joined once: run it as an unkeyed call
    /// (decided, audited and counted anew). A shim sends a key twice at
    /// most, so a kept answer is not handed out again and again undecided.
    Again,
}

impl Retries {
    /// Registers `call` under its key `id`, decided under `policy`, or
    /// joins the attempt already registered. An answer kept past its time,
    /// or made under another policy than `policy`, is not given again: the
    /// call runs afresh (decided and audited under the policy of now).
    pub fn claim(&self, id: u64, call: &Call, policy: &Arc<PolicySet>) -> Claim<'_> {
        let Ok(mut table) = self.table.lock() else {
            return Claim::Full;
        };
        table.sweep(Instant::now());
        if let Some(entry) = table.entries.get_mut(&id) {
            if entry.call != digest(call) {
                return Claim::Mismatch;
            }
            if Arc::ptr_eq(&entry.policy, policy) {
                if std::mem::replace(&mut entry.joined, true) {
                    return Claim::Again;
                }
                // A first attempt that ended unanswered leaves no entry, so
                // a closed channel here is one being replaced right now.
                return Claim::Join(entry.answer.clone());
            }
            table.remove(id);
        }
        if table.entries.len() >= MAX_ENTRIES {
            return Claim::Full;
        }
        let (tx, rx) = watch::channel(None);
        let generation = table.next;
        table.next += 1;
        table.entries.insert(
            id,
            Entry {
                call: digest(call),
                policy: policy.clone(),
                answer: rx,
                expires: None,
                bytes: 0,
                generation,
                joined: false,
            },
        );
        Claim::First(Answering {
            retries: self,
            id,
            generation,
            tool: call.request.tool(),
            tx,
            answered: false,
        })
    }

    /// The answer of key `id` reached the workspace.
    pub fn delivered(&self, id: u64) {
        if let Ok(mut table) = self.table.lock() {
            table.remove(id);
        }
    }

    /// The workspace says, in a later call, that it read the answer of key
    /// `id`: forgotten, if there is one. A call still running is not the
    /// workspace's to end (its second attempt must still join it).
    pub fn confirmed(&self, id: u64) {
        if let Ok(mut table) = self.table.lock()
            && table
                .entries
                .get(&id)
                .is_some_and(|e| e.answer.borrow().is_some())
        {
            table.remove(id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().map_or(0, |t| t.entries.len())
    }
}

/// The first attempt of a keyed call, under way. Dropped without an
/// answer (its link ended while it waited its turn), it leaves no trace:
/// it was never decided, so a second attempt runs afresh.
#[derive(Debug)]
pub struct Answering<'a> {
    retries: &'a Retries,
    id: u64,
    generation: u64,
    tool: &'static str,
    tx: watch::Sender<Option<Answer>>,
    answered: bool,
}

impl Answering<'_> {
    /// The call's answer, for a second attempt waiting or yet to come. A
    /// replay past the workspace's [`MAX_KEPT`] is not kept.
    pub fn answered(&mut self, mut answer: Answer) {
        self.answered = true;
        if let Answer::Replay(bytes) = &answer {
            let fits = self.retries.table.lock().is_ok_and(|mut table| {
                let kept = table.kept;
                let Some(entry) = table.ours(self.id, self.generation) else {
                    return true;
                };
                let fits = kept - entry.bytes + bytes.len() <= MAX_KEPT;
                if fits {
                    let before = std::mem::replace(&mut entry.bytes, bytes.len());
                    table.kept = kept - before + bytes.len();
                }
                fits
            });
            if !fits {
                answer = Answer::Unkept;
            }
        }
        self.tx.send_replace(Some(answer));
    }

    /// Whether the workspace confirmed the answer: forgotten if so, kept
    /// for [`KEEP_UNDELIVERED`] if not.
    pub fn finish(self, delivered: bool) {
        if delivered {
            return self.forget();
        }
        tracing::info!(
            tool = self.tool,
            "the workspace did not confirm this read's answer; kept for a second attempt"
        );
        self.keep();
    }

    /// For a call the workspace confirms with a later one
    /// ([`CallKey::later`](nexus_protocol::CallKey::later)): whether the
    /// answer went out. Kept until that confirmation
    /// ([`Retries::confirmed`]) or for [`KEEP_UNDELIVERED`].
    pub fn later(self, sent: bool) {
        if sent {
            self.keep();
        } else {
            self.finish(false);
        }
    }

    fn keep(&self) {
        if let Ok(mut table) = self.retries.table.lock()
            && let Some(entry) = table.ours(self.id, self.generation)
        {
            entry.expires = Some(Instant::now() + KEEP_UNDELIVERED);
        }
    }

    /// Removes this attempt's entry (not a newer one under the same key).
    fn forget(&self) {
        if let Ok(mut table) = self.retries.table.lock()
            && table.ours(self.id, self.generation).is_some()
        {
            table.remove(self.id);
        }
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.forget();
        }
    }
}

/// The answer to a second attempt whose first one's streamed answer was
/// not kept.
pub fn unkept() -> Reply {
    Reply::error(
        nexus_protocol::ErrorCode::Internal,
        format!(
            "the link dropped during this read, and its answer (over {} or past what the laptop \
             keeps for this workspace) was not kept to send again; run it again",
            nexus_protocol::units::format_size(REPLAY_LIMIT as u64)
        ),
    )
}

/// How long a [`Tape`] whose stream broke waits to see its link end
/// before it takes the break for its caller leaving.
pub const LINK_GONE_GRACE: Duration = Duration::from_secs(2);

/// How long a first attempt whose link died may run on: as long as its
/// second attempt may come.
pub const RUN_ON: Duration = nexus_protocol::RETRY_WINDOW;

/// Why a [`Tape`]'s stream is no longer written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Live,
    /// It failed; is it the link?
    Broken,
    /// With its link: the answer is still made, for a second attempt.
    LinkGone,
    /// The link lives, so the caller left: no second attempt comes.
    CallerGone,
}

/// The stream of a streamed read's first attempt: what the tool writes goes
/// on, and the first [`REPLAY_LIMIT`] bytes are kept for a second attempt.
/// When the stream breaks with its link, writes are kept only and reads
/// wait, so that the read runs on to its end and leaves a whole answer to
/// replay (or, past the limit or [`RUN_ON`], none), never one cut where the
/// link broke. A stream that breaks while its link lives (the caller left)
/// fails as it would untaped.
pub struct Tape<S> {
    inner: S,
    kept: Option<Zeroizing<Vec<u8>>>,
    stream: Stream,
    link_gone: Pin<Box<dyn Future<Output = ()> + Send>>,
    grace: Duration,
    /// Once broken: the grace to see the link end, then [`RUN_ON`].
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Tape<S> {
    /// Records what is written on `inner`, a stream of the link whose end
    /// `link_gone` resolves at; a break is the link's if it ends within
    /// `grace`.
    pub fn new(
        inner: S,
        link_gone: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> Self {
        Self {
            inner,
            kept: Some(Zeroizing::new(Vec::new())),
            stream: Stream::Live,
            link_gone: Box::pin(link_gone),
            grace,
            timer: None,
        }
    }

    /// The answer for a second attempt, and whether the stream broke.
    pub fn into_answer(self) -> (Answer, bool) {
        let answer = self
            .kept
            .map_or(Answer::Unkept, |k| Answer::Replay(Arc::new(k)));
        (answer, self.stream != Stream::Live)
    }

    /// Keeps `data`; false once past the limit (nothing is kept then).
    fn keep(&mut self, data: &[u8]) -> bool {
        match &mut self.kept {
            Some(k) if k.len() + data.len() <= REPLAY_LIMIT => {
                let need = k.len() + data.len();
                if need > k.capacity() {
                    // Grown by hand: a reallocation would free the old
                    // block unwiped; this one is wiped when dropped.
                    let mut grown = Zeroizing::new(Vec::with_capacity(
                        need.max(2 * k.capacity()).min(REPLAY_LIMIT),
                    ));
                    grown.extend_from_slice(k);
                    *k = grown;
                }
                k.extend_from_slice(data);
                true
            }
            _ => {
                self.kept = None;
                false
            }
        }
    }

    /// Once the stream broke: whether the answer is still to be made (its
    /// link ended, and it is still kept).
    fn poll_judge(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.stream == Stream::Broken {
            let grace = self.grace;
            let judging = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(grace)));
            if self.link_gone.as_mut().poll(cx).is_ready() {
                // It runs on only while a second attempt may still come.
                judging.as_mut().reset(tokio::time::Instant::now() + RUN_ON);
                self.stream = Stream::LinkGone;
            } else if judging.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            } else {
                self.stream = Stream::CallerGone;
                self.kept = None;
            }
        }
        if self.stream == Stream::LinkGone
            && self.kept.is_some()
            && self
                .timer
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready())
        {
            self.kept = None;
        }
        Poll::Ready(self.stream == Stream::LinkGone && self.kept.is_some())
    }

    /// A flush or shutdown (`op`): on the stream while it lives, fine
    /// after a break while the answer is still made.
    fn poll_closing(
        &mut self,
        cx: &mut Context<'_>,
        op: fn(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>>
    where
        S: Unpin,
    {
        if self.stream == Stream::Live {
            match op(Pin::new(&mut self.inner), cx) {
                Poll::Ready(Err(_)) => self.stream = Stream::Broken,
                other => return other,
            }
        }
        Poll::Ready(if std::task::ready!(self.poll_judge(cx)) {
            Ok(())
        } else {
            Err(io::ErrorKind::BrokenPipe.into())
        })
    }
}

impl<S> std::fmt::Debug for Tape<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tape")
            .field("kept", &self.kept.as_ref().map(|k| k.len()))
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tape<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.stream == Stream::Live {
            match Pin::new(&mut this.inner).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) => {
                    this.keep(&buf[..n]);
                    return Poll::Ready(Ok(n));
                }
                Poll::Ready(Err(_)) => this.stream = Stream::Broken,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(
            if std::task::ready!(this.poll_judge(cx)) && this.keep(buf) {
                Ok(buf.len())
            } else {
                Err(io::ErrorKind::BrokenPipe.into())
            },
        )
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_closing(cx, S::poll_flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_closing(cx, S::poll_shutdown)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tape<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.stream == Stream::Live {
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() > before || buf.remaining() == 0 => {
                    return Poll::Ready(Ok(()));
                }
                // The end of the stream: the shim never closes its side
                // before the answer's end, so the stream broke.
                Poll::Ready(_) => this.stream = Stream::Broken,
                Poll::Pending => return Poll::Pending,
            }
        }
        if std::task::ready!(this.poll_judge(cx)) {
            // The answer is still being made: nothing is read meanwhile.
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_protocol::{CallerContext, Request, Secret};

    /// An answer kept for a second attempt is not given after its time,
    /// nor under a policy reloaded since: the call is decided afresh.
    #[test]
    fn a_kept_answer_expires_and_does_not_outlive_a_reload() {
        let r = Retries::default();
        let Claim::First(mut first) = r.claim(3, &call("a"), &policy()) else {
            panic!("first attempt not first");
        };
        first.answered(Answer::Reply(Reply::Done));
        first.finish(false);
        let reloaded = Arc::new(PolicySet::default());
        assert!(
            matches!(r.claim(3, &call("a"), &reloaded), Claim::First(_)),
            "joined an answer decided under the policy before a reload"
        );
        let Claim::First(mut again) = r.claim(4, &call("a"), &policy()) else {
            panic!("first attempt not first");
        };
        again.answered(Answer::Reply(Reply::Done));
        again.finish(false);
        if let Ok(mut t) = r.table.lock()
            && let Some(e) = t.entries.get_mut(&4)
        {
            e.expires = Some(Instant::now());
        }
        assert!(
            matches!(r.claim(4, &call("a"), &policy()), Claim::First(_)),
            "joined an answer kept past its time"
        );
    }

    /// One policy for every attempt of a test (answers are joined only
    /// under the policy their first attempt was decided with).
    fn policy() -> Arc<PolicySet> {
        static POLICY: std::sync::LazyLock<Arc<PolicySet>> =
            std::sync::LazyLock::new(|| Arc::new(PolicySet::default()));
        POLICY.clone()
    }

    fn call(name: &str) -> Call {
        Call {
            caller: CallerContext::default(),
            request: Request::Token {
                name: name.to_owned(),
            },
            key: None,
            received: Vec::new(),
        }
    }

    fn token() -> Reply {
        Reply::Token(Secret::from("v".to_owned()))
    }

    #[test]
    fn a_second_attempt_joins_the_first_and_a_delivered_answer_is_forgotten() {
        let r = Retries::default();
        let Claim::First(mut first) = r.claim(1, &call("a"), &policy()) else {
            panic!("first")
        };
        let Claim::Join(rx) = r.claim(1, &call("a"), &policy()) else {
            panic!("join")
        };
        assert_eq!(*rx.borrow(), None);
        first.answered(Answer::Reply(token()));
        assert_eq!(*rx.borrow(), Some(Answer::Reply(token())));
        first.finish(false);
        assert_eq!(r.len(), 1, "kept for the second attempt");
        r.delivered(1);
        assert_eq!(r.len(), 0);
        let Claim::First(mut again) = r.claim(1, &call("a"), &policy()) else {
            panic!("forgotten")
        };
        again.answered(Answer::Reply(token()));
        again.finish(true);
        assert_eq!(r.len(), 0);
    }

    /// A confirmation in a later call forgets an answer, never a call
    /// still running: a hostile shim confirming one early must not make
    /// its second attempt run again.
    #[test]
    fn a_confirmation_forgets_answers_only() {
        let r = Retries::default();
        let Claim::First(mut first) = r.claim(5, &call("a"), &policy()) else {
            panic!("first")
        };
        r.confirmed(5);
        assert!(
            matches!(r.claim(5, &call("a"), &policy()), Claim::Join(_)),
            "a running call was forgotten"
        );
        first.answered(Answer::Reply(token()));
        first.later(true);
        assert_eq!(r.len(), 1, "kept until confirmed");
        r.confirmed(5);
        assert_eq!(r.len(), 0);
    }

    /// An attempt whose entry was replaced (a reload came between two
    /// claims of its key) leaves the newer entry and its byte count alone.
    #[test]
    fn an_attempt_outlived_by_its_entry_leaves_the_next_one_alone() {
        let r = Retries::default();
        let kept = || r.table.lock().map_or(usize::MAX, |t| t.kept);
        let replay = |n| Answer::Replay(Arc::new(Zeroizing::new(vec![0; n])));
        let Claim::First(mut stale) = r.claim(9, &call("a"), &policy()) else {
            panic!("first")
        };
        let Claim::First(unanswered) = r.claim(8, &call("a"), &policy()) else {
            panic!("first")
        };
        let reloaded = Arc::new(PolicySet::default());
        let Claim::First(mut fresh) = r.claim(9, &call("a"), &reloaded) else {
            panic!("decided afresh under the new policy")
        };
        let Claim::First(other) = r.claim(8, &call("a"), &reloaded) else {
            panic!("decided afresh under the new policy")
        };
        stale.answered(replay(10));
        assert_eq!(kept(), 0, "the stale attempt counted against the new entry");
        fresh.answered(replay(20));
        stale.finish(true);
        drop(unanswered);
        assert_eq!(
            (r.len(), kept()),
            (2, 20),
            "a stale attempt removed an entry"
        );
        fresh.finish(true);
        drop(other);
        assert_eq!((r.len(), kept()), (0, 0));
    }

    /// A key is joined once: a shim that keeps sending it (a legitimate
    /// one sends it twice at most) gets its call decided afresh.
    #[test]
    fn a_kept_answer_is_joined_once() {
        let r = Retries::default();
        let Claim::First(mut first) = r.claim(6, &call("a"), &policy()) else {
            panic!("first")
        };
        first.answered(Answer::Reply(token()));
        first.later(true);
        assert!(matches!(r.claim(6, &call("a"), &policy()), Claim::Join(_)));
        assert!(matches!(r.claim(6, &call("a"), &policy()), Claim::Again));
    }

    #[test]
    fn a_key_names_one_call_and_an_unanswered_first_attempt_leaves_nothing() {
        let r = Retries::default();
        let first = r.claim(7, &call("a"), &policy());
        assert!(matches!(r.claim(7, &call("b"), &policy()), Claim::Mismatch));
        drop(first);
        assert_eq!(r.len(), 0);
        assert!(matches!(r.claim(7, &call("b"), &policy()), Claim::First(_)));
    }

    #[test]
    fn the_table_is_bounded() {
        let r = Retries::default();
        for id in 0..MAX_ENTRIES as u64 {
            let Claim::First(mut a) = r.claim(id, &call("a"), &policy()) else {
                panic!("room")
            };
            a.answered(Answer::Reply(token()));
            a.finish(false);
        }
        assert!(matches!(
            r.claim(u64::MAX, &call("a"), &policy()),
            Claim::Full
        ));
    }

    #[test]
    fn replays_are_kept_within_the_workspace_budget() {
        let r = Retries::default();
        let big = Answer::Replay(Arc::new(Zeroizing::new(vec![0; REPLAY_LIMIT])));
        let fit = MAX_KEPT / REPLAY_LIMIT;
        for id in 0..=fit as u64 {
            let Claim::First(mut a) = r.claim(id, &call("a"), &policy()) else {
                panic!("room")
            };
            a.answered(big.clone());
            a.finish(false);
        }
        let Claim::Join(last) = r.claim(fit as u64, &call("a"), &policy()) else {
            panic!("join")
        };
        assert_eq!(*last.borrow(), Some(Answer::Unkept), "past the budget");
        r.delivered(0);
        let Claim::First(mut a) = r.claim(u64::MAX, &call("a"), &policy()) else {
            panic!("room")
        };
        a.answered(big.clone());
        let Claim::Join(again) = r.claim(u64::MAX, &call("a"), &policy()) else {
            panic!("join")
        };
        assert_eq!(
            *again.borrow(),
            Some(big),
            "a delivered answer frees its bytes"
        );
    }

    #[tokio::test]
    async fn a_tape_keeps_what_was_written_and_runs_on_past_a_break() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(64);
        let mut tape = Tape::new(near, std::future::ready(()), LINK_GONE_GRACE);
        tape.write_all(b"head")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut got = [0u8; 4];
        far.read_exact(&mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(far);
        tape.write_all(b" and the rest after the break")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tape.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(1), tape.read(&mut byte)).await;
        assert!(read.is_err(), "a broken tape's reads wait");
        let (answer, broken) = tape.into_answer();
        assert!(broken);
        let Answer::Replay(bytes) = answer else {
            panic!("kept")
        };
        assert_eq!(bytes.as_slice(), b"head and the rest after the break");
    }

    #[tokio::test]
    async fn a_tape_past_its_limit_keeps_nothing_and_fails_once_broken() {
        use tokio::io::AsyncWriteExt;
        let (near, far) = tokio::io::duplex(REPLAY_LIMIT * 2);
        let mut tape = Tape::new(near, std::future::ready(()), LINK_GONE_GRACE);
        let big = vec![7u8; REPLAY_LIMIT + 1];
        tape.write_all(&big).await.unwrap_or_else(|e| panic!("{e}"));
        drop(far);
        assert!(tape.write_all(b"x").await.is_err());
        let (answer, broken) = tape.into_answer();
        assert_eq!(answer, Answer::Unkept);
        assert!(broken);
    }

    #[tokio::test]
    async fn a_tape_whose_link_lives_fails_as_the_caller_left() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, far) = tokio::io::duplex(64);
        let grace = Duration::from_millis(10);
        let mut tape = Tape::new(near, std::future::pending(), grace);
        drop(far);
        let mut byte = [0u8; 1];
        assert_eq!(tape.read(&mut byte).await.ok(), Some(0), "an end of stream");
        assert!(tape.write_all(b"x").await.is_err());
        let (answer, broken) = tape.into_answer();
        assert_eq!(answer, Answer::Unkept);
        assert!(broken);
    }
}
