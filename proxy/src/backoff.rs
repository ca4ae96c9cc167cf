//! When to dial a lost workspace again. An outage's first retries come
//! quickly (most outages are short: a restarted relay, a Wi-Fi handover),
//! then the wait doubles up to a cap: under 1 s for the first
//! [`FAST_RETRY_WINDOW`], [`SLOW_BACKOFF_CAP`] after that.

use std::time::Duration;

use rand::Rng;

/// The wait before each of an outage's first [`QUICK_RETRIES`] dials,
/// jittered to 50–100 ms: a link back in the meantime is redialed within
/// about 100 ms (plus the handshake).
pub const QUICK_RETRY: Duration = Duration::from_millis(100);
/// How many dials of an outage come after [`QUICK_RETRY`].
pub const QUICK_RETRIES: u32 = 4;
/// Backoff cap during the first [`FAST_RETRY_WINDOW`] of an outage: under
/// 1 s with room for the handshake, so that a call held through an outage
/// completes within 1 s of the link coming back.
pub const FAST_BACKOFF_CAP: Duration = Duration::from_millis(800);
/// How long an outage is retried at the fast cap.
pub const FAST_RETRY_WINDOW: Duration = Duration::from_secs(30);
/// Backoff cap after that, and for failures that need the user (a pin
/// mismatch, a refusal).
pub const SLOW_BACKOFF_CAP: Duration = Duration::from_secs(15);

/// The dials of one outage so far. A link that did nothing (no call, under
/// 3 s) does not start a new outage, so a link that keeps dropping at once
/// goes on backing off rather than being redialed in a loop.
#[derive(Debug, Default)]
pub struct Backoff {
    retries: u32,
}

impl Backoff {
    /// A good link came and went, or the laptop woke: the next outage
    /// starts with quick retries again.
    pub fn reset(&mut self) {
        self.retries = 0;
    }

    /// The wait before the next dial, before jitter: `outage` is how long
    /// the workspace has been unreachable, `needs_user` whether the last
    /// failure was one that retrying alone does not fix.
    pub fn next(&mut self, outage: Duration, needs_user: bool) -> Duration {
        let n = self.retries;
        self.retries = self.retries.saturating_add(1);
        if needs_user {
            return SLOW_BACKOFF_CAP;
        }
        if n < QUICK_RETRIES {
            return QUICK_RETRY;
        }
        let cap = if outage < FAST_RETRY_WINDOW {
            FAST_BACKOFF_CAP
        } else {
            SLOW_BACKOFF_CAP
        };
        // 200 ms, 400 ms, 800 ms...: doubling from twice the quick wait.
        let doublings = (n - QUICK_RETRIES + 1).min(16);
        QUICK_RETRY.saturating_mul(1 << doublings).min(cap)
    }
}

/// `wait` jittered down to between half and all of it, so that many
/// proxies losing one network do not dial back in step.
pub fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(rand::rng().random_range(0.5..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(b: &mut Backoff, outage: Duration, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| u64::try_from(b.next(outage, false).as_millis()).unwrap_or(u64::MAX))
            .collect()
    }

    #[test]
    fn an_outage_starts_quick_then_doubles_to_the_fast_cap() {
        let mut b = Backoff::default();
        assert_eq!(
            waits(&mut b, Duration::ZERO, 8),
            [100, 100, 100, 100, 200, 400, 800, 800]
        );
        b.reset();
        assert_eq!(waits(&mut b, Duration::ZERO, 1), [100]);
    }

    #[test]
    fn a_long_outage_or_a_refusal_waits_longer() {
        let mut b = Backoff::default();
        waits(&mut b, Duration::ZERO, 4);
        assert_eq!(
            waits(&mut b, FAST_RETRY_WINDOW, 8),
            [200, 400, 800, 1600, 3200, 6400, 12_800, 15_000]
        );
        assert_eq!(
            Backoff::default().next(Duration::ZERO, true),
            SLOW_BACKOFF_CAP
        );
        let mut long = Backoff { retries: u32::MAX };
        assert_eq!(long.next(FAST_RETRY_WINDOW, false), SLOW_BACKOFF_CAP);
    }

    #[test]
    fn jitter_stays_within_half_to_all() {
        for _ in 0..1000 {
            let j = jittered(QUICK_RETRY);
            assert!(j >= QUICK_RETRY / 2 && j <= QUICK_RETRY, "{j:?}");
        }
    }
}
