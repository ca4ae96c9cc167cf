//! `completions` and `man-pages`: generated from the clap definition.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use nexus_transport::docs::Shell;

/// Flags of `completions`.
#[derive(Debug, Args)]
pub(super) struct CompletionsArgs {
    /// Target shell.
    shell: Shell,
}

/// Flags of `man-pages`.
#[derive(Debug, Args)]
pub(super) struct ManPagesArgs {
    /// Output directory (created if missing).
    dir: PathBuf,
}

/// Prints the completion script for `cli` in the shell asked.
pub(super) fn completions(cli: clap::Command, args: &CompletionsArgs) -> ExitCode {
    nexus_transport::docs::run(cli, Some(args.shell), None)
}

/// Writes one man page per subcommand of `cli`.
pub(super) fn man_pages(cli: clap::Command, args: &ManPagesArgs) -> ExitCode {
    nexus_transport::docs::run(cli, None, Some(&args.dir))
}
