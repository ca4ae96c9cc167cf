//! A real git server over HTTP or HTTPS with basic auth, next to the
//! workspace: a small Python `http.server` that checks the password and runs
//! the real `git http-backend` as a CGI program (smart HTTP: clone, fetch,
//! push). Over HTTPS its leaf certificate is signed by a fresh test CA.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::{DEADLINE, Daemon, Must, Workspace, poll, run_to_end};

/// The server script: `ROOT USER PASS ADDR PORTFILE LOG [CERT KEY]`.
const SERVER: &str = r#"
import base64, http.server, os, subprocess, sys
root, user, password, addr, portfile, log = sys.argv[1:7]
expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            # Joined once at the end: appending to bytes would copy the
            # whole body for every chunk.
            parts = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length)

    def serve(self):
        ok = self.headers.get("Authorization") == expected
        with open(log, "a") as f:
            f.write(f"{self.command} {self.path} auth={'ok' if ok else 'no'}\n")
        if not ok:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "REMOTE_USER": user,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        data = self.body() if self.command == "POST" else b""
        env["CONTENT_LENGTH"] = str(len(data))
        out = subprocess.run(["git", "http-backend"], input=data, env=env, capture_output=True).stdout
        head, _, rest = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            k, _, v = line.decode().partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)

    do_GET = serve
    do_POST = serve

server = http.server.ThreadingHTTPServer((addr, 0), Handler)
if len(sys.argv) > 8:
    import ssl
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[7], sys.argv[8])
    server.socket = tls.wrap_socket(server.socket, server_side=True)
with open(portfile + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(portfile + ".tmp", portfile)
server.serve_forever()
"#;

/// A running git HTTP server holding `acme/repo.git` and `other/repo.git`,
/// each with one commit.
#[derive(Debug)]
pub struct GitHttp {
    server: Daemon,
    host: String,
    /// The test CA's PEM, when serving HTTPS.
    ca: Option<String>,
    log: PathBuf,
    dir: TempDir,
}

/// `git` with a fixed identity and no user or system configuration.
fn git(home: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"]);
    cmd
}

impl GitHttp {
    /// Starts the server on the workspace host, accepting `user`/`password`.
    #[track_caller]
    pub fn start(ws: &Workspace, user: &str, password: &str) -> Self {
        Self::start_with(ws, user, password, false)
    }

    /// Like [`GitHttp::start`], over HTTPS with a certificate for the
    /// workspace host's address signed by a test CA ([`GitHttp::ca_pem`]).
    #[track_caller]
    pub fn start_https(ws: &Workspace, user: &str, password: &str) -> Self {
        Self::start_with(ws, user, password, true)
    }

    #[track_caller]
    fn start_with(ws: &Workspace, user: &str, password: &str, tls: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nexus-e2e-git-")
            .tempdir()
            .must("creating the git server's temp dir");
        let root = dir.path().join("repos");
        for repo in ["acme/repo.git", "other/repo.git"] {
            seed(dir.path(), &root.join(repo));
        }
        let script = dir.path().join("server.py");
        std::fs::write(&script, SERVER).must("writing the git server script");
        let portfile = dir.path().join("port");
        let log = dir.path().join("requests.log");
        let mut cmd = ws.command_on_host("python3");
        cmd.arg(&script)
            .arg(&root)
            .args([user, password, &ws.ip().to_string()])
            .arg(&portfile)
            .arg(&log);
        let ca = tls.then(|| {
            let (ca, cert, key) =
                certificates(&ws.ip().to_string()).must("making the git server's certificates");
            let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert_path, cert).must("writing the git server's certificate");
            std::fs::write(&key_path, key).must("writing the git server's key");
            cmd.arg(cert_path).arg(key_path);
            ca
        });
        let mut server = Daemon::spawn(cmd, &dir.path().join("server.log"));
        let port = poll(DEADLINE, || {
            if let Ok(p) = std::fs::read_to_string(&portfile) {
                return Some(Some(p));
            }
            server.try_exit().map(|_| None)
        })
        .flatten()
        .unwrap_or_else(|| panic!("the git server did not start\n{}", server.log()));
        Self {
            server,
            host: format!("{}:{}", ws.ip(), port.trim()),
            ca,
            log,
            dir,
        }
    }

    /// The test CA's PEM (HTTPS only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_deref()
    }

    /// `https://IP:PORT/REPO`.
    pub fn https_url(&self, repo: &str) -> String {
        format!("https://{}/{repo}", self.host)
    }

    /// Every ref of `repo` on the server, one `OID REF` line each.
    #[track_caller]
    pub fn refs(&self, repo: &str) -> String {
        let out = run_to_end(
            git(self.dir.path())
                .arg("-C")
                .arg(self.dir.path().join("repos").join(repo))
                .args(["for-each-ref", "--format=%(objectname) %(refname)"]),
            None,
        );
        out.ok();
        out.stdout
    }

    /// `IP:PORT`, as git names the host in credential requests.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `http://IP:PORT/REPO`.
    pub fn url(&self, repo: &str) -> String {
        format!("http://{}/{repo}", self.host)
    }

    /// The requests served so far, one `METHOD PATH auth=ok|no` line each.
    pub fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The subject of the newest commit of `repo` on the server.
    #[track_caller]
    pub fn head_subject(&self, repo: &str) -> String {
        let out = run_to_end(
            git(self.dir.path())
                .arg("-C")
                .arg(self.dir.path().join("repos").join(repo))
                .args(["log", "-1", "--format=%s"]),
            None,
        );
        out.ok();
        out.stdout.trim().to_owned()
    }

    /// The server's own log (for failures).
    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// A CA's PEM, and a leaf for `ip` signed by it (certificate and key PEM):
/// rustls takes no self-signed leaf as its own root.
fn certificates(ip: &str) -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "nexus-e2e git test CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec![ip.to_owned()])?.signed_by(&leaf_key, &issuer)?;
    Ok((ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem()))
}

/// A bare repository at `bare` with one commit on `main`.
#[track_caller]
fn seed(scratch: &Path, bare: &Path) {
    std::fs::create_dir_all(bare).must("creating a bare repo dir");
    run_to_end(
        git(scratch)
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(bare),
        None,
    )
    .ok();
    let work = scratch.join(format!("seed-{}", crate::unique()));
    run_to_end(
        git(scratch).args(["init", "-q", "-b", "main"]).arg(&work),
        None,
    )
    .ok();
    std::fs::write(work.join("README"), "seed\n").must("writing a seed file");
    let steps: [&[&OsStr]; 3] = [
        &[OsStr::new("add"), OsStr::new("README")],
        &[
            OsStr::new("commit"),
            OsStr::new("-q"),
            OsStr::new("-m"),
            OsStr::new("seed"),
        ],
        &[
            OsStr::new("push"),
            OsStr::new("-q"),
            bare.as_os_str(),
            OsStr::new("main"),
        ],
    ];
    for args in steps {
        run_to_end(git(scratch).arg("-C").arg(&work).args(args), None).ok();
    }
}

/// A shell script run on the workspace host after `eval "$(nexus-shim
/// env)"`, as an agent's shell would: git with a fixed identity, no system
/// config and no terminal prompt.
#[track_caller]
pub fn workspace_sh(ws: &Workspace, script: &str) -> crate::Output {
    run_to_end(&mut workspace_sh_command(ws, script), None)
}

/// The command [`workspace_sh`] runs (for one that may take longer than
/// [`crate::DEADLINE`]).
pub fn workspace_sh_command(ws: &Workspace, script: &str) -> Command {
    let mut cmd = ws.command_on_host("sh");
    cmd.arg("-c")
        .arg(format!(
            "set -e; eval \"$('{}' env)\"; {script}",
            nexus_shim().display()
        ))
        .env("NEXUS_STATE_DIR", ws.state_dir())
        .env("NEXUS_WAIT", "10s")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "agent")
        .env("GIT_AUTHOR_EMAIL", "agent@example.invalid")
        .env("GIT_COMMITTER_NAME", "agent")
        .env("GIT_COMMITTER_EMAIL", "agent@example.invalid");
    cmd
}

/// Path of the `nexus-shim` binary under test (for scripts that run it).
pub fn nexus_shim() -> PathBuf {
    crate::shim_bin()
}
