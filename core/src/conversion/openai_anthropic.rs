//! An OpenAI Chat Completions client in front of an Anthropic Messages deployment (LiteLLM's
//! mapping; its docs and Anthropic's are the spec):
//!
//! - [`request`]: `/v1/chat/completions` body → `/v1/messages` body;
//! - [`response`]: a Messages response → a `chat.completion`;
//! - [`StreamTranslator`]: Messages events → `chat.completion.chunk`s as they arrive, then
//!   `data: [DONE]`;
//! - [`error`]: Anthropic's error body → OpenAI's.

use serde_json::{Map, Value, json};

use super::openai_side::{self, Chunks, JSON_TOOL, Part, Role, ToolCallIndexes, ToolChoice};
use super::sse_events::{Event, SseEvents};
use super::{ConversionError, Target, Translated, invalid, provider_error};
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

/// OpenAI parameters with an Anthropic counterpart (translated below); the rest of OpenAI's
/// are left out silently (`openai_side`), anything else is unsupported.
const KNOWN: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "temperature",
    "top_p",
    "stream",
    "tools",
    "tool_choice",
    "user",
    "n",
    "response_format",
];

/// Whether Anthropic can take a parameter the client sent.
fn takes(name: &str, value: &Value) -> bool {
    match name {
        "n" => value.as_u64().is_none_or(|n| n <= 1),
        "response_format" => {
            value.get("type").and_then(Value::as_str) == Some("text") || openai_side::response_schema(value).is_some()
        }
        other => !UNSUPPORTED.contains(&other) && KNOWN.contains(&other),
    }
}

/// The request an OpenAI client sent, as Anthropic Messages wants it.
pub fn request(body: &[u8], target: &Target<'_>) -> Result<Translated, ConversionError> {
    let req = super::request_object(body)?;
    let mut out = Map::new();
    out.insert("model".into(), Value::from(target.model));
    let unsupported = openai_side::unsupported_params(PROVIDER, &req, target, takes)?;

    let (system, turns) = messages_to_anthropic(super::messages(&req)?)?;
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

    if let Some(stop) = openai_side::stop_sequences(&req)? {
        out.insert("stop_sequences".into(), stop);
    }
    for name in ["temperature", "top_p", "stream"] {
        if let Some(v) = req.get(name).filter(|v| !v.is_null()) {
            out.insert(name.into(), v.clone());
        }
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    let client_tools = req.get("tools").filter(|v| !v.is_null());
    if let Some(tools) = client_tools {
        out.insert("tools".into(), tools_to_anthropic(tools)?);
    }
    let no_parallel = req.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false);
    if let Some(choice) = tool_choice_to_anthropic(req.get("tool_choice"), no_parallel)? {
        out.insert("tool_choice".into(), choice);
    }
    // A JSON schema answer (LiteLLM's way): a tool with that schema, forced unless the client
    // has tools of its own (then its tool choice stands, and the model may call either).
    let schema = openai_side::json_answer_schema(&req, &unsupported);
    if let Some(schema) = schema {
        let tool = json!({"name": JSON_TOOL, "input_schema": openai_side::object_schema(schema)});
        match out.get_mut("tools").and_then(Value::as_array_mut) {
            Some(tools) => tools.push(tool),
            None => {
                out.insert("tools".into(), Value::Array(vec![tool]));
            }
        }
        if client_tools.is_none() {
            out.insert("tool_choice".into(), json!({"type": "tool", "name": JSON_TOOL}));
        }
    }
    let mut translated = super::translated(out, unsupported)?;
    translated.json_mode = schema.is_some();
    Ok(translated)
}

/// System and developer messages become Anthropic's `system`; tool results become
/// `tool_result` blocks in a user turn; consecutive turns of one role are merged (Anthropic
/// wants them alternating).
fn messages_to_anthropic(messages: &[Value]) -> Result<(Option<Value>, Vec<Value>), ConversionError> {
    let (system, turns) = openai_side::conversation(messages, false, |role, message, i| {
        Ok(match role {
            Role::System => (None, content_blocks(message.get("content"), i)?),
            Role::User => (Some("user"), content_blocks(message.get("content"), i)?),
            Role::Assistant => (Some("assistant"), assistant_blocks(message, i)?),
            Role::Tool => (Some("user"), vec![tool_result(message, i)?]),
        })
    })?;
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
    openai_side::map_content(content, i, |part| match part {
        Part::Text(text) => Ok(json!({"type": "text", "text": text})),
        Part::ImageUrl(url) => Ok(json!({"type": "image", "source": image_source(url, i)?})),
        Part::Other(kind, _) => Err(openai_side::unsupported_part(kind, "Anthropic", i)),
    })
}

/// `data:<media type>;base64,<data>` → a base64 source; an http(s) URL → a URL source.
fn image_source(url: &str, i: usize) -> Result<Value, ConversionError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = openai_side::base64_data_url(rest, i)?;
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
    // Unlike Gemini and Bedrock, Anthropic takes a call without a name or with non-object
    // arguments as it is (and `tool_calls` that are not an array as none).
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let function = openai_side::function_of(call, i)?;
        blocks.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": function.get("name").cloned().unwrap_or(Value::Null),
            "input": openai_side::arguments_of(function, i)?,
        }));
    }
    Ok(blocks)
}

fn tool_result(message: &Value, i: usize) -> Result<Value, ConversionError> {
    let id = openai_side::tool_call_id(message, i)?;
    let content = match message.get("content") {
        Some(Value::String(text)) => Value::from(text.as_str()),
        other => Value::Array(content_blocks(other, i)?),
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

fn tools_to_anthropic(tools: &Value) -> Result<Value, ConversionError> {
    let converted = openai_side::function_tools(tools, None)?
        .into_iter()
        .map(|tool| {
            let schema = tool.parameters.cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let mut out = json!({"name": tool.name, "input_schema": schema});
            if let Some(description) = tool.description {
                out["description"] = description.clone();
            }
            out
        })
        .collect();
    Ok(Value::Array(converted))
}

fn tool_choice_to_anthropic(choice: Option<&Value>, no_parallel: bool) -> Result<Option<Value>, ConversionError> {
    let mut out = match choice.filter(|c| !c.is_null()).map(openai_side::tool_choice).transpose()? {
        None => {
            if !no_parallel {
                return Ok(None);
            }
            json!({"type": "auto"})
        }
        Some(ToolChoice::Auto) => json!({"type": "auto"}),
        Some(ToolChoice::NoCalls) => json!({"type": "none"}),
        Some(ToolChoice::Required) => json!({"type": "any"}),
        Some(ToolChoice::Function(name)) => json!({"type": "tool", "name": name}),
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

/// Anthropic's usage as a [`Usage`]: prompt tokens include the cached reads and the cache
/// writes (Anthropic counts them apart).
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

/// A Messages response as a `chat.completion` for the client, who asked for `client_model`. In
/// `json_mode` the call of [`JSON_TOOL`] is the answer: its input is the message's content.
pub fn response(
    body: &[u8],
    client_model: &str,
    created_unix_secs: u64,
    json_mode: bool,
) -> Result<Vec<u8>, ConversionError> {
    let parsed = super::response_json(body)?;
    let content =
        parsed.get("content").and_then(Value::as_array).ok_or_else(|| super::bad_response("no content array"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut answered_in_json = false;
    for block in content {
        let is_json_answer = json_mode && block.get("name").and_then(Value::as_str) == Some(JSON_TOOL);
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") if is_json_answer => {
                text.push_str(&block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string));
                answered_in_json = true;
            }
            Some("tool_use") => tool_calls.push(openai_side::tool_call(
                block.get("id").cloned().unwrap_or(Value::Null),
                block.get("name").cloned().unwrap_or(Value::Null),
                block.get("input"),
            )),
            // Thinking and other blocks have no place in a chat completion's message.
            _ => {}
        }
    }
    let stop_reason = parsed.get("stop_reason").and_then(Value::as_str);
    // Stopped to call the JSON tool alone: for the client, the answer is complete.
    let stop_reason = if answered_in_json && tool_calls.is_empty() && stop_reason == Some("tool_use") {
        Some("end_turn")
    } else {
        stop_reason
    };
    let message = openai_side::assistant_message(text, tool_calls);
    let finish = finish_reason(stop_reason);
    let usage = anthropic_usage(parsed.get("usage"));
    openai_side::completion(
        parsed.get("id").cloned().unwrap_or(Value::Null),
        created_unix_secs,
        client_model,
        vec![openai_side::choice(0, message, finish)],
        openai_side::usage_with_cache_fields(&usage),
    )
}

/// Anthropic's error body (`{"type":"error","error":{"type","message"}}`) in OpenAI's shape;
/// the status stays the provider's. Anything else becomes a message that says so.
pub fn error(body: &[u8]) -> Vec<u8> {
    let (message, kind) = provider_error(body);
    let kind = kind.as_deref().unwrap_or("api_error");
    openai_side::error_body(&message, kind, Some(kind))
}

/// Turns Anthropic's stream into OpenAI chunks as the events arrive: nothing is held back
/// but an incomplete event.
#[derive(Debug)]
pub struct StreamTranslator {
    events: SseEvents,
    /// The chunks out (their id: the message's, from `message_start`).
    chunks: Chunks,
    usage: Usage,
    /// Anthropic's tool-use block indexes, in OpenAI's tool call order.
    tool_indexes: ToolCallIndexes,
    /// `message_stop` arrived.
    stopped: bool,
    /// The request's JSON schema is answered by a call of [`JSON_TOOL`]: the block's index
    /// once it started (its input streams as content), and whether another tool was called.
    json_mode: bool,
    json_block: Option<u64>,
    other_tool_called: bool,
}

impl StreamTranslator {
    pub fn new(client_model: &str, created_unix_secs: u64, include_usage: bool, json_mode: bool) -> Self {
        Self {
            events: SseEvents::default(),
            chunks: Chunks::new(String::new(), client_model, created_unix_secs, include_usage),
            usage: Usage::default(),
            tool_indexes: ToolCallIndexes::default(),
            stopped: false,
            json_mode,
            json_block: None,
            other_tool_called: false,
        }
    }

    /// The bytes to send the client for this chunk of Anthropic's stream (`end_of_stream`: the
    /// last one). A stream that ends without `message_stop` still ends with `data: [DONE]`.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for event in self.events.feed(chunk, end_of_stream) {
            self.translate(&event, &mut out);
        }
        if end_of_stream {
            self.chunks.end(&mut out);
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

    fn translate(&mut self, event: &Event, out: &mut Vec<u8>) {
        if self.chunks.done {
            return;
        }
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        let kind =
            if event.event.is_empty() { data.get("type").and_then(Value::as_str).unwrap_or("") } else { &event.event };
        match kind {
            "message_start" => {
                let message = data.get("message");
                self.chunks.id =
                    message.and_then(|m| m.get("id")).and_then(Value::as_str).unwrap_or_default().to_owned();
                let usage = anthropic_usage(message.and_then(|m| m.get("usage")));
                self.usage.prompt_tokens = usage.prompt_tokens;
                self.usage.cached_prompt_tokens = usage.cached_prompt_tokens;
                self.usage.cache_write_tokens = usage.cache_write_tokens;
                self.usage.completion_tokens = usage.completion_tokens;
                self.chunks.role(0, out);
            }
            "content_block_start" => {
                let block = data.get("content_block");
                let block_index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let is_tool = block.and_then(|b| b.get("type")).and_then(Value::as_str) == Some("tool_use");
                let name = block.and_then(|b| b.get("name")).and_then(Value::as_str);
                if is_tool && self.json_mode && name == Some(JSON_TOOL) {
                    self.json_block = Some(block_index);
                } else if is_tool {
                    self.other_tool_called = true;
                    let tool_index = self.tool_indexes.open(block_index);
                    let field = |name: &str| block.and_then(|b| b.get(name)).cloned().unwrap_or(Value::Null);
                    let delta = openai_side::tool_call_opened(tool_index, field("id"), field("name"));
                    self.chunks.chunk(0, delta, Value::Null, out);
                }
            }
            "content_block_delta" => {
                let delta = data.get("delta");
                match delta.and_then(|d| d.get("type")).and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta.and_then(|d| d.get("text")).cloned().unwrap_or_default();
                        self.chunks.chunk(0, json!({"content": text}), Value::Null, out);
                    }
                    Some("input_json_delta") => {
                        let block_index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                        if self.json_block == Some(block_index) {
                            // The JSON answer, as the message's content.
                            let partial = delta.and_then(|d| d.get("partial_json")).cloned().unwrap_or_default();
                            self.chunks.chunk(0, json!({"content": partial}), Value::Null, out);
                            return;
                        }
                        // A fragment of a block that never started goes to the first call.
                        let tool_index = self.tool_indexes.of(block_index).unwrap_or(0);
                        let partial = delta.and_then(|d| d.get("partial_json")).cloned().unwrap_or_default();
                        self.chunks.chunk(0, openai_side::tool_call_arguments(tool_index, partial), Value::Null, out);
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
                let stop = if self.json_block.is_some() && !self.other_tool_called && stop == Some("tool_use") {
                    Some("end_turn")
                } else {
                    stop
                };
                self.chunks.chunk(0, json!({}), finish_reason(stop), out);
            }
            "message_stop" => {
                self.chunks.usage(openai_side::usage_with_cache_fields(&self.usage), out);
                self.stopped = true;
                self.chunks.end(out);
            }
            // The stream failed at the provider: the client gets the error in its own format,
            // then the end of the stream.
            "error" => self.chunks.fail(&error(event.data.as_bytes()), out),
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "openai_anthropic_tests.rs"]
mod tests;
