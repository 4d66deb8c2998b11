//! Property tests of whole request flows against the mock Envoy: hostile request headers
//! (names, values, lengths, counts), bodies, upstream responses and SSE chunks, control-plane
//! answers and shared-data records. The filter never panics, holds or answers every request,
//! refuses only with an OpenAI-shaped JSON error, and meters an admitted request exactly once.
//!
//! Case counts are bounded for CI; `PROPTEST_CASES=N` (or `cargo xtask fuzz`) runs more.

use std::rc::Rc;

use crate::host::Action;
use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;
use serde_json::{Value, json};
use sluice_core::config::{GatewayConfig, KeyConfig, TeamConfig, key_counter_name, team_counter_name};
use sluice_core::keys::KeyHash;
use sluice_core::time::BudgetDuration;
use sluice_proto::gateway::v1::{KeyLookupResponse, ScopeCounts};

use crate::flow::RequestFlow;
use crate::host::Host;
use crate::key_cache::shared_slots;
use crate::mock_host::{LocalReply, MockHost};
use crate::tests::lookup_support::{stored, xds_config};
use crate::tests::{Harness, base_config, embeddings_config, key, key_config};

/// `cases` unless `PROPTEST_CASES` is set; no failure files (a failure prints its shrunk
/// input, which becomes a plain test in tests.rs).
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig { failure_persistence: None, ..ProptestConfig::default() };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

// ---- inputs ------------------------------------------------------------------------------------

const ODD_CHARS: &[char] =
    &['a', ' ', '"', '\\', '\n', '\r', '\t', '\u{0}', '\u{7f}', 'é', '\u{a0}', '\u{202e}', '\u{feff}', '🌍', '{', '}'];

fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(ODD_CHARS), 0..12).prop_map(|v| v.into_iter().collect()),
        any::<String>(),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Credentials: configured keys (plain, limited, blocked, …), the master key, well-formed
/// unknown keys, broken ones, and garbage of any length.
fn credential() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => (1u8..=6).prop_map(|seed| key(seed).into_bytes()),
        1 => (7u8..=8).prop_map(|seed| key(seed).into_bytes()),
        1 => Just(b"sk-master-1234".to_vec()),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, b)| {
            let mut k = key(1).into_bytes();
            let i = at.index(k.len());
            k[i] = b;
            k
        }),
        1 => bytes(64),
        1 => (512usize..70_000).prop_map(|n| vec![b'k'; n]),
    ]
}

/// A header: the names the filter reads (any case) or any other, with any value.
fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    let name = prop_oneof![
        2 => prop::sample::select(
            &[
                "authorization", "Authorization", "x-api-key", "api-key", "content-length", "x-request-id",
                "anthropic-version", "content-type", ":path", ":method", "x-sluice-cluster",
            ][..]
        )
        .prop_map(str::to_owned),
        1 => "[a-z0-9-]{1,40}",
        1 => odd_string(),
    ];
    let value = prop_oneof![
        3 => credential().prop_map(|k| [b"Bearer ".as_slice(), &k].concat()),
        2 => credential(),
        1 => prop::sample::select(&["0", "12", " 64 ", "-1", "99999999999999999999", "4096", "4097", "1e3"][..])
            .prop_map(|v| v.as_bytes().to_vec()),
        2 => bytes(300),
        1 => (4096usize..70_000).prop_map(|n| vec![b'v'; n]),
    ];
    (name, value)
}

/// `:method` and `:path`: mostly a route with its method, sometimes anything.
fn route() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    prop_oneof![
        3 => prop::sample::select(
            &[
                ("POST", "/v1/chat/completions"), ("POST", "/chat/completions/"), ("POST", "/v1/completions"),
                ("POST", "/v1/embeddings"), ("POST", "/v1/messages?beta=true"), ("GET", "/v1/models"),
            ][..]
        )
        .prop_map(|(m, p)| (m.as_bytes().to_vec(), p.as_bytes().to_vec())),
        1 => (method(), path()),
    ]
}

/// The client's credential, in one of the three spellings (or none).
fn auth_header() -> impl Strategy<Value = Option<(String, Vec<u8>)>> {
    prop::option::weighted(
        0.9,
        (
            prop::sample::select(&["authorization", "authorization", "x-api-key", "api-key"][..]),
            credential(),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(name, k, bearer)| {
                let value = if name == "authorization" || bearer { [b"Bearer ".as_slice(), &k].concat() } else { k };
                (name.to_owned(), value)
            }),
    )
}

fn path() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(
            &[
                "/v1/chat/completions", "/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
                "/v1/models", "/models/", "/v1/chat/completions?x=1", "/v1/images/generations", "", "/",
            ][..]
        )
        .prop_map(|p| p.as_bytes().to_vec()),
        1 => bytes(64),
    ]
}

fn method() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(&["POST", "GET", "PUT", "post", ""][..]).prop_map(|m| m.as_bytes().to_vec()),
        1 => bytes(16),
    ]
}

/// A chat body the gateway may accept: known and unknown models, odd text, any limits.
/// Stands for "the model this route serves", filled in once the route is known.
const ROUTE_MODEL: &str = "\u{0}route-model";

fn chat_body() -> impl Strategy<Value = Vec<u8>> {
    let model = prop_oneof![
        4 => Just(ROUTE_MODEL.to_owned()),
        2 => prop::sample::select(&["gpt-4o", "claude-3-5-sonnet", "gpt-4o-mini"][..]).prop_map(str::to_owned),
        1 => odd_string(),
    ];
    let stream_options = prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        any::<bool>().prop_map(|b| Some(json!({"include_usage": b, "other": [1, 1e300]}))),
    ];
    (model, prop::option::of(any::<bool>()), stream_options, prop::option::of(any::<u64>()), odd_string()).prop_map(
        |(model, stream, opts, max_tokens, text)| {
            let mut body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
            if let Some(s) = stream {
                body["stream"] = json!(s);
            }
            if let Some(o) = opts {
                body["stream_options"] = o;
            }
            if let Some(n) = max_tokens {
                body["max_tokens"] = json!(n);
            }
            serde_json::to_vec(&body).unwrap()
        },
    )
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        5 => chat_body(),
        2 => bytes(200),
        1 => Just(Vec::new()),
        1 => (4000usize..5000).prop_map(|n| format!(r#"{{"model":"gpt-4o","pad":"{}"}}"#, "x".repeat(n)).into_bytes()),
    ]
}

/// A request as Envoy delivers it: headers (`:method` and `:path` among any others, in any
/// order), then the body in pieces.
#[derive(Debug, Clone)]
struct Request {
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    cuts: Vec<Index>,
    headers_end_stream: bool,
    random: u64,
}

fn request() -> impl Strategy<Value = Request> {
    (
        route(),
        auth_header(),
        prop::collection::vec(header(), 0..12),
        prop::collection::vec(header(), 0..40),
        any::<Index>(),
        body(),
        prop::collection::vec(any::<Index>(), 0..3),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|((method, path), auth, mut headers, many, at, body, cuts, eos, random)| {
            // Now and then many headers at once.
            if random % 4 == 0 {
                headers.extend(many);
            }
            // The credential usually comes before any look-alike header; the pseudo-headers
            // come first, as Envoy gives them (a duplicate later is ignored).
            if let Some(auth) = auth {
                let at = if random % 8 == 0 { at.index(headers.len() + 1) } else { 0 };
                headers.insert(at, auth);
            }
            let model = if path.windows(8).any(|w| w == b"messages") { "claude-3-5-sonnet" } else { "gpt-4o" };
            let body = replace(&body, &serde_json::to_vec(ROUTE_MODEL).unwrap(), &serde_json::to_vec(model).unwrap());
            headers.insert(0, (":path".into(), path));
            headers.insert(0, (":method".into(), method));
            Request { headers, headers_end_stream: eos && body.is_empty(), body, cuts, random }
        })
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    match bytes.windows(from.len()).position(|w| w == from) {
        Some(at) => [&bytes[..at], to, &bytes[at + from.len()..]].concat(),
        None => bytes.to_vec(),
    }
}

fn pieces<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    for cut in at {
        out.push(&bytes[from..cut]);
        from = cut;
    }
    out.push(&bytes[from..]);
    out
}

/// What the upstream sends back.
#[derive(Debug, Clone)]
struct Response {
    status: Vec<u8>,
    content_type: Vec<u8>,
    body: Vec<u8>,
    cuts: Vec<Index>,
    complete: bool,
    code_details: Option<String>,
}

fn sse_event() -> impl Strategy<Value = String> {
    let count = || prop_oneof![0u64..10_000, any::<u64>()];
    prop_oneof![
        odd_string().prop_map(|t| json!({"choices":[{"index":0,"delta":{"content":t}}],"usage":null}).to_string()),
        (count(), count(), count()).prop_map(|(p, c, k)| {
            json!({"choices":[],"usage":{"prompt_tokens":p,"completion_tokens":c,"prompt_tokens_details":{"cached_tokens":k}}})
                .to_string()
        }),
        Just("[DONE]".to_owned()),
        (count(), count()).prop_map(|(i, r)| {
            json!({"type":"message_start","message":{"usage":{"input_tokens":i,"cache_read_input_tokens":r}}})
                .to_string()
        }),
        odd_string().prop_map(|t| json!({"type":"content_block_delta","delta":{"text":t}}).to_string()),
        count().prop_map(|o| json!({"type":"message_delta","usage":{"output_tokens":o}}).to_string()),
        Just(r#"{"type":"message_stop"}"#.to_owned()),
        Just("{not json".to_owned()),
    ]
}

fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((sse_event(), prop::sample::select(&["\n", "\r\n", "\r"][..])), 0..8)
        .prop_map(|evs| evs.iter().flat_map(|(data, eol)| format!("data: {data}{eol}{eol}").into_bytes()).collect())
}

fn response() -> impl Strategy<Value = Response> {
    let status = prop_oneof![
        4 => prop::sample::select(&["200", "201", "400", "429", "500", "503", "0", "999", ""][..])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => bytes(8),
    ];
    let content_type = prop_oneof![
        prop::sample::select(
            &["application/json", "text/event-stream", "Text/Event-Stream; charset=utf-8", "text/plain", ""][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        bytes(40),
    ];
    let usage = prop_oneof![0u64..10_000, any::<u64>()];
    let body = prop_oneof![
        3 => sse_stream(),
        2 => (usage.clone(), usage).prop_map(|(p, c)| {
            json!({"choices":[],"usage":{"prompt_tokens":p,"completion_tokens":c,"input_tokens":p,"output_tokens":c}})
                .to_string()
                .into_bytes()
        }),
        2 => bytes(300),
    ];
    let details = prop::option::of(prop_oneof![
        Just("upstream_reset_after_response_started{remote_reset}".to_owned()),
        Just("via_upstream".to_owned()),
        odd_string(),
    ]);
    (status, content_type, body, prop::collection::vec(any::<Index>(), 0..6), any::<bool>(), details).prop_map(
        |(status, content_type, body, cuts, complete, code_details)| Response {
            status,
            content_type,
            body,
            cuts,
            complete,
            code_details,
        },
    )
}

// ---- checks ------------------------------------------------------------------------------------

/// A local reply is JSON: an error in the client's shape (Anthropic's on `/v1/messages`,
/// OpenAI's elsewhere) with a matching status, or the model list.
fn check_reply(reply: &LocalReply, path: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(reply.header("content-type"), Some("application/json"));
    let v: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| TestCaseError::fail(format!("reply body is not JSON ({e}): {:?}", reply.body)))?;
    if reply.status == 200 {
        prop_assert_eq!(&v["object"], "list");
        prop_assert!(v["data"].is_array());
        return Ok(());
    }
    prop_assert!([400, 401, 403, 404, 405, 413, 429, 503].contains(&reply.status), "status {}", reply.status);
    let error = &v["error"];
    if path.starts_with("/v1/messages") {
        prop_assert_eq!(&v["type"], "error");
        prop_assert!(error["message"].is_string() && error["type"].is_string(), "{}", v);
    } else {
        prop_assert!(error["message"].is_string() && error["type"].is_string() && error["code"].is_string(), "{}", v);
    }
    if reply.status == 429 {
        prop_assert!(reply.header("retry-after").is_some());
    }
    Ok(())
}

/// An admitted request leaves for a configured deployment with its model and credential.
fn check_routed(h: &Harness, host: &MockHost, sent_body: &[u8], client_body: &[u8]) -> Result<(), TestCaseError> {
    let cluster = host.request_header_str("x-sluice-cluster").unwrap_or_default();
    let config = &h.gateway.config.config;
    let deployment = config.deployments.iter().find(|d| d.cluster == cluster);
    let Some(d) = deployment else {
        return Err(TestCaseError::fail(format!("routed to unknown cluster {cluster:?}")));
    };
    let sent: Value = serde_json::from_slice(sent_body)
        .map_err(|e| TestCaseError::fail(format!("upstream body is not JSON ({e})")))?;
    prop_assert_eq!(sent["model"].as_str(), Some(d.upstream_model.as_str()));
    if sent_body != client_body {
        prop_assert_eq!(host.request_header_str("content-length"), Some(sent_body.len().to_string()));
    }
    let secret = format!("provider-secret-{}", d.id);
    match d.provider {
        sluice_core::config::Provider::Openai => {
            prop_assert_eq!(host.request_header_str("authorization"), Some(format!("Bearer {secret}")));
            prop_assert_eq!(host.request_header_str("x-api-key"), None);
        }
        sluice_core::config::Provider::Anthropic => {
            prop_assert_eq!(host.request_header_str("x-api-key"), Some(secret));
            prop_assert_eq!(host.request_header_str("authorization"), None);
        }
        sluice_core::config::Provider::Azure => {
            prop_assert_eq!(host.request_header_str("api-key"), Some(secret));
            prop_assert_eq!(host.request_header_str("authorization"), None);
        }
        sluice_core::config::Provider::Gemini => {
            prop_assert_eq!(host.request_header_str("x-goog-api-key"), Some(secret));
            prop_assert_eq!(host.request_header_str("authorization"), None);
        }
        // Signed by Envoy on the cluster, or a token Envoy sets from SDS (Vertex): the filter
        // sends no credential at all.
        sluice_core::config::Provider::Bedrock
        | sluice_core::config::Provider::VertexGemini
        | sluice_core::config::Provider::VertexAnthropic => {
            prop_assert_eq!(host.request_header_str("authorization"), None);
            prop_assert_eq!(host.request_header_str("x-api-key"), None);
        }
    }
    prop_assert_eq!(host.request_header_str("api-key").is_some(), d.provider == sluice_core::config::Provider::Azure);
    Ok(())
}

/// Usage records written since `before`: each one valid JSON with sane figures.
fn new_records(h: &Harness, before: usize) -> Result<Vec<Value>, TestCaseError> {
    let queue = h.envoy.queue.borrow();
    let mut out = Vec::new();
    for raw in queue.iter().skip(before) {
        let r: Value =
            serde_json::from_slice(raw).map_err(|e| TestCaseError::fail(format!("usage record not JSON ({e})")))?;
        prop_assert!(r["cost_usd"].as_f64().is_some_and(|c| c.is_finite() && c >= 0.0), "{}", r);
        prop_assert!(
            ["completed", "upstream_error", "truncated", "cancelled"].contains(&r["outcome"].as_str().unwrap_or("")),
            "{}",
            r
        );
        prop_assert!(r["prompt_tokens"].is_u64() && r["completion_tokens"].is_u64());
        prop_assert_eq!(r["record_id"].as_str().map(str::len), Some(32));
        out.push(r);
    }
    Ok(out)
}

/// Plays the response through the filter; returns what the client receives.
fn respond(host: &MockHost, flow: &mut RequestFlow<MockHost>, resp: &Response) -> Vec<u8> {
    {
        let mut h = host.stream.response_headers.borrow_mut();
        h.push((":status".into(), resp.status.clone()));
        h.push(("content-type".into(), resp.content_type.clone()));
        h.push(("content-length".into(), resp.body.len().to_string().into_bytes()));
    }
    assert_eq!(flow.on_response_headers(), Action::Continue);
    let mut delivered = Vec::new();
    let chunks = pieces(&resp.body, &resp.cuts);
    for (i, chunk) in chunks.iter().enumerate() {
        *host.stream.response_chunk.borrow_mut() = chunk.to_vec();
        let last = i + 1 == chunks.len();
        assert_eq!(flow.on_response_body(chunk.len(), resp.complete && last), Action::Continue);
        delivered.extend_from_slice(&host.stream.response_chunk.borrow());
    }
    *host.stream.code_details.borrow_mut() = resp.code_details.clone();
    delivered
}

/// Plays one request (and, if it is admitted, the response) through a fresh flow and checks
/// every step. Returns whether it was admitted.
fn play(h: &Harness, req: &Request, resp: &Response) -> Result<bool, TestCaseError> {
    let host = MockHost::new(Rc::clone(&h.envoy));
    host.stream.request_headers.borrow_mut().extend(req.headers.iter().cloned());
    let mut flow = RequestFlow::new(host.clone(), Rc::clone(&h.gateway), req.random);
    let records_before = h.envoy.queue.borrow().len();
    let calls_before = h.envoy.grpc_calls.borrow().len();
    let reply = || host.stream.local_reply.borrow().clone();

    // The headers are always held: for the body, a lookup, or a local reply.
    prop_assert_eq!(flow.on_request_headers(req.headers_end_stream), Action::Pause);
    if reply().is_none() && h.envoy.grpc_calls.borrow().len() > calls_before {
        // A key lookup (xDS mode): this time the control plane is unreachable.
        prop_assert!(h.gateway.config.config.key_lookup.is_some());
        let token = h.envoy.grpc_calls.borrow().last().map_or(0, |c| c.token);
        flow.on_grpc_response(token, 14, 0);
    }
    let mut admitted = false;
    if reply().is_none() {
        let mut buffered = Vec::new();
        let parts = pieces(&req.body, &req.cuts);
        for (i, part) in parts.iter().enumerate() {
            buffered.extend_from_slice(part);
            *host.stream.request_body.borrow_mut() = buffered.clone();
            let last = i + 1 == parts.len();
            let action = flow.on_request_body(buffered.len(), last);
            if reply().is_some() {
                prop_assert_eq!(action, Action::Pause);
                break;
            }
            prop_assert_eq!(action == Action::Continue, last, "Continue exactly on the last piece");
            admitted = last;
        }
    }
    if let Some(r) = reply() {
        check_reply(&r, &host.request_header_str(":path").unwrap_or_default())?;
        prop_assert!(!admitted);
    } else {
        prop_assert!(admitted, "neither answered nor let through");
        let sent = host.stream.request_body.borrow().clone();
        check_routed(h, &host, &sent, &req.body)?;
        let delivered = respond(&host, &mut flow, resp);
        let content_type = String::from_utf8_lossy(&resp.content_type).to_ascii_lowercase();
        let path = host.request_header_str(":path").unwrap_or_default();
        // A request a deployment of the other format took is translated both ways: its answer
        // is always JSON or SSE in the client's shape (the translators' own properties are
        // core's), never the provider's bytes.
        let client_path = req
            .headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let to_messages = |p: &str| p.split('?').next().unwrap_or(p).trim_end_matches('/').ends_with("/messages");
        if to_messages(&path) != to_messages(&client_path) {
            let sse_event = delivered.starts_with(b"data: ") || delivered.starts_with(b"event: ");
            prop_assert!(
                delivered.is_empty() || delivered.starts_with(b"{") || sse_event,
                "{:?}",
                String::from_utf8_lossy(&delivered)
            );
        } else if !content_type.contains("text/event-stream") {
            prop_assert_eq!(&delivered, &resp.body, "a non-SSE body passes untouched");
        }
    }
    flow.on_log();
    flow.on_log(); // Envoy calls it once; a second call must change nothing
    let records = new_records(h, records_before)?;
    prop_assert_eq!(records.len(), usize::from(admitted), "one record per admitted request");
    Ok(admitted)
}

/// An embeddings request for a group of `embeddings_config` (Gemini, Titan, Cohere), with
/// inputs, encodings and dimensions of every kind, some refused.
fn embeddings_body() -> impl Strategy<Value = Vec<u8>> {
    let input = prop_oneof![
        odd_string().prop_map(Value::from),
        prop::collection::vec(odd_string(), 0..4).prop_map(Value::from),
        Just(json!([1, 2, 3])),
        Just(Value::Null),
    ];
    let encoding = prop::sample::select(&[None, Some("float"), Some("base64"), Some("int8")][..]);
    let model = prop::sample::select(&["g-emb", "titan", "cohere"][..]);
    (model, input, encoding, prop::option::of(0u64..5000)).prop_map(|(model, input, encoding, dimensions)| {
        let mut body = json!({"model": model, "input": input});
        if let Some(e) = encoding {
            body["encoding_format"] = json!(e);
        }
        if let Some(d) = dimensions {
            body["dimensions"] = json!(d);
        }
        serde_json::to_vec(&body).unwrap()
    })
}

/// What a Gemini or Bedrock embeddings call may get back: its shapes with any vector and
/// count, anything else, any status and content type, whole or cut.
fn embeddings_answer() -> impl Strategy<Value = Response> {
    let vector = prop_oneof![
        prop::collection::vec(any::<f64>(), 0..4).prop_map(Value::from),
        Just(json!([0.5, "x"])),
        Just(json!("AAAA")),
    ];
    let body = prop_oneof![
        (vector.clone(), 1u64..1000, 0usize..3).prop_map(|(v, n, shape)| match shape {
            0 => json!({"embeddings": [{"values": v}]}),
            1 => json!({"embedding": v, "inputTextTokenCount": n}),
            _ => json!({"embeddings": [v], "texts": ["a"]}),
        }
        .to_string()
        .into_bytes()),
        bytes(200),
    ];
    let status = prop::sample::select(&["200", "400", "429", "500"][..]).prop_map(|s| s.as_bytes().to_vec());
    let content_type =
        prop::sample::select(&["application/json", "text/event-stream", "application/vnd.amazon.eventstream", ""][..])
            .prop_map(|s| s.as_bytes().to_vec());
    (status, content_type, body, prop::collection::vec(any::<Index>(), 0..4), any::<bool>()).prop_map(
        |(status, content_type, body, cuts, complete)| Response {
            status,
            content_type,
            body,
            cuts,
            complete,
            code_details: None,
        },
    )
}

/// Standalone config with keys that hit every check: limits, budgets, windows, a team,
/// per-model limits, routes, blocked and expired keys.
fn limited_config(rpm: u64, tpm: u64, budget: f64) -> GatewayConfig {
    let mut cfg = base_config();
    cfg.teams.push(TeamConfig {
        team_id: "t".into(),
        rpm_limit: Some(rpm),
        max_budget: Some(budget),
        budget_duration: BudgetDuration::parse("1d"),
        ..TeamConfig::default()
    });
    cfg.keys.push(KeyConfig { rpm_limit: Some(rpm), tpm_limit: Some(tpm), ..key_config(2) });
    cfg.keys.push(KeyConfig {
        max_budget: Some(budget),
        budget_duration: Some(BudgetDuration::CalendarMonth),
        team_id: Some("t".into()),
        ..key_config(3)
    });
    cfg.keys.push(KeyConfig {
        allowed_routes: vec!["/v1/messages".into()],
        model_rpm_limit: [("gpt-4o".to_owned(), rpm)].into(),
        model_tpm_limit: [("claude-3-5-sonnet".to_owned(), tpm)].into(),
        ..key_config(4)
    });
    cfg.keys.push(KeyConfig { blocked: true, ..key_config(5) });
    cfg.keys.push(KeyConfig {
        expires: sluice_core::time::Timestamp::parse("2020-01-01T00:00:00Z"),
        models: vec!["gpt-4o*".into()],
        ..key_config(6)
    });
    cfg
}

fn limits() -> impl Strategy<Value = (u64, u64, f64)> {
    (
        prop_oneof![0u64..4, Just(u64::MAX)],
        prop_oneof![0u64..50_000, Just(u64::MAX)],
        prop_oneof![0.0..0.05, Just(1e300)],
    )
}

proptest! {
    #![proptest_config(config(256))]

    /// Any request and any upstream response through a standalone gateway: no panic, a held
    /// or answered request, JSON refusals, a correctly routed admission, one record.
    #[test]
    fn any_request_and_response(limits in limits(), reqs in prop::collection::vec((request(), response()), 1..4)) {
        let h = Harness::new(limited_config(limits.0, limits.1, limits.2));
        for (req, resp) in &reqs {
            play(&h, req, resp)?;
        }
    }

    /// Corrupt counter records in shared data (another writer, a different layout): read as
    /// fresh or as what they say, never a panic.
    #[test]
    fn corrupt_counters_are_survived(
        limits in limits(),
        garbage in prop::collection::vec((0usize..4, bytes(100)), 0..4),
        reqs in prop::collection::vec((request(), response()), 1..3),
    ) {
        let h = Harness::new(limited_config(limits.0, limits.1, limits.2));
        let host = MockHost::new(Rc::clone(&h.envoy));
        let hash_prefix = |seed: u8| {
            let mut hex = KeyHash::of(key(seed).as_bytes()).to_hex();
            hex.truncate(16);
            hex
        };
        let names = [key_counter_name(&hash_prefix(2)), key_counter_name(&hash_prefix(3)), team_counter_name("t"), "x".into()];
        for (i, bytes) in &garbage {
            host.shared_set(&names[*i], bytes, None);
        }
        for (req, resp) in &reqs {
            play(&h, req, resp)?;
        }
    }

    /// A streamed response in any chunks gives the client the same bytes, and the record the
    /// same figures, as the response in one chunk.
    #[test]
    fn a_stream_in_any_chunks_is_metered_the_same(
        stream in any::<bool>(),
        anthropic in any::<bool>(),
        body in sse_stream(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        complete in any::<bool>(),
        random in any::<u64>(),
    ) {
        let (path, model) = if anthropic { ("/v1/messages", "claude-3-5-sonnet") } else { ("/v1/chat/completions", "gpt-4o") };
        let request_body = serde_json::to_vec(&json!({"model": model, "stream": stream, "messages": []})).unwrap();
        let req = Request {
            headers: vec![
                (":method".into(), b"POST".to_vec()),
                (":path".into(), path.as_bytes().to_vec()),
                ("authorization".into(), format!("Bearer {}", key(1)).into_bytes()),
            ],
            body: request_body,
            cuts: vec![],
            headers_end_stream: false,
            random,
        };
        let mut outcomes = Vec::new();
        for cuts in [vec![], cuts] {
            let h = Harness::new(base_config());
            let host = MockHost::new(Rc::clone(&h.envoy));
            host.stream.request_headers.borrow_mut().extend(req.headers.iter().cloned());
            let mut flow = RequestFlow::new(host.clone(), Rc::clone(&h.gateway), random);
            flow.on_request_headers(false);
            *host.stream.request_body.borrow_mut() = req.body.clone();
            prop_assert_eq!(flow.on_request_body(req.body.len(), true), Action::Continue);
            let resp = Response {
                status: b"200".to_vec(),
                content_type: b"text/event-stream".to_vec(),
                body: body.clone(),
                cuts,
                complete,
                code_details: None,
            };
            let delivered = respond(&host, &mut flow, &resp);
            flow.on_log();
            let records = new_records(&h, 0)?;
            prop_assert_eq!(records.len(), 1);
            outcomes.push((delivered, records[0].clone()));
        }
        prop_assert_eq!(&outcomes[0], &outcomes[1]);
    }
}

// ---- keys looked up in the control plane (xDS mode) ----------------------------------------------

/// What the control plane (or something posing as it) answers a lookup with.
#[derive(Debug, Clone)]
enum Answer {
    /// Any bytes, not necessarily protobuf.
    Bytes(Vec<u8>),
    /// A protobuf answer whose key and team JSON may be anything.
    Proto { key_json: String, team_json: String, window: u64, counts: Vec<(String, u64, u64)> },
}

fn answer_for(seed: u8) -> impl Strategy<Value = Answer> {
    let key_json = prop_oneof![
        // The right key (or another one), with fields of any value.
        (any::<bool>(), prop::option::of(0u64..5), prop::option::of(prop_oneof![0.0..1.0, Just(-1.0)]), any::<bool>())
            .prop_map(move |(right, rpm, budget, blocked)| {
                let k = KeyConfig {
                    rpm_limit: rpm,
                    max_budget: budget,
                    blocked,
                    team_id: Some("ml".into()),
                    fleet_spend: budget.map(|b| b * 2.0),
                    ..stored(if right { seed } else { seed.wrapping_add(1) })
                };
                serde_json::to_string(&k).unwrap()
            }),
        odd_string(),
        Just(String::new()),
        Just(format!(
            r#"{{"key_hash":"sha256:{}","key_id":"k\u0000","budget_duration":"613566757w","expires":"2999-01-01T00:00:00+23:59"}}"#,
            KeyHash::of(key(seed).as_bytes()).to_hex()
        )),
    ];
    let team_json = prop_oneof![
        Just(r#"{"team_id":"ml","rpm_limit":2,"max_budget":0.5,"budget_duration":"1mo"}"#.to_owned()),
        Just(String::new()),
        odd_string(),
    ];
    let counts = prop::collection::vec(
        (
            prop_oneof![Just("sluice:k:key_07".to_owned()), Just("sluice:t:ml".to_owned()), odd_string()],
            any::<u64>(),
            any::<u64>(),
        ),
        0..3,
    );
    prop_oneof![
        1 => bytes(200).prop_map(Answer::Bytes),
        4 => (key_json, team_json, any::<u64>(), counts)
            .prop_map(|(key_json, team_json, window, counts)| Answer::Proto { key_json, team_json, window, counts }),
    ]
}

impl Answer {
    fn encode(&self) -> Vec<u8> {
        match self {
            Answer::Bytes(b) => b.clone(),
            Answer::Proto { key_json, team_json, window, counts } => KeyLookupResponse {
                key_json: key_json.clone(),
                team_json: team_json.clone(),
                fleet_window: *window,
                fleet_counts: counts
                    .iter()
                    .map(|(scope, requests, tokens)| ScopeCounts {
                        scope: scope.clone(),
                        requests: *requests,
                        tokens: *tokens,
                    })
                    .collect(),
            }
            .encode_to_vec(),
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Any lookup answer, at any point of the request, with any gRPC status: no panic, a
    /// JSON refusal or a routed request; then another worker reads what the first one shared.
    #[test]
    fn any_lookup_answer(
        fail_open in any::<bool>(),
        seed in 7u8..9,
        status in prop_oneof![Just(0u32), Just(14), any::<u32>()],
        answer in answer_for(7),
        before_body in any::<bool>(),
        body in body(),
        shared_garbage in prop::option::of(bytes(80)),
        later in prop::collection::vec((request(), response()), 0..2),
    ) {
        let mut cfg = xds_config(fail_open);
        cfg.teams.clear();
        let h = Harness::new(cfg.clone());
        let host = MockHost::new(Rc::clone(&h.envoy));
        host.stream.request_headers.borrow_mut().extend([
            (":method".to_owned(), b"POST".to_vec()),
            (":path".to_owned(), b"/v1/chat/completions".to_vec()),
            ("authorization".to_owned(), format!("Bearer {}", key(seed)).into_bytes()),
        ]);
        let mut flow = RequestFlow::new(host.clone(), Rc::clone(&h.gateway), 1);
        let reply = || host.stream.local_reply.borrow().clone();
        prop_assert_eq!(flow.on_request_headers(false), Action::Pause);
        let deliver = |flow: &mut RequestFlow<MockHost>| {
            let token = h.envoy.grpc_calls.borrow().last().map(|c| c.token);
            if let Some(token) = token {
                let bytes = answer.encode();
                *host.stream.grpc_response.borrow_mut() = bytes.clone();
                flow.on_grpc_response(token, status, bytes.len());
                // A stray or repeated answer is ignored.
                flow.on_grpc_response(token, status, bytes.len());
                flow.on_grpc_response(token + 100, 0, 0);
            }
        };
        if before_body {
            deliver(&mut flow);
        }
        if reply().is_none() {
            *host.stream.request_body.borrow_mut() = body.clone();
            let action = flow.on_request_body(body.len(), true);
            if action == Action::Continue {
                prop_assert!(reply().is_none());
            }
        }
        if !before_body {
            deliver(&mut flow);
        }
        // Once both the body and the answer are in, the request is answered or on its way.
        match reply() {
            Some(r) => check_reply(&r, "/v1/chat/completions")?,
            None => {
                prop_assert!(host.request_header_str("x-sluice-cluster").is_some(), "neither answered nor routed");
                check_routed(&h, &host, &host.stream.request_body.borrow().clone(), &body)?;
                prop_assert_eq!(host.stream.resumed.get(), u32::from(!before_body), "resumed iff it was waiting");
            }
        }
        flow.on_log();
        new_records(&h, 0)?;

        // Another worker of the same Envoy, perhaps after the shared entry was overwritten.
        if let Some(garbage) = &shared_garbage {
            for slot in shared_slots(&KeyHash::of(key(seed).as_bytes())) {
                host.shared_set(&slot, garbage, None);
            }
        }
        let other = Harness::on(Rc::clone(&h.envoy), cfg);
        for (req, resp) in &later {
            let mut req = req.clone();
            req.headers.push(("authorization".into(), format!("Bearer {}", key(seed)).into_bytes()));
            play(&other, &req, resp)?;
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Embeddings through Gemini and Bedrock translations, with any request and any answer: no
    /// panic; the client gets OpenAI's JSON (its list or an error) or nothing of a cut answer,
    /// never the provider's bytes; an admitted request is metered once, and a completed one is
    /// never metered as nothing.
    #[test]
    fn embeddings_of_any_answer_are_translated_and_metered_once(body in embeddings_body(), resp in embeddings_answer()) {
        let h = Harness::new(embeddings_config());
        let host = MockHost::new(Rc::clone(&h.envoy));
        {
            let auth = format!("Bearer {}", key(1)).into_bytes();
            let mut headers = host.stream.request_headers.borrow_mut();
            headers.push((":method".into(), b"POST".to_vec()));
            headers.push((":path".into(), b"/v1/embeddings".to_vec()));
            headers.push(("authorization".into(), auth));
        }
        let mut flow = RequestFlow::new(host.clone(), Rc::clone(&h.gateway), 7);
        prop_assert_eq!(flow.on_request_headers(false), Action::Pause);
        *host.stream.request_body.borrow_mut() = body.clone();
        let action = flow.on_request_body(body.len(), true);
        let reply = host.stream.local_reply.borrow().clone();
        if let Some(r) = reply {
            check_reply(&r, "/v1/embeddings")?;
            prop_assert_eq!(action, Action::Pause);
            flow.on_log();
            prop_assert_eq!(new_records(&h, 0)?.len(), 0);
            return Ok(());
        }
        if action == Action::Pause {
            // Titan's texts, a call each: every call gets this answer (a whole body; a cut one
            // is no answer), until the client is answered.
            let status = std::str::from_utf8(&resp.status).ok().and_then(|s| s.parse().ok()).filter(|_| resp.complete);
            let mut delivered = 0;
            while host.stream.local_reply.borrow().is_none() {
                let calls = h.envoy.http_calls.borrow().clone();
                let Some(call) = calls.get(delivered) else { break };
                delivered += 1;
                *host.stream.http_response.borrow_mut() = (status, resp.body.clone());
                flow.on_http_response(call.token, resp.body.len());
                // A stray or repeated answer is ignored.
                flow.on_http_response(call.token, resp.body.len());
            }
            let reply = host.stream.local_reply.borrow().clone();
            prop_assert!(reply.is_some(), "the calls answered, the client was not");
            if let Some(r) = reply {
                // The list, or an error in OpenAI's shape with the provider's status.
                prop_assert_eq!(r.header("content-type"), Some("application/json"));
                let v: Value = serde_json::from_slice(&r.body).map_err(|e| TestCaseError::fail(e.to_string()))?;
                if r.status == 200 {
                    prop_assert!(v["object"] == "list" && v["data"].is_array(), "{}", v);
                } else {
                    prop_assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string(), "{}", v);
                }
            }
            flow.on_log();
            let records = new_records(&h, 0)?;
            prop_assert_eq!(records.len(), 1);
            if records[0]["outcome"] == "completed" {
                prop_assert!(records[0]["prompt_tokens"].as_u64().is_some_and(|n| n > 0), "{}", records[0]);
            }
            return Ok(());
        }
        prop_assert_eq!(action, Action::Continue);
        let delivered = respond(&host, &mut flow, &resp);
        prop_assert!(
            delivered.is_empty() || serde_json::from_slice::<Value>(&delivered).is_ok_and(|v| v.is_object()),
            "{:?}",
            String::from_utf8_lossy(&delivered)
        );
        flow.on_log();
        let records = new_records(&h, 0)?;
        prop_assert_eq!(records.len(), 1);
        if records[0]["outcome"] == "completed" {
            prop_assert!(records[0]["prompt_tokens"].as_u64().is_some_and(|n| n > 0), "{}", records[0]);
        }
    }
}
