//! Reading and rewriting an LLM request body.
//!
//! The body is validated in full by serde_json but only the fields the gateway needs are
//! decoded. `model` and `stream_options` are borrowed as raw JSON slices of the body, which gives
//! their byte positions, so the rewrite (upstream model name, `stream_options.include_usage`)
//! splices bytes instead of re-serialising the whole document.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::GatewayError;
use crate::retries;

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    // Kept even when `null`, so the rewrite replaces it rather than adding a duplicate member.
    #[serde(borrow, default, deserialize_with = "raw_keep_null")]
    stream_options: Option<&'a RawValue>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    /// The Responses API's name for it.
    #[serde(default)]
    max_output_tokens: Option<u64>,
    // The gateway's own per-request settings (LiteLLM's), never sent upstream.
    #[serde(borrow, default, deserialize_with = "raw_keep_null")]
    num_retries: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_keep_null")]
    timeout: Option<&'a RawValue>,
    /// LiteLLM's other name for `timeout`.
    #[serde(borrow, default, deserialize_with = "raw_keep_null")]
    request_timeout: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_keep_null")]
    stream_timeout: Option<&'a RawValue>,
    /// LiteLLM's per-request cache controls (`crate::cache::CacheControl`).
    #[serde(borrow, default, deserialize_with = "raw_keep_null")]
    cache: Option<&'a RawValue>,
    /// OpenAI's end-user identifier (LiteLLM's customer); sent upstream as it is.
    #[serde(borrow, default)]
    user: Option<&'a RawValue>,
    /// Where else LiteLLM finds the end user, after `user`: `litellm_metadata.user`,
    /// `metadata.user_id` (Anthropic's), the Responses API's `safety_identifier`.
    #[serde(borrow, default)]
    litellm_metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    safety_identifier: Option<&'a RawValue>,
}

/// A `{"<name>": "..."}` member of an object the end user may sit in; anything else is not one.
#[derive(Deserialize)]
struct UserIn<'a> {
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
}

/// LiteLLM's end-user headers, in its order of precedence (before anything in the body).
pub const END_USER_HEADERS: [&str; 2] = ["x-litellm-customer-id", "x-litellm-end-user-id"];

/// The end user an [`END_USER_HEADERS`] value names (trimmed; empty is none). Not UTF-8, or
/// longer than [`MAX_END_USER_BYTES`], is a 400 naming the header.
pub fn end_user_header(header: &'static str, value: &[u8]) -> Result<Option<String>, GatewayError> {
    let text = std::str::from_utf8(value)
        .map_err(|_| GatewayError::InvalidField { param: header, detail: "not UTF-8".into() })?
        .trim();
    Ok(checked_end_user(header, Cow::Borrowed(text))?.map(Cow::into_owned))
}

/// An end user found in the body, checked like `user`: at most [`MAX_END_USER_BYTES`].
fn checked_end_user<'a>(param: &'static str, user: Cow<'a, str>) -> Result<Option<Cow<'a, str>>, GatewayError> {
    if user.len() > MAX_END_USER_BYTES {
        return Err(GatewayError::InvalidField { param, detail: format!("at most {MAX_END_USER_BYTES} bytes") });
    }
    Ok(Some(user).filter(|u| !u.is_empty()))
}

/// The longest `user` the gateway records (a spend row's customer id).
pub const MAX_END_USER_BYTES: usize = 256;
/// LiteLLM's request tags header: comma-separated, spaces trimmed.
pub const TAGS_HEADER: &str = "x-litellm-tags";
/// The most request tags one request may carry, and the longest tag.
pub const MAX_REQUEST_TAGS: usize = 32;
pub const MAX_TAG_BYTES: usize = 128;

/// The tags of an `x-litellm-tags` value (LiteLLM's request tags, recorded with the spend):
/// comma-separated, each trimmed, empty ones skipped, duplicates once. More than
/// [`MAX_REQUEST_TAGS`], a longer tag than [`MAX_TAG_BYTES`], or a value that is not UTF-8 is a
/// 400 naming the header, never a tag silently dropped.
pub fn parse_tags_header(value: &[u8]) -> Result<Vec<String>, GatewayError> {
    let invalid = |detail: String| GatewayError::InvalidField { param: TAGS_HEADER, detail };
    let text = std::str::from_utf8(value).map_err(|_| invalid("not UTF-8".into()))?;
    let mut tags: Vec<String> = Vec::new();
    for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if tag.len() > MAX_TAG_BYTES {
            return Err(invalid(format!("a tag is at most {MAX_TAG_BYTES} bytes")));
        }
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_owned());
        }
    }
    if tags.len() > MAX_REQUEST_TAGS {
        return Err(invalid(format!("at most {MAX_REQUEST_TAGS} tags")));
    }
    Ok(tags)
}

/// Request fields that are the gateway's own settings, not the provider's (LiteLLM takes them
/// per request): read by [`parse_request`] and removed from the body before it goes upstream.
pub const GATEWAY_PARAMS: [&str; 5] = ["num_retries", "timeout", "request_timeout", "stream_timeout", "cache"];

fn raw_keep_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The parts of a request body the gateway acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmRequest<'a> {
    pub model: Cow<'a, str>,
    /// Byte range of the `model` value (quotes included) in the body.
    model_span: (usize, usize),
    pub stream: bool,
    /// The client asked for `stream_options.include_usage: true` itself.
    pub client_wants_usage: bool,
    /// Byte range of the `stream_options` value, if present.
    stream_options_span: Option<(usize, usize)>,
    /// `max_completion_tokens`, else `max_tokens`, else (Responses API) `max_output_tokens`.
    pub max_output_tokens: Option<u64>,
    /// `num_retries`: this request's retries, in place of the gateway's.
    pub num_retries: Option<u32>,
    /// `timeout` (or LiteLLM's `request_timeout`; seconds in the body): how long each attempt
    /// may take, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// `stream_timeout`: the same for a stream (its first byte), ahead of every other timeout.
    pub stream_timeout_ms: Option<u64>,
    /// Byte ranges of the [`GATEWAY_PARAMS`] values present, to remove before going upstream.
    gateway_param_spans: Vec<(usize, usize)>,
    /// `user`: the end user the request is made for (LiteLLM's customer), recorded with its
    /// spend.
    pub end_user: Option<Cow<'a, str>>,
    /// `cache`: the request's cache controls (checked whether or not the cache is on).
    pub cache_control: Option<crate::cache::CacheControl>,
}

fn span_of(body: &str, raw: &RawValue) -> Option<(usize, usize)> {
    let start = (raw.get().as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(raw.get().len())?;
    (end <= body.len()).then_some((start, end))
}

fn serde_detail(e: &serde_json::Error) -> String {
    e.to_string()
}

/// Parses a request body. Invalid JSON, a non-object, a missing or non-string `model` or a
/// field of the wrong type is a clear 400.
pub fn parse_request<'a>(body: &'a [u8]) -> Result<LlmRequest<'a>, GatewayError> {
    let text =
        std::str::from_utf8(body).map_err(|e| GatewayError::InvalidJson { detail: format!("not UTF-8 ({e})") })?;
    if !text.trim_start().starts_with('{') {
        return Err(GatewayError::InvalidJson { detail: "the body must be a JSON object".into() });
    }
    let fields: Fields<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            GatewayError::InvalidField { param: field_of(&e), detail: serde_detail(&e) }
        } else {
            GatewayError::InvalidJson { detail: serde_detail(&e) }
        }
    })?;
    let raw_model = fields.model.ok_or(GatewayError::MissingModel)?;
    let model: Cow<'_, str> = serde_json::from_str(raw_model.get())
        .map_err(|_| GatewayError::InvalidField { param: "model", detail: "must be a string".into() })?;
    if model.trim().is_empty() {
        return Err(GatewayError::MissingModel);
    }
    let model_span = span_of(text, raw_model).ok_or(GatewayError::Internal { detail: "model span" })?;
    let mut client_wants_usage = false;
    let mut stream_options_span = None;
    if let Some(raw) = fields.stream_options {
        if raw.get() != "null" {
            let opts: StreamOptions = serde_json::from_str(raw.get())
                .map_err(|e| GatewayError::InvalidField { param: "stream_options", detail: serde_detail(&e) })?;
            client_wants_usage = opts.include_usage == Some(true);
        }
        stream_options_span = span_of(text, raw);
    }
    let mut gateway_param_spans = Vec::new();
    let mut num_retries = None;
    if let Some(raw) = fields.num_retries.filter(|r| r.get() != "null") {
        let n: Option<u32> = serde_json::from_str(raw.get()).ok();
        num_retries = Some(n.filter(|n| *n <= retries::MAX_RETRIES).ok_or_else(|| GatewayError::InvalidField {
            param: "num_retries",
            detail: format!("must be a whole number from 0 to {}", retries::MAX_RETRIES),
        })?);
    }
    let seconds = |param: &'static str, raw: Option<&RawValue>| -> Result<Option<u64>, GatewayError> {
        let Some(raw) = raw.filter(|r| r.get() != "null") else { return Ok(None) };
        let seconds: Option<f64> = serde_json::from_str(raw.get()).ok();
        seconds.and_then(retries::timeout_ms).map(Some).ok_or_else(|| GatewayError::InvalidField {
            param,
            detail: "must be a number of seconds above 0 and at most a day".into(),
        })
    };
    let timeout_ms = match seconds("timeout", fields.timeout)? {
        Some(ms) => Some(ms),
        None => seconds("request_timeout", fields.request_timeout)?,
    };
    let stream_timeout_ms = seconds("stream_timeout", fields.stream_timeout)?;
    let mut end_user = match fields.user.filter(|r| r.get() != "null") {
        None => None,
        Some(raw) => {
            let user: Cow<'_, str> = serde_json::from_str(raw.get())
                .map_err(|_| GatewayError::InvalidField { param: "user", detail: "must be a string".into() })?;
            checked_end_user("user", user)?
        }
    };
    // LiteLLM's other places, in its order; each is the client's or the provider's own field,
    // so one of another shape is not an end user (and not an error here).
    let nested = |raw: Option<&'a RawValue>| raw.and_then(|r| serde_json::from_str::<UserIn<'a>>(r.get()).ok());
    if end_user.is_none()
        && let Some(user) = nested(fields.litellm_metadata).and_then(|m| m.user)
    {
        end_user = checked_end_user("litellm_metadata.user", user)?;
    }
    if end_user.is_none()
        && let Some(user) = nested(fields.metadata).and_then(|m| m.user_id)
    {
        end_user = checked_end_user("metadata.user_id", user)?;
    }
    if end_user.is_none()
        && let Some(user) = fields.safety_identifier.and_then(|r| serde_json::from_str::<Cow<'a, str>>(r.get()).ok())
    {
        end_user = checked_end_user("safety_identifier", user)?;
    }
    let cache_control = match fields.cache.filter(|r| r.get() != "null") {
        Some(raw) => Some(crate::cache::parse_cache_control(raw.get())?),
        None => None,
    };
    let gateway_params =
        [fields.num_retries, fields.timeout, fields.request_timeout, fields.stream_timeout, fields.cache];
    for raw in gateway_params.into_iter().flatten() {
        gateway_param_spans.push(span_of(text, raw).ok_or(GatewayError::Internal { detail: "param span" })?);
    }
    Ok(LlmRequest {
        model,
        model_span,
        stream: fields.stream.unwrap_or(false),
        client_wants_usage,
        stream_options_span,
        max_output_tokens: fields.max_completion_tokens.or(fields.max_tokens).or(fields.max_output_tokens),
        num_retries,
        timeout_ms,
        stream_timeout_ms,
        gateway_param_spans,
        end_user,
        cache_control,
    })
}

/// The edit that removes the member whose value is at `value` (its name, colon and one
/// neighbouring comma), or None when the member is not written plainly (`"name":`).
fn member_removal(body: &[u8], value: (usize, usize)) -> Option<(usize, usize)> {
    let is_space = |b: &u8| b.is_ascii_whitespace();
    let before = body.get(..value.0)?;
    let colon = before.iter().rposition(|b| !is_space(b))?;
    if before.get(colon) != Some(&b':') {
        return None;
    }
    let name_end = before.get(..colon)?.iter().rposition(|b| !is_space(b))? + 1;
    let name = GATEWAY_PARAMS.iter().find(|p| {
        let quoted = p.len() + 2;
        name_end >= quoted
            && before.get(name_end - quoted..name_end).is_some_and(|q| {
                q.first() == Some(&b'"') && q.last() == Some(&b'"') && q.get(1..q.len() - 1) == Some(p.as_bytes())
            })
    })?;
    let start = name_end - (name.len() + 2);
    let after = body.get(value.1..)?;
    let next = after.iter().position(|b| !is_space(b))?;
    if after.get(next) == Some(&b',') {
        return Some((start, value.1 + next + 1)); // `"name": v,` (a member follows)
    }
    // The last member: take the comma before it, if there is one.
    let prev = body.get(..start)?.iter().rposition(|b| !is_space(b))?;
    Some(if body.get(prev) == Some(&b',') { (prev, value.1) } else { (start, value.1) })
}

/// Best guess at which field a serde data error is about, for the error's `param`.
fn field_of(e: &serde_json::Error) -> &'static str {
    let msg = e.to_string();
    ["max_completion_tokens", "max_output_tokens", "max_tokens", "stream_options", "stream", "model"]
        .into_iter()
        .find(|f| msg.contains(f))
        .unwrap_or(if msg.contains("boolean") {
            "stream"
        } else if msg.contains("u64") || msg.contains("integer") {
            "max_tokens"
        } else {
            "body"
        })
}

/// Rewrites the body for the upstream: the deployment's model name, and, if `add_include_usage`,
/// `stream_options.include_usage: true` so a stream reports its usage. Returns None when the body
/// can go upstream unchanged.
pub fn rewrite_body(
    body: &[u8],
    req: &LlmRequest<'_>,
    upstream_model: &str,
    add_include_usage: bool,
) -> Option<Vec<u8>> {
    let rename = req.model != upstream_model;
    let add_usage = add_include_usage && !req.client_wants_usage;
    if !rename && !add_usage && req.gateway_param_spans.is_empty() {
        return None;
    }
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::with_capacity(2 + req.gateway_param_spans.len());
    for span in &req.gateway_param_spans {
        let Some((start, end)) = member_removal(body, *span) else {
            return rewrite_parsed(body, upstream_model, add_usage);
        };
        edits.push((start, end, Vec::new()));
    }
    if rename {
        let quoted = serde_json::to_vec(upstream_model).ok()?;
        edits.push((req.model_span.0, req.model_span.1, quoted));
    }
    if add_usage {
        match req.stream_options_span {
            // Replace the client's stream_options (which lacks include_usage: true) with ours,
            // keeping its other members as they were written (raw: a number is not re-read).
            Some((start, end)) => {
                let existing = body.get(start..end)?;
                let mut merged: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(existing).unwrap_or_default();
                merged.insert("include_usage".into(), RawValue::from_string("true".into()).ok()?);
                edits.push((start, end, serde_json::to_vec(&merged).ok()?));
            }
            None => {
                let open = body.iter().position(|b| *b == b'{')?;
                let is_empty = body.get(open + 1..)?.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
                let member: &[u8] = if is_empty {
                    br#""stream_options":{"include_usage":true}"#
                } else {
                    br#""stream_options":{"include_usage":true},"#
                };
                edits.push((open + 1, open + 1, member.to_vec()));
            }
        }
    }
    edits.sort_by_key(|e| e.0);
    if edits.windows(2).any(|w| w.first().map(|e| e.1) > w.get(1).map(|e| e.0)) {
        // Two removed members side by side at the end of the object both took one comma.
        return rewrite_parsed(body, upstream_model, add_usage);
    }
    let extra: usize = edits.iter().map(|e| e.2.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut at = 0;
    for (start, end, replacement) in edits {
        out.extend_from_slice(body.get(at..start)?);
        out.extend_from_slice(&replacement);
        at = end;
    }
    out.extend_from_slice(body.get(at..)?);
    Some(out)
}

/// The rewrite done on the parsed document: for the rare body whose gateway settings the byte
/// edits cannot take out (an escaped name, two of them side by side at the end).
fn rewrite_parsed(body: &[u8], upstream_model: &str, add_usage: bool) -> Option<Vec<u8>> {
    let mut doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    for name in GATEWAY_PARAMS {
        doc.remove(name);
    }
    doc.insert("model".into(), upstream_model.into());
    if add_usage {
        let options = doc.entry("stream_options").or_insert_with(|| serde_json::json!({}));
        if !options.is_object() {
            *options = serde_json::json!({});
        }
        if let Some(options) = options.as_object_mut() {
            options.insert("include_usage".into(), true.into());
        }
    }
    serde_json::to_vec(&doc).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn rewrite(body: &str, upstream: &str, add: bool) -> Value {
        let req = parse_request(body.as_bytes()).unwrap();
        let out = rewrite_body(body.as_bytes(), &req, upstream, add).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn reads_the_fields() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o","stream":true,"max_tokens":50}"#;
        let r = parse_request(body).unwrap();
        assert_eq!(r.model, "gpt-4o");
        assert!(r.stream && !r.client_wants_usage);
        assert_eq!(r.max_output_tokens, Some(50));
        let r = parse_request(
            br#"{"model":"m","max_tokens":5,"max_completion_tokens":9,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(r.max_output_tokens, Some(9));
        assert!(r.client_wants_usage);
    }

    #[test]
    fn escaped_model_names_decode() {
        let r = parse_request(br#"{"model":"gpt\u002d4o"}"#).unwrap();
        assert_eq!(r.model, "gpt-4o");
    }

    #[test]
    fn bad_bodies_are_clear_400s() {
        let cases: [(&[u8], &str); 10] = [
            (b"", "invalid_json"),
            (b"{", "invalid_json"),
            (b"[1,2]", "invalid_json"),
            (b"\xff\xfe", "invalid_json"),
            (b"{}", "missing_model"),
            (br#"{"model":""}"#, "missing_model"),
            (br#"{"model":42}"#, "invalid_value"),
            (br#"{"model":"m","stream":"yes"}"#, "invalid_value"),
            (br#"{"model":"m","max_tokens":-1}"#, "invalid_value"),
            (br#"{"model":"a","model":"b"}"#, "invalid_value"),
        ];
        for (body, code) in cases {
            let err = parse_request(body).unwrap_err();
            assert_eq!(err.code(), code, "{:?} -> {err:?}", String::from_utf8_lossy(body));
            assert_eq!(err.status(), 400);
        }
        let err = parse_request(br#"{"model":"m","stream":"yes"}"#).unwrap_err();
        assert!(matches!(err, GatewayError::InvalidField { param: "stream", .. }), "{err:?}");
    }

    #[test]
    fn the_gateways_own_settings_are_read_and_never_sent_upstream() {
        let cases = [
            (r#"{"model":"m","num_retries":2,"messages":[]}"#, Some(2), None),
            (r#"{"num_retries" : 0 , "model":"m","timeout":1.5}"#, Some(0), Some(1500)),
            (r#"{"model":"m","timeout":30}"#, None, Some(30_000)),
            (r#"{"model":"m","num_retries":1,"timeout":2}"#, Some(1), Some(2000)),
            (r#"{"model":"m","num_retries":null}"#, None, None),
            (r#"{"model":"m","num\u005fretries":3,"timeout":1}"#, Some(3), Some(1000)),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"\"num_retries\":1"}],"timeout":1}"#,
                None,
                Some(1000),
            ),
            // LiteLLM's other name for it; `timeout` wins when both are given.
            (r#"{"model":"m","request_timeout":4}"#, None, Some(4000)),
            (r#"{"model":"m","request_timeout":4,"timeout":2}"#, None, Some(2000)),
        ];
        for (body, retries, timeout) in cases {
            let r = parse_request(body.as_bytes()).unwrap();
            assert_eq!((r.num_retries, r.timeout_ms), (retries, timeout), "{body}");
            let out = rewrite_body(body.as_bytes(), &r, "up", false).unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{body}: {e}"));
            let expected = {
                let mut v: Value = serde_json::from_str(body).unwrap();
                let o = v.as_object_mut().unwrap();
                for param in GATEWAY_PARAMS {
                    o.remove(param);
                }
                o.insert("model".into(), json!("up"));
                v
            };
            assert_eq!(v, expected, "{body}");
        }
        for (body, param) in [
            (r#"{"model":"m","num_retries":-1}"#, "num_retries"),
            (r#"{"model":"m","num_retries":11}"#, "num_retries"),
            (r#"{"model":"m","num_retries":"2"}"#, "num_retries"),
            (r#"{"model":"m","timeout":0}"#, "timeout"),
            (r#"{"model":"m","timeout":"1s"}"#, "timeout"),
            (r#"{"model":"m","request_timeout":-3}"#, "request_timeout"),
            (r#"{"model":"m","stream_timeout":false}"#, "stream_timeout"),
        ] {
            let err = parse_request(body.as_bytes()).unwrap_err();
            assert!(matches!(err, GatewayError::InvalidField { param: p, .. } if p == param), "{body}: {err:?}");
        }
    }

    #[test]
    fn a_streams_own_timeout_is_read_and_never_sent_upstream() {
        let body = br#"{"model":"m","stream":true,"stream_timeout":2.5,"timeout":9,"messages":[]}"#;
        let r = parse_request(body).unwrap();
        assert_eq!((r.stream_timeout_ms, r.timeout_ms), (Some(2500), Some(9000)));
        let out: Value = serde_json::from_slice(&rewrite_body(body, &r, "up", false).unwrap()).unwrap();
        assert_eq!(out, json!({"model": "up", "stream": true, "messages": []}));
    }

    #[test]
    fn unchanged_when_nothing_to_do() {
        let body = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#;
        let r = parse_request(body).unwrap();
        assert_eq!(rewrite_body(body, &r, "gpt-4o", true), None);
    }

    #[test]
    fn renames_the_model_and_keeps_everything_else() {
        let body = r#"{"model":"my-alias","messages":[{"role":"user","content":"model \"x\" 🌍"}],"temperature":0.30000000000000004}"#;
        let v = rewrite(body, "gpt-4o-2024-08-06", false);
        assert_eq!(v["model"], "gpt-4o-2024-08-06");
        assert_eq!(v["messages"][0]["content"], "model \"x\" 🌍");
        assert_eq!(v["temperature"], json!(0.30000000000000004));
    }

    #[test]
    fn reads_litellms_tags_header() {
        assert_eq!(
            parse_tags_header(b" team-api, production ,,us-east-1,production"),
            Ok(vec!["team-api".to_owned(), "production".to_owned(), "us-east-1".to_owned()])
        );
        assert_eq!(parse_tags_header(b" , "), Ok(vec![]));
        let many = (0..33).map(|i| format!("t{i}")).collect::<Vec<_>>().join(",");
        let long = "x".repeat(129);
        for bad in [many.as_bytes(), long.as_bytes(), b"\xff".as_slice()] {
            assert!(matches!(parse_tags_header(bad), Err(GatewayError::InvalidField { param: TAGS_HEADER, .. })));
        }
    }

    /// OpenAI's `user` is the request's end user (recorded, sent on unchanged); a non-string
    /// or an overlong one is a 400 naming it, null or empty is none.
    #[test]
    fn reads_the_end_user() {
        let user = |body: &str| parse_request(body.as_bytes()).map(|r| r.end_user.map(|u| u.into_owned()));
        assert_eq!(user(r#"{"model":"m","user":"cust-\u00e9"}"#), Ok(Some("cust-é".into())));
        assert_eq!(user(r#"{"model":"m"}"#), Ok(None));
        assert_eq!(user(r#"{"model":"m","user":null}"#), Ok(None));
        assert_eq!(user(r#"{"model":"m","user":""}"#), Ok(None));
        for bad in [r#"{"model":"m","user":42}"#.to_owned(), format!(r#"{{"model":"m","user":"{}"}}"#, "x".repeat(257))]
        {
            assert!(matches!(user(&bad), Err(GatewayError::InvalidField { param: "user", .. })), "{bad}");
        }
        let body = r#"{"model":"m","user":"cust"}"#;
        assert_eq!(rewrite(body, "up", false)["user"], "cust", "sent upstream as it is");
    }

    /// LiteLLM's other places for the end user, after `user`, in its order; a field of another
    /// shape there is not an end user, an overlong one is a 400 naming it.
    #[test]
    fn finds_the_end_user_where_litellm_does() {
        let user = |body: &str| parse_request(body.as_bytes()).map(|r| r.end_user.map(|u| u.into_owned()));
        let all = r#"{"model":"m","user":"a","litellm_metadata":{"user":"b"},"metadata":{"user_id":"c"},"safety_identifier":"d"}"#;
        assert_eq!(user(all), Ok(Some("a".into())));
        assert_eq!(
            user(r#"{"model":"m","litellm_metadata":{"user":"b"},"metadata":{"user_id":"c"}}"#),
            Ok(Some("b".into()))
        );
        // Anthropic's metadata.user_id (Claude Code sends it).
        assert_eq!(
            user(r#"{"model":"m","metadata":{"user_id":"c","other":1},"safety_identifier":"d"}"#),
            Ok(Some("c".into()))
        );
        assert_eq!(user(r#"{"model":"m","safety_identifier":"d"}"#), Ok(Some("d".into())));
        for other in [
            r#"{"model":"m","metadata":"x"}"#,
            r#"{"model":"m","metadata":{"user_id":5}}"#,
            r#"{"model":"m","safety_identifier":1}"#,
        ] {
            assert_eq!(user(other), Ok(None), "{other}");
        }
        let long = format!(r#"{{"model":"m","metadata":{{"user_id":"{}"}}}}"#, "x".repeat(257));
        assert!(matches!(user(&long), Err(GatewayError::InvalidField { param: "metadata.user_id", .. })));
        assert_eq!(end_user_header("x-litellm-end-user-id", b" cust-9 "), Ok(Some("cust-9".into())));
        assert_eq!(end_user_header("x-litellm-end-user-id", b"  "), Ok(None));
        assert!(end_user_header("x-litellm-customer-id", &[0xff]).is_err());
        assert!(end_user_header("x-litellm-customer-id", "x".repeat(257).as_bytes()).is_err());
    }

    #[test]
    fn adds_include_usage_in_every_shape() {
        let v = rewrite(r#"{"model":"m","stream":true}"#, "m2", true);
        assert_eq!(v["stream_options"], json!({"include_usage": true}));
        assert_eq!(v["model"], "m2");
        let v = rewrite(r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#, "m", true);
        assert_eq!(v["stream_options"], json!({"include_usage": true, "x": 1}));
        let v = rewrite(r#"{"model":"m","stream_options":null}"#, "m", true);
        assert_eq!(v["stream_options"], json!({"include_usage": true}));
        let v = rewrite("  {\n \"model\" : \"m\" }", "m", true);
        assert_eq!(v, json!({"model": "m", "stream_options": {"include_usage": true}}));
    }

    /// Found by the property tests: the client's other `stream_options` members were re-parsed
    /// as `Value`s, so a float came back a bit off and a number no f64 holds dropped them all.
    #[test]
    fn include_usage_keeps_other_stream_options_byte_for_byte() {
        for members in [r#""y":-2.1342604842594043e238"#, r#""x":1e400,"z":123456789012345678901234567890"#] {
            let body = format!(r#"{{"model":"m","stream":true,"stream_options":{{{members},"include_usage":false}}}}"#);
            let req = parse_request(body.as_bytes()).unwrap();
            let out = String::from_utf8(rewrite_body(body.as_bytes(), &req, "m", true).unwrap()).unwrap();
            assert!(out.contains(members), "{out}");
            assert!(out.contains(r#""include_usage":true"#) && !out.contains("false"), "{out}");
            assert!(parse_request(out.as_bytes()).unwrap().client_wants_usage);
        }
    }
}
