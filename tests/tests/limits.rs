//! Limits queue rather than fail (issue 17): calls beyond a tool's places
//! wait their turn on the laptop and are all answered.

use nexus_e2e::{Must, paired};

/// One place for token calls and a source that takes a while: 24 callers
/// at once all get their token (before, all but one were refused with
/// "too many concurrent token calls").
#[test]
fn calls_beyond_a_tools_places_wait_their_turn() {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy(
        "[tokens.slow]\nsource = { command = [\"sh\", \"-c\", \"sleep 0.05; echo queued-ok\"] }\n",
    );
    let _proxy = laptop.run_with(
        &ws,
        "dev",
        &policy,
        &[],
        &["--max-calls-per-tool".as_ref(), "1".as_ref()],
    );
    let callers: Vec<_> = (0..24)
        .map(|_| ws.spawn_cli(["token", "get", "slow"]))
        .collect();
    let mut refused = Vec::new();
    for child in callers {
        let out = child.wait_with_output().must("waiting for a caller");
        if !(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("queued-ok")) {
            refused.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    assert!(
        refused.is_empty(),
        "{} of 24 refused: {:?}",
        refused.len(),
        refused.first()
    );
}

/// The audit lines of `tool` calls for `target`, as `(decision, reason)`.
fn audit_lines(laptop: &nexus_e2e::Laptop, tool: &str, target: &str) -> Vec<(String, String)> {
    let log = laptop.config_dir().join("audit.jsonl");
    let text = std::fs::read_to_string(&log).must("reading the audit log");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["tool"] == tool && v["target"] == target)
        .map(|v| {
            (
                v["decision"].as_str().unwrap_or_default().to_owned(),
                v["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A call `--call-timeout` stops after the gate let it through must not
/// leave the log ending at "allow" (the pipeline audits a lock that stops
/// a call under way, but the call timeout drops the pipeline's future in
/// `tunnel::answer`, so no line says the call was cut off).
#[test]
fn a_call_the_call_timeout_stops_is_audited_as_stopped() {
    let (ws, laptop) = paired();
    let policy = laptop
        .write_policy("[tokens.stuck]\nsource = { command = [\"sh\", \"-c\", \"sleep 30\"] }\n");
    let _proxy = laptop.run_with(
        &ws,
        "dev",
        &policy,
        &[],
        &["--call-timeout".as_ref(), "1s".as_ref()],
    );
    ws.cli(["token", "get", "stuck"])
        .stderr_has("gave up on this token call");
    let lines = audit_lines(&laptop, "token", "stuck");
    assert!(
        lines.iter().any(|(d, _)| d == "deny"),
        "the log ends at allow for a call the laptop gave up on: {lines:?}"
    );
}

/// A call waiting for approval when `--call-timeout` passes (the default
/// 60 s call timeout is no longer than the default 60 s approval timeout)
/// is refused with no audit line at all: the decision the laptop user was
/// asked about never reaches the log.
#[test]
fn an_approval_cut_off_by_the_call_timeout_is_audited() {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy(
        "[tokens.gated]\nsource = { command = [\"echo\", \"v\"] }\napprove = \"prompt\"\n",
    );
    let _proxy = laptop.run_with(
        &ws,
        "dev",
        &policy,
        &[],
        &[
            "--call-timeout".as_ref(),
            "1s".as_ref(),
            "--approval-timeout".as_ref(),
            "30s".as_ref(),
        ],
    );
    ws.cli(["token", "get", "gated"])
        .stderr_has("gave up on this token call");
    let lines = audit_lines(&laptop, "token", "gated");
    assert!(
        lines.iter().any(|(d, _)| d == "deny"),
        "a call refused while it waited for approval left no audit line: {lines:?}"
    );
}
