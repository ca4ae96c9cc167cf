//! The one channel `connect` uses: a local command line, run by `sh -c`,
//! that runs a remote `sh -c SCRIPT` with our stdin and stdout. Every
//! remote step (probe, upload, start, pairing, the tunnel itself) goes
//! through it, so the user's own authentication (ssh config and agent,
//! kubeconfig, docker context) is all there is.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

/// `sh` quoting: the string as one word, whatever it holds.
#[must_use]
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Where `connect` reaches a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `ssh://[USER@]HOST[:PORT]`: the laptop's own `ssh`, batch mode.
    Ssh {
        /// Login user.
        user: Option<String>,
        /// Host name, `~/.ssh/config` alias or address.
        host: String,
        /// TCP port.
        port: Option<u16>,
    },
    /// `kubectl://[NAMESPACE/]POD[/CONTAINER]`.
    Kubectl {
        /// Namespace.
        namespace: Option<String>,
        /// Pod.
        pod: String,
        /// Container in the pod.
        container: Option<String>,
    },
    /// `docker://CONTAINER`.
    Docker {
        /// Container name or id.
        container: String,
    },
}

const TARGET_FORMS: &str = "expected ssh://[USER@]HOST[:PORT], kubectl://[NAMESPACE/]POD[/CONTAINER] or docker://CONTAINER";

/// A name part: non-empty, no spaces or control characters, and not an
/// option (`-x` would be read as one by ssh, kubectl or docker).
fn part(what: &str, s: &str, whole: &str) -> Result<String> {
    if s.is_empty() {
        bail!("{whole:?}: no {what}; {TARGET_FORMS}");
    }
    if s.starts_with('-') {
        bail!("{whole:?}: the {what} {s:?} starts with '-'");
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("{whole:?}: spaces or control characters in the {what}");
    }
    Ok(s.to_owned())
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some((scheme, rest)) = s.split_once("://") else {
            bail!("{s:?}: {TARGET_FORMS} (or --command CMD)");
        };
        match scheme {
            "ssh" => {
                let (user, hostport) = match rest.rsplit_once('@') {
                    Some((u, h)) => (Some(part("user", u, s)?), h),
                    None => (None, rest),
                };
                let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
                    match v6.split_once(']') {
                        Some((h, "")) => (h, None),
                        Some((h, p)) => (h, Some(p.strip_prefix(':').unwrap_or(p))),
                        None => bail!("{s:?}: unclosed '['"),
                    }
                } else {
                    match hostport.split_once(':') {
                        Some((h, p)) => (h, Some(p)),
                        None => (hostport, None),
                    }
                };
                let port = match port {
                    Some(p) => Some(
                        p.parse::<u16>()
                            .ok()
                            .filter(|p| *p != 0)
                            .ok_or_else(|| anyhow::anyhow!("{s:?}: bad port {p:?}"))?,
                    ),
                    None => None,
                };
                if host.contains('/') {
                    bail!("{s:?}: a path after the host; {TARGET_FORMS}");
                }
                Ok(Self::Ssh {
                    user,
                    host: part("host", host, s)?,
                    port,
                })
            }
            "kubectl" => {
                let parts: Vec<&str> = rest.split('/').collect();
                let (namespace, pod, container) = match parts.as_slice() {
                    [pod] => (None, *pod, None),
                    [ns, pod] => (Some(*ns), *pod, None),
                    [ns, pod, c] => (Some(*ns), *pod, Some(*c)),
                    _ => bail!("{s:?}: {TARGET_FORMS}"),
                };
                Ok(Self::Kubectl {
                    namespace: namespace.map(|n| part("namespace", n, s)).transpose()?,
                    pod: part("pod", pod, s)?,
                    container: container.map(|c| part("container", c, s)).transpose()?,
                })
            }
            "docker" => {
                if rest.contains('/') {
                    bail!("{s:?}: {TARGET_FORMS}");
                }
                Ok(Self::Docker {
                    container: part("container", rest, s)?,
                })
            }
            other => bail!("{s:?}: unknown kind {other:?}; {TARGET_FORMS} (or --command CMD)"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ssh { user, host, port } => {
                f.write_str("ssh://")?;
                if let Some(u) = user {
                    write!(f, "{u}@")?;
                }
                if host.contains(':') {
                    write!(f, "[{host}]")?;
                } else {
                    f.write_str(host)?;
                }
                port.map_or(Ok(()), |p| write!(f, ":{p}"))
            }
            Self::Kubectl {
                namespace,
                pod,
                container,
            } => {
                f.write_str("kubectl://")?;
                if let Some(ns) = namespace {
                    write!(f, "{ns}/")?;
                }
                f.write_str(pod)?;
                container.as_ref().map_or(Ok(()), |c| write!(f, "/{c}"))
            }
            Self::Docker { container } => write!(f, "docker://{container}"),
        }
    }
}

impl Target {
    /// The workspace name used when `--name` is not given: the host, pod
    /// or container, cut down to what a name may hold.
    #[must_use]
    pub fn default_name(&self) -> String {
        let raw = match self {
            Self::Ssh { host, .. } => host,
            Self::Kubectl { pod, .. } => pod,
            Self::Docker { container } => container,
        };
        let name: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        name.trim_start_matches('.').to_owned()
    }

    /// The channel to it.
    #[must_use]
    pub fn channel(&self) -> Channel {
        match self {
            Self::Ssh { user, host, port } => {
                let dest = user
                    .as_ref()
                    .map_or_else(|| host.clone(), |u| format!("{u}@{host}"));
                let port = port.map(|p| format!(" -p {p}")).unwrap_or_default();
                Channel::Shell(format!(
                    "ssh -o BatchMode=yes -o ConnectTimeout=10{port} -- {}",
                    quote(&dest)
                ))
            }
            Self::Kubectl {
                namespace,
                pod,
                container,
            } => {
                let ns = namespace
                    .as_ref()
                    .map(|n| format!(" -n {}", quote(n)))
                    .unwrap_or_default();
                let c = container
                    .as_ref()
                    .map(|c| format!(" -c {}", quote(c)))
                    .unwrap_or_default();
                Channel::Exec(format!("kubectl exec -i{ns} {}{c} --", quote(pod)))
            }
            Self::Docker { container } => {
                Channel::Exec(format!("docker exec -i {}", quote(container)))
            }
        }
    }
}

/// A local command line that runs something in the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// Runs its last word through a shell there, as `ssh HOST WORD` does
    /// (`ssh ...`, or the user's `--command CMD`).
    Shell(String),
    /// Runs the program and arguments after it (`kubectl exec -i POD --`,
    /// `docker exec -i C`).
    Exec(String),
}

impl Channel {
    /// The local `sh -c` line that runs `script` with `sh -c` in the workspace.
    #[must_use]
    pub fn line(&self, script: &str) -> String {
        let remote = format!("sh -c {}", quote(script));
        match self {
            Self::Shell(prefix) => format!("{prefix} {}", quote(&remote)),
            Self::Exec(prefix) => format!("{prefix} {remote}"),
        }
    }

    /// Recovers the channel from a route this module built with
    /// [`Channel::line`] for `script`; `None` for any other command.
    #[must_use]
    pub fn from_line(line: &str, script: &str) -> Option<Self> {
        let remote = format!("sh -c {}", quote(script));
        if let Some(prefix) = line.strip_suffix(&format!(" {}", quote(&remote))) {
            return Some(Self::Shell(prefix.to_owned()));
        }
        line.strip_suffix(&format!(" {remote}"))
            .map(|prefix| Self::Exec(prefix.to_owned()))
    }

    /// The local part, for messages.
    #[must_use]
    pub fn prefix(&self) -> &str {
        match self {
            Self::Shell(p) | Self::Exec(p) => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile strings survive `quote` through a real `sh`, byte for byte.
    #[test]
    fn quoting_survives_a_real_shell() {
        for s in [
            "plain",
            "",
            "it's",
            "'",
            "''\\'",
            "$(touch /tmp/nexus-pwned)",
            "`id`",
            "a; rm -rf ~",
            "x\ny",
            "$HOME ${IFS} *",
            "\\",
            "-n",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(s)))
                .output()
                .unwrap_or_else(|e| panic!("sh: {e}"));
            assert_eq!(String::from_utf8_lossy(&out.stdout), s, "{s:?}");
        }
    }

    /// A script goes through two shells on the ssh route (the local one,
    /// then the remote login shell) and arrives intact.
    #[test]
    fn a_script_arrives_intact_through_both_shells() {
        let script = "printf '%s|' \"it's\" '$(id)' `echo ok`";
        // A stand-in for ssh: its last word is run through a shell.
        let shell = Channel::Shell("sh -c 'eval \"$1\"' shell-standin".into());
        let exec = Channel::Exec("env".into());
        for ch in [shell, exec] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(ch.line(script))
                .output()
                .unwrap_or_else(|e| panic!("sh: {e}"));
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "it's|$(id)|ok|",
                "{ch:?}"
            );
            assert_eq!(Channel::from_line(&ch.line(script), script), Some(ch));
        }
    }

    #[test]
    fn parses_targets_and_builds_their_channels() {
        let t = |s: &str| s.parse::<Target>().map_err(|e| e.to_string());
        let ssh = t("ssh://dev@build.example:2222").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ssh.channel().prefix(),
            "ssh -o BatchMode=yes -o ConnectTimeout=10 -p 2222 -- 'dev@build.example'"
        );
        assert_eq!(ssh.to_string(), "ssh://dev@build.example:2222");
        assert_eq!(ssh.default_name(), "build.example");
        let v6 = t("ssh://[::1]:22").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v6.to_string(), "ssh://[::1]:22");
        let k = t("kubectl://team/pod-1/main").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            k.channel().prefix(),
            "kubectl exec -i -n 'team' 'pod-1' -c 'main' --"
        );
        assert_eq!(
            t("kubectl://pod-1").map(|k| k.channel()),
            Ok(Channel::Exec("kubectl exec -i 'pod-1' --".into()))
        );
        assert_eq!(
            t("docker://it's").map(|d| d.channel()),
            Ok(Channel::Exec(r"docker exec -i 'it'\''s'".into()))
        );
        assert_eq!(
            t("docker://a$(b)").map(|d| d.default_name()),
            Ok("a--b-".into())
        );
        for bad in [
            "dev",
            "http://x",
            "ssh://",
            "ssh://-oProxyCommand=x",
            "ssh://u@-x",
            "ssh://h:0",
            "ssh://h:99999",
            "ssh://h/path",
            "ssh://a b",
            "ssh://[::1",
            "kubectl://",
            "kubectl://-n/x",
            "kubectl://a/b/c/d",
            "docker://",
            "docker://a/b",
            "docker://x\ny",
        ] {
            assert!(t(bad).is_err(), "{bad:?} accepted");
        }
    }
}
