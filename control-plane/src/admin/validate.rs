//! Input validation shared by the admin services: every field is checked before anything is
//! written, and the error names the field and what would be accepted.

use sluice_core::cost::usd_to_nanos;
use sluice_core::time::BudgetDuration;
use sluice_proto::admin::v1 as pb;

use super::error::{AdminError, AdminResult};
use crate::store::LimitsRecord;

/// Longest alias, id, model name, route, tag we accept; larger input is refused, not truncated.
const MAX_NAME: usize = 256;
const MAX_LIST: usize = 1000;
const MAX_METADATA_BYTES: usize = 16 * 1024;

pub fn check_name(field: &str, value: &str) -> AdminResult<()> {
    if value.is_empty() || value.len() > MAX_NAME || value.chars().any(char::is_control) {
        return Err(AdminError::InvalidArgument(format!(
            "{field} must be 1-{MAX_NAME} characters without control characters"
        )));
    }
    Ok(())
}

pub fn check_names(field: &str, values: &[String]) -> AdminResult<()> {
    if values.len() > MAX_LIST {
        return Err(AdminError::InvalidArgument(format!("{field}: at most {MAX_LIST} entries")));
    }
    values.iter().try_for_each(|v| check_name(field, v))
}

pub fn non_negative(field: &str, v: Option<i64>) -> AdminResult<Option<i64>> {
    match v {
        Some(n) if n < 0 => Err(AdminError::InvalidArgument(format!("{field} must not be negative, got {n}"))),
        other => Ok(other),
    }
}

pub fn dollars(field: &str, v: Option<f64>) -> AdminResult<Option<i64>> {
    match v {
        None => Ok(None),
        Some(d) if !d.is_finite() || d < 0.0 => {
            Err(AdminError::InvalidArgument(format!("{field} must be a non-negative number of dollars, got {d}")))
        }
        Some(d) => Ok(Some(i64::try_from(usd_to_nanos(d)).unwrap_or(i64::MAX))),
    }
}

pub fn duration_ms(field: &str, s: &str) -> AdminResult<i64> {
    let d = BudgetDuration::parse(s)
        .ok_or_else(|| AdminError::InvalidArgument(format!("{field} {s:?} is not a duration like 30s, 1h, 7d, 1mo")))?;
    let secs = match d {
        BudgetDuration::Seconds(s) => s,
        BudgetDuration::CalendarMonth => 30 * 86_400,
    };
    Ok(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
}

pub fn metadata(json: Option<&str>) -> AdminResult<serde_json::Value> {
    let Some(text) = json.filter(|t| !t.trim().is_empty()) else {
        return Ok(serde_json::json!({}));
    };
    if text.len() > MAX_METADATA_BYTES {
        return Err(AdminError::InvalidArgument(format!("metadata_json is over {MAX_METADATA_BYTES} bytes")));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        _ => Err(AdminError::InvalidArgument("metadata_json must be a JSON object".into())),
    }
}

/// A key's metadata: [`metadata`], and its `cache` (LiteLLM's key-level cache controls, which
/// the Envoys enforce) checked as the filter reads it.
pub fn key_metadata(json: Option<&str>) -> AdminResult<serde_json::Value> {
    let value = metadata(json)?;
    if let Some(map) = value.as_object() {
        sluice_core::cache::key_cache_control(map).map_err(AdminError::InvalidArgument)?;
    }
    Ok(value)
}

/// Applies a Limits message to stored limits: each present field replaces the current value.
pub fn apply_limits(l: &mut LimitsRecord, limits: &pb::Limits) -> AdminResult<()> {
    if limits.rpm_limit.is_some() {
        l.rpm_limit = non_negative("rpm_limit", limits.rpm_limit)?;
    }
    if limits.tpm_limit.is_some() {
        l.tpm_limit = non_negative("tpm_limit", limits.tpm_limit)?;
    }
    if limits.max_parallel_requests.is_some() {
        l.max_parallel_requests = non_negative("max_parallel_requests", limits.max_parallel_requests)?;
    }
    if limits.max_budget.is_some() {
        l.max_budget_nanos = dollars("max_budget", limits.max_budget)?;
    }
    if limits.soft_budget.is_some() {
        l.soft_budget_nanos = dollars("soft_budget", limits.soft_budget)?;
    }
    if let Some(d) = &limits.budget_duration {
        duration_ms("budget_duration", d)?;
        l.budget_duration = Some(d.clone());
    }
    Ok(())
}

/// Removes the named limits (`rpm_limit`, `max_budget`, …).
pub fn clear_limits(l: &mut LimitsRecord, names: &[String]) -> AdminResult<()> {
    for name in names {
        match name.as_str() {
            "rpm_limit" => l.rpm_limit = None,
            "tpm_limit" => l.tpm_limit = None,
            "max_parallel_requests" => l.max_parallel_requests = None,
            "max_budget" => l.max_budget_nanos = None,
            "soft_budget" => l.soft_budget_nanos = None,
            "budget_duration" => l.budget_duration = None,
            other => return Err(AdminError::InvalidArgument(format!("clear_limits: unknown limit {other:?}"))),
        }
    }
    Ok(())
}

pub fn usd(nanos: Option<i64>) -> Option<f64> {
    nanos.map(|n| sluice_core::cost::nanos_to_usd(u64::try_from(n).unwrap_or(0)))
}

pub fn limits_to_proto(l: &LimitsRecord) -> pb::Limits {
    pb::Limits {
        rpm_limit: l.rpm_limit,
        tpm_limit: l.tpm_limit,
        max_parallel_requests: l.max_parallel_requests,
        max_budget: usd(l.max_budget_nanos),
        soft_budget: usd(l.soft_budget_nanos),
        budget_duration: l.budget_duration.clone(),
    }
}

/// An id the caller gave (checked like any name), or a new random one.
pub fn id_or_new(field: &str, given: &str, prefix: &str) -> AdminResult<String> {
    if given.is_empty() {
        super::random_id(prefix)
    } else {
        check_name(field, given)?;
        Ok(given.to_owned())
    }
}

/// `base` with the named limits cleared, then the present fields of `set` applied.
pub fn limits_record(base: &LimitsRecord, set: Option<&pb::Limits>, clear: &[String]) -> AdminResult<LimitsRecord> {
    let mut out = base.clone();
    clear_limits(&mut out, clear)?;
    if let Some(l) = set {
        apply_limits(&mut out, l)?;
    }
    Ok(out)
}

/// A request's page token as the id to continue after (empty: the first page).
pub fn page_after(page_token: String) -> Option<String> {
    Some(page_token).filter(|t| !t.is_empty())
}

/// The next page's token: the last id of a full page, or empty after the last page.
pub fn next_page_token(last_id: Option<String>, got: usize, limit: u32) -> String {
    if got == limit as usize { last_id.unwrap_or_default() } else { String::new() }
}

/// Page size: 0 means the default; larger than the maximum is capped.
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => 50,
        n => n.min(500),
    }
}
