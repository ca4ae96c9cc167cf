//! Approval prompts in the proxy's own terminal, when it has one.
//!
//! The prompt goes to stderr; answers are lines on stdin: `y ID`, `y ID 10m`
//! (and identical requests for 10 minutes), `n ID`. `nexus-agent-proxy
//! approve` from another terminal works the same whether or not there is one.

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;
use std::time::Duration;

use crate::approvals::{Answer, ApprovalRequest, Approvals, grant_span};

/// Whether prompts go to this terminal.
fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Shows one request in the terminal (when there is one), and as a desktop
/// notification where `notify-send` and a display are available.
pub fn show(id: u64, request: &ApprovalRequest, hash: &str, timeout: Duration) {
    notify_desktop(id, request);
    if !interactive() {
        return;
    }
    let clip = crate::tools::clip;
    let caller = crate::approvals::caller_text(request.caller_pid, request.caller_exe.as_deref());
    eprintln!(
        "\n=== approval {id}: workspace {} asks: {}\n    tool {}, caller {caller} (as the workspace reports it)\n    \
         rule {}, request hash {hash}\n    answer: y {id} | y {id} 10m (also identical requests for 10 min) | n {id}   \
         (denied in {})",
        clip(&request.workspace),
        crate::approvals::shown_summary(&request.summary),
        request.tool,
        clip(&request.rule),
        nexus_protocol::units::format_duration(timeout)
    );
}

/// `notify-send` on a thread that reaps it; nothing happens without a
/// display or the program. The text is escaped and cut like log fields.
fn notify_desktop(id: u64, request: &ApprovalRequest) {
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        return;
    }
    let title = format!(
        "nexus: approval {id} for workspace {}",
        crate::tools::clip(&request.workspace)
    );
    let body = format!(
        "{}: {}\nnexus-agent-proxy approve {id}",
        request.tool,
        crate::approvals::shown_summary(&request.summary)
    );
    let _ = std::thread::Builder::new()
        .name("approval-notify".into())
        .spawn(move || {
            let _ = std::process::Command::new("notify-send")
                .args(["--app-name=nexus-agent-proxy", "--", &title, &body])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        });
}

/// Reads answers from the terminal until stdin closes. The thread blocks in
/// `read`, which cannot be interrupted; it ends with the process.
pub fn start_reader(approvals: Arc<Approvals>) {
    if !interactive() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("approval-prompt".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { return };
                match parse_answer(&line) {
                    Some((id, answer)) => match approvals.answer(id, answer) {
                        Ok(_) => eprintln!("approval {id}: answered"),
                        Err(e) => eprintln!("{e}"),
                    },
                    None if line.trim().is_empty() => {}
                    None => eprintln!("answer with: y ID | y ID 10m | n ID"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no approval prompt in this terminal");
    }
}

/// `y ID [DURATION]` or `n ID`.
fn parse_answer(line: &str) -> Option<(u64, Answer)> {
    let mut words = line.split_whitespace();
    let allow = match words.next()? {
        "y" | "yes" => true,
        "n" | "no" => false,
        _ => return None,
    };
    let id = words.next()?.parse().ok()?;
    let for_ms = match words.next() {
        Some(d) if allow => Some(u64::try_from(grant_span(d).ok()?.as_millis()).ok()?),
        Some(_) => return None,
        None => None,
    };
    words
        .next()
        .is_none()
        .then_some((id, Answer { allow, for_ms }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let a = |allow, for_ms| Answer { allow, for_ms };
        assert_eq!(parse_answer("y 3"), Some((3, a(true, None))));
        assert_eq!(parse_answer("yes 3 10m"), Some((3, a(true, Some(600_000)))));
        assert_eq!(parse_answer("y 3 500ms"), Some((3, a(true, Some(500)))));
        assert_eq!(parse_answer("y 3 1d"), Some((3, a(true, Some(86_400_000)))));
        assert_eq!(parse_answer("y 3 2d"), None);
        assert_eq!(parse_answer("n 4"), Some((4, a(false, None))));
        assert_eq!(parse_answer("n 4 10m"), None);
        assert_eq!(parse_answer("y"), None);
        assert_eq!(parse_answer("y 3 10m x"), None);
        assert_eq!(parse_answer("maybe 3"), None);
    }
}
