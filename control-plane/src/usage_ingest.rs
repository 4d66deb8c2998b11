//! `sluice.v1.UsageService/Report`: usage records from each Envoy's singleton VM, in batches.
//!
//! Delivery is at-least-once (the singleton retries a batch until it is acknowledged) and
//! ingestion is idempotent by `record_id` (`SpendStore::record_spend`), so every record counts
//! exactly once however often a batch is replayed. Records are enriched from the key's stored
//! tenancy (organization, tags) so spend can be reported by every dimension the admin API has.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_proto::gateway::v1::usage_service_server::UsageService;
use sluice_proto::gateway::v1::{Outcome, ReportUsageRequest, ReportUsageResponse, UsageRecord};
use tonic::{Request, Response, Status};

use crate::budget::{BudgetLimits, BudgetTracker, ScopeId};
use crate::metrics::{Metrics, inc};
use crate::store::{KeyLookup, SpendLog, Store, StoreResult, TeamRecord, now_ms};

/// Largest batch one call may carry; the singleton sends far fewer.
pub const MAX_BATCH: usize = 10_000;

/// How long a key's organization and tags are reused for enrichment (a retag shows in spend
/// recorded after this long at most).
const TENANCY_TTL: Duration = Duration::from_secs(60);
/// Bound on cached keys; past it the cache starts over.
const TENANCY_CACHE_MAX: usize = 100_000;

/// What spend is enriched with, per key, and the budgets it counts against.
#[derive(Debug, Clone, Default)]
struct Tenancy {
    organization_id: Option<String>,
    tags: Vec<String>,
    key_budget: Option<BudgetLimits>,
    team_budget: Option<(String, BudgetLimits)>,
}

impl Tenancy {
    fn budgeted(&self) -> bool {
        self.key_budget.is_some() || self.team_budget.is_some()
    }
}

pub struct UsageIngest<S> {
    store: Arc<S>,
    tenancy: Mutex<HashMap<String, (Tenancy, Instant)>>,
    metrics: Arc<Metrics>,
    budgets: Arc<BudgetTracker>,
}

impl<S: Store> UsageIngest<S> {
    pub fn new(store: Arc<S>, metrics: Arc<Metrics>, budgets: Arc<BudgetTracker>) -> Self {
        Self { store, tenancy: Mutex::new(HashMap::new()), metrics, budgets }
    }

    /// Stores the batch and, for keys and teams with budgets, counts its new spend against
    /// their windows (the tracker held throughout, so a window loaded meanwhile counts each
    /// record once).
    async fn store_and_count(&self, logs: &[SpendLog], tenancy: &[&Tenancy]) -> StoreResult<usize> {
        if !tenancy.iter().any(|t| t.budgeted()) {
            return self.store.record_spend(logs).await;
        }
        let mut windows = self.budgets.lock().await;
        let new = self.store.record_new_spend(logs).await?;
        let mut per_scope: HashMap<ScopeId, (BudgetLimits, u64)> = HashMap::new();
        for (log, t) in new.iter().filter_map(|p| Some((logs.get(*p)?, tenancy.get(*p)?))) {
            let cost = u64::try_from(log.cost_nanos).unwrap_or(0);
            if let (Some(limits), Some(key_id)) = (t.key_budget, &log.key_id) {
                per_scope.entry(ScopeId::Key(key_id.clone())).or_insert((limits, 0)).1 += cost;
            }
            if let Some((team_id, limits)) = &t.team_budget {
                per_scope.entry(ScopeId::Team(team_id.clone())).or_insert((*limits, 0)).1 += cost;
            }
        }
        let now = u64::try_from(now_ms()).unwrap_or(0);
        for (scope, (limits, nanos)) in per_scope {
            if let Err(e) = self.budgets.add(&mut windows, &*self.store, &scope, &limits, nanos, now).await {
                // The spend is stored; the window is reloaded from it on its next use.
                eprintln!("sluice: budget count for {scope:?}: {e}");
            }
        }
        Ok(new.len())
    }

    /// The key's tenancy, from the cache or the store (a key that is gone enriches nothing).
    async fn tenancy(&self, key_id: &str) -> Tenancy {
        let now = Instant::now();
        if let Ok(cache) = self.tenancy.lock()
            && let Some((t, at)) = cache.get(key_id)
            && now.duration_since(*at) < TENANCY_TTL
        {
            return t.clone();
        }
        let t = match self.store.get_key(&KeyLookup::Id(key_id.to_owned())).await {
            Ok(k) => {
                let team_budget = match &k.team_id {
                    Some(team_id) => match self.store.get::<TeamRecord>(team_id).await {
                        Ok(team) => BudgetLimits::of(&team.limits).map(|b| (team_id.clone(), b)),
                        Err(_) => None,
                    },
                    None => None,
                };
                Tenancy {
                    key_budget: BudgetLimits::of(&k.limits),
                    team_budget,
                    organization_id: k.organization_id,
                    tags: k.tags,
                }
            }
            Err(_) => Tenancy::default(),
        };
        if let Ok(mut cache) = self.tenancy.lock() {
            if cache.len() >= TENANCY_CACHE_MAX {
                cache.clear();
            }
            cache.insert(key_id.to_owned(), (t.clone(), now));
        }
        t
    }
}

fn outcome(o: i32) -> &'static str {
    match Outcome::try_from(o).unwrap_or(Outcome::Unspecified) {
        Outcome::Completed => "completed",
        Outcome::UpstreamError => "upstream_error",
        Outcome::Truncated => "truncated",
        Outcome::Cancelled => "cancelled",
        Outcome::Unspecified => "unspecified",
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.clone().filter(|v| !v.is_empty())
}

/// One record as a spend row, with its key's organization and tags.
fn spend_log(r: &UsageRecord, key: &Tenancy) -> SpendLog {
    let cost_nanos = if r.cost_usd.is_finite() && r.cost_usd > 0.0 { (r.cost_usd * 1e9).round() as i64 } else { 0 };
    SpendLog {
        record_id: r.record_id.clone(),
        request_id: r.request_id.clone(),
        key_id: Some(r.key_id.clone()).filter(|k| !k.is_empty()),
        team_id: non_empty(&r.team_id),
        user_id: non_empty(&r.user_id),
        organization_id: key.organization_id.clone(),
        customer_id: None,
        model_group: r.model_group.clone(),
        deployment_id: Some(r.deployment.clone()).filter(|d| !d.is_empty()),
        tags: key.tags.clone(),
        prompt_tokens: signed(r.prompt_tokens),
        completion_tokens: signed(r.completion_tokens),
        cost_nanos,
        status: i64::from(r.status),
        outcome: outcome(r.outcome).into(),
        estimated: r.estimated,
        start_ms: signed(r.start_ms),
    }
}

#[tonic::async_trait]
impl<S: Store> UsageService for UsageIngest<S> {
    async fn report(&self, request: Request<ReportUsageRequest>) -> Result<Response<ReportUsageResponse>, Status> {
        let records = request.into_inner().records;
        if records.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!("at most {MAX_BATCH} records per batch")));
        }
        if let Some(bad) = records.iter().position(|r| r.record_id.is_empty() || r.model_group.is_empty()) {
            return Err(Status::invalid_argument(format!("record {bad} has no record_id or model_group")));
        }
        let mut keys: HashMap<&str, Tenancy> = HashMap::new();
        for r in &records {
            if !r.key_id.is_empty() && !keys.contains_key(r.key_id.as_str()) {
                keys.insert(&r.key_id, self.tenancy(&r.key_id).await);
            }
        }
        let none = Tenancy::default();
        let tenancy: Vec<&Tenancy> = records.iter().map(|r| keys.get(r.key_id.as_str()).unwrap_or(&none)).collect();
        let logs: Vec<SpendLog> = records.iter().zip(&tenancy).map(|(r, t)| spend_log(r, t)).collect();
        let accepted = self.store_and_count(&logs, &tenancy).await.map_err(|e| {
            inc(&self.metrics.usage_failed_batches, 1);
            eprintln!("sluice: usage ingestion: {e}");
            // The singleton keeps the batch and retries.
            Status::unavailable("spend store unavailable")
        })?;
        let accepted = u32::try_from(accepted).unwrap_or(u32::MAX);
        let total = u32::try_from(logs.len()).unwrap_or(u32::MAX);
        inc(&self.metrics.usage_ingested, u64::from(accepted));
        inc(&self.metrics.usage_duplicates, u64::from(total.saturating_sub(accepted)));
        Ok(Response::new(ReportUsageResponse { accepted, duplicates: total.saturating_sub(accepted) }))
    }
}
