//! Envoy's bootstrap: for standalone mode (everything from the converted config file) and for
//! xDS mode (only the control plane's address; clusters, the filter's config and provider
//! credentials arrive over ADS, see `crate::xds`).
//!
//! The contract with the filter: the wasm HTTP filter (`root_id: sluice_filter`) and the
//! singleton service (`root_id: sluice_service`) share `vm_id: sluice`; the filter sets
//! `x-sluice-cluster`, which the routes read with `cluster_header` ([`DeploymentRoute`]; in xDS
//! mode they come by RDS, `crate::xds::routes`). Provider credentials
//! reach the VM as environment variables (`host_env_keys`) in standalone mode and are injected
//! by Envoy from SDS secrets in xDS mode; never as config.
//!
//! Fallbacks (`router_settings.fallbacks`, `default_fallbacks`) fail a request over by Envoy's
//! internal redirect: the route always follows a 307 internally, copying `x-sluice-failover`
//! into the redirected request ([`internal_redirect_policy`]), and, only when the gateway has
//! fallbacks, each deployment cluster runs Sluice's module first in its upstream chain in the
//! attempt role (`root_id`/`filter_name` [`ATTEMPT_FILTER_NAME`], `wasm_attempt_filter`,
//! `native_attempt_filter`), which turns a failed answer into that 307.

use std::net::IpAddr;

use serde_json::{Value, json};
use sluice_core::config::{DEFAULT_MAX_REQUEST_BODY_BYTES, GatewayConfig};
use sluice_core::fallbacks::FAILOVER_ROUTE_HEADER;
use sluice_core::litellm::{FailurePolicy, Standalone, Upstream};
use sluice_core::retries::STREAM_IDLE_HEADER;

use crate::google_tokens;

pub const CLUSTER_HEADER: &str = "x-sluice-cluster";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
pub const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
pub const DYNAMIC_MODULE_FILTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
/// The native module's `filter_name` (the module serves one filter).
pub const NATIVE_FILTER_NAME: &str = "sluice";
/// The runtime flag without which Envoy 1.40's Prometheus output keeps the native module's
/// `dynamicmodulescustom` namespace (see [`native_only`]).
const STRIP_MODULE_STAT_PREFIX: &str = "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix";
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
pub const CONNECT_TIMEOUT_SECS: i64 = 10;
/// Retries in flight at once to one deployment (Envoy's circuit breaker, 3 by default, which
/// under load let some requests go unretried): as many as the requests it may have in flight.
pub const MAX_CONCURRENT_RETRIES: u32 = 1024;
pub const VM_ID: &str = "sluice";
pub const WASM_RUNTIME: &str = "envoy.wasm.runtime.v8";
pub const FILTER_ROOT_ID: &str = "sluice_filter";
pub use sluice_core::fallbacks::{ATTEMPT_FILTER_NAME, FAILOVER_HEADER};
/// Passes one client request may make through the filter by internal redirect: the first and
/// one per failover (a fallback chain's groups, the deployments tried in each).
pub const MAX_INTERNAL_REDIRECTS: u32 = 16;
const UPSTREAM_CODEC: &str = "envoy.filters.http.upstream_codec";
const UPSTREAM_CODEC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec";
/// The route configuration's name: the standalone bootstrap's, and the one an xDS-mode
/// listener asks RDS for.
pub const ROUTE_CONFIG_NAME: &str = "sluice";
/// How long a retry waits at most for a 429's `retry-after` (a longer one is not honoured and
/// the usual backoff applies).
pub const MAX_RATE_LIMITED_BACKOFF_SECS: i64 = 60;
/// Hosts the router tries for a retry before it gives up on finding one not tried yet.
pub const HOST_SELECTION_RETRY_MAX_ATTEMPTS: i64 = 3;
/// The response code details of the 503 Envoy sends when a wasm filter's VM has failed.
const WASM_FAIL_STREAM_DETAILS: &str = "wasm_fail_stream";
/// The response code details of the 401 Envoy's credential injector sends when it has no
/// credential to inject.
const CREDENTIAL_NOT_INJECTED_DETAILS: &str = "failed_to_inject_credential";
/// The response code details of the 503 Envoy sends while the overload manager refuses requests.
const OVERLOAD_DETAILS: &str = "overload";

// Defences against slow and abusive clients (issue 17; envoy/README.md says why each value).
/// From a request's first byte to the end of its headers: a slowloris client, which sends
/// headers a byte at a time, is cut off with a 408 after this.
pub const REQUEST_HEADERS_TIMEOUT_SECS: u64 = 10;
/// From a request's first byte until Envoy has the whole request (the filter has read the body
/// and sent it on) or has begun the response: a slow body is cut off with a 408 after this.
/// Disarmed by then, so it never cuts a streaming response.
pub const REQUEST_TIMEOUT_SECS: u64 = 120;
/// A stream with no bytes either way for this long is reset (Envoy's default, written out).
pub const STREAM_IDLE_TIMEOUT_SECS: u64 = 300;
/// A downstream connection with no request on it for this long is closed (Envoy's default: 1 h).
pub const CONNECTION_IDLE_TIMEOUT_SECS: u64 = 300;
/// Request headers larger than this get a 431 (Envoy's default: 60 KiB).
pub const MAX_REQUEST_HEADERS_KB: u32 = 32;
/// HTTP/2 (h2c) limits from Envoy's edge best practices: Envoy's defaults are 2^31 - 1 streams
/// per connection and 256 MiB windows.
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
pub const HTTP2_INITIAL_STREAM_WINDOW_SIZE: u32 = 64 * 1024;
pub const HTTP2_INITIAL_CONNECTION_WINDOW_SIZE: u32 = 1024 * 1024;
/// The overload manager's heap limit (`sluice envoy-config --max-heap-mb`).
pub const DEFAULT_MAX_HEAP_MB: u64 = 1024;
/// At this share of the heap limit Envoy returns free memory to the system...
pub const SHRINK_HEAP_AT: f64 = 0.90;
/// ...and at this share it answers new requests with a 503 until the heap shrinks.
pub const STOP_ACCEPTING_REQUESTS_AT: f64 = 0.98;
/// Downstream connections over all listeners (`sluice envoy-config --max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: u64 = 50_000;

#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub listen_address: String,
    pub listen_port: u16,
    pub admin_port: u16,
    /// Absolute path of sluice_filter.wasm (unused by [`standalone_native_bootstrap`]).
    pub wasm_path: String,
    /// The overload manager's heap limit, in MiB.
    pub max_heap_mb: u64,
    /// The global limit on downstream connections.
    pub max_connections: u64,
    /// Standalone mode's Vertex AI access tokens: the directory `sluice google-tokens` keeps
    /// them in, one SDS file per deployment (absolute).
    pub google_token_dir: Option<String>,
}

fn vm_config(wasm: &str, env_keys: &[String]) -> Value {
    let mut vm = json!({
        "vm_id": VM_ID,
        "runtime": WASM_RUNTIME,
        "code": {"local": {"filename": wasm}},
    });
    if !env_keys.is_empty() {
        vm["environment_variables"] = json!({"host_env_keys": env_keys});
    }
    vm
}

/// An IP address needs no DNS (STATIC); a name is resolved by Envoy (LOGICAL_DNS).
pub fn upstream_is_ip(u: &Upstream) -> bool {
    u.host.parse::<IpAddr>().is_ok()
}

/// The gateway's requests may move between passes (fallbacks, or retries to another
/// deployment of a group): its deployment clusters need the attempt filter.
pub fn needs_attempt_filter(gateway: &GatewayConfig) -> bool {
    sluice_core::fallbacks::config_fails_over(gateway)
}

/// The VM configuration that sets the attempt filter's VM apart from the gateway filter's.
/// Envoy shares a VM among plugins of the same `vm_id`, code and VM configuration, and shared
/// data among VMs of the same `vm_id`: the attempt filter must see the plans (same `vm_id`) but
/// run in a VM of its own, because an HTTP call the gateway filter makes (a health probe) runs
/// the cluster's upstream chain while the gateway filter's VM is still inside that call, and
/// proxy-wasm cannot enter a VM twice (measured: the VM trapped on the nested context).
pub const ATTEMPT_VM_CONFIGURATION: &str = "sluice_attempt";

/// The attempt filter for a deployment cluster's upstream chain, wasm build: the module with
/// the downstream filter's `vm_id` (its shared data, where the plans are) in a VM of its own
/// ([`ATTEMPT_VM_CONFIGURATION`]), in the attempt role, with the downstream filter's failure
/// policy.
fn wasm_attempt_filter(mut vm_config: Value, failure_policy: &str) -> Value {
    vm_config["configuration"] = json!({"@type": STRING_VALUE, "value": ATTEMPT_VM_CONFIGURATION});
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": WASM_FILTER_TYPE,
            "config": {
                "name": ATTEMPT_FILTER_NAME,
                "root_id": ATTEMPT_FILTER_NAME,
                "vm_config": vm_config,
                "configuration": {"@type": STRING_VALUE, "value": "{}"},
                "failure_policy": failure_policy,
                // It holds a 400's headers while it reads the body (a refusal moves the request
                // on): without this, paused headers pause the body too.
                "allow_on_headers_stop_iteration": true,
            },
        },
    })
}

/// The attempt filter, native build: the same module as the downstream filter (one process, one
/// shared data), under the attempt's `filter_name`.
fn native_attempt_filter(module_path: &str) -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": DYNAMIC_MODULE_FILTER_TYPE,
            "dynamic_module_config": {"module": {"local": {"filename": module_path}}},
            "filter_name": ATTEMPT_FILTER_NAME,
            "filter_config": {"@type": STRING_VALUE, "value": "{}"},
        },
    })
}

/// What the failover route does with a 307: the attempt filter's failover is followed inside
/// Envoy (the request passes through the filter again, with its body), carrying the nonce
/// header. On the failover routes only a request with a plan to follow takes
/// ([`DeploymentRoute`]), whether or not the config has fallbacks now (xDS mode's, by RDS, say
/// the same: `crate::xds::routes`).
fn internal_redirect_policy() -> Value {
    json!({
        "redirect_response_codes": [307],
        "max_internal_redirects": MAX_INTERNAL_REDIRECTS,
        "allow_cross_scheme_redirect": true,
        "response_headers_to_copy": [FAILOVER_HEADER],
    })
}

/// One deployment's cluster; `attempt` is the attempt filter when the gateway has fallbacks,
/// first in the upstream chain (before Bedrock's signing, which must see the final request).
fn cluster(u: &Upstream, attempt: Option<&Value>, google_token_dir: Option<&str>) -> Value {
    let mut c = json!({
        "name": u.cluster,
        "type": if upstream_is_ip(u) { "STATIC" } else { "LOGICAL_DNS" },
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": format!("{CONNECT_TIMEOUT_SECS}s"),
        "circuit_breakers": {"thresholds": [{"max_retries": MAX_CONCURRENT_RETRIES}]},
        "load_assignment": {
            "cluster_name": u.cluster,
            "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": u.host, "port_value": u.port}},
                "hostname": u.host,
            }}]}],
        },
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {}},
        }},
    });
    let mut upstream_filters: Vec<Value> = attempt.into_iter().cloned().collect();
    if let (Some(_), Some(dir)) = (&u.google_credentials, google_token_dir) {
        // Vertex AI: the access token `sluice google-tokens` keeps fresh in the deployment's
        // SDS file (Envoy re-reads it when it is replaced), set as the bearer token.
        let file = google_tokens::sds_file_name(&u.cluster);
        upstream_filters.push(json!({"name": "envoy.filters.http.credential_injector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
            "overwrite": true,
            "credential": {"name": "envoy.http.injected_credentials.generic", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
                "credential": {"name": google_tokens::secret_name(&u.cluster), "sds_config": {
                    "path_config_source": {"path": format!("{dir}/{file}"), "watched_directory": {"path": dir}},
                }},
                "header": "authorization",
                "header_value_prefix": "Bearer ",
            }},
        }}));
    }
    if let Some(region) = &u.aws_region {
        // Bedrock: SigV4 by Envoy with its own AWS credentials (its environment, ~/.aws, a web
        // identity), after the filter chose the path and body (the signature covers both).
        upstream_filters.push(json!({"name": "envoy.filters.http.aws_request_signing", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning",
            "service_name": "bedrock",
            "region": region,
        }}));
    }
    if !upstream_filters.is_empty() {
        upstream_filters.push(json!({"name": UPSTREAM_CODEC, "typed_config": {"@type": UPSTREAM_CODEC_TYPE}}));
        c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"] =
            Value::Array(upstream_filters);
    }
    if u.https {
        // Verify the provider's certificate chain *and* its name.
        c["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": u.host,
                "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": CA_BUNDLE},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": u.host}}],
                }},
            },
        });
    }
    c
}

/// A master key written in config.yaml could reach Envoy only inside its config (the key, or
/// a digest one could brute-force): refused for both builds, which read it from the environment.
fn refuse_literal_master_key(s: &Standalone) -> Result<(), String> {
    if s.master_key_literal {
        return Err("general_settings.master_key is written in config.yaml: Envoy would need it (or a digest \
                    one could brute-force) in its own config; read it from the environment instead \
                    (master_key: os.environ/SLUICE_MASTER_KEY) and start Envoy with that variable set"
            .into());
    }
    Ok(())
}

/// The ids of the deployments whose upstream is `so`.
fn deployments_where(s: &Standalone, so: impl Fn(&Upstream) -> bool) -> Vec<&str> {
    s.gateway.deployments.iter().zip(&s.upstreams).filter(|(_, u)| so(u)).map(|(d, _)| d.id.as_str()).collect()
}

/// Vertex AI takes OAuth access tokens that expire within the hour: `sluice serve` mints them
/// and hands them to Envoy over SDS; a standalone Envoy needs `sluice google-tokens` beside it,
/// keeping them in a directory its bootstrap names (`--google-token-dir`).
fn refuse_vertex(s: &Standalone, opts: &BootstrapOptions) -> Result<(), String> {
    if opts.google_token_dir.is_some() {
        return Ok(());
    }
    let vertex = deployments_where(s, |u| u.google_credentials.is_some());
    if vertex.is_empty() {
        return Ok(());
    }
    Err(format!(
        "vertex_ai/ deployments ({}) need their access tokens kept fresh: run `sluice google-tokens -c CONFIG --dir DIR` \
         beside Envoy and give this command --google-token-dir DIR (or run `sluice serve`, which mints them itself)",
        vertex.join(", ")
    ))
}

/// Azure deployments with an Entra ID application: Envoy's OAuth 2 credential injector fetches
/// their tokens, with the client secret from SDS, which only `sluice serve` serves. (A static
/// cluster with that injector, the secret a static one read from Envoy's environment, crashes
/// Envoy 1.40 as it loads the bootstrap: SIGSEGV in cluster creation, measured; through CDS the
/// same cluster works.)
fn refuse_entra(s: &Standalone) -> Result<(), String> {
    let entra = deployments_where(s, |u| u.entra_client.is_some());
    if entra.is_empty() {
        return Ok(());
    }
    Err(format!(
        "azure/ deployments with Entra ID's tenant_id/client_id/client_secret ({}) need `sluice serve`: Envoy fetches \
         their tokens with the client secret the control plane serves over SDS; a standalone Envoy can use api_key",
        entra.join(", ")
    ))
}

pub fn standalone_bootstrap(s: &Standalone, opts: &BootstrapOptions) -> Result<Value, String> {
    refuse_literal_master_key(s)?;
    refuse_vertex(s, opts)?;
    refuse_entra(s)?;
    let gateway_json =
        serde_json::to_string(&s.gateway).map_err(|e| format!("cannot serialise the gateway config: {e}"))?;
    // Secrets reach the VM from Envoy's environment, by name: provider credentials and the master key.
    let mut env_keys: Vec<String> = s
        .gateway
        .deployments
        .iter()
        .filter_map(|d| d.api_key_env.clone())
        .chain(s.gateway.master_key_env.clone())
        .collect();
    env_keys.sort();
    env_keys.dedup();
    let failure_policy = match s.failure_policy {
        FailurePolicy::FailClosed => "FAIL_CLOSED",
        FailurePolicy::FailOpen => "FAIL_OPEN",
        FailurePolicy::FailReload => "FAIL_RELOAD",
    };
    let wasm_filter = json!({
        "name": "sluice",
        "typed_config": {
            "@type": WASM_FILTER_TYPE,
            "config": {
                "name": "sluice",
                "root_id": FILTER_ROOT_ID,
                "vm_config": vm_config(&opts.wasm_path, &env_keys),
                "configuration": {"@type": STRING_VALUE, "value": gateway_json},
                "failure_policy": failure_policy,
                // The filter holds the headers while it reads the body (it routes on the
                // body's `model`); without this, a paused headers phase pauses the body too.
                "allow_on_headers_stop_iteration": true,
            },
        },
    });
    let attempt = needs_attempt_filter(&s.gateway)
        .then(|| wasm_attempt_filter(vm_config(&opts.wasm_path, &env_keys), failure_policy));
    let routes = static_routes(s.request_timeout_secs, &s.gateway.stream_idle_timeouts());
    let listener = listener(opts, wasm_filter, routes, s.gateway.max_request_body_bytes);
    let clusters: Vec<Value> =
        s.upstreams.iter().map(|u| cluster(u, attempt.as_ref(), opts.google_token_dir.as_deref())).collect();
    Ok(bootstrap("sluice-standalone", opts, listener, clusters, None, None))
}

/// A failure policy other than `fail_closed` cannot apply to the native build: a native module
/// has no VM to skip or reload, and nothing passes an Envoy whose module failed (it is one
/// process). Refused in both modes (`envoy-config --native`, `serve --envoy-native`).
pub fn refuse_failure_policy_for_native(policy: FailurePolicy) -> Result<(), String> {
    if policy != FailurePolicy::FailClosed {
        return Err("general_settings.sluice_failure_policy: only fail_closed applies to the native build (a native module has no VM to skip or reload); remove it or use the wasm build".into());
    }
    Ok(())
}

/// Standalone mode with the native build: the same listener, clusters and filter config, the
/// filter loaded as an Envoy dynamic module (`libsluice_filter.so`) instead of a wasm VM. No
/// WasmService (usage records are logged by the filter itself) and no `vm_config` (the module
/// reads provider credentials from Envoy's own environment). A failure policy other than
/// `fail_closed` cannot apply: a native module has no VM to skip or reload, and nothing passes
/// an Envoy whose module failed (it is one process).
pub fn standalone_native_bootstrap(
    s: &Standalone,
    opts: &BootstrapOptions,
    module_path: &str,
) -> Result<Value, String> {
    refuse_literal_master_key(s)?;
    refuse_vertex(s, opts)?;
    refuse_entra(s)?;
    refuse_failure_policy_for_native(s.failure_policy)?;
    let gateway_json =
        serde_json::to_string(&s.gateway).map_err(|e| format!("cannot serialise the gateway config: {e}"))?;
    let native_filter = json!({
        "name": "sluice",
        "typed_config": {
            "@type": DYNAMIC_MODULE_FILTER_TYPE,
            "dynamic_module_config": {"module": {"local": {"filename": module_path}}},
            "filter_name": NATIVE_FILTER_NAME,
            // The module receives the StringValue's text: the same JSON as the wasm filter.
            "filter_config": {"@type": STRING_VALUE, "value": gateway_json},
        },
    });
    let attempt = needs_attempt_filter(&s.gateway).then(|| native_attempt_filter(module_path));
    let routes = static_routes(s.request_timeout_secs, &s.gateway.stream_idle_timeouts());
    let listener = listener(opts, native_filter, routes, s.gateway.max_request_body_bytes);
    let clusters: Vec<Value> =
        s.upstreams.iter().map(|u| cluster(u, attempt.as_ref(), opts.google_token_dir.as_deref())).collect();
    Ok(native_only(bootstrap("sluice-standalone", opts, listener, clusters, None, None)))
}

/// What a bootstrap for the native build differs in, in both modes: no WasmService (the module
/// does the singleton's work itself) and the runtime flag for its stats' names.
fn native_only(mut b: Value) -> Value {
    if let Some(b) = b.as_object_mut() {
        b.remove("bootstrap_extensions");
    }
    // Envoy's Prometheus output strips a registered custom namespace (`wasmcustom` always; the
    // module's `dynamicmodulescustom` only with this flag in 1.40), so both builds export
    // `sluice_requests{model_group=…}` and not `envoy_dynamicmodulescustom_sluice_requests`.
    b["layered_runtime"] = json!({"layers": [{"name": "sluice", "static_layer": {STRIP_MODULE_STAT_PREFIX: true}}]});
    b
}

/// Where an xDS-mode Envoy finds its control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneAddress {
    pub host: String,
    pub port: u16,
    /// mTLS to the data-plane port (`sluice serve --xds-client-ca …`); None: plaintext.
    pub tls: Option<ControlPlaneTls>,
}

/// The files Envoy reads for mTLS to the control plane (absolute paths). Only the names go in
/// the bootstrap: no key material in it, nor in `/config_dump`.
#[derive(Debug, Clone)]
pub struct ControlPlaneTls {
    /// The CA that signed the control plane's certificate.
    pub ca: String,
    /// This Envoy's client certificate chain and its key.
    pub cert: String,
    pub key: String,
}

/// The control-plane cluster's TLS: Envoy's client certificate, the control plane's checked
/// against `ca` *and* against the host Envoy connects to (Envoy checks no name unless told),
/// ALPN h2 (gRPC). SNI is sent for a DNS name (an IP address is not a valid SNI).
fn control_plane_tls(host: &str, tls: &ControlPlaneTls) -> Value {
    let is_ip = host.parse::<IpAddr>().is_ok();
    let mut context = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificates": [{
                "certificate_chain": {"filename": tls.cert},
                "private_key": {"filename": tls.key},
            }],
            "validation_context": {
                "trusted_ca": {"filename": tls.ca},
                "match_typed_subject_alt_names": [{
                    "san_type": if is_ip { "IP_ADDRESS" } else { "DNS" },
                    "matcher": {"exact": host},
                }],
            },
        },
    });
    if !is_ip {
        context["sni"] = json!(host);
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": context})
}

/// The xDS-mode bootstrap: the listener (whose Sluice filter config arrives by ECDS), the
/// singleton service, and the control plane's address. Clusters and secrets come over ADS.
/// Everything Envoy says to the control plane goes through the one cluster
/// `sluice_control_plane` (ADS, and the filter's key lookups, usage reports, invalidation
/// watch and limit syncs), so its TLS settings cover all of it.
pub fn xds_bootstrap(control_plane: &ControlPlaneAddress, node_id: &str, opts: &BootstrapOptions) -> Value {
    let (listener, cluster, dynamic) = xds_parts(control_plane, opts, WASM_FILTER_TYPE);
    // The singleton ships usage to, and hears revocations from, the control plane.
    let service = json!({"control_plane_cluster": crate::xds::CONTROL_PLANE_CLUSTER, "node_id": node_id}).to_string();
    bootstrap(node_id, opts, listener, vec![cluster], Some(dynamic), Some(service))
}

/// xDS mode with the native build: the same listener, control-plane cluster and ADS as
/// [`xds_bootstrap`], the listener asking ECDS for the dynamic-module filter only (the control
/// plane names the module's path: `sluice serve --envoy-native`), and what every native
/// bootstrap has ([`native_only`]): no WasmService, since the module ships usage, watches
/// invalidations and syncs fleet limits itself, through the same `sluice_control_plane` cluster.
pub fn xds_native_bootstrap(control_plane: &ControlPlaneAddress, node_id: &str, opts: &BootstrapOptions) -> Value {
    let (listener, cluster, dynamic) = xds_parts(control_plane, opts, DYNAMIC_MODULE_FILTER_TYPE);
    native_only(bootstrap(node_id, opts, listener, vec![cluster], Some(dynamic), None))
}

/// The listener whose filter (of `filter_type`) comes by ECDS, the control plane's cluster and
/// the dynamic resources (ADS).
fn xds_parts(control_plane: &ControlPlaneAddress, opts: &BootstrapOptions, filter_type: &str) -> (Value, Value, Value) {
    let filter = json!({
        "name": crate::xds::FILTER_CONFIG_NAME,
        // No default: the listener warms until the control plane has sent a config, so no
        // request is ever served unchecked.
        "config_discovery": {
            "config_source": {"ads": {}, "resource_api_version": "V3"},
            "type_urls": [filter_type],
        },
    });
    // The routes come by RDS (`crate::xds::routes`): they follow the deployments' timeouts.
    let routes = json!({"rds": {
        "config_source": {"ads": {}, "resource_api_version": "V3"},
        "route_config_name": ROUTE_CONFIG_NAME,
    }});
    let listener = listener(opts, filter, routes, DEFAULT_MAX_REQUEST_BODY_BYTES);
    let is_ip = control_plane.host.parse::<IpAddr>().is_ok();
    let mut control_plane_cluster = json!({
        "name": crate::xds::CONTROL_PLANE_CLUSTER,
        "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }},
        "load_assignment": {
            "cluster_name": crate::xds::CONTROL_PLANE_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": control_plane.host, "port_value": control_plane.port}}}}]}],
        },
    });
    if let Some(tls) = &control_plane.tls {
        control_plane_cluster["transport_socket"] = control_plane_tls(&control_plane.host, tls);
    }
    let dynamic = json!({
        "ads_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            // Reconnect fast after a control-plane restart (Envoy's default backs off to 30 s).
            "grpc_services": [{"envoy_grpc": {
                "cluster_name": crate::xds::CONTROL_PLANE_CLUSTER,
                "retry_policy": {"retry_back_off": {"base_interval": "0.25s", "max_interval": "2s"}},
            }}],
            "set_node_on_first_message_only": true,
        },
        "cds_config": {"ads": {}, "resource_api_version": "V3"},
    });
    (listener, control_plane_cluster, dynamic)
}

/// How long a management call through an Envoy may take.
pub const MANAGEMENT_TIMEOUT_SECS: u64 = 30;
/// What a management route removes before the call goes to the control plane.
pub const MANAGEMENT_ROUTE_HEADERS_TO_REMOVE: [&str; 3] =
    [CLUSTER_HEADER, "x-forwarded-for", "x-envoy-external-address"];

/// Envoy's own error replies (provider unreachable, timeouts, a failed filter, overload) in the
/// client's error shape: Anthropic's on `/v1/messages`, OpenAI's elsewhere. The filter's own
/// replies are already JSON and match none of these filters.
fn local_reply_mappers() -> Vec<Value> {
    let cel = |expression: String| {
        json!({"extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }})
    };
    let status_is = |code: u32, runtime_key: &str| json!({"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": code, "runtime_key": runtime_key}}}});
    // Which replies, the message, OpenAI's type and code, Anthropic's type, a status instead of Envoy's.
    type Reply<'a> = (Value, &'a str, &'a str, &'a str, &'a str, Option<u16>);
    let replies: [Reply<'_>; 7] = [
        (
            // The filter's VM failed (a trap; Envoy sends the 503 itself, with no body and no
            // response flag): under FAIL_CLOSED every request on that worker gets it until a
            // restart, under FAIL_RELOAD until the VM is reloaded. Nothing went upstream.
            // Evaluated on local replies only, never on a forwarded request.
            cel(format!("response.code_details == '{WASM_FAIL_STREAM_DETAILS}'")),
            "The gateway's filter failed; the request was not forwarded.",
            "service_unavailable",
            "gateway_filter_failed",
            "api_error",
            None,
        ),
        (
            // The provider did not answer within the request's timeout (`timeout`,
            // `stream_timeout`, `request_timeout`, a request's `timeout`): LiteLLM's 408.
            json!({"response_flag_filter": {"flags": ["UT"]}}),
            "The provider did not answer in time (%LOCAL_REPLY_BODY%).",
            "timeout_error",
            "request_timeout",
            "timeout_error",
            Some(408),
        ),
        (
            // No upstream answered (unreachable, reset, no route).
            json!({"response_flag_filter": {"flags": ["UH", "UF", "UO", "NR", "URX", "NC", "LH", "UC", "DC", "UPE", "UMSDR", "DPE"]}}),
            "%LOCAL_REPLY_BODY%",
            "upstream_error",
            "%RESPONSE_CODE%",
            "api_error",
            None,
        ),
        (
            // A body over the limit is refused by Envoy's buffer (the filter buffers it to route).
            status_is(413, "sluice.unused_413"),
            "Request body too large.",
            "invalid_request_error",
            "request_too_large",
            "request_too_large",
            None,
        ),
        (
            // The client did not send its headers (request_headers_timeout) or its whole request
            // (request_timeout, stream_idle_timeout before the end of the request) in time. A
            // timeout after the request was complete is a 504 with a response flag (above).
            status_is(408, "sluice.unused_408"),
            "The request was not received in time (%LOCAL_REPLY_BODY%).",
            "invalid_request_error",
            "request_timeout",
            "invalid_request_error",
            None,
        ),
        (
            // A deployment's credential injector has no credential yet (an Entra ID token not
            // yet fetched, or its token service unreachable): the provider was not asked, and it
            // is not the client's key that failed (Envoy's own reply would be a 401).
            cel(format!("response.code_details == '{CREDENTIAL_NOT_INJECTED_DETAILS}'")),
            "The gateway has no credential for this deployment yet (its token is being fetched); retry shortly.",
            "service_unavailable",
            "provider_credential_unavailable",
            "api_error",
            Some(503),
        ),
        (
            // The overload manager refuses new requests (the heap is near --max-heap-mb).
            cel(format!("response.code_details == '{OVERLOAD_DETAILS}'")),
            "The gateway is overloaded; retry later.",
            "service_unavailable",
            "gateway_overloaded",
            "overloaded_error",
            None,
        ),
    ];
    let on_messages =
        json!({"header_filter": {"header": {"name": ":path", "string_match": {"prefix": "/v1/messages"}}}});
    let mut mappers = Vec::new();
    for (filter, message, openai_type, code, anthropic_type, status) in replies {
        // First match wins: the Anthropic twin comes first.
        let mut anthropic = json!({
            "filter": {"and_filter": {"filters": [on_messages.clone(), filter.clone()]}},
            "body_format_override": {
                "json_format": {"type": "error", "error": {"type": anthropic_type, "message": message}},
                "content_type": "application/json",
            },
        });
        let mut error = json!({"message": message, "type": openai_type, "code": code});
        if openai_type == "service_unavailable" {
            error["param"] = Value::Null;
        }
        let mut openai = json!({
            "filter": filter,
            "body_format_override": {"json_format": {"error": error}, "content_type": "application/json"},
        });
        if let Some(status) = status {
            anthropic["status_code"] = json!(status);
            openai["status_code"] = json!(status);
        }
        mappers.push(anthropic);
        mappers.push(openai);
    }
    mappers
}

/// One route to the deployments. Both renderings, the standalone bootstrap's JSON
/// ([`deployment_routes`]) and RDS's protobuf in xDS mode (`crate::xds::routes`), are made from
/// [`deployment_route_list`], so both modes route alike.
///
/// Every such route takes its cluster from the filter's `x-sluice-cluster` and retries nothing
/// by default: the filter turns retries on per request with the router's headers
/// (`filter/src/flow/attempts.rs`). What headers cannot say is on the route: a retry goes to
/// another of the cluster's hosts where there is one (`previous_hosts`), and waits as long as a
/// 429's `retry-after` asks, up to [`MAX_RATE_LIMITED_BACKOFF_SECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeploymentRoute {
    /// For a request whose plan has a step after this pass (the filter marks it with
    /// [`FAILOVER_ROUTE_HEADER`]): follows the attempt filter's 307 to the next pass. The others
    /// take a route without the redirect policy, because a route that may follow a redirect
    /// makes Envoy's router keep a copy of the whole request body to send it again (measured:
    /// most of a 32 KB prompt's added cost), which a request that cannot move should not pay.
    pub failover: bool,
    /// For a stream the filter marks with [`STREAM_IDLE_HEADER`] = this many ms (its
    /// deployment's `stream_timeout`): the router's `per_try_idle_timeout`, which cuts a gap
    /// longer than this before the first byte and between chunks (no router header sets it).
    pub stream_idle_ms: Option<u64>,
}

/// The routes to the deployments in match order: a pair (failover, plain) for each of the
/// gateway's stream timeouts ([`GatewayConfig::stream_idle_timeouts`]), then the plain pair.
pub fn deployment_route_list(stream_idle_ms: &[u64]) -> Vec<DeploymentRoute> {
    let idle = stream_idle_ms.iter().map(|&ms| Some(ms)).chain([None]);
    idle.flat_map(|stream_idle_ms| [true, false].map(|failover| DeploymentRoute { failover, stream_idle_ms })).collect()
}

/// What a deployment route removes before the request goes upstream: the filter's routing
/// headers, `accept-encoding` (the gateway meters plain responses), and the client's address,
/// which Envoy would add (a provider has no need of the gateway's users' IPs). The filter also
/// replaces the client's credential headers with the provider's.
pub const DEPLOYMENT_ROUTE_HEADERS_TO_REMOVE: [&str; 7] = [
    CLUSTER_HEADER,
    FAILOVER_ROUTE_HEADER,
    STREAM_IDLE_HEADER,
    "accept-encoding",
    "x-forwarded-for",
    "x-envoy-external-address",
    "x-envoy-expected-rq-timeout-ms",
];

/// A duration as Envoy's JSON writes one (`1.5s`).
fn json_duration_ms(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// The standalone bootstrap's rendering of [`deployment_route_list`].
fn deployment_routes(route_timeout_secs: u64, stream_idle_ms: &[u64]) -> Value {
    let route = |r: DeploymentRoute| {
        let mut retry_policy = json!({
            "num_retries": 0,
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
            }],
            "host_selection_retry_max_attempts": HOST_SELECTION_RETRY_MAX_ATTEMPTS,
            "rate_limited_retry_back_off": {
                "reset_headers": [{"name": "retry-after", "format": "SECONDS"}],
                "max_interval": format!("{MAX_RATE_LIMITED_BACKOFF_SECS}s"),
            },
        });
        let mut headers = Vec::new();
        if r.failover {
            headers.push(json!({"name": FAILOVER_ROUTE_HEADER, "present_match": true}));
        }
        if let Some(ms) = r.stream_idle_ms {
            headers.push(json!({"name": STREAM_IDLE_HEADER, "string_match": {"exact": ms.to_string()}}));
            retry_policy["per_try_idle_timeout"] = json!(json_duration_ms(ms));
        }
        let mut action = json!({
            "cluster_header": CLUSTER_HEADER,
            "timeout": format!("{route_timeout_secs}s"),
            "auto_host_rewrite": true,
            "retry_policy": retry_policy,
        });
        if r.failover {
            action["internal_redirect_policy"] = internal_redirect_policy();
        }
        let mut matcher = json!({"prefix": "/"});
        if !headers.is_empty() {
            matcher["headers"] = Value::Array(headers);
        }
        json!({"match": matcher, "route": action, "request_headers_to_remove": DEPLOYMENT_ROUTE_HEADERS_TO_REMOVE})
    };
    Value::Array(deployment_route_list(stream_idle_ms).into_iter().map(route).collect())
}

/// The standalone bootstrap's routes: the deployments' ([`deployment_routes`]).
fn static_routes(route_timeout_secs: u64, stream_idle_ms: &[u64]) -> Value {
    json!({"route_config": {
        "name": ROUTE_CONFIG_NAME,
        "virtual_hosts": [{
            "name": ROUTE_CONFIG_NAME,
            "domains": ["*"],
            // `x-envoy-attempt-count` on the response: the filter reports a request's retries.
            "include_attempt_count_in_response": true,
            "routes": deployment_routes(route_timeout_secs, stream_idle_ms),
        }],
    }})
}

/// The gateway's listener; `routes` is the connection manager's `route_config` (standalone) or
/// `rds` (xDS mode).
fn listener(opts: &BootstrapOptions, wasm_filter: Value, routes: Value, max_body_bytes: u64) -> Value {
    let local_reply = json!({"mappers": local_reply_mappers()});
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "sluice",
        "use_remote_address": true,
        "generate_request_id": true,
        // Clients can quote the id of a request; it is also the usage record's key.
        "always_set_request_id_in_response": true,
        // Slow clients: the headers, then the whole request, must arrive in time; neither
        // timer runs once the response has begun, so streams may run long. Idle streams and
        // idle connections may not.
        "request_headers_timeout": format!("{REQUEST_HEADERS_TIMEOUT_SECS}s"),
        "request_timeout": format!("{REQUEST_TIMEOUT_SECS}s"),
        "stream_idle_timeout": format!("{STREAM_IDLE_TIMEOUT_SECS}s"),
        "common_http_protocol_options": {"idle_timeout": format!("{CONNECTION_IDLE_TIMEOUT_SECS}s")},
        "max_request_headers_kb": MAX_REQUEST_HEADERS_KB,
        "http2_protocol_options": {
            "max_concurrent_streams": HTTP2_MAX_CONCURRENT_STREAMS,
            "initial_stream_window_size": HTTP2_INITIAL_STREAM_WINDOW_SIZE,
            "initial_connection_window_size": HTTP2_INITIAL_CONNECTION_WINDOW_SIZE,
        },
        "local_reply_config": local_reply,
        "http_filters": [
            wasm_filter,
            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    });
    if let (Some(hcm), Value::Object(routes)) = (hcm.as_object_mut(), routes) {
        hcm.extend(routes);
    }
    json!({
        "name": "sluice",
        "address": {"socket_address": {"address": opts.listen_address, "port_value": opts.listen_port}},
        // The body limit: the filter buffers the body, and Envoy refuses more with a 413.
        // Connections are limited by the overload manager's global limit (see `bootstrap`).
        "per_connection_buffer_limit_bytes": max_body_bytes,
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    })
}

fn bootstrap(
    node_id: &str,
    opts: &BootstrapOptions,
    listener: Value,
    clusters: Vec<Value>,
    dynamic: Option<Value>,
    service_config: Option<String>,
) -> Value {
    let mut b = json!({
        "node": {"id": node_id, "cluster": "sluice"},
        // Outside the global connection limit, so /ready and /stats answer during a flood.
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": opts.admin_port}},
            "ignore_global_conn_limit": true,
        },
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                "singleton": true,
                "config": {"name": "sluice_service", "root_id": "sluice_service", "vm_config": vm_config(&opts.wasm_path, &[])},
            },
        }],
        "static_resources": {"listeners": [listener], "clusters": clusters},
        "overload_manager": overload_manager(opts),
        // The filter's counters: `wasmcustom.` from the wasm build, `dynamicmodulescustom.` from
        // the native one; the same names and tags after that.
        "stats_config": {"stats_tags": [
            {"tag_name": "model_group", "regex": r"^(?:wasmcustom|dynamicmodulescustom)\.sluice\.[a-z_]+(\.model_group\.([^.]+))$"},
            {"tag_name": "reason", "regex": r"^(?:wasmcustom|dynamicmodulescustom)\.sluice\.rejections(\.reason\.([^.]+))$"},
            {"tag_name": "deployment", "regex": r"^(?:wasmcustom|dynamicmodulescustom)\.sluice\.failed_attempts(\.deployment\.([^.]+))\.error\.[^.]+$"},
            {"tag_name": "error", "regex": r"^(?:wasmcustom|dynamicmodulescustom)\.sluice\.failed_attempts\.deployment\.[^.]+(\.error\.([^.]+))$"},
        ]},
    });
    if let Some(dynamic) = dynamic {
        b["dynamic_resources"] = dynamic;
    }
    if let Some(config) = service_config {
        b["bootstrap_extensions"][0]["typed_config"]["config"]["configuration"] =
            json!({"@type": STRING_VALUE, "value": config});
    }
    b
}

/// Envoy's overload manager: a heap limit with two actions, and the global limit on downstream
/// connections (without one Envoy warns at start-up).
fn overload_manager(opts: &BootstrapOptions) -> Value {
    const FIXED_HEAP: &str = "envoy.resource_monitors.fixed_heap";
    let on_heap =
        |action: &str, at: f64| json!({"name": action, "triggers": [{"name": FIXED_HEAP, "threshold": {"value": at}}]});
    json!({
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": FIXED_HEAP,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": opts.max_heap_mb.saturating_mul(1024 * 1024),
                },
            },
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": opts.max_connections,
                },
            },
        ],
        "actions": [
            on_heap("envoy.overload_actions.shrink_heap", SHRINK_HEAP_AT),
            on_heap("envoy.overload_actions.stop_accepting_requests", STOP_ACCEPTING_REQUESTS_AT),
        ],
    })
}

/// The bootstrap as YAML text, with a header saying where it came from.
pub fn to_yaml(bootstrap: &Value) -> Result<String, String> {
    let body = serde_norway::to_string(bootstrap).map_err(|e| format!("cannot write YAML: {e}"))?;
    Ok(format!("# Generated by `sluice envoy-config`; edit config.yaml and regenerate instead.\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::litellm::from_litellm;

    fn opts() -> BootstrapOptions {
        BootstrapOptions {
            listen_address: "127.0.0.1".into(),
            listen_port: 4000,
            admin_port: 9901,
            wasm_path: "/x/sluice_filter.wasm".into(),
            max_heap_mb: DEFAULT_MAX_HEAP_MB,
            google_token_dir: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    fn hcm(b: &Value) -> &Value {
        &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    }

    /// An xDS-mode Envoy takes its routes by RDS (management paths first: `crate::xds::routes`);
    /// a standalone one has them in its bootstrap, and no management route (no control plane).
    #[test]
    fn xds_mode_routes_come_by_rds_and_standalone_ones_with_the_bootstrap() {
        let control_plane = ControlPlaneAddress { host: "127.0.0.1".into(), port: 4002, tls: None };
        for b in [xds_bootstrap(&control_plane, "n", &opts()), xds_native_bootstrap(&control_plane, "n", &opts())] {
            assert_eq!(hcm(&b)["rds"]["route_config_name"], ROUTE_CONFIG_NAME);
            assert!(hcm(&b)["rds"]["config_source"]["ads"].is_object());
            assert_eq!(hcm(&b).get("route_config"), None);
        }
        let s = from_litellm(&json!({}), &|_| None).unwrap();
        let b = standalone_bootstrap(&s, &opts()).unwrap();
        let routes = hcm(&b)["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 2, "the failover route and the plain one");
    }

    #[test]
    fn the_failure_policy_reaches_the_wasm_filter() {
        for (setting, expected) in
            [(None, "FAIL_CLOSED"), (Some("fail_open"), "FAIL_OPEN"), (Some("fail_reload"), "FAIL_RELOAD")]
        {
            let doc = match setting {
                Some(v) => json!({"general_settings": {"sluice_failure_policy": v}}),
                None => json!({}),
            };
            let s = from_litellm(&doc, &|_| None).unwrap();
            let b = standalone_bootstrap(&s, &opts()).unwrap();
            let filter = &hcm(&b)["http_filters"][0]["typed_config"]["config"];
            assert_eq!(filter["failure_policy"], expected, "{setting:?}");
        }
    }

    #[test]
    fn the_master_key_reaches_envoy_by_name_only_and_a_literal_one_not_at_all() {
        let key = "sk-master-0123456789abcdef0123456789abcdef";
        let env = |name: &str| (name == "SLUICE_MASTER_KEY").then(|| key.to_owned());
        let doc = json!({"general_settings": {"master_key": "os.environ/SLUICE_MASTER_KEY"}});
        let b = standalone_bootstrap(&from_litellm(&doc, &env).unwrap(), &opts()).unwrap();
        let filter = &hcm(&b)["http_filters"][0]["typed_config"]["config"];
        assert_eq!(filter["vm_config"]["environment_variables"]["host_env_keys"], json!(["SLUICE_MASTER_KEY"]));
        let text = to_yaml(&b).unwrap();
        let digest = sluice_core::keys::KeyHash::of(key.as_bytes()).to_hex();
        assert!(!text.contains(key) && !text.contains(&digest), "the key or its digest is in Envoy's config");
        let literal = from_litellm(&json!({"general_settings": {"master_key": key}}), &|_| None).unwrap();
        for e in [
            standalone_bootstrap(&literal, &opts()).unwrap_err(),
            standalone_native_bootstrap(&literal, &opts(), "/x/libsluice_filter.so").unwrap_err(),
        ] {
            assert!(e.contains("os.environ/") && !e.contains(key), "{e}");
        }
    }

    /// A standalone Vertex deployment reads its token from the SDS file `sluice google-tokens`
    /// keeps in --google-token-dir; without the directory, both builds refuse it.
    #[test]
    fn a_standalone_vertex_cluster_reads_its_token_from_the_token_directory() {
        let doc = json!({"model_list": [{"model_name": "g", "litellm_params": {"model": "vertex_ai/gemini-2.5-flash", "vertex_project": "p"}, "model_info": {"id": "vg"}}]});
        let s = from_litellm(&doc, &|_| None).unwrap();
        for e in [
            standalone_bootstrap(&s, &opts()).unwrap_err(),
            standalone_native_bootstrap(&s, &opts(), "/x.so").unwrap_err(),
        ] {
            assert!(e.contains("vertex_ai/ deployments (vg)") && e.contains("--google-token-dir"), "{e}");
        }
        let with_dir = BootstrapOptions { google_token_dir: Some("/run/sluice/tokens".into()), ..opts() };
        let b = standalone_bootstrap(&s, &with_dir).unwrap();
        let cluster = b["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == sluice_core::litellm::cluster_name("vg"))
            .unwrap();
        let filters = &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["http_filters"];
        let generic = &filters[0]["typed_config"]["credential"]["typed_config"];
        assert_eq!(
            (generic["header"].as_str(), generic["header_value_prefix"].as_str()),
            (Some("authorization"), Some("Bearer "))
        );
        let source = &generic["credential"]["sds_config"]["path_config_source"];
        let file = format!("/run/sluice/tokens/{}.json", sluice_core::litellm::cluster_name("vg"));
        assert_eq!(source["path"], file.as_str());
        assert_eq!(source["watched_directory"]["path"], "/run/sluice/tokens");
        assert_eq!(filters[1]["name"], UPSTREAM_CODEC);
    }

    #[test]
    fn the_native_bootstrap_loads_the_module_with_the_wasm_filters_config() {
        let s = from_litellm(&json!({}), &|_| None).unwrap();
        let wasm = standalone_bootstrap(&s, &opts()).unwrap();
        let native = standalone_native_bootstrap(&s, &opts(), "/x/libsluice_filter.so").unwrap();
        let filter = &hcm(&native)["http_filters"][0]["typed_config"];
        assert_eq!(filter["@type"], DYNAMIC_MODULE_FILTER_TYPE);
        assert_eq!(filter["dynamic_module_config"]["module"]["local"]["filename"], "/x/libsluice_filter.so");
        let wasm_config = &hcm(&wasm)["http_filters"][0]["typed_config"]["config"]["configuration"];
        assert_eq!(filter["filter_config"], *wasm_config, "the same JSON, the same StringValue");
        // Nothing of wasm's: no VM, no singleton, no failure policy.
        let text = native.to_string();
        for wasm_only in ["vm_config", "envoy.bootstrap.wasm", "failure_policy", ".wasm"] {
            assert!(!text.contains(wasm_only), "{wasm_only} in the native bootstrap");
        }
        let runtime = &native["layered_runtime"]["layers"][0]["static_layer"];
        assert_eq!(runtime["envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix"], true);
        // Everything else is the same.
        assert_eq!(native["static_resources"]["clusters"], wasm["static_resources"]["clusters"]);
        assert_eq!(hcm(&native)["route_config"], hcm(&wasm)["route_config"]);
        assert_eq!(native["overload_manager"], wasm["overload_manager"]);
    }

    /// An Entra ID application needs SDS for its secret: both standalone bootstraps refuse it,
    /// naming the deployment and the way out.
    #[test]
    fn a_standalone_bootstrap_refuses_an_entra_id_deployment_with_the_reason() {
        let doc = json!({"model_list": [{"model_name": "az", "model_info": {"id": "az-1"}, "litellm_params": {
            "model": "azure/gpt4o", "api_base": "https://acme.openai.azure.com", "tenant_id": "t",
            "client_id": "c", "client_secret": "os.environ/AZ_SECRET"}}]});
        let s = from_litellm(&doc, &|_| None).unwrap();
        for result in [standalone_bootstrap(&s, &opts()), standalone_native_bootstrap(&s, &opts(), "/x/m.so")] {
            let e = result.unwrap_err();
            assert!(e.contains("(az-1) need `sluice serve`") && e.contains("can use api_key"), "{e}");
        }
    }

    #[test]
    fn the_native_bootstrap_refuses_a_failure_policy_it_cannot_apply() {
        for (setting, ok) in [("fail_closed", true), ("fail_open", false), ("fail_reload", false)] {
            let s = from_litellm(&json!({"general_settings": {"sluice_failure_policy": setting}}), &|_| None).unwrap();
            let result = standalone_native_bootstrap(&s, &opts(), "/x/libsluice_filter.so");
            assert_eq!(result.is_ok(), ok, "{setting}: {result:?}");
        }
    }

    /// Envoy's own replies answer in the client's shape: Anthropic's on /v1/messages (the twin
    /// that comes first), OpenAI's elsewhere.
    #[test]
    fn envoys_own_replies_answer_in_the_clients_error_shape() {
        for b in both_bootstraps(&opts()) {
            let mappers = hcm(&b)["local_reply_config"]["mappers"].as_array().unwrap().clone();
            assert_eq!(mappers.len(), 14);
            for pair in mappers.chunks(2) {
                let (anthropic, openai) = (&pair[0], &pair[1]);
                let both = anthropic["filter"]["and_filter"]["filters"].as_array().unwrap();
                assert_eq!(both[0]["header_filter"]["header"]["string_match"]["prefix"], "/v1/messages");
                assert_eq!(both[1], openai["filter"]);
                let a = &anthropic["body_format_override"]["json_format"];
                assert_eq!(a["type"], "error");
                assert!(
                    a["error"]["type"].as_str().unwrap().ends_with("error")
                        || a["error"]["type"] == "request_too_large"
                );
                assert_eq!(a["error"]["message"], openai["body_format_override"]["json_format"]["error"]["message"]);
            }
            let failed_vm = &mappers[1];
            let expression = failed_vm["filter"]["extension_filter"]["typed_config"]["expression"].as_str().unwrap();
            assert!(expression.contains("wasm_fail_stream"), "{expression}");
            let error = &failed_vm["body_format_override"]["json_format"]["error"];
            assert_eq!(error["code"], "gateway_filter_failed");
            assert_eq!(error["type"], "service_unavailable");
            // A provider too slow for the request's timeout: LiteLLM's 408, in both shapes.
            let timed_out = &mappers[2..4];
            for m in timed_out {
                assert_eq!(m["status_code"], 408);
            }
            assert_eq!(timed_out[1]["filter"]["response_flag_filter"]["flags"], json!(["UT"]));
        }
    }

    /// Standalone and xDS, each with both builds.
    fn both_bootstraps(opts: &BootstrapOptions) -> [Value; 4] {
        let s = from_litellm(&json!({}), &|_| None).unwrap();
        let control_plane = ControlPlaneAddress { host: "127.0.0.1".into(), port: 4002, tls: None };
        [
            standalone_bootstrap(&s, opts).unwrap(),
            standalone_native_bootstrap(&s, opts, "/x/libsluice_filter.so").unwrap(),
            xds_bootstrap(&control_plane, "n", opts),
            xds_native_bootstrap(&control_plane, "n", opts),
        ]
    }

    #[test]
    fn every_bootstrap_defends_against_slow_clients() {
        for b in both_bootstraps(&opts()) {
            let hcm = hcm(&b);
            assert_eq!(hcm["request_headers_timeout"], "10s");
            assert_eq!(hcm["request_timeout"], "120s");
            assert_eq!(hcm["stream_idle_timeout"], "300s");
            assert_eq!(hcm["common_http_protocol_options"]["idle_timeout"], "300s");
            assert_eq!(hcm["max_request_headers_kb"], 32);
            assert_eq!(hcm["use_remote_address"], true);
            assert_eq!(
                hcm["http2_protocol_options"],
                json!({"max_concurrent_streams": 100, "initial_stream_window_size": 65536, "initial_connection_window_size": 1048576})
            );
            let listener = &b["static_resources"]["listeners"][0];
            assert!(listener["per_connection_buffer_limit_bytes"].as_u64().unwrap() > 0);
            assert_eq!(b["admin"]["ignore_global_conn_limit"], true);
            // Envoy's own 408s and overload 503s answer in OpenAI's error shape.
            let mappers = hcm["local_reply_config"]["mappers"].as_array().unwrap();
            let codes: Vec<&Value> =
                mappers.iter().map(|m| &m["body_format_override"]["json_format"]["error"]["code"]).collect();
            assert!(
                codes.contains(&&json!("request_timeout")) && codes.contains(&&json!("gateway_overloaded")),
                "{codes:?}"
            );
        }
    }

    #[test]
    fn every_bootstrap_has_the_overload_manager_with_the_given_limits() {
        let defaults = opts();
        let custom = BootstrapOptions { max_heap_mb: 512, max_connections: 2000, ..opts() };
        for (opts, heap_bytes, connections) in [(&defaults, 1024u64 << 20, 50_000u64), (&custom, 512 << 20, 2000)] {
            for b in both_bootstraps(opts) {
                let overload = &b["overload_manager"];
                let monitors = overload["resource_monitors"].as_array().unwrap();
                let monitor = |name: &str| &monitors.iter().find(|m| m["name"] == name).unwrap()["typed_config"];
                assert_eq!(monitor("envoy.resource_monitors.fixed_heap")["max_heap_size_bytes"], heap_bytes);
                assert_eq!(
                    monitor("envoy.resource_monitors.global_downstream_max_connections")["max_active_downstream_connections"],
                    connections
                );
                let actions: Vec<(&str, f64)> = overload["actions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| {
                        assert_eq!(a["triggers"][0]["name"], "envoy.resource_monitors.fixed_heap");
                        (a["name"].as_str().unwrap(), a["triggers"][0]["threshold"]["value"].as_f64().unwrap())
                    })
                    .collect();
                assert_eq!(
                    actions,
                    [
                        ("envoy.overload_actions.shrink_heap", 0.90),
                        ("envoy.overload_actions.stop_accepting_requests", 0.98)
                    ]
                );
            }
        }
    }

    fn control_plane_cluster(b: &Value) -> &Value {
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        clusters.iter().find(|c| c["name"] == crate::xds::CONTROL_PLANE_CLUSTER).unwrap()
    }

    #[test]
    fn the_control_plane_cluster_speaks_mtls_when_asked_with_files_named_not_inlined() {
        let plain = xds_bootstrap(&ControlPlaneAddress { host: "cp".into(), port: 4002, tls: None }, "n", &opts());
        assert!(control_plane_cluster(&plain).get("transport_socket").is_none(), "plaintext by default");

        let tls =
            ControlPlaneTls { ca: "/tls/ca.pem".into(), cert: "/tls/envoy.pem".into(), key: "/tls/envoy.key".into() };
        let by_name = ControlPlaneAddress { host: "sluice-control-plane".into(), port: 4002, tls: Some(tls.clone()) };
        let b = xds_bootstrap(&by_name, "n", &opts());
        let socket = &control_plane_cluster(&b)["transport_socket"];
        assert_eq!(socket["name"], "envoy.transport_sockets.tls");
        let context = &socket["typed_config"];
        assert_eq!(context["sni"], "sluice-control-plane");
        let common = &context["common_tls_context"];
        assert_eq!(common["alpn_protocols"], json!(["h2"]));
        assert_eq!(common["tls_certificates"][0]["certificate_chain"], json!({"filename": "/tls/envoy.pem"}));
        assert_eq!(common["tls_certificates"][0]["private_key"], json!({"filename": "/tls/envoy.key"}));
        assert_eq!(common["validation_context"]["trusted_ca"], json!({"filename": "/tls/ca.pem"}));
        assert_eq!(
            common["validation_context"]["match_typed_subject_alt_names"],
            json!([{"san_type": "DNS", "matcher": {"exact": "sluice-control-plane"}}])
        );
        // The ADS stream and the filter's calls both name this one cluster.
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"],
            "sluice_control_plane"
        );
        let text = to_yaml(&b).unwrap();
        assert!(!text.contains("inline_") && !text.contains("PRIVATE KEY"), "only file names");

        let by_ip = ControlPlaneAddress { host: "10.0.0.7".into(), port: 4002, tls: Some(tls) };
        let b = xds_bootstrap(&by_ip, "n", &opts());
        let context = &control_plane_cluster(&b)["transport_socket"]["typed_config"];
        assert!(context.get("sni").is_none(), "an IP address is no SNI");
        assert_eq!(
            context["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"],
            json!([{"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.7"}}])
        );
    }

    #[test]
    fn the_native_xds_bootstrap_asks_ecds_for_the_module_and_has_no_wasm_service() {
        let tls =
            ControlPlaneTls { ca: "/tls/ca.pem".into(), cert: "/tls/envoy.pem".into(), key: "/tls/envoy.key".into() };
        let control_plane = ControlPlaneAddress { host: "sluice-control-plane".into(), port: 4002, tls: Some(tls) };
        // The wasm path is unused: the control plane names the module.
        let opts = BootstrapOptions { wasm_path: String::new(), ..opts() };
        let wasm = xds_bootstrap(&control_plane, "edge-1", &opts);
        let native = xds_native_bootstrap(&control_plane, "edge-1", &opts);
        let filter = &hcm(&native)["http_filters"][0];
        assert_eq!(filter["name"], "sluice");
        assert_eq!(filter["config_discovery"]["type_urls"], json!([DYNAMIC_MODULE_FILTER_TYPE]));
        assert_eq!(filter["config_discovery"]["config_source"], json!({"ads": {}, "resource_api_version": "V3"}));
        assert!(filter.get("typed_config").is_none(), "no default config: the listener warms until ECDS answers");
        assert_eq!(hcm(&wasm)["http_filters"][0]["config_discovery"]["type_urls"], json!([WASM_FILTER_TYPE]));
        // Nothing of wasm's: no WasmService, no VM.
        assert!(native.get("bootstrap_extensions").is_none());
        let text = native.to_string();
        for wasm_only in ["vm_config", "envoy.bootstrap.wasm", "sluice_service", WASM_FILTER_TYPE] {
            assert!(!text.contains(wasm_only), "{wasm_only} in the native xDS bootstrap");
        }
        assert_eq!(native["layered_runtime"]["layers"][0]["static_layer"][STRIP_MODULE_STAT_PREFIX], true);
        assert!(wasm.get("layered_runtime").is_none());
        // Everything else is the wasm xDS bootstrap's: the node, the control plane's cluster
        // (mTLS included), ADS, the route, the limits.
        assert_eq!(native["node"], json!({"id": "edge-1", "cluster": "sluice"}));
        assert_eq!(native["static_resources"]["clusters"], wasm["static_resources"]["clusters"]);
        assert!(control_plane_cluster(&native)["transport_socket"]["typed_config"]["common_tls_context"].is_object());
        assert_eq!(native["dynamic_resources"], wasm["dynamic_resources"]);
        assert_eq!(hcm(&native)["rds"], hcm(&wasm)["rds"]);
        assert_eq!(hcm(&native)["http_filters"][1], hcm(&wasm)["http_filters"][1]);
        assert_eq!(native["overload_manager"], wasm["overload_manager"]);
        assert_eq!(native["stats_config"], wasm["stats_config"]);
        let (mut native_listener, mut wasm_listener) =
            (native["static_resources"]["listeners"][0].clone(), wasm["static_resources"]["listeners"][0].clone());
        for l in [&mut native_listener, &mut wasm_listener] {
            l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0] = Value::Null;
        }
        assert_eq!(native_listener, wasm_listener, "the listeners differ in the filter's type only");
    }

    /// Two groups (one deployment each, a Bedrock one among them), with `router_settings` added.
    fn with_groups(router_settings: Value) -> Standalone {
        let doc = json!({
            "model_list": [
                {"model_name": "a", "litellm_params": {"model": "openai/gpt-4o", "api_key": "os.environ/OPENAI_KEY"}, "model_info": {"id": "a1"}},
                {"model_name": "b", "litellm_params": {"model": "bedrock/anthropic.claude-3-haiku-20240307-v1:0", "aws_region_name": "eu-central-1"}, "model_info": {"id": "b1"}},
                {"model_name": "b", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": "http://10.0.0.7:8080"}, "model_info": {"id": "b2"}},
            ],
            "general_settings": {"sluice_failure_policy": "fail_reload"},
            "router_settings": router_settings,
        });
        from_litellm(&doc, &|_| None).unwrap()
    }

    fn upstream_filters(cluster: &Value) -> Vec<Value> {
        cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["http_filters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn deployment_clusters(b: &Value) -> Vec<Value> {
        b["static_resources"]["clusters"].as_array().unwrap().clone()
    }

    /// With fallbacks, every deployment cluster runs the module's attempt role first and the
    /// codec last, in both builds; the wasm one shares the downstream filter's VM and failure
    /// policy, the native one its module.
    #[test]
    fn with_fallbacks_every_deployment_cluster_runs_the_attempt_filter_first() {
        for settings in [json!({"fallbacks": [{"a": ["b"]}]}), json!({"default_fallbacks": ["b"]})] {
            let s = with_groups(settings.clone());
            assert!(needs_attempt_filter(&s.gateway), "{settings}");
            let wasm = standalone_bootstrap(&s, &opts()).unwrap();
            let downstream = &hcm(&wasm)["http_filters"][0]["typed_config"]["config"];
            let clusters = deployment_clusters(&wasm);
            assert_eq!(clusters.len(), 3);
            for c in &clusters {
                let filters = upstream_filters(c);
                assert_eq!(filters[0]["name"], "envoy.filters.http.wasm", "{}", c["name"]);
                let attempt = &filters[0]["typed_config"];
                assert_eq!(attempt["@type"], WASM_FILTER_TYPE);
                let config = &attempt["config"];
                assert_eq!(config["root_id"], "sluice_attempt");
                assert_eq!(config["name"], "sluice_attempt");
                // The gateway filter's module and vm_id (its shared data holds the plans), in a
                // VM of its own (the VM configuration sets it apart).
                let mut own = config["vm_config"].clone();
                assert_eq!(own["configuration"]["value"], ATTEMPT_VM_CONFIGURATION);
                own.as_object_mut().unwrap().remove("configuration");
                assert_eq!(own, downstream["vm_config"]);
                assert_eq!(config["vm_config"]["vm_id"], VM_ID);
                assert_eq!(config["failure_policy"], downstream["failure_policy"]);
                assert_eq!(config["failure_policy"], "FAIL_RELOAD");
                assert_eq!(config["configuration"], json!({"@type": STRING_VALUE, "value": "{}"}));
                assert_eq!(filters.last().unwrap()["name"], "envoy.filters.http.upstream_codec");
            }
            // Bedrock's signing stays between them: it signs the final request.
            let bedrock = clusters.iter().find(|c| c["name"].as_str().unwrap().contains("b1")).unwrap();
            let names: Vec<Value> = upstream_filters(bedrock).iter().map(|f| f["name"].clone()).collect();
            assert_eq!(
                names,
                [
                    "envoy.filters.http.wasm",
                    "envoy.filters.http.aws_request_signing",
                    "envoy.filters.http.upstream_codec"
                ]
            );

            let native_s = Standalone { failure_policy: FailurePolicy::FailClosed, ..s };
            let native = standalone_native_bootstrap(&native_s, &opts(), "/x/libsluice_filter.so").unwrap();
            let downstream = &hcm(&native)["http_filters"][0]["typed_config"];
            for c in &deployment_clusters(&native) {
                let filters = upstream_filters(c);
                assert_eq!(filters[0]["name"], "envoy.filters.http.dynamic_modules", "{}", c["name"]);
                let attempt = &filters[0]["typed_config"];
                assert_eq!(attempt["@type"], DYNAMIC_MODULE_FILTER_TYPE);
                assert_eq!(attempt["dynamic_module_config"], downstream["dynamic_module_config"]);
                assert_eq!(attempt["filter_name"], "sluice_attempt");
                assert_eq!(attempt["filter_config"], json!({"@type": STRING_VALUE, "value": "{}"}));
                assert_eq!(filters.last().unwrap()["name"], "envoy.filters.http.upstream_codec");
            }
            let text = native.to_string();
            assert!(!text.contains("vm_config") && !text.contains(WASM_FILTER_TYPE), "nothing of wasm's");
        }
    }

    /// Without fallbacks and without a group of several deployments (whose retries go to
    /// another deployment), a deployment cluster pays nothing: no attempt filter, and no
    /// upstream chain at all unless Bedrock signs.
    #[test]
    fn without_fallbacks_no_cluster_runs_the_attempt_filter() {
        assert!(needs_attempt_filter(&with_groups(json!({})).gateway), "group b has two deployments");
        let mut s = with_groups(json!({}));
        s.gateway.deployments.retain(|d| d.id != "b2");
        s.upstreams.retain(|u| !u.cluster.contains("b2"));
        assert!(!needs_attempt_filter(&s.gateway));
        let builds = [
            standalone_bootstrap(&s, &opts()).unwrap(),
            standalone_native_bootstrap(
                &Standalone { failure_policy: FailurePolicy::FailClosed, ..s.clone() },
                &opts(),
                "/x/libsluice_filter.so",
            )
            .unwrap(),
        ];
        for b in &builds {
            for c in &deployment_clusters(b) {
                let names: Vec<Value> = upstream_filters(c).iter().map(|f| f["name"].clone()).collect();
                if c["name"].as_str().unwrap().contains("b1") {
                    assert_eq!(names, ["envoy.filters.http.aws_request_signing", "envoy.filters.http.upstream_codec"]);
                } else {
                    assert!(names.is_empty(), "{}: {names:?}", c["name"]);
                }
            }
            assert!(!b.to_string().contains("sluice_attempt"));
        }
        assert_eq!(builds[0]["static_resources"]["clusters"], builds[1]["static_resources"]["clusters"]);
    }

    /// A request the filter marks as having a next step takes a route that follows the attempt
    /// filter's 307 internally and copies its nonce, in every standalone bootstrap, with or
    /// without fallbacks (xDS mode's: `crate::xds::routes`); any other takes the same route
    /// without the redirect policy (whose router keeps a copy of every body). Neither lets the
    /// marker or the cluster header go upstream.
    #[test]
    fn only_the_marked_route_follows_a_failover_redirect() {
        let expected = json!({
            "redirect_response_codes": [307],
            "max_internal_redirects": 16,
            "allow_cross_scheme_redirect": true,
            "response_headers_to_copy": ["x-sluice-failover"],
        });
        let with = with_groups(json!({"fallbacks": [{"a": ["b"]}]}));
        let mut all = both_bootstraps(&opts())[..2].to_vec();
        all.push(standalone_bootstrap(&with, &opts()).unwrap());
        for b in &all {
            // The deployments' routes (the management paths' go to the control plane, no failover).
            let routes = hcm(b)["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap();
            let to_deployments: Vec<&Value> =
                routes.iter().filter(|r| r["route"]["cluster_header"] == CLUSTER_HEADER).collect();
            let [failover, plain] = to_deployments[..] else { panic!("two deployment routes: {routes:?}") };
            assert_eq!(failover["route"]["internal_redirect_policy"], expected);
            assert_eq!(failover["match"]["headers"], json!([{"name": FAILOVER_ROUTE_HEADER, "present_match": true}]));
            assert_eq!(plain["route"].get("internal_redirect_policy"), None);
            assert_eq!(plain["match"], json!({"prefix": "/"}));
            for route in [failover, plain] {
                let removed = route["request_headers_to_remove"].as_array().unwrap();
                assert!(removed.contains(&json!(CLUSTER_HEADER)) && removed.contains(&json!(FAILOVER_ROUTE_HEADER)));
            }
        }
    }

    /// Each stream timeout of the config is a pair of routes the filter picks by
    /// `x-sluice-stream-idle-ms`, whose router cuts a longer gap (`per_try_idle_timeout`),
    /// ahead of the plain pair; the gateway's own timeout counts for deployments without one.
    #[test]
    fn each_stream_timeout_is_a_route_pair_with_that_idle_timeout() {
        let doc = json!({
            "model_list": [
                {"model_name": "a", "litellm_params": {"model": "openai/gpt-4o", "api_key": "os.environ/K", "stream_timeout": 1.5}},
                {"model_name": "b", "litellm_params": {"model": "openai/gpt-4o", "api_key": "os.environ/K", "timeout": 20}},
                {"model_name": "c", "litellm_params": {"model": "openai/gpt-4o", "api_key": "os.environ/K"}},
            ],
            "litellm_settings": {"request_timeout": 300},
        });
        let s = from_litellm(&doc, &|_| None).unwrap();
        for b in
            [standalone_bootstrap(&s, &opts()).unwrap(), standalone_native_bootstrap(&s, &opts(), "/x/m.so").unwrap()]
        {
            let routes = hcm(&b)["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap().clone();
            let shape: Vec<(Value, Value, bool)> = routes
                .iter()
                .map(|r| {
                    let idle = r["match"]["headers"].as_array().and_then(|h| {
                        h.iter().find(|h| h["name"] == STREAM_IDLE_HEADER).map(|h| h["string_match"]["exact"].clone())
                    });
                    let redirect = r["route"].get("internal_redirect_policy").is_some();
                    (idle.unwrap_or(Value::Null), r["route"]["retry_policy"]["per_try_idle_timeout"].clone(), redirect)
                })
                .collect();
            assert_eq!(
                shape,
                [
                    (json!("1500"), json!("1.500s"), true),
                    (json!("1500"), json!("1.500s"), false),
                    (json!("20000"), json!("20.000s"), true),
                    (json!("20000"), json!("20.000s"), false),
                    (json!("300000"), json!("300.000s"), true),
                    (json!("300000"), json!("300.000s"), false),
                    (Value::Null, Value::Null, true),
                    (Value::Null, Value::Null, false),
                ]
            );
            assert!(routes.iter().all(|r| r["route"]["timeout"] == "300s"));
        }
    }

    #[test]
    fn the_failure_policy_refusal_is_the_same_for_both_modes() {
        assert!(refuse_failure_policy_for_native(FailurePolicy::FailClosed).is_ok());
        for policy in [FailurePolicy::FailOpen, FailurePolicy::FailReload] {
            let e = refuse_failure_policy_for_native(policy).unwrap_err();
            assert!(e.contains("sluice_failure_policy") && e.contains("fail_closed"), "{e}");
        }
    }
}
