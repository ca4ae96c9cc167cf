//! A scripted LLM behind [`crate::upstream::Upstream`], for real agents
//! (Claude Code, Codex, OpenCode) run headless against it.
//!
//! It speaks three shapes, streamed as SSE when the request asks for it:
//! Anthropic Messages (`/v1/messages`), OpenAI Responses (`/v1/responses`)
//! and Chat Completions (`/v1/chat/completions`). It keeps no state: each
//! answer follows from the conversation the agent sends back, so retries
//! and side requests (titles, summaries) cannot confuse it.
//!
//! The script, counted in tool results the conversation already holds:
//! 1. none: call the MCP tool whose name ends in [`MCP_TOOL`] (each agent
//!    names MCP tools its own way: `mcp__nexus__tool_hello`,
//!    `nexus_tool_hello`; Codex's `exec` script finds it in `ALL_TOOLS`);
//! 2. one: run [`SHELL_COMMAND`] with the agent's shell tool;
//! 3. more: a final text naming which of [`MARKERS`] the tool results held.
//!
//! A request that offers no such MCP tool gets the final text at once (for
//! Codex, the script lists the tools it found instead).

use serde_json::{Value, json};

/// The laptop tool every agent is to call, as `nexus-shim mcp` names it.
pub const MCP_TOOL: &str = "tool_hello";

/// What the agent's shell runs in its working directory (a clone of the
/// git host's repository) on the second turn.
/// (It prints its marker without spelling it out: the command itself comes
/// back in the conversation.)
pub const SHELL_COMMAND: &str =
    "git push -q origin HEAD:refs/heads/agent && printf 'push-%s\\n' went-through";

/// What the tool results hold when both calls worked: the laptop tool's
/// output, then the shell's.
pub const MARKERS: [&str; 2] = ["laptop-says-hello", "push-went-through"];

/// The start of every final answer.
pub const FINAL_PREFIX: &str = "nexus-e2e final:";

/// An answer: its content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `text/event-stream` or `application/json`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

/// The answer to a request for `path` with `body`, when `path` is one of
/// the three LLM endpoints (an optional prefix before `/v1/` is allowed).
pub fn answer(path: &str, body: &[u8]) -> Option<Answer> {
    let shape = if path.ends_with("/v1/messages") {
        Shape::Messages
    } else if path.ends_with("/v1/responses") {
        Shape::Responses
    } else if path.ends_with("/v1/chat/completions") {
        Shape::Chat
    } else {
        return None;
    };
    let raw = String::from_utf8_lossy(body);
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let stream = request["stream"].as_bool().unwrap_or(false);
    let turn = tool_results(shape, &request);
    let step = next_step(shape, turn, &raw, &request);
    // Ids unique per turn: agents merge blocks that share one.
    let answer = render(shape, stream, &step);
    Some(Answer {
        body: answer.body.replace("_e2e", &format!("_e2e{turn}")),
        ..answer
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Messages,
    Responses,
    Chat,
}

/// What the model does next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A call of tool `name` with `input` (a JSON object, or Codex's
    /// freeform source text).
    Call {
        name: String,
        input: Value,
        freeform: bool,
    },
    /// The final answer.
    Text(String),
}

fn next_step(shape: Shape, results: usize, raw: &str, request: &Value) -> Step {
    // Codex offers its tools inside one JavaScript `exec` tool, MCP tools
    // among the deferred ones its script finds in `ALL_TOOLS`.
    if raw.contains("tools.exec_command(") {
        let source = match results {
            0 => format!(
                "const t = ALL_TOOLS.find(t => t.name.endsWith({MCP_TOOL:?}));\n\
                 if (t) {{ text(JSON.stringify(await tools[t.name]({{}}))); }}\n\
                 else {{ text(\"no {MCP_TOOL} among \" + JSON.stringify(ALL_TOOLS.map(t => t.name))); }}"
            ),
            1 => format!(
                "text(JSON.stringify(await tools.exec_command({{cmd: {}}})));",
                Value::String(SHELL_COMMAND.into())
            ),
            _ => return final_text(raw),
        };
        return Step::Call {
            name: "exec".into(),
            input: Value::String(source),
            freeform: true,
        };
    }
    let Some(mcp) = mcp_tool_name(raw) else {
        return Step::Text(format!("{FINAL_PREFIX} no {MCP_TOOL} tool was offered"));
    };
    match results {
        0 => Step::Call {
            name: mcp,
            input: json!({}),
            freeform: false,
        },
        1 => Step::Call {
            name: shell_tool(shape, request),
            input: json!({ "command": SHELL_COMMAND, "description": "Push the branch" }),
            freeform: false,
        },
        _ => final_text(raw),
    }
}

/// The final answer: which of [`MARKERS`] the conversation holds.
fn final_text(raw: &str) -> Step {
    let seen: Vec<&str> = MARKERS.into_iter().filter(|m| raw.contains(m)).collect();
    Step::Text(format!("{FINAL_PREFIX} saw {}", seen.join(" ")))
}

/// The agent's name for the MCP tool: the longest identifier ending in
/// [`MCP_TOOL`] anywhere in the request (tool lists, or Codex's `exec`
/// description).
fn mcp_tool_name(raw: &str) -> Option<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    raw.match_indices(MCP_TOOL)
        .filter(|(at, _)| !raw[at + MCP_TOOL.len()..].starts_with(ident))
        .map(|(at, _)| {
            let start = raw[..at]
                .char_indices()
                .rev()
                .take_while(|(_, c)| ident(*c))
                .last()
                .map_or(at, |(i, _)| i);
            &raw[start..at + MCP_TOOL.len()]
        })
        .filter(|name| name.len() > MCP_TOOL.len())
        .max_by_key(|name| name.len())
        .map(str::to_owned)
}

/// The shell tool among the offered ones: `Bash` (Claude Code), `bash`
/// (OpenCode), else `shell`.
fn shell_tool(shape: Shape, request: &Value) -> String {
    let names: Vec<&str> = request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            t["name"]
                .as_str()
                .or_else(|| t["function"]["name"].as_str())
        })
        .collect();
    let wanted: &[&str] = match shape {
        Shape::Messages => &["Bash", "bash"],
        Shape::Responses | Shape::Chat => &["bash", "shell", "Bash"],
    };
    wanted
        .iter()
        .find(|w| names.contains(w))
        .unwrap_or(&wanted[0])
        .to_string()
}

/// How many tool results the conversation holds.
fn tool_results(shape: Shape, request: &Value) -> usize {
    let items = |key: &str| request[key].as_array().cloned().unwrap_or_default();
    match shape {
        Shape::Messages => items("messages")
            .iter()
            .filter_map(|m| m["content"].as_array())
            .flatten()
            .filter(|b| b["type"] == "tool_result")
            .count(),
        Shape::Responses => items("input")
            .iter()
            .filter(|i| {
                matches!(
                    i["type"].as_str(),
                    Some("function_call_output" | "custom_tool_call_output")
                )
            })
            .count(),
        Shape::Chat => items("messages")
            .iter()
            .filter(|m| m["role"] == "tool")
            .count(),
    }
}

fn render(shape: Shape, stream: bool, step: &Step) -> Answer {
    match (shape, stream) {
        (Shape::Messages, true) => sse(&messages_events(step)),
        (Shape::Messages, false) => json_answer(&messages_object(step)),
        (Shape::Responses, true) => sse(&responses_events(step)),
        (Shape::Responses, false) => json_answer(&responses_object(step)),
        (Shape::Chat, true) => {
            let mut a = sse(&chat_events(step));
            a.body.push_str(CHAT_DONE);
            a
        }
        (Shape::Chat, false) => json_answer(&chat_object(step)),
    }
}

fn json_answer(v: &Value) -> Answer {
    Answer {
        content_type: "application/json",
        body: v.to_string(),
    }
}

/// Events as `event: TYPE` (when the data has a `type`) and `data:` lines.
fn sse(events: &[Value]) -> Answer {
    let mut body = String::new();
    for e in events {
        if let Some(t) = e["type"].as_str() {
            body.push_str(&format!("event: {t}\n"));
        }
        body.push_str(&format!("data: {e}\n\n"));
    }
    Answer {
        content_type: "text/event-stream",
        body,
    }
}

const USAGE_IN: u64 = 10;
const USAGE_OUT: u64 = 5;

fn messages_block(step: &Step) -> Value {
    match step {
        Step::Call { name, input, .. } => {
            json!({ "type": "tool_use", "id": "toolu_e2e", "name": name, "input": input })
        }
        Step::Text(text) => json!({ "type": "text", "text": text }),
    }
}

fn stop_reason(step: &Step) -> &'static str {
    match step {
        Step::Call { .. } => "tool_use",
        Step::Text(_) => "end_turn",
    }
}

fn messages_object(step: &Step) -> Value {
    json!({
        "id": "msg_e2e", "type": "message", "role": "assistant", "model": "e2e",
        "content": [messages_block(step)],
        "stop_reason": stop_reason(step), "stop_sequence": null,
        "usage": { "input_tokens": USAGE_IN, "output_tokens": USAGE_OUT }
    })
}

fn messages_events(step: &Step) -> Vec<Value> {
    let (start, delta) = match step {
        Step::Call { name, input, .. } => (
            json!({ "type": "tool_use", "id": "toolu_e2e", "name": name, "input": {} }),
            json!({ "type": "input_json_delta", "partial_json": input.to_string() }),
        ),
        Step::Text(text) => (
            json!({ "type": "text", "text": "" }),
            json!({ "type": "text_delta", "text": text }),
        ),
    };
    let mut message = messages_object(step);
    message["content"] = json!([]);
    message["stop_reason"] = Value::Null;
    vec![
        json!({ "type": "message_start", "message": message }),
        json!({ "type": "content_block_start", "index": 0, "content_block": start }),
        json!({ "type": "content_block_delta", "index": 0, "delta": delta }),
        json!({ "type": "content_block_stop", "index": 0 }),
        json!({ "type": "message_delta",
                "delta": { "stop_reason": stop_reason(step), "stop_sequence": null },
                "usage": { "output_tokens": USAGE_OUT } }),
        json!({ "type": "message_stop" }),
    ]
}

fn responses_item(step: &Step) -> Value {
    match step {
        Step::Call {
            name,
            input,
            freeform: true,
        } => json!({
            "type": "custom_tool_call", "id": "ctc_e2e", "call_id": "call_e2e",
            "name": name, "input": input.as_str().unwrap_or_default(), "status": "completed"
        }),
        Step::Call { name, input, .. } => json!({
            "type": "function_call", "id": "fc_e2e", "call_id": "call_e2e",
            "name": name, "arguments": input.to_string(), "status": "completed"
        }),
        Step::Text(text) => json!({
            "type": "message", "id": "msg_e2e", "role": "assistant", "status": "completed",
            "content": [{ "type": "output_text", "text": text, "annotations": [] }]
        }),
    }
}

fn responses_object(step: &Step) -> Value {
    json!({
        "id": "resp_e2e", "object": "response", "created_at": 0, "model": "e2e",
        "status": "completed", "output": [responses_item(step)],
        "usage": {
            "input_tokens": USAGE_IN, "output_tokens": USAGE_OUT,
            "total_tokens": USAGE_IN + USAGE_OUT,
            "input_tokens_details": { "cached_tokens": 0 },
            "output_tokens_details": { "reasoning_tokens": 0 }
        }
    })
}

fn responses_events(step: &Step) -> Vec<Value> {
    let done = responses_item(step);
    let mut added = done.clone();
    added["status"] = json!("in_progress");
    let mut created = responses_object(step);
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    let mut events = vec![
        json!({ "type": "response.created", "response": created.clone() }),
        json!({ "type": "response.in_progress", "response": created }),
    ];
    match step {
        Step::Text(text) => {
            added["content"] = json!([]);
            events.push(
                json!({ "type": "response.output_item.added", "output_index": 0, "item": added }),
            );
            let part = json!({ "type": "output_text", "text": "", "annotations": [] });
            events.push(
                json!({ "type": "response.content_part.added", "item_id": "msg_e2e",
                "output_index": 0, "content_index": 0, "part": part }),
            );
            events.push(
                json!({ "type": "response.output_text.delta", "item_id": "msg_e2e",
                "output_index": 0, "content_index": 0, "delta": text }),
            );
            events.push(
                json!({ "type": "response.output_text.done", "item_id": "msg_e2e",
                "output_index": 0, "content_index": 0, "text": text }),
            );
            events.push(
                json!({ "type": "response.content_part.done", "item_id": "msg_e2e",
                "output_index": 0, "content_index": 0, "part": done["content"][0] }),
            );
        }
        Step::Call {
            freeform: false, ..
        } => {
            added["arguments"] = json!("");
            events.push(
                json!({ "type": "response.output_item.added", "output_index": 0, "item": added }),
            );
            events.push(json!({ "type": "response.function_call_arguments.delta",
                "item_id": "fc_e2e", "output_index": 0, "delta": done["arguments"] }));
            events.push(json!({ "type": "response.function_call_arguments.done",
                "item_id": "fc_e2e", "output_index": 0, "arguments": done["arguments"] }));
        }
        Step::Call { freeform: true, .. } => {
            added["input"] = json!("");
            events.push(
                json!({ "type": "response.output_item.added", "output_index": 0, "item": added }),
            );
            events.push(json!({ "type": "response.custom_tool_call_input.delta",
                "item_id": "ctc_e2e", "output_index": 0, "delta": done["input"] }));
            events.push(json!({ "type": "response.custom_tool_call_input.done",
                "item_id": "ctc_e2e", "output_index": 0, "input": done["input"] }));
        }
    }
    events.push(json!({ "type": "response.output_item.done", "output_index": 0, "item": done }));
    events.push(json!({ "type": "response.completed", "response": responses_object(step) }));
    events
}

fn chat_message(step: &Step) -> (Value, &'static str) {
    match step {
        Step::Call { name, input, .. } => (
            json!({ "role": "assistant", "content": null, "tool_calls": [{
                "index": 0, "id": "call_e2e", "type": "function",
                "function": { "name": name, "arguments": input.to_string() }
            }]}),
            "tool_calls",
        ),
        Step::Text(text) => (json!({ "role": "assistant", "content": text }), "stop"),
    }
}

fn chat_usage() -> Value {
    json!({ "prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT,
            "total_tokens": USAGE_IN + USAGE_OUT })
}

fn chat_object(step: &Step) -> Value {
    let (mut message, finish) = chat_message(step);
    if let Some(calls) = message["tool_calls"].as_array_mut() {
        calls.iter_mut().for_each(|c| {
            c.as_object_mut().map(|o| o.remove("index"));
        });
    }
    json!({
        "id": "chatcmpl-e2e", "object": "chat.completion", "created": 0, "model": "e2e",
        "choices": [{ "index": 0, "message": message, "finish_reason": finish }],
        "usage": chat_usage()
    })
}

fn chat_events(step: &Step) -> Vec<Value> {
    let (delta, finish) = chat_message(step);
    let chunk = |choice: Value, usage: Value| {
        json!({ "id": "chatcmpl-e2e", "object": "chat.completion.chunk", "created": 0,
                "model": "e2e", "choices": [choice], "usage": usage })
    };
    vec![
        chunk(
            json!({ "index": 0, "delta": delta, "finish_reason": null }),
            Value::Null,
        ),
        chunk(
            json!({ "index": 0, "delta": {}, "finish_reason": finish }),
            chat_usage(),
        ),
    ]
}

/// The closing line of a Chat Completions stream.
const CHAT_DONE: &str = "data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn step_of(path: &str, body: &Value) -> Answer {
        answer(path, body.to_string().as_bytes()).unwrap_or_else(|| panic!("{path} answered"))
    }

    #[test]
    fn the_mcp_tool_is_found_under_each_agents_name() {
        assert_eq!(
            mcp_tool_name(r#"{"name":"mcp__nexus__tool_hello"}"#).as_deref(),
            Some("mcp__nexus__tool_hello")
        );
        assert_eq!(
            mcp_tool_name("await tools.nexus_tool_hello(x); tool_hello").as_deref(),
            Some("nexus_tool_hello")
        );
        assert_eq!(mcp_tool_name("tool_hello tool_hellos"), None);
    }

    #[test]
    fn messages_call_the_mcp_tool_then_the_shell_then_answer() {
        let tools = json!([{ "name": "Bash" }, { "name": "mcp__nexus__tool_hello" }]);
        let first = json!({ "stream": true, "tools": tools, "messages": [
            { "role": "user", "content": "go" }] });
        let a = step_of("/v1/messages", &first);
        assert!(a.body.starts_with("event: message_start\n"), "{}", a.body);
        assert!(a.body.contains(r#""name":"mcp__nexus__tool_hello""#));
        let result = json!({ "type": "tool_result", "tool_use_id": "toolu_e2e",
            "content": "laptop-says-hello" });
        let second = json!({ "tools": tools, "messages": [
            { "role": "user", "content": [result] }] });
        let a = step_of("/anthropic/v1/messages", &second);
        assert_eq!(a.content_type, "application/json");
        let v: Value = serde_json::from_str(&a.body).unwrap_or_default();
        assert_eq!(v["content"][0]["name"], "Bash");
        assert_eq!(v["content"][0]["input"]["command"], SHELL_COMMAND);
        let third = json!({ "tools": tools, "messages": [
            { "role": "user", "content": [result, result] }] });
        let v: Value =
            serde_json::from_str(&step_of("/v1/messages", &third).body).unwrap_or_default();
        assert_eq!(
            v["content"][0]["text"],
            format!("{FINAL_PREFIX} saw laptop-says-hello")
        );
    }

    #[test]
    fn codex_gets_its_calls_as_exec_source() {
        let body = json!({ "stream": true, "input": [{ "type": "additional_tools",
            "tools": [{ "type": "custom", "name": "exec",
            "description": "await tools.exec_command(...) and tools.mcp__nexus__tool_hello" }] }] });
        let a = step_of("/openai/v1/responses", &body);
        assert!(a.body.contains("custom_tool_call"), "{}", a.body);
        assert!(a.body.contains("ALL_TOOLS.find"), "{}", a.body);
        assert!(a.body.ends_with("\n\n") && a.body.contains("event: response.completed\n"));
    }

    #[test]
    fn chat_and_responses_without_the_tool_answer_at_once() {
        for path in ["/v1/chat/completions", "/v1/responses"] {
            let a = step_of(path, &json!({ "messages": [] }));
            assert!(a.body.contains("no tool_hello tool"), "{}", a.body);
        }
        assert!(answer("/v1/models", b"{}").is_none());
    }
}
