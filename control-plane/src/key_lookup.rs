//! `sluice.v1.KeyLookupService`: what an Envoy asks on a key-cache miss. The answer is the key
//! (and its team) in sluice-core's `KeyConfig` / `TeamConfig` JSON shape, the same shape a
//! standalone config declares, so the filter compiles it with the code it already trusts. It
//! carries the fleet-wide spend of every budget the key counts against: its own, its team's,
//! its user's and its organization's (the key's own organization, else its team's).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::config::{KeyConfig, OwnerPolicy, TeamConfig, rate_limited_counters};
use sluice_core::keys::KeyHash;
use sluice_core::time::{BudgetDuration, Timestamp, format_rfc3339_ms};
use sluice_proto::gateway::v1::key_lookup_service_server::KeyLookupService;
use sluice_proto::gateway::v1::{
    KeyLookupRequest, KeyLookupResponse, ScopeCounts, WatchInvalidationsRequest, WatchInvalidationsResponse,
};
use tonic::{Request, Response, Status};

use crate::budget::{BudgetLimits, BudgetTracker, ScopeId, key_model_scope_id, member_limits};
use crate::fleet_limits::{FleetCounts, current_window};
use crate::invalidation::Invalidations;
use crate::metrics::{Metrics, inc};
use crate::store::{
    KeyLookup, KeyRecord, KeyType, LimitsRecord, OrgRecord, Store, StoreError, StoreResult, TeamRecord, UserRecord,
};

/// How long a `WatchInvalidations` call is held when nothing changes (below Envoy's gRPC
/// timeout for the call, so an idle watch ends in an answer rather than an error).
const WATCH_HOLD: Duration = Duration::from_secs(20);
/// The key id a master-key request's usage is recorded under (as the filter does standalone).
const MASTER_KEY_ID: &str = "master";

pub struct KeyLookupApi<S> {
    store: Arc<S>,
    invalidations: Arc<Invalidations>,
    metrics: Arc<Metrics>,
    budgets: Arc<BudgetTracker>,
    /// The fleet's rate-limit counts, sent with a key so an Envoy new to it starts from them.
    fleet_counts: Option<Arc<FleetCounts>>,
    /// The master key's digest: Envoys hold none, and look the master key up like a key.
    master_key: Option<KeyHash>,
}

impl<S: Store> KeyLookupApi<S> {
    pub fn new(
        store: Arc<S>,
        invalidations: Arc<Invalidations>,
        metrics: Arc<Metrics>,
        budgets: Arc<BudgetTracker>,
    ) -> Self {
        Self { store, invalidations, metrics, budgets, fleet_counts: None, master_key: None }
    }

    pub fn with_master_key(mut self, master_key: Option<KeyHash>) -> Self {
        self.master_key = master_key;
        self
    }

    pub fn with_fleet_counts(mut self, fleet_counts: Arc<FleetCounts>) -> Self {
        self.fleet_counts = Some(fleet_counts);
        self
    }

    /// What the fleet counted this minute on the key's rate-limited counters. Best effort: a
    /// lookup never fails for it (the Envoy's first sync brings the same figures).
    async fn fleet_counts(&self, key: &KeyConfig, team: Option<&TeamConfig>) -> (u64, Vec<ScopeCounts>) {
        let window = current_window();
        let Some(fleet) = &self.fleet_counts else { return (window, Vec::new()) };
        let scopes = rate_limited_counters(key, team);
        if scopes.is_empty() {
            return (window, Vec::new());
        }
        match fleet.totals(window, &scopes).await {
            Ok(totals) => (
                window,
                scopes
                    .into_iter()
                    .zip(totals)
                    .filter(|(_, (requests, tokens))| *requests > 0 || *tokens > 0)
                    .map(|(scope, (requests, tokens))| ScopeCounts { scope, requests, tokens })
                    .collect(),
            ),
            // Logged by the fleet counts, when Redis stops and starts answering.
            Err(_) => (window, Vec::new()),
        }
    }

    /// A record the key names: `None` when it is gone, UNAVAILABLE when the store fails.
    fn found<T>(&self, r: StoreResult<T>) -> Result<Option<T>, Status> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => {
                inc(&self.metrics.lookups_failed, 1);
                eprintln!("sluice: key lookup: {e}");
                Err(Status::unavailable("the key store is unavailable"))
            }
        }
    }

    /// An owner's max budget (USD) and its fleet-wide spend, when it has a max budget (only a
    /// max refuses: a soft budget alone is the control plane's business).
    async fn owner_budget(&self, scope: ScopeId, limits: &LimitsRecord) -> Result<(Option<f64>, Option<f64>), Status> {
        if limits.max_budget_nanos.is_none() {
            return Ok((None, None));
        }
        Ok((usd(limits.max_budget_nanos), self.fleet_spend(scope, limits).await?))
    }

    /// Fleet-wide spend in the scope's current window, in USD, when it has a budget.
    async fn fleet_spend(&self, scope: ScopeId, limits: &LimitsRecord) -> Result<Option<f64>, Status> {
        let Some(budget) = BudgetLimits::of(limits) else { return Ok(None) };
        let now = u64::try_from(crate::store::now_ms()).unwrap_or(0);
        match self.budgets.spend(&*self.store, &scope, &budget, now).await {
            Ok(nanos) => Ok(Some(sluice_core::cost::nanos_to_usd(nanos))),
            Err(e) => {
                inc(&self.metrics.lookups_failed, 1);
                eprintln!("sluice: key lookup: budget window: {e}");
                Err(Status::unavailable("the spend store is unavailable"))
            }
        }
    }
}

fn unsigned(v: Option<i64>) -> Option<u64> {
    v.and_then(|n| u64::try_from(n).ok())
}

fn usd(nanos: Option<i64>) -> Option<f64> {
    // Exact for any budget below ~$9M (f64 holds 2^53 nano-dollars).
    nanos.map(|n| n as f64 / 1e9)
}

fn duration(limits: &LimitsRecord) -> Option<BudgetDuration> {
    limits.budget_duration.as_deref().and_then(BudgetDuration::parse)
}

fn per_model(limits: &BTreeMap<String, i64>) -> BTreeMap<String, u64> {
    limits.iter().filter_map(|(m, v)| Some((m.clone(), u64::try_from(*v).ok()?))).collect()
}

/// A key's budget on each model group (LiteLLM's `model_max_budget`) as a budget of its own,
/// in the key's `budget_duration` windows.
pub fn model_budgets(key: &KeyRecord) -> impl Iterator<Item = (String, LimitsRecord)> + '_ {
    key.model_limits.max_budget_nanos.iter().map(|(group, nanos)| {
        let limits = LimitsRecord {
            max_budget_nanos: Some(*nanos),
            budget_duration: key.limits.budget_duration.clone(),
            ..LimitsRecord::default()
        };
        (group.clone(), limits)
    })
}

/// The gateway's view of a stored key.
pub fn key_config(hash: KeyHash, key: &KeyRecord) -> KeyConfig {
    KeyConfig {
        key_hash: Some(hash),
        master: false,
        key_id: Some(key.key_id.clone()),
        key_alias: key.key_alias.clone(),
        team_id: key.team_id.clone(),
        user_id: key.user_id.clone(),
        models: key.models.clone(),
        rpm_limit: unsigned(key.limits.rpm_limit),
        tpm_limit: unsigned(key.limits.tpm_limit),
        max_parallel_requests: unsigned(key.limits.max_parallel_requests),
        max_budget: usd(key.limits.max_budget_nanos),
        budget_duration: duration(&key.limits),
        allowed_routes: key.allowed_routes.clone(),
        allowed_ips: key.allowed_ips.clone(),
        blocked: key.blocked,
        expires: key.expires_at.and_then(|ms| Timestamp::parse(&format_rfc3339_ms(ms))),
        metadata: key.metadata.as_object().cloned().unwrap_or_default(),
        model_rpm_limit: per_model(&key.model_limits.rpm),
        model_tpm_limit: per_model(&key.model_limits.tpm),
        model_max_budget: key
            .model_limits
            .max_budget_nanos
            .iter()
            .filter_map(|(m, nanos)| Some((m.clone(), usd(Some(*nanos))?)))
            .collect(),
        model_fleet_spend: BTreeMap::new(),
        fleet_spend: None,
        // The lookup adds the team's organization and the owners' budgets.
        organization_id: key.organization_id.clone(),
        user_max_budget: None,
        user_fleet_spend: None,
        organization_max_budget: None,
        organization_fleet_spend: None,
        user_policy: None,
        organization_policy: None,
        member_policy: None,
        member_max_budget: None,
        member_fleet_spend: None,
    }
}

/// What a user or an organization imposes on its keys, if anything (its budget travels apart:
/// the control plane counts it).
fn owner_policy(models: &[String], blocked: bool, limits: &LimitsRecord) -> Option<OwnerPolicy> {
    let policy = OwnerPolicy {
        models: models.to_vec(),
        blocked,
        rpm_limit: unsigned(limits.rpm_limit),
        tpm_limit: unsigned(limits.tpm_limit),
        max_parallel_requests: unsigned(limits.max_parallel_requests),
    };
    (!policy.is_empty()).then_some(policy)
}

pub fn team_config(team: &TeamRecord) -> TeamConfig {
    TeamConfig {
        team_id: team.team_id.clone(),
        team_alias: team.team_alias.clone(),
        models: team.models.clone(),
        rpm_limit: unsigned(team.limits.rpm_limit),
        tpm_limit: unsigned(team.limits.tpm_limit),
        max_parallel_requests: unsigned(team.limits.max_parallel_requests),
        max_budget: usd(team.limits.max_budget_nanos),
        budget_duration: duration(&team.limits),
        blocked: team.blocked,
        fleet_spend: None,
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, Status> {
    serde_json::to_string(v).map_err(|_| Status::internal("cannot encode the key"))
}

#[tonic::async_trait]
impl<S: Store> KeyLookupService for KeyLookupApi<S> {
    async fn lookup(&self, request: Request<KeyLookupRequest>) -> Result<Response<KeyLookupResponse>, Status> {
        let Some(hash) = KeyHash::from_hex(&request.get_ref().key_hash) else {
            return Err(Status::invalid_argument("key_hash must be sha256:<64 hex digits>"));
        };
        let unknown = || {
            inc(&self.metrics.lookups_unknown, 1);
            Ok(Response::new(KeyLookupResponse::default()))
        };
        // The master key (LiteLLM lets it call models too): every model, no limit, its spend
        // recorded as `master`.
        if self.master_key.is_some_and(|m| m.ct_eq(&hash)) {
            inc(&self.metrics.lookups_found, 1);
            let master = KeyConfig {
                key_hash: Some(hash),
                master: true,
                key_id: Some(MASTER_KEY_ID.into()),
                key_alias: Some("master key".into()),
                ..Default::default()
            };
            return Ok(Response::new(KeyLookupResponse { key_json: json(&master)?, ..Default::default() }));
        }
        let key = match self.store.get_key(&KeyLookup::Hash(format!("sha256:{}", hash.to_hex()))).await {
            Ok(key) => key,
            Err(StoreError::NotFound) => return unknown(),
            Err(e) => {
                inc(&self.metrics.lookups_failed, 1);
                eprintln!("sluice: key lookup: {e}");
                return Err(Status::unavailable("the key store is unavailable"));
            }
        };
        // Management and read-only keys are for the admin API only; the gateway never knows them.
        if key.key_type != KeyType::LlmApi {
            return unknown();
        }
        let team = match &key.team_id {
            None => None,
            Some(team_id) => Some((team_id, self.found(self.store.get::<TeamRecord>(team_id).await)?)),
        };
        let team_answer = match &team {
            None => None,
            Some((_, Some(team))) => {
                let mut config = team_config(team);
                config.fleet_spend = self.fleet_spend(ScopeId::Team(team.team_id.clone()), &team.limits).await?;
                Some(config)
            }
            // A key whose team is gone is refused like a key of a blocked team would be.
            Some((team_id, None)) => {
                Some(TeamConfig { team_id: (*team_id).clone(), blocked: true, ..Default::default() })
            }
        };
        let team_json = team_answer.as_ref().map(json).transpose()?.unwrap_or_default();
        let mut config = key_config(hash, &key);
        config.fleet_spend = self.fleet_spend(ScopeId::Key(key.key_id.clone()), &key.limits).await?;
        // Each model budget's spend, in the key's own budget window.
        for (group, limits) in model_budgets(&key) {
            let scope = ScopeId::KeyModel(key_model_scope_id(&key.key_id, &group));
            if let Some(spend) = self.fleet_spend(scope, &limits).await? {
                config.model_fleet_spend.insert(group, spend);
            }
        }
        // The user's and the organization's budgets (no counter in the filter: this answer,
        // and the invalidation when they are spent, are what enforce them).
        config.organization_id = key
            .organization_id
            .clone()
            .or_else(|| team.as_ref().and_then(|(_, t)| t.as_ref()?.organization_id.clone()));
        if let Some(user_id) = &key.user_id
            && let Some(user) = self.found(self.store.get::<UserRecord>(user_id).await)?
        {
            // LiteLLM's rule: a team's key is held to the team's budget and the member's, not its
            // owner's personal budget (whose spend still counts every key of the user).
            if key.team_id.is_none() {
                (config.user_max_budget, config.user_fleet_spend) =
                    self.owner_budget(ScopeId::User(user.user_id.clone()), &user.limits).await?;
            }
            config.user_policy = owner_policy(&user.models, false, &user.limits);
        }
        // The user's budget in the key's team (LiteLLM's team member budget).
        if let (Some(user_id), Some((_, Some(team_record)))) = (&key.user_id, &team) {
            let memberships = self.found(self.store.memberships(user_id).await)?.unwrap_or_default();
            if let Some(member) = memberships.into_iter().find(|m| m.team_id == team_record.team_id) {
                let limits = member_limits(&member.limits, team_record.member_max_budget_nanos);
                (config.member_max_budget, config.member_fleet_spend) =
                    self.owner_budget(ScopeId::member(&team_record.team_id, user_id), &limits).await?;
                config.member_policy = owner_policy(&[], false, &member.limits);
            }
        }
        if let Some(org_id) = &config.organization_id
            && let Some(org) = self.found(self.store.get::<OrgRecord>(org_id).await)?
        {
            (config.organization_max_budget, config.organization_fleet_spend) =
                self.owner_budget(ScopeId::Org(org.organization_id.clone()), &org.limits).await?;
            config.organization_policy = owner_policy(&org.models, org.blocked, &org.limits);
        }
        inc(&self.metrics.lookups_found, 1);
        let key_json = json(&config)?;
        let (fleet_window, fleet_counts) = self.fleet_counts(&config, team_answer.as_ref()).await;
        Ok(Response::new(KeyLookupResponse { key_json, team_json, fleet_window, fleet_counts }))
    }

    async fn watch_invalidations(
        &self,
        request: Request<WatchInvalidationsRequest>,
    ) -> Result<Response<WatchInvalidationsResponse>, Status> {
        Ok(Response::new(self.invalidations.watch(request.get_ref(), WATCH_HOLD).await))
    }
}
