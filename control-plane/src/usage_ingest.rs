//! `sluice.v1.UsageService/Report`: usage records from each Envoy's singleton VM, in batches.
//!
//! Delivery is at-least-once (the singleton retries a batch until it is acknowledged) and
//! ingestion is idempotent by `record_id` (`SpendStore::record_spend`), so every record counts
//! exactly once however often a batch is replayed. Records are enriched from the key's stored
//! tenancy (organization: the key's own, else its team's; tags) so spend can be reported by
//! every dimension the admin API has, and counted against the budgets of the key, its team, its
//! user, its organization and its user's membership of its team (`budget.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::config::{ProxyBudget, member_scope_id};
use sluice_proto::gateway::v1::usage_service_server::UsageService;
use sluice_proto::gateway::v1::{
    FailedAttempt, Outcome, ReportUsageRequest, ReportUsageResponse, UsageRecord, WatchInvalidationsRequest,
};
use tonic::{Request, Response, Status};

use crate::budget::{BudgetLimits, BudgetTracker, ScopeId, SpendContext, key_model_scope_id, member_limits};
use crate::customers::CustomerBudgets;
use crate::invalidation::Invalidations;
use crate::key_lookup::model_budgets;
use crate::metrics::{Metrics, inc};
use crate::store::{KeyLookup, OrgRecord, SpendLog, Store, StoreError, StoreResult, TeamRecord, UserRecord, now_ms};
use crate::usage_metrics::DeploymentLabels;

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
    user_budget: Option<(String, BudgetLimits)>,
    org_budget: Option<(String, BudgetLimits)>,
    /// The key's user's budget in the key's team (by `member_scope_id`).
    member_budget: Option<(String, BudgetLimits)>,
    /// The key's budget on each model group (`model_max_budget`).
    model_budgets: HashMap<String, BudgetLimits>,
    /// The key and its owners, as a budget webhook event names them.
    context: SpendContext,
}

impl Tenancy {
    fn budgeted(&self) -> bool {
        self.key_budget.is_some()
            || self.team_budget.is_some()
            || self.user_budget.is_some()
            || self.org_budget.is_some()
            || self.member_budget.is_some()
            || !self.model_budgets.is_empty()
    }
}

/// A directory entity the key names; gone is `None`, a database error is the caller's.
fn found<T>(r: StoreResult<T>) -> StoreResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e @ StoreError::Database(_)) => Err(e),
        Err(_) => Ok(None),
    }
}

pub struct UsageIngest<S> {
    store: Arc<S>,
    tenancy: Mutex<HashMap<String, (Tenancy, Instant)>>,
    customer_budgets: CustomerBudgets,
    /// `litellm_settings`' budgets: the gateway's own (every record counts) and that of each
    /// end user without a customer entry.
    proxy_budget: Option<BudgetLimits>,
    end_user_budget: Option<BudgetLimits>,
    metrics: Arc<Metrics>,
    budgets: Arc<BudgetTracker>,
    /// LiteLLM's logging callbacks, sent each stored row (`callbacks.rs`).
    callbacks: Option<crate::callbacks::CallbackSender>,
}

impl<S: Store> UsageIngest<S> {
    pub fn new(store: Arc<S>, metrics: Arc<Metrics>, budgets: Arc<BudgetTracker>) -> Self {
        Self {
            store,
            tenancy: Mutex::new(HashMap::new()),
            customer_budgets: CustomerBudgets::default(),
            proxy_budget: None,
            end_user_budget: None,
            metrics,
            budgets,
            callbacks: None,
        }
    }

    /// Sends every stored row to LiteLLM's logging callbacks too.
    pub fn with_callbacks(mut self, callbacks: Option<crate::callbacks::CallbackSender>) -> Self {
        self.callbacks = callbacks;
        self
    }

    /// Counts `litellm_settings.max_budget` (with `budget_duration`) over every record, and
    /// `max_end_user_budget` for each end user without a customer entry.
    pub fn with_gateway_budgets(mut self, proxy: Option<&ProxyBudget>, end_user_max_budget: Option<f64>) -> Self {
        self.proxy_budget = proxy.map(|b| BudgetLimits::max_usd(b.max_budget, b.budget_duration));
        self.end_user_budget = end_user_max_budget.map(|usd| BudgetLimits::max_usd(usd, None));
        self
    }

    /// Drops a key's cached tenancy when an invalidation names it, its team, user or
    /// organization (an admin change on any replica, when replicas share invalidations), so
    /// that a budget set or changed counts from the next batch on rather than within
    /// `TENANCY_TTL`. Runs until the ingestion is dropped.
    pub fn forget_tenancy_on(self: &Arc<Self>, invalidations: Arc<Invalidations>) {
        let ingest = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut position = WatchInvalidationsRequest::default();
            loop {
                let answer = invalidations.watch(&position, Duration::from_secs(20)).await;
                let Some(ingest) = ingest.upgrade() else { return };
                let first = position.epoch.is_empty();
                if let Ok(mut cache) = ingest.tenancy.lock() {
                    if answer.reset && !first {
                        cache.clear();
                    } else {
                        let named =
                            |ids: &[String], id: &Option<String>| id.as_ref().is_some_and(|id| ids.contains(id));
                        cache.retain(|key_id, (t, _)| {
                            !(answer.key_ids.contains(key_id)
                                || named(&answer.team_ids, &t.context.team_id)
                                || named(&answer.user_ids, &t.context.user_id)
                                || named(&answer.org_ids, &t.organization_id))
                        });
                    }
                }
                position = WatchInvalidationsRequest { epoch: answer.epoch, after_seq: answer.last_seq };
            }
        });
    }

    /// Stores the batch and, for keys, teams, users, organizations and customers with budgets,
    /// adds its new spend to their windows in the same transaction (`budget_windows`, shared by
    /// every replica), then raises the alerts this batch was the first to reach.
    /// Stores the rows and counts them against their budgets; the positions of the rows that
    /// were new (a replayed one is neither stored nor counted again).
    async fn store_and_count(&self, logs: &[SpendLog], tenancy: &[&Tenancy]) -> StoreResult<Vec<usize>> {
        let customers = if logs.iter().any(|l| l.customer_id.is_some()) {
            self.customer_budgets.current(&*self.store).await?
        } else {
            Default::default()
        };
        // A customer's own budget; an end user without an entry, the default one.
        let customer_budget = |log: &SpendLog| {
            let id = log.customer_id.as_ref()?;
            let limits = match customers.get(id) {
                Some(own) => (*own)?,
                None => self.end_user_budget?,
            };
            Some((ScopeId::Customer(id.clone()), limits))
        };
        let gateway_budgets = |log: &SpendLog| {
            customer_budget(log).into_iter().chain(self.proxy_budget.map(|limits| (ScopeId::Proxy, limits)))
        };
        if !tenancy.iter().any(|t| t.budgeted()) && !logs.iter().any(|l| gateway_budgets(l).next().is_some()) {
            return Ok(self.store.record_charged_spend(logs, &[]).await?.0);
        }
        let now = u64::try_from(now_ms()).unwrap_or(0);
        let mut charges = Vec::new();
        // Per scope: its limits and the last key that spent on it (for the webhook's event).
        let mut scopes: HashMap<ScopeId, (BudgetLimits, &SpendContext)> = HashMap::new();
        for (position, (log, t)) in logs.iter().zip(tenancy).enumerate() {
            for (scope, limits) in budgets_of(log, t).into_iter().chain(gateway_budgets(log)) {
                charges.push(BudgetTracker::charge(position, &scope, &limits, log.start_ms, now));
                scopes.insert(scope, (limits, &t.context));
            }
        }
        let (new, totals) = self.store.record_charged_spend(logs, &charges).await?;
        self.budgets.counted(&totals, &scopes, now);
        Ok(new)
    }

    /// The key's tenancy, from the cache or the store (a key that is gone enriches nothing). A
    /// database error is the batch's error: the records must not be stored (or the tenancy
    /// cached) without their organization, tags and budgets because the database was briefly
    /// unreachable; the singleton retries the batch.
    async fn tenancy(&self, key_id: &str) -> StoreResult<Tenancy> {
        let now = Instant::now();
        if let Ok(cache) = self.tenancy.lock()
            && let Some((t, at)) = cache.get(key_id)
            && now.duration_since(*at) < TENANCY_TTL
        {
            return Ok(t.clone());
        }
        let t = match self.store.get_key(&KeyLookup::Id(key_id.to_owned())).await {
            Ok(k) => {
                let team = match &k.team_id {
                    Some(team_id) => found(self.store.get::<TeamRecord>(team_id).await)?,
                    None => None,
                };
                let user = match &k.user_id {
                    Some(user_id) => found(self.store.get::<UserRecord>(user_id).await)?,
                    None => None,
                };
                // The key's organization, else its team's (as key lookups resolve it).
                let organization_id =
                    k.organization_id.clone().or_else(|| team.as_ref().and_then(|t| t.organization_id.clone()));
                let org = match &organization_id {
                    Some(org_id) => found(self.store.get::<OrgRecord>(org_id).await)?,
                    None => None,
                };
                let member_budget = match (&team, &k.user_id) {
                    (Some(team), Some(user_id)) => self
                        .store
                        .memberships(user_id)
                        .await?
                        .into_iter()
                        .find(|m| m.team_id == team.team_id)
                        .and_then(|m| BudgetLimits::of(&member_limits(&m.limits, team.member_max_budget_nanos)))
                        .map(|l| (member_scope_id(&team.team_id, user_id), l)),
                    _ => None,
                };
                Tenancy {
                    member_budget,
                    model_budgets: model_budgets(&k)
                        .filter_map(|(group, limits)| Some((group, BudgetLimits::of(&limits)?)))
                        .collect(),
                    key_budget: BudgetLimits::of(&k.limits),
                    team_budget: team.as_ref().and_then(|t| Some((t.team_id.clone(), BudgetLimits::of(&t.limits)?))),
                    user_budget: user.as_ref().and_then(|u| Some((u.user_id.clone(), BudgetLimits::of(&u.limits)?))),
                    org_budget: org
                        .as_ref()
                        .and_then(|o| Some((o.organization_id.clone(), BudgetLimits::of(&o.limits)?))),
                    context: SpendContext {
                        key_id: Some(k.key_id.clone()),
                        key_alias: k.key_alias.clone(),
                        user_id: k.user_id.clone(),
                        user_email: user.and_then(|u| u.user_email),
                        team_id: k.team_id.clone(),
                        team_alias: team.and_then(|t| t.team_alias),
                        organization_id: organization_id.clone(),
                    },
                    organization_id,
                    tags: k.tags,
                }
            }
            Err(e @ StoreError::Database(_)) => return Err(e),
            Err(_) => Tenancy::default(),
        };
        if let Ok(mut cache) = self.tenancy.lock() {
            if cache.len() >= TENANCY_CACHE_MAX {
                cache.clear();
            }
            cache.insert(key_id.to_owned(), (t.clone(), now));
        }
        Ok(t)
    }
}

/// The budgets a stored record counts against: its key's, and its team's, user's and
/// organization's as the record names them (the columns a window is summed by when it is
/// created from `spend_logs`, so that both ways of counting agree).
fn budgets_of(log: &SpendLog, t: &Tenancy) -> Vec<(ScopeId, BudgetLimits)> {
    let named = |owner: &Option<(String, BudgetLimits)>, column: &Option<String>| {
        owner.as_ref().filter(|(id, _)| column.as_deref() == Some(id.as_str())).map(|(id, l)| (id.clone(), *l))
    };
    let key = log.key_id.as_ref().and_then(|id| Some((ScopeId::Key(id.clone()), t.key_budget?)));
    let team = named(&t.team_budget, &log.team_id).map(|(id, l)| (ScopeId::Team(id), l));
    let user = named(&t.user_budget, &log.user_id).map(|(id, l)| (ScopeId::User(id), l));
    let org = named(&t.org_budget, &log.organization_id).map(|(id, l)| (ScopeId::Org(id), l));
    let member_column = log.team_id.as_deref().zip(log.user_id.as_deref()).map(|(t, u)| member_scope_id(t, u));
    let member = named(&t.member_budget, &member_column).map(|(id, l)| (ScopeId::Member(id), l));
    let model = log.key_id.as_ref().and_then(|key_id| {
        let limits = t.model_budgets.get(&log.model_group)?;
        Some((ScopeId::KeyModel(key_model_scope_id(key_id, &log.model_group)), *limits))
    });
    [key, team, user, org, member, model].into_iter().flatten().collect()
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
        // The filter sends the key's team and user; the key's stored ones stand in for a record
        // without them, so the record counts against their budgets either way.
        team_id: non_empty(&r.team_id).or_else(|| key.context.team_id.clone()),
        user_id: non_empty(&r.user_id).or_else(|| key.context.user_id.clone()),
        organization_id: key.organization_id.clone(),
        // The request's end user (the body's `user`), as the filter recorded it.
        customer_id: non_empty(&r.end_user),
        model_group: r.model_group.clone(),
        deployment_id: Some(r.deployment.clone()).filter(|d| !d.is_empty()),
        // The key's tags, then the request's own (LiteLLM's request_tags), each once.
        tags: {
            let mut tags = key.tags.clone();
            for tag in &r.request_tags {
                if !tags.contains(tag) {
                    tags.push(tag.clone());
                }
            }
            tags
        },
        prompt_tokens: signed(r.prompt_tokens),
        completion_tokens: signed(r.completion_tokens),
        cost_nanos,
        status: i64::from(r.status),
        outcome: outcome(r.outcome).into(),
        estimated: r.estimated,
        price_unknown: r.price_unknown,
        cache_hit: r.cache_hit,
        start_ms: signed(r.start_ms),
        failed_attempts: r.failed_attempts.iter().map(|a| (a.deployment.clone(), a.error.clone())).collect(),
    }
}

/// A record's labels in LiteLLM's metrics (`usage_metrics.rs`): the key's id stands for
/// LiteLLM's `hashed_api_key` (both name a key without being it).
fn usage_labels(r: &UsageRecord, key: &SpendContext) -> crate::usage_metrics::Labels {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    crate::usage_metrics::Labels {
        end_user: text(&r.end_user),
        hashed_api_key: r.key_id.clone(),
        api_key_alias: r.key_alias.clone().or_else(|| key.key_alias.clone()).unwrap_or_default(),
        model: r.upstream_model.clone(),
        team: text(&r.team_id),
        team_alias: text(&key.team_alias),
        user: text(&r.user_id),
        user_email: text(&key.user_email),
        requested_model: r.model_group.clone(),
        model_id: r.deployment.clone(),
    }
}

impl<S: Store> UsageIngest<S> {
    /// A cooled-down deployment's labels in LiteLLM's deployment metrics, from its stored entry
    /// (a cooldown is rare: one read each). A deployment deleted since keeps its id only.
    async fn deployment_labels(&self, cooled: &FailedAttempt) -> DeploymentLabels {
        let entry = self.store.get_model(&cooled.deployment).await.map(|m| m.entry).unwrap_or_default();
        let param = |name: &str| entry["litellm_params"][name].as_str().unwrap_or_default().to_owned();
        let model = param("model");
        DeploymentLabels {
            api_provider: model.split_once('/').map(|(p, _)| p.to_owned()).unwrap_or_default(),
            litellm_model_name: model,
            model_id: cooled.deployment.clone(),
            api_base: param("api_base"),
            exception_status: cooled.error.clone(),
        }
    }
}

/// A record's figures in LiteLLM's metrics; the spend is the row's (as billed).
fn usage_figures(r: &UsageRecord, log: &SpendLog) -> crate::usage_metrics::Usage {
    crate::usage_metrics::Usage {
        spend_usd: log.cost_nanos.max(0) as f64 / 1e9,
        input_tokens: r.prompt_tokens,
        output_tokens: r.completion_tokens,
        cached_input_tokens: r.cached_prompt_tokens,
        cache_creation_tokens: r.cache_write_tokens,
        reasoning_tokens: r.reasoning_tokens,
        status: u16::try_from(r.status).unwrap_or(0),
        route: r.route.clone(),
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
        let failed = |e: StoreError| {
            inc(&self.metrics.usage_failed_batches, 1);
            eprintln!("sluice: usage ingestion: {e}");
            // The singleton keeps the batch and retries.
            Status::unavailable("spend store unavailable")
        };
        let mut keys: HashMap<&str, Tenancy> = HashMap::new();
        for r in &records {
            if !r.key_id.is_empty() && !keys.contains_key(r.key_id.as_str()) {
                keys.insert(&r.key_id, self.tenancy(&r.key_id).await.map_err(failed)?);
            }
        }
        let none = Tenancy::default();
        let tenancy: Vec<&Tenancy> = records.iter().map(|r| keys.get(r.key_id.as_str()).unwrap_or(&none)).collect();
        let logs: Vec<SpendLog> = records.iter().zip(&tenancy).map(|(r, t)| spend_log(r, t)).collect();
        let new = self.store_and_count(&logs, &tenancy).await.map_err(failed)?;
        for &position in &new {
            if let (Some(r), Some(log), Some(t)) = (records.get(position), logs.get(position), tenancy.get(position)) {
                self.metrics.usage.record(usage_labels(r, &t.context), &usage_figures(r, log));
                for cooled in &r.cooled_down {
                    self.metrics.usage.cooled_down(self.deployment_labels(cooled).await);
                }
                if let Some(callbacks) = &self.callbacks {
                    callbacks.send(r, log, &t.context);
                }
            }
        }
        let accepted = u32::try_from(new.len()).unwrap_or(u32::MAX);
        let total = u32::try_from(logs.len()).unwrap_or(u32::MAX);
        inc(&self.metrics.usage_ingested, u64::from(accepted));
        inc(&self.metrics.usage_duplicates, u64::from(total.saturating_sub(accepted)));
        Ok(Response::new(ReportUsageResponse { accepted, duplicates: total.saturating_sub(accepted) }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::{
        GroupBy, KeyRecord, KeyStore, KeyType, LimitsRecord, ModelLimits, NewAudit, SpendFilter, SpendStore, SqlStore,
    };

    fn key(key_id: &str, tags: &[&str]) -> KeyRecord {
        KeyRecord {
            key_id: key_id.into(),
            key_prefix: "sk-".into(),
            last4: "abcd".into(),
            key_alias: None,
            user_id: None,
            team_id: None,
            organization_id: None,
            models: vec![],
            limits: LimitsRecord::default(),
            model_limits: ModelLimits::default(),
            allowed_routes: vec![],
            allowed_ips: vec![],
            metadata: serde_json::json!({}),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            key_type: KeyType::LlmApi,
            blocked: false,
            expires_at: None,
            created_by: None,
            created_at: 1,
            updated_at: 1,
            last_used_at: None,
            version: 1,
            previous_key_valid_until: None,
        }
    }

    fn record(id: &str, key_id: &str) -> UsageRecord {
        UsageRecord {
            record_id: id.into(),
            key_id: key_id.into(),
            model_group: "gpt-4o".into(),
            status: 200,
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_usd: 0.001,
            start_ms: 1_795_300_000_000,
            ..Default::default()
        }
    }

    /// The database is unreachable while a key's tenancy is read (here: its table is away): the
    /// batch fails, and once the database is back the records are stored with the key's tags,
    /// not without them (nor is the empty tenancy cached for the next batches).
    #[tokio::test]
    async fn a_batch_whose_tenancy_cannot_be_read_fails_and_is_enriched_on_retry() {
        let path = std::env::temp_dir().join(format!("sluice-ingest-{}-{}.db", std::process::id(), now_ms()));
        let store = Arc::new(SqlStore::open(&format!("sqlite:{}", path.display())).await.unwrap());
        store
            .insert_key(&key("k1", &["prod"]), "sha256:00", NewAudit::new("test", "create", "key", "k1"))
            .await
            .unwrap();
        let metrics = Arc::new(Metrics::default());
        let budgets = BudgetTracker::new(Arc::new(Invalidations::new("e".into())), Arc::clone(&metrics));
        let ingest = UsageIngest::new(Arc::clone(&store), Arc::clone(&metrics), budgets);
        let batch = || Request::new(ReportUsageRequest { records: vec![record("r1", "k1"), record("r2", "k1")] });

        sqlx::query("ALTER TABLE keys RENAME TO keys_away").execute(store.pool()).await.unwrap();
        let err = ingest.report(batch()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "the singleton keeps the batch and retries");
        assert_eq!(metrics.usage_failed_batches.load(std::sync::atomic::Ordering::Relaxed), 1);

        sqlx::query("ALTER TABLE keys_away RENAME TO keys").execute(store.pool()).await.unwrap();
        let ok = ingest.report(batch()).await.unwrap().into_inner();
        assert_eq!((ok.accepted, ok.duplicates), (2, 0));
        let filter = SpendFilter { tag: Some("prod".into()), ..Default::default() };
        let by_tag = store.query_spend(&filter, GroupBy::Key).await.unwrap();
        assert_eq!(by_tag.iter().map(|r| r.requests).sum::<i64>(), 2, "stored with the key's tags: {by_tag:?}");
        let _ = std::fs::remove_file(&path);
    }
    /// A key changed through the admin API (here: retagged, with its invalidation published):
    /// the next batch is enriched with what it is now, not with the cached tenancy.
    #[tokio::test]
    async fn an_invalidation_drops_the_cached_tenancy() {
        let path = std::env::temp_dir().join(format!("sluice-ingest-inv-{}-{}.db", std::process::id(), now_ms()));
        let store = Arc::new(SqlStore::open(&format!("sqlite:{}", path.display())).await.unwrap());
        store
            .insert_key(&key("k1", &["prod"]), "sha256:01", NewAudit::new("test", "create", "key", "k1"))
            .await
            .unwrap();
        let metrics = Arc::new(Metrics::default());
        let invalidations = Arc::new(Invalidations::new("e".into()));
        let budgets = BudgetTracker::new(Arc::clone(&invalidations), Arc::clone(&metrics));
        let ingest = Arc::new(UsageIngest::new(Arc::clone(&store), metrics, budgets));
        ingest.forget_tenancy_on(Arc::clone(&invalidations));
        let batch = |id: &str| Request::new(ReportUsageRequest { records: vec![record(id, "k1")] });
        ingest.report(batch("r1")).await.unwrap();
        let retag = |k: &mut KeyRecord| {
            k.tags = vec!["staging".into()];
            Ok(())
        };
        store.update_key("k1", retag, NewAudit::new("test", "update", "key", "k1")).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // the watcher has its position
        invalidations.publish(crate::invalidation::Target::Key("k1".into()));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        ingest.report(batch("r2")).await.unwrap();
        let filter = SpendFilter { tag: Some("staging".into()), ..Default::default() };
        let staging = store.query_spend(&filter, GroupBy::Key).await.unwrap();
        assert_eq!(staging.iter().map(|r| r.requests).sum::<i64>(), 1, "{staging:?}");
        let _ = std::fs::remove_file(&path);
    }
}
