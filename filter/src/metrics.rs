//! What the request path counts without a host call: each request adds to a pending count here,
//! and a tick reports the counts to Envoy's counters in one batch (the wasm build: each worker
//! VM's tick; the native build: the main thread's, for every worker at once). A counter host
//! call per request and metric was a measurable share of the hot path (BENCHMARKS.md).
//!
//! The counts are atomics so that the native build's workers can share one set per config
//! (the main thread drains it); in wasm, single-threaded, they cost what a plain add does.

use std::sync::atomic::{AtomicU64, Ordering};

use sluice_core::attempts::AttemptError;
use sluice_core::config::CompiledConfig;
use sluice_core::error::GatewayError;

/// A metric the flow counts per model group.
#[derive(Debug, Clone, Copy)]
pub enum GroupMetric {
    Requests = 0,
    PromptTokens,
    CompletionTokens,
    CostNanos,
    /// Usage estimated because the provider's never arrived.
    Estimated,
    /// Requests to a deployment with no known price.
    Unpriced,
    /// Parameters a translation left out under `drop_params` (LiteLLM's), summed over requests.
    DroppedParams,
}

const GROUP_METRICS: [&str; 7] = [
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cost_nanodollars",
    "estimated_usage",
    "unpriced_requests",
    "dropped_params",
];

/// The fleet-independent counters before the per-group ones.
const KEY_CACHE_HITS: usize = 0;
const LOOKUPS_REFUSED: usize = 1;
const HEALTH_PROBES: usize = 2;
const FAILOVERS: usize = 3;
const RESPONSE_CACHE_HITS: usize = 4;
const RESPONSE_CACHE_MISSES: usize = 5;
const FIXED: [&str; 6] = [
    "sluice.key_cache.hits",
    "sluice.key_lookups_refused",
    "sluice.health_probes",
    "sluice.failovers",
    "sluice.response_cache.hits",
    "sluice.response_cache.misses",
];

/// The pending counts of one config's metrics, by index, with their names.
pub struct Metrics {
    names: Vec<String>,
    pending: Vec<AtomicU64>,
    /// Index of the first rejection counter (one per `GatewayError::CODES`, in that order).
    rejections: usize,
    /// Index of the first per-group counter.
    groups: usize,
    /// Index of the first failed-attempt counter (one per deployment and [`AttemptError`]).
    failed_attempts: usize,
}

/// A name part for Envoy's stats: `.` separates tags, and group names and deployment ids often
/// hold one.
fn stat_part(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

impl Metrics {
    pub fn new(config: &CompiledConfig) -> Metrics {
        let mut names: Vec<String> = FIXED.iter().map(|n| (*n).to_owned()).collect();
        let rejections = names.len();
        names.extend(GatewayError::CODES.iter().map(|code| format!("sluice.rejections.reason.{code}")));
        let groups = names.len();
        for group in &config.groups {
            let part = stat_part(&group.name);
            names.extend(GROUP_METRICS.iter().map(|metric| format!("sluice.{metric}.model_group.{part}")));
        }
        let failed_attempts = names.len();
        for deployment in &config.config.deployments {
            let part = stat_part(&deployment.id);
            names.extend(
                AttemptError::ALL
                    .iter()
                    .map(|e| format!("sluice.failed_attempts.deployment.{part}.error.{}", e.as_str())),
            );
        }
        let pending = names.iter().map(|_| AtomicU64::new(0)).collect();
        Metrics { names, pending, rejections, groups, failed_attempts }
    }

    fn add(&self, index: usize, delta: u64) {
        if delta > 0
            && let Some(count) = self.pending.get(index)
        {
            count.fetch_add(delta, Ordering::Relaxed);
        }
    }

    pub fn key_cache_hit(&self) {
        self.add(KEY_CACHE_HITS, 1);
    }

    pub fn lookup_refused(&self) {
        self.add(LOOKUPS_REFUSED, 1);
    }

    /// A deployment's health probe sent (each is a billed provider call the gateway made).
    pub fn health_probe(&self) {
        self.add(HEALTH_PROBES, 1);
    }

    /// A pass of a request with fallbacks failed and went on to the plan's next step.
    pub fn failover(&self) {
        self.add(FAILOVERS, 1);
    }

    /// A request the response cache applied to: answered from it, or not.
    pub fn cache(&self, hit: bool) {
        self.add(if hit { RESPONSE_CACHE_HITS } else { RESPONSE_CACHE_MISSES }, 1);
    }

    pub fn rejection(&self, error: &GatewayError) {
        if let Some(position) = GatewayError::CODES.iter().position(|c| *c == error.code()) {
            self.add(self.rejections + position, 1);
        }
    }

    /// `group` is an index into `config.groups`.
    pub fn group(&self, group: usize, metric: GroupMetric, delta: u64) {
        self.add(self.groups + group * GROUP_METRICS.len() + metric as usize, delta);
    }

    /// A failed attempt at `deployment` (an index into the config's deployments).
    pub fn failed_attempt(&self, deployment: usize, error: AttemptError) {
        self.add(self.failed_attempts + deployment * AttemptError::ALL.len() + error.index(), 1);
    }

    /// Every name, for a binding that defines its counters up front.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Takes every pending count, reporting each that is not zero.
    pub fn drain(&self, mut report: impl FnMut(&str, u64)) {
        for (name, count) in self.names.iter().zip(&self.pending) {
            let delta = count.swap(0, Ordering::Relaxed);
            if delta > 0 {
                report(name, delta);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config() -> CompiledConfig {
        CompiledConfig::compile(crate::tests::base_config()).unwrap()
    }

    fn group(config: &CompiledConfig, name: &str) -> usize {
        config.groups.iter().position(|g| g.name == name).unwrap()
    }

    fn drained(metrics: &Metrics) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        metrics.drain(|name, delta| out.push((name.to_owned(), delta)));
        out
    }

    #[test]
    fn counts_are_reported_once_under_their_names() {
        let config = config();
        let metrics = Metrics::new(&config);
        let (claude, gpt) = (group(&config, "claude-3-5-sonnet"), group(&config, "gpt-4o"));
        metrics.group(claude, GroupMetric::Requests, 1);
        metrics.group(claude, GroupMetric::Requests, 1);
        metrics.group(gpt, GroupMetric::CostNanos, 25);
        metrics.group(gpt, GroupMetric::Estimated, 0);
        metrics.key_cache_hit();
        metrics.rejection(&GatewayError::MissingKey);
        let mut reported = drained(&metrics);
        reported.sort();
        assert_eq!(
            reported,
            [
                ("sluice.cost_nanodollars.model_group.gpt-4o".to_owned(), 25),
                ("sluice.key_cache.hits".to_owned(), 1),
                ("sluice.rejections.reason.missing_api_key".to_owned(), 1),
                ("sluice.requests.model_group.claude-3-5-sonnet".to_owned(), 2),
            ]
        );
        assert!(drained(&metrics).is_empty(), "a count is reported once");
    }

    #[test]
    fn every_rejection_code_group_metric_and_failed_attempt_class_has_a_name() {
        let metrics = Metrics::new(&config());
        let names: Vec<&str> = metrics.names().collect();
        for code in GatewayError::CODES {
            assert!(names.contains(&format!("sluice.rejections.reason.{code}").as_str()));
        }
        // Three groups, three deployments.
        let failed = 3 * AttemptError::ALL.len();
        assert_eq!(names.len(), FIXED.len() + GatewayError::CODES.len() + 3 * GROUP_METRICS.len() + failed);
        assert!(names.contains(&"sluice.unpriced_requests.model_group.gpt-4o-mini"));
        // A failed attempt is counted under its deployment and class, the last one included.
        metrics.failed_attempt(2, AttemptError::Retried);
        assert_eq!(drained(&metrics), [("sluice.failed_attempts.deployment.mini.error.retried".to_owned(), 1)]);
    }
}
