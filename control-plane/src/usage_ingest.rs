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

use crate::metrics::{Metrics, inc};
use crate::store::{KeyLookup, SpendLog, Store};

/// Largest batch one call may carry; the singleton sends far fewer.
pub const MAX_BATCH: usize = 10_000;

/// How long a key's organization and tags are reused for enrichment (a retag shows in spend
/// recorded after this long at most).
const TENANCY_TTL: Duration = Duration::from_secs(60);
/// Bound on cached keys; past it the cache starts over.
const TENANCY_CACHE_MAX: usize = 100_000;

/// What spend is enriched with, per key.
#[derive(Debug, Clone, Default)]
struct Tenancy {
    organization_id: Option<String>,
    tags: Vec<String>,
}

pub struct UsageIngest<S> {
    store: Arc<S>,
    tenancy: Mutex<HashMap<String, (Tenancy, Instant)>>,
    metrics: Arc<Metrics>,
}

impl<S: Store> UsageIngest<S> {
    pub fn new(store: Arc<S>, metrics: Arc<Metrics>) -> Self {
        Self { store, tenancy: Mutex::new(HashMap::new()), metrics }
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
            Ok(k) => Tenancy { organization_id: k.organization_id, tags: k.tags },
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
        let logs: Vec<SpendLog> =
            records.iter().map(|r| spend_log(r, keys.get(r.key_id.as_str()).unwrap_or(&none))).collect();
        let accepted = self.store.record_spend(&logs).await.map_err(|e| {
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
