//! Which deployments are cooling down (`sluice_core::cooldown`), as this worker sees them. The
//! records are in shared data, one per deployment, so a deployment cooled down by one worker is
//! out of rotation on all; each worker re-reads a record at most every [`REFRESH_MS`], only for
//! groups of more than one deployment (the only deployment of a group is never cooled down), so
//! a request to a single-deployment group reads nothing.

use std::cell::RefCell;

use sluice_core::config::CompiledConfig;
use sluice_core::cooldown::CooldownRecord;

use crate::host::{Host, LogLevel};

/// How stale this worker's view of another worker's record may be.
pub const REFRESH_MS: u64 = 250;

#[derive(Debug, Clone, Copy, Default)]
struct View {
    cooled_until_ms: u64,
    /// When the record was last read (0: never).
    read_ms: u64,
}

pub struct Cooldowns {
    /// Shared-data key per deployment (same index as the config's deployments).
    keys: Vec<String>,
    views: RefCell<Vec<View>>,
}

impl Cooldowns {
    pub fn new(config: &CompiledConfig) -> Self {
        let deployments = &config.config.deployments;
        Cooldowns {
            keys: deployments.iter().map(|d| format!("sluice:cd:{}", d.id)).collect(),
            views: RefCell::new(vec![View::default(); deployments.len()]),
        }
    }

    /// When deployment `index`'s cooldown ends (0 or a past time: it is in rotation).
    pub fn cooled_until(&self, host: &impl Host, index: usize, now_ms: u64) -> u64 {
        let mut views = self.views.borrow_mut();
        let (Some(view), Some(key)) = (views.get_mut(index), self.keys.get(index)) else { return 0 };
        if view.read_ms == 0 || now_ms.saturating_sub(view.read_ms) >= REFRESH_MS {
            let (bytes, _) = host.shared_get(key);
            view.cooled_until_ms = CooldownRecord::decode(bytes.as_deref().unwrap_or_default()).cooled_until_ms;
            view.read_ms = now_ms.max(1);
        }
        view.cooled_until_ms
    }

    /// Takes deployment `index` out of rotation until `until_ms` (it failed a background health
    /// check), unless it already is for longer.
    pub fn hold_out(&self, host: &impl Host, index: usize, until_ms: u64, now_ms: u64) {
        let Some(key) = self.keys.get(index) else { return };
        let mut after = CooldownRecord::default();
        let written = host.shared_update(key, &mut |bytes| {
            let mut record = CooldownRecord::decode(bytes);
            record.hold_until(until_ms);
            *bytes = record.encode().to_vec();
            after = record;
            true
        });
        if written && let Some(view) = self.views.borrow_mut().get_mut(index) {
            *view = View { cooled_until_ms: after.cooled_until_ms, read_ms: now_ms.max(1) };
        }
    }

    /// Counts `failures` of deployment `index` (named `id` in the log) at `now_ms`, in shared
    /// data; a deployment this cools down is out of rotation here at once, elsewhere within
    /// [`REFRESH_MS`].
    pub fn record_failures(&self, host: &impl Host, config: &CompiledConfig, index: usize, now_ms: u64, failures: u32) {
        let policy = config.config.cooldown;
        let (Some(key), Some(deployment)) = (self.keys.get(index), config.deployment(index)) else { return };
        let mut after = CooldownRecord::default();
        let mut started = false;
        let written = host.shared_update(key, &mut |bytes| {
            let mut record = CooldownRecord::decode(bytes);
            started = record.record_failures(&policy, now_ms, failures);
            *bytes = record.encode().to_vec();
            after = record;
            true
        });
        if !written {
            host.log(LogLevel::Error, "sluice: could not count a deployment's failure (shared data unavailable)");
            return;
        }
        if let Some(view) = self.views.borrow_mut().get_mut(index) {
            *view = View { cooled_until_ms: after.cooled_until_ms, read_ms: now_ms.max(1) };
        }
        if started {
            host.log(
                LogLevel::Warn,
                &format!(
                    "sluice: deployment {} of model group {} failed more than {} times this minute: out of rotation for {} ms",
                    deployment.id, deployment.model_name, policy.allowed_fails, policy.cooldown_ms
                ),
            );
        }
    }
}
