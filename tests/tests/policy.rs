//! End to end, policy for security teams: hot reload under a running
//! proxy, an org baseline, approvals answered from another terminal, the
//! hash-chained audit log, rate limits and the kill switch.

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::Child;

use nexus_e2e::sshd::{AgentFrom, SshWorld};
use nexus_e2e::{DEADLINE, Laptop, Must, Output, Workspace, paired, poll};

/// Writes `text` to `path` the way editors do: a new file renamed over the old.
#[track_caller]
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-edit");
    std::fs::write(&tmp, text).must("writing the new policy");
    std::fs::rename(&tmp, path).must("renaming the new policy into place");
}

/// `token get NAME` without waiting for a link.
#[track_caller]
fn token(ws: &Workspace, name: &str) -> Output {
    ws.cli(["token", "get", name])
}

/// Polls until `token get NAME` exits `code`.
#[track_caller]
fn until_token(ws: &Workspace, name: &str, code: i32) -> Output {
    let mut last = None;
    let got = poll(DEADLINE, || {
        let out = token(ws, name);
        if out.exit_code == Some(code) {
            return Some(out);
        }
        last = Some(out);
        None
    });
    got.unwrap_or_else(|| panic!("token get {name} never exited {code}; last:\n{last:?}"))
}

/// Waits for a spawned CLI to finish; its exit code, stdout and stderr.
#[track_caller]
fn finish(mut child: Child) -> (Option<i32>, String, String) {
    let status = poll(DEADLINE, || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        panic!("a workspace call never finished");
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (status.code(), out, err)
}

/// The approvals waiting, as `approve --json` lists them.
#[track_caller]
fn pending(laptop: &Laptop) -> Vec<serde_json::Value> {
    let out = laptop.cli(["approve", "--json"]);
    let list: serde_json::Value =
        serde_json::from_str(&out.ok().stdout).must(&format!("approve --json\n{out}"));
    list.as_array().cloned().unwrap_or_default()
}

/// Waits until a request for `summary` waits for approval; its id and hash.
#[track_caller]
fn wait_pending(laptop: &Laptop, summary: &str) -> (String, String) {
    wait_pending_like(laptop, |s| s == summary)
}

/// Waits until a request whose summary passes `matches` waits; its id and hash.
#[track_caller]
fn wait_pending_like(laptop: &Laptop, matches: impl Fn(&str) -> bool) -> (String, String) {
    let found = poll(DEADLINE, || {
        pending(laptop)
            .into_iter()
            .find(|p| p["summary"].as_str().is_some_and(&matches))
            .map(|p| (p["id"].to_string(), p["hash"].to_string()))
    });
    found.must("no such approval request appeared")
}

fn envs<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a OsStr)> {
    pairs.iter().map(|(k, v)| (*k, OsStr::new(*v))).collect()
}

const AB: &str = "[tokens.a]\nsource = \"env:E2E_A\"\n\n[tokens.b]\nsource = \"env:E2E_B\"\n";

#[test]
fn edits_apply_to_the_next_call_and_broken_edits_change_nothing() {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy("[tokens.a]\nsource = \"env:E2E_A\"\n");
    let proxy = laptop.run(&ws, "dev", &policy, &[("E2E_A", "va"), ("E2E_B", "vb")]);
    assert_eq!(token(&ws, "a").ok().stdout, "va\n");
    token(&ws, "b").code(3);

    replace(&policy, "[tokens.b]\nsource = \"env:E2E_B\"\n");
    assert_eq!(until_token(&ws, "b", 0).stdout, "vb\n");
    token(&ws, "a").code(3).stderr_has("not declared");
    ws.cli(["status"]).ok(); // the tunnel stayed up

    // A broken edit: the last good policy stays, and says why.
    replace(&policy, "[tokens.a]\nsource = \"env:E2E_A\"\n[tokens.b\n");
    let status = poll(DEADLINE, || {
        let out = laptop.cli(["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        v["policy"]["last_error"].as_str().map(str::to_owned)
    })
    .must("status never reported the broken policy");
    let name = policy.file_name().and_then(OsStr::to_str).unwrap_or("");
    assert!(status.contains(&format!("{name}:3:")), "{status}");
    assert!(
        proxy.log().contains("policy reload failed"),
        "{}",
        proxy.log()
    );
    assert_eq!(token(&ws, "b").ok().stdout, "vb\n");
    token(&ws, "a").code(3);

    // Fixed again: applies.
    replace(&policy, AB);
    until_token(&ws, "a", 0);
    let out = laptop.cli(["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.ok().stdout).must("status --json");
    assert!(v["policy"]["last_error"].is_null(), "{v}");
    assert_eq!(v["workspaces"][0]["name"], "dev");
    assert_eq!(v["workspaces"][0]["linked"], true);
}

#[test]
fn a_baseline_deny_beats_a_user_allow_and_a_broken_baseline_refuses_to_start() {
    let (ws, laptop) = paired();
    let baseline = laptop.home().join("baseline.d");
    std::fs::create_dir(&baseline).must("creating the baseline dir");
    std::fs::write(
        baseline.join("10-org.toml"),
        "[[tokens.deny]]\nname = \"prod-*\"\n",
    )
    .must("writing the baseline");
    let policy = laptop.write_policy(
        "[tokens.prod-db]\nsource = \"env:E2E_A\"\n\n[tokens.dev-db]\nsource = \"env:E2E_A\"\n",
    );
    let base = baseline.as_os_str();
    let e = envs(&[("E2E_A", "secret-a")]);
    let mut with_base = e.clone();
    with_base.push(("NEXUS_POLICY_BASELINE", base));
    let proxy = laptop.run_with(&ws, "dev", &policy, &with_base, &[]);
    let out = token(&ws, "prod-db");
    out.code(3).stderr_has("10-org.toml:1");
    assert_eq!(token(&ws, "dev-db").ok().stdout, "secret-a\n");
    // The baseline is watched too.
    std::fs::write(
        baseline.join("20-more.toml"),
        "[[tokens.deny]]\nname = \"dev-*\"\n",
    )
    .must("extending the baseline");
    until_token(&ws, "dev-db", 3);
    drop(proxy);

    std::fs::write(
        baseline.join("30-broken.toml"),
        "[[tokens.deny]]\nnam = \"x\"\n",
    )
    .must("breaking the baseline");
    let mut broken = laptop.spawn_run_with("dev", &policy, &with_base, &[]);
    let exited = poll(DEADLINE, || broken.try_exit()).must("the proxy ran with a broken baseline");
    assert!(!exited.success());
    assert!(
        broken.log().contains("30-broken.toml:2:1"),
        "{}",
        broken.log()
    );
    assert!(
        broken.log().contains("refusing to start"),
        "{}",
        broken.log()
    );
    // `policy check` says which user rules the baseline cuts back.
    let check = laptop.cli([
        OsStr::new("policy"),
        OsStr::new("check"),
        policy.as_os_str(),
        OsStr::new("--baseline"),
        baseline.join("10-org.toml").as_os_str(),
    ]);
    check.ok().stderr_has("goes beyond the org baseline");
}

#[test]
fn an_approval_covers_its_request_and_nothing_else() {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy(
        "[tokens.a]\nsource = \"env:E2E_A\"\napprove = \"prompt\"\n\n\
         [tokens.b]\nsource = \"env:E2E_B\"\napprove = \"prompt\"\n",
    );
    let e = envs(&[("E2E_A", "va"), ("E2E_B", "vb")]);
    let args = [OsStr::new("--approval-timeout"), OsStr::new("3s")];
    let _proxy = laptop.run_with(&ws, "dev", &policy, &e, &args);

    // A is asked and answered for A only.
    let a = ws.spawn_cli(["token", "get", "a"]);
    let (id_a, hash_a) = wait_pending(&laptop, "a");
    let b = ws.spawn_cli(["token", "get", "b"]);
    let (id_b, hash_b) = wait_pending(&laptop, "b");
    assert_ne!(hash_a, hash_b);
    laptop.cli(["approve", &id_a]).ok().stdout_has("allowed");
    let (code, out, err) = finish(a);
    assert_eq!((code, out.as_str()), (Some(0), "va\n"), "{err}");
    // B still waits, and its denial comes through.
    assert!(
        pending(&laptop)
            .iter()
            .any(|p| p["id"].as_u64().map(|n| n.to_string()) == Some(id_b.clone()))
    );
    laptop.cli(["approve", &id_b, "--deny"]).ok();
    let (code, out, err) = finish(b);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(err.contains("denied it"), "{err}");
    // The answer for A was for that request only: A asks again. Answering
    // the old id does nothing.
    let a = ws.spawn_cli(["token", "get", "a"]);
    let (id_a2, _) = wait_pending(&laptop, "a");
    assert_ne!(id_a, id_a2);
    laptop
        .cli(["approve", &id_a])
        .code(1)
        .stderr_has("no request");
    laptop.cli(["approve", &id_a2, "--for", "10m"]).ok();
    assert_eq!(finish(a).0, Some(0));
    // Now A passes at once for 10 minutes; B still asks, and unanswered
    // it is denied at the timeout.
    assert_eq!(token(&ws, "a").ok().stdout, "va\n");
    let out = token(&ws, "b");
    out.code(3).stderr_has("nobody approved it");
    // A lock drops standing answers.
    laptop.cli(["lock"]).ok();
    laptop.cli(["unlock"]).ok();
    let a = ws.spawn_cli(["token", "get", "a"]);
    wait_pending(&laptop, "a");
    assert_eq!(finish(a).0, Some(3));
}

#[test]
fn audit_verify_finds_a_changed_byte_and_a_truncated_tail() {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy(AB);
    let proxy = laptop.run(
        &ws,
        "dev",
        &policy,
        &[("E2E_A", "value-aaaa"), ("E2E_B", "vb")],
    );
    token(&ws, "a").ok();
    token(&ws, "nope").code(3);
    // Hostile names: a newline and a terminal escape stay in their field.
    token(&ws, "x\n{\"decision\":\"allow\"}\u{1b}[2J").code(3);
    token(&ws, &"y".repeat(5000)).code(3);
    token(&ws, "b").ok();
    drop(proxy);

    let log = laptop.config_dir().join("audit.jsonl");
    let text = std::fs::read_to_string(&log).must("reading the audit log");
    assert!(
        !text.contains("value-aaaa"),
        "a secret value reached the audit log"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 5, "{text}");
    assert!(lines.iter().all(|l| l.len() < 4096), "names are cut");
    laptop.cli(["audit", "verify"]).ok().stdout_has("intact");
    // `tail -f` shows a decision made after it started.
    let mut follow = laptop.spawn_cli(["audit", "tail", "-f", "-n", "0"]);
    let proxy = laptop.run(
        &ws,
        "dev",
        &policy,
        &[("E2E_A", "value-aaaa"), ("E2E_B", "vb")],
    );
    token(&ws, "late-name").code(3);
    let stdout = follow.stdout.take().must("tail's stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // A reader thread: a blocking read must not hang the test past its deadline.
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let shown = loop {
        match rx.recv_timeout(DEADLINE) {
            Ok(line) if line.contains("late-name") => break Some(line),
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    let shown = shown.must("audit tail -f never showed the call");
    assert!(shown.contains(" deny "), "{shown}");
    drop(proxy);
    let text = std::fs::read_to_string(&log).must("reading the audit log");
    let lines: Vec<&str> = text.lines().collect();
    let tail = laptop.cli(["audit", "tail", "-n", "2"]);
    assert_eq!(tail.ok().stdout.lines().count(), 2, "{tail}");
    assert!(!tail.stdout.contains('\u{1b}'));
    let json = laptop.cli(["audit", "tail", "--json", "-n", "100"]);
    let decisions: Vec<String> = json
        .ok()
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).must("a JSON audit line");
            format!("{} {}", v["target"].as_str().unwrap_or(""), v["decision"])
        })
        .collect();
    assert!(
        decisions.contains(&"a \"allow\"".to_owned()),
        "{decisions:?}"
    );
    assert!(
        decisions.contains(&"nope \"deny\"".to_owned()),
        "{decisions:?}"
    );

    // One byte changed in the second line.
    let mut bytes = text.clone().into_bytes();
    let second = lines[0].len() + 1;
    let at = second + lines[1].find("\"ts\":").must("a ts field") + 6;
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&log, &bytes).must("tampering");
    laptop
        .cli(["audit", "verify"])
        .code(1)
        .stderr_has("line 2: changed");

    // Restored, then the last line removed.
    let short: String = lines[..lines.len() - 1]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&log, short).must("truncating");
    laptop
        .cli(["audit", "verify"])
        .code(1)
        .stderr_has("removed from the end");
    // A line removed from the middle.
    let mut gap: Vec<&str> = lines.clone();
    gap.remove(1);
    let gap: String = gap.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&log, gap).must("removing a line");
    laptop
        .cli(["audit", "verify"])
        .code(1)
        .stderr_has("line 2: does not follow");
}

#[test]
fn a_rate_limit_denies_with_when_to_retry() {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy("[tokens.a]\nsource = \"env:E2E_A\"\nrate = \"2/min\"\n");
    let _proxy = laptop.run(&ws, "dev", &policy, &[("E2E_A", "va")]);
    token(&ws, "a").ok();
    token(&ws, "a").ok();
    let out = token(&ws, "a");
    out.code(3)
        .stderr_has("rate-limited to 2/min")
        .stderr_has("retry in");
}

#[test]
fn lock_denies_the_next_call_until_unlock_also_across_a_restart() {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy(AB);
    let e = [("E2E_A", "va"), ("E2E_B", "vb")];
    let proxy = laptop.run(&ws, "dev", &policy, &e);
    token(&ws, "a").ok();
    // A second proxy on the same configuration (one audit chain) refuses.
    let mut second = laptop.spawn_run("dev", &policy, &e);
    let exited = poll(DEADLINE, || second.try_exit()).must("a second proxy kept running");
    assert!(!exited.success());
    assert!(
        second.log().contains("another nexus-agent-proxy runs"),
        "{}",
        second.log()
    );
    laptop.cli(["lock"]).ok();
    token(&ws, "a").code(3).stderr_has("locked");
    let v: serde_json::Value =
        serde_json::from_str(&laptop.cli(["status", "--json"]).ok().stdout).must("status");
    assert_eq!(v["locked"], true, "{v}");
    let human = laptop.cli(["status"]);
    human
        .ok()
        .stdout_has("LOCKED")
        .stdout_has("workspace dev: linked")
        .stdout_has("last decisions:");
    drop(proxy);
    laptop
        .cli(["status"])
        .code(1)
        .stdout_has("no proxy running; LOCKED");
    let _proxy = laptop.run(&ws, "dev", &policy, &e);
    token(&ws, "b").code(3).stderr_has("locked");
    laptop.cli(["unlock"]).ok();
    assert_eq!(token(&ws, "a").ok().stdout, "va\n");
}

/// `ssh -o PubkeyAcceptedAlgorithms=ALG USER@HOST true` from the workspace,
/// started and not waited for: only the key of that algorithm is offered.
fn spawn_login(world: &SshWorld, alg: &str) -> Child {
    let mut cmd = world.ws_command_with_sock("ssh", &world.ws.agent_sock());
    cmd.arg("-F")
        .arg(world.ssh_config())
        .args(["-p", &world.host.port.to_string()])
        .args(["-o", &format!("PubkeyAcceptedAlgorithms={alg}")])
        .arg(format!("{}@{}", world.host.user, world.host.ip))
        .arg("true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().must("starting ssh")
}

#[test]
fn an_ssh_approval_for_a_time_covers_the_same_host_user_and_key_only() {
    let mut world = SshWorld::new();
    let policy = format!(
        "[[ssh.allow]]\nhost = {:?}\nuser = {:?}\napprove = \"prompt\"\n",
        world.host.policy_host(),
        world.host.user
    );
    world.start_proxy(&policy, AgentFrom::Flag);
    world.trust_pinned_hosts().ok();
    let ed = world.agent.ed25519.fingerprint.clone();
    let rsa = world.agent.rsa.fingerprint.clone();

    let login = spawn_login(&world, "ssh-ed25519");
    let (id, _) = wait_pending_like(&world.laptop, |s| {
        s.contains("ssh login") && s.contains(&ed)
    });
    world.laptop.cli(["approve", &id, "--for", "10m"]).ok();
    let (code, _, err) = finish(login);
    assert_eq!(code, Some(0), "{err}");
    // A new session (new session id) to the same host, as the same user
    // with the same key: identical, so no prompt.
    let again = spawn_login(&world, "ssh-ed25519");
    let (code, _, err) = finish(again);
    assert_eq!(code, Some(0), "{err}");
    // Another key is another request: asked, and refused here.
    let other = spawn_login(&world, "rsa-sha2-512");
    let (id, _) = wait_pending_like(&world.laptop, |s| s.contains(&rsa));
    world.laptop.cli(["approve", &id, "--deny"]).ok();
    let (code, _, err) = finish(other);
    assert_ne!(code, Some(0), "{err}");
    world.wait_for_proxy_line(&["refused", "the laptop user denied it"]);
}

/// The tools of issue 5 go through the same gate: an approval given "for 10
/// minutes" to `tool run echo-it -- one` does not cover other arguments, and
/// every decision is in the audit log.
#[test]
fn a_tool_approval_covers_its_arguments_only() {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy(
        "[tools.echo-it]\ncommand = [\"echo\"]\nargs = [\"*\"]\napprove = \"prompt\"\n",
    );
    let args = [OsStr::new("--approval-timeout"), OsStr::new("3s")];
    let _proxy = laptop.run_with(&ws, "dev", &policy, &[], &args);

    let one = ws.spawn_cli(["tool", "run", "echo-it", "--", "one"]);
    let (id, _) = wait_pending_like(&laptop, |s| s.contains("echo-it") && s.contains("one"));
    laptop.cli(["approve", &id, "--for", "10m"]).ok();
    let (code, out, err) = finish(one);
    assert_eq!((code, out.as_str()), (Some(0), "one\n"), "{err}");
    // The same arguments again: covered, no prompt.
    ws.cli(["tool", "run", "echo-it", "--", "one"])
        .ok()
        .stdout_has("one");
    // Other arguments: asked again; unanswered, denied.
    let two = ws.spawn_cli(["tool", "run", "echo-it", "--", "two"]);
    wait_pending_like(&laptop, |s| s.contains("echo-it") && s.contains("two"));
    let (code, _, err) = finish(two);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("nobody approved it"), "{err}");

    let log = std::fs::read_to_string(laptop.config_dir().join("audit.jsonl"))
        .must("reading the audit log");
    assert!(
        log.lines().filter(|l| l.contains("echo-it")).count() >= 3,
        "{log}"
    );
    laptop.cli(["audit", "verify"]).ok();
}
