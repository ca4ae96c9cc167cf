//! Command line of `nexus-shim`.
//!
//! Exit codes (stable): 0 ok; 1 error; 2 usage; 3 denied by policy; 4 laptop
//! not connected after `--wait`; 5 allowed but missing at the laptop source.
//! `status`: 0 linked, 4 not linked, 1 no daemon.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use nexus_protocol::{LinkStatus, LocalOp, LocalReply, PairingInfo, Reply, Request};
use tokio_util::sync::CancellationToken;

use crate::client::Session;
use crate::serve::{Listeners, ServeConfig, numeric_addr};
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: accept the paired laptop's tunnel, serve local sockets.
    ///
    /// Writes STATE/pairing.uri once bound while no laptop is paired.
    /// SIGINT/SIGTERM drain in-flight calls, remove the sockets and exit 0.
    Serve(ServeArgs),
    /// Print the pairing URI for `nexus-agent-proxy pair` (exit 5 once paired).
    PairingUri {
        /// Issue a new one-time token first (to pair again, or another laptop).
        #[arg(long)]
        rotate: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the daemon and link state (exit 0 linked, 4 not linked, 1 no daemon).
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print `export` lines for `eval "$(nexus-shim env)"`: SSH_AUTH_SOCK,
    /// NEXUS_STATE_DIR, git's credential helper (GIT_CONFIG_COUNT...), and
    /// NEXUS_HTTP_URL when the daemon serves HTTP injection
    /// (`OPENAI_BASE_URL=$NEXUS_HTTP_URL/openai/v1`).
    Env,
    /// Print known_hosts lines for the SSH hosts the laptop's policy allows,
    /// with the keys the laptop pinned (append them to ~/.ssh/known_hosts so
    /// `git clone` never stops at a host-key prompt).
    KnownHosts {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Tokens declared in the laptop's policy.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Alias of `token` (`secret get NAME`).
    #[command(subcommand)]
    Secret(TokenCommand),
    /// git credential helper (set up by `nexus-shim env`): reads git's
    /// request on stdin; `get` asks the laptop, whose own git credential
    /// helpers answer if its policy allows; `store`/`erase` reach the
    /// laptop only where a rule lists them.
    GitCredential {
        /// get, store or erase (others are ignored, as git expects).
        operation: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Custom laptop tools declared in the laptop's policy.
    #[command(subcommand)]
    Tool(crate::commands::ToolCommand),
    /// Allowlisted laptop files (read-only).
    #[command(subcommand)]
    File(crate::commands::FileCommand),
    /// HTTP APIs the laptop calls for this workspace with its own keys
    /// (`$NEXUS_HTTP_URL/NAME/...`).
    #[command(subcommand)]
    Http(crate::commands::HttpCommand),
    /// Run a command with laptop tokens in its environment only:
    /// `exec --env OPENAI_API_KEY=token:openai -- CMD ARGS`. The command
    /// replaces this process (same pid: signals reach it; its exit code is
    /// the caller's).
    Exec(crate::commands::ExecArgs),
    /// Serve MCP on stdin/stdout, for agents (Claude Code, OpenCode, any MCP
    /// client): the laptop tools the policy allows, file_get,
    /// git_credential_check, and the tokens whose rule says `mcp = true`.
    ///
    /// Claude Code: `claude mcp add nexus -- nexus-shim mcp`.
    Mcp {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// bash: `nexus-shim completions bash > ~/.local/share/bash-completion/completions/nexus-shim`;
    /// zsh: write `_nexus-shim` into a directory on `$fpath`.
    Completions {
        /// Target shell.
        shell: nexus_transport::docs::Shell,
    },
    /// Write man pages (one per subcommand) into DIR, for packagers.
    #[command(hide = true)]
    ManPages {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
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

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address for the laptop's tunnel, raw TLS or WebSocket on the same port
    /// (numeric IP:PORT, host names are not resolved; port 0 picks a free port;
    /// `none`: only --stdio relays) [default: 0.0.0.0:7676, or none with --stdio].
    #[arg(long, env = "NEXUS_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Carry the tunnel on stdin/stdout (the laptop runs this through
    /// `kubectl exec -i` or `ssh` with `--connect-command`). If a daemon
    /// already runs on this state dir, relay into it; otherwise serve until
    /// stdin closes.
    #[arg(long)]
    stdio: bool,
    /// Address of the plain-HTTP endpoint for HTTP secret injection, on
    /// workspace loopback (`nexus-shim env` exports its URL as
    /// NEXUS_HTTP_URL; numeric IP:PORT; `none` turns it off).
    #[arg(
        long,
        env = "NEXUS_HTTP_LISTEN",
        default_value = "127.0.0.1:0",
        value_name = "ADDR"
    )]
    http_listen: String,
    /// HOST:PORT the pairing URI names, when the laptop reaches us by another address (the laptop resolves it).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Lifetime of a pairing token.
    #[arg(long, default_value = "15m", value_parser = parse_duration, value_name = "DURATION")]
    pairing_ttl: Duration,
    /// How long ssh requests on agent.sock wait for the laptop to link.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    agent_wait: Duration,
    /// The laptop's link is declared dead after this long without a ping (calls then wait for the next link).
    #[arg(long, env = "NEXUS_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    keepalive_timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// How long to wait for the laptop to link (30s, 2m, 500ms; a bare number is seconds; 0 fails at once).
    #[arg(long, env = "NEXUS_WAIT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) wait: Duration,
}

/// Parses `30s`, `2m`, `1h`, `500ms`, or a bare number of seconds.
pub use nexus_transport::parse_duration;

/// Entry point: parse, run, map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_serve = matches!(cli.command, Command::Serve(_));
    nexus_transport::process::init_tracing(if is_serve { "info" } else { "warn" });
    nexus_transport::process::run_to_exit("nexus-shim", run(cli))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let state = StateDir::resolve(cli.state_dir)?;
    match cli.command {
        cmd @ (Command::Completions { .. } | Command::ManPages { .. }) => Ok(docs(&cmd)),
        Command::Mcp { client } => {
            crate::mcp::serve(state, client.wait).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve(state, args).await,
        Command::PairingUri { rotate, client } => pairing_uri(&state, rotate, &client).await,
        Command::Status { json, client } => status(&state, json, &client).await,
        Command::Env => {
            let q = |p: &std::path::Path| shell_quote(&p.display().to_string());
            println!("export NEXUS_STATE_DIR={}", q(state.root()));
            println!("export SSH_AUTH_SOCK={}", q(&state.agent_sock()));
            // git: this shim as the only credential helper (the empty value
            // clears helpers configured before), with the repository path.
            let exe = std::env::current_exe().context("locating nexus-shim")?;
            let helper = format!("!{} git-credential", q(&exe));
            println!("export GIT_CONFIG_COUNT=3");
            println!("export GIT_CONFIG_KEY_0=credential.helper GIT_CONFIG_VALUE_0=''");
            println!(
                "export GIT_CONFIG_KEY_1=credential.helper GIT_CONFIG_VALUE_1={}",
                shell_quote(&helper)
            );
            println!("export GIT_CONFIG_KEY_2=credential.useHttpPath GIT_CONFIG_VALUE_2=true");
            // Written by a daemon serving HTTP injection.
            if let Ok(url) = std::fs::read_to_string(state.http_url()) {
                println!("export NEXUS_HTTP_URL={}", shell_quote(url.trim()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::KnownHosts { client } => known_hosts(&state, &client).await,
        Command::Token(TokenCommand::Get {
            name,
            no_newline,
            client,
        })
        | Command::Secret(TokenCommand::Get {
            name,
            no_newline,
            client,
        }) => token_get(&state, name, no_newline, &client).await,
        Command::GitCredential { operation, client } => {
            crate::commands::git_credential(&state, &operation, &client).await
        }
        Command::Tool(cmd) => crate::commands::tool(&state, cmd).await,
        Command::File(cmd) => crate::commands::file(&state, cmd).await,
        Command::Http(cmd) => crate::commands::http(&state, cmd).await,
        Command::Exec(args) => crate::commands::exec(&state, args).await,
    }
}

async fn serve(state: StateDir, args: ServeArgs) -> Result<ExitCode> {
    // Validate everything before binding anything.
    let preset_token = std::env::var("NEXUS_PAIRING_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if let Some(t) = &preset_token {
        check_preset_token(t)?;
    }
    state.prepare()?;
    if args.stdio
        && let Ok(daemon) = tokio::net::UnixStream::connect(state.tunnel_sock()).await
    {
        crate::ingress::relay_stdio(daemon)
            .await
            .context("relaying stdin/stdout to the daemon's tunnel.sock")?;
        return Ok(ExitCode::SUCCESS);
    }
    let (identity, created) =
        nexus_transport::Identity::load_or_create(state.root(), nexus_transport::tls::SERVER_NAME)?;
    if created {
        tracing::info!(fingerprint = %identity.fingerprint(), "created the workspace key and certificate");
    }
    let sock = state.shim_sock();
    if tokio::net::UnixStream::connect(&sock).await.is_ok() {
        bail!(
            "a nexus-shim daemon already runs for {} (socket {} answers)",
            state.root().display(),
            sock.display()
        );
    }
    let listen = args
        .listen
        .clone()
        .or_else(|| (!args.stdio).then(|| "0.0.0.0:7676".to_owned()))
        .filter(|l| l != "none");
    let tunnel = match &listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(numeric_addr("--listen", addr)?)
                .await
                .with_context(|| format!("binding the tunnel listener on {addr}"))?,
        ),
        None => None,
    };
    let http = match args.http_listen.as_str() {
        "none" => None,
        addr => {
            let listener = tokio::net::TcpListener::bind(numeric_addr("--http-listen", addr)?)
                .await
                .with_context(|| format!("binding the HTTP endpoint on {addr} (--http-listen)"))?;
            if !listener.local_addr()?.ip().is_loopback() {
                tracing::warn!(%addr, "--http-listen is not a loopback address: other hosts can reach it (its URL's key still applies)");
            }
            Some((listener, crate::http::load_or_create_key(&state)?))
        }
    };
    let listeners = Listeners {
        tunnel,
        relay: bind_private(&state.tunnel_sock())?,
        stdio: args.stdio,
        local: bind_private(&sock)?,
        agent: bind_private(&state.agent_sock())?,
        http,
    };
    let cfg = ServeConfig {
        state,
        advertise: args.advertise,
        pairing_ttl: args.pairing_ttl,
        preset_token,
        agent_wait: args.agent_wait,
        keepalive_timeout: args.keepalive_timeout,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(nexus_transport::process::cancel_on_signals(
        shutdown.clone(),
    ));
    crate::serve::run(cfg, listeners, identity, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Binds a Unix socket readable and writable by its owner only (a stale
/// socket file from a crashed daemon is replaced).
fn bind_private(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(listener)
}

/// A preset token goes into a URI verbatim and must resist guessing.
fn check_preset_token(t: &str) -> Result<()> {
    let url_safe = t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'));
    if !url_safe || !(16..=128).contains(&t.len()) {
        bail!(
            "NEXUS_PAIRING_TOKEN must be 16-128 characters of A-Z a-z 0-9 - _ . ~ (it is put in the pairing URI \
             as is); generate one with: openssl rand -hex 16"
        );
    }
    Ok(())
}

async fn pairing_uri(state: &StateDir, rotate: bool, client: &ClientArgs) -> Result<ExitCode> {
    let mut session = match Session::start(state, client.wait, LocalOp::PairingUri { rotate }).await
    {
        Ok(s) => s,
        Err(e) => return Ok(client_error(&e)),
    };
    match session.next().await {
        Ok(LocalReply::Pairing(PairingInfo::Uri { uri, expires_in_s })) => {
            println!("{}", String::from_utf8_lossy(uri.expose()));
            eprintln!(
                "nexus-shim: single use, expires in {}m{:02}s. On the laptop: nexus-agent-proxy pair '<URI>' --name NAME",
                expires_in_s / 60,
                expires_in_s % 60
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(LocalReply::Pairing(PairingInfo::AlreadyPaired)) => {
            eprintln!(
                "nexus-shim: this workspace is already paired and no token is pending; \
                 to pair again or another laptop run: nexus-shim pairing-uri --rotate"
            );
            Ok(ExitCode::from(5))
        }
        Ok(other) => Ok(unexpected(other)),
        Err(e) => Ok(client_error(&e)),
    }
}

async fn status(state: &StateDir, json: bool, client: &ClientArgs) -> Result<ExitCode> {
    let mut session = match Session::start(state, client.wait, LocalOp::Status).await {
        Ok(s) => s,
        Err(e) => return Ok(client_error(&e)),
    };
    let info = match session.next().await {
        Ok(LocalReply::Status(info)) => info,
        Ok(other) => return Ok(unexpected(other)),
        Err(e) => return Ok(client_error(&e)),
    };
    let linked = info.link == LinkStatus::Linked;
    if json {
        let v = serde_json::json!({
            "linked": linked,
            "state_dir": state.root(),
            "listen": info.listen,
            "paired_fingerprint": info.paired_fingerprint,
            "pairing_pending": info.pairing_pending,
            "peer": info.peer,
            "linked_for_s": info.linked_for_s,
            "version": info.version,
        });
        println!("{v}");
    } else {
        let link = match (&info.peer, info.linked_for_s) {
            (Some(peer), Some(s)) => format!("linked to {peer} for {s}s"),
            _ => "not linked (no laptop connected)".into(),
        };
        println!("link:      {link}");
        println!(
            "paired:    {}",
            info.paired_fingerprint
                .as_deref()
                .unwrap_or("no (see: nexus-shim pairing-uri)")
        );
        if info.pairing_pending {
            println!("pairing:   a token is pending (nexus-shim pairing-uri)");
        }
        println!("listening: {}", info.listen);
        println!("state dir: {}", state.root().display());
        println!("daemon:    {}", info.version);
    }
    Ok(ExitCode::from(if linked { 0 } else { 4 }))
}

async fn token_get(
    state: &StateDir,
    name: String,
    no_newline: bool,
    client: &ClientArgs,
) -> Result<ExitCode> {
    let mut session = match Session::start(
        state,
        client.wait,
        LocalOp::Forward(Request::Token { name }),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return Ok(client_error(&e)),
    };
    match session.next().await {
        Ok(LocalReply::Reply(Reply::Token(value))) => {
            let mut out = std::io::stdout().lock();
            out.write_all(value.expose()).context("writing to stdout")?;
            if !no_newline {
                out.write_all(b"\n").context("writing to stdout")?;
            }
            out.flush().context("writing to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(LocalReply::Reply(Reply::Error(e))) => {
            eprintln!("nexus-shim: {}", e.message);
            Ok(ExitCode::from(e.code.exit_code()))
        }
        Ok(other) => Ok(unexpected(other)),
        Err(e) => Ok(client_error(&e)),
    }
}

async fn known_hosts(state: &StateDir, client: &ClientArgs) -> Result<ExitCode> {
    let mut session =
        match Session::start(state, client.wait, LocalOp::Forward(Request::SshKnownHosts)).await {
            Ok(s) => s,
            Err(e) => return Ok(client_error(&e)),
        };
    match session.next().await {
        Ok(LocalReply::Reply(Reply::SshKnownHosts(lines))) => {
            for line in lines {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(other) => Ok(unexpected(other)),
        Err(e) => Ok(client_error(&e)),
    }
}

/// Single-quotes a value for POSIX shells.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub(crate) fn client_error(e: &crate::client::ClientError) -> ExitCode {
    eprintln!("nexus-shim: {e}");
    ExitCode::from(1)
}

pub(crate) fn unexpected(reply: LocalReply) -> ExitCode {
    match reply {
        LocalReply::Reply(Reply::Error(e)) => {
            eprintln!("nexus-shim: {}", e.message);
            ExitCode::from(e.code.exit_code())
        }
        other => {
            eprintln!(
                "nexus-shim: unexpected answer from the daemon: {other:?}; is it the same version as this client?"
            );
            ExitCode::from(1)
        }
    }
}

/// `completions` and `man-pages`: generated from the clap definition.
fn docs(command: &Command) -> ExitCode {
    use clap::CommandFactory;
    match command {
        Command::Completions { shell } => {
            nexus_transport::docs::run(Cli::command(), Some(*shell), None)
        }
        Command::ManPages { dir } => nexus_transport::docs::run(Cli::command(), None, Some(dir)),
        _ => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "s", "1d", "-1", "1.5s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn preset_tokens() {
        assert!(check_preset_token("0123456789abcdef").is_ok());
        for bad in [
            "short",
            "0123456789abcdef&x=1",
            "0123456789abcdef ",
            &"a".repeat(129),
        ] {
            assert!(check_preset_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
