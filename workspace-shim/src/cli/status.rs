//! `status`: the daemon and link state, for people and (`--json`) scripts.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use nexus_protocol::units::parse_duration;
use nexus_protocol::{LinkStatus, LocalOp, LocalReply, StatusInfo};
use tokio::time::Instant;

use super::call::{ClientArgs, NOT_LINKED, Stop, ask, duration_grammar, print_json};
use crate::state::StateDir;

/// How often `status --wait` asks the daemon again: the link state is a
/// local answer, so asking is cheap, and a user waits at most this long
/// after the link comes up.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Flags of `status`.
#[derive(Debug, Args)]
#[command(after_help = duration_grammar())]
pub(super) struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Wait up to DURATION for the laptop to link before answering. Unlike
    /// other commands, `status` answers at once unless asked (no NEXUS_WAIT).
    #[arg(long, default_value = "0", value_parser = parse_duration, value_name = "DURATION")]
    wait: Duration,
}

/// Prints the state; exit 0 linked, 4 not linked (1 with no daemon).
pub(super) async fn run(state: &StateDir, args: &StatusArgs) -> Result<ExitCode> {
    let deadline = Instant::now() + args.wait;
    let client = ClientArgs {
        wait: Duration::ZERO,
    };
    let info = loop {
        let info = match ask(state, &client, LocalOp::Status).await? {
            LocalReply::Status(info) => info,
            other => return Err(Stop::reply(other).into()),
        };
        if info.link == LinkStatus::Linked || Instant::now() >= deadline {
            break info;
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + POLL_EVERY)).await;
    };
    if args.json {
        print_json(&json_view(&info, state.root())?)?;
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
    let linked = info.link == LinkStatus::Linked;
    Ok(ExitCode::from(if linked { 0 } else { NOT_LINKED }))
}

/// `status --json`: the daemon's [`StatusInfo`] with `linked` (a bool) in
/// place of its `link`, and the state dir this client asked.
fn json_view(info: &StatusInfo, state_dir: &Path) -> Result<serde_json::Value> {
    let mut view = serde_json::to_value(info)?;
    if let Some(fields) = view.as_object_mut() {
        fields.remove("link");
        fields.insert("linked".into(), (info.link == LinkStatus::Linked).into());
        let root = state_dir.to_string_lossy().into_owned();
        fields.insert("state_dir".into(), root.into());
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_its_keys() {
        let info = StatusInfo {
            link: LinkStatus::Linked,
            listen: "0.0.0.0:7676".into(),
            paired_fingerprint: None,
            pairing_pending: true,
            peer: Some("10.0.0.2:5000".into()),
            linked_for_s: Some(3),
            version: "nexus-shim 0".into(),
        };
        let view = json_view(&info, Path::new("/state")).map_err(|e| e.to_string());
        assert_eq!(
            view.map(|v| v.to_string()),
            Ok(r#"{"linked":true,"linked_for_s":3,"listen":"0.0.0.0:7676","paired_fingerprint":null,"pairing_pending":true,"peer":"10.0.0.2:5000","state_dir":"/state","version":"nexus-shim 0"}"#.to_owned())
        );
    }
}
