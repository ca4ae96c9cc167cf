//! `env`: `export` lines that point a shell at this daemon.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use nexus_protocol::{GIT_HTTP_PREFIX, LocalOp, LocalReply, Reply, Request};

use super::call::{ClientArgs, ask};
use crate::state::StateDir;

/// Prints the lines for `eval "$(nexus-shim env)"`.
pub(super) async fn run(state: &StateDir) -> Result<ExitCode> {
    // Nothing of a state dir another user could have swapped is exported.
    if state.root().exists() {
        state.check()?;
    }
    let q = |p: &Path| shell_quote(&p.display().to_string());
    println!("export NEXUS_STATE_DIR={}", q(state.root()));
    println!("export SSH_AUTH_SOCK={}", q(&state.agent_sock()));
    // Written by a daemon serving HTTP injection.
    let http_url = crate::trust::read_private(&state.http_url())
        .ok()
        .map(|u| u.trim().to_owned());
    if let Some(url) = &http_url {
        println!("export NEXUS_HTTP_URL={}", shell_quote(url));
    }
    let exe = std::env::current_exe().context("locating nexus-shim")?;
    let hosts = brokered_hosts(state).await;
    let mut config = git_config(&q(&exe), http_url.as_deref(), &hosts);
    let count = config.len();
    println!("export GIT_CONFIG_COUNT={count}");
    for (i, (key, value)) in config.drain(..).enumerate() {
        println!(
            "export GIT_CONFIG_KEY_{i}={} GIT_CONFIG_VALUE_{i}={}",
            shell_quote(&key),
            shell_quote(&value)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The hosts the laptop brokers git for, if a laptop is linked now (env
/// must not wait: it runs in shell start-up files).
async fn brokered_hosts(state: &StateDir) -> Vec<String> {
    let now = ClientArgs {
        wait: Duration::ZERO,
    };
    match ask(state, &now, LocalOp::Forward(Request::GitHosts)).await {
        Ok(LocalReply::Reply(Reply::GitHosts(hosts))) => hosts,
        _ => {
            eprintln!(
                "nexus-shim env: no laptop linked now, so git is not pointed at the laptop for \
                 brokered HTTPS hosts; run `eval \"$(nexus-shim env)\"` again once linked"
            );
            Vec::new()
        }
    }
}

/// git's configuration, as `GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n` pairs
/// (no file touched): this shim as the only credential helper (the empty
/// value clears helpers configured before) with the repository path, as
/// the SSH program (`git-ssh` falls through to plain `ssh` for hosts the
/// laptop does not broker), and, for each brokered host, its HTTPS URLs
/// rewritten to the daemon's HTTP endpoint. `exe` is shell-quoted.
fn git_config(exe: &str, http_url: Option<&str>, hosts: &[String]) -> Vec<(String, String)> {
    let mut config = vec![
        ("credential.helper".to_owned(), String::new()),
        (
            "credential.helper".to_owned(),
            format!("!{exe} git-credential"),
        ),
        ("credential.useHttpPath".to_owned(), "true".to_owned()),
        ("core.sshCommand".to_owned(), format!("{exe} git-ssh")),
        // OpenSSH's arguments (git would otherwise probe with `-G`).
        ("ssh.variant".to_owned(), "ssh".to_owned()),
    ];
    if let Some(url) = http_url {
        let base = url.trim_end_matches('/');
        for host in hosts {
            config.push((
                format!("url.{base}/{GIT_HTTP_PREFIX}/{host}/.insteadOf"),
                format!("https://{host}/"),
            ));
        }
    }
    config
}

/// Single-quotes a value for POSIX shells.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_survive_the_shell() {
        assert_eq!(shell_quote("/a b"), "'/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn brokered_hosts_go_to_the_daemon() {
        let hosts = ["github.com".to_owned(), "git.corp:8443".to_owned()];
        let config = git_config("'/x/nexus-shim'", Some("http://127.0.0.1:9/k/"), &hosts);
        assert!(config.contains(&(
            "core.sshCommand".to_owned(),
            "'/x/nexus-shim' git-ssh".to_owned()
        )));
        assert!(config.contains(&(
            "url.http://127.0.0.1:9/k/_git/git.corp:8443/.insteadOf".to_owned(),
            "https://git.corp:8443/".to_owned()
        )));
        assert_eq!(config.len(), 7);
        assert_eq!(
            git_config("x", None, &hosts).len(),
            5,
            "no endpoint, no rewrite"
        );
    }
}
