//! Stage three: the response passes. Its status and content type choose the tap (a stream's
//! usage scanner, a translator, or a bounded copy of a JSON body); the client's allowance goes
//! out in `x-ratelimit-*`.

use super::*;

impl<H: Host> RequestFlow<H> {
    pub fn on_response_headers(&mut self) -> Action {
        let Some(admitted) = &self.admitted else {
            return Action::Continue;
        };
        if self.cache.hit().is_some() || self.fan_out.is_some() {
            return Action::Continue; // the cache's own answer, or the filter's from its calls
        }
        let [status, content_type, attempt_count, rate_limit @ ..] = self.host.response_headers(READ_RESPONSE_HEADERS);
        self.status = status.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()).unwrap_or(0);
        if matches!(self.config().config.routing_strategy, sluice_core::config::RoutingStrategy::LatencyBased(_)) {
            self.first_byte_ms = self.host.now_ms();
        }
        self.attempts = attempt_count.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()).unwrap_or(1).max(1);
        // LiteLLM's header: the retries this answer took (over the passes, for a plan's).
        if !self.tell_plan_attempts(self.attempts) && admitted.retries > 0 {
            let retried = itoa::Buffer::new().format(self.attempts - 1).to_owned();
            self.host.add_response_header("x-litellm-attempted-retries", retried.as_bytes());
        }
        set_remaining_headers(&self.host, &admitted.remaining, rate_limit.map(|h| h.is_some()));
        let content_type = content_type.unwrap_or_default();
        let has = |needle: &[u8]| content_type.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle));
        let is_sse = has(b"text/event-stream");
        if let Some(translation) = &admitted.translation {
            // Every byte of the body changes: its length is no longer the provider's.
            self.host.set_response_header("content-length", None);
            // Bedrock streams AWS's binary event stream; the client gets SSE.
            let is_stream = is_sse || has(b"application/vnd.amazon.eventstream");
            self.tap = if is_stream && (200..300).contains(&self.status) {
                if !is_sse {
                    self.host.set_response_header("content-type", Some(b"text/event-stream"));
                }
                let created = self.start_ms / 1000;
                Tap::TranslatedSse(translation.stream(created))
            } else {
                self.host.set_response_header("content-type", Some(b"application/json"));
                Tap::TranslatedJson { body: Vec::new(), overflow: false, translation: translation.clone() }
            };
            let sent_type: &[u8] =
                if matches!(self.tap, Tap::TranslatedSse(_)) { b"text/event-stream" } else { b"application/json" };
            self.cache_response_headers(sent_type);
            return Action::Continue;
        }
        self.tap = if is_sse {
            if admitted.strip_usage_chunk {
                // The body changes length once the usage chunk is removed.
                self.host.set_response_header("content-length", None);
            }
            Tap::Sse(SseUsageScanner::new(admitted.format, admitted.strip_usage_chunk))
        } else {
            Tap::Json { body: Vec::new(), overflow: false }
        };
        self.cache_response_headers(&content_type);
        Action::Continue
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.cache.hit().is_some() || self.fan_out.is_some() {
            return Action::Continue;
        }
        if end_of_stream {
            self.response_complete = true;
        }
        let scan_limit = usize::try_from(self.config().config.max_response_scan_bytes).unwrap_or(usize::MAX);
        let error_format = self.error_format();
        // What the client is sent of a stream or a translated answer goes to the cache's copy
        // too (a plain JSON answer's copy is the tap's own).
        let fill = Self::cache_fill(&mut self.cache);
        match &mut self.tap {
            Tap::None => {}
            Tap::Sse(scanner) => {
                let chunk =
                    if body_size > 0 { self.host.response_body(body_size).unwrap_or_default() } else { Vec::new() };
                match scanner.feed(&chunk, end_of_stream) {
                    Forward::Replace(bytes) => {
                        self.host.replace_response_body(body_size, &bytes);
                        if let Some(fill) = fill {
                            fill.push(&bytes);
                        }
                    }
                    Forward::Unchanged => {
                        if let Some(fill) = fill {
                            fill.push(&chunk);
                        }
                    }
                }
            }
            Tap::Json { body, overflow } => gather(&self.host, body, overflow, body_size, scan_limit),
            Tap::TranslatedSse(translator) => {
                let chunk =
                    if body_size > 0 { self.host.response_body(body_size).unwrap_or_default() } else { Vec::new() };
                let translated = translator.feed(&chunk, end_of_stream);
                self.host.replace_response_body(body_size, &translated);
                if let Some(fill) = fill {
                    fill.push(&translated);
                }
            }
            Tap::TranslatedJson { body, overflow, translation } => {
                // Held back chunk by chunk (each replaced by nothing) and sent whole, translated,
                // with the last one: a JSON document translates only once it is complete.
                gather(&self.host, body, overflow, body_size, scan_limit);
                let out = if !end_of_stream {
                    Vec::new()
                } else if *overflow {
                    GatewayError::Untranslatable { detail: format!("the provider's answer is over {scan_limit} bytes") }
                        .body_for(error_format)
                } else {
                    translation.response(self.status, body, self.start_ms / 1000)
                };
                self.host.replace_response_body(body_size, &out);
                if let Some(fill) = fill {
                    fill.push(&out);
                }
            }
        }
        Action::Continue
    }
}

/// Appends the response chunk of `size` bytes to `body`, up to `limit` bytes in all; past it,
/// `overflow` is set and nothing more is kept.
fn gather<H: Host>(host: &H, body: &mut Vec<u8>, overflow: &mut bool, size: usize, limit: usize) {
    if size == 0 || *overflow {
        return;
    }
    if body.len().saturating_add(size) > limit {
        *overflow = true;
    } else {
        host.append_response_body(size, body);
    }
}

/// The values of `RATE_LIMIT_HEADERS` for the tightest scope (None: that scope kind is not
/// limited).
fn remaining_values(remaining: &Remaining) -> [Option<u64>; 4] {
    [
        remaining.requests.map(|(limit, _)| limit),
        remaining.requests.map(|(_, left)| left),
        remaining.tokens.map(|(limit, _)| limit),
        remaining.tokens.map(|(_, left)| left),
    ]
}

/// The `x-ratelimit-*` headers for the tightest scope, for an answer the filter makes itself.
pub(super) fn remaining_headers(remaining: &Remaining) -> Vec<(&'static str, String)> {
    RATE_LIMIT_HEADERS
        .into_iter()
        .zip(remaining_values(remaining))
        .filter_map(|(name, value)| Some((name, value?.to_string())))
        .collect()
}

/// Sets the `x-ratelimit-*` headers for the tightest scope on the response, replacing those of
/// the provider (`sent`: which of `RATE_LIMIT_HEADERS` it sent; the others are only added).
/// Numbers are formatted on the stack: this runs for every limited request.
fn set_remaining_headers<H: Host>(host: &H, remaining: &Remaining, sent: [bool; 4]) {
    for ((name, value), sent) in RATE_LIMIT_HEADERS.into_iter().zip(remaining_values(remaining)).zip(sent) {
        let Some(value) = value else { continue };
        let mut digits = itoa::Buffer::new();
        let value = digits.format(value).as_bytes();
        if sent {
            host.set_response_header(name, Some(value));
        } else {
            host.add_response_header(name, value);
        }
    }
}

/// Headers of a rejection: `retry-after` and the limit that was hit (remaining 0).
pub(super) fn rate_limit_headers(error: &GatewayError) -> Vec<(&'static str, String)> {
    let (kind, limit, retry_after_secs) = match error {
        GatewayError::RateLimited { kind, limit, retry_after_secs, .. } => (kind, limit, retry_after_secs),
        GatewayError::KeyLookupRateLimited { retry_after_secs }
        | GatewayError::NoHealthyDeployment { retry_after_secs, .. }
        | GatewayError::GroupAtCapacity { retry_after_secs, .. } => {
            return vec![("retry-after", retry_after_secs.to_string())];
        }
        // A slot frees when any request of the scope ends: worth trying again soon.
        GatewayError::ParallelLimitReached { .. } => return vec![("retry-after", "1".into())],
        _ => return Vec::new(),
    };
    let mut rem = Remaining::default();
    match kind {
        LimitKind::Requests => rem.requests = Some((*limit, 0)),
        LimitKind::Tokens => rem.tokens = Some((*limit, 0)),
    }
    let mut out = remaining_headers(&rem);
    out.push(("retry-after", retry_after_secs.to_string()));
    out
}
