//! Google's Generative Language API (Gemini): `POST /v1beta/models/{model}:generateContent` and
//! `…:streamGenerateContent` (SSE with CRLF framing under `?alt=sse`, else one JSON array
//! streamed piece by piece, as Google sends it), also under `/v1/`. The model is the path's; the
//! key is `x-goog-api-key` or `?key=`; errors are Google's `{"error":{code,message,status}}`.
//! The text, token counts and stream faults come from the same deterministic generator and
//! knobs as the other APIs.

use std::collections::HashMap;

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::providers::{EVENT_STREAM, Gen, Reply, next_id, word};
use crate::{Config, Knobs};

/// What a Gemini path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `models/{model}:generateContent` (`stream` false) or `:streamGenerateContent`.
    Generate { model: String, stream: bool },
    /// Any other method, or a path without `models/{model}:`: Google's 404.
    NotFound,
}

impl Target {
    pub fn model(&self) -> Option<&str> {
        match self {
            Target::Generate { model, .. } => Some(model),
            Target::NotFound => None,
        }
    }

    pub fn stream(&self) -> bool {
        matches!(self, Target::Generate { stream: true, .. })
    }
}

/// Whether a path is Gemini's (everything under `/v1beta/`, and `/v1/models/…`), and what it asks.
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
    if model.is_empty() || model.contains('/') {
        return Some(Target::NotFound);
    }
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return Some(Target::NotFound),
    };
    Some(Target::Generate { model: model.to_owned(), stream })
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
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": name}});
    Reply::Json { status, body: serde_json::to_vec(&body).unwrap_or_default() }
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

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
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

/// The reply to one request on a Gemini path.
pub fn reply(
    target: &Target,
    query: Option<&str>,
    headers: &HashMap<String, String>,
    body: &[u8],
    knobs: &Knobs,
    config: &Config,
) -> Reply {
    let Target::Generate { model, stream } = target else {
        return error(StatusCode::NOT_FOUND, NOT_FOUND);
    };
    let authorised = config.gemini_key.as_deref().is_none_or(|k| {
        headers.get("x-goog-api-key").map(String::as_str) == Some(k) || query_param(query, "key") == Some(k)
    });
    if !authorised {
        return invalid(KEY_INVALID);
    }
    // An empty body is an empty message, which then lacks its contents.
    let parsed = if body.iter().all(u8::is_ascii_whitespace) { Ok(json!({})) } else { serde_json::from_slice(body) };
    let Ok(request) = parsed else {
        return invalid("Invalid JSON payload received. Unexpected token.");
    };
    if let Err(reply) = check(&request) {
        return reply;
    }
    if let Some(status) = knobs.status.and_then(|s| StatusCode::from_u16(s).ok()) {
        return error(status, &format!("mock error {}", status.as_u16()));
    }
    let sse = query_param(query, "alt") == Some("sse");
    let content_type = if sse { EVENT_STREAM } else { "application/json" };
    if knobs.garbage {
        return if *stream {
            Reply::Stream { events: vec![b"data: {not json\r\n\r\n".to_vec(); 3], content_type }
        } else {
            Reply::Json { status: StatusCode::OK, body: b"this is not json {{{".to_vec() }
        };
    }
    // maxOutputTokens caps the answer, whether its length is the default or a knob's (0 is unset,
    // as in proto); an answer cut short ends with MAX_TOKENS.
    let cap = field(&request, "generationConfig", "generation_config")
        .and_then(|g| field(g, "maxOutputTokens", "max_output_tokens"))
        .and_then(Value::as_u64)
        .filter(|&m| m > 0);
    let wanted = knobs.completion_tokens.unwrap_or(16);
    let completion = cap.map_or(wanted, |m| wanted.min(m));
    let finish = if completion < wanted { "MAX_TOKENS" } else { "STOP" };
    let g = Gen {
        model: model.clone(),
        prompt: knobs.prompt_tokens.unwrap_or((body.len() as u64).div_ceil(4)),
        completion,
        word: word(knobs),
        id: next_id(),
        knobs: knobs.clone(),
        include_usage: false,
    };
    let gemini = Gemini { g, finish };
    let tool = knobs.tool_call.as_deref().filter(|_| declares_functions(&request));
    match (*stream, tool) {
        (false, Some(name)) => gemini.full_json(gemini.response(&[function_call(name)], true, completion)),
        (false, None) => {
            let build = |words: u64| gemini.response(&[json!({"text": gemini.g.text(words)})], true, words);
            let words = gemini.g.words(|| serde_json::to_vec(&build(0)).map_or(0, |b| b.len()));
            gemini.full_json(build(words))
        }
        (true, Some(name)) => {
            gemini.stream(vec![gemini.response(&[function_call(name)], true, completion)], sse, content_type)
        }
        (true, None) => gemini.stream(gemini.text_chunks(), sse, content_type),
    }
}

/// The function call the `x-mock-tool-call` knob asks for.
fn function_call(name: &str) -> Value {
    json!({"functionCall": {"name": name, "args": {"city": "Paris"}}})
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

    fn full_json(&self, response: Value) -> Reply {
        Reply::Json { status: StatusCode::OK, body: serde_json::to_vec(&response).unwrap_or_default() }
    }

    /// The streamed text: `chunk_tokens` words a chunk with the usage so far, the last with the
    /// finish reason (an empty text if there are no words).
    fn text_chunks(&self) -> Vec<Value> {
        let step = self.g.knobs.chunk_tokens.max(1) as u64;
        let mut pieces = Vec::new();
        let mut i = 0;
        while i < self.g.completion {
            let end = (i + step).min(self.g.completion);
            pieces.push(((i..end).map(|w| self.g.piece(w)).collect::<String>(), end));
            i = end;
        }
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
