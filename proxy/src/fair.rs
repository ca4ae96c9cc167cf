//! Fair share of the laptop among workspaces: a call starts only with a
//! *turn*, and turns go round robin among the workspaces that have calls
//! waiting, so a workspace that floods the proxy gets as many starts as a
//! quiet one, not as many as it can queue.
//!
//! Round robin alone is fooled by a quiet workspace's few callers: between
//! two of its calls (while its answer travels back and the next request
//! comes) it has nothing waiting, and the flood takes every turn of that
//! gap, several calls for each quiet one. So a workspace that has had its
//! start since an active neighbour's last one waits up to [`ANTICIPATION`]
//! for that neighbour's next call before it starts again (the
//! anticipatory scheduling of disk I/O, for the same "deceptive
//! idleness"). A neighbour is active for [`ACTIVE_FOR`] after its last
//! start; a workspace alone, or among workspaces that all have calls
//! waiting, never waits for this.
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
use tokio::time::Instant;

/// How long a call keeps its turn before it must go on without one.
pub const SLICE: Duration = Duration::from_millis(20);
/// How long a workspace that had its share waits for an active
/// neighbour's next call: about one round trip of a call through a busy
/// workspace, and the timer's resolution. While the neighbour stays
/// silent, the other still starts a call every [`ANTICIPATION`].
pub const ANTICIPATION: Duration = Duration::from_millis(1);
/// How long after its last start a workspace counts as active.
pub const ACTIVE_FOR: Duration = Duration::from_millis(10);

/// The turns of every workspace this proxy serves.
#[derive(Debug)]
pub struct FairShare {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Turns nobody holds.
    free: usize,
    /// Every workspace seen (their number is the number paired).
    spaces: HashMap<Arc<str>, Space>,
    /// The workspaces with calls waiting, in the order they are served.
    order: VecDeque<Arc<str>>,
    /// Starts so far: orders starts without relying on the clock.
    starts: u64,
    /// The wake-up armed for a workspace held back, if one is.
    timer: Option<Instant>,
}

#[derive(Debug, Default)]
struct Space {
    /// Calls waiting for a turn, first come first served.
    waiting: VecDeque<oneshot::Sender<()>>,
    /// When and as which start this workspace last started a call.
    last: Option<(Instant, u64)>,
    /// Its usual time between two starts (a moving average): only a
    /// neighbour whose next call usually comes within [`ANTICIPATION`] is
    /// waited for (the anticipatory scheduler's think-time test), so one
    /// that calls now and then cannot slow another's burst.
    gap: Option<Duration>,
}

impl State {
    /// Until when `ws` waits for a neighbour's call, if it must: it has
    /// started since the last start of a neighbour that is active and has
    /// nothing waiting (its next call is probably on its way).
    fn held_until(&self, ws: &str, now: Instant) -> Option<Instant> {
        let (at, seq) = self.spaces.get(ws)?.last?;
        let until = at + ANTICIPATION;
        if now >= until {
            return None;
        }
        let owed = self.spaces.iter().any(|(name, s)| {
            **name != *ws
                && s.waiting.is_empty()
                && s.gap.is_some_and(|g| g <= ANTICIPATION)
                && s.last
                    .is_some_and(|(t, n)| n < seq && now.duration_since(t) < ACTIVE_FOR)
        });
        owed.then_some(until)
    }

    /// Queues a call of `ws`, its turn to come through `tx`.
    fn enqueue(&mut self, ws: &str, tx: oneshot::Sender<()>) {
        let key = self
            .spaces
            .get_key_value(ws)
            .map_or_else(|| Arc::from(ws), |(k, _)| k.clone());
        let space = self.spaces.entry(key.clone()).or_default();
        space.waiting.push_back(tx);
        if space.waiting.len() == 1 {
            self.order.push_back(key);
        }
    }

    fn started(&mut self, ws: &str, now: Instant) {
        self.starts += 1;
        let last = Some((now, self.starts));
        match self.spaces.get_mut(ws) {
            Some(space) => {
                if let Some((before, _)) = space.last {
                    let gap = now.duration_since(before);
                    space.gap = Some(space.gap.map_or(gap, |g| (g * 3 + gap) / 4));
                }
                space.last = last;
            }
            None => {
                self.spaces.insert(
                    Arc::from(ws),
                    Space {
                        last,
                        ..Space::default()
                    },
                );
            }
        }
    }

    /// Gives the free turns to the oldest calls of the workspaces not held
    /// back; returns when the first one held back may go, if one is.
    fn assign(&mut self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        while self.free > 0 && !self.order.is_empty() {
            // The workspace started longest ago goes first: round robin
            // among those that keep calls waiting, and a neighbour whose
            // call the others waited for goes before them.
            let mut chosen: Option<(usize, u64)> = None;
            for (i, ws) in self.order.iter().enumerate() {
                if let Some(until) = self.held_until(ws, now) {
                    wake = Some(wake.map_or(until, |w| w.min(until)));
                    continue;
                }
                let seq = self
                    .spaces
                    .get(ws)
                    .and_then(|s| s.last)
                    .map_or(0, |(_, n)| n);
                if chosen.is_none_or(|(_, best)| seq < best) {
                    chosen = Some((i, seq));
                }
            }
            let chosen = chosen.map(|(i, _)| i);
            let Some(ws) = chosen.and_then(|i| self.order.remove(i)) else {
                return wake;
            };
            wake = None;
            let Some(space) = self.spaces.get_mut(&ws) else {
                continue;
            };
            let next = space.waiting.pop_front();
            if !space.waiting.is_empty() {
                self.order.push_back(ws.clone());
            }
            // A caller that gave up dropped its receiver: the next one.
            if let Some(tx) = next
                && tx.send(()).is_ok()
            {
                self.free -= 1;
                self.started(&ws, now);
            }
        }
        None
    }
}

impl FairShare {
    /// `turns` calls run at once (at least one).
    #[must_use]
    pub fn new(turns: usize) -> Self {
        Self {
            state: Mutex::new(State {
                free: turns.max(1),
                spaces: HashMap::new(),
                order: VecDeque::new(),
                starts: 0,
                timer: None,
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
        let now = Instant::now();
        let rx = {
            let mut s = self.lock();
            if s.free > 0 && s.order.is_empty() && s.held_until(workspace, now).is_none() {
                s.free -= 1;
                s.started(workspace, now);
                return Turn(Some(self.clone()));
            }
            let (tx, rx) = oneshot::channel();
            s.enqueue(workspace, tx);
            let wake = s.assign(now);
            self.arm(&mut s, wake);
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
        // The call first: one that ends at its first poll (most do) never
        // arms the slice's timer, whose arming may wake the runtime's driver.
        tokio::select! {
            biased;
            out = &mut call => return out,
            () = tokio::time::sleep(SLICE) => {}
        }
        drop(turn);
        call.await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives back a turn: to the next workspace in the round, or free.
    fn hand_over(self: &Arc<Self>) {
        let mut s = self.lock();
        s.free += 1;
        let wake = s.assign(Instant::now());
        self.arm(&mut s, wake);
    }

    /// Makes sure calls held back for a neighbour are looked at again at
    /// `wake`, even if nothing else happens by then (the neighbour fell
    /// silent).
    fn arm(self: &Arc<Self>, s: &mut State, wake: Option<Instant>) {
        let Some(at) = wake else {
            return;
        };
        if s.timer.is_some_and(|armed| armed <= at) {
            return;
        }
        // Turns are taken and given back inside the runtime; without one
        // (the proxy ending) nobody waits any more.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        s.timer = Some(at);
        let fair = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            let Some(fair) = fair.upgrade() else {
                return;
            };
            let mut s = fair.lock();
            if s.timer == Some(at) {
                s.timer = None;
            }
            let wake = s.assign(Instant::now());
            fair.arm(&mut s, wake);
        });
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
    fair: &'a Arc<FairShare>,
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

    /// The scheduler without the runtime: calls queued at given instants,
    /// each giving its turn back as soon as it has it.
    struct Sim {
        state: State,
        calls: Vec<(&'static str, oneshot::Receiver<()>)>,
        started: Vec<&'static str>,
    }

    impl Sim {
        fn new(turns: usize) -> Self {
            Self {
                state: FairShare::new(turns)
                    .state
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner),
                calls: Vec::new(),
                started: Vec::new(),
            }
        }

        /// Queues `n` calls of `ws` at `now`, then serves.
        fn call(&mut self, ws: &'static str, n: usize, now: Instant) -> Option<Instant> {
            for _ in 0..n {
                let (tx, rx) = oneshot::channel();
                self.state.enqueue(ws, tx);
                self.calls.push((ws, rx));
            }
            self.serve(now)
        }

        /// Starts what may start at `now`; when the next held call may go.
        fn serve(&mut self, now: Instant) -> Option<Instant> {
            loop {
                let wake = self.state.assign(now);
                let before = self.started.len();
                self.calls.retain_mut(|(ws, rx)| {
                    let go = rx.try_recv().is_ok();
                    if go {
                        self.started.push(ws);
                    }
                    !go
                });
                let done = self.started.len() - before;
                if done == 0 {
                    return wake;
                }
                self.state.free += done;
            }
        }
    }

    #[test]
    fn a_flood_waits_for_an_active_neighbours_next_call() {
        let before = Instant::now();
        let t0 = before + ANTICIPATION / 4;
        let mut sim = Sim::new(1);
        // The quiet workspace calls back to back (its usual gap is short)
        // and has just been answered; its next call is on its way while
        // the flood queues three.
        assert_eq!(sim.call("quiet", 1, before), None);
        assert_eq!(sim.call("quiet", 1, t0), None);
        let wake = sim.call("noisy", 3, t0);
        assert_eq!(
            sim.started,
            ["quiet", "quiet", "noisy"],
            "one flood call, then it waits"
        );
        assert_eq!(wake, Some(t0 + ANTICIPATION));
        let t1 = t0 + ANTICIPATION / 4;
        sim.call("quiet", 1, t1);
        assert_eq!(
            sim.started,
            ["quiet", "quiet", "noisy", "quiet", "noisy"],
            "the quiet call goes first, then one flood call"
        );
        // The quiet one falls silent: the flood waits no more than the
        // anticipation for each call, and not at all once the quiet one
        // is no longer active.
        assert_eq!(sim.serve(t1 + ANTICIPATION / 2), Some(t1 + ANTICIPATION));
        assert_eq!(sim.serve(t1 + ANTICIPATION), None);
        assert_eq!(sim.started.len(), 6);
        assert_eq!(sim.call("noisy", 3, t1 + ACTIVE_FOR), None);
        assert_eq!(sim.started.len(), 9);
    }

    /// A neighbour that calls now and then (its calls further apart than
    /// the anticipation) is not waited for: it cannot slow another
    /// workspace's burst (found in review: one call every 9 ms held a
    /// `make -j64` to a call a millisecond).
    #[test]
    fn a_neighbour_calling_now_and_then_does_not_hold_a_burst() {
        let t0 = Instant::now();
        let gap = ACTIVE_FOR * 9 / 10;
        let mut sim = Sim::new(1);
        assert_eq!(sim.call("idle", 1, t0), None);
        assert_eq!(sim.call("idle", 1, t0 + gap), None);
        assert_eq!(sim.call("burst", 64, t0 + gap), None);
        assert_eq!(sim.started.len(), 2 + 64, "the burst waited for nobody");
    }

    #[test]
    fn a_workspace_alone_or_among_busy_ones_never_waits_for_a_neighbour() {
        let t0 = Instant::now();
        let mut sim = Sim::new(2);
        for _ in 0..3 {
            assert_eq!(sim.call("a", 4, t0), None);
        }
        assert_eq!(sim.started.len(), 12);
        // Both have calls waiting: turns alternate, nobody is held.
        let mut sim = Sim::new(1);
        sim.state.free = 0;
        sim.call("b", 5, t0);
        sim.call("c", 5, t0);
        sim.state.free = 1;
        assert_eq!(sim.serve(t0), None);
        assert_eq!(sim.started, ["b", "c"].repeat(5));
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
