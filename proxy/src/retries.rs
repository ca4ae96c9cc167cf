//! Reads that a workspace may send twice: when a link dies before a read's
//! answer reached the shim, the shim sends the call again on its next link
//! with the same [`CallKey`]. This table makes the second attempt join the
//! first rather than run again, so the read is decided, audited, rate
//! counted and run on the laptop once.
//!
//! An entry lives while its first attempt runs and, if that attempt's
//! answer may not have arrived, up to [`KEEP_UNDELIVERED`] more, holding the
//! answer (a token value, at most, zeroized on drop). A delivered answer is
//! forgotten at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nexus_protocol::{Call, CallerContext, Reply, Request};
use tokio::sync::watch;

/// How long an answer the workspace may not have received is kept for the
/// call's second attempt: the shim's retry window plus slack for clocks
/// and the time the first attempt ran.
pub const KEEP_UNDELIVERED: Duration =
    nexus_protocol::RETRY_WINDOW.saturating_add(Duration::from_secs(60));
/// Most keyed calls one workspace may have in the table; beyond it, calls
/// run unkeyed (a second attempt of one is then decided again).
pub const MAX_ENTRIES: usize = 1024;

/// The keyed calls of one workspace.
#[derive(Debug, Default)]
pub struct Retries {
    table: Mutex<HashMap<u64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    request: Request,
    caller: CallerContext,
    answer: watch::Receiver<Option<Reply>>,
    /// Set once the first attempt answered but could not confirm delivery.
    expires: Option<Instant>,
}

/// What a keyed call should do.
#[derive(Debug)]
pub enum Claim<'a> {
    /// The first attempt the laptop sees: run it, and say how it went.
    First(Answering<'a>),
    /// A second attempt: its answer comes from the first.
    Join(watch::Receiver<Option<Reply>>),
    /// The key names a different call: refused.
    Mismatch,
    /// The table is full: run it as an unkeyed call.
    Full,
}

impl Retries {
    /// Registers `call` under its key `id`, or joins the attempt already
    /// registered.
    pub fn claim(&self, id: u64, call: &Call) -> Claim<'_> {
        let Ok(mut table) = self.table.lock() else {
            return Claim::Full;
        };
        if let Some(entry) = table.get(&id) {
            if entry.request != call.request || entry.caller != call.caller {
                return Claim::Mismatch;
            }
            // A first attempt that ended unanswered leaves no entry, so a
            // closed channel here is one being replaced right now.
            return Claim::Join(entry.answer.clone());
        }
        if table.len() >= MAX_ENTRIES {
            let now = Instant::now();
            table.retain(|_, e| e.expires.is_none_or(|t| t > now));
            if table.len() >= MAX_ENTRIES {
                return Claim::Full;
            }
        }
        let (tx, rx) = watch::channel(None);
        table.insert(
            id,
            Entry {
                request: call.request.clone(),
                caller: call.caller.clone(),
                answer: rx,
                expires: None,
            },
        );
        Claim::First(Answering {
            retries: self,
            id,
            tx,
            answered: false,
        })
    }

    /// The answer of key `id` reached the workspace.
    pub fn delivered(&self, id: u64) {
        if let Ok(mut table) = self.table.lock() {
            table.remove(&id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().map_or(0, |t| t.len())
    }
}

/// The first attempt of a keyed call, under way. Dropped without an
/// answer (its link ended while it waited its turn), it leaves no trace:
/// it was never decided, so a second attempt runs afresh.
#[derive(Debug)]
pub struct Answering<'a> {
    retries: &'a Retries,
    id: u64,
    tx: watch::Sender<Option<Reply>>,
    answered: bool,
}

impl Answering<'_> {
    /// The call's answer, for a second attempt waiting or yet to come.
    pub fn answered(&mut self, reply: &Reply) {
        self.answered = true;
        self.tx.send_replace(Some(reply.clone()));
    }

    /// Whether the workspace confirmed the answer: forgotten if so, kept
    /// for [`KEEP_UNDELIVERED`] if not.
    pub fn finish(self, delivered: bool) {
        if delivered {
            return self.retries.delivered(self.id);
        }
        if let Ok(mut table) = self.retries.table.lock()
            && let Some(entry) = table.get_mut(&self.id)
        {
            entry.expires = Some(Instant::now() + KEEP_UNDELIVERED);
        }
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.retries.delivered(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_protocol::Secret;

    fn call(name: &str) -> Call {
        Call {
            caller: CallerContext::default(),
            request: Request::Token {
                name: name.to_owned(),
            },
            key: None,
        }
    }

    fn token() -> Reply {
        Reply::Token(Secret::from("v".to_owned()))
    }

    #[test]
    fn a_second_attempt_joins_the_first_and_a_delivered_answer_is_forgotten() {
        let r = Retries::default();
        let Claim::First(mut first) = r.claim(1, &call("a")) else {
            panic!("first")
        };
        let Claim::Join(rx) = r.claim(1, &call("a")) else {
            panic!("join")
        };
        assert_eq!(*rx.borrow(), None);
        first.answered(&token());
        assert_eq!(*rx.borrow(), Some(token()));
        first.finish(false);
        assert_eq!(r.len(), 1, "kept for the second attempt");
        r.delivered(1);
        assert_eq!(r.len(), 0);
        let Claim::First(mut again) = r.claim(1, &call("a")) else {
            panic!("forgotten")
        };
        again.answered(&token());
        again.finish(true);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_key_names_one_call_and_an_unanswered_first_attempt_leaves_nothing() {
        let r = Retries::default();
        let first = r.claim(7, &call("a"));
        assert!(matches!(r.claim(7, &call("b")), Claim::Mismatch));
        drop(first);
        assert_eq!(r.len(), 0);
        assert!(matches!(r.claim(7, &call("b")), Claim::First(_)));
    }

    #[test]
    fn the_table_is_bounded() {
        let r = Retries::default();
        for id in 0..MAX_ENTRIES as u64 {
            let Claim::First(mut a) = r.claim(id, &call("a")) else {
                panic!("room")
            };
            a.answered(&token());
            a.finish(false);
        }
        assert!(matches!(r.claim(u64::MAX, &call("a")), Claim::Full));
    }
}
