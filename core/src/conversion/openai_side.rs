//! The OpenAI side of the translations for an OpenAI Chat Completions client (`openai_*`):
//! reading its request (parameters, messages, content parts, tool calls, tools, `tool_choice`,
//! `stop`) and writing what it gets back (`chat.completion`, `chat.completion.chunk`s and their
//! end, the usage, errors). What each provider makes of them stays in its own module.

use serde_json::{Map, Value, json};

use super::{ConversionError, Target, bad_response, invalid};
use crate::usage::Usage;

/// OpenAI parameters that mean nothing to a provider and are left out silently (LiteLLM does
/// the same): OpenAI-side storage and service settings.
/// And the gateway's own per-request settings (`request::GATEWAY_PARAMS`).
const IGNORED: &[&str] =
    &["store", "metadata", "service_tier", "stream_options", "parallel_tool_calls", "num_retries", "timeout", "cache"];

/// Left out silently too where the URL names the model and says whether it streams (Gemini,
/// Bedrock): those two, and `user`, which such a provider has no field for.
pub(super) const IGNORED_WITH_THE_MODEL_IN_THE_URL: &[&str] = &["model", "stream", "user"];

/// The parameters of `req` the provider cannot take (neither ignored nor `takes(name, value)`),
/// sorted: refused, or under `drop_params` returned, to be named in `Translated::dropped`.
pub(super) fn unsupported_params(
    provider: &'static str,
    req: &Map<String, Value>,
    target: &Target<'_>,
    takes: impl Fn(&str, &Value) -> bool,
) -> Result<Vec<String>, ConversionError> {
    let mut params: Vec<String> = req
        .iter()
        .filter(|(name, value)| !IGNORED.contains(&name.as_str()) && !takes(name, value))
        .map(|(name, _)| name.clone())
        .collect();
    params.sort();
    if !params.is_empty() && !target.drop_params {
        return Err(ConversionError::Unsupported { provider, params });
    }
    Ok(params)
}

/// A field the client sent, `null` counting as absent.
/// The tool a `response_format` JSON schema becomes for a provider with no JSON mode of its own
/// (Anthropic, Bedrock's Converse): the model is made to call it, and its input is the answer.
/// LiteLLM's name, so a client sees what it would see through LiteLLM.
pub const JSON_TOOL: &str = "json_tool_call";

/// The schema a `response_format` of type `json_schema` names, if it is one a tool can carry
/// (an object schema, given whole). `json_object` names none: such a provider cannot be held to
/// JSON without one, so it is refused (or dropped) like any parameter it cannot take, where
/// LiteLLM ignores it.
pub(super) fn response_schema(response_format: &Value) -> Option<&Value> {
    if response_format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return None;
    }
    response_format.get("json_schema")?.get("schema").filter(|s| s.is_object())
}

/// `schema` as a tool's input schema: an object, whatever else it says.
pub(super) fn object_schema(schema: &Value) -> Value {
    let mut input_schema = json!({"type": "object"});
    if let (Some(base), Some(given)) = (input_schema.as_object_mut(), schema.as_object()) {
        base.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    input_schema
}

/// The request's JSON schema answer, if it asked for one and `dropped` does not hold it.
pub(super) fn json_answer_schema<'a>(req: &'a Map<String, Value>, dropped: &[String]) -> Option<&'a Value> {
    present(req, "response_format")
        .and_then(response_schema)
        .filter(|_| !dropped.iter().any(|p| p == "response_format"))
}

pub(super) fn present<'a>(req: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    req.get(name).filter(|v| !v.is_null())
}

/// `max_completion_tokens`, else `max_tokens` (`null` counting as absent).
pub(super) fn max_tokens(req: &Map<String, Value>) -> Result<Option<u64>, ConversionError> {
    present(req, "max_completion_tokens")
        .or_else(|| present(req, "max_tokens"))
        .map(|v| v.as_u64().ok_or_else(|| invalid("max_tokens must be a non-negative integer")))
        .transpose()
}

/// `stop` as an array of stop sequences (a string is one); None when absent.
pub(super) fn stop_sequences(req: &Map<String, Value>) -> Result<Option<Value>, ConversionError> {
    match present(req, "stop") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(json!([s]))),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(Some(Value::Array(items.clone()))),
        Some(_) => Err(invalid("stop must be a string or an array of strings")),
    }
}

/// The numeric settings sent among `names` (OpenAI's name, the provider's), into `config`.
pub(super) fn copy_numbers(
    req: &Map<String, Value>,
    names: &[(&str, &str)],
    config: &mut Map<String, Value>,
) -> Result<(), ConversionError> {
    for (openai, theirs) in names {
        if let Some(value) = present(req, openai) {
            if !value.is_number() {
                return Err(invalid(format!("{openai} must be a number")));
            }
            config.insert((*theirs).into(), value.clone());
        }
    }
    Ok(())
}

/// Who wrote a message.
pub(super) enum Role {
    /// `system` or `developer`.
    System,
    User,
    Assistant,
    Tool,
}

/// The role of `messages[i]`.
fn role(message: &Value, i: usize) -> Result<Role, ConversionError> {
    let role =
        message.get("role").and_then(Value::as_str).ok_or_else(|| invalid(format!("messages[{i}].role is missing")))?;
    match role {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" => Ok(Role::Tool),
        other => Err(invalid(format!("messages[{i}].role {other:?} is not supported"))),
    }
}

/// A conversation in a provider's terms: the system messages' content, and the turns (each a
/// role and its content), consecutive turns of one role merged (the providers want them
/// alternating).
pub(super) type Conversation = (Vec<Value>, Vec<(&'static str, Vec<Value>)>);

/// `messages` in a provider's terms: each message's content as `convert` makes it, with the
/// role of the turn it goes in (None: the system's). `skip_empty`: a turn with no content is
/// left out.
pub(super) fn conversation(
    messages: &[Value],
    skip_empty: bool,
    mut convert: impl FnMut(Role, &Value, usize) -> Result<(Option<&'static str>, Vec<Value>), ConversionError>,
) -> Result<Conversation, ConversionError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        match convert(role(message, i)?, message, i)? {
            (None, content) => system.extend(content),
            (Some(_), content) if skip_empty && content.is_empty() => {}
            (Some(role), content) => match turns.last_mut() {
                Some((last, existing)) if *last == role => existing.extend(content),
                _ => turns.push((role, content)),
            },
        }
    }
    Ok((system, turns))
}

/// A part of a message's `content`.
pub(super) enum Part<'a> {
    Text(&'a str),
    /// An `image_url` part's URL (`image_url.url`, or `image_url` itself as a string).
    ImageUrl(&'a str),
    /// Any other part: its `type`, and the part.
    Other(Option<&'a str>, &'a Value),
}

/// The parts of a message's `content` (a string: one text part; absent or `null`: none), each
/// as `map` makes it, in order.
pub(super) fn map_content<'a, T>(
    content: Option<&'a Value>,
    i: usize,
    mut map: impl FnMut(Part<'a>) -> Result<T, ConversionError>,
) -> Result<Vec<T>, ConversionError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![map(Part::Text(text))?]),
        Some(Value::Array(parts)) => parts.iter().map(|part| map(part_of(part, i)?)).collect(),
        Some(_) => Err(invalid(format!("messages[{i}].content must be a string or an array"))),
    }
}

fn part_of(part: &Value, i: usize) -> Result<Part<'_>, ConversionError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Part::Text(part.get("text").and_then(Value::as_str).unwrap_or_default())),
        Some("image_url") => part
            .get("image_url")
            .and_then(|u| u.get("url").or(Some(u)))
            .and_then(Value::as_str)
            .map(Part::ImageUrl)
            .ok_or_else(|| invalid(format!("messages[{i}]: image_url.url is missing"))),
        other => Ok(Part::Other(other, part)),
    }
}

/// The refusal of a content part `provider` cannot take.
pub(super) fn unsupported_part(kind: Option<&str>, provider: &str, i: usize) -> ConversionError {
    invalid(format!("messages[{i}]: content part type {kind:?} is not supported for {provider}"))
}

/// A `data:<media type>;base64,<data>` URL's media type and data.
pub(super) fn base64_data_url(rest: &str, i: usize) -> Result<(&str, &str), ConversionError> {
    let (meta, data) = rest.split_once(',').ok_or_else(|| invalid(format!("messages[{i}]: malformed data URL")))?;
    let media_type = meta
        .strip_suffix(";base64")
        .ok_or_else(|| invalid(format!("messages[{i}]: only base64 data URLs are supported")))?;
    Ok((media_type, data))
}

/// An assistant message's `tool_calls` (absent or `null`: none).
pub(super) fn tool_calls(message: &Value, i: usize) -> Result<&[Value], ConversionError> {
    match message.get("tool_calls") {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(calls)) => Ok(calls),
        Some(_) => Err(invalid(format!("messages[{i}].tool_calls must be an array"))),
    }
}

/// A tool call's `function`.
pub(super) fn function_of(call: &Value, i: usize) -> Result<&Value, ConversionError> {
    call.get("function").ok_or_else(|| invalid(format!("messages[{i}]: tool call without function")))
}

/// A tool call's `arguments`, parsed (absent or blank: `{}`).
pub(super) fn arguments_of(function: &Value, i: usize) -> Result<Value, ConversionError> {
    let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or("{}");
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(arguments)
        .map_err(|e| invalid(format!("messages[{i}]: tool call arguments are not JSON: {e}")))
}

/// A tool call's function name and arguments, for a provider that needs a name and an object.
pub(super) fn named_call(call: &Value, i: usize) -> Result<(&str, Value), ConversionError> {
    let function = function_of(call, i)?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("messages[{i}]: tool call without a function name")))?;
    let arguments = arguments_of(function, i)?;
    if !arguments.is_object() {
        return Err(invalid(format!("messages[{i}]: tool call arguments must be a JSON object")));
    }
    Ok((name, arguments))
}

/// A tool message's `tool_call_id`.
pub(super) fn tool_call_id(message: &Value, i: usize) -> Result<&str, ConversionError> {
    message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("messages[{i}].tool_call_id is missing")))
}

/// The text of a tool message's `content`: a string, or text parts joined.
pub(super) fn tool_message_text(message: &Value, i: usize) -> Result<String, ConversionError> {
    match message.get("content") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(piece)) => text.push_str(piece),
                    _ => return Err(invalid(format!("messages[{i}]: a tool message's content parts must be text"))),
                }
            }
            Ok(text)
        }
        Some(_) => Err(invalid(format!("messages[{i}].content must be a string or an array"))),
    }
}

/// A function the client declared in `tools`.
pub(super) struct FunctionTool<'a> {
    pub(super) name: &'a str,
    /// The description, when it is a string.
    pub(super) description: Option<&'a Value>,
    /// `parameters` as sent (`null` included).
    pub(super) parameters: Option<&'a Value>,
}

/// The client's `tools`, in order. `only_functions_for`: the provider's name, when a tool whose
/// `type` is not `function` is refused.
pub(super) fn function_tools<'a>(
    tools: &'a Value,
    only_functions_for: Option<&str>,
) -> Result<Vec<FunctionTool<'a>>, ConversionError> {
    let tools = tools.as_array().ok_or_else(|| invalid("tools must be an array"))?;
    tools
        .iter()
        .map(|tool| {
            if let Some(provider) = only_functions_for {
                let kind = tool.get("type").and_then(Value::as_str).unwrap_or("function");
                if kind != "function" {
                    return Err(invalid(format!("tools[].type {kind:?} is not supported for {provider}")));
                }
            }
            let function = tool.get("function").ok_or_else(|| invalid("tools[].function is missing"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tools[].function.name is missing"))?;
            Ok(FunctionTool {
                name,
                description: function.get("description").filter(|d| d.is_string()),
                parameters: function.get("parameters"),
            })
        })
        .collect()
}

/// What the client's `tool_choice` asks for.
pub(super) enum ToolChoice<'a> {
    Auto,
    /// `none`.
    NoCalls,
    Required,
    /// That function.
    Function(&'a str),
}

/// The client's `tool_choice` (present: not `null`).
pub(super) fn tool_choice(choice: &Value) -> Result<ToolChoice<'_>, ConversionError> {
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::NoCalls),
            "required" => Ok(ToolChoice::Required),
            other => Err(invalid(format!("tool_choice {other:?} is not auto, none or required"))),
        },
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(ToolChoice::Function)
            .ok_or_else(|| invalid("tool_choice.function.name is missing")),
        _ => Err(invalid("tool_choice must be a string or an object")),
    }
}

/// The id of an answer: the provider's, or (none, or empty) `prefix` and a digest of the answer,
/// so the same answer always gets the same id.
pub(super) fn id_or_digest(id: Option<&str>, prefix: &str, raw: &[u8]) -> String {
    id.filter(|id| !id.is_empty()).map_or_else(|| format!("{prefix}{:08x}", crc32fast::hash(raw)), str::to_owned)
}

/// An OpenAI tool call; its `arguments`: `input` as JSON text (absent: `{}`).
pub(super) fn tool_call(id: Value, name: Value, input: Option<&Value>) -> Value {
    json!({
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": input.map_or_else(|| "{}".to_owned(), Value::to_string)},
    })
}

/// An assistant message: its text (`null` when it only calls tools), then its tool calls.
pub(super) fn assistant_message(text: String, tool_calls: Vec<Value>) -> Value {
    let content = if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::from(text) };
    let mut message = json!({"role": "assistant", "content": content});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    message
}

/// A choice of a `chat.completion`.
pub(super) fn choice(index: u64, message: Value, finish_reason: Value) -> Value {
    json!({"index": index, "message": message, "finish_reason": finish_reason})
}

/// A `chat.completion` for the client, who asked for `client_model`.
pub(super) fn completion(
    id: Value,
    created_unix_secs: u64,
    client_model: &str,
    choices: Vec<Value>,
    usage: Value,
) -> Result<Vec<u8>, ConversionError> {
    let out = json!({
        "id": id,
        "object": "chat.completion",
        "created": created_unix_secs,
        "model": client_model,
        "choices": choices,
        "usage": usage,
    });
    serde_json::to_vec(&out).map_err(|e| bad_response(e.to_string()))
}

/// A [`Usage`]'s fields every OpenAI usage has: `cached_tokens` are the cache reads.
fn usage_fields(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens(),
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
    })
}

/// A [`Usage`] in OpenAI's shape, with the Anthropic-style cache fields LiteLLM adds (Anthropic,
/// Bedrock: providers that bill cache writes).
pub(super) fn usage_with_cache_fields(usage: &Usage) -> Value {
    let mut out = usage_fields(usage);
    out["cache_creation_input_tokens"] = Value::from(usage.cache_write_tokens);
    out["cache_read_input_tokens"] = Value::from(usage.cached_prompt_tokens);
    out
}

/// A [`Usage`] in OpenAI's shape, with the reasoning tokens (Gemini's thoughts).
pub(super) fn usage_with_reasoning(usage: &Usage) -> Value {
    let mut out = usage_fields(usage);
    out["completion_tokens_details"] = json!({"reasoning_tokens": usage.reasoning_tokens});
    out
}

/// An error body in OpenAI's shape.
pub(super) fn error_body(message: &str, kind: &str, code: Option<&str>) -> Vec<u8> {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}}).to_string().into_bytes()
}

/// A delta that opens tool call `index` (its arguments follow in fragments).
pub(super) fn tool_call_opened(index: u64, id: Value, name: Value) -> Value {
    json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]})
}

/// A delta with a fragment of tool call `index`'s arguments.
pub(super) fn tool_call_arguments(index: u64, fragment: Value) -> Value {
    json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
}

/// The provider's block index of each tool call streamed so far: a call's OpenAI index is its
/// place in the list.
#[derive(Debug, Default)]
pub(super) struct ToolCallIndexes(Vec<u64>);

impl ToolCallIndexes {
    /// The OpenAI index of a new tool call, the provider's block `block`.
    pub(super) fn open(&mut self, block: u64) -> u64 {
        self.0.push(block);
        self.0.len() as u64 - 1
    }

    /// The OpenAI index of the tool call in block `block`, if one opened there.
    pub(super) fn of(&self, block: u64) -> Option<u64> {
        self.0.iter().position(|b| *b == block).map(|p| p as u64)
    }
}

/// The `chat.completion.chunk`s going out to the client: what every chunk carries, and the end
/// of the stream (`data: [DONE]`, once).
#[derive(Debug)]
pub(super) struct Chunks {
    /// The completion's id, in every chunk.
    pub(super) id: String,
    client_model: String,
    created: u64,
    /// The client asked for `stream_options.include_usage`: a last chunk carries the usage.
    include_usage: bool,
    /// `[DONE]` was sent: nothing more goes out.
    pub(super) done: bool,
}

impl Chunks {
    pub(super) fn new(id: String, client_model: &str, created_unix_secs: u64, include_usage: bool) -> Self {
        Self { id, client_model: client_model.to_owned(), created: created_unix_secs, include_usage, done: false }
    }

    /// A chunk of choice `index`: its delta, and its finish reason (`null` until it finishes).
    pub(super) fn chunk(&self, index: u64, delta: Value, finish_reason: Value, out: &mut Vec<u8>) {
        self.push(json!([{"index": index, "delta": delta, "finish_reason": finish_reason}]), None, out);
    }

    /// The first chunk of choice `index`: the role.
    pub(super) fn role(&self, index: u64, out: &mut Vec<u8>) {
        self.chunk(index, json!({"role": "assistant", "content": ""}), Value::Null, out);
    }

    /// The usage chunk (no choices), if the client asked for it.
    pub(super) fn usage(&self, usage: Value, out: &mut Vec<u8>) {
        if self.include_usage {
            self.push(json!([]), Some(usage), out);
        }
    }

    fn push(&self, choices: Value, usage: Option<Value>, out: &mut Vec<u8>) {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.client_model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        push_data(out, chunk.to_string().as_bytes());
    }

    /// The end of the stream, once: `data: [DONE]`.
    pub(super) fn end(&mut self, out: &mut Vec<u8>) {
        if !self.done {
            self.done = true;
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
    }

    /// The stream failed: the client gets `error` (a body in OpenAI's shape), then the end.
    pub(super) fn fail(&mut self, error: &[u8], out: &mut Vec<u8>) {
        if !self.done {
            push_data(out, error);
            self.end(out);
        }
    }
}

fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}
