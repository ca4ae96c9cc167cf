//! `http list` and `http url`: the HTTP APIs the laptop calls for this
//! workspace, at `$NEXUS_HTTP_URL/NAME`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use nexus_protocol::{HttpApi, LocalOp, LocalReply, Reply, Request};
use serde::Serialize;

use super::call::{ClientArgs, ERROR, Stop, ask, print_json};
use crate::state::StateDir;

/// `http list`, `http url`.
#[derive(Debug, Subcommand)]
pub(super) enum HttpCommand {
    /// List the HTTP APIs the laptop calls for this workspace: use
    /// `$NEXUS_HTTP_URL/NAME` as the API's base URL with any placeholder key
    /// (e.g. `OPENAI_BASE_URL=$NEXUS_HTTP_URL/openai/v1 OPENAI_API_KEY=nexus`);
    /// the laptop adds the real one.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print $NEXUS_HTTP_URL of the running daemon (exit 1 when it serves
    /// no HTTP endpoint).
    Url,
}

/// An API as `http list --json` shows it: the laptop's description and
/// the URL to call it by here.
#[derive(Serialize)]
struct ApiView<'a> {
    #[serde(flatten)]
    api: &'a HttpApi,
    url: String,
}

/// `http list` / `http url`.
pub(super) async fn run(state: &StateDir, cmd: HttpCommand) -> Result<ExitCode> {
    match cmd {
        HttpCommand::Url => {
            if state.root().exists() {
                state.check()?;
            }
            let url = crate::trust::read_private(&state.http_url()).map_err(|e| {
                let why = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    e.to_string()
                } else {
                    format!(
                        "no daemon serves HTTP injection for {} (start one with: nexus-shim serve; \
                         not with --http-listen none)",
                        state.root().display()
                    )
                };
                Stop::new(ERROR, why)
            })?;
            println!("{}", url.trim());
            Ok(ExitCode::SUCCESS)
        }
        HttpCommand::List { json, client } => list(state, json, &client).await,
    }
}

async fn list(state: &StateDir, json: bool, client: &ClientArgs) -> Result<ExitCode> {
    let apis = match ask(state, client, LocalOp::Forward(Request::HttpList)).await? {
        LocalReply::Reply(Reply::HttpApis(apis)) => apis,
        other => return Err(Stop::reply(other).into()),
    };
    let base = crate::trust::read_private(&state.http_url())
        .map(|u| u.trim().to_owned())
        .unwrap_or_else(|_| "$NEXUS_HTTP_URL".to_owned());
    if json {
        let views: Vec<_> = apis
            .iter()
            .map(|api| ApiView {
                api,
                url: format!("{base}/{}", api.name),
            })
            .collect();
        print_json(&views)?;
    } else if apis.is_empty() {
        eprintln!("nexus-shim: the laptop's policy declares no HTTP APIs for this workspace");
    } else {
        for a in apis {
            let approve = if a.approve { " (needs approval)" } else { "" };
            println!("{base}/{}\n    -> {}{approve}", a.name, a.upstream);
            if !a.description.is_empty() {
                println!("    {}", a.description);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_its_keys() {
        let api = HttpApi {
            name: "openai".into(),
            description: "d".into(),
            upstream: "https://api.openai.com".into(),
            methods: vec!["POST".into()],
            paths: vec![],
            mcp: false,
            approve: true,
        };
        let view = ApiView {
            api: &api,
            url: "http://127.0.0.1:1/k/openai".into(),
        };
        assert_eq!(
            serde_json::to_value(&view).map(|v| v.to_string()).ok(),
            Some(
                r#"{"approve":true,"description":"d","mcp":false,"methods":["POST"],"name":"openai","paths":[],"upstream":"https://api.openai.com","url":"http://127.0.0.1:1/k/openai"}"#
                    .to_owned()
            )
        );
    }
}
