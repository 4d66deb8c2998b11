//! Per-request behaviour, from `x-mock-*` request headers (the gateway passes them through).

use std::collections::HashMap;

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::Config;

/// An answer's length in words when neither a knob nor the request sets it.
pub const DEFAULT_COMPLETION: u64 = 16;

#[derive(Debug, Clone, Default)]
pub struct Knobs {
    pub latency_ms: u64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// Words per streamed content event.
    pub chunk_tokens: usize,
    pub chunk_delay_ms: u64,
    /// Write the SSE byte stream in pieces of this many bytes, ignoring event boundaries.
    pub split_bytes: Option<usize>,
    /// Stream: send this many events, then abort. Non-stream: send half the body, then abort.
    pub cut_after: Option<usize>,
    /// Stream: after this many events, go quiet for `stall_ms` once (a provider that stalls
    /// mid-stream), then send the rest.
    pub stall_after: Option<usize>,
    pub stall_ms: u64,
    pub status: Option<u16>,
    pub garbage: bool,
    /// Pad a non-streaming response to about this many bytes.
    pub response_bytes: Option<usize>,
    /// Gemini and Bedrock: answer with a call of this function (when the request declares tools).
    pub tool_call: Option<String>,
    /// `retry-after` (seconds) on a forced error.
    pub retry_after: Option<u64>,
    /// The faults (status, latency, garbage, cut, refusal) hit only the first this-many attempts
    /// of a request (attempts share Envoy's `x-request-id`); later ones are answered normally.
    pub fault_attempts: Option<u64>,
    /// `x-mock-refuse`: refuse the prompt as the provider would, with its own 400.
    pub refuse: Option<Refusal>,
}

/// A provider's refusal of a prompt (`x-mock-refuse`, or `--context-window` for a long one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `context_window`: longer than the model takes.
    ContextWindow,
    /// `content_policy`: the provider's safety system refused it.
    ContentPolicy,
}

impl Knobs {
    pub fn from_headers(headers: &HashMap<String, String>, config: &Config) -> Self {
        let num = |name: &str| headers.get(name).and_then(|v| v.trim().parse::<u64>().ok());
        Self {
            latency_ms: num("x-mock-latency-ms").unwrap_or(config.latency_ms),
            prompt_tokens: num("x-mock-prompt-tokens"),
            completion_tokens: num("x-mock-completion-tokens"),
            cached_tokens: num("x-mock-cached-tokens").unwrap_or(0),
            cache_write_tokens: num("x-mock-cache-write-tokens").unwrap_or(0),
            reasoning_tokens: num("x-mock-reasoning-tokens").unwrap_or(0),
            chunk_tokens: num("x-mock-chunk-tokens").map_or(1, |n| n.max(1) as usize),
            chunk_delay_ms: num("x-mock-chunk-delay-ms").unwrap_or(0),
            split_bytes: num("x-mock-split-bytes").map(|n| n.max(1) as usize),
            cut_after: num("x-mock-cut-after").map(|n| n as usize),
            stall_after: num("x-mock-stall-after").map(|n| n as usize),
            stall_ms: num("x-mock-stall-ms").unwrap_or(0),
            status: num("x-mock-status").and_then(|n| u16::try_from(n).ok()).or(config.status),
            garbage: headers.get("x-mock-garbage").is_some_and(|v| v == "1"),
            response_bytes: num("x-mock-response-bytes").map(|n| n as usize),
            tool_call: headers.get("x-mock-tool-call").map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()),
            retry_after: num("x-mock-retry-after"),
            fault_attempts: num("x-mock-fault-attempts"),
            refuse: match headers.get("x-mock-refuse").map(|v| v.trim()) {
                Some("context_window") => Some(Refusal::ContextWindow),
                Some("content_policy") => Some(Refusal::ContentPolicy),
                _ => None,
            },
        }
    }

    /// This attempt past `fault_attempts`: answered as if no fault were asked for.
    pub fn without_faults(self, config: &Config) -> Self {
        Self {
            latency_ms: config.latency_ms,
            status: None,
            garbage: false,
            cut_after: None,
            retry_after: None,
            refuse: None,
            ..self
        }
    }

    /// The error `x-mock-status` forces, and its message.
    pub fn forced_error(&self) -> Option<(StatusCode, String)> {
        let status = self.status.and_then(|s| StatusCode::from_u16(s).ok())?;
        Some((status, format!("mock error {}", status.as_u16())))
    }

    /// The answer's length where the request's `cap` (none if None) limits the default length
    /// and a knob's alike, and whether the cap cut it short.
    pub fn capped_completion(&self, cap: Option<u64>) -> (u64, bool) {
        let wanted = self.completion_tokens.unwrap_or(DEFAULT_COMPLETION);
        let completion = cap.map_or(wanted, |m| wanted.min(m));
        (completion, completion < wanted)
    }

    /// The arguments of the call `x-mock-tool-call` asks for.
    pub fn tool_arguments() -> Value {
        json!({"city": "Paris"})
    }
}
