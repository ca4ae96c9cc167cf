//! Rate limits (`rate = "60/min"`): a sliding window per key, in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nexus_policy::Rate;

/// Counts calls per key over the rule's window.
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// Records a call now, or says how long until one is allowed.
    ///
    /// # Errors
    /// The wait until the oldest call in the window expires.
    pub fn check(&self, key: &str, rate: Rate) -> Result<(), Duration> {
        self.check_at(key, rate, Instant::now())
    }

    fn check_at(&self, key: &str, rate: Rate, now: Instant) -> Result<(), Duration> {
        let Ok(mut map) = self.windows.lock() else {
            return Err(rate.per);
        };
        let window = map.entry(key.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= rate.per)
        {
            window.pop_front();
        }
        if window.len() >= rate.count as usize {
            let oldest = window.front().copied().unwrap_or(now);
            return Err(rate.per.saturating_sub(now.duration_since(oldest)));
        }
        window.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_slides() {
        let r = RateLimiter::default();
        let rate = Rate {
            count: 2,
            per: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        assert!(r.check_at("k", rate, t0).is_ok());
        assert!(r.check_at("k", rate, t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(
            r.check_at("k", rate, t0 + Duration::from_secs(2)),
            Err(Duration::from_secs(58))
        );
        assert!(r.check_at("other", rate, t0).is_ok());
        assert!(r.check_at("k", rate, t0 + Duration::from_secs(60)).is_ok());
    }
}
