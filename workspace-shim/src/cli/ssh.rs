//! `known-hosts`: the host keys the laptop pinned, for the workspace's ssh.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use nexus_protocol::{LocalOp, LocalReply, Reply, Request};

use super::call::{ClientArgs, Stop, ask};
use crate::state::StateDir;

/// Flags of `known-hosts`.
#[derive(Debug, Args)]
pub(super) struct KnownHostsArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// Prints one known_hosts line per pinned key.
pub(super) async fn known_hosts(state: &StateDir, args: &KnownHostsArgs) -> Result<ExitCode> {
    match ask(
        state,
        &args.client,
        LocalOp::Forward(Request::SshKnownHosts),
    )
    .await?
    {
        LocalReply::Reply(Reply::SshKnownHosts(lines)) => {
            for line in lines {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(Stop::reply(other).into()),
    }
}
