//! An OpenAI Chat Completions client in front of an AWS Bedrock deployment through the Converse
//! API (`POST /model/{modelId}/converse`, `/converse-stream`; AWS's Bedrock API reference and
//! LiteLLM's mapping are the spec):
//!
//! - [`request`]: `/v1/chat/completions` body → Converse request (the model id, and whether it
//!   streams, go in the URL path, not the body);
//! - [`response`]: a Converse response → a `chat.completion`; [`usage_of`]: its usage;
//! - [`StreamTranslator`]: `/converse-stream`'s AWS event stream (binary frames, decoded by
//!   `aws_eventstream`) → `chat.completion.chunk`s as they arrive, then `data: [DONE]`;
//! - [`error`]: Bedrock's error body → OpenAI's (InvokeModel's errors have the same shape);
//! - [`embeddings_request`], [`embeddings_answers`]: `/v1/embeddings` → InvokeModel calls
//!   (`/model/{id}/invoke`; Titan's one per text) for Amazon Titan and Cohere embedding models,
//!   and their answers back as one list.
//!
//! A `response_format` JSON schema is answered as for Anthropic: a tool ([`JSON_TOOL`]), forced
//! for Anthropic's models, whose call comes back as the message's content.
//!
//! Bedrock takes images only as bytes (base64 in JSON): an http(s) image URL is refused (or,
//! under `drop_params`, left out), never fetched. Bedrock has no `tool_choice: "none"`: the
//! tools are still sent, without a `toolChoice` (the model decides, as with `auto`). Bedrock
//! refuses a conversation with tool calls or results but no `toolConfig`: when the client sent
//! no tools, the tools its history used are declared, with an open input schema.

use serde_json::{Map, Value, json};

use super::aws_eventstream::{EventStreamDecoder, Message};
use super::openai_embeddings::{self, EmbeddingsAsk};
use super::openai_side::{self, Chunks, JSON_TOOL, Part, Role, ToolCallIndexes, ToolChoice, present};
use super::{ConversionError, Target, Translated, bad_response, invalid};
use crate::usage::Usage;

const PROVIDER: &str = "bedrock";

/// OpenAI parameters with a Converse counterpart (translated below). `n` and
/// `response_format` are accepted only when they ask for nothing (`n: 1`, `{"type":"text"}`).
const SUPPORTED: &[&str] =
    &["messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "tools", "tool_choice"];

/// An `image_url` part Bedrock cannot take (an http(s) URL), as named in [`Translated::dropped`].
const DROPPED_IMAGE: &str = "image_url";

/// The input schema of a tool declared for the history only (see the module's doc).
fn open_schema() -> Value {
    json!({"type": "object"})
}

/// Whether a parameter outside `SUPPORTED` (and those left out silently everywhere) asks for
/// nothing Bedrock would have to do (`null`, `n: 1`, a text `response_format`): then it is left
/// out silently too.
fn asks_nothing(name: &str, value: &Value) -> bool {
    value.is_null()
        || (name == "n" && value.as_u64() == Some(1))
        || (name == "response_format" && value.get("type").and_then(Value::as_str) == Some("text"))
}

/// Whether Converse can take `response_format`: a JSON schema, as a forced tool ([`JSON_TOOL`]).
fn takes_response_format(name: &str, value: &Value) -> bool {
    name == "response_format" && openai_side::response_schema(value).is_some()
}

/// The request an OpenAI client sent, as Bedrock's Converse API wants it. Parameters left out
/// silently: OpenAI-side settings, the model and streaming (in the URL), and those that ask for
/// nothing; anything else outside `SUPPORTED` is unsupported: refused, or dropped under
/// `drop_params`.
pub fn request(body: &[u8], target: &Target<'_>) -> Result<Translated, ConversionError> {
    let req = &super::request_object(body)?;
    let mut dropped = openai_side::unsupported_params(PROVIDER, req, target, |name, value| {
        SUPPORTED.contains(&name)
            || openai_side::IGNORED_WITH_THE_MODEL_IN_THE_URL.contains(&name)
            || asks_nothing(name, value)
            || takes_response_format(name, value)
    })?;

    let mut converter = Converter { drop_params: target.drop_params, dropped_image: false };
    let (system, turns) = converter.messages(super::messages(req)?)?;
    if converter.dropped_image {
        dropped.push(DROPPED_IMAGE.to_owned());
    }

    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(turns));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("inferenceConfig".into(), Value::Object(inference_config(req, target)?));
    let mut config = tool_config(req, out.get("messages"))?;
    // A JSON schema answer (LiteLLM's way, as for Anthropic): a tool with that schema, forced
    // unless the client has tools of its own. Only Anthropic's models on Bedrock take a forced
    // tool (`toolChoice.tool`); the others are offered it.
    let schema = openai_side::json_answer_schema(req, &dropped);
    if let Some(schema) = schema {
        let spec =
            json!({"toolSpec": {"name": JSON_TOOL, "inputSchema": {"json": openai_side::object_schema(schema)}}});
        let client_tools = present(req, "tools").is_some();
        let config = config.get_or_insert_with(|| json!({"tools": []}));
        if let Some(tools) = config.get_mut("tools").and_then(Value::as_array_mut) {
            tools.push(spec);
        }
        if !client_tools && target.model.contains("anthropic.") {
            config["toolChoice"] = json!({"tool": {"name": JSON_TOOL}});
        }
    }
    if let Some(config) = config {
        out.insert("toolConfig".into(), config);
    }
    let mut translated = super::translated(out, dropped)?;
    translated.json_mode = schema.is_some();
    Ok(translated)
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
        let (system, turns) = openai_side::conversation(messages, true, |role, message, i| {
            Ok(match role {
                Role::System => {
                    let blocks = self.content_blocks(message.get("content"), i)?;
                    if blocks.iter().any(|block| block.get("text").is_none()) {
                        return Err(invalid(format!("messages[{i}]: a system message can hold only text")));
                    }
                    (None, blocks)
                }
                Role::User => (Some("user"), self.content_blocks(message.get("content"), i)?),
                Role::Assistant => (Some("assistant"), self.assistant_blocks(message, i)?),
                Role::Tool => (Some("user"), vec![tool_result(message, i)?]),
            })
        })?;
        let turns = turns.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
        Ok((system, turns))
    }

    /// A message's `content` (a string or an array of parts) as Converse content blocks.
    fn content_blocks(&mut self, content: Option<&Value>, i: usize) -> Result<Vec<Value>, ConversionError> {
        let blocks = openai_side::map_content(content, i, |part| self.part_to_block(part, i))?;
        Ok(blocks.into_iter().flatten().collect())
    }

    /// A content part as a block; None: an http(s) image dropped under `drop_params`.
    fn part_to_block(&mut self, part: Part<'_>, i: usize) -> Result<Option<Value>, ConversionError> {
        match part {
            Part::Text(text) => Ok(Some(json!({"text": text}))),
            Part::ImageUrl(url) => {
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
            Part::Other(kind, _) => Err(openai_side::unsupported_part(kind, "Bedrock", i)),
        }
    }

    /// An assistant turn: its (non-empty) text, then its tool calls as `toolUse` blocks.
    fn assistant_blocks(&mut self, message: &Value, i: usize) -> Result<Vec<Value>, ConversionError> {
        let mut blocks = self.content_blocks(message.get("content"), i)?;
        blocks.retain(|b| b.get("text").and_then(Value::as_str) != Some(""));
        for call in openai_side::tool_calls(message, i)? {
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("messages[{i}]: a tool call without an id")))?;
            let (name, input) = openai_side::named_call(call, i)?;
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
    let (media_type, data) = openai_side::base64_data_url(rest, i)?;
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
    let id = openai_side::tool_call_id(message, i)?;
    let text = openai_side::tool_message_text(message, i)?;
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
    let max_tokens = openai_side::max_tokens(req)?.unwrap_or(target.default_max_tokens);
    config.insert("maxTokens".into(), Value::from(max_tokens));
    openai_side::copy_numbers(req, &[("temperature", "temperature"), ("top_p", "topP")], &mut config)?;
    if let Some(stop) = openai_side::stop_sequences(req)? {
        config.insert("stopSequences".into(), stop);
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
    let specs = openai_side::function_tools(tools, Some("Bedrock"))?
        .into_iter()
        .map(|tool| {
            let schema = tool
                .parameters
                .filter(|p| !p.is_null())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let mut spec = json!({"name": tool.name, "inputSchema": {"json": schema}});
            if let Some(description) = tool.description {
                spec["description"] = description.clone();
            }
            json!({"toolSpec": spec})
        })
        .collect();
    Ok(specs)
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
    Ok(match openai_side::tool_choice(choice)? {
        ToolChoice::Auto => Some(json!({"auto": {}})),
        ToolChoice::Required => Some(json!({"any": {}})),
        ToolChoice::NoCalls => None,
        ToolChoice::Function(name) => Some(json!({"tool": {"name": name}})),
    })
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

/// The usage of a complete Converse response, or None if it is not JSON or has none.
pub fn usage_of(body: &[u8]) -> Option<Usage> {
    let parsed: Value = serde_json::from_slice(body).ok()?;
    bedrock_usage(parsed.get("usage")?)
}

/// What the response's id is made of: the request id, when the body carries one (as the AWS
/// SDKs' `ResponseMetadata` does), else a digest of the body (the HTTP API has the id only in
/// a header): the same answer always gets the same id.
fn id_basis(parsed: &Value, raw: &[u8]) -> String {
    let request_id = parsed.get("ResponseMetadata").and_then(|m| m.get("RequestId")).and_then(Value::as_str);
    openai_side::id_or_digest(request_id, "bedrock", raw)
}

/// A Converse response as a `chat.completion` for the client, who asked for `client_model`. In
/// `json_mode` the call of [`JSON_TOOL`] is the answer: its input is the message's content.
pub fn response(
    body: &[u8],
    client_model: &str,
    created_unix_secs: u64,
    json_mode: bool,
) -> Result<Vec<u8>, ConversionError> {
    let parsed = super::response_object(body)?;
    let content = parsed
        .get("output")
        .and_then(|o| o.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad_response("no output.message.content array"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut answered_in_json = false;
    for block in content {
        let call = block.get("toolUse").filter(|c| c.is_object());
        if let Some(piece) = block.get("text").and_then(Value::as_str) {
            text.push_str(piece);
        } else if let Some(call) =
            call.filter(|c| json_mode && c.get("name").and_then(Value::as_str) == Some(JSON_TOOL))
        {
            text.push_str(&call.get("input").map_or_else(|| "{}".to_owned(), Value::to_string));
            answered_in_json = true;
        } else if let Some(call) = call {
            tool_calls.push(openai_side::tool_call(
                call.get("toolUseId").cloned().unwrap_or(Value::Null),
                call.get("name").cloned().unwrap_or(Value::Null),
                call.get("input").filter(|i| !i.is_null()),
            ));
        }
        // reasoningContent (and anything new) has no place in a chat completion's message.
    }
    let stop_reason = parsed.get("stopReason").and_then(Value::as_str);
    // Stopped to call the JSON tool alone: for the client, the answer is complete.
    let json_alone = answered_in_json && tool_calls.is_empty();
    let finish =
        Value::from(if json_alone && stop_reason == Some("tool_use") { "stop" } else { finish_reason(stop_reason) });
    let message = openai_side::assistant_message(text, tool_calls);
    let usage = parsed.get("usage").and_then(bedrock_usage).unwrap_or_default();
    openai_side::completion(
        Value::from(format!("chatcmpl-{}", id_basis(&parsed, body))),
        created_unix_secs,
        client_model,
        vec![openai_side::choice(0, message, finish)],
        openai_side::usage_with_cache_fields(&usage),
    )
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

/// An error in OpenAI's shape (Bedrock's have no code).
fn openai_error(message: &str, kind: &str) -> Vec<u8> {
    openai_side::error_body(message, kind, None)
}

/// The `message` of a Bedrock error body (`{"message": "..."}`; some AWS services write
/// `Message`), or the body quoted.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    parsed
        .as_ref()
        .and_then(|v| v.get("message").or_else(|| v.get("Message")))
        .and_then(Value::as_str)
        .map_or_else(|| super::quoted_answer(body), str::to_owned)
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
    /// The chunks out. The stream carries no id: theirs is made of the creation time.
    chunks: Chunks,
    usage: Usage,
    /// The first chunk (the role) was sent.
    started: bool,
    /// Bedrock's tool-use content block indexes, in OpenAI's tool call order.
    tool_indexes: ToolCallIndexes,
    /// `messageStop` arrived.
    stopped: bool,
    /// `metadata` (the usage) arrived.
    metered: bool,
    /// The request's JSON schema is answered by a call of [`JSON_TOOL`]: its block's index
    /// once it started (its input streams as content), and whether another tool was called.
    json_mode: bool,
    json_block: Option<u64>,
    other_tool_called: bool,
}

impl StreamTranslator {
    pub fn new(client_model: &str, created_unix_secs: u64, include_usage: bool, json_mode: bool) -> Self {
        let id = format!("chatcmpl-bedrock{created_unix_secs}");
        Self {
            decoder: EventStreamDecoder::default(),
            chunks: Chunks::new(id, client_model, created_unix_secs, include_usage),
            usage: Usage::default(),
            started: false,
            tool_indexes: ToolCallIndexes::default(),
            stopped: false,
            metered: false,
            json_mode,
            json_block: None,
            other_tool_called: false,
        }
    }

    /// The bytes to send the client for this chunk of Bedrock's stream (`end_of_stream`: the
    /// last one). `[DONE]` follows `metadata` (Bedrock's last event, after `messageStop`); a
    /// stream that ends without them still ends with it.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.chunks.done {
            for decoded in self.decoder.feed(chunk) {
                match decoded {
                    Ok(message) => self.translate(&message, &mut out),
                    Err(e) => {
                        let message = format!("the provider's event stream could not be decoded: {e}");
                        self.chunks.fail(&openai_error(&message, "api_error"), &mut out);
                    }
                }
            }
        }
        if end_of_stream {
            self.chunks.end(&mut out);
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

    /// The role chunk, once, before anything else.
    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.chunks.role(0, out);
        }
    }

    fn translate(&mut self, message: &Message, out: &mut Vec<u8>) {
        if self.chunks.done {
            return;
        }
        // The stream failed: the client gets the error in its own format, then the end.
        match message.header(":message-type") {
            Some("exception") => {
                let kind = exception_type(message.header(":exception-type").unwrap_or_default());
                self.chunks.fail(&openai_error(&error_message(&message.payload), kind), out);
                return;
            }
            Some("error") => {
                let code = message.header(":error-code").unwrap_or("error");
                let detail = message.header(":error-message").unwrap_or_default();
                self.chunks.fail(&openai_error(&format!("{code}: {detail}"), "api_error"), out);
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
                if self.json_mode && tool.get("name").and_then(Value::as_str) == Some(JSON_TOOL) {
                    self.json_block = Some(block_index);
                    return;
                }
                self.other_tool_called = true;
                let tool_index = self.tool_indexes.open(block_index);
                let field = |name: &str| tool.get(name).cloned().unwrap_or(Value::Null);
                let delta = openai_side::tool_call_opened(tool_index, field("toolUseId"), field("name"));
                self.chunks.chunk(0, delta, Value::Null, out);
            }
            "contentBlockDelta" => {
                let delta = data.get("delta");
                if let Some(text) = delta.and_then(|d| d.get("text")).and_then(Value::as_str) {
                    self.start(out);
                    self.chunks.chunk(0, json!({"content": text}), Value::Null, out);
                } else if let Some(input) =
                    delta.and_then(|d| d.get("toolUse")).and_then(|t| t.get("input")).and_then(Value::as_str)
                {
                    if self.json_block == Some(block_index) {
                        // The JSON answer, as the message's content.
                        self.chunks.chunk(0, json!({"content": input}), Value::Null, out);
                        return;
                    }
                    // A fragment of a block that never started is nobody's arguments.
                    let Some(tool_index) = self.tool_indexes.of(block_index) else {
                        return;
                    };
                    let delta = openai_side::tool_call_arguments(tool_index, Value::from(input));
                    self.chunks.chunk(0, delta, Value::Null, out);
                }
                // reasoningContent has no place in a chat completion chunk.
            }
            "messageStop" => {
                self.start(out);
                let stop_reason = data.get("stopReason").and_then(Value::as_str);
                let json_alone = self.json_block.is_some() && !self.other_tool_called;
                let reason =
                    if json_alone && stop_reason == Some("tool_use") { "stop" } else { finish_reason(stop_reason) };
                self.chunks.chunk(0, json!({}), Value::from(reason), out);
                self.stopped = true;
            }
            "metadata" => {
                if let Some(usage) = data.get("usage").and_then(bedrock_usage) {
                    self.usage = usage;
                }
                self.metered = true;
                self.chunks.usage(openai_side::usage_with_cache_fields(&self.usage), out);
                if self.stopped {
                    self.chunks.end(out);
                }
            }
            // contentBlockStop, and event types added later.
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "openai_bedrock_tests.rs"]
mod tests;

// ---- embeddings (InvokeModel) -----------------------------------------------------------------

/// The embedding models Bedrock's InvokeModel is asked for, by their body's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EmbeddingModel {
    /// `amazon.titan-embed-text-v1`, `amazon.titan-embed-g1-text-02`: `inputText` only.
    TitanV1,
    /// `amazon.titan-embed-text-v2:0`: `inputText`, `dimensions`, `normalize`.
    TitanV2,
    /// `cohere.embed-english-v3`, `cohere.embed-multilingual-v3`: `texts`, `input_type`.
    Cohere,
}

/// Which embedding model a model id (or an inference profile's id or ARN, which contains it)
/// names; None: not one Sluice translates to.
fn embedding_model(id: &str) -> Option<EmbeddingModel> {
    if id.contains("amazon.titan-embed-text-v2") {
        Some(EmbeddingModel::TitanV2)
    } else if id.contains("amazon.titan-embed-text-v1") || id.contains("amazon.titan-embed-g1-text") {
        Some(EmbeddingModel::TitanV1)
    } else if id.contains("cohere.embed-english-v3") || id.contains("cohere.embed-multilingual-v3") {
        Some(EmbeddingModel::Cohere)
    } else {
        None
    }
}

/// Cohere's `input_type` when the client names none (LiteLLM's default).
const COHERE_DEFAULT_INPUT_TYPE: &str = "search_document";

/// An OpenAI `/v1/embeddings` request as Bedrock InvokeModel calls (`POST /model/{id}/invoke`):
/// one for Cohere (every text at once), one per text for Titan, which embeds one text a call
/// (LiteLLM makes one call per text too; the gateway sends them and answers with
/// [`embeddings_answers`]).
#[derive(Debug)]
pub struct EmbeddingsCalls {
    /// Each call's body, in the order of the client's texts.
    pub bodies: Vec<Vec<u8>>,
    /// Each call's input, estimated (bytes / 4, at least one a text): what a call that never
    /// answered is metered at.
    pub estimates: Vec<u64>,
    /// The client parameters left out under `drop_params`.
    pub dropped: Vec<String>,
    pub ask: EmbeddingsAsk,
}

/// The calls for an embeddings request (see [`EmbeddingsCalls`]). Titan v2 takes `dimensions`
/// and (passed on) `normalize`; Cohere takes no `dimensions`, and `input_type` (default
/// `search_document`) and `truncate` passed on.
pub fn embeddings_request(body: &[u8], target: &Target<'_>) -> Result<EmbeddingsCalls, ConversionError> {
    let model = embedding_model(target.model).ok_or_else(|| {
        invalid(format!(
            "{} is not an embedding model Sluice can call on Bedrock (Amazon Titan text embeddings, Cohere embed v3)",
            target.model
        ))
    })?;
    let (takes_dimensions, extra): (bool, &[&str]) = match model {
        EmbeddingModel::TitanV1 => (false, &[]),
        EmbeddingModel::TitanV2 => (true, &["normalize"]),
        EmbeddingModel::Cohere => (false, &["input_type", "truncate"]),
    };
    let (read, req) = openai_embeddings::read(body, target, PROVIDER, takes_dimensions, extra)?;
    let bodies: Vec<Map<String, Value>> = match model {
        EmbeddingModel::TitanV1 | EmbeddingModel::TitanV2 => {
            let normalize = match present(&req, "normalize") {
                None => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => {
                    return Err(ConversionError::InvalidField {
                        param: "normalize",
                        detail: "must be a boolean".into(),
                    });
                }
            };
            read.inputs
                .iter()
                .map(|text| {
                    let mut out = Map::new();
                    out.insert("inputText".into(), Value::String(text.clone()));
                    if let Some(dimensions) = read.dimensions {
                        out.insert("dimensions".into(), Value::from(dimensions));
                    }
                    if let Some(normalize) = normalize {
                        out.insert("normalize".into(), Value::Bool(normalize));
                    }
                    out
                })
                .collect()
        }
        EmbeddingModel::Cohere => {
            let mut out = Map::new();
            out.insert("texts".into(), json!(read.inputs));
            let string_field = |name: &'static str| match present(&req, name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ConversionError::InvalidField { param: name, detail: "must be a string".into() }),
            };
            let input_type = string_field("input_type")?.unwrap_or_else(|| COHERE_DEFAULT_INPUT_TYPE.to_owned());
            out.insert("input_type".into(), Value::String(input_type));
            if let Some(truncate) = string_field("truncate")? {
                out.insert("truncate".into(), Value::String(truncate));
            }
            vec![out]
        }
    };
    let estimates = match model {
        EmbeddingModel::Cohere => vec![read.ask.prompt_estimate],
        _ => read.inputs.iter().map(|t| crate::usage::estimate_tokens_from_bytes(t.len() as u64).max(1)).collect(),
    };
    let bodies = bodies
        .into_iter()
        .map(|out| serde_json::to_vec(&Value::Object(out)).map_err(|e| invalid(e.to_string())))
        .collect::<Result<_, _>>()?;
    Ok(EmbeddingsCalls { bodies, estimates, dropped: read.dropped, ask: read.ask })
}

/// InvokeModel's answer as OpenAI's list of embeddings (one call's; see [`embeddings_answers`]).
pub fn embeddings_response(body: &[u8], client_model: &str, ask: EmbeddingsAsk) -> Result<Vec<u8>, ConversionError> {
    Ok(embeddings_answers(&[body], client_model, ask)?.0)
}

/// The answers of an embeddings request's calls, in order, as OpenAI's one list of embeddings:
/// Titan's `{"embedding": […], "inputTextTokenCount": n}` (an exact count), or Cohere's
/// `{"embeddings": [[…], …]}` (or, by type, `{"embeddings": {"float": [[…]]}}`), which counts
/// nothing. With the body, the input's exact count when every answer had one (the answer's
/// `usage` then shows it; otherwise the gateway's estimate of the input).
pub fn embeddings_answers(
    bodies: &[&[u8]],
    client_model: &str,
    ask: EmbeddingsAsk,
) -> Result<(Vec<u8>, Option<u64>), ConversionError> {
    let parsed = bodies.iter().map(|b| super::response_object(b)).collect::<Result<Vec<_>, _>>()?;
    let mut vectors: Vec<&Value> = Vec::new();
    let mut counted = Some(0u64);
    for answer in &parsed {
        if let Some(vector) = answer.get("embedding") {
            vectors.push(vector);
            let count = answer.get("inputTextTokenCount").and_then(Value::as_u64);
            counted = counted.zip(count).map(|(sum, n)| sum.saturating_add(n));
            continue;
        }
        let embeddings = match answer.get("embeddings") {
            Some(Value::Object(by_type)) => by_type.get("float"),
            other => other,
        };
        let many = embeddings
            .and_then(Value::as_array)
            .ok_or_else(|| bad_response("neither an embedding nor an array of float embeddings"))?;
        vectors.extend(many.iter());
        counted = None;
    }
    let prompt_tokens = counted.unwrap_or(ask.prompt_estimate);
    Ok((openai_embeddings::answer(&vectors, client_model, ask.encoding, prompt_tokens)?, counted))
}
