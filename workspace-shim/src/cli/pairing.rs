//! `pairing-uri`: the one-time URI the laptop pairs with.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use nexus_protocol::{LocalOp, LocalReply, PairingInfo};

use super::call::{ClientArgs, MISSING, Stop, ask};
use crate::state::StateDir;

/// Flags of `pairing-uri`.
#[derive(Debug, Args)]
pub(super) struct PairingArgs {
    /// Issue a new one-time token first (to pair again, or another laptop).
    #[arg(long)]
    rotate: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Prints the URI on stdout and how to use it on stderr; exit 5 once paired.
pub(super) async fn run(state: &StateDir, args: &PairingArgs) -> Result<ExitCode> {
    let op = LocalOp::PairingUri {
        rotate: args.rotate,
    };
    match ask(state, &args.client, op).await? {
        LocalReply::Pairing(PairingInfo::Uri { uri, expires_in_s }) => {
            println!("{}", String::from_utf8_lossy(uri.expose()));
            eprintln!(
                "nexus-shim: single use, expires in {}m{:02}s. On the laptop: nexus-agent-proxy pair '<URI>' --name NAME",
                expires_in_s / 60,
                expires_in_s % 60
            );
            Ok(ExitCode::SUCCESS)
        }
        LocalReply::Pairing(PairingInfo::AlreadyPaired) => Err(Stop::new(
            MISSING,
            "this workspace is already paired and no token is pending; \
             to pair again or another laptop run: nexus-shim pairing-uri --rotate",
        )
        .into()),
        other => Err(Stop::reply(other).into()),
    }
}
