//! `nexus-agent-proxy pair URI --name NAME`: pin the workspace's certificate,
//! present ours with the one-time token, and record the workspace.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nexus_protocol::Secret;
use nexus_transport::Fingerprint;

use crate::config::{ConfigDir, Workspace, validate_name};
use crate::route::Route;
use crate::tunnel::dial;

/// A parsed `nexus://HOST:PORT?fp=sha256:...&token=...`.
#[derive(Debug)]
pub struct PairingUri {
    /// `HOST:PORT` of the shim.
    pub address: String,
    /// Pinned certificate fingerprint.
    pub fingerprint: Fingerprint,
    /// One-time token.
    pub token: Secret,
}

impl std::str::FromStr for PairingUri {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let usage = "expected nexus://HOST:PORT?fp=sha256:...&token=... (print it in the workspace with: nexus-shim pairing-uri)";
        let rest = s
            .trim()
            .strip_prefix("nexus://")
            .with_context(|| format!("not a pairing URI; {usage}"))?;
        let (address, query) = rest
            .split_once('?')
            .with_context(|| format!("pairing URI has no parameters; {usage}"))?;
        let address = address.trim_end_matches('/');
        if address.is_empty() || !address.contains(':') {
            bail!("pairing URI has no HOST:PORT; {usage}");
        }
        // The workspace writes the URI; its address is shown in every dial
        // error and log line as is: no spaces, control characters or path.
        if address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '@' | '\\'))
        {
            bail!("pairing URI's address {address:?} is not HOST:PORT; {usage}");
        }
        let (mut fp, mut token) = (None, None);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("fp", v)) => fp = Some(v.parse::<Fingerprint>()?),
                Some(("token", v)) if !v.is_empty() => token = Some(Secret::from(v.to_owned())),
                _ => {}
            }
        }
        Ok(Self {
            address: address.to_owned(),
            fingerprint: fp
                .with_context(|| format!("pairing URI has no fp= parameter; {usage}"))?,
            token: token
                .with_context(|| format!("pairing URI has no token= parameter; {usage}"))?,
        })
    }
}

/// How to reach the workspace when not by the URI's `HOST:PORT`.
#[derive(Debug, Clone, Default)]
pub struct Via {
    /// `wss://HOST[:PORT]/PATH` or `ws://...`.
    pub connect: Option<String>,
    /// A command whose stdin/stdout reach `nexus-shim serve --stdio`.
    pub connect_command: Option<String>,
    /// Extra roots for a `wss://` ingress.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Pairs and records the workspace.
pub async fn pair(config: &ConfigDir, uri: &str, name: &str, via: Via) -> Result<Workspace> {
    validate_name(name)?;
    let uri: PairingUri = uri.parse()?;
    let identity = config.identity()?;
    let mut ws = Workspace {
        name: name.to_owned(),
        address: uri.address,
        fingerprint: uri.fingerprint,
        paired_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        connect: via.connect,
        connect_command: via.connect_command,
        ca_file: None,
    };
    if let Some(ca) = via.ca_file {
        // Stored absolute: `run` may start in another directory.
        ws.ca_file = Some(
            std::path::absolute(&ca)
                .with_context(|| format!("resolving --ca-file {}", ca.display()))?,
        );
    }
    let route = Route::for_workspace(&ws)?;
    dial(&route, ws.fingerprint, &identity, Some(uri.token))
        .await
        .with_context(|| format!("pairing with {route}"))?;
    config.save_workspace(&ws)?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let fp = Fingerprint::of(b"x");
        let ok: Result<PairingUri> = format!("nexus://ws.example:7676?fp={fp}&token=abc").parse();
        let ok = ok.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (ok.address.as_str(), ok.fingerprint, ok.token.expose()),
            ("ws.example:7676", fp, &b"abc"[..])
        );
        for bad in [
            "http://x:1?fp=a&token=b".to_owned(),
            "nexus://x:1".to_owned(),
            "nexus://x:1?token=abc".to_owned(),
            format!("nexus://x:1?fp={fp}"),
            format!("nexus://?fp={fp}&token=a"),
            "nexus://x:1?fp=sha256:00&token=a".to_owned(),
            // The workspace writes the URI: an address that would forge or
            // recolour the laptop's log and error lines is refused.
            format!("nexus://x:1\n2099-01-01T00:00:00Z  INFO forged?fp={fp}&token=a"),
            format!("nexus://x\u{1b}[8m:1?fp={fp}&token=a"),
            format!("nexus://u@x:1/p?fp={fp}&token=a"),
        ] {
            assert!(bad.parse::<PairingUri>().is_err(), "{bad}");
        }
    }
}
