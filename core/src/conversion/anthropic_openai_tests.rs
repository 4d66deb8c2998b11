//! Each mapping, table-driven, over payloads shaped as the providers' docs show them.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::super::test_support::translated;
use super::*;

const TARGET: Target<'static> = Target { model: "gpt-4o-2024-08-06", default_max_tokens: 4096, drop_params: false };

fn translate(body: Value) -> Value {
    translated(request, &TARGET, &body)
}

#[test]
fn a_claude_code_style_request_maps_field_by_field() {
    let got = translate(json!({
        "model": "gpt-4o",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Read the file"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "…", "signature": "s"},
                {"type": "text", "text": "Reading it."},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.rs"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "fn main() {}"}]},
                {"type": "text", "text": "Now explain it"}
            ]}
        ],
        "tools": [{"name": "Read", "description": "Reads a file", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "metadata": {"user_id": "user_abc"},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "stream": true
    }));
    assert_eq!(
        got,
        json!({
            "model": "gpt-4o-2024-08-06",
            "messages": [
                {"role": "system", "content": "You are Claude Code."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Read the file"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}
                ]},
                {"role": "assistant", "content": "Reading it.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": "{\"path\":\"a.rs\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "fn main() {}"},
                {"role": "user", "content": [{"type": "text", "text": "Now explain it"}]}
            ],
            "max_tokens": 1024,
            "stop": ["END"],
            "temperature": 0.5,
            "stream": true,
            "stream_options": {"include_usage": true},
            "user": "user_abc",
            "tools": [{"type": "function", "function": {"name": "Read", "description": "Reads a file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}],
            "tool_choice": "auto",
            "parallel_tool_calls": false
        })
    );
}

#[test]
fn what_openai_cannot_take_is_refused_by_name() {
    let body = json!({"model": "x", "max_tokens": 5, "messages": [], "top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 100}});
    let e = request(body.to_string().as_bytes(), &TARGET).unwrap_err();
    assert_eq!(e, ConversionError::Unsupported { provider: "openai", params: vec!["thinking".into(), "top_k".into()] });
    for (body, reason) in [
        (r#"{"messages": [{"role": "system", "content": "x"}]}"#, "not user or assistant"),
        (r#"{"messages": [{"role": "user", "content": [{"type": "document"}]}]}"#, "document"),
        (r#"{"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}"#, "server tools"),
        (r#"{"messages": [], "tool_choice": {"type": "tool"}}"#, "tool_choice.name"),
    ] {
        let e = request(body.as_bytes(), &TARGET).unwrap_err();
        assert!(e.to_string().contains(reason), "{body}: {e}");
    }
}

#[test]
fn a_chat_completion_becomes_a_messages_response() {
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Checking.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129, "prompt_tokens_details": {"cached_tokens": 100}}
    });
    let got: Value = serde_json::from_slice(&response(body.to_string().as_bytes(), "gpt-4o").unwrap()).unwrap();
    assert_eq!(
        got,
        json!({
            "id": "chatcmpl-1", "type": "message", "role": "assistant", "model": "gpt-4o",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 9, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0}
        })
    );
    for (finish, stop) in [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")] {
        let body = json!({"id": "c", "choices": [{"message": {"content": "x"}, "finish_reason": finish}]});
        let got: Value = serde_json::from_slice(&response(body.to_string().as_bytes(), "m").unwrap()).unwrap();
        assert_eq!(got["stop_reason"], stop);
    }
    assert!(response(b"{}", "m").is_err());
}

#[test]
fn errors_come_back_in_anthropic_shape() {
    let got: Value = serde_json::from_slice(&error(
        br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
        429,
    ))
    .unwrap();
    assert_eq!(got, json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}}));
    let got: Value = serde_json::from_slice(&error(b"oops", 502)).unwrap();
    assert_eq!(got["error"]["type"], "api_error");
}

const STREAM: &str = concat!(
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":1}\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":7,\"total_tokens\":57}}\n\n",
    "data: [DONE]\n\n",
);

fn events(pieces: &[&[u8]]) -> (Vec<(String, Value)>, StreamTranslator) {
    let mut t = StreamTranslator::new("gpt-4o");
    let mut out = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        out.extend(t.feed(p, i + 1 == pieces.len()));
    }
    let text = String::from_utf8(out).unwrap();
    let parsed = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (event, data) = e.split_once('\n').unwrap();
            (
                event.strip_prefix("event: ").unwrap().to_owned(),
                serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
            )
        })
        .collect();
    (parsed, t)
}

#[test]
fn an_openai_stream_becomes_anthropic_events_whatever_the_split() {
    let (got, t) = events(&[STREAM.as_bytes()]);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(got[1].1["content_block"], json!({"type": "text", "text": ""}));
    assert_eq!(got[3].1["delta"], json!({"type": "text_delta", "text": "lo"}));
    assert_eq!(got[5].1["content_block"], json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {}}));
    assert_eq!((got[5].1["index"].clone(), got[6].1["delta"]["partial_json"].clone()), (json!(1), json!("{\"a\":1}")));
    assert_eq!(got[8].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(got[8].1["usage"]["output_tokens"], 7);
    assert_eq!(got[8].1["usage"]["input_tokens"], 50);
    assert!(t.completed());
    assert_eq!((t.usage().prompt_tokens, t.usage().completion_tokens), (50, 7));
    let bytes = STREAM.as_bytes();
    for at in (0..bytes.len()).step_by(5) {
        let (a, b) = bytes.split_at(at);
        assert_eq!(events(&[a, b]).0, got, "split at {at}");
    }
}

#[test]
fn a_cut_or_failed_stream_still_ends_with_message_stop() {
    let cut = &STREAM.as_bytes()[..300];
    let (got, t) = events(&[cut]);
    assert_eq!(got.last().unwrap().0, "message_stop");
    assert!(!t.completed());
    let (got, _) = events(&[b"data: {\"error\":{\"message\":\"boom\"}}\n\n"]);
    assert!(got.iter().any(|(n, d)| n == "error" && d["error"]["message"] == "boom"), "{got:?}");
    let (got, _) = events(&[b"data: {garbage\n\n"]);
    assert_eq!(
        got.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["message_start", "message_delta", "message_stop"]
    );
}
