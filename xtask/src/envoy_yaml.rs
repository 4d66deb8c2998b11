//! The benchmark's Envoy bootstraps, in one place: the upstream (an Envoy answering with
//! `direct_response`, cheaper than any gateway in front of it) and the reference front Envoys
//! (bare, or with a no-op filter) that route to it. Sluice's own front Envoys come from
//! `sluice envoy-config`, as operators get them. `tests/integration/test_native_module.py` keeps
//! its own minimal YAML: it runs without xtask, from pytest alone.

use std::path::Path;

/// The filter a reference front Envoy runs before its router.
pub(crate) enum Filter<'a> {
    /// None: the route itself moves `x-bench-provider-key` into `authorization`.
    None,
    /// A proxy-wasm module on V8 (the no-op filter: the same header move).
    Wasm(&'a Path),
    /// An Envoy dynamic module and the filter name it registers (the native no-op).
    Native(&'a Path, &'a str),
}

/// The request header that selects the streaming answer upstream.
pub(crate) const STREAM_HEADER: &str = "x-bench-stream";

/// The upstream: `POST /v1/chat/completions` (any path, in fact) answered with an OpenAI chat
/// completion carrying `usage`, or with an SSE stream ending in a usage chunk and `[DONE]` when
/// the request carries `x-bench-stream`; `/v1/messages` (where Sluice sends an OpenAI client's
/// request for an Anthropic deployment, translated) with an Anthropic Messages answer carrying
/// `usage` (non-streaming only: the translated scenario does not stream). The buffer filter
/// reads the whole request first: a response sent before the request's body has arrived can
/// make Envoy close an HTTP/1 connection, and the front Envoy would pay for a new upstream
/// connection per request (with it, a front Envoy's `upstream_cx_total` stays at its 32
/// connections over a run).
pub(crate) fn upstream(port: u16, admin: u16) -> String {
    let chat = yaml_string(&chat_completion());
    let sse = yaml_string(&sse_stream());
    let message = yaml_string(&anthropic_message());
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
    - name: upstream
      address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: upstream
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{path: /v1/messages}}
                          direct_response: {{status: 200, body: {{inline_string: {message}}}}}
                          response_headers_to_add:
                            - header: {{key: content-type, value: application/json}}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD
                        - match: {{prefix: /, headers: [{{name: {STREAM_HEADER}, present_match: true}}]}}
                          direct_response: {{status: 200, body: {{inline_string: {sse}}}}}
                          response_headers_to_add:
                            - header: {{key: content-type, value: text/event-stream}}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD
                        - match: {{prefix: /}}
                          direct_response: {{status: 200, body: {{inline_string: {chat}}}}}
                          response_headers_to_add:
                            - header: {{key: content-type, value: application/json}}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD
                http_filters:
                  - name: envoy.filters.http.buffer
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
                      max_request_bytes: 1048576
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// A reference front Envoy on `port`, routing everything to the upstream on `upstream_port`.
pub(crate) fn front(port: u16, admin: u16, upstream_port: u16, filter: &Filter) -> String {
    let (move_key, http_filter) = match filter {
        Filter::None => (
            r#"
                          request_headers_to_add:
                            - header: {key: authorization, value: "%REQ(x-bench-provider-key)%"}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD"#
                .to_owned(),
            String::new(),
        ),
        Filter::Wasm(path) => (
            String::new(),
            format!(
                r#"
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        vm_config: {{runtime: envoy.wasm.runtime.v8, code: {{local: {{filename: "{}"}}}}}}"#,
                path.display()
            ),
        ),
        Filter::Native(path, name) => (
            String::new(),
            format!(
                r#"
                  - name: envoy.filters.http.dynamic_modules
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
                      dynamic_module_config: {{module: {{local: {{filename: "{}"}}}}}}
                      filter_name: {name}"#,
                path.display()
            ),
        ),
    };
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
    - name: front
      address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: front
                use_remote_address: true
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{prefix: /}}
                          route: {{cluster: upstream, timeout: 600s}}{move_key}
                http_filters:{http_filter}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: upstream
      type: STATIC
      connect_timeout: 10s
      load_assignment:
        cluster_name: upstream
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}}}
"#
    )
}

/// The answer's text, the same in every format: the translated path and the untranslated one
/// carry the same content.
fn answer_text() -> String {
    "The meeting agreed on three points: ship the gateway, measure it honestly, cut host calls. ".repeat(13)
}

/// A ~1.4 KB OpenAI chat completion with `usage`, which Sluice meters and charges.
fn chat_completion() -> String {
    let content = answer_text();
    format!(
        r#"{{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-2024-08-06","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":250,"completion_tokens":300,"total_tokens":550}}}}"#
    )
}

/// The same answer as an Anthropic Messages response, with `usage` in Anthropic's names (the
/// filter translates it into a `chat.completion` with `prompt_tokens` 250 and
/// `completion_tokens` 300, which the bench checks before measuring).
fn anthropic_message() -> String {
    let content = answer_text();
    format!(
        r#"{{"id":"msg_bench","type":"message","role":"assistant","model":"claude-3-5-sonnet-20241022","content":[{{"type":"text","text":"{content}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":250,"output_tokens":300}}}}"#
    )
}

/// An OpenAI chat completion stream: a role chunk, four content chunks, a finish chunk, the
/// usage chunk (`stream_options.include_usage`) and `[DONE]`.
fn sse_stream() -> String {
    let chunk = |delta: &str, finish: &str| {
        format!(
            r#"data: {{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}"#
        ) + "\n\n"
    };
    let mut out = chunk(r#"{"role":"assistant","content":""}"#, "null");
    for word in ["Ship ", "the ", "gateway, ", "measured."] {
        out += &chunk(&format!(r#"{{"content":"{word}"}}"#), "null");
    }
    out += &chunk("{}", r#""stop""#);
    out += r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":250,"completion_tokens":8,"total_tokens":258}}"#;
    out += "\n\ndata: [DONE]\n\n";
    out
}

/// A YAML double-quoted scalar.
fn yaml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

/// The upstream of [`upstream`] with every answer held back `delay_ms` by Envoy's fault filter
/// (`cargo xtask bench-routing`: a fast and a slow deployment of one model group).
pub(crate) fn delayed_upstream(port: u16, admin: u16, delay_ms: u64) -> String {
    let fault = format!(
        r#"                http_filters:
                  - name: envoy.filters.http.fault
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                      delay:
                        fixed_delay: {}.{:03}s
                        percentage: {{numerator: 100, denominator: HUNDRED}}
"#,
        delay_ms / 1000,
        delay_ms % 1000
    );
    upstream(port, admin).replacen("                http_filters:\n", &fault, 1)
}
