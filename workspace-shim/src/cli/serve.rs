//! `serve`: validate everything, bind everything, then run the daemon (or,
//! with `--stdio`, relay into one that already runs).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use nexus_protocol::units::parse_duration;
use tokio_util::sync::CancellationToken;

use super::call::duration_grammar;
use crate::serve::{Listeners, ServeConfig, numeric_addr};
use crate::state::StateDir;

/// Flags of `serve`.
#[derive(Debug, Args)]
#[command(after_help = duration_grammar())]
pub(super) struct ServeArgs {
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
    #[arg(long, default_value = "15min", value_parser = parse_duration, value_name = "DURATION")]
    pairing_ttl: Duration,
    /// How long ssh requests on agent.sock wait for the laptop to link.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    agent_wait: Duration,
    /// The laptop's link is declared dead after this long without a ping (calls then wait for the next link).
    #[arg(long, env = "NEXUS_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    keepalive_timeout: Duration,
}

/// Runs the daemon until SIGINT/SIGTERM, or relays `--stdio` into one.
pub(super) async fn run(state: StateDir, args: ServeArgs) -> Result<ExitCode> {
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
    let http = crate::http::bind(&state, &args.http_listen).await?;
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
fn bind_private(path: &Path) -> Result<tokio::net::UnixListener> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
