//! The usage record: one per admitted request, the unit of spend.

use serde::Serialize;

/// Log prefix of a usage record line; tests, log shippers and `sluice usage import` match on it.
pub use sluice_proto::usage_line::USAGE_LOG_PREFIX;

/// How the request ended, from the gateway's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The response arrived whole.
    Completed,
    /// The upstream answered with an error status (nothing billed).
    UpstreamError,
    /// The upstream cut the response short (charged for what was delivered, estimated).
    Truncated,
    /// The client went away first (charged for what was delivered, estimated).
    Cancelled,
}

#[derive(Debug, Clone, Serialize)]
pub struct UsageRecord<'a> {
    /// Unique per admitted request, made by the filter: the idempotency key for ingestion.
    /// (`request_id` is Envoy's `x-request-id`, which a client on an internal network may set.)
    pub record_id: &'a str,
    pub request_id: &'a str,
    /// Non-secret key id (hash prefix), or `master`.
    pub key_id: &'a str,
    pub key_alias: Option<&'a str>,
    pub team_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub model_group: &'a str,
    pub deployment: &'a str,
    pub upstream_model: &'a str,
    pub route: &'a str,
    /// HTTP status the client saw (0 if it left before the response started).
    pub status: u16,
    pub outcome: Outcome,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub cache_write_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
    pub start_ms: u64,
    pub latency_ms: u64,
    pub streamed: bool,
    /// True when tokens were estimated because the provider's usage never arrived.
    pub estimated: bool,
    /// True when the deployment has no known price: `cost_usd` is 0 because nobody priced it,
    /// not because the request was free.
    pub price_unknown: bool,
}
