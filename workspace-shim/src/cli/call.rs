//! What every client command shares: `--wait`, one call to the daemon, and
//! [`Stop`], an early end with its own exit code and one line for stderr.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use nexus_protocol::units::{DURATION_FORMS, parse_duration};
use nexus_protocol::{LocalOp, LocalReply, Reply};
use serde::Serialize;

use crate::client::Session;
use crate::state::StateDir;

/// Exit code 1: an error not of the kinds below.
pub(super) const ERROR: u8 = 1;
/// Exit code 2: the command line is wrong.
pub(super) const USAGE: u8 = 2;
/// Exit code 4: the laptop is not connected.
pub(super) const NOT_LINKED: u8 = 4;
/// Exit code 5: allowed, but missing at the source (or nothing to pair).
pub(super) const MISSING: u8 = 5;
/// Exit code when our stdout was closed (`| head`), as SIGPIPE would give.
pub(super) const BROKEN_PIPE: u8 = 141;

/// Flags of every command that calls the laptop through the daemon.
#[derive(Debug, Args)]
#[command(after_help = duration_grammar())]
pub(super) struct ClientArgs {
    /// How long to wait for the laptop to link (e.g. 30s, 10min; 0 fails at once).
    #[arg(long, env = "NEXUS_WAIT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub(super) wait: Duration,
}

/// The help line of every command with a DURATION flag: the one grammar.
pub(super) fn duration_grammar() -> String {
    format!("DURATION is {DURATION_FORMS}.")
}

/// How a command ends early: the exit code and the line for stderr.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(super) struct Stop {
    code: u8,
    message: String,
}

impl Stop {
    /// An end with `code`, telling the user `message`.
    pub(super) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A reply other than the one asked for: the laptop's refusal with its
    /// code, or an answer only a daemon of another version would give.
    pub(super) fn reply(reply: LocalReply) -> Self {
        match reply {
            LocalReply::Reply(Reply::Error(e)) => Self::new(e.code.exit_code(), e.message),
            other => Self::new(
                ERROR,
                format!(
                    "unexpected answer from the daemon: {other:?}; is it the same version as this client?"
                ),
            ),
        }
    }
}

/// Sends one request to the daemon and returns its first reply.
pub(super) async fn ask(state: &StateDir, client: &ClientArgs, op: LocalOp) -> Result<LocalReply> {
    let mut session = Session::start(state, client.wait, op).await?;
    Ok(session.next().await?)
}

/// A command's outcome as an exit code: a [`Stop`] is told on stderr here;
/// any other error is left to the caller (one line, exit 1).
pub(super) fn exit_code(outcome: Result<ExitCode>) -> Result<ExitCode> {
    outcome.or_else(|e| {
        let stop = e.downcast::<Stop>()?;
        eprintln!("nexus-shim: {stop}");
        Ok(ExitCode::from(stop.code))
    })
}

/// Prints `value` as one line of JSON, keys sorted as `--json` always gave them.
pub(super) fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_value(value)?);
    Ok(())
}
