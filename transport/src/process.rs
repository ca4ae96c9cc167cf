//! Process plumbing both daemons share: logging set-up and shutdown on
//! signals.

use tokio_util::sync::CancellationToken;

/// The most yamux may log, whatever `NEXUS_LOG` says: its trace output
/// includes frame bodies, which may hold secrets.
const YAMUX_LOG_CAP: &str = "yamux=info";

/// Logs to stderr with the filter in `NEXUS_LOG` (else `default`), colours
/// only on a terminal, at most [`crate::log_limit::LINES_PER_SECOND`] lines
/// a second.
///
/// A log line that cannot be written is dropped quietly: by default
/// tracing-subscriber reports it with `eprintln!`, which panics when stderr
/// is a closed pipe (a daemon whose ssh session or parent went away) and
/// would take down the task that logged.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NEXUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
        .add_directive(YAMUX_LOG_CAP.parse().unwrap_or_default());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::log_limit::Limited::new(std::io::stderr))
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Cancels `token` on SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn cancel_on_signals(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("signal received; finishing in-flight calls");
    token.cancel();
}

/// Which threads run a binary's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread alone (a current-thread runtime): no second
    /// thread, stack or allocator arena, and no wake-up of another thread
    /// when a task becomes ready. Blocking work still goes to the blocking
    /// pool, whose threads exit after 10 s idle.
    Current,
    /// A multi-threaded runtime with this many workers, else one per core.
    Workers(Option<usize>),
}

/// How long the runtime's threads get to end once the body is done: workers
/// drop their tasks and blocking writes finish in milliseconds; a blocking
/// read left behind never ends on its own.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a binary's async body on a runtime with `threads` and turns the
/// outcome into an exit code: the body's own code, or 1 with one line on
/// stderr (`PROGRAM: what happened`) for an error.
pub fn run_to_exit<F, E>(program: &str, threads: Threads, body: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<std::process::ExitCode, E>>,
    E: std::fmt::Display,
{
    let mut runtime = match threads {
        Threads::Current => tokio::runtime::Builder::new_current_thread(),
        Threads::Workers(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = n {
                b.worker_threads(n.max(1));
            }
            b
        }
    };
    let outcome = runtime
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|rt| {
            let outcome = rt.block_on(body).map_err(|e| format!("{e:#}"));
            // The body has finished its work (servers drain their own
            // tasks). Tasks still running are dropped all the same (their
            // guards kill child process groups): by worker threads when
            // told to stop, or on this thread for the current-thread
            // runtime. Blocking work gets `STOP_WAIT` to end (a stdout
            // write handed to a blocking thread): dropping the runtime
            // would wait for all of it, and a blocking read that cannot be
            // interrupted, such as stdin's, kept the process (and
            // `serve --stdio`'s stdout) alive until the peer closed it.
            rt.shutdown_timeout(STOP_WAIT);
            outcome
        });
    outcome.unwrap_or_else(|msg| {
        eprintln!("{program}: {msg}");
        std::process::ExitCode::from(1)
    })
}
