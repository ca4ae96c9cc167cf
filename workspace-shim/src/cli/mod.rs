//! Command line of `nexus-shim`: the clap definition and the dispatch. Each
//! command group lives in its own module, which holds its flags and its
//! `run`; what client commands share is in `call`.
//!
//! Exit codes (stable): 0 ok; 1 error; 2 usage; 3 denied by policy; 4 laptop
//! not connected after `--wait`; 5 allowed but missing at the laptop source.
//! `status`: 0 linked, 4 not linked, 1 no daemon.

mod call;
mod docs;
mod env;
mod file;
mod git_credential;
mod git_ssh;
mod http;
mod mcp;
mod pairing;
mod serve;
mod setup;
mod ssh;
mod status;
mod token;
mod tool;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

use crate::state::StateDir;

const AFTER_HELP: &str = "\
Exit codes: 0 ok, 1 error, 2 usage, 3 denied by the laptop's policy, 4 laptop not
connected within --wait, 5 allowed but missing at the laptop source.

Typical setup in a workspace:
  nexus-shim serve &                 # once, e.g. from the container entrypoint
  nexus-shim pairing-uri             # give this URI to `nexus-agent-proxy pair` on the laptop
  nexus-shim token get openai        # from the agent, once the laptop is linked
  eval \"$(nexus-shim env)\"           # SSH_AUTH_SOCK, git's helper, NEXUS_HTTP_URL
  export OPENAI_BASE_URL=$NEXUS_HTTP_URL/openai/v1   # any placeholder key: the laptop adds it
  nexus-shim tool list               # laptop tools this workspace may run";

/// The workspace side of Nexus Agent Proxy: a daemon the laptop dials into,
/// and the commands agents use to reach laptop credentials through it.
#[derive(Debug, Parser)]
#[command(name = "nexus-shim", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// State directory: keys, pairing record, sockets [default: $XDG_STATE_HOME/nexus or ~/.local/state/nexus]
    #[arg(long, global = true, env = "NEXUS_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

/// One variant per command group; its module holds the flags and the `run`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: accept the paired laptop's tunnel, serve local sockets.
    ///
    /// Writes STATE/pairing.uri once bound while no laptop is paired.
    /// SIGINT/SIGTERM drain in-flight calls, remove the sockets and exit 0.
    Serve(serve::ServeArgs),
    /// Print the pairing URI for `nexus-agent-proxy pair` (exit 5 once paired).
    PairingUri(pairing::PairingArgs),
    /// Show the daemon and link state (exit 0 linked, 4 not linked, 1 no daemon).
    Status(status::StatusArgs),
    /// Print `export` lines for `eval "$(nexus-shim env)"`: SSH_AUTH_SOCK,
    /// NEXUS_STATE_DIR, git's configuration (GIT_CONFIG_COUNT...: the
    /// credential helper, `git-ssh` as its SSH program, and the laptop's
    /// brokered HTTPS hosts when a laptop is linked), and NEXUS_HTTP_URL
    /// when the daemon serves HTTP injection
    /// (`OPENAI_BASE_URL=$NEXUS_HTTP_URL/openai/v1`).
    Env,
    /// Print known_hosts lines for the SSH hosts the laptop's policy allows,
    /// with the keys the laptop pinned (append them to ~/.ssh/known_hosts so
    /// `git clone` never stops at a host-key prompt).
    KnownHosts(ssh::KnownHostsArgs),
    /// Tokens declared in the laptop's policy.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Alias of `token` (`secret get NAME`).
    #[command(subcommand)]
    Secret(token::TokenCommand),
    /// git credential helper (set up by `nexus-shim env`): reads git's
    /// request on stdin; `get` asks the laptop, whose own git credential
    /// helpers answer if its policy allows; `store`/`erase` reach the
    /// laptop only where a rule lists them.
    GitCredential(git_credential::GitCredentialArgs),
    /// git's SSH program (set by `nexus-shim env` as `core.sshCommand`):
    /// for a host the laptop brokers (`[[git.allow]]`), the laptop runs
    /// `git-upload-pack`/`git-receive-pack` with its own ssh and decides
    /// every push; other hosts fall through to plain `ssh` with agent.sock.
    GitSsh(git_ssh::GitSshArgs),
    /// Custom laptop tools declared in the laptop's policy.
    #[command(subcommand)]
    Tool(tool::ToolCommand),
    /// Allowlisted laptop files (read-only).
    #[command(subcommand)]
    File(file::FileCommand),
    /// HTTP APIs the laptop calls for this workspace with its own keys
    /// (`$NEXUS_HTTP_URL/NAME/...`).
    #[command(subcommand)]
    Http(http::HttpCommand),
    /// Run a command with laptop tokens in its environment only:
    /// `exec --env OPENAI_API_KEY=token:openai -- CMD ARGS`. The command
    /// replaces this process (same pid: signals reach it; its exit code is
    /// the caller's).
    Exec(token::ExecArgs),
    /// Serve MCP on stdin/stdout, for agents (Claude Code, OpenCode, any MCP
    /// client): the laptop tools the policy allows, file_get,
    /// git_credential_check, and the tokens whose rule says `mcp = true`.
    ///
    /// Claude Code: `claude mcp add nexus -- nexus-shim mcp`.
    Mcp(mcp::McpArgs),
    /// Write an agent's own configuration from the live daemon: the LLM
    /// base URL through $NEXUS_HTTP_URL with a placeholder key, and the
    /// `nexus` MCP server (`setup shell`: `eval "$(nexus-shim env)"` in the
    /// shell's start-up files). Merges, is idempotent; `--remove` takes out
    /// what it added, `--print` only shows it. Exit 4: no laptop linked.
    #[command(subcommand)]
    Setup(setup::SetupCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// bash: `nexus-shim completions bash > ~/.local/share/bash-completion/completions/nexus-shim`;
    /// zsh: write `_nexus-shim` into a directory on `$fpath`.
    Completions(docs::CompletionsArgs),
    /// Write man pages (one per subcommand) into DIR, for packagers.
    #[command(hide = true)]
    ManPages(docs::ManPagesArgs),
}

/// Entry point: parse, run, map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_serve = matches!(cli.command, Command::Serve(_));
    nexus_transport::process::init_tracing(if is_serve { "info" } else { "warn" });
    // The calling thread only: the daemon relays, it does not compute, and
    // a worker beside the main thread costs a thread hop per accepted
    // tunnel and memory (its stack and allocator arena) in every workspace.
    nexus_transport::process::run_to_exit(
        "nexus-shim",
        nexus_transport::process::Threads::Current,
        run(cli),
    )
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let state = StateDir::resolve(cli.state_dir)?;
    call::exit_code(match cli.command {
        Command::Serve(args) => serve::run(state, args).await,
        Command::PairingUri(args) => pairing::run(&state, &args).await,
        Command::Status(args) => status::run(&state, &args).await,
        Command::Env => env::run(&state).await,
        Command::KnownHosts(args) => ssh::known_hosts(&state, &args).await,
        Command::Token(cmd) | Command::Secret(cmd) => token::run(&state, cmd).await,
        Command::GitCredential(args) => git_credential::run(&state, &args).await,
        Command::GitSsh(args) => git_ssh::run(&state, args).await,
        Command::Tool(cmd) => tool::run(&state, cmd).await,
        Command::File(cmd) => file::run(&state, cmd).await,
        Command::Http(cmd) => http::run(&state, cmd).await,
        Command::Exec(args) => token::exec(&state, args).await,
        Command::Mcp(args) => mcp::run(state, &args).await,
        Command::Setup(cmd) => setup::run(&state, cmd).await,
        Command::Completions(args) => Ok(docs::completions(Cli::command(), &args)),
        Command::ManPages(args) => Ok(docs::man_pages(Cli::command(), &args)),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The `--wait` of a parsed command line, or clap's error kind.
    fn wait(args: &[&str]) -> Result<Duration, clap::error::ErrorKind> {
        let cli = Cli::try_parse_from(["nexus-shim", "token", "get", "x"].iter().chain(args))
            .map_err(|e| e.kind())?;
        match cli.command {
            Command::Token(token::TokenCommand::Get { client, .. }) => Ok(client.wait),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(wait(&["--wait", "30s"]), Ok(Duration::from_secs(30)));
        assert_eq!(wait(&["--wait", "10"]), Ok(Duration::from_secs(10)));
        assert_eq!(wait(&["--wait", "0"]), Ok(Duration::ZERO));
        assert_eq!(wait(&["--wait", "500ms"]), Ok(Duration::from_millis(500)));
        assert_eq!(wait(&["--wait", "2m"]), Ok(Duration::from_secs(120)));
        // The one grammar of every flag and policy key: `min` and `d` too.
        assert_eq!(wait(&["--wait", "10min"]), Ok(Duration::from_secs(600)));
        assert_eq!(wait(&["--wait", "1d"]), Ok(Duration::from_secs(86_400)));
        for bad in ["", "s", "-1", "1.5s", "99999999999999999999h"] {
            assert_eq!(
                wait(&[&format!("--wait={bad}")]),
                Err(clap::error::ErrorKind::ValueValidation),
                "{bad}"
            );
        }
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
