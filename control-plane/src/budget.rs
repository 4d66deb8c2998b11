//! Budgets across the fleet: the control plane counts each budgeted key's and team's spend in
//! its current `budget_duration` window from the usage every Envoy ships, and
//!
//! - answers key lookups with that fleet-wide spend (`KeyConfig::fleet_spend`), so an Envoy
//!   refuses a key or team whose budget was spent on any Envoy;
//! - when a scope reaches its `max_budget`, publishes an invalidation so every Envoy looks it
//!   up again (and refuses it) within the revocation time, and does the same when its window
//!   ends, which lets it spend again;
//! - when it reaches its `soft_budget`, raises an alert once per window (log + metric).
//!
//! Windows are epoch-aligned, as the filter's own counters are (`BudgetDuration::period`), so
//! a window resets exactly once. Each Envoy still reserves and settles every request against
//! its own counter, which bounds overspend within one Envoy; across Envoys a budget can be
//! overrun by what the others spend until the invalidation reaches them.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::time::BudgetDuration;
use tokio::sync::{Mutex, MutexGuard};

use crate::invalidation::{Invalidations, Target};
use crate::metrics::{Metrics, inc};
use crate::store::{BudgetScope, LimitsRecord, Store, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScopeId {
    Key(String),
    Team(String),
}

impl ScopeId {
    fn store_scope(&self) -> BudgetScope<'_> {
        match self {
            Self::Key(id) => BudgetScope::Key(id),
            Self::Team(id) => BudgetScope::Team(id),
        }
    }

    fn target(&self) -> Target {
        match self {
            Self::Key(id) => Target::Key(id.clone()),
            Self::Team(id) => Target::Team(id.clone()),
        }
    }
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
    exhausted: bool,
    soft_alerted: bool,
}

pub struct BudgetTracker {
    windows: Mutex<HashMap<ScopeId, Window>>,
    invalidations: Arc<Invalidations>,
    metrics: Arc<Metrics>,
}

pub type Windows<'a> = MutexGuard<'a, HashMap<ScopeId, Window>>;

impl BudgetTracker {
    pub fn new(invalidations: Arc<Invalidations>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { windows: Mutex::new(HashMap::new()), invalidations, metrics })
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
                .insert(scope.clone(), Window { start_ms, end_ms, spend_nanos, exhausted: false, soft_alerted: false });
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
    /// was stored), and acts on the thresholds it crosses.
    pub async fn add<S: Store>(
        self: &Arc<Self>,
        windows: &mut Windows<'_>,
        store: &S,
        scope: &ScopeId,
        limits: &BudgetLimits,
        nanos: u64,
        now_ms: u64,
    ) -> StoreResult<()> {
        let (window, loaded) = Self::window(windows, store, scope, limits, now_ms).await?;
        if !loaded {
            window.spend_nanos = window.spend_nanos.saturating_add(nanos);
        }
        if let Some(soft) = limits.soft_nanos
            && window.spend_nanos >= soft
            && !window.soft_alerted
        {
            window.soft_alerted = true;
            inc(&self.metrics.budget_soft_alerts, 1);
            eprintln!(
                "sluice: budget alert: {scope:?} spent {} of its soft budget {} (USD)",
                usd(window.spend_nanos),
                usd(soft)
            );
        }
        if let Some(max) = limits.max_nanos
            && window.spend_nanos >= max
            && !window.exhausted
        {
            window.exhausted = true;
            inc(&self.metrics.budget_exhausted, 1);
            eprintln!(
                "sluice: budget spent: {scope:?} at {} of {} (USD); refused on every Envoy",
                usd(window.spend_nanos),
                usd(max)
            );
            self.invalidations.publish(scope.target());
            if let Some(end_ms) = window.end_ms {
                self.reset_at(scope.clone(), window.start_ms, end_ms, now_ms);
            }
        }
        Ok(())
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
