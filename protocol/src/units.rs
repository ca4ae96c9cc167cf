//! The one grammar for durations and sizes, shared by every command-line flag
//! of both binaries and every policy key.
//!
//! - Durations: a whole number followed by `ms`, `s`, `min` (or `m`), `h` or
//!   `d`; a bare number is seconds. `500ms`, `30s`, `10min`, `2h`, `1d`.
//! - Sizes: a whole number followed by `B`, `KiB`, `MiB` or `GiB`; a bare
//!   number is bytes. `100B`, `512KiB`, `10MiB`, `1GiB`.

use std::time::Duration;

/// What [`parse_duration`] accepts, for help texts and error messages.
pub const DURATION_FORMS: &str =
    "a number with ms, s, min, h or d (500ms, 30s, 10min, 2h, 1d); a bare number is seconds";

/// What [`parse_size`] accepts, for help texts and error messages.
pub const SIZE_FORMS: &str =
    "a number with B, KiB, MiB or GiB (100B, 512KiB, 10MiB, 1GiB); a bare number is bytes";

/// Splits `"10min"` into `(10, "min")`; leading and trailing blanks are ignored.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    Some((num.parse().ok()?, unit.trim_start()))
}

/// Parses a duration: `500ms`, `30s`, `10min` (or `10m`), `2h`, `1d`, or a
/// bare number of seconds.
///
/// # Errors
/// A message naming the input and the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {:?}: expected {DURATION_FORMS}", s.trim());
    let (n, unit) = split_number(s).ok_or_else(bad)?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "min" | "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {:?} is too large", s.trim()))
}

/// Parses a size: `100B`, `512KiB`, `10MiB`, `1GiB`, or a bare number of bytes.
///
/// # Errors
/// A message naming the input and the accepted forms.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {:?}: expected {SIZE_FORMS}", s.trim());
    let (n, unit) = split_number(s).ok_or_else(bad)?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size {:?} is too large", s.trim()))
}

/// Writes a duration in the grammar [`parse_duration`] reads, with the
/// largest unit that divides it: `90s`, `10min`, `1d`, `250ms`.
#[must_use]
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("min", 60_000),
        ("s", 1_000),
    ] {
        if ms >= per && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// Writes a size in the grammar [`parse_size`] reads, with the largest unit
/// that divides it: `10MiB`, `1536KiB`, `7B`.
#[must_use]
pub fn format_size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", 500),
            ("30s", 30_000),
            ("30", 30_000),
            ("0", 0),
            ("10min", 600_000),
            ("10m", 600_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            (" 5s ", 5_000),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for bad in [
            "",
            "s",
            "ten",
            "5 days",
            "1.5s",
            "-1s",
            "5sec",
            "5M",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let err = parse_duration("5weeks");
        assert!(
            matches!(&err, Err(e) if e.contains("min") && e.contains("5weeks")),
            "{err:?}"
        );
    }

    #[test]
    fn sizes() {
        let ok = [
            ("100B", 100),
            ("7", 7),
            ("512KiB", 512 << 10),
            ("10MiB", 10 << 20),
            ("1GiB", 1 << 30),
        ];
        for (text, n) in ok {
            assert_eq!(parse_size(text), Ok(n), "{text}");
        }
        for bad in [
            "",
            "MiB",
            "1TB",
            "1MB",
            "x",
            "1.5MiB",
            "99999999999999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_read_back() {
        for ms in [
            0, 1, 250, 1_000, 90_000, 600_000, 7_200_000, 86_400_000, 90_061_001,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        for n in [0, 7, 1024, 1536 << 10, 10 << 20, 3 << 30, (1 << 30) + 1] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10min");
        assert_eq!(format_size(10 << 20), "10MiB");
    }
}
