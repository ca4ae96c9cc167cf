//! Layers: an org baseline that is a ceiling, the user's policy, and
//! `[workspace."NAME"]` sections that narrow both for one workspace.
//!
//! Each layer is a whole [`Policy`], decided on its own; [`PolicySet::decide`]
//! combines the answers without knowing any tool's rules:
//! 1. an explicit deny (a deny rule matched) in any layer denies;
//! 2. a *ceiling* (the baseline, and any workspace section) that has allow
//!    rules for the request's section (`tokens`, `ssh`, ...) must allow too:
//!    an org that writes `[[ssh.allow]] host = "github.com"` caps every user's
//!    SSH to github.com;
//! 3. the user's policy must allow (default deny);
//! 4. every allowing layer's limits apply (each `rate` is counted on its own)
//!    and any allowing layer's `approve = "prompt"` asks.
//!
//! A section "has allow rules" when its table holds anything besides `deny`
//! (see [`holds_allow_rules`]); that errs on the side of the ceiling applying.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::schema::diag::{Diagnostic, PolicyErrors};
use nexus_protocol::Section;

use crate::engine::{Decision, Policy, Source};
use crate::schema::decision::{RuleRef, Verdict};
use crate::schema::rate::Rate;
use crate::schema::request::{Action, Request};
use crate::sections::ssh::SshRule;

/// Which layer a rule or a decision comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The org baseline (`/etc/nexus/policy.d`): a ceiling.
    Baseline,
    /// A `[workspace."NAME"]` section of the baseline: a ceiling.
    BaselineWorkspace,
    /// The user's policy: must allow.
    User,
    /// A `[workspace."NAME"]` section of the user's policy: a ceiling whose
    /// grants (e.g. a token source) replace the user's for that workspace.
    UserWorkspace,
}

impl Layer {
    /// Short name, for JSON and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Baseline => "baseline",
            Layer::BaselineWorkspace => "baseline-workspace",
            Layer::User => "user",
            Layer::UserWorkspace => "user-workspace",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Baseline => "org baseline",
            Layer::BaselineWorkspace => "org baseline's workspace section",
            Layer::User => "user policy",
            Layer::UserWorkspace => "user policy's workspace section",
        })
    }
}

/// A rate limit that applies to an allowed request, with the rule setting it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The limit.
    pub rate: Rate,
    /// The rule that sets it; the proxy counts calls per rule.
    pub rule: RuleRef,
}

/// What one layer said about a request.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerDecision {
    /// The layer.
    pub layer: Layer,
    /// Its decision, as if it were the only policy.
    pub decision: Decision,
    /// Whether the layer had a say: it must allow (a ceiling with allow
    /// rules for the section, or the user's policy).
    pub binding: bool,
}

/// The combined decision of every layer.
///
/// Derefs to the [`Decision`] (verdict, deciding rule, reason, grant).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The decision; its grant is the most specific allowing user layer's.
    pub decision: Decision,
    /// Every rate limit of every allowing layer; all must admit the call.
    pub limits: Vec<Limit>,
    /// A rule asking for approval (`approve = "prompt"`), if any layer's does.
    pub approve: Option<RuleRef>,
    /// What each layer said, in order baseline, baseline workspace, user,
    /// user workspace (for `policy explain`).
    pub trace: Vec<LayerDecision>,
}

impl Deref for Outcome {
    type Target = Decision;

    fn deref(&self) -> &Decision {
        &self.decision
    }
}

/// Why a layered policy could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{errors}")]
pub struct LoadError {
    /// The layer at fault.
    pub layer: Layer,
    /// What is wrong, with `file:line:col`.
    pub errors: PolicyErrors,
}

/// The baseline, the user's policy and their workspace sections: what the
/// proxy decides with.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    baseline: Option<Policy>,
    user: Policy,
    digest: String,
    beyond: Vec<Diagnostic>,
    /// The layers for workspaces without a section of their own.
    common: View,
    /// The layers for each workspace with a `[workspace."NAME"]` section.
    sections: BTreeMap<String, View>,
}

/// The layers that apply to one workspace, each carrying the deny rules of
/// all of them: a deny rule applies whatever layer it is written in (an SSH
/// deny rule is matched while looking at allow rules, so it has to be there).
type View = Vec<(Layer, Policy)>;

/// The layers for workspace `ws` (`None`: one without a section).
fn view(baseline: Option<&Policy>, user: &Policy, ws: Option<&str>) -> View {
    let section = |p: &Policy| ws.and_then(|w| p.workspaces.get(w)).cloned();
    let mut layers = Vec::with_capacity(4);
    if let Some(b) = baseline {
        layers.push((Layer::Baseline, b.clone()));
        if let Some(w) = section(b) {
            layers.push((Layer::BaselineWorkspace, w));
        }
    }
    layers.push((Layer::User, user.clone()));
    if let Some(w) = section(user) {
        layers.push((Layer::UserWorkspace, w));
    }
    let mut denies = Policy::default();
    for (_, p) in &layers {
        denies.add_denies_from(p);
    }
    for (_, p) in &mut layers {
        p.add_denies_from(&denies);
    }
    layers
}

impl PolicySet {
    /// Combines a baseline (if any) and the user's policy.
    #[must_use]
    pub fn new(baseline: Option<Policy>, user: Policy) -> Self {
        let beyond = baseline
            .as_ref()
            .map(|b| beyond_baseline(b, &user))
            .unwrap_or_default();
        let common = view(baseline.as_ref(), &user, None);
        let mut sections = BTreeMap::new();
        for p in baseline.iter().chain(std::iter::once(&user)) {
            for name in p.workspaces.keys() {
                sections.insert(
                    name.clone(),
                    view(baseline.as_ref(), &user, Some(name.as_str())),
                );
            }
        }
        PolicySet {
            baseline,
            user,
            digest: String::new(),
            beyond,
            common,
            sections,
        }
    }

    /// Loads the user's policy (`None`: denies everything) and the baseline
    /// (`None`: no baseline), each a file or a directory of `*.toml`.
    ///
    /// # Errors
    ///
    /// The first broken layer (baseline first), with every mistake in it.
    pub fn load(user: Option<&Path>, baseline: Option<&Path>) -> Result<Self, LoadError> {
        let mut hash = Sha256::new();
        let mut load = |path: Option<&Path>, layer: Layer| -> Result<Option<Policy>, LoadError> {
            let Some(path) = path else {
                hash.update([0u8]);
                return Ok(None);
            };
            let (policy, sources) =
                Policy::load_with_sources(path).map_err(|errors| LoadError { layer, errors })?;
            hash.update([1u8]);
            for s in &sources {
                hash_source(&mut hash, s);
            }
            Ok(Some(policy))
        };
        let baseline = load(baseline, Layer::Baseline)?;
        let user = load(user, Layer::User)?.unwrap_or_default();
        let mut set = Self::new(baseline, user);
        set.digest = hex::encode(&hash.finalize()[..8]);
        Ok(set)
    }

    /// A short hash of every source read (both layers), to tell versions apart;
    /// empty when built from memory.
    #[must_use]
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The user's policy.
    #[must_use]
    pub fn user(&self) -> &Policy {
        &self.user
    }

    /// The org baseline, if any.
    #[must_use]
    pub fn baseline(&self) -> Option<&Policy> {
        self.baseline.as_ref()
    }

    /// Every warning: the baseline's, the user's, and user rules that go
    /// beyond the baseline (they are ignored where they do).
    #[must_use]
    pub fn warnings(&self) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = self
            .baseline
            .iter()
            .flat_map(|b| b.warnings().iter().cloned())
            .collect();
        out.extend(self.user.warnings().iter().cloned());
        out.extend(self.beyond.iter().cloned());
        out
    }

    /// Every `[[ssh.allow]]` rule of every layer and workspace section, for
    /// resolving pinned host keys and the names a host key is known under.
    #[must_use]
    pub fn ssh_rules(&self) -> Vec<&SshRule> {
        self.policies()
            .into_iter()
            .flat_map(Policy::ssh_rules)
            .collect()
    }

    /// Every policy of the set: each layer, then its workspace sections.
    pub(crate) fn policies(&self) -> Vec<&Policy> {
        let mut out = Vec::new();
        for policy in self.baseline.iter().chain(std::iter::once(&self.user)) {
            out.push(policy);
            out.extend(policy.workspaces.values());
        }
        out
    }

    /// Names of the workspaces that have a `[workspace."NAME"]` section in any layer.
    #[must_use]
    pub fn workspace_sections(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .baseline
            .iter()
            .chain(std::iter::once(&self.user))
            .flat_map(|p| p.workspaces.keys().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The deny rule of any layer (for `workspace`) that matches a file
    /// found inside a granted directory or set (normalized `~/x` form).
    #[must_use]
    pub fn file_denied(&self, workspace: &str, path: &str) -> Option<RuleRef> {
        let layers = self.sections.get(workspace).unwrap_or(&self.common);
        layers.iter().find_map(|(_, p)| p.file_denied(path))
    }

    /// The tools `tool list` shows workspace `workspace`: those every
    /// binding layer declares and no deny rule of any layer hides (the same
    /// layers that decide a run), with the most specific user layer's
    /// declaration. A baseline deny or a `[workspace."NAME"]` section that
    /// narrows the tools also narrows what the workspace learns of them.
    #[must_use]
    pub fn tools_for(&self, workspace: &str) -> Vec<&crate::sections::tools::ToolRule> {
        self.listed_for(workspace, Section::Tools, Policy::tools, |t| &t.name)
    }

    /// The HTTP APIs workspace `workspace` may call (for listings: MCP,
    /// `nexus-shim http list`): like [`PolicySet::tools_for`], those every
    /// binding layer declares and no deny rule of any layer hides, with the
    /// most specific user layer's declaration (a baseline's pinned values
    /// apply to requests, through [`PolicySet::decide`]).
    #[must_use]
    pub fn http_for(&self, workspace: &str) -> Vec<&crate::sections::http::HttpRule> {
        self.listed_for(workspace, Section::Http, Policy::http_apis, |a| &a.name)
    }

    /// The hosts workspace `workspace` has git brokered for (`HOST` or
    /// `HOST:PORT`, sorted): those of the most specific user layer that
    /// every binding layer brokers too. Only a hint for the workspace's git
    /// configuration: each fetch and push is decided on its own.
    #[must_use]
    pub fn git_hosts_for(&self, workspace: &str) -> Vec<String> {
        let layers = self.sections.get(workspace).unwrap_or(&self.common);
        let binding: Vec<&(Layer, Policy)> = layers
            .iter()
            .filter(|(l, p)| *l == Layer::User || p.has_allow_rules(Section::Git))
            .collect();
        let Some((_, shown)) = binding
            .iter()
            .rev()
            .find(|(l, _)| matches!(l, Layer::User | Layer::UserWorkspace))
        else {
            return Vec::new();
        };
        shown
            .git_hosts()
            .into_iter()
            .filter(|h| binding.iter().all(|(_, p)| p.git_hosts().contains(h)))
            .map(str::to_owned)
            .collect()
    }

    /// What `tools_for` and `http_for` share: the most specific user
    /// layer's `list`, cut to names every binding layer's `list` has.
    fn listed_for<'a, T>(
        &'a self,
        workspace: &str,
        section: Section,
        list: fn(&'a Policy) -> Vec<&'a T>,
        name: fn(&T) -> &String,
    ) -> Vec<&'a T> {
        let layers = self.sections.get(workspace).unwrap_or(&self.common);
        let binding: Vec<&(Layer, Policy)> = layers
            .iter()
            .filter(|(l, p)| *l == Layer::User || p.has_allow_rules(section))
            .collect();
        let Some((_, shown)) = binding
            .iter()
            .rev()
            .find(|(l, _)| matches!(l, Layer::User | Layer::UserWorkspace))
        else {
            return Vec::new();
        };
        list(shown)
            .into_iter()
            .filter(|t| {
                binding
                    .iter()
                    .all(|(_, p)| list(p).iter().any(|o| name(o) == name(t)))
            })
            .collect()
    }

    /// Decides one request through every layer (see the module docs).
    #[must_use]
    pub fn decide(&self, req: &Request<'_>) -> Outcome {
        let section = section_of(&req.action);
        let layers = self.sections.get(req.workspace).unwrap_or(&self.common);
        let trace: Vec<LayerDecision> = layers
            .iter()
            .map(|(layer, policy)| LayerDecision {
                layer: *layer,
                decision: policy.decide(req),
                binding: *layer == Layer::User || policy.has_allow_rules(section),
            })
            .collect();
        let refusal = trace
            .iter()
            .find(|t| t.decision.verdict == Verdict::Deny && t.decision.rule.is_some())
            .or_else(|| {
                trace
                    .iter()
                    .find(|t| t.binding && t.decision.verdict == Verdict::Deny)
            });
        if let Some(t) = refusal {
            let reason = match (t.layer, t.decision.rule.is_some()) {
                // Deny rules apply in every layer; the reason names the file.
                (Layer::User, _) | (_, true) => t.decision.reason.clone(),
                (layer, false) => format!(
                    "{layer}: {}; it has [{}] allow rules, and user rules cannot go \
                     beyond them",
                    t.decision.reason,
                    section.section_name()
                ),
            };
            let decision = Decision {
                verdict: Verdict::Deny,
                rule: t.decision.rule.clone(),
                reason,
                grant: None,
            };
            return Outcome {
                decision,
                limits: Vec::new(),
                approve: None,
                trace,
            };
        }
        let mut limits = Vec::new();
        let mut approve = None;
        for t in trace
            .iter()
            .filter(|t| t.decision.verdict == Verdict::Allow)
        {
            if let Some(grant) = &t.decision.grant {
                let terms = grant.terms();
                if let Some(rate) = terms.rate {
                    limits.push(Limit {
                        rate,
                        rule: terms.rule.clone(),
                    });
                }
                if terms.approve.is_some() && approve.is_none() {
                    approve = Some(terms.rule.clone());
                }
            }
        }
        let mut chosen = trace
            .iter()
            .rev()
            .find(|t| {
                matches!(t.layer, Layer::User | Layer::UserWorkspace)
                    && t.binding
                    && t.decision.verdict == Verdict::Allow
            })
            .map(|t| t.decision.clone())
            .unwrap_or_else(|| Decision {
                verdict: Verdict::Deny,
                rule: None,
                reason: "no layer allowed the request (default deny)".to_owned(),
                grant: None,
            });
        cap_by_ceilings(&mut chosen, &trace);
        Outcome {
            decision: chosen,
            limits,
            approve,
            trace,
        }
    }
}

/// Every other allowing layer's grant caps the chosen one, as its section
/// says (see each section's `SectionGrant::cap`).
fn cap_by_ceilings(chosen: &mut Decision, trace: &[LayerDecision]) {
    let Some(grant) = &mut chosen.grant else {
        return;
    };
    for t in trace
        .iter()
        .filter(|t| t.decision.verdict == Verdict::Allow)
    {
        if let Some(ceiling) = &t.decision.grant {
            let org = matches!(t.layer, Layer::Baseline | Layer::BaselineWorkspace);
            grant.cap(ceiling, org);
        }
    }
}

/// Feeds one source into a version hash, length-prefixed so no two source
/// lists hash alike by accident.
fn hash_source(hash: &mut Sha256, s: &Source) {
    for part in [s.name.as_bytes(), s.text.as_bytes()] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
}

/// The policy section that decides an action: what "allow rules for the tool" means.
#[must_use]
pub fn section_of(action: &Action<'_>) -> Section {
    action.section()
}

/// Warnings for user rules the baseline cuts back: tokens it does not
/// allow, SSH rules no baseline rule covers, HTTP APIs it does not declare
/// or pins elsewhere.
fn beyond_baseline(baseline: &Policy, user: &Policy) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut users: Vec<(Option<&str>, &Policy)> = vec![(None, user)];
    users.extend(user.workspaces.iter().map(|(n, p)| (Some(n.as_str()), p)));
    for (ws, policy) in users {
        let mut ceilings = vec![baseline];
        ceilings.extend(ws.and_then(|w| baseline.workspaces.get(w)));
        // A rule is reported once, for the first ceiling that cuts it back.
        let mut reported: Vec<&RuleRef> = Vec::new();
        for b in ceilings {
            for (rule, why) in policy.beyond(b, ws.unwrap_or("")) {
                if !reported.contains(&rule) {
                    reported.push(rule);
                    out.push(beyond(rule, &why));
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    out
}

/// A warning at `rule` saying the baseline cuts it back.
fn beyond(rule: &RuleRef, why: &str) -> Diagnostic {
    rule.diagnostic(format!(
        "[{}] goes beyond the org baseline and is ignored where it does: {why}",
        rule.section
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoundHostKey;
    use crate::Grant;
    use crate::sections::tokens::TokenSource;

    fn load(name: &str, text: &str) -> Policy {
        Policy::from_sources(&[Source::new(name, text)]).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(super) fn set(baseline: Option<&str>, user: &str) -> PolicySet {
        PolicySet::new(
            baseline.map(|b| load("base.toml", b)),
            load("user.toml", user),
        )
    }

    fn token(set: &PolicySet, ws: &str, name: &str) -> Outcome {
        set.decide(&Request {
            workspace: ws,
            caller: None,
            action: Action::Token { name },
        })
    }

    fn login(set: &PolicySet, host: &str, user: &str) -> Outcome {
        let names = [host.to_owned()];
        set.decide(&Request {
            workspace: "dev",
            caller: None,
            action: Action::SshUserauth {
                host_key: BoundHostKey {
                    blob: &[],
                    known_hosts_pins: &names,
                    known_as: &names,
                    cert: None,
                },
                user,
                key: "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                forwarding: false,
            },
        })
    }

    const USER: &str = r#"
[tokens.openai]
source = "env:OPENAI"
rate = "60/min"

[tokens.prod-db]
source = "env:PROD"

[tokens.gh]
source = "env:GH"

[[ssh.allow]]
host = "github.com"
user = "git"

[[ssh.allow]]
host = "gitlab.com"
user = "git"

[[ssh.allow]]
host = "prod-1"
user = "git"
"#;

    #[test]
    fn without_baseline_the_user_policy_decides() {
        let s = set(None, USER);
        assert_eq!(token(&s, "dev", "openai").verdict, Verdict::Allow);
        assert_eq!(token(&s, "dev", "nope").verdict, Verdict::Deny);
        assert_eq!(login(&s, "gitlab.com", "git").verdict, Verdict::Allow);
    }

    #[test]
    fn a_baseline_deny_beats_a_user_allow() {
        let s = set(Some("[[tokens.deny]]\nname = \"prod-*\"\n"), USER);
        let d = token(&s, "dev", "prod-db");
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(
            d.rule.as_ref().map(ToString::to_string),
            Some("base.toml:1".into())
        );
        // Tokens the baseline does not mention are the user's to allow.
        assert_eq!(token(&s, "dev", "openai").verdict, Verdict::Allow);
    }

    #[test]
    fn a_baseline_ssh_deny_alone_applies() {
        // The baseline has no allow rule: its deny still applies, although
        // ssh deny rules are matched against allow rules.
        let s = set(Some("[[ssh.deny]]\nhost = \"prod-*\"\n"), USER);
        let d = login(&s, "prod-1", "git");
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        assert_eq!(d.rule.as_ref().map(|r| r.file.as_str()), Some("base.toml"));
        assert_eq!(login(&s, "github.com", "git").verdict, Verdict::Allow);
    }

    #[test]
    fn baseline_allow_rules_are_a_ceiling() {
        let s = set(
            Some(
                "[[ssh.allow]]\nhost = \"github.com\"\nuser = \"*\"\nrate = \"10/min\"\napprove = \"prompt\"\n",
            ),
            USER,
        );
        let ok = login(&s, "github.com", "git");
        assert_eq!(ok.verdict, Verdict::Allow, "{}", ok.reason);
        assert_eq!(ok.rule.as_ref().map(|r| r.file.as_str()), Some("user.toml"));
        assert_eq!(ok.limits.len(), 1, "the baseline's rate applies");
        assert_eq!(
            ok.approve.as_ref().map(|r| r.file.as_str()),
            Some("base.toml")
        );
        let capped = login(&s, "gitlab.com", "git");
        assert_eq!(capped.verdict, Verdict::Deny);
        assert!(
            capped.reason.starts_with("org baseline: "),
            "{}",
            capped.reason
        );
        // Tokens are not capped: the baseline has no token allow rules.
        assert_eq!(token(&s, "dev", "openai").verdict, Verdict::Allow);
        // The baseline alone never grants.
        let none = set(Some("[[ssh.allow]]\nhost = \"x\"\nuser = \"*\"\n"), "");
        assert_eq!(login(&none, "x", "git").verdict, Verdict::Deny);
    }

    #[test]
    fn limits_of_every_allowing_layer_apply() {
        let s = set(
            Some("[tokens.openai]\nsource = \"env:X\"\nrate = \"5/min\"\n"),
            USER,
        );
        let d = token(&s, "dev", "openai");
        assert_eq!(d.verdict, Verdict::Allow);
        let rates: Vec<_> = d.limits.iter().map(|l| l.rate.to_string()).collect();
        assert_eq!(rates, ["5/min", "60/min"]);
        // The user's source is used, not the baseline's.
        let Some(Grant::Token(t)) = &d.grant else {
            panic!("no grant")
        };
        assert_eq!(t.source, TokenSource::Env("OPENAI".into()));
        assert_eq!(token(&s, "dev", "gh").verdict, Verdict::Deny);
    }

    #[test]
    fn workspace_sections_narrow_for_that_workspace_only() {
        let user = format!(
            "{USER}\n[workspace.\"ci\".tokens.openai]\nsource = \"env:CI_OPENAI\"\n\n\
             [[workspace.ci.ssh.deny]]\nhost = \"gitlab.com\"\n"
        );
        let s = set(None, &user);
        // ci: only openai, from its own source.
        let d = token(&s, "ci", "openai");
        let Some(Grant::Token(t)) = &d.grant else {
            panic!("{}", d.reason)
        };
        assert_eq!(t.source, TokenSource::Env("CI_OPENAI".into()));
        assert_eq!(token(&s, "ci", "gh").verdict, Verdict::Deny);
        assert_eq!(login(&s, "gitlab.com", "git").verdict, Verdict::Allow);
        let ci_login = {
            let names = ["gitlab.com".to_owned()];
            s.decide(&Request {
                workspace: "ci",
                caller: None,
                action: Action::SshUserauth {
                    host_key: BoundHostKey {
                        blob: &[],
                        known_hosts_pins: &names,
                        known_as: &names,
                        cert: None,
                    },
                    user: "git",
                    key: "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                    forwarding: false,
                },
            })
        };
        assert_eq!(ci_login.verdict, Verdict::Deny);
        // dev: the global rules.
        assert_eq!(token(&s, "dev", "gh").verdict, Verdict::Allow);
        let Some(Grant::Token(t)) = token(&s, "dev", "openai").decision.grant else {
            panic!("denied")
        };
        assert_eq!(t.source, TokenSource::Env("OPENAI".into()));
        // A token declared only in a workspace section is not granted.
        let only = set(None, "[workspace.ci.tokens.x]\nsource = \"env:X\"\n");
        assert_eq!(token(&only, "ci", "x").verdict, Verdict::Deny);
        assert_eq!(s.workspace_sections(), ["ci"]);
    }

    #[test]
    fn baseline_workspace_sections_cap_too() {
        let s = set(Some("[[workspace.ci.tokens.deny]]\nname = \"*\"\n"), USER);
        assert_eq!(token(&s, "ci", "openai").verdict, Verdict::Deny);
        assert_eq!(token(&s, "dev", "openai").verdict, Verdict::Allow);
    }

    #[test]
    fn user_rules_beyond_the_baseline_are_reported() {
        let s = set(
            Some(
                "[tokens.openai]\nsource = \"env:X\"\n\n[[tokens.deny]]\nname = \"prod-*\"\n\n\
                 [[ssh.allow]]\nhost = \"github.com\"\nuser = \"*\"\n",
            ),
            USER,
        );
        let warnings: Vec<String> = s.warnings().iter().map(ToString::to_string).collect();
        let beyond: Vec<&String> = warnings
            .iter()
            .filter(|w| w.contains("goes beyond"))
            .collect();
        let at: Vec<&str> = beyond
            .iter()
            .map(|w| w.split(": ").next().unwrap_or(""))
            .collect();
        // prod-db (denied), gh (not in the baseline's tokens), gitlab and prod-1.
        assert_eq!(
            at,
            [
                "user.toml:6:1",
                "user.toml:9:1",
                "user.toml:16:1",
                "user.toml:20:1"
            ],
            "{warnings:#?}"
        );
    }

    #[test]
    fn workspace_section_errors() {
        for (text, want) in [
            (
                "[workspace.\"a b\".tokens.x]\nsource = \"env:X\"\n",
                "1:12: workspace.\"a b\": invalid workspace name",
            ),
            (
                "[workspace.ci.workspace.x.tokens.y]\nsource = \"env:X\"\n",
                "workspace: a [workspace.\"NAME\"] section cannot hold another one",
            ),
            (
                "[workspace.ci.tokens.x]\nsource = \"vault:x\"\n",
                "2:10: tokens.x.source",
            ),
            ("workspace = 1\n", "workspace: expected a table"),
        ] {
            let Err(e) = Policy::from_sources(&[Source::new("p.toml", text)]) else {
                panic!("{text} accepted")
            };
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
        // The same token in the workspace sections of two files.
        let a = Source::new("a.toml", "[workspace.ci.tokens.x]\nsource = \"env:X\"\n");
        let b = Source::new("b.toml", "[workspace.ci.tokens.x]\nsource = \"env:Y\"\n");
        let Err(e) = Policy::from_sources(&[a, b]) else {
            panic!("accepted")
        };
        assert!(e.to_string().contains("already declared at a.toml"), "{e}");
    }

    #[test]
    fn load_hashes_the_sources() {
        let dir = std::env::temp_dir().join(format!("nexus-layers-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let user = dir.join("user.toml");
        let write = |text: &str| std::fs::write(&user, text).unwrap_or_else(|e| panic!("{e}"));
        write("[tokens.a]\nsource = \"env:A\"\n");
        let one = PolicySet::load(Some(&user), None).unwrap_or_else(|e| panic!("{e}"));
        write("[tokens.b]\nsource = \"env:A\"\n");
        let two = PolicySet::load(Some(&user), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.digest().len(), 16);
        assert_ne!(one.digest(), two.digest());
        write("[tokens.b\n");
        let Err(e) = PolicySet::load(Some(&user), None) else {
            panic!("accepted")
        };
        assert_eq!(e.layer, Layer::User);
        let Err(e) = PolicySet::load(Some(&user), Some(&user)) else {
            panic!("accepted")
        };
        assert_eq!(e.layer, Layer::Baseline);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod review_tests {
    use super::tests::set;
    use super::*;
    use crate::Grant;

    #[test]
    fn tool_list_follows_the_layers() {
        let set = set(
            Some("[[tools.deny]]\nname = \"danger\"\n"),
            "[tools.ok]\ncommand = [\"true\"]\n\n[tools.wide]\ncommand = [\"true\"]\n\n\
             [tools.danger]\ncommand = [\"true\"]\n\n\
             [workspace.\"w\".tools.ok]\ncommand = [\"true\"]\n",
        );
        let names = |ws: &str| -> Vec<String> {
            set.tools_for(ws).iter().map(|t| t.name.clone()).collect()
        };
        assert_eq!(names("other"), ["ok", "wide"]);
        assert_eq!(names("w"), ["ok"]);
    }

    /// A ceiling's file rule caps the grant the proxy acts on: its
    /// max_size, and its narrower tree (the proxy checks that the file it
    /// opens, symlinks resolved, lies under the granted path).
    #[test]
    fn a_ceiling_file_rule_caps_size_and_tree() {
        let set = set(
            Some("[[files.allow]]\npath = \"~/.x/config/\"\nmax_size = \"1KiB\"\n"),
            "[[files.allow]]\npath = \"~/.x/\"\nmax_size = \"10MiB\"\n",
        );
        let out = set.decide(&Request {
            workspace: "w",
            caller: None,
            action: Action::File {
                path: "~/.x/config/a.json",
            },
        });
        assert_eq!(out.verdict, Verdict::Allow, "{}", out.reason);
        let Some(Grant::File(rule)) = &out.grant else {
            panic!("{:?}", out.grant);
        };
        assert_eq!(rule.max_size, 1 << 10, "the baseline's max_size is ignored");
        assert_eq!(
            rule.path, "~/.x/config/",
            "the baseline's narrower tree is ignored"
        );
    }

    /// A ceiling never widens the grant: the user's rule for the single
    /// file `~/proj` must not become the baseline's directory rule
    /// `~/proj/` (the proxy would then send every file below `~/proj/`,
    /// which the user's policy does not allow one by one).
    #[test]
    fn a_ceiling_directory_does_not_widen_a_users_file_rule() {
        let set = set(
            Some("[[files.allow]]\npath = \"~/proj/\"\n"),
            "[[files.allow]]\npath = \"~/proj\"\n",
        );
        let out = set.decide(&Request {
            workspace: "w",
            caller: None,
            action: Action::File { path: "~/proj" },
        });
        assert_eq!(out.verdict, Verdict::Allow, "{}", out.reason);
        let Some(Grant::File(rule)) = &out.grant else {
            panic!("{:?}", out.grant);
        };
        assert!(
            !rule.is_dir(),
            "the user's file rule became the directory rule {:?}",
            rule.path
        );
    }

    /// A ceiling that declares a set caps what the user's set of the same
    /// name installs: entries the ceiling's set does not cover are dropped.
    #[test]
    fn a_ceiling_set_caps_the_users_set() {
        let set = set(
            Some("[files.sets.s]\npaths = [\"~/.a/x.json\", \"~/.b/\"]\n"),
            "[files.sets.s]\npaths = [\"~/.a/x.json\", \"~/.b/c/\", \"~/.ssh/id_ed25519\"]\n",
        );
        let out = set.decide(&Request {
            workspace: "w",
            caller: None,
            action: Action::FileSet { name: "s" },
        });
        assert_eq!(out.verdict, Verdict::Allow, "{}", out.reason);
        let Some(Grant::FileSet(s)) = &out.grant else {
            panic!("{:?}", out.grant);
        };
        assert_eq!(s.paths, ["~/.a/x.json", "~/.b/c/"]);
    }

    /// A baseline that declares a tool pins what runs: the user's
    /// declaration of the same name cannot swap in another command.
    /// (It used to cap only the name and arguments.)
    #[test]
    fn a_ceiling_tool_pins_its_command() {
        let set = set(
            Some(
                "[tools.t]\ncommand = [\"gh\", \"pr\", \"create\"]\ntimeout = \"10s\"\nenv = [\"GH_TOKEN\"]\n",
            ),
            "[tools.t]\ncommand = [\"sh\", \"-c\", \"anything\"]\ntimeout = \"1h\"\nenv = [\"GH_TOKEN\", \"AWS_SECRET_ACCESS_KEY\"]\n",
        );
        let out = set.decide(&Request {
            workspace: "w",
            caller: None,
            action: Action::Tool {
                name: "t",
                args: &[],
            },
        });
        let Some(Grant::Tool(t)) = &out.grant else {
            panic!("the tool should be allowed: {:?}", out.grant);
        };
        assert_eq!(t.command, ["gh", "pr", "create"]);
        assert_eq!(t.timeout, std::time::Duration::from_secs(10));
        assert_eq!(t.env, ["GH_TOKEN"]);
    }
}
