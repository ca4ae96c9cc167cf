//! `mcp`: the entry of the stdio MCP server (which is `crate::mcp`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::call::{ClientArgs, ERROR};
use crate::state::StateDir;

/// Flags of `mcp`.
#[derive(Debug, Args)]
pub(super) struct McpArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// Serves MCP on stdin/stdout until the client closes it; with no daemon,
/// fails loudly (exit 1).
pub(super) async fn run(state: StateDir, args: &McpArgs) -> Result<ExitCode> {
    let Some(why) = crate::mcp::daemon_missing(&state).await else {
        crate::mcp::serve(state, args.client.wait).await?;
        return Ok(ExitCode::SUCCESS);
    };
    // Agents hide a server's stderr in a log and show a failed
    // `initialize`: say it in both places, at once.
    eprintln!("nexus-shim: {why}");
    crate::mcp::refuse(why).await;
    Ok(ExitCode::from(ERROR))
}
