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
//! The windows live in the database (`budget_windows`), not in this process, so that every
//! replica of the control plane counts and answers the same spend: a batch adds its new
//! records' cost to each window they count against in the transaction that stores them, and
//! the replica whose batch first takes a window to a threshold claims its alert there (one
//! alert per window and threshold across the fleet). A lookup reads the window's row. A record
//! counts in the window its request started in (`start_ms`, the Envoy's clock), as the filter's
//! own counters do. Windows are epoch-aligned (`BudgetDuration::period`), so a window resets
//! exactly once. Each Envoy still reserves and settles every request against its own counter,
//! which bounds overspend within one Envoy; across Envoys a budget can be overrun by what the
//! others spend until the invalidation reaches them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sluice_core::config::{ProxyBudget, member_scope_id, member_scope_parts};
use sluice_core::cost::usd_to_nanos;
use sluice_core::time::BudgetDuration;

use crate::alerting::{Delivery, Webhook, WebhookEvent};
use crate::invalidation::{Invalidations, Target};
use crate::metrics::{Metrics, inc};
use crate::store::{BudgetWindow, Charge, LimitsRecord, ScopeKind, Store, StoreResult, WindowTotal};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScopeId {
    Key(String),
    Team(String),
    User(String),
    Org(String),
    /// A user in a team, by [`member_scope_id`].
    Member(String),
    /// An end user (LiteLLM's customer).
    Customer(String),
    /// A key on one model group, by [`key_model_scope_id`].
    KeyModel(String),
    /// The whole gateway (`litellm_settings.max_budget`).
    Proxy,
}

/// A key's budget on one model group (LiteLLM's `model_max_budget`), as its scope names it:
/// the key's id and the group joined by `|` (no key id contains one).
pub fn key_model_scope_id(key_id: &str, model_group: &str) -> String {
    format!("{key_id}|{model_group}")
}

/// The key of a [`key_model_scope_id`].
fn key_of_key_model(id: &str) -> &str {
    id.split_once('|').map_or(id, |(key, _)| key)
}

impl ScopeId {
    /// A team member's scope.
    pub fn member(team_id: &str, user_id: &str) -> Self {
        Self::Member(member_scope_id(team_id, user_id))
    }

    fn kind_and_id(&self) -> (ScopeKind, &str) {
        match self {
            Self::Key(id) => (ScopeKind::Key, id),
            Self::Team(id) => (ScopeKind::Team, id),
            Self::User(id) => (ScopeKind::User, id),
            Self::Org(id) => (ScopeKind::Org, id),
            Self::Member(id) => (ScopeKind::Member, id),
            Self::Customer(id) => (ScopeKind::Customer, id),
            Self::KeyModel(id) => (ScopeKind::KeyModel, id),
            Self::Proxy => (ScopeKind::Proxy, "proxy"),
        }
    }

    fn of(kind: ScopeKind, id: &str) -> Self {
        match kind {
            ScopeKind::Key => Self::Key(id.to_owned()),
            ScopeKind::Team => Self::Team(id.to_owned()),
            ScopeKind::User => Self::User(id.to_owned()),
            ScopeKind::Org => Self::Org(id.to_owned()),
            ScopeKind::Member => Self::Member(id.to_owned()),
            ScopeKind::Customer => Self::Customer(id.to_owned()),
            ScopeKind::KeyModel => Self::KeyModel(id.to_owned()),
            ScopeKind::Proxy => Self::Proxy,
        }
    }

    /// The keys Envoys must look up again when the scope's budget is spent or its window ends;
    /// None for a customer and the gateway, whose standing travels in the filter config instead.
    fn target(&self) -> Option<Target> {
        Some(match self {
            Self::Key(id) => Target::Key(id.clone()),
            Self::Team(id) => Target::Team(id.clone()),
            Self::User(id) => Target::User(id.clone()),
            Self::Org(id) => Target::Org(id.clone()),
            // Every key of the user (its keys in this team among them).
            Self::Member(id) => Target::User(member_scope_parts(id).1.to_owned()),
            Self::KeyModel(id) => Target::Key(key_of_key_model(id).to_owned()),
            Self::Customer(_) | Self::Proxy => return None,
        })
    }

    /// LiteLLM's `event_group` and the label of its `event_message`.
    fn group(&self) -> (&'static str, &'static str) {
        match self {
            Self::Key(_) => ("key", "Key"),
            Self::Team(_) => ("team", "Team"),
            Self::User(_) => ("user", "User"),
            Self::Org(_) => ("organization", "Organization"),
            Self::Member(_) => ("team", "Team member"),
            Self::Customer(_) => ("customer", "Customer"),
            Self::KeyModel(_) => ("key", "Key model"),
            Self::Proxy => ("proxy", "Proxy"),
        }
    }
}

/// A team member's budget limits (LiteLLM's team member budget): its own
/// `max_budget_in_team`, else the team's `team_member_budget` for every member; its window is
/// the membership's `budget_duration` (none: one window, as for any budget without a duration).
pub fn member_limits(member: &LimitsRecord, team_default_nanos: Option<i64>) -> LimitsRecord {
    let mut limits = member.clone();
    limits.max_budget_nanos = limits.max_budget_nanos.or(team_default_nanos);
    limits
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
    /// A max budget of `usd` (no soft one) in `duration`'s windows (one for ever without).
    pub fn max_usd(usd: f64, duration: Option<BudgetDuration>) -> Self {
        Self { max_nanos: Some(usd_to_nanos(usd)), soft_nanos: None, duration }
    }

    pub fn of(limits: &LimitsRecord) -> Option<Self> {
        let nanos = |v: Option<i64>| v.and_then(|n| u64::try_from(n).ok());
        let out = Self {
            max_nanos: nanos(limits.max_budget_nanos),
            soft_nanos: nanos(limits.soft_budget_nanos),
            duration: limits.budget_duration.as_deref().and_then(BudgetDuration::parse),
        };
        (out.max_nanos.is_some() || out.soft_nanos.is_some()).then_some(out)
    }

    /// The window containing `at_ms`: [start, end) in Unix ms; a budget without a duration
    /// has one window, forever.
    pub(crate) fn window(&self, at_ms: u64) -> (u64, Option<u64>) {
        match self.duration {
            None => (0, None),
            Some(d) => (d.period_start_secs(at_ms) * 1000, Some(d.period_end_secs(at_ms) * 1000)),
        }
    }

    /// The scope's window containing `at_ms`, as the store keys it.
    fn budget_window(&self, scope: &ScopeId, at_ms: u64) -> BudgetWindow {
        let (start_ms, end_ms) = self.window(at_ms);
        let (kind, id) = scope.kind_and_id();
        let signed = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX);
        BudgetWindow { kind, id: id.to_owned(), start_ms: signed(start_ms), end_ms: end_ms.map(signed) }
    }
}

/// When a budget of `duration` next resets (LiteLLM's `budget_reset_at`, RFC 3339): the end of
/// its current window on the calendar every Envoy counts by (`BudgetDuration`); none without a
/// duration (or one that does not parse).
pub fn budget_reset_at(duration: Option<&str>) -> Option<String> {
    let duration = BudgetDuration::parse(duration?)?;
    let now_ms = u64::try_from(crate::store::now_ms()).unwrap_or(0);
    let end_ms = duration.period_end_secs(now_ms).saturating_mul(1000);
    Some(sluice_core::time::format_rfc3339_ms(i64::try_from(end_ms).unwrap_or(i64::MAX)))
}

/// Whether the gateway's own budget is spent across the fleet in its current window (for the
/// filter config, `crate::customers`).
pub async fn proxy_budget_spent<S: Store>(store: &S, budget: &ProxyBudget, now_ms: u64) -> StoreResult<bool> {
    let limits = BudgetLimits::max_usd(budget.max_budget, budget.budget_duration);
    let spent = store.window_spend(&limits.budget_window(&ScopeId::Proxy, now_ms)).await?;
    Ok(limits.max_nanos.is_some_and(|max| u64::try_from(spent).unwrap_or(0) >= max))
}

/// What a scope has spent in its current budget window, as LiteLLM shows an object's
/// `spend`: its `budget_duration`'s window, all time without one; budget or not.
pub async fn current_spend<S: Store>(store: &S, scope: &ScopeId, limits: &LimitsRecord) -> StoreResult<f64> {
    let now_ms = u64::try_from(crate::store::now_ms()).unwrap_or(0);
    let window_of = BudgetLimits {
        max_nanos: None,
        soft_nanos: None,
        duration: limits.budget_duration.as_deref().and_then(BudgetDuration::parse),
    };
    let spent = store.window_spend(&window_of.budget_window(scope, now_ms)).await?;
    Ok(sluice_core::cost::nanos_to_usd(u64::try_from(spent).unwrap_or(0)))
}

pub struct BudgetTracker {
    invalidations: Arc<Invalidations>,
    /// Wakes the xDS snapshot's rebuild (customers' spent budgets are in the filter config).
    config_changes: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
    metrics: Arc<Metrics>,
    webhook: Option<Webhook>,
    /// Spent windows whose end this process will announce (once each): the replica that
    /// found one spent, and any replica that answered a lookup with it (duplicates across
    /// replicas are harmless: an Envoy looks the key up once more).
    ending: Mutex<HashSet<(ScopeId, u64)>>,
    /// Windows this process has told its Envoys are spent, by (scope, window start, max
    /// budget), with the window's end (entries go once it has passed).
    refused: Mutex<HashMap<(ScopeId, i64, i64), Option<i64>>>,
}

impl BudgetTracker {
    /// Without a webhook: alerts go to the log and the metrics only.
    pub fn new(invalidations: Arc<Invalidations>, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_webhook(invalidations, metrics, None)
    }

    /// Alerts also POSTed to `url` (LiteLLM's `alerting: ["webhook"]` with `WEBHOOK_URL`).
    pub fn with_webhook_url(
        invalidations: Arc<Invalidations>,
        metrics: Arc<Metrics>,
        url: Option<crate::http_client::HttpTarget>,
    ) -> Arc<Self> {
        let webhook = url.and_then(|url| Webhook::start(url, Arc::clone(&metrics), Delivery::default()));
        Self::with_webhook(invalidations, metrics, webhook)
    }

    pub fn with_webhook(
        invalidations: Arc<Invalidations>,
        metrics: Arc<Metrics>,
        webhook: Option<Webhook>,
    ) -> Arc<Self> {
        Arc::new(Self {
            invalidations,
            config_changes: std::sync::OnceLock::new(),
            metrics,
            webhook,
            ending: Mutex::new(HashSet::new()),
            refused: Mutex::new(HashMap::new()),
        })
    }

    /// Customers' budgets spent (and their windows' ends) wake `config_changes`: the xDS
    /// snapshot's rebuild, which sends every Envoy their standing (`crate::customers`).
    pub fn rebuild_config_on(&self, config_changes: Arc<tokio::sync::Notify>) {
        let _ = self.config_changes.set(config_changes);
    }

    /// The fleet-wide spend of a scope in its current window (for a key lookup's answer).
    pub async fn spend<S: Store>(
        self: &Arc<Self>,
        store: &S,
        scope: &ScopeId,
        limits: &BudgetLimits,
        now_ms: u64,
    ) -> StoreResult<u64> {
        let window = limits.budget_window(scope, now_ms);
        let spend_nanos = u64::try_from(store.window_spend(&window).await?).unwrap_or(0);
        if limits.max_nanos.is_some_and(|max| spend_nanos >= max) {
            // This answer refuses the key until the window ends: say so when it does.
            self.announce_end(scope, &window, now_ms);
        }
        Ok(spend_nanos)
    }

    /// What record `record` (which started at `start_ms`) counts against for this scope. A
    /// window that has already ended (a record shipped late) is counted but alerts nobody.
    pub fn charge(record: usize, scope: &ScopeId, limits: &BudgetLimits, start_ms: i64, now_ms: u64) -> Charge {
        let window = limits.budget_window(scope, u64::try_from(start_ms).unwrap_or(0));
        let open = window.end_ms.is_none_or(|end| u64::try_from(end).is_ok_and(|end| end > now_ms));
        let signed = |n: Option<u64>| n.and_then(|n| i64::try_from(n).ok()).filter(|_| open);
        Charge { record, window, soft_nanos: signed(limits.soft_nanos), max_nanos: signed(limits.max_nanos) }
    }

    /// Acts on the thresholds a stored batch claimed (`SpendStore::record_charged_spend`):
    /// each alert is raised by the one replica whose batch claimed it. `scopes` has each
    /// scope's limits and the last key that spent on it (for the webhook's event).
    ///
    /// A batch that adds to an open window another replica already found spent means that an
    /// Envoy shipping to this replica is still admitting the scope: its invalidation reaches
    /// this replica's watchers only through Redis, which may be down. So this replica tells its
    /// own Envoys too (once per window and process; duplicates are harmless), but raises no
    /// alert: that was the claimer's.
    /// LiteLLM's budget gauges (`usage_metrics.rs`) for a scope spend was just counted against.
    fn show_standing(
        &self,
        scope: &ScopeId,
        limits: &BudgetLimits,
        context: &SpendContext,
        window: &BudgetWindow,
        spend_nanos: u64,
    ) {
        use crate::usage_metrics::{BudgetOwner, BudgetStanding};
        let Some(max) = limits.max_nanos else { return };
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let owner = match scope {
            ScopeId::Key(id) => {
                BudgetOwner::Key { hashed_api_key: id.clone(), api_key_alias: text(&context.key_alias) }
            }
            ScopeId::Team(id) => BudgetOwner::Team { team: id.clone(), team_alias: text(&context.team_alias) },
            ScopeId::User(id) => BudgetOwner::User { user: id.clone() },
            ScopeId::Org(id) => BudgetOwner::Org { org_id: id.clone() },
            ScopeId::Customer(id) => BudgetOwner::Customer { end_user: id.clone() },
            // Not among LiteLLM's gauges.
            ScopeId::Member(_) | ScopeId::KeyModel(_) | ScopeId::Proxy => return,
        };
        let standing = BudgetStanding { max_usd: usd(max), spend_usd: usd(spend_nanos), resets_at_ms: window.end_ms };
        self.metrics.usage.budget(owner, standing);
    }

    pub fn counted(
        self: &Arc<Self>,
        totals: &[WindowTotal],
        scopes: &HashMap<ScopeId, (BudgetLimits, &SpendContext)>,
        now_ms: u64,
    ) {
        for total in totals {
            let scope = ScopeId::of(total.window.kind, &total.window.id);
            let Some((limits, context)) = scopes.get(&scope) else { continue };
            let spend_nanos = u64::try_from(total.spend_nanos).unwrap_or(0);
            self.show_standing(&scope, limits, context, &total.window, spend_nanos);
            if total.max_claimed.is_none()
                && let Some(max) = limits.max_nanos.filter(|max| spend_nanos >= *max)
                && self.first_refusal(&scope, &total.window, max, now_ms)
            {
                eprintln!(
                    "sluice: budget spent: {scope:?} at {} of {} (USD), found spent by another replica; \
                     refused on this replica's Envoys too",
                    usd(spend_nanos),
                    usd(max)
                );
                self.tell_envoys(&scope);
                self.announce_end(&scope, &total.window, now_ms);
            }
            let usd_of = |n: i64| usd(u64::try_from(n).unwrap_or(0));
            if let Some(soft) = total.soft_claimed {
                inc(&self.metrics.budget_soft_alerts, 1);
                eprintln!(
                    "sluice: budget alert: {scope:?} spent {} of its soft budget {} (USD)",
                    usd(spend_nanos),
                    usd_of(soft)
                );
                self.notify(Crossed::Soft, &scope, spend_nanos, limits, context);
            }
            if let Some(max) = total.max_claimed {
                self.first_refusal(&scope, &total.window, u64::try_from(max).unwrap_or(0), now_ms);
                inc(&self.metrics.budget_exhausted, 1);
                eprintln!(
                    "sluice: budget spent: {scope:?} at {} of {} (USD); refused on every Envoy",
                    usd(spend_nanos),
                    usd_of(max)
                );
                self.tell_envoys(&scope);
                self.announce_end(&scope, &total.window, now_ms);
                self.notify(Crossed::Max, &scope, spend_nanos, limits, context);
            }
        }
    }

    /// Makes every Envoy act on the scope's new standing: its keys are looked up again, or,
    /// for a customer, the filter config is rebuilt with it.
    fn tell_envoys(&self, scope: &ScopeId) {
        match scope.target() {
            Some(target) => self.invalidations.publish(target),
            None => {
                if let Some(config) = self.config_changes.get() {
                    config.notify_one();
                }
            }
        }
    }

    /// Whether this process has yet to tell its Envoys that `scope`'s open `window` is spent
    /// at `max` (and remembers that it now has). False for a window that has ended.
    fn first_refusal(&self, scope: &ScopeId, window: &BudgetWindow, max: u64, now_ms: u64) -> bool {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        if window.end_ms.is_some_and(|end| end <= now) {
            return false;
        }
        let Ok(mut refused) = self.refused.lock() else { return false };
        refused.retain(|_, end| end.is_none_or(|end| end > now));
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        refused.insert((scope.clone(), window.start_ms, max), window.end_ms).is_none()
    }

    /// The webhook's event for a threshold just crossed (queued; never waits).
    fn notify(&self, crossed: Crossed, scope: &ScopeId, spend_nanos: u64, limits: &BudgetLimits, c: &SpendContext) {
        let Some(webhook) = &self.webhook else { return };
        webhook.send(event(crossed, scope, spend_nanos, limits, c));
    }

    /// When a spent window ends, make Envoys ask again (the new window starts from what was
    /// spent in it), so the scope can spend again. Once per window and process.
    fn announce_end(self: &Arc<Self>, scope: &ScopeId, window: &BudgetWindow, now_ms: u64) {
        let Some(end_ms) = window.end_ms.and_then(|end| u64::try_from(end).ok()) else { return };
        let entry = (scope.clone(), end_ms);
        let first = self.ending.lock().is_ok_and(|mut ending| ending.insert(entry.clone()));
        if !first {
            return;
        }
        let tracker = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(end_ms.saturating_sub(now_ms))).await;
            if let Ok(mut ending) = tracker.ending.lock() {
                ending.remove(&entry);
            }
            tracker.tell_envoys(&entry.0);
        });
    }
}

/// How long an ended window's row is kept (for records shipped late), and how often old ones go.
const KEEP_ENDED: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Forgets windows that ended more than a day ago, every ten minutes (any replica may: the
/// deletes are idempotent). A record older than that recreates its window from `spend_logs`.
pub async fn prune_windows<S: Store>(store: Arc<S>) {
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        let keep_ms = i64::try_from(KEEP_ENDED.as_millis()).unwrap_or(i64::MAX);
        if let Err(e) = store.prune_budget_windows(crate::store::now_ms().saturating_sub(keep_ms)).await {
            eprintln!("sluice: pruning budget windows: {e}");
        }
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
        ScopeId::Member(id) => {
            let (team, user) = member_scope_parts(id);
            (team_id, user_id) = (Some(team.to_owned()), Some(user.to_owned()));
        }
        ScopeId::KeyModel(id) => token = Some(key_of_key_model(id).to_owned()),
        ScopeId::Customer(_) | ScopeId::Proxy => {}
    }
    let customer_id = match scope {
        ScopeId::Customer(id) => Some(id.clone()),
        _ => None,
    };
    WebhookEvent {
        spend: usd(spend_nanos),
        max_budget: limits.max_nanos.map(usd),
        soft_budget: limits.soft_nanos.map(usd),
        token,
        customer_id,
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
    use crate::alerting::tests::receiver;
    use crate::http_client::HttpTarget;
    use crate::store::{SpendLog, SpendStore, SqlStore};

    #[test]
    fn a_spent_budget_reaches_envoys_by_lookup_or_by_the_filter_config() {
        // A key's model budget: the key is looked up again.
        let key_model = ScopeId::KeyModel(key_model_scope_id("key_1", "gpt-4o|eu"));
        assert_eq!(key_model.target(), Some(Target::Key("key_1".into())));
        assert_eq!(key_model.kind_and_id(), (ScopeKind::KeyModel, "key_1|gpt-4o|eu"));
        // Customers and the gateway have no key to look up: their standing is in the config.
        assert_eq!(ScopeId::Customer("ada".into()).target(), None);
        assert_eq!(ScopeId::Proxy.target(), None);
        assert_eq!(ScopeId::of(ScopeKind::Proxy, "proxy"), ScopeId::Proxy);
    }

    /// A fresh database: a SQLite file, or a new database on the Postgres the control plane's
    /// tests use (`SLUICE_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432`), as a
    /// URL (each replica opens its own pool on it) and how to drop it (Postgres).
    async fn database(postgres: bool) -> (String, Option<(String, String)>) {
        let mut salt = [0u8; 4];
        getrandom::fill(&mut salt).unwrap();
        let name =
            format!("sluice_budget_{}_{}_{}", std::process::id(), crate::store::now_ms(), u32::from_le_bytes(salt));
        if !postgres {
            return (format!("sqlite:{}/{name}.db", std::env::temp_dir().display()), None);
        }
        let server = std::env::var("SLUICE_TEST_POSTGRES").unwrap_or("postgres://postgres@127.0.0.1:5432".into());
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(&format!("{server}/test")).await.unwrap();
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        admin.close().await;
        (format!("{server}/{name}"), Some((server, name)))
    }

    async fn drop_database(cleanup: Option<(String, String)>) {
        if let Some((server, name)) = cleanup {
            let admin = sqlx::AnyPool::connect(&format!("{server}/test")).await.unwrap();
            let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
        }
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

    fn now() -> u64 {
        u64::try_from(crate::store::now_ms()).unwrap()
    }

    /// What ingestion does with a batch: every record charged to each of `scopes`, stored and
    /// counted in one transaction, then the claimed alerts raised.
    async fn ingest(
        tracker: &Arc<BudgetTracker>,
        store: &SqlStore,
        logs: &[SpendLog],
        scopes: &[(ScopeId, BudgetLimits)],
        context: &SpendContext,
    ) -> Vec<WindowTotal> {
        let now = now();
        let charges: Vec<Charge> = (0..logs.len())
            .flat_map(|i| scopes.iter().map(move |(scope, limits)| (i, scope, limits)))
            .map(|(i, scope, limits)| BudgetTracker::charge(i, scope, limits, logs[i].start_ms, now))
            .collect();
        let (_, totals) = store.record_charged_spend(logs, &charges).await.unwrap();
        let by_scope = scopes.iter().map(|(scope, limits)| (scope.clone(), (*limits, context))).collect();
        tracker.counted(&totals, &by_scope, now);
        totals
    }

    fn usd(n: f64) -> u64 {
        (n * 1e9).round() as u64
    }

    /// One soft-budget and one max-budget event per scope and window, in LiteLLM's shape, each
    /// naming the key by its id; a max budget reached also tells Envoys to drop the owner's keys.
    async fn thresholds_post_one_event_each(postgres: bool) {
        let (url, cleanup) = database(postgres).await;
        let store = SqlStore::open(&url).await.unwrap();
        let (hook, got) = receiver(vec![200]).await;
        let metrics = Arc::new(Metrics::default());
        let invalidations = Arc::new(Invalidations::new("e".into()));
        let fast = Delivery { first_backoff: Duration::from_millis(10), ..Delivery::default() };
        let webhook =
            Webhook::start(HttpTarget::parse(&hook, "WEBHOOK_URL", None).unwrap(), Arc::clone(&metrics), fast);
        let tracker = BudgetTracker::with_webhook(Arc::clone(&invalidations), Arc::clone(&metrics), webhook);
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
        let scopes = [(ScopeId::User("alice".into()), user), (ScopeId::Org("acme".into()), org)];
        for (i, nanos) in [usd(0.006), usd(0.002), usd(0.004), usd(0.003)].into_iter().enumerate() {
            let log = spent(&format!("r{i}"), "alice", "acme", i64::try_from(nanos).unwrap());
            ingest(&tracker, &store, &[log], &scopes, &context).await;
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
        store.pool().close().await;
        drop_database(cleanup).await;
    }

    #[tokio::test]
    async fn webhook_events_sqlite() {
        thresholds_post_one_event_each(false).await;
    }

    #[tokio::test]
    async fn webhook_events_postgres() {
        thresholds_post_one_event_each(true).await;
    }

    /// A team member's window counts only the records of that user in that team: seeded from
    /// `spend_logs` by both columns when the first charge creates it, then charged per batch;
    /// reaching its max tells Envoys to drop the user's keys.
    async fn a_member_window_counts_that_user_in_that_team_only(postgres: bool) {
        let (url, cleanup) = database(postgres).await;
        let store = SqlStore::open(&url).await.unwrap();
        let invalidations = Arc::new(Invalidations::new("e".into()));
        let tracker = BudgetTracker::new(Arc::clone(&invalidations), Arc::new(Metrics::default()));
        let in_team = |id: &str, team: &str, user: &str, nanos: i64| SpendLog {
            team_id: Some(team.into()),
            ..spent(id, user, "acme", nanos)
        };
        // Spend before the budget existed: alice in ml counts, bob in ml and alice elsewhere do not.
        let earlier = [
            in_team("e1", "ml", "alice", 300),
            in_team("e2", "ml", "bob", 5_000),
            in_team("e3", "ops", "alice", 7_000),
        ];
        ingest(&tracker, &store, &earlier, &[], &SpendContext::default()).await;
        let limits = BudgetLimits { max_nanos: Some(1_000), soft_nanos: None, duration: None };
        let member = ScopeId::member("ml", "alice");
        assert_eq!(tracker.spend(&store, &member, &limits, now()).await.unwrap(), 300, "summed from spend_logs");
        let totals = ingest(
            &tracker,
            &store,
            &[in_team("n1", "ml", "alice", 800)],
            &[(member.clone(), limits)],
            &SpendContext::default(),
        )
        .await;
        assert_eq!(totals.iter().map(|t| t.spend_nanos).collect::<Vec<_>>(), [1_100], "seeded, then charged");
        assert_eq!(tracker.spend(&store, &member, &limits, now()).await.unwrap(), 1_100);
        let watched =
            invalidations.watch(&WatchInvalidationsRequest { epoch: "e".into(), after_seq: 0 }, Duration::ZERO).await;
        assert_eq!(watched.user_ids, ["alice".to_owned()], "the member's keys are dropped");
        store.pool().close().await;
        drop_database(cleanup).await;
    }

    #[tokio::test]
    async fn member_window_sqlite() {
        a_member_window_counts_that_user_in_that_team_only(false).await;
    }

    #[tokio::test]
    async fn member_window_postgres() {
        a_member_window_counts_that_user_in_that_team_only(true).await;
    }

    /// A replica of the control plane: its own pool on the shared database, its own log of
    /// invalidations, metrics and tracker.
    struct Replica {
        store: SqlStore,
        invalidations: Arc<Invalidations>,
        metrics: Arc<Metrics>,
        tracker: Arc<BudgetTracker>,
    }

    impl Replica {
        async fn open(url: &str, webhook: Option<&str>) -> Self {
            let store = SqlStore::open(url).await.unwrap();
            let invalidations = Arc::new(Invalidations::new("e".into()));
            let metrics = Arc::new(Metrics::default());
            let fast = Delivery { first_backoff: Duration::from_millis(10), ..Delivery::default() };
            let hook = webhook.and_then(|u| {
                Webhook::start(HttpTarget::parse(u, "WEBHOOK_URL", None).unwrap(), Arc::clone(&metrics), fast)
            });
            let tracker = BudgetTracker::with_webhook(Arc::clone(&invalidations), Arc::clone(&metrics), hook);
            Self { store, invalidations, metrics, tracker }
        }

        fn alerts(&self) -> (u64, u64) {
            let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            (get(&self.metrics.budget_soft_alerts), get(&self.metrics.budget_exhausted))
        }

        async fn told(&self) -> Vec<String> {
            let from_start = WatchInvalidationsRequest { epoch: "e".into(), after_seq: 0 };
            self.invalidations.watch(&from_start, Duration::ZERO).await.key_ids
        }
    }

    fn key_log(id: &str, cost_nanos: u64) -> SpendLog {
        SpendLog { user_id: None, organization_id: None, ..spent(id, "", "", i64::try_from(cost_nanos).unwrap()) }
    }

    /// Two replicas ingest a key's usage alternately: each sees the whole window's spend, and
    /// the soft and max alerts (metric, webhook, invalidation) are raised once between them.
    async fn replicas_count_one_window(postgres: bool) {
        let (url, cleanup) = database(postgres).await;
        let (hook, got) = receiver(vec![200]).await;
        let replicas = [Replica::open(&url, Some(&hook)).await, Replica::open(&url, Some(&hook)).await];
        let key = ScopeId::Key("key_1".into());
        let limits = BudgetLimits { max_nanos: Some(usd(0.01)), soft_nanos: Some(usd(0.005)), duration: None };
        let context = SpendContext { key_id: Some("key_1".into()), ..SpendContext::default() };
        for i in 0..8 {
            let r = &replicas[i % 2];
            let batch = [key_log(&format!("a{i}"), usd(0.0015)), key_log(&format!("b{i}"), usd(0.0005))];
            ingest(&r.tracker, &r.store, &batch, &[(key.clone(), limits)], &context).await;
            // A replayed batch (the singleton retried it on the other replica) counts nothing.
            let other = &replicas[(i + 1) % 2];
            ingest(&other.tracker, &other.store, &batch, &[(key.clone(), limits)], &context).await;
            for r in &replicas {
                let seen = r.tracker.spend(&r.store, &key, &limits, now()).await.unwrap();
                assert_eq!(seen, usd(0.002) * (i as u64 + 1), "after batch {i}, every replica sees the whole spend");
            }
        }
        let (a, b) = (replicas[0].alerts(), replicas[1].alerts());
        assert_eq!((a.0 + b.0, a.1 + b.1), (1, 1), "one soft and one max alert in all: {a:?} {b:?}");
        // $0.005 is reached by batch 2 (replica 0), $0.01 by batch 4 (replica 0).
        assert_eq!((a, b), ((1, 1), (0, 0)));
        assert_eq!(replicas[0].told().await, ["key_1"]);
        // Replica 1's next batch (5) found the window spent: it tells its own Envoys too (once:
        // not again for batch 7), in case replica 0's invalidation cannot reach them through
        // Redis, but alerts nobody.
        assert_eq!(replicas[1].told().await, ["key_1"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events: Vec<String> =
            got.lock().unwrap().iter().map(|(_, e)| e["event"].as_str().unwrap().to_owned()).collect();
        assert_eq!(events, ["threshold_crossed", "budget_crossed"]);
        for r in replicas {
            r.store.pool().close().await;
        }
        drop_database(cleanup).await;
    }

    #[tokio::test]
    async fn replicas_count_one_window_sqlite() {
        replicas_count_one_window(false).await;
    }

    #[tokio::test]
    async fn replicas_count_one_window_postgres() {
        replicas_count_one_window(true).await;
    }

    /// Usage stored on a replica into a window another replica found spent (an Envoy that has
    /// not heard yet: Redis down) makes this replica tell its own Envoys, once per window and
    /// budget; usage of a window that has ended tells nobody.
    async fn a_replica_storing_spend_past_the_budget_tells_its_envoys(postgres: bool) {
        let (url, cleanup) = database(postgres).await;
        let (a, b) = (Replica::open(&url, None).await, Replica::open(&url, None).await);
        let key = ScopeId::Key("key_1".into());
        let day = BudgetLimits { max_nanos: Some(usd(0.01)), soft_nanos: None, duration: BudgetDuration::parse("1d") };
        let context = SpendContext::default();
        ingest(&a.tracker, &a.store, &[key_log("a1", usd(0.011))], &[(key.clone(), day)], &context).await;
        assert_eq!((a.told().await, b.told().await), (vec!["key_1".to_owned()], vec![]));
        for i in 0..3 {
            ingest(&b.tracker, &b.store, &[key_log(&format!("b{i}"), usd(0.001))], &[(key.clone(), day)], &context)
                .await;
        }
        assert_eq!(b.told().await, ["key_1"], "told once, not per batch");
        assert_eq!((a.alerts(), b.alerts()), ((0, 1), (0, 0)), "alerted once, by the claimer");
        // A raised budget, spent again: the claimer (b, this time) tells its Envoys, a again.
        let raised = BudgetLimits { max_nanos: Some(usd(0.02)), ..day };
        ingest(&b.tracker, &b.store, &[key_log("b3", usd(0.007))], &[(key.clone(), raised)], &context).await;
        ingest(&a.tracker, &a.store, &[key_log("a2", usd(0.001))], &[(key.clone(), raised)], &context).await;
        assert_eq!((a.told().await.len(), b.told().await.len()), (2, 2));
        assert_eq!(b.alerts(), (0, 1));
        // A record shipped late into yesterday's spent window: counted, but nobody is told.
        let mut late = key_log("late", usd(0.05));
        late.start_ms -= 86_400_000;
        ingest(&b.tracker, &b.store, &[late], &[(key.clone(), day)], &context).await;
        assert_eq!((a.told().await.len(), b.told().await.len()), (2, 2));
        for r in [a, b] {
            r.store.pool().close().await;
        }
        drop_database(cleanup).await;
    }

    #[tokio::test]
    async fn a_replica_storing_spend_past_the_budget_tells_its_envoys_sqlite() {
        a_replica_storing_spend_past_the_budget_tells_its_envoys(false).await;
    }

    #[tokio::test]
    async fn a_replica_storing_spend_past_the_budget_tells_its_envoys_postgres() {
        a_replica_storing_spend_past_the_budget_tells_its_envoys(true).await;
    }

    /// Spend recorded before a scope had a budget (or before the table existed) is in the
    /// window from its start, whether a lookup reads it first or a batch creates it, and exactly once; a
    /// record of an earlier window is not.
    async fn a_window_created_late_starts_from_spend_logs(postgres: bool) {
        let (url, cleanup) = database(postgres).await;
        let r = Replica::open(&url, None).await;
        let day = BudgetLimits { max_nanos: Some(usd(1.0)), soft_nanos: None, duration: BudgetDuration::parse("1d") };
        let mut yesterday = key_log("old", usd(0.5));
        yesterday.start_ms -= 86_400_000;
        yesterday.user_id = Some("alice".into());
        let mut before = vec![yesterday];
        for i in 0..3 {
            before.push(SpendLog { user_id: Some("alice".into()), ..key_log(&format!("before{i}"), usd(0.001)) });
        }
        r.store.record_spend(&before).await.unwrap();
        let context = SpendContext::default();
        // The key's window is first read by a lookup (before any row exists); alice's is made
        // by a batch.
        let key = ScopeId::Key("key_1".into());
        let alice = ScopeId::User("alice".into());
        assert_eq!(r.tracker.spend(&r.store, &key, &day, now()).await.unwrap(), usd(0.003));
        let batch = [SpendLog { user_id: Some("alice".into()), ..key_log("after", usd(0.002)) }];
        let totals = ingest(&r.tracker, &r.store, &batch, &[(key.clone(), day), (alice.clone(), day)], &context).await;
        let mut spends: Vec<i64> = totals.iter().map(|t| t.spend_nanos).collect();
        spends.sort_unstable();
        assert_eq!(spends, [usd(0.005) as i64, usd(0.005) as i64]);
        for scope in [&key, &alice] {
            assert_eq!(r.tracker.spend(&r.store, scope, &day, now()).await.unwrap(), usd(0.005), "{scope:?}");
        }
        // Without a duration the one window holds yesterday's spend too.
        let forever = BudgetLimits { duration: None, ..day };
        assert_eq!(r.tracker.spend(&r.store, &alice, &forever, now()).await.unwrap(), usd(0.505));
        r.store.pool().close().await;
        drop_database(cleanup).await;
    }

    #[tokio::test]
    async fn a_window_created_late_sqlite() {
        a_window_created_late_starts_from_spend_logs(false).await;
    }

    #[tokio::test]
    async fn a_window_created_late_postgres() {
        a_window_created_late_starts_from_spend_logs(true).await;
    }

    /// Replicas ingesting concurrently (and lookups creating windows meanwhile), on a key
    /// with spend from before its budget: every window ends equal to what `spend_logs` holds
    /// for it, and its max budget is announced once.
    async fn concurrent_batches_count_each_record_once(postgres: bool) {
        let (url, cleanup) = database(postgres).await;
        let replicas = Arc::new([Replica::open(&url, None).await, Replica::open(&url, None).await]);
        let limits = BudgetLimits { max_nanos: Some(usd(0.05)), soft_nanos: None, duration: None };
        for round in 0..4 {
            let key_id = format!("key_r{round}");
            let key = ScopeId::Key(key_id.clone());
            let log = |id: String, cost: u64| SpendLog { key_id: Some(key_id.clone()), ..key_log(&id, cost) };
            let before: Vec<SpendLog> = (0..5).map(|i| log(format!("{round}-before-{i}"), usd(0.001))).collect();
            replicas[0].store.record_spend(&before).await.unwrap();
            let mut tasks = Vec::new();
            for t in 0..6 {
                let (replicas, key) = (Arc::clone(&replicas), key.clone());
                let batches: Vec<Vec<SpendLog>> = (0..4)
                    .map(|b| (0..5).map(|i| log(format!("{round}-{t}-{b}-{i}"), usd(0.0005) + i as u64)).collect())
                    .collect();
                tasks.push(tokio::spawn(async move {
                    let r = &replicas[t % 2];
                    for batch in batches {
                        if t == 0 {
                            r.tracker.spend(&r.store, &key, &limits, now()).await.unwrap();
                        }
                        let context = SpendContext::default();
                        ingest(&r.tracker, &r.store, &batch, &[(key.clone(), limits)], &context).await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let sum: i64 =
                sqlx::query_scalar("SELECT CAST(SUM(cost_nanos) AS BIGINT) FROM spend_logs WHERE key_id = $1")
                    .bind(key_id.clone())
                    .fetch_one(replicas[0].store.pool())
                    .await
                    .unwrap();
            for r in replicas.iter() {
                let seen = r.tracker.spend(&r.store, &key, &limits, now()).await.unwrap();
                assert_eq!(seen, u64::try_from(sum).unwrap(), "round {round}");
            }
        }
        let exhausted: u64 = replicas.iter().map(|r| r.alerts().1).sum();
        assert_eq!(exhausted, 4, "each key's max announced once");
        drop_database(cleanup).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_sqlite() {
        concurrent_batches_count_each_record_once(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_postgres() {
        concurrent_batches_count_each_record_once(true).await;
    }

    /// A database from before `budget_windows` existed: the windows start from its spend.
    #[tokio::test]
    async fn an_existing_database_gets_windows_from_its_spend() {
        use crate::store::Backend;
        use crate::store::migrations::migrator_through;
        for (postgres, backend) in [(false, Backend::Sqlite), (true, Backend::Postgres)] {
            let (url, cleanup) = database(postgres).await;
            let url_rwc = if postgres { url.clone() } else { format!("{url}?mode=rwc") };
            let old = sqlx::AnyPool::connect(&url_rwc).await.unwrap();
            migrator_through(backend, 2).run(&old).await.unwrap();
            for (i, cost) in [300_i64, 400].into_iter().enumerate() {
                sqlx::query(
                    "INSERT INTO spend_logs (record_id, request_id, key_id, model_group, prompt_tokens, \
                     completion_tokens, cost_nanos, status, outcome, estimated, start_ms, day) \
                     VALUES ($1, '', 'key_1', 'gpt-4o', 1, 1, $2, 200, 'completed', 0, $3, $4)",
                )
                .bind(format!("old-{i}"))
                .bind(cost)
                .bind(crate::store::now_ms())
                .bind(crate::store::day_of(crate::store::now_ms()))
                .execute(&old)
                .await
                .unwrap();
            }
            old.close().await;
            let r = Replica::open(&url, None).await;
            let limits =
                BudgetLimits { max_nanos: Some(1000), soft_nanos: None, duration: BudgetDuration::parse("30d") };
            let key = ScopeId::Key("key_1".into());
            let context = SpendContext::default();
            let totals = ingest(&r.tracker, &r.store, &[key_log("new", 500)], &[(key.clone(), limits)], &context).await;
            assert_eq!(totals.iter().map(|t| (t.spend_nanos, t.max_claimed)).collect::<Vec<_>>(), [(1200, Some(1000))]);
            assert_eq!(r.tracker.spend(&r.store, &key, &limits, now()).await.unwrap(), 1200);
            r.store.pool().close().await;
            drop_database(cleanup).await;
        }
    }
}
