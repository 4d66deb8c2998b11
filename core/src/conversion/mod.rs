//! Translation between LLM API formats, one module per format pair (issue 11; the choice is in
//! ARCHITECTURE.md, "Translation between formats").
//!
//! - [`openai_anthropic`]: an OpenAI Chat Completions client in front of an Anthropic Messages
//!   deployment: the request there, the response, the stream and the errors back.
//! - [`openai_gemini`]: the same for a Google Gemini (`generateContent`) deployment.
//! - [`openai_bedrock`]: the same for an AWS Bedrock deployment (the Converse API).
//! - [`vertex`]: Claude on Vertex AI, Anthropic's format with the model in the path (Gemini on
//!   Vertex is Gemini's format as it is).
//!
//! An OpenAI `/v1/embeddings` client reaches Gemini (`batchEmbedContents`) and Bedrock
//! (InvokeModel: Amazon Titan and Cohere embedding models) through the same two modules
//! (`embeddings_request`, `embeddings_response`), the OpenAI side shared in
//! `openai_embeddings` ([`EmbeddingsAsk`]: what the answer must honour of the request).
//!
//! Each direction is a pure function of bytes (the stream: a state machine fed chunk by chunk)
//! with what it cannot know passed in ([`Target`]: the upstream model, the default
//! `max_tokens`, whether unsupported parameters are dropped; the creation time). Translation
//! builds `serde_json::Value`s: it runs only for a request whose client and deployment speak
//! different formats, so the OpenAI → OpenAI path keeps its byte splicing (`request.rs`).
//!
//! The filter runs it once per request today (`flow.rs`); with retries it moves to each
//! upstream attempt (the deployment that answers may change between attempts).

pub mod anthropic_openai;
mod aws_eventstream;
pub mod openai_anthropic;
pub mod openai_bedrock;
mod openai_embeddings;
pub mod openai_gemini;
mod openai_side;
mod sse_events;
#[cfg(test)]
mod test_support;
pub mod vertex;

pub use openai_embeddings::{EmbeddingsAsk, Encoding};
pub use openai_side::JSON_TOOL;
pub use sse_events::SseEvents;

use std::fmt;

use serde_json::{Map, Value};

/// What a translation needs to know about the deployment it translates for.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The deployment's own model name (`litellm_params.model` without its provider prefix).
    pub model: &'a str,
    /// `max_tokens` when the client sent none and the provider requires it (Anthropic).
    pub default_max_tokens: u64,
    /// LiteLLM's `drop_params`: a parameter the provider cannot take is dropped (and named in
    /// [`Translated::dropped`]) instead of refused.
    pub drop_params: bool,
}

/// A translated request body, and the client parameters left out under `drop_params`.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub body: Vec<u8>,
    pub dropped: Vec<String>,
    /// The client's `response_format` asked for JSON that the provider gives as a forced tool
    /// call ([`JSON_TOOL`]): its answer is translated back as the message's
    /// content.
    pub json_mode: bool,
}

/// Why a body could not be translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversionError {
    /// Not JSON, or not the shape the format requires (a client error: 400).
    InvalidRequest { detail: String },
    /// One field of the request is not what the format (or the provider) allows: a 400 naming it.
    InvalidField { param: &'static str, detail: String },
    /// Parameters the provider cannot take, without `drop_params` (400, named as LiteLLM does).
    Unsupported { provider: &'static str, params: Vec<String> },
    /// The provider's answer is not what its format promises (502: the provider's fault).
    InvalidResponse { detail: String },
}

impl fmt::Display for ConversionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidRequest { detail } => write!(f, "invalid request: {detail}"),
            Self::InvalidField { param, detail } => write!(f, "invalid {param}: {detail}"),
            Self::Unsupported { provider, params } => write!(
                f,
                "{provider} does not support parameters: {}. To drop them, set `litellm_settings.drop_params: true` \
                 (or `drop_params: true` in the deployment's litellm_params)",
                params.join(", ")
            ),
            Self::InvalidResponse { detail } => write!(f, "the provider's response could not be translated: {detail}"),
        }
    }
}

impl From<ConversionError> for crate::error::GatewayError {
    fn from(e: ConversionError) -> Self {
        match e {
            ConversionError::Unsupported { provider, params } => Self::UnsupportedParams { provider, params },
            ConversionError::InvalidField { param, detail } => Self::InvalidField { param, detail },
            ConversionError::InvalidRequest { detail } | ConversionError::InvalidResponse { detail } => {
                Self::Untranslatable { detail }
            }
        }
    }
}

/// The message and type of a provider's error body (`{"error": {"message", "type"}}`, the
/// shape both OpenAI and Anthropic use); a body without one is quoted as the message.
fn provider_error(body: &[u8]) -> (String, Option<String>) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let inner = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| inner.and_then(|e| e.get(name)).and_then(Value::as_str).map(str::to_owned);
    (field("message").unwrap_or_else(|| quoted_answer(body)), field("type"))
}

/// The message for an error body that says nothing readable: the body itself.
fn quoted_answer(body: &[u8]) -> String {
    format!("the provider answered: {}", String::from_utf8_lossy(body))
}

/// A request body, which must be a JSON object.
fn request_object(body: &[u8]) -> Result<Map<String, Value>, ConversionError> {
    match serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))? {
        Value::Object(req) => Ok(req),
        _ => Err(invalid("the request body must be an object")),
    }
}

/// A request's `messages` (OpenAI's and Anthropic's are both an array of that name).
fn messages(req: &Map<String, Value>) -> Result<&[Value], ConversionError> {
    req.get("messages").and_then(Value::as_array).map(Vec::as_slice).ok_or_else(|| invalid("messages must be an array"))
}

/// The translated request: `out` as the body, and the parameters dropped.
fn translated(out: Map<String, Value>, dropped: Vec<String>) -> Result<Translated, ConversionError> {
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| invalid(e.to_string()))?;
    Ok(Translated { body, dropped, json_mode: false })
}

/// A provider's answer, parsed.
fn response_json(body: &[u8]) -> Result<Value, ConversionError> {
    serde_json::from_slice(body).map_err(|e| bad_response(format!("not JSON: {e}")))
}

/// A provider's answer that must be a JSON object.
fn response_object(body: &[u8]) -> Result<Value, ConversionError> {
    let parsed = response_json(body)?;
    if !parsed.is_object() {
        return Err(bad_response("not a JSON object"));
    }
    Ok(parsed)
}

fn invalid(detail: impl Into<String>) -> ConversionError {
    ConversionError::InvalidRequest { detail: detail.into() }
}

fn bad_response(detail: impl Into<String>) -> ConversionError {
    ConversionError::InvalidResponse { detail: detail.into() }
}
