//! Table-driven checks of each mapping, over payloads shaped as the providers' docs show them
//! (`core/tests/fixtures/anthropic/`).

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::super::test_support::{
    MALFORMED_EVERYWHERE, assert_malformed, completion, deltas, openai_chunks, translated,
};
use super::*;

const TARGET: Target<'static> =
    Target { model: "claude-sonnet-4-5-20250929", default_max_tokens: 4096, drop_params: false };

fn translate(body: Value) -> Value {
    translated(request, &TARGET, &body)
}

#[test]
fn a_conversation_with_system_images_and_tools_maps_field_by_field() {
    let got = translate(json!({
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather there?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
            {"role": "user", "content": "Thanks"}
        ],
        "max_completion_tokens": 300,
        "stop": "END",
        "temperature": 0.2,
        "top_p": 0.9,
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "user-42",
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                  {"type": "function", "function": {"name": "get_time"}}],
        "tool_choice": "required",
        "parallel_tool_calls": false
    }));
    assert_eq!(
        got,
        json!({
            "model": "claude-sonnet-4-5-20250929",
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric units."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture, and the weather there?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18°C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
                    {"type": "text", "text": "Thanks"}
                ]}
            ],
            "max_tokens": 300,
            "stop_sequences": ["END"],
            "temperature": 0.2,
            "top_p": 0.9,
            "stream": true,
            "metadata": {"user_id": "user-42"},
            "tools": [
                {"name": "get_weather", "description": "Weather now", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
        })
    );
}

#[test]
fn max_tokens_comes_from_the_deployment_when_the_client_sends_none_and_one_system_text_is_a_string() {
    let got = translate(
        json!({"model": "x", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]}),
    );
    assert_eq!(got["max_tokens"], 4096);
    assert_eq!(got["system"], "S");
    assert_eq!(got["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]));
    let got = translate(
        json!({"model": "x", "messages": [], "max_tokens": 7, "tool_choice": {"type": "function", "function": {"name": "f"}}}),
    );
    assert_eq!(
        (got["max_tokens"].clone(), got["tool_choice"].clone()),
        (json!(7), json!({"type": "tool", "name": "f"}))
    );
}

#[test]
fn parameters_anthropic_cannot_take_are_refused_by_name_unless_dropped() {
    let body = json!({"model": "x", "messages": [], "logit_bias": {"1": 2}, "n": 2, "seed": 1, "n_extra_unknown": true, "response_format": {"type": "json_object"}});
    let e = request(body.to_string().as_bytes(), &TARGET).unwrap_err();
    assert_eq!(
        e,
        ConversionError::Unsupported {
            provider: "anthropic",
            params: vec![
                "logit_bias".into(),
                "n".into(),
                "n_extra_unknown".into(),
                "response_format".into(),
                "seed".into()
            ]
        }
    );
    assert!(e.to_string().contains("drop_params"), "{e}");
    let dropping = Target { drop_params: true, ..TARGET };
    let translated = request(body.to_string().as_bytes(), &dropping).unwrap();
    assert_eq!(translated.dropped.len(), 5);
    let sent: Value = serde_json::from_slice(&translated.body).unwrap();
    assert!(sent.get("logit_bias").is_none() && sent.get("seed").is_none() && sent.get("n").is_none());
    // n = 1 and a text response format ask for nothing Anthropic lacks.
    assert!(
        request(
            json!({"model": "x", "messages": [], "n": 1, "response_format": {"type": "text"}}).to_string().as_bytes(),
            &TARGET
        )
        .is_ok()
    );
}

#[test]
fn malformed_requests_get_a_reason() {
    let own = [
        (
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}"#,
            "http(s) URL",
        ),
        (r#"{"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}"#, "input_audio"),
    ];
    assert_malformed(request, &TARGET, MALFORMED_EVERYWHERE.iter().chain(&own));
}

#[test]
fn a_response_with_text_and_a_tool_call_becomes_a_chat_completion() {
    let body = include_bytes!("../../tests/fixtures/anthropic/response_tool_use.json");
    let got: Value = serde_json::from_slice(&response(body, "claude", 1_700_000_000, false).unwrap()).unwrap();
    assert_eq!(
        got,
        json!({
            "id": "msg_01Aq9w938a90dw8q",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "claude",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "I'll check the weather.",
                    "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                                    "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\",\"unit\":\"celsius\"}"}}]
                },
                "finish_reason": "tool_calls"
            }],
            "usage": {
                "prompt_tokens": 3105,
                "completion_tokens": 503,
                "total_tokens": 3608,
                "prompt_tokens_details": {"cached_tokens": 1000},
                "cache_creation_input_tokens": 10,
                "cache_read_input_tokens": 1000
            }
        })
    );
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ] {
        let body = json!({"id": "m", "content": [{"type": "text", "text": "x"}], "stop_reason": stop, "usage": {"input_tokens": 1, "output_tokens": 1}});
        let got: Value = completion(|b, m, c| response(b, m, c, false), &body.to_string());
        assert_eq!(got["choices"][0]["finish_reason"], finish, "{stop}");
    }
    let bad = response(b"{\"type\":\"message\"}", "m", 0, false).unwrap_err();
    assert!(matches!(bad, ConversionError::InvalidResponse { .. }), "{bad:?}");
}

#[test]
fn provider_errors_come_back_in_openai_shape() {
    let body = include_bytes!("../../tests/fixtures/anthropic/error_overloaded.json");
    let got: Value = serde_json::from_slice(&error(body)).unwrap();
    assert_eq!(
        got,
        json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": "overloaded_error"}})
    );
    let got: Value = serde_json::from_slice(&error(b"<html>bad gateway</html>")).unwrap();
    assert!(got["error"]["message"].as_str().unwrap().contains("bad gateway"));
}

/// The OpenAI chunks a translator writes for `stream`, fed in `pieces`.
fn stream_chunks(pieces: &[&[u8]], include_usage: bool) -> (Vec<Value>, bool, Usage) {
    let mut t = StreamTranslator::new("claude", 1_700_000_000, include_usage, false);
    let (chunks, done) = openai_chunks(pieces, |piece, end| t.feed(piece, end));
    (chunks, done, t.usage())
}

#[test]
fn a_streamed_tool_call_becomes_openai_chunks_whatever_the_split() {
    let stream = include_bytes!("../../tests/fixtures/anthropic/stream_tool_use.sse");
    let (chunks, done, usage) = stream_chunks(&[stream], true);
    assert!(done);
    assert_eq!(
        deltas(&chunks),
        [
            json!({"role": "assistant", "content": ""}),
            json!({"content": "Okay"}),
            json!({"content": ", let's check the weather."}),
            json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"San Francisco, CA\"}"}}]}),
            json!({}),
            Value::Null, // the usage chunk has no choices
        ]
    );
    assert!(chunks.iter().all(|c| c["id"] == "msg_014p7gG3wDgGV9EUtLvnow3U"
        && c["model"] == "claude"
        && c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[7]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[8]["usage"]["prompt_tokens"], 622);
    assert_eq!(chunks[8]["usage"]["completion_tokens"], 89);
    assert_eq!(chunks[8]["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 622,
            cached_prompt_tokens: 100,
            cache_write_tokens: 50,
            completion_tokens: 89,
            reasoning_tokens: 0
        }
    );

    // Split at every byte: the same chunks.
    let whole = stream_chunks(&[stream], true);
    for at in (0..stream.len()).step_by(7) {
        let (a, b) = stream.split_at(at);
        assert_eq!(stream_chunks(&[a, b], true), whole, "split at {at}");
    }
    // Without include_usage, no usage chunk (the request is still charged: `usage()`).
    let (chunks, done, usage) = stream_chunks(&[stream], false);
    assert!(done && chunks.len() == 8 && usage.completion_tokens == 89);
}

#[test]
fn a_stream_that_fails_or_is_cut_still_ends_for_the_client() {
    let failed = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":5}}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let (chunks, done, _) = stream_chunks(&[failed], true);
    assert!(done);
    assert_eq!(chunks.last().unwrap()["error"]["type"], "overloaded_error");
    // Cut after the first delta: what arrived is sent, then the end.
    let cut = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":5}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}";
    let (chunks, done, usage) = stream_chunks(&[cut], true);
    assert!(done);
    assert_eq!(chunks.last().unwrap()["choices"][0]["delta"]["content"], "Hel");
    assert_eq!(usage.prompt_tokens, 5);
    // Garbage from the provider is no panic and no chunk.
    let (chunks, done, _) = stream_chunks(&[b"data: {not json\n\nevent: content_block_delta\ndata: 7\n\n"], false);
    assert!(done && chunks.is_empty(), "{chunks:?}");
}

// ---- response_format: a JSON schema through a forced tool call (LiteLLM's way) ----------------

const SCHEMA: &str = r#"{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}"#;

fn with_schema(extra: Value) -> Value {
    let mut body = json!({"model": "claude", "messages": [{"role": "user", "content": "Where?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": serde_json::from_str::<Value>(SCHEMA).unwrap()}}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

#[test]
fn a_json_schema_is_a_forced_tool_and_its_call_is_the_answer() {
    let body = with_schema(json!({}));
    let out = request(body.to_string().as_bytes(), &TARGET).unwrap();
    assert!(out.json_mode && out.dropped.is_empty());
    let sent: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(
        sent["tools"],
        json!([{"name": "json_tool_call", "input_schema": serde_json::from_str::<Value>(SCHEMA).unwrap()}])
    );
    assert_eq!(sent["tool_choice"], json!({"type": "tool", "name": "json_tool_call"}));
    // With the client's own tools, its choice stands and the JSON tool is one more.
    let own =
        with_schema(json!({"tools": [{"type": "function", "function": {"name": "lookup"}}], "tool_choice": "auto"}));
    let sent: Value = serde_json::from_slice(&request(own.to_string().as_bytes(), &TARGET).unwrap().body).unwrap();
    let names: Vec<&str> = sent["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!((names, &sent["tool_choice"]), (vec!["lookup", "json_tool_call"], &json!({"type": "auto"})));
    // The answer: the tool's input is the message's content, and the turn is complete.
    let answer = br#"{"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "json_tool_call", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 20, "output_tokens": 9}}"#;
    let got: Value = serde_json::from_slice(&response(answer, "claude", 0, true).unwrap()).unwrap();
    let message = &got["choices"][0]["message"];
    assert_eq!(serde_json::from_str::<Value>(message["content"].as_str().unwrap()).unwrap(), json!({"city": "Paris"}));
    assert!(message.get("tool_calls").is_none(), "{message}");
    assert_eq!(got["choices"][0]["finish_reason"], "stop");
    // Not asked for JSON: a tool of that name is a tool call like any.
    let plain: Value = serde_json::from_slice(&response(answer, "claude", 0, false).unwrap()).unwrap();
    assert_eq!(plain["choices"][0]["finish_reason"], "tool_calls");
}

#[test]
fn json_object_without_a_schema_cannot_be_held_to_and_is_refused_or_dropped() {
    let body = json!({"model": "claude", "messages": [], "response_format": {"type": "json_object"}});
    let e = request(body.to_string().as_bytes(), &TARGET).unwrap_err();
    assert_eq!(e, ConversionError::Unsupported { provider: "anthropic", params: vec!["response_format".into()] });
    let lenient = Target { drop_params: true, ..TARGET };
    let out = request(body.to_string().as_bytes(), &lenient).unwrap();
    assert!(!out.json_mode && out.dropped == ["response_format"]);
    // A schema under drop_params is honoured, not dropped.
    let out = request(with_schema(json!({})).to_string().as_bytes(), &lenient).unwrap();
    assert!(out.json_mode && out.dropped.is_empty());
}

#[test]
fn a_streamed_json_answer_is_content_chunks_whatever_the_split() {
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"json_tool_call\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    )
    .as_bytes();
    for split in [stream.len(), 1, 7, 100] {
        let pieces: Vec<&[u8]> = stream.chunks(split).collect();
        let mut t = StreamTranslator::new("claude", 0, false, true);
        let (chunks, done) = openai_chunks(&pieces, |piece, end| t.feed(piece, end));
        assert!(done && t.completed());
        let text: String =
            deltas(&chunks).iter().filter_map(|d| d.get("content")?.as_str().map(str::to_owned)).collect();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({"city": "Paris"}), "split {split}");
        assert!(deltas(&chunks).iter().all(|d| d.get("tool_calls").is_none()));
        let finish: Vec<&Value> =
            chunks.iter().filter_map(|c| c["choices"][0].get("finish_reason")).filter(|f| !f.is_null()).collect();
        assert_eq!(finish, [&json!("stop")], "split {split}");
        assert_eq!(t.usage().completion_tokens, 9);
    }
}
