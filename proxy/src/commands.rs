//! The policy, audit, lock, status and approve commands of `nexus-agent-proxy`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use nexus_policy::explain::{FixturePaths, Probe, parse_arg, run_fixtures};
use nexus_policy::{PolicySet, Verdict};

use crate::approvals::{Answer, PendingView};
use crate::config::ConfigDir;
use crate::control::{ControlRequest, Status, lock_path};
use crate::reload::{PolicyHandle, PolicyPaths};
use nexus_protocol::units::{DURATION_FORMS, parse_duration};

/// Where the org baseline lives when nothing says otherwise.
pub const DEFAULT_BASELINE: &str = "/etc/nexus/policy.d";

/// Exit code of a denied `policy explain` (the shim's "denied" code).
const EXIT_DENIED: u8 = 3;

/// `--baseline DIR`.
#[derive(Debug, Clone, Args)]
pub struct BaselineArg {
    /// Org baseline (a ceiling over the user's policy): file or directory
    /// [default: /etc/nexus/policy.d when it exists].
    #[arg(
        long = "baseline",
        id = "baseline",
        env = "NEXUS_POLICY_BASELINE",
        value_name = "DIR"
    )]
    pub path: Option<PathBuf>,
}

impl BaselineArg {
    /// The baseline to load: the one given (which must then exist), else the
    /// default directory if it exists, else none.
    ///
    /// # Errors
    /// A baseline given but missing: running without it would loosen.
    pub fn resolve(&self) -> Result<Option<PathBuf>> {
        match &self.path {
            Some(p) if p.as_os_str().is_empty() => Ok(None),
            Some(p) if !p.exists() => bail!(
                "the org baseline {} does not exist; fix --baseline / NEXUS_POLICY_BASELINE \
                 (an empty value means no baseline)",
                p.display()
            ),
            Some(p) => Ok(Some(p.clone())),
            None => {
                let d = PathBuf::from(DEFAULT_BASELINE);
                Ok(d.exists().then_some(d))
            }
        }
    }
}

/// `--policy` and `--baseline` of `run`.
#[derive(Debug, Clone)]
pub struct PolicyArgs {
    /// The user's policy (flag or env).
    pub policy: Option<PathBuf>,
    /// The baseline.
    pub baseline: BaselineArg,
}

/// The user's policy: the flag, else CONFIG/policy.toml, else CONFIG/policy.d/.
fn user_policy(config: &ConfigDir, flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| config.default_policy())
}

impl PolicyArgs {
    /// Loads both layers for `run`; a broken one refuses to start.
    ///
    /// # Errors
    /// Every mistake, `file:line:col`, and that `run` refuses to start.
    pub fn load_for_run(&self, config: &ConfigDir) -> Result<PolicyHandle> {
        let paths = PolicyPaths {
            user: user_policy(config, self.policy.clone()),
            baseline: self.baseline.resolve()?,
        };
        if paths.user.is_none() {
            tracing::warn!(
                "no policy at {}/policy.toml or policy.d/: every call will be denied",
                config.root().display()
            );
        }
        let set = PolicySet::load(paths.user.as_deref(), paths.baseline.as_deref())
            .map_err(|e| anyhow::anyhow!("{e}\nrefusing to start with a broken {}", e.layer))?;
        for w in set.warnings() {
            tracing::warn!(warning = %w, "policy");
        }
        tracing::info!(
            policy = ?paths.user.as_ref().map(|p| p.display().to_string()),
            baseline = ?paths.baseline.as_ref().map(|p| p.display().to_string()),
            digest = %set.digest(),
            tokens = set.user().token_names().len(),
            "policy loaded"
        );
        Ok(PolicyHandle::new(set, paths))
    }
}

/// `run --approval-timeout`: more than 0 and at most 110 s, since the
/// workspace gives up on a call after 120 s.
///
/// # Errors
/// A message with the accepted forms and the bound.
pub fn approval_timeout_arg(text: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(110);
    match parse_duration(text)? {
        d if d.is_zero() || d > MAX => Err(format!(
            "{text}: an approval may wait 1ms to 110s (the workspace gives up on a call after 120s)"
        )),
        d => Ok(d),
    }
}

/// `policy check`.
///
/// # Errors
/// When there is no policy to check, or the baseline flag is wrong.
pub fn policy_check(
    config: &ConfigDir,
    path: Option<PathBuf>,
    baseline: &BaselineArg,
) -> Result<ExitCode> {
    let Some(path) = user_policy(config, path) else {
        bail!(
            "no policy to check: none given and none at {}/policy.toml or policy.d/",
            config.root().display()
        );
    };
    let baseline = baseline.resolve()?;
    match PolicySet::load(Some(&path), baseline.as_deref()) {
        Ok(set) => {
            for w in set.warnings() {
                eprintln!("warning: {w}");
            }
            let sections = set.workspace_sections();
            let mut extra = String::new();
            if !sections.is_empty() {
                extra.push_str(&format!(", workspace sections: {}", sections.join(", ")));
            }
            if let Some(b) = &baseline {
                extra.push_str(&format!(", under the org baseline {}", b.display()));
            }
            println!(
                "{}: ok, {} token(s) declared{extra}",
                path.display(),
                set.user().token_names().len(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            for d in &e.errors.0 {
                eprintln!("{d}");
            }
            let which = match e.layer {
                nexus_policy::Layer::Baseline => "the org baseline",
                _ => "the policy",
            };
            eprintln!(
                "{}: {} error(s) in {which}; nothing was changed",
                path.display(),
                e.errors.0.len()
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// `policy explain`.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// The workspace's pairing name (what `[workspace."NAME"]` sections match).
    #[arg(long)]
    pub workspace: String,
    /// token | ssh | git-credential | file | tool | http | git (or the
    /// section names tokens, files, tools)
    #[arg(long)]
    pub tool: String,
    /// KEY=VALUE (repeatable). token: name=NAME. ssh: host=HOST user=USER
    /// [key=SHA256:...] [forwarding=true]; op=sshsig namespace=NS [key=...];
    /// op=identity key=...; op=hop host=HOST. git-credential: protocol=https
    /// host=HOST [path=PATH] [username=U] [action=get|store|erase]. file:
    /// path=PATH, or set=NAME. tool: name=NAME [args=ARG]... (one per
    /// argument, in order). http: name=API [method=GET] [path=/v1/...].
    /// git: host=HOST repo=REPO [op=fetch], or op=push ref=BRANCH...
    /// [delete=true].
    #[arg(long = "arg", value_name = "KEY=VALUE", value_parser = parse_arg)]
    pub args: Vec<(String, String)>,
    /// Policy file or directory [default: CONFIG/policy.toml, else CONFIG/policy.d/].
    #[arg(long, env = "NEXUS_POLICY", value_name = "PATH")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub baseline: BaselineArg,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `policy explain`: exit 0 allow, 3 deny.
///
/// # Errors
/// A broken policy or a malformed probe.
pub fn explain(config: &ConfigDir, args: &ExplainArgs) -> Result<ExitCode> {
    let user = user_policy(config, args.policy.clone());
    let baseline = args.baseline.resolve()?;
    let set = PolicySet::load(user.as_deref(), baseline.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}\nthe {} does not load; fix it first", e.layer))?;
    let probe = Probe {
        workspace: args.workspace.clone(),
        tool: args.tool.clone(),
        args: args.args.clone(),
    };
    let outcome = probe.decide(&set).map_err(|e| anyhow::anyhow!("{e}"))?;
    let allowed = outcome.verdict == Verdict::Allow;
    let rule = outcome
        .rule
        .as_ref()
        .map_or_else(|| "default".to_owned(), ToString::to_string);
    let decision = nexus_policy::explain::Expect::of(&outcome).to_string();
    if args.json {
        let layers: Vec<_> = outcome
            .trace
            .iter()
            .map(|t| {
                serde_json::json!({
                    "layer": t.layer.as_str(),
                    "binding": t.binding,
                    "decision": if t.decision.verdict == Verdict::Allow { "allow" } else { "deny" },
                    "rule": t.decision.rule.as_ref().map(ToString::to_string),
                    "reason": t.decision.reason,
                })
            })
            .collect();
        let limits: Vec<_> = outcome
            .limits
            .iter()
            .map(|l| serde_json::json!({ "rate": l.rate.to_string(), "rule": l.rule.to_string() }))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "decision": decision,
                "rule": outcome.rule.as_ref().map(ToString::to_string),
                "reason": outcome.reason,
                "approve": outcome.approve.as_ref().map(ToString::to_string),
                "limits": limits,
                "layers": layers,
                "policy": set.digest(),
            })
        );
    } else {
        println!("{decision} by {rule}: {}", outcome.reason);
        for l in &outcome.limits {
            println!("  limit {} ({})", l.rate, l.rule);
        }
        if let Some(a) = &outcome.approve {
            println!("  asks the laptop user first ({a})");
        }
        if outcome.trace.len() > 1 {
            for t in &outcome.trace {
                let v = if t.decision.verdict == Verdict::Allow {
                    "allow"
                } else {
                    "deny"
                };
                let binding = if t.binding {
                    ""
                } else {
                    " (no say: no allow rules for this tool)"
                };
                println!("  {}: {v}{binding}: {}", t.layer, t.decision.reason);
            }
        }
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DENIED)
    })
}

/// `policy test`.
#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// A fixture file, or a directory of them (`*.toml`).
    pub path: PathBuf,
    /// Policy to test [default: each fixture's `policy` key, else CONFIG/policy.toml or policy.d/].
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Org baseline to test under [default: each fixture's `baseline` key, else none].
    #[arg(long = "baseline", env = "NEXUS_POLICY_BASELINE", value_name = "DIR")]
    pub baseline: Option<PathBuf>,
}

/// `policy test`: exit 0 when every case passes, 1 otherwise.
///
/// # Errors
/// When the fixtures cannot be read at all.
pub fn test(config: &ConfigDir, args: &TestArgs) -> Result<ExitCode> {
    let paths = FixturePaths {
        policy_flag: args.policy.clone(),
        policy_default: config.default_policy(),
        baseline_flag: args.baseline.clone().filter(|p| !p.as_os_str().is_empty()),
        // Fixtures are for CI: the same result on every machine, so the
        // machine's own /etc/nexus/policy.d applies only when named.
        baseline_default: None,
    };
    let reports = run_fixtures(&args.path, &paths).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut passed, mut failed) = (0, 0);
    for r in &reports {
        if let Some(e) = &r.error {
            failed += 1;
            println!("FAIL {}: {e}", r.file.display());
        }
        for (label, diffs) in &r.cases {
            if diffs.is_empty() {
                passed += 1;
            } else {
                failed += 1;
                println!("FAIL {} {label}", r.file.display());
                for d in diffs {
                    println!("     {d}");
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `audit ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Print the last decisions; `-f` keeps printing new ones.
    Tail {
        /// How many lines.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Follow the log.
        #[arg(short, long)]
        follow: bool,
        /// One JSON object per line, as stored.
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain; exit 1 naming the first changed, removed,
    /// reordered or truncated line.
    Verify,
}

/// `audit tail` and `audit verify`.
///
/// # Errors
/// When the log cannot be read.
pub async fn audit(config: &ConfigDir, cmd: &AuditCommand) -> Result<ExitCode> {
    match cmd {
        AuditCommand::Verify => match crate::audit::verify(config.root()) {
            Ok(v) => {
                let rotated = if v.rotated_out > 0 {
                    format!(
                        "; {} older entries were rotated out to keep the log within its budget",
                        v.rotated_out
                    )
                } else {
                    String::new()
                };
                println!(
                    "{}: intact, {} entries in {} segment(s), head matches{rotated}",
                    crate::audit::log_path(config.root()).display(),
                    v.entries,
                    v.segments
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(Ok(tampered)) => {
                eprintln!(
                    "{}: {tampered}",
                    crate::audit::log_path(config.root()).display()
                );
                Ok(ExitCode::from(1))
            }
            Err(Err(e)) => Err(e).context("reading the audit log"),
        },
        AuditCommand::Tail {
            lines,
            follow,
            json,
        } => {
            let path = crate::audit::log_path(config.root());
            let (all, mut offset) = crate::audit::read_lines(&path, 0)?;
            let print = |items: &[crate::audit::Line]| -> Result<()> {
                let mut out = std::io::stdout().lock();
                for l in items {
                    if *json {
                        let line =
                            crate::audit::to_json_line(&l.entry).map_err(anyhow::Error::msg)?;
                        writeln!(out, "{line}")?;
                    } else {
                        writeln!(out, "{}", crate::audit::describe(&l.entry))?;
                    }
                }
                out.flush()?;
                Ok(())
            };
            print(&all[all.len().saturating_sub(*lines)..])?;
            if *follow {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let (new, next) = crate::audit::read_lines(&path, offset)?;
                    offset = next;
                    print(&new)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `lock` / `unlock`.
///
/// # Errors
/// When the lock file cannot be written or removed.
pub fn lock(config: &ConfigDir, on: bool) -> Result<ExitCode> {
    config.prepare()?;
    let path = lock_path(config.root());
    if on {
        nexus_transport::write_private(
            &path,
            format!("{}\n", crate::reload::now_secs()).as_bytes(),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        let _ = crate::control::request(config.root(), &ControlRequest::Locked);
        println!(
            "locked: every call from every workspace is denied until `nexus-agent-proxy unlock`"
        );
    } else {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("not locked");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        let _ = crate::control::request(config.root(), &ControlRequest::Unlocked);
        println!("unlocked");
    }
    Ok(ExitCode::SUCCESS)
}

/// `status`: exit 0 with a running proxy, 1 without.
///
/// # Errors
/// Output errors only.
pub fn status(config: &ConfigDir, json: bool) -> Result<ExitCode> {
    let locked = crate::control::is_locked(config.root());
    let value = match crate::control::request(config.root(), &ControlRequest::Status) {
        Ok(v) => v,
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "running": false, "locked": locked })
                );
            } else {
                println!("no proxy running{}", if locked { "; LOCKED" } else { "" });
                eprintln!("{e:#}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    if json {
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    let s: Status = serde_json::from_value(value).context("reading the proxy's status")?;
    let now = crate::reload::now_secs();
    println!(
        "proxy running{}",
        if s.locked {
            "; LOCKED (nexus-agent-proxy unlock)"
        } else {
            ""
        }
    );
    println!(
        "policy {} loaded {}s ago ({} reloads){}{}",
        if s.policy.digest.is_empty() {
            "(none)"
        } else {
            &s.policy.digest
        },
        now.saturating_sub(s.policy.loaded_at),
        s.policy.reloads,
        s.policy
            .user
            .as_ref()
            .map(|u| format!(", {u}"))
            .unwrap_or_default(),
        s.policy
            .baseline
            .as_ref()
            .map(|b| format!(", baseline {b}"))
            .unwrap_or_default(),
    );
    if let Some(e) = &s.policy.last_error {
        println!("last reload FAILED (the previous policy stays in force):\n{e}");
    }
    for w in &s.workspaces {
        let state = if w.linked { "linked" } else { "not linked" };
        let setup = w
            .setup_ms
            .map(|m| format!(", link set up in {m} ms"))
            .unwrap_or_default();
        let idle = w
            .idle_s
            .map(|i| format!(", last call {i}s ago"))
            .unwrap_or_default();
        println!(
            "workspace {}: {state} for {}s{setup}, {} calls{idle}",
            w.name,
            now.saturating_sub(w.since),
            w.calls
        );
    }
    for p in &s.pending {
        println!("approval waiting: {}", pending_line(p));
    }
    if !s.recent.is_empty() {
        println!("last decisions:");
        for e in &s.recent {
            println!("  {}", crate::audit::describe(e));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `approve`.
#[derive(Debug, Clone, Args)]
pub struct ApproveArgs {
    /// The request to answer (see the list without ID).
    pub id: Option<u64>,
    #[arg(long = "for", value_name = "DURATION", value_parser = crate::approvals::grant_span,
          conflicts_with = "deny",
          help = format!("Also allow identical requests for this long, at most 1d: {DURATION_FORMS}"))]
    pub for_: Option<Duration>,
    /// Refuse the request.
    #[arg(long)]
    pub deny: bool,
    /// Machine-readable list.
    #[arg(long)]
    pub json: bool,
}

fn pending_line(p: &PendingView) -> String {
    let clip = crate::tools::clip;
    let caller = crate::approvals::caller_text(p.caller_pid, p.caller_exe.as_deref());
    format!(
        "{}  workspace {}  {}: {}  [caller {caller}, rule {}, hash {}, {}s left]",
        p.id,
        clip(&p.workspace),
        p.tool,
        crate::approvals::shown_summary(&p.summary),
        clip(&p.rule),
        p.hash,
        p.expires_in
    )
}

/// `approve [ID [--for D | --deny]]`.
///
/// # Errors
/// No running proxy, or no such request.
pub fn approve(config: &ConfigDir, args: &ApproveArgs) -> Result<ExitCode> {
    let Some(id) = args.id else {
        if args.deny || args.for_.is_some() {
            bail!("name the request to answer: nexus-agent-proxy approve ID [--for 10m | --deny]");
        }
        let list: Vec<PendingView> = serde_json::from_value(crate::control::request(
            config.root(),
            &ControlRequest::Pending,
        )?)?;
        if args.json {
            println!("{}", serde_json::to_string(&list)?);
        } else if list.is_empty() {
            println!("no request waits for approval");
        } else {
            for p in &list {
                println!("{}", pending_line(p));
            }
            eprintln!("answer with: nexus-agent-proxy approve ID [--for 10m] | --deny");
        }
        return Ok(ExitCode::SUCCESS);
    };
    let answer = Answer {
        allow: !args.deny,
        for_ms: args
            .for_
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let view: PendingView = serde_json::from_value(crate::control::request(
        config.root(),
        &ControlRequest::Answer { id, answer },
    )?)?;
    let what = if answer.allow { "allowed" } else { "denied" };
    let span = args
        .for_
        .map(|d| format!(", and identical requests for {}s", d.as_secs()))
        .unwrap_or_default();
    println!("{what} {}{span}", pending_line(&view));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `approve` and `status` list a pending request with every argument
    /// the approval covers, not the first 128 characters of it.
    #[test]
    fn pending_line_shows_the_whole_request() {
        let view = PendingView {
            id: 7,
            workspace: "dev".into(),
            tool: "tool".into(),
            summary: format!(
                "deploy [\"{}\", \"--env\", \"production\"]",
                "x".repeat(150)
            ),
            hash: "h".into(),
            rule: "r".into(),
            caller_pid: None,
            caller_exe: None,
            expires_in: 30,
        };
        let line = pending_line(&view);
        assert!(line.contains(r#"\"production\"]"#), "{line}");
    }
}
