//! Each deployment's requests in flight and recent latency (`sluice_core::load`), for
//! `least-busy` and `latency-based-routing`: one shared-data record per deployment, read fresh
//! when a group of two or more chooses, and changed in place when a request starts, ends or is
//! timed. Nothing is read or written under the other strategies.

use sluice_core::config::CompiledConfig;
use sluice_core::load::DeploymentLoad;

use crate::host::{Host, LogLevel};

pub struct Loads {
    /// Shared-data key per deployment (same index as the config's deployments).
    keys: Vec<String>,
}

impl Loads {
    pub fn new(config: &CompiledConfig) -> Self {
        Loads { keys: config.config.deployments.iter().map(|d| format!("sluice:ld:{}", d.id)).collect() }
    }

    pub fn read(&self, host: &impl Host, index: usize) -> DeploymentLoad {
        let Some(key) = self.keys.get(index) else { return DeploymentLoad::default() };
        DeploymentLoad::decode(host.shared_get(key).0.as_deref().unwrap_or_default())
    }

    pub fn update(&self, host: &impl Host, index: usize, change: &mut dyn FnMut(&mut DeploymentLoad)) {
        let Some(key) = self.keys.get(index) else { return };
        let written = host.shared_update(key, &mut |bytes| {
            let mut load = DeploymentLoad::decode(bytes);
            change(&mut load);
            *bytes = load.encode().to_vec();
            true
        });
        if !written {
            host.log(LogLevel::Error, "sluice: could not update a deployment's load (shared data unavailable)");
        }
    }
}
