//! A provider's 400 told apart: the prompt did not fit the model's context window, or the
//! provider's content policy refused it. LiteLLM raises `ContextWindowExceededError` and
//! `ContentPolicyViolationError` for these (its `exception_mapping_utils`), and they are what
//! `context_window_fallbacks` and `content_policy_fallbacks` follow. Providers say so only in
//! the error's text or code, in each one's own words: the phrases below are theirs (OpenAI,
//! Azure, Anthropic, Gemini, Bedrock, vLLM and llama.cpp servers), matched without case.

/// Why a provider refused a request, where it matters for a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The prompt (with the requested output) is longer than the model takes.
    ContextWindow,
    /// The provider's safety system refused the prompt.
    ContentPolicy,
}

/// The part of an error body that is read: an error's message and code come first, and a
/// prompt echoed back in a long body is not searched.
const READ_AT_MOST: usize = 16 * 1024;

const CONTEXT_WINDOW: [&str; 12] = [
    "context_length_exceeded",       // OpenAI's code
    "maximum context length",        // OpenAI, vLLM: "This model's maximum context length is …"
    "model's maximum context limit", // OpenAI-compatible servers
    "exceed context limit",          // Anthropic (older messages)
    "prompt is too long",            // Anthropic: "prompt is too long: 208000 tokens > 200000 maximum"
    "input is too long",             // Bedrock: "Input is too long for requested model."
    "is longer than the model's context length",
    "input tokens exceed the configured limit",     // Bedrock, Azure AI
    "exceeds the maximum number of tokens allowed", // Gemini
    "exceeds the available context size",           // llama.cpp
    "`inputs` tokens + `max_new_tokens` must be",   // Hugging Face TGI
    "too many input tokens",
];

/// What looks like the phrases above but is a parameter's own length check (OpenAI's `user`).
const NOT_CONTEXT_WINDOW: [&str; 2] = ["string_above_max_length", "invalid 'user'"];

const CONTENT_POLICY: [&str; 7] = [
    "content_policy_violation",         // OpenAI's code
    "responsibleaipolicyviolation",     // Azure's inner code
    "content_filter",                   // Azure's code (and `content_filter_policy`)
    "content management policy",        // Azure: "… triggering Azure OpenAI's content management policy"
    "as a result of our safety system", // OpenAI images and moderation refusals
    "blocked by content filtering",     // Bedrock guardrails
    "prohibited_content",               // Gemini's block reason
];

/// The refusal a provider's 400 body states, if it is one of the two.
pub fn classify(status: u16, body: &[u8]) -> Option<Refusal> {
    if status != 400 {
        return None;
    }
    let text = body.get(..READ_AT_MOST).unwrap_or(body).to_ascii_lowercase();
    let says = |phrase: &str| text.windows(phrase.len()).any(|w| w == phrase.as_bytes());
    if CONTEXT_WINDOW.iter().any(|p| says(p)) && !NOT_CONTEXT_WINDOW.iter().any(|p| says(p)) {
        return Some(Refusal::ContextWindow);
    }
    if CONTENT_POLICY.iter().any(|p| says(p)) {
        return Some(Refusal::ContentPolicy);
    }
    // Cerebras: "Current length is 9000 while limit is 8192".
    if says("current length is") && says("while limit is") {
        return Some(Refusal::ContextWindow);
    }
    None
}

/// The prompt's size in tokens as the pre-send context check counts it (LiteLLM's
/// `enable_pre_call_checks`): the body's bytes over four, the gateway's estimate everywhere,
/// less inline binary data (base64 images and files), which the estimate would count as text
/// many times over its real token cost. Never more than `estimate_tokens_from_bytes(len)`.
pub fn prompt_estimate(body: &[u8]) -> u64 {
    crate::usage::estimate_tokens_from_bytes(body.len().saturating_sub(inline_binary_bytes(body)) as u64)
}

/// Below this, a JSON string is counted as text whatever it holds.
const BINARY_AT_LEAST: usize = 512;

/// Bytes of the body's JSON strings that are base64 data: a data URL's payload, or a long
/// string of base64 characters alone (Anthropic's and Gemini's inline `data`).
fn inline_binary_bytes(body: &[u8]) -> usize {
    let is_base64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    let mut binary = 0;
    let mut i = 0;
    while let Some(open) = body.get(i..).and_then(|rest| rest.iter().position(|b| *b == b'"')) {
        let start = i + open + 1;
        // The string's end: the next quote not escaped (base64 has no backslashes; any other
        // string is skipped past its escapes).
        let mut end = start;
        while let Some(&b) = body.get(end) {
            match b {
                b'\\' => end += 2,
                b'"' => break,
                _ => end += 1,
            }
        }
        let string = body.get(start..end.min(body.len())).unwrap_or_default();
        if string.len() >= BINARY_AT_LEAST {
            // "data:image/png;base64,AAAA…": the payload after the comma.
            let payload = match string.strip_prefix(b"data:") {
                Some(url) => url.iter().position(|b| *b == b',').and_then(|c| url.get(c + 1..)).unwrap_or_default(),
                None => string,
            };
            if payload.len() >= BINARY_AT_LEAST && payload.iter().all(is_base64) {
                binary += payload.len();
            }
        }
        i = end + 1;
    }
    binary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_context_window_errors_are_told_apart() {
        for body in [
            // OpenAI
            r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            // Anthropic
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208000 tokens > 200000 maximum"}}"#,
            // Gemini
            r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#,
            // Bedrock
            r#"{"message":"The model returned the following errors: Input is too long for requested model."}"#,
            // Cerebras
            r#"{"message":"Please reduce the length of the messages or completion. Current length is 9000 while limit is 8192"}"#,
        ] {
            assert_eq!(classify(400, body.as_bytes()), Some(Refusal::ContextWindow), "{body}");
        }
    }

    #[test]
    fn providers_content_policy_errors_are_told_apart() {
        for body in [
            r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#,
            r#"{"error":{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","code":"content_policy_violation"}}"#,
        ] {
            assert_eq!(classify(400, body.as_bytes()), Some(Refusal::ContentPolicy), "{body}");
        }
    }

    #[test]
    fn other_errors_and_other_statuses_are_neither() {
        let user_too_long = r#"{"error":{"message":"Invalid 'user': string too long. Expected a string with maximum length 64, but got a string with length 80 instead.","code":"string_above_max_length"}}"#;
        let bad_temperature = r#"{"error":{"message":"Invalid 'temperature': decimal above maximum value.","code":"decimal_above_max_value"}}"#;
        assert_eq!(classify(400, user_too_long.as_bytes()), None);
        assert_eq!(classify(400, bad_temperature.as_bytes()), None);
        assert_eq!(classify(400, b""), None);
        let context = r#"{"error":{"code":"context_length_exceeded"}}"#;
        assert_eq!(classify(429, context.as_bytes()), None, "only a 400 is classified");
        // A phrase past what is read does not count (a long echo of the prompt).
        let far = format!("{{\"error\":{{\"message\":\"{}prompt is too long\"}}}}", "x".repeat(READ_AT_MOST));
        assert_eq!(classify(400, far.as_bytes()), None);
    }

    #[test]
    fn the_pre_send_estimate_leaves_out_inline_binary_data() {
        let text = "hello ".repeat(400);
        let image = "iVBORw0KGgo".repeat(1000);
        let openai = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[{{"type":"text","text":"{text}"}},{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{image}"}}}}]}}]}}"#
        );
        let anthropic = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[{{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{image}"}}}}]}}]}}"#
        );
        let all = |b: &str| crate::usage::estimate_tokens_from_bytes(b.len() as u64);
        assert_eq!(prompt_estimate(openai.as_bytes()), all(&openai) - all(&image));
        assert_eq!(prompt_estimate(anthropic.as_bytes()), all(&anthropic) - all(&image));
        // Text, however long, counts whole: spaces and punctuation are not base64.
        let plain = format!(r#"{{"messages":[{{"role":"user","content":"{text}"}}]}}"#);
        assert_eq!(prompt_estimate(plain.as_bytes()), all(&plain));
        // A long escaped string is skipped past its escapes, and an unterminated one ends the scan.
        let escaped = format!(r#"{{"a":"{}\"{image}","b":"{image}"}}"#, "\\n".repeat(10));
        assert_eq!(prompt_estimate(escaped.as_bytes()), all(&escaped) - all(&image));
        assert_eq!(prompt_estimate(b"{\"a\":\"abc"), all("{\"a\":\"abc"));
    }
}
