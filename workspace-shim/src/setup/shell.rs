//! `setup shell`: one line, `eval "$(nexus-shim env)"`, in `~/.profile`
//! and `~/.bashrc` (and `~/.zshrc` when zsh is the login shell), marked so
//! that it is added once and removed exactly.

use std::path::PathBuf;

use super::{EditFn, Home, Wiring};

/// The end of the line setup adds: how it finds its own line again.
const MARK: &str = "# added by: nexus-shim setup shell";

pub(super) fn edits(home: &Home) -> Vec<(PathBuf, EditFn)> {
    let mut files = vec![home.home.join(".profile"), home.home.join(".bashrc")];
    if home.zsh {
        files.push(home.home.join(".zshrc"));
    }
    files.into_iter().map(|f| (f, edit as EditFn)).collect()
}

fn edit(text: &str, wiring: Option<&Wiring>) -> Result<String, String> {
    let mut kept: String = text
        .split_inclusive('\n')
        .filter(|line| !line.trim_end().ends_with(MARK))
        .collect();
    if let Some(w) = wiring {
        if !kept.is_empty() && !kept.ends_with('\n') {
            // Only a file whose last line had no newline: removal then
            // leaves the newline, the one byte it cannot know was absent.
            kept.push('\n');
        }
        kept.push_str(&format!(
            "eval \"$({} --state-dir {} env)\" {MARK}\n",
            quote(&w.shim),
            quote(&w.state_dir)
        ));
    }
    Ok(kept)
}

/// Single-quotes a value for POSIX shells.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::super::testing::round_trip;
    use super::*;

    #[test]
    fn the_line_goes_in_once_and_comes_out_exactly() {
        let original = "# ~/.profile\nexport PATH=\"$HOME/bin:$PATH\"\n";
        let set = round_trip(edit, original, false);
        assert_eq!(
            set,
            format!(
                "{original}eval \"$('/usr/local/bin/nexus-shim' --state-dir '/home/dev/.local/state/nexus' env)\" {MARK}\n"
            )
        );
    }
}
