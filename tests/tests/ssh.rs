//! SSH agent forwarding end to end, with real OpenSSH parts: the laptop's
//! `ssh-agent` (an ed25519 and an RSA key), a git host `sshd` next to the
//! workspace, `git` and `ssh` in the workspace talking to the shim's
//! `agent.sock`. Every refusal is checked on both sides: the workspace
//! command fails, and the laptop proxy's log says why.

use nexus_e2e::agent_wire::{
    self, AgentConn, AgentRelay, Captured, EXTENSION_FAILURE, FAILURE, IDENTITIES_ANSWER,
    REQUEST_IDENTITIES, SUCCESS, Tamper,
};
use nexus_e2e::sshd::{AgentFrom, PubKey, SshWorld};
use nexus_e2e::{Must, Output};
use ssh_agent_lib::proto::{
    AddIdentity, AddIdentityConstrained, KeyConstraint, PrivateCredential, PublicCredential,
    RemoveIdentity, Request,
};
use ssh_encoding::Encode;
use ssh_key::private::{Ed25519Keypair, KeypairData};
use std::ffi::OsStr;

/// `[[ssh.allow]]` for the git host and its login user, with extra lines.
fn allow(world: &SshWorld, extra: &str) -> String {
    format!(
        "[[ssh.allow]]\nhost = {:?}\nuser = {:?}\n{extra}\n",
        world.host.policy_host(),
        world.host.user
    )
}

/// `ssh-add -l` in the workspace through agent.sock.
#[track_caller]
fn listed_in_workspace(world: &SshWorld) -> String {
    world.ws_run("ssh-add", ["-l"]).ok().stdout.clone()
}

/// A push refused as the workspace sees it: the agent refused to sign, so
/// publickey authentication failed.
#[track_caller]
fn push_refused(out: &Output) {
    out.code(128)
        .stderr_has("agent refused operation")
        .stderr_has("Permission denied (publickey)");
}

/// A second ed25519 key: a host key that is not the git host's.
#[track_caller]
fn other_host_key(world: &SshWorld) -> PubKey {
    PubKey::generate(world.host.dir(), "other_host_ed25519", "ed25519")
}

/// The wire encoding of an agent request.
#[track_caller]
fn encode(request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    request.encode(&mut out).must("encoding an agent request");
    out
}

/// Sends `messages` on a fresh agent.sock connection: every one but the
/// last must be acknowledged (session binds are, by the shim); returns the
/// last reply's type.
#[track_caller]
fn on_new_connection(world: &SshWorld, messages: &[&[u8]]) -> u8 {
    let mut conn = AgentConn::connect(&world.ws.agent_sock());
    let (last, first) = messages.split_last().must("at least one message");
    for m in first {
        assert_eq!(conn.call_type(m), SUCCESS, "a session bind is acknowledged");
    }
    conn.call_type(last)
}

#[test]
fn clone_and_push_with_the_ed25519_key() {
    let mut world = SshWorld::new();
    let ed = world.agent.ed25519.clone();
    let rsa = world.agent.rsa.clone();
    // Pinned through the laptop's ~/.ssh/known_hosts; agent from SSH_AUTH_SOCK.
    let policy = allow(&world, &format!("keys = [{:?}]", ed.fingerprint));
    world.start_proxy(&policy, AgentFrom::Env);

    // `eval "$(nexus-shim env)"` points SSH_AUTH_SOCK at agent.sock.
    world.ws.cli_on_host(["env"]).ok().stdout_has(&format!(
        "export SSH_AUTH_SOCK='{}'",
        world.ws.agent_sock().display()
    ));
    // The workspace trusts exactly the host key the laptop pins, in the
    // `[host]:port` form OpenSSH looks up.
    let pinned = world.trust_pinned_hosts();
    assert_eq!(pinned.stdout, world.host.known_hosts_line(), "{pinned}");

    let listed = listed_in_workspace(&world);
    assert!(listed.contains(&ed.fingerprint), "{listed}");
    assert!(
        !listed.contains(&rsa.fingerprint),
        "a key no rule allows must be hidden\n{listed}"
    );
    // Public keys only: the laptop agent's comment (user@host, paths) stays
    // on the laptop.
    let full = world.ws_run("ssh-add", ["-L"]).ok().stdout.clone();
    assert!(full.contains(&ed.line), "{full}");
    assert!(
        !full.contains("laptop-ed25519"),
        "the key comment leaked into the workspace\n{full}"
    );

    world.clone_repo("clone").ok();
    world.commit_and_push("clone", "main").ok();
    // A second clone sees the pushed commit.
    world.clone_repo("again").ok();
    let log = world.git_in("again", &["log", "--oneline", "origin/main"]);
    assert_eq!(log.ok().stdout.lines().count(), 1, "{log}");

    assert!(
        world.host.accepted(&ed.fingerprint),
        "sshd should have let the ed25519 key in\n{}",
        world.host.log()
    );
    world.wait_for_proxy_line(&["op=\"userauth\"", "decision=Allow", &ed.fingerprint]);
    assert_eq!(
        world.count_proxy_lines(&["refused"]),
        0,
        "{}",
        world.proxy_log()
    );
}

#[test]
fn clone_and_push_with_the_rsa_key() {
    let mut world = SshWorld::new();
    let ed = world.agent.ed25519.clone();
    let rsa = world.agent.rsa.clone();
    // Pinned by the rule itself, not known_hosts; agent from --ssh-agent.
    world.laptop.write_known_hosts("");
    let policy = allow(
        &world,
        &format!(
            "keys = [{:?}]\nhost_keys = [{:?}]",
            rsa.fingerprint, world.host.host_key.line
        ),
    );
    world.start_proxy(&policy, AgentFrom::Flag);
    let pinned = world.trust_pinned_hosts();
    assert_eq!(pinned.stdout, world.host.known_hosts_line(), "{pinned}");

    let listed = listed_in_workspace(&world);
    assert!(listed.contains(&rsa.fingerprint), "{listed}");
    assert!(!listed.contains(&ed.fingerprint), "{listed}");

    // The signature flags reach the laptop agent: a client that accepts
    // only one RSA SHA-2 algorithm gets a signature the server verifies.
    let sock = world.ws.agent_sock();
    for alg in ["rsa-sha2-512", "rsa-sha2-256"] {
        let option = format!("PubkeyAcceptedAlgorithms={alg}");
        world
            .ssh_login(&sock, world.host.user, &["-o", &option], &[])
            .ok();
    }

    world.clone_repo("clone").ok();
    world.commit_and_push("clone", "rsa").ok();
    world.clone_repo("again").ok();
    world
        .git_in("again", &["rev-parse", "--verify", "origin/rsa"])
        .ok();
    assert!(
        world.host.accepted(&rsa.fingerprint),
        "{}",
        world.host.log()
    );
    assert!(
        !world.host.accepted(&ed.fingerprint),
        "{}",
        world.host.log()
    );
    world.wait_for_proxy_line(&["op=\"userauth\"", "decision=Allow", &rsa.fingerprint]);
    assert_eq!(
        world.count_proxy_lines(&["refused"]),
        0,
        "{}",
        world.proxy_log()
    );
}

#[test]
fn the_identity_list_follows_the_laptop_across_reconnects() {
    let mut world = SshWorld::new();
    let ed = world.agent.ed25519.clone();
    let rsa = world.agent.rsa.clone();
    let only = |key: &PubKey| format!("keys = [{:?}]", key.fingerprint);
    world.start_proxy(&allow(&world, &only(&ed)), AgentFrom::Flag);
    world.trust_pinned_hosts();
    let listed = listed_in_workspace(&world);
    assert!(
        listed.contains(&ed.fingerprint) && !listed.contains(&rsa.fingerprint),
        "{listed}"
    );

    // The laptop comes back with a policy that allows the other key: the
    // very first list and push after the reconnect must see it.
    world.stop_proxy();
    world.start_proxy(&allow(&world, &only(&rsa)), AgentFrom::Flag);
    let listed = listed_in_workspace(&world);
    assert!(
        listed.contains(&rsa.fingerprint) && !listed.contains(&ed.fingerprint),
        "a list cached under the previous link was served\n{listed}"
    );
    world.commit_and_push("repo", "main").ok();
    assert!(
        world.host.accepted(&rsa.fingerprint),
        "{}",
        world.host.log()
    );
}

#[test]
fn a_host_not_in_the_policy_is_refused() {
    let mut world = SshWorld::new();
    let other = other_host_key(&world);
    // The laptop's known_hosts knows the git host, but the only rule is for
    // another host.
    let policy = format!(
        "[[ssh.allow]]\nhost = \"github.com\"\nuser = {:?}\nhost_keys = [{:?}]\n",
        world.host.user, other.line
    );
    world.start_proxy(&policy, AgentFrom::Flag);
    let pinned = world.trust_pinned_hosts();
    assert_eq!(pinned.stdout, format!("github.com {}\n", other.line));
    // The workspace got the git host's key elsewhere (ssh-keyscan, say).
    world.trust_host_directly();

    push_refused(&world.commit_and_push("repo", "main"));
    let line = world.wait_for_proxy_line(&["refused", "no [[ssh.allow]] rule pins this host key"]);
    assert!(line.contains("denied by the laptop's policy"), "{line}");
    world.wait_for_proxy_line(&[
        "op=\"userauth\"",
        "decision=Deny",
        &format!("host_key={}", world.host.host_key.fingerprint),
    ]);
    assert!(
        !world.host.log().contains("Accepted publickey"),
        "{}",
        world.host.log()
    );
}

#[test]
fn a_host_key_other_than_the_pinned_one_is_refused() {
    let mut world = SshWorld::new();
    let other = other_host_key(&world);
    // The rule pins another key for the git host's address; `host_keys`
    // replaces the laptop's known_hosts (which has the real key).
    let policy = allow(&world, &format!("host_keys = [{:?}]", other.line));
    world.start_proxy(&policy, AgentFrom::Flag);

    // A workspace that trusts what the laptop pins stops at the host key.
    let pinned = world.trust_pinned_hosts();
    assert_eq!(
        pinned.stdout,
        format!("{} {}\n", world.host.known_hosts_name(), other.line)
    );
    world
        .clone_repo("clone")
        .code(128)
        .stderr_has("Host key verification failed");
    assert_eq!(world.count_proxy_lines(&["op=\"userauth\""]), 0);

    // One that trusts the host anyway gets no signature from the laptop.
    world.trust_host_directly();
    push_refused(&world.commit_and_push("repo", "main"));
    world.wait_for_proxy_line(&["refused", "no [[ssh.allow]] rule pins this host key"]);
    world.wait_for_proxy_line(&[
        "decision=Deny",
        &format!("host_key={}", world.host.host_key.fingerprint),
    ]);
    assert!(
        !world.host.log().contains("Accepted publickey"),
        "{}",
        world.host.log()
    );
}

#[test]
fn a_user_the_rule_does_not_name_is_refused() {
    let mut world = SshWorld::new();
    let policy = format!(
        "[[ssh.allow]]\nhost = {:?}\nuser = \"git\"\n",
        world.host.policy_host()
    );
    world.start_proxy(&policy, AgentFrom::Flag);
    world.trust_pinned_hosts();

    // The git host would accept the key for this user; the laptop does not sign.
    push_refused(&world.commit_and_push("repo", "main"));
    let reason = format!(
        "user {:?} is not allowed for {} (rule",
        world.host.user,
        world.host.policy_host()
    );
    world.wait_for_proxy_line(&["refused", "denied by the laptop's policy", &reason]);
    assert!(
        !world.host.log().contains("Accepted publickey"),
        "{}",
        world.host.log()
    );
}

/// Logs in through a recording relay and returns what ssh sent.
#[track_caller]
fn captured_login(world: &SshWorld, name: &str) -> Captured {
    let relay = AgentRelay::start(
        &world.ws_dir().join(format!("{name}.sock")),
        &world.ws.agent_sock(),
        Tamper::Nothing,
    );
    world
        .ssh_login(relay.path(), world.host.user, &[], &[])
        .ok();
    let conns = relay.connections();
    conns
        .into_iter()
        .find(|c| c.session_bind().is_some() && c.sign_request().is_some())
        .must("a relayed connection with a session bind and a sign request")
}

#[test]
fn hostile_agent_clients_are_refused_and_the_proxy_keeps_serving() {
    let mut world = SshWorld::new();
    let ed = world.agent.ed25519.clone();
    let rsa = world.agent.rsa.clone();
    world.start_proxy(
        &allow(&world, "sshsig_namespaces = [\"git\"]"),
        AgentFrom::Flag,
    );
    world.trust_pinned_hosts();
    // No `keys`: both laptop keys are listed.
    let listed = listed_in_workspace(&world);
    assert!(
        listed.contains(&ed.fingerprint) && listed.contains(&rsa.fingerprint),
        "{listed}"
    );

    // Requests that are never forwarded, whatever they hold.
    let planted = PrivateCredential::Key {
        privkey: KeypairData::Ed25519(Ed25519Keypair::from_seed(&[7; 32])),
        comment: "planted".into(),
    };
    let ed_public = ed
        .line
        .parse::<ssh_key::PublicKey>()
        .must("parsing the ed25519 public key")
        .key_data()
        .clone();
    let never_forwarded = [
        Request::AddIdentity(AddIdentity {
            credential: planted.clone(),
        }),
        Request::AddIdConstrained(AddIdentityConstrained {
            identity: AddIdentity {
                credential: planted,
            },
            constraints: vec![KeyConstraint::Lifetime(60)],
        }),
        Request::RemoveIdentity(RemoveIdentity {
            credential: PublicCredential::Key(ed_public),
        }),
        Request::RemoveAllIdentities,
        Request::Lock("hunter2".into()),
        Request::Unlock("hunter2".into()),
    ];
    let mut conn = AgentConn::connect(&world.ws.agent_sock());
    for request in &never_forwarded {
        assert_eq!(
            conn.call_type(&encode(request)),
            FAILURE,
            "{request:?} must be refused"
        );
    }
    assert_eq!(
        conn.call_type(&[200, 1, 2, 3]),
        FAILURE,
        "unknown message type"
    );
    assert_eq!(
        conn.call_type(&agent_wire::extension("evil@example.com", b"")),
        EXTENSION_FAILURE,
        "unknown extension"
    );
    // The connection still answers.
    assert_eq!(conn.call_type(&[REQUEST_IDENTITIES]), IDENTITIES_ANSWER);
    drop(conn);
    assert!(
        world
            .ws
            .log()
            .contains("refused an agent request that is never forwarded"),
        "{}",
        world.ws.log()
    );
    // The laptop agent still holds exactly its two keys, unlocked.
    let laptop_keys = world.agent.ssh_add(["-l"]);
    assert_eq!(laptop_keys.ok().stdout.lines().count(), 2, "{laptop_keys}");
    assert!(!laptop_keys.stdout.contains("planted"), "{laptop_keys}");

    // Genuine binds and sign requests, recorded between ssh and agent.sock.
    let a = captured_login(&world, "relay-a");
    let b = captured_login(&world, "relay-b");
    let (bind_a, sign_a) = (
        a.session_bind().must("bind A"),
        a.sign_request().must("sign A"),
    );
    let (bind_b, sign_b) = (
        b.session_bind().must("bind B"),
        b.sign_request().must("sign B"),
    );

    let bad_bind = agent_wire::with_bad_signature(bind_a);
    let cases: [(&str, Vec<&[u8]>, &str); 5] = [
        (
            "a sign request with no bind",
            vec![sign_a],
            "userauth signature without a session-bind",
        ),
        (
            "two binds on one connection",
            vec![bind_a, bind_b, sign_b],
            "a second session-bind on an agent connection whose first session did not forward the agent",
        ),
        (
            "a bind replayed from another connection",
            vec![bind_a, sign_a],
            "this session already had a signature with this key (replay)",
        ),
        (
            "a sign over data of another session",
            vec![bind_a, sign_b],
            "belongs to another SSH session than the bound one",
        ),
        (
            "a bind whose host signature does not verify",
            vec![&bad_bind, sign_a],
            "host key signature does not verify",
        ),
    ];
    for (what, messages, reason) in &cases {
        assert_eq!(
            on_new_connection(&world, messages),
            FAILURE,
            "{what} must be refused"
        );
        world.wait_for_proxy_line(&["refused", reason]);
    }

    // A bind marking an onward hop: the flag is not covered by the host's
    // signature, so a relay can set it on a live login; the laptop refuses.
    let relay = AgentRelay::start(
        &world.ws_dir().join("relay-fwd.sock"),
        &world.ws.agent_sock(),
        Tamper::MarkForwarding,
    );
    let out = world.ssh_login(relay.path(), world.host.user, &[], &[]);
    out.code(255)
        .stderr_has("agent refused operation")
        .stderr_has("Permission denied (publickey)");
    world.wait_for_proxy_line(&["refused", "the session is forwarded (onward hop)"]);
    drop(relay);

    // SSHSIG: only the namespaces a rule lists.
    let pubkey = world.ws_dir().join("signing.pub");
    std::fs::write(&pubkey, format!("{}\n", ed.line)).must("writing signing.pub");
    let message = world.ws_dir().join("message.txt");
    std::fs::write(&message, "hello\n").must("writing message.txt");
    let pubkey_arg = pubkey.display().to_string();
    let message_arg = message.display().to_string();
    world
        .ws_run(
            "ssh-keygen",
            ["-Y", "sign", "-n", "file", "-f", &pubkey_arg, &message_arg],
        )
        .code(255);
    world.wait_for_proxy_line(&["refused", "SSHSIG namespace \"file\" is not listed"]);
    world
        .ws_run(
            "ssh-keygen",
            ["-Y", "sign", "-n", "git", "-f", &pubkey_arg, &message_arg],
        )
        .ok();
    let signers = world.ws_dir().join("allowed_signers");
    std::fs::write(&signers, format!("e2e@example.com {}\n", ed.line)).must("writing signers");
    let mut verify = world.ws_command_with_sock("ssh-keygen", &world.ws.agent_sock());
    verify
        .args(["-Y", "verify", "-n", "git", "-I", "e2e@example.com", "-f"])
        .arg(&signers)
        .arg("-s")
        .arg(world.ws_dir().join("message.txt.sig"));
    nexus_e2e::run_to_end(&mut verify, Some(b"hello\n"))
        .ok()
        .stdout_has("Good \"git\" signature");

    // After all that, the proxy still serves a normal push.
    world.assert_running();
    world.clone_repo("clone").ok();
    world.commit_and_push("clone", "after-attacks").ok();
    assert!(world.host.accepted(&ed.fingerprint) || world.host.accepted(&rsa.fingerprint));
}

#[test]
fn a_genuinely_forwarded_agent_cannot_sign_onward() {
    let mut world = SshWorld::new();
    world.start_proxy(&allow(&world, ""), AgentFrom::Flag);
    world.trust_pinned_hosts();
    let sock = world.ws.agent_sock();
    let host = world.host.ip.to_string();
    let port = world.host.port.to_string();
    let target = format!("{}@{host}", world.host.user);
    // ssh -A to the git host, then from there on to the git host again:
    // the inner login's sign request arrives on the forwarded connection,
    // bound first to the outer session (is_forwarding = true).
    let inner = [
        "ssh",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-p",
        &port,
        &target,
        "true",
    ];
    let out = world.ssh_login(&sock, world.host.user, &["-A"], &inner);
    out.code(255).stderr_has("Permission denied (publickey)");
    world.wait_for_proxy_line(&["refused", "needs forwarding = true"]);
    // The outer login itself was signed.
    world.wait_for_proxy_line(&["op=\"userauth\"", "decision=Allow"]);
    // Listing keys through the forwarded agent still works (no signature).
    world
        .ssh_login(&sock, world.host.user, &["-A"], &["ssh-add", "-l"])
        .ok()
        .stdout_has(&world.agent.ed25519.fingerprint);
}

#[test]
fn forwarding_true_lets_an_onward_hop_sign() {
    let mut world = SshWorld::new();
    world.start_proxy(&allow(&world, "forwarding = true"), AgentFrom::Flag);
    world.trust_pinned_hosts();
    let sock = world.ws.agent_sock();
    let port = world.host.port.to_string();
    let target = format!("{}@{}", world.host.user, world.host.ip);
    let inner = [
        "ssh",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-p",
        &port,
        &target,
        "echo",
        "inner-ok",
    ];
    // The inner login's agent connection carries the outer bind (forwarding)
    // then its own: the hop is allowed by the rule, so the inner login signs.
    let out = world.ssh_login(&sock, world.host.user, &["-A"], &inner);
    out.ok().stdout_has("inner-ok");
    world.wait_for_proxy_line(&["op=\"hop\"", "decision=Allow"]);
}

#[test]
fn ssh_commit_signing_through_agent_sock() {
    let mut world = SshWorld::new();
    let ed = world.agent.ed25519.clone();
    let policy = allow(
        &world,
        &format!(
            "keys = [{:?}]\nsshsig_namespaces = [\"git\"]",
            ed.fingerprint
        ),
    );
    world.start_proxy(&policy, AgentFrom::Flag);
    world.trust_pinned_hosts();

    world.ws_run("git", ["init", "-q", "signed"]).ok();
    let signing_key = format!("user.signingkey=key::{}", ed.line);
    world
        .git_in(
            "signed",
            &[
                "-c",
                "gpg.format=ssh",
                "-c",
                &signing_key,
                "commit",
                "-q",
                "--allow-empty",
                "-S",
                "-m",
                "signed through the laptop",
            ],
        )
        .ok();
    let signers = world.ws_dir().join("allowed_signers");
    std::fs::write(
        &signers,
        format!("e2e@example.com namespaces=\"git\" {}\n", ed.line),
    )
    .must("writing allowed_signers");
    let signers_opt = format!("gpg.ssh.allowedSignersFile={}", signers.display());
    world
        .git_in(
            "signed",
            &[
                "-c",
                "gpg.format=ssh",
                "-c",
                &signers_opt,
                "verify-commit",
                "HEAD",
            ],
        )
        .ok()
        .stderr_has("Good \"git\" signature for e2e@example.com")
        .stderr_has(&ed.fingerprint);
    world.wait_for_proxy_line(&[
        "op=\"sshsig\"",
        "namespace=git",
        "decision=Allow",
        &ed.fingerprint,
    ]);
    // The signed commit can be pushed with the same key.
    world
        .git_in("signed", &["remote", "add", "origin", &world.host.url()])
        .ok();
    world
        .git_in(
            "signed",
            &["push", "-q", "origin", "HEAD:refs/heads/signed"],
        )
        .ok();
}

/// A sign request the laptop refuses is a decision like any other, and the
/// audit log must hold it: today the refusals `Sign::ask` returns as `Err`
/// (a replayed session, a sign with no bind, a bind for another session,
/// a bad host signature) reach only the proxy's stderr, so a workspace
/// trying replays leaves no trace in `audit.jsonl` or `audit tail`.
#[test]
fn refused_sign_requests_are_audited() {
    let mut world = SshWorld::new();
    world.start_proxy(&allow(&world, ""), AgentFrom::Flag);
    world.trust_pinned_hosts();
    let a = captured_login(&world, "relay-audit");
    let (bind_a, sign_a) = (
        a.session_bind().must("bind A"),
        a.sign_request().must("sign A"),
    );
    assert_eq!(on_new_connection(&world, &[bind_a, sign_a]), FAILURE);
    world.wait_for_proxy_line(&["refused", "(replay)"]);
    assert_eq!(on_new_connection(&world, &[sign_a]), FAILURE);
    world.wait_for_proxy_line(&["refused", "without a session-bind"]);
    let log = std::fs::read_to_string(world.laptop.config_dir().join("audit.jsonl"))
        .must("reading the audit log");
    for reason in ["(replay)", "without a session-bind"] {
        assert!(
            log.lines()
                .any(|l| l.contains("\"decision\":\"deny\"") && l.contains(reason)),
            "no audit line for the refused sign request ({reason}):\n{log}"
        );
    }
}

/// The wire blob of a public key, as an identities answer carries it.
#[track_caller]
fn blob(key: &PubKey) -> Vec<u8> {
    let public = key
        .line
        .parse::<ssh_key::PublicKey>()
        .must("parsing a public key");
    let mut out = Vec::new();
    public
        .key_data()
        .encode(&mut out)
        .must("encoding a public key");
    out
}

/// Polls the workspace's `ssh-add -l` until `seen` holds for it, for at
/// most `within` from `since`; the listing when it did.
#[track_caller]
fn listed_within(
    world: &SshWorld,
    since: std::time::Instant,
    within: std::time::Duration,
    seen: impl Fn(&str) -> bool,
) -> Option<String> {
    let left = within.saturating_sub(since.elapsed());
    nexus_e2e::poll(left, || {
        let listed = listed_in_workspace(world);
        seen(&listed).then_some(listed)
    })
}

#[test]
fn keys_added_deleted_or_expired_on_the_laptop_show_in_the_workspace_within_a_second() {
    use std::time::{Duration, Instant};
    const WITHIN: Duration = Duration::from_secs(1);
    let mut world = SshWorld::new();
    let dir = world.ws_dir().to_path_buf();
    let key = |name: &str| (PubKey::generate(&dir, name, "ed25519"), dir.join(name));
    // Added while no proxy runs: the very first list of the link has it.
    let (early, early_file) = key("early");
    world.agent.ssh_add([&early_file]).ok();
    world.start_proxy(&allow(&world, ""), AgentFrom::Flag);
    let listed = listed_in_workspace(&world);
    assert!(
        listed.contains(&early.fingerprint) && listed.contains(&world.agent.ed25519.fingerprint),
        "the first list after the link came up is stale\n{listed}"
    );

    let (added, added_file) = key("added");
    world.agent.ssh_add([&added_file]).ok();
    let since = Instant::now();
    listed_within(&world, since, WITHIN, |l| l.contains(&added.fingerprint))
        .must("a key added on the laptop listed in the workspace within 1 s");

    world
        .agent
        .ssh_add([OsStr::new("-d"), early.path.as_os_str()])
        .ok();
    let since = Instant::now();
    listed_within(&world, since, WITHIN, |l| !l.contains(&early.fingerprint))
        .must("a key deleted on the laptop gone from the workspace within 1 s");

    // ssh-agent counts lifetimes on a whole-second clock: a key added with
    // `-t 3` lives more than 2 s (time to be listed) and at most 3 s.
    let (brief, brief_file) = key("brief");
    world
        .agent
        .ssh_add([OsStr::new("-t"), OsStr::new("3"), brief_file.as_os_str()])
        .ok();
    let since = Instant::now();
    listed_within(&world, since, WITHIN, |l| l.contains(&brief.fingerprint))
        .must("a key added with a lifetime listed within 1 s");
    listed_within(&world, since, 4 * WITHIN, |l| {
        !l.contains(&brief.fingerprint)
    })
    .must("a key whose lifetime ended gone from the workspace within 1 s");
    let still = listed_in_workspace(&world);
    assert!(still.contains(&added.fingerprint), "{still}");
}

#[test]
fn a_destination_constrained_key_is_not_listed_on_a_connection_bound_to_another_host() {
    let mut world = SshWorld::new();
    let ed = world.agent.ed25519.clone();
    world.start_proxy(&allow(&world, ""), AgentFrom::Flag);
    world.trust_pinned_hosts();
    // A genuine bind to the git host, recorded on the way to agent.sock.
    // With no constrained key on the laptop, the login's list comes from
    // the pushed one: no round trip to the laptop.
    world.wait_for_proxy_line(&["identity list pushed", "constrained=false"]);
    let login = captured_login(&world, "relay-bind");
    let bind = login.session_bind().must("a session bind");
    assert_eq!(
        world.count_proxy_lines(&["agent identities listed"]),
        0,
        "{}",
        world.proxy_log()
    );

    // On the laptop: a key that may be used only on `allowed-host`, whose
    // host key is not the git host's.
    let dir = world.ws_dir().to_path_buf();
    let allowed_host = other_host_key(&world);
    let laptop_known = dir.join("laptop_known_hosts");
    std::fs::write(
        &laptop_known,
        format!("allowed-host {}\n", allowed_host.line),
    )
    .must("writing the laptop's known_hosts for ssh-add -h");
    let constrained = PubKey::generate(&dir, "constrained", "ed25519");
    world
        .agent
        .ssh_add([
            OsStr::new("-H"),
            laptop_known.as_os_str(),
            OsStr::new("-h"),
            OsStr::new("allowed-host"),
            dir.join("constrained").as_os_str(),
        ])
        .ok();

    // Unbound (local use): listed, as the laptop agent lists it.
    let since = std::time::Instant::now();
    listed_within(&world, since, std::time::Duration::from_secs(1), |l| {
        l.contains(&constrained.fingerprint)
    })
    .must("the constrained key listed on an unbound connection");
    // Bound to the git host: the laptop agent hides it; the others remain.
    let mut conn = AgentConn::connect(&world.ws.agent_sock());
    assert_eq!(conn.call_type(bind), SUCCESS, "the bind is acknowledged");
    let answer = conn.call(&[REQUEST_IDENTITIES]);
    let blobs = agent_wire::identity_blobs(&answer).must("an identities answer");
    assert!(
        !blobs.contains(&blob(&constrained)),
        "a key constrained to another host was listed on a bound connection"
    );
    assert!(
        blobs.contains(&blob(&ed)),
        "the unconstrained key is missing"
    );
    world.wait_for_proxy_line(&["agent identities listed", "bound=true"]);
    // A login to the git host still works with the unconstrained keys.
    world.clone_repo("clone").ok();
}

/// `ssh-keygen -s CA -I ID [-h] -n PRINCIPALS KEY.pub`, without `-V`: the
/// certificate (`KEY-cert.pub`) is valid forever, as many CAs issue them.
#[track_caller]
fn certify(ca_private: &std::path::Path, key: &PubKey, host: bool, principals: &str) {
    let mut cmd = std::process::Command::new("ssh-keygen");
    cmd.args(["-q", "-s"])
        .arg(ca_private)
        .args(["-I", "e2e-cert"]);
    if host {
        cmd.arg("-h");
    }
    cmd.args(["-n", principals]).arg(&key.path);
    nexus_e2e::run_to_end(&mut cmd, None).ok();
}

/// A temp dir for CA keys and certified keys, apart from every host.
#[track_caller]
fn ca_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nexus-e2e-ca-")
        .tempdir()
        .must("creating the CA's temp dir")
}

#[test]
fn a_user_certificate_valid_forever_is_listed_and_logs_in() {
    let dir = ca_dir();
    let ca = PubKey::generate(dir.path(), "user_ca", "ed25519");
    let ca_line = ca.line.clone();
    // The git host trusts the CA, and does not list the certified key.
    let mut world = SshWorld::with_sshd(&|root, _| {
        std::fs::write(root.join("user_ca.pub"), format!("{ca_line}\n")).must("writing the CA");
        format!("TrustedUserCAKeys {}/user_ca.pub\n", root.display())
    });
    let key = PubKey::generate(dir.path(), "certified", "ed25519");
    certify(&dir.path().join("user_ca"), &key, false, world.host.user);
    // ssh-add adds the key and, beside it, its certificate.
    world
        .agent
        .ssh_add([dir.path().join("certified")])
        .ok()
        .stderr_has("Certificate added");
    let policy = allow(&world, &format!("keys = [{:?}]", key.fingerprint));
    world.start_proxy(&policy, AgentFrom::Env);
    world.trust_pinned_hosts();

    let listed = listed_in_workspace(&world);
    assert!(listed.contains("(ED25519-CERT)"), "{listed}");
    assert!(listed.contains(&key.fingerprint), "{listed}");
    assert!(
        !listed.contains(&world.agent.ed25519.fingerprint),
        "a key no rule allows must be hidden\n{listed}"
    );
    world.clone_repo("clone").ok();
    let log = world.host.log();
    assert!(
        log.lines().any(|l| l.contains("Accepted publickey")
            && l.contains("ED25519-CERT")
            && l.contains(&key.fingerprint)),
        "sshd should have let the certificate in\n{log}"
    );
    // SSHSIG with the certificate is allowed by the certified key's
    // fingerprint too.
    world.stop_proxy();
    let policy = allow(
        &world,
        &format!(
            "keys = [{:?}]\nsshsig_namespaces = [\"file\"]",
            key.fingerprint
        ),
    );
    world.start_proxy(&policy, AgentFrom::Env);
    let cert_pub = dir.path().join("certified-cert.pub");
    let ws_cert = world.ws_dir().join("certified-cert.pub");
    std::fs::copy(&cert_pub, &ws_cert).must("copying the certificate");
    let data = world.ws_dir().join("data");
    std::fs::write(&data, "signed\n").must("writing data");
    world
        .ws_run(
            "ssh-keygen",
            [
                OsStr::new("-Y"),
                OsStr::new("sign"),
                OsStr::new("-n"),
                OsStr::new("file"),
                OsStr::new("-f"),
                ws_cert.as_os_str(),
                data.as_os_str(),
            ],
        )
        .ok();
    world.wait_for_proxy_line(&["op=\"sshsig\"", "decision=Allow", &key.fingerprint]);
}

#[test]
fn a_host_certificate_from_a_pinned_ca_verifies_a_hostbound_login() {
    let dir = ca_dir();
    let ca = PubKey::generate(dir.path(), "host_ca", "ed25519");
    let ca_private = dir.path().join("host_ca");
    // The git host presents a certificate of its key, valid forever.
    let mut world = SshWorld::with_sshd(&|root, ip| {
        let host_key = PubKey::read(&root.join("host_ed25519.pub"));
        certify(&ca_private, &host_key, true, &ip.to_string());
        format!("HostCertificate {}/host_ed25519-cert.pub\n", root.display())
    });
    let ed = world.agent.ed25519.clone();
    let name = world.host.known_hosts_name();
    // The laptop knows the CA only, never the host's key.
    world
        .laptop
        .write_known_hosts(&format!("@cert-authority {name} {}\n", ca.line));
    world.start_proxy(
        &allow(&world, &format!("keys = [{:?}]", ed.fingerprint)),
        AgentFrom::Env,
    );
    // The workspace is told to trust the CA, so its ssh asks for the
    // host certificate and binds it.
    let pinned = world.trust_pinned_hosts();
    assert_eq!(
        pinned.stdout.trim(),
        format!("@cert-authority {name} {}", ca.line),
        "{pinned}"
    );
    world.clone_repo("by-known-hosts").ok();
    world.wait_for_proxy_line(&["op=\"userauth\"", "decision=Allow", &ed.fingerprint]);

    // The same CA named by the rule itself, with an empty known_hosts.
    world.stop_proxy();
    world.laptop.write_known_hosts("");
    let policy = allow(
        &world,
        &format!("keys = [{:?}]\nhost_ca = [{:?}]", ed.fingerprint, ca.line),
    );
    world.start_proxy(&policy, AgentFrom::Env);
    world.clone_repo("by-rule").ok();

    // A CA the laptop does not trust pins nothing.
    world.stop_proxy();
    world.start_proxy(&allow(&world, ""), AgentFrom::Env);
    push_refused(&world.commit_and_push("by-rule", "main"));
    world.wait_for_proxy_line(&["refused", "no [[ssh.allow]] rule pins this host key"]);
}

/// paramiko (hence Fabric and Ansible's paramiko mode) on the workspace
/// host: `ssh USER@IP:PORT true` through agent.sock, accepting any host key
/// (it checks none against the laptop anyway). Prints `ok` or the error.
fn paramiko_login(world: &SshWorld) -> Output {
    let probe = nexus_e2e::run_to_end(
        std::process::Command::new("python3").args(["-c", "import paramiko"]),
        None,
    );
    assert_eq!(
        probe.exit_code,
        Some(0),
        "the `paramiko` Python package is missing: pip install paramiko (.ci/run does)\n{probe}"
    );
    let script = "import sys, paramiko
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
try:
    c.connect(sys.argv[1], port=int(sys.argv[2]), username=sys.argv[3], allow_agent=True, look_for_keys=False, timeout=10)
    _, out, _ = c.exec_command('true')
    sys.exit(out.channel.recv_exit_status())
except Exception as e:
    print(type(e).__name__, e, file=sys.stderr)
    sys.exit(1)
";
    let mut cmd = world.ws_command_with_sock("python3", &world.ws.agent_sock());
    cmd.args(["-c", script])
        .arg(world.host.ip.to_string())
        .arg(world.host.port.to_string())
        .arg(world.host.user);
    nexus_e2e::run_to_end(&mut cmd, None)
}

#[test]
fn clients_without_session_bind_log_in_only_where_a_rule_opts_in() {
    let mut world = SshWorld::new();
    let ed = world.agent.ed25519.clone();
    world.start_proxy(
        &allow(&world, &format!("keys = [{:?}]", ed.fingerprint)),
        AgentFrom::Env,
    );
    // paramiko lists keys, but sends no session-bind: refused, and the
    // laptop says which option would allow it.
    paramiko_login(&world).code(1);
    world.wait_for_proxy_line(&["no session-bind", "require_session_bind = false"]);

    world.stop_proxy();
    let policy = allow(
        &world,
        &format!(
            "keys = [{:?}]\nrequire_session_bind = false",
            ed.fingerprint
        ),
    );
    let path = world
        .laptop
        .write_policy(&format!("version = 1\n\n{policy}"));
    world
        .laptop
        .cli([OsStr::new("policy"), OsStr::new("check"), path.as_os_str()])
        .ok()
        .stderr_has("any host that accepts it");
    world.start_proxy(&policy, AgentFrom::Env);
    paramiko_login(&world).ok();
    assert!(
        world.host.accepted(&ed.fingerprint),
        "sshd should have let paramiko in\n{}",
        world.host.log()
    );
    world.wait_for_proxy_line(&["op=\"userauth\"", "bound=false", "decision=Allow"]);
}
