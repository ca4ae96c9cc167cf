//! End to end with real agents from npm: Claude Code, Codex and OpenCode,
//! each run headless after `nexus-shim setup AGENT` in a workspace linked
//! to a laptop, against the scripted LLM of [`nexus_e2e::llm`] behind an
//! HTTPS upstream with a private CA that only the laptop trusts.
//!
//! For each agent: the prompt is answered with the real key seen by the
//! upstream only (the workspace holds a placeholder; no workspace file,
//! daemon environment or agent output holds the key), the laptop tool
//! `hello` is called through `nexus-shim mcp` (the laptop's audit shows
//! it), and the agent's shell pushes to a real sshd git host, signed by the
//! laptop's ssh-agent. The policy declares the upstream, the tool and the
//! git host, and nothing else is named to any agent.
//!
//! The agents come from `NEXUS_E2E_NPM` (default `~/.cache/nexus-e2e/npm`,
//! where `.ci/run` installs them). Without them the tests say SKIPPED, and
//! fail under `CI=true`. Each run is capped at [`AGENT_CAP`].

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nexus_e2e::llm::{FINAL_PREFIX, MARKERS};
use nexus_e2e::sshd::SshWorld;
use nexus_e2e::upstream::Upstream;
use nexus_e2e::{Daemon, Must, Output, run_to_end, run_to_end_within};

/// The real key: only the laptop's environment and the upstream see it.
const KEY: &str = "sk-e2e-agents-real-51c9";

/// What `nexus-shim setup` writes as the workspace's key.
const PLACEHOLDER: &str = "nexus-placeholder";

/// The longest a headless agent run may take.
const AGENT_CAP: Duration = Duration::from_secs(60);

/// What every agent is asked. It names no host and no marker: the
/// scripted LLM decides the calls.
const PROMPT: &str = "Say hello through the laptop, then push this branch.";

/// `node_modules/.bin` of the npm cache, or `None` (SKIPPED; a failure
/// under CI) when `bin` is not installed there.
fn agent_bin(bin: &str) -> Option<PathBuf> {
    let root = std::env::var_os("NEXUS_E2E_NPM").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/nexus-e2e/npm")
        },
        PathBuf::from,
    );
    let path = root.join("node_modules/.bin").join(bin);
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "{} is missing: install the agents with `npm install --prefix {} @anthropic-ai/claude-code @openai/codex opencode-ai` (what .ci/run does)",
        path.display(),
        root.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// The workspace, laptop, git host and LLM upstream for one agent run.
struct World {
    ssh: SshWorld,
    upstream: Upstream,
    _proxy: Daemon,
    /// The clone the agent works in.
    clone: PathBuf,
}

/// A world whose laptop declares the LLM as `[http.API]`, the tool `hello`,
/// and the git host; the workspace has a clone with one commit to push.
#[track_caller]
fn world(api: &str) -> World {
    let ssh = SshWorld::new();
    let upstream = Upstream::start(&format!("{api}.test")).must("starting the LLM upstream");
    let ca = ssh.laptop.home().join("llm-ca.pem");
    upstream.write_ca(&ca).must("writing the LLM's CA");
    let policy = format!(
        "version = 1\n\n{}\n[tools.hello]\ncommand = [\"echo\", \"{}\"]\n\
         description = \"Say hello from the laptop\"\n\n\
         [[ssh.allow]]\nhost = {:?}\nuser = {:?}\n",
        upstream.policy(api, "E2E_LLM_KEY", &ca),
        MARKERS[0],
        ssh.host.policy_host(),
        ssh.host.user,
    );
    let policy = ssh.laptop.write_policy(&policy);
    let proxy = ssh.laptop.run_with(
        &ssh.ws,
        "dev",
        &policy,
        &[
            ("SSH_AUTH_SOCK", ssh.agent.sock().as_os_str()),
            ("E2E_LLM_KEY", OsStr::new(KEY)),
        ],
        &[],
    );
    ssh.trust_pinned_hosts();
    ssh.clone_repo("work").ok();
    let config = format!("ssh -F {}", ssh.ssh_config().display());
    for (key, value) in [
        ("core.sshCommand", config.as_str()),
        ("user.name", "Agent"),
        ("user.email", "agent@example.com"),
    ] {
        ssh.git_in("work", &["config", key, value]).ok();
    }
    ssh.git_in(
        "work",
        &["commit", "-q", "--allow-empty", "-m", "agent work"],
    )
    .ok();
    let clone = ssh.ws_dir().join("work");
    World {
        ssh,
        upstream,
        _proxy: proxy,
        clone,
    }
}

impl World {
    /// `nexus-shim setup AGENT` on the workspace host.
    #[track_caller]
    fn setup(&self, agent: &str) {
        let mut cmd = self.ssh.ws.command_on_host(nexus_e2e::shim_binary());
        cmd.args(["setup", agent])
            .env("NEXUS_STATE_DIR", self.ssh.ws.state_dir())
            .env("SHELL", "/bin/bash");
        run_to_end(&mut cmd, None).ok();
    }

    /// Runs `bin ARGS` headless in the clone on the workspace host, with the
    /// environment `nexus-shim env` gives plus `envs`, capped at [`AGENT_CAP`].
    #[track_caller]
    fn run_agent(&self, bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut cmd = self.ssh.ws.command_on_host(bin);
        cmd.args(args)
            .current_dir(&self.clone)
            // OpenCode takes its directory from PWD, not from getcwd().
            .env("PWD", &self.clone)
            .env("NEXUS_STATE_DIR", self.ssh.ws.state_dir())
            .env("SSH_AUTH_SOCK", self.ssh.ws.agent_sock())
            .env("SHELL", "/bin/bash")
            .env("CI", "true")
            .envs(envs.iter().copied());
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_to_end_within(&mut cmd, None, AGENT_CAP)
        }));
        run.unwrap_or_else(|panic| {
            eprintln!("{}", self.llm_log());
            std::panic::resume_unwind(panic)
        })
    }

    /// What the LLM was asked, for a failed run: each request's path and
    /// the end of its conversation.
    fn llm_log(&self) -> String {
        let mut log = String::from("--- requests to the LLM upstream ---\n");
        for r in self.upstream.requests() {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let turns = body["messages"].as_array().or(body["input"].as_array());
            let last = turns.and_then(|t| t.last()).map(ToString::to_string);
            let last = last.unwrap_or_default();
            let cut = last.char_indices().nth(800).map_or(last.len(), |(i, _)| i);
            log.push_str(&format!("{} {}: {}\n", r.method, r.path, &last[..cut]));
        }
        log
    }

    /// Asserts everything an agent run must show (`out` is its output);
    /// a failure shows what the LLM was asked.
    #[track_caller]
    fn assert_the_run(&self, out: &Output) {
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.check(out)));
        checked.unwrap_or_else(|panic| {
            eprintln!("{}", self.llm_log());
            std::panic::resume_unwind(panic)
        });
    }

    #[track_caller]
    fn check(&self, out: &Output) {
        out.ok();
        let answer = out
            .stdout
            .lines()
            .find(|l| l.contains(FINAL_PREFIX))
            .unwrap_or_else(|| panic!("no final answer in the agent's output\n{out}"));
        for marker in MARKERS {
            assert!(
                answer.contains(marker),
                "{marker} not seen: {answer}\n{out}"
            );
        }
        self.assert_only_the_upstream_saw_the_key(out);
        // The laptop tool ran, by the laptop's audit.
        let audit = std::fs::read_to_string(self.ssh.laptop.config_dir().join("audit.jsonl"))
            .must("reading the laptop's audit log");
        assert!(
            audit
                .lines()
                .any(|l| l.contains(r#""tool":"tool","target":"hello"#)
                    && l.contains(r#""decision":"allow""#)),
            "no audited run of tool hello:\n{audit}"
        );
        // The push reached the git host, signed by the laptop's agent.
        let pushed = run_to_end(
            std::process::Command::new("git")
                .args(["-c", "safe.directory=*", "-C"])
                .arg(self.ssh.host.dir().join("repo.git"))
                .args(["rev-parse", "--verify", "refs/heads/agent"]),
            None,
        );
        pushed.ok();
        assert!(
            self.ssh.host.accepted(&self.ssh.agent.ed25519.fingerprint)
                || self.ssh.host.accepted(&self.ssh.agent.rsa.fingerprint),
            "the git host accepted no laptop key\n{}",
            self.ssh.host.log()
        );
    }

    #[track_caller]
    fn assert_only_the_upstream_saw_the_key(&self, out: &Output) {
        let seen: Vec<_> = self
            .upstream
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("/v1/"))
            .collect();
        assert!(seen.len() >= 3, "fewer than three LLM turns: {seen:?}");
        for r in &seen {
            assert_eq!(
                r.header("authorization"),
                Some(format!("Bearer {KEY}").as_bytes()),
                "{} {}",
                r.method,
                r.path
            );
            for (name, value) in &r.headers {
                let value = String::from_utf8_lossy(value);
                assert!(
                    !value.contains(PLACEHOLDER),
                    "the placeholder reached the upstream in {name}"
                );
            }
        }
        assert!(
            !out.stdout.contains(KEY) && !out.stderr.contains(KEY),
            "{out}"
        );
        for dir in [
            self.ssh.ws.home(),
            self.ssh.ws.state_dir(),
            self.ssh.ws_dir(),
        ] {
            assert_no_key_under(dir);
        }
        if let Some(pid) = self.ssh.ws.pid() {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&env).contains(KEY),
                "the shim daemon's environment holds the key"
            );
        }
    }
}

/// Fails if any regular file under `dir` holds [`KEY`].
#[track_caller]
fn assert_no_key_under(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => assert_no_key_under(&path),
            Ok(t) if t.is_file() => {
                let bytes = std::fs::read(&path).unwrap_or_default();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(KEY),
                    "{} holds the key",
                    path.display()
                );
            }
            _ => {}
        }
    }
}

#[test]
fn claude_code_answers_calls_the_laptop_and_pushes() {
    let Some(claude) = agent_bin("claude") else {
        return;
    };
    let w = world("anthropic");
    w.setup("claude-code");
    // Shell permission stays the user's choice: allow just the push.
    let out = w.run_agent(
        &claude,
        &["-p", PROMPT, "--allowedTools", "Bash(git push:*)"],
        &[],
    );
    w.assert_the_run(&out);
}

#[test]
fn codex_answers_calls_the_laptop_and_pushes() {
    let Some(codex) = agent_bin("codex") else {
        return;
    };
    let w = world("openai");
    w.setup("codex");
    // Codex's own sandbox would keep the push off the network and the
    // agent socket: the user's choice, made here.
    let out = w.run_agent(
        &codex,
        &[
            "exec",
            "--dangerously-bypass-approvals-and-sandbox",
            "--skip-git-repo-check",
            PROMPT,
        ],
        &[],
    );
    w.assert_the_run(&out);
}

#[test]
fn opencode_answers_calls_the_laptop_and_pushes() {
    let Some(opencode) = agent_bin("opencode") else {
        return;
    };
    let w = world("openai");
    w.setup("opencode");
    let out = w.run_agent(
        &opencode,
        &["run", "--model", "openai/gpt-4o", PROMPT],
        // Nothing fetched beyond the API: no update check, model list,
        // plugin or LSP download.
        &[
            ("OPENCODE_DISABLE_AUTOUPDATE", "1"),
            ("OPENCODE_DISABLE_MODELS_FETCH", "1"),
            ("OPENCODE_DISABLE_DEFAULT_PLUGINS", "1"),
            ("OPENCODE_DISABLE_LSP_DOWNLOAD", "1"),
        ],
    );
    w.assert_the_run(&out);
}
