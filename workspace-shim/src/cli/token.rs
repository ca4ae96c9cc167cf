//! `token get` (and its alias `secret get`) and `exec`, which hands tokens
//! to one command's environment only.

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use nexus_protocol::{LocalOp, LocalReply, Reply, Request, Secret};

use super::call::{ClientArgs, Stop, USAGE, ask};
use crate::state::StateDir;

/// `token get`.
#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Print a token's value on stdout.
    ///
    /// The value comes from the laptop (keyring, env, file or command) if its
    /// policy allows this workspace to have it.
    Get {
        /// Token name, as declared in the laptop's policy.
        name: String,
        /// Do not print a newline after the value.
        #[arg(short = 'n', long)]
        no_newline: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `exec --env VAR=token:NAME... -- CMD ARGS`.
#[derive(Debug, Args)]
pub(super) struct ExecArgs {
    /// VAR=token:NAME: set VAR to the laptop token NAME, in CMD's environment only.
    #[arg(long = "env", value_name = "VAR=token:NAME")]
    envs: Vec<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `token get NAME`: the value on stdout.
pub(super) async fn run(state: &StateDir, cmd: TokenCommand) -> Result<ExitCode> {
    let TokenCommand::Get {
        name,
        no_newline,
        client,
    } = cmd;
    let value = fetch(state, &client, name).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(value.expose()).context("writing to stdout")?;
    if !no_newline {
        out.write_all(b"\n").context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// One token's value from the laptop.
async fn fetch(state: &StateDir, client: &ClientArgs, name: String) -> Result<Secret> {
    match ask(state, client, LocalOp::Forward(Request::Token { name })).await? {
        LocalReply::Reply(Reply::Token(value)) => Ok(value),
        other => Err(Stop::reply(other).into()),
    }
}

/// `exec`: fetch the tokens, then replace this process with the command,
/// the values set in its environment only. The command inherits our pid,
/// so signals sent to us reach it, and its exit code is the caller's.
pub(super) async fn exec(state: &StateDir, args: ExecArgs) -> Result<ExitCode> {
    let mut envs: Vec<(String, Secret)> = Vec::new();
    for spec in &args.envs {
        let Some((var, name)) = spec
            .split_once('=')
            .and_then(|(v, src)| Some((v, src.strip_prefix("token:")?)))
        else {
            return Err(Stop::new(
                USAGE,
                format!(
                    "--env {spec:?}: expected VAR=token:NAME, e.g. --env OPENAI_API_KEY=token:openai"
                ),
            )
            .into());
        };
        let valid_var = var
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_var {
            return Err(Stop::new(
                USAGE,
                format!("--env {var:?}: not a valid environment variable name"),
            )
            .into());
        }
        let value = fetch(state, &args.client, name.to_owned()).await?;
        envs.push((var.to_owned(), value));
    }
    let Some((program, rest)) = args.command.split_first() else {
        return Err(Stop::new(USAGE, "exec needs a command after --").into());
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest);
    for (var, value) in &envs {
        use std::os::unix::ffi::OsStrExt;
        cmd.env(var, std::ffi::OsStr::from_bytes(value.expose()));
    }
    // Returns only if the command could not be started.
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    eprintln!(
        "nexus-shim: cannot run {}: {err}",
        Path::new(program).display()
    );
    Ok(ExitCode::from(
        if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
    ))
}
