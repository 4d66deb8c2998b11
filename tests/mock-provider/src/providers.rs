//! OpenAI (chat, completions, embeddings, Responses) and Anthropic response shapes, built
//! deterministically from the request and knobs (Gemini's, from the same generator, in `gemini`).
//! Azure OpenAI answers in OpenAI's shapes, Claude on Vertex AI in Anthropic's; only how they
//! are addressed and authorised differs.

use std::sync::atomic::{AtomicU64, Ordering};

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::knobs::{DEFAULT_COMPLETION, Refusal};
use crate::request::Received;
use crate::{Config, Knobs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completions,
    Embeddings,
    Messages,
    /// OpenAI's Responses API: OpenAI's key and errors, its own body, usage and stream shapes.
    Responses,
    /// Anthropic's `/v1/messages/count_tokens`: `{"input_tokens": n}`, the prompt as the
    /// Messages API would count it (the `prompt_tokens` knob, else the body's bytes by four).
    CountTokens,
}

/// Whose conventions a request follows around the shared response shapes: the provider's own
/// (OpenAI's bearer token, Anthropic's x-api-key), Azure OpenAI's (`api-key`, and in the
/// classic form a deployment in the path standing in for the body's model) or Vertex AI's
/// (Google's token, checked before, and the path's model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    Native,
    /// `deployment` is the path's in the classic `/openai/deployments/{d}/…` form, None in `/openai/v1/…`.
    Azure {
        deployment: Option<String>,
    },
    /// Claude on Vertex AI: `model` is the path's for `:rawPredict` (the body has none), None
    /// for `count-tokens:rawPredict` (the body names it).
    Vertex {
        model: Option<String>,
    },
}

#[derive(Debug)]
pub enum Reply {
    Json {
        status: StatusCode,
        body: Vec<u8>,
    },
    /// Complete SSE events, each with its terminating blank line (or, for Gemini without
    /// `alt=sse`, the pieces of one streamed JSON array; for Bedrock, binary event-stream
    /// messages), sent as `content_type`.
    Stream {
        events: Vec<Vec<u8>>,
        content_type: &'static str,
    },
}

/// The content type of an SSE stream.
pub const EVENT_STREAM: &str = "text/event-stream";

impl Reply {
    pub fn status(&self) -> u16 {
        match self {
            Reply::Json { status, .. } => status.as_u16(),
            Reply::Stream { .. } => 200,
        }
    }

    pub fn json(status: StatusCode, body: &Value) -> Reply {
        Reply::Json { status, body: serde_json::to_vec(body).unwrap_or_default() }
    }

    pub fn ok(body: &Value) -> Reply {
        Reply::json(StatusCode::OK, body)
    }

    /// What `x-mock-garbage` answers: a stream of three broken `event`s (each API's framing of
    /// one), or a 200 whose body is not JSON.
    pub fn garbage(stream: bool, event: &[u8], content_type: &'static str) -> Reply {
        if stream {
            Reply::Stream { events: vec![event.to_vec(); 3], content_type }
        } else {
            Reply::Json { status: StatusCode::OK, body: b"this is not json {{{".to_vec() }
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh number for a response's id.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

pub fn openai_error(message: &str, kind: &str, code: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
        .unwrap_or_default()
}

/// Azure's error envelope for what its front door rejects (routing, keys), before any model runs.
pub fn azure_error(status: StatusCode, message: &str) -> Reply {
    Reply::json(status, &json!({"error": {"code": status.as_u16().to_string(), "message": message}}))
}

/// Azure's answer to a request with no valid key, verbatim.
const AZURE_DENIED: &str = "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.";

pub fn anthropic_error(message: &str, kind: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "error", "error": {"type": kind, "message": message}})).unwrap_or_default()
}

fn error(api: Api, status: StatusCode, message: &str, kind: &str, code: &str) -> Reply {
    let anthropic = matches!(api, Api::Messages | Api::CountTokens);
    let body = if anthropic { anthropic_error(message, kind) } else { openai_error(message, kind, code) };
    Reply::Json { status, body }
}

/// A provider's 400 refusing the prompt, in its own words (what LiteLLM and Sluice tell apart).
fn refusal(api: Api, dialect: &Dialect, refusal: Refusal, prompt: u64, max: u64) -> Reply {
    let anthropic = matches!(api, Api::Messages | Api::CountTokens);
    let body = match (refusal, anthropic, dialect) {
        (Refusal::ContextWindow, true, _) => {
            anthropic_error(&format!("prompt is too long: {prompt} tokens > {max} maximum"), "invalid_request_error")
        }
        (Refusal::ContextWindow, false, _) => openai_error(
            &format!(
                "This model's maximum context length is {max} tokens. However, your messages resulted in {prompt} \
                 tokens. Please reduce the length of the messages."
            ),
            "invalid_request_error",
            "context_length_exceeded",
        ),
        (Refusal::ContentPolicy, true, _) => {
            anthropic_error("Output blocked by content filtering policy", "invalid_request_error")
        }
        (Refusal::ContentPolicy, false, Dialect::Azure { .. }) => openai_error(
            "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "invalid_request_error",
            "content_filter",
        ),
        (Refusal::ContentPolicy, false, Dialect::Native | Dialect::Vertex { .. }) => openai_error(
            "Your request was rejected as a result of our safety system.",
            "invalid_request_error",
            "content_policy_violation",
        ),
    };
    Reply::Json { status: StatusCode::BAD_REQUEST, body }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn sse(data: &Value) -> Vec<u8> {
    format!("data: {data}\n\n").into_bytes()
}

/// An SSE event with an `event:` name, as Anthropic's and OpenAI's Responses streams send them.
fn named_sse(name: &str, data: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// The reply to one request.
/// `entra_token`: the request carries an Entra ID token this mock issued (Azure's other scheme).
pub fn reply(
    api: Api,
    dialect: &Dialect,
    received: &Received,
    knobs: &Knobs,
    config: &Config,
    entra_token: bool,
) -> Reply {
    // Credentials first, as a provider would.
    let authorised = match (dialect, api) {
        // The exact `api-key` header, or an Entra ID token: a bearer token of another kind means
        // the client used OpenAI's scheme.
        (Dialect::Azure { .. }, _) => {
            entra_token || config.azure_key.as_deref().is_none_or(|k| received.header("api-key") == Some(k))
        }
        // Google's token, which `vertex` checked before.
        (Dialect::Vertex { .. }, _) => true,
        (Dialect::Native, Api::Messages | Api::CountTokens) => {
            config.anthropic_key.as_deref().is_none_or(|k| received.header("x-api-key") == Some(k))
        }
        (Dialect::Native, _) => config
            .openai_key
            .as_ref()
            .is_none_or(|k| received.header("authorization") == Some(format!("Bearer {k}").as_str())),
    };
    if !authorised {
        return match (dialect, api) {
            (Dialect::Azure { .. }, _) => azure_error(StatusCode::UNAUTHORIZED, AZURE_DENIED),
            (_, Api::Messages | Api::CountTokens) => Reply::Json {
                status: StatusCode::UNAUTHORIZED,
                body: anthropic_error("invalid x-api-key", "authentication_error"),
            },
            _ => Reply::Json {
                status: StatusCode::UNAUTHORIZED,
                body: openai_error("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
            },
        };
    }
    let Some(request) = received.json() else {
        return error(
            api,
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            "invalid_json",
        );
    };
    // Azure's classic form ignores a missing body model: the deployment names what answers (and
    // on Vertex AI the path's model, the body having none).
    let deployment = match dialect {
        Dialect::Azure { deployment } => deployment.clone(),
        Dialect::Vertex { model } => model.clone(),
        Dialect::Native => None,
    };
    let Some(model) = request.get("model").and_then(Value::as_str).map(str::to_owned).or(deployment) else {
        return error(
            api,
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            "invalid_request_error",
            "missing_model",
        );
    };
    if let Some((status, message)) = knobs.forced_error() {
        return error(api, status, &message, "api_error", "mock_error");
    }
    let prompt = knobs.prompt_tokens.unwrap_or((received.body.len() as u64).div_ceil(4));
    let too_long = config.context_window.filter(|max| prompt > *max && api != Api::CountTokens);
    if let Some(max) = too_long {
        return refusal(api, dialect, Refusal::ContextWindow, prompt, max);
    }
    if let Some(refused) = knobs.refuse {
        return refusal(api, dialect, refused, prompt, prompt.saturating_sub(1));
    }
    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false) && api != Api::Embeddings;
    if knobs.garbage {
        return Reply::garbage(stream, b"data: {not json\n\n", EVENT_STREAM);
    }
    let include_usage = request.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let max_tokens = match api {
        Api::Responses => request.get("max_output_tokens"),
        _ => request.get("max_completion_tokens").or_else(|| request.get("max_tokens")),
    }
    .and_then(Value::as_u64);
    // Unlike Gemini's and Bedrock's caps, the request's max tokens cap only the default length.
    let completion =
        knobs.completion_tokens.unwrap_or_else(|| max_tokens.map_or(DEFAULT_COMPLETION, |m| m.min(DEFAULT_COMPLETION)));
    let g = Gen { include_usage, ..Gen::new(model, completion, received, knobs) };
    // A tool the request forces (`tool_choice: {"type": "tool"}`) is called, as Claude does.
    if api == Api::Messages
        && let Some(name) = forced_tool(&request)
    {
        return g.anthropic_tool_use(name, stream);
    }
    match (api, stream) {
        (Api::CountTokens, _) => {
            Reply::Json { status: StatusCode::OK, body: json!({"input_tokens": g.prompt}).to_string().into_bytes() }
        }
        (Api::Embeddings, _) => g.embeddings(&request),
        (Api::Chat | Api::Completions, false) => g.openai_full(api),
        (Api::Chat | Api::Completions, true) => g.openai_stream(api),
        (Api::Messages, false) => g.anthropic_full(),
        (Api::Messages, true) => g.anthropic_stream(),
        (Api::Responses, false) => g.responses_full(),
        (Api::Responses, true) => g.responses_stream(),
    }
}

/// The tool an Anthropic request forces the model to call, if it does.
fn forced_tool(request: &Value) -> Option<&str> {
    let choice = request.get("tool_choice")?;
    (choice.get("type").and_then(Value::as_str) == Some("tool")).then(|| choice.get("name")?.as_str())?
}

/// The word the texts repeat: a multi-byte one when the stream is split into byte pieces.
fn word(knobs: &Knobs) -> &'static str {
    if knobs.split_bytes.is_some() { "tök" } else { "tok" }
}

/// Builds the deterministic responses: `completion` words "tok0 tok1 …".
pub struct Gen {
    pub model: String,
    pub prompt: u64,
    pub completion: u64,
    pub word: &'static str,
    pub id: u64,
    pub knobs: Knobs,
    pub include_usage: bool,
}

impl Gen {
    /// The generator of `completion` words by `model` for a request: its prompt counts the
    /// body's bytes by four unless a knob says otherwise; a stream carries no usage unless asked.
    pub fn new(model: String, completion: u64, received: &Received, knobs: &Knobs) -> Self {
        Self {
            model,
            prompt: knobs.prompt_tokens.unwrap_or((received.body.len() as u64).div_ceil(4)),
            completion,
            word: word(knobs),
            id: next_id(),
            knobs: knobs.clone(),
            include_usage: false,
        }
    }

    /// Word `i` as it appears in the text: the first without a leading space.
    pub fn piece(&self, i: u64) -> String {
        if i == 0 { format!("{}0", self.word) } else { format!(" {}{i}", self.word) }
    }

    pub fn text(&self, words: u64) -> String {
        (0..words).map(|i| self.piece(i)).collect()
    }

    /// The completion as a stream sends it: `chunk_tokens` words a piece, each with the number
    /// of words up to its end (none for an empty completion).
    pub fn chunks(&self) -> Vec<(String, u64)> {
        let step = self.knobs.chunk_tokens.max(1);
        (0..self.completion)
            .step_by(step)
            .map(|i| {
                let end = (i + step as u64).min(self.completion);
                ((i..end).map(|w| self.piece(w)).collect(), end)
            })
            .collect()
    }

    /// A non-streaming answer: the body `build` makes for as many words as `words` asks.
    pub fn padded(&self, build: impl Fn(u64) -> Value) -> Reply {
        let words = self.words(|| serde_json::to_vec(&build(0)).map_or(0, |b| b.len()));
        Reply::ok(&build(words))
    }

    fn openai_usage(&self, completion: u64) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": completion,
            "total_tokens": self.prompt + completion,
            "prompt_tokens_details": {"cached_tokens": self.knobs.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.knobs.reasoning_tokens},
        })
    }

    fn openai_full(&self, api: Api) -> Reply {
        let build = |words: u64| {
            let text = self.text(words);
            let (object, choice) = match api {
                Api::Completions => {
                    ("text_completion", json!({"index": 0, "text": text, "finish_reason": "stop", "logprobs": null}))
                }
                _ => (
                    "chat.completion",
                    json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}),
                ),
            };
            json!({
                "id": format!("chatcmpl-mock-{}", self.id), "object": object, "created": now(), "model": self.model,
                "choices": [choice], "usage": self.openai_usage(words),
            })
        };
        self.padded(build)
    }

    /// The words in a non-streaming text: the completion count, or as many as pad the body to
    /// about `x-mock-response-bytes`, grown from `empty` (the wordless body's size) word by word
    /// (one serialisation, not one per word: benchmarks call this thousands of times a second).
    fn words(&self, empty: impl FnOnce() -> usize) -> u64 {
        let Some(target) = self.knobs.response_bytes else { return self.completion };
        let mut size = empty();
        let mut words = 0;
        while size < target && words < 100_000 {
            size += self.piece(words).len();
            words += 1;
        }
        words
    }

    fn openai_stream(&self, api: Api) -> Reply {
        let created = now();
        let id = format!("chatcmpl-mock-{}", self.id);
        let object = if api == Api::Completions { "text_completion" } else { "chat.completion.chunk" };
        let chunk = |choice: Value| {
            let mut v =
                json!({"id": id, "object": object, "created": created, "model": self.model, "choices": [choice]});
            if self.include_usage {
                v["usage"] = Value::Null;
            }
            sse(&v)
        };
        let content = |text: &str, finish: Value| match api {
            Api::Completions => json!({"index": 0, "text": text, "finish_reason": finish}),
            _ => json!({"index": 0, "delta": {"content": text}, "finish_reason": finish}),
        };
        let mut events = Vec::new();
        if api == Api::Chat {
            events
                .push(chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null})));
        }
        for (text, _) in self.chunks() {
            events.push(chunk(content(&text, Value::Null)));
        }
        events.push(match api {
            Api::Completions => chunk(json!({"index": 0, "text": "", "finish_reason": "stop"})),
            _ => chunk(json!({"index": 0, "delta": {}, "finish_reason": "stop"})),
        });
        if self.include_usage {
            events.push(sse(&json!({"id": id, "object": object, "created": created, "model": self.model, "choices": [], "usage": self.openai_usage(self.completion)})));
        }
        events.push(b"data: [DONE]\n\n".to_vec());
        Reply::Stream { events, content_type: EVENT_STREAM }
    }

    fn embeddings(&self, request: &Value) -> Reply {
        let inputs = match request.get("input") {
            Some(Value::Array(items)) => items.len().max(1),
            _ => 1,
        };
        let data: Vec<Value> = (0..inputs)
            .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8]}))
            .collect();
        Reply::ok(
            &json!({"object": "list", "data": data, "model": self.model, "usage": {"prompt_tokens": self.prompt, "total_tokens": self.prompt}}),
        )
    }

    fn anthropic_usage(&self, output: u64) -> Value {
        json!({
            "input_tokens": self.prompt,
            "output_tokens": output,
            "cache_creation_input_tokens": self.knobs.cache_write_tokens,
            "cache_read_input_tokens": self.knobs.cached_tokens,
        })
    }

    fn anthropic_full(&self) -> Reply {
        Reply::ok(&json!({
            "id": format!("msg_mock_{}", self.id), "type": "message", "role": "assistant", "model": self.model,
            "content": [{"type": "text", "text": self.text(self.completion)}],
            "stop_reason": "end_turn", "stop_sequence": null, "usage": self.anthropic_usage(self.completion),
        }))
    }

    /// A stream's first event: the message, its input counted, one output token so far.
    fn anthropic_message_start(&self) -> Vec<u8> {
        named_sse(
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": format!("msg_mock_{}", self.id), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": self.anthropic_usage(1)}}),
        )
    }

    /// A call of the tool `name` with `Knobs::tool_arguments()` as its input: whole, or as a
    /// stream whose input arrives in two `input_json_delta` pieces.
    fn anthropic_tool_use(&self, name: &str, stream: bool) -> Reply {
        let id = format!("toolu_mock_{}", self.id);
        let input = Knobs::tool_arguments();
        if !stream {
            return Reply::ok(&json!({
                "id": format!("msg_mock_{}", self.id), "type": "message", "role": "assistant", "model": self.model,
                "content": [{"type": "tool_use", "id": id, "name": name, "input": input}],
                "stop_reason": "tool_use", "stop_sequence": null, "usage": self.anthropic_usage(self.completion),
            }));
        }
        let text = input.to_string();
        let (first, rest) = text.split_at(text.len() / 2);
        let delta = |piece: &str| {
            named_sse(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}}),
            )
        };
        let events = vec![
            self.anthropic_message_start(),
            named_sse(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            ),
            delta(first),
            delta(rest),
            named_sse("content_block_stop", &json!({"type": "content_block_stop", "index": 0})),
            named_sse(
                "message_delta",
                &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": self.completion}}),
            ),
            named_sse("message_stop", &json!({"type": "message_stop"})),
        ];
        Reply::Stream { events, content_type: EVENT_STREAM }
    }

    fn anthropic_stream(&self) -> Reply {
        let mut events = vec![
            self.anthropic_message_start(),
            named_sse(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            named_sse("ping", &json!({"type": "ping"})),
        ];
        for (text, _) in self.chunks() {
            events.push(named_sse(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        events.push(named_sse("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
        events.push(named_sse("message_delta", &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": self.completion}})));
        events.push(named_sse("message_stop", &json!({"type": "message_stop"})));
        Reply::Stream { events, content_type: EVENT_STREAM }
    }

    /// Responses usage: `input_tokens` includes the cached ones, as OpenAI counts them.
    fn responses_usage(&self, output: u64) -> Value {
        json!({
            "input_tokens": self.prompt,
            "input_tokens_details": {"cached_tokens": self.knobs.cached_tokens},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": self.knobs.reasoning_tokens},
            "total_tokens": self.prompt + output,
        })
    }

    fn response(&self, created_at: u64, status: &str, output: Value, usage: Value) -> Value {
        json!({
            "id": format!("resp_{}", self.id), "object": "response", "created_at": created_at, "status": status,
            "model": self.model, "output": output, "usage": usage,
        })
    }

    /// The one assistant message a response outputs.
    fn response_message(&self, status: &str, content: Value) -> Value {
        let id = format!("msg_{}", self.id);
        json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
    }

    fn responses_full(&self) -> Reply {
        self.padded(|words| {
            let message = self.response_message("completed", json!([output_text(&self.text(words))]));
            self.response(now(), "completed", json!([message]), self.responses_usage(words))
        })
    }

    /// Named events with an increasing `sequence_number` and no `[DONE]`: the stream ends with
    /// `response.completed`, which alone carries the usage (so a cut before it leaves none).
    fn responses_stream(&self) -> Reply {
        let created_at = now();
        let item_id = format!("msg_{}", self.id);
        let text = self.text(self.completion);
        let mut events = vec![
            json!({"type": "response.created",
                "response": self.response(created_at, "in_progress", json!([]), Value::Null)}),
            json!({"type": "response.output_item.added", "output_index": 0,
                "item": self.response_message("in_progress", json!([]))}),
            json!({"type": "response.content_part.added", "item_id": item_id, "output_index": 0,
                "content_index": 0, "part": output_text("")}),
        ];
        for (delta, _) in self.chunks() {
            events.push(json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                "content_index": 0, "delta": delta}));
        }
        let message = self.response_message("completed", json!([output_text(&text)]));
        events.extend([
            json!({"type": "response.output_text.done", "item_id": item_id, "output_index": 0,
                "content_index": 0, "text": text}),
            json!({"type": "response.content_part.done", "item_id": item_id, "output_index": 0,
                "content_index": 0, "part": output_text(&text)}),
            json!({"type": "response.output_item.done", "output_index": 0, "item": message}),
            json!({"type": "response.completed", "response": self.response(created_at, "completed",
                json!([message]), self.responses_usage(self.completion))}),
        ]);
        let events = events
            .into_iter()
            .enumerate()
            .map(|(n, mut event)| {
                event["sequence_number"] = json!(n);
                let name = event["type"].as_str().unwrap_or_default().to_owned();
                named_sse(&name, &event)
            })
            .collect();
        Reply::Stream { events, content_type: EVENT_STREAM }
    }
}

/// A Responses `output_text` content part.
fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}
