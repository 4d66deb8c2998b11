//! The mock provider over real sockets: the shapes and knobs the gateway's tests rely on.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::sync::Arc;

use serde_json::{Value, json};
use sluice_mock_provider::{Config, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(config: Config) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, Arc::new(config), std::future::pending::<()>()));
    addr
}

/// One HTTP/1.1 request with `connection: close`; returns (status, raw body bytes, complete).
async fn request(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Vec<u8>, bool) {
    let (status, _, body, complete) = request_with_head(addr, path, headers, body).await;
    (status, body, complete)
}

/// As `request`, with the response head (lowercased) after the status.
async fn request_with_head(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Vec<u8>, bool) {
    send(addr, "POST", path, headers, body).await
}

/// A GET with `connection: close`; returns (status, head, raw body bytes).
async fn get(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let (status, head, body, _) = send(addr, "GET", path, headers, "").await;
    (status, head, body)
}

/// One HTTP/1.1 request by `method`: (status, head lowercased, raw body bytes, complete).
async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: mock\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let complete = stream.read_to_end(&mut raw).await.is_ok();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let rest = &raw[split..];
    if !head.contains("transfer-encoding: chunked") {
        return (status, head, rest.to_vec(), complete);
    }
    let (body, terminated) = dechunk(rest);
    (status, head, body, complete && terminated)
}

/// Decodes a chunked body (bytes: chunks may split UTF-8): the chunks that arrived whole, and
/// whether the last chunk arrived (a cut stream's never does).
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..eol]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size else { break };
        if size == 0 {
            return (out, true);
        }
        let Some(data) = rest.get(eol + 2..eol + 2 + size) else { break };
        out.extend_from_slice(data);
        let Some(next) = rest.get(eol + 4 + size..) else { break };
        rest = next;
    }
    (out, false)
}

/// The knobs for a usage's prompt, completion, cached and reasoning tokens.
fn usage_knobs(
    prompt: &'static str,
    completion: &'static str,
    cached: &'static str,
    reasoning: &'static str,
) -> [(&'static str, &'static str); 4] {
    [
        ("x-mock-prompt-tokens", prompt),
        ("x-mock-completion-tokens", completion),
        ("x-mock-cached-tokens", cached),
        ("x-mock-reasoning-tokens", reasoning),
    ]
}

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap()
}

/// `request`'s JSON body, the status checked to be 200.
async fn ok_json(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Value {
    let (status, raw, _) = request(addr, path, headers, body).await;
    assert_eq!(status, 200, "{path}");
    parse(&raw)
}

async fn stats(addr: std::net::SocketAddr) -> Value {
    parse(&request(addr, "/mock/stats", &[], "").await.1)
}

/// What arrives of a stream the `x-mock-cut-after` knob in `headers` cuts, checking that it
/// started with a 200 and never ended.
async fn cut_stream(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let (status, raw, complete) = request(addr, path, headers, body).await;
    assert_eq!(status, 200);
    assert!(!complete, "the chunked body never terminates");
    raw
}

/// A four-word stream split into 7-byte pieces (it must arrive whole), and what arrives of a
/// six-word one cut after two events.
async fn split_and_cut(addr: std::net::SocketAddr, path: &str, body: &str) -> (Vec<u8>, Vec<u8>) {
    let split = [("x-mock-completion-tokens", "4"), ("x-mock-split-bytes", "7")];
    let (_, whole, complete) = request(addr, path, &split, body).await;
    assert!(complete);
    let cut = [("x-mock-completion-tokens", "6"), ("x-mock-cut-after", "2")];
    (whole, cut_stream(addr, path, &cut, body).await)
}

/// The answers to `x-mock-status` set to each of `codes` on each of `paths` (a non-streaming
/// and a streaming one), their status checked: (the code, its name, the head, the JSON body).
async fn forced_errors<'a>(
    addr: std::net::SocketAddr,
    paths: [&str; 2],
    body: &str,
    codes: &[(u16, &'a str)],
) -> Vec<(u16, &'a str, String, Value)> {
    let mut answers = Vec::new();
    for &(code, name) in codes {
        for path in paths {
            let knob = code.to_string();
            let (status, head, raw, _) = request_with_head(addr, path, &[("x-mock-status", &knob)], body).await;
            assert_eq!(status, code);
            answers.push((code, name, head, parse(&raw)));
        }
    }
    answers
}

/// Without a configured key anything goes: a mock without one answers `path` with a 200.
async fn answers_without_a_key(path: &str, body: &str) {
    let addr = start(Config::default()).await;
    let (status, _, _) = request(addr, path, &[], body).await;
    assert_eq!(status, 200);
}

/// How the cap a request sets in `body(cap)` limits the answer's length, the default one or a
/// knob's: for each case the JSON answer from `path` (status checked) as (the knobs and cap, the
/// text expected, whether the cap cuts it short, the answer); then `stream_path`'s answer to a
/// six-word stream capped at two.
async fn capped_answers(
    addr: std::net::SocketAddr,
    path: &str,
    stream_path: &str,
    body: impl Fn(u64) -> String,
) -> (Vec<(String, &'static str, bool, Value)>, Vec<u8>) {
    let cases = [
        (vec![], 3, "tok0 tok1 tok2", true),
        (vec![("x-mock-completion-tokens", "10")], 4, "tok0 tok1 tok2 tok3", true),
        (vec![("x-mock-completion-tokens", "2")], 5, "tok0 tok1", false),
    ];
    let mut answers = Vec::new();
    for (headers, cap, text, cut) in cases {
        let v = ok_json(addr, path, &headers, &body(cap)).await;
        answers.push((format!("{headers:?} {cap}"), text, cut, v));
    }
    let (_, stream, _) = request(addr, stream_path, &[("x-mock-completion-tokens", "6")], &body(2)).await;
    (answers, stream)
}

fn data_events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body).lines().filter_map(|l| l.strip_prefix("data: ").map(str::to_owned)).collect()
}

#[tokio::test]
async fn chat_usage_follows_the_knobs() {
    let addr = start(Config::default()).await;
    let v = ok_json(
        addr,
        "/v1/chat/completions",
        &[("x-mock-prompt-tokens", "50"), ("x-mock-completion-tokens", "3"), ("x-mock-cached-tokens", "10")],
        r#"{"model":"gpt-4o","messages":[]}"#,
    )
    .await;
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2");
    assert_eq!(v["usage"]["prompt_tokens"], 50);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 10);
    assert_eq!(v["model"], "gpt-4o");
}

#[tokio::test]
async fn streams_carry_usage_only_when_asked_and_match_the_full_text() {
    let addr = start(Config::default()).await;
    let with = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
    let (_, body, _) = request(addr, "/v1/chat/completions", &[("x-mock-completion-tokens", "4")], with).await;
    let events = data_events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage: Vec<&String> = events.iter().filter(|e| e.contains(r#""usage":{"#)).collect();
    assert_eq!(usage.len(), 1);
    assert_eq!(&events[events.len() - 2], usage[0], "the usage chunk comes last, before [DONE]");
    let text: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3");
    let (_, body, _) = request(addr, "/v1/chat/completions", &[], r#"{"model":"m","stream":true}"#).await;
    assert!(data_events(&body).iter().all(|e| !e.contains(r#""usage":{"#)));
}

#[tokio::test]
async fn cut_streams_end_without_the_terminating_chunk() {
    let addr = start(Config::default()).await;
    let body =
        cut_stream(addr, "/v1/chat/completions", &[("x-mock-cut-after", "3")], r#"{"model":"m","stream":true}"#).await;
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("[DONE]"));
    assert_eq!(text.matches("data: ").count(), 3, "exactly the first three events arrive");
}

#[tokio::test]
async fn provider_keys_are_enforced_and_stats_count_served_requests() {
    let addr =
        start(Config { openai_key: Some("pk".into()), anthropic_key: Some("ak".into()), ..Config::default() }).await;
    let (status, _, _) = request(addr, "/v1/chat/completions", &[], r#"{"model":"m"}"#).await;
    assert_eq!(status, 401);
    let (status, _, _) =
        request(addr, "/v1/chat/completions", &[("authorization", "Bearer pk")], r#"{"model":"m"}"#).await;
    assert_eq!(status, 200);
    let (status, _, _) = request(addr, "/v1/messages", &[("x-api-key", "ak")], r#"{"model":"c","max_tokens":5}"#).await;
    assert_eq!(status, 200);
    let stats = stats(addr).await;
    assert_eq!(stats["served"], 2);
    assert_eq!(stats["requests"][1]["authorization"], "Bearer pk");
}

#[tokio::test]
async fn anthropic_stream_events_in_order_with_usage() {
    let addr = start(Config::default()).await;
    let (_, body, _) = request(
        addr,
        "/v1/messages",
        &[("x-mock-prompt-tokens", "9"), ("x-mock-completion-tokens", "2"), ("x-mock-split-bytes", "5")],
        r#"{"model":"c","stream":true,"max_tokens":5}"#,
    )
    .await;
    let types: Vec<String> = data_events(&body)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| v["type"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("\"input_tokens\":9") && text.contains("tök1"));
}

#[tokio::test]
async fn errors_and_embeddings() {
    let addr = start(Config::default()).await;
    let (status, body, _) =
        request(addr, "/v1/chat/completions", &[("x-mock-status", "429")], r#"{"model":"m"}"#).await;
    assert_eq!(status, 429);
    assert!(String::from_utf8_lossy(&body).contains("\"error\""));
    let (status, _, _) = request(addr, "/v1/chat/completions", &[], "{nope").await;
    assert_eq!(status, 400);
    let (_, body, _) = request(addr, "/v1/embeddings", &[], r#"{"model":"e","input":["a","b","c"]}"#).await;
    let v = parse(&body);
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
}

const AZURE_DENIED: &str = "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.";

fn azure_key() -> Config {
    Config { azure_key: Some("zk".into()), openai_key: Some("pk".into()), ..Config::default() }
}

#[tokio::test]
async fn azure_classic_path_answers_as_the_deployment_and_records_the_query() {
    let addr = start(azure_key()).await;
    let path = "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21";
    let v = ok_json(addr, path, &[("api-key", "zk"), ("x-mock-completion-tokens", "2")], r#"{"messages":[]}"#).await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "my-gpt", "no body model: the deployment answers");
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    let (_, body, _) = request(addr, path, &[("api-key", "zk")], r#"{"model":"gpt-4o","messages":[]}"#).await;
    let v = parse(&body);
    assert_eq!(v["model"], "gpt-4o", "a body model is echoed as on OpenAI's paths");
    let stats = stats(addr).await;
    assert_eq!(stats["served"], 2);
    assert_eq!(stats["requests"][0]["path"], "/openai/deployments/my-gpt/chat/completions");
    assert_eq!(stats["requests"][0]["query"], "api-version=2024-10-21");
    assert_eq!(stats["requests"][0]["api_key"], "zk");
    assert_eq!(stats["by_path"]["/openai/deployments/my-gpt/chat/completions"], 2);
}

#[tokio::test]
async fn azure_classic_path_without_api_version_is_not_found() {
    let addr = start(azure_key()).await;
    for path in ["/openai/deployments/d/chat/completions", "/openai/deployments/d/completions?api-version="] {
        let (status, body, _) = request(addr, path, &[("api-key", "zk")], r#"{"prompt":"x"}"#).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body, br#"{"error":{"code":"404","message":"Resource not found"}}"#);
    }
    let (status, body, _) = request(addr, "/openai/deployments/d/images?api-version=1", &[], "{}").await;
    assert_eq!(
        (status, body.as_slice()),
        (404, br#"{"error":{"code":"404","message":"Resource not found"}}"#.as_slice())
    );
    let stats = stats(addr).await;
    assert_eq!(stats["served"], 0);
    assert_eq!(stats["requests"][0]["query"], Value::Null);
}

#[tokio::test]
async fn azure_paths_take_only_the_api_key_header() {
    let addr = start(azure_key()).await;
    let path = "/openai/deployments/d/chat/completions?api-version=2024-10-21";
    for headers in [vec![], vec![("api-key", "wrong")], vec![("authorization", "Bearer zk")]] {
        let (status, body, _) = request(addr, path, &headers, r#"{"messages":[]}"#).await;
        assert_eq!(status, 401, "{headers:?}");
        let v = parse(&body);
        assert_eq!(v, json!({"error": {"code": "401", "message": AZURE_DENIED}}));
    }
    // The OpenAI paths still want their own key as a bearer token, not Azure's.
    let (status, _, _) = request(addr, "/v1/chat/completions", &[("api-key", "zk")], r#"{"model":"m"}"#).await;
    assert_eq!(status, 401);
    let (status, _, _) =
        request(addr, "/v1/chat/completions", &[("authorization", "Bearer pk")], r#"{"model":"m"}"#).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn azure_v1_form_needs_a_model_but_no_api_version() {
    let addr = start(azure_key()).await;
    let v =
        ok_json(addr, "/openai/v1/chat/completions", &[("api-key", "zk")], r#"{"model":"dep","messages":[]}"#).await;
    assert_eq!((v["object"].as_str(), v["model"].as_str()), (Some("chat.completion"), Some("dep")));
    let (status, _, _) = request(
        addr,
        "/openai/v1/completions?api-version=preview",
        &[("api-key", "zk")],
        r#"{"model":"dep","prompt":"x"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = request(addr, "/openai/v1/chat/completions", &[("api-key", "zk")], r#"{"messages":[]}"#).await;
    assert_eq!(status, 400, "the v1 form has no deployment to stand in for the model");
    let (status, _, _) = request(addr, "/openai/v1/chat/completions", &[], r#"{"model":"dep"}"#).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn azure_streams_and_knobs_match_openai() {
    let addr = start(azure_key()).await;
    let path = "/openai/deployments/d/chat/completions?api-version=2024-10-21";
    let body = r#"{"stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, raw, _) = request(addr, path, &[("api-key", "zk"), ("x-mock-completion-tokens", "3")], body).await;
    assert_eq!(status, 200);
    let events = data_events(&raw);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "d"));
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "tok0 tok1 tok2");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 3);
    let (status, _, _) = request(addr, path, &[("api-key", "zk"), ("x-mock-status", "429")], "{}").await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn azure_embeddings() {
    let addr = start(azure_key()).await;
    let v = ok_json(
        addr,
        "/openai/deployments/emb/embeddings?api-version=2024-10-21",
        &[("api-key", "zk")],
        r#"{"input":["a","b"]}"#,
    )
    .await;
    assert_eq!((v["object"].as_str(), v["model"].as_str()), (Some("list"), Some("emb")));
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let (status, _, _) =
        request(addr, "/openai/v1/embeddings", &[("api-key", "zk")], r#"{"model":"emb","input":"a"}"#).await;
    assert_eq!(status, 200);
}

/// A Responses stream's events as (the `event:` name, the `data:` JSON), in order.
fn named_events(body: &[u8]) -> Vec<(String, Value)> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().to_owned();
            (field("event: "), serde_json::from_str(&field("data: ")).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn responses_usage_and_text_follow_the_knobs() {
    let addr = start(Config::default()).await;
    let knobs = usage_knobs("50", "3", "10", "2");
    let v = ok_json(addr, "/v1/responses", &knobs, r#"{"model":"gpt-4.1","input":"hi"}"#).await;
    assert_eq!(
        (v["object"].as_str(), v["status"].as_str(), v["model"].as_str()),
        (Some("response"), Some("completed"), Some("gpt-4.1"))
    );
    assert!(v["id"].as_str().unwrap().starts_with("resp_") && v["created_at"].is_u64());
    let message = &v["output"][0];
    assert_eq!((message["type"].as_str(), message["role"].as_str()), (Some("message"), Some("assistant")));
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["content"], json!([{"type": "output_text", "text": "tok0 tok1 tok2", "annotations": []}]));
    assert_eq!(
        v["usage"],
        json!({
            "input_tokens": 50, "input_tokens_details": {"cached_tokens": 10},
            "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 53,
        })
    );
    // The bare path answers too; max_output_tokens caps the default length as max_tokens does.
    let v = ok_json(addr, "/responses", &[], r#"{"model":"m","input":[],"max_output_tokens":2}"#).await;
    assert_eq!(v["output"][0]["content"][0]["text"], "tok0 tok1");
    let stats = stats(addr).await;
    assert_eq!(stats["served"], 2);
    assert_eq!(stats["by_path"]["/v1/responses"], 1);
    assert_eq!(stats["requests"][0]["model"], "gpt-4.1");
}

#[tokio::test]
async fn responses_errors_are_openai_shaped() {
    let addr = start(Config { openai_key: Some("pk".into()), ..Config::default() }).await;
    let auth = ("authorization", "Bearer pk");
    let (status, body, _) = request(addr, "/v1/responses", &[auth], r#"{"input":"hi"}"#).await;
    assert_eq!(status, 400);
    let v = parse(&body);
    assert_eq!(v["error"]["message"], "you must provide a model parameter");
    for headers in [vec![], vec![("authorization", "Bearer wrong")]] {
        let (status, body, _) = request(addr, "/v1/responses", &headers, r#"{"model":"m"}"#).await;
        assert_eq!(status, 401, "{headers:?}");
        let v = parse(&body);
        assert_eq!(v["error"]["code"], "invalid_api_key");
    }
    let (status, body, _) =
        request(addr, "/v1/responses", &[auth, ("x-mock-status", "429")], r#"{"model":"m","stream":true}"#).await;
    assert_eq!(status, 429);
    let v = parse(&body);
    assert_eq!(v["error"]["type"], "api_error");
}

#[tokio::test]
async fn responses_stream_events_in_order_with_usage_last() {
    let addr = start(Config::default()).await;
    let knobs = usage_knobs("9", "3", "4", "1");
    let (status, body, complete) =
        request(addr, "/v1/responses", &knobs, r#"{"model":"m","input":"hi","stream":true}"#).await;
    assert_eq!((status, complete), (200, true));
    assert!(!String::from_utf8_lossy(&body).contains("[DONE]"));
    let events = named_events(&body);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    for (n, (name, data)) in events.iter().enumerate() {
        assert_eq!((data["type"].as_str(), data["sequence_number"].as_u64()), (Some(name.as_str()), Some(n as u64)));
    }
    let created = &events[0].1["response"];
    assert_eq!((created["status"].as_str(), created["usage"].is_null()), (Some("in_progress"), true));
    assert_eq!(created["output"], json!([]));
    let text: String = events
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "tok0 tok1 tok2");
    assert_eq!(events[6].1["text"], "tok0 tok1 tok2");
    let done = &events[9].1["response"];
    assert_eq!((done["status"].as_str(), done["id"].as_str()), (Some("completed"), created["id"].as_str()));
    assert_eq!(done["output"][0]["content"][0]["text"], "tok0 tok1 tok2");
    assert_eq!(
        done["usage"],
        json!({
            "input_tokens": 9, "input_tokens_details": {"cached_tokens": 4},
            "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 12,
        })
    );
}

#[tokio::test]
async fn responses_streams_chunk_split_and_cut_like_chat() {
    let addr = start(Config::default()).await;
    let body = r#"{"model":"m","stream":true}"#;
    let chunked = [("x-mock-completion-tokens", "5"), ("x-mock-chunk-tokens", "2"), ("x-mock-split-bytes", "7")];
    let (_, raw, complete) = request(addr, "/v1/responses", &chunked, body).await;
    assert!(complete);
    let deltas: Vec<String> = named_events(&raw)
        .into_iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deltas, ["tök0 tök1", " tök2 tök3", " tök4"]);
    let raw = cut_stream(addr, "/v1/responses", &[("x-mock-cut-after", "4")], body).await;
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("event: ").count(), 4, "exactly the first four events arrive");
    assert!(!text.contains("response.completed") && !text.contains("input_tokens"));
}

// ---- Gemini -------------------------------------------------------------------------------

const GEMINI: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const GEMINI_SSE: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
const GEMINI_BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;

fn gemini_key() -> Config {
    Config { gemini_key: Some("gk".into()), openai_key: Some("pk".into()), ..Config::default() }
}

/// The JSON of each event of a Gemini SSE stream, checking its framing: `data: ` lines only,
/// each event ended by CRLF CRLF.
fn gemini_events(body: &[u8]) -> Vec<Value> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");
    text.split_terminator("\r\n\r\n")
        .map(|event| {
            assert!(!event.contains('\n') && !event.contains('\r'), "one line per event: {event:?}");
            serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn gemini_generate_content_follows_the_knobs_and_records_the_body() {
    let addr = start(gemini_key()).await;
    let knobs = [&[("x-goog-api-key", "gk")][..], &usage_knobs("50", "3", "10", "2")].concat();
    let sent = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"systemInstruction":{"parts":[{"text":"Be brief."}]},"generationConfig":{"maxOutputTokens":40,"temperature":0.5}}"#;
    let (status, head, body, _) = request_with_head(addr, GEMINI, &knobs, sent).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"));
    let v = parse(&body);
    assert_eq!(
        v["candidates"],
        json!([{"content": {"parts": [{"text": "tok0 tok1 tok2"}], "role": "model"},
            "finishReason": "STOP", "index": 0}])
    );
    assert_eq!(
        v["usageMetadata"],
        json!({"promptTokenCount": 50, "candidatesTokenCount": 3, "totalTokenCount": 55,
            "cachedContentTokenCount": 10, "thoughtsTokenCount": 2})
    );
    assert_eq!(v["modelVersion"], "gemini-2.5-flash", "the model is the path's");
    assert!(v["responseId"].as_str().is_some_and(|id| !id.is_empty()));
    // Without cache or thoughts their counts are absent; /v1/ answers too; 16 words by default.
    let v = ok_json(addr, "/v1/models/gemini-pro:generateContent", &[("x-goog-api-key", "gk")], GEMINI_BODY).await;
    let usage = v["usageMetadata"].as_object().unwrap();
    assert_eq!(usage.keys().collect::<Vec<_>>(), ["candidatesTokenCount", "promptTokenCount", "totalTokenCount"]);
    assert_eq!((usage["candidatesTokenCount"].as_u64(), v["modelVersion"].as_str()), (Some(16), Some("gemini-pro")));
    let stats = stats(addr).await;
    assert_eq!(stats["served"], 2);
    let seen = &stats["requests"][0];
    assert_eq!((seen["path"].as_str(), seen["query"].as_str()), (Some(GEMINI), None));
    assert_eq!((seen["model"].as_str(), seen["stream"].as_bool()), (Some("gemini-2.5-flash"), Some(false)));
    assert_eq!(seen["x_goog_api_key"], "gk");
    assert_eq!(seen["authorization"], Value::Null);
    assert_eq!(seen["body_json"]["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(seen["body_json"]["generationConfig"]["maxOutputTokens"], 40);
    assert_eq!(stats["by_path"]["/v1/models/gemini-pro:generateContent"], 1);
}

#[tokio::test]
async fn gemini_wants_its_key_in_the_header_or_the_query() {
    let addr = start(gemini_key()).await;
    let invalid = json!({"error": {"code": 400,
        "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT"}});
    for headers in [vec![], vec![("x-goog-api-key", "wrong")], vec![("authorization", "Bearer gk")]] {
        let (status, body, _) = request(addr, GEMINI, &headers, GEMINI_BODY).await;
        assert_eq!(status, 400, "{headers:?}");
        assert_eq!(parse(&body), invalid);
    }
    let (status, _, _) = request(addr, &format!("{GEMINI}?key=wrong"), &[], GEMINI_BODY).await;
    assert_eq!(status, 400);
    let (status, _, _) = request(addr, &format!("{GEMINI}?key=gk"), &[], GEMINI_BODY).await;
    assert_eq!(status, 200);
    let (status, _, _) = request(addr, GEMINI_SSE, &[("x-goog-api-key", "gk")], GEMINI_BODY).await;
    assert_eq!(status, 200);
    let stats = stats(addr).await;
    assert_eq!(stats["served"], 2);
    assert_eq!(stats["requests"][4]["query"], "key=gk");
    assert_eq!(stats["requests"][5]["query"], "alt=sse");
    answers_without_a_key(GEMINI, GEMINI_BODY).await;
}

#[tokio::test]
async fn gemini_refuses_bad_bodies_and_unknown_methods_in_googles_words() {
    let addr = start(Config::default()).await;
    let error = |body: &[u8]| serde_json::from_slice::<Value>(body).unwrap()["error"].clone();
    let no_contents = json!({"code": 400,
        "message": "* GenerateContentRequest.contents: contents is not specified\n", "status": "INVALID_ARGUMENT"});
    for body in ["", "{}", r#"{"contents":[]}"#, r#"{"generationConfig":{"maxOutputTokens":5}}"#] {
        let (status, raw, _) = request(addr, GEMINI, &[], body).await;
        assert_eq!((status, error(&raw)), (400, no_contents.clone()), "{body}");
    }
    let (status, raw, _) = request(addr, GEMINI, &[], "{nope").await;
    assert_eq!((status, error(&raw)["status"].as_str()), (400, Some("INVALID_ARGUMENT")));
    // What Google refuses that a translation might send: OpenAI fields, OpenAI roles, empty parts.
    let cases = [
        (r#"{"contents":[{"parts":[{"text":"x"}]}],"messages":[]}"#, "Unknown name \"messages\""),
        (r#"{"contents":[{"role":"assistant","parts":[{"text":"x"}]}]}"#, "Please use a valid role: user, model."),
        (r#"{"contents":[{"role":"user","parts":[]}]}"#, "contents[0].parts: contents.parts must not be empty"),
    ];
    for (body, message) in cases {
        let (status, raw, _) = request(addr, GEMINI, &[], body).await;
        assert_eq!(status, 400, "{body}");
        assert!(error(&raw)["message"].as_str().unwrap().contains(message), "{body}");
    }
    // Proto's own field names are accepted as well as the JSON names.
    let snake = r#"{"contents":[{"parts":[{"text":"x"}]}],"system_instruction":{"parts":[{"text":"s"}]},"generation_config":{"max_output_tokens":2}}"#;
    let v = ok_json(addr, GEMINI, &[], snake).await;
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "tok0 tok1");
    for path in [
        "/v1beta/models/gemini-2.5-flash:embedContent",
        "/v1beta/models/gemini-2.5-flash",
        "/v1beta/models/:generateContent",
        "/v1beta/tunedModels/x:generateContent",
    ] {
        let (status, raw, _) = request(addr, path, &[], GEMINI_BODY).await;
        assert_eq!((status, error(&raw)["status"].as_str()), (404, Some("NOT_FOUND")), "{path}");
        assert_eq!(error(&raw)["code"], 404);
    }
    // A percent-encoded colon routes as the colon does.
    let (status, _, _) = request(addr, "/v1beta/models/g%3AgenerateContent", &[], GEMINI_BODY).await;
    assert_eq!(status, 200);
    assert_eq!(stats(addr).await["served"], 2);
}

#[tokio::test]
async fn gemini_streams_crlf_framed_events_with_cumulative_usage() {
    let addr = start(Config::default()).await;
    let knobs = [&[("x-mock-chunk-tokens", "2")][..], &usage_knobs("9", "5", "4", "3")].concat();
    let (status, head, body, complete) = request_with_head(addr, GEMINI_SSE, &knobs, GEMINI_BODY).await;
    assert_eq!((status, complete), (200, true));
    assert!(head.contains("content-type: text/event-stream"));
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("[DONE]") && !text.contains("event:"));
    let events = gemini_events(&body);
    assert_eq!(events.len(), 3);
    let pieces: Vec<&str> =
        events.iter().map(|e| e["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(pieces, ["tok0 tok1", " tok2 tok3", " tok4"]);
    for (event, so_far) in events.iter().zip([2, 4, 5]) {
        assert_eq!(event["candidates"][0]["content"]["role"], "model");
        assert_eq!(event["modelVersion"], "gemini-2.5-flash");
        assert_eq!(event["responseId"], events[0]["responseId"]);
        assert_eq!(
            event["usageMetadata"],
            json!({"promptTokenCount": 9, "candidatesTokenCount": so_far,
                "totalTokenCount": 9 + so_far + 3, "cachedContentTokenCount": 4, "thoughtsTokenCount": 3})
        );
    }
    assert!(events[..2].iter().all(|e| e["candidates"][0].get("finishReason").is_none()));
    assert_eq!(events[2]["candidates"][0]["finishReason"], "STOP");
    let seen = &stats(addr).await["requests"][0];
    assert_eq!((seen["stream"].as_bool(), seen["query"].as_str()), (Some(true), Some("alt=sse")));
    assert_eq!(seen["path"], "/v1beta/models/gemini-2.5-flash:streamGenerateContent");
}

#[tokio::test]
async fn gemini_streams_split_and_cut_like_chat() {
    let addr = start(Config::default()).await;
    let (split, cut) = split_and_cut(addr, GEMINI_SSE, GEMINI_BODY).await;
    let text: String = gemini_events(&split)
        .iter()
        .map(|e| e["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "tök0 tök1 tök2 tök3");
    let text = String::from_utf8_lossy(&cut);
    assert_eq!(text.matches("data: ").count(), 2, "exactly the first two events arrive");
    assert!(!text.contains("finishReason"));
    // Without alt=sse Google streams one JSON array.
    let path = "/v1beta/models/m:streamGenerateContent";
    let (status, head, body, _) =
        request_with_head(addr, path, &[("x-mock-completion-tokens", "3")], GEMINI_BODY).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"));
    let array: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(array.len(), 3);
    assert_eq!(array[2]["candidates"][0]["finishReason"], "STOP");
}

#[tokio::test]
async fn gemini_tool_call_knob_answers_with_a_function_call() {
    let addr = start(Config::default()).await;
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"Weather in Paris?"}]}],"tools":[{"functionDeclarations":[{"name":"weather","parameters":{"type":"object"}}]}]}"#;
    let call = json!([{"functionCall": {"name": "weather", "args": {"city": "Paris"}}}]);
    let v = ok_json(addr, GEMINI, &[("x-mock-tool-call", "weather")], body).await;
    assert_eq!(v["candidates"][0]["content"]["parts"], call);
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    let (_, raw, _) = request(addr, GEMINI_SSE, &[("x-mock-tool-call", "weather")], body).await;
    let events = gemini_events(&raw);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["candidates"][0]["content"]["parts"], call);
    assert_eq!(events[0]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(stats(addr).await["requests"][0]["body_json"]["tools"][0]["functionDeclarations"][0]["name"], "weather");
    // Without declared functions the knob is ignored.
    let (_, raw, _) = request(addr, GEMINI, &[("x-mock-tool-call", "weather")], GEMINI_BODY).await;
    let v = parse(&raw);
    assert!(v["candidates"][0]["content"]["parts"][0]["text"].is_string());
}

#[tokio::test]
async fn gemini_max_output_tokens_cuts_the_answer_with_max_tokens() {
    let addr = start(Config::default()).await;
    let capped = |n: u64| {
        format!(r#"{{"contents":[{{"parts":[{{"text":"x"}}]}}],"generationConfig":{{"maxOutputTokens":{n}}}}}"#)
    };
    let (answers, stream) = capped_answers(addr, GEMINI, GEMINI_SSE, capped).await;
    for (case, text, cut, v) in answers {
        let finish = if cut { "MAX_TOKENS" } else { "STOP" };
        let candidate = &v["candidates"][0];
        assert_eq!(
            (candidate["content"]["parts"][0]["text"].as_str(), candidate["finishReason"].as_str()),
            (Some(text), Some(finish)),
            "{case}"
        );
        assert_eq!(v["usageMetadata"]["candidatesTokenCount"], text.split(' ').count());
    }
    let events = gemini_events(&stream);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(events[1]["usageMetadata"]["candidatesTokenCount"], 2);
}

#[tokio::test]
async fn gemini_errors_are_googles() {
    let addr = start(Config::default()).await;
    let codes = [
        (429, "RESOURCE_EXHAUSTED"),
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (503, "UNAVAILABLE"),
        (500, "INTERNAL"),
        (502, "INTERNAL"),
    ];
    for (code, name, _, v) in forced_errors(addr, [GEMINI, GEMINI_SSE], GEMINI_BODY, &codes).await {
        assert_eq!(v, json!({"error": {"code": code, "message": format!("mock error {code}"), "status": name}}));
    }
    let (status, raw, _) = request(addr, GEMINI, &[("x-mock-garbage", "1")], GEMINI_BODY).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_slice::<Value>(&raw).is_err());
    assert_eq!(stats(addr).await["served"], 1);
}

#[tokio::test]
async fn gemini_count_tokens_counts_the_prompt_as_generate_content_would() {
    let addr = start(gemini_key()).await;
    let key = [("x-goog-api-key", "gk")];
    let count = "/v1beta/models/gemini-2.5-flash:countTokens";
    let v = ok_json(addr, count, &key, GEMINI_BODY).await;
    assert_eq!(v, json!({"totalTokens": GEMINI_BODY.len().div_ceil(4)}));
    let generated = ok_json(addr, GEMINI, &key, GEMINI_BODY).await;
    assert_eq!(generated["usageMetadata"]["promptTokenCount"], v["totalTokens"]);
    let v = ok_json(addr, count, &[key[0], ("x-mock-prompt-tokens", "77")], GEMINI_BODY).await;
    assert_eq!(v, json!({"totalTokens": 77}));
    // The wrapped form counts the generation request it wraps; /v1/ answers too.
    let wrapped = format!(r#"{{"generateContentRequest":{{"model":"models/gemini-2.5-flash",{}}}"#, &GEMINI_BODY[1..]);
    let inner: Value = serde_json::from_str(&wrapped).unwrap();
    let inner = serde_json::to_vec(&inner["generateContentRequest"]).unwrap().len();
    let v = ok_json(addr, "/v1/models/gemini-2.5-flash:countTokens", &key, &wrapped).await;
    assert_eq!(v, json!({"totalTokens": inner.div_ceil(4)}));
    // Google's checks and key as for a generation.
    let (status, _, _) = request(addr, count, &[], GEMINI_BODY).await;
    assert_eq!(status, 400);
    let (status, raw, _) = request(addr, count, &key, "{}").await;
    assert_eq!(status, 400);
    assert!(parse(&raw)["error"]["message"].as_str().unwrap().contains("contents is not specified"));
    let both = format!(r#"{{"generateContentRequest":{GEMINI_BODY},"contents":[]}}"#);
    let (status, _, _) = request(addr, count, &key, &both).await;
    assert_eq!(status, 400);
    let seen = &stats(addr).await["requests"][0];
    assert_eq!((seen["model"].as_str(), seen["stream"].as_bool()), (Some("gemini-2.5-flash"), Some(false)));
}

// ---- Bedrock (Converse) -------------------------------------------------------------------

const CONVERSE: &str = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse";
const CONVERSE_STREAM: &str = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream";
const CONVERSE_BODY: &str = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
const SIGV4: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=0123456789abcdef";
const SIGNED: [(&str, &str); 2] = [("authorization", SIGV4), ("x-amz-date", "20250101T000000Z")];

fn aws_key() -> Config {
    Config { aws_access_key_id: Some("AKIDEXAMPLE".into()), ..Config::default() }
}

/// Headers: the SigV4 pair, then `extra`.
fn signed<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    SIGNED.iter().copied().chain(extra.iter().copied()).collect()
}

/// Decodes an AWS event stream into (`:event-type`, JSON payload), checking every message's
/// lengths, both CRCs and its `:content-type`/`:message-type` headers; every byte must belong
/// to a complete message.
fn aws_events(mut body: &[u8]) -> Vec<(String, Value)> {
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let mut events = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 16, "a truncated prelude: {body:?}");
        let (total, headers_len) = (be32(&body[0..]) as usize, be32(&body[4..]) as usize);
        assert_eq!(be32(&body[8..]), crc32fast::hash(&body[..8]), "prelude CRC");
        let message = &body[..total];
        assert_eq!(be32(&message[total - 4..]), crc32fast::hash(&message[..total - 4]), "message CRC");
        let mut headers = std::collections::HashMap::new();
        let mut h = &message[12..12 + headers_len];
        while !h.is_empty() {
            let name_len = h[0] as usize;
            let name = String::from_utf8(h[1..1 + name_len].to_vec()).unwrap();
            assert_eq!(h[1 + name_len], 7, "string header");
            let value_len = u16::from_be_bytes([h[2 + name_len], h[3 + name_len]]) as usize;
            let value = String::from_utf8(h[4 + name_len..4 + name_len + value_len].to_vec()).unwrap();
            headers.insert(name, value);
            h = &h[4 + name_len + value_len..];
        }
        assert_eq!(headers[":content-type"], "application/json");
        assert_eq!(headers[":message-type"], "event");
        let payload: Value = serde_json::from_slice(&message[12 + headers_len..total - 4]).unwrap();
        assert!(payload["p"].as_str().is_some_and(|p| !p.is_empty()), "AWS's padding");
        events.push((headers[":event-type"].clone(), payload));
        body = &body[total..];
    }
    events
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

#[tokio::test]
async fn bedrock_converse_follows_the_knobs_and_records_the_body() {
    let addr = start(aws_key()).await;
    let headers = signed(&[
        ("x-amz-security-token", "session-token"),
        ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ("x-mock-prompt-tokens", "50"),
        ("x-mock-completion-tokens", "3"),
        ("x-mock-cached-tokens", "10"),
        ("x-mock-cache-write-tokens", "5"),
    ]);
    let sent = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"system":[{"text":"Be brief."}],"inferenceConfig":{"maxTokens":40,"temperature":0.5}}"#;
    let (status, head, body, _) = request_with_head(addr, CONVERSE, &headers, sent).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json") && head.contains("x-amzn-requestid: "));
    assert!(!head.contains("x-amzn-errortype"));
    let v = parse(&body);
    assert_eq!(
        v,
        json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "tok0 tok1 tok2"}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 35, "outputTokens": 3, "totalTokens": 53,
                "cacheReadInputTokens": 10, "cacheWriteInputTokens": 5},
            "metrics": {"latencyMs": 12},
        })
    );
    // 16 words by default, no cache.
    let (_, body, _) = request(addr, "/model/amazon.nova-lite-v1%3A0/converse", &SIGNED, CONVERSE_BODY).await;
    let v = parse(&body);
    assert_eq!((v["usage"]["outputTokens"].as_u64(), v["usage"]["cacheReadInputTokens"].as_u64()), (Some(16), Some(0)));
    let stats = stats(addr).await;
    assert_eq!(stats["served"], 2);
    let seen = &stats["requests"][0];
    assert_eq!(seen["path"], CONVERSE, "the path as sent");
    assert_eq!(
        (seen["model"].as_str(), seen["stream"].as_bool()),
        (Some("anthropic.claude-3-5-sonnet-20240620-v1:0"), Some(false)),
        "the model decoded"
    );
    assert_eq!(seen["authorization"], SIGV4);
    assert_eq!(seen["x_amz_date"], "20250101T000000Z");
    assert_eq!(seen["x_amz_security_token"], "session-token");
    assert_eq!(seen["x_amz_content_sha256"], "UNSIGNED-PAYLOAD");
    assert_eq!(seen["body_json"]["system"][0]["text"], "Be brief.");
    assert_eq!(seen["body_json"]["inferenceConfig"]["maxTokens"], 40);
    assert_eq!(stats["requests"][1]["model"], "amazon.nova-lite-v1:0");
    assert_eq!(stats["requests"][1]["x_amz_security_token"], Value::Null);
}

#[tokio::test]
async fn bedrock_wants_a_sigv4_signature_for_the_configured_key() {
    let addr = start(aws_key()).await;
    let denied = json!({"message": "The security token included in the request is invalid."});
    let date = ("x-amz-date", "20250101T000000Z");
    let other_key = SIGV4.replace("AKIDEXAMPLE", "AKIDOTHER");
    let prefix_key = SIGV4.replace("AKIDEXAMPLE/", "AKIDEXAMPLE2/");
    let other_service = SIGV4.replace("/bedrock/", "/s3/");
    let unsigned = SIGV4.replace("Signature=", "Sig=");
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![date],
        vec![("authorization", SIGV4)],
        vec![("authorization", "Bearer AKIDEXAMPLE"), date],
        vec![("authorization", &other_key), date],
        vec![("authorization", &prefix_key), date],
        vec![("authorization", &other_service), date],
        vec![("authorization", &unsigned), date],
    ];
    for headers in cases {
        for path in [CONVERSE, CONVERSE_STREAM] {
            let (status, head, body, _) = request_with_head(addr, path, &headers, CONVERSE_BODY).await;
            assert_eq!(status, 403, "{headers:?}");
            assert!(head.contains("x-amzn-errortype: unrecognizedclientexception"), "{head}");
            assert_eq!(parse(&body), denied);
        }
    }
    let (status, _, _) = request(addr, CONVERSE, &SIGNED, CONVERSE_BODY).await;
    assert_eq!(status, 200);
    assert_eq!(stats(addr).await["served"], 1);
    answers_without_a_key(CONVERSE, CONVERSE_BODY).await;
}

#[tokio::test]
async fn bedrock_refuses_bad_bodies_and_unknown_operations_in_aws_words() {
    let addr = start(Config::default()).await;
    let cases = [
        ("{}", "Value null at 'messages'"),
        (r#"{"messages":null,"system":[{"text":"s"}]}"#, "Value null at 'messages'"),
        (r#"{"messages":[]}"#, "A conversation must start with a user message"),
        ("{nope", "Malformed input request"),
        (r#"{"messages":[{"role":"system","content":[{"text":"x"}]}]}"#, "Value 'system' at 'messages.1.member.role'"),
        (r#"{"messages":[{"role":"assistant","content":[{"text":"x"}]}]}"#, "must start with a user message"),
        (r#"{"messages":[{"role":"user","content":[]}]}"#, "messages.0 is empty"),
        (r#"{"messages":[{"role":"user","content":"x"}]}"#, "messages.0 is empty"),
        (
            r#"{"messages":[{"role":"user","content":[{"text":"a"}]},{"role":"user","content":[{"text":"b"}]}]}"#,
            "must alternate between user and assistant roles",
        ),
    ];
    for (body, message) in cases {
        for path in [CONVERSE, CONVERSE_STREAM] {
            let (status, head, raw, _) = request_with_head(addr, path, &[], body).await;
            assert_eq!(status, 400, "{body}");
            assert!(head.contains("x-amzn-errortype: validationexception"), "{body}");
            let v = parse(&raw);
            assert!(v["message"].as_str().unwrap().contains(message), "{body}: {v}");
        }
    }
    for path in [
        "/model/m/invoke",
        "/model/m/invoke-with-response-stream",
        "/model/m",
        "/model//converse",
        "/model/arn:aws:bedrock:us-east-1:1:inference-profile/us.m/converse",
    ] {
        let (status, head, raw, _) = request_with_head(addr, path, &[], CONVERSE_BODY).await;
        assert_eq!(status, 404, "{path}");
        assert!(head.contains("x-amzn-errortype: unknownoperationexception"), "{path}");
        assert!(parse(&raw)["message"].is_string());
    }
    // An ARN with its slash encoded is a model id like any other.
    let arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.m/converse";
    let (status, _, _) = request(addr, arn, &[], CONVERSE_BODY).await;
    assert_eq!(status, 200);
    let stats = stats(addr).await;
    assert_eq!(stats["served"], 1);
    assert_eq!(
        stats["requests"].as_array().unwrap().last().unwrap()["model"],
        "arn:aws:bedrock:us-east-1:1:inference-profile/us.m"
    );
}

#[tokio::test]
async fn bedrock_streams_crc_checked_events_in_order() {
    let addr = start(aws_key()).await;
    let headers = signed(&[
        ("x-mock-prompt-tokens", "20"),
        ("x-mock-completion-tokens", "5"),
        ("x-mock-chunk-tokens", "2"),
        ("x-mock-cached-tokens", "4"),
        ("x-mock-cache-write-tokens", "6"),
    ]);
    let (status, head, body, complete) = request_with_head(addr, CONVERSE_STREAM, &headers, CONVERSE_BODY).await;
    assert_eq!((status, complete), (200, true));
    assert!(head.contains("content-type: application/vnd.amazon.eventstream"));
    let events = aws_events(&body);
    assert_eq!(
        names(&events),
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    assert_eq!(events[0].1["role"], "assistant");
    let pieces: Vec<&str> = events[1..4]
        .iter()
        .map(|(_, e)| {
            assert_eq!(e["contentBlockIndex"], 0);
            e["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(pieces, ["tok0 tok1", " tok2 tok3", " tok4"]);
    assert_eq!(events[4].1["contentBlockIndex"], 0);
    assert_eq!(events[5].1["stopReason"], "end_turn");
    assert_eq!(
        events[6].1["usage"],
        json!({"inputTokens": 10, "outputTokens": 5, "totalTokens": 25,
            "cacheReadInputTokens": 4, "cacheWriteInputTokens": 6})
    );
    assert_eq!(events[6].1["metrics"]["latencyMs"], 12);
    let seen = &stats(addr).await["requests"][0];
    assert_eq!(
        (seen["stream"].as_bool(), seen["model"].as_str()),
        (Some(true), Some("anthropic.claude-3-5-sonnet-20240620-v1:0"))
    );
    assert_eq!(seen["path"], CONVERSE_STREAM);
}

#[tokio::test]
async fn bedrock_streams_split_and_cut_like_chat() {
    let addr = start(Config::default()).await;
    let (split, cut) = split_and_cut(addr, CONVERSE_STREAM, CONVERSE_BODY).await;
    let text: String =
        aws_events(&split).iter().filter_map(|(_, e)| e["delta"]["text"].as_str().map(str::to_owned)).collect();
    assert_eq!(text, "tök0 tök1 tök2 tök3");
    assert_eq!(names(&aws_events(&cut)), ["messageStart", "contentBlockDelta"], "exactly the first two messages");
}

#[tokio::test]
async fn bedrock_tool_call_knob_answers_with_a_tool_use() {
    let addr = start(Config::default()).await;
    let body = r#"{"messages":[{"role":"user","content":[{"text":"Weather in Paris?"}]}],"toolConfig":{"tools":[{"toolSpec":{"name":"weather","inputSchema":{"json":{"type":"object"}}}}]}}"#;
    let knob = [("x-mock-tool-call", "weather"), ("x-mock-completion-tokens", "7")];
    let v = ok_json(addr, CONVERSE, &knob, body).await;
    let content = v["output"]["message"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 1);
    let tool_use = &content[0]["toolUse"];
    assert!(tool_use["toolUseId"].as_str().unwrap().starts_with("tooluse_"));
    assert_eq!((tool_use["name"].as_str(), &tool_use["input"]), (Some("weather"), &json!({"city": "Paris"})));
    assert_eq!((v["stopReason"].as_str(), v["usage"]["outputTokens"].as_u64()), (Some("tool_use"), Some(7)));
    let (_, raw, complete) = request(addr, CONVERSE_STREAM, &knob, body).await;
    assert!(complete);
    let events = aws_events(&raw);
    assert_eq!(
        names(&events),
        [
            "messageStart",
            "contentBlockStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    let start = &events[1].1;
    assert_eq!(start["contentBlockIndex"], 0);
    assert_eq!(start["start"]["toolUse"]["name"], "weather");
    assert!(start["start"]["toolUse"]["toolUseId"].as_str().unwrap().starts_with("tooluse_"));
    let input: String = events[2..4].iter().map(|(_, e)| e["delta"]["toolUse"]["input"].as_str().unwrap()).collect();
    assert_eq!(serde_json::from_str::<Value>(&input).unwrap(), json!({"city": "Paris"}));
    assert_eq!(events[5].1["stopReason"], "tool_use");
    assert_eq!(events[6].1["usage"]["outputTokens"], 7);
    assert_eq!(stats(addr).await["requests"][0]["body_json"]["toolConfig"]["tools"][0]["toolSpec"]["name"], "weather");
    // Without declared tools the knob is ignored.
    let (_, raw, _) = request(addr, CONVERSE, &knob, CONVERSE_BODY).await;
    let v = parse(&raw);
    assert_eq!(
        (v["output"]["message"]["content"][0]["text"].is_string(), v["stopReason"].as_str()),
        (true, Some("end_turn"))
    );
}

#[tokio::test]
async fn bedrock_max_tokens_cuts_the_answer_with_max_tokens() {
    let addr = start(Config::default()).await;
    let capped = |n: u64| {
        format!(
            r#"{{"messages":[{{"role":"user","content":[{{"text":"x"}}]}}],"inferenceConfig":{{"maxTokens":{n}}}}}"#
        )
    };
    let (answers, stream) = capped_answers(addr, CONVERSE, CONVERSE_STREAM, capped).await;
    for (case, text, cut, v) in answers {
        let stop = if cut { "max_tokens" } else { "end_turn" };
        assert_eq!(
            (v["output"]["message"]["content"][0]["text"].as_str(), v["stopReason"].as_str()),
            (Some(text), Some(stop)),
            "{case}"
        );
        assert_eq!(v["usage"]["outputTokens"], text.split(' ').count());
    }
    let events = aws_events(&stream);
    assert_eq!(names(&events).iter().filter(|n| **n == "contentBlockDelta").count(), 2);
    assert_eq!(events[events.len() - 2].1["stopReason"], "max_tokens");
    assert_eq!(events[events.len() - 1].1["usage"]["outputTokens"], 2);
}

#[tokio::test]
async fn bedrock_errors_are_aws_json_even_on_streams() {
    let addr = start(Config::default()).await;
    let codes = [
        (429, "ThrottlingException"),
        (400, "ValidationException"),
        (403, "AccessDeniedException"),
        (404, "ResourceNotFoundException"),
        (503, "ServiceUnavailableException"),
        (500, "InternalServerException"),
        (502, "InternalServerException"),
    ];
    for (code, name, head, v) in forced_errors(addr, [CONVERSE, CONVERSE_STREAM], CONVERSE_BODY, &codes).await {
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains(&format!("x-amzn-errortype: {}", name.to_ascii_lowercase())), "{head}");
        assert_eq!(v, json!({"message": format!("mock error {code}")}));
    }
    assert_eq!(stats(addr).await["served"], 0);
}

// ---- Vertex AI and Google's tokens ----------------------------------------------------------

const VERTEX: &str = "/v1/projects/my-project/locations/us-east5/publishers";
const CLAUDE_BODY: &str =
    r#"{"anthropic_version":"vertex-2023-10-16","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const UNAUTHENTICATED: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.";

fn vertex_gemini(method: &str) -> String {
    format!("{VERTEX}/google/models/gemini-2.5-flash:{method}")
}

fn vertex_claude(method: &str) -> String {
    format!("{VERTEX}/anthropic/models/claude-sonnet-4@20250514:{method}")
}

/// Unpadded base64url, as JWTs use it.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A service account's token request: a JWT assertion with `claims` over the usual ones, a
/// fake signature, form-encoded as Google's client libraries send it.
fn jwt_grant(header: &Value, claims: &[(&str, Value)]) -> String {
    let now = unix_now();
    let mut set = json!({"iss": "sa@my-project.iam.gserviceaccount.com", "scope": CLOUD_PLATFORM,
        "aud": "https://oauth2.googleapis.com/token", "iat": now, "exp": now + 3600});
    for (name, value) in claims {
        set[*name] = value.clone();
    }
    let assertion = format!(
        "{}.{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(set.to_string().as_bytes()),
        base64url(b"not a real signature")
    );
    format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}")
}

fn rs256() -> Value {
    json!({"alg": "RS256", "typ": "JWT"})
}

/// A token from `/token` for a good assertion, checked to be Google's token JSON.
async fn issue_token(addr: std::net::SocketAddr, ttl: u64) -> String {
    let v =
        ok_json(addr, "/token", &[("content-type", "application/x-www-form-urlencoded")], &jwt_grant(&rs256(), &[]))
            .await;
    assert_eq!((v["token_type"].as_str(), v["expires_in"].as_u64()), (Some("Bearer"), Some(ttl)), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
    let token = v["access_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("ya29.mock-"), "{token}");
    token
}

fn google_auth(ttl: u64) -> Config {
    Config { google_auth: true, google_token_ttl_secs: ttl, ..Config::default() }
}

#[tokio::test]
async fn vertex_gemini_answers_as_gemini_and_records_the_model() {
    // Gemini's key is not Vertex AI's credential: without --google-auth anything goes.
    let addr = start(gemini_key()).await;
    let knobs = usage_knobs("50", "3", "10", "2");
    let v = ok_json(addr, &vertex_gemini("generateContent"), &knobs, GEMINI_BODY).await;
    let gemini = ok_json(addr, GEMINI, &[&[("x-goog-api-key", "gk")][..], &knobs].concat(), GEMINI_BODY).await;
    assert_eq!((&v["candidates"], &v["usageMetadata"]), (&gemini["candidates"], &gemini["usageMetadata"]));
    assert_eq!(v["modelVersion"], "gemini-2.5-flash", "the model is the path's");
    let (status, head, body, complete) =
        request_with_head(addr, &format!("{}?alt=sse", vertex_gemini("streamGenerateContent")), &[], GEMINI_BODY).await;
    assert_eq!((status, complete), (200, true));
    assert!(head.contains("content-type: text/event-stream"));
    let events = gemini_events(&body);
    assert_eq!(events.len(), 16);
    assert_eq!(events[15]["candidates"][0]["finishReason"], "STOP");
    let v = ok_json(addr, &vertex_gemini("countTokens"), &[], GEMINI_BODY).await;
    assert_eq!(v, json!({"totalTokens": GEMINI_BODY.len().div_ceil(4)}));
    // Google's checks of the body hold here too.
    let (status, raw, _) = request(addr, &vertex_gemini("generateContent"), &[], "{}").await;
    assert_eq!((status, parse(&raw)["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")));
    let stats = stats(addr).await;
    assert_eq!(stats["served"], 4);
    let seen = &stats["requests"];
    assert_eq!((seen[0]["model"].as_str(), seen[0]["stream"].as_bool()), (Some("gemini-2.5-flash"), Some(false)));
    assert_eq!(seen[0]["body_json"]["contents"][0]["parts"][0]["text"], "hi");
    assert_eq!((seen[2]["stream"].as_bool(), seen[2]["query"].as_str()), (Some(true), Some("alt=sse")));
    assert_eq!(seen[3]["model"], "gemini-2.5-flash");
    assert_eq!(stats["by_path"][vertex_gemini("countTokens")], 1);
}

#[tokio::test]
async fn vertex_paths_it_does_not_serve_are_googles_404() {
    let addr = start(Config::default()).await;
    for path in [
        "/v1/projects//locations/us-east5/publishers/google/models/gemini-2.5-flash:generateContent".to_owned(),
        "/v1/projects/p/locations//publishers/google/models/gemini-2.5-flash:generateContent".to_owned(),
        "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash".to_owned(),
        vertex_gemini("predict"),
        vertex_claude("generateContent"),
        format!("{VERTEX}/anthropic/models/count-tokens:streamRawPredict"),
        format!("{VERTEX}/meta/models/llama:rawPredict"),
    ] {
        let (status, raw, _) = request(addr, &path, &[], GEMINI_BODY).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(
            parse(&raw),
            json!({"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}})
        );
    }
    assert_eq!(stats(addr).await["by_path"].as_object().unwrap().len(), 7, "recorded, as a Gemini 404 is");
}

#[tokio::test]
async fn vertex_claude_answers_as_messages_with_the_paths_model() {
    // Anthropic's key is not Vertex AI's credential either.
    let addr = start(Config { anthropic_key: Some("ak".into()), ..Config::default() }).await;
    let v = ok_json(addr, &vertex_claude("rawPredict"), &[("x-mock-completion-tokens", "2")], CLAUDE_BODY).await;
    assert_eq!((v["type"].as_str(), v["model"].as_str()), (Some("message"), Some("claude-sonnet-4@20250514")));
    assert_eq!(v["content"][0]["text"], "tok0 tok1");
    assert_eq!(v["usage"]["input_tokens"], CLAUDE_BODY.len().div_ceil(4));
    let stream_body = CLAUDE_BODY.replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\"");
    let path = vertex_claude("streamRawPredict");
    let (status, head, body, complete) =
        request_with_head(addr, &path, &[("x-mock-completion-tokens", "3")], &stream_body).await;
    assert_eq!((status, complete), (200, true));
    assert!(head.contains("content-type: text/event-stream"));
    let events = named_events(&body);
    assert_eq!(events[0].0, "message_start");
    assert_eq!(events[0].1["message"]["model"], "claude-sonnet-4@20250514");
    assert_eq!(events.iter().filter(|(name, _)| name == "content_block_delta").count(), 3);
    assert_eq!(events.last().unwrap().0, "message_stop");
    // The version encoded, as some clients send it.
    let encoded = format!("{VERTEX}/anthropic/models/claude-sonnet-4%4020250514:rawPredict");
    assert_eq!(ok_json(addr, &encoded, &[], CLAUDE_BODY).await["model"], "claude-sonnet-4@20250514");
    // count-tokens names its model in the body.
    let count = format!("{VERTEX}/anthropic/models/count-tokens:rawPredict");
    let count_body = r#"{"model":"claude-sonnet-4@20250514","messages":[{"role":"user","content":"hi"}]}"#;
    let v = ok_json(addr, &count, &[], count_body).await;
    assert_eq!(v, json!({"input_tokens": count_body.len().div_ceil(4)}));
    let stats = stats(addr).await;
    assert_eq!(stats["served"], 4);
    let seen = &stats["requests"];
    assert_eq!(
        (seen[0]["model"].as_str(), seen[0]["stream"].as_bool()),
        (Some("claude-sonnet-4@20250514"), Some(false))
    );
    assert_eq!(seen[0]["body_json"]["anthropic_version"], "vertex-2023-10-16");
    assert_eq!(
        (seen[1]["model"].as_str(), seen[1]["stream"].as_bool()),
        (Some("claude-sonnet-4@20250514"), Some(true))
    );
    assert_eq!(seen[3]["model"], "claude-sonnet-4@20250514");
    assert_eq!(stats["by_path"][path], 1);
}

#[tokio::test]
async fn vertex_claude_refuses_a_body_without_vertexs_version_or_with_a_model() {
    let addr = start(Config::default()).await;
    let cases = [
        (r#"{"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#, "anthropic_version: Field required"),
        (
            r#"{"anthropic_version":"2023-06-01","messages":[]}"#,
            "anthropic_version: Input should be 'vertex-2023-10-16'",
        ),
        (
            r#"{"anthropic_version":"vertex-2023-10-16","model":"claude-sonnet-4","messages":[]}"#,
            "model: Extra inputs are not permitted",
        ),
    ];
    for path in [vertex_claude("rawPredict"), vertex_claude("streamRawPredict")] {
        for (body, message) in cases {
            let (status, raw, _) = request(addr, &path, &[], body).await;
            let v = parse(&raw);
            assert_eq!(
                (status, v["type"].as_str(), v["error"]["type"].as_str()),
                (400, Some("error"), Some("invalid_request_error")),
                "{body}"
            );
            assert!(v["error"]["message"].as_str().unwrap().starts_with(message), "{body}: {v}");
        }
    }
    // Not JSON: Anthropic's own answer; count-tokens without a model: Anthropic's.
    let (status, raw, _) = request(addr, &vertex_claude("rawPredict"), &[], "{nope").await;
    assert_eq!((status, parse(&raw)["type"].as_str()), (400, Some("error")));
    let count = format!("{VERTEX}/anthropic/models/count-tokens:rawPredict");
    let (status, raw, _) = request(addr, &count, &[], r#"{"messages":[]}"#).await;
    assert_eq!((status, parse(&raw)["error"]["message"].as_str()), (400, Some("you must provide a model parameter")));
    assert_eq!(stats(addr).await["served"], 0);
}

#[tokio::test]
async fn the_token_endpoint_issues_tokens_vertex_then_accepts() {
    let addr = start(google_auth(3599)).await;
    let unauthenticated = json!({"error": {"code": 401, "message": UNAUTHENTICATED, "status": "UNAUTHENTICATED"}});
    let paths = [
        vertex_gemini("generateContent"),
        vertex_gemini("countTokens"),
        vertex_claude("rawPredict"),
        vertex_claude("streamRawPredict"),
        format!("{VERTEX}/anthropic/models/count-tokens:rawPredict"),
    ];
    for path in &paths {
        for headers in [vec![], vec![("authorization", "Bearer ya29.made-up")], vec![("x-goog-api-key", "k")]] {
            let (status, raw, _) = request(addr, path, &headers, GEMINI_BODY).await;
            assert_eq!((status, parse(&raw)), (401, unauthenticated.clone()), "{path} {headers:?}");
        }
    }
    assert_eq!(stats(addr).await["requests"][0]["model"], "gemini-2.5-flash", "refusals are recorded");
    let token = issue_token(addr, 3599).await;
    // Colons left unencoded decode the same.
    let raw_colons = jwt_grant(&rs256(), &[]).replace("%3A", ":");
    assert_eq!(ok_json(addr, "/token", &[], &raw_colons).await["token_type"], "Bearer");
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    ok_json(addr, &paths[0], &auth, GEMINI_BODY).await;
    ok_json(addr, &paths[2], &auth, CLAUDE_BODY).await;
    let count_body = r#"{"model":"claude-sonnet-4@20250514","messages":[]}"#;
    ok_json(addr, &paths[4], &auth, count_body).await;
    // Other providers' paths are not Google's to guard.
    ok_json(addr, "/v1/chat/completions", &[], r#"{"model":"gpt-4o","messages":[]}"#).await;
    // A refresh token (gcloud's user credentials) works as well.
    let refresh = "grant_type=refresh_token&client_id=764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com&client_secret=d-FL95Q19q7MQmFpd7hHD0Ty&refresh_token=1%2F%2F0abc";
    let v = ok_json(addr, "/token", &[], refresh).await;
    let second = v["access_token"].as_str().unwrap();
    assert_ne!(second, token);
    ok_json(addr, &paths[0], &[("authorization", &format!("Bearer {second}"))], GEMINI_BODY).await;
    let stats_now = stats(addr).await;
    assert_eq!((stats_now["google_tokens_issued"].as_u64(), stats_now["served"].as_u64()), (Some(3), Some(5)));
    assert!(stats_now["by_path"].get("/token").is_none(), "token fetches are not served requests");
    // A reset forgets the count, not the tokens.
    request(addr, "/mock/reset", &[], "").await;
    assert_eq!(stats(addr).await["google_tokens_issued"], 0);
    ok_json(addr, &paths[0], &auth, GEMINI_BODY).await;
}

#[tokio::test]
async fn the_token_endpoint_refuses_bad_grants_in_oauths_words() {
    let addr = start(google_auth(3599)).await;
    let now = unix_now();
    let grant = |claims: &[(&str, Value)]| jwt_grant(&rs256(), claims);
    let cases = [
        (
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b".to_owned(),
            "invalid_grant",
            "not three",
        ),
        (jwt_grant(&json!({"alg": "HS256", "typ": "JWT"}), &[]), "invalid_grant", "alg must be RS256"),
        (grant(&[("iat", json!(now - 7200)), ("exp", json!(now - 3600))]), "invalid_grant", "is past"),
        (grant(&[("scope", json!("https://www.googleapis.com/auth/devstorage.read_only"))]), "invalid_grant", "scope"),
        (grant(&[("exp", json!(now + 7200))]), "invalid_grant", "over 3600"),
        (grant(&[("aud", json!("https://www.googleapis.com/oauth2/v4/"))]), "invalid_grant", "aud"),
        ("grant_type=refresh_token&client_id=c&client_secret=s".to_owned(), "invalid_grant", "refresh_token"),
        (
            "grant_type=password&username=u&password=p".to_owned(),
            "unsupported_grant_type",
            "Invalid grant_type: password",
        ),
        // A grant type with a broken escape is no grant type.
        (grant(&[]).replace("jwt-bearer", "jwt-bearer%zz"), "unsupported_grant_type", "Invalid grant_type: "),
    ];
    for (body, error, description) in cases {
        let (status, raw, _) = request(addr, "/token", &[], &body).await;
        let v = parse(&raw);
        assert_eq!((status, v["error"].as_str()), (400, Some(error)), "{body}: {v}");
        assert!(v["error_description"].as_str().unwrap().contains(description), "{body}: {v}");
    }
    assert_eq!(stats(addr).await["google_tokens_issued"], 0);
}

#[tokio::test]
async fn the_metadata_server_wants_its_header_and_issues_tokens_vertex_accepts() {
    let addr = start(google_auth(600)).await;
    let path = "/computeMetadata/v1/instance/service-accounts/default/token";
    for headers in [vec![], vec![("metadata-flavor", "google-ish")]] {
        let (status, head, body) = get(addr, path, &headers).await;
        assert_eq!(status, 403, "{headers:?}");
        assert!(head.contains("content-type: text/plain"), "{head}");
        assert!(String::from_utf8(body).unwrap().contains("Metadata-Flavor"));
    }
    let (status, head, body) =
        get(addr, &format!("{path}?scopes={CLOUD_PLATFORM}"), &[("Metadata-Flavor", "Google")]).await;
    assert_eq!(status, 200);
    assert!(head.contains("metadata-flavor: google") && head.contains("content-type: application/json"), "{head}");
    let v = parse(&body);
    assert_eq!((v["token_type"].as_str(), v["expires_in"].as_u64()), (Some("Bearer"), Some(600)));
    let bearer = format!("Bearer {}", v["access_token"].as_str().unwrap());
    ok_json(addr, &vertex_claude("rawPredict"), &[("authorization", &bearer)], CLAUDE_BODY).await;
    assert_eq!(stats(addr).await["google_tokens_issued"], 1);
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let addr = start(google_auth(0)).await;
    let token = issue_token(addr, 0).await;
    let (status, raw, _) =
        request(addr, &vertex_gemini("generateContent"), &[("authorization", &format!("Bearer {token}"))], GEMINI_BODY)
            .await;
    assert_eq!((status, parse(&raw)["error"]["status"].as_str()), (401, Some("UNAUTHENTICATED")));
    // One of another mock (or a restarted one) is not this one's.
    let other = start(google_auth(3599)).await;
    let foreign = issue_token(other, 3599).await;
    let (status, _, _) = request(
        addr,
        &vertex_gemini("generateContent"),
        &[("authorization", &format!("Bearer {foreign}"))],
        GEMINI_BODY,
    )
    .await;
    assert_eq!(status, 401);
}
