//! An OpenAI Chat Completions client in front of an AWS Bedrock deployment through the Converse
//! API (`POST /model/{modelId}/converse`, `/converse-stream`; AWS's Bedrock API reference and
//! LiteLLM's mapping are the spec):
//!
//! - [`request`]: `/v1/chat/completions` body → Converse request (the model id, and whether it
//!   streams, go in the URL path, not the body);
//! - [`response`]: a Converse response → a `chat.completion`; [`usage_of`]: its usage;
//! - [`StreamTranslator`]: `/converse-stream`'s AWS event stream (binary frames, decoded by
//!   `aws_eventstream`) → `chat.completion.chunk`s as they arrive, then `data: [DONE]`;
//! - [`error`]: Bedrock's error body → OpenAI's.
//!
//! Bedrock takes images only as bytes (base64 in JSON): an http(s) image URL is refused (or,
//! under `drop_params`, left out), never fetched. Bedrock has no `tool_choice: "none"`: the
//! tools are still sent, without a `toolChoice` (the model decides, as with `auto`). Bedrock
//! refuses a conversation with tool calls or results but no `toolConfig`: when the client sent
//! no tools, the tools its history used are declared, with an open input schema.

use serde_json::{Map, Value, json};

use super::aws_eventstream::{EventStreamDecoder, Message};
use super::{ConversionError, Target, Translated, bad_response, invalid};
use crate::usage::Usage;

const PROVIDER: &str = "bedrock";

/// OpenAI parameters with a Converse counterpart (translated below). `n` and
/// `response_format` are accepted only when they ask for nothing (`n: 1`, `{"type":"text"}`).
const SUPPORTED: &[&str] =
    &["messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "tools", "tool_choice"];

/// OpenAI parameters left out silently: the model and streaming are in the URL, the rest are
/// OpenAI-side settings that change nothing the provider does. Anything else is unsupported:
/// refused, or dropped under `drop_params`.
const IGNORED: &[&str] =
    &["model", "stream", "stream_options", "user", "metadata", "store", "parallel_tool_calls", "service_tier"];

/// An `image_url` part Bedrock cannot take (an http(s) URL), as named in [`Translated::dropped`].
const DROPPED_IMAGE: &str = "image_url";

/// The input schema of a tool declared for the history only (see the module's doc).
fn open_schema() -> Value {
    json!({"type": "object"})
}

/// A field the client sent, `null` counting as absent.
fn present<'a>(req: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    req.get(name).filter(|v| !v.is_null())
}

/// Whether a parameter outside [`SUPPORTED`] and [`IGNORED`] asks for nothing Bedrock would
/// have to do (`null`, `n: 1`, a text `response_format`): then it is left out silently.
fn asks_nothing(name: &str, value: &Value) -> bool {
    value.is_null()
        || (name == "n" && value.as_u64() == Some(1))
        || (name == "response_format" && value.get("type").and_then(Value::as_str) == Some("text"))
}

/// The request an OpenAI client sent, as Bedrock's Converse API wants it.
pub fn request(body: &[u8], target: &Target<'_>) -> Result<Translated, ConversionError> {
    let parsed: Value = serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    let req = parsed.as_object().ok_or_else(|| invalid("the request body must be an object"))?;

    let mut dropped: Vec<String> = req
        .iter()
        .filter(|(name, value)| {
            !SUPPORTED.contains(&name.as_str()) && !IGNORED.contains(&name.as_str()) && !asks_nothing(name, value)
        })
        .map(|(name, _)| name.clone())
        .collect();
    dropped.sort();
    if !dropped.is_empty() && !target.drop_params {
        return Err(ConversionError::Unsupported { provider: PROVIDER, params: dropped });
    }

    let messages = req.get("messages").and_then(Value::as_array).ok_or_else(|| invalid("messages must be an array"))?;
    let mut converter = Converter { drop_params: target.drop_params, dropped_image: false };
    let (system, turns) = converter.messages(messages)?;
    if converter.dropped_image {
        dropped.push(DROPPED_IMAGE.to_owned());
    }

    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(turns));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("inferenceConfig".into(), Value::Object(inference_config(req, target)?));
    if let Some(config) = tool_config(req, out.get("messages"))? {
        out.insert("toolConfig".into(), config);
    }
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| invalid(e.to_string()))?;
    Ok(Translated { body, dropped })
}

/// Messages → Converse `system` and `messages`, remembering whether an image was dropped.
struct Converter {
    drop_params: bool,
    dropped_image: bool,
}

impl Converter {
    /// System and developer messages become `system`; tool results are `toolResult` blocks of a
    /// user turn; consecutive turns of one role are merged (Bedrock wants them alternating), and
    /// a turn left with no content is left out (Bedrock refuses an empty one).
    fn messages(&mut self, messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>), ConversionError> {
        let mut system: Vec<Value> = Vec::new();
        let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            let role = message
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("messages[{i}].role is missing")))?;
            let (role, blocks) = match role {
                "system" | "developer" => {
                    for block in self.content_blocks(message.get("content"), i)? {
                        if block.get("text").is_none() {
                            return Err(invalid(format!("messages[{i}]: a system message can hold only text")));
                        }
                        system.push(block);
                    }
                    continue;
                }
                "user" => ("user", self.content_blocks(message.get("content"), i)?),
                "assistant" => ("assistant", self.assistant_blocks(message, i)?),
                "tool" => ("user", vec![tool_result(message, i)?]),
                other => return Err(invalid(format!("messages[{i}].role {other:?} is not supported"))),
            };
            if blocks.is_empty() {
                continue;
            }
            match turns.last_mut() {
                Some((last, existing)) if *last == role => existing.extend(blocks),
                _ => turns.push((role, blocks)),
            }
        }
        let turns = turns.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
        Ok((system, turns))
    }

    /// A message's `content` (a string or an array of parts) as Converse content blocks.
    fn content_blocks(&mut self, content: Option<&Value>, i: usize) -> Result<Vec<Value>, ConversionError> {
        match content {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(text)) => Ok(vec![json!({"text": text})]),
            Some(Value::Array(parts)) => {
                let mut blocks = Vec::new();
                for part in parts {
                    if let Some(block) = self.part_to_block(part, i)? {
                        blocks.push(block);
                    }
                }
                Ok(blocks)
            }
            Some(_) => Err(invalid(format!("messages[{i}].content must be a string or an array"))),
        }
    }

    /// A content part as a block; None: an http(s) image dropped under `drop_params`.
    fn part_to_block(&mut self, part: &Value, i: usize) -> Result<Option<Value>, ConversionError> {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
                Ok(Some(json!({"text": text})))
            }
            Some("image_url") => {
                let url = part
                    .get("image_url")
                    .and_then(|u| u.get("url").or(Some(u)))
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("messages[{i}]: image_url.url is missing")))?;
                if url.starts_with("https://") || url.starts_with("http://") {
                    if self.drop_params {
                        self.dropped_image = true;
                        return Ok(None);
                    }
                    return Err(invalid(format!(
                        "messages[{i}]: Bedrock takes images only as base64 data URLs (data:image/png;base64,…), \
                         not http(s) URLs"
                    )));
                }
                image_block(url, i).map(Some)
            }
            other => Err(invalid(format!("messages[{i}]: content part type {other:?} is not supported for Bedrock"))),
        }
    }

    /// An assistant turn: its (non-empty) text, then its tool calls as `toolUse` blocks.
    fn assistant_blocks(&mut self, message: &Value, i: usize) -> Result<Vec<Value>, ConversionError> {
        let mut blocks = self.content_blocks(message.get("content"), i)?;
        blocks.retain(|b| b.get("text").and_then(Value::as_str) != Some(""));
        let calls = match message.get("tool_calls") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(calls)) => calls.as_slice(),
            Some(_) => return Err(invalid(format!("messages[{i}].tool_calls must be an array"))),
        };
        for call in calls {
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("messages[{i}]: a tool call without an id")))?;
            let function =
                call.get("function").ok_or_else(|| invalid(format!("messages[{i}]: tool call without function")))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("messages[{i}]: tool call without a function name")))?;
            let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or("{}");
            let input: Value = if arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(arguments)
                    .map_err(|e| invalid(format!("messages[{i}]: tool call arguments are not JSON: {e}")))?
            };
            if !input.is_object() {
                return Err(invalid(format!("messages[{i}]: tool call arguments must be a JSON object")));
            }
            blocks.push(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}));
        }
        Ok(blocks)
    }
}

/// `data:image/<format>;base64,<data>` → an image block, the base64 passed as it is.
fn image_block(url: &str, i: usize) -> Result<Value, ConversionError> {
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| invalid(format!("messages[{i}]: an image must be a base64 data URL")))?;
    let (meta, data) = rest.split_once(',').ok_or_else(|| invalid(format!("messages[{i}]: malformed data URL")))?;
    let media_type = meta
        .strip_suffix(";base64")
        .ok_or_else(|| invalid(format!("messages[{i}]: only base64 data URLs are supported")))?;
    let format = match media_type.to_ascii_lowercase().as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => {
            return Err(invalid(format!(
                "messages[{i}]: image type {other:?} is not supported for Bedrock (png, jpeg, gif or webp)"
            )));
        }
    };
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

/// A tool message as a `toolResult` block: a JSON object result as `json`, anything else as
/// `text`.
fn tool_result(message: &Value, i: usize) -> Result<Value, ConversionError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("messages[{i}].tool_call_id is missing")))?;
    let text = match message.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(piece)) => text.push_str(piece),
                    _ => return Err(invalid(format!("messages[{i}]: a tool message's content parts must be text"))),
                }
            }
            text
        }
        Some(_) => return Err(invalid(format!("messages[{i}].content must be a string or an array"))),
    };
    let content = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(object)) => json!({"json": object}),
        _ => json!({"text": text}),
    };
    Ok(json!({"toolResult": {"toolUseId": id, "content": [content], "status": "success"}}))
}

/// `inferenceConfig`: always a `maxTokens` (the target's default when the client sent none:
/// Anthropic models on Bedrock require one), and the sampling settings sent.
fn inference_config(req: &Map<String, Value>, target: &Target<'_>) -> Result<Map<String, Value>, ConversionError> {
    let mut config = Map::new();
    let max_tokens = present(req, "max_completion_tokens")
        .or_else(|| present(req, "max_tokens"))
        .map(|v| v.as_u64().ok_or_else(|| invalid("max_tokens must be a non-negative integer")))
        .transpose()?
        .unwrap_or(target.default_max_tokens);
    config.insert("maxTokens".into(), Value::from(max_tokens));
    for (openai, bedrock) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(value) = present(req, openai) {
            if !value.is_number() {
                return Err(invalid(format!("{openai} must be a number")));
            }
            config.insert(bedrock.into(), value.clone());
        }
    }
    match present(req, "stop") {
        None => {}
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            config.insert("stopSequences".into(), Value::Array(items.clone()));
        }
        Some(_) => return Err(invalid("stop must be a string or an array of strings")),
    }
    Ok(config)
}

/// `toolConfig`: the client's tools and its `tool_choice`; without tools, none, unless the
/// conversation has tool calls or results (then the tools they name: see the module's doc).
fn tool_config(req: &Map<String, Value>, messages: Option<&Value>) -> Result<Option<Value>, ConversionError> {
    let mut tools = match present(req, "tools") {
        None => Vec::new(),
        Some(tools) => tool_specs(tools)?,
    };
    let choice = present(req, "tool_choice").map(tool_choice).transpose()?.flatten();
    if tools.is_empty() {
        tools = history_tools(messages);
        if tools.is_empty() {
            return Ok(None);
        }
        // Declared for the history only: the client's choice could name none of them.
        return Ok(Some(json!({"tools": tools})));
    }
    let mut config = json!({"tools": tools});
    if let Some(choice) = choice {
        config["toolChoice"] = choice;
    }
    Ok(Some(config))
}

fn tool_specs(tools: &Value) -> Result<Vec<Value>, ConversionError> {
    let tools = tools.as_array().ok_or_else(|| invalid("tools must be an array"))?;
    tools
        .iter()
        .map(|tool| {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or("function");
            if kind != "function" {
                return Err(invalid(format!("tools[].type {kind:?} is not supported for Bedrock")));
            }
            let function = tool.get("function").ok_or_else(|| invalid("tools[].function is missing"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tools[].function.name is missing"))?;
            let schema = function
                .get("parameters")
                .filter(|p| !p.is_null())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let mut spec = json!({"name": name, "inputSchema": {"json": schema}});
            if let Some(description) = function.get("description").filter(|d| d.is_string()) {
                spec["description"] = description.clone();
            }
            Ok(json!({"toolSpec": spec}))
        })
        .collect()
}

/// The tools the translated conversation's `toolUse` blocks name, once each, in order.
fn history_tools(messages: Option<&Value>) -> Vec<Value> {
    let mut names: Vec<&str> = Vec::new();
    let mut has_results = false;
    let blocks = messages
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten();
    for block in blocks {
        has_results |= block.get("toolResult").is_some();
        if let Some(name) = block.get("toolUse").and_then(|t| t.get("name")).and_then(Value::as_str)
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    if names.is_empty() && has_results {
        // Results of calls the client left out: one placeholder makes the config valid.
        names.push("tool");
    }
    names
        .into_iter()
        .map(|name| {
            json!({"toolSpec": {
                "name": name,
                "description": "A tool this conversation used earlier.",
                "inputSchema": {"json": open_schema()},
            }})
        })
        .collect()
}

/// OpenAI's `tool_choice` as Converse's `toolChoice`; None for `none` (see the module's doc).
fn tool_choice(choice: &Value) -> Result<Option<Value>, ConversionError> {
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(Some(json!({"auto": {}}))),
            "required" => Ok(Some(json!({"any": {}}))),
            "none" => Ok(None),
            other => Err(invalid(format!("tool_choice {other:?} is not auto, none or required"))),
        },
        Value::Object(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.function.name is missing"))?;
            Ok(Some(json!({"tool": {"name": name}})))
        }
        _ => Err(invalid("tool_choice must be a string or an object")),
    }
}

/// Bedrock's `stopReason` as OpenAI's `finish_reason`.
fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("tool_use") => "tool_calls",
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("guardrail_intervened" | "content_filtered") => "content_filter",
        // end_turn, stop_sequence, and anything new.
        _ => "stop",
    }
}

/// Converse's `usage` as a [`Usage`]: its `inputTokens` leave out the cache reads and writes
/// (as Anthropic's do); the prompt here counts them all. None: not an object, or a count that
/// is not a non-negative integer.
fn bedrock_usage(usage: &Value) -> Option<Usage> {
    let usage = usage.as_object()?;
    let n = |name: &str| match usage.get(name) {
        None | Some(Value::Null) => Some(0),
        Some(v) => v.as_u64(),
    };
    let (input, read, write) = (n("inputTokens")?, n("cacheReadInputTokens")?, n("cacheWriteInputTokens")?);
    Some(Usage {
        prompt_tokens: input.saturating_add(read).saturating_add(write),
        completion_tokens: n("outputTokens")?,
        cached_prompt_tokens: read,
        cache_write_tokens: write,
        ..Usage::default()
    })
}

/// A [`Usage`] in OpenAI's shape: `cached_tokens` are the reads; the Anthropic-style cache
/// fields as LiteLLM adds them.
fn usage_to_openai(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens(),
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_prompt_tokens,
    })
}

/// The usage of a complete Converse response, or None if it is not JSON or has none.
pub fn usage_of(body: &[u8]) -> Option<Usage> {
    let parsed: Value = serde_json::from_slice(body).ok()?;
    bedrock_usage(parsed.get("usage")?)
}

/// What the response's id is made of: the request id, when the body carries one (as the AWS
/// SDKs' `ResponseMetadata` does), else a digest of the body (the HTTP API has the id only in
/// a header): the same answer always gets the same id.
fn id_basis(parsed: &Value, raw: &[u8]) -> String {
    parsed
        .get("ResponseMetadata")
        .and_then(|m| m.get("RequestId"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map_or_else(|| format!("bedrock{:08x}", crc32fast::hash(raw)), str::to_owned)
}

/// A Converse response as a `chat.completion` for the client, who asked for `client_model`.
pub fn response(body: &[u8], client_model: &str, created_unix_secs: u64) -> Result<Vec<u8>, ConversionError> {
    let parsed: Value = serde_json::from_slice(body).map_err(|e| bad_response(format!("not JSON: {e}")))?;
    if !parsed.is_object() {
        return Err(bad_response("not a JSON object"));
    }
    let content = parsed
        .get("output")
        .and_then(|o| o.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad_response("no output.message.content array"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in content {
        if let Some(piece) = block.get("text").and_then(Value::as_str) {
            text.push_str(piece);
        } else if let Some(call) = block.get("toolUse").filter(|c| c.is_object()) {
            tool_calls.push(json!({
                "id": call.get("toolUseId").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": call.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": call.get("input").filter(|i| !i.is_null()).map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            }));
        }
        // reasoningContent (and anything new) has no place in a chat completion's message.
    }
    let content = if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::from(text) };
    let mut message = json!({"role": "assistant", "content": content});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let usage = parsed.get("usage").and_then(bedrock_usage).unwrap_or_default();
    let out = json!({
        "id": format!("chatcmpl-{}", id_basis(&parsed, body)),
        "object": "chat.completion",
        "created": created_unix_secs,
        "model": client_model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(parsed.get("stopReason").and_then(Value::as_str)),
        }],
        "usage": usage_to_openai(&usage),
    });
    serde_json::to_vec(&out).map_err(|e| bad_response(e.to_string()))
}

/// The OpenAI error type of a Bedrock HTTP status (its exception's name is in the
/// `x-amzn-ErrorType` header, not in the body).
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 | 403 => "authentication_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// An error in OpenAI's shape.
fn openai_error(message: &str, kind: &str) -> Vec<u8> {
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}}).to_string().into_bytes()
}

/// The `message` of a Bedrock error body (`{"message": "..."}`; some AWS services write
/// `Message`), or the body quoted.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    parsed
        .as_ref()
        .and_then(|v| v.get("message").or_else(|| v.get("Message")))
        .and_then(Value::as_str)
        .map_or_else(|| format!("the provider answered: {}", String::from_utf8_lossy(body)), str::to_owned)
}

/// Bedrock's error body in OpenAI's shape, typed by the HTTP `status` (which stays the
/// provider's).
pub fn error(body: &[u8], status: u16) -> Vec<u8> {
    openai_error(&error_message(body), error_type(status))
}

/// The OpenAI error type of an exception in Bedrock's stream (`:exception-type`).
fn exception_type(name: &str) -> &'static str {
    match name {
        "validationException" => "invalid_request_error",
        "accessDeniedException" => "authentication_error",
        "resourceNotFoundException" => "not_found_error",
        "throttlingException" | "serviceQuotaExceededException" => "rate_limit_error",
        // internalServerException, modelStreamErrorException, serviceUnavailableException, …
        _ => "api_error",
    }
}

/// Turns Bedrock's `/converse-stream` (an AWS event stream) into OpenAI chunks as its messages
/// arrive: nothing is held back but an incomplete message.
#[derive(Debug)]
pub struct StreamTranslator {
    decoder: EventStreamDecoder,
    client_model: String,
    created: u64,
    /// The client asked for `stream_options.include_usage`: a last chunk carries the usage.
    include_usage: bool,
    usage: Usage,
    /// The first chunk (the role) was sent.
    started: bool,
    /// Bedrock content block index → OpenAI tool call index, for tool-use blocks.
    tool_indexes: Vec<(u64, u64)>,
    /// `messageStop` arrived.
    stopped: bool,
    /// `metadata` (the usage) arrived.
    metered: bool,
    /// `[DONE]` was sent: nothing more goes out.
    done: bool,
}

impl StreamTranslator {
    pub fn new(client_model: &str, created_unix_secs: u64, include_usage: bool) -> Self {
        Self {
            decoder: EventStreamDecoder::default(),
            client_model: client_model.to_owned(),
            created: created_unix_secs,
            include_usage,
            usage: Usage::default(),
            started: false,
            tool_indexes: Vec::new(),
            stopped: false,
            metered: false,
            done: false,
        }
    }

    /// The bytes to send the client for this chunk of Bedrock's stream (`end_of_stream`: the
    /// last one). `[DONE]` follows `metadata` (Bedrock's last event, after `messageStop`); a
    /// stream that ends without them still ends with it.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.done {
            for decoded in self.decoder.feed(chunk) {
                match decoded {
                    Ok(message) => self.translate(&message, &mut out),
                    Err(e) => {
                        let message = format!("the provider's event stream could not be decoded: {e}");
                        self.fail(&openai_error(&message, "api_error"), &mut out);
                    }
                }
            }
        }
        if end_of_stream && !self.done {
            self.done = true;
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        out
    }

    /// Bedrock's stream ended properly (`messageStop`, then `metadata`), not cut or failed.
    pub fn completed(&self) -> bool {
        self.stopped && self.metered
    }

    /// The usage Bedrock reported (in `metadata`, at the end): what the request is charged.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The stream carries no id: one made of the creation time, the same for all its chunks.
    fn id(&self) -> String {
        format!("chatcmpl-bedrock{}", self.created)
    }

    fn chunk(&self, delta: Value, finish: Value, out: &mut Vec<u8>) {
        let chunk = json!({
            "id": self.id(),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.client_model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        push_data(out, &chunk);
    }

    /// The role chunk, once, before anything else.
    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.chunk(json!({"role": "assistant", "content": ""}), Value::Null, out);
        }
    }

    /// The stream failed: the client gets the error in its own format, then the end.
    fn fail(&mut self, error: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(error);
        out.extend_from_slice(b"\n\n");
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    fn translate(&mut self, message: &Message, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match message.header(":message-type") {
            Some("exception") => {
                let kind = exception_type(message.header(":exception-type").unwrap_or_default());
                self.fail(&openai_error(&error_message(&message.payload), kind), out);
                return;
            }
            Some("error") => {
                let code = message.header(":error-code").unwrap_or("error");
                let detail = message.header(":error-message").unwrap_or_default();
                self.fail(&openai_error(&format!("{code}: {detail}"), "api_error"), out);
                return;
            }
            _ => {}
        }
        // Not JSON, or not an object: skipped, counted for nothing.
        let Ok(data) = serde_json::from_slice::<Value>(&message.payload) else {
            return;
        };
        if !data.is_object() {
            return;
        }
        let block_index = data.get("contentBlockIndex").and_then(Value::as_u64).unwrap_or(0);
        match message.header(":event-type").unwrap_or_default() {
            "messageStart" => self.start(out),
            "contentBlockStart" => {
                let Some(tool) = data.get("start").and_then(|s| s.get("toolUse")) else {
                    return;
                };
                self.start(out);
                let tool_index = self.tool_indexes.len() as u64;
                self.tool_indexes.push((block_index, tool_index));
                let call = json!({
                    "index": tool_index,
                    "id": tool.get("toolUseId").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {"name": tool.get("name").cloned().unwrap_or(Value::Null), "arguments": ""},
                });
                self.chunk(json!({"tool_calls": [call]}), Value::Null, out);
            }
            "contentBlockDelta" => {
                let delta = data.get("delta");
                if let Some(text) = delta.and_then(|d| d.get("text")).and_then(Value::as_str) {
                    self.start(out);
                    self.chunk(json!({"content": text}), Value::Null, out);
                } else if let Some(input) =
                    delta.and_then(|d| d.get("toolUse")).and_then(|t| t.get("input")).and_then(Value::as_str)
                {
                    // A fragment of a block that never started is nobody's arguments.
                    let Some(&(_, tool_index)) = self.tool_indexes.iter().find(|(b, _)| *b == block_index) else {
                        return;
                    };
                    self.chunk(
                        json!({"tool_calls": [{"index": tool_index, "function": {"arguments": input}}]}),
                        Value::Null,
                        out,
                    );
                }
                // reasoningContent has no place in a chat completion chunk.
            }
            "messageStop" => {
                self.start(out);
                let reason = finish_reason(data.get("stopReason").and_then(Value::as_str));
                self.chunk(json!({}), Value::from(reason), out);
                self.stopped = true;
            }
            "metadata" => {
                if let Some(usage) = data.get("usage").and_then(bedrock_usage) {
                    self.usage = usage;
                }
                self.metered = true;
                if self.include_usage {
                    let chunk = json!({
                        "id": self.id(),
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.client_model,
                        "choices": [],
                        "usage": usage_to_openai(&self.usage),
                    });
                    push_data(out, &chunk);
                }
                if self.stopped {
                    self.done = true;
                    out.extend_from_slice(b"data: [DONE]\n\n");
                }
            }
            // contentBlockStop, and event types added later.
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
#[path = "openai_bedrock_tests.rs"]
mod tests;
