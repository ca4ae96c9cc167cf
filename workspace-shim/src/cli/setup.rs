//! `setup claude-code|codex|opencode|shell`: writes an agent's own
//! configuration (or the shell's start-up files) from the live daemon; the
//! edits themselves are in `crate::setup`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use nexus_protocol::{HttpApi, LocalOp, LocalReply, Reply, Request};

use super::call::{ClientArgs, ERROR, Stop, ask};
use crate::setup::{self, Api, Home, Target, Wiring};
use crate::state::StateDir;

/// `setup claude-code|codex|opencode|shell`.
#[derive(Debug, Subcommand)]
pub(super) enum SetupCommand {
    /// Claude Code: `mcpServers.nexus` in ~/.claude.json (user scope);
    /// ANTHROPIC_BASE_URL, a placeholder ANTHROPIC_AUTH_TOKEN,
    /// CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 and the `mcp__nexus__*`
    /// permission in ~/.claude/settings.json.
    ClaudeCode(AgentArgs),
    /// Codex: `model_provider = "nexus"`, `[model_providers.nexus]` and
    /// `[mcp_servers.nexus]` (tools approved) in ~/.codex/config.toml.
    Codex(AgentArgs),
    /// OpenCode: `provider.NAME.options` (baseURL, a placeholder apiKey),
    /// `mcp.nexus` and `permission."nexus_*"` in
    /// ~/.config/opencode/opencode.json.
    #[command(name = "opencode")]
    OpenCode(AgentArgs),
    /// Adds `eval "$(nexus-shim env)"` once to ~/.profile and ~/.bashrc
    /// (and ~/.zshrc when zsh is the login shell).
    Shell(EditArgs),
}

/// Flags of every `setup` command.
#[derive(Debug, Args)]
pub(super) struct EditArgs {
    /// Show the files as they would be written; change nothing.
    #[arg(long)]
    print: bool,
    /// Take out exactly what setup adds (needs no daemon).
    #[arg(long)]
    remove: bool,
}

/// Flags of `setup` for an agent.
#[derive(Debug, Args)]
pub(super) struct AgentArgs {
    #[command(flatten)]
    edit: EditArgs,
    /// The laptop's HTTP API the agent's model calls go to (see `nexus-shim
    /// http list`) [default: anthropic for claude-code, openai for codex and opencode].
    #[arg(long, value_name = "NAME", conflicts_with = "remove")]
    api: Option<String>,
    /// Keep the agent's own prompt before each `nexus` tool call (by
    /// default the laptop's policy and approvals are the only gate).
    #[arg(long, conflicts_with = "remove")]
    ask: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Writes (or prints, or removes) the target's configuration.
pub(super) async fn run(state: &StateDir, cmd: SetupCommand) -> Result<ExitCode> {
    let (target, edit, agent) = match &cmd {
        SetupCommand::ClaudeCode(a) => (Target::ClaudeCode, &a.edit, Some(a)),
        SetupCommand::Codex(a) => (Target::Codex, &a.edit, Some(a)),
        SetupCommand::OpenCode(a) => (Target::OpenCode, &a.edit, Some(a)),
        SetupCommand::Shell(e) => (Target::Shell, e, None),
    };
    let home = Home::from_env()?;
    let wiring = if edit.remove {
        None
    } else {
        Some(wiring(state, target, agent).await?)
    };
    let changes = setup::plan(target, &home, wiring.as_ref())?;
    if edit.print {
        for c in &changes {
            match &c.after {
                Some(text) => print!("# {} would be:\n{text}", c.path.display()),
                None => println!("# {} would be removed", c.path.display()),
            }
        }
    } else {
        setup::apply(&changes)?;
        for c in &changes {
            let done = if c.after.is_some() {
                "wrote"
            } else {
                "removed"
            };
            eprintln!("nexus-shim: {done} {}", c.path.display());
        }
    }
    if changes.is_empty() {
        eprintln!("nexus-shim: nothing to change");
    }
    Ok(ExitCode::SUCCESS)
}

/// What the agent is wired to: this binary, the state dir and, for agents,
/// the API the live daemon serves.
async fn wiring(state: &StateDir, target: Target, agent: Option<&AgentArgs>) -> Result<Wiring> {
    let shim = std::env::current_exe().context("locating nexus-shim")?;
    let state_dir = std::path::absolute(state.root()).context("resolving the state dir")?;
    let mut wiring = Wiring {
        shim: shim.display().to_string(),
        state_dir: state_dir.display().to_string(),
        api: None,
        ask: agent.is_some_and(|a| a.ask),
    };
    if let (Some(args), Some(default)) = (agent, target.default_api()) {
        let name = args.api.as_deref().unwrap_or(default);
        wiring.api = Some(api(state, &args.client, name).await?);
    }
    Ok(wiring)
}

/// The API `name` as the linked laptop declares it, at this daemon's URL.
async fn api(state: &StateDir, client: &ClientArgs, name: &str) -> Result<Api> {
    let apis = match ask(state, client, LocalOp::Forward(Request::HttpList)).await? {
        LocalReply::Reply(Reply::HttpApis(apis)) => apis,
        other => return Err(Stop::reply(other).into()),
    };
    let Some(found) = apis.iter().find(|a| a.name == name) else {
        return Err(Stop::new(ERROR, missing_api(name, &apis)).into());
    };
    let base = crate::trust::read_private(&state.http_url()).map_err(|_| {
        Stop::new(
            ERROR,
            format!(
                "the daemon for {} serves no HTTP endpoint (restart it without --http-listen none)",
                state.root().display()
            ),
        )
    })?;
    Ok(Api {
        name: name.to_owned(),
        url: format!("{}/{name}", base.trim()),
        upstream_has_v1: found.upstream.trim_end_matches('/').ends_with("/v1"),
    })
}

fn missing_api(name: &str, apis: &[HttpApi]) -> String {
    let declared: Vec<&str> = apis.iter().map(|a| a.name.as_str()).collect();
    let declared = if declared.is_empty() {
        "none".to_owned()
    } else {
        declared.join(", ")
    };
    format!(
        "the laptop's policy declares no HTTP API {name:?} for this workspace (declared: \
         {declared}); pick one with --api NAME (see: nexus-shim http list), or add [http.{name}] \
         to the laptop's policy"
    )
}
