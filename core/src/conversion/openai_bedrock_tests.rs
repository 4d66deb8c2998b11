//! Table-driven checks of each mapping, over payloads shaped as AWS's Bedrock Converse API
//! reference and user guide show them (text, images, tool use, streaming, errors).

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::super::aws_eventstream::encode;
use super::super::test_support::{
    MALFORMED_EVERYWHERE, MALFORMED_FOR_GEMINI_AND_BEDROCK, assert_a_text_stream, assert_any_split_reads_the_same,
    assert_invalid_responses, assert_malformed, completion, completion_for, deltas, openai_chunks, translated,
    with_fields,
};
use super::*;

const TARGET: Target<'static> =
    Target { model: "anthropic.claude-3-5-sonnet-20240620-v1:0", default_max_tokens: 4096, drop_params: false };

fn translate(body: Value) -> Value {
    translated(request, &TARGET, &body)
}

#[test]
fn a_conversation_with_system_turns_and_an_image_maps_field_by_field() {
    let got = translate(json!({
        "model": "bedrock-claude",
        "messages": [
            {"role": "system", "content": "You are an app that creates playlists for a radio station that plays rock and pop music."},
            {"role": "developer", "content": [{"type": "text", "text": "Only return song names and the artist."}]},
            {"role": "user", "content": "Create a list of 3 pop songs."},
            {"role": "assistant", "content": "Here is a list of 3 pop songs by artists from the United Kingdom:\n\n1. \"As It Was\" by Harry Styles"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": [
                {"type": "text", "text": "What's in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}},
                {"type": "image_url", "image_url": {"url": "data:image/JPG;base64,/9j/4AAQSkZJRgABAQ=="}},
                {"type": "image_url", "image_url": "data:image/webp;base64,UklGRiQAAABXRUJQ"}
            ]},
            {"role": "user", "content": [{"type": "text", "text": "And make it a radio-friendly one."},
                {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lGODlhAQABAAAAACw="}}]}
        ],
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "user-42",
        "metadata": {"k": "v"},
        "store": false,
        "parallel_tool_calls": true,
        "service_tier": "auto",
        "n": 1,
        "response_format": {"type": "text"},
        "seed": null
    }));
    assert_eq!(
        got,
        json!({
            "system": [
                {"text": "You are an app that creates playlists for a radio station that plays rock and pop music."},
                {"text": "Only return song names and the artist."}
            ],
            "messages": [
                {"role": "user", "content": [{"text": "Create a list of 3 pop songs."}]},
                {"role": "assistant", "content": [{"text": "Here is a list of 3 pop songs by artists from the United Kingdom:\n\n1. \"As It Was\" by Harry Styles"}]},
                {"role": "user", "content": [
                    {"text": "What's in this image?"},
                    {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgoAAAANSUhEUg=="}}},
                    {"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQSkZJRgABAQ=="}}},
                    {"image": {"format": "webp", "source": {"bytes": "UklGRiQAAABXRUJQ"}}},
                    {"text": "And make it a radio-friendly one."},
                    {"image": {"format": "gif", "source": {"bytes": "R0lGODlhAQABAAAAACw="}}}
                ]}
            ],
            "inferenceConfig": {"maxTokens": 4096}
        })
    );
}

/// The tool of AWS's Converse tool use example.
fn top_song_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "top_song",
        "description": "Get the most popular song played on a radio station.",
        "parameters": {"type": "object", "properties": {"sign": {"type": "string",
            "description": "The call sign for the radio station for which you want the most popular song. Example calls signs are WZPZ, and WKRP."}},
            "required": ["sign"]}
    }})
}

#[test]
fn tool_calls_and_their_results_round_trip_as_tool_use_and_tool_result() {
    let got = translate(json!({
        "messages": [
            {"role": "user", "content": "What is the most popular song on WZPZ and on WKRP?"},
            {"role": "assistant", "content": "I'll look both up.", "tool_calls": [
                {"id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "type": "function", "function": {"name": "top_song", "arguments": "{\"sign\": \"WZPZ\"}"}},
                {"id": "tooluse_2", "type": "function", "function": {"name": "top_song", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "content": "{\"song\": \"Elemental Hotel\", \"artist\": \"8 Storey Hike\"}"},
            {"role": "tool", "tool_call_id": "tooluse_2", "content": [{"type": "text", "text": "Station WKRP not found"}]},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [top_song_tool(), {"type": "function", "function": {"name": "get_time"}}],
        "tool_choice": "auto"
    }));
    assert_eq!(
        got,
        json!({
            "messages": [
                {"role": "user", "content": [{"text": "What is the most popular song on WZPZ and on WKRP?"}]},
                {"role": "assistant", "content": [
                    {"text": "I'll look both up."},
                    {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song", "input": {"sign": "WZPZ"}}},
                    {"toolUse": {"toolUseId": "tooluse_2", "name": "top_song", "input": {}}}
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "content": [{"json": {"song": "Elemental Hotel", "artist": "8 Storey Hike"}}], "status": "success"}},
                    {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "Station WKRP not found"}], "status": "success"}},
                    {"text": "Thanks"}
                ]}
            ],
            "inferenceConfig": {"maxTokens": 4096},
            "toolConfig": {
                "tools": [
                    {"toolSpec": {
                        "name": "top_song",
                        "description": "Get the most popular song played on a radio station.",
                        "inputSchema": {"json": {"type": "object", "properties": {"sign": {"type": "string",
                            "description": "The call sign for the radio station for which you want the most popular song. Example calls signs are WZPZ, and WKRP."}},
                            "required": ["sign"]}}
                    }},
                    {"toolSpec": {"name": "get_time", "inputSchema": {"json": {"type": "object", "properties": {}}}}}
                ],
                "toolChoice": {"auto": {}}
            }
        })
    );

    // The answer to the first call comes back as a tool call, and goes back as a toolUse.
    let answer: Value = completion(converse, TOOL_USE_RESPONSE);
    let sent = translate(json!({
        "messages": [
            {"role": "user", "content": "What is the most popular song on WZPZ?"},
            answer["choices"][0]["message"],
            {"role": "tool", "tool_call_id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "content": "Elemental Hotel"}
        ],
        "tools": [top_song_tool()]
    }));
    assert_eq!(
        sent["messages"][1],
        json!({"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song", "input": {"sign": "WZPZ"}}}
        ]})
    );
    assert!(sent["toolConfig"].get("toolChoice").is_none());
}

#[test]
fn tool_choice_maps_and_none_keeps_the_tools_without_a_choice() {
    for (choice, expected) in [
        (json!("auto"), json!({"auto": {}})),
        (json!("required"), json!({"any": {}})),
        (json!({"type": "function", "function": {"name": "top_song"}}), json!({"tool": {"name": "top_song"}})),
        (json!("none"), Value::Null),
        (Value::Null, Value::Null),
    ] {
        let got = translate(json!({"messages": [], "tools": [top_song_tool()], "tool_choice": choice}));
        assert_eq!(got["toolConfig"]["tools"][0]["toolSpec"]["name"], "top_song", "{choice}");
        assert_eq!(got["toolConfig"].get("toolChoice").cloned().unwrap_or(Value::Null), expected, "{choice}");
    }
    // No tools: no toolConfig, whatever the choice.
    for extra in [json!({}), json!({"tool_choice": "none"}), json!({"tools": [], "tool_choice": "auto"})] {
        let body = with_fields(json!({"messages": [{"role": "user", "content": "Hi"}]}), &extra);
        assert!(translate(body).get("toolConfig").is_none(), "{extra}");
    }
    // Tool calls in the history but no tools: Bedrock wants a toolConfig, so they are declared.
    let got = translate(json!({"messages": [
        {"role": "user", "content": "Summarise what happened."},
        {"role": "assistant", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "top_song", "arguments": "{\"sign\":\"WZPZ\"}"}},
            {"id": "t2", "type": "function", "function": {"name": "top_song", "arguments": "{\"sign\":\"WKRP\"}"}}
        ]},
        {"role": "tool", "tool_call_id": "t1", "content": "Elemental Hotel"},
        {"role": "tool", "tool_call_id": "t2", "content": "Not found"}
    ], "tool_choice": "required"}));
    assert_eq!(
        got["toolConfig"],
        json!({"tools": [{"toolSpec": {"name": "top_song", "description": "A tool this conversation used earlier.", "inputSchema": {"json": {"type": "object"}}}}]})
    );
    let got = translate(json!({"messages": [{"role": "tool", "tool_call_id": "t1", "content": "orphan"}]}));
    assert_eq!(got["toolConfig"]["tools"][0]["toolSpec"]["name"], "tool");
}

#[test]
fn output_and_sampling_settings_map_to_inference_config() {
    for (extra, config) in [
        (json!({}), json!({"maxTokens": 4096})),
        (json!({"max_tokens": 512}), json!({"maxTokens": 512})),
        (json!({"max_tokens": 512, "max_completion_tokens": 2000}), json!({"maxTokens": 2000})),
        (json!({"max_tokens": null, "temperature": null, "stop": null}), json!({"maxTokens": 4096})),
        (json!({"temperature": 0.5, "top_p": 0.9}), json!({"maxTokens": 4096, "temperature": 0.5, "topP": 0.9})),
        (json!({"stop": "END"}), json!({"maxTokens": 4096, "stopSequences": ["END"]})),
        (json!({"stop": ["\n\nHuman:", "END"]}), json!({"maxTokens": 4096, "stopSequences": ["\n\nHuman:", "END"]})),
    ] {
        let got = translate(with_fields(
            json!({"model": "bedrock-claude", "messages": [{"role": "user", "content": "Hi"}]}),
            &extra,
        ));
        assert_eq!(got["inferenceConfig"], config, "{extra}");
        assert!(got.get("model").is_none() && got.get("modelId").is_none(), "the model goes in the URL");
    }
}

#[test]
fn parameters_bedrock_cannot_take_are_refused_by_name_unless_dropped() {
    let body = json!({
        "model": "bedrock-claude",
        "messages": [{"role": "user", "content": "Hi"}],
        "n": 2,
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
        "logprobs": true,
        "logit_bias": {"1": 2},
        "response_format": {"type": "json_object"},
        "reasoning_effort": "low",
        "temperature": 0.3
    });
    let e = request(body.to_string().as_bytes(), &TARGET).unwrap_err();
    let names = [
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "n",
        "presence_penalty",
        "reasoning_effort",
        "response_format",
        "seed",
    ];
    assert_eq!(
        e,
        ConversionError::Unsupported { provider: "bedrock", params: names.iter().map(|s| (*s).to_owned()).collect() }
    );
    assert!(e.to_string().contains("drop_params"), "{e}");
    let dropping = Target { drop_params: true, ..TARGET };
    let translated = request(body.to_string().as_bytes(), &dropping).unwrap();
    assert_eq!(translated.dropped, names);
    let sent: Value = serde_json::from_slice(&translated.body).unwrap();
    assert_eq!(
        sent,
        json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 4096, "temperature": 0.3}})
    );
}

#[test]
fn an_http_image_is_refused_unless_dropped() {
    let body = json!({"messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "What's in these images?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        ]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/dog.png"}}]}
    ]});
    let e = request(body.to_string().as_bytes(), &TARGET).unwrap_err();
    assert!(matches!(e, ConversionError::InvalidRequest { .. }), "{e:?}");
    assert!(e.to_string().contains("Bedrock takes images only as base64 data URLs"), "{e}");
    let dropping = Target { drop_params: true, ..TARGET };
    let translated = request(body.to_string().as_bytes(), &dropping).unwrap();
    assert_eq!(translated.dropped, ["image_url"]);
    let sent: Value = serde_json::from_slice(&translated.body).unwrap();
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": [
            {"text": "What's in these images?"},
            {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
        ]}])
    );
    // A message left with nothing at all is left out.
    let only = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]});
    let sent: Value = serde_json::from_slice(&request(only.to_string().as_bytes(), &dropping).unwrap().body).unwrap();
    assert_eq!(sent["messages"], json!([]));
}

#[test]
fn malformed_requests_get_a_reason() {
    let own = [
        (r#"{"messages": [{"role": "user", "content": 7}]}"#, "string or an array"),
        (r#"{"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]}"#, "without an id"),
        (r#"{"messages": [{"role": "assistant", "tool_calls": {}}]}"#, "tool_calls must be"),
        (
            r#"{"messages": [{"role": "tool", "tool_call_id": "t", "content": [{"type": "image_url"}]}]}"#,
            "must be text",
        ),
        (
            r#"{"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": "data:image/png;base64,AA=="}]}]}"#,
            "only text",
        ),
        (
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}"#,
            "base64 data URL",
        ),
        (
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}]}]}"#,
            "image/bmp",
        ),
        (r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}"#, "url is missing"),
        (r#"{"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}"#, "input_audio"),
        (r#"{"messages": [], "top_p": "high"}"#, "top_p"),
        (r#"{"messages": [], "tool_choice": {"type": "function"}}"#, "function.name"),
        (r#"{"messages": [], "tool_choice": 1}"#, "string or an object"),
        (r#"{"messages": [], "tools": {}}"#, "tools must be an array"),
        (r#"{"messages": [], "tools": [{"type": "retrieval"}]}"#, "retrieval"),
    ];
    assert_malformed(request, &TARGET, MALFORMED_EVERYWHERE.iter().chain(MALFORMED_FOR_GEMINI_AND_BEDROCK).chain(&own));
}

/// A Converse answer as the user guide shows one (with the reasoning a Claude 3.7 model
/// returns with thinking on), and cached prompt tokens.
const TEXT_RESPONSE: &str = r#"{
  "output": {
    "message": {
      "role": "assistant",
      "content": [
        {"reasoningContent": {"reasoningText": {"text": "The user wants three songs.", "signature": "ErcBCkgIAhABGAIiQ"}}},
        {"text": "Here is a list of 3 pop songs by artists from the United Kingdom:\n\n"},
        {"text": "1. \"As It Was\" by Harry Styles\n2. \"Easy On Me\" by Adele\n3. \"Unholy\" by Sam Smith and Kim Petras"}
      ]
    }
  },
  "stopReason": "end_turn",
  "usage": {"inputTokens": 125, "outputTokens": 60, "totalTokens": 1385, "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 200},
  "metrics": {"latencyMs": 1175},
  "ResponseMetadata": {"RequestId": "5d6b2c1e-0f44-4b5a-9c7e-1a2b3c4d5e6f", "HTTPStatusCode": 200}
}"#;

/// The tool use answer of AWS's Converse tool use example.
const TOOL_USE_RESPONSE: &str = r#"{
  "output": {
    "message": {
      "role": "assistant",
      "content": [
        {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song", "input": {"sign": "WZPZ"}}}
      ]
    }
  },
  "stopReason": "tool_use",
  "usage": {"inputTokens": 375, "outputTokens": 53, "totalTokens": 428},
  "metrics": {"latencyMs": 1185}
}"#;

#[test]
fn a_text_response_becomes_a_chat_completion_without_its_reasoning() {
    let got = completion_for(converse, TEXT_RESPONSE, "bedrock-claude", 1_700_000_000);
    assert_eq!(
        got,
        json!({
            "id": "chatcmpl-5d6b2c1e-0f44-4b5a-9c7e-1a2b3c4d5e6f",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "bedrock-claude",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Here is a list of 3 pop songs by artists from the United Kingdom:\n\n1. \"As It Was\" by Harry Styles\n2. \"Easy On Me\" by Adele\n3. \"Unholy\" by Sam Smith and Kim Petras"},
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": 1325,
                "completion_tokens": 60,
                "total_tokens": 1385,
                "prompt_tokens_details": {"cached_tokens": 1000},
                "cache_creation_input_tokens": 200,
                "cache_read_input_tokens": 1000
            }
        })
    );
    assert_eq!(
        usage_of(TEXT_RESPONSE.as_bytes()),
        Some(Usage {
            prompt_tokens: 1325,
            cached_prompt_tokens: 1000,
            cache_write_tokens: 200,
            completion_tokens: 60,
            reasoning_tokens: 0
        })
    );
    assert_eq!(
        usage_of(TOOL_USE_RESPONSE.as_bytes()),
        Some(Usage { prompt_tokens: 375, completion_tokens: 53, ..Usage::default() })
    );
    for body in [&b"not json"[..], b"{}", b"{\"usage\": 5}", b"{\"usage\": {\"inputTokens\": 1.5}}", b"null"] {
        assert_eq!(usage_of(body), None, "{body:?}");
    }
    assert_eq!(usage_of(b"{\"usage\": {}}"), Some(Usage::default()));
}

#[test]
fn a_tool_use_response_becomes_tool_calls() {
    let got: Value = completion_for(converse, TOOL_USE_RESPONSE, "m", 7);
    assert_eq!(
        got["choices"],
        json!([{
            "index": 0,
            "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "type": "function", "function": {"name": "top_song", "arguments": "{\"sign\":\"WZPZ\"}"}}
            ]},
            "finish_reason": "tool_calls"
        }])
    );
    assert_eq!(got["usage"]["total_tokens"], 428);
    // No request id in the body: an id from a digest of it, the same every time.
    let again: Value = completion_for(converse, TOOL_USE_RESPONSE, "m", 7);
    assert_eq!(got["id"], again["id"]);
    assert!(got["id"].as_str().unwrap().starts_with("chatcmpl-bedrock"), "{}", got["id"]);
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (reason, finish) in [
        (json!("end_turn"), "stop"),
        (json!("stop_sequence"), "stop"),
        (json!("tool_use"), "tool_calls"),
        (json!("max_tokens"), "length"),
        (json!("model_context_window_exceeded"), "length"),
        (json!("guardrail_intervened"), "content_filter"),
        (json!("content_filtered"), "content_filter"),
        (json!("something_new"), "stop"),
        (Value::Null, "stop"),
    ] {
        let body = json!({"output": {"message": {"role": "assistant", "content": [{"text": "Here is"}]}}, "stopReason": reason,
            "usage": {"inputTokens": 10, "outputTokens": 2, "totalTokens": 12}});
        let got: Value = completion(converse, &body.to_string());
        assert_eq!(got["choices"][0]["finish_reason"], finish, "{reason}");
        assert_eq!(got["choices"][0]["message"]["content"], "Here is");
    }
    // Cut at max_tokens before any text: an empty answer, not a null one.
    let body = r#"{"output":{"message":{"role":"assistant","content":[]}},"stopReason":"max_tokens","usage":{"inputTokens":9,"outputTokens":0,"totalTokens":9}}"#;
    let got: Value = completion(converse, body);
    assert_eq!(got["choices"][0]["message"], json!({"role": "assistant", "content": ""}));
    assert_eq!(got["choices"][0]["finish_reason"], "length");
    assert_invalid_responses(converse, &["not json", "[]", "{}", r#"{"output": {"message": {"content": "x"}}}"#]);
}

#[test]
fn provider_errors_come_back_in_openai_shape_typed_by_status() {
    for (status, message, kind) in [
        (400, "The model returned the following errors: max_tokens: field required", "invalid_request_error"),
        (403, "You don't have access to the model with the specified model ID.", "authentication_error"),
        (404, "The provided model identifier is invalid.", "not_found_error"),
        (429, "Too many requests, please wait before trying again.", "rate_limit_error"),
        (500, "The system encountered an unexpected error during processing. Try your request again.", "api_error"),
        (503, "Bedrock is unable to process your request.", "api_error"),
        (424, "Received error from the model.", "api_error"),
    ] {
        let body = json!({"message": message});
        let got: Value = serde_json::from_slice(&error(body.to_string().as_bytes(), status)).unwrap();
        assert_eq!(got, json!({"error": {"message": message, "type": kind, "param": null, "code": null}}), "{status}");
    }
    let got: Value = serde_json::from_slice(&error(br#"{"Message": "User is not authorized"}"#, 403)).unwrap();
    assert_eq!(got["error"]["message"], "User is not authorized");
    let got: Value = serde_json::from_slice(&error(b"<html>502 Bad Gateway</html>", 502)).unwrap();
    assert_eq!(got["error"]["type"], "api_error");
    assert!(got["error"]["message"].as_str().unwrap().contains("502 Bad Gateway"));
}

/// A `/converse-stream` event message, as Bedrock frames it (its payloads carry a `p` padding
/// field).
fn event(kind: &str, payload: Value) -> Vec<u8> {
    encode(
        &[(":event-type", kind), (":content-type", "application/json"), (":message-type", "event")],
        payload.to_string().as_bytes(),
    )
}

/// The OpenAI chunks a translator writes for `pieces` (the last ends the stream), whether it
/// wrote `[DONE]`, whether it completed, and the usage it counted.
fn stream_chunks(pieces: &[&[u8]], include_usage: bool) -> (Vec<Value>, bool, bool, Usage) {
    let mut t = StreamTranslator::new("bedrock-claude", 1_700_000_000, include_usage, false);
    let (chunks, done) = openai_chunks(pieces, |piece, end| t.feed(piece, end));
    (chunks, done, t.completed(), t.usage())
}

fn text_stream() -> Vec<Vec<u8>> {
    vec![
        event("messageStart", json!({"p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV", "role": "assistant"})),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Three songs."}}, "p": "abcd"}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Here is a list"}, "p": "abcdefgh"}),
        ),
        event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": " of 3 pop songs 🎵"}, "p": "ab"})),
        event("contentBlockStop", json!({"contentBlockIndex": 0, "p": "abcdefghijklmnopq"})),
        event("messageStop", json!({"p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLM", "stopReason": "end_turn"})),
        event(
            "metadata",
            json!({"metrics": {"latencyMs": 1201}, "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHI",
                "usage": {"inputTokens": 50, "outputTokens": 12, "totalTokens": 1062, "cacheReadInputTokens": 900, "cacheWriteInputTokens": 100}}),
        ),
    ]
}

#[test]
fn a_streamed_answer_becomes_openai_chunks_whatever_the_split() {
    let stream = text_stream().concat();
    let (chunks, done, completed, usage) = stream_chunks(&[&stream], true);
    assert!(done && completed);
    let openai_usage = json!({
        "prompt_tokens": 1050,
        "completion_tokens": 12,
        "total_tokens": 1062,
        "prompt_tokens_details": {"cached_tokens": 900},
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 900
    });
    let texts = ["Here is a list", " of 3 pop songs 🎵"];
    assert_a_text_stream(&chunks, "chatcmpl-bedrock1700000000", "bedrock-claude", texts, &openai_usage);
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 1050,
            cached_prompt_tokens: 900,
            cache_write_tokens: 100,
            completion_tokens: 12,
            reasoning_tokens: 0
        }
    );

    // Split at every byte (inside frames, headers and the emoji): the same chunks.
    let whole = stream_chunks(&[&stream], true);
    assert_any_split_reads_the_same(&stream, &whole, |pieces| stream_chunks(pieces, true));
    let single: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(stream_chunks(&single, true), whole);
    // [DONE] goes out right after metadata: the end of the stream adds nothing.
    let mut t = StreamTranslator::new("bedrock-claude", 0, false, false);
    assert!(t.feed(&stream, false).ends_with(b"data: [DONE]\n\n"));
    assert!(t.completed());
    assert!(t.feed(b"", true).is_empty());
}

#[test]
fn the_usage_chunk_goes_out_only_when_asked_for() {
    let stream = text_stream().concat();
    let (chunks, done, completed, usage) = stream_chunks(&[&stream], false);
    assert!(done && completed);
    assert_eq!(chunks.len(), 4);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    // Still charged.
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (1050, 12));
}

#[test]
fn a_streamed_tool_call_becomes_tool_call_chunks_with_its_input_in_fragments() {
    let stream = [
        event("messageStart", json!({"p": "abcdef", "role": "assistant"})),
        event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Let me look that up."}, "p": "ab"})),
        event("contentBlockStop", json!({"contentBlockIndex": 0, "p": "abc"})),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "p": "abcd",
                "start": {"toolUse": {"name": "top_song", "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"}}}),
        ),
        event("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": ""}}, "p": "a"})),
        event("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"sign\": "}}, "p": "a"})),
        event("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"WZPZ\"}"}}, "p": "a"})),
        event("contentBlockStop", json!({"contentBlockIndex": 1, "p": "abc"})),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 2, "start": {"toolUse": {"name": "top_song", "toolUseId": "tooluse_2"}}}),
        ),
        event("contentBlockDelta", json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{\"sign\": \"WKRP\"}"}}})),
        event("contentBlockStop", json!({"contentBlockIndex": 2})),
        event("messageStop", json!({"p": "abcdefgh", "stopReason": "tool_use"})),
        event("metadata", json!({"metrics": {"latencyMs": 990}, "usage": {"inputTokens": 375, "outputTokens": 53, "totalTokens": 428}})),
    ]
    .concat();
    let (chunks, done, completed, usage) = stream_chunks(&[&stream], false);
    assert!(done && completed);
    assert_eq!(
        deltas(&chunks),
        [
            json!({"role": "assistant", "content": ""}),
            json!({"content": "Let me look that up."}),
            json!({"tool_calls": [{"index": 0, "id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "type": "function", "function": {"name": "top_song", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"sign\": "}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"WZPZ\"}"}}]}),
            json!({"tool_calls": [{"index": 1, "id": "tooluse_2", "type": "function", "function": {"name": "top_song", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"sign\": \"WKRP\"}"}}]}),
            json!({}),
        ]
    );
    assert_eq!(chunks[8]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (375, 53));
    let whole = stream_chunks(&[&stream], false);
    assert_any_split_reads_the_same(&stream, &whole, |pieces| stream_chunks(pieces, false));
}

#[test]
fn an_exception_in_the_stream_reaches_the_client_and_ends_it() {
    let throttled = encode(
        &[
            (":exception-type", "throttlingException"),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        br#"{"message":"Too many requests, please wait before trying again."}"#,
    );
    let mut stream = text_stream();
    stream.insert(3, throttled);
    let stream = stream.concat();
    let (chunks, done, completed, usage) = stream_chunks(&[&stream], true);
    assert!(done && !completed);
    assert_eq!(chunks.len(), 3, "{chunks:?}");
    assert_eq!(
        deltas(&chunks[..2]),
        [json!({"role": "assistant", "content": ""}), json!({"content": "Here is a list"})]
    );
    assert_eq!(
        chunks[2],
        json!({"error": {"message": "Too many requests, please wait before trying again.", "type": "rate_limit_error", "param": null, "code": null}})
    );
    assert_eq!(usage, Usage::default());
    for (exception, kind) in [
        ("validationException", "invalid_request_error"),
        ("modelStreamErrorException", "api_error"),
        ("internalServerException", "api_error"),
        ("serviceUnavailableException", "api_error"),
    ] {
        let raised = encode(&[(":exception-type", exception), (":message-type", "exception")], br#"{"message":"x"}"#);
        let (chunks, done, completed, _) = stream_chunks(&[&raised], false);
        assert!(done && !completed);
        assert_eq!(chunks, [json!({"error": {"message": "x", "type": kind, "param": null, "code": null}})]);
    }
    // An error message (headers only) and a corrupt frame end the stream the same way.
    let failed = encode(
        &[(":message-type", "error"), (":error-code", "InternalFailure"), (":error-message", "Something broke")],
        b"",
    );
    let (chunks, done, _, _) = stream_chunks(&[&failed], false);
    assert!(done);
    assert_eq!(chunks[0]["error"]["message"], "InternalFailure: Something broke");
    let mut corrupt = text_stream().concat();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let (chunks, done, completed, _) = stream_chunks(&[&corrupt], true);
    assert!(done && !completed);
    assert_eq!(chunks.len(), 5, "{chunks:?}");
    assert_eq!(chunks[4]["error"]["type"], "api_error");
    assert!(chunks[4]["error"]["message"].as_str().unwrap().contains("checksum"), "{}", chunks[4]);
}

#[test]
fn a_stream_cut_before_its_end_still_ends_for_the_client_but_is_not_completed() {
    let events = text_stream();
    // Cut before messageStop: what arrived is sent, then the end.
    let cut = events[..5].concat();
    let (chunks, done, completed, usage) = stream_chunks(&[&cut], true);
    assert!(done && !completed);
    assert_eq!(
        deltas(&chunks),
        [
            json!({"role": "assistant", "content": ""}),
            json!({"content": "Here is a list"}),
            json!({"content": " of 3 pop songs 🎵"})
        ]
    );
    assert_eq!(usage, Usage::default());
    // Cut in the middle of a frame: the partial frame is nothing.
    let mut partial = events[..6].concat();
    partial.extend_from_slice(&events[6][..20]);
    let (chunks, done, completed, _) = stream_chunks(&[&partial], true);
    assert!(done && !completed);
    assert_eq!(chunks.len(), 4);
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    // messageStop without metadata: finished but not completed.
    let mut t = StreamTranslator::new("m", 0, false, false);
    t.feed(&events[..6].concat(), false);
    assert!(!t.completed());
    assert!(t.feed(b"", true).ends_with(b"data: [DONE]\n\n"));
    assert!(!t.completed());

    // Garbage payloads are no panic, no chunk and no usage.
    let garbage = [
        encode(&[(":event-type", "contentBlockDelta"), (":message-type", "event")], b"{not json"),
        encode(&[(":event-type", "metadata"), (":message-type", "event")], b"7"),
        encode(
            &[(":event-type", "contentBlockDelta")],
            br#"{"contentBlockIndex":4,"delta":{"toolUse":{"input":"{"}}}"#,
        ),
        encode(&[(":event-type", "somethingNew"), (":message-type", "event")], b"{}"),
    ]
    .concat();
    let (chunks, done, completed, usage) = stream_chunks(&[&garbage], false);
    assert!(done && !completed && chunks.is_empty(), "{chunks:?}");
    assert_eq!(usage, Usage::default());
}

// ---- embeddings (InvokeModel) -----------------------------------------------------------------

/// A Converse answer translated for a client that asked for no JSON schema.
fn converse(body: &[u8], client_model: &str, created: u64) -> Result<Vec<u8>, ConversionError> {
    response(body, client_model, created, false)
}

fn embedder(model: &'static str) -> Target<'static> {
    Target { model, default_max_tokens: 0, drop_params: false }
}

fn embed(body: &Value, target: &Target<'_>) -> Result<(Value, EmbeddingsAsk, Vec<String>), ConversionError> {
    let calls = embeddings_request(body.to_string().as_bytes(), target)?;
    let [one] = calls.bodies.as_slice() else { panic!("{} calls for {body}", calls.bodies.len()) };
    assert_eq!(calls.estimates, [calls.ask.prompt_estimate]);
    Ok((serde_json::from_slice(one).unwrap(), calls.ask, calls.dropped))
}

#[test]
fn embeddings_requests_are_each_models_own_body() {
    use super::super::Encoding::{Base64, Float};
    let cases = [
        // Titan v2: inputText, dimensions, normalize (passed on).
        (
            "amazon.titan-embed-text-v2:0",
            json!({"model": "t", "input": "Hello world", "dimensions": 512, "normalize": true, "user": "u"}),
            json!({"inputText": "Hello world", "dimensions": 512, "normalize": true}),
            Float,
            3,
        ),
        // An array of one is one text; an inference profile names the model inside its id.
        (
            "us.amazon.titan-embed-text-v2:0",
            json!({"model": "t", "input": ["Hi"], "encoding_format": "base64"}),
            json!({"inputText": "Hi"}),
            Base64,
            1,
        ),
        (
            "amazon.titan-embed-text-v1",
            json!({"model": "t", "input": "abcde"}),
            json!({"inputText": "abcde"}),
            Float,
            2,
        ),
        // Cohere: every text in one call, input_type defaulting to LiteLLM's search_document.
        (
            "cohere.embed-english-v3",
            json!({"model": "c", "input": ["first", "second text"]}),
            json!({"texts": ["first", "second text"], "input_type": "search_document"}),
            Float,
            2 + 3,
        ),
        (
            "cohere.embed-multilingual-v3",
            json!({"model": "c", "input": "q", "input_type": "search_query", "truncate": "END", "encoding_format": "float"}),
            json!({"texts": ["q"], "input_type": "search_query", "truncate": "END"}),
            Float,
            1,
        ),
    ];
    for (model, body, expected, encoding, estimate) in cases {
        let (got, ask, dropped) = embed(&body, &embedder(model)).unwrap();
        assert_eq!(got, expected, "{model}: {body}");
        assert_eq!(ask, EmbeddingsAsk { encoding, prompt_estimate: estimate }, "{model}: {body}");
        assert!(dropped.is_empty());
    }
}

#[test]
fn titan_embeds_several_texts_in_a_call_each() {
    let body = json!({"model": "t", "input": ["a", "bcdefghij", "xyz"], "dimensions": 256, "normalize": false});
    let calls = embeddings_request(body.to_string().as_bytes(), &embedder("amazon.titan-embed-text-v2:0")).unwrap();
    let bodies: Vec<Value> = calls.bodies.iter().map(|b| serde_json::from_slice(b).unwrap()).collect();
    assert_eq!(
        bodies,
        [
            json!({"inputText": "a", "dimensions": 256, "normalize": false}),
            json!({"inputText": "bcdefghij", "dimensions": 256, "normalize": false}),
            json!({"inputText": "xyz", "dimensions": 256, "normalize": false}),
        ]
    );
    // Each call's own estimate (at least one a text), summing to the request's.
    assert_eq!(calls.estimates, [1, 3, 1]);
    assert_eq!(calls.ask.prompt_estimate, 5);
    // Cohere's texts stay one call.
    let calls =
        embeddings_request(body_without_titan_fields().as_bytes(), &embedder("cohere.embed-english-v3")).unwrap();
    assert_eq!((calls.bodies.len(), calls.estimates.as_slice()), (1, &[1 + 3][..]));
}

fn body_without_titan_fields() -> String {
    json!({"model": "c", "input": ["a", "bcdefghij"]}).to_string()
}

#[test]
fn several_titan_answers_are_one_list_in_order_with_the_counts_summed() {
    use super::super::Encoding::Float;
    let ask = EmbeddingsAsk { encoding: Float, prompt_estimate: 99 };
    let first = br#"{"embedding": [0.5], "inputTextTokenCount": 3}"#;
    let second = br#"{"embedding": [-2.0], "inputTextTokenCount": 4}"#;
    let (body, counted) = embeddings_answers(&[first, second], "emb", ask).unwrap();
    let got: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        got,
        json!({"object": "list", "model": "emb", "usage": {"prompt_tokens": 7, "total_tokens": 7},
               "data": [{"object": "embedding", "index": 0, "embedding": [0.5]},
                        {"object": "embedding", "index": 1, "embedding": [-2.0]}]})
    );
    assert_eq!(counted, Some(7));
    // An answer without its count: the whole request is the estimate, said so.
    let (body, counted) = embeddings_answers(&[first, br#"{"embedding": [1.0]}"#], "emb", ask).unwrap();
    assert_eq!(
        (serde_json::from_slice::<Value>(&body).unwrap()["usage"]["prompt_tokens"].as_u64(), counted),
        (Some(99), None)
    );
    // One bad answer spoils the list.
    let e = embeddings_answers(&[first, b"{}"], "emb", ask).unwrap_err();
    assert!(matches!(e, ConversionError::InvalidResponse { .. }), "{e:?}");
}

#[test]
fn embeddings_requests_bedrock_cannot_take() {
    let titan = embedder("amazon.titan-embed-text-v2:0");
    for (body, param) in [
        (json!({"model": "t", "input": [1, 2]}), "input"),
        (json!({"model": "t", "input": [[1, 2]]}), "input"),
        (json!({"model": "t", "input": "a", "normalize": "yes"}), "normalize"),
        (json!({"model": "t", "input": "a", "encoding_format": "binary"}), "encoding_format"),
    ] {
        match embed(&body, &titan) {
            Err(ConversionError::InvalidField { param: p, .. }) => assert_eq!(p, param, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    // dimensions where the model has none (Titan v1, Cohere v3): refused, or dropped.
    for model in ["amazon.titan-embed-text-v1", "cohere.embed-english-v3"] {
        let body = json!({"model": "t", "input": "a", "dimensions": 256});
        let e = embed(&body, &embedder(model)).unwrap_err();
        assert_eq!(e, ConversionError::Unsupported { provider: "bedrock", params: vec!["dimensions".into()] });
        let (got, _, dropped) = embed(&body, &Target { drop_params: true, ..embedder(model) }).unwrap();
        assert!(got.get("dimensions").is_none() && dropped == ["dimensions"], "{got} {dropped:?}");
    }
    // normalize is Titan v2's, input_type Cohere's.
    let e = embed(&json!({"model": "t", "input": "a", "input_type": "x"}), &titan).unwrap_err();
    assert_eq!(e, ConversionError::Unsupported { provider: "bedrock", params: vec!["input_type".into()] });
    let e = embed(&json!({"model": "t", "input": "a", "normalize": true}), &embedder("cohere.embed-english-v3"));
    assert_eq!(e.unwrap_err(), ConversionError::Unsupported { provider: "bedrock", params: vec!["normalize".into()] });
    // A model that is no embedding model Sluice knows.
    let e = embed(&json!({"model": "t", "input": "a"}), &TARGET).unwrap_err();
    assert!(
        matches!(&e, ConversionError::InvalidRequest { detail } if detail.contains("not an embedding model")),
        "{e:?}"
    );
}

#[test]
fn invoke_model_answers_are_openais_list() {
    use super::super::Encoding::{Base64, Float};
    let float = EmbeddingsAsk { encoding: Float, prompt_estimate: 9 };
    let answer = |body: &[u8], ask| -> Value {
        serde_json::from_slice(&embeddings_response(body, "emb", ask).unwrap()).unwrap()
    };
    // Titan (AWS's reference shape): its count is exact.
    let titan = br#"{"embedding": [0.5, -2.0], "inputTextTokenCount": 3, "embeddingsByType": {"float": [0.5, -2.0]}}"#;
    assert_eq!(
        answer(titan, float),
        json!({"object": "list", "model": "emb", "usage": {"prompt_tokens": 3, "total_tokens": 3},
               "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -2.0]}]})
    );
    assert_eq!(answer(titan, EmbeddingsAsk { encoding: Base64, ..float })["data"][0]["embedding"], "AAAAPwAAAMA=");
    // Cohere: no count, the estimate; floats as an array, or by type.
    for cohere in [
        &br#"{"embeddings": [[0.5, -2.0], [1.0]], "id": "e-1", "response_type": "embeddings_floats", "texts": ["a", "b"]}"#[..],
        br#"{"embeddings": {"float": [[0.5, -2.0], [1.0]]}, "id": "e-1", "response_type": "embeddings_by_type", "texts": ["a", "b"]}"#,
    ] {
        let got = answer(cohere, float);
        assert_eq!(got["usage"], json!({"prompt_tokens": 9, "total_tokens": 9}));
        assert_eq!(got["data"][1], json!({"object": "embedding", "index": 1, "embedding": [1.0]}));
        assert_eq!(answer(cohere, EmbeddingsAsk { encoding: Base64, ..float })["data"][0]["embedding"], "AAAAPwAAAMA=");
    }
    for bad in [
        &b""[..],
        b"[1]",
        b"{}",
        br#"{"embedding": "AAAA"}"#,
        br#"{"embedding": [1, "2"]}"#,
        br#"{"embeddings": {"int8": [[1]]}}"#,
        br#"{"embeddings": [1, 2]}"#,
    ] {
        let e = embeddings_response(bad, "m", float).unwrap_err();
        assert!(matches!(e, ConversionError::InvalidResponse { .. }), "{}: {e:?}", String::from_utf8_lossy(bad));
    }
    // InvokeModel's errors are Converse's shape: OpenAI's error, typed by the status.
    let e: Value = serde_json::from_slice(&error(br#"{"message": "Malformed input request"}"#, 400)).unwrap();
    assert_eq!(
        (e["error"]["message"].as_str(), e["error"]["type"].as_str()),
        (Some("Malformed input request"), Some("invalid_request_error"))
    );
}

// ---- response_format: a JSON schema through a tool (LiteLLM's way, as for Anthropic) ---------

#[test]
fn a_json_schema_is_a_tool_forced_for_claude_and_its_call_is_the_answer() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    let body = json!({"model": "b", "messages": [{"role": "user", "content": "Where?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}});
    let claude = Target { model: "anthropic.claude-3-5-sonnet-20240620-v1:0", ..TARGET };
    let out = request(body.to_string().as_bytes(), &claude).unwrap();
    assert!(out.json_mode && out.dropped.is_empty());
    let sent: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(
        sent["toolConfig"],
        json!({"tools": [{"toolSpec": {"name": "json_tool_call", "inputSchema": {"json": schema}}}],
               "toolChoice": {"tool": {"name": "json_tool_call"}}})
    );
    // Other models on Bedrock take no forced tool: it is offered.
    let llama = Target { model: "meta.llama3-1-70b-instruct-v1:0", ..TARGET };
    let sent: Value = serde_json::from_slice(&request(body.to_string().as_bytes(), &llama).unwrap().body).unwrap();
    assert!(
        sent["toolConfig"].get("toolChoice").is_none() && sent["toolConfig"]["tools"].as_array().unwrap().len() == 1
    );
    // json_object names no schema: refused by name.
    let object = json!({"model": "b", "messages": [], "response_format": {"type": "json_object"}});
    let e = request(object.to_string().as_bytes(), &claude).unwrap_err();
    assert_eq!(e, ConversionError::Unsupported { provider: "bedrock", params: vec!["response_format".into()] });
    // The answer: the call's input is the content, the turn complete.
    let answer = br#"{"output": {"message": {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "json_tool_call", "input": {"city": "Paris"}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 20, "outputTokens": 9, "totalTokens": 29}}"#;
    let got: Value = serde_json::from_slice(&response(answer, "b", 0, true).unwrap()).unwrap();
    let choice = &got["choices"][0];
    assert_eq!(
        serde_json::from_str::<Value>(choice["message"]["content"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris"})
    );
    assert!(choice["message"].get("tool_calls").is_none() && choice["finish_reason"] == "stop", "{choice}");
}

#[test]
fn a_streamed_json_answer_from_converse_is_content() {
    let frames = [
        event("messageStart", json!({"role": "assistant"})),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t1", "name": "json_tool_call"}}}),
        ),
        event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"city\":"}}})),
        event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "\"Paris\"}"}}})),
        event("messageStop", json!({"stopReason": "tool_use"})),
        event("metadata", json!({"usage": {"inputTokens": 20, "outputTokens": 9, "totalTokens": 29}})),
    ]
    .concat();
    let mut t = StreamTranslator::new("b", 0, false, true);
    let (chunks, done) = openai_chunks(&[&frames], |piece, end| t.feed(piece, end));
    assert!(done && t.completed());
    let text: String = deltas(&chunks).iter().filter_map(|d| d.get("content")?.as_str().map(str::to_owned)).collect();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({"city": "Paris"}));
    assert!(deltas(&chunks).iter().all(|d| d.get("tool_calls").is_none()));
    let finish: Vec<&Value> =
        chunks.iter().filter_map(|c| c["choices"][0].get("finish_reason")).filter(|f| !f.is_null()).collect();
    assert_eq!(finish, [&json!("stop")]);
}
