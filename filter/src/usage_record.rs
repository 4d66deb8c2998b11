//! The usage record: one per admitted request, the unit of spend.

use serde::Serialize;
use sluice_core::attempts::AttemptError;

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
    /// The request's end user (its `user`: LiteLLM's customer).
    pub end_user: Option<&'a str>,
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
    /// Answered from the response cache: no provider call, cost 0, tokens as first billed.
    pub cache_hit: bool,
    /// The attempts before the one that answered (retries, a fallback's earlier steps), each at
    /// its deployment with its error class; billed nothing.
    pub failed_attempts: &'a [FailedAttempt<'a>],
    /// The deployments this request's failures took out of rotation (cooldown), each with the
    /// class of the failure that did: the control plane counts them as LiteLLM's
    /// `litellm_deployment_cooled_down`.
    pub cooled_down: &'a [FailedAttempt<'a>],
    /// LiteLLM's request tags (`x-litellm-tags`).
    pub request_tags: &'a [String],
}

/// One failed attempt of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FailedAttempt<'a> {
    pub deployment: &'a str,
    pub error: AttemptError,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Truncated => "truncated",
            Outcome::Cancelled => "cancelled",
        }
    }
}

impl UsageRecord<'_> {
    /// The record as one line of JSON, appended to `out`: the same document `serde_json` makes
    /// of it (a test holds them equal), written field by field with the names pre-escaped,
    /// since a request writes one and serde's generic path was a tenth of the native build's
    /// cost per request.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut w = JsonObject::new(out);
        w.str("record_id", self.record_id);
        w.str("request_id", self.request_id);
        w.str("key_id", self.key_id);
        w.opt_str("key_alias", self.key_alias);
        w.opt_str("team_id", self.team_id);
        w.opt_str("user_id", self.user_id);
        w.opt_str("end_user", self.end_user);
        w.str("model_group", self.model_group);
        w.str("deployment", self.deployment);
        w.str("upstream_model", self.upstream_model);
        w.str("route", self.route);
        w.uint("status", u64::from(self.status));
        w.str("outcome", self.outcome.as_str());
        w.uint("prompt_tokens", self.prompt_tokens);
        w.uint("cached_prompt_tokens", self.cached_prompt_tokens);
        w.uint("cache_write_tokens", self.cache_write_tokens);
        w.uint("completion_tokens", self.completion_tokens);
        w.uint("reasoning_tokens", self.reasoning_tokens);
        w.uint("total_tokens", self.total_tokens);
        w.float("cost_usd", self.cost_usd);
        w.uint("start_ms", self.start_ms);
        w.uint("latency_ms", self.latency_ms);
        w.bool("streamed", self.streamed);
        w.bool("estimated", self.estimated);
        w.bool("price_unknown", self.price_unknown);
        w.bool("cache_hit", self.cache_hit);
        for (name, attempts) in [("failed_attempts", self.failed_attempts), ("cooled_down", self.cooled_down)] {
            w.name(name);
            w.out.push(b'[');
            for (i, attempt) in attempts.iter().enumerate() {
                if i > 0 {
                    w.out.push(b',');
                }
                let mut a = JsonObject::new(w.out);
                a.str("deployment", attempt.deployment);
                a.str("error", attempt.error.as_str());
                a.end();
            }
            w.out.push(b']');
        }
        w.name("request_tags");
        w.out.push(b'[');
        for (i, tag) in self.request_tags.iter().enumerate() {
            if i > 0 {
                w.out.push(b',');
            }
            write_json_string(w.out, tag);
        }
        w.out.push(b']');
        w.end();
    }
}

/// A JSON object written member by member (names are this file's literals: no escaping).
struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> JsonObject<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        JsonObject { out, first: true }
    }

    fn name(&mut self, name: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, name: &str, value: &str) {
        self.name(name);
        write_json_string(self.out, value);
    }

    fn opt_str(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(v) => self.str(name, v),
            None => {
                self.name(name);
                self.out.extend_from_slice(b"null");
            }
        }
    }

    fn uint(&mut self, name: &str, value: u64) {
        self.name(name);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn float(&mut self, name: &str, value: f64) {
        self.name(name);
        // serde_json's own formatting (the shortest that reads back the same; null if not finite).
        if serde_json::to_writer(&mut *self.out, &value).is_err() {
            self.out.extend_from_slice(b"null");
        }
    }

    fn bool(&mut self, name: &str, value: bool) {
        self.name(name);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

/// A record's id: the request's random value and the next of its generator, 32 hex digits.
pub fn record_id(random: u64) -> [u8; 32] {
    let mut id = [0u8; 32];
    let halves = [random, sluice_core::routing::SplitMix64::new(random).next_u64()];
    for (i, digit) in id.iter_mut().enumerate() {
        let half = halves.get(i / 16).copied().unwrap_or(0);
        *digit = HEX[((half >> (60 - 4 * (i % 16))) & 0xf) as usize];
    }
    id
}

/// Lowercase hex digits (record ids, `\u00XX` escapes).
const HEX: &[u8; 16] = b"0123456789abcdef";

/// A JSON string: quotes, backslashes and control characters escaped, the rest as is (the
/// value is UTF-8 already).
fn write_json_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    // Ids, names and aliases almost never need escaping: one check, one copy.
    if bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record<'a>(
        text: &'a str,
        cost_usd: f64,
        failed_attempts: &'a [FailedAttempt<'a>],
        request_tags: &'a [String],
    ) -> UsageRecord<'a> {
        UsageRecord {
            record_id: "0123456789abcdef0123456789abcdef",
            request_id: text,
            key_id: "k1",
            key_alias: Some(text),
            team_id: None,
            user_id: Some("u\u{7f}"),
            end_user: Some(text),
            model_group: "gpt-4o",
            deployment: "d",
            upstream_model: text,
            route: "/v1/chat/completions",
            status: 200,
            outcome: Outcome::UpstreamError,
            prompt_tokens: 12,
            cached_prompt_tokens: 0,
            cache_write_tokens: 3,
            completion_tokens: u64::MAX,
            reasoning_tokens: 7,
            total_tokens: 19,
            cost_usd,
            start_ms: 1_765_000_000_000,
            latency_ms: 0,
            streamed: true,
            estimated: false,
            price_unknown: true,
            cache_hit: false,
            failed_attempts,
            cooled_down: failed_attempts.get(1..).unwrap_or_default(),
            request_tags,
        }
    }

    /// The hand-written line is the document serde makes, whatever the strings hold.
    #[test]
    fn the_written_line_is_the_serde_document() {
        let texts = ["plain", "quote \" back\\slash", "ctl \u{0}\u{1f}\n\r\t", "unicode é 漢 🦀", ""];
        for text in texts {
            let attempts = [
                FailedAttempt { deployment: text, error: AttemptError::RateLimit },
                FailedAttempt { deployment: "b", error: AttemptError::ContextWindow },
            ];
            let tags = [text.to_owned(), "b".to_owned()];
            for (cost, failed) in [0.0, 0.000_025, 1.5e-9, 123_456.789, f64::NAN].into_iter().zip([0, 1, 2, 0, 2]) {
                let record = record(text, cost, &attempts[..failed], &tags[..failed]);
                let mut line = Vec::new();
                record.write_json(&mut line);
                let ours: serde_json::Value = serde_json::from_slice(&line).unwrap();
                assert_eq!(ours, serde_json::to_value(&record).unwrap(), "{}", String::from_utf8_lossy(&line));
                assert!(!line.contains(&b'\n'), "one line");
            }
        }
    }
}
