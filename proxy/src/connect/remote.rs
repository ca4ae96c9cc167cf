//! The scripts `connect` and `disconnect` run in the workspace (POSIX `sh`,
//! coreutils or busybox), and running them through a [`Channel`].
//!
//! Only fixed text and values the laptop computed (hex digests, flags)
//! are put into a script; nothing from the workspace or the user is.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;

use super::channel::Channel;

/// Where the shim lives and its state dir, as the shim itself resolves it.
const PATHS: &str = r#"b="$HOME/.local/bin/nexus-shim"
st="${NEXUS_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/nexus}"
fail() { echo "nexus-connect: $*" >&2; exit 1; }
nap() { sleep 0.1 2>/dev/null || sleep 1; }
stop_daemon() {
  [ -f "$st/serve.pid" ] || return 0
  pid=$(cat "$st/serve.pid") || return 0
  kill "$pid" 2>/dev/null || return 0
  i=0
  while kill -0 "$pid" 2>/dev/null; do
    i=$((i+1)); [ $i -gt 150 ] && fail "the nexus-shim daemon (pid $pid) did not stop"
    nap
  done
}
start_daemon() {
  "$b" status --wait 0 >/dev/null 2>&1
  [ $? -eq 1 ] || return 0
  mkdir -p "$st" || fail "cannot create the state dir $st"
  log="$st/serve.log"
  if command -v setsid >/dev/null 2>&1; then
    setsid "$b" serve --listen none </dev/null >>"$log" 2>&1 &
  else
    nohup "$b" serve --listen none </dev/null >>"$log" 2>&1 &
  fi
  i=0
  while :; do
    "$b" status --wait 0 >/dev/null 2>&1
    [ $? -ne 1 ] && return 0
    i=$((i+1))
    if [ $i -gt 150 ]; then tail -n 3 "$log" >&2; fail "the nexus-shim daemon did not start (log: $log)"; fi
    nap
  done
}
"#;

/// What the workspace is and has: `key=value` lines after a marker.
const PROBE: &str = r#"echo nexus-probe
echo "os=$(uname -s 2>/dev/null)"
echo "arch=$(uname -m 2>/dev/null)"
echo "home=${HOME:-}"
if [ -n "${HOME:-}" ] && mkdir -p "$HOME/.local/bin" 2>/dev/null && [ -w "$HOME/.local/bin" ]; then
  echo writable=yes
else
  echo writable=no
fi
for t in gzip sha256sum mktemp; do command -v "$t" >/dev/null 2>&1 || echo "missing=$t"; done
if [ -f "$b" ]; then
  echo "sha256=$(sha256sum "$b" 2>/dev/null | cut -d' ' -f1)"
  "$b" status --wait 0 >/dev/null 2>&1
  echo "daemon=$?"
fi
if [ -f "$st/paired.json" ]; then printf 'paired='; tr -d '\n' < "$st/paired.json"; echo; fi
"#;

/// Installs the upload on stdin (when `$want` is set: gunzip, check the
/// digest, atomic rename), restarts a daemon running the old one
/// (`$restart`), starts the daemon unless one runs (readiness: `status`
/// answers, bounded), runs `setup shell` (idempotent), and prints a fresh
/// pairing URI (`$pair`).
const SETUP: &str = r#"umask 077
if [ -n "$want" ]; then
  t=$(mktemp "$HOME/.local/bin/.nexus-shim.XXXXXX") || fail "cannot write in $HOME/.local/bin"
  if ! gzip -dc > "$t"; then rm -f "$t"; fail "the upload was cut short or damaged (gzip -dc failed); nothing was installed"; fi
  got=$(sha256sum "$t" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    rm -f "$t"
    fail "nothing was installed: the upload arrived with another SHA-256 ($got), altered on the way"
  fi
  chmod 755 "$t" && mv -f "$t" "$b" || { rm -f "$t"; fail "cannot install $b"; }
fi
[ "$restart" = 1 ] && stop_daemon
start_daemon
# New shells (and the agents started from them) get SSH_AUTH_SOCK, git's
# helper and NEXUS_HTTP_URL: one marked line in ~/.profile and ~/.bashrc.
"$b" setup shell >/dev/null 2>&1 || echo "nexus-connect: warning: \`nexus-shim setup shell\` failed; run it in the workspace" >&2
if [ "$pair" = 1 ]; then
  printf 'uri='
  "$b" pairing-uri --rotate 2>/dev/null || fail "the daemon gave no pairing token (log: $st/serve.log)"
fi
echo nexus-ready
"#;

/// Stops the daemon; with `$uninstall`, removes the shim, its pairing and
/// the line `setup shell` added.
const TEARDOWN: &str = r#"stop_daemon
if [ "$uninstall" = 1 ]; then
  "$b" setup shell --remove >/dev/null 2>&1
  rm -f "$b" "$st/paired.json" || fail "cannot remove $b"
fi
echo nexus-stopped
"#;

/// What the tunnel route runs: the daemon started if it is not running
/// (after a reboot, say: a `serve --stdio` of its own would end with the
/// link, taking `agent.sock` with it), then a relay into it.
#[must_use]
pub fn stdio() -> String {
    format!("{PATHS}start_daemon\nexec \"$b\" serve --stdio\n")
}

/// The probe script.
#[must_use]
pub fn probe() -> String {
    format!("{PATHS}{PROBE}")
}

/// The setup script: `want` is the upload's SHA-256 (hex) when uploading.
#[must_use]
pub fn setup(want: Option<&str>, restart: bool, pair: bool) -> String {
    let want = want.filter(|w| w.bytes().all(|b| b.is_ascii_hexdigit()));
    format!(
        "want={}\nrestart={}\npair={}\n{PATHS}{SETUP}",
        want.unwrap_or_default(),
        u8::from(restart),
        u8::from(pair)
    )
}

/// The teardown script.
#[must_use]
pub fn teardown(uninstall: bool) -> String {
    format!("uninstall={}\n{PATHS}{TEARDOWN}", u8::from(uninstall))
}

/// What a remote step printed.
#[derive(Debug)]
pub struct Ran {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Ran {
    /// The value of the first `key=` line.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    /// The line that says what went wrong: ours if there is one, else the
    /// channel's (ssh, kubectl, docker) last.
    pub fn reason(&self) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let ours = lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("nexus-connect: "));
        let line = ours.or(lines.last().copied()).unwrap_or("no message");
        crate::tools::clip(line)
    }
}

/// Runs `script` through `channel`, with `input` on its stdin, for at most
/// `limit`. `Err` only when it could not run or took too long.
pub async fn run(
    channel: &Channel,
    script: &str,
    input: Option<Vec<u8>>,
    limit: Duration,
) -> Result<Ran> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(channel.line(script))
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting sh")?;
    let feed = child.stdin.take().zip(input).map(|(mut stdin, bytes)| {
        tokio::spawn(async move {
            // A far end that stops reading early says why on stderr.
            let _ = stdin.write_all(&bytes).await;
            let _ = stdin.shutdown().await;
        })
    });
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no answer within {} through `{}`",
                nexus_protocol::units::format_duration(limit),
                channel.prefix()
            )
        })?
        .context("waiting for the channel command")?;
    if let Some(feed) = feed {
        feed.abort();
    }
    Ok(Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
