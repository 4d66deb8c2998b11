//! An OpenAI Chat Completions client in front of a Google Gemini deployment (the Generative
//! Language API's `generateContent`; Google's API reference and LiteLLM's mapping are the spec):
//!
//! - [`request`]: `/v1/chat/completions` body → `GenerateContentRequest` (the model, and whether
//!   it streams, go in the URL path, not the body);
//! - [`response`]: a `GenerateContentResponse` → a `chat.completion`; [`usage_of`]: its usage;
//! - [`StreamTranslator`]: `streamGenerateContent?alt=sse` events → `chat.completion.chunk`s as
//!   they arrive, then `data: [DONE]`;
//! - [`error`]: Gemini's error body → OpenAI's.
//!
//! Gemini 3 refuses a conversation whose earlier function calls come back without the
//! `thoughtSignature` it attached to them; an OpenAI client keeps nothing but the tool call id,
//! so the signature travels in it (`<id>__thought__<signature>`, LiteLLM's convention) and is
//! put back on the `functionCall` part when the client sends the turn again.

use serde_json::{Map, Value, json};

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

/// OpenAI parameters left out silently: the model and streaming are in the URL, the rest are
/// OpenAI-side settings that change nothing the provider does. Anything else is unsupported:
/// refused, or dropped under `drop_params`.
const IGNORED: &[&str] =
    &["model", "stream", "stream_options", "user", "metadata", "store", "parallel_tool_calls", "service_tier"];

/// Between a tool call id and the Gemini thought signature carried in it.
const THOUGHT_SEPARATOR: &str = "__thought__";

/// A field the client sent, `null` counting as absent.
fn present<'a>(req: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    req.get(name).filter(|v| !v.is_null())
}

/// The request an OpenAI client sent, as Gemini's `generateContent` wants it.
pub fn request(body: &[u8], target: &Target<'_>) -> Result<Translated, ConversionError> {
    let parsed: Value = serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    let req = parsed.as_object().ok_or_else(|| invalid("the request body must be an object"))?;

    let mut dropped: Vec<String> = req
        .keys()
        .filter(|name| !SUPPORTED.contains(&name.as_str()) && !IGNORED.contains(&name.as_str()))
        .cloned()
        .collect();
    dropped.sort();
    if !dropped.is_empty() && !target.drop_params {
        return Err(ConversionError::Unsupported { provider: PROVIDER, params: dropped });
    }

    let messages = req.get("messages").and_then(Value::as_array).ok_or_else(|| invalid("messages must be an array"))?;
    let (system, contents) = messages_to_gemini(messages)?;
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
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| invalid(e.to_string()))?;
    Ok(Translated { body, dropped })
}

/// System and developer messages become `systemInstruction`; the assistant is the `model`; tool
/// results are `functionResponse` parts of a user turn; consecutive turns of one role are
/// merged (Gemini wants them alternating).
fn messages_to_gemini(messages: &[Value]) -> Result<(Option<Value>, Vec<Value>), ConversionError> {
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("messages[{i}].role is missing")))?;
        let (role, parts) = match role {
            "system" | "developer" => {
                system.extend(content_parts(message.get("content"), i)?);
                continue;
            }
            "user" => ("user", content_parts(message.get("content"), i)?),
            "assistant" => ("model", assistant_parts(message, i)?),
            "tool" => ("user", vec![function_response(message, &messages[..i], i)?]),
            other => return Err(invalid(format!("messages[{i}].role {other:?} is not supported"))),
        };
        if parts.is_empty() {
            // An assistant turn with nothing in it: Gemini refuses a content without parts.
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    let contents = turns.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts})).collect();
    let system = (!system.is_empty()).then(|| json!({"parts": system}));
    Ok((system, contents))
}

/// A message's `content` (a string or an array of parts) as Gemini parts.
fn content_parts(content: Option<&Value>, i: usize) -> Result<Vec<Value>, ConversionError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({"text": text})]),
        Some(Value::Array(parts)) => parts.iter().map(|p| part_to_gemini(p, i)).collect(),
        Some(_) => Err(invalid(format!("messages[{i}].content must be a string or an array"))),
    }
}

fn part_to_gemini(part: &Value, i: usize) -> Result<Value, ConversionError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
            Ok(json!({"text": text}))
        }
        Some("image_url") => {
            let url = part
                .get("image_url")
                .and_then(|u| u.get("url").or(Some(u)))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("messages[{i}]: image_url.url is missing")))?;
            image_part(url, i)
        }
        Some("input_audio") => {
            let audio = part.get("input_audio");
            let field = |name: &str| audio.and_then(|a| a.get(name)).and_then(Value::as_str);
            match (field("data"), field("format")) {
                (Some(data), Some(format)) => {
                    Ok(json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}}))
                }
                _ => Err(invalid(format!("messages[{i}]: input_audio needs data and format"))),
            }
        }
        other => Err(invalid(format!("messages[{i}]: content part type {other:?} is not supported for Gemini"))),
    }
}

/// `data:<media type>;base64,<data>` → inline data; an http(s) URL → file data, its media type
/// guessed from the extension.
fn image_part(url: &str, i: usize) -> Result<Value, ConversionError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| invalid(format!("messages[{i}]: malformed data URL")))?;
        let mime_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| invalid(format!("messages[{i}]: only base64 data URLs are supported")))?;
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
    let calls = match message.get("tool_calls") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(calls)) => calls.as_slice(),
        Some(_) => return Err(invalid(format!("messages[{i}].tool_calls must be an array"))),
    };
    for call in calls {
        let function =
            call.get("function").ok_or_else(|| invalid(format!("messages[{i}]: tool call without function")))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("messages[{i}]: tool call without a function name")))?;
        let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or("{}");
        let args: Value = if arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(arguments)
                .map_err(|e| invalid(format!("messages[{i}]: tool call arguments are not JSON: {e}")))?
        };
        if !args.is_object() {
            return Err(invalid(format!("messages[{i}]: tool call arguments must be a JSON object")));
        }
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
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("messages[{i}].tool_call_id is missing")))?;
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
    // A JSON object result is the response as it is; anything else is wrapped in one.
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(object)) => Value::Object(object),
        _ => json!({"content": text}),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

fn function_declarations(tools: &Value) -> Result<Vec<Value>, ConversionError> {
    let tools = tools.as_array().ok_or_else(|| invalid("tools must be an array"))?;
    tools
        .iter()
        .map(|tool| {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or("function");
            if kind != "function" {
                return Err(invalid(format!("tools[].type {kind:?} is not supported for Gemini")));
            }
            let function = tool.get("function").ok_or_else(|| invalid("tools[].function is missing"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tools[].function.name is missing"))?;
            let mut declaration = json!({"name": name});
            if let Some(description) = function.get("description").filter(|d| d.is_string()) {
                declaration["description"] = description.clone();
            }
            if let Some(parameters) = function.get("parameters").filter(|p| !p.is_null()) {
                declaration["parameters"] = parameters.clone();
            }
            Ok(declaration)
        })
        .collect()
}

fn function_calling_config(choice: &Value) -> Result<Value, ConversionError> {
    match choice {
        Value::String(s) => match s.as_str() {
            "none" => Ok(json!({"mode": "NONE"})),
            "auto" => Ok(json!({"mode": "AUTO"})),
            "required" => Ok(json!({"mode": "ANY"})),
            other => Err(invalid(format!("tool_choice {other:?} is not auto, none or required"))),
        },
        Value::Object(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.function.name is missing"))?;
            Ok(json!({"mode": "ANY", "allowedFunctionNames": [name]}))
        }
        _ => Err(invalid("tool_choice must be a string or an object")),
    }
}

/// Sampling and output settings: `generationConfig` (no `maxOutputTokens` when the client sent
/// none: Gemini has its own default).
fn generation_config(req: &Map<String, Value>) -> Result<Map<String, Value>, ConversionError> {
    let mut config = Map::new();
    if let Some(max) = present(req, "max_completion_tokens").or_else(|| present(req, "max_tokens")) {
        let max = max.as_u64().ok_or_else(|| invalid("max_tokens must be a non-negative integer"))?;
        config.insert("maxOutputTokens".into(), Value::from(max));
    }
    for (openai, gemini) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(value) = present(req, openai) {
            if !value.is_number() {
                return Err(invalid(format!("{openai} must be a number")));
            }
            config.insert(gemini.into(), value.clone());
        }
    }
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
    parsed
        .get("responseId")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map_or_else(|| format!("gemini{:08x}", crc32fast::hash(raw)), str::to_owned)
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
    json!({
        "id": id,
        "type": "function",
        "function": {
            "name": call.and_then(|c| c.get("name")).and_then(Value::as_str).unwrap_or_default(),
            "arguments": call.and_then(|c| c.get("args")).filter(|a| !a.is_null()).map_or_else(|| "{}".to_owned(), Value::to_string),
        },
    })
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

fn usage_to_openai(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens(),
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    })
}

/// The usage of a complete `GenerateContentResponse`, or None if it is not JSON or has none.
pub fn usage_of(body: &[u8]) -> Option<Usage> {
    crate::usage::parse_response_usage(ApiFormat::Gemini, body)
}

/// A `GenerateContentResponse` as a `chat.completion` for the client, who asked for
/// `client_model`: one choice per candidate; a prompt Gemini blocked (no candidates) is an
/// empty, filtered answer.
pub fn response(body: &[u8], client_model: &str, created_unix_secs: u64) -> Result<Vec<u8>, ConversionError> {
    let parsed: Value = serde_json::from_slice(body).map_err(|e| bad_response(format!("not JSON: {e}")))?;
    if !parsed.is_object() {
        return Err(bad_response("not a JSON object"));
    }
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
        let had_calls = !tool_calls.is_empty();
        let content = if text.is_empty() && had_calls { Value::Null } else { Value::from(text) };
        let mut message = json!({"role": "assistant", "content": content});
        if had_calls {
            message["tool_calls"] = Value::Array(tool_calls);
        }
        let reason = candidate.get("finishReason").and_then(Value::as_str).unwrap_or("STOP");
        choices.push(json!({
            "index": candidate.get("index").and_then(Value::as_u64).unwrap_or(position as u64),
            "message": message,
            "finish_reason": finish_reason(Some(reason), had_calls),
        }));
    }
    if choices.is_empty() {
        if parsed.get("promptFeedback").and_then(|f| f.get("blockReason")).is_none() {
            return Err(bad_response("no candidates, and no promptFeedback.blockReason saying why"));
        }
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": ""},
            "finish_reason": "content_filter",
        }));
    }
    let out = json!({
        "id": format!("chatcmpl-{basis}"),
        "object": "chat.completion",
        "created": created_unix_secs,
        "model": client_model,
        "choices": choices,
        "usage": usage_to_openai(&gemini_usage(parsed.get("usageMetadata"))),
    });
    serde_json::to_vec(&out).map_err(|e| bad_response(e.to_string()))
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
        .map_or_else(|| format!("the provider answered: {}", String::from_utf8_lossy(body)), str::to_owned);
    let status = inner.and_then(|e| e.get("status")).and_then(Value::as_str);
    let kind = error_type(status, inner.and_then(|e| e.get("code")).and_then(Value::as_u64));
    json!({"error": {"message": message, "type": kind, "param": null, "code": status.unwrap_or(kind)}})
        .to_string()
        .into_bytes()
}

/// Turns Gemini's stream (`alt=sse`: each event a whole `GenerateContentResponse` chunk) into
/// OpenAI chunks as the events arrive: nothing is held back but an incomplete event.
#[derive(Debug)]
pub struct StreamTranslator {
    events: SseEvents,
    client_model: String,
    created: u64,
    /// The client asked for `stream_options.include_usage`: a last chunk carries the usage.
    include_usage: bool,
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
    /// `[DONE]` was sent: nothing more goes out.
    done: bool,
}

impl StreamTranslator {
    pub fn new(client_model: &str, created_unix_secs: u64, include_usage: bool) -> Self {
        Self {
            events: SseEvents::default(),
            client_model: client_model.to_owned(),
            created: created_unix_secs,
            include_usage,
            basis: None,
            usage: Usage::default(),
            choices: Vec::new(),
            calls: 0,
            finished: false,
            ended: false,
            done: false,
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
        if end_of_stream && !self.done {
            self.done = true;
            self.ended = true;
            if self.include_usage {
                let chunk = json!({
                    "id": self.id(),
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.client_model,
                    "choices": [],
                    "usage": usage_to_openai(&self.usage),
                });
                push_data(&mut out, &chunk);
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
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

    fn id(&self) -> String {
        match &self.basis {
            Some(basis) => format!("chatcmpl-{basis}"),
            None => format!("chatcmpl-gemini{}", self.created),
        }
    }

    fn chunk(&self, index: u64, delta: Value, finish: Value, out: &mut Vec<u8>) {
        let chunk = json!({
            "id": self.id(),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.client_model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        });
        push_data(out, &chunk);
    }

    /// The slot of candidate `index`, opened (and the role sent) on its first chunk.
    fn choice(&mut self, index: u64, out: &mut Vec<u8>) -> usize {
        if let Some(slot) = self.choices.iter().position(|(i, _)| *i == index) {
            return slot;
        }
        self.chunk(index, json!({"role": "assistant", "content": ""}), Value::Null, out);
        self.choices.push((index, 0));
        self.choices.len() - 1
    }

    fn translate(&mut self, event: &Event, out: &mut Vec<u8>) {
        if self.done {
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
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&error(event.data.as_bytes()));
            out.extend_from_slice(b"\n\n");
            out.extend_from_slice(b"data: [DONE]\n\n");
            self.done = true;
            return;
        }
        if self.basis.is_none() {
            self.basis = Some(id_basis(&data, event.data.as_bytes()));
        }
        let basis = self.basis.clone().unwrap_or_default();
        if let Some(meta) = data.get("usageMetadata").filter(|m| m.is_object()) {
            self.usage = gemini_usage(Some(meta));
        }
        let candidates = data.get("candidates").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for (position, candidate) in candidates.iter().enumerate() {
            let index = candidate.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
            let slot = self.choice(index, out);
            let (text, calls) = candidate_parts(candidate);
            if !text.is_empty() {
                self.chunk(index, json!({"content": text}), Value::Null, out);
            }
            for part in calls {
                let mut call = tool_call(part, &basis, self.calls);
                self.calls += 1;
                if let Some((_, sent)) = self.choices.get_mut(slot) {
                    call["index"] = Value::from(*sent);
                    *sent += 1;
                }
                self.chunk(index, json!({"tool_calls": [call]}), Value::Null, out);
            }
            if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
                let had_calls = self.choices.get(slot).is_some_and(|(_, sent)| *sent > 0);
                self.chunk(index, json!({}), finish_reason(Some(reason), had_calls), out);
                self.finished = true;
            }
        }
        if candidates.is_empty() && data.get("promptFeedback").and_then(|f| f.get("blockReason")).is_some() {
            self.choice(0, out);
            self.chunk(0, json!({}), "content_filter".into(), out);
            self.finished = true;
        }
    }
}

fn push_data(out: &mut Vec<u8>, value: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(value.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
#[path = "openai_gemini_tests.rs"]
mod tests;
