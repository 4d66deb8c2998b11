//! Budgets across the fleet: the control plane counts the spend of each budgeted key, team,
//! user and organization in its current `budget_duration` window from the usage every Envoy
//! ships, and
//!
//! - answers key lookups with that fleet-wide spend (`KeyConfig::fleet_spend`,
//!   `user_fleet_spend`, `organization_fleet_spend`, `TeamConfig::fleet_spend`), so an Envoy
//!   refuses a key whose own, team's, user's or organization's budget was spent on any Envoy;
//! - when a scope reaches its `max_budget`, publishes an invalidation (the key, or every key of
//!   the team, user or organization) so every Envoy looks it up again (and refuses it) within
//!   the revocation time, and does the same when its window ends, which lets it spend again;
//! - when it reaches its `soft_budget`, raises an alert once per window (log + metric);
//! - with a webhook configured (`alerting.rs`), POSTs LiteLLM's `threshold_crossed` and
//!   `budget_crossed` events for those two moments, without waiting for the delivery.
//!
//! Users and organizations have no counter in the filter: only this count (and the lookup
//! answer built from it) enforces their budgets.
//!
//! Windows are epoch-aligned, as the filter's own counters are (`BudgetDuration::period`), so
//! a window resets exactly once. Each Envoy still reserves and settles every request against
//! its own counter, which bounds overspend within one Envoy; across Envoys a budget can be
//! overrun by what the others spend until the invalidation reaches them.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::time::BudgetDuration;
use tokio::sync::{Mutex, MutexGuard};

use crate::alerting::{Delivery, Webhook, WebhookEvent};
use crate::invalidation::{Invalidations, Target};
use crate::metrics::{Metrics, inc};
use crate::store::{BudgetScope, LimitsRecord, Store, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScopeId {
    Key(String),
    Team(String),
    User(String),
    Org(String),
}

impl ScopeId {
    fn store_scope(&self) -> BudgetScope<'_> {
        match self {
            Self::Key(id) => BudgetScope::Key(id),
            Self::Team(id) => BudgetScope::Team(id),
            Self::User(id) => BudgetScope::User(id),
            Self::Org(id) => BudgetScope::Org(id),
        }
    }

    fn target(&self) -> Target {
        match self {
            Self::Key(id) => Target::Key(id.clone()),
            Self::Team(id) => Target::Team(id.clone()),
            Self::User(id) => Target::User(id.clone()),
            Self::Org(id) => Target::Org(id.clone()),
        }
    }

    /// LiteLLM's `event_group` and the label of its `event_message`.
    fn group(&self) -> (&'static str, &'static str) {
        match self {
            Self::Key(_) => ("key", "Key"),
            Self::Team(_) => ("team", "Team"),
            Self::User(_) => ("user", "User"),
            Self::Org(_) => ("organization", "Organization"),
        }
    }
}

/// The key whose usage was being counted and its owners, for the webhook's event (each field
/// as the store has it; the key by its id only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendContext {
    pub key_id: Option<String>,
    pub key_alias: Option<String>,
    pub user_id: Option<String>,
    pub user_email: Option<String>,
    pub team_id: Option<String>,
    pub team_alias: Option<String>,
    pub organization_id: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Crossed {
    Soft,
    Max,
}

/// A scope's budget settings (only scopes with a max or soft budget are tracked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    pub max_nanos: Option<u64>,
    pub soft_nanos: Option<u64>,
    pub duration: Option<BudgetDuration>,
}

impl BudgetLimits {
    pub fn of(limits: &LimitsRecord) -> Option<Self> {
        let nanos = |v: Option<i64>| v.and_then(|n| u64::try_from(n).ok());
        let out = Self {
            max_nanos: nanos(limits.max_budget_nanos),
            soft_nanos: nanos(limits.soft_budget_nanos),
            duration: limits.budget_duration.as_deref().and_then(BudgetDuration::parse),
        };
        (out.max_nanos.is_some() || out.soft_nanos.is_some()).then_some(out)
    }

    /// The window containing `now_ms`: [start, end) in Unix ms; a budget without a duration
    /// has one window, forever.
    fn window(&self, now_ms: u64) -> (u64, Option<u64>) {
        match self.duration {
            None => (0, None),
            Some(d) => (d.period_start_secs(now_ms) * 1000, Some(d.period_end_secs(now_ms) * 1000)),
        }
    }
}

#[derive(Debug)]
pub struct Window {
    start_ms: u64,
    end_ms: Option<u64>,
    spend_nanos: u64,
    /// The max budget this window was found spent against, and the soft budget it alerted on
    /// (a budget changed since is checked again).
    exhausted: Option<u64>,
    soft_alerted: Option<u64>,
}

pub struct BudgetTracker {
    windows: Mutex<HashMap<ScopeId, Window>>,
    invalidations: Arc<Invalidations>,
    metrics: Arc<Metrics>,
    webhook: Option<Webhook>,
}

pub type Windows<'a> = MutexGuard<'a, HashMap<ScopeId, Window>>;

impl BudgetTracker {
    /// Without a webhook: alerts go to the log and the metrics only.
    pub fn new(invalidations: Arc<Invalidations>, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_webhook(invalidations, metrics, None)
    }

    /// Alerts also POSTed to `url` (LiteLLM's `alerting: ["webhook"]` with `WEBHOOK_URL`).
    pub fn with_webhook_url(
        invalidations: Arc<Invalidations>,
        metrics: Arc<Metrics>,
        url: Option<crate::alerting::WebhookUrl>,
    ) -> Arc<Self> {
        let webhook = url.and_then(|url| Webhook::start(url, Arc::clone(&metrics), Delivery::default()));
        Self::with_webhook(invalidations, metrics, webhook)
    }

    pub fn with_webhook(
        invalidations: Arc<Invalidations>,
        metrics: Arc<Metrics>,
        webhook: Option<Webhook>,
    ) -> Arc<Self> {
        Arc::new(Self { windows: Mutex::new(HashMap::new()), invalidations, metrics, webhook })
    }

    /// Held while a batch is stored and counted, so that a window loaded from the database
    /// meanwhile counts each record exactly once.
    pub async fn lock(&self) -> Windows<'_> {
        self.windows.lock().await
    }

    /// The scope's window, loaded from the database when unknown or when its window ended.
    /// `true` when just loaded (the total already includes everything stored so far).
    async fn window<'a, S: Store>(
        windows: &'a mut Windows<'_>,
        store: &S,
        scope: &ScopeId,
        limits: &BudgetLimits,
        now_ms: u64,
    ) -> StoreResult<(&'a mut Window, bool)> {
        let (start_ms, end_ms) = limits.window(now_ms);
        let current = windows.get(scope).is_some_and(|w| w.start_ms == start_ms);
        if !current {
            let since = i64::try_from(start_ms).unwrap_or(i64::MAX);
            let spent = store.spend_since(scope.store_scope(), since).await?;
            let spend_nanos = u64::try_from(spent).unwrap_or(0);
            windows
                .insert(scope.clone(), Window { start_ms, end_ms, spend_nanos, exhausted: None, soft_alerted: None });
        }
        let window = windows.get_mut(scope).ok_or(crate::store::StoreError::NotFound)?;
        Ok((window, !current))
    }

    /// The fleet-wide spend of a scope in its current window (for a key lookup's answer).
    pub async fn spend<S: Store>(
        &self,
        store: &S,
        scope: &ScopeId,
        limits: &BudgetLimits,
        now_ms: u64,
    ) -> StoreResult<u64> {
        let mut windows = self.lock().await;
        let (window, _) = Self::window(&mut windows, store, scope, limits, now_ms).await?;
        Ok(window.spend_nanos)
    }

    /// Counts a batch's new spend for one scope (with the lock held since before the batch
    /// was stored), and acts on the thresholds it crosses. `context` is the key whose usage
    /// this is (for the webhook's event).
    #[allow(clippy::too_many_arguments)]
    pub async fn add<S: Store>(
        self: &Arc<Self>,
        windows: &mut Windows<'_>,
        store: &S,
        scope: &ScopeId,
        limits: &BudgetLimits,
        nanos: u64,
        now_ms: u64,
        context: &SpendContext,
    ) -> StoreResult<()> {
        let (window, loaded) = Self::window(windows, store, scope, limits, now_ms).await?;
        if !loaded {
            window.spend_nanos = window.spend_nanos.saturating_add(nanos);
        }
        if let Some(soft) = limits.soft_nanos
            && window.spend_nanos >= soft
            && window.soft_alerted != Some(soft)
        {
            window.soft_alerted = Some(soft);
            inc(&self.metrics.budget_soft_alerts, 1);
            eprintln!(
                "sluice: budget alert: {scope:?} spent {} of its soft budget {} (USD)",
                usd(window.spend_nanos),
                usd(soft)
            );
            self.notify(Crossed::Soft, scope, window.spend_nanos, limits, context);
        }
        if let Some(max) = limits.max_nanos
            && window.spend_nanos >= max
            && window.exhausted != Some(max)
        {
            window.exhausted = Some(max);
            inc(&self.metrics.budget_exhausted, 1);
            eprintln!(
                "sluice: budget spent: {scope:?} at {} of {} (USD); refused on every Envoy",
                usd(window.spend_nanos),
                usd(max)
            );
            self.invalidations.publish(scope.target());
            let (spend_nanos, start_ms, end_ms) = (window.spend_nanos, window.start_ms, window.end_ms);
            if let Some(end_ms) = end_ms {
                self.reset_at(scope.clone(), start_ms, end_ms, now_ms);
            }
            self.notify(Crossed::Max, scope, spend_nanos, limits, context);
        }
        Ok(())
    }

    /// The webhook's event for a threshold just crossed (queued; never waits).
    fn notify(&self, crossed: Crossed, scope: &ScopeId, spend_nanos: u64, limits: &BudgetLimits, c: &SpendContext) {
        let Some(webhook) = &self.webhook else { return };
        webhook.send(event(crossed, scope, spend_nanos, limits, c));
    }

    /// When the window ends, forget it (the next lookup starts the new window at the spend
    /// since its start) and make Envoys ask again, so the scope can spend again.
    fn reset_at(self: &Arc<Self>, scope: ScopeId, start_ms: u64, end_ms: u64, now_ms: u64) {
        let tracker = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(end_ms.saturating_sub(now_ms))).await;
            let mut windows = tracker.lock().await;
            if windows.get(&scope).is_some_and(|w| w.start_ms == start_ms) {
                windows.remove(&scope);
            }
            drop(windows);
            tracker.invalidations.publish(scope.target());
        });
    }
}

fn usd(nanos: u64) -> f64 {
    sluice_core::cost::nanos_to_usd(nanos)
}

/// LiteLLM's `WebhookEvent` for a scope that crossed its soft or max budget.
fn event(crossed: Crossed, scope: &ScopeId, spend_nanos: u64, limits: &BudgetLimits, c: &SpendContext) -> WebhookEvent {
    let (event_group, label) = scope.group();
    let (event, what) = match crossed {
        Crossed::Soft => ("threshold_crossed", "Soft Budget Crossed"),
        Crossed::Max => ("budget_crossed", "Budget Crossed"),
    };
    // The scope's own id wins over the key's (they agree unless the key moved meanwhile).
    let (mut token, mut user_id, mut team_id, mut organization_id) =
        (c.key_id.clone(), c.user_id.clone(), c.team_id.clone(), c.organization_id.clone());
    match scope {
        ScopeId::Key(id) => token = Some(id.clone()),
        ScopeId::Team(id) => team_id = Some(id.clone()),
        ScopeId::User(id) => user_id = Some(id.clone()),
        ScopeId::Org(id) => organization_id = Some(id.clone()),
    }
    WebhookEvent {
        spend: usd(spend_nanos),
        max_budget: limits.max_nanos.map(usd),
        soft_budget: limits.soft_nanos.map(usd),
        token,
        customer_id: None,
        user_id,
        team_id,
        team_alias: c.team_alias.clone(),
        user_email: c.user_email.clone(),
        key_alias: c.key_alias.clone(),
        organization_id,
        projected_exceeded_date: None,
        projected_spend: None,
        event,
        event_group,
        event_message: format!("{label} Budget: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_proto::gateway::v1::WatchInvalidationsRequest;
    use sqlx::Executor;

    use super::*;
    use crate::alerting::WebhookUrl;
    use crate::alerting::tests::receiver;
    use crate::store::{SpendLog, SpendStore, SqlStore};

    /// A fresh database: a SQLite file, or a new database on the Postgres the control plane's
    /// tests use (`SLUICE_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432`).
    /// Also returns how to drop it (Postgres).
    async fn store(postgres: bool) -> (SqlStore, Option<(String, String)>) {
        let name = format!("sluice_budget_{}_{}", std::process::id(), crate::store::now_ms());
        if !postgres {
            let path = format!("sqlite:{}/{name}.db", std::env::temp_dir().display());
            return (SqlStore::open(&path).await.unwrap(), None);
        }
        let server = std::env::var("SLUICE_TEST_POSTGRES").unwrap_or("postgres://postgres@127.0.0.1:5432".into());
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(&format!("{server}/test")).await.unwrap();
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        admin.close().await;
        (SqlStore::open(&format!("{server}/{name}")).await.unwrap(), Some((server, name)))
    }

    fn spent(id: &str, user: &str, org: &str, cost_nanos: i64) -> SpendLog {
        SpendLog {
            record_id: id.into(),
            key_id: Some("key_1".into()),
            user_id: Some(user.into()),
            organization_id: Some(org.into()),
            model_group: "gpt-4o".into(),
            cost_nanos,
            outcome: "completed".into(),
            start_ms: crate::store::now_ms(),
            ..Default::default()
        }
    }

    /// One soft-budget and one max-budget event per scope and window, in LiteLLM's shape, each
    /// naming the key by its id; a max budget reached also tells Envoys to drop the owner's keys.
    async fn thresholds_post_one_event_each(postgres: bool) {
        let (store, cleanup) = store(postgres).await;
        let (url, got) = receiver(vec![200]).await;
        let metrics = Arc::new(Metrics::default());
        let invalidations = Arc::new(Invalidations::new("e".into()));
        let fast = Delivery { first_backoff: Duration::from_millis(10), ..Delivery::default() };
        let webhook = Webhook::start(WebhookUrl::parse(&url).unwrap(), Arc::clone(&metrics), fast);
        let tracker = BudgetTracker::with_webhook(Arc::clone(&invalidations), Arc::clone(&metrics), webhook);
        let usd = |n: f64| (n * 1e9) as u64;
        let user = BudgetLimits { max_nanos: Some(usd(0.01)), soft_nanos: Some(usd(0.005)), duration: None };
        let org = BudgetLimits { max_nanos: Some(usd(1.0)), soft_nanos: Some(usd(0.008)), duration: None };
        let context = SpendContext {
            key_id: Some("key_1".into()),
            key_alias: Some("svc".into()),
            user_id: Some("alice".into()),
            user_email: Some("alice@example.com".into()),
            organization_id: Some("acme".into()),
            ..SpendContext::default()
        };
        // Each step as ingestion does it: stored, then counted, under the tracker's lock.
        for (i, nanos) in [usd(0.006), usd(0.002), usd(0.004), usd(0.003)].into_iter().enumerate() {
            let mut windows = tracker.lock().await;
            let log = spent(&format!("r{i}"), "alice", "acme", i64::try_from(nanos).unwrap());
            store.record_new_spend(&[log]).await.unwrap();
            let now = u64::try_from(crate::store::now_ms()).unwrap();
            for (scope, limits) in [(ScopeId::User("alice".into()), &user), (ScopeId::Org("acme".into()), &org)] {
                tracker.add(&mut windows, &store, &scope, limits, nanos, now, &context).await.unwrap();
            }
        }
        let from_start = WatchInvalidationsRequest { epoch: "e".into(), after_seq: 0 };
        let watched = invalidations.watch(&from_start, Duration::ZERO).await;
        assert_eq!(
            (watched.user_ids, watched.org_ids),
            (vec!["alice".to_owned()], vec![]),
            "only alice's max was reached"
        );

        for _ in 0..200 {
            if got.lock().unwrap().len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let events: Vec<serde_json::Value> = got.lock().unwrap().iter().map(|(_, body)| body.clone()).collect();
        let kinds: Vec<(&str, &str)> =
            events.iter().map(|e| (e["event_group"].as_str().unwrap(), e["event"].as_str().unwrap())).collect();
        assert_eq!(
            kinds,
            [("user", "threshold_crossed"), ("organization", "threshold_crossed"), ("user", "budget_crossed")],
            "{events:#?}"
        );
        let crossed = &events[2];
        assert_eq!(crossed["event_message"], "User Budget: Budget Crossed");
        assert!((crossed["spend"].as_f64().unwrap() - 0.012).abs() < 1e-9);
        assert_eq!((crossed["max_budget"].as_f64(), crossed["soft_budget"].as_f64()), (Some(0.01), Some(0.005)));
        assert_eq!((crossed["token"].as_str(), crossed["key_alias"].as_str()), (Some("key_1"), Some("svc")));
        assert_eq!((crossed["user_id"].as_str(), crossed["organization_id"].as_str()), (Some("alice"), Some("acme")));
        assert_eq!(crossed["user_email"], "alice@example.com");
        assert!(crossed["team_id"].is_null());
        assert_eq!(events[1]["event_message"], "Organization Budget: Soft Budget Crossed");
        assert_eq!(metrics.webhook_sent.load(std::sync::atomic::Ordering::Relaxed), 3);
        if let Some((server, name)) = cleanup {
            store.pool().close().await;
            let admin = sqlx::AnyPool::connect(&format!("{server}/test")).await.unwrap();
            let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
        }
    }

    #[tokio::test]
    async fn webhook_events_sqlite() {
        thresholds_post_one_event_each(false).await;
    }

    #[tokio::test]
    async fn webhook_events_postgres() {
        thresholds_post_one_event_each(true).await;
    }
}
