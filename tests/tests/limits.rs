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
