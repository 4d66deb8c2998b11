//! Root contexts (the wasm build): one per worker for the HTTP filter (`root_id: sluice_filter`) and one for the
//! singleton service (`root_id: sluice_service`), both from the same wasm module.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use sluice_core::config::{CompiledConfig, GatewayConfig};
use sluice_core::error::GatewayError;
use sluice_core::fallbacks::Plan;
use sluice_core::routing::SplitMix64;

use super::host::{EnvoyHost, WorkerState};
use super::service::WasmService;
use crate::counters;
use crate::deployment_health::BackgroundHealth;
use crate::failover::{self, AttemptVerdict};
use crate::flow::{Gateway, RequestFlow};
use crate::host::{self, Host, LogLevel};
use crate::secrets;
use crate::service::INVALIDATIONS_KEY;

pub const SERVICE_ROOT_ID: &str = "sluice_service";
/// How long a usage record may wait in its worker's batch; also how often a worker applies the
/// control plane's key invalidations.
const USAGE_FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_millis(250);
/// The singleton's retry and watch period (xDS mode).
const SERVICE_TICK_PERIOD: std::time::Duration = std::time::Duration::from_millis(200);

enum Role {
    Unconfigured,
    Filter(Rc<Gateway>),
    Service(Box<WasmService>),
    /// In a deployment cluster's upstream chain: turns a failed attempt of a request with a
    /// fallback plan into the internal redirect to its next pass.
    Attempt,
}

pub struct SluiceRoot {
    role: Role,
    worker: Rc<RefCell<WorkerState>>,
    rng: Cell<SplitMix64>,
    /// This worker's share of `background_health_checks` (the round it runs, if it won one).
    background_health: BackgroundHealth,
}

impl SluiceRoot {
    pub fn new(context_id: u32) -> Self {
        Self {
            role: Role::Unconfigured,
            worker: Rc::new(RefCell::new(WorkerState::default())),
            rng: Cell::new(SplitMix64::new(u64::from(context_id))),
            background_health: BackgroundHealth::default(),
        }
    }

    fn host(&self) -> EnvoyHost {
        EnvoyHost::new(Rc::clone(&self.worker))
    }

    fn configure_filter(&mut self, bytes: &[u8]) -> bool {
        let host = self.host();
        let config: GatewayConfig = match serde_json::from_slice(bytes) {
            Ok(c) => c,
            Err(e) => {
                host.log(LogLevel::Critical, &format!("sluice: invalid filter configuration: {e}"));
                return false;
            }
        };
        let compiled = match CompiledConfig::compile(config) {
            Ok(c) => c,
            Err(errors) => {
                for e in errors {
                    host.log(LogLevel::Critical, &format!("sluice: invalid filter configuration: {e}"));
                }
                return false;
            }
        };
        let secrets = match secrets::from_env(&compiled, |name| std::env::var(name).ok()) {
            Ok(s) => s,
            Err(e) => {
                host.log(LogLevel::Critical, &format!("sluice: invalid filter configuration: {e}"));
                return false;
            }
        };
        let deployments = crate::flow::usage_counters(&compiled);
        for name in compiled.named_counters().chain(deployments.iter().map(String::as_str)) {
            counters::ensure_exists(&host, name);
        }
        // Every worker VM numbers its contexts the same way and configures in the same
        // millisecond: only real entropy keeps their routing choices and record ids apart.
        let seed = getrandom::u64().unwrap_or(0) ^ host.now_ms() ^ self.rng.get().next_u64();
        self.rng.set(SplitMix64::new(seed));
        host.log(
            LogLevel::Info,
            &format!(
                "sluice: filter configured: {} deployments, {} model groups, {} keys, {} teams",
                compiled.config.deployments.len(),
                compiled.groups.len(),
                compiled.keys.len(),
                compiled.teams.len()
            ),
        );
        self.role = Role::Filter(Rc::new(Gateway::new(compiled, secrets)));
        // Pending usage records reach the service within a tick even when traffic stops.
        let _ = hostcalls::set_tick_period(USAGE_FLUSH_PERIOD);
        true
    }
}

impl SluiceRoot {
    /// Drops the keys the control plane revoked from this worker's cache (one shared-data read
    /// per tick; none on the request path).
    fn apply_invalidations(&self, gateway: &Gateway) {
        if gateway.config.config.key_lookup.is_none() {
            return;
        }
        let (Some(bytes), _) = self.host().shared_get(INVALIDATIONS_KEY) else { return };
        gateway.apply_invalidations(&String::from_utf8_lossy(&bytes), self.host().now_ms());
    }
}

impl Context for SluiceRoot {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let host = self.host();
        if let Role::Service(service) = &mut self.role {
            service.on_grpc_response(&host, token_id, status_code, response_size);
        }
    }

    /// A background health probe's answer.
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let host = self.host();
        if let Role::Filter(gateway) = &self.role
            && self.background_health.awaits(token_id)
        {
            let (status, body) = host.http_response(body_size);
            self.background_health.on_answer(&host, gateway, token_id, status, &body);
        }
    }

    /// The VM is going away (drain, reload): hand over what is still batched.
    fn on_done(&mut self) -> bool {
        match &mut self.role {
            Role::Filter(_) => {
                crate::health::retire(&self.host());
                self.worker.borrow_mut().flush_usage_on_stop();
            }
            Role::Service(service) => service.stop(),
            _ => {}
        }
        true
    }
}

impl RootContext for SluiceRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let root_id = hostcalls::get_property(vec!["plugin_root_id"]).ok().flatten().unwrap_or_default();
        if root_id == sluice_core::fallbacks::ATTEMPT_FILTER_NAME.as_bytes() {
            self.role = Role::Attempt;
            return true;
        }
        if root_id == SERVICE_ROOT_ID.as_bytes() {
            let config = self.get_plugin_configuration().unwrap_or_default();
            return match WasmService::start(self.host(), &config) {
                Some(service) => {
                    if service.has_control_plane() {
                        // Retries and the invalidation watch run on the tick.
                        let _ = hostcalls::set_tick_period(SERVICE_TICK_PERIOD);
                    }
                    self.role = Role::Service(Box::new(service));
                    true
                }
                None => false,
            };
        }
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        self.configure_filter(&bytes)
    }

    fn on_tick(&mut self) {
        match &mut self.role {
            Role::Filter(gateway) => {
                let gateway = Rc::clone(gateway);
                crate::health::heartbeat(&self.host());
                self.worker.borrow_mut().flush_usage();
                self.apply_invalidations(&gateway);
                gateway.flush_metrics(&self.host());
                self.background_health.tick(&self.host(), &gateway);
            }
            Role::Service(service) => service.tick(),
            Role::Unconfigured | Role::Attempt => {}
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Role::Service(service) = &mut self.role {
            service.drain(queue_id);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match &self.role {
            Role::Filter(gateway) => {
                let mut rng = self.rng.get();
                let random = rng.next_u64();
                self.rng.set(rng);
                Some(Box::new(SluiceHttp { flow: RequestFlow::new(self.host(), Rc::clone(gateway), random) }))
            }
            Role::Attempt => Some(Box::new(Attempt { host: self.host(), request_id: None, held: None })),
            // Fail closed: a worker without a valid config never lets a request through.
            Role::Unconfigured | Role::Service(_) => Some(Box::new(Unconfigured { host: self.host() })),
        }
    }
}

/// proxy-wasm's action for the flow's.
fn action(action: host::Action) -> Action {
    match action {
        host::Action::Continue => Action::Continue,
        host::Action::Pause => Action::Pause,
    }
}

struct SluiceHttp {
    flow: RequestFlow<EnvoyHost>,
}

impl Context for SluiceHttp {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.flow.on_grpc_response(token_id, status_code, response_size);
    }

    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        self.flow.on_http_response(token_id, body_size);
    }
}

impl HttpContext for SluiceHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.flow.on_request_headers(end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.flow.on_request_body(body_size, end_of_stream))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        action(self.flow.on_response_headers())
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.flow.on_response_body(body_size, end_of_stream))
    }

    fn on_log(&mut self) {
        self.flow.on_log();
    }
}

/// One upstream attempt of a request (the attempt role): a failure of a request with a plan
/// step left becomes a 307 to its next pass; anything else passes untouched.
struct Attempt {
    host: EnvoyHost,
    /// Read with the request's headers: a wasm filter cannot read them in a response callback.
    request_id: Option<Vec<u8>>,
    /// A 400 held until its body says whether it is a refusal with somewhere to go.
    held: Option<Box<Plan>>,
}

impl Attempt {
    fn redirect(&self, nonce: &str) {
        for (name, value) in failover::redirect_headers(nonce) {
            self.host.set_response_header(name, Some(value.as_bytes()));
        }
    }
}

impl Context for Attempt {}

impl HttpContext for Attempt {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.request_id = self.host.request_header("x-request-id");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let status = self.host.response_header(":status");
        let status = status.as_deref().and_then(|s| std::str::from_utf8(s).ok()?.parse().ok()).unwrap_or(0);
        match failover::attempt_verdict(&self.host, status, self.request_id.as_deref()) {
            AttemptVerdict::Pass => {}
            AttemptVerdict::Redirect(nonce) => self.redirect(&nonce),
            // A 400 without a body says nothing more.
            AttemptVerdict::ReadBody(_) if end_of_stream => {}
            AttemptVerdict::ReadBody(plan) => {
                self.held = Some(plan);
                return Action::Pause;
            }
        }
        Action::Continue
    }

    /// A held 400's body: buffered by Envoy until its end, then the decision.
    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.held.is_none() {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.host.response_body(body_size).unwrap_or_default();
        if let Some(plan) = self.held.take()
            && let Some(nonce) = failover::refusal_redirect(&self.host, plan, &body)
        {
            self.redirect(&nonce);
        }
        Action::Continue
    }
}

struct Unconfigured {
    host: EnvoyHost,
}

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let error = GatewayError::Internal { detail: "the gateway has no valid configuration" };
        self.host.send_local_response(500, &[("content-type", "application/json")], &error.body());
        Action::Pause
    }
}
