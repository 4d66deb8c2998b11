//! The gateway's own probes, answered by the filter without a key (LiteLLM's routes):
//! `/health/liveliness` (and `/health/liveness`) and `/health/readiness`.
//!
//! Readiness must be false while a worker cannot serve. A worker whose VM failed answers
//! nothing itself (Envoy sends its fail-closed 503), so a probe that lands on a healthy worker
//! has to know about the others. Every VM (one per worker thread, and one on the main thread)
//! writes a heartbeat to shared data on its tick and registers once, with the time. A VM whose
//! heartbeat went stale has failed unless it was retired (its root context went away in an
//! orderly way) or replaced: Envoy reloads a failed VM under `fail_reload`, and the new VM
//! registers after the failed one's last heartbeat. So the probe pairs each stale VM with a VM
//! registered after its last heartbeat (each newcomer replaces one); a stale VM left unpaired is
//! a worker that cannot serve until Envoy restarts, and readiness stays false.

use std::cell::Cell;

use crate::host::{CasResult, Host};

const WORKERS_KEY: &str = "sluice:workers";
/// A heartbeat older than this is a worker that stopped ticking (ticks are every 250 ms).
const STALE_MS: u64 = 3_000;
/// A replacement VM is created after the failure and first ticks a whole tick period later, so
/// its first heartbeat comes at least a tick after the failed VM's last; a sibling that
/// started with the failed VM ticks within milliseconds of it. Half a tick tells them apart.
const REPLACEMENT_GAP_MS: u64 = 125;
/// Registry entries kept: replaced VMs are pruned as newcomers register, so only a long run of
/// failures without reloads could reach this; past it, the oldest entries go.
const MAX_WORKERS: usize = 64;

thread_local! {
    /// This VM's id (wasm: one VM per worker thread; natively: one per thread), drawn once:
    /// a filter config pushed again reuses the VM and keeps the id.
    static WORKER_ID: Cell<u64> = Cell::new(getrandom::u64().unwrap_or(0) | 1);
    static REGISTRATION: Registration = const { Registration::new() };
}

/// A VM's place in the registry: when it first ticked, and whether it is registered yet (a
/// registration another worker's write beat is retried on the next tick).
pub struct Registration {
    first_beat_ms: Cell<u64>,
    done: Cell<bool>,
}

impl Registration {
    pub const fn new() -> Registration {
        Registration { first_beat_ms: Cell::new(0), done: Cell::new(false) }
    }
}

impl Default for Registration {
    fn default() -> Registration {
        Registration::new()
    }
}

/// A probe route, if `path` is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Liveness,
    Readiness,
}

impl Probe {
    pub fn from_path(path: &[u8]) -> Option<Probe> {
        let path = path.split(|b| *b == b'?').next().unwrap_or(path);
        match path.strip_suffix(b"/").unwrap_or(path) {
            b"/health/liveliness" | b"/health/liveness" => Some(Probe::Liveness),
            b"/health/readiness" => Some(Probe::Readiness),
            _ => None,
        }
    }
}

fn alive_key(id: u64) -> String {
    format!("sluice:alive:{id:016x}")
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The worker's tick: its heartbeat, and its id in the registry the first time.
pub fn heartbeat<H: Host>(host: &H) {
    REGISTRATION.with(|registration| beat(host, WORKER_ID.with(Cell::get), registration));
}

/// The root context is going away in an orderly way (a config replaced, Envoy draining): if
/// the VM goes with it, its heartbeat going stale is no failure. (If the VM stays and serves a
/// new root context, its heartbeat stays fresh and the mark means nothing.)
pub fn retire<H: Host>(host: &H) {
    let id = WORKER_ID.with(Cell::get);
    host.shared_set(&alive_key(id), &Beat { at_ms: host.now_ms(), retired: true }.encode(), None);
}

fn beat<H: Host>(host: &H, id: u64, registration: &Registration) {
    let now = host.now_ms();
    host.shared_set(&alive_key(id), &Beat { at_ms: now, retired: false }.encode(), None);
    if registration.first_beat_ms.get() == 0 {
        registration.first_beat_ms.set(now);
    }
    // Registered as of its first tick, however many ticks the write took: a VM that started
    // before another failed must never pass for that one's replacement.
    if !registration.done.get() && register(host, id, registration.first_beat_ms.get()) {
        registration.done.set(true);
    }
}

/// A VM's last heartbeat.
#[derive(Debug, Clone, Copy)]
struct Beat {
    at_ms: u64,
    retired: bool,
}

impl Beat {
    fn encode(self) -> [u8; 9] {
        let mut out = [0; 9];
        out[..8].copy_from_slice(&self.at_ms.to_le_bytes());
        out[8] = u8::from(self.retired);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Beat> {
        Some(Beat { at_ms: read_u64(bytes, 0)?, retired: bytes.get(8).is_some_and(|b| *b == 1) })
    }
}

/// A registered VM: its id and when it first ticked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: u64,
    registered_ms: u64,
}

fn read_registry(bytes: &[u8]) -> Vec<Entry> {
    bytes.chunks_exact(16).filter_map(|c| Some(Entry { id: read_u64(c, 0)?, registered_ms: read_u64(c, 8)? })).collect()
}

/// Adds `id`, which first ticked at `first_beat_ms`, to the registry (CAS; retried on the next
/// tick if another worker wrote first), dropping the VMs that are accounted for (stale and
/// retired or replaced).
fn register<H: Host>(host: &H, id: u64, first_beat_ms: u64) -> bool {
    let (bytes, cas) = host.shared_get(WORKERS_KEY);
    let mut entries = read_registry(&bytes.unwrap_or_default());
    if entries.iter().any(|e| e.id == id) {
        return true;
    }
    entries.push(Entry { id, registered_ms: first_beat_ms });
    let state = assess(host, &entries, host.now_ms());
    entries.retain(|e| !state.accounted.contains(&e.id));
    let excess = entries.len().saturating_sub(MAX_WORKERS);
    entries.drain(..excess);
    let encoded: Vec<u8> =
        entries.iter().flat_map(|e| e.id.to_le_bytes().into_iter().chain(e.registered_ms.to_le_bytes())).collect();
    host.shared_set(WORKERS_KEY, &encoded, cas) == CasResult::Written
}

struct Assessment {
    serving: u64,
    failed: u64,
    /// Stale VMs that are no failure: retired, or replaced by a newcomer.
    accounted: Vec<u64>,
}

/// Pairs each stale, unretired VM (oldest heartbeat first) with the earliest VM whose first
/// heartbeat came after that one's last (by `REPLACEMENT_GAP_MS`) and not yet paired: its
/// replacement.
fn assess<H: Host>(host: &H, entries: &[Entry], now: u64) -> Assessment {
    let beats: Vec<Option<Beat>> =
        entries.iter().map(|e| host.shared_get(&alive_key(e.id)).0.as_deref().and_then(Beat::decode)).collect();
    let fresh = |b: &Option<Beat>| b.is_some_and(|b| now.saturating_sub(b.at_ms) <= STALE_MS);
    let serving = beats.iter().filter(|b| fresh(b)).count() as u64;
    let mut accounted = Vec::new();
    let mut stale: Vec<(u64, u64)> = Vec::new(); // (last heartbeat, id)
    for (entry, beat) in entries.iter().zip(&beats) {
        match beat {
            _ if fresh(beat) => {}
            Some(b) if b.retired => accounted.push(entry.id),
            // Registered but never seen since: as old as its registration.
            other => stale.push((other.map_or(entry.registered_ms, |b| b.at_ms), entry.id)),
        }
    }
    stale.sort_unstable();
    let mut newcomers: Vec<&Entry> = entries.iter().collect();
    newcomers.sort_unstable_by_key(|e| e.registered_ms);
    let mut paired = vec![false; newcomers.len()];
    let mut failed = 0;
    for (last_beat, id) in stale {
        let replacement = newcomers
            .iter()
            .zip(paired.iter_mut())
            .find(|(e, used)| !**used && e.id != id && e.registered_ms > last_beat + REPLACEMENT_GAP_MS);
        match replacement {
            Some((_, used)) => {
                *used = true;
                accounted.push(id);
            }
            None => failed += 1,
        }
    }
    Assessment { serving, failed, accounted }
}

/// What a readiness probe found. `serving` counts every VM that ticks: Envoy's workers, and
/// the filter's root context on the main thread.
pub struct Readiness {
    pub serving: u64,
    pub failed: u64,
}

impl Readiness {
    /// Nothing registered yet (the first 250 ms of a wasm worker; always in the native build,
    /// where no worker can fail alone: a panic ends Envoy) is ready: the worker answering the
    /// probe serves, and none is known to have failed.
    pub fn ready(&self) -> bool {
        self.failed == 0
    }

    pub fn body(&self) -> Vec<u8> {
        let status = if self.ready() { "healthy" } else { "unhealthy" };
        format!(r#"{{"status":"{status}","workers_running":{},"workers_failed":{}}}"#, self.serving, self.failed)
            .into_bytes()
    }
}

/// Reads every VM's heartbeat (a probe: off the request path).
pub fn readiness<H: Host>(host: &H) -> Readiness {
    let now = host.now_ms();
    let entries = read_registry(&host.shared_get(WORKERS_KEY).0.unwrap_or_default());
    let state = assess(host, &entries, now);
    Readiness { serving: state.serving, failed: state.failed }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::mock_host::{MockEnvoy, MockHost};

    fn body(r: &Readiness) -> String {
        String::from_utf8_lossy(&r.body()).into_owned()
    }

    /// Every VM in `ids` ticks for `ms`.
    fn run(envoy: &MockEnvoy, host: &MockHost, ids: &[(u64, &Registration)], ms: u64) {
        for _ in 0..ms / 250 {
            envoy.now_ms.set(envoy.now_ms.get() + 250);
            for (id, registered) in ids {
                beat(host, *id, registered);
            }
        }
    }

    #[test]
    fn a_worker_that_stops_ticking_makes_readiness_false_until_envoy_restarts() {
        let envoy = MockEnvoy::new(1_000_000);
        let host = MockHost::new(Rc::clone(&envoy));
        let (a, b) = (Registration::new(), Registration::new());
        run(&envoy, &host, &[(1, &a), (2, &b)], 1_000);
        assert_eq!(body(&readiness(&host)), r#"{"status":"healthy","workers_running":2,"workers_failed":0}"#);
        // Worker 2's VM failed (fail_closed): it ticks no more, and nothing replaces it.
        run(&envoy, &host, &[(1, &a)], 4_000);
        let r = readiness(&host);
        assert!(!r.ready());
        assert_eq!(body(&r), r#"{"status":"unhealthy","workers_running":1,"workers_failed":1}"#);
        run(&envoy, &host, &[(1, &a)], 60_000);
        assert!(!readiness(&host).ready(), "still failed a minute later");
    }

    #[test]
    fn a_reloaded_vm_replaces_the_failed_one_even_when_it_starts_at_once() {
        let envoy = MockEnvoy::new(1_000_000);
        let host = MockHost::new(Rc::clone(&envoy));
        let (a, b, c) = (Registration::new(), Registration::new(), Registration::new());
        run(&envoy, &host, &[(1, &a), (2, &b)], 1_000);
        // Worker 2 fails; Envoy reloads it within the same tick (fail_reload).
        run(&envoy, &host, &[(1, &a), (3, &c)], 250);
        assert!(readiness(&host).ready(), "{}", body(&readiness(&host)));
        run(&envoy, &host, &[(1, &a), (3, &c)], 5_000);
        assert_eq!(body(&readiness(&host)), r#"{"status":"healthy","workers_running":2,"workers_failed":0}"#);
        // The replaced VM was pruned from the registry when a newcomer registered later.
        run(&envoy, &host, &[(1, &a), (3, &c), (4, &Registration::new())], 250);
        let ids: Vec<u64> =
            read_registry(&host.shared_get(WORKERS_KEY).0.unwrap_or_default()).iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 3, 4]);
    }

    /// A worker whose registration took a few ticks (another worker's write came first) is
    /// registered as of its first tick: it is no replacement for a worker that failed after it
    /// started, even one that failed before its second tick.
    #[test]
    fn a_late_registration_never_passes_for_a_failed_workers_replacement() {
        let envoy = MockEnvoy::new(1_000_000);
        let host = MockHost::new(Rc::clone(&envoy));
        let (a, b) = (Registration::new(), Registration::new());
        // Both first tick together (worker 1 a few ms after worker 2); worker 2 fails before its
        // second tick, and worker 1's registration only lands a second later.
        b.first_beat_ms.set(envoy.now_ms.get() + 250);
        a.first_beat_ms.set(envoy.now_ms.get() + 253);
        run(&envoy, &host, &[(2, &b)], 250);
        run(&envoy, &host, &[(1, &a)], 4_000);
        let r = readiness(&host);
        assert_eq!(body(&r), r#"{"status":"unhealthy","workers_running":1,"workers_failed":1}"#);
    }

    #[test]
    fn a_retired_vm_is_no_failure() {
        let envoy = MockEnvoy::new(1_000_000);
        let host = MockHost::new(Rc::clone(&envoy));
        let (a, b) = (Registration::new(), Registration::new());
        run(&envoy, &host, &[(1, &a), (2, &b)], 1_000);
        host.shared_set(&alive_key(2), &Beat { at_ms: envoy.now_ms.get(), retired: true }.encode(), None);
        run(&envoy, &host, &[(1, &a)], 5_000);
        assert!(readiness(&host).ready(), "{}", body(&readiness(&host)));
    }

    #[test]
    fn the_registry_stays_bounded_through_many_reloads() {
        let envoy = MockEnvoy::new(1_000_000);
        let host = MockHost::new(Rc::clone(&envoy));
        for id in 0..(MAX_WORKERS as u64 * 3) {
            run(&envoy, &host, &[(id, &Registration::new())], 4_000);
        }
        let registered = read_registry(&host.shared_get(WORKERS_KEY).0.unwrap_or_default()).len();
        assert!(registered <= 2, "{registered}");
        assert!(readiness(&host).ready());
    }

    #[test]
    fn probe_routes() {
        assert_eq!(Probe::from_path(b"/health/liveliness"), Some(Probe::Liveness));
        assert_eq!(Probe::from_path(b"/health/liveness/"), Some(Probe::Liveness));
        assert_eq!(Probe::from_path(b"/health/readiness?x=1"), Some(Probe::Readiness));
        assert_eq!(Probe::from_path(b"/health"), None);
        assert_eq!(Probe::from_path(b"/v1/health/readiness"), None);
    }
}
