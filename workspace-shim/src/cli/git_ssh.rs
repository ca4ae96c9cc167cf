//! `git-ssh`: git's SSH program (`core.sshCommand`, set by `nexus-shim
//! env`). For a host the laptop brokers, the git command goes to the
//! laptop, which runs it with its own `ssh` and decides every push; the
//! bytes are relayed here. For any other host this falls through to a
//! plain local `ssh` with `agent.sock`, as before.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use nexus_protocol::{
    Channel, GitService, LocalOp, LocalReply, MAX_CHUNK, MAX_FRAME, Reply, Request, Upload,
};

use super::call::{BROKEN_PIPE, ClientArgs, Stop, USAGE};
use crate::client::Session;
use crate::state::StateDir;

/// Flags of `git-ssh`: what git passes its SSH program.
#[derive(Debug, Args)]
pub(super) struct GitSshArgs {
    /// `[-p PORT] [-o SendEnv=GIT_PROTOCOL] [-4|-6] [USER@]HOST COMMAND`,
    /// as git passes them.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "SSH ARGS"
    )]
    args: Vec<OsString>,
    #[command(flatten)]
    client: ClientArgs,
}

/// What git asked for.
#[derive(Debug, PartialEq, Eq)]
struct GitCommand {
    host: String,
    port: Option<u16>,
    service: GitService,
    repo: String,
}

/// Runs git's command through the laptop, or through plain `ssh`.
pub(super) async fn run(state: &StateDir, args: GitSshArgs) -> Result<ExitCode> {
    let words: Vec<String> = args
        .args
        .iter()
        .map(|a| a.to_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| Stop::new(USAGE, "git-ssh: an argument is not UTF-8"))?;
    let cmd = parse(&words).map_err(|why| Stop::new(USAGE, format!("git-ssh: {why}")))?;
    let request = Request::GitSsh {
        host: cmd.host,
        port: cmd.port,
        service: cmd.service,
        repo: cmd.repo,
    };
    let session = Session::start(state, args.client.wait, LocalOp::Forward(request)).await?;
    let (mut rx, tx) = session.into_inner().into_split();
    let mut stdin_pump = None;
    let mut tx = Some(tx);
    loop {
        let reply: LocalReply = nexus_transport::recv(&mut rx, MAX_FRAME)
            .await
            .map_err(|e| Stop::new(1, format!("git-ssh: the daemon ended the connection ({e})")))?;
        let reply = match reply {
            LocalReply::Reply(r) => r,
            other => return Err(Stop::reply(other).into()),
        };
        // git writes nothing before the server's first bytes: the input is
        // relayed once the laptop has answered (and not for a host it does
        // not broker, whose ssh reads it instead).
        if stdin_pump.is_none()
            && let (Reply::Chunk { .. }, Some(tx)) = (&reply, tx.take())
        {
            stdin_pump = Some(tokio::spawn(pump_stdin(tx)));
        }
        match reply {
            Reply::Chunk { channel, data } => {
                let written = if channel == Channel::Stderr {
                    let mut e = std::io::stderr().lock();
                    e.write_all(&data).and_then(|()| e.flush())
                } else {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&data).and_then(|()| o.flush())
                };
                if written.is_err() {
                    return Ok(ExitCode::from(BROKEN_PIPE));
                }
            }
            Reply::Exit(code) => {
                return Ok(ExitCode::from(
                    u8::try_from(code.clamp(0, 255)).unwrap_or(1),
                ));
            }
            Reply::GitNotBrokered => return Ok(plain_ssh(state, &args.args)),
            other => return Err(Stop::reply(LocalReply::Reply(other)).into()),
        }
    }
}

/// Sends our stdin (git's side of the protocol) up as `Upload` frames.
///
/// Read on a thread of its own, not tokio's: git keeps its end open while
/// it waits for the server, and a blocking read in tokio's pool would hold
/// this process open after the answer ended.
async fn pump_stdin(mut tx: tokio::net::unix::OwnedWriteHalf) {
    let (pieces, mut received) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if pieces.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    while let Some(data) = received.recv().await {
        if nexus_transport::send_data(&mut tx, &Upload::Data(data))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = nexus_transport::send(&mut tx, &Upload::End).await;
}

/// Replaces this process with `ssh ARGS`, signing with `agent.sock`.
fn plain_ssh(state: &StateDir, args: &[OsString]) -> ExitCode {
    let mut cmd = std::process::Command::new("ssh");
    cmd.args(args).env("SSH_AUTH_SOCK", state.agent_sock());
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    eprintln!("nexus-shim: git-ssh: cannot run ssh: {err}");
    ExitCode::from(1)
}

/// Reads git's arguments: options git passes, the host, and exactly one
/// command, `git-upload-pack 'REPO'` or `git-receive-pack 'REPO'`.
fn parse(words: &[String]) -> Result<GitCommand, String> {
    let mut port = None;
    let mut rest = words.iter();
    let mut positional = Vec::new();
    while let Some(w) = rest.next() {
        match w.as_str() {
            "-p" => {
                let p = rest.next().ok_or("-p needs a port")?;
                port = Some(
                    p.parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("bad port {p:?}"))?,
                );
            }
            "-o" => {
                let o = rest.next().ok_or("-o needs an option")?;
                if o != "SendEnv=GIT_PROTOCOL" {
                    return Err(format!("ssh option {o:?} is not one git passes"));
                }
            }
            "-4" | "-6" => {}
            other if other.starts_with('-') && positional.is_empty() => {
                return Err(format!("unknown option {other:?}"));
            }
            other => positional.push(other),
        }
    }
    let [target, command] = positional[..] else {
        return Err(format!(
            "expected [USER@]HOST and one command, got {} argument(s)",
            positional.len()
        ));
    };
    // The user is the laptop's to choose (`ssh_user`); git's is dropped.
    let host = target.rsplit_once('@').map_or(target, |(_, h)| h);
    if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
        return Err(format!("bad host {host:?}"));
    }
    let (verb, quoted) = command
        .split_once(' ')
        .ok_or_else(|| format!("bad command {command:?}"))?;
    let service = GitService::from_command(verb).ok_or_else(|| {
        format!("only git-upload-pack and git-receive-pack run here, not {verb:?}")
    })?;
    let repo = quoted
        .strip_prefix('\'')
        .and_then(|q| q.strip_suffix('\''))
        .filter(|r| !r.contains('\''))
        .ok_or_else(|| format!("bad repository {quoted:?}; expected one single-quoted path"))?;
    Ok(GitCommand {
        host: host.to_owned(),
        port,
        service,
        repo: repo.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn reads_what_git_passes() {
        let got = parse(&words(&[
            "-o",
            "SendEnv=GIT_PROTOCOL",
            "-p",
            "2222",
            "-4",
            "git@Git.Example",
            "git-receive-pack 'acme/app.git'",
        ]));
        assert_eq!(
            got,
            Ok(GitCommand {
                host: "Git.Example".into(),
                port: Some(2222),
                service: GitService::ReceivePack,
                repo: "acme/app.git".into(),
            })
        );
        let plain = parse(&words(&["h", "git-upload-pack '/a/b'"]));
        assert!(plain.is_ok_and(|c| c.port.is_none() && c.repo == "/a/b"));
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            &["h"][..],
            &["h", "ls"],
            &["h", "git-upload-archive 'a'"],
            &["h", "git-upload-pack a"],
            &["h", "git-upload-pack 'a'\\''b'"],
            &["h", "git-upload-pack 'a'", "extra"],
            &["-oProxyCommand=x", "git-upload-pack 'a'"],
            &["-o", "ProxyCommand=x", "h", "git-upload-pack 'a'"],
            &["-p", "0", "h", "git-upload-pack 'a'"],
            &["git@", "git-upload-pack 'a'"],
            &["a b", "git-upload-pack 'a'"],
        ] {
            assert!(parse(&words(bad)).is_err(), "{bad:?}");
        }
    }
}
