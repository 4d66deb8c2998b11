//! A usage record from its JSON line in Envoy's log (`sluice.usage {…}`): the filter's singleton
//! ships records this way, and `sluice usage import` replays the lines an Envoy logged but never
//! shipped (it stopped while the control plane was unreachable).

use serde_json::Value;

use crate::gateway::v1 as pb;

/// What every usage line in Envoy's log starts with, before its JSON.
pub const USAGE_LOG_PREFIX: &str = "sluice.usage ";

/// The record in one JSON line; None if it is not one (no record id or model group).
pub fn record_from_json(line: &[u8]) -> Option<pb::UsageRecord> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let outcome = match v.get("outcome").and_then(Value::as_str) {
        Some("completed") => pb::Outcome::Completed,
        Some("upstream_error") => pb::Outcome::UpstreamError,
        Some("truncated") => pb::Outcome::Truncated,
        Some("cancelled") => pb::Outcome::Cancelled,
        _ => pb::Outcome::Unspecified,
    };
    Some(pb::UsageRecord {
        request_id: text("request_id").unwrap_or_default(),
        record_id: text("record_id")?,
        key_id: text("key_id").unwrap_or_default(),
        key_alias: text("key_alias"),
        team_id: text("team_id"),
        user_id: text("user_id"),
        end_user: text("end_user"),
        model_group: text("model_group")?,
        deployment: text("deployment").unwrap_or_default(),
        upstream_model: text("upstream_model").unwrap_or_default(),
        route: text("route").unwrap_or_default(),
        status: u32::try_from(num("status")).unwrap_or(0),
        outcome: outcome.into(),
        prompt_tokens: num("prompt_tokens"),
        cached_prompt_tokens: num("cached_prompt_tokens"),
        cache_write_tokens: num("cache_write_tokens"),
        completion_tokens: num("completion_tokens"),
        reasoning_tokens: num("reasoning_tokens"),
        total_tokens: num("total_tokens"),
        cost_usd: v.get("cost_usd").and_then(Value::as_f64).unwrap_or(0.0),
        start_ms: num("start_ms"),
        latency_ms: num("latency_ms"),
        streamed: flag("streamed"),
        estimated: flag("estimated"),
        price_unknown: flag("price_unknown"),
        cache_hit: flag("cache_hit"),
        failed_attempts: attempts(&v, "failed_attempts"),
        cooled_down: attempts(&v, "cooled_down"),
        request_tags: v
            .get("request_tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
    })
}

/// A list of `{deployment, error}` (failed attempts, cooldowns).
fn attempts(v: &Value, name: &str) -> Vec<pb::FailedAttempt> {
    let list = v.get(name).and_then(Value::as_array).into_iter().flatten();
    list.map(|a| pb::FailedAttempt {
        deployment: a.get("deployment").and_then(Value::as_str).unwrap_or_default().to_owned(),
        error: a.get("error").and_then(Value::as_str).unwrap_or_default().to_owned(),
    })
    .collect()
}

/// The record a line of Envoy's log carries, wherever the prefix sits in it (Envoy puts its
/// own timestamp and context before the message).
pub fn record_from_log_line(line: &str) -> Option<pb::UsageRecord> {
    let at = line.find(USAGE_LOG_PREFIX)?;
    record_from_json(line.get(at + USAGE_LOG_PREFIX.len()..)?.trim_end().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"record_id":"r1","request_id":"q","key_id":"key_1","key_alias":"a","team_id":null,"user_id":null,"end_user":"cust-7","model_group":"gpt-4o","deployment":"d","upstream_model":"m","route":"/v1/chat/completions","status":200,"outcome":"truncated","prompt_tokens":10,"cached_prompt_tokens":2,"cache_write_tokens":0,"completion_tokens":5,"reasoning_tokens":1,"total_tokens":15,"cost_usd":0.0001,"start_ms":7,"latency_ms":3,"streamed":true,"estimated":true,"price_unknown":true,"cache_hit":true,"failed_attempts":[{"deployment":"a","error":"rate_limit"}],"cooled_down":[{"deployment":"a","error":"rate_limit"}],"request_tags":["prod","job:7"]}"#;

    #[test]
    fn a_usage_line_becomes_the_control_planes_record() {
        let r = record_from_json(LINE.as_bytes()).unwrap();
        assert_eq!((r.record_id.as_str(), r.key_id.as_str(), r.team_id.as_deref()), ("r1", "key_1", None));
        assert_eq!((r.prompt_tokens, r.completion_tokens, r.status), (10, 5, 200));
        assert_eq!(r.end_user.as_deref(), Some("cust-7"));
        assert_eq!(r.request_tags, ["prod", "job:7"]);
        assert_eq!(r.outcome, pb::Outcome::Truncated as i32);
        assert!(r.streamed && r.estimated && r.price_unknown && r.cache_hit);
        assert_eq!(r.failed_attempts, [pb::FailedAttempt { deployment: "a".into(), error: "rate_limit".into() }]);
        assert_eq!(r.cooled_down, r.failed_attempts);
        assert!(record_from_json(br#"{"model_group":"x"}"#).is_none(), "no record id, no record");
    }

    #[test]
    fn envoys_log_lines_carry_records_after_their_prefix() {
        let logged = format!(
            "[2026-12-06 02:00:00.000][42][info][wasm] [source/extensions/common/wasm/context.cc:1195] wasm log sluice_service sluice_service sluice: {USAGE_LOG_PREFIX}{LINE}\n"
        );
        assert_eq!(record_from_log_line(&logged).unwrap().record_id, "r1");
        assert!(record_from_log_line("[info] sluice: usage service started").is_none());
        assert!(record_from_log_line(&format!("{USAGE_LOG_PREFIX}{{not json")).is_none());
    }
}
