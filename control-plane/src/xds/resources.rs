//! What the control plane serves over xDS, built from the database: one cluster per model
//! deployment (CDS), the routes (RDS, `super::routes`), the Sluice filter's config (ECDS, a
//! `TypedExtensionConfig` wrapping the wasm filter, or the dynamic-module filter for the native
//! build), and each deployment's provider credential (SDS).
//!
//! Provider credentials never enter the filter or its config: each cluster runs Envoy's
//! `credential_injector` as an upstream HTTP filter, which takes the credential from an SDS
//! secret (redacted in `/config_dump`) and sets the provider's header on the way out. The
//! filter only removes the client's credential. The control plane reads the credential from its
//! own environment (`api_key: os.environ/NAME`).

use std::collections::{BTreeMap, BTreeSet};

use sluice_core::litellm::{EntraClient, GoogleCredentials, Upstream};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, circuit_breakers};
use envoy_types::pb::envoy::config::core::v3::Address;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, AsyncDataSource, ConfigSource, DataSource, Http1ProtocolOptions, HttpUri,
    SocketAddress, TransportSocket, TypedExtensionConfig, address, async_data_source, config_source, data_source,
    http_uri, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::dynamic_modules::v3::DynamicModuleConfig;
use envoy_types::pb::envoy::extensions::filters::http::aws_request_signing::v3::AwsRequestSigning;
use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3::DynamicModuleFilter;
use envoy_types::pb::envoy::extensions::filters::http::upstream_codec::v3::UpstreamCodec;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{HttpFilter, http_filter};
use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic;
use envoy_types::pb::envoy::extensions::http::injected_credentials::oauth2::v3::{OAuth2, o_auth2};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, GenericSecret, SdsSecretConfig, Secret, SubjectAltNameMatcher,
    UpstreamTlsContext, common_tls_context, secret, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy as WasmFailurePolicy, PluginConfig, VmConfig, plugin_config,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, StringValue, UInt32Value};
use prost::{Message, Name};
use sluice_core::config::{GatewayConfig, KeyLookupConfig, LookupRateConfig, Provider, ProxyBudget};
use sluice_core::customers::CustomerConfig;
use sluice_core::litellm::{FailurePolicy, from_litellm};

use super::protocol::{CLUSTER, EXTENSION_CONFIG, ROUTE, SECRET, Snapshot};
use crate::envoy_bootstrap::{
    ATTEMPT_FILTER_NAME, ATTEMPT_VM_CONFIGURATION, CA_BUNDLE, CONNECT_TIMEOUT_SECS, FILTER_ROOT_ID,
    MAX_CONCURRENT_RETRIES, NATIVE_FILTER_NAME, ROUTE_CONFIG_NAME, VM_ID, WASM_RUNTIME, needs_attempt_filter,
    refuse_failure_policy_for_native, upstream_is_ip,
};
use crate::provider_policy::ProviderPolicy;

/// The name the listener's `config_discovery` asks for.
pub const FILTER_CONFIG_NAME: &str = "sluice";
/// The bootstrap's cluster that reaches the control plane (xDS and key lookups).
pub const CONTROL_PLANE_CLUSTER: &str = "sluice_control_plane";

/// Which build of the filter the Envoys run, and its path on the Envoy hosts. One per control
/// plane: an Envoy's listener asks ECDS for one type (`sluice envoy-config --xds` with `--wasm`
/// or `--native`), and rejects a config of the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterModule {
    /// `sluice_filter.wasm` (`sluice serve --envoy-wasm`): the same file the bootstrap's
    /// singleton service loads, so both share one VM image.
    Wasm(String),
    /// `libsluice_filter.so` (`sluice serve --envoy-native`), loaded as an Envoy dynamic module.
    Native(String),
}

/// How the control plane describes Envoy's side of things.
#[derive(Debug, Clone)]
pub struct XdsOptions {
    /// The filter's build and its path on the Envoy hosts.
    pub module: FilterModule,
    /// config.yaml's `general_settings` that shape the filter (`max_request_size_mb`,
    /// `sluice_failure_policy`, `background_health_checks`), converted by the same code as in
    /// standalone mode.
    pub general_settings: serde_json::Map<String, serde_json::Value>,
    /// config.yaml's `litellm_settings` (`drop_params`, `num_retries`, `request_timeout`).
    pub litellm_settings: serde_json::Map<String, serde_json::Value>,
    /// config.yaml's `router_settings` but the Redis ones (`model_group_alias`, `num_retries`,
    /// `retry_policy`, `timeout`).
    pub router_settings: serde_json::Map<String, serde_json::Value>,
    pub key_lookup: KeyLookupConfig,
    /// Which credentials deployments may name and where they may go; checked again here, so a
    /// deployment stored before a policy change never gets a refused credential.
    pub provider_policy: ProviderPolicy,
}

impl XdsOptions {
    /// `litellm_settings`' budgets: the gateway's own and the end users' default
    /// (`sluice serve` refused any it cannot read before it started).
    pub fn budgets(&self) -> (Option<ProxyBudget>, Option<f64>) {
        sluice_core::litellm::budget_settings(&self.litellm_settings).unwrap_or_default()
    }

    /// Options for the wasm build at `wasm_path` (see [`XdsOptions::native`]).
    pub fn new(wasm_path: String) -> Self {
        Self::with_module(FilterModule::Wasm(wasm_path))
    }

    /// Options for the native build: `libsluice_filter.so` at `module_path` on the Envoy hosts.
    pub fn native(module_path: String) -> Self {
        Self::with_module(FilterModule::Native(module_path))
    }

    /// What the options alone refuse, before anything starts (`sluice serve`): the snapshot of
    /// no deployments, built by the same code as every snapshot (a failure policy the native
    /// build cannot apply).
    pub fn check(&self) -> Result<(), String> {
        build(&[], self, &|_| None).map(|_| ())
    }

    pub fn with_module(module: FilterModule) -> Self {
        Self {
            module,
            general_settings: serde_json::Map::new(),
            litellm_settings: serde_json::Map::new(),
            router_settings: serde_json::Map::new(),
            key_lookup: KeyLookupConfig {
                cluster: CONTROL_PLANE_CLUSTER.into(),
                timeout_ms: 1000,
                ttl_ms: 60_000,
                negative_ttl_ms: 5_000,
                fail_open: false,
                // Per worker: 50 lookups a second, 100 at once; 10 a second (20 at once) per
                // client address. Why these: LookupRateConfig::default.
                rate: LookupRateConfig::default(),
            },
            provider_policy: ProviderPolicy::default(),
        }
    }
}

/// The snapshot for a set of deployments (LiteLLM `model_list` entries as stored), plus the
/// warnings the conversion produced. `env` resolves `os.environ/NAME` credentials.
pub fn build(
    model_list: &[serde_json::Value],
    opts: &XdsOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Snapshot, Vec<String>), String> {
    build_with_tokens(model_list, PushedStanding::default(), opts, env, &|_| None)
}

/// What the control plane counts and every Envoy's filter config carries: the customers'
/// rules and budgets spent (`crate::customers`), and whether the gateway's own budget is spent.
#[derive(Debug, Clone, Default)]
pub struct PushedStanding {
    pub customers: Vec<CustomerConfig>,
    pub proxy_budget_spent: bool,
}

/// [`build`], with the standing every Envoy holds requests to, and Vertex AI deployments'
/// access tokens from `google_token` (the `google_tokens` module's current token for a
/// credential source; None: none yet).
pub fn build_with_tokens(
    model_list: &[serde_json::Value],
    standing: PushedStanding,
    opts: &XdsOptions,
    env: &dyn Fn(&str) -> Option<String>,
    google_token: &dyn Fn(&GoogleCredentials) -> Option<String>,
) -> Result<(Snapshot, Vec<String>), String> {
    // An alias of a group no deployment serves any more (deleted through the admin API) is
    // left out with a warning: it must not stop every later configuration from reaching Envoy.
    let mut router_settings = opts.router_settings.clone();
    let mut litellm_settings = opts.litellm_settings.clone();
    let mut dropped = Vec::new();
    let served = |group: &str| model_list.iter().any(|m| m.get("model_name").and_then(|n| n.as_str()) == Some(group));
    // Likewise a fallback from or to such a group (and `sluice serve`'s check, a snapshot of no
    // deployments, must not refuse the fallbacks of config.yaml's groups).
    drop_unserved_fallbacks(&mut router_settings, "router_settings", &served, &mut dropped);
    drop_unserved_fallbacks(&mut litellm_settings, "litellm_settings", &served, &mut dropped);
    if let Some(serde_json::Value::Object(aliases)) = router_settings.get_mut("model_group_alias") {
        aliases.retain(|alias, target| {
            let group = target.as_str().or_else(|| target.get("model").and_then(|m| m.as_str())).unwrap_or("");
            let keep = served(group);
            if !keep {
                dropped.push(format!(
                    "router_settings.model_group_alias.{alias}: model group {group:?} has no deployment; not served"
                ));
            }
            keep
        });
    }
    let doc = serde_json::json!({
        "model_list": model_list,
        "general_settings": opts.general_settings,
        "litellm_settings": litellm_settings,
        "router_settings": router_settings,
    });
    let standalone =
        from_litellm(&doc, env).map_err(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    let mut gateway: GatewayConfig = standalone.gateway;
    // The master key stays here: Envoys look it up like a key (`KeyLookupApi`), so neither it nor a digest
    // of it is in any Envoy's config or `/config_dump`.
    gateway.master_key_env = None;
    gateway.key_lookup = Some(opts.key_lookup.clone());
    gateway.customers = standing.customers;
    if let Some(budget) = gateway.proxy_budget.as_mut() {
        budget.budget_spent = standing.proxy_budget_spent;
    }

    // With fallbacks, every deployment cluster runs the module's attempt role first in its
    // upstream chain: it turns a failed answer into the internal redirect to the next pass.
    let attempt = needs_attempt_filter(&gateway).then(|| attempt_filter(&opts.module, standalone.failure_policy));
    let mut clusters = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    let mut warnings = standalone.warnings;
    warnings.extend(dropped);
    for (deployment, upstream) in gateway.deployments.iter_mut().zip(&standalone.upstreams) {
        // The credential goes to SDS; the filter config keeps no trace of it.
        let policy = &opts.provider_policy;
        let injector = if let Some(entra) = &upstream.entra_client {
            entra_injector(deployment, upstream, entra, policy, env, &mut warnings).map(|i| {
                secrets.insert(i.secret_name.clone(), pack(&provider_secret(&i.secret_name, i.client_secret)));
                clusters.insert(i.token_service.cluster.clone(), pack(&cluster(&i.token_service, None, None)));
                i.filter
            })
        } else {
            let credential = match &upstream.google_credentials {
                Some(source) => vertex_token(deployment, upstream, source, policy, google_token, &mut warnings),
                None => deployment
                    .api_key_env
                    .take()
                    .and_then(|name| env_secret(&deployment.id, &name, &upstream.host, policy, env, &mut warnings)),
            };
            credential.and_then(|value| {
                let secret_name = format!("sluice-provider-{}", upstream.cluster);
                secrets.insert(secret_name.clone(), pack(&provider_secret(&secret_name, value)));
                credential_injector(&secret_name, deployment.provider)
            })
        };
        clusters.insert(upstream.cluster.clone(), pack(&cluster(upstream, injector, attempt.as_ref())));
    }
    let routes_to: BTreeSet<String> = gateway.deployments.iter().map(|d| d.cluster.clone()).collect();
    let filter = filter_config(&gateway, standalone.failure_policy, opts)?;

    let mut snapshot = Snapshot::default();
    snapshot.resources.insert(CLUSTER, clusters);
    snapshot.resources.insert(SECRET, secrets);
    let routes = super::routes::route_config(standalone.request_timeout_secs, &gateway.stream_idle_timeouts());
    snapshot.resources.insert(ROUTE, [(ROUTE_CONFIG_NAME.to_owned(), pack(&routes))].into());
    snapshot.resources.insert(EXTENSION_CONFIG, [(FILTER_CONFIG_NAME.to_owned(), pack(&filter))].into());
    snapshot.clusters_named_by.insert(FILTER_CONFIG_NAME.into(), routes_to);
    Ok((snapshot, warnings))
}

/// Leaves out of `section`'s `fallbacks` (and the refusals' `context_window_fallbacks`,
/// `content_policy_fallbacks`) and `default_fallbacks` every group no deployment
/// serves, each named in a warning: a `fallbacks` entry of such a group, and such a group in a
/// list (an entry keeps the groups it has left, so its group never falls back to
/// `default_fallbacks` instead). Anything not of LiteLLM's shape is left for the conversion to
/// refuse.
fn drop_unserved_fallbacks(
    settings: &mut serde_json::Map<String, serde_json::Value>,
    section: &str,
    served: &dyn Fn(&str) -> bool,
    dropped: &mut Vec<String>,
) {
    use serde_json::Value;
    fn keep_served(list: &mut Value, at: &str, served: &dyn Fn(&str) -> bool, dropped: &mut Vec<String>) {
        if let Value::Array(groups) = list {
            groups.retain(|g| {
                let keep = g.as_str().is_none_or(served);
                if !keep {
                    dropped.push(format!("{at}: model group {g} has no deployment; left out"));
                }
                keep
            });
        }
    }
    for setting in ["fallbacks", "context_window_fallbacks", "content_policy_fallbacks"] {
        let Some(Value::Array(entries)) = settings.get_mut(setting) else { continue };
        entries.retain_mut(|entry| {
            let Some(map) = entry.as_object_mut().filter(|m| m.len() == 1) else { return true };
            let Some((group, to)) = map.iter_mut().next() else { return true };
            let at = format!("{section}.{setting}.{group}");
            if !served(group) {
                dropped.push(format!("{at}: model group {group:?} has no deployment; its {setting} are left out"));
                return false;
            }
            keep_served(to, &at, served, dropped);
            true
        });
    }
    if let Some(list) = settings.get_mut("default_fallbacks") {
        keep_served(list, &format!("{section}.default_fallbacks"), served, dropped);
    }
}

pub fn pack<M: Message + Name>(message: &M) -> Any {
    Any { type_url: M::type_url(), value: message.encode_to_vec() }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3.into(),
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn filter_config(
    gateway: &GatewayConfig,
    failure_policy: FailurePolicy,
    opts: &XdsOptions,
) -> Result<TypedExtensionConfig, String> {
    let json = serde_json::to_string(gateway).map_err(|e| format!("cannot serialise the gateway config: {e}"))?;
    let typed_config = match &opts.module {
        FilterModule::Wasm(path) => pack(&wasm_filter(json, failure_policy, path)),
        FilterModule::Native(path) => {
            // Refused when the first snapshot is built, so `sluice serve` stops at start.
            refuse_failure_policy_for_native(failure_policy)?;
            pack(&native_filter(json, path))
        }
    };
    Ok(TypedExtensionConfig { name: FILTER_CONFIG_NAME.into(), typed_config: Some(typed_config) })
}

fn wasm_failure_policy(failure_policy: FailurePolicy) -> WasmFailurePolicy {
    match failure_policy {
        FailurePolicy::FailClosed => WasmFailurePolicy::FailClosed,
        FailurePolicy::FailOpen => WasmFailurePolicy::FailOpen,
        FailurePolicy::FailReload => WasmFailurePolicy::FailReload,
    }
}

/// The VM every wasm filter of the snapshot runs in: the gateway's filter and the attempt
/// filters share it (and its shared data, where fallback plans are) by `vm_id`.
fn wasm_vm(wasm_path: &str) -> VmConfig {
    VmConfig {
        vm_id: VM_ID.into(),
        runtime: WASM_RUNTIME.into(),
        code: Some(local_file(wasm_path)),
        ..Default::default()
    }
}

fn wasm_filter(json: String, failure_policy: FailurePolicy, wasm_path: &str) -> Wasm {
    let plugin = PluginConfig {
        name: FILTER_CONFIG_NAME.into(),
        root_id: FILTER_ROOT_ID.into(),
        vm: Some(plugin_config::Vm::VmConfig(wasm_vm(wasm_path))),
        configuration: Some(pack(&StringValue { value: json })),
        failure_policy: wasm_failure_policy(failure_policy).into(),
        // The filter holds the headers while it reads the body (ARCHITECTURE.md).
        allow_on_headers_stop_iteration: Some(BoolValue { value: true }),
        ..Default::default()
    };
    Wasm { config: Some(plugin) }
}

/// The native build: what `standalone_native_bootstrap` writes in YAML. The module is named by
/// `dynamic_module_config.module` (Envoy 1.40's `AsyncDataSource`, field 6 of
/// `envoy.extensions.dynamic_modules.v3.DynamicModuleConfig`; envoy-types 0.7.7 has it), not by
/// `name` (a `lib${name}.so` looked up on a search path). The module gets the StringValue's
/// text: the same JSON as the wasm filter.
fn native_filter(json: String, module_path: &str) -> DynamicModuleFilter {
    DynamicModuleFilter {
        dynamic_module_config: Some(DynamicModuleConfig {
            module: Some(local_file(module_path)),
            ..Default::default()
        }),
        filter_name: NATIVE_FILTER_NAME.into(),
        filter_config: Some(pack(&StringValue { value: json })),
        ..Default::default()
    }
}

fn local_file(path: &str) -> AsyncDataSource {
    AsyncDataSource {
        specifier: Some(async_data_source::Specifier::Local(DataSource {
            specifier: Some(data_source::Specifier::Filename(path.to_owned())),
            ..Default::default()
        })),
    }
}

fn provider_secret(name: &str, value: String) -> Secret {
    Secret {
        name: name.into(),
        r#type: Some(secret::Type::GenericSecret(GenericSecret {
            secret: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(value)),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// The module in a deployment cluster's upstream chain, in the attempt role (the standalone
/// bootstrap's, in protobuf): the ECDS filter's VM and failure policy (wasm) or its module
/// (native), with no config of its own.
fn attempt_filter(module: &FilterModule, failure_policy: FailurePolicy) -> HttpFilter {
    match module {
        FilterModule::Wasm(path) => {
            // A VM of its own, sharing the gateway filter's data (envoy_bootstrap.rs).
            let vm = VmConfig {
                configuration: Some(pack(&StringValue { value: ATTEMPT_VM_CONFIGURATION.into() })),
                ..wasm_vm(path)
            };
            let plugin = PluginConfig {
                name: ATTEMPT_FILTER_NAME.into(),
                root_id: ATTEMPT_FILTER_NAME.into(),
                vm: Some(plugin_config::Vm::VmConfig(vm)),
                configuration: Some(pack(&StringValue { value: "{}".into() })),
                failure_policy: wasm_failure_policy(failure_policy).into(),
                // It holds a 400's headers while it reads the body (envoy_bootstrap.rs).
                allow_on_headers_stop_iteration: Some(BoolValue { value: true }),
                ..Default::default()
            };
            http_filter("envoy.filters.http.wasm", &Wasm { config: Some(plugin) })
        }
        FilterModule::Native(path) => {
            // The ECDS filter's module config, under the attempt's name.
            let filter =
                DynamicModuleFilter { filter_name: ATTEMPT_FILTER_NAME.into(), ..native_filter("{}".into(), path) };
            http_filter("envoy.filters.http.dynamic_modules", &filter)
        }
    }
}

fn http_filter<M: Message + Name>(name: &str, config: &M) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(config))),
        ..Default::default()
    }
}

/// A Vertex AI deployment's access token, if its credentials may be used, its token may go to
/// its host, and one has been minted (else a warning says why its requests go without one).
fn vertex_token(
    deployment: &sluice_core::config::Deployment,
    upstream: &sluice_core::litellm::Upstream,
    source: &GoogleCredentials,
    policy: &ProviderPolicy,
    google_token: &dyn Fn(&GoogleCredentials) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Option<String> {
    if let Err(e) = policy.check_google(source, &upstream.host) {
        warnings.push(format!("deployment {}: no credential sent: {e}", deployment.id));
        return None;
    }
    let token = google_token(source);
    if token.is_none() {
        warnings.push(format!(
            "deployment {}: no Vertex AI access token yet; requests go upstream without one until it is minted",
            deployment.id
        ));
    }
    token
}

/// A credential a deployment names by variable, from the control plane's environment, if
/// the provider policy lets it go to `host` (else a warning says why its requests go without).
fn env_secret(
    deployment_id: &str,
    name: &str,
    host: &str,
    policy: &ProviderPolicy,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Option<String> {
    if let Err(e) = policy.check_credential(name).and_then(|()| policy.check_upstream(host)) {
        warnings.push(format!("deployment {deployment_id}: no credential sent: {e}"));
        return None;
    }
    let value = env(name).filter(|v| !v.is_empty());
    if value.is_none() {
        warnings.push(format!(
            "deployment {deployment_id}: ${name} is not set in the control plane's environment; requests go upstream without a provider credential"
        ));
    }
    value
}

/// What an Entra ID deployment's cluster needs: the injector, the secret it reads, and the
/// cluster of the token service it fetches from.
struct EntraInjector {
    filter: HttpFilter,
    secret_name: String,
    client_secret: String,
    token_service: Upstream,
}

/// An Azure deployment's Entra ID application: Envoy's OAuth 2 credential injector fetches its
/// access token from the token service with the client-credentials grant (the client secret
/// from SDS, in the form as Entra ID takes it), refreshes it before it expires, and sets
/// `Authorization: Bearer` on each request; until it has one, requests are refused with a 401.
fn entra_injector(
    deployment: &sluice_core::config::Deployment,
    upstream: &Upstream,
    entra: &EntraClient,
    policy: &ProviderPolicy,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Option<EntraInjector> {
    let (service, token_uri) = match entra.token_service() {
        Ok(found) => found,
        Err(e) => {
            warnings.push(format!("deployment {}: no credential sent: {e}", deployment.id));
            return None;
        }
    };
    // The secret goes to the token service only; the token to the deployment.
    if let Err(e) = policy.check_upstream(&upstream.host) {
        warnings.push(format!("deployment {}: no credential sent: {e}", deployment.id));
        return None;
    }
    let client_secret = env_secret(&deployment.id, &entra.client_secret_env, &service.host, policy, env, warnings)?;
    let secret_name = EntraClient::secret_name(&upstream.cluster);
    let oauth2 = OAuth2 {
        token_endpoint: Some(HttpUri {
            uri: token_uri,
            timeout: Some(Duration { seconds: ENTRA_TOKEN_TIMEOUT_SECS, nanos: 0 }),
            http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(service.cluster.clone())),
        }),
        scopes: vec![entra.scope.clone()],
        token_fetch_retry_interval: Some(Duration { seconds: ENTRA_TOKEN_RETRY_SECS, nanos: 0 }),
        flow_type: Some(o_auth2::FlowType::ClientCredentials(o_auth2::ClientCredentials {
            client_id: entra.client_id.clone(),
            client_secret: Some(SdsSecretConfig { name: secret_name.clone(), sds_config: Some(ads()) }),
            auth_type: o_auth2::AuthType::UrlEncodedBody.into(),
        })),
        ..Default::default()
    };
    let filter = credential_injector_filter("envoy.http.injected_credentials.oauth2", pack(&oauth2));
    Some(EntraInjector { filter, secret_name, client_secret, token_service: service })
}

/// How long a token fetch may take, and how soon a failed one is tried again (the first runs
/// before the SDS secret has arrived and fails: measured).
const ENTRA_TOKEN_TIMEOUT_SECS: i64 = 5;
const ENTRA_TOKEN_RETRY_SECS: i64 = 1;

/// The provider's credential header, set by Envoy on the upstream request from an SDS secret;
/// None for Bedrock, whose requests Envoy signs instead (`aws_request_signing`).
fn credential_injector(secret_name: &str, provider: Provider) -> Option<HttpFilter> {
    let (header, prefix) = match provider {
        Provider::Openai => ("authorization", "Bearer "),
        Provider::Anthropic => ("x-api-key", ""),
        Provider::Azure => ("api-key", ""),
        Provider::Gemini => ("x-goog-api-key", ""),
        // An OAuth access token (`google_tokens`).
        Provider::VertexGemini | Provider::VertexAnthropic => ("authorization", "Bearer "),
        Provider::Bedrock => return None,
    };
    let generic = Generic {
        credential: Some(SdsSecretConfig { name: secret_name.into(), sds_config: Some(ads()) }),
        header: header.into(),
        header_value_prefix: prefix.into(),
    };
    Some(credential_injector_filter("envoy.http.injected_credentials.generic", pack(&generic)))
}

/// Envoy's credential injector with the credential extension `name`, replacing any value the
/// request carries.
fn credential_injector_filter(name: &str, credential: Any) -> HttpFilter {
    let injector = CredentialInjector {
        overwrite: true,
        credential: Some(TypedExtensionConfig { name: name.into(), typed_config: Some(credential) }),
        ..Default::default()
    };
    http_filter("envoy.filters.http.credential_injector", &injector)
}

/// One deployment's cluster: the same shape as the standalone bootstrap's (envoy_bootstrap.rs),
/// plus its credential injector when the deployment has a credential. The attempt filter, when
/// the gateway has fallbacks, comes first in the upstream chain: it sees the provider's answer
/// last, and the credential and signature are set after it.
fn cluster(u: &Upstream, credential: Option<HttpFilter>, attempt: Option<&HttpFilter>) -> Cluster {
    let discovery = if upstream_is_ip(u) { DiscoveryType::Static } else { DiscoveryType::LogicalDns };
    let endpoint = Endpoint {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: u.host.clone(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(u.port))),
                ..Default::default()
            })),
        }),
        hostname: u.host.clone(),
        ..Default::default()
    };
    let mut upstream_filters: Vec<HttpFilter> = attempt.into_iter().cloned().collect();
    upstream_filters.extend(credential);
    if let Some(region) = &u.aws_region {
        // Bedrock: SigV4 by Envoy with its own AWS credentials, after the filter chose the
        // path and body (the signature covers both).
        let signing =
            AwsRequestSigning { service_name: "bedrock".into(), region: region.clone(), ..Default::default() };
        upstream_filters.push(http_filter("envoy.filters.http.aws_request_signing", &signing));
    }
    if !upstream_filters.is_empty() {
        upstream_filters.push(http_filter("envoy.filters.http.upstream_codec", &UpstreamCodec {}));
    }
    let protocol = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                Http1ProtocolOptions::default(),
            )),
        })),
        http_filters: upstream_filters,
        ..Default::default()
    };
    Cluster {
        name: u.cluster.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery.into())),
        dns_lookup_family: DnsLookupFamily::V4Preferred.into(),
        connect_timeout: Some(Duration { seconds: CONNECT_TIMEOUT_SECS, nanos: 0 }),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                max_retries: Some(UInt32Value { value: MAX_CONCURRENT_RETRIES }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: u.cluster.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: [(HttpProtocolOptions::full_name(), pack(&protocol))].into_iter().collect(),
        transport_socket: u.https.then(|| tls(&u.host)),
        ..Default::default()
    }
}

/// Verify the provider's certificate chain *and* its name.
fn tls(host: &str) -> TransportSocket {
    let context = UpstreamTlsContext {
        sni: host.into(),
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(DataSource {
                        specifier: Some(data_source::Specifier::Filename(CA_BUNDLE.into())),
                        ..Default::default()
                    }),
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: subject_alt_name_matcher::SanType::Dns.into(),
                        matcher: Some(StringMatcher {
                            match_pattern: Some(string_matcher::MatchPattern::Exact(host.into())),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use sluice_core::litellm::cluster_name;

    fn env(name: &str) -> Option<String> {
        (name == "OPENAI_KEY").then(|| "sk-provider-secret".to_owned())
    }

    fn model_list() -> Vec<serde_json::Value> {
        vec![
            json!({"model_name": "gpt-4o", "litellm_params": {"model": "openai/gpt-4o", "api_key": "os.environ/OPENAI_KEY"},
                   "model_info": {"id": "east", "input_cost_per_token": 1e-6}}),
            json!({"model_name": "claude", "litellm_params": {"model": "anthropic/claude-3-5-sonnet", "api_base": "http://10.0.0.7:8080", "api_key": "os.environ/MISSING"},
                   "model_info": {"id": "local"}}),
        ]
    }

    /// Options whose policy allows the test's credential names.
    fn options() -> XdsOptions {
        let mut opts = XdsOptions::new("/x/sluice.wasm".into());
        opts.provider_policy = ProviderPolicy::new(Some("OPENAI_KEY,MISSING"), &[], &[], None).unwrap();
        opts
    }

    fn decode<M: Message + Default>(any: &Any) -> M {
        M::decode(any.value.as_slice()).unwrap()
    }

    #[test]
    fn one_cluster_per_deployment_with_tls_for_https_and_the_credential_from_sds() {
        let (snap, warnings) = build(&model_list(), &options(), &env).unwrap();
        let clusters = &snap.resources[CLUSTER];
        let (east_name, local_name) = (cluster_name("east"), cluster_name("local"));
        assert_eq!(clusters.keys().collect::<Vec<_>>(), [&east_name, &local_name]);
        let east: Cluster = decode(&clusters[&east_name]);
        assert!(east.transport_socket.is_some(), "https api_base → TLS");
        let local: Cluster = decode(&clusters[&local_name]);
        assert!(local.transport_socket.is_none());
        // Only the credential the control plane can resolve becomes a secret; the other is named
        // in a warning, never guessed.
        let secrets = &snap.resources[SECRET];
        let east_secret = format!("sluice-provider-{east_name}");
        assert_eq!(secrets.keys().collect::<Vec<_>>(), [&east_secret]);
        let secret: Secret = decode(&secrets[&east_secret]);
        assert!(format!("{secret:?}").contains("sk-provider-secret"));
        assert!(warnings.iter().any(|w| w.contains("MISSING")));
        let options: HttpProtocolOptions =
            decode(&east.typed_extension_protocol_options[&HttpProtocolOptions::full_name()]);
        let names: Vec<&str> = options.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["envoy.filters.http.credential_injector", "envoy.filters.http.upstream_codec"]);
        let local_options: HttpProtocolOptions =
            decode(&local.typed_extension_protocol_options[&HttpProtocolOptions::full_name()]);
        assert!(local_options.http_filters.is_empty());
    }

    #[test]
    fn the_filter_config_looks_keys_up_and_holds_no_credential() {
        let (snap, _) = build(&model_list(), &options(), &env).unwrap();
        let ext: TypedExtensionConfig = decode(&snap.resources[EXTENSION_CONFIG][FILTER_CONFIG_NAME]);
        let wasm: Wasm = decode(ext.typed_config.as_ref().unwrap());
        let plugin = wasm.config.unwrap();
        assert_eq!(plugin.root_id, FILTER_ROOT_ID);
        let json: StringValue = decode(plugin.configuration.as_ref().unwrap());
        assert!(!json.value.contains("sk-provider-secret") && !json.value.contains("OPENAI_KEY"));
        let gateway: GatewayConfig = serde_json::from_str(&json.value).unwrap();
        assert_eq!(gateway.master_key_env, None, "the master key is looked up, never sent");
        assert_eq!(gateway.key_lookup.as_ref().unwrap().cluster, CONTROL_PLANE_CLUSTER);
        let rate = gateway.key_lookup.as_ref().unwrap().rate;
        assert_eq!((rate.per_second, rate.burst, rate.per_source_per_second, rate.per_source_burst), (50, 100, 10, 20));
        assert!(json.value.contains(r#""rate":{"per_second":50,"#), "sent explicitly: {}", json.value);
        assert!(gateway.keys.is_empty());
        assert_eq!(snap.clusters_named_by[FILTER_CONFIG_NAME].len(), 2);
        // The filter accepts what the control plane sends.
        sluice_core::config::CompiledConfig::compile(gateway).unwrap();
    }

    /// A Bedrock deployment's cluster signs with Envoy's own AWS credentials: no secret, no
    /// credential injector, `aws_request_signing` for its region before the codec.
    #[test]
    fn a_bedrock_cluster_is_signed_by_envoy() {
        let list = [
            json!({"model_name": "claude", "litellm_params": {"model": "bedrock/anthropic.claude-3-haiku-20240307-v1:0", "aws_region_name": "eu-central-1"},
                           "model_info": {"id": "br"}}),
        ];
        let (snap, _) = build(&list, &options(), &env).unwrap();
        let cluster: Cluster = decode(&snap.resources[CLUSTER][&cluster_name("br")]);
        assert!(cluster.transport_socket.is_some());
        let options: HttpProtocolOptions =
            decode(&cluster.typed_extension_protocol_options[&HttpProtocolOptions::full_name()]);
        let names: Vec<&str> = options.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["envoy.filters.http.aws_request_signing", "envoy.filters.http.upstream_codec"]);
        let Some(http_filter::ConfigType::TypedConfig(any)) = &options.http_filters[0].config_type else {
            panic!("typed config")
        };
        let signing: AwsRequestSigning = decode(any);
        assert_eq!((signing.service_name.as_str(), signing.region.as_str()), ("bedrock", "eu-central-1"));
        assert!(snap.resources[SECRET].is_empty());
    }

    /// A Vertex AI deployment's cluster sets the minted access token as `authorization: Bearer`
    /// from SDS; the token is never in the filter's config; a token that may not go to the
    /// deployment's host (not Vertex's, not listed) is never put in a secret.
    #[test]
    fn a_vertex_cluster_gets_its_access_token_from_sds() {
        let list = [
            json!({"model_name": "g", "litellm_params": {"model": "vertex_ai/gemini-2.5-pro", "vertex_project": "p", "vertex_credentials": "os.environ/OPENAI_KEY"},
                   "model_info": {"id": "vg"}}),
            json!({"model_name": "c", "litellm_params": {"model": "vertex_ai/claude-3-5-haiku@20241022", "vertex_project": "p", "api_base": "https://llm.example"},
                   "model_info": {"id": "vc"}}),
        ];
        let token = |source: &GoogleCredentials| match source {
            GoogleCredentials::Env(name) => Some(format!("ya29.token-for-{name}")),
            _ => Some("ya29.adc".to_owned()),
        };
        let (snap, warnings) = build_with_tokens(&list, PushedStanding::default(), &options(), &env, &token).unwrap();
        let secrets = &snap.resources[SECRET];
        let name = format!("sluice-provider-{}", cluster_name("vg"));
        assert_eq!(secrets.keys().collect::<Vec<_>>(), [&name], "{warnings:?}");
        let secret: Secret = decode(&secrets[&name]);
        assert!(format!("{secret:?}").contains("ya29.token-for-OPENAI_KEY"));
        let cluster: Cluster = decode(&snap.resources[CLUSTER][&cluster_name("vg")]);
        assert_eq!(cluster.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints.len(), 1);
        let protocol: HttpProtocolOptions =
            decode(&cluster.typed_extension_protocol_options[&HttpProtocolOptions::full_name()]);
        let Some(http_filter::ConfigType::TypedConfig(any)) = &protocol.http_filters[0].config_type else {
            panic!("typed config")
        };
        let injector: CredentialInjector = decode(any);
        let generic: Generic = decode(injector.credential.as_ref().unwrap().typed_config.as_ref().unwrap());
        assert_eq!((generic.header.as_str(), generic.header_value_prefix.as_str()), ("authorization", "Bearer "));
        // Claude's token would go to a host that is not Vertex's: no secret, and why.
        assert!(
            warnings.iter().any(|w| w.contains("deployment vc: no credential sent") && w.contains("\"llm.example\"")),
            "{warnings:?}"
        );
        let ext: TypedExtensionConfig = decode(&snap.resources[EXTENSION_CONFIG][FILTER_CONFIG_NAME]);
        let wasm: Wasm = decode(ext.typed_config.as_ref().unwrap());
        let json: StringValue = decode(wasm.config.unwrap().configuration.as_ref().unwrap());
        assert!(!json.value.contains("ya29."), "{}", json.value);
        // No token minted yet: the cluster goes without one, and the warning says so.
        let (snap, warnings) = build(&list[..1], &options(), &env).unwrap();
        assert!(snap.resources[SECRET].is_empty());
        assert!(warnings.iter().any(|w| w.contains("no Vertex AI access token yet")), "{warnings:?}");
    }

    /// An Azure deployment with an Entra ID application: its cluster's injector fetches tokens
    /// through a cluster for the token service (`AZURE_AUTHORITY_HOST`, else Microsoft's) with
    /// the client secret from SDS; neither the secret nor a key is anywhere else.
    #[test]
    fn an_entra_id_deployment_has_envoy_fetch_its_tokens() {
        let list = [json!({"model_name": "az", "model_info": {"id": "az"}, "litellm_params": {
            "model": "azure/gpt4o", "api_base": "https://acme.openai.azure.com", "tenant_id": "contoso",
            "client_id": "app-1", "client_secret": "os.environ/OPENAI_KEY", "azure_scope": "api://acme/.default"}})];
        for (authority, uri, token_host) in [
            (None, "https://login.microsoftonline.com/contoso/oauth2/v2.0/token", "login.microsoftonline.com"),
            (Some("http://127.0.0.1:9100"), "http://127.0.0.1:9100/contoso/oauth2/v2.0/token", "127.0.0.1"),
        ] {
            let env = |name: &str| match name {
                "AZURE_AUTHORITY_HOST" => authority.map(str::to_owned),
                other => env(other),
            };
            let mut opts = options();
            let hosts = "acme.openai.azure.com,login.microsoftonline.com,127.0.0.1";
            opts.provider_policy = ProviderPolicy::new(Some("OPENAI_KEY"), &[], &[], Some(hosts)).unwrap();
            let (snap, warnings) = build(&list, &opts, &env).unwrap();
            let cluster: Cluster = decode(&snap.resources[CLUSTER][&cluster_name("az")]);
            let injector: CredentialInjector = decode(&upstream_filter(&cluster, 0));
            let credential = injector.credential.unwrap();
            assert_eq!(credential.name, "envoy.http.injected_credentials.oauth2", "{warnings:?}");
            let oauth2: OAuth2 = decode(credential.typed_config.as_ref().unwrap());
            let endpoint = oauth2.token_endpoint.unwrap();
            assert_eq!(endpoint.uri, uri);
            let Some(http_uri::HttpUpstreamType::Cluster(token_cluster)) = endpoint.http_upstream_type else {
                panic!("a cluster")
            };
            let token: Cluster = decode(&snap.resources[CLUSTER][&token_cluster]);
            let host = &token.load_assignment.unwrap().endpoints[0].lb_endpoints[0];
            assert!(format!("{host:?}").contains(token_host));
            assert_eq!(oauth2.scopes, ["api://acme/.default"]);
            let Some(o_auth2::FlowType::ClientCredentials(client)) = oauth2.flow_type else {
                panic!("client credentials")
            };
            assert_eq!(client.client_id, "app-1");
            let secret_name = client.client_secret.unwrap().name;
            let secret: Secret = decode(&snap.resources[SECRET][&secret_name]);
            assert!(format!("{secret:?}").contains("sk-provider-secret"));
            assert_eq!(snap.resources[SECRET].len(), 1, "no key beside it");
            assert!(!format!("{cluster:?}").contains("sk-provider-secret"));
        }
        // The secret's variable must be one the policy lets deployments name.
        let mut opts = options();
        opts.provider_policy = ProviderPolicy::new(Some("MISSING"), &[], &[], None).unwrap();
        let (snap, warnings) = build(&list, &opts, &env).unwrap();
        assert!(snap.resources[SECRET].is_empty());
        assert!(warnings.iter().any(|w| w.contains("deployment az: no credential sent")), "{warnings:?}");
    }

    /// `router_settings.model_group_alias` reaches the filter; an alias of a group that no
    /// deployment serves any more is left out with a warning instead of stopping every update.
    #[test]
    fn model_group_aliases_reach_the_filter_and_a_stale_one_is_dropped() {
        let mut opts = options();
        let aliases = json!({"model_group_alias": {"gpt-4": "gpt-4o", "old": {"model": "gone", "hidden": true}}});
        opts.router_settings = aliases.as_object().unwrap().clone();
        let (snap, warnings) = build(&model_list(), &opts, &env).unwrap();
        let ext: TypedExtensionConfig = decode(&snap.resources[EXTENSION_CONFIG][FILTER_CONFIG_NAME]);
        let wasm: Wasm = decode(ext.typed_config.as_ref().unwrap());
        let json: StringValue = decode(wasm.config.unwrap().configuration.as_ref().unwrap());
        let gateway: GatewayConfig = serde_json::from_str(&json.value).unwrap();
        let names: Vec<(&str, &str)> =
            gateway.model_group_aliases.iter().map(|a| (a.alias.as_str(), a.group.as_str())).collect();
        assert_eq!(names, [("gpt-4", "gpt-4o")]);
        assert!(warnings.iter().any(|w| w.contains("model_group_alias.old") && w.contains("\"gone\"")), "{warnings:?}");
    }

    /// Retries and timeouts from `sluice serve`'s config.yaml reach the filter; a setting Sluice
    /// would not enforce stops the control plane at start, as `sluice config check` would.
    #[test]
    fn retry_settings_reach_the_filter_and_unenforced_ones_are_refused() {
        let mut opts = options();
        opts.router_settings = json!({"num_retries": 2, "timeout": 1.5}).as_object().unwrap().clone();
        opts.litellm_settings = json!({"num_retries": 5}).as_object().unwrap().clone();
        let (snap, _) = build(&model_list(), &opts, &env).unwrap();
        let ext: TypedExtensionConfig = decode(&snap.resources[EXTENSION_CONFIG][FILTER_CONFIG_NAME]);
        let json: StringValue =
            decode(decode::<Wasm>(ext.typed_config.as_ref().unwrap()).config.unwrap().configuration.as_ref().unwrap());
        let gateway: GatewayConfig = serde_json::from_str(&json.value).unwrap();
        assert_eq!((gateway.retries.num_retries, gateway.timeout_ms), (2, Some(1500)));
        opts.router_settings =
            json!({"provider_budget_config": {"openai": {"budget_limit": 1}}}).as_object().unwrap().clone();
        let e = opts.check().unwrap_err();
        assert!(e.contains("router_settings.provider_budget_config: not supported by Sluice"), "{e}");
    }

    #[test]
    fn general_settings_shape_the_filter_in_xds_mode_too() {
        let mut opts = options();
        let settings = json!({"max_request_size_mb": 2, "sluice_failure_policy": "fail_reload"});
        opts.general_settings = settings.as_object().unwrap().clone();
        let (snap, _) = build(&model_list(), &opts, &env).unwrap();
        let ext: TypedExtensionConfig = decode(&snap.resources[EXTENSION_CONFIG][FILTER_CONFIG_NAME]);
        let plugin = decode::<Wasm>(ext.typed_config.as_ref().unwrap()).config.unwrap();
        assert_eq!(plugin.failure_policy, WasmFailurePolicy::FailReload as i32);
        let json: StringValue = decode(plugin.configuration.as_ref().unwrap());
        let gateway: GatewayConfig = serde_json::from_str(&json.value).unwrap();
        assert_eq!(gateway.max_request_body_bytes, 2 * 1024 * 1024);
        // The default: closed.
        let (snap, _) = build(&model_list(), &options(), &env).unwrap();
        let ext: TypedExtensionConfig = decode(&snap.resources[EXTENSION_CONFIG][FILTER_CONFIG_NAME]);
        let plugin = decode::<Wasm>(ext.typed_config.as_ref().unwrap()).config.unwrap();
        assert_eq!(plugin.failure_policy, WasmFailurePolicy::FailClosed as i32);
    }

    #[test]
    fn a_stored_deployment_the_policy_refuses_gets_no_credential() {
        // Stored before the policy was in force (the admin API refuses both today).
        let own = json!({"model_name": "a", "litellm_params": {"model": "openai/x", "api_base": "https://collector.example", "api_key": "os.environ/SLUICE_MASTER_KEY"},
                         "model_info": {"id": "own"}});
        let metadata = json!({"model_name": "b", "litellm_params": {"model": "openai/x", "api_base": "http://169.254.169.254", "api_key": "os.environ/OPENAI_KEY"},
                              "model_info": {"id": "metadata"}});
        let env = |name: &str| Some(format!("secret-of-{name}"));
        let (snap, warnings) = build(&[own, metadata], &options(), &env).unwrap();
        assert!(snap.resources[SECRET].is_empty(), "{:?}", snap.resources[SECRET].keys());
        let all = format!("{warnings:?}");
        assert!(all.contains("SLUICE_MASTER_KEY") && all.contains("169.254.169.254"), "{all}");
        assert!(!all.contains("secret-of-"), "{all}");
    }

    #[test]
    fn an_invalid_deployment_set_is_refused_whole() {
        let bad = vec![json!({"model_name": "x", "litellm_params": {"model": "bedrock/claude"}})];
        assert!(build(&bad, &XdsOptions::new("/x.wasm".into()), &env).is_err());
    }

    fn native_options() -> XdsOptions {
        XdsOptions { provider_policy: options().provider_policy, ..XdsOptions::native("/x/libsluice_filter.so".into()) }
    }

    #[test]
    fn the_native_build_gets_the_dynamic_module_filter_with_the_same_config() {
        let (wasm_snap, _) = build(&model_list(), &options(), &env).unwrap();
        let (snap, _) = build(&model_list(), &native_options(), &env).unwrap();
        let ext: TypedExtensionConfig = decode(&snap.resources[EXTENSION_CONFIG][FILTER_CONFIG_NAME]);
        assert_eq!(ext.name, FILTER_CONFIG_NAME);
        let any = ext.typed_config.as_ref().unwrap();
        assert_eq!(any.type_url, crate::envoy_bootstrap::DYNAMIC_MODULE_FILTER_TYPE, "the type the bootstrap asks for");
        let filter: DynamicModuleFilter = decode(any);
        assert_eq!(filter.filter_name, "sluice");
        assert!(!filter.terminal_filter);
        let module = filter.dynamic_module_config.as_ref().unwrap();
        assert_eq!(module.name, "", "named by path, not looked up on a search path");
        let Some(AsyncDataSource { specifier: Some(async_data_source::Specifier::Local(file)) }) = &module.module
        else {
            panic!("no local module: {module:?}")
        };
        assert_eq!(file.specifier, Some(data_source::Specifier::Filename("/x/libsluice_filter.so".into())));
        // The same JSON as the wasm filter's, in the same StringValue.
        let wasm_ext: TypedExtensionConfig = decode(&wasm_snap.resources[EXTENSION_CONFIG][FILTER_CONFIG_NAME]);
        let plugin = decode::<Wasm>(wasm_ext.typed_config.as_ref().unwrap()).config.unwrap();
        assert_eq!(filter.filter_config, plugin.configuration);
        let json: StringValue = decode(filter.filter_config.as_ref().unwrap());
        assert!(!json.value.contains("sk-provider-secret"));
        let gateway: GatewayConfig = serde_json::from_str(&json.value).unwrap();
        assert_eq!(gateway.key_lookup.as_ref().unwrap().cluster, CONTROL_PLANE_CLUSTER);
        // Nothing else changes.
        assert_eq!(snap.resources[CLUSTER], wasm_snap.resources[CLUSTER]);
        assert_eq!(snap.resources[SECRET], wasm_snap.resources[SECRET]);
    }

    /// The wire form Envoy 1.40 reads: `module` is field 6 of `DynamicModuleConfig`
    /// (api/envoy/extensions/dynamic_modules/v3/dynamic_modules.proto), checked against a message
    /// that has that one field, so a change of envoy-types' numbering cannot pass unnoticed.
    #[test]
    fn the_module_path_is_field_6_of_the_dynamic_module_config() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct ModuleOnly {
            #[prost(message, optional, tag = "6")]
            module: Option<AsyncDataSource>,
        }
        let config = native_filter("{}".into(), "/x/libsluice_filter.so").dynamic_module_config.unwrap();
        let bytes = config.encode_to_vec();
        let only = ModuleOnly::decode(bytes.as_slice()).unwrap();
        assert_eq!(only.module, Some(local_file("/x/libsluice_filter.so")));
        assert_eq!(ModuleOnly { module: only.module }.encode_to_vec(), bytes, "nothing but field 6 is set");
    }

    fn upstream_filter_names(cluster: &Cluster) -> Vec<String> {
        let options: HttpProtocolOptions =
            decode(&cluster.typed_extension_protocol_options[&HttpProtocolOptions::full_name()]);
        options.http_filters.iter().map(|f| f.name.clone()).collect()
    }

    fn upstream_filter(cluster: &Cluster, at: usize) -> Any {
        let options: HttpProtocolOptions =
            decode(&cluster.typed_extension_protocol_options[&HttpProtocolOptions::full_name()]);
        let Some(http_filter::ConfigType::TypedConfig(any)) = &options.http_filters[at].config_type else {
            panic!("typed config")
        };
        any.clone()
    }

    /// The test's deployments plus a Bedrock one, whose groups fall back to each other.
    fn with_fallbacks(mut opts: XdsOptions, settings: serde_json::Value) -> (Snapshot, XdsOptions) {
        opts.router_settings = settings.as_object().unwrap().clone();
        let mut list = model_list();
        list.push(json!({"model_name": "claude", "litellm_params": {"model": "bedrock/anthropic.claude-3-haiku-20240307-v1:0", "aws_region_name": "eu-central-1"},
                         "model_info": {"id": "br"}}));
        let (snap, _) = build(&list, &opts, &env).unwrap();
        (snap, opts)
    }

    /// With fallbacks, every deployment cluster runs the module's attempt role first (the ECDS
    /// filter's VM or module), then the credential or the signature, and the codec last.
    #[test]
    fn with_fallbacks_every_deployment_cluster_runs_the_attempt_filter_first() {
        for settings in [json!({"fallbacks": [{"gpt-4o": ["claude"]}]}), json!({"default_fallbacks": ["claude"]})] {
            let mut wasm_opts = options();
            wasm_opts.general_settings = json!({"sluice_failure_policy": "fail_open"}).as_object().unwrap().clone();
            let (snap, _) = with_fallbacks(wasm_opts, settings.clone());
            let ext: TypedExtensionConfig = decode(&snap.resources[EXTENSION_CONFIG][FILTER_CONFIG_NAME]);
            let downstream = decode::<Wasm>(ext.typed_config.as_ref().unwrap()).config.unwrap();
            let clusters = &snap.resources[CLUSTER];
            assert_eq!(clusters.len(), 3);
            for (name, any) in clusters {
                let cluster: Cluster = decode(any);
                let names = upstream_filter_names(&cluster);
                assert_eq!(names[0], "envoy.filters.http.wasm", "{name}");
                assert_eq!(names.last().map(String::as_str), Some("envoy.filters.http.upstream_codec"), "{name}");
                let attempt = decode::<Wasm>(&upstream_filter(&cluster, 0)).config.unwrap();
                assert_eq!((attempt.name.as_str(), attempt.root_id.as_str()), ("sluice_attempt", "sluice_attempt"));
                // The ECDS filter's module and vm_id (its shared data holds the plans), in a VM
                // of its own (the VM configuration sets it apart).
                let Some(plugin_config::Vm::VmConfig(mut vm)) = attempt.vm.clone() else { panic!("no VM") };
                let own: StringValue = decode(vm.configuration.take().as_ref().unwrap());
                assert_eq!(own.value, ATTEMPT_VM_CONFIGURATION);
                assert_eq!(Some(plugin_config::Vm::VmConfig(vm)), downstream.vm);
                assert_eq!(attempt.failure_policy, downstream.failure_policy);
                assert_eq!(attempt.failure_policy, WasmFailurePolicy::FailOpen as i32);
                let config: StringValue = decode(attempt.configuration.as_ref().unwrap());
                assert_eq!(config.value, "{}");
            }
            let names = |id: &str| upstream_filter_names(&decode(&clusters[&cluster_name(id)]));
            assert_eq!(
                names("east"),
                [
                    "envoy.filters.http.wasm",
                    "envoy.filters.http.credential_injector",
                    "envoy.filters.http.upstream_codec"
                ]
            );
            assert_eq!(names("local"), ["envoy.filters.http.wasm", "envoy.filters.http.upstream_codec"]);
            assert_eq!(
                names("br"),
                [
                    "envoy.filters.http.wasm",
                    "envoy.filters.http.aws_request_signing",
                    "envoy.filters.http.upstream_codec"
                ]
            );

            let (snap, _) = with_fallbacks(native_options(), settings);
            let ext: TypedExtensionConfig = decode(&snap.resources[EXTENSION_CONFIG][FILTER_CONFIG_NAME]);
            let downstream: DynamicModuleFilter = decode(ext.typed_config.as_ref().unwrap());
            for (name, any) in &snap.resources[CLUSTER] {
                let cluster: Cluster = decode(any);
                let names = upstream_filter_names(&cluster);
                assert_eq!(names[0], "envoy.filters.http.dynamic_modules", "{name}");
                assert_eq!(names.last().map(String::as_str), Some("envoy.filters.http.upstream_codec"), "{name}");
                let attempt: DynamicModuleFilter = decode(&upstream_filter(&cluster, 0));
                assert_eq!(attempt.filter_name, "sluice_attempt");
                assert_eq!(attempt.dynamic_module_config, downstream.dynamic_module_config, "the ECDS filter's module");
                let config: StringValue = decode(attempt.filter_config.as_ref().unwrap());
                assert_eq!(config.value, "{}");
            }
        }
    }

    /// A fallback from or to a group no deployment serves (deleted through the admin API) is
    /// left out with a warning, as a stale alias is: it must not stop every later configuration,
    /// nor `sluice serve`'s check of config.yaml's settings against no deployments.
    #[test]
    fn fallbacks_of_groups_without_deployments_are_left_out_with_a_warning() {
        let mut opts = options();
        opts.router_settings = json!({
            "fallbacks": [{"gpt-4o": ["gone", "claude"]}, {"old": ["claude"]}],
            "default_fallbacks": ["gone", "claude"],
        })
        .as_object()
        .unwrap()
        .clone();
        opts.litellm_settings = json!({"default_fallbacks": ["gone"]}).as_object().unwrap().clone();
        opts.check().unwrap();
        let (snap, warnings) = build(&model_list(), &opts, &env).unwrap();
        let ext: TypedExtensionConfig = decode(&snap.resources[EXTENSION_CONFIG][FILTER_CONFIG_NAME]);
        let json: StringValue =
            decode(decode::<Wasm>(ext.typed_config.as_ref().unwrap()).config.unwrap().configuration.as_ref().unwrap());
        let gateway: GatewayConfig = serde_json::from_str(&json.value).unwrap();
        let rules: Vec<(&str, Vec<&str>)> =
            gateway.fallbacks.iter().map(|r| (r.group.as_str(), r.to.iter().map(String::as_str).collect())).collect();
        assert_eq!(rules, [("gpt-4o", vec!["claude"])]);
        assert_eq!(gateway.default_fallbacks, ["claude"]);
        let all = format!("{warnings:?}");
        for at in [
            "router_settings.fallbacks.gpt-4o",
            "router_settings.fallbacks.old",
            "router_settings.default_fallbacks",
            "litellm_settings.default_fallbacks",
        ] {
            assert!(all.contains(at), "{at}: {all}");
        }
        // Still fallbacks: the clusters run the attempt filter.
        let cluster: Cluster = decode(&snap.resources[CLUSTER][&cluster_name("east")]);
        assert_eq!(upstream_filter_names(&cluster)[0], "envoy.filters.http.wasm");
        // None left: none of it.
        opts.router_settings = json!({"fallbacks": [{"old": ["gone"]}]}).as_object().unwrap().clone();
        let (snap, _) = build(&model_list(), &opts, &env).unwrap();
        let cluster: Cluster = decode(&snap.resources[CLUSTER][&cluster_name("east")]);
        assert_eq!(
            upstream_filter_names(&cluster),
            ["envoy.filters.http.credential_injector", "envoy.filters.http.upstream_codec"]
        );
    }

    /// Without fallbacks the clusters are as before: no attempt filter anywhere.
    #[test]
    fn without_fallbacks_no_cluster_runs_the_attempt_filter() {
        for opts in [options(), native_options()] {
            // (with_fallbacks' list has a group of two, whose retries need the attempt filter)
            let (snap, _) = build(&model_list(), &opts, &env).unwrap();
            for (name, any) in &snap.resources[CLUSTER] {
                let names = upstream_filter_names(&decode(any));
                assert!(
                    !names.iter().any(|n| n == "envoy.filters.http.wasm" || n == "envoy.filters.http.dynamic_modules"),
                    "{name}: {names:?}"
                );
            }
        }
    }

    #[test]
    fn the_native_build_refuses_a_failure_policy_it_cannot_apply() {
        for (setting, ok) in [("fail_closed", true), ("fail_open", false), ("fail_reload", false)] {
            let mut opts = native_options();
            opts.general_settings = json!({"sluice_failure_policy": setting}).as_object().unwrap().clone();
            match build(&model_list(), &opts, &env) {
                Ok(_) => assert!(ok, "{setting} accepted"),
                Err(e) => {
                    assert!(!ok, "{setting}: {e}");
                    assert!(e.contains("sluice_failure_policy") && e.contains("fail_closed"), "{e}");
                }
            }
            // The wasm build applies all three.
            let mut wasm = options();
            wasm.general_settings = opts.general_settings.clone();
            build(&model_list(), &wasm, &env).unwrap();
        }
    }
}
