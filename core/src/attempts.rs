//! A failed upstream attempt's error class: what a usage record's `failed_attempts` and the
//! `sluice.failed_attempts` counters say of each try that did not answer the client (a retry,
//! a fallback's earlier step). LiteLLM's exception classes, by the provider's status, with its
//! two refusals told apart by the body (`crate::refusals`).

use serde::{Deserialize, Serialize};

use crate::refusals::Refusal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptError {
    /// 429 (`RateLimitError`).
    RateLimit,
    /// 408, 504 (`Timeout`).
    Timeout,
    /// Any other 5xx (`InternalServerError`, `ServiceUnavailableError`).
    ServerError,
    /// 401, 403 (`AuthenticationError`, `PermissionDeniedError`).
    Authentication,
    /// 404 (`NotFoundError`).
    NotFound,
    /// A 400 saying the prompt is too long (`ContextWindowExceededError`).
    ContextWindow,
    /// A 400 saying the content policy refused it (`ContentPolicyViolationError`).
    ContentPolicy,
    /// Any other 4xx (`BadRequestError`).
    BadRequest,
    /// An attempt Envoy's router retried within one pass: a failed connection or a retried
    /// status, which the router does not report one by one.
    Retried,
}

impl AttemptError {
    pub const ALL: [AttemptError; 9] = [
        AttemptError::RateLimit,
        AttemptError::Timeout,
        AttemptError::ServerError,
        AttemptError::Authentication,
        AttemptError::NotFound,
        AttemptError::ContextWindow,
        AttemptError::ContentPolicy,
        AttemptError::BadRequest,
        AttemptError::Retried,
    ];

    /// The class of a provider's answer with `status` (and, for a 400, the refusal its body
    /// states); None for a success.
    pub fn of(status: u16, refusal: Option<Refusal>) -> Option<AttemptError> {
        Some(match (status, refusal) {
            (200..=399, _) => return None,
            (_, Some(Refusal::ContextWindow)) => AttemptError::ContextWindow,
            (_, Some(Refusal::ContentPolicy)) => AttemptError::ContentPolicy,
            (429, _) => AttemptError::RateLimit,
            (408 | 504, _) => AttemptError::Timeout,
            (401 | 403, _) => AttemptError::Authentication,
            (404, _) => AttemptError::NotFound,
            (500..=599, _) => AttemptError::ServerError,
            _ => AttemptError::BadRequest,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptError::RateLimit => "rate_limit",
            AttemptError::Timeout => "timeout",
            AttemptError::ServerError => "server_error",
            AttemptError::Authentication => "authentication",
            AttemptError::NotFound => "not_found",
            AttemptError::ContextWindow => "context_window",
            AttemptError::ContentPolicy => "content_policy",
            AttemptError::BadRequest => "bad_request",
            AttemptError::Retried => "retried",
        }
    }

    /// Its position in [`Self::ALL`] (a counter's index).
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_refusals_have_litellms_classes() {
        assert_eq!(AttemptError::of(200, None), None);
        assert_eq!(AttemptError::of(429, None), Some(AttemptError::RateLimit));
        assert_eq!(AttemptError::of(504, None), Some(AttemptError::Timeout));
        assert_eq!(AttemptError::of(503, None), Some(AttemptError::ServerError));
        assert_eq!(AttemptError::of(403, None), Some(AttemptError::Authentication));
        assert_eq!(AttemptError::of(404, None), Some(AttemptError::NotFound));
        assert_eq!(AttemptError::of(400, None), Some(AttemptError::BadRequest));
        assert_eq!(AttemptError::of(400, Some(Refusal::ContextWindow)), Some(AttemptError::ContextWindow));
        for (i, e) in AttemptError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            let json = serde_json::to_string(e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.as_str()));
        }
    }
}
