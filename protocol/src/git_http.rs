//! Brokered git over HTTPS: what `$NEXUS_HTTP_URL/_git/HOST/REPO/...` may
//! ask (the prefix is [`crate::GIT_HTTP_PREFIX`]). The shim uses this to answer anything else with a 404 at once, and
//! the laptop to check the same again (the shim is the workspace's).
//!
//! Only git's smart-HTTP endpoints and Git LFS's API under the repository
//! URL pass; the repository path is held to a strict alphabet so that a
//! glob over it means what it says, and nothing in it can turn into a
//! separator, a dot segment or an option.

use std::fmt;

/// Longest repository path accepted.
const MAX_REPO: usize = 256;

/// What a brokered git request asks of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET info/refs?service=git-upload-pack`: the refs, before a fetch.
    FetchRefs,
    /// `POST git-upload-pack`: a fetch or clone.
    UploadPack,
    /// `GET info/refs?service=git-receive-pack`: the refs, before a push.
    PushRefs,
    /// `POST git-receive-pack`: a push (its command list is read first).
    ReceivePack,
    /// `POST info/lfs/objects/batch`: Git LFS's batch API (its transfer
    /// URLs go direct).
    LfsBatch,
    /// `info/lfs/locks...`: Git LFS's file locking API.
    LfsLocks,
}

impl Endpoint {
    /// Whether this endpoint takes part in a push (ref updates, locks):
    /// the laptop decides it as a push, not a fetch.
    #[must_use]
    pub fn is_push(self) -> bool {
        matches!(self, Self::PushRefs | Self::ReceivePack | Self::LfsLocks)
    }
}

/// A request to a brokered git server, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitPath {
    /// The repository as policies name it: without a trailing `.git`.
    pub repo: String,
    /// The repository path as the workspace's git sent it (`acme/app.git`).
    pub raw_repo: String,
    /// What is asked.
    pub endpoint: Endpoint,
}

/// Why a brokered git request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitPathError {
    /// A host that is not `NAME` or `NAME:PORT`.
    #[error("invalid git host {0:?}: expected a host name or address, with an optional :PORT")]
    Host(String),
    /// A repository path outside the accepted alphabet or shape.
    #[error(
        "invalid repository path {0:?}: use letters, digits and - _ . ~ + in /-separated \
         segments, none empty, none starting with - or ., no percent-encoding"
    )]
    Repo(String),
    /// Not a smart-HTTP or LFS endpoint, or the wrong method for it.
    #[error(
        "{method} {path:?} is not a git endpoint the laptop brokers (only smart HTTP: \
         info/refs?service=git-upload-pack|git-receive-pack, git-upload-pack, git-receive-pack, \
         and Git LFS's info/lfs/objects/batch and info/lfs/locks)"
    )]
    Endpoint {
        /// The method.
        method: String,
        /// The path and query, clipped.
        path: String,
    },
}

/// Checks a git host as the workspace's URL named it: a DNS name or IPv4
/// address of letters, digits, `-` and `.`, with an optional `:PORT`.
///
/// # Errors
/// [`GitPathError::Host`].
pub fn check_host(host: &str) -> Result<(), GitPathError> {
    let bad = || GitPathError::Host(clip(host));
    let (name, port) = match host.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = (1..=253).contains(&name.len())
        && name
            .split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'))
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty() && p.len() <= 5 && !p.starts_with('0') && p.parse::<u16>().is_ok()
    });
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The endpoint suffixes, longest first where one ends another.
const SUFFIXES: [(&str, Endpoint); 5] = [
    ("/info/refs", Endpoint::FetchRefs),
    ("/git-upload-pack", Endpoint::UploadPack),
    ("/git-receive-pack", Endpoint::ReceivePack),
    ("/info/lfs/objects/batch", Endpoint::LfsBatch),
    ("/info/lfs/locks", Endpoint::LfsLocks),
];

impl GitPath {
    /// Checks `method` and `path` (what follows `/_git/HOST`, starting with
    /// `/`, with the query if any).
    ///
    /// # Errors
    /// [`GitPathError::Endpoint`] or [`GitPathError::Repo`].
    pub fn parse(method: &str, path: &str) -> Result<Self, GitPathError> {
        let (bare, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let not_git = || GitPathError::Endpoint {
            method: clip(method),
            path: clip(path),
        };
        // The path goes after the host in the laptop's URL: without its
        // `/`, it would extend the host's name.
        let bare = bare.strip_prefix('/').ok_or_else(not_git)?;
        let (raw_repo, endpoint) = split_endpoint(bare).ok_or_else(not_git)?;
        let endpoint = match (endpoint, method, query) {
            (Endpoint::FetchRefs, "GET", Some("service=git-upload-pack")) => Endpoint::FetchRefs,
            (Endpoint::FetchRefs, "GET", Some("service=git-receive-pack")) => Endpoint::PushRefs,
            (Endpoint::UploadPack | Endpoint::ReceivePack | Endpoint::LfsBatch, "POST", None)
            | (Endpoint::LfsLocks, "GET" | "POST", _) => endpoint,
            _ => return Err(not_git()),
        };
        check_repo(raw_repo)?;
        let repo = raw_repo.strip_suffix(".git").unwrap_or(raw_repo);
        if repo.is_empty() || repo.ends_with('/') || repo.ends_with('.') {
            return Err(GitPathError::Repo(clip(raw_repo)));
        }
        Ok(Self {
            repo: repo.to_owned(),
            raw_repo: raw_repo.to_owned(),
            endpoint,
        })
    }
}

/// The repository part and the endpoint of `path` (no query): the LFS
/// locks API also has `locks/verify` and `locks/ID/unlock` below it.
fn split_endpoint(path: &str) -> Option<(&str, Endpoint)> {
    for (suffix, endpoint) in SUFFIXES {
        if let Some(repo) = path.strip_suffix(suffix) {
            return Some((repo, endpoint));
        }
    }
    let (repo, locks) = path.split_once("/info/lfs/locks/")?;
    let below_ok = locks == "verify"
        || locks.strip_suffix("/unlock").is_some_and(|id| {
            !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        });
    below_ok.then_some((repo, Endpoint::LfsLocks))
}

/// A repository path: `/`-separated segments of letters, digits and
/// `-_.~+`, none empty or starting with `.` or `-`.
fn check_repo(repo: &str) -> Result<(), GitPathError> {
    let ok = !repo.is_empty()
        && repo.len() <= MAX_REPO
        && repo.split('/').all(|s| {
            !s.is_empty()
                && !s.starts_with(['.', '-'])
                && s.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+')
                })
        });
    if ok {
        Ok(())
    } else {
        Err(GitPathError::Repo(clip(repo)))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FetchRefs => "info/refs?service=git-upload-pack",
            Self::UploadPack => "git-upload-pack",
            Self::PushRefs => "info/refs?service=git-receive-pack",
            Self::ReceivePack => "git-receive-pack",
            Self::LfsBatch => "info/lfs/objects/batch",
            Self::LfsLocks => "info/lfs/locks",
        })
    }
}

/// A short, printable quote of workspace text for an error.
fn clip(s: &str) -> String {
    s.chars().take(120).flat_map(char::escape_debug).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: &str, path: &str) -> Result<GitPath, GitPathError> {
        GitPath::parse(method, path)
    }

    #[test]
    fn the_smart_http_endpoints_pass() {
        let cases = [
            (
                "GET",
                "/acme/app.git/info/refs?service=git-upload-pack",
                Endpoint::FetchRefs,
            ),
            (
                "GET",
                "/acme/app/info/refs?service=git-receive-pack",
                Endpoint::PushRefs,
            ),
            (
                "POST",
                "/acme/app.git/git-upload-pack",
                Endpoint::UploadPack,
            ),
            (
                "POST",
                "/acme/app.git/git-receive-pack",
                Endpoint::ReceivePack,
            ),
            (
                "POST",
                "/acme/app.git/info/lfs/objects/batch",
                Endpoint::LfsBatch,
            ),
            (
                "GET",
                "/acme/app.git/info/lfs/locks?path=a",
                Endpoint::LfsLocks,
            ),
            (
                "POST",
                "/acme/app.git/info/lfs/locks/verify",
                Endpoint::LfsLocks,
            ),
            (
                "POST",
                "/acme/app.git/info/lfs/locks/12ab/unlock",
                Endpoint::LfsLocks,
            ),
        ];
        for (method, path, endpoint) in cases {
            let p = parse(method, path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(
                (p.repo.as_str(), p.endpoint),
                ("acme/app", endpoint),
                "{path}"
            );
        }
        let p = parse("POST", "/g/sub/r.git/git-receive-pack").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (p.repo.as_str(), p.raw_repo.as_str()),
            ("g/sub/r", "g/sub/r.git")
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let endpoints = [
            ("GET", "/acme/app.git/info/refs"),
            ("GET", "/acme/app.git/info/refs?service=git-upload-archive"),
            ("GET", "/acme/app.git/info/refs?service=git-upload-pack&x=1"),
            ("POST", "/acme/app.git/info/refs?service=git-upload-pack"),
            ("GET", "/acme/app.git/git-upload-pack"),
            ("POST", "/acme/app.git/git-receive-pack?x"),
            ("GET", "/acme/app.git/HEAD"),
            ("GET", "/acme/app.git/objects/info/packs"),
            ("PUT", "/acme/app.git/info/lfs/objects/batch"),
            ("POST", "/acme/app.git/info/lfs/locks/a%2fb/unlock"),
            ("POST", "/acme/app.git"),
            ("GET", "m/acme/app.git/info/refs?service=git-upload-pack"),
        ];
        for (method, path) in endpoints {
            assert!(
                matches!(parse(method, path), Err(GitPathError::Endpoint { .. })),
                "{method} {path}"
            );
        }
        let repos = [
            "/acme/../other/git-upload-pack",
            "/acme//app/git-upload-pack",
            "/acme/%2e%2e/app/git-upload-pack",
            "/acme%2fapp/git-upload-pack",
            "/-oProxyCommand=x/git-upload-pack",
            "/acme/-u/git-upload-pack",
            "/acme/.hidden/git-upload-pack",
            "/acme/a b/git-upload-pack",
            "/acme/a\\b/git-upload-pack",
            "/.git/git-upload-pack",
            "/git-upload-pack",
            "//git-upload-pack",
        ];
        for path in repos {
            assert!(parse("POST", path).is_err(), "{path}");
        }
        assert!(parse("POST", &format!("/{}/git-upload-pack", "a".repeat(300))).is_err());
    }

    #[test]
    fn hosts() {
        for good in ["github.com", "10.0.0.1:8443", "git-host", "a.b-c.d:1"] {
            assert!(check_host(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-oProxyCommand=x",
            "a b",
            "host:",
            "host:0",
            "host:99999",
            "host:08",
            "user@host",
            "a..b",
            "[::1]",
            "host/x",
            "-host",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }
}
