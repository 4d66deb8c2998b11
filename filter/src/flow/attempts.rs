//! How Envoy's router tries a routed request: how many times, on which provider answers, and how
//! long each attempt may take (`sluice_core::retries`). Said in the router's own request headers,
//! set only when something is configured or asked, so a request with neither costs nothing here.

use sluice_core::config::Deployment;
use sluice_core::request::LlmRequest;
use sluice_core::retries::{RETRY_ON_HEADER_VALUE, STREAM_IDLE_HEADER};

use super::*;

/// The router's headers this stage sets (a client's own are removed in `auth`).
pub(super) const ROUTER_HEADERS: [&str; 5] = [
    "x-envoy-max-retries",
    "x-envoy-retry-on",
    "x-envoy-retriable-status-codes",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
];

/// What the router retries for a request whose failures go to its fallback plan instead.
const CONNECTION_RETRY_ON: &str = "connect-failure,refused-stream,reset";

/// Retries and timeouts as the router is told them, made once per config.
#[derive(Debug, Default)]
pub(super) struct AttemptPolicy {
    /// `x-envoy-retriable-status-codes` for the gateway's retry classes.
    retriable_status_codes: String,
}

impl AttemptPolicy {
    pub(super) fn new(config: &CompiledConfig) -> Self {
        AttemptPolicy { retriable_status_codes: config.config.retries.on.status_codes() }
    }
}

impl<H: Host> RequestFlow<H> {
    /// Tells the router this request's retries (the request's `num_retries`, else the
    /// gateway's) and timeouts (the request's `timeout`, else the deployment's — its
    /// `stream_timeout` for a stream — else the gateway's `timeout`).
    ///
    /// A whole answer must arrive within one timeout per attempt (the router's per-try timeout,
    /// which runs until the response starts, and a whole-request timeout of one per attempt). A
    /// stream's first byte and each gap between its chunks are bounded by its route's idle
    /// timeout; the route's timeout bounds the rest. Returns the retries allowed.
    pub(super) fn tell_the_router(
        &self,
        gateway: &Gateway,
        deployment: &Deployment,
        req: &LlmRequest<'_>,
        streamed: bool,
    ) -> u32 {
        let config = &gateway.config.config;
        let retries = req.num_retries.unwrap_or(config.retries.num_retries);
        let mut digits = itoa::Buffer::new();
        if self.plan_continues() {
            // A provider's failure goes to the plan's next step (another deployment, the next
            // fallback group); the router retries only what has no answer to redirect.
            self.host.add_request_header(ROUTER_HEADERS[0], digits.format(retries.max(1)).as_bytes());
            self.host.add_request_header(ROUTER_HEADERS[1], CONNECTION_RETRY_ON.as_bytes());
        } else if retries > 0 {
            self.host.add_request_header(ROUTER_HEADERS[0], digits.format(retries).as_bytes());
            self.host.add_request_header(ROUTER_HEADERS[1], RETRY_ON_HEADER_VALUE.as_bytes());
            self.host.add_request_header(ROUTER_HEADERS[2], gateway.attempt_policy.retriable_status_codes.as_bytes());
        }
        if streamed {
            // A stream's time to first byte and its gaps between chunks, in LiteLLM's order: the
            // request's `stream_timeout`, the deployment's, the request's `timeout`, the
            // deployment's `timeout`, the gateway's. A configured one is the route whose
            // `per_try_idle_timeout` it is (not the per-try timeout too: when that fires after
            // the first byte, Envoy drops the idle timer with it); a request's own may be any
            // number (no route has each), so it bounds the first byte only.
            let idle = match (req.stream_timeout_ms, deployment.stream_timeout_ms, req.timeout_ms) {
                (Some(_), _, _) => None,
                (None, Some(own), _) => Some(own),
                (None, None, Some(_)) => None,
                (None, None, None) => deployment.stream_idle_ms(config.timeout_ms),
            };
            if let Some(idle) = idle {
                self.host.add_request_header(STREAM_IDLE_HEADER, digits.format(idle).as_bytes());
            } else if let Some(first_byte) = req.stream_timeout_ms.or(req.timeout_ms) {
                self.host.add_request_header(ROUTER_HEADERS[4], digits.format(first_byte).as_bytes());
            }
            return retries;
        }
        let Some(per_attempt) = req.timeout_ms.or(deployment.timeout_ms).or(config.timeout_ms) else { return retries };
        if retries > 0 {
            self.host.add_request_header(ROUTER_HEADERS[4], digits.format(per_attempt).as_bytes());
        }
        let whole = per_attempt.saturating_mul(u64::from(retries) + 1);
        self.host.add_request_header(ROUTER_HEADERS[3], digits.format(whole).as_bytes());
        retries
    }
}
