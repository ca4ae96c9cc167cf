//! `tool list` and `tool run`: custom laptop tools declared in its policy.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use nexus_protocol::{Channel, LocalOp, LocalReply, Reply, Request, ToolInfo};

use super::call::{BROKEN_PIPE, ClientArgs, Stop, ask, print_json};
use crate::client::Session;
use crate::state::StateDir;

/// `tool list`, `tool run`.
#[derive(Debug, Subcommand)]
pub(super) enum ToolCommand {
    /// List the laptop tools this workspace may run, with their argument patterns.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a laptop tool; its output streams here, its exit code is ours.
    ///
    /// Arguments after `--` are matched one by one against the patterns the
    /// laptop's policy declares (see `tool list`). If this command is killed,
    /// the tool is killed on the laptop.
    Run {
        /// Tool name, as declared in the laptop's policy.
        name: String,
        /// Arguments for the tool (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `tool list` / `tool run`.
pub(super) async fn run(state: &StateDir, cmd: ToolCommand) -> Result<ExitCode> {
    match cmd {
        ToolCommand::List { json, client } => list(state, json, &client).await,
        ToolCommand::Run { name, args, client } => {
            let op = LocalOp::Forward(Request::ToolRun { name, args });
            let mut session = Session::start(state, client.wait, op).await?;
            loop {
                match session.next().await? {
                    LocalReply::Reply(Reply::Chunk { channel, data }) => {
                        let res = if channel == Channel::Stderr {
                            let mut e = std::io::stderr().lock();
                            e.write_all(&data).and_then(|()| e.flush())
                        } else {
                            let mut o = std::io::stdout().lock();
                            o.write_all(&data).and_then(|()| o.flush())
                        };
                        if res.is_err() {
                            return Ok(ExitCode::from(BROKEN_PIPE));
                        }
                    }
                    LocalReply::Reply(Reply::Exit(code)) => {
                        return Ok(ExitCode::from(
                            u8::try_from(code.clamp(0, 255)).unwrap_or(1),
                        ));
                    }
                    other => return Err(Stop::reply(other).into()),
                }
            }
        }
    }
}

async fn list(state: &StateDir, json: bool, client: &ClientArgs) -> Result<ExitCode> {
    let tools = match ask(state, client, LocalOp::Forward(Request::ToolList)).await? {
        LocalReply::Reply(Reply::Tools(tools)) => tools,
        other => return Err(Stop::reply(other).into()),
    };
    if json {
        print_json(&tools)?;
    } else if tools.is_empty() {
        eprintln!("nexus-shim: the laptop's policy declares no tools for this workspace");
    } else {
        tools.iter().for_each(print_tool);
    }
    Ok(ExitCode::SUCCESS)
}

/// Two lines: the tool with its argument patterns, then what it does.
fn print_tool(t: &ToolInfo) {
    let args = if t.args.is_empty() {
        String::new()
    } else {
        format!(" -- {}", t.args.join(" "))
    };
    let approve = if t.approve { " (needs approval)" } else { "" };
    println!("{}{args}\n    {}{approve}", t.name, t.description);
}
