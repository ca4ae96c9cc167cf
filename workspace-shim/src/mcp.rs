//! `nexus-shim mcp`: a stdio MCP server, so that any MCP client (Claude
//! Code, OpenCode, ...) can use the laptop's tools with no plugin.
//!
//! It is one more client of the daemon's `shim.sock`: every call crosses the
//! tunnel and is decided by the laptop's policy like the CLI's. It lists:
//! - one `tool_NAME` per custom laptop tool the policy declares (with its
//!   argument patterns in the schema);
//! - `file_get` (an allowlisted laptop file, as text);
//! - `git_credential_check` (whether the laptop would answer git for a URL;
//!   never the password);
//! - `token_get` only for tokens whose rule says `mcp = true`: a token value
//!   handed to a model lands in its context and its provider's logs;
//! - one `http_NAME` per HTTP API (`[http.NAME]`) whose rule says
//!   `mcp = true`: the request goes through `$NEXUS_HTTP_URL`, so the laptop
//!   adds the key and the model never sees it.
//!
//! Denials come back as MCP tool errors carrying the laptop's reason.
//! Logs go to stderr; stdout carries only the protocol.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use nexus_protocol::{
    Channel, Credential, ErrorReply, GitOperation, HttpApi, LocalOp, LocalReply, Reply, Request,
    Secret, ToolInfo,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeRequestParams, InitializeResult, JsonObject, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, Tool,
};
use rmcp::service::{RequestContext, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::client::Session;
use crate::state::StateDir;

/// Most output one tool call returns to the model; the rest is cut with a
/// note (a model's context is small, and a tool can print without end).
pub const MAX_OUTPUT: usize = 256 << 10;

/// The MCP server.
#[derive(Clone, Debug)]
pub struct Server {
    state: Arc<StateDir>,
    wait: Duration,
}

impl Server {
    /// A server asking the daemon on `state`, waiting up to `wait` for the
    /// laptop on each call.
    pub fn new(state: StateDir, wait: Duration) -> Self {
        Self {
            state: Arc::new(state),
            wait,
        }
    }

    /// One request, one reply (tool list, git credential, token).
    async fn ask(&self, request: Request) -> Result<Reply, String> {
        let mut session = Session::start(&self.state, self.wait, LocalOp::Forward(request))
            .await
            .map_err(|e| e.to_string())?;
        match session.next().await.map_err(|e| e.to_string())? {
            LocalReply::Reply(Reply::Error(e)) => Err(refusal(&e)),
            LocalReply::Reply(reply) => Ok(reply),
            other => Err(format!("unexpected answer from the daemon: {other:?}")),
        }
    }

    /// A streamed call, collected: (stdout or data, stderr, exit code).
    async fn collect(&self, request: Request) -> Result<Collected, String> {
        let mut session = Session::start(&self.state, self.wait, LocalOp::Forward(request))
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Collected::default();
        loop {
            match session.next().await.map_err(|e| e.to_string())? {
                LocalReply::Reply(Reply::Chunk { channel, data }) => {
                    let into = if channel == Channel::Stderr {
                        &mut out.stderr
                    } else {
                        &mut out.stdout
                    };
                    let room = MAX_OUTPUT.saturating_sub(into.len());
                    into.extend_from_slice(&data[..data.len().min(room)]);
                    out.cut |= data.len() > room;
                }
                LocalReply::Reply(Reply::FileStart { size, .. }) => out.size = Some(size),
                LocalReply::Reply(Reply::Exit(code)) => {
                    out.exit = Some(code);
                    return Ok(out);
                }
                LocalReply::Reply(Reply::Done) => return Ok(out),
                LocalReply::Reply(Reply::Error(e)) => return Err(refusal(&e)),
                other => return Err(format!("unexpected answer from the daemon: {other:?}")),
            }
        }
    }

    async fn laptop_tools(&self) -> Result<Vec<ToolInfo>, String> {
        match self.ask(Request::ToolList).await? {
            Reply::Tools(tools) => Ok(tools),
            other => Err(format!("unexpected answer to a tool list: {other:?}")),
        }
    }

    async fn mcp_tokens(&self) -> Result<Vec<String>, String> {
        match self.ask(Request::McpTokens).await? {
            Reply::McpTokens(names) => Ok(names),
            other => Err(format!("unexpected answer to a token list: {other:?}")),
        }
    }

    async fn http_apis(&self) -> Result<Vec<HttpApi>, String> {
        match self.ask(Request::HttpList).await? {
            Reply::HttpApis(apis) => Ok(apis.into_iter().filter(|a| a.mcp).collect()),
            other => Err(format!("unexpected answer to an HTTP API list: {other:?}")),
        }
    }

    async fn http_call(&self, name: &str, args: &JsonObject) -> CallToolResult {
        // Offered only where the rule says `mcp = true` (as for tokens: a
        // guard against accidents, not a wall; the endpoint is the same).
        match self.http_apis().await {
            Err(why) => return error(&why),
            Ok(apis) if !apis.iter().any(|a| a.name == name) => {
                return error(&format!(
                    "HTTP API {name:?} is not offered to models: its [http.{name}] rule needs `mcp = true`"
                ));
            }
            Ok(_) => {}
        }
        let method = args.get("method").and_then(Value::as_str).unwrap_or("GET");
        let Some(path) = args.get("path").and_then(Value::as_str) else {
            return error("`path` (a string starting with /) is required");
        };
        let body = match args.get("body") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => Some(other.to_string()),
        };
        let content_type = args
            .get("content_type")
            .and_then(Value::as_str)
            .unwrap_or("application/json");
        let body = body.map(|b| (content_type.to_owned(), b));
        match crate::http::call(&self.state, name, method, path, body, MAX_OUTPUT).await {
            Err(why) => error(&why),
            Ok((status, data, cut)) => {
                let mut text = format!("HTTP {status}\n{}", String::from_utf8_lossy(&data));
                if cut {
                    text.push_str(&format!("\n[response cut at {MAX_OUTPUT} bytes]"));
                }
                if (200..300).contains(&status) {
                    CallToolResult::success(vec![ContentBlock::text(text)])
                } else {
                    CallToolResult::error(vec![ContentBlock::text(text)])
                }
            }
        }
    }

    async fn run_tool(&self, name: &str, args: &JsonObject) -> CallToolResult {
        let argv = match args.get("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut argv = Vec::with_capacity(items.len());
                for item in items {
                    let Value::String(s) = item else {
                        return error("`args` must be an array of strings");
                    };
                    argv.push(s.clone());
                }
                argv
            }
            Some(_) => return error("`args` must be an array of strings"),
        };
        match self
            .collect(Request::ToolRun {
                name: name.to_owned(),
                args: argv,
            })
            .await
        {
            Err(why) => error(&why),
            Ok(out) => {
                let code = out.exit.unwrap_or(-1);
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                if !out.stderr.is_empty() {
                    text.push_str("\n[stderr]\n");
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                }
                if out.cut {
                    text.push_str(&format!("\n[output cut at {MAX_OUTPUT} bytes]"));
                }
                if code == 0 {
                    CallToolResult::success(vec![ContentBlock::text(text)])
                } else {
                    text.push_str(&format!("\n[exit code {code}]"));
                    CallToolResult::error(vec![ContentBlock::text(text)])
                }
            }
        }
    }

    async fn file_get(&self, args: &JsonObject) -> CallToolResult {
        let Some(path) = args.get("path").and_then(Value::as_str) else {
            return error("`path` (a string) is required");
        };
        match self
            .collect(Request::FileGet {
                path: path.to_owned(),
            })
            .await
        {
            Err(why) => error(&why),
            Ok(out) if out.size.is_none() => {
                let notes = String::from_utf8_lossy(&out.stderr).into_owned();
                error(&format!(
                    "{path} is a directory or nothing was sent. {notes}"
                ))
            }
            Ok(out) => match String::from_utf8(out.stdout) {
                Ok(mut text) => {
                    if out.cut {
                        text.push_str(&format!("\n[file cut at {MAX_OUTPUT} bytes]"));
                    }
                    CallToolResult::success(vec![ContentBlock::text(text)])
                }
                Err(_) => error(&format!(
                    "{path} is not text ({} bytes); copy it with `nexus-shim file get {path} -o DEST`",
                    out.size.unwrap_or(0)
                )),
            },
        }
    }

    async fn git_check(&self, args: &JsonObject) -> CallToolResult {
        let Some(url) = args.get("url").and_then(Value::as_str) else {
            return error("`url` (a string such as https://github.com/acme/app.git) is required");
        };
        let Some((protocol, rest)) = url.split_once("://") else {
            return error("`url` must look like https://HOST/PATH");
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let ask = Credential {
            protocol: Some(protocol.to_owned()),
            host: Some(host.to_owned()),
            path: (!path.is_empty()).then(|| path.to_owned()),
            ..Credential::default()
        };
        let input = match String::from_utf8(ask.serialize().to_vec()) {
            Ok(text) if nexus_protocol::parse_credential(text.as_bytes()).is_ok() => text,
            _ => return error(&format!("{url}: not a URL git would ask about")),
        };
        let reply = self
            .ask(Request::GitCredential {
                operation: GitOperation::Get,
                input: Secret::from(input),
            })
            .await;
        match reply {
            Err(why) => error(&why),
            Ok(Reply::GitCredential(answer)) => {
                let parsed = nexus_protocol::parse_credential(answer.expose());
                match parsed {
                    Ok(c) if c.password.is_some() => {
                        CallToolResult::success(vec![ContentBlock::text(format!(
                            "the laptop answers git for {url} (user {}); `git` in this workspace \
                             will get the credential through the nexus-shim helper",
                            c.username.as_deref().unwrap_or("(none)")
                        ))])
                    }
                    _ => error(&format!("the laptop has no credential for {url}")),
                }
            }
            Ok(other) => error(&format!("unexpected answer: {other:?}")),
        }
    }

    async fn token_get(&self, args: &JsonObject) -> CallToolResult {
        let Some(name) = args.get("name").and_then(Value::as_str) else {
            return error("`name` (a string) is required");
        };
        // Checked here, in the workspace: `mcp = true` keeps a value out of
        // a model's context by accident; it is not a wall against the
        // workspace, which may ask for any token its policy allows anyway.
        match self.mcp_tokens().await {
            Err(why) => return error(&why),
            Ok(names) if !names.iter().any(|n| n == name) => {
                return error(&format!(
                    "token {name:?} is not offered to models: its rule in the laptop's policy \
                     needs `mcp = true`"
                ));
            }
            Ok(_) => {}
        }
        match self
            .ask(Request::Token {
                name: name.to_owned(),
            })
            .await
        {
            Err(why) => error(&why),
            Ok(Reply::Token(value)) => match std::str::from_utf8(value.expose()) {
                Ok(text) => CallToolResult::success(vec![ContentBlock::text(text.to_owned())]),
                Err(_) => error(&format!("token {name:?} is not text")),
            },
            Ok(other) => error(&format!("unexpected answer: {other:?}")),
        }
    }
}

#[derive(Debug, Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<i32>,
    size: Option<u64>,
    cut: bool,
}

fn refusal(e: &ErrorReply) -> String {
    e.message.clone()
}

fn error(message: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.to_owned())])
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

/// The MCP name of laptop tool `name` (policy names are `[A-Za-z0-9._-]`).
fn tool_name(name: &str) -> String {
    format!("tool_{name}")
}

fn describe_tool(t: &ToolInfo) -> Tool {
    let patterns = if t.args.is_empty() {
        "takes no arguments".to_owned()
    } else {
        format!(
            "accepts arguments matching {:?} (`*` matches one argument not starting with `-`)",
            t.args
        )
    };
    let approve = if t.approve {
        " Each run waits for approval on the laptop."
    } else {
        ""
    };
    Tool::new(
        tool_name(&t.name),
        format!(
            "{} (laptop tool `{}`; {patterns}).{approve}",
            t.description, t.name
        ),
        schema(json!({
            "type": "object",
            "properties": {
                "args": {
                    "type": "array",
                    "items": { "type": "string" },
                    "description": format!("Arguments after the declared command; the laptop {patterns}")
                }
            },
            "additionalProperties": false
        })),
    )
}

fn describe_http(a: &HttpApi) -> Tool {
    let approve = if a.approve {
        " Each request waits for approval on the laptop."
    } else {
        ""
    };
    let limits = match (a.methods.is_empty(), a.paths.is_empty()) {
        (true, true) => String::new(),
        _ => format!(" Allowed: methods {:?}, paths {:?}.", a.methods, a.paths),
    };
    Tool::new(
        format!("http_{}", a.name),
        format!(
            "{} (HTTP API {}, called by the laptop with its own credentials; the answer is the status line and body).{limits}{approve}",
            if a.description.is_empty() {
                "HTTP API"
            } else {
                &a.description
            },
            a.upstream
        ),
        schema(json!({
            "type": "object",
            "properties": {
                "method": { "type": "string", "description": "GET (default), POST, ..." },
                "path": { "type": "string", "description": format!("path below {} (starts with /, may hold ?query)", a.upstream) },
                "body": { "description": "request body: a string, or JSON (sent as JSON)" },
                "content_type": { "type": "string", "description": "Content-Type of the body (default application/json)" }
            },
            "required": ["path"],
            "additionalProperties": false
        })),
    )
}

fn fixed_tools(with_tokens: bool) -> Vec<Tool> {
    let mut tools = vec![
        Tool::new(
            "file_get",
            "Read an allowlisted file from the developer's laptop (read-only, as text). \
             `~/x` means the laptop user's home.",
            schema(json!({
                "type": "object",
                "properties": { "path": { "type": "string", "description": "e.g. ~/.config/opencode/config.json" } },
                "required": ["path"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "git_credential_check",
            "Whether the laptop will answer git's credential requests for a repository URL \
             (git in this workspace then authenticates through it). Never returns the password.",
            schema(json!({
                "type": "object",
                "properties": { "url": { "type": "string", "description": "e.g. https://github.com/acme/app.git" } },
                "required": ["url"],
                "additionalProperties": false
            })),
        ),
    ];
    if with_tokens {
        tools.push(Tool::new(
            "token_get",
            "A token from the laptop, for the tokens its policy offers to models (`mcp = true`).",
            schema(json!({
                "type": "object",
                "properties": { "name": { "type": "string" } },
                "required": ["name"],
                "additionalProperties": false
            })),
        ));
    }
    tools
}

impl ServerHandler for Server {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("nexus-shim", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Tools that run on, or read from, the developer's laptop through Nexus Agent \
                 Proxy. The laptop's policy decides every call; a refusal says why.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        // The laptop decides what exists; without a link there is nothing
        // but the fixed tools (their calls then say the laptop is away).
        let laptop = self.laptop_tools().await.unwrap_or_default();
        let tokens = self.mcp_tokens().await.unwrap_or_default();
        let apis = self.http_apis().await.unwrap_or_default();
        let mut tools: Vec<Tool> = laptop.iter().map(describe_tool).collect();
        tools.extend(apis.iter().map(describe_http));
        tools.extend(fixed_tools(!tokens.is_empty()));
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        let name: Cow<'_, str> = request.name;
        let result = match name.as_ref() {
            "file_get" => self.file_get(&args).await,
            "git_credential_check" => self.git_check(&args).await,
            "token_get" => self.token_get(&args).await,
            other => match (other.strip_prefix("tool_"), other.strip_prefix("http_")) {
                (Some(tool), _) => self.run_tool(tool, &args).await,
                (None, Some(api)) => self.http_call(api, &args).await,
                (None, None) => {
                    return Err(McpError::invalid_params(
                        format!("no tool named {other:?}; list the tools first"),
                        None,
                    ));
                }
            },
        };
        Ok(result.into())
    }
}

/// Why no daemon answers on `state` (none listening, or not the caller's
/// own), if so: an agent would otherwise see a server with no laptop tools
/// and no reason.
pub async fn daemon_missing(state: &StateDir) -> Option<String> {
    let answer = async {
        let mut session = Session::start(state, Duration::ZERO, LocalOp::Status).await?;
        session.next().await
    };
    answer.await.err().map(|e| e.to_string())
}

/// An MCP server that cannot serve: its `initialize` fails with the reason,
/// which is what agents show for a broken server.
#[derive(Clone, Debug)]
struct Unavailable(String);

impl ServerHandler for Unavailable {
    async fn initialize(
        &self,
        _request: InitializeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        Err(McpError::internal_error(self.0.clone(), None))
    }
}

/// Answers the client's `initialize` with `why` and ends the session.
pub async fn refuse(why: String) {
    // The session ends in an error by design: it is the refusal itself,
    // or the client left first; `why` was already told either way.
    if let Ok(running) = Unavailable(why).serve(rmcp::transport::stdio()).await {
        let _ = running.waiting().await;
    }
}

/// Serves MCP on stdin/stdout until the client closes it.
///
/// # Errors
/// The MCP session could not start or broke.
pub async fn serve(state: StateDir, wait: Duration) -> anyhow::Result<()> {
    let server = Server::new(state, wait);
    let (stdin, stdout) = rmcp::transport::stdio();
    let running = server
        .serve(LineTransport::new(stdin, stdout))
        .await
        .map_err(|e| anyhow::anyhow!("starting the MCP session: {e}"))?;
    running
        .waiting()
        .await
        .map_err(|e| anyhow::anyhow!("MCP session: {e}"))?;
    Ok(())
}

/// Longest JSON-RPC line read; a longer one is answered as a parse error and
/// skipped (one line is one message, and a client never needs this much).
pub const MAX_LINE: usize = 4 << 20;

/// Newline-delimited JSON-RPC over a reader and a writer, like rmcp's stdio
/// transport, except that a line it cannot take is answered instead of
/// dropped (a client would wait for ever): not JSON is -32700 with a null
/// id, JSON that is no valid message is -32600 carrying the request's id.
struct LineTransport<R> {
    input: tokio::io::BufReader<R>,
    /// The line being read, and an answer not yet queued: kept here, not in
    /// `receive`, because rmcp drops a pending `receive` whenever another
    /// event comes first (a select), and what a dropped future held would
    /// be lost with it (a client would then wait for an answer for ever).
    line: Vec<u8>,
    pending: Option<Vec<u8>>,
    /// Skipping the rest of an oversized line.
    skipping: bool,
    /// Every line for the client, rmcp's and the ones this transport
    /// answers itself, written in order by one task that owns the output,
    /// so that `receive` never waits on a write it could be dropped in.
    answers: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// That task: `close` waits for it to write what is queued.
    writer: Option<tokio::task::JoinHandle<()>>,
}

/// Lines queued for the client before a sender waits for it to read.
const ANSWERS_QUEUED: usize = 64;

impl<R: tokio::io::AsyncRead> LineTransport<R> {
    /// Needs a Tokio runtime: the answers' writer is a task of its own,
    /// ending when the transport is dropped or the client stops reading.
    fn new<W: tokio::io::AsyncWrite + Unpin + Send + 'static>(input: R, out: W) -> Self {
        let (answers, mut queued) = tokio::sync::mpsc::channel::<Vec<u8>>(ANSWERS_QUEUED);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut out = out;
            while let Some(line) = queued.recv().await {
                if out.write_all(&line).await.is_err() || out.flush().await.is_err() {
                    break;
                }
            }
        });
        Self {
            input: tokio::io::BufReader::new(input),
            line: Vec::new(),
            pending: None,
            skipping: false,
            answers,
            writer: Some(writer),
        }
    }
}

/// What one input line is: a message for rmcp, nothing to do, or the error
/// line to answer.
#[derive(Debug)]
enum Line {
    Message(Box<RxJsonRpcMessage<RoleServer>>),
    Skip,
    Answer(Vec<u8>),
}

fn error_line(id: &Value, code: i32, message: &str) -> Vec<u8> {
    let mut line = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        .to_string()
        .into_bytes();
    line.push(b'\n');
    line
}

/// The requests a client may send this server (MCP 2025-06-18).
const MCP_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
];

fn classify(line: &[u8]) -> Line {
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Line::Skip;
    }
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(_) => return Line::Answer(error_line(&Value::Null, -32700, "Parse error: not JSON")),
    };
    let id = match value.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    };
    let method = value
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let is_notification = method.is_some() && value.get("id").is_none();
    match serde_json::from_value::<RxJsonRpcMessage<RoleServer>>(value) {
        // rmcp takes an MCP method whose params it cannot read for a
        // custom request and answers "method not found"; it is -32602.
        Ok(rmcp::model::JsonRpcMessage::Request(r))
            if matches!(&r.request, rmcp::model::ClientRequest::CustomRequest(c)
                if MCP_METHODS.contains(&c.method.as_str())) =>
        {
            let method = method.unwrap_or_default();
            Line::Answer(error_line(
                &id,
                -32602,
                &format!("Invalid params for {method}"),
            ))
        }
        Ok(message) => Line::Message(Box::new(message)),
        // Notifications get no answer, even malformed ones (JSON-RPC 2.0).
        Err(_) if is_notification => Line::Skip,
        Err(e) => Line::Answer(error_line(&id, -32600, &format!("Invalid request: {e}"))),
    }
}

impl<R> rmcp::transport::Transport<RoleServer> for LineTransport<R>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let answers = self.answers.clone();
        async move {
            let mut line = serde_json::to_vec(&item)?;
            line.push(b'\n');
            answers.send(line).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the MCP client stopped reading",
                )
            })
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        use tokio::io::AsyncBufReadExt;
        loop {
            // Every await below may be dropped and called again: progress
            // lives in `self` (see the fields).
            if self.pending.is_some() {
                let permit = self.answers.reserve().await.ok()?;
                if let Some(answer) = self.pending.take() {
                    permit.send(answer);
                }
            }
            let room = if self.skipping {
                64 << 10
            } else {
                (MAX_LINE + 1).saturating_sub(self.line.len()) as u64
            };
            let read = (&mut self.input)
                .take(room)
                .read_until(b'\n', &mut self.line)
                .await
                .ok()?;
            let ended = read == 0 || self.line.ends_with(b"\n");
            if self.skipping {
                // The rest of an oversized line, already answered.
                self.line.clear();
                self.skipping = !ended;
                if read == 0 {
                    return None;
                }
                continue;
            }
            if self.line.len() > MAX_LINE {
                self.line.clear();
                self.skipping = !ended;
                self.pending = Some(error_line(
                    &Value::Null,
                    -32700,
                    "Parse error: line too long",
                ));
                continue;
            }
            if !ended {
                continue;
            }
            if read == 0 && self.line.is_empty() {
                return None;
            }
            let line = std::mem::take(&mut self.line);
            match classify(&line) {
                Line::Message(m) => return Some(*m),
                Line::Skip => {}
                Line::Answer(a) => self.pending = Some(a),
            }
            if read == 0 {
                // End of input after a last line without its newline: its
                // answer still goes out.
                if let Some(answer) = self.pending.take() {
                    let _ = self.answers.send(answer).await;
                }
                return None;
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        // The writer ends once every sender is gone: ours is replaced by
        // one whose channel is already closed.
        self.answers = tokio::sync::mpsc::channel(1).0;
        // Bounded: a client that stopped reading must not hold the exit.
        if let Some(writer) = self.writer.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::transport::Transport;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    /// Feeds `input` to the transport and returns the first message it hands
    /// to rmcp (if any) and every line it answered by itself.
    async fn run(input: &str) -> (Option<RxJsonRpcMessage<RoleServer>>, Vec<Value>) {
        let (mut client, server_in) = tokio::io::duplex(1 << 16);
        let (server_out, answers) = tokio::io::duplex(1 << 16);
        let mut transport = LineTransport::new(server_in, server_out);
        // Written while the transport reads: the input may exceed the pipe.
        let input = input.to_owned();
        let writer = tokio::spawn(async move {
            let _ = client.write_all(input.as_bytes()).await;
        });
        let got = transport.receive().await;
        // Drain what a test leaves unread, so the writer finishes.
        while transport.receive().await.is_some() {}
        let _ = writer.await;
        drop(transport);
        let mut lines = tokio::io::BufReader::new(answers).lines();
        let mut out = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            out.push(serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l}: {e}")));
        }
        (got, out)
    }

    #[tokio::test]
    async fn a_line_that_is_not_json_gets_a_parse_error_with_a_null_id() {
        let (got, answers) = run("not json\n\n").await;
        assert!(got.is_none());
        assert_eq!(
            answers,
            vec![
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error: not JSON"}})
            ]
        );
    }

    #[tokio::test]
    async fn an_invalid_request_is_answered_with_its_id_and_the_next_line_still_served() {
        let input = concat!(
            "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":\"x\"}\n",
            "{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":5,\"error\":{}}\n",
            "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/bogus\",\"params\":1}\n",
            "[1]\n",
            "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"tools/call\",\"params\":{\"name\":5}}\n",
            "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"ping\"}\n",
        );
        let (got, answers) = run(input).await;
        let ids: Vec<_> = answers.iter().map(|a| a["id"].clone()).collect();
        assert_eq!(
            ids,
            vec![json!(7), json!("a"), Value::Null, json!(9)],
            "{answers:?}"
        );
        let codes: Vec<_> = answers.iter().map(|a| a["error"]["code"].clone()).collect();
        assert_eq!(codes, [-32600, -32600, -32600, -32602], "{answers:?}");
        let Some(rmcp::model::JsonRpcMessage::Request(request)) = got else {
            panic!("{got:?}");
        };
        assert_eq!(request.id, rmcp::model::RequestId::Number(8));
    }

    /// rmcp drops a pending `receive` whenever another event comes first:
    /// neither half a line read nor an answer made may be lost with it.
    #[tokio::test]
    async fn a_dropped_receive_loses_neither_a_half_line_nor_an_answer() {
        let (mut client, server_in) = tokio::io::duplex(1 << 16);
        let (server_out, answers) = tokio::io::duplex(1 << 16);
        let mut transport = LineTransport::new(server_in, server_out);
        let _ = client.write_all(b"not json\n{\"jsonrpc\":\"2.0\",").await;
        // Dropped once it has read all there is: mid-line.
        let idle = tokio::time::timeout(std::time::Duration::from_millis(50), transport.receive());
        assert!(idle.await.is_err(), "nothing whole to hand on yet");
        let _ = client.write_all(b"\"id\":4,\"method\":\"ping\"}\n").await;
        let Some(rmcp::model::JsonRpcMessage::Request(request)) = transport.receive().await else {
            panic!("the line begun before the drop was lost");
        };
        assert_eq!(request.id, rmcp::model::RequestId::Number(4));
        assert!(transport.close().await.is_ok());
        drop(transport);
        let mut lines = tokio::io::BufReader::new(answers).lines();
        let first = lines.next_line().await.ok().flatten().unwrap_or_default();
        assert!(first.contains("-32700"), "{first}");
    }

    #[tokio::test]
    async fn an_oversized_line_is_refused_and_skipped() {
        let input = format!(
            "{}\n{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}}\n",
            "x".repeat(MAX_LINE + 10)
        );
        let (got, answers) = run(&input).await;
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0]["error"]["code"], -32700);
        assert!(got.is_some());
    }
}
