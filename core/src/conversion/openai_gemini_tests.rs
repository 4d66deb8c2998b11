//! Table-driven checks of each mapping, over payloads shaped as Google's Gemini API reference
//! and guides show them (text generation, function calling, thinking, streaming, errors).

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::super::test_support::{
    MALFORMED_EVERYWHERE, MALFORMED_FOR_GEMINI_AND_BEDROCK, assert_a_text_stream, assert_any_split_reads_the_same,
    assert_invalid_responses, assert_malformed, completion, completion_for, deltas, openai_chunks, translated,
    with_fields,
};
use super::*;

const TARGET: Target<'static> = Target { model: "gemini-2.5-flash", default_max_tokens: 4096, drop_params: false };

fn translate(body: Value) -> Value {
    translated(request, &TARGET, &body)
}

#[test]
fn a_conversation_with_system_turns_and_images_maps_field_by_field() {
    let got = translate(json!({
        "model": "gemini",
        "messages": [
            {"role": "system", "content": "You are a cat. Your name is Neko."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in one sentence."}]},
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "Great to meet you. What would you like to know?"},
            {"role": "user", "content": [
                {"type": "text", "text": "Caption these images."},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ=="}},
                {"type": "image_url", "image_url": {"url": "https://storage.googleapis.com/generativeai-downloads/images/Cajun_instruments.PNG?alt=media"}}
            ]},
            {"role": "user", "content": "And be brief."}
        ],
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "user-42",
        "metadata": {"k": "v"},
        "store": false,
        "parallel_tool_calls": true,
        "service_tier": "auto"
    }));
    assert_eq!(
        got,
        json!({
            "systemInstruction": {"parts": [{"text": "You are a cat. Your name is Neko."}, {"text": "Answer in one sentence."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Hello there"}]},
                {"role": "model", "parts": [{"text": "Great to meet you. What would you like to know?"}]},
                {"role": "user", "parts": [
                    {"text": "Caption these images."},
                    {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQSkZJRgABAQ=="}},
                    {"fileData": {"mimeType": "image/png", "fileUri": "https://storage.googleapis.com/generativeai-downloads/images/Cajun_instruments.PNG?alt=media"}},
                    {"text": "And be brief."}
                ]}
            ]
        })
    );
}

#[test]
fn image_urls_get_their_media_type_from_the_extension() {
    for (url, mime) in [
        ("https://example.com/a.png", "image/png"),
        ("https://example.com/a.JPG", "image/jpeg"),
        ("https://example.com/a.jpeg#frag", "image/jpeg"),
        ("http://example.com/a.gif", "image/gif"),
        ("https://example.com/dir.v2/a.webp?x=1.png", "image/webp"),
        ("https://example.com/picture", "image/jpeg"),
        ("https://example.com/a.bmp", "image/jpeg"),
    ] {
        let got = translate(
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}),
        );
        assert_eq!(got["contents"][0]["parts"][0], json!({"fileData": {"mimeType": mime, "fileUri": url}}), "{url}");
    }
}

#[test]
fn tool_calls_and_their_results_round_trip_as_function_calls_and_responses() {
    let got = translate(json!({
        "model": "gemini",
        "messages": [
            {"role": "user", "content": "Schedule a meeting with Bob and Alice for 03/27/2025 at 10:00 AM about the Q3 planning, and tell me the weather in Paris."},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a_0", "type": "function", "function": {"name": "schedule_meeting", "arguments": "{\"attendees\":[\"Bob\",\"Alice\"],\"date\":\"2025-03-27\",\"time\":\"10:00\",\"topic\":\"Q3 planning\"}"}},
                {"id": "call_a_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_a_1", "content": "18°C and sunny"},
            {"role": "tool", "tool_call_id": "call_a_0", "content": "{\"status\":\"scheduled\",\"meeting_id\":\"m-1\"}"},
            {"role": "assistant", "content": "Done. It is 18°C.", "tool_calls": [
                // The same id again, later: the latest call with it names the function.
                {"id": "call_a_0", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_a_0", "content": [{"type": "text", "text": "[\"10:00\"]"}]}
        ],
        "tools": [
            {"type": "function", "function": {
                "name": "schedule_meeting",
                "description": "Schedules a meeting with specified attendees at a given time and date.",
                "parameters": {"type": "object", "properties": {
                    "attendees": {"type": "array", "items": {"type": "string"}},
                    "date": {"type": "string"}, "time": {"type": "string"}, "topic": {"type": "string"}
                }, "required": ["attendees", "date", "time", "topic"]}
            }},
            {"type": "function", "function": {"name": "get_weather"}}
        ],
        "tool_choice": "auto"
    }));
    assert_eq!(
        got,
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Schedule a meeting with Bob and Alice for 03/27/2025 at 10:00 AM about the Q3 planning, and tell me the weather in Paris."}]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "schedule_meeting", "args": {"attendees": ["Bob", "Alice"], "date": "2025-03-27", "time": "10:00", "topic": "Q3 planning"}}},
                    {"functionCall": {"name": "get_weather", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"content": "18°C and sunny"}}},
                    {"functionResponse": {"name": "schedule_meeting", "response": {"status": "scheduled", "meeting_id": "m-1"}}}
                ]},
                {"role": "model", "parts": [
                    {"text": "Done. It is 18°C."},
                    {"functionCall": {"name": "get_time", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_time", "response": {"content": "[\"10:00\"]"}}}
                ]}
            ],
            "tools": [{"functionDeclarations": [
                {
                    "name": "schedule_meeting",
                    "description": "Schedules a meeting with specified attendees at a given time and date.",
                    "parameters": {"type": "object", "properties": {
                        "attendees": {"type": "array", "items": {"type": "string"}},
                        "date": {"type": "string"}, "time": {"type": "string"}, "topic": {"type": "string"}
                    }, "required": ["attendees", "date", "time", "topic"]}
                },
                {"name": "get_weather"}
            ]}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}
        })
    );
}

#[test]
fn tool_choice_maps_to_a_function_calling_mode() {
    for (choice, config) in [
        (json!("none"), json!({"mode": "NONE"})),
        (json!("auto"), json!({"mode": "AUTO"})),
        (json!("required"), json!({"mode": "ANY"})),
        (
            json!({"type": "function", "function": {"name": "get_weather"}}),
            json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
        ),
    ] {
        let got = translate(json!({"messages": [], "tool_choice": choice}));
        assert_eq!(got["toolConfig"], json!({"functionCallingConfig": config}), "{choice}");
    }
}

#[test]
fn sampling_and_output_settings_map_to_generation_config() {
    let schema =
        json!({"type": "object", "properties": {"recipe_name": {"type": "string"}}, "required": ["recipe_name"]});
    for (extra, config) in [
        (json!({}), Value::Null),
        (json!({"max_tokens": 500}), json!({"maxOutputTokens": 500})),
        (json!({"max_tokens": 500, "max_completion_tokens": 800}), json!({"maxOutputTokens": 800})),
        (json!({"max_tokens": null, "temperature": null}), Value::Null),
        (
            json!({"temperature": 1.0, "top_p": 0.8, "n": 2, "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 42}),
            json!({"temperature": 1.0, "topP": 0.8, "candidateCount": 2, "presencePenalty": 0.5, "frequencyPenalty": -0.5, "seed": 42}),
        ),
        (json!({"stop": "Title"}), json!({"stopSequences": ["Title"]})),
        (json!({"stop": ["Title", "END"]}), json!({"stopSequences": ["Title", "END"]})),
        (json!({"response_format": {"type": "text"}}), Value::Null),
        (json!({"response_format": {"type": "json_object"}}), json!({"responseMimeType": "application/json"})),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "recipe", "strict": true, "schema": schema}}}),
            json!({"responseMimeType": "application/json", "responseSchema": schema}),
        ),
    ] {
        let got =
            translate(with_fields(json!({"model": "gemini", "messages": [{"role": "user", "content": "Hi"}]}), &extra));
        assert_eq!(got["generationConfig"], config, "{extra}");
        assert!(got.get("model").is_none(), "the model goes in the URL");
    }
}

#[test]
fn parameters_gemini_cannot_take_are_refused_by_name_unless_dropped() {
    let body = json!({
        "model": "gemini",
        "messages": [{"role": "user", "content": "Hi"}],
        "logprobs": true,
        "logit_bias": {"1": 2},
        "reasoning_effort": "low",
        "web_search_options": {},
        "temperature": 0.3
    });
    let e = request(body.to_string().as_bytes(), &TARGET).unwrap_err();
    assert_eq!(
        e,
        ConversionError::Unsupported {
            provider: "gemini",
            params: vec![
                "logit_bias".into(),
                "logprobs".into(),
                "reasoning_effort".into(),
                "web_search_options".into()
            ]
        }
    );
    assert!(e.to_string().contains("drop_params"), "{e}");
    let dropping = Target { drop_params: true, ..TARGET };
    let translated = request(body.to_string().as_bytes(), &dropping).unwrap();
    assert_eq!(translated.dropped, ["logit_bias", "logprobs", "reasoning_effort", "web_search_options"]);
    let sent: Value = serde_json::from_slice(&translated.body).unwrap();
    assert_eq!(
        sent,
        json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "generationConfig": {"temperature": 0.3}})
    );
}

#[test]
fn malformed_requests_get_a_reason() {
    let own = [
        (r#"{"messages": [{"role": "tool", "tool_call_id": "nowhere", "content": "x"}]}"#, "nowhere"),
        (
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}"#,
            "http(s) URL",
        ),
        (r#"{"messages": [{"role": "user", "content": [{"type": "file"}]}]}"#, "file"),
        (r#"{"messages": [], "temperature": "hot"}"#, "temperature"),
        (r#"{"messages": [], "n": 0}"#, "n must be"),
        (r#"{"messages": [], "response_format": {"type": "yaml"}}"#, "yaml"),
    ];
    assert_malformed(request, &TARGET, MALFORMED_EVERYWHERE.iter().chain(MALFORMED_FOR_GEMINI_AND_BEDROCK).chain(&own));
}

/// `generateContent`'s answer in Google's text generation guide (a thinking model).
const TEXT_RESPONSE: &str = r#"{
  "candidates": [
    {
      "content": {
        "parts": [
          {"text": "**Analyzing the question**\n\nThe user wants a short explanation.", "thought": true},
          {"text": "AI learns patterns from data "},
          {"text": "to make predictions or decisions."}
        ],
        "role": "model"
      },
      "finishReason": "STOP",
      "index": 0
    }
  ],
  "usageMetadata": {
    "promptTokenCount": 1200,
    "candidatesTokenCount": 12,
    "totalTokenCount": 1257,
    "cachedContentTokenCount": 1024,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 1024}],
    "thoughtsTokenCount": 45
  },
  "modelVersion": "gemini-2.5-flash",
  "responseId": "tHZaaOOaEaKCz7IP7a6N2Ag"
}"#;

#[test]
fn a_text_response_becomes_a_chat_completion_without_its_thoughts() {
    let got = completion_for(response, TEXT_RESPONSE, "gemini", 1_700_000_000);
    assert_eq!(
        got,
        json!({
            "id": "chatcmpl-tHZaaOOaEaKCz7IP7a6N2Ag",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gemini",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "AI learns patterns from data to make predictions or decisions."},
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": 1200,
                "completion_tokens": 57,
                "total_tokens": 1257,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "completion_tokens_details": {"reasoning_tokens": 45}
            }
        })
    );
    assert_eq!(
        usage_of(TEXT_RESPONSE.as_bytes()),
        Some(Usage {
            prompt_tokens: 1200,
            cached_prompt_tokens: 1024,
            cache_write_tokens: 0,
            completion_tokens: 57,
            reasoning_tokens: 45
        })
    );
    assert_eq!(usage_of(b"{\"candidates\": []}"), None);
    assert_eq!(usage_of(b"not json"), None);
}

/// Parallel function calls from Google's function calling guide (Gemini 3 signs the first).
const FUNCTION_CALL_RESPONSE: &str = r#"{
  "candidates": [{
    "content": {
      "role": "model",
      "parts": [
        {"functionCall": {"name": "power_disco_ball", "args": {"power": true}}, "thoughtSignature": "CiQBVKhc7nQ="},
        {"functionCall": {"name": "start_music", "args": {"energetic": true, "loud": true}}},
        {"functionCall": {"name": "dim_lights", "args": {"brightness": 0.5}}}
      ]
    },
    "finishReason": "STOP",
    "index": 0
  }],
  "usageMetadata": {"promptTokenCount": 158, "candidatesTokenCount": 36, "totalTokenCount": 194},
  "modelVersion": "gemini-3-pro-preview",
  "responseId": "r1"
}"#;

#[test]
fn function_calls_become_tool_calls_and_their_signatures_come_back() {
    let got = completion_for(response, FUNCTION_CALL_RESPONSE, "gemini", 0);
    let message = &got["choices"][0]["message"];
    assert_eq!(
        *message,
        json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [
                {"id": "call_r1_0__thought__CiQBVKhc7nQ=", "type": "function", "function": {"name": "power_disco_ball", "arguments": "{\"power\":true}"}},
                {"id": "call_r1_1", "type": "function", "function": {"name": "start_music", "arguments": "{\"energetic\":true,\"loud\":true}"}},
                {"id": "call_r1_2", "type": "function", "function": {"name": "dim_lights", "arguments": "{\"brightness\":0.5}"}}
            ]
        })
    );
    assert_eq!(got["choices"][0]["finish_reason"], "tool_calls");

    // The client sends the assistant message back with the results: the signature returns to
    // its part, and each result finds its function's name.
    let mut messages = vec![json!({"role": "user", "content": "Turn this place into a party!"}), message.clone()];
    for call in message["tool_calls"].as_array().unwrap() {
        messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "{\"ok\":true}"}));
    }
    let sent = translate(json!({"messages": messages}));
    assert_eq!(
        sent["contents"][1],
        json!({"role": "model", "parts": [
            {"functionCall": {"name": "power_disco_ball", "args": {"power": true}}, "thoughtSignature": "CiQBVKhc7nQ="},
            {"functionCall": {"name": "start_music", "args": {"energetic": true, "loud": true}}},
            {"functionCall": {"name": "dim_lights", "args": {"brightness": 0.5}}}
        ]})
    );
    assert_eq!(
        sent["contents"][2],
        json!({"role": "user", "parts": [
            {"functionResponse": {"name": "power_disco_ball", "response": {"ok": true}}},
            {"functionResponse": {"name": "start_music", "response": {"ok": true}}},
            {"functionResponse": {"name": "dim_lights", "response": {"ok": true}}}
        ]})
    );

    // Gemini's own call id, when it gives one, is kept; no responseId: ids from a digest, stable.
    let body = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Checking."},{"functionCall":{"id":"fc-7","name":"f","args":{}}}]},"finishReason":"STOP"}]}"#;
    let a: Value = completion(response, body);
    let b: Value = completion(response, body);
    assert_eq!(a, b);
    assert!(a["id"].as_str().unwrap().starts_with("chatcmpl-gemini"), "{}", a["id"]);
    assert_eq!(a["choices"][0]["message"]["content"], "Checking.");
    assert_eq!(a["choices"][0]["message"]["tool_calls"][0]["id"], "fc-7");
    assert_eq!(a["choices"][0]["finish_reason"], "tool_calls");
}

#[test]
fn finish_reasons_map_and_a_blocked_prompt_is_filtered_content() {
    for (reason, finish) in [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
    ] {
        let body = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]}, "finishReason": reason, "index": 0}], "responseId": "r"});
        let got: Value = completion(response, &body.to_string());
        assert_eq!(got["choices"][0]["finish_reason"], finish, "{reason}");
    }
    // Thinking used up the budget: MAX_TOKENS with a content that has no parts.
    let body = r#"{"candidates":[{"content":{"role":"model"},"finishReason":"MAX_TOKENS","index":0}],"usageMetadata":{"promptTokenCount":9,"totalTokenCount":109,"thoughtsTokenCount":100},"responseId":"r"}"#;
    let got: Value = completion(response, body);
    assert_eq!(got["choices"][0]["message"], json!({"role": "assistant", "content": ""}));
    assert_eq!(got["choices"][0]["finish_reason"], "length");
    assert_eq!(got["usage"]["completion_tokens"], 100);
    // A prompt blocked before any candidate.
    let body = r#"{"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[{"category":"HARM_CATEGORY_DANGEROUS_CONTENT","probability":"HIGH"}]},"usageMetadata":{"promptTokenCount":12,"totalTokenCount":12},"modelVersion":"gemini-2.5-flash","responseId":"b"}"#;
    let got: Value = completion(response, body);
    assert_eq!(
        got["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "content_filter"}])
    );
    assert_eq!(got["usage"]["prompt_tokens"], 12);
    // Several candidates (`n`): one choice each.
    let body = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"A"}]},"finishReason":"STOP","index":0},{"content":{"role":"model","parts":[{"text":"B"}]},"finishReason":"MAX_TOKENS","index":1}],"responseId":"r"}"#;
    let got: Value = completion(response, body);
    assert_eq!(
        (got["choices"][1]["index"].clone(), got["choices"][1]["message"]["content"].clone()),
        (json!(1), json!("B"))
    );
    assert_invalid_responses(response, &["not json", "[]", "{}", r#"{"candidates": []}"#]);
}

#[test]
fn provider_errors_come_back_in_openai_shape() {
    for (status, code, kind) in [
        ("INVALID_ARGUMENT", 400, "invalid_request_error"),
        ("FAILED_PRECONDITION", 400, "invalid_request_error"),
        ("UNAUTHENTICATED", 401, "authentication_error"),
        ("PERMISSION_DENIED", 403, "authentication_error"),
        ("NOT_FOUND", 404, "not_found_error"),
        ("RESOURCE_EXHAUSTED", 429, "rate_limit_error"),
        ("INTERNAL", 500, "api_error"),
        ("UNAVAILABLE", 503, "api_error"),
        ("DEADLINE_EXCEEDED", 504, "api_error"),
    ] {
        let body = json!({"error": {"code": code, "message": "API key not valid. Please pass a valid API key.", "status": status,
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}});
        let got: Value = serde_json::from_slice(&error(body.to_string().as_bytes())).unwrap();
        assert_eq!(
            got,
            json!({"error": {"message": "API key not valid. Please pass a valid API key.", "type": kind, "param": null, "code": status}}),
            "{status}"
        );
    }
    // The streaming endpoint's array, and a body without a status.
    let got: Value = serde_json::from_slice(&error(
        br#"[{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}]"#,
    ))
    .unwrap();
    assert_eq!(got["error"]["type"], "rate_limit_error");
    let got: Value = serde_json::from_slice(&error(br#"{"error": {"code": 404, "message": "gone"}}"#)).unwrap();
    assert_eq!(
        (got["error"]["type"].clone(), got["error"]["code"].clone()),
        (json!("not_found_error"), json!("not_found_error"))
    );
    let got: Value = serde_json::from_slice(&error(b"<html>502 Bad Gateway</html>")).unwrap();
    assert_eq!(got["error"]["type"], "api_error");
    assert!(got["error"]["message"].as_str().unwrap().contains("502 Bad Gateway"));
}

/// The OpenAI chunks a translator writes for `pieces` (the last ends the stream), whether it
/// wrote `[DONE]`, whether it completed, and the usage it counted.
fn stream_chunks(pieces: &[&[u8]], include_usage: bool) -> (Vec<Value>, bool, bool, Usage) {
    let mut t = StreamTranslator::new("gemini", 1_700_000_000, include_usage);
    let (chunks, done) = openai_chunks(pieces, |piece, end| t.feed(piece, end));
    (chunks, done, t.completed(), t.usage())
}

/// `streamGenerateContent?alt=sse` as Google's streaming guide shows it (CRLF-separated).
const TEXT_STREAM: &str = concat!(
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Thinking about cats.\", \"thought\": true}],\"role\": \"model\"},\"index\": 0}],",
    "\"usageMetadata\": {\"promptTokenCount\": 10,\"totalTokenCount\": 10},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"s1\"}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The cat sat\"}],\"role\": \"model\"},\"index\": 0}],",
    "\"usageMetadata\": {\"promptTokenCount\": 10,\"candidatesTokenCount\": 3,\"totalTokenCount\": 33,\"thoughtsTokenCount\": 20},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"s1\"}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" on the mat. 😺\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],",
    "\"usageMetadata\": {\"promptTokenCount\": 10,\"candidatesTokenCount\": 9,\"totalTokenCount\": 39,\"cachedContentTokenCount\": 4,\"thoughtsTokenCount\": 20},",
    "\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"s1\"}\r\n\r\n",
);

#[test]
fn a_streamed_answer_becomes_openai_chunks_whatever_the_split() {
    let stream = TEXT_STREAM.as_bytes();
    let (chunks, done, completed, usage) = stream_chunks(&[stream], true);
    assert!(done && completed);
    let openai_usage = json!({
        "prompt_tokens": 10,
        "completion_tokens": 29,
        "total_tokens": 39,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 20}
    });
    assert_a_text_stream(&chunks, "chatcmpl-s1", "gemini", ["The cat sat", " on the mat. 😺"], &openai_usage);
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 10,
            cached_prompt_tokens: 4,
            cache_write_tokens: 0,
            completion_tokens: 29,
            reasoning_tokens: 20
        }
    );

    // Split at every byte (inside CRLFs and the emoji): the same chunks.
    let whole = stream_chunks(&[stream], true);
    assert_any_split_reads_the_same(stream, &whole, |pieces| stream_chunks(pieces, true));
    let single: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(stream_chunks(&single, true), whole);
    // Without include_usage, no usage chunk (the request is still charged: `usage()`).
    let (chunks, done, completed, usage) = stream_chunks(&[stream], false);
    assert!(done && completed && chunks.len() == 4 && usage.completion_tokens == 29);
}

#[test]
fn a_streamed_function_call_becomes_a_tool_call_chunk() {
    let stream = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Let me check.\"}],\"role\": \"model\"},\"index\": 0}],\"responseId\": \"f1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"location\": \"Boston, MA\"}},\"thoughtSignature\": \"c2ln\"},",
        "{\"functionCall\": {\"name\": \"get_time\",\"args\": {}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],",
        "\"usageMetadata\": {\"promptTokenCount\": 50,\"candidatesTokenCount\": 14,\"totalTokenCount\": 64},\"responseId\": \"f1\"}\r\n\r\n",
    )
    .as_bytes();
    let (chunks, done, completed, usage) = stream_chunks(&[stream], false);
    assert!(done && completed);
    assert_eq!(
        deltas(&chunks),
        [
            json!({"role": "assistant", "content": ""}),
            json!({"content": "Let me check."}),
            json!({"tool_calls": [{"index": 0, "id": "call_f1_0__thought__c2ln", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Boston, MA\"}"}}]}),
            json!({"tool_calls": [{"index": 1, "id": "call_f1_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}),
            json!({}),
        ]
    );
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (50, 14));
    let whole = stream_chunks(&[stream], false);
    assert_any_split_reads_the_same(stream, &whole, |pieces| stream_chunks(pieces, false));
}

#[test]
fn a_stream_that_is_blocked_fails_or_is_cut_still_ends_for_the_client() {
    // Cut before any finishReason: what arrived is sent, then the end, but not completed.
    let cut = TEXT_STREAM.split("\r\n\r\n").take(2).collect::<Vec<_>>().join("\r\n\r\n");
    let (chunks, done, completed, usage) = stream_chunks(&[cut.as_bytes()], true);
    assert!(done && !completed);
    assert_eq!(
        deltas(&chunks),
        [json!({"role": "assistant", "content": ""}), json!({"content": "The cat sat"}), Value::Null]
    );
    assert_eq!(usage.completion_tokens, 23);
    // Not ended: a finishReason is not enough while the stream goes on.
    let mut t = StreamTranslator::new("gemini", 0, false);
    t.feed(TEXT_STREAM.as_bytes(), false);
    assert!(!t.completed());
    t.feed(b"", true);
    assert!(t.completed());

    // An error mid-stream: the client gets it in OpenAI's shape, then the end.
    let failed = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\"}],\"role\": \"model\"},\"index\": 0}],\"responseId\": \"e1\"}\n\n",
        "data: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded. Please try again later.\", \"status\": \"UNAVAILABLE\"}}\n\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"lo\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}]}\n\n",
    );
    let (chunks, done, completed, _) = stream_chunks(&[failed.as_bytes()], true);
    assert!(done && !completed);
    assert_eq!(chunks.len(), 3, "{chunks:?}");
    assert_eq!(
        chunks[2],
        json!({"error": {"message": "The model is overloaded. Please try again later.", "type": "api_error", "param": null, "code": "UNAVAILABLE"}})
    );

    // A blocked prompt: an empty, filtered answer.
    let blocked = "data: {\"promptFeedback\": {\"blockReason\": \"PROHIBITED_CONTENT\"},\"usageMetadata\": {\"promptTokenCount\": 7,\"totalTokenCount\": 7},\"responseId\": \"b1\"}\r\n\r\n";
    let (chunks, done, completed, usage) = stream_chunks(&[blocked.as_bytes()], false);
    assert!(done && completed && usage.prompt_tokens == 7);
    assert_eq!(deltas(&chunks), [json!({"role": "assistant", "content": ""}), json!({})]);
    assert_eq!(chunks[1]["choices"][0]["finish_reason"], "content_filter");

    // Garbage from the provider is no panic, no chunk and no usage.
    let (chunks, done, completed, usage) =
        stream_chunks(&[b"data: {not json\n\ndata: 7\n\n: keep-alive\n\ndata: {\"usageMetadata\": \n\n"], false);
    assert!(done && !completed && chunks.is_empty(), "{chunks:?}");
    assert_eq!(usage, Usage::default());
}

// ---- embeddings -------------------------------------------------------------------------------

use super::super::Encoding;

const EMBEDDER: Target<'static> = Target { model: "gemini-embedding-001", default_max_tokens: 0, drop_params: false };

fn embed(body: &Value, target: &Target<'_>) -> Result<(Value, EmbeddingsAsk, Vec<String>), ConversionError> {
    let (translated, ask) = embeddings_request(body.to_string().as_bytes(), target)?;
    Ok((serde_json::from_slice(&translated.body).unwrap(), ask, translated.dropped))
}

#[test]
fn an_embeddings_request_is_one_embed_content_request_per_input() {
    let text = |t: &str| json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}});
    let cases = [
        // A string; `user` and the model (in the URL) left out; float is the default.
        (
            json!({"model": "g", "input": "What is the meaning of life?", "user": "u-1"}),
            json!({"requests": [text("What is the meaning of life?")]}),
            Encoding::Float,
            7,
        ),
        // An array; `dimensions` as outputDimensionality; the OpenAI SDK's default base64.
        (
            json!({"model": "g", "input": ["hello", "world!!!!"], "dimensions": 768, "encoding_format": "base64"}),
            json!({"requests": [with_fields(text("hello"), &json!({"outputDimensionality": 768})),
                             with_fields(text("world!!!!"), &json!({"outputDimensionality": 768}))]}),
            Encoding::Base64,
            2 + 3,
        ),
        // LiteLLM's task_type; null fields count as absent.
        (
            json!({"model": "g", "input": [""], "task_type": "RETRIEVAL_QUERY", "dimensions": null, "encoding_format": null}),
            json!({"requests": [with_fields(text(""), &json!({"taskType": "RETRIEVAL_QUERY"}))]}),
            Encoding::Float,
            1,
        ),
    ];
    for (body, expected, encoding, estimate) in cases {
        let (got, ask, dropped) = embed(&body, &EMBEDDER).unwrap();
        assert_eq!(got, expected, "{body}");
        assert_eq!(ask, EmbeddingsAsk { encoding, prompt_estimate: estimate }, "{body}");
        assert!(dropped.is_empty());
    }
}

#[test]
fn embeddings_input_must_be_text() {
    let cases = [
        (json!({"model": "g", "input": [1, 2, 3]}), "input"),
        (json!({"model": "g", "input": [[1, 2], [3]]}), "input"),
        (json!({"model": "g", "input": ["a", 1]}), "input"),
        (json!({"model": "g", "input": []}), "input"),
        (json!({"model": "g", "input": 5}), "input"),
        (json!({"model": "g", "input": null}), "input"),
        (json!({"model": "g"}), "input"),
        (json!({"model": "g", "input": "a", "encoding_format": "int8"}), "encoding_format"),
        (json!({"model": "g", "input": "a", "dimensions": 0}), "dimensions"),
        (json!({"model": "g", "input": "a", "dimensions": "256"}), "dimensions"),
        (json!({"model": "g", "input": "a", "task_type": 3}), "task_type"),
    ];
    for (body, param) in cases {
        match embed(&body, &EMBEDDER) {
            Err(ConversionError::InvalidField { param: p, .. }) => assert_eq!(p, param, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    assert!(matches!(embed(&json!([1]), &EMBEDDER), Err(ConversionError::InvalidRequest { .. })));
    // A parameter Gemini has no field for: refused, or dropped under drop_params.
    let body = json!({"model": "g", "input": "a", "seed": 1});
    assert_eq!(
        embed(&body, &EMBEDDER).unwrap_err(),
        ConversionError::Unsupported { provider: "gemini", params: vec!["seed".into()] }
    );
    let (got, _, dropped) = embed(&body, &Target { drop_params: true, ..EMBEDDER }).unwrap();
    assert_eq!((got["requests"].as_array().unwrap().len(), dropped), (1, vec!["seed".to_owned()]));
}

#[test]
fn a_batch_embed_contents_response_is_openais_list() {
    // As Google's reference shows it (values shortened).
    let body = br#"{"embeddings": [{"values": [0.013168523, -0.008711934, -0.046782676]}, {"values": [0.5, -2]}]}"#;
    let ask = EmbeddingsAsk { encoding: Encoding::Float, prompt_estimate: 11 };
    let got: Value = serde_json::from_slice(&embeddings_response(body, "my-embedder", ask).unwrap()).unwrap();
    assert_eq!(
        got,
        json!({"object": "list", "model": "my-embedder", "usage": {"prompt_tokens": 11, "total_tokens": 11},
               "data": [{"object": "embedding", "index": 0, "embedding": [0.013168523, -0.008711934, -0.046782676]},
                        {"object": "embedding", "index": 1, "embedding": [0.5, -2]}]})
    );
    let ask = EmbeddingsAsk { encoding: Encoding::Base64, ..ask };
    let got: Value = serde_json::from_slice(&embeddings_response(body, "m", ask).unwrap()).unwrap();
    assert_eq!(got["data"][0]["embedding"], "ysBXPIC8Drwxnz+9");
    assert_eq!(got["data"][1]["embedding"], "AAAAPwAAAMA=");
    // A count in the body (Vertex's usageMetadata) is exact, and wins over the estimate.
    let counted = br#"{"embeddings": [{"values": [1]}], "usageMetadata": {"promptTokenCount": 4}}"#;
    let got: Value = serde_json::from_slice(&embeddings_response(counted, "m", ask).unwrap()).unwrap();
    assert_eq!(got["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
    for bad in [
        &b"not json"[..],
        b"[]",
        b"{}",
        br#"{"embeddings": {"values": [1]}}"#,
        br#"{"embeddings": [{"value": [1]}]}"#,
        br#"{"embeddings": [{"values": "AAAA"}]}"#,
        br#"{"embeddings": [{"values": [1, null]}]}"#,
    ] {
        let e = embeddings_response(bad, "m", ask).unwrap_err();
        assert!(matches!(e, ConversionError::InvalidResponse { .. }), "{}: {e:?}", String::from_utf8_lossy(bad));
    }
    // Errors are the chat errors' (Google's envelope, the same on every method).
    let error_body = br#"{"error": {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"}}"#;
    let e: Value = serde_json::from_slice(&error(error_body)).unwrap();
    assert_eq!(e["error"]["message"], "Request contains an invalid argument.");
    assert_eq!(e["error"]["type"], "invalid_request_error");
}
