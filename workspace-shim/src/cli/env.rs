//! `env`: `export` lines that point a shell at this daemon.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::state::StateDir;

/// Prints the lines for `eval "$(nexus-shim env)"`.
pub(super) fn run(state: &StateDir) -> Result<ExitCode> {
    // Nothing of a state dir another user could have swapped is exported.
    if state.root().exists() {
        state.check()?;
    }
    let q = |p: &Path| shell_quote(&p.display().to_string());
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
    if let Ok(url) = crate::trust::read_private(&state.http_url()) {
        println!("export NEXUS_HTTP_URL={}", shell_quote(url.trim()));
    }
    Ok(ExitCode::SUCCESS)
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
}
