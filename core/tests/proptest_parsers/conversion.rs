//! `sluice_core::conversion`: translators between API formats read a client's body and a
//! provider's answer, both untrusted. No input may panic; a stream translator's output is the
//! same however the provider's stream is cut, and always ends with exactly one `[DONE]`.

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};
use sluice_core::conversion::Target;
use sluice_core::conversion::openai_anthropic::{StreamTranslator, error, request, response};
use sluice_core::conversion::{anthropic_openai, openai_bedrock, openai_gemini};

use crate::common::{config, hostile_bytes, json_value, split_at_points};

const TARGET: Target<'static> = Target { model: "claude", default_max_tokens: 1024, drop_params: true };

/// Chat requests with the right field names and any values in them.
fn chat_request() -> impl Strategy<Value = Vec<u8>> {
    let message = (prop_oneof![Just("system"), Just("user"), Just("assistant"), Just("tool"), Just("x")], json_value())
        .prop_map(|(role, content)| json!({"role": role, "content": content, "tool_call_id": "t", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}));
    (prop::collection::vec(message, 0..6), json_value(), json_value(), json_value()).prop_map(
        |(messages, tools, choice, stop)| {
            json!({"model": "m", "messages": messages, "tools": tools, "tool_choice": choice, "stop": stop})
                .to_string()
                .into_bytes()
        },
    )
}

/// Anthropic streams of the right event names with any JSON in them.
fn anthropic_stream() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just("message_start"),
        Just("content_block_start"),
        Just("content_block_delta"),
        Just("message_delta"),
        Just("message_stop"),
        Just("ping"),
        Just("error")
    ];
    prop::collection::vec((name, json_value()), 0..12).prop_map(|events| {
        events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect::<String>().into_bytes()
    })
}

/// What a stream translator (`feed`: chunk, end of stream → bytes out) writes for `pieces`.
fn run_stream(mut feed: impl FnMut(&[u8], bool) -> Vec<u8>, pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        out.extend(feed(piece, i + 1 == pieces.len()));
    }
    if pieces.is_empty() {
        out.extend(feed(b"", true));
    }
    out
}

fn translate_stream(pieces: &[&[u8]]) -> Vec<u8> {
    let mut t = StreamTranslator::new("m", 0, true, false);
    run_stream(|chunk, end| t.feed(chunk, end), pieces)
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn requests_never_panic(body in prop_oneof![chat_request(), hostile_bytes()]) {
        if let Ok(translated) = request(&body, &TARGET) {
            let sent: Value = serde_json::from_slice(&translated.body).unwrap();
            prop_assert_eq!(&sent["model"], "claude");
            prop_assert!(sent["max_tokens"].is_u64());
        }
    }

    #[test]
    fn responses_and_errors_never_panic(body in prop_oneof![json_value().prop_map(|v| v.to_string().into_bytes()), hostile_bytes()], json_mode in any::<bool>()) {
        let _ = response(&body, "m", 0, json_mode);
        let e: Value = serde_json::from_slice(&error(&body)).unwrap();
        prop_assert!(e["error"]["message"].is_string());
    }

    #[test]
    fn a_stream_translates_the_same_however_it_is_cut(stream in prop_oneof![anthropic_stream(), hostile_bytes()], points in prop::collection::vec(any::<Index>(), 0..6)) {
        let whole = translate_stream(&[&stream]);
        let text = String::from_utf8(whole.clone()).unwrap();
        prop_assert_eq!(text.matches("data: [DONE]\n\n").count(), 1);
        prop_assert!(text.ends_with("data: [DONE]\n\n"));
        prop_assert_eq!(translate_stream(&split_at_points(&stream, &points)), whole);
    }

    #[test]
    fn the_reverse_direction_never_panics_and_always_ends_its_stream(body in hostile_bytes(), stream in prop_oneof![anthropic_stream(), hostile_bytes()], points in prop::collection::vec(any::<Index>(), 0..6)) {
        let _ = anthropic_openai::request(&body, &TARGET);
        let _ = anthropic_openai::response(&body, "m");
        let e: Value = serde_json::from_slice(&anthropic_openai::error(&body, 500)).unwrap();
        prop_assert_eq!(&e["type"], "error");
        let run = |pieces: &[&[u8]]| {
            let mut t = anthropic_openai::StreamTranslator::new("m");
            run_stream(|chunk, end| t.feed(chunk, end), pieces)
        };
        let whole = run(&[&stream]);
        let text = String::from_utf8(whole.clone()).unwrap();
        prop_assert!(text.starts_with("event: message_start\n"));
        let ended = text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n") || text.contains("event: error\n");
        prop_assert!(ended, "the stream did not end: {}", text);
        prop_assert_eq!(run(&split_at_points(&stream, &points)), whole);
    }
}

/// Gemini streams (`alt=sse`, CRLF-framed) of response chunks with any text, finish reason and
/// usage, and any JSON between them.
fn gemini_stream() -> impl Strategy<Value = Vec<u8>> {
    let chunk = prop_oneof![
        3 => (".{0,12}", prop::option::of(prop_oneof![Just("STOP"), Just("MAX_TOKENS"), Just("SAFETY")]), 0u64..1000).prop_map(
            |(text, finish, n)| json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": finish}],
                                       "usageMetadata": {"promptTokenCount": n, "candidatesTokenCount": n / 2}})
        ),
        1 => json_value(),
    ];
    prop::collection::vec(chunk, 0..10)
        .prop_map(|chunks| chunks.iter().map(|c| format!("data: {c}\r\n\r\n")).collect::<String>().into_bytes())
}

/// One message of AWS's event stream, CRCs included.
fn aws_message(event_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut headers = Vec::new();
    for (name, value) in
        [(":message-type", "event"), (":event-type", event_type), (":content-type", "application/json")]
    {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.push(7);
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let total = (16 + headers.len() + payload.len()) as u32;
    let mut out = total.to_be_bytes().to_vec();
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&headers);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Bedrock ConverseStream: well-framed messages of its event types with any JSON payload, the
/// occasional realistic one.
fn bedrock_stream() -> impl Strategy<Value = Vec<u8>> {
    let kind = prop_oneof![
        Just("messageStart"),
        Just("contentBlockStart"),
        Just("contentBlockDelta"),
        Just("contentBlockStop"),
        Just("messageStop"),
        Just("metadata"),
        Just("other")
    ];
    let payload = prop_oneof![
        json_value(),
        ".{0,8}".prop_map(|t| json!({"contentBlockIndex": 0, "delta": {"text": t}})),
        Just(json!({"stopReason": "end_turn"})),
        (0u64..1000).prop_map(|n| json!({"usage": {"inputTokens": n, "outputTokens": n / 3}})),
    ];
    prop::collection::vec((kind, payload), 0..10).prop_map(|events| {
        events.iter().flat_map(|(kind, payload)| aws_message(kind, payload.to_string().as_bytes())).collect()
    })
}

/// An OpenAI stream a translator wrote: `data:` events, exactly one `[DONE]`, last.
fn ends_once_with_done(out: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8(out.to_vec()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(text.matches("data: [DONE]\n\n").count(), 1, "{}", text);
    prop_assert!(text.ends_with("data: [DONE]\n\n"));
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn gemini_translation_never_panics_and_cuts_make_no_difference(
        body in prop_oneof![chat_request(), hostile_bytes()],
        answer in prop_oneof![json_value().prop_map(|v| v.to_string().into_bytes()), hostile_bytes()],
        stream in prop_oneof![gemini_stream(), hostile_bytes()],
        points in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        if let Ok(translated) = openai_gemini::request(&body, &TARGET) {
            let sent: Value = serde_json::from_slice(&translated.body).unwrap();
            prop_assert!(sent["contents"].is_array() && sent.get("model").is_none());
        }
        let _ = openai_gemini::response(&answer, "m", 0);
        let e: Value = serde_json::from_slice(&openai_gemini::error(&answer)).unwrap();
        prop_assert!(e["error"]["message"].is_string());
        let run = |pieces: &[&[u8]]| {
            let mut t = openai_gemini::StreamTranslator::new("m", 0, true);
            run_stream(|chunk, end| t.feed(chunk, end), pieces)
        };
        let whole = run(&[&stream]);
        ends_once_with_done(&whole)?;
        prop_assert_eq!(run(&split_at_points(&stream, &points)), whole);
    }

    #[test]
    fn bedrock_translation_never_panics_and_cuts_make_no_difference(
        body in prop_oneof![chat_request(), hostile_bytes()],
        answer in prop_oneof![json_value().prop_map(|v| v.to_string().into_bytes()), hostile_bytes()],
        stream in prop_oneof![bedrock_stream(), hostile_bytes()],
        points in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        if let Ok(translated) = openai_bedrock::request(&body, &TARGET) {
            let sent: Value = serde_json::from_slice(&translated.body).unwrap();
            prop_assert!(sent["messages"].is_array() && sent["inferenceConfig"]["maxTokens"].is_u64());
        }
        let _ = openai_bedrock::response(&answer, "m", 0, true);
        let e: Value = serde_json::from_slice(&openai_bedrock::error(&answer, 429)).unwrap();
        prop_assert!(e["error"]["message"].is_string());
        let run = |pieces: &[&[u8]]| {
            let mut t = openai_bedrock::StreamTranslator::new("m", 0, true, false);
            run_stream(|chunk, end| t.feed(chunk, end), pieces)
        };
        let whole = run(&[&stream]);
        ends_once_with_done(&whole)?;
        prop_assert_eq!(run(&split_at_points(&stream, &points)), whole);
    }
}

/// Embeddings requests with the right field names and any values in them.
fn embeddings_request() -> impl Strategy<Value = Vec<u8>> {
    (json_value(), json_value(), json_value(), json_value()).prop_map(|(input, dimensions, encoding, extra)| {
        json!({"model": "m", "input": input, "dimensions": dimensions, "encoding_format": encoding,
               "input_type": extra, "normalize": extra, "task_type": extra})
        .to_string()
        .into_bytes()
    })
}

/// Embedding answers of Gemini's, Titan's and Cohere's shapes with any JSON in them.
fn embeddings_answer() -> impl Strategy<Value = Vec<u8>> {
    (json_value(), json_value(), 0usize..3).prop_map(|(vector, count, shape)| {
        match shape {
            0 => json!({"embeddings": [{"values": vector}], "usageMetadata": {"promptTokenCount": count}}),
            1 => json!({"embedding": vector, "inputTextTokenCount": count}),
            _ => json!({"embeddings": [vector], "texts": count}),
        }
        .to_string()
        .into_bytes()
    })
}

proptest! {
    #![proptest_config(config(256))]

    /// Embeddings both ways, for every model shape: no input panics, an accepted request is the
    /// provider's shape, and any answer is OpenAI's list or an error, never a panic.
    #[test]
    fn embeddings_translation_never_panics(
        body in prop_oneof![embeddings_request(), hostile_bytes()],
        answer in prop_oneof![embeddings_answer(), json_value().prop_map(|v| v.to_string().into_bytes()), hostile_bytes()],
        base64 in any::<bool>(),
        estimate in any::<u64>(),
    ) {
        use sluice_core::conversion::{EmbeddingsAsk, Encoding};
        let ask = EmbeddingsAsk { encoding: if base64 { Encoding::Base64 } else { Encoding::Float }, prompt_estimate: estimate };
        let gemini = Target { model: "gemini-embedding-001", ..TARGET };
        if let Ok((translated, _)) = openai_gemini::embeddings_request(&body, &gemini) {
            let sent: Value = serde_json::from_slice(&translated.body).unwrap();
            prop_assert!(sent["requests"].as_array().is_some_and(|r| !r.is_empty()));
        }
        for model in ["amazon.titan-embed-text-v2:0", "amazon.titan-embed-text-v1", "cohere.embed-english-v3", "anthropic.claude"] {
            if let Ok(calls) = openai_bedrock::embeddings_request(&body, &Target { model, ..TARGET }) {
                prop_assert!(!calls.bodies.is_empty() && calls.bodies.len() == calls.estimates.len());
                prop_assert_eq!(calls.estimates.iter().sum::<u64>(), calls.ask.prompt_estimate);
                for one in &calls.bodies {
                    let sent: Value = serde_json::from_slice(one).unwrap();
                    prop_assert!(sent["inputText"].is_string() || sent["texts"].is_array());
                }
            }
        }
        let answers = [openai_gemini::embeddings_response(&answer, "m", ask), openai_bedrock::embeddings_response(&answer, "m", ask)];
        for out in answers.into_iter().flatten() {
            let list: Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(&list["object"], "list");
            prop_assert!(list["usage"]["prompt_tokens"].is_u64());
        }
    }
}
