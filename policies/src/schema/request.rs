//! The vocabulary of requests: what a forwarded call asks the laptop to
//! do, as plain data, so that deciding stays pure.

use nexus_protocol::Section;

/// What the untrusted workspace reports about the process making a call.
///
/// It may only ever narrow what the policy allows, never grant more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// User id of the calling process, if reported.
    pub uid: Option<u32>,
    /// Process id of the calling process, if reported.
    pub pid: Option<u32>,
    /// Executable path of the calling process, if reported.
    pub exe: Option<String>,
    /// Working directory of the calling process, if reported.
    pub cwd: Option<String>,
}

/// What a forwarded call asks the laptop to do: plain data, so that deciding
/// stays pure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action<'a> {
    /// Hand out the token declared as `[tokens.NAME]`.
    Token {
        /// The token name as the workspace sent it (untrusted).
        name: &'a str,
    },
    /// Sign an SSH userauth request (after a verified `session-bind@openssh.com`).
    ///
    /// Allowed by the first `[[ssh.allow]]` rule, in file order, that pins
    /// `host_key` ([`SshRule::pins`](crate::SshRule::pins)), whose `user` is `*` or equals `user`,
    /// whose `keys` are absent or list `key`, that sets `forwarding = true` if
    /// `forwarding`, and that no `[[ssh.deny]]` rule matches (host = that
    /// rule's host or any name the host key goes by, user, key).
    SshUserauth {
        /// The host key of the session bind and what known_hosts says of it.
        host_key: BoundHostKey<'a>,
        /// The user name in the userauth request (untrusted).
        user: &'a str,
        /// Fingerprint (`SHA256:...`) of the agent key asked to sign.
        key: &'a str,
        /// The bind's `is_forwarding` flag (the session is an onward hop).
        forwarding: bool,
    },
    /// Sign an SSHSIG blob (`ssh-keygen -Y sign`, git commit signing).
    ///
    /// Allowed by the first `[[ssh.allow]]` rule listing `namespace` in its
    /// `sshsig_namespaces` whose `keys` are absent or list `key`, unless an
    /// `[[ssh.deny]]` rule with `key = KEY` exists (its host and user fields
    /// are ignored: a signature names neither; a deny without `key` never
    /// matches a signature).
    SshSig {
        /// The SSHSIG namespace (untrusted).
        namespace: &'a str,
        /// Fingerprint (`SHA256:...`) of the agent key asked to sign.
        key: &'a str,
    },
    /// Sign an SSH userauth request on an agent connection with no session
    /// bind (clients such as paramiko, Go's x/crypto/ssh, libssh2 send none),
    /// so no host is known.
    ///
    /// Allowed by the first `[[ssh.allow]]` rule that sets
    /// `require_session_bind = false` and admits `user` and `key`, unless an
    /// `[[ssh.deny]]` rule matches (host = that rule's host, user, key).
    SshUnboundUserauth {
        /// The user name in the userauth request (untrusted).
        user: &'a str,
        /// Fingerprint (`SHA256:...`) of the agent key asked to sign.
        key: &'a str,
    },
    /// An onward hop: an earlier session bound on the same agent connection,
    /// marked as forwarding the agent. Allowed when a rule pinning its host
    /// key sets `forwarding = true` and no deny rule for that host (or any
    /// name the host key goes by) applies.
    SshHop {
        /// The hop's host key and what known_hosts says of it.
        host_key: BoundHostKey<'a>,
    },
    /// Whether an agent identity may be shown to the workspace (identities
    /// not allowed are hidden from the list).
    ///
    /// Allowed when any `[[ssh.allow]]` rule admits `key` and no `[[ssh.deny]]`
    /// rule with only a `key` field (no host, no user) names it.
    SshIdentity {
        /// Fingerprint (`SHA256:...`) of the identity.
        key: &'a str,
    },
    /// A git credential helper call (`[[git-credential.allow]]`).
    GitCredential {
        /// URL scheme git sent (untrusted).
        protocol: &'a str,
        /// Host (and port) git sent (untrusted).
        host: &'a str,
        /// Repository path, sent with `credential.useHttpPath` (untrusted).
        path: Option<&'a str>,
        /// The account git names, if any (untrusted).
        username: Option<&'a str>,
        /// get, store or erase.
        action: GitAction,
    },
    /// Read one laptop file (`[[files.allow]]`): `~/x` or `/x`, normalized
    /// by the proxy (untrusted content).
    File {
        /// The path.
        path: &'a str,
    },
    /// Install a named set of files (`[files.sets.NAME]`).
    FileSet {
        /// The set name (untrusted).
        name: &'a str,
    },
    /// Run a custom tool (`[tools.NAME]`) with these arguments.
    Tool {
        /// The tool name (untrusted).
        name: &'a str,
        /// The arguments after the declared command (untrusted).
        args: &'a [String],
    },
    /// An HTTP request through `$NEXUS_HTTP_URL/NAME/...` (`[http.NAME]`).
    /// The path is checked like [`HttpRule::url_for`](crate::HttpRule::url_for) checks it, then
    /// matched against the rule's `methods` and `paths`.
    Http {
        /// The API name (untrusted).
        name: &'a str,
        /// The request method (untrusted), e.g. `POST`.
        method: &'a str,
        /// The path after `/NAME`, without the query (untrusted).
        path: &'a str,
    },
    /// Git brokered by the laptop (`[[git.allow]]`): a fetch of a
    /// repository, or a push with all its ref updates, decided at once.
    Git {
        /// `HOST` or `HOST:PORT` (untrusted).
        host: &'a str,
        /// Repository path as git sent it, with or without a leading `/`
        /// and a trailing `.git` (untrusted).
        repo: &'a str,
        /// Fetch, or push with its ref updates.
        op: GitOp<'a>,
    },
}

/// What a brokered git connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitOp<'a> {
    /// Fetch or clone (`git-upload-pack`).
    Fetch,
    /// Open a push connection (`git-receive-pack`) before its ref updates
    /// are known: allowed when a rule may push anything to the repository.
    PushOpen,
    /// A push with these ref updates: allowed only if every one is.
    Push(&'a [GitRefUpdate]),
}

/// One ref update of a push, as the policy judges it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitRefUpdate {
    /// The full ref name, e.g. `refs/heads/agent/x`.
    pub name: String,
    /// Whether the update deletes the ref.
    pub delete: bool,
}

impl Action<'_> {
    /// The policy section that decides this action.
    #[must_use]
    pub fn section(&self) -> Section {
        match self {
            Action::Token { .. } => Section::Tokens,
            Action::SshUserauth { .. }
            | Action::SshUnboundUserauth { .. }
            | Action::SshSig { .. }
            | Action::SshHop { .. }
            | Action::SshIdentity { .. } => Section::Ssh,
            Action::GitCredential { .. } => Section::GitCredential,
            Action::File { .. } | Action::FileSet { .. } => Section::Files,
            Action::Tool { .. } => Section::Tools,
            Action::Http { .. } => Section::Http,
            Action::Git { .. } => Section::Git,
        }
    }
}

/// One request to decide.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The laptop's pairing name of the workspace the call came from.
    pub workspace: &'a str,
    /// Caller details reported by the untrusted workspace, if any; no v1 rule uses them.
    pub caller: Option<&'a Caller>,
    /// What is asked.
    pub action: Action<'a>,
}

/// A host key bound by `session-bind@openssh.com`, with what the laptop's
/// known_hosts says of it: data the proxy gathers, so that the engine reads no file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundHostKey<'a> {
    /// The key in SSH wire form (the base64-decoded second field of a
    /// known_hosts or `host_keys` line).
    pub blob: &'a [u8],
    /// The rule hosts (`HOST` or `HOST:PORT`) for which the laptop's
    /// known_hosts pins this key, `@revoked` keys excluded. Hashed known_hosts
    /// names can only be checked this way, one candidate host at a time.
    pub known_hosts_pins: &'a [String],
    /// Every name the key is known under: the plain names known_hosts lists
    /// it under and the hosts of the rules that pin it. A host key names no
    /// host, so a deny rule for any of these names applies: one key shared by
    /// `dev` and `prod` must not let a `dev` rule reach `prod`.
    pub known_as: &'a [String],
    /// The host certificate, when the bound key is one whose CA signature
    /// and validity the proxy verified (its `blob` is then the certified key).
    pub cert: Option<HostCertificate<'a>>,
}

/// A verified host certificate of a bound host key: a rule pins the key when
/// its CA is one the rule trusts and a principal names the rule's host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostCertificate<'a> {
    /// The CA key in SSH wire form.
    pub ca: &'a [u8],
    /// The certificate's principals (host names).
    pub principals: &'a [String],
    /// The rule hosts (`HOST` or `HOST:PORT`) for which the laptop's
    /// known_hosts has an `@cert-authority` line with this CA.
    pub known_hosts_cas: &'a [String],
}

/// What the workspace's git asks the helper to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitAction {
    /// `get`: hand out a credential.
    Get,
    /// `store`: pass a working credential on to the laptop's helpers.
    Store,
    /// `erase`: tell the laptop's helpers a credential was rejected.
    Erase,
}

impl GitAction {
    /// The name used in `actions` and by git.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            GitAction::Get => "get",
            GitAction::Store => "store",
            GitAction::Erase => "erase",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "get" => Some(GitAction::Get),
            "store" => Some(GitAction::Store),
            "erase" => Some(GitAction::Erase),
            _ => None,
        }
    }
}
