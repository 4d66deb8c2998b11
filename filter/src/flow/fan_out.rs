//! A request its deployment takes as several calls: Amazon Titan embeds one text a call, so an
//! OpenAI `/v1/embeddings` request with several texts for a Titan deployment is a call per text
//! (LiteLLM loops the same way). The filter sends them itself, as HTTP calls through the
//! deployment's cluster: Envoy's SigV4 signing on the cluster applies to them as to the
//! router's requests, and they carry the client's headers but its key. At most `MAX_IN_FLIGHT`
//! are out at once; each is retried on its own as the router retries a request (the request's
//! `num_retries`, the gateway's retry classes). When every text has its vector, the client gets
//! one list in its order, metered at the sum of Titan's counts.
//!
//! Money: a call that answered is billed at its count whatever happens to the others. When a
//! call fails for good no more are sent, the calls already out are waited for (and billed),
//! and the client gets the failed call's error, translated. When the client leaves first, the
//! calls still out are billed at their estimates: the provider may have embedded them.
//!
//! Not here: fallbacks to another group (a failed call is the request's error, as a failed
//! pass with no plan left), and the response cache's hit (looked up before: a hit sends none).

use sluice_core::conversion::openai_bedrock::{self, EmbeddingsCalls};
use sluice_core::retries::RetryOn;

use super::*;

/// Calls out at once: a client's list of two thousand texts must not open two thousand
/// upstream streams.
const MAX_IN_FLIGHT: usize = 8;

/// A call's error body when Envoy gave no answer (no connection, a reset, its timeout), in
/// Bedrock's error shape so it translates as any of the provider's.
const NO_ANSWER: &[u8] = br#"{"message":"the provider did not answer (connection failure, reset or timeout)"}"#;

/// Whether a client request header goes on each call: not the pseudo-headers and framing (each
/// call has its own), not the client's credentials, not Envoy's or the gateway's own headers.
fn forwarded(name: &[u8]) -> bool {
    !(name.starts_with(b":")
        || name.starts_with(b"x-envoy-")
        || name.starts_with(b"x-sluice-")
        || CLIENT_KEY_HEADERS.iter().any(|h| h.as_bytes() == name)
        || matches!(
            name,
            b"content-length"
                | b"content-type"
                | b"host"
                | b"connection"
                | b"keep-alive"
                | b"transfer-encoding"
                | b"te"
                | b"upgrade"
                | b"expect"
                | b"proxy-connection"
        ))
}

/// One text's call.
struct Call {
    body: Vec<u8>,
    /// The text's tokens, estimated: what it is billed at if it is out when the client leaves.
    estimate: u64,
    /// Out now, under this token.
    token: Option<u32>,
    /// Times sent.
    tries: u32,
    /// Its answer (a 2xx body).
    answer: Option<Vec<u8>>,
}

/// The calls of one request (`RequestFlow::fan_out`).
pub(super) struct FanOut {
    cluster: String,
    /// Every call's headers: its path, authority and content type, the deployment's credential,
    /// then the client's headers it keeps.
    headers: Vec<(String, Vec<u8>)>,
    timeout_ms: u64,
    calls: Vec<Call>,
    /// The first call not sent yet.
    next: usize,
    retries: u32,
    retry_on: RetryOn,
    /// Retries made over all calls (the record's failed attempts).
    retried: u32,
    /// The first call that failed for good: its status (None: no answer) and body.
    failure: Option<(Option<u16>, Vec<u8>)>,
    translation: Translation,
    /// The client was answered (`reply` holds a whole answer for the response cache).
    answered: bool,
    reply: Option<Vec<u8>>,
}

impl FanOut {
    fn in_flight(&self) -> usize {
        self.calls.iter().filter(|c| c.token.is_some()).count()
    }

    pub(super) fn awaits(&self, token: u32) -> bool {
        self.calls.iter().any(|c| c.token == Some(token))
    }

    fn send(&mut self, host: &impl Host, index: usize) {
        let headers: Vec<(&str, &[u8])> = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        let Some(call) = self.calls.get_mut(index) else { return };
        call.tries = call.tries.saturating_add(1);
        call.token = host.dispatch_http(&self.cluster, &headers, &call.body, self.timeout_ms);
        if call.token.is_none() && self.failure.is_none() {
            // Envoy would not start it (no such cluster, an overloaded Envoy): no retry helps.
            self.failure = Some((None, NO_ANSWER.to_vec()));
        }
    }

    /// Sends calls while there is room and nothing has failed for good.
    fn pump(&mut self, host: &impl Host) {
        while self.failure.is_none() && self.next < self.calls.len() && self.in_flight() < MAX_IN_FLIGHT {
            let index = self.next;
            self.next += 1;
            self.send(host, index);
        }
    }

    /// A call's answer: kept, retried, or the request's failure; then the next calls go out.
    fn answer(&mut self, host: &impl Host, token: u32, status: Option<u16>, body: Vec<u8>) {
        let Some(index) = self.calls.iter().position(|c| c.token == Some(token)) else { return };
        let Some(call) = self.calls.get_mut(index) else { return };
        call.token = None;
        match status {
            Some(200..=299) => call.answer = Some(body),
            _ => {
                // No answer is a connection failure or reset: retried whatever the classes say,
                // as the router retries those.
                let retriable = status.is_none_or(|s| self.retry_on.retries(s));
                if retriable && call.tries <= self.retries && self.failure.is_none() {
                    self.retried = self.retried.saturating_add(1);
                    self.send(host, index);
                } else if self.failure.is_none() {
                    self.failure = Some((status, if status.is_some() { body } else { NO_ANSWER.to_vec() }));
                }
            }
        }
        self.pump(host);
    }

    /// Every text has its answer, or one failed and no call is out.
    fn done(&self) -> bool {
        match self.failure {
            Some(_) => self.in_flight() == 0,
            None => self.calls.iter().all(|c| c.answer.is_some()),
        }
    }

    /// The prompt tokens of the calls that answered (Titan's count, else the estimate), and
    /// whether each had a count.
    fn answered_tokens(&self) -> (u64, bool) {
        self.calls.iter().filter_map(|c| Some((c, c.answer.as_deref()?))).fold((0, true), |(sum, exact), (c, body)| {
            match usage::parse_response_usage(ApiFormat::Bedrock, body) {
                Some(u) => (sum.saturating_add(u.prompt_tokens), exact),
                None => (sum.saturating_add(c.estimate), false),
            }
        })
    }

    /// What the request used, at its end: every text embedded (Titan's counts), the calls that
    /// answered before one failed, or, when the client left first, those and the calls out.
    pub(super) fn measure(&self) -> (Usage, Outcome, bool) {
        let (mut prompt_tokens, exact) = self.answered_tokens();
        let outcome = match (self.answered, &self.failure) {
            (true, None) => Outcome::Completed,
            (true, Some(_)) => Outcome::UpstreamError,
            (false, _) => {
                let out = self.calls.iter().filter(|c| c.token.is_some()).map(|c| c.estimate);
                prompt_tokens = out.fold(prompt_tokens, u64::saturating_add);
                return (Usage { prompt_tokens, ..Usage::default() }, Outcome::Cancelled, true);
            }
        };
        (Usage { prompt_tokens, ..Usage::default() }, outcome, !exact)
    }

    /// The whole answer the client was sent, for the response cache.
    pub(super) fn take_reply(&mut self) -> Option<Vec<u8>> {
        self.reply.take()
    }
}

impl<H: Host> RequestFlow<H> {
    /// Sends an admitted request's calls to deployment `index` (in place of the router).
    pub(super) fn start_fan_out(
        &mut self,
        gateway: &Gateway,
        index: usize,
        upstream_path: &str,
        calls: EmbeddingsCalls,
        translation: Translation,
        req: &sluice_core::request::LlmRequest<'_>,
    ) {
        let Some(deployment) = gateway.config.deployment(index) else { return };
        let config = &gateway.config.config;
        let Some(own) = crate::deployment_health::call_headers(gateway, index, upstream_path) else { return };
        let mut headers: Vec<(String, Vec<u8>)> =
            own.into_iter().map(|(name, value)| (name.to_owned(), value.to_vec())).collect();
        for (name, value) in self.host.all_request_headers() {
            if forwarded(&name)
                && let Ok(name) = String::from_utf8(name)
            {
                headers.push((name, value));
            }
        }
        let calls = calls
            .bodies
            .into_iter()
            .zip(calls.estimates)
            .map(|(body, estimate)| Call { body, estimate, token: None, tries: 0, answer: None })
            .collect();
        let mut fan_out = FanOut {
            cluster: deployment.cluster.clone(),
            headers,
            timeout_ms: req
                .timeout_ms
                .or(deployment.timeout_ms)
                .or(config.timeout_ms)
                .unwrap_or(config.route_timeout_ms),
            calls,
            next: 0,
            retries: req.num_retries.unwrap_or(config.retries.num_retries),
            retry_on: config.retries.on,
            retried: 0,
            failure: None,
            translation,
            answered: false,
            reply: None,
        };
        fan_out.pump(&self.host);
        self.fan_out = Some(fan_out);
        self.answer_fan_out_if_done();
    }

    /// One call's answer.
    pub(super) fn on_fan_out_answer(&mut self, token: u32, size: usize) {
        let (status, body) = self.host.http_response(size);
        let Some(fan_out) = self.fan_out.as_mut() else { return };
        fan_out.answer(&self.host, token, status, body);
        self.answer_fan_out_if_done();
    }

    /// Once the calls are done: the client's one answer (or the failed call's error).
    fn answer_fan_out_if_done(&mut self) {
        let Some(fan_out) = self.fan_out.as_mut().filter(|f| f.done() && !f.answered) else { return };
        fan_out.answered = true;
        self.attempts = fan_out.retried.saturating_add(1);
        let translation = &fan_out.translation;
        let (status, body) = match fan_out.failure.clone() {
            Some((status, error)) => {
                let status = status.unwrap_or(503);
                (status, translation.response(status, &error, 0))
            }
            None => {
                let answers: Vec<&[u8]> = fan_out.calls.iter().filter_map(|c| c.answer.as_deref()).collect();
                let ask = translation.embeddings.unwrap_or_default();
                match openai_bedrock::embeddings_answers(&answers, &translation.client_model, ask) {
                    Ok((body, _)) => {
                        fan_out.reply = Some(body.clone());
                        (200, body)
                    }
                    Err(e) => {
                        // Answered, so billed, but not in a shape the client can be given.
                        fan_out.failure = Some((Some(502), Vec::new()));
                        (502, GatewayError::from(e).body_for(ErrorFormat::OpenAi))
                    }
                }
            }
        };
        self.status = status;
        self.response_complete = true;
        let remaining = self.admitted.as_ref().map(|a| response::remaining_headers(&a.remaining)).unwrap_or_default();
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(remaining.iter().map(|(k, v)| (*k, v.as_str())));
        if let cache::CacheState::Miss { key_header, fill } = &mut self.cache {
            headers.push((sluice_core::cache::CACHE_STATUS_HEADER, "miss"));
            headers.push((sluice_core::cache::CACHE_KEY_HEADER, key_header.as_str()));
            if let Some(fill) = fill.as_mut() {
                fill.set_content_type(b"application/json");
            }
        }
        self.host.send_local_response(u32::from(status), &headers, &body);
    }
}
