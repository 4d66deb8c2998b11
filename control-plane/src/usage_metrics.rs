//! LiteLLM's Prometheus metrics, counted from ingested usage: each spend row stored once adds to
//! `litellm_spend_metric`, the token counters and the request counters, labelled as LiteLLM
//! labels them (`hashed_api_key`, `api_key_alias`, `team`, `team_alias`, `user`, `user_email`,
//! `end_user`, `model`, `requested_model`, `model_id`), so dashboards and alerts written for
//! LiteLLM's `/metrics` read the control plane's. Replayed batches add nothing (only rows the
//! store took as new are counted), so the figures are the spend logs' own.
//!
//! Bounded: at most [`MAX_SERIES`] label sets are kept; past it a new one is added to the
//! `__overflow__` series and counted in `sluice_usage_metric_series_overflow_total`, so a flood
//! of end users or keys cannot grow the control plane's memory or a scrape without end.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Label sets kept per family (spend and tokens; requests by status and route).
pub const MAX_SERIES: usize = 10_000;
/// The label value of the series that takes what is past [`MAX_SERIES`].
const OVERFLOW: &str = "__overflow__";

/// Who spent and on what: LiteLLM's labels, in its order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    pub end_user: String,
    pub hashed_api_key: String,
    pub api_key_alias: String,
    /// The model the provider was asked for (LiteLLM's `model`).
    pub model: String,
    pub team: String,
    pub team_alias: String,
    pub user: String,
    pub user_email: String,
    /// The model group the client asked for.
    pub requested_model: String,
    /// The deployment that answered.
    pub model_id: String,
}

impl Labels {
    fn overflow() -> Labels {
        let o = || OVERFLOW.to_owned();
        Labels {
            end_user: o(),
            hashed_api_key: o(),
            api_key_alias: o(),
            model: o(),
            team: o(),
            team_alias: o(),
            user: o(),
            user_email: o(),
            requested_model: o(),
            model_id: o(),
        }
    }

    fn write(&self, out: &mut String) {
        let pairs = [
            ("end_user", &self.end_user),
            ("hashed_api_key", &self.hashed_api_key),
            ("api_key_alias", &self.api_key_alias),
            ("model", &self.model),
            ("team", &self.team),
            ("team_alias", &self.team_alias),
            ("user", &self.user),
            ("user_email", &self.user_email),
            ("requested_model", &self.requested_model),
            ("model_id", &self.model_id),
        ];
        for (i, (name, value)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{name}=\"{}\"", escape(value));
        }
    }
}

/// One spend row's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub spend_usd: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_creation_tokens: u64,
    pub reasoning_tokens: u64,
    /// The HTTP status the client saw.
    pub status: u16,
    pub route: String,
}

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    requests: u64,
    spend_usd: f64,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cache_creation_tokens: u64,
    reasoning_tokens: u64,
}

#[derive(Debug, Default)]
struct Series {
    totals: HashMap<Labels, Totals>,
    /// Requests by label set, status and route (`litellm_proxy_total_requests_metric`).
    requests: HashMap<(Labels, u16, String), u64>,
    /// Cooldowns by deployment and the failure's class (`litellm_deployment_cooled_down`).
    cooled_down: HashMap<DeploymentLabels, u64>,
}

/// A deployment as LiteLLM labels its deployment metrics, and the failure that cooled it down.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DeploymentLabels {
    /// `litellm_params.model` (`openai/gpt-4o`).
    pub litellm_model_name: String,
    /// `model_info.id`.
    pub model_id: String,
    pub api_base: String,
    /// The provider prefix of the model (`openai`).
    pub api_provider: String,
    /// The failure's class as the usage record names it (`rate_limit`, `server_error`, …): a
    /// request's record keeps the class of its failed attempts, not their status (LiteLLM's
    /// label holds the status).
    pub exception_status: String,
}

impl DeploymentLabels {
    fn overflow() -> DeploymentLabels {
        let o = || OVERFLOW.to_owned();
        DeploymentLabels {
            litellm_model_name: o(),
            model_id: o(),
            api_base: o(),
            api_provider: o(),
            exception_status: o(),
        }
    }
}

/// Whose budget a gauge shows, with the labels LiteLLM gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BudgetOwner {
    Key { hashed_api_key: String, api_key_alias: String },
    Team { team: String, team_alias: String },
    User { user: String },
    Org { org_id: String },
    Customer { end_user: String },
}

impl BudgetOwner {
    /// The part of LiteLLM's gauge names for each kind of owner, and how its help text names it.
    const KINDS: [(&'static str, &'static str); 5] = [
        ("api_key", "key"),
        ("team", "team"),
        ("user", "user"),
        ("org", "organization"),
        ("customer", "end user (customer)"),
    ];

    fn kind(&self) -> &'static str {
        match self {
            BudgetOwner::Key { .. } => "api_key",
            BudgetOwner::Team { .. } => "team",
            BudgetOwner::User { .. } => "user",
            BudgetOwner::Org { .. } => "org",
            BudgetOwner::Customer { .. } => "customer",
        }
    }

    /// Its labels as LiteLLM names them.
    fn labels(&self) -> String {
        match self {
            BudgetOwner::Key { hashed_api_key, api_key_alias } => {
                format!("hashed_api_key=\"{}\",api_key_alias=\"{}\"", escape(hashed_api_key), escape(api_key_alias))
            }
            BudgetOwner::Team { team, team_alias } => {
                format!("team=\"{}\",team_alias=\"{}\"", escape(team), escape(team_alias))
            }
            BudgetOwner::User { user } => format!("user=\"{}\"", escape(user)),
            BudgetOwner::Org { org_id } => format!("org_id=\"{}\",org_alias=\"\"", escape(org_id)),
            BudgetOwner::Customer { end_user } => format!("end_user=\"{}\"", escape(end_user)),
        }
    }
}

/// A budget's standing after the last spend counted against it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetStanding {
    pub max_usd: f64,
    pub spend_usd: f64,
    /// When the window resets (none: a budget without a duration).
    pub resets_at_ms: Option<i64>,
}

#[derive(Debug, Default)]
pub struct UsageMetrics {
    series: Mutex<Series>,
    /// LiteLLM's budget gauges, by owner (bounded like the series).
    budgets: Mutex<HashMap<BudgetOwner, BudgetStanding>>,
    overflowed: AtomicU64,
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `key`'s entry in `map`, or the overflow entry once the map holds `MAX_SERIES` others.
fn bounded<'a, K: std::hash::Hash + Eq, V: Default>(
    map: &'a mut HashMap<K, V>,
    key: K,
    overflow: impl FnOnce() -> K,
    overflowed: &AtomicU64,
) -> &'a mut V {
    if map.len() >= MAX_SERIES && !map.contains_key(&key) {
        overflowed.fetch_add(1, Ordering::Relaxed);
        return map.entry(overflow()).or_default();
    }
    map.entry(key).or_default()
}

impl UsageMetrics {
    /// Counts one spend row (call once per row the store took as new).
    pub fn record(&self, labels: Labels, usage: &Usage) {
        let Ok(mut series) = self.series.lock() else { return };
        let series = &mut *series;
        let totals = bounded(&mut series.totals, labels.clone(), Labels::overflow, &self.overflowed);
        totals.requests += 1;
        totals.spend_usd += usage.spend_usd;
        totals.input_tokens += usage.input_tokens;
        totals.output_tokens += usage.output_tokens;
        totals.cached_input_tokens += usage.cached_input_tokens;
        totals.cache_creation_tokens += usage.cache_creation_tokens;
        totals.reasoning_tokens += usage.reasoning_tokens;
        let key = (labels, usage.status, usage.route.clone());
        let overflow = || (Labels::overflow(), 0, OVERFLOW.to_owned());
        *bounded(&mut series.requests, key, overflow, &self.overflowed) += 1;
    }

    /// Counts a deployment's cooldown, which a stored spend row reported (once per new row).
    pub fn cooled_down(&self, labels: DeploymentLabels) {
        let Ok(mut series) = self.series.lock() else { return };
        *bounded(&mut series.cooled_down, labels, DeploymentLabels::overflow, &self.overflowed) += 1;
    }

    /// Sets a budget's gauges (called when spend was counted against it). A new owner past
    /// [`MAX_SERIES`] is not shown (counted as overflow): a gauge cannot be summed into another.
    pub fn budget(&self, owner: BudgetOwner, standing: BudgetStanding) {
        let Ok(mut budgets) = self.budgets.lock() else { return };
        if budgets.len() >= MAX_SERIES && !budgets.contains_key(&owner) {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        budgets.insert(owner, standing);
    }

    /// LiteLLM's budget gauges: remaining, max, and hours until the window resets, per owner kind.
    fn render_budgets(&self, out: &mut String, now_ms: i64) {
        let Ok(budgets) = self.budgets.lock() else { return };
        for (kind, whose) in BudgetOwner::KINDS {
            let rows: Vec<(String, &BudgetStanding)> =
                budgets.iter().filter(|(o, _)| o.kind() == kind).map(|(o, s)| (o.labels(), s)).collect();
            let remaining = |s: &BudgetStanding| Some(s.max_usd - s.spend_usd);
            let max = |s: &BudgetStanding| Some(s.max_usd);
            let hours = |s: &BudgetStanding| s.resets_at_ms.map(|end| (end - now_ms).max(0) as f64 / 3_600_000.0);
            let mut family = |name: String, help: String, value: &dyn Fn(&BudgetStanding) -> Option<f64>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for (labels, standing) in &rows {
                    if let Some(v) = value(standing) {
                        let _ = writeln!(out, "{name}{{{labels}}} {v}");
                    }
                }
            };
            family(
                format!("litellm_remaining_{kind}_budget_metric"),
                format!("Remaining budget of the {whose} in its window (USD)."),
                &remaining,
            );
            family(format!("litellm_{kind}_max_budget_metric"), format!("Max budget of the {whose} (USD)."), &max);
            family(
                format!("litellm_{kind}_budget_remaining_hours_metric"),
                format!("Hours until the {whose}'s budget window resets."),
                &hours,
            );
        }
    }

    /// The families in Prometheus' text format, appended to `out`.
    pub fn render(&self, out: &mut String) {
        self.render_budgets(out, crate::store::now_ms());
        let Ok(series) = self.series.lock() else { return };
        let mut family = |name: &str, help: &str, value: &dyn Fn(&Totals) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, totals) in &series.totals {
                out.push_str(name);
                out.push('{');
                labels.write(out);
                let _ = writeln!(out, "}} {}", value(totals));
            }
        };
        let count = |f: fn(&Totals) -> u64| move |t: &Totals| f(t).to_string();
        family("litellm_spend_metric_total", "Spend in USD (LiteLLM's metric).", &|t| format!("{}", t.spend_usd));
        family(
            "litellm_requests_metric_total",
            "Requests that reached a provider (LiteLLM's deprecated name; see litellm_proxy_total_requests_metric).",
            &count(|t| t.requests),
        );
        family(
            "litellm_total_tokens_metric_total",
            "Input and output tokens.",
            &count(|t| t.input_tokens + t.output_tokens),
        );
        family("litellm_input_tokens_metric_total", "Input tokens, cached ones included.", &count(|t| t.input_tokens));
        family("litellm_output_tokens_metric_total", "Output tokens.", &count(|t| t.output_tokens));
        family(
            "litellm_input_cached_tokens_metric_total",
            "Input tokens read from the provider's prompt cache.",
            &count(|t| t.cached_input_tokens),
        );
        family(
            "litellm_input_cache_creation_tokens_metric_total",
            "Input tokens written to the provider's prompt cache.",
            &count(|t| t.cache_creation_tokens),
        );
        family(
            "litellm_output_reasoning_tokens_metric_total",
            "Output tokens spent reasoning.",
            &count(|t| t.reasoning_tokens),
        );
        let mut requests = |name: &str, help: &str, failed: bool| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((labels, status, route), n) in &series.requests {
                if failed && *status < 400 {
                    continue;
                }
                out.push_str(name);
                out.push('{');
                labels.write(out);
                if failed {
                    let _ =
                        writeln!(out, ",exception_status=\"{status}\",exception_class=\"{}\"}} {n}", class_of(*status));
                } else {
                    let _ = writeln!(out, ",status_code=\"{status}\",route=\"{}\"}} {n}", escape(route));
                }
            }
        };
        requests("litellm_proxy_total_requests_metric_total", "Requests, by the status the client saw.", false);
        requests(
            "litellm_proxy_failed_requests_metric_total",
            "Requests that reached a provider and failed, by status.",
            true,
        );
        let name = "litellm_deployment_cooled_down_total";
        let _ = writeln!(
            out,
            "# HELP {name} Times a deployment was taken out of rotation (cooldown) by an Envoy, fleet-wide.\n# TYPE {name} counter"
        );
        for (l, n) in &series.cooled_down {
            let _ = writeln!(
                out,
                "{name}{{litellm_model_name=\"{}\",model_id=\"{}\",api_base=\"{}\",api_provider=\"{}\",exception_status=\"{}\"}} {n}",
                escape(&l.litellm_model_name),
                escape(&l.model_id),
                escape(&l.api_base),
                escape(&l.api_provider),
                escape(&l.exception_status)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_usage_metric_series_overflow_total Spend rows counted in the __overflow__ series (over {MAX_SERIES} label sets).\n# TYPE sluice_usage_metric_series_overflow_total counter\nsluice_usage_metric_series_overflow_total {}",
            self.overflowed.load(Ordering::Relaxed)
        );
    }
}

/// LiteLLM's exception class for a provider's status.
fn class_of(status: u16) -> &'static str {
    match status {
        400 => "BadRequestError",
        401 => "AuthenticationError",
        403 => "PermissionDeniedError",
        404 => "NotFoundError",
        408 => "Timeout",
        422 => "UnprocessableEntityError",
        429 => "RateLimitError",
        503 => "ServiceUnavailableError",
        500..=599 => "InternalServerError",
        _ => "APIError",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn labels(key: &str, alias: &str) -> Labels {
        Labels {
            hashed_api_key: key.into(),
            api_key_alias: alias.into(),
            model: "gpt-4o-2024-08-06".into(),
            team: "platform".into(),
            requested_model: "gpt-4o".into(),
            model_id: "gpt-4o-a".into(),
            ..Labels::default()
        }
    }

    fn usage(spend: f64, status: u16) -> Usage {
        Usage {
            spend_usd: spend,
            input_tokens: 10,
            output_tokens: 5,
            cached_input_tokens: 2,
            status,
            route: "/v1/chat/completions".into(),
            ..Usage::default()
        }
    }

    fn sample(text: &str, name: &str, contains: &str) -> Option<f64> {
        text.lines().find(|l| l.starts_with(name) && l.contains(contains))?.rsplit(' ').next()?.parse().ok()
    }

    #[test]
    fn cooldowns_are_counted_per_deployment_and_failure_class() {
        let m = UsageMetrics::default();
        let cooled = |id: &str, class: &str| DeploymentLabels {
            litellm_model_name: "openai/gpt-4o".into(),
            model_id: id.into(),
            api_base: "https://api.openai.com/v1".into(),
            api_provider: "openai".into(),
            exception_status: class.into(),
        };
        m.cooled_down(cooled("a", "rate_limit"));
        m.cooled_down(cooled("a", "rate_limit"));
        m.cooled_down(cooled("b", "server_error"));
        let mut text = String::new();
        m.render(&mut text);
        let name = "litellm_deployment_cooled_down_total";
        assert_eq!(sample(&text, name, r#"model_id="a""#), Some(2.0));
        assert_eq!(
            sample(
                &text,
                name,
                r#"model_id="b",api_base="https://api.openai.com/v1",api_provider="openai",exception_status="server_error""#
            ),
            Some(1.0)
        );
        assert!(text.contains("# TYPE litellm_deployment_cooled_down_total counter"));
    }

    #[test]
    fn rows_add_up_per_label_set_under_litellms_names() {
        let m = UsageMetrics::default();
        m.record(labels("k1", "svc"), &usage(0.25, 200));
        m.record(labels("k1", "svc"), &usage(0.5, 200));
        m.record(labels("k1", "svc"), &usage(0.0, 429));
        m.record(labels("k2", "quote\"d"), &usage(1.0, 200));
        let mut text = String::new();
        m.render(&mut text);
        assert_eq!(sample(&text, "litellm_spend_metric_total", "api_key_alias=\"svc\""), Some(0.75));
        assert_eq!(sample(&text, "litellm_total_tokens_metric_total", "\"svc\""), Some(45.0));
        assert_eq!(sample(&text, "litellm_input_cached_tokens_metric_total", "\"svc\""), Some(6.0));
        let ok_svc = text
            .lines()
            .find(|l| {
                l.starts_with("litellm_proxy_total_requests_metric_total")
                    && l.contains("\"svc\"")
                    && l.contains("status_code=\"200\"")
            })
            .unwrap();
        assert!(ok_svc.ends_with(" 2"), "{ok_svc}");
        let failed = text.lines().find(|l| l.starts_with("litellm_proxy_failed_requests_metric_total")).unwrap();
        assert!(
            failed.contains("exception_status=\"429\",exception_class=\"RateLimitError\"") && failed.ends_with(" 1")
        );
        // Label values are escaped; every sample line parses as name{labels} value.
        assert!(text.contains("api_key_alias=\"quote\\\"d\""));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn budgets_show_as_litellms_gauges() {
        let m = UsageMetrics::default();
        let now = crate::store::now_ms();
        let key = BudgetOwner::Key { hashed_api_key: "k1".into(), api_key_alias: "svc".into() };
        m.budget(key.clone(), BudgetStanding { max_usd: 10.0, spend_usd: 2.5, resets_at_ms: Some(now + 7_200_000) });
        m.budget(key, BudgetStanding { max_usd: 10.0, spend_usd: 4.0, resets_at_ms: Some(now + 7_200_000) });
        m.budget(
            BudgetOwner::Team { team: "t1".into(), team_alias: "Platform".into() },
            BudgetStanding { max_usd: 100.0, spend_usd: 1.0, resets_at_ms: None },
        );
        let mut text = String::new();
        m.render(&mut text);
        assert_eq!(sample(&text, "litellm_remaining_api_key_budget_metric", "api_key_alias=\"svc\""), Some(6.0));
        assert_eq!(sample(&text, "litellm_api_key_max_budget_metric", "hashed_api_key=\"k1\""), Some(10.0));
        let hours = sample(&text, "litellm_api_key_budget_remaining_hours_metric", "\"k1\"").unwrap();
        assert!((1.99..=2.0).contains(&hours), "{hours}");
        assert_eq!(sample(&text, "litellm_remaining_team_budget_metric", "team_alias=\"Platform\""), Some(99.0));
        assert_eq!(sample(&text, "litellm_team_budget_remaining_hours_metric", "t1"), None, "no window, no reset");
        assert!(text.contains("# TYPE litellm_remaining_customer_budget_metric gauge"));
    }

    #[test]
    fn label_sets_are_bounded_and_the_overflow_is_counted() {
        let m = UsageMetrics::default();
        for i in 0..MAX_SERIES + 5 {
            m.record(labels(&format!("k{i}"), "a"), &usage(1.0, 200));
        }
        // A label set seen before the bound still counts in its own series.
        m.record(labels("k0", "a"), &usage(1.0, 200));
        let mut text = String::new();
        m.render(&mut text);
        assert_eq!(sample(&text, "litellm_spend_metric_total", "hashed_api_key=\"__overflow__\""), Some(5.0));
        assert_eq!(sample(&text, "litellm_spend_metric_total", "hashed_api_key=\"k0\","), Some(2.0));
        assert_eq!(sample(&text, "sluice_usage_metric_series_overflow_total", ""), Some(10.0), "5 rows × 2 families");
        let spend_lines = text.lines().filter(|l| l.starts_with("litellm_spend_metric_total{")).count();
        assert_eq!(spend_lines, MAX_SERIES + 1);
    }
}
