//! Shell completions and man pages, generated from each binary's clap
//! definition so they can never drift from `--help`.

use std::io::{self, Write};
use std::path::Path;

pub use clap_complete::Shell;

/// Runs `completions SHELL` (to stdout) or `man-pages DIR` for `cmd`, the
/// binary's clap definition, and gives the exit code.
pub fn run(
    cmd: clap::Command,
    shell: Option<Shell>,
    man_dir: Option<&Path>,
) -> std::process::ExitCode {
    let program = cmd.get_name().to_owned();
    if let Some(shell) = shell {
        completions(cmd, shell, &mut std::io::stdout());
        return std::process::ExitCode::SUCCESS;
    }
    let Some(dir) = man_dir else {
        return std::process::ExitCode::SUCCESS;
    };
    match man_pages(cmd, dir) {
        Ok(pages) => {
            println!("wrote {} man pages to {}", pages.len(), dir.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program}: writing man pages to {}: {e}", dir.display());
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes one man page per command and subcommand into `dir`
/// (`nexus-shim.1`, `nexus-shim-token-get.1`, ...), returning the file names.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut cmd = cmd;
    cmd.build();
    write_page(&cmd, dir, &mut written)?;
    Ok(written)
}

/// After `build()`, clap names every subcommand `parent-sub` (its display
/// name), which is also the conventional man page name.
fn write_page(cmd: &clap::Command, dir: &Path, written: &mut Vec<String>) -> io::Result<()> {
    if cmd.is_hide_set() {
        return Ok(());
    }
    let page = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let file = format!("{page}.1");
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    std::fs::write(dir.join(&file), buf)?;
    written.push(file);
    for sub in cmd.get_subcommands() {
        if sub.get_name() != "help" {
            write_page(sub, dir, written)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> clap::Command {
        clap::Command::new("demo")
            .about("A demo")
            .subcommand(clap::Command::new("token").subcommand(clap::Command::new("get")))
            .subcommand(clap::Command::new("secret-internal").hide(true))
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn pages_cover_every_visible_subcommand() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut pages = man_pages(demo(), dir.path())?;
        pages.sort();
        assert_eq!(pages, ["demo-token-get.1", "demo-token.1", "demo.1"]);
        let top = std::fs::read_to_string(dir.path().join("demo.1"))?;
        assert!(top.contains(".TH demo"), "{top}");
        Ok(())
    }

    #[test]
    fn completions_name_the_binary() -> TestResult {
        let mut out = Vec::new();
        completions(demo(), Shell::Bash, &mut out);
        let script = String::from_utf8(out)?;
        assert!(script.contains("_demo()"), "{script}");
        Ok(())
    }
}
