//! Routes to a workspace other than raw TCP, with real parts in front of the
//! shim on the workspace host:
//!
//! - `wss`: nginx terminating TLS (a certificate made for the test) and
//!   proxying the WebSocket upgrade to the shim's port; the laptop pairs with
//!   `--connect wss://IP:PORT/nexus --ca-file CERT`.
//! - `stdio`: sshd letting root in with a test key; the laptop pairs with
//!   `--connect-command 'ssh ... nexus-shim serve --stdio --state-dir STATE'`,
//!   which relays into the running daemon.
//!
//! `NEXUS_E2E_ROUTE=wss|stdio` makes every [`crate::Workspace`] start one and
//! every [`crate::Laptop::pair`] use it, so the whole foundation suite runs
//! over that route unchanged.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use tempfile::TempDir;

use crate::sshd::PubKey;
use crate::{DEADLINE, Daemon, Must, Workspace, poll};

/// How the laptop reaches workspaces in this test process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// Straight TCP (the default).
    Tcp,
    /// Through nginx, as a WebSocket.
    Wss,
    /// Through ssh to `nexus-shim serve --stdio`.
    Stdio,
}

/// The mode `NEXUS_E2E_ROUTE` asks for.
pub fn route_mode() -> RouteMode {
    match std::env::var("NEXUS_E2E_ROUTE").as_deref() {
        Ok("wss") => RouteMode::Wss,
        Ok("stdio") => RouteMode::Stdio,
        Ok("" | "tcp") | Err(_) => RouteMode::Tcp,
        Ok(other) => panic!("NEXUS_E2E_ROUTE={other:?}: expected tcp, wss or stdio"),
    }
}

/// Extra `pair` arguments per shim address (`IP:PORT` of its pairing URI).
fn registry() -> &'static Mutex<HashMap<String, Vec<String>>> {
    static ROUTES: OnceLock<Mutex<HashMap<String, Vec<String>>>> = OnceLock::new();
    ROUTES.get_or_init(Mutex::default)
}

/// The `pair` arguments that reach the shim at `address` by its front.
pub fn pair_args(address: &str) -> Vec<String> {
    registry()
        .lock()
        .ok()
        .and_then(|r| r.get(address).cloned())
        .unwrap_or_default()
}

/// A process in front of one workspace's shim.
#[derive(Debug)]
pub struct Front {
    daemon: Daemon,
    /// `pair` arguments that use it.
    pub pair_args: Vec<String>,
    /// The CA file a wss front's certificate is checked with.
    pub ca_file: Option<PathBuf>,
    _dir: TempDir,
}

impl Front {
    /// Starts the front `mode` asks for before `ws`, whose shim listens on
    /// `shim_addr`, and registers it for `pair`.
    #[track_caller]
    pub fn start(mode: RouteMode, ws: &Workspace, shim_addr: &str) -> Option<Self> {
        let front = match mode {
            RouteMode::Tcp => return None,
            RouteMode::Wss => Self::nginx(ws, shim_addr),
            RouteMode::Stdio => Self::sshd(ws),
        };
        if let Ok(mut r) = registry().lock() {
            r.insert(shim_addr.to_owned(), front.pair_args.clone());
        }
        Some(front)
    }

    /// nginx on the workspace host: TLS on a free port, `/nexus` proxied to
    /// the shim as a WebSocket.
    #[track_caller]
    pub fn nginx(ws: &Workspace, shim_addr: &str) -> Self {
        let dir = tempdir("nexus-e2e-nginx-");
        let root = dir.path();
        let ip = ws.ip();
        let cert = rcgen::generate_simple_self_signed(vec![ip.to_string()])
            .must("making the ingress certificate");
        let cert_pem = root.join("ingress.pem");
        std::fs::write(&cert_pem, cert.cert.pem()).must("writing the ingress certificate");
        let key_pem = root.join("ingress.key");
        std::fs::write(&key_pem, cert.signing_key.serialize_pem()).must("writing the key");
        for attempt in 0..8 {
            let port = crate::sshd::free_port();
            let conf = root.join(format!("nginx.{attempt}.conf"));
            std::fs::write(
                &conf,
                nginx_conf(root, ip, port, shim_addr, &cert_pem, &key_pem),
            )
            .must("writing nginx.conf");
            let mut cmd = ws.command_on_host("nginx");
            cmd.arg("-p").arg(root).arg("-c").arg(&conf);
            let mut daemon = Daemon::spawn(cmd, &root.join(format!("nginx.{attempt}.log")));
            let ready = poll(DEADLINE, || {
                if std::net::TcpStream::connect((ip, port)).is_ok() {
                    Some(true)
                } else {
                    daemon.try_exit().map(|_| false)
                }
            });
            if ready == Some(true) {
                return Self {
                    daemon,
                    pair_args: vec![
                        "--connect".into(),
                        format!("wss://{ip}:{port}/nexus"),
                        "--ca-file".into(),
                        cert_pem.display().to_string(),
                    ],
                    ca_file: Some(cert_pem),
                    _dir: dir,
                };
            }
            let log =
                daemon.log() + &std::fs::read_to_string(root.join("error.log")).unwrap_or_default();
            assert!(
                log.contains("Address already in use"),
                "nginx did not start (exit: {:?})\n{log}",
                daemon.try_exit()
            );
        }
        panic!("nginx found no free port in 8 attempts");
    }

    /// sshd on the workspace host letting root in with a fresh key; the
    /// connect command runs `nexus-shim serve --stdio` there.
    #[track_caller]
    pub fn sshd(ws: &Workspace) -> Self {
        crate::sshd::require_openssh();
        assert!(
            crate::is_root(),
            "the stdio route logs in as root: run the tests as root"
        );
        let dir = tempdir("nexus-e2e-stdio-");
        let root = dir.path();
        let host_key = PubKey::generate(root, "host_ed25519", "ed25519");
        let client = PubKey::generate(root, "client_ed25519", "ed25519");
        std::fs::write(root.join("authorized_keys"), format!("{}\n", client.line))
            .must("writing authorized_keys");
        std::fs::create_dir_all("/run/sshd").must("creating /run/sshd");
        let ip = ws.ip();
        let (daemon, port) = crate::sshd::spawn_sshd(ws, root, |port| sshd_conf(root, ip, port));
        let command = format!(
            "ssh -F /dev/null -i {key} -p {port} -o BatchMode=yes -o StrictHostKeyChecking=yes \
             -o UserKnownHostsFile={known} -o LogLevel=ERROR root@{ip} \
             {shim} serve --stdio --state-dir {state}",
            key = root.join("client_ed25519").display(),
            known = write_known_hosts(root, ip, port, &host_key),
            shim = crate::shim_bin().display(),
            state = ws.state_dir().display(),
        );
        Self {
            daemon,
            pair_args: vec!["--connect-command".into(), command],
            ca_file: None,
            _dir: dir,
        }
    }

    /// The front's log.
    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

#[track_caller]
fn tempdir(prefix: &str) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .must("creating a temp dir");
    // Workers and sshd's privilege-separated child read from here.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .must("chmod 755");
    dir
}

#[track_caller]
fn write_known_hosts(root: &Path, ip: Ipv4Addr, port: u16, key: &PubKey) -> String {
    let path = root.join("known_hosts");
    std::fs::write(&path, format!("[{ip}]:{port} {}\n", key.line)).must("writing known_hosts");
    path.display().to_string()
}

fn nginx_conf(root: &Path, ip: Ipv4Addr, port: u16, shim: &str, cert: &Path, key: &Path) -> String {
    let root = root.display();
    let (cert, key) = (cert.display(), key.display());
    format!(
        "daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen {ip}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location /nexus {{
            proxy_pass http://{shim};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection \"upgrade\";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"
    )
}

fn sshd_conf(root: &Path, ip: Ipv4Addr, port: u16) -> String {
    let root = root.display();
    format!(
        "Port {port}
ListenAddress {ip}
HostKey {root}/host_ed25519
PidFile none
AuthorizedKeysFile {root}/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 100
LogLevel VERBOSE
"
    )
}
