//! An OpenAI Chat Completions client in front of a Google Gemini deployment (the Generative
//! Language API's `generateContent`; Google's API reference and LiteLLM's mapping are the spec):
//!
//! - [`request`]: `/v1/chat/completions` body → `GenerateContentRequest` (the model, and whether
//!   it streams, go in the URL path, not the body);
//! - [`response`]: a `GenerateContentResponse` → a `chat.completion`; [`usage_of`]: its usage;
//! - [`StreamTranslator`]: `streamGenerateContent?alt=sse` events → `chat.completion.chunk`s as
//!   they arrive, then `data: [DONE]`;
//! - [`error`]: Gemini's error body → OpenAI's;
//! - [`embeddings_request`], [`embeddings_response`]: `/v1/embeddings` → `batchEmbedContents`
//!   and back.
//!
//! Gemini 3 refuses a conversation whose earlier function calls come back without the
//! `thoughtSignature` it attached to them; an OpenAI client keeps nothing but the tool call id,
//! so the signature travels in it (`<id>__thought__<signature>`, LiteLLM's convention) and is
//! put back on the `functionCall` part when the client sends the turn again.

use serde_json::{Map, Value, json};

use super::openai_embeddings::{self, EmbeddingsAsk};
use super::openai_side::{self, Chunks, Part, Role, ToolChoice, present};
use super::sse_events::{Event, SseEvents};
use super::{ConversionError, Target, Translated, bad_response, invalid};
use crate::usage::{ApiFormat, Usage};

const PROVIDER: &str = "gemini";

/// OpenAI parameters with a Gemini counterpart (translated below).
const SUPPORTED: &[&str] = &[
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
];

/// Between a tool call id and the Gemini thought signature carried in it.
const THOUGHT_SEPARATOR: &str = "__thought__";

/// The request an OpenAI client sent, as Gemini's `generateContent` wants it. Parameters left
/// out silently: OpenAI-side settings, and the model and streaming (in the URL); anything else
/// outside `SUPPORTED` is unsupported: refused, or dropped under `drop_params`.
pub fn request(body: &[u8], target: &Target<'_>) -> Result<Translated, ConversionError> {
    let req = &super::request_object(body)?;
    let dropped = openai_side::unsupported_params(PROVIDER, req, target, |name, _| {
        SUPPORTED.contains(&name) || openai_side::IGNORED_WITH_THE_MODEL_IN_THE_URL.contains(&name)
    })?;

    let (system, contents) = messages_to_gemini(super::messages(req)?)?;
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if let Some(system) = system {
        out.insert("systemInstruction".into(), system);
    }
    if let Some(tools) = present(req, "tools") {
        let declarations = function_declarations(tools)?;
        if !declarations.is_empty() {
            out.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
        }
    }
    if let Some(choice) = present(req, "tool_choice") {
        out.insert("toolConfig".into(), json!({"functionCallingConfig": function_calling_config(choice)?}));
    }
    let config = generation_config(req)?;
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    super::translated(out, dropped)
}

/// System and developer messages become `systemInstruction`; the assistant is the `model`; tool
/// results are `functionResponse` parts of a user turn; consecutive turns of one role are
/// merged (Gemini wants them alternating).
fn messages_to_gemini(messages: &[Value]) -> Result<(Option<Value>, Vec<Value>), ConversionError> {
    // An (assistant) turn with nothing in it is left out: Gemini refuses a content without parts.
    let (system, turns) = openai_side::conversation(messages, true, |role, message, i| {
        Ok(match role {
            Role::System => (None, content_parts(message.get("content"), i)?),
            Role::User => (Some("user"), content_parts(message.get("content"), i)?),
            Role::Assistant => (Some("model"), assistant_parts(message, i)?),
            Role::Tool => (Some("user"), vec![function_response(message, &messages[..i], i)?]),
        })
    })?;
    let contents = turns.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts})).collect();
    let system = (!system.is_empty()).then(|| json!({"parts": system}));
    Ok((system, contents))
}

/// A message's `content` (a string or an array of parts) as Gemini parts.
fn content_parts(content: Option<&Value>, i: usize) -> Result<Vec<Value>, ConversionError> {
    openai_side::map_content(content, i, |part| match part {
        Part::Text(text) => Ok(json!({"text": text})),
        Part::ImageUrl(url) => image_part(url, i),
        Part::Other(Some("input_audio"), part) => {
            let audio = part.get("input_audio");
            let field = |name: &str| audio.and_then(|a| a.get(name)).and_then(Value::as_str);
            match (field("data"), field("format")) {
                (Some(data), Some(format)) => {
                    Ok(json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}}))
                }
                _ => Err(invalid(format!("messages[{i}]: input_audio needs data and format"))),
            }
        }
        Part::Other(kind, _) => Err(openai_side::unsupported_part(kind, "Gemini", i)),
    })
}

/// `data:<media type>;base64,<data>` → inline data; an http(s) URL → file data, its media type
/// guessed from the extension.
fn image_part(url: &str, i: usize) -> Result<Value, ConversionError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (mime_type, data) = openai_side::base64_data_url(rest, i)?;
        return Ok(json!({"inlineData": {"mimeType": mime_type, "data": data}}));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"fileData": {"mimeType": image_mime_type(url), "fileUri": url}}));
    }
    Err(invalid(format!("messages[{i}]: an image must be an http(s) URL or a base64 data URL")))
}

/// The media type of an image URL from its path's extension; JPEG when it says nothing.
fn image_mime_type(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let file = path.rsplit('/').next().unwrap_or_default();
    let extension = file.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => "image/jpeg",
    }
}

/// An assistant turn: its text, then its tool calls as `functionCall` parts (with the thought
/// signature their id carries, if any).
fn assistant_parts(message: &Value, i: usize) -> Result<Vec<Value>, ConversionError> {
    let mut parts = content_parts(message.get("content"), i)?;
    parts.retain(|p| p.get("text").and_then(Value::as_str) != Some(""));
    for call in openai_side::tool_calls(message, i)? {
        let (name, args) = openai_side::named_call(call, i)?;
        let mut part = json!({"functionCall": {"name": name, "args": args}});
        let signature = call
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| id.split_once(THOUGHT_SEPARATOR))
            .map(|(_, signature)| signature)
            .filter(|signature| !signature.is_empty());
        if let Some(signature) = signature {
            part["thoughtSignature"] = Value::from(signature);
        }
        parts.push(part);
    }
    Ok(parts)
}

/// A tool message as a `functionResponse`: Gemini wants the function's name, which OpenAI
/// leaves in the assistant message that made the call (the latest one with that id).
fn function_response(message: &Value, earlier: &[Value], i: usize) -> Result<Value, ConversionError> {
    let id = openai_side::tool_call_id(message, i)?;
    let name = earlier
        .iter()
        .rev()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .filter_map(|m| m.get("tool_calls").and_then(Value::as_array))
        .flatten()
        .find(|call| call.get("id").and_then(Value::as_str) == Some(id))
        .and_then(|call| call.get("function"))
        .and_then(|function| function.get("name"))
        .and_then(Value::as_str)
        .or_else(|| message.get("name").and_then(Value::as_str))
        .ok_or_else(|| invalid(format!("messages[{i}]: no earlier assistant tool call has the id {id:?}")))?;
    let text = openai_side::tool_message_text(message, i)?;
    // A JSON object result is the response as it is; anything else is wrapped in one.
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(object)) => Value::Object(object),
        _ => json!({"content": text}),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

fn function_declarations(tools: &Value) -> Result<Vec<Value>, ConversionError> {
    let declarations = openai_side::function_tools(tools, Some("Gemini"))?
        .into_iter()
        .map(|tool| {
            let mut declaration = json!({"name": tool.name});
            if let Some(description) = tool.description {
                declaration["description"] = description.clone();
            }
            if let Some(parameters) = tool.parameters.filter(|p| !p.is_null()) {
                declaration["parameters"] = parameters.clone();
            }
            declaration
        })
        .collect();
    Ok(declarations)
}

fn function_calling_config(choice: &Value) -> Result<Value, ConversionError> {
    Ok(match openai_side::tool_choice(choice)? {
        ToolChoice::NoCalls => json!({"mode": "NONE"}),
        ToolChoice::Auto => json!({"mode": "AUTO"}),
        ToolChoice::Required => json!({"mode": "ANY"}),
        ToolChoice::Function(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
    })
}

/// Sampling and output settings: `generationConfig` (no `maxOutputTokens` when the client sent
/// none: Gemini has its own default).
fn generation_config(req: &Map<String, Value>) -> Result<Map<String, Value>, ConversionError> {
    let mut config = Map::new();
    if let Some(max) = openai_side::max_tokens(req)? {
        config.insert("maxOutputTokens".into(), Value::from(max));
    }
    let numbers = [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ];
    openai_side::copy_numbers(req, &numbers, &mut config)?;
    if let Some(n) = present(req, "n") {
        let n = n.as_u64().filter(|n| *n >= 1).ok_or_else(|| invalid("n must be a positive integer"))?;
        config.insert("candidateCount".into(), Value::from(n));
    }
    if let Some(seed) = present(req, "seed") {
        if !seed.is_i64() && !seed.is_u64() {
            return Err(invalid("seed must be an integer"));
        }
        config.insert("seed".into(), seed.clone());
    }
    if let Some(stop) = openai_side::stop_sequences(req)? {
        config.insert("stopSequences".into(), stop);
    }
    if let Some(format) = present(req, "response_format") {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), "application/json".into());
                if let Some(schema) = format.get("json_schema").and_then(|s| s.get("schema")).filter(|s| !s.is_null()) {
                    config.insert("responseSchema".into(), schema.clone());
                }
            }
            other => {
                return Err(invalid(format!("response_format type {other:?} is not text, json_object or json_schema")));
            }
        }
    }
    Ok(config)
}

/// What ids are made of: Gemini's `responseId`, or (an answer without one) a digest of the
/// answer, so the same answer always gets the same ids.
fn id_basis(parsed: &Value, raw: &[u8]) -> String {
    openai_side::id_or_digest(parsed.get("responseId").and_then(Value::as_str), "gemini", raw)
}

/// A candidate's visible text and its `functionCall` parts; thought parts are reasoning, which
/// has no place in a chat completion's message.
fn candidate_parts(candidate: &Value) -> (String, Vec<&Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    let parts = candidate.get("content").and_then(|c| c.get("parts")).and_then(Value::as_array);
    for part in parts.into_iter().flatten() {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(piece) = part.get("text").and_then(Value::as_str) {
            text.push_str(piece);
        } else if part.get("functionCall").is_some_and(Value::is_object) {
            calls.push(part);
        }
    }
    (text, calls)
}

/// A `functionCall` part as an OpenAI tool call: Gemini's id if it gave one, else the
/// `number`th of the answer; the part's thought signature rides in the id.
fn tool_call(part: &Value, basis: &str, number: usize) -> Value {
    let call = part.get("functionCall");
    let mut id = call
        .and_then(|c| c.get("id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map_or_else(|| format!("call_{basis}_{number}"), str::to_owned);
    if let Some(signature) = part.get("thoughtSignature").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        id.push_str(THOUGHT_SEPARATOR);
        id.push_str(signature);
    }
    openai_side::tool_call(
        Value::from(id),
        Value::from(call.and_then(|c| c.get("name")).and_then(Value::as_str).unwrap_or_default()),
        call.and_then(|c| c.get("args")).filter(|a| !a.is_null()),
    )
}

/// Gemini's `finishReason` as OpenAI's `finish_reason`.
fn finish_reason(reason: Option<&str>, had_calls: bool) -> Value {
    match reason {
        None => Value::Null,
        Some("STOP") if had_calls => "tool_calls".into(),
        Some("MAX_TOKENS") => "length".into(),
        Some("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY") => {
            "content_filter".into()
        }
        // STOP, OTHER, MALFORMED_FUNCTION_CALL and anything new.
        Some(_) => "stop".into(),
    }
}

/// Gemini's `usageMetadata` as a [`Usage`]: the prompt count includes the cached tokens; the
/// completion, the thoughts (billed as output).
/// `usageMetadata` as counted everywhere else (`usage.rs`: thinking billed as output).
fn gemini_usage(meta: Option<&Value>) -> Usage {
    meta.map_or_else(Usage::default, |m| crate::usage::usage_of_value(ApiFormat::Gemini, m))
}

/// The usage of a complete `GenerateContentResponse`, or None if it is not JSON or has none.
pub fn usage_of(body: &[u8]) -> Option<Usage> {
    crate::usage::parse_response_usage(ApiFormat::Gemini, body)
}

/// A `GenerateContentResponse` as a `chat.completion` for the client, who asked for
/// `client_model`: one choice per candidate; a prompt Gemini blocked (no candidates) is an
/// empty, filtered answer.
pub fn response(body: &[u8], client_model: &str, created_unix_secs: u64) -> Result<Vec<u8>, ConversionError> {
    let parsed = super::response_object(body)?;
    let basis = id_basis(&parsed, body);
    let candidates = parsed.get("candidates").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut calls_so_far = 0;
    let mut choices = Vec::new();
    for (position, candidate) in candidates.iter().enumerate() {
        let (text, calls) = candidate_parts(candidate);
        let tool_calls: Vec<Value> = calls
            .iter()
            .map(|part| {
                calls_so_far += 1;
                tool_call(part, &basis, calls_so_far - 1)
            })
            .collect();
        let reason = candidate.get("finishReason").and_then(Value::as_str).unwrap_or("STOP");
        let finish = finish_reason(Some(reason), !tool_calls.is_empty());
        let index = candidate.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
        choices.push(openai_side::choice(index, openai_side::assistant_message(text, tool_calls), finish));
    }
    if choices.is_empty() {
        if parsed.get("promptFeedback").and_then(|f| f.get("blockReason")).is_none() {
            return Err(bad_response("no candidates, and no promptFeedback.blockReason saying why"));
        }
        let empty = openai_side::assistant_message(String::new(), Vec::new());
        choices.push(openai_side::choice(0, empty, "content_filter".into()));
    }
    let usage = openai_side::usage_with_reasoning(&gemini_usage(parsed.get("usageMetadata")));
    openai_side::completion(Value::from(format!("chatcmpl-{basis}")), created_unix_secs, client_model, choices, usage)
}

/// The OpenAI error type of a Gemini status (or, without one, of its HTTP code).
fn error_type(status: Option<&str>, code: Option<u64>) -> &'static str {
    match (status, code) {
        (Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE"), _) | (None, Some(400)) => {
            "invalid_request_error"
        }
        (Some("UNAUTHENTICATED" | "PERMISSION_DENIED"), _) | (None, Some(401 | 403)) => "authentication_error",
        (Some("RESOURCE_EXHAUSTED"), _) | (None, Some(429)) => "rate_limit_error",
        (Some("NOT_FOUND"), _) | (None, Some(404)) => "not_found_error",
        _ => "api_error",
    }
}

/// Gemini's error body (`{"error":{"code","message","status"}}`, in an array from the
/// streaming endpoint) in OpenAI's shape, the status as its `code`; the HTTP status stays the
/// provider's. Anything else becomes a message that says so.
pub fn error(body: &[u8]) -> Vec<u8> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let inner = parsed
        .as_ref()
        .map(|v| match v {
            Value::Array(items) => items.first().unwrap_or(&Value::Null),
            other => other,
        })
        .and_then(|v| v.get("error"));
    let message = inner
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map_or_else(|| super::quoted_answer(body), str::to_owned);
    let status = inner.and_then(|e| e.get("status")).and_then(Value::as_str);
    let kind = error_type(status, inner.and_then(|e| e.get("code")).and_then(Value::as_u64));
    openai_side::error_body(&message, kind, Some(status.unwrap_or(kind)))
}

/// Turns Gemini's stream (`alt=sse`: each event a whole `GenerateContentResponse` chunk) into
/// OpenAI chunks as the events arrive: nothing is held back but an incomplete event.
#[derive(Debug)]
pub struct StreamTranslator {
    events: SseEvents,
    /// The chunks out (their id: `chatcmpl-` and the basis, once the first event sets it).
    chunks: Chunks,
    /// Set by the first event: see [`id_basis`].
    basis: Option<String>,
    /// The last `usageMetadata` (cumulative: the last one is the total).
    usage: Usage,
    /// Per candidate index seen: the tool calls it sent so far (its first chunk sent the role).
    choices: Vec<(u64, u64)>,
    /// Function calls sent, all candidates together: numbers the ids made up.
    calls: usize,
    /// A `finishReason` (or a blocked prompt) arrived.
    finished: bool,
    /// The stream ended without an error event.
    ended: bool,
}

impl StreamTranslator {
    pub fn new(client_model: &str, created_unix_secs: u64, include_usage: bool) -> Self {
        Self {
            events: SseEvents::default(),
            chunks: Chunks::new(
                format!("chatcmpl-gemini{created_unix_secs}"),
                client_model,
                created_unix_secs,
                include_usage,
            ),
            basis: None,
            usage: Usage::default(),
            choices: Vec::new(),
            calls: 0,
            finished: false,
            ended: false,
        }
    }

    /// The bytes to send the client for this chunk of Gemini's stream (`end_of_stream`: the last
    /// one). Gemini has no end event: the end of its stream brings the usage chunk (if asked
    /// for) and `data: [DONE]`, finished or cut.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for event in self.events.feed(chunk, end_of_stream) {
            self.translate(&event, &mut out);
        }
        if end_of_stream && !self.chunks.done {
            self.ended = true;
            self.chunks.usage(openai_side::usage_with_reasoning(&self.usage), &mut out);
            self.chunks.end(&mut out);
        }
        out
    }

    /// A `finishReason` arrived and the stream then ended without an error: not cut, not failed.
    pub fn completed(&self) -> bool {
        self.finished && self.ended
    }

    /// The last usage Gemini reported: what the request is charged.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The slot of candidate `index`, opened (and the role sent) on its first chunk.
    fn choice(&mut self, index: u64, out: &mut Vec<u8>) -> usize {
        if let Some(slot) = self.choices.iter().position(|(i, _)| *i == index) {
            return slot;
        }
        self.chunks.role(index, out);
        self.choices.push((index, 0));
        self.choices.len() - 1
    }

    fn translate(&mut self, event: &Event, out: &mut Vec<u8>) {
        if self.chunks.done {
            return;
        }
        // Not JSON, or not an object: skipped, counted for nothing.
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return;
        };
        if !data.is_object() {
            return;
        }
        if data.get("error").is_some() {
            // The stream failed at the provider: the client gets the error in its own format,
            // then the end of the stream.
            self.chunks.fail(&error(event.data.as_bytes()), out);
            return;
        }
        let basis = match &self.basis {
            Some(basis) => basis.clone(),
            None => {
                let basis = id_basis(&data, event.data.as_bytes());
                self.chunks.id = format!("chatcmpl-{basis}");
                self.basis = Some(basis.clone());
                basis
            }
        };
        if let Some(meta) = data.get("usageMetadata").filter(|m| m.is_object()) {
            self.usage = gemini_usage(Some(meta));
        }
        let candidates = data.get("candidates").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for (position, candidate) in candidates.iter().enumerate() {
            let index = candidate.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
            let slot = self.choice(index, out);
            let (text, calls) = candidate_parts(candidate);
            if !text.is_empty() {
                self.chunks.chunk(index, json!({"content": text}), Value::Null, out);
            }
            for part in calls {
                let mut call = tool_call(part, &basis, self.calls);
                self.calls += 1;
                if let Some((_, sent)) = self.choices.get_mut(slot) {
                    call["index"] = Value::from(*sent);
                    *sent += 1;
                }
                self.chunks.chunk(index, json!({"tool_calls": [call]}), Value::Null, out);
            }
            if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
                let had_calls = self.choices.get(slot).is_some_and(|(_, sent)| *sent > 0);
                self.chunks.chunk(index, json!({}), finish_reason(Some(reason), had_calls), out);
                self.finished = true;
            }
        }
        if candidates.is_empty() && data.get("promptFeedback").and_then(|f| f.get("blockReason")).is_some() {
            self.choice(0, out);
            self.chunks.chunk(0, json!({}), "content_filter".into(), out);
            self.finished = true;
        }
    }
}

#[cfg(test)]
#[path = "openai_gemini_tests.rs"]
mod tests;

// ---- embeddings -------------------------------------------------------------------------------

/// An OpenAI `/v1/embeddings` request as Gemini's `batchEmbedContents` wants it (the model and
/// the method in the URL): one `EmbedContentRequest` per input text, `dimensions` as
/// `outputDimensionality`, and LiteLLM's `task_type` as `taskType`.
pub fn embeddings_request(body: &[u8], target: &Target<'_>) -> Result<(Translated, EmbeddingsAsk), ConversionError> {
    let (read, req) = openai_embeddings::read(body, target, PROVIDER, true, &["task_type"])?;
    let task_type = match present(&req, "task_type") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(ConversionError::InvalidField { param: "task_type", detail: "must be a string".into() }),
    };
    let model = format!("models/{}", target.model);
    let requests = read
        .inputs
        .iter()
        .map(|text| {
            let mut one = Map::new();
            one.insert("model".into(), Value::String(model.clone()));
            one.insert("content".into(), json!({"parts": [{"text": text}]}));
            if let Some(task_type) = &task_type {
                one.insert("taskType".into(), Value::String(task_type.clone()));
            }
            if let Some(dimensions) = read.dimensions {
                one.insert("outputDimensionality".into(), Value::from(dimensions));
            }
            Value::Object(one)
        })
        .collect();
    let mut out = Map::new();
    out.insert("requests".into(), Value::Array(requests));
    Ok((super::translated(out, read.dropped)?, read.ask))
}

/// A `BatchEmbedContentsResponse` (`{"embeddings": [{"values": […]}, …]}`) as OpenAI's list of
/// embeddings. Google's Gemini API reports no token counts for it: the usage is the gateway's
/// estimate of the input, unless the body has a `usageMetadata.promptTokenCount` (Vertex's
/// shape), which is then exact.
pub fn embeddings_response(body: &[u8], client_model: &str, ask: EmbeddingsAsk) -> Result<Vec<u8>, ConversionError> {
    let parsed = super::response_object(body)?;
    let embeddings =
        parsed.get("embeddings").and_then(Value::as_array).ok_or_else(|| bad_response("no embeddings array"))?;
    let vectors = embeddings
        .iter()
        .enumerate()
        .map(|(i, e)| e.get("values").ok_or_else(|| bad_response(format!("embeddings[{i}] has no values"))))
        .collect::<Result<Vec<_>, _>>()?;
    let prompt_tokens = parsed
        .get("usageMetadata")
        .and_then(|u| u.get("promptTokenCount"))
        .and_then(Value::as_u64)
        .unwrap_or(ask.prompt_estimate);
    openai_embeddings::answer(&vectors, client_model, ask.encoding, prompt_tokens)
}
