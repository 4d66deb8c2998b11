//! The singleton service in the native build: [`crate::service::UsageService`] on Envoy's main
//! thread, where the wasm build runs it in a `WasmService` VM. In both modes it writes the usage
//! lines (a batch per log call); in xDS mode it also ships them, watches invalidations and syncs
//! limits.
//!
//! - **Who drives it.** There is no singleton extension to live in, so the filter configs carry
//!   it: each config registers as a driver when Envoy creates it and leaves when Envoy destroys
//!   it; the newest live one makes the service's gRPC calls (config-level HTTP callouts through
//!   the control plane's cluster, [`super::grpc`]) and counts its counters. A replaced driver's calls in flight are forgotten (`calls_lost`): its answers,
//!   numbered by another config, are ignored.
//! - **When it runs.** A thread of the module's own wakes every [`TICK`] and posts an event to
//!   the main thread through the driver's scheduler (Envoy's config scheduler has no timer).
//!   A scope the workers announce posts one at once.
//! - **What the workers hand over.** Usage records and scope names go into [`HANDOVER`], a
//!   mutex a worker holds for one append; the main thread takes the lot on each event (and at
//!   once when it passes 1 MiB). Key invalidations come back the other way in the shared-data
//!   entry the wasm build uses, with a generation number workers compare on each stream
//!   instead of reading the entry.
//!
//! The service itself is main-thread state (a thread-local): every hook that touches it runs
//! there. A callout Envoy completes inside the call that started it (a failure before it left)
//! finds the service borrowed and is dropped; the start then reports failure, as it should.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::time::Duration;

use super::abi::{Callbacks, LiveConfig, Scheduler, callout_status};
use super::grpc;
use super::host::{Counters, log, now_ms, shared};
use crate::deployment_health::BackgroundHealth;
use crate::flow::Gateway;
use crate::host::{CasResult, Host, LogLevel};
use crate::metrics::Metrics;
use crate::service::{INVALIDATIONS_KEY, ServiceConfig, UsageService};

/// How often the service retries, keeps its watch open and syncs limits (the wasm build's
/// singleton tick).
pub const TICK: Duration = Duration::from_millis(200);
/// Scheduler events: the periodic tick, and a scope announced (sync at once).
const EVENT_TICK: u64 = 1;
const EVENT_ANNOUNCED: u64 = 2;
const EVENT_HANDOVER_FULL: u64 = 3;
/// Usage bytes past which a worker asks the main thread to take them at once, instead of at the
/// next tick: a burst stays bounded in memory (and so does a tick thread that never started).
const HANDOVER_FLUSH_BYTES: usize = 1 << 20;

/// What workers hand the service between two events.
#[derive(Default)]
struct Handover {
    /// Usage records, one JSON line each.
    usage: Vec<u8>,
    /// Scope names announced, one per line.
    scopes: Vec<u8>,
}

static HANDOVER: Mutex<Handover> = Mutex::new(Handover { usage: Vec::new(), scopes: Vec::new() });
/// The drivers' schedulers, newest last: the ticking thread posts to the last.
static SCHEDULERS: Mutex<Vec<(usize, Scheduler)>> = Mutex::new(Vec::new());
/// Bumped at each write of the invalidation log; workers re-read the log when it moved.
static INVALIDATIONS_GENERATION: AtomicU64 = AtomicU64::new(0);
static TICKER: Once = Once::new();
/// A full hand-over was announced to the main thread and not taken yet (one event, not one per
/// request).
static FLUSH_ASKED: AtomicBool = AtomicBool::new(false);

/// A poisoned lock would mean a panic while holding it, which this module never does; the data
/// is still whole (each holder appends or takes), so go on with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A driver as the main thread keeps it.
struct Driver {
    config: LiveConfig,
    counters: Arc<Counters>,
    /// What the workers' requests with this config counted since the last tick.
    metrics: Arc<Metrics>,
    /// `background_health_checks`: a gateway of the config's own on this thread, for the
    /// probes' paths and credentials, and the round it runs.
    health: Option<(Rc<Gateway>, BackgroundHealth)>,
}

impl Driver {
    /// Reports the workers' pending counts on this config's counters.
    fn report_metrics(&self) {
        self.metrics.drain(|name, delta| {
            if let Some(id) = self.counters.id(name) {
                self.config.increment_counter(id, delta);
            }
        });
    }
}

thread_local! {
    /// Main thread only (configs are created and destroyed there, and events and callouts
    /// arrive there).
    static DRIVERS: RefCell<Vec<Driver>> = const { RefCell::new(Vec::new()) };
    static SERVICE: RefCell<Option<UsageService<MainThreadHost>>> = const { RefCell::new(None) };
    /// The handover taken last time, emptied: swapped in at the next take, so the workers write
    /// into buffers that already have their size instead of growing new ones every tick.
    static SPARE: RefCell<Handover> = const { RefCell::new(Handover { usage: Vec::new(), scopes: Vec::new() }) };
}

// ---- the workers' side ---------------------------------------------------------------------

/// A usage record from a worker.
pub fn hand_over_usage(record: &[u8]) {
    let full = {
        let mut handover = lock(&HANDOVER);
        handover.usage.extend_from_slice(record);
        handover.usage.push(b'\n');
        handover.usage.len() >= HANDOVER_FLUSH_BYTES
    };
    if full
        && !FLUSH_ASKED.swap(true, Ordering::AcqRel)
        && let Some((_, scheduler)) = lock(&SCHEDULERS).last()
    {
        scheduler.commit(EVENT_HANDOVER_FULL);
    }
}

/// A scope a worker limits this minute: synced with the fleet at once.
pub fn announce_scope(name: &str) {
    {
        let mut handover = lock(&HANDOVER);
        handover.scopes.extend_from_slice(name.as_bytes());
        handover.scopes.push(b'\n');
    }
    if let Some((_, scheduler)) = lock(&SCHEDULERS).last() {
        scheduler.commit(EVENT_ANNOUNCED);
    }
}

/// The invalidation log's generation: a worker that saw another re-reads the log.
pub fn invalidations_generation() -> u64 {
    INVALIDATIONS_GENERATION.load(Ordering::Acquire)
}

// ---- the main thread's side ----------------------------------------------------------------

/// A config was created: it drives the service from now on (the service starts with the first
/// one). `cluster` reaches the control plane (xDS mode; None in standalone mode).
pub fn register(
    config: LiveConfig,
    counters: Arc<Counters>,
    metrics: Arc<Metrics>,
    cluster: Option<&str>,
    health: Option<Gateway>,
) {
    let Some(scheduler) = config.new_scheduler() else {
        log(config.callbacks(), LogLevel::Error, "sluice: Envoy gave no scheduler: the usage service cannot run");
        return;
    };
    lock(&SCHEDULERS).push((config.ptr() as usize, scheduler));
    let health = health.map(|gateway| (Rc::new(gateway), BackgroundHealth::default()));
    DRIVERS.with(|d| d.borrow_mut().push(Driver { config, counters, metrics, health }));
    SERVICE.with(|service| {
        let Ok(mut service) = service.try_borrow_mut() else { return };
        match service.as_mut() {
            // The old driver's calls were numbered by it: their answers will not be read.
            Some(running) if running.has_control_plane() == cluster.is_some() => running.calls_lost(),
            // The first config, or one of a mode the service was not started in (the bootstrap
            // fixes the mode, so only a test would): start it.
            running => {
                if let Some(old) = running {
                    old.calls_lost();
                    take_handover(old);
                    old.stop();
                }
                let config_callbacks = config.callbacks();
                let config = ServiceConfig { control_plane_cluster: cluster.map(str::to_owned), node_id: None };
                let random = getrandom::u64().unwrap_or_else(|_| now_ms());
                // The node id is not readable here: the control plane names this instance after
                // its client certificate.
                *service =
                    Some(UsageService::start(MainThreadHost { callbacks: config_callbacks }, config, None, random));
            }
        }
    });
    TICKER.call_once(|| {
        let spawned = std::thread::Builder::new().name("sluice-service-tick".into()).spawn(|| {
            loop {
                std::thread::sleep(TICK);
                if let Some((_, scheduler)) = lock(&SCHEDULERS).last() {
                    scheduler.commit(EVENT_TICK);
                }
            }
        });
        if let Err(e) = spawned {
            log(config.callbacks(), LogLevel::Error, &format!("sluice: cannot start the service's tick: {e}"));
        }
    });
}

/// A config is being destroyed: it drives nothing any more. The last one hands over what the
/// workers left and names what was never shipped (Envoy stopping).
pub fn unregister(envoy_config: usize) {
    let key = envoy_config;
    // Under the lock the ticking thread commits with: the scheduler is deleted here.
    lock(&SCHEDULERS).retain(|(c, _)| *c != key);
    // Out first: Envoy is destroying this config, so nothing may call or count through it.
    let (was_current, left) = DRIVERS.with(|d| {
        let mut drivers = d.borrow_mut();
        let was_current = drivers.last().is_some_and(|last| last.config.ptr() as usize == key);
        // Its streams are over: what they counted is reported while its counters still exist.
        drivers.iter().filter(|driver| driver.config.ptr() as usize == key).for_each(Driver::report_metrics);
        drivers.retain(|driver| driver.config.ptr() as usize != key);
        (was_current, drivers.len())
    });
    SERVICE.with(|service| {
        let Ok(mut service) = service.try_borrow_mut() else { return };
        let Some(running) = service.as_mut() else { return };
        if left == 0 {
            // Envoy is stopping: what the workers left goes to the log with the rest.
            running.calls_lost();
            take_handover(running);
            running.stop();
        } else if was_current {
            running.calls_lost();
        }
    });
}

fn take_handover(service: &mut UsageService<MainThreadHost>) {
    let Ok(mut handover) = SPARE.try_with(|spare| std::mem::take(&mut *spare.borrow_mut())) else { return };
    std::mem::swap(&mut handover, &mut *lock(&HANDOVER));
    FLUSH_ASKED.store(false, Ordering::Release);
    if !handover.scopes.is_empty() {
        service.take_announcements([handover.scopes.as_slice()]);
    }
    if !handover.usage.is_empty() {
        service.take_usage([handover.usage.as_slice()]);
    }
    handover.usage.clear();
    handover.scopes.clear();
    let _ = SPARE.try_with(|spare| *spare.borrow_mut() = handover);
}

/// An event posted by a driver's scheduler. A tick also reports every config's metrics.
pub fn on_event(event: u64) {
    if event == EVENT_TICK {
        DRIVERS.with(|d| {
            if let Ok(drivers) = d.try_borrow() {
                drivers.iter().for_each(Driver::report_metrics);
                // The current driver runs the background health checks' rounds.
                if let Some(Driver { config, health: Some((gateway, health)), .. }) = drivers.last() {
                    health.tick(&MainThreadHost { callbacks: config.callbacks() }, gateway);
                }
            }
        });
    }
    SERVICE.with(|service| {
        let Ok(mut service) = service.try_borrow_mut() else { return };
        let Some(running) = service.as_mut() else { return };
        take_handover(running);
        if event == EVENT_TICK {
            running.tick();
        }
    });
}

/// The answer to one of the service's calls, made through `config`.
pub fn on_answer(config: LiveConfig, callout: u64, delivered: bool, headers: &[(Vec<u8>, Vec<u8>)], body: &[u8]) {
    let current = DRIVERS.with(|d| d.borrow().last().is_some_and(|last| last.config.ptr() == config.ptr()));
    if !current {
        return;
    }
    let Ok(token) = u32::try_from(callout) else { return };
    // A background health probe's answer: the status as sent, the body as is.
    let probe = DRIVERS.with(|d| {
        let Ok(drivers) = d.try_borrow() else { return false };
        let Some(Driver { config, health: Some((gateway, health)), .. }) = drivers.last() else { return false };
        if !health.awaits(token) {
            return false;
        }
        let status = callout_status(delivered, headers);
        health.on_answer(&MainThreadHost { callbacks: config.callbacks() }, gateway, token, status, body)
    });
    if probe {
        return;
    }
    let (status, message) = grpc::answer(delivered, headers, body);
    SERVICE.with(|service| {
        if let Ok(mut service) = service.try_borrow_mut()
            && let Some(running) = service.as_mut()
        {
            running.on_grpc_response(token, status, &message);
        }
    });
}

/// The service's [`Host`]: the current driver's callouts and counters, the process's shared
/// data, Envoy's log. It has no stream: the stream calls do nothing.
pub struct MainThreadHost {
    callbacks: &'static Callbacks,
}

impl MainThreadHost {
    fn with_driver<T>(&self, f: impl FnOnce(&Driver) -> T) -> Option<T> {
        DRIVERS.with(|d| d.try_borrow().ok().and_then(|drivers| drivers.last().map(f)))
    }
}

impl Host for MainThreadHost {
    fn request_header(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn all_request_headers(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        Vec::new()
    }
    fn set_request_header(&self, _: &str, _: Option<&[u8]>) {}
    fn request_body(&self, _: usize) -> Option<Vec<u8>> {
        None
    }
    fn replace_request_body(&self, _: usize, _: &[u8]) {}
    fn response_header(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn set_response_header(&self, _: &str, _: Option<&[u8]>) {}
    fn response_body(&self, _: usize) -> Option<Vec<u8>> {
        None
    }
    fn replace_response_body(&self, _: usize, _: &[u8]) {}
    fn send_local_response(&self, _: u32, _: &[(&str, &str)], _: &[u8]) {}

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        shared().get(key)
    }

    /// The service is the invalidation log's only writer: each write moves its generation.
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> CasResult {
        let result = shared().set(key, value, cas);
        if key == INVALIDATIONS_KEY && result == CasResult::Written {
            INVALIDATIONS_GENERATION.fetch_add(1, Ordering::AcqRel);
        }
        result
    }

    fn enqueue_usage(&self, _: &[u8]) -> bool {
        false
    }
    fn announce_limit_scope(&self, _: &str) {}

    fn now_ms(&self) -> u64 {
        now_ms()
    }
    fn response_code_details(&self) -> Option<Vec<u8>> {
        None
    }
    fn source_address(&self) -> Option<Vec<u8>> {
        None
    }

    fn log(&self, level: LogLevel, message: &str) {
        log(self.callbacks, level, message);
    }

    fn count(&self, metric: &str, delta: u64) {
        if delta == 0 {
            return;
        }
        self.with_driver(|d| {
            if let Some(id) = d.counters.id(metric) {
                d.config.increment_counter(id, delta);
            }
        });
    }

    fn dispatch_grpc(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        grpc::call(cluster, service, method, message, |headers, body| {
            self.with_driver(|d| d.config.http_callout(cluster, headers, body, timeout_ms)).flatten()
        })
    }

    /// The service gets its answers' bodies as arguments (`on_answer`).
    fn grpc_response(&self, _: usize) -> Option<Vec<u8>> {
        None
    }

    fn dispatch_http(&self, cluster: &str, headers: &[(&str, &[u8])], body: &[u8], timeout_ms: u64) -> Option<u32> {
        self.with_driver(|d| d.config.http_callout(cluster, headers, body, timeout_ms))
            .flatten()
            .and_then(|id| u32::try_from(id).ok())
    }

    /// As for gRPC: the answers come as arguments.
    fn http_response(&self, _: usize) -> (Option<u16>, Vec<u8>) {
        (None, Vec::new())
    }
    fn resume_request(&self) {}
}
