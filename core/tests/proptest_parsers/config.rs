//! `sluice_core::config` and `sluice_core::litellm`: any JSON value as a config document.
//! Never a panic, errors are values, and what one side accepts the other accepts too.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sluice_core::config::{CompiledConfig, GatewayConfig, KeyConfig, TeamConfig};
use sluice_core::keys::KeyHash;
use sluice_core::litellm::{from_litellm, parse_api_base};

use crate::common::{config, json_value, odd_string};

/// Mostly `good`, sometimes any JSON value at all (a wrong type, a null, a nested mess).
fn mostly(good: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![6 => good, 1 => json_value()].boxed()
}

/// An object with each of `fields` present or not, and now and then a member nobody knows.
fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let (names, values): (Vec<&'static str>, Vec<BoxedStrategy<Value>>) = fields.into_iter().unzip();
    let values: Vec<BoxedStrategy<Option<Value>>> =
        values.into_iter().map(|v| prop::option::weighted(0.7, v).boxed()).collect();
    (values, prop::option::weighted(0.05, ("[a-z_]{1,10}", json_value())))
        .prop_map(move |(values, unknown)| {
            let mut m: Map<String, Value> =
                names.iter().zip(values).filter_map(|(n, v)| Some(((*n).to_owned(), v?))).collect();
            if let Some((k, v)) = unknown {
                m.insert(k, v);
            }
            Value::Object(m)
        })
        .boxed()
}

fn list(item: BoxedStrategy<Value>, max: usize) -> BoxedStrategy<Value> {
    mostly(prop::collection::vec(item, 0..max).prop_map(Value::Array))
}

fn string(s: impl Strategy<Value = String> + 'static) -> BoxedStrategy<Value> {
    mostly(s.prop_map(Value::String))
}

fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&["gpt-4o", "claude", "t1", "team-a", "k_1"][..]).prop_map(str::to_owned),
        odd_string()
    ]
}

fn uint() -> BoxedStrategy<Value> {
    mostly(prop_oneof![0u64..1000, any::<u64>()].prop_map(Value::from))
}

fn usd() -> BoxedStrategy<Value> {
    mostly(
        prop_oneof![0.0f64..100.0, any::<f64>(), Just(-1.0), Just(f64::MAX)]
            .prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
    )
}

fn boolean() -> BoxedStrategy<Value> {
    mostly(any::<bool>().prop_map(Value::Bool))
}

fn duration() -> BoxedStrategy<Value> {
    string(prop_oneof!["[0-9]{1,12}(s|m|h|d|w)", Just("1mo".to_owned()), "[0-9a-z]{0,5}"])
}

fn timestamp() -> BoxedStrategy<Value> {
    string(prop_oneof![
        "[0-9]{4}-[01][0-9]-[0-3][0-9](T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{1,3})?(Z|[+-][01][0-9]:[0-5][0-9]))?",
        odd_string(),
    ])
}

fn key_hash() -> BoxedStrategy<Value> {
    string(prop_oneof![
        prop::collection::vec(any::<u8>(), 0..8).prop_map(|k| format!("sha256:{}", KeyHash::of(&k).to_hex())),
        "(sha256:)?[0-9a-fA-F]{62,66}",
    ])
}

fn routes() -> BoxedStrategy<Value> {
    list(
        string(prop_oneof![
            prop::sample::select(&["/v1/chat/completions", "/embeddings", "llm_api_routes", "info_routes", "/x"][..])
                .prop_map(str::to_owned),
            odd_string(),
        ]),
        3,
    )
}

fn per_model_limits() -> BoxedStrategy<Value> {
    mostly(prop::collection::vec((names(), uint()), 0..3).prop_map(|kv| Value::Object(kv.into_iter().collect())))
}

fn pricing() -> BoxedStrategy<Value> {
    object(vec![
        ("input_cost_per_token", usd()),
        ("output_cost_per_token", usd()),
        ("cache_read_input_token_cost", usd()),
        ("cache_creation_input_token_cost", usd()),
    ])
}

fn deployment() -> BoxedStrategy<Value> {
    object(vec![
        ("id", string(names())),
        ("model_name", string(names())),
        ("provider", string(prop_oneof![Just("openai".to_owned()), Just("anthropic".to_owned()), odd_string()])),
        ("upstream_model", string(names())),
        ("cluster", string(prop_oneof!["[a-z_.:/-]{1,20}", odd_string()])),
        ("base_path", string(prop_oneof![Just("/v1".to_owned()), Just(String::new()), odd_string()])),
        ("api_key_env", string(prop_oneof!["[A-Z_]{1,12}", odd_string()])),
        ("weight", uint()),
        ("rpm", uint()),
        ("tpm", uint()),
        ("pricing", pricing()),
        ("max_output_tokens", uint()),
    ])
}

fn key_config() -> BoxedStrategy<Value> {
    object(vec![
        ("key_hash", key_hash()),
        ("key_id", string(prop_oneof!["key_[a-z0-9]{1,6}", odd_string()])),
        ("key_alias", string(names())),
        ("team_id", string(names())),
        ("user_id", string(names())),
        ("models", list(string(prop_oneof![names(), Just("*".to_owned()), Just("gpt*".to_owned())]), 3)),
        ("rpm_limit", uint()),
        ("tpm_limit", uint()),
        ("max_budget", usd()),
        ("budget_duration", duration()),
        ("allowed_routes", routes()),
        ("blocked", boolean()),
        ("expires", timestamp()),
        ("metadata", mostly(crate::common::json_object().prop_map(Value::Object))),
        ("model_rpm_limit", per_model_limits()),
        ("model_tpm_limit", per_model_limits()),
        ("fleet_spend", usd()),
        ("organization_id", string(names())),
        ("user_max_budget", usd()),
        ("user_fleet_spend", usd()),
        ("organization_max_budget", usd()),
        ("organization_fleet_spend", usd()),
    ])
}

fn team_config() -> BoxedStrategy<Value> {
    object(vec![
        ("team_id", string(names())),
        ("team_alias", string(names())),
        ("models", list(string(names()), 3)),
        ("rpm_limit", uint()),
        ("tpm_limit", uint()),
        ("max_budget", usd()),
        ("budget_duration", duration()),
        ("blocked", boolean()),
        ("fleet_spend", usd()),
    ])
}

/// A `GatewayConfig`-shaped document: right names, mostly right types.
fn gateway_doc() -> BoxedStrategy<Value> {
    object(vec![
        ("schema_version", mostly(prop_oneof![4 => Just(json!(1)), 1 => any::<u32>().prop_map(Value::from)])),
        ("master_key_env", string(prop_oneof!["[A-Z_]{1,12}", odd_string()])),
        ("max_request_body_bytes", uint()),
        ("max_response_scan_bytes", uint()),
        ("routing_strategy", string(prop_oneof![Just("simple-shuffle".to_owned()), odd_string()])),
        ("deployments", list(deployment(), 4)),
        ("keys", list(key_config(), 4)),
        ("teams", list(team_config(), 3)),
        (
            "key_lookup",
            object(vec![
                ("cluster", string(names())),
                ("timeout_ms", uint()),
                ("ttl_ms", uint()),
                ("negative_ttl_ms", uint()),
                ("fail_open", boolean()),
            ]),
        ),
    ])
}

/// Secrets the documents carry: none may ever show in an output, a warning or an error.
const SECRET: &str = "SECRET-";

fn api_base() -> BoxedStrategy<Value> {
    string(prop_oneof![
        "https?://[a-z0-9.-]{1,12}(:[0-9]{1,6})?(/[a-z0-9]{0,5}){0,3}/?",
        "https?://\\[[0-9a-f:]{2,12}\\](:[0-9]{1,5})?",
        "https?://[a-z]{1,5}:SECRET-[a-z]{1,5}@[a-z]{1,5}(/v1)?",
        odd_string(),
    ])
}

fn env_or_secret() -> BoxedStrategy<Value> {
    string(prop_oneof![
        "os\\.environ/[A-Z_]{1,10}",
        Just("os.environ/UNSET".to_owned()),
        "SECRET-LITERAL-[a-z0-9]{1,8}",
    ])
}

fn loose_number() -> BoxedStrategy<Value> {
    mostly(prop_oneof![
        (0.0f64..1e-3).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "-?[0-9]{1,3}(\\.[0-9]{1,4})?(e-?[0-9]{1,3})?".prop_map(Value::String),
    ])
}

/// A LiteLLM `config.yaml`-shaped document (as the CLI parses YAML into JSON).
fn litellm_doc() -> BoxedStrategy<Value> {
    let params = object(vec![
        (
            "model",
            string(prop_oneof![
                "(openai|anthropic|hosted_vllm|openai_compatible|text-completion-openai|azure|bedrock)/[a-z0-9.-]{1,10}",
                odd_string(),
            ]),
        ),
        ("api_base", api_base()),
        ("api_key", env_or_secret()),
        ("rpm", loose_number()),
        ("tpm", loose_number()),
        ("weight", loose_number()),
        ("temperature", loose_number()),
    ]);
    let info = object(vec![
        ("id", string(names())),
        ("input_cost_per_token", loose_number()),
        ("output_cost_per_token", loose_number()),
        ("cache_read_input_token_cost", loose_number()),
        ("cache_creation_input_token_cost", loose_number()),
        ("max_tokens", loose_number()),
        ("max_output_tokens", loose_number()),
        ("mode", string(names())),
    ]);
    let model = object(vec![("model_name", string(names())), ("litellm_params", params), ("model_info", info)]);
    object(vec![
        ("model_list", list(model, 4)),
        (
            "router_settings",
            object(vec![
                (
                    "routing_strategy",
                    string(prop_oneof![
                        prop::sample::select(&["simple-shuffle", "least-busy", "latency-based-routing"][..])
                            .prop_map(str::to_owned),
                        odd_string(),
                    ]),
                ),
                ("timeout", loose_number()),
                ("num_retries", loose_number()),
            ]),
        ),
        ("litellm_settings", object(vec![("request_timeout", loose_number()), ("drop_params", boolean())])),
        (
            "general_settings",
            object(vec![
                ("master_key", env_or_secret()),
                ("database_url", string(Just("postgres://SECRET-db".to_owned()))),
                ("max_request_size_mb", loose_number()),
                (
                    "sluice_failure_policy",
                    string(prop_oneof![
                        prop::sample::select(&["fail_closed", "fail_open", "fail_reload"][..]).prop_map(str::to_owned),
                        odd_string(),
                    ]),
                ),
            ]),
        ),
        ("keys", list(key_config(), 3)),
        ("teams", list(team_config(), 2)),
        ("environment_variables", mostly(Just(json!({"OPENAI_API_KEY": "SECRET-env-var"})))),
    ])
}

/// The environment: every variable set to a secret, except `UNSET`.
fn env(name: &str) -> Option<String> {
    (name != "UNSET").then(|| format!("{SECRET}ENV-{name}"))
}

/// Equal JSON, except that a float may come back one ULP off: serde_json (without its
/// `float_roundtrip` feature) does not always read the shortest printed form of an f64 back to
/// the same f64 (e.g. 2.4120450924793257e33). A dollar amount one ULP off is the same amount.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= x.abs().max(y.abs()) * f64::EPSILON,
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// A config the filter compiled, sent over the wire (xDS or bootstrap JSON), reads and
/// compiles the same on the other side.
fn check_wire_round_trip(config: &GatewayConfig) -> Result<(), TestCaseError> {
    let text = serde_json::to_string(config).unwrap();
    let back: GatewayConfig =
        serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e} reading back {text}")))?;
    let (sent, read) = (serde_json::to_value(config).unwrap(), serde_json::to_value(&back).unwrap());
    prop_assert!(same_json(&sent, &read), "changed on the wire:\n{}\n{}", sent, read);
    prop_assert!(CompiledConfig::compile(back).is_ok(), "accepted once, refused after a round trip: {}", text);
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Any JSON value, or a config-shaped one, as the filter's config: read and compiled or
    /// refused with errors, never a panic; a compiled config survives the wire.
    #[test]
    fn any_document_as_gateway_config(doc in prop_oneof![1 => json_value(), 4 => gateway_doc()]) {
        let Ok(config) = serde_json::from_value::<GatewayConfig>(doc) else { return Ok(()) };
        match CompiledConfig::compile(config.clone()) {
            Ok(compiled) => {
                check_wire_round_trip(&config)?;
                // Every configured key resolves, and a looked-up copy of it compiles too.
                for (i, key) in config.keys.iter().enumerate() {
                    prop_assert!(compiled.resolved(i).is_some());
                    let team = key.team_id.as_ref().and_then(|t| config.teams.iter().find(|x| &x.team_id == t));
                    let _ = compiled.compile_looked_up(key, team);
                }
            }
            Err(errors) => prop_assert!(!errors.is_empty()),
        }
    }

    /// A key and a team as the control plane's lookup answer carries them (any JSON): read
    /// and compiled or refused, never a panic.
    #[test]
    fn any_lookup_answer_compiles_or_is_refused(key in prop_oneof![key_config(), json_value()], team in prop_oneof![team_config(), json_value()]) {
        let compiled = CompiledConfig::compile(serde_json::from_value(json!({"schema_version": 1})).unwrap()).unwrap();
        let Ok(key) = serde_json::from_value::<KeyConfig>(key) else { return Ok(()) };
        let team = serde_json::from_value::<TeamConfig>(team).ok();
        if let Err(errors) = compiled.compile_looked_up(&key, team.as_ref()) {
            prop_assert!(!errors.is_empty());
        }
    }

    /// Any JSON value, or a LiteLLM-shaped one, as `config.yaml`: converted or refused with
    /// errors, never a panic; what is accepted compiles in the filter and survives the wire;
    /// no secret is ever copied into the output, a warning or an error.
    #[test]
    fn any_document_as_litellm_config(doc in prop_oneof![1 => json_value(), 4 => litellm_doc()]) {
        match from_litellm(&doc, &env) {
            Ok(standalone) => {
                prop_assert_eq!(standalone.upstreams.len(), standalone.gateway.deployments.len());
                for u in &standalone.upstreams {
                    prop_assert!(u.port != 0 && !u.host.is_empty());
                }
                check_wire_round_trip(&standalone.gateway)?;
                let out = serde_json::to_string(&standalone.gateway).unwrap();
                prop_assert!(!out.contains(SECRET), "a secret in the output: {}", out);
                for w in &standalone.warnings {
                    prop_assert!(!w.contains(SECRET), "a secret in a warning: {}", w);
                }
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for e in &errors {
                    prop_assert!(!e.0.contains(SECRET), "a secret in an error: {}", e);
                }
            }
        }
    }

    /// `api_base`: any text is a URL's parts or an error; a well-formed URL gives its parts.
    #[test]
    fn api_base_urls(
        text in odd_string(),
        https in any::<bool>(),
        host in "[a-z0-9][a-z0-9.-]{0,20}",
        port in prop::option::of(1u16..=u16::MAX),
        path in "(/[a-z0-9._-]{1,8}){0,3}/?",
    ) {
        if let Ok((_, host, port, path)) = parse_api_base(&text) {
            prop_assert!(!host.is_empty() && port != 0 && !path.ends_with('/'));
        }
        let url = format!("{}://{host}{}{path}", if https { "https" } else { "http" }, port.map(|p| format!(":{p}")).unwrap_or_default());
        let want_port = port.unwrap_or(if https { 443 } else { 80 });
        prop_assert_eq!(parse_api_base(&url), Ok((https, host, want_port, path.trim_end_matches('/').to_owned())));
    }
}
