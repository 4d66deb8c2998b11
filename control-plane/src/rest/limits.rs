//! The limits LiteLLM's bodies carry at their top level (keys, users, organizations, budgets,
//! customers), under its names, as the services' `Limits`.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_proto::admin::v1 as pb;

/// Each limit's name: a body that sets one to null lifts it (LiteLLM's way, on an update).
pub const LIMIT_NAMES: [&str; 6] =
    ["max_budget", "soft_budget", "budget_duration", "tpm_limit", "rpm_limit", "max_parallel_requests"];

/// The limit fields of a body (flattened into it).
#[derive(Debug, Default, Deserialize)]
pub struct LimitFields {
    pub max_budget: Option<f64>,
    pub soft_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub tpm_limit: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub max_parallel_requests: Option<i64>,
}

impl LimitFields {
    pub fn limits(&self) -> pb::Limits {
        pb::Limits {
            rpm_limit: self.rpm_limit,
            tpm_limit: self.tpm_limit,
            max_parallel_requests: self.max_parallel_requests,
            max_budget: self.max_budget,
            soft_budget: self.soft_budget,
            budget_duration: self.budget_duration.clone(),
        }
    }
}

/// The limits a body sets to null: to remove.
pub fn cleared_limits(body: &Value) -> Vec<String> {
    LIMIT_NAMES.into_iter().filter(|name| body.get(*name).is_some_and(Value::is_null)).map(str::to_owned).collect()
}

/// Limits under LiteLLM's names (absent ones as null, as LiteLLM shows them).
pub fn limits_json(limits: Option<&pb::Limits>) -> Map<String, Value> {
    let l = limits.cloned().unwrap_or_default();
    let mut out = Map::new();
    out.insert("max_budget".into(), json!(l.max_budget));
    out.insert("soft_budget".into(), json!(l.soft_budget));
    out.insert("budget_duration".into(), json!(l.budget_duration));
    out.insert("budget_reset_at".into(), json!(crate::budget::budget_reset_at(l.budget_duration.as_deref())));
    out.insert("tpm_limit".into(), json!(l.tpm_limit));
    out.insert("rpm_limit".into(), json!(l.rpm_limit));
    out.insert("max_parallel_requests".into(), json!(l.max_parallel_requests));
    out
}

/// The same, into `out` (a budget row, a customer).
pub fn insert_limits(out: &mut Map<String, Value>, limits: Option<&pb::Limits>) {
    out.extend(limits_json(limits));
}
