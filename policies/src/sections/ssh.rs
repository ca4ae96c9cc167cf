//! The `ssh` section: which hosts, users and keys the laptop's SSH agent may
//! sign for, which SSHSIG namespaces it may sign, and the three SSH decisions.
//!
//! Its keys are declared in the `Field` tables below and documented in
//! `docs/policy.md`.
//!
//! The session bind names a host *key*, never a host name, so the engine never
//! sees host names from the workspace: the proxy passes the bound key and what
//! the laptop's known_hosts says of it ([`BoundHostKey`]), and a rule pins the
//! key when its `host_keys` hold it or, without `host_keys`, when known_hosts
//! pins it for the rule's host.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use toml::de::DeValue;

use crate::schema::decision::{Approve, Decided, RuleRef, Verdict, shown_name};
use crate::schema::diag::Diagnostic;
use crate::schema::probe::{ProbeArgs, clip};
use crate::schema::rate::Rate;
use crate::schema::read::Glob;
use crate::schema::read::{Parser, Value};
use crate::schema::request::{Action, BoundHostKey, HostCertificate};
use crate::schema::section::{PolicySection, SectionGrant, Terms};
use crate::schema::{APPROVE, DESCRIPTION, Field, Kind, RATE, Table};

/// The keys of `[[ssh.allow]]`.
const ALLOW_FIELDS: &[Field] = &[
    Field::required(
        "host",
        "host",
        "`HOST` or `HOST:PORT`, one exact host, no globs",
    )
    .read(Kind::Checked {
        expected: "\"HOST\" or \"HOST:PORT\"",
        check: check_host,
    }),
    Field::required(
        "user",
        "string",
        "the remote user, exact, or `\"*\"` for any",
    )
    .read(Kind::Checked {
        expected: "a user name like \"git\", or \"*\"",
        check: check_user,
    }),
    Field::optional(
        "keys",
        "list of fingerprints",
        "agent keys allowed (`SHA256:...`, as `ssh-add -l` prints them)",
    )
    .default("every key in the laptop agent")
    .read(Kind::List {
        expected: "an array of key fingerprints like [\"SHA256:...\"]",
        check: check_fingerprint,
        when_empty: "the rule would allow no key; leave keys out to allow every key in the \
                     laptop agent, or list fingerprints from `ssh-add -l`",
    }),
    Field::optional(
        "host_keys",
        "list of public keys",
        "pinned host keys (`ALGO BASE64`), instead of the laptop's known_hosts",
    )
    .default("the laptop's known_hosts for host")
    .read(Kind::List {
        expected: "an array of host public keys like [\"ssh-ed25519 AAAA...\"]",
        check: check_host_key,
        when_empty: "the rule would pin no host key; leave host_keys out to use the laptop's \
                     known_hosts for host, or list keys from `ssh-keyscan HOST`",
    }),
    Field::optional(
        "host_ca",
        "list of public keys",
        "CA keys whose host certificates naming `host` are pinned (as `@cert-authority` in known_hosts)",
    )
    .default("the laptop's known_hosts `@cert-authority` lines for host")
    .read(Kind::List {
        expected: "an array of CA public keys like [\"ssh-ed25519 AAAA...\"]",
        check: check_host_key,
        when_empty: "the rule would trust no CA; leave host_ca out",
    }),
    Field::optional(
        "require_session_bind",
        "bool",
        "`false` lets clients without session-bind (paramiko, Go, libssh2) log in with no host check",
    )
    .default("true")
    .read(Kind::Bool),
    Field::optional(
        "sshsig_namespaces",
        "list of strings",
        "SSHSIG namespaces the keys may sign (`git` for commit signing)",
    )
    .default("[]")
    .read(Kind::List {
        expected: "an array of namespaces like [\"git\"]",
        check: check_namespace,
        when_empty: "",
    }),
    Field::optional(
        "forwarding",
        "bool",
        "allow sessions that forward the agent onward",
    )
    .default("false")
    .read(Kind::Bool),
    APPROVE,
    RATE,
    DESCRIPTION,
];

/// The keys of `[[ssh.deny]]`; at least one of the first three.
const DENY_FIELDS: &[Field] = &[
    Field::optional(
        "host",
        "glob",
        "glob over the allow rule's host, case-insensitive",
    )
    .read(Kind::Glob("host names like \"prod-*\"")),
    Field::optional("user", "glob", "glob over the user, case-insensitive")
        .read(Kind::Glob("user names like \"root\"")),
    Field::optional("key", "fingerprint", "one agent key, exact").read(Kind::Checked {
        expected: "a key fingerprint like \"SHA256:...\"",
        check: check_fingerprint,
    }),
    DESCRIPTION,
];

/// The tables of the `ssh` section.
const TABLES: &[Table] = &[
    Table {
        header: "[[ssh.allow]]",
        fields: ALLOW_FIELDS,
    },
    Table {
        header: "[[ssh.deny]]",
        fields: DENY_FIELDS,
    },
];

/// Key types accepted in `host_keys`, as OpenSSH writes them.
pub(crate) const HOST_KEY_ALGORITHMS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The standard base64 alphabet, in value order.
const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 characters of an unpadded SHA-256 digest.
const FINGERPRINT_B64_LEN: usize = 43;

/// Longest host name (DNS limit).
const MAX_HOST_LEN: usize = 253;

/// The accepted shape of a fingerprint, for error messages.
const FINGERPRINT_EXPECTED: &str =
    "expected SHA256: followed by 43 base64 characters, as `ssh-add -l` prints it";

/// An `[[ssh.allow]]` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshRule {
    /// `HOST` or `HOST:PORT`, as written (one exact host; no globs).
    pub host: String,
    /// The remote user name, exact, or `*` for any user.
    pub user: String,
    /// Key fingerprints (`SHA256:...`) allowed; `None` allows every key in the laptop agent.
    pub keys: Option<Vec<String>>,
    /// Pinned host public keys, one OpenSSH line each (`ALGO BASE64 [COMMENT]`,
    /// verbatim); `None` means the laptop's `known_hosts` entries for `host`.
    pub host_keys: Option<Vec<String>>,
    /// CA public keys (`ALGO BASE64 [COMMENT]`) whose host certificates for
    /// `host` are pinned, besides known_hosts `@cert-authority` lines.
    pub host_ca: Option<Vec<String>>,
    /// Whether userauth signatures need a verified session bind; `false`
    /// signs for this rule's user and keys with no host known.
    pub require_session_bind: bool,
    /// SSHSIG namespaces this rule allows signing for (`ssh-keygen -Y sign -n NS`); may be empty.
    pub sshsig_namespaces: Vec<String>,
    /// Whether sessions bound with `is_forwarding = true` (onward hops) are allowed.
    pub forwarding: bool,
    /// Whether the laptop user must approve each use.
    pub approve: Option<Approve>,
    /// Optional rate limit, enforced by the laptop.
    pub rate: Option<Rate>,
    /// Where the rule is written.
    pub rule: RuleRef,
}

impl SshRule {
    /// The host name and the port of [`host`](Self::host): `("github.com", None)`
    /// for `github.com`, `("git.example", Some(2222))` for `git.example:2222`.
    ///
    /// Never panics: a `host` that does not end in a valid port comes back whole.
    #[must_use]
    pub fn host_port(&self) -> (&str, Option<u16>) {
        split_port(&self.host)
    }

    /// Whether this rule pins `bound`: one of its `host_keys`, or (when it has
    /// none) a key the laptop's known_hosts pins for its `host`; or a host
    /// certificate naming `host` from a CA in `host_ca` or (without
    /// `host_keys`) in known_hosts `@cert-authority` lines for `host`.
    #[must_use]
    pub fn pins(&self, bound: &BoundHostKey<'_>) -> bool {
        let by_key = match &self.host_keys {
            Some(lines) => lines
                .iter()
                .any(|l| host_key_blob(l).as_deref() == Some(bound.blob)),
            None => bound.known_hosts_pins.contains(&self.host),
        };
        by_key || bound.cert.is_some_and(|c| self.pins_cert(&c))
    }

    fn pins_cert(&self, cert: &HostCertificate<'_>) -> bool {
        let name = self.host_port().0;
        if !cert.principals.iter().any(|p| p.eq_ignore_ascii_case(name)) {
            return false;
        }
        let by_rule = self.host_ca.as_ref().is_some_and(|cas| {
            cas.iter()
                .any(|l| host_key_blob(l).as_deref() == Some(cert.ca))
        });
        by_rule || (self.host_keys.is_none() && cert.known_hosts_cas.contains(&self.host))
    }

    /// Whether this rule admits the agent key with fingerprint `key`.
    fn admits_key(&self, key: &str) -> bool {
        self.keys
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k == key))
    }

    /// Whether this rule admits the remote user `user`.
    fn admits_user(&self, user: &str) -> bool {
        self.user == "*" || self.user == user
    }
}

/// `host:port` split when the port is valid, else the whole string.
fn split_port(host: &str) -> (&str, Option<u16>) {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            match port.parse::<u16>() {
                Ok(p) if p != 0 => (name, Some(p)),
                _ => (host, None),
            }
        }
        _ => (host, None),
    }
}

/// The wire blob of a `host_keys` line (`ALGO BASE64 [COMMENT]`).
fn host_key_blob(line: &str) -> Option<Vec<u8>> {
    STANDARD.decode(line.split_whitespace().nth(1)?).ok()
}

/// An `[[ssh.deny]]` rule; at least one of `host`, `user`, `key` is set.
#[derive(Clone, Debug)]
pub(crate) struct SshDenyRule {
    /// Glob over the host of the allow rule that would admit the request.
    pub host: Option<Glob>,
    /// Glob over the remote user.
    pub user: Option<Glob>,
    /// Exact key fingerprint.
    pub key: Option<String>,
    /// Where the rule is written.
    pub rule: RuleRef,
}

impl SshDenyRule {
    /// Whether the host glob (if any) matches `host`, with or without its port,
    /// so that `host = "git.example"` also denies a rule for `git.example:2222`.
    fn matches_host(&self, host: &str) -> bool {
        self.host
            .as_ref()
            .is_none_or(|g| g.matcher.is_match(host) || g.matcher.is_match(split_port(host).0))
    }

    /// Whether this rule denies a login as `user` with `key` through an allow rule for `host`.
    fn denies_userauth(&self, host: &str, user: &str, key: &str) -> bool {
        self.matches_host(host)
            && self.user.as_ref().is_none_or(|g| g.matcher.is_match(user))
            && self.key.as_ref().is_none_or(|k| k == key)
    }

    /// Whether this rule denies an onward hop through `host`. The hop names no
    /// user and no key, so those fields count as matching: any deny rule
    /// that could apply to the host blocks the hop.
    fn denies_hop(&self, host: &str) -> bool {
        self.matches_host(host)
    }

    /// Whether this rule denies an SSHSIG signature with `key`: only the `key`
    /// field applies (a signature names no host and no user).
    fn denies_sshsig(&self, key: &str) -> bool {
        self.key.as_ref().is_some_and(|k| k == key)
    }

    /// Whether this rule hides the identity `key`: only a rule with a `key` and
    /// no host or user field (those keep the key usable elsewhere).
    fn denies_identity(&self, key: &str) -> bool {
        self.host.is_none() && self.user.is_none() && self.denies_sshsig(key)
    }
}

/// `[[ssh.deny]] host = "..." user = "..." key = ... (file:line)`.
fn describe_deny(deny: &SshDenyRule) -> String {
    let mut out = "[[ssh.deny]]".to_owned();
    if let Some(g) = &deny.host {
        out.push_str(&format!(" host = {:?}", g.pattern));
    }
    if let Some(g) = &deny.user {
        out.push_str(&format!(" user = {:?}", g.pattern));
    }
    if let Some(k) = &deny.key {
        out.push_str(&format!(" key = {k}"));
    }
    out.push_str(&format!(" ({})", deny.rule));
    out
}

/// A key fingerprint for a reason line: as is when well formed, else quoted and cut.
fn shown_key(key: &str) -> String {
    if check_fingerprint(key).is_ok() {
        key.to_owned()
    } else {
        shown_name(key)
    }
}

/// A denial by a deny rule.
fn denied(deny: &SshDenyRule, what: String) -> Decided<SshRule> {
    Decided {
        verdict: Verdict::Deny,
        reason: format!("{what} denied by {}", describe_deny(deny)),
        rule: Some(deny.rule.clone()),
        grant: None,
    }
}

/// A default denial (no rule decided), with a reason naming the closest rule.
fn not_allowed(reason: String) -> Decided<SshRule> {
    Decided {
        verdict: Verdict::Deny,
        reason,
        rule: None,
        grant: None,
    }
}

/// An allow by `rule`.
fn allowed(rule: &SshRule, what: String) -> Decided<SshRule> {
    Decided {
        verdict: Verdict::Allow,
        reason: format!("{what} allowed by [[ssh.allow]] ({})", rule.rule),
        rule: Some(rule.rule.clone()),
        grant: Some(rule.clone()),
    }
}

/// How far a pinned allow rule got before refusing a login; later variants rank higher.
enum Miss<'r> {
    /// The rule's user is another one.
    User(&'r SshRule),
    /// The rule lists other keys.
    Key(&'r SshRule),
    /// The session is forwarded and the rule does not allow it.
    Forwarding(&'r SshRule),
    /// Everything matched but a deny rule applies.
    Denied(&'r SshRule, &'r SshDenyRule),
}

impl Miss<'_> {
    /// Rank: the reason given is that of the rule that got furthest.
    fn rank(&self) -> u8 {
        match self {
            Miss::User(_) => 0,
            Miss::Key(_) => 1,
            Miss::Forwarding(_) => 2,
            Miss::Denied(..) => 3,
        }
    }
}

/// The facts of one login signature, as the proxy established them.
pub(crate) struct Login<'a> {
    pub host_key: BoundHostKey<'a>,
    pub user: &'a str,
    pub key: &'a str,
    pub forwarding: bool,
}

/// `Action::SshUserauth`: the first allow rule, in file order, whose host key is
/// pinned and which admits user, key and forwarding, and that no deny rule hits.
pub(crate) fn decide_userauth(
    rules: &[SshRule],
    denies: &[SshDenyRule],
    login: &Login<'_>,
) -> Decided<SshRule> {
    let Login {
        host_key,
        user,
        key,
        forwarding,
    } = *login;
    let shown_user = shown_name(user);
    let shown_key = shown_key(key);
    let known_as = host_key.known_as;
    let mut best: Option<Miss<'_>> = None;
    for rule in rules {
        if !rule.pins(&host_key) {
            continue;
        }
        let miss = if !rule.admits_user(user) {
            Miss::User(rule)
        } else if !rule.admits_key(key) {
            Miss::Key(rule)
        } else if forwarding && !rule.forwarding {
            Miss::Forwarding(rule)
        } else if let Some(deny) = denies.iter().find(|d| {
            std::iter::once(rule.host.as_str())
                .chain(known_as.iter().map(String::as_str))
                .any(|host| d.denies_userauth(host, user, key))
        }) {
            Miss::Denied(rule, deny)
        } else {
            let hop = if forwarding { " (forwarded)" } else { "" };
            return allowed(
                rule,
                format!(
                    "ssh login as {shown_user} to {} with key {shown_key}{hop}",
                    rule.host
                ),
            );
        };
        if best.as_ref().is_none_or(|b| b.rank() < miss.rank()) {
            best = Some(miss);
        }
    }
    match best {
        None => not_allowed("no [[ssh.allow]] rule pins this host key".to_owned()),
        Some(Miss::User(rule)) => not_allowed(format!(
            "user {shown_user} is not allowed for {} (rule {} allows {:?})",
            rule.host, rule.rule, rule.user
        )),
        Some(Miss::Key(rule)) => not_allowed(format!(
            "key {shown_key} is not allowed for {} (rule {} lists other keys)",
            rule.host, rule.rule
        )),
        Some(Miss::Forwarding(rule)) => not_allowed(format!(
            "the session is forwarded (onward hop) and no rule for {} sets forwarding = true \
             (rule {} does not)",
            rule.host, rule.rule
        )),
        Some(Miss::Denied(rule, deny)) => denied(
            deny,
            format!(
                "ssh login as {shown_user} to {} with key {shown_key}",
                rule.host
            ),
        ),
    }
}

/// `Action::SshUnboundUserauth`: the first allow rule with
/// `require_session_bind = false` admitting user and key, unless a deny rule
/// for its host, the user or the key applies.
pub(crate) fn decide_unbound(
    rules: &[SshRule],
    denies: &[SshDenyRule],
    user: &str,
    key: &str,
) -> Decided<SshRule> {
    let shown_user = shown_name(user);
    let shown_key = shown_key(key);
    let opted: Vec<&SshRule> = rules.iter().filter(|r| !r.require_session_bind).collect();
    for rule in &opted {
        if !rule.admits_user(user) || !rule.admits_key(key) {
            continue;
        }
        let what = format!(
            "ssh login as {shown_user} with key {shown_key}, no session-bind (rule for {})",
            rule.host
        );
        if let Some(deny) = denies
            .iter()
            .find(|d| d.denies_userauth(&rule.host, user, key))
        {
            return denied(deny, what);
        }
        return allowed(rule, what);
    }
    not_allowed(if opted.is_empty() {
        format!(
            "the ssh client sent no session-bind, so the host is unknown: key {shown_key} signs \
             such logins only under a rule with require_session_bind = false (none is set); \
             use OpenSSH 8.9 or later, or opt in if this key may log in to any host that accepts it"
        )
    } else {
        format!(
            "the ssh client sent no session-bind, and no rule with require_session_bind = false \
             admits user {shown_user} with key {shown_key}"
        )
    })
}

/// `Action::SshHop`: an earlier session on the agent connection that forwarded
/// the agent onward. Allowed by the first allow rule pinning its host key that
/// sets `forwarding = true`, unless a deny rule for that host applies.
pub(crate) fn decide_hop(
    rules: &[SshRule],
    denies: &[SshDenyRule],
    host_key: &BoundHostKey<'_>,
) -> Decided<SshRule> {
    let known_as = host_key.known_as;
    let mut refused: Option<&SshRule> = None;
    for rule in rules.iter().filter(|r| r.pins(host_key)) {
        if !rule.forwarding {
            refused.get_or_insert(rule);
            continue;
        }
        let hosts =
            || std::iter::once(rule.host.as_str()).chain(known_as.iter().map(String::as_str));
        if let Some(deny) = denies.iter().find(|d| hosts().any(|h| d.denies_hop(h))) {
            return denied(deny, format!("agent forwarding onward from {}", rule.host));
        }
        return allowed(rule, format!("agent forwarding onward from {}", rule.host));
    }
    match refused {
        None => {
            not_allowed("an onward hop goes through a host no [[ssh.allow]] rule pins".to_owned())
        }
        Some(rule) => not_allowed(format!(
            "agent forwarding onward from {} needs forwarding = true (rule {} does not set it)",
            rule.host, rule.rule
        )),
    }
}

/// `Action::SshSig`: a deny rule with a matching `key` first, then the first
/// allow rule listing the namespace and admitting the key.
pub(crate) fn decide_sshsig(
    rules: &[SshRule],
    denies: &[SshDenyRule],
    namespace: &str,
    key: &str,
) -> Decided<SshRule> {
    let shown_ns = shown_name(namespace);
    let shown_key = shown_key(key);
    let what = || format!("SSHSIG signature in namespace {shown_ns} with key {shown_key}");
    if let Some(deny) = denies.iter().find(|d| d.denies_sshsig(key)) {
        return denied(deny, what());
    }
    let mut listing = rules
        .iter()
        .filter(|r| r.sshsig_namespaces.iter().any(|n| n == namespace));
    let Some(first) = listing.clone().next() else {
        return not_allowed(format!(
            "SSHSIG namespace {shown_ns} is not listed in the sshsig_namespaces of any [[ssh.allow]] rule"
        ));
    };
    match listing.find(|r| r.admits_key(key)) {
        Some(rule) => allowed(rule, what()),
        None => not_allowed(format!(
            "key {shown_key} is not allowed to sign SSHSIG namespace {shown_ns} (rule {} lists other keys)",
            first.rule
        )),
    }
}

/// `Action::SshIdentity`: a key-only deny rule first, then the first allow rule admitting the key.
pub(crate) fn decide_identity(
    rules: &[SshRule],
    denies: &[SshDenyRule],
    key: &str,
) -> Decided<SshRule> {
    let shown_key = shown_key(key);
    let what = || format!("identity {shown_key}");
    if let Some(deny) = denies.iter().find(|d| d.denies_identity(key)) {
        return denied(deny, what());
    }
    match rules.iter().find(|r| r.admits_key(key)) {
        Some(rule) => allowed(rule, what()),
        None if rules.is_empty() => not_allowed(format!(
            "identity {shown_key} hidden: there is no [[ssh.allow]] rule"
        )),
        None => not_allowed(format!(
            "identity {shown_key} hidden: no [[ssh.allow]] rule lists this key"
        )),
    }
}

/// Warnings about allow rules that a deny rule always blocks.
fn cross_check(rules: &[SshRule], denies: &[SshDenyRule]) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    for rule in rules {
        let blocker = denies.iter().find(|d| {
            let user = d.user.as_ref().is_none_or(|g| {
                g.pattern == "*" || (rule.user != "*" && g.matcher.is_match(&rule.user))
            });
            let key = d.key.as_ref().is_none_or(|k| {
                rule.keys
                    .as_ref()
                    .is_some_and(|keys| keys.iter().all(|x| x == k))
            });
            // A deny without `key` leaves SSHSIG signing of the rule usable.
            let signing_left = d.key.is_none() && !rule.sshsig_namespaces.is_empty();
            d.matches_host(&rule.host) && user && key && !signing_left
        });
        if let Some(deny) = blocker {
            warnings.push(Diagnostic {
                file: rule.rule.file.clone(),
                line: rule.rule.line,
                col: rule.rule.col,
                message: format!(
                    "[[ssh.allow]] host = {:?} user = {:?} is always denied by {}",
                    rule.host,
                    rule.user,
                    describe_deny(deny)
                ),
            });
        }
    }
    for rule in rules.iter().filter(|r| !r.require_session_bind) {
        let keys = rule
            .keys
            .as_ref()
            .map_or_else(|| "every agent key".to_owned(), |k| k.join(", "));
        warnings.push(Diagnostic {
            file: rule.rule.file.clone(),
            line: rule.rule.line,
            col: rule.rule.col,
            message: format!(
                "[[ssh.allow]] host = {:?} sets require_session_bind = false: {keys} can log in \
                 as {:?} to any host that accepts it, not only {}",
                rule.host, rule.user, rule.host
            ),
        });
    }
    warnings
}

/// Every ssh rule of one source (or, merged, of all).
#[derive(Clone, Debug, Default)]
pub(crate) struct SshSection {
    /// `[[ssh.allow]]`, in source order.
    pub rules: Vec<SshRule>,
    /// `[[ssh.deny]]`, in source order.
    pub denies: Vec<SshDenyRule>,
}

impl PolicySection for SshSection {
    const NAME: nexus_protocol::Section = nexus_protocol::Section::Ssh;
    const TABLES: &'static [Table] = TABLES;

    fn parse(p: &mut Parser<'_, '_, Self>, value: &Value<'_>) {
        p.ssh(value);
    }

    fn append(&mut self, other: Self) {
        self.rules.extend(other.rules);
        self.denies.extend(other.denies);
    }

    fn add_denies_from(&mut self, other: &Self) {
        self.denies.extend(other.denies.iter().cloned());
    }

    fn cross_check(&self) -> Vec<Diagnostic> {
        cross_check(&self.rules, &self.denies)
    }

    /// `op=userauth` (the default), `hop`, `sshsig` or `identity`. A probe
    /// names a host, not a host key: it stands for the first `host_keys`
    /// entry of a rule for that host in any layer, or for a key the
    /// laptop's known_hosts pins for the host.
    fn probe<T>(
        args: &ProbeArgs<'_>,
        layers: &[&Self],
        decide: impl FnOnce(Action<'_>) -> T,
    ) -> Result<T, String> {
        // Rules without `keys` admit any key; this stands for "some agent key".
        const ANY_KEY: &str = "(any agent key)";
        let key = args.arg("key").unwrap_or(ANY_KEY);
        match args.arg("op").unwrap_or("userauth") {
            op @ ("userauth" | "hop") => {
                let keys: &[&str] = if op == "hop" {
                    &["op", "host"]
                } else {
                    &["op", "host", "user", "key", "forwarding"]
                };
                args.check_keys(keys)?;
                let host = args.need("host", "github.com")?;
                let forwarding = match args.arg("forwarding") {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => {
                        return Err(format!(
                            "forwarding={:?}: expected true or false",
                            clip(other)
                        ));
                    }
                };
                let names = [host.to_owned()];
                let blob = probe_host_key(layers, host);
                let host_key = BoundHostKey {
                    blob: &blob,
                    known_hosts_pins: &names,
                    known_as: &names,
                    cert: None,
                };
                let action = if op == "hop" {
                    Action::SshHop { host_key }
                } else {
                    Action::SshUserauth {
                        host_key,
                        user: args.need("user", "git")?,
                        key,
                        forwarding,
                    }
                };
                Ok(decide(action))
            }
            "sshsig" => {
                args.check_keys(&["op", "namespace", "key"])?;
                let namespace = args.need("namespace", "git")?;
                Ok(decide(Action::SshSig { namespace, key }))
            }
            "identity" => {
                args.check_keys(&["op", "key"])?;
                let key = args.need("key", "SHA256:...")?;
                Ok(decide(Action::SshIdentity { key }))
            }
            other => Err(format!(
                "unknown ssh op {:?}; expected userauth (default), sshsig, identity or hop",
                clip(other)
            )),
        }
    }

    fn beyond<'a>(&'a self, ceiling: &Self, capped: bool) -> Vec<(&'a RuleRef, String)> {
        self.rules
            .iter()
            .filter_map(|r| Some((&r.rule, beyond(ceiling, capped, r)?)))
            .collect()
    }
}

/// The host key a probe stands for: the first `host_keys` entry of a rule
/// for `host`, or none (then only known_hosts, which the probe says pins
/// `host`, can pin it).
fn probe_host_key(layers: &[&SshSection], host: &str) -> Vec<u8> {
    layers
        .iter()
        .flat_map(|s| &s.rules)
        .filter(|r| r.host == host)
        .find_map(|r| r.host_keys.as_ref()?.first()?.split_whitespace().nth(1))
        .and_then(|b64| STANDARD.decode(b64).ok())
        .unwrap_or_default()
}

/// Why an `[[ssh.allow]]` rule reaches past what baseline section `b`
/// allows (`capped`: it has allow rules), if it does.
fn beyond(b: &SshSection, capped: bool, rule: &SshRule) -> Option<String> {
    if let Some(deny) = b.denies.iter().find(|d| {
        d.user.is_none()
            && d.key.is_none()
            && d.host
                .as_ref()
                .is_some_and(|g| g.matcher.is_match(&rule.host))
    }) {
        return Some(format!(
            "the baseline denies host {} ({})",
            rule.host, deny.rule
        ));
    }
    if !capped {
        return None;
    }
    let covers = |r: &&SshRule| {
        r.host == rule.host
            && (r.user == "*" || r.user == rule.user)
            && match (&r.keys, &rule.keys) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(allowed), Some(wanted)) => wanted.iter().all(|k| allowed.contains(k)),
            }
            && (r.forwarding || !rule.forwarding)
            && (!r.require_session_bind || rule.require_session_bind)
            && rule.host_ca.as_ref().is_none_or(|cas| {
                r.host_ca
                    .as_ref()
                    .is_some_and(|allowed| cas.iter().all(|c| allowed.contains(c)))
            })
            && rule
                .sshsig_namespaces
                .iter()
                .all(|n| r.sshsig_namespaces.contains(n))
    };
    if b.rules.iter().any(|r| covers(&r)) {
        None
    } else {
        Some(format!(
            "no baseline [[ssh.allow]] rule covers host {}, user {:?} with these keys, \
             namespaces and forwarding",
            rule.host, rule.user
        ))
    }
}

impl SectionGrant for SshRule {
    fn terms(&self) -> Terms<'_> {
        Terms {
            rate: self.rate,
            approve: self.approve,
            rule: &self.rule,
        }
    }
}

impl Parser<'_, '_, SshSection> {
    /// `[ssh]`: `[[ssh.allow]]` and `[[ssh.deny]]`.
    fn ssh(&mut self, value: &Value<'_>) {
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(
                "ssh",
                value,
                found,
                "a table of [[ssh.allow]] and [[ssh.deny]] rules",
            );
        };
        for (key, value) in table {
            match key.get_ref().as_ref() {
                "allow" => self.rule_list("ssh.allow", value, Self::ssh_allow),
                "deny" => self.rule_list("ssh.deny", value, Self::ssh_deny),
                _ => self.unknown_key("ssh", key, "[[ssh.allow]] or [[ssh.deny]]"),
            }
        }
    }

    /// One `[[ssh.allow]]` rule.
    fn ssh_allow(&mut self, value: &Value<'_>) {
        const SECTION: &str = "ssh.allow";
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(
                SECTION,
                value,
                found,
                "a table with host = \"HOST\" and user = \"USER\"",
            );
        };
        let errors_before = self.report.errors.len();
        let hints = [("key", " (allow rules take a list, keys = [\"SHA256:...\"])")];
        let v = self.fields(SECTION, ALLOW_FIELDS, table, &hints);
        if !v.has("host") {
            self.report.error(
                &value.span(),
                "ssh.allow: missing host; expected host = \"HOST\" or \"HOST:PORT\" (e.g. \"github.com\")",
            );
        }
        if !v.has("user") {
            self.report.error(
                &value.span(),
                "ssh.allow: missing user; expected user = \"NAME\" (e.g. \"git\"), or \"*\" for any user",
            );
        }
        let (Some(host), Some(user)) = (v.text("host"), v.text("user")) else {
            return;
        };
        if self.report.errors.len() == errors_before {
            let rule = self.rule_ref(&value.span(), SECTION.to_owned());
            self.out.rules.push(SshRule {
                host: host.to_owned(),
                user: user.to_owned(),
                keys: v.list("keys"),
                host_keys: v.list("host_keys"),
                host_ca: v.list("host_ca"),
                require_session_bind: v.bool("require_session_bind").unwrap_or(true),
                sshsig_namespaces: v.list("sshsig_namespaces").unwrap_or_default(),
                forwarding: v.bool("forwarding").unwrap_or(false),
                approve: v.approve("approve"),
                rate: v.rate("rate"),
                rule,
            });
        }
    }

    /// One `[[ssh.deny]]` rule.
    fn ssh_deny(&mut self, value: &Value<'_>) {
        const SECTION: &str = "ssh.deny";
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(SECTION, value, found, "a table with host, user and/or key");
        };
        let errors_before = self.report.errors.len();
        let hints = [(
            "keys",
            " (a deny rule takes one key = \"SHA256:...\"; write one rule per key)",
        )];
        let v = self.fields(SECTION, DENY_FIELDS, table, &hints);
        if !["host", "user", "key"].iter().any(|k| v.has(k)) {
            self.report.error(
                &value.span(),
                "ssh.deny: a deny rule needs at least one of host, user or key (it matches when \
                 all of them match); to deny every SSH use, write host = \"*\"",
            );
        }
        if self.report.errors.len() == errors_before {
            let rule = self.rule_ref(&value.span(), SECTION.to_owned());
            self.out.denies.push(SshDenyRule {
                host: v.glob("host"),
                user: v.glob("user"),
                key: v.text("key").map(str::to_owned),
                rule,
            });
        }
    }
}

// --- Value checks -----------------------------------------------------------

/// `HOST` or `HOST:PORT`: one host name or IPv4 address, no globs, port 1-65535.
pub(crate) fn check_host(host: &str) -> Result<(), String> {
    const SHAPE: &str =
        "expected \"HOST\" or \"HOST:PORT\", e.g. \"github.com\" or \"git.example.com:2222\"";
    if host.is_empty() {
        return Err(format!("host is empty; {SHAPE}"));
    }
    let shown = shown_name(host);
    if host.contains(['*', '?', '!', ',']) {
        return Err(format!(
            "host {shown} is a pattern; an allow rule names one exact host ({SHAPE}); \
             use [[ssh.deny]] for globs"
        ));
    }
    if host.contains(['[', ']']) || host.matches(':').count() > 1 {
        return Err(format!(
            "host {shown}: IPv6 addresses and [HOST]:PORT are not supported; {SHAPE}"
        ));
    }
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if name.is_empty() {
        return Err(format!("host {shown} has an empty host name; {SHAPE}"));
    }
    if name.len() > MAX_HOST_LEN {
        return Err(format!(
            "host name is longer than {MAX_HOST_LEN} characters; {SHAPE}"
        ));
    }
    if host.contains("://") {
        return Err(format!("host {shown} is a URL; {SHAPE}"));
    }
    if name.starts_with(['-', '.']) {
        return Err(format!(
            "host {shown} starts with {:?}; {SHAPE}",
            &name[..1]
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "host {shown} contains {:?}; host names use A-Z a-z 0-9 . - _; {SHAPE}",
            bad
        ));
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !valid {
            return Err(format!(
                "port {} is not a number from 1 to 65535; {SHAPE}",
                shown_name(port)
            ));
        }
    }
    Ok(())
}

/// A remote user name, or `*`.
pub(crate) fn check_user(user: &str) -> Result<(), String> {
    const SHAPE: &str = "expected the exact remote user name, e.g. \"git\", or \"*\" for any user";
    if user.is_empty() {
        return Err(format!("user is empty; {SHAPE}"));
    }
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "user {} contains whitespace or a control character; {SHAPE}",
            shown_name(user)
        ));
    }
    if user != "*" && user.contains(['*', '?']) {
        return Err(format!(
            "user {} is a pattern; allow rules take one exact user or \"*\" (use [[ssh.deny]] for globs)",
            shown_name(user)
        ));
    }
    Ok(())
}

/// `SHA256:` and 43 base64 characters (an unpadded SHA-256 digest).
pub(crate) fn check_fingerprint(fp: &str) -> Result<(), String> {
    let shown = shown_name(fp);
    let Some(b64) = fp.strip_prefix("SHA256:") else {
        if fp.starts_with("MD5:") || fp.as_bytes().get(2) == Some(&b':') {
            return Err(format!(
                "fingerprint {shown} is an MD5 fingerprint; {FINGERPRINT_EXPECTED} (ssh-add -l -E sha256)"
            ));
        }
        return Err(format!(
            "fingerprint {shown} has no SHA256: prefix; {FINGERPRINT_EXPECTED}"
        ));
    };
    let unpadded = b64.trim_end_matches('=');
    if unpadded.len() != b64.len() && unpadded.len() == FINGERPRINT_B64_LEN {
        return Err(format!(
            "fingerprint {shown} ends in '=' padding; write it without, {FINGERPRINT_EXPECTED}"
        ));
    }
    if let Some(bad) = b64
        .chars()
        .find(|c| !c.is_ascii() || !BASE64_ALPHABET.contains(&(*c as u8)))
    {
        return Err(format!(
            "fingerprint {shown} contains {bad:?}, which is not base64; {FINGERPRINT_EXPECTED}"
        ));
    }
    if b64.len() != FINGERPRINT_B64_LEN {
        return Err(format!(
            "fingerprint {shown} has {} base64 characters after SHA256:; {FINGERPRINT_EXPECTED}",
            b64.len()
        ));
    }
    // 43 characters carry 258 bits for 256: the last character's low two bits are zero.
    let last = b64.as_bytes()[FINGERPRINT_B64_LEN - 1];
    let value = BASE64_ALPHABET.iter().position(|&b| b == last).unwrap_or(0);
    if value % 4 != 0 {
        return Err(format!(
            "fingerprint {shown} is not a SHA-256 digest (its last character is off; a typo?); \
             {FINGERPRINT_EXPECTED}"
        ));
    }
    Ok(())
}

/// `ALGO BASE64 [COMMENT]` with a known key type, base64 that decodes to a key
/// blob of that type. The key itself is not parsed further.
pub(crate) fn check_host_key(line: &str) -> Result<(), String> {
    const SHAPE: &str = "expected one OpenSSH public key line \"ALGO BASE64 [COMMENT]\", \
         e.g. from `ssh-keyscan HOST` without the host name";
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "host key contains a line break or control character; {SHAPE} (one key per string)"
        ));
    }
    let mut words = line.split_ascii_whitespace();
    let Some(algo) = words.next() else {
        return Err(format!("host key is empty; {SHAPE}"));
    };
    let blob = words.next();
    if !HOST_KEY_ALGORITHMS.contains(&algo) {
        if blob.is_some_and(|b| HOST_KEY_ALGORITHMS.contains(&b)) {
            return Err(format!(
                "host key starts with {}, which looks like the host names of a known_hosts line; \
                 drop them and keep \"ALGO BASE64\"",
                shown_name(algo)
            ));
        }
        if algo.starts_with('@') {
            return Err(format!(
                "host key starts with the marker {}; markers (@cert-authority, @revoked) are not \
                 supported, pin plain host keys",
                shown_name(algo)
            ));
        }
        return Err(format!(
            "unknown host key type {}; expected one of {}",
            shown_name(algo),
            HOST_KEY_ALGORITHMS.join(", ")
        ));
    }
    let Some(blob) = blob else {
        return Err(format!("host key has no base64 key after {algo}; {SHAPE}"));
    };
    let bytes = STANDARD
        .decode(blob)
        .map_err(|e| format!("host key of type {algo} is not valid base64 ({e}); {SHAPE}"))?;
    let named = bytes
        .get(..4)
        .and_then(|len| <[u8; 4]>::try_from(len).ok())
        .map(u32::from_be_bytes)
        .and_then(|len| bytes.get(4..4 + usize::try_from(len).ok()?));
    match named {
        Some(name) if name == algo.as_bytes() => Ok(()),
        Some(name) if name.len() <= 64 => Err(format!(
            "host key says {algo} but its base64 blob holds a {} key; copy the whole line",
            shown_name(&String::from_utf8_lossy(name))
        )),
        _ => Err(format!(
            "host key of type {algo} does not hold an SSH public key blob; {SHAPE}"
        )),
    }
}

/// An SSHSIG namespace: non-empty, no whitespace or control characters.
pub(crate) fn check_namespace(ns: &str) -> Result<(), String> {
    if ns.is_empty() {
        return Err("namespace is empty; expected a name like \"git\" or \"file\"".to_owned());
    }
    if ns.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "namespace {} contains whitespace or a control character; expected a name like \"git\"",
            shown_name(ns)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod shared_key_tests {
    use crate::{Action, Policy, Request, Source, Verdict};

    #[test]
    fn a_deny_applies_to_every_name_the_host_key_is_known_under() {
        // dev and prod share one host key (a cloned image): the dev rule pins it.
        let p = Policy::from_sources(&[Source::new(
            "p.toml",
            "[[ssh.allow]]\nhost = \"dev.corp\"\nuser = \"deploy\"\n[[ssh.deny]]\nhost = \"prod.*\"\n",
        )])
        .unwrap_or_else(|e| panic!("{e}"));
        let pins = ["dev.corp".to_owned()];
        let decide = |known_as: &[String]| {
            p.decide(&Request {
                workspace: "w",
                caller: None,
                action: Action::SshUserauth {
                    host_key: crate::BoundHostKey {
                        blob: &[],
                        known_hosts_pins: &pins,
                        known_as,
                        cert: None,
                    },
                    user: "deploy",
                    key: "SHA256:k",
                    forwarding: false,
                },
            })
        };
        assert_eq!(decide(&["dev.corp".to_owned()]).verdict, Verdict::Allow);
        let d = decide(&["dev.corp".to_owned(), "prod.corp".to_owned()]);
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        assert!(d.reason.contains("prod.*"), "{}", d.reason);
    }
}

#[cfg(test)]
mod hop_tests {
    use crate::{Action, Policy, Request, Source, Verdict};

    fn policy(text: &str) -> Policy {
        Policy::from_sources(&[Source::new("p.toml", text)]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn hop(p: &Policy, host: &str) -> (Verdict, String) {
        let pins = [host.to_owned()];
        let d = p.decide(&Request {
            workspace: "w",
            caller: None,
            action: Action::SshHop {
                host_key: crate::BoundHostKey {
                    blob: &[],
                    known_hosts_pins: &pins,
                    known_as: &[],
                    cert: None,
                },
            },
        });
        (d.verdict, d.reason)
    }

    #[test]
    fn hops_need_forwarding_and_yield_to_denies() {
        let p = policy(
            "[[ssh.allow]]\nhost = \"jump\"\nuser = \"*\"\nforwarding = true\n\
             [[ssh.allow]]\nhost = \"plain\"\nuser = \"git\"\n\
             [[ssh.allow]]\nhost = \"blocked\"\nuser = \"*\"\nforwarding = true\n\
             [[ssh.deny]]\nhost = \"blocked\"\nuser = \"root\"\n",
        );
        assert_eq!(hop(&p, "jump").0, Verdict::Allow);
        let (v, why) = hop(&p, "plain");
        assert_eq!(v, Verdict::Deny);
        assert!(why.contains("forwarding = true"), "{why}");
        assert_eq!(hop(&p, "nowhere").0, Verdict::Deny);
        let (v, why) = hop(&p, "blocked");
        assert_eq!(
            v,
            Verdict::Deny,
            "a deny naming only a user still blocks the hop: {why}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Grant;
    use crate::{Action, Policy, Request, Source};

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEHsucdjWiw4eZ00s1dyPRy/jsOoop/LVxRIrPReSepQ test-ed25519";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEdk+9NimRviHKk07hioIUeScRLj/nPaMTYrqmMMRUqaLyWm3737DddM1ATRPF2TKQ+bhJWCUyUZqv17VQQosRQ=";
    const K1: &str = "SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4";
    const K2: &str = "SHA256:FbcsLRhbq7b6/tzLrmSp7R4b9z8ZPvsGMcbuMYEoaKo";
    const K3: &str = "SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA";

    /// A key line of type `algo` whose blob is just the type name and some bytes.
    fn fake_key(algo: &str, blob_algo: &str) -> String {
        let mut blob = u32::try_from(blob_algo.len())
            .unwrap_or(0)
            .to_be_bytes()
            .to_vec();
        blob.extend_from_slice(blob_algo.as_bytes());
        blob.extend_from_slice(&[0, 0, 0, 4, 1, 2, 3, 4]);
        format!("{algo} {}", STANDARD.encode(blob))
    }

    #[test]
    fn hosts() {
        for ok in [
            "github.com",
            "github.com:22",
            "git.example.com:2222",
            "h:65535",
            "h:1",
            "10.0.0.1",
            "10.0.0.1:22",
            "my_host",
            "GitHub.COM",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("", "host is empty"),
            ("*.github.com", "is a pattern"),
            ("git?ub.com", "is a pattern"),
            ("a.com,b.com", "is a pattern"),
            ("github.com:0", "port \"0\" is not a number from 1 to 65535"),
            ("github.com:65536", "port \"65536\""),
            ("github.com:", "port \"\""),
            ("github.com:ssh", "port \"ssh\""),
            ("github.com:+22", "port \"+22\""),
            (":22", "empty host name"),
            ("::1", "IPv6"),
            ("[::1]:22", "IPv6"),
            ("git hub.com", "contains ' '"),
            ("git@github.com", "contains '@'"),
            ("ssh://github.com", "is a URL"),
            ("-oProxyCommand=x", "starts with \"-\""),
            ("é.com", "contains 'é'"),
        ];
        for (host, want) in bad {
            match check_host(host) {
                Err(msg) => assert!(msg.contains(want), "{host}: {msg}"),
                Ok(()) => panic!("{host} accepted"),
            }
        }
        assert!(check_host(&"a".repeat(254)).is_err());
    }

    #[test]
    fn host_port_splits_only_valid_ports() {
        let rule = |host: &str| SshRule {
            host: host.into(),
            ..rule_at(1, "git")
        };
        assert_eq!(rule("github.com").host_port(), ("github.com", None));
        assert_eq!(
            rule("g.example:2222").host_port(),
            ("g.example", Some(2222))
        );
        assert_eq!(rule("g:0").host_port(), ("g:0", None));
        assert_eq!(rule("g:x").host_port(), ("g:x", None));
        assert_eq!(rule("").host_port(), ("", None));
    }

    #[test]
    fn users() {
        for ok in ["git", "*", "deploy-bot", "a.b_c", "Ünïcode"] {
            assert_eq!(check_user(ok), Ok(()), "{ok}");
        }
        for (user, want) in [
            ("", "user is empty"),
            ("g it", "whitespace"),
            ("git\n", "control"),
            ("gi*", "is a pattern"),
            ("?", "is a pattern"),
        ] {
            match check_user(user) {
                Err(msg) => assert!(msg.contains(want), "{user:?}: {msg}"),
                Ok(()) => panic!("{user:?} accepted"),
            }
        }
    }

    #[test]
    fn fingerprints() {
        for ok in [
            K1,
            K2,
            K3,
            "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",
        ] {
            assert_eq!(check_fingerprint(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("", "no SHA256: prefix"),
            (
                "jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4",
                "no SHA256: prefix",
            ),
            (
                "sha256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4",
                "no SHA256: prefix",
            ),
            ("MD5:12:34:56", "MD5"),
            ("12:34:56:78", "MD5"),
            (
                "SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4=",
                "'=' padding",
            ),
            (
                "SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC",
                "42 base64 characters",
            ),
            (
                "SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4A",
                "44 base64 characters",
            ),
            (
                "SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD_k5H4nIC4",
                "contains '_'",
            ),
            (
                "SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC5",
                "last character is off",
            ),
            ("SHA256:", "0 base64 characters"),
            (
                "SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIé",
                "contains 'é'",
            ),
        ];
        for (fp, want) in bad {
            match check_fingerprint(fp) {
                Err(msg) => assert!(msg.contains(want), "{fp}: {msg}"),
                Ok(()) => panic!("{fp} accepted"),
            }
        }
    }

    #[test]
    fn host_keys() {
        let ok = [
            ED25519.to_owned(),
            ECDSA.to_owned(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                .to_owned(),
            format!("{ED25519} with  a long\tcomment"),
            fake_key("ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"),
            fake_key("ecdsa-sha2-nistp521", "ecdsa-sha2-nistp521"),
            fake_key("ssh-rsa", "ssh-rsa"),
            fake_key("sk-ssh-ed25519@openssh.com", "sk-ssh-ed25519@openssh.com"),
            fake_key(
                "sk-ecdsa-sha2-nistp256@openssh.com",
                "sk-ecdsa-sha2-nistp256@openssh.com",
            ),
        ];
        for line in &ok {
            assert_eq!(check_host_key(line), Ok(()), "{line}");
        }
        let bad = [
            (String::new(), "host key is empty"),
            ("   ".to_owned(), "host key is empty"),
            ("ssh-ed25519".to_owned(), "no base64 key after ssh-ed25519"),
            (format!("github.com {ED25519}"), "known_hosts line"),
            (format!("@revoked * {ED25519}"), "marker"),
            (
                "ssh-dss AAAAB3NzaC1kc3M=".to_owned(),
                "unknown host key type \"ssh-dss\"",
            ),
            (
                "ssh-ed25519-cert-v01@openssh.com AAAA".to_owned(),
                "unknown host key type",
            ),
            (
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI!".to_owned(),
                "not valid base64",
            ),
            (
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEHsucdjWiw4eZ00s1dyPRy/jsOoop/LVxRIrPReSep"
                    .to_owned(),
                "not valid base64",
            ),
            (
                fake_key("ssh-rsa", "ssh-ed25519"),
                "holds a \"ssh-ed25519\" key",
            ),
            (
                "ssh-rsa AAAA".to_owned(),
                "does not hold an SSH public key blob",
            ),
            (format!("{ED25519}\nssh-rsa AAAA"), "line break"),
        ];
        for (line, want) in &bad {
            match check_host_key(line) {
                Err(msg) => assert!(msg.contains(want), "{line}: {msg}"),
                Ok(()) => panic!("{line} accepted"),
            }
        }
    }

    #[test]
    fn namespaces() {
        for ok in ["git", "file", "ns@example.com"] {
            assert_eq!(check_namespace(ok), Ok(()), "{ok}");
        }
        for bad in ["", " git", "g it", "git\n"] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
    }

    fn rule_at(line: usize, user: &str) -> SshRule {
        SshRule {
            host: "github.com".into(),
            user: user.into(),
            keys: None,
            host_keys: None,
            host_ca: None,
            require_session_bind: true,
            sshsig_namespaces: Vec::new(),
            forwarding: false,
            approve: None,
            rate: None,
            rule: RuleRef {
                file: "p.toml".into(),
                line,
                col: 1,
                section: "ssh.allow".into(),
            },
        }
    }

    // Line numbers matter: the tables below name rules by their line.
    const POLICY: &str = r#"[[ssh.allow]]
host = "github.com"
user = "git"
keys = ["SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4"]
sshsig_namespaces = ["git"]

[[ssh.allow]]
host = "github.com"
user = "git"
keys = ["SHA256:FbcsLRhbq7b6/tzLrmSp7R4b9z8ZPvsGMcbuMYEoaKo"]
approve = "prompt"

[[ssh.allow]]
host = "build.example:2222"
user = "*"
forwarding = true
sshsig_namespaces = ["file", "git"]
rate = "30/min"

[[ssh.allow]]
host = "prod-db.example"
user = "admin"

[[ssh.deny]]
host = "prod-*"
description = "nothing reaches production"

[[ssh.deny]]
user = "root"

[[ssh.deny]]
host = "build.example"
key = "SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA"

[[ssh.allow]]
host = "gitlab.com"
user = "git"
keys = ["SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA", "SHA256:FbcsLRhbq7b6/tzLrmSp7R4b9z8ZPvsGMcbuMYEoaKo"]

[[ssh.deny]]
key = "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"
"#;
    const K4: &str = "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU";

    fn policy() -> Policy {
        Policy::from_sources(&[Source::new("p.toml", POLICY)]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The hosts of the rules `pinned` picks: what known_hosts would pin a
    /// host key for.
    fn pinned_where(policy: &Policy, pinned: &dyn Fn(&SshRule) -> bool) -> Vec<String> {
        policy
            .ssh_rules()
            .iter()
            .filter(|r| pinned(r))
            .map(|r| r.host.clone())
            .collect()
    }

    /// A host key known_hosts pins for `hosts`, listed under no other name.
    fn known_hosts_pin(hosts: &[String]) -> BoundHostKey<'_> {
        BoundHostKey {
            blob: &[],
            known_hosts_pins: hosts,
            known_as: &[],
            cert: None,
        }
    }

    fn decide(policy: &Policy, action: Action<'_>) -> crate::Decision {
        policy.decide(&Request {
            workspace: "ws",
            caller: None,
            action,
        })
    }

    /// The allow rule's line in the grant, if allowed.
    fn granted_line(d: &crate::Decision) -> Option<usize> {
        match &d.grant {
            Some(Grant::Ssh(rule)) => Some(rule.rule.line),
            _ => None,
        }
    }

    #[test]
    fn policy_parses_into_rules_in_file_order() {
        let policy = policy();
        let hosts: Vec<_> = policy
            .ssh_rules()
            .iter()
            .map(|r| (r.rule.line, r.host.as_str()))
            .collect();
        assert_eq!(
            hosts,
            [
                (1, "github.com"),
                (7, "github.com"),
                (13, "build.example:2222"),
                (20, "prod-db.example"),
                (35, "gitlab.com"),
            ]
        );
        let build = &policy.ssh_rules()[2];
        assert!(build.forwarding);
        assert_eq!(build.sshsig_namespaces, ["file", "git"]);
        assert_eq!(build.rate.map(|r| r.to_string()), Some("30/min".into()));
        assert_eq!(policy.ssh_rules()[1].approve, Some(Approve::Prompt));
        assert_eq!(policy.ssh_rules()[1].rule.section, "ssh.allow");
        // The prod rule is always denied by the host deny; nothing else warns.
        let warnings: Vec<_> = policy.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                r#"p.toml:20:1: [[ssh.allow]] host = "prod-db.example" user = "admin" is always denied by [[ssh.deny]] host = "prod-*" (p.toml:24)"#
            ]
        );
    }

    #[test]
    fn userauth_decisions() {
        use Verdict::{Allow, Deny};
        let policy = policy();
        // Which hosts the bound host key is pinned for.
        let github = |r: &SshRule| r.host == "github.com";
        let build = |r: &SshRule| r.host.starts_with("build.");
        let prod = |r: &SshRule| r.host.starts_with("prod-");
        let gitlab = |r: &SshRule| r.host == "gitlab.com";
        let nowhere = |_: &SshRule| false;
        let everywhere = |_: &SshRule| true;
        type Pin<'a> = &'a dyn Fn(&SshRule) -> bool;
        // (pinned, user, key, forwarding, verdict, decision rule line, granted rule line, reason)
        type Case<'a> = (
            Pin<'a>,
            &'a str,
            &'a str,
            bool,
            Verdict,
            Option<usize>,
            Option<usize>,
            &'a str,
        );
        #[rustfmt::skip]
        let cases: &[Case<'_>] = &[
            (&github, "git", K1, false, Allow, Some(1), Some(1),
             "ssh login as \"git\" to github.com with key SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4 allowed by [[ssh.allow]] (p.toml:1)"),
            // First match in file order: K2 only fits the second rule.
            (&github, "git", K2, false, Allow, Some(7), Some(7),
             "ssh login as \"git\" to github.com with key SHA256:FbcsLRhbq7b6/tzLrmSp7R4b9z8ZPvsGMcbuMYEoaKo allowed by [[ssh.allow]] (p.toml:7)"),
            (&github, "alice", K1, false, Deny, None, None,
             "user \"alice\" is not allowed for github.com (rule p.toml:1 allows \"git\")"),
            (&github, "Git", K1, false, Deny, None, None,
             "user \"Git\" is not allowed for github.com (rule p.toml:1 allows \"git\")"),
            (&github, "git", K3, false, Deny, None, None,
             "key SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA is not allowed for github.com (rule p.toml:1 lists other keys)"),
            (&github, "git", K1, true, Deny, None, None,
             "the session is forwarded (onward hop) and no rule for github.com sets forwarding = true (rule p.toml:1 does not)"),
            (&nowhere, "git", K1, false, Deny, None, None,
             "no [[ssh.allow]] rule pins this host key"),
            (&gitlab, "git", "not a fingerprint", false, Deny, None, None,
             "key \"not a fingerprint\" is not allowed for gitlab.com (rule p.toml:35 lists other keys)"),
            // Wildcard user and forwarding.
            (&build, "anyone", K1, true, Allow, Some(13), Some(13),
             "ssh login as \"anyone\" to build.example:2222 with key SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4 (forwarded) allowed by [[ssh.allow]] (p.toml:13)"),
            (&build, "", K2, false, Allow, Some(13), Some(13),
             "ssh login as \"\" to build.example:2222 with key SHA256:FbcsLRhbq7b6/tzLrmSp7R4b9z8ZPvsGMcbuMYEoaKo allowed by [[ssh.allow]] (p.toml:13)"),
            // Deny beats allow: a user glob, case-insensitive, on any host.
            (&build, "ROOT", K1, false, Deny, Some(28), None,
             "ssh login as \"ROOT\" to build.example:2222 with key SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4 denied by [[ssh.deny]] user = \"root\" (p.toml:28)"),
            // A host + key deny matches the host without its port.
            (&build, "ci", K3, false, Deny, Some(31), None,
             "ssh login as \"ci\" to build.example:2222 with key SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA denied by [[ssh.deny]] host = \"build.example\" key = SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA (p.toml:31)"),
            (&prod, "admin", K1, false, Deny, Some(24), None,
             "ssh login as \"admin\" to prod-db.example with key SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4 denied by [[ssh.deny]] host = \"prod-*\" (p.toml:24)"),
            // Key-only deny.
            (&build, "ci", K4, false, Deny, Some(40), None,
             "ssh login as \"ci\" to build.example:2222 with key SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU denied by [[ssh.deny]] key = SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU (p.toml:40)"),
            // The K3 deny is for build.example only: gitlab still takes K3.
            (&gitlab, "git", K3, false, Allow, Some(35), Some(35),
             "ssh login as \"git\" to gitlab.com with key SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA allowed by [[ssh.allow]] (p.toml:35)"),
            // Several rules pinned: the first that is not denied wins.
            (&everywhere, "git", K3, false, Allow, Some(35), Some(35),
             "ssh login as \"git\" to gitlab.com with key SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA allowed by [[ssh.allow]] (p.toml:35)"),
            (&everywhere, "git", K2, false, Allow, Some(7), Some(7),
             "ssh login as \"git\" to github.com with key SHA256:FbcsLRhbq7b6/tzLrmSp7R4b9z8ZPvsGMcbuMYEoaKo allowed by [[ssh.allow]] (p.toml:7)"),
            (&everywhere, "admin", K1, false, Allow, Some(13), Some(13),
             "ssh login as \"admin\" to build.example:2222 with key SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4 allowed by [[ssh.allow]] (p.toml:13)"),
            (&everywhere, "admin", K1, true, Allow, Some(13), Some(13),
             "ssh login as \"admin\" to build.example:2222 with key SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4 (forwarded) allowed by [[ssh.allow]] (p.toml:13)"),
            // When all refuse, the reason comes from the rule that got furthest.
            (&everywhere, "git", K3, true, Deny, Some(31), None,
             "ssh login as \"git\" to build.example:2222 with key SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA denied by [[ssh.deny]] host = \"build.example\" key = SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA (p.toml:31)"),
            (&|r: &SshRule| r.host == "github.com" || r.host == "gitlab.com", "git", K1, true, Deny, None, None,
             "the session is forwarded (onward hop) and no rule for github.com sets forwarding = true (rule p.toml:1 does not)"),
            (&|r: &SshRule| r.host == "prod-db.example" || r.host == "github.com", "admin", K1, false, Deny, Some(24), None,
             "ssh login as \"admin\" to prod-db.example with key SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4 denied by [[ssh.deny]] host = \"prod-*\" (p.toml:24)"),
            // Untrusted strings are escaped on one line.
            (&github, "a\nb", K1, false, Deny, None, None,
             "user \"a\\nb\" is not allowed for github.com (rule p.toml:1 allows \"git\")"),
        ];
        for (i, (pinned, user, key, forwarding, verdict, line, granted, reason)) in
            cases.iter().enumerate()
        {
            let pins = pinned_where(&policy, *pinned);
            let d = decide(
                &policy,
                Action::SshUserauth {
                    host_key: known_hosts_pin(&pins),
                    user,
                    key,
                    forwarding: *forwarding,
                },
            );
            assert_eq!(&d.reason, reason, "case {i}");
            assert_eq!(&d.verdict, verdict, "case {i}");
            assert_eq!(d.rule.as_ref().map(|r| r.line), *line, "case {i}");
            assert_eq!(granted_line(&d), *granted, "case {i}");
        }
    }

    #[test]
    fn sshsig_decisions() {
        use Verdict::{Allow, Deny};
        let policy = policy();
        // (namespace, key, verdict, decision rule line, reason)
        let cases: &[(&str, &str, Verdict, Option<usize>, &str)] = &[
            (
                "git",
                K1,
                Allow,
                Some(1),
                "SSHSIG signature in namespace \"git\" with key SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4 allowed by [[ssh.allow]] (p.toml:1)",
            ),
            // Rule 1 lists git but not K2; rule 13 lists git for every key.
            (
                "git",
                K2,
                Allow,
                Some(13),
                "SSHSIG signature in namespace \"git\" with key SHA256:FbcsLRhbq7b6/tzLrmSp7R4b9z8ZPvsGMcbuMYEoaKo allowed by [[ssh.allow]] (p.toml:13)",
            ),
            (
                "file",
                K1,
                Allow,
                Some(13),
                "SSHSIG signature in namespace \"file\" with key SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4 allowed by [[ssh.allow]] (p.toml:13)",
            ),
            (
                "Git",
                K1,
                Deny,
                None,
                "SSHSIG namespace \"Git\" is not listed in the sshsig_namespaces of any [[ssh.allow]] rule",
            ),
            (
                "",
                K1,
                Deny,
                None,
                "SSHSIG namespace \"\" is not listed in the sshsig_namespaces of any [[ssh.allow]] rule",
            ),
            // A deny with a key applies whatever its host says.
            (
                "git",
                K3,
                Deny,
                Some(31),
                "SSHSIG signature in namespace \"git\" with key SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA denied by [[ssh.deny]] host = \"build.example\" key = SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA (p.toml:31)",
            ),
            (
                "git",
                K4,
                Deny,
                Some(40),
                "SSHSIG signature in namespace \"git\" with key SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU denied by [[ssh.deny]] key = SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU (p.toml:40)",
            ),
            (
                "nope",
                K4,
                Deny,
                Some(40),
                "SSHSIG signature in namespace \"nope\" with key SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU denied by [[ssh.deny]] key = SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU (p.toml:40)",
            ),
        ];
        for (ns, key, verdict, line, reason) in cases {
            let d = decide(&policy, Action::SshSig { namespace: ns, key });
            assert_eq!(&d.reason, reason, "{ns} {key}");
            assert_eq!(&d.verdict, verdict, "{ns} {key}");
            assert_eq!(d.rule.as_ref().map(|r| r.line), *line, "{ns} {key}");
            assert_eq!(
                granted_line(&d),
                line.filter(|_| *verdict == Allow),
                "{ns} {key}"
            );
        }
        // Host and user deny fields never match a signature.
        let text = "[[ssh.allow]]\nhost = \"h\"\nuser = \"u\"\nkeys = [\"SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4\"]\nsshsig_namespaces = [\"git\"]\n\n[[ssh.deny]]\nhost = \"*\"\nuser = \"*\"\n";
        let p =
            Policy::from_sources(&[Source::new("q.toml", text)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            decide(
                &p,
                Action::SshSig {
                    namespace: "git",
                    key: K1
                }
            )
            .verdict,
            Allow
        );
        let d = decide(
            &p,
            Action::SshSig {
                namespace: "git",
                key: K2,
            },
        );
        assert_eq!(
            d.reason,
            "key SHA256:FbcsLRhbq7b6/tzLrmSp7R4b9z8ZPvsGMcbuMYEoaKo is not allowed to sign SSHSIG namespace \"git\" (rule q.toml:1 lists other keys)"
        );
        assert_eq!(d.rule, None);
    }

    #[test]
    fn identity_decisions() {
        use Verdict::{Allow, Deny};
        let policy = policy();
        // (key, verdict, decision rule line, reason)
        let cases: &[(&str, Verdict, Option<usize>, &str)] = &[
            (
                K1,
                Allow,
                Some(1),
                "identity SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4 allowed by [[ssh.allow]] (p.toml:1)",
            ),
            (
                K2,
                Allow,
                Some(7),
                "identity SHA256:FbcsLRhbq7b6/tzLrmSp7R4b9z8ZPvsGMcbuMYEoaKo allowed by [[ssh.allow]] (p.toml:7)",
            ),
            // Denied for build.example only, so still shown (gitlab takes it);
            // rule 13 (every key) comes first in file order.
            (
                K3,
                Allow,
                Some(13),
                "identity SHA256:D2AnQDm6thmRRwunjivdLheVMNtziMNQtDVDV3FeIkA allowed by [[ssh.allow]] (p.toml:13)",
            ),
            (
                K4,
                Deny,
                Some(40),
                "identity SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU denied by [[ssh.deny]] key = SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU (p.toml:40)",
            ),
        ];
        for (key, verdict, line, reason) in cases {
            let d = decide(&policy, Action::SshIdentity { key });
            assert_eq!(&d.reason, reason, "{key}");
            assert_eq!(&d.verdict, verdict, "{key}");
            assert_eq!(d.rule.as_ref().map(|r| r.line), *line, "{key}");
            assert_eq!(
                granted_line(&d),
                line.filter(|_| *verdict == Allow),
                "{key}"
            );
        }
        let text = "[[ssh.allow]]\nhost = \"h\"\nuser = \"u\"\nkeys = [\"SHA256:jTtoeFKSUoZLcxVoLwN8wAMgUkejfEqjMD/k5H4nIC4\"]\n";
        let p =
            Policy::from_sources(&[Source::new("q.toml", text)]).unwrap_or_else(|e| panic!("{e}"));
        let d = decide(&p, Action::SshIdentity { key: K2 });
        assert_eq!((d.verdict, d.rule), (Deny, None));
        assert_eq!(
            d.reason,
            "identity SHA256:FbcsLRhbq7b6/tzLrmSp7R4b9z8ZPvsGMcbuMYEoaKo hidden: no [[ssh.allow]] rule lists this key"
        );
        let d = decide(&Policy::deny_all(), Action::SshIdentity { key: K2 });
        assert_eq!(
            d.reason,
            "identity SHA256:FbcsLRhbq7b6/tzLrmSp7R4b9z8ZPvsGMcbuMYEoaKo hidden: there is no [[ssh.allow]] rule"
        );
    }

    #[test]
    fn deny_all_denies_every_ssh_action() {
        let p = Policy::deny_all();
        assert!(p.ssh_rules().is_empty());
        let everywhere = ["github.com".to_owned()];
        let actions = [
            Action::SshUserauth {
                host_key: known_hosts_pin(&everywhere),
                user: "git",
                key: K1,
                forwarding: false,
            },
            Action::SshSig {
                namespace: "git",
                key: K1,
            },
            Action::SshIdentity { key: K1 },
        ];
        for action in actions {
            let d = decide(&p, action);
            assert_eq!(
                (d.verdict, d.rule, d.grant),
                (Verdict::Deny, None, None),
                "{action:?}"
            );
        }
    }

    #[test]
    fn host_keys_pin_by_key_and_known_hosts_by_host() {
        let text = format!(
            "[[ssh.allow]]\nhost = \"a.example\"\nuser = \"git\"\nhost_keys = [\"{ED25519}\"]\n\
             [[ssh.allow]]\nhost = \"b.example\"\nuser = \"git\"\n"
        );
        let p =
            Policy::from_sources(&[Source::new("p.toml", text)]).unwrap_or_else(|e| panic!("{e}"));
        let blob = host_key_blob(ED25519).unwrap_or_default();
        let other = host_key_blob(ECDSA).unwrap_or_default();
        let both = ["a.example".to_owned(), "b.example".to_owned()];
        let line = |blob: &[u8], pins: &[String]| {
            let host_key = BoundHostKey {
                blob,
                known_hosts_pins: pins,
                known_as: &[],
                cert: None,
            };
            let d = decide(
                &p,
                Action::SshUserauth {
                    host_key,
                    user: "git",
                    key: K1,
                    forwarding: false,
                },
            );
            granted_line(&d)
        };
        // host_keys decide for a.example, whatever known_hosts says of it.
        assert_eq!(line(&blob, &[]), Some(1));
        assert_eq!(line(&other, &both), Some(5));
        assert_eq!(line(&other, &both[..1]), None);
        assert_eq!(line(&[], &[]), None);
    }

    #[test]
    fn actions_compare_and_print() {
        let pins = ["github.com".to_owned()];
        let a = Action::SshUserauth {
            host_key: known_hosts_pin(&pins),
            user: "git",
            key: K1,
            forwarding: false,
        };
        let b = a;
        assert_eq!(a, b);
        assert_ne!(
            a,
            Action::SshSig {
                namespace: "git",
                key: K1
            }
        );
        assert_eq!(
            Action::SshIdentity { key: K1 },
            Action::SshIdentity { key: K1 }
        );
        let shown = format!("{a:?}");
        assert!(
            shown.contains("SshUserauth") && shown.contains("\"git\""),
            "{shown}"
        );
    }

    fn policy_of(text: &str) -> crate::Policy {
        crate::Policy::from_sources(&[crate::Source::new("p.toml", text)])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A host certificate pins a rule when a CA the rule trusts signed it
    /// and a principal names the rule's host; known_hosts CAs count only
    /// for rules without `host_keys`.
    #[test]
    fn host_certificates_pin_by_ca_and_principal() {
        let ca_line = ED25519.to_owned();
        let ca = STANDARD
            .decode(ca_line.split_whitespace().nth(1).unwrap_or_default())
            .unwrap_or_default();
        let p = policy_of(&format!(
            "[[ssh.allow]]\nhost = \"a.example:2222\"\nuser = \"git\"\nhost_ca = [{ca_line:?}]\n\
             [[ssh.allow]]\nhost = \"b.example\"\nuser = \"git\"\n"
        ));
        let decide = |principals: &[String], ca: &[u8], kh_cas: &[String]| {
            p.decide(&crate::Request {
                workspace: "w",
                caller: None,
                action: Action::SshUserauth {
                    host_key: BoundHostKey {
                        blob: b"plain",
                        known_hosts_pins: &[],
                        known_as: &[],
                        cert: Some(HostCertificate {
                            ca,
                            principals,
                            known_hosts_cas: kh_cas,
                        }),
                    },
                    user: "git",
                    key: "SHA256:k",
                    forwarding: false,
                },
            })
        };
        let a = ["a.example".to_owned()];
        let b = ["b.example".to_owned()];
        assert_eq!(decide(&a, &ca, &[]).verdict, Verdict::Allow);
        assert_eq!(
            decide(&b, &ca, &[]).verdict,
            Verdict::Deny,
            "principal of another host"
        );
        assert_eq!(
            decide(&a, b"other ca", &[]).verdict,
            Verdict::Deny,
            "CA not trusted"
        );
        assert_eq!(
            decide(&b, b"any", &b).verdict,
            Verdict::Allow,
            "known_hosts CA"
        );
        assert_eq!(decide(&a, b"any", &b).verdict, Verdict::Deny);
    }

    /// Without a session bind only rules that opt out sign, and `policy
    /// check` warns about them; the refusal names the opt-in.
    #[test]
    fn unbound_logins_need_the_opt_out() {
        let unbound = |p: &crate::Policy, user: &str| {
            p.decide(&crate::Request {
                workspace: "w",
                caller: None,
                action: Action::SshUnboundUserauth {
                    user,
                    key: "SHA256:k",
                },
            })
        };
        let strict = policy_of("[[ssh.allow]]\nhost = \"h\"\nuser = \"git\"\n");
        let d = unbound(&strict, "git");
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(
            d.reason.contains("require_session_bind = false"),
            "{}",
            d.reason
        );
        assert!(strict.warnings().is_empty());
        let open = policy_of(
            "[[ssh.allow]]\nhost = \"h\"\nuser = \"git\"\nrequire_session_bind = false\n\
             [[ssh.deny]]\nuser = \"root\"\n",
        );
        assert_eq!(unbound(&open, "git").verdict, Verdict::Allow);
        assert_eq!(unbound(&open, "other").verdict, Verdict::Deny);
        let warnings: Vec<String> = open.warnings().iter().map(ToString::to_string).collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("any host that accepts it")),
            "{warnings:?}"
        );
    }
}
