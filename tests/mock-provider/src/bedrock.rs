//! AWS Bedrock's Converse API: `POST /model/{modelId}/converse` (JSON) and
//! `/model/{modelId}/converse-stream` (AWS's binary event stream,
//! `application/vnd.amazon.eventstream`), and InvokeModel (`/model/{modelId}/invoke`) for the
//! Amazon Titan and Cohere embedding models (their own bodies; deterministic vectors). The model id is the path's, percent-decoded (an ARN or
//! a version's colon arrives encoded); SigV4 is checked for presence and shape (the configured
//! access key id, the `bedrock` service, `x-amz-date`), not verified; errors are AWS's
//! `{"message":…}` with the exception's name in `x-amzn-ErrorType`. The text, token counts and
//! stream faults come from the same deterministic generator and knobs as the other APIs.

use hyper::StatusCode;
use hyper::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::providers::{Gen, Reply, next_id};
use crate::request::{Received, Target};
use crate::{Config, Knobs};

/// The content type of a Converse stream.
pub const AMAZON_EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// Whether a path is Bedrock runtime's (everything under `/model/`), and what it asks:
/// `/model/{modelId}/converse` (`stream` false) or `/model/{modelId}/converse-stream`, or
/// `/model/{modelId}/invoke` of an embedding model. Any other operation (count-tokens…, invoke
/// of another model), an empty or undecodable model id, or an id with an unencoded `/` (AWS
/// routes it as another operation) is not found.
pub fn route(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/model/")?;
    let Some((raw, operation)) = rest.split_once('/') else {
        return Some(Target::NotFound);
    };
    let stream = match operation {
        "converse" => false,
        "converse-stream" => true,
        // InvokeModel: the mock serves the embedding models' bodies only.
        "invoke" => {
            return match percent_decode(raw) {
                Some(model) if embed_kind(&model).is_some() => Some(Target::Embed { model }),
                _ => Some(Target::NotFound),
            };
        }
        _ => return Some(Target::NotFound),
    };
    match percent_decode(raw) {
        Some(model) if !model.is_empty() => Some(Target::Model { model, stream }),
        _ => Some(Target::NotFound),
    }
}

/// `%XX` escapes decoded (to UTF-8); None if an escape is malformed or the result is not UTF-8.
pub fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A Bedrock reply and, for an error, the exception name for `x-amzn-ErrorType`.
pub struct Answer {
    pub reply: Reply,
    pub error_type: Option<&'static str>,
}

/// AWS's headers on every answer: a request id, and an error's exception name.
pub fn add_headers(error_type: Option<&'static str>, headers: &mut HeaderMap) {
    let request_id = format!("00000000-0000-4000-8000-{:012x}", next_id());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert("x-amzn-requestid", value);
    }
    if let Some(error_type) = error_type {
        headers.insert("x-amzn-errortype", HeaderValue::from_static(error_type));
    }
}

fn aws_error(status: StatusCode, error_type: &'static str, message: &str) -> Answer {
    Answer { reply: Reply::json(status, &json!({"message": message})), error_type: Some(error_type) }
}

fn invalid(message: &str) -> Answer {
    aws_error(StatusCode::BAD_REQUEST, "ValidationException", message)
}

/// The exception AWS names for a status the `x-mock-status` knob asks for.
fn exception(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// AWS's answer to a missing or malformed signature, verbatim.
const BAD_TOKEN: &str = "The security token included in the request is invalid.";
const FIRST_USER: &str =
    "A conversation must start with a user message. Try again with a conversation that starts with a user message.";
const ALTERNATE: &str = "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.";

/// Whether the request carries a SigV4 signature for `key_id` and the `bedrock` service (its
/// shape only: the signature itself is not checked) and its `x-amz-date`.
fn signed(received: &Received, key_id: &str) -> bool {
    let Some(auth) = received.header("authorization") else { return false };
    auth.strip_prefix("AWS4-HMAC-SHA256 Credential=").and_then(|rest| rest.strip_prefix(key_id)).is_some_and(|rest| {
        rest.starts_with('/')
            && rest.contains("/bedrock/aws4_request")
            && rest.contains("SignedHeaders=")
            && rest.contains("Signature=")
    }) && received.header("x-amz-date").is_some_and(|d| !d.trim().is_empty())
}

/// AWS's checks of `messages`, in its words: present, non-empty, each a user or assistant
/// message with non-empty content, starting with the user and alternating.
fn check(request: &Value) -> Result<(), Answer> {
    if !request.is_object() {
        return Err(invalid("Malformed input request, please reformat your input and try again."));
    }
    let Some(messages) = request.get("messages").filter(|m| !m.is_null()) else {
        return Err(invalid(
            "1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null",
        ));
    };
    let Some(messages) = messages.as_array() else {
        return Err(invalid("Malformed input request, please reformat your input and try again."));
    };
    if messages.is_empty() {
        return Err(invalid(FIRST_USER));
    }
    let mut previous = None;
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(invalid(&format!(
                "1 validation error detected: Value '{role}' at 'messages.{}.member.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]",
                i + 1
            )));
        }
        if message.get("content").and_then(Value::as_array).is_none_or(|c| c.is_empty()) {
            return Err(invalid(&format!(
                "The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the content field and try again."
            )));
        }
        if previous.is_none() && role != "user" {
            return Err(invalid(FIRST_USER));
        }
        if previous == Some(role) {
            return Err(invalid(ALTERNATE));
        }
        previous = Some(role);
    }
    Ok(())
}

/// Whether the request declares at least one tool the model could use.
fn declares_tools(request: &Value) -> bool {
    request.pointer("/toolConfig/tools").and_then(Value::as_array).is_some_and(|tools| !tools.is_empty())
}

/// The reply to one request on a path under `/model/`.
pub fn reply(target: &Target, received: &Received, knobs: &Knobs, config: &Config) -> Answer {
    if matches!(target, Target::NotFound) {
        return aws_error(StatusCode::NOT_FOUND, "UnknownOperationException", "Unknown operation");
    }
    if config.aws_access_key_id.as_deref().is_some_and(|key_id| !signed(received, key_id)) {
        return aws_error(StatusCode::FORBIDDEN, "UnrecognizedClientException", BAD_TOKEN);
    }
    let (model, stream) = match target {
        Target::Model { model, stream } => (model, stream),
        Target::Embed { model } => return embed(model, received, knobs),
        // Bedrock's route names no count.
        Target::Count { .. } | Target::NotFound => {
            return aws_error(StatusCode::NOT_FOUND, "UnknownOperationException", "Unknown operation");
        }
    };
    let Some(request) = received.json() else {
        return invalid("Malformed input request, please reformat your input and try again.");
    };
    if let Err(answer) = check(&request) {
        return answer;
    }
    if let Some((status, message)) = knobs.forced_error() {
        return aws_error(status, exception(status), &message);
    }
    if knobs.garbage {
        return Answer {
            reply: Reply::garbage(*stream, b"this is not an event stream", AMAZON_EVENT_STREAM),
            error_type: None,
        };
    }
    // inferenceConfig.maxTokens caps the answer, whether its length is the default or a knob's;
    // an answer cut short stops with max_tokens.
    let cap = request.pointer("/inferenceConfig/maxTokens").and_then(Value::as_u64);
    let (completion, cut) = knobs.capped_completion(cap);
    // A tool the request forces (`toolChoice.tool`) is called, as Claude on Bedrock does; else
    // the knob's, when the request declares tools.
    let forced = request.pointer("/toolConfig/toolChoice/tool/name").and_then(Value::as_str);
    let tool = forced.or_else(|| knobs.tool_call.as_deref().filter(|_| declares_tools(&request)));
    let stop = match (tool, cut) {
        (Some(_), _) => "tool_use",
        (None, true) => "max_tokens",
        (None, false) => "end_turn",
    };
    let converse = Converse { g: Gen::new(model.clone(), completion, received, knobs), stop };
    let reply = match (*stream, tool) {
        (false, Some(name)) => {
            Reply::ok(&converse.body(json!([{"toolUse": converse.tool_use(name, true)}]), completion))
        }
        (false, None) => converse.g.padded(|words| converse.body(json!([{"text": converse.g.text(words)}]), words)),
        (true, Some(name)) => converse.tool_stream(name),
        (true, None) => converse.text_stream(),
    };
    Answer { reply, error_type: None }
}

/// The padding AWS adds to every event's payload (its length varies there; a short one here).
const PAD: &str = "abcdefghijkl";

/// Latency reported in `metrics` (the knob's delay is the server's, not the model's).
const LATENCY_MS: u64 = 12;

struct Converse {
    g: Gen,
    stop: &'static str,
}

impl Converse {
    /// Bedrock's usage: `x-mock-prompt-tokens` counts cache reads and writes, `inputTokens` does
    /// not (as Bedrock reports it); the total counts everything.
    fn usage(&self, output: u64) -> Value {
        let (read, write) = (self.g.knobs.cached_tokens, self.g.knobs.cache_write_tokens);
        let input = self.g.prompt.saturating_sub(read + write);
        json!({
            "inputTokens": input,
            "outputTokens": output,
            "totalTokens": input + read + write + output,
            "cacheReadInputTokens": read,
            "cacheWriteInputTokens": write,
        })
    }

    fn tool_use(&self, name: &str, with_input: bool) -> Value {
        let mut tool_use = json!({"toolUseId": format!("tooluse_{}", self.g.id), "name": name});
        if with_input {
            tool_use["input"] = Knobs::tool_arguments();
        }
        tool_use
    }

    fn body(&self, content: Value, output: u64) -> Value {
        json!({
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": self.stop,
            "usage": self.usage(output),
            "metrics": {"latencyMs": LATENCY_MS},
        })
    }

    /// messageStart, then the events of the content block, contentBlockStop, messageStop, metadata.
    fn stream(&self, block: Vec<(&'static str, Value)>) -> Reply {
        let mut events = vec![("messageStart", json!({"role": "assistant"}))];
        events.extend(block);
        events.extend([
            ("contentBlockStop", json!({"contentBlockIndex": 0})),
            ("messageStop", json!({"stopReason": self.stop})),
            ("metadata", json!({"usage": self.usage(self.g.completion), "metrics": {"latencyMs": LATENCY_MS}})),
        ]);
        let events = events
            .into_iter()
            .map(|(name, mut payload)| {
                payload["p"] = json!(PAD);
                frame(name, &serde_json::to_vec(&payload).unwrap_or_default())
            })
            .collect();
        Reply::Stream { events, content_type: AMAZON_EVENT_STREAM }
    }

    /// One contentBlockDelta per `chunk_tokens` words (none for an empty answer).
    fn text_stream(&self) -> Reply {
        let deltas = self
            .g
            .chunks()
            .into_iter()
            .map(|(text, _)| ("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": text}})));
        self.stream(deltas.collect())
    }

    /// The tool use opened by contentBlockStart, its input JSON in two pieces.
    fn tool_stream(&self, name: &str) -> Reply {
        let delta = |input: &str| {
            ("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": input}}}))
        };
        self.stream(vec![
            ("contentBlockStart", json!({"contentBlockIndex": 0, "start": {"toolUse": self.tool_use(name, false)}})),
            delta("{\"city\":"),
            delta("\"Paris\"}"),
        ])
    }
}

/// One event-stream message: the prelude (total and headers lengths, big-endian, and their
/// CRC32), the headers (`:event-type`, `:content-type`, `:message-type`, all strings), the
/// payload, and the CRC32 of everything before it.
pub fn frame(event_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut headers = Vec::new();
    for (name, value) in
        [(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")]
    {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.push(7);
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let total = 12 + headers.len() + payload.len() + 4;
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_be_bytes());
    message.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&message);
    message.extend_from_slice(&prelude_crc.to_be_bytes());
    message.extend_from_slice(&headers);
    message.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&message);
    message.extend_from_slice(&message_crc.to_be_bytes());
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_converse_paths_and_decodes_the_model() {
        let converse = |model: &str, stream| Some(Target::Model { model: model.to_owned(), stream });
        assert_eq!(
            route("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"),
            converse("anthropic.claude-3-5-sonnet-20240620-v1:0", false)
        );
        assert_eq!(route("/model/m/converse-stream"), converse("m", true));
        assert_eq!(
            route("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.m/converse"),
            converse("arn:aws:bedrock:us-east-1:1:inference-profile/us.m", false)
        );
        for path in ["/model/m/invoke", "/model//converse", "/model/m", "/model/a/b/converse", "/model/%zz/converse"] {
            assert_eq!(route(path), Some(Target::NotFound), "{path}");
        }
        assert_eq!(route("/v1/chat/completions"), None);
    }

    #[test]
    fn frames_carry_lengths_and_crcs() {
        let message = frame("metadata", b"{}");
        let total = u32::from_be_bytes([message[0], message[1], message[2], message[3]]) as usize;
        assert_eq!(total, message.len());
        let prelude_crc = u32::from_be_bytes([message[8], message[9], message[10], message[11]]);
        assert_eq!(prelude_crc, crc32fast::hash(&message[..8]));
        assert_eq!(&message[total - 6..total - 4], b"{}");
    }
}

/// The embedding models InvokeModel serves here, by their body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EmbedKind {
    TitanV1,
    TitanV2,
    Cohere,
}

fn embed_kind(model: &str) -> Option<EmbedKind> {
    if model.contains("amazon.titan-embed-text-v2") {
        Some(EmbedKind::TitanV2)
    } else if model.contains("amazon.titan-embed-text-v1") || model.contains("amazon.titan-embed-g1-text") {
        Some(EmbedKind::TitanV1)
    } else if model.contains("cohere.embed-") {
        Some(EmbedKind::Cohere)
    } else {
        None
    }
}

/// The fields a model's InvokeModel body may have (AWS refuses any other as extraneous).
fn embed_fields(kind: EmbedKind) -> &'static [&'static str] {
    match kind {
        EmbedKind::TitanV1 => &["inputText"],
        EmbedKind::TitanV2 => &["inputText", "dimensions", "normalize", "embeddingTypes"],
        EmbedKind::Cohere => &["texts", "input_type", "truncate", "embedding_types", "images"],
    }
}

const COHERE_INPUT_TYPES: &[&str] = &["search_document", "search_query", "classification", "clustering"];

/// InvokeModel of an embedding model: AWS's checks of the model's body, then Titan's one vector
/// (`dimensions` long, 1024 unless asked; its input counted, `x-mock-prompt-tokens` or the
/// text's bytes by four) or Cohere's one per text (8 values, no count, the texts echoed).
fn embed(model: &str, received: &Received, knobs: &Knobs) -> Answer {
    const MALFORMED: &str = "Malformed input request, please reformat your input and try again.";
    let Some(kind) = embed_kind(model) else {
        return aws_error(StatusCode::NOT_FOUND, "ResourceNotFoundException", "Could not resolve the foundation model");
    };
    let Some(request) = received.json().filter(Value::is_object) else {
        return invalid(MALFORMED);
    };
    if let Some(extra) = request.as_object().and_then(|o| o.keys().find(|k| !embed_fields(kind).contains(&k.as_str())))
    {
        return invalid(&format!(
            "Malformed input request: extraneous key [{extra}] is not permitted, please reformat your input and try again."
        ));
    }
    if let Some((status, message)) = knobs.forced_error() {
        return aws_error(status, exception(status), &message);
    }
    if knobs.garbage {
        return Answer { reply: Reply::garbage(false, b"", "application/json"), error_type: None };
    }
    let reply = match kind {
        EmbedKind::TitanV1 | EmbedKind::TitanV2 => {
            let Some(text) = request.get("inputText").and_then(Value::as_str).filter(|t| !t.is_empty()) else {
                return invalid(
                    "Malformed input request: #: required key [inputText] not found, please reformat your input and try again.",
                );
            };
            let dimensions = match request.get("dimensions").map(Value::as_u64) {
                None => 1024,
                Some(Some(d @ (256 | 512 | 1024))) => d,
                Some(_) => {
                    return invalid(
                        "Malformed input request: #/dimensions: 256, 512 or 1024 expected, please reformat your input and try again.",
                    );
                }
            };
            let count = knobs.prompt_tokens.unwrap_or((text.len() as u64).div_ceil(4));
            json!({"embedding": crate::gemini::embedding(text, dimensions), "inputTextTokenCount": count})
        }
        EmbedKind::Cohere => {
            let texts: Option<Vec<&str>> = request
                .get("texts")
                .and_then(Value::as_array)
                .filter(|t| !t.is_empty() && t.len() <= 96)
                .and_then(|t| t.iter().map(Value::as_str).collect());
            let Some(texts) = texts else {
                return invalid(MALFORMED);
            };
            let input_type = request.get("input_type").and_then(Value::as_str).unwrap_or_default();
            if !COHERE_INPUT_TYPES.contains(&input_type) {
                return invalid(
                    "Malformed input request: #/input_type: input_type is required and must be one of search_document, search_query, classification, clustering",
                );
            }
            let vectors: Vec<Vec<f64>> = texts.iter().map(|t| crate::gemini::embedding(t, 8)).collect();
            json!({"embeddings": vectors, "id": format!("mock-cohere-{}", next_id()), "response_type": "embeddings_floats", "texts": texts})
        }
    };
    Answer { reply: Reply::ok(&reply), error_type: None }
}
