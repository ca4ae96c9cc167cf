//! `mcp`: the entry of the stdio MCP server (which is `crate::mcp`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::call::ClientArgs;
use crate::state::StateDir;

/// Flags of `mcp`.
#[derive(Debug, Args)]
pub(super) struct McpArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// Serves MCP on stdin/stdout until the client closes it.
pub(super) async fn run(state: StateDir, args: &McpArgs) -> Result<ExitCode> {
    crate::mcp::serve(state, args.client.wait).await?;
    Ok(ExitCode::SUCCESS)
}
