//! End to end: git brokered by the laptop over HTTPS (issue 16). A real
//! `git http-backend` behind HTTPS with basic auth (a test CA the rule's
//! `ca_file` names), the laptop's real `git credential fill` with a `store`
//! helper holding two accounts for the host, and the workspace's real git
//! pointed at `$NEXUS_HTTP_URL/_git/HOST/` by `nexus-shim env`.

use nexus_e2e::githttp::{GitHttp, workspace_sh, workspace_sh_command};
use nexus_e2e::{Daemon, Laptop, Must, Output, Workspace, paired};

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-laptop-password";
/// Another account for the same host in the laptop's store, listed first.
const OTHER_USER: &str = "bob-admin";
const OTHER_PASSWORD: &str = "other-account-password";

struct World {
    ws: Workspace,
    _laptop: Laptop,
    proxy: Daemon,
    git: GitHttp,
}

impl World {
    /// Everything the test knows, for a failure message.
    fn logs(&self) -> String {
        format!(
            "--- proxy ---\n{}\n--- shim ---\n{}\n--- git server ---\n{}\n{}",
            self.proxy.log(),
            self.ws.log(),
            self.git.requests(),
            self.git.log()
        )
    }

    /// A shell script on the workspace host after `eval "$(nexus-shim env)"`.
    #[track_caller]
    fn sh(&self, script: &str) -> Output {
        workspace_sh(&self.ws, script)
    }

    /// `git clone https://HOST/acme/repo.git repo` in the workspace's home,
    /// then `script` inside it.
    #[track_caller]
    fn in_clone(&self, script: &str) -> Output {
        let url = self.git.https_url("acme/repo.git");
        self.sh(&format!(
            "cd \"$HOME\"; rm -rf repo; git clone -q {url} repo; cd repo; {script}"
        ))
    }
}

/// A paired workspace, the HTTPS git server, the laptop's store with both
/// accounts, and a policy of `[[git.allow]]` for `acme/*` plus `rules`
/// (where `{host}` is the server's `HOST:PORT`, `{ca}` its CA file).
#[track_caller]
fn world(rule_extra: &str) -> World {
    let (ws, laptop) = paired();
    let git = GitHttp::start_https(&ws, USER, PASSWORD);
    let ca = laptop.home().join("git-ca.pem");
    std::fs::write(&ca, git.ca_pem().must("an HTTPS server has a CA")).must("writing the CA");
    std::fs::write(
        laptop.home().join(".gitconfig"),
        "[credential]\n\thelper = store\n",
    )
    .must("writing the laptop's .gitconfig");
    std::fs::write(
        laptop.home().join(".git-credentials"),
        format!(
            "https://{OTHER_USER}:{OTHER_PASSWORD}@{host}\nhttps://{USER}:{PASSWORD}@{host}\n",
            host = git.host()
        ),
    )
    .must("writing the laptop's .git-credentials");
    let policy = laptop.write_policy(&format!(
        "[[git.allow]]\nhost = \"{}\"\nrepo = \"acme/*\"\npush = [\"agent/*\"]\nusername = \"{USER}\"\n\
         ca_file = \"{}\"\n{rule_extra}",
        git.host(),
        ca.display()
    )
    .replace("{host}", git.host())
    .replace("{ca}", &ca.display().to_string()));
    let proxy = laptop.run(&ws, "dev", &policy, &[]);
    World {
        ws,
        _laptop: laptop,
        proxy,
        git,
    }
}

#[test]
fn clone_fetch_and_an_allowed_push_go_through_the_laptop() {
    let w = world("");
    let out = w.in_clone(
        "git fetch -q origin; echo change > file; head -c 3000000 /dev/urandom > big; \
         git add file big; git commit -q -m from-the-workspace; git push -q origin HEAD:agent/x; \
         git config remote.origin.url",
    );
    assert_eq!(out.exit_code, Some(0), "{out}\n{}", w.logs());
    // The workspace's git names the real host; `env` sends it to the shim.
    assert!(
        out.stdout.contains(&w.git.https_url("acme/repo.git")),
        "{out}"
    );
    let refs = w.git.refs("acme/repo.git");
    assert!(refs.contains("refs/heads/agent/x"), "{refs}");
    let requests = w.git.requests();
    assert!(
        requests.contains("POST /acme/repo.git/git-receive-pack auth=ok"),
        "{requests}"
    );
    assert!(!requests.contains("auth=no"), "{requests}");
}

/// Pushes to `main`, a delete, a push mixing an allowed and a refused ref,
/// and a repository outside the glob: each refused in git's own output
/// naming the ref and the rule, and the server's refs unchanged.
#[test]
fn refused_pushes_name_the_ref_and_rule_and_change_nothing() {
    let w = world("");
    let setup = w.in_clone(
        "echo a > f; git add f; git commit -q -m one; git push -q origin HEAD:agent/keep",
    );
    assert_eq!(setup.exit_code, Some(0), "{setup}\n{}", w.logs());
    let before = w.git.refs("acme/repo.git");
    let other = w.git.refs("other/repo.git");

    let cases = [
        // Over http.postBuffer: git probes first, then streams the pack
        // while the laptop refuses.
        (
            "push to main",
            "head -c 3000000 /dev/urandom > big; git add big; git commit -qm big; \
             git push origin HEAD:main",
            "refs/heads/main",
        ),
        ("delete", "git push origin :agent/keep", "delete = true"),
        (
            "mixed",
            "git push origin HEAD:agent/new HEAD:main",
            "refused with the rest",
        ),
    ];
    for (what, push, needle) in cases {
        let out = w.in_clone(&format!(
            "echo {what} > f; git add f; git commit -qm '{what}'; {push}"
        ));
        assert_ne!(out.exit_code, Some(0), "{what}: {out}");
        assert!(out.stderr.contains("[remote rejected]"), "{what}: {out}");
        assert!(out.stderr.contains(needle), "{what}: {out}");
        assert!(
            out.stderr.contains("[[git.allow]]") || what == "mixed",
            "{what}: {out}"
        );
        assert_eq!(
            w.git.refs("acme/repo.git"),
            before,
            "{what} changed the server's refs"
        );
    }
    let outside = w.in_clone(&format!(
        "git push {} HEAD:agent/x",
        w.git.https_url("other/repo.git")
    ));
    assert_ne!(outside.exit_code, Some(0), "{outside}");
    assert!(outside.stderr.contains("remote: nexus:"), "{outside}");
    assert!(
        outside.stderr.contains("no [[git.allow]] rule matches"),
        "{outside}"
    );
    assert_eq!(w.git.refs("other/repo.git"), other);
    // Nothing of a refused push reached the server: the one push it saw
    // is the setup's.
    let requests = w.git.requests();
    assert_eq!(
        requests
            .matches("POST /acme/repo.git/git-receive-pack")
            .count(),
        1,
        "{requests}"
    );
}

/// The workspace never holds either account's password: not in its
/// environment, files, processes' environments or git config; and the
/// rule's `username` picks the account although another is listed first.
#[test]
fn no_credential_reaches_the_workspace() {
    let w = world("");
    let out = w.in_clone(
        "git config --list --show-origin; env; \
         cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; \
         grep -r . \"$HOME\" 2>/dev/null | head -c 10000000",
    );
    assert_eq!(out.exit_code, Some(0), "{out}\n{}", w.logs());
    for secret in [PASSWORD, OTHER_PASSWORD] {
        assert!(!out.stdout.contains(secret), "{secret} in the workspace");
        assert!(!w.ws.log().contains(secret), "{secret} in the shim's log");
        assert!(
            !w.proxy.log().contains(secret),
            "{secret} in the proxy's log"
        );
    }
    // The workspace's own credential plumbing has nothing for the host.
    let fill = w.sh(&format!(
        "printf 'protocol=https\\nhost={}\\n\\n' | git credential fill 2>&1 || true",
        w.git.host()
    ));
    assert!(
        !fill.stdout.contains(PASSWORD) && !fill.stdout.contains(OTHER_PASSWORD),
        "{fill}"
    );
}

/// The workspace's own `Authorization` header (here the other account's)
/// goes nowhere: the laptop sends the account the rule's `username` names
/// (listed second in its store), and nothing of either comes back.
#[test]
fn the_rule_picks_the_account_and_the_workspaces_header_is_dropped() {
    let w = world("");
    let url = format!(
        "$NEXUS_HTTP_URL/_git/{}/acme/repo.git/info/refs?service=git-upload-pack",
        w.git.host()
    );
    let out = w.sh(&format!(
        "curl -s -i -H 'Authorization: Basic {}' \"{url}\"",
        "Ym9iLWFkbWluOng="
    ));
    assert_eq!(out.exit_code, Some(0), "{out}");
    assert!(out.stdout.starts_with("HTTP/1.1 200"), "{out}");
    let lower = out.stdout.to_ascii_lowercase();
    assert!(
        !lower.contains("www-authenticate") && !lower.contains("authorization"),
        "{out}"
    );
    assert!(
        !out.stdout.contains(OTHER_PASSWORD) && !out.stdout.contains(PASSWORD),
        "{out}"
    );
    // The workspace's Authorization header went nowhere: the server saw
    // the laptop's (alice's), which it accepts.
    assert!(
        !w.git.requests().contains("auth=no"),
        "{}",
        w.git.requests()
    );
}

/// Git LFS's batch API is opened as a fetch, but an upload writes to the
/// repository's LFS store: under a rule without `push` it is refused
/// (however the JSON spells it) and never reaches the server, while a
/// download goes on.
#[test]
fn an_lfs_upload_needs_a_push_rule() {
    let w = world(
        "\n[[git.allow]]\nhost = \"{host}\"\nrepo = \"ro/*\"\nusername = \"alice\"\nca_file = \"{ca}\"\n",
    );
    let url = format!(
        "$NEXUS_HTTP_URL/_git/{}/ro/repo.git/info/lfs/objects/batch",
        w.git.host()
    );
    let post = |body: &str| {
        w.sh(&format!(
            "curl -s -o /dev/stderr -w '%{{http_code}}' -H 'Content-Type: application/vnd.git-lfs+json' \
             --data-binary '{body}' \"{url}\""
        ))
    };
    for body in [
        r#"{"operation":"upload","objects":[]}"#,
        r#"{"operation":"download","OPERATION":"upload","objects":[]}"#,
    ] {
        let out = post(body);
        assert_eq!(out.stdout, "403", "{body}: {out}\n{}", w.logs());
        assert!(out.stderr.contains("LFS upload refused"), "{out}");
    }
    assert!(
        !w.git.requests().contains("info/lfs"),
        "an upload reached the server: {}",
        w.logs()
    );
    // A download goes on (this server has no LFS: its 404 comes back).
    let out = post(r#"{"operation":"download","objects":[]}"#);
    assert_eq!(out.stdout, "404", "{out}\n{}", w.logs());
    assert!(
        w.git
            .requests()
            .contains("POST /ro/repo.git/info/lfs/objects/batch"),
        "{}",
        w.logs()
    );
}

/// The hostile inputs of issue 16 that apply to HTTPS, each refused with
/// a clear error while the server's refs stay as they were and the proxy
/// keeps serving.
#[test]
fn hostile_requests_are_refused_and_the_proxy_keeps_serving() {
    let w = world("");
    let before = w.git.refs("acme/repo.git");
    let out = w.sh(&format!(
        "python3 - {} <<'EOF'\n{HOSTILE}\nEOF",
        w.git.host()
    ));
    assert_eq!(out.exit_code, Some(0), "{out}\n{}", w.logs());
    let expect = [
        ("dotdot", "404", "invalid repository path"),
        ("encoded", "404", "invalid repository path"),
        ("dash", "404", "invalid repository path"),
        ("double-slash", "404", "invalid repository path"),
        ("dumb-http", "404", "not a git endpoint"),
        ("host-space", "404", "invalid git host"),
        ("host-option", "404", "invalid git host"),
        ("lying-length", "403", "bad pkt-line length"),
        ("pack-first", "403", "a pack"),
        ("no-flush", "403", "ended before its command list"),
        ("v2-delim", "403", "protocol v2"),
        ("push-options", "403", "push options"),
        ("split-long-list", "200", "ng refs/heads/main"),
        // The server's upload-pack refuses it (nothing can be pushed there).
        ("upload-pack-push", "415", "git-upload-pack-request"),
    ];
    for (case, status, needle) in expect {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{case} ")))
            .unwrap_or_else(|| panic!("no answer for {case}\n{out}"));
        assert!(
            line.starts_with(&format!("{case} {status} ")),
            "{line}\n{}",
            w.logs()
        );
        assert!(line.contains(needle), "{line}");
    }
    assert_eq!(w.git.refs("acme/repo.git"), before);
    // Each hostile push body is a refusal on record.
    let log = w.proxy.log();
    for reason in [
        "bad pkt-line length",
        "a pack",
        "no flush-pkt",
        "protocol v2",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("refused") && l.contains(reason)),
            "{reason}\n{log}"
        );
    }
    let again = w.in_clone("git log -1 --format=%s");
    assert_eq!(again.exit_code, Some(0), "{again}\n{}", w.logs());
    assert!(again.stdout.contains("seed"), "{again}");
}

/// Sends each hostile request to `$NEXUS_HTTP_URL/_git/HOST/...` and prints
/// `CASE STATUS BODY` on one line.
const HOSTILE: &str = r#"
import http.client, os, sys, urllib.parse
host = sys.argv[1]
base = urllib.parse.urlsplit(os.environ["NEXUS_HTTP_URL"])
Z = "0" * 40
A = "1" * 40

def pkt(s):
    b = s.encode() if isinstance(s, str) else s
    return b"%04x" % (len(b) + 4) + b

def send(case, method, path, pieces=None, target=None):
    c = http.client.HTTPConnection(base.hostname, base.port, timeout=60)
    c.putrequest(method, base.path + "/_git/" + (target or host) + path, skip_accept_encoding=True)
    c.putheader("Content-Type", "application/x-git-receive-pack-request")
    if pieces is not None:
        c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    for p in pieces or []:
        c.send(b"%x\r\n%s\r\n" % (len(p), p))
    if pieces is not None:
        c.send(b"0\r\n\r\n")
    r = c.getresponse()
    body = r.read()
    text = body.decode("utf-8", "replace").replace("\n", " ").replace("\x01", "")
    print(case, r.status, text[:200], "...", text[-300:])

first = pkt(f"{A} {A} refs/heads/agent/x\0report-status side-band-64k\n")
send("dotdot", "POST", "/acme/../other/repo.git/git-receive-pack", [first + b"0000"])
send("encoded", "POST", "/acme/%2e%2e%2fother/repo.git/git-receive-pack", [first + b"0000"])
send("dash", "GET", "/-oProxyCommand=x/repo.git/info/refs?service=git-upload-pack")
send("double-slash", "GET", "/acme//repo.git/info/refs?service=git-upload-pack")
send("dumb-http", "GET", "/acme/repo.git/HEAD")
send("host-space", "GET", "/acme/repo.git/info/refs?service=git-upload-pack", target="a%20b")
send("host-option", "GET", "/acme/repo.git/info/refs?service=git-upload-pack", target="-oProxyCommand=x")
send("lying-length", "POST", "/acme/repo.git/git-receive-pack", [b"zz" + first[2:] + b"0000"])
send("pack-first", "POST", "/acme/repo.git/git-receive-pack", [b"PACK\0\0\0\x02" + first])
send("no-flush", "POST", "/acme/repo.git/git-receive-pack", [first[:9], first[9:]])
send("v2-delim", "POST", "/acme/repo.git/git-receive-pack", [b"0001" + first])
options = pkt(f"{A} {A} refs/heads/agent/x\0report-status push-options\n") + b"0000"
options += pkt("merge_request.create\n") + pkt("merge_request.target=main\n") + b"0000PACK"
send("push-options", "POST", "/acme/repo.git/git-receive-pack", [options])
many = first + b"".join(pkt(f"{Z} {A} refs/heads/agent/n{i}\n") for i in range(3000))
many += pkt(f"{A} {A} refs/heads/main\n") + b"0000PACK"
send("split-long-list", "POST", "/acme/repo.git/git-receive-pack", [many[i:i + 7000] for i in range(0, len(many), 7000)])
send("upload-pack-push", "POST", "/acme/repo.git/git-upload-pack", [first + b"0000PACK"])
"#;

/// Throughput of a large push and clone through the broker against the
/// same push and clone made from the workspace straight to the git server
/// (its URL with the password, the test CA trusted), in one run. Prints
/// the table; `NEXUS_GIT_BENCH_MB` sets the size (default 100). Run with
/// release binaries for numbers worth quoting:
/// `cargo test --release -p nexus-e2e --test git_broker_https -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: minutes, prints a table"]
fn large_push_and_clone_through_the_broker_against_direct() {
    let mb: u64 = std::env::var("NEXUS_GIT_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let w = world("");
    // The workspace's own copy of the CA, for its direct requests.
    let ca = w.ws.home().join("git-ca.pem");
    std::fs::write(&ca, w.git.ca_pem().must("an HTTPS server has a CA")).must("writing the CA");
    // Straight to another repository with the same seed, so that each push
    // sends the whole pack.
    let direct_url = format!("https://{USER}:{PASSWORD}@{}/other/repo.git", w.git.host());
    let direct = format!("GIT_CONFIG_COUNT=0 GIT_SSL_CAINFO='{}' git", ca.display());
    let prepare = w.in_clone(&format!(
        "head -c {}000000 /dev/urandom > big; git add big; git commit -qm big",
        mb
    ));
    assert_eq!(prepare.exit_code, Some(0), "{prepare}");
    let timed = |what: &str, script: String| {
        let mut cmd = workspace_sh_command(&w.ws, &format!("cd \"$HOME/repo\"; {script}"));
        let started = std::time::Instant::now();
        let out = cmd.output().must("running git");
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            w.logs()
        );
        took
    };
    let rows = [
        (
            "push, broker",
            timed(
                "push, broker",
                "git push -q origin HEAD:agent/broker".to_owned(),
            ),
        ),
        (
            "push, direct",
            timed(
                "push, direct",
                format!("{direct} push -q {direct_url} HEAD:agent/direct"),
            ),
        ),
        (
            "clone, broker",
            timed(
                "clone, broker",
                format!(
                    "rm -rf ../b; git clone -q -b agent/broker {} ../b",
                    w.git.https_url("acme/repo.git")
                ),
            ),
        ),
        (
            "clone, direct",
            timed(
                "clone, direct",
                format!("rm -rf ../d; {direct} clone -q -b agent/direct {direct_url} ../d"),
            ),
        ),
    ];
    eprintln!("{mb} MB, wall time (MB/s):");
    for (what, took) in rows {
        eprintln!(
            "  {what:<14} {:>8.2}s {:>8.1}",
            took.as_secs_f64(),
            mb as f64 / took.as_secs_f64()
        );
    }
}
