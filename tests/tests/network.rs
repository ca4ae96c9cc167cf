//! The real network: a controllable link ([`LinkControl`]) between the real
//! proxy and the real shim (in its own network namespace when possible),
//! cut, paused and restored while calls run. Calls are counted at both ends:
//! in the workspace (each caller's exit code and pid) and on the laptop (the
//! proxy's decision lines, with the caller's pid, and a token command that
//! appends a line per run), to prove that nothing is lost and nothing is
//! applied twice.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nexus_e2e::link::LinkControl;
use nexus_e2e::{DEADLINE, Daemon, Laptop, Must, PairingUri, Workspace, poll};

/// The keepalive timeout both sides use here, short so that tests of a
/// stalled link take seconds.
const KEEPALIVE: &str = "2s";

/// One workspace behind a controllable link, paired and linked.
struct Rig {
    ws: Workspace,
    link: Arc<LinkControl>,
    /// One line per run of the token command on the laptop.
    runs: PathBuf,
    laptop: Laptop,
    proxy: Daemon,
}

/// A policy whose token `demo` runs a command that appends to `runs` (after
/// `delay`) and prints the value.
fn counting_policy(runs: &Path, delay: &str) -> String {
    format!(
        "version = 1\n\n[tokens.demo]\nsource = {{ command = [\"/bin/sh\", \"-c\", \"sleep {delay}; echo run >> '{}'; echo counted\"] }}\n",
        runs.display()
    )
}

/// Starts a workspace behind a link; the shim's keepalive is `KEEPALIVE`.
fn workspace_behind_link() -> (Workspace, Arc<LinkControl>, PairingUri) {
    let ws = Workspace::start_with_env(&[("NEXUS_KEEPALIVE_TIMEOUT", KEEPALIVE)]);
    let mut uri = PairingUri::parse(&ws.uri());
    let upstream = uri.address.parse().must("the shim's tunnel address");
    let link = LinkControl::start(upstream);
    uri.address = link.address();
    (ws, link, uri)
}

impl Rig {
    fn start(delay: &str) -> Self {
        Self::start_with(delay, "", &[], &[])
    }

    /// Like [`Rig::start`], with `more` policy (`{home}` stands for the
    /// laptop's home), more `run` flags, and `files` (name in the laptop's
    /// home, text) written before the proxy starts.
    fn start_with(delay: &str, more: &str, args: &[&str], files: &[(&str, &str)]) -> Self {
        let (ws, link, uri) = workspace_behind_link();
        let laptop = Laptop::new();
        laptop.pair(&uri.to_string(), "dev").ok();
        for (name, text) in files {
            std::fs::write(laptop.home().join(name), text).must("writing a laptop file");
        }
        let runs = laptop.home().join("runs.txt");
        let more = more.replace("{home}", &laptop.home().display().to_string());
        let policy = laptop.write_policy(&(counting_policy(&runs, delay) + &more));
        let mut flags = vec!["--keepalive-timeout", KEEPALIVE];
        flags.extend_from_slice(args);
        let flags: Vec<&std::ffi::OsStr> = flags.iter().map(std::ffi::OsStr::new).collect();
        let proxy = laptop.run_with(&ws, "dev", &policy, &[], &flags);
        Self {
            ws,
            link,
            runs,
            laptop,
            proxy,
        }
    }

    /// Starts `n` calls (each runs the token command, which takes the rig's
    /// delay, and waits up to 2 s for a link) and waits until the proxy
    /// has decided all of them, so they are being answered.
    #[track_caller]
    fn calls_being_answered(&self, n: usize) -> Vec<Call> {
        let calls: Vec<Call> = (0..n).map(|_| Call::start(&self.ws, "2s")).collect();
        let pids: Vec<u32> = calls.iter().map(Call::pid).collect();
        let decided = poll(DEADLINE, || {
            let d = decided_pids(&self.proxy.log());
            pids.iter().all(|p| d.contains_key(p)).then_some(())
        });
        assert!(decided.is_some(), "{}", self.proxy.log());
        calls
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(&self.runs)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Writes `files` (name, bytes) into the laptop's `~/files/` (which
    /// [`FILES`] allows); the path to name one of them with.
    fn laptop_files(&self, files: &[(&str, &[u8])]) -> impl Fn(&str) -> String + use<> {
        let dir = self.laptop.home().join("files");
        std::fs::create_dir_all(&dir).must("creating the laptop's files");
        for (name, data) in files {
            std::fs::write(dir.join(name), data).must("writing a laptop file");
        }
        move |name| dir.join(name).display().to_string()
    }

    /// Waits until the laptop has decided the call of caller `pid`.
    #[track_caller]
    fn wait_decided(&self, pid: u32) {
        let decided = poll(DEADLINE, || {
            decided_pids(&self.proxy.log())
                .contains_key(&pid)
                .then_some(())
        });
        assert!(decided.is_some(), "{}", self.proxy.log());
    }

    /// The laptop's audited allows of `tool`.
    fn allowed_in_audit(&self, tool: &str) -> usize {
        self.allowed_targets(tool).len()
    }

    /// The targets of the laptop's audited allows of `tool`.
    fn allowed_targets(&self, tool: &str) -> Vec<String> {
        let audit = std::fs::read_to_string(self.laptop.config_dir().join("audit.jsonl"))
            .must("reading the audit log");
        audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["tool"] == tool && v["decision"] == "allow")
            .map(|v| v["target"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits until the shim says "not linked".
    #[track_caller]
    fn wait_unlinked(&self) {
        let down = poll(DEADLINE, || {
            (self.ws.cli(["status"]).exit_code == Some(4)).then_some(())
        });
        assert!(
            down.is_some(),
            "the shim never noticed the link was gone\n--- shim log ---\n{}",
            self.ws.log()
        );
    }
}

/// A `token get demo` started in the background.
struct Call {
    child: std::process::Child,
}

impl Call {
    fn start(ws: &Workspace, wait: &str) -> Self {
        Self::start_of(ws, "demo", wait)
    }

    /// A `token get NAME`.
    fn start_of(ws: &Workspace, name: &str, wait: &str) -> Self {
        let mut cmd: Command = ws.cli_command();
        cmd.args(["token", "get", name, "--wait", wait])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Self {
            child: cmd.spawn().must("starting nexus-shim token get"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit.
    fn finish(self) -> Outcome {
        let pid = self.child.id();
        let out = self.child.wait_with_output().must("waiting for a call");
        Outcome {
            pid,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ended: Instant::now(),
        }
    }
}

#[derive(Debug)]
struct Outcome {
    pid: u32,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    ended: Instant,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.code == Some(0) && self.stdout == "counted"
    }

    /// The clear error of a call in flight when the link died.
    fn dropped_in_flight(&self) -> bool {
        self.code == Some(1) && self.stderr.contains("dropped during the call")
    }
}

/// Caller pids of the proxy's allowed token decisions, with their counts.
fn decided_pids(log: &str) -> HashMap<u32, usize> {
    let mut pids = HashMap::new();
    for line in log.lines() {
        if !line.contains("decision=\"allow\"") {
            continue;
        }
        let Some(rest) = line.split("caller_pid=").nth(1) else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(pid) = digits.parse() {
            *pids.entry(pid).or_default() += 1;
        }
    }
    pids
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Background callers: each issues `token get demo` in a loop until told to
/// stop, and keeps every outcome.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    fn start(ws: &Workspace, callers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..callers)
            .map(|_| {
                let stop = stop.clone();
                let cmd_ws = ws.cli_command();
                let (program, envs) = (
                    cmd_ws.get_program().to_owned(),
                    cmd_ws
                        .get_envs()
                        .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
                        .collect::<Vec<_>>(),
                );
                std::thread::spawn(move || {
                    let mut done = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let mut cmd = Command::new(&program);
                        for (k, v) in &envs {
                            match v {
                                Some(v) => cmd.env(k, v),
                                None => cmd.env_remove(k),
                            };
                        }
                        cmd.args(["token", "get", "demo", "--wait", "30s"])
                            .stdin(Stdio::null())
                            .stdout(Stdio::piped())
                            .stderr(Stdio::piped());
                        let child = cmd.spawn().must("starting a background call");
                        done.push(Call { child }.finish());
                    }
                    done
                })
            })
            .collect();
        Self { stop, threads }
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().ok().must("a background caller"))
            .collect()
    }
}

/// Checks the two ends against each other: every call either succeeded or
/// failed with the in-flight error; the laptop decided each caller at most
/// once; every success was decided; the token command ran once per decision.
#[track_caller]
fn assert_counts(outcomes: &[Outcome], proxy_log: &str, runs: usize) -> (usize, usize) {
    let decided = decided_pids(proxy_log);
    let twice: Vec<_> = decided.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "callers decided twice: {twice:?}");
    let mut ok = 0;
    let mut dropped = 0;
    for o in outcomes {
        if o.ok() {
            ok += 1;
            assert!(
                decided.contains_key(&o.pid),
                "call {} succeeded without a decision on the laptop",
                o.pid
            );
        } else if o.dropped_in_flight() {
            dropped += 1;
        } else {
            panic!("a call was lost (neither answered nor failed cleanly): {o:?}");
        }
    }
    let ours = outcomes
        .iter()
        .filter(|o| decided.contains_key(&o.pid))
        .count();
    assert_eq!(
        ours,
        decided.len(),
        "the laptop decided calls that no caller made"
    );
    assert_eq!(
        runs,
        decided.len(),
        "the token command ran {runs} times for {} decisions",
        decided.len()
    );
    assert!(
        runs >= ok && runs <= ok + dropped,
        "runs {runs}, ok {ok}, dropped in flight {dropped}"
    );
    (ok, dropped)
}

/// 100 cuts and restores with calls running throughout: 0 lost, 0 applied
/// twice, and a call issued during each outage completes once the link is
/// back (how soon is measured by the benchmark, not asserted).
#[test]
fn hundred_cuts_lose_nothing_and_apply_nothing_twice() {
    let mut rig = Rig::start("0");
    let load = Load::start(&rig.ws, 3);
    let mut recovery = Vec::new();
    let mut outage_calls = Vec::new();
    for _ in 0..100 {
        rig.link.cut();
        rig.wait_unlinked();
        let call = Call::start(&rig.ws, "30s");
        let restored = Instant::now();
        rig.link.restore();
        let out = call.finish();
        assert!(
            out.ok(),
            "a call issued during the outage did not complete: {out:?}\n--- shim log ---\n{}",
            rig.ws.log()
        );
        recovery.push(out.ended.duration_since(restored));
        outage_calls.push(out);
        rig.proxy.assert_running();
    }
    let mut outcomes = load.finish();
    outcomes.extend(outage_calls);
    let (ok, dropped) = assert_counts(&outcomes, &rig.proxy.log(), rig.runs());
    recovery.sort();
    eprintln!(
        "100 cuts: {} calls, {ok} answered, {dropped} failed in flight (not retried), 0 lost, 0 twice; \
         outage call done after restore: p50 {:?}, p99 {:?}, max {:?}; {} connections",
        outcomes.len(),
        percentile(&recovery, 0.5),
        percentile(&recovery, 0.99),
        recovery.last().copied().unwrap_or_default(),
        rig.link.accepted(),
    );
    assert!(ok > 100, "the background calls should mostly succeed");
}

/// Lines in the file the laptop's `count` tool appends to.
fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Red-team finding 8: a call waiting its turn for a tool when its link
/// ends leaves the queue; it never runs later into a dead stream. The tool
/// run under way fails in the workspace and is not run again.
#[test]
fn queued_calls_die_with_their_link_and_runs_are_not_repeated() {
    const TOOL: &str = "\n[tools.count]\ncommand = [\"/bin/sh\", \"-c\", \"echo run >> '{home}/tool-runs.txt'; sleep 2\"]\n";
    let mut rig = Rig::start_with("0", TOOL, &["--max-calls-per-tool", "1"], &[]);
    let tool_runs = rig.laptop.home().join("tool-runs.txt");
    let running = rig.ws.spawn_cli(["tool", "run", "count"]);
    let started = poll(DEADLINE, || (lines_of(&tool_runs) == 1).then_some(()));
    assert!(started.is_some(), "{}", rig.proxy.log());
    let queued = rig.ws.spawn_cli(["tool", "run", "count"]);
    rig.proxy
        .wait_for_log("no place free for this tool; the call waits its turn");
    rig.link.cut();
    for child in [running, queued] {
        let out = child.wait_with_output().must("a tool run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(1) && stderr.contains("dropped during the call"),
            "{out:?}"
        );
    }
    rig.proxy
        .wait_for_log("the link ended while this call waited its turn; dropped unanswered");
    rig.link.restore();
    // A call after the restore queues behind anything still waiting (FIFO):
    // once it has run, a queued call that outlived its link would have too.
    rig.ws.cli(["tool", "run", "count"]).ok();
    assert_eq!(lines_of(&tool_runs), 2, "{}", rig.proxy.log());
}

/// Issue 17: reads in flight when their link dies are sent again on the
/// next link and answered, while the laptop decides, audits and runs each
/// once (the second attempt gets the first one's answer).
#[test]
fn reads_in_flight_when_the_link_dies_are_answered_on_the_next_and_counted_once() {
    let mut rig = Rig::start("1");
    assert_reads_survive_a_cut(&mut rig, 6);
}

/// Reads answered by one reply are confirmed to the laptop with the next
/// call on the link rather than on their own streams (one frame less each
/// way), and the laptop forgets their answers then. After more such reads
/// than it keeps for one workspace (1,024), reads in flight at a cut still
/// join their first attempts: confirmations lost on the way would have
/// filled the laptop's table, and the reads would have run again.
#[test]
fn reads_confirmed_by_later_calls_leave_room_for_second_attempts() {
    use nexus_protocol::{LocalOp, LocalReply, Reply, Request};
    let quick = "\n[tokens.quick]\nsource = \"file:{home}/quick.txt\"\n";
    let flags = ["--max-calls-per-second", "1000000"];
    let mut rig = Rig::start_with("1", quick, &flags, &[("quick.txt", "q\n")]);
    for _ in 0..1100 {
        let name = "quick".to_owned();
        let mut c = ask(&rig.ws, LocalOp::Forward(Request::Token { name }));
        let reply = next_reply(&mut c);
        assert!(
            matches!(reply, Some(LocalReply::Reply(Reply::Token(_)))),
            "{reply:?}\n{}",
            rig.proxy.log()
        );
    }
    // The proxy's log drops lines past 100 a second, and decisions are
    // counted in it: once a read is logged again, the next ones will be.
    let logged = poll(DEADLINE, || {
        let probe = Call::start_of(&rig.ws, "quick", "2s").finish();
        decided_pids(&rig.proxy.log())
            .contains_key(&probe.pid)
            .then_some(())
    });
    assert!(logged.is_some(), "{}", rig.proxy.log());
    assert_reads_survive_a_cut(&mut rig, 2);
}

/// Starts `n` reads of `demo` (a 1 s token command), cuts the link while
/// the laptop runs them, restores it, and checks each was answered, and
/// decided, audited and run once.
#[track_caller]
fn assert_reads_survive_a_cut(rig: &mut Rig, n: usize) {
    let calls = rig.calls_being_answered(n);
    rig.link.cut();
    rig.wait_unlinked();
    rig.link.restore();
    let outcomes: Vec<Outcome> = calls.into_iter().map(Call::finish).collect();
    for o in &outcomes {
        assert!(
            o.ok(),
            "a read in flight at the cut was not answered: {o:?}\n--- shim ---\n{}",
            rig.ws.log()
        );
    }
    let decided = decided_pids(&rig.proxy.log());
    for o in &outcomes {
        assert_eq!(decided.get(&o.pid), Some(&1), "{}", rig.proxy.log());
    }
    assert_eq!(rig.runs(), n, "the token command ran once per read");
    let demo = rig.allowed_targets("token");
    assert_eq!(demo.iter().filter(|t| *t == "demo").count(), n);
    rig.proxy
        .wait_for_log("a read sent again after its link died got its first attempt's answer");
}

/// A policy allowing the laptop's `~/files/`.
const FILES: &str = "\n[[files.allow]]\npath = \"{home}/files/\"\nmax_size = \"100MiB\"\n";

/// The laptop's small file.
const SMALL: &[u8] = b"small file\n";

/// Waits for a `file get` of [`SMALL`], which must succeed.
#[track_caller]
fn assert_small_file(call: std::process::Child, rig: &Rig) {
    let out = call.wait_with_output().must("the file get");
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), SMALL),
        "{}\n--- shim ---\n{}\n--- proxy ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        rig.ws.log(),
        rig.proxy.log()
    );
}

/// Issue 17: a `file get` the laptop answered into a link that died before
/// the answer arrived gets that same answer on the next link: the file is
/// read, decided and audited once.
#[test]
fn a_file_get_answered_into_a_dying_link_gets_that_answer_on_the_next() {
    let mut rig = Rig::start_with("0", FILES, &[], &[]);
    let path = rig.laptop_files(&[("small", SMALL)]);
    // Calls reach the laptop; its answers wait in the link.
    rig.link.hold_toward_workspace();
    let call = rig
        .ws
        .spawn_cli(["file", "get", &path("small"), "--wait", "30s"]);
    let pid = call.id();
    rig.wait_decided(pid);
    rig.link.cut();
    rig.wait_unlinked();
    rig.link.restore();
    assert_small_file(call, &rig);
    rig.proxy
        .wait_for_log("a read sent again after its link died got its first attempt's answer");
    assert_eq!(decided_pids(&rig.proxy.log()).get(&pid), Some(&1));
    assert_eq!(rig.allowed_in_audit("file"), 1, "audited once");
}

/// Issue 17: a `file get` whose link dies before any byte of the file
/// reached its caller is sent again on the next link and answered, decided
/// once; one whose caller already had part of its file fails clearly, not
/// sent again.
#[test]
fn a_file_get_in_flight_over_a_cut_is_answered_on_the_next_link() {
    let mut rig = Rig::start_with("0", FILES, &["--max-calls-per-tool", "1"], &[]);
    // Far more than the stream window and the socket buffers hold: its
    // caller, which never reads, stalls the laptop's send, which keeps the
    // one place for files.
    let big = vec![b'x'; 16 << 20];
    let path = rig.laptop_files(&[("big", &big), ("small", SMALL)]);
    let holder = rig.ws.spawn_cli(["file", "get", &path("big")]);
    rig.wait_decided(holder.id());
    let queued = rig
        .ws
        .spawn_cli(["file", "get", &path("small"), "--wait", "30s"]);
    let queued_pid = queued.id();
    rig.proxy
        .wait_for_log("no place free for this tool; the call waits its turn");
    rig.link.cut();
    rig.proxy
        .wait_for_log("the link ended while this call waited its turn; dropped unanswered");
    rig.wait_unlinked();
    rig.link.restore();
    assert_small_file(queued, &rig);
    rig.ws.wait_for_log("sending it again on the new link");
    let out = holder.wait_with_output().must("the big file get");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("after part of its answer had arrived"),
        "{stderr}"
    );
    assert_eq!(decided_pids(&rig.proxy.log()).get(&queued_pid), Some(&1));
    assert_eq!(
        rig.allowed_in_audit("file"),
        2,
        "each file get audited once"
    );
}

/// `file get` hands the daemon its stdout (a regular file here) or its
/// `-o` file, and the daemon writes the data straight into it: every byte
/// arrives, in order, for a file of many frames whose size is no multiple
/// of a frame. Into a pipe the data comes as frames, written by the
/// command, and a reader that stops early (`| head`) ends the command with
/// the broken-pipe code, not an error or a hang.
#[test]
fn the_daemon_writes_a_file_get_into_the_caller_s_own_file() {
    let rig = Rig::start_with("0", FILES, &[], &[]);
    let big: Vec<u8> = (0..(5u32 << 20) + 123)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let path = rig.laptop_files(&[("big", &big)]);
    let out_file = rig.ws.home().join("stdout.bin");
    let status = rig
        .ws
        .command_on_host(nexus_e2e::shim_binary())
        .args(["file", "get", &path("big")])
        .env("NEXUS_STATE_DIR", rig.ws.state_dir())
        .stdout(std::fs::File::create(&out_file).must("creating the stdout file"))
        .status()
        .must("file get >FILE");
    assert!(status.success(), "{status}\n{}", rig.ws.log());
    assert!(
        std::fs::read(&out_file).must("reading stdout") == big,
        "stdout differs"
    );
    let dest = rig.ws.home().join("copy/big");
    rig.ws
        .cli([
            "file",
            "get",
            &path("big"),
            "-o",
            &dest.display().to_string(),
        ])
        .ok();
    assert!(
        std::fs::read(&dest).must("reading -o DEST") == big,
        "-o DEST differs"
    );
    let piped = rig
        .ws
        .spawn_cli(["file", "get", &path("big")])
        .wait_with_output()
        .must("file get | reader");
    assert_eq!(
        piped.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(piped.stdout == big, "piped stdout differs");
    let shim = nexus_e2e::shim_binary().display().to_string();
    let out = spawn_sh(
        &rig.ws,
        &format!(
            "{{ '{shim}' file get '{}' || echo \"rc=$?\" >&2; }} | head -c 10 >/dev/null",
            path("big")
        ),
    )
    .wait_with_output()
    .must("file get | head");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rc=141"), "{stderr}");
}

/// `run --threads 1` serves every call on one thread, files and all.
#[test]
fn the_proxy_serves_on_one_thread_when_asked() {
    let mut rig = Rig::start_with("0", FILES, &["--threads", "1"], &[]);
    rig.proxy
        .wait_for_log("runtime threads serving the workspaces (run --threads) threads=1");
    let path = rig.laptop_files(&[("small", SMALL)]);
    assert_gets_small(&rig.ws, &path("small"));
    // A token from a command source: a process spawned and waited for.
    rig.ws
        .cli(["token", "get", "demo"])
        .ok()
        .stdout_has("counted");
    assert_eq!(rig.runs(), 1);
}

/// `file get PATH`, by the CLI, answers [`SMALL`].
#[track_caller]
fn assert_gets_small(ws: &Workspace, path: &str) {
    assert_eq!(ws.cli(["file", "get", path]).ok().stdout.as_bytes(), SMALL);
}

/// Connects to the daemon's `shim.sock` and sends `request` as
/// `ForwardInto`, as a hand-written caller would.
fn ask_into(ws: &Workspace, request: nexus_protocol::Request) -> std::os::unix::net::UnixStream {
    ask(ws, nexus_protocol::LocalOp::ForwardInto(request))
}

/// Connects to the daemon's `shim.sock` and asks for `op`.
fn ask(ws: &Workspace, op: nexus_protocol::LocalOp) -> std::os::unix::net::UnixStream {
    use std::io::Write;
    let mut c = std::os::unix::net::UnixStream::connect(ws.state_dir().join("shim.sock"))
        .must("connecting to shim.sock");
    c.set_read_timeout(Some(DEADLINE)).must("a read timeout");
    let frame = nexus_protocol::encode_frame(&nexus_protocol::LocalRequest {
        wait_ms: 30_000,
        op,
    });
    c.write_all(&frame).must("sending the request");
    c
}

/// The daemon's next reply; `None` once it closed the conversation.
fn next_reply(c: &mut std::os::unix::net::UnixStream) -> Option<nexus_protocol::LocalReply> {
    use std::io::Read;
    let mut len = [0u8; 4];
    c.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    c.read_exact(&mut body).ok()?;
    nexus_protocol::decode(&body).ok()
}

/// A caller that hangs up while the daemon writes its file stops the
/// writing: the daemon finishes at most the piece under way, and the rest
/// of the file never reaches the descriptor it was given.
#[test]
fn a_caller_that_hangs_up_stops_the_daemon_writing_into_its_file() {
    use nexus_protocol::{LocalReply, Reply, Request};
    let rig = Rig::start_with("0", FILES, &[], &[]);
    let size = 96usize << 20;
    let path = rig.laptop_files(&[("big", &vec![b'y'; size])]);
    let out = rig.ws.home().join("out.bin");
    let file = std::fs::File::create(&out).must("creating the output file");
    let mut c = ask_into(&rig.ws, Request::FileGet { path: path("big") });
    assert!(matches!(
        next_reply(&mut c),
        Some(LocalReply::Reply(Reply::FileStart { .. }))
    ));
    pass_descriptors(&c, &[&file]);
    drop(file);
    let len = || std::fs::metadata(&out).map_or(0, |m| m.len());
    // Hang up once the daemon is writing.
    assert!(
        poll(DEADLINE, || (len() > 0).then_some(())).is_some(),
        "nothing written"
    );
    drop(c);
    // The daemon closes its copy once it stops: wait for that, then look.
    let holds = || {
        rig.ws
            .pid()
            .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
            .is_some_and(|fds| {
                fds.filter_map(Result::ok)
                    .any(|e| std::fs::read_link(e.path()).is_ok_and(|p| p == out))
            })
    };
    assert!(
        poll(DEADLINE, || (!holds()).then_some(())).is_some(),
        "the daemon still holds the caller's file"
    );
    let written = len();
    assert!(
        written < (size / 2) as u64,
        "{written} of {size} bytes written after the caller hung up"
    );
}

/// A caller of `ForwardInto` that does not keep to it gets nothing of the
/// file: a byte without a descriptor, two descriptors, or a pipe (whose
/// reader could hold the daemon's writer for good) end the call; a
/// descriptor that cannot be written is an error, not a crash; any request
/// but a file's is refused.
#[test]
fn a_caller_that_passes_no_writable_file_gets_none_of_it() {
    use nexus_protocol::{LocalReply, Reply, Request};
    use std::io::Write;
    let rig = Rig::start_with("0", FILES, &[], &[]);
    let path = rig.laptop_files(&[("small", SMALL)]);
    let file_get = || Request::FileGet {
        path: path("small"),
    };
    let started = |c: &mut std::os::unix::net::UnixStream| {
        assert!(matches!(
            next_reply(c),
            Some(LocalReply::Reply(Reply::FileStart { .. }))
        ));
    };

    // A plain byte where the descriptor should be: the call ends there.
    let mut c = ask_into(&rig.ws, file_get());
    started(&mut c);
    c.write_all(&[0]).must("a byte without a descriptor");
    assert!(
        next_reply(&mut c).is_none(),
        "the call went on without a descriptor"
    );

    // Two descriptors, or the write end of a pipe: refused the same way.
    let (pipe_r, pipe_w) = std::io::pipe().must("a pipe");
    let scratch = std::fs::File::create(rig.ws.home().join("scratch")).must("a scratch file");
    for fds in [
        vec![&scratch as &dyn std::os::fd::AsFd, &scratch],
        vec![&pipe_w],
    ] {
        let mut c = ask_into(&rig.ws, file_get());
        started(&mut c);
        pass_descriptors(&c, &fds);
        assert!(next_reply(&mut c).is_none(), "the call went on");
    }
    drop(pipe_r);

    // A descriptor open for reading only: writing it fails, and says so.
    let mut c = ask_into(&rig.ws, file_get());
    started(&mut c);
    let read_only = std::fs::File::open("/dev/null").must("opening /dev/null");
    pass_descriptors(&c, &[&read_only]);
    match next_reply(&mut c) {
        Some(LocalReply::Written {
            error: Some(e),
            bytes: 0,
            ..
        }) => {
            assert!(e.contains("writing the file"), "{e}");
        }
        other => panic!("a read-only descriptor: {other:?}"),
    }

    // Only files are written into the caller's descriptors.
    let mut c = ask_into(&rig.ws, Request::ToolList);
    match next_reply(&mut c) {
        Some(LocalReply::Reply(Reply::Error(e))) => {
            assert!(e.message.contains("only file get and file sync"), "{e:?}");
        }
        other => panic!("ForwardInto a tool list: {other:?}"),
    }
    // The daemon is still there for everyone else.
    assert_gets_small(&rig.ws, &path("small"));
}

/// Sends one byte carrying `fds` on `conn` (`SCM_RIGHTS`).
fn pass_descriptors(conn: &std::os::unix::net::UnixStream, fds: &[&dyn std::os::fd::AsFd]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        conn,
        &[std::io::IoSlice::new(&[0])],
        &mut control,
        SendFlags::empty(),
    )
    .must("passing descriptors");
}

/// `sh -c SCRIPT` on the workspace host with `nexus-shim env` applied (so
/// `$NEXUS_HTTP_URL` is set), started with its output piped.
fn spawn_sh(ws: &Workspace, script: &str) -> std::process::Child {
    let mut cmd = ws.command_on_host("sh");
    cmd.arg("-c")
        .arg(format!(
            "set -e; eval \"$('{}' env)\"; {script}",
            nexus_e2e::shim_binary().display()
        ))
        .env("NEXUS_STATE_DIR", ws.state_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().must("starting sh")
}

/// A `curl` through `$NEXUS_HTTP_URL` to `[http.up]`; its stdout ends with
/// the status on a line of its own.
fn spawn_curl(ws: &Workspace, args: &str, path: &str) -> std::process::Child {
    spawn_sh(
        ws,
        &format!(
            "exec curl -sS --max-time 60 -w '\\n%{{http_code}}' {args} \"$NEXUS_HTTP_URL/up{path}\""
        ),
    )
}

/// Issue 17: an API's `GET` in flight when its link dies, before its
/// response's head reached the client, is sent again on the next link and
/// gets the first attempt's answer: the upstream sees it once, the laptop
/// decides it once. A `POST` in flight fails at once with a 502 saying it
/// was not retried, and the upstream sees it once.
#[test]
fn an_http_get_in_flight_over_a_cut_is_answered_once_and_a_post_is_not_replayed() {
    let up = nexus_e2e::upstream::Upstream::start("api.test").must("starting the upstream");
    let api = format!(
        "\n[http.up]\nupstream = \"{}\"\nca_file = \"{{home}}/up-ca.pem\"\n",
        up.url()
    );
    let mut rig = Rig::start_with("0", &api, &[], &[("up-ca.pem", up.ca_pem())]);
    let get = spawn_curl(&rig.ws, "", "/held/get");
    let post = spawn_curl(&rig.ws, "-X POST --data x", "/held/post");
    let both_upstream = poll(DEADLINE, || (up.requests().len() == 2).then_some(()));
    assert!(both_upstream.is_some(), "{}", rig.proxy.log());
    rig.link.cut();
    let out = post.wait_with_output().must("the POST");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.ends_with("\n502") && stdout.contains("it was not retried (it may have effects"),
        "{stdout}"
    );
    rig.wait_unlinked();
    rig.link.restore();
    rig.ws.wait_for_log("sending it again on the new link");
    // Both upstream requests answer now, to a laptop whose link is gone:
    // the GET's answer is kept for its second attempt.
    up.release(2);
    let out = get.wait_with_output().must("the GET");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.ends_with("\n200") && stdout.contains("\"path\":\"/held/get\""),
        "{stdout}{}\n--- proxy ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        rig.proxy.log()
    );
    rig.proxy
        .wait_for_log("a read sent again after its link died got its first attempt's answer");
    let seen: Vec<String> = up.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(
        seen.len(),
        2,
        "each request reached the upstream once: {seen:?}"
    );
    assert_eq!(rig.allowed_in_audit("http"), 2);
}

/// A stalled link (bytes stop, sockets stay) is noticed by the keepalive on
/// both sides; a call made during the outage waits and completes after the
/// link is back.
#[test]
fn a_stalled_link_is_declared_dead_on_both_sides_and_calls_wait_for_the_next() {
    let mut rig = Rig::start("0");
    rig.ws
        .cli(["token", "get", "demo"])
        .ok()
        .stdout_has("counted");
    let before = rig.link.accepted();
    let paused = Instant::now();
    rig.link.pause();
    rig.wait_unlinked();
    rig.ws
        .wait_for_log("no ping from the laptop; link declared dead");
    rig.proxy.wait_for_log("link declared dead");
    eprintln!("stall noticed by the shim after {:?}", paused.elapsed());
    let call = Call::start(&rig.ws, "30s");
    let pid = call.pid();
    rig.link.restore();
    let out = call.finish();
    assert!(out.ok(), "{out:?}\n--- proxy ---\n{}", rig.proxy.log());
    assert!(rig.link.accepted() > before, "the proxy dialed again");
    assert_eq!(decided_pids(&rig.proxy.log()).get(&pid), Some(&1));
    rig.ws.cli(["status"]).ok();
}

/// A short stall (under the keepalive timeout) does not cost the link: a
/// call made during it completes on the same connection.
#[test]
fn a_short_stall_keeps_the_link() {
    let rig = Rig::start("0");
    rig.ws.cli(["token", "get", "demo"]).ok();
    let before = rig.link.accepted();
    rig.link.pause();
    let call = Call::start(&rig.ws, "30s");
    rig.link.restore();
    let out = call.finish();
    assert!(out.ok(), "{out:?}");
    assert_eq!(rig.link.accepted(), before, "no new connection was needed");
}

/// Two workspaces on one proxy: while one's link is stalled and then
/// flooded with calls, the other's calls all complete.
#[test]
fn one_workspace_stalled_or_flooded_does_not_stop_another() {
    let (a, link_a, uri_a) = workspace_behind_link();
    let (b, link_b, uri_b) = workspace_behind_link();
    let laptop = Laptop::new();
    laptop.pair(&uri_a.to_string(), "a").ok();
    laptop.pair(&uri_b.to_string(), "b").ok();
    let runs = laptop.home().join("runs.txt");
    let policy = laptop.write_policy(&counting_policy(&runs, "0"));
    let mut proxy = laptop.spawn_run_with(
        "a",
        &policy,
        &[],
        &[
            "--workspace".as_ref(),
            "b".as_ref(),
            "--keepalive-timeout".as_ref(),
            KEEPALIVE.as_ref(),
        ],
    );
    a.wait_linked(&mut proxy);
    b.wait_linked(&mut proxy);

    link_a.pause();
    let held = Call::start(&a, "30s");
    for _ in 0..10 {
        b.cli(["token", "get", "demo"]).ok().stdout_has("counted");
    }
    link_a.restore();
    assert!(held.finish().ok());

    // A flood from A: 200 callers at once, beyond A's per-tool limit.
    let flood: Vec<Call> = (0..200).map(|_| Call::start(&a, "30s")).collect();
    for _ in 0..10 {
        b.cli(["token", "get", "demo"]).ok().stdout_has("counted");
    }
    let outcomes: Vec<Outcome> = flood.into_iter().map(Call::finish).collect();
    let ok = outcomes.iter().filter(|o| o.ok()).count();
    let refused = outcomes
        .iter()
        .filter(|o| o.code == Some(3) && o.stderr.contains("too many"))
        .count();
    eprintln!("flood from a: {ok} answered, {refused} refused by a limit");
    assert_eq!(ok + refused, 200, "{outcomes:?}");
    drop(link_b);
    proxy.assert_running();
}

/// SIGTERM to the proxy while calls run: the calls already being answered
/// finish, later ones fail cleanly, and the proxy exits 0.
#[test]
fn proxy_sigterm_under_load_finishes_calls_in_flight() {
    let mut rig = Rig::start("1");
    // All eight are being answered (decided, their command sleeping).
    let calls = rig.calls_being_answered(8);
    let status = rig.proxy.terminate();
    assert!(status.success(), "proxy exit on SIGTERM: {status}");
    let outcomes: Vec<Outcome> = calls.into_iter().map(Call::finish).collect();
    for o in &outcomes {
        assert!(o.ok(), "a call in flight at SIGTERM did not finish: {o:?}");
    }
    assert_eq!(rig.runs(), 8);
    // Later calls fail cleanly: no laptop.
    rig.ws
        .cli(["token", "get", "demo", "--wait", "0"])
        .code(4)
        .stderr_has("no laptop is linked");
}

/// SIGTERM to the shim while calls run: every call ends (answered or a
/// clean error), the sockets are removed, exit 0.
#[test]
fn shim_sigterm_under_load_ends_calls_cleanly_and_removes_sockets() {
    let mut rig = Rig::start("0.5");
    let calls = rig.calls_being_answered(8);
    let status = rig.ws.terminate();
    assert!(status.success(), "shim exit on SIGTERM: {status}");
    let mut by_kind = BTreeMap::<String, usize>::new();
    for o in calls.into_iter().map(Call::finish) {
        let kind = if o.ok() {
            "answered".to_owned()
        } else {
            assert!(
                matches!(o.code, Some(1 | 4)) && !o.stderr.is_empty() && !o.stderr.contains('\n'),
                "an unclean failure: {o:?}"
            );
            format!("failed: {}", o.stderr)
        };
        *by_kind.entry(kind).or_default() += 1;
    }
    eprintln!("shim SIGTERM under load: {by_kind:?}");
    for sock in ["shim.sock", "agent.sock"] {
        assert!(
            !rig.ws.state_dir().join(sock).exists(),
            "{sock} left behind"
        );
    }
    rig.proxy.assert_running();
}

// The workspace as the attacker, on the link ------------------------------

mod hostile_link {
    use std::time::{Duration, Instant};

    use nexus_e2e::hostile::{Link, RawMux, status_kib, token_call, wait_pid_with_arg, yamux};
    use nexus_e2e::raw::{FakeConn, FakeShim, within};
    use nexus_e2e::{DEADLINE, Daemon, Laptop, Must, PairingUri, Workspace, poll};
    use nexus_protocol::{
        ClientHello, Control, ControlReply, HANDSHAKE_MAX_FRAME, Reply, SUPPORTED, Secret,
        ServerHello,
    };
    use nexus_transport::mux::{self, Mode};
    use nexus_transport::{MuxConfig, MuxHandle};
    use tokio::io::AsyncWriteExt;
    use tokio_util::sync::CancellationToken;

    const POLICY: &str = "version = 1\n\n[tokens.demo]\nsource = \"env:E2E_DEMO\"\n";

    fn demo() -> Reply {
        Reply::Token(Secret::from("v".to_owned()))
    }

    /// The real proxy serving `n` fake shims (`w0`, `w1`, ...), with `args`.
    struct Victim {
        fakes: Vec<FakeShim>,
        proxy: Daemon,
        pid: u32,
        _laptop: Laptop,
    }

    impl Victim {
        async fn start(n: usize, args: &[&str]) -> Self {
            let laptop = Laptop::new();
            let mut fakes = Vec::new();
            for i in 0..n {
                let fake = FakeShim::bind().await;
                laptop.add_workspace_record(&format!("w{i}"), fake.address(), &fake.fingerprint());
                fakes.push(fake);
            }
            let policy = laptop.write_policy(POLICY);
            let mut all: Vec<String> = (1..n)
                .flat_map(|i| ["--workspace".into(), format!("w{i}")])
                .collect();
            all.extend(args.iter().map(|a| (*a).to_owned()));
            let os: Vec<&std::ffi::OsStr> = all.iter().map(std::ffi::OsStr::new).collect();
            let proxy = laptop.spawn_run_with(
                "w0",
                &policy,
                &[("E2E_DEMO", std::ffi::OsStr::new("v"))],
                &os,
            );
            let pid = wait_pid_with_arg(&policy);
            Self {
                fakes,
                proxy,
                pid,
                _laptop: laptop,
            }
        }
    }

    /// A fake shim's link that answers the proxy's pings, like the real shim.
    struct Answering {
        mux: MuxHandle,
        stop: CancellationToken,
    }

    impl Answering {
        fn start(conn: FakeConn) -> Self {
            let stop = CancellationToken::new();
            let (mux, mut inbound, _driver) =
                mux::start(conn, Mode::Server, MuxConfig::SHIM, stop.clone());
            tokio::spawn(async move {
                while let Some(mut s) = inbound.recv().await {
                    if let Ok(Control::Ping { seq, .. }) =
                        nexus_transport::recv(&mut s, HANDSHAKE_MAX_FRAME).await
                    {
                        let _ = nexus_transport::send(&mut s, &ControlReply::Pong { seq }).await;
                        let _ = s.shutdown().await;
                    }
                }
            });
            Self { mux, stop }
        }
    }

    impl Drop for Answering {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    /// 10,000 streams opened at once, each with a partial call: yamux's
    /// limit ends that link, the proxy's memory stays bounded, it keeps
    /// running and the next link is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_streams_at_once_cost_the_link_not_the_proxy() {
        let mut v = Victim::start(1, &[]).await;
        let mut raw = RawMux::start(v.fakes[0].accept_link().await);
        // Each stream announces a 100-byte call and sends 10 bytes of it.
        let mut partial = 100u32.to_be_bytes().to_vec();
        partial.extend_from_slice(&[0x80; 10]);
        let mut sent = 0;
        for _ in 0..10_000 {
            let id = raw.next_stream();
            if !raw.send(yamux::data(yamux::SYN, id, &partial)).await {
                break;
            }
            sent += 1;
        }
        let pid = v.pid;
        let closed = poll(DEADLINE, || raw.is_closed().then_some(()));
        let rss = status_kib(pid, "VmHWM").must("the proxy's VmHWM");
        eprintln!(
            "10,000-stream flood: {sent} sent before the link {}; proxy peak RSS {} KiB",
            if closed.is_some() {
                "was dropped"
            } else {
                "stayed"
            },
            rss
        );
        assert!(rss < 200 << 10, "proxy peak RSS {rss} KiB");
        v.proxy.assert_running();
        drop(raw);
        let link = Link::start(v.fakes[0].accept_link().await, MuxConfig::SHIM);
        let reply = within(DEADLINE, link.call(&token_call("demo"))).await;
        assert_eq!(reply.must("a call on the next link"), demo());
    }

    /// Streams whose replies are never read, and streams holding half a
    /// frame (slowloris): the attacker stalls at most its own calls (up to
    /// the read timeout); another workspace on the same proxy is served at
    /// once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unread_and_half_sent_streams_do_not_stall_another_workspace() {
        let mut v = Victim::start(2, &["--max-calls-in-flight", "16"]).await;
        let bad = Link::start(v.fakes[0].accept_link().await, MuxConfig::SHIM);
        let good = Answering::start(v.fakes[1].accept_link().await);
        // 200 calls whose answers are never read.
        let mut unread = Vec::new();
        for _ in 0..200 {
            let mut s = bad.mux.open().await.must("opening a stream");
            nexus_transport::send(&mut s, &token_call("demo"))
                .await
                .must("a call");
            unread.push(s);
        }
        // 32 streams with 3 bytes of a frame header, then nothing.
        let mut half = Vec::new();
        for _ in 0..32 {
            let mut s = bad.mux.open().await.must("opening a stream");
            s.write_all(&[0, 0, 1]).await.must("half a header");
            s.flush().await.must("flushing");
            half.push(s);
        }
        let started = Instant::now();
        for _ in 0..20 {
            let mut s = good.mux.open().await.must("a stream on the good link");
            nexus_transport::send(&mut s, &token_call("demo"))
                .await
                .must("a call");
            let reply: Reply = within(DEADLINE, nexus_transport::recv(&mut s, 1 << 20))
                .await
                .must("the good workspace's answer");
            assert_eq!(reply, demo());
        }
        eprintln!(
            "20 calls of the other workspace during the attack: {:?}",
            started.elapsed()
        );
        // The attacker's own link survives and, once the half-sent streams
        // time out, is served again.
        let reply = within(Duration::from_secs(30), bad.call(&token_call("demo"))).await;
        assert_eq!(reply.must("the attacker's next call"), demo());
        v.proxy.assert_running();
        drop((unread, half));
    }

    /// A shim that answers pings but never makes a call keeps its link: the
    /// keepalive judges the link, not the traffic.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shim_that_only_answers_pings_keeps_its_link() {
        let mut v = Victim::start(1, &["--keepalive-timeout", "1s"]).await;
        let link = Answering::start(v.fakes[0].accept_link().await);
        // Four keepalive timeouts pass with nothing but pings.
        let until = Instant::now() + Duration::from_secs(4);
        let survived = poll(DEADLINE, || (Instant::now() >= until).then_some(()));
        assert!(survived.is_some());
        assert!(
            !link.mux.is_closed(),
            "the proxy dropped an idle, answering link"
        );
        assert!(
            !v.proxy.log().contains("declared dead"),
            "{}",
            v.proxy.log()
        );
        v.proxy.assert_running();
    }

    /// A shim that stops reading (TLS up, then silence) is declared dead
    /// within the keepalive timeout, and the proxy dials again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shim_that_stops_reading_is_declared_dead_and_redialed() {
        let mut v = Victim::start(1, &["--keepalive-timeout", "1s"]).await;
        let silent = v.fakes[0].accept_link().await;
        let since = Instant::now();
        v.proxy.wait_for_log("link declared dead");
        let noticed = since.elapsed();
        let next = Answering::start(v.fakes[0].accept_link().await);
        eprintln!("a silent shim was declared dead after {noticed:?} and redialed");
        assert!(!next.mux.is_closed());
        drop(silent);
        v.proxy.assert_running();
    }

    /// A storm of connections from an unpaired client (fresh certificates,
    /// wrong or no token) while the paired laptop's calls run: every one is
    /// refused, the paired link is never replaced, calls keep completing.
    #[test]
    fn a_reconnect_storm_from_an_unpaired_client_leaves_the_paired_link_alone() {
        let ws = Workspace::start();
        let uri = PairingUri::parse(&ws.uri());
        let laptop = Laptop::new();
        laptop.pair(&uri.to_string(), "dev").ok();
        let policy = laptop.write_policy(POLICY);
        let _proxy = laptop.run(&ws, "dev", &policy, &[("E2E_DEMO", "v")]);
        let storm = {
            let (address, fp) = (uri.address.clone(), uri.fingerprint.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().must("a runtime");
                let dir = tempfile::tempdir().must("a temp dir");
                let (identity, _) =
                    nexus_transport::Identity::load_or_create(dir.path(), "nexus-agent-proxy")
                        .must("the stranger's identity");
                let pin = fp.parse().must("the shim's fingerprint");
                let (config, _) =
                    nexus_transport::tls::client_config(&identity, pin).must("client config");
                let mut refused = 0;
                for i in 0..300 {
                    let hello = ClientHello {
                        versions: SUPPORTED,
                        pairing_token: (i % 2 == 0).then(|| Secret::from("guess".to_owned())),
                        software: "storm".into(),
                    };
                    let attempt = async {
                        let tcp = tokio::net::TcpStream::connect(&address).await.ok()?;
                        let mut tls =
                            nexus_transport::tokio_rustls::TlsConnector::from(config.clone())
                                .connect(nexus_transport::tls::server_name(), tcp)
                                .await
                                .ok()?;
                        nexus_transport::send(&mut tls, &hello).await.ok()?;
                        nexus_transport::recv::<_, ServerHello>(&mut tls, HANDSHAKE_MAX_FRAME)
                            .await
                            .ok()
                    };
                    let answer =
                        rt.block_on(async { tokio::time::timeout(DEADLINE, attempt).await });
                    // Refused in TLS (no answer) or by a hello: never accepted.
                    if !matches!(answer, Ok(Some(ServerHello::Accepted { .. }))) {
                        refused += 1;
                    }
                }
                refused
            })
        };
        let mut calls = 0;
        while !storm.is_finished() {
            ws.cli(["token", "get", "demo"]).ok().stdout_has("v");
            calls += 1;
        }
        let refused = storm.join().ok().must("the storm thread");
        eprintln!("unpaired storm: {refused} of 300 hellos refused; {calls} calls meanwhile");
        assert_eq!(refused, 300);
        assert!(
            !ws.log().contains("replaces the previous one"),
            "an unpaired client replaced the link\n{}",
            ws.log()
        );
        ws.cli(["token", "get", "demo"]).ok();
    }
}
