//! The response cache's pure parts: its settings (LiteLLM's `litellm_settings.cache` and
//! `cache_params`), a request's own controls (the body's `cache`, `Cache-Control`), the key an
//! answer is stored under, and an entry's bytes. The filter keeps entries in Envoy's shared data
//! (`sluice_filter::flow::cache`), in a fixed number of slots, so the memory they hold is
//! bounded by `max_entries × max_item_bytes` and a replaced entry is freed.
//!
//! Two differences from LiteLLM, both on purpose (ARCHITECTURE.md, "The response cache"):
//! an answer is never shared across tenants (LiteLLM's exact cache is global: one key reads
//! another's answers), and a request's `cache` object with an unknown member or a wrong type is
//! a 400 rather than ignored (a misspelt `no_store` would otherwise store what the client
//! asked not to be stored).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::endpoint::Endpoint;
use crate::error::GatewayError;
use crate::usage::Usage;

/// LiteLLM's in-memory default TTL (seconds), used when `cache_params` names none.
pub const DEFAULT_TTL_SECS: u64 = 600;
/// LiteLLM's `max_messages` default: longer conversations are neither looked up nor stored.
pub const DEFAULT_MAX_MESSAGES: u32 = 4;
/// Entries one Envoy keeps (`cache_params.max_size_in_memory`: LiteLLM's in-memory cache's name
/// and default).
pub const DEFAULT_MAX_ENTRIES: u32 = 200;
/// The largest answer stored (`cache_params.max_size_per_item`, in KB as LiteLLM counts it).
pub const DEFAULT_MAX_ITEM_KB: u64 = 1024;
/// The shared-data key of slot `n` is this prefix and `n`.
pub const SLOT_PREFIX: &str = "sluice.cache.";
/// The longest `namespace` (config or request).
pub const MAX_NAMESPACE_BYTES: usize = 128;
/// Response headers: whether the cache answered, and the key it looked under (LiteLLM's).
pub const CACHE_STATUS_HEADER: &str = "x-sluice-cache";
pub const CACHE_KEY_HEADER: &str = "x-litellm-cache-key";

/// `cache_params.mode`: every request (`default_on`), or only those that ask with
/// `cache: {"use-cache": true}` (`default_off`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    #[default]
    DefaultOn,
    DefaultOff,
}

/// Who may read an answer another request stored: the same key (default), or any key of the
/// same team (a key without a team: itself only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    #[default]
    Key,
    Team,
}

/// The compiled cache settings, as the filter gets them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub mode: CacheMode,
    pub ttl_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The routes whose answers are cached (`Endpoint::route`), from `supported_call_types`.
    pub routes: Vec<String>,
    #[serde(default)]
    pub scope: CacheScope,
    /// LiteLLM's `semantic_cache_scope: end_user`: the end user is part of the scope too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_end_user: bool,
    /// Requests with more messages are neither looked up nor stored (None: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<u32>,
    pub max_entries: u32,
    pub max_item_bytes: u64,
}

/// LiteLLM's defaults: on for every request, 600 s, its call types, four messages, 200 entries
/// of at most 1 MB, each key its own.
impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mode: CacheMode::DefaultOn,
            ttl_secs: DEFAULT_TTL_SECS,
            namespace: None,
            routes: default_routes(),
            scope: CacheScope::Key,
            per_end_user: false,
            max_messages: Some(DEFAULT_MAX_MESSAGES),
            max_entries: DEFAULT_MAX_ENTRIES,
            max_item_bytes: DEFAULT_MAX_ITEM_KB * 1024,
        }
    }
}

impl CacheConfig {
    pub fn caches(&self, endpoint: Endpoint) -> bool {
        self.routes.iter().any(|r| r == endpoint.route())
    }

    /// The shared-data key of the slot an entry of `key` lives in.
    pub fn slot_of(&self, key: &CacheKey) -> String {
        let [a, b, c, d, e, f, g, h, ..] = key.digest;
        let n = u64::from_le_bytes([a, b, c, d, e, f, g, h]) % u64::from(self.max_entries.max(1));
        format!("{SLOT_PREFIX}{n}")
    }
}

/// What one of LiteLLM's `supported_call_types` is to Sluice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    /// A route Sluice serves: its answers are cached.
    Route(Endpoint),
    /// A call Sluice does not serve (transcription, rerank): no such request reaches it, so
    /// there is nothing to cache; accepted so LiteLLM's default list reads unchanged.
    NotServed,
}

/// `call_type` as LiteLLM names it; None: not one of LiteLLM's call types.
pub fn call_type(call_type: &str) -> Option<CallType> {
    Some(CallType::Route(match call_type {
        "completion" | "acompletion" => Endpoint::ChatCompletions,
        "text_completion" | "atext_completion" => Endpoint::Completions,
        "embedding" | "aembedding" => Endpoint::Embeddings,
        "responses" | "aresponses" => Endpoint::Responses,
        "anthropic_messages" | "aanthropic_messages" => Endpoint::Messages,
        "transcription" | "atranscription" | "rerank" | "arerank" => return Some(CallType::NotServed),
        _ => return None,
    }))
}

/// LiteLLM's default `supported_call_types`, as routes.
pub fn default_routes() -> Vec<String> {
    [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings, Endpoint::Responses, Endpoint::Messages]
        .into_iter()
        .map(|e| e.route().to_owned())
        .collect()
}

/// A request's own cache controls: the body's `cache` object (LiteLLM's names) and the
/// `Cache-Control` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// Do not answer from the cache (the answer is still stored).
    pub no_cache: bool,
    /// Do not store the answer.
    pub no_store: bool,
    /// Store the answer this long instead of the configured TTL.
    pub ttl_ms: Option<u64>,
    /// Accept only an entry at most this old (`s-maxage`, `max-age`).
    pub max_age_ms: Option<u64>,
    pub namespace: Option<String>,
    /// `use-cache: true`: opts in when the mode is `default_off`.
    pub use_cache: bool,
}

/// The body's `cache` value. Each member is checked: a wrong type, a negative number or an
/// unknown member is a 400 naming it.
pub fn parse_cache_control(raw: &str) -> Result<CacheControl, GatewayError> {
    let invalid = |param: &'static str, detail: &str| GatewayError::InvalidField { param, detail: detail.into() };
    let members: BTreeMap<Cow<'_, str>, &RawValue> =
        serde_json::from_str(raw).map_err(|_| invalid("cache", "must be an object"))?;
    let mut control = CacheControl::default();
    let flag = |param: &'static str, v: &RawValue| {
        serde_json::from_str::<bool>(v.get()).map_err(|_| invalid(param, "must be true or false"))
    };
    let seconds = |param: &'static str, v: &RawValue| {
        serde_json::from_str::<f64>(v.get())
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 365.0 * 86_400.0)
            .map(|s| (s * 1000.0).ceil() as u64)
            .ok_or_else(|| invalid(param, "must be a number of seconds, 0 or more (at most a year)"))
    };
    for (name, value) in &members {
        match name.as_ref() {
            "no-cache" => control.no_cache = flag("cache.no-cache", value)?,
            "no-store" => control.no_store = flag("cache.no-store", value)?,
            "use-cache" => control.use_cache = flag("cache.use-cache", value)?,
            "ttl" => control.ttl_ms = Some(seconds("cache.ttl", value)?),
            "s-maxage" | "s-max-age" => control.max_age_ms = Some(seconds("cache.s-maxage", value)?),
            "namespace" => {
                let ns: String =
                    serde_json::from_str(value.get()).map_err(|_| invalid("cache.namespace", "must be a string"))?;
                control.namespace = Some(checked_namespace(ns).map_err(|d| invalid("cache.namespace", &d))?);
            }
            _ => {
                return Err(GatewayError::InvalidField {
                    param: "cache",
                    detail: format!(
                        "unknown member '{}' (known: no-cache, no-store, ttl, s-maxage, namespace, use-cache)",
                        crate::error::echo(name)
                    ),
                });
            }
        }
    }
    Ok(control)
}

/// The controls LiteLLM takes from a key's metadata (`SupportedCacheControls`).
const KEY_CONTROLS: [&str; 4] = ["ttl", "s-maxage", "no-cache", "no-store"];

/// A key's own cache controls: its metadata's `cache` object (LiteLLM's key-level controls,
/// e.g. `{"no-cache": true, "no-store": true}` to keep a key out of the cache). As in LiteLLM,
/// they replace whatever the request sends. None: the key has none. An error names what is
/// wrong (a member LiteLLM does not take from a key, or a wrong type).
pub fn key_cache_control(
    metadata: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<CacheControl>, String> {
    let Some(value) = metadata.get("cache").filter(|v| !v.is_null()) else { return Ok(None) };
    let Some(members) = value.as_object() else { return Err("metadata.cache: must be an object".into()) };
    if let Some(other) = members.keys().find(|k| !KEY_CONTROLS.contains(&k.as_str())) {
        return Err(format!("metadata.cache.{other}: a key's cache controls are {}", KEY_CONTROLS.join(", ")));
    }
    parse_cache_control(&value.to_string()).map(Some).map_err(|e| match e {
        GatewayError::InvalidField { param, detail } => format!("metadata.{param}: {detail}"),
        other => format!("metadata.cache: {other:?}"),
    })
}

/// A namespace: non-empty, at most [`MAX_NAMESPACE_BYTES`].
pub fn checked_namespace(ns: String) -> Result<String, String> {
    if ns.is_empty() || ns.len() > MAX_NAMESPACE_BYTES {
        return Err(format!("must be 1 to {MAX_NAMESPACE_BYTES} bytes"));
    }
    Ok(ns)
}

/// Adds a `Cache-Control` request header's directives: `no-cache`, `no-store`, `max-age=N`
/// (`s-maxage=N` too). Others are ignored, as HTTP says; a directive Sluice reads with a value
/// that is not a number of seconds is a 400.
pub fn apply_cache_control_header(control: &mut CacheControl, header: &[u8]) -> Result<(), GatewayError> {
    let invalid = || GatewayError::InvalidField {
        param: "cache-control",
        detail: "max-age and s-maxage take a whole number of seconds".into(),
    };
    let text = std::str::from_utf8(header).map_err(|_| invalid())?;
    for directive in text.split(',').map(str::trim) {
        let (name, value) = directive.split_once('=').map_or((directive, None), |(n, v)| (n.trim(), Some(v.trim())));
        if name.eq_ignore_ascii_case("no-cache") {
            control.no_cache = true;
        } else if name.eq_ignore_ascii_case("no-store") {
            control.no_store = true;
        } else if name.eq_ignore_ascii_case("max-age") || name.eq_ignore_ascii_case("s-maxage") {
            let secs: u64 = value.and_then(|v| v.trim_matches('"').parse().ok()).ok_or_else(invalid)?;
            control.max_age_ms = Some(secs.saturating_mul(1000));
        }
    }
    Ok(())
}

/// Request members that cannot change the answer, left out of the key: who asks (`user` and
/// the places LiteLLM finds an end user), how it is delivered (`stream`, `stream_options`:
/// the entry records whether it is a stream), and the gateway's own settings. `model` is
/// replaced by the model group that answers.
const NOT_IN_KEY: [&str; 10] = [
    "model",
    "user",
    "stream",
    "stream_options",
    "metadata",
    "litellm_metadata",
    "safety_identifier",
    "cache",
    "num_retries",
    "timeout",
];

/// What an answer is stored under: a SHA-256 of its scope, namespace, model group, route and
/// the request's members that determine the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheKey {
    pub digest: [u8; 32],
}

impl CacheKey {
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.digest {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }
}

/// The key of `body` (a JSON object, already validated) for `scope` (the tenant's id: it is
/// hashed in, so two tenants' keys never meet), or None when the request is not to be cached:
/// more messages than `max_messages`. Members are taken in name order, each value as its JSON
/// text, so the same request sent twice by one client (the SDKs write the same bytes) finds
/// its answer.
pub fn cache_key(
    config: &CacheConfig,
    scope: &str,
    namespace: Option<&str>,
    group: &str,
    endpoint: Endpoint,
    body: &[u8],
) -> Option<CacheKey> {
    let members: BTreeMap<Cow<'_, str>, &RawValue> = serde_json::from_slice(body).ok()?;
    if let Some(max) = config.max_messages {
        let conversation = members.get("messages").or_else(|| members.get("input"));
        let count = conversation
            .and_then(|raw| serde_json::from_str::<Vec<serde::de::IgnoredAny>>(raw.get()).ok())
            .map_or(0, |v| v.len());
        if count > max as usize {
            return None;
        }
    }
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(b"sluice-cache-v1");
    field(scope.as_bytes());
    field(namespace.or(config.namespace.as_deref()).unwrap_or("").as_bytes());
    field(group.as_bytes());
    field(endpoint.route().as_bytes());
    for (name, value) in members.iter().filter(|(n, _)| !NOT_IN_KEY.contains(&n.as_ref())) {
        field(name.as_bytes());
        field(value.get().as_bytes());
    }
    Some(CacheKey { digest: hash.finalize().into() })
}

/// How an answer was delivered. The key leaves out `stream` and `stream_options`, so a request
/// is answered only by an entry of its own form: a stream is replayed as the stream it was,
/// with the usage chunk exactly when the client asked for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryForm {
    Json,
    Sse,
    /// An OpenAI stream that ends with its usage chunk (`stream_options.include_usage`).
    SseWithUsage,
}

impl EntryForm {
    /// The form a request wants: `streamed`, and whether its client asked for OpenAI's usage
    /// chunk (Anthropic's events always carry usage: [`EntryForm::Sse`]).
    pub fn wanted(streamed: bool, usage_chunk: bool) -> EntryForm {
        match (streamed, usage_chunk) {
            (false, _) => EntryForm::Json,
            (true, false) => EntryForm::Sse,
            (true, true) => EntryForm::SseWithUsage,
        }
    }

    fn code(self) -> u8 {
        match self {
            EntryForm::Json => 0,
            EntryForm::Sse => 1,
            EntryForm::SseWithUsage => 2,
        }
    }
}

/// A stored answer: what the client was sent, with the usage it was billed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub key: CacheKey,
    pub stored_ms: u64,
    pub expires_ms: u64,
    pub form: EntryForm,
    pub usage: Usage,
    pub content_type: Cow<'a, [u8]>,
    pub body: Cow<'a, [u8]>,
}

const ENTRY_MAGIC: &[u8; 3] = b"SC1";
const HEADER_LEN: usize = 3 + 1 + 32 + 8 + 8 + 5 * 8 + 2;

impl Entry<'_> {
    /// The entry's bytes in shared data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.content_type.len() + self.body.len());
        out.extend_from_slice(ENTRY_MAGIC);
        out.push(self.form.code());
        out.extend_from_slice(&self.key.digest);
        out.extend_from_slice(&self.stored_ms.to_le_bytes());
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
        let u = &self.usage;
        for n in
            [u.prompt_tokens, u.cached_prompt_tokens, u.cache_write_tokens, u.completion_tokens, u.reasoning_tokens]
        {
            out.extend_from_slice(&n.to_le_bytes());
        }
        let ct_len = u16::try_from(self.content_type.len()).unwrap_or(0);
        out.extend_from_slice(&ct_len.to_le_bytes());
        out.extend_from_slice(self.content_type.get(..usize::from(ct_len)).unwrap_or_default());
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads an entry written by [`Entry::encode`]; None for anything else (an empty slot).
    pub fn decode(bytes: &[u8]) -> Option<Entry<'_>> {
        let (magic, rest) = bytes.split_at_checked(3)?;
        if magic != ENTRY_MAGIC {
            return None;
        }
        let (&form, rest) = rest.split_first()?;
        let form = match form {
            0 => EntryForm::Json,
            1 => EntryForm::Sse,
            2 => EntryForm::SseWithUsage,
            _ => return None,
        };
        let (digest, rest) = rest.split_first_chunk::<32>()?;
        let mut rest = rest;
        let mut next_u64 = || -> Option<u64> {
            let (n, tail) = rest.split_first_chunk::<8>()?;
            rest = tail;
            Some(u64::from_le_bytes(*n))
        };
        let stored_ms = next_u64()?;
        let expires_ms = next_u64()?;
        let usage = Usage {
            prompt_tokens: next_u64()?,
            cached_prompt_tokens: next_u64()?,
            cache_write_tokens: next_u64()?,
            completion_tokens: next_u64()?,
            reasoning_tokens: next_u64()?,
        };
        let (ct_len, rest) = rest.split_first_chunk::<2>()?;
        let (content_type, body) = rest.split_at_checked(usize::from(u16::from_le_bytes(*ct_len)))?;
        Some(Entry {
            key: CacheKey { digest: *digest },
            stored_ms,
            expires_ms,
            form,
            usage,
            content_type: Cow::Borrowed(content_type),
            body: Cow::Borrowed(body),
        })
    }

    /// Whether this entry answers a request for `key`, made at `now_ms`, that accepts entries
    /// up to `max_age_ms` old and wants an answer of `form`.
    pub fn answers(&self, key: &CacheKey, now_ms: u64, max_age_ms: Option<u64>, form: EntryForm) -> bool {
        self.key == *key
            && now_ms < self.expires_ms
            && self.form == form
            && max_age_ms.is_none_or(|max| now_ms.saturating_sub(self.stored_ms) <= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CacheConfig {
        CacheConfig { ttl_secs: 60, max_entries: 16, ..CacheConfig::default() }
    }

    fn key(scope: &str, body: &str) -> Option<CacheKey> {
        cache_key(&config(), scope, None, "gpt-4o", Endpoint::ChatCompletions, body.as_bytes())
    }

    #[test]
    fn the_key_ignores_who_asks_and_how_it_is_delivered_but_not_what_is_asked() {
        let base = key("k1", r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#);
        assert!(base.is_some());
        let same = [
            r#"{"messages":[{"role":"user","content":"hi"}],"model":"alias","user":"u1"}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"cache":{"ttl":5},"metadata":{"a":1},"num_retries":2}"#,
        ];
        for body in same {
            assert_eq!(key("k1", body), base, "{body}");
        }
        let different = [
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"tools":[]}"#,
        ];
        for body in different {
            assert_ne!(key("k1", body), base, "{body}");
        }
        // Another tenant, group, route or namespace: another key.
        let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
        assert_ne!(key("k2", body), base);
        let c = config();
        assert_ne!(cache_key(&c, "k1", None, "other", Endpoint::ChatCompletions, body.as_bytes()), base);
        assert_ne!(cache_key(&c, "k1", None, "gpt-4o", Endpoint::Messages, body.as_bytes()), base);
        assert_ne!(cache_key(&c, "k1", Some("ns"), "gpt-4o", Endpoint::ChatCompletions, body.as_bytes()), base);
        // Field boundaries are length-prefixed: moving bytes between scope and group differs.
        assert_ne!(
            cache_key(&c, "k1g", None, "pt-4o", Endpoint::ChatCompletions, body.as_bytes()),
            cache_key(&c, "k1", None, "gpt-4o", Endpoint::ChatCompletions, body.as_bytes())
        );
    }

    #[test]
    fn longer_conversations_than_max_messages_are_not_cached() {
        let msgs = |n: usize| {
            let m: Vec<String> = (0..n).map(|i| format!(r#"{{"role":"user","content":"{i}"}}"#)).collect();
            format!(r#"{{"model":"gpt-4o","messages":[{}]}}"#, m.join(","))
        };
        assert!(key("k", &msgs(4)).is_some());
        assert!(key("k", &msgs(5)).is_none());
        let mut unlimited = config();
        unlimited.max_messages = None;
        assert!(cache_key(&unlimited, "k", None, "g", Endpoint::ChatCompletions, msgs(50).as_bytes()).is_some());
    }

    #[test]
    fn cache_controls_are_read_with_litellm_names_and_checked() {
        let c = parse_cache_control(
            r#"{"no-cache":true,"no-store":false,"ttl":1.5,"s-maxage":30,"namespace":"team-a","use-cache":true}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            CacheControl {
                no_cache: true,
                no_store: false,
                ttl_ms: Some(1500),
                max_age_ms: Some(30_000),
                namespace: Some("team-a".into()),
                use_cache: true
            }
        );
        for (raw, param) in [
            (r#"{"ttl":-1}"#, "cache.ttl"),
            (r#"{"ttl":"60"}"#, "cache.ttl"),
            (r#"{"no-store":"yes"}"#, "cache.no-store"),
            (r#"{"namespace":""}"#, "cache.namespace"),
            (r#"{"no_store":true}"#, "cache"),
            (r#"[1]"#, "cache"),
        ] {
            match parse_cache_control(raw) {
                Err(GatewayError::InvalidField { param: p, .. }) => assert_eq!(p, param, "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_keys_metadata_takes_litellms_key_level_controls_only() {
        let meta = |v: serde_json::Value| v.as_object().cloned().unwrap();
        assert_eq!(key_cache_control(&meta(serde_json::json!({"team": "x"}))), Ok(None));
        let c = key_cache_control(&meta(serde_json::json!({"cache": {"no-cache": true, "no-store": true}})))
            .unwrap()
            .unwrap();
        assert!(c.no_cache && c.no_store);
        let c = key_cache_control(&meta(serde_json::json!({"cache": {"ttl": 30, "s-maxage": 5}}))).unwrap().unwrap();
        assert_eq!((c.ttl_ms, c.max_age_ms), (Some(30_000), Some(5_000)));
        for (bad, says) in [
            (serde_json::json!({"cache": true}), "metadata.cache: must be an object"),
            (serde_json::json!({"cache": {"namespace": "n"}}), "metadata.cache.namespace: a key's cache controls are"),
            (serde_json::json!({"cache": {"ttl": "long"}}), "metadata.cache.ttl: must be a number"),
        ] {
            let e = key_cache_control(&meta(bad.clone())).unwrap_err();
            assert!(e.starts_with(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_cache_control_header_adds_its_directives() {
        let mut c = CacheControl::default();
        apply_cache_control_header(&mut c, b"no-store, max-age=30, private").unwrap();
        assert!(c.no_store && !c.no_cache);
        assert_eq!(c.max_age_ms, Some(30_000));
        apply_cache_control_header(&mut c, b"No-Cache").unwrap();
        assert!(c.no_cache);
        assert!(apply_cache_control_header(&mut c, b"max-age=soon").is_err());
    }

    #[test]
    fn an_entry_reads_back_as_written_and_answers_only_its_own_key_while_fresh() {
        let k = key("k", r#"{"model":"m","messages":[]}"#).unwrap();
        let entry = Entry {
            key: k,
            stored_ms: 1_000,
            expires_ms: 61_000,
            form: EntryForm::Sse,
            usage: Usage { prompt_tokens: 10, completion_tokens: 5, cached_prompt_tokens: 2, ..Usage::default() },
            content_type: Cow::Borrowed(b"text/event-stream"),
            body: Cow::Borrowed(b"data: {}\n\ndata: [DONE]\n\n"),
        };
        let bytes = entry.encode();
        let back = Entry::decode(&bytes).unwrap();
        assert_eq!(back, entry);
        let sse = EntryForm::Sse;
        assert!(back.answers(&k, 60_999, None, sse));
        assert!(!back.answers(&k, 61_000, None, sse), "expired");
        assert!(!back.answers(&k, 2_000, None, EntryForm::Json), "a stream does not answer a JSON request");
        assert!(!back.answers(&k, 2_000, None, EntryForm::SseWithUsage), "nor one that wants the usage chunk");
        assert!(!back.answers(&k, 40_000, Some(30_000), sse), "older than s-maxage");
        assert!(back.answers(&k, 30_000, Some(30_000), sse));
        let other = key("other", r#"{"model":"m","messages":[]}"#).unwrap();
        assert!(!back.answers(&other, 2_000, None, sse));
        assert_eq!(Entry::decode(b""), None);
        assert_eq!(Entry::decode(&bytes[..20]), None);
    }

    #[test]
    fn slots_are_bounded_by_max_entries() {
        let c = config();
        for i in 0..100 {
            let k = key("k", &format!(r#"{{"model":"m","messages":[],"n":{i}}}"#)).unwrap();
            let slot = c.slot_of(&k);
            let n: u32 = slot.strip_prefix(SLOT_PREFIX).unwrap().parse().unwrap();
            assert!(n < c.max_entries);
        }
    }
}
