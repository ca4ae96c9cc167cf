//! The "workspace host": a network namespace joined to the root one by a
//! veth pair, so the shim and the proxy talk over a real link, as a remote
//! container and a laptop would.
//!
//! Concurrent test processes must not pick the same subnet. Interface names
//! are unique in the root namespace, so creating `nxe<N>h` is the lock on
//! subnet `10.231.<N>.0/30`: when the name exists, the next N is tried.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Once, OnceLock};

use crate::{Must, unique};

const PREFIX: &str = "nexus-e2e-";

/// Whether the shim can be put in a namespace: root, `ip` installed, and
/// namespaces allowed (an unprivileged container has root without them).
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        if !crate::is_root() {
            return false;
        }
        let probe = format!("{PREFIX}{}-probe", std::process::id());
        match ip(&["netns", "add", &probe]) {
            Ok(()) => {
                let _ = ip(&["netns", "del", &probe]);
                true
            }
            Err(e) => {
                eprintln!(
                    "nexus-e2e: network namespaces unavailable ({e}); the shim runs on loopback"
                );
                false
            }
        }
    })
}

/// A namespace with one veth link to the root namespace.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    host_if: Option<String>,
    /// The root namespace's end of the link (the laptop's address).
    pub host_ip: Ipv4Addr,
    /// The namespace's end (the workspace host's address).
    pub ws_ip: Ipv4Addr,
}

impl NetNs {
    /// Creates the namespace and its link, both up.
    #[track_caller]
    pub fn create() -> Self {
        sweep_stale();
        let name = format!("{PREFIX}{}-{}", std::process::id(), unique());
        ip(&["netns", "add", &name]).must(&format!("creating network namespace {name}"));
        let mut ns = Self {
            name,
            host_if: None,
            host_ip: Ipv4Addr::UNSPECIFIED,
            ws_ip: Ipv4Addr::UNSPECIFIED,
        };
        let seed = usize::try_from(std::process::id()).unwrap_or(0) * 7
            + usize::try_from(unique()).unwrap_or(0);
        for attempt in 0..254 {
            let n = u8::try_from((seed + attempt) % 254 + 1).unwrap_or(1);
            let (host_if, ws_if) = (format!("nxe{n}h"), format!("nxe{n}w"));
            match ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ws_if, "netns", &ns.name,
            ]) {
                Ok(()) => {
                    ns.host_if = Some(host_if.clone());
                    ns.host_ip = Ipv4Addr::new(10, 231, n, 1);
                    ns.ws_ip = Ipv4Addr::new(10, 231, n, 2);
                    let host_cidr = format!("{}/30", ns.host_ip);
                    let ws_cidr = format!("{}/30", ns.ws_ip);
                    for args in [
                        &["addr", "add", &host_cidr, "dev", &host_if][..],
                        &["link", "set", &host_if, "up"],
                        &["-n", &ns.name, "addr", "add", &ws_cidr, "dev", &ws_if],
                        &["-n", &ns.name, "link", "set", &ws_if, "up"],
                        &["-n", &ns.name, "link", "set", "lo", "up"],
                    ] {
                        ip(args).must("configuring the veth link");
                    }
                    return ns;
                }
                Err(e) if e.contains("File exists") => {}
                Err(e) => panic!("creating a veth pair into {}: {e}", ns.name),
            }
        }
        panic!("no free 10.231.N.0/30 subnet: 254 nxe*h interfaces exist");
    }

    /// The namespace's name (for `ip netns exec NAME` in scripts).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`: runs `program` on the workspace host.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the link first frees its name (our subnet lock) at once;
        // a namespace's devices otherwise go away asynchronously.
        if let Some(host_if) = &self.host_if {
            let _ = ip(&["link", "del", host_if]);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Runs `ip ARGS`; the error is its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes namespaces left by test processes that died without cleaning up
/// (SIGKILL, a crash). Their pid is in the name.
fn sweep_stale() {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let pid = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && pid != std::process::id()
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = ip(&["netns", "del", name]);
            }
        }
    });
}
