//! Google's Generative Language API (Gemini): `POST /v1beta/models/{model}:generateContent` and
//! `…:streamGenerateContent` (SSE with CRLF framing under `?alt=sse`, else one JSON array
//! streamed piece by piece, as Google sends it), `…:countTokens` (`{"totalTokens": n}`) and
//! `…:batchEmbedContents` (deterministic vectors, no token counts, as Google's), also under
//! `/v1/`. The model is the path's; the key is `x-goog-api-key` or `?key=`; errors are Google's
//! `{"error":{code,message,status}}`. The text, token counts and stream faults come from the
//! same deterministic generator and knobs as the other APIs. Vertex AI's Gemini paths (`vertex`)
//! are answered here too, without the key.

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::providers::{EVENT_STREAM, Gen, Reply};
use crate::request::{Received, Target};
use crate::{Config, Knobs};

/// Whether a path is Gemini's (everything under `/v1beta/`, and `/v1/models/…`), and what it
/// asks: `models/{model}:generateContent` (`stream` false) or `:streamGenerateContent`,
/// `:countTokens` or `:batchEmbedContents`; any other method, or a path without
/// `models/{model}:`, is Google's 404.
pub fn route(path: &str) -> Option<Target> {
    let rest = match path.strip_prefix("/v1beta/") {
        Some(rest) => rest,
        None => path.strip_prefix("/v1/").filter(|rest| rest.starts_with("models/"))?,
    };
    // A client may percent-encode the method's colon.
    let rest = rest.replace("%3A", ":").replace("%3a", ":");
    let Some((model, method)) = rest.strip_prefix("models/").and_then(|r| r.split_once(':')) else {
        return Some(Target::NotFound);
    };
    if model.contains('/') {
        return Some(Target::NotFound);
    }
    Some(method_target(model, method, true))
}

/// What `{model}:{method}` asks of a Gemini model; `embed` whether `batchEmbedContents` is
/// served there (Vertex AI embeds through another method, not served here).
pub fn method_target(model: &str, method: &str, embed: bool) -> Target {
    if model.is_empty() {
        return Target::NotFound;
    }
    let model = model.to_owned();
    match method {
        "generateContent" => Target::Model { model, stream: false },
        "streamGenerateContent" => Target::Model { model, stream: true },
        "countTokens" => Target::Count { model },
        "batchEmbedContents" if embed => Target::Embed { model },
        _ => Target::NotFound,
    }
}

/// Google's error envelope, its `status` name following the HTTP status.
pub fn error(status: StatusCode, message: &str) -> Reply {
    let name = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    Reply::json(status, &json!({"error": {"code": status.as_u16(), "message": message, "status": name}}))
}

fn invalid(message: &str) -> Reply {
    error(StatusCode::BAD_REQUEST, message)
}

/// Google's answer to a missing or wrong key (400, not 401), verbatim.
const KEY_INVALID: &str = "API key not valid. Please pass a valid API key.";
const NOT_FOUND: &str = "Requested entity was not found.";
const NO_CONTENTS: &str = "* GenerateContentRequest.contents: contents is not specified\n";

/// `GenerateContentRequest`'s fields, in both spellings proto's JSON accepts; any other is refused
/// as Google refuses it (an OpenAI field that leaked through a translation, say).
const FIELDS: &[&str] = &[
    "contents",
    "model",
    "tools",
    "toolConfig",
    "tool_config",
    "safetySettings",
    "safety_settings",
    "systemInstruction",
    "system_instruction",
    "generationConfig",
    "generation_config",
    "cachedContent",
    "cached_content",
];

/// The roles a content may have (none is also fine).
const ROLES: &[&str] = &["user", "model", "function"];

/// A field by its JSON name or its proto name.
fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

/// Google's checks of the body, in its words: an object of known fields with non-empty
/// `contents`, each with non-empty `parts` and a valid role.
fn check(request: &Value) -> Result<(), Reply> {
    let Some(object) = request.as_object() else {
        return Err(invalid("Invalid JSON payload received. Root element must be a message."));
    };
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(invalid(&format!("Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field.")));
    }
    let Some(contents) = object.get("contents").and_then(Value::as_array).filter(|c| !c.is_empty()) else {
        return Err(invalid(NO_CONTENTS));
    };
    for (i, content) in contents.iter().enumerate() {
        if content.get("parts").and_then(Value::as_array).is_none_or(|p| p.is_empty()) {
            return Err(invalid(&format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            )));
        }
        let role = content.get("role").and_then(Value::as_str).unwrap_or_default();
        if !role.is_empty() && !ROLES.contains(&role) {
            return Err(invalid("Please use a valid role: user, model."));
        }
    }
    Ok(())
}

/// Whether the request declares at least one function the model could call.
fn declares_functions(request: &Value) -> bool {
    request.get("tools").and_then(Value::as_array).is_some_and(|tools| {
        tools.iter().any(|tool| {
            field(tool, "functionDeclarations", "function_declarations")
                .and_then(Value::as_array)
                .is_some_and(|d| !d.is_empty())
        })
    })
}

/// The reply to one request on a Gemini path: a path it does not serve is a 404 whatever the
/// key; then the key (when one is configured), then [`answer`].
pub fn reply(target: &Target, received: &Received, knobs: &Knobs, config: &Config) -> Reply {
    if matches!(target, Target::NotFound) {
        return error(StatusCode::NOT_FOUND, NOT_FOUND);
    }
    let authorised = config
        .gemini_key
        .as_deref()
        .is_none_or(|k| received.header("x-goog-api-key") == Some(k) || received.query_values("key").next() == Some(k));
    if !authorised {
        return invalid(KEY_INVALID);
    }
    answer(target, received, knobs)
}

/// The answer to a request its caller has authorised (a Gemini key, a Vertex AI token).
pub fn answer(target: &Target, received: &Received, knobs: &Knobs) -> Reply {
    match target {
        Target::Model { model, stream } => generate(model, *stream, received, knobs),
        Target::Count { .. } => count(received, knobs),
        Target::Embed { model } => embed(model, received, knobs),
        Target::NotFound => error(StatusCode::NOT_FOUND, NOT_FOUND),
    }
}

/// The body as JSON; an empty body is an empty message (which then lacks its contents).
fn body(received: &Received) -> Result<Value, Reply> {
    let parsed = if received.body.iter().all(u8::is_ascii_whitespace) { Some(json!({})) } else { received.json() };
    parsed.ok_or_else(|| invalid("Invalid JSON payload received. Unexpected token."))
}

/// `:countTokens`: the prompt as `:generateContent` of the same request would count it (the
/// `prompt_tokens` knob, else the request's bytes by four), as `{"totalTokens": n}`. The request
/// is the body (`contents` and the rest, checked as a generation's), or the body's
/// `generateContentRequest`, whose bytes are then the ones counted.
fn count(received: &Received, knobs: &Knobs) -> Reply {
    let request = match body(received) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let (request, bytes) = match field(&request, "generateContentRequest", "generate_content_request") {
        Some(inner) => {
            if let Some(other) = request.as_object().and_then(|o| {
                o.keys().find(|k| !matches!(k.as_str(), "generateContentRequest" | "generate_content_request"))
            }) {
                return invalid(&format!(
                    "* CountTokensRequest: {other} and generateContentRequest cannot both be set.\n"
                ));
            }
            (inner.clone(), serde_json::to_vec(inner).map_or(0, |b| b.len()))
        }
        None => (request, received.body.len()),
    };
    if let Err(reply) = check(&request) {
        return reply;
    }
    if let Some((status, message)) = knobs.forced_error() {
        return error(status, &message);
    }
    if knobs.garbage {
        return Reply::garbage(false, b"", "application/json");
    }
    Reply::ok(&json!({"totalTokens": knobs.prompt_tokens.unwrap_or((bytes as u64).div_ceil(4))}))
}

/// `:generateContent` (`stream` false) or `:streamGenerateContent` by `model`.
fn generate(model: &str, stream: bool, received: &Received, knobs: &Knobs) -> Reply {
    let request = match body(received) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if let Err(reply) = check(&request) {
        return reply;
    }
    if let Some((status, message)) = knobs.forced_error() {
        return error(status, &message);
    }
    let sse = received.query_values("alt").next() == Some("sse");
    let content_type = if sse { EVENT_STREAM } else { "application/json" };
    if knobs.garbage {
        return Reply::garbage(stream, b"data: {not json\r\n\r\n", content_type);
    }
    // maxOutputTokens caps the answer, whether its length is the default or a knob's (0 is unset,
    // as in proto); an answer cut short ends with MAX_TOKENS.
    let cap = field(&request, "generationConfig", "generation_config")
        .and_then(|g| field(g, "maxOutputTokens", "max_output_tokens"))
        .and_then(Value::as_u64)
        .filter(|&m| m > 0);
    let (completion, cut) = knobs.capped_completion(cap);
    let finish = if cut { "MAX_TOKENS" } else { "STOP" };
    let gemini = Gemini { g: Gen::new(model.to_owned(), completion, received, knobs), finish };
    let tool = knobs.tool_call.as_deref().filter(|_| declares_functions(&request));
    match (stream, tool) {
        (false, Some(name)) => Reply::ok(&gemini.response(&[function_call(name)], true, completion)),
        (false, None) => {
            gemini.g.padded(|words| gemini.response(&[json!({"text": gemini.g.text(words)})], true, words))
        }
        (true, Some(name)) => {
            gemini.stream(vec![gemini.response(&[function_call(name)], true, completion)], sse, content_type)
        }
        (true, None) => gemini.stream(gemini.text_chunks(), sse, content_type),
    }
}

/// The function call the `x-mock-tool-call` knob asks for.
fn function_call(name: &str) -> Value {
    json!({"functionCall": {"name": name, "args": Knobs::tool_arguments()}})
}

struct Gemini {
    g: Gen,
    finish: &'static str,
}

impl Gemini {
    /// `usageMetadata` after `candidates` output tokens; thoughts come first, so they are all in.
    fn usage(&self, candidates: u64) -> Value {
        let (cached, thoughts) = (self.g.knobs.cached_tokens, self.g.knobs.reasoning_tokens);
        let mut usage = json!({
            "promptTokenCount": self.g.prompt,
            "candidatesTokenCount": candidates,
            "totalTokenCount": self.g.prompt + candidates + thoughts,
        });
        if cached > 0 {
            usage["cachedContentTokenCount"] = json!(cached);
        }
        if thoughts > 0 {
            usage["thoughtsTokenCount"] = json!(thoughts);
        }
        usage
    }

    /// A `GenerateContentResponse` with one candidate; `last` adds the finish reason.
    fn response(&self, parts: &[Value], last: bool, candidates: u64) -> Value {
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if last {
            candidate["finishReason"] = json!(self.finish);
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": self.usage(candidates),
            "modelVersion": self.g.model,
            "responseId": format!("mock-gemini-{}", self.g.id),
        })
    }

    /// The streamed text: `chunk_tokens` words a chunk with the usage so far, the last with the
    /// finish reason (an empty text if there are no words).
    fn text_chunks(&self) -> Vec<Value> {
        let mut pieces = self.g.chunks();
        if pieces.is_empty() {
            pieces.push((String::new(), 0));
        }
        let last = pieces.len() - 1;
        pieces
            .into_iter()
            .enumerate()
            .map(|(n, (text, so_far))| self.response(&[json!({"text": text})], n == last, so_far))
            .collect()
    }

    /// The chunks as SSE events (`data: …` and CRLF, no `event:`, no `[DONE]`) or, without
    /// `alt=sse`, as the pieces of one JSON array (the closing bracket with the last).
    fn stream(&self, chunks: Vec<Value>, sse: bool, content_type: &'static str) -> Reply {
        let count = chunks.len();
        let events = chunks
            .into_iter()
            .enumerate()
            .map(|(n, chunk)| {
                if sse {
                    format!("data: {chunk}\r\n\r\n").into_bytes()
                } else {
                    let open = if n == 0 { "[" } else { ",\r\n" };
                    let close = if n + 1 == count { "]" } else { "" };
                    format!("{open}{chunk}{close}").into_bytes()
                }
            })
            .collect();
        Reply::Stream { events, content_type }
    }
}

/// `batchEmbedContents`: Google's checks of the body (a non-empty `requests`, each for the
/// path's model, with text parts), then one vector a request, `outputDimensionality` long (8
/// unless asked), made of its text ([`embedding`]). Google reports no token counts here.
fn embed(model: &str, received: &Received, knobs: &Knobs) -> Reply {
    let Some(request) = received.json() else {
        return invalid("Invalid JSON payload received. Unexpected token.");
    };
    if let Some(unknown) = request.as_object().and_then(|o| o.keys().find(|k| k.as_str() != "requests")) {
        return invalid(&format!("Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."));
    }
    let Some(requests) = request.get("requests").and_then(Value::as_array).filter(|r| !r.is_empty()) else {
        return invalid("* BatchEmbedContentsRequest.requests: requests is not specified\n");
    };
    let wanted = format!("models/{model}");
    let mut vectors = Vec::with_capacity(requests.len());
    for (i, one) in requests.iter().enumerate() {
        if one.get("model").and_then(Value::as_str) != Some(wanted.as_str()) {
            return invalid(&format!(
                "* BatchEmbedContentsRequest.requests[{i}].model: the model in the request ({}) does not match the model in the URL ({wanted})",
                one.get("model").and_then(Value::as_str).unwrap_or_default()
            ));
        }
        let parts = one.pointer("/content/parts").and_then(Value::as_array).filter(|p| !p.is_empty());
        let Some(text) = parts.map(|p| p.iter().filter_map(|part| part.get("text")?.as_str()).collect::<String>())
        else {
            return invalid(&format!(
                "* BatchEmbedContentsRequest.requests[{i}].content.parts: contents.parts must not be empty.\n"
            ));
        };
        let dimensions =
            field(one, "outputDimensionality", "output_dimensionality").and_then(Value::as_u64).unwrap_or(8);
        vectors.push(json!({"values": embedding(&text, dimensions)}));
    }
    if let Some((status, message)) = knobs.forced_error() {
        return error(status, &message);
    }
    if knobs.garbage {
        return Reply::garbage(false, b"{\"embeddings\": [{\"values\": [0.1,", "application/json");
    }
    Reply::ok(&json!({"embeddings": vectors}))
}

/// A deterministic vector of `dimensions` values for `text`: eighths in [-1, 1) (exact in f32,
/// so base64 and float answers compare equal), from the text's bytes.
pub fn embedding(text: &str, dimensions: u64) -> Vec<f64> {
    let seed = text.bytes().fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let value = |i: u64| {
        let mut h = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i.wrapping_mul(0x632B_E59B_D9B4_E019));
        h ^= h >> 29;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 32;
        (h % 16) as f64 / 8.0 - 1.0
    };
    (0..dimensions.min(4096)).map(value).collect()
}
