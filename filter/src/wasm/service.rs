//! The singleton service VM (the wasm build): one per Envoy, running
//! [`crate::service::UsageService`]. The workers hand it usage records and limit scopes through
//! two proxy-wasm shared queues, which this binding registers and drains.

use proxy_wasm::hostcalls;

use super::host::{EnvoyHost, LIMIT_SCOPES_QUEUE, USAGE_QUEUE};
use crate::host::{Host, LogLevel};
use crate::service::{ServiceConfig, UsageService};

pub struct WasmService {
    core: UsageService<EnvoyHost>,
    /// The queue the workers hand their records to.
    usage_queue: u32,
    /// The queue the workers announce limited scopes on (xDS mode; without it limits stay per
    /// Envoy).
    scopes_queue: Option<u32>,
}

impl WasmService {
    /// Registers the queues; workers resolve them by VM id and name.
    pub fn start(host: EnvoyHost, config: &[u8]) -> Option<Self> {
        let config: ServiceConfig = if config.is_empty() {
            ServiceConfig::default()
        } else {
            match serde_json::from_slice(config) {
                Ok(c) => c,
                Err(e) => {
                    host.log(LogLevel::Critical, &format!("sluice: invalid service configuration: {e}"));
                    return None;
                }
            }
        };
        let usage_queue = match hostcalls::register_shared_queue(USAGE_QUEUE) {
            Ok(id) => id,
            Err(e) => {
                host.log(LogLevel::Critical, &format!("sluice: cannot register the usage queue: {e:?}"));
                return None;
            }
        };
        let scopes_queue = if config.control_plane_cluster.is_some() {
            match hostcalls::register_shared_queue(LIMIT_SCOPES_QUEUE) {
                Ok(id) => Some(id),
                Err(e) => {
                    host.log(LogLevel::Error, &format!("sluice: cannot register the limit-scope queue: {e:?}"));
                    None
                }
            }
        } else {
            None
        };
        // The bootstrap names the node (the `node.id` property reads empty in this VM).
        let node = match &config.node_id {
            Some(node) => node.clone().into_bytes(),
            None => hostcalls::get_property(vec!["node", "id"]).ok().flatten().unwrap_or_default(),
        };
        let node = String::from_utf8_lossy(&node).into_owned();
        let random = getrandom::u64().unwrap_or_else(|_| host.now_ms());
        let core = UsageService::start(host, config, Some(&node), random);
        Some(Self { core, usage_queue, scopes_queue })
    }

    pub fn has_control_plane(&self) -> bool {
        self.core.has_control_plane()
    }

    /// A queue has messages: scope announcements, or usage records (each a worker's batch).
    pub fn drain(&mut self, queue_id: u32) {
        let messages = std::iter::from_fn(|| hostcalls::dequeue_shared_queue(queue_id).ok().flatten());
        let messages: Vec<Vec<u8>> = messages.collect();
        if self.scopes_queue == Some(queue_id) {
            self.core.take_announcements(messages.iter().map(Vec::as_slice));
        } else {
            self.core.take_usage(messages.iter().map(Vec::as_slice));
        }
    }

    pub fn tick(&mut self) {
        self.core.tick();
    }

    pub fn on_grpc_response(&mut self, host: &EnvoyHost, token: u32, status: u32, size: usize) {
        let body = if status == 0 { host.grpc_response(size).unwrap_or_default() } else { Vec::new() };
        self.core.on_grpc_response(token, status, &body);
    }

    /// The VM is going away: what the workers handed over last is logged (and counted) first.
    pub fn stop(&mut self) {
        self.drain(self.usage_queue);
        self.core.stop();
    }
}
