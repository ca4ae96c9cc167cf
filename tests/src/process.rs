//! Long-running children (`serve`, `run`) whose output goes to a log file.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use crate::{DEADLINE, Must, describe, poll};

/// How long a daemon gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A daemon started by a test. Dropping it sends SIGTERM, then SIGKILL if
/// it lingers, so nothing outlives the test, even one that panicked.
#[derive(Debug)]
pub struct Daemon {
    what: String,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    #[track_caller]
    pub fn spawn(mut cmd: Command, log: &Path) -> Self {
        let what = describe(&cmd);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .must(&format!("opening {}", log.display()));
        let err = file.try_clone().must("duplicating the log handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .must(&format!("starting {what}"));
        Self {
            what,
            child,
            log: log.to_path_buf(),
            exit: None,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    fn sigterm(&self) {
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
    }

    /// Sends SIGTERM and waits for the exit; a daemon that does not stop
    /// within the timeout is killed and fails the test.
    #[track_caller]
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(st) = self.try_exit() {
            return st;
        }
        self.sigterm();
        if let Some(st) = poll(STOP_TIMEOUT, || self.try_exit()) {
            return st;
        }
        self.kill();
        panic!(
            "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM\n--- log ---\n{}",
            self.what,
            self.log()
        );
    }

    /// Waits until the log contains `needle`; fails the test (with the log)
    /// at the deadline or if the daemon exits first.
    #[track_caller]
    pub fn wait_for_log(&mut self, needle: &str) {
        let found = poll(DEADLINE, || {
            if self.log().contains(needle) {
                Some(true)
            } else {
                self.try_exit().map(|_| false)
            }
        });
        assert!(
            found == Some(true),
            "{} never logged {needle:?} (exit: {:?})\n--- log ---\n{}",
            self.what,
            self.exit,
            self.log()
        );
    }

    /// Panics with the log if the daemon has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(st) = self.try_exit() {
            panic!(
                "{} exited unexpectedly ({st})\n--- log ---\n{}",
                self.what,
                self.log()
            );
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        self.sigterm();
        if poll(STOP_TIMEOUT, || self.try_exit()).is_none() {
            self.kill();
        }
    }
}
