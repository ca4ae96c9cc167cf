//! End to end: git credentials over HTTP (a real git server with basic auth,
//! the laptop's real `git credential fill` with a `store` helper), `exec`
//! with tokens in the child only, allowlisted laptop files, and custom
//! laptop tools streamed back and killed with their caller.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use nexus_e2e::githttp::{GitHttp, nexus_shim};
use nexus_e2e::{DEADLINE, Daemon, Laptop, Must, Output, Workspace, paired, poll, run_to_end};

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-laptop-password";

/// A shell script run on the workspace host after `eval "$(nexus-shim env)"`.
#[track_caller]
fn ws_sh(ws: &Workspace, script: &str) -> Output {
    nexus_e2e::githttp::workspace_sh(ws, script)
}

/// `nexus-shim ARGS` with `input` on stdin.
#[track_caller]
fn shim_stdin(ws: &Workspace, args: &[&str], input: &[u8]) -> Output {
    let mut cmd = shim_command(ws);
    cmd.args(args);
    run_to_end(&mut cmd, Some(input))
}

fn shim_command(ws: &Workspace) -> Command {
    let mut cmd = Command::new(nexus_shim());
    cmd.env("HOME", ws.home())
        .env("NEXUS_STATE_DIR", ws.state_dir())
        .env("NEXUS_WAIT", "10s");
    cmd
}

/// The laptop's git: the `store` helper with the server's password.
fn laptop_git_store(laptop: &Laptop, git: &GitHttp) {
    std::fs::write(
        laptop.home().join(".gitconfig"),
        "[credential]\n\thelper = store\n",
    )
    .must("writing the laptop's .gitconfig");
    std::fs::write(
        laptop.home().join(".git-credentials"),
        format!("http://{USER}:{PASSWORD}@{}\n", git.host()),
    )
    .must("writing the laptop's .git-credentials");
}

struct GitWorld {
    ws: Workspace,
    _laptop: Laptop,
    proxy: Daemon,
    git: GitHttp,
}

#[track_caller]
fn git_world(extra_rules: &str) -> GitWorld {
    let (ws, laptop) = paired();
    let git = GitHttp::start(&ws, USER, PASSWORD);
    laptop_git_store(&laptop, &git);
    let policy = laptop.write_policy(&format!(
        "[[git-credential.allow]]\nprotocol = \"http\"\nhost = \"{}\"\npath = \"acme/*\"\n{extra_rules}",
        git.host()
    ));
    let proxy = laptop.run(&ws, "dev", &policy, &[]);
    GitWorld {
        ws,
        _laptop: laptop,
        proxy,
        git,
    }
}

#[test]
fn git_clone_and_push_over_http_with_the_laptops_credential() {
    let world = git_world("actions = [\"get\"]\n");
    let url = world.git.url("acme/repo.git");
    let out = ws_sh(
        &world.ws,
        &format!(
            "cd \"$HOME\"; git clone -q {url} repo; cd repo; echo change > file; git add file; \
             git commit -q -m from-the-workspace; git push -q origin HEAD:main"
        ),
    );
    assert_eq!(
        out.exit_code,
        Some(0),
        "{out}\n--- proxy ---\n{}\n--- git server ---\n{}\n{}",
        world.proxy.log(),
        world.git.requests(),
        world.git.log()
    );
    assert_eq!(
        world.git.head_subject("acme/repo.git"),
        "from-the-workspace"
    );
    // The workspace never kept the password: no store helper ran there.
    assert!(!world.ws.home().join(".git-credentials").exists());
    assert!(
        !world.ws.log().contains(PASSWORD),
        "password in the shim's log"
    );
    assert!(
        !world.proxy.log().contains(PASSWORD),
        "password in the proxy's log"
    );
    // store was not listed: the laptop logged the denial and changed nothing.
    assert!(
        world.proxy.log().contains("target=store http://"),
        "{}",
        world.proxy.log()
    );
}

#[test]
fn a_repo_outside_the_path_glob_is_refused() {
    let world = git_world("");
    let url = world.git.url("other/repo.git");
    let out = ws_sh(
        &world.ws,
        &format!("cd \"$HOME\"; git clone -q {url} other"),
    );
    assert_ne!(out.exit_code, Some(0), "{out}");
    assert!(out.stderr.contains("told us to quit"), "{out}");
    assert!(
        out.stderr.contains("denied by the laptop's policy"),
        "{out}"
    );
    assert!(
        !world.git.requests().contains("auth=ok"),
        "{}",
        world.git.requests()
    );
}

#[test]
fn injected_credential_fields_are_refused() {
    let world = git_world("");
    let host = world.git.host().to_owned();
    let ok = format!("protocol=http\nhost={host}\npath=acme/repo.git\n");
    let out = shim_stdin(&world.ws, &["git-credential", "get"], ok.as_bytes());
    out.ok()
        .stdout_has(PASSWORD)
        .stdout_has(&format!("username={USER}"));

    let hostile: Vec<(&str, Vec<u8>)> = vec![
        (
            "CR in path",
            format!("protocol=http\nhost={host}\npath=acme/x\rhost=evil\n").into_bytes(),
        ),
        (
            "NUL in host",
            format!("protocol=http\nhost={host}\0evil\npath=acme/x\n").into_bytes(),
        ),
        (
            "newline smuggles a second host",
            format!("protocol=http\nhost=evil.example\npath=acme/x\nhost={host}\n").into_bytes(),
        ),
        (
            "url with embedded credentials",
            format!("url=http://u:p@{host}/acme/x\n").into_bytes(),
        ),
        (
            "dot-dot escapes the glob",
            format!("protocol=http\nhost={host}\npath=acme/../other/repo.git\n").into_bytes(),
        ),
        (
            "encoded dot-dot",
            format!("protocol=http\nhost={host}\npath=acme/%2e%2e/other/repo.git\n").into_bytes(),
        ),
        (
            "another host's credential",
            b"protocol=https\nhost=github.com\npath=acme/repo.git\n".to_vec(),
        ),
        (
            "no path (useHttpPath off)",
            format!("protocol=http\nhost={host}\n").into_bytes(),
        ),
        // One byte over the limit (the client stops reading there).
        ("oversized", vec![b'a'; (64 << 10) + 1]),
    ];
    for (what, input) in hostile {
        let out = shim_stdin(&world.ws, &["git-credential", "get"], &input);
        assert_ne!(out.exit_code, Some(0), "{what}\n{out}");
        assert_eq!(out.stdout, "quit=1\n", "{what}\n{out}");
        assert!(!out.stdout.contains(PASSWORD), "{what} leaked\n{out}");
    }
    // store/erase are not listed: silently nothing, and the laptop's
    // credential file is untouched.
    let store =
        format!("protocol=http\nhost={host}\npath=acme/repo.git\nusername=mallory\npassword=x\n");
    shim_stdin(&world.ws, &["git-credential", "store"], store.as_bytes()).ok();
    shim_stdin(&world.ws, &["git-credential", "erase"], store.as_bytes()).ok();
    let out = shim_stdin(&world.ws, &["git-credential", "get"], ok.as_bytes());
    out.ok().stdout_has(PASSWORD);
}

/// `username` limits the accounts: a request for another account is
/// refused, and so is the laptop's answer for another account when the
/// request named none; the password stays on the laptop.
#[test]
fn a_username_rule_hands_out_only_its_accounts() {
    let world = git_world("username = \"bot-*\"");
    let host = world.git.host().to_owned();
    for input in [
        format!("protocol=http\nhost={host}\npath=acme/repo.git\n"),
        format!("protocol=http\nhost={host}\npath=acme/repo.git\nusername={USER}\n"),
    ] {
        let out = shim_stdin(&world.ws, &["git-credential", "get"], input.as_bytes());
        assert_eq!(out.exit_code, Some(3), "{input}\n{out}");
        assert_eq!(out.stdout, "quit=1\n", "{input}\n{out}");
        assert!(!out.stdout.contains(PASSWORD), "leaked\n{out}");
    }
    assert!(
        world
            .proxy
            .log()
            .contains("an account the rule does not allow"),
        "{}",
        world.proxy.log()
    );
    let world = git_world(&format!("username = [\"bot-*\", {USER:?}]"));
    let host = world.git.host().to_owned();
    let ok = format!("protocol=http\nhost={host}\npath=acme/repo.git\n");
    shim_stdin(&world.ws, &["git-credential", "get"], ok.as_bytes())
        .ok()
        .stdout_has(PASSWORD);
}

/// An allowed URL the laptop has no credential for: the helper offers
/// nothing (no output, exit 0) instead of `quit=1`, so git goes on to its
/// next helper.
#[test]
fn nothing_on_the_laptop_lets_git_ask_its_next_helper() {
    let (ws, laptop) = paired();
    std::fs::write(
        laptop.home().join(".gitconfig"),
        "[credential]\n\thelper = store\n",
    )
    .must("writing the laptop's .gitconfig");
    let host = "git.example.test";
    let policy = laptop.write_policy(&format!(
        "[[git-credential.allow]]\nprotocol = \"https\"\nhost = \"{host}\"\n"
    ));
    let _proxy = laptop.run(&ws, "dev", &policy, &[]);
    let ask = format!("protocol=https\nhost={host}\npath=acme/r.git\n");
    let out = shim_stdin(&ws, &["git-credential", "get"], ask.as_bytes());
    out.ok();
    assert_eq!(out.stdout, "", "{out}");
    let out = ws_sh(
        &ws,
        &format!(
            "printf 'protocol=https\\nhost={host}\\npath=acme/r.git\\n\\n' | git \
             -c credential.useHttpPath=true \
             -c credential.helper='!f() {{ echo username=next; echo password=from-the-next-helper; }}; f' \
             credential fill"
        ),
    );
    out.ok().stdout_has("password=from-the-next-helper");
    // A denied URL still stops git.
    let denied = "protocol=https\nhost=other.example\npath=acme/r.git\n";
    let out = shim_stdin(&ws, &["git-credential", "get"], denied.as_bytes());
    out.code(3);
    assert_eq!(out.stdout, "quit=1\n", "{out}");
}

#[test]
fn erase_reaches_the_laptop_only_when_listed_and_answers_are_filtered() {
    let (ws, laptop) = paired();
    let host = "git.example.test:8443";
    // A laptop helper that also answers a refresh token (never forwarded),
    // and whose `erase` is observable.
    let erased = laptop.home().join("erased");
    std::fs::write(
        laptop.home().join(".gitconfig"),
        format!(
            "[credential]\n\thelper = \"!f() {{ if [ \\\"$1\\\" = erase ]; then cat > '{}'; \
             else echo username={USER}; echo password={PASSWORD}; echo oauth_refresh_token=REFRESH-TOKEN; fi; }}; f\"\n",
            erased.display()
        ),
    )
    .must("writing the laptop's .gitconfig");
    let policy = laptop.write_policy(&format!(
        "[[git-credential.allow]]\nprotocol = \"https\"\nhost = \"{host}\"\npath = \"acme/*\"\nactions = [\"get\", \"erase\"]\n\n\
         [[git-credential.allow]]\nhost = \"{host}\"\npath = \"gated/*\"\napprove = \"prompt\"\n"
    ));
    // Nobody answers the approval prompts here: they are denied after 1 s.
    let unanswered = [
        std::ffi::OsStr::new("--approval-timeout"),
        std::ffi::OsStr::new("1s"),
    ];
    let proxy = laptop.run_with(&ws, "dev", &policy, &[], &unanswered);
    let ask = |path: &str| format!("protocol=https\nhost={host}\npath={path}\n");
    let got = shim_stdin(
        &ws,
        &["git-credential", "get"],
        ask("acme/r.git").as_bytes(),
    );
    got.ok().stdout_has(PASSWORD);
    assert!(!got.stdout.contains("REFRESH-TOKEN"), "{got}");
    // approve = "prompt" unanswered: denied, git told to quit.
    let gated = shim_stdin(
        &ws,
        &["git-credential", "get"],
        ask("gated/r.git").as_bytes(),
    );
    gated.code(3).stderr_has("needs approval");
    assert_eq!(gated.stdout, "quit=1\n");
    // erase is listed for acme: the laptop's helper sees it.
    let erase = format!(
        "{}username={USER}\npassword={PASSWORD}\n",
        ask("acme/r.git")
    );
    shim_stdin(&ws, &["git-credential", "erase"], erase.as_bytes()).ok();
    let seen =
        poll(DEADLINE, || std::fs::read_to_string(&erased).ok()).must("erase reached the helper");
    assert!(seen.contains(&format!("host={host}")), "{seen}");
    // store is not listed: nothing reaches the laptop.
    std::fs::remove_file(&erased).must("resetting");
    shim_stdin(&ws, &["git-credential", "store"], erase.as_bytes()).ok();
    assert!(!erased.exists());
    assert!(
        !proxy.log().contains(PASSWORD),
        "password in the proxy's log"
    );
}

/// One env token `demo`.
const TOKEN_POLICY: &str = "[tokens.demo]\nsource = \"env:E2E_DEMO\"\n";

#[test]
fn exec_puts_the_token_in_the_child_only() {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy(TOKEN_POLICY);
    let _proxy = laptop.run(&ws, "dev", &policy, &[("E2E_DEMO", "exec-secret-value")]);
    let out = ws.cli([
        "exec",
        "--env",
        "MY_TOKEN=token:demo",
        "--",
        "sh",
        "-c",
        "printf %s \"$MY_TOKEN\"; exit 7",
    ]);
    assert_eq!(out.code(7).stdout, "exec-secret-value");
    assert!(
        !ws.log().contains("exec-secret-value"),
        "value in the shim's log"
    );
    // Before the command starts, the DESIGN exit codes apply.
    ws.cli(["exec", "--env", "X=token:nope", "--", "true"])
        .code(3)
        .stderr_has("not declared");
    ws.cli(["exec", "--env", "X=env:HOME", "--", "true"])
        .code(2);
    ws.cli(["exec", "--", "/nonexistent/cmd"]).code(127);

    // Signals reach the command: it replaces the client (same pid).
    let mut child = shim_command(&ws)
        .args(["exec", "--env", "T=token:demo", "--", "sleep", "30"])
        .stdout(Stdio::null())
        .spawn()
        .must("starting exec");
    let pid = rustix::process::Pid::from_child(&child);
    let comm = format!("/proc/{}/comm", pid.as_raw_nonzero());
    poll(DEADLINE, || {
        std::fs::read_to_string(&comm)
            .ok()
            .filter(|c| c.trim() == "sleep")
    })
    .must("exec never became the command");
    let environ = std::fs::read(format!("/proc/{}/environ", pid.as_raw_nonzero()))
        .must("reading the command's environment");
    assert!(
        environ.windows(17).any(|w| w == b"exec-secret-value"),
        "the token is not in the command's environment"
    );
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).must("sending SIGTERM");
    let status = child.wait().must("waiting for exec");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "{status}");
}

struct FileWorld {
    ws: Workspace,
    laptop: Laptop,
    _proxy: Daemon,
}

#[track_caller]
fn file_world() -> FileWorld {
    let (ws, laptop) = paired();
    let home = laptop.home();
    std::fs::create_dir_all(home.join(".opencode/agents")).must("mkdir");
    std::fs::write(home.join(".opencode/config.json"), "{\"model\":\"x\"}\n").must("write");
    std::fs::write(home.join(".opencode/agents/a.md"), "agent a\n").must("write");
    std::fs::write(home.join(".opencode/big.json"), vec![b'x'; 4096]).must("write");
    std::fs::write(home.join(".opencode/id.key"), "denied\n").must("write");
    std::fs::create_dir_all(home.join(".ssh")).must("mkdir");
    std::fs::write(home.join(".ssh/id_ed25519"), "PRIVATE KEY\n").must("write");
    std::os::unix::fs::symlink(home.join(".ssh/id_ed25519"), home.join(".opencode/escape"))
        .must("symlink");
    std::os::unix::fs::symlink(home.join(".ssh"), home.join(".opencode/sshdir")).must("symlink");
    // Inside a synced directory too: a link out is skipped, not followed.
    std::os::unix::fs::symlink(
        home.join(".ssh/id_ed25519"),
        home.join(".opencode/agents/leak"),
    )
    .must("symlink");
    let fifo = home.join(".opencode/fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().must("mkfifo");
    assert!(made.success());
    let policy = laptop.write_policy(
        "[[files.allow]]\npath = \"~/.opencode/\"\nmax_size = \"1KiB\"\n\n\
         [[files.deny]]\npath = \"**/*.key\"\n\n\
         [files.sets.opencode]\npaths = [\"~/.opencode/config.json\", \"~/.opencode/agents/\"]\n",
    );
    let proxy = laptop.run(&ws, "dev", &policy, &[]);
    FileWorld {
        ws,
        laptop,
        _proxy: proxy,
    }
}

#[test]
fn file_get_serves_allowed_files_only() {
    let world = file_world();
    let ws = &world.ws;
    ws.cli(["file", "get", "~/.opencode/config.json"])
        .ok()
        .stdout_has("\"model\"");
    ws.cli(["file", "get", "$HOME/.opencode/agents/a.md"])
        .ok()
        .stdout_has("agent a");
    // A path under the workspace's own $HOME (a shell expanded ~) means ~/.
    let expanded = ws.home().join(".opencode/config.json");
    ws.cli(["file", "get", &expanded.display().to_string()])
        .ok();
    // -o installs atomically.
    let dest = ws.home().join("out/config.json");
    ws.cli([
        "file",
        "get",
        "~/.opencode/config.json",
        "-o",
        &dest.display().to_string(),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(&dest).must("reading -o DEST"),
        "{\"model\":\"x\"}\n"
    );

    let refused: &[(&str, i32, &str)] = &[
        ("~/.opencode/../.ssh/id_ed25519", 3, "'..'"),
        ("~/.ssh/id_ed25519", 3, "default deny"),
        ("/etc/passwd", 3, "default deny"),
        ("~/.opencode/escape", 3, "outside the path"),
        ("~/.opencode/sshdir/id_ed25519", 3, "outside the path"),
        ("~/.opencode/id.key", 3, "files.deny"),
        ("~/.opencode/fifo", 3, "not a regular file"),
        ("~/.opencode/big.json", 3, "max_size"),
        ("~/.opencode/gone.json", 5, "not on the laptop"),
        ("relative/path", 1, "must start with"),
    ];
    for (path, code, says) in refused {
        let out = ws.cli(["file", "get", path]);
        out.code(*code).stderr_has(says);
        assert!(!out.stdout.contains("PRIVATE KEY"), "{out}");
    }
    assert!(world.laptop.home().join(".opencode/fifo").exists());
    // A directory comes back file by file under -o DEST_DIR; links out are skipped.
    let dest = ws.home().join("agents-copy");
    ws.cli([
        "file",
        "get",
        "~/.opencode/agents/",
        "-o",
        &dest.display().to_string(),
    ])
    .ok()
    .stderr_has("installed 1 file(s)")
    .stderr_has("skipped ~/.opencode/agents/leak");
    assert_eq!(
        std::fs::read_to_string(dest.join("a.md")).must("a file of the directory"),
        "agent a\n"
    );
    assert!(!dest.join("leak").exists());
    ws.cli(["file", "get", "~/.opencode/agents"])
        .code(2)
        .stderr_has("-o DEST_DIR");
}

#[test]
fn file_sync_installs_a_set_into_the_workspace_home() {
    let world = file_world();
    let ws = &world.ws;
    ws.cli(["file", "sync", "opencode"])
        .ok()
        .stderr_has("installed 2 file(s)")
        .stderr_has("skipped ~/.opencode/agents/leak");
    assert!(!ws.home().join(".opencode/agents/leak").exists());
    assert_eq!(
        std::fs::read_to_string(ws.home().join(".opencode/config.json")).must("synced file"),
        "{\"model\":\"x\"}\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.home().join(".opencode/agents/a.md")).must("synced file"),
        "agent a\n"
    );
    // Nothing but the set: no temporary files left, nothing else copied.
    let names: Vec<_> = std::fs::read_dir(ws.home().join(".opencode"))
        .must("listing")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["agents", "config.json"]);
    ws.cli(["file", "sync", "nope"])
        .code(3)
        .stderr_has("not declared");
}

const STREAM_SCRIPT: &str =
    "echo first; while [ ! -e \"$1\" ]; do sleep 0.02; done; echo second; echo err >&2; exit 5";

/// A policy with the test tools.
fn tools_policy() -> String {
    format!(
        r#"
[tools.stream]
command = ["sh", "-c", {STREAM_SCRIPT:?}, "sh"]
args = ["*"]
description = "prints, waits for a file, prints again"

[tools.linger]
command = ["sh", "-c", "sleep 60 & echo $! > \"$1\"; wait", "sh"]
args = ["*"]
description = "a background child that would outlive a careless kill"

[tools.flood]
command = ["sh", "-c", "echo $$ > \"$1\"; exec yes nexus-flood", "sh"]
args = ["*"]

[tools.slow]
command = ["sleep", "30"]
timeout = "1s"

[tools.pr]
command = ["echo", "pr"]
args = ["--title", "*", "--body", "*"]
description = "Open a pull request"

[tools.missing]
command = ["/nonexistent/tool"]

[tools.gated]
command = ["true"]
approve = "prompt"
"#
    )
}

#[track_caller]
fn tool_world() -> (Workspace, Laptop, Daemon, tempfile::TempDir) {
    let (ws, laptop) = paired();
    let policy = laptop.write_policy(&tools_policy());
    // Nobody answers the approval prompts here: they are denied after 1 s.
    let unanswered = [
        std::ffi::OsStr::new("--approval-timeout"),
        std::ffi::OsStr::new("1s"),
    ];
    let proxy = laptop.run_with(&ws, "dev", &policy, &[], &unanswered);
    let scratch = tempfile::tempdir().must("scratch dir");
    (ws, laptop, proxy, scratch)
}

#[test]
fn tool_run_streams_output_as_it_is_produced() {
    let (ws, _laptop, _proxy, scratch) = tool_world();
    let flag = scratch.path().join("go");
    let mut child = shim_command(&ws)
        .args(["tool", "run", "stream", "--"])
        .arg(&flag)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .must("starting tool run");
    let mut lines = BufReader::new(child.stdout.take().must("stdout")).lines();
    // The first line arrives while the tool is still waiting for the flag.
    let first = lines.next().must("a first line").must("reading");
    assert_eq!(first, "first");
    assert!(
        child.try_wait().must("polling").is_none(),
        "ended before the flag"
    );
    assert!(!flag.exists());
    std::fs::write(&flag, "").must("raising the flag");
    let second = lines.next().must("a second line").must("reading");
    assert_eq!(second, "second");
    let status = child.wait().must("waiting");
    assert_eq!(status.code(), Some(5), "the tool's exit code");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().must("stderr"), &mut err)
        .must("reading stderr");
    assert_eq!(err, "err\n");
}

#[test]
fn tool_arguments_are_matched_element_by_element() {
    let (ws, _laptop, _proxy, _scratch) = tool_world();
    ws.cli(["tool", "run", "pr", "--", "--title", "t", "--body", "b c"])
        .ok()
        .stdout_has("pr --title t --body b c");
    for args in [
        &["--title", "--output=/etc/x", "--body", "b"][..],
        &["--title", "-oProxyCommand=sh", "--body", "b"],
        &["--title", "t", "--body", "b", "--web"],
        &["--body", "b", "--title", "t"],
        &["--title", "t"],
    ] {
        let mut all = vec!["tool", "run", "pr", "--"];
        all.extend_from_slice(args);
        ws.cli(&all)
            .code(3)
            .stderr_has("denied by the laptop's policy");
    }
    ws.cli(["tool", "run", "undeclared"])
        .code(3)
        .stderr_has("not declared");
    ws.cli(["tool", "run", "missing"])
        .code(5)
        .stderr_has("not installed");
    ws.cli(["tool", "run", "gated"])
        .code(3)
        .stderr_has("needs approval");
    ws.cli(["tool", "run", "slow"])
        .code(124)
        .stderr_has("timeout");
    let list = ws.cli(["tool", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list.ok().stdout).must("tool list --json");
    let names: Vec<_> = v
        .as_array()
        .must("array")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"pr") && names.contains(&"stream"),
        "{names:?}"
    );
    ws.cli(["tool", "list"])
        .ok()
        .stdout_has("Open a pull request");
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[track_caller]
fn wait_pid_file(path: &Path) -> String {
    poll(DEADLINE, || {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    })
    .must("the tool never wrote its pid")
}

/// Starts `tool run linger` (a tool whose background child would outlive a
/// careless kill): the caller, and the pid of that child once it runs.
#[track_caller]
fn start_linger(ws: &Workspace, scratch: &Path) -> (std::process::Child, String) {
    let pidfile = scratch.join("pid");
    let child = shim_command(ws)
        .args(["tool", "run", "linger", "--"])
        .arg(&pidfile)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .must("starting tool run");
    let pid = wait_pid_file(&pidfile);
    (child, pid)
}

#[test]
fn the_laptop_tool_dies_when_the_caller_is_killed() {
    let (ws, _laptop, _proxy, scratch) = tool_world();
    let (mut child, pid) = start_linger(&ws, scratch.path());
    assert!(!dead(&pid), "the background child should be running");
    child.kill().must("killing the caller");
    let _ = child.wait();
    assert!(
        poll(DEADLINE, || dead(&pid).then_some(())).is_some(),
        "the tool's background child {pid} outlived its caller"
    );
}

#[test]
fn a_caller_that_never_reads_stalls_the_tool_and_kills_it_on_exit() {
    let (ws, _laptop, proxy, scratch) = tool_world();
    let pidfile = scratch.path().join("pid");
    // stdout is a pipe nobody reads: flow control stops `yes` on the
    // laptop instead of buffering its output anywhere.
    let mut child = shim_command(&ws)
        .args(["tool", "run", "flood", "--"])
        .arg(&pidfile)
        .stdout(Stdio::piped())
        .spawn()
        .must("starting tool run");
    let pid = wait_pid_file(&pidfile);
    // Backpressure reaches the laptop: `yes` ends up blocked writing its
    // pipe, with the proxy's memory bounded by the stream windows.
    let wchan = format!("/proc/{pid}/wchan");
    poll(DEADLINE, || {
        std::fs::read_to_string(&wchan)
            .ok()
            .filter(|w| w.contains("pipe_write") || w.contains("pipe_wait"))
    })
    .must("the laptop tool never blocked on a full pipe");
    let rss = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .must("the proxy's RSS");
    assert!(
        rss < 64 * 1024,
        "the proxy holds {rss} kB with a caller that does not read"
    );
    child.kill().must("killing the caller");
    let _ = child.wait();
    assert!(
        poll(DEADLINE, || dead(&pid).then_some(())).is_some(),
        "the flooding tool {pid} outlived its caller"
    );
}

/// A tool still running when the proxy is stopped dies with it: the proxy
/// leaves such calls after its drain, and dropping them kills their process
/// groups. (When the runtime stopped without waiting for its workers, the
/// proxy could exit before they dropped the calls, and the tool ran on.)
#[test]
fn stopping_the_proxy_kills_a_tool_still_running() {
    let (ws, _laptop, mut proxy, scratch) = tool_world();
    let (mut child, pid) = start_linger(&ws, scratch.path());
    let exit = proxy.terminate();
    assert!(
        poll(DEADLINE, || dead(&pid).then_some(())).is_some(),
        "the tool's child {pid} ran on after the proxy exited ({exit})\n{}",
        proxy.log()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// `lock` is a kill switch for runs already going, not only the next call:
/// the laptop kills the tool's group and the caller exits 3.
#[test]
fn lock_kills_a_tool_that_is_already_running() {
    let (ws, laptop, _proxy, scratch) = tool_world();
    let (mut child, pid) = start_linger(&ws, scratch.path());
    laptop.cli(["lock"]).ok();
    assert!(
        poll(DEADLINE, || dead(&pid).then_some(())).is_some(),
        "the tool's child {pid} ran on after the lock"
    );
    let status = poll(DEADLINE, || child.try_wait().ok().flatten())
        .must("the caller never ended after the lock");
    assert_eq!(status.code(), Some(3), "a lock is a denial");
    // The run's end is in the audit log like any other outcome.
    let log = std::fs::read_to_string(laptop.config_dir().join("audit.jsonl"))
        .must("reading the audit log");
    let stopped = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|e| {
            e["tool"] == "tool"
                && e["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("linger"))
                && e["decision"] == "deny"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("stopped under way"))
        });
    assert!(
        stopped,
        "no audit line for the run the lock stopped:\n{log}"
    );
    laptop.cli(["audit", "verify"]).ok();
    laptop.cli(["unlock"]).ok();
}
