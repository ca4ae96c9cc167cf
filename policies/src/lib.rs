//! Policy engine of Nexus Agent Proxy.
//!
//! The laptop proxy answers forwarded calls from an untrusted remote workspace
//! only as far as a TOML policy allows. This crate turns policy files into a
//! [`Policy`] and decides each [`Request`]: default deny, and any matching deny
//! rule beats any allow. It is pure: no sockets, no clock, no environment; the
//! only I/O is reading the files given to [`Policy::load`].
//!
//! The policy language (every section, key, default and limit, the layers
//! and the duration/size grammar) is documented once, in `docs/policy.md`;
//! each section file declares its keys as [`schema::Field`] tables, which
//! also drive how they are read, and a test checks the document against
//! them.
//!
//! The modules are layered (`tests/layering.rs` checks it): `schema` (the
//! vocabulary of requests and decisions, the value readers, what a section
//! is), then `sections` (one file per policy section), then `engine` (one
//! of each section, dispatch, loading), then `layers` and `explain`.
//!
//! A token an `[http.*]` section names is bound to that upstream's origin:
//! no other origin may use it (load error) and [`Action::Token`] for it, or
//! for any token with the same source, is denied unless its declaration says
//! `reveal = true`. [`HttpRule::url_for`] joins the workspace's path to the
//! upstream and re-checks the result; see `sections/http.rs`.
//!
//! The SSH decisions ([`Action::SshUserauth`], [`Action::SshSig`],
//! [`Action::SshIdentity`]) take key fingerprints and, for logins, the bound
//! host key with what the laptop's known_hosts says of it ([`BoundHostKey`]):
//! the proxy reads `known_hosts`, this crate does not.
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

mod engine;
pub mod explain;
mod layers;
pub mod schema;
mod sections;

pub use engine::{Decision, Grant, Policy, SCHEMA, Source};
pub use layers::{Layer, LayerDecision, Limit, LoadError, Outcome, PolicySet, section_of};
pub use schema::decision::{Approve, Decided, RuleRef, Verdict};
pub use schema::diag::{Diagnostic, PolicyErrors};
pub use schema::rate::{Rate, RateError};
pub use schema::request::{
    Action, BoundHostKey, Caller, GitAction, GitOp, GitRefUpdate, HostCertificate, Request,
};
pub use sections::files::{DEFAULT_MAX_SIZE, FileRule, FileSet, check_path as check_file_path};
pub use sections::git::{DEFAULT_SSH_USER, GitRule, repo_path as git_repo_path};
pub use sections::git_credential::GitCredentialRule;
pub use sections::http::{
    DEFAULT_MAX_REQUEST_SIZE, DEFAULT_TIMEOUT as HTTP_DEFAULT_TIMEOUT, HttpRule, HttpSecret,
    MAX_REQUEST_SIZE, MAX_REST_LEN, Upstream,
};
pub use sections::ssh::SshRule;
pub use sections::tokens::{TokenRule, TokenSource};
pub use sections::tools::{ToolRule, match_args};
