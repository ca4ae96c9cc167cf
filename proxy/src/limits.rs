//! Every limit the laptop enforces on one workspace, in one place, with its
//! default. They are `run` flags (and `NEXUS_*` variables). Going over a
//! limit fails that call with an error reply; it never ends the tunnel or
//! the proxy.

use std::time::Duration;

use clap::Args;
use nexus_protocol::units::{DURATION_FORMS, SIZE_FORMS, parse_duration, parse_size};

/// Default time without an answer to a ping before a link is declared dead.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default calls answered at once per workspace.
pub const DEFAULT_MAX_CALLS_IN_FLIGHT: usize = 64;
/// Default calls of one tool answered at once per workspace.
pub const DEFAULT_MAX_CALLS_PER_TOOL: usize = 32;
/// Default largest call frame: a sign request carries at most one 256 KiB
/// agent message plus a few session binds.
pub const DEFAULT_MAX_CALL_FRAME: usize = 512 << 10;
/// Default time the laptop spends on one call before failing it.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// yamux queues this many inbound streams on the laptop side
/// ([`nexus_transport::MuxConfig::PROXY`]); more calls in flight than
/// that could never be reached.
const MAX_IN_FLIGHT_CEILING: usize = 448;

/// Limits per workspace link (`run` flags).
#[derive(Debug, Clone, Args)]
pub struct Limits {
    #[arg(long, env = "NEXUS_KEEPALIVE_TIMEOUT", value_name = "DURATION",
          default_value = "10s", value_parser = parse_keepalive,
          help = format!("A link is declared dead (and redialed) after this long with nothing \
                          from the shim, or four times as long without an answer to a ping; \
                          pings go every quarter of it (500ms to 1h): {DURATION_FORMS}"))]
    pub keepalive_timeout: Duration,
    /// Calls of one workspace answered at once; more wait their turn.
    #[arg(long, env = "NEXUS_MAX_CALLS_IN_FLIGHT", value_name = "N",
          default_value_t = DEFAULT_MAX_CALLS_IN_FLIGHT,
          value_parser = parse_calls)]
    pub max_calls_in_flight: usize,
    /// Calls of one tool (token, ssh...) one workspace may have running at
    /// once; calls beyond it wait their turn (first come, first served) for up
    /// to --call-timeout, and only then are refused (exit 3 in the workspace).
    #[arg(long, env = "NEXUS_MAX_CALLS_PER_TOOL", value_name = "N",
          default_value_t = DEFAULT_MAX_CALLS_PER_TOOL,
          value_parser = parse_calls)]
    pub max_calls_per_tool: usize,
    #[arg(long, env = "NEXUS_MAX_CALL_FRAME", value_name = "SIZE",
          default_value = "512KiB", value_parser = parse_frame_size,
          help = format!("Largest call frame accepted (4KiB to 1MiB); a larger call is refused, \
                          its stream closed: {SIZE_FORMS}"))]
    pub max_call_frame: usize,
    #[arg(long, env = "NEXUS_CALL_TIMEOUT", value_name = "DURATION",
          default_value = "60s", value_parser = parse_call_timeout,
          help = format!("How long the laptop works on one call before failing it: {DURATION_FORMS}"))]
    pub call_timeout: Duration,
    /// Most disk space the audit log may take, all segments together; the
    /// oldest segments are removed beyond it (`audit verify` says how many
    /// entries went). At least 64KiB.
    #[arg(long, env = "NEXUS_AUDIT_MAX_SIZE", value_name = "SIZE",
          default_value = "512MiB", value_parser = parse_audit_budget)]
    pub audit_max_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_calls_in_flight: DEFAULT_MAX_CALLS_IN_FLIGHT,
            max_calls_per_tool: DEFAULT_MAX_CALLS_PER_TOOL,
            max_call_frame: DEFAULT_MAX_CALL_FRAME,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            audit_max_size: crate::audit::DEFAULT_BUDGET,
        }
    }
}

impl Limits {
    /// How often pings go out: a quarter of the timeout, so three may be
    /// lost to a slow link before the fourth is late.
    #[must_use]
    pub fn ping_interval(&self) -> Duration {
        (self.keepalive_timeout / 4).max(Duration::from_millis(100))
    }
}

fn parse_calls(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_IN_FLIGHT_CEILING).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid call count {s:?}: use a number from 1 to {MAX_IN_FLIGHT_CEILING}"
        )),
    }
}

fn parse_keepalive(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(500) || d > Duration::from_secs(3600) {
        return Err(format!(
            "keepalive timeout {s:?} is out of range: use 500ms to 1h"
        ));
    }
    Ok(d)
}

fn parse_call_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("a call timeout of 0 would fail every call; use e.g. 60s".into());
    }
    Ok(d)
}

fn parse_audit_budget(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n < crate::audit::MIN_BUDGET {
        return Err(format!(
            "an audit budget of {s:?} is too small to hold a segment: use at least 64KiB"
        ));
    }
    Ok(n)
}

/// A size between 4 KiB and the 1 MiB protocol maximum.
fn parse_frame_size(s: &str) -> Result<usize, String> {
    let bytes = parse_size(s)?;
    match usize::try_from(bytes) {
        Ok(n) if (4 << 10..=nexus_protocol::MAX_FRAME).contains(&n) => Ok(n),
        _ => Err(format!(
            "frame size {s:?} is out of range: use 4KiB to 1MiB"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_bounds() {
        assert_eq!(parse_frame_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_frame_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_frame_size("8192"), Ok(8192));
        assert_eq!(parse_frame_size("65536B"), Ok(64 << 10));
        for bad in ["2MiB", "1", "x", "-5KiB", "", "1GiB", "512kb"] {
            assert!(parse_frame_size(bad).is_err(), "{bad}");
        }
    }

    /// Every duration flag reads the one grammar: `10min` and `500ms` as
    /// well as `600` and `10m`.
    #[test]
    fn durations_read_the_one_grammar() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            limits: Limits,
        }
        let parse = |args: &[&str]| T::try_parse_from([&["t"], args].concat()).map(|t| t.limits);
        let l = parse(&["--call-timeout", "10min", "--keepalive-timeout", "500ms"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.call_timeout, Duration::from_secs(600));
        assert_eq!(l.keepalive_timeout, Duration::from_millis(500));
        for same in ["10m", "600", "600s"] {
            let l = parse(&["--call-timeout", same]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(l.call_timeout, Duration::from_secs(600), "{same}");
        }
        assert_eq!(
            parse(&["--call-timeout", "1d"])
                .map(|l| l.call_timeout)
                .ok(),
            Some(Duration::from_secs(86_400))
        );
        assert!(parse(&["--call-timeout", "10 minutes"]).is_err());
        assert!(parse(&["--max-call-frame", "64KiB"]).is_ok_and(|l| l.max_call_frame == 64 << 10));
    }

    #[test]
    fn defaults_match_the_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            limits: Limits,
        }
        let parsed = T::parse_from(["t"]).limits;
        let d = Limits::default();
        assert_eq!(parsed.keepalive_timeout, d.keepalive_timeout);
        assert_eq!(parsed.max_calls_in_flight, d.max_calls_in_flight);
        assert_eq!(parsed.max_calls_per_tool, d.max_calls_per_tool);
        assert_eq!(parsed.max_call_frame, d.max_call_frame);
        assert_eq!(parsed.call_timeout, d.call_timeout);
        assert_eq!(d.ping_interval(), Duration::from_millis(2500));
        assert!(parse_keepalive("100ms").is_err());
        assert!(parse_call_timeout("0").is_err());
    }
}
