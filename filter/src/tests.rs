//! Request flows end to end against the mock host: auth → body → response → usage.
//! (The harness is `pub(crate)`: the property tests in `proptests.rs` drive flows with it too.)

use std::rc::Rc;

use crate::host::{Action, Host};
use sluice_core::config::{
    CompiledConfig, DEFAULT_ROUTE_TIMEOUT_MS, Deployment, GatewayConfig, GroupAlias, KeyConfig, ModelMode, Provider,
    RoutingStrategy, SCHEMA_VERSION, TeamConfig,
};
use sluice_core::cost::Pricing;
use sluice_core::keys::{KeyHash, key_from_random};
use sluice_core::time::Timestamp;

use crate::flow::{Gateway, RequestFlow};
use crate::mock_host::{LocalReply, MockEnvoy, MockHost};
use crate::secrets::Secrets;

const NOW: u64 = 1_795_341_610_000;

pub(crate) fn key(seed: u8) -> String {
    let random: Vec<u8> = (0..64u16).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    key_from_random(&random).unwrap()
}

fn deployment(id: &str, group: &str, provider: Provider, upstream: &str) -> Deployment {
    Deployment {
        id: id.into(),
        model_name: group.into(),
        provider,
        upstream_model: upstream.into(),
        cluster: format!("sluice_{id}"),
        origin: format!("https://{id}.example"),
        base_path: if provider == Provider::Openai { "/v1".into() } else { String::new() },
        path_query: String::new(),
        priced_models: Default::default(),
        mode: None,
        api_key_env: None,
        weight: 1,
        rpm: None,
        tpm: None,
        pricing: Pricing {
            input_cost_per_token: 2.5e-6,
            output_cost_per_token: 1e-5,
            cache_read_input_token_cost: Some(1.25e-6),
            cache_creation_input_token_cost: None,
            long_context: None,
        },
        max_output_tokens: Some(1000),
        max_input_tokens: None,
        drop_params: false,
        price_unknown: false,
        timeout_ms: None,
        stream_timeout_ms: None,
        order: None,
        no_background_health_check: false,
    }
}

pub(crate) fn key_config(seed: u8) -> KeyConfig {
    KeyConfig {
        key_hash: Some(KeyHash::of(key(seed).as_bytes())),
        key_alias: Some(format!("key{seed}")),
        ..KeyConfig::default()
    }
}

pub(crate) fn base_config() -> GatewayConfig {
    GatewayConfig {
        schema_version: SCHEMA_VERSION,
        master_key_env: Some("SLUICE_MASTER_KEY".into()),
        max_request_body_bytes: 4096,
        max_response_scan_bytes: 1 << 20,
        routing_strategy: RoutingStrategy::SimpleShuffle,
        deployments: vec![
            deployment("gpt4o-a", "gpt-4o", Provider::Openai, "gpt-4o-2024-08-06"),
            deployment("claude", "claude-3-5-sonnet", Provider::Anthropic, "claude-3-5-sonnet-20241022"),
            deployment("mini", "gpt-4o-mini", Provider::Openai, "gpt-4o-mini"),
        ],
        keys: vec![key_config(1)],
        teams: vec![],
        customers: vec![],
        end_user_max_budget: None,
        proxy_budget: None,
        allowed_ips: Vec::new(),
        key_lookup: None,
        model_group_aliases: Vec::new(),
        retries: Default::default(),
        timeout_ms: None,
        route_timeout_ms: DEFAULT_ROUTE_TIMEOUT_MS,
        cooldown: Default::default(),
        health_check_interval_ms: None,
        fallbacks: Vec::new(),
        default_fallbacks: Vec::new(),
        context_window_fallbacks: Vec::new(),
        content_policy_fallbacks: Vec::new(),
        pre_call_checks: false,
        cache: None,
    }
}

pub(crate) struct Harness {
    pub(crate) envoy: Rc<MockEnvoy>,
    pub(crate) gateway: Rc<Gateway>,
}

impl Harness {
    /// What a worker's tick does: the counts the request path kept go to Envoy's counters.
    pub(crate) fn report_metrics(&self) {
        self.gateway.flush_metrics(&MockHost::new(Rc::clone(&self.envoy)));
    }

    pub(crate) fn new(config: GatewayConfig) -> Self {
        Self::on(MockEnvoy::new(NOW), config)
    }

    /// Another worker of the same Envoy (shared data and calls in common).
    pub(crate) fn on(envoy: Rc<MockEnvoy>, config: GatewayConfig) -> Self {
        let config = CompiledConfig::compile(config).unwrap();
        // What Envoy's environment would give: a credential per deployment, and the master key.
        let secrets = Secrets {
            credentials: config.config.deployments.iter().map(|d| Some(format!("provider-secret-{}", d.id))).collect(),
            master_key: config.config.master_key_env.as_ref().map(|_| KeyHash::of(b"sk-master-1234")),
        };
        Self { envoy, gateway: Rc::new(Gateway::new(config, secrets)) }
    }

    fn start(&self, method: &str, path: &str, headers: &[(&str, &[u8])]) -> Stream {
        let host = MockHost::new(Rc::clone(&self.envoy));
        {
            let mut h = host.stream.request_headers.borrow_mut();
            h.push((":method".into(), method.as_bytes().to_vec()));
            h.push((":path".into(), path.as_bytes().to_vec()));
            h.push(("x-request-id".into(), b"req-1".to_vec()));
            for (k, v) in headers {
                h.push(((*k).into(), v.to_vec()));
            }
        }
        let flow = RequestFlow::new(host.clone(), Rc::clone(&self.gateway), 42);
        Stream { host, flow }
    }

    /// A POST with a Bearer key and a JSON body; returns the stream and any local reply.
    fn post(&self, path: &str, key: &str, body: &str) -> (Stream, Option<LocalReply>) {
        let auth = format!("Bearer {key}");
        let mut s =
            self.start("POST", path, &[("authorization", auth.as_bytes()), ("content-type", b"application/json")]);
        let reply = s.send_body(body.as_bytes());
        (s, reply)
    }
}

struct Stream {
    host: MockHost,
    flow: RequestFlow<MockHost>,
}

impl Stream {
    fn reply(&self) -> Option<LocalReply> {
        self.host.stream.local_reply.borrow().clone()
    }

    /// Plays a request as Envoy would: the headers (held by the filter), then the body in one
    /// piece, which is when the filter routes.
    fn send_body(&mut self, body: &[u8]) -> Option<LocalReply> {
        if !body.is_empty() {
            self.host.set_request_header("content-length", Some(body.len().to_string().as_bytes()));
        }
        let action = self.flow.on_request_headers(body.is_empty());
        if self.reply().is_some() {
            return self.reply();
        }
        assert_eq!(action, Action::Pause, "the headers wait for the body");
        *self.host.stream.request_body.borrow_mut() = body.to_vec();
        assert_eq!(self.flow.on_request_body(body.len(), true) == Action::Continue, self.reply().is_none());
        self.reply()
    }

    /// Plays an upstream response through the filter; returns what the client receives.
    fn respond(&mut self, status: u16, content_type: &str, chunks: &[&[u8]], complete: bool) -> Vec<u8> {
        {
            let mut h = self.host.stream.response_headers.borrow_mut();
            h.push((":status".into(), status.to_string().into_bytes()));
            h.push(("content-type".into(), content_type.as_bytes().to_vec()));
        }
        self.flow.on_response_headers();
        let mut delivered = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            *self.host.stream.response_chunk.borrow_mut() = chunk.to_vec();
            self.flow.on_response_body(chunk.len(), complete && i + 1 == chunks.len());
            delivered.extend_from_slice(&self.host.stream.response_chunk.borrow());
        }
        delivered
    }

    fn finish(&mut self) {
        self.flow.on_log();
    }
}

fn openai_response(prompt: u64, completion: u64, cached: u64) -> String {
    format!(
        r#"{{"id":"c1","object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":{cached}}}}}}}"#,
        prompt + completion
    )
}

const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#;

/// The failover route is the gateway's choice: a client's marker is removed (its request would
/// otherwise have its body copied by the router and a provider's 307 followed).
#[test]
fn a_clients_failover_route_marker_is_removed() {
    let h = Harness::new(base_config());
    let auth = format!("Bearer {}", key(1));
    let marker = sluice_core::fallbacks::FAILOVER_ROUTE_HEADER;
    let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", auth.as_bytes()), (marker, b"1")]);
    let reply = s.send_body(CHAT.as_bytes());
    assert!(reply.is_none(), "{reply:?}");
    assert_eq!(s.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_gpt4o-a"));
    assert_eq!(s.host.request_header_str(marker), None);
}

/// OpenAI's `user` (LiteLLM's end user, or customer) and LiteLLM's `x-litellm-tags` are
/// recorded with the request's usage; a tags header the gateway cannot record whole is a 400.
#[test]
fn the_end_user_and_the_request_tags_are_recorded_with_the_usage() {
    let h = Harness::new(base_config());
    let auth = format!("Bearer {}", key(1));
    let tags = (sluice_core::request::TAGS_HEADER, b"prod, job:7,prod".as_slice());
    let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", auth.as_bytes()), tags]);
    let reply = s.send_body(br#"{"model":"gpt-4o","user":"cust-42","messages":[]}"#);
    assert!(reply.is_none(), "{reply:?}");
    s.respond(200, "application/json", &[openai_response(10, 5, 0).as_bytes()], true);
    s.finish();
    assert_eq!(h.envoy.records()[0]["end_user"], "cust-42");
    assert_eq!(h.envoy.records()[0]["request_tags"], serde_json::json!(["prod", "job:7"]));
    let long = "x".repeat(200);
    let mut s = h.start(
        "POST",
        "/v1/chat/completions",
        &[("authorization", auth.as_bytes()), (sluice_core::request::TAGS_HEADER, long.as_bytes())],
    );
    let refused = s.send_body(CHAT.as_bytes()).unwrap();
    assert_eq!((refused.status, refused.json()["error"]["param"].as_str()), (400, Some("x-litellm-tags")));
    let refused = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o","user":7}"#).1.unwrap();
    assert_eq!((refused.status, refused.json()["error"]["param"].as_str()), (400, Some("user")));
}

/// LiteLLM's end-user headers come before the body (`x-litellm-customer-id` first); without
/// them Anthropic's `metadata.user_id` names the end user of a Messages request.
#[test]
fn the_end_user_headers_come_before_the_body() {
    let h = Harness::new(base_config());
    let auth = format!("Bearer {}", key(1));
    let body = br#"{"model":"gpt-4o","user":"from-body","messages":[]}"#;
    let end_user_id = "x-litellm-end-user-id";
    let cases = [
        (vec![(end_user_id, &b"from-end-user-header"[..])], "from-end-user-header"),
        (vec![(end_user_id, &b"second"[..]), ("x-litellm-customer-id", &b"first"[..])], "first"),
        (vec![(end_user_id, &b"  "[..])], "from-body"),
    ];
    for (i, (headers, expected)) in cases.into_iter().enumerate() {
        let mut all = vec![("authorization", auth.as_bytes())];
        all.extend(headers);
        let mut s = h.start("POST", "/v1/chat/completions", &all);
        assert!(s.send_body(body).is_none());
        s.respond(200, "application/json", &[openai_response(10, 5, 0).as_bytes()], true);
        s.finish();
        assert_eq!(h.envoy.records()[i]["end_user"], expected);
    }
    let long = "x".repeat(300);
    let mut s = h.start(
        "POST",
        "/v1/chat/completions",
        &[("authorization", auth.as_bytes()), ("x-litellm-customer-id", long.as_bytes())],
    );
    let refused = s.send_body(body).unwrap();
    assert_eq!((refused.status, refused.json()["error"]["param"].as_str()), (400, Some("x-litellm-customer-id")));
}

#[test]
fn a_chat_request_is_routed_rewritten_and_metered() {
    let h = Harness::new(base_config());
    let (mut s, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
    assert!(reply.is_none(), "{reply:?}");
    // Routed to the deployment's cluster and path, with the provider's credential, never the client's.
    assert_eq!(s.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_gpt4o-a"));
    assert_eq!(s.host.request_header_str(":path").as_deref(), Some("/v1/chat/completions"));
    assert_eq!(s.host.request_header_str("authorization").as_deref(), Some("Bearer provider-secret-gpt4o-a"));
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert_eq!(sent["model"], "gpt-4o-2024-08-06");
    assert_eq!(sent["messages"][0]["content"], "hello");
    // The headers were held while the body changed length: content-length is the new one.
    let sent_len = s.host.stream.request_body.borrow().len();
    assert_eq!(s.host.request_header_str("content-length"), Some(sent_len.to_string()));
    // Nowhere to go after this deployment: not the route that keeps a copy of the body.
    assert_eq!(s.host.request_header_str(sluice_core::fallbacks::FAILOVER_ROUTE_HEADER), None);

    let body = openai_response(1000, 100, 400);
    let delivered = s.respond(200, "application/json", &[body.as_bytes()], true);
    assert_eq!(delivered, body.as_bytes());
    s.finish();
    let records = h.envoy.records();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r["request_id"], "req-1");
    assert_eq!(r["model_group"], "gpt-4o");
    assert_eq!(r["deployment"], "gpt4o-a");
    assert_eq!(r["prompt_tokens"], 1000);
    assert_eq!(r["cached_prompt_tokens"], 400);
    assert_eq!(r["completion_tokens"], 100);
    assert_eq!(r["estimated"], false);
    assert_eq!(r["end_user"], serde_json::Value::Null, "the body named no `user`");
    assert_eq!(r["outcome"], "completed");
    let expected = 600.0 * 2.5e-6 + 400.0 * 1.25e-6 + 100.0 * 1e-5;
    assert!((r["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-9);
    // Metrics are added up in the worker and reported on its tick (no host call per request).
    assert_eq!(h.envoy.metric("sluice.requests.model_group.gpt-4o"), 0);
    h.gateway.flush_metrics(&MockHost::new(Rc::clone(&h.envoy)));
    assert_eq!(h.envoy.metric("sluice.requests.model_group.gpt-4o"), 1);
    assert_eq!(h.envoy.metric("sluice.prompt_tokens.model_group.gpt-4o"), 1000);
    h.gateway.flush_metrics(&MockHost::new(Rc::clone(&h.envoy)));
    assert_eq!(h.envoy.metric("sluice.requests.model_group.gpt-4o"), 1, "each request reported once");
    // The record names the key by a hash prefix, never by the key.
    let line = String::from_utf8(h.envoy.queue.borrow()[0].clone()).unwrap();
    assert!(!line.contains(&key(1)));
}

#[test]
fn credentials_are_read_from_every_header_spelling_and_stripped() {
    let h = Harness::new(base_config());
    for header in ["authorization", "x-api-key", "api-key"] {
        let value = if header == "authorization" { format!("Bearer {}", key(1)) } else { key(1) };
        let mut s = h.start("POST", "/chat/completions", &[(header, value.as_bytes())]);
        assert!(s.send_body(CHAT.as_bytes()).is_none(), "{header}");
        assert_eq!(s.host.request_header_str("authorization").as_deref(), Some("Bearer provider-secret-gpt4o-a"));
        assert_eq!(s.host.request_header_str("x-api-key"), None, "x-api-key leaked upstream");
        assert_eq!(s.host.request_header_str("api-key"), None, "api-key leaked upstream");
    }
    // To an Anthropic deployment the provider key goes in x-api-key, and the client's Bearer goes.
    let auth = format!("Bearer {}", key(1));
    let mut s = h.start("POST", "/v1/messages", &[("authorization", auth.as_bytes())]);
    assert!(s.send_body(br#"{"model":"claude-3-5-sonnet","max_tokens":10,"messages":[]}"#).is_none());
    assert_eq!(s.host.request_header_str("authorization"), None);
    assert_eq!(s.host.request_header_str("x-api-key").as_deref(), Some("provider-secret-claude"));
}

/// Retries and timeouts reach Envoy's router as its own request headers: the gateway's policy,
/// a deployment's timeouts, a request's `num_retries` and `timeout` (never sent upstream); a
/// client's own router headers never reach the router.
#[test]
fn the_router_is_told_the_retries_and_timeouts_and_a_client_cannot_tell_it() {
    let router = |s: &Stream| {
        [
            "x-envoy-max-retries",
            "x-envoy-retriable-status-codes",
            "x-envoy-upstream-rq-timeout-ms",
            "x-envoy-upstream-rq-per-try-timeout-ms",
        ]
        .map(|h| s.host.request_header_str(h))
    };
    // Nothing configured, nothing asked: no router header at all.
    let h = Harness::new(base_config());
    let (s, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
    assert!(reply.is_none());
    assert_eq!(router(&s), [None, None, None, None]);

    let mut config = base_config();
    config.retries = sluice_core::retries::resolve(2, &Default::default()).unwrap();
    config.timeout_ms = Some(30_000);
    config.deployments[2].timeout_ms = Some(5_000);
    config.deployments[2].stream_timeout_ms = Some(1_500);
    let h = Harness::new(config);
    let (s, _) = h.post("/v1/chat/completions", &key(1), CHAT);
    assert_eq!(
        s.host.request_header_str("x-envoy-retry-on").as_deref(),
        Some(sluice_core::retries::RETRY_ON_HEADER_VALUE)
    );
    assert_eq!(
        router(&s),
        [Some("2".into()), Some("429,500,502,503,504,408".into()), Some("90000".into()), Some("30000".into())],
        "the gateway's timeout, once per attempt for the whole"
    );
    let (s, _) = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o-mini","messages":[]}"#);
    assert_eq!(router(&s)[2..], [Some("15000".into()), Some("5000".into())], "the deployment's timeout");
    // A stream: the route whose idle timeout is its stream_timeout bounds its first byte and
    // each gap between chunks; the route's timeout bounds the rest.
    let idle = sluice_core::retries::STREAM_IDLE_HEADER;
    // (Not the per-try timeout too: Envoy drops the idle timer when that one fires.)
    let (s, _) = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#);
    assert_eq!(router(&s)[2..], [None, None]);
    assert_eq!(s.host.request_header_str(idle).as_deref(), Some("1500"));
    // A deployment without its own: the gateway's timeout, which a route of its own has too.
    let (s, _) = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o","stream":true,"messages":[]}"#);
    assert_eq!(s.host.request_header_str(idle).as_deref(), Some("30000"));
    assert_eq!(h.gateway.config.config.stream_idle_timeouts(), [1_500, 30_000]);
    // Not for a whole answer, nor for a stream with its own timeout (no route has every number),
    // in LiteLLM's order: the request's stream_timeout, the deployment's, the request's timeout.
    let (s, _) = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o-mini","messages":[]}"#);
    assert_eq!(s.host.request_header_str(idle), None);
    let stream = |model: &str, own: &str| {
        let body = format!(r#"{{"model":"{model}","stream":true,{own}"messages":[]}}"#);
        let (s, _) = h.post("/v1/chat/completions", &key(1), &body);
        (s.host.request_header_str(idle), router(&s)[3].clone())
    };
    assert_eq!(stream("gpt-4o-mini", r#""stream_timeout":4,"#), (None, Some("4000".into())));
    assert_eq!(stream("gpt-4o-mini", r#""timeout":4,"#), (Some("1500".into()), None), "the deployment's first");
    assert_eq!(stream("gpt-4o", r#""timeout":4,"#), (None, Some("4000".into())), "then the request's");
    assert_eq!(stream("gpt-4o", r#""request_timeout":3,"#), (None, Some("3000".into())));
    // The request's own settings win, and do not go upstream.
    let (s, _) = h.post(
        "/v1/chat/completions",
        &key(1),
        r#"{"model":"gpt-4o-mini","num_retries":0,"timeout":0.25,"messages":[]}"#,
    );
    assert_eq!(router(&s), [None, None, Some("250".into()), None]);
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert_eq!(sent, serde_json::json!({"model": "gpt-4o-mini", "messages": []}));
    // A client's router headers are removed before anything else happens.
    let auth = format!("Bearer {}", key(1));
    let mut s = h.start(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", auth.as_bytes()),
            ("x-envoy-max-retries", b"50"),
            ("x-envoy-upstream-rq-timeout-ms", b"1"),
            (idle, b"1"),
        ],
    );
    assert!(s.send_body(br#"{"model":"gpt-4o","num_retries":1,"messages":[]}"#).is_none());
    assert_eq!(s.host.request_header_str(idle), None);
    assert_eq!(
        router(&s),
        [Some("1".into()), Some("429,500,502,503,504,408".into()), Some("60000".into()), Some("30000".into())]
    );
    // A bad setting is the client's error, named.
    let (_, reply) = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o","num_retries":99}"#);
    let reply = reply.expect("refused");
    assert_eq!((reply.status, reply.json()["error"]["param"].as_str()), (400, Some("num_retries")));
}

/// Cooldown: a deployment that failed more than `allowed_fails` times this minute (each router
/// attempt counting) leaves its group's rotation for `cooldown_time` on every worker; with none
/// left the group answers 503 with when to come back; `order` picks the lowest healthy order.
#[test]
fn a_failing_deployment_cools_down_and_the_group_routes_around_it() {
    let mut config = base_config();
    config.cooldown = sluice_core::cooldown::CooldownPolicy { enabled: true, allowed_fails: 1, cooldown_ms: 5_000 };
    let mut second = deployment("gpt4o-b", "gpt-4o", Provider::Openai, "gpt-4o");
    second.order = Some(2);
    config.deployments[0].order = Some(1);
    config.deployments.push(second);
    let h = Harness::new(config);
    let sent_to = |s: &Stream| s.host.request_header_str("x-sluice-cluster").unwrap();
    // Order 1 takes every request while it is healthy.
    let (mut s, _) = h.post("/v1/chat/completions", &key(1), CHAT);
    assert_eq!(sent_to(&s), "sluice_gpt4o-a");
    // Its failures: one answer after three attempts (the router's retries) is three.
    s.host.stream.response_headers.borrow_mut().push(("x-envoy-attempt-count".into(), b"2".to_vec()));
    s.respond(503, "application/json", &[br#"{"error":{}}"#], true);
    s.finish();
    assert!(h.envoy.logs.borrow().iter().any(|l| l.contains("deployment gpt4o-a of model group gpt-4o failed")));
    // The request's record says it cooled its deployment down (the control plane counts it).
    let record = h.envoy.records().pop().unwrap();
    assert_eq!(record["cooled_down"], serde_json::json!([{"deployment": "gpt4o-a", "error": "server_error"}]));
    // Out of rotation here at once, and on another worker of the same Envoy (shared data).
    let (s, _) = h.post("/v1/chat/completions", &key(1), CHAT);
    assert_eq!(sent_to(&s), "sluice_gpt4o-b", "order 2 takes over");
    let other = Harness::on(Rc::clone(&h.envoy), h.gateway.config.config.clone());
    let (s, _) = other.post("/v1/chat/completions", &key(1), CHAT);
    assert_eq!(sent_to(&s), "sluice_gpt4o-b");
    // A success after one failed attempt still counts that attempt; one more failure cools b down.
    let mut s = s;
    s.host.stream.response_headers.borrow_mut().push(("x-envoy-attempt-count".into(), b"2".to_vec()));
    s.respond(200, "application/json", &[openai_response(5, 5, 0).as_bytes()], true);
    s.finish();
    // The record says so: one try before the answer, retried by the router at the same deployment.
    let record = h.envoy.records().pop().unwrap();
    assert_eq!(record["failed_attempts"], serde_json::json!([{"deployment": "gpt4o-b", "error": "retried"}]));
    assert_eq!(record["cooled_down"], serde_json::json!([]), "one failure is within allowed_fails");
    let (mut s, _) = h.post("/v1/chat/completions", &key(1), CHAT);
    s.respond(429, "application/json", &[br#"{"error":{}}"#], true);
    s.finish();
    h.envoy.now_ms.set(NOW + 300); // past this worker's refresh of the other's record
    let (_, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
    let reply = reply.expect("no deployment left");
    assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (503, Some("no_healthy_deployment")));
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("gpt-4o"));
    assert_eq!(reply.header("retry-after"), Some("5"));
    // Back after cooldown_time, order 1 first again.
    h.envoy.now_ms.set(NOW + 5_100);
    let (s, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
    assert!(reply.is_none());
    assert_eq!(sent_to(&s), "sluice_gpt4o-a");
    // A group of one is never cooled down: the mini deployment fails and keeps serving.
    for _ in 0..3 {
        let (mut s, reply) = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o-mini","messages":[]}"#);
        assert!(reply.is_none());
        s.respond(500, "application/json", &[br#"{"error":{}}"#], true);
        s.finish();
    }
}

/// A group of three deployments under each routing strategy: least-busy goes to the one with
/// the fewest requests in flight (counted on every worker), latency-based to the fastest once
/// each is measured, cost-based to the cheapest.
#[test]
fn routing_strategies_choose_within_a_group() {
    use sluice_core::routing::LatencySettings;
    let config_with = |strategy| {
        let mut config = base_config();
        config.routing_strategy = strategy;
        config.deployments.truncate(1);
        for (id, input) in [("gpt4o-b", 1e-6), ("gpt4o-c", 3e-6)] {
            let mut d = deployment(id, "gpt-4o", Provider::Openai, "gpt-4o");
            d.pricing.input_cost_per_token = input;
            config.deployments.push(d);
        }
        config.deployments[0].pricing.input_cost_per_token = 2e-6;
        config
    };
    let sent_to = |s: &Stream| s.host.request_header_str("x-sluice-cluster").unwrap();

    let h = Harness::new(config_with(RoutingStrategy::CostBased));
    for _ in 0..3 {
        assert_eq!(sent_to(&h.post("/v1/chat/completions", &key(1), CHAT).0), "sluice_gpt4o-b");
    }

    let h = Harness::new(config_with(RoutingStrategy::LeastBusy));
    let other = Harness::on(Rc::clone(&h.envoy), h.gateway.config.config.clone());
    let first = h.post("/v1/chat/completions", &key(1), CHAT).0;
    let second = other.post("/v1/chat/completions", &key(1), CHAT).0;
    let third = h.post("/v1/chat/completions", &key(1), CHAT).0;
    let mut busy = vec![sent_to(&first), sent_to(&second), sent_to(&third)];
    busy.sort();
    assert_eq!(busy, ["sluice_gpt4o-a", "sluice_gpt4o-b", "sluice_gpt4o-c"], "each goes to an idle one");
    let freed = sent_to(&second);
    let mut second = second;
    second.respond(200, "application/json", &[openai_response(1, 1, 0).as_bytes()], true);
    second.finish();
    assert_eq!(sent_to(&h.post("/v1/chat/completions", &key(1), CHAT).0), freed, "the one that finished");

    let settings = LatencySettings { buffer: 0.0, ttl_ms: 60_000 };
    let h = Harness::new(config_with(RoutingStrategy::LatencyBased(settings)));
    let mut latency_of = std::collections::HashMap::new();
    latency_of.insert("sluice_gpt4o-a", 300);
    latency_of.insert("sluice_gpt4o-b", 20);
    latency_of.insert("sluice_gpt4o-c", 200);
    // Each unmeasured deployment is tried once, then the fastest takes the traffic.
    let mut seen = Vec::new();
    for i in 0..6u64 {
        let start = NOW + i * 1_000;
        h.envoy.now_ms.set(start);
        let (mut s, _) = h.post("/v1/chat/completions", &key(1), CHAT);
        let to = sent_to(&s);
        h.envoy.now_ms.set(start + latency_of[to.as_str()]);
        s.respond(200, "application/json", &[openai_response(1, 1, 0).as_bytes()], true);
        s.finish();
        seen.push(to);
    }
    let mut measured = seen[..3].to_vec();
    measured.sort();
    assert_eq!(measured, ["sluice_gpt4o-a", "sluice_gpt4o-b", "sluice_gpt4o-c"]);
    assert_eq!(seen[3..], ["sluice_gpt4o-b", "sluice_gpt4o-b", "sluice_gpt4o-b"]);
}

/// `usage-based-routing-v2`: a deployment's rpm/tpm are limits, shared by every worker; the
/// least-used deployment with room takes the request; none with room is a 429 naming the group,
/// and the client's `x-ratelimit-*` never show a deployment's limits.
#[test]
fn usage_based_routing_respects_deployment_limits() {
    let mut config = base_config();
    config.routing_strategy = RoutingStrategy::UsageBasedV2;
    config.deployments.truncate(1);
    config.deployments[0].rpm = Some(2);
    let mut b = deployment("gpt4o-b", "gpt-4o", Provider::Openai, "gpt-4o");
    b.rpm = Some(1);
    config.deployments.push(b);
    let h = Harness::new(config);
    let other = Harness::on(Rc::clone(&h.envoy), h.gateway.config.config.clone());
    let sent_to = |s: &Stream| s.host.request_header_str("x-sluice-cluster").unwrap();
    // The first answer's tokens make a the more used; b, unused, takes the next.
    let (mut first, _) = h.post("/v1/chat/completions", &key(1), CHAT);
    let first_to = sent_to(&first);
    first.respond(200, "application/json", &[openai_response(500, 100, 0).as_bytes()], true);
    first.finish();
    let (mut second, _) = other.post("/v1/chat/completions", &key(1), CHAT);
    assert_ne!(sent_to(&second), first_to, "the less used one");
    // The key has no limits: a deployment's (rpm 1) must not appear as the client's.
    second.respond(200, "application/json", &[openai_response(5, 5, 0).as_bytes()], true);
    assert_eq!(second.host.response_header_str("x-ratelimit-limit-requests"), None);
    // a has room for one more (rpm 2), b for none (rpm 1).
    let (third, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
    assert!(reply.is_none());
    assert_eq!(sent_to(&third), "sluice_gpt4o-a");
    let (_, reply) = other.post("/v1/chat/completions", &key(1), CHAT);
    let reply = reply.expect("both at their rpm");
    assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (429, Some("deployments_at_capacity")));
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("gpt-4o"));
    assert!(reply.header("retry-after").is_some());
    // The next minute, room again.
    h.envoy.now_ms.set(NOW + 60_000);
    assert!(h.post("/v1/chat/completions", &key(1), CHAT).1.is_none());
}

/// Anthropic's `count_tokens` (Claude Code asks it before a turn): passed to the group's
/// Anthropic deployment with its key and model name, or estimated here for a group with none;
/// never admitted, billed or recorded.
#[test]
fn count_tokens_goes_to_anthropic_or_is_estimated_and_is_never_billed() {
    let mut cfg = base_config();
    cfg.keys[0].rpm_limit = Some(1);
    let h = Harness::new(cfg);
    let body = br#"{"model":"claude-3-5-sonnet","messages":[{"role":"user","content":"hello there"}]}"#;
    for _ in 0..2 {
        // Twice within an RPM of 1: a count is no request against the key's limits.
        let mut s = h.start("POST", "/v1/messages/count_tokens?beta=true", &[("x-api-key", key(1).as_bytes())]);
        assert!(s.send_body(body).is_none());
        assert_eq!(s.host.request_header_str(":path").as_deref(), Some("/v1/messages/count_tokens"));
        assert_eq!(s.host.request_header_str("x-api-key").as_deref(), Some("provider-secret-claude"));
        assert_eq!(s.host.request_header_str("anthropic-version").as_deref(), Some("2023-06-01"));
        let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
        assert_eq!(sent["model"], "claude-3-5-sonnet-20241022", "the deployment's model name");
        s.respond(200, "application/json", &[br#"{"input_tokens":12}"#], true);
        s.finish();
        assert_eq!(s.host.response_header_str("x-ratelimit-remaining-requests"), None);
    }
    // A group with no Anthropic deployment: the gateway's estimate, in Anthropic's shape.
    let mut s = h.start("POST", "/v1/messages/count_tokens", &[("x-api-key", key(1).as_bytes())]);
    let reply = s.send_body(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello there"}]}"#).unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.json()["input_tokens"].as_u64().is_some_and(|n| n > 0), "{:?}", reply.json());
    assert_eq!(s.host.request_header_str("x-sluice-cluster"), None, "nothing went upstream");
    s.finish();
    assert!(h.envoy.records().is_empty(), "a count is never billed");
    // Refused like any request: an unknown model, a key without the model.
    let mut s = h.start("POST", "/v1/messages/count_tokens", &[("x-api-key", key(1).as_bytes())]);
    let reply = s.send_body(br#"{"model":"nope","messages":[]}"#).unwrap();
    assert_eq!((reply.status, reply.json()["type"].as_str()), (400, Some("error")), "Anthropic's error shape");
}

/// Azure OpenAI: the deployment's path with its `api-version`, the key in `api-key`, the
/// client's key out of every header; an Anthropic client reaches it through translation.
#[test]
fn azure_deployments_get_their_path_and_api_key() {
    let mut cfg = base_config();
    cfg.deployments.push(Deployment {
        base_path: "/openai/deployments/gpt4o-prod".into(),
        path_query: "?api-version=2024-10-21".into(),
        ..deployment("azure-east", "azure-gpt", Provider::Azure, "gpt4o-prod")
    });
    let h = Harness::new(cfg);
    for header in ["authorization", "api-key"] {
        let value = if header == "authorization" { format!("Bearer {}", key(1)) } else { key(1) };
        let mut s = h.start("POST", "/v1/chat/completions", &[(header, value.as_bytes())]);
        assert!(s.send_body(br#"{"model":"azure-gpt","messages":[]}"#).is_none(), "{header}");
        assert_eq!(
            s.host.request_header_str(":path").as_deref(),
            Some("/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21")
        );
        assert_eq!(s.host.request_header_str("api-key").as_deref(), Some("provider-secret-azure-east"));
        assert_eq!(s.host.request_header_str("authorization"), None, "{header}");
        assert_eq!(s.host.request_header_str("x-api-key"), None, "{header}");
    }
    let mut s = h.start("POST", "/v1/messages", &[("x-api-key", key(1).as_bytes())]);
    assert!(
        s.send_body(br#"{"model":"azure-gpt","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#).is_none()
    );
    assert_eq!(
        s.host.request_header_str(":path").as_deref(),
        Some("/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21")
    );
    assert_eq!(s.host.request_header_str("api-key").as_deref(), Some("provider-secret-azure-east"));
    assert_eq!(s.host.request_header_str("x-api-key"), None);
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert_eq!(sent["messages"][0]["content"], "hi", "translated to Chat Completions: {sent}");
}

/// `router_settings.model_group_alias`: an alias is served (and metered) by its group, listed
/// by `/v1/models` unless hidden, and a key may be given the alias or the group.
#[test]
fn a_model_group_alias_is_served_by_its_group() {
    let mut cfg = base_config();
    cfg.model_group_aliases = vec![
        GroupAlias { alias: "gpt-4".into(), group: "gpt-4o".into(), hidden: false },
        GroupAlias { alias: "secret".into(), group: "gpt-4o-mini".into(), hidden: true },
    ];
    cfg.keys.push(KeyConfig { models: vec!["gpt-4".into()], ..key_config(2) });
    let h = Harness::new(cfg);
    for model in ["gpt-4", "secret"] {
        let (mut s, reply) =
            h.post("/v1/chat/completions", &key(1), &format!(r#"{{"model":"{model}","messages":[]}}"#));
        assert!(reply.is_none(), "{model}");
        s.respond(200, "application/json", &[openai_response(10, 5, 0).as_bytes()], true);
        s.finish();
    }
    let groups: Vec<String> =
        h.envoy.records().iter().map(|r| r["model_group"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(groups, ["gpt-4o", "gpt-4o-mini"], "metered as the group");
    // Only the alias is allowed to key 2: the alias works, another group does not.
    assert!(h.post("/v1/chat/completions", &key(2), r#"{"model":"gpt-4","messages":[]}"#).1.is_none());
    let (_, reply) = h.post("/v1/chat/completions", &key(2), r#"{"model":"gpt-4o-mini","messages":[]}"#);
    assert_eq!(reply.map(|r| r.status), Some(403));
    for (k, listed) in [(key(1), vec!["claude-3-5-sonnet", "gpt-4", "gpt-4o", "gpt-4o-mini"]), (key(2), vec!["gpt-4"])]
    {
        let mut s = h.start("GET", "/v1/models", &[("authorization", format!("Bearer {k}").as_bytes())]);
        let models = s.send_body(b"").expect("answered").json();
        let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
        assert_eq!(ids, listed);
    }
}

/// A wildcard group: the requested name's matched part is the upstream model, priced from the
/// deployment's table of known models, and flagged `price_unknown` when it is not in it.
#[test]
fn a_wildcard_group_sends_the_matched_model_at_its_price() {
    let mut cfg = base_config();
    let mut wild = deployment("wild", "openai/*", Provider::Openai, "*");
    wild.priced_models.insert("gpt-4o-mini".into(), Pricing { input_cost_per_token: 1e-6, ..Pricing::default() });
    // As config.yaml makes it without model_info prices: $0 and flagged for any other model.
    (wild.pricing, wild.price_unknown) = (Pricing::default(), true);
    cfg.deployments.push(wild);
    let h = Harness::new(cfg);
    for model in ["openai/gpt-4o-mini", "openai/ft-mine"] {
        let (mut s, reply) =
            h.post("/v1/chat/completions", &key(1), &format!(r#"{{"model":"{model}","messages":[]}}"#));
        assert!(reply.is_none(), "{model}");
        let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
        assert_eq!(sent["model"], model.trim_start_matches("openai/"));
        s.respond(200, "application/json", &[openai_response(1000, 0, 0).as_bytes()], true);
        s.finish();
    }
    let records = h.envoy.records();
    let got: Vec<(&str, f64, bool)> = records
        .iter()
        .map(|r| (r["upstream_model"].as_str().unwrap(), r["cost_usd"].as_f64().unwrap(), r["price_unknown"] == true))
        .collect();
    assert_eq!(got, [("gpt-4o-mini", 1e-3, false), ("ft-mine", 0.0, true)]);
    assert_eq!(records[0]["model_group"], "openai/*");
}

/// Gemini: an OpenAI client's request translated to `generateContent` on the model's path
/// (the streaming method for a stream), the key in `x-goog-api-key`; the answer translated back.
#[test]
fn a_gemini_deployment_is_reached_through_translation() {
    let mut cfg = base_config();
    cfg.deployments.push(Deployment {
        base_path: "/v1beta".into(),
        ..deployment("gemini", "flash", Provider::Gemini, "gemini-2.5-flash")
    });
    let h = Harness::new(cfg);
    for (stream, path) in [
        (false, "/v1beta/models/gemini-2.5-flash:generateContent"),
        (true, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
    ] {
        let body = format!(r#"{{"model":"flash","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#);
        let (mut s, reply) = h.post("/v1/chat/completions", &key(1), &body);
        assert!(reply.is_none());
        assert_eq!(s.host.request_header_str(":path").as_deref(), Some(path));
        assert_eq!(s.host.request_header_str("x-goog-api-key").as_deref(), Some("provider-secret-gemini"));
        assert_eq!(s.host.request_header_str("authorization"), None);
        let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
        assert_eq!(sent["contents"][0]["parts"][0]["text"], "hi");
        if !stream {
            let answer = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"hello"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":2,"thoughtsTokenCount":3}}"#;
            let out = s.respond(200, "application/json", &[answer.as_bytes()], true);
            let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                (out["choices"][0]["message"]["content"].as_str(), out["model"].as_str()),
                (Some("hello"), Some("flash"))
            );
            s.finish();
            let rec = h.envoy.records().pop().unwrap();
            assert_eq!((rec["prompt_tokens"].as_u64(), rec["completion_tokens"].as_u64()), (Some(9), Some(5)));
        }
    }
}

/// Vertex AI: Gemini on its project path; Claude with the model in the path, Vertex's
/// `anthropic_version` in a body without `model`, from an Anthropic client and (translated) an
/// OpenAI one. The filter sends no credential (Envoy sets the access token from SDS), and the
/// client's key never goes upstream.
#[test]
fn vertex_deployments_get_their_paths_and_bodies_and_no_credential_from_the_filter() {
    let mut cfg = base_config();
    let google = "/v1/projects/p/locations/us-central1/publishers/google";
    let anthropic = "/v1/projects/p/locations/us-central1/publishers/anthropic";
    cfg.deployments.push(Deployment {
        base_path: google.into(),
        ..deployment("vg", "vertex-flash", Provider::VertexGemini, "gemini-2.5-flash")
    });
    cfg.deployments.push(Deployment {
        base_path: anthropic.into(),
        ..deployment("vc", "vertex-claude", Provider::VertexAnthropic, "claude-3-5-haiku@20241022")
    });
    let h = Harness::new(cfg);
    let messages = r#""messages":[{"role":"user","content":"hi"}]"#;
    let cases = [
        (
            "/v1/chat/completions",
            format!(r#"{{"model":"vertex-flash",{messages}}}"#),
            format!("{google}/models/gemini-2.5-flash:generateContent"),
        ),
        (
            "/v1/messages",
            format!(r#"{{"model":"vertex-claude","max_tokens":5,"stream":true,{messages}}}"#),
            format!("{anthropic}/models/claude-3-5-haiku@20241022:streamRawPredict"),
        ),
        (
            "/v1/chat/completions",
            format!(r#"{{"model":"vertex-claude",{messages}}}"#),
            format!("{anthropic}/models/claude-3-5-haiku@20241022:rawPredict"),
        ),
    ];
    for (route, body, path) in cases {
        let (s, reply) = h.post(route, &key(1), &body);
        assert!(reply.is_none(), "{route} {body}");
        assert_eq!(s.host.request_header_str(":path").as_deref(), Some(path.as_str()));
        for header in ["authorization", "x-api-key", "x-goog-api-key", "anthropic-version"] {
            assert_eq!(s.host.request_header_str(header), None, "{header} for {path}");
        }
        let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
        if path.contains("/anthropic/") {
            assert_eq!(sent.get("model"), None, "{sent}");
            assert_eq!(sent["anthropic_version"], "vertex-2023-10-16");
            // As the client wrote it, or as translation writes it (a text block).
            let content = &sent["messages"][0]["content"];
            assert!(content == "hi" || content[0]["text"] == "hi", "{sent}");
        } else {
            assert_eq!(sent["contents"][0]["parts"][0]["text"], "hi");
        }
    }
    // Claude Code's count_tokens reaches Vertex's counter, the model in the body.
    let (s, reply) =
        h.post("/v1/messages/count_tokens", &key(1), &format!(r#"{{"model":"vertex-claude",{messages}}}"#));
    assert!(reply.is_none());
    assert_eq!(s.host.request_header_str(":path"), Some(format!("{anthropic}/models/count-tokens:rawPredict")));
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert_eq!(sent["model"], "claude-3-5-haiku@20241022");
    // Vertex's embeddings are not Gemini's: not offered.
    let (_, reply) = h.post("/v1/embeddings", &key(1), r#"{"model":"vertex-flash","input":"hi"}"#);
    assert_eq!(reply.map(|r| r.status), Some(400));
}

/// The base config with embedding groups on Gemini (`g-emb`) and Bedrock (`titan`, `cohere`),
/// priced per input token as the built-in table prices them.
pub(crate) fn embeddings_config() -> GatewayConfig {
    let mut cfg = base_config();
    let priced = |d: Deployment, input: f64| Deployment {
        mode: Some(ModelMode::Embedding),
        pricing: Pricing { input_cost_per_token: input, ..Pricing::default() },
        ..d
    };
    cfg.deployments.push(priced(
        Deployment {
            base_path: "/v1beta".into(),
            ..deployment("g-emb", "g-emb", Provider::Gemini, "gemini-embedding-001")
        },
        1.5e-7,
    ));
    cfg.deployments.push(priced(deployment("titan", "titan", Provider::Bedrock, "amazon.titan-embed-text-v2:0"), 2e-8));
    cfg.deployments.push(priced(deployment("cohere", "cohere", Provider::Bedrock, "cohere.embed-english-v3"), 1e-7));
    cfg
}

/// Embeddings to Gemini and Bedrock: the model's own path and body, the answer OpenAI's list
/// (base64 as asked), metered exactly from Titan's count and as an estimate (marked, completed)
/// from Gemini's and Cohere's, which count nothing.
#[test]
fn embeddings_reach_gemini_and_bedrock_through_translation() {
    let h = Harness::new(embeddings_config());
    let json = |bytes: &[u8]| -> serde_json::Value { serde_json::from_slice(bytes).unwrap() };
    let cases: [(&str, &str, &str, serde_json::Value, &str, serde_json::Value); 3] = [
        (
            r#"{"model":"g-emb","input":["hello","world!!!!"],"dimensions":2,"encoding_format":"base64"}"#,
            "/v1beta/models/gemini-embedding-001:batchEmbedContents",
            r#"{"embeddings":[{"values":[0.5,-2.0]},{"values":[1.0,0.0]}]}"#,
            serde_json::json!(["AAAAPwAAAMA=", "AACAPwAAAAA="]),
            "x-goog-api-key",
            serde_json::json!(5),
        ),
        (
            r#"{"model":"titan","input":"hi there","dimensions":256}"#,
            "/model/amazon.titan-embed-text-v2%3A0/invoke",
            r#"{"embedding":[0.5,-2.0],"inputTextTokenCount":3}"#,
            serde_json::json!([[0.5, -2.0]]),
            "",
            serde_json::json!(3),
        ),
        (
            r#"{"model":"cohere","input":["a","bcdef"],"encoding_format":"float"}"#,
            "/model/cohere.embed-english-v3/invoke",
            r#"{"embeddings":[[0.5],[1.0]],"id":"e","response_type":"embeddings_floats","texts":["a","bcdef"]}"#,
            serde_json::json!([[0.5], [1.0]]),
            "",
            serde_json::json!(3),
        ),
    ];
    for (body, path, answer, vectors, key_header, prompt) in cases {
        let (mut s, reply) = h.post("/v1/embeddings", &key(1), body);
        assert!(reply.is_none(), "{body}: {:?}", reply.map(|r| r.json()));
        assert_eq!(s.host.request_header_str(":path").as_deref(), Some(path));
        assert_eq!(s.host.request_header_str("authorization"), None, "the client's key never goes upstream");
        if !key_header.is_empty() {
            assert_eq!(s.host.request_header_str(key_header).as_deref(), Some("provider-secret-g-emb"));
        }
        let out = json(&s.respond(200, "application/json", &[answer.as_bytes()], true));
        let got: Vec<serde_json::Value> =
            out["data"].as_array().unwrap().iter().map(|d| d["embedding"].clone()).collect();
        assert_eq!(serde_json::Value::from(got), vectors, "{body}");
        assert_eq!(out["usage"], serde_json::json!({"prompt_tokens": prompt, "total_tokens": prompt}));
        s.finish();
    }
    let sent = |i: usize| h.envoy.records()[i].clone();
    let got: Vec<(String, u64, bool, String, f64)> = (0..3)
        .map(|i| {
            let r = sent(i);
            (
                r["model_group"].as_str().unwrap().to_owned(),
                r["prompt_tokens"].as_u64().unwrap(),
                r["estimated"] == true,
                r["outcome"].as_str().unwrap().to_owned(),
                r["cost_usd"].as_f64().unwrap(),
            )
        })
        .collect();
    let expected = [("g-emb", 5, true, 5.0 * 1.5e-7), ("titan", 3, false, 3.0 * 2e-8), ("cohere", 3, true, 3.0 * 1e-7)];
    for ((group, prompt, estimated, outcome, cost), (g, p, e, c)) in got.iter().zip(expected) {
        assert_eq!((group.as_str(), *prompt, *estimated, outcome.as_str()), (g, p, e, "completed"));
        assert!((cost - c).abs() < 1e-15, "{group}: {cost} != {c}");
    }

    // Token ids go nowhere but OpenAI: 400s naming `input`, nothing sent.
    for body in [r#"{"model":"titan","input":[1,2]}"#, r#"{"model":"g-emb","input":[1,2,3]}"#] {
        let (_, reply) = h.post("/v1/embeddings", &key(1), body);
        let reply = reply.expect("refused here");
        assert_eq!((reply.status, reply.json()["error"]["param"].as_str()), (400, Some("input")), "{body}");
    }
    // A provider's error comes back in OpenAI's shape with its status, and is no usage.
    let (mut s, _) = h.post("/v1/embeddings", &key(1), r#"{"model":"g-emb","input":"a"}"#);
    let error = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#;
    let out = json(&s.respond(429, "application/json", &[error.as_bytes()], true));
    assert_eq!(
        (out["error"]["type"].as_str(), out["error"]["message"].as_str()),
        (Some("rate_limit_error"), Some("quota"))
    );
    s.finish();
    assert_eq!(sent(3)["outcome"], "upstream_error");
    // An answer that is not an embeddings list: the client's error, metered as truncated.
    let (mut s, _) = h.post("/v1/embeddings", &key(1), r#"{"model":"cohere","input":"a"}"#);
    let out = json(&s.respond(200, "application/json", &[b"{\"nothing\":1}"], true));
    assert!(out["error"]["message"].as_str().unwrap().contains("neither an embedding"), "{out}");
    s.finish();
    assert_eq!((sent(4)["outcome"].as_str(), sent(4)["estimated"].as_bool()), (Some("truncated"), Some(true)));
}

/// An Anthropic client in front of Gemini: the two translations composed, both ways.
#[test]
fn an_anthropic_client_reaches_gemini_through_openais_format() {
    let mut cfg = base_config();
    cfg.deployments.push(Deployment {
        base_path: "/v1beta".into(),
        ..deployment("gemini", "flash", Provider::Gemini, "gemini-2.5-flash")
    });
    let h = Harness::new(cfg);
    let mut s = h.start("POST", "/v1/messages", &[("x-api-key", key(1).as_bytes())]);
    assert!(
        s.send_body(
            br#"{"model":"flash","max_tokens":20,"system":"Be brief.","messages":[{"role":"user","content":"hi"}]}"#
        )
        .is_none()
    );
    assert_eq!(s.host.request_header_str(":path").as_deref(), Some("/v1beta/models/gemini-2.5-flash:generateContent"));
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(sent["generationConfig"]["maxOutputTokens"], 20);
    let answer = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"hello"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":2}}"#;
    let out: serde_json::Value =
        serde_json::from_slice(&s.respond(200, "application/json", &[answer.as_bytes()], true)).unwrap();
    assert_eq!((out["type"].as_str(), out["content"][0]["text"].as_str()), (Some("message"), Some("hello")));
    assert_eq!((out["usage"]["input_tokens"].as_u64(), out["usage"]["output_tokens"].as_u64()), (Some(9), Some(2)));
    // A Gemini error reaches the Anthropic client in Anthropic's shape.
    let mut s = h.start("POST", "/v1/messages", &[("x-api-key", key(1).as_bytes())]);
    assert!(s.send_body(br#"{"model":"flash","max_tokens":20,"messages":[{"role":"user","content":"hi"}]}"#).is_none());
    let error = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#;
    let out: serde_json::Value =
        serde_json::from_slice(&s.respond(429, "application/json", &[error.as_bytes()], true)).unwrap();
    assert_eq!((out["type"].as_str(), out["error"]["type"].as_str()), (Some("error"), Some("rate_limit_error")));
}

/// OpenAI's Responses API: passed through to OpenAI deployments (model renamed, nothing
/// added), metered from its own usage shape, streamed or not; never to Anthropic.
#[test]
fn the_responses_api_is_passed_through_and_metered() {
    let h = Harness::new(base_config());
    let body = r#"{"model":"gpt-4o","input":"hi","max_output_tokens":50}"#;
    let (mut s, reply) = h.post("/v1/responses", &key(1), body);
    assert!(reply.is_none());
    assert_eq!(s.host.request_header_str(":path").as_deref(), Some("/v1/responses"));
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert_eq!((sent["model"].as_str(), sent.get("stream_options")), (Some("gpt-4o-2024-08-06"), None));
    let answer = r#"{"object":"response","status":"completed","output":[],"usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":40},"output_tokens":20,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":120}}"#;
    s.respond(200, "application/json", &[answer.as_bytes()], true);
    s.finish();

    let (mut s, reply) = h.post("/v1/responses", &key(1), r#"{"model":"gpt-4o","input":"hi","stream":true}"#);
    assert!(reply.is_none());
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert_eq!(sent.get("stream_options"), None, "the Responses API reports usage without being asked");
    let events = [
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hello\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":3}}}\n\n",
    ];
    let chunks: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
    assert_eq!(s.respond(200, "text/event-stream", &chunks, true), events.concat().into_bytes(), "passed unchanged");
    s.finish();

    let records = h.envoy.records();
    let got: Vec<(u64, u64, u64, u64, bool, &str)> = records
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            let outcome = r["outcome"].as_str().unwrap_or("");
            (
                n("prompt_tokens"),
                n("cached_prompt_tokens"),
                n("completion_tokens"),
                n("reasoning_tokens"),
                r["estimated"] == true,
                outcome,
            )
        })
        .collect();
    assert_eq!(got, [(100, 40, 20, 5, false, "completed"), (7, 0, 3, 0, false, "completed")]);
    assert_eq!(records[0]["route"], "/v1/responses");

    let (_, reply) = h.post("/v1/responses", &key(1), r#"{"model":"claude-3-5-sonnet","input":"hi"}"#);
    assert_eq!(
        reply.map(|r| r.json()["error"]["code"].clone()),
        Some(serde_json::json!("model_not_supported_on_route"))
    );
}

/// `model_info.mode`: an embedding deployment is not called for chat, nor a chat one for
/// embeddings; the client is told the model is not served on that route.
#[test]
fn a_deployments_mode_limits_the_routes_it_serves() {
    let mut cfg = base_config();
    for d in &mut cfg.deployments {
        d.mode = Some(if d.id == "mini" { ModelMode::Embedding } else { ModelMode::Chat });
    }
    let h = Harness::new(cfg);
    let (_, reply) = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o-mini","messages":[]}"#);
    let reply = reply.expect("refused");
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], "model_not_supported_on_route", "{:?}", reply.json());
    let (_, reply) = h.post("/v1/embeddings", &key(1), r#"{"model":"gpt-4o-mini","input":"x"}"#);
    assert!(reply.is_none(), "an embedding deployment serves /v1/embeddings");
    let (_, reply) = h.post("/v1/embeddings", &key(1), r#"{"model":"gpt-4o","input":"x"}"#);
    assert_eq!(reply.map(|r| r.status), Some(400));
    assert!(h.post("/v1/chat/completions", &key(1), CHAT).1.is_none());
}

#[test]
fn bad_credentials_are_401_before_any_lookup() {
    let h = Harness::new(base_config());
    let long = vec![b'a'; 65_536];
    let mut tampered = key(1).into_bytes();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"Bearer ".to_vec(), "missing_api_key"),
        (b"Bearer sk-1234".to_vec(), "invalid_api_key"),
        ([b"Bearer ".as_slice(), &tampered].concat(), "invalid_api_key"),
        ([b"Bearer ".as_slice(), key(2).as_bytes()].concat(), "invalid_api_key"),
        ([b"Bearer ".as_slice(), &long].concat(), "invalid_api_key"),
        (b"Bearer sk-sluice-\0\0\xff\xfe".to_vec(), "invalid_api_key"),
        (b"Bearer ' OR 1=1; DROP TABLE keys; --".to_vec(), "invalid_api_key"),
    ];
    for (auth, code) in cases {
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", &auth)]);
        let reply = s.send_body(CHAT.as_bytes()).expect("rejected");
        assert_eq!(reply.status, 401);
        assert_eq!(reply.json()["error"]["code"], code);
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    h.report_metrics();
    assert_eq!(h.envoy.metric("sluice.rejections.reason.invalid_api_key"), 6);
    assert!(h.envoy.records().is_empty());
}

#[test]
fn blocked_expired_and_route_restricted_keys() {
    let mut cfg = base_config();
    cfg.keys.push(KeyConfig { blocked: true, ..key_config(2) });
    cfg.keys.push(KeyConfig { expires: Timestamp::parse("2026-01-01T00:00:00Z"), ..key_config(3) });
    cfg.keys.push(KeyConfig { allowed_routes: vec!["/v1/embeddings".into()], ..key_config(4) });
    cfg.teams.push(TeamConfig { team_id: "frozen".into(), blocked: true, ..TeamConfig::default() });
    cfg.keys.push(KeyConfig { team_id: Some("frozen".into()), ..key_config(5) });
    let h = Harness::new(cfg);
    for (seed, status, code) in
        [(2, 401, "key_blocked"), (3, 401, "key_expired"), (4, 403, "route_not_allowed"), (5, 401, "team_blocked")]
    {
        let (_, reply) = h.post("/v1/chat/completions", &key(seed), CHAT);
        let reply = reply.expect("rejected");
        assert_eq!((reply.status, reply.json()["error"]["code"].as_str().unwrap()), (status, code));
    }
}

#[test]
fn models_unknown_forbidden_and_listed() {
    let mut cfg = base_config();
    cfg.teams.push(TeamConfig { team_id: "t".into(), models: vec!["gpt-4o*".into()], ..TeamConfig::default() });
    cfg.keys.push(KeyConfig {
        team_id: Some("t".into()),
        models: vec!["gpt-4o".into(), "claude-3-5-sonnet".into()],
        ..key_config(2)
    });
    let h = Harness::new(cfg);
    let (_, reply) = h.post("/v1/chat/completions", &key(2), r#"{"model":"gpt-5"}"#);
    let reply = reply.unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["param"], "model");
    // Allowed by the key but not by its team.
    let (_, reply) = h.post("/v1/chat/completions", &key(2), r#"{"model":"claude-3-5-sonnet"}"#);
    assert_eq!(reply.unwrap().status, 403);
    let (_, reply) = h.post("/v1/chat/completions", &key(2), r#"{"model":"gpt-4o-mini"}"#);
    assert_eq!(reply.unwrap().status, 403);

    let auth = format!("Bearer {}", key(2));
    let mut s = h.start("GET", "/v1/models", &[("authorization", auth.as_bytes())]);
    let reply = s.send_body(b"").unwrap();
    assert_eq!(reply.status, 200);
    let ids: Vec<String> =
        reply.json()["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["gpt-4o"]);
    // The master key sees every group.
    let mut s = h.start("GET", "/models", &[("authorization", b"Bearer sk-master-1234")]);
    assert_eq!(s.send_body(b"").unwrap().json()["data"].as_array().unwrap().len(), 3);
}

#[test]
fn bad_bodies_get_clear_errors() {
    let h = Harness::new(base_config());
    let big = format!(r#"{{"model":"gpt-4o","pad":"{}"}}"#, "x".repeat(5000));
    for (body, status, code) in [
        ("{not json", 400, "invalid_json"),
        (r#"{"messages":[]}"#, 400, "missing_model"),
        (r#"{"model":["gpt-4o"]}"#, 400, "invalid_value"),
        (r#"{"model":"gpt-4o","stream":"true"}"#, 400, "invalid_value"),
        (big.as_str(), 413, "request_too_large"),
    ] {
        let (_, reply) = h.post("/v1/chat/completions", &key(1), body);
        let reply = reply.unwrap_or_else(|| panic!("{body} was accepted"));
        assert_eq!((reply.status, reply.json()["error"]["code"].as_str().unwrap()), (status, code), "{body}");
    }
    // An oversized declared content-length is refused at the headers.
    let auth = format!("Bearer {}", key(1));
    let mut s =
        h.start("POST", "/v1/chat/completions", &[("authorization", auth.as_bytes()), ("content-length", b"999999")]);
    assert_eq!(s.flow.on_request_headers(false), Action::Pause);
    assert_eq!(s.reply().unwrap().status, 413);
    // Unknown routes and wrong methods.
    let mut s = h.start("POST", "/v1/images/generations", &[("authorization", auth.as_bytes())]);
    assert_eq!(s.send_body(b"{}").unwrap().status, 404);
    let mut s = h.start("GET", "/v1/chat/completions", &[("authorization", auth.as_bytes())]);
    assert_eq!(s.send_body(b"").unwrap().status, 405);
}

#[test]
fn rpm_limit_rejects_with_headers_and_resets_next_minute() {
    let mut cfg = base_config();
    cfg.keys[0].rpm_limit = Some(2);
    let h = Harness::new(cfg);
    for left in [1, 0] {
        let (mut s, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
        assert!(reply.is_none());
        s.respond(200, "application/json", &[openai_response(10, 1, 0).as_bytes()], true);
        assert_eq!(s.host.response_header_str("x-ratelimit-limit-requests").as_deref(), Some("2"));
        assert_eq!(s.host.response_header_str("x-ratelimit-remaining-requests"), Some(left.to_string()));
        s.finish();
    }
    let (_, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
    let reply = reply.unwrap();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("50"));
    assert_eq!(reply.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("2"));
    h.envoy.now_ms.set(NOW + 60_000);
    assert!(h.post("/v1/chat/completions", &key(1), CHAT).1.is_none());
}

#[test]
fn team_and_per_model_limits_apply_and_roll_back() {
    let mut cfg = base_config();
    cfg.teams.push(TeamConfig { team_id: "t".into(), rpm_limit: Some(3), ..TeamConfig::default() });
    cfg.keys.push(KeyConfig {
        team_id: Some("t".into()),
        model_rpm_limit: [("gpt-4o".to_string(), 1)].into(),
        ..key_config(2)
    });
    cfg.keys.push(KeyConfig { team_id: Some("t".into()), ..key_config(3) });
    let h = Harness::new(cfg);
    assert!(h.post("/v1/chat/completions", &key(2), CHAT).1.is_none());
    let reply = h.post("/v1/chat/completions", &key(2), CHAT).1.unwrap();
    assert_eq!(reply.status, 429);
    // The refused request's team admission was released: the team still has 2 left.
    assert!(h.post("/v1/chat/completions", &key(3), CHAT).1.is_none());
    assert!(h.post("/v1/chat/completions", &key(2), r#"{"model":"gpt-4o-mini"}"#).1.is_none());
    let reply = h.post("/v1/chat/completions", &key(3), CHAT).1.unwrap();
    assert_eq!(reply.status, 429);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("team"));
}

/// LiteLLM's parallel request limiter, on a key and on its team: a request in flight holds a
/// slot until it ends however it ends (answered, failed, or the client gone), and a refusal
/// takes nothing from the other scopes.
#[test]
fn parallel_requests_are_limited_per_key_and_team_and_every_end_frees_a_slot() {
    let mut cfg = base_config();
    cfg.keys[0].max_parallel_requests = Some(2);
    cfg.teams.push(TeamConfig { team_id: "t".into(), max_parallel_requests: Some(1), ..TeamConfig::default() });
    cfg.keys.push(KeyConfig { team_id: Some("t".into()), rpm_limit: Some(2), ..key_config(2) });
    cfg.keys.push(KeyConfig { team_id: Some("t".into()), ..key_config(3) });
    let h = Harness::new(cfg);
    let (mut first, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
    assert!(reply.is_none(), "{reply:?}");
    let (mut second, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
    assert!(reply.is_none(), "{reply:?}");
    let refused = h.post("/v1/chat/completions", &key(1), CHAT).1.unwrap();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["code"], "parallel_request_limit_reached");
    assert!(refused.json()["error"]["message"].as_str().unwrap().starts_with("Max parallel request limit reached"));
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Answered: its slot is free.
    first.respond(200, "application/json", &[openai_response(10, 5, 0).as_bytes()], true);
    first.finish();
    let (mut third, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
    assert!(reply.is_none(), "{reply:?}");
    // Cut off before any answer (client gone, upstream reset): its slot is free too.
    second.finish();
    third.finish();
    for _ in 0..2 {
        assert!(h.post("/v1/chat/completions", &key(1), CHAT).1.is_none());
    }

    // The team's one slot is shared by its keys.
    let (mut team_first, reply) = h.post("/v1/chat/completions", &key(3), CHAT);
    assert!(reply.is_none(), "{reply:?}");
    let refused = h.post("/v1/chat/completions", &key(2), CHAT).1.unwrap();
    assert_eq!(refused.status, 429);
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("the team of this API key"));
    team_first.finish();
    // The refusal gave back key 2's RPM admission: both of its 2 a minute are left.
    for _ in 0..2 {
        let (mut s, reply) = h.post("/v1/chat/completions", &key(2), CHAT);
        assert!(reply.is_none(), "{reply:?}");
        s.finish();
    }
    assert_eq!(h.post("/v1/chat/completions", &key(2), CHAT).1.unwrap().json()["error"]["code"], "rate_limit_exceeded");
}

/// A key brought from LiteLLM (`sk-` and 22 URL-safe characters; LiteLLM keeps SHA-256 of it)
/// is configured by that digest and works as it did; an unknown one is an unknown key, and a
/// Sluice-prefixed key with a wrong checksum is still refused before anything is looked at.
#[test]
fn a_key_brought_from_litellm_is_found_by_its_digest() {
    let litellm_key = "sk-q3Vb8fZc1Ykd0J2mWfN4aA";
    let mut cfg = base_config();
    cfg.keys.push(KeyConfig { key_hash: Some(KeyHash::of(litellm_key.as_bytes())), ..KeyConfig::default() });
    let h = Harness::new(cfg);
    let (mut s, reply) = h.post("/v1/chat/completions", litellm_key, CHAT);
    assert!(reply.is_none(), "{reply:?}");
    s.finish();
    let unknown = h.post("/v1/chat/completions", "sk-q3Vb8fZc1Ykd0J2mWfN4aB", CHAT).1.unwrap();
    assert_eq!((unknown.status, unknown.json()["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    let mut forged = key(1);
    forged.pop();
    forged.push('x');
    let refused = h.post("/v1/chat/completions", &forged, CHAT).1.unwrap();
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("not a well-formed Sluice key"));
}

/// One request answered with 30 prompt and 5 completion tokens ($0.000125 at gpt-4o's test
/// price): what the budget tests spend before they expect a refusal.
fn spend_once(h: &Harness, key: &str, body: &str) {
    let (mut s, reply) = h.post("/v1/chat/completions", key, body);
    assert!(reply.is_none(), "{reply:?}");
    s.respond(200, "application/json", &[openai_response(30, 5, 0).as_bytes()], true);
    s.finish();
}

/// `general_settings.allowed_ips` and a key's `allowed_ips`: the downstream address Envoy saw
/// must be in one of the CIDRs; any other gets LiteLLM's 403 before its key is even looked at
/// (the gateway's list) or once it is (the key's). Liveness stays open to anyone.
#[test]
fn client_addresses_outside_the_allow_lists_are_refused() {
    let mut cfg = base_config();
    cfg.allowed_ips = vec!["10.0.0.0/8".into(), "2001:db8::/32".into()];
    cfg.keys.push(KeyConfig { allowed_ips: vec!["10.1.0.0/16".into()], ..key_config(2) });
    let h = Harness::new(cfg);
    let from = |source: Option<&str>, k: &str| {
        let auth = format!("Bearer {k}");
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", auth.as_bytes())]);
        *s.host.stream.source_address.borrow_mut() = source.map(str::to_owned);
        s.send_body(CHAT.as_bytes())
    };
    assert!(from(Some("10.9.9.9:5000"), &key(1)).is_none());
    assert!(from(Some("[2001:db8::7]:443"), &key(1)).is_none());
    for (source, shown) in [(Some("11.0.0.1:5000"), "11.0.0.1"), (None, "unknown")] {
        let refused = from(source, &key(1)).unwrap();
        assert_eq!((refused.status, refused.json()["error"]["code"].as_str()), (403, Some("ip_not_allowed")));
        assert_eq!(refused.json()["error"]["message"], format!("Access forbidden: IP address {shown} not allowed."));
    }
    // The gateway's list is checked before the key: an unknown key from outside is a 403, not a 401.
    assert_eq!(from(Some("11.0.0.1:5000"), "sk-nonsense").unwrap().status, 403);
    // The key's own list narrows the gateway's.
    assert!(from(Some("10.1.2.3:5000"), &key(2)).is_none());
    let refused = from(Some("10.9.9.9:5000"), &key(2)).unwrap();
    assert_eq!((refused.status, refused.json()["error"]["code"].as_str()), (403, Some("ip_not_allowed")));
    // Kubernetes' probes come from the node, whatever the list says.
    let mut probe = h.start("GET", "/health/liveliness", &[]);
    *probe.host.stream.source_address.borrow_mut() = Some("172.16.0.1:1".into());
    assert_eq!(probe.send_body(b"").unwrap().status, 200);
}

/// A list with an entry that is not a CIDR is refused with the entry named.
#[test]
fn an_allow_list_that_does_not_parse_is_refused() {
    let mut cfg = base_config();
    cfg.allowed_ips = vec!["10.0.0.0/33".into()];
    cfg.keys[0].allowed_ips = vec!["localhost".into()];
    let errors = CompiledConfig::compile(cfg).unwrap_err();
    let text = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    assert!(text.contains("general_settings.allowed_ips: \"10.0.0.0/33\" is not an IP address"), "{text}");
    assert!(text.contains("allowed_ips: \"localhost\" is not an IP address"), "{text}");
}

/// LiteLLM's proxy budget (`litellm_settings.max_budget`): every admitted request counts against
/// it, whatever its key; spent on this Envoy, or across the fleet (the control plane's word),
/// every request is refused.
#[test]
fn the_gateways_own_budget_counts_every_request() {
    use sluice_core::config::ProxyBudget;
    let mut cfg = base_config();
    cfg.keys.push(key_config(2));
    cfg.proxy_budget = Some(ProxyBudget { max_budget: 0.0001, budget_duration: None, budget_spent: false });
    let h = Harness::new(cfg.clone());
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;
    spend_once(&h, &key(1), body);
    let refused = h.post("/v1/chat/completions", &key(2), body).1.unwrap();
    assert_eq!((refused.status, refused.json()["error"]["code"].as_str()), (400, Some("budget_exceeded")));
    assert!(refused.json()["error"]["message"].as_str().unwrap().starts_with("The gateway's budget"));

    cfg.proxy_budget = Some(ProxyBudget { max_budget: 5.0, budget_duration: None, budget_spent: true });
    let fleet_spent = Harness::new(cfg).post("/v1/chat/completions", &key(1), body).1.unwrap();
    assert_eq!(
        fleet_spent.json()["error"]["message"],
        "The gateway's budget (litellm_settings.max_budget) has been exceeded! Max budget: 5.000000"
    );
}

/// `litellm_settings.max_end_user_budget`: each end user without a customer entry has that
/// budget of its own, counted by this Envoy.
#[test]
fn end_users_without_an_entry_get_the_default_budget_each() {
    let mut cfg = base_config();
    cfg.end_user_max_budget = Some(0.0001);
    let h = Harness::new(cfg);
    let body = |user: &str| {
        format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"hi"}}],"max_tokens":5,"user":"{user}"}}"#)
    };
    spend_once(&h, &key(1), &body("ada"));
    let refused = h.post("/v1/chat/completions", &key(1), &body("ada")).1.unwrap();
    assert_eq!((refused.status, refused.json()["error"]["code"].as_str()), (400, Some("budget_exceeded")));
    assert!(refused.json()["error"]["message"].as_str().unwrap().starts_with("End user budget has been exceeded!"));
    assert!(h.post("/v1/chat/completions", &key(1), &body("grace")).1.is_none(), "each end user has its own");
    assert!(h.post("/v1/chat/completions", &key(1), CHAT).1.is_none(), "a request naming no one is not limited");
    // Clients name whom they like: their counters share the slots, never one record each.
    let before = h.envoy.shared_len();
    for i in 0..200 {
        h.post("/v1/chat/completions", &key(1), &body(&format!("made-up-{i}"))).0.finish();
    }
    let host = MockHost::new(Rc::clone(&h.envoy));
    assert!((0..200).all(|i| host.shared_get(&format!("sluice:c:made-up-{i}")).0.is_none()), "no record of their own");
    assert!(h.envoy.shared_len() - before <= 200, "at most a slot each, of the {} there are", crate::counters::SLOTS);
}

/// A key's `model_max_budget` (standalone): this Envoy counts the key's spend on that model and
/// refuses the model, only it, once spent.
#[test]
fn a_keys_model_budget_is_counted_on_each_envoy() {
    let mut cfg = base_config();
    cfg.keys[0].model_max_budget = [("gpt-4o".to_string(), 0.0001)].into();
    let h = Harness::new(cfg);
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;
    spend_once(&h, &key(1), body);
    let refused = h.post("/v1/chat/completions", &key(1), body).1.unwrap();
    assert_eq!((refused.status, refused.json()["error"]["code"].as_str()), (400, Some("budget_exceeded")));
    let (mut s, reply) = h.post("/v1/chat/completions", &key(1), &body.replace("gpt-4o", "gpt-4o-mini"));
    assert!(reply.is_none(), "another model is not limited: {reply:?}");
    s.finish();
}

/// End users (LiteLLM's customers) named by the body's `user` or LiteLLM's headers: a blocked
/// one is refused with LiteLLM's 400, one whose budget the fleet spent is refused, and one with
/// limits is counted across every key that names it; an end user without rules is free.
#[test]
fn a_customers_rules_apply_to_every_request_that_names_it() {
    use sluice_core::customers::CustomerConfig;
    let mut cfg = base_config();
    cfg.keys.push(key_config(2));
    cfg.customers = vec![
        CustomerConfig { customer_id: "blocked-co".into(), blocked: true, ..CustomerConfig::default() },
        CustomerConfig {
            customer_id: "spent-co".into(),
            max_budget: Some(1.0),
            budget_spent: true,
            ..CustomerConfig::default()
        },
        CustomerConfig {
            customer_id: "ada".into(),
            rpm_limit: Some(2),
            max_parallel_requests: Some(1),
            ..CustomerConfig::default()
        },
    ];
    let h = Harness::new(cfg);
    let as_user =
        |user: &str| format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"hi"}}],"user":"{user}"}}"#);

    let refused = h.post("/v1/chat/completions", &key(1), &as_user("blocked-co")).1.unwrap();
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["code"], "customer_blocked");
    assert_eq!(refused.json()["error"]["param"], "user");
    assert_eq!(refused.json()["error"]["message"], "User blocked from making LLM API Calls. User=blocked-co");
    // The header names it too, before the body.
    let mut s = h.start(
        "POST",
        "/v1/chat/completions",
        &[("authorization", format!("Bearer {}", key(1)).as_bytes()), ("x-litellm-customer-id", b"blocked-co")],
    );
    assert_eq!(s.send_body(CHAT.as_bytes()).unwrap().json()["error"]["code"], "customer_blocked");

    let refused = h.post("/v1/chat/completions", &key(1), &as_user("spent-co")).1.unwrap();
    assert_eq!((refused.status, refused.json()["error"]["type"].as_str()), (400, Some("budget_exceeded")));
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("End User=spent-co"));

    // One in flight at a time, across keys; two a minute.
    let (mut first, reply) = h.post("/v1/chat/completions", &key(1), &as_user("ada"));
    assert!(reply.is_none(), "{reply:?}");
    let refused = h.post("/v1/chat/completions", &key(2), &as_user("ada")).1.unwrap();
    assert_eq!(
        (refused.status, refused.json()["error"]["code"].as_str()),
        (429, Some("parallel_request_limit_reached"))
    );
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("the end user of this request"));
    first.respond(200, "application/json", &[openai_response(10, 5, 0).as_bytes()], true);
    first.finish();
    let (mut second, reply) = h.post("/v1/chat/completions", &key(2), &as_user("ada"));
    assert!(reply.is_none(), "{reply:?}");
    second.finish();
    let refused = h.post("/v1/chat/completions", &key(1), &as_user("ada")).1.unwrap();
    assert_eq!((refused.status, refused.json()["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")));

    // Anyone else, and no end user at all, is not limited.
    for body in [as_user("grace"), CHAT.to_owned(), CHAT.to_owned()] {
        let (mut s, reply) = h.post("/v1/chat/completions", &key(1), &body);
        assert!(reply.is_none(), "{reply:?}");
        s.finish();
    }
}

/// A customer's budget is reserved and settled on this Envoy's own count like a key's: once its
/// spend reaches `max_budget`, the next request that names it is refused.
#[test]
fn a_customers_budget_is_counted_on_each_envoy() {
    use sluice_core::customers::CustomerConfig;
    let mut cfg = base_config();
    cfg.customers =
        vec![CustomerConfig { customer_id: "ada".into(), max_budget: Some(0.0001), ..CustomerConfig::default() }];
    let h = Harness::new(cfg);
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"user":"ada","max_tokens":5}"#;
    spend_once(&h, &key(1), body); // past the budget
    let refused = h.post("/v1/chat/completions", &key(1), body).1.unwrap();
    assert_eq!((refused.status, refused.json()["error"]["code"].as_str()), (400, Some("budget_exceeded")));
    assert!(refused.json()["error"]["message"].as_str().unwrap().starts_with("End user budget has been exceeded!"));
    // Another end user of the same key is not.
    let other = body.replace("\"ada\"", "\"grace\"");
    assert!(h.post("/v1/chat/completions", &key(1), &other).1.is_none());
}

/// A key's user and organization (their rules come with a looked-up key): their models narrow
/// the key's, a blocked one refuses the key, and their limits count all of their keys together.
#[test]
fn a_keys_user_and_organization_rules_apply_to_it() {
    use sluice_core::config::OwnerPolicy;
    let mut cfg = base_config();
    let owned = |seed, user: &str| KeyConfig {
        user_id: Some(user.into()),
        organization_id: Some("acme".into()),
        user_policy: Some(OwnerPolicy { models: vec!["gpt-4o".into()], rpm_limit: Some(2), ..OwnerPolicy::default() }),
        organization_policy: Some(OwnerPolicy { max_parallel_requests: Some(1), ..OwnerPolicy::default() }),
        ..key_config(seed)
    };
    cfg.keys.push(owned(2, "alice"));
    cfg.keys.push(owned(3, "alice"));
    cfg.keys.push(KeyConfig {
        organization_id: Some("frozen".into()),
        organization_policy: Some(OwnerPolicy { blocked: true, ..OwnerPolicy::default() }),
        ..key_config(4)
    });
    let h = Harness::new(cfg);
    // The user's models.
    let reply = h.post("/v1/chat/completions", &key(2), r#"{"model":"gpt-4o-mini"}"#).1.unwrap();
    assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (403, Some("model_not_allowed")));
    // The organization's one request in flight, whichever of its keys holds it.
    let (mut in_flight, reply) = h.post("/v1/chat/completions", &key(2), CHAT);
    assert!(reply.is_none(), "{reply:?}");
    let reply = h.post("/v1/chat/completions", &key(3), CHAT).1.unwrap();
    assert_eq!(reply.json()["error"]["code"], "parallel_request_limit_reached");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("the organization of this API key"));
    in_flight.finish();
    // The user's RPM over both of its keys (the refusal above took none of it).
    let (mut second, reply) = h.post("/v1/chat/completions", &key(3), CHAT);
    assert!(reply.is_none(), "{reply:?}");
    second.finish();
    let reply = h.post("/v1/chat/completions", &key(2), CHAT).1.unwrap();
    assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")));
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("the user of this API key"));
    // A blocked organization refuses its keys before anything else.
    let reply = h.post("/v1/chat/completions", &key(4), CHAT).1.unwrap();
    assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (401, Some("organization_blocked")));
}

#[test]
fn counters_stay_exact_under_cas_conflicts() {
    let mut cfg = base_config();
    cfg.keys[0].rpm_limit = Some(5);
    let h = Harness::new(cfg);
    let mut admitted = 0;
    for _ in 0..8 {
        h.envoy.inject_conflicts.set(3);
        if h.post("/v1/chat/completions", &key(1), CHAT).1.is_none() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
}

#[test]
fn budget_reserves_then_settles_and_blocks_when_spent() {
    let mut cfg = base_config();
    // Each request reserves ≤ 2.5e-6*est + 1e-5*1000 ≈ $0.0101; real cost is $0.0035.
    cfg.keys[0].max_budget = Some(0.02);
    let h = Harness::new(cfg);
    let (mut a, _) = h.post("/v1/chat/completions", &key(1), CHAT);
    let (mut b, _) = h.post("/v1/chat/completions", &key(1), CHAT);
    // Two reservations in flight cover the budget: a third concurrent request must wait.
    let reply = h.post("/v1/chat/completions", &key(1), CHAT).1.unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "budget_exceeded");
    for s in [&mut a, &mut b] {
        s.respond(200, "application/json", &[openai_response(1000, 100, 0).as_bytes()], true);
        s.finish();
    }
    // Settled at $0.0035 each: $0.007 spent, room again.
    let mut spent = 0.007;
    while spent < 0.02 {
        let (mut s, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
        assert!(reply.is_none(), "refused at spend {spent}");
        s.respond(200, "application/json", &[openai_response(1000, 100, 0).as_bytes()], true);
        s.finish();
        spent += 0.0035;
    }
    assert!(spent < 0.02 + 0.0101, "overspend bounded by one reservation");
    assert_eq!(h.post("/v1/chat/completions", &key(1), CHAT).1.unwrap().status, 400);
}

fn sse(events: &[&str]) -> String {
    events.iter().map(|e| format!("data: {e}\n\n")).collect()
}

const CHUNK1: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}],"usage":null}"#;
const CHUNK2: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" world"},"finish_reason":"stop"}],"usage":null}"#;
const USAGE: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":2,"total_tokens":22}}"#;

/// A deployment nobody priced is served, its records say `price_unknown` beside the $0, and
/// the model group's `unpriced_requests` counts them: never a silent $0.
#[test]
fn an_unpriced_deployments_requests_are_flagged_and_counted() {
    let mut config = base_config();
    for d in &mut config.deployments {
        if d.id == "mini" {
            d.pricing = Pricing::default();
            d.price_unknown = true;
        }
    }
    let h = Harness::new(config);
    for (model, unpriced) in [("gpt-4o-mini", true), ("gpt-4o", false)] {
        let (mut s, reply) =
            h.post("/v1/chat/completions", &key(1), &format!(r#"{{"model":"{model}","messages":[]}}"#));
        assert!(reply.is_none());
        let body = r#"{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;
        s.respond(200, "application/json", &[body.as_bytes()], true);
        s.finish();
        let records = h.envoy.records();
        let r = records.last().unwrap();
        assert_eq!(r["price_unknown"], unpriced, "{model}");
        assert_eq!(r["cost_usd"].as_f64().unwrap() == 0.0, unpriced, "{model}");
    }
    h.gateway.flush_metrics(&MockHost::new(Rc::clone(&h.envoy)));
    assert_eq!(h.envoy.metric("sluice.unpriced_requests.model_group.gpt-4o-mini"), 1);
    assert_eq!(h.envoy.metric("sluice.unpriced_requests.model_group.gpt-4o"), 0);
}

/// LiteLLM's `drop_params`: what the provider cannot take is left out of an admitted request,
/// and counted per model group; without it the parameter is the client's 400, counted nowhere.
#[test]
fn dropped_parameters_are_counted_per_model_group() {
    let mut config = base_config();
    for d in &mut config.deployments {
        d.drop_params = d.id == "claude";
    }
    let h = Harness::new(config);
    let body = r#"{"model":"claude-3-5-sonnet","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"logit_bias":{"1":1},"seed":7}"#;
    let (s, reply) = h.post("/v1/chat/completions", &key(1), body);
    assert!(reply.is_none());
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert!(sent.get("logit_bias").is_none() && sent.get("seed").is_none(), "{sent}");
    h.report_metrics();
    assert_eq!(h.envoy.metric("sluice.dropped_params.model_group.claude-3-5-sonnet"), 2);
    // An OpenAI deployment takes them as they are: nothing dropped.
    let (_, reply) = h.post("/v1/chat/completions", &key(1), &body.replace("claude-3-5-sonnet", "gpt-4o"));
    assert!(reply.is_none());
    h.report_metrics();
    assert_eq!(h.envoy.metric("sluice.dropped_params.model_group.gpt-4o"), 0);
}

#[test]
fn openai_stream_gets_usage_added_then_stripped() {
    let h = Harness::new(base_config());
    let (mut s, reply) = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o","stream":true,"messages":[]}"#);
    assert!(reply.is_none());
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let stream = sse(&[CHUNK1, CHUNK2, USAGE, "[DONE]"]);
    // Split at awkward places: inside an event and inside the usage chunk.
    let bytes = stream.as_bytes();
    let delivered = s.respond(200, "text/event-stream", &[&bytes[..17], &bytes[17..300], &bytes[300..]], true);
    assert_eq!(String::from_utf8(delivered).unwrap(), sse(&[CHUNK1, CHUNK2, "[DONE]"]));
    s.finish();
    let r = &h.envoy.records()[0];
    assert_eq!((r["prompt_tokens"].as_u64(), r["completion_tokens"].as_u64()), (Some(20), Some(2)));
    assert_eq!(r["streamed"], true);
    assert_eq!(r["estimated"], false);
}

#[test]
fn a_client_that_asked_for_usage_keeps_it() {
    let h = Harness::new(base_config());
    let body = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#;
    let (mut s, _) = h.post("/v1/chat/completions", &key(1), body);
    let stream = sse(&[CHUNK1, USAGE, "[DONE]"]);
    assert_eq!(s.respond(200, "text/event-stream", &[stream.as_bytes()], true), stream.as_bytes());
    s.finish();
    assert_eq!(h.envoy.records()[0]["prompt_tokens"], 20);
}

#[test]
fn cancelled_stream_is_charged_for_what_was_delivered() {
    let h = Harness::new(base_config());
    let (mut s, _) = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o","stream":true}"#);
    let partial = sse(&[CHUNK1, CHUNK2]);
    s.respond(200, "text/event-stream", &[partial.as_bytes()], false);
    s.finish(); // the client went away: on_log without end of stream
    let r = &h.envoy.records()[0];
    assert_eq!(r["estimated"], true);
    assert_eq!(r["outcome"], "cancelled");
    assert_eq!(r["completion_tokens"], 3); // "Hello world" = 11 bytes ≈ 3 tokens
    assert!(r["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(r["cost_usd"].as_f64().unwrap() > 0.0);
}

#[test]
fn anthropic_messages_pass_through_with_the_provider_key() {
    let h = Harness::new(base_config());
    let body =
        r#"{"model":"claude-3-5-sonnet","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut s = h.start("POST", "/v1/messages", &[("x-api-key", key(1).as_bytes())]);
    assert!(s.send_body(body.as_bytes()).is_none());
    assert_eq!(s.host.request_header_str("x-api-key").as_deref(), Some("provider-secret-claude"));
    assert_eq!(s.host.request_header_str("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(s.host.request_header_str(":path").as_deref(), Some("/v1/messages"));
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert!(sent.get("stream_options").is_none(), "Anthropic bodies get no OpenAI fields");
    let events = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":30,\"output_tokens\":1,\"cache_read_input_tokens\":10}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    assert_eq!(s.respond(200, "text/event-stream", &[events.as_bytes()], true), events.as_bytes());
    s.finish();
    let r = &h.envoy.records()[0];
    assert_eq!(
        (r["prompt_tokens"].as_u64(), r["cached_prompt_tokens"].as_u64(), r["completion_tokens"].as_u64()),
        (Some(40), Some(10), Some(7))
    );
}

#[test]
fn an_anthropic_client_is_served_by_an_openai_deployment_both_ways() {
    let h = Harness::new(base_config());
    let body = r#"{"model":"gpt-4o-mini","max_tokens":64,"system":"Be brief.","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut s = h.start("POST", "/v1/messages", &[("x-api-key", key(1).as_bytes())]);
    assert!(s.send_body(body.as_bytes()).is_none());
    assert_eq!(s.host.request_header_str(":path").as_deref(), Some("/v1/chat/completions"));
    assert_eq!(s.host.request_header_str("authorization").as_deref(), Some("Bearer provider-secret-mini"));
    assert_eq!(s.host.request_header_str("x-api-key"), None);
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert_eq!(sent["messages"][0], serde_json::json!({"role": "system", "content": "Be brief."}));
    assert_eq!(sent["stream_options"]["include_usage"], true, "the gateway meters from the usage chunk");
    let chunks = concat!(
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":4,\"total_tokens\":24}}\n\n",
        "data: [DONE]\n\n",
    );
    let delivered = String::from_utf8(s.respond(200, "text/event-stream", &[chunks.as_bytes()], true)).unwrap();
    assert!(delivered.starts_with("event: message_start\n"), "{delivered}");
    assert!(delivered.contains(r#""delta":{"text":"Hi","type":"text_delta"}"#), "{delivered}");
    assert!(
        delivered.contains(r#""stop_reason":"end_turn""#)
            && delivered.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{delivered}"
    );
    s.finish();
    let r = &h.envoy.records()[0];
    assert_eq!(
        (r["prompt_tokens"].as_u64(), r["completion_tokens"].as_u64(), r["outcome"].as_str()),
        (Some(20), Some(4), Some("completed"))
    );
    assert_eq!(r["route"], "/v1/messages");
}

#[test]
fn an_openai_chat_client_is_served_by_an_anthropic_deployment_both_ways() {
    let h = Harness::new(base_config());
    let body = r#"{"model":"claude-3-5-sonnet","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"max_tokens":50}"#;
    let (mut s, reply) = h.post("/v1/chat/completions", &key(1), body);
    assert!(reply.is_none(), "{reply:?}");
    // Upstream: Anthropic's path, headers and body.
    assert_eq!(s.host.request_header_str(":path").as_deref(), Some("/v1/messages"));
    assert_eq!(s.host.request_header_str("x-api-key").as_deref(), Some("provider-secret-claude"));
    assert_eq!(s.host.request_header_str("authorization"), None);
    assert_eq!(s.host.request_header_str("anthropic-version").as_deref(), Some("2023-06-01"));
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert_eq!(sent["model"], "claude-3-5-sonnet-20241022");
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 50);
    assert_eq!(
        s.host.request_header_str("content-length"),
        Some(s.host.stream.request_body.borrow().len().to_string())
    );
    // Back: the answer in OpenAI's shape, sent whole at its end; metered as Anthropic reported.
    let answer = r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3,"cache_read_input_tokens":4}}"#;
    let (first, rest) = answer.split_at(20);
    let delivered = s.respond(200, "application/json", &[first.as_bytes(), rest.as_bytes()], true);
    assert_eq!(s.host.response_header_str("content-length"), None);
    let got: serde_json::Value = serde_json::from_slice(&delivered).unwrap();
    assert_eq!(got["object"], "chat.completion");
    assert_eq!(got["model"], "claude-3-5-sonnet");
    assert_eq!(got["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(got["choices"][0]["finish_reason"], "stop");
    assert_eq!(got["usage"]["prompt_tokens"], 16);
    s.finish();
    let r = &h.envoy.records()[0];
    assert_eq!(
        (r["prompt_tokens"].as_u64(), r["cached_prompt_tokens"].as_u64(), r["completion_tokens"].as_u64()),
        (Some(16), Some(4), Some(3))
    );
    assert_eq!((r["outcome"].as_str(), r["estimated"].as_bool()), (Some("completed"), Some(false)));
    assert!(r["cost_usd"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_translated_stream_reaches_the_client_as_openai_chunks_and_is_charged_in_full() {
    let h = Harness::new(base_config());
    let body = r#"{"model":"claude-3-5-sonnet","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let (mut s, reply) = h.post("/v1/chat/completions", &key(1), body);
    assert!(reply.is_none(), "{reply:?}");
    let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
    assert_eq!((sent["stream"].as_bool(), sent.get("stream_options")), (Some(true), None));
    let events = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let (a, b) = events.as_bytes().split_at(100);
    let delivered = String::from_utf8(s.respond(200, "text/event-stream", &[a, b], true)).unwrap();
    assert!(delivered.contains(r#""delta":{"content":"Hi"}"#), "{delivered}");
    assert!(delivered.contains(r#""finish_reason":"stop""#), "{delivered}");
    assert!(delivered.contains(r#""completion_tokens":7"#), "the usage chunk the client asked for: {delivered}");
    assert!(delivered.ends_with("data: [DONE]\n\n"), "{delivered}");
    s.finish();
    let r = &h.envoy.records()[0];
    assert_eq!((r["prompt_tokens"].as_u64(), r["completion_tokens"].as_u64()), (Some(30), Some(7)));
    assert_eq!((r["outcome"].as_str(), r["streamed"].as_bool()), (Some("completed"), Some(true)));
}

#[test]
fn a_translation_that_cannot_be_made_is_a_400_that_reserves_nothing_and_provider_errors_come_back_in_openai_shape() {
    let mut cfg = base_config();
    cfg.keys[0].rpm_limit = Some(1);
    let h = Harness::new(cfg);
    let body = r#"{"model":"claude-3-5-sonnet","messages":[],"logit_bias":{"1":1}}"#;
    let reply = h.post("/v1/chat/completions", &key(1), body).1.unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], "unsupported_params");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("logit_bias"));
    // The key's one request a minute was not spent on it.
    let body = r#"{"model":"claude-3-5-sonnet","messages":[{"role":"user","content":"hi"}]}"#;
    let (mut s, reply) = h.post("/v1/chat/completions", &key(1), body);
    assert!(reply.is_none(), "{reply:?}");
    let error = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let delivered = s.respond(529, "application/json", &[error], true);
    let got: serde_json::Value = serde_json::from_slice(&delivered).unwrap();
    assert_eq!(got["error"]["type"], "overloaded_error");
    assert_eq!(got["error"]["message"], "Overloaded");
    s.finish();
    assert_eq!(h.envoy.records()[0]["outcome"], "upstream_error");
}

#[test]
fn upstream_errors_and_garbage_are_recorded_honestly() {
    let h = Harness::new(base_config());
    let (mut s, _) = h.post("/v1/chat/completions", &key(1), CHAT);
    s.respond(500, "application/json", &[br#"{"error":{"message":"boom"}}"#], true);
    s.finish();
    let (mut s, _) = h.post("/v1/chat/completions", &key(1), CHAT);
    s.respond(200, "application/json", &[b"this is not json {{{"], true);
    s.finish();
    let records = h.envoy.records();
    assert_eq!((records[0]["outcome"].as_str(), records[0]["cost_usd"].as_f64()), (Some("upstream_error"), Some(0.0)));
    assert_eq!((records[1]["outcome"].as_str(), records[1]["estimated"].as_bool()), (Some("truncated"), Some(true)));
}

#[test]
fn records_are_logged_when_the_queue_is_unavailable() {
    let h = Harness::new(base_config());
    h.envoy.queue_available.set(false);
    let (mut s, _) = h.post("/v1/chat/completions", &key(1), CHAT);
    s.respond(200, "application/json", &[openai_response(5, 5, 0).as_bytes()], true);
    s.finish();
    s.finish(); // on_log twice must not double-count
    let logs = h.envoy.logs.borrow();
    let lines: Vec<_> = logs.iter().filter(|l| l.starts_with("sluice.usage ")).collect();
    assert_eq!(lines.len(), 1);
}

#[test]
fn weighted_routing_uses_every_deployment() {
    let mut cfg = base_config();
    cfg.deployments.push(Deployment { weight: 3, ..deployment("gpt4o-b", "gpt-4o", Provider::Openai, "gpt-4o") });
    let h = Harness::new(cfg);
    let mut seen = std::collections::HashMap::new();
    for i in 0..400u64 {
        let host = MockHost::new(Rc::clone(&h.envoy));
        host.stream.request_headers.borrow_mut().extend([
            (":method".to_string(), b"POST".to_vec()),
            (":path".to_string(), b"/v1/chat/completions".to_vec()),
            ("authorization".to_string(), format!("Bearer {}", key(1)).into_bytes()),
        ]);
        let flow =
            RequestFlow::new(host.clone(), Rc::clone(&h.gateway), sluice_core::routing::SplitMix64::new(i).next_u64());
        let mut s = Stream { host: host.clone(), flow };
        assert!(s.send_body(CHAT.as_bytes()).is_none());
        *seen.entry(host.request_header_str("x-sluice-cluster").unwrap()).or_insert(0) += 1;
    }
    let (a, b) = (seen["sluice_gpt4o-a"], seen["sluice_gpt4o-b"]);
    assert!(b > 2 * a && a > 50, "a={a} b={b}");
}

#[test]
fn a_body_is_validated_before_anything_is_reserved() {
    let mut cfg = base_config();
    cfg.keys[0].rpm_limit = Some(1);
    let h = Harness::new(cfg);
    // A duplicate member: whichever `model` a reader picked, the gateway would route on one and
    // the upstream might read the other.
    let (mut s, reply) = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o","model":"gpt-4o-mini"}"#);
    assert_eq!(reply.unwrap().status, 400);
    s.finish();
    assert!(h.envoy.records().is_empty(), "no upstream call, no record");
    // The one RPM slot was never taken: the next request is admitted.
    assert!(h.post("/v1/chat/completions", &key(1), CHAT).1.is_none());
}

#[test]
fn a_body_arriving_in_pieces_is_buffered_then_routed() {
    let h = Harness::new(base_config());
    let auth = format!("Bearer {}", key(1));
    let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", auth.as_bytes())]);
    assert_eq!(s.flow.on_request_headers(false), Action::Pause);
    let (first, rest) = CHAT.as_bytes().split_at(7);
    *s.host.stream.request_body.borrow_mut() = first.to_vec();
    assert_eq!(s.flow.on_request_body(first.len(), false), Action::Pause, "Envoy keeps buffering");
    assert_eq!(s.host.request_header_str("x-sluice-cluster"), None);
    s.host.stream.request_body.borrow_mut().extend_from_slice(rest);
    assert_eq!(s.flow.on_request_body(CHAT.len(), true), Action::Continue);
    assert_eq!(s.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_gpt4o-a"));
}

#[test]
fn a_chunked_body_over_the_limit_is_413() {
    let h = Harness::new(base_config());
    let auth = format!("Bearer {}", key(1));
    // No content-length: the limit is enforced as the body arrives.
    let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", auth.as_bytes())]);
    assert_eq!(s.flow.on_request_headers(false), Action::Pause);
    *s.host.stream.request_body.borrow_mut() = vec![b' '; 5000];
    s.flow.on_request_body(5000, false);
    assert_eq!(s.reply().unwrap().status, 413);
}

#[test]
fn record_ids_are_unique_even_when_clients_reuse_a_request_id() {
    let h = Harness::new(base_config());
    for random in [1u64, 2] {
        let auth = format!("Bearer {}", key(1));
        let host = MockHost::new(Rc::clone(&h.envoy));
        host.stream.request_headers.borrow_mut().extend([
            (":method".to_string(), b"POST".to_vec()),
            (":path".to_string(), b"/v1/chat/completions".to_vec()),
            ("authorization".to_string(), auth.into_bytes()),
            ("x-request-id".to_string(), b"client-chosen".to_vec()),
        ]);
        let flow = RequestFlow::new(host.clone(), Rc::clone(&h.gateway), random);
        let mut s = Stream { host, flow };
        assert!(s.send_body(CHAT.as_bytes()).is_none());
        s.flow.on_log();
    }
    let records = h.envoy.records();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["request_id"], records[1]["request_id"]);
    assert_ne!(records[0]["record_id"], records[1]["record_id"]);
    assert_eq!(records[0]["record_id"].as_str().unwrap().len(), 32);
}

#[test]
fn an_upstream_cut_is_truncated_not_cancelled() {
    let h = Harness::new(base_config());
    let (mut s, _) = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o","stream":true}"#);
    let partial = sse(&[CHUNK1]);
    s.respond(200, "text/event-stream", &[partial.as_bytes()], false);
    *s.host.stream.code_details.borrow_mut() = Some("upstream_reset_after_response_started{remote_reset}".into());
    s.finish();
    let r = &h.envoy.records()[0];
    assert_eq!((r["outcome"].as_str(), r["estimated"].as_bool()), (Some("truncated"), Some(true)));
}

// ---- keys looked up in the control plane (xDS mode) -----------------------------------------

pub(crate) mod lookup_support {
    use prost::Message;
    use sluice_core::config::{KeyLookupConfig, LookupRateConfig};
    use sluice_proto::gateway::v1::KeyLookupResponse;

    use super::*;

    pub fn xds_config(fail_open: bool) -> GatewayConfig {
        let mut cfg = base_config();
        cfg.keys.clear();
        cfg.key_lookup = Some(KeyLookupConfig {
            cluster: "sluice_control_plane".into(),
            timeout_ms: 1000,
            ttl_ms: 60_000,
            negative_ttl_ms: 5_000,
            fail_open,
            rate: LookupRateConfig::default(),
        });
        cfg
    }

    pub fn stored(seed: u8) -> KeyConfig {
        KeyConfig { key_id: Some(format!("key_{seed:02}")), ..key_config(seed) }
    }

    pub fn answer(key: Option<&KeyConfig>, team: Option<&TeamConfig>) -> Vec<u8> {
        KeyLookupResponse {
            key_json: key.map(|k| serde_json::to_string(k).unwrap()).unwrap_or_default(),
            team_json: team.map(|t| serde_json::to_string(t).unwrap()).unwrap_or_default(),
            ..KeyLookupResponse::default()
        }
        .encode_to_vec()
    }

    impl Stream {
        /// Headers then the whole body, with the lookup pending: the filter must hold both.
        pub fn send_body_awaiting_lookup(&mut self, body: &[u8]) {
            self.host.set_request_header("content-length", Some(body.len().to_string().as_bytes()));
            assert_eq!(self.flow.on_request_headers(false), Action::Pause);
            *self.host.stream.request_body.borrow_mut() = body.to_vec();
            assert_eq!(self.flow.on_request_body(body.len(), true), Action::Pause, "held until the key is known");
        }

        /// Delivers the control plane's answer to the call this request made.
        pub fn deliver(&mut self, status: u32, body: &[u8]) {
            let token = self.host.envoy.grpc_calls.borrow().last().unwrap().token;
            *self.host.stream.grpc_response.borrow_mut() = body.to_vec();
            self.flow.on_grpc_response(token, status, body.len());
        }
    }
}

/// LiteLLM's management paths: an xDS-mode Envoy routes them to the control plane, so the
/// filter lets them pass without a key check or a lookup (the control plane checks the key); a
/// standalone gateway says where the management API is.
#[test]
fn management_paths_pass_to_the_control_plane_or_are_refused_with_where_to_go() {
    let admin = [("authorization", b"Bearer sk-master-anything".as_slice())];
    let h = Harness::new(lookup_support::xds_config(false));
    let mut s = h.start("POST", "/key/generate", &[admin[0], ("x-sluice-cluster", b"sluice_gpt4o-a".as_slice())]);
    assert_eq!(s.flow.on_request_headers(false), Action::Continue);
    assert!(s.reply().is_none() && h.envoy.grpc_calls.borrow().is_empty(), "no lookup, no answer");
    // A client's choice of cluster is gone: the management route, never a deployment's.
    assert_eq!(s.host.request_header_str("x-sluice-cluster"), None);
    s.finish();
    assert!(h.envoy.records().is_empty(), "no usage record");
    let h = Harness::new(base_config());
    let mut s = h.start("POST", "/key/generate", &admin);
    s.flow.on_request_headers(false);
    let reply = s.reply().expect("answered here");
    assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (404, Some("management_api_unavailable")));
}

mod lookup {
    use prost::Message;
    use sluice_proto::gateway::v1::KeyLookupRequest;

    use super::lookup_support::*;
    use super::*;
    use crate::flow::KEY_LOOKUP_SERVICE;

    #[test]
    fn a_cache_miss_asks_once_then_the_key_is_served_from_cache() {
        let h = Harness::new(xds_config(false));
        let k = key(7);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        {
            let calls = h.envoy.grpc_calls.borrow();
            assert_eq!(calls.len(), 1);
            let call = &calls[0];
            assert_eq!(
                (call.cluster.as_str(), call.service.as_str(), call.method.as_str()),
                ("sluice_control_plane", KEY_LOOKUP_SERVICE, "Lookup")
            );
            assert_eq!(call.timeout_ms, 1000, "the config's lookup timeout");
            let asked = KeyLookupRequest::decode(call.message.as_slice()).unwrap();
            assert_eq!(asked.key_hash, format!("sha256:{}", KeyHash::of(k.as_bytes()).to_hex()));
            assert!(!String::from_utf8_lossy(&call.message).contains(&k), "the key itself never leaves Envoy");
        }
        s.deliver(0, &answer(Some(&stored(7)), None));
        assert!(s.reply().is_none(), "{:?}", s.reply());
        assert_eq!(s.host.stream.resumed.get(), 1, "the request goes on once routed");
        assert_eq!(s.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_gpt4o-a"));
        assert_eq!(s.host.request_header_str("authorization").as_deref(), Some("Bearer provider-secret-gpt4o-a"));
        s.respond(200, "application/json", &[openai_response(10, 5, 0).as_bytes()], true);
        s.finish();
        assert_eq!(h.envoy.records()[0]["key_id"], "key_07", "records carry the control plane's key id");

        // The next request with the same key: no call, routed at once.
        let (_, reply) = h.post("/v1/chat/completions", &k, CHAT);
        assert!(reply.is_none());
        assert_eq!(h.envoy.grpc_calls.borrow().len(), 1);
    }

    #[test]
    fn in_xds_mode_the_master_key_is_looked_up_and_short_garbage_is_not() {
        let mut cfg = xds_config(false);
        cfg.master_key_env = None; // what the control plane sends: no master key at all
        let h = Harness::new(cfg);
        // Too short to be a master key (and not a Sluice key): refused with no call.
        let (_, reply) = h.post("/v1/chat/completions", "sk-1234", CHAT);
        assert_eq!(reply.unwrap().status, 401);
        assert!(h.envoy.grpc_calls.borrow().is_empty());
        // Long enough: asked about, by digest only, and served as the control plane answers.
        let master = "sk-master-0123456789abcdef0123456789abcdef";
        let mut s =
            h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {master}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        {
            let calls = h.envoy.grpc_calls.borrow();
            assert_eq!(calls.len(), 1);
            let asked = KeyLookupRequest::decode(calls[0].message.as_slice()).unwrap();
            assert_eq!(asked.key_hash, format!("sha256:{}", KeyHash::of(master.as_bytes()).to_hex()));
            assert!(!String::from_utf8_lossy(&calls[0].message).contains(master));
        }
        let answered = KeyConfig {
            key_hash: Some(KeyHash::of(master.as_bytes())),
            key_id: Some("master".into()),
            ..KeyConfig::default()
        };
        s.deliver(0, &answer(Some(&answered), None));
        assert!(s.reply().is_none(), "{:?}", s.reply());
        s.respond(200, "application/json", &[openai_response(10, 5, 0).as_bytes()], true);
        s.finish();
        assert_eq!(h.envoy.records()[0]["key_id"], "master");
        // A long credential the control plane does not know is refused, and remembered.
        let (_, reply) = {
            let mut s = h.start(
                "POST",
                "/v1/chat/completions",
                &[("authorization", b"Bearer not-the-master-key-but-long-enough-0000")],
            );
            s.send_body_awaiting_lookup(CHAT.as_bytes());
            s.deliver(0, &answer(None, None));
            ((), s.reply())
        };
        assert_eq!(reply.unwrap().status, 401);
    }

    #[test]
    fn an_answer_before_the_body_lets_the_body_route_as_usual() {
        let h = Harness::new(xds_config(false));
        let k = key(8);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.host.set_request_header("content-length", Some(CHAT.len().to_string().as_bytes()));
        assert_eq!(s.flow.on_request_headers(false), Action::Pause);
        s.deliver(0, &answer(Some(&stored(8)), None));
        assert_eq!(s.host.stream.resumed.get(), 0, "nothing to resume: the body has not arrived");
        *s.host.stream.request_body.borrow_mut() = CHAT.as_bytes().to_vec();
        assert_eq!(s.flow.on_request_body(CHAT.len(), true), Action::Continue);
        assert_eq!(s.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_gpt4o-a"));
    }

    #[test]
    fn an_unknown_key_is_refused_and_remembered_for_a_while() {
        let h = Harness::new(xds_config(false));
        let k = key(9);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(None, None));
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (401, Some("invalid_api_key")));
        let (_, again) = h.post("/v1/chat/completions", &k, CHAT);
        assert_eq!(again.unwrap().status, 401);
        assert_eq!(h.envoy.grpc_calls.borrow().len(), 1, "the negative answer is cached");
        h.envoy.now_ms.set(NOW + 5_001);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        assert_eq!(h.envoy.grpc_calls.borrow().len(), 2, "asked again once it expired");
    }

    #[test]
    fn a_blocked_key_or_team_from_the_control_plane_gets_the_precise_error() {
        let h = Harness::new(xds_config(false));
        let cases = [
            (KeyConfig { blocked: true, ..stored(10) }, None, "key_blocked"),
            (
                KeyConfig { team_id: Some("ml".into()), ..stored(11) },
                Some(TeamConfig { team_id: "ml".into(), blocked: true, ..TeamConfig::default() }),
                "team_blocked",
            ),
            (KeyConfig { models: vec!["claude-3-5-sonnet".into()], ..stored(12) }, None, "model_not_allowed"),
        ];
        for (i, (stored_key, team, code)) in cases.iter().enumerate() {
            let k = key(10 + i as u8);
            let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
            s.send_body_awaiting_lookup(CHAT.as_bytes());
            s.deliver(0, &answer(Some(stored_key), team.as_ref()));
            assert_eq!(s.reply().unwrap().json()["error"]["code"].as_str(), Some(*code));
            assert_eq!(s.host.stream.resumed.get(), 0);
        }
    }

    #[test]
    fn a_team_limit_from_the_control_plane_is_enforced() {
        let h = Harness::new(xds_config(false));
        let team = TeamConfig { team_id: "ml".into(), rpm_limit: Some(1), ..TeamConfig::default() };
        let k = key(13);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&KeyConfig { team_id: Some("ml".into()), ..stored(13) }), Some(&team)));
        assert!(s.reply().is_none());
        let (_, second) = h.post("/v1/chat/completions", &k, CHAT);
        let second = second.unwrap();
        assert_eq!((second.status, second.json()["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")));
    }

    #[test]
    fn an_unreachable_control_plane_fails_closed_and_is_asked_again() {
        let h = Harness::new(xds_config(false));
        let k = key(14);
        for status in [14, 4] {
            // UNAVAILABLE, then DEADLINE_EXCEEDED.
            let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
            s.send_body_awaiting_lookup(CHAT.as_bytes());
            s.deliver(status, b"");
            let reply = s.reply().unwrap();
            assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (503, Some("key_service_unavailable")));
            assert!(!String::from_utf8_lossy(&reply.body).contains(&k));
            assert!(s.host.request_header_str("x-sluice-cluster").is_none(), "nothing routed upstream");
        }
        assert_eq!(h.envoy.grpc_calls.borrow().len(), 2, "a failure is not cached");
        // Garbage from the control plane is a failure too, not a key.
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, b"\xff\xfe not protobuf");
        assert_eq!(s.reply().unwrap().status, 503);
        // And a call Envoy refuses to start.
        h.envoy.grpc_refused.set(true);
        let (_, refused) = h.post("/v1/chat/completions", &k, CHAT);
        assert_eq!(refused.unwrap().status, 503);
    }

    #[test]
    fn fail_open_admits_an_unchecked_key_without_limits() {
        let h = Harness::new(xds_config(true));
        let k = key(15);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(14, b"");
        assert!(s.reply().is_none());
        assert_eq!(s.host.stream.resumed.get(), 1);
        s.respond(200, "application/json", &[openai_response(10, 5, 0).as_bytes()], true);
        s.finish();
        let id = h.envoy.records()[0]["key_id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("unverified:"), "{id}");
        assert!(h.envoy.logs.borrow().iter().all(|l| !l.contains(&k)));
    }

    #[test]
    fn an_answer_about_another_key_is_not_trusted() {
        let h = Harness::new(xds_config(false));
        let k = key(16);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&stored(17)), None));
        assert_eq!(s.reply().unwrap().status, 503);
    }

    #[test]
    fn invalidation_drops_keys_by_id_and_by_team() {
        let h = Harness::new(xds_config(false));
        let team = TeamConfig { team_id: "ml".into(), ..TeamConfig::default() };
        for (seed, t) in [(20u8, None), (21, Some(&team))] {
            let k = key(seed);
            let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
            s.send_body_awaiting_lookup(CHAT.as_bytes());
            let cfg = KeyConfig { team_id: t.map(|t| t.team_id.clone()), ..stored(seed) };
            s.deliver(0, &answer(Some(&cfg), t));
        }
        assert_eq!(h.gateway.key_cache.borrow().len(), 2);
        h.gateway.apply_invalidations("1 t ml", NOW);
        assert_eq!(h.gateway.key_cache.borrow().len(), 1);
        h.gateway.apply_invalidations("1 t ml\n2 k key_20", NOW);
        assert!(h.gateway.key_cache.borrow().is_empty());
        let k = key(20);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        assert_eq!(h.envoy.grpc_calls.borrow().len(), 3, "a dropped key is asked about again");
    }

    #[test]
    fn models_lists_what_a_looked_up_key_may_use() {
        let h = Harness::new(xds_config(false));
        let k = key(22);
        let mut s = h.start("GET", "/v1/models", &[("authorization", format!("Bearer {k}").as_bytes())]);
        assert_eq!(s.flow.on_request_headers(true), Action::Pause);
        assert!(s.reply().is_none(), "answered once the key is known");
        s.deliver(0, &answer(Some(&KeyConfig { models: vec!["gpt-4o".into()], ..stored(22) }), None));
        let listed: Vec<String> = s.reply().unwrap().json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(listed, ["gpt-4o"]);
    }
}

mod lookup_edges {
    use super::lookup_support::*;
    use super::*;

    fn bearer(k: &str) -> String {
        format!("Bearer {k}")
    }

    #[test]
    fn a_cache_hit_makes_no_call_and_is_counted_on_the_tick() {
        let h = Harness::new(xds_config(false));
        let k = key(40);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", bearer(&k).as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&stored(40)), None));
        for _ in 0..3 {
            let (_, reply) = h.post("/v1/chat/completions", &k, CHAT);
            assert!(reply.is_none());
        }
        assert_eq!(h.envoy.grpc_calls.borrow().len(), 1);
        assert_eq!(h.envoy.metric("sluice.key_lookups"), 1);
        assert_eq!(h.envoy.metric("sluice.key_cache.hits"), 0, "not reported from the request path");
        h.gateway.flush_metrics(&MockHost::new(Rc::clone(&h.envoy)));
        assert_eq!(h.envoy.metric("sluice.key_cache.hits"), 3);
        h.gateway.flush_metrics(&MockHost::new(Rc::clone(&h.envoy)));
        assert_eq!(h.envoy.metric("sluice.key_cache.hits"), 3, "each hit reported once");
    }

    #[test]
    fn a_request_refused_without_its_key_costs_no_call() {
        let h = Harness::new(xds_config(false));
        let k = key(41);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", bearer(&k).as_bytes())]);
        s.host.set_request_header("content-length", Some(b"1000000"));
        assert_eq!(s.flow.on_request_headers(false), Action::Pause);
        assert_eq!(s.reply().unwrap().status, 413);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", bearer(&k).as_bytes())]);
        s.flow.on_request_headers(true);
        assert_eq!(s.reply().unwrap().json()["error"]["code"], "missing_model");
        assert!(h.envoy.grpc_calls.borrow().is_empty());
    }

    #[test]
    fn an_answer_for_a_request_refused_meanwhile_is_only_cached() {
        let h = Harness::new(xds_config(false));
        for (seed, found) in [(42u8, false), (43, true)] {
            let k = key(seed);
            let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", bearer(&k).as_bytes())]);
            assert_eq!(s.flow.on_request_headers(false), Action::Pause, "no content-length: a chunked upload");
            // The body grows past the limit while the lookup is pending.
            assert_eq!(s.flow.on_request_body(5000, false), Action::Pause);
            assert_eq!(s.reply().unwrap().status, 413);
            let stored_key = stored(seed);
            s.deliver(0, &answer(found.then_some(&stored_key), None));
            assert_eq!(s.reply().unwrap().status, 413, "one reply per request");
            assert_eq!(s.host.stream.resumed.get(), 0);
            // The answer was kept: the next request with the key asks nobody.
            let calls = h.envoy.grpc_calls.borrow().len();
            let (_, reply) = h.post("/v1/chat/completions", &k, CHAT);
            assert_eq!(reply.map(|r| r.status), if found { None } else { Some(401) });
            assert_eq!(h.envoy.grpc_calls.borrow().len(), calls);
        }
    }

    #[test]
    fn neither_the_key_nor_its_digest_is_ever_logged_or_echoed() {
        let mut seen = Vec::new();
        let mut secrets = Vec::new();
        for fail_open in [false, true] {
            let h = Harness::new(xds_config(fail_open));
            let cases: [(u8, u32, Vec<u8>); 5] = [
                (50, 0, answer(None, None)),
                (51, 0, answer(Some(&KeyConfig { blocked: true, ..stored(51) }), None)),
                (52, 14, Vec::new()),
                (53, 0, b"not protobuf".to_vec()),
                // An answer the filter cannot use (an invalid budget) is logged: without the key.
                (54, 0, answer(Some(&KeyConfig { max_budget: Some(-1.0), ..stored(54) }), None)),
            ];
            for (seed, status, body) in cases {
                let k = key(seed);
                let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", bearer(&k).as_bytes())]);
                s.send_body_awaiting_lookup(CHAT.as_bytes());
                s.deliver(status, &body);
                if let Some(reply) = s.reply() {
                    seen.push(String::from_utf8_lossy(&reply.body).into_owned());
                } else {
                    s.respond(200, "application/json", &[openai_response(10, 5, 0).as_bytes()], true);
                    s.finish();
                }
                let digest = KeyHash::of(k.as_bytes()).to_hex();
                secrets.push(k);
                secrets.push(digest);
            }
            seen.extend(h.envoy.logs.borrow().iter().cloned());
            seen.extend(h.envoy.queue.borrow().iter().map(|r| String::from_utf8_lossy(r).into_owned()));
        }
        assert!(seen.len() > 5, "{seen:?}");
        for text in &seen {
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "{text:?} reveals a key or its digest");
            }
        }
    }
}

mod shared_keys {
    use super::lookup_support::*;
    use super::*;
    use crate::key_cache::{SHARED_SLOTS, SharedEntry, read_shared, write_shared};

    #[test]
    fn shared_answers_stay_within_their_slots_however_many_keys_an_envoy_serves() {
        let envoy = MockEnvoy::new(NOW);
        let host = MockHost::new(Rc::clone(&envoy));
        let hash = |i: u64| KeyHash::of(&i.to_le_bytes());
        let total = u64::from(SHARED_SLOTS) * 3;
        for i in 0..total {
            write_shared(&host, &SharedEntry { fetched_ms: i, seq: 0, hash: hash(i), answer: vec![7; 16] });
        }
        assert!(envoy.shared_len() <= SHARED_SLOTS as usize, "{} entries", envoy.shared_len());
        // The keys fetched last are the ones kept, each under its own digest.
        for i in total - 1_000..total {
            let entry = read_shared(&host, &hash(i)).unwrap_or_else(|| panic!("key {i} was displaced"));
            assert_eq!((entry.hash, entry.fetched_ms), (hash(i), i));
        }
        // Writing a key again rewrites its slot in place.
        let before = envoy.shared_len();
        write_shared(&host, &SharedEntry { fetched_ms: total, seq: 1, hash: hash(total - 1), answer: vec![] });
        assert_eq!(envoy.shared_len(), before);
        assert_eq!(read_shared(&host, &hash(total - 1)).unwrap().seq, 1);
    }

    #[test]
    fn a_looked_up_key_writes_counters_only_for_its_limited_scopes() {
        let envoy = MockEnvoy::new(NOW);
        let h = Harness::on(Rc::clone(&envoy), xds_config(false));
        let before = envoy.shared_len();
        let mut s =
            h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {}", key(31)).as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&stored(31)), None));
        assert_eq!(envoy.shared_len(), before + 1, "an unlimited key adds its shared answer only");
        let limited = KeyConfig { rpm_limit: Some(10), ..stored(32) };
        let mut s =
            h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {}", key(32)).as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&limited), None));
        assert_eq!(envoy.shared_len(), before + 3, "a limited key adds its answer and its counter");
    }

    #[test]
    fn a_key_one_worker_looked_up_is_known_to_the_others() {
        let envoy = MockEnvoy::new(NOW);
        let a = Harness::on(Rc::clone(&envoy), xds_config(false));
        let b = Harness::on(Rc::clone(&envoy), xds_config(false));
        let k = key(30);
        let mut s = a.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&stored(30)), None));
        let (_, reply) = b.post("/v1/chat/completions", &k, CHAT);
        assert!(reply.is_none(), "{reply:?}");
        assert_eq!(envoy.grpc_calls.borrow().len(), 1, "the other worker asked nobody");
        assert_eq!(envoy.metric("sluice.key_cache.shared_hits"), 1);
    }

    #[test]
    fn a_known_key_outlives_its_ttl_while_the_control_plane_is_down() {
        let envoy = MockEnvoy::new(NOW);
        let a = Harness::on(Rc::clone(&envoy), xds_config(false));
        let b = Harness::on(Rc::clone(&envoy), xds_config(false));
        let k = key(31);
        let mut s = a.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&stored(31)), None));
        envoy.now_ms.set(NOW + 120_000); // past the 60 s TTL
        for h in [&a, &b] {
            let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
            s.send_body_awaiting_lookup(CHAT.as_bytes());
            s.deliver(14, b""); // UNAVAILABLE
            assert!(s.reply().is_none(), "{:?}", s.reply());
            assert_eq!(s.host.stream.resumed.get(), 1);
        }
        assert_eq!(envoy.metric("sluice.key_cache.stale_served"), 2);
        // While the control plane stays away, the next requests are served without waiting
        // for another failed call; a few seconds later the worker asks again.
        let calls = envoy.grpc_calls.borrow().len();
        assert!(a.post("/v1/chat/completions", &k, CHAT).1.is_none());
        assert_eq!(envoy.grpc_calls.borrow().len(), calls, "no call within the retry period");
        envoy.now_ms.set(NOW + 126_000);
        let mut s = a.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        assert_eq!(envoy.grpc_calls.borrow().len(), calls + 1, "asked again once the retry period is over");
    }

    #[test]
    fn a_shared_entry_written_before_an_invalidation_is_not_trusted() {
        let envoy = MockEnvoy::new(NOW);
        let a = Harness::on(Rc::clone(&envoy), xds_config(false));
        let b = Harness::on(Rc::clone(&envoy), xds_config(false));
        let k = key(32);
        let mut s = a.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&stored(32)), None));
        // The key is blocked: worker b hears of it before it ever used the key.
        b.gateway.apply_invalidations("1 k key_32", NOW);
        let mut s = b.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        assert_eq!(envoy.grpc_calls.borrow().len(), 2, "asked again instead of trusting the old answer");
    }
}

mod resets {
    use super::lookup_support::*;
    use super::*;

    #[test]
    fn after_a_reset_known_keys_are_confirmed_again_but_still_serve_through_an_outage() {
        let envoy = MockEnvoy::new(NOW);
        let a = Harness::on(Rc::clone(&envoy), xds_config(false));
        let b = Harness::on(Rc::clone(&envoy), xds_config(false));
        let k = key(40);
        let mut s = a.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&stored(40)), None));
        // The singleton's watch starts (or the control plane restarted): both workers reset.
        for h in [&a, &b] {
            h.gateway.apply_invalidations("1 r -", NOW);
            let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
            s.send_body_awaiting_lookup(CHAT.as_bytes());
            s.deliver(14, b""); // the control plane is unreachable: the known key still serves
            assert!(s.reply().is_none(), "{:?}", s.reply());
        }
        assert_eq!(envoy.grpc_calls.borrow().len(), 3, "each worker asked to confirm it first");
    }

    #[test]
    fn a_revoked_key_never_serves_even_through_an_outage() {
        let envoy = MockEnvoy::new(NOW);
        let a = Harness::on(Rc::clone(&envoy), xds_config(false));
        let k = key(41);
        let mut s = a.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&stored(41)), None));
        a.gateway.apply_invalidations("1 k key_41", NOW);
        let mut s = a.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(14, b"");
        assert_eq!(s.reply().unwrap().status, 503);
    }
}

mod fleet_budgets {
    use super::lookup_support::*;
    use super::*;

    #[test]
    fn a_key_or_team_whose_budget_the_fleet_spent_is_refused_with_the_fleet_figures() {
        let h = Harness::new(xds_config(false));
        let cases = [
            (
                KeyConfig { max_budget: Some(1.0), fleet_spend: Some(1.25), ..stored(50) },
                None,
                "Current cost: 1.250000",
            ),
            (
                KeyConfig { team_id: Some("ml".into()), fleet_spend: Some(0.5), max_budget: Some(1.0), ..stored(51) },
                Some(TeamConfig {
                    team_id: "ml".into(),
                    max_budget: Some(2.0),
                    fleet_spend: Some(2.0),
                    ..TeamConfig::default()
                }),
                "Team budget has been exceeded",
            ),
        ];
        for (i, (cfg, team, message)) in cases.iter().enumerate() {
            let k = key(50 + i as u8);
            let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
            s.send_body_awaiting_lookup(CHAT.as_bytes());
            s.deliver(0, &answer(Some(cfg), team.as_ref()));
            let reply = s.reply().unwrap();
            assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (400, Some("budget_exceeded")));
            assert!(reply.json()["error"]["message"].as_str().unwrap().contains(message), "{:?}", reply.json());
        }
        // Under budget across the fleet: admitted.
        let k = key(52);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&KeyConfig { max_budget: Some(1.0), fleet_spend: Some(0.5), ..stored(52) }), None));
        assert!(s.reply().is_none());
    }

    /// LiteLLM's `model_max_budget`: the key's budget for one model, spent across the fleet,
    /// refuses that model only.
    #[test]
    fn a_keys_model_budget_the_fleet_spent_refuses_that_model_only() {
        let h = Harness::new(xds_config(false));
        let cfg = KeyConfig {
            model_max_budget: [("gpt-4o".to_string(), 0.5)].into(),
            model_fleet_spend: [("gpt-4o".to_string(), 0.5)].into(),
            ..stored(53)
        };
        let k = key(53);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&cfg), None));
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (400, Some("budget_exceeded")));
        let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.starts_with("This API key's budget for the model has been exceeded! Current cost: 0.500000"));
        let other = CHAT.replace("gpt-4o", "gpt-4o-mini");
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        let reply = s.send_body(other.as_bytes());
        assert!(reply.is_none(), "another model is not limited: {reply:?}");
    }
}

mod owner_budgets {
    use super::lookup_support::*;
    use super::*;

    fn alice(seed: u8, spend: f64) -> KeyConfig {
        KeyConfig {
            user_id: Some("alice".into()),
            user_max_budget: Some(1.0),
            user_fleet_spend: Some(spend),
            ..stored(seed)
        }
    }

    #[test]
    fn a_spent_user_or_organization_budget_refuses_every_key_of_it_until_the_window_resets() {
        let envoy = MockEnvoy::new(NOW);
        let a = Harness::on(Rc::clone(&envoy), xds_config(false));
        let b = Harness::on(Rc::clone(&envoy), xds_config(false));
        let calls = || envoy.grpc_calls.borrow().len();
        let request = |h: &Harness, seed: u8, answer_with: Option<KeyConfig>| {
            let k = key(seed);
            let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
            match answer_with {
                Some(cfg) => {
                    s.send_body_awaiting_lookup(CHAT.as_bytes());
                    s.deliver(0, &answer(Some(&cfg), None));
                }
                None => {
                    s.host.set_request_header("content-length", Some(CHAT.len().to_string().as_bytes()));
                    s.flow.on_request_headers(false);
                    *s.host.stream.request_body.borrow_mut() = CHAT.as_bytes().to_vec();
                    s.flow.on_request_body(CHAT.len(), true);
                }
            }
            s.reply()
        };
        // Two keys of alice and one of bob, under budget: served, then cached.
        assert!(request(&a, 60, Some(alice(60, 0.5))).is_none());
        assert!(request(&a, 61, Some(alice(61, 0.5))).is_none());
        let bob = KeyConfig { user_id: Some("bob".into()), organization_id: Some("acme".into()), ..stored(62) };
        assert!(request(&a, 62, Some(bob.clone())).is_none());
        assert_eq!(calls(), 3);
        assert!(request(&a, 60, None).is_none(), "a cache hit");
        assert_eq!(calls(), 3);

        // The control plane counted alice's budget spent on another Envoy: every key of hers
        // is dropped (bob's stays) and asked about again, on this worker and on another one
        // that would otherwise trust the shared entry written before the invalidation.
        for h in [&a, &b] {
            h.gateway.apply_invalidations("1 u alice", NOW);
        }
        assert!(request(&a, 62, None).is_none(), "bob's key is still cached");
        assert_eq!(calls(), 3);
        for (h, seed) in [(&a, 60), (&b, 61)] {
            let before = calls();
            let reply = request(h, seed, Some(alice(seed, 1.25))).expect("refused");
            assert_eq!(calls(), before + 1, "looked up again");
            assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (400, Some("budget_exceeded")));
            assert_eq!(
                reply.json()["error"]["message"],
                "Budget has been exceeded! User=alice Current cost: 1.250000, Max budget: 1.000000"
            );
        }
        // The refusal is cached like any answer: no call per request while it lasts.
        let before = calls();
        assert_eq!(request(&a, 60, None).map(|r| r.status), Some(400));
        assert_eq!(calls(), before);

        // An organization's budget, the same way (the key's organization travels with it).
        a.gateway.apply_invalidations("1 u alice\n2 o acme", NOW);
        let spent = KeyConfig { organization_max_budget: Some(5.0), organization_fleet_spend: Some(5.0), ..bob };
        let reply = request(&a, 62, Some(spent)).expect("refused");
        assert_eq!(reply.status, 400);
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Budget has been exceeded! Organization=acme"),
            "{:?}",
            reply.json()
        );

        // The window ends: the control plane names alice again, and the new window's spend lets
        // her keys through.
        a.gateway.apply_invalidations("1 u alice\n2 o acme\n3 u alice", NOW);
        assert!(request(&a, 60, Some(alice(60, 0.0))).is_none());

        // Her budget in a team (LiteLLM's team member budget), spent: LiteLLM's words, naming
        // the member and the team; under it, served.
        let member = |spend| KeyConfig {
            team_id: Some("ml".into()),
            member_max_budget: Some(2.0),
            member_fleet_spend: Some(spend),
            ..alice(63, 0.0)
        };
        let team = TeamConfig { team_id: "ml".into(), ..TeamConfig::default() };
        let k = key(63);
        let mut s = a.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&member(2.5)), Some(&team)));
        let reply = s.reply().expect("refused");
        assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (400, Some("budget_exceeded")));
        assert_eq!(
            reply.json()["error"]["message"],
            "Budget has been exceeded! Team member=alice in team=ml Current cost: 2.500000, Max budget: 2.000000"
        );
        a.gateway.apply_invalidations("1 u alice\n2 o acme\n3 u alice\n4 u alice", NOW);
        let mut s = a.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&member(1.0)), Some(&team)));
        assert!(s.reply().is_none(), "{:?}", s.reply());
    }
}

mod fleet_limits {
    use super::lookup_support::*;
    use super::*;
    use crate::counters;
    use sluice_core::fleet::window_of;

    /// A looked-up key with an RPM limit, admitted once on this Envoy.
    fn limited_key(h: &Harness, seed: u8, rpm: u64) -> String {
        let k = key(seed);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&KeyConfig { rpm_limit: Some(rpm), ..stored(seed) }), None));
        assert!(s.reply().is_none(), "{:?}", s.reply());
        k
    }

    #[test]
    fn a_scope_is_announced_again_at_each_tenth_of_its_limit() {
        let h = Harness::new(xds_config(false));
        let k = limited_key(&h, 64, 30); // a checkpoint every 3 requests
        for _ in 0..8 {
            assert!(h.post("/v1/chat/completions", &k, CHAT).1.is_none());
        }
        // The first admission (new this minute), then the 3rd, 6th and 9th.
        assert_eq!(h.envoy.announced_scopes.borrow().len(), 4);
    }

    #[test]
    fn a_worker_announces_each_limited_scope_once_a_minute() {
        let h = Harness::new(xds_config(false));
        let k = limited_key(&h, 60, 100);
        assert!(h.post("/v1/chat/completions", &k, CHAT).1.is_none());
        // An unlimited key needs no fleet sync.
        let free = key(61);
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {free}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        s.deliver(0, &answer(Some(&stored(61)), None));
        assert!(s.reply().is_none());
        assert_eq!(*h.envoy.announced_scopes.borrow(), ["sluice:k:key_60"]);
        h.envoy.now_ms.set(NOW + 50_000); // the next minute, within the key's cache TTL
        assert!(h.post("/v1/chat/completions", &k, CHAT).1.is_none());
        assert_eq!(h.envoy.announced_scopes.borrow().len(), 2, "announced again in the next minute");
    }

    #[test]
    fn a_looked_up_key_starts_from_the_fleets_counts() {
        use prost::Message;
        use sluice_proto::gateway::v1::{KeyLookupResponse, ScopeCounts};
        let h = Harness::new(xds_config(false));
        let k = key(63);
        let config = KeyConfig { rpm_limit: Some(10), ..stored(63) };
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        s.send_body_awaiting_lookup(CHAT.as_bytes());
        let counts = |scope: &str, requests| ScopeCounts { scope: scope.into(), requests, tokens: 0 };
        let response = KeyLookupResponse {
            key_json: serde_json::to_string(&config).unwrap(),
            fleet_window: window_of(NOW),
            // The fleet used 9 of the key's 10; the other name is not this key's counter and
            // must not be written.
            fleet_counts: vec![counts("sluice:k:key_63", 9), counts("sluice:k:key_99", 5)],
            ..KeyLookupResponse::default()
        };
        s.deliver(0, &response.encode_to_vec());
        assert!(s.reply().is_none(), "the 10th request of the minute is admitted");
        s.respond(200, "application/json", &[openai_response(10, 1, 0).as_bytes()], true);
        assert_eq!(s.host.response_header_str("x-ratelimit-remaining-requests").as_deref(), Some("0"));
        s.finish();
        let reply = h.post("/v1/chat/completions", &k, CHAT).1.unwrap();
        assert_eq!(reply.status, 429);
        assert_eq!(h.envoy.shared_len(), 2, "the answer and this key's counter only");
    }

    #[test]
    fn standalone_mode_announces_nothing() {
        let mut cfg = base_config();
        cfg.keys[0].rpm_limit = Some(5);
        let h = Harness::new(cfg);
        assert!(h.post("/v1/chat/completions", &key(1), CHAT).1.is_none());
        assert!(h.envoy.announced_scopes.borrow().is_empty());
    }

    #[test]
    fn what_the_other_envoys_counted_limits_this_one() {
        let h = Harness::new(xds_config(false));
        let k = limited_key(&h, 62, 10);
        let window = window_of(NOW);
        assert_eq!(counters::local_counts(&MockHost::new(Rc::clone(&h.envoy)), "sluice:k:key_62", window), (1, 0));
        // The sync answer: the rest of the fleet used 7 of the 10 requests this minute.
        assert!(counters::set_remote(&MockHost::new(Rc::clone(&h.envoy)), "sluice:k:key_62", window, 7, 0));
        let (mut s, reply) = h.post("/v1/chat/completions", &k, CHAT);
        assert!(reply.is_none());
        s.respond(200, "application/json", &[openai_response(10, 1, 0).as_bytes()], true);
        assert_eq!(s.host.response_header_str("x-ratelimit-remaining-requests").as_deref(), Some("1"));
        s.finish();
        assert!(h.post("/v1/chat/completions", &k, CHAT).1.is_none());
        let reply = h.post("/v1/chat/completions", &k, CHAT).1.unwrap();
        assert_eq!((reply.status, reply.header("x-ratelimit-remaining-requests")), (429, Some("0")));
        // Only this Envoy's own requests are reported back to the fleet.
        assert_eq!(counters::local_counts(&MockHost::new(Rc::clone(&h.envoy)), "sluice:k:key_62", window), (3, 0));
    }
}

mod host_call_budget {
    use super::*;

    /// Each call crosses the VM boundary (a copy and a context switch in V8): the hot path's
    /// main cost above the floor of any wasm filter. A change that adds one must say why.
    /// (18 with the body rewritten for the deployment's model name: the request's and the
    /// response's headers are read in one call each; only the credential headers the client
    /// sent are removed.)
    #[test]
    fn an_admitted_request_with_every_limit_costs_at_most_18_host_calls() {
        let mut cfg = base_config();
        cfg.keys[0].rpm_limit = Some(1_000_000);
        cfg.keys[0].tpm_limit = Some(1_000_000_000);
        cfg.keys[0].max_budget = Some(1_000_000.0);
        let h = Harness::new(cfg);
        let mut s =
            h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {}", key(1)).as_bytes())]);
        *s.host.stream.request_body.borrow_mut() = CHAT.as_bytes().to_vec();
        h.envoy.host_calls.borrow_mut().clear();
        assert_eq!(s.flow.on_request_headers(false), Action::Pause);
        assert_eq!(s.flow.on_request_body(CHAT.len(), true), Action::Continue);
        s.respond(200, "application/json", &[openai_response(10, 5, 0).as_bytes()], true);
        s.finish();
        let calls = h.envoy.host_calls.borrow();
        assert!(calls.len() <= 18, "{} host calls: {calls:?}", calls.len());
        assert_eq!(calls.iter().filter(|c| c.ends_with("_headers")).count(), 2, "{calls:?}");
        // Metrics and usage records are batched per worker; nothing is logged.
        assert!(!calls.iter().any(|c| matches!(*c, "count" | "log")), "{calls:?}");
        // One read and one write of the key's counter at admission, the same at settlement.
        assert_eq!(calls.iter().filter(|c| **c == "shared_get").count(), 2);
        assert_eq!(calls.iter().filter(|c| **c == "shared_set").count(), 2);
    }
}

mod lookup_budget {
    use sluice_core::config::LookupRateConfig;

    use super::lookup_support::*;
    use super::*;
    use crate::mock_host::LocalReply;

    /// An xDS config whose workers may start `per_second` lookups a second, `burst` at once,
    /// and each client `per_source` a second (`per_source_burst` at once; 0: no per-client
    /// buckets).
    fn limited(per_second: u32, burst: u32, per_source: u32, per_source_burst: u32) -> GatewayConfig {
        let mut cfg = xds_config(false);
        if let Some(lookup) = cfg.key_lookup.as_mut() {
            lookup.rate = LookupRateConfig {
                per_second,
                burst,
                per_source_per_second: per_source,
                per_source_burst,
                ..LookupRateConfig::default()
            };
        }
        cfg
    }

    /// A well-formed key no one issued (its checksum is right: anyone can compute it).
    fn forged(i: u32) -> String {
        let mut random = KeyHash::of(&i.to_le_bytes()).0.to_vec();
        random.extend_from_slice(&KeyHash::of(&(!i).to_le_bytes()).0);
        key_from_random(&random).unwrap()
    }

    /// A chat request with `k` from `source`, its headers and body played; the reply if the
    /// filter answered locally (None: waiting for a lookup, or routed upstream).
    fn ask(h: &Harness, k: &str, source: Option<&str>) -> (Stream, Option<LocalReply>) {
        let mut s = h.start("POST", "/v1/chat/completions", &[("authorization", format!("Bearer {k}").as_bytes())]);
        *s.host.stream.source_address.borrow_mut() = source.map(str::to_owned);
        s.host.set_request_header("content-length", Some(CHAT.len().to_string().as_bytes()));
        s.flow.on_request_headers(false);
        if s.reply().is_none() {
            *s.host.stream.request_body.borrow_mut() = CHAT.as_bytes().to_vec();
            s.flow.on_request_body(CHAT.len(), true);
        }
        let reply = s.reply();
        (s, reply)
    }

    fn calls(h: &Harness) -> usize {
        h.envoy.grpc_calls.borrow().len()
    }

    fn assert_lookup_refused(reply: Option<LocalReply>) {
        let reply = reply.expect("a local reply");
        assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (429, Some("key_lookup_rate_limited")));
        assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }

    #[test]
    fn a_burst_of_lookups_passes_then_429s_without_a_call_until_the_bucket_refills() {
        let h = Harness::new(limited(2, 3, 0, 0));
        for i in 0..3 {
            let (s, reply) = ask(&h, &forged(i), None);
            assert!(reply.is_none(), "the burst asks the control plane");
            assert_eq!(s.host.stream.resumed.get(), 0, "waiting for the answer");
        }
        assert_eq!(calls(&h), 3);
        for i in 3..10 {
            let (s, reply) = ask(&h, &forged(i), None);
            assert_lookup_refused(reply);
            assert!(s.host.request_header_str("x-sluice-cluster").is_none(), "nothing went upstream");
        }
        assert_eq!(calls(&h), 3, "no call for a refused lookup");
        assert_eq!(h.envoy.metric("sluice.key_lookups_refused"), 0, "reported on the tick");
        h.report_metrics();
        assert_eq!(h.envoy.metric("sluice.rejections.reason.key_lookup_rate_limited"), 7);
        assert_eq!(h.envoy.metric("sluice.key_lookups_refused"), 7);
        assert_eq!(h.envoy.metric("sluice.key_lookups"), 3);
        // Two a second: one more after 500 ms, then none again.
        h.envoy.now_ms.set(NOW + 499);
        assert_lookup_refused(ask(&h, &forged(10), None).1);
        h.envoy.now_ms.set(NOW + 500);
        assert!(ask(&h, &forged(11), None).1.is_none());
        assert_lookup_refused(ask(&h, &forged(12), None).1);
        // After a quiet spell, the whole burst again (and no more).
        h.envoy.now_ms.set(NOW + 60_000);
        let started = (100..110).filter(|i| ask(&h, &forged(*i), None).1.is_none()).count();
        assert_eq!(started, 3);
        assert_eq!(calls(&h), 7);
    }

    #[test]
    fn one_client_spending_its_share_leaves_the_others_theirs() {
        let h = Harness::new(limited(50, 100, 1, 2));
        let abuser = Some("203.0.113.9:50000");
        let refused = (0..50).filter(|i| ask(&h, &forged(*i), abuser).1.is_some()).count();
        assert_eq!(refused, 48, "its burst of 2 asked, the rest were refused");
        // The same client on another connection is the same client.
        assert_lookup_refused(ask(&h, &forged(50), Some("203.0.113.9:50001")).1);
        // Other clients are untouched by it: each has its own burst.
        for other in ["198.51.100.7:1000", "[2001:db8::7]:443"] {
            assert!(ask(&h, &forged(60), Some(other)).1.is_none());
            assert!(ask(&h, &forged(61), Some(other)).1.is_none());
            assert_lookup_refused(ask(&h, &forged(62), Some(other)).1);
        }
        assert_eq!(calls(&h), 6);
        // A second later the abuser has one more.
        h.envoy.now_ms.set(NOW + 1_000);
        assert!(ask(&h, &forged(70), abuser).1.is_none());
        assert_lookup_refused(ask(&h, &forged(71), abuser).1);
        // Clients Envoy cannot name share one bucket.
        h.envoy.now_ms.set(NOW + 2_000);
        assert!(ask(&h, &forged(80), None).1.is_none());
        assert!(ask(&h, &forged(81), Some("not an address")).1.is_none());
        assert_lookup_refused(ask(&h, &forged(82), None).1);
    }

    #[test]
    fn cached_keys_and_unknown_digests_never_touch_the_budget() {
        let h = Harness::new(limited(1, 2, 0, 0));
        let real = key(90);
        let (mut s, reply) = ask(&h, &real, Some("192.0.2.1:1"));
        assert!(reply.is_none());
        s.deliver(0, &answer(Some(&stored(90)), None));
        assert!(s.reply().is_none(), "routed");
        let (mut s, _) = ask(&h, &forged(0), Some("192.0.2.1:1"));
        s.deliver(0, &answer(None, None)); // unknown: remembered for 5 s
        assert_lookup_refused(ask(&h, &forged(1), Some("192.0.2.1:1")).1);
        // The budget is spent. A cached key is served, a remembered unknown one is a 401, and
        // neither reads the client's address or asks anyone.
        h.envoy.host_calls.borrow_mut().clear();
        for _ in 0..20 {
            let (s, reply) = ask(&h, &real, Some("192.0.2.1:1"));
            assert!(reply.is_none(), "{reply:?}");
            assert_eq!(s.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_gpt4o-a"));
            let (_, reply) = ask(&h, &forged(0), Some("192.0.2.1:1"));
            assert_eq!(reply.unwrap().json()["error"]["code"], "invalid_api_key");
        }
        assert!(!h.envoy.host_calls.borrow().contains(&"source_address"));
        assert_eq!(calls(&h), 2);
        h.report_metrics();
        assert_eq!(h.envoy.metric("sluice.rejections.reason.key_lookup_rate_limited"), 1);
    }

    #[test]
    fn a_key_another_worker_looked_up_is_served_with_this_workers_budget_spent() {
        let envoy = MockEnvoy::new(NOW);
        let a = Harness::on(Rc::clone(&envoy), limited(1, 1, 0, 0));
        let b = Harness::on(Rc::clone(&envoy), limited(1, 1, 0, 0));
        let real = key(91);
        let (mut s, _) = ask(&a, &real, None);
        s.deliver(0, &answer(Some(&stored(91)), None));
        assert!(ask(&b, &forged(0), None).1.is_none(), "b spends its one lookup");
        assert_lookup_refused(ask(&b, &forged(1), None).1);
        assert!(ask(&b, &real, None).1.is_none(), "found in shared data, no lookup needed");
        assert_eq!(envoy.grpc_calls.borrow().len(), 2);
    }

    #[test]
    fn a_known_key_past_its_ttl_is_served_from_cache_when_no_lookup_may_start() {
        let h = Harness::new(limited(1, 2, 0, 0));
        let real = key(92);
        let (mut s, _) = ask(&h, &real, None);
        s.deliver(0, &answer(Some(&stored(92)), None));
        h.envoy.now_ms.set(NOW + 120_000); // past the 60 s TTL: to be confirmed by a lookup
        assert!(ask(&h, &forged(0), None).1.is_none());
        assert!(ask(&h, &forged(1), None).1.is_none());
        let calls_before = calls(&h);
        let (s, reply) = ask(&h, &real, None);
        assert!(reply.is_none(), "{reply:?}");
        assert_eq!(s.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_gpt4o-a"));
        assert_eq!(calls(&h), calls_before, "served without asking");
        assert_eq!(h.envoy.metric("sluice.key_cache.stale_served"), 1);
        h.report_metrics();
        assert_eq!(h.envoy.metric("sluice.rejections.reason.key_lookup_rate_limited"), 0);
        // Asked again once the retry period is over and a token is there.
        h.envoy.now_ms.set(NOW + 126_000);
        let (mut s, reply) = ask(&h, &real, None);
        assert!(reply.is_none());
        assert_eq!(calls(&h), calls_before + 1);
        s.deliver(0, &answer(Some(&stored(92)), None));
        assert!(s.reply().is_none());
        // A revoked key is not known from before: refused like any other.
        h.gateway.apply_invalidations("1 k key_92", NOW + 126_000);
        assert!(ask(&h, &forged(2), None).1.is_none());
        assert_lookup_refused(ask(&h, &real, None).1);
    }

    #[test]
    fn a_real_key_refused_in_a_flood_gets_in_on_retry() {
        let h = Harness::new(limited(50, 100, 0, 0));
        for i in 0..100 {
            assert!(ask(&h, &forged(i), None).1.is_none());
        }
        let real = key(93);
        let reply = ask(&h, &real, None).1;
        assert_lookup_refused(reply.clone());
        let retry_after: u64 = reply.unwrap().header("retry-after").unwrap().parse().unwrap();
        h.envoy.now_ms.set(NOW + retry_after * 1000);
        let (mut s, reply) = ask(&h, &real, None);
        assert!(reply.is_none());
        s.deliver(0, &answer(Some(&stored(93)), None));
        assert!(s.reply().is_none(), "{:?}", s.reply());
        assert_eq!(s.host.stream.resumed.get(), 1);
    }

    #[test]
    fn fail_open_does_not_admit_a_key_whose_lookup_was_refused() {
        let mut cfg = limited(1, 1, 0, 0);
        if let Some(lookup) = cfg.key_lookup.as_mut() {
            lookup.fail_open = true;
        }
        let h = Harness::new(cfg);
        assert!(ask(&h, &forged(0), None).1.is_none());
        assert_lookup_refused(ask(&h, &forged(1), None).1);
    }

    #[test]
    fn models_with_a_refused_lookup_is_a_429_too() {
        let h = Harness::new(limited(1, 1, 0, 0));
        assert!(ask(&h, &forged(0), None).1.is_none());
        let k = forged(1);
        let mut s = h.start("GET", "/v1/models", &[("authorization", format!("Bearer {k}").as_bytes())]);
        assert_eq!(s.flow.on_request_headers(true), Action::Pause);
        assert_lookup_refused(s.reply());
    }
}

mod health_check {
    use super::lookup_support::*;
    use super::*;

    impl Stream {
        /// Delivers a probe's answer for the deployment whose cluster is `cluster`.
        fn answer_probe(&mut self, cluster: &str, status: Option<u16>, body: &str) {
            let token = self.host.envoy.http_calls.borrow().iter().find(|c| c.cluster == cluster).unwrap().token;
            *self.host.stream.http_response.borrow_mut() = (status, body.as_bytes().to_vec());
            self.flow.on_http_response(token, body.len());
        }
    }

    #[test]
    fn the_master_key_probes_every_deployment_through_its_own_cluster_and_gets_litellms_report() {
        let h = Harness::new(base_config());
        let mut s = h.start("GET", "/health", &[("authorization", b"Bearer sk-master-1234")]);
        assert_eq!(s.flow.on_request_headers(true), Action::Pause);
        assert!(s.reply().is_none(), "waits for the probes");
        {
            let calls = h.envoy.http_calls.borrow();
            let clusters: Vec<&str> = calls.iter().map(|c| c.cluster.as_str()).collect();
            assert_eq!(clusters, ["sluice_gpt4o-a", "sluice_claude", "sluice_mini"]);
            let header = |i: usize, name: &str| {
                calls[i].headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
            };
            // OpenAI's: its path, its credential, the smallest chat request.
            assert_eq!(header(0, ":path"), "/v1/chat/completions");
            assert_eq!(header(0, ":authority"), "gpt4o-a.example");
            assert_eq!(header(0, "authorization"), "Bearer provider-secret-gpt4o-a");
            let body: serde_json::Value = serde_json::from_slice(&calls[0].body).unwrap();
            assert_eq!((body["model"].as_str(), body["max_tokens"].as_u64()), (Some("gpt-4o-2024-08-06"), Some(1)));
            // Anthropic's: translated to Messages, its header and version.
            assert_eq!(header(1, ":path"), "/v1/messages");
            assert_eq!(header(1, "x-api-key"), "provider-secret-claude");
            assert_eq!(header(1, "anthropic-version"), "2023-06-01");
            let body: serde_json::Value = serde_json::from_slice(&calls[1].body).unwrap();
            assert_eq!(body["messages"][0]["role"], "user");
            assert!(calls.iter().all(|c| c.timeout_ms == 60_000));
        }
        s.answer_probe("sluice_gpt4o-a", Some(200), &openai_response(1, 1, 0));
        s.answer_probe("sluice_claude", None, "");
        assert!(s.reply().is_none(), "one probe still out");
        s.answer_probe(
            "sluice_mini",
            Some(401),
            r#"{"error":{"message":"Incorrect API key provided: sk-abc***wxyz.","type":"invalid_request_error"}}"#,
        );
        let reply = s.reply().unwrap();
        assert_eq!(reply.status, 200);
        let report = reply.json();
        assert_eq!((report["healthy_count"].as_u64(), report["unhealthy_count"].as_u64()), (Some(1), Some(2)));
        assert_eq!(report["healthy_endpoints"][0]["model_id"], "gpt4o-a");
        assert_eq!(report["healthy_endpoints"][0]["api_base"], "https://gpt4o-a.example");
        let errors: Vec<&str> =
            report["unhealthy_endpoints"].as_array().unwrap().iter().map(|e| e["error"].as_str().unwrap()).collect();
        assert!(errors[0].starts_with("no answer"), "{errors:?}");
        assert_eq!(errors[1], "HTTP 401: Incorrect API key provided: [redacted]");
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        assert!(!text.contains("provider-secret") && !text.contains("wxyz"), "{text}");
        s.finish();
        assert!(h.envoy.records().is_empty(), "a probe is not a client's request");
        h.report_metrics();
        assert_eq!(h.envoy.metric("sluice.health_probes"), 3);
    }

    #[test]
    fn a_query_narrows_the_probes_and_a_late_answer_is_ignored() {
        let h = Harness::new(base_config());
        let mut s = h.start("GET", "/health?model=gpt-4o-mini", &[("authorization", b"Bearer sk-master-1234")]);
        s.flow.on_request_headers(true);
        assert_eq!(h.envoy.http_calls.borrow().len(), 1);
        s.answer_probe("sluice_mini", Some(200), "{}");
        assert_eq!(s.reply().unwrap().json()["healthy_count"], 1);
        s.answer_probe("sluice_mini", Some(500), "{}"); // again: nothing changes, nothing panics
        assert_eq!(s.reply().unwrap().json()["healthy_count"], 1);
        // A model no deployment serves: an empty report at once.
        let mut s = h.start("GET", "/health?model=nope", &[("authorization", b"Bearer sk-master-1234")]);
        s.flow.on_request_headers(true);
        assert_eq!(s.reply().unwrap().json()["healthy_count"], 0);
    }

    #[test]
    fn only_the_master_key_may_run_health_checks() {
        let h = Harness::new(base_config());
        let auth = format!("Bearer {}", key(1));
        for (method, headers, status) in [
            ("GET", vec![("authorization", auth.as_bytes())], 403),
            ("GET", vec![], 401),
            ("POST", vec![("authorization", &b"Bearer sk-master-1234"[..])], 405),
        ] {
            let mut s = h.start(method, "/health", &headers);
            s.flow.on_request_headers(true);
            assert_eq!(s.reply().unwrap().status, status, "{method} {headers:?}");
        }
        assert!(h.envoy.http_calls.borrow().is_empty());
    }

    /// `background_health_checks`: one worker per Envoy runs each round (a lease in shared data),
    /// every `health_check_interval`; a deployment that fails is out of rotation until the next
    /// round, and `/health` answers from the last round without probing.
    #[test]
    fn background_rounds_run_once_per_interval_and_take_failing_deployments_out() {
        use crate::deployment_health::BackgroundHealth;
        let mut config = base_config();
        config.health_check_interval_ms = Some(60_000);
        config.deployments.push(deployment("gpt4o-b", "gpt-4o", Provider::Openai, "gpt-4o"));
        config.deployments[2].no_background_health_check = true; // mini
        let a = Harness::new(config.clone());
        let b = Harness::on(Rc::clone(&a.envoy), config);
        let (a_rounds, b_rounds) = (BackgroundHealth::default(), BackgroundHealth::default());
        let host = MockHost::new(Rc::clone(&a.envoy));
        let probes = || a.envoy.http_calls.borrow().len();
        // Before the first round, /health probes on demand.
        let mut s = a.start("GET", "/health", &[("authorization", b"Bearer sk-master-1234")]);
        s.flow.on_request_headers(true);
        assert_eq!(probes(), 4);
        a.envoy.http_calls.borrow_mut().clear();
        a_rounds.tick(&host, &a.gateway); // creates the lease
        b_rounds.tick(&host, &b.gateway); // takes the round
        a_rounds.tick(&host, &a.gateway); // not due again
        let calls = a.envoy.http_calls.borrow().clone();
        let clusters: Vec<&str> = calls.iter().map(|c| c.cluster.as_str()).collect();
        assert_eq!(clusters, ["sluice_gpt4o-a", "sluice_claude", "sluice_gpt4o-b"], "mini opted out");
        let answer = |rounds: &BackgroundHealth, gateway: &Rc<Gateway>, cluster: &str, status: u16| {
            let token = calls.iter().find(|c| c.cluster == cluster).unwrap().token;
            assert!(rounds.on_answer(&host, gateway, token, Some(status), b"{}"));
        };
        assert!(!a_rounds.awaits(calls[0].token), "only the worker that sent them");
        answer(&b_rounds, &b.gateway, "sluice_gpt4o-a", 500);
        answer(&b_rounds, &b.gateway, "sluice_claude", 200);
        assert!(a.envoy.logs.borrow().iter().all(|l| !l.contains("background health check")), "round not over");
        answer(&b_rounds, &b.gateway, "sluice_gpt4o-b", 200);
        assert!(a.envoy.logs.borrow().iter().any(|l| l.contains("1 of 3 deployments failed (gpt4o-a)")));
        // /health answers from the round at once.
        let mut s = a.start("GET", "/health", &[("authorization", b"Bearer sk-master-1234")]);
        s.flow.on_request_headers(true);
        let report = s.reply().unwrap().json();
        assert_eq!((report["healthy_count"].as_u64(), report["unhealthy_count"].as_u64()), (Some(2), Some(1)));
        assert_eq!(report["unhealthy_endpoints"][0]["error"], "HTTP 500");
        assert_eq!(a.envoy.http_calls.borrow().len(), 3, "no new probe");
        // The failing deployment is out of rotation on every worker until the next round.
        for _ in 0..4 {
            let (s, reply) = a.post("/v1/chat/completions", &key(1), CHAT);
            assert!(reply.is_none());
            assert_eq!(s.host.request_header_str("x-sluice-cluster").unwrap(), "sluice_gpt4o-b");
        }
        a.envoy.now_ms.set(NOW + 60_001);
        let (s, _) = (0..20)
            .map(|_| a.post("/v1/chat/completions", &key(1), CHAT))
            .find(|(s, _)| s.host.request_header_str("x-sluice-cluster").unwrap() == "sluice_gpt4o-a")
            .expect("back in rotation after the interval");
        drop(s);
        a_rounds.tick(&host, &a.gateway);
        assert_eq!(a.envoy.http_calls.borrow().len(), 6, "the next round, on whichever worker ticks first");
    }

    #[test]
    fn in_xds_mode_the_looked_up_master_key_may_and_another_key_may_not() {
        let mut cfg = xds_config(false);
        cfg.master_key_env = None;
        let h = Harness::new(cfg);
        let master = "sk-master-0123456789abcdef0123456789abcdef";
        let mut s = h.start("GET", "/health", &[("authorization", format!("Bearer {master}").as_bytes())]);
        assert_eq!(s.flow.on_request_headers(true), Action::Pause);
        let answered =
            KeyConfig { key_hash: Some(KeyHash::of(master.as_bytes())), master: true, ..KeyConfig::default() };
        s.deliver(0, &answer(Some(&answered), None));
        assert_eq!(h.envoy.http_calls.borrow().len(), 3, "probes started once the key is known");
        // A key the control plane knows, but not the master key.
        let mut s = h.start("GET", "/health", &[("authorization", format!("Bearer {}", key(7)).as_bytes())]);
        s.flow.on_request_headers(true);
        s.deliver(0, &answer(Some(&stored(7)), None));
        assert_eq!(s.reply().unwrap().status, 403);
        assert_eq!(h.envoy.http_calls.borrow().len(), 3);
    }
}

/// LiteLLM's `fallbacks`: a request to a group with a chain carries a plan; a failed step comes
/// back as a new pass (Envoy's internal redirect, played here by hand) that serves the next
/// step with the client's own body, through the fallback's translation, metered there.
mod fallbacks {
    use sluice_core::fallbacks::FallbackRule;

    use super::*;
    use crate::failover::{self, FAILOVER_HEADER, FAILOVER_PATH};
    use sluice_core::fallbacks::FAILOVER_ROUTE_HEADER;

    fn config() -> GatewayConfig {
        let mut cfg = base_config();
        cfg.fallbacks =
            vec![FallbackRule { group: "gpt-4o".into(), to: vec!["claude-3-5-sonnet".into(), "gpt-4o-mini".into()] }];
        cfg
    }

    const ANTHROPIC_ANSWER: &str = r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}"#;

    impl Stream {
        /// The end of a pass Envoy redirected (the router kept the 307; the filter saw no
        /// response).
        fn redirected(&mut self) {
            *self.host.stream.code_details.borrow_mut() = Some("internal_redirect".into());
            self.flow.on_log();
        }
    }

    /// The next pass, as Envoy's redirect delivers it: the failover path, the nonce the 307
    /// carried, the headers and body as the failed pass left them.
    fn next_pass(h: &Harness, failed: &Stream, nonce: &str) -> Stream {
        let left = failed.host.stream.request_headers.borrow().clone();
        let mut headers: Vec<(&str, &[u8])> = left
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), ":method" | ":path" | "x-request-id"))
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        headers.push((FAILOVER_HEADER, nonce.as_bytes()));
        let mut s = h.start("POST", FAILOVER_PATH, &headers);
        let body = failed.host.stream.request_body.borrow().clone();
        assert_eq!(s.flow.on_request_headers(false), Action::Pause);
        *s.host.stream.request_body.borrow_mut() = body.clone();
        s.flow.on_request_body(body.len(), true);
        s
    }

    #[test]
    fn a_failed_request_moves_to_its_fallback_with_the_clients_body_and_is_billed_there() {
        let h = Harness::new(config());
        let host = MockHost::new(Rc::clone(&h.envoy));
        let (mut first, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
        assert!(reply.is_none());
        assert_eq!(first.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_gpt4o-a"));
        // The router retries only what has no answer: a provider's failure goes to the plan.
        assert_eq!(
            first.host.request_header_str("x-envoy-retry-on").as_deref(),
            Some("connect-failure,refused-stream,reset")
        );
        assert_eq!(first.host.request_header_str("x-envoy-retriable-status-codes"), None);
        // It takes the route that follows the attempt filter's redirect.
        assert_eq!(first.host.request_header_str(FAILOVER_ROUTE_HEADER).as_deref(), Some("1"));
        let plan = failover::load(&host, "req-1", NOW).expect("a plan in shared data");
        assert_eq!((plan.steps.len(), plan.step, plan.tried.as_slice()), (3, 0, &[0][..]));
        // The attempt filter: the deployment's 503 becomes the redirect; a 200 or a 400 would not.
        let nonce = failover::redirect_nonce(&host, 503, Some(b"req-1"), b"").unwrap();
        assert!(failover::redirect_nonce(&host, 400, Some(b"req-1"), b"").is_none());
        first.redirected();
        assert!(h.envoy.records().is_empty(), "a failed pass bills nothing");
        // The next pass: Claude, translated from the client's own body; the OpenAI key is gone.
        let mut second = next_pass(&h, &first, &nonce);
        assert!(second.reply().is_none(), "{:?}", second.reply());
        assert_eq!(second.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_claude"));
        assert_eq!(second.host.request_header_str(":path").as_deref(), Some("/v1/messages"));
        assert_eq!(second.host.request_header_str("x-api-key").as_deref(), Some("provider-secret-claude"));
        assert_eq!(second.host.request_header_str("authorization"), None);
        let sent: serde_json::Value = serde_json::from_slice(&second.host.stream.request_body.borrow()).unwrap();
        assert_eq!(sent["model"], "claude-3-5-sonnet-20241022");
        assert!(sent["messages"][0]["content"].to_string().contains("hello"), "{sent}");
        // The same nonce cannot be played twice, nor a made-up one.
        let mut replay = h.start("POST", FAILOVER_PATH, &[(FAILOVER_HEADER, nonce.as_bytes())]);
        replay.flow.on_request_headers(false);
        assert_eq!(replay.reply().unwrap().status, 404);
        // Answered: LiteLLM's header, one record, at the fallback's price and group.
        second.respond(200, "application/json", &[ANTHROPIC_ANSWER.as_bytes()], true);
        assert_eq!(second.host.response_header_str("x-litellm-attempted-fallbacks").as_deref(), Some("1"));
        second.finish();
        let records = h.envoy.records();
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0]["model_group"].as_str(), records[0]["deployment"].as_str()),
            (Some("claude-3-5-sonnet"), Some("claude"))
        );
        assert!(failover::load(&host, "req-1", NOW).is_none(), "the plan's slot is free again");
        // The failed try is in the record and counted by deployment and class; billed nothing.
        assert_eq!(
            records[0]["failed_attempts"],
            serde_json::json!([{"deployment": "gpt4o-a", "error": "server_error"}])
        );
        h.report_metrics();
        assert_eq!(h.envoy.metric("sluice.failovers"), 1);
        assert_eq!(h.envoy.metric("sluice.failed_attempts.deployment.gpt4o-a.error.server_error"), 1);
    }

    /// A failed pass whose failure cools its deployment down says so in the plan; the pass that
    /// answers puts it in the request's record (the control plane counts cooldowns from there).
    #[test]
    fn a_cooldown_a_failed_pass_started_is_in_the_answering_passs_record() {
        let mut cfg = config();
        cfg.cooldown = sluice_core::cooldown::CooldownPolicy { enabled: true, allowed_fails: 0, cooldown_ms: 5_000 };
        let h = Harness::new(cfg);
        let host = MockHost::new(Rc::clone(&h.envoy));
        let (mut first, _) = h.post("/v1/chat/completions", &key(1), CHAT);
        let nonce = failover::redirect_nonce(&host, 429, Some(b"req-1"), b"").unwrap();
        first.redirected();
        assert_eq!(
            failover::load(&host, "req-1", NOW).map(|p| p.cooled_down),
            Some(vec![(0, sluice_core::attempts::AttemptError::RateLimit)])
        );
        let mut second = next_pass(&h, &first, &nonce);
        second.respond(200, "application/json", &[ANTHROPIC_ANSWER.as_bytes()], true);
        second.finish();
        let records = h.envoy.records();
        assert_eq!(records[0]["cooled_down"], serde_json::json!([{"deployment": "gpt4o-a", "error": "rate_limit"}]));
        assert_eq!(records[0]["failed_attempts"], records[0]["cooled_down"]);
    }

    /// The record of a request that failed over names the tags and end user of the client's
    /// headers, which the redirect carries to the pass that answers.
    #[test]
    fn the_pass_that_answers_records_the_clients_tags_and_end_user() {
        let h = Harness::new(config());
        let host = MockHost::new(Rc::clone(&h.envoy));
        let auth = format!("Bearer {}", key(1));
        let headers = [
            ("authorization", auth.as_bytes()),
            (sluice_core::request::TAGS_HEADER, &b"nightly"[..]),
            ("x-litellm-end-user-id", &b"cust-9"[..]),
        ];
        let mut first = h.start("POST", "/v1/chat/completions", &headers);
        assert!(first.send_body(CHAT.as_bytes()).is_none());
        let nonce = failover::redirect_nonce(&host, 503, Some(b"req-1"), b"").unwrap();
        first.redirected();
        let mut second = next_pass(&h, &first, &nonce);
        assert!(second.reply().is_none(), "{:?}", second.reply());
        second.respond(200, "application/json", &[ANTHROPIC_ANSWER.as_bytes()], true);
        second.finish();
        let records = h.envoy.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["request_tags"], serde_json::json!(["nightly"]));
        assert_eq!(records[0]["end_user"], "cust-9");
    }

    #[test]
    fn the_last_step_gets_no_redirect_and_a_key_skips_groups_it_may_not_use() {
        let mut cfg = config();
        cfg.keys.push(KeyConfig { models: vec!["gpt-4o".into(), "gpt-4o-mini".into()], ..key_config(2) });
        let h = Harness::new(cfg);
        let host = MockHost::new(Rc::clone(&h.envoy));
        let (mut first, _) = h.post("/v1/chat/completions", &key(2), CHAT);
        let nonce = failover::redirect_nonce(&host, 429, Some(b"req-1"), b"").unwrap();
        first.redirected();
        // Claude is not this key's: the pass goes on to mini, the plan's last step.
        let mut second = next_pass(&h, &first, &nonce);
        assert!(second.reply().is_none(), "{:?}", second.reply());
        assert_eq!(second.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_mini"));
        assert_eq!(second.host.request_header_str("x-envoy-retry-on"), None, "no step left: the router's own retries");
        // Nor the route that follows a redirect (the first pass's marker came with the request).
        assert_eq!(first.host.request_header_str(FAILOVER_ROUTE_HEADER).as_deref(), Some("1"));
        assert_eq!(second.host.request_header_str(FAILOVER_ROUTE_HEADER), None);
        assert_eq!(failover::redirect_nonce(&host, 503, Some(b"req-1"), b""), None, "nothing left to redirect to");
        second.respond(503, "application/json", &[br#"{"error":{"message":"down"}}"#], true);
        second.finish();
        assert_eq!(h.envoy.records()[0]["status"], 503);
        assert_eq!(second.host.response_header_str("x-litellm-attempted-fallbacks").as_deref(), Some("1"));
    }

    #[test]
    fn a_group_with_no_deployment_to_offer_falls_back_before_anything_is_sent() {
        let mut cfg = config();
        cfg.cooldown = sluice_core::cooldown::CooldownPolicy { enabled: true, allowed_fails: 0, cooldown_ms: 60_000 };
        cfg.deployments.push(deployment("gpt4o-b", "gpt-4o", Provider::Openai, "gpt-4o"));
        let h = Harness::new(cfg);
        // Both of gpt-4o's deployments fail once: both cool down.
        for _ in 0..2 {
            let (mut s, _) = h.post("/v1/chat/completions", &key(1), CHAT);
            s.respond(500, "application/json", &[br#"{"error":{}}"#], true);
            s.finish();
        }
        let (s, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
        assert!(reply.is_none(), "{reply:?}");
        assert_eq!(s.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_claude"));
        // Without fallbacks the same group answers 503 no_healthy_deployment (cooldown's test).
    }

    /// Without fallbacks, a group of several deployments retries on another one (LiteLLM's
    /// retries), for what `retry_policy` retries; a single deployment's stay with the router.
    #[test]
    fn a_retry_goes_to_another_deployment_of_the_group() {
        let mut cfg = base_config();
        cfg.deployments.push(deployment("gpt4o-b", "gpt-4o", Provider::Openai, "gpt-4o"));
        cfg.retries.num_retries = 1;
        cfg.retries.on.rate_limit = false;
        let h = Harness::new(cfg);
        let host = MockHost::new(Rc::clone(&h.envoy));
        let (mut first, _) = h.post("/v1/chat/completions", &key(1), CHAT);
        let tried = first.host.request_header_str("x-sluice-cluster").unwrap();
        assert!(failover::redirect_nonce(&host, 429, Some(b"req-1"), b"").is_none(), "429 is not retried here");
        let nonce = failover::redirect_nonce(&host, 502, Some(b"req-1"), b"").unwrap();
        first.redirected();
        let mut second = next_pass(&h, &first, &nonce);
        let other = second.host.request_header_str("x-sluice-cluster").unwrap();
        assert_ne!(other, tried, "the retry goes to the other deployment");
        assert_eq!(
            second.host.request_header_str("authorization").as_deref(),
            Some(format!("Bearer provider-secret-{}", other.trim_start_matches("sluice_")).as_str())
        );
        second.respond(200, "application/json", &[openai_response(5, 5, 0).as_bytes()], true);
        assert_eq!(second.host.response_header_str("x-litellm-attempted-retries").as_deref(), Some("1"));
        assert_eq!(second.host.response_header_str("x-litellm-attempted-fallbacks"), None, "no fallbacks here");
        second.finish();
        assert_eq!(h.envoy.records().len(), 1);
        // A group of one: the router retries (its retry-after waited out), no plan.
        let (s, _) = h.post("/v1/chat/completions", &key(1), r#"{"model":"gpt-4o-mini","messages":[]}"#);
        assert_eq!(s.host.request_header_str("x-envoy-retriable-status-codes").as_deref(), Some("500,502,503,504,408"));
        assert!(failover::redirect_nonce(&host, 503, Some(b"req-1"), b"").is_none());
    }

    const TOO_LONG: &[u8] = br#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
    const FILTERED: &[u8] = br#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","code":"content_filter"}}"#;

    /// `context_window_fallbacks`: gpt-4o's too-long prompts go to mini, its other failures
    /// follow `fallbacks` (to Claude).
    fn refusal_config() -> GatewayConfig {
        let mut cfg = config();
        cfg.context_window_fallbacks = vec![FallbackRule { group: "gpt-4o".into(), to: vec!["gpt-4o-mini".into()] }];
        // A counted failure would take gpt-4o's only deployment out of rotation at once.
        cfg.cooldown = sluice_core::cooldown::CooldownPolicy { enabled: true, allowed_fails: 0, cooldown_ms: 60_000 };
        cfg
    }

    #[test]
    fn a_context_window_refusal_takes_its_own_fallbacks_and_cools_nothing_down() {
        let h = Harness::new(refusal_config());
        let host = MockHost::new(Rc::clone(&h.envoy));
        let (mut first, _) = h.post("/v1/chat/completions", &key(1), CHAT);
        // The attempt filter: any other 400 stays the client's; the refusal moves on.
        assert!(failover::redirect_nonce(&host, 400, Some(b"req-1"), br#"{"error":{"message":"bad"}}"#).is_none());
        let nonce = failover::redirect_nonce(&host, 400, Some(b"req-1"), TOO_LONG).unwrap();
        first.redirected();
        let mut second = next_pass(&h, &first, &nonce);
        assert!(second.reply().is_none(), "{:?}", second.reply());
        assert_eq!(second.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_mini"));
        assert_eq!(failover::redirect_nonce(&host, 503, Some(b"req-1"), b""), None, "mini is the last step");
        second.respond(200, "application/json", &[openai_response(5, 5, 0).as_bytes()], true);
        assert_eq!(second.host.response_header_str("x-litellm-attempted-fallbacks").as_deref(), Some("1"));
        second.finish();
        let records = h.envoy.records();
        assert_eq!((records.len(), records[0]["model_group"].as_str()), (1, Some("gpt-4o-mini")));
        assert_eq!(records[0]["failed_attempts"][0]["error"], "context_window");
        // A refusal is not the deployment's failure: gpt-4o is still in rotation.
        let (next, _) = h.post("/v1/chat/completions", &key(1), CHAT);
        assert_eq!(next.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_gpt4o-a"));
    }

    #[test]
    fn a_content_policy_refusal_without_its_own_fallbacks_follows_the_fallbacks() {
        let h = Harness::new(refusal_config());
        let host = MockHost::new(Rc::clone(&h.envoy));
        let (mut first, _) = h.post("/v1/chat/completions", &key(1), CHAT);
        let nonce = failover::redirect_nonce(&host, 400, Some(b"req-1"), FILTERED).unwrap();
        first.redirected();
        let second = next_pass(&h, &first, &nonce);
        assert_eq!(second.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_claude"));
    }

    #[test]
    fn the_pre_send_check_skips_a_deployment_the_prompt_does_not_fit() {
        let mut cfg = refusal_config();
        cfg.pre_call_checks = true;
        cfg.deployments[0].max_input_tokens = Some(100); // gpt-4o
        cfg.max_request_body_bytes = 1 << 20;
        let long =
            format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#, "word ".repeat(200));
        // Too long for gpt-4o: straight to its context-window fallback, nothing sent to gpt-4o.
        let h = Harness::new(cfg.clone());
        let (s, reply) = h.post("/v1/chat/completions", &key(1), &long);
        assert!(reply.is_none(), "{reply:?}");
        assert_eq!(s.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_mini"));
        // A short prompt still goes to gpt-4o.
        let (s, _) = h.post("/v1/chat/completions", &key(1), CHAT);
        assert_eq!(s.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_gpt4o-a"));
        // No context-window fallback and no other group: LiteLLM's error, OpenAI's code.
        cfg.fallbacks.clear();
        cfg.context_window_fallbacks.clear();
        let h = Harness::new(cfg.clone());
        let (_, reply) = h.post("/v1/chat/completions", &key(1), &long);
        let reply = reply.expect("refused before sending");
        assert_eq!(reply.status, 400);
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], "context_length_exceeded");
        assert!(body["error"]["message"].as_str().unwrap().contains("maximum context length is 100 tokens"), "{body}");
        // Off (LiteLLM's default): sent, and the provider decides.
        cfg.pre_call_checks = false;
        let h = Harness::new(cfg);
        let (s, reply) = h.post("/v1/chat/completions", &key(1), &long);
        assert!(reply.is_none(), "{reply:?}");
        assert_eq!(s.host.request_header_str("x-sluice-cluster").as_deref(), Some("sluice_gpt4o-a"));
    }

    #[test]
    fn fallback_rules_are_checked_when_the_config_is_compiled() {
        let mut cfg = base_config();
        cfg.fallbacks = vec![FallbackRule { group: "gpt-4o".into(), to: vec!["nope".into()] }];
        let errors = CompiledConfig::compile(cfg).unwrap_err();
        assert!(errors.iter().any(|e| e.0.contains("\"nope\" is not a model group")), "{errors:?}");
    }
}

/// The response cache (`flow/cache.rs`): hits answered in the filter, never across tenants,
/// LiteLLM's per-request controls, streams replayed as they were, errors never stored.
mod response_cache {
    use super::*;
    use sluice_core::cache::{CacheConfig, CacheMode, CacheScope};

    fn cache_config() -> CacheConfig {
        CacheConfig { ttl_secs: 60, max_entries: 64, ..CacheConfig::default() }
    }

    fn cached_gateway() -> Harness {
        let mut config = base_config();
        config.keys.push(key_config(2));
        config.cache = Some(cache_config());
        Harness::new(config)
    }

    /// Sends `body` with key `seed`; a miss is answered by the provider with `answer`.
    /// Returns the client's status, body and `x-sluice-cache`.
    fn ask(h: &Harness, seed: u8, body: &str, answer: &str) -> (u32, Vec<u8>, Option<String>) {
        let (mut s, reply) = h.post("/v1/chat/completions", &key(seed), body);
        let out = match reply {
            Some(reply) => (reply.status, reply.body.clone(), reply.header("x-sluice-cache").map(str::to_owned)),
            None => {
                let delivered = s.respond(200, "application/json", &[answer.as_bytes()], true);
                (200, delivered, s.host.response_header_str("x-sluice-cache"))
            }
        };
        s.finish();
        out
    }

    #[test]
    fn a_repeated_request_is_answered_from_the_cache_at_no_cost() {
        let h = cached_gateway();
        let answer = openai_response(1000, 100, 0);
        let (status, first, state) = ask(&h, 1, CHAT, &answer);
        assert_eq!((status, state.as_deref()), (200, Some("miss")));
        let (mut s, reply) = h.post("/v1/chat/completions", &key(1), CHAT);
        let reply = reply.expect("answered by the filter");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, first, "the same bytes the provider sent the first time");
        assert_eq!(reply.header("x-sluice-cache"), Some("hit"));
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("x-litellm-cache-key").map(str::len), Some(64));
        assert_eq!(s.host.request_header_str("x-sluice-cluster"), None, "never sent upstream");
        s.finish();
        let records = h.envoy.records();
        assert_eq!(records.len(), 2, "one record per request, the hit included");
        let (miss, hit) = (&records[0], &records[1]);
        assert_eq!((miss["cache_hit"].as_bool(), hit["cache_hit"].as_bool()), (Some(false), Some(true)));
        assert!(miss["cost_usd"].as_f64().unwrap() > 0.0);
        assert_eq!(hit["cost_usd"], 0.0, "a hit costs nothing (LiteLLM's rule)");
        assert_eq!((hit["prompt_tokens"].as_u64(), hit["completion_tokens"].as_u64()), (Some(1000), Some(100)));
        assert_eq!(hit["outcome"], "completed");
        h.report_metrics();
        assert_eq!(h.envoy.metric("sluice.response_cache.hits"), 1);
        assert_eq!(h.envoy.metric("sluice.response_cache.misses"), 1);
    }

    #[test]
    fn another_key_never_reads_an_answer_and_team_scope_shares_within_the_team() {
        let h = cached_gateway();
        let answer = openai_response(10, 5, 0);
        assert_eq!(ask(&h, 1, CHAT, &answer).2.as_deref(), Some("miss"));
        assert_eq!(ask(&h, 2, CHAT, &answer).2.as_deref(), Some("miss"), "key 2 is another tenant");
        assert_eq!(ask(&h, 2, CHAT, &answer).2.as_deref(), Some("hit"));

        let mut config = base_config();
        let team = |seed| KeyConfig { team_id: Some("t1".into()), ..key_config(seed) };
        config.keys = vec![team(1), team(2), key_config(3)];
        config.teams = vec![TeamConfig { team_id: "t1".into(), ..TeamConfig::default() }];
        config.cache = Some(CacheConfig { scope: CacheScope::Team, ..cache_config() });
        let h = Harness::new(config);
        assert_eq!(ask(&h, 1, CHAT, &answer).2.as_deref(), Some("miss"));
        assert_eq!(ask(&h, 2, CHAT, &answer).2.as_deref(), Some("hit"), "the same team");
        assert_eq!(ask(&h, 3, CHAT, &answer).2.as_deref(), Some("miss"), "no team: its own");
    }

    #[test]
    fn litellms_cache_controls_are_honoured() {
        let h = cached_gateway();
        let answer = openai_response(10, 5, 0);
        let with = |control: &str| {
            format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"hello"}}],"cache":{control}}}"#)
        };
        // no-store: answered, not stored.
        assert_eq!(ask(&h, 1, &with(r#"{"no-store":true}"#), &answer).2.as_deref(), Some("miss"));
        assert_eq!(ask(&h, 1, CHAT, &answer).2.as_deref(), Some("miss"), "nothing was stored");
        // Stored now; no-cache skips the lookup (and stores again).
        assert_eq!(ask(&h, 1, &with(r#"{"no-cache":true}"#), &answer).2.as_deref(), Some("miss"));
        assert_eq!(ask(&h, 1, CHAT, &answer).2.as_deref(), Some("hit"));
        // The cache controls never reach the provider.
        let (s, _) = h.post("/v1/chat/completions", &key(1), &with(r#"{"no-cache":true}"#));
        let sent: serde_json::Value = serde_json::from_slice(&s.host.stream.request_body.borrow()).unwrap();
        assert!(sent.get("cache").is_none(), "{sent}");
        // s-maxage: an entry older than the request accepts is not used.
        h.envoy.now_ms.set(NOW + 20_000);
        assert_eq!(ask(&h, 1, &with(r#"{"s-maxage":10}"#), &answer).2.as_deref(), Some("miss"));
        assert_eq!(ask(&h, 1, &with(r#"{"s-maxage":30}"#), &answer).2.as_deref(), Some("hit"));
        // The configured TTL (60 s) ends it; a request's own ttl replaces it for what it stores.
        h.envoy.now_ms.set(NOW + 100_000);
        assert_eq!(ask(&h, 1, &with(r#"{"ttl":1}"#), &answer).2.as_deref(), Some("miss"), "expired");
        assert_eq!(ask(&h, 1, CHAT, &answer).2.as_deref(), Some("hit"));
        h.envoy.now_ms.set(NOW + 102_000);
        assert_eq!(ask(&h, 1, CHAT, &answer).2.as_deref(), Some("miss"), "the request's 1 s TTL");
        // A namespace is another place.
        assert_eq!(ask(&h, 1, &with(r#"{"namespace":"n1"}"#), &answer).2.as_deref(), Some("miss"));
        // Cache-Control: no-cache from the header.
        let (mut s, reply) = {
            let auth = format!("Bearer {}", key(1));
            let mut s = h.start(
                "POST",
                "/v1/chat/completions",
                &[("authorization", auth.as_bytes()), ("cache-control", b"no-cache")],
            );
            let reply = s.send_body(CHAT.as_bytes());
            (s, reply)
        };
        assert!(reply.is_none(), "the header's no-cache skips the lookup");
        s.respond(200, "application/json", &[answer.as_bytes()], true);
        s.finish();
    }

    #[test]
    fn bad_controls_are_400s_that_reserve_nothing() {
        let mut config = base_config();
        config.keys = vec![KeyConfig { rpm_limit: Some(100), ..key_config(1) }];
        config.cache = Some(cache_config());
        let h = Harness::new(config);
        for control in [r#"{"ttl":-5}"#, r#"{"no-store":"yes"}"#, r#"{"nostore":true}"#, r#""on""#] {
            let body = format!(r#"{{"model":"gpt-4o","messages":[],"cache":{control}}}"#);
            let (_, reply) = h.post("/v1/chat/completions", &key(1), &body);
            let reply = reply.expect("refused");
            assert_eq!(reply.status, 400, "{control}");
            assert!(reply.json()["error"]["param"].as_str().unwrap().starts_with("cache"), "{}", reply.json());
        }
        let auth = format!("Bearer {}", key(1));
        let mut s = h.start(
            "POST",
            "/v1/chat/completions",
            &[("authorization", auth.as_bytes()), ("cache-control", b"max-age=soon")],
        );
        let reply = s.send_body(CHAT.as_bytes()).expect("refused");
        assert_eq!(reply.status, 400);
        // Nothing was counted against the key's RPM: 100 requests still pass.
        for _ in 0..100 {
            let (mut s, reply) = h.post(
                "/v1/chat/completions",
                &key(1),
                r#"{"model":"gpt-4o","messages":[],"cache":{"no-store":true}}"#,
            );
            assert!(reply.is_none(), "{reply:?}");
            s.finish();
        }
    }

    #[test]
    fn streams_are_replayed_as_streamed_and_only_to_a_request_of_the_same_form() {
        let h = cached_gateway();
        let stream_body = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
        let (mut s, reply) = h.post("/v1/chat/completions", &key(1), stream_body);
        assert!(reply.is_none());
        let upstream = sse(&[CHUNK1, CHUNK2, USAGE, "[DONE]"]);
        let delivered =
            s.respond(200, "text/event-stream", &[&upstream.as_bytes()[..40], &upstream.as_bytes()[40..]], true);
        s.finish();
        assert_eq!(String::from_utf8(delivered.clone()).unwrap(), sse(&[CHUNK1, CHUNK2, "[DONE]"]));
        let (mut s, reply) = h.post("/v1/chat/completions", &key(1), stream_body);
        let reply = reply.expect("a hit");
        assert_eq!(reply.body, delivered, "what the first client got, usage chunk removed as it was");
        assert_eq!(reply.header("content-type"), Some("text/event-stream"));
        s.finish();
        let hit = &h.envoy.records()[1];
        assert_eq!((hit["cache_hit"].as_bool(), hit["prompt_tokens"].as_u64()), (Some(true), Some(20)));
        // The same prompt without streaming, or asking for the usage chunk: not this entry.
        assert_eq!(
            ask(
                &h,
                1,
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#,
                &openai_response(1, 1, 0)
            )
            .2
            .as_deref(),
            Some("miss")
        );
        let with_usage = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello"}]}"#;
        let (mut s, reply) = h.post("/v1/chat/completions", &key(1), with_usage);
        assert!(reply.is_none(), "a stream without its usage chunk does not answer one that wants it");
        s.finish();
    }

    #[test]
    fn errors_and_cut_answers_are_never_stored() {
        let h = cached_gateway();
        let (mut s, _) = h.post("/v1/chat/completions", &key(1), CHAT);
        s.respond(500, "application/json", &[br#"{"error":{"message":"boom"}}"#], true);
        s.finish();
        let (mut s, _) = h.post("/v1/chat/completions", &key(1), CHAT);
        let answer = openai_response(10, 5, 0);
        s.respond(200, "application/json", &[&answer.as_bytes()[..20]], false);
        s.finish();
        assert_eq!(ask(&h, 1, CHAT, &answer).2.as_deref(), Some("miss"), "neither the error nor the cut answer");
        assert_eq!(ask(&h, 1, CHAT, &answer).2.as_deref(), Some("hit"));
    }

    #[test]
    fn a_keys_own_controls_replace_the_requests() {
        let mut config = base_config();
        let mut kept_out = key_config(2);
        kept_out.metadata = serde_json::json!({"cache": {"no-cache": true, "no-store": true}, "owner": "ops"})
            .as_object()
            .cloned()
            .unwrap();
        config.keys.push(kept_out);
        config.cache = Some(cache_config());
        let h = Harness::new(config.clone());
        let answer = openai_response(10, 5, 0);
        let asking = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}],"cache":{"no-store":false}}"#;
        for _ in 0..3 {
            assert_eq!(ask(&h, 2, asking, &answer).2.as_deref(), Some("miss"), "the key neither reads nor stores");
        }
        // Key 1 has no rule of its own: the same request is stored and found.
        assert_eq!(ask(&h, 1, asking, &answer).2.as_deref(), Some("miss"));
        assert_eq!(ask(&h, 1, asking, &answer).2.as_deref(), Some("hit"));
        // What LiteLLM does not take from a key is a config error, not ignored.
        config.keys[1].metadata = serde_json::json!({"cache": {"namespace": "n"}}).as_object().cloned().unwrap();
        let errors = CompiledConfig::compile(config).unwrap_err();
        assert!(errors.iter().any(|e| e.0.contains("metadata.cache.namespace")), "{errors:?}");
    }

    #[test]
    fn default_off_caches_only_requests_that_opt_in() {
        let mut config = base_config();
        config.cache = Some(CacheConfig { mode: CacheMode::DefaultOff, ..cache_config() });
        let h = Harness::new(config);
        let answer = openai_response(10, 5, 0);
        assert_eq!(ask(&h, 1, CHAT, &answer).2, None, "not cached at all: no header");
        assert_eq!(ask(&h, 1, CHAT, &answer).2, None);
        let opt_in = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}],"cache":{"use-cache":true}}"#;
        assert_eq!(ask(&h, 1, opt_in, &answer).2.as_deref(), Some("miss"));
        assert_eq!(ask(&h, 1, opt_in, &answer).2.as_deref(), Some("hit"));
    }

    #[test]
    fn a_translated_answer_is_stored_as_the_client_got_it() {
        let h = cached_gateway();
        let body = r#"{"model":"claude-3-5-sonnet","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
        let (mut s, reply) = h.post("/v1/chat/completions", &key(1), body);
        assert!(reply.is_none());
        let anthropic = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-5-sonnet-20241022","content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}"#;
        let delivered = s.respond(200, "application/json", &[anthropic.as_bytes()], true);
        s.finish();
        let first: serde_json::Value = serde_json::from_slice(&delivered).unwrap();
        assert_eq!(first["object"], "chat.completion");
        let (mut s, reply) = h.post("/v1/chat/completions", &key(1), body);
        let reply = reply.expect("a hit");
        assert_eq!(reply.body, delivered);
        s.finish();
        assert_eq!(h.envoy.records()[1]["prompt_tokens"], 12);
    }
}

mod fan_out;
