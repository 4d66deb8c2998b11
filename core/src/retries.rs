//! Retries and timeouts: LiteLLM's `num_retries`, `retry_policy`, `timeout`, `stream_timeout`
//! and `request_timeout`, carried out by Envoy's router. The filter decides per request how many
//! times, on which provider answers and how long the router waits, and says so in the router's
//! own request headers (`x-envoy-max-retries`, `x-envoy-retry-on`,
//! `x-envoy-retriable-status-codes`, `x-envoy-upstream-rq-timeout-ms`,
//! `x-envoy-upstream-rq-per-try-timeout-ms`); the route adds what headers cannot say (honouring a
//! 429's `retry-after`, another host on retry, and a stream's chunk-gap timeout, by a route the
//! filter picks with [`STREAM_IDLE_HEADER`]). ARCHITECTURE.md, "Retries and timeouts".

use serde::{Deserialize, Serialize};

/// Which provider answers are retried, by LiteLLM's error classes. Connection failures and
/// resets are always retried when retries are on (LiteLLM's `APIConnectionError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryOn {
    /// 429 (`RateLimitErrorRetries`).
    pub rate_limit: bool,
    /// 500, 502, 503, 504 (`InternalServerErrorRetries`).
    pub server_error: bool,
    /// 408 and an attempt that ran out of time (`TimeoutErrorRetries`).
    pub timeout: bool,
    /// 400, content-policy refusals included: the router tells them apart by status only
    /// (`BadRequestErrorRetries`, `ContentPolicyViolationErrorRetries`).
    pub bad_request: bool,
    /// 401 and 403 (`AuthenticationErrorRetries`).
    pub authentication: bool,
}

impl Default for RetryOn {
    /// What `num_retries` alone retries: the transient failures. LiteLLM also retries a 400 and
    /// a 401 by default; Sluice does not (the same request gets the same answer) unless
    /// `retry_policy` asks.
    fn default() -> Self {
        RetryOn { rate_limit: true, server_error: true, timeout: true, bad_request: false, authentication: false }
    }
}

/// How a request is retried (the gateway's default; a request's `num_retries` replaces the count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0: none.
    #[serde(default)]
    pub num_retries: u32,
    #[serde(default)]
    pub on: RetryOn,
}

/// The router's `x-envoy-retry-on`: connection failures, resets, and the listed status codes.
pub const RETRY_ON_HEADER_VALUE: &str = "connect-failure,refused-stream,reset,retriable-status-codes";

/// The request header that picks a streamed request's route by its chunk-gap timeout: its value
/// is one of `GatewayConfig::stream_idle_timeouts` in ms, and the route matching it has that
/// `per_try_idle_timeout` (no router header says it per request). Set by the filter, removed by
/// the route; a client's own is removed when its headers are read.
pub const STREAM_IDLE_HEADER: &str = "x-sluice-stream-idle-ms";

/// Most distinct stream timeouts a config may have: each is a pair of routes.
pub const MAX_STREAM_IDLE_ROUTES: usize = 16;

/// Most retries a request may ask for (LiteLLM has no bound; each retry may cost a provider call).
pub const MAX_RETRIES: u32 = 10;

impl RetryPolicy {
    pub fn is_off(&self) -> bool {
        *self == RetryPolicy::default()
    }
}

impl RetryOn {
    /// Whether a provider's answer with `status` is retried (the same classes as
    /// [`RetryOn::status_codes`]).
    pub fn retries(&self, status: u16) -> bool {
        match status {
            429 => self.rate_limit,
            500 | 502 | 503 | 504 => self.server_error,
            408 => self.timeout,
            400 => self.bad_request,
            401 | 403 => self.authentication,
            _ => false,
        }
    }

    /// `x-envoy-retriable-status-codes` for these classes (empty: none).
    pub fn status_codes(&self) -> String {
        let mut codes: Vec<&str> = Vec::new();
        if self.rate_limit {
            codes.push("429");
        }
        if self.server_error {
            codes.extend(["500", "502", "503", "504"]);
        }
        if self.timeout {
            codes.push("408");
        }
        if self.bad_request {
            codes.push("400");
        }
        if self.authentication {
            codes.extend(["401", "403"]);
        }
        codes.join(",")
    }
}

/// LiteLLM's `retry_policy` classes, as counts (None: not given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryPolicyCounts {
    pub bad_request: Option<u32>,
    pub authentication: Option<u32>,
    pub timeout: Option<u32>,
    pub rate_limit: Option<u32>,
    pub content_policy_violation: Option<u32>,
    pub internal_server: Option<u32>,
}

impl RetryPolicyCounts {
    /// LiteLLM's names for the classes.
    pub const NAMES: [&'static str; 6] = [
        "BadRequestErrorRetries",
        "AuthenticationErrorRetries",
        "TimeoutErrorRetries",
        "RateLimitErrorRetries",
        "ContentPolicyViolationErrorRetries",
        "InternalServerErrorRetries",
    ];

    pub fn set(&mut self, name: &str, count: u32) -> bool {
        let slot = match name {
            "BadRequestErrorRetries" => &mut self.bad_request,
            "AuthenticationErrorRetries" => &mut self.authentication,
            "TimeoutErrorRetries" => &mut self.timeout,
            "RateLimitErrorRetries" => &mut self.rate_limit,
            "ContentPolicyViolationErrorRetries" => &mut self.content_policy_violation,
            "InternalServerErrorRetries" => &mut self.internal_server,
            _ => return false,
        };
        *slot = Some(count);
        true
    }
}

/// `num_retries` with an optional `retry_policy` as one policy. A class the policy does not
/// name retries `num_retries` times if it is one [`RetryOn::default`] retries, else not at all.
/// Envoy's router keeps one retry budget per request, so the classes retried must share one
/// count; different counts are refused with the reason, not approximated.
pub fn resolve(num_retries: u32, counts: &RetryPolicyCounts) -> Result<RetryPolicy, String> {
    let default = RetryOn::default();
    let effective =
        |given: Option<u32>, on_by_default: bool| given.unwrap_or(if on_by_default { num_retries } else { 0 });
    let bad_request = effective(counts.bad_request, default.bad_request);
    let content_policy = effective(counts.content_policy_violation, default.bad_request);
    if bad_request != content_policy {
        return Err(format!(
            "retry_policy: ContentPolicyViolationErrorRetries ({content_policy}) must equal BadRequestErrorRetries \
             ({bad_request}): a content-policy refusal is a 400 like any bad request, and Envoy's router retries by status"
        ));
    }
    let classes = [
        ("RateLimitErrorRetries", effective(counts.rate_limit, default.rate_limit)),
        ("InternalServerErrorRetries", effective(counts.internal_server, default.server_error)),
        ("TimeoutErrorRetries", effective(counts.timeout, default.timeout)),
        ("BadRequestErrorRetries", bad_request),
        ("AuthenticationErrorRetries", effective(counts.authentication, default.authentication)),
    ];
    let mut retried = classes.iter().filter(|(_, n)| *n > 0);
    let Some((first_name, count)) = retried.next().copied() else {
        return Ok(RetryPolicy { num_retries: 0, on: default });
    };
    if let Some((other, n)) = retried.find(|(_, n)| *n != count) {
        return Err(format!(
            "retry_policy: {first_name} is {count} but {other} is {n}: Envoy's router retries a request with one \
             budget, so the error classes retried must share one count (0 turns a class off)"
        ));
    }
    if count > MAX_RETRIES {
        return Err(format!("num_retries: at most {MAX_RETRIES} retries, not {count}"));
    }
    let on = |i: usize| classes.get(i).is_some_and(|(_, n)| *n > 0);
    Ok(RetryPolicy {
        num_retries: count,
        on: RetryOn {
            rate_limit: on(0),
            server_error: on(1),
            timeout: on(2),
            bad_request: on(3),
            authentication: on(4),
        },
    })
}

/// Seconds (LiteLLM writes timeouts as seconds, fractions allowed) as milliseconds; None for
/// anything that is not a positive finite number of at most a day.
pub fn timeout_ms(seconds: f64) -> Option<u64> {
    (seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0).then(|| ((seconds * 1000.0).ceil() as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn num_retries_alone_retries_the_transient_failures() {
        let p = resolve(3, &RetryPolicyCounts::default()).unwrap();
        assert_eq!(p.num_retries, 3);
        assert_eq!(p.on.status_codes(), "429,500,502,503,504,408");
        assert_eq!(resolve(0, &RetryPolicyCounts::default()).unwrap().num_retries, 0);
    }

    #[test]
    fn a_policy_turns_classes_on_and_off() {
        let mut counts = RetryPolicyCounts::default();
        counts.set("RateLimitErrorRetries", 0);
        counts.set("BadRequestErrorRetries", 2);
        counts.set("ContentPolicyViolationErrorRetries", 2);
        let p = resolve(2, &counts).unwrap();
        assert_eq!(p.num_retries, 2);
        assert_eq!(p.on.status_codes(), "500,502,503,504,408,400");
        // With num_retries 0, only the classes the policy names are retried.
        let mut counts = RetryPolicyCounts::default();
        counts.set("AuthenticationErrorRetries", 1);
        let p = resolve(0, &counts).unwrap();
        assert_eq!((p.num_retries, p.on.status_codes().as_str()), (1, "401,403"));
    }

    #[test]
    fn what_one_retry_budget_cannot_do_is_refused_with_the_reason() {
        let mut counts = RetryPolicyCounts::default();
        counts.set("RateLimitErrorRetries", 5);
        let e = resolve(2, &counts).unwrap_err();
        assert!(e.contains("RateLimitErrorRetries is 5 but InternalServerErrorRetries is 2"), "{e}");
        let mut counts = RetryPolicyCounts::default();
        counts.set("ContentPolicyViolationErrorRetries", 1);
        assert!(resolve(1, &counts).unwrap_err().contains("must equal BadRequestErrorRetries"));
        assert!(resolve(11, &RetryPolicyCounts::default()).unwrap_err().contains("at most 10"));
        assert!(!RetryPolicyCounts::default().set("NotAClass", 1));
    }

    #[test]
    fn timeouts_are_positive_seconds() {
        assert_eq!(timeout_ms(0.5), Some(500));
        assert_eq!(timeout_ms(30.0), Some(30_000));
        assert_eq!(timeout_ms(0.0001), Some(1));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 86_401.0] {
            assert_eq!(timeout_ms(bad), None, "{bad}");
        }
    }
}
