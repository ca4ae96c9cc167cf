//! Tokens: values fetched on the laptop from the keyring, an environment
//! variable, a file or a command, and handed to the workspace only when the
//! policy declares them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nexus_policy::{Action, Grant, PolicySet, TokenSource, Verdict};
use nexus_protocol::{ErrorCode, Reply, Secret};
use tokio::io::AsyncReadExt;
use tracing::warn;
use zeroize::Zeroize;

use super::ToolContext;
use super::pipeline::{Asked, Decided, Listing, Scope, Tool, wrong_grant};

/// Largest value a file or command source may produce.
pub const MAX_VALUE: usize = 64 << 10;
/// How long a command source may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a source gave no value.
#[derive(Debug)]
pub enum SourceError {
    /// Allowed, but absent at the source (exit 5 in the workspace).
    Missing(String),
    /// The source failed (exit 1).
    Failed(String),
}

/// `token get NAME`: the value, from where the deciding rule says it lives.
#[derive(Debug)]
pub struct Token<'a> {
    /// The token's name in the policy.
    pub name: &'a str,
}

impl Tool for Token<'_> {
    fn ask(&mut self, scope: &Scope<'_>, policy: &PolicySet) -> Result<Asked, Reply> {
        let outcome = scope.decide(policy, Action::Token { name: self.name });
        Ok(Asked::decided(Decided::new(
            outcome,
            "token",
            self.name.to_owned(),
        )))
    }

    async fn run<S>(
        self,
        scope: &Scope<'_>,
        _: &PolicySet,
        grant: Option<Grant>,
        _: &mut S,
    ) -> Option<Reply> {
        let Some(Grant::Token(rule)) = grant else {
            return wrong_grant();
        };
        Some(match fetch(&rule.source, scope.ctx).await {
            Ok(value) => Reply::Token(value),
            Err(e) => e.reply(&format!("token {:?}", self.name)),
        })
    }
}

/// `nexus-shim mcp`'s question: the tokens this workspace would be allowed
/// whose deciding rule says `mcp = true` (names only; getting one is still
/// a `Token` request through the gate).
#[derive(Debug)]
pub struct McpNames;

impl Listing for McpNames {
    fn list(&self, scope: &Scope<'_>, policy: &PolicySet) -> Reply {
        let names = policy
            .user()
            .token_names()
            .into_iter()
            .filter(|name| {
                let outcome = scope.decide(policy, Action::Token { name });
                outcome.decision.verdict == Verdict::Allow
                    && matches!(&outcome.decision.grant, Some(Grant::Token(rule)) if rule.mcp)
            })
            .map(str::to_owned)
            .collect();
        Reply::McpTokens(names)
    }
}

impl SourceError {
    /// The error reply for `what` (`token "x"`): exit 5 when the value is
    /// missing at its source, 1 when the source failed.
    pub fn reply(self, what: &str) -> Reply {
        match self {
            Self::Missing(m) => Reply::error(ErrorCode::Missing, format!("{what}: {m}")),
            Self::Failed(m) => Reply::error(ErrorCode::Internal, format!("{what}: {m}")),
        }
    }
}

/// Reads a value from its source.
///
/// # Errors
/// [`SourceError::Missing`] when the source has no such value,
/// [`SourceError::Failed`] when it could not be asked.
pub async fn fetch(source: &TokenSource, ctx: &ToolContext) -> Result<Secret, SourceError> {
    match source {
        TokenSource::Keyring { service, account } => {
            keyring_get(service.clone(), account.clone()).await
        }
        TokenSource::Env(var) => match std::env::var_os(var) {
            Some(v) => Ok(Secret::new(v.into_encoded_bytes())),
            None => Err(SourceError::Missing(format!(
                "environment variable {var} is not set in the proxy"
            ))),
        },
        TokenSource::File(path) => read_file(&expand_home(path, ctx.home())).await,
        TokenSource::Command(argv) => run_command(argv, ctx.source_path.as_deref()).await,
    }
}

async fn keyring_get(service: String, account: String) -> Result<Secret, SourceError> {
    let task = tokio::task::spawn_blocking(move || {
        crate::keyring::init().map_err(|e| SourceError::Failed(format!("{e:#}")))?;
        let entry = keyring_core::Entry::new(&service, &account)
            .map_err(|e| SourceError::Failed(format!("keyring entry {service}/{account}: {e}")))?;
        match entry.get_secret() {
            Ok(v) => Ok(Secret::new(v)),
            Err(keyring_core::Error::NoEntry) => Err(SourceError::Missing(format!(
                "no keyring entry {service}/{account} on the laptop; store it with: nexus-agent-proxy secret set"
            ))),
            Err(e) => Err(SourceError::Failed(format!(
                "reading keyring entry {service}/{account}: {e}"
            ))),
        }
    });
    task.await
        .unwrap_or_else(|e| Err(SourceError::Failed(format!("keyring task failed: {e}"))))
}

/// `~/x` means the laptop user's home.
pub fn expand_home(path: &str, home: Option<PathBuf>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

async fn read_file(path: &std::path::Path) -> Result<Secret, SourceError> {
    let shown = path.display();
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SourceError::Missing(format!(
                "file {shown} does not exist on the laptop"
            )));
        }
        Err(e) => return Err(SourceError::Failed(format!("reading {shown}: {e}"))),
    };
    if !meta.is_file() || meta.len() > MAX_VALUE as u64 {
        return Err(SourceError::Failed(format!(
            "{shown} is not a regular file of at most {MAX_VALUE} bytes"
        )));
    }
    let mut bytes = tokio::fs::read(path)
        .await
        .map_err(|e| SourceError::Failed(format!("reading {shown}: {e}")))?;
    trim_newline(&mut bytes);
    Ok(Secret::new(bytes))
}

/// Runs a source command with no shell and no stdin; its stdout (minus one
/// trailing newline) is the value. Killed at the timeout or when dropped.
async fn run_command(argv: &[String], path: Option<&str>) -> Result<Secret, SourceError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(SourceError::Failed("empty command".into()));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let mut child = cmd.spawn().map_err(|e| {
        SourceError::Failed(format!(
            "cannot run {program:?}: {e}; check that it is installed and on the PATH given by --source-path"
        ))
    })?;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(SourceError::Failed("command pipes unavailable".into()));
    };
    let run = async {
        let mut value = Vec::new();
        let mut errors = Vec::new();
        let mut out = (&mut out).take(MAX_VALUE as u64 + 1);
        let mut err = (&mut err).take(4096);
        let (r1, _) = tokio::join!(out.read_to_end(&mut value), err.read_to_end(&mut errors));
        r1.map_err(|e| SourceError::Failed(format!("reading the output of {program:?}: {e}")))?;
        let status = child
            .wait()
            .await
            .map_err(|e| SourceError::Failed(format!("waiting for {program:?}: {e}")))?;
        Ok::<_, SourceError>((status, value, errors))
    };
    let (status, mut value, errors) =
        tokio::time::timeout(COMMAND_TIMEOUT, run)
            .await
            .map_err(|_| {
                SourceError::Failed(format!(
                    "{program:?} did not finish within {COMMAND_TIMEOUT:?}"
                ))
            })??;
    if !status.success() {
        value.zeroize();
        warn!(program, %status, stderr = %String::from_utf8_lossy(&errors).trim(), "token command failed");
        return Err(SourceError::Failed(format!(
            "{program:?} exited with {status}; its stderr is in the proxy's log"
        )));
    }
    if value.len() > MAX_VALUE {
        value.zeroize();
        return Err(SourceError::Failed(format!(
            "{program:?} printed more than {MAX_VALUE} bytes"
        )));
    }
    trim_newline(&mut value);
    Ok(Secret::new(value))
}

fn trim_newline(v: &mut Vec<u8>) {
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_trimming_and_home() {
        for (input, want) in [
            (&b"a\n"[..], &b"a"[..]),
            (b"a\r\n", b"a"),
            (b"a\n\n", b"a\n"),
            (b"", b""),
        ] {
            let mut v = input.to_vec();
            trim_newline(&mut v);
            assert_eq!(v, want);
        }
        assert_eq!(expand_home("~/x", Some("/h".into())), PathBuf::from("/h/x"));
        assert_eq!(
            expand_home("/abs", Some("/h".into())),
            PathBuf::from("/abs")
        );
    }

    #[tokio::test]
    async fn command_source_runs_without_shell() {
        let argv = vec![
            "printf".to_owned(),
            "%s\\n".to_owned(),
            "v;$(id)".to_owned(),
        ];
        let got = run_command(&argv, None)
            .await
            .map(|s| s.expose().to_vec())
            .map_err(|e| format!("{e:?}"));
        assert_eq!(got, Ok(b"v;$(id)".to_vec()));
        let fail = run_command(&["false".to_owned()], None).await;
        assert!(matches!(fail, Err(SourceError::Failed(m)) if m.contains("exited")));
        let missing = run_command(&["/nonexistent/x".to_owned()], None).await;
        assert!(matches!(missing, Err(SourceError::Failed(m)) if m.contains("cannot run")));
    }
}
