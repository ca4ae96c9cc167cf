//! `git-credential get|store|erase`: git's helper protocol on stdin/stdout.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use nexus_protocol::{
    ErrorCode, GitOperation, LocalOp, LocalReply, MAX_CREDENTIAL_INPUT, Reply, Request, Secret,
    parse_credential,
};

use super::call::{ClientArgs, ERROR, Stop, ask};
use crate::state::StateDir;

/// Flags of `git-credential`.
#[derive(Debug, Args)]
pub(super) struct GitCredentialArgs {
    /// get, store or erase (others are ignored, as git expects).
    operation: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// Answers git; a `get` that fails tells git `quit=1`, so that it asks no
/// other helper and no terminal.
pub(super) async fn run(state: &StateDir, args: &GitCredentialArgs) -> Result<ExitCode> {
    let op = match args.operation.as_str() {
        "get" => GitOperation::Get,
        "store" => GitOperation::Store,
        "erase" => GitOperation::Erase,
        // Helpers ignore operations they do not know (git's documented rule).
        _ => return Ok(ExitCode::SUCCESS),
    };
    let mut input = zeroize::Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(MAX_CREDENTIAL_INPUT as u64 + 1)
        .read_to_end(&mut input)
        .context("reading the credential description from stdin")?;
    let outcome = forward(state, &args.client, op, &input).await;
    if op == GitOperation::Get && outcome.is_err() {
        println!("quit=1");
        let _ = std::io::stdout().flush();
    }
    outcome
}

/// Passes git's description to the laptop and its answer back to git.
async fn forward(
    state: &StateDir,
    client: &ClientArgs,
    op: GitOperation,
    input: &[u8],
) -> Result<ExitCode> {
    let cred = parse_credential(input).map_err(|e| {
        Stop::new(
            ERROR,
            format!("refused the credential description from git: {e}"),
        )
    })?;
    let request = Request::GitCredential {
        operation: op,
        input: Secret::new(cred.serialize().to_vec()),
    };
    match ask(state, client, LocalOp::Forward(request)).await? {
        LocalReply::Reply(Reply::GitCredential(out)) => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.expose()).context("writing to git")?;
            stdout.flush().context("writing to git")?;
            Ok(ExitCode::SUCCESS)
        }
        // store/erase that no rule lists do nothing, quietly: git calls
        // them after every use.
        LocalReply::Reply(Reply::Error(e))
            if op != GitOperation::Get && e.code == ErrorCode::Denied =>
        {
            Ok(ExitCode::SUCCESS)
        }
        // Allowed, but the laptop has nothing for this URL: answer like a
        // helper with nothing to offer (no output, success), so git asks
        // its next helper or the user. Only a denial stops git (`quit=1`).
        LocalReply::Reply(Reply::Error(e))
            if op == GitOperation::Get && e.code == ErrorCode::Missing =>
        {
            tracing::debug!(reason = %e.message, "the laptop has no credential for this URL");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(Stop::reply(other).into()),
    }
}
