//! The `http` section: HTTP secret injection. The workspace calls
//! `$NEXUS_HTTP_URL/NAME/rest?query`; the laptop sends the request to the
//! `upstream` of `[http.NAME]` plus `/rest?query`, with the real secret put
//! into the named header. The workspace never names a host.
//!
//! Its keys are declared in the `Field` tables below and documented in
//! `docs/policy.md`.
//!
//! A section with neither a secret nor a header is a plain pass-through to a
//! declared upstream. A header without a secret injects its fixed `value`.
//! With `token = "T"`, the API takes `[tokens.T]`'s `approve` and `rate`
//! unless it sets its own.
//!
//! **Binding.** A secret is bound to the origin (scheme, host, port) of the
//! section that injects it: a token named by two sections of different
//! origins, or one source used by both, is a load error, also across
//! `[workspace."NAME"]` sections of the same policy. A bound token's value
//! never reaches the workspace any other way: `token get` of a bound token,
//! or of any token with the same source, is denied unless its declaration
//! says `reveal = true`.
//!
//! **Paths.** The workspace's path is untrusted: it must be ASCII with no
//! space, control character, backslash or `#`, no `.`/`..` segments (also
//! with `;params`), no `//`, and no percent-encoded `.`, `/`, `\`, `%` or
//! control character; percent-encodings must decode to UTF-8. `paths` globs
//! match the decoded path (an empty path counts as `/`). [`HttpRule::url_for`]
//! applies the same checks, joins, parses, and re-checks that the result has
//! the upstream's scheme, host and port and lies under its base path.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use toml::de::DeValue;
use url::{Host, Url};

use super::tokens::{TokenRule, TokenSource, TokensSection};
use super::tools::MAX_TIMEOUT;
use crate::schema::decision::{Approve, Decided, RuleRef, Verdict, shown_name};
use crate::schema::diag::Diagnostic;
use crate::schema::glob_deny::{DenyRule, DenyShape, deny};
use crate::schema::probe::{ProbeArgs, clip};
use crate::schema::rate::Rate;
use crate::schema::read::{Key, Parser, Value, path_key, valid_token_name};
use crate::schema::request::Action;
use crate::schema::section::{PolicySection, SectionGrant, Terms};
use crate::schema::{APPROVE, DESCRIPTION, Field, Kind, RATE, Table};

/// The keys of `[http.NAME]`.
const API_FIELDS: &[Field] = &[
    Field::required(
        "upstream",
        "URL",
        "`https://HOST[:PORT][/base]`; `http://` only for a loopback host",
    ),
    Field::optional("header", "header name", "where the secret goes").read(Kind::Checked {
        expected: "a header name like \"Authorization\"",
        check: check_header,
    }),
    Field::optional(
        "value",
        "string",
        "the header's value; exactly one `{token}` when a secret is injected",
    )
    .default("\"{token}\"")
    .read(Kind::Checked {
        expected: "a template like \"Bearer {token}\"",
        check: check_value,
    }),
    Field::optional("token", "token name", "a `[tokens.NAME]` whose value is injected"),
    Field::optional(
        "source",
        "token source",
        "an inline source instead of `token` (at most one of the two)",
    ),
    Field::optional("ca_file", "path", "an extra root certificate (absolute or `~/...`)").read(
        Kind::Checked {
            expected: "a file path",
            check: check_ca_file,
        },
    ),
    Field::optional("methods", "list of strings", "HTTP methods allowed (never CONNECT, TRACE, TRACK)")
        .default("any")
        .read(Kind::List {
            expected: "a list of methods like [\"GET\", \"POST\"]",
            check: check_rule_method,
            when_empty: "the API would allow no method; leave methods out to allow any",
        }),
    Field::optional(
        "paths",
        "list of globs",
        "over the path after NAME, without the query; `*` stays within a segment, `/**` crosses them",
    )
    .default("any")
    .read(Kind::List {
        expected: "a list of path globs like [\"/v1/*\"]",
        check: check_path_glob,
        when_empty: "the API would allow no path; leave paths out to allow any",
    }),
    Field::optional("max_request_size", "size", "largest request body")
        .default("32MiB")
        .limits("at most 1GiB")
        .read(Kind::Size(MAX_REQUEST_SIZE)),
    Field::optional("timeout", "duration", "the whole request")
        .default("10min")
        .limits("more than 0, at most 24h")
        .read(Kind::Timeout(MAX_TIMEOUT)),
    DESCRIPTION,
    Field::optional("mcp", "bool", "offered to MCP clients")
        .default("false")
        .read(Kind::Bool),
    APPROVE,
    RATE,
];

/// The keys of `[[http.deny]]`.
const DENY_FIELDS: &[Field] = &[
    Field::required("name", "glob", "glob over API names, case-insensitive"),
    DESCRIPTION,
];

/// The tables of the `http` section.
const TABLES: &[Table] = &[
    Table {
        header: "[http.NAME]",
        fields: API_FIELDS,
    },
    Table {
        header: "[[http.deny]]",
        fields: DENY_FIELDS,
    },
];

/// Default largest request body (32 MiB).
pub const DEFAULT_MAX_REQUEST_SIZE: u64 = 32 << 20;
/// Largest `max_request_size` a rule may set (1 GiB).
pub const MAX_REQUEST_SIZE: u64 = 1 << 30;
/// Default time a whole request may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest path plus query the workspace may send.
pub const MAX_REST_LEN: usize = 8 << 10;
/// Longest method name.
const MAX_METHOD_LEN: usize = 32;
/// Methods never forwarded: CONNECT tunnels anywhere, TRACE/TRACK echo the
/// request, injected secret included, back to the workspace.
const REFUSED_METHODS: &[&str] = &["CONNECT", "TRACE", "TRACK"];
/// Headers a secret may not go into: framing, routing and hop-by-hop headers.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "expect",
];
/// The placeholder for the secret in `value`.
const PLACEHOLDER: &str = "{token}";

/// A parsed `upstream`: where an API's requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    scheme: String,
    /// As the `url` crate serializes it (lowercase, punycode, `[v6]`).
    host: String,
    port: u16,
    /// `""` or `/seg/...`, no trailing slash.
    base_path: String,
    /// `scheme://host[:port]base_path`.
    base: String,
}

impl Upstream {
    /// Parses and checks an upstream as written in a policy.
    ///
    /// # Errors
    /// Why it is not acceptable, for a policy diagnostic.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        const SHAPE: &str = "expected e.g. \"https://api.openai.com\" or \"https://host/api/v2\"";
        if text
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
        {
            return Err(format!(
                "upstream contains a space, control character or backslash; {SHAPE}"
            ));
        }
        let url = Url::parse(text).map_err(|e| format!("upstream is not a URL ({e}); {SHAPE}"))?;
        let loopback = match url.host() {
            Some(Host::Domain(d)) => d == "localhost",
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            None => return Err(format!("upstream has no host; {SHAPE}")),
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(
                    "upstream must use https://; http:// is only allowed for a loopback host \
                     (127.0.0.0/8, ::1, localhost)"
                        .to_owned(),
                );
            }
            other => {
                return Err(format!(
                    "upstream scheme {other:?} is not supported; use https:// (or http:// for a \
                     loopback host)"
                ));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "upstream must not hold a user name or password; put the secret in token or \
                 source and name the header"
                    .to_owned(),
            );
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "upstream must not have a query or fragment; {SHAPE}"
            ));
        }
        let lower = text.to_ascii_lowercase();
        let after_scheme = lower.split_once("://").map_or("", |(_, rest)| rest);
        let written_path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
        if written_path.contains("%2e")
            || written_path.split('/').any(|seg| seg == "." || seg == "..")
        {
            return Err("upstream's base path must not hold '.' or '..' segments".to_owned());
        }
        let base_path = url.path().trim_end_matches('/').to_owned();
        if base_path.contains("//") {
            return Err("upstream's base path must not hold empty segments ('//')".to_owned());
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("upstream has no host; {SHAPE}"))?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("upstream has no port; {SHAPE}"))?;
        let shown_port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let base = format!("{}://{host}{shown_port}{base_path}", url.scheme());
        Ok(Upstream {
            scheme: url.scheme().to_owned(),
            host,
            port,
            base_path,
            base,
        })
    }

    /// The origin a secret is bound to: `scheme://host:port`, port always given.
    #[must_use]
    pub fn origin(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.port)
    }

    /// The normalized base URL, no trailing slash: `https://host[:port][/base/path]`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.base
    }

    /// `https` or `http` (loopback only).
    #[must_use]
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host, as the `url` crate serializes it (IPv6 in brackets).
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, the scheme's default when not written.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The base path: `""` or `/seg/...` without a trailing slash.
    #[must_use]
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Whether `url` has this upstream's scheme, host and port, no
    /// credentials or fragment, a path under the base path and no dot
    /// segment.
    fn check_same(&self, url: &Url) -> Result<(), String> {
        if url.scheme() != self.scheme
            || url.host_str() != Some(self.host.as_str())
            || url.port_or_known_default() != Some(self.port)
        {
            return Err("the request would leave the declared upstream".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return Err("the request URL would carry credentials or a fragment".to_owned());
        }
        let path = url.path();
        let under = self.base_path.is_empty()
            || path == self.base_path
            || path
                .strip_prefix(self.base_path.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        if !under || !path.starts_with('/') {
            return Err("the request path would leave the upstream's base path".to_owned());
        }
        if path.split('/').any(is_dot_segment) {
            return Err("the request path would hold a '.' or '..' segment".to_owned());
        }
        Ok(())
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

/// Where an API's secret comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum HttpSecret {
    /// `token = "T"`: the `[tokens.T]` declaration, resolved (in a
    /// `[workspace."NAME"]` section, its own `[tokens.T]` first, else the
    /// policy's), so the proxy can fetch it with the token code.
    Token(TokenRule),
    /// `source = "..."` written in the `[http.NAME]` section.
    Source(TokenSource),
}

impl HttpSecret {
    /// Where the value is read from.
    #[must_use]
    pub fn source(&self) -> &TokenSource {
        match self {
            HttpSecret::Token(t) => &t.source,
            HttpSecret::Source(s) => s,
        }
    }
}

/// An `[http.NAME]` declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRule {
    /// The API's name: the first path segment after `$NEXUS_HTTP_URL`.
    pub name: String,
    /// Where requests go.
    pub upstream: Upstream,
    /// The header the secret (or fixed value) goes into; `None`: none injected.
    pub header: Option<String>,
    /// The header value template (`{token}` stands for the secret); empty
    /// when no header is injected.
    pub value: String,
    /// The secret, if any.
    pub secret: Option<HttpSecret>,
    /// An extra root certificate file (absolute or `~/`).
    pub ca_file: Option<String>,
    /// Allowed methods (uppercase); empty: any.
    pub methods: Vec<String>,
    /// Allowed path globs (decoded path after NAME, without query); empty: any.
    pub paths: Vec<String>,
    /// Largest request body, in bytes.
    pub max_request_size: u64,
    /// How long a whole request may take.
    pub timeout: Duration,
    /// For listings (MCP, `nexus-shim http list`).
    pub description: String,
    /// Whether the API is offered to MCP clients as a tool.
    pub mcp: bool,
    /// Whether the laptop user must approve each request (the token's
    /// `approve` when the section sets none).
    pub approve: Option<Approve>,
    /// Optional rate limit, enforced by the laptop (the token's `rate` when
    /// the section sets none).
    pub rate: Option<Rate>,
    /// Where the API is declared.
    pub rule: RuleRef,
}

impl HttpRule {
    /// The URL to dial for `rest`: the workspace's path after `/NAME`
    /// (starting with `/`, or empty) plus an optional `?query`.
    ///
    /// `rest` is untrusted: it is checked (see the module docs), joined to
    /// the base, parsed, and the result re-checked to have the upstream's
    /// scheme, host and port and a path under its base path.
    ///
    /// # Errors
    /// The reason to give the workspace.
    pub fn url_for(&self, rest: &str) -> Result<Url, String> {
        if rest.len() > MAX_REST_LEN {
            return Err(format!(
                "the path and query are longer than {MAX_REST_LEN} bytes"
            ));
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        check_path(path)?;
        if let Some(q) = query {
            check_query(q)?;
        }
        let mut text = String::with_capacity(self.upstream.base.len() + rest.len());
        text.push_str(&self.upstream.base);
        text.push_str(path);
        if let Some(q) = query {
            text.push('?');
            text.push_str(q);
        }
        let url = Url::parse(&text).map_err(|e| format!("the request URL is not valid ({e})"))?;
        self.upstream.check_same(&url)?;
        Ok(url)
    }

    /// The header value with `secret` in place of `{token}` (the value as
    /// written when it has none). The proxy calls this; the result is never
    /// logged, and the proxy must still refuse a value that is not a valid
    /// header value (a secret with a newline, say).
    #[must_use]
    pub fn header_value(&self, secret: &str) -> String {
        self.value.replacen(PLACEHOLDER, secret, 1)
    }
}

/// Whether a path segment is `.` or `..` (also with `;params`, which some
/// servers strip before resolving dot segments).
fn is_dot_segment(seg: &str) -> bool {
    let bare = seg.split(';').next().unwrap_or(seg);
    bare == "." || bare == ".."
}

/// The value of one hex digit.
fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Decodes `%XX` escapes, refusing malformed ones and those that would
/// change how the text splits (`.`, `/`, `\`, `%`) or hide a control byte.
fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err("a '%' is not followed by two hex digits".to_owned());
        };
        let b = hi * 16 + lo;
        if matches!(b, b'.' | b'/' | b'\\' | b'%') || b < 0x20 || b == 0x7f {
            return Err(
                "it holds a percent-encoded '.', '/', '\\', '%' or control character".to_owned(),
            );
        }
        out.push(b);
        i += 3;
    }
    Ok(out)
}

/// Characters allowed as written in a path or query.
fn check_chars(text: &str, what: &str) -> Result<(), String> {
    for c in text.chars() {
        if !c.is_ascii_graphic() {
            return Err(format!(
                "the {what} holds a space, control or non-ASCII character; percent-encode it"
            ));
        }
        if c == '\\' || c == '#' {
            return Err(format!("the {what} holds a {c:?}"));
        }
    }
    Ok(())
}

/// Checks a request path (the part after `/NAME`, without the query) and
/// returns it percent-decoded, for matching `paths`.
///
/// # Errors
/// Why the path is refused.
pub(crate) fn check_path(path: &str) -> Result<String, String> {
    if path.len() > MAX_REST_LEN {
        return Err(format!("the path is longer than {MAX_REST_LEN} bytes"));
    }
    if !path.is_empty() && !path.starts_with('/') {
        return Err("the path must start with '/'".to_owned());
    }
    check_chars(path, "path")?;
    if path.contains('?') {
        return Err("the path holds a '?' (the query is checked apart)".to_owned());
    }
    if path.contains("//") {
        return Err("the path holds an empty segment ('//')".to_owned());
    }
    if path.split('/').any(is_dot_segment) {
        return Err("the path holds a '.' or '..' segment".to_owned());
    }
    let decoded = percent_decode(path).map_err(|why| format!("the path is refused: {why}"))?;
    String::from_utf8(decoded).map_err(|_| "the path's percent-encoding is not UTF-8".to_owned())
}

/// Checks a query string (after `?`).
pub(crate) fn check_query(query: &str) -> Result<(), String> {
    check_chars(query, "query")?;
    let bytes = query.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%'
            && !(bytes.get(i + 1).copied().and_then(hex).is_some()
                && bytes.get(i + 2).copied().and_then(hex).is_some())
        {
            return Err("the query has a '%' not followed by two hex digits".to_owned());
        }
    }
    Ok(())
}

/// Whether `method` is an HTTP token in uppercase: `[A-Z][A-Z0-9_-]*`.
fn check_method_shape(method: &str) -> Result<(), String> {
    let b = method.as_bytes();
    let ok = b.first().is_some_and(u8::is_ascii_uppercase)
        && b.len() <= MAX_METHOD_LEN
        && b.iter()
            .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "method {} is not an uppercase HTTP method like \"GET\"",
            shown_name(method)
        ))
    }
}

fn check_rule_method(method: &str) -> Result<(), String> {
    check_method_shape(method)?;
    if REFUSED_METHODS.contains(&method) {
        return Err(format!(
            "method {method:?} is never forwarded (CONNECT tunnels anywhere; TRACE and TRACK \
             echo the injected secret back)"
        ));
    }
    Ok(())
}

/// An HTTP header name: RFC 9110 token characters.
fn check_header(name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!(
            "header {} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)",
            shown_name(name)
        ));
    }
    if FORBIDDEN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "header {name:?} frames or routes the request; a secret cannot go there (use e.g. \
             \"Authorization\" or \"X-Api-Key\")"
        ));
    }
    Ok(())
}

/// A header value template: printable ASCII, space and tab.
fn check_value(value: &str) -> Result<(), String> {
    if value.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
        Ok(())
    } else {
        Err("value holds a control or non-ASCII character; a header value cannot".to_owned())
    }
}

/// A path glob: starts with `/`, no dot segments or `//`.
fn check_path_glob(pattern: &str) -> Result<(), String> {
    if !pattern.starts_with('/') {
        return Err(format!(
            "path glob {} must start with '/' (it matches the path after /NAME)",
            shown_name(pattern)
        ));
    }
    if pattern.contains("//")
        || pattern.split('/').any(is_dot_segment)
        || pattern.chars().any(|c| c.is_control() || c == '\\')
    {
        return Err(format!(
            "path glob {} holds '//', a '.' or '..' segment, a control character or a backslash",
            shown_name(pattern)
        ));
    }
    path_glob(pattern).map(|_| ())
}

/// Compiles a path glob: case-sensitive, `*` within one segment, `**` across.
fn path_glob(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid path glob {} ({})", shown_name(pattern), e.kind()))
}

fn check_ca_file(p: &str) -> Result<(), String> {
    if p.contains('\0') {
        return Err("ca_file contains a NUL character".to_owned());
    }
    if p.starts_with("~/") || p.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "ca_file {} must be absolute or start with ~/",
            shown_name(p)
        ))
    }
}

/// What does not fit between a section's secret, header and value, if
/// anything: the message, and whether it is about the value (else the table).
fn injection_error(
    section: &str,
    secret: bool,
    header: bool,
    value: Option<&str>,
) -> Option<(bool, String)> {
    let placeholders = value.unwrap_or(PLACEHOLDER).matches(PLACEHOLDER).count();
    match (secret, header, value.is_some()) {
        (true, false, _) => Some((
            false,
            format!(
                "{section}: a secret (token or source) needs header = \"NAME\" to go into, e.g. \
                 header = \"Authorization\""
            ),
        )),
        (true, true, _) if placeholders != 1 => Some((
            true,
            format!(
                "{section}.value: with a secret, the value must hold {PLACEHOLDER} exactly once \
                 (found {placeholders}), e.g. \"Bearer {PLACEHOLDER}\""
            ),
        )),
        (false, _, true) if placeholders > 0 => Some((
            true,
            format!(
                "{section}.value: {PLACEHOLDER} without a secret; add token = \"NAME\" or \
                 source = \"...\", or write a fixed value"
            ),
        )),
        (false, true, false) => Some((
            false,
            format!(
                "{section}: header without a secret or a value injects nothing; add token = \
                 \"NAME\" (or source) or value = \"...\""
            ),
        )),
        (false, false, true) => Some((
            true,
            format!("{section}.value: a value needs header = \"NAME\" to go into"),
        )),
        _ => None,
    }
}

/// One declared API, with what the engine needs besides the public rule.
#[derive(Clone, Debug)]
struct HttpApi {
    rule: HttpRule,
    /// Compiled `paths`.
    matchers: Vec<GlobMatcher>,
    /// `token = "T"` and where it is written, until resolved.
    token: Option<(String, RuleRef)>,
}

/// A secret bound to an upstream origin.
#[derive(Clone, Debug)]
pub(crate) struct Binding {
    /// The token name, if the secret is a `[tokens.T]`.
    token: Option<String>,
    /// Where the value is read from.
    source: TokenSource,
    /// The API it is bound to.
    api: String,
    /// Its upstream, for messages.
    upstream: String,
    /// Its origin.
    origin: String,
    /// The `[http.NAME]` rule.
    rule: RuleRef,
    /// Bound by another layer (e.g. the org baseline): `reveal = true` in
    /// this one does not lift it.
    foreign: bool,
}

/// Every http rule of one source (or, merged, of all).
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpSection {
    apis: Vec<HttpApi>,
    deny: Vec<DenyRule>,
    /// Secrets bound by this policy and its workspace sections.
    bound: Vec<Binding>,
}

impl PolicySection for HttpSection {
    const NAME: nexus_protocol::Section = nexus_protocol::Section::Http;
    const TABLES: &'static [Table] = TABLES;

    fn parse(p: &mut Parser<'_, '_, Self>, value: &Value<'_>) {
        p.http_section(value);
    }

    /// Adds the rules of one more source (`other`, one file's), keeping
    /// declaration order: a binding clash is reported at the later one.
    fn append(&mut self, mut other: Self) {
        other
            .apis
            .sort_by_key(|a| (a.rule.rule.line, a.rule.rule.col));
        self.apis.append(&mut other.apis);
        self.deny.append(&mut other.deny);
    }

    /// Adds `other`'s deny rules (a layer's denies apply in every layer),
    /// and its bindings: a secret another layer injects is not handed out
    /// by this one either.
    fn add_denies_from(&mut self, other: &Self) {
        self.deny.extend(other.deny.iter().cloned());
        for b in &other.bound {
            if !self.bound.iter().any(|o| o.rule == b.rule) {
                self.bound.push(Binding {
                    foreign: true,
                    ..b.clone()
                });
            }
        }
    }

    /// Warnings: APIs always denied.
    fn cross_check(&self) -> Vec<Diagnostic> {
        self.apis
            .iter()
            .filter_map(|api| {
                let r = &api.rule;
                let d = self.denied(&r.name)?;
                Some(r.rule.diagnostic(format!(
                    "http API {:?} is declared but always denied by [[http.deny]] name = {:?} ({})",
                    r.name, d.pattern, d.rule
                )))
            })
            .collect()
    }

    /// `name`, with `method` (default `GET`) and `path` (default `/`). A
    /// `?query` in `path` is checked like the proxy checks it, then left out
    /// of the decision (which never sees the query).
    fn probe<T>(
        args: &ProbeArgs<'_>,
        _: &[&Self],
        decide: impl FnOnce(Action<'_>) -> T,
    ) -> Result<T, String> {
        args.check_keys(&["name", "method", "path"])?;
        let name = args.need("name", "openai")?;
        let method = args.arg("method").unwrap_or("GET");
        let path = args.arg("path").unwrap_or("/");
        let path = match path.split_once('?') {
            Some((path, query)) => {
                check_query(query).map_err(|why| format!("path={:?}: {why}", clip(path)))?;
                path
            }
            None => path,
        };
        Ok(decide(Action::Http { name, method, path }))
    }

    fn beyond<'a>(&'a self, ceiling: &Self, capped: bool) -> Vec<(&'a RuleRef, String)> {
        self.rules()
            .filter_map(|r| Some((&r.rule, beyond(ceiling, capped, r)?)))
            .collect()
    }
}

/// Where the request goes and what it carries is the org's: a baseline
/// that declares the API pins its upstream, header, value, secret and
/// ca_file. Every allowing layer caps the size and timeout (smallest), the
/// methods (intersection; an empty list allows any) and MCP (only if all
/// say so); a baseline's paths replace the user's.
impl SectionGrant for HttpRule {
    fn terms(&self) -> Terms<'_> {
        Terms {
            rate: self.rate,
            approve: self.approve,
            rule: &self.rule,
        }
    }

    fn cap(&mut self, ceiling: &Self, org: bool) {
        if org {
            self.upstream.clone_from(&ceiling.upstream);
            self.header.clone_from(&ceiling.header);
            self.value.clone_from(&ceiling.value);
            self.secret.clone_from(&ceiling.secret);
            self.ca_file.clone_from(&ceiling.ca_file);
            if !ceiling.paths.is_empty() {
                self.paths.clone_from(&ceiling.paths);
            }
        }
        self.max_request_size = self.max_request_size.min(ceiling.max_request_size);
        self.timeout = self.timeout.min(ceiling.timeout);
        if self.methods.is_empty() {
            self.methods.clone_from(&ceiling.methods);
        } else if !ceiling.methods.is_empty() {
            self.methods.retain(|m| ceiling.methods.contains(m));
        }
        self.mcp &= ceiling.mcp;
    }
}

impl HttpSection {
    fn denied(&self, name: &str) -> Option<&DenyRule> {
        self.deny.iter().find(|d| d.matcher.is_match(name))
    }

    /// Every declared API, denied or not.
    pub(crate) fn rules(&self) -> impl Iterator<Item = &HttpRule> {
        self.apis.iter().map(|a| &a.rule)
    }

    /// Declared APIs no deny rule hides, in declaration order.
    pub(crate) fn listed(&self) -> Vec<&HttpRule> {
        self.apis
            .iter()
            .map(|a| &a.rule)
            .filter(|r| self.denied(&r.name).is_none())
            .collect()
    }

    /// Reports APIs declared twice and resolves `token = "T"` against
    /// `tokens` (then `outer`, the enclosing policy's, in a workspace
    /// section). Errors for names declared twice and unknown tokens.
    pub(crate) fn resolve(
        &mut self,
        tokens: &TokensSection,
        outer: Option<&TokensSection>,
    ) -> Vec<Diagnostic> {
        let mut errors = Vec::new();
        let mut seen: BTreeMap<&str, &RuleRef> = BTreeMap::new();
        for api in &self.apis {
            if let Some(first) = seen.insert(&api.rule.name, &api.rule.rule) {
                errors.push(api.rule.rule.diagnostic(format!(
                    "{}: declared twice (first at {}:{}:{}); declare each API once",
                    api.rule.rule.section, first.file, first.line, first.col
                )));
                seen.insert(&api.rule.name, first);
            }
        }
        drop(seen);
        for api in &mut self.apis {
            let Some((name, at_token)) = &api.token else {
                continue;
            };
            match tokens
                .tokens
                .get(name)
                .or_else(|| outer.and_then(|o| o.tokens.get(name)))
            {
                Some(t) => {
                    // The key's own limits follow it into the API.
                    api.rule.approve = api.rule.approve.or(t.approve);
                    api.rule.rate = api.rule.rate.or(t.rate);
                    api.rule.secret = Some(HttpSecret::Token(t.clone()));
                }
                None => errors.push(at_token.diagnostic(format!(
                    "{}.token: no [tokens.{}] is declared in this policy; declare it (with \
                         its source) or write source = \"...\" here instead",
                    api.rule.rule.section,
                    path_key(name)
                ))),
            }
        }
        errors
    }

    /// Decides one request.
    pub(crate) fn decide(
        &self,
        name: &str,
        method: &str,
        path: &str,
        tokens: &TokensSection,
    ) -> Decided<HttpRule> {
        let shown = shown_name(name);
        if let Some(d) = self.denied(name) {
            return deny(
                Some(d.rule.clone()),
                format!(
                    "http API {shown} denied by [[http.deny]] name = {:?} ({})",
                    d.pattern, d.rule
                ),
            );
        }
        let Some(api) = self.apis.iter().find(|a| a.rule.name == name) else {
            return deny(
                None,
                format!("http API {shown} is not declared in the policy (default deny)"),
            );
        };
        let rule = &api.rule;
        let refuse = |why: String| {
            deny(
                Some(rule.rule.clone()),
                format!(
                    "http API {shown}: {why} ([{}] at {})",
                    rule.rule.section, rule.rule
                ),
            )
        };
        if let Some(HttpSecret::Token(t)) = &rule.secret
            && let Some(d) = tokens.denied(&t.name)
        {
            return deny(
                Some(d.rule.clone()),
                format!(
                    "http API {shown}: its token {:?} is denied by [[tokens.deny]] name = {:?} ({})",
                    t.name, d.pattern, d.rule
                ),
            );
        }
        let decoded = match check_path(path) {
            Ok(d) => d,
            Err(why) => return refuse(format!("path {} refused: {why}", shown_name(path))),
        };
        if let Err(why) = check_rule_method(method) {
            return refuse(why);
        }
        if !rule.methods.is_empty() && !rule.methods.iter().any(|m| m == method) {
            return refuse(format!(
                "method {method:?} is not in methods = {:?}",
                rule.methods
            ));
        }
        let matched = if decoded.is_empty() { "/" } else { &decoded };
        if !api.matchers.is_empty() && !api.matchers.iter().any(|m| m.is_match(matched)) {
            return refuse(format!(
                "path {} matches none of paths = {:?}",
                shown_name(path),
                rule.paths
            ));
        }
        Decided {
            verdict: Verdict::Allow,
            reason: format!(
                "http API {shown} allowed by [{}] ({}): {method} to {}",
                rule.rule.section, rule.rule, rule.upstream
            ),
            rule: Some(rule.rule.clone()),
            grant: Some(rule.clone()),
        }
    }

    /// The binding that keeps `token`'s value out of the workspace, if any:
    /// one naming it, or one whose secret has the same source. With
    /// `reveal = true`, only another layer's binding does.
    pub(crate) fn binding_of(&self, token: &TokenRule) -> Option<&Binding> {
        let applies = |b: &&Binding| !token.reveal || b.foreign;
        self.bound
            .iter()
            .filter(applies)
            .find(|b| b.token.as_deref() == Some(token.name.as_str()))
            .or_else(|| {
                self.bound
                    .iter()
                    .filter(applies)
                    .find(|b| b.source == token.source)
            })
    }

    /// Sets the secrets bound in the whole policy.
    pub(crate) fn set_bound(&mut self, bound: Vec<Binding>) {
        self.bound = bound;
    }

    /// Warnings about the tokens of `tokens` this section binds: APIs
    /// whose token is denied, bound tokens revealed anyway.
    pub(crate) fn cross_check_tokens(&self, tokens: &TokensSection) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for api in &self.apis {
            let r = &api.rule;
            if let Some(HttpSecret::Token(t)) = &r.secret
                && let Some(d) = tokens.denied(&t.name)
            {
                out.push(r.rule.diagnostic(format!(
                    "http API {:?} uses token {:?}, which [[tokens.deny]] name = {:?} ({}) \
                     denies: its requests are denied",
                    r.name, t.name, d.pattern, d.rule
                )));
            }
        }
        for t in tokens.tokens.values().filter(|t| t.reveal) {
            let unrevealed = TokenRule {
                reveal: false,
                ..t.clone()
            };
            if let Some(b) = self.binding_of(&unrevealed) {
                out.push(t.rule.diagnostic(format!(
                    "token {:?} is bound to [http.{}] ({}) but says reveal = true: \
                     `token get` hands its value to the workspace too; remove reveal unless \
                     the workspace really needs the raw value",
                    t.name, b.api, b.upstream
                )));
            }
        }
        out
    }
}

/// Why user rule `rule` reaches past baseline section `b` (`capped`: the
/// baseline has `[http.*]` allow rules), if it does: a baseline deny, no
/// baseline declaration, or a declaration pinning another destination.
fn beyond(b: &HttpSection, capped: bool, rule: &HttpRule) -> Option<String> {
    if let Some(d) = b.denied(&rule.name) {
        return Some(format!(
            "the baseline denies it ([[http.deny]] name = {:?}, {})",
            d.pattern, d.rule
        ));
    }
    if !capped {
        return None;
    }
    let Some(org) = b.apis.iter().map(|a| &a.rule).find(|o| o.name == rule.name) else {
        return Some(format!("the baseline declares no [http.{}]", rule.name));
    };
    let same = org.upstream == rule.upstream
        && org.header == rule.header
        && org.value == rule.value
        && org.secret.as_ref().map(HttpSecret::source)
            == rule.secret.as_ref().map(HttpSecret::source)
        && org.ca_file == rule.ca_file;
    (!same).then(|| {
        format!(
            "the baseline's [http.{}] ({}) pins the upstream, header, value, secret and ca_file; \
             the ones written here are not used",
            rule.name, org.rule
        )
    })
}

/// The deny decision for a bound token.
pub(crate) fn bound_token_denial<G>(token: &TokenRule, b: &Binding) -> Decided<G> {
    let how = if b.token.as_deref() == Some(token.name.as_str()) {
        String::new()
    } else {
        " (it has the same source as the secret of that API)".to_owned()
    };
    deny(
        Some(b.rule.clone()),
        format!(
            "token {} is bound to [http.{}] ({}){how}: its value never enters the workspace; \
             use $NEXUS_HTTP_URL/{}/...",
            shown_name(&token.name),
            b.api,
            b.upstream,
            b.api
        ),
    )
}

/// Binds every secret of `sections` (a policy first, then its workspace
/// sections) to its origin; errors where one is bound to two origins.
pub(crate) fn bind<'a>(
    sections: impl IntoIterator<Item = &'a HttpSection>,
) -> (Vec<Binding>, Vec<Diagnostic>) {
    let mut bound: Vec<Binding> = Vec::new();
    let mut errors = Vec::new();
    for section in sections {
        for api in &section.apis {
            let r = &api.rule;
            let Some(secret) = &r.secret else {
                continue;
            };
            let token = match secret {
                HttpSecret::Token(t) => Some(t.name.clone()),
                HttpSecret::Source(_) => None,
            };
            let origin = r.upstream.origin();
            let clash = bound.iter().find(|b| {
                b.origin != origin
                    && ((token.is_some() && b.token == token) || b.source == *secret.source())
            });
            if let Some(first) = clash {
                let what = match (&token, first.token == token) {
                    (Some(t), true) => format!("token {t:?}"),
                    _ => "its secret's source".to_owned(),
                };
                errors.push(r.rule.diagnostic(format!(
                    "{}: {what} is already bound to [http.{}] at {}:{}:{} ({}); a secret is \
                         sent to one origin only, so {} cannot use it: declare another token \
                         for it",
                    r.rule.section,
                    first.api,
                    first.rule.file,
                    first.rule.line,
                    first.rule.col,
                    first.origin,
                    origin
                )));
                continue;
            }
            bound.push(Binding {
                token,
                source: secret.source().clone(),
                api: r.name.clone(),
                upstream: r.upstream.to_string(),
                origin,
                rule: r.rule.clone(),
                foreign: false,
            });
        }
    }
    (bound, errors)
}

impl Parser<'_, '_, HttpSection> {
    /// `[http]`: `[http.NAME]` declarations and `[[http.deny]]`.
    pub(crate) fn http_section(&mut self, value: &Value<'_>) {
        let shape = DenyShape {
            section: "http.deny",
            fields: DENY_FIELDS,
            example: "prod-*",
            over: "API names",
        };
        let denies = self.named_tables("http", "[http.NAME] tables", value, &shape, Self::http_api);
        self.out.deny.extend(denies);
    }

    fn http_api(&mut self, key: &Key<'_>, value: &Value<'_>) {
        let name: &str = key.get_ref();
        let section = format!("http.{}", path_key(name));
        if !valid_token_name(name) {
            return self.report.error(
                &key.span(),
                format!(
                    "{section}: invalid API name {}; expected 1 to 64 characters from A-Z a-z \
                     0-9 . _ -, starting with a letter or digit (it is the first path segment \
                     after $NEXUS_HTTP_URL)",
                    shown_name(name)
                ),
            );
        }
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type(
                &section,
                value,
                found,
                "a table with upstream = \"https://...\"",
            );
        };
        let errors_before = self.report.errors.len();
        let v = self.fields(&section, API_FIELDS, table, &[]);
        let upstream = v.at("upstream").and_then(|(at, item)| {
            let text = self.string(at, item, "a URL like \"https://api.openai.com\"")?;
            Upstream::parse(text)
                .map_err(|why| self.report.error(&item.span(), format!("{at}: {why}")))
                .ok()
        });
        let token = v.at("token").and_then(|(at, item)| {
            let t = self.string(at, item, "a token name like \"openai\"")?;
            if !valid_token_name(t) {
                self.report.error(
                    &item.span(),
                    format!(
                        "{at}: invalid token name {}; expected the NAME of a [tokens.NAME]",
                        shown_name(t)
                    ),
                );
                return None;
            }
            let (line, col) = self.report.position(&item.span());
            let rule = RuleRef {
                file: self.report.file.to_owned(),
                line,
                col,
                section: at.to_owned(),
            };
            Some((t.to_owned(), rule))
        });
        let source = v.at("source").and_then(|(at, item)| self.source(at, item));
        let header = v.text("header").map(str::to_owned);
        let value_tpl = v
            .text("value")
            .zip(v.at("value"))
            .map(|(t, (_, item))| (t.to_owned(), item.span()));
        let (seen_header, seen_value) = (v.has("header"), v.has("value"));
        if !v.has("upstream") {
            self.report.error(
                &value.span(),
                format!(
                    "{section}: missing upstream; expected upstream = \"https://HOST[/BASE/PATH]\""
                ),
            );
        }
        let mut secret_keys: Vec<_> = table
            .iter()
            .filter(|(k, _)| matches!(k.get_ref().as_ref(), "token" | "source"))
            .map(|(k, _)| k.span())
            .collect();
        secret_keys.sort_by_key(|span| span.start);
        if let [_, second] = secret_keys.as_slice() {
            self.report.error(
                second,
                format!(
                    "{section}: both token and source are given; use token = \"NAME\" for a \
                     [tokens.NAME] declaration, or source = \"...\", not both"
                ),
            );
        }
        let has_secret = !secret_keys.is_empty();
        // A header or value already reported as invalid says nothing more.
        let checkable = (header.is_some() || !seen_header) && (value_tpl.is_some() || !seen_value);
        let value_text = value_tpl.as_ref().map(|(v, _)| v.as_str());
        if checkable
            && let Some((at_value, why)) =
                injection_error(&section, has_secret, header.is_some(), value_text)
        {
            let span = match (&value_tpl, at_value) {
                (Some((_, span)), true) => span.clone(),
                _ => value.span(),
            };
            self.report.error(&span, why);
        }
        if self.report.errors.len() != errors_before {
            return;
        }
        let Some(upstream) = upstream else {
            return;
        };
        let paths = v.list("paths").unwrap_or_default();
        let matchers = paths.iter().filter_map(|p| path_glob(p).ok()).collect();
        let rule = self.rule_ref(&value.span(), section);
        self.out.apis.push(HttpApi {
            rule: HttpRule {
                name: name.to_owned(),
                upstream,
                header,
                value: match value_tpl {
                    Some((v, _)) => v,
                    None if has_secret => PLACEHOLDER.to_owned(),
                    None => String::new(),
                },
                secret: source.map(HttpSecret::Source),
                ca_file: v.text("ca_file").map(str::to_owned),
                methods: v.list("methods").unwrap_or_default(),
                paths,
                max_request_size: v
                    .size("max_request_size")
                    .unwrap_or(DEFAULT_MAX_REQUEST_SIZE),
                timeout: v.duration("timeout").unwrap_or(DEFAULT_TIMEOUT),
                description: v.text("description").unwrap_or_default().to_owned(),
                mcp: v.bool("mcp").unwrap_or(false),
                approve: v.approve("approve"),
                rate: v.rate("rate"),
                rule,
            },
            matchers,
            token,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, Policy, Request, Source};
    use crate::{Decision, Grant};

    const OPENAI: &str = r#"
[tokens.openai]
source = "keyring:nexus/openai"

[http.openai]
upstream = "https://api.openai.com"
header = "Authorization"
value = "Bearer {token}"
token = "openai"
methods = ["GET", "POST"]
paths = ["/v1/*", "/v2/**"]
"#;

    fn load(text: &str) -> Policy {
        Policy::from_sources(&[Source::new("p.toml", text)]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn errors(text: &str) -> Vec<String> {
        match Policy::from_sources(&[Source::new("p.toml", text)]) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn http(p: &Policy, name: &str, method: &str, path: &str) -> Decision {
        p.decide(&Request {
            workspace: "ws",
            caller: None,
            action: Action::Http { name, method, path },
        })
    }

    fn token(p: &Policy, name: &str) -> Decision {
        p.decide(&Request {
            workspace: "ws",
            caller: None,
            action: Action::Token { name },
        })
    }

    fn rule(p: &Policy, name: &str) -> HttpRule {
        match http(p, name, "GET", "/v1/x").grant {
            Some(Grant::Http(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upstreams() {
        for (text, base, origin) in [
            (
                "https://api.openai.com",
                "https://api.openai.com",
                "https://api.openai.com:443",
            ),
            (
                "https://API.openai.com/",
                "https://api.openai.com",
                "https://api.openai.com:443",
            ),
            ("https://h:443/api/v2/", "https://h/api/v2", "https://h:443"),
            ("https://h:8443/x", "https://h:8443/x", "https://h:8443"),
            (
                "http://127.0.0.1:11434",
                "http://127.0.0.1:11434",
                "http://127.0.0.1:11434",
            ),
            (
                "http://127.9.9.9",
                "http://127.9.9.9",
                "http://127.9.9.9:80",
            ),
            (
                "http://localhost:8080/v1",
                "http://localhost:8080/v1",
                "http://localhost:8080",
            ),
            (
                "http://[::1]:1234",
                "http://[::1]:1234",
                "http://[::1]:1234",
            ),
        ] {
            let u = Upstream::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((u.as_str(), u.origin().as_str()), (base, origin), "{text}");
        }
        for (text, want) in [
            ("http://api.openai.com", "only allowed for a loopback host"),
            ("http://10.0.0.1", "only allowed for a loopback host"),
            (
                "http://localhost.evil.com",
                "only allowed for a loopback host",
            ),
            ("ftp://h", "scheme \"ftp\""),
            ("https://user:pw@h", "user name or password"),
            ("https://user@h", "user name or password"),
            ("https://h/?x=1", "query or fragment"),
            ("https://h/#f", "query or fragment"),
            ("https://h/a/../b", "'.' or '..'"),
            ("https://h/a/%2e%2e/b", "'.' or '..'"),
            ("https://h/a//b", "empty segments"),
            ("https://h/a b", "space"),
            ("https:\\\\h", "backslash"),
            ("api.openai.com", "not a URL"),
            ("", "not a URL"),
        ] {
            match Upstream::parse(text) {
                Err(e) => assert!(e.contains(want), "{text}: {e}"),
                Ok(u) => panic!("{text}: accepted as {u:?}"),
            }
        }
    }

    #[test]
    fn urls_stay_on_the_upstream() {
        let p = load(OPENAI);
        let r = rule(&p, "openai");
        let ok = |rest: &str| {
            r.url_for(rest)
                .unwrap_or_else(|e| panic!("{rest}: {e}"))
                .to_string()
        };
        assert_eq!(
            ok("/v1/chat/completions"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            ok("/v1/models?limit=1&x=%20"),
            "https://api.openai.com/v1/models?limit=1&x=%20"
        );
        assert_eq!(ok(""), "https://api.openai.com/");
        assert_eq!(ok("?a=b"), "https://api.openai.com/?a=b");
        assert_eq!(
            ok("/v1/files/a%20b"),
            "https://api.openai.com/v1/files/a%20b"
        );
        for bad in [
            "/v1/../admin",
            "/..",
            "/v1/./x",
            "/v1/%2e%2e/admin",
            "/v1/%2E./admin",
            "/v1/.%2e/admin",
            "/v1/a%2fb",
            "/v1/a%2Fb",
            "/v1/a%5cb",
            "/v1/a%25b",
            "/v1/a%00b",
            "/v1/%c0%ae",
            "/v1/%zz",
            "/v1/a%",
            "/v1/..;/admin",
            "//evil.com/x",
            "/v1//x",
            "@evil.com/x",
            ":8080/x",
            ".evil.com/x",
            "evil",
            "/v1\\..\\admin",
            "/v1/x#frag",
            "/v1/x y",
            "/v1/x\ty",
            "/v1/x\ny",
            "/v1/é",
            "/v1/x?q=#",
            "/v1/x?q=%g1",
            "/v1/x?a\\b",
        ] {
            assert!(
                r.url_for(bad).is_err(),
                "{bad:?} accepted: {:?}",
                r.url_for(bad)
            );
        }
        assert!(
            r.url_for(&format!("/{}", "a".repeat(MAX_REST_LEN)))
                .is_err()
        );
    }

    #[test]
    fn base_paths_are_kept() {
        let p = load("[http.a]\nupstream = \"https://h:8443/api/v2/\"\n");
        let r = rule(&p, "a");
        assert_eq!(
            r.url_for("/x?y").map(|u| u.to_string()),
            Ok("https://h:8443/api/v2/x?y".into())
        );
        assert_eq!(
            r.url_for("").map(|u| u.to_string()),
            Ok("https://h:8443/api/v2".into())
        );
        assert!(r.url_for("/../v1").is_err());
        assert_eq!(r.header, None);
        assert_eq!(r.secret, None);
        assert_eq!(r.header_value("s"), "");
    }

    fn limited_text_with_own_rate() -> String {
        OPENAI
            .replace(
                "source = \"keyring:nexus/openai\"\n",
                "source = \"keyring:nexus/openai\"\nrate = \"5/min\"\n",
            )
            .replace(
                "token = \"openai\"\n",
                "token = \"openai\"\nrate = \"100/min\"\n",
            )
    }

    #[test]
    fn header_values() {
        let r = rule(&load(OPENAI), "openai");
        assert_eq!(r.header_value("sk-1"), "Bearer sk-1");
        assert_eq!(r.header.as_deref(), Some("Authorization"));
        assert_eq!((r.rate, r.approve), (None, None));
        // The token's limits follow it, unless the API sets its own.
        let limited = load(&OPENAI.replace(
            "source = \"keyring:nexus/openai\"\n",
            "source = \"keyring:nexus/openai\"\nrate = \"5/min\"\napprove = \"prompt\"\n",
        ));
        let r = rule(&limited, "openai");
        assert_eq!(r.rate.map(|x| x.to_string()), Some("5/min".into()));
        assert_eq!(r.approve, Some(Approve::Prompt));
        let own = load(&limited_text_with_own_rate());
        assert_eq!(
            rule(&own, "openai").rate.map(|x| x.to_string()),
            Some("100/min".into())
        );
        let v6 = load("[http.a]\nupstream = \"http://[::1]:8080/b\"\n");
        assert_eq!(
            rule(&v6, "a").url_for("/c?d").map(|u| u.to_string()),
            Ok("http://[::1]:8080/b/c?d".into())
        );
        let inline = load(
            "[http.a]\nupstream = \"https://h\"\nheader = \"X-Api-Key\"\nsource = \"env:K\"\n",
        );
        let r = rule(&inline, "a");
        assert_eq!(r.header_value("{token}"), "{token}");
        assert_eq!(
            r.secret,
            Some(HttpSecret::Source(TokenSource::Env("K".into())))
        );
        assert_eq!(r.max_request_size, DEFAULT_MAX_REQUEST_SIZE);
        assert_eq!(r.timeout, DEFAULT_TIMEOUT);
        let fixed =
            load("[http.a]\nupstream = \"https://h\"\nheader = \"X-Org\"\nvalue = \"acme\"\n");
        assert_eq!(rule(&fixed, "a").header_value("ignored"), "acme");
    }

    #[test]
    fn decisions() {
        let p = load(&format!(
            "{OPENAI}\n[[http.deny]]\nname = \"prod-*\"\n\n[http.prod-x]\nupstream = \"https://h\"\n"
        ));
        let verdict = |name, method, path| http(&p, name, method, path).verdict;
        assert_eq!(verdict("openai", "POST", "/v1/chat"), Verdict::Allow);
        assert_eq!(verdict("openai", "GET", "/v2/a/b/c"), Verdict::Allow);
        // `*` stays within one segment.
        assert_eq!(
            verdict("openai", "POST", "/v1/chat/completions"),
            Verdict::Deny
        );
        assert_eq!(verdict("openai", "DELETE", "/v1/chat"), Verdict::Deny);
        assert_eq!(verdict("openai", "post", "/v1/chat"), Verdict::Deny);
        assert_eq!(verdict("openai", "GET", "/v1/../v3/x"), Verdict::Deny);
        assert_eq!(verdict("openai", "GET", "/v3/x"), Verdict::Deny);
        assert_eq!(verdict("openai", "GET", ""), Verdict::Deny);
        // Encoded characters are matched decoded.
        assert_eq!(verdict("openai", "GET", "/v1/%6dodels"), Verdict::Allow);
        assert_eq!(verdict("OpenAI", "GET", "/v1/x"), Verdict::Deny);
        let denied = http(&p, "prod-x", "GET", "/");
        assert_eq!(denied.verdict, Verdict::Deny);
        assert!(
            denied.reason.contains("[[http.deny]] name = \"prod-*\""),
            "{}",
            denied.reason
        );
        let undeclared = http(&p, "anthropic", "GET", "/");
        assert_eq!(undeclared.rule, None);
        assert_eq!(
            undeclared.reason,
            "http API \"anthropic\" is not declared in the policy (default deny)"
        );
        assert_eq!(
            p.http_apis()
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>(),
            ["openai"]
        );
        // TRACE would echo the secret back, whatever methods says.
        let any = load("[http.a]\nupstream = \"https://h\"\n");
        for m in ["TRACE", "TRACK", "CONNECT", "", "G ET", "GET\r\n"] {
            assert_eq!(http(&any, "a", m, "/").verdict, Verdict::Deny, "{m:?}");
        }
        assert_eq!(http(&any, "a", "PROPFIND", "/").verdict, Verdict::Allow);
        assert_eq!(http(&any, "a", "GET", "").verdict, Verdict::Allow);
        let reason = http(&p, "openai", "DELETE", "/v1/chat").reason;
        assert_eq!(
            reason,
            "http API \"openai\": method \"DELETE\" is not in methods = [\"GET\", \"POST\"] \
             ([http.openai] at p.toml:5)"
        );
    }

    #[test]
    fn a_denied_token_denies_its_api() {
        let p = load(&format!("{OPENAI}\n[[tokens.deny]]\nname = \"open*\"\n"));
        let d = http(&p, "openai", "GET", "/v1/x");
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(d.reason.contains("[[tokens.deny]]"), "{}", d.reason);
        assert!(
            p.warnings()
                .iter()
                .any(|w| w.message.contains("uses token \"openai\"")),
            "{:?}",
            p.warnings()
        );
    }

    #[test]
    fn parse_errors_are_positioned() {
        let cases: &[(&str, &str)] = &[
            (
                "[http.a]\nupstream = \"https://h\"\nuptream = 1\n",
                "p.toml:3:1: http.a: unknown key \"uptream\"; expected one of upstream, header, value, token, source, ca_file, methods, paths, max_request_size, timeout, description, mcp, approve, rate",
            ),
            (
                "[http.a]\nheader = \"X\"\nvalue = \"v\"\n",
                "p.toml:1:1: http.a: missing upstream",
            ),
            (
                "[http.a]\nupstream = \"http://h\"\n",
                "p.toml:2:12: http.a.upstream: upstream must use https://",
            ),
            (
                "[http.a]\nupstream = 7\n",
                "p.toml:2:12: http.a.upstream: expected a URL",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\ntoken = \"t\"\n\n[tokens.t]\nsource = \"env:T\"\n",
                "p.toml:1:1: http.a: a secret (token or source) needs header",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nheader = \"A\"\nvalue = \"Bearer\"\nsource = \"env:T\"\n",
                "p.toml:4:9: http.a.value: with a secret, the value must hold {token} exactly once (found 0)",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nheader = \"A\"\nvalue = \"{token}{token}\"\nsource = \"env:T\"\n",
                "(found 2)",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nheader = \"A\"\nvalue = \"Bearer {token}\"\n",
                "p.toml:4:9: http.a.value: {token} without a secret",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nheader = \"A\"\n",
                "p.toml:1:1: http.a: header without a secret or a value",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nvalue = \"x\"\n",
                "p.toml:3:9: http.a.value: a value needs header",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nheader = \"A\"\ntoken = \"t\"\nsource = \"env:T\"\n\n[tokens.t]\nsource = \"env:T\"\n",
                "p.toml:5:1: http.a: both token and source",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nheader = \"Host\"\nsource = \"env:T\"\n",
                "p.toml:3:10: http.a.header: header \"Host\" frames or routes",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nheader = \"Transfer-Encoding\"\nsource = \"env:T\"\n",
                "frames or routes",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nheader = \"X Y\"\nsource = \"env:T\"\n",
                "not a valid header name",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nheader = \"A\"\nvalue = \"a\\r\\nB: {token}\"\nsource = \"env:T\"\n",
                "p.toml:4:9: http.a.value: value holds a control",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nheader = \"A\"\ntoken = \"nope\"\n",
                "p.toml:4:9: http.a.token: no [tokens.nope] is declared",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nheader = \"A\"\nsource = \"vault:x\"\n",
                "p.toml:4:10: http.a.source: unknown source kind",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nmethods = [\"get\"]\n",
                "p.toml:3:12: http.a.methods: method \"get\" is not an uppercase",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nmethods = [\"TRACE\"]\n",
                "method \"TRACE\" is never forwarded",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nmethods = []\n",
                "the API would allow no method",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\npaths = [\"v1/*\"]\n",
                "p.toml:3:10: http.a.paths: path glob \"v1/*\" must start with '/'",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\npaths = [\"/v1/../*\"]\n",
                "'.' or '..' segment",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\npaths = [\"/v1/[\"]\n",
                "invalid path glob",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nmax_request_size = \"2GiB\"\n",
                "p.toml:3:20: http.a.max_request_size: \"2GiB\" is more than the 1GiB maximum",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nmax_request_size = \"1TB\"\n",
                "p.toml:3:20: http.a.max_request_size: invalid size \"1TB\": expected a number with B, KiB",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\ntimeout = \"25h\"\n",
                "p.toml:3:11: http.a.timeout: timeout \"25h\" must be more than 0 and at most 24h",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nca_file = \"ca.pem\"\n",
                "p.toml:3:11: http.a.ca_file: ca_file \"ca.pem\" must be absolute",
            ),
            (
                "[http.a]\nupstream = \"https://h\"\nmcp = \"yes\"\n",
                "p.toml:3:7: http.a.mcp: expected true or false",
            ),
            (
                "[http.\"a b\"]\nupstream = \"https://h\"\n",
                "p.toml:1:7: http.\"a b\": invalid API name",
            ),
            ("[http]\na = 1\n", "http.a: expected a table"),
            ("http = 1\n", "http: expected [http.NAME] tables"),
            (
                "[http.deny]\nname = \"x\"\n",
                "[[http.deny]] (double brackets)",
            ),
            (
                "[[http.deny]]\nnam = \"x\"\n",
                "http.deny: unknown key \"nam\"",
            ),
            (
                "[tokens.t]\nsource = \"env:T\"\nreveal = 1\n",
                "p.toml:3:10: tokens.t.reveal: expected true or false",
            ),
        ];
        for (text, want) in cases {
            let got = errors(text);
            assert!(
                got.iter().any(|e| e.contains(want)),
                "{text}\nwant: {want}\ngot: {got:#?}"
            );
        }
        // An API declared twice, in two files.
        let a = Source::new("a.toml", "[http.x]\nupstream = \"https://h\"\n");
        let b = Source::new("b.toml", "\n[http.x]\nupstream = \"https://g\"\n");
        let Err(e) = Policy::from_sources(&[a, b]) else {
            panic!("accepted")
        };
        assert_eq!(
            e.to_string(),
            "b.toml:2:1: http.x: declared twice (first at a.toml:1:1); declare each API once"
        );
    }

    #[test]
    fn a_token_is_bound_to_one_origin() {
        let two = format!(
            "{OPENAI}\n[http.other]\nupstream = \"https://evil.example\"\nheader = \"A\"\ntoken = \"openai\"\n"
        );
        let got = errors(&two);
        assert_eq!(
            got,
            [
                "p.toml:13:1: http.other: token \"openai\" is already bound to [http.openai] at \
              p.toml:5:1 (https://api.openai.com:443); a secret is sent to one origin only, so \
              https://evil.example:443 cannot use it: declare another token for it"
            ]
        );
        // The same source under another name, or inline, is the same secret.
        let renamed = format!(
            "{OPENAI}\n[tokens.copy]\nsource = \"keyring:nexus/openai\"\n\n[http.other]\nupstream = \"https://evil.example\"\nheader = \"A\"\ntoken = \"copy\"\n"
        );
        assert!(errors(&renamed)[0].contains("its secret's source is already bound"));
        let inline = format!(
            "{OPENAI}\n[http.other]\nupstream = \"https://evil.example\"\nheader = \"A\"\nsource = \"keyring:nexus/openai\"\n"
        );
        assert!(errors(&inline)[0].contains("already bound to [http.openai]"));
        // The same origin may use it twice (another base path, say).
        let same = format!(
            "{OPENAI}\n[http.openai2]\nupstream = \"https://api.openai.com:443/v2\"\nheader = \"A\"\ntoken = \"openai\"\n"
        );
        load(&same);
        // A workspace section cannot rebind it either, even for the same API name.
        let ws = format!(
            "{OPENAI}\n[workspace.ci.http.openai]\nupstream = \"https://evil.example\"\nheader = \"A\"\ntoken = \"openai\"\n"
        );
        let got = errors(&ws);
        assert!(
            got[0].starts_with("p.toml:13:1: http.openai: token \"openai\" is already bound"),
            "{got:?}"
        );
        // A workspace section resolves tokens from the policy around it.
        let ok = load(&format!(
            "{OPENAI}\n[workspace.ci.http.openai]\nupstream = \"https://api.openai.com\"\nheader = \"A\"\ntoken = \"openai\"\n"
        ));
        let Some(ws) = ok.workspaces.get("ci") else {
            panic!("no section")
        };
        let r = rule(ws, "openai");
        assert!(
            matches!(&r.secret, Some(HttpSecret::Token(t)) if t.rule.line == 2),
            "{r:?}"
        );
    }

    #[test]
    fn bound_tokens_never_enter_the_workspace() {
        let p = load(OPENAI);
        let d = token(&p, "openai");
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(
            d.reason,
            "token \"openai\" is bound to [http.openai] (https://api.openai.com): its value \
             never enters the workspace; use $NEXUS_HTTP_URL/openai/..."
        );
        assert_eq!(d.rule.map(|r| r.to_string()), Some("p.toml:5".into()));
        // Another token with the same source is the same value.
        let copy = load(&format!(
            "{OPENAI}\n[tokens.copy]\nsource = \"keyring:nexus/openai\"\nmcp = true\n"
        ));
        let d = token(&copy, "copy");
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(d.reason.contains("same source"), "{}", d.reason);
        // A binding in a workspace section binds the token everywhere.
        let in_ws = load(
            "[tokens.t]\nsource = \"env:T\"\n\n[workspace.ci.http.a]\nupstream = \"https://h\"\nheader = \"A\"\ntoken = \"t\"\n",
        );
        assert_eq!(token(&in_ws, "t").verdict, Verdict::Deny);
        // reveal = true lets it out, with a warning.
        let revealed = load(&OPENAI.replace(
            "source = \"keyring:nexus/openai\"\n",
            "source = \"keyring:nexus/openai\"\nreveal = true\n",
        ));
        assert_eq!(token(&revealed, "openai").verdict, Verdict::Allow);
        let warnings: Vec<String> = revealed
            .warnings()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            warnings.iter().any(|w| w
                .starts_with("p.toml:2:1: token \"openai\" is bound to [http.openai]")
                && w.contains("reveal = true")),
            "{warnings:?}"
        );
        // Unbound tokens are unaffected.
        let free = load(&format!("{OPENAI}\n[tokens.gh]\nsource = \"env:GH\"\n"));
        assert_eq!(token(&free, "gh").verdict, Verdict::Allow);
    }

    mod layers {
        use super::*;
        use crate::layers::{Outcome, PolicySet};

        const BASE: &str = r#"
[tokens.org-openai]
source = "keyring:org/openai"

[http.openai]
upstream = "https://api.openai.com"
header = "Authorization"
value = "Bearer {token}"
token = "org-openai"
methods = ["POST"]
paths = ["/v1/**"]
max_request_size = "1MiB"
timeout = "1m"
mcp = true
"#;

        const USER: &str = r#"
[tokens.mine]
source = "env:MINE"

[http.openai]
upstream = "https://evil.example/v1"
header = "X-Leak"
token = "mine"
methods = ["GET", "POST"]
max_request_size = "32MiB"
timeout = "1h"

[http.other]
upstream = "https://other.example"

[workspace.ci.http.openai]
upstream = "https://evil.example/v1"
header = "X-Leak"
token = "mine"
paths = ["/v1/models"]
"#;

        fn set(baseline: Option<&str>, user: &str) -> PolicySet {
            let load = |name: &str, text: &str| {
                Policy::from_sources(&[Source::new(name, text)]).unwrap_or_else(|e| panic!("{e}"))
            };
            PolicySet::new(
                baseline.map(|b| load("base.toml", b)),
                load("user.toml", user),
            )
        }

        fn call(s: &PolicySet, ws: &str, name: &str, method: &str, path: &str) -> Outcome {
            s.decide(&Request {
                workspace: ws,
                caller: None,
                action: Action::Http { name, method, path },
            })
        }

        #[test]
        fn a_baseline_api_pins_where_and_what() {
            let s = set(Some(BASE), USER);
            let out = call(&s, "dev", "openai", "POST", "/v1/chat/completions");
            assert_eq!(out.verdict, Verdict::Allow, "{}", out.reason);
            let Some(Grant::Http(r)) = &out.grant else {
                panic!("{:?}", out.grant)
            };
            assert_eq!(r.upstream.as_str(), "https://api.openai.com");
            assert_eq!(r.header.as_deref(), Some("Authorization"));
            assert_eq!(r.header_value("k"), "Bearer k");
            assert!(matches!(&r.secret, Some(HttpSecret::Token(t)) if t.name == "org-openai"));
            assert_eq!(r.max_request_size, 1 << 20);
            assert_eq!(r.timeout, Duration::from_secs(60));
            assert_eq!(r.methods, ["POST"]);
            assert_eq!(r.paths, ["/v1/**"]);
            assert!(!r.mcp, "mcp only if every layer says so");
            assert_eq!(r.rule.file, "user.toml");
            // The baseline's methods and paths are a ceiling.
            assert_eq!(
                call(&s, "dev", "openai", "GET", "/v1/models").verdict,
                Verdict::Deny
            );
            assert_eq!(
                call(&s, "dev", "openai", "POST", "/v2/x").verdict,
                Verdict::Deny
            );
            // Names the baseline does not declare are cut.
            let other = call(&s, "dev", "other", "GET", "/");
            assert_eq!(other.verdict, Verdict::Deny);
            assert!(
                other.reason.starts_with("org baseline: "),
                "{}",
                other.reason
            );
            assert_eq!(
                s.http_for("dev")
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>(),
                ["openai"]
            );
            // `policy check` names the user rules the baseline overrides.
            let beyond: Vec<String> = s
                .warnings()
                .iter()
                .map(ToString::to_string)
                .filter(|w| w.contains("goes beyond"))
                .collect();
            let at: Vec<&str> = beyond
                .iter()
                .map(|w| w.split(": ").next().unwrap_or(""))
                .collect();
            assert_eq!(
                at,
                [
                    "user.toml:2:1",
                    "user.toml:5:1",
                    "user.toml:13:1",
                    "user.toml:16:1"
                ],
                "{beyond:#?}"
            );
            assert!(beyond[1].contains("pins the upstream"), "{}", beyond[1]);
            assert!(
                beyond[2].contains("declares no [http.other]"),
                "{}",
                beyond[2]
            );
            // The baseline alone never grants.
            let none = set(Some(BASE), "");
            assert_eq!(
                call(&none, "dev", "openai", "POST", "/v1/x").verdict,
                Verdict::Deny
            );
            assert!(none.http_for("dev").is_empty());
        }

        #[test]
        fn without_a_baseline_the_user_decides_and_sections_narrow() {
            let s = set(None, USER);
            let out = call(&s, "dev", "openai", "GET", "/anything");
            let Some(Grant::Http(r)) = &out.grant else {
                panic!("{}", out.reason)
            };
            assert_eq!(r.upstream.as_str(), "https://evil.example/v1");
            assert_eq!(
                call(&s, "ci", "openai", "GET", "/v1/models").verdict,
                Verdict::Allow
            );
            assert_eq!(
                call(&s, "ci", "openai", "GET", "/v1/files").verdict,
                Verdict::Deny
            );
            assert_eq!(call(&s, "ci", "other", "GET", "/").verdict, Verdict::Deny);
            let names = |ws| {
                s.http_for(ws)
                    .iter()
                    .map(|a| a.name.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(names("dev"), ["openai", "other"]);
            assert_eq!(names("ci"), ["openai"]);
        }

        #[test]
        fn a_deny_in_any_layer_wins() {
            let s = set(Some("[[http.deny]]\nname = \"oth*\"\n"), USER);
            let out = call(&s, "dev", "other", "GET", "/");
            assert_eq!(out.verdict, Verdict::Deny);
            assert_eq!(
                out.rule.as_ref().map(|r| r.file.as_str()),
                Some("base.toml")
            );
            assert_eq!(
                call(&s, "dev", "openai", "GET", "/").verdict,
                Verdict::Allow
            );
            assert_eq!(
                s.http_for("dev")
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>(),
                ["openai"]
            );
            let ws = set(
                None,
                &format!("{USER}\n[[workspace.ci.http.deny]]\nname = \"*\"\n"),
            );
            assert_eq!(
                call(&ws, "ci", "openai", "GET", "/v1/models").verdict,
                Verdict::Deny
            );
            assert_eq!(
                call(&ws, "dev", "openai", "GET", "/v1/models").verdict,
                Verdict::Allow
            );
        }

        #[test]
        fn a_token_the_baseline_binds_stays_on_the_laptop() {
            let user = "[tokens.org-openai]\nsource = \"env:MINE\"\n";
            let s = set(Some(BASE), user);
            let out = s.decide(&Request {
                workspace: "dev",
                caller: None,
                action: Action::Token { name: "org-openai" },
            });
            assert_eq!(out.verdict, Verdict::Deny);
            assert!(
                out.reason.contains("is bound to [http.openai]"),
                "{}",
                out.reason
            );
            // Nor under another name with the same source, even with reveal:
            // the org's binding is not the user's to lift.
            let user = "[tokens.copy]\nsource = \"keyring:org/openai\"\nreveal = true\n\n\
                        [tokens.free]\nsource = \"env:FREE\"\nreveal = true\n";
            let s = set(Some(BASE), user);
            let get = |name| {
                s.decide(&Request {
                    workspace: "dev",
                    caller: None,
                    action: Action::Token { name },
                })
            };
            let out = get("copy");
            assert_eq!(out.verdict, Verdict::Deny, "{}", out.reason);
            assert_eq!(
                out.rule.as_ref().map(|r| r.file.as_str()),
                Some("base.toml")
            );
            assert!(out.reason.contains("same source"), "{}", out.reason);
            // (`free` is cut by the baseline's [tokens.*] ceiling; without
            // one, an unbound token stays the user's.)
            let inline = BASE
                .replace("[tokens.org-openai]\nsource = \"keyring:org/openai\"\n", "")
                .replace("token = \"org-openai\"", "source = \"keyring:org/openai\"");
            let s = set(Some(&inline), user);
            let get = |name| {
                s.decide(&Request {
                    workspace: "dev",
                    caller: None,
                    action: Action::Token { name },
                })
            };
            assert_eq!(get("copy").verdict, Verdict::Deny);
            assert_eq!(get("free").verdict, Verdict::Allow);
        }
    }
}
