//! LiteLLM's logging callbacks, sent by the control plane from ingested usage: `generic_api`
//! (LiteLLM's Generic API logger: `GENERIC_LOGGER_ENDPOINT`, `GENERIC_LOGGER_HEADERS`), named in
//! `litellm_settings.callbacks` (success and failure), `success_callback` or `failure_callback`.
//! Each spend row stored once becomes one of LiteLLM's `StandardLoggingPayload`s (the fields a
//! usage record has: never a prompt or an answer, which never leave the gateway), POSTed in
//! batches as a JSON array, LiteLLM's default `log_format`.
//!
//! Delivery never holds up ingestion, and a receiver that is down never slows a request or loses
//! spend (the spend is stored before anything is queued): payloads go to a bounded queue that
//! one task drains, each batch sent with a few retries and exponential backoff; what cannot be
//! queued or delivered is counted (`sluice_callback_events_total`) and logged without the URL's
//! path or the headers (they often carry a secret).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use serde_json::{Value, json};
use sluice_proto::gateway::v1::UsageRecord;
use tokio::sync::mpsc;

use crate::budget::SpendContext;
use crate::http_client::{self, HttpTarget, HttpUrl};
use crate::metrics::{Metrics, inc};
use crate::store::SpendLog;

/// Payloads waiting for delivery; beyond this they are dropped (and counted).
pub const QUEUE: usize = 10_000;
/// The most payloads one POST carries.
const BATCH: usize = 100;
/// How long a payload waits for others to fill its batch.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
const RETRIES: http_client::Retries = http_client::Retries {
    attempts: 4,
    first_backoff: Duration::from_millis(250),
    attempt_timeout: Duration::from_secs(5),
};

/// The callback names LiteLLM's settings take that Sluice sends.
const SUPPORTED: [&str; 1] = ["generic_api"];
/// The settings that name callbacks.
pub const SETTINGS: [&str; 3] = ["callbacks", "success_callback", "failure_callback"];

/// Where `generic_api` sends, and for which outcomes.
#[derive(Debug, Clone)]
pub struct GenericApi {
    pub url: HttpUrl,
    pub headers: Vec<(String, String)>,
    pub on_success: bool,
    pub on_failure: bool,
}

/// `litellm_settings`' callbacks: `generic_api` with its endpoint (`GENERIC_LOGGER_ENDPOINT`,
/// passed in) and headers (`GENERIC_LOGGER_HEADERS`: `name=value,name=value`). Any other
/// callback is refused by name, as is `generic_api` without an endpoint (events that would
/// never be sent).
pub fn generic_api_from_settings(
    settings: &serde_json::Map<String, Value>,
    endpoint: Option<&str>,
    headers: Option<&str>,
) -> Result<Option<GenericApi>, String> {
    let (mut on_success, mut on_failure) = (false, false);
    for setting in SETTINGS {
        let names = match settings.get(setting) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(names)) => names,
            Some(_) => return Err(format!("litellm_settings.{setting} must be a list, e.g. [\"generic_api\"]")),
        };
        for name in names {
            match name.as_str() {
                Some(n) if SUPPORTED.contains(&n) => {
                    on_success |= setting != "failure_callback";
                    on_failure |= setting != "success_callback";
                }
                Some(other) => {
                    return Err(format!(
                        "litellm_settings.{setting}: {other:?} is not supported by Sluice (supported: {})",
                        SUPPORTED.join(", ")
                    ));
                }
                None => return Err(format!("litellm_settings.{setting} must be a list of names")),
            }
        }
    }
    if !on_success && !on_failure {
        return Ok(None);
    }
    let Some(endpoint) = endpoint.filter(|e| !e.is_empty()) else {
        return Err("litellm_settings names \"generic_api\" but GENERIC_LOGGER_ENDPOINT is not set".into());
    };
    let url = HttpUrl::parse(endpoint, "GENERIC_LOGGER_ENDPOINT")?;
    let mut parsed = Vec::new();
    for item in headers.unwrap_or_default().split(',').filter(|i| !i.trim().is_empty()) {
        let (name, value) =
            item.split_once('=').ok_or("GENERIC_LOGGER_HEADERS: each header is name=value, separated by commas")?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
        if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || hyper::header::HeaderValue::from_str(&value).is_err()
        {
            return Err(format!("GENERIC_LOGGER_HEADERS: {name:?} is not a valid header name and value"));
        }
        parsed.push((name, value));
    }
    Ok(Some(GenericApi { url, headers: parsed, on_success, on_failure }))
}

/// A stored spend row as LiteLLM's `StandardLoggingPayload`: its id, outcome, cost and tokens,
/// timing, models, and who made it (LiteLLM's `user_api_key_*` metadata; the key by its id).
pub fn payload(r: &UsageRecord, log: &SpendLog, key: &SpendContext) -> Value {
    let success = (200..300).contains(&r.status);
    let seconds = |ms: u64| ms as f64 / 1000.0;
    let call_type = match r.route.as_str() {
        "/v1/completions" => "atext_completion",
        "/v1/embeddings" => "aembedding",
        "/v1/messages" => "anthropic_messages",
        "/v1/responses" => "aresponses",
        _ => "acompletion",
    };
    json!({
        "id": r.record_id,
        "trace_id": r.request_id,
        "call_type": call_type,
        "stream": r.streamed,
        "cache_hit": r.cache_hit,
        "status": if success { "success" } else { "failure" },
        "response_cost": log.cost_nanos.max(0) as f64 / 1e9,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.total_tokens,
        "startTime": seconds(r.start_ms),
        "endTime": seconds(r.start_ms.saturating_add(r.latency_ms)),
        "model": r.upstream_model,
        "model_id": r.deployment,
        "model_group": r.model_group,
        "end_user": r.end_user.clone().unwrap_or_default(),
        "request_tags": r.request_tags,
        "metadata": {
            "user_api_key_hash": r.key_id,
            "user_api_key_alias": r.key_alias.clone().or_else(|| key.key_alias.clone()),
            "user_api_key_team_id": r.team_id,
            "user_api_key_team_alias": key.team_alias,
            "user_api_key_user_id": r.user_id,
            "user_api_key_user_email": key.user_email,
            "user_api_key_org_id": log.organization_id,
            "user_api_key_end_user_id": r.end_user,
            "requester_ip_address": null,
            "usage_object": {
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "total_tokens": r.total_tokens,
                "prompt_tokens_details": {"cached_tokens": r.cached_prompt_tokens},
                "completion_tokens_details": {"reasoning_tokens": r.reasoning_tokens},
            },
        },
        // Sluice sends no message text (LiteLLM's turn_off_message_logging, always on).
        "messages": null,
        "response": null,
        "error_str": if success { Value::Null } else { Value::String(format!("HTTP {} from the provider", r.status)) },
        "error_information": if success { Value::Null } else { json!({"error_code": r.status.to_string()}) },
        "hidden_params": {"model_id": r.deployment, "outcome": log.outcome, "estimated": r.estimated},
    })
}

/// The sending side: never waits (called from ingestion).
pub struct CallbackSender {
    queue: mpsc::Sender<Value>,
    metrics: Arc<Metrics>,
    on_success: bool,
    on_failure: bool,
}

impl CallbackSender {
    /// Starts the delivery task on the current tokio runtime (None outside one).
    pub fn start(api: GenericApi, target: HttpTarget, metrics: Arc<Metrics>) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (queue, payloads) = mpsc::channel(QUEUE);
        runtime.spawn(deliver_all(target, api.headers, payloads, Arc::clone(&metrics)));
        Some(Self { queue, metrics, on_success: api.on_success, on_failure: api.on_failure })
    }

    /// Queues a stored row's payload, if its outcome is one the settings send; a full queue
    /// drops it (counted).
    pub fn send(&self, r: &UsageRecord, log: &SpendLog, key: &SpendContext) {
        let success = (200..300).contains(&r.status);
        if (success && !self.on_success) || (!success && !self.on_failure) {
            return;
        }
        if self.queue.try_send(payload(r, log, key)).is_err() {
            inc(&self.metrics.callback_dropped, 1);
        }
    }
}

async fn deliver_all(
    target: HttpTarget,
    headers: Vec<(String, String)>,
    mut payloads: mpsc::Receiver<Value>,
    metrics: Arc<Metrics>,
) {
    let mut header_refs: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    header_refs.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    while let Some(first) = payloads.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, payloads.recv()).await {
                Ok(Some(p)) => batch.push(p),
                _ => break,
            }
        }
        let count = batch.len() as u64;
        let body = Bytes::from(Value::Array(batch).to_string());
        match http_client::post_with_retries(&target, &header_refs, body, RETRIES).await {
            Ok(()) => inc(&metrics.callback_sent, count),
            Err((attempts, why)) => {
                inc(&metrics.callback_failed, count);
                eprintln!(
                    "sluice: generic_api callback: {count} event(s) not delivered after {attempts} attempt(s): {why}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn settings(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn generic_api_is_read_from_litellms_settings_and_others_are_refused() {
        let endpoint = Some("http://127.0.0.1:9/log");
        assert!(generic_api_from_settings(&settings(json!({})), endpoint, None).unwrap().is_none());
        let both = generic_api_from_settings(&settings(json!({"callbacks": ["generic_api"]})), endpoint, None)
            .unwrap()
            .unwrap();
        assert!(both.on_success && both.on_failure);
        let success = generic_api_from_settings(
            &settings(json!({"success_callback": ["generic_api"]})),
            endpoint,
            Some("Authorization=Bearer x, X-Team = a"),
        )
        .unwrap()
        .unwrap();
        assert!(success.on_success && !success.on_failure);
        assert_eq!(success.headers, vec![("authorization".into(), "Bearer x".into()), ("x-team".into(), "a".into())]);
        for (bad, says) in [
            (json!({"success_callback": ["langfuse"]}), "\"langfuse\" is not supported by Sluice"),
            (json!({"callbacks": "generic_api"}), "must be a list"),
        ] {
            let e = generic_api_from_settings(&settings(bad), endpoint, None).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        let e = generic_api_from_settings(&settings(json!({"callbacks": ["generic_api"]})), None, None).unwrap_err();
        assert!(e.contains("GENERIC_LOGGER_ENDPOINT is not set"), "{e}");
        let e = generic_api_from_settings(&settings(json!({"callbacks": ["generic_api"]})), endpoint, Some("nokey"))
            .unwrap_err();
        assert!(e.contains("name=value"), "{e}");
    }

    #[test]
    fn a_payload_has_litellms_fields_and_no_text() {
        let r = UsageRecord {
            record_id: "r1".into(),
            request_id: "q1".into(),
            key_id: "key_1".into(),
            key_alias: Some("svc".into()),
            model_group: "gpt-4o".into(),
            deployment: "gpt-4o-a".into(),
            upstream_model: "gpt-4o-2024-08-06".into(),
            route: "/v1/chat/completions".into(),
            status: 429,
            prompt_tokens: 10,
            total_tokens: 10,
            start_ms: 2_000,
            latency_ms: 500,
            ..Default::default()
        };
        let log = SpendLog { cost_nanos: 0, outcome: "upstream_error".into(), ..Default::default() };
        let p = payload(&r, &log, &SpendContext { team_alias: Some("Platform".into()), ..Default::default() });
        assert_eq!(p["status"], "failure");
        assert_eq!(p["call_type"], "acompletion");
        assert_eq!((p["startTime"].as_f64(), p["endTime"].as_f64()), (Some(2.0), Some(2.5)));
        assert_eq!(p["metadata"]["user_api_key_alias"], "svc");
        assert_eq!(p["metadata"]["user_api_key_team_alias"], "Platform");
        assert_eq!(p["error_information"]["error_code"], "429");
        assert!(p["messages"].is_null() && p["response"].is_null());
    }
}
