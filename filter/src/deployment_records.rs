//! Per-deployment records in shared data (`sluice_core::load::SharedRecord`): a deployment's
//! cooldown (`cooldowns.rs`) and its load (`least-busy`, `latency-based-routing`), one entry per
//! deployment and kind, read and changed in place by every worker of an Envoy.

use std::marker::PhantomData;

use sluice_core::config::{CompiledConfig, deployment_record_name};
use sluice_core::load::SharedRecord;

use crate::host::{Host, LogLevel};

pub struct DeploymentRecords<R> {
    /// Shared-data key per deployment (same index as the config's deployments).
    keys: Vec<String>,
    kind: PhantomData<R>,
}

impl<R: SharedRecord> DeploymentRecords<R> {
    pub fn new(config: &CompiledConfig) -> Self {
        let keys = config.config.deployments.iter().map(|d| deployment_record_name(R::KIND, &d.id)).collect();
        DeploymentRecords { keys, kind: PhantomData }
    }

    /// Deployment `index`'s record as shared data holds it now (clean if it has none).
    pub fn read(&self, host: &impl Host, index: usize) -> R {
        let bytes = self.keys.get(index).and_then(|key| host.shared_get(key).0);
        R::decode(bytes.as_deref().unwrap_or_default())
    }

    /// Changes deployment `index`'s record in place (no other worker's change lost); the record
    /// as written, or None if shared data could not be written (logged).
    pub fn update(&self, host: &impl Host, index: usize, change: &mut dyn FnMut(&mut R)) -> Option<R> {
        let key = self.keys.get(index)?;
        let mut after = None;
        let written = host.shared_update(key, &mut |bytes| {
            let mut record = R::decode(bytes);
            change(&mut record);
            *bytes = record.encode();
            after = Some(R::decode(bytes));
            true
        });
        if !written {
            host.log(
                LogLevel::Error,
                &format!("sluice: could not update a deployment's {} record (shared data unavailable)", R::KIND),
            );
            return None;
        }
        after
    }
}
