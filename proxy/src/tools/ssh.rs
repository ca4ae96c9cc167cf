//! ssh-agent forwarding, decided on the laptop.
//!
//! The workspace never talks to the laptop agent directly. It may ask for:
//! - the identities the policy lets it see (public keys only);
//! - a signature, sent together with the `session-bind@openssh.com`
//!   messages the shim acknowledged on the same agent connection. A userauth
//!   signature needs exactly one bind, not forwarded unless a rule allows
//!   it, whose host-key signature over the session id verifies, whose session
//!   id is new to this workspace (or seen only on the same agent connection),
//!   whose host key is pinned for an allowed host; the data must be a
//!   userauth request for that session, that key and an allowed user (for the
//!   hostbound method, naming the bound host key). A bound host certificate
//!   is pinned by a CA the rule trusts (`host_ca`, known_hosts
//!   `@cert-authority`). With no bind at all (clients such as paramiko send
//!   none) only a rule with `require_session_bind = false` signs. An SSHSIG
//!   signature needs a rule listing its namespace. Certificates are judged by
//!   the key they certify.
//!
//! Only then does the laptop agent see the request, preceded by the bind, so
//! keys added with `ssh-add -h` keep their destination constraints.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nexus_policy::{
    Action, BoundHostKey, Grant, HostCertificate, PolicySet, Request as PolicyRequest, SshRule,
    Verdict,
};
use nexus_protocol::{ErrorCode, Reply, SshIdentity};
use ssh_encoding::Encode;
use ssh_key::HashAlg;
use ssh_key::public::KeyData;
use tracing::{info, warn};

use super::ToolContext;
use super::pipeline::{Asked, Decided, Listing, Scope, Tool};
use crate::known_hosts::HostKeys;
use crate::laptop_agent::{AgentError, LaptopAgent};
use crate::ssh_cert::{CertType, Credential, parse_credential};
use crate::ssh_wire::{
    Method, SessionBind, SignData, SignRequest, Userauth, parse_session_bind, parse_sign_data,
    parse_sign_request,
};

/// How long the laptop agent may take (1Password and Secretive may prompt).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a session id stays in the replay cache.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(3600);
/// Most session ids remembered per workspace; only binds for pinned hosts
/// that the policy allowed get this far, so this is generous. Each workspace
/// has its own cache: one that fills its own cannot block another's logins.
pub const REPLAY_CAPACITY: usize = 100_000;

const BIND_NAME: &str = "session-bind@openssh.com";

/// (session id, key fingerprint) → first signed, for one workspace.
type Seen = HashMap<(Vec<u8>, String), Instant>;

/// Login signatures already made, per workspace. The agent connection number
/// comes from the workspace, so it cannot be what tells a replay apart: each
/// (session, key) pair is signed at most once (OpenSSH signs once per key it
/// offers, so trying key after key still works).
#[derive(Debug, Default)]
pub struct ReplayCache {
    seen: Mutex<HashMap<String, Seen>>,
}

impl ReplayCache {
    /// Records a login signature; false when this workspace already had one
    /// for the same session and key, or when its own cache is full of live
    /// entries.
    fn admit(&self, workspace: &str, session_id: &[u8], key: &str) -> bool {
        self.admit_at(workspace, session_id, key, Instant::now(), REPLAY_CAPACITY)
    }

    fn admit_at(
        &self,
        workspace: &str,
        session_id: &[u8],
        key: &str,
        now: Instant,
        capacity: usize,
    ) -> bool {
        let Ok(mut all) = self.seen.lock() else {
            return false;
        };
        let seen = all.entry(workspace.to_owned()).or_default();
        if seen.len() >= capacity {
            seen.retain(|_, t| now.duration_since(*t) < REPLAY_WINDOW);
        }
        if seen.len() >= capacity {
            // Full of live entries: refuse rather than forget one, which
            // would reopen a replay window (for this workspace only).
            return false;
        }
        seen.insert((session_id.to_vec(), key.to_owned()), now)
            .is_none()
    }
}

fn deny(message: impl Into<String>) -> Reply {
    let message = message.into();
    // Reasons are ours or the policy's (which escapes workspace text); the
    // Debug form still keeps them on one line.
    warn!(tool = "ssh", reason = %message, "refused");
    Reply::error(ErrorCode::Denied, message)
}

fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

async fn agent(ctx: &ToolContext) -> Result<LaptopAgent, Reply> {
    let Some(path) = ctx.ssh_agent.as_ref() else {
        return Err(Reply::error(
            ErrorCode::Missing,
            "the laptop proxy has no ssh-agent: start it with SSH_AUTH_SOCK set, or pass --ssh-agent PATH",
        ));
    };
    LaptopAgent::connect(path).await.map_err(|e| {
        Reply::error(
            ErrorCode::Missing,
            format!(
                "cannot reach the laptop ssh-agent at {}: {e}",
                path.display()
            ),
        )
    })
}

/// `ssh-add -l` in the workspace: the identities the policy lets it see
/// (public keys only; each key is decided once the agent has listed it).
/// On an agent connection with session binds, the laptop agent lists on a
/// connection bound the same way, so keys added with `ssh-add -h` show only
/// where they may be used.
#[derive(Debug)]
pub struct Identities<'a> {
    binds: &'a [Vec<u8>],
    /// The binds `ask` verified, for `run`.
    verified: Vec<SessionBind>,
}

impl<'a> Identities<'a> {
    /// The list for an agent connection that bound `binds` (none: unbound).
    pub fn new(binds: &'a [Vec<u8>]) -> Self {
        Self {
            binds,
            verified: Vec::new(),
        }
    }
}

impl Tool for Identities<'_> {
    fn ask(&mut self, _: &Scope<'_>, _: &PolicySet) -> Result<Asked, Reply> {
        // Only verified binds reach the laptop agent.
        self.verified = parse_binds(self.binds)?;
        let outcome = nexus_policy::Outcome {
            decision: nexus_policy::Decision {
                verdict: Verdict::Allow,
                rule: None,
                reason: "agent identities shown as the policy allows each key".to_owned(),
                grant: None,
            },
            limits: Vec::new(),
            approve: None,
            trace: Vec::new(),
        };
        Ok(Asked::decided(Decided {
            outcome,
            tool: "ssh",
            target: "list identities".to_owned(),
            approval_key: String::new(),
        }))
    }

    async fn run<S>(
        self,
        scope: &Scope<'_>,
        policy: &PolicySet,
        _: Option<Grant>,
        _: &mut S,
    ) -> Option<Reply> {
        let listed = allowed_identities(scope.workspace, policy, scope.ctx, &self.verified).await;
        Some(match listed {
            Ok((ids, total)) => {
                info!(
                    tool = "ssh",
                    shown = ids.len(),
                    total,
                    bound = !self.verified.is_empty(),
                    "agent identities listed"
                );
                Reply::SshIdentities(ids)
            }
            Err(reply) => reply,
        })
    }
}

/// The laptop agent's identities that `policy` lets `workspace` see, listed
/// on one agent connection after `chain` was bound on it; with the number
/// of identities the agent listed.
pub(crate) async fn allowed_identities(
    workspace: &str,
    policy: &PolicySet,
    ctx: &ToolContext,
    chain: &[SessionBind],
) -> Result<(Vec<SshIdentity>, usize), Reply> {
    let mut client = agent(ctx).await?;
    let list = async {
        bind_all(&mut client, chain).await;
        client.list().await
    };
    let listed = match tokio::time::timeout(AGENT_TIMEOUT, list).await {
        Ok(Ok(ids)) => ids,
        Ok(Err(e)) => {
            return Err(Reply::error(
                ErrorCode::Internal,
                format!("the laptop ssh-agent failed to list keys: {e}"),
            ));
        }
        Err(_) => {
            return Err(Reply::error(
                ErrorCode::Internal,
                "the laptop ssh-agent did not answer",
            ));
        }
    };
    let total = listed.len();
    let mut out = Vec::new();
    for blob in listed {
        // One identity we cannot read must not hide the others.
        let credential = match parse_credential(&blob) {
            Ok(c) => c,
            Err(e) => {
                warn!(tool = "ssh", error = %e, "skipped an identity of the laptop agent");
                continue;
            }
        };
        // A certificate is allowed by the fingerprint of the key it certifies.
        let key = fingerprint(&credential.key);
        let d = policy.decide(&PolicyRequest {
            workspace,
            caller: None,
            action: Action::SshIdentity { key: &key },
        });
        if d.verdict == Verdict::Allow {
            out.push(SshIdentity {
                blob,
                // Comments name laptop users, hosts and paths: public keys only.
                comment: String::new(),
            });
        }
    }
    Ok((out, total))
}

/// Passes verified binds on to the laptop agent, so that keys added with
/// `ssh-add -h` keep their destination constraints. Agents without
/// session-bind support answer FAILURE: they have no such constraints, and
/// listing and signing still work.
async fn bind_all(client: &mut LaptopAgent, chain: &[SessionBind]) {
    for bind in chain {
        let _ = client.extension(BIND_NAME, &bind.raw).await;
    }
}

/// The laptop's known_hosts files, read once for the request at hand.
fn laptop_known_hosts(ctx: &ToolContext) -> HostKeys {
    HostKeys::load(&crate::known_hosts::default_files(ctx.home().as_deref()))
}

/// Host keys pinned for a rule: its own `host_keys`, else known_hosts.
fn pinned(rule: &SshRule, known: &HostKeys) -> Vec<KeyData> {
    match &rule.host_keys {
        Some(lines) => lines
            .iter()
            .filter_map(|l| l.parse::<ssh_key::PublicKey>().ok())
            .map(|k| k.key_data().clone())
            .collect(),
        None => known.pinned_keys(&rule.host),
    }
}

/// CA keys a rule trusts for host certificates: its own `host_ca`, and
/// known_hosts `@cert-authority` lines unless it pins `host_keys`.
fn pinned_cas(rule: &SshRule, known: &HostKeys) -> Vec<KeyData> {
    let mut cas: Vec<KeyData> = rule
        .host_ca
        .iter()
        .flatten()
        .filter_map(|l| l.parse::<ssh_key::PublicKey>().ok())
        .map(|k| k.key_data().clone())
        .collect();
    if rule.host_keys.is_none() {
        cas.extend(known.cert_authorities(&rule.host));
    }
    cas
}

/// SSH wire form of a key; encoding into memory cannot fail, and an empty
/// blob would pin nothing.
fn key_blob(key: &KeyData) -> Vec<u8> {
    let mut blob = Vec::new();
    if key.encode(&mut blob).is_err() {
        blob.clear();
    }
    blob
}

/// A host certificate whose CA signature holds and which is valid now, as
/// the policy takes it.
struct CertFacts {
    ca: Vec<u8>,
    principals: Vec<String>,
    known_hosts_cas: Vec<String>,
}

/// What the laptop knows of a bound host key, as the policy takes it: its
/// wire blob (the certified key, for a certificate), the rule hosts
/// known_hosts pins it for, every name it is known under (known_hosts
/// lines and the hosts of rules that pin it), and its host certificate.
struct HostKeyFacts {
    blob: Vec<u8>,
    pins: Vec<String>,
    known_as: Vec<String>,
    cert: Option<CertFacts>,
}

impl HostKeyFacts {
    fn new(host: &Credential, known: &HostKeys, policy: &PolicySet) -> Self {
        let host_key = &host.key;
        let blob = key_blob(host_key);
        let rules = policy.ssh_rules();
        let cert = host.cert.as_ref().and_then(|c| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let usable = c.cert_type == CertType::Host && c.valid_at(now) && c.verify().is_ok();
            if !usable {
                warn!(tool = "ssh", host_key = %fingerprint(host_key), "host certificate expired, of the wrong type or badly signed; only its key can be pinned");
                return None;
            }
            let known_hosts_cas = rules
                .iter()
                .filter(|r| r.host_keys.is_none() && known.trusts_ca(&r.host, &c.ca, host_key))
                .map(|r| r.host.clone())
                .collect();
            Some(CertFacts {
                ca: key_blob(&c.ca),
                principals: c.principals.clone(),
                known_hosts_cas,
            })
        });
        let mut pins: Vec<String> = Vec::new();
        for rule in &rules {
            if !pins.contains(&rule.host) && known.pinned_keys(&rule.host).contains(host_key) {
                pins.push(rule.host.clone());
            }
        }
        let mut facts = HostKeyFacts {
            blob,
            pins,
            known_as: known.names_for_key(host_key),
            cert,
        };
        // A bind names a key, never a host, so a deny rule for any name it
        // goes by must apply.
        for rule in &rules {
            if rule.pins(&facts.bound()) && !facts.known_as.contains(&rule.host) {
                facts.known_as.push(rule.host.clone());
            }
        }
        facts
    }

    fn bound(&self) -> BoundHostKey<'_> {
        BoundHostKey {
            blob: &self.blob,
            known_hosts_pins: &self.pins,
            known_as: &self.known_as,
            cert: self.cert.as_ref().map(|c| HostCertificate {
                ca: &c.ca,
                principals: &c.principals,
                known_hosts_cas: &c.known_hosts_cas,
            }),
        }
    }
}

/// `known_hosts` lines for the hosts the policy allows (public keys only).
#[derive(Debug)]
pub struct KnownHosts;

impl Listing for KnownHosts {
    fn list(&self, scope: &Scope<'_>, policy: &PolicySet) -> Reply {
        known_hosts(policy, scope.ctx)
    }
}

fn known_hosts(policy: &PolicySet, ctx: &ToolContext) -> Reply {
    let known = laptop_known_hosts(ctx);
    let mut lines = Vec::new();
    for rule in policy.ssh_rules() {
        let name = crate::known_hosts::lookup_name(&rule.host);
        let keys = pinned(rule, &known).into_iter().map(|k| (k, ""));
        let cas = pinned_cas(rule, &known)
            .into_iter()
            .map(|k| (k, "@cert-authority "));
        for (key, marker) in keys.chain(cas) {
            if let Ok(text) = ssh_key::PublicKey::from(key).to_openssh() {
                let line = format!("{marker}{name} {text}");
                if !lines.contains(&line) {
                    lines.push(line);
                }
            }
        }
    }
    Reply::SshKnownHosts(lines)
}

/// A signature: verified here, and made by the laptop agent only when
/// everything holds.
#[derive(Debug)]
pub struct Sign<'a> {
    binds: &'a [Vec<u8>],
    raw: &'a [u8],
    /// The binds and request `ask` verified, for `run`.
    verified: Option<(Vec<SessionBind>, SignRequest)>,
}

impl<'a> Sign<'a> {
    /// The sign request `raw`, with the binds the shim acknowledged on the
    /// same agent connection.
    pub fn new(binds: &'a [Vec<u8>], raw: &'a [u8]) -> Self {
        Self {
            binds,
            raw,
            verified: None,
        }
    }
}

impl Tool for Sign<'_> {
    fn ask(&mut self, scope: &Scope<'_>, policy: &PolicySet) -> Result<Asked, Reply> {
        let (workspace, ctx) = (scope.workspace, scope.ctx);
        let request = parse_sign_request(self.raw)
            .map_err(|e| deny(format!("malformed sign request: {e}")))?;
        // A certificate signs as the key it certifies: the policy's `keys`
        // name that key.
        let key_fp = fingerprint(&request.credential.key);
        let data = parse_sign_data(&request.data).map_err(|e| deny(e.to_string()))?;
        // Binds matter only for logins; an SSHSIG signature is made without
        // them (none are checked against policy, so none may reach the
        // laptop agent).
        let chain = match &data {
            SignData::Userauth(_) => parse_binds(self.binds)?,
            SignData::SshSig(_) => Vec::new(),
        };
        let decided = match &data {
            SignData::SshSig(sig) => {
                let d = policy.decide(&PolicyRequest {
                    workspace,
                    caller: None,
                    action: Action::SshSig {
                        namespace: &sig.namespace,
                        key: &key_fp,
                    },
                });
                info!(tool = "ssh", op = "sshsig", namespace = %super::clip(&sig.namespace), key = %key_fp, decision = ?d.verdict, "decision");
                Decided {
                    outcome: d,
                    tool: "ssh",
                    target: format!(
                        "SSHSIG signature in namespace {:?} with key {key_fp}",
                        sig.namespace
                    ),
                    approval_key: format!("sshsig\0{}\0{key_fp}", sig.namespace),
                }
            }
            SignData::Userauth(auth) => {
                let Some((bind, hops)) = chain.split_last() else {
                    let decided = unbound_login(scope, policy, auth, &request, &key_fp)?;
                    self.verified = Some((Vec::new(), request));
                    return Ok(Asked::decided(decided));
                };
                let known = laptop_known_hosts(ctx);
                if let Some(refused) = check_hops(workspace, hops, &known, policy)? {
                    return Ok(Asked::decided(refused));
                }
                if auth.session_id != bind.session_id {
                    return Err(deny(
                        "the data to sign belongs to another SSH session than the bound one",
                    ));
                }
                if !signs_for(&auth.key, &request) {
                    return Err(deny(
                        "the userauth request names another key than the one asked to sign",
                    ));
                }
                if auth.method == Method::HostBound
                    && auth.host_key.as_ref() != Some(&bind.host_blob)
                {
                    return Err(deny(
                        "the hostbound userauth names another host key than the bound one",
                    ));
                }
                let facts = HostKeyFacts::new(&bind.host_key, &known, policy);
                let d = policy.decide(&PolicyRequest {
                    workspace,
                    caller: None,
                    action: Action::SshUserauth {
                        host_key: facts.bound(),
                        user: &auth.user,
                        key: &key_fp,
                        forwarding: bind.is_forwarding,
                    },
                });
                info!(tool = "ssh", op = "userauth", user = %super::clip(&auth.user), host_key = %fingerprint(&bind.host_key.key),
                    key = %key_fp, decision = ?d.verdict, rule = ?d.rule.as_ref().map(ToString::to_string), "decision");
                // Recorded only for allowed (pinned) hosts: a workspace can
                // mint valid binds with a key of its own, and must not grow
                // this cache.
                if d.verdict == Verdict::Allow
                    && !ctx.replay.admit(workspace, &bind.session_id, &key_fp)
                {
                    return Err(deny(
                        "this session already had a signature with this key (replay)",
                    ));
                }
                let host_fp = fingerprint(&bind.host_key.key);
                let names = if facts.known_as.is_empty() {
                    "an unknown host".to_owned()
                } else {
                    facts.known_as.join(", ")
                };
                let via: Vec<String> = hops.iter().map(|h| fingerprint(&h.host_key.key)).collect();
                let (target, approval_key) = login_terms(
                    &auth.user,
                    &names,
                    &host_fp,
                    &key_fp,
                    bind.is_forwarding,
                    &via,
                );
                Decided {
                    outcome: d,
                    tool: "ssh",
                    target,
                    approval_key,
                }
            }
        };
        self.verified = Some((chain, request));
        Ok(Asked::decided(decided))
    }

    async fn run<S>(
        self,
        scope: &Scope<'_>,
        _: &PolicySet,
        _: Option<Grant>,
        _: &mut S,
    ) -> Option<Reply> {
        let Some((chain, request)) = self.verified else {
            return Some(Reply::error(
                ErrorCode::Internal,
                "sign request run before it was verified",
            ));
        };
        Some(forward(&chain, request, scope.ctx).await)
    }
}

/// A login signature asked for on an agent connection with no session bind
/// (paramiko, Go, libssh2 send none): no host is known, so only a rule with
/// `require_session_bind = false` signs it.
fn unbound_login(
    scope: &Scope<'_>,
    policy: &PolicySet,
    auth: &Userauth,
    request: &SignRequest,
    key_fp: &str,
) -> Result<Decided, Reply> {
    if !signs_for(&auth.key, request) {
        return Err(deny(
            "the userauth request names another key than the one asked to sign",
        ));
    }
    if auth.method == Method::HostBound {
        // Only clients that bind send this method: its bind is missing.
        return Err(deny(
            "a hostbound userauth signature without a session-bind on the same agent connection",
        ));
    }
    let d = policy.decide(&PolicyRequest {
        workspace: scope.workspace,
        caller: None,
        action: Action::SshUnboundUserauth {
            user: &auth.user,
            key: key_fp,
        },
    });
    info!(tool = "ssh", op = "userauth", bound = false, user = %super::clip(&auth.user), key = %key_fp,
        decision = ?d.verdict, rule = ?d.rule.as_ref().map(ToString::to_string), "decision");
    if d.verdict == Verdict::Allow
        && !scope
            .ctx
            .replay
            .admit(scope.workspace, &auth.session_id, key_fp)
    {
        return Err(deny(
            "this session already had a signature with this key (replay)",
        ));
    }
    Ok(Decided {
        outcome: d,
        tool: "ssh",
        target: format!(
            "ssh login as {:?} with key {key_fp}, without session-bind (to any host that accepts the key)",
            auth.user
        ),
        approval_key: format!("userauth-unbound\0{}\0{key_fp}", auth.user),
    })
}

/// Whether the key of a sign request may sign a userauth request naming
/// `userauth_key`: the same key, or (as OpenSSH signs a certificate login
/// with the plain key beside it in the agent) a certificate of it.
fn signs_for(userauth_key: &[u8], request: &SignRequest) -> bool {
    if userauth_key == request.key_blob {
        return true;
    }
    request.credential.cert.is_none()
        && parse_credential(userauth_key)
            .is_ok_and(|named| named.cert.is_some() && named.key == request.credential.key)
}

/// Most binds one agent connection may carry (OpenSSH's agent keeps 16).
pub const MAX_BINDS: usize = 16;

/// Parses and verifies every bind, in order. An exact repeat of the bind
/// before it is dropped, as OpenSSH's agent accepts it as a no-op.
fn parse_binds(binds: &[Vec<u8>]) -> Result<Vec<SessionBind>, Reply> {
    if binds.len() > MAX_BINDS {
        return Err(deny(format!(
            "more than {MAX_BINDS} session-binds on one agent connection"
        )));
    }
    let mut chain: Vec<SessionBind> = Vec::with_capacity(binds.len());
    for body in binds {
        let bind = parse_bind(body)?;
        if chain.last() != Some(&bind) {
            chain.push(bind);
        }
    }
    Ok(chain)
}

/// What a login's prompt and audit line say, and what makes two logins the
/// same for "allow for": host key, user, key, whether the session forwards
/// the agent onward, and the hops it came through (an approval for a plain
/// login must not cover a forwarding one); the session id changes every
/// time, so it is left out.
fn login_terms(
    user: &str,
    names: &str,
    host_fp: &str,
    key_fp: &str,
    forwarding: bool,
    via: &[String],
) -> (String, String) {
    let onward = if forwarding {
        ", forwarding the agent onward"
    } else {
        ""
    };
    let through = if via.is_empty() {
        String::new()
    } else {
        format!(", through {}", via.join(" then "))
    };
    (
        format!(
            "ssh login as {user:?} to {names} (host key {host_fp}) with key {key_fp}{onward}{through}"
        ),
        format!(
            "userauth\0{host_fp}\0{user}\0{key_fp}\0{forwarding}\0{}",
            via.join(",")
        ),
    )
}

/// The binds before the last are the hops the agent was forwarded through,
/// as OpenSSH's agent sees them: each must have been made by a session that
/// forwards the agent, through a host whose rule sets `forwarding = true`.
/// `Ok(Some)` is the policy's denial of the first hop it refuses, for the
/// gate to audit.
fn check_hops(
    workspace: &str,
    hops: &[SessionBind],
    known: &HostKeys,
    policy: &PolicySet,
) -> Result<Option<Decided>, Reply> {
    for hop in hops {
        if !hop.is_forwarding {
            return Err(deny(
                "a second session-bind on an agent connection whose first session did not forward the agent",
            ));
        }
        let facts = HostKeyFacts::new(&hop.host_key, known, policy);
        let d = policy.decide(&PolicyRequest {
            workspace,
            caller: None,
            action: Action::SshHop {
                host_key: facts.bound(),
            },
        });
        info!(tool = "ssh", op = "hop", host_key = %fingerprint(&hop.host_key.key), decision = ?d.verdict, "decision");
        if d.verdict == Verdict::Deny {
            return Ok(Some(Decided {
                outcome: d,
                tool: "ssh",
                target: format!(
                    "agent forwarding through host key {}",
                    fingerprint(&hop.host_key.key)
                ),
                approval_key: String::new(),
            }));
        }
    }
    Ok(None)
}

fn parse_bind(body: &[u8]) -> Result<SessionBind, Reply> {
    parse_session_bind(body).map_err(|e| deny(e.to_string()))
}

async fn forward(chain: &[SessionBind], request: SignRequest, ctx: &ToolContext) -> Reply {
    let mut client = match agent(ctx).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let run = async {
        // Sign only with a key exactly as the laptop agent lists it: the
        // workspace chose this encoding, and policy fingerprints were taken
        // over it (a non-canonical ECDSA point would fingerprint differently).
        let listed = client.list().await?;
        if !listed.contains(&request.key_blob) {
            return Err(AgentError::Refused);
        }
        bind_all(&mut client, chain).await;
        client
            .sign(&request.key_blob, &request.data, request.flags)
            .await
    };
    match tokio::time::timeout(AGENT_TIMEOUT, run).await {
        Ok(Ok(sig)) => Reply::SshSignature(sig),
        Ok(Err(e)) => Reply::error(
            ErrorCode::Internal,
            format!("the laptop ssh-agent refused to sign: {e}"),
        ),
        Err(_) => Reply::error(
            ErrorCode::Internal,
            "the laptop ssh-agent did not answer in time",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(blob: &[u8]) -> SignRequest {
        SignRequest {
            key_blob: blob.to_vec(),
            credential: parse_credential(blob).unwrap_or_else(|e| panic!("{e}")),
            data: Vec::new(),
            flags: 0,
        }
    }

    /// A key signs userauth requests naming itself or a certificate of it
    /// (OpenSSH signs a certificate login with the plain key beside it),
    /// never another key's certificate, and a certificate signs only for
    /// itself.
    #[test]
    fn a_key_signs_for_itself_and_its_certificates() {
        use crate::ssh_cert::tests::{cert, ed25519};
        let (key, other, ca) = (ed25519(1), ed25519(2), ed25519(3));
        let plain = key_blob(key.public_key().key_data());
        let own_cert = cert(&key, &ca, 1, &["u"], (0, u64::MAX));
        let other_cert = cert(&other, &ca, 1, &["u"], (0, u64::MAX));
        assert!(signs_for(&plain, &request(&plain)));
        assert!(signs_for(&own_cert, &request(&plain)));
        assert!(signs_for(&own_cert, &request(&own_cert)));
        assert!(!signs_for(&other_cert, &request(&plain)));
        assert!(!signs_for(&plain, &request(&own_cert)));
    }

    #[test]
    fn replay_cache_signs_each_session_and_key_once() {
        let cache = ReplayCache::default();
        assert!(cache.admit("ws", b"sid", "SHA256:a"));
        assert!(
            cache.admit("ws", b"sid", "SHA256:b"),
            "another key in the same session (key retries)"
        );
        assert!(
            !cache.admit("ws", b"sid", "SHA256:a"),
            "the same session and key again is a replay"
        );
        assert!(
            cache.admit("other", b"sid", "SHA256:a"),
            "workspaces are independent"
        );
    }

    /// An approval given for a plain login does not cover one that forwards
    /// the agent onward or comes through hops, and the prompt says which.
    #[test]
    fn login_approvals_name_forwarding_and_hops() {
        let plain = login_terms("git", "gh", "SHA256:h", "SHA256:k", false, &[]);
        let onward = login_terms("git", "gh", "SHA256:h", "SHA256:k", true, &[]);
        let hopped = login_terms(
            "git",
            "gh",
            "SHA256:h",
            "SHA256:k",
            false,
            &["SHA256:j".into()],
        );
        assert_ne!(plain.1, onward.1);
        assert_ne!(plain.1, hopped.1);
        assert_ne!(onward.1, hopped.1);
        assert!(
            onward.0.contains("forwarding the agent onward"),
            "{}",
            onward.0
        );
        assert!(hopped.0.contains("through SHA256:j"), "{}", hopped.0);
        assert_eq!(
            plain,
            login_terms("git", "gh", "SHA256:h", "SHA256:k", false, &[])
        );
    }

    /// One workspace filling its replay cache with allowed logins does not
    /// block another workspace's logins; it blocks only its own until
    /// entries age out.
    #[test]
    fn one_workspace_fills_only_its_own_replay_cache() {
        let cache = ReplayCache::default();
        let t0 = Instant::now();
        for i in 0..8u32 {
            assert!(cache.admit_at("flood", &i.to_be_bytes(), "k", t0, 8));
        }
        assert!(!cache.admit_at("flood", b"one more", "k", t0, 8));
        assert!(
            cache.admit_at("quiet", b"sid", "k", t0, 8),
            "another workspace is blocked"
        );
        let later = t0 + REPLAY_WINDOW;
        assert!(
            cache.admit_at("flood", b"one more", "k", later, 8),
            "aged entries go"
        );
    }
}
