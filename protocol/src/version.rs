//! Protocol version negotiation.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The version this build speaks best.
///
/// v2: a call answered by one reply (not [`Request::is_streaming`]) ends
/// its request with the end of its stream, and a keyed one is confirmed in
/// the `received` of a later call ([`CallKey::later`]) rather than with
/// [`ANSWER_RECEIVED`] on its own stream.
///
/// [`Request::is_streaming`]: crate::Request::is_streaming
/// [`CallKey::later`]: crate::CallKey::later
/// [`ANSWER_RECEIVED`]: crate::ANSWER_RECEIVED
pub const PROTOCOL_VERSION: u16 = 2;

/// The first version whose calls answered by one reply are confirmed later
/// (see [`PROTOCOL_VERSION`]).
pub const CONFIRMS_LATER: u16 = 2;

/// The versions this build can speak.
pub const SUPPORTED: VersionRange = VersionRange {
    min: 1,
    max: PROTOCOL_VERSION,
};

/// An inclusive range of protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    /// Oldest version spoken.
    pub min: u16,
    /// Newest version spoken.
    pub max: u16,
}

impl std::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "v{}", self.min)
        } else {
            write!(f, "v{}..v{}", self.min, self.max)
        }
    }
}

/// No version is spoken by both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error(
    "protocol version mismatch: this side speaks {ours}, the peer speaks {theirs}; \
     upgrade the older of nexus-agent-proxy and nexus-shim"
)]
pub struct VersionMismatch {
    /// Our range.
    pub ours: VersionRange,
    /// The peer's range.
    pub theirs: VersionRange,
}

/// Picks the newest version both ranges contain.
///
/// # Errors
/// [`VersionMismatch`] naming both ranges when they do not overlap (or a
/// range is inverted).
pub fn negotiate(ours: VersionRange, theirs: VersionRange) -> Result<u16, VersionMismatch> {
    let high = ours.max.min(theirs.max);
    let low = ours.min.max(theirs.min);
    if theirs.min > theirs.max || high < low {
        return Err(VersionMismatch { ours, theirs });
    }
    Ok(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn r(min: u16, max: u16) -> VersionRange {
        VersionRange { min, max }
    }

    #[test]
    fn picks_newest_common() {
        assert_eq!(negotiate(r(1, 3), r(2, 5)), Ok(3));
        assert_eq!(negotiate(r(1, 1), r(1, 1)), Ok(1));
    }

    #[test]
    fn disjoint_or_inverted_is_refused_naming_both() {
        let err = negotiate(r(1, 1), r(2, 4)).err();
        assert_eq!(
            err,
            Some(VersionMismatch {
                ours: r(1, 1),
                theirs: r(2, 4)
            })
        );
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("v1") && text.contains("v2..v4"), "{text}");
        assert!(negotiate(r(1, 3), r(3, 1)).is_err());
    }
}
