//! An Anthropic Messages client (the Anthropic SDK, Claude Code) in front of an OpenAI Chat
//! Completions deployment (OpenAI, vLLM, any OpenAI-compatible server):
//!
//! - [`request`]: `/v1/messages` body → `/v1/chat/completions` body (streams ask for usage);
//! - [`response`]: a `chat.completion` → a Messages response;
//! - [`StreamTranslator`]: OpenAI chunks → Messages events as they arrive;
//! - [`error`]: OpenAI's error body → Anthropic's.

use serde_json::{Map, Value, json};

use super::sse_events::{Event, SseEvents};
use super::{ConversionError, Target, Translated, bad_response, invalid, openai_side, provider_error};
use crate::usage::Usage;

const PROVIDER: &str = "openai";

/// Messages parameters an OpenAI deployment has no counterpart for.
const UNSUPPORTED: &[&str] = &["top_k", "thinking", "container", "mcp_servers", "service_tier"];

/// The request an Anthropic client sent, as OpenAI Chat Completions wants it.
pub fn request(body: &[u8], target: &Target<'_>) -> Result<Translated, ConversionError> {
    let req = super::request_object(body)?;
    let known = [
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "top_p",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
        // The gateway's own (`request::GATEWAY_PARAMS`), read by the filter, never forwarded.
        "num_retries",
        "timeout",
        "cache",
    ];
    let mut unsupported: Vec<String> =
        req.keys().filter(|k| UNSUPPORTED.contains(&k.as_str()) || !known.contains(&k.as_str())).cloned().collect();
    if !unsupported.is_empty() && !target.drop_params {
        unsupported.sort();
        return Err(ConversionError::Unsupported { provider: PROVIDER, params: unsupported });
    }

    let mut out = Map::new();
    out.insert("model".into(), Value::from(target.model));
    let mut messages = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(system) => {
            let text = text_of(system).ok_or_else(|| invalid("system must be a string or text blocks"))?;
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    for (i, turn) in super::messages(&req)?.iter().enumerate() {
        let role = turn
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("messages[{i}].role is missing")))?;
        match role {
            "user" => user_turn(turn.get("content"), i, &mut messages)?,
            "assistant" => messages.push(assistant_turn(turn.get("content"), i)?),
            other => return Err(invalid(format!("messages[{i}].role {other:?} is not user or assistant"))),
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    let max_tokens = req.get("max_tokens").and_then(Value::as_u64).unwrap_or(target.default_max_tokens);
    out.insert("max_tokens".into(), Value::from(max_tokens));
    if let Some(stop) = req.get("stop_sequences").filter(|v| !v.is_null()) {
        out.insert("stop".into(), stop.clone());
    }
    for name in ["temperature", "top_p"] {
        if let Some(v) = req.get(name).filter(|v| !v.is_null()) {
            out.insert(name.into(), v.clone());
        }
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
        // The gateway meters from the usage chunk; Anthropic clients always get usage.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(user) = req.get("metadata").and_then(|m| m.get("user_id")).and_then(Value::as_str) {
        out.insert("user".into(), Value::from(user));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let tools = tools
            .iter()
            .map(|t| {
                if t.get("type").and_then(Value::as_str).is_some_and(|k| k != "custom") {
                    return Err(invalid("server tools (web search, code execution…) are not supported on this model"));
                }
                let name = t.get("name").and_then(Value::as_str).ok_or_else(|| invalid("tools[].name is missing"))?;
                let mut function = json!({"name": name, "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))});
                if let Some(d) = t.get("description").filter(|d| d.is_string()) {
                    function["description"] = d.clone();
                }
                Ok(json!({"type": "function", "function": function}))
            })
            .collect::<Result<Vec<_>, ConversionError>>()?;
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = req.get("tool_choice").filter(|v| !v.is_null()) {
        let kind = choice.get("type").and_then(Value::as_str).unwrap_or("auto");
        let mapped = match kind {
            "auto" => json!("auto"),
            "any" => json!("required"),
            "none" => json!("none"),
            "tool" => {
                let name =
                    choice.get("name").and_then(Value::as_str).ok_or_else(|| invalid("tool_choice.name is missing"))?;
                json!({"type": "function", "function": {"name": name}})
            }
            other => return Err(invalid(format!("tool_choice type {other:?} is not auto, any, tool or none"))),
        };
        out.insert("tool_choice".into(), mapped);
        if choice.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            out.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    super::translated(out, unsupported)
}

/// The text of a string or of an array of text blocks (others are refused).
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| {
                (b.get("type").and_then(Value::as_str) == Some("text"))
                    .then(|| b.get("text").and_then(Value::as_str))
                    .flatten()
            })
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join("\n")),
        _ => None,
    }
}

/// A user turn: its tool results become `tool` messages (first: they answer the assistant's
/// calls), the rest one user message.
fn user_turn(content: Option<&Value>, i: usize, out: &mut Vec<Value>) -> Result<(), ConversionError> {
    let blocks = match content {
        Some(Value::String(text)) => {
            out.push(json!({"role": "user", "content": text}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(invalid(format!("messages[{i}].content must be a string or an array"))),
    };
    let mut parts = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text", "text": block.get("text").cloned().unwrap_or_default()})),
            Some("image") => {
                parts.push(json!({"type": "image_url", "image_url": {"url": image_url(block.get("source"), i)?}}))
            }
            Some("tool_result") => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("messages[{i}]: tool_result without tool_use_id")))?;
                let text = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(c) => text_of(c).ok_or_else(|| {
                        invalid(format!("messages[{i}]: only text tool results are supported on this model"))
                    })?,
                };
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            other => {
                return Err(invalid(format!("messages[{i}]: content block {other:?} is not supported on this model")));
            }
        }
    }
    if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn image_url(source: Option<&Value>, i: usize) -> Result<String, ConversionError> {
    let source = source.ok_or_else(|| invalid(format!("messages[{i}]: image without source")))?;
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str).unwrap_or("image/png");
            let data = source.get("data").and_then(Value::as_str).unwrap_or_default();
            Ok(format!("data:{media};base64,{data}"))
        }
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| invalid(format!("messages[{i}]: image url missing"))),
        _ => Err(invalid(format!("messages[{i}]: image source must be base64 or url"))),
    }
}

fn assistant_turn(content: Option<&Value>, i: usize) -> Result<Value, ConversionError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    match content {
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(blocks)) => {
            for block in blocks {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
                    Some("tool_use") => calls.push(openai_side::tool_call(
                        block.get("id").cloned().unwrap_or(Value::Null),
                        block.get("name").cloned().unwrap_or(Value::Null),
                        block.get("input"),
                    )),
                    // Earlier turns' thinking is the model's own scratch: not replayed.
                    Some("thinking" | "redacted_thinking") => {}
                    other => {
                        return Err(invalid(format!(
                            "messages[{i}]: content block {other:?} is not supported on this model"
                        )));
                    }
                }
            }
        }
        _ => return Err(invalid(format!("messages[{i}].content must be a string or an array"))),
    }
    Ok(openai_side::assistant_message(text, calls))
}

fn stop_reason(finish: Option<&str>) -> Value {
    match finish {
        None => Value::Null,
        Some("length") => "max_tokens".into(),
        Some("tool_calls" | "function_call") => "tool_use".into(),
        Some("content_filter") => "refusal".into(),
        Some(_) => "end_turn".into(),
    }
}

/// OpenAI's usage as Anthropic's: input tokens without the cached ones, which are reported apart.
fn openai_usage(usage: Option<&Value>) -> Usage {
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    Usage {
        prompt_tokens: n(usage.and_then(|u| u.get("prompt_tokens"))),
        cached_prompt_tokens: n(usage
            .and_then(|u| u.get("prompt_tokens_details"))
            .and_then(|d| d.get("cached_tokens"))),
        completion_tokens: n(usage.and_then(|u| u.get("completion_tokens"))),
        ..Usage::default()
    }
}

fn usage_to_anthropic(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(u.cached_prompt_tokens),
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cached_prompt_tokens,
        "cache_creation_input_tokens": 0,
    })
}

/// A `chat.completion` as a Messages response for the client, who asked for `client_model`.
pub fn response(body: &[u8], client_model: &str) -> Result<Vec<u8>, ConversionError> {
    let parsed = super::response_json(body)?;
    let choice = parsed.get("choices").and_then(|c| c.get(0)).ok_or_else(|| bad_response("no choices"))?;
    let message = choice.get("message").ok_or_else(|| bad_response("no message"))?;
    let mut content = Vec::new();
    if let Some(text) = message.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let arguments = call.get("function").and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or("{}");
        let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": call.get("function").and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null),
            "input": input,
        }));
    }
    let out = json!({
        "id": parsed.get("id").cloned().unwrap_or(Value::Null),
        "type": "message",
        "role": "assistant",
        "model": client_model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": usage_to_anthropic(&openai_usage(parsed.get("usage"))),
    });
    serde_json::to_vec(&out).map_err(|e| bad_response(e.to_string()))
}

/// OpenAI's error body in Anthropic's shape (`{"type":"error","error":{"type","message"}}`).
pub fn error(body: &[u8], status: u16) -> Vec<u8> {
    let (message, _) = provider_error(body);
    crate::error::anthropic_error_body(status, &message)
}

/// Turns an OpenAI stream into Anthropic's events as the chunks arrive. `message_delta` waits
/// for the usage chunk (the gateway asked for it), which OpenAI sends after the finish reason.
#[derive(Debug)]
pub struct StreamTranslator {
    events: SseEvents,
    client_model: String,
    started: bool,
    /// The open content block: its index and whether it is text (else a tool call's).
    open: Option<(u64, bool)>,
    next_index: u64,
    /// OpenAI tool call index → this stream's block index.
    tool_blocks: Vec<(u64, u64)>,
    stop: Option<Value>,
    usage: Option<Usage>,
    done: bool,
}

impl StreamTranslator {
    pub fn new(client_model: &str) -> Self {
        Self {
            events: SseEvents::default(),
            client_model: client_model.to_owned(),
            started: false,
            open: None,
            next_index: 0,
            tool_blocks: Vec::new(),
            stop: None,
            usage: None,
            done: false,
        }
    }

    /// The bytes to send the client for this chunk of the OpenAI stream.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for event in self.events.feed(chunk, end_of_stream) {
            self.translate(&event, &mut out);
        }
        if end_of_stream {
            self.finish(&mut out);
        }
        out
    }

    pub fn completed(&self) -> bool {
        self.done && self.stop.is_some()
    }

    pub fn usage(&self) -> Usage {
        self.usage.unwrap_or_default()
    }

    fn emit(out: &mut Vec<u8>, event: &str, data: &Value) {
        out.extend_from_slice(format!("event: {event}\ndata: {data}\n\n").as_bytes());
    }

    fn start(&mut self, id: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({"id": id, "type": "message", "role": "assistant", "model": self.client_model,
                             "content": [], "stop_reason": null, "stop_sequence": null,
                             "usage": {"input_tokens": 0, "output_tokens": 0}});
        Self::emit(out, "message_start", &json!({"type": "message_start", "message": message}));
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            Self::emit(out, "content_block_stop", &json!({"type": "content_block_stop", "index": index}));
        }
    }

    fn open_block(&mut self, block: Value, text: bool, out: &mut Vec<u8>) -> u64 {
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, text));
        Self::emit(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn translate(&mut self, event: &Event, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if event.data.trim() == "[DONE]" {
            self.finish(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else { return };
        if let Some(err) = chunk.get("error") {
            self.start(&Value::Null, out);
            let message = err.get("message").and_then(Value::as_str).unwrap_or("the provider's stream failed");
            Self::emit(out, "error", &json!({"type": "error", "error": {"type": "api_error", "message": message}}));
            self.done = true;
            return;
        }
        self.start(chunk.get("id").unwrap_or(&Value::Null), out);
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(openai_usage(Some(usage)));
        }
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else { return };
        let delta = choice.get("delta");
        if let Some(text) = delta.and_then(|d| d.get("content")).and_then(Value::as_str).filter(|t| !t.is_empty()) {
            let index = match self.open {
                Some((index, true)) => index,
                _ => self.open_block(json!({"type": "text", "text": ""}), true, out),
            };
            Self::emit(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            );
        }
        for call in delta.and_then(|d| d.get("tool_calls")).and_then(Value::as_array).into_iter().flatten() {
            let call_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let block = match self.tool_blocks.iter().find(|(c, _)| *c == call_index) {
                Some((_, b)) => *b,
                None => {
                    let function = call.get("function");
                    let block = json!({"type": "tool_use", "id": call.get("id").cloned().unwrap_or(Value::Null),
                                       "name": function.and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null), "input": {}});
                    let b = self.open_block(block, false, out);
                    self.tool_blocks.push((call_index, b));
                    b
                }
            };
            if let Some(args) =
                call.get("function").and_then(|f| f.get("arguments")).and_then(Value::as_str).filter(|a| !a.is_empty())
            {
                Self::emit(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": block, "delta": {"type": "input_json_delta", "partial_json": args}}),
                );
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.close_block(out);
            self.stop = Some(stop_reason(Some(finish)));
        }
    }

    /// The end of the OpenAI stream: the stop reason and usage, then `message_stop`.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.start(&Value::Null, out);
        self.close_block(out);
        let usage = usage_to_anthropic(&self.usage());
        let stop = self.stop.clone().unwrap_or(Value::Null);
        Self::emit(
            out,
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": usage}),
        );
        Self::emit(out, "message_stop", &json!({"type": "message_stop"}));
        self.done = true;
    }
}

#[cfg(test)]
#[path = "anthropic_openai_tests.rs"]
mod tests;
