//! The singleton service VM: one per Envoy, it drains the usage queue that every worker feeds.
//!
//! Until the control plane exists it writes each record as one JSON line to Envoy's log,
//! prefixed with [`USAGE_LOG_PREFIX`]; the next step ships them over gRPC in batches.

use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

use crate::host::{EnvoyHost, Host, USAGE_QUEUE};
use crate::usage_record::USAGE_LOG_PREFIX;

pub struct UsageService {
    host: EnvoyHost,
}

impl UsageService {
    /// Registers the usage queue; workers resolve it by VM id and name.
    pub fn start(host: EnvoyHost) -> Option<Self> {
        match hostcalls::register_shared_queue(USAGE_QUEUE) {
            Ok(_) => {
                host.log(LogLevel::Info, "sluice: usage service started");
                Some(Self { host })
            }
            Err(e) => {
                host.log(LogLevel::Critical, &format!("sluice: cannot register the usage queue: {e:?}"));
                None
            }
        }
    }

    /// Each message is a worker's batch: newline-separated JSON records.
    pub fn drain(&self, queue_id: u32) {
        while let Ok(Some(batch)) = hostcalls::dequeue_shared_queue(queue_id) {
            for record in batch.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
                self.host.log(LogLevel::Info, &format!("{USAGE_LOG_PREFIX}{}", String::from_utf8_lossy(record)));
            }
        }
    }
}
