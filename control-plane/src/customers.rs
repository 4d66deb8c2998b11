//! Customers (LiteLLM's end users) on Envoy's request path. A request names its end user
//! (`x-litellm-customer-id`, the body's `user`, …) and the filter holds it to that customer's
//! rules, which every Envoy receives in its filter config (`GatewayConfig::customers`, rebuilt
//! with the xDS snapshot on every customer or budget change and every few seconds): blocked,
//! RPM, TPM and parallel limits counted by each Envoy, and the budget, reserved and settled by
//! each Envoy like a key's and counted across the fleet here, from the usage Envoys ship
//! (`budget_windows`, kind `customer`). When a batch takes a customer to its `max_budget`, the
//! snapshot is rebuilt at once with `budget_spent`, and every Envoy refuses it until its window
//! ends. A key's budget reaches Envoys with its lookup instead; a customer has no lookup
//! (it is named per request, after the key was checked), hence the config.
//!
//! A customer's limits are its own, each one it does not set taken from the budget it refers
//! to (LiteLLM keeps them only in the budget; Sluice's customers may carry either).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::cost::nanos_to_usd;
use sluice_core::customers::CustomerConfig;
use sluice_core::time::BudgetDuration;

use crate::budget::BudgetLimits;
use crate::store::{BudgetRecord, CustomerRecord, Entity, LimitsRecord, ListFilter, ScopeKind, Store, StoreResult};

/// Directory rows read per query when every customer is read.
const PAGE: u32 = 1000;
/// How long ingestion trusts the customers' budgets it read (a change reaches the count
/// within this; the filter config carries it to Envoys at once).
const BUDGETS_TTL: Duration = Duration::from_secs(5);

/// Every row of an entity, a page at a time.
async fn list_all<S: Store, E: Entity>(store: &S) -> StoreResult<Vec<E>> {
    let mut all: Vec<E> = Vec::new();
    loop {
        let after_id = all.last().map(|e| e.id().to_owned());
        let (page, _) = store.list::<E>(&ListFilter { column: None, after_id, limit: PAGE }).await?;
        let done = page.len() < PAGE as usize;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

/// A customer's limits: its own, each unset one from its budget's.
fn effective(own: &LimitsRecord, budget: Option<&LimitsRecord>) -> LimitsRecord {
    let Some(b) = budget else { return own.clone() };
    LimitsRecord {
        rpm_limit: own.rpm_limit.or(b.rpm_limit),
        tpm_limit: own.tpm_limit.or(b.tpm_limit),
        max_parallel_requests: own.max_parallel_requests.or(b.max_parallel_requests),
        max_budget_nanos: own.max_budget_nanos.or(b.max_budget_nanos),
        soft_budget_nanos: own.soft_budget_nanos.or(b.soft_budget_nanos),
        budget_duration: own.budget_duration.clone().or_else(|| b.budget_duration.clone()),
    }
}

/// One customer's limits (its own, else its budget's; a budget gone is none).
pub async fn customer_limits<S: Store>(store: &S, c: &CustomerRecord) -> StoreResult<LimitsRecord> {
    let budget = match &c.budget_id {
        Some(id) => match store.get::<BudgetRecord>(id).await {
            Ok(b) => Some(b.limits),
            Err(crate::store::StoreError::NotFound) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    Ok(effective(&c.limits, budget.as_ref()))
}

/// Every customer with the limits it is held to.
async fn all_customers<S: Store>(store: &S) -> StoreResult<Vec<(CustomerRecord, LimitsRecord)>> {
    let budgets: HashMap<String, LimitsRecord> =
        list_all::<S, BudgetRecord>(store).await?.into_iter().map(|b| (b.budget_id, b.limits)).collect();
    let customers = list_all::<S, CustomerRecord>(store).await?;
    Ok(customers
        .into_iter()
        .map(|c| {
            let limits = effective(&c.limits, c.budget_id.as_ref().and_then(|id| budgets.get(id)));
            (c, limits)
        })
        .collect())
}

/// The filter config's customers: each with a rule to enforce, with `budget_spent` where the
/// fleet's spend in its current window (one read of every open customer window) reached it;
/// and, with a default budget for end users (`max_end_user_budget`), each end user without an
/// entry who spent it, as an entry of its own.
pub async fn customer_configs<S: Store>(
    store: &S,
    now_ms: u64,
    end_user_max_budget: Option<f64>,
) -> StoreResult<Vec<CustomerConfig>> {
    let customers = all_customers(store).await?;
    if customers.is_empty() && end_user_max_budget.is_none() {
        return Ok(Vec::new());
    }
    let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
    let spent: HashMap<(String, i64), i64> = store
        .open_windows(ScopeKind::Customer, now)
        .await?
        .into_iter()
        .map(|(id, start, spend)| ((id, start), spend))
        .collect();
    // Whether the fleet's spend in the budget's current window reached its max.
    let is_spent = |id: &str, budget: &BudgetLimits| {
        let start = i64::try_from(budget.window(now_ms).0).unwrap_or(i64::MAX);
        let spend = spent.get(&(id.to_owned(), start)).copied().and_then(|n| u64::try_from(n).ok());
        matches!((spend, budget.max_nanos), (Some(spend), Some(max)) if spend >= max)
    };
    let unsigned = |v: Option<i64>| v.and_then(|n| u64::try_from(n).ok());
    let mut configs = Vec::new();
    if let Some(default) = end_user_max_budget {
        // The default budget has one window, for ever, as in LiteLLM (ingestion counts it so).
        let budget = BudgetLimits::max_usd(default, None);
        let listed: std::collections::HashSet<&str> = customers.iter().map(|(c, _)| c.customer_id.as_str()).collect();
        // Each end user once (a window of another length may be left from an earlier entry).
        let end_users: std::collections::BTreeSet<&str> = spent.keys().map(|(id, _)| id.as_str()).collect();
        for id in end_users {
            if !listed.contains(id) && is_spent(id, &budget) {
                configs.push(CustomerConfig {
                    customer_id: id.to_owned(),
                    max_budget: Some(default),
                    budget_spent: true,
                    ..CustomerConfig::default()
                });
            }
        }
    }
    for (c, limits) in customers {
        let budget_spent = BudgetLimits::of(&limits).is_some_and(|budget| is_spent(&c.customer_id, &budget));
        let config = CustomerConfig {
            customer_id: c.customer_id,
            blocked: c.blocked,
            rpm_limit: unsigned(limits.rpm_limit),
            tpm_limit: unsigned(limits.tpm_limit),
            max_parallel_requests: unsigned(limits.max_parallel_requests),
            max_budget: unsigned(limits.max_budget_nanos).map(nanos_to_usd),
            budget_duration: limits.budget_duration.as_deref().and_then(BudgetDuration::parse),
            budget_spent,
        };
        let has_rule = config.blocked
            || config.rpm_limit.is_some()
            || config.tpm_limit.is_some()
            || config.max_parallel_requests.is_some()
            || config.max_budget.is_some();
        if has_rule {
            configs.push(config);
        }
    }
    Ok(configs)
}

/// Every customer's budget (None: it has none) by customer id.
pub type BudgetsById = Arc<HashMap<String, Option<BudgetLimits>>>;

/// The customers' budgets ingestion counts spend against (a max or a soft one), read from the
/// directory at most every [`BUDGETS_TTL`].
#[derive(Default)]
pub struct CustomerBudgets {
    cached: Mutex<Option<(BudgetsById, Instant)>>,
}

impl CustomerBudgets {
    pub async fn current<S: Store>(&self, store: &S) -> StoreResult<BudgetsById> {
        if let Ok(cached) = self.cached.lock()
            && let Some((budgets, at)) = cached.as_ref()
            && at.elapsed() < BUDGETS_TTL
        {
            return Ok(Arc::clone(budgets));
        }
        let budgets: HashMap<String, Option<BudgetLimits>> = all_customers(store)
            .await?
            .into_iter()
            .map(|(c, limits)| (c.customer_id, BudgetLimits::of(&limits)))
            .collect();
        let budgets = Arc::new(budgets);
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((Arc::clone(&budgets), Instant::now()));
        }
        Ok(budgets)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::{DirectoryStore, NewAudit, SqlStore};

    const NANOS_PER_USD: i64 = 1_000_000_000;

    fn customer(id: &str, budget_id: Option<&str>, limits: LimitsRecord, blocked: bool) -> CustomerRecord {
        CustomerRecord {
            customer_id: id.into(),
            alias: None,
            budget_id: budget_id.map(str::to_owned),
            limits,
            blocked,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[tokio::test]
    async fn every_customer_with_a_rule_goes_to_envoys_with_its_budgets_limits() {
        let store = SqlStore::open("sqlite::memory:").await.unwrap();
        let audit = || NewAudit::new("test", "x", "x", "x");
        let free_tier = LimitsRecord {
            rpm_limit: Some(10),
            max_budget_nanos: Some(NANOS_PER_USD),
            budget_duration: Some("30d".into()),
            ..LimitsRecord::default()
        };
        store
            .insert(
                &BudgetRecord { budget_id: "free".into(), limits: free_tier, created_at: 0, updated_at: 0 },
                audit(),
            )
            .await
            .unwrap();
        // Its own rpm wins over the budget's; the budget's max and duration fill the rest.
        let own = LimitsRecord { rpm_limit: Some(3), ..LimitsRecord::default() };
        store.insert(&customer("ada", Some("free"), own, false), audit()).await.unwrap();
        store.insert(&customer("bob", None, LimitsRecord::default(), true), audit()).await.unwrap();
        store.insert(&customer("cy", None, LimitsRecord::default(), false), audit()).await.unwrap();

        let configs = customer_configs(&store, 1_795_341_610_000, None).await.unwrap();
        assert_eq!(configs.len(), 2, "a customer without a rule is not sent: {configs:?}");
        let ada = configs.iter().find(|c| c.customer_id == "ada").unwrap();
        assert_eq!((ada.rpm_limit, ada.max_budget), (Some(3), Some(1.0)));
        assert_eq!(ada.budget_duration, BudgetDuration::parse("30d"));
        assert!(!ada.budget_spent);
        assert!(configs.iter().any(|c| c.customer_id == "bob" && c.blocked));

        let budgets = CustomerBudgets::default().current(&store).await.unwrap();
        assert!(budgets["ada"].is_some() && budgets["bob"].is_none());
    }
}
