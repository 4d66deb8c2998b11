//! An OpenAI Chat Completions client in front of an Anthropic Messages deployment (LiteLLM's
//! mapping; its docs and Anthropic's are the spec):
//!
//! - [`request`]: `/v1/chat/completions` body → `/v1/messages` body;
//! - [`response`]: a Messages response → a `chat.completion`;
//! - [`StreamTranslator`]: Messages events → `chat.completion.chunk`s as they arrive, then
//!   `data: [DONE]`;
//! - [`error`]: Anthropic's error body → OpenAI's.

use serde_json::{Map, Value, json};

use super::sse_events::{Event, SseEvents};
use super::{ConversionError, Target, Translated, bad_response, invalid, provider_error};
use crate::usage::Usage;

const PROVIDER: &str = "anthropic";

/// OpenAI parameters Anthropic has no counterpart for: refused, or dropped under
/// `drop_params`. (`n` is in the list only when above 1; `response_format` unless `text`.)
const UNSUPPORTED: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
    "n",
    "response_format",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "functions",
    "function_call",
];

/// OpenAI parameters that mean nothing to a provider and are left out silently (LiteLLM does
/// the same): OpenAI-side storage and service settings.
const IGNORED: &[&str] = &["store", "metadata", "service_tier", "stream_options", "parallel_tool_calls"];

fn object(value: &Value, what: &str) -> Result<Map<String, Value>, ConversionError> {
    value.as_object().cloned().ok_or_else(|| invalid(format!("{what} must be an object")))
}

/// The request an OpenAI client sent, as Anthropic Messages wants it.
pub fn request(body: &[u8], target: &Target<'_>) -> Result<Translated, ConversionError> {
    let parsed: Value = serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    let req = object(&parsed, "the request body")?;
    let mut out = Map::new();
    out.insert("model".into(), Value::from(target.model));

    let mut unsupported = Vec::new();
    for (name, value) in &req {
        let is_unsupported = match name.as_str() {
            "n" => value.as_u64().is_some_and(|n| n > 1),
            "response_format" => value.get("type").and_then(Value::as_str) != Some("text"),
            other => UNSUPPORTED.contains(&other),
        };
        let known = matches!(
            name.as_str(),
            "model"
                | "messages"
                | "max_tokens"
                | "max_completion_tokens"
                | "stop"
                | "temperature"
                | "top_p"
                | "stream"
                | "tools"
                | "tool_choice"
                | "user"
                | "n"
                | "response_format"
        ) || IGNORED.contains(&name.as_str());
        if is_unsupported || !known {
            unsupported.push(name.clone());
        }
    }
    if !unsupported.is_empty() && !target.drop_params {
        unsupported.sort();
        return Err(ConversionError::Unsupported { provider: PROVIDER, params: unsupported });
    }

    let messages = req.get("messages").and_then(Value::as_array).ok_or_else(|| invalid("messages must be an array"))?;
    let (system, turns) = messages_to_anthropic(messages)?;
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), Value::Array(turns));

    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .filter(|v| !v.is_null())
        .map(|v| v.as_u64().ok_or_else(|| invalid("max_tokens must be a non-negative integer")))
        .transpose()?
        .unwrap_or(target.default_max_tokens);
    out.insert("max_tokens".into(), Value::from(max_tokens));

    match req.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            out.insert("stop_sequences".into(), Value::Array(items.clone()));
        }
        Some(_) => return Err(invalid("stop must be a string or an array of strings")),
    }
    for name in ["temperature", "top_p", "stream"] {
        if let Some(v) = req.get(name).filter(|v| !v.is_null()) {
            out.insert(name.into(), v.clone());
        }
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = req.get("tools").filter(|v| !v.is_null()) {
        out.insert("tools".into(), tools_to_anthropic(tools)?);
    }
    let no_parallel = req.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false);
    if let Some(choice) = tool_choice_to_anthropic(req.get("tool_choice"), no_parallel)? {
        out.insert("tool_choice".into(), choice);
    }
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| invalid(e.to_string()))?;
    Ok(Translated { body, dropped: unsupported })
}

/// System and developer messages become Anthropic's `system`; tool results become
/// `tool_result` blocks in a user turn; consecutive turns of one role are merged (Anthropic
/// wants them alternating).
fn messages_to_anthropic(messages: &[Value]) -> Result<(Option<Value>, Vec<Value>), ConversionError> {
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("messages[{i}].role is missing")))?;
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(content_blocks(message.get("content"), i)?);
                continue;
            }
            "user" => ("user", content_blocks(message.get("content"), i)?),
            "assistant" => ("assistant", assistant_blocks(message, i)?),
            "tool" => ("user", vec![tool_result(message, i)?]),
            other => return Err(invalid(format!("messages[{i}].role {other:?} is not supported"))),
        };
        match turns.last_mut() {
            Some((last, existing)) if last == role => existing.extend(blocks),
            _ => turns.push((role.to_owned(), blocks)),
        }
    }
    let turns = turns.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
    let system = match system.as_slice() {
        [] => None,
        // One text: a plain string, as most clients would write it.
        [only] if only.get("type").and_then(Value::as_str) == Some("text") => only.get("text").cloned(),
        _ => Some(Value::Array(system)),
    };
    Ok((system, turns))
}

/// A message's `content` (a string or an array of parts) as Anthropic content blocks.
fn content_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, ConversionError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({"type": "text", "text": text})]),
        Some(Value::Array(parts)) => parts.iter().map(|p| part_to_block(p, i)).collect(),
        Some(_) => Err(invalid(format!("messages[{i}].content must be a string or an array"))),
    }
}

fn part_to_block(part: &Value, i: usize) -> Result<Value, ConversionError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
            Ok(json!({"type": "text", "text": text}))
        }
        Some("image_url") => {
            let url = part
                .get("image_url")
                .and_then(|u| u.get("url").or(Some(u)))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("messages[{i}]: image_url.url is missing")))?;
            Ok(json!({"type": "image", "source": image_source(url, i)?}))
        }
        other => Err(invalid(format!("messages[{i}]: content part type {other:?} is not supported for Anthropic"))),
    }
}

/// `data:<media type>;base64,<data>` → a base64 source; an http(s) URL → a URL source.
fn image_source(url: &str, i: usize) -> Result<Value, ConversionError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| invalid(format!("messages[{i}]: malformed data URL")))?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| invalid(format!("messages[{i}]: only base64 data URLs are supported")))?;
        return Ok(json!({"type": "base64", "media_type": media_type, "data": data}));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "url", "url": url}));
    }
    Err(invalid(format!("messages[{i}]: an image must be an http(s) URL or a base64 data URL")))
}

/// An assistant turn: its text, then its tool calls as `tool_use` blocks.
fn assistant_blocks(message: &Value, i: usize) -> Result<Vec<Value>, ConversionError> {
    let mut blocks = content_blocks(message.get("content"), i)?;
    blocks.retain(|b| b.get("text").and_then(Value::as_str) != Some(""));
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let function =
            call.get("function").ok_or_else(|| invalid(format!("messages[{i}]: tool call without function")))?;
        let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or("{}");
        let input: Value = if arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(arguments)
                .map_err(|e| invalid(format!("messages[{i}]: tool call arguments are not JSON: {e}")))?
        };
        blocks.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": function.get("name").cloned().unwrap_or(Value::Null),
            "input": input,
        }));
    }
    Ok(blocks)
}

fn tool_result(message: &Value, i: usize) -> Result<Value, ConversionError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("messages[{i}].tool_call_id is missing")))?;
    let content = match message.get("content") {
        Some(Value::String(text)) => Value::from(text.as_str()),
        other => Value::Array(content_blocks(other, i)?),
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

fn tools_to_anthropic(tools: &Value) -> Result<Value, ConversionError> {
    let tools = tools.as_array().ok_or_else(|| invalid("tools must be an array"))?;
    let converted = tools
        .iter()
        .map(|tool| {
            let function = tool.get("function").ok_or_else(|| invalid("tools[].function is missing"))?;
            let name = function.get("name").and_then(Value::as_str).ok_or_else(|| invalid("tools[].function.name is missing"))?;
            let mut out = json!({
                "name": name,
                "input_schema": function.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            });
            if let Some(description) = function.get("description").filter(|d| d.is_string()) {
                out["description"] = description.clone();
            }
            Ok(out)
        })
        .collect::<Result<Vec<_>, ConversionError>>()?;
    Ok(Value::Array(converted))
}

fn tool_choice_to_anthropic(choice: Option<&Value>, no_parallel: bool) -> Result<Option<Value>, ConversionError> {
    let mut out = match choice {
        None | Some(Value::Null) => {
            if !no_parallel {
                return Ok(None);
            }
            json!({"type": "auto"})
        }
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            other => return Err(invalid(format!("tool_choice {other:?} is not auto, none or required"))),
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.function.name is missing"))?;
            json!({"type": "tool", "name": name})
        }
        Some(_) => return Err(invalid("tool_choice must be a string or an object")),
    };
    if no_parallel && out["type"] != "none" {
        out["disable_parallel_tool_use"] = Value::Bool(true);
    }
    Ok(Some(out))
}

/// Anthropic's `stop_reason` as OpenAI's `finish_reason`.
fn finish_reason(stop_reason: Option<&str>) -> Value {
    match stop_reason {
        None => Value::Null,
        Some("max_tokens" | "model_context_window_exceeded") => "length".into(),
        Some("tool_use") => "tool_calls".into(),
        Some("refusal") => "content_filter".into(),
        // end_turn, stop_sequence, pause_turn and anything new.
        Some(_) => "stop".into(),
    }
}

/// Anthropic's usage as OpenAI's: prompt tokens include the cached reads and the cache writes
/// (Anthropic counts them apart); `cached_tokens` are the reads.
fn usage_to_openai(usage: &Usage) -> Value {
    let prompt = usage.prompt_tokens;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": prompt.saturating_add(usage.completion_tokens),
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_prompt_tokens,
    })
}

fn anthropic_usage(usage: Option<&Value>) -> Usage {
    let n = |name: &str| usage.and_then(|u| u.get(name)).and_then(Value::as_u64).unwrap_or(0);
    let (input, read, write) = (n("input_tokens"), n("cache_read_input_tokens"), n("cache_creation_input_tokens"));
    Usage {
        prompt_tokens: input.saturating_add(read).saturating_add(write),
        completion_tokens: n("output_tokens"),
        cached_prompt_tokens: read,
        cache_write_tokens: write,
        ..Usage::default()
    }
}

/// A Messages response as a `chat.completion` for the client, who asked for `client_model`.
pub fn response(body: &[u8], client_model: &str, created_unix_secs: u64) -> Result<Vec<u8>, ConversionError> {
    let parsed: Value = serde_json::from_slice(body).map_err(|e| bad_response(format!("not JSON: {e}")))?;
    let content = parsed.get("content").and_then(Value::as_array).ok_or_else(|| bad_response("no content array"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => tool_calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            // Thinking and other blocks have no place in a chat completion's message.
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::from(text) }});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let usage = anthropic_usage(parsed.get("usage"));
    let out = json!({
        "id": parsed.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": created_unix_secs,
        "model": client_model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(parsed.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage_to_openai(&usage),
    });
    serde_json::to_vec(&out).map_err(|e| bad_response(e.to_string()))
}

/// Anthropic's error body (`{"type":"error","error":{"type","message"}}`) in OpenAI's shape;
/// the status stays the provider's. Anything else becomes a message that says so.
pub fn error(body: &[u8]) -> Vec<u8> {
    let (message, kind) = provider_error(body);
    let kind = kind.as_deref().unwrap_or("api_error");
    json!({"error": {"message": message, "type": kind, "param": null, "code": kind}}).to_string().into_bytes()
}

/// Turns Anthropic's stream into OpenAI chunks as the events arrive: nothing is held back
/// but an incomplete event.
#[derive(Debug)]
pub struct StreamTranslator {
    events: SseEvents,
    client_model: String,
    created: u64,
    /// The client asked for `stream_options.include_usage`: a last chunk carries the usage.
    include_usage: bool,
    id: String,
    usage: Usage,
    /// Anthropic block index → OpenAI tool call index, for tool-use blocks.
    tool_indexes: Vec<(u64, u64)>,
    /// `[DONE]` was sent: nothing more goes out.
    done: bool,
    /// `message_stop` arrived.
    stopped: bool,
}

impl StreamTranslator {
    pub fn new(client_model: &str, created_unix_secs: u64, include_usage: bool) -> Self {
        Self {
            events: SseEvents::default(),
            client_model: client_model.to_owned(),
            created: created_unix_secs,
            include_usage,
            id: String::new(),
            usage: Usage::default(),
            tool_indexes: Vec::new(),
            done: false,
            stopped: false,
        }
    }

    /// The bytes to send the client for this chunk of Anthropic's stream (`end_of_stream`: the
    /// last one). A stream that ends without `message_stop` still ends with `data: [DONE]`.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for event in self.events.feed(chunk, end_of_stream) {
            self.translate(&event, &mut out);
        }
        if end_of_stream && !self.done {
            self.done = true;
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        out
    }

    /// The provider's stream ended properly (`message_stop`), not cut or failed.
    pub fn completed(&self) -> bool {
        self.stopped
    }

    /// The usage Anthropic reported so far (input at `message_start`, output at
    /// `message_delta`): what the request is charged.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    fn chunk(&self, delta: Value, finish: Value, out: &mut Vec<u8>) {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.client_model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        push_data(out, &chunk);
    }

    fn translate(&mut self, event: &Event, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        let kind =
            if event.event.is_empty() { data.get("type").and_then(Value::as_str).unwrap_or("") } else { &event.event };
        match kind {
            "message_start" => {
                let message = data.get("message");
                self.id = message.and_then(|m| m.get("id")).and_then(Value::as_str).unwrap_or_default().to_owned();
                let usage = anthropic_usage(message.and_then(|m| m.get("usage")));
                self.usage.prompt_tokens = usage.prompt_tokens;
                self.usage.cached_prompt_tokens = usage.cached_prompt_tokens;
                self.usage.cache_write_tokens = usage.cache_write_tokens;
                self.usage.completion_tokens = usage.completion_tokens;
                self.chunk(json!({"role": "assistant", "content": ""}), Value::Null, out);
            }
            "content_block_start" => {
                let block = data.get("content_block");
                if block.and_then(|b| b.get("type")).and_then(Value::as_str) == Some("tool_use") {
                    let block_index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let tool_index = self.tool_indexes.len() as u64;
                    self.tool_indexes.push((block_index, tool_index));
                    let call = json!({
                        "index": tool_index,
                        "id": block.and_then(|b| b.get("id")).cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": {"name": block.and_then(|b| b.get("name")).cloned().unwrap_or(Value::Null), "arguments": ""},
                    });
                    self.chunk(json!({"tool_calls": [call]}), Value::Null, out);
                }
            }
            "content_block_delta" => {
                let delta = data.get("delta");
                match delta.and_then(|d| d.get("type")).and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta.and_then(|d| d.get("text")).cloned().unwrap_or_default();
                        self.chunk(json!({"content": text}), Value::Null, out);
                    }
                    Some("input_json_delta") => {
                        let block_index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let tool_index =
                            self.tool_indexes.iter().find(|(b, _)| *b == block_index).map_or(0, |(_, t)| *t);
                        let partial = delta.and_then(|d| d.get("partial_json")).cloned().unwrap_or_default();
                        self.chunk(
                            json!({"tool_calls": [{"index": tool_index, "function": {"arguments": partial}}]}),
                            Value::Null,
                            out,
                        );
                    }
                    // Thinking and signature deltas have no place in a chat completion chunk.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(output) = data.get("usage").and_then(|u| u.get("output_tokens")).and_then(Value::as_u64) {
                    self.usage.completion_tokens = output;
                }
                let stop = data.get("delta").and_then(|d| d.get("stop_reason")).and_then(Value::as_str);
                self.chunk(json!({}), finish_reason(stop), out);
            }
            "message_stop" => {
                if self.include_usage {
                    let chunk = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.client_model,
                        "choices": [],
                        "usage": usage_to_openai(&self.usage),
                    });
                    push_data(out, &chunk);
                }
                self.done = true;
                self.stopped = true;
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            "error" => {
                // The stream failed at the provider: the client gets the error in its own
                // format, then the end of the stream.
                let bytes = error(event.data.as_bytes());
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&bytes);
                out.extend_from_slice(b"\n\n");
                self.done = true;
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
    }
}

fn push_data(out: &mut Vec<u8>, value: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(value.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
#[path = "openai_anthropic_tests.rs"]
mod tests;
