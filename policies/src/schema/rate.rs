//! Rate limits written as `COUNT/UNIT`, e.g. `"60/min"` or `"5/10s"`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How many calls are allowed per window, e.g. `60/min`.
///
/// Parsed from `COUNT/UNIT` where UNIT is one of `s`, `sec`, `second`, `m`,
/// `min`, `minute`, `h`, `hour`, `d`, `day`, optionally preceded by a whole
/// multiplier (`5/10s` is five calls per ten seconds). `Display` writes the
/// canonical form back, which parses to the same value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Calls allowed per window; at least 1.
    pub count: u32,
    /// Length of the window; a whole number of seconds, at least one.
    pub per: Duration,
}

/// Why a rate string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// No `/` between the count and the unit.
    #[error("missing '/' between count and unit")]
    MissingSlash,
    /// The count is not a whole number that fits in 32 bits.
    #[error("count {0:?} is not a whole number")]
    BadCount(String),
    /// The count is zero.
    #[error("count must be at least 1")]
    ZeroCount,
    /// The unit is not one of the known ones.
    #[error("unknown unit {0:?}")]
    BadUnit(String),
    /// The multiplier in front of the unit is zero or too large.
    #[error("window multiplier {0:?} must be a whole number from 1 up")]
    BadMultiplier(String),
}

/// Units accepted after the `/`, with their length in seconds.
const UNITS: &[(&str, u64)] = &[
    ("s", 1),
    ("sec", 1),
    ("second", 1),
    ("m", 60),
    ("min", 60),
    ("minute", 60),
    ("h", 3_600),
    ("hour", 3_600),
    ("d", 86_400),
    ("day", 86_400),
];

/// The shape a rate must have, for error messages.
pub(crate) const RATE_EXPECTED: &str = "expected COUNT/UNIT like \"60/min\" or \"5/10s\" \
     (UNIT: s, sec, second, m, min, minute, h, hour, d, day; COUNT at least 1)";

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (count, window) = s.split_once('/').ok_or(RateError::MissingSlash)?;
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RateError::BadCount(count.to_owned()));
        }
        let count: u32 = count
            .parse()
            .map_err(|_| RateError::BadCount(count.to_owned()))?;
        if count == 0 {
            return Err(RateError::ZeroCount);
        }
        let digits = window.bytes().take_while(u8::is_ascii_digit).count();
        let (multiplier, unit) = window.split_at(digits);
        let unit_secs = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|&(_, secs)| secs)
            .ok_or_else(|| RateError::BadUnit(unit.to_owned()))?;
        let multiplier = if multiplier.is_empty() {
            1
        } else {
            multiplier
                .parse::<u64>()
                .ok()
                .filter(|&m| m > 0)
                .ok_or_else(|| RateError::BadMultiplier(multiplier.to_owned()))?
        };
        let secs = multiplier
            .checked_mul(unit_secs)
            .ok_or_else(|| RateError::BadMultiplier(multiplier.to_string()))?;
        Ok(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.per.as_secs();
        // The largest unit that divides the window evenly keeps "60/min" as written.
        let (unit, unit_secs) = [("day", 86_400), ("hour", 3_600), ("min", 60)]
            .into_iter()
            .find(|&(_, u)| secs != 0 && secs.is_multiple_of(u))
            .unwrap_or(("s", 1));
        let multiplier = secs / unit_secs;
        if multiplier == 1 {
            write!(f, "{}/{unit}", self.count)
        } else {
            write!(f, "{}/{multiplier}{unit}", self.count)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, secs: u64) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(secs),
        }
    }

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("60/min", rate(60, 60)),
            ("10/s", rate(10, 1)),
            ("10/sec", rate(10, 1)),
            ("10/second", rate(10, 1)),
            ("3/m", rate(3, 60)),
            ("3/minute", rate(3, 60)),
            ("100/hour", rate(100, 3_600)),
            ("100/h", rate(100, 3_600)),
            ("7/d", rate(7, 86_400)),
            ("7/day", rate(7, 86_400)),
            ("5/10s", rate(5, 10)),
            ("5/2h", rate(5, 7_200)),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Rate>(), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_forms() {
        let cases = [
            ("0/min", RateError::ZeroCount),
            ("ten/min", RateError::BadCount("ten".into())),
            ("-1/min", RateError::BadCount("-1".into())),
            ("99999999999/min", RateError::BadCount("99999999999".into())),
            ("5/fortnight", RateError::BadUnit("fortnight".into())),
            ("5/", RateError::BadUnit(String::new())),
            ("5/0s", RateError::BadMultiplier("0".into())),
            ("5 per min", RateError::MissingSlash),
            ("5/ min", RateError::BadUnit(" min".into())),
            ("5/mins", RateError::BadUnit("mins".into())),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Rate>(), Err(want), "{text}");
        }
    }

    #[test]
    fn displays_canonically() {
        let cases = [
            ("60/min", "60/min"),
            ("10/sec", "10/s"),
            ("1/60s", "1/min"),
            ("5/10s", "5/10s"),
            ("100/hour", "100/hour"),
            ("2/48h", "2/2day"),
            ("4/90m", "4/90min"),
        ];
        for (text, want) in cases {
            let parsed: Rate = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.to_string(), want);
        }
    }
}
