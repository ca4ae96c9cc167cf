//! A stderr that a flood cannot fill: at most [`LINES_PER_SECOND`] log
//! lines a second reach it; the rest are counted, and the next second
//! starts with one line saying how many were dropped.
//!
//! A hostile workspace staying within every call limit could otherwise grow
//! the laptop's log (a service manager's journal, a file) by about 0.6 MB/s.
//! What was decided stays in the audit log, which has a budget of its own.

use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines a second that reach stderr.
pub const LINES_PER_SECOND: u32 = 100;

/// The counting state of one second.
#[derive(Debug)]
struct Window {
    start: Instant,
    written: u32,
    dropped: u64,
}

/// A `tracing_subscriber` writer factory for a rate-limited sink.
#[derive(Debug)]
pub struct Limited<W> {
    sink: fn() -> W,
    window: Mutex<Window>,
}

impl<W: Write> Limited<W> {
    /// Lines go to `sink()`, at most [`LINES_PER_SECOND`] a second.
    pub fn new(sink: fn() -> W) -> Self {
        Limited {
            sink,
            window: Mutex::new(Window {
                start: Instant::now(),
                written: 0,
                dropped: 0,
            }),
        }
    }

    /// Whether a line may be written now; the first line of a new second
    /// also gets the count of the lines the last one dropped.
    fn admit(&self, now: Instant) -> (bool, u64) {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dropped = 0;
        if now.duration_since(w.start) >= Duration::from_secs(1) {
            dropped = std::mem::take(&mut w.dropped);
            w.start = now;
            w.written = 0;
        }
        if w.written < LINES_PER_SECOND {
            w.written += 1;
            (true, dropped)
        } else {
            w.dropped += 1;
            (false, dropped)
        }
    }
}

/// One log line's writer: writes through, or swallows the line.
#[derive(Debug)]
pub struct LineWriter<W> {
    sink: Option<W>,
}

impl<W: Write> Write for LineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.sink {
            Some(s) => s.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.as_mut().map_or(Ok(()), Write::flush)
    }
}

impl<'a, W: Write + 'a> tracing_subscriber::fmt::MakeWriter<'a> for Limited<W> {
    type Writer = LineWriter<W>;

    fn make_writer(&'a self) -> Self::Writer {
        let (admitted, dropped) = self.admit(Instant::now());
        let mut sink = (self.sink)();
        if dropped > 0 {
            let _ = writeln!(
                sink,
                "nexus: {dropped} log lines dropped in the last second (more than {LINES_PER_SECOND} a second)"
            );
        }
        LineWriter {
            sink: admitted.then_some(sink),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_and_counted() {
        let limited = Limited::new(std::io::sink);
        let t0 = Instant::now();
        let admitted = (0..1000).filter(|_| limited.admit(t0).0).count();
        assert_eq!(admitted, LINES_PER_SECOND as usize);
        let (ok, dropped) = limited.admit(t0 + Duration::from_secs(1));
        assert!(ok);
        assert_eq!(dropped, 1000 - u64::from(LINES_PER_SECOND));
        assert_eq!(limited.admit(t0 + Duration::from_secs(2)), (true, 0));
    }
}
