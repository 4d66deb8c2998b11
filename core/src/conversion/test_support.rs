//! What the translations' tests share: sending a request through, and reading the OpenAI
//! chunks a stream translator writes.

#![allow(clippy::unwrap_used)]

use std::fmt::Debug;

use serde_json::{Value, json};

use super::{ConversionError, Target, Translated};

/// A translation's `request` function.
pub(super) type Request = fn(&[u8], &Target<'_>) -> Result<Translated, ConversionError>;

/// The body `request` sends for `body`, parsed.
pub(super) fn translated(request: Request, target: &Target<'_>, body: &Value) -> Value {
    serde_json::from_slice(&request(body.to_string().as_bytes(), target).unwrap().body).unwrap()
}

/// `body` with the fields of `extra` set.
pub(super) fn with_fields(mut body: Value, extra: &Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// What a stream translator's `feed` writes for `pieces` (the last ends the stream), read as
/// OpenAI chunks: the chunks, and whether `[DONE]` came (once, and last).
pub(super) fn openai_chunks(pieces: &[&[u8]], mut feed: impl FnMut(&[u8], bool) -> Vec<u8>) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        out.extend(feed(piece, i + 1 == pieces.len()));
    }
    let text = String::from_utf8(out).unwrap();
    let mut chunks = Vec::new();
    let mut done = false;
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event.strip_prefix("data: ").unwrap();
        if data == "[DONE]" {
            assert!(!done, "[DONE] twice");
            done = true;
        } else {
            assert!(!done, "a chunk after [DONE]");
            chunks.push(serde_json::from_str(data).unwrap());
        }
    }
    (chunks, done)
}

/// The delta of each chunk's first choice (null: a chunk without choices).
pub(super) fn deltas(chunks: &[Value]) -> Vec<Value> {
    chunks.iter().map(|c| c["choices"].get(0).map_or(Value::Null, |ch| ch["delta"].clone())).collect()
}

/// The chunks of a streamed answer of two texts: the role, the texts, the finish (`stop`), then
/// the usage chunk (no choices) with `usage`; every chunk of the stream `id`, for the client's
/// `model`, created at 1 700 000 000.
pub(super) fn assert_a_text_stream(chunks: &[Value], id: &str, model: &str, texts: [&str; 2], usage: &Value) {
    assert_eq!(
        deltas(chunks),
        [
            json!({"role": "assistant", "content": ""}),
            json!({"content": texts[0]}),
            json!({"content": texts[1]}),
            json!({}),
            Value::Null, // the usage chunk has no choices
        ]
    );
    assert!(chunks.iter().all(|c| c["id"] == id
        && c["model"] == model
        && c["created"] == 1_700_000_000
        && c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert!(chunks[..3].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["usage"], *usage);
}

/// `stream` split in two anywhere reads as `whole`.
pub(super) fn assert_any_split_reads_the_same<T: PartialEq + Debug>(
    stream: &[u8],
    whole: &T,
    read: impl Fn(&[&[u8]]) -> T,
) {
    for at in 0..=stream.len() {
        let (a, b) = stream.split_at(at);
        assert_eq!(read(&[a, b]), *whole, "split at {at}");
    }
}

/// Requests every `openai_*` translation refuses as malformed, and a word of the reason it gives.
pub(super) const MALFORMED_EVERYWHERE: &[(&str, &str)] = &[
    ("not json", "not JSON"),
    ("[]", "must be an object"),
    (r#"{"messages": "x"}"#, "messages must be an array"),
    (r#"{"messages": [{"content": "x"}]}"#, "role is missing"),
    (r#"{"messages": [{"role": "wizard", "content": "x"}]}"#, "wizard"),
    (
        r#"{"messages": [{"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{oops"}}]}]}"#,
        "not JSON",
    ),
    (r#"{"messages": [{"role": "tool", "content": "x"}]}"#, "tool_call_id"),
    (r#"{"messages": [], "stop": 3}"#, "stop must be"),
    (r#"{"messages": [], "max_tokens": -1}"#, "max_tokens"),
];

/// More that the Gemini and Bedrock translations refuse (both want a tool call's function name,
/// and its arguments as an object; Anthropic's takes them as they are).
pub(super) const MALFORMED_FOR_GEMINI_AND_BEDROCK: &[(&str, &str)] = &[
    (r#"{"model": "m"}"#, "messages must be an array"),
    (
        r#"{"messages": [{"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "[1]"}}]}]}"#,
        "JSON object",
    ),
    (r#"{"messages": [{"role": "assistant", "tool_calls": [{"id": "1", "function": {}}]}]}"#, "function name"),
    (
        r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]}"#,
        "base64",
    ),
    (r#"{"messages": [], "tool_choice": "sometimes"}"#, "sometimes"),
    (r#"{"messages": [], "tools": [{"type": "function", "function": {}}]}"#, "name is missing"),
];

/// `request` refuses each body as an invalid request, with a reason that says `reason`.
pub(super) fn assert_malformed<'a>(
    request: Request,
    target: &Target<'_>,
    cases: impl IntoIterator<Item = &'a (&'a str, &'a str)>,
) {
    for (body, reason) in cases {
        let e = request(body.as_bytes(), target).unwrap_err();
        assert!(matches!(e, ConversionError::InvalidRequest { .. }), "{body}: {e:?}");
        assert!(e.to_string().contains(reason), "{body}: {e}");
    }
}

/// The type of a translation's `response` function.
pub(super) type Response = fn(&[u8], &str, u64) -> Result<Vec<u8>, ConversionError>;

/// `response` refuses each body as an invalid response.
pub(super) fn assert_invalid_responses(response: Response, bodies: &[&str]) {
    for bad in bodies {
        let e = response(bad.as_bytes(), "m", 0).unwrap_err();
        assert!(matches!(e, ConversionError::InvalidResponse { .. }), "{bad}: {e:?}");
    }
}

/// The `chat.completion` `response` makes of `body` (for the model `m`, created at 0), parsed.
pub(super) fn completion(response: Response, body: &str) -> Value {
    completion_for(response, body, "m", 0)
}

/// The `chat.completion` `response` makes of `body` for `model`, created at `created`, parsed.
pub(super) fn completion_for(response: Response, body: &str, model: &str, created: u64) -> Value {
    serde_json::from_slice(&response(body.as_bytes(), model, created).unwrap()).unwrap()
}
