//! End users (LiteLLM's customers): the users of a platform's own product, named per request
//! (`request::END_USER_HEADERS`, the body's `user`, …). A customer with rules is refused when
//! blocked, counted against its RPM, TPM and parallel limits and its budget on each Envoy like a
//! key, and refused everywhere once the control plane finds its budget spent across the fleet
//! (`budget_spent`). An end user without an entry is free, as in LiteLLM, unless
//! `litellm_settings.max_end_user_budget` gives each such end user that budget.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, check_budget};
use crate::cost::usd_to_nanos;
use crate::limits::ScopeLimits;
use crate::request::MAX_END_USER_BYTES;
use crate::time::BudgetDuration;

/// A customer's rules, as a standalone config declares them (`customers:`) and as the control
/// plane sends them (its own limits, else those of the budget it refers to).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CustomerConfig {
    pub customer_id: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_requests: Option<u64>,
    /// USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_duration: Option<BudgetDuration>,
    /// xDS mode: the control plane found `max_budget` spent across the fleet in the current
    /// window. It says so when it is (and again when the window ends), not at every request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub budget_spent: bool,
}

/// A customer as the request path checks it.
#[derive(Debug, Clone)]
pub struct CompiledCustomer {
    pub blocked: bool,
    pub limits: ScopeLimits,
    pub budget_spent: bool,
    /// Shared-data name of the customer's counters.
    pub counter_name: String,
}

/// The shared-data counter of a customer.
pub fn customer_counter_name(customer_id: &str) -> String {
    format!("sluice:c:{customer_id}")
}

/// The configured customers by id, and the budget of every other end user.
#[derive(Debug, Clone, Default)]
pub struct Customers {
    by_id: HashMap<String, CompiledCustomer>,
    /// `litellm_settings.max_end_user_budget`: an end user without an entry may spend this
    /// (nano-dollars, one window for ever, as in LiteLLM).
    default_budget_nanos: Option<u64>,
}

impl Customers {
    /// Validates and indexes `list`, with `end_user_max_budget` (USD) for everyone else; every
    /// problem is added to `errors`.
    pub fn compile(
        list: &[CustomerConfig],
        end_user_max_budget: Option<f64>,
        lease_ms: u64,
        errors: &mut Vec<ConfigError>,
    ) -> Self {
        check_budget("litellm_settings.max_end_user_budget", end_user_max_budget, errors);
        let mut by_id = HashMap::with_capacity(list.len());
        for c in list {
            let what = format!("customer {:?}", c.customer_id);
            // The ids a request can name: what `request::checked_end_user` lets through.
            if c.customer_id.is_empty()
                || c.customer_id.len() > MAX_END_USER_BYTES
                || c.customer_id.trim() != c.customer_id
            {
                errors.push(ConfigError(format!(
                    "{what}: customer_id must be 1-{MAX_END_USER_BYTES} bytes without surrounding spaces"
                )));
                continue;
            }
            check_budget(&what, c.max_budget, errors);
            let compiled = CompiledCustomer {
                blocked: c.blocked,
                limits: ScopeLimits::new(c.rpm_limit, c.tpm_limit, c.max_budget.map(usd_to_nanos), c.budget_duration)
                    .with_parallel(c.max_parallel_requests, lease_ms),
                budget_spent: c.budget_spent,
                counter_name: customer_counter_name(&c.customer_id),
            };
            if by_id.insert(c.customer_id.clone(), compiled).is_some() {
                errors.push(ConfigError(format!("{what}: duplicate customer_id")));
            }
        }
        Self { by_id, default_budget_nanos: end_user_max_budget.map(usd_to_nanos) }
    }

    /// The rules an end user is held to: its entry's, else the default budget's (None: free).
    pub fn get(&self, customer_id: &str) -> Option<Cow<'_, CompiledCustomer>> {
        if let Some(listed) = self.by_id.get(customer_id) {
            return Some(Cow::Borrowed(listed));
        }
        let budget = self.default_budget_nanos?;
        Some(Cow::Owned(CompiledCustomer {
            blocked: false,
            limits: ScopeLimits::new(None, None, Some(budget), None),
            budget_spent: false,
            counter_name: customer_counter_name(customer_id),
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The counters of the customers that have a limit.
    pub fn counter_names(&self) -> impl Iterator<Item = &str> {
        self.by_id.values().filter(|c| !c.limits.is_unlimited()).map(|c| c.counter_name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(list: &[CustomerConfig]) -> Result<Customers, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let customers = Customers::compile(list, None, 1000, &mut errors);
        if errors.is_empty() { Ok(customers) } else { Err(errors) }
    }

    #[test]
    fn compiles_rules_and_finds_customers_by_id() {
        let list = [
            CustomerConfig {
                customer_id: "ada".into(),
                rpm_limit: Some(2),
                max_budget: Some(0.5),
                ..Default::default()
            },
            CustomerConfig { customer_id: "bob".into(), blocked: true, ..Default::default() },
        ];
        let customers = compile(&list).unwrap();
        let ada = customers.get("ada").unwrap();
        assert_eq!(ada.limits.rpm, Some(2));
        assert_eq!(ada.limits.max_budget_nanos, Some(500_000_000));
        assert!(customers.get("bob").unwrap().blocked);
        assert!(customers.get("eve").is_none());
        // Only a customer with a limit needs a counter.
        assert_eq!(customers.counter_names().collect::<Vec<_>>(), ["sluice:c:ada"]);
    }

    #[test]
    fn an_end_user_without_an_entry_gets_the_default_budget_if_there_is_one() {
        let list = [CustomerConfig { customer_id: "ada".into(), rpm_limit: Some(2), ..Default::default() }];
        let mut errors = Vec::new();
        let customers = Customers::compile(&list, Some(0.25), 1000, &mut errors);
        assert!(errors.is_empty());
        let eve = customers.get("eve").unwrap();
        assert_eq!((eve.limits.max_budget_nanos, eve.counter_name.as_str()), (Some(250_000_000), "sluice:c:eve"));
        // A customer with an entry keeps its own rules only (as LiteLLM: the default is for end
        // users without a budget of their own).
        assert_eq!(customers.get("ada").unwrap().limits.max_budget_nanos, None);
        Customers::compile(&[], Some(-1.0), 1000, &mut errors);
        assert!(errors[0].0.contains("max_end_user_budget"));
    }

    #[test]
    fn refuses_ids_no_request_can_name_and_bad_budgets() {
        for (customer_id, max_budget, expected) in [
            ("", None, "customer_id must be"),
            (" ada", None, "customer_id must be"),
            ("ada", Some(-1.0), "max_budget must be a non-negative number"),
        ] {
            let c = CustomerConfig { customer_id: customer_id.into(), max_budget, ..Default::default() };
            let errors = compile(&[c]).unwrap_err();
            assert!(errors[0].0.contains(expected), "{errors:?}");
        }
        let long = CustomerConfig { customer_id: "x".repeat(MAX_END_USER_BYTES + 1), ..Default::default() };
        assert!(compile(&[long]).is_err());
        let twice = CustomerConfig { customer_id: "ada".into(), ..Default::default() };
        assert!(compile(&[twice.clone(), twice]).unwrap_err()[0].0.contains("duplicate"));
    }

    #[test]
    fn reads_the_fields_litellm_customers_have() {
        let c: CustomerConfig = serde_json::from_str(
            r#"{"customer_id":"ada","blocked":true,"rpm_limit":1,"tpm_limit":2,"max_parallel_requests":3,
                "max_budget":4.5,"budget_duration":"30d","budget_spent":true}"#,
        )
        .unwrap();
        assert!(c.blocked && c.budget_spent);
        assert_eq!(c.budget_duration, BudgetDuration::parse("30d"));
        assert!(serde_json::from_str::<CustomerConfig>(r#"{"customer_id":"a","models":["x"]}"#).is_err());
    }
}
