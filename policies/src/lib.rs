//! Policy engine of Nexus Agent Proxy.
//!
//! The laptop proxy answers forwarded calls from an untrusted remote workspace
//! only as far as a TOML policy allows. This crate turns policy files into a
//! [`Policy`] and decides each [`Request`]: default deny, and any matching deny
//! rule beats any allow. It is pure: no sockets, no clock, no environment; the
//! only I/O is reading the files given to [`Policy::load`].
//!
//! ```toml
//! version = 1
//!
//! [tokens.openai]
//! source = "keyring:nexus/openai"   # env:VAR | file:PATH | { command = [...] } | command:[...]
//! rate = "60/min"                   # optional
//! mcp = false                       # optional
//! approve = "prompt"                # optional
//! reveal = false                    # optional: token get even when [http.*] binds it
//!
//! [[tokens.deny]]                   # glob over token names, case-insensitive
//! name = "prod-*"
//!
//! [[ssh.allow]]                     # SSH agent forwarding and SSHSIG signing
//! host = "github.com"               # "HOST" or "HOST:PORT", exact
//! user = "git"                      # exact, or "*"
//! keys = ["SHA256:..."]             # optional; default: every agent key
//! host_keys = ["ssh-ed25519 AAAA..."] # optional; default: laptop known_hosts for host
//! sshsig_namespaces = ["git"]       # optional
//! forwarding = false                # optional
//! approve = "prompt"                # optional
//! rate = "30/min"                   # optional
//!
//! [[ssh.deny]]                      # matches when all its fields match
//! host = "prod-*"                   # glob over the allow rule's host
//! user = "root"                     # glob over the user
//! key = "SHA256:..."                # exact fingerprint
//!
//! [http.openai]                     # HTTP secret injection: the workspace calls
//! upstream = "https://api.openai.com"   # $NEXUS_HTTP_URL/openai/v1/...; the laptop
//! header = "Authorization"          # sends it to upstream + /v1/... with the
//! value = "Bearer {token}"          # secret in header (value default "{token}")
//! token = "openai"                  # a [tokens.NAME], or source = "..." inline
//! ca_file = "~/corp-ca.pem"         # optional extra root
//! methods = ["GET", "POST"]         # optional, default any
//! paths = ["/v1/**"]                # optional globs over the path after NAME
//! max_request_size = "32MiB"        # optional (at most 1GiB)
//! timeout = "10m"                   # optional, whole request (at most 24h)
//! description = "OpenAI API"        # optional
//! mcp = false                       # optional: offered to MCP clients
//! approve = "prompt"                # optional
//! rate = "60/min"                   # optional
//!
//! [[http.deny]]                     # glob over API names
//! name = "prod-*"
//! ```
//!
//! A token an `[http.*]` section names is bound to that upstream's origin:
//! no other origin may use it (load error) and [`Action::Token`] for it, or
//! for any token with the same source, is denied unless its declaration says
//! `reveal = true`. [`HttpRule::url_for`] joins the workspace's path to the
//! upstream and re-checks the result; see `http.rs`.
//!
//! The SSH decisions ([`Action::SshUserauth`], [`Action::SshSig`],
//! [`Action::SshIdentity`]) take key fingerprints and, for logins, a predicate
//! saying whether the bound host key is pinned for a rule: the proxy reads
//! `known_hosts`, this crate does not.
//!
//! Rule references ([`RuleRef`]) give the position of the rule's table: the
//! `[tokens.NAME]` or `[[tokens.deny]]` header line when the table has one,
//! otherwise the start of the inline table (`NAME = { ... }`) or of the first
//! dotted key that created it (`tokens.NAME.source = ...`).
//!
//! `[[ssh.allow]]` and `[[ssh.deny]]` rules point at their `[[...]]` header line.
//!
//! Layers ([`PolicySet`]): an org baseline that is a ceiling, the user's
//! policy, and `[workspace."NAME"]` sections (any of the above, nested under
//! `workspace.NAME`) that narrow both for one workspace; see `layers.rs`.
//! [`explain`] decides requests written as `tool` + `key=value` and runs
//! fixture files of expected decisions (`policy explain`, `policy test`).
//!
//! Deny globs match case-insensitively (`prod-*` also denies `PROD-db`), so a
//! change of case never slips past a deny; token names themselves are
//! case-sensitive.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod diag;
mod engine;
pub mod explain;
mod files;
mod git;
mod glob_deny;
mod http;
mod layers;
mod parse;
mod rate;
pub mod schema;
mod ssh;
mod tools;

pub use diag::{Diagnostic, PolicyErrors};
pub use engine::{
    Action, Approve, Caller, Decision, Grant, Policy, Request, RuleRef, SCHEMA, Source, TokenRule,
    TokenSource, Verdict,
};
pub use files::{DEFAULT_MAX_SIZE, FileRule, FileSet, check_path as check_file_path};
pub use git::{GitAction, GitRule};
pub use http::{
    DEFAULT_MAX_REQUEST_SIZE, DEFAULT_TIMEOUT as HTTP_DEFAULT_TIMEOUT, HttpRule, HttpSecret,
    MAX_REQUEST_SIZE, MAX_REST_LEN, Upstream,
};
pub use layers::{Layer, LayerDecision, Limit, LoadError, Outcome, PolicySet, section_of};
pub use rate::{Rate, RateError};
pub use ssh::{BoundHostKey, SshRule};
pub use tools::{ToolRule, match_args};
