//! Which deployments are cooling down (`sluice_core::cooldown`), as this worker sees them. The
//! records are in shared data, one per deployment, so a deployment cooled down by one worker is
//! out of rotation on all; each worker re-reads a record at most every [`REFRESH_MS`], only for
//! groups of more than one deployment (the only deployment of a group is never cooled down), so
//! a request to a single-deployment group reads nothing.

use std::cell::RefCell;

use sluice_core::config::CompiledConfig;
use sluice_core::cooldown::CooldownRecord;

use crate::deployment_records::DeploymentRecords;
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
    records: DeploymentRecords<CooldownRecord>,
    /// This worker's view of each record (same index as the config's deployments).
    views: RefCell<Vec<View>>,
}

impl Cooldowns {
    pub fn new(config: &CompiledConfig) -> Self {
        Cooldowns {
            records: DeploymentRecords::new(config),
            views: RefCell::new(vec![View::default(); config.config.deployments.len()]),
        }
    }

    /// What deployment `index`'s record became: this worker sees it at once.
    fn saw(&self, index: usize, record: &CooldownRecord, now_ms: u64) {
        if let Some(view) = self.views.borrow_mut().get_mut(index) {
            *view = View { cooled_until_ms: record.cooled_until_ms, read_ms: now_ms.max(1) };
        }
    }

    /// When deployment `index`'s cooldown ends (0 or a past time: it is in rotation).
    pub fn cooled_until(&self, host: &impl Host, index: usize, now_ms: u64) -> u64 {
        let stale = self
            .views
            .borrow()
            .get(index)
            .is_some_and(|v| v.read_ms == 0 || now_ms.saturating_sub(v.read_ms) >= REFRESH_MS);
        if stale {
            let record = self.records.read(host, index);
            self.saw(index, &record, now_ms);
        }
        self.views.borrow().get(index).map_or(0, |v| v.cooled_until_ms)
    }

    /// Takes deployment `index` out of rotation until `until_ms` (it failed a background health
    /// check), unless it already is for longer.
    pub fn hold_out(&self, host: &impl Host, index: usize, until_ms: u64, now_ms: u64) {
        if let Some(after) = self.records.update(host, index, &mut |record| record.hold_until(until_ms)) {
            self.saw(index, &after, now_ms);
        }
    }

    /// Counts `failures` of deployment `index` (named `id` in the log) at `now_ms`, in shared
    /// data; a deployment this cools down is out of rotation here at once, elsewhere within
    /// [`REFRESH_MS`]. True if these failures started its cooldown.
    pub fn record_failures(
        &self,
        host: &impl Host,
        config: &CompiledConfig,
        index: usize,
        now_ms: u64,
        failures: u32,
    ) -> bool {
        let policy = config.config.cooldown;
        let Some(deployment) = config.deployment(index) else { return false };
        let mut started = false;
        let Some(after) =
            self.records.update(host, index, &mut |record| started = record.record_failures(&policy, now_ms, failures))
        else {
            return false;
        };
        self.saw(index, &after, now_ms);
        if started {
            host.log(
                LogLevel::Warn,
                &format!(
                    "sluice: deployment {} of model group {} failed more than {} times this minute: out of rotation for {} ms",
                    deployment.id, deployment.model_name, policy.allowed_fails, policy.cooldown_ms
                ),
            );
        }
        started
    }
}
