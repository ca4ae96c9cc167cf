//! Fair share of the laptop among workspaces: a call starts only with a
//! *turn*, and turns go round robin among the workspaces that have calls
//! waiting, so a workspace that floods the proxy gets as many starts as a
//! quiet one, not as many as it can queue.
//!
//! A turn covers a call's first [`SLICE`] (the whole of a short call: a
//! token, a credential, a signature). A call that takes longer (an approval
//! prompt, a tool run, a stream) gives its turn back when the slice is over
//! and goes on without one, so slow calls never hold fast ones up.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

/// How long a call keeps its turn before it must go on without one.
pub const SLICE: Duration = Duration::from_millis(20);

/// The turns of every workspace this proxy serves.
#[derive(Debug)]
pub struct FairShare {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Turns nobody holds.
    free: usize,
    /// Calls waiting for a turn, per workspace, first come first served.
    waiting: HashMap<Arc<str>, VecDeque<oneshot::Sender<()>>>,
    /// The workspaces with calls waiting, in the order they are served.
    order: VecDeque<Arc<str>>,
}

impl FairShare {
    /// `turns` calls run at once (at least one).
    #[must_use]
    pub fn new(turns: usize) -> Self {
        Self {
            state: Mutex::new(State {
                free: turns.max(1),
                waiting: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// As many turns as the machine has threads, twice over: enough that
    /// a call waiting on the audit writer or a source does not idle a
    /// core, few enough that the order of starts is ours, not the runtime's.
    #[must_use]
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self::new(2 * cores)
    }

    /// Waits for a turn for a call of `workspace`.
    pub async fn turn(self: &Arc<Self>, workspace: &str) -> Turn {
        let rx = {
            let mut s = self.lock();
            if s.free > 0 && s.order.is_empty() {
                s.free -= 1;
                return Turn(Some(self.clone()));
            }
            let (tx, rx) = oneshot::channel();
            let key: Arc<str> = Arc::from(workspace);
            let queue = s.waiting.entry(key.clone()).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                s.order.push_back(key);
            }
            rx
        };
        let mut waiting = Waiting {
            rx: Some(rx),
            fair: self,
        };
        if let Some(rx) = waiting.rx.as_mut() {
            // The sender lives until it hands the turn over or is dropped
            // when the proxy ends; either way the turn is ours to end.
            let _ = rx.await;
        }
        waiting.rx = None;
        Turn(Some(self.clone()))
    }

    /// Runs `call` with a turn of `workspace` held for at most [`SLICE`].
    pub async fn run<F: Future>(self: &Arc<Self>, workspace: &str, call: F) -> F::Output {
        let turn = self.turn(workspace).await;
        let mut call = pin!(call);
        tokio::select! {
            out = &mut call => return out,
            () = tokio::time::sleep(SLICE) => {}
        }
        drop(turn);
        call.await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a turn to the next workspace in the round (its oldest call),
    /// or frees it when nobody waits.
    fn hand_over(&self) {
        let mut s = self.lock();
        while let Some(ws) = s.order.pop_front() {
            let Some(queue) = s.waiting.get_mut(&ws) else {
                continue;
            };
            let next = queue.pop_front();
            if queue.is_empty() {
                s.waiting.remove(&ws);
            } else {
                s.order.push_back(ws);
            }
            // A caller that gave up dropped its receiver: the next one.
            if let Some(tx) = next
                && tx.send(()).is_ok()
            {
                return;
            }
        }
        s.free += 1;
    }
}

/// A call's turn; dropping it hands it over.
#[derive(Debug)]
pub struct Turn(Option<Arc<FairShare>>);

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(fair) = self.0.take() {
            fair.hand_over();
        }
    }
}

/// A wait for a turn; a wait given up after the turn was handed to it
/// hands it on.
struct Waiting<'a> {
    rx: Option<oneshot::Receiver<()>>,
    fair: &'a FairShare,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.fair.hand_over();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts of the first `n` calls to get a turn, as workspace names.
    async fn starts(fair: &Arc<FairShare>, waiting: &[(&str, usize)], n: usize) -> Vec<String> {
        let held = fair.turn("holder").await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut calls = tokio::task::JoinSet::new();
        for &(ws, count) in waiting {
            for _ in 0..count {
                let (fair, tx, ws) = (fair.clone(), tx.clone(), ws.to_owned());
                calls.spawn(async move {
                    let turn = fair.turn(&ws).await;
                    let _ = tx.send((ws, turn));
                });
                // Each call is queued before the next is spawned.
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        let mut order = Vec::new();
        while order.len() < n {
            let Some((ws, turn)) = rx.recv().await else {
                break;
            };
            order.push(ws);
            drop(turn);
        }
        calls.abort_all();
        order
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_quiet_workspace_is_served_between_the_calls_of_a_flood() {
        let fair = Arc::new(FairShare::new(1));
        let order = starts(&fair, &[("noisy", 200), ("quiet", 10)], 40).await;
        let quiet = order.iter().filter(|w| *w == "quiet").count();
        assert_eq!(quiet, 10, "every quiet call within the first 40: {order:?}");
        for pair in order[..20].chunks(2) {
            assert!(
                pair.contains(&"quiet".to_owned()),
                "turns alternate: {order:?}"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_workspace_alone_is_served_in_order_with_every_turn() {
        let fair = Arc::new(FairShare::new(3));
        let turns = [
            fair.turn("a").await,
            fair.turn("a").await,
            fair.turn("a").await,
        ];
        let order = {
            drop(turns);
            starts(&fair, &[("a", 5)], 5).await
        };
        assert_eq!(order.len(), 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_wait_given_up_loses_no_turn() {
        let fair = Arc::new(FairShare::new(1));
        let held = fair.turn("a").await;
        let gave_up = {
            let fair = fair.clone();
            tokio::spawn(async move { fair.turn("b").await })
        };
        tokio::task::yield_now().await;
        gave_up.abort();
        let _ = gave_up.await;
        drop(held);
        // The one turn is free again: taken at once.
        let again = tokio::time::timeout(Duration::from_secs(10), fair.turn("c")).await;
        assert!(again.is_ok(), "the turn was lost with the abandoned wait");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_long_call_gives_its_turn_back_after_its_slice() {
        let fair = Arc::new(FairShare::new(1));
        let (release, hold) = oneshot::channel::<()>();
        let slow = {
            let fair = fair.clone();
            tokio::spawn(async move { fair.run("a", async { hold.await.is_ok() }).await })
        };
        tokio::task::yield_now().await;
        // Waits out the slow call's slice, not the call.
        let fast = fair.run("b", async { 7 }).await;
        assert_eq!(fast, 7);
        let _ = release.send(());
        assert!(matches!(slow.await, Ok(true)));
    }
}
