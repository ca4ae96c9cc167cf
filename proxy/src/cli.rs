//! Command line of `nexus-agent-proxy`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ConfigDir;
use crate::tools::ToolContext;

const AFTER_HELP: &str = "\
Getting started:
  (workspace) nexus-shim serve &  &&  nexus-shim pairing-uri
  (laptop)    nexus-agent-proxy pair 'nexus://HOST:PORT?fp=...&token=...' --name dev
  (laptop)    nexus-agent-proxy policy check ~/.config/nexus/policy.toml
  (laptop)    nexus-agent-proxy run
  (workspace) nexus-shim token get demo";

const CONNECT_HELP: &str = "\
Examples:
  nexus-agent-proxy connect ssh://dev@build.example          # ~/.ssh/config, ProxyJump, agent apply
  nexus-agent-proxy connect ssh://build.example:2222 --name build
  nexus-agent-proxy connect kubectl://team/agent-pod/main    # [NAMESPACE/]POD[/CONTAINER]
  nexus-agent-proxy connect docker://my-devcontainer --no-run
  nexus-agent-proxy connect --command 'gcloud compute ssh vm --' --name vm
  nexus-agent-proxy disconnect build --uninstall

--command CMD is run by sh -c with one more word appended, a shell command
line, which CMD must run through a shell in the workspace (as ssh HOST does).";

#[derive(Debug, clap::Args)]
struct ConnectArgs {
    /// ssh://[USER@]HOST[:PORT], kubectl://[NAMESPACE/]POD[/CONTAINER] or docker://CONTAINER.
    #[arg(required_unless_present = "command", conflicts_with = "command",
          value_parser = |s: &str| s.parse::<crate::connect::Target>().map_err(|e| format!("{e:#}")))]
    target: Option<crate::connect::Target>,
    /// Reach the workspace through CMD instead (needs --name).
    #[arg(long, value_name = "CMD", requires = "name")]
    command: Option<String>,
    /// The laptop's name for the workspace [default: the host, pod or container].
    #[arg(long)]
    name: Option<String>,
    /// Policy file or directory for the link [default: CONFIG/policy.toml, else CONFIG/policy.d/].
    #[arg(long, env = "NEXUS_POLICY", value_name = "PATH")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    baseline: crate::commands::BaselineArg,
    /// The shim to install [default: CONFIG/shims/nexus-shim-linux-ARCH, else the nexus-shim beside this program].
    #[arg(long, value_name = "PATH")]
    shim_binary: Option<PathBuf>,
    /// Set up and pair only; link later with `run`.
    #[arg(long)]
    no_run: bool,
    /// Take over a workspace paired with another laptop.
    #[arg(long)]
    replace: bool,
    #[command(flatten, next_help_heading = "Link limits (as for run)")]
    limits: crate::limits::Limits,
}

/// The laptop side of Nexus Agent Proxy: dials out to paired workspaces and
/// answers their calls from laptop credentials, as far as the policy allows.
#[derive(Debug, Parser)]
#[command(name = "nexus-agent-proxy", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Configuration directory: identity, paired workspaces, policy [default: $XDG_CONFIG_HOME/nexus or ~/.config/nexus]
    #[arg(long, global = true, env = "NEXUS_CONFIG_DIR", value_name = "DIR")]
    config_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pair with a workspace: pin its certificate and record it under NAME.
    ///
    /// URI is what `nexus-shim pairing-uri` prints in the workspace. It holds
    /// a one-time token that expires (15 minutes by default).
    ///
    /// The workspace is reached at the URI's HOST:PORT unless `--connect` or
    /// `--connect-command` says otherwise (stored with the pairing; `run`
    /// uses it from then on). The certificate pin is the same on every route.
    Pair {
        /// nexus://HOST:PORT?fp=sha256:...&token=...
        uri: String,
        /// The laptop's name for this workspace (what policy rules see).
        #[arg(long)]
        name: String,
        /// Reach the shim through an HTTP ingress or reverse proxy:
        /// wss://HOST[:PORT]/PATH (ws:// inside a trusted network).
        #[arg(long, value_name = "URL", conflicts_with = "connect_command")]
        connect: Option<String>,
        /// Reach the shim through a command's stdin/stdout, e.g.
        /// 'kubectl exec -i POD -- nexus-shim serve --stdio' or
        /// 'ssh HOST nexus-shim serve --stdio' (run by sh -c).
        #[arg(long, value_name = "CMD")]
        connect_command: Option<String>,
        /// Extra root certificate(s) (PEM) for a wss:// ingress with a private CA.
        #[arg(long, value_name = "FILE", requires = "connect")]
        ca_file: Option<PathBuf>,
    },
    /// Set up a workspace through ssh, kubectl, docker or any shell command,
    /// pair with it, and link (like `run`).
    ///
    /// Through that one channel (your own ssh config and agent, kubeconfig
    /// or docker context): checks the workspace (Linux, architecture,
    /// writable home), uploads nexus-shim into ~/.local/bin when the
    /// installed one differs (gzip, SHA-256 checked), starts its daemon (it
    /// outlives this command), pairs without copy-paste and records the
    /// route. Run again, it changes nothing. Exit codes: 0 linked (set up,
    /// with --no-run), 1 error, 2 usage, 3 refused (paired with another
    /// laptop; see --replace), 4 workspace unreachable.
    #[command(after_help = CONNECT_HELP)]
    Connect(ConnectArgs),
    /// Undo `connect`: stop the workspace's daemon and forget the workspace.
    Disconnect {
        /// Workspace name.
        name: String,
        /// Also remove the installed shim and its pairing from the workspace.
        #[arg(long)]
        uninstall: bool,
    },
    /// Link to workspaces and answer their calls until interrupted.
    ///
    /// Reconnects on its own after network loss. SIGINT/SIGTERM finish
    /// in-flight calls and exit 0.
    Run {
        /// A paired workspace to serve (repeatable) [default: every paired workspace].
        #[arg(long = "workspace", value_name = "NAME")]
        workspaces: Vec<String>,
        /// Policy file or directory [default: CONFIG/policy.toml, else CONFIG/policy.d/].
        #[arg(long, env = "NEXUS_POLICY", value_name = "PATH")]
        policy: Option<PathBuf>,
        #[command(flatten)]
        baseline: crate::commands::BaselineArg,
        #[arg(long, value_name = "DURATION", default_value = "60s",
              value_parser = crate::commands::approval_timeout_arg,
              help = format!("How long an `approve = \"prompt\"` call waits for an answer before \
                              it is denied (at most 110s): {}", nexus_protocol::units::DURATION_FORMS))]
        approval_timeout: std::time::Duration,
        /// PATH for `command` token sources (service managers start with none).
        #[arg(long, env = "NEXUS_SOURCE_PATH", value_name = "PATH")]
        source_path: Option<String>,
        /// The laptop ssh-agent to sign with (1Password, Secretive, OpenSSH) [default: $SSH_AUTH_SOCK].
        #[arg(long, value_name = "PATH")]
        ssh_agent: Option<PathBuf>,
        /// The `ssh` program brokered git runs on this laptop (`[[git.allow]]`).
        #[arg(long, env = "NEXUS_GIT_SSH", value_name = "PROGRAM",
              default_value = crate::tools::git::ssh::DEFAULT_SSH)]
        git_ssh: PathBuf,
        /// Calls per second each workspace may make of each tool, allowed or not.
        #[arg(long, env = "NEXUS_MAX_CALLS_PER_SECOND", value_name = "N",
              default_value_t = crate::tools::DEFAULT_CALLS_PER_SECOND,
              value_parser = clap::value_parser!(u32).range(1..))]
        max_calls_per_second: u32,
        /// Reach the (single) workspace through this command's stdin/stdout
        /// this time, instead of its paired route.
        #[arg(long, value_name = "CMD")]
        connect_command: Option<String>,
        /// Threads that serve the workspaces [default: one per core]. With
        /// 1, every call is decided and answered on one thread, as
        /// ssh-agent does: no hand-off between threads within a call
        /// (measured 10-100 us quicker per call on a VM, within its noise),
        /// ample for a few workspaces (about 9,000 token calls/s and 1 GB/s
        /// of files on one core), but many busy workspaces then share one
        /// core (ten flooding at once got 30% fewer calls through).
        #[arg(long, env = "NEXUS_THREADS", value_name = "N",
              value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: Option<u16>,
        #[command(flatten)]
        limits: crate::limits::Limits,
    },
    /// Manage paired workspaces.
    #[command(subcommand)]
    Workspaces(WorkspacesCommand),
    /// Check, explain and test policy files (layers, fixtures).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage values in the OS keyring (entries `nexus/NAME`).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Read and check the audit log (every decision, hash-chained).
    #[command(subcommand)]
    Audit(crate::commands::AuditCommand),
    /// Kill switch: deny every call from every workspace until `unlock` (survives restarts).
    Lock,
    /// Lift the kill switch.
    Unlock,
    /// The running proxy: workspaces and links, policy version, lock, approvals, last decisions.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Answer approval requests (`approve = "prompt"` rules): list them, or answer one.
    ///
    /// Without ID: lists the requests waiting. `approve ID` allows that one
    /// request; `--for 10m` also allows identical requests for 10 minutes;
    /// `--deny` refuses it. Unanswered requests are denied after the timeout.
    Approve(crate::commands::ApproveArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// bash: `nexus-agent-proxy completions bash > ~/.local/share/bash-completion/completions/nexus-agent-proxy`;
    /// zsh: write `_nexus-agent-proxy` into a directory on `$fpath`.
    Completions {
        /// Target shell.
        shell: nexus_transport::docs::Shell,
    },
    /// Write man pages (one per subcommand) into DIR, for packagers.
    #[command(hide = true)]
    ManPages {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum WorkspacesCommand {
    /// List paired workspaces.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Forget a workspace (its shim will refuse this laptop only after it is re-paired elsewhere).
    Remove {
        /// Workspace name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file or directory; exit 1 on errors, printed as file:line:col.
    ///
    /// With an org baseline, also names the user rules that go beyond it
    /// (they are ignored where they do).
    Check {
        /// File or directory [default: CONFIG/policy.toml, else CONFIG/policy.d/].
        path: Option<PathBuf>,
        #[command(flatten)]
        baseline: crate::commands::BaselineArg,
    },
    /// Decide one request and print the rule (file:line) that decided it; exit 0 allow, 3 deny.
    Explain(crate::commands::ExplainArgs),
    /// Run fixture files of requests and expected decisions; exit 1 on a mismatch.
    Test(crate::commands::TestArgs),
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Store a value as keyring entry nexus/NAME, from stdin or a hidden prompt.
    Set {
        /// Entry name; use it in policy as source = "keyring:nexus/NAME".
        name: String,
    },
    /// Delete keyring entry nexus/NAME.
    Delete {
        /// Entry name.
        name: String,
    },
}

/// Entry point: parse, run, map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    nexus_transport::process::init_tracing(
        if matches!(cli.command, Command::Run { .. } | Command::Connect(_)) {
            "info"
        } else {
            "warn"
        },
    );
    // The keyring must be set up while the process has a single thread: on
    // Linux, joining a session keyring changes only the calling thread's
    // credentials, and threads started later inherit them.
    if matches!(
        cli.command,
        Command::Run { .. } | Command::Connect(_) | Command::Secret(_)
    ) && let Err(e) = crate::keyring::init()
    {
        tracing::warn!(
            error = format!("{e:#}"),
            "OS keyring unavailable; keyring: token sources will fail"
        );
    }
    let asked = match &cli.command {
        Command::Run { threads, .. } => {
            let shown = threads.map_or_else(|| "one per core".to_owned(), |n| n.to_string());
            tracing::info!(threads = %shown, "runtime threads serving the workspaces (run --threads)");
            *threads
        }
        _ => None,
    };
    let threads = match asked {
        Some(1) => nexus_transport::process::Threads::Current,
        n => nexus_transport::process::Threads::Workers(n.map(usize::from)),
    };
    nexus_transport::process::run_to_exit("nexus-agent-proxy", threads, run(cli))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let config = ConfigDir::resolve(cli.config_dir)?;
    match cli.command {
        cmd @ (Command::Completions { .. } | Command::ManPages { .. }) => Ok(docs(&cmd)),
        Command::Pair {
            uri,
            name,
            connect,
            connect_command,
            ca_file,
        } => {
            if let Some(url) = &connect {
                crate::route::Route::parse(url, None)?;
            }
            let via = crate::pair::Via {
                connect,
                connect_command,
                ca_file,
            };
            let ws = crate::pair::pair(&config, &uri, &name, via).await?;
            println!(
                "paired workspace {:?} at {} ({})",
                ws.name, ws.address, ws.fingerprint
            );
            eprintln!("next: nexus-agent-proxy run --workspace {}", ws.name);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            workspaces,
            policy,
            baseline,
            approval_timeout,
            source_path,
            ssh_agent,
            git_ssh,
            max_calls_per_second,
            connect_command,
            limits,
            // Read in `main`, which builds the runtime.
            threads: _,
        } => {
            let ssh_agent =
                ssh_agent.or_else(|| std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from));
            serve(
                config,
                workspaces,
                crate::commands::PolicyArgs { policy, baseline },
                Sources {
                    approval_timeout,
                    source_path,
                    ssh_agent,
                    git_ssh,
                    max_calls_per_second,
                    connect_command,
                },
                limits,
            )
            .await
        }
        Command::Connect(args) => connect(config, args).await,
        Command::Disconnect { name, uninstall } => {
            match crate::connect::disconnect(&config, &name, uninstall).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => Ok(crate::connect::report(&e)),
            }
        }
        Command::Workspaces(WorkspacesCommand::List { json }) => {
            let list = config.workspaces()?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else if list.is_empty() {
                eprintln!(
                    "no workspaces paired; pair one with: nexus-agent-proxy pair URI --name NAME"
                );
            } else {
                for ws in list {
                    println!("{}\t{}\t{}", ws.name, ws.address, ws.fingerprint);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Workspaces(WorkspacesCommand::Remove { name }) => {
            config.remove_workspace(&name)?;
            eprintln!("removed workspace {name:?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Check { path, baseline }) => {
            crate::commands::policy_check(&config, path, &baseline)
        }
        Command::Policy(PolicyCommand::Explain(args)) => crate::commands::explain(&config, &args),
        Command::Policy(PolicyCommand::Test(args)) => crate::commands::test(&config, &args),
        Command::Audit(cmd) => crate::commands::audit(&config, &cmd).await,
        Command::Lock => crate::commands::lock(&config, true),
        Command::Unlock => crate::commands::lock(&config, false),
        Command::Status { json } => crate::commands::status(&config, json),
        Command::Approve(args) => crate::commands::approve(&config, &args),
        Command::Secret(SecretCommand::Set { name }) => {
            crate::secret::set(&name).map(|()| ExitCode::SUCCESS)
        }
        Command::Secret(SecretCommand::Delete { name }) => {
            crate::secret::delete(&name).map(|()| ExitCode::SUCCESS)
        }
    }
}

/// `connect`: validates the policy first when it will link, sets up and
/// pairs, then serves that workspace as `run --workspace NAME` would.
async fn connect(config: ConfigDir, args: ConnectArgs) -> Result<ExitCode> {
    let policy = crate::commands::PolicyArgs {
        policy: args.policy,
        baseline: args.baseline,
    };
    if !args.no_run {
        policy.load_for_run(&config)?;
    }
    let setup = crate::connect::Connect::new(
        args.target.as_ref(),
        args.command,
        args.name,
        args.shim_binary,
        args.replace,
    )?;
    let name = match crate::connect::connect(&config, &setup).await {
        Ok(name) => name,
        Err(e) => return Ok(crate::connect::report(&e)),
    };
    if args.no_run {
        eprintln!("next: nexus-agent-proxy run --workspace {name}");
        return Ok(ExitCode::SUCCESS);
    }
    let sources = Sources {
        approval_timeout: std::time::Duration::from_secs(60),
        source_path: std::env::var("NEXUS_SOURCE_PATH").ok(),
        ssh_agent: std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from),
        git_ssh: std::env::var_os("NEXUS_GIT_SSH")
            .map_or_else(|| crate::tools::git::ssh::DEFAULT_SSH.into(), PathBuf::from),
        max_calls_per_second: crate::tools::DEFAULT_CALLS_PER_SECOND,
        connect_command: None,
    };
    serve(config, vec![name], policy, sources, args.limits).await
}

/// Where answers come from, and how fast a workspace may ask.
#[derive(Debug)]
struct Sources {
    approval_timeout: std::time::Duration,
    source_path: Option<String>,
    ssh_agent: Option<PathBuf>,
    git_ssh: PathBuf,
    max_calls_per_second: u32,
    connect_command: Option<String>,
}

async fn serve(
    config: ConfigDir,
    names: Vec<String>,
    policy: crate::commands::PolicyArgs,
    sources: Sources,
    limits: crate::limits::Limits,
) -> Result<ExitCode> {
    // Validate everything before dialing anything.
    let handle = Arc::new(policy.load_for_run(&config)?);
    let workspaces = if names.is_empty() {
        config.workspaces()?
    } else {
        names
            .iter()
            .map(|n| config.workspace(n))
            .collect::<Result<Vec<_>>>()?
    };
    if workspaces.is_empty() {
        bail!("no workspaces paired; pair one first with: nexus-agent-proxy pair URI --name NAME");
    }
    let workspaces = crate::route::with_connect_command(workspaces, sources.connect_command)?;
    config
        .identity()
        .context("loading this laptop's identity")?;
    config.prepare()?;
    let control = crate::control::bind(config.root()).await?;
    let audit = crate::audit::Audit::open_with_budget(config.root(), limits.audit_max_size)
        .context("opening the audit log; refusing to run without one")?;
    let approvals = Arc::new(crate::approvals::Approvals::new(Some(
        sources.approval_timeout,
    )));
    crate::prompt::start_reader(approvals.clone());
    let ctx = Arc::new(ToolContext {
        policy: handle.clone(),
        audit,
        approvals,
        links: Default::default(),
        lock: Arc::new(crate::control::KillSwitch::new(config.root())),
        config,
        source_path: sources.source_path,
        rates: Default::default(),
        ssh_agent: sources.ssh_agent,
        git_ssh: sources.git_ssh,
        replay: Default::default(),
        http: crate::tools::http::HttpState::default(),
        fair: Arc::new(crate::fair::FairShare::for_this_machine()),
        call_rate: nexus_policy::Rate {
            count: sources.max_calls_per_second,
            per: std::time::Duration::from_secs(1),
        },
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(nexus_transport::process::cancel_on_signals(
        shutdown.clone(),
    ));
    let tasks = TaskTracker::new();
    let limits = Arc::new(limits);
    tasks.spawn(handle.watch(shutdown.clone()));
    tasks.spawn({
        let (ctx, stop) = (ctx.clone(), shutdown.clone());
        async move { ctx.lock.watch(stop).await }
    });
    tasks.spawn(crate::control::serve(
        control,
        ctx.clone(),
        shutdown.clone(),
    ));
    if ctx.locked() {
        tracing::warn!("locked: every call is denied until `nexus-agent-proxy unlock`");
    }
    for ws in workspaces {
        let span = tracing::info_span!("workspace", workspace = %ws.name);
        tasks.spawn(tracing::Instrument::instrument(
            crate::tunnel::serve_workspace(ws, ctx.clone(), limits.clone(), shutdown.clone()),
            span,
        ));
    }
    tasks.close();
    tasks.wait().await;
    // A denial still counting its twins goes to disk before we exit.
    if let Err(e) = ctx.audit.flush().await {
        tracing::error!(error = %e, "audit log");
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `completions` and `man-pages`: generated from the clap definition.
fn docs(command: &Command) -> ExitCode {
    use clap::CommandFactory;
    match command {
        Command::Completions { shell } => {
            nexus_transport::docs::run(Cli::command(), Some(*shell), None)
        }
        Command::ManPages { dir } => nexus_transport::docs::run(Cli::command(), None, Some(dir)),
        _ => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    /// `approve --for` and `run`'s duration flags read the one grammar
    /// (`500ms` .. `1d`), each within its own bound.
    #[test]
    fn duration_flags_read_the_one_grammar() {
        use clap::Parser;
        use std::time::Duration;

        use super::{Cli, Command};
        let parse = |args: &[&str]| Cli::try_parse_from([&["nexus-agent-proxy"], args].concat());
        let Ok(Cli {
            command: Command::Approve(a),
            ..
        }) = parse(&["approve", "3", "--for", "500ms"])
        else {
            panic!("approve --for 500ms refused");
        };
        assert_eq!(a.for_, Some(Duration::from_millis(500)));
        assert!(parse(&["approve", "3", "--for", "1d"]).is_ok());
        assert!(parse(&["approve", "3", "--for", "10min"]).is_ok());
        let err = parse(&["approve", "3", "--for", "2d"])
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("1ms to 1d")));
        let Ok(Cli {
            command:
                Command::Run {
                    approval_timeout,
                    limits,
                    ..
                },
            ..
        }) = parse(&[
            "run",
            "--call-timeout",
            "10min",
            "--approval-timeout",
            "500ms",
        ])
        else {
            panic!("run --call-timeout 10min refused");
        };
        assert_eq!(limits.call_timeout, Duration::from_secs(600));
        assert_eq!(approval_timeout, Duration::from_millis(500));
        assert!(parse(&["run", "--approval-timeout", "2min"]).is_err());
        let help = parse(&["approve", "--help"]).err().map(|e| e.to_string());
        let words = help.map(|h| h.split_whitespace().collect::<Vec<_>>().join(" "));
        assert!(words.is_some_and(|h| h.contains(nexus_protocol::units::DURATION_FORMS)));
    }
}
